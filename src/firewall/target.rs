//! Which rules file each family persists to, and which unit loads it at boot: decided once,
//! here, into a [`RulesTarget`].

use super::rules::Family;
use crate::sys::Root;
use std::path::{Path, PathBuf};

/// The distribution, from `/etc/os-release`, as far as persistence cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Distro {
    /// Amazon Linux, RHEL, CentOS, Fedora, Rocky, Alma, Oracle: `/etc/sysconfig/ip(6)tables`,
    /// loaded at boot by `iptables.service` and `ip6tables.service` from `iptables-services`.
    RhelFamily(String),
    /// Debian, Ubuntu: `/etc/iptables/rules.v4|v6`, loaded by `netfilter-persistent`.
    DebianFamily(String),
    /// Anything else, or no os-release: nothing persists unless a file is named.
    Other(String),
}

impl Distro {
    /// Parses os-release text (`ID`, `ID_LIKE`).
    pub(crate) fn from_os_release(text: &str) -> Distro {
        let mut id = String::new();
        let mut like = String::new();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once('=') else {
                continue;
            };
            let v = v
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_ascii_lowercase();
            match k.trim() {
                "ID" => id = v,
                "ID_LIKE" => like = v,
                _ => {}
            }
        }
        let words: Vec<&str> = std::iter::once(id.as_str())
            .chain(like.split_whitespace())
            .collect();
        let rhel = [
            "amzn",
            "rhel",
            "centos",
            "fedora",
            "rocky",
            "almalinux",
            "ol",
        ];
        if words.iter().any(|w| rhel.contains(w)) {
            Distro::RhelFamily(id)
        } else if words.iter().any(|w| ["debian", "ubuntu"].contains(w)) {
            Distro::DebianFamily(id)
        } else {
            Distro::Other(if id.is_empty() {
                "unknown (no /etc/os-release)".into()
            } else {
                id
            })
        }
    }

    /// Reads `/etc/os-release` (then `/usr/lib/os-release`) under `root`.
    pub(crate) fn detect(root: &Root) -> Distro {
        let text = ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|p| std::fs::read_to_string(root.join(p)).ok())
            .unwrap_or_default();
        Distro::from_os_release(&text)
    }

    /// Default rules files (v4, v6), relative to the root.
    pub(crate) fn default_files(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Distro::RhelFamily(_) => Some(("/etc/sysconfig/iptables", "/etc/sysconfig/ip6tables")),
            Distro::DebianFamily(_) => Some(("/etc/iptables/rules.v4", "/etc/iptables/rules.v6")),
            Distro::Other(_) => None,
        }
    }

    /// The systemd units that load the `family`'s file at boot, and the package that ships
    /// them (iptables-services has one unit per family; netfilter-persistent loads both).
    pub(crate) fn loader(&self, family: Family) -> Option<(&'static [&'static str], &'static str)> {
        match self {
            Distro::RhelFamily(_) => Some((
                match family {
                    Family::V4 => &["iptables.service"],
                    Family::V6 => &["ip6tables.service"],
                },
                "iptables-services",
            )),
            Distro::DebianFamily(_) => Some((
                &["netfilter-persistent.service"],
                "iptables-persistent (netfilter-persistent)",
            )),
            Distro::Other(_) => None,
        }
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Distro::RhelFamily(n) | Distro::DebianFamily(n) | Distro::Other(n) => n,
        }
    }
}

/// Whether a unit file for `unit` exists under the root.
fn unit_installed(root: &Root, unit: &str) -> bool {
    [
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/etc/systemd/system",
    ]
    .iter()
    .any(|d| root.join(d).join(unit).exists())
}

/// Whether `unit` is enabled under the root: a link to it in a `*.wants` folder of
/// `/etc/systemd/system` (where `systemctl enable` and presets put them).
fn unit_enabled(root: &Root, unit: &str) -> bool {
    let dir = root.join("/etc/systemd/system");
    std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with(".wants")
                    && e.path().join(unit).symlink_metadata().is_ok()
            })
        })
        .unwrap_or(false)
}

/// Who restores a rules file at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loader {
    /// This enabled unit restores it.
    Enabled(&'static str),
    /// The distribution's loader restores this file, but is not enabled (or not installed).
    Absent {
        unit: &'static str,
        package: &'static str,
        installed: bool,
    },
    /// Not the distribution's file (`--persist-file` elsewhere, or a distribution we do not
    /// know): whoever the operator set up loads it; we cannot tell.
    Unknown,
}

impl Loader {
    /// The unit that restores the file, for the report.
    pub(crate) fn unit(&self) -> Option<&'static str> {
        match self {
            Loader::Enabled(u) => Some(u),
            _ => None,
        }
    }

    /// The warning when nothing restores the distribution's file at boot.
    pub(crate) fn warning(&self, path: &Path) -> Option<String> {
        let Loader::Absent {
            unit,
            package,
            installed,
        } = self
        else {
            return None;
        };
        let fix = if *installed {
            format!("enable {unit} (systemctl enable {unit})")
        } else {
            format!("install {package} and enable {unit}")
        };
        Some(format!(
            "nothing loads {} at boot: {fix} (ecs-bootstrap re-asserts the rule at every boot regardless)",
            path.display()
        ))
    }
}

/// The rules file one family persists to, and who loads it at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RulesTarget {
    pub(crate) path: PathBuf,
    pub(crate) loader: Loader,
}

/// No rules file is known for a family: the distribution has no default and none was named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "nothing persists the {} rule on {distro}: ecs-bootstrap re-asserts it at every boot, but until it runs the rule is absent; pass --persist-file{} to write a rules file that your boot loads",
    family.name(),
    if *family == Family::V6 { "6" } else { "" }
)]
pub(crate) struct NoRulesFile {
    pub(crate) family: Family,
    pub(crate) distro: String,
}

/// The file `family` persists to: `explicit` (`--persist-file`/`--persist-file6`) or the
/// distribution's default under `root`; its loader is the distribution's when the file is one
/// of the distribution's defaults (a loader counts only when enabled: an installed but disabled
/// iptables.service restores nothing at boot).
pub(crate) fn choose(
    explicit: Option<&Path>,
    root: &Root,
    distro: &Distro,
    family: Family,
) -> Result<RulesTarget, NoRulesFile> {
    let defaults = distro
        .default_files()
        .map(|(v4, v6)| [root.join(v4), root.join(v6)]);
    let path = match (explicit, &defaults) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some([v4, v6])) => match family {
            Family::V4 => v4.clone(),
            Family::V6 => v6.clone(),
        },
        (None, None) => {
            return Err(NoRulesFile {
                family,
                distro: distro.name().to_owned(),
            });
        }
    };
    let is_default = defaults.is_some_and(|d| d.contains(&path));
    let loader = match distro.loader(family) {
        Some((units, package)) if is_default => {
            match units.iter().find(|u| unit_enabled(root, u)) {
                Some(u) => Loader::Enabled(u),
                None => Loader::Absent {
                    unit: units[0],
                    package,
                    installed: units.iter().any(|u| unit_installed(root, u)),
                },
            }
        }
        _ => Loader::Unknown,
    };
    Ok(RulesTarget { path, loader })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_family_has_its_loader() {
        let rhel = Distro::RhelFamily("Amazon Linux".into());
        assert_eq!(rhel.loader(Family::V4).unwrap().0, ["iptables.service"]);
        assert_eq!(rhel.loader(Family::V6).unwrap().0, ["ip6tables.service"]);
        let deb = Distro::DebianFamily("Debian".into());
        assert_eq!(
            deb.loader(Family::V6).unwrap().0,
            ["netfilter-persistent.service"]
        );
    }

    #[test]
    fn os_release_detection() {
        let al2 =
            "NAME=\"Amazon Linux\"\nVERSION=\"2\"\nID=\"amzn\"\nID_LIKE=\"centos rhel fedora\"\n";
        assert_eq!(
            Distro::from_os_release(al2),
            Distro::RhelFamily("amzn".into())
        );
        let al2023 = "NAME=\"Amazon Linux\"\nVERSION=\"2023\"\nID=\"amzn\"\nID_LIKE=\"fedora\"\n";
        assert!(matches!(
            Distro::from_os_release(al2023),
            Distro::RhelFamily(_)
        ));
        let rocky = "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n";
        assert!(matches!(
            Distro::from_os_release(rocky),
            Distro::RhelFamily(_)
        ));
        let ubuntu = "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n";
        assert_eq!(
            Distro::from_os_release(ubuntu),
            Distro::DebianFamily("ubuntu".into())
        );
        assert_eq!(
            Distro::from_os_release("ID=debian\n").default_files(),
            Some(("/etc/iptables/rules.v4", "/etc/iptables/rules.v6"))
        );
        let br = Distro::from_os_release("ID=bottlerocket\n");
        assert_eq!(br, Distro::Other("bottlerocket".into()));
        assert_eq!(br.default_files(), None);
        assert!(matches!(Distro::from_os_release(""), Distro::Other(_)));
    }

    /// Every folder of a default rules file is writable in the sandbox of the units that run
    /// the firewall step (`ReadWritePaths=`); ARCHITECTURE.md lists the other places that
    /// name them.
    #[test]
    fn the_units_may_write_every_default_rules_folder() {
        for unit in [
            include_str!("../../systemd/ecs-bootstrap-firewall.service"),
            include_str!("../../systemd/ecs-bootstrap-drift.service"),
        ] {
            units_may_write(unit);
        }
    }

    fn units_may_write(unit: &str) {
        let writable: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("ReadWritePaths="))
            .flat_map(str::split_whitespace)
            .map(|p| p.trim_start_matches('-'))
            .collect();
        for d in ["ID=amzn", "ID=debian"].map(Distro::from_os_release) {
            let (v4, v6) = d.default_files().unwrap();
            for f in [v4, v6] {
                let dir = Path::new(f).parent().unwrap().to_str().unwrap();
                assert!(writable.contains(&dir), "{dir} not in {writable:?}");
            }
        }
    }
}

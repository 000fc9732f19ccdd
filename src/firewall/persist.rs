//! Persistence of our rule to the distribution's rules file (iptables-save format), so it is in
//! place at boot before dockerd and before ecs-bootstrap itself runs.
//!
//! - `merge` (default): read the file, make sure our chain declaration, DROP rules and jump
//!   appear exactly once in `*filter`, keep every other line as it was, validate with
//!   `iptables-restore --test` (unless the file holds nothing but our own minimal rendering)
//!   and write atomically. Only our lines are ever added, so Docker's
//!   and the ECS agent's run-time rules never end up in the file. A missing or empty file
//!   becomes a minimal valid one. CRLF line ends become LF (iptables-restore rejects `\r`).
//! - `full-save`: the `iptables-save` output, every table, as the AWS documentation does (this
//!   does persist Docker's run-time rules); date comments dropped and counters zeroed so a
//!   second run leaves the file unchanged.
//! - `none`: nothing (the dockerd drop-in uses it).
//!
//! The sample `/etc/sysconfig/iptables` (and `ip6tables`) that Amazon Linux's and RHEL's
//! `iptables-services` installs REJECTs every forwarded packet and every inbound one but ssh.
//! Restored at boot it cuts every container off from everything (and tasks off from the ECS
//! agent's credential endpoint, which arrives through INPUT). It is recognised exactly (its
//! header comment and nothing but its sample rules) and replaced by the minimal file holding
//! only our rules, after a backup to `<file>.ecs-bootstrap.orig`, with a warning. A file
//! anyone edited is merged as usual; if it still rejects forwarded traffic we warn.

use super::iptables::Ipt;
use super::rules::{Family, RuleSet};
use crate::fsutil::{self, WriteOutcome};
use crate::sys::Root;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Suffix of the backup of a replaced iptables-services sample file.
pub const BACKUP_SUFFIX: &str = ".ecs-bootstrap.orig";

const HEADER: &str = "# Written by ecs-bootstrap: keeps containers on the Docker bridge away from instance metadata.\n\
# Docker and the ECS agent add their own rules at run time; they are not persisted here.\n";

/// The distribution, from `/etc/os-release`, as far as persistence cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distro {
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
    pub fn from_os_release(text: &str) -> Distro {
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
    pub fn detect(root: &Root) -> Distro {
        let text = ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|p| std::fs::read_to_string(root.join(p)).ok())
            .unwrap_or_default();
        Distro::from_os_release(&text)
    }

    /// Default rules files (v4, v6), relative to the root.
    pub fn default_files(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Distro::RhelFamily(_) => Some(("/etc/sysconfig/iptables", "/etc/sysconfig/ip6tables")),
            Distro::DebianFamily(_) => Some(("/etc/iptables/rules.v4", "/etc/iptables/rules.v6")),
            Distro::Other(_) => None,
        }
    }

    /// The systemd units that load the `family`'s file at boot, and the package that ships
    /// them (iptables-services has one unit per family; netfilter-persistent loads both).
    pub fn loader(&self, family: Family) -> Option<(&'static [&'static str], &'static str)> {
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

    pub fn name(&self) -> &str {
        match self {
            Distro::RhelFamily(n) | Distro::DebianFamily(n) | Distro::Other(n) => n,
        }
    }
}

/// Whether a unit file for `unit` exists under the root.
pub fn unit_installed(root: &Root, unit: &str) -> bool {
    [
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/etc/systemd/system",
    ]
    .iter()
    .any(|d| root.join(d).join(unit).exists())
}

/// The result of a merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub text: String,
    /// What the merge changed, for the report ("added ...", "removed a duplicate ...").
    pub notes: Vec<String>,
    /// Problems in the file we leave alone but the operator should know about.
    pub warnings: Vec<String>,
}

/// The minimal valid file: the built-in chains with ACCEPT policies and our lines.
pub fn minimal(set: &RuleSet) -> String {
    let mut s = String::from(HEADER);
    s.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    if let Some(d) = set.chain_decl() {
        s.push_str(&d);
        s.push('\n');
    }
    for i in &set.interfaces {
        s.push_str(&set.save_line(i));
        s.push('\n');
    }
    if let Some(j) = set.jump_line() {
        s.push_str(&j);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

fn is_decl(line: &str, chain: &str) -> bool {
    line.trim()
        .strip_prefix(':')
        .and_then(|r| r.split_whitespace().next())
        == Some(chain)
}

fn is_jump(line: &str, set: &RuleSet) -> bool {
    set.jump_line()
        .is_some_and(|j| line.split_whitespace().eq(j.split_whitespace()))
}

fn appends_to(line: &str, chain: &str) -> bool {
    let mut t = line.split_whitespace();
    t.next() == Some("-A") && t.next() == Some(chain)
}

/// Merges our lines into an iptables-save file (pure). Errors name the problem in the file.
pub fn merge(old: &str, set: &RuleSet) -> Result<Merged, String> {
    let mut notes = vec![];
    let mut warnings = vec![];
    if old.trim().is_empty() {
        notes.push("wrote a minimal rules file (the file was missing or empty)".into());
        return Ok(Merged {
            text: minimal(set),
            notes,
            warnings,
        });
    }
    let text = if old.contains('\r') {
        notes.push("converted CRLF line ends to LF (iptables-restore rejects CR)".into());
        old.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        old.to_owned()
    };
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let Some(start) = lines.iter().position(|l| l.trim() == "*filter") else {
        // No filter table: append one with our lines; other tables stay as they are.
        notes.push("added a *filter table holding our rules".into());
        let mut out = lines.join("\n");
        out.push('\n');
        out.push_str(&minimal(set)[HEADER.len()..]);
        return Ok(Merged {
            text: out,
            notes,
            warnings,
        });
    };
    let Some(commit) = lines[start..]
        .iter()
        .position(|l| l.trim() == "COMMIT")
        .map(|p| p + start)
    else {
        return Err(format!(
            "its *filter table (line {}) has no COMMIT line, so iptables-restore cannot load it; fix the file or remove it",
            start + 1
        ));
    };
    let chain = set.chain();
    let mut body: Vec<String> = lines[start + 1..commit].to_vec();

    // The jump stays where it is when it is the first FORWARD rule and the only one.
    let forward: Vec<&String> = body.iter().filter(|l| appends_to(l, "FORWARD")).collect();
    let jumps = body.iter().filter(|l| is_jump(l, set)).count();
    let jump_ok = set.jump_line().is_none()
        || (jumps == 1 && forward.first().is_some_and(|l| is_jump(l, set)));

    // Drop duplicates of our lines (and every jump when it must move).
    let mut seen_decl = false;
    let mut seen_rule = vec![false; set.interfaces.len()];
    let before = body.len();
    body.retain(|l| {
        if set.chain_decl().is_some() && is_decl(l, chain) {
            return !std::mem::replace(&mut seen_decl, true);
        }
        if let Some(i) = set.interfaces.iter().position(|i| set.is_rule_for(l, i)) {
            return !std::mem::replace(&mut seen_rule[i], true);
        }
        if !jump_ok && is_jump(l, set) {
            return false;
        }
        true
    });
    let dropped = before - body.len() - if jump_ok { 0 } else { jumps };
    if dropped > 0 {
        notes.push(format!("removed {dropped} duplicate line(s) of ours"));
    }
    let anchor = |body: &Vec<String>| {
        body.iter()
            .position(|l| l.trim_start().starts_with("-A "))
            .unwrap_or(body.len())
    };

    if let (Some(jump), false) = (set.jump_line(), jump_ok) {
        let at = body
            .iter()
            .position(|l| appends_to(l, "FORWARD"))
            .unwrap_or_else(|| anchor(&body));
        body.insert(at, jump.clone());
        notes.push(if jumps == 0 {
            format!("added {jump}")
        } else {
            format!("made {jump} the first FORWARD rule")
        });
    }
    let missing: Vec<String> = set
        .interfaces
        .iter()
        .zip(&seen_rule)
        .filter(|(_, seen)| !**seen)
        .map(|(i, _)| set.save_line(i))
        .collect();
    if !missing.is_empty() {
        let at = body
            .iter()
            .position(|l| appends_to(l, chain))
            .unwrap_or_else(|| anchor(&body));
        for (n, rule) in missing.iter().enumerate() {
            body.insert(at + n, rule.clone());
            notes.push(format!("added {rule}"));
        }
    }
    if let (Some(decl), false) = (set.chain_decl(), seen_decl) {
        let at = body
            .iter()
            .rposition(|l| l.trim_start().starts_with(':'))
            .map(|p| p + 1)
            .unwrap_or(0);
        body.insert(at, decl.clone());
        notes.push(format!("added {decl}"));
    }

    let rejects_forward = |l: &String| {
        let t: Vec<&str> = l.split_whitespace().collect();
        t.starts_with(&[":FORWARD", "DROP"])
            || t.starts_with(&["-A", "FORWARD", "-j", "REJECT"])
            || t == ["-A", "FORWARD", "-j", "DROP"]
    };
    if body.iter().any(rejects_forward) {
        warnings.push(
            "the file rejects or drops all forwarded traffic: restored at boot, containers reach nothing until dockerd inserts its own rules".into(),
        );
    }

    lines.splice(start + 1..commit, body);
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(Merged {
        text: out,
        notes,
        warnings,
    })
}

const SAMPLE_HEADER_V4: &str = "# sample configuration for iptables service";
const SAMPLE_HEADER_V6: &str = "# sample configuration for ip6tables service";
/// Every line the iptables-services sample files have held across versions.
const SAMPLE_LINES: &[&str] = &[
    "*filter",
    ":INPUT ACCEPT [0:0]",
    ":FORWARD ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT",
    "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A INPUT -p icmp -j ACCEPT",
    "-A INPUT -p ipv6-icmp -j ACCEPT",
    "-A INPUT -i lo -j ACCEPT",
    "-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT",
    "-A INPUT -m state --state NEW -m tcp -p tcp --dport 22 -j ACCEPT",
    "-A INPUT -p tcp -m conntrack --ctstate NEW -m tcp --dport 22 -j ACCEPT",
    "-A INPUT -d fe80::/64 -p udp -m udp --dport 546 -m state --state NEW -j ACCEPT",
    "-A INPUT -m state --state NEW -m udp -p udp --dport 546 -d fe80::/64 -j ACCEPT",
    "-A INPUT -d fe80::/64 -p udp -m udp --dport 546 -m conntrack --ctstate NEW -j ACCEPT",
    "-A INPUT -j REJECT --reject-with icmp-host-prohibited",
    "-A INPUT -j REJECT --reject-with icmp6-adm-prohibited",
    "-A FORWARD -j REJECT --reject-with icmp-host-prohibited",
    "-A FORWARD -j REJECT --reject-with icmp6-adm-prohibited",
    "COMMIT",
];

/// Whether `text` is the untouched sample file of iptables-services (v4 or v6): its header,
/// only its sample lines, and the FORWARD REJECT that makes it harmful.
pub fn is_iptables_services_sample(text: &str) -> bool {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let header = lines
        .first()
        .is_some_and(|l| *l == SAMPLE_HEADER_V4 || *l == SAMPLE_HEADER_V6);
    header
        && lines
            .iter()
            .filter(|l| !l.starts_with('#'))
            .all(|l| SAMPLE_LINES.contains(l))
        && lines.iter().any(|l| l.starts_with("-A FORWARD -j REJECT"))
}

/// Drops `iptables-save` date comments and zeroes chain counters (pure).
pub fn normalize_save(save: &str) -> String {
    let mut out = String::new();
    for l in save.lines() {
        if l.starts_with("# Generated by")
            || l.starts_with("# Completed on")
            || l.starts_with("# Warning:")
        {
            continue;
        }
        if l.starts_with(':')
            && let Some((head, counters)) = l.rsplit_once(' ')
            && counters.starts_with('[')
            && counters.ends_with(']')
        {
            out.push_str(head);
            out.push_str(" [0:0]\n");
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// What a persistence step did to one file.
#[derive(Debug, Clone)]
pub struct Persisted {
    pub file: PathBuf,
    pub outcome: WriteOutcome,
    pub backup: Option<PathBuf>,
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600)
}

fn read_existing(path: &Path) -> anyhow::Result<String> {
    match std::fs::read(path) {
        Ok(b) => String::from_utf8(b).map_err(|_| {
            anyhow::anyhow!(
                "{} is not text (invalid UTF-8); fix or remove it, or pass --persist none",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => anyhow::bail!("cannot read the rules file {}: {e}", path.display()),
    }
}

/// Validates `text` with `iptables-restore --test`, then writes it atomically with `mode`.
fn validate_and_write(
    ipt: &Ipt,
    path: &Path,
    text: &str,
    original: &str,
    mode: u32,
    ours_only: bool,
) -> anyhow::Result<WriteOutcome> {
    if text == original {
        return Ok(WriteOutcome::Unchanged);
    }
    // A file that holds nothing but our own rendering (a first boot, the replaced
    // iptables-services sample) is valid by construction: the interface patterns are validated
    // and the tests restore it with both backends. `--test` is for foreign lines, and it is
    // not cheap: the nft backend's dry run takes about 17 ms, the longest part of the step.
    if ours_only {
        return Ok(fsutil::write_atomic(path, text.as_bytes(), mode)?);
    }
    if let Err(e) = ipt.restore_test(text) {
        if !original.trim().is_empty() && ipt.restore_test(original).is_err() {
            anyhow::bail!(
                "the existing rules file {} does not pass iptables-restore --test ({e}); fix or remove it (it was left as it was)",
                path.display()
            );
        }
        anyhow::bail!(
            "the merged rules for {} do not pass iptables-restore --test ({e}); the file was left as it was",
            path.display()
        );
    }
    Ok(fsutil::write_atomic(path, text.as_bytes(), mode)?)
}

/// `--persist merge`: see the module docs.
pub fn merge_into(ipt: &Ipt, path: &Path, set: &RuleSet) -> anyhow::Result<Persisted> {
    let old = read_existing(path)?;
    let mode = mode_of(path);
    let mut backup = None;
    let mut warnings = vec![];
    let (text, notes) = if is_iptables_services_sample(&old) {
        let b = PathBuf::from(format!("{}{BACKUP_SUFFIX}", path.display()));
        if !b.exists() {
            fsutil::write_atomic(&b, old.as_bytes(), mode)?;
        }
        warnings.push(format!(
            "{} was the iptables-services sample, which rejects all forwarded traffic and all inbound traffic but ssh (restored at boot it would cut every container off); replaced it with a file holding only our rules, so INPUT and FORWARD accept by default as on a host without the file (filter inbound traffic with security groups, or add your own INPUT rules to the file); the sample is kept in {}",
            path.display(),
            b.display()
        ));
        backup = Some(b);
        (
            minimal(set),
            vec!["replaced the iptables-services sample file".to_owned()],
        )
    } else {
        let m =
            merge(&old, set).map_err(|e| anyhow::anyhow!("rules file {}: {e}", path.display()))?;
        warnings.extend(
            m.warnings
                .iter()
                .map(|w| format!("{}: {w}", path.display())),
        );
        (m.text, m.notes)
    };
    let ours_only = text == minimal(set);
    let outcome = validate_and_write(ipt, path, &text, &old, mode, ours_only)?;
    Ok(Persisted {
        file: path.to_owned(),
        outcome,
        backup,
        notes: if outcome == WriteOutcome::Written {
            notes
        } else {
            vec![]
        },
        warnings,
    })
}

/// `--persist full-save`: see the module docs.
pub fn full_save_into(ipt: &Ipt, path: &Path) -> anyhow::Result<Persisted> {
    let old = read_existing(path)?;
    let text = normalize_save(&ipt.save_all()?);
    let outcome = validate_and_write(ipt, path, &text, &old, mode_of(path), false)?;
    Ok(Persisted {
        file: path.to_owned(),
        outcome,
        backup: None,
        notes: vec![],
        warnings: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::rules::{Family, Placement};

    fn v4() -> RuleSet {
        RuleSet {
            family: Family::V4,
            placement: Placement::DockerUser,
            interfaces: vec!["docker+".into()],
        }
    }

    /// Amazon Linux 2's /etc/sysconfig/iptables from iptables-services.
    pub const AL2_SAMPLE: &str = "# sample configuration for iptables service
# you can edit this manually or use system-config-firewall
# please do not ask us to add additional ports/services to this default configuration
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -p tcp -m state --state NEW -m tcp --dport 22 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -j REJECT --reject-with icmp-host-prohibited
COMMIT
";

    const AL2_SAMPLE_V6: &str = "# sample configuration for ip6tables service
# you can edit this manually or use system-config-firewall
# please do not ask us to add additional ports/services to this default configuration
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p ipv6-icmp -j ACCEPT
-A INPUT -i lo -j ACCEPT
-A INPUT -m state --state NEW -m tcp -p tcp --dport 22 -j ACCEPT
-A INPUT -d fe80::/64 -p udp -m udp --dport 546 -m state --state NEW -j ACCEPT
-A INPUT -j REJECT --reject-with icmp6-adm-prohibited
-A FORWARD -j REJECT --reject-with icmp6-adm-prohibited
COMMIT
";

    /// What `iptables-save` prints on a host where dockerd 24 runs one container with a port.
    const DOCKER_SAVE: &str = "# Generated by iptables-save v1.8.4 on Mon Jan  8 10:00:00 2024
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
# Completed on Mon Jan  8 10:00:00 2024
# Generated by iptables-save v1.8.4 on Mon Jan  8 10:00:00 2024
*filter
:INPUT ACCEPT [120:9000]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [98:8000]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
# Completed on Mon Jan  8 10:00:00 2024
";

    fn filter_lines(text: &str) -> Vec<&str> {
        let s = text.find("*filter").unwrap();
        text[s..].lines().take_while(|l| *l != "COMMIT").collect()
    }

    /// Every line of `old` is in `new`, in the same order.
    fn keeps_all(old: &str, new: &str) {
        let mut it = new.lines();
        for l in old.lines() {
            let l = l.trim_end_matches('\r');
            assert!(
                it.any(|n| n == l),
                "line {l:?} lost or reordered in:\n{new}"
            );
        }
    }

    #[test]
    fn empty_and_missing_file_become_minimal() {
        for old in ["", "\n\n", "   "] {
            let m = merge(old, &v4()).unwrap();
            assert_eq!(m.text, minimal(&v4()));
        }
        let t = minimal(&v4());
        assert_eq!(
            filter_lines(&t),
            [
                "*filter",
                ":INPUT ACCEPT [0:0]",
                ":FORWARD ACCEPT [0:0]",
                ":OUTPUT ACCEPT [0:0]",
                ":DOCKER-USER - [0:0]",
                "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP",
                "-A FORWARD -j DOCKER-USER",
            ]
        );
        // Idempotent.
        assert_eq!(merge(&t, &v4()).unwrap().text, t);
        assert!(merge(&t, &v4()).unwrap().notes.is_empty());
    }

    #[test]
    fn al2_sample_is_recognised_exactly() {
        assert!(is_iptables_services_sample(AL2_SAMPLE));
        assert!(is_iptables_services_sample(AL2_SAMPLE_V6));
        assert!(is_iptables_services_sample(
            &AL2_SAMPLE.replace('\n', "\r\n")
        ));
        // Edited by someone: one more rule, or the REJECTs commented out.
        let edited = AL2_SAMPLE.replace(
            "-A INPUT -i lo -j ACCEPT\n",
            "-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp --dport 443 -j ACCEPT\n",
        );
        assert!(!is_iptables_services_sample(&edited));
        let relaxed = AL2_SAMPLE.replace("-A FORWARD -j", "#-A FORWARD -j");
        assert!(!is_iptables_services_sample(&relaxed));
        assert!(!is_iptables_services_sample(DOCKER_SAVE));
        assert!(!is_iptables_services_sample(""));
        assert!(!is_iptables_services_sample(&minimal(&v4())));
    }

    #[test]
    fn edited_sample_is_merged_with_a_warning() {
        let edited = AL2_SAMPLE.replace(
            "-A INPUT -i lo -j ACCEPT\n",
            "-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp --dport 443 -j ACCEPT\n",
        );
        let m = merge(&edited, &v4()).unwrap();
        keeps_all(&edited, &m.text);
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        let f = filter_lines(&m.text);
        let first_forward = f.iter().find(|l| l.starts_with("-A FORWARD")).unwrap();
        assert_eq!(*first_forward, "-A FORWARD -j DOCKER-USER");
        assert!(f.contains(&":DOCKER-USER - [0:0]"));
        // The declaration comes after the built-in chains, before the first rule.
        let decl = f.iter().position(|l| *l == ":DOCKER-USER - [0:0]").unwrap();
        assert_eq!(f[decl - 1], ":OUTPUT ACCEPT [0:0]");
    }

    #[test]
    fn docker_chains_are_kept_and_never_added() {
        let m = merge(DOCKER_SAVE, &v4()).unwrap();
        keeps_all(DOCKER_SAVE, &m.text);
        // Only our rule was added: exactly one line more.
        assert_eq!(m.text.lines().count(), DOCKER_SAVE.lines().count() + 1);
        assert_eq!(
            m.notes,
            ["added -A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP"]
        );
        let f = filter_lines(&m.text);
        let ours = f
            .iter()
            .position(|l| *l == "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP")
            .unwrap();
        let ret = f
            .iter()
            .position(|l| *l == "-A DOCKER-USER -j RETURN")
            .unwrap();
        assert!(ours < ret, "our DROP must come before RETURN");
        // The nat table is untouched.
        assert_eq!(
            m.text[..m.text.find("*filter").unwrap()],
            DOCKER_SAVE[..DOCKER_SAVE.find("*filter").unwrap()]
        );
        // Docker's rules are never added to a file that lacks them.
        let m = merge(AL2_SAMPLE, &v4()).unwrap();
        assert!(!m.text.contains("-A DOCKER "), "{}", m.text);
        assert!(!m.text.contains("ISOLATION"), "{}", m.text);
        // FORWARD DROP policy warns.
        assert!(merge(DOCKER_SAVE, &v4()).unwrap().warnings.len() == 1);
    }

    #[test]
    fn crlf_and_comments() {
        let old = "# my firewall\r\n*filter\r\n:INPUT ACCEPT [0:0]\r\n# keep ssh open\r\n-A INPUT -p tcp --dport 22 -j ACCEPT\r\n# -A FORWARD -j DOCKER-USER\r\nCOMMIT\r\n";
        let m = merge(old, &v4()).unwrap();
        assert!(!m.text.contains('\r'));
        keeps_all(old, &m.text);
        assert!(m.notes.iter().any(|n| n.contains("CRLF")), "{:?}", m.notes);
        // The commented jump does not count as ours.
        assert!(m.text.contains("\n-A FORWARD -j DOCKER-USER\n"));
        assert_eq!(merge(&m.text, &v4()).unwrap().text, m.text);
    }

    #[test]
    fn duplicates_collapse_and_jump_moves_first() {
        let old = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -i eth1 -j ACCEPT
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -i docker+ -d 169.254.169.254 -j DROP
-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP
-A FORWARD -j DOCKER-USER
COMMIT
";
        let m = merge(old, &v4()).unwrap();
        let f = filter_lines(&m.text);
        assert_eq!(
            f,
            [
                "*filter",
                ":INPUT ACCEPT [0:0]",
                ":FORWARD ACCEPT [0:0]",
                ":OUTPUT ACCEPT [0:0]",
                ":DOCKER-USER - [0:0]",
                "-A FORWARD -j DOCKER-USER",
                "-A FORWARD -i eth1 -j ACCEPT",
                "-A DOCKER-USER -i docker+ -d 169.254.169.254 -j DROP",
            ]
        );
        assert_eq!(merge(&m.text, &v4()).unwrap().text, m.text);
    }

    #[test]
    fn other_tables_only_gain_a_filter_table() {
        let old = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp --dport 80 -j REDIRECT --to-ports 8080\nCOMMIT\n";
        let m = merge(old, &v4()).unwrap();
        assert!(m.text.starts_with(old), "{}", m.text);
        assert!(
            m.text.ends_with("-A FORWARD -j DOCKER-USER\nCOMMIT\n"),
            "{}",
            m.text
        );
        assert_eq!(merge(&m.text, &v4()).unwrap().text, m.text);
    }

    #[test]
    fn broken_filter_table_is_an_error() {
        let e = merge("*filter\n:INPUT ACCEPT [0:0]\n", &v4()).unwrap_err();
        assert!(e.contains("no COMMIT"), "{e}");
    }

    #[test]
    fn forward_placement_and_v6_and_several_interfaces() {
        let set = RuleSet {
            family: Family::V6,
            placement: Placement::Forward,
            interfaces: vec!["docker+".into(), "br-+".into()],
        };
        let old = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -i eth1 -j ACCEPT\nCOMMIT\n";
        let m = merge(old, &set).unwrap();
        assert_eq!(
            filter_lines(&m.text)[4..],
            [
                "-A FORWARD -d fd00:ec2::254/128 -i docker+ -j DROP",
                "-A FORWARD -d fd00:ec2::254/128 -i br-+ -j DROP",
                "-A FORWARD -i eth1 -j ACCEPT",
            ]
        );
        assert!(!m.text.contains("DOCKER-USER"));
    }

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

    #[test]
    fn full_save_normalization_is_stable() {
        let n = normalize_save(DOCKER_SAVE);
        assert!(!n.contains("# Generated"));
        assert!(n.contains(":INPUT ACCEPT [0:0]\n"));
        assert!(n.contains(":DOCKER-USER - [0:0]\n"));
        assert_eq!(normalize_save(&n), n);
    }
}

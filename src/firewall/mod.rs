//! The firewall step (`block-imds`): keep containers on the Docker bridge away from instance
//! metadata (169.254.169.254, and fd00:ec2::254 with ip6tables).
//!
//! Placement. dockerd (20.10 to 27, and 28.x) deletes and re-inserts its own jump and ACCEPT
//! rules at the top of FORWARD whenever it starts, so a DROP at FORWARD position 1 (the AWS
//! documentation's rule) is silently bypassed after any dockerd (re)start. dockerd never
//! touches the rules inside DOCKER-USER and keeps `-j DOCKER-USER` first in FORWARD. So by
//! default we create DOCKER-USER when missing, insert the DROP rule at its top when absent, and
//! make `-j DOCKER-USER` the first rule of FORWARD (so the block holds before dockerd ever ran
//! too). `--chain FORWARD` reproduces the documented placement, with a warning.
//!
//! The block is a property of the kernel's state (`plan`): our DROP rules first in
//! DOCKER-USER, nothing of ours elsewhere, `-j DOCKER-USER` first in FORWARD, once. A rule of
//! another tool above ours is a break, repaired by moving ours above it; nothing of another
//! tool is deleted, and nothing is deleted by position.
//!
//! Concurrency. All of it runs under an exclusive lock in /run (`lock`) plus iptables' own
//! `-w` lock wait ([`iptables`]), so concurrent runs end with exactly one rule; every check is
//! made before any change, so a second run changes nothing.
//!
//! Modules: [`rules`] (pure rendering and recognition), `plan` (pure planning), `apply`
//! (the changes into the kernel), [`iptables`] (the runner over the binaries, and why it is
//! ours rather than the `iptables` crate), `target` (which rules file, and who loads it at
//! boot), `persist` (the rules file's I/O), [`merge`] (the pure merge), `details` (the
//! report), `lock`.

mod apply;
mod details;
pub mod iptables;
mod lock;
pub mod merge;
mod persist;
mod plan;
pub mod rules;
mod state;
mod target;

use crate::report::StepResult;
use crate::sys::{CommandRunner, Deadline, Root};
pub(crate) use details::Details;
use details::{Ipv6, Ipv6Reason, Said};
use iptables::{Backend, Ipt, IptError};
use persist::{How, Off, Persistence};
use plan::Mode;
use rules::{Family, Placement, RuleSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use target::Distro;

pub use persist::MAX_RULES_FILE;
pub(crate) use state::{kernel as kernel_state, rules_files};

/// The warning `--chain FORWARD` prints.
pub(crate) const FORWARD_WARNING: &str = "--chain FORWARD puts the DROP rule at the top of FORWARD, as the AWS documentation does: dockerd re-inserts its own ACCEPT rules above it whenever it starts or restarts, and containers then reach instance metadata again. Use the default (--chain DOCKER-USER), or re-run block-imds after every dockerd start (the docker.service drop-in does, and moves the rule back to the top; between dockerd's start and that rerun, containers reach IMDS).";

/// How long a run waits for another run's lock.
pub(crate) const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// Whether the IPv6 rules are asserted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// When the host has IPv6 and ip6tables.
    Auto,
    On,
    Off,
}

/// How the rule is persisted across reboots (`persist_mode` in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum PersistMode {
    /// Our rule merged into the distribution's rules file.
    Merge,
    /// The whole `iptables-save` output, as the AWS documentation does.
    FullSave,
    None,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// `--iptables`; None: `iptables` from PATH or the sbin folders.
    pub iptables: Option<PathBuf>,
    pub placement: Placement,
    pub interfaces: Vec<String>,
    pub ipv6: Ipv6Mode,
    pub persist: PersistMode,
    pub persist_file: Option<PathBuf>,
    pub persist_file6: Option<PathBuf>,
    pub root: Root,
    /// `--remove`: take out everything of ours instead of asserting the block.
    pub remove: bool,
    /// `--drift`: a periodic re-check of a block asserted at boot. Every repair is drift,
    /// logged as an error naming what was found; the steady-state warnings (logged at boot)
    /// go to debug; the backend is read only from the binary's name (no `iptables -V`), so a
    /// check that changes nothing runs one `iptables -S` per family and nothing else.
    pub drift: bool,
}

impl Options {
    fn mode(&self) -> Mode {
        if self.remove {
            Mode::Remove
        } else {
            Mode::Assert
        }
    }

    fn rule_set(&self, family: Family) -> RuleSet {
        RuleSet {
            family,
            placement: self.placement,
            interfaces: self.interfaces.clone(),
        }
    }
}

/// Whether the host has IPv6: an address in /proc/net/if_inet6, or IPv6 not disabled.
fn host_has_ipv6() -> bool {
    let addrs = std::fs::read_to_string("/proc/net/if_inet6")
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    let enabled = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .map(|s| s.trim() == "0")
        .unwrap_or(false);
    addrs || enabled
}

/// The iptables binary to run: `--iptables` (a path, or a name looked up like the default),
/// else `iptables` from PATH or the sbin folders.
pub(crate) fn resolve_binary(iptables: Option<&Path>) -> Result<PathBuf, IptError> {
    match iptables {
        Some(p) if p.components().count() > 1 || p.is_absolute() => {
            if iptables::is_executable(p) {
                Ok(p.to_path_buf())
            } else {
                Err(IptError::Missing {
                    bin: p.display().to_string(),
                })
            }
        }
        Some(name) => {
            let name = name.to_string_lossy();
            iptables::find_binary(&name, std::env::var_os("PATH").as_deref())
                .ok_or_else(|| IptError::Missing { bin: name.into() })
        }
        None => iptables::find_binary("iptables", std::env::var_os("PATH").as_deref()).ok_or(
            IptError::Missing {
                bin: "iptables".into(),
            },
        ),
    }
}

/// Whether the IPv6 rule is handled, with which binary, and why.
struct Ipv6Choice {
    bin: Option<PathBuf>,
    reason: Ipv6Reason,
    /// ip6tables is missing where no blocked bridge has a global IPv6 address yet.
    warning: Option<String>,
    /// ip6tables is missing where a blocked bridge has one: the step fails closed (after
    /// applying the IPv4 rule).
    error: Option<String>,
}

/// Decides IPv6 per `--ipv6`: `on` needs ip6tables beside the iptables binary; `auto` follows
/// the host, and fails closed when a blocked bridge has a global IPv6 address but ip6tables is
/// missing.
fn choose_ipv6(opts: &Options, bin4: &Path) -> Result<Ipv6Choice, IptError> {
    let bin6 = iptables::ip6tables_beside(bin4);
    let found = bin6.as_deref().filter(|p| iptables::is_executable(p));
    let missing = || {
        bin6.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "ip6tables".into())
    };
    let choice = |bin: Option<&Path>, reason| Ipv6Choice {
        bin: bin.map(Path::to_path_buf),
        reason,
        warning: None,
        error: None,
    };
    Ok(match opts.ipv6 {
        Ipv6Mode::Off => choice(None, Ipv6Reason::Off),
        Ipv6Mode::On => match found {
            Some(p) => choice(Some(p), Ipv6Reason::On),
            None => return Err(IptError::Missing { bin: missing() }),
        },
        Ipv6Mode::Auto => match (host_has_ipv6(), found) {
            (true, Some(p)) => choice(Some(p), Ipv6Reason::AutoHostHasIpv6),
            (false, _) => choice(None, Ipv6Reason::AutoHostHasNoIpv6),
            (true, None) => {
                let bin6 = missing();
                let exposed = std::fs::read_to_string("/proc/net/if_inet6")
                    .map(|t| global_v6_on(&t, &opts.interfaces))
                    .unwrap_or_default();
                let mut c = choice(None, Ipv6Reason::AutoIp6tablesMissing);
                if exposed.is_empty() {
                    c.warning = Some(format!(
                        "the host has IPv6 but {bin6} is missing: fd00:ec2::254 is not blocked (no blocked bridge has a global IPv6 address now, so containers cannot reach it yet); install ip6tables (package iptables) or pass --ipv6 off"
                    ));
                } else {
                    c.error = Some(format!(
                        "{} {} a global IPv6 address, so containers on it can reach instance metadata at fd00:ec2::254, but {bin6} is missing and the IPv6 rule cannot be put in place (the IPv4 rule is); install ip6tables (Amazon Linux 2023: `dnf install iptables-nft`; Amazon Linux 2 and RHEL: `yum install iptables`; Debian and Ubuntu: `apt-get install iptables`), or pass --ipv6 off if the instance's IPv6 metadata endpoint is disabled",
                        exposed.join(", "),
                        if exposed.len() == 1 { "has" } else { "have" }
                    ));
                }
                c
            }
        },
    })
}

/// The firewall step: asserts the block (or, with `--remove`, takes it out) for IPv4 and, per
/// `--ipv6`, IPv6, and persists it per `--persist`, all under the firewall lock. Blocking: run
/// it on a thread of its own (see [`crate::sys::run_blocking`]).
///
/// `deadline` bounds the whole step: the lock wait and every iptables command get the time
/// left (give `runner` the same deadline, as [`crate::sys::SystemRunner::new`] does, so a
/// command running at the deadline is killed). Once the deadline has passed or was stopped
/// ([`Deadline::stop`], e.g. on SIGTERM), no command starts and no file is written, so no rule
/// changes; the step then fails with an error whose chain holds the [`crate::sys::Stopped`]
/// (`err.downcast_ref::<Stopped>()`).
pub(crate) fn run(
    opts: &Options,
    runner: &dyn CommandRunner,
    deadline: &Deadline,
) -> anyhow::Result<StepResult> {
    let bin4 = resolve_binary(opts.iptables.as_deref())?;
    let v6 = choose_ipv6(opts, &bin4)?;
    let mut said = Said::default();
    said.warnings.extend(v6.warning.clone());
    if opts.placement == Placement::Forward {
        said.warnings.push(FORWARD_WARNING.into());
    }

    let lock = lock::acquire(&opts.root.join(lock::LOCK_FILE), LOCK_PATIENCE, deadline)?;
    let mut families = vec![(Family::V4, bin4.clone())];
    families.extend(v6.bin.clone().map(|b| (Family::V6, b)));
    let (backend, outcomes) = run_families(opts, runner, deadline, &bin4, families);
    let backend = backend?;
    let mut summary = vec![match &backend {
        Some(b) => format!("iptables {} ({} backend)", bin4.display(), b.name()),
        None => format!("iptables {}", bin4.display()),
    }];
    let mut changed = false;
    let mut fam_details = vec![];
    for outcome in outcomes {
        let o = outcome?;
        changed |= o.changed;
        said.extend(o.said);
        fam_details.push(o.details);
    }
    drop(lock);

    summary.extend(said.summary);
    for w in &said.warnings {
        if opts.drift {
            tracing::debug!("{w}");
        } else {
            tracing::warn!("{w}");
        }
        summary.push(format!("warning: {w}"));
    }
    let details = Details {
        backend,
        iptables: bin4,
        chain: opts.placement,
        interfaces: opts.interfaces.clone(),
        ipv6: Ipv6 {
            enabled: v6.bin.is_some(),
            reason: v6.reason,
        },
        persist_mode: opts.persist,
        families: fam_details,
        warnings: said.warnings,
    };
    let details = Some(crate::report::Details::Firewall(Box::new(details)));
    if let Some(message) = v6.error {
        return Err(anyhow::Error::new(crate::report::Failure {
            message,
            summary,
            details,
            exit: None,
        }));
    }
    Ok(StepResult {
        changed,
        summary,
        details,
    })
}

/// Runs each family on its own thread: the families are independent (separate tables,
/// separate binaries, separate rules files), so a dual-stack host takes the time of one.
/// Results come back in family order, so the report reads the same as a sequential run.
/// `iptables -V` (for the report) runs beside them rather than before them.
fn run_families(
    opts: &Options,
    runner: &dyn CommandRunner,
    deadline: &Deadline,
    bin4: &Path,
    families: Vec<(Family, PathBuf)>,
) -> (
    anyhow::Result<Option<Backend>>,
    Vec<anyhow::Result<FamilyOutcome>>,
) {
    let distro = (opts.persist != PersistMode::None).then(|| Distro::detect(&opts.root));
    let panicked = || anyhow::anyhow!("a firewall thread panicked");
    std::thread::scope(|scope| {
        let backend = scope.spawn(|| {
            let ipt = Ipt::new(bin4.to_owned(), runner, deadline);
            if opts.drift {
                Ok(ipt.backend_by_name())
            } else {
                ipt.backend().map(Some)
            }
        });
        let handles: Vec<_> = families
            .into_iter()
            .map(|(family, bin)| {
                let distro = distro.as_ref();
                scope.spawn(move || run_family(opts, distro, runner, deadline, family, bin))
            })
            .collect();
        let outcomes = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(panicked())))
            .collect();
        let backend = match backend.join() {
            Ok(b) => b.map_err(anyhow::Error::from),
            Err(_) => Err(panicked()),
        };
        (backend, outcomes)
    })
}

/// The interfaces matching a blocked pattern that have a global IPv6 address, from the text of
/// `/proc/net/if_inet6` (address, index, prefix, scope, flags, name; scope 00 is global, which
/// includes unique local addresses such as Docker's fd00::/8 ones) (pure).
pub fn global_v6_on(if_inet6: &str, patterns: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for l in if_inet6.lines() {
        let t: Vec<&str> = l.split_whitespace().collect();
        if t.len() != 6 || t[3] != "00" {
            continue;
        }
        let name = t[5].to_owned();
        if patterns
            .iter()
            .any(|p| crate::prove::pattern_matches(p, &name))
            && !out.contains(&name)
        {
            out.push(name);
        }
    }
    out
}

/// What one address family's run did.
struct FamilyOutcome {
    changed: bool,
    said: Said,
    details: details::FamilyDetails,
}

/// Applies and persists the rules of one address family.
fn run_family(
    opts: &Options,
    distro: Option<&Distro>,
    runner: &dyn CommandRunner,
    deadline: &Deadline,
    family: Family,
    bin: PathBuf,
) -> anyhow::Result<FamilyOutcome> {
    let ipt = Ipt::new(bin.clone(), runner, deadline);
    let set = opts.rule_set(family);
    let (applied, persisted) = if opts.persist == PersistMode::Merge {
        // A merged file depends only on the file and our rules, not on the kernel's tables, so
        // it is merged, tested and written while the rules are applied (`full-save` reads the
        // tables and must come after). Should applying fail, the file still holds exactly the
        // rules we want restored at boot.
        std::thread::scope(|scope| {
            let persisted = scope.spawn(|| persist_family(opts, distro, &ipt, &set));
            let applied = apply::apply(&ipt, &set, opts.mode());
            let persisted = persisted
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the persist thread panicked")));
            (applied, persisted)
        })
    } else {
        let applied = apply::apply(&ipt, &set, opts.mode())?;
        let persisted = if opts.drift && opts.persist == PersistMode::FullSave && !applied.changed()
        {
            Ok(Persistence::Off(Off::DriftUnchanged))
        } else {
            persist_family(opts, distro, &ipt, &set)
        };
        (Ok(applied), persisted)
    };
    let (applied, persisted) = (applied?, persisted?);
    if opts.drift {
        for d in details::drift(&set, &applied, &persisted) {
            tracing::error!("{d}");
        }
    }
    let mut said = details::said_persisted(family, &persisted);
    let applied_said =
        details::said_applied(&set, opts.mode(), &applied, &bin.display().to_string());
    // Summary: the kernel's changes, then the file's; warnings: the file's, then the kernel's.
    said.summary.splice(0..0, applied_said.summary);
    said.warnings.extend(applied_said.warnings);
    Ok(FamilyOutcome {
        changed: applied.changed() || persisted.written(),
        said,
        details: details::family(&set, bin, &applied, &persisted),
    })
}

/// Persists one family per `--persist`: the rules file [`target::choose`] names, written by
/// [`persist::persist`].
fn persist_family(
    opts: &Options,
    distro: Option<&Distro>,
    ipt: &Ipt,
    set: &RuleSet,
) -> anyhow::Result<Persistence> {
    let how = match opts.persist {
        PersistMode::None => return Ok(Persistence::Off(Off::PersistNone)),
        PersistMode::Merge => How::Merge,
        PersistMode::FullSave => How::FullSave,
    };
    let Some(distro) = distro else {
        return Ok(Persistence::Off(Off::PersistNone));
    };
    let explicit = match set.family {
        Family::V4 => opts.persist_file.as_deref(),
        Family::V6 => opts.persist_file6.as_deref(),
    };
    match target::choose(explicit, &opts.root, distro, set.family) {
        Ok(t) => persist::persist(how, t, ipt, set, opts.mode(), !opts.drift),
        Err(e) => Ok(Persistence::NoFile(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_ipv6_on_blocked_bridges() {
        let t = "00000000000000000000000000000001 01 80 10 80       lo\n\
                 fd000d0c000000000000000000000001 05 40 00 80  docker0\n\
                 fe80000000000000000000000000abcd 06 40 20 80  br-1234\n\
                 20010db8000000000000000000000001 02 40 00 80     eth0\n";
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(global_v6_on(t, &p(&["docker+"])), ["docker0"]);
        assert!(global_v6_on(t, &p(&["br-+"])).is_empty(), "link-local only");
        assert!(global_v6_on(t, &p(&["docker1"])).is_empty());
    }
}

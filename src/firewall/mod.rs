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
//! The block is a property of the kernel's state ([`plan`]): our DROP rules first in
//! DOCKER-USER, nothing of ours elsewhere, `-j DOCKER-USER` first in FORWARD, once. A rule of
//! another tool above ours is a break, repaired by moving ours above it; nothing of another
//! tool is deleted, and nothing is deleted by position.
//!
//! Concurrency. All of it runs under an exclusive lock in /run ([`lock`]) plus iptables' own
//! `-w` lock wait ([`iptables`]), so concurrent runs end with exactly one rule; every check is
//! made before any change, so a second run changes nothing.
//!
//! Modules: [`rules`] (pure rendering and recognition), [`plan`] (pure planning),
//! [`iptables`] (the runner over the binaries, and why it
//! is ours rather than the `iptables` crate), [`persist`] (merge into the distribution's rules
//! file, and what happens to the iptables-services sample file), [`lock`].

pub mod iptables;
pub mod lock;
pub mod persist;
pub mod plan;
pub mod rules;

use crate::fsutil::WriteOutcome;
use crate::report::StepResult;
use crate::sys::{CommandRunner, Root};
use iptables::{Ipt, IptError};
use persist::Distro;
use plan::{Mode, Op, RuleState};
use rules::{DOCKER_USER, FORWARD, Family, Placement, RuleSet};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use rules::{IMDS_V4, IMDS_V6};

/// The warning `--chain FORWARD` prints.
pub const FORWARD_WARNING: &str = "--chain FORWARD puts the DROP rule at the top of FORWARD, as the AWS documentation does: dockerd re-inserts its own ACCEPT rules above it whenever it starts or restarts, and containers then reach instance metadata again. Use the default (--chain DOCKER-USER), or re-run block-imds after every dockerd start (the docker.service drop-in does, and moves the rule back to the top; between dockerd's start and that rerun, containers reach IMDS).";

/// How long a run waits for another run's lock.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// Whether the IPv6 rules are asserted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// When the host has IPv6 and ip6tables.
    Auto,
    On,
    Off,
}

/// How the rule is persisted across reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// What one family's rules looked like and what we did.
#[derive(Debug, Default)]
struct Applied {
    changed: bool,
    chain_created: bool,
    rules: Vec<Value>,
    jump: Option<&'static str>,
    duplicate_jumps_removed: usize,
    moved_above: Vec<String>,
    removed: Vec<String>,
    /// How the change went in: "transaction" (attempt N) or "one command at a time".
    method: Option<String>,
    summary: Vec<String>,
    warnings: Vec<String>,
}

/// How many times the transaction is tried (each time on a fresh listing) before the step
/// goes one command at a time.
pub const TRANSACTION_ATTEMPTS: u32 = 4;

/// The wait before transaction attempt `attempt + 1`: uniform in 10..=50*attempt ms, so runs
/// that collided (two runs, or a run and dockerd) do not collide again in step.
fn jitter(attempt: u32) -> Duration {
    Duration::from_millis(fastrand::u64(10..=50 * u64::from(attempt)))
}

/// Makes one family's rules what they should be ([`plan`]: the block as a property of the
/// kernel's state). Each attempt lists the filter table once, plans, and applies the plan as
/// one `iptables-restore --noflush` transaction: one process, one kernel commit, all or
/// nothing; deletes name full rule specs, never positions. A transaction that fails (dockerd
/// created DOCKER-USER or changed a chain since the listing) applied nothing, and is planned
/// again on a fresh listing, up to [`TRANSACTION_ATTEMPTS`] times with jitter. When
/// iptables-restore is missing or every attempt failed, the plan goes in one command at a time
/// ([`one_by_one`]), so the error names the exact command. A lock held past the wait is
/// reported at once (a retry would wait as long again).
fn apply(ipt: &Ipt, set: &RuleSet, mode: Mode) -> Result<Applied, IptError> {
    let mut legacy_too = false;
    for attempt in 1..=TRANSACTION_ATTEMPTS {
        let (table, legacy) = ipt.list_table()?;
        legacy_too = legacy;
        let p = plan::plan(&table, set, mode);
        if p.ops.is_empty() {
            return Ok(applied(ipt, set, mode, p, None, legacy_too));
        }
        let commands: Vec<Vec<String>> = p.ops.iter().map(Op::args).collect();
        match ipt.restore_noflush(&commands) {
            Ok(()) => {
                let how = format!("transaction (attempt {attempt})");
                return Ok(applied(ipt, set, mode, p, Some(how), legacy_too));
            }
            Err(e) if e.is_lock_timeout() => return Err(e),
            Err(e @ IptError::Missing { .. }) => {
                tracing::debug!(family = set.family.name(), error = %e, "no iptables-restore; one command at a time");
                break;
            }
            Err(e) => {
                tracing::debug!(family = set.family.name(), attempt, error = %e, "the transaction failed; planning again");
                if attempt < TRANSACTION_ATTEMPTS {
                    std::thread::sleep(jitter(attempt));
                }
            }
        }
    }
    let (table, legacy) = ipt.list_table()?;
    legacy_too |= legacy;
    let p = plan::plan(&table, set, mode);
    one_by_one(ipt, &p.ops)?;
    let how = (!p.ops.is_empty()).then(|| "one command at a time".to_owned());
    Ok(applied(ipt, set, mode, p, how, legacy_too))
}

/// The spec of the temporary copy that holds the block while `spec` moves: the same rule with
/// the comment [`rules::MOVING_COMMENT`] (so `-D` by spec tells the two apart).
fn moving_copy(spec: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let mut it = spec.iter().peekable();
    let mut done = false;
    while let Some(a) = it.next() {
        if a == "-m" && it.peek().is_some_and(|n| *n == "comment") {
            // `-m comment --comment X`: replaced below.
            it.next();
            it.next();
            it.next();
            continue;
        }
        if a == "-j" && !done {
            out.extend(["-m", "comment", "--comment", rules::MOVING_COMMENT].map(str::to_owned));
            done = true;
        }
        out.push(a.clone());
    }
    out
}

/// Applies a plan one command at a time, so that the block never lapses and nothing of
/// another tool is touched: a rule that moves gets a temporary copy at the top first (with
/// another comment), then the old copies go by their spec, then the new rules come in at the
/// top, then the temporary copies go. A delete that finds its rule gone (removed meanwhile by
/// someone else) is not an error.
fn one_by_one(ipt: &Ipt, ops: &[Op]) -> Result<(), IptError> {
    let deletes: Vec<(&String, &Vec<String>)> = ops
        .iter()
        .filter_map(|o| match o {
            Op::Delete { chain, spec } => Some((chain, spec)),
            _ => None,
        })
        .collect();
    let moves: Vec<(&String, Vec<String>)> = ops
        .iter()
        .filter_map(|o| match o {
            Op::InsertTop { chain, spec } if deletes.contains(&(chain, spec)) => {
                Some((chain, moving_copy(spec)))
            }
            _ => None,
        })
        .collect();
    for o in ops {
        if let Op::NewChain(c) = o {
            ipt.new_chain(c)?;
        }
    }
    for (chain, copy) in &moves {
        ipt.insert(chain, 1, copy)?;
    }
    for (chain, spec) in &deletes {
        ipt.delete_spec(chain, spec)?;
    }
    for o in ops {
        if let Op::InsertTop { chain, spec } = o {
            ipt.insert(chain, 1, spec)?;
        }
    }
    for (chain, copy) in &moves {
        ipt.delete_spec(chain, copy)?;
    }
    for o in ops {
        if let Op::DeleteChain(c) = o {
            ipt.must(&["-t", "filter", "-X", c])?;
        }
    }
    Ok(())
}

/// The report of one family's plan, once applied.
fn applied(
    ipt: &Ipt,
    set: &RuleSet,
    mode: Mode,
    p: plan::Plan,
    method: Option<String>,
    legacy_too: bool,
) -> Applied {
    let fam = set.family.name();
    let chain = set.chain();
    let mut a = Applied {
        changed: !p.ops.is_empty(),
        chain_created: p.chain_created,
        jump: p.jump,
        duplicate_jumps_removed: p.duplicate_jumps_removed,
        moved_above: p.moved_above.clone(),
        removed: p.removed.iter().map(|(l, _)| l.clone()).collect(),
        method,
        ..Applied::default()
    };
    if legacy_too {
        a.warnings.push(format!(
            "{fam}: iptables-legacy tables exist beside the nft ones (a dockerd or another tool on iptables-legacy?): the rule is in the nft backend of {}, where `{} -S` shows it and `iptables-legacy -S` does not; the kernel applies both, so the block holds. Pass --iptables with the legacy binary to keep everything in one backend",
            ipt.bin.display(),
            ipt.bin.display()
        ));
    }
    if p.chain_created {
        a.summary
            .push(format!("{fam}: created chain {DOCKER_USER}"));
    }
    for (line, why) in &p.removed {
        a.summary.push(format!("{fam}: removed {line} ({why})"));
    }
    if mode == Mode::Assert {
        for (iface, state) in &p.rules {
            let line = set.save_line(iface);
            a.summary.push(match state {
                RuleState::Added => format!("{fam}: added {line} at the top of {chain}"),
                RuleState::Moved if p.moved_above.is_empty() => {
                    format!("{fam}: moved {line} back to the top of {chain}")
                }
                RuleState::Moved => format!(
                    "{fam}: moved {line} back to the top of {chain}, above {} rule(s) of others that let packets through before it: {}",
                    p.moved_above.len(),
                    p.moved_above.join("; ")
                ),
                _ => format!("{fam}: {line} already present"),
            });
            a.rules.push(
                json!({"interface": iface, "destination": set.family.imds(), "state": state}),
            );
        }
        if p.jump == Some("placed") {
            a.summary
                .push(format!("{fam}: placed -j {DOCKER_USER} first in {FORWARD}"));
        }
        if p.duplicate_jumps_removed > 0 {
            a.summary.push(format!(
                "{fam}: removed {} later -j {DOCKER_USER} from {FORWARD}",
                p.duplicate_jumps_removed
            ));
        }
    } else {
        for (iface, state) in &p.rules {
            a.rules.push(
                json!({"interface": iface, "destination": set.family.imds(), "state": state}),
            );
        }
        if p.jump == Some("removed") {
            a.summary.push(format!(
                "{fam}: removed -j {DOCKER_USER} and the empty chain {DOCKER_USER} (no Docker chains here)"
            ));
        }
        if p.ops.is_empty() {
            a.summary
                .push(format!("{fam}: nothing of ours in the kernel's tables"));
        }
    }
    a
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

fn resolve_iptables(opts: &Options) -> Result<PathBuf, IptError> {
    resolve_binary(opts.iptables.as_deref())
}

/// The iptables binary to run: `--iptables` (a path, or a name looked up like the default),
/// else `iptables` from PATH or the sbin folders.
pub fn resolve_binary(iptables: Option<&Path>) -> Result<PathBuf, IptError> {
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

/// Which rules file a family persists to, or why none.
fn persist_target(opts: &Options, distro: &Distro, family: Family) -> Result<PathBuf, String> {
    let explicit = match family {
        Family::V4 => &opts.persist_file,
        Family::V6 => &opts.persist_file6,
    };
    if let Some(p) = explicit {
        return Ok(p.clone());
    }
    match distro.default_files() {
        Some((v4, v6)) => Ok(opts.root.join(match family {
            Family::V4 => v4,
            Family::V6 => v6,
        })),
        None => Err(format!(
            "nothing persists the {} rule on {}: ecs-bootstrap re-asserts it at every boot, but until it runs the rule is absent; pass --persist-file{} to write a rules file that your boot loads",
            family.name(),
            distro.name(),
            if family == Family::V6 { "6" } else { "" }
        )),
    }
}

pub fn run(opts: &Options, runner: &dyn CommandRunner) -> anyhow::Result<StepResult> {
    let mut summary: Vec<String> = vec![];
    let mut warnings: Vec<String> = vec![];
    let mut changed = false;

    let bin4 = resolve_iptables(opts)?;
    let ipt4 = Ipt::new(bin4.clone(), Family::V4, runner);

    let mut v6_error: Option<String> = None;
    let bin6 = iptables::ip6tables_beside(&bin4);
    let bin6_found = bin6.as_deref().filter(|p| iptables::is_executable(p));
    let (v6, v6_reason): (Option<PathBuf>, String) = match opts.ipv6 {
        Ipv6Mode::Off => (None, "--ipv6 off".into()),
        Ipv6Mode::On => match bin6_found {
            Some(p) => (Some(p.to_owned()), "--ipv6 on".into()),
            None => {
                return Err(IptError::Missing {
                    bin: bin6
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "ip6tables".into()),
                }
                .into());
            }
        },
        Ipv6Mode::Auto => match (host_has_ipv6(), bin6_found) {
            (true, Some(p)) => (Some(p.to_owned()), "auto: the host has IPv6".into()),
            (false, _) => (None, "auto: the host has no IPv6".into()),
            (true, None) => {
                let bin6 = bin6
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "ip6tables".into());
                let exposed = std::fs::read_to_string("/proc/net/if_inet6")
                    .map(|t| global_v6_on(&t, &opts.interfaces))
                    .unwrap_or_default();
                if exposed.is_empty() {
                    warnings.push(format!(
                        "the host has IPv6 but {bin6} is missing: fd00:ec2::254 is not blocked (no blocked bridge has a global IPv6 address now, so containers cannot reach it yet); install ip6tables (package iptables) or pass --ipv6 off"
                    ));
                } else {
                    // Fail closed: containers on these bridges can reach IMDS over IPv6.
                    v6_error = Some(format!(
                        "{} {} a global IPv6 address, so containers on it can reach instance metadata at fd00:ec2::254, but {bin6} is missing and the IPv6 rule cannot be put in place (the IPv4 rule is); install ip6tables (Amazon Linux 2023: `dnf install iptables-nft`; Amazon Linux 2 and RHEL: `yum install iptables`; Debian and Ubuntu: `apt-get install iptables`), or pass --ipv6 off if the instance's IPv6 metadata endpoint is disabled",
                        exposed.join(", "),
                        if exposed.len() == 1 { "has" } else { "have" }
                    ));
                }
                (None, "auto: ip6tables missing".into())
            }
        },
    };

    if opts.placement == Placement::Forward {
        warnings.push(FORWARD_WARNING.into());
    }

    let lock_path = opts.root.join(lock::LOCK_FILE);
    let lock = lock::acquire(&lock_path, LOCK_PATIENCE)?;

    let mut families = vec![(Family::V4, bin4.clone())];
    if let Some(b) = &v6 {
        families.push((Family::V6, b.clone()));
    }
    let distro = (opts.persist != PersistMode::None).then(|| Distro::detect(&opts.root));
    // The families are independent (separate tables, separate binaries, separate rules files):
    // each runs on its own thread, which halves the step's time on a dual-stack host. Results
    // are merged in family order, so the report reads the same as a sequential run.
    // `iptables -V` (for the report) runs beside them rather than before them.
    let (backend, outcomes) = std::thread::scope(|scope| {
        let backend = scope.spawn(|| ipt4.backend());
        let handles: Vec<_> = families
            .into_iter()
            .map(|(family, bin)| {
                let distro = distro.as_ref();
                scope.spawn(move || run_family(opts, distro, runner, family, bin))
            })
            .collect();
        let outcomes: Vec<anyhow::Result<FamilyOutcome>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a firewall thread panicked")))
            })
            .collect();
        (backend.join(), outcomes)
    });
    let backend = backend.map_err(|_| anyhow::anyhow!("a firewall thread panicked"))??;
    summary.push(format!(
        "iptables {} ({} backend)",
        bin4.display(),
        backend.name()
    ));
    let mut fam_details = vec![];
    for outcome in outcomes {
        let o = outcome?;
        changed |= o.changed;
        summary.extend(o.summary);
        warnings.extend(o.warnings);
        fam_details.push(o.details);
    }
    drop(lock);

    for w in &warnings {
        tracing::warn!("{w}");
        summary.push(format!("warning: {w}"));
    }
    let details = json!({
            "backend": backend,
            "iptables": bin4,
            "chain": opts.placement,
            "interfaces": opts.interfaces,
            "ipv6": {"enabled": v6.is_some(), "reason": v6_reason},
            "persist_mode": match opts.persist {
                PersistMode::Merge => "merge",
                PersistMode::FullSave => "full-save",
                PersistMode::None => "none",
            },
            "families": fam_details,
            "warnings": warnings,
    });
    if let Some(message) = v6_error {
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
    summary: Vec<String>,
    warnings: Vec<String>,
    details: Value,
}

/// Applies and persists the rules of one address family.
fn run_family(
    opts: &Options,
    distro: Option<&Distro>,
    runner: &dyn CommandRunner,
    family: Family,
    bin: PathBuf,
) -> anyhow::Result<FamilyOutcome> {
    let ipt = Ipt::new(bin.clone(), family, runner);
    let set = opts.rule_set(family);
    let mut persist_summary = vec![];
    let mut warnings = vec![];
    let (applied, persist) = if opts.persist == PersistMode::Merge {
        // A merged file depends only on the file and our rules, not on the kernel's tables, so
        // it is merged, tested and written while the rules are applied (`full-save` reads the
        // tables and must come after). Should applying fail, the file still holds exactly the
        // rules we want restored at boot.
        std::thread::scope(|scope| {
            let persist = scope.spawn(|| {
                persist_family(
                    opts,
                    distro,
                    &ipt,
                    &set,
                    &mut persist_summary,
                    &mut warnings,
                )
            });
            let applied = apply(&ipt, &set, opts.mode());
            let persist = persist
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the persist thread panicked")));
            (applied, persist)
        })
    } else {
        let applied = apply(&ipt, &set, opts.mode());
        let persist = match &applied {
            Ok(_) => persist_family(
                opts,
                distro,
                &ipt,
                &set,
                &mut persist_summary,
                &mut warnings,
            ),
            Err(_) => Ok((Value::Null, false)),
        };
        (applied, persist)
    };
    let applied = applied?;
    let (persisted, written) = persist?;
    let mut summary = applied.summary;
    summary.extend(persist_summary);
    warnings.extend(applied.warnings);
    Ok(FamilyOutcome {
        changed: applied.changed || written,
        summary,
        warnings,
        details: json!({
            "family": family,
            "binary": bin,
            "chain": set.chain(),
            "chain_created": applied.chain_created,
            "rules": applied.rules,
            "jump": applied.jump,
            "duplicate_jumps_removed": applied.duplicate_jumps_removed,
            "moved_above": applied.moved_above,
            "removed": applied.removed,
            "method": applied.method,
            "persist": persisted,
        }),
    })
}

/// Persists one family per `--persist`; returns the JSON details and whether a file was written.
fn persist_family(
    opts: &Options,
    distro: Option<&Distro>,
    ipt: &Ipt,
    set: &RuleSet,
    summary: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> anyhow::Result<(Value, bool)> {
    let fam = set.family.name();
    let Some(distro) = distro else {
        return Ok((
            json!({"outcome": "skipped", "reason": "--persist none"}),
            false,
        ));
    };
    let path = match persist_target(opts, distro, set.family) {
        Ok(p) => p,
        Err(w) => {
            warnings.push(w);
            let reason = format!("no rules file known for {}", distro.name());
            return Ok((json!({"outcome": "skipped", "reason": reason}), false));
        }
    };
    let loader = loader_state(opts, distro, set.family, &path);
    // A rules file that is a link is written through to its target only when that is a
    // regular file of root's; otherwise persistence is skipped (the kernel rule is in place,
    // so the step does not fail at every boot).
    let file = match persist::resolve_rules_file(&path) {
        Ok(f) => f,
        Err(why) => {
            warnings.push(format!(
                "{why}: the {fam} rule is not persisted (ecs-bootstrap re-asserts it at every boot); replace the link with a regular file, or pass --persist-file"
            ));
            return Ok((
                json!({"file": path, "outcome": "skipped", "reason": why}),
                false,
            ));
        }
    };
    let p = match opts.persist {
        PersistMode::Merge => {
            persist::merge_into(ipt, &file, set, opts.mode(), loader.0.is_some())?
        }
        PersistMode::FullSave => persist::full_save_into(ipt, &file)?,
        PersistMode::None => unreachable!("handled above"),
    };
    summary.push(format!(
        "{fam}: persisted to {} ({})",
        p.file.display(),
        outcome_name(p.outcome)
    ));
    for n in &p.notes {
        summary.push(format!("{fam}: {}: {n}", p.file.display()));
    }
    warnings.extend(p.warnings.iter().cloned());
    if let Some(w) = &loader.1 {
        warnings.push(w.clone());
    }
    let details = json!({
        "file": p.file,
        "link": (file != path).then_some(&path),
        "outcome": outcome_name(p.outcome),
        "backup": p.backup,
        "notes": p.notes,
        "loaded_at_boot_by": loader.0,
    });
    Ok((details, p.outcome == WriteOutcome::Written))
}

/// The unit that loads `path` at boot, or a warning that none does.
fn loader_state(
    opts: &Options,
    distro: &Distro,
    family: Family,
    path: &Path,
) -> (Option<&'static str>, Option<String>) {
    let Some((units, package)) = distro.loader(family) else {
        return (None, None);
    };
    let default = distro
        .default_files()
        .map(|(a, b)| [opts.root.join(a), opts.root.join(b)].contains(&path.to_path_buf()))
        .unwrap_or(false);
    if !default {
        return (None, None);
    }
    // A loader counts only when it is enabled: an installed but disabled iptables.service
    // restores nothing at boot.
    match units.iter().find(|u| persist::unit_enabled(&opts.root, u)) {
        Some(u) => (Some(u), None),
        None => {
            let installed = units.iter().any(|u| persist::unit_installed(&opts.root, u));
            let fix = if installed {
                format!("enable {} (systemctl enable {})", units[0], units[0])
            } else {
                format!("install {package} and enable {}", units[0])
            };
            (
                None,
                Some(format!(
                    "nothing loads {} at boot: {fix} (ecs-bootstrap re-asserts the rule at every boot regardless)",
                    path.display()
                )),
            )
        }
    }
}

fn outcome_name(o: WriteOutcome) -> &'static str {
    match o {
        WriteOutcome::Written => "written",
        WriteOutcome::Unchanged => "unchanged",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::CmdOutput;
    use std::ffi::OsString;
    use std::sync::Mutex;

    /// Answers each command with the next canned output and records the command lines (with
    /// stdin): only for an order of events a real iptables cannot be made to produce on cue.
    struct Canned(
        Mutex<Vec<(i32, &'static str, &'static str)>>,
        Mutex<Vec<String>>,
    );

    impl CommandRunner for Canned {
        fn run(
            &self,
            p: &Path,
            a: &[OsString],
            stdin: Option<&[u8]>,
        ) -> std::io::Result<CmdOutput> {
            let mut line = p.display().to_string();
            for x in a {
                line.push(' ');
                line.push_str(&x.to_string_lossy());
            }
            if let Some(i) = stdin {
                line.push_str(&format!(
                    " <<< {}",
                    String::from_utf8_lossy(i).replace('\n', ";")
                ));
            }
            self.1.lock().unwrap().push(line);
            let (status, stdout, stderr) = self.0.lock().unwrap().remove(0);
            Ok(CmdOutput {
                status: Some(status),
                stdout: stdout.into(),
                stderr: stderr.into(),
            })
        }
    }

    fn docker_user_set() -> RuleSet {
        RuleSet {
            family: Family::V4,
            placement: Placement::DockerUser,
            interfaces: vec!["docker+".into()],
        }
    }

    const EMPTY: &str = "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n";

    /// First boot: one listing, then every change in one transaction.
    #[test]
    fn changes_go_in_as_one_transaction() {
        let r = Canned(
            Mutex::new(vec![(0, EMPTY, ""), (0, "", "")]),
            Mutex::new(vec![]),
        );
        let ipt = Ipt::new("/usr/sbin/iptables".into(), Family::V4, &r);
        let a = apply(&ipt, &docker_user_set(), Mode::Assert).unwrap();
        assert!(a.changed && a.chain_created);
        assert_eq!(a.jump, Some("placed"));
        let calls = r.1.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                "/usr/sbin/iptables -w 10 -t filter -S",
                "/usr/sbin/iptables-restore -w 10 --noflush <<< *filter;-N DOCKER-USER;\
                 -I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP;\
                 -I FORWARD 1 -j DOCKER-USER;COMMIT;"
            ]
        );
    }

    /// dockerd created DOCKER-USER between our listing and our transaction: the transaction
    /// fails whole, and the step lists again, plans again and commits the new plan.
    #[test]
    fn a_failed_transaction_is_planned_again_on_a_fresh_listing() {
        let r = Canned(
            Mutex::new(vec![
                (0, EMPTY, ""),
                (
                    1,
                    "",
                    "iptables-restore: line 2 failed: Chain already exists.\n",
                ),
                (
                    0,
                    "-P FORWARD ACCEPT\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\n",
                    "",
                ),
                (0, "", ""),
            ]),
            Mutex::new(vec![]),
        );
        let ipt = Ipt::new("/usr/sbin/iptables".into(), Family::V4, &r);
        let a = apply(&ipt, &docker_user_set(), Mode::Assert).unwrap();
        assert!(a.changed && !a.chain_created);
        assert_eq!(a.jump, Some("present"));
        assert_eq!(a.rules[0]["state"], "added");
        assert_eq!(a.method.as_deref(), Some("transaction (attempt 2)"));
        let calls = r.1.lock().unwrap().clone();
        assert_eq!(calls.len(), 4, "{calls:#?}");
        assert!(
            calls[3].ends_with(
                "--noflush <<< *filter;-I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP;COMMIT;"
            ),
            "{calls:#?}"
        );
    }

    /// No iptables-restore: one command at a time, and a rule that moves (here the jump and
    /// our DROP, both below others) first gets a temporary copy at the top, so the block never
    /// lapses; every delete names the full rule spec, never a position.
    #[test]
    fn without_restore_a_move_goes_through_a_temporary_copy() {
        const TABLE: &str = "-P FORWARD ACCEPT\n-N DOCKER-USER\n-A FORWARD -j DOCKER-FORWARD\n-A FORWARD -j DOCKER-USER\n\
                     -A DOCKER-USER -j RETURN\n\
                     -A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP\n";
        // A missing binary is io::ErrorKind::NotFound from the runner; other commands succeed.
        struct NoRestore<'a>(&'a Canned, Mutex<Vec<String>>);
        impl CommandRunner for NoRestore<'_> {
            fn run(
                &self,
                p: &Path,
                a: &[OsString],
                stdin: Option<&[u8]>,
            ) -> std::io::Result<CmdOutput> {
                if p.ends_with("iptables-restore") {
                    return Err(std::io::ErrorKind::NotFound.into());
                }
                if a.iter().any(|x| x == "-S") {
                    return self.0.run(p, a, stdin);
                }
                let mut line = String::new();
                for x in a.iter().skip(2) {
                    line.push_str(&x.to_string_lossy());
                    line.push(' ');
                }
                self.1.lock().unwrap().push(line.trim_end().to_owned());
                Ok(CmdOutput {
                    status: Some(0),
                    stdout: String::new(),
                    stderr: String::new(),
                })
            }
        }
        let canned = Canned(
            Mutex::new(vec![(0, TABLE, ""), (0, TABLE, "")]),
            Mutex::new(vec![]),
        );
        let nr = NoRestore(&canned, Mutex::new(vec![]));
        let ipt = Ipt::new("/usr/sbin/iptables".into(), Family::V4, &nr);
        let a = apply(&ipt, &docker_user_set(), Mode::Assert).unwrap();
        assert_eq!(a.method.as_deref(), Some("one command at a time"));
        assert_eq!(a.moved_above, ["-A DOCKER-USER -j RETURN"]);
        let ours = "-d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP";
        let copy =
            "-d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap-moving -j DROP";
        assert_eq!(
            *nr.1.lock().unwrap(),
            [
                format!("-t filter -I DOCKER-USER 1 {copy}"),
                "-t filter -I FORWARD 1 -m comment --comment ecs-bootstrap-moving -j DOCKER-USER"
                    .into(),
                format!("-t filter -D DOCKER-USER {ours}"),
                "-t filter -D FORWARD -j DOCKER-USER".into(),
                format!("-t filter -I DOCKER-USER 1 {ours}"),
                "-t filter -I FORWARD 1 -j DOCKER-USER".into(),
                format!("-t filter -D DOCKER-USER {copy}"),
                "-t filter -D FORWARD -m comment --comment ecs-bootstrap-moving -j DOCKER-USER"
                    .into(),
            ]
        );
    }

    /// A transaction that keeps failing is tried a bounded number of times, then the plan
    /// goes in one command at a time, whose error names the command.
    #[test]
    fn retries_are_bounded() {
        let mut script = vec![];
        for _ in 0..TRANSACTION_ATTEMPTS {
            script.push((0, EMPTY, ""));
            script.push((1, "", "iptables-restore: line 2 failed\n"));
        }
        script.push((0, EMPTY, ""));
        script.push((1, "", "iptables: Chain already exists.\n"));
        script.push((0, "", ""));
        script.push((0, "", ""));
        let r = Canned(Mutex::new(script), Mutex::new(vec![]));
        let ipt = Ipt::new("/usr/sbin/iptables".into(), Family::V4, &r);
        let a = apply(&ipt, &docker_user_set(), Mode::Assert).unwrap();
        assert_eq!(a.method.as_deref(), Some("one command at a time"));
        let calls = r.1.lock().unwrap().clone();
        assert_eq!(
            calls.len(),
            2 * TRANSACTION_ATTEMPTS as usize + 4,
            "{calls:#?}"
        );
        assert!(calls.iter().all(|c| !c.contains(" -D ")), "{calls:#?}");
    }

    /// A lock held past the wait is not retried (that would double the wait): the error says so.
    #[test]
    fn a_lock_timeout_in_the_transaction_is_reported() {
        let r = Canned(
            Mutex::new(vec![
                (0, EMPTY, ""),
                (
                    4,
                    "",
                    "Another app is currently holding the xtables lock.\n",
                ),
            ]),
            Mutex::new(vec![]),
        );
        let ipt = Ipt::new("/usr/sbin/iptables".into(), Family::V4, &r);
        let e = apply(&ipt, &docker_user_set(), Mode::Assert).unwrap_err();
        assert!(e.is_lock_timeout(), "{e}");
        let m = e.to_string();
        assert!(m.contains("iptables-restore -w 10 --noflush"), "{m}");
        assert!(m.contains("-N DOCKER-USER"), "{m}");
        assert_eq!(r.1.lock().unwrap().len(), 2);
    }

    #[test]
    fn the_moving_copy_differs_only_by_its_comment() {
        let set = docker_user_set();
        assert_eq!(
            moving_copy(&set.spec("docker+")).join(" "),
            "-d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap-moving -j DROP"
        );
        assert_eq!(
            moving_copy(&plan::jump_spec(None)).join(" "),
            "-m comment --comment ecs-bootstrap-moving -j DOCKER-USER"
        );
    }

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

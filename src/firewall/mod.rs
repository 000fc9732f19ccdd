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
//! Concurrency. All of it runs under an exclusive lock in /run ([`lock`]) plus iptables' own
//! `-w` lock wait ([`iptables`]), so concurrent runs end with exactly one rule; every check is
//! made before any change, so a second run changes nothing.
//!
//! Modules: [`rules`] (pure rendering), [`iptables`] (the runner over the binaries, and why it
//! is ours rather than the `iptables` crate), [`persist`] (merge into the distribution's rules
//! file, and what happens to the iptables-services sample file), [`lock`].

pub mod iptables;
pub mod lock;
pub mod persist;
pub mod rules;

use crate::cli::{ChainChoice, FirewallArgs, Ipv6Mode, PersistMode};
use crate::error::UsageError;
use crate::fsutil::WriteOutcome;
use crate::report::StepResult;
use crate::sys::{CommandRunner, Root};
use iptables::{Ipt, IptError, Presence};
use persist::Distro;
use rules::{DOCKER_USER, FORWARD, Family, Placement, RuleSet};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use rules::{IMDS_V4, IMDS_V6};

/// The warning `--chain FORWARD` prints.
pub const FORWARD_WARNING: &str = "--chain FORWARD puts the DROP rule at the top of FORWARD, as the AWS documentation does: dockerd re-inserts its own ACCEPT rules above it whenever it starts or restarts, and containers then reach instance metadata again. Use the default (--chain DOCKER-USER), or re-run block-imds after every dockerd start (the docker.service drop-in does, and moves the rule back to the top; between dockerd's start and that rerun, containers reach IMDS).";

/// How long a run waits for another run's lock.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(30);

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
}

impl Options {
    pub fn from_args(args: &FirewallArgs, root: &Root) -> Result<Self, UsageError> {
        let mut interfaces: Vec<String> = vec![];
        for i in &args.interfaces {
            rules::validate_interface(i).map_err(UsageError)?;
            if !interfaces.contains(i) {
                interfaces.push(i.clone());
            }
        }
        if interfaces.is_empty() {
            interfaces.push("docker+".into());
        }
        if let Some(p) = &args.iptables
            && p.as_os_str().is_empty()
        {
            return Err(UsageError(
                "--iptables is empty; give the path of an iptables binary, e.g. /usr/sbin/iptables-nft".into(),
            ));
        }
        if args.ipv6 == Ipv6Mode::On
            && let Some(p) = &args.iptables
            && iptables::ip6tables_beside(p).is_none()
        {
            return Err(UsageError(format!(
                "--ipv6 on needs ip6tables beside --iptables {}, but its name does not start with `iptables`; use --ipv6 off or a binary named iptables*",
                p.display()
            )));
        }
        Ok(Options {
            iptables: args.iptables.clone(),
            placement: match args.chain {
                ChainChoice::DockerUser => Placement::DockerUser,
                ChainChoice::Forward => Placement::Forward,
            },
            interfaces,
            ipv6: args.ipv6,
            persist: args.persist,
            persist_file: args.persist_file.clone(),
            persist_file6: args.persist_file6.clone(),
            root: root.clone(),
        })
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
    summary: Vec<String>,
    warnings: Vec<String>,
}

/// The changes of one [`apply`]: batched into one `iptables-restore --noflush` transaction
/// (one commit, one process), or run one command at a time.
struct Changes<'a, 'b> {
    ipt: &'a Ipt<'b>,
    /// `Some` when batching: the commands not yet committed.
    batch: Option<Vec<Vec<String>>>,
}

impl Changes<'_, '_> {
    /// `-N chain`; Ok(false) when it exists already (only known when not batching).
    fn new_chain(&mut self, chain: &str) -> Result<bool, IptError> {
        match &mut self.batch {
            Some(b) => {
                b.push(vec!["-N".into(), chain.into()]);
                Ok(true)
            }
            None => self.ipt.new_chain(chain),
        }
    }

    fn insert(&mut self, chain: &str, pos: usize, spec: &[String]) -> Result<(), IptError> {
        match &mut self.batch {
            Some(b) => {
                let mut c = vec!["-I".into(), chain.into(), pos.to_string()];
                c.extend(spec.iter().cloned());
                b.push(c);
                Ok(())
            }
            None => self.ipt.insert(chain, pos, spec),
        }
    }

    /// `-D chain spec` (the first rule that matches), only in a transaction: there, every old
    /// copy goes in the same commit that inserts the new one.
    fn delete(&mut self, chain: &str, spec: &[String]) -> Result<(), IptError> {
        if let Some(b) = &mut self.batch {
            let mut c = vec!["-D".into(), chain.into()];
            c.extend(spec.iter().cloned());
            b.push(c);
        }
        Ok(())
    }

    fn batching(&self) -> bool {
        self.batch.is_some()
    }

    /// Applies what was batched so far.
    fn commit(&mut self) -> Result<(), IptError> {
        match self.batch.as_mut().map(std::mem::take) {
            Some(b) if !b.is_empty() => self.ipt.restore_noflush(&b),
            _ => Ok(()),
        }
    }
}

/// Makes one family's rules what they should be. Every question is asked first (one listing,
/// `-C` per rule in an existing DOCKER-USER); the changes then go in as one `iptables-restore
/// --noflush` transaction, which also makes a move (delete the old copies, insert at the top)
/// atomic. Should that transaction fail (something else, dockerd say, created DOCKER-USER or
/// changed FORWARD since the listing, or iptables-restore is missing), nothing of it applied:
/// everything is asked again and done one command at a time, inserting before deleting so
/// that the block never lapses, with the precise error of the command that fails. Only a lock
/// held past the wait is reported at once (a retry would wait as long again).
fn apply(ipt: &Ipt, set: &RuleSet) -> Result<Applied, IptError> {
    match apply_with(ipt, set, true) {
        Err(e) if !e.is_lock_timeout() => {
            tracing::debug!(family = set.family.name(), error = %e, "the batched change failed; retrying one command at a time");
            apply_with(ipt, set, false)
        }
        r => r,
    }
}

fn apply_with(ipt: &Ipt, set: &RuleSet, batch: bool) -> Result<Applied, IptError> {
    let mut changes = Changes {
        ipt,
        batch: batch.then(Vec::new),
    };
    let mut a = match set.placement {
        Placement::DockerUser => apply_docker_user(ipt, set, &mut changes)?,
        Placement::Forward => apply_forward(ipt, set, &mut changes)?,
    };
    changes.commit()?;
    // One command at a time, the new copies went in first: now the old ones go.
    if !batch {
        if let Some(jump) = set.jump_line() {
            a.duplicate_jumps_removed = remove_below(ipt, 1, |l| l == jump)?;
        }
        if set.placement == Placement::Forward {
            let n = set.interfaces.len();
            remove_below(ipt, n, |l| {
                set.interfaces.iter().any(|i| set.is_rule_for(l, i))
            })?;
        }
    }
    if a.duplicate_jumps_removed > 0 {
        a.changed = true;
        a.summary.push(format!(
            "{}: removed {} later -j {DOCKER_USER} from {FORWARD}",
            set.family.name(),
            a.duplicate_jumps_removed
        ));
    }
    Ok(a)
}

/// Deletes the rules of FORWARD below its first `keep` rules for which `ours` holds, highest
/// position first so that the lower positions stay valid (bounded by the listing's length).
/// Returns how many went.
fn remove_below(ipt: &Ipt, keep: usize, ours: impl Fn(&str) -> bool) -> Result<usize, IptError> {
    let forward = ipt.list(FORWARD)?;
    let extra: Vec<usize> = forward
        .iter()
        .enumerate()
        .skip(keep)
        .filter(|(_, l)| ours(l))
        .map(|(i, _)| i + 1)
        .collect();
    for pos in extra.iter().rev() {
        ipt.delete_at(FORWARD, *pos)?;
    }
    Ok(extra.len())
}

/// The rule lines' summary and report entries, in the order given.
fn report_rules(a: &mut Applied, set: &RuleSet, states: &[(&String, &'static str)]) {
    let (fam, chain) = (set.family.name(), set.chain());
    for (iface, state) in states {
        let line = set.save_line(iface);
        a.summary.push(match *state {
            "added" => format!("{fam}: added {line} at the top of {chain}"),
            "moved" => format!("{fam}: moved {line} back to the top of {chain}"),
            _ => format!("{fam}: {line} already present"),
        });
        a.rules
            .push(json!({"interface": iface, "destination": set.family.imds(), "state": state}));
    }
}

/// The default placement: DOCKER-USER exists, holds our rules at its top, and `-j DOCKER-USER`
/// is the first rule of FORWARD, exactly once.
fn apply_docker_user(ipt: &Ipt, set: &RuleSet, changes: &mut Changes) -> Result<Applied, IptError> {
    let mut a = Applied::default();
    let fam = set.family.name();
    // One listing of the whole filter table tells whether DOCKER-USER exists and what FORWARD
    // holds (one iptables call instead of one per chain, on the boot path).
    let (table, legacy_too) = ipt.list_table()?;
    if legacy_too {
        a.warnings.push(format!(
            "{fam}: iptables-legacy tables exist beside the nft ones (a dockerd or another tool on iptables-legacy?): the rule is in the nft backend of {}, where `{} -S` shows it and `iptables-legacy -S` does not; the kernel applies both, so the block holds. Pass --iptables with the legacy binary to keep everything in one backend",
            ipt.bin.display(),
            ipt.bin.display()
        ));
    }
    if !table.iter().any(|l| l == &format!("-N {DOCKER_USER}")) {
        a.chain_created = changes.new_chain(DOCKER_USER)?;
        if a.chain_created {
            a.summary
                .push(format!("{fam}: created chain {DOCKER_USER}"));
            a.changed = true;
        }
    }
    // In reverse, each at position 1: the rules end up in the order given, at the top.
    let mut states = vec![];
    for iface in set.interfaces.iter().rev() {
        let spec = set.spec(iface);
        // A chain created just now is empty: no need to ask whether the rule is in it.
        let presence = if a.chain_created {
            Presence::Absent
        } else {
            ipt.check(DOCKER_USER, &spec)?
        };
        let state = match presence {
            Presence::Present => "present",
            Presence::Absent => {
                changes.insert(DOCKER_USER, 1, &spec)?;
                a.changed = true;
                "added"
            }
        };
        states.push((iface, state));
    }
    states.reverse();
    report_rules(&mut a, set, &states);

    let jump = set.jump_line().expect("DOCKER-USER placement has a jump");
    let forward: Vec<&String> = table
        .iter()
        .filter(|l| l.starts_with(&format!("-A {FORWARD} ")))
        .collect();
    let jumps = forward.iter().filter(|l| ***l == jump).count();
    let first = forward.first() == Some(&&jump);
    let to_jump = ["-j".to_owned(), DOCKER_USER.to_owned()];
    a.jump = Some(if first { "present" } else { "placed" });
    if !first {
        a.changed = true;
        a.summary
            .push(format!("{fam}: placed -j {DOCKER_USER} first in {FORWARD}"));
    }
    if first && jumps == 1 {
        return Ok(a);
    }
    if changes.batching() {
        // One transaction: every old copy out, one jump in at the top.
        for _ in 0..jumps {
            changes.delete(FORWARD, &to_jump)?;
        }
        changes.insert(FORWARD, 1, &to_jump)?;
        a.duplicate_jumps_removed = jumps - usize::from(first);
    } else if !first {
        // One command at a time: the new jump first; `apply_with` removes the old ones after.
        changes.insert(FORWARD, 1, &to_jump)?;
    }
    Ok(a)
}

/// `--chain FORWARD`, the documented placement: our rules are the first rules of FORWARD, in
/// the order given, each exactly once. After dockerd has put its rules above them, a rerun
/// (the docker.service drop-in) moves them back to the top.
fn apply_forward(ipt: &Ipt, set: &RuleSet, changes: &mut Changes) -> Result<Applied, IptError> {
    let mut a = Applied::default();
    let forward = ipt.list(FORWARD)?;
    let n = set.interfaces.len();
    let ours = |l: &str| set.interfaces.iter().any(|i| set.is_rule_for(l, i));
    let on_top = forward.len() >= n
        && set
            .interfaces
            .iter()
            .zip(&forward)
            .all(|(i, l)| set.is_rule_for(l, i));
    let copies = forward.iter().filter(|l| ours(l)).count();
    let mut states = vec![];
    if on_top && copies == n {
        states = set.interfaces.iter().map(|i| (i, "present")).collect();
        report_rules(&mut a, set, &states);
        return Ok(a);
    }
    a.changed = true;
    if changes.batching() {
        // One transaction: every old copy out, our rules in at the top.
        for iface in &set.interfaces {
            let spec = set.spec(iface);
            for _ in forward.iter().filter(|l| set.is_rule_for(l, iface)) {
                changes.delete(FORWARD, &spec)?;
            }
        }
    }
    for iface in set.interfaces.iter().rev() {
        changes.insert(FORWARD, 1, &set.spec(iface))?;
    }
    for iface in &set.interfaces {
        let had = forward.iter().any(|l| set.is_rule_for(l, iface));
        states.push((iface, if had { "moved" } else { "added" }));
    }
    report_rules(&mut a, set, &states);
    Ok(a)
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
    match &opts.iptables {
        Some(p) if p.components().count() > 1 || p.is_absolute() => {
            if iptables::is_executable(p) {
                Ok(p.clone())
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
                let w = format!(
                    "the host has IPv6 but {} is missing: fd00:ec2::254 is not blocked; install ip6tables (package iptables) or pass --ipv6 off",
                    bin6.map(|p| p.display().to_string())
                        .unwrap_or_else(|| "ip6tables".into())
                );
                warnings.push(w);
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
    Ok(StepResult {
        changed,
        summary,
        details: json!({
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
        }),
    })
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
            let applied = apply(&ipt, &set);
            let persist = persist
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the persist thread panicked")));
            (applied, persist)
        })
    } else {
        let applied = apply(&ipt, &set);
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
    let p = match opts.persist {
        PersistMode::Merge => persist::merge_into(ipt, &path, set)?,
        PersistMode::FullSave => persist::full_save_into(ipt, &path)?,
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
    let loader = loader_state(opts, distro, set.family, &path);
    if let Some(w) = &loader.1 {
        warnings.push(w.clone());
    }
    let details = json!({
        "file": p.file,
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
    match units
        .iter()
        .find(|u| persist::unit_installed(&opts.root, u))
    {
        Some(u) => (Some(u), None),
        None => (
            None,
            Some(format!(
                "nothing loads {} at boot: install {package} and enable {} (ecs-bootstrap re-asserts the rule at every boot regardless)",
                path.display(),
                units[0]
            )),
        ),
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
        let a = apply(&ipt, &docker_user_set()).unwrap();
        assert!(a.changed && a.chain_created);
        assert_eq!(a.jump, Some("placed"));
        let calls = r.1.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                "/usr/sbin/iptables -w 10 -t filter -S",
                "/usr/sbin/iptables-restore -w 10 --noflush <<< *filter;-N DOCKER-USER;\
                 -I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -j DROP;\
                 -I FORWARD 1 -j DOCKER-USER;COMMIT;"
            ]
        );
    }

    /// dockerd created DOCKER-USER between our listing and our transaction: the transaction
    /// fails whole, and the step asks again and goes one command at a time.
    #[test]
    fn a_failed_transaction_is_redone_one_command_at_a_time() {
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
                    "-P FORWARD ACCEPT\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n",
                    "",
                ),
                (
                    1,
                    "",
                    "iptables: Bad rule (does a matching rule exist in that chain?).\n",
                ),
                (0, "", ""),
                (0, "-A FORWARD -j DOCKER-USER\n", ""),
            ]),
            Mutex::new(vec![]),
        );
        let ipt = Ipt::new("/usr/sbin/iptables".into(), Family::V4, &r);
        let a = apply(&ipt, &docker_user_set()).unwrap();
        assert!(a.changed && !a.chain_created);
        assert_eq!(a.jump, Some("present"));
        assert_eq!(a.rules[0]["state"], "added");
        let calls = r.1.lock().unwrap().clone();
        assert_eq!(calls.len(), 6, "{calls:#?}");
        assert!(
            calls[3].contains(" -C DOCKER-USER -d 169.254.169.254/32 -i docker+"),
            "{calls:#?}"
        );
        assert!(
            calls[4].contains(" -I DOCKER-USER 1 -d 169.254.169.254/32"),
            "{calls:#?}"
        );
        assert!(calls[5].ends_with(" -S FORWARD"), "{calls:#?}");
    }

    /// A jump that is not first, twice: one transaction takes both copies out and puts one at
    /// the top (no moment without a jump, no position arithmetic against a changing chain).
    #[test]
    fn misplaced_and_duplicate_jumps_are_fixed_in_one_transaction() {
        let r = Canned(
            Mutex::new(vec![
                (
                    0,
                    "-P FORWARD ACCEPT\n-N DOCKER-USER\n-A FORWARD -j DOCKER-FORWARD\n\
                     -A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-USER\n",
                    "",
                ),
                (0, "", ""),
                (0, "", ""),
            ]),
            Mutex::new(vec![]),
        );
        let ipt = Ipt::new("/usr/sbin/iptables".into(), Family::V4, &r);
        let a = apply(&ipt, &docker_user_set()).unwrap();
        assert!(a.changed);
        assert_eq!((a.jump, a.duplicate_jumps_removed), (Some("placed"), 2));
        assert_eq!(a.rules[0]["state"], "present");
        let calls = r.1.lock().unwrap().clone();
        assert_eq!(calls.len(), 3, "{calls:#?}");
        assert!(
            calls[2].ends_with(
                "--noflush <<< *filter;-D FORWARD -j DOCKER-USER;-D FORWARD -j DOCKER-USER;\
                 -I FORWARD 1 -j DOCKER-USER;COMMIT;"
            ),
            "{calls:#?}"
        );
    }

    /// `--chain FORWARD` after dockerd put its rules above ours: the rule moves back to the
    /// top in one transaction.
    #[test]
    fn forward_placement_moves_the_rule_back_to_the_top() {
        let set = RuleSet {
            placement: Placement::Forward,
            ..docker_user_set()
        };
        let r = Canned(
            Mutex::new(vec![
                (
                    0,
                    "-P FORWARD ACCEPT\n-A FORWARD -j DOCKER-FORWARD\n\
                     -A FORWARD -d 169.254.169.254/32 -i docker+ -j DROP\n",
                    "",
                ),
                (0, "", ""),
            ]),
            Mutex::new(vec![]),
        );
        let ipt = Ipt::new("/usr/sbin/iptables".into(), Family::V4, &r);
        let a = apply(&ipt, &set).unwrap();
        assert!(a.changed);
        assert_eq!(a.rules[0]["state"], "moved");
        let calls = r.1.lock().unwrap().clone();
        assert_eq!(
            calls[1],
            "/usr/sbin/iptables-restore -w 10 --noflush <<< *filter;\
             -D FORWARD -d 169.254.169.254/32 -i docker+ -j DROP;\
             -I FORWARD 1 -d 169.254.169.254/32 -i docker+ -j DROP;COMMIT;"
        );
        // Already on top: nothing to do, one listing.
        let r = Canned(
            Mutex::new(vec![(
                0,
                "-P FORWARD ACCEPT\n-A FORWARD -d 169.254.169.254/32 -i docker+ -j DROP\n\
                 -A FORWARD -j DOCKER-FORWARD\n",
                "",
            )]),
            Mutex::new(vec![]),
        );
        let ipt = Ipt::new("/usr/sbin/iptables".into(), Family::V4, &r);
        let a = apply(&ipt, &set).unwrap();
        assert!(!a.changed);
        assert_eq!(r.1.lock().unwrap().len(), 1);
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
        let e = apply(&ipt, &docker_user_set()).unwrap_err();
        assert!(e.is_lock_timeout(), "{e}");
        let m = e.to_string();
        assert!(m.contains("iptables-restore -w 10 --noflush"), "{m}");
        assert!(m.contains("-N DOCKER-USER"), "{m}");
        assert_eq!(r.1.lock().unwrap().len(), 2);
    }
}

//! The block as it stands, read-only, for `ecs-bootstrap status`: one `iptables -S` per family
//! judged by the same [`plan`](super::plan) that `block-imds` repairs with, and the rules file
//! each family persists to with its loader. Nothing is changed, nothing is locked.

use super::iptables::Ipt;
use super::plan::{self, Jump, Mode, RuleState};
use super::rules::{DOCKER_USER, Family, Placement, RuleSet};
use super::target::{self, Distro, Loader};
use super::{Options, PersistMode, choose_ipv6, resolve_binary};
use crate::sys::{CommandRunner, Deadline};
use std::path::PathBuf;

/// One family's block in the kernel now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelState {
    pub(crate) family: Family,
    /// What breaks the block; empty when it holds.
    pub(crate) problems: Vec<String>,
}

impl KernelState {
    pub(crate) fn holds(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What breaks the block in one listing of the filter table (pure).
pub(crate) fn problems(table: &[String], set: &RuleSet) -> Vec<String> {
    let p = plan::plan(table, set, Mode::Assert);
    let mut out = vec![];
    if p.chain_created {
        out.push(format!("the chain {DOCKER_USER} does not exist"));
    }
    for (iface, state) in &p.rules {
        match state {
            RuleState::Present | RuleState::Removed => {}
            RuleState::Added => out.push(format!(
                "no DROP rule of ours for {iface} to {} in {}",
                set.family.imds(),
                set.chain()
            )),
            RuleState::Moved => out.push(format!(
                "our DROP rule for {iface} is not at the top of {}",
                set.chain()
            )),
        }
    }
    for other in &p.moved_above {
        out.push(format!("a rule of another tool sits above ours: {other}"));
    }
    if set.placement == Placement::DockerUser && p.jump == Some(Jump::Placed) {
        out.push(format!("-j {DOCKER_USER} is not the first rule of FORWARD"));
    }
    if p.duplicate_jumps_removed > 0 {
        out.push(format!("-j {DOCKER_USER} is in FORWARD more than once"));
    }
    out
}

/// The families the block applies to (as `block-imds` with these options decides) and their
/// state now.
pub(crate) fn kernel(
    opts: &Options,
    runner: &dyn CommandRunner,
    deadline: &Deadline,
) -> anyhow::Result<Vec<KernelState>> {
    let bin4 = resolve_binary(opts.iptables.as_deref())?;
    let v6 = choose_ipv6(opts, &bin4)?;
    let mut families = vec![(Family::V4, bin4)];
    if let Some(b) = v6.bin {
        families.push((Family::V6, b));
    }
    let mut out = vec![];
    for (family, bin) in families {
        let (table, _) = Ipt::new(bin, runner, deadline).list_table()?;
        out.push(KernelState {
            family,
            problems: problems(&table, &opts.rule_set(family)),
        });
    }
    Ok(out)
}

/// The rules file one family persists to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RulesFileState {
    pub(crate) family: Family,
    /// None when nothing persists the family's rule.
    pub(crate) path: Option<PathBuf>,
    /// The file holds our rule for every interface.
    pub(crate) has_our_rule: bool,
    /// The enabled unit that restores it at boot.
    pub(crate) loader: Option<&'static str>,
    /// What to fix.
    pub(crate) warning: Option<String>,
}

/// The rules files of both families, as `block-imds` with these options would choose them.
pub(crate) fn rules_files(opts: &Options) -> Vec<RulesFileState> {
    let distro = Distro::detect(&opts.root);
    [
        (Family::V4, opts.persist_file.as_deref()),
        (Family::V6, opts.persist_file6.as_deref()),
    ]
    .into_iter()
    .map(|(family, explicit)| {
        if opts.persist == PersistMode::None {
            return RulesFileState {
                family,
                path: None,
                has_our_rule: false,
                loader: None,
                warning: Some("--persist none: no rules file is kept".into()),
            };
        }
        match target::choose(explicit, &opts.root, &distro, family) {
            Err(e) => RulesFileState {
                family,
                path: None,
                has_our_rule: false,
                loader: None,
                warning: Some(e.to_string()),
            },
            Ok(t) => {
                let set = opts.rule_set(family);
                let text = std::fs::read_to_string(&t.path).unwrap_or_default();
                let has_our_rule = set
                    .interfaces
                    .iter()
                    .all(|i| text.lines().any(|l| set.is_rule_for(l, i)));
                RulesFileState {
                    family,
                    has_our_rule,
                    loader: t.loader.unit(),
                    warning: match t.loader {
                        Loader::Absent { .. } => t.loader.warning(&t.path),
                        _ => None,
                    },
                    path: Some(t.path),
                }
            }
        }
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> RuleSet {
        RuleSet {
            family: Family::V4,
            placement: Placement::DockerUser,
            interfaces: vec!["docker+".into()],
        }
    }

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| (*l).to_owned()).collect()
    }

    #[test]
    fn the_block_holds_only_as_the_kernel_state_says() {
        let ours = set().save_line("docker+");
        let good = lines(&[
            "-P FORWARD ACCEPT",
            "-N DOCKER-USER",
            "-A FORWARD -j DOCKER-USER",
            &ours,
            "-A DOCKER-USER -j RETURN",
        ]);
        assert!(
            problems(&good, &set()).is_empty(),
            "{:?}",
            problems(&good, &set())
        );
        // Our rule gone.
        let gone = lines(&["-N DOCKER-USER", "-A FORWARD -j DOCKER-USER"]);
        let p = problems(&gone, &set());
        assert!(p.iter().any(|p| p.contains("no DROP rule")), "{p:?}");
        // A RETURN above ours: the line is there, the block is not.
        let above = lines(&[
            "-N DOCKER-USER",
            "-A FORWARD -j DOCKER-USER",
            "-A DOCKER-USER -j RETURN",
            &ours,
        ]);
        let p = problems(&above, &set());
        assert!(p.iter().any(|p| p.contains("another tool")), "{p:?}");
        // The jump not first in FORWARD.
        let jump = lines(&[
            "-N DOCKER-USER",
            "-A FORWARD -i docker0 -j ACCEPT",
            "-A FORWARD -j DOCKER-USER",
            &ours,
        ]);
        let p = problems(&jump, &set());
        assert!(p.iter().any(|p| p.contains("not the first rule")), "{p:?}");
        // No chain at all.
        let p = problems(&lines(&["-P FORWARD ACCEPT"]), &set());
        assert!(p.iter().any(|p| p.contains("does not exist")), "{p:?}");
    }
}

//! Pure planning of the kernel's rules: from one listing of the filter table (`iptables -S`),
//! whether the block holds, and if not, the changes that make it hold. No I/O here.
//!
//! The block holds when the kernel's state says so, not when a line is present:
//! - default placement: DOCKER-USER exists, its first rules are ours (one per interface, in the
//!   order given), nothing of ours is anywhere else, and `-j DOCKER-USER` is the first rule of
//!   FORWARD, exactly once. A RETURN or ACCEPT above our DROP (Docker's tail, an admin's rule)
//!   is a break, repaired by moving ours back above it; the other rule is kept, below ours.
//! - `--chain FORWARD`: our rules are the first rules of FORWARD, in order, nothing of ours
//!   elsewhere.
//!
//! Changes never name a position in a chain other programs write, except the top (`-I CHAIN
//! 1`): rules go by their full specification (`-D CHAIN SPEC`), so a rule dockerd inserted
//! meanwhile cannot be deleted in their place.

use super::rules::{DOCKER_USER, FORWARD, Line, MOVING_COMMENT, Placement, RuleSet};
use serde::Serialize;

/// Whether the run asserts the block or removes it (`block-imds --remove`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Assert,
    Remove,
}

/// One change to the filter table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    NewChain(&'static str),
    /// `-D CHAIN SPEC`: the first rule with exactly this specification.
    Delete {
        chain: String,
        spec: Vec<String>,
    },
    /// `-I CHAIN 1 SPEC`.
    InsertTop {
        chain: String,
        spec: Vec<String>,
    },
    /// `-X CHAIN` (only an empty chain of ours, on `--remove`).
    DeleteChain(&'static str),
}

impl Op {
    /// The iptables arguments (without `-t filter`), as one line of an `iptables-restore` input.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = match self {
            Op::NewChain(c) => return vec!["-N".into(), (*c).into()],
            Op::DeleteChain(c) => return vec!["-X".into(), (*c).into()],
            Op::Delete { chain, .. } => vec!["-D".into(), chain.clone()],
            Op::InsertTop { chain, .. } => vec!["-I".into(), chain.clone(), "1".into()],
        };
        if let Op::Delete { spec, .. } | Op::InsertTop { spec, .. } = self {
            a.extend(spec.iter().cloned());
        }
        a
    }
}

/// What became of one of our rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum RuleState {
    Present,
    Added,
    Moved,
    Removed,
}

/// What becomes of `-j DOCKER-USER` in FORWARD (default placement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub(crate) enum Jump {
    /// First in FORWARD, once, already.
    Present,
    /// Put first in FORWARD (and any other copy removed).
    Placed,
    /// Removed with the empty chain (`--remove`).
    Removed,
}

/// Why a line of ours (or the seed rule) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// The documented rule at the top of FORWARD, replaced by ours in DOCKER-USER.
    SeedRule,
    /// Ours for an interface or chain no longer given.
    NoLongerWanted,
    /// `block-imds --remove`.
    Remove,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Why::SeedRule => {
                "the documented FORWARD rule: ours covers it and, unlike it, survives dockerd restarts"
            }
            Why::NoLongerWanted => "no longer wanted (--interface or --chain changed)",
            Why::Remove => "block-imds --remove",
        })
    }
}

/// The plan for one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub chain_created: bool,
    /// Our interfaces and what happens to their rule.
    pub rules: Vec<(String, RuleState)>,
    /// The jump (default placement).
    pub jump: Option<Jump>,
    pub duplicate_jumps_removed: usize,
    /// Rules of others that sat above one of ours (they stay, below ours).
    pub moved_above: Vec<String>,
    /// Lines of ours (or the seed rule) that go, with the reason.
    pub removed: Vec<(String, Why)>,
}

/// The spec `-D` needs for a line `classify` recognised.
fn spec_of(set: &RuleSet, line: &Line) -> Option<(String, Vec<String>)> {
    match line {
        Line::Ours { chain, iface } => Some((chain.clone(), set.spec(iface))),
        Line::Moving { chain, iface } => {
            Some((chain.clone(), set.spec_with(iface, Some(MOVING_COMMENT))))
        }
        Line::Plain { chain, iface } => Some((chain.clone(), set.spec_with(iface, None))),
        Line::Jump => Some((FORWARD.into(), jump_spec(None))),
        Line::MovingJump => Some((FORWARD.into(), jump_spec(Some(MOVING_COMMENT)))),
        Line::Other => None,
    }
}

/// `-j DOCKER-USER`, with a comment for the temporary copy.
pub fn jump_spec(comment: Option<&str>) -> Vec<String> {
    let mut s = vec![];
    if let Some(c) = comment {
        s.extend(["-m", "comment", "--comment", c].map(str::to_owned));
    }
    s.extend(["-j".to_owned(), DOCKER_USER.to_owned()]);
    s
}

/// Whether a recognised DROP line is one we remove or replace: ours or a left-over copy for
/// any interface (a change of `--interface` or `--chain` leaves those behind), and the
/// uncommented rule (seed or earlier rendering) for an interface we block.
fn is_ours_to_replace(set: &RuleSet, l: &Line) -> bool {
    match l {
        Line::Ours { .. } | Line::Moving { .. } => true,
        Line::Plain { iface, .. } => set.wants(iface),
        _ => false,
    }
}

/// The rules of one chain (the `-A` lines of the listing, in order).
fn chain_rules<'a>(table: &'a [String], chain: &str) -> Vec<&'a str> {
    let prefix = format!("-A {chain} ");
    table
        .iter()
        .map(|l| l.trim_end())
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

/// Plans one family from its `iptables -t filter -S` listing.
pub fn plan(table: &[String], set: &RuleSet, mode: Mode) -> Plan {
    match mode {
        Mode::Assert => plan_assert(table, set),
        Mode::Remove => plan_remove(table, set),
    }
}

fn plan_assert(table: &[String], set: &RuleSet) -> Plan {
    let mut p = Plan::default();
    let chain = set.chain();
    let declared = table
        .iter()
        .any(|l| l.trim() == format!("-N {DOCKER_USER}"));
    let du = chain_rules(table, DOCKER_USER);
    let fwd = chain_rules(table, FORWARD);
    let n = set.interfaces.len();
    let own = chain_rules(table, chain);
    let top_ok = own.len() >= n
        && set
            .interfaces
            .iter()
            .zip(&own)
            .all(|(i, l)| set.is_rule_for(l, i));
    // Every line of ours (or to replace) in either chain, with its position in its chain.
    let mut found: Vec<Found> = vec![];
    for (c, rules) in [(DOCKER_USER, &du), (FORWARD, &fwd)] {
        for (pos, l) in rules.iter().enumerate() {
            let k = set.classify(l);
            if is_ours_to_replace(set, &k) {
                found.push((c, pos, k));
            }
        }
    }
    let in_place = |c: &str, pos: usize| top_ok && c == chain && pos < n;
    let rules_ok = (set.placement == Placement::Forward || declared)
        && top_ok
        && found.iter().all(|(c, pos, _)| in_place(c, *pos));

    if set.placement == Placement::DockerUser && !declared {
        p.ops.push(Op::NewChain(DOCKER_USER));
        p.chain_created = true;
    }
    if rules_ok {
        p.rules = set
            .interfaces
            .iter()
            .map(|i| (i.clone(), RuleState::Present))
            .collect();
    } else {
        let m = move_to_top(set, &found, &own);
        p.ops.extend(m.ops);
        p.rules = m.rules;
        p.moved_above = m.moved_above;
        p.removed = m.removed;
    }
    if set.placement == Placement::DockerUser {
        let j = place_jump(set, &fwd);
        p.ops.extend(j.ops);
        p.jump = j.jump;
        p.duplicate_jumps_removed = j.duplicate_jumps_removed;
    }
    p
}

/// A line of ours (or one to replace) found in a chain: the chain, its position there, what
/// it is.
type Found<'a> = (&'a str, usize, Line);

/// Everything of ours goes and comes back at the top, in one transaction: the part of the plan
/// for our DROP rules (ops, rules, moved_above, removed).
fn move_to_top(set: &RuleSet, found: &[Found], own: &[&str]) -> Plan {
    let chain = set.chain();
    let mut p = Plan::default();
    for (c, _, k) in found {
        if let Some((ch, spec)) = spec_of(set, k) {
            p.ops.push(Op::Delete { chain: ch, spec });
        }
        match k {
            Line::Ours { chain: lc, iface } if lc == chain && set.wants(iface) => {}
            Line::Moving { .. } => {}
            Line::Plain { .. } if *c == FORWARD && set.placement == Placement::DockerUser => {
                p.removed.push((render_line(set, k), Why::SeedRule));
            }
            Line::Plain { .. } => {}
            _ => p.removed.push((render_line(set, k), Why::NoLongerWanted)),
        }
    }
    for iface in set.interfaces.iter().rev() {
        p.ops.push(Op::InsertTop {
            chain: chain.into(),
            spec: set.spec(iface),
        });
    }
    let last_ours = found
        .iter()
        .filter(|(c, _, _)| *c == chain)
        .map(|(_, pos, _)| *pos)
        .max();
    if let Some(last) = last_ours {
        p.moved_above = own[..last]
            .iter()
            .filter(|l| !is_ours_to_replace(set, &set.classify(l)))
            .map(|l| l.to_string())
            .collect();
    }
    p.rules = set
        .interfaces
        .iter()
        .map(|i| {
            let had = found.iter().any(|(_, _, k)| {
                matches!(k, Line::Ours { iface, .. } | Line::Plain { iface, .. } | Line::Moving { iface, .. } if iface == i)
            });
            let state = if had {
                RuleState::Moved
            } else {
                RuleState::Added
            };
            (i.clone(), state)
        })
        .collect();
    p
}

/// `-j DOCKER-USER` first in FORWARD, exactly once: the part of the plan for the jump (ops,
/// jump, duplicate_jumps_removed).
fn place_jump(set: &RuleSet, fwd: &[&str]) -> Plan {
    let mut p = Plan::default();
    let jumps: Vec<Line> = fwd
        .iter()
        .map(|l| set.classify(l))
        .filter(|k| matches!(k, Line::Jump | Line::MovingJump))
        .collect();
    let first = fwd.first().map(|l| set.classify(l)) == Some(Line::Jump);
    if first && jumps.len() == 1 {
        p.jump = Some(Jump::Present);
        return p;
    }
    p.jump = Some(if first { Jump::Present } else { Jump::Placed });
    for k in &jumps {
        if let Some((ch, spec)) = spec_of(set, k) {
            p.ops.push(Op::Delete { chain: ch, spec });
        }
    }
    p.ops.push(Op::InsertTop {
        chain: FORWARD.into(),
        spec: jump_spec(None),
    });
    let plain = jumps.iter().filter(|k| **k == Line::Jump).count();
    p.duplicate_jumps_removed = plain.saturating_sub(usize::from(first));
    p
}

/// `--remove`: every rule of ours goes (for any interface, in either chain; the uncommented
/// rule too for the interfaces given, as an earlier rendering of ours); the jump and
/// DOCKER-USER go only when the chain is then empty and Docker has no chains here (nobody
/// else uses them). The seed rule in FORWARD is the administrator's: it stays.
fn plan_remove(table: &[String], set: &RuleSet) -> Plan {
    let mut p = Plan::default();
    let du = chain_rules(table, DOCKER_USER);
    let fwd = chain_rules(table, FORWARD);
    let mut left_in_du = 0;
    for (c, rules) in [(DOCKER_USER, &du), (FORWARD, &fwd)] {
        for l in rules {
            let k = set.classify(l);
            let ours = match &k {
                Line::Ours { .. } | Line::Moving { .. } | Line::MovingJump => true,
                Line::Plain { iface, .. } => c == DOCKER_USER && set.wants(iface),
                _ => false,
            };
            if ours {
                if let Some((ch, spec)) = spec_of(set, &k) {
                    p.ops.push(Op::Delete { chain: ch, spec });
                }
                p.removed.push((render_line(set, &k), Why::Remove));
            } else if c == DOCKER_USER {
                left_in_du += 1;
            }
        }
    }
    p.rules = set
        .interfaces
        .iter()
        .map(|i| {
            let had = p.removed.iter().any(|(l, _)| {
                matches!(set.classify(l), Line::Ours { iface, .. } | Line::Plain { iface, .. } if &iface == i)
            });
            (
                i.clone(),
                if had {
                    RuleState::Removed
                } else {
                    RuleState::Present
                },
            )
        })
        .collect();
    let declared = table
        .iter()
        .any(|l| l.trim() == format!("-N {DOCKER_USER}"));
    let docker_chains = table.iter().any(|l| {
        let t: Vec<&str> = l.split_whitespace().collect();
        t.len() == 2 && t[0] == "-N" && t[1].starts_with("DOCKER") && t[1] != DOCKER_USER
    });
    if declared && left_in_du == 0 && !docker_chains {
        for l in &fwd {
            if set.classify(l) == Line::Jump {
                p.ops.push(Op::Delete {
                    chain: FORWARD.into(),
                    spec: jump_spec(None),
                });
            }
        }
        p.ops.push(Op::DeleteChain(DOCKER_USER));
        p.jump = Some(Jump::Removed);
    }
    p
}

/// A recognised line in the spelling of `iptables -S`.
fn render_line(set: &RuleSet, k: &Line) -> String {
    match spec_of(set, k) {
        Some((chain, spec)) => format!("-A {chain} {}", spec.join(" ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::rules::Family;

    fn set(placement: Placement, ifaces: &[&str]) -> RuleSet {
        RuleSet {
            family: Family::V4,
            placement,
            interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn table(lines: &[&str]) -> Vec<String> {
        let mut t = vec![
            "-P INPUT ACCEPT".to_owned(),
            "-P FORWARD ACCEPT".to_owned(),
            "-P OUTPUT ACCEPT".to_owned(),
        ];
        t.extend(lines.iter().map(|s| s.to_string()));
        t
    }

    fn lines(p: &Plan) -> Vec<String> {
        p.ops.iter().map(|o| o.args().join(" ")).collect()
    }

    const OURS: &str = "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP";

    #[test]
    fn first_boot_creates_inserts_and_jumps() {
        let p = plan(
            &table(&[]),
            &set(Placement::DockerUser, &["docker+"]),
            Mode::Assert,
        );
        assert_eq!(
            lines(&p),
            [
                "-N DOCKER-USER",
                "-I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
                "-I FORWARD 1 -j DOCKER-USER",
            ]
        );
        assert!(p.chain_created);
        assert_eq!(p.rules, [("docker+".to_owned(), RuleState::Added)]);
        assert_eq!(p.jump, Some(Jump::Placed));
    }

    #[test]
    fn in_place_is_no_change() {
        let t = table(&[
            "-N DOCKER-USER",
            "-A FORWARD -j DOCKER-USER",
            "-A FORWARD -i docker0 -j ACCEPT",
            OURS,
            "-A DOCKER-USER -j RETURN",
        ]);
        let p = plan(&t, &set(Placement::DockerUser, &["docker+"]), Mode::Assert);
        assert!(p.ops.is_empty(), "{p:?}");
        assert_eq!(p.jump, Some(Jump::Present));
    }

    /// A RETURN (dockerd's tail) or an admin's ACCEPT above our DROP: the block does not hold;
    /// ours moves back to the top, theirs stays below, in one transaction.
    #[test]
    fn return_or_accept_above_ours_is_repaired() {
        for above in [
            "-A DOCKER-USER -j RETURN",
            "-A DOCKER-USER -i docker0 -j ACCEPT",
        ] {
            let t = table(&["-N DOCKER-USER", "-A FORWARD -j DOCKER-USER", above, OURS]);
            let p = plan(&t, &set(Placement::DockerUser, &["docker+"]), Mode::Assert);
            assert_eq!(
                lines(&p),
                [
                    "-D DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
                    "-I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
                ]
            );
            assert_eq!(p.moved_above, [above]);
            assert_eq!(p.rules, [("docker+".to_owned(), RuleState::Moved)]);
        }
    }

    /// The documented seed rule in FORWARD is recognised and moved into DOCKER-USER; rules of
    /// ours for an interface no longer given go; an uncommented rule for an interface we do
    /// not block is someone else's and stays.
    #[test]
    fn seed_rule_moves_and_stale_rules_go() {
        let t = table(&[
            "-N DOCKER-USER",
            "-A FORWARD -d 169.254.169.254/32 -i docker+ -j DROP",
            "-A FORWARD -j DOCKER-USER",
            "-A DOCKER-USER -d 169.254.169.254/32 -i br-+ -m comment --comment ecs-bootstrap -j DROP",
            "-A DOCKER-USER -d 169.254.169.254/32 -i eth9 -j DROP",
        ]);
        let p = plan(&t, &set(Placement::DockerUser, &["docker+"]), Mode::Assert);
        assert_eq!(
            lines(&p),
            [
                "-D DOCKER-USER -d 169.254.169.254/32 -i br-+ -m comment --comment ecs-bootstrap -j DROP",
                "-D FORWARD -d 169.254.169.254/32 -i docker+ -j DROP",
                "-I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
                "-D FORWARD -j DOCKER-USER",
                "-I FORWARD 1 -j DOCKER-USER",
            ]
        );
        assert_eq!(p.removed.len(), 2, "{:?}", p.removed);
        assert_eq!(p.rules, [("docker+".to_owned(), RuleState::Moved)]);
        assert_eq!(p.jump, Some(Jump::Placed));
    }

    #[test]
    fn duplicate_and_misplaced_jumps_become_one_at_the_top() {
        let t = table(&[
            "-N DOCKER-USER",
            "-A FORWARD -j DOCKER-FORWARD",
            "-A FORWARD -j DOCKER-USER",
            "-A FORWARD -j DOCKER-USER",
            OURS,
        ]);
        let p = plan(&t, &set(Placement::DockerUser, &["docker+"]), Mode::Assert);
        assert_eq!(
            lines(&p),
            [
                "-D FORWARD -j DOCKER-USER",
                "-D FORWARD -j DOCKER-USER",
                "-I FORWARD 1 -j DOCKER-USER",
            ]
        );
        assert_eq!(p.duplicate_jumps_removed, 2);
    }

    #[test]
    fn forward_placement_and_chain_change() {
        let s = set(Placement::Forward, &["docker+"]);
        // Switching from DOCKER-USER: our rule there goes; the jump is left alone.
        let t = table(&["-N DOCKER-USER", "-A FORWARD -j DOCKER-USER", OURS]);
        let p = plan(&t, &s, Mode::Assert);
        assert_eq!(
            lines(&p),
            [
                "-D DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
                "-I FORWARD 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
            ]
        );
        let t = table(&[
            "-A FORWARD -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
            "-A FORWARD -j DOCKER-FORWARD",
        ]);
        assert!(plan(&t, &s, Mode::Assert).ops.is_empty());
    }

    #[test]
    fn remove_takes_ours_and_an_unused_chain() {
        let s = set(Placement::DockerUser, &["docker+"]);
        let t = table(&["-N DOCKER-USER", "-A FORWARD -j DOCKER-USER", OURS]);
        let p = plan(&t, &s, Mode::Remove);
        assert_eq!(
            lines(&p),
            [
                "-D DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP",
                "-D FORWARD -j DOCKER-USER",
                "-X DOCKER-USER",
            ]
        );
        // With Docker's chains, or rules of others in DOCKER-USER, the chain and jump stay.
        let t = table(&[
            "-N DOCKER",
            "-N DOCKER-USER",
            "-A FORWARD -j DOCKER-USER",
            OURS,
            "-A FORWARD -d 169.254.169.254/32 -i docker+ -j DROP",
        ]);
        let p = plan(&t, &s, Mode::Remove);
        assert_eq!(lines(&p).len(), 1, "{p:?}");
        let t = table(&[
            "-N DOCKER-USER",
            "-A FORWARD -j DOCKER-USER",
            "-A DOCKER-USER -j RETURN",
        ]);
        assert!(plan(&t, &s, Mode::Remove).ops.is_empty());
    }
}

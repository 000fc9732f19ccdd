//! Applying one family's plan to the kernel: a transaction (`iptables-restore --noflush`), or
//! one command at a time when that is not possible. What to change comes from [`super::plan`].

use super::iptables::{Ipt, IptError};
use super::plan::{self, Mode, Op, Plan};
use super::rules::{self, RuleSet};
use serde::Serialize;
use std::time::Duration;

/// How the changes went in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// One `iptables-restore --noflush` transaction, at this attempt.
    Transaction { attempt: u32 },
    /// One iptables command at a time.
    OneByOne,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Transaction { attempt } => write!(f, "transaction (attempt {attempt})"),
            Method::OneByOne => f.write_str("one command at a time"),
        }
    }
}

impl Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One family's plan, once applied.
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) plan: Plan,
    /// None when nothing had to change.
    pub(crate) method: Option<Method>,
    /// iptables-nft said that iptables-legacy tables exist beside its own.
    pub(crate) legacy_too: bool,
}

impl Applied {
    pub(crate) fn changed(&self) -> bool {
        !self.plan.ops.is_empty()
    }
}

/// How many times the transaction is tried (each time on a fresh listing) before the step
/// goes one command at a time.
pub(crate) const TRANSACTION_ATTEMPTS: u32 = 4;

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
pub(crate) fn apply(ipt: &Ipt, set: &RuleSet, mode: Mode) -> Result<Applied, IptError> {
    let mut legacy_too = false;
    for attempt in 1..=TRANSACTION_ATTEMPTS {
        let (table, legacy) = ipt.list_table()?;
        legacy_too = legacy;
        let p = plan::plan(&table, set, mode);
        if p.ops.is_empty() {
            return Ok(Applied {
                plan: p,
                method: None,
                legacy_too,
            });
        }
        let commands: Vec<Vec<String>> = p.ops.iter().map(Op::args).collect();
        match ipt.restore_noflush(&commands) {
            Ok(()) => {
                return Ok(Applied {
                    plan: p,
                    method: Some(Method::Transaction { attempt }),
                    legacy_too,
                });
            }
            Err(e) if e.is_lock_timeout() => return Err(e),
            Err(e @ IptError::Stopped { .. }) => return Err(e),
            Err(e @ IptError::Missing { .. }) => {
                tracing::debug!(family = set.family.name(), error = %e, "no iptables-restore; one command at a time");
                break;
            }
            Err(e) => {
                tracing::debug!(family = set.family.name(), attempt, error = %e, "the transaction failed; planning again");
                if attempt < TRANSACTION_ATTEMPTS {
                    std::thread::sleep(jitter(attempt).min(ipt.deadline.left()));
                }
            }
        }
    }
    let (table, legacy) = ipt.list_table()?;
    legacy_too |= legacy;
    let p = plan::plan(&table, set, mode);
    one_by_one(ipt, &p.ops)?;
    Ok(Applied {
        method: (!p.ops.is_empty()).then_some(Method::OneByOne),
        plan: p,
        legacy_too,
    })
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::plan::{Jump, RuleState};
    use crate::firewall::rules::{Family, Placement};
    use crate::sys::{CmdOutput, CommandRunner, Deadline};
    use std::ffi::OsString;
    use std::path::Path;
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

    fn far() -> Deadline {
        Deadline::after(std::time::Duration::from_secs(3600))
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
        let d = far();
        let ipt = Ipt::new("/usr/sbin/iptables".into(), &r, &d);
        let a = apply(&ipt, &docker_user_set(), Mode::Assert).unwrap();
        assert!(a.changed() && a.plan.chain_created);
        assert_eq!(a.plan.jump, Some(Jump::Placed));
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
        let d = far();
        let ipt = Ipt::new("/usr/sbin/iptables".into(), &r, &d);
        let a = apply(&ipt, &docker_user_set(), Mode::Assert).unwrap();
        assert!(a.changed() && !a.plan.chain_created);
        assert_eq!(a.plan.jump, Some(Jump::Present));
        assert_eq!(a.plan.rules[0].1, RuleState::Added);
        assert_eq!(a.method, Some(Method::Transaction { attempt: 2 }));
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
        let d = far();
        let ipt = Ipt::new("/usr/sbin/iptables".into(), &nr, &d);
        let a = apply(&ipt, &docker_user_set(), Mode::Assert).unwrap();
        assert_eq!(a.method, Some(Method::OneByOne));
        assert_eq!(a.plan.moved_above, ["-A DOCKER-USER -j RETURN"]);
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
        let d = far();
        let ipt = Ipt::new("/usr/sbin/iptables".into(), &r, &d);
        let a = apply(&ipt, &docker_user_set(), Mode::Assert).unwrap();
        assert_eq!(a.method, Some(Method::OneByOne));
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
        let d = far();
        let ipt = Ipt::new("/usr/sbin/iptables".into(), &r, &d);
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
}

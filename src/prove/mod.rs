//! `prove`: show that the block works, the way a container would meet it, with a control.
//! For each bridge that a blocked `--interface` pattern matches (or the one `--bridge`), a
//! throwaway network namespace is attached by a veth, as Docker attaches a container, on a free
//! address of the bridge's subnet (never a container's: see [`address`]). From it:
//! - a control connection to a listener prove opens on the bridge's own address must succeed
//!   (the probe path works: link, address, route, the host's INPUT);
//! - a connection to 169.254.169.254:80 (and [fd00:ec2::254]:80) must fail;
//! - our DROP rule's packet counter (the rules with the `ecs-bootstrap` comment whose pattern
//!   matches the bridge) must rise during that connection: the packet met our rule, not
//!   something else (forwarding off, no route).
//!
//! Only then is the bridge "blocked". IMDS answering is a leak (exit 6); a failed control, a
//! counter that did not move, or no bridge at all is "not proven" (exit 8), never a pass. The
//! host must still get answers from IMDS. The namespaces are always removed: by a guard on every
//! return path, when the run is interrupted (the guard is dropped with the future), and, after
//! a SIGKILL, by the next `prove`, which sweeps namespaces of dead runs.
//!
//! The rooms: [`netns`] (the namespace, its veth, the guard, the sweep), [`address`] (the
//! bridge's addresses and the free-address search), [`probe`] (the probe thread and one
//! family's probe), [`counters`] (our rules' packet counters), [`hop_limit`] (the PUT response
//! hop limit), [`verdict`] (verdicts, the report's details, the conclusion).

mod address;
mod counters;
mod hop_limit;
mod netns;
mod probe;
mod verdict;

pub(crate) use counters::pattern_matches;

use crate::error::Exit;
use crate::firewall::rules::Family;
use crate::imds::Imds;
use crate::report::{Failure, StepResult};
use crate::sys::CommandRunner;
use anyhow::Context as _;
use probe::Probe;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use verdict::{BridgeConclusion, BridgeProbes, FromBridge, FromHost, Seen};
pub(crate) use verdict::{Details, HopLimit};

/// Whether the IPv6 path is probed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ipv6Mode {
    /// When the bridge has a global IPv6 address.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// `--bridge`: probe only this one.
    pub(crate) bridge: Option<String>,
    /// The blocked interface patterns: every bridge matching one is probed.
    pub(crate) interfaces: Vec<String>,
    pub(crate) iptables: Option<PathBuf>,
    pub(crate) ipv6: Ipv6Mode,
}

/// Every wait of prove takes the time left until `deadline`: the free-address search, the
/// probes' connections, the iptables lock waits, the token PUT. The process must end by the
/// deadline, not only the report. A run the deadline stops is "not proven" (8): whatever it
/// saw, it proved nothing, and it is no leak (6).
pub(crate) async fn run(
    opts: &Options,
    imds: &Imds,
    runner: &dyn CommandRunner,
    deadline: Instant,
) -> anyhow::Result<StepResult> {
    match tokio::time::timeout_at(deadline, prove(opts, imds, runner, deadline)).await {
        Ok(r) => r,
        Err(_) => Err(failure(
            "the deadline passed before the block was proven; raise --deadline".into(),
            vec![],
            &Details::none(),
            Some(Exit::NotProven),
        )),
    }
}

async fn prove(
    opts: &Options,
    imds: &Imds,
    runner: &dyn CommandRunner,
    deadline: Instant,
) -> anyhow::Result<StepResult> {
    netns::sweep_stale(runner);
    let bridges = bridges_to_probe(opts)
        .map_err(|message| failure(message, vec![], &Details::none(), Some(Exit::NotProven)))?;
    let mut probed = Vec::with_capacity(bridges.len());
    for (idx, bridge) in bridges.iter().enumerate() {
        probed.push(probe_bridge(opts, runner, bridge, idx, deadline).await?);
    }
    let mut summary: Vec<String> = probed
        .iter()
        .flat_map(|b| b.each().map(|(f, p)| p.line(&b.bridge, f)))
        .collect();

    let host = imds.instance_id().await;
    summary.push(match &host {
        Ok(id) => format!("from the host: IMDS answers (instance {id})"),
        Err(e) => format!("from the host: IMDS does not answer: {e}"),
    });
    let hop_limit = match &host {
        Ok(_) => counters::family_bin(opts.iptables.as_deref(), Family::V4)
            .and_then(|bin| hop_limit::measure(runner, &bin, deadline)),
        Err(_) => Err("IMDS does not answer the host".into()),
    };
    summary.push(match &hop_limit {
        Ok(HopLimit::One) => "PUT response hop limit: 1 (tokens do not reach containers)".into(),
        Ok(HopLimit::TwoOrMore) => "PUT response hop limit: 2 or more (a container that got past the block could get tokens)".into(),
        Err(e) => format!("PUT response hop limit: not measured ({e})"),
    });
    let details = Details {
        seen: Some(Seen {
            from_bridge: FromBridge::worst(&probed),
            from_host: if host.is_ok() {
                FromHost::Reachable
            } else {
                FromHost::Unreachable
            },
            put_hop_limit: hop_limit.ok(),
        }),
        bridges: probed,
    };
    let host_fault = host.err().map(|e| {
        let unreachable =
            imds.was_unreachable() || matches!(e, crate::imds::MetadataError::Unreachable { .. });
        (e, unreachable)
    });
    conclude(summary, details, host_fault)
}

/// The step's result from what the probes and the host saw: a leak (6) outranks "not proven"
/// (8), which outranks a fault on the host's side; the host's fault is never 6 (that is for a
/// bridge that reaches IMDS): 7 when IMDS did not answer the host, else 5 (an unexpected answer,
/// as the check reports it).
fn conclude(
    summary: Vec<String>,
    details: Details,
    host_fault: Option<(crate::imds::MetadataError, bool)>,
) -> anyhow::Result<StepResult> {
    let fail = |message: String, exit: Option<Exit>| {
        Err(failure(message, summary.clone(), &details, exit))
    };
    match verdict::conclude(&details.bridges) {
        BridgeConclusion::Leak(names) => {
            for l in &summary {
                tracing::error!("{l}");
            }
            return fail(
                format!(
                    "containers on {} can reach instance metadata: run `ecs-bootstrap block-imds` with an --interface pattern for each (and check that `-j DOCKER-USER` is the first rule of FORWARD)",
                    names.join(", ")
                ),
                None,
            );
        }
        BridgeConclusion::NotProven {
            bridge,
            family,
            reason,
        } => {
            return fail(
                format!(
                    "the block is not proven on {bridge} ({}): {reason}",
                    family.name()
                ),
                Some(Exit::NotProven),
            );
        }
        BridgeConclusion::Blocked => {}
    }
    match host_fault {
        Some((e, true)) => fail(
            format!("the block holds, but the host itself cannot reach instance metadata: {e}"),
            Some(Exit::ImdsUnreachable),
        ),
        Some((e, false)) => fail(
            format!(
                "the block holds, but instance metadata did not answer the host as expected: {e}"
            ),
            Some(Exit::Check),
        ),
        None => Ok(StepResult {
            changed: false,
            summary,
            details: to_value(details),
        }),
    }
}

/// `limit`, or the time left until `deadline` when that is shorter; none when none is left.
pub(crate) fn within(limit: Duration, deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then(|| left.min(limit))
}

/// iptables' `-w` (whole seconds of waiting for the xtables lock): 10, or the seconds left
/// until `deadline` rounded up; none when no time is left.
pub(crate) fn lock_wait(deadline: Instant) -> Option<String> {
    within(Duration::from_secs(10), deadline).map(|d| d.as_secs_f64().ceil().max(1.0).to_string())
}

fn to_value(details: Details) -> Option<crate::report::Details> {
    Some(crate::report::Details::Prove(Box::new(details)))
}

/// A failure that still reports what prove saw.
fn failure(
    message: String,
    summary: Vec<String>,
    details: &Details,
    exit: Option<Exit>,
) -> anyhow::Error {
    anyhow::Error::new(Failure {
        message,
        summary,
        details: to_value(details.clone()),
        exit,
    })
}

/// The bridges to probe: `--bridge`, or every bridge that a blocked pattern matches. Err: the
/// message when there is none.
fn bridges_to_probe(opts: &Options) -> Result<Vec<String>, String> {
    let bridges = match &opts.bridge {
        Some(b) if Path::new("/sys/class/net").join(b).exists() => vec![b.clone()],
        Some(b) => {
            return Err(format!(
                "there is no {b} bridge on this host, so there is nothing to prove yet: start Docker (systemctl start docker) or name the bridge with --bridge"
            ));
        }
        None => matching_bridges(&opts.interfaces),
    };
    if bridges.is_empty() {
        return Err(format!(
            "no bridge matches --interface {} on this host (there is no docker0 bridge), so there is nothing to prove yet: start Docker (systemctl start docker) or name the bridge with --bridge",
            opts.interfaces.join(",")
        ));
    }
    Ok(bridges)
}

/// The bridges (interfaces with a `bridge` folder in sysfs) whose name matches a pattern.
fn matching_bridges(patterns: &[String]) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| Path::new("/sys/class/net").join(n).join("bridge").is_dir())
                .filter(|n| patterns.iter().any(|p| pattern_matches(p, n)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// One bridge: a free address, its namespace, both families' probes at once.
async fn probe_bridge(
    opts: &Options,
    runner: &dyn CommandRunner,
    bridge: &str,
    idx: usize,
    deadline: Instant,
) -> anyhow::Result<BridgeProbes> {
    let done = |ipv4, ipv6| {
        Ok(BridgeProbes {
            bridge: bridge.to_owned(),
            ipv4,
            ipv6,
        })
    };
    let addrs = address::bridge_addrs(runner, bridge)?;
    let Some((gw4, prefix4)) = addrs.v4 else {
        let why = format!("the bridge {bridge} has no IPv4 address; is Docker running?");
        return done(Probe::not_proven(None, why), None);
    };
    let pid = std::process::id();
    let addr4 = match address::free_v4(runner, bridge, (gw4, prefix4), pid, deadline).await {
        Ok(a) => a,
        Err(why) => return done(Probe::not_proven(None, why), None),
    };
    let want_v6 = match opts.ipv6 {
        Ipv6Mode::Off => false,
        Ipv6Mode::Auto => addrs.v6.is_some(),
        Ipv6Mode::On => true,
    };
    let (place6, v6_missing) = match addrs.v6 {
        _ if !want_v6 => (None, None),
        Some((gw, prefix)) => {
            let addr = address::probe_v6(gw, prefix, pid)
                .context("the bridge's IPv6 subnet is too small")?;
            (Some(netns::Place { addr, prefix, gw }), None)
        }
        None => {
            let why = format!("--ipv6 on, but the bridge {bridge} has no global IPv6 address");
            (None, Some(Probe::not_proven(None, why)))
        }
    };
    let place4 = netns::Place {
        addr: addr4,
        prefix: prefix4,
        gw: gw4,
    };
    let guard = netns::attach(runner, bridge, &netns::Names::new(pid, idx), place4, place6)?;
    let spec = |family, gw, from| probe::Spec {
        ns: &guard.name,
        bridge,
        family,
        gw,
        from,
        iptables: opts.iptables.as_deref(),
        deadline,
    };
    // Both families at once: a blocked probe waits for the whole connect timeout.
    let (p4, p6) = tokio::join!(
        probe::probe_family(runner, spec(Family::V4, gw4.into(), addr4.into())),
        async {
            match place6 {
                Some(p) => {
                    let s = spec(Family::V6, p.gw.into(), p.addr.into());
                    Some(probe::probe_family(runner, s).await)
                }
                None => None,
            }
        }
    );
    drop(guard);
    done(p4, p6.or(v6_missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_take_the_time_left() {
        let now = Instant::now();
        assert_eq!(
            within(Duration::from_secs(1), now - Duration::from_secs(1)),
            None
        );
        let w = within(Duration::from_secs(10), now + Duration::from_secs(2)).unwrap();
        assert!(
            w <= Duration::from_secs(2) && w > Duration::from_millis(1500),
            "{w:?}"
        );
        let w = within(Duration::from_millis(300), now + Duration::from_secs(60)).unwrap();
        assert_eq!(w, Duration::from_millis(300));
        assert_eq!(
            lock_wait(now + Duration::from_secs(60)).as_deref(),
            Some("10")
        );
        assert_eq!(
            lock_wait(now + Duration::from_millis(2500)).as_deref(),
            Some("3")
        );
        assert_eq!(lock_wait(now - Duration::from_secs(1)), None);
    }
}

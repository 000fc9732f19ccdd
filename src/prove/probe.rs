//! One family's probe through one bridge: from inside the probe namespace, a control
//! connection to a listener on the bridge's own address, then a connection to IMDS, with our
//! DROP rule's counter read before and after.

use super::counters;
use super::verdict::{Verdict, verdict};
use crate::firewall::rules::Family;
use anyhow::Context as _;
use serde::{Serialize, Serializer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
pub(crate) const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// What one family's probe through one bridge showed.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Probe {
    pub(crate) verdict: Verdict,
    /// The probe's own address; `-` when the probe was not set up.
    #[serde(serialize_with = "address_or_dash")]
    #[cfg_attr(test, schemars(with = "String"))]
    pub(crate) from: Option<IpAddr>,
    /// The control listener on the bridge's address.
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub(crate) control: Option<SocketAddr>,
    /// Whether the probe reached the control listener.
    pub(crate) control_ok: bool,
    pub(crate) imds_answered: bool,
    /// Packets our DROP rule dropped during the probe.
    pub(crate) counter_rise: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

fn address_or_dash<S: Serializer>(a: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.collect_str(a),
        None => s.serialize_str("-"),
    }
}

impl Probe {
    pub(crate) fn not_proven(from: Option<IpAddr>, reason: String) -> Probe {
        Probe {
            verdict: Verdict::NotProven,
            from,
            control: None,
            control_ok: false,
            imds_answered: false,
            counter_rise: None,
            reason: Some(reason),
        }
    }

    /// The report's line for this probe from `bridge` to IMDS in `family`.
    pub(crate) fn line(&self, bridge: &str, family: Family) -> String {
        let target = match family {
            Family::V4 => "169.254.169.254:80",
            Family::V6 => "[fd00:ec2::254]:80",
        };
        let from = self.from.map_or_else(|| "-".to_owned(), |a| a.to_string());
        match self.verdict {
            Verdict::Blocked => format!(
                "from {bridge} ({from}): {target} blocked (control {} answered; our DROP rule dropped {} packet(s))",
                self.control
                    .map_or_else(|| "?".to_owned(), |c| c.to_string()),
                self.counter_rise.unwrap_or(0)
            ),
            Verdict::Reachable => format!("from {bridge} ({from}): {target} reachable"),
            Verdict::NotProven => format!(
                "from {bridge} ({from}): {target} not proven: {}",
                self.reason.as_deref().unwrap_or("")
            ),
        }
    }
}

/// Connects to each address in turn from inside the named namespace (on a thread that joins
/// it); true where a connection was made.
///
/// The thread is our own and ends with the probe: a thread of tokio's blocking pool would go
/// back to the pool still inside the probe namespace, and a later blocking task on it (or a
/// child process it starts) would run in the wrong network namespace. Each connection waits at
/// most until `deadline`; none is tried after it.
async fn connect_from(
    ns: &str,
    addrs: Vec<SocketAddr>,
    deadline: Instant,
) -> anyhow::Result<Vec<bool>> {
    let path = format!("/run/netns/{ns}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("prove-probe".into())
        .spawn(move || {
            let probe = || -> anyhow::Result<Vec<bool>> {
                let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering the network namespace {path}"))?;
                Ok(addrs
                    .iter()
                    .map(|a| {
                        super::within(CONNECT_TIMEOUT, deadline)
                            .is_some_and(|t| TcpStream::connect_timeout(a, t).is_ok())
                    })
                    .collect())
            };
            let _ = tx.send(probe());
        })
        .context("starting the probe thread")?;
    rx.await.context("the probe thread failed")?
}

/// Where one family's probe runs: the namespace, the bridge, the bridge's address (the
/// control listener's), the probe's own address, and the iptables binary for the counters.
pub(crate) struct Spec<'a> {
    pub(crate) ns: &'a str,
    pub(crate) bridge: &'a str,
    pub(crate) family: Family,
    pub(crate) gw: IpAddr,
    pub(crate) from: IpAddr,
    pub(crate) iptables: Option<&'a Path>,
    pub(crate) deadline: Instant,
}

/// Probes one family from the namespace: the control listener on the bridge's address, then
/// IMDS, with our rule's counter read before and after.
pub(crate) async fn probe_family(work: &super::Blocking, p: Spec<'_>) -> Probe {
    let from = Some(p.from);
    let imds: IpAddr = match p.family {
        Family::V4 => IMDS_V4.into(),
        Family::V6 => IMDS_V6.into(),
    };
    let bin = match counters::family_bin(p.iptables, p.family) {
        Ok(b) => b,
        Err(e) => return Probe::not_proven(from, e),
    };
    // The listener lives in the host's namespace (this thread's); the kernel completes the
    // handshake from its backlog, so nothing needs to accept.
    let (listener, control) = match TcpListener::bind(SocketAddr::new(p.gw, 0))
        .and_then(|l| l.local_addr().map(|a| (l, a)))
    {
        Ok(l) => l,
        Err(e) => {
            return Probe::not_proven(
                from,
                format!("cannot open the control listener on {}: {e}", p.gw),
            );
        }
    };
    let read = || {
        let (bin, family, bridge, deadline) =
            (bin.clone(), p.family, p.bridge.to_owned(), p.deadline);
        async move {
            work.run(move |r| counters::read(r, &bin, family, &bridge, deadline))
                .await
                .unwrap_or_else(|e| Err(format!("{e:#}")))
        }
    };
    let before = read().await;
    let seen = connect_from(p.ns, vec![control, SocketAddr::new(imds, 80)], p.deadline).await;
    let after = read().await;
    drop(listener);
    let (control_ok, imds_answered) = match seen.as_deref() {
        Ok([c, i]) => (*c, *i),
        Ok(_) => (false, false),
        Err(e) => return Probe::not_proven(from, format!("{e:#}")),
    };
    let rise = match (&before, &after) {
        (Ok(b), Ok(a)) => Ok(a.saturating_sub(*b)),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    };
    let v = verdict(imds_answered, control_ok, *rise.as_ref().unwrap_or(&0));
    let bridge = p.bridge;
    let reason = match v {
        Verdict::NotProven if !control_ok => Some(format!(
            "the control connection to {control} (a listener on {bridge}'s own address) failed too, so the probe path is broken: is {bridge} up, and does the host's INPUT chain accept traffic from it?"
        )),
        Verdict::NotProven => Some(match &rise {
            Err(e) => {
                format!("IMDS did not answer, but our DROP rule's counter cannot be read ({e})")
            }
            Ok(_) => format!(
                "IMDS did not answer and the control did, but no rule of ecs-bootstrap for {bridge} dropped the probe (its packet counter did not move): something else stopped it (IP forwarding off? no route to IMDS? no rule, or the rules in the other iptables backend than {}?); run `ecs-bootstrap block-imds`, check `sysctl net.ipv4.ip_forward`, and pass prove the --iptables that block-imds uses",
                bin.display()
            ),
        }),
        _ => None,
    };
    Probe {
        verdict: v,
        from,
        control: Some(control),
        control_ok,
        imds_answered,
        counter_rise: rise.ok(),
        reason,
    }
}

//! `prove`: show that the block works, the way a container would meet it, with a control.
//! For each bridge that a blocked `--interface` pattern matches (or the one `--bridge`), a
//! throwaway network namespace is attached by a veth, as Docker attaches a container, on a free
//! address of the bridge's subnet (never a container's: see [`probe_candidates_v4`]). From it:
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

use crate::error::Exit;
use crate::firewall::rules::{Family, Line, Placement, RuleSet};
use crate::imds::Imds;
use crate::report::Failure;
use crate::report::StepResult;
use crate::sys::{CommandRunner, SystemRunner};
use anyhow::{Context as _, bail};
use serde_json::json;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

const NS_PREFIX: &str = "ebs-prove-";
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Whether the IPv6 path is probed too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// When the bridge has a global IPv6 address.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// `--bridge`: probe only this one.
    pub bridge: Option<String>,
    /// The blocked interface patterns: every bridge matching one is probed.
    pub interfaces: Vec<String>,
    pub iptables: Option<PathBuf>,
    pub ipv6: Ipv6Mode,
}

/// The bridge's first IPv4 and first global IPv6 address, each with its prefix length.
pub type BridgeAddrs = (Option<(Ipv4Addr, u8)>, Option<(Ipv6Addr, u8)>);

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Blocked => "blocked",
            Verdict::Reachable => "reachable",
            Verdict::NotProven => "not proven",
        })
    }
}

/// What a probe of one address family through one bridge showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// IMDS did not answer, the control did, and our DROP rule's counter rose.
    Blocked,
    /// IMDS answered: a leak.
    Reachable,
    /// Neither: see the reason.
    NotProven,
}

/// The verdict from what a probe saw (pure).
pub fn verdict(imds_answered: bool, control_ok: bool, counter_rise: u64) -> Verdict {
    if imds_answered {
        Verdict::Reachable
    } else if control_ok && counter_rise > 0 {
        Verdict::Blocked
    } else {
        Verdict::NotProven
    }
}

/// Whether an iptables interface pattern (`docker+`, `docker0`) matches an interface name.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The packet counters of our DROP rules (comment `ecs-bootstrap`) in an `iptables -S -v`
/// listing, as (interface pattern, packets) (pure).
pub fn our_counters(listing: &str, family: Family) -> Vec<(String, u64)> {
    let set = RuleSet {
        family,
        placement: Placement::DockerUser,
        interfaces: vec![],
    };
    listing
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let c = t.iter().position(|w| *w == "-c")?;
            let packets = t.get(c + 1)?.parse::<u64>().ok()?;
            let mut rest: Vec<&str> = t[..c].to_vec();
            rest.extend_from_slice(t.get(c + 3..)?);
            match set.classify(&rest.join(" ")) {
                Line::Ours { iface, .. } => Some((iface, packets)),
                _ => None,
            }
        })
        .collect()
}

fn ip(runner: &dyn CommandRunner, args: &[&str]) -> anyhow::Result<String> {
    let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
    let out = runner
        .run(Path::new("ip"), &argv, None)
        .with_context(|| format!("running ip {} (is iproute2 installed?)", args.join(" ")))?;
    if !out.success() {
        bail!("`ip {}` failed: {}", args.join(" "), out.stderr.trim());
    }
    Ok(out.stdout)
}

/// The bridge's first address of each family, with its prefix length.
fn bridge_addrs(runner: &dyn CommandRunner, bridge: &str) -> anyhow::Result<BridgeAddrs> {
    let out = ip(runner, &["-o", "addr", "show", "dev", bridge])?;
    Ok(parse_addrs(&out))
}

/// The bridges (interfaces with a `bridge` folder in sysfs) whose name matches a pattern.
pub fn matching_bridges(patterns: &[String]) -> Vec<String> {
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

/// Parses `ip -o addr show` lines into the first IPv4 and the first non-link-local IPv6 address.
pub fn parse_addrs(out: &str) -> BridgeAddrs {
    let mut v4 = None;
    let mut v6 = None;
    for line in out.lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w != "inet" && w != "inet6" {
                continue;
            }
            let Some((a, p)) = words.next().and_then(|c| c.split_once('/')) else {
                continue;
            };
            let Ok(p) = p.parse::<u8>() else { continue };
            match a.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if v4.is_none() => v4 = Some((a, p)),
                Ok(IpAddr::V6(a)) if v6.is_none() && (a.segments()[0] & 0xffc0) != 0xfe80 => {
                    v6 = Some((a, p))
                }
                _ => {}
            }
        }
    }
    (v4, v6)
}

/// How many addresses prove tries for its probe before it gives up (not proven, exit 8).
const MAX_CANDIDATES: usize = 16;
/// How long an address may take to answer (ARP, then a TCP reset or handshake) before it
/// counts as free. ARP on a bridge answers in well under a millisecond.
const ARP_WAIT: Duration = Duration::from_millis(300);

/// The addresses of the bridge's IPv4 subnet a probe may take, in the order to try them: from
/// a salted start near the top (Docker hands out addresses from the bottom) downwards, then
/// from the top down to the start; never the network or broadcast address, the bridge's own
/// or a `taken` one; at most `max` (pure).
pub fn probe_candidates_v4(
    bridge: Ipv4Addr,
    prefix: u8,
    salt: u32,
    taken: &[Ipv4Addr],
    max: usize,
) -> Vec<Ipv4Addr> {
    if prefix > 29 {
        return vec![];
    }
    let size = 1u32 << (32 - prefix);
    let base = u32::from(bridge) & !(size - 1);
    let (lo, hi) = (base + 1, base + size - 2);
    let start = hi - (salt % (size - 4).min(200));
    (lo..=start)
        .rev()
        .chain((start + 1..=hi).rev())
        .map(Ipv4Addr::from)
        .filter(|a| *a != bridge && !taken.contains(a))
        .take(max)
        .collect()
}

/// The addresses `ip neigh show` lines give a link-layer address for: in use on the link
/// (reachable, stale, permanent, ...; an INCOMPLETE or FAILED entry has none) (pure).
pub fn neigh_in_use(out: &str) -> Vec<IpAddr> {
    out.lines()
        .filter(|l| l.split_whitespace().any(|w| w == "lladdr"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Every IPv4 address in `ip -o addr show` lines (pure).
pub fn all_v4(out: &str) -> Vec<Ipv4Addr> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "inet");
            w.next()?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// Whether something on the bridge holds `a`: a short connection attempt from the host makes
/// the kernel ask for it by ARP; a reset or a handshake, or a link-layer address in the
/// neighbour table afterwards, means a live host (a container that drops the connection still
/// answers ARP). When the table cannot be read, the address counts as taken.
async fn answers(runner: &dyn CommandRunner, bridge: &str, a: Ipv4Addr) -> bool {
    let c = tokio::time::timeout(ARP_WAIT, tokio::net::TcpStream::connect((a, 9))).await;
    if let Ok(r) = c
        && r.as_ref().map_or_else(
            |e| e.kind() == std::io::ErrorKind::ConnectionRefused,
            |_| true,
        )
    {
        return true;
    }
    ip(
        runner,
        &["-4", "neigh", "show", "to", &a.to_string(), "dev", bridge],
    )
    .map_or(true, |o| !neigh_in_use(&o).is_empty())
}

/// A free IPv4 address on the bridge's subnet for the probe: not the bridge's, not in the
/// host's neighbour table for the bridge, not answering ARP. Err: why none was found.
async fn free_v4(
    runner: &dyn CommandRunner,
    bridge: &str,
    gw: Ipv4Addr,
    prefix: u8,
    salt: u32,
) -> Result<Ipv4Addr, String> {
    let mut taken =
        all_v4(&ip(runner, &["-o", "-4", "addr", "show", "dev", bridge]).unwrap_or_default());
    let neigh = ip(runner, &["-4", "neigh", "show", "dev", bridge])
        .map_err(|e| format!("cannot read the host's neighbour table for {bridge}: {e:#}"))?;
    taken.extend(neigh_in_use(&neigh).into_iter().filter_map(|a| match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }));
    let candidates = probe_candidates_v4(gw, prefix, salt, &taken, MAX_CANDIDATES);
    for &c in &candidates {
        if !answers(runner, bridge, c).await {
            return Ok(c);
        }
    }
    Err(format!(
        "no free address for a probe on {bridge} ({gw}/{prefix}): {} address(es) are in the host's neighbour table and the {} tried answer ARP (a probe must not take a container's address); probe another bridge, or free an address",
        taken.len(),
        candidates.len()
    ))
}

pub fn probe_v6(bridge: Ipv6Addr, prefix: u8, salt: u32) -> Option<Ipv6Addr> {
    if prefix > 120 {
        return None;
    }
    let b = u128::from(bridge);
    let host_bits = 128 - prefix as u32;
    let mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let cand = (b & !mask) | (0xeb5_0000 + (salt as u128 & 0xffff)) & mask;
    (cand != b).then(|| Ipv6Addr::from(cand))
}

/// The throwaway namespace; deleted (with its veth) when dropped, and then the host's
/// neighbour entries for its addresses on the bridge, so that no entry is left pointing at a
/// link-layer address that is gone.
struct ProbeNs {
    name: String,
    bridge: String,
    addrs: Vec<String>,
}

impl Drop for ProbeNs {
    fn drop(&mut self) {
        let r = SystemRunner::default();
        let _ = r.run(
            Path::new("ip"),
            &["netns".into(), "del".into(), self.name.clone().into()],
            None,
        );
        for a in &self.addrs {
            let argv: Vec<OsString> = ["neigh", "del", a, "dev", &self.bridge]
                .iter()
                .map(OsString::from)
                .collect();
            let _ = r.run(Path::new("ip"), &argv, None);
        }
    }
}

/// Removes probe namespaces left by runs that were killed (their process is gone): named
/// `ebs-prove-<pid>` or `ebs-prove-<pid>-<n>`.
fn sweep_stale(runner: &dyn CommandRunner) {
    let Ok(list) = ip(runner, &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 0
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
            && ip(runner, &["netns", "del", name]).is_ok()
        {
            tracing::info!(
                namespace = name,
                "removed a probe namespace left by a killed run"
            );
        }
    }
}

/// Connects to each address in turn from inside the named namespace (on a thread that joins
/// it); true where a connection was made.
///
/// The thread is our own and ends with the probe: a thread of tokio's blocking pool would go
/// back to the pool still inside the probe namespace, and a later blocking task on it (or a
/// child process it starts) would run in the wrong network namespace.
async fn connect_from(ns: &str, addrs: Vec<SocketAddr>) -> anyhow::Result<Vec<bool>> {
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
                    .map(|a| TcpStream::connect_timeout(a, CONNECT_TIMEOUT).is_ok())
                    .collect())
            };
            let _ = tx.send(probe());
        })
        .context("starting the probe thread")?;
    rx.await.context("the probe thread failed")?
}

/// The packets our DROP rules for patterns matching `bridge` have dropped (iptables -S -v).
fn counter(
    runner: &dyn CommandRunner,
    bin: &Path,
    family: Family,
    bridge: &str,
) -> Result<u64, String> {
    let args: Vec<OsString> = ["-w", "10", "-t", "filter", "-S", "-v"]
        .iter()
        .map(OsString::from)
        .collect();
    let out = runner
        .run(bin, &args, None)
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.success() {
        return Err(format!(
            "`{} -S -v` failed: {}",
            bin.display(),
            out.stderr.trim()
        ));
    }
    Ok(our_counters(&out.stdout, family)
        .iter()
        .filter(|(p, _)| pattern_matches(p, bridge))
        .map(|(_, n)| n)
        .sum())
}

/// What one family's probe through one bridge showed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    pub verdict: Verdict,
    /// The probe's own address.
    pub from: String,
    /// The control listener on the bridge's address, and whether the probe reached it.
    pub control: Option<String>,
    pub control_ok: bool,
    pub imds_answered: bool,
    /// Packets our DROP rule dropped during the probe.
    pub counter_rise: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Probe {
    fn not_proven(from: String, reason: String) -> Probe {
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

    fn line(&self, bridge: &str, target: &str) -> String {
        match (self.verdict, &self.reason) {
            (Verdict::Blocked, _) => format!(
                "from {bridge} ({}): {target} blocked (control {} answered; our DROP rule dropped {} packet(s))",
                self.from,
                self.control.as_deref().unwrap_or("?"),
                self.counter_rise.unwrap_or(0)
            ),
            (Verdict::Reachable, _) => format!("from {bridge} ({}): {target} reachable", self.from),
            (Verdict::NotProven, r) => format!(
                "from {bridge} ({}): {target} not proven: {}",
                self.from,
                r.as_deref().unwrap_or("")
            ),
        }
    }
}

/// The family's iptables binary for the counters, or why there is none.
fn family_bin(opts: &Options, family: Family) -> Result<PathBuf, String> {
    let v4 =
        crate::firewall::resolve_binary(opts.iptables.as_deref()).map_err(|e| e.to_string())?;
    match family {
        Family::V4 => Ok(v4),
        Family::V6 => crate::firewall::iptables::ip6tables_beside(&v4)
            .filter(|p| crate::firewall::iptables::is_executable(p))
            .ok_or_else(|| {
                format!(
                    "no ip6tables beside {} to read our rule's counter",
                    v4.display()
                )
            }),
    }
}

/// Probes one family from the namespace `ns`: the control listener on `gw`, then IMDS, with
/// our rule's counter read before and after.
async fn probe_family(
    opts: &Options,
    runner: &dyn CommandRunner,
    ns: &str,
    bridge: &str,
    family: Family,
    gw: IpAddr,
    from: String,
) -> Probe {
    let imds: IpAddr = match family {
        Family::V4 => IMDS_V4.into(),
        Family::V6 => IMDS_V6.into(),
    };
    let bin = match family_bin(opts, family) {
        Ok(b) => b,
        Err(e) => return Probe::not_proven(from, e),
    };
    // The listener lives in the host's namespace (this thread's); the kernel completes the
    // handshake from its backlog, so nothing needs to accept.
    let listener = match TcpListener::bind(SocketAddr::new(gw, 0)) {
        Ok(l) => l,
        Err(e) => {
            return Probe::not_proven(
                from,
                format!("cannot open the control listener on {gw}: {e}"),
            );
        }
    };
    let control = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return Probe::not_proven(from, format!("control listener: {e}")),
    };
    let before = counter(runner, &bin, family, bridge);
    let seen = connect_from(ns, vec![control, SocketAddr::new(imds, 80)]).await;
    let after = counter(runner, &bin, family, bridge);
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
        control: Some(control.to_string()),
        control_ok,
        imds_answered,
        counter_rise: rise.ok(),
        reason,
    }
}

/// One bridge: its namespace, both families' probes.
async fn probe_bridge(
    opts: &Options,
    runner: &dyn CommandRunner,
    bridge: &str,
    idx: usize,
) -> anyhow::Result<(Option<Probe>, Option<Probe>)> {
    let (v4, v6) = bridge_addrs(runner, bridge)?;
    let Some((gw4, prefix4)) = v4 else {
        return Ok((
            Some(Probe::not_proven(
                "-".into(),
                format!("the bridge {bridge} has no IPv4 address; is Docker running?"),
            )),
            None,
        ));
    };
    let want_v6 = match opts.ipv6 {
        Ipv6Mode::Off => false,
        Ipv6Mode::Auto => v6.is_some(),
        Ipv6Mode::On => true,
    };
    let pid = std::process::id();
    let (name, host_if) = if idx == 0 {
        (
            format!("{NS_PREFIX}{pid}"),
            format!("ebsp{}", pid % 1_000_000_000),
        )
    } else {
        (
            format!("{NS_PREFIX}{pid}-{idx}"),
            format!("ebsp{}x{idx}", pid % 100_000_000),
        )
    };
    let addr4 = match free_v4(runner, bridge, gw4, prefix4, pid).await {
        Ok(a) => a,
        Err(why) => return Ok((Some(Probe::not_proven("-".into(), why)), None)),
    };

    ip(runner, &["netns", "add", &name])?;
    let mut guard = ProbeNs {
        name: name.clone(),
        bridge: bridge.to_owned(),
        addrs: vec![addr4.to_string()],
    };
    ip(
        runner,
        &[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ],
    )?;
    ip(runner, &["link", "set", &host_if, "master", bridge, "up"])?;
    ip(runner, &["-n", &name, "link", "set", "lo", "up"])?;
    ip(
        runner,
        &[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{addr4}/{prefix4}"),
            "dev",
            "eth0",
        ],
    )?;
    let mut addr6 = None;
    let mut v6_missing = None;
    if want_v6 {
        match v6 {
            Some((gw6, prefix6)) => {
                let a6 =
                    probe_v6(gw6, prefix6, pid).context("the bridge's IPv6 subnet is too small")?;
                ip(
                    runner,
                    &[
                        "-n",
                        &name,
                        "addr",
                        "add",
                        &format!("{a6}/{prefix6}"),
                        "dev",
                        "eth0",
                        "nodad",
                    ],
                )?;
                guard.addrs.push(a6.to_string());
                addr6 = Some((a6, gw6));
            }
            None => {
                v6_missing = Some(Probe::not_proven(
                    "-".into(),
                    format!("--ipv6 on, but the bridge {bridge} has no global IPv6 address"),
                ))
            }
        }
    }
    ip(runner, &["-n", &name, "link", "set", "eth0", "up"])?;
    ip(
        runner,
        &[
            "-n",
            &name,
            "route",
            "add",
            "default",
            "via",
            &gw4.to_string(),
        ],
    )?;
    if let Some((_, gw6)) = addr6 {
        ip(
            runner,
            &[
                "-n",
                &name,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &gw6.to_string(),
            ],
        )?;
    }
    // Both families at once: a blocked probe waits for the whole connect timeout.
    let (p4, p6) = tokio::join!(
        probe_family(
            opts,
            runner,
            &name,
            bridge,
            Family::V4,
            gw4.into(),
            addr4.to_string()
        ),
        async {
            match addr6 {
                Some((a6, gw6)) => Some(
                    probe_family(
                        opts,
                        runner,
                        &name,
                        bridge,
                        Family::V6,
                        gw6.into(),
                        a6.to_string(),
                    )
                    .await,
                ),
                None => None,
            }
        }
    );
    drop(guard);
    Ok((Some(p4), p6.or(v6_missing)))
}

/// The comment of the counting rule (no target) that measures the PUT response hop limit.
const TTL_COMMENT: &str = "ecs-bootstrap-ttl";

/// The instance's PUT response hop limit as the host can measure it without IMDSv1: a token
/// PUT while a counting rule (no target, so it changes nothing) on INPUT counts IMDS's packets
/// that arrive with TTL 1. A hop limit of 1 (the answer dies at the first forward) also keeps
/// containers on the bridges from IMDSv2 tokens. Ok("1") or Ok("2 or more"); Err: not measured.
fn put_hop_limit(runner: &dyn CommandRunner, bin: &Path) -> Result<&'static str, String> {
    let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_default();
    let endpoint = endpoint.trim().trim_end_matches('/');
    if !endpoint.is_empty() && endpoint != "http://169.254.169.254" {
        return Err(format!("IMDS is at {endpoint}, not 169.254.169.254"));
    }
    let spec: Vec<String> = [
        "-s",
        "169.254.169.254/32",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--sport",
        "80",
        "-m",
        "ttl",
        "--ttl-eq",
        "1",
        "-m",
        "comment",
        "--comment",
        TTL_COMMENT,
    ]
    .map(str::to_owned)
    .to_vec();
    let ipt = |args: Vec<String>| -> Result<String, String> {
        let mut a: Vec<OsString> = ["-w", "10", "-t", "filter"].map(OsString::from).to_vec();
        a.extend(args.into_iter().map(OsString::from));
        let out = runner
            .run(bin, &a, None)
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(format!("{}: {}", bin.display(), out.stderr.trim()))
        }
    };
    let mut insert = vec!["-I".to_owned(), "INPUT".to_owned(), "1".to_owned()];
    insert.extend(spec.iter().cloned());
    ipt(insert)?;
    let put = (|| -> std::io::Result<bool> {
        use std::io::{Read as _, Write as _};
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::new(IMDS_V4.into(), 80), CONNECT_TIMEOUT)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(
            b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )?;
        let mut buf = vec![];
        let _ = s.take(64 * 1024).read_to_end(&mut buf);
        Ok(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200"))
    })();
    let listing = ipt(vec!["-S".into(), "INPUT".into(), "-v".into()]);
    let mut delete = vec!["-D".to_owned(), "INPUT".to_owned()];
    delete.extend(spec);
    let _ = ipt(delete);
    match put {
        Ok(true) => {}
        Ok(false) => return Err("the token PUT was not answered 200".into()),
        Err(e) => return Err(format!("the token PUT failed: {e}")),
    }
    let packets: u64 = listing?
        .lines()
        .filter(|l| l.contains(TTL_COMMENT))
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let c = t.iter().position(|w| *w == "-c")?;
            t.get(c + 1)?.parse::<u64>().ok()
        })
        .sum();
    Ok(if packets > 0 { "1" } else { "2 or more" })
}

pub async fn run(
    opts: &Options,
    imds: &Imds,
    runner: &dyn CommandRunner,
) -> anyhow::Result<StepResult> {
    sweep_stale(runner);
    let not_proven = |message: String, summary: Vec<String>, details: serde_json::Value| {
        anyhow::Error::new(Failure {
            message,
            summary,
            details,
            exit: Some(Exit::NotProven),
        })
    };
    let bridges = match &opts.bridge {
        Some(b) if Path::new("/sys/class/net").join(b).exists() => vec![b.clone()],
        Some(b) => {
            return Err(not_proven(
                format!(
                    "there is no {b} bridge on this host, so there is nothing to prove yet: start Docker (systemctl start docker) or name the bridge with --bridge"
                ),
                vec![],
                json!({"bridges": []}),
            ));
        }
        None => matching_bridges(&opts.interfaces),
    };
    if bridges.is_empty() {
        return Err(not_proven(
            format!(
                "no bridge matches --interface {} on this host (there is no docker0 bridge), so there is nothing to prove yet: start Docker (systemctl start docker) or name the bridge with --bridge",
                opts.interfaces.join(",")
            ),
            vec![],
            json!({"bridges": []}),
        ));
    }
    let mut summary = vec![];
    let mut per_bridge = vec![];
    let mut verdicts: Vec<(String, Family, Probe)> = vec![];
    for (idx, bridge) in bridges.iter().enumerate() {
        let (p4, p6) = probe_bridge(opts, runner, bridge, idx).await?;
        if let Some(p) = &p4 {
            summary.push(p.line(bridge, "169.254.169.254:80"));
            verdicts.push((bridge.clone(), Family::V4, p.clone()));
        }
        if let Some(p) = &p6 {
            summary.push(p.line(bridge, "[fd00:ec2::254]:80"));
            verdicts.push((bridge.clone(), Family::V6, p.clone()));
        }
        per_bridge.push(json!({"bridge": bridge, "ipv4": p4, "ipv6": p6}));
    }
    // Per family, the worst verdict over the bridges: reachable, then not proven, then blocked.
    let worst = |family: Family| {
        let vs: Vec<Verdict> = verdicts
            .iter()
            .filter(|(_, f, _)| *f == family)
            .map(|(_, _, p)| p.verdict)
            .collect();
        [Verdict::Reachable, Verdict::NotProven, Verdict::Blocked]
            .into_iter()
            .find(|v| vs.contains(v))
    };

    let host = imds.instance_id().await;
    summary.push(match &host {
        Ok(id) => format!("from the host: IMDS answers (instance {id})"),
        Err(e) => format!("from the host: IMDS does not answer: {e}"),
    });
    let hop_limit = match (&host, family_bin(opts, Family::V4)) {
        (Ok(_), Ok(bin)) => put_hop_limit(runner, &bin),
        (Err(_), _) => Err("IMDS does not answer the host".into()),
        (_, Err(e)) => Err(e),
    };
    summary.push(match &hop_limit {
        Ok("1") => "PUT response hop limit: 1 (tokens do not reach containers)".into(),
        Ok(h) => format!(
            "PUT response hop limit: {h} (a container that got past the block could get tokens)"
        ),
        Err(e) => format!("PUT response hop limit: not measured ({e})"),
    });
    let details = json!({
        "put_hop_limit": hop_limit.as_ref().ok(),
        "bridges": per_bridge,
        "from_bridge": {"ipv4": worst(Family::V4), "ipv6": worst(Family::V6)},
        "from_host": if host.is_ok() { "reachable" } else { "unreachable" },
    });
    let fail = |message: String, exit: Option<Exit>| {
        anyhow::Error::new(Failure {
            message,
            summary: summary.clone(),
            details: details.clone(),
            exit,
        })
    };
    let leaked: Vec<&String> = verdicts
        .iter()
        .filter(|(_, _, p)| p.verdict == Verdict::Reachable)
        .map(|(b, _, _)| b)
        .collect();
    if !leaked.is_empty() {
        for l in &summary {
            tracing::error!("{l}");
        }
        let mut names: Vec<&str> = leaked.iter().map(|s| s.as_str()).collect();
        names.dedup();
        return Err(fail(
            format!(
                "containers on {} can reach instance metadata: run `ecs-bootstrap block-imds` with an --interface pattern for each (and check that `-j DOCKER-USER` is the first rule of FORWARD)",
                names.join(", ")
            ),
            None,
        ));
    }
    if let Some((b, f, p)) = verdicts
        .iter()
        .find(|(_, _, p)| p.verdict == Verdict::NotProven)
    {
        return Err(fail(
            format!(
                "the block is not proven on {b} ({}): {}",
                f.name(),
                p.reason.as_deref().unwrap_or("")
            ),
            Some(Exit::NotProven),
        ));
    }
    // A fault on the host's side is never 6 (that is for a bridge that reaches IMDS): 7 when
    // IMDS did not answer the host, else 5 (an unexpected answer, as the check reports it).
    if let Err(e) = &host {
        let unreachable =
            imds.was_unreachable() || matches!(e, crate::imds::MetadataError::Unreachable { .. });
        return Err(if unreachable {
            fail(
                format!("the block holds, but the host itself cannot reach instance metadata: {e}"),
                Some(Exit::ImdsUnreachable),
            )
        } else {
            fail(
                format!(
                    "the block holds, but instance metadata did not answer the host as expected: {e}"
                ),
                Some(Exit::Check),
            )
        });
    }
    Ok(StepResult {
        changed: false,
        summary,
        details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_addr_output() {
        let out = "5: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever preferred_lft forever\n\
                   5: docker0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever\n\
                   5: docker0    inet6 fd00:d0c:0:1::1/64 scope global \\       valid_lft forever preferred_lft forever\n";
        let (v4, v6) = parse_addrs(out);
        assert_eq!(v4, Some((Ipv4Addr::new(172, 17, 0, 1), 16)));
        assert_eq!(v6, Some(("fd00:d0c:0:1::1".parse().unwrap(), 64)));
    }

    #[test]
    fn probe_addresses_stay_in_subnet() {
        let a = probe_candidates_v4(Ipv4Addr::new(172, 17, 0, 1), 16, 12345, &[], 1)[0];
        assert_eq!(a.octets()[..2], [172, 17]);
        assert_ne!(a, Ipv4Addr::new(172, 17, 255, 255));
        let b = probe_candidates_v4(Ipv4Addr::new(10, 0, 0, 1), 24, 7, &[], 1)[0];
        assert_eq!(b.octets()[..3], [10, 0, 0]);
        assert!(b.octets()[3] > 1 && b.octets()[3] < 255);
        let c = probe_v6("fd00:d0c:0:1::1".parse().unwrap(), 64, 9).unwrap();
        assert_eq!(c.segments()[..4], [0xfd00, 0xd0c, 0, 1]);
    }

    #[test]
    fn probe_candidates_skip_what_is_taken_and_stay_in_the_subnet() {
        let gw = Ipv4Addr::new(10, 99, 0, 1);
        let all: Vec<Ipv4Addr> = probe_candidates_v4(gw, 28, 5, &[], 100);
        // Every host address of the /28 but the bridge's, each once.
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 13, "{all:?}");
        assert!(!all.contains(&gw));
        assert!(
            all.iter()
                .all(|a| a.octets()[3] >= 2 && a.octets()[3] <= 14)
        );
        // Containers on .2-.14 but .7: .7 is the only candidate.
        let taken: Vec<Ipv4Addr> = (2..=14)
            .filter(|i| *i != 7)
            .map(|i| Ipv4Addr::new(10, 99, 0, i))
            .collect();
        for salt in 0..30 {
            assert_eq!(
                probe_candidates_v4(gw, 28, salt, &taken, 16),
                [Ipv4Addr::new(10, 99, 0, 7)]
            );
        }
        assert_eq!(probe_candidates_v4(gw, 16, 3, &[], 4).len(), 4);
        assert!(probe_candidates_v4(gw, 30, 3, &[], 4).is_empty());
    }

    #[test]
    fn neighbour_entries_with_a_link_layer_address_are_in_use() {
        let out = "10.99.0.2 lladdr 02:42:0a:63:00:02 REACHABLE\n10.99.0.3 lladdr 02:42:0a:63:00:03 STALE\n10.99.0.4  FAILED\n10.99.0.5 INCOMPLETE\n10.99.0.6 lladdr 02:42:0a:63:00:06 PERMANENT\n";
        let v: Vec<String> = neigh_in_use(out).iter().map(|a| a.to_string()).collect();
        assert_eq!(v, ["10.99.0.2", "10.99.0.3", "10.99.0.6"]);
        let addrs = "5: br0    inet 10.99.0.1/28 brd 10.99.0.15 scope global br0\\ valid_lft forever\n5: br0    inet 10.99.0.9/28 scope global secondary br0\\ valid_lft forever\n5: br0    inet6 fe80::1/64 scope link\n";
        assert_eq!(
            all_v4(addrs),
            [Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 9)]
        );
    }

    #[test]
    fn a_verdict_needs_the_control_and_the_counter() {
        assert_eq!(verdict(true, true, 0), Verdict::Reachable);
        assert_eq!(verdict(true, false, 3), Verdict::Reachable);
        assert_eq!(verdict(false, true, 1), Verdict::Blocked);
        // No answer proves nothing without the control, or without our rule's counter.
        assert_eq!(verdict(false, false, 2), Verdict::NotProven);
        assert_eq!(verdict(false, true, 0), Verdict::NotProven);
    }

    #[test]
    fn patterns_and_counters() {
        assert!(pattern_matches("docker+", "docker0"));
        assert!(pattern_matches("br-+", "br-1a2b"));
        assert!(pattern_matches("docker0", "docker0"));
        assert!(!pattern_matches("docker0", "docker1"));
        assert!(!pattern_matches("br-+", "docker0"));
        let listing = "-P FORWARD ACCEPT -c 0 0\n\
            -A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -c 3 180 -j DROP\n\
            -A DOCKER-USER -d 169.254.169.254/32 -i br-+ -m comment --comment ecs-bootstrap -c 0 0 -j DROP\n\
            -A DOCKER-USER -d 169.254.169.254/32 -i docker0 -c 9 540 -j DROP\n\
            -A DOCKER-USER -j RETURN -c 7 420\n";
        assert_eq!(
            our_counters(listing, Family::V4),
            [("docker+".to_owned(), 3), ("br-+".to_owned(), 0)]
        );
        assert!(our_counters(listing, Family::V6).is_empty());
    }
}

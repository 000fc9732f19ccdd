//! `prove`: show that the block works, the way a container would meet it. A throwaway network
//! namespace is attached to the bridge (docker0) by a veth, as Docker attaches a container; from
//! it we try to connect to 169.254.169.254:80 (and [fd00:ec2::254]:80 when IPv6 is on) with a
//! short timeout. The host must still get answers from IMDS. The namespace is always removed:
//! by a guard on every return path, when the run is interrupted (the guard is dropped with the
//! future), and, after a SIGKILL, by the next `prove`, which sweeps namespaces of dead runs.

use crate::cli::{Ipv6Mode, ProveArgs};
use crate::imds::Imds;
use crate::report::StepResult;
use crate::sys::{CommandRunner, SystemRunner};
use anyhow::{Context as _, bail};
use serde_json::json;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

const NS_PREFIX: &str = "ebs-prove-";
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
const IMDS_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
const IMDS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

#[derive(Debug, Clone)]
pub struct Options {
    pub bridge: String,
    pub ipv6: Ipv6Mode,
}

impl Options {
    pub fn from_args(a: &ProveArgs) -> Self {
        Options {
            bridge: a.bridge.clone(),
            ipv6: a.ipv6,
        }
    }
}

/// The bridge's first IPv4 and first global IPv6 address, each with its prefix length.
pub type BridgeAddrs = (Option<(Ipv4Addr, u8)>, Option<(Ipv6Addr, u8)>);

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Blocked => "blocked",
            Verdict::Reachable => "reachable",
        })
    }
}

/// Where a probe got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Blocked,
    Reachable,
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
    if !Path::new("/sys/class/net").join(bridge).exists() {
        bail!(
            "there is no {bridge} bridge on this host, so there is nothing to prove yet: start Docker \
             (systemctl start docker) or name the bridge with --bridge"
        );
    }
    let out = ip(runner, &["-o", "addr", "show", "dev", bridge])?;
    Ok(parse_addrs(&out))
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

/// An address for the probe near the top of the bridge's subnet (Docker hands out addresses
/// from the bottom), away from the bridge's own address.
pub fn probe_v4(bridge: Ipv4Addr, prefix: u8, salt: u32) -> Option<Ipv4Addr> {
    if prefix > 29 {
        return None;
    }
    let size = 1u32 << (32 - prefix);
    let base = u32::from(bridge) & !(size - 1);
    let span = (size - 4).min(200);
    let cand = base + size - 2 - (salt % span);
    (cand != u32::from(bridge)).then(|| Ipv4Addr::from(cand))
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

/// The throwaway namespace; deleted (with its veth) when dropped.
struct ProbeNs {
    name: String,
}

impl Drop for ProbeNs {
    fn drop(&mut self) {
        let _ = SystemRunner::default().run(
            Path::new("ip"),
            &["netns".into(), "del".into(), self.name.clone().into()],
            None,
        );
    }
}

/// Removes probe namespaces left by runs that were killed (their process is gone).
fn sweep_stale(runner: &dyn CommandRunner) {
    let Ok(list) = ip(runner, &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
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

/// Connects to `addr` from inside the named namespace (on a thread that joins it).
async fn connect_from(ns: &str, addr: SocketAddr) -> anyhow::Result<Verdict> {
    let path = format!("/run/netns/{ns}");
    tokio::task::spawn_blocking(move || -> anyhow::Result<Verdict> {
        let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering the network namespace {path}"))?;
        Ok(match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => Verdict::Reachable,
            Err(_) => Verdict::Blocked,
        })
    })
    .await
    .context("the probe thread failed")?
}

pub async fn run(
    opts: &Options,
    imds: &Imds,
    runner: &dyn CommandRunner,
) -> anyhow::Result<StepResult> {
    sweep_stale(runner);
    let (v4, v6) = bridge_addrs(runner, &opts.bridge)?;
    let Some((gw4, prefix4)) = v4 else {
        bail!(
            "the bridge {} has no IPv4 address; is Docker running?",
            opts.bridge
        );
    };
    let want_v6 = match opts.ipv6 {
        Ipv6Mode::Off => false,
        Ipv6Mode::Auto => v6.is_some(),
        Ipv6Mode::On => {
            if v6.is_none() {
                bail!(
                    "--ipv6 on, but the bridge {} has no IPv6 address",
                    opts.bridge
                );
            }
            true
        }
    };
    let pid = std::process::id();
    let name = format!("{NS_PREFIX}{pid}");
    let host_if = format!("ebsp{}", pid % 1_000_000_000);
    let addr4 = probe_v4(gw4, prefix4, pid)
        .context("the bridge's IPv4 subnet is too small for a probe address")?;

    ip(runner, &["netns", "add", &name])?;
    let guard = ProbeNs { name: name.clone() };
    ip(
        runner,
        &[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ],
    )?;
    ip(
        runner,
        &["link", "set", &host_if, "master", &opts.bridge, "up"],
    )?;
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
    if want_v6 {
        let (gw6, prefix6) = v6.expect("checked");
        let a6 = probe_v6(gw6, prefix6, pid).context("the bridge's IPv6 subnet is too small")?;
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
        addr6 = Some((a6, gw6));
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
    let (from_bridge_v4, from_bridge_v6) = tokio::join!(
        connect_from(&name, SocketAddr::new(IMDS_V4.into(), 80)),
        async {
            match addr6 {
                Some(_) => Some(connect_from(&name, SocketAddr::new(IMDS_V6.into(), 80)).await),
                None => None,
            }
        }
    );
    let from_bridge_v4 = from_bridge_v4?;
    let from_bridge_v6 = from_bridge_v6.transpose()?;
    drop(guard);

    let host = imds.get("/latest/meta-data/instance-id").await;
    let mut summary = vec![format!(
        "from {} ({addr4}): 169.254.169.254:80 {from_bridge_v4}",
        opts.bridge
    )];
    if let (Some(v), Some((a6, _))) = (from_bridge_v6, addr6) {
        summary.push(format!(
            "from {} ({a6}): [fd00:ec2::254]:80 {v}",
            opts.bridge
        ));
    }
    summary.push(match &host {
        Ok(id) => format!("from the host: IMDS answers (instance {})", id.trim()),
        Err(e) => format!("from the host: IMDS does not answer: {e}"),
    });
    let details = json!({
        "bridge": opts.bridge,
        "from_bridge": {"ipv4": from_bridge_v4, "ipv6": from_bridge_v6},
        "from_host": if host.is_ok() { "reachable" } else { "unreachable" },
    });
    let leaked = [Some(from_bridge_v4), from_bridge_v6]
        .into_iter()
        .flatten()
        .any(|v| v == Verdict::Reachable);
    let fail = |message: String| {
        anyhow::Error::new(crate::report::Failure {
            message,
            summary: summary.clone(),
            details: details.clone(),
        })
    };
    if leaked {
        for l in &summary {
            tracing::error!("{l}");
        }
        return Err(fail(format!(
            "containers on {} can reach instance metadata: run `ecs-bootstrap block-imds` (and check that \
             `-j DOCKER-USER` is the first rule of FORWARD)",
            opts.bridge
        )));
    }
    if let Err(e) = &host {
        return Err(fail(format!(
            "the block holds, but the host itself cannot reach instance metadata: {e}"
        )));
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
        let a = probe_v4(Ipv4Addr::new(172, 17, 0, 1), 16, 12345).unwrap();
        assert_eq!(a.octets()[..2], [172, 17]);
        assert_ne!(a, Ipv4Addr::new(172, 17, 255, 255));
        let b = probe_v4(Ipv4Addr::new(10, 0, 0, 1), 24, 7).unwrap();
        assert_eq!(b.octets()[..3], [10, 0, 0]);
        assert!(b.octets()[3] > 1 && b.octets()[3] < 255);
        assert!(probe_v4(Ipv4Addr::new(10, 0, 0, 1), 30, 1).is_none());
        let c = probe_v6("fd00:d0c:0:1::1".parse().unwrap(), 64, 9).unwrap();
        assert_eq!(c.segments()[..4], [0xfd00, 0xd0c, 0, 1]);
    }
}

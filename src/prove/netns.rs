//! The throwaway network namespace a probe runs in, attached to the bridge by a veth as Docker
//! attaches a container; removed by a guard on every path, and, after a SIGKILL, by the next
//! `prove`, which sweeps the namespaces of dead runs.

use crate::sys::{CommandRunner, SystemRunner};
use anyhow::{Context as _, bail};
use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

pub(crate) const NS_PREFIX: &str = "ebs-prove-";

/// Runs `ip` with `args`; its stdout, or an error with its stderr.
pub(crate) fn ip(runner: &dyn CommandRunner, args: &[&str]) -> anyhow::Result<String> {
    let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
    let out = runner
        .run(Path::new("ip"), &argv, None)
        .with_context(|| format!("running ip {} (is iproute2 installed?)", args.join(" ")))?;
    if !out.success() {
        bail!("`ip {}` failed: {}", args.join(" "), out.stderr.trim());
    }
    Ok(out.stdout)
}

/// The names of one bridge's probe: `ebs-prove-<pid>` (`-<n>` from the second bridge on), and
/// the host side of its veth, `ebsp...` (within the 15 bytes of an interface name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    pub(crate) ns: String,
    pub(crate) host_if: String,
}

impl Names {
    pub(crate) fn new(pid: u32, idx: usize) -> Names {
        if idx == 0 {
            Names {
                ns: format!("{NS_PREFIX}{pid}"),
                host_if: format!("ebsp{}", pid % 1_000_000_000),
            }
        } else {
            Names {
                ns: format!("{NS_PREFIX}{pid}-{idx}"),
                host_if: format!("ebsp{}x{idx}", pid % 100_000_000),
            }
        }
    }
}

/// Where the probe sits: its address on the bridge's subnet, the prefix, and the bridge's own
/// address as its gateway.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place<A> {
    pub(crate) addr: A,
    pub(crate) prefix: u8,
    pub(crate) gw: A,
}

/// The throwaway namespace; deleted (with its veth) when dropped, and then the host's
/// neighbour entries for its addresses on the bridge, so that no entry is left pointing at a
/// link-layer address that is gone.
pub(crate) struct ProbeNs {
    pub(crate) name: String,
    host_if: String,
    bridge: String,
    addrs: Vec<String>,
}

/// How long each clean-up command may take. Its own limit, not the run's deadline: the guard
/// also runs after the deadline passed, and must still remove the namespace.
const CLEANUP_LIMIT: Duration = Duration::from_secs(5);

impl Drop for ProbeNs {
    fn drop(&mut self) {
        let r = SystemRunner {
            limit: CLEANUP_LIMIT,
            ..SystemRunner::default()
        };
        // The veth first: it goes at once, while the namespace lives on as long as the probe
        // thread is still inside it, and with the link gone no packet can renew a neighbour
        // entry after it is deleted below.
        let _ = ip(&r, &["link", "del", &self.host_if]);
        let _ = ip(&r, &["netns", "del", &self.name]);
        for a in &self.addrs {
            let _ = ip(&r, &["neigh", "del", a, "dev", &self.bridge]);
        }
    }
}

impl ProbeNs {
    /// The guard of the namespace [`attach`] creates with `names`, made before it: a failure
    /// or an interruption on the way removes what was made (removing what was not is a no-op).
    pub(crate) fn new(
        bridge: &str,
        names: &Names,
        v4: Place<Ipv4Addr>,
        v6: Option<Place<Ipv6Addr>>,
    ) -> ProbeNs {
        let mut addrs = vec![v4.addr.to_string()];
        addrs.extend(v6.map(|p| p.addr.to_string()));
        ProbeNs {
            name: names.ns.clone(),
            host_if: names.host_if.clone(),
            bridge: bridge.to_owned(),
            addrs,
        }
    }
}

/// Creates the namespace `names.ns` and attaches it to `bridge`: a veth whose host side is a
/// port of the bridge, the probe's addresses, default routes via the bridge. The caller holds
/// the [`ProbeNs`] guard made for the same names before, which removes it on every path.
pub(crate) fn attach(
    runner: &dyn CommandRunner,
    bridge: &str,
    names: &Names,
    v4: Place<Ipv4Addr>,
    v6: Option<Place<Ipv6Addr>>,
) -> anyhow::Result<()> {
    let ns = names.ns.as_str();
    ip(runner, &["netns", "add", ns])?;
    let host_if = names.host_if.as_str();
    ip(
        runner,
        &[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    ip(runner, &["link", "set", host_if, "master", bridge, "up"])?;
    ip(runner, &["-n", ns, "link", "set", "lo", "up"])?;
    let a4 = format!("{}/{}", v4.addr, v4.prefix);
    ip(runner, &["-n", ns, "addr", "add", &a4, "dev", "eth0"])?;
    if let Some(v6) = v6 {
        // No duplicate address detection: the address is usable at once, not after a second.
        let a6 = format!("{}/{}", v6.addr, v6.prefix);
        ip(
            runner,
            &["-n", ns, "addr", "add", &a6, "dev", "eth0", "nodad"],
        )?;
    }
    ip(runner, &["-n", ns, "link", "set", "eth0", "up"])?;
    let gw4 = v4.gw.to_string();
    ip(runner, &["-n", ns, "route", "add", "default", "via", &gw4])?;
    if let Some(v6) = v6 {
        let gw6 = v6.gw.to_string();
        ip(
            runner,
            &["-n", ns, "-6", "route", "add", "default", "via", &gw6],
        )?;
    }
    Ok(())
}

/// Removes probe namespaces left by runs that were killed (their process is gone): named
/// `ebs-prove-<pid>` or `ebs-prove-<pid>-<n>`.
pub(crate) fn sweep_stale(runner: &dyn CommandRunner) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_an_interface_name() {
        for (pid, idx) in [(4_194_304, 0), (4_194_304, 9), (1, 0), (999_999_999, 3)] {
            let n = Names::new(pid, idx);
            assert!(n.ns.starts_with(NS_PREFIX), "{n:?}");
            assert!(n.host_if.len() <= 15, "{n:?}");
        }
        assert_eq!(Names::new(42, 0).ns, "ebs-prove-42");
        assert_eq!(Names::new(42, 2).ns, "ebs-prove-42-2");
    }
}

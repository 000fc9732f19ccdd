//! The probe's addresses: the bridge's own, and a free one of its subnet for the probe, which
//! must never be a container's (the host's neighbour entry for it would point at the probe's
//! link-layer address, gone once the probe is).

use super::Blocking;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;
use tokio::time::Instant;

/// How many addresses prove tries for its probe before it gives up (not proven, exit 8).
const MAX_CANDIDATES: usize = 16;
/// How long an address may take to answer (ARP, then a TCP reset or handshake) before it
/// counts as free. ARP on a bridge answers in well under a millisecond.
const ARP_WAIT: Duration = Duration::from_millis(300);

/// The bridge's first IPv4 and first global IPv6 address, each with its prefix length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BridgeAddrs {
    pub(crate) v4: Option<(Ipv4Addr, u8)>,
    pub(crate) v6: Option<(Ipv6Addr, u8)>,
}

/// The bridge's first address of each family, with its prefix length.
pub(crate) async fn bridge_addrs(work: &Blocking, bridge: &str) -> anyhow::Result<BridgeAddrs> {
    let out = work.ip(&["-o", "addr", "show", "dev", bridge]).await?;
    Ok(parse_addrs(&out))
}

/// Parses `ip -o addr show` lines into the first IPv4 and the first non-link-local IPv6 address
/// (pure).
pub(crate) fn parse_addrs(out: &str) -> BridgeAddrs {
    let mut found = BridgeAddrs::default();
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
                Ok(IpAddr::V4(a)) if found.v4.is_none() => found.v4 = Some((a, p)),
                Ok(IpAddr::V6(a)) if found.v6.is_none() && (a.segments()[0] & 0xffc0) != 0xfe80 => {
                    found.v6 = Some((a, p))
                }
                _ => {}
            }
        }
    }
    found
}

/// The addresses of the bridge's IPv4 subnet a probe may take, in the order to try them: from
/// a salted start near the top (Docker hands out addresses from the bottom) downwards, then
/// from the top down to the start; never the network or broadcast address, the bridge's own
/// or a `taken` one; at most `max` (pure).
pub(crate) fn probe_candidates_v4(
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

/// The probe's IPv6 address in the bridge's subnet: `...:eb5:<salt>` in the low bits, far above
/// the addresses Docker hands out from the bottom of the subnet (pure).
pub(crate) fn probe_v6(bridge: Ipv6Addr, prefix: u8, salt: u32) -> Option<Ipv6Addr> {
    if prefix > 120 {
        return None;
    }
    let b = u128::from(bridge);
    let host_bits = 128 - u32::from(prefix);
    let mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    let cand = (b & !mask) | (0xeb5_0000 + (u128::from(salt) & 0xffff)) & mask;
    (cand != b).then(|| Ipv6Addr::from(cand))
}

/// The addresses `ip neigh show` lines give a link-layer address for: in use on the link
/// (reachable, stale, permanent, ...; an INCOMPLETE or FAILED entry has none) (pure).
pub(crate) fn neigh_in_use(out: &str) -> Vec<IpAddr> {
    out.lines()
        .filter(|l| l.split_whitespace().any(|w| w == "lladdr"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Every IPv4 address in `ip -o addr show` lines (pure).
pub(crate) fn all_v4(out: &str) -> Vec<Ipv4Addr> {
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
async fn answers(work: &Blocking, bridge: &str, a: Ipv4Addr, wait: Duration) -> bool {
    let c = tokio::time::timeout(wait, tokio::net::TcpStream::connect((a, 9))).await;
    if let Ok(r) = c
        && r.as_ref().map_or_else(
            |e| e.kind() == std::io::ErrorKind::ConnectionRefused,
            |_| true,
        )
    {
        return true;
    }
    work.ip(&["-4", "neigh", "show", "to", &a.to_string(), "dev", bridge])
        .await
        .map_or(true, |o| !neigh_in_use(&o).is_empty())
}

/// A free IPv4 address on the bridge's subnet for the probe: not the bridge's, not in the
/// host's neighbour table for the bridge, not answering ARP. Each candidate's wait is cut to
/// the time left until `deadline`, and the search ends there. Err: why none was found.
pub(crate) async fn free_v4(
    work: &Blocking,
    bridge: &str,
    (gw, prefix): (Ipv4Addr, u8),
    salt: u32,
    deadline: Instant,
) -> Result<Ipv4Addr, String> {
    let mut taken = all_v4(
        &work
            .ip(&["-o", "-4", "addr", "show", "dev", bridge])
            .await
            .unwrap_or_default(),
    );
    let neigh = work
        .ip(&["-4", "neigh", "show", "dev", bridge])
        .await
        .map_err(|e| format!("cannot read the host's neighbour table for {bridge}: {e:#}"))?;
    taken.extend(neigh_in_use(&neigh).into_iter().filter_map(|a| match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }));
    let candidates = probe_candidates_v4(gw, prefix, salt, &taken, MAX_CANDIDATES);
    for (i, &c) in candidates.iter().enumerate() {
        let Some(wait) = super::within(ARP_WAIT, deadline) else {
            return Err(format!(
                "the deadline passed while looking for a free address for a probe on {bridge} ({i} of {} candidates tried); raise --deadline",
                candidates.len()
            ));
        };
        if !answers(work, bridge, c, wait).await {
            return Ok(c);
        }
    }
    Err(format!(
        "no free address for a probe on {bridge} ({gw}/{prefix}): {} address(es) are in the host's neighbour table and the {} tried answer ARP (a probe must not take a container's address); probe another bridge, or free an address",
        taken.len(),
        candidates.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_addr_output() {
        let out = "5: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever preferred_lft forever\n\
                   5: docker0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever\n\
                   5: docker0    inet6 fd00:d0c:0:1::1/64 scope global \\       valid_lft forever preferred_lft forever\n";
        let a = parse_addrs(out);
        assert_eq!(a.v4, Some((Ipv4Addr::new(172, 17, 0, 1), 16)));
        assert_eq!(a.v6, Some(("fd00:d0c:0:1::1".parse().unwrap(), 64)));
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
}

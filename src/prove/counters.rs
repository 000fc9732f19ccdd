//! Our DROP rules' packet counters: the proof that a probe met our rule, not something else
//! (forwarding off, no route).

use crate::firewall::rules::{Family, Line, Placement, RuleSet};
use crate::sys::CommandRunner;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use tokio::time::Instant;

/// Whether an iptables interface pattern (`docker+`, `docker0`) matches an interface name.
pub(crate) fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// The packet counters of our DROP rules (comment `ecs-bootstrap`) in an `iptables -S -v`
/// listing, as (interface pattern, packets) (pure).
pub(crate) fn our_counters(listing: &str, family: Family) -> Vec<(String, u64)> {
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

/// The packets our DROP rules for patterns matching `bridge` have dropped (iptables -S -v,
/// waiting for the xtables lock no longer than until `deadline`).
pub(crate) fn read(
    runner: &dyn CommandRunner,
    bin: &Path,
    family: Family,
    bridge: &str,
    deadline: Instant,
) -> Result<u64, String> {
    let wait = super::lock_wait(deadline)
        .ok_or("the deadline passed before our rule's counter was read")?;
    let args: Vec<OsString> = ["-w", &wait, "-t", "filter", "-S", "-v"]
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

/// The family's iptables binary for the counters, or why there is none.
pub(crate) fn family_bin(iptables: Option<&Path>, family: Family) -> Result<PathBuf, String> {
    let v4 = crate::firewall::resolve_binary(iptables).map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

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

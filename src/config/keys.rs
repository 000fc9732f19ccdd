//! The keys the ECS agent and ecs-init read from ecs.config (`keys.txt`, a snapshot of
//! amazon-ecs-agent's code and README) and the nearest-key suggestion for a typo.
//!
//! No key decides whether its value may be shown: every value is treated as a secret (a key
//! nobody listed can hold a password, a proxy URL can hold `user:password@`), so messages,
//! logs and reports carry key names and line numbers only.

use std::sync::OnceLock;

const KEYS_TXT: &str = include_str!("keys.txt");

/// The known keys, sorted.
pub fn known() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut v: Vec<&str> = KEYS_TXT
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        // Proxy variables the agent's HTTP client honours besides HTTP_PROXY and NO_PROXY.
        v.extend(["HTTPS_PROXY"]);
        v.extend(super::parse::LOWER_CASE_KEYS);
        v.sort_unstable();
        v.dedup();
        v
    })
}

pub fn is_known(key: &str) -> bool {
    known().binary_search(&key).is_ok()
}

/// The known key nearest to `key` by edit distance, when it is near enough to be a typo.
pub fn suggest(key: &str) -> Option<&'static str> {
    // A third of the length, at least 1 and at most 4 edits: ECS_CLUSTR -> ECS_CLUSTER, while
    // FOO matches nothing.
    let limit = (key.len() / 3).clamp(1, 4);
    known()
        .iter()
        .map(|k| (strsim::levenshtein(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_loaded() {
        assert!(known().len() > 100);
        for k in [
            "ECS_CLUSTER",
            "ECS_ENGINE_AUTH_DATA",
            "AWS_DEFAULT_REGION",
            "DOCKER_HOST",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "NO_PROXY",
        ] {
            assert!(is_known(k), "{k}");
        }
        assert!(!is_known("ECS_CLUSTR"));
        assert!(known().iter().all(|k| super::super::parse::valid_key(k)));
    }

    #[test]
    fn suggests_nearest() {
        assert_eq!(suggest("ECS_CLUSTR"), Some("ECS_CLUSTER"));
        assert_eq!(suggest("ECS_LOG_LEVEL"), Some("ECS_LOGLEVEL"));
        assert_eq!(suggest("ECS_ENGINE_AUTH_TYP"), Some("ECS_ENGINE_AUTH_TYPE"));
        assert_eq!(suggest("FOO"), None);
        assert_eq!(suggest("TOTALLY_UNRELATED_THING"), None);
    }
}

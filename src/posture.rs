//! The IMDS posture of the instance, one line per ECS network mode, in the report of `run`:
//! what keeps tasks of each mode away from instance metadata, as far as this run knows. Pure:
//! `app` gathers the facts (the steps' outcomes, the written ecs.config).

use serde::Serialize;

/// The key the ECS agent reads to block IMDS for tasks in awsvpc mode.
pub const AWSVPC_KEY: &str = "ECS_AWSVPC_BLOCK_IMDS";

/// What a run knows.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The firewall step: None when skipped, Some(true) when it succeeded.
    pub firewall_ok: Option<bool>,
    pub interfaces: Vec<String>,
    /// prove: None when not run; Some(exit code of the step: 0 proven, 6 leak, 8 not proven,
    /// 7 host cut off).
    pub prove: Option<u8>,
    /// The written ecs.config's text, and its path; None when there is none.
    pub ecs_config: Option<(String, String)>,
    /// From the check step: whether IMDSv1 (no token) still answers, if it was probed.
    pub imdsv1: Option<crate::imds::Imdsv1>,
    /// From prove: the PUT response hop limit ("1" or "2 or more").
    pub put_hop_limit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub mode: &'static str,
    /// "blocked", "open", "unknown" or "not blockable".
    pub state: &'static str,
    pub detail: String,
}

/// Whether an ecs.config text sets `ECS_AWSVPC_BLOCK_IMDS=true` (the last value wins, as the
/// agent reads it).
pub fn awsvpc_blocked(ecs_config: &str) -> bool {
    ecs_config
        .lines()
        .rev()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == AWSVPC_KEY)
        .is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("true"))
}

/// One line per network mode, and one for the metadata options the run measured.
pub fn assess(f: &Facts) -> Vec<Line> {
    let patterns = f.interfaces.join(",");
    let bridge = match (f.firewall_ok, f.prove) {
        (None, _) => Line {
            mode: "bridge",
            state: "unknown",
            detail: "the firewall step was skipped in this run".into(),
        },
        (Some(false), _) => Line {
            mode: "bridge",
            state: "open",
            detail: "the firewall step failed: containers on the bridges may reach IMDS".into(),
        },
        (Some(true), Some(0)) => Line {
            mode: "bridge",
            state: "blocked",
            detail: format!(
                "DROP rules for {patterns}, proven by prove (a control through the bridge answered, IMDS did not, our rule's counter rose)"
            ),
        },
        (Some(true), Some(6)) => Line {
            mode: "bridge",
            state: "open",
            detail: format!("prove reached IMDS from a bridge despite the rules for {patterns}"),
        },
        (Some(true), Some(_)) => Line {
            mode: "bridge",
            state: "blocked",
            detail: format!(
                "DROP rules for {patterns}; prove could not prove it (see the prove step)"
            ),
        },
        (Some(true), None) => Line {
            mode: "bridge",
            state: "blocked",
            detail: format!("DROP rules for {patterns} (not proven in this run: add --prove)"),
        },
    };
    let awsvpc = match &f.ecs_config {
        Some((text, path)) if awsvpc_blocked(text) => Line {
            mode: "awsvpc",
            state: "blocked",
            detail: format!(
                "{AWSVPC_KEY}=true in {path}: the ECS agent blocks IMDS for awsvpc tasks"
            ),
        },
        Some((_, path)) => Line {
            mode: "awsvpc",
            state: "open",
            detail: format!(
                "{AWSVPC_KEY} is not true in {path}: awsvpc tasks reach IMDS through their own ENI; pass --block-awsvpc-imds (or set the key in the S3 object)"
            ),
        },
        None => Line {
            mode: "awsvpc",
            state: "unknown",
            detail: "no ecs.config was written or read in this run".into(),
        },
    };
    let host = Line {
        mode: "host",
        state: "not blockable",
        detail: "tasks in host mode share the host's network: no FORWARD rule can block them; keep tasks that must not reach IMDS out of host mode".into(),
    };
    let mut out = vec![bridge, awsvpc, host];
    if let Some(v1) = f.imdsv1 {
        use crate::imds::Imdsv1;
        let hops = match f.put_hop_limit.as_deref() {
            Some("1") => "PUT response hop limit 1 (tokens do not reach containers)".to_owned(),
            Some(h) => format!(
                "PUT response hop limit {h} (a container past the block could get tokens; set it to 1 unless tasks need IMDS through a bridge)"
            ),
            None => "PUT response hop limit not measured (measured by prove: add --prove)".into(),
        };
        out.push(Line {
            mode: "metadata options",
            state: match v1 {
                Imdsv1::Open => "open",
                Imdsv1::NotProbed => "unknown",
                Imdsv1::Closed | Imdsv1::NoAnswer => "blocked",
            },
            detail: match v1 {
                Imdsv1::Open => {
                    format!("IMDSv1 answers without a token (http-tokens optional); {hops}")
                }
                Imdsv1::NotProbed => format!(
                    "IMDSv1 not probed (a tokenless request counts in MetadataNoToken; --probe-imdsv1 makes one); {hops}"
                ),
                Imdsv1::Closed | Imdsv1::NoAnswer => {
                    format!("IMDSv2 only (http-tokens required); {hops}")
                }
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awsvpc_key_is_read_as_the_agent_does() {
        assert!(awsvpc_blocked(
            "ECS_CLUSTER=a\nECS_AWSVPC_BLOCK_IMDS=true\n"
        ));
        assert!(awsvpc_blocked("ECS_AWSVPC_BLOCK_IMDS=TRUE"));
        assert!(!awsvpc_blocked(
            "ECS_AWSVPC_BLOCK_IMDS=true\nECS_AWSVPC_BLOCK_IMDS=false\n"
        ));
        assert!(!awsvpc_blocked("ECS_CLUSTER=a\n"));
    }

    #[test]
    fn one_line_per_mode() {
        let f = Facts {
            firewall_ok: Some(true),
            interfaces: vec!["docker+".into()],
            prove: Some(0),
            ecs_config: Some(("ECS_CLUSTER=a\n".into(), "/etc/ecs/ecs.config".into())),
            imdsv1: Some(crate::imds::Imdsv1::Closed),
            put_hop_limit: Some("1".into()),
        };
        let l = assess(&f);
        let modes: Vec<&str> = l.iter().map(|l| l.mode).collect();
        assert_eq!(modes, ["bridge", "awsvpc", "host", "metadata options"]);
        assert_eq!(l[0].state, "blocked");
        assert!(l[0].detail.contains("proven"));
        assert_eq!(l[1].state, "open");
        assert!(l[1].detail.contains("--block-awsvpc-imds"));
        assert_eq!(l[2].state, "not blockable");
        let l = assess(&Facts {
            prove: Some(6),
            ..f.clone()
        });
        assert_eq!(l[0].state, "open");
        let l = assess(&Facts {
            imdsv1: Some(crate::imds::Imdsv1::NotProbed),
            ..f.clone()
        });
        assert_eq!(l[3].state, "unknown");
        assert!(l[3].detail.contains("IMDSv1 not probed"), "{}", l[3].detail);
    }
}

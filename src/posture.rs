//! The IMDS posture of the instance, one line per ECS network mode, in the report of `run`:
//! what keeps tasks of each mode away from instance metadata, as far as this run knows. Pure:
//! `app` gathers the facts (the steps' outcomes, the written ecs.config).

use serde::Serialize;

/// The key the ECS agent reads to block IMDS for tasks in awsvpc mode.
pub(crate) const AWSVPC_KEY: &str = "ECS_AWSVPC_BLOCK_IMDS";

/// What prove concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proof {
    /// Every bridge's probe was blocked, with its control and our rule's counter.
    Proven,
    /// A bridge reached IMDS.
    Leak,
    /// Anything else (not proven, the host cut off from IMDS, an error).
    Unproven,
}

/// The PUT response hop limit, as prove measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HopLimit {
    One,
    TwoOrMore,
}

/// What a run knows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// The firewall step: None when skipped, Some(true) when it succeeded.
    pub(crate) firewall_ok: Option<bool>,
    pub(crate) interfaces: Vec<String>,
    /// None when prove did not run.
    pub(crate) prove: Option<Proof>,
    /// The written ecs.config's text, and its path; None when there is none.
    pub(crate) ecs_config: Option<(String, std::path::PathBuf)>,
    /// From the check step: whether IMDSv1 (no token) still answers, if it was probed.
    pub(crate) imdsv1: Option<crate::imds::Imdsv1>,
    /// From prove; None when not measured.
    pub(crate) put_hop_limit: Option<HopLimit>,
}

/// The ways tasks reach the network, and the instance's metadata options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) enum Mode {
    #[serde(rename = "bridge")]
    Bridge,
    #[serde(rename = "awsvpc")]
    Awsvpc,
    #[serde(rename = "host")]
    Host,
    #[serde(rename = "metadata options")]
    MetadataOptions,
}

/// Whether tasks of a mode reach IMDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) enum State {
    #[serde(rename = "blocked")]
    Blocked,
    #[serde(rename = "open")]
    Open,
    #[serde(rename = "unknown")]
    Unknown,
    /// No rule of ours can block it.
    #[serde(rename = "not blockable")]
    NotBlockable,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Bridge => "bridge",
            Mode::Awsvpc => "awsvpc",
            Mode::Host => "host",
            Mode::MetadataOptions => "metadata options",
        }
    }
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Blocked => "blocked",
            State::Open => "open",
            State::Unknown => "unknown",
            State::NotBlockable => "not blockable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Line {
    pub(crate) mode: Mode,
    pub(crate) state: State,
    pub(crate) detail: String,
}

/// Whether an ecs.config text sets `ECS_AWSVPC_BLOCK_IMDS=true` (the last value wins, as the
/// agent reads it).
pub(crate) fn awsvpc_blocked(ecs_config: &str) -> bool {
    ecs_config
        .lines()
        .rev()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == AWSVPC_KEY)
        .is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("true"))
}

/// One line per network mode, and one for the metadata options the run measured.
pub(crate) fn assess(f: &Facts) -> Vec<Line> {
    let host = Line {
        mode: Mode::Host,
        state: State::NotBlockable,
        detail: "tasks in host mode share the host's network: no FORWARD rule can block them; keep tasks that must not reach IMDS out of host mode".into(),
    };
    let mut out = vec![bridge(f), awsvpc(f), host];
    out.extend(metadata_options(f));
    out
}

fn bridge(f: &Facts) -> Line {
    let patterns = f.interfaces.join(",");
    match (f.firewall_ok, f.prove) {
        (None, _) => Line {
            mode: Mode::Bridge,
            state: State::Unknown,
            detail: "the firewall step was skipped in this run".into(),
        },
        (Some(false), _) => Line {
            mode: Mode::Bridge,
            state: State::Open,
            detail: "the firewall step failed: containers on the bridges may reach IMDS".into(),
        },
        (Some(true), Some(Proof::Proven)) => Line {
            mode: Mode::Bridge,
            state: State::Blocked,
            detail: format!(
                "DROP rules for {patterns}, proven by prove (a control through the bridge answered, IMDS did not, our rule's counter rose)"
            ),
        },
        (Some(true), Some(Proof::Leak)) => Line {
            mode: Mode::Bridge,
            state: State::Open,
            detail: format!("prove reached IMDS from a bridge despite the rules for {patterns}"),
        },
        (Some(true), Some(Proof::Unproven)) => Line {
            mode: Mode::Bridge,
            state: State::Blocked,
            detail: format!(
                "DROP rules for {patterns}; prove could not prove it (see the prove step)"
            ),
        },
        (Some(true), None) => Line {
            mode: Mode::Bridge,
            state: State::Blocked,
            detail: format!("DROP rules for {patterns} (not proven in this run: add --prove)"),
        },
    }
}

fn awsvpc(f: &Facts) -> Line {
    match &f.ecs_config {
        Some((text, path)) if awsvpc_blocked(text) => Line {
            mode: Mode::Awsvpc,
            state: State::Blocked,
            detail: format!(
                "{AWSVPC_KEY}=true in {}: the ECS agent blocks IMDS for awsvpc tasks",
                path.display()
            ),
        },
        Some((_, path)) => Line {
            mode: Mode::Awsvpc,
            state: State::Open,
            detail: format!(
                "{AWSVPC_KEY} is not true in {}: awsvpc tasks reach IMDS through their own ENI; pass --block-awsvpc-imds (or set the key in the S3 object)",
                path.display()
            ),
        },
        None => Line {
            mode: Mode::Awsvpc,
            state: State::Unknown,
            detail: "no ecs.config was written or read in this run".into(),
        },
    }
}

/// The instance's metadata options, when the check ran.
fn metadata_options(f: &Facts) -> Option<Line> {
    use crate::imds::Imdsv1;
    let v1 = f.imdsv1?;
    let hops = match f.put_hop_limit {
        Some(HopLimit::One) => "PUT response hop limit 1 (tokens do not reach containers)",
        Some(HopLimit::TwoOrMore) => {
            "PUT response hop limit 2 or more (a container past the block could get tokens; set it to 1 unless tasks need IMDS through a bridge)"
        }
        None => "PUT response hop limit not measured (measured by prove: add --prove)",
    };
    Some(Line {
        mode: Mode::MetadataOptions,
        state: match v1 {
            Imdsv1::Open => State::Open,
            Imdsv1::NotProbed => State::Unknown,
            Imdsv1::Closed | Imdsv1::NoAnswer => State::Blocked,
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
    })
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
            prove: Some(Proof::Proven),
            ecs_config: Some(("ECS_CLUSTER=a\n".into(), "/etc/ecs/ecs.config".into())),
            imdsv1: Some(crate::imds::Imdsv1::Closed),
            put_hop_limit: Some(HopLimit::One),
        };
        let l = assess(&f);
        let modes: Vec<&str> = l.iter().map(|l| l.mode.name()).collect();
        assert_eq!(modes, ["bridge", "awsvpc", "host", "metadata options"]);
        assert_eq!(l[0].state, State::Blocked);
        assert!(l[0].detail.contains("proven"));
        assert_eq!(l[1].state, State::Open);
        assert!(l[1].detail.contains("--block-awsvpc-imds"));
        assert_eq!(l[2].state, State::NotBlockable);
        let l = assess(&Facts {
            prove: Some(Proof::Leak),
            ..f.clone()
        });
        assert_eq!(l[0].state, State::Open);
        let l = assess(&Facts {
            imdsv1: Some(crate::imds::Imdsv1::NotProbed),
            ..f.clone()
        });
        assert_eq!(l[3].state, State::Unknown);
        assert!(l[3].detail.contains("IMDSv1 not probed"), "{}", l[3].detail);
    }
}

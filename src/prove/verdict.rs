//! What the probes showed, as the report's details, and the step's conclusion from them (pure).

use super::probe::Probe;
use crate::firewall::rules::Family;
use serde::Serialize;

/// What a probe of one address family through one bridge showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// IMDS did not answer, the control did, and our DROP rule's counter rose.
    Blocked,
    /// IMDS answered: a leak.
    Reachable,
    /// Neither: see the reason.
    NotProven,
}

/// The verdict from what a probe saw.
pub(crate) fn verdict(imds_answered: bool, control_ok: bool, counter_rise: u64) -> Verdict {
    if imds_answered {
        Verdict::Reachable
    } else if control_ok && counter_rise > 0 {
        Verdict::Blocked
    } else {
        Verdict::NotProven
    }
}

/// One bridge's probes: IPv4 always (a bridge without an IPv4 address is "not proven"), IPv6
/// when `--ipv6` asks for it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct BridgeProbes {
    pub(crate) bridge: String,
    pub(crate) ipv4: Probe,
    pub(crate) ipv6: Option<Probe>,
}

impl BridgeProbes {
    pub(crate) fn each(&self) -> impl Iterator<Item = (Family, &Probe)> {
        std::iter::once((Family::V4, &self.ipv4)).chain(self.ipv6.iter().map(|p| (Family::V6, p)))
    }
}

/// Per family, the worst verdict over the bridges; none where no bridge was probed in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct FromBridge {
    pub(crate) ipv4: Option<Verdict>,
    pub(crate) ipv6: Option<Verdict>,
}

impl FromBridge {
    pub(crate) fn worst(bridges: &[BridgeProbes]) -> FromBridge {
        let worst = |family: Family| {
            let vs: Vec<Verdict> = bridges
                .iter()
                .flat_map(BridgeProbes::each)
                .filter(|(f, _)| *f == family)
                .map(|(_, p)| p.verdict)
                .collect();
            [Verdict::Reachable, Verdict::NotProven, Verdict::Blocked]
                .into_iter()
                .find(|v| vs.contains(v))
        };
        FromBridge {
            ipv4: worst(Family::V4),
            ipv6: worst(Family::V6),
        }
    }
}

/// Whether IMDS answered the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub(crate) enum FromHost {
    Reachable,
    Unreachable,
}

/// The instance's PUT response hop limit as the host measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) enum HopLimit {
    /// The token's answer dies at the first forward: containers cannot get tokens.
    #[serde(rename = "1")]
    One,
    #[serde(rename = "2 or more")]
    TwoOrMore,
}

/// prove's part of the JSON report. With no bridge to probe, only `bridges` (empty).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Details {
    pub(crate) bridges: Vec<BridgeProbes>,
    #[serde(flatten)]
    pub(crate) seen: Option<Seen>,
}

impl Details {
    /// Nothing probed: no bridge, or stopped before any result.
    pub(crate) fn none() -> Details {
        Details {
            bridges: vec![],
            seen: None,
        }
    }
}

/// What the probes and the host's own requests showed.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Seen {
    pub(crate) from_bridge: FromBridge,
    pub(crate) from_host: FromHost,
    /// Null when not measured (the summary says why).
    pub(crate) put_hop_limit: Option<HopLimit>,
}

/// What the bridges' probes conclude, before the host's side is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BridgeConclusion<'a> {
    /// Every probe blocked.
    Blocked,
    /// These bridges reach IMDS (each named once, in probe order): exit 6.
    Leak(Vec<&'a str>),
    /// The first probe that proved nothing: exit 8.
    NotProven {
        bridge: &'a str,
        family: Family,
        reason: &'a str,
    },
}

/// A leak outranks "not proven", which outranks "blocked".
pub(crate) fn conclude(bridges: &[BridgeProbes]) -> BridgeConclusion<'_> {
    let mut leaked: Vec<&str> = bridges
        .iter()
        .filter(|b| b.each().any(|(_, p)| p.verdict == Verdict::Reachable))
        .map(|b| b.bridge.as_str())
        .collect();
    leaked.dedup();
    if !leaked.is_empty() {
        return BridgeConclusion::Leak(leaked);
    }
    bridges
        .iter()
        .flat_map(|b| b.each().map(move |(f, p)| (b, f, p)))
        .find(|(_, _, p)| p.verdict == Verdict::NotProven)
        .map_or(BridgeConclusion::Blocked, |(b, family, p)| {
            BridgeConclusion::NotProven {
                bridge: &b.bridge,
                family,
                reason: p.reason.as_deref().unwrap_or(""),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn a_verdict_needs_the_control_and_the_counter() {
        assert_eq!(verdict(true, true, 0), Verdict::Reachable);
        assert_eq!(verdict(true, false, 3), Verdict::Reachable);
        assert_eq!(verdict(false, true, 1), Verdict::Blocked);
        // No answer proves nothing without the control, or without our rule's counter.
        assert_eq!(verdict(false, false, 2), Verdict::NotProven);
        assert_eq!(verdict(false, true, 0), Verdict::NotProven);
    }

    fn probe(v: Verdict) -> Probe {
        Probe {
            verdict: v,
            from: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9))),
            control: Some("10.0.0.1:4000".parse().unwrap()),
            control_ok: true,
            imds_answered: v == Verdict::Reachable,
            counter_rise: Some(u64::from(v == Verdict::Blocked)),
            reason: (v == Verdict::NotProven).then(|| "why".to_owned()),
        }
    }

    fn bridge(name: &str, v4: Verdict, v6: Option<Verdict>) -> BridgeProbes {
        BridgeProbes {
            bridge: name.into(),
            ipv4: probe(v4),
            ipv6: v6.map(probe),
        }
    }

    #[test]
    fn a_leak_outranks_not_proven_which_outranks_blocked() {
        use Verdict::*;
        let bs = [
            bridge("br-a", Blocked, Some(NotProven)),
            bridge("br-b", Reachable, Some(Reachable)),
            bridge("docker0", Blocked, Some(Blocked)),
        ];
        assert_eq!(conclude(&bs), BridgeConclusion::Leak(vec!["br-b"]));
        assert_eq!(
            FromBridge::worst(&bs),
            FromBridge {
                ipv4: Some(Reachable),
                ipv6: Some(Reachable)
            }
        );
        assert_eq!(
            conclude(&bs[..1]),
            BridgeConclusion::NotProven {
                bridge: "br-a",
                family: Family::V6,
                reason: "why"
            }
        );
        assert_eq!(conclude(&bs[2..]), BridgeConclusion::Blocked);
        let v4_only = [bridge("docker0", Blocked, None)];
        assert_eq!(
            FromBridge::worst(&v4_only),
            FromBridge {
                ipv4: Some(Blocked),
                ipv6: None
            }
        );
    }

    /// The JSON users read: keys and values as before the details were typed.
    #[test]
    fn details_serialize_as_the_report_shows_them() {
        let mut not_set_up = Probe::not_proven(None, "no free address".into());
        not_set_up.counter_rise = None;
        let d = Details {
            bridges: vec![BridgeProbes {
                bridge: "docker0".into(),
                ipv4: probe(Verdict::Blocked),
                ipv6: Some(not_set_up),
            }],
            seen: Some(Seen {
                from_bridge: FromBridge {
                    ipv4: Some(Verdict::Blocked),
                    ipv6: Some(Verdict::NotProven),
                },
                from_host: FromHost::Reachable,
                put_hop_limit: Some(HopLimit::TwoOrMore),
            }),
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({
                "bridges": [{
                    "bridge": "docker0",
                    "ipv4": {"verdict": "blocked", "from": "10.0.0.9", "control": "10.0.0.1:4000",
                             "control_ok": true, "imds_answered": false, "counter_rise": 1},
                    "ipv6": {"verdict": "not_proven", "from": "-", "control": null,
                             "control_ok": false, "imds_answered": false, "counter_rise": null,
                             "reason": "no free address"},
                }],
                "from_bridge": {"ipv4": "blocked", "ipv6": "not_proven"},
                "from_host": "reachable",
                "put_hop_limit": "2 or more",
            })
        );
        let one = Seen {
            put_hop_limit: Some(HopLimit::One),
            from_host: FromHost::Unreachable,
            ..d.seen.clone().unwrap()
        };
        let v = serde_json::to_value(&one).unwrap();
        assert_eq!(v["put_hop_limit"], "1");
        assert_eq!(v["from_host"], "unreachable");
        assert_eq!(
            serde_json::to_value(Details::none()).unwrap(),
            serde_json::json!({"bridges": []})
        );
    }
}

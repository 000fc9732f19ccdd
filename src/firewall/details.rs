//! What the firewall step reports: the typed details of the JSON report, and the summary lines
//! and warnings a person reads, both from what [`super::apply`] and [`super::persist`] did.

use super::apply::{Applied, Method};
use super::iptables::Backend;
use super::persist::Persistence;
use super::plan::{Jump, Mode, RuleState};
use super::rules::{DOCKER_USER, FORWARD, Family, Placement, RuleSet};
use crate::fsutil::WriteOutcome;
use serde::Serialize;
use std::path::PathBuf;

/// The firewall step's details in the report.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Details {
    /// Null only in a drift check whose binary's name does not tell (it runs no `-V`).
    pub(crate) backend: Option<Backend>,
    /// The IPv4 binary.
    pub(crate) iptables: PathBuf,
    pub(crate) chain: Placement,
    pub(crate) interfaces: Vec<String>,
    pub(crate) ipv6: Ipv6,
    pub(crate) persist_mode: super::PersistMode,
    pub(crate) families: Vec<FamilyDetails>,
    pub(crate) warnings: Vec<String>,
}

/// Whether the IPv6 rule is handled, and why.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Ipv6 {
    pub(crate) enabled: bool,
    pub(crate) reason: Ipv6Reason,
}

/// Why IPv6 is handled or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) enum Ipv6Reason {
    #[serde(rename = "--ipv6 off")]
    Off,
    #[serde(rename = "--ipv6 on")]
    On,
    #[serde(rename = "auto: the host has IPv6")]
    AutoHostHasIpv6,
    #[serde(rename = "auto: the host has no IPv6")]
    AutoHostHasNoIpv6,
    #[serde(rename = "auto: ip6tables missing")]
    AutoIp6tablesMissing,
}

/// One address family: the kernel's rules and the rules file.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct FamilyDetails {
    pub(crate) family: Family,
    pub(crate) binary: PathBuf,
    pub(crate) chain: &'static str,
    pub(crate) chain_created: bool,
    pub(crate) rules: Vec<RuleDetails>,
    pub(crate) jump: Option<Jump>,
    pub(crate) duplicate_jumps_removed: usize,
    /// Rules of others that sat above ours (they stay, below ours).
    pub(crate) moved_above: Vec<String>,
    /// Lines of ours (or the seed rule) that went.
    pub(crate) removed: Vec<String>,
    /// How the changes went in; null when nothing changed.
    #[cfg_attr(test, schemars(with = "Option<String>"))]
    pub(crate) method: Option<Method>,
    pub(crate) persist: PersistDetails,
}

/// One of our rules.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct RuleDetails {
    pub(crate) interface: String,
    pub(crate) destination: &'static str,
    pub(crate) state: RuleState,
}

/// What became of the rules file.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum PersistDetails {
    /// Nothing was written, for `reason`.
    Skipped {
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<PathBuf>,
        reason: String,
    },
    Written(FileDetails),
    Unchanged(FileDetails),
}

/// The rules file that was merged or saved.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct FileDetails {
    /// The file written (a link's target when `link` is set).
    pub(crate) file: PathBuf,
    /// The link named, when the file written is its target.
    pub(crate) link: Option<PathBuf>,
    /// The backup of a replaced iptables-services sample.
    pub(crate) backup: Option<PathBuf>,
    /// What the merge changed (empty when nothing was written).
    pub(crate) notes: Vec<String>,
    /// The enabled unit that restores the file at boot.
    pub(crate) loaded_at_boot_by: Option<&'static str>,
}

/// What a person reads: summary lines and warnings.
#[derive(Debug, Default)]
pub(crate) struct Said {
    pub(crate) summary: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

impl Said {
    pub(crate) fn extend(&mut self, other: Said) {
        self.summary.extend(other.summary);
        self.warnings.extend(other.warnings);
    }
}

/// The details of one family's applied plan and its rules file.
pub(crate) fn family(
    set: &RuleSet,
    binary: PathBuf,
    a: &Applied,
    persist: &Persistence,
) -> FamilyDetails {
    let p = &a.plan;
    FamilyDetails {
        family: set.family,
        binary,
        chain: set.chain(),
        chain_created: p.chain_created,
        rules: p
            .rules
            .iter()
            .map(|(iface, state)| RuleDetails {
                interface: iface.clone(),
                destination: set.family.imds(),
                state: *state,
            })
            .collect(),
        jump: p.jump,
        duplicate_jumps_removed: p.duplicate_jumps_removed,
        moved_above: p.moved_above.clone(),
        removed: p.removed.iter().map(|(l, _)| l.clone()).collect(),
        method: a.method,
        persist: persist_details(persist),
    }
}

fn persist_details(p: &Persistence) -> PersistDetails {
    match p {
        Persistence::Off(why) => PersistDetails::Skipped {
            file: None,
            reason: why.to_string(),
        },
        Persistence::NoFile(e) => PersistDetails::Skipped {
            file: None,
            reason: format!("no rules file known for {}", e.distro),
        },
        Persistence::Refused { path, why } => PersistDetails::Skipped {
            file: Some(path.clone()),
            reason: why.to_string(),
        },
        Persistence::Done {
            persisted,
            link,
            loader,
        } => {
            let f = FileDetails {
                file: persisted.file.clone(),
                link: link.clone(),
                backup: persisted.backup.clone(),
                notes: persisted.notes.clone(),
                loaded_at_boot_by: loader.unit(),
            };
            match persisted.outcome {
                WriteOutcome::Written => PersistDetails::Written(f),
                WriteOutcome::Unchanged => PersistDetails::Unchanged(f),
            }
        }
    }
}

/// The summary lines and warnings of one family's applied plan.
pub(crate) fn said_applied(set: &RuleSet, mode: Mode, a: &Applied, bin: &str) -> Said {
    let fam = set.family.name();
    let p = &a.plan;
    let mut s = Said::default();
    if a.legacy_too {
        s.warnings.push(format!(
            "{fam}: iptables-legacy tables exist beside the nft ones (a dockerd or another tool on iptables-legacy?): the rule is in the nft backend of {bin}, where `{bin} -S` shows it and `iptables-legacy -S` does not; the kernel applies both, so the block holds. Pass --iptables with the legacy binary to keep everything in one backend"
        ));
    }
    if p.chain_created {
        s.summary
            .push(format!("{fam}: created chain {DOCKER_USER}"));
    }
    for (line, why) in &p.removed {
        s.summary.push(format!("{fam}: removed {line} ({why})"));
    }
    match mode {
        Mode::Assert => s.summary.extend(asserted(set, a)),
        Mode::Remove => {
            if p.jump == Some(Jump::Removed) {
                s.summary.push(format!(
                    "{fam}: removed -j {DOCKER_USER} and the empty chain {DOCKER_USER} (no Docker chains here)"
                ));
            }
            if !a.changed() {
                s.summary
                    .push(format!("{fam}: nothing of ours in the kernel's tables"));
            }
        }
    }
    s
}

/// The summary lines of an asserted block: each rule's state, the jump.
fn asserted(set: &RuleSet, a: &Applied) -> Vec<String> {
    let fam = set.family.name();
    let chain = set.chain();
    let p = &a.plan;
    let mut out = vec![];
    for (iface, state) in &p.rules {
        let line = set.save_line(iface);
        out.push(match state {
            RuleState::Added => format!("{fam}: added {line} at the top of {chain}"),
            RuleState::Moved if p.moved_above.is_empty() => {
                format!("{fam}: moved {line} back to the top of {chain}")
            }
            RuleState::Moved => format!(
                "{fam}: moved {line} back to the top of {chain}, above {} rule(s) of others that let packets through before it: {}",
                p.moved_above.len(),
                p.moved_above.join("; ")
            ),
            RuleState::Present | RuleState::Removed => format!("{fam}: {line} already present"),
        });
    }
    if p.jump == Some(Jump::Placed) {
        out.push(format!("{fam}: placed -j {DOCKER_USER} first in {FORWARD}"));
    }
    if p.duplicate_jumps_removed > 0 {
        out.push(format!(
            "{fam}: removed {} later -j {DOCKER_USER} from {FORWARD}",
            p.duplicate_jumps_removed
        ));
    }
    out
}

/// The summary lines and warnings of one family's rules file.
pub(crate) fn said_persisted(family: Family, p: &Persistence) -> Said {
    let fam = family.name();
    let mut s = Said::default();
    match p {
        Persistence::Off(_) => {}
        Persistence::NoFile(e) => s.warnings.push(e.to_string()),
        Persistence::Refused { why, .. } => s.warnings.push(format!(
            "{why}: the {fam} rule is not persisted (ecs-bootstrap re-asserts it at every boot); replace the link with a regular file, or pass --persist-file"
        )),
        Persistence::Done {
            persisted,
            link,
            loader,
        } => {
            let file = persisted.file.display();
            let outcome = match persisted.outcome {
                WriteOutcome::Written => "written",
                WriteOutcome::Unchanged => "unchanged",
            };
            s.summary
                .push(format!("{fam}: persisted to {file} ({outcome})"));
            for n in &persisted.notes {
                s.summary.push(format!("{fam}: {file}: {n}"));
            }
            s.warnings.extend(persisted.warnings.iter().cloned());
            // The loader's warning names the path given (the link, when there is one).
            if let Some(w) = loader.warning(link.as_ref().unwrap_or(&persisted.file)) {
                s.warnings.push(w);
            }
        }
    }
    s
}

/// What a drift check found and repaired, one line each: the block was asserted at boot, so
/// any change now means someone or something removed or bypassed it since.
pub(crate) fn drift(set: &RuleSet, a: &Applied, persisted: &Persistence) -> Vec<String> {
    let fam = set.family.name();
    let chain = set.chain();
    let p = &a.plan;
    let mut out = vec![];
    if p.chain_created {
        out.push(format!(
            "drift: {fam}: chain {DOCKER_USER} was missing; created it"
        ));
    }
    for (iface, state) in &p.rules {
        match state {
            RuleState::Added => out.push(format!(
                "drift: {fam}: DROP rule for {iface} missing from {chain}; repaired"
            )),
            RuleState::Moved if !p.moved_above.is_empty() => out.push(format!(
                "drift: {fam}: DROP rule for {iface} was below {} rule(s) that let packets through first ({}); moved back to the top of {chain}",
                p.moved_above.len(),
                p.moved_above.join("; ")
            )),
            RuleState::Moved => out.push(format!(
                "drift: {fam}: DROP rule for {iface} was not where it belongs; moved back to the top of {chain}"
            )),
            RuleState::Present | RuleState::Removed => {}
        }
    }
    for (line, why) in &p.removed {
        out.push(format!("drift: {fam}: found {line}; removed it ({why})"));
    }
    if p.jump == Some(Jump::Placed) {
        out.push(format!(
            "drift: {fam}: -j {DOCKER_USER} was not first in {FORWARD}; placed it first"
        ));
    }
    if p.duplicate_jumps_removed > 0 {
        out.push(format!(
            "drift: {fam}: {} more -j {DOCKER_USER} in {FORWARD}; removed them",
            p.duplicate_jumps_removed
        ));
    }
    // A merged file that had to change lacked our lines (its notes say how); a full save
    // follows the kernel's repair, already reported.
    if let Persistence::Done { persisted, .. } = persisted
        && persisted.outcome == WriteOutcome::Written
        && !persisted.notes.is_empty()
    {
        out.push(format!(
            "drift: {fam}: the rules file {} did not hold the block ({}); rewrote it",
            persisted.file.display(),
            persisted.notes.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The report is a public contract: these are the values users read (and alarm on).
    #[test]
    fn the_json_users_read() {
        let skipped = |file: Option<&str>, reason: &str| PersistDetails::Skipped {
            file: file.map(PathBuf::from),
            reason: reason.into(),
        };
        assert_eq!(
            serde_json::to_value(skipped(None, "--persist none")).unwrap(),
            json!({"outcome": "skipped", "reason": "--persist none"})
        );
        assert_eq!(
            serde_json::to_value(skipped(Some("/etc/iptables/rules.v4"), "why")).unwrap(),
            json!({"file": "/etc/iptables/rules.v4", "outcome": "skipped", "reason": "why"})
        );
        let file = FileDetails {
            file: "/etc/sysconfig/iptables".into(),
            link: None,
            backup: None,
            notes: vec!["added x".into()],
            loaded_at_boot_by: Some("iptables.service"),
        };
        assert_eq!(
            serde_json::to_value(PersistDetails::Written(file.clone())).unwrap(),
            json!({"file": "/etc/sysconfig/iptables", "link": null, "outcome": "written",
                   "backup": null, "notes": ["added x"], "loaded_at_boot_by": "iptables.service"})
        );
        assert_eq!(
            serde_json::to_value(PersistDetails::Unchanged(file)).unwrap()["outcome"],
            "unchanged"
        );
        fn v<T: Serialize>(x: &T) -> serde_json::Value {
            serde_json::to_value(x).unwrap()
        }
        assert_eq!(
            v(&Method::Transaction { attempt: 2 }),
            "transaction (attempt 2)"
        );
        assert_eq!(v(&Method::OneByOne), "one command at a time");
        assert_eq!(v(&Jump::Placed), "placed");
        assert_eq!(v(&RuleState::Added), "added");
        assert_eq!(
            v(&Ipv6Reason::AutoIp6tablesMissing),
            "auto: ip6tables missing"
        );
        assert_eq!(v(&Ipv6Reason::Off), "--ipv6 off");
        assert_eq!(v(&super::super::PersistMode::FullSave), "full-save");
        assert_eq!(v(&Placement::DockerUser), "DOCKER-USER");
        assert_eq!(v(&Family::V6), "v6");
        assert_eq!(v(&Backend::Nft), "nft");
    }
}

//! `ecs-bootstrap status`: whether this instance is protected now, for an operator on the one
//! instance that misbehaves. Read-only: it lists the kernel's rules and reads files, and
//! changes nothing. The verdict is the block as a property of the kernel's state now; the last
//! boot's report, the written ecs.config and the rules files are context. Pure: `app` gathers
//! the facts.

use crate::error::{Exit, Step};
use crate::firewall::{self, rules::Family};
use crate::report::{self, Outcome};
use crate::sys::{CommandRunner, Deadline};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::SystemTime;

/// What `status` looks at.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The block as `block-imds` with the same settings asserts it.
    pub(crate) firewall: firewall::Options,
    /// The written ecs.config.
    pub(crate) dest: PathBuf,
    /// The last boot's report.
    pub(crate) boot_report: PathBuf,
}

/// Gathers the facts, changing nothing: one `iptables -S` per family (through `runner`,
/// bounded by `deadline`) and three files read.
pub(crate) fn gather(
    req: &Request,
    runner: &dyn CommandRunner,
    deadline: &Deadline,
    now: SystemTime,
) -> Status {
    let block = match firewall::kernel_state(&req.firewall, runner, deadline) {
        Ok(families) => Block {
            families: families
                .into_iter()
                .map(|k| FamilyBlock {
                    family: k.family,
                    holds: k.holds(),
                    problems: k.problems,
                })
                .collect(),
            error: None,
        },
        Err(e) => Block {
            families: vec![],
            error: Some(format!("{e:#}")),
        },
    };
    let rules_files = firewall::rules_files(&req.firewall)
        .into_iter()
        .map(|r| RulesFile {
            family: r.family,
            path: r.path,
            has_our_rule: r.has_our_rule,
            loaded_at_boot_by: r.loader,
            warning: r.warning,
        })
        .collect();
    let last_boot = match std::fs::read_to_string(&req.boot_report) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            LastBoot::from_text(req.boot_report.clone(), None, 0)
        }
        Err(e) => LastBoot::Unreadable {
            path: req.boot_report.clone(),
            error: e.to_string(),
        },
        Ok(text) => {
            let age_s = std::fs::metadata(&req.boot_report)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .map_or(0, |d| d.as_secs());
            LastBoot::from_text(req.boot_report.clone(), Some(&text), age_s)
        }
    };
    let ecs_config = match crate::config::status::written(&req.dest, now) {
        Ok(Some(w)) => EcsConfig::Written(w),
        Ok(None) => EcsConfig::Missing {
            path: req.dest.clone(),
        },
        Err(e) => EcsConfig::Unreadable {
            path: req.dest.clone(),
            error: e.to_string(),
        },
    };
    Status::new(block, rules_files, last_boot, ecs_config)
}

/// The version of the status document's schema.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// What `status` prints.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Status {
    pub(crate) schema_version: u32,
    pub(crate) version: &'static str,
    /// The block holds now, in every family it applies to: exit code 0.
    pub(crate) protected: bool,
    pub(crate) exit_code: u8,
    /// The kernel's rules now.
    pub(crate) block: Block,
    /// The rules files that restore the block at boot, and who loads them.
    pub(crate) rules_files: Vec<RulesFile>,
    pub(crate) last_boot: LastBoot,
    pub(crate) ecs_config: EcsConfig,
}

/// The block in the kernel, per address family.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Block {
    pub(crate) families: Vec<FamilyBlock>,
    /// Why the rules could not be listed (then the block is not known to hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// One family's rules.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct FamilyBlock {
    pub(crate) family: Family,
    pub(crate) holds: bool,
    /// What is wrong when it does not hold (a rule missing, one of another tool above ours).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) problems: Vec<String>,
}

/// A rules file and its loader.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct RulesFile {
    pub(crate) family: Family,
    /// None when nothing persists the family's rule (an unknown distribution, no file named).
    pub(crate) path: Option<PathBuf>,
    /// Whether the file holds our rule.
    pub(crate) has_our_rule: bool,
    /// The enabled unit that restores it at boot; None when none does or it cannot be told.
    pub(crate) loaded_at_boot_by: Option<&'static str>,
    /// What to fix, when something is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) warning: Option<String>,
}

/// The last boot's report (where the config unit writes it with `--report`).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum LastBoot {
    /// No report since the last boot (/run is emptied at every boot).
    Missing {
        path: PathBuf,
    },
    Unreadable {
        path: PathBuf,
        error: String,
    },
    Read {
        path: PathBuf,
        /// Seconds since the report was written.
        age_s: u64,
        command: report::Command,
        ok: bool,
        exit_code: u8,
        /// The steps that failed, with their errors.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        failed: Vec<FailedStep>,
    },
}

/// A failed step of the last boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct FailedStep {
    pub(crate) step: Step,
    pub(crate) error: Option<String>,
}

/// The parts of a boot report `status` reads back.
#[derive(Debug, Deserialize)]
struct BootReport {
    command: report::Command,
    ok: bool,
    exit_code: u8,
    steps: Vec<BootStep>,
}

#[derive(Debug, Deserialize)]
struct BootStep {
    step: Step,
    outcome: Outcome,
    error: Option<String>,
}

impl LastBoot {
    /// The last boot's report from its text (`None`: there is no file), `age_s` old.
    pub(crate) fn from_text(path: PathBuf, text: Option<&str>, age_s: u64) -> LastBoot {
        let Some(text) = text else {
            return LastBoot::Missing { path };
        };
        match serde_json::from_str::<BootReport>(text) {
            Ok(r) => LastBoot::Read {
                path,
                age_s,
                command: r.command,
                ok: r.ok,
                exit_code: r.exit_code,
                failed: r
                    .steps
                    .into_iter()
                    .filter(|s| s.outcome == Outcome::Failed)
                    .map(|s| FailedStep {
                        step: s.step,
                        error: s.error,
                    })
                    .collect(),
            },
            Err(e) => LastBoot::Unreadable {
                path,
                error: format!("not a boot report ({e})"),
            },
        }
    }
}

/// The written ecs.config.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum EcsConfig {
    Missing { path: PathBuf },
    Unreadable { path: PathBuf, error: String },
    Written(crate::config::status::Written),
}

impl Status {
    /// The verdict from the facts: protected when every family's block holds now.
    pub(crate) fn new(
        block: Block,
        rules_files: Vec<RulesFile>,
        last_boot: LastBoot,
        ecs_config: EcsConfig,
    ) -> Status {
        let protected = block.error.is_none()
            && !block.families.is_empty()
            && block.families.iter().all(|f| f.holds);
        Status {
            schema_version: SCHEMA_VERSION,
            version: env!("CARGO_PKG_VERSION"),
            protected,
            exit_code: if protected {
                Exit::Success.code()
            } else {
                Exit::Firewall.code()
            },
            block,
            rules_files,
            last_boot,
            ecs_config,
        }
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a status serializes")
    }

    pub(crate) fn to_text(&self) -> String {
        let mut s = String::new();
        let verdict = if self.protected {
            "yes: containers on the blocked bridges cannot reach instance metadata now"
        } else {
            "NO: the block does not hold now"
        };
        s.push_str(&format!("protected  {verdict}\n"));
        if let Some(e) = &self.block.error {
            s.push_str(&format!("           error: {e}\n"));
        }
        for f in &self.block.families {
            let state = if f.holds { "holds" } else { "BROKEN" };
            s.push_str(&format!("block      {}: {state}\n", f.family.name()));
            for p in &f.problems {
                s.push_str(&format!("           {p}\n"));
            }
        }
        for r in &self.rules_files {
            s.push_str(&rules_file_line(r));
        }
        s.push_str(&last_boot_lines(&self.last_boot));
        s.push_str(&ecs_config_line(&self.ecs_config));
        s.push_str(&format!("exit {}\n", self.exit_code));
        s
    }
}

fn rules_file_line(r: &RulesFile) -> String {
    let Some(path) = &r.path else {
        return format!(
            "rules      {}: no rules file persists the block{}\n",
            r.family.name(),
            r.warning
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        );
    };
    let ours = if r.has_our_rule {
        "holds our rule"
    } else {
        "WITHOUT our rule"
    };
    let loader = match r.loaded_at_boot_by {
        Some(u) => format!("loaded at boot by {u}"),
        None => "no loader known".into(),
    };
    let mut line = format!(
        "rules      {}: {} {ours}, {loader}\n",
        r.family.name(),
        path.display()
    );
    if let Some(w) = &r.warning {
        line.push_str(&format!("           {w}\n"));
    }
    line
}

fn last_boot_lines(b: &LastBoot) -> String {
    match b {
        LastBoot::Missing { path } => format!(
            "last boot  no report at {} since this boot (the config unit writes it)\n",
            path.display()
        ),
        LastBoot::Unreadable { path, error } => {
            format!("last boot  {}: {error}\n", path.display())
        }
        LastBoot::Read {
            path,
            age_s,
            command,
            ok,
            exit_code,
            failed,
        } => {
            let outcome = if *ok { "ok" } else { "FAILED" };
            let command = serde_json::to_value(command)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut s = format!(
                "last boot  {command} {outcome} (exit {exit_code}), {age_s} s ago ({})\n",
                path.display()
            );
            for f in failed {
                s.push_str(&format!(
                    "           {}: {}\n",
                    f.step.name(),
                    f.error.as_deref().unwrap_or("failed")
                ));
            }
            s
        }
    }
}

fn ecs_config_line(c: &EcsConfig) -> String {
    use crate::config::status::Record;
    match c {
        EcsConfig::Missing { path } => format!("ecs.config {} does not exist\n", path.display()),
        EcsConfig::Unreadable { path, error } => {
            format!("ecs.config {}: {error}\n", path.display())
        }
        EcsConfig::Written(w) => {
            let from = match (&w.source, &w.version_id) {
                (Some(s), Some(v)) => format!("from {s} version {v}"),
                (Some(s), None) => format!("from {s}"),
                _ => "not written by ecs-bootstrap".into(),
            };
            let record = match w.record {
                Record::Matches => "",
                Record::FileChanged => "; changed since ecs-bootstrap wrote it",
                Record::Missing => "",
                Record::Unreadable => "; its record is unreadable",
            };
            format!(
                "ecs.config {}, content {} s old, {from}{record}\n",
                w.path.display(),
                w.age_s
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(holds: &[bool]) -> Block {
        Block {
            families: holds
                .iter()
                .zip([Family::V4, Family::V6])
                .map(|(h, family)| FamilyBlock {
                    family,
                    holds: *h,
                    problems: if *h { vec![] } else { vec!["gone".into()] },
                })
                .collect(),
            error: None,
        }
    }

    fn status(b: Block) -> Status {
        Status::new(
            b,
            vec![],
            LastBoot::Missing { path: "/r".into() },
            EcsConfig::Missing { path: "/c".into() },
        )
    }

    #[test]
    fn protected_only_when_every_family_holds() {
        assert_eq!(status(block(&[true, true])).exit_code, 0);
        assert!(status(block(&[true])).protected);
        let s = status(block(&[true, false]));
        assert!(!s.protected);
        assert_eq!(s.exit_code, 4);
        assert!(
            s.to_text().contains("IPv6: BROKEN\n           gone"),
            "{}",
            s.to_text()
        );
        // Nothing known is nothing proven.
        assert!(!status(block(&[])).protected);
        let mut b = block(&[true]);
        b.error = Some("iptables: not found".into());
        assert!(!status(b).protected);
    }

    #[test]
    fn the_last_boot_is_read_back() {
        let path = PathBuf::from("/run/ecs-bootstrap/report.json");
        let r = report::Report::new(
            report::Command::Run,
            vec![report::StepReport::from_result(
                Step::Config,
                std::time::Duration::ZERO,
                Err(anyhow::anyhow!("AccessDenied")),
            )],
            std::time::Duration::ZERO,
        );
        match LastBoot::from_text(path.clone(), Some(&r.to_json()), 7) {
            LastBoot::Read {
                ok,
                exit_code,
                failed,
                age_s,
                ..
            } => {
                assert!(!ok);
                assert_eq!((exit_code, age_s), (3, 7));
                assert_eq!(failed[0].step, Step::Config);
                assert_eq!(failed[0].error.as_deref(), Some("AccessDenied"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            LastBoot::from_text(path.clone(), Some("old report"), 0),
            LastBoot::Unreadable { .. }
        ));
        assert!(matches!(
            LastBoot::from_text(path, None, 0),
            LastBoot::Missing { .. }
        ));
    }

    /// The committed schema of the status document is the types' schema (as for the report).
    #[test]
    fn the_committed_schema_is_the_status_types_schema() {
        crate::report::assert_committed_schema::<Status>("docs/status.schema.json", "status::");
    }
}

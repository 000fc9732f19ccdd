//! The boot report: each step's outcome, duration and what changed, as text or one JSON
//! document, printed at the end of every run and optionally written to a file.
//!
//! The JSON report is a public contract (fleet tooling parses it): its schema is generated from
//! these types into docs/report.schema.json, and it only ever gains fields. A change that
//! removes or renames a field, or changes a value's meaning, needs a new [`SCHEMA_VERSION`].

use crate::error::{Exit, Step};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The version of the JSON report's schema (`schema_version`).
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// The command a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Command {
    Run,
    FetchConfig,
    BlockImds,
    CheckImds,
    Prove,
}

/// A signal that ends a run early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) enum Signal {
    #[serde(rename = "SIGHUP")]
    Hup,
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGTERM")]
    Term,
    #[serde(rename = "SIGQUIT")]
    Quit,
}

impl Signal {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Signal::Hup => "SIGHUP",
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Quit => "SIGQUIT",
        }
    }

    /// The shell's convention: 128 + the signal's number.
    pub(crate) fn exit_code(self) -> u8 {
        128 + match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Term => 15,
            Signal::Quit => 3,
        }
    }
}

/// A step's structured details in the JSON report: each step's own `Details` type, as the
/// step's module defines it (untagged: the report's `step` says which it is).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(untagged)]
pub(crate) enum Details {
    Config(Box<crate::config::Details>),
    Firewall(Box<crate::firewall::Details>),
    Check(Box<crate::check::Details>),
    Prove(Box<crate::prove::Details>),
}

/// What a step that succeeded did.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepResult {
    /// Whether the step changed the system (a file written, a rule added).
    pub(crate) changed: bool,
    /// Human lines for the text report. Never secret values.
    pub(crate) summary: Vec<String>,
    /// Structured details for the JSON report. Never secret values.
    pub(crate) details: Option<Details>,
}

/// A step failure that still has something to report (for example what `prove` saw): its
/// summary and details go into the report next to the error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) summary: Vec<String>,
    pub(crate) details: Option<Details>,
    /// The exit code when it is not the step's own (prove's "not proven", 8).
    pub(crate) exit: Option<Exit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Ok,
    Failed,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct StepReport {
    pub(crate) step: Step,
    pub(crate) outcome: Outcome,
    pub(crate) duration_ms: u64,
    pub(crate) changed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) summary: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// The step failed because the host cannot reach instance metadata (exit code 7).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) imds_unreachable: bool,
    /// The exit code of a failure that is not the step's own (from [`Failure::exit`]).
    #[serde(skip)]
    pub(crate) exit: Option<Exit>,
}

impl StepReport {
    pub(crate) fn from_result(
        step: Step,
        elapsed: Duration,
        result: anyhow::Result<StepResult>,
    ) -> Self {
        let duration_ms = elapsed.as_millis() as u64;
        match result {
            Ok(r) => StepReport {
                step,
                outcome: Outcome::Ok,
                duration_ms,
                changed: r.changed,
                summary: r.summary,
                details: r.details,
                error: None,
                imds_unreachable: false,
                exit: None,
            },
            Err(e) => {
                let (summary, details, exit) = match e.downcast_ref::<Failure>() {
                    Some(f) => (f.summary.clone(), f.details.clone(), f.exit),
                    None => (vec![], None, None),
                };
                StepReport {
                    step,
                    outcome: Outcome::Failed,
                    duration_ms,
                    changed: false,
                    summary,
                    details,
                    error: Some(format!("{e:#}")),
                    imds_unreachable: false,
                    exit,
                }
            }
        }
    }

    pub(crate) fn skipped(step: Step) -> Self {
        StepReport {
            step,
            outcome: Outcome::Skipped,
            duration_ms: 0,
            changed: false,
            summary: vec![],
            details: None,
            error: None,
            imds_unreachable: false,
            exit: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Report {
    /// The version of this schema; it changes only when a field is removed or changes meaning.
    pub(crate) schema_version: u32,
    /// The version of ecs-bootstrap that wrote the report.
    pub(crate) version: &'static str,
    pub(crate) command: Command,
    pub(crate) ok: bool,
    /// The exit code of the process.
    pub(crate) exit_code: u8,
    pub(crate) duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) interrupted_by: Option<Signal>,
    pub(crate) steps: Vec<StepReport>,
    /// `run`: one line per ECS network mode on what keeps its tasks from IMDS.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) imds_posture: Vec<crate::posture::Line>,
    /// The `--report` file could not be written (this report is the printed one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) report_file_error: Option<ReportFileError>,
}

/// Why the `--report` file could not be written.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct ReportFileError {
    pub(crate) path: std::path::PathBuf,
    pub(crate) error: String,
}

impl Report {
    pub(crate) fn new(command: Command, steps: Vec<StepReport>, elapsed: Duration) -> Self {
        let exit = exit_for(&steps);
        Report {
            schema_version: SCHEMA_VERSION,
            version: env!("CARGO_PKG_VERSION"),
            command,
            ok: exit == Exit::Success,
            exit_code: exit.code(),
            duration_ms: elapsed.as_millis() as u64,
            interrupted_by: None,
            steps,
            imds_posture: vec![],
            report_file_error: None,
        }
    }

    /// The report of a run stopped by a signal, with the steps that had finished: exit code
    /// 128 + the signal number.
    pub(crate) fn interrupted(
        command: Command,
        signal: Signal,
        steps: Vec<StepReport>,
        elapsed: Duration,
    ) -> Self {
        Report {
            schema_version: SCHEMA_VERSION,
            version: env!("CARGO_PKG_VERSION"),
            command,
            ok: false,
            exit_code: signal.exit_code(),
            duration_ms: elapsed.as_millis() as u64,
            interrupted_by: Some(signal),
            steps,
            imds_posture: vec![],
            report_file_error: None,
        }
    }

    /// Records that the `--report` file could not be written: the run is not ok, and a run
    /// that was keeps exit code 1 (internal error).
    pub(crate) fn report_file_failed(&mut self, path: &std::path::Path, error: String) {
        self.ok = false;
        if self.exit_code == Exit::Success.code() {
            self.exit_code = Exit::Internal.code();
        }
        self.report_file_error = Some(ReportFileError {
            path: path.to_owned(),
            error,
        });
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    pub(crate) fn to_text(&self) -> String {
        let mut s = String::new();
        for st in &self.steps {
            let outcome = match st.outcome {
                Outcome::Ok if st.changed => "ok (changed)",
                Outcome::Ok => "ok (no change)",
                Outcome::Failed => "FAILED",
                Outcome::Skipped => "skipped",
            };
            s.push_str(&format!(
                "{:<9} {:<15} {:>6} ms\n",
                st.step.name(),
                outcome,
                st.duration_ms
            ));
            for line in &st.summary {
                s.push_str(&format!("          {line}\n"));
            }
            if let Some(e) = &st.error {
                s.push_str(&format!("          error: {e}\n"));
            }
        }
        if !self.imds_posture.is_empty() {
            s.push_str("imds posture:\n");
            for l in &self.imds_posture {
                s.push_str(&format!(
                    "          {}: {} ({})\n",
                    l.mode.name(),
                    l.state.name(),
                    l.detail
                ));
            }
        }
        if let Some(sig) = self.interrupted_by {
            s.push_str(&format!("interrupted by {}\n", sig.name()));
        }
        if let Some(f) = &self.report_file_error {
            s.push_str(&format!(
                "the report file {} was not written: {}\n",
                f.path.display(),
                f.error
            ));
        }
        s.push_str(&format!(
            "{} in {} ms (exit {})\n",
            if self.ok { "done" } else { "failed" },
            self.duration_ms,
            self.exit_code
        ));
        s
    }
}

/// The exit code names the first failed step, in step order; a step that failed on an
/// unreachable IMDS outranks that order (7).
pub(crate) fn exit_for(steps: &[StepReport]) -> Exit {
    if steps
        .iter()
        .any(|s| s.outcome == Outcome::Failed && s.imds_unreachable)
    {
        return Exit::ImdsUnreachable;
    }
    steps
        .iter()
        .filter(|s| s.outcome == Outcome::Failed)
        .min_by_key(|s| s.step)
        .map(|s| s.exit.unwrap_or(s.step.exit_code()))
        .unwrap_or(Exit::Success)
}

/// Asserts that the schema committed at `file` (relative to the repository) is `T`'s;
/// `UPDATE_SCHEMA=1` rewrites it (to review as a diff: fields may only be added).
#[cfg(test)]
pub(crate) fn assert_committed_schema<T: schemars::JsonSchema>(file: &str, tests: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let schema = schemars::schema_for!(T);
    let generated = format!("{}\n", serde_json::to_string_pretty(&schema).unwrap());
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{file} differs from its types' schema; regenerate it with \
         `UPDATE_SCHEMA=1 cargo test --locked --lib {tests}` and review the diff (fields may \
         only be added; anything else needs a new SCHEMA_VERSION)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed schema is the schema of these types: a change to the report shows up as a
    /// diff of docs/report.schema.json, to review against the rule that the report only gains
    /// fields.
    #[test]
    fn the_committed_schema_is_the_report_types_schema() {
        assert_committed_schema::<Report>("docs/report.schema.json", "report::");
    }

    /// Every key a report holds is in the schema, with the schema's version.
    #[test]
    fn a_report_matches_the_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(Report)).unwrap();
        let mut r = Report::new(
            Command::Run,
            vec![failed(Step::Check), StepReport::skipped(Step::Prove)],
            Duration::from_millis(5),
        );
        r.interrupted_by = Some(Signal::Hup);
        r.imds_posture = crate::posture::assess(&crate::posture::Facts::default());
        let v = serde_json::to_value(&r).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for k in v.as_object().unwrap().keys() {
            assert!(props.contains_key(k), "{k} is not in the schema");
        }
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert_eq!(v["interrupted_by"], "SIGHUP");
        assert_eq!(v["command"], "run");
        assert_eq!(v["imds_posture"][2]["state"], "not blockable");
    }

    fn failed(step: Step) -> StepReport {
        StepReport::from_result(step, Duration::ZERO, Err(anyhow::anyhow!("boom")))
    }

    #[test]
    fn exit_code_names_first_failed_step() {
        let ok = StepReport::from_result(Step::Config, Duration::ZERO, Ok(StepResult::default()));
        assert_eq!(exit_for(std::slice::from_ref(&ok)), Exit::Success);
        assert_eq!(
            exit_for(&[failed(Step::Check), ok.clone(), failed(Step::Firewall)]),
            Exit::Firewall
        );
        assert_eq!(
            exit_for(&[failed(Step::Config), failed(Step::Firewall)]),
            Exit::Config
        );
        assert_eq!(
            exit_for(&[StepReport::skipped(Step::Config)]),
            Exit::Success
        );
    }

    /// IMDS out of reach is the cause to fix, whichever step noticed it: code 7, also when an
    /// earlier step failed for it (the config step's region lookup) and the check did too.
    #[test]
    fn unreachable_metadata_has_its_own_code() {
        let mut config = failed(Step::Config);
        config.imds_unreachable = true;
        assert_eq!(
            exit_for(&[config.clone(), failed(Step::Check)]),
            Exit::ImdsUnreachable
        );
        assert_eq!(Exit::ImdsUnreachable.code(), 7);
        assert!(
            serde_json::to_string(&config)
                .unwrap()
                .contains("\"imds_unreachable\":true")
        );
        // Any other failure keeps the step's code, and the report leaves the field out.
        let check = failed(Step::Check);
        assert_eq!(exit_for(std::slice::from_ref(&check)), Exit::Check);
        assert!(
            !serde_json::to_string(&check)
                .unwrap()
                .contains("imds_unreachable")
        );
    }

    #[test]
    fn a_failure_keeps_its_details() {
        let e = anyhow::Error::new(Failure {
            message: "reachable".into(),
            summary: vec!["from docker0: reachable".into()],
            details: Some(Details::Prove(Box::new(crate::prove::Details {
                bridges: vec![],
                seen: None,
            }))),
            exit: None,
        })
        .context("prove");
        let r = StepReport::from_result(Step::Prove, Duration::ZERO, Err(e));
        assert_eq!(r.outcome, Outcome::Failed);
        let details = serde_json::to_value(&r.details).unwrap();
        assert_eq!(details, serde_json::json!({"bridges": []}));
        assert_eq!(r.summary, ["from docker0: reachable"]);
        assert_eq!(r.error.as_deref(), Some("prove: reachable"));
    }

    #[test]
    fn json_and_text_render() {
        let r = Report::new(
            Command::Run,
            vec![failed(Step::Check)],
            Duration::from_millis(5),
        );
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["exit_code"], 5);
        assert_eq!(v["steps"][0]["step"], "check");
        assert_eq!(v["steps"][0]["outcome"], "failed");
        assert!(r.to_text().contains("check     FAILED"));
    }
}

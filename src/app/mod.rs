//! Orchestration: read the settings, parse the command line, run the steps within the deadline,
//! print the report and pick the exit code. `main` only calls [`main_entry`].

mod cli;
mod envfile;
mod plan;
mod settings;

use crate::error::{Exit, Step};
use crate::imds::Imds;
use crate::report::{self, Report, Signal, StepReport, StepResult};
use crate::sys::{self, Root, SystemRunner};
use crate::{config, firewall, fsutil, imds, logging, posture, prove};
use clap::{CommandFactory as _, FromArgMatches as _};
use cli::{Cli, Command, GlobalArgs, LogFormat, OutputFormat};
use plan::Plan;
use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// Everything `main` does, returning the process exit code.
pub fn main_entry(args: Vec<OsString>) -> u8 {
    let root = Root::new(root_from_args(&args));
    let parsed = match Parsed::from_args(&args, &root) {
        Ok(p) => p,
        Err(code) => return code,
    };
    init_logging(&parsed.cli.global);
    if let Err(e) = parsed.judge_settings() {
        tracing::error!("{e}");
        return Exit::Usage.code();
    }
    if let Command::IamPolicy(a) = &parsed.cli.command {
        return match crate::iam_policy::render(&plan::policy_request(a)) {
            Ok(text) => {
                print_stdout(&format!("{text}\n"));
                Exit::Success.code()
            }
            Err(e) => {
                tracing::error!("{e}");
                Exit::Usage.code()
            }
        };
    }
    if let Command::Status(a) = &parsed.cli.command {
        return status(a, &root, &parsed.cli.global);
    }
    let Some(plan) = parsed.plan(&root, &args) else {
        return Exit::Usage.code();
    };
    let global = &parsed.cli.global;
    match run(&plan, global) {
        Ok(report) => emit(report, global),
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            Exit::Internal.code()
        }
    }
}

/// The command line, parsed with the environment and the settings file as defaults.
struct Parsed {
    cli: Cli,
    matches: clap::ArgMatches,
    prep: settings::Prepared,
    cmd: clap::Command,
}

impl Parsed {
    /// Err: the exit code after clap printed the help, the version or a usage error.
    fn from_args(args: &[OsString], root: &Root) -> Result<Parsed, u8> {
        let file = settings::SettingsFile::load(root);
        let prep = settings::prepare(Cli::command(), &file, |n| std::env::var(n).ok());
        let mut cmd = prep.cmd.clone();
        let parsed = cmd
            .try_get_matches_from_mut(args.to_vec())
            .and_then(|m| Cli::from_arg_matches(&m).map(|c| (m, c)));
        match parsed {
            Ok((matches, cli)) => Ok(Parsed {
                cli,
                matches,
                prep,
                cmd,
            }),
            Err(e) => {
                use clap::error::ErrorKind;
                // Help shows the built-in defaults, not the settings' values (which may be secret).
                let e = match e.kind() {
                    ErrorKind::DisplayHelp
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                    | ErrorKind::DisplayVersion => help_command()
                        .try_get_matches_from(args.to_vec())
                        .err()
                        .unwrap_or(e),
                    _ => e,
                };
                // Under the journal, clap's own error lines get priority err too.
                if e.use_stderr() && crate::logging::stderr_is_journal() {
                    crate::logging::journal_error(&e.render().to_string());
                } else {
                    let _ = e.print();
                }
                Err(if e.use_stderr() {
                    Exit::Usage.code()
                } else {
                    Exit::Success.code()
                })
            }
        }
    }

    /// Logs what the settings' values deserve; Err for a value the command cannot do without.
    fn judge_settings(&self) -> Result<(), crate::error::UsageError> {
        let unused = unused_args(&self.cli.command);
        let unused: Vec<&str> = unused.iter().map(String::as_str).collect();
        let use_ = settings::Use {
            command: self.matches.subcommand_name().unwrap_or(""),
            config_step: match &self.cli.command {
                Command::FetchConfig(_) => true,
                Command::Run(r) => !r.skip_config,
                _ => false,
            },
            unused: &unused,
        };
        for n in settings::judge(&self.prep, &self.cmd, &self.matches, use_)? {
            match n.level {
                settings::Level::Warn => tracing::warn!("{}", n.message),
                settings::Level::Error => tracing::error!("{}", n.message),
            }
        }
        Ok(())
    }

    /// The plan, or None after logging the usage error. `block-imds` whose settings made a
    /// value it cannot use falls back to the built-in defaults, so that the block is asserted.
    fn plan(&self, root: &Root, args: &[OsString]) -> Option<Plan> {
        let e = match Plan::from_cli(&self.cli, root) {
            Ok(p) => return Some(p),
            Err(e) => e,
        };
        let from = self.prep.explain(&self.matches, &e.0);
        let e = if from.is_empty() {
            e.0
        } else {
            format!("{} ({})", e.0, from.join("; "))
        };
        match builtin_block_plan(&self.cli, root, args) {
            Some(p) if !from.is_empty() => {
                tracing::error!(
                    "{e}; block-imds uses the built-in defaults instead, so that the block is still \
                     asserted; fix or remove the setting"
                );
                Some(p)
            }
            _ => {
                tracing::error!("{e}");
                None
            }
        }
    }
}

/// Runs the plan's steps on a current-thread runtime, racing them against the signals that
/// end a run. The runtime is shut down without waiting for blocking threads: a step's thread
/// still stuck in a child command or a lock wait past the deadline must not hold the process
/// (the step is told to stop through its cancel flag, and dies with the process).
fn run(plan: &Plan, global: &GlobalArgs) -> std::io::Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let finished = Finished::default();
    let report = rt.block_on(async {
        let start = Instant::now();
        tokio::select! {
            // Signal handlers first, so they are in place before any step starts work.
            biased;
            signal = interrupted() => {
                // Dropping `execute` drops every step's guards: temp files and probe
                // namespaces are removed; a file rename either happened or did not.
                tracing::error!("interrupted by {}; stopped before the steps finished", signal.name());
                Report::interrupted(plan.command, signal, finished.take(), start.elapsed())
            }
            report = execute(plan, global, &finished) => report,
        }
    });
    rt.shutdown_background();
    Ok(report)
}

/// The log level from `-q` and `-v`, and the line format.
fn init_logging(g: &GlobalArgs) {
    use tracing::level_filters::LevelFilter;
    let level = match (g.quiet, g.verbose) {
        (true, _) => LevelFilter::WARN,
        (false, 0) => LevelFilter::INFO,
        (false, 1) => LevelFilter::DEBUG,
        (false, _) => LevelFilter::TRACE,
    };
    let format = match g.log_format {
        LogFormat::Text => logging::LogFormat::Text,
        LogFormat::Json => logging::LogFormat::Json,
    };
    logging::init(level, format);
}

/// `--root` from the raw arguments or the environment, needed before the settings file is read.
fn root_from_args(args: &[OsString]) -> PathBuf {
    let mut it = args.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        if a == "--root" {
            if let Some(v) = it.next() {
                return PathBuf::from(v);
            }
        } else if let Some(v) = a.strip_prefix("--root=") {
            return PathBuf::from(v);
        }
    }
    std::env::var_os("ECS_BOOTSTRAP_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The command as `--help` shows it: built-in defaults, and no environment values (a value
/// may be a secret).
fn help_command() -> clap::Command {
    let hide = |a: clap::Arg| a.hide_env_values(true);
    let mut cmd = Cli::command().mut_args(hide);
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, |sub| sub.mut_args(hide));
    }
    cmd
}

/// For `block-imds` whose settings made a value it cannot use: the plan from the command line
/// and the built-in defaults alone (no environment, no settings file).
fn builtin_block_plan(cli: &Cli, root: &Root, args: &[OsString]) -> Option<Plan> {
    if !matches!(cli.command, Command::BlockImds(_)) {
        return None;
    }
    let none = settings::SettingsFile {
        path: PathBuf::new(),
        state: settings::FileState::Absent,
    };
    let mut cmd = settings::prepare(Cli::command(), &none, |_| None).cmd;
    let m = cmd.try_get_matches_from_mut(args.to_vec()).ok()?;
    let plain = Cli::from_arg_matches(&m).ok()?;
    Plan::from_cli(&plain, root).ok()
}

/// Argument ids of the subcommand that it does not use: the flags of a skipped step.
fn unused_args(command: &Command) -> Vec<String> {
    use clap::Args as _;
    let ids = |c: clap::Command| -> Vec<String> {
        c.get_arguments()
            .map(|a| a.get_id().as_str().to_owned())
            .collect()
    };
    let mut out = Vec::new();
    if let Command::Run(r) = command {
        if r.skip_config {
            out.extend(ids(cli::ConfigArgs::augment_args(clap::Command::new("c"))));
        }
        if r.skip_firewall && !r.prove {
            out.extend(ids(cli::FirewallArgs::augment_args(clap::Command::new(
                "f",
            ))));
        }
    }
    out
}

/// The IMDS posture lines of a `run` (see [`crate::posture`]).
fn posture(plan: &Plan, steps: &[StepReport]) -> Vec<posture::Line> {
    use crate::report::Outcome;
    let step = |s: Step| steps.iter().find(|r| r.step == s);
    let firewall_ok = step(Step::Firewall)
        .filter(|r| r.outcome != Outcome::Skipped)
        .map(|r| r.outcome == Outcome::Ok);
    let prove = step(Step::Prove)
        .filter(|r| r.outcome != Outcome::Skipped)
        .map(|r| match r.outcome {
            Outcome::Ok => posture::Proof::Proven,
            _ if r.imds_unreachable => posture::Proof::Unproven,
            _ if r.exit.unwrap_or(Exit::Prove) == Exit::Prove => posture::Proof::Leak,
            _ => posture::Proof::Unproven,
        });
    let ecs_config = plan.config.as_ref().and_then(|c| {
        std::fs::read_to_string(&c.dest)
            .ok()
            .map(|t| (t, c.dest.clone()))
    });
    let details = |s: Step| step(s).and_then(|r| r.details.as_ref());
    let imdsv1 = match details(Step::Check) {
        Some(report::Details::Check(d)) => Some(d.imdsv1),
        _ => None,
    };
    let put_hop_limit = match details(Step::Prove) {
        Some(report::Details::Prove(d)) => d.seen.as_ref().and_then(|s| s.put_hop_limit),
        _ => None,
    }
    .map(|h| match h {
        prove::HopLimit::One => posture::HopLimit::One,
        prove::HopLimit::TwoOrMore => posture::HopLimit::TwoOrMore,
    });
    posture::assess(&posture::Facts {
        firewall_ok,
        interfaces: plan
            .firewall
            .as_ref()
            .map(|f| f.interfaces.clone())
            .unwrap_or_default(),
        prove,
        ecs_config,
        imdsv1,
        put_hop_limit,
    })
}

/// Resolves on SIGTERM, SIGINT, SIGHUP (an ssh session that drops ends the run the same way)
/// or SIGQUIT (a terminal's quit key): the commands the run starts lead process groups of their
/// own, which a terminal's signals do not reach, so every signal that ends a run must stop it
/// and with it the command.
async fn interrupted() -> Signal {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::quit()),
    ) {
        (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut quit)) => tokio::select! {
            _ = term.recv() => Signal::Term,
            _ = int.recv() => Signal::Int,
            _ = hup.recv() => Signal::Hup,
            _ = quit.recv() => Signal::Quit,
        },
        _ => std::future::pending().await,
    }
}

/// The steps that finished, in the order they did: what a report of an interrupted run lists.
type Finished = std::cell::RefCell<Vec<StepReport>>;

/// Runs `fut` as `step` before `deadline`, timing it, and records its report in `finished`.
async fn timed<F>(step: Step, deadline: Instant, finished: &Finished, fut: F) -> StepReport
where
    F: Future<Output = anyhow::Result<StepResult>>,
{
    let start = Instant::now();
    let result = match tokio::time::timeout_at(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "the {} step did not finish before the overall deadline; raise --deadline or look at the log for what it was waiting on",
            step.name()
        )),
    };
    if let Err(e) = &result {
        tracing::error!(step = step.name(), "{e:#}");
    }
    let report = StepReport::from_result(step, start.elapsed(), result);
    finished.borrow_mut().push(report.clone());
    report
}

/// The shared IMDS client, when a step needs one (or why it could not be made).
type SharedImds = Option<anyhow::Result<Imds>>;

/// The IMDS client of a step that needs one.
fn need(imds: &SharedImds) -> anyhow::Result<&Imds> {
    match imds {
        Some(Ok(i)) => Ok(i),
        Some(Err(e)) => Err(anyhow::anyhow!("{e:#}")),
        None => Err(anyhow::anyhow!("no metadata client was made for this step")),
    }
}

async fn execute(plan: &Plan, global: &GlobalArgs, finished: &Finished) -> Report {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(global.deadline);
    if let Some(opts) = &plan.config {
        config::prepare(opts);
    }
    let imds: SharedImds = (plan.config.is_some() || plan.check.is_some() || plan.prove.is_some())
        .then(|| Imds::new(imds::endpoint_from_env(), deadline));
    // The firewall first: its first poll starts its thread, before the config step's first
    // poll does its synchronous set-up (the S3 client's TLS roots).
    let (firewall, config) = tokio::join!(
        firewall_step(plan, deadline, finished),
        config_step(plan, &imds, deadline, finished)
    );
    let check = match &plan.check {
        Some(opts) => {
            timed(Step::Check, deadline, finished, async {
                crate::check::run(opts, need(&imds)?).await
            })
            .await
        }
        None => StepReport::skipped(Step::Check),
    };
    let prove = match &plan.prove {
        Some(opts) => {
            timed(Step::Prove, deadline, finished, async {
                let bound = sys::Deadline::at(deadline.into_std());
                let work = prove::Blocking {
                    runner: std::sync::Arc::new(SystemRunner::new(bound.clone())),
                    bound,
                };
                prove::run(opts, need(&imds)?, &work, deadline).await
            })
            .await
        }
        None => StepReport::skipped(Step::Prove),
    };
    let unreachable = matches!(&imds, Some(Ok(i)) if i.was_unreachable());
    assemble(plan, [config, firewall, check, prove], unreachable, start)
}

/// The firewall step on a blocking thread bound by the deadline: dropped at the deadline or on
/// a signal, it is stopped and changes nothing more.
async fn firewall_step(plan: &Plan, deadline: Instant, finished: &Finished) -> StepReport {
    let Some(opts) = plan.firewall.clone() else {
        return StepReport::skipped(Step::Firewall);
    };
    timed(Step::Firewall, deadline, finished, async move {
        let bound = sys::Deadline::at(deadline.into_std());
        sys::run_blocking(&bound, move |d| {
            firewall::run(&opts, &SystemRunner::new(d.clone()), d)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the firewall step panicked: {e}"))?
    })
    .await
}

async fn config_step(
    plan: &Plan,
    imds: &SharedImds,
    deadline: Instant,
    finished: &Finished,
) -> StepReport {
    let Some(opts) = &plan.config else {
        return StepReport::skipped(Step::Config);
    };
    timed(Step::Config, deadline, finished, async {
        config::run(opts, need(imds)?, deadline).await
    })
    .await
}

/// The report from the steps (in the order config, firewall, check, prove). A metadata request
/// that gave up on an unreachable IMDS (`unreachable`) explains every failed step that needs
/// IMDS, however its error reached the step (as a MetadataError, as the text of the SDK's
/// credentials error, or as a deadline the wait used up): exit code 7. The shared handle is the
/// one place that knows.
fn assemble(plan: &Plan, steps: [StepReport; 4], unreachable: bool, start: Instant) -> Report {
    let [mut config, firewall, mut check, mut prove] = steps;
    if unreachable {
        for s in [&mut config, &mut check, &mut prove] {
            if s.outcome == report::Outcome::Failed {
                s.imds_unreachable = true;
            }
        }
    }
    let steps = match plan.command {
        report::Command::Run if plan.prove.is_some() => vec![config, firewall, check, prove],
        report::Command::Run => vec![config, firewall, check],
        _ => [config, firewall, check, prove]
            .into_iter()
            .filter(|s| s.outcome != report::Outcome::Skipped)
            .collect(),
    };
    let posture = if plan.command == report::Command::Run {
        posture(plan, &steps)
    } else {
        vec![]
    };
    let mut report = Report::new(plan.command, steps, start.elapsed());
    report.imds_posture = posture;
    report
}

/// `status`: changes nothing and writes no file (not even `--report`, which may name the boot's
/// report); prints whether the block holds now and returns 0 only when it does.
fn status(a: &cli::StatusArgs, root: &Root, global: &GlobalArgs) -> u8 {
    let req = match plan::status_request(a, root) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Usage.code();
        }
    };
    let deadline = sys::Deadline::after(Duration::from_secs(global.deadline));
    let runner = SystemRunner::new(deadline.clone());
    let st = crate::status::gather(&req, &runner, &deadline, std::time::SystemTime::now());
    if !st.protected {
        tracing::error!(
            "this instance is not protected now: the block does not hold (see the status)"
        );
    }
    print_stdout(&match global.output {
        OutputFormat::Json => format!("{}\n", st.to_json()),
        OutputFormat::Text => st.to_text(),
    });
    st.exit_code
}

/// Writes the `--report` file, then prints the report (which says when the file could not be
/// written); returns the exit code the report names.
fn emit(mut report: Report, global: &GlobalArgs) -> u8 {
    if let Some(path) = &global.report
        && let Err(e) =
            fsutil::write_atomic(path, format!("{}\n", report.to_json()).as_bytes(), 0o644)
    {
        tracing::error!("cannot write the report file {}: {e}", path.display());
        report.report_file_failed(path, e.to_string());
    }
    print_stdout(&match global.output {
        OutputFormat::Json => format!("{}\n", report.to_json()),
        OutputFormat::Text => report.to_text(),
    });
    report.exit_code
}

/// Prints to stdout. A reader that went away (`| head -c1`) is not a failure of the run: the
/// report file is written and the exit code stands.
fn print_stdout(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        tracing::warn!("cannot print the report: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_found_before_parsing() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            root_from_args(&a(&["x", "run", "--root", "/mnt"])),
            PathBuf::from("/mnt")
        );
        assert_eq!(
            root_from_args(&a(&["x", "--root=/img", "run"])),
            PathBuf::from("/img")
        );
    }
}

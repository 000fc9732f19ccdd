//! Orchestration: read the settings, parse the command line, run the steps within the deadline,
//! print the report and pick the exit code. `main` only calls [`main_entry`].

mod cli;
mod envfile;
mod plan;
mod settings;

use crate::error::{Exit, Step};
use crate::imds::Imds;
use crate::report::{Report, StepReport, StepResult};
use crate::sys::{self, Root, SystemRunner};
use crate::{config, firewall, fsutil, imds, logging, prove};
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
    let file = settings::SettingsFile::load(&root);
    let prep = settings::prepare(Cli::command(), &file, |n| std::env::var(n).ok());
    let mut cmd = prep.cmd.clone();
    let parsed = cmd
        .try_get_matches_from_mut(args.clone())
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (m, c)));
    let (matches, cli) = match parsed {
        Ok(p) => p,
        Err(e) => {
            use clap::error::ErrorKind;
            // Help shows the built-in defaults, not the settings' values (which may be secret).
            let e = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                | ErrorKind::DisplayVersion => {
                    help_command().try_get_matches_from(args).err().unwrap_or(e)
                }
                _ => e,
            };
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.code()
            } else {
                Exit::Success.code()
            };
        }
    };
    init_logging(&cli.global);
    let unused = unused_args(&cli.command);
    let unused: Vec<&str> = unused.iter().map(String::as_str).collect();
    let use_ = settings::Use {
        command: matches.subcommand_name().unwrap_or(""),
        config_step: match &cli.command {
            Command::FetchConfig(_) => true,
            Command::Run(r) => !r.skip_config,
            _ => false,
        },
        unused: &unused,
    };
    match settings::judge(&prep, &cmd, &matches, use_) {
        Ok(notes) => {
            for n in notes {
                match n.level {
                    settings::Level::Warn => tracing::warn!("{}", n.message),
                    settings::Level::Error => tracing::error!("{}", n.message),
                }
            }
        }
        Err(e) => {
            tracing::error!("{e}");
            return Exit::Usage.code();
        }
    }
    if let Command::IamPolicy(a) = &cli.command {
        return match crate::iam_policy::render(&plan::policy_request(a)) {
            Ok(text) => {
                println!("{text}");
                Exit::Success.code()
            }
            Err(e) => {
                tracing::error!("{e}");
                Exit::Usage.code()
            }
        };
    }
    let plan = match Plan::from_cli(&cli, &root) {
        Ok(p) => p,
        Err(e) => {
            let from = prep.explain(&matches, &e.0);
            let e = if from.is_empty() {
                e.0
            } else {
                format!("{} ({})", e.0, from.join("; "))
            };
            match builtin_block_plan(&cli, &root, &args) {
                Some(p) if !from.is_empty() => {
                    tracing::error!(
                        "{e}; block-imds uses the built-in defaults instead, so that the block is still \
                         asserted; fix or remove the setting"
                    );
                    p
                }
                _ => {
                    tracing::error!("{e}");
                    return Exit::Usage.code();
                }
            }
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ecs-bootstrap: cannot start the async runtime: {e}");
            return Exit::Internal.code();
        }
    };
    let report = rt.block_on(async {
        let start = Instant::now();
        tokio::select! {
            // Signal handlers first, so they are in place before any step starts work.
            biased;
            signal = interrupted() => {
                // Dropping `execute` drops every step's guards: temp files and probe
                // namespaces are removed; a file rename either happened or did not.
                tracing::error!("interrupted by {signal}; stopped before the steps finished");
                Report::interrupted(plan.command, signal, start.elapsed())
            }
            report = execute(&plan, &cli.global) => report,
        }
    });
    emit(&report, &cli.global)
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
fn posture(plan: &Plan, steps: &[crate::report::StepReport]) -> Vec<crate::posture::Line> {
    use crate::report::Outcome;
    let step = |s: Step| steps.iter().find(|r| r.step == s);
    let firewall_ok = step(Step::Firewall)
        .filter(|r| r.outcome != Outcome::Skipped)
        .map(|r| r.outcome == Outcome::Ok);
    let prove = step(Step::Prove)
        .filter(|r| r.outcome != Outcome::Skipped)
        .map(|r| match r.outcome {
            Outcome::Ok => 0,
            _ if r.imds_unreachable => Exit::ImdsUnreachable.code(),
            _ => r.exit.unwrap_or(Exit::Prove).code(),
        });
    let ecs_config = plan.config.as_ref().and_then(|c| {
        std::fs::read_to_string(&c.dest)
            .ok()
            .map(|t| (t, c.dest.display().to_string()))
    });
    let imdsv1 =
        step(Step::Check).and_then(|r| serde_json::from_value(r.details["imdsv1"].clone()).ok());
    let put_hop_limit = step(Step::Prove)
        .and_then(|r| r.details["put_hop_limit"].as_str())
        .map(str::to_owned);
    crate::posture::assess(&crate::posture::Facts {
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

/// Resolves with the signal's name on SIGTERM or SIGINT.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => std::future::pending().await,
    }
}

/// Runs `fut` as `step` before `deadline`, timing it.
async fn timed<F>(step: Step, deadline: Instant, fut: F) -> StepReport
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
    StepReport::from_result(step, start.elapsed(), result)
}

async fn execute(plan: &Plan, global: &GlobalArgs) -> Report {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(global.deadline);
    if let Some(opts) = &plan.config {
        config::prepare(opts);
    }
    let imds = (plan.config.is_some() || plan.check.is_some() || plan.prove.is_some())
        .then(|| Imds::new(imds::endpoint_from_env(), deadline));

    let firewall = async {
        match &plan.firewall {
            None => StepReport::skipped(Step::Firewall),
            Some(opts) => {
                let opts = opts.clone();
                timed(Step::Firewall, deadline, async move {
                    let bound = sys::Deadline::at(deadline.into_std());
                    sys::run_blocking(&bound, move |d| {
                        firewall::run(&opts, &SystemRunner::new(d.clone()), d)
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("the firewall step panicked: {e}"))?
                })
                .await
            }
        }
    };
    let config = async {
        match (&plan.config, &imds) {
            (Some(opts), Some(imds)) => {
                timed(Step::Config, deadline, async {
                    let imds = imds.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                    config::run(opts, imds, deadline).await
                })
                .await
            }
            _ => StepReport::skipped(Step::Config),
        }
    };
    // The firewall first: its first poll starts its thread, before the config step's first
    // poll does its synchronous set-up (the S3 client's TLS roots).
    let (firewall, config) = tokio::join!(firewall, config);
    let check = match (&imds, &plan.check) {
        (Some(imds), Some(opts)) => {
            timed(Step::Check, deadline, async {
                let imds = imds.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                crate::check::run(opts, imds).await
            })
            .await
        }
        _ => StepReport::skipped(Step::Check),
    };
    let prove = match (&imds, &plan.prove) {
        (Some(imds), Some(opts)) => {
            timed(Step::Prove, deadline, async {
                let imds = imds.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
                let runner = SystemRunner::new(sys::Deadline::at(deadline.into_std()));
                prove::run(opts, imds, &runner, deadline).await
            })
            .await
        }
        _ => StepReport::skipped(Step::Prove),
    };
    // A metadata request that gave up on an unreachable IMDS explains every failed step that
    // needs IMDS, however its error reached the step (as a MetadataError, as the text of the
    // SDK's credentials error, or as a deadline the wait used up): exit code 7. The shared
    // handle is the one place that knows.
    let (mut config, mut check, mut prove) = (config, check, prove);
    if let Some(Ok(imds)) = &imds
        && imds.was_unreachable()
    {
        for s in [&mut config, &mut check, &mut prove] {
            if s.outcome == crate::report::Outcome::Failed {
                s.imds_unreachable = true;
            }
        }
    }
    let steps = match plan.command {
        "run" if plan.prove.is_some() => vec![config, firewall, check, prove],
        "run" => vec![config, firewall, check],
        _ => [config, firewall, check, prove]
            .into_iter()
            .filter(|s| s.outcome != crate::report::Outcome::Skipped)
            .collect(),
    };
    let posture = if plan.command == "run" {
        posture(plan, &steps)
    } else {
        vec![]
    };
    let mut report = Report::new(plan.command, steps, start.elapsed());
    report.imds_posture = posture;
    report
}

fn emit(report: &Report, global: &GlobalArgs) -> u8 {
    let mut code = report.exit_code;
    match global.output {
        OutputFormat::Json => println!("{}", report.to_json()),
        OutputFormat::Text => print!("{}", report.to_text()),
    }
    if let Some(path) = &global.report
        && let Err(e) =
            fsutil::write_atomic(path, format!("{}\n", report.to_json()).as_bytes(), 0o644)
    {
        tracing::error!("cannot write the report: {e}");
        if code == 0 {
            code = Exit::Internal.code();
        }
    }
    code
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

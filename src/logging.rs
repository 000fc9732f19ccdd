//! Log lines on stderr: plain text (no colours, and no timestamp under systemd, where journald
//! adds its own), or JSON for log shippers. Values of secret settings are never logged: the
//! config step logs key names only.

use crate::cli::{GlobalArgs, LogFormat};
use std::io::IsTerminal;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

pub fn init(args: &GlobalArgs) {
    let level = match (args.quiet, args.verbose) {
        (true, _) => LevelFilter::WARN,
        (false, 0) => LevelFilter::INFO,
        (false, 1) => LevelFilter::DEBUG,
        (false, _) => LevelFilter::TRACE,
    };
    // Our own crate at the chosen level; the SDK's chatter only when asked for with -vv.
    // (A fixed `Targets` filter rather than `EnvFilter`: no regex engine in the binary.)
    let others = if args.verbose >= 2 {
        level
    } else {
        LevelFilter::WARN
    };
    let filter = Targets::new()
        .with_default(others)
        .with_target("ecs_bootstrap", level);
    let under_systemd =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    let builder = tracing_subscriber::fmt()
        .with_max_level(level.max(others))
        .with_writer(std::io::stderr)
        .with_target(false);
    match args.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .init(),
        LogFormat::Text if under_systemd => builder
            .without_time()
            .with_ansi(false)
            .finish()
            .with(filter)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(filter)
            .init(),
    }
}

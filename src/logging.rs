//! Log lines on stderr: plain text (no colours, and no timestamp under systemd, where journald
//! adds its own), or JSON for log shippers. Values of secret settings are never logged: the
//! config step logs key names only.

use crate::cli::{GlobalArgs, LogFormat};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init(args: &GlobalArgs) {
    let level = match (args.quiet, args.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // Our own crate at the chosen level; the SDK's chatter only when asked for with -vv.
    let directive = if args.verbose >= 2 {
        level.to_owned()
    } else {
        format!("warn,ecs_bootstrap={level}")
    };
    let filter = EnvFilter::new(directive);
    let under_systemd =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text if under_systemd => builder.without_time().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

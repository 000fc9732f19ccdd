//! Log lines on stderr: plain text (no colours, and no timestamp under systemd, where journald
//! adds its own), or JSON for log shippers. Values of secret settings are never logged: the
//! config step logs key names only.
//!
//! Priorities in the journal: when stderr is the journal stream systemd gave the process
//! (`JOURNAL_STREAM` names its device and inode), every text line starts with the syslog
//! prefix journald reads (`SyslogLevelPrefix=`, on by default) and strips: `<3>` error, `<4>`
//! warning, `<6>` info, `<7>` debug and trace; so `journalctl -p warning` shows the warnings and
//! errors. Not on a terminal or a file or pipe that stderr was redirected to (the variable is
//! inherited, the stream may not be), and never in JSON: each JSON line stays one JSON
//! document, whoever reads it, and carries its level in its `level` field.
//!
//! No credential reaches a log line at any verbosity: the SDK and its HTTP stack log requests
//! (with the IMDS session token and the SigV4 `Authorization` header) and, with
//! `LOG_SENSITIVE_BODIES=true`, response bodies (the role's keys) at TRACE, so other crates are
//! capped at DEBUG even with `-vv`; and every line passes [`redact`] on its way out, which
//! blanks the values of the headers and fields that carry credentials, whoever logged them.

use std::io::IsTerminal;
use tracing::level_filters::LevelFilter;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber: our own lines at `level`, on stderr, in `format`.
pub(crate) fn init(level: LevelFilter, format: LogFormat) {
    // Our own crate at the chosen level; the SDK's chatter only when asked for with -vv, and
    // never its TRACE lines (wire data: headers with tokens, bodies with keys).
    // (A fixed `Targets` filter rather than `EnvFilter`: no regex engine in the binary.)
    let others = if level == LevelFilter::TRACE {
        LevelFilter::DEBUG
    } else {
        LevelFilter::WARN
    };
    let filter = Targets::new()
        .with_default(others)
        .with_target("ecs_bootstrap", level);
    let under_systemd =
        std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some();
    let journal = format == LogFormat::Text && stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_max_level(level.max(others))
        .with_writer(Stderr { journal })
        .with_target(false);
    match format {
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
    if std::env::var_os("LOG_SENSITIVE_BODIES").is_some() {
        tracing::warn!(
            "LOG_SENSITIVE_BODIES is set and ignored: ecs-bootstrap never logs request or response bodies \
             (they carry the instance role's credentials)"
        );
    }
}

/// Header and field names whose values are credentials (lower case).
const SECRET_NAMES: [&str; 9] = [
    "x-aws-ec2-metadata-token",
    "access_key_id",
    "accesskeyid",
    "x-amz-security-token",
    "authorization",
    "secretaccesskey",
    "secret_access_key",
    "sessiontoken",
    "\"token\"",
];

/// Characters a credential is made of (base64, URL-safe base64, hex, SigV4 fields).
fn credential_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+/=_-".contains(&b)
}

/// `line` with the values after each credential-bearing name replaced by `<redacted>`: every
/// run of at least 16 credential characters that starts within the next 64 bytes (the
/// formatting between a header's name and its value varies: `: `, `": HeaderValue { _private:
/// H0("`, `=`).
/// `x-aws-ec2-metadata-token-ttl-seconds` is not a secret and stays.
fn redact(line: &str) -> String {
    let lower = line.to_ascii_lowercase();
    let bytes = line.as_bytes();
    let mut cut: Vec<(usize, usize)> = Vec::new();
    for name in SECRET_NAMES {
        let mut from = 0;
        while let Some(i) = lower[from..].find(name) {
            let start = from + i + name.len();
            from = start;
            // A whole name only: `AuthorizationHeaderMalformed` (an S3 error code) or
            // `x-aws-ec2-metadata-token-ttl-seconds` are not credentials.
            if lower[start..].starts_with("-ttl")
                || lower[start..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            let end = (start + 64).min(bytes.len());
            let mut j = start;
            while j < end {
                if credential_char(bytes[j]) {
                    let k = (j..bytes.len())
                        .find(|&k| !credential_char(bytes[k]))
                        .unwrap_or(bytes.len());
                    // Credentials are long; shorter words (`HeaderValue`, `H0`) are the
                    // formatting around them. The SigV4 algorithm name is not a secret.
                    if k - j >= 16 && &line[j..k] != "AWS4-HMAC-SHA256" {
                        cut.push((j, k));
                    }
                    j = k;
                } else {
                    j += 1;
                }
            }
        }
    }
    if cut.is_empty() {
        return line.to_owned();
    }
    cut.sort_unstable();
    let mut out = String::with_capacity(line.len());
    let mut pos = 0;
    for (a, b) in cut {
        if a < pos {
            continue;
        }
        out.push_str(&line[pos..a]);
        out.push_str("<redacted>");
        pos = b;
    }
    out.push_str(&line[pos..]);
    out
}

/// Writes an error that comes before logging is set up (clap's usage errors: they are printed
/// before the command line is known) to the journal stream, every line at priority err, as
/// the log lines that follow it would be. For stderr that [`stderr_is_journal`].
pub(crate) fn journal_error(text: &str) {
    use std::io::Write as _;
    let text = prefix_lines(text, syslog_prefix(Level::ERROR));
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// Whether stderr is the journal stream systemd connected: `JOURNAL_STREAM` (`DEVICE:INODE`)
/// names stderr's device and inode.
pub(crate) fn stderr_is_journal() -> bool {
    let Some(named) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_journal_stream(&v))
    else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr()).is_ok_and(|st| (st.st_dev, st.st_ino) == named)
}

/// `JOURNAL_STREAM`'s device and inode (pure).
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The syslog priority prefix journald reads at the start of a line (pure).
fn syslog_prefix(level: Level) -> &'static str {
    match level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        _ => "<7>",
    }
}

/// `text` with `prefix` at the start of every line: journald reads each line of a stream as
/// its own entry, so a message that spans lines keeps its priority on each. journald also ends
/// a line at a NUL byte, so a NUL (from text logged from outside: a command's error output)
/// is written as `\0`, and cannot start an entry whose priority the text chooses. The blanks
/// that right-align the level go: the journal's entries need no alignment (pure).
fn prefix_lines(text: &str, prefix: &str) -> String {
    let text = text.replace('\0', "\\0");
    let mut out = String::with_capacity(text.len() + prefix.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        out.push_str(prefix);
        out.push_str(if i == 0 {
            line.trim_start_matches(' ')
        } else {
            line
        });
    }
    out
}

/// Makes the writer for each event: stderr through [`redact`], with the event's syslog prefix
/// when stderr is the journal.
#[derive(Debug, Clone, Copy)]
struct Stderr {
    journal: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Redacting;

    fn make_writer(&'a self) -> Redacting {
        Redacting { prefix: None }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Redacting {
        Redacting {
            prefix: self.journal.then(|| syslog_prefix(*meta.level())),
        }
    }
}

/// A writer to stderr that passes every formatted event through [`redact`] (and prefixes its
/// lines). The formatter writes one event per `write_all`, so each call sees whole lines.
struct Redacting {
    prefix: Option<&'static str>,
}

impl std::io::Write for Redacting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = redact(&String::from_utf8_lossy(buf));
        let text = match self.prefix {
            Some(p) => prefix_lines(&text, p),
            None => text,
        };
        std::io::stderr().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_level_has_its_journal_priority_on_every_line() {
        assert_eq!(syslog_prefix(Level::ERROR), "<3>");
        assert_eq!(syslog_prefix(Level::WARN), "<4>");
        assert_eq!(syslog_prefix(Level::INFO), "<6>");
        assert_eq!(syslog_prefix(Level::DEBUG), "<7>");
        assert_eq!(syslog_prefix(Level::TRACE), "<7>");
        assert_eq!(prefix_lines("ERROR a\n", "<3>"), "<3>ERROR a\n");
        assert_eq!(prefix_lines(" WARN b\n", "<4>"), "<4>WARN b\n");
        assert_eq!(
            prefix_lines("ERROR a\n  indented second line\n", "<3>"),
            "<3>ERROR a\n<3>  indented second line\n"
        );
        assert_eq!(prefix_lines("no newline", "<6>"), "<6>no newline");
        assert_eq!(
            prefix_lines("ERROR bad\0<0>forged\n", "<3>"),
            "<3>ERROR bad\\0<0>forged\n"
        );
        assert_eq!(prefix_lines("", "<6>"), "");
    }

    #[test]
    fn journal_stream_is_device_and_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream(" 0:7\n"), Some((0, 7)));
        for bad in ["", "8", "8:", ":1", "a:b", "8:1:2"] {
            assert_eq!(parse_journal_stream(bad), None, "{bad}");
        }
    }

    #[test]
    fn credentials_are_blanked_wherever_they_show() {
        let token = "AQAEAFk1bXqYc2VjcmV0LXRva2VuLXZhbHVl-_==";
        for line in [
            format!(
                "headers: {{\"x-aws-ec2-metadata-token\": HeaderValue {{ _private: H0(\"{token}\") }}}}"
            ),
            format!("X-aws-ec2-metadata-token: {token}"),
            format!("\"SecretAccessKey\" : \"{token}\", \"Token\": \"{token}\""),
            format!("authorization: AWS4-HMAC-SHA256 Credential={token}"),
            format!("x-amz-security-token={token}"),
        ] {
            let r = redact(&line);
            assert!(!r.contains(token), "{line} -> {r}");
            assert!(r.contains("<redacted>"), "{r}");
        }
        let plain = "x-aws-ec2-metadata-token-ttl-seconds: 21600 for /latest/api/token";
        assert_eq!(redact(plain), plain);
        let code =
            "HTTP 400 AuthorizationHeaderMalformed: the region of ecs-bootstrap-sandbox is wrong";
        assert_eq!(redact(code), code);
        assert_eq!(
            redact("fetched the config object"),
            "fetched the config object"
        );
    }
}

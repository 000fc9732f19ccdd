//! Log lines on stderr: plain text (no colours, and no timestamp under systemd, where journald
//! adds its own), or JSON for log shippers. Values of secret settings are never logged: the
//! config step logs key names only.
//!
//! No credential reaches a log line at any verbosity: the SDK and its HTTP stack log requests
//! (with the IMDS session token and the SigV4 `Authorization` header) and, with
//! `LOG_SENSITIVE_BODIES=true`, response bodies (the role's keys) at TRACE, so other crates are
//! capped at DEBUG even with `-vv`; and every line passes [`redact`] on its way out, which
//! blanks the values of the headers and fields that carry credentials, whoever logged them.

use std::io::IsTerminal;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// The shape of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber: our own lines at `level`, on stderr, in `format`.
pub fn init(level: LevelFilter, format: LogFormat) {
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
    let builder = tracing_subscriber::fmt()
        .with_max_level(level.max(others))
        .with_writer(|| Redacting(std::io::stderr()))
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
pub fn redact(line: &str) -> String {
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

/// A writer that passes every formatted event through [`redact`]. The formatter writes one
/// event per `write_all`, so each call sees whole lines.
struct Redacting<W: std::io::Write>(W);

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

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

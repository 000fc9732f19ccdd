//! Reading `/etc/ecs-bootstrap/env`, the settings file that systemd also reads with
//! `EnvironmentFile=`. Pure parsing: the caller reads the file.
//!
//! The syntax is the subset of systemd's that both readers agree on: `KEY=VALUE` lines, blank
//! lines, comments starting with `#` or `;`, an optional `export ` prefix, and a value that may
//! be wrapped in single or double quotes.

use std::collections::BTreeMap;

/// A line that could not be read, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFileError {
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

pub fn parse(text: &str) -> Result<BTreeMap<String, String>, EnvFileError> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(EnvFileError {
                line: i + 1,
                reason: "expected KEY=VALUE".into(),
            });
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(EnvFileError {
                line: i + 1,
                reason: format!("invalid variable name {key:?}"),
            });
        }
        let value = value.trim();
        let value = unquote(value);
        out.insert(key.to_owned(), value.to_owned());
    }
    Ok(out)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_systemd_style_lines() {
        let m = parse("# comment\n; other\n\nECS_BOOTSTRAP_SOURCE=s3://b/k\nexport ECS_BOOTSTRAP_DEST=\"/etc/ecs/ecs.config\"\nA='x y'\n").unwrap();
        assert_eq!(m["ECS_BOOTSTRAP_SOURCE"], "s3://b/k");
        assert_eq!(m["ECS_BOOTSTRAP_DEST"], "/etc/ecs/ecs.config");
        assert_eq!(m["A"], "x y");
    }

    #[test]
    fn names_the_bad_line() {
        let e = parse("A=1\nnot a setting\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("BAD-NAME=1\n").unwrap_err();
        assert!(e.reason.contains("BAD-NAME"));
    }
}

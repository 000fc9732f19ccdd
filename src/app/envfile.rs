//! Reading `/etc/ecs-bootstrap/env`, the settings file that systemd also reads with
//! `EnvironmentFile=`. Pure parsing: the caller reads the file.
//!
//! The syntax is the subset of systemd's that both readers agree on: `KEY=VALUE` lines, blank
//! lines, comments starting with `#` or `;`, an optional `export ` prefix, and a value that may
//! be wrapped in single or double quotes.
//!
//! Nothing here echoes a line's text: a line that cannot be read may be a wrapped secret (a
//! base64 value split over two lines), so a problem is named by its line number and reason.

/// A line that could not be read, with its 1-based number. The text is never kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvFileError {
    pub(crate) line: usize,
    pub(crate) reason: &'static str,
}

impl std::fmt::Display for EnvFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// One `KEY=VALUE` line. `Debug` hides the value (it may be a secret).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) line: usize,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry(line {}: {}=<hidden>)", self.line, self.key)
    }
}

/// The file's entries in file order (duplicates kept), and the lines that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EnvFile {
    pub(crate) entries: Vec<Entry>,
    pub(crate) bad_lines: Vec<EnvFileError>,
}

impl EnvFile {
    /// The last entry for `key` (systemd's rule: the last assignment wins).
    pub(crate) fn last(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }

    /// Every entry for `key`, in file order.
    pub(crate) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.key == key)
    }
}

pub(crate) fn parse(text: &str) -> EnvFile {
    let mut out = EnvFile::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            out.bad_lines.push(EnvFileError {
                line: i + 1,
                reason: "no `=`: expected KEY=VALUE (a value continued on a second line?)",
            });
            continue;
        };
        let key = key.trim();
        if key.is_empty()
            || key.starts_with(|c: char| c.is_ascii_digit())
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.bad_lines.push(EnvFileError {
                line: i + 1,
                reason: "the text before `=` is not a variable name (letters, digits and _, not starting \
                         with a digit; a value continued on a second line?)",
            });
            continue;
        }
        let value = unquote(value.trim());
        out.entries.push(Entry {
            key: key.to_owned(),
            value: value.to_owned(),
            line: i + 1,
        });
    }
    out
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
        let m = parse(
            "# comment\n; other\n\nECS_BOOTSTRAP_SOURCE=s3://b/k\nexport ECS_BOOTSTRAP_DEST=\"/etc/ecs/ecs.config\"\nA='x y'\n",
        );
        assert!(m.bad_lines.is_empty());
        assert_eq!(m.last("ECS_BOOTSTRAP_SOURCE").unwrap().value, "s3://b/k");
        assert_eq!(
            m.last("ECS_BOOTSTRAP_DEST").unwrap().value,
            "/etc/ecs/ecs.config"
        );
        assert_eq!(m.last("A").unwrap().value, "x y");
        assert_eq!(m.last("A").unwrap().line, 6);
    }

    #[test]
    fn duplicates_are_kept_in_order() {
        let m = parse("S=a=1\nS=b=2\nT=x\n");
        let all: Vec<_> = m.all("S").map(|e| (e.line, e.value.as_str())).collect();
        assert_eq!(all, vec![(1, "a=1"), (2, "b=2")]);
        assert_eq!(m.last("S").unwrap().value, "b=2");
    }

    #[test]
    fn names_the_bad_line_never_its_text() {
        let m = parse("A=1\nnot a setting\nBAD-NAME=1\n  \"auth\": \"dXNlcjpwYXNz==\"\n");
        let lines: Vec<_> = m.bad_lines.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4]);
        let all = format!("{:?} {}", m, m.bad_lines[2]);
        assert!(
            !all.contains("dXNlcjpwYXNz") && !all.contains("BAD-NAME"),
            "{all}"
        );
        assert_eq!(m.entries.len(), 1);
    }
}

//! ecs.config as text: parse, validate, normalise, diff. Pure: no I/O, no logging.
//!
//! ecs.config is read by two parsers. ecs-init splits each line on its first `=` with no
//! unquoting and no comments; systemd's EnvironmentFile unquotes, handles backslash escapes,
//! strips surrounding whitespace and treats `#`/`;` lines as comments. So the source may hold
//! blank lines and comments, and what is written is only plain `KEY=VALUE` lines that both read
//! alike; values that the two would read differently are flagged.
//!
//! No message built here contains a value: any value may be a secret (see [`super::keys`]).

use super::keys;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The key syntax: `^[A-Z_][A-Z0-9_]*$`, and the lower-case proxy variables, which both readers
/// pass on and Go's HTTP client (the agent's) reads.
pub fn valid_key(k: &str) -> bool {
    let mut b = k.bytes();
    (matches!(b.next(), Some(c) if c.is_ascii_uppercase() || c == b'_')
        && b.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_'))
        || LOWER_CASE_KEYS.contains(&k)
}

pub(crate) const KEY_SYNTAX: &str = "^[A-Z_][A-Z0-9_]*$ (or http_proxy, https_proxy, no_proxy)";

/// Lower-case names that are accepted as they are.
pub(crate) const LOWER_CASE_KEYS: [&str; 3] = ["http_proxy", "https_proxy", "no_proxy"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// Where a finding is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// The whole source.
    File,
    /// A line of the source (1-based).
    Line(usize),
    /// A `--set` argument, by key.
    Set(String),
}

/// A validation warning or error. The message never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub at: At,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            At::File => write!(f, "{}", self.message),
            At::Line(n) => write!(f, "line {n}: {}", self.message),
            At::Set(k) => write!(f, "--set {k}: {}", self.message),
        }
    }
}

/// One `KEY=VALUE` line of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// What [`parse`] found. When any finding is an error, `entries` must not be written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    pub findings: Vec<Finding>,
}

impl Parsed {
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Normalised ecs.config: keys in order of first appearance, each with its last value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// Sets `key`, keeping its position when present.
    pub fn set(&mut self, key: &str, value: &str) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value.to_owned(),
            None => self.entries.push((key.to_owned(), value.to_owned())),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn from_entries(entries: &[Entry]) -> Self {
        let mut c = Config::default();
        for e in entries {
            c.set(&e.key, &e.value);
        }
        c
    }

    /// The file content: `KEY=VALUE\n` per key.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.entries {
            s.push_str(k);
            s.push('=');
            s.push_str(v);
            s.push('\n');
        }
        s
    }
}

/// Key names added, changed and removed between two configs (never values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

pub(crate) fn diff(old: &Config, new: &Config) -> Diff {
    let o: BTreeMap<&str, &str> = old
        .entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let n: BTreeMap<&str, &str> = new
        .entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut d = Diff::default();
    for (k, v) in &n {
        match o.get(k) {
            None => d.added.push((*k).to_owned()),
            Some(ov) if ov != v => d.changed.push((*k).to_owned()),
            Some(_) => {}
        }
    }
    d.removed = o
        .keys()
        .filter(|k| !n.contains_key(*k))
        .map(|k| (*k).to_owned())
        .collect();
    d
}

fn line_of(bytes: &[u8], pos: usize) -> usize {
    bytes[..pos].iter().filter(|b| **b == b'\n').count() + 1
}

fn error(at: At, message: impl Into<String>) -> Finding {
    Finding {
        at,
        severity: Severity::Error,
        message: message.into(),
    }
}

fn warning(at: At, message: impl Into<String>) -> Finding {
    Finding {
        at,
        severity: Severity::Warning,
        message: message.into(),
    }
}

const HTML_HINT: &str = "the content looks like HTML or XML (an error page or a proxy's login page instead of the object?), not ecs.config";

/// Why a key is not valid, with a fix, without echoing text that could be a secret: the text
/// before `=` is shown only when a fix turns it into a valid key.
fn bad_key_message(key: &str) -> String {
    let base = format!("invalid key: keys must match {KEY_SYNTAX}");
    let trimmed = key.trim();
    if let Some(rest) = trimmed.strip_prefix("export ")
        && valid_key(rest.trim())
    {
        return format!(
            "{base}; remove `export ` before {} (write plain KEY=VALUE lines)",
            rest.trim()
        );
    }
    if trimmed != key && valid_key(trimmed) {
        return format!("{base}; remove the spaces around {trimmed}");
    }
    if key.is_empty() {
        return format!("{base}; the line starts with `=`");
    }
    let upper = trimmed.to_ascii_uppercase();
    if upper != trimmed && keys::is_known(&upper) {
        return format!("{base}; keys are upper case: did you mean {upper}?");
    }
    let mut why = Vec::new();
    if key.chars().any(|c| c.is_ascii_lowercase()) {
        why.push("lower-case letters");
    }
    if key.chars().any(char::is_whitespace) {
        why.push("spaces");
    }
    if key.starts_with(|c: char| c.is_ascii_digit()) {
        why.push("a leading digit");
    }
    if key
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || c == '_' || c.is_whitespace()))
    {
        why.push("characters other than letters, digits and _");
    }
    if why.is_empty() {
        base
    } else {
        format!("{base}; the text before `=` has {}", why.join(", "))
    }
}

/// Warnings about a value (as written: `KEY=VALUE`, no trailing whitespace) that ecs-init and
/// systemd would read differently (see [`super::readers`] for both rules). Names the key, never
/// the value.
pub(crate) fn value_warnings(key: &str, value: &str) -> Vec<String> {
    let mut w = Vec::new();
    if value.starts_with([' ', '\t']) {
        w.push(format!(
            "the value of {key} starts with whitespace: systemd skips it and ecs-init keeps it; remove it"
        ));
    }
    if value
        .trim_start_matches([' ', '\t'])
        .starts_with(['"', '\''])
    {
        w.push(format!(
            "the value of {key} starts with a quote: systemd removes quotes (and an unclosed one takes the \
             lines after it) and ecs-init keeps them; write the value without quotes (values are taken \
             literally)"
        ));
    }
    if value.contains('\\') {
        w.push(format!(
            "the value of {key} has a backslash: systemd reads it as an escape (at the end of the value, as \
             a line continuation that takes the next line) and ecs-init keeps it; avoid backslashes"
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        w.push(format!(
            "the value of {key} has control characters (systemd before v254 drops such a variable)"
        ));
    }
    w
}

/// Warning for a key the agent does not read, with the nearest known key.
pub(crate) fn unknown_key_message(key: &str) -> Option<String> {
    if keys::is_known(key) {
        return None;
    }
    Some(match keys::suggest(key) {
        Some(s) => format!("unknown key {key}: did you mean {s}?"),
        None => format!(
            "unknown key {key}: the ECS agent does not read it (a typo, or a newer agent's setting?)"
        ),
    })
}

/// Parses and validates the source. Errors stop the write; warnings do not (unless strict, see
/// [`escalate`]).
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut findings = Vec::new();
    let Some(text) = decode(bytes, &mut findings) else {
        return Parsed {
            entries: Vec::new(),
            findings,
        };
    };
    let mut lines = Lines {
        html: text.trim_start().starts_with('<'),
        seen: BTreeMap::new(),
        findings,
        value_findings: Vec::new(),
    };
    let entries: Vec<Entry> = text
        .split('\n')
        .enumerate()
        .filter_map(|(i, raw)| lines.line(i + 1, raw))
        .collect();
    let last: BTreeSet<usize> = entries
        .iter()
        .map(|e| lines.seen.get(&e.key).copied().unwrap_or(e.line))
        .collect();
    let mut findings = lines.findings;
    findings.extend(
        lines
            .value_findings
            .into_iter()
            .filter(|f| matches!(f.at, At::Line(n) if last.contains(&n))),
    );
    findings.sort_by_key(|f| match f.at {
        At::Line(n) => n,
        _ => usize::MAX,
    });
    Parsed { entries, findings }
}

/// The source as text, without a BOM; `None` (with the error in `findings`) when it is not
/// text.
fn decode<'a>(bytes: &'a [u8], findings: &mut Vec<Finding>) -> Option<&'a str> {
    if let Some(pos) = bytes.iter().position(|b| *b == 0) {
        findings.push(error(
            At::Line(line_of(bytes, pos)),
            "NUL byte: the object is binary, not ecs.config text (a wrong object uploaded?)",
        ));
        return None;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            findings.push(error(
                At::Line(line_of(bytes, e.valid_up_to())),
                "not UTF-8 text: ecs.config must be plain UTF-8 (a binary or a file in another encoding?)",
            ));
            return None;
        }
    };
    Some(match text.strip_prefix('\u{feff}') {
        Some(t) => {
            findings.push(warning(
                At::Line(1),
                "a byte order mark (BOM) starts the file; it is removed",
            ));
            t
        }
        None => text,
    })
}

/// The line-by-line part of [`parse`].
struct Lines {
    /// The source looks like an HTML page: errors say so.
    html: bool,
    /// Each key's last line.
    seen: BTreeMap<String, usize>,
    findings: Vec<Finding>,
    /// Warnings about how a value reads; only the value that is written (a key's last line)
    /// keeps them.
    value_findings: Vec<Finding>,
}

impl Lines {
    /// Line `n`: its entry, if it is a valid setting.
    fn line(&mut self, n: usize, raw: &str) -> Option<Entry> {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            return None;
        }
        // As ecs-init reads a line: trimmed (Unicode whitespace), split at the first `=`. So
        // blanks before the key and after the value are not part of either (systemd also skips
        // spaces and tabs there), and what is written is what ecs-init reads.
        let ends_odd = line
            .trim_end_matches([' ', '\t'])
            .ends_with(|c: char| c.is_whitespace());
        let hint = if self.html {
            format!("; {HTML_HINT}")
        } else {
            String::new()
        };
        let Some((key, value)) = t.split_once('=') else {
            self.findings.push(error(
                At::Line(n),
                format!("no `=`: expected KEY=VALUE{hint}"),
            ));
            return None;
        };
        if !valid_key(key) {
            self.findings.push(error(
                At::Line(n),
                format!("{}{hint}", bad_key_message(key)),
            ));
            return None;
        }
        if value.contains('\r') {
            // One CR before the LF is a CRLF line end and is gone by now; another one would be
            // kept by ecs-init but dropped by systemd (and by us when read back): the two
            // parsers would disagree, and every boot would see the value as changed.
            self.findings.push(error(
                At::Line(n),
                format!(
                    "the value of {key} holds a carriage return (CR): ecs-init would keep it and systemd \
                     would not; save the file with LF (or CRLF) line ends and no other CR"
                ),
            ));
            return None;
        }
        self.warn(n, key, value, ends_odd);
        Some(Entry {
            key: key.to_owned(),
            value: value.to_owned(),
            line: n,
        })
    }

    /// The warnings of a valid line `n`.
    fn warn(&mut self, n: usize, key: &str, value: &str, ends_odd: bool) {
        if ends_odd {
            self.value_findings.push(warning(
                At::Line(n),
                format!(
                    "the value of {key} ends in whitespace other than spaces and tabs (a vertical tab or a \
                     Unicode space): ecs-init drops it and systemd keeps it; it is removed, as ecs-init reads it"
                ),
            ));
        }
        if let Some(m) = unknown_key_message(key) {
            self.findings.push(warning(At::Line(n), m));
        }
        if let Some(first) = self.seen.insert(key.to_owned(), n) {
            self.findings.push(warning(
                At::Line(n),
                format!("{key} is also set on line {first}; the last one (line {n}) wins"),
            ));
        }
        for w in value_warnings(key, value) {
            self.value_findings.push(warning(At::Line(n), w));
        }
    }
}

/// The finding for a source without a single setting (0 bytes, or only comments and blank
/// lines): an error unless `allow_empty`. Written, it would make the ECS agent start with its
/// defaults (cluster `default`, no registry authentication, no task roles).
pub(crate) fn no_settings(allow_empty: bool) -> Finding {
    if allow_empty {
        warning(
            At::File,
            "the source has no settings (--allow-empty): the ECS agent will use its defaults (cluster `default`)",
        )
    } else {
        error(
            At::File,
            "the source has no settings (empty, or only comments): written, it would make the ECS agent start \
             with its defaults (cluster `default`, no registry authentication, no task IAM roles); upload the \
             config (a truncated or wrong upload?), or pass --allow-empty if an empty ecs.config is meant",
        )
    }
}

/// Under `--strict`, warnings become errors.
pub(crate) fn escalate(findings: &mut [Finding], strict: bool) {
    if strict {
        for f in findings {
            f.severity = Severity::Error;
        }
    }
}

/// A `--set KEY=VALUE` argument. Its `Debug` hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SetArg {
    pub key: String,
    pub value: String,
}

impl fmt::Debug for SetArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SetArg({}=<hidden>)", self.key)
    }
}

/// Parses a `--set` argument; the error never echoes the value.
pub(crate) fn parse_set(arg: &str) -> Result<SetArg, String> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(format!(
            "--set expects KEY=VALUE (no `=` in the argument), for example --set ECS_CLUSTER=prod; keys must match {KEY_SYNTAX}"
        ));
    };
    if !valid_key(key) {
        return Err(format!("--set: {}", bad_key_message(key)));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(format!(
            "--set {key}: the value has a line break or NUL byte, which ecs.config cannot hold"
        ));
    }
    Ok(SetArg {
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

/// Applies `--set` arguments over `cfg`, returning findings (unknown keys, odd values).
pub(crate) fn apply_sets(cfg: &mut Config, sets: &[SetArg]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut warned = BTreeSet::new();
    for s in sets {
        // As ecs-init reads the written line: no trailing whitespace.
        let s = &SetArg {
            key: s.key.clone(),
            value: s.value.trim_end().to_owned(),
        };
        if warned.insert(s.key.clone()) {
            if let Some(m) = unknown_key_message(&s.key) {
                findings.push(warning(At::Set(s.key.clone()), m));
            }
            for w in value_warnings(&s.key, &s.value) {
                findings.push(warning(At::Set(s.key.clone()), w));
            }
        }
        cfg.set(&s.key, &s.value);
    }
    findings
}

/// Findings for keys that ecs-init and systemd would read differently in the rendered `cfg`
/// (as ported in [`super::readers`]) and that no per-value warning names yet: the keys whose
/// line systemd reads as part of an earlier value (an unclosed quote or a trailing backslash
/// there takes the following lines). Every key affected is named, never a value.
pub(crate) fn reader_findings(cfg: &Config, already: &BTreeSet<String>) -> Vec<Finding> {
    let text = cfg.render();
    let mut out = Vec::new();
    let order: Vec<&str> = cfg.keys().collect();
    // A value systemd may read on past its line from: a quote it opens, a backslash.
    let may_continue =
        |v: &str| v.trim_start_matches([' ', '\t']).starts_with(['"', '\'']) || v.contains('\\');
    let systemd = super::readers::systemd(&text);
    for key in super::readers::disagreements(&text) {
        let pos = order.iter().position(|k| *k == key).unwrap_or(0);
        // Taken into an earlier value: systemd does not set it at all.
        let culprit = order[..pos]
            .iter()
            .rev()
            .find(|k| may_continue(cfg.get(k).unwrap_or_default()))
            .filter(|_| !systemd.contains_key(&key));
        if culprit.is_none() && already.contains(&key) {
            continue;
        }
        let why = match culprit {
            Some(c) => format!(
                "systemd reads the line of {key} as part of the value of {c} before it (a quote it opens or a \
                 backslash at its end), so ecs.service's EnvironmentFile= does not set {key} as ecs-init does; \
                 fix the value of {c}"
            ),
            None => format!("ecs-init and systemd read {key} differently"),
        };
        out.push(warning(At::File, why));
    }
    out
}

#[cfg(test)]
mod cr_tests {
    use super::*;

    #[test]
    fn a_cr_left_in_a_value_is_an_error_naming_the_line() {
        // A line ending in CR CR LF: both readers drop the CR at the end of the value (ecs-init trims it, systemd ends the line there), and so do we.
        let p = parse(b"ECS_CLUSTER=a\r\nR=&\r\r\n");
        assert!(!p.has_errors(), "{:?}", p.findings);
        assert_eq!(Config::from_entries(&p.entries).get("R"), Some("&"));
        // A CR inside a value: systemd ends the line there, ecs-init keeps it.
        let p = parse(b"ECS_CLUSTER=a\r\nR=&\rx\r\n");
        assert!(p.has_errors());
        let msg = format!("{:?}", p.findings);
        assert!(msg.contains("carriage return"), "{msg}");
        assert!(!msg.contains('&'), "no value in messages: {msg}");
        // A plain CRLF file is fine.
        assert!(!parse(b"ECS_CLUSTER=a\r\nECS_LOGLEVEL=info\r\n").has_errors());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msgs(p: &Parsed, sev: Severity) -> Vec<String> {
        p.findings
            .iter()
            .filter(|f| f.severity == sev)
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn key_syntax() {
        for k in ["A", "_", "ECS_CLUSTER", "A1_B2", "_X"] {
            assert!(valid_key(k), "{k}");
        }
        for k in ["", "a", "1A", "A-B", "A B", "É", "A.B", " A"] {
            assert!(!valid_key(k), "{k}");
        }
    }

    #[test]
    fn parses_comments_blanks_crlf_and_normalises() {
        let p = parse(
            b"# comment\n\n  ; other\r\nECS_CLUSTER=prod\r\nECS_LOGLEVEL=debug\nECS_CLUSTER=x=y\n",
        );
        assert_eq!(msgs(&p, Severity::Error), Vec::<String>::new());
        assert_eq!(p.entries.len(), 3);
        assert_eq!(p.entries[0].line, 4);
        let c = Config::from_entries(&p.entries);
        assert_eq!(c.render(), "ECS_CLUSTER=x=y\nECS_LOGLEVEL=debug\n");
        let w = msgs(&p, Severity::Warning);
        assert_eq!(
            w,
            vec!["line 6: ECS_CLUSTER is also set on line 4; the last one (line 6) wins"]
        );
    }

    #[test]
    fn empty_value_is_fine() {
        let p = parse(b"ECS_RESERVED_PORTS=\n");
        assert!(p.findings.is_empty(), "{:?}", p.findings);
        assert_eq!(
            Config::from_entries(&p.entries).get("ECS_RESERVED_PORTS"),
            Some("")
        );
    }

    #[test]
    fn errors_name_the_line() {
        let p = parse(b"ECS_CLUSTER=a\nno equals here\necs_cluster=b\n export ECS_LOGLEVEL=info\nECS_CLUSTER =c\n=x\n9A=1\n");
        let e = msgs(&p, Severity::Error);
        assert_eq!(e.len(), 6, "{e:?}");
        assert!(e[0].starts_with("line 2: no `=`"), "{}", e[0]);
        assert!(
            e[1].starts_with("line 3: invalid key") && e[1].contains("did you mean ECS_CLUSTER?"),
            "{}",
            e[1]
        );
        assert!(
            e[2].starts_with("line 4: ") && e[2].contains("remove `export `"),
            "{}",
            e[2]
        );
        assert!(
            e[3].starts_with("line 5: ") && e[3].contains("remove the spaces around ECS_CLUSTER"),
            "{}",
            e[3]
        );
        assert!(
            e[4].starts_with("line 6: ") && e[4].contains("starts with `=`"),
            "{}",
            e[4]
        );
        assert!(
            e[5].starts_with("line 7: ") && e[5].contains("leading digit"),
            "{}",
            e[5]
        );
        assert!(
            e.iter()
                .all(|m| m.contains(KEY_SYNTAX) || m.contains("KEY=VALUE"))
        );
    }

    #[test]
    fn bad_key_is_not_echoed_unless_fixable() {
        // Base64 padding makes a secret look like KEY=: the text before `=` must not be shown.
        let p = parse(b"  \"auth\": \"dXNlcjpwYXNzd29yZA==\"\n");
        let e = msgs(&p, Severity::Error);
        assert_eq!(e.len(), 1);
        assert!(!e[0].contains("dXNlcjpwYXNzd29yZA"), "{}", e[0]);
    }

    #[test]
    fn nul_and_non_utf8_are_errors_with_line() {
        let p = parse(b"ECS_CLUSTER=a\nB=\0\n");
        assert_eq!(msgs(&p, Severity::Error).len(), 1);
        assert!(msgs(&p, Severity::Error)[0].starts_with("line 2: NUL byte"));
        let p = parse(b"A=1\n\nECS_CLUSTER=\xff\xfe\n");
        let e = msgs(&p, Severity::Error);
        assert!(e[0].starts_with("line 3: not UTF-8"), "{e:?}");
        assert!(p.entries.is_empty());
    }

    #[test]
    fn html_error_page_is_named() {
        let p = parse(b"<!DOCTYPE html>\n<html lang=\"en\"><body>Forbidden</body></html>\n");
        let e = msgs(&p, Severity::Error);
        assert_eq!(e.len(), 2);
        assert!(
            e[0].starts_with("line 1:") && e[0].contains("looks like HTML"),
            "{}",
            e[0]
        );
        assert!(
            e[1].starts_with("line 2:") && e[1].contains("looks like HTML"),
            "{}",
            e[1]
        );
    }

    #[test]
    fn unknown_key_suggests() {
        let p = parse(b"ECS_CLUSTR=prod\nMY_OWN_THING=1\n");
        let w = msgs(&p, Severity::Warning);
        assert_eq!(
            w[0],
            "line 1: unknown key ECS_CLUSTR: did you mean ECS_CLUSTER?"
        );
        assert!(
            w[1].starts_with("line 2: unknown key MY_OWN_THING: the ECS agent does not read it")
        );
        assert!(!p.has_errors());
    }

    #[test]
    fn ambiguous_values_warn() {
        let p = parse(b"ECS_CLUSTER=\"prod\"\nECS_LOGLEVEL='x'\nECS_DATADIR=C:\\data\nECS_LOGFILE= /x \nECS_ENGINE_AUTH_DATA=\"s3cr3t\\v\"\n");
        let w = msgs(&p, Severity::Warning);
        assert_eq!(w.len(), 6, "{w:?}");
        assert!(w[0].starts_with("line 1: the value of ECS_CLUSTER starts with a quote"));
        assert!(w[1].starts_with("line 2: the value of ECS_LOGLEVEL starts with a quote"));
        assert!(w[2].starts_with("line 3: the value of ECS_DATADIR has a backslash"));
        assert!(w[3].starts_with("line 4: the value of ECS_LOGFILE starts with whitespace"));
        assert!(w.iter().all(|m| !m.contains("s3cr3t")));
        // The values are kept as they are.
        let c = Config::from_entries(&p.entries);
        assert_eq!(c.get("ECS_CLUSTER"), Some("\"prod\""));
    }

    #[test]
    fn empty_source_has_no_entries_and_strict_escalates() {
        let p = parse(b"# nothing\n\n");
        assert!(!p.has_errors());
        assert!(p.entries.is_empty());
        assert_eq!(no_settings(false).severity, Severity::Error);
        assert_eq!(no_settings(true).severity, Severity::Warning);
        let mut q = parse(b"ECS_CLUSTR=x\n");
        escalate(&mut q.findings, false);
        assert!(!q.has_errors());
        escalate(&mut q.findings, true);
        assert!(q.has_errors());
    }

    #[test]
    fn bom_is_removed() {
        let p = parse("\u{feff}ECS_CLUSTER=a\n".as_bytes());
        assert!(!p.has_errors());
        assert_eq!(p.entries[0].key, "ECS_CLUSTER");
    }

    #[test]
    fn sets_parse_and_apply() {
        assert_eq!(
            parse_set("ECS_CLUSTER=a=b").unwrap(),
            SetArg {
                key: "ECS_CLUSTER".into(),
                value: "a=b".into()
            }
        );
        let e = parse_set("hunter2secret").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("KEY=VALUE"));
        assert!(
            parse_set("ecs cluster=x")
                .unwrap_err()
                .contains("invalid key")
        );
        assert!(parse_set("A=x\ny").is_err());
        let s = parse_set("ECS_ENGINE_AUTH_DATA=topsecret").unwrap();
        assert!(!format!("{s:?}").contains("topsecret"));

        let mut c = Config::from_entries(&parse(b"ECS_CLUSTER=a\nECS_LOGLEVEL=info\n").entries);
        let f = apply_sets(
            &mut c,
            &[
                parse_set("ECS_CLUSTER=prod").unwrap(),
                parse_set("ECS_CLUSTR=oops").unwrap(),
            ],
        );
        assert_eq!(
            c.render(),
            "ECS_CLUSTER=prod\nECS_LOGLEVEL=info\nECS_CLUSTR=oops\n"
        );
        assert_eq!(f.len(), 1);
        assert_eq!(
            f[0].to_string(),
            "--set ECS_CLUSTR: unknown key ECS_CLUSTR: did you mean ECS_CLUSTER?"
        );
    }

    #[test]
    fn diff_names_keys_only() {
        let old = Config::from_entries(&parse(b"A_=1\nB_=2\nC_=3\n").entries);
        let new = Config::from_entries(&parse(b"B_=2\nC_=4\nD_=5\n").entries);
        let d = diff(&old, &new);
        assert_eq!(d.added, vec!["D_"]);
        assert_eq!(d.changed, vec!["C_"]);
        assert_eq!(d.removed, vec!["A_"]);
        assert_eq!(diff(&new, &new), Diff::default());
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Z_][A-Z0-9_]{0,20}",
            proptest::sample::select(keys::known().to_vec()).prop_map(str::to_owned),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        // Anything a line can hold: no line breaks, no NUL, no trailing CR.
        "[^\n\r\0]{0,40}"
    }

    proptest! {
        #[test]
        fn parse_render_roundtrip(entries in proptest::collection::vec((key(), value()), 0..12)) {
            let mut c = Config::default();
            for (k, v) in &entries {
                c.set(k, v);
            }
            let p = parse(c.render().as_bytes());
            prop_assert!(!p.has_errors(), "{:?}", p.findings);
            // A value is what ecs-init reads from its line: without trailing whitespace.
            let mut c2 = Config::default();
            for k in c.keys() {
                c2.set(k, c.get(k).unwrap_or_default().trim_end());
            }
            let c = c2;
            prop_assert_eq!(Config::from_entries(&p.entries), c.clone());
            // Rendering is a fixed point.
            prop_assert_eq!(Config::from_entries(&p.entries).render(), c.render());
        }

        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let p = parse(&bytes);
            for f in &p.findings {
                let _ = f.to_string();
            }
        }

        #[test]
        fn never_panics_on_text(text in "(?s).{0,300}") {
            let _ = parse(text.as_bytes());
            let _ = parse_set(&text);
        }

        #[test]
        fn no_secret_value_in_any_message(
            noise in proptest::collection::vec((key(), value()), 0..6),
            secret in "[A-Za-z0-9+/\"'{}:,_-][A-Za-z0-9+/=\"'\\\\ {}:,_-]{10,38}[A-Za-z0-9+/=}]",
            secret_key in proptest::sample::select(vec!["ECS_ENGINE_AUTH_DATA", "HTTP_PROXY", "HTTPS_PROXY", "MY_TOKEN", "DB_PASSWORD"]),
            garbage in proptest::collection::vec("[^\n]{0,30}", 0..4),
            dup in any::<bool>(),
        ) {
            let mut text = String::new();
            for (k, v) in &noise {
                text.push_str(&format!("{k}={v}\n"));
            }
            text.push_str(&format!("{secret_key}={secret}\n"));
            if dup {
                text.push_str(&format!("{secret_key}={secret}\n"));
            }
            // Broken lines holding the secret: a bare secret line, and one with a bad key.
            text.push_str(&format!("{secret}\n"));
            text.push_str(&format!("bad key {secret}={secret}\n"));
            for g in &garbage {
                text.push_str(g);
                text.push('\n');
            }
            let mut p = parse(text.as_bytes());
            escalate(&mut p.findings, true);
            for f in &p.findings {
                let m = f.to_string();
                prop_assert!(!m.contains(secret.trim()), "{m}");
            }
            let e = parse_set(&secret).err().unwrap_or_default();
            prop_assert!(!e.contains(secret.trim()), "{e}");
        }
    }
}

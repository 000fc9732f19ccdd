//! Ports of the two programs that read ecs.config, so that what we write can be checked to mean
//! the same to both (and the keys where it does not can be named). Pure.
//!
//! - [`ecs_init`]: how ecs-init hands the file to the ECS agent's container.
//! - [`systemd`]: how `EnvironmentFile=/etc/ecs/ecs.config` of ecs.service reads it.

use std::collections::BTreeMap;

/// ecs-init's reader: amazon-ecs-agent, `ecs-init/docker/docker.go`, `(*client).getEnvVars`:
///
/// ```go
/// lines := strings.Split(strings.TrimSpace(string(file)), "\n")
/// for _, line := range lines {
///     parts := strings.SplitN(strings.TrimSpace(line), "=", 2)
///     if len(parts) != 2 { continue }
///     envVariables[parts[0]] = parts[1]
/// }
/// ```
///
/// Go's `strings.TrimSpace` trims what `unicode.IsSpace` calls space, the Unicode White_Space
/// set, which is what Rust's `str::trim` trims. No comments, no quotes, no escapes; the last
/// line of a key wins.
pub fn ecs_init(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.trim().split('\n') {
        if let Some((k, v)) = line.trim().split_once('=') {
            out.insert(k.to_owned(), v.to_owned());
        }
    }
    out
}

/// systemd's reader for `EnvironmentFile=`: `src/basic/env-file.c`, `parse_env_file_internal`
/// (the state machine, v254 and later for a comment ending in a backslash) with
/// `load_env_file_push` (a key without a value is `KEY=`; the last assignment wins), then the
/// executor's `strv_env_clean`, which drops assignments whose name fails `env_name_is_valid`
/// (`src/basic/env-util.c`: letters, digits and `_`, not starting with a digit).
/// `WHITESPACE` is `" \t\n\r"`, `NEWLINE` `"\n\r"`, `COMMENTS` `"#;"`, `SHELL_NEED_ESCAPE`
/// `"\"\\`$"`.
// Long because it follows systemd's state machine state by state, so that the two can be read
// side by side; split, it would no longer match its source.
#[allow(clippy::too_many_lines)]
pub fn systemd(text: &str) -> BTreeMap<String, String> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum S {
        PreKey,
        Key,
        PreValue,
        Value,
        ValueEscape,
        SingleQuote,
        DoubleQuote,
        DoubleQuoteEscape,
        Comment,
        CommentEscape,
    }
    const WS: &[char] = &[' ', '\t', '\n', '\r'];
    const NL: &[char] = &['\n', '\r'];
    let mut out = BTreeMap::new();
    let mut push = |key: &str, value: &str| {
        if name_is_valid(key) {
            out.insert(key.to_owned(), value.to_owned());
        }
    };
    let (mut key, mut value) = (String::new(), String::new());
    // Byte lengths at which trailing whitespace started (SIZE_MAX in C: None).
    let (mut key_ws, mut value_ws): (Option<usize>, Option<usize>) = (None, None);
    let mut state = S::PreKey;
    for c in text.chars() {
        match state {
            S::PreKey => {
                if c == '#' || c == ';' {
                    state = S::Comment;
                } else if !WS.contains(&c) {
                    state = S::Key;
                    key_ws = None;
                    key.push(c);
                }
            }
            S::Key => {
                if NL.contains(&c) {
                    state = S::PreKey;
                    key.clear();
                } else if c == '=' {
                    state = S::PreValue;
                    value_ws = None;
                } else {
                    if !WS.contains(&c) {
                        key_ws = None;
                    } else if key_ws.is_none() {
                        key_ws = Some(key.len());
                    }
                    key.push(c);
                }
            }
            S::PreValue => {
                if NL.contains(&c) {
                    state = S::PreKey;
                    if let Some(n) = key_ws {
                        key.truncate(n);
                    }
                    push(&key, &value);
                    key.clear();
                    value.clear();
                } else if c == '\'' {
                    state = S::SingleQuote;
                } else if c == '"' {
                    state = S::DoubleQuote;
                } else if c == '\\' {
                    state = S::ValueEscape;
                } else if !WS.contains(&c) {
                    state = S::Value;
                    value.push(c);
                }
            }
            S::Value => {
                if NL.contains(&c) {
                    state = S::PreKey;
                    if let Some(n) = value_ws {
                        value.truncate(n);
                    }
                    if let Some(n) = key_ws {
                        key.truncate(n);
                    }
                    push(&key, &value);
                    key.clear();
                    value.clear();
                } else if c == '\\' {
                    state = S::ValueEscape;
                    value_ws = None;
                } else {
                    if !WS.contains(&c) {
                        value_ws = None;
                    } else if value_ws.is_none() {
                        value_ws = Some(value.len());
                    }
                    value.push(c);
                }
            }
            S::ValueEscape => {
                state = S::Value;
                if !NL.contains(&c) {
                    value.push(c);
                }
            }
            S::SingleQuote => {
                if c == '\'' {
                    state = S::PreValue;
                } else {
                    value.push(c);
                }
            }
            S::DoubleQuote => {
                if c == '"' {
                    state = S::PreValue;
                } else if c == '\\' {
                    state = S::DoubleQuoteEscape;
                } else {
                    value.push(c);
                }
            }
            S::DoubleQuoteEscape => {
                state = S::DoubleQuote;
                if "\"\\`$".contains(c) {
                    value.push(c);
                } else if c != '\n' {
                    value.push('\\');
                    value.push(c);
                }
            }
            S::Comment => {
                if c == '\\' {
                    state = S::CommentEscape;
                } else if NL.contains(&c) {
                    state = S::PreKey;
                }
            }
            S::CommentEscape => {
                state = if NL.contains(&c) {
                    S::PreKey
                } else {
                    S::Comment
                };
            }
        }
    }
    if matches!(
        state,
        S::PreValue
            | S::Value
            | S::ValueEscape
            | S::SingleQuote
            | S::DoubleQuote
            | S::DoubleQuoteEscape
    ) {
        if state == S::Value
            && let Some(n) = value_ws
        {
            value.truncate(n);
        }
        if let Some(n) = key_ws {
            key.truncate(n);
        }
        push(&key, &value);
    }
    out
}

/// systemd's `env_name_is_valid`: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn name_is_valid(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Keys whose value the two readers see differently in `text` (present in one and not the
/// other, or with different values), in name order.
pub(crate) fn disagreements(text: &str) -> Vec<String> {
    let a = ecs_init(text);
    let b = systemd(text);
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| name_is_valid(k) && a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ecs_init_trims_lines_and_splits_at_the_first_equals() {
        assert_eq!(
            ecs_init("  A=x=y \n# c=1\nB\nC= v\u{a0}\r\n"),
            m(&[("A", "x=y"), ("# c", "1"), ("C", " v")])
        );
    }

    #[test]
    fn systemd_unquotes_escapes_and_continues_lines() {
        assert_eq!(
            systemd("  A=x=y \n# c=1\nB\nC= v\u{a0}\r\nD=\"q\\\"\"\nE='s'\nF=a\\b\n"),
            m(&[
                ("A", "x=y"),
                ("C", "v\u{a0}"),
                ("D", "q\""),
                ("E", "s"),
                ("F", "ab")
            ])
        );
        // An unbalanced quote or a trailing backslash takes the next lines.
        assert_eq!(systemd("A=\"x\nB=1\nC=\"\n"), m(&[("A", "x\nB=1\nC=")]));
        assert_eq!(systemd("A=x\\\nB=1\n"), m(&[("A", "xB=1")]));
        assert_eq!(disagreements("A=x\\\nB=1\n"), ["A", "B"]);
        // Lower-case names pass; invalid ones are dropped.
        assert_eq!(
            systemd("no_proxy=a\n1X=2\nK EY=3\n"),
            m(&[("no_proxy", "a")])
        );
        // Vertical tab is not systemd's whitespace.
        assert_eq!(systemd("A=x\u{b}\n"), m(&[("A", "x\u{b}")]));
        assert_eq!(ecs_init("A=x\u{b}\n"), m(&[("A", "x")]));
    }
}

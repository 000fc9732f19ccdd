//! Where each flag's value comes from when the command line does not give it: the environment
//! (`ECS_BOOTSTRAP_*`), then the settings file `/etc/ecs-bootstrap/env`, then the built-in
//! default; and what to do with a value that is not valid.
//!
//! Rules (README, "Settings"):
//! - A value is checked only where it matters: a bad value of a setting that the command does
//!   not use, or that its command line overrides, is a warning and is ignored. A bad value the
//!   command uses is a usage error (exit 2), except for `block-imds`, which uses the built-in
//!   default for it and says so as an error: the docker.service drop-in runs it on every dockerd
//!   start, and a bad setting must not stop Docker when the block can still be asserted.
//! - Booleans accept `1/0`, `true/false`, `yes/no`, `on/off` (any case).
//! - An empty value means "not set".
//! - Duplicates: every `ECS_BOOTSTRAP_SET` line applies, in file order; for any other name the
//!   last line wins (as in systemd) and the earlier ones are named in a warning.
//! - The systemd units also load the file with `EnvironmentFile=`, so under systemd the file's
//!   values arrive in the environment too. A variable whose value is exactly the file's value
//!   for that name is taken to come from the file (its line is named, the file's trust applies,
//!   and all its `SET` lines apply).
//! - The file names programs that run as root (`--iptables`) and where ecs.config comes from,
//!   so it is trusted only when root owns it and neither group nor others may write it. An
//!   untrusted file fails the config step (exit 2, with the command that fixes it); every other
//!   command ignores the file, uses the built-in defaults, and says so as an error. Under
//!   systemd the untrusted file's values still arrive as environment, parsed by systemd's rules
//!   (line continuations, quotes, backslashes), which need not give the value we would parse:
//!   so every variable whose name occurs anywhere in an untrusted file is ignored, whatever its
//!   value. A file that is not UTF-8 text is untrusted too (its lines cannot be judged).
//!
//! Messages name the setting, its line and the reason, never the value: a value may be a
//! secret (`ECS_BOOTSTRAP_SET=ECS_ENGINE_AUTH_DATA=...`).

use super::envfile::{self, EnvFile};
use crate::error::UsageError;
use crate::sys::Root;
use clap::{Arg, ArgAction, ArgMatches};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub(crate) use super::cli::SETTINGS_FILE;

const SET: &str = "ECS_BOOTSTRAP_SET";
/// Read before the file (the file lives under the root), so the file cannot set it.
const ROOT: &str = "ECS_BOOTSTRAP_ROOT";

/// The settings file as found on disk.
#[derive(Debug, Clone)]
pub(crate) enum FileState {
    Absent,
    Trusted(EnvFile),
    /// Not used. `raw` is its content when readable: a variable whose name occurs in it may
    /// have come from it (systemd's `EnvironmentFile=`) and is ignored too.
    Untrusted {
        reason: String,
        fix: String,
        raw: Option<Vec<u8>>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct SettingsFile {
    pub(crate) path: PathBuf,
    pub(crate) state: FileState,
}

impl SettingsFile {
    pub(crate) fn load(root: &Root) -> SettingsFile {
        let path = root.join(SETTINGS_FILE);
        let state = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileState::Absent,
            Err(e) => FileState::Untrusted {
                reason: format!("it cannot be read ({e})"),
                fix: "make it a readable regular file owned by root, mode 0600".into(),
                raw: None,
            },
            Ok(meta) => {
                let perms_fix = format!(
                    "`chown root:root {p} && chmod 600 {p}` once its content is checked",
                    p = path.display()
                );
                // Whoever may write the folder may replace the file.
                let problem = trust_problem(&meta).or_else(|| {
                    let dir = path.parent()?;
                    let m = std::fs::metadata(dir).ok()?;
                    folder_trust_problem(&m).map(|p| format!("its folder {}: {p}", dir.display()))
                });
                match (problem, std::fs::read(&path)) {
                    (_, Err(e)) => FileState::Untrusted {
                        reason: format!("it cannot be read ({e})"),
                        fix: "make it a readable regular file owned by root, mode 0600".into(),
                        raw: None,
                    },
                    (Some(reason), Ok(raw)) => FileState::Untrusted {
                        fix: match path.parent() {
                            Some(dir) if reason.starts_with("its folder") => format!(
                                "`chown root:root {d} && chmod 755 {d}`, then check the files in it",
                                d = dir.display()
                            ),
                            _ => perms_fix,
                        },
                        reason,
                        raw: Some(raw),
                    },
                    (None, Ok(raw)) => match String::from_utf8(raw) {
                        Ok(text) => FileState::Trusted(envfile::parse(&text)),
                        Err(e) => {
                            let at = e.utf8_error().valid_up_to();
                            let line =
                                e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
                            FileState::Untrusted {
                                reason: format!("it is not UTF-8 text (line {line})"),
                                fix: format!(
                                    "rewrite line {line} as plain KEY=VALUE text (UTF-8) and check the rest of the file"
                                ),
                                raw: Some(e.into_bytes()),
                            }
                        }
                    },
                }
            }
        };
        SettingsFile { path, state }
    }

    /// Whether the environment's value of `name` may have come from an untrusted file: its
    /// name occurs in the file's bytes (whatever systemd made of the line), or the file could
    /// not be read at all.
    fn untrusted_names(&self, name: &str) -> bool {
        match &self.state {
            FileState::Untrusted { raw: Some(raw), .. } => {
                raw.windows(name.len()).any(|w| w == name.as_bytes())
            }
            FileState::Untrusted { raw: None, .. } => true,
            _ => false,
        }
    }

    fn trusted(&self) -> Option<&EnvFile> {
        match &self.state {
            FileState::Trusted(f) => Some(f),
            _ => None,
        }
    }
}

/// Why a file with this metadata must not be trusted, if it must not.
pub(crate) fn trust_problem(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    if !meta.is_file() {
        return Some("it is not a regular file".into());
    }
    let mut why = Vec::new();
    if meta.uid() != 0 {
        why.push(format!("it is owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        why.push(format!(
            "group or others may write it (mode {:04o})",
            meta.mode() & 0o7777
        ));
    }
    (!why.is_empty()).then(|| why.join(" and "))
}

/// Why a folder holding the file must not be trusted: someone other than root may replace
/// files in it (a sticky folder such as /tmp lets only the owner of a file replace it).
pub(crate) fn folder_trust_problem(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    if meta.uid() != 0 {
        return Some(format!("owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
        return Some(format!(
            "group or others may write it (mode {:04o})",
            meta.mode() & 0o7777
        ));
    }
    None
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    Env(String),
    File {
        path: PathBuf,
        line: usize,
        name: String,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::File { path, line, name } => {
                write!(f, "{name} on line {line} of {}", path.display())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Warn,
    Error,
}

/// A message to log once logging is set up. Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Note {
    pub(crate) level: Level,
    pub(crate) message: String,
}

/// A value that the flag it is meant for does not accept.
#[derive(Debug, Clone)]
struct Invalid {
    env: String,
    origin: Origin,
    reason: String,
}

/// The clap command with the settings applied as defaults, and what is left to judge once the
/// command line is parsed.
pub(crate) struct Prepared {
    pub(crate) cmd: clap::Command,
    invalid: Vec<Invalid>,
    notes: Vec<Note>,
    /// Lines of the file that could not be read: which setting they meant is unknown.
    bad_lines: Vec<String>,
    /// The argument id that reads each variable (the same id wherever the argument appears).
    ids: BTreeMap<String, String>,
    /// Where each applied value came from, by argument id, with the argument's flag.
    applied: BTreeMap<String, (String, Origin)>,
    /// Why the file is not trusted, and what fixes it.
    untrusted: Option<(String, String)>,
    path: PathBuf,
}

/// One value per name, or for `SET` every line.
#[derive(Debug, Clone)]
struct Layered {
    values: Vec<String>,
    origin: Origin,
}

/// Builds the command: every argument's environment variable is resolved here (environment,
/// then trusted file) and applied as the argument's default, so clap's own precedence puts the
/// command line first; values the argument does not accept are left out and judged later.
pub(crate) fn prepare(
    cmd: clap::Command,
    file: &SettingsFile,
    env: impl Fn(&str) -> Option<String>,
) -> Prepared {
    let untrusted = match &file.state {
        FileState::Untrusted { reason, fix, .. } => Some((reason.clone(), fix.clone())),
        _ => None,
    };
    // Every name some argument reads.
    let mut names = BTreeSet::new();
    collect_env_names(&cmd, &mut names);
    let mut notes = Vec::new();
    let layered = layer(&names, file, env, &mut notes);
    let bad_lines = file
        .trusted()
        .map(|f| {
            f.bad_lines
                .iter()
                .map(|bad| format!("settings file {} {bad}", file.path.display()))
                .collect()
        })
        .unwrap_or_default();
    notes.extend(file_notes(file, &names));

    let mut invalid: Vec<Invalid> = Vec::new();
    let mut judged = BTreeSet::new();
    let mut ids = BTreeMap::new();
    let mut applied = BTreeMap::new();
    let mut apply = |arg: Arg| -> Arg {
        let Some(name) = arg.get_env().and_then(|e| e.to_str()).map(str::to_owned) else {
            return arg;
        };
        ids.insert(name.clone(), arg.get_id().as_str().to_owned());
        // The environment is resolved above; clap must not read it again.
        let arg = arg.env(None::<&'static str>);
        let Some(l) = layered.get(&name) else {
            return arg;
        };
        let mut values = Vec::new();
        for v in &l.values {
            match check_value(&arg, v) {
                Ok(mut vs) => values.append(&mut vs),
                Err(reason) => {
                    if judged.insert(name.clone()) {
                        invalid.push(Invalid {
                            env: name.clone(),
                            origin: l.origin.clone(),
                            reason,
                        });
                    }
                    return arg;
                }
            }
        }
        if let Some(long) = arg.get_long() {
            applied.insert(
                arg.get_id().as_str().to_owned(),
                (format!("--{long}"), l.origin.clone()),
            );
        }
        arg.default_values(values).required(false)
    };
    let mut cmd = cmd.mut_args(&mut apply);
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, |sub| sub.mut_args(&mut apply));
    }
    Prepared {
        cmd,
        invalid,
        notes,
        bad_lines,
        ids,
        applied,
        untrusted,
        path: file.path.clone(),
    }
}

/// Each name's value: the environment's, unless it equals the file's (systemd's
/// `EnvironmentFile=` copied it) or an untrusted file names it; else the trusted file's.
fn layer(
    names: &BTreeSet<String>,
    file: &SettingsFile,
    env: impl Fn(&str) -> Option<String>,
    notes: &mut Vec<Note>,
) -> BTreeMap<String, Layered> {
    let mut layered = BTreeMap::new();
    for name in names {
        if name == ROOT {
            continue;
        }
        let from_env = env(name).filter(|v| !v.is_empty());
        if from_env.is_some() && file.untrusted_names(name) {
            notes.push(Note {
                level: Level::Error,
                message: format!(
                    "{name} in the environment is ignored: the untrusted settings file {} names it, and \
                     systemd passes that file's values on as environment",
                    file.path.display()
                ),
            });
            continue;
        }
        let in_file = file.trusted().and_then(|f| f.last(name));
        // A variable equal to the file's value came from the file (systemd's EnvironmentFile=).
        let env_is_file = matches!((&from_env, in_file), (Some(v), Some(e)) if *v == e.value);
        match from_env {
            Some(v) if !env_is_file => {
                layered.insert(
                    name.clone(),
                    Layered {
                        values: vec![v],
                        origin: Origin::Env(name.clone()),
                    },
                );
            }
            _ => {
                let Some(f) = file.trusted() else { continue };
                let entries: Vec<&envfile::Entry> = if name == SET {
                    f.all(name).filter(|e| !e.value.is_empty()).collect()
                } else {
                    f.last(name)
                        .filter(|e| !e.value.is_empty())
                        .into_iter()
                        .collect()
                };
                let Some(last) = entries.last() else { continue };
                layered.insert(
                    name.clone(),
                    Layered {
                        values: entries.iter().map(|e| e.value.clone()).collect(),
                        origin: Origin::File {
                            path: file.path.clone(),
                            line: last.line,
                            name: last.key.clone(),
                        },
                    },
                );
            }
        }
    }
    layered
}

/// Warnings about the trusted file's lines: `ECS_BOOTSTRAP_ROOT` (which it cannot set),
/// unknown settings, and names set twice.
fn file_notes(file: &SettingsFile, names: &BTreeSet<String>) -> Vec<Note> {
    let mut notes = Vec::new();
    let Some(f) = file.trusted() else {
        return notes;
    };
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &f.entries {
        let at = format!("settings file {} line {}", file.path.display(), e.line);
        if e.key == ROOT {
            notes.push(Note {
                level: Level::Warn,
                message: format!(
                    "{at}: {ROOT} is ignored there (the file is found under the root); give --root or \
                     set the variable instead"
                ),
            });
        } else if e.key.starts_with("ECS_BOOTSTRAP_") && !names.contains(&e.key) {
            notes.push(Note {
                level: Level::Warn,
                message: format!(
                    "{at}: unknown setting {}; it is ignored (see `ecs-bootstrap --help`)",
                    e.key
                ),
            });
        }
        if let Some(first) = seen.insert(&e.key, e.line)
            && e.key != SET
        {
            notes.push(Note {
                level: Level::Warn,
                message: format!(
                    "{at}: {} is also set on line {first}; the last line wins (remove the others)",
                    e.key
                ),
            });
        }
    }
    notes
}

fn collect_env_names(cmd: &clap::Command, names: &mut BTreeSet<String>) {
    for a in cmd.get_arguments() {
        if let Some(e) = a.get_env().and_then(|e| e.to_str()) {
            names.insert(e.to_owned());
        }
    }
    for s in cmd.get_subcommands() {
        collect_env_names(s, names);
    }
}

/// The values to give clap for `value`, or why the argument does not accept it (never the
/// value itself).
fn check_value(arg: &Arg, value: &str) -> Result<Vec<String>, String> {
    let flag = arg
        .get_long()
        .map(|l| format!("--{l}"))
        .unwrap_or_else(|| arg.get_id().to_string());
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match parse_bool(value) {
            Some(b) => Ok(vec![b.to_string()]),
            None => Err(format!(
                "not a boolean for {flag}: use 1/0, true/false, yes/no or on/off"
            )),
        };
    }
    let parts: Vec<String> = match arg.get_value_delimiter() {
        Some(d) => value.split(d).map(str::to_owned).collect(),
        None => vec![value.to_owned()],
    };
    let probe = Arg::new("v")
        .long("v")
        .value_parser(arg.get_value_parser().clone())
        .action(ArgAction::Append);
    let ok = clap::Command::new("probe")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from(parts.iter().map(|p| format!("--v={p}")))
        .is_ok();
    if ok {
        return Ok(parts);
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|p| !p.is_hide_set())
        .map(|p| p.get_name().to_owned())
        .collect();
    if !possible.is_empty() {
        return Err(format!(
            "not a value {flag} accepts (one of: {})",
            possible.join(", ")
        ));
    }
    let example = arg
        .get_help()
        .map(|h| h.to_string())
        .and_then(|h| h.split_once("Example: ").map(|(_, e)| e.trim().to_owned()));
    Err(match example {
        Some(e) => format!("not a value {flag} accepts (for example: {e})"),
        None => format!("not a value {flag} accepts"),
    })
}

/// `1/0`, `true/false`, `yes/no`, `on/off`, `y/n`, `t/f`, any case.
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" | "y" | "t" => Some(true),
        "0" | "false" | "no" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

impl Prepared {
    /// For an error about flags: where each flag it names got its value, when that was a
    /// setting rather than the command line ("--sha256 is ECS_BOOTSTRAP_SHA256 on line 4 of
    /// /etc/ecs-bootstrap/env").
    pub(crate) fn explain(&self, matches: &ArgMatches, message: &str) -> Vec<String> {
        let sub = matches.subcommand().map(|(_, m)| m);
        self.applied
            .iter()
            .filter(|(id, (flag, _))| {
                let from_default = [Some(matches), sub].into_iter().flatten().any(|m| {
                    m.try_contains_id(id).unwrap_or(false)
                        && m.value_source(id) == Some(clap::parser::ValueSource::DefaultValue)
                });
                from_default
                    && message
                        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                        .any(|w| w == flag)
            })
            .map(|(_, (flag, origin))| format!("{flag} is {origin}"))
            .collect()
    }
}

/// What the parsed command does with the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Use<'a> {
    /// The subcommand's name.
    pub(crate) command: &'a str,
    /// The config step will run (an untrusted file is then an error).
    pub(crate) config_step: bool,
    /// Argument ids of the subcommand that it does not use (for example the config flags of
    /// `run --skip-config`).
    pub(crate) unused: &'a [&'a str],
}

/// After parsing: the notes to log, or the usage error that stops the run. `matches` are the
/// top-level matches.
pub(crate) fn judge(
    prep: &Prepared,
    cmd: &clap::Command,
    matches: &ArgMatches,
    u: Use<'_>,
) -> Result<Vec<Note>, UsageError> {
    let mut notes = prep.notes.clone();
    if let Some((reason, fix)) = &prep.untrusted {
        if u.config_step {
            return Err(UsageError(format!(
                "the settings file {} is not trusted: {reason}; it names the programs that run as root and where \
                 ecs.config comes from, so it is not used and ecs.config is left as it is; fix it with {fix}",
                prep.path.display()
            )));
        }
        notes.push(Note {
            level: Level::Error,
            message: format!(
                "the settings file {} is not trusted: {reason}; it is ignored and `{}` runs with the built-in \
                 defaults (the block still covers docker+); fix it with {fix}",
                prep.path.display(),
                u.command
            ),
        });
    }
    // A line that cannot be read may be the source or a `SET`: the config step does not guess.
    for bad in &prep.bad_lines {
        if u.config_step {
            return Err(UsageError(format!(
                "{bad}; fix the line or remove it (nothing was fetched; ecs.config is left as it is)"
            )));
        }
        notes.push(Note {
            level: Level::Warn,
            message: format!("{bad}; the line is ignored: fix the line or remove it"),
        });
    }
    let (sub, sub_m) = match matches.subcommand() {
        Some((n, m)) => (cmd.find_subcommand(n), Some(m)),
        None => (None, None),
    };
    let mut errors = Vec::new();
    for inv in &prep.invalid {
        // The argument of the command (global ones included) that reads this name.
        let id = prep.ids.get(&inv.env).map(String::as_str).filter(|id| {
            sub.is_some_and(|s| s.get_arguments().any(|a| a.get_id() == *id))
                || cmd
                    .get_arguments()
                    .any(|a| a.is_global_set() && a.get_id() == *id)
        });
        let on_command_line = id.is_some_and(|id| {
            [Some(matches), sub_m].into_iter().flatten().any(|m| {
                m.try_contains_id(id).unwrap_or(false)
                    && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
            })
        });
        let used = id.is_some_and(|id| !u.unused.contains(&id));
        let what = format!("{}: {}", inv.origin, inv.reason);
        if !used {
            notes.push(Note {
                level: Level::Warn,
                message: format!("{what}; ignored: `{}` does not use it", u.command),
            });
        } else if on_command_line {
            notes.push(Note {
                level: Level::Warn,
                message: format!("{what}; ignored: the command line sets it"),
            });
        } else if u.command == "block-imds" {
            notes.push(Note {
                level: Level::Error,
                message: format!(
                    "{what}; block-imds uses the built-in default instead, so that the block is still asserted; \
                     fix or remove the setting"
                ),
            });
        } else {
            errors.push(format!("{what}; fix or remove the setting"));
        }
    }
    if !errors.is_empty() {
        return Err(UsageError(errors.join("; ")));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::super::cli::Cli;
    use super::*;
    use clap::CommandFactory as _;

    fn file(text: &str) -> SettingsFile {
        SettingsFile {
            path: PathBuf::from("/etc/ecs-bootstrap/env"),
            state: FileState::Trusted(envfile::parse(text)),
        }
    }

    fn run(
        f: &SettingsFile,
        env: &[(&str, &str)],
        args: &[&str],
        unused: &[&str],
    ) -> Result<(ArgMatches, Vec<Note>), String> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let prep = prepare(Cli::command(), f, |n| env.get(n).cloned());
        let mut cmd = prep.cmd.clone();
        let m = cmd
            .try_get_matches_from_mut(args)
            .map_err(|e| e.to_string())?;
        let command = m.subcommand_name().unwrap_or("").to_owned();
        let config_step = command == "fetch-config" || command == "run";
        let notes = judge(
            &prep,
            &cmd,
            &m,
            Use {
                command: &command,
                config_step,
                unused,
            },
        )
        .map_err(|e| e.0)?;
        Ok((m, notes))
    }

    #[test]
    fn booleans_accept_the_usual_spellings() {
        for v in ["1", "true", "YES", "on", "y"] {
            let (m, n) = run(
                &file(&format!("ECS_BOOTSTRAP_QUIET={v}\n")),
                &[],
                &["x", "check-imds"],
                &[],
            )
            .unwrap();
            assert!(n.is_empty(), "{n:?}");
            assert!(m.get_flag("quiet"), "{v}");
        }
        for v in ["0", "false", "No", "off"] {
            let (m, _) = run(
                &file(&format!("ECS_BOOTSTRAP_QUIET={v}\n")),
                &[],
                &["x", "check-imds"],
                &[],
            )
            .unwrap();
            assert!(!m.get_flag("quiet"), "{v}");
        }
    }

    #[test]
    fn a_bad_value_fails_only_where_it_is_used() {
        let f = file("ECS_BOOTSTRAP_QUIET=maybe\nECS_BOOTSTRAP_CHAIN=bogus\n");
        // check-imds uses quiet: an error naming the line and the reason, not the value.
        let e = run(&f, &[], &["x", "check-imds"], &[]).unwrap_err();
        assert!(
            e.contains("ECS_BOOTSTRAP_QUIET on line 1") && e.contains("not a boolean"),
            "{e}"
        );
        assert!(!e.contains("maybe") && !e.contains("bogus"), "{e}");
        // The command line overrides it: a warning.
        let (_, n) = run(&f, &[], &["x", "check-imds", "-q"], &[]).unwrap();
        assert!(
            n.iter()
                .any(|n| n.level == Level::Warn && n.message.contains("the command line sets it")),
            "{n:?}"
        );
        // block-imds: the built-in default, said as an error.
        let (m, n) = run(&f, &[], &["x", "block-imds"], &[]).unwrap();
        let (_, sub) = m.subcommand().unwrap();
        assert_eq!(
            sub.get_one::<super::super::cli::ChainChoice>("chain"),
            Some(&super::super::cli::ChainChoice::DockerUser)
        );
        assert!(
            n.iter().filter(|n| n.level == Level::Error).count() == 2,
            "{n:?}"
        );
        // fetch-config does not use chain: a warning; quiet is used, an error.
        let e = run(
            &file("ECS_BOOTSTRAP_CHAIN=bogus\nECS_BOOTSTRAP_SOURCE=s3://b/k\n"),
            &[],
            &["x", "fetch-config"],
            &[],
        );
        let (_, n) = e.unwrap();
        assert!(
            n.iter().any(|n| n.message.contains("does not use it")),
            "{n:?}"
        );
        // Unused by run --skip-firewall.
        let (_, n) = run(
            &file("ECS_BOOTSTRAP_CHAIN=bogus\n"),
            &[],
            &["x", "run", "--skip-firewall"],
            &["chain"],
        )
        .unwrap();
        assert!(n.iter().all(|n| n.level == Level::Warn), "{n:?}");
    }

    #[test]
    fn every_set_line_applies_and_other_duplicates_warn() {
        let f = file(
            "ECS_BOOTSTRAP_SET=A_=1\nECS_BOOTSTRAP_SET=B_=2\nECS_BOOTSTRAP_DEADLINE=30\nECS_BOOTSTRAP_DEADLINE=40\n",
        );
        // Under systemd the last SET line is also in the environment.
        let (m, n) = run(
            &f,
            &[("ECS_BOOTSTRAP_SET", "B_=2")],
            &["x", "fetch-config", "--source", "s3://b/k"],
            &[],
        )
        .unwrap();
        let (_, sub) = m.subcommand().unwrap();
        let sets: Vec<&String> = sub.get_many::<String>("set").unwrap().collect();
        assert_eq!(sets, ["A_=1", "B_=2"]);
        assert_eq!(m.get_one::<u64>("deadline"), Some(&40));
        assert_eq!(n.len(), 1, "{n:?}");
        assert!(
            n[0].message
                .contains("line 4: ECS_BOOTSTRAP_DEADLINE is also set on line 3"),
            "{n:?}"
        );
        // A different value in the environment beats the file.
        let (m, _) = run(
            &f,
            &[("ECS_BOOTSTRAP_SET", "C_=3")],
            &["x", "fetch-config", "--source", "s3://b/k"],
            &[],
        )
        .unwrap();
        let (_, sub) = m.subcommand().unwrap();
        let sets: Vec<&String> = sub.get_many::<String>("set").unwrap().collect();
        assert_eq!(sets, ["C_=3"]);
    }

    #[test]
    fn untrusted_file_is_ignored_or_fails_the_config_step() {
        let f = SettingsFile {
            path: PathBuf::from("/etc/ecs-bootstrap/env"),
            state: FileState::Untrusted {
                reason: "group or others may write it (mode 0666)".into(),
                fix: "`chown root:root /etc/ecs-bootstrap/env && chmod 600 /etc/ecs-bootstrap/env`"
                    .into(),
                // A continued line: systemd joins it, so its value is not what we would parse.
                raw: Some(
                    b"ECS_BOOTSTRAP_INTERFACE=noth\\\ning\nECS_BOOTSTRAP_IPTABLES=/tmp/ev\\\nil\n"
                        .to_vec(),
                ),
            },
        };
        // systemd passed the file's values on, in its own reading: ignored whatever the value.
        let (m, n) = run(
            &f,
            &[
                ("ECS_BOOTSTRAP_INTERFACE", "nothing"),
                ("ECS_BOOTSTRAP_IPTABLES", "/tmp/evil"),
            ],
            &["x", "block-imds"],
            &[],
        )
        .unwrap();
        let (_, sub) = m.subcommand().unwrap();
        let ifs: Vec<&String> = sub.get_many::<String>("interfaces").unwrap().collect();
        assert_eq!(ifs, ["docker+"]);
        assert_eq!(sub.get_one::<std::path::PathBuf>("iptables"), None);
        assert!(n.iter().any(|n| {
            n.level == Level::Error
                && n.message
                    .contains("ECS_BOOTSTRAP_IPTABLES in the environment is ignored")
        }));
        // A variable the file does not name still applies (e.g. the unit's own Environment=).
        let (m, _) = run(
            &f,
            &[("ECS_BOOTSTRAP_CHAIN", "FORWARD")],
            &["x", "block-imds"],
            &[],
        )
        .unwrap();
        let (_, sub) = m.subcommand().unwrap();
        assert!(
            format!("{:?}", sub.get_raw("chain").unwrap().collect::<Vec<_>>()).contains("FORWARD")
        );
        assert!(
            n.iter()
                .any(|n| n.level == Level::Error && n.message.contains("not trusted"))
        );
        let e = run(&f, &[], &["x", "fetch-config", "--source", "s3://b/k"], &[]).unwrap_err();
        assert!(e.contains("not trusted") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn unknown_and_bad_lines_warn_without_text() {
        let f = file("ECS_BOOTSTRAP_SORCE=x\n  \"auth\": \"c2VjcmV0==\"\n");
        let (_, n) = run(&f, &[], &["x", "check-imds"], &[]).unwrap();
        let all = format!("{n:?}");
        assert!(
            all.contains("line 1: unknown setting ECS_BOOTSTRAP_SORCE"),
            "{all}"
        );
        assert!(
            all.contains("line 2:") && !all.contains("c2VjcmV0"),
            "{all}"
        );
    }
}

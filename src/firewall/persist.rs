//! Persistence of our rule to a rules file (iptables-save format), so it is in place at boot
//! before dockerd and before ecs-bootstrap itself runs: the file I/O. [`super::target`] says
//! which file; this module follows a link to it, reads it (bounded, regular files only),
//! merges ([`super::merge`]) or saves, tests the result with `iptables-restore --test` and
//! writes it atomically.
//!
//! - `merge` (default): our lines merged into the file, every other line kept as it was.
//! - `full-save`: the `iptables-save` output, every table, as the AWS documentation does (this
//!   does persist Docker's run-time rules); date comments dropped and counters zeroed so a
//!   second run leaves the file unchanged.
//! - `none`: nothing (the dockerd drop-in uses it).
//!
//! The iptables-services sample file (see [`super::merge`]) is replaced by the minimal file
//! holding only our rules, after a backup to `<file>.ecs-bootstrap.orig`, with a warning, when
//! it is byte for byte a known sample, or when nothing loads it at boot and it holds nothing
//! but sample rules. A file that grew from the sample is merged, with only the sample's
//! forwarding REJECT commented out.

use super::iptables::Ipt;
use super::merge::{self, minimal};
use super::plan::Mode;
use super::rules::RuleSet;
use super::target::{Loader, NoRulesFile, RulesTarget};
use crate::fsutil::{self, WriteOutcome};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Suffix of the backup of a replaced iptables-services sample file.
const BACKUP_SUFFIX: &str = ".ecs-bootstrap.orig";

/// How the rule is persisted (`--persist`, without `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    Merge,
    FullSave,
}

/// What became of one family's rules file.
#[derive(Debug)]
pub(crate) enum Persistence {
    /// Nothing to persist.
    Off(Off),
    /// No rules file is known for this distribution.
    NoFile(NoRulesFile),
    /// The rules file is a link we do not write through.
    Refused { path: PathBuf, why: LinkRefused },
    /// The file was merged or saved (or already held what it should).
    Done {
        persisted: Persisted,
        /// The link named, when the file written is its target.
        link: Option<PathBuf>,
        loader: Loader,
    },
}

impl Persistence {
    /// Whether a file was written.
    pub(crate) fn written(&self) -> bool {
        matches!(self, Persistence::Done { persisted, .. } if persisted.outcome == WriteOutcome::Written)
    }
}

/// Why nothing is persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Off {
    /// `--persist none`.
    PersistNone,
    /// `--persist full-save` in a drift check that changed no rule: the tables hold Docker's
    /// run-time rules, which change with every container, so saving them every minute would
    /// rewrite the file (and report drift) for nothing.
    DriftUnchanged,
}

impl std::fmt::Display for Off {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Off::PersistNone => "--persist none",
            Off::DriftUnchanged => "full-save: the drift check changed no rule",
        })
    }
}

/// Why a rules file that is a symbolic link is not written through.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkRefused {
    #[error("{} is a symbolic link whose target cannot be resolved ({source})", path.display())]
    Unresolved {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} links to {} ({source})", path.display(), target.display())]
    Unreadable {
        path: PathBuf,
        target: PathBuf,
        source: std::io::Error,
    },
    #[error("{} links to {}, which is not a regular file owned by root", path.display(), target.display())]
    NotRootsFile { path: PathBuf, target: PathBuf },
}

/// Where a rules file that may be a symbolic link is written: the path itself, or the link's
/// target when that is a regular file owned by root (written through, the link kept). We do
/// not write through a link into a file someone else controls.
fn resolve_link(path: &Path) -> Result<PathBuf, LinkRefused> {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::canonicalize(path).map_err(|source| LinkRefused::Unresolved {
                path: path.to_owned(),
                source,
            })?;
            let tm = std::fs::metadata(&target).map_err(|source| LinkRefused::Unreadable {
                path: path.to_owned(),
                target: target.clone(),
                source,
            })?;
            if !tm.is_file() || tm.uid() != 0 {
                return Err(LinkRefused::NotRootsFile {
                    path: path.to_owned(),
                    target,
                });
            }
            Ok(target)
        }
        _ => Ok(path.to_path_buf()),
    }
}

/// What a persistence step did to one file.
#[derive(Debug, Clone)]
pub(crate) struct Persisted {
    pub(crate) file: PathBuf,
    pub(crate) outcome: WriteOutcome,
    pub(crate) backup: Option<PathBuf>,
    /// What the merge changed (empty when nothing was written).
    pub(crate) notes: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

/// Persists one family's rules to `target`. A link to anything but a regular file of root's is
/// not followed and persistence is skipped (the kernel rule is in place, so the step does not
/// fail at every boot). `test_kept`: whether a file kept as it is (it already holds the block)
/// is tested with `iptables-restore --test`; a drift check does not, every minute, what the
/// boot run and every dockerd start already do.
pub(crate) fn persist(
    how: How,
    target: RulesTarget,
    ipt: &Ipt,
    set: &RuleSet,
    mode: Mode,
    test_kept: bool,
) -> anyhow::Result<Persistence> {
    let file = match resolve_link(&target.path) {
        Ok(f) => f,
        Err(why) => {
            return Ok(Persistence::Refused {
                path: target.path,
                why,
            });
        }
    };
    let persisted = match how {
        How::Merge => merge_into(ipt, &file, set, mode, &target.loader, test_kept)?,
        How::FullSave => full_save_into(ipt, &file)?,
    };
    Ok(Persistence::Done {
        persisted,
        link: (file != target.path).then_some(target.path),
        loader: target.loader,
    })
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600)
}

/// The largest rules file read (16 MiB). A distribution's file is a few KiB; one with
/// hundreds of thousands of rules is not something to merge at boot (it would take hundreds of
/// megabytes and run past the deadline), so it is left as it was.
pub const MAX_RULES_FILE: u64 = 16 << 20;

fn read_existing(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let too_big = |size: u64| {
        anyhow::anyhow!(
            "the rules file {} is {size} bytes, more than the {} MiB ecs-bootstrap reads; it was left as it was, so the rule is not persisted (the kernel rule is in place); shrink the file, or pass --persist none",
            path.display(),
            MAX_RULES_FILE >> 20
        )
    };
    use std::os::unix::fs::OpenOptionsExt as _;
    // Non-blocking, so that a FIFO at the path cannot hold the run past its deadline; only a
    // regular file is read.
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .and_then(|f| {
            let m = f.metadata()?;
            if !m.is_file() {
                return Err(std::io::Error::other(
                    "it is not a regular file (fix or remove it, or pass --persist none)",
                ));
            }
            let size = m.len();
            let mut b = vec![];
            if size <= MAX_RULES_FILE {
                // Bounded even if the file grows while it is read.
                f.take(MAX_RULES_FILE + 1).read_to_end(&mut b)?;
            }
            Ok((size.max(b.len() as u64), b))
        });
    match read {
        Ok((size, _)) if size > MAX_RULES_FILE => Err(too_big(size)),
        Ok((_, b)) => String::from_utf8(b).map_err(|_| {
            anyhow::anyhow!(
                "{} is not text (invalid UTF-8); fix or remove it, or pass --persist none",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => anyhow::bail!("cannot read the rules file {}: {e}", path.display()),
    }
}

/// Validates `text` with `iptables-restore --test`, then writes it atomically with `mode`.
fn validate_and_write(
    ipt: &Ipt,
    path: &Path,
    text: &str,
    original: &str,
    mode: u32,
    ours_only: bool,
) -> anyhow::Result<WriteOutcome> {
    if text == original {
        return Ok(WriteOutcome::Unchanged);
    }
    // A file that holds nothing but our own rendering (a first boot, the replaced
    // iptables-services sample) is valid by construction: the interface patterns are validated
    // and the tests restore it with both backends. `--test` is for foreign lines, and it is
    // not cheap: the nft backend's dry run is the longest part of the step (docs/benchmarks.md).
    if ours_only {
        return write(ipt, path, text, mode);
    }
    if let Err(e) = ipt.restore_test(text) {
        if !original.trim().is_empty() && ipt.restore_test(original).is_err() {
            anyhow::bail!(
                "the existing rules file {} does not pass iptables-restore --test ({e}); fix or remove it (it was left as it was)",
                path.display()
            );
        }
        anyhow::bail!(
            "the merged rules for {} do not pass iptables-restore --test ({e}); the file was left as it was",
            path.display()
        );
    }
    write(ipt, path, text, mode)
}

/// Writes `text` atomically, unless the run was stopped or its deadline passed: then nothing
/// changes, and the error's source is the [`crate::sys::Stopped`].
fn write(ipt: &Ipt, path: &Path, text: &str, mode: u32) -> anyhow::Result<WriteOutcome> {
    if let Err(why) = ipt.deadline.check() {
        return Err(
            anyhow::Error::new(why).context(format!("{} was left as it was", path.display()))
        );
    }
    Ok(fsutil::write_atomic(path, text.as_bytes(), mode)?)
}

/// What the merge makes of the file, before it is tested and written.
struct Draft {
    text: String,
    /// See [`merge::Merged::held_as_is`].
    held_as_is: bool,
    notes: Vec<String>,
    warnings: Vec<String>,
    backup: Option<PathBuf>,
}

/// `--persist merge`: see the module docs.
fn merge_into(
    ipt: &Ipt,
    path: &Path,
    set: &RuleSet,
    run_mode: Mode,
    loader: &Loader,
    test_kept: bool,
) -> anyhow::Result<Persisted> {
    let old = read_existing(path)?;
    let mode = mode_of(path);
    let draft = draft(ipt, path, &old, set, run_mode, loader, mode)?;
    let ours_only = draft.text == minimal(set);
    if draft.held_as_is
        && test_kept
        && let Err(e) = ipt.restore_test(&old)
    {
        // Judged by its replay to hold the block, but it does not load: restored at boot it
        // would block nothing.
        anyhow::bail!(
            "the existing rules file {} does not pass iptables-restore --test ({e}); fix or remove it (it was left as it was)",
            path.display()
        );
    }
    let outcome = validate_and_write(ipt, path, &draft.text, &old, mode, ours_only)?;
    Ok(Persisted {
        file: path.to_owned(),
        outcome,
        backup: draft.backup,
        notes: if outcome == WriteOutcome::Written {
            draft.notes
        } else {
            vec![]
        },
        warnings: draft.warnings,
    })
}

/// The merged text of `old`. The sample is replaced only when it is byte for byte a known
/// sample, or when nothing loads it at boot and it holds nothing but sample rules; any other
/// file that grew from the sample (annotated, edited, loaded at boot) is somebody's: merged,
/// keeping its INPUT rules, with only the sample's forwarding REJECT commented out. The backup
/// of a replaced sample is written here, before the new file.
fn draft(
    ipt: &Ipt,
    path: &Path,
    old: &str,
    set: &RuleSet,
    run_mode: Mode,
    loader: &Loader,
    mode: u32,
) -> anyhow::Result<Draft> {
    let derived = run_mode == Mode::Assert && merge::has_sample_header(old);
    let pristine = merge::KNOWN_SAMPLES.contains(&old);
    let loaded = matches!(loader, Loader::Enabled(_));
    let sample = derived && (pristine || (merge::is_iptables_services_sample(old) && !loaded));
    let merged = |text: &str| {
        merge::merge_mode(text, set, run_mode)
            .map_err(|e| anyhow::anyhow!("rules file {}: {e}", path.display()))
    };
    if sample {
        let b = PathBuf::from(format!("{}{BACKUP_SUFFIX}", path.display()));
        if !b.exists() {
            write(ipt, &b, old, mode)?;
        }
        let warning = format!(
            "{} was the iptables-services sample, which rejects all forwarded traffic and all inbound traffic but ssh (restored at boot it would cut every container off); replaced it with a file holding only our rules, so INPUT and FORWARD accept by default as on a host without the file (filter inbound traffic with security groups, or add your own INPUT rules to the file); the sample is kept in {}",
            path.display(),
            b.display()
        );
        return Ok(Draft {
            held_as_is: false,
            text: minimal(set),
            notes: vec!["replaced the iptables-services sample file".to_owned()],
            warnings: vec![warning],
            backup: Some(b),
        });
    }
    let (relaxed, n) = merge::disable_forward_reject(old);
    if derived && n > 0 {
        let m = merged(&relaxed)?;
        let warning = format!(
            "{} grew from the iptables-services sample (changed, or loaded at boot by an enabled iptables.service): merged, keeping its INPUT rules; its forwarding REJECT ({n} line(s)), which would cut every container off, is commented out",
            path.display()
        );
        let mut notes = vec![format!(
            "commented out the sample's -A FORWARD -j REJECT ({n} line(s))"
        )];
        notes.extend(m.notes);
        return Ok(Draft {
            // The REJECT commented out: a new text, tested before it is written.
            held_as_is: false,
            text: m.text,
            notes,
            warnings: vec![warning],
            backup: None,
        });
    }
    let m = merged(old)?;
    Ok(Draft {
        held_as_is: m.held_as_is,
        text: m.text,
        notes: m.notes,
        warnings: m
            .warnings
            .iter()
            .map(|w| format!("{}: {w}", path.display()))
            .collect(),
        backup: None,
    })
}

/// `--persist full-save`: see the module docs.
fn full_save_into(ipt: &Ipt, path: &Path) -> anyhow::Result<Persisted> {
    let old = read_existing(path)?;
    let text = merge::normalize_save(&ipt.save_all()?);
    let outcome = validate_and_write(ipt, path, &text, &old, mode_of(path), false)?;
    Ok(Persisted {
        file: path.to_owned(),
        outcome,
        backup: None,
        notes: vec![],
        warnings: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Deadline, Stopped, SystemRunner};

    /// Once the run is stopped (or its deadline passed), the rules file is left as it was.
    #[test]
    fn a_stopped_run_writes_no_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("rules.v4");
        std::fs::write(&path, "before\n").unwrap();
        let runner = SystemRunner::default();
        let deadline = Deadline::after(std::time::Duration::from_secs(60));
        let ipt = Ipt::new("/usr/sbin/iptables".into(), &runner, &deadline);
        assert_eq!(
            write(&ipt, &path, "after\n", 0o600).unwrap(),
            WriteOutcome::Written
        );
        deadline.stop();
        let e = write(&ipt, &path, "stopped\n", 0o600).unwrap_err();
        assert_eq!(
            e.downcast_ref::<Stopped>(),
            Some(&Stopped::Interrupted),
            "{e:#}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }
}

//! Writing a file so that readers see the old content or the new, never a part: a temporary
//! file in the same folder (created with O_EXCL), fsync, rename over the destination, fsync of
//! the folder. Used for ecs.config, the persisted rules files and the report.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What [`write_atomic`] did; in reports, `"written"` or `"unchanged"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum WriteOutcome {
    Written,
    Unchanged,
}

impl WriteOutcome {
    /// The name reports and logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteOutcome::Written => "written",
            WriteOutcome::Unchanged => "unchanged",
        }
    }
}

/// Why a write failed: the step, the path and what to do are in the message.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "refusing to write {path}: it is a symbolic link; replace it with a regular file or choose another destination"
    )]
    Symlink { path: PathBuf },
    #[error(
        "refusing to write {path}: it exists and is not a regular file (a folder?); remove it or choose another destination"
    )]
    NotRegular { path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

const TMP_MARK: &str = ".ecs-bootstrap-tmp.";

/// Writes `data` to `path` atomically with `mode`. Creates a missing parent folder (0755).
/// Refuses a destination that is a symlink or not a regular file. Leaves the destination
/// byte-identical and no temporary file behind on any error. Identical content is not
/// rewritten (but the mode is corrected).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<WriteOutcome, WriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| WriteError::NotRegular {
            path: path.to_owned(),
        })?
        .to_string_lossy()
        .into_owned();
    // First, whatever happens next (unchanged content, a refusal): a killed run's temp file
    // may hold the secrets of the file it was writing.
    remove_stale_temps(&dir, &name);
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(WriteError::Symlink {
                path: path.to_owned(),
            });
        }
        Ok(m) if !m.file_type().is_file() => {
            return Err(WriteError::NotRegular {
                path: path.to_owned(),
            });
        }
        Ok(m) => {
            if fs::read(path).map(|old| old == data).unwrap_or(false) {
                if m.permissions().mode() & 0o7777 != mode {
                    fs::set_permissions(path, fs::Permissions::from_mode(mode))
                        .map_err(io_err("set the mode of", path))?;
                }
                return Ok(WriteOutcome::Unchanged);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !dir.is_dir() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&dir)
                    .map_err(io_err("create the folder", &dir))?;
                // The umask may have narrowed the mode; set it exactly.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("set the mode of", &dir))?;
                // Make the new folder's entry durable too.
                if let Some(up) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    File::open(up)
                        .and_then(|d| d.sync_all())
                        .map_err(io_err("flush the folder", up))?;
                }
            }
        }
        Err(e) => return Err(io_err("inspect", path)(e)),
    }

    let tmp = dir.join(format!(".{name}{TMP_MARK}{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("create a temporary file", &tmp))?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("set the mode of", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("flush to disk", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename the temporary file over", path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("flush the folder", &dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| WriteOutcome::Written)
}

/// Removes the temporary files that killed runs left beside `path` (see [`write_atomic`]); for
/// a step that may fail before it writes, so that a leftover never outlives the next run.
pub fn sweep_stale_temps(path: &Path) {
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        remove_stale_temps(dir, &name.to_string_lossy());
    }
}

/// A temporary file lives for milliseconds; one older than this is stale whatever its PID says
/// (the PID may have been reused since).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes temporary files left by an earlier run of ours that was killed: its process is gone,
/// its PID is ours (PIDs repeat from boot to boot, and we are not writing it yet), or it is old.
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}{TMP_MARK}");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let writer_alive = pid
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 0 && *p as u32 != std::process::id())
            .map(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
            .unwrap_or(false);
        let young = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < STALE_AFTER);
        if !(writer_alive && young) {
            let stale = entry.path();
            if fs::remove_file(&stale).is_ok() {
                tracing::info!(path = %stale.display(), "removed a temporary file left by an interrupted run");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_creates_folder_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("etc/ecs/ecs.config");
        assert_eq!(
            write_atomic(&p, b"A=1\n", 0o600).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(fs::read(&p).unwrap(), b"A=1\n");
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(mode_of(p.parent().unwrap()), 0o755);
        assert_eq!(
            write_atomic(&p, b"A=1\n", 0o600).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(
            write_atomic(&p, b"A=2\n", 0o600).unwrap(),
            WriteOutcome::Written
        );
        assert_eq!(fs::read(&p).unwrap(), b"A=2\n");
        assert_eq!(
            fs::read_dir(p.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn refuses_symlink_and_folder() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            write_atomic(&link, b"x", 0o600),
            Err(WriteError::Symlink { .. })
        ));
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        let folder = d.path().join("folder");
        fs::create_dir(&folder).unwrap();
        let e = write_atomic(&folder, b"x", 0o600).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn removes_stale_temp_of_own_pid_and_keeps_live_writers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ecs.config");
        // A killed run of an earlier boot may have had our PID.
        let own = d
            .path()
            .join(format!(".ecs.config{TMP_MARK}{}", std::process::id()));
        fs::write(&own, b"half").unwrap();
        // PID 1 is alive: its fresh temp file is a concurrent writer's and is left alone.
        let live = d.path().join(format!(".ecs.config{TMP_MARK}1"));
        fs::write(&live, b"busy").unwrap();
        assert_eq!(
            write_atomic(&p, b"A=1\n", 0o600).unwrap(),
            WriteOutcome::Written
        );
        assert!(!own.exists());
        assert!(live.exists());
        // Other files in the folder are never touched.
        assert_eq!(fs::read(&p).unwrap(), b"A=1\n");
    }

    #[test]
    fn failure_keeps_old_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ecs.config");
        fs::write(&p, b"OLD=1\n").unwrap();
        // A folder in the way of the temp name makes creating it fail.
        let blocker = d
            .path()
            .join(format!(".ecs.config{TMP_MARK}{}", std::process::id()));
        fs::create_dir(&blocker).unwrap();
        let e = write_atomic(&p, b"NEW=1\n", 0o600).unwrap_err();
        assert!(e.to_string().contains("temporary file"), "{e}");
        assert_eq!(fs::read(&p).unwrap(), b"OLD=1\n");
        fs::remove_dir(&blocker).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn unchanged_content_fixes_mode_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ecs.config");
        fs::write(&p, b"A=1\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap());
        assert_eq!(
            write_atomic(&p, b"A=1\n", 0o600).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&p).unwrap()),
            ino,
            "not rewritten"
        );
    }

    #[test]
    fn removes_stale_temp_of_dead_process() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ecs.config");
        // PID 0x7ffffffe is far above pid_max: no such process.
        let stale = d.path().join(format!(".ecs.config{TMP_MARK}2147483646"));
        fs::write(&stale, b"half").unwrap();
        write_atomic(&p, b"A=1\n", 0o600).unwrap();
        assert!(!stale.exists());
    }
}

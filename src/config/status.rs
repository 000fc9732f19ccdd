//! The written ecs.config as `ecs-bootstrap status` shows it: how old its content is and which
//! object it came from, read back from the file and its sidecar (see [`super::local`]). Reads
//! two files, nothing else; the time is an argument, so the result is reproducible.

use super::local::{self, Provenance};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What is known about the written ecs.config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Written {
    pub path: PathBuf,
    /// Seconds since the file's content last changed (its mtime: a run that finds the object
    /// unchanged does not rewrite it); 0 when the mtime is ahead of `now`.
    pub age_s: u64,
    /// The sidecar's account of the file.
    pub record: Record,
    /// The `s3://` source of the last write by ecs-bootstrap; `None` without a sidecar.
    pub source: Option<String>,
    /// The S3 version of that object; `None` for an unversioned bucket, or a sidecar written
    /// before versions were recorded.
    pub version_id: Option<String>,
    /// The object's ETag, as S3 gave it (quoted); `None` as for `version_id`.
    pub etag: Option<String>,
}

/// Whether the sidecar describes the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Record {
    /// The file is exactly what ecs-bootstrap last wrote.
    Matches,
    /// Something changed the file since ecs-bootstrap wrote it.
    FileChanged,
    /// No sidecar: ecs-bootstrap never wrote the file (user data did, or an image).
    Missing,
    /// A sidecar that is not a regular file or not a record ecs-bootstrap can read.
    Unreadable,
}

/// Why the file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "{path} is not a regular file (a symbolic link or a folder?); ecs-bootstrap never writes such a destination"
    )]
    NotRegular { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The written ecs.config at `dest` as of `now`; `None` when there is no file.
pub fn written(dest: &Path, now: SystemTime) -> Result<Option<Written>, StatusError> {
    let io = |source| StatusError::Io {
        path: dest.to_owned(),
        source,
    };
    let meta = match std::fs::symlink_metadata(dest) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if !meta.file_type().is_file() {
        return Err(StatusError::NotRegular {
            path: dest.to_owned(),
        });
    }
    let content = std::fs::read(dest).map_err(io)?;
    let age_s = meta
        .modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .map_or(0, |d| d.as_secs());
    let (record, prov) = match read_sidecar(&local::sidecar(dest)) {
        Sidecar::Absent => (Record::Missing, None),
        Sidecar::Unreadable => (Record::Unreadable, None),
        Sidecar::Read(p) => {
            let matches = p.file_sha256 == local::hex(&Sha256::digest(&content));
            let record = if matches {
                Record::Matches
            } else {
                Record::FileChanged
            };
            (record, Some(p))
        }
    };
    let (source, version_id, etag) = match prov {
        Some(p) => (
            Some(p.source).filter(|s| !s.is_empty()),
            p.version_id,
            p.etag,
        ),
        None => (None, None, None),
    };
    Ok(Some(Written {
        path: dest.to_owned(),
        age_s,
        record,
        source,
        version_id,
        etag,
    }))
}

enum Sidecar {
    Absent,
    Unreadable,
    Read(Provenance),
}

fn read_sidecar(path: &Path) -> Sidecar {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Sidecar::Absent,
        Ok(m) if m.file_type().is_file() => {}
        _ => return Sidecar::Unreadable,
    }
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .map_or(Sidecar::Unreadable, Sidecar::Read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse::{self, Config};
    use std::time::Duration;

    fn write_like_a_run(dest: &Path, text: &str, version: Option<&str>) {
        let config = Config::from_entries(&parse::parse(text.as_bytes()).entries);
        let mut m = local::merge(None, None, &config, &[], "s3://b/k");
        m.provenance.version_id = version.map(str::to_owned);
        m.provenance.etag = version.map(|_| "\"e7\"".to_owned());
        std::fs::write(dest, m.config.render()).unwrap();
        std::fs::write(
            local::sidecar(dest),
            serde_json::to_vec(&m.provenance).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn reads_age_source_and_version() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("ecs.config");
        let now = SystemTime::now() + Duration::from_secs(90);
        assert!(written(&dest, now).unwrap().is_none(), "no file yet");

        write_like_a_run(&dest, "ECS_CLUSTER=a\n", Some("v3"));
        let w = written(&dest, now).unwrap().unwrap();
        assert_eq!(w.record, Record::Matches);
        assert!((89..=91).contains(&w.age_s), "{}", w.age_s);
        assert_eq!(w.source.as_deref(), Some("s3://b/k"));
        assert_eq!(w.version_id.as_deref(), Some("v3"));
        assert_eq!(w.etag.as_deref(), Some("\"e7\""));
        // An mtime ahead of `now` (a clock set back) is age 0, not an error.
        assert_eq!(
            written(&dest, SystemTime::UNIX_EPOCH)
                .unwrap()
                .unwrap()
                .age_s,
            0
        );

        std::fs::write(&dest, "ECS_CLUSTER=edited\n").unwrap();
        assert_eq!(
            written(&dest, now).unwrap().unwrap().record,
            Record::FileChanged
        );
    }

    #[test]
    fn sidecars_without_versions_and_odd_files() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("ecs.config");
        // A sidecar from before versions were recorded.
        std::fs::write(&dest, "ECS_CLUSTER=a\n").unwrap();
        std::fs::write(
            local::sidecar(&dest),
            r#"{"version":1,"source":"s3://b/k","file_sha256":"","keys":{}}"#,
        )
        .unwrap();
        let w = written(&dest, SystemTime::now()).unwrap().unwrap();
        assert_eq!(
            (w.record, w.version_id, w.etag),
            (Record::FileChanged, None, None)
        );
        assert_eq!(w.source.as_deref(), Some("s3://b/k"));

        std::fs::write(local::sidecar(&dest), "not json").unwrap();
        let w = written(&dest, SystemTime::now()).unwrap().unwrap();
        assert_eq!((w.record, w.source), (Record::Unreadable, None));
        std::fs::remove_file(local::sidecar(&dest)).unwrap();
        assert_eq!(
            written(&dest, SystemTime::now()).unwrap().unwrap().record,
            Record::Missing
        );

        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dest, &link).unwrap();
        assert!(matches!(
            written(&link, SystemTime::now()),
            Err(StatusError::NotRegular { .. })
        ));
    }
}

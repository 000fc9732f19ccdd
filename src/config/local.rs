//! Keys that something other than ecs-bootstrap wrote into ecs.config (user data's
//! `echo ECS_CLUSTER=prod >> /etc/ecs/ecs.config`, an AMI's baked file, an operator): how they
//! are told from ours, and what happens to them. Pure: the caller reads and writes the files.
//!
//! Every write of ecs.config also writes a sidecar, `ecs.config.ecs-bootstrap` beside it, that
//! records for each key where its value came from (the object, `--set`, or kept local) and the
//! SHA-256 of its `KEY=VALUE` line (never the value itself). On the next run a key of the
//! current file is ours when the sidecar says we wrote exactly that line; any other key (no
//! sidecar yet, a key we never wrote, or a line someone changed since) is local.
//!
//! Precedence, one rule: `--set` beats the object, which beats local keys. A local key that the
//! object and `--set` do not set is kept (appended after the object's keys) and named in a
//! warning the first time it is seen; a local key that they set with another value is replaced
//! and named in a warning every time. A key that we wrote and the object no longer sets goes.

use super::parse::Config;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a key's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum From {
    Object,
    Set,
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRecord {
    pub from: From,
    /// SHA-256 (hex) of the `KEY=VALUE` line as written.
    pub sha256: String,
}

/// The sidecar's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Provenance {
    pub version: u32,
    /// The source the object came from.
    #[serde(default)]
    pub source: String,
    /// SHA-256 (hex) of the whole ecs.config as written.
    #[serde(default)]
    pub file_sha256: String,
    /// The S3 version of the object the file was written from, when the bucket is versioned.
    /// Absent from sidecars written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// The object's ETag, as S3 gave it (quoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    pub keys: BTreeMap<String, KeyRecord>,
}

/// The sidecar's path for a destination: `ecs.config.ecs-bootstrap` beside it. (Not
/// `ecs.config.json`: the ECS agent reads that one.)
pub fn sidecar(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".ecs-bootstrap");
    dest.with_file_name(name)
}

pub fn line_digest(key: &str, value: &str) -> String {
    hex(&Sha256::digest(format!("{key}={value}").as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`merge`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    pub config: Config,
    /// Local keys kept, in the order of the old file.
    pub kept: Vec<String>,
    /// Of those, the ones not known as local before (first seen by this run).
    pub newly_kept: Vec<String>,
    /// Local keys whose value the object or `--set` replaced.
    pub replaced: Vec<String>,
    pub provenance: Provenance,
}

/// Merges the new content (`object` with `--set` applied; `set_keys` the keys `--set` gave)
/// with the local keys of `old` (the current file, if any), as told apart by `prov`.
pub fn merge(
    old: Option<&Config>,
    prov: Option<&Provenance>,
    new: &Config,
    set_keys: &[&str],
    source: &str,
) -> Merged {
    let mut out = Merged {
        config: new.clone(),
        ..Merged::default()
    };
    if let Some(old) = old {
        for key in old.keys() {
            let value = old.get(key).unwrap_or_default();
            let record = prov.and_then(|p| p.keys.get(key));
            let ours = record
                .is_some_and(|r| r.from != From::Local && r.sha256 == line_digest(key, value));
            if ours {
                continue;
            }
            match new.get(key) {
                Some(v) if v != value => out.replaced.push(key.to_owned()),
                Some(_) => {}
                None => {
                    out.config.set(key, value);
                    out.kept.push(key.to_owned());
                    let known_local = record.is_some_and(|r| {
                        r.from == From::Local && r.sha256 == line_digest(key, value)
                    });
                    if !known_local {
                        out.newly_kept.push(key.to_owned());
                    }
                }
            }
        }
    }
    let mut keys = BTreeMap::new();
    for key in out.config.keys() {
        let value = out.config.get(key).unwrap_or_default();
        let from = if out.kept.iter().any(|k| k == key) {
            From::Local
        } else if set_keys.contains(&key) {
            From::Set
        } else {
            From::Object
        };
        keys.insert(
            key.to_owned(),
            KeyRecord {
                from,
                sha256: line_digest(key, value),
            },
        );
    }
    out.provenance = Provenance {
        version: 1,
        source: source.to_owned(),
        file_sha256: hex(&Sha256::digest(out.config.render().as_bytes())),
        keys,
        ..Provenance::default()
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn cfg(text: &str) -> Config {
        Config::from_entries(&parse::parse(text.as_bytes()).entries)
    }

    #[test]
    fn first_run_keeps_user_data_keys_and_the_object_wins_conflicts() {
        let old = cfg("ECS_CLUSTER=from-user-data\nECS_ENABLE_SPOT_INSTANCE_DRAINING=true\n");
        let new = cfg("ECS_CLUSTER=prod\nECS_LOGLEVEL=info\n");
        let m = merge(Some(&old), None, &new, &[], "s3://b/k");
        assert_eq!(
            m.config.render(),
            "ECS_CLUSTER=prod\nECS_LOGLEVEL=info\nECS_ENABLE_SPOT_INSTANCE_DRAINING=true\n"
        );
        assert_eq!(m.kept, ["ECS_ENABLE_SPOT_INSTANCE_DRAINING"]);
        assert_eq!(m.newly_kept, m.kept);
        assert_eq!(m.replaced, ["ECS_CLUSTER"]);
        assert_eq!(
            m.provenance.keys["ECS_ENABLE_SPOT_INSTANCE_DRAINING"].from,
            From::Local
        );
        assert_eq!(m.provenance.keys["ECS_CLUSTER"].from, From::Object);
        // The next run: the same input, nothing new to say.
        let again = merge(Some(&m.config), Some(&m.provenance), &new, &[], "s3://b/k");
        assert_eq!(again.config, m.config);
        assert!(again.newly_kept.is_empty() && again.replaced.is_empty());
        assert_eq!(again.kept, m.kept);
    }

    #[test]
    fn our_keys_go_when_the_object_drops_them_unless_someone_changed_them() {
        let first = cfg("ECS_CLUSTER=prod\nECS_LOGLEVEL=info\nECS_RESERVED_MEMORY=256\n");
        let m = merge(None, None, &first, &[], "s3://b/k");
        let newer = cfg("ECS_CLUSTER=prod\n");
        // ECS_RESERVED_MEMORY was edited by hand since: it is local now.
        let mut on_disk = m.config.clone();
        on_disk.set("ECS_RESERVED_MEMORY", "512");
        let n = merge(Some(&on_disk), Some(&m.provenance), &newer, &[], "s3://b/k");
        assert_eq!(
            n.config.render(),
            "ECS_CLUSTER=prod\nECS_RESERVED_MEMORY=512\n"
        );
        assert_eq!(n.kept, ["ECS_RESERVED_MEMORY"]);
        assert_eq!(n.newly_kept, ["ECS_RESERVED_MEMORY"]);
    }

    #[test]
    fn set_keys_are_recorded_as_set() {
        let new = cfg("ECS_CLUSTER=prod\n");
        let m = merge(None, None, &new, &["ECS_CLUSTER"], "s3://b/k");
        assert_eq!(m.provenance.keys["ECS_CLUSTER"].from, From::Set);
        assert!(!format!("{:?}", m.provenance).contains("prod"), "no values");
    }

    #[test]
    fn sidecar_is_beside_the_destination() {
        assert_eq!(
            sidecar(Path::new("/etc/ecs/ecs.config")),
            PathBuf::from("/etc/ecs/ecs.config.ecs-bootstrap")
        );
    }
}

//! The config step: fetch ecs.config from S3 with the instance role's credentials, check it
//! (`--sha256`, syntax, known keys), apply `--set`, and write it atomically to the destination
//! (mode 0600). On any failure the previous file stays as it was.
//!
//! Modules: [`source`] the `s3://` URL, [`keys`] the known keys, [`parse`] the pure
//! parser/validator/normaliser/diff, [`readers`] ecs.config's two readers, [`local`] keys that
//! something else wrote and the sidecar, [`retry`] the pure retry policy, `sdk` the S3 client's
//! configuration, [`fetch`] GetObject, [`status`] the written file read back.

pub(crate) mod fetch;
pub(crate) mod keys;
pub(crate) mod local;
pub mod parse;
pub mod readers;
pub(crate) mod retry;
mod sdk;
pub(crate) mod source;
pub mod status;

use crate::fsutil::{self, WriteOutcome};
use crate::imds::Imds;
use crate::report::StepResult;
use anyhow::Context as _;
use parse::{Config, Finding, SetArg, Severity};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use source::S3Url;
use std::path::{Path, PathBuf};
use tokio::time::Instant;

/// Where ecs-init and the ECS agent read their settings.
pub(crate) const DEFAULT_DEST: &str = "/etc/ecs/ecs.config";

/// The largest `--max-size` accepted: ecs.config is a few hundred bytes in practice.
pub(crate) const MAX_SIZE_LIMIT: u64 = 16 * 1024 * 1024;

/// Where the source URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceSpec {
    Url(S3Url),
    /// The instance tag with this key holds the URL (instance metadata tags).
    Tag(String),
}

/// The validated options of the step. `Debug` shows no `--set` value.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub source: SourceSpec,
    pub dest: PathBuf,
    /// Lower-case hex.
    pub sha256: Option<String>,
    pub expected_owner: Option<String>,
    pub max_size: u64,
    pub strict: bool,
    pub allow_empty: bool,
    pub sets: Vec<SetArg>,
}

/// The step's set-up that needs no network, to call as soon as the plan says the step will
/// run: the S3 client's root certificates start loading on a thread of their own (see
/// [`fetch::preload_tls_roots`]), and temporary files that a killed run left beside the
/// destination are removed (the step may fail before it writes, and such a file may hold the
/// secrets of the file it was writing).
pub(crate) fn prepare(opts: &Options) {
    fetch::preload_tls_roots();
    fsutil::sweep_stale_temps(&opts.dest);
}

/// Runs the step; `deadline` is the overall deadline (retries never sleep past it). Builds the
/// S3 client's configuration itself, from the environment and `imds` (region, credentials).
pub(crate) async fn run(
    opts: &Options,
    imds: &Imds,
    deadline: Instant,
) -> anyhow::Result<StepResult> {
    // Boxed: the nested futures of the region lookup and the fetch would otherwise exceed the
    // compiler's layout depth limit in the caller's `select!`.
    Box::pin(async {
        let sdk = sdk::build(&sdk::from_env(|n| std::env::var(n).ok()), imds).await?;
        fetch_and_write(opts, &sdk, imds, deadline).await
    })
    .await
}

/// What the step did: its part of the JSON report.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Details {
    pub dest: PathBuf,
    pub source: String,
    /// Whether the destination was rewritten.
    pub file: WriteOutcome,
    /// SHA-256 (hex) of the object as fetched.
    pub sha256: String,
    /// The object's size.
    pub bytes: usize,
    /// GetObject attempts it took.
    pub attempts: u32,
    /// The region S3 was asked in.
    pub region: String,
    pub version_id: Option<String>,
    pub etag: Option<String>,
    /// The keys of the written file, in its order (never a value).
    pub keys: Vec<String>,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub warnings: Vec<String>,
    /// Keys that something else wrote and the object does not set: kept.
    pub kept_local: Vec<String>,
    /// Keys that something else wrote with another value than the object's or `--set`'s.
    pub replaced_local: Vec<String>,
}

async fn fetch_and_write(
    opts: &Options,
    sdk: &aws_config::SdkConfig,
    imds: &Imds,
    deadline: Instant,
) -> anyhow::Result<StepResult> {
    let url = match &opts.source {
        SourceSpec::Url(u) => u.clone(),
        SourceSpec::Tag(tag) => url_from_tag(imds, tag).await?,
    };
    let keep = format!(
        "nothing was written; {} keeps its previous content",
        opts.dest.display()
    );
    let (fetched, digest) = fetch_verified(opts, &url, sdk, imds, deadline, &keep).await?;
    let (config, mut warnings) = check_object(opts, &url, &fetched.bytes, &keep)?;
    let from_object = warnings.len();
    let old = read_old_lines(&opts.dest);
    let side = local::sidecar(&opts.dest);
    let set_keys: Vec<&str> = opts.sets.iter().map(|s| s.key.as_str()).collect();
    let mut merged = local::merge(
        old.as_ref().map(|(c, _)| c),
        read_provenance(&side).as_ref(),
        &config,
        &set_keys,
        &url.to_string(),
    );
    merged.provenance.version_id = fetched.version_id.clone();
    merged.provenance.etag = fetched.etag.clone();
    let old_bad = old.as_ref().map_or(&[][..], |(_, bad)| bad.as_slice());
    warnings.extend(local_warnings(opts, &merged, old_bad, &set_keys));
    warnings.extend(reader_warnings(&config, &merged));
    for w in &warnings[from_object..] {
        tracing::warn!(source = %url, "{w}");
    }
    let content = merged.config.render();
    let outcome = fsutil::write_atomic(&opts.dest, content.as_bytes(), 0o600)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("writing ecs.config from {url}; the previous file is intact"))?;
    warnings.extend(write_sidecar(opts, &side, &merged.provenance));
    let d = parse::diff(&old.map(|(c, _)| c).unwrap_or_default(), &merged.config);
    let details = Details {
        dest: opts.dest.clone(),
        source: url.to_string(),
        file: outcome,
        sha256: digest,
        bytes: fetched.bytes.len(),
        attempts: fetched.attempts,
        region: fetched.region,
        version_id: fetched.version_id,
        etag: fetched.etag,
        keys: merged.config.keys().map(str::to_owned).collect(),
        added: d.added,
        changed: d.changed,
        removed: d.removed,
        warnings,
        kept_local: merged.kept,
        replaced_local: merged.replaced,
    };
    tracing::info!(
        dest = %opts.dest.display(),
        file = outcome.as_str(),
        keys = details.keys.len(),
        added = ?details.added,
        changed = ?details.changed,
        removed = ?details.removed,
        "ecs.config {}",
        outcome.as_str()
    );
    Ok(StepResult {
        changed: outcome == WriteOutcome::Written,
        summary: summary(&details),
        details: Some(crate::report::Details::Config(Box::new(details))),
    })
}

/// The object, fetched and logged, and its SHA-256, checked against `--sha256`.
async fn fetch_verified(
    opts: &Options,
    url: &S3Url,
    sdk: &aws_config::SdkConfig,
    imds: &Imds,
    deadline: Instant,
    keep: &str,
) -> anyhow::Result<(fetch::Fetched, String)> {
    let fetched = fetch::fetch(
        &fetch::Request {
            url,
            expected_owner: opts.expected_owner.as_deref(),
            max_size: opts.max_size,
            deadline,
        },
        sdk,
        imds,
    )
    .await
    .with_context(|| keep.to_owned())?;
    let digest = local::hex(&Sha256::digest(&fetched.bytes));
    tracing::info!(
        source = %url,
        bytes = fetched.bytes.len(),
        attempts = fetched.attempts,
        region = %fetched.region,
        sha256 = %digest,
        "fetched the config object"
    );
    if let Some(want) = &opts.sha256
        && *want != digest
    {
        anyhow::bail!(
            "{url} has SHA-256 {digest}, but --sha256 expects {want}: the object is not the one expected \
             (changed or replaced?); upload the expected content or update --sha256; {keep}"
        );
    }
    Ok((fetched, digest))
}

/// The object's settings with `--set` applied, and its warnings (logged here); an error when
/// it is not a valid ecs.config.
fn check_object(
    opts: &Options,
    url: &S3Url,
    bytes: &[u8],
    keep: &str,
) -> anyhow::Result<(Config, Vec<String>)> {
    let (config, findings) = validate(bytes, &opts.sets, opts.strict, opts.allow_empty);
    let of = |severity: Severity| -> Vec<String> {
        findings
            .iter()
            .filter(|f| f.severity == severity)
            .map(ToString::to_string)
            .collect()
    };
    let warnings = of(Severity::Warning);
    for w in &warnings {
        tracing::warn!(source = %url, "{w}");
    }
    let errors = of(Severity::Error);
    if !errors.is_empty() {
        anyhow::bail!(
            "{url} is not a valid ecs.config{}: {}; {keep}",
            if opts.strict { " (--strict)" } else { "" },
            summarize(&errors)
        );
    }
    Ok((config, warnings))
}

/// The warnings about keys something else wrote into the destination: kept, replaced, or
/// unreadable (`old_bad`: line numbers of the current file).
fn local_warnings(
    opts: &Options,
    merged: &local::Merged,
    old_bad: &[usize],
    set_keys: &[&str],
) -> Vec<String> {
    let dest = opts.dest.display();
    let mut out = Vec::new();
    if !merged.newly_kept.is_empty() {
        let it = if merged.newly_kept.len() == 1 {
            "it"
        } else {
            "them"
        };
        out.push(format!(
            "{} kept from the existing {dest} (written by something other than ecs-bootstrap, such as user \
             data); the object does not set {it}; move {it} into the object (or --set) to manage {it} here",
            merged.newly_kept.join(", "),
        ));
    }
    if !old_bad.is_empty() {
        let lines: Vec<String> = old_bad.iter().map(ToString::to_string).collect();
        out.push(format!(
            "line(s) {} of the existing {dest} could not be read as KEY=VALUE and are not kept; put what they \
             set into the object (or --set)",
            lines.join(", "),
        ));
    }
    if !merged.replaced.is_empty() {
        let by_set = merged
            .replaced
            .iter()
            .all(|k| set_keys.contains(&k.as_str()));
        out.push(format!(
            "{} in the existing {dest} (written by something other than ecs-bootstrap, such as user data) \
             replaced by the value from {}: the object and --set win; remove the line from what writes it",
            merged.replaced.join(", "),
            if by_set { "--set" } else { "the object" }
        ));
    }
    out
}

/// The warnings about the file as written, kept local keys included: it must read alike to
/// both readers too. `config` is the object's part, whose own value warnings were given.
fn reader_warnings(config: &Config, merged: &local::Merged) -> Vec<String> {
    let mut out = Vec::new();
    let mut named: std::collections::BTreeSet<String> = config
        .keys()
        .filter(|k| !parse::value_warnings(k, config.get(k).unwrap_or_default()).is_empty())
        .map(str::to_owned)
        .collect();
    named.extend(readers::disagreements(&config.render()));
    for k in &merged.kept {
        for w in parse::value_warnings(k, merged.config.get(k).unwrap_or_default()) {
            out.push(format!("kept local key {k}: {w}"));
            named.insert(k.clone());
        }
    }
    out.extend(
        parse::reader_findings(&merged.config, &named)
            .iter()
            .map(ToString::to_string),
    );
    out
}

/// Writes the sidecar, after ecs.config: it describes the file on disk. Should it fail, the
/// next run takes the keys this run wrote for local ones (kept, with a warning), never loses
/// one; the warning is returned.
fn write_sidecar(opts: &Options, side: &Path, prov: &local::Provenance) -> Option<String> {
    let mut json = match serde_json::to_vec_pretty(prov) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!("cannot encode the record of the keys written: {e}");
            return None;
        }
    };
    json.push(b'\n');
    let e = fsutil::write_atomic(side, &json, 0o600).err()?;
    let w = format!(
        "{} is written, but its record of which keys ecs-bootstrap wrote is not ({e}); the next run \
         will keep keys the object dropped",
        opts.dest.display()
    );
    tracing::warn!("{w}");
    Some(w)
}

/// The text report's lines.
fn summary(d: &Details) -> Vec<String> {
    let mut lines = vec![format!(
        "{} {} from {} ({} keys)",
        d.dest.display(),
        d.file.as_str(),
        d.source,
        d.keys.len()
    )];
    for (label, keys) in [
        ("added", &d.added),
        ("changed", &d.changed),
        ("removed", &d.removed),
    ] {
        if !keys.is_empty() {
            lines.push(format!("{label}: {}", keys.join(", ")));
        }
    }
    lines.extend(d.warnings.iter().map(|w| format!("warning: {w}")));
    lines
}

/// Parses the fetched bytes, applies `--set`, and escalates warnings under `strict`. A source
/// without settings is an error unless `allow_empty`. Pure.
pub fn validate(
    bytes: &[u8],
    sets: &[SetArg],
    strict: bool,
    allow_empty: bool,
) -> (Config, Vec<Finding>) {
    let parsed = parse::parse(bytes);
    let mut findings = parsed.findings;
    if parsed.entries.is_empty() && !findings.iter().any(|f| f.severity == Severity::Error) {
        findings.push(parse::no_settings(allow_empty));
    }
    let mut config = Config::from_entries(&parsed.entries);
    findings.extend(parse::apply_sets(&mut config, sets));
    let warned: std::collections::BTreeSet<String> = config
        .keys()
        .filter(|k| !parse::value_warnings(k, config.get(k).unwrap_or_default()).is_empty())
        .map(str::to_owned)
        .collect();
    findings.extend(parse::reader_findings(&config, &warned));
    parse::escalate(&mut findings, strict);
    (config, findings)
}

/// At most 20 errors, joined, with a count of the rest.
fn summarize(errors: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = errors
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if errors.len() > SHOWN {
        s.push_str(&format!("; and {} more", errors.len() - SHOWN));
    }
    s
}

/// The current destination, for the diff; `None` when absent or not a readable regular file.
#[cfg(test)]
fn read_old(dest: &Path) -> Option<Config> {
    read_old_lines(dest).map(|(c, _)| c)
}

/// The current destination and the numbers of its lines that are not `KEY=VALUE` as we write
/// them (such a line cannot be kept).
fn read_old_lines(dest: &Path) -> Option<(Config, Vec<usize>)> {
    let meta = std::fs::symlink_metadata(dest).ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    let bytes = std::fs::read(dest).ok()?;
    let p = parse::parse(&bytes);
    let mut bad: Vec<usize> = p
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .filter_map(|f| match f.at {
            parse::At::Line(n) => Some(n),
            _ => None,
        })
        .collect();
    bad.dedup();
    Some((Config::from_entries(&p.entries), bad))
}

/// The sidecar of the last write, when there is a readable one (anything else: no record, so
/// every key of the current file counts as local, which keeps them).
fn read_provenance(path: &Path) -> Option<local::Provenance> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The source URL from instance tag `tag`, with clear errors when tags are off or absent.
async fn url_from_tag(imds: &Imds, tag: &str) -> anyhow::Result<S3Url> {
    let reading = || format!("reading the source URL from instance tag {tag:?}");
    let raw = match imds.instance_tag(tag).await.with_context(reading)? {
        Some(r) => r,
        None => {
            return Err(match imds.instance_tag_keys().await {
                Ok(None) => anyhow::anyhow!(
                    "--source-from-tag {tag}: instance metadata tags are off (meta-data/tags/instance is 404); \
                     enable them with `aws ec2 modify-instance-metadata-options --instance-metadata-tags enabled` \
                     (InstanceMetadataTags=enabled in the launch template's MetadataOptions), or give --source"
                ),
                Ok(Some(keys)) => anyhow::anyhow!(
                    "--source-from-tag {tag}: the instance has no tag {tag:?} (its tags: {}); tag the instance \
                     (in the launch template's TagSpecifications) or give --source",
                    keys.join(", ")
                ),
                Err(e) => anyhow::anyhow!(
                    "--source-from-tag {tag}: the instance has no tag {tag:?} ({e})"
                ),
            });
        }
    };
    raw.trim()
        .parse::<S3Url>()
        .map_err(anyhow::Error::new)
        .with_context(|| format!("the value of instance tag {tag:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_applies_sets_and_strict() {
        let sets = vec![parse::parse_set("ECS_CLUSTER=prod").unwrap()];
        let (c, f) = validate(b"ECS_CLUSTER=dev\nECS_LOGLEVEL=info\n", &sets, false, false);
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(c.render(), "ECS_CLUSTER=prod\nECS_LOGLEVEL=info\n");
        let (_, f) = validate(b"ECS_CLUSTR=dev\n", &[], false, false);
        assert_eq!(f[0].severity, Severity::Warning);
        let (_, f) = validate(b"ECS_CLUSTR=dev\n", &[], true, false);
        assert_eq!(f[0].severity, Severity::Error);
    }

    #[test]
    fn summarize_caps() {
        let errs: Vec<String> = (1..=25).map(|i| format!("line {i}: x")).collect();
        let s = summarize(&errs);
        assert!(s.contains("line 20: x") && !s.contains("line 21:") && s.ends_with("and 5 more"));
    }

    #[test]
    fn old_config_is_read_for_the_diff() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ecs.config");
        assert!(read_old(&p).is_none());
        std::fs::write(&p, "A_=1\n").unwrap();
        assert_eq!(read_old(&p).unwrap().get("A_"), Some("1"));
        let l = d.path().join("link");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(read_old(&l).is_none());
    }
}

//! The config step: fetch ecs.config from S3 with the instance role's credentials and write it
//! atomically to the destination (mode 0600).

pub mod source;

use crate::cli::ConfigArgs;
use crate::error::UsageError;
use crate::fsutil::{self, WriteOutcome};
use crate::imds::Imds;
use crate::report::StepResult;
use anyhow::Context as _;
use serde_json::json;
use source::S3Url;
use std::path::PathBuf;

/// Where ecs-init and the ECS agent read their settings.
pub const DEFAULT_DEST: &str = "/etc/ecs/ecs.config";

/// Where the source URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Url(S3Url),
    /// The instance tag with this key holds the URL (instance metadata tags).
    Tag(String),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub source: SourceSpec,
    pub dest: PathBuf,
}

impl Options {
    pub fn from_args(args: &ConfigArgs, root: &crate::sys::Root) -> Result<Self, UsageError> {
        let source = match (&args.source, &args.source_from_tag) {
            (Some(url), _) => SourceSpec::Url(url.parse()?),
            (None, Some(tag)) => SourceSpec::Tag(tag.clone()),
            (None, None) => {
                return Err(UsageError(
                    "no source for ecs.config: give --source s3://BUCKET/KEY (or ECS_BOOTSTRAP_SOURCE, \
                     or set it in /etc/ecs-bootstrap/env), or --source-from-tag KEY"
                        .into(),
                ));
            }
        };
        Ok(Options {
            source,
            dest: args.dest.clone().unwrap_or_else(|| root.join(DEFAULT_DEST)),
        })
    }
}

pub async fn run(
    opts: &Options,
    sdk: &aws_config::SdkConfig,
    imds: &Imds,
) -> anyhow::Result<StepResult> {
    let url = match &opts.source {
        SourceSpec::Url(u) => u.clone(),
        SourceSpec::Tag(tag) => {
            let raw = imds
                .get(&format!("/latest/meta-data/tags/instance/{tag}"))
                .await
                .with_context(|| format!("reading the source URL from instance tag {tag:?}"))?;
            raw.trim()
                .parse()
                .with_context(|| format!("instance tag {tag:?}"))?
        }
    };
    let s3 = aws_sdk_s3::Client::new(sdk);
    let mut req = s3.get_object().bucket(&url.bucket).key(&url.key);
    if let Some(v) = &url.version_id {
        req = req.version_id(v);
    }
    let out = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(crate::imds::error_chain(&e)))
        .with_context(|| format!("fetching {url}"))?;
    let body = out
        .body
        .collect()
        .await
        .with_context(|| format!("reading the body of {url}"))?
        .into_bytes();
    let outcome = fsutil::write_atomic(&opts.dest, &body, 0o600)?;
    let state = match outcome {
        WriteOutcome::Written => "written",
        WriteOutcome::Unchanged => "unchanged",
    };
    Ok(StepResult {
        changed: outcome == WriteOutcome::Written,
        summary: vec![format!("{} {state} from {url}", opts.dest.display())],
        details: json!({"dest": opts.dest, "source": url.to_string(), "file": state}),
    })
}

//! Instance metadata (IMDSv2): one client and one session token for the whole run, shared by
//! the region lookup, the instance role's credentials and the check.
//!
//! The SDK's client fetches and caches the token and retries 5xx and 401; we add bounded
//! retries with backoff around connection failures (refused, timed out), which the SDK does not
//! retry, so a slow IMDS at boot is waited for within the overall deadline.

use anyhow::Context as _;
use aws_config::imds::client::error::ImdsError;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use serde::Deserialize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

/// The endpoint the standard way: `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the IPv6 address
/// when `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`, else `http://169.254.169.254`.
pub fn endpoint_from_env() -> String {
    if let Ok(e) = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        && !e.trim().is_empty()
    {
        return e.trim().trim_end_matches('/').to_owned();
    }
    match std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
        Ok(m) if m.eq_ignore_ascii_case("ipv6") => "http://[fd00:ec2::254]".to_owned(),
        _ => "http://169.254.169.254".to_owned(),
    }
}

/// `iam/info`: the instance profile attached to the instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IamInfo {
    pub instance_profile_arn: String,
    #[serde(default)]
    pub instance_profile_id: String,
}

/// How a metadata request failed, for callers that branch on it.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(
        "instance metadata at {endpoint} did not answer ({detail}); check for rules on the OUTPUT chain or in DOCKER-USER that catch the host's own traffic, an HTTP proxy in the environment (NO_PROXY must include 169.254.169.254), and, for containers, the hop limit"
    )]
    Unreachable { endpoint: String, detail: String },
    #[error("instance metadata has no {path} (HTTP 404)")]
    NotFound { path: String },
    #[error("instance metadata answered HTTP {status} for {path}")]
    Status { path: String, status: u16 },
    #[error("instance metadata request for {path} failed: {detail}")]
    Other { path: String, detail: String },
}

/// The shared IMDS handle.
#[derive(Debug, Clone)]
pub struct Imds {
    client: aws_config::imds::Client,
    endpoint: String,
    /// Upper bound on the time spent retrying connection failures.
    patience: Duration,
    region: std::sync::Arc<OnceCell<String>>,
}

impl Imds {
    /// A client for `endpoint` that gives up retrying connection failures after `patience`.
    pub fn new(endpoint: String, patience: Duration) -> anyhow::Result<Self> {
        let classifier = aws_config::imds::client::ImdsResponseRetryClassifier::default()
            .with_retry_connect_timeouts(true);
        let client = aws_config::imds::Client::builder()
            .endpoint(&endpoint)
            .map_err(|e| anyhow::anyhow!("invalid IMDS endpoint {endpoint:?}: {e}"))?
            .max_attempts(3)
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .retry_classifier(
                aws_smithy_runtime_api::client::retries::classifiers::SharedRetryClassifier::new(
                    classifier,
                ),
            )
            .build();
        Ok(Imds {
            client,
            endpoint,
            patience,
            region: Default::default(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// GET `path` (for example `/latest/meta-data/instance-id`) with the shared token,
    /// retrying connection failures with exponential backoff and jitter within the patience.
    pub async fn get(&self, path: &str) -> Result<String, MetadataError> {
        let start = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            match self.client.get(path).await {
                Ok(v) => return Ok(v.as_ref().to_owned()),
                Err(ImdsError::ErrorResponse(r)) => {
                    let status = r.response().status().as_u16();
                    return Err(if status == 404 {
                        MetadataError::NotFound { path: path.into() }
                    } else {
                        MetadataError::Status {
                            path: path.into(),
                            status,
                        }
                    });
                }
                Err(e) => {
                    let detail = error_chain(&e);
                    let transient =
                        matches!(e, ImdsError::IoError(_) | ImdsError::FailedToLoadToken(_));
                    let elapsed = start.elapsed();
                    if !transient || attempt >= 8 || elapsed + delay > self.patience {
                        return Err(if transient {
                            MetadataError::Unreachable {
                                endpoint: self.endpoint.clone(),
                                detail: format!(
                                    "{detail}; {attempt} attempts in {:.1}s",
                                    elapsed.as_secs_f64()
                                ),
                            }
                        } else {
                            MetadataError::Other {
                                path: path.into(),
                                detail,
                            }
                        });
                    }
                    let sleep = jitter(delay);
                    tracing::warn!(attempt, path, error = %detail, next_delay_ms = sleep.as_millis() as u64, "instance metadata not reachable yet; retrying");
                    tokio::time::sleep(sleep).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
            }
        }
    }

    /// The instance's region (`placement/region`), fetched once per run.
    pub async fn region(&self) -> Result<String, MetadataError> {
        self.region
            .get_or_try_init(|| async {
                self.get("/latest/meta-data/placement/region")
                    .await
                    .map(|r| r.trim().to_owned())
            })
            .await
            .cloned()
    }

    /// The attached instance profile, or `None` when the instance has none (404).
    pub async fn iam_info(&self) -> Result<Option<IamInfo>, MetadataError> {
        match self.get("/latest/meta-data/iam/info").await {
            Ok(body) => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| MetadataError::Other {
                    path: "/latest/meta-data/iam/info".into(),
                    detail: format!("unexpected document: {e}"),
                }),
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The SDK credentials provider for the instance role, on the shared client and token.
    pub fn credentials_provider(&self) -> ImdsCredentialsProvider {
        ImdsCredentialsProvider::builder()
            .imds_client(self.client.clone())
            .build()
    }

    /// Whether IMDSv1 is still open: a GET without a token succeeds. Best effort, one attempt.
    pub async fn v1_open(&self) -> bool {
        matches!(
            raw_get(
                &self.endpoint,
                "/latest/meta-data/instance-id",
                Duration::from_secs(1)
            )
            .await,
            Ok(200)
        )
    }
}

fn jitter(d: Duration) -> Duration {
    // Full jitter without a random-number crate: the clock's sub-microsecond noise is enough to
    // spread a fleet's retries.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0) as u64;
    let ms = d.as_millis().max(1) as u64;
    Duration::from_millis(ms / 2 + nanos % (ms / 2 + 1))
}

/// The error and its sources, one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// A plain HTTP/1.0 GET without a token; returns the status code.
pub async fn raw_get(endpoint: &str, path: &str, timeout: Duration) -> anyhow::Result<u16> {
    let authority = endpoint
        .strip_prefix("http://")
        .with_context(|| format!("only http:// metadata endpoints are supported, not {endpoint}"))?
        .trim_end_matches('/');
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.chars().all(|c| c.is_ascii_digit()) && !authority.ends_with(']'))
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await?;
        let line = String::from_utf8_lossy(&buf[..n]);
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("no HTTP status line"))
    };
    Ok(tokio::time::timeout(timeout, fut)
        .await
        .with_context(|| format!("no answer from {addr} within {timeout:?}"))??)
}

/// The check step: IMDSv2 from the host, and what it says.
pub mod check {
    use super::*;
    use crate::report::StepResult;
    use serde_json::json;

    /// What the check found, for the report.
    #[derive(Debug, Clone, serde::Serialize)]
    pub struct Found {
        pub instance_id: String,
        pub region: String,
        pub instance_profile_arn: String,
        pub role_name: String,
        pub imdsv1_open: bool,
    }

    pub async fn run(imds: &Imds) -> anyhow::Result<StepResult> {
        let instance_id = imds
            .get("/latest/meta-data/instance-id")
            .await
            .context("the host cannot read its instance metadata")?;
        let region = imds.region().await.context("reading placement/region")?;
        let info = imds.iam_info().await.context("reading iam/info")?;
        let Some(info) = info else {
            anyhow::bail!(
                "the instance has no instance profile (iam/info is 404): attach the ECS container instance role \
                 (ecsInstanceRole, with the managed policy AmazonEC2ContainerServiceforEC2Role and s3:GetObject on \
                 the config object) as the instance profile"
            );
        };
        let roles = imds
            .get("/latest/meta-data/iam/security-credentials/")
            .await
            .context("reading iam/security-credentials/")?;
        let role_name = roles.lines().next().unwrap_or("").trim().to_owned();
        let imdsv1_open = imds.v1_open().await;
        if imdsv1_open {
            tracing::warn!(
                "IMDSv1 is still open: a request without a token succeeds. Require IMDSv2 with \
                 `aws ec2 modify-instance-metadata-options --http-tokens required` (HttpTokens=required in the \
                 launch template); a hop limit of 1 (HttpPutResponseHopLimit=1) also keeps the token out of \
                 reach of containers that are not on the host network"
            );
        }
        let found = Found {
            instance_id: instance_id.trim().to_owned(),
            region,
            instance_profile_arn: info.instance_profile_arn,
            role_name,
            imdsv1_open,
        };
        let mut summary = vec![
            format!("instance {} in {}", found.instance_id, found.region),
            format!(
                "instance profile {} (role {})",
                found.instance_profile_arn, found.role_name
            ),
        ];
        if imdsv1_open {
            summary.push("warning: IMDSv1 is open (HttpTokens=optional)".into());
        }
        Ok(StepResult {
            changed: false,
            summary,
            details: json!(found),
        })
    }
}

//! Instance metadata (IMDSv2): one client and one session token for the whole run, shared by
//! the region lookup, the instance role's credentials, the check and prove. This module is the
//! one place that knows metadata paths; callers use its typed accessors.
//!
//! [`request`] makes the requests and owns their retries; [`credentials`] turns the instance
//! role's credentials document into the S3 client's credentials; [`v1`] is the opt-in probe of
//! IMDSv1 (the one request without a token).

mod credentials;
mod request;
mod v1;

pub(crate) use credentials::NoCredentials;
pub use credentials::RoleCredentials;
pub use v1::Imdsv1;

use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;

const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
const REGION: &str = "/latest/meta-data/placement/region";
const IAM_INFO: &str = "/latest/meta-data/iam/info";
/// The instance profile's role names, one a line (an instance profile has one role).
const ROLES: &str = "/latest/meta-data/iam/security-credentials/";
/// The instance's tags, when the instance's metadata options allow them.
const TAGS: &str = "/latest/meta-data/tags/instance";

/// The endpoint the standard way: `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the IPv6 address
/// when `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`, else `http://169.254.169.254`.
pub(crate) fn endpoint_from_env() -> String {
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
pub(crate) struct IamInfo {
    pub instance_profile_arn: String,
}

/// What to look at when the host cannot reach instance metadata.
const UNREACHABLE_HINT: &str = "look for a rule on the OUTPUT chain (iptables -S OUTPUT, nft list ruleset) that drops or \
     rejects the host's own traffic to 169.254.169.254, a transparent proxy or firewall in the path (ecs-bootstrap \
     sends metadata requests directly, never through HTTP_PROXY), and the instance's metadata options (HttpEndpoint=enabled; a hop limit, \
     HttpPutResponseHopLimit, of 1 stops the token at the first hop, so an agent in a container needs 2)";

/// How a metadata request failed, for callers that branch on it.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("the host cannot reach instance metadata at {endpoint} ({detail}); {UNREACHABLE_HINT}")]
    Unreachable { endpoint: String, detail: String },
    #[error(
        "instance metadata at {endpoint} is too slow: it accepted the connection but did not answer in time \
         ({detail}); it is reachable, so look at what delays it (a metadata proxy or agent in the path, a \
         host starved of CPU), or raise --deadline"
    )]
    TooSlow { endpoint: String, detail: String },
    #[error("instance metadata has no {path} (HTTP 404)")]
    NotFound { path: String },
    #[error("instance metadata answered HTTP {status} for {path}{hint}")]
    Status {
        path: String,
        status: u16,
        hint: String,
    },
    #[error("instance metadata request for {path} failed: {detail}")]
    Other { path: String, detail: String },
    #[error("instance metadata's {path} is not what it should be: {problem}")]
    Document { path: String, problem: String },
    #[error(
        "instance metadata request for {path} not made: the overall deadline has passed (an earlier step used the \
         time up); raise --deadline"
    )]
    NoTimeLeft { path: String },
}

/// The shared IMDS handle; clones share the client, the token and the answers asked once.
#[derive(Debug, Clone)]
pub struct Imds {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The SDK client (it holds the cached token) and its generation; replaced on a 401.
    client: std::sync::Mutex<(u64, aws_config::imds::Client)>,
    endpoint: String,
    /// No request or retry runs past this instant.
    deadline: Instant,
    region: OnceCell<String>,
    /// The instance profile's role, asked once per run (the credentials and the check need it).
    role: OnceCell<Option<String>>,
    /// Some request gave up because IMDS did not answer (after its retries).
    unreachable: AtomicBool,
    /// Until then an `iam/` 404 is waited out: an instance profile associated just after
    /// launch shows up in metadata seconds later.
    profile_grace_until: Instant,
    /// The wait for an instance profile was announced (once per run).
    profile_wait_said: AtomicBool,
}

/// How long a run waits for an instance profile to show up (at most half the time left).
const PROFILE_GRACE: Duration = Duration::from_secs(20);

impl Imds {
    /// A client for `endpoint` whose requests and retries all end before `deadline` (less a
    /// small margin, so that the caller still has time to report why).
    pub(crate) fn new(endpoint: String, deadline: Instant) -> anyhow::Result<Self> {
        let client = request::build_client(&endpoint)?;
        let now = Instant::now();
        let left = deadline.saturating_duration_since(now);
        let margin = (left / 10).min(Duration::from_millis(500));
        Ok(Imds {
            inner: Arc::new(Inner {
                client: std::sync::Mutex::new((0, client)),
                endpoint,
                deadline: deadline - margin,
                region: OnceCell::new(),
                role: OnceCell::new(),
                unreachable: AtomicBool::new(false),
                profile_grace_until: now + PROFILE_GRACE.min(left / 2),
                profile_wait_said: AtomicBool::new(false),
            }),
        })
    }

    /// Whether a request of this run gave up because IMDS did not answer, however the error
    /// travelled afterwards (the SDK's credentials error keeps only its text).
    pub(crate) fn was_unreachable(&self) -> bool {
        self.inner.unreachable.load(Ordering::Relaxed)
    }

    /// The instance's ID.
    pub(crate) async fn instance_id(&self) -> Result<String, MetadataError> {
        self.get(INSTANCE_ID).await.map(|r| r.trim().to_owned())
    }

    /// The instance's region (`placement/region`), asked once per run.
    pub(crate) async fn region(&self) -> Result<String, MetadataError> {
        self.inner
            .region
            .get_or_try_init(|| async { self.get(REGION).await.map(|r| r.trim().to_owned()) })
            .await
            .cloned()
    }

    /// The attached instance profile, or `None` when the instance has none (404).
    pub(crate) async fn iam_info(&self) -> Result<Option<IamInfo>, MetadataError> {
        match self.get(IAM_INFO).await {
            Ok(body) => {
                serde_json::from_str(&body)
                    .map(Some)
                    .map_err(|e| MetadataError::Document {
                        path: IAM_INFO.into(),
                        problem: format!("not the expected JSON document: {e}"),
                    })
            }
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The role of the instance profile (first line of `iam/security-credentials/`), or `None`
    /// when the instance has no instance profile (404 or empty). Asked once per run: the
    /// credentials provider and the check share the answer.
    pub(crate) async fn role_name(&self) -> Result<Option<String>, MetadataError> {
        self.inner
            .role
            .get_or_try_init(|| async {
                match self.get(ROLES).await {
                    Ok(body) => Ok(body
                        .lines()
                        .map(str::trim)
                        .find(|l| !l.is_empty())
                        .map(str::to_owned)),
                    Err(MetadataError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .cloned()
    }

    /// The temporary credentials of `role` (see [`Imds::role_name`]); `None` when metadata has
    /// none for it (404).
    pub(crate) async fn credentials(
        &self,
        role: &str,
    ) -> Result<Option<aws_credential_types::Credentials>, MetadataError> {
        if !path_safe(role) {
            return Ok(None);
        }
        let path = format!("{ROLES}{role}");
        match self.get(&path).await {
            Ok(body) => credentials::parse(&path, &body).map(Some),
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A credentials provider for the instance role on the shared client, token and retries.
    pub(crate) fn credentials_provider(&self) -> RoleCredentials {
        RoleCredentials::new(self.clone())
    }

    /// The value of the instance tag `key`; `None` when the instance has no such tag, or tags
    /// are off in its metadata options (tell them apart with [`Imds::instance_tag_keys`]).
    pub(crate) async fn instance_tag(&self, key: &str) -> Result<Option<String>, MetadataError> {
        // Metadata cannot serve a tag whose key would not be one path segment.
        if !path_safe(key) {
            return Ok(None);
        }
        match self.get(&format!("{TAGS}/{key}")).await {
            Ok(v) => Ok(Some(v)),
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The keys of the instance's tags; `None` when tags are off in its metadata options.
    pub(crate) async fn instance_tag_keys(&self) -> Result<Option<Vec<String>>, MetadataError> {
        match self.get(TAGS).await {
            Ok(list) => Ok(Some(list.lines().map(str::to_owned).collect())),
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether IMDSv1 still answers: one GET of the instance ID without a token, best effort,
    /// one attempt of at most a second.
    pub(crate) async fn probe_imdsv1(&self) -> Imdsv1 {
        let timeout = self
            .inner
            .deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        v1::probe(&self.inner.endpoint, INSTANCE_ID, timeout).await
    }
}

/// Whether `segment` can be put in a metadata path as one segment, as it is: the characters
/// EC2 allows in tag keys that metadata serves, and in role names.
fn path_safe(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-=.,_:@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_segment_goes_into_a_path() {
        for ok in ["Name", "ecs-config_url", "a.b", "team:x", "w+e=r@s,t"] {
            assert!(path_safe(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a?b", "a#b", "a%2Fb", "é"] {
            assert!(!path_safe(bad), "{bad}");
        }
    }
}

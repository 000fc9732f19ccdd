//! Instance metadata (IMDSv2): one client and one session token for the whole run, shared by
//! the region lookup, the instance role's credentials and the check.
//!
//! The SDK's client fetches and caches the token; it makes one attempt per request and we own
//! the retries: connection failures (refused, reset, timed out) and 5xx answers are retried with
//! backoff and jitter until shortly before the overall deadline, one log line per retry. A 401
//! after a token was issued (the token was invalidated) makes us fetch a new token once and
//! retry; the SDK alone would retry with the same cached token.

use anyhow::Context as _;
use aws_config::imds::client::error::{ImdsError, TokenError};
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use aws_sdk_s3::config::Credentials;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// Upper bound on attempts of one request (the deadline usually ends them first).
const MAX_ATTEMPTS: u32 = 40;
const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(2);

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
    #[error(
        "instance metadata request for {path} not made: the overall deadline has passed (an earlier step used the \
         time up); raise --deadline"
    )]
    NoTimeLeft { path: String },
}

/// The shared IMDS handle; clones share the client, the token and the region.
#[derive(Debug, Clone)]
pub struct Imds {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The SDK client (it holds the cached token) and its generation; replaced on a 401.
    client: Mutex<(u64, aws_config::imds::Client)>,
    endpoint: String,
    /// No request or retry runs past this instant.
    deadline: Instant,
    region: OnceCell<String>,
    /// The instance profile's role, asked once per run (the credentials and the check need it).
    role: OnceCell<Option<String>>,
    /// Some request gave up because IMDS did not answer (after its retries).
    unreachable: std::sync::atomic::AtomicBool,
    /// Until then an `iam/` 404 is waited out: an instance profile associated just after
    /// launch shows up in metadata seconds later.
    profile_grace_until: Instant,
    /// The wait for an instance profile was announced (once per run).
    profile_wait_said: std::sync::atomic::AtomicBool,
}

/// How long a run waits for an instance profile to show up (at most half the time left).
pub const PROFILE_GRACE: Duration = Duration::from_secs(20);

/// Why an attempt got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silence {
    /// The connection failed (refused, reset, no route, connect timeout).
    Connection,
    /// Connected, but the answer did not come within the read limit.
    Slow,
    /// The overall deadline cut the attempt: which of the two is unknown.
    Cut,
    /// An answer came (5xx).
    Answered,
}

/// One failed attempt, classified.
enum Attempt {
    /// Not answering, or answering 5xx: worth another try. `kind` tells a connection that was
    /// never made from one that was made and then not answered in time.
    Transient {
        detail: String,
        status: Option<u16>,
        kind: Silence,
    },
    /// The token was refused.
    Unauthorized,
    Fatal(MetadataError),
}

fn build_client(endpoint: &str) -> anyhow::Result<aws_config::imds::Client> {
    // IMDS is plain HTTP on a link-local address: a connector without TLS, so that building it
    // does not read the system's certificate store (146 files on Debian, about 6 ms at the very
    // start of every boot), and without a proxy: the SDK's default client applies HTTP_PROXY
    // to IMDS too, so a proxy set for S3 would capture 169.254.169.254 unless NO_PROXY named
    // it. The S3 client keeps the default HTTPS connector, proxy variables included.
    // `build_http` is doc(hidden) in aws-smithy-http-client but public; Cargo.lock pins it.
    let http = aws_smithy_http_client::Builder::new().build_http();
    let provider =
        aws_config::provider_config::ProviderConfig::without_region().with_http_client(http);
    Ok(aws_config::imds::Client::builder()
        .configure(&provider)
        .endpoint(endpoint)
        .map_err(|e| anyhow::anyhow!("invalid IMDS endpoint {endpoint:?}: {e}"))?
        .max_attempts(1)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(2))
        .build())
}

impl Imds {
    /// A client for `endpoint` whose requests and retries all end before `deadline` (less a
    /// small margin, so that the caller still has time to report why).
    pub fn new(endpoint: String, deadline: Instant) -> anyhow::Result<Self> {
        let client = build_client(&endpoint)?;
        let now = Instant::now();
        let margin = (deadline.saturating_duration_since(now) / 10).min(Duration::from_millis(500));
        Ok(Imds {
            inner: Arc::new(Inner {
                client: Mutex::new((0, client)),
                endpoint,
                deadline: deadline - margin,
                region: OnceCell::new(),
                role: OnceCell::new(),
                unreachable: Default::default(),
                profile_grace_until: now
                    + PROFILE_GRACE.min(deadline.saturating_duration_since(now) / 2),
                profile_wait_said: Default::default(),
            }),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Whether a request of this run gave up because IMDS did not answer, however the error
    /// travelled afterwards (the SDK's credentials error keeps only its text).
    pub fn was_unreachable(&self) -> bool {
        self.inner
            .unreachable
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The instant by which every metadata request gives up.
    pub fn deadline(&self) -> Instant {
        self.inner.deadline
    }

    fn client(&self) -> (u64, aws_config::imds::Client) {
        let g = self.inner.client.lock().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone())
    }

    /// Drops the cached token (a new client, so the next request PUTs for a new one), unless
    /// another request already did since `seen`.
    fn renew_token(&self, seen: u64) {
        let mut g = self.inner.client.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 == seen
            && let Ok(c) = build_client(&self.inner.endpoint)
        {
            *g = (seen + 1, c);
        }
    }

    async fn attempt(&self, path: &str) -> (u64, Result<String, Attempt>) {
        let (generation, client) = self.client();
        let r = match tokio::time::timeout_at(self.inner.deadline, client.get(path)).await {
            Err(_) => Err(Attempt::Transient {
                detail: "no answer before the deadline".into(),
                status: None,
                kind: Silence::Cut,
            }),
            Ok(Ok(v)) => Ok(v.as_ref().to_owned()),
            Ok(Err(e)) => Err(classify(path, &e)),
        };
        (generation, r)
    }

    /// GET `path` (for example `/latest/meta-data/instance-id`) with the shared token.
    pub async fn get(&self, path: &str) -> Result<String, MetadataError> {
        let start = Instant::now();
        let mut delay = FIRST_DELAY;
        let mut renewed = false;
        let mut attempt = 1u32;
        let (mut slow, mut unconnected) = (false, false);
        if start >= self.inner.deadline {
            // Not a sign of an unreachable IMDS: there was no time to ask.
            return Err(MetadataError::NoTimeLeft { path: path.into() });
        }
        loop {
            let (generation, r) = self.attempt(path).await;
            let (detail, status) = match r {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(MetadataError::NotFound { path: p }))
                    if p.starts_with("/latest/meta-data/iam/")
                        && Instant::now() < self.inner.profile_grace_until =>
                {
                    let left = self
                        .inner
                        .profile_grace_until
                        .saturating_duration_since(Instant::now());
                    if !self
                        .inner
                        .profile_wait_said
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                    {
                        tracing::warn!(
                            path = %p,
                            "no instance profile yet ({p} is 404): one associated at launch shows up in \
                             metadata seconds later; waiting up to {:.0} s for it",
                            left.as_secs_f64()
                        );
                    }
                    tokio::time::sleep(jitter(Duration::from_secs(1)).min(left)).await;
                    continue;
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Unauthorized) if !renewed => {
                    tracing::warn!(
                        path,
                        "instance metadata refused the session token (HTTP 401); fetching a new token"
                    );
                    self.renew_token(generation);
                    renewed = true;
                    continue;
                }
                Err(Attempt::Unauthorized) => {
                    return Err(MetadataError::Status {
                        path: path.into(),
                        status: 401,
                        hint: "; a new session token was refused too: is something between the host and IMDS \
                               (a proxy adding X-Forwarded-For) or is the clock far off?"
                            .into(),
                    });
                }
                Err(Attempt::Transient {
                    detail,
                    status,
                    kind,
                }) => {
                    slow |= kind == Silence::Slow;
                    unconnected |= kind == Silence::Connection;
                    (detail, status)
                }
            };
            let now = Instant::now();
            let sleep = jitter(delay);
            if attempt >= MAX_ATTEMPTS || now + sleep >= self.inner.deadline {
                let tried = format!(
                    "{attempt} attempt{} in {:.1}s",
                    if attempt == 1 { "" } else { "s" },
                    (now - start).as_secs_f64()
                );
                return Err(match status {
                    Some(status) => MetadataError::Status {
                        path: path.into(),
                        status,
                        hint: format!(
                            " ({tried}): instance metadata is not serving; wait and retry, or raise --deadline"
                        ),
                    },
                    // Every connection was made (the host reaches IMDS), answers were late.
                    None if slow && !unconnected => MetadataError::TooSlow {
                        endpoint: self.inner.endpoint.clone(),
                        detail: format!("{detail}; {tried}"),
                    },
                    None => {
                        self.inner
                            .unreachable
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        MetadataError::Unreachable {
                            endpoint: self.inner.endpoint.clone(),
                            detail: format!("{detail}; {tried}"),
                        }
                    }
                });
            }
            tracing::warn!(
                attempt,
                path,
                error = %detail,
                retry_in_ms = sleep.as_millis() as u64,
                "instance metadata did not answer; retrying"
            );
            tokio::time::sleep(sleep).await;
            delay = (delay * 2).min(MAX_DELAY);
            attempt += 1;
        }
    }

    /// The instance's region (`placement/region`), fetched once per run.
    pub async fn region(&self) -> Result<String, MetadataError> {
        self.inner
            .region
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

    /// The role of the instance profile (first line of `iam/security-credentials/`), or `None`
    /// when the instance has no instance profile (404 or empty). Asked once per run: the
    /// credentials provider and the check share the answer.
    pub async fn role_name(&self) -> Result<Option<String>, MetadataError> {
        self.inner
            .role
            .get_or_try_init(|| async {
                match self
                    .get("/latest/meta-data/iam/security-credentials/")
                    .await
                {
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

    /// A credentials provider for the instance role on the shared client, token and retries.
    pub fn credentials_provider(&self) -> RoleCredentials {
        RoleCredentials { imds: self.clone() }
    }

    /// Whether IMDSv1 is still open: a GET without a token succeeds. Best effort, one attempt.
    pub async fn v1_open(&self) -> bool {
        let timeout = self
            .inner
            .deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1));
        matches!(
            raw_get(
                &self.inner.endpoint,
                "/latest/meta-data/instance-id",
                timeout
            )
            .await,
            Ok(200)
        )
    }
}

fn classify(path: &str, e: &ImdsError) -> Attempt {
    let transient = |status: Option<u16>| {
        let chain = error_chain(e);
        let kind = match status {
            Some(_) => Silence::Answered,
            // The SDK's words for a connection that was made but not answered in time.
            None if chain.contains("read timeout") => Silence::Slow,
            None => Silence::Connection,
        };
        Attempt::Transient {
            detail: match (status, e) {
                (Some(s), ImdsError::FailedToLoadToken(_)) => format!("HTTP {s} for the token PUT"),
                (Some(s), _) => format!("HTTP {s}"),
                (None, _) => chain,
            },
            status,
            kind,
        }
    };
    match e {
        ImdsError::ErrorResponse(r) => match r.response().status().as_u16() {
            404 => Attempt::Fatal(MetadataError::NotFound { path: path.into() }),
            401 => Attempt::Unauthorized,
            s if s >= 500 => transient(Some(s)),
            status => Attempt::Fatal(MetadataError::Status {
                path: path.into(),
                status,
                hint: String::new(),
            }),
        },
        ImdsError::IoError(_) => transient(None),
        // The SDK reports a failed connect (refused, reset, connect timeout) on a request made
        // with a cached token as `Unexpected`: at boot, or with a fleet's worth of requests at
        // once, that is the commonest transient failure of all.
        ImdsError::Unexpected(_) if is_connection_failure(e) => transient(None),
        ImdsError::FailedToLoadToken(_) => {
            let status = std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<SdkError<TokenError, HttpResponse>>())
                .and_then(|s| s.raw_response())
                .map(|r| r.status().as_u16());
            match status {
                Some(s) if s >= 500 => transient(Some(s)),
                Some(403) => Attempt::Fatal(MetadataError::Status {
                    path: "/latest/api/token".into(),
                    status: 403,
                    hint: ": IMDS refuses tokens to this caller (disabled with HttpEndpoint=disabled, or the \
                           request passed a transparent proxy that added X-Forwarded-For; ecs-bootstrap itself never sends metadata requests through HTTP_PROXY)"
                        .into(),
                }),
                Some(s @ (404 | 405)) => Attempt::Fatal(MetadataError::Status {
                    path: "/latest/api/token".into(),
                    status: s,
                    hint: ": the metadata service does not issue IMDSv2 session tokens (an IMDSv1-only \
                           emulator or proxy in the path?); ecs-bootstrap uses IMDSv2 only, as the ECS agent \
                           does with HttpTokens=required"
                        .into(),
                }),
                Some(s) => Attempt::Fatal(MetadataError::Status {
                    path: "/latest/api/token".into(),
                    status: s,
                    hint: String::new(),
                }),
                None => transient(None),
            }
        }
        _ => Attempt::Fatal(MetadataError::Other {
            path: path.into(),
            detail: error_chain(e),
        }),
    }
}

/// Whether `e` was caused by the connection (an I/O error or a timeout somewhere in its
/// sources) rather than by what IMDS answered.
fn is_connection_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    // Bounded: error chains are short, and a cycle must not hang the boot.
    for _ in 0..16 {
        let Some(c) = cur else { return false };
        if c.is::<std::io::Error>() || c.is::<aws_smithy_async::future::timeout::TimedOutError>() {
            return true;
        }
        cur = c.source();
    }
    false
}

/// The instance role's temporary credentials from `iam/security-credentials/ROLE`.
#[derive(Debug, Clone)]
pub struct RoleCredentials {
    imds: Imds,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsDoc {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    token: Option<String>,
    expiration: Option<String>,
}

impl RoleCredentials {
    async fn load(&self) -> provider::Result {
        let role = match self.imds.role_name().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(CredentialsError::not_loaded(
                    "the instance has no instance profile (iam/security-credentials/ is 404)",
                ));
            }
            Err(e) => return Err(CredentialsError::provider_error(e)),
        };
        let path = format!("/latest/meta-data/iam/security-credentials/{role}");
        let body = match self.imds.get(&path).await {
            Ok(b) => b,
            Err(MetadataError::NotFound { .. }) => {
                return Err(CredentialsError::not_loaded(format!(
                    "the instance profile's role {role} has no credentials ({path} is 404)"
                )));
            }
            Err(e) => return Err(CredentialsError::provider_error(e)),
        };
        // Never put the body in an error: it holds the secret key.
        let doc: CredentialsDoc = serde_json::from_str(&body).map_err(|e| {
            CredentialsError::unhandled(format!(
                "{path}: not a credentials document (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if let Some(code) = doc.code.as_deref()
            && code != "Success"
        {
            return Err(CredentialsError::provider_error(format!(
                "{path}: Code {code}: {}",
                doc.message.as_deref().unwrap_or("")
            )));
        }
        let (Some(akid), Some(secret)) = (doc.access_key_id, doc.secret_access_key) else {
            return Err(CredentialsError::unhandled(format!(
                "{path}: the document lacks AccessKeyId or SecretAccessKey"
            )));
        };
        let expiry = match doc.expiration.as_deref() {
            None => None,
            Some(s) => Some(
                aws_sdk_s3::primitives::DateTime::from_str(
                    s,
                    aws_sdk_s3::primitives::DateTimeFormat::DateTime,
                )
                .ok()
                .and_then(|d| std::time::SystemTime::try_from(d).ok())
                .ok_or_else(|| {
                    CredentialsError::unhandled(format!(
                        "{path}: Expiration {s:?} is not an RFC 3339 time"
                    ))
                })?,
            ),
        };
        Ok(Credentials::new(
            akid,
            secret,
            doc.token,
            expiry,
            "instance-metadata",
        ))
    }
}

impl ProvideCredentials for RoleCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.load())
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

    /// The error for an instance without an instance profile.
    pub const NO_PROFILE: &str = "the instance has no instance profile (iam/info is 404): attach an instance profile \
        with the ECS container instance role, ecsInstanceRole, which has the managed policy \
        AmazonEC2ContainerServiceforEC2Role (plus s3:GetObject on the config object); see `ecs-bootstrap iam-policy`";

    pub async fn run(imds: &Imds) -> anyhow::Result<StepResult> {
        let instance_id = imds
            .get("/latest/meta-data/instance-id")
            .await
            .context("reading meta-data/instance-id")?;
        let region = imds.region().await.context("reading placement/region")?;
        let Some(info) = imds.iam_info().await.context("reading iam/info")? else {
            anyhow::bail!(NO_PROFILE);
        };
        let Some(role_name) = imds
            .role_name()
            .await
            .context("reading iam/security-credentials/")?
        else {
            anyhow::bail!(NO_PROFILE);
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// Reads one request head (the test's requests have no body) and answers `response`.
    async fn answer(listener: &TcpListener, response: &str) -> String {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before sending a request");
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(response.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        String::from_utf8_lossy(&head).into_owned()
    }

    /// A GET whose connection is refused after the token was issued (IMDS restarting, or its
    /// accept queue full at boot) is retried, not reported at once as an unexpected error.
    #[tokio::test]
    async fn connection_refused_after_the_token_is_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let put = answer(
                &listener,
                "HTTP/1.1 200 OK\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\
                 Content-Length: 5\r\nConnection: close\r\n\r\ntoken",
            )
            .await;
            assert!(put.starts_with("PUT /latest/api/token"), "{put}");
            drop(listener);
            // Nobody listens for a while: the client's next connect is refused.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let listener = TcpListener::bind(addr).await.unwrap();
            let get = answer(
                &listener,
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nus-east-1",
            )
            .await;
            assert!(
                get.starts_with("GET /latest/meta-data/placement/region"),
                "{get}"
            );
            assert!(
                get.to_ascii_lowercase()
                    .contains("x-aws-ec2-metadata-token: token"),
                "{get}"
            );
        });
        let imds = Imds::new(
            format!("http://{addr}"),
            Instant::now() + Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(imds.region().await.unwrap(), "us-east-1");
        server.await.unwrap();
    }
}

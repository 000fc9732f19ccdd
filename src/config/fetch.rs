//! GetObject with the instance role's credentials: our own bounded retry loop (the SDK's retry is
//! off so that every attempt is logged once), per-attempt time limits, the size cap, the region
//! hint, the expected bucket owner. The decisions are in [`super::retry`].

use super::retry::{Decision, Failure, decide};
use super::source::S3Url;
use crate::backoff::{Backoff, Stop};
use crate::imds::Imds;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::{Credentials, ProvideCredentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use std::time::Duration;
use tokio::time::Instant;

/// What to fetch and within which limits.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub url: &'a S3Url,
    pub expected_owner: Option<&'a str>,
    pub max_size: u64,
    pub deadline: Instant,
}

/// The object.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub region: String,
    pub attempts: u32,
    pub version_id: Option<String>,
    pub etag: Option<String>,
}

/// Why the fetch failed, with what to do. Never holds credentials or object content.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "access denied reading {url} ({detail}): the instance role needs {action} on {resource} \
         (instance profile: {profile}){owner_hint}; check the role's policy and the bucket policy, and for a \
         KMS-encrypted object kms:Decrypt on its key; without s3:ListBucket on the bucket S3 also answers a missing \
         key with AccessDenied, so check that the key exists"
    )]
    AccessDenied {
        url: String,
        /// The object's ARN, as an IAM policy names it.
        resource: String,
        action: &'static str,
        profile: String,
        owner_hint: String,
        detail: String,
    },
    #[error(
        "access denied reading {url} ({detail}): the instance role may read the object (a HEAD of it works) but \
         not decrypt it: it is encrypted with the KMS key {key}, and the role (instance profile: {profile}) \
         needs kms:Decrypt on that key, through S3 (`ecs-bootstrap iam-policy --kms-key {key}` prints the \
         statement), and the key policy must allow the role's account"
    )]
    KmsDenied {
        url: String,
        key: String,
        profile: String,
        detail: String,
    },
    #[error(
        "{what} ({detail}); nothing was retried; once it exists, the instance role (instance profile: {profile}) \
         reads it with {action}"
    )]
    NotFound {
        what: String,
        detail: String,
        action: &'static str,
        profile: String,
    },
    #[error(
        "{url} is {size} bytes, larger than --max-size {max}: refused without reading it; raise --max-size if the \
         object is right"
    )]
    TooLarge { url: String, size: u64, max: u64 },
    #[error(
        "{url} sent more than --max-size {max} bytes (no Content-Length): stopped reading there, nothing written; \
         raise --max-size if the object is right"
    )]
    TooLargeStreamed { url: String, max: u64 },
    #[error(
        "cannot get credentials of the instance role to read {url}: {detail}; attach an instance profile with the ECS \
         container instance role (ecsInstanceRole: AmazonEC2ContainerServiceforEC2Role plus s3:GetObject on the \
         object; `ecs-bootstrap iam-policy` prints it)"
    )]
    NoCredentials { url: String, detail: String },
    #[error("giving up on {url} after {attempts} attempt(s) ({why}); last failure: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        why: &'static str,
        last: String,
    },
    #[error("reading {url} failed: {detail}")]
    Failed { url: String, detail: String },
}

/// Connect and first-byte limits of one attempt, and the longest pause inside a body.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one attempt may take (the deadline may cut it shorter).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Stop this much before the overall deadline so our own message says what happened.
const MARGIN: Duration = Duration::from_millis(300);

struct AttemptError {
    failure: Failure,
    detail: String,
    /// The `Date` header of S3's answer, when it sent one: the clock to sign with after a
    /// RequestTimeTooSkewed.
    server_date: Option<std::time::SystemTime>,
}

impl AttemptError {
    fn new(failure: Failure, detail: impl Into<String>) -> Self {
        AttemptError {
            failure,
            detail: detail.into(),
            server_date: None,
        }
    }
}

/// The system clock moved by the offset learnt from S3's `Date` header, for signing.
#[derive(Debug, Clone, Copy)]
struct SkewedClock {
    /// S3's clock minus ours, in milliseconds.
    offset_ms: i64,
}

impl aws_smithy_async::time::TimeSource for SkewedClock {
    fn now(&self) -> std::time::SystemTime {
        let now = std::time::SystemTime::now();
        let d = Duration::from_millis(self.offset_ms.unsigned_abs());
        if self.offset_ms >= 0 {
            now + d
        } else {
            now.checked_sub(d).unwrap_or(now)
        }
    }
}

/// S3's clock minus ours, from a `Date` header's time.
fn clock_offset_ms(server: std::time::SystemTime) -> i64 {
    let now = std::time::SystemTime::now();
    match server.duration_since(now) {
        Ok(ahead) => ahead.as_millis().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_millis().min(i64::MAX as u128) as i64),
    }
}

/// Loads the system's root certificates on a thread of its own, so that they are ready when
/// the S3 client builds its HTTPS connector after the region and credentials come from IMDS.
/// The SDK reads them once per process (a cached `LazyLock` inside aws-smithy-http-client;
/// a second reader waits for the first) and building its default connector is what fills the
/// cache: on Debian that is over a hundred files, time that would otherwise sit on the
/// config step's critical path. Best effort: if the thread cannot start, the S3 client loads
/// them itself.
pub fn preload_tls_roots() {
    let _ = std::thread::Builder::new()
        .name("tls-roots".into())
        .spawn(|| {
            drop(aws_smithy_http_client::default_connector(
                &aws_smithy_runtime_api::client::http::HttpConnectorSettings::default(),
                None,
            ))
        });
}

/// What the attempts of one fetch learn and carry to the next.
struct Session {
    /// Where the next attempt goes.
    region: String,
    /// S3's region hint was followed already (once per fetch).
    redirected: bool,
    /// The instance role's credentials, kept until S3 asks for new ones.
    creds: Option<Credentials>,
    /// S3's clock, once S3 refused ours.
    clock: Option<SkewedClock>,
}

/// The object as one attempt got it.
struct Object {
    bytes: Vec<u8>,
    version_id: Option<String>,
    etag: Option<String>,
}

/// Fetches the object, retrying transient failures within `req.deadline`.
pub async fn fetch(
    req: &Request<'_>,
    sdk: &aws_config::SdkConfig,
    imds: &Imds,
) -> Result<Fetched, FetchError> {
    let url = req.url.to_string();
    let deadline = req.deadline.checked_sub(MARGIN).unwrap_or(req.deadline);
    let mut s = Session {
        // An access point ARN names its region; S3 must be asked there.
        region: match req.url.access_point() {
            Some(ap) => ap.region,
            None => sdk
                .region()
                .map(|r| r.as_ref().to_owned())
                .unwrap_or_else(|| "us-east-1".to_owned()),
        },
        redirected: false,
        creds: None,
        clock: None,
    };
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = match one_attempt(req, sdk, &mut s, deadline).await {
            Ok(o) => {
                return Ok(Fetched {
                    bytes: o.bytes,
                    region: s.region,
                    attempts: attempt,
                    version_id: o.version_id,
                    etag: o.etag,
                });
            }
            Err(e) => e,
        };
        let what = format!("{}: {}", err.failure, err.detail);
        match decide(&err.failure, &s.region, s.redirected) {
            Decision::Redirect(to) => {
                tracing::warn!(
                    attempt,
                    source = %url,
                    error = %what,
                    from_region = %s.region,
                    to_region = %to,
                    next_delay_ms = 0u64,
                    "the bucket is in another region; retrying there"
                );
                s.region = to;
                s.redirected = true;
                continue;
            }
            Decision::Fail => {
                let kms = match &err.failure {
                    Failure::Http { status: 403, .. } => kms_key_of(req, sdk, &s, deadline).await,
                    _ => None,
                };
                return Err(fatal(req, err, imds, deadline, &s.region, kms).await);
            }
            Decision::Retry => {}
        }
        s.learn(&err, attempt, &url);
        wait_or_give_up(attempt, deadline, &url, what).await?;
    }
}

/// Sleeps the backoff's delay after failed attempt `attempt`, or gives up when the deadline
/// leaves no time for another (`what`: the last failure).
async fn wait_or_give_up(
    attempt: u32,
    deadline: Instant,
    url: &str,
    what: String,
) -> Result<(), FetchError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    match Backoff::S3.next(attempt, remaining, fastrand::f64()) {
        Ok(delay) => {
            tracing::warn!(
                attempt,
                source = %url,
                error = %what,
                next_delay_ms = delay.as_millis() as u64,
                "fetch attempt failed; retrying"
            );
            tokio::time::sleep(delay).await;
            Ok(())
        }
        Err(stop) => {
            let why = match stop {
                Stop::Attempts => "no attempts left",
                Stop::Deadline => {
                    "the deadline leaves no time for another attempt; raise --deadline"
                }
            };
            tracing::warn!(attempt, source = %url, error = %what, "fetch attempt failed; {why}");
            Err(FetchError::GaveUp {
                url: url.to_owned(),
                attempts: attempt,
                why,
                last: what,
            })
        }
    }
}

impl Session {
    /// Before the attempt after a retryable failure: drops credentials S3 called stale, and
    /// takes S3's clock when S3 refused ours.
    fn learn(&mut self, err: &AttemptError, attempt: u32, url: &str) {
        if super::retry::needs_new_credentials(&err.failure) {
            self.creds = None;
        }
        if let (Failure::Http { code: Some(c), .. }, Some(date)) = (&err.failure, err.server_date)
            && c == "RequestTimeTooSkewed"
        {
            let offset_ms = clock_offset_ms(date);
            tracing::warn!(
                attempt,
                source = %url,
                clock_offset_s = offset_ms / 1000,
                "S3 refused the request time (RequestTimeTooSkewed): this host's clock is {:.0} s {} S3's; \
                 signing the next attempts with S3's time (fix the clock: is chronyd or systemd-timesyncd \
                 running, and does it reach 169.254.169.123?)",
                (offset_ms.unsigned_abs() as f64) / 1000.0,
                if offset_ms >= 0 { "behind" } else { "ahead of" }
            );
            self.clock = Some(SkewedClock { offset_ms });
        }
    }
}

async fn one_attempt(
    req: &Request<'_>,
    sdk: &aws_config::SdkConfig,
    s: &mut Session,
    deadline: Instant,
) -> Result<Object, AttemptError> {
    let now = Instant::now();
    if now >= deadline {
        return Err(AttemptError::new(
            Failure::Timeout,
            "the overall deadline has passed",
        ));
    }
    let attempt_deadline = deadline.min(now + ATTEMPT_TIMEOUT);
    let c = match &s.creds {
        Some(c) => c.clone(),
        None => {
            let c = credentials(sdk, attempt_deadline).await?;
            s.creds = Some(c.clone());
            c
        }
    };
    let client = s3_client(sdk, &s.region, c, s.clock, false);
    let send = client
        .get_object()
        .bucket(&req.url.bucket)
        .key(&req.url.key)
        .set_version_id(req.url.version_id.clone())
        .set_expected_bucket_owner(req.expected_owner.map(str::to_owned))
        .send();
    let out = match tokio::time::timeout_at(attempt_deadline, send).await {
        Err(_) => {
            return Err(AttemptError::new(
                Failure::Timeout,
                format!(
                    "no answer within {:.1}s",
                    (attempt_deadline - now).as_secs_f64()
                ),
            ));
        }
        Ok(Err(e)) => return Err(classify(&e)),
        Ok(Ok(out)) => out,
    };
    let announced = out.content_length().and_then(|n| u64::try_from(n).ok());
    if let Some(n) = announced
        && n > req.max_size
    {
        return Err(AttemptError::new(
            Failure::TooLarge { announced: Some(n) },
            format!("Content-Length {n}"),
        ));
    }
    let version_id = out.version_id().map(str::to_owned);
    let etag = out.e_tag().map(str::to_owned);
    let limits = BodyLimits {
        announced,
        max_size: req.max_size,
        deadline: attempt_deadline,
        started: now,
    };
    Ok(Object {
        bytes: read_body(out.body, &limits).await?,
        version_id,
        etag,
    })
}

/// What a body may be and how long it may take.
struct BodyLimits {
    /// Its Content-Length, when S3 sent one.
    announced: Option<u64>,
    max_size: u64,
    /// The attempt's end.
    deadline: Instant,
    /// When the attempt started, for the message of a stalled body.
    started: Instant,
}

/// Reads the body within `limits`: no pause longer than the read limit, never more than the
/// size cap, exactly the announced length.
async fn read_body(
    mut body: aws_sdk_s3::primitives::ByteStream,
    limits: &BodyLimits,
) -> Result<Vec<u8>, AttemptError> {
    let mut bytes = Vec::with_capacity(limits.announced.unwrap_or(0) as usize);
    loop {
        let chunk_deadline = limits.deadline.min(Instant::now() + READ_TIMEOUT);
        let next = match tokio::time::timeout_at(chunk_deadline, body.next()).await {
            Err(_) => {
                return Err(AttemptError::new(
                    Failure::Timeout,
                    format!(
                        "the body stalled or was too slow: {} of {} bytes after {:.1}s",
                        bytes.len(),
                        limits.announced.map_or("?".to_owned(), |n| n.to_string()),
                        limits.started.elapsed().as_secs_f64()
                    ),
                ));
            }
            Ok(n) => n,
        };
        match next {
            None => break,
            Some(Ok(chunk)) => {
                if (bytes.len() + chunk.len()) as u64 > limits.max_size {
                    return Err(AttemptError::new(
                        Failure::TooLarge { announced: None },
                        format!("more than {} bytes in the body", limits.max_size),
                    ));
                }
                bytes.extend_from_slice(&chunk);
            }
            Some(Err(e)) => {
                return Err(AttemptError::new(
                    Failure::Truncated,
                    format!(
                        "the body broke off after {} bytes: {}",
                        bytes.len(),
                        DisplayErrorContext(&e)
                    ),
                ));
            }
        }
    }
    match limits.announced {
        Some(n) if n != bytes.len() as u64 => Err(AttemptError::new(
            Failure::Truncated,
            format!("{} of {n} bytes received", bytes.len()),
        )),
        _ => Ok(bytes),
    }
}

/// An S3 client for one attempt: our retries, our time limits, the region of the attempt, and
/// the signing clock learnt from S3 when ours is off; with `head`, its GetObject is sent as a
/// HEAD (see [`HeadInstead`]).
fn s3_client(
    sdk: &aws_config::SdkConfig,
    region: &str,
    creds: Credentials,
    clock: Option<SkewedClock>,
    head: bool,
) -> aws_sdk_s3::Client {
    let mut conf = aws_sdk_s3::config::Builder::from(sdk);
    if let Some(c) = clock {
        conf = conf.time_source(c);
    }
    if head {
        conf = conf.interceptor(HeadInstead);
    }
    let conf = conf
        .region(Region::new(region.to_owned()))
        .credentials_provider(creds)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Turns the GetObject of the client it is configured on into a HEAD of the same object (signed as a HEAD):
/// S3 answers with the object's headers and no body, and GetObject's output reads them. This
/// spares the HeadObject operation's code in the binary.
#[derive(Debug)]
struct HeadInstead;

impl aws_sdk_s3::config::Intercept for HeadInstead {
    fn name(&self) -> &'static str {
        "HeadInstead"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        _: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        context.request_mut().set_method("HEAD")?;
        Ok(())
    }
}

/// After GetObject was denied: the KMS key of the object when a HEAD (which GetObject's
/// permission allows and which needs no kms:Decrypt) shows that it is encrypted with SSE-KMS.
/// Best effort, within 3 s.
async fn kms_key_of(
    req: &Request<'_>,
    sdk: &aws_config::SdkConfig,
    s: &Session,
    deadline: Instant,
) -> Option<String> {
    let client = s3_client(sdk, &s.region, s.creds.clone()?, s.clock, true);
    let head = client
        .get_object()
        .bucket(&req.url.bucket)
        .key(&req.url.key)
        .set_version_id(req.url.version_id.clone())
        .set_expected_bucket_owner(req.expected_owner.map(str::to_owned))
        .send();
    let until = deadline.min(Instant::now() + Duration::from_secs(3));
    let out = tokio::time::timeout_at(until, head).await.ok()?.ok()?;
    use aws_sdk_s3::types::ServerSideEncryption as Sse;
    match out.server_side_encryption() {
        Some(Sse::AwsKms | Sse::AwsKmsDsse) => Some(
            out.ssekms_key_id()
                .map_or_else(|| "(key not named)".to_owned(), str::to_owned),
        ),
        _ => None,
    }
}

/// The instance role's credentials, classified: no instance profile is fatal, anything else
/// (metadata slow, 5xx, token refused) transient.
async fn credentials(
    sdk: &aws_config::SdkConfig,
    until: Instant,
) -> Result<Credentials, AttemptError> {
    let Some(provider) = sdk.credentials_provider() else {
        return Err(AttemptError::new(
            Failure::CredentialsFatal,
            "no credentials provider configured",
        ));
    };
    match tokio::time::timeout_at(until, provider.provide_credentials()).await {
        Err(_) => Err(AttemptError::new(
            Failure::CredentialsTransient,
            "instance metadata did not hand out credentials in time",
        )),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => {
            // The provider says why the role has no credentials by the error's type; anything
            // else (metadata slow, 5xx, token refused) may pass.
            let missing = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<crate::imds::NoCredentials>());
            Err(match (missing, &e) {
                (Some(why), _) => AttemptError::new(Failure::CredentialsFatal, why.to_string()),
                (None, CredentialsError::InvalidConfiguration(_)) => AttemptError::new(
                    Failure::CredentialsFatal,
                    format!(
                        "credentials from instance metadata: {}",
                        DisplayErrorContext(&e)
                    ),
                ),
                (None, _) => AttemptError::new(
                    Failure::CredentialsTransient,
                    format!(
                        "credentials from instance metadata: {}",
                        DisplayErrorContext(&e)
                    ),
                ),
            })
        }
    }
}

type GetError = SdkError<
    aws_sdk_s3::operation::get_object::GetObjectError,
    aws_smithy_runtime_api::client::orchestrator::HttpResponse,
>;

fn classify(e: &GetError) -> AttemptError {
    let text = DisplayErrorContext(e).to_string();
    match e {
        SdkError::ServiceError(ctx) => {
            let raw = ctx.raw();
            let region_hint = raw
                .headers()
                .get("x-amz-bucket-region")
                .map(|h| h.trim().to_owned());
            let err = ctx.err();
            let message = err.message().unwrap_or("").to_owned();
            let server_date = raw
                .headers()
                .get("date")
                .and_then(|d| {
                    aws_sdk_s3::primitives::DateTime::from_str(
                        d.trim(),
                        aws_sdk_s3::primitives::DateTimeFormat::HttpDate,
                    )
                    .ok()
                })
                .and_then(|d| std::time::SystemTime::try_from(d).ok());
            let mut e = AttemptError::new(
                Failure::Http {
                    status: raw.status().as_u16(),
                    code: err.code().map(str::to_owned),
                    region_hint,
                },
                if message.is_empty() {
                    "S3 refused the request".to_owned()
                } else {
                    message
                },
            );
            e.server_date = server_date;
            e
        }
        SdkError::TimeoutError(_) => AttemptError::new(Failure::Timeout, text),
        SdkError::DispatchFailure(d) => {
            let f = if d.is_timeout() {
                Failure::Timeout
            } else if d.is_user() {
                Failure::Other
            } else {
                Failure::Connection
            };
            AttemptError::new(f, text)
        }
        SdkError::ResponseError(_) => AttemptError::new(Failure::Truncated, text),
        _ => AttemptError::new(Failure::Other, text),
    }
}

/// The IAM action that reads the source: `s3:GetObjectVersion` for a pinned version.
fn get_action(req: &Request<'_>) -> &'static str {
    if req.url.version_id.is_some() {
        "s3:GetObjectVersion"
    } else {
        "s3:GetObject"
    }
}

/// The error of a fatal failure, naming the bucket, key, IAM action and instance profile.
async fn fatal(
    req: &Request<'_>,
    err: AttemptError,
    imds: &Imds,
    deadline: Instant,
    region: &str,
    kms_key: Option<String>,
) -> FetchError {
    let url = req.url.to_string();
    let detail = format!("{}: {}", err.failure, err.detail);
    match &err.failure {
        Failure::Http {
            status: 403, code, ..
        } => {
            let profile = instance_profile(imds, deadline).await;
            match kms_key {
                Some(key) => FetchError::KmsDenied {
                    url,
                    key,
                    profile,
                    detail,
                },
                None => FetchError::AccessDenied {
                    url,
                    resource: super::source::object_arn(req.url, region),
                    action: get_action(req),
                    profile,
                    owner_hint: denial_hints(req, code.as_deref()),
                    detail,
                },
            }
        }
        Failure::Http {
            status: 404, code, ..
        } => FetchError::NotFound {
            what: missing(req, code.as_deref()),
            detail,
            action: get_action(req),
            profile: instance_profile(imds, deadline).await,
        },
        Failure::TooLarge {
            announced: Some(size),
        } => FetchError::TooLarge {
            url,
            size: *size,
            max: req.max_size,
        },
        Failure::TooLarge { announced: None } => FetchError::TooLargeStreamed {
            url,
            max: req.max_size,
        },
        Failure::CredentialsFatal => FetchError::NoCredentials {
            url,
            detail: err.detail,
        },
        _ => FetchError::Failed { url, detail },
    }
}

/// The other causes of a 403 than the role's policy: the bucket's owner, the clock.
fn denial_hints(req: &Request<'_>, code: Option<&str>) -> String {
    let mut hints = String::new();
    if let Some(owner) = req.expected_owner {
        hints = format!(
            "; or bucket {} is not owned by account {owner} (--expected-bucket-owner), which S3 also \
             answers with 403",
            req.url.bucket
        );
    }
    if code == Some("RequestTimeTooSkewed") {
        hints.push_str("; the instance clock is off: check chrony/NTP");
    }
    hints
}

/// What a 404 says is missing, by S3's error code.
fn missing(req: &Request<'_>, code: Option<&str>) -> String {
    let url = req.url;
    match code {
        Some("NoSuchBucket") => format!(
            "bucket {} does not exist (source {url}): check the bucket name",
            url.bucket
        ),
        Some("NoSuchVersion") => format!(
            "bucket {} has no version {} of key {} (source {url}): check the versionId",
            url.bucket,
            url.version_id.as_deref().unwrap_or(""),
            url.key
        ),
        _ => format!(
            "bucket {} has no key {} (source {url}): upload the object or fix --source",
            url.bucket, url.key
        ),
    }
}

/// The instance profile ARN for error messages, best effort and quick.
async fn instance_profile(imds: &Imds, deadline: Instant) -> String {
    let until = deadline.min(Instant::now() + Duration::from_secs(2));
    match tokio::time::timeout_at(until, imds.iam_info()).await {
        Ok(Ok(Some(info))) => info.instance_profile_arn,
        Ok(Ok(None)) => "none attached".to_owned(),
        Ok(Err(e)) => format!("unknown, iam/info not readable: {e}"),
        Err(_) => "unknown, iam/info did not answer in time".to_owned(),
    }
}

//! Metadata requests: the SDK's IMDSv2 client (it fetches and caches the session token) makes
//! one attempt per request, and this module owns the retries. Connection failures (refused,
//! reset, timed out) and 5xx answers are retried with [`Backoff::IMDS`] until shortly before the
//! overall deadline, one log line per retry. A 401 after a token was issued (the token was
//! invalidated) makes us fetch a new token once and retry; the SDK alone would retry with the
//! same cached token. A 404 on an `iam/` path is waited out for the profile grace.

use super::{IAM_INFO, Imds, MetadataError, ROLES};
use crate::backoff::Backoff;
use aws_config::imds::client::error::{ImdsError, TokenError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

const TOKEN: &str = "/latest/api/token";

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

/// What the failed attempts of one request had in common, for the error when it gives up.
#[derive(Debug, Default)]
struct Tally {
    attempts: u32,
    slow: bool,
    unconnected: bool,
}

pub(super) fn build_client(endpoint: &str) -> anyhow::Result<aws_config::imds::Client> {
    // IMDS is plain HTTP on a link-local address: a connector without TLS, so that building it
    // does not read the system's certificate store (a hundred files or more, at the very start
    // of every boot), and without a proxy: the SDK's default client applies HTTP_PROXY to IMDS
    // too, so a proxy set for S3 would capture 169.254.169.254 unless NO_PROXY named it. The
    // S3 client keeps the default HTTPS connector, proxy variables included.
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

    /// GET `path` with the shared token, retried as the module says.
    pub(super) async fn get(&self, path: &str) -> Result<String, MetadataError> {
        let start = Instant::now();
        let mut renewed = false;
        let mut tally = Tally::default();
        if start >= self.inner.deadline {
            // Not a sign of an unreachable IMDS: there was no time to ask.
            return Err(MetadataError::NoTimeLeft { path: path.into() });
        }
        loop {
            let (generation, r) = self.attempt(path).await;
            let (detail, status) = match r {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(MetadataError::NotFound { path: p }))
                    if self.in_profile_grace(&p) =>
                {
                    self.wait_for_profile(&p).await;
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
                    tally.slow |= kind == Silence::Slow;
                    tally.unconnected |= kind == Silence::Connection;
                    (detail, status)
                }
            };
            tally.attempts += 1;
            let remaining = self
                .inner
                .deadline
                .saturating_duration_since(Instant::now());
            let Ok(sleep) = Backoff::IMDS.next(tally.attempts, remaining, fastrand::f64()) else {
                return Err(self.give_up(path, &tally, detail, status, start.elapsed()));
            };
            tracing::warn!(
                attempt = tally.attempts,
                path,
                error = %detail,
                retry_in_ms = sleep.as_millis() as u64,
                "instance metadata did not answer; retrying"
            );
            tokio::time::sleep(sleep).await;
        }
    }

    /// Whether a 404 of `path` is to be waited out: an `iam/` path while the profile grace
    /// lasts.
    fn in_profile_grace(&self, path: &str) -> bool {
        (path == IAM_INFO || path.starts_with(ROLES))
            && Instant::now() < self.inner.profile_grace_until
    }

    /// Sleeps about a second (never past the grace), saying once per run why.
    async fn wait_for_profile(&self, path: &str) {
        let left = self
            .inner
            .profile_grace_until
            .saturating_duration_since(Instant::now());
        if !self.inner.profile_wait_said.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path,
                "no instance profile yet ({path} is 404): one associated at launch shows up in \
                 metadata seconds later; waiting up to {:.0} s for it",
                left.as_secs_f64()
            );
        }
        let pause = crate::backoff::spread(Duration::from_secs(1), fastrand::f64());
        tokio::time::sleep(pause.min(left)).await;
    }

    /// The error of a request whose retries are over; an IMDS that never connected marks the
    /// run as unreachable.
    fn give_up(
        &self,
        path: &str,
        tally: &Tally,
        detail: String,
        status: Option<u16>,
        took: Duration,
    ) -> MetadataError {
        let n = tally.attempts;
        let tried = format!(
            "{n} attempt{} in {:.1}s",
            if n == 1 { "" } else { "s" },
            took.as_secs_f64()
        );
        match status {
            Some(status) => MetadataError::Status {
                path: path.into(),
                status,
                hint: format!(
                    " ({tried}): instance metadata is not serving; wait and retry, or raise --deadline"
                ),
            },
            // Every connection was made (the host reaches IMDS), answers were late.
            None if tally.slow && !tally.unconnected => MetadataError::TooSlow {
                endpoint: self.inner.endpoint.clone(),
                detail: format!("{detail}; {tried}"),
            },
            None => {
                self.inner.unreachable.store(true, Ordering::Relaxed);
                MetadataError::Unreachable {
                    endpoint: self.inner.endpoint.clone(),
                    detail: format!("{detail}; {tried}"),
                }
            }
        }
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
                    path: TOKEN.into(),
                    status: 403,
                    hint: ": IMDS refuses tokens to this caller (disabled with HttpEndpoint=disabled, or the \
                           request passed a transparent proxy that added X-Forwarded-For; ecs-bootstrap itself never sends metadata requests through HTTP_PROXY)"
                        .into(),
                }),
                Some(s @ (404 | 405)) => Attempt::Fatal(MetadataError::Status {
                    path: TOKEN.into(),
                    status: s,
                    hint: ": the metadata service does not issue IMDSv2 session tokens (an IMDSv1-only \
                           emulator or proxy in the path?); ecs-bootstrap uses IMDSv2 only, as the ECS agent \
                           does with HttpTokens=required"
                        .into(),
                }),
                Some(s) => Attempt::Fatal(MetadataError::Status {
                    path: TOKEN.into(),
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

/// The error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

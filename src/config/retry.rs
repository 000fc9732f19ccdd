//! The retry policy of the fetch, pure: what kind of failure an attempt had, whether it is worth
//! another attempt, and how long to wait (exponential backoff with full jitter, capped, never
//! past the deadline). The deadline bounds the retries, not a count: a boot whose network comes
//! up late still gets its config while time is left (the count is only a safety net).

use std::fmt;
use std::time::Duration;

/// How one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// S3 answered with an error status.
    Http {
        status: u16,
        code: Option<String>,
        /// `x-amz-bucket-region` of the answer, when S3 sent one.
        region_hint: Option<String>,
    },
    /// No answer in time (connect, first byte, a stalled body or the attempt's time limit).
    Timeout,
    /// The connection failed: refused, reset, unreachable, TLS, DNS.
    Connection,
    /// The answer or its body broke off before its end.
    Truncated,
    /// The instance role's credentials could not be had now (metadata slow or failing).
    CredentialsTransient,
    /// The instance role's credentials cannot be had at all (no instance profile).
    CredentialsFatal,
    /// The object is larger than `--max-size`.
    TooLarge,
    /// Anything else: a bug or a misconfiguration that another attempt will not fix.
    Other,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Http { status, code, .. } => match code {
                Some(c) => write!(f, "HTTP {status} {c}"),
                None => write!(f, "HTTP {status}"),
            },
            Failure::Timeout => f.write_str("timed out"),
            Failure::Connection => f.write_str("connection failed"),
            Failure::Truncated => f.write_str("answer cut off"),
            Failure::CredentialsTransient => f.write_str("instance role credentials not available"),
            Failure::CredentialsFatal => f.write_str("no instance role credentials"),
            Failure::TooLarge => f.write_str("object too large"),
            Failure::Other => f.write_str("request failed"),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Try again after a backoff delay.
    Retry,
    /// The bucket lives in this other region: try there at once (done once per fetch).
    Redirect(String),
    /// Give up now.
    Fail,
}

const RETRY_CODES: [&str; 11] = [
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "ExpiredToken",
    // New credentials from the instance role fix it, as for ExpiredToken.
    "TokenRefreshRequired",
    // Retried with the clock offset taken from S3's Date header.
    "RequestTimeTooSkewed",
];

/// Whether the failure asks for fresh credentials before the next attempt.
pub fn needs_new_credentials(f: &Failure) -> bool {
    match f {
        Failure::CredentialsTransient => true,
        Failure::Http { code: Some(c), .. } => c == "ExpiredToken" || c == "TokenRefreshRequired",
        _ => false,
    }
}

/// Decides on a failure. `region` is where the attempt went; `redirected` whether the region
/// hint was followed already.
pub fn decide(f: &Failure, region: &str, redirected: bool) -> Decision {
    match f {
        Failure::Http {
            status,
            code,
            region_hint,
        } => {
            if let Some(hint) = region_hint
                && matches!(status, 301 | 307 | 400)
                && hint != region
                && !hint.is_empty()
                && !redirected
            {
                return Decision::Redirect(hint.clone());
            }
            let retry_code = code.as_deref().is_some_and(|c| RETRY_CODES.contains(&c));
            match status {
                408 | 429 | 500..=599 => Decision::Retry,
                // Wrong credentials or owner, missing bucket or key: another try will not help
                // (ExpiredToken and TokenRefreshRequired are a credential refresh, and
                // RequestTimeTooSkewed a clock correction, hence retried).
                403 | 404 if !retry_code => Decision::Fail,
                _ if retry_code => Decision::Retry,
                _ => Decision::Fail,
            }
        }
        Failure::Timeout
        | Failure::Connection
        | Failure::Truncated
        | Failure::CredentialsTransient => Decision::Retry,
        Failure::CredentialsFatal | Failure::TooLarge | Failure::Other => Decision::Fail,
    }
}

/// Exponential backoff with full jitter: attempt n waits a uniform random time in
/// `[0, min(cap, base * 2^(n-1))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
    /// Time an attempt needs at least; no retry is started with less time left.
    pub min_attempt: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            // A safety net: the deadline (120 s by default) ends the retries long before.
            max_attempts: 1000,
            min_attempt: Duration::from_millis(500),
        }
    }
}

/// Why no further attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Attempts,
    Deadline,
}

impl Backoff {
    /// The ceiling of the delay after attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }

    /// The delay before the next attempt after attempt `attempt` failed, with `unit` a random
    /// number in [0, 1) and `remaining` the time left before the deadline; or why to stop.
    pub fn next(&self, attempt: u32, remaining: Duration, unit: f64) -> Result<Duration, Stop> {
        if attempt >= self.max_attempts {
            return Err(Stop::Attempts);
        }
        let delay = self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0));
        if delay + self.min_attempt > remaining {
            return Err(Stop::Deadline);
        }
        Ok(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn http(status: u16, code: &str) -> Failure {
        Failure::Http {
            status,
            code: Some(code.into()),
            region_hint: None,
        }
    }

    #[test]
    fn decisions() {
        for (f, d) in [
            (http(500, "InternalError"), Decision::Retry),
            (http(503, "SlowDown"), Decision::Retry),
            (http(429, "TooManyRequests"), Decision::Retry),
            (http(400, "RequestTimeout"), Decision::Retry),
            (http(400, "ExpiredToken"), Decision::Retry),
            (http(403, "ExpiredToken"), Decision::Retry),
            (http(400, "TokenRefreshRequired"), Decision::Retry),
            (http(403, "RequestTimeTooSkewed"), Decision::Retry),
            (http(403, "AccessDenied"), Decision::Fail),
            (http(404, "NoSuchKey"), Decision::Fail),
            (http(404, "NoSuchBucket"), Decision::Fail),
            (http(400, "InvalidArgument"), Decision::Fail),
            (http(301, "PermanentRedirect"), Decision::Fail),
            (Failure::Timeout, Decision::Retry),
            (Failure::Connection, Decision::Retry),
            (Failure::Truncated, Decision::Retry),
            (Failure::CredentialsTransient, Decision::Retry),
            (Failure::CredentialsFatal, Decision::Fail),
            (Failure::TooLarge, Decision::Fail),
            (Failure::Other, Decision::Fail),
        ] {
            assert_eq!(decide(&f, "us-east-1", false), d, "{f:?}");
        }
    }

    #[test]
    fn redirect_once_to_another_region() {
        let f = Failure::Http {
            status: 301,
            code: Some("PermanentRedirect".into()),
            region_hint: Some("eu-west-1".into()),
        };
        assert_eq!(
            decide(&f, "us-east-1", false),
            Decision::Redirect("eu-west-1".into())
        );
        assert_eq!(decide(&f, "us-east-1", true), Decision::Fail);
        assert_eq!(decide(&f, "eu-west-1", false), Decision::Fail);
        let f = Failure::Http {
            status: 400,
            code: Some("AuthorizationHeaderMalformed".into()),
            region_hint: Some("ap-south-1".into()),
        };
        assert_eq!(
            decide(&f, "us-east-1", false),
            Decision::Redirect("ap-south-1".into())
        );
        // A 403 with a region header is still a denial.
        let f = Failure::Http {
            status: 403,
            code: Some("AccessDenied".into()),
            region_hint: Some("ap-south-1".into()),
        };
        assert_eq!(decide(&f, "us-east-1", false), Decision::Fail);
    }

    #[test]
    fn backoff_grows_caps_and_stops() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(2), Duration::from_millis(400));
        assert_eq!(b.ceiling(5), Duration::from_millis(3200));
        assert_eq!(b.ceiling(6), Duration::from_secs(5));
        assert_eq!(b.ceiling(60), Duration::from_secs(5));
        let lots = Duration::from_secs(100);
        assert_eq!(b.next(3, lots, 0.5), Ok(Duration::from_millis(400)));
        assert_eq!(b.next(3, lots, 0.0), Ok(Duration::ZERO));
        assert_eq!(b.next(8, lots, 0.5), Ok(Duration::from_millis(2500)));
        assert_eq!(b.next(1000, lots, 0.5), Err(Stop::Attempts));
        assert_eq!(
            b.next(5, Duration::from_millis(1000), 0.9),
            Err(Stop::Deadline)
        );
        assert_eq!(
            b.next(1, Duration::from_millis(100), 0.0),
            Err(Stop::Deadline)
        );
    }

    proptest! {
        #[test]
        fn delay_within_ceiling_and_deadline(attempt in 1u32..100, rem_ms in 0u64..200_000, unit in 0.0f64..1.0) {
            let b = Backoff::default();
            let remaining = Duration::from_millis(rem_ms);
            if let Ok(d) = b.next(attempt, remaining, unit) {
                prop_assert!(d <= b.ceiling(attempt));
                prop_assert!(d + b.min_attempt <= remaining);
                prop_assert!(attempt < b.max_attempts);
            }
        }
    }
}

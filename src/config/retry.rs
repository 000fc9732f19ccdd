//! The retry policy of the fetch, pure: what kind of failure an attempt had and whether it is
//! worth another attempt. How long to wait is [`crate::backoff`]'s.

use std::fmt;

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
    /// The object is larger than `--max-size`: by its Content-Length (`announced`), or by what
    /// came of a body without one.
    TooLarge { announced: Option<u64> },
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
            Failure::TooLarge { .. } => f.write_str("object too large"),
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
        Failure::CredentialsFatal | Failure::TooLarge { .. } | Failure::Other => Decision::Fail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            (Failure::TooLarge { announced: None }, Decision::Fail),
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
}

//! `s3://BUCKET/KEY[?versionId=V]` source URLs.

use crate::error::UsageError;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
}

impl FromStr for S3Url {
    type Err = UsageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            UsageError(format!(
                "invalid source {s:?}: {why}; expected s3://BUCKET/KEY or s3://BUCKET/KEY?versionId=V"
            ))
        };
        let rest = s
            .trim()
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it does not start with s3://"))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (bucket, key) = path
            .split_once('/')
            .ok_or_else(|| bad("no object key after the bucket"))?;
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(bad(
                "the bucket name must be 3 to 63 lowercase letters, digits, dots or hyphens",
            ));
        }
        if key.is_empty() {
            return Err(bad("the object key is empty"));
        }
        let version_id = match query {
            None => None,
            Some(q) => match q.strip_prefix("versionId=") {
                Some(v) if !v.is_empty() && !v.contains('&') => Some(v.to_owned()),
                _ => return Err(bad("the only query parameter allowed is versionId=V")),
            },
        };
        Ok(S3Url {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            version_id,
        })
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)?;
        if let Some(v) = &self.version_id {
            write!(f, "?versionId={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let u: S3Url = "s3://my-bucket/ecs/prod.config?versionId=abc"
            .parse()
            .unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.key, "ecs/prod.config");
        assert_eq!(u.version_id.as_deref(), Some("abc"));
        assert_eq!(
            u.to_string(),
            "s3://my-bucket/ecs/prod.config?versionId=abc"
        );
    }

    #[test]
    fn rejects_bad_urls_with_reason() {
        for (s, why) in [
            ("https://b/k", "s3://"),
            ("s3://bucket", "no object key"),
            ("s3://bucket/", "empty"),
            ("s3://B/k", "bucket name"),
            ("s3://bucket/k?foo=1", "versionId"),
        ] {
            let e = s.parse::<S3Url>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}

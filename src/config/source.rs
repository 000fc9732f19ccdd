//! `s3://BUCKET/KEY[?versionId=V]` source URLs.

use crate::error::UsageError;
use std::fmt;
use std::str::FromStr;

/// An S3 source: `bucket` is a bucket name (or an access point alias), or an access point ARN
/// (`arn:PARTITION:s3:REGION:ACCOUNT:accesspoint/NAME`), which S3 takes in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
}

/// What the code needs of an S3 access point ARN: where to send requests and which partition
/// its ARNs are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPoint {
    pub partition: String,
    pub region: String,
}

/// The partitions ecs-bootstrap knows: name and DNS suffix.
pub const PARTITIONS: [(&str, &str); 3] = [
    ("aws", "amazonaws.com"),
    ("aws-cn", "amazonaws.com.cn"),
    ("aws-us-gov", "amazonaws.com"),
];

/// `--expected-bucket-owner`: the 12-digit account ID that owns the bucket (both the fetch and
/// `iam-policy` take it).
pub fn bucket_owner(o: &str) -> Result<String, UsageError> {
    let o = o.trim();
    if o.len() != 12 || !o.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UsageError(format!(
            "--expected-bucket-owner {o:?}: give the 12-digit AWS account ID that owns the bucket"
        )));
    }
    Ok(o.to_owned())
}

/// The partition a region belongs to.
pub fn partition_of_region(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

/// The DNS suffix of a partition (`amazonaws.com.cn` for aws-cn).
pub fn dns_suffix(partition: &str) -> &'static str {
    PARTITIONS
        .iter()
        .find(|(p, _)| *p == partition)
        .map_or("amazonaws.com", |(_, d)| d)
}

/// The object's ARN as IAM names it: `arn:PARTITION:s3:::BUCKET/KEY`, or for an access point
/// `ACCESS_POINT_ARN/object/KEY`; the partition from the access point, else from `region`.
pub fn object_arn(url: &S3Url, region: &str) -> String {
    match url.access_point() {
        Some(_) => format!("{}/object/{}", url.bucket, url.key),
        None => format!(
            "arn:{}:s3:::{}/{}",
            partition_of_region(region),
            url.bucket,
            url.key
        ),
    }
}

impl S3Url {
    /// The access point, when the source names one by ARN.
    pub fn access_point(&self) -> Option<AccessPoint> {
        let rest = self.bucket.strip_prefix("arn:")?;
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        let [partition, "s3", region, _account, resource] = parts[..] else {
            return None;
        };
        resource.strip_prefix("accesspoint/")?;
        Some(AccessPoint {
            partition: partition.to_owned(),
            region: region.to_owned(),
        })
    }
}

impl FromStr for S3Url {
    type Err = UsageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            UsageError(format!(
                "invalid source {s:?}: {why}; expected s3://BUCKET/KEY, s3://BUCKET/KEY?versionId=V or \
                 s3://arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME/KEY"
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
        if let Some(arn) = path.strip_prefix("arn:") {
            return parse_access_point(arn, query).map_err(|why| bad(&why));
        }
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
        let version_id = parse_version(query).map_err(|why| bad(&why))?;
        Ok(S3Url {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            version_id,
        })
    }
}

fn parse_version(query: Option<&str>) -> Result<Option<String>, String> {
    match query {
        None => Ok(None),
        Some(q) => match q.strip_prefix("versionId=") {
            Some(v) if !v.is_empty() && !v.contains('&') => Ok(Some(v.to_owned())),
            _ => Err("the only query parameter allowed is versionId=V".into()),
        },
    }
}

/// `PARTITION:s3:REGION:ACCOUNT:accesspoint/NAME/KEY` (after `arn:`).
fn parse_access_point(arn: &str, query: Option<&str>) -> Result<S3Url, String> {
    let parts: Vec<&str> = arn.splitn(5, ':').collect();
    let [partition, service, region, account, resource] = parts[..] else {
        return Err(
            "an access point ARN is arn:PARTITION:s3:REGION:ACCOUNT:accesspoint/NAME, then /KEY"
                .into(),
        );
    };
    if !PARTITIONS.iter().any(|(p, _)| *p == partition) {
        return Err(format!(
            "the ARN's partition must be one of aws, aws-cn, aws-us-gov, not {partition:?}"
        ));
    }
    if service != "s3" {
        return Err("only S3 access point ARNs (arn:PARTITION:s3:...) can be a source".into());
    }
    if region.is_empty()
        || !region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("the ARN's region is missing or malformed (access point ARNs name one)".into());
    }
    if partition_of_region(region) != partition {
        return Err(format!("region {region} is not in partition {partition}"));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the ARN's account must be 12 digits".into());
    }
    let Some(rest) = resource.strip_prefix("accesspoint/") else {
        return Err("the ARN must name an access point (accesspoint/NAME); Object Lambda and Multi-Region access points are not supported".into());
    };
    let (name, key) = rest
        .split_once('/')
        .ok_or_else(|| "no object key after the access point name".to_owned())?;
    if name.len() < 3
        || name.len() > 50
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(
            "the access point name must be 3 to 50 lowercase letters, digits or hyphens".into(),
        );
    }
    if key.is_empty() {
        return Err("the object key is empty".into());
    }
    Ok(S3Url {
        bucket: format!("arn:{partition}:s3:{region}:{account}:accesspoint/{name}"),
        key: key.to_owned(),
        version_id: parse_version(query)?,
    })
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
    fn access_point_arns_are_sources() {
        let u: S3Url = "s3://arn:aws-us-gov:s3:us-gov-west-1:123456789012:accesspoint/my-ap/ecs/prod.config?versionId=v1"
            .parse()
            .unwrap();
        assert_eq!(
            u.bucket,
            "arn:aws-us-gov:s3:us-gov-west-1:123456789012:accesspoint/my-ap"
        );
        assert_eq!(u.key, "ecs/prod.config");
        assert_eq!(u.version_id.as_deref(), Some("v1"));
        let ap = u.access_point().unwrap();
        assert_eq!(
            (ap.partition.as_str(), ap.region.as_str()),
            ("aws-us-gov", "us-gov-west-1")
        );
        assert_eq!(
            u.to_string(),
            "s3://arn:aws-us-gov:s3:us-gov-west-1:123456789012:accesspoint/my-ap/ecs/prod.config?versionId=v1"
        );
        for (s, why) in [
            (
                "s3://arn:aws:s3:us-east-1:123456789012:accesspoint/ap",
                "no object key",
            ),
            (
                "s3://arn:aws:s3:cn-north-1:123456789012:accesspoint/ap/k",
                "not in partition",
            ),
            (
                "s3://arn:aws:s3:us-east-1:1234:accesspoint/ap/k",
                "12 digits",
            ),
            (
                "s3://arn:aws:s3-object-lambda:us-east-1:123456789012:accesspoint/ap/k",
                "only S3",
            ),
            ("s3://arn:aws:s3::123456789012:accesspoint/ap/k", "region"),
            (
                "s3://arn:aws-xx:s3:us-east-1:123456789012:accesspoint/ap/k",
                "partition",
            ),
        ] {
            let e = s.parse::<S3Url>().unwrap_err().to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
        assert!(
            "s3://plain-bucket/k"
                .parse::<S3Url>()
                .unwrap()
                .access_point()
                .is_none()
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

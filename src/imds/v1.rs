//! The IMDSv1 probe: one GET without a token, on a plain socket (the SDK's client always sends
//! a token). Opt-in: EC2 counts every tokenless request in the CloudWatch metric
//! `MetadataNoToken`, which fleets watch to find the software that still uses IMDSv1.

use anyhow::Context as _;
use serde::Serialize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the check knows about IMDSv1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Imdsv1 {
    /// No tokenless request was made (the default).
    NotProbed,
    /// A GET without a token got the instance ID (HttpTokens=optional).
    Open,
    /// A GET without a token was refused (HttpTokens=required).
    Closed,
    /// The tokenless GET got no answer, or one that tells neither.
    NoAnswer,
}

impl Imdsv1 {
    /// What the report's `imdsv1_open` says: `None` when there was no probe; no answer counts
    /// as closed, as it always has.
    pub(crate) fn open(self) -> Option<bool> {
        match self {
            Imdsv1::NotProbed => None,
            Imdsv1::Open => Some(true),
            Imdsv1::Closed | Imdsv1::NoAnswer => Some(false),
        }
    }
}

/// One tokenless GET of `path`, within `timeout`.
pub(super) async fn probe(endpoint: &str, path: &str, timeout: Duration) -> Imdsv1 {
    match raw_get(endpoint, path, timeout).await {
        Ok(200) => Imdsv1::Open,
        Ok(401 | 403) => Imdsv1::Closed,
        Ok(_) | Err(_) => Imdsv1::NoAnswer,
    }
}

/// A plain HTTP/1.0 GET without a token; returns the status code.
async fn raw_get(endpoint: &str, path: &str, timeout: Duration) -> anyhow::Result<u16> {
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

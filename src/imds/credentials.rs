//! The instance role's temporary credentials (`iam/security-credentials/ROLE`) as the S3
//! client's credentials provider, on the shared client, token and retries.

use super::{Imds, MetadataError};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use serde::Deserialize;

/// Why the instance role has no credentials to give; the fetch tells it from a transient
/// failure by this type (it travels as the source of the SDK's `CredentialsNotLoaded`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoCredentials {
    #[error("the instance has no instance profile (iam/security-credentials/ is 404)")]
    NoProfile,
    #[error(
        "the instance profile's role {role} has no credentials (its iam/security-credentials/ entry is 404)"
    )]
    RoleWithout { role: String },
}

/// The credentials provider; see [`Imds::credentials_provider`].
#[derive(Debug, Clone)]
pub struct RoleCredentials {
    imds: Imds,
}

impl RoleCredentials {
    pub(super) fn new(imds: Imds) -> Self {
        RoleCredentials { imds }
    }

    async fn load(&self) -> provider::Result {
        let role = match self.imds.role_name().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(CredentialsError::not_loaded(NoCredentials::NoProfile)),
            Err(e) => return Err(CredentialsError::provider_error(e)),
        };
        match self.imds.credentials(&role).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(CredentialsError::not_loaded(NoCredentials::RoleWithout {
                role,
            })),
            Err(e) => Err(CredentialsError::provider_error(e)),
        }
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

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Document {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    token: Option<String>,
    expiration: Option<String>,
}

/// The credentials in the document `body` of `path`. No error holds the body: it holds the
/// secret key.
pub(super) fn parse(path: &str, body: &str) -> Result<Credentials, MetadataError> {
    let problem = |problem: String| MetadataError::Document {
        path: path.to_owned(),
        problem,
    };
    let doc: Document = serde_json::from_str(body).map_err(|e| {
        problem(format!(
            "not a credentials document (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if let Some(code) = doc.code.as_deref()
        && code != "Success"
    {
        return Err(problem(format!(
            "Code {code}: {}",
            doc.message.as_deref().unwrap_or("")
        )));
    }
    let (Some(akid), Some(secret)) = (doc.access_key_id, doc.secret_access_key) else {
        return Err(problem(
            "the document lacks AccessKeyId or SecretAccessKey".into(),
        ));
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
            .ok_or_else(|| problem(format!("Expiration {s:?} is not an RFC 3339 time")))?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_document_and_keeps_the_secret_out_of_errors() {
        let p = "/latest/meta-data/iam/security-credentials/r";
        let c = parse(
            p,
            r#"{"Code":"Success","AccessKeyId":"AKID","SecretAccessKey":"s3cr3t","Token":"t","Expiration":"2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "AKID");
        assert!(c.expiry().is_some());
        for (body, want) in [
            (
                r#"{"SecretAccessKey":"s3cr3t""#,
                "not a credentials document",
            ),
            (
                r#"{"Code":"AssumeRoleUnauthorizedAccess","Message":"no","SecretAccessKey":"s3cr3t"}"#,
                "Code AssumeRoleUnauthorizedAccess",
            ),
            (r#"{"SecretAccessKey":"s3cr3t"}"#, "lacks AccessKeyId"),
            (
                r#"{"AccessKeyId":"A","SecretAccessKey":"s3cr3t","Expiration":"soon"}"#,
                "not an RFC 3339",
            ),
        ] {
            let e = parse(p, body).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(p), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }

    /// The fetch tells "no credentials at all" from a passing failure by this downcast.
    #[test]
    fn the_reason_survives_the_sdk_error() {
        let e = CredentialsError::not_loaded(NoCredentials::RoleWithout { role: "r".into() });
        let why = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<NoCredentials>());
        assert!(
            matches!(why, Some(NoCredentials::RoleWithout { .. })),
            "{e:?}"
        );
    }
}

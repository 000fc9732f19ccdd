//! The SDK configuration of the S3 client: region from `AWS_REGION` or IMDS, credentials from
//! the instance role through the shared IMDS client, the S3 endpoint from the standard
//! `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, and the FIPS and dual-stack switches.
//!
//! Built by hand rather than with `aws_config::defaults().load()`: the default chain would read
//! profile files and link the STS, web-identity and container credential providers, none of
//! which an instance-role agent uses (and the binary is smaller).

use crate::imds::Imds;
use anyhow::Context as _;

/// What the environment says about the S3 client. Pure data: [`from_env`] reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EnvSettings {
    /// `AWS_REGION`, else `AWS_DEFAULT_REGION`; `None`: ask IMDS.
    pub region: Option<String>,
    /// `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    pub use_fips: bool,
    pub use_dual_stack: bool,
    /// Variables set to something other than `true` or `false` (they count as `false`).
    pub ignored: Vec<&'static str>,
}

/// Reads the settings through `env` (a variable's value, if set). Blank values count as unset.
pub(crate) fn from_env(env: impl Fn(&str) -> Option<String>) -> EnvSettings {
    let get = |name: &str| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let mut ignored = Vec::new();
    // The standard switches for FIPS and dual-stack (IPv6) endpoints, as the SDK's default
    // chain reads them.
    let mut flag = |name: &'static str| match get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            ignored.push(name);
            false
        }
    };
    let use_fips = flag("AWS_USE_FIPS_ENDPOINT");
    let use_dual_stack = flag("AWS_USE_DUALSTACK_ENDPOINT");
    EnvSettings {
        region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
        endpoint_url: get("AWS_ENDPOINT_URL_S3").or_else(|| get("AWS_ENDPOINT_URL")),
        use_fips,
        use_dual_stack,
        ignored,
    }
}

/// The SDK configuration for `settings`, asking IMDS for the region when the environment does
/// not name one.
pub(crate) async fn build(
    settings: &EnvSettings,
    imds: &Imds,
) -> anyhow::Result<aws_config::SdkConfig> {
    for name in &settings.ignored {
        tracing::warn!("{name} is neither true nor false; it is ignored");
    }
    let region = match &settings.region {
        Some(r) => r.clone(),
        None => imds
            .region()
            .await
            .context("finding the region in instance metadata (set AWS_REGION to skip this)")?,
    };
    let mut sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                imds.credentials_provider(),
            ),
        )
        .sleep_impl(aws_smithy_async::rt::sleep::default_async_sleep().context("no async sleep")?)
        .time_source(aws_smithy_async::time::SystemTimeSource::new());
    if let Some(url) = &settings.endpoint_url {
        sdk = sdk.endpoint_url(url);
    }
    if settings.use_fips {
        sdk = sdk.use_fips(true);
    }
    if settings.use_dual_stack {
        sdk = sdk.use_dual_stack(true);
    }
    Ok(sdk.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn reads_the_standard_variables() {
        assert_eq!(from_env(env(&[])), EnvSettings::default());
        let s = from_env(env(&[
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://a"),
            ("AWS_ENDPOINT_URL_S3", " http://s3 "),
            ("AWS_USE_FIPS_ENDPOINT", "TRUE"),
            ("AWS_USE_DUALSTACK_ENDPOINT", "yes"),
        ]));
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.endpoint_url.as_deref(), Some("http://s3"));
        assert!(s.use_fips && !s.use_dual_stack);
        assert_eq!(s.ignored, ["AWS_USE_DUALSTACK_ENDPOINT"]);
        // AWS_REGION wins; a blank value is no value.
        let s = from_env(env(&[
            ("AWS_REGION", "us-east-2"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL_S3", "  "),
        ]));
        assert_eq!(s.region.as_deref(), Some("us-east-2"));
        assert_eq!(s.endpoint_url, None);
    }
}

//! The check step: the host still reaches IMDSv2, and what it says about the instance (ID,
//! region, instance profile and role). IMDSv1 is probed only on request (see [`Options`]).

use crate::imds::{Imds, Imdsv1};
use crate::report::StepResult;
use anyhow::Context as _;
use serde::Serialize;

/// The validated options of the step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// Make one GET without a token to learn whether IMDSv1 still answers. Off by default: EC2
    /// counts every tokenless request in `MetadataNoToken`, the metric fleets use to find
    /// IMDSv1 callers, and the probe would make every instance show up there.
    pub probe_imdsv1: bool,
}

/// What the check found: the step's JSON details.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub(crate) struct Details {
    pub instance_id: String,
    pub region: String,
    pub instance_profile_arn: String,
    pub role_name: String,
    /// Whether a request without a token succeeds; `null` when IMDSv1 was not probed.
    pub imdsv1_open: Option<bool>,
    pub imdsv1: Imdsv1,
}

/// The error for an instance without an instance profile.
const NO_PROFILE: &str = "the instance has no instance profile (iam/info is 404): attach an instance profile \
    with the ECS container instance role, ecsInstanceRole, which has the managed policy \
    AmazonEC2ContainerServiceforEC2Role (plus s3:GetObject on the config object); see `ecs-bootstrap iam-policy`";

const V1_OPEN_WARNING: &str = "IMDSv1 is still open: a request without a token succeeds. Require IMDSv2 with \
    `aws ec2 modify-instance-metadata-options --http-tokens required` (HttpTokens=required in the \
    launch template); a hop limit of 1 (HttpPutResponseHopLimit=1) also keeps the token out of \
    reach of containers that are not on the host network";

pub(crate) async fn run(opts: &Options, imds: &Imds) -> anyhow::Result<StepResult> {
    let instance_id = imds
        .instance_id()
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
    let imdsv1 = if opts.probe_imdsv1 {
        imds.probe_imdsv1().await
    } else {
        Imdsv1::NotProbed
    };
    if imdsv1 == Imdsv1::Open {
        tracing::warn!("{V1_OPEN_WARNING}");
    }
    let details = Details {
        instance_id,
        region,
        instance_profile_arn: info.instance_profile_arn,
        role_name,
        imdsv1_open: imdsv1.open(),
        imdsv1,
    };
    Ok(StepResult {
        changed: false,
        summary: summary(&details),
        details: Some(crate::report::Details::Check(Box::new(details))),
    })
}

/// The text report's lines.
fn summary(d: &Details) -> Vec<String> {
    let mut lines = vec![
        format!("instance {} in {}", d.instance_id, d.region),
        format!(
            "instance profile {} (role {})",
            d.instance_profile_arn, d.role_name
        ),
    ];
    match d.imdsv1 {
        Imdsv1::Open => lines.push("warning: IMDSv1 is open (HttpTokens=optional)".into()),
        Imdsv1::NotProbed => lines
            .push("IMDSv1: not probed (--probe-imdsv1 makes one request without a token)".into()),
        Imdsv1::Closed | Imdsv1::NoAnswer => {}
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details(imdsv1: Imdsv1) -> Details {
        Details {
            instance_id: "i-0123".into(),
            region: "eu-west-1".into(),
            instance_profile_arn: "arn:aws:iam::1:instance-profile/p".into(),
            role_name: "r".into(),
            imdsv1_open: imdsv1.open(),
            imdsv1,
        }
    }

    #[test]
    fn json_keeps_its_keys_and_says_when_imdsv1_was_not_probed() {
        let v = serde_json::to_value(details(Imdsv1::NotProbed)).unwrap();
        assert_eq!(v["imdsv1"], "not_probed");
        assert!(v["imdsv1_open"].is_null());
        assert_eq!(v["instance_id"], "i-0123");
        let v = serde_json::to_value(details(Imdsv1::Open)).unwrap();
        assert_eq!(
            (v["imdsv1"].as_str(), v["imdsv1_open"].as_bool()),
            (Some("open"), Some(true))
        );
        let v = serde_json::to_value(details(Imdsv1::NoAnswer)).unwrap();
        assert_eq!(
            (v["imdsv1"].as_str(), v["imdsv1_open"].as_bool()),
            (Some("no_answer"), Some(false))
        );
    }

    #[test]
    fn text_says_not_probed_and_warns_when_open() {
        let s = summary(&details(Imdsv1::NotProbed)).join("\n");
        assert!(s.contains("IMDSv1: not probed"), "{s}");
        let s = summary(&details(Imdsv1::Open)).join("\n");
        assert!(s.contains("warning: IMDSv1 is open"), "{s}");
        let s = summary(&details(Imdsv1::Closed)).join("\n");
        assert!(!s.contains("IMDSv1"), "{s}");
    }
}

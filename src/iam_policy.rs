//! `ecs-bootstrap iam-policy`: the least-privilege IAM documents for the instance role, instead
//! of the `AmazonS3ReadOnlyAccess` (every object in every bucket) the documentation suggests.
//!
//! The instance role policy holds the actions of the managed policy
//! `AmazonEC2ContainerServiceforEC2Role` as documented (the ECS agent, image pulls from ECR,
//! the awslogs driver, and tagging on create), plus read access to exactly one object:
//! `s3:GetObject` on `arn:PARTITION:s3:::BUCKET/KEY`, `s3:GetObjectVersion` as well when the
//! source pins a `versionId`, and `kms:Decrypt` on the key given with `--kms-key`, only through
//! S3. The trust policy lets EC2 assume the role. Pure: no network, no AWS call.

use crate::config::source::S3Url;
use crate::error::UsageError;
use serde_json::{Value, json};

/// The actions of `AmazonEC2ContainerServiceforEC2Role` that apply to every resource.
pub(crate) const ECS_INSTANCE_ACTIONS: [&str; 15] = [
    "ec2:DescribeTags",
    "ecs:CreateCluster",
    "ecs:DeregisterContainerInstance",
    "ecs:DiscoverPollEndpoint",
    "ecs:Poll",
    "ecs:RegisterContainerInstance",
    "ecs:StartTelemetrySession",
    "ecs:UpdateContainerInstancesState",
    "ecs:Submit*",
    "ecr:GetAuthorizationToken",
    "ecr:BatchCheckLayerAvailability",
    "ecr:GetDownloadUrlForLayer",
    "ecr:BatchGetImage",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
];

/// The managed policy also lets the agent tag the cluster and the container instance it creates.
pub(crate) const ECS_TAG_ON_CREATE: [&str; 2] = ["CreateCluster", "RegisterContainerInstance"];

/// A KMS key ARN: `arn:PARTITION:kms:REGION:ACCOUNT:key/ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KmsKeyArn {
    pub(crate) arn: String,
    pub(crate) partition: String,
    pub(crate) region: String,
}

impl std::str::FromStr for KmsKeyArn {
    type Err = UsageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = |why: &str| {
            UsageError(format!(
                "invalid --kms-key {s:?}: {why}; expected a key ARN such as \
                 arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab \
                 (find it with `aws kms describe-key --key-id alias/NAME --query KeyMetadata.Arn`)"
            ))
        };
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        let [arn, partition, service, region, account, resource] = parts[..] else {
            return Err(bad(
                "it is not an ARN (a key ID or alias name is not enough)",
            ));
        };
        if arn != "arn" || !partition.starts_with("aws") || service != "kms" {
            return Err(bad("it is not a KMS ARN"));
        }
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad("the region part is missing or malformed"));
        }
        if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad("the account part must be 12 digits"));
        }
        if resource.starts_with("alias/") {
            return Err(bad(
                "it is an alias ARN, and kms:Decrypt on an alias grants nothing",
            ));
        }
        let id = resource
            .strip_prefix("key/")
            .ok_or_else(|| bad("the resource part must be key/ID"))?;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad("the key ID must be letters, digits and hyphens"));
        }
        Ok(KmsKeyArn {
            arn: s.to_owned(),
            partition: partition.to_owned(),
            region: region.to_owned(),
        })
    }
}

/// What `iam-policy` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The policy documents.
    Json,
    /// A CloudFormation template snippet.
    Cloudformation,
}

/// The inputs of the policies as given, before validation.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// `s3://BUCKET/KEY[?versionId=V]`.
    pub(crate) source: String,
    pub(crate) kms_key: Option<String>,
    pub(crate) expected_bucket_owner: Option<String>,
    pub(crate) partition: Option<String>,
    pub(crate) format: Format,
}

/// The inputs of the policies, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyInput {
    pub(crate) source: S3Url,
    pub(crate) kms_key: Option<KmsKeyArn>,
    /// aws, aws-cn or aws-us-gov.
    pub(crate) partition: String,
    /// The account that owns the bucket (an `s3:ResourceAccount` condition).
    pub(crate) bucket_account: Option<String>,
}

impl PolicyInput {
    pub(crate) fn from_request(args: &Request) -> Result<Self, UsageError> {
        let source: S3Url = args.source.parse()?;
        let kms_key: Option<KmsKeyArn> = args.kms_key.as_deref().map(str::parse).transpose()?;
        // The partition: given, or the one the access point or the key names; they must agree.
        let mut named: Vec<(&str, String)> = Vec::new();
        if let Some(p) = &args.partition {
            named.push(("--partition", p.clone()));
        }
        if let Some(ap) = source.access_point() {
            named.push(("the access point ARN", ap.partition));
        }
        if let Some(k) = &kms_key {
            named.push(("--kms-key", k.partition.clone()));
        }
        let partition = named.first().map_or("aws".to_owned(), |(_, p)| p.clone());
        if let Some((what, p)) = named.iter().find(|(_, p)| *p != partition) {
            return Err(UsageError(format!(
                "{what} is in partition {p}, but {} says {partition}: the source, the key and --partition must be \
                 in one partition",
                named[0].0
            )));
        }
        if !crate::config::source::PARTITIONS
            .iter()
            .any(|(p, _)| *p == partition)
        {
            return Err(UsageError(format!(
                "partition {partition:?} is not one of aws, aws-cn, aws-us-gov"
            )));
        }
        let bucket_account = args
            .expected_bucket_owner
            .as_deref()
            .map(crate::config::source::bucket_owner)
            .transpose()?;
        Ok(PolicyInput {
            source,
            kms_key,
            partition,
            bucket_account,
        })
    }

    /// The partition of the ARNs.
    pub(crate) fn partition(&self) -> &str {
        &self.partition
    }

    /// The partition's DNS suffix (`amazonaws.com.cn` in aws-cn).
    pub(crate) fn dns_suffix(&self) -> &'static str {
        crate::config::source::dns_suffix(&self.partition)
    }

    /// `BUCKET/KEY` as an IAM resource path: IAM reads `*`, `?` and `$` in a resource as
    /// wildcards or variables, so they are written as the literal forms `${*}`, `${?}`, `${$}`.
    pub(crate) fn object_path(&self) -> String {
        let mut out = format!("{}/", self.source.bucket);
        for c in self.source.key.chars() {
            match c {
                '*' | '?' | '$' => {
                    out.push_str("${");
                    out.push(c);
                    out.push('}');
                }
                c => out.push(c),
            }
        }
        out
    }

    /// The object's ARN: through an access point `ACCESS_POINT_ARN/object/KEY`.
    pub(crate) fn object_arn(&self) -> String {
        match self.source.access_point() {
            Some(_) => format!("{}/object/{}", self.source.bucket, self.key_path()),
            None => format!("arn:{}:s3:::{}", self.partition(), self.object_path()),
        }
    }

    /// The key as an IAM resource path (see [`Self::object_path`]).
    fn key_path(&self) -> String {
        let path = self.object_path();
        path[self.source.bucket.len() + 1..].to_owned()
    }

    /// The S3 actions on the object.
    pub(crate) fn s3_actions(&self) -> Vec<&'static str> {
        let mut a = vec!["s3:GetObject"];
        if self.source.version_id.is_some() {
            a.push("s3:GetObjectVersion");
        }
        a
    }
}

/// The instance role policy, with `object_resource` as the S3 resource (a string, or a
/// CloudFormation expression).
fn role_policy(input: &PolicyInput, object_resource: Value) -> Value {
    let mut statements = vec![
        json!({
            "Sid": "EcsContainerInstance",
            "Effect": "Allow",
            "Action": ECS_INSTANCE_ACTIONS,
            "Resource": "*"
        }),
        json!({
            "Sid": "EcsTagOnCreate",
            "Effect": "Allow",
            "Action": "ecs:TagResource",
            "Resource": "*",
            "Condition": { "StringEquals": { "ecs:CreateAction": ECS_TAG_ON_CREATE } }
        }),
    ];
    let mut read = json!({
        "Sid": "ReadEcsConfig",
        "Effect": "Allow",
        "Action": input.s3_actions(),
        "Resource": object_resource
    });
    if let Some(account) = &input.bucket_account {
        read["Condition"] = json!({ "StringEquals": { "s3:ResourceAccount": account } });
    }
    statements.push(read);
    if let Some(key) = &input.kms_key {
        statements.push(json!({
            "Sid": "DecryptEcsConfig",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": key.arn,
            "Condition": {
                "StringEquals": {
                    "kms:ViaService": format!("s3.{}.{}", key.region, input.dns_suffix())
                }
            }
        }));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// The trust policy: EC2 may assume the role. `principal` is the EC2 service principal
/// (`ec2.amazonaws.com.cn` in aws-cn).
pub(crate) fn trust_policy_for(principal: Value) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": principal },
            "Action": "sts:AssumeRole"
        }]
    })
}

/// One JSON document holding both policies, named.
pub(crate) fn json_document(input: &PolicyInput) -> Value {
    json!({
        "Source": input.source.to_string(),
        "InstanceRolePolicy": role_policy(input, Value::String(input.object_arn())),
        "TrustPolicy": trust_policy_for(Value::String(format!("ec2.{}", input.dns_suffix()))),
    })
}

/// A CloudFormation template (JSON, which YAML templates can paste too) with the role, its
/// inline policy and the instance profile. The S3 ARN takes its partition from
/// `AWS::Partition`, so the template works in every partition.
pub(crate) fn cloudformation_document(input: &PolicyInput) -> Value {
    let object = match input.source.access_point() {
        Some(_) => Value::String(input.object_arn()),
        None => json!({
            "Fn::Join": ["", ["arn:", { "Ref": "AWS::Partition" }, ":s3:::", input.object_path()]]
        }),
    };
    json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "ECS container instance role and instance profile, least privilege for ecs-bootstrap reading {}",
            input.source
        ),
        "Resources": {
            "EcsInstanceRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "AssumeRolePolicyDocument": trust_policy_for(json!({ "Fn::Sub": "ec2.${AWS::URLSuffix}" })),
                    "Policies": [{
                        "PolicyName": "ecs-bootstrap-instance",
                        "PolicyDocument": role_policy(input, object)
                    }]
                }
            },
            "EcsInstanceProfile": {
                "Type": "AWS::IAM::InstanceProfile",
                "Properties": { "Roles": [{ "Ref": "EcsInstanceRole" }] }
            }
        },
        "Outputs": {
            "InstanceProfileArn": { "Value": { "Fn::GetAtt": ["EcsInstanceProfile", "Arn"] } },
            "InstanceRoleArn": { "Value": { "Fn::GetAtt": ["EcsInstanceRole", "Arn"] } }
        }
    })
}

/// The text `iam-policy` prints (pretty JSON, no trailing newline).
pub(crate) fn render(request: &Request) -> Result<String, UsageError> {
    let input = PolicyInput::from_request(request)?;
    let doc = match request.format {
        Format::Json => json_document(&input),
        Format::Cloudformation => cloudformation_document(&input),
    };
    serde_json::to_string_pretty(&doc)
        .map_err(|e| UsageError(format!("cannot render the policy as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(source: &str, kms: Option<&str>, format: Format) -> Request {
        Request {
            source: source.into(),
            kms_key: kms.map(Into::into),
            expected_bucket_owner: None,
            partition: None,
            format,
        }
    }

    const KEY: &str = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn statement<'a>(policy: &'a Value, sid: &str) -> Option<&'a Value> {
        policy["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .find(|s| s["Sid"] == sid)
    }

    #[test]
    fn plain_source_reads_one_object_only() {
        let out = render(&args("s3://my-bucket/ecs/prod.config", None, Format::Json)).unwrap();
        let doc: Value = serde_json::from_str(&out).unwrap();
        let role = &doc["InstanceRolePolicy"];
        let read = statement(role, "ReadEcsConfig").unwrap();
        assert_eq!(read["Action"], json!(["s3:GetObject"]));
        assert_eq!(read["Resource"], "arn:aws:s3:::my-bucket/ecs/prod.config");
        assert!(statement(role, "DecryptEcsConfig").is_none());
        assert_eq!(role["Statement"].as_array().unwrap().len(), 3);
        let agent = statement(role, "EcsContainerInstance").unwrap();
        assert_eq!(agent["Action"], json!(ECS_INSTANCE_ACTIONS));
        assert_eq!(agent["Resource"], "*");
    }

    #[test]
    fn version_and_key_add_exactly_their_grants() {
        let out = render(&args(
            "s3://my-bucket/ecs.config?versionId=3HL4kqtJlcpXroDTDmJ",
            Some(KEY),
            Format::Json,
        ))
        .unwrap();
        let doc: Value = serde_json::from_str(&out).unwrap();
        let role = &doc["InstanceRolePolicy"];
        let read = statement(role, "ReadEcsConfig").unwrap();
        assert_eq!(
            read["Action"],
            json!(["s3:GetObject", "s3:GetObjectVersion"])
        );
        assert_eq!(read["Resource"], "arn:aws:s3:::my-bucket/ecs.config");
        let kms = statement(role, "DecryptEcsConfig").unwrap();
        assert_eq!(kms["Action"], "kms:Decrypt");
        assert_eq!(kms["Resource"], KEY);
        assert_eq!(
            kms["Condition"]["StringEquals"]["kms:ViaService"],
            "s3.eu-west-1.amazonaws.com"
        );
    }

    #[test]
    fn wildcards_in_the_key_are_literal() {
        let input = PolicyInput::from_request(&args("s3://b-1/a*b$c", None, Format::Json)).unwrap();
        assert_eq!(input.object_arn(), "arn:aws:s3:::b-1/a${*}b${$}c");
    }

    #[test]
    fn partition_follows_the_key() {
        let input = PolicyInput::from_request(&args(
            "s3://bucket/k",
            Some("arn:aws-cn:kms:cn-north-1:123456789012:key/abc"),
            Format::Json,
        ))
        .unwrap();
        assert_eq!(input.object_arn(), "arn:aws-cn:s3:::bucket/k");
        let doc = json_document(&input);
        let kms = statement(&doc["InstanceRolePolicy"], "DecryptEcsConfig").unwrap();
        assert_eq!(
            kms["Condition"]["StringEquals"]["kms:ViaService"],
            "s3.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            doc["TrustPolicy"]["Statement"][0]["Principal"]["Service"],
            "ec2.amazonaws.com.cn"
        );
    }

    #[test]
    fn partitions_access_points_and_the_bucket_account() {
        let mut a = args(
            "s3://arn:aws-us-gov:s3:us-gov-west-1:123456789012:accesspoint/my-ap/ecs/prod*.config",
            None,
            Format::Json,
        );
        a.expected_bucket_owner = Some("210987654321".into());
        let input = PolicyInput::from_request(&a).unwrap();
        assert_eq!(input.partition(), "aws-us-gov");
        assert_eq!(
            input.object_arn(),
            "arn:aws-us-gov:s3:us-gov-west-1:123456789012:accesspoint/my-ap/object/ecs/prod${*}.config"
        );
        let doc = json_document(&input);
        let read = statement(&doc["InstanceRolePolicy"], "ReadEcsConfig").unwrap();
        assert_eq!(
            read["Condition"]["StringEquals"]["s3:ResourceAccount"],
            "210987654321"
        );
        // --partition must agree with what the source and the key say.
        a.partition = Some("aws".into());
        let e = PolicyInput::from_request(&a).unwrap_err().to_string();
        assert!(e.contains("one partition"), "{e}");
        let mut b = args("s3://bucket/k", None, Format::Json);
        b.partition = Some("aws-us-gov".into());
        let input = PolicyInput::from_request(&b).unwrap();
        assert_eq!(input.object_arn(), "arn:aws-us-gov:s3:::bucket/k");
        b.expected_bucket_owner = Some("12".into());
        assert!(PolicyInput::from_request(&b).is_err());
    }

    #[test]
    fn trust_policy_is_ec2_assume_role() {
        let input = PolicyInput::from_request(&args("s3://bkt/k", None, Format::Json)).unwrap();
        let t = &json_document(&input)["TrustPolicy"];
        assert_eq!(
            t["Statement"][0]["Principal"]["Service"],
            "ec2.amazonaws.com"
        );
        assert_eq!(t["Statement"][0]["Action"], "sts:AssumeRole");
        assert_eq!(t["Statement"][0]["Effect"], "Allow");
    }

    #[test]
    fn cloudformation_has_role_and_profile() {
        let out = render(&args("s3://bucket/k", Some(KEY), Format::Cloudformation)).unwrap();
        let doc: Value = serde_json::from_str(&out).unwrap();
        let res = &doc["Resources"];
        assert_eq!(res["EcsInstanceRole"]["Type"], "AWS::IAM::Role");
        assert_eq!(
            res["EcsInstanceProfile"]["Type"],
            "AWS::IAM::InstanceProfile"
        );
        assert_eq!(
            res["EcsInstanceProfile"]["Properties"]["Roles"][0]["Ref"],
            "EcsInstanceRole"
        );
        let role = &res["EcsInstanceRole"]["Properties"];
        assert_eq!(
            role["AssumeRolePolicyDocument"],
            trust_policy_for(json!({ "Fn::Sub": "ec2.${AWS::URLSuffix}" }))
        );
        let policy = &role["Policies"][0]["PolicyDocument"];
        let read = statement(policy, "ReadEcsConfig").unwrap();
        assert_eq!(
            read["Resource"]["Fn::Join"][1],
            json!(["arn:", {"Ref": "AWS::Partition"}, ":s3:::", "bucket/k"])
        );
    }

    #[test]
    fn bad_inputs_are_usage_errors_that_say_why() {
        for (source, key, why) in [
            ("https://b/k", None, "s3://"),
            ("s3://bucket/k", Some("1234abcd-12ab"), "not an ARN"),
            (
                "s3://bucket/k",
                Some("arn:aws:kms:us-east-1:123456789012:alias/my-key"),
                "alias",
            ),
            (
                "s3://bucket/k",
                Some("arn:aws:s3:us-east-1:123456789012:key/x"),
                "not a KMS ARN",
            ),
            (
                "s3://bucket/k",
                Some("arn:aws:kms:us-east-1:1234:key/x"),
                "12 digits",
            ),
            (
                "s3://bucket/k",
                Some("arn:aws:kms:us-east-1:123456789012:key/"),
                "key ID",
            ),
        ] {
            let e = render(&args(source, key, Format::Json))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{source} {key:?}: {e}");
        }
    }
}

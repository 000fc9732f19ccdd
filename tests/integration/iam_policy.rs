//! `ecs-bootstrap iam-policy` run as a real process: the output parses and holds exactly the
//! documented actions and the one object (no more), in both formats; bad input exits 2.

use serde_json::Value;
use std::collections::BTreeSet;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ecs-bootstrap");
const KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

/// The actions of AmazonEC2ContainerServiceforEC2Role on every resource, as documented.
const MANAGED: [&str; 15] = [
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

fn run(args: &[&str]) -> Output {
    let root = tempfile::tempdir().expect("tempdir");
    Command::new(BIN)
        .arg("iam-policy")
        .args(args)
        // An empty root: no settings file of the machine leaks in.
        .arg("--root")
        .arg(root.path())
        .env_remove("ECS_BOOTSTRAP_SOURCE")
        .env_remove("ECS_BOOTSTRAP_KMS_KEY")
        .output()
        .expect("runs the binary")
}

fn parse(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

fn as_set(v: &Value) -> BTreeSet<String> {
    match v {
        Value::String(s) => [s.clone()].into(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().expect("string").to_owned())
            .collect(),
        other => panic!("not a string or list: {other}"),
    }
}

/// Every (action, resource) pair the policy allows, and the conditions by action.
fn grants(policy: &Value) -> BTreeSet<(String, String)> {
    assert_eq!(policy["Version"], "2012-10-17");
    let mut out = BTreeSet::new();
    for s in policy["Statement"].as_array().expect("statements") {
        assert_eq!(s["Effect"], "Allow", "{s}");
        let resources = match &s["Resource"] {
            // CloudFormation: Fn::Join of the partition and the path, shown as one string.
            Value::Object(o) => {
                let parts = o["Fn::Join"][1].as_array().expect("join parts");
                [parts
                    .iter()
                    .map(|p| match p {
                        Value::String(s) => s.clone(),
                        other => {
                            assert_eq!(other["Ref"], "AWS::Partition");
                            "aws".to_owned()
                        }
                    })
                    .collect::<String>()]
                .into()
            }
            other => as_set(other),
        };
        for a in as_set(&s["Action"]) {
            for r in &resources {
                out.insert((a.clone(), r.clone()));
            }
        }
    }
    out
}

fn expected(object: &str, extra: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    MANAGED
        .iter()
        .map(|a| (a.to_string(), "*".to_string()))
        .chain([("ecs:TagResource".to_string(), "*".to_string())])
        .chain([("s3:GetObject".to_string(), object.to_string())])
        .chain(extra.iter().map(|(a, r)| (a.to_string(), r.to_string())))
        .collect()
}

fn condition(policy: &Value, action: &str) -> Value {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| as_set(&s["Action"]).contains(action))
        .map(|s| s["Condition"].clone())
        .unwrap_or(Value::Null)
}

fn check_trust(trust: &Value) {
    check_trust_principal(trust, serde_json::json!("ec2.amazonaws.com"));
}

fn check_trust_principal(trust: &Value, principal: Value) {
    assert_eq!(
        trust,
        &serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": { "Service": principal },
                "Action": "sts:AssumeRole"
            }]
        })
    );
}

#[test]
fn json_for_a_plain_object() {
    let doc = parse(&run(&["--source", "s3://my-bucket/ecs/prod.config"]));
    let role = &doc["InstanceRolePolicy"];
    assert_eq!(
        grants(role),
        expected("arn:aws:s3:::my-bucket/ecs/prod.config", &[])
    );
    assert_eq!(
        condition(role, "ecs:TagResource"),
        serde_json::json!({"StringEquals": {"ecs:CreateAction": ["CreateCluster", "RegisterContainerInstance"]}})
    );
    assert_eq!(condition(role, "s3:GetObject"), Value::Null);
    check_trust(&doc["TrustPolicy"]);
}

#[test]
fn json_for_a_pinned_version_and_a_kms_key() {
    let doc = parse(&run(&[
        "--source",
        "s3://my-bucket/ecs.config?versionId=L4kqtJlcpXroDTDmpUMLUo",
        "--kms-key",
        KEY,
        "--format",
        "json",
    ]));
    let role = &doc["InstanceRolePolicy"];
    let object = "arn:aws:s3:::my-bucket/ecs.config";
    assert_eq!(
        grants(role),
        expected(
            object,
            &[("s3:GetObjectVersion", object), ("kms:Decrypt", KEY)]
        )
    );
    assert_eq!(
        condition(role, "kms:Decrypt"),
        serde_json::json!({"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}})
    );
    check_trust(&doc["TrustPolicy"]);
}

#[test]
fn cloudformation_role_and_instance_profile() {
    let doc = parse(&run(&[
        "--source",
        "s3://my-bucket/k?versionId=v1",
        "--kms-key",
        KEY,
        "--format",
        "cloudformation",
    ]));
    let resources = doc["Resources"].as_object().expect("resources");
    let types: BTreeSet<&str> = resources
        .values()
        .map(|r| r["Type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["AWS::IAM::InstanceProfile", "AWS::IAM::Role"].into()
    );
    let role = &resources["EcsInstanceRole"]["Properties"];
    // The template serves every partition: the principal takes the partition's DNS suffix.
    check_trust_principal(
        &role["AssumeRolePolicyDocument"],
        serde_json::json!({ "Fn::Sub": "ec2.${AWS::URLSuffix}" }),
    );
    let policies = role["Policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1);
    let object = "arn:aws:s3:::my-bucket/k";
    assert_eq!(
        grants(&policies[0]["PolicyDocument"]),
        expected(
            object,
            &[("s3:GetObjectVersion", object), ("kms:Decrypt", KEY)]
        )
    );
    assert_eq!(
        resources["EcsInstanceProfile"]["Properties"]["Roles"],
        serde_json::json!([{ "Ref": "EcsInstanceRole" }])
    );
}

#[test]
fn source_from_the_settings_file() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc/ecs-bootstrap")).unwrap();
    std::fs::write(
        root.path().join("etc/ecs-bootstrap/env"),
        "ECS_BOOTSTRAP_SOURCE=s3://from-file/ecs.config\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["iam-policy", "--root"])
        .arg(root.path())
        .env_remove("ECS_BOOTSTRAP_SOURCE")
        .output()
        .unwrap();
    let doc = parse(&out);
    assert_eq!(
        grants(&doc["InstanceRolePolicy"]),
        expected("arn:aws:s3:::from-file/ecs.config", &[])
    );
}

#[test]
fn bad_input_exits_2_with_the_reason() {
    for (args, why) in [
        (vec!["--source", "s3://bucket"], "no object key"),
        (
            vec!["--source", "s3://bucket/k", "--kms-key", "alias/my-key"],
            "not an ARN",
        ),
        (vec![], "--source"),
        (
            vec!["--source", "s3://bucket/k", "--format", "yaml"],
            "yaml",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

/// The bucket's account becomes an s3:ResourceAccount condition on the read; the partition
/// follows --partition, an access point ARN or the KMS key (ARNs, kms:ViaService domain, EC2
/// principal), and they must agree.
#[test]
fn partitions_access_points_and_the_bucket_account() {
    let doc = parse(&run(&[
        "--source",
        "s3://my-bucket/k",
        "--expected-bucket-owner",
        "210987654321",
    ]));
    let read = doc["InstanceRolePolicy"]["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == "ReadEcsConfig")
        .unwrap()
        .clone();
    assert_eq!(
        read["Condition"],
        serde_json::json!({"StringEquals": {"s3:ResourceAccount": "210987654321"}})
    );
    // aws-cn through the key: ARNs, the KMS service domain and the EC2 principal.
    let doc = parse(&run(&[
        "--source",
        "s3://my-bucket/k",
        "--kms-key",
        "arn:aws-cn:kms:cn-northwest-1:123456789012:key/abc-1",
    ]));
    assert_eq!(
        grants(&doc["InstanceRolePolicy"]),
        expected(
            "arn:aws-cn:s3:::my-bucket/k",
            &[(
                "kms:Decrypt",
                "arn:aws-cn:kms:cn-northwest-1:123456789012:key/abc-1"
            )]
        )
    );
    let text = doc.to_string();
    assert!(
        text.contains("\"s3.cn-northwest-1.amazonaws.com.cn\""),
        "{text}"
    );
    check_trust_principal(
        &doc["TrustPolicy"],
        serde_json::json!("ec2.amazonaws.com.cn"),
    );
    // aws-us-gov access point.
    let doc = parse(&run(&[
        "--source",
        "s3://arn:aws-us-gov:s3:us-gov-west-1:123456789012:accesspoint/my-ap/ecs.config",
    ]));
    assert_eq!(
        grants(&doc["InstanceRolePolicy"]),
        expected(
            "arn:aws-us-gov:s3:us-gov-west-1:123456789012:accesspoint/my-ap/object/ecs.config",
            &[]
        )
    );
    // Disagreeing partitions are a usage error.
    let out = run(&[
        "--source",
        "s3://my-bucket/k",
        "--partition",
        "aws-us-gov",
        "--kms-key",
        "arn:aws:kms:us-east-1:123456789012:key/abc",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("one partition"));
}

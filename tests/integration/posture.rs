//! The IMDS posture of a `run`, one line per ECS network mode, and `--block-awsvpc-imds`,
//! with the real binary in the sandbox (moto, the IMDS emulator, real iptables).

use crate::harness::sandbox::*;
use serde_json::Value;

fn posture(v: &Value, mode: &str) -> Value {
    v["imds_posture"]
        .as_array()
        .unwrap_or_else(|| panic!("no imds_posture in {v}"))
        .iter()
        .find(|l| l["mode"] == mode)
        .cloned()
        .unwrap_or_else(|| panic!("no {mode} line in {v}"))
}

#[test]
fn run_reports_the_posture_per_mode_and_block_awsvpc_imds_writes_the_key() {
    let sb = Sandbox::up();
    let src = sb.source();
    let pf = sb.persist_file();
    let base = [
        "run",
        "--source",
        &src,
        "--persist-file",
        pf.to_str().unwrap(),
    ];
    let mut args = base.to_vec();
    args.extend(["--prove", "--probe-imdsv1", "--output", "json"]);
    let r = sb.run(&args);
    r.assert_code(0);
    let v = r.json();
    let bridge = posture(&v, "bridge");
    assert_eq!(bridge["state"], "blocked", "{v}");
    assert!(
        bridge["detail"]
            .as_str()
            .unwrap()
            .contains("proven by prove"),
        "{v}"
    );
    // The object does not set the key: awsvpc tasks are open, and the line says what to do.
    let awsvpc = posture(&v, "awsvpc");
    assert_eq!(awsvpc["state"], "open", "{v}");
    assert!(
        awsvpc["detail"]
            .as_str()
            .unwrap()
            .contains("--block-awsvpc-imds"),
        "{v}"
    );
    assert_eq!(posture(&v, "host")["state"], "not blockable");
    let options = posture(&v, "metadata options");
    assert_eq!(options["state"], "blocked", "IMDSv2 only: {v}");
    // The sandbox's IMDS answers with the usual TTL: a hop limit above 1 (the control for the
    // hop-limit test below).
    assert!(
        options["detail"]
            .as_str()
            .unwrap()
            .contains("hop limit 2 or more"),
        "{v}"
    );
    assert!(
        !std::fs::read_to_string(sb.dest())
            .unwrap()
            .contains("ECS_AWSVPC_BLOCK_IMDS")
    );

    let mut args = base.to_vec();
    args.push("--block-awsvpc-imds");
    let r = sb.run(&args);
    r.assert_code(0).assert_contains("imds posture:");
    let written = std::fs::read_to_string(sb.dest()).unwrap();
    assert!(
        written.ends_with("ECS_AWSVPC_BLOCK_IMDS=true\n"),
        "{written}"
    );
    assert!(written.starts_with(&sb.s("object_content")), "{written}");
    assert!(
        r.stdout
            .contains("awsvpc: blocked (ECS_AWSVPC_BLOCK_IMDS=true in"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("bridge: blocked"), "{}", r.stdout);
    assert!(r.stdout.contains("add --prove"), "{}", r.stdout);
    // Without --probe-imdsv1 the line says IMDSv1 was not probed, and claims neither way.
    assert!(
        r.stdout
            .contains("metadata options: unknown (IMDSv1 not probed"),
        "{}",
        r.stdout
    );
}

/// The PUT response hop limit, measured by prove without IMDSv1: with the emulator answering
/// token PUTs with TTL 1 (HttpPutResponseHopLimit=1), prove and the posture say 1; the counting
/// rule it used is gone afterwards.
#[test]
fn prove_measures_a_put_response_hop_limit_of_one() {
    let sb = Sandbox::up();
    sb.imds_control(serde_json::json!({"put_hop_limit": 1}));
    let src = sb.source();
    let pf = sb.persist_file();
    let r = sb.run(&[
        "run",
        "--source",
        &src,
        "--persist-file",
        pf.to_str().unwrap(),
        "--prove",
        "--ipv6",
        "off",
        "--output",
        "json",
    ]);
    r.assert_code(0);
    let v = r.json();
    let prove = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "prove")
        .unwrap()
        .clone();
    assert_eq!(prove["details"]["put_hop_limit"], "1", "{v}");
    assert!(
        posture(&v, "metadata options")["detail"]
            .as_str()
            .unwrap()
            .contains("hop limit 1"),
        "{v}"
    );
    assert!(
        !sb.rules("iptables").contains("ecs-bootstrap-ttl"),
        "the counting rule is removed"
    );
}

//! The check step (`check-imds`) end to end: the real binary in the sandbox's host namespace
//! against the IMDSv2 emulator, with the emulator's faults (slow at boot, 503s, invalidated
//! tokens, IMDSv1 open, no instance profile) and a real DROP on the host's OUTPUT chain.

use crate::harness::sandbox::*;
use serde_json::json;
use std::time::Duration;

const RETRY_LINE: &str = "instance metadata did not answer; retrying";

#[track_caller]
fn assert_names_the_causes(r: &Run) {
    r.assert_contains("cannot reach instance metadata")
        .assert_contains("OUTPUT chain")
        .assert_contains("proxy")
        .assert_contains("never through HTTP_PROXY")
        .assert_contains("hop limit");
}

#[test]
fn check_prints_identity_in_text_and_json_with_one_token() {
    let sb = Sandbox::up();
    let before = sb.token_puts();
    let logged = sb.imds_requests().len();
    let r = sb.run(&["check-imds"]);
    r.assert_code(0)
        .assert_contains(&sb.s("instance_id"))
        .assert_contains(&sb.s("region"))
        .assert_contains(&sb.s("instance_profile_arn"))
        .assert_contains(&format!("role {}", sb.s("role_name")))
        .assert_contains("IMDSv1: not probed");
    assert!(
        !r.all().contains("HttpTokens=required"),
        "no IMDSv1 warning without a probe:\n{}",
        r.all()
    );
    assert_eq!(sb.token_puts() - before, 1, "one token PUT per run");

    let r = sb.run(&["check-imds", "--output", "json"]);
    r.assert_code(0);
    let v = r.json();
    assert_eq!(v["command"], "check-imds");
    assert_eq!(v["exit_code"], 0);
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "{v}");
    assert_eq!(steps[0]["step"], "check");
    assert_eq!(steps[0]["outcome"], "ok");
    let d = &steps[0]["details"];
    assert_eq!(d["instance_id"], sb.s("instance_id").as_str());
    assert_eq!(d["region"], sb.s("region").as_str());
    assert_eq!(
        d["instance_profile_arn"],
        sb.s("instance_profile_arn").as_str()
    );
    assert_eq!(d["role_name"], sb.s("role_name").as_str());
    assert_eq!(d["imdsv1"], "not_probed");
    assert!(d["imdsv1_open"].is_null(), "{d}");
    // By default every request carries a token: nothing for MetadataNoToken to count.
    let tokenless = sb.tokenless_requests(logged);
    assert!(tokenless.is_empty(), "no IMDSv1 request: {tokenless:?}");

    // --probe-imdsv1 makes exactly one tokenless GET, which IMDSv2-only metadata refuses.
    let logged = sb.imds_requests().len();
    let r = sb.run(&["check-imds", "--probe-imdsv1", "--output", "json"]);
    r.assert_code(0);
    let d = &r.json()["steps"][0]["details"];
    assert_eq!(
        (d["imdsv1"].as_str(), d["imdsv1_open"].as_bool()),
        (Some("closed"), Some(false))
    );
    let tokenless = sb.tokenless_requests(logged);
    assert_eq!(tokenless.len(), 1, "one probe: {tokenless:?}");
    assert_eq!(tokenless[0]["path"], "/latest/meta-data/instance-id");
    assert_eq!(tokenless[0]["status"], 401);
}

#[test]
fn imdsv1_open_is_warned_about_with_the_fix() {
    let sb = Sandbox::up_with(&["--imdsv1"]);
    // The control: without the probe, an open IMDSv1 is neither asked nor claimed.
    let logged = sb.imds_requests().len();
    let r = sb.run(&["check-imds", "--output", "json"]);
    r.assert_code(0);
    assert!(!r.all().contains("IMDSv1 is still open"), "{}", r.all());
    assert_eq!(r.json()["steps"][0]["details"]["imdsv1"], "not_probed");
    assert!(sb.tokenless_requests(logged).is_empty());

    let logged = sb.imds_requests().len();
    let r = sb.run(&["check-imds", "--probe-imdsv1", "--output", "json"]);
    r.assert_code(0)
        .assert_contains("IMDSv1 is still open")
        .assert_contains("HttpTokens=required")
        .assert_contains("hop limit of 1");
    let d = &r.json()["steps"][0]["details"];
    assert_eq!(
        (d["imdsv1"].as_str(), d["imdsv1_open"].as_bool()),
        (Some("open"), Some(true))
    );
    assert_eq!(sb.tokenless_requests(logged).len(), 1);
    // The environment variable does the same.
    let mut c = sb.cmd();
    c.env("ECS_BOOTSTRAP_PROBE_IMDSV1", "true")
        .arg("check-imds");
    let text = Sandbox::run_cmd(c);
    text.assert_code(0)
        .assert_contains("warning: IMDSv1 is open");
}

#[test]
fn no_instance_profile_names_the_ecs_instance_role() {
    let sb = Sandbox::up_with(&["--no-profile"]);
    let r = sb.run(&["check-imds"]);
    r.assert_code(5)
        .assert_contains("no instance profile")
        .assert_contains("ecsInstanceRole")
        .assert_contains("AmazonEC2ContainerServiceforEC2Role");

    // `run`: the config step fails (exit 3, the first failed step) and says why; the firewall
    // step still runs and the check fails too.
    let src = sb.source();
    let pf = sb.persist_file();
    let r = sb.run(&[
        "run",
        "--source",
        &src,
        "--persist-file",
        pf.to_str().unwrap(),
        "--ipv6",
        "off",
        "--output",
        "json",
        "--deadline",
        "20",
    ]);
    r.assert_code(3);
    let v = r.json();
    let config = &v["steps"][0];
    assert_eq!(config["step"], "config");
    assert_eq!(config["outcome"], "failed");
    let err = config["error"].as_str().unwrap();
    assert!(err.contains("no instance profile"), "{err}");
    assert_eq!(v["steps"][1]["outcome"], "ok", "firewall still ran: {v}");
    assert_eq!(v["steps"][2]["outcome"], "failed", "{v}");
    assert!(
        v["steps"][2]["error"]
            .as_str()
            .unwrap()
            .contains("ecsInstanceRole")
    );
    assert_eq!(sb.drop_rules("iptables"), 1);
}

#[test]
fn unreachable_imds_fails_within_the_deadline_and_names_the_causes() {
    let sb = Sandbox::up();
    // IMDS closes every connection without an answer.
    sb.imds_control(json!({"unavailable_until": now_epoch() + 3600}));
    let (r, took) = timed(|| sb.run(&["check-imds", "--deadline", "4"]));
    r.assert_code(7);
    assert_names_the_causes(&r);
    assert!(
        r.stderr.matches(RETRY_LINE).count() >= 2,
        "retried, one line each:\n{}",
        r.stderr
    );
    assert!(
        took < Duration::from_secs(30),
        "a 4 s deadline bounds the run; took {took:?}"
    );

    // A DROP on the host's own OUTPUT chain: connections time out. After the firewall step
    // (which succeeds), the check fails with the same guidance and the exit code of an
    // unreachable IMDS, 7; the connect timeouts were retried.
    sb.imds_control(json!({}));
    assert!(sb.reaches_imds(Ns::Host, false));
    sb.cut_host_from_imds();
    assert!(!sb.reaches_imds(Ns::Host, false));
    let pf = sb.persist_file();
    let (r, took) = timed(|| {
        sb.run(&[
            "run",
            "--skip-config",
            "--persist-file",
            pf.to_str().unwrap(),
            "--ipv6",
            "off",
            "--deadline",
            "5",
            "--output",
            "json",
        ])
    });
    r.assert_code(7);
    assert_names_the_causes(&r);
    let v = r.json();
    assert_eq!(v["steps"][0]["outcome"], "skipped");
    assert_eq!(v["steps"][1]["outcome"], "ok");
    assert_eq!(v["steps"][2]["outcome"], "failed");
    assert_eq!(v["steps"][2]["imds_unreachable"], true, "{v}");
    let timeouts = r
        .stderr
        .lines()
        .filter(|l| l.contains(RETRY_LINE) && l.contains("timeout"))
        .count();
    assert!(timeouts >= 2, "connect timeouts retried:\n{}", r.stderr);
    assert!(
        took < Duration::from_secs(30),
        "a 5 s deadline bounds the run; took {took:?}"
    );

    // The DROP goes away 3 s into a run (IMDS slow to come up at boot): the connect
    // timeouts are retried until it answers, and the run succeeds.
    let mut c = sb.cmd();
    c.args(["check-imds", "--deadline", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let del = sb.exec(
        Ns::Host,
        &[
            "iptables",
            "-w",
            "5",
            "-D",
            "OUTPUT",
            "-d",
            "169.254.169.254",
            "-j",
            "DROP",
        ],
    );
    assert_eq!(del.code, Some(0), "{}", del.stderr);
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(RETRY_LINE) && l.contains("timeout")),
        "{stderr}"
    );
}

#[test]
fn slow_imds_at_boot_is_waited_for_with_one_log_line_per_retry() {
    let sb = Sandbox::up();
    // The first 3 requests (the token PUT and its retries) get 503.
    sb.imds_control(json!({"fail_first": 3}));
    let r = sb.run(&["check-imds", "--deadline", "30"]);
    r.assert_code(0).assert_contains(&sb.s("instance_id"));
    assert_eq!(
        r.stderr.matches(RETRY_LINE).count(),
        3,
        "one log line per retry:\n{}",
        r.stderr
    );
    assert_eq!(
        r.stderr
            .lines()
            .filter(|l| l.contains(RETRY_LINE))
            .filter(|l| l.contains("HTTP 503"))
            .count(),
        3,
        "each line says why:\n{}",
        r.stderr
    );

    // Not answering at all for ~3 s (connections closed): retried until it answers.
    sb.imds_control(json!({"unavailable_until": now_epoch() + 3}));
    let r = sb.run(&["check-imds", "--deadline", "30"]);
    r.assert_code(0).assert_contains(&sb.s("instance_id"));
    let retries = r.stderr.matches(RETRY_LINE).count();
    assert!(retries >= 1, "{}", r.stderr);
    let dropped = sb
        .imds_requests()
        .iter()
        .filter(|q| q["status"].is_null())
        .count();
    assert_eq!(
        dropped, retries,
        "each dropped request was followed by exactly one logged retry"
    );
}

#[test]
fn an_invalidated_token_is_replaced_once() {
    let sb = Sandbox::up();
    // After 2 good GETs every token is refused (401) until a new PUT.
    sb.imds_control(json!({"token_401_after": 2}));
    let before = sb.token_puts();
    let r = sb.run(&["check-imds"]);
    r.assert_code(0).assert_contains(&sb.s("role_name"));
    assert_eq!(
        sb.token_puts() - before,
        2,
        "the first token, and one new token after the 401"
    );
    assert_eq!(
        r.stderr
            .matches("refused the session token (HTTP 401)")
            .count(),
        1,
        "{}",
        r.stderr
    );

    // The same in a `run`, where the credentials for S3 come through the shared client: the
    // 401 hits the credentials request, a new token is fetched once, and the run succeeds.
    sb.imds_control(json!({"token_401_after": 1}));
    let before = sb.token_puts();
    let src = sb.source();
    let r = sb.run(&["run", "--skip-firewall", "--source", &src]);
    r.assert_code(0);
    assert_eq!(
        std::fs::read_to_string(sb.dest()).unwrap(),
        sb.s("object_content")
    );
    assert_eq!(sb.token_puts() - before, 2, "{}", r.stderr);
}

/// No command falls back to IMDSv1 by itself, whatever the token PUT gets back: an
/// IMDSv1-only service (token PUTs 404, tokenless GETs served), a token PUT answered with a
/// proxy's page, IMDS answering 503 at first. For each of check-imds, fetch-config, prove and
/// run, the emulator logs no GET without a token. Control: `--probe-imdsv1` is seen as one.
#[test]
fn no_command_falls_back_to_imdsv1_whatever_the_token_put_gets() {
    let sb = Sandbox::up();
    let src = sb.source();
    let dest = sb.dest();
    let dest = dest.to_str().unwrap();
    let pf = sb.persist_file();
    let pf = pf.to_str().unwrap();
    let commands: [&[&str]; 4] = [
        &["check-imds"],
        &["fetch-config", "--source", &src, "--dest", dest],
        &["prove", "--ipv6", "off"],
        &[
            "run",
            "--source",
            &src,
            "--persist-file",
            pf,
            "--ipv6",
            "off",
        ],
    ];
    let knobs = [
        json!({"v2_disabled": true, "imdsv1": true}),
        json!({"token_body": "<html>proxy login</html>", "imdsv1": true}),
        json!({"fail_first": 2, "imdsv1": true}),
    ];
    for k in &knobs {
        for c in commands {
            sb.imds_control(k.clone());
            let logged = sb.imds_requests().len();
            let mut args = vec!["--deadline", "4"];
            args.extend_from_slice(c);
            let r = sb.run(&args);
            let tokenless = sb.tokenless_requests(logged);
            assert!(
                tokenless.is_empty(),
                "{k} {c:?}: IMDSv1 requests {tokenless:?}\n{}",
                r.all()
            );
        }
    }
    sb.imds_control(json!({"imdsv1": true}));
    let logged = sb.imds_requests().len();
    sb.run(&["check-imds", "--probe-imdsv1"]).assert_code(0);
    assert_eq!(sb.tokenless_requests(logged).len(), 1);
}

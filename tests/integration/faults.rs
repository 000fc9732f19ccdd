//! The fault matrix: one test per injected fault. Each runs the real binary in its own
//! sandbox of real peers (moto with authentication on, the IMDSv2 emulator, real iptables in
//! network namespaces), with a previous ecs.config in place, and asserts
//! - the exit code (0 ok, 2 usage, 3 config, 4 firewall, 5 check; 128+N on a signal),
//! - the message (what failed and what to do),
//! - that nothing was lost ([`nothing_lost`]): ecs.config byte-identical to the previous file
//!   (or exactly the object when the case ends in success), no temp file beside it, exactly the
//!   DROP rules expected (zero or one) and, when there is one, the container blocked; and the
//!   host still reaching IMDS.
//!
//! The table in docs/reliability.md lists every case; keep both in step.
//! Run: `cargo test --test integration faults::` as root.

use crate::harness::sandbox::*;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;

/// The previous ecs.config every case starts from.
const OLD: &str = "ECS_CLUSTER=previous\nECS_LOGLEVEL=warn\n";
/// The backend `iptables` resolves to on the test machine (Debian: iptables-nft).
const IPT: &str = "iptables";
const LEGACY: &str = "iptables-legacy";
const LEGACY_PATH: &str = "/usr/sbin/iptables-legacy";

/// A sandbox with the previous ecs.config in place; the container reaches IMDS before the run
/// (else a "blocked" assertion would prove nothing).
fn setup_with(flags: &[&str]) -> Sandbox {
    let sb = Sandbox::up_with(flags);
    sb.write_dest(OLD);
    assert!(sb.reaches_imds(Ns::Ctr, false), "no rule before the run");
    sb
}

fn setup() -> Sandbox {
    setup_with(&[])
}

fn fault(sb: &Sandbox) -> String {
    sb.s("s3_fault_endpoint")
}

/// `run` with the source (unless `extra` has one), a rules file under the root, IPv4 only and
/// `deadline`, then `extra`.
fn run_args(sb: &Sandbox, deadline: u64, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".to_owned()];
    if !extra.contains(&"--source") {
        a.extend(["--source".to_owned(), sb.source()]);
    }
    a.extend(
        [
            "--persist-file",
            sb.persist_file().to_str().unwrap(),
            "--ipv6",
            "off",
            "--deadline",
            &deadline.to_string(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `run` with S3 at `s3`.
fn run_via(sb: &Sandbox, s3: &str, deadline: u64, extra: &[&str]) -> Run {
    sb.run_s3(s3, &run_args(sb, deadline, extra))
}

/// `run` with S3 behind the fault proxy.
fn run_fault(sb: &Sandbox, deadline: u64, extra: &[&str]) -> Run {
    run_via(sb, &fault(sb), deadline, extra)
}

/// `run` straight against moto.
fn run_moto(sb: &Sandbox, deadline: u64, extra: &[&str]) -> Run {
    run_via(sb, &sb.s("s3_endpoint"), deadline, extra)
}

/// What ecs.config must hold after the case.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum File {
    /// The previous file, byte for byte.
    Old,
    /// Exactly the object in S3 (the case ends in success).
    New,
}

/// DROP rules for 169.254.169.254 expected in each backend after the case.
#[derive(Clone, Copy, Debug)]
struct Rules {
    nft: usize,
    legacy: usize,
}
const NO_RULE: Rules = Rules { nft: 0, legacy: 0 };
const ONE_RULE: Rules = Rules { nft: 1, legacy: 0 };
const ONE_LEGACY_RULE: Rules = Rules { nft: 0, legacy: 1 };

/// Nothing lost: the file, no temp file, the rules, the container blocked iff a rule, and the
/// host reaching IMDS (with IMDS back to normal, so a fault injected into IMDS does not count).
#[track_caller]
fn nothing_lost(sb: &Sandbox, file: File, rules: Rules) {
    let d = sb.dest();
    let want = match file {
        File::Old => OLD.to_owned(),
        File::New => sb.s("object_content"),
    };
    assert_eq!(
        std::fs::read_to_string(&d).unwrap(),
        want,
        "ecs.config is not the {file:?} content"
    );
    assert!(
        std::fs::symlink_metadata(&d).unwrap().file_type().is_file(),
        "ecs.config is a regular file"
    );
    if file == File::New {
        assert_eq!(mode(&d), 0o600);
    }
    let dir = d.parent().unwrap();
    assert!(
        temp_files(dir).is_empty(),
        "temp files left: {:?}",
        temp_files(dir)
    );
    assert_eq!(sb.drop_rules(IPT), rules.nft, "{}", sb.rules(IPT));
    assert_eq!(sb.drop_rules(LEGACY), rules.legacy, "{}", sb.rules(LEGACY));
    sb.imds_control(json!({}));
    assert!(
        sb.reaches_imds(Ns::Host, false),
        "the host must still reach IMDS"
    );
    let blocked = rules.nft + rules.legacy > 0;
    assert_eq!(
        !sb.reaches_imds(Ns::Ctr, false),
        blocked,
        "the container is blocked exactly when the rule is in place"
    );
}

/// The persisted rules file holds exactly `n` DROP lines.
#[track_caller]
fn persisted_rules(sb: &Sandbox, n: usize) {
    let text = std::fs::read_to_string(sb.persist_file()).unwrap_or_default();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("169.254.169.254/32") && l.contains("-j DROP"))
            .count(),
        n,
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// S3 faults (through the fault proxy unless moto itself produces the fault)
// ---------------------------------------------------------------------------------------------

#[test]
fn s3_5xx_burst_then_success() {
    let sb = setup();
    sb.proxy_control(json!({"plan": [
        {"status": 500, "code": "InternalError", "message": "We encountered an internal error. Please try again."},
        {"status": 503, "code": "ServiceUnavailable", "message": "Please reduce your request rate."},
        {"status": 502, "code": "BadGateway", "message": "Bad Gateway"},
    ], "then": "pass"}));
    let before = sb.proxy_requests().len();
    let r = run_fault(&sb, 30, &[]);
    r.assert_code(0)
        .assert_contains("InternalError")
        .assert_contains("ServiceUnavailable")
        .assert_contains("written from");
    assert_eq!(r.fetch_attempts_failed(), 3, "{}", r.stderr);
    assert_eq!(
        sb.proxy_requests().len() - before,
        4,
        "3 failures + 1 success"
    );
    nothing_lost(&sb, File::New, ONE_RULE);
    persisted_rules(&sb, 1);
}

#[test]
fn s3_503_slowdown_until_the_deadline() {
    let sb = setup();
    sb.proxy_control(json!({"plan": [], "then":
        {"status": 503, "code": "SlowDown", "message": "Please reduce your request rate."}}));
    let (r, took) = timed(|| run_fault(&sb, 6, &[]));
    r.assert_code(3)
        .assert_contains("SlowDown")
        .assert_contains("giving up")
        .assert_contains("keeps its previous content");
    assert!(r.fetch_attempts_failed() >= 2, "{}", r.stderr);
    assert!(
        took < Duration::from_secs(10),
        "bounded by --deadline 6: {took:?}"
    );
    nothing_lost(&sb, File::Old, ONE_RULE);
}

/// A real 403 from moto: the role's policy does not allow the key.
#[test]
fn s3_403_access_denied() {
    let sb = setup();
    let bucket = sb.s("bucket");
    let forbidden = format!("s3://{bucket}/{}", sb.s("forbidden_key"));
    let r = run_moto(&sb, 30, &["--source", &forbidden]);
    r.assert_code(3)
        .assert_contains("access denied")
        .assert_contains(&format!("arn:aws:s3:::{bucket}/other.config"))
        .assert_contains("s3:GetObject")
        .assert_contains(&sb.s("instance_profile_arn"))
        .assert_contains("check that the key exists");
    assert_eq!(
        r.fetch_attempts_failed(),
        0,
        "no retry on 403: {}",
        r.stderr
    );
    nothing_lost(&sb, File::Old, ONE_RULE);
}

#[test]
fn s3_404_no_such_key() {
    let sb = setup();
    sb.proxy_control(json!({"plan": [
        {"status": 404, "code": "NoSuchKey", "message": "The specified key does not exist."}
    ], "then": "pass"}));
    let before = sb.proxy_requests().len();
    let r = run_fault(&sb, 30, &[]);
    r.assert_code(3)
        .assert_contains(&format!("bucket {} has no key ecs.config", sb.s("bucket")))
        .assert_contains("upload the object or fix --source")
        .assert_contains(&format!(
            "instance profile: {}",
            sb.s("instance_profile_arn")
        ))
        .assert_contains("reads it with s3:GetObject");
    assert_eq!(sb.proxy_requests().len() - before, 1, "no retry on 404");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

#[test]
fn s3_no_such_bucket() {
    let sb = setup();
    sb.proxy_control(json!({"plan": [
        {"status": 404, "code": "NoSuchBucket", "message": "The specified bucket does not exist"}
    ], "then": "pass"}));
    let before = sb.proxy_requests().len();
    let r = run_fault(&sb, 30, &[]);
    r.assert_code(3)
        .assert_contains(&format!("bucket {} does not exist", sb.s("bucket")))
        .assert_contains("check the bucket name")
        .assert_contains("reads it with s3:GetObject");
    assert_eq!(sb.proxy_requests().len() - before, 1, "no retry on 404");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

#[test]
fn s3_slow_body_past_the_deadline() {
    let sb = setup();
    sb.proxy_control(json!({"plan": [], "then": {"slow_bytes_per_sec": 2}}));
    let (r, took) = timed(|| run_fault(&sb, 4, &[]));
    // The fetch used the time up to its margin, past IMDS's: the check, which runs after,
    // says it had no time rather than blaming IMDS (which would make the code 7).
    r.assert_code(3)
        .assert_contains("too slow")
        .assert_contains("not made: the overall deadline has passed");
    assert!(
        took < Duration::from_secs(8),
        "bounded by --deadline 4: {took:?}"
    );
    nothing_lost(&sb, File::Old, ONE_RULE);
}

#[test]
fn s3_connection_reset() {
    let sb = setup();
    sb.proxy_control(json!({"plan": [], "then": "reset"}));
    let (r, took) = timed(|| run_fault(&sb, 6, &[]));
    r.assert_code(3)
        .assert_contains("connection failed")
        .assert_contains("giving up");
    assert!(r.fetch_attempts_failed() >= 2, "{}", r.stderr);
    assert!(took < Duration::from_secs(10), "{took:?}");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

#[test]
fn s3_truncated_body() {
    let sb = setup();
    sb.proxy_control(json!({"plan": [], "then": {"truncate": 5}}));
    let r = run_fault(&sb, 5, &[]);
    r.assert_code(3)
        .assert_contains("answer cut off")
        .assert_contains("giving up");
    assert!(r.fetch_attempts_failed() >= 2, "{}", r.stderr);
    nothing_lost(&sb, File::Old, ONE_RULE);
}

#[test]
fn s3_oversized_object() {
    let sb = setup();
    sb.proxy_control(json!({"plan": [], "then": {"oversize": 10_000_000}}));
    let before = sb.proxy_requests().len();
    let r = run_fault(&sb, 30, &[]);
    r.assert_code(3)
        .assert_contains("larger than --max-size 65536");
    assert_eq!(
        sb.proxy_requests().len() - before,
        1,
        "no retry when too large"
    );
    nothing_lost(&sb, File::Old, ONE_RULE);
}

/// A binary object (a PNG header: a wrong object uploaded).
#[test]
fn s3_garbage_bytes() {
    let sb = setup();
    // \x89PNG\r\n\x1a\n\0\0\0\rIHDR + invalid UTF-8.
    let garbage = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ//79gIE=";
    sb.proxy_control(
        json!({"plan": [], "then": {"body_b64": garbage, "status": 200,
        "content_type": "binary/octet-stream", "keep_headers": false}}),
    );
    let r = run_fault(&sb, 30, &[]);
    r.assert_code(3)
        .assert_contains("is not a valid ecs.config")
        .assert_contains("the object is binary")
        .assert_contains("keeps its previous content");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

#[test]
fn s3_html_error_page() {
    let sb = setup();
    sb.proxy_control(json!({"plan": [], "then": {
        "body": "<!DOCTYPE html>\n<html><head><title>Proxy login</title></head><body>Please sign in</body></html>\n",
        "status": 200, "content_type": "text/html", "keep_headers": false}}));
    let r = run_fault(&sb, 30, &[]);
    r.assert_code(3)
        .assert_contains("looks like HTML")
        .assert_contains("keeps its previous content");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

/// The object served is a valid config but not the one pinned with --sha256.
#[test]
fn s3_wrong_hash() {
    let sb = setup();
    sb.proxy_control(
        json!({"plan": [], "then": {"body": "ECS_CLUSTER=attacker\n",
        "status": 200, "content_type": "binary/octet-stream", "keep_headers": false}}),
    );
    let want = sb.s("object_sha256");
    let r = run_fault(&sb, 30, &["--sha256", &want]);
    r.assert_code(3)
        .assert_contains("but --sha256 expects")
        .assert_contains(&want)
        .assert_contains("keeps its previous content");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

/// moto ignores ExpectedBucketOwner; the proxy makes S3's check (403 when the header names
/// another account), so this proves the header is sent, with the right value.
#[test]
fn s3_wrong_bucket_owner() {
    let sb = setup();
    let acct = sb.s("account_id");
    sb.proxy_control(json!({"plan": [], "then": {"expected_owner": acct}}));
    let before = sb.proxy_requests().len();
    let r = run_fault(&sb, 30, &["--expected-bucket-owner", "999999999999"]);
    r.assert_code(3)
        .assert_contains("access denied")
        .assert_contains("not owned by account 999999999999");
    let reqs = sb.proxy_requests();
    let get: Vec<_> = reqs[before..]
        .iter()
        .filter(|q| q["method"] == "GET")
        .collect();
    assert_eq!(get.len(), 1, "no retry on 403: {get:?}");
    assert_eq!(get[0]["expected_bucket_owner"], "999999999999");
    assert_eq!(get[0]["status"], 403);
    nothing_lost(&sb, File::Old, ONE_RULE);

    // Control: the right owner passes the same check.
    let before = sb.proxy_requests().len();
    run_fault(&sb, 30, &["--expected-bucket-owner", &acct]).assert_code(0);
    let reqs = sb.proxy_requests();
    assert_eq!(reqs[before]["expected_bucket_owner"], acct.as_str());
    assert_eq!(reqs[before]["status"], 200);
    nothing_lost(&sb, File::New, ONE_RULE);
}

/// IMDS serves credentials S3 does not accept (a wrong secret): moto's SigV4 check answers 403
/// SignatureDoesNotMatch.
#[test]
fn s3_rejects_the_role_credentials() {
    let sb = setup();
    sb.imds_control(
        json!({"credentials": {"SecretAccessKey": "not-the-secret-0000000000000000000000000"}}),
    );
    let r = run_moto(&sb, 30, &["--skip-check"]);
    r.assert_code(3)
        .assert_contains("access denied")
        .assert_contains("SignatureDoesNotMatch");
    assert_eq!(r.fetch_attempts_failed(), 0, "{}", r.stderr);
    nothing_lost(&sb, File::Old, ONE_RULE);
}

// ---------------------------------------------------------------------------------------------
// IMDS faults
// ---------------------------------------------------------------------------------------------

/// IMDS closes every connection without an answer for the whole run: stopped by the deadline,
/// and the report itself names instance metadata and what to look at.
#[test]
fn imds_down() {
    let sb = setup();
    let never = now_epoch() + 3600;
    sb.imds_control(json!({"unavailable_until": never}));
    let (r, took) = timed(|| run_moto(&sb, 5, &[]));
    // The check fails too; the code is that of an unreachable IMDS, whichever step saw it.
    r.assert_code(7);
    for needle in [
        "the host cannot reach instance metadata at http://169.254.169.254",
        "never through HTTP_PROXY",
        "config    FAILED",
        "check     FAILED",
    ] {
        assert!(
            r.stdout.contains(needle),
            "the report lacks {needle:?}:\n{}\n{}",
            r.stdout,
            r.stderr
        );
    }
    assert!(
        took < Duration::from_secs(9),
        "bounded by --deadline 5: {took:?}"
    );
    nothing_lost(&sb, File::Old, ONE_RULE);
}

/// IMDS answers only 3 s after the start (early boot): waited for, then success.
#[test]
fn imds_slow_at_boot() {
    let sb = setup();
    let soon = now_epoch_f64() + 3.0;
    sb.imds_control(json!({"unavailable_until": soon}));
    let (r, took) = timed(|| run_moto(&sb, 30, &[]));
    r.assert_code(0).assert_contains("written from");
    assert!(took >= Duration::from_millis(2500), "it waited");
    assert!(
        sb.imds_requests().iter().any(|q| q["status"].is_null()),
        "some requests were dropped"
    );
    nothing_lost(&sb, File::New, ONE_RULE);
}

/// IMDS answers 503 to its first requests (throttled): retried, then success.
#[test]
fn imds_503_then_success() {
    let sb = setup();
    sb.imds_control(json!({"fail_first": 4}));
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(0);
    assert!(
        sb.imds_requests()
            .iter()
            .filter(|q| q["status"] == 503)
            .count()
            == 4,
        "{:?}",
        sb.imds_requests()
    );
    nothing_lost(&sb, File::New, ONE_RULE);
}

/// HttpTokens=optional (IMDSv1 still open, as on real EC2 where IMDSv2 cannot be turned off):
/// everything goes through IMDSv2, with one token for the whole run, and the check, asked to
/// probe, warns.
#[test]
fn imds_v1_open() {
    let sb = setup_with(&["--imdsv1"]);
    let before = sb.imds_requests().len();
    let r = run_moto(&sb, 30, &["--probe-imdsv1"]);
    r.assert_code(0)
        .assert_contains("IMDSv1 is still open")
        .assert_contains("--http-tokens required");
    let reqs = sb.imds_requests();
    let new = &reqs[before..];
    assert_eq!(
        new.iter().filter(|q| q["method"] == "PUT").count(),
        1,
        "one token PUT: {new:?}"
    );
    let tokenless: Vec<_> = new
        .iter()
        .filter(|q| q["method"] == "GET" && q["token"] == false)
        .collect();
    assert_eq!(
        tokenless.len(),
        1,
        "only the IMDSv1 probe goes without a token: {tokenless:?}"
    );
    nothing_lost(&sb, File::New, ONE_RULE);
}

/// A metadata service that knows only IMDSv1 (token PUT 404, as before IMDSv2 existed, or an
/// IMDSv1-only proxy): a fast failure naming the token request and its answer, not retries.
#[test]
fn imds_v1_only() {
    let sb = setup_with(&["--imdsv1"]);
    sb.imds_control(json!({"imdsv1": true, "v2_disabled": true}));
    let (r, took) = timed(|| run_moto(&sb, 30, &[]));
    r.assert_code(3)
        .assert_contains("instance metadata answered HTTP 404 for /latest/api/token")
        .assert_contains("does not issue IMDSv2 session tokens");
    assert!(took < Duration::from_secs(10), "a 404 is final: {took:?}");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

/// All tokens become invalid after 2 GETs (IMDS restarted, token expired): a GET answered 401
/// must fetch a new token once and go on.
#[test]
fn imds_token_401_mid_run() {
    let sb = setup();
    sb.imds_control(json!({"token_401_after": 2}));
    let before = sb.token_puts();
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(0);
    assert_eq!(sb.token_puts() - before, 2, "one new token after the 401");
    nothing_lost(&sb, File::New, ONE_RULE);
}

#[test]
fn imds_no_instance_profile() {
    let sb = setup_with(&["--no-profile"]);
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(3)
        .assert_contains("the instance has no instance profile (iam/security-credentials/ is 404)")
        .assert_contains("ecsInstanceRole: AmazonEC2ContainerServiceforEC2Role")
        .assert_contains("attach an instance profile with the ECS container instance role")
        .assert_contains("the instance has no instance profile (iam/info is 404)")
        .assert_contains("keeps its previous content");
    assert_eq!(r.fetch_attempts_failed(), 0, "no retry: {}", r.stderr);
    nothing_lost(&sb, File::Old, ONE_RULE);
}

// ---------------------------------------------------------------------------------------------
// Firewall faults
// ---------------------------------------------------------------------------------------------

/// iptables is not installed: /usr/sbin (and /sbin, a link to it) hidden by an empty folder in
/// the run's private mount namespace.
#[test]
fn iptables_not_installed() {
    let sb = setup();
    let r = sb.host_script(
        &sb.s("s3_endpoint"),
        &format!(
            "set -e; E=$(mktemp -d); mount --bind \"$E\" /usr/sbin; \
             if [ -e /usr/sbin/iptables ] || command -v iptables; then echo 'still there'; exit 99; fi; \
             exec \"$BIN\" {}",
            run_args(&sb, 30, &[]).join(" ")
        ),
    );
    r.assert_code(4)
        .assert_contains("iptables not found: install the package `iptables`");
    // The config step is independent: it still did its job.
    nothing_lost(&sb, File::New, NO_RULE);
}

#[test]
fn iptables_flag_points_nowhere() {
    let sb = setup();
    let r = run_moto(&sb, 30, &["--iptables", "/nonexistent/sbin/iptables"]);
    r.assert_code(4)
        .assert_contains("/nonexistent/sbin/iptables not found")
        .assert_contains("point --iptables at the binary");
    nothing_lost(&sb, File::New, NO_RULE);
}

/// Another program holds the xtables lock (legacy backend) for longer than iptables' `-w 10`.
/// /run is a private tmpfs inside the run's mount namespace, so the machine's
/// /run/xtables.lock (shared by every other test) is not touched.
#[test]
fn xtables_lock_held_by_another_process() {
    let sb = setup();
    let script = format!(
        "set -e; mount -t tmpfs ebs-run /run; exec 9>/run/xtables.lock; flock -x 9; \
         \"$BIN\" {} 9>&-",
        run_args(&sb, 60, &["--iptables", LEGACY_PATH]).join(" ")
    );
    let (r, took) = timed(|| sb.host_script(&sb.s("s3_endpoint"), &script));
    r.assert_code(4)
        .assert_contains("Another app is currently holding the xtables lock")
        .assert_contains("find it with `fuser /run/xtables.lock` and retry");
    assert!(took >= Duration::from_secs(10), "waited -w 10: {took:?}");
    nothing_lost(&sb, File::New, NO_RULE);
}

/// The xtables lock is held for 2 s (another program's iptables call): waited for, then success.
#[test]
fn xtables_lock_released_while_waiting() {
    let sb = setup();
    let r = sb.host_script(
        &sb.s("s3_endpoint"),
        &format!(
            "set -e; mount -t tmpfs ebs-run /run; exec 9>/run/xtables.lock; flock -x 9; \
             (sleep 2; flock -u 9) & \"$BIN\" {} 9>&-; rc=$?; wait; exit $rc",
            run_args(&sb, 60, &["--iptables", LEGACY_PATH]).join(" ")
        ),
    );
    r.assert_code(0).assert_contains("legacy backend");
    nothing_lost(&sb, File::New, ONE_LEGACY_RULE);
}

/// Another ecs-bootstrap firewall run holds our lock for 2 s: waited for, then success.
#[test]
fn firewall_lock_held_by_another_run() {
    let sb = setup();
    let lock = sb.root.path().join("run/ecs-bootstrap/firewall.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let mut holder = std::process::Command::new("flock")
        .arg("-x")
        .arg(&lock)
        .args(["sleep", "2"])
        .spawn()
        .unwrap();
    wait_for("the lock holder", Duration::from_secs(5), || {
        std::process::Command::new("flock")
            .args(["-n", "-x"])
            .arg(&lock)
            .arg("true")
            .status()
            .is_ok_and(|s| !s.success())
    });
    let (r, took) = timed(|| run_moto(&sb, 30, &[]));
    r.assert_code(0);
    assert!(took >= Duration::from_millis(500), "it waited");
    holder.wait().unwrap();
    nothing_lost(&sb, File::New, ONE_RULE);
}

/// DOCKER-USER and the jump were deleted after a first run (a flush by hand, a firewall
/// reload): the next run recreates them, with exactly one rule.
#[test]
fn chain_missing() {
    let sb = setup();
    run_moto(&sb, 30, &[]).assert_code(0);
    for cmd in [
        &["-D", "FORWARD", "-j", "DOCKER-USER"][..],
        &["-F", "DOCKER-USER"],
        &["-X", "DOCKER-USER"],
    ] {
        let mut a = vec![IPT, "-w", "5"];
        a.extend_from_slice(cmd);
        sb.exec(Ns::Host, &a).assert_code(0);
    }
    assert!(!sb.rules(IPT).contains("DOCKER-USER"));
    std::fs::write(sb.dest(), OLD).unwrap();
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(0)
        .assert_contains("IPv4: created chain DOCKER-USER")
        .assert_contains("placed -j DOCKER-USER first in FORWARD");
    let forward: Vec<String> = sb
        .rules(IPT)
        .lines()
        .filter(|l| l.starts_with("-A FORWARD"))
        .map(str::to_owned)
        .collect();
    assert_eq!(forward, ["-A FORWARD -j DOCKER-USER"]);
    nothing_lost(&sb, File::New, ONE_RULE);
    persisted_rules(&sb, 1);
}

/// dockerd's tables in the legacy backend while `iptables` is iptables-nft: the rule goes into
/// the backend `iptables` uses (once), and the kernel applies it whatever dockerd's ACCEPTs in
/// the other backend say.
#[test]
fn both_backends_tables_present() {
    let sb = setup();
    for cmd in [
        &["-N", "DOCKER"][..],
        &["-N", "DOCKER-USER"],
        &["-A", "DOCKER-USER", "-j", "RETURN"],
        &["-A", "FORWARD", "-j", "DOCKER-USER"],
        &["-A", "FORWARD", "-o", "docker0", "-j", "ACCEPT"],
        &["-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT"],
    ] {
        let mut a = vec![LEGACY, "-w", "5"];
        a.extend_from_slice(cmd);
        sb.exec(Ns::Host, &a).assert_code(0);
    }
    sb.exec(Ns::Host, &[IPT, "-w", "5", "-N", "DOCKER-USER"])
        .assert_code(0);
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(0)
        .assert_contains("(nft backend)")
        .assert_contains("iptables-legacy tables exist beside the nft ones");
    assert!(
        sb.rules(LEGACY).contains("-A FORWARD -i docker0 -j ACCEPT"),
        "the legacy tables are untouched"
    );
    nothing_lost(&sb, File::New, ONE_RULE);
    // A second run changes nothing.
    let again = run_moto(&sb, 30, &["--output", "json"]);
    again.assert_code(0);
    assert_eq!(again.json()["steps"][1]["changed"], false);
    nothing_lost(&sb, File::New, ONE_RULE);
}

/// The existing rules file does not parse: it is left alone (a clear error), the rule itself is
/// in place.
#[test]
fn rules_file_invalid() {
    let sb = setup();
    let broken = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT --no-such-option -j ACCEPT\nCOMMIT\n";
    let pf = sb.persist_file();
    std::fs::create_dir_all(pf.parent().unwrap()).unwrap();
    std::fs::write(&pf, broken).unwrap();
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(4)
        .assert_contains("does not pass iptables-restore --test")
        .assert_contains(pf.to_str().unwrap());
    assert_eq!(std::fs::read_to_string(&pf).unwrap(), broken);
    assert!(temp_files(pf.parent().unwrap()).is_empty());
    nothing_lost(&sb, File::New, ONE_RULE);
}

// ---------------------------------------------------------------------------------------------
// Destination faults
// ---------------------------------------------------------------------------------------------

/// `run` with the destination folder on a tmpfs (see [`Sandbox::run_on_tmpfs`]).
fn run_on_tmpfs(sb: &Sandbox, prepare: &str) -> (Run, String, String) {
    let t = sb.run_on_tmpfs(OLD, prepare, &run_args(sb, 30, &[]).join(" "));
    (t.run, t.file, t.ls)
}

#[test]
fn disk_full() {
    let sb = setup();
    let (r, file, ls) = run_on_tmpfs(
        &sb,
        "dd if=/dev/zero of=\"$D/fill\" bs=1k 2>/dev/null || true",
    );
    r.assert_code(3)
        .assert_contains("No space left on device")
        .assert_contains("the previous file is intact");
    assert_eq!(file, OLD);
    assert_eq!(ls, "ecs.config\nfill\n", "no temp file");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

#[test]
fn read_only_destination() {
    let sb = setup();
    let (r, file, ls) = run_on_tmpfs(&sb, "mount -o remount,ro \"$D\"");
    r.assert_code(3)
        .assert_contains("Read-only file system")
        .assert_contains("the previous file is intact");
    assert_eq!(file, OLD);
    assert_eq!(ls, "ecs.config\n");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

/// ecs.config is a symbolic link (to a file elsewhere): refused, the link and its target are
/// untouched.
#[test]
fn symlinked_destination() {
    let sb = setup();
    let target = sb.root.path().join("elsewhere.config");
    std::fs::write(&target, OLD).unwrap();
    let d = sb.dest();
    std::fs::remove_file(&d).unwrap();
    std::os::unix::fs::symlink(&target, &d).unwrap();
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(3)
        .assert_contains("it is a symbolic link")
        .assert_contains("the previous file is intact");
    assert!(std::fs::symlink_metadata(&d).unwrap().is_symlink());
    assert_eq!(std::fs::read_link(&d).unwrap(), target);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), OLD);
    assert!(temp_files(d.parent().unwrap()).is_empty());
    // The rest of "nothing lost" (the file check would follow the link: done above).
    std::fs::remove_file(&d).unwrap();
    std::fs::write(&d, OLD).unwrap();
    nothing_lost(&sb, File::Old, ONE_RULE);
}

#[test]
fn destination_is_a_folder() {
    let sb = setup();
    let d = sb.dest();
    std::fs::remove_file(&d).unwrap();
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("keep"), "x").unwrap();
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(3)
        .assert_contains("it exists and is not a regular file (a folder?)")
        .assert_contains("the previous file is intact");
    assert!(d.is_dir());
    assert_eq!(std::fs::read_to_string(d.join("keep")).unwrap(), "x");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
    assert!(temp_files(d.parent().unwrap()).is_empty());
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::write(&d, OLD).unwrap();
    nothing_lost(&sb, File::Old, ONE_RULE);
}

/// First boot: neither the file nor its folder exists yet (not a fault, the baseline).
#[test]
fn first_boot_no_previous_file() {
    let sb = setup();
    std::fs::remove_dir_all(sb.dest().parent().unwrap()).unwrap();
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(0).assert_contains("written from");
    assert_eq!(mode(sb.dest().parent().unwrap()), 0o755);
    nothing_lost(&sb, File::New, ONE_RULE);
    persisted_rules(&sb, 1);
}

// ---------------------------------------------------------------------------------------------
// Signals and concurrency
// ---------------------------------------------------------------------------------------------

/// Starts `run` with a body dribbled at 2 B/s, waits until the firewall step is done (the rule
/// is in place) and the fetch is under way, then sends `sig`.
fn signal_mid_run(
    sb: &Sandbox,
    sig: nix::sys::signal::Signal,
) -> (Option<i32>, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt as _;
    sb.proxy_control(json!({"plan": [], "then": {"slow_bytes_per_sec": 2}}));
    let mut c = sb.cmd_s3(&fault(sb));
    c.args(run_args(sb, 60, &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    wait_for("the DROP rule", Duration::from_secs(15), || {
        sb.drop_rules(IPT) == 1
    });
    // The proxy logs a request when it ends; give the GET time to be well into the body.
    std::thread::sleep(Duration::from_millis(1500));
    // `ip netns exec` execs the binary, so the child's PID is the binary's.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), out.status.signal(), text)
}

#[test]
fn sigterm_mid_run() {
    let sb = setup();
    let (code, _, text) = signal_mid_run(&sb, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(143), "{text}");
    assert!(text.contains("interrupted by SIGTERM"), "{text}");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

#[test]
fn sigint_mid_run() {
    let sb = setup();
    let (code, _, text) = signal_mid_run(&sb, nix::sys::signal::Signal::SIGINT);
    assert_eq!(code, Some(130), "{text}");
    assert!(text.contains("interrupted by SIGINT"), "{text}");
    nothing_lost(&sb, File::Old, ONE_RULE);
}

/// SIGKILL cannot be handled: nothing is half-written all the same, and the next run completes
/// with still exactly one rule.
#[test]
fn sigkill_mid_run_then_rerun() {
    let sb = setup();
    let (code, signal, text) = signal_mid_run(&sb, nix::sys::signal::Signal::SIGKILL);
    assert_eq!((code, signal), (None, Some(9)), "{text}");
    nothing_lost(&sb, File::Old, ONE_RULE);
    sb.proxy_control(json!({"plan": [], "then": "pass"}));
    let r = run_fault(&sb, 30, &[]);
    r.assert_code(0);
    nothing_lost(&sb, File::New, ONE_RULE);
    persisted_rules(&sb, 1);
}

/// 50 `run`s at once (a boot script started twice, a retry loop gone wrong): all succeed,
/// exactly one rule, one jump, one intact file, no temp file.
#[test]
fn fifty_concurrent_runs() {
    let sb = setup();
    let children: Vec<_> = (0..50)
        .map(|_| {
            let mut c = sb.cmd();
            c.args(run_args(&sb, 90, &["--output", "json"]))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let mut firewall_changed = 0;
    for c in children {
        let o = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        firewall_changed += usize::from(v["steps"][1]["changed"] == true);
    }
    assert_eq!(firewall_changed, 1, "exactly one run adds the rule");
    let rules = sb.rules(IPT);
    assert_eq!(
        rules
            .lines()
            .filter(|l| *l == "-A FORWARD -j DOCKER-USER")
            .count(),
        1,
        "{rules}"
    );
    nothing_lost(&sb, File::New, ONE_RULE);
    persisted_rules(&sb, 1);
    assert!(temp_files(sb.persist_file().parent().unwrap()).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Usage and settings faults: refused before anything is touched
// ---------------------------------------------------------------------------------------------

#[test]
fn usage_bad_source_url() {
    let sb = setup();
    let r = run_moto(&sb, 30, &["--source", "https://example.com/ecs.config"]);
    r.assert_code(2).assert_contains("s3://");
    nothing_lost(&sb, File::Old, NO_RULE);
}

#[test]
fn settings_file_malformed() {
    let sb = setup();
    let settings = sb.root.path().join("etc/ecs-bootstrap/env");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    std::fs::write(
        &settings,
        "ECS_BOOTSTRAP_DEADLINE=30\nthis line is not a setting\n",
    )
    .unwrap();
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(2)
        .assert_contains(settings.to_str().unwrap())
        .assert_contains("fix the line or remove it");
    nothing_lost(&sb, File::Old, NO_RULE);
}

// ---------------------------------------------------------------------------------------------
// Settings: no setting makes a boot worse than doing nothing
// ---------------------------------------------------------------------------------------------

/// Writes the settings file (root-owned, 0600 unless `mode` says otherwise).
fn settings(sb: &Sandbox, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = sb.root.path().join("etc/ecs-bootstrap/env");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// The docker.service drop-in's command line, as shipped (`ExecStartPost=/usr/bin/ecs-bootstrap
/// ARGS`): the test runs exactly these arguments.
fn drop_in_args() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo().join("systemd/docker.service.d/10-ecs-bootstrap.conf"))
            .unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPost="))
        .expect("the drop-in has an ExecStartPost");
    let mut words = line.trim_start_matches(['-', '+', '!']).split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/ecs-bootstrap"), "{line}");
    words.map(str::to_owned).collect()
}

/// Booleans take the usual spellings (`QUIET=1`), and a bad value of a setting the command does
/// not use only warns: fetch-config ignores a bad `CHAIN`, and the docker drop-in's block-imds
/// a bad `MAX_SIZE`. A bad value that block-imds uses (`CHAIN`) falls back to the
/// built-in default, said as an error, and the block is asserted (exit 0): docker.service fails
/// only when the block cannot be asserted (control: no iptables, exit 4).
#[test]
// Long because one table of settings cases against one sandbox, each with its control.
#[allow(clippy::too_many_lines)]
fn settings_bad_values_never_stop_a_command_that_does_not_need_them() {
    let sb = setup();
    let secretish = "Zm9vYmFyLXNlY3JldA";
    let path = settings(
        &sb,
        &format!(
            "ECS_BOOTSTRAP_QUIET=1\nECS_BOOTSTRAP_CHAIN=bogus-{secretish}\nECS_BOOTSTRAP_SOURCE={}\n\
             ECS_BOOTSTRAP_SHA256=nothex\n",
            sb.source()
        ),
        0o600,
    );
    // fetch-config: quiet (no info lines), CHAIN warned about, SHA256 used and bad: exit 2.
    let r = sb.run(&["fetch-config"]);
    r.assert_code(2)
        .assert_contains("ECS_BOOTSTRAP_SHA256")
        .assert_contains("--sha256 must be 64 hexadecimal digits");
    assert!(!r.all().contains("nothex"), "{}", r.all());
    // Without the bad SHA256 it runs, quietly, and warns about CHAIN with its line.
    settings(
        &sb,
        &format!(
            "ECS_BOOTSTRAP_QUIET=yes\nECS_BOOTSTRAP_CHAIN=bogus-{secretish}\nECS_BOOTSTRAP_SOURCE={}\n",
            sb.source()
        ),
        0o600,
    );
    let r = sb.run(&["fetch-config"]);
    r.assert_code(0)
        .assert_contains(&format!(
            "ECS_BOOTSTRAP_CHAIN on line 2 of {}",
            path.display()
        ))
        .assert_contains("`fetch-config` does not use it");
    assert!(!r.stderr.contains("INFO"), "quiet: {}", r.stderr);
    assert!(!r.all().contains(secretish), "{}", r.all());
    assert_eq!(
        std::fs::read_to_string(sb.dest()).unwrap(),
        sb.s("object_content")
    );

    // The drop-in's block-imds with a bad CHAIN and QUIET, and a bad MAX_SIZE (not its flag).
    settings(
        &sb,
        &format!(
            "ECS_BOOTSTRAP_QUIET=maybe\nECS_BOOTSTRAP_CHAIN=bogus-{secretish}\nECS_BOOTSTRAP_MAX_SIZE=lots\n\
             ECS_BOOTSTRAP_IPV6=off\n"
        ),
        0o600,
    );
    let args = drop_in_args();
    let r = Sandbox::run_cmd({
        let mut c = sb.cmd();
        c.args(&args);
        c
    });
    r.assert_code(0)
        .assert_contains("ECS_BOOTSTRAP_CHAIN on line 2")
        .assert_contains("block-imds uses the built-in default instead")
        .assert_contains("ECS_BOOTSTRAP_QUIET on line 1")
        .assert_contains("not a boolean")
        .assert_contains("ECS_BOOTSTRAP_MAX_SIZE on line 3")
        .assert_contains("`block-imds` does not use it");
    assert!(r.stderr.contains(" ERROR "), "{}", r.stderr);
    assert!(!r.all().contains(secretish), "{}", r.all());
    assert_eq!(sb.drop_rules(IPT), 1, "the block is asserted");
    assert!(!sb.reaches_imds(Ns::Ctr, false));
    // A value that passes the flag's syntax but not the step's check (an interface pattern
    // iptables cannot take): the whole command falls back to the built-in defaults.
    settings(
        &sb,
        "ECS_BOOTSTRAP_INTERFACE=docker+,bad/name\nECS_BOOTSTRAP_IPV6=off\n",
        0o600,
    );
    let r = Sandbox::run_cmd({
        let mut c = sb.cmd();
        c.args(&args);
        c
    });
    r.assert_code(0)
        .assert_contains("--interface is ECS_BOOTSTRAP_INTERFACE on line 1")
        .assert_contains("block-imds uses the built-in defaults instead");
    assert_eq!(sb.drop_rules(IPT), 1, "the block is asserted");
    // Control: where the block cannot be asserted (iptables missing), the drop-in fails.
    let r = Sandbox::run_cmd({
        let mut c = sb.cmd();
        c.args(&args).args(["--iptables", "/nonexistent/iptables"]);
        c
    });
    r.assert_code(4);
}

/// A bad setting that the command uses fails it (exit 2) naming the line and the reason, never
/// the value; the same setting is only a warning when the command line overrides it.
#[test]
fn settings_bad_used_value_fails_unless_the_command_line_overrides_it() {
    let sb = setup();
    let path = settings(
        &sb,
        "# deadline\nECS_BOOTSTRAP_DEADLINE=s3kr1t-ish\n",
        0o600,
    );
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(0)
        .assert_contains(&format!(
            "ECS_BOOTSTRAP_DEADLINE on line 2 of {}",
            path.display()
        ))
        .assert_contains("the command line sets it");
    assert!(!r.all().contains("s3kr1t"), "{}", r.all());
    nothing_lost(&sb, File::New, ONE_RULE);
    std::fs::write(sb.dest(), OLD).unwrap();
    let r = sb.run(&["check-imds"]);
    r.assert_code(2)
        .assert_contains("ECS_BOOTSTRAP_DEADLINE on line 2")
        .assert_contains("not a value --deadline accepts")
        .assert_contains("fix or remove the setting");
    assert!(!r.all().contains("s3kr1t"), "{}", r.all());
    // The environment variable beats the file: no complaint about the file then.
    let r = Sandbox::run_cmd({
        let mut c = sb.cmd();
        c.env("ECS_BOOTSTRAP_DEADLINE", "20").arg("check-imds");
        c
    });
    r.assert_code(0);
}

/// Every `ECS_BOOTSTRAP_SET` line applies, in order, also when systemd's EnvironmentFile= has
/// put the last one in the environment; another duplicate warns and names both lines.
#[test]
fn settings_all_set_lines_apply_and_duplicates_warn() {
    let sb = setup();
    let path = settings(
        &sb,
        &format!(
            "ECS_BOOTSTRAP_SOURCE={}\nECS_BOOTSTRAP_SET=ECS_CLUSTER=from-settings\n\
             ECS_BOOTSTRAP_SET=ECS_RESERVED_MEMORY=256\nECS_BOOTSTRAP_DEADLINE=60\nECS_BOOTSTRAP_DEADLINE=30\n",
            sb.source()
        ),
        0o600,
    );
    let r = Sandbox::run_cmd({
        let mut c = sb.cmd();
        // What systemd's EnvironmentFile= makes of the file: the last line of each name.
        c.env("ECS_BOOTSTRAP_SET", "ECS_RESERVED_MEMORY=256")
            .env("ECS_BOOTSTRAP_DEADLINE", "30")
            .env("ECS_BOOTSTRAP_SOURCE", sb.source())
            .arg("fetch-config");
        c
    });
    r.assert_code(0).assert_contains(&format!(
        "settings file {} line 5: ECS_BOOTSTRAP_DEADLINE is also set on line 4",
        path.display()
    ));
    let written = std::fs::read_to_string(sb.dest()).unwrap();
    assert!(written.contains("ECS_CLUSTER=from-settings\n"), "{written}");
    assert!(written.contains("ECS_RESERVED_MEMORY=256\n"), "{written}");
    assert!(
        !r.all().contains("SET lines"),
        "no warning about SET: {}",
        r.all()
    );
}

/// A settings line that cannot be read (a wrapped base64 secret) is named by its number and
/// reason, never echoed: the config step refuses (exit 2, old file kept); block-imds warns and
/// asserts the block.
#[test]
fn settings_unreadable_line_is_named_not_echoed() {
    let sb = setup();
    let secret = "dXNlcjpodW50ZXIyLXBhc3N3b3JkLWxvbmc";
    settings(
        &sb,
        &format!(
            "ECS_BOOTSTRAP_SOURCE={}\nECS_BOOTSTRAP_SET=ECS_ENGINE_AUTH_DATA={{\"auth\":\n  \"{secret}==\"}}\n",
            sb.source()
        ),
        0o600,
    );
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(2)
        .assert_contains("line 3: the text before `=` is not a variable name")
        .assert_contains("fix the line or remove it");
    assert!(!r.all().contains(secret), "{}", r.all());
    nothing_lost(&sb, File::Old, NO_RULE);
    let r = sb.run(&["block-imds", "--ipv6", "off", "--persist", "none"]);
    r.assert_code(0).assert_contains("line 3:");
    assert!(!r.all().contains(secret), "{}", r.all());
    assert_eq!(sb.drop_rules(IPT), 1);
}

/// An untrusted settings file read by systemd's own rules: a line ending in a backslash is
/// joined with the next by `EnvironmentFile=`, so the value systemd passes on is not the one our
/// parser reads from the file. It is ignored all the same (the name occurs in the file), and the
/// program it names never runs. Likewise for a file that is not UTF-8 text, whose message names
/// the line rather than a chmod that would not fix it.
#[test]
fn settings_file_untrusted_read_by_systemds_rules() {
    let sb = setup();
    let marker = sb.root.path().join("evil-ran");
    let evil = sb.root.path().join("evil.sh");
    std::fs::write(
        &evil,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let evil_s = evil.to_str().unwrap();
    let (head, tail) = evil_s.split_at(evil_s.len() - 3);
    // What systemd makes of the continued line is the whole path; our parser sees `head\`.
    let text = format!("ECS_BOOTSTRAP_IPTABLES={head}\\\n{tail}\n");
    settings(&sb, &text, 0o666);
    let r = Sandbox::run_cmd({
        let mut c = sb.cmd();
        c.env("ECS_BOOTSTRAP_IPTABLES", evil_s)
            .args(drop_in_args())
            .args(["--ipv6", "off"]);
        c
    });
    r.assert_code(0)
        .assert_contains("ECS_BOOTSTRAP_IPTABLES in the environment is ignored")
        .assert_contains("is not trusted");
    assert!(!marker.exists(), "the untrusted file's program ran");
    assert!(sb.rules(IPT).contains("-i docker+"), "{}", sb.rules(IPT));
    assert!(!sb.reaches_imds(Ns::Ctr, false));

    // Not UTF-8 text (root's, 0600): untrusted, and the fix names the line, not a chmod.
    let mut bytes =
        b"ECS_BOOTSTRAP_CHAIN=DOCKER-USER\nECS_BOOTSTRAP_INTERFACE=dock\xffer+\n".to_vec();
    bytes.extend_from_slice(format!("ECS_BOOTSTRAP_SOURCE={}\n", sb.source()).as_bytes());
    let p = settings(&sb, "", 0o600);
    std::fs::write(&p, &bytes).unwrap();
    let r = sb.run(&["fetch-config"]);
    r.assert_code(2)
        .assert_contains("it is not UTF-8 text (line 2)")
        .assert_contains("rewrite line 2");
    assert!(!r.stderr.contains("chmod 600"), "{}", r.stderr);
    nothing_lost(&sb, File::Old, ONE_RULE);
}

/// A settings file that others may write (or that root does not own) names programs that run
/// as root: the config step refuses it (exit 2, what to run, old file kept), block-imds ignores
/// it, also its values that systemd passed on as environment, and asserts the built-in block
/// (docker+), saying so as an error. The file's --iptables program is never run.
#[test]
fn settings_file_untrusted() {
    let sb = setup();
    let marker = sb.root.path().join("evil-ran");
    let evil = sb.root.path().join("evil.sh");
    std::fs::write(
        &evil,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let text = format!(
        "ECS_BOOTSTRAP_SOURCE={}\nECS_BOOTSTRAP_IPTABLES={}\nECS_BOOTSTRAP_INTERFACE=nothing0\n",
        sb.source(),
        evil.display()
    );
    let path = settings(&sb, &text, 0o666);
    let r = sb.run(&["fetch-config"]);
    r.assert_code(2)
        .assert_contains("is not trusted: group or others may write it (mode 0666)")
        .assert_contains(&format!("chmod 600 {}", path.display()));
    nothing_lost(&sb, File::Old, NO_RULE);
    let r = Sandbox::run_cmd({
        let mut c = sb.cmd();
        c.env("ECS_BOOTSTRAP_IPTABLES", evil.to_str().unwrap())
            .env("ECS_BOOTSTRAP_INTERFACE", "nothing0")
            .args(drop_in_args())
            .args(["--ipv6", "off"]);
        c
    });
    r.assert_code(0)
        .assert_contains("is not trusted")
        .assert_contains("the built-in defaults");
    assert!(r.stderr.contains(" ERROR "), "{}", r.stderr);
    assert!(!marker.exists(), "the untrusted file's program ran");
    assert!(sb.rules(IPT).contains("-i docker+"), "{}", sb.rules(IPT));
    assert!(!sb.reaches_imds(Ns::Ctr, false));
    // Not owned by root: the same.
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    settings(&sb, &text, 0o600);
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    sb.run(&["fetch-config"])
        .assert_code(2)
        .assert_contains("owned by uid 65534, not root");
    // A folder others may write: they could replace the file.
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = path.parent().unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        sb.run(&["fetch-config"])
            .assert_code(2)
            .assert_contains("its folder")
            .assert_contains("group or others may write it (mode 0777)");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Control: the same file, root's and 0600, is used.
    settings(
        &sb,
        &format!("ECS_BOOTSTRAP_SOURCE={}\n", sb.source()),
        0o600,
    );
    sb.run(&["fetch-config"]).assert_code(0);
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// No credential in any output at any verbosity: `-vv` in text and JSON, with
/// `LOG_SENSITIVE_BODIES=true` (which the SDK's own log line suggests), on a run that succeeds,
/// one whose token is invalidated mid-run (a second token) and one S3 refuses. The IMDS
/// session tokens (from the emulator's log), the role's key id, secret key and session token
/// must not show; a control proves that -vv does log the SDK's requests.
#[test]
fn no_credential_in_logs_at_any_verbosity() {
    let sb = setup();
    let creds = &sb.state["role_credentials"];
    let mut secrets: Vec<String> = ["access_key_id", "secret_access_key", "session_token"]
        .iter()
        .map(|k| creds[k].as_str().unwrap().to_owned())
        .collect();
    let mut outputs = Vec::new();
    for (fmt, knobs, extra) in [
        ("text", json!({}), vec![]),
        ("json", json!({}), vec![]),
        ("text", json!({"token_401_after": 2}), vec![]),
        (
            "text",
            json!({}),
            vec![
                "--source".to_owned(),
                format!("s3://{}/{}", sb.s("bucket"), sb.s("forbidden_key")),
            ],
        ),
    ] {
        sb.imds_control(knobs);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut c = sb.cmd();
        c.env("LOG_SENSITIVE_BODIES", "true")
            .args(run_args(&sb, 30, &extra))
            .args(["-vv", "--log-format", fmt]);
        let r = Sandbox::run_cmd(c);
        assert!(r.code == Some(0) || r.code == Some(3), "{}", r.all());
        assert!(
            r.stderr.contains("LOG_SENSITIVE_BODIES is set and ignored"),
            "{}",
            r.stderr
        );
        outputs.push(r.all());
    }
    for rec in sb.imds_requests() {
        if let Some(t) = rec["issued"].as_str() {
            secrets.push(t.to_owned());
        }
    }
    assert!(secrets.len() >= 3 + 5, "tokens issued: {secrets:?}");
    let all = outputs.join("\n");
    // Control: -vv shows the SDK's own lines (so the absence below means something).
    assert!(
        all.contains("entering 'transmit' phase") && all.contains("GetObject"),
        "no SDK debug lines at -vv:\n{all}"
    );
    for s in &secrets {
        assert!(
            !all.contains(s.as_str()),
            "a credential leaked ({s}):\n{all}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ecs.config never regresses; keys others wrote
// ---------------------------------------------------------------------------------------------

/// The ecs.service drop-in's guard (its ExecStartPre shell script), with /etc/ under the test's
/// root; returns the run. The script must hold no `$` or `%` (systemd would expand them).
fn first_boot_guard(sb: &Sandbox) -> Run {
    let text = std::fs::read_to_string(
        repo().join("systemd/ecs.service.d/20-ecs-bootstrap-first-boot.conf"),
    )
    .unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=/bin/sh -c '"))
        .expect("the drop-in runs a shell test in ExecStartPre");
    let script = line.strip_suffix('\'').expect("one quoted script");
    assert!(!script.contains(['$', '%', '\'']), "{script}");
    let root = sb.root.path().display().to_string();
    let script = script.replace("/etc/", &format!("{root}/etc/"));
    Sandbox::run_cmd({
        let mut c = std::process::Command::new("sh");
        c.args(["-c", &script]);
        c
    })
}

/// An empty (0-byte) or comment-only object is refused: exit 3, the old ecs.config
/// byte-identical, the reason and `--allow-empty` named. With `--allow-empty` it is written.
#[test]
fn s3_empty_object_keeps_the_old_config() {
    let sb = setup();
    for body in ["", "# ecs.config\n\n; nothing here\n"] {
        sb.proxy_control(json!({"plan": [], "then": {"body": body, "keep_headers": false}}));
        let r = run_fault(&sb, 30, &[]);
        r.assert_code(3)
            .assert_contains("the source has no settings")
            .assert_contains("--allow-empty")
            .assert_contains("keeps its previous content");
        nothing_lost(&sb, File::Old, ONE_RULE);
    }
    // Control: a good run (ecs-bootstrap's own file now), then an empty object it is told to
    // accept: every key it wrote goes.
    sb.proxy_control(json!({"plan": [], "then": "pass"}));
    run_fault(&sb, 30, &[]).assert_code(0);
    sb.proxy_control(json!({"plan": [], "then": {"body": "", "keep_headers": false}}));
    let r = run_fault(&sb, 30, &["--allow-empty"]);
    r.assert_code(0).assert_contains("(--allow-empty)");
    assert_eq!(std::fs::read_to_string(sb.dest()).unwrap(), "");
}

/// First boot, the fetch fails: no ecs.config, and the ecs.service drop-in keeps the agent from
/// starting with its defaults. It starts once ecs-bootstrap wrote ecs.config (and keeps
/// starting with that file after later failed fetches), when user data wrote an ECS_CLUSTER,
/// or when the operator allows it.
#[test]
fn first_boot_failed_fetch_keeps_the_agent_from_starting() {
    let sb = setup();
    std::fs::remove_dir_all(sb.dest().parent().unwrap()).unwrap();
    sb.proxy_control(json!({"plan": [], "then":
        {"status": 404, "code": "NoSuchKey", "message": "The specified key does not exist."}}));
    run_fault(&sb, 30, &[]).assert_code(3);
    assert!(!sb.dest().exists());
    let g = first_boot_guard(&sb);
    g.assert_code(1)
        .assert_contains("not starting the ECS agent")
        .assert_contains("allow-agent-defaults");
    // User data wrote the cluster: the agent may start.
    std::fs::create_dir_all(sb.dest().parent().unwrap()).unwrap();
    std::fs::write(sb.dest(), "ECS_CLUSTER=from-user-data\n").unwrap();
    first_boot_guard(&sb).assert_code(0);
    std::fs::write(sb.dest(), "ECS_LOGLEVEL=debug\nECS_CLUSTER=\n").unwrap();
    first_boot_guard(&sb).assert_code(1);
    std::fs::remove_file(sb.dest()).unwrap();
    // The operator's override.
    let allow = sb
        .root
        .path()
        .join("etc/ecs-bootstrap/allow-agent-defaults");
    std::fs::create_dir_all(allow.parent().unwrap()).unwrap();
    std::fs::write(&allow, "").unwrap();
    first_boot_guard(&sb).assert_code(0);
    std::fs::remove_file(&allow).unwrap();
    first_boot_guard(&sb).assert_code(1);
    // A good fetch; then a failed one: the last good file stays and the agent starts.
    sb.proxy_control(json!({"plan": [], "then": "pass"}));
    run_fault(&sb, 30, &[]).assert_code(0);
    sb.proxy_control(json!({"plan": [], "then":
        {"status": 404, "code": "NoSuchKey", "message": "The specified key does not exist."}}));
    run_fault(&sb, 30, &[]).assert_code(3);
    assert_eq!(
        std::fs::read_to_string(sb.dest()).unwrap(),
        sb.s("object_content")
    );
    first_boot_guard(&sb).assert_code(0);
}

/// Keys that user data appended to ecs.config (`echo KEY=V >> /etc/ecs/ecs.config`) are never
/// dropped without a word: kept when the object does not set them (named once), replaced by the
/// object's value when it does (named every time); a key ecs-bootstrap wrote and the object no
/// longer sets goes; a key of ours edited by hand since counts as local. The sidecar records
/// which is which, without values.
#[test]
fn keys_others_wrote_are_kept_or_named() {
    let sb = setup();
    let secret = "bG9jYWwtc2VjcmV0LXZhbHVl";
    std::fs::write(
        sb.dest(),
        format!(
            "ECS_CLUSTER=from-user-data\nECS_ENABLE_SPOT_INSTANCE_DRAINING=true\nECS_ENGINE_AUTH_DATA={secret}\n\
             {secret}-wrapped\n"
        ),
    )
    .unwrap();
    let object = sb.s("object_content");
    let r = run_moto(&sb, 30, &["--output", "json"]);
    r.assert_code(0)
        .assert_contains(
            "ECS_ENABLE_SPOT_INSTANCE_DRAINING, ECS_ENGINE_AUTH_DATA kept from the existing",
        )
        .assert_contains("ECS_CLUSTER in the existing")
        .assert_contains("replaced by the value from the object")
        .assert_contains("line(s) 4 of the existing");
    assert!(!r.all().contains(secret) && !r.all().contains("from-user-data"));
    let expect =
        format!("{object}ECS_ENABLE_SPOT_INSTANCE_DRAINING=true\nECS_ENGINE_AUTH_DATA={secret}\n");
    assert_eq!(std::fs::read_to_string(sb.dest()).unwrap(), expect);
    let side = sb.root.path().join("etc/ecs/ecs.config.ecs-bootstrap");
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
    assert_eq!(rec["keys"]["ECS_ENGINE_AUTH_DATA"]["from"], "local");
    assert_eq!(rec["keys"]["ECS_CLUSTER"]["from"], "object");
    assert!(!std::fs::read_to_string(&side).unwrap().contains(secret));
    assert_eq!(mode(&side), 0o600);
    // The next boot: the same file, nothing new to say.
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(0);
    assert!(!r.all().contains("kept from the existing"), "{}", r.all());
    assert_eq!(std::fs::read_to_string(sb.dest()).unwrap(), expect);
    // The object drops ECS_LOGLEVEL (ours: it goes), and someone edited
    // ECS_ENABLE_TASK_IAM_ROLE by hand (local now; the object still sets it: replaced, named).
    let text = std::fs::read_to_string(sb.dest()).unwrap().replace(
        "ECS_ENABLE_TASK_IAM_ROLE=true",
        "ECS_ENABLE_TASK_IAM_ROLE=false",
    );
    std::fs::write(sb.dest(), text).unwrap();
    sb.put(
        &sb.s("key"),
        b"ECS_CLUSTER=sandbox\nECS_ENABLE_TASK_IAM_ROLE=true\n",
    );
    let r = run_moto(&sb, 30, &[]);
    r.assert_code(0)
        .assert_contains("removed: ECS_LOGLEVEL")
        .assert_contains("ECS_ENABLE_TASK_IAM_ROLE in the existing");
    assert_eq!(
        std::fs::read_to_string(sb.dest()).unwrap(),
        format!(
            "ECS_CLUSTER=sandbox\nECS_ENABLE_TASK_IAM_ROLE=true\nECS_ENABLE_SPOT_INSTANCE_DRAINING=true\n\
             ECS_ENGINE_AUTH_DATA={secret}\n"
        )
    );
    // A kept local value that the two readers of ecs.config read differently is named too.
    let mut text = std::fs::read_to_string(sb.dest()).unwrap();
    text.push_str("ECS_AWSVPC_BLOCK_IMDS=\"true\n");
    std::fs::write(sb.dest(), text).unwrap();
    run_moto(&sb, 30, &[])
        .assert_code(0)
        .assert_contains("kept local key ECS_AWSVPC_BLOCK_IMDS: the value of ECS_AWSVPC_BLOCK_IMDS starts with a quote");
}

// ---------------------------------------------------------------------------------------------
// Retries: bounded by the deadline; skew, token refresh, late instance profile, slow IMDS
// ---------------------------------------------------------------------------------------------

/// A network that comes up late: 10 connections reset in a row (more than a small fixed count
/// of attempts would allow), then S3 answers; the deadline, not a count, bounds the retries.
#[test]
fn s3_network_late_is_retried_until_the_deadline() {
    let sb = setup();
    let plan: Vec<serde_json::Value> = (0..10).map(|_| json!("reset")).collect();
    sb.proxy_control(json!({"plan": plan, "then": "pass"}));
    let r = run_fault(&sb, 90, &[]);
    r.assert_code(0).assert_contains("written from");
    assert_eq!(r.fetch_attempts_failed(), 10, "{}", r.stderr);
    // Backoff is capped: no wait above 5 s.
    for l in r.stderr.lines().filter(|l| l.contains("next_delay_ms")) {
        let ms: u64 = l
            .split("next_delay_ms=")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{l}"));
        assert!(ms <= 5000, "{l}");
    }
    nothing_lost(&sb, File::New, ONE_RULE);
}

/// S3's clock is an hour ahead of ours: RequestTimeTooSkewed (with S3's Date), then the request
/// is signed with S3's time and passes.
#[test]
fn s3_request_time_too_skewed_is_retried_with_the_server_clock() {
    let sb = setup();
    sb.proxy_control(json!({"plan": [], "then": {"skew_seconds": 3600}}));
    let before = sb.proxy_requests().len();
    let r = run_fault(&sb, 30, &[]);
    r.assert_code(0)
        .assert_contains("RequestTimeTooSkewed")
        .assert_contains("s behind S3's")
        .assert_contains("written from");
    let reqs = sb.proxy_requests();
    let reqs = &reqs[before..];
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0]["status"], 403);
    assert_eq!(reqs[1]["upstream_status"], 200);
    nothing_lost(&sb, File::New, ONE_RULE);
}

/// TokenRefreshRequired: new credentials from the instance role, then success.
#[test]
fn s3_token_refresh_required_gets_new_credentials() {
    let sb = setup();
    sb.proxy_control(
        json!({"plan": [{"status": 400, "code": "TokenRefreshRequired",
        "message": "The provided token must be refreshed."}], "then": "pass"}),
    );
    let r = run_fault(&sb, 30, &[]);
    r.assert_code(0)
        .assert_contains("TokenRefreshRequired")
        .assert_contains("written from");
    let role = sb.s("role_name");
    let creds_gets = sb
        .imds_requests()
        .iter()
        .filter(|q| q["path"] == format!("/latest/meta-data/iam/security-credentials/{role}"))
        .count();
    assert_eq!(creds_gets, 2, "the credentials were fetched again");
    nothing_lost(&sb, File::New, ONE_RULE);
}

/// The instance profile is associated 4 s after boot: iam/ is 404 until then; the run waits
/// (a bounded grace, said in one line) and succeeds, the check included.
#[test]
fn imds_instance_profile_associated_late() {
    let sb = setup();
    let from = now_epoch_f64() + 4.0;
    sb.imds_control(json!({"profile_from": from}));
    let (r, took) = timed(|| run_moto(&sb, 60, &[]));
    r.assert_code(0)
        .assert_contains("no instance profile yet")
        .assert_contains("written from");
    assert!(took >= Duration::from_millis(3500), "took {took:?}");
    nothing_lost(&sb, File::New, ONE_RULE);
}

/// IMDS accepts connections but answers after 3 s (above the 2 s read limit): "too slow", not
/// "unreachable" (exit 3, not 7).
#[test]
fn imds_too_slow_is_not_unreachable() {
    let sb = setup();
    sb.imds_control(json!({"delay_ms": 3000}));
    let (r, took) = timed(|| run_moto(&sb, 8, &[]));
    assert!(took < Duration::from_secs(12));
    r.assert_code(3).assert_contains("too slow");
    assert!(
        !r.all().contains("cannot reach instance metadata"),
        "{}",
        r.all()
    );
    nothing_lost(&sb, File::Old, ONE_RULE);
}

// ---------------------------------------------------------------------------------------------
// Endpoints and access-denied diagnosis
// ---------------------------------------------------------------------------------------------

/// The S3 endpoint the client resolves, seen where it must go: through `HTTPS_PROXY` (the fault
/// proxy), which logs the host of each CONNECT and refuses it, so nothing leaves the sandbox.
/// FIPS and dual-stack by the standard variables, the aws-cn and aws-us-gov partitions by region,
/// an access point ARN as the source (its own region), with no endpoint override.
#[test]
// Long because one table of endpoint cases behind one proxy, each with the host it must resolve.
#[allow(clippy::too_many_lines)]
fn s3_endpoints_resolve_the_standard_way() {
    let sb = setup();
    let proxy = fault(&sb);
    let bucket = sb.s("bucket");
    let ap = "s3://arn:aws:s3:us-west-2:123456789012:accesspoint/my-ap/ecs.config";
    let ap_gov = "s3://arn:aws-us-gov:s3:us-gov-east-1:123456789012:accesspoint/my-ap/ecs.config";
    let cases: Vec<(&str, &str, &str, String, String)> = vec![
        (
            "us-east-1",
            "",
            "",
            sb.source(),
            format!("{bucket}.s3.us-east-1.amazonaws.com:443"),
        ),
        (
            "us-east-1",
            "true",
            "",
            sb.source(),
            format!("{bucket}.s3-fips.us-east-1.amazonaws.com:443"),
        ),
        (
            "us-east-1",
            "",
            "true",
            sb.source(),
            format!("{bucket}.s3.dualstack.us-east-1.amazonaws.com:443"),
        ),
        (
            "us-gov-west-1",
            "true",
            "true",
            sb.source(),
            format!("{bucket}.s3-fips.dualstack.us-gov-west-1.amazonaws.com:443"),
        ),
        (
            "cn-north-1",
            "",
            "",
            sb.source(),
            format!("{bucket}.s3.cn-north-1.amazonaws.com.cn:443"),
        ),
        (
            "us-east-1",
            "",
            "",
            ap.to_owned(),
            "my-ap-123456789012.s3-accesspoint.us-west-2.amazonaws.com:443".to_owned(),
        ),
        (
            "us-east-1",
            "true",
            "",
            ap.to_owned(),
            "my-ap-123456789012.s3-accesspoint-fips.us-west-2.amazonaws.com:443".to_owned(),
        ),
        (
            "us-gov-east-1",
            "",
            "",
            ap_gov.to_owned(),
            "my-ap-123456789012.s3-accesspoint.us-gov-east-1.amazonaws.com:443".to_owned(),
        ),
    ];
    for (region, fips, dual, source, want) in cases {
        let before = sb.proxy_requests().len();
        let mut c = sb.cmd();
        c.env_remove("AWS_ENDPOINT_URL_S3")
            .env("HTTPS_PROXY", &proxy)
            .env("AWS_REGION", region)
            .args(["fetch-config", "--source", &source, "--deadline", "3"]);
        if !fips.is_empty() {
            c.env("AWS_USE_FIPS_ENDPOINT", fips);
        }
        if !dual.is_empty() {
            c.env("AWS_USE_DUALSTACK_ENDPOINT", dual);
        }
        let r = Sandbox::run_cmd(c);
        r.assert_code(3);
        let reqs = sb.proxy_requests();
        let connects: Vec<&str> = reqs[before..]
            .iter()
            .filter(|q| q["method"] == "CONNECT")
            .map(|q| q["path"].as_str().unwrap())
            .collect();
        assert!(
            !connects.is_empty(),
            "{region} {fips} {dual} {source}: no CONNECT\n{}",
            r.all()
        );
        assert!(
            connects.iter().all(|h| *h == want),
            "{region} fips={fips} dualstack={dual} {source}: {connects:?}, want {want}"
        );
    }
    nothing_lost(&sb, File::Old, NO_RULE);
}

/// GetObject denied on an SSE-KMS object: the HEAD that GetObject's permission allows names the
/// KMS key, and the message says the role needs kms:Decrypt on it. Control: the same denial on
/// an object without KMS gives the plain access-denied message.
#[test]
fn s3_403_on_a_kms_object_names_the_key() {
    let sb = setup();
    let put = sb.put_with(&sb.s("key"), sb.s("object_content").as_bytes(), &["--kms"]);
    let key_arn = put["kms_key_arn"].as_str().unwrap().to_owned();
    assert!(key_arn.starts_with("arn:aws:kms:"), "{put}");
    let denied = json!({"status": 403, "code": "AccessDenied", "message": "Access Denied"});
    sb.proxy_control(json!({"plan": [denied], "then": "pass"}));
    let before = sb.proxy_requests().len();
    let r = run_fault(&sb, 30, &[]);
    let methods: Vec<String> = sb.proxy_requests()[before..]
        .iter()
        .map(|q| q["method"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        methods,
        ["GET", "HEAD"],
        "one GET, then the HEAD that shows the key"
    );
    r.assert_code(3)
        .assert_contains(&format!("encrypted with the KMS key {key_arn}"))
        .assert_contains("needs kms:Decrypt on that key")
        .assert_contains(&format!("iam-policy --kms-key {key_arn}"));
    nothing_lost(&sb, File::Old, ONE_RULE);
    // Control: no KMS on the object.
    sb.put(&sb.s("key"), sb.s("object_content").as_bytes());
    sb.proxy_control(json!({"plan": [denied], "then": "pass"}));
    let r = run_fault(&sb, 30, &[]);
    r.assert_code(3).assert_contains(
        "the instance role needs s3:GetObject on arn:aws:s3:::ecs-bootstrap-sandbox/ecs.config",
    );
    assert!(!r.all().contains("kms:Decrypt on that key"), "{}", r.all());
}

/// Credentials IMDS serves but the SDK cannot use (an expiry that is not a date, a
/// secret key of the wrong type, a failure code, a key id in the Token field) make the error
/// lines that quote or describe the document: at `-vv`, in text and JSON, none of the role's
/// secret key or session token shows, nor a secret key shorter than the redaction's 16
/// characters.
#[test]
fn no_credential_in_logs_when_the_credentials_document_is_bad() {
    let sb = setup();
    let creds = &sb.state["role_credentials"];
    let secret = creds["secret_access_key"].as_str().unwrap().to_owned();
    let token = creds["session_token"].as_str().unwrap().to_owned();
    let short = "sh0rt/Secret+K3y";
    for (fmt, knobs) in [
        ("text", json!({"credentials": {"Expiration": "not a date"}})),
        ("json", json!({"credentials": {"Expiration": "not a date"}})),
        ("text", json!({"credentials": {"AccessKeyId": 17}})),
        (
            "text",
            json!({"credentials": {"Code": "Failure", "Message": "no"}}),
        ),
        ("text", json!({"credentials": {"SecretAccessKey": short}})),
        (
            "text",
            json!({"credentials": {"Expiration": "2001-01-01T00:00:00Z"}}),
        ),
    ] {
        sb.imds_control(knobs.clone());
        let mut c = sb.cmd();
        c.env("LOG_SENSITIVE_BODIES", "true")
            .args(run_args(&sb, 6, &[]))
            .args(["-vv", "--log-format", fmt]);
        let r = Sandbox::run_cmd(c);
        let all = r.all();
        for s in [secret.as_str(), token.as_str(), short] {
            assert!(
                !all.contains(s),
                "{fmt} {knobs}: a secret leaked ({s}):\n{all}"
            );
        }
    }
}

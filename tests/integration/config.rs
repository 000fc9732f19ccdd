//! The config step end to end: the real binary in the sandbox, against moto with authentication
//! on (through the fault proxy for faults moto cannot produce). Every failure case asserts the
//! exit code, the message, that the previous file is byte-identical and that no temp file is left.

use crate::harness::sandbox::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

const OLD: &str = "ECS_CLUSTER=old\n";

fn fetch(sb: &Sandbox, s3: Option<&str>, extra: &[&str]) -> Run {
    let src = sb.source();
    fetch_src(sb, s3, &src, extra)
}

fn fetch_src(sb: &Sandbox, s3: Option<&str>, src: &str, extra: &[&str]) -> Run {
    let mut args = vec!["fetch-config", "--source", src];
    args.extend(extra);
    sb.run_s3(s3.unwrap_or(&sb.s("s3_endpoint")), &args)
}

#[track_caller]
fn assert_old_intact(sb: &Sandbox) {
    let d = sb.dest();
    assert_eq!(
        std::fs::read_to_string(&d).unwrap(),
        OLD,
        "old file changed"
    );
    assert!(
        temp_files(d.parent().unwrap()).is_empty(),
        "temp files left: {:?}",
        temp_files(d.parent().unwrap())
    );
}

#[test]
fn fetch_writes_validates_owner_sha_version_and_reports_diff() {
    let sb = Sandbox::up();
    let acct = sb.s("account_id");
    let sha = sb.s("object_sha256");
    let r = fetch(
        &sb,
        None,
        &[
            "--expected-bucket-owner",
            &acct,
            "--sha256",
            &sha,
            "--output",
            "json",
        ],
    );
    r.assert_code(0);
    let dest = sb.dest();
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        sb.s("object_content")
    );
    assert_eq!(mode(&dest), 0o600);
    assert_eq!(mode(dest.parent().unwrap()), 0o755);
    let d = &r.json()["steps"][0]["details"];
    assert_eq!(d["file"], "written");
    assert_eq!(d["sha256"], sha.as_str());
    assert_eq!(
        d["added"],
        json!(["ECS_CLUSTER", "ECS_ENABLE_TASK_IAM_ROLE", "ECS_LOGLEVEL"])
    );
    // The sidecar records the object's version and ETag (for `status`), as S3 gave them.
    let side: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dest.with_file_name("ecs.config.ecs-bootstrap")).unwrap(),
    )
    .unwrap();
    assert_eq!(side["version_id"], sb.s("version_id").as_str(), "{side}");
    assert_eq!(side["version_id"], d["version_id"]);
    assert!(side["etag"].as_str().is_some_and(|e| e.len() > 2), "{side}");
    assert_eq!(side["etag"], d["etag"]);

    // Same content again: unchanged, not rewritten.
    let again = fetch(&sb, None, &["--output", "json"]);
    again.assert_code(0);
    assert_eq!(again.json()["steps"][0]["details"]["file"], "unchanged");
    assert_eq!(again.json()["steps"][0]["changed"], false);

    // A new version; the old one stays reachable by versionId (s3:GetObjectVersion).
    let first_version = sb.s("version_id");
    sb.put(
        &sb.s("key"),
        b"# prod\nECS_CLUSTER=prod\n\nECS_LOGLEVEL=info\nECS_RESERVED_MEMORY=256\n",
    );
    let r = fetch(&sb, None, &["--set", "ECS_LOGLEVEL=debug"]);
    r.assert_code(0)
        .assert_contains("added: ECS_RESERVED_MEMORY")
        .assert_contains("changed: ECS_CLUSTER, ECS_LOGLEVEL")
        .assert_contains("removed: ECS_ENABLE_TASK_IAM_ROLE");
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "ECS_CLUSTER=prod\nECS_LOGLEVEL=debug\nECS_RESERVED_MEMORY=256\n",
        "normalised: no comments or blank lines, --set applied"
    );
    let versioned = format!("{}?versionId={first_version}", sb.source());
    fetch_src(&sb, None, &versioned, &[]).assert_code(0);
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        sb.s("object_content")
    );
}

#[test]
// Long because one sandbox for every refusal in turn, each checked against the same old file.
#[allow(clippy::too_many_lines)]
fn refusals_fail_at_once_and_keep_the_old_file() {
    let sb = Sandbox::up();
    sb.write_dest(OLD);
    let fault = sb.s("s3_fault_endpoint");
    let bucket = sb.s("bucket");
    let profile = sb.s("instance_profile_arn");

    // Wrong expected owner: S3 answers 403 AccessDenied. moto does not check
    // ExpectedBucketOwner, so the proxy plays S3's answer; no retry, the message names the check.
    let before = sb.proxy_requests().len();
    sb.proxy_control(
        json!({"plan": [{"status": 403, "code": "AccessDenied", "message": "Access Denied"}],
                            "then": "pass"}),
    );
    let r = fetch(
        &sb,
        Some(&fault),
        &["--expected-bucket-owner", "999999999999"],
    );
    r.assert_code(3)
        .assert_contains("access denied")
        .assert_contains("not owned by account 999999999999")
        .assert_contains("s3:GetObject")
        .assert_contains(&profile);
    // One GET (the HEAD after it looks for a KMS key to name).
    let gets = sb.proxy_requests()[before..]
        .iter()
        .filter(|q| q["method"] == "GET")
        .count();
    assert_eq!(gets, 1, "no retry on 403");
    assert_old_intact(&sb);
    // The right owner passes.
    fetch(
        &sb,
        None,
        &[
            "--expected-bucket-owner",
            &sb.s("account_id"),
            "--sha256",
            &sb.s("object_sha256"),
        ],
    )
    .assert_code(0);
    sb.write_dest(OLD);

    // A key the role's policy does not allow: 403 names bucket, key, action, profile.
    let forbidden = format!("s3://{bucket}/{}", sb.s("forbidden_key"));
    let r = fetch_src(&sb, None, &forbidden, &[]);
    r.assert_code(3)
        .assert_contains(&format!("arn:aws:s3:::{bucket}/other.config"))
        .assert_contains("s3:GetObject")
        .assert_contains(&profile);
    assert_eq!(r.fetch_attempts_failed(), 0, "{}", r.stderr);
    assert_old_intact(&sb);

    // A version that does not exist: 404 (allowed by s3:GetObjectVersion), no retry.
    let bogus = format!("{}?versionId=doesnotexist0000", sb.source());
    let r = fetch_src(&sb, None, &bogus, &[]);
    r.assert_code(3).assert_contains("doesnotexist0000");
    assert_eq!(r.fetch_attempts_failed(), 0, "{}", r.stderr);
    assert_old_intact(&sb);

    // sha256 mismatch: nothing written.
    let r = fetch(&sb, None, &["--sha256", &"0".repeat(64)]);
    r.assert_code(3)
        .assert_contains("SHA-256")
        .assert_contains(&sb.s("object_sha256"));
    assert_old_intact(&sb);

    // Invalid content names the line; an HTML page is called what it is.
    sb.put(&sb.s("key"), b"ECS_CLUSTER=x\nthis is not a setting\n");
    fetch(&sb, None, &[])
        .assert_code(3)
        .assert_contains("line 2: no `=`");
    assert_old_intact(&sb);
    sb.proxy_control(json!({"plan": [], "then": {
        "body": "<html><body>Service Unavailable</body></html>\n", "status": 200,
        "content_type": "text/html", "keep_headers": false}}));
    fetch(&sb, Some(&fault), &[])
        .assert_code(3)
        .assert_contains("looks like HTML");
    assert_old_intact(&sb);
    sb.proxy_control(json!({"plan": [], "then": "pass"}));

    // --strict turns an unknown key into an error.
    sb.put(&sb.s("key"), b"ECS_CLUSTR=x\n");
    fetch(&sb, None, &[])
        .assert_code(0)
        .assert_contains("did you mean ECS_CLUSTER?");
    std::fs::write(sb.dest(), OLD).unwrap();
    fetch(&sb, None, &["--strict"])
        .assert_code(3)
        .assert_contains("did you mean ECS_CLUSTER?");
    assert_old_intact(&sb);

    // A malformed --set is a usage error.
    fetch(&sb, None, &["--set", "no-equals"])
        .assert_code(2)
        .assert_contains("KEY=VALUE");

    // A symlinked destination is refused; its target is untouched.
    let target = sb.root.path().join("elsewhere");
    std::fs::write(&target, "KEEP=1\n").unwrap();
    let link = sb.root.path().join("link.config");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    sb.put(&sb.s("key"), sb.s("object_content").as_bytes());
    fetch(&sb, None, &["--dest", link.to_str().unwrap()])
        .assert_code(3)
        .assert_contains("symbolic link");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "KEEP=1\n");
}

#[test]
fn transient_faults_are_retried_within_the_deadline() {
    let sb = Sandbox::up();
    sb.write_dest(OLD);
    let fault = sb.s("s3_fault_endpoint");

    // A 5xx burst, a reset and a truncated body, then success.
    sb.proxy_control(json!({"plan": [
        {"status": 503, "code": "SlowDown", "message": "Please reduce your request rate."},
        {"status": 500, "code": "InternalError", "message": "We encountered an internal error."},
        "reset",
        {"truncate": 5},
    ], "then": "pass"}));
    let r = fetch(&sb, Some(&fault), &[]);
    r.assert_code(0)
        .assert_contains("SlowDown")
        .assert_contains("InternalError")
        .assert_contains("next_delay_ms");
    assert_eq!(
        r.fetch_attempts_failed(),
        4,
        "one line per failed attempt:\n{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(sb.dest()).unwrap(),
        sb.s("object_content")
    );

    // A bucket in another region: S3's hint is followed once, at once.
    sb.write_dest(OLD);
    sb.proxy_control(json!({"plan": [{"status": 301, "code": "PermanentRedirect",
        "message": "The bucket you are attempting to access must be addressed using the specified endpoint.",
        "headers": {"x-amz-bucket-region": "eu-west-1"}}], "then": "pass"}));
    let r = fetch(&sb, Some(&fault), &["--output", "json"]);
    r.assert_code(0)
        .assert_contains("the bucket is in another region; retrying there");
    assert_eq!(r.json()["steps"][0]["details"]["region"], "eu-west-1");
    assert_eq!(r.json()["steps"][0]["details"]["attempts"], 2);

    // Persistent resets: bounded, then a clear failure; old file intact.
    sb.write_dest(OLD);
    sb.proxy_control(json!({"plan": [], "then": "reset"}));
    let r = fetch(&sb, Some(&fault), &["--deadline", "6"]);
    r.assert_code(3).assert_contains("giving up");
    assert!(r.fetch_attempts_failed() >= 2, "{}", r.stderr);
    assert_old_intact(&sb);

    // Persistent truncation.
    sb.proxy_control(json!({"plan": [], "then": {"truncate": 5}}));
    fetch(&sb, Some(&fault), &["--deadline", "5"])
        .assert_code(3)
        .assert_contains("giving up");
    assert_old_intact(&sb);

    // Oversized: refused from Content-Length, at once.
    let before = sb.proxy_requests().len();
    sb.proxy_control(json!({"plan": [], "then": {"oversize": 10_000_000}}));
    fetch(&sb, Some(&fault), &[])
        .assert_code(3)
        .assert_contains("larger than --max-size 65536");
    assert_eq!(
        sb.proxy_requests().len() - before,
        1,
        "no retry when too large"
    );
    assert_old_intact(&sb);

    // A body slower than the deadline: the step stops by the deadline with its own message.
    sb.proxy_control(json!({"plan": [], "then": {"slow_bytes_per_sec": 2}}));
    let (r, took) = timed(|| fetch(&sb, Some(&fault), &["--deadline", "4"]));
    r.assert_code(3).assert_contains("too slow");
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert_old_intact(&sb);
}

#[test]
fn full_and_read_only_filesystems_keep_the_old_file() {
    let sb = Sandbox::up();
    let args = "fetch-config --source \"$SRC\"";
    let full = sb.run_on_tmpfs(
        OLD,
        "dd if=/dev/zero of=\"$D/fill\" bs=1k 2>/dev/null || true",
        args,
    );
    full.run
        .assert_code(3)
        .assert_contains("No space left on device")
        .assert_contains("the previous file is intact");
    assert_eq!(full.file, OLD);
    assert_eq!(full.ls, "ecs.config\nfill\n");

    let ro = sb.run_on_tmpfs(OLD, "mount -o remount,ro \"$D\"", args);
    ro.run
        .assert_code(3)
        .assert_contains("Read-only file system");
    assert_eq!((ro.file.as_str(), ro.ls.as_str()), (OLD, "ecs.config\n"));
}

#[test]
fn killed_runs_leave_the_old_file_and_the_next_run_cleans_up() {
    let sb = Sandbox::up();
    sb.write_dest(OLD);
    let dir = sb.dest().parent().unwrap().to_owned();

    // SIGKILL mid-fetch (a slow body keeps it busy).
    sb.proxy_control(json!({"plan": [], "then": {"slow_bytes_per_sec": 2}}));
    let mut c = sb.cmd_s3(&sb.s("s3_fault_endpoint"));
    c.args(["fetch-config", "--source", &sb.source()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    // The proxy logs a request when it ends; give the fetch time to be well into the body.
    std::thread::sleep(Duration::from_secs(3));
    assert!(child.try_wait().unwrap().is_none(), "still fetching");
    // `ip netns exec` execs the binary, so the child's PID is the binary's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert_old_intact(&sb);

    // A temp file left by a writer killed with SIGKILL while writing.
    let leave_temp = || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'ECS_CLUS' > \"{}/.ecs.config.ecs-bootstrap-tmp.$$\"; kill -9 $$",
                dir.display()
            ))
            .status()
            .unwrap();
        assert!(!out.success());
        assert_eq!(temp_files(&dir).len(), 1);
    };
    leave_temp();
    // The next run fails before it writes anything (no such key): the leftover, which may
    // hold secrets, goes all the same, and the old file stays.
    let missing = format!("s3://{}/no-such-key", sb.s("bucket"));
    fetch_src(&sb, None, &missing, &[]).assert_code(3);
    assert_old_intact(&sb);
    // Another leftover, then a run that succeeds.
    leave_temp();
    sb.proxy_control(json!({"plan": [], "then": "pass"}));
    fetch(&sb, None, &[]).assert_code(0);
    assert_eq!(
        std::fs::read_to_string(sb.dest()).unwrap(),
        sb.s("object_content")
    );
    assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
}

#[test]
fn secrets_never_appear_in_any_output() {
    let sb = Sandbox::up();
    let auth = "c2VjcmV0LXVzZXI6aHVudGVyMi1wYXNzd29yZA==";
    let proxy_pw = "Pr0xyPa55w0rd";
    let content = format!(
        "ECS_CLUSTER=prod\n\
         ECS_ENGINE_AUTH_TYPE=dockercfg\n\
         ECS_ENGINE_AUTH_DATA={{\"https://index.docker.io/v1/\":{{\"auth\":\"{auth}\",\"email\":\"x@example.com\"}}}}\n\
         ECS_ENGINE_AUTH_DATA=\"{auth}\"\n\
         HTTP_PROXY=http://user:{proxy_pw}@proxy.internal:3128\n\
         MY_API_TOKEN= {auth}\\\n"
    );
    sb.put(&sb.s("key"), content.as_bytes());
    let report = sb.root.path().join("report.json");
    let secrets = [
        auth.to_owned(),
        proxy_pw.to_owned(),
        sb.state["role_credentials"]["secret_access_key"]
            .as_str()
            .unwrap()
            .to_owned(),
        sb.state["role_credentials"]["session_token"]
            .as_str()
            .unwrap()
            .to_owned(),
    ];
    let check = |r: &Run, what: &str| {
        let mut all = r.all();
        if let Ok(rep) = std::fs::read_to_string(&report) {
            all.push_str(&rep);
        }
        for s in &secrets {
            assert!(!all.contains(s.as_str()), "{what}: a secret leaked:\n{all}");
        }
    };
    for (fmt, verbose) in [("text", "-v"), ("json", "-v"), ("text", "-vv")] {
        let r = fetch(
            &sb,
            None,
            &[
                verbose,
                "--log-format",
                fmt,
                "--output",
                fmt,
                "--report",
                report.to_str().unwrap(),
                "--set",
                &format!("HTTPS_PROXY=http://u:{proxy_pw}@p:1"),
            ],
        );
        r.assert_code(0)
            .assert_contains("ECS_ENGINE_AUTH_DATA is also set on line 3")
            .assert_contains("the value of ECS_ENGINE_AUTH_DATA starts with a quote");
        check(&r, &format!("{fmt} {verbose}"));
        std::fs::remove_file(sb.dest()).unwrap();
    }
    // The written file does hold them.
    fetch(&sb, None, &[]).assert_code(0);
    assert!(std::fs::read_to_string(sb.dest()).unwrap().contains(auth));
    // Failing runs: --strict, and a line without `=` holding a secret.
    let r = fetch(
        &sb,
        None,
        &["--strict", "--report", report.to_str().unwrap()],
    );
    r.assert_code(3);
    check(&r, "strict");
    sb.put(&sb.s("key"), format!("ECS_CLUSTER=x\n{auth}\n").as_bytes());
    let r = fetch(&sb, None, &["--report", report.to_str().unwrap()]);
    r.assert_code(3).assert_contains("line 2");
    check(&r, "bad line");
}

/// Instances without a route to S3 reach it through a proxy: the standard variables are
/// honoured (`HTTP_PROXY` here, since the sandbox's S3 endpoint is plain HTTP; `HTTPS_PROXY` for
/// real S3), `NO_PROXY` bypasses it, and IMDS is never proxied. The fault proxy in "pass" mode
/// plays the forward proxy: it forwards the request line it got (absolute-form through a proxy)
/// to moto, and logs it.
#[test]
fn s3_through_the_proxy_variables_and_no_proxy_bypass() {
    let sb = Sandbox::up();
    let proxy = sb.s("s3_fault_endpoint");
    let s3 = sb.s("s3_endpoint");
    let through = sb.proxy_requests().len();
    let mut c = sb.cmd();
    c.env("HTTP_PROXY", &proxy)
        .args(["fetch-config", "--source", &sb.source()]);
    let r = Sandbox::run_cmd(c);
    r.assert_code(0);
    let reqs = sb.proxy_requests();
    let mine: Vec<_> = reqs[through..].iter().collect();
    assert_eq!(mine.len(), 1, "one GET through the proxy: {mine:?}");
    let path = mine[0]["path"].as_str().unwrap();
    assert!(
        path.starts_with(&format!("{s3}/")),
        "an absolute-form request, as to a proxy: {path}"
    );
    assert_eq!(
        std::fs::read_to_string(sb.dest()).unwrap(),
        sb.s("object_content")
    );
    // IMDS answered directly (the emulator saw the token PUT; the proxy saw nothing else).
    assert_eq!(sb.token_puts(), 1);

    // NO_PROXY naming the S3 host: straight to moto, the proxy sees nothing.
    let before = sb.proxy_requests().len();
    std::fs::remove_file(sb.dest()).unwrap();
    let host = s3
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let mut c = sb.cmd();
    c.env("HTTP_PROXY", &proxy).env("NO_PROXY", &host).args([
        "fetch-config",
        "--source",
        &sb.source(),
    ]);
    Sandbox::run_cmd(c).assert_code(0);
    assert_eq!(
        sb.proxy_requests().len(),
        before,
        "NO_PROXY={host} bypasses the proxy"
    );
    assert!(sb.dest().exists());
}

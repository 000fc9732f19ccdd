//! `run` end to end: the steps together (one IMDS token for all), skips, a failed step that does
//! not stop the others, the boot report (text, JSON, `--report` file, a closed stdout), log
//! formats, the overall deadline and signals (the process's lifetime), and `--source-from-tag`.

use crate::harness::sandbox::*;
use serde_json::{Value, json};
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {report}"))
}

#[track_caller]
fn assert_report_shape(v: &Value) {
    assert_eq!(v["schema_version"], 1, "{v}");
    assert!(v["version"].is_string(), "{v}");
    assert!(v["command"].is_string(), "{v}");
    assert!(v["ok"].is_boolean(), "{v}");
    assert!(v["exit_code"].is_u64(), "{v}");
    assert!(v["duration_ms"].is_u64(), "{v}");
    for s in v["steps"].as_array().unwrap() {
        assert!(s["step"].is_string(), "{s}");
        assert!(
            ["ok", "failed", "skipped"].contains(&s["outcome"].as_str().unwrap()),
            "{s}"
        );
        assert!(s["duration_ms"].is_u64(), "{s}");
        assert!(s["changed"].is_boolean(), "{s}");
        match s["outcome"].as_str().unwrap() {
            "ok" => assert!(s["details"].is_object(), "{s}"),
            "failed" => assert!(s["error"].is_string(), "{s}"),
            _ => {}
        }
    }
}

#[test]
fn run_with_prove_has_four_steps_one_token_and_writes_the_report_file() {
    let sb = Sandbox::up();
    let src = sb.source();
    let pf = sb.persist_file();
    let report = sb.root.path().join("run/ecs-bootstrap/report.json");
    let puts = sb.token_puts();
    let asked = sb.imds_requests().len();
    let r = sb.run(&[
        "run",
        "--source",
        &src,
        "--persist-file",
        pf.to_str().unwrap(),
        "--prove",
        "--output",
        "json",
        "--report",
        report.to_str().unwrap(),
    ]);
    r.assert_code(0);
    assert_eq!(
        sb.token_puts() - puts,
        2,
        "one token PUT for config, check and prove's host probe, and one of prove's own that \
         measures the PUT response hop limit"
    );
    // The region and the role are asked once per run and serve the config step and the check
    // alike (prove asks instance-id again on purpose: IMDS must answer after the probe too).
    let requests = sb.imds_requests();
    for path in [
        "/latest/meta-data/placement/region",
        "/latest/meta-data/iam/security-credentials/",
    ] {
        let n = requests[asked..]
            .iter()
            .filter(|q| q["path"] == path)
            .count();
        assert_eq!(n, 1, "{path} asked {n} times: {:?}", &requests[asked..]);
    }
    let v = r.json();
    assert_report_shape(&v);
    assert_eq!(v["command"], "run");
    assert_eq!(v["ok"], true);
    let names: Vec<_> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["config", "firewall", "check", "prove"]);
    for s in v["steps"].as_array().unwrap() {
        assert_eq!(s["outcome"], "ok", "{s}");
    }
    assert_eq!(step(&v, "config")["changed"], true);
    assert_eq!(step(&v, "config")["details"]["file"], "written");
    assert_eq!(step(&v, "firewall")["changed"], true);
    assert_eq!(
        step(&v, "prove")["details"]["from_bridge"]["ipv4"],
        "blocked"
    );
    assert_eq!(
        step(&v, "prove")["details"]["from_bridge"]["ipv6"],
        "blocked"
    );
    assert_eq!(
        step(&v, "check")["details"]["instance_id"],
        sb.s("instance_id").as_str()
    );

    let file: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(file, v, "the report file is the printed JSON report");
    assert_eq!(mode(&report), 0o644);
    assert!(temp_files(report.parent().unwrap()).is_empty());
}

#[test]
fn a_failed_step_does_not_stop_the_others_and_the_code_names_it() {
    let sb = Sandbox::up();
    // The role may not read this key: the config step fails; firewall and check still run.
    let forbidden = format!("s3://{}/{}", sb.s("bucket"), sb.s("forbidden_key"));
    let pf = sb.persist_file();
    let report = sb.root.path().join("run/ecs-bootstrap/report.json");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    std::fs::write(&report, "old report").unwrap();
    std::fs::set_permissions(&report, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let args = [
        "run",
        "--source",
        &forbidden,
        "--persist-file",
        pf.to_str().unwrap(),
        "--ipv6",
        "off",
        "--report",
        report.to_str().unwrap(),
    ];
    let r = sb.run(&args);
    r.assert_code(3);
    // The readable text report: one line per step, the error under the failed one.
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("config    FAILED"), "{}", r.stdout);
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("firewall  ok (changed)")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.lines().any(|l| l.starts_with("check     ok")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("error: "), "{}", r.stdout);
    assert!(r.stdout.contains("AccessDenied") || r.stdout.contains("s3:GetObject"));
    assert!(r.stdout.trim_end().ends_with("(exit 3)"), "{}", r.stdout);
    assert_eq!(
        sb.drop_rules("iptables"),
        1,
        "the firewall rule is in place"
    );
    assert!(!sb.reaches_imds(Ns::Ctr, false));
    assert!(!sb.dest().exists(), "nothing written");

    // The report file is written on failure too, replacing the old one, mode 0644.
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_report_shape(&file);
    assert_eq!(file["exit_code"], 3);
    assert_eq!(file["ok"], false);
    assert_eq!(step(&file, "config")["outcome"], "failed");
    assert_eq!(step(&file, "firewall")["outcome"], "ok");
    assert_eq!(step(&file, "check")["outcome"], "ok");
    assert_eq!(mode(&report), 0o644);
    assert!(temp_files(report.parent().unwrap()).is_empty());
}

#[test]
fn the_code_names_the_first_failed_step_and_an_unreachable_imds_outranks_it() {
    let sb = Sandbox::up();
    let forbidden = format!("s3://{}/{}", sb.s("bucket"), sb.s("forbidden_key"));
    let pf = sb.persist_file();
    // Config and firewall failing (an unwritable persist file: its folder is a file): the code
    // names config, the first failed step.
    let bad_pf = sb.root.path().join("not-a-dir/iptables");
    std::fs::write(sb.root.path().join("not-a-dir"), "x").unwrap();
    let r = sb.run(&[
        "run",
        "--source",
        &forbidden,
        "--persist-file",
        bad_pf.to_str().unwrap(),
        "--ipv6",
        "off",
        "--output",
        "json",
    ]);
    r.assert_code(3);
    let v = r.json();
    assert_eq!(step(&v, "firewall")["outcome"], "failed", "{v}");
    assert_eq!(step(&v, "check")["outcome"], "ok");

    // Only the check fails, because IMDS is gone: exit 7 (an unreachable IMDS), not 5.
    let src = sb.source();
    sb.imds_control(json!({"unavailable_until": now_epoch() + 3600}));
    let r = sb.run(&[
        "run",
        "--skip-config",
        "--source",
        &src,
        "--persist-file",
        pf.to_str().unwrap(),
        "--ipv6",
        "off",
        "--deadline",
        "3",
    ]);
    r.assert_code(7);
    // The check failing for another reason keeps the check's own code: no instance profile.
    sb.imds_control(json!({"profile": false}));
    let r = sb.run(&[
        "run",
        "--skip-config",
        "--skip-firewall",
        "--deadline",
        "10",
    ]);
    r.assert_code(5).assert_contains("ecsInstanceRole");
}

#[test]
fn skip_flags_leave_their_step_out() {
    let sb = Sandbox::up();
    let src = sb.source();
    let pf = sb.persist_file();
    let pfs = pf.to_str().unwrap();

    let puts = sb.token_puts();
    let r = sb.run(&[
        "run",
        "--skip-config",
        "--skip-firewall",
        "--skip-check",
        "--output",
        "json",
    ]);
    r.assert_code(0);
    let v = r.json();
    assert_report_shape(&v);
    assert_eq!(v["steps"].as_array().unwrap().len(), 3);
    for s in v["steps"].as_array().unwrap() {
        assert_eq!(s["outcome"], "skipped", "{s}");
    }
    assert_eq!(sb.token_puts(), puts, "no IMDS request at all");
    assert_eq!(sb.drop_rules("iptables"), 0);
    assert!(!sb.dest().exists());

    let r = sb.run(&[
        "run",
        "--skip-firewall",
        "--source",
        &src,
        "--output",
        "json",
    ]);
    r.assert_code(0);
    let v = r.json();
    assert_eq!(step(&v, "config")["outcome"], "ok");
    assert_eq!(step(&v, "firewall")["outcome"], "skipped");
    assert_eq!(step(&v, "check")["outcome"], "ok");
    assert_eq!(sb.drop_rules("iptables"), 0, "firewall skipped");
    assert!(sb.reaches_imds(Ns::Ctr, false));
    assert!(sb.dest().exists());
    std::fs::remove_file(sb.dest()).unwrap();

    let r = sb.run(&[
        "run",
        "--skip-config",
        "--skip-check",
        "--persist-file",
        pfs,
        "--ipv6",
        "off",
        "--output",
        "json",
    ]);
    r.assert_code(0);
    let v = r.json();
    assert_eq!(step(&v, "config")["outcome"], "skipped");
    assert_eq!(step(&v, "firewall")["outcome"], "ok");
    assert_eq!(step(&v, "check")["outcome"], "skipped");
    assert_eq!(sb.drop_rules("iptables"), 1);
    assert!(!sb.dest().exists(), "config skipped");
}

/// The binary on a pseudo-terminal (so colours would be used), with extra environment.
fn on_a_tty(sb: &Sandbox, env: &[&str], args: &[&str]) -> String {
    let mut line = vec![
        "ip".to_owned(),
        "netns".into(),
        "exec".into(),
        sb.ns(Ns::Host).to_owned(),
        "env".into(),
        "-i".into(),
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
        format!("ECS_BOOTSTRAP_ROOT={}", sb.root.path().display()),
        format!("AWS_ENDPOINT_URL_S3={}", sb.s("s3_endpoint")),
    ];
    line.extend(env.iter().map(|s| s.to_string()));
    line.push(BIN.to_owned());
    line.extend(args.iter().map(|s| s.to_string()));
    let out = Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("TERM", "xterm")
        .output()
        .expect("script (bsdutils)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn starts_with_timestamp(l: &str) -> bool {
    let b = l
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .as_bytes();
    b.len() > 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[7] == b'-'
}

#[test]
fn log_lines_are_plain_under_systemd_and_json_on_request() {
    let sb = Sandbox::up();
    let src = sb.source();
    let args = ["fetch-config", "--source", &src];

    // On a terminal, outside systemd: colours and timestamps (so the checks below can fail).
    let tty = on_a_tty(&sb, &[], &args);
    assert!(tty.contains("fetched the config object"), "{tty}");
    assert!(tty.contains('\x1b'), "colours on a terminal: {tty:?}");
    // Under systemd (journald adds time and priority itself): neither, even on a terminal.
    let tty = on_a_tty(&sb, &["JOURNAL_STREAM=8:12345"], &args);
    assert!(tty.contains("fetched the config object"), "{tty}");
    assert!(!tty.contains('\x1b'), "no escapes under systemd: {tty:?}");

    let plain = Sandbox::run_cmd({
        let mut c = sb.cmd();
        c.args(args);
        c
    });
    plain.assert_code(0);
    let logged: Vec<&str> = plain.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(!logged.is_empty());
    assert!(
        logged.iter().all(|l| starts_with_timestamp(l)),
        "{logged:?}"
    );

    let journal = Sandbox::run_cmd({
        let mut c = sb.cmd();
        c.env("JOURNAL_STREAM", "1:1").args(args);
        c
    });
    journal.assert_code(0);
    let logged: Vec<&str> = journal.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("fetched the config object")),
        "{logged:?}"
    );
    for l in &logged {
        assert!(!starts_with_timestamp(l), "timestamp under systemd: {l}");
        assert!(!l.contains('\x1b'), "{l:?}");
    }
    // INVOCATION_ID (set by systemd for every unit) is enough too.
    let unit = Sandbox::run_cmd({
        let mut c = sb.cmd();
        c.env("INVOCATION_ID", "0123456789abcdef").args(args);
        c
    });
    assert!(
        unit.stderr
            .lines()
            .filter(|l| !l.is_empty())
            .all(|l| !starts_with_timestamp(l)),
        "{}",
        unit.stderr
    );

    let json_logs = Sandbox::run_cmd({
        let mut c = sb.cmd();
        c.args(["--log-format", "json"]).args(args);
        c
    });
    json_logs.assert_code(0);
    let lines: Vec<Value> = json_logs
        .stderr
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "fetched the config object" && l["level"] == "INFO"),
        "{lines:?}"
    );
}

#[test]
fn every_imds_wait_ends_within_the_deadline() {
    let sb = Sandbox::up();
    sb.imds_control(json!({"unavailable_until": now_epoch() + 3600}));
    let src = sb.source();
    let pf = sb.persist_file();
    let t = Instant::now();
    let r = sb.run(&[
        "run",
        "--source",
        &src,
        "--persist-file",
        pf.to_str().unwrap(),
        "--ipv6",
        "off",
        "--deadline",
        "5",
        "--output",
        "json",
    ]);
    let took = t.elapsed();
    // The exit code of an unreachable IMDS, whichever step saw it first.
    r.assert_code(7);
    assert!(
        took < Duration::from_secs(30),
        "the deadline bounds the run: {took:?}"
    );
    let v = r.json();
    let config = step(&v, "config");
    assert_eq!(config["outcome"], "failed");
    assert_eq!(config["imds_unreachable"], true);
    let err = config["error"].as_str().unwrap();
    assert!(err.contains("cannot reach instance metadata"), "{err}");
    assert!(err.contains("OUTPUT chain"), "{err}");
    assert_eq!(step(&v, "firewall")["outcome"], "ok", "no wait for IMDS");
    // The config step waited for IMDS up to the deadline; the check had no time left (it says
    // so rather than blaming IMDS a second time) or a last moment in which IMDS did not answer.
    let check = step(&v, "check");
    assert_eq!(check["outcome"], "failed");
    let err = check["error"].as_str().unwrap();
    assert!(
        err.contains("the overall deadline has passed")
            || err.contains("cannot reach instance metadata"),
        "{err}"
    );

    // With AWS_REGION set the config step meets IMDS only through the SDK's credentials
    // provider, whose error keeps just the text: still exit 7, still flagged.
    let mut c = sb.cmd();
    c.env("AWS_REGION", "us-east-1").args([
        "run",
        "--source",
        &src,
        "--skip-firewall",
        "--skip-check",
        "--deadline",
        "4",
        "--output",
        "json",
    ]);
    let r = Sandbox::run_cmd(c);
    r.assert_code(7);
    let v = r.json();
    assert_eq!(step(&v, "config")["imds_unreachable"], true, "{v}");
}

#[test]
fn source_from_tag_reads_the_url_from_instance_tags() {
    let sb = Sandbox::up();
    // Tags in metadata off (the default): a clear error with the fix.
    let r = sb.run(&["fetch-config", "--source-from-tag", "ecs-config"]);
    r.assert_code(3)
        .assert_contains("instance metadata tags are off")
        .assert_contains("InstanceMetadataTags=enabled");
    assert!(!sb.dest().exists());

    // On, without the key: names the tags there are.
    sb.imds_control(json!({"tags": {"Name": "ecs-node"}}));
    sb.run(&["fetch-config", "--source-from-tag", "ecs-config"])
        .assert_code(3)
        .assert_contains("has no tag")
        .assert_contains("Name");

    sb.imds_control(json!({"tags": {"ecs-config": sb.source()}}));
    let puts = sb.token_puts();
    let r = sb.run(&[
        "run",
        "--skip-firewall",
        "--source-from-tag",
        "ecs-config",
        "--output",
        "json",
    ]);
    r.assert_code(0);
    assert_eq!(
        step(&r.json(), "config")["details"]["source"],
        sb.source().as_str()
    );
    assert_eq!(
        std::fs::read_to_string(sb.dest()).unwrap(),
        sb.s("object_content")
    );
    assert_eq!(sb.token_puts() - puts, 1);
    assert!(
        sb.imds_requests().iter().any(|q| q["path"]
            == "/latest/meta-data/tags/instance/ecs-config"
            && q["status"] == 200)
    );
}

/// The `--report` file is written before the report is printed; a failure to write it is in
/// the printed report, with the exit code the process returns.
#[test]
fn the_report_file_comes_first_and_its_failure_is_reported() {
    let sb = Sandbox::up();
    let report = sb.root.path().join("run/ecs-bootstrap/report.json");
    // Whoever reads the first byte of the printed report finds the file already there.
    let mut c = sb.cmd();
    c.args(["check-imds", "--output", "json", "--report"])
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut first = [0u8; 1];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    let at_first_byte = std::fs::read_to_string(&report);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&[&first[..], &out.stdout[..]].concat()).unwrap();
    let file: Value =
        serde_json::from_str(&at_first_byte.expect("the report file exists")).unwrap();
    assert_eq!(file, printed);
    assert!(printed.get("report_file_error").is_none(), "{printed}");

    // A report path whose folder is a regular file cannot be written.
    let blocker = sb.root.path().join("not-a-folder");
    std::fs::write(&blocker, "").unwrap();
    let bad = blocker.join("report.json");
    let r = sb.run(&[
        "check-imds",
        "--output",
        "json",
        "--report",
        bad.to_str().unwrap(),
    ]);
    r.assert_code(1);
    let v = r.json();
    assert_report_shape(&v);
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["exit_code"], 1, "the printed code is the process's: {v}");
    assert_eq!(v["report_file_error"]["path"], bad.to_str().unwrap(), "{v}");
    assert!(v["report_file_error"]["error"].is_string(), "{v}");
    assert_eq!(
        step(&v, "check")["outcome"],
        "ok",
        "the run itself succeeded: {v}"
    );
    // A failed run keeps its own code.
    sb.cut_host_from_imds();
    let r = sb.run(&[
        "check-imds",
        "--output",
        "text",
        "--deadline",
        "2",
        "--report",
        bad.to_str().unwrap(),
    ]);
    r.assert_code(7).assert_contains("was not written");
}

/// A reader that goes away (`| head -c1`) is not a failure of the run: no abort, the report
/// file is written, the exit code stands.
#[test]
fn a_closed_stdout_is_not_an_error() {
    let sb = Sandbox::up();
    let report = sb.root.path().join("report.json");
    for output in ["json", "text"] {
        let _ = std::fs::remove_file(&report);
        let mut c = sb.cmd();
        c.args(["check-imds", "--output", output, "--report"])
            .arg(&report)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{output}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let file: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(file["ok"], true);
    }
    // Control: a failing run through a closed stdout keeps its code.
    sb.cut_host_from_imds();
    let mut c = sb.cmd();
    c.args(["check-imds", "--output", "json", "--deadline", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    assert_eq!(child.wait().unwrap().code(), Some(7));
}

/// Holds the firewall step's lock (under `--root`) as another run would.
fn hold_firewall_lock(sb: &Sandbox) -> nix::fcntl::Flock<std::fs::File> {
    let path = sb.root.path().join("run/ecs-bootstrap/firewall.lock");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&path).unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap()
}

/// `--deadline` bounds the process, not only the report: with the firewall lock held by
/// another run, the process ends about when the deadline passes, and no rule appears later.
#[test]
fn the_deadline_bounds_the_process_with_a_held_lock() {
    let sb = Sandbox::up();
    let pf = sb.persist_file();
    let args = [
        "block-imds",
        "--persist-file",
        pf.to_str().unwrap(),
        "--deadline",
        "2",
        "--output",
        "json",
    ];
    let lock = hold_firewall_lock(&sb);
    let t = Instant::now();
    let r = sb.run(&args);
    let lived = t.elapsed();
    r.assert_code(4);
    let v = r.json();
    let err = step(&v, "firewall")["error"].as_str().unwrap().to_owned();
    assert!(err.contains("deadline"), "{err}");
    assert!(
        lived < Duration::from_millis(3500),
        "lived {lived:?} past a 2 s deadline"
    );
    drop(lock);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sb.drop_rules("iptables"), 0, "{}", sb.rules("iptables"));
    // Control: with the lock free, the same command asserts the block.
    sb.run(&args).assert_code(0);
    assert_eq!(sb.drop_rules("iptables"), 1, "{}", sb.rules("iptables"));
}

/// SIGHUP (an ssh session that drops) ends a run as SIGTERM does: at once, exit 129, and the
/// report lists the steps that had finished.
#[test]
fn sighup_ends_the_run_at_once_and_the_report_lists_the_finished_steps() {
    use std::os::unix::process::ExitStatusExt as _;
    let sb = Sandbox::up();
    let src = sb.source();
    let pf = sb.persist_file();
    let lock = hold_firewall_lock(&sb);
    let mut c = sb.cmd();
    c.args([
        "run",
        "--source",
        &src,
        "--persist-file",
        pf.to_str().unwrap(),
    ])
    .args(["--deadline", "60", "--output", "json"])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    // The config step is done once ecs.config is there; the firewall step waits for the lock.
    wait_for("ecs.config", Duration::from_secs(20), || sb.dest().exists());
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    // `ip netns exec` execs the binary, so the child's PID is the binary's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(129),
        "signal {:?}: {stderr}",
        out.status.signal()
    );
    assert!(
        took < Duration::from_millis(1500),
        "took {took:?} after SIGHUP"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_report_shape(&v);
    assert_eq!(v["interrupted_by"], "SIGHUP", "{v}");
    assert_eq!(v["exit_code"], 129);
    let names: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["config"], "{v}");
    assert_eq!(step(&v, "config")["outcome"], "ok");
    drop(lock);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sb.drop_rules("iptables"), 0, "{}", sb.rules("iptables"));
}

//! `prove` end to end: a throwaway namespace on the sandbox's docker0 connects to IMDS the way a
//! container would. Reachable before `block-imds`, blocked after (IPv4 and IPv6); nothing is
//! left behind, also when the run is killed (SIGTERM: its guard; SIGKILL: the next run sweeps).
//!
//! The tests of this file run one at a time: a `prove` sweeps the namespaces of dead runs, and
//! the SIGKILL test needs to see its leftover before the next `prove` removes it.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn probe_ns(pid: u32) -> String {
    format!("ebs-prove-{pid}")
}

fn has_ns(name: &str) -> bool {
    netns_list()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Probe veths (`ebsp*`) on the sandbox's host side.
fn probe_links(sb: &Sandbox) -> Vec<String> {
    let r = sb.exec(Ns::Host, &["ip", "-o", "link", "show"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    r.stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap().to_owned())
        .filter(|n| n.starts_with("ebsp"))
        .collect()
}

/// No probe namespace of the run `pid` and no probe veth in the sandbox. (Only our own: other
/// suites may run `prove` at the same time.)
#[track_caller]
fn assert_clean(sb: &Sandbox, pid: u32) {
    wait_for(
        "probe namespace and veth to be gone",
        Duration::from_secs(10),
        || !has_ns(&probe_ns(pid)) && probe_links(sb).is_empty(),
    );
}

/// Runs the binary with `args` like `Sandbox::run`, returning its pid too.
fn run_pid(sb: &Sandbox, args: &[&str]) -> (u32, Run) {
    let child = sb
        .cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ecs-bootstrap");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    (
        pid,
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
    )
}

/// Deletes a probe namespace a test provoked, if the test fails before the sweep does.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn block(sb: &Sandbox) {
    let pf = sb.persist_file();
    sb.run(&[
        "block-imds",
        "--persist-file",
        pf.to_str().unwrap(),
        "--ipv6",
        "on",
    ])
    .assert_code(0);
}

fn spawn_prove(sb: &Sandbox) -> Child {
    sb.cmd()
        .args(["prove"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prove")
}

#[test]
fn prove_says_reachable_before_the_block_and_blocked_after_ipv4_and_ipv6() {
    let _s = serial();
    let sb = Sandbox::up();
    assert!(sb.reaches_imds(Ns::Ctr, false) && sb.reaches_imds(Ns::Ctr, true));

    let (pid, r) = run_pid(&sb, &["prove", "--output", "json"]);
    r.assert_code(6)
        .assert_contains("can reach instance metadata")
        .assert_contains("block-imds");
    let d = &r.json()["steps"][0]["details"];
    assert_eq!(d["from_bridge"]["ipv4"], "reachable", "{d}");
    assert_eq!(d["from_bridge"]["ipv6"], "reachable", "{d}");
    assert_eq!(d["from_host"], "reachable");
    assert_clean(&sb, pid);

    block(&sb);
    let puts = sb.token_puts();
    let (pid, r) = run_pid(&sb, &["prove", "--output", "json"]);
    r.assert_code(0);
    let d = &r.json()["steps"][0]["details"];
    assert_eq!(d["from_bridge"]["ipv4"], "blocked", "{d}");
    assert_eq!(d["from_bridge"]["ipv6"], "blocked", "{d}");
    // "blocked" rests on the control and on our rule's counter, for each family.
    for fam in ["ipv4", "ipv6"] {
        let p = &d["bridges"][0][fam];
        assert_eq!(p["control_ok"], true, "{d}");
        assert!(p["counter_rise"].as_u64().unwrap() >= 1, "{d}");
    }
    assert_eq!(d["from_host"], "reachable");
    assert_eq!(
        sb.token_puts() - puts,
        2,
        "the host check asks IMDSv2 (one PUT), and the hop-limit measurement makes its own"
    );
    assert_eq!(d["put_hop_limit"], "2 or more", "{d}");
    assert_clean(&sb, pid);

    // Text report; --ipv6 off probes IPv4 only.
    let (pid, r) = run_pid(&sb, &["prove", "--ipv6", "off"]);
    r.assert_code(0)
        .assert_contains("169.254.169.254:80 blocked")
        .assert_contains("from the host: IMDS answers");
    assert!(!r.stdout.contains("fd00:ec2::254"), "{}", r.stdout);
    assert_clean(&sb, pid);

    // The host cut off from IMDS: blocked from the bridge is not enough. The code is that of
    // an unreachable IMDS (7), the cause to fix; 6 is for a bridge that reaches IMDS.
    sb.cut_host_from_imds();
    let (pid, r) = run_pid(&sb, &["prove", "--ipv6", "off", "--deadline", "4"]);
    r.assert_code(7)
        .assert_contains("the host itself cannot reach instance metadata")
        .assert_contains("OUTPUT chain");
    assert_clean(&sb, pid);
}

#[test]
fn prove_cleans_up_when_terminated_and_sweeps_after_a_kill() {
    let _s = serial();
    let sb = Sandbox::up();
    // Blocked: each probe waits for its connect timeout, a window to interrupt it in.
    block(&sb);

    let child = spawn_prove(&sb);
    let pid = child.id();
    let _guard = NsGuard(probe_ns(pid));
    wait_for("the probe namespace", Duration::from_secs(10), || {
        has_ns(&probe_ns(pid))
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "SIGTERM: exit 128+15\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted by SIGTERM"));
    assert!(
        !has_ns(&probe_ns(pid)),
        "the guard removed the namespace before exit"
    );
    assert_clean(&sb, pid);

    // SIGKILL: nothing runs in the process; the namespace (and its veth) stay until the next
    // prove sweeps them.
    let mut child = spawn_prove(&sb);
    let pid = child.id();
    let _guard2 = NsGuard(probe_ns(pid));
    wait_for("the probe namespace", Duration::from_secs(10), || {
        has_ns(&probe_ns(pid))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        has_ns(&probe_ns(pid)),
        "a SIGKILL leaves the namespace (else this test proves nothing)"
    );
    let (pid2, r) = run_pid(&sb, &["prove"]);
    r.assert_code(0)
        .assert_contains("removed a probe namespace left by a killed run");
    assert!(!has_ns(&probe_ns(pid)));
    assert_clean(&sb, pid2);
}

#[test]
fn prove_without_docker0_says_so() {
    let _s = serial();
    require_root();
    let ns = format!("ebs-t{}-bare", std::process::id());
    let st = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap();
    assert!(st.success());
    let _guard = NsGuard(ns.clone());
    let root = tempfile::tempdir().unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, BIN, "prove"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("ECS_BOOTSTRAP_ROOT", root.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(8),
        "no bridge is not a leak (6): {text}"
    );
    assert!(text.contains("there is no docker0 bridge"), "{text}");
    assert!(text.contains("start Docker"), "{text}");
    assert!(!has_ns(&probe_ns(pid)), "{}", netns_list());
}

/// The case: no rule at all and forwarding off in the host namespace. The container
/// cannot reach IMDS, but nothing of ours blocks it: "not proven" (8), never "blocked" (0).
/// (The control, forwarding on and no rule, is the first test: reachable, 6.)
#[test]
fn prove_with_forwarding_off_and_no_rule_is_not_proven() {
    let _s = serial();
    let sb = Sandbox::up();
    let r = sb.exec(Ns::Host, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        !sb.reaches_imds(Ns::Ctr, false),
        "forwarding off: nothing gets through"
    );
    let (pid, r) = run_pid(&sb, &["prove", "--ipv6", "off", "--output", "json"]);
    r.assert_code(8).assert_contains("not proven");
    let d = &r.json()["steps"][0]["details"];
    assert_eq!(d["from_bridge"]["ipv4"], "not_proven", "{d}");
    assert_eq!(d["bridges"][0]["ipv4"]["control_ok"], true, "{d}");
    assert_eq!(d["bridges"][0]["ipv4"]["counter_rise"], 0, "{d}");
    assert_clean(&sb, pid);
}

/// A broken probe path (the host drops everything from docker0 on INPUT, so the control
/// listener on docker0's address is out of reach) is its own verdict: 8, not 0, not 6.
#[test]
fn prove_with_a_broken_probe_path_is_not_proven() {
    let _s = serial();
    let sb = Sandbox::up();
    block(&sb);
    let r = sb.exec(
        Ns::Host,
        &[
            "iptables", "-w", "5", "-I", "INPUT", "-i", "docker0", "-j", "DROP",
        ],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let (pid, r) = run_pid(&sb, &["prove", "--ipv6", "off"]);
    r.assert_code(8).assert_contains("the probe path is broken");
    assert_clean(&sb, pid);
}

/// Every bridge matching a blocked pattern is probed, not only docker0: a user-defined
/// bridge (br-*) left out of block-imds leaks (6) and is named; once blocked, both pass.
#[test]
fn prove_probes_every_bridge_matching_the_patterns() {
    let _s = serial();
    let sb = Sandbox::up();
    for argv in [
        &["ip", "link", "add", "br-test", "type", "bridge"][..],
        &["ip", "addr", "add", "172.18.0.1/16", "dev", "br-test"],
        &["ip", "link", "set", "br-test", "up"],
    ] {
        let r = sb.exec(Ns::Host, argv);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
    let r = sb.exec(
        Ns::Svc,
        &["ip", "route", "add", "172.18.0.0/16", "via", "192.0.2.1"],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    block(&sb);
    let patterns = ["--interface", "docker+,br-+", "--ipv6", "off"];
    let mut args = vec!["prove"];
    args.extend(patterns);
    let (pid, r) = run_pid(&sb, &args);
    r.assert_code(6)
        .assert_contains("from br-test (172.18.")
        .assert_contains("containers on br-test can reach instance metadata")
        .assert_contains("169.254.169.254:80 blocked");
    assert_clean(&sb, pid);

    let pf = sb.persist_file();
    let mut b = vec!["block-imds", "--persist-file", pf.to_str().unwrap()];
    b.extend(patterns);
    sb.run(&b).assert_code(0);
    let mut json = args.clone();
    json.extend(["--output", "json"]);
    let (pid, r) = run_pid(&sb, &json);
    r.assert_code(0);
    let d = &r.json()["steps"][0]["details"];
    let names: Vec<&str> = d["bridges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bridge"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["br-test", "docker0"], "{d}");
    for b in d["bridges"].as_array().unwrap() {
        assert_eq!(b["ipv4"]["verdict"], "blocked", "{d}");
    }
    assert_clean(&sb, pid);
}

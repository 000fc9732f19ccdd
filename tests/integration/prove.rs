//! `prove` end to end: a throwaway namespace on the sandbox's docker0 connects to IMDS the way a
//! container would. Reachable before `block-imds`, blocked after (IPv4 and IPv6); nothing is
//! left behind, also when the run is killed (SIGTERM: its guard; SIGKILL: the next run sweeps).
//!
//! The tests of this file run one at a time: a `prove` sweeps the namespaces of dead runs, and
//! the SIGKILL test needs to see its leftover before the next `prove` removes it.

use crate::harness::sandbox::*;
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

/// SIGHUP (an ssh session dropping) ends the run as SIGTERM does: the guard removes the probe
/// namespace, its veth and the host's neighbour entry for the probe's address. The signal goes
/// once that entry exists (the host learnt the probe's MAC from its control connection), so
/// the test sees the guard remove it.
#[test]
fn prove_cleans_up_after_sighup() {
    let _s = serial();
    let sb = Sandbox::up();
    // Blocked: each probe waits for its connect timeout, a window to interrupt it in.
    block(&sb);
    let before = neighbours(&sb, "docker0");
    let child = spawn_prove(&sb);
    let pid = child.id();
    let _guard = NsGuard(probe_ns(pid));
    wait_for(
        "the probe namespace and the host's neighbour entry for the probe",
        Duration::from_secs(10),
        || has_ns(&probe_ns(pid)) && neighbours(&sb, "docker0").len() > before.len(),
    );
    let during = neighbours(&sb, "docker0");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(129), "SIGHUP: exit 128+1\n{stderr}");
    assert!(stderr.contains("SIGHUP"), "{stderr}");
    assert!(
        !has_ns(&probe_ns(pid)),
        "the guard removed the namespace before exit"
    );
    assert_clean(&sb, pid);
    let after = neighbours(&sb, "docker0");
    let left: Vec<_> = after.iter().filter(|n| !before.contains(n)).collect();
    assert!(
        left.is_empty(),
        "neighbour entries left by the probe: {left:?} (before {before:?}, during {during:?})"
    );
}

/// The free-address search takes the time left, not its own 16 x 300 ms: on a bridge whose
/// every address answers ARP but drops TCP (a "crowd": one namespace holding the whole subnet),
/// each candidate costs the full wait. With --deadline 1 the process ends within about a second
/// of it; the control, with time enough, spends the whole search and finds no free address.
#[test]
// Long because the crowd namespace's set-up and its control run belong to the one measurement.
#[allow(clippy::too_many_lines)]
fn prove_free_address_search_ends_at_the_deadline() {
    let _s = serial();
    let sb = Sandbox::up();
    let br = "br-crowd";
    for argv in [
        &["ip", "link", "add", br, "type", "bridge"][..],
        &["ip", "addr", "add", "10.98.0.1/26", "dev", br],
        &["ip", "link", "set", br, "up"],
    ] {
        let r = sb.exec(Ns::Host, argv);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
    let crowd = format!("ebst-{}-crowd", sb.name);
    let st = Command::new("ip").args(["netns", "add", &crowd]).status();
    assert!(st.unwrap().success());
    let _crowd_guard = NsGuard(crowd.clone());
    let host_if = format!("ec{}cr", sb.name);
    for argv in [
        vec![
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &crowd,
        ],
        vec!["ip", "link", "set", &host_if, "master", br, "up"],
    ] {
        let r = sb.exec(Ns::Host, &argv);
        assert_eq!(r.code, Some(0), "{argv:?}: {}", r.stderr);
    }
    // Every address of the /26 but the bridge's is local to the crowd (it answers ARP for
    // each), and the crowd drops TCP (no reset: each attempt waits).
    let mut steps = vec![
        vec![
            "ip",
            "-n",
            &crowd,
            "addr",
            "add",
            "10.98.0.62/26",
            "dev",
            "eth0",
        ],
        vec!["ip", "-n", &crowd, "link", "set", "eth0", "up"],
        vec!["ip", "-n", &crowd, "link", "set", "lo", "up"],
        vec![
            "ip", "netns", "exec", &crowd, "iptables", "-w", "5", "-A", "INPUT", "-p", "tcp", "-j",
            "DROP",
        ],
    ];
    for net in [
        "10.98.0.2/31",
        "10.98.0.4/30",
        "10.98.0.8/29",
        "10.98.0.16/28",
        "10.98.0.32/27",
    ] {
        steps.push(vec![
            "ip", "-n", &crowd, "route", "add", "local", net, "dev", "lo",
        ]);
    }
    for argv in steps {
        let o = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(o.status.success(), "{argv:?}: {o:?}");
    }

    let timed = |deadline: &str| {
        let t = std::time::Instant::now();
        let (pid, r) = run_pid(
            &sb,
            &[
                "prove",
                "--bridge",
                br,
                "--ipv6",
                "off",
                "--deadline",
                deadline,
            ],
        );
        (t.elapsed(), pid, r)
    };
    // Control: the whole search, every candidate taken.
    let (took, pid, r) = timed("30");
    r.assert_code(8).assert_contains("no free address");
    assert!(
        took >= Duration::from_millis(4500),
        "16 candidates at 300 ms each: the search is slow here ({took:?}), else this test proves nothing"
    );
    assert_clean(&sb, pid);
    let (took, pid, r) = timed("1");
    assert!(
        took < Duration::from_millis(2500),
        "--deadline 1: the process ended after {took:?}\n{}",
        r.all()
    );
    assert!(matches!(r.code, Some(7 | 8)), "{}", r.all());
    assert!(r.all().contains("deadline"), "{}", r.all());
    assert_clean(&sb, pid);
}

/// A held xtables lock (iptables-legacy, its lock file moved to the test's own with
/// `XTABLES_LOCKFILE`, so no other iptables on the machine waits for it): prove's iptables
/// calls wait for it only until the deadline, not 10 s each. The control: the lock is held
/// (another iptables gives up on it).
#[test]
fn prove_waits_for_a_held_xtables_lock_only_until_the_deadline() {
    let _s = serial();
    let sb = Sandbox::up();
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("xtables.lock");
    std::fs::write(&lock, "").unwrap();
    /// The lock holder, killed when the test ends.
    struct Holder(Child);
    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _holder = Holder(
        Command::new("flock")
            .arg(&lock)
            .args(["sleep", "60"])
            .spawn()
            .expect("flock (util-linux)"),
    );
    let legacy = "/usr/sbin/iptables-legacy";
    wait_for("the lock to be held", Duration::from_secs(10), || {
        let o = Command::new(legacy)
            .args(["-w", "1", "-S", "INPUT"])
            .env("XTABLES_LOCKFILE", &lock)
            .output()
            .unwrap();
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("lock")
    });

    let t = std::time::Instant::now();
    let child = sb
        .cmd()
        .env("XTABLES_LOCKFILE", &lock)
        .args([
            "prove",
            "--ipv6",
            "off",
            "--iptables",
            legacy,
            "--deadline",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_millis(4500),
        "--deadline 3 with the xtables lock held: the process ended after {took:?}\n{text}"
    );
    assert!(matches!(out.status.code(), Some(7 | 8)), "{text}");
    assert!(text.contains("deadline"), "{text}");
    assert_clean(&sb, pid);
}

/// A hung iptables (a stand-in that never answers: a real one hangs only on a kernel or lock
/// fault the test cannot make on purpose): prove's commands are killed at the deadline, not
/// after their own 30 s. The control: the stand-in does hang (it is still running after 2 s).
#[test]
fn prove_with_a_hung_iptables_ends_at_the_deadline() {
    let _s = serial();
    let sb = Sandbox::up();
    block(&sb);
    let dir = tempfile::tempdir().unwrap();
    let hung = dir.path().join("iptables");
    std::fs::write(&hung, "#!/bin/sh\nexec sleep 120\n").unwrap();
    std::fs::set_permissions(&hung, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut control = Command::new(&hung).arg("-S").spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        control.try_wait().unwrap().is_none(),
        "the stand-in hangs (else this test proves nothing)"
    );
    let _ = control.kill();
    let _ = control.wait();

    let t = std::time::Instant::now();
    let (pid, r) = run_pid(
        &sb,
        &[
            "prove",
            "--ipv6",
            "off",
            "--iptables",
            hung.to_str().unwrap(),
            "--deadline",
            "3",
        ],
    );
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(4500),
        "--deadline 3 with a hung iptables: the process ended after {took:?}\n{}",
        r.all()
    );
    assert!(matches!(r.code, Some(7 | 8)), "{}", r.all());
    assert_clean(&sb, pid);
    let left = Command::new("pgrep")
        .args(["-f", hung.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "a hung iptables outlived the run: {}",
        String::from_utf8_lossy(&left.stdout)
    );
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

/// No rule at all and forwarding off in the host namespace. The container
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
/// bridge (br-<id>) left out of block-imds leaks (6) and is named; once blocked, both pass.
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

/// A fault on the host's side of IMDS is not a leak: with the block proven, IMDS answering the
/// host's token PUT with 200 and a body that is no token (a proxy or portal in the path), or
/// with 404 (IMDSv2 off), was exit 6 ("reachable from the bridge"). It is 5 (an unexpected
/// answer), the message names the host, and the bridges are still "blocked". The control: the
/// same sandbox before the knob, 0.
#[test]
fn prove_with_a_host_side_imds_fault_is_not_a_leak() {
    let _s = serial();
    let sb = Sandbox::up();
    block(&sb);
    let (pid, r) = run_pid(&sb, &["prove", "--ipv6", "off"]);
    r.assert_code(0);
    assert_clean(&sb, pid);
    for knobs in [
        serde_json::json!({"token_body": "<html>sign in to continue</html>"}),
        serde_json::json!({"v2_disabled": true}),
    ] {
        sb.imds_control(knobs.clone());
        let (pid, r) = run_pid(
            &sb,
            &[
                "prove",
                "--ipv6",
                "off",
                "--deadline",
                "20",
                "--output",
                "json",
            ],
        );
        r.assert_code(5)
            .assert_contains("did not answer the host as expected");
        assert!(
            !r.stdout.contains("can reach instance metadata"),
            "{knobs}: {}",
            r.stdout
        );
        let d = &r.json()["steps"][0]["details"];
        assert_eq!(d["from_bridge"]["ipv4"], "blocked", "{knobs}: {d}");
        assert_clean(&sb, pid);
    }
}

/// "Containers" (namespaces on veths) on a bridge's small subnet, removed on drop.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

impl Containers {
    /// A container on `bridge` (in the sandbox's host namespace) with 10.99.0.`i`/28.
    fn add(&mut self, sb: &Sandbox, bridge: &str, i: u8) {
        let ns = format!("ebst-{}-{i}", sb.name);
        let host_if = format!("ec{}x{i}", sb.name);
        let r = Command::new("ip").args(["netns", "add", &ns]).status();
        assert!(r.unwrap().success());
        self.0.push(ns.clone());
        for argv in [
            vec![
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            vec!["ip", "link", "set", &host_if, "master", bridge, "up"],
        ] {
            let r = sb.exec(Ns::Host, &argv);
            assert_eq!(r.code, Some(0), "{argv:?}: {}", r.stderr);
        }
        let addr = format!("10.99.0.{i}/28");
        for argv in [
            vec!["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"],
            vec!["ip", "-n", &ns, "link", "set", "eth0", "up"],
            vec!["ip", "-n", &ns, "link", "set", "lo", "up"],
        ] {
            let o = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
            assert!(o.status.success(), "{argv:?}: {o:?}");
        }
    }

    /// Each container's (address, MAC).
    fn macs(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|ns| {
                let i = ns.rsplit('-').next().unwrap();
                let o = Command::new("ip")
                    .args(["-n", ns, "-o", "link", "show", "eth0"])
                    .output()
                    .unwrap();
                let s = String::from_utf8_lossy(&o.stdout).into_owned();
                let mac = s
                    .split_whitespace()
                    .skip_while(|w| *w != "link/ether")
                    .nth(1)
                    .unwrap()
                    .to_owned();
                (format!("10.99.0.{i}"), mac)
            })
            .collect()
    }
}

/// The host's neighbour entries on `bridge` that carry a MAC, as (address, MAC).
fn neighbours(sb: &Sandbox, bridge: &str) -> Vec<(String, String)> {
    let r = sb.exec(Ns::Host, &["ip", "-4", "neigh", "show", "dev", bridge]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    r.stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let m = w.iter().position(|x| *x == "lladdr")?;
            Some((w[0].to_owned(), w.get(m + 1)?.to_string()))
        })
        .collect()
}

/// Every container answers the host (a TCP reset from its kernel), and the host's neighbour
/// entry for each address, where there is one, is that container's MAC.
#[track_caller]
fn containers_reached_from_host(sb: &Sandbox, c: &Containers, bridge: &str) {
    let macs = c.macs();
    for (addr, mac) in neighbours(sb, bridge) {
        if let Some((_, want)) = macs.iter().find(|(a, _)| *a == addr) {
            assert_eq!(&mac, want, "the host's neighbour entry for {addr}");
        }
    }
    let script = "import socket,sys\nfor a in sys.argv[1:]:\n    s=socket.socket(); s.settimeout(2)\n    try:\n        s.connect((a,9)); print(a,'open')\n    except ConnectionRefusedError:\n        print(a,'reset')\n    except OSError as e:\n        print(a,'unreached',e)\n";
    let mut argv = vec![python(), "-c", script];
    argv.extend(macs.iter().map(|(a, _)| a.as_str()));
    let r = sb.exec(Ns::Host, &argv);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stdout.contains("unreached"), "{}", r.stdout);
    assert_eq!(r.stdout.lines().count(), macs.len(), "{}", r.stdout);
}

/// The probe takes a free address, never a container's: on a /28 with containers on .2-.14
/// but .7 it takes .7, and leaves no neighbour entry for it; every container still gets the
/// host's traffic, each neighbour entry its own MAC. With .7 taken too, no address is free:
/// not proven (8), nobody's address taken. (A probe on a container's address would leave the
/// host's entry for it pointing at the deleted probe's MAC.)
#[test]
fn prove_takes_a_free_probe_address_and_leaves_containers_reachable() {
    let _s = serial();
    let sb = Sandbox::up();
    let br = "br-small";
    for argv in [
        &["ip", "link", "add", br, "type", "bridge"][..],
        &["ip", "addr", "add", "10.99.0.1/28", "dev", br],
        &["ip", "link", "set", br, "up"],
    ] {
        let r = sb.exec(Ns::Host, argv);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }
    let mut c = Containers(vec![]);
    for i in (2..=14).filter(|i| *i != 7) {
        c.add(&sb, br, i);
    }
    let pf = sb.persist_file();
    sb.run(&[
        "block-imds",
        "--persist-file",
        pf.to_str().unwrap(),
        "--interface",
        "docker+,br-+",
        "--ipv6",
        "off",
    ])
    .assert_code(0);
    // The host has talked to every container before the probe.
    containers_reached_from_host(&sb, &c, br);

    let args = ["prove", "--bridge", br, "--ipv6", "off", "--output", "json"];
    let (pid, r) = run_pid(&sb, &args);
    r.assert_code(0);
    let p = &r.json()["steps"][0]["details"]["bridges"][0]["ipv4"];
    assert_eq!(p["from"], "10.99.0.7", "{p}");
    assert_eq!(p["verdict"], "blocked", "{p}");
    assert_clean(&sb, pid);
    assert!(
        !neighbours(&sb, br).iter().any(|(a, _)| a == "10.99.0.7"),
        "the probe's neighbour entry is left: {:?}",
        neighbours(&sb, br)
    );
    containers_reached_from_host(&sb, &c, br);

    // Full: every address but the bridge's is a container's.
    c.add(&sb, br, 7);
    containers_reached_from_host(&sb, &c, br);
    let (pid, r) = run_pid(&sb, &args);
    r.assert_code(8).assert_contains("no free address");
    assert_clean(&sb, pid);
    containers_reached_from_host(&sb, &c, br);
}

/// SIGTERM while prove waits on a hung iptables (its counters): the process ends
/// within a second of the signal, as it does in the firewall step, not when the command's own
/// bound (the deadline, here 20 s) kills it; the probe namespace is gone. The control: the
/// stand-in was running when the signal went.
#[test]
fn prove_sigterm_during_a_hung_iptables_ends_within_a_second() {
    let _s = serial();
    let sb = Sandbox::up();
    block(&sb);
    let dir = tempfile::tempdir().unwrap();
    let hung = dir.path().join("iptables");
    std::fs::write(&hung, "#!/bin/sh\nexec sleep 31.5\n").unwrap();
    std::fs::set_permissions(&hung, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let child = sb
        .cmd()
        .args(["prove", "--ipv6", "off", "--deadline", "20", "--iptables"])
        .arg(&hung)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let running = || {
        Command::new("pgrep")
            .args(["-x", "-f", "sleep 31.5"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    };
    wait_for("the hung iptables", Duration::from_secs(15), running);
    let t = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    // The stand-in, if the run left it: by its pid.
    let left = Command::new("pgrep")
        .args(["-x", "-f", "sleep 31.5"])
        .output()
        .unwrap();
    for p in String::from_utf8_lossy(&left.stdout).split_whitespace() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.parse().unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < Duration::from_secs(1),
        "SIGTERM during a hung iptables in prove: the process ended after {took:?}\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert_clean(&sb, pid);
}

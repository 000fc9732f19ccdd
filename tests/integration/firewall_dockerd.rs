//! A real dockerd (Debian's `docker.io`, 20.10) in the test's host namespace, in its own mount
//! namespace (`unshare -m` + `nsenter --net=`), with its data, exec root and socket in a
//! temporary folder: start it, restart it, and prove the container stays blocked from IMDS;
//! and that the documented FORWARD placement is bypassed by the same dockerd.

use crate::harness::netns::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary dockerd itself runs (Debian's alternatives pick nft or legacy); ours must agree.
const IPTABLES: &str = "/usr/sbin/iptables";
const DOCKERD: &str = "/usr/sbin/dockerd";

struct Dockerd {
    child: Option<Child>,
    dir: PathBuf,
    starts: usize,
}

impl Dockerd {
    fn start(ns: &Ns, dir: &Path) -> Dockerd {
        assert!(
            Path::new(DOCKERD).exists(),
            "{DOCKERD} is missing: install Debian's docker.io (apt-get install -y docker.io)"
        );
        let mut d = Dockerd {
            child: None,
            dir: dir.to_owned(),
            starts: 0,
        };
        d.spawn(ns);
        d
    }

    fn spawn(&mut self, ns: &Ns) {
        self.starts += 1;
        let log = self.dir.join(format!("dockerd.{}.log", self.starts));
        let p = |s: &str| self.dir.join(s).to_str().unwrap().to_owned();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "nsenter"])
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(DOCKERD)
            .args(["--data-root", &p("lib"), "--exec-root", &p("exec")])
            .args(["--pidfile", &p("docker.pid")])
            .arg(format!("--host=unix://{}", p("docker.sock")))
            .args(["--storage-driver", "vfs", "--bridge", "docker0"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        // Ready when the API listens (it has written its iptables rules before that).
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("API listen on") {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited ({st}) while starting:\n{text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dockerd did not start within 60 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn restart(&mut self, ns: &Ns) {
        self.stop();
        self.spawn(ns);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn forward(ns: &Ns) -> Vec<String> {
    ns.rules(IPTABLES)
        .into_iter()
        .filter(|l| l.starts_with("-A FORWARD"))
        .collect()
}

#[test]
fn real_dockerd_start_and_restart_keep_the_block() {
    require_root();
    let t = Topo::new();
    let root = tempfile::tempdir().unwrap();
    let dk = tempfile::tempdir().unwrap();
    let args = ["--persist", "none", "--ipv6", "off"];
    let r = block(&t.host, root.path(), IPTABLES, &args);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_blocked(&t.ctr, IMDS4, "before dockerd");

    let mut d = Dockerd::start(&t.host, dk.path());
    let fwd = forward(&t.host);
    assert_eq!(fwd[0], JUMP, "{fwd:?}");
    assert!(
        fwd.iter()
            .any(|l| l == "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT"),
        "dockerd wrote its rules: {fwd:?}"
    );
    assert_blocked(&t.ctr, IMDS4, "after dockerd started");
    assert_reaches(&t.ctr, OTHER4, "dockerd's ACCEPT rules");
    assert_reaches(&t.host, IMDS4, "the host keeps IMDS");

    d.restart(&t.host);
    assert_eq!(forward(&t.host)[0], JUMP);
    assert_blocked(&t.ctr, IMDS4, "after dockerd restarted");
    assert_reaches(&t.ctr, OTHER4, "after dockerd restarted");
    // The docker.service drop-in's run after the restart finds nothing to do.
    let r2 = block(&t.host, root.path(), IPTABLES, &args);
    assert_eq!(r2.code, 0, "{}", r2.text());
    assert!(!r2.changed(), "{}", r2.text());
    assert_eq!(count(&t.host.rules(IPTABLES), RULE4), 1);
}

#[test]
fn real_dockerd_bypasses_the_documented_forward_rule() {
    require_root();
    let t = Topo::new();
    let root = tempfile::tempdir().unwrap();
    let dk = tempfile::tempdir().unwrap();
    let r = block(
        &t.host,
        root.path(),
        IPTABLES,
        &["--chain", "FORWARD", "--persist", "none", "--ipv6", "off"],
    );
    assert_eq!(r.code, 0, "{}", r.text());
    assert_blocked(&t.ctr, IMDS4, "FORWARD placement before dockerd");
    let _d = Dockerd::start(&t.host, dk.path());
    assert_reaches(
        &t.ctr,
        IMDS4,
        "dockerd inserted its ACCEPT rules above the FORWARD-1 DROP",
    );
}

/// One `block-imds --drift` in `ns` (IPv4, nothing persisted): its stderr and whether it
/// changed anything.
fn drift(ns: &str, root: &Path) -> (String, bool, i32) {
    let o = sh(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            BIN,
            "--output",
            "json",
            "--quiet",
            "block-imds",
            "--drift",
            "--root",
            root.to_str().unwrap(),
            "--iptables",
            IPTABLES,
            "--persist",
            "none",
            "--ipv6",
            "off",
        ],
    );
    let r = parse_run(o.clone());
    (
        String::from_utf8_lossy(&o.stderr).into_owned(),
        r.changed(),
        r.code,
    )
}

/// The rules of every chain but ours (DOCKER-USER) and FORWARD's jumps to it: another tool's.
fn foreign(ns: &Ns) -> Vec<String> {
    ns.rules(IPTABLES)
        .into_iter()
        .filter(|l| !l.contains("DOCKER-USER"))
        .collect()
}

/// The drift timer fires while dockerd starts and restarts (each rewrites FORWARD and
/// re-inserts its jump to DOCKER-USER). Drift checks back to back through both: none fails,
/// none removes one of dockerd's rules, and once dockerd is up they stop finding anything
/// (no fight); the block holds and dockerd's forwarding still works.
#[test]
fn drift_checks_during_dockerd_starts_never_fight_or_remove_its_rules() {
    require_root();
    let t = Topo::new();
    let root = tempfile::tempdir().unwrap();
    let dk = tempfile::tempdir().unwrap();
    let r = block(
        &t.host,
        root.path(),
        IPTABLES,
        &["--persist", "none", "--ipv6", "off"],
    );
    assert_eq!(r.code, 0, "{}", r.text());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = {
        let stop = stop.clone();
        let host = t.host.name().to_owned();
        let root = root.path().to_owned();
        std::thread::spawn(move || {
            let mut runs = vec![];
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && runs.len() < 3000
                && start.elapsed() < Duration::from_secs(120)
            {
                runs.push(drift(&host, &root));
            }
            runs
        })
    };
    let mut d = Dockerd::start(&t.host, dk.path());
    d.restart(&t.host);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = checker.join().unwrap();
    assert!(
        runs.len() > 5,
        "the drift checks did not overlap dockerd: {}",
        runs.len()
    );
    for (stderr, _, code) in &runs {
        assert_eq!(
            *code, 0,
            "a drift check failed while dockerd started:\n{stderr}"
        );
        assert!(
            !stderr.contains("removed it"),
            "a drift check removed a rule while dockerd started:\n{stderr}"
        );
    }

    // dockerd is up: its rules are all there, and drift finds nothing, twice.
    let before = foreign(&t.host);
    assert!(
        before
            .iter()
            .any(|l| l == "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT"),
        "{before:?}"
    );
    for _ in 0..2 {
        let (stderr, changed, code) = drift(t.host.name(), root.path());
        assert_eq!(code, 0, "{stderr}");
        assert!(
            !changed && stderr.trim().is_empty(),
            "drift after dockerd is up: {stderr}"
        );
    }
    assert_eq!(foreign(&t.host), before);
    assert_eq!(forward(&t.host)[0], JUMP);
    assert_eq!(count(&t.host.rules(IPTABLES), RULE4), 1);
    assert_blocked(&t.ctr, IMDS4, "after dockerd started under drift checks");
    assert_reaches(&t.ctr, OTHER4, "dockerd's ACCEPT rules");
}

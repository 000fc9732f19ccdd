//! Network namespaces for the firewall tests: a "host" with a docker0 bridge, a "container" on
//! it, and a "services" namespace that owns 169.254.169.254, fd00:ec2::254 and an unrelated
//! address (198.51.100.10), each with a TCP listener on port 80. Everything lives in namespaces
//! the test creates (`ebs-fw-<pid>-<n>-*`) and is deleted by Drop guards; iptables only ever
//! runs inside them.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ecs-bootstrap");
pub const IMDS4: &str = "169.254.169.254";
pub const IMDS6: &str = "fd00:ec2::254";
pub const OTHER4: &str = "198.51.100.10";
pub const NFT: &str = "/usr/sbin/iptables-nft";
pub const LEGACY: &str = "/usr/sbin/iptables-legacy";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Tests need root (namespaces, iptables): fail, never skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the firewall tests create network namespaces and need root; run them as root"
    );
}

pub fn sh(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

pub fn must(program: &str, args: &[&str]) -> String {
    let o = sh(program, args);
    assert!(
        o.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
pub struct Ns(pub String);

impl Ns {
    pub fn new(tag: &str) -> Ns {
        require_root();
        let name = format!(
            "ebs-fw-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        must("ip", &["netns", "add", &name]);
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.name()];
        a.extend_from_slice(args);
        must("ip", &a);
    }

    /// Runs a program inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut a = vec!["netns", "exec", self.name(), program];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        let o = self.exec(program, args);
        assert!(
            o.status.success(),
            "`{program} {}` in {} failed: {}",
            args.join(" "),
            self.name(),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a program inside the namespace with `input` on stdin.
    pub fn exec_stdin(&self, program: &str, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.name(), program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/run/netns").join(self.name());
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// `iptables -S` lines from `bin` in this namespace (for the table `filter`).
    pub fn rules(&self, bin: &str) -> Vec<String> {
        self.exec_ok(bin, &["-w", "10", "-S"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.0]);
    }
}

/// host + container + services, wired as on an ECS instance.
pub struct Topo {
    pub host: Ns,
    pub ctr: Ns,
    /// Held so that the services namespace lives as long as the topology.
    _svc: Ns,
    _listeners: Vec<TcpListener>,
}

impl Topo {
    pub fn new() -> Topo {
        let host = Ns::new("h");
        let ctr = Ns::new("c");
        let svc = Ns::new("s");
        // Bridge and container.
        host.ip(&["link", "add", "docker0", "type", "bridge"]);
        host.ip(&["addr", "add", "172.17.0.1/16", "dev", "docker0"]);
        host.ip(&["addr", "add", "fd00:d0c::1/64", "dev", "docker0", "nodad"]);
        host.ip(&["link", "set", "docker0", "up"]);
        host.ip(&[
            "link",
            "add",
            "vethc",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ctr.name(),
        ]);
        host.ip(&["link", "set", "vethc", "master", "docker0", "up"]);
        ctr.ip(&["addr", "add", "172.17.0.2/16", "dev", "eth0"]);
        ctr.ip(&["addr", "add", "fd00:d0c::2/64", "dev", "eth0", "nodad"]);
        ctr.ip(&["link", "set", "eth0", "up"]);
        ctr.ip(&["route", "add", "default", "via", "172.17.0.1"]);
        ctr.ip(&["-6", "route", "add", "default", "via", "fd00:d0c::1"]);
        services(&host, &svc);
        host.exec_ok(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        );
        let listeners = svc.within(|| {
            [IMDS4, OTHER4, IMDS6]
                .iter()
                .map(|a| {
                    let ip: IpAddr = a.parse().unwrap();
                    TcpListener::bind(SocketAddr::new(ip, 80)).expect("bind listener")
                })
                .collect::<Vec<_>>()
        });
        Topo {
            host,
            ctr,
            _svc: svc,
            _listeners: listeners,
        }
    }
}

/// The services namespace: IMDS (v4 and v6) and another address, reached through the host.
fn services(host: &Ns, svc: &Ns) {
    host.ip(&[
        "link",
        "add",
        "imds0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        svc.name(),
    ]);
    host.ip(&["addr", "add", "10.200.0.1/24", "dev", "imds0"]);
    host.ip(&["addr", "add", "fd00:99::1/64", "dev", "imds0", "nodad"]);
    host.ip(&["link", "set", "imds0", "up"]);
    for a in ["10.200.0.2/24", "169.254.169.254/32", "198.51.100.10/32"] {
        svc.ip(&["addr", "add", a, "dev", "eth0"]);
    }
    for a in ["fd00:99::2/64", "fd00:ec2::254/128"] {
        svc.ip(&["addr", "add", a, "dev", "eth0", "nodad"]);
    }
    svc.ip(&["link", "set", "eth0", "up"]);
    svc.ip(&["route", "add", "default", "via", "10.200.0.1"]);
    svc.ip(&["-6", "route", "add", "default", "via", "fd00:99::1"]);
    host.ip(&["route", "add", "169.254.169.254/32", "via", "10.200.0.2"]);
    host.ip(&["route", "add", "198.51.100.10/32", "via", "10.200.0.2"]);
    host.ip(&[
        "-6",
        "route",
        "add",
        "fd00:ec2::254/128",
        "via",
        "fd00:99::2",
    ]);
}

impl Default for Topo {
    fn default() -> Self {
        Topo::new()
    }
}

/// Whether a TCP connection from `ns` to `addr`:80 completes within `timeout`.
pub fn reaches(ns: &Ns, addr: &str, timeout: Duration) -> bool {
    let ip: IpAddr = addr.parse().unwrap();
    ns.within(move || TcpStream::connect_timeout(&SocketAddr::new(ip, 80), timeout).is_ok())
}

/// Reachable: up to 5 s (covers neighbour discovery and a SYN retransmit).
pub fn assert_reaches(ns: &Ns, addr: &str, why: &str) {
    assert!(
        reaches(ns, addr, Duration::from_secs(5)),
        "{} should reach {addr}:80 ({why})",
        ns.name()
    );
}

/// Blocked: no connection within 1.5 s (a DROP never answers).
pub fn assert_blocked(ns: &Ns, addr: &str, why: &str) {
    assert!(
        !reaches(ns, addr, Duration::from_millis(1500)),
        "{} must not reach {addr}:80 ({why})",
        ns.name()
    );
}

/// The result of running the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: serde_json::Value,
}

impl Run {
    pub fn step(&self) -> &serde_json::Value {
        &self.json["steps"][0]
    }
    pub fn changed(&self) -> bool {
        self.step()["changed"].as_bool().unwrap()
    }
    pub fn text(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }
}

/// `ip netns exec NS ecs-bootstrap --output json block-imds --root ROOT --iptables BIN ...`.
pub fn block(ns: &Ns, root: &Path, iptables: &str, extra: &[&str]) -> Run {
    let root_s = root.to_str().unwrap();
    let mut args = vec![
        "--output",
        "json",
        "--deadline",
        "60",
        "block-imds",
        "--root",
        root_s,
        "--iptables",
        iptables,
    ];
    args.extend_from_slice(extra);
    let o = ns.exec(BIN, &args);
    parse_run(o)
}

pub fn parse_run(o: Output) -> Run {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout,
        stderr,
        json,
    }
}

/// `--persist-file ROOT/rules.v4 --persist-file6 ROOT/rules.v6` as owned strings.
pub fn files(root: &Path) -> (String, String) {
    (
        root.join("rules.v4").to_str().unwrap().to_owned(),
        root.join("rules.v6").to_str().unwrap().to_owned(),
    )
}

/// The ip6tables / -restore siblings of an iptables binary path.
pub fn six(bin: &str) -> String {
    bin.replace("iptables", "ip6tables")
}

pub fn restore_bin(bin: &str) -> String {
    format!("{bin}-restore")
}

pub fn count(lines: &[String], want: &str) -> usize {
    lines.iter().filter(|l| *l == want).count()
}

pub const RULE4: &str =
    "-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP";
pub const RULE6: &str =
    "-A DOCKER-USER -d fd00:ec2::254/128 -i docker+ -m comment --comment ecs-bootstrap -j DROP";
/// The rule as the rules file holds it.
pub const FILE_RULE4: &str =
    "-I DOCKER-USER 1 -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP";
pub const FILE_JUMP: &str = "-I FORWARD 1 -j DOCKER-USER";
/// The rule `--chain FORWARD` puts in FORWARD.
pub const FWD_RULE4: &str =
    "-A FORWARD -d 169.254.169.254/32 -i docker+ -m comment --comment ecs-bootstrap -j DROP";
/// The AWS documentation's rule, as `iptables -S` prints it.
pub const SEED4: &str = "-A FORWARD -d 169.254.169.254/32 -i docker+ -j DROP";
pub const JUMP: &str = "-A FORWARD -j DOCKER-USER";

/// Replays the FORWARD layout dockerd writes when it starts, in the host namespace: its chains,
/// its rules inserted at the top of FORWARD, then (as dockerd's ensureJumpRule does) the
/// DOCKER-USER jump deleted and re-inserted first, and the FORWARD policy DROP.
pub fn replay_dockerd(host: &Ns, bin: &str, version: DockerLayout) {
    let ipt = |line: &str| {
        let mut a = vec!["-w", "10"];
        a.extend(line.split_whitespace());
        host.exec(bin, &a)
    };
    let ok = |lines: &[&str]| {
        for line in lines {
            let o = ipt(line);
            assert!(
                o.status.success(),
                "replay `{bin} {line}`: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    };
    // `-N` of an existing chain fails, as for dockerd, which ignores it.
    let _ = ipt("-N DOCKER-USER");
    match version {
        DockerLayout::V20To27 => ok(&[
            "-N DOCKER",
            "-N DOCKER-ISOLATION-STAGE-1",
            "-N DOCKER-ISOLATION-STAGE-2",
            "-A DOCKER-USER -j RETURN",
            "-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2",
            "-A DOCKER-ISOLATION-STAGE-1 -j RETURN",
            "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP",
            "-A DOCKER-ISOLATION-STAGE-2 -j RETURN",
            // Inserted at the top, bottom rule first, so the final order is dockerd's.
            "-I FORWARD -i docker0 -o docker0 -j ACCEPT",
            "-I FORWARD -i docker0 ! -o docker0 -j ACCEPT",
            "-I FORWARD -o docker0 -j DOCKER",
            "-I FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-I FORWARD -j DOCKER-ISOLATION-STAGE-1",
        ]),
        DockerLayout::V28 => ok(&[
            "-N DOCKER-FORWARD",
            "-A DOCKER-FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A DOCKER-FORWARD -i docker0 -j ACCEPT",
            "-I FORWARD -j DOCKER-FORWARD",
        ]),
    }
    // ensureJumpRule: delete when present, insert at the top.
    let _ = ipt("-D FORWARD -j DOCKER-USER");
    ok(&["-I FORWARD -j DOCKER-USER", "-P FORWARD DROP"]);
}

#[derive(Debug, Clone, Copy)]
pub enum DockerLayout {
    /// dockerd 20.10 to 27: ACCEPT rules for docker0 directly in FORWARD.
    V20To27,
    /// dockerd 28.x: `-j DOCKER-FORWARD` holding `-i docker0 -j ACCEPT`.
    V28,
}

/// Packets our DROP rules (those with the `ecs-bootstrap` comment) have dropped, from
/// `iptables -S -v` in `ns`: the proof that a blocked probe met our rule and not something else.
pub fn drop_count(ns: &Ns, bin: &str) -> u64 {
    ns.exec_ok(bin, &["-w", "10", "-t", "filter", "-S", "-v"])
        .lines()
        .filter(|l| l.contains("--comment ecs-bootstrap ") && l.ends_with("-j DROP"))
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let c = t.iter().position(|w| *w == "-c")?;
            t.get(c + 1)?.parse::<u64>().ok()
        })
        .sum()
}

/// The container is blocked from IPv4 IMDS and our rule dropped the probe (its counter rose),
/// while it still reaches another address through the same bridge (the control).
#[track_caller]
pub fn assert_blocked_by_us(t: &Topo, bin: &str, why: &str) {
    let before = drop_count(&t.host, bin);
    assert_blocked(&t.ctr, IMDS4, why);
    let after = drop_count(&t.host, bin);
    assert!(
        after > before,
        "our DROP rule's counter did not rise ({before} -> {after}): {why}"
    );
    assert_reaches(&t.ctr, OTHER4, &format!("control: {why}"));
}

/// The `-A CHAIN` lines of a listing.
pub fn chain_of<'a>(rules: &'a [String], chain: &str) -> Vec<&'a str> {
    let p = format!("-A {chain} ");
    rules
        .iter()
        .filter(|l| l.starts_with(&p))
        .map(String::as_str)
        .collect()
}

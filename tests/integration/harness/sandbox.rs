//! Test harness: runs the real `ecs-bootstrap` binary inside a sandbox of real peers
//! (`tests/sandbox/sandbox.py`): network namespaces with a docker0 bridge, a "container" on
//! it, moto (S3/IAM/STS with authentication on), our IMDSv2 emulator and a fault proxy.
//!
//! Sandbox tests need root and namespaces. They fail (never skip) when they cannot run.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ecs-bootstrap");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fails the test, loudly, when it cannot do what it needs (no silent skip).
pub fn require_root() {
    let uid = nix::unistd::geteuid();
    assert!(
        uid.is_root(),
        "this test needs root and network namespaces: run the suite as root (sudo tests/run.sh)"
    );
}

/// The sandbox's Python (with moto and boto3): `$ECS_BOOTSTRAP_PYTHON`, or the venv that
/// `tests/sandbox/venv.sh` makes.
pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        if let Ok(p) = std::env::var("ECS_BOOTSTRAP_PYTHON") {
            return p;
        }
        let out = Command::new("bash")
            .arg(repo().join("tests/sandbox/venv.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/sandbox/venv.sh");
        assert!(out.status.success(), "tests/sandbox/venv.sh failed");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

fn unique_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("{:06x}{:02x}", std::process::id() & 0xff_ffff, n & 0xff)
}

/// One finished run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// stdout and stderr together, for assertions on messages.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn assert_contains(&self, needle: &str) -> &Self {
        assert!(
            self.all().contains(needle),
            "output lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// How many fetch attempts failed and were logged (one line each).
    pub fn fetch_attempts_failed(&self) -> usize {
        self.stderr.matches("fetch attempt failed").count()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// A run on a tmpfs ([`Sandbox::run_on_tmpfs`]): the run, and the destination's content and
/// folder listing afterwards.
#[derive(Debug)]
pub struct OnTmpfs {
    pub run: Run,
    pub file: String,
    pub ls: String,
}

/// Runs `f` and measures how long it took: for the bound a deadline puts on the process.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = std::time::Instant::now();
    let out = f();
    (out, start.elapsed())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    Host,
    Ctr,
    Svc,
}

/// A live sandbox; torn down on drop (also when the test panics).
pub struct Sandbox {
    pub name: String,
    pub state: Value,
    /// A temporary folder used as `--root`: ecs.config, rules files and /run live under it.
    pub root: tempfile::TempDir,
}

impl Sandbox {
    pub fn up() -> Sandbox {
        Sandbox::up_with(&[])
    }

    /// `flags` are passed to `sandbox.py up` (for example `--imdsv1`, `--no-profile`).
    pub fn up_with(flags: &[&str]) -> Sandbox {
        require_root();
        let name = unique_name();
        let out = Command::new(python())
            .arg(repo().join("tests/sandbox/sandbox.py"))
            .arg("up")
            .arg(&name)
            .args(flags)
            .stderr(Stdio::piped())
            .output()
            .expect("run sandbox.py up");
        assert!(
            out.status.success(),
            "sandbox.py up {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let state: Value = serde_json::from_slice(&out.stdout).expect("sandbox state is JSON");
        let root = tempfile::Builder::new()
            .prefix("ebs-root-")
            .tempdir()
            .expect("temp root");
        Sandbox { name, state, root }
    }

    pub fn ns(&self, ns: Ns) -> &str {
        let key = match ns {
            Ns::Host => "host",
            Ns::Ctr => "ctr",
            Ns::Svc => "svc",
        };
        self.state["namespaces"][key].as_str().unwrap()
    }

    pub fn s(&self, key: &str) -> String {
        self.state[key]
            .as_str()
            .unwrap_or_else(|| panic!("state has no {key}"))
            .to_owned()
    }

    /// `s3://BUCKET/ecs.config`
    pub fn source(&self) -> String {
        format!("s3://{}/{}", self.s("bucket"), self.s("key"))
    }

    /// The default destination under the root.
    pub fn dest(&self) -> PathBuf {
        self.root.path().join("etc/ecs/ecs.config")
    }

    pub fn persist_file(&self) -> PathBuf {
        self.root.path().join("etc/sysconfig/iptables")
    }

    /// The binary in the host namespace, with a clean environment: no AWS keys, S3 at moto,
    /// IMDS at its real address (which exists only inside the sandbox), `--root` in a temp dir.
    pub fn cmd(&self) -> Command {
        self.cmd_s3(&self.s("s3_endpoint"))
    }

    /// As [`Sandbox::cmd`], with S3 behind another endpoint (the fault proxy).
    pub fn cmd_s3(&self, s3_endpoint: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(Ns::Host), BIN])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("AWS_ENDPOINT_URL_S3", s3_endpoint)
            .env("ECS_BOOTSTRAP_ROOT", self.root.path())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().expect("run ecs-bootstrap"))
    }

    /// As [`Sandbox::run`], with S3 at `s3_endpoint` (moto, or the fault proxy in front of it).
    pub fn run_s3<S: AsRef<std::ffi::OsStr>>(&self, s3_endpoint: &str, args: &[S]) -> Run {
        Sandbox::run_cmd({
            let mut c = self.cmd_s3(s3_endpoint);
            c.args(args);
            c
        })
    }

    /// Puts `content` at the default destination: the previous ecs.config of a case.
    pub fn write_dest(&self, content: &str) {
        let d = self.dest();
        std::fs::create_dir_all(d.parent().unwrap()).unwrap();
        std::fs::write(&d, content).unwrap();
    }

    /// Runs the binary with `args` (shell words; `$SRC` is the source) with the destination
    /// folder on a 16 KiB tmpfs holding `old` as ecs.config, after the shell `prepare` ran
    /// there (`$D` is the folder). The tmpfs is mounted in the run's private mount namespace,
    /// invisible to the test: the script prints the file and the folder's listing afterwards.
    pub fn run_on_tmpfs(&self, old: &str, prepare: &str, args: &str) -> OnTmpfs {
        let dir = self.dest().parent().unwrap().to_owned();
        std::fs::create_dir_all(&dir).unwrap();
        let run = self.host_script(
            &self.s("s3_endpoint"),
            &format!(
                "set -e; D={d}; mount -t tmpfs -o size=16k,mode=0755 ebs-test \"$D\"; \
                 printf '%s' '{old}' > \"$D/ecs.config\"; {prepare}; set +e; \"$BIN\" {args}; rc=$?; \
                 echo '--- file'; cat \"$D/ecs.config\"; echo '--- ls'; ls -A \"$D\"; exit $rc",
                d = dir.display(),
            ),
        );
        let after = run
            .stdout
            .split("--- file\n")
            .nth(1)
            .expect("the script printed the file")
            .to_owned();
        let (file, ls) = after.split_once("--- ls\n").unwrap();
        let (file, ls) = (file.to_owned(), ls.to_owned());
        OnTmpfs { run, file, ls }
    }

    pub fn run_cmd(mut cmd: Command) -> Run {
        Run::from(cmd.output().expect("run ecs-bootstrap"))
    }

    /// A shell script in the host namespace, in the private mount namespace `ip netns exec`
    /// makes (mounts made by the script stay inside it), with the binary's clean environment
    /// plus `BIN` (the binary), `SRC` (the source URL) and `ROOT` (the temp root). For faults
    /// that need mounts (a full or read-only disk, a private /run, a hidden /usr/sbin).
    pub fn host_script(&self, s3_endpoint: &str, script: &str) -> Run {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(Ns::Host), "sh", "-c", script])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("AWS_ENDPOINT_URL_S3", s3_endpoint)
            .env("ECS_BOOTSTRAP_ROOT", self.root.path())
            .env("BIN", BIN)
            .env("SRC", self.source())
            .env("ROOT", self.root.path())
            .stdin(Stdio::null());
        Sandbox::run_cmd(c)
    }

    /// A command inside one of the sandbox's namespaces.
    pub fn exec(&self, ns: Ns, argv: &[&str]) -> Run {
        Run::from(
            Command::new("ip")
                .args(["netns", "exec", self.ns(ns)])
                .args(argv)
                .stdin(Stdio::null())
                .output()
                .expect("ip netns exec"),
        )
    }

    /// Whether `ns` gets an HTTP answer from IMDS (a token PUT) within 2 seconds.
    pub fn reaches_imds(&self, ns: Ns, v6: bool) -> bool {
        let url = if v6 {
            "http://[fd00:ec2::254]/latest/api/token"
        } else {
            "http://169.254.169.254/latest/api/token"
        };
        let r = self.exec(
            ns,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "2",
                "-X",
                "PUT",
                "-H",
                "X-aws-ec2-metadata-token-ttl-seconds: 60",
                url,
            ],
        );
        r.stdout.trim() == "200"
    }

    /// Cuts the host itself off from IPv4 IMDS: a DROP on the host namespace's OUTPUT chain.
    pub fn cut_host_from_imds(&self) {
        let r = self.exec(
            Ns::Host,
            &[
                "iptables",
                "-w",
                "5",
                "-I",
                "OUTPUT",
                "-d",
                "169.254.169.254",
                "-j",
                "DROP",
            ],
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);
    }

    /// `iptables -S` (or another binary) in the host namespace.
    pub fn rules(&self, bin: &str) -> String {
        let r = self.exec(Ns::Host, &[bin, "-w", "5", "-S"]);
        assert_eq!(r.code, Some(0), "{bin} -S failed: {}", r.stderr);
        r.stdout
    }

    /// Number of rules dropping traffic to IPv4 IMDS.
    pub fn drop_rules(&self, bin: &str) -> usize {
        self.rules(bin)
            .lines()
            .filter(|l| l.contains("169.254.169.254/32") && l.contains("-j DROP"))
            .count()
    }

    /// Uploads an object as admin; returns its version id.
    pub fn put(&self, key: &str, data: &[u8]) -> String {
        self.put_with(key, data, &[])["version_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Uploads an object as admin with `sandbox.py put` flags (`--kms`); returns its answer
    /// (`version_id`, `etag`, `kms_key_arn`).
    pub fn put_with(&self, key: &str, data: &[u8], flags: &[&str]) -> Value {
        let f = self.root.path().join(format!(".upload-{key}"));
        std::fs::write(&f, data).unwrap();
        let out = Command::new(python())
            .arg(repo().join("tests/sandbox/sandbox.py"))
            .args(["put", &self.name, key])
            .arg(&f)
            .args(flags)
            .output()
            .expect("sandbox.py put");
        std::fs::remove_file(&f).ok();
        assert!(
            out.status.success(),
            "put failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Replaces the IMDS emulator's control knobs (see tests/sandbox/README.md).
    pub fn imds_control(&self, knobs: Value) {
        let mut base = json!({"imdsv1": false, "profile": true, "tags": null});
        for (k, v) in knobs.as_object().unwrap() {
            base[k] = v.clone();
        }
        write_json(Path::new(&self.s("imds_control")), &base);
    }

    /// Replaces the fault proxy's plan (see tests/sandbox/README.md).
    pub fn proxy_control(&self, plan: Value) {
        write_json(Path::new(&self.s("proxy_control")), &plan);
    }

    /// The IMDS emulator's request log, once settled (see [`settled`]).
    pub fn imds_requests(&self) -> Vec<Value> {
        settled(|| read_jsonl(&self.s("imds_log")))
    }

    /// The IMDS requests made without a token (IMDSv1), after the first `since` of the log.
    pub fn tokenless_requests(&self, since: usize) -> Vec<Value> {
        self.imds_requests()
            .into_iter()
            .skip(since)
            .filter(|q| q["method"] == "GET" && q["token"] == false)
            .collect()
    }

    pub fn token_puts(&self) -> usize {
        self.imds_requests()
            .iter()
            .filter(|r| r["method"] == "PUT" && r["path"] == "/latest/api/token")
            .count()
    }

    /// The fault proxy's request log, once settled (see [`settled`]).
    pub fn proxy_requests(&self) -> Vec<Value> {
        settled(|| read_jsonl(&self.s("proxy_log")))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new(python())
            .arg(repo().join("tests/sandbox/sandbox.py"))
            .args(["down", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A request log once it has settled: the proxy and the emulator write a request's line after
/// the answer is sent, so a line may come just after the binary exits. Polls until the length
/// has not changed for 300 ms (bounded: 3 s).
pub fn settled(read: impl Fn() -> Vec<Value>) -> Vec<Value> {
    let start = std::time::Instant::now();
    let mut last = read();
    let mut stable_since = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
        let now = read();
        if now.len() != last.len() {
            last = now;
            stable_since = std::time::Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
    }
    last
}

/// Seconds since the epoch, for the emulators' time-based controls (`unavailable_until`,
/// `profile_from`).
pub fn now_epoch() -> u64 {
    now_epoch_f64() as u64
}

pub fn now_epoch_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

pub fn write_json(path: &Path, v: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(v).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn read_jsonl(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Files in `dir` whose name marks them as our temporary files.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().contains("tmp"))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Waits (bounded) for `cond`.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

//! Log priorities as the journal reads them. Under systemd, when stderr is the journal stream
//! (`JOURNAL_STREAM` names its device and inode, as systemd sets it), every log line starts
//! with the syslog prefix journald reads: `<3>` error, `<4>` warning, `<6>` info, `<7>` debug.
//! Read two ways: from the prefixes on stderr, and back from a real systemd-journald (in a
//! mount and PID namespace of the test's own) with `journalctl -p`, each with a control.
//!
//! And the console (what `aws ec2 get-console-output` shows): a unit's stdout and stderr
//! connected to journald as systemd connects them for the unit file's `StandardOutput=` and
//! `StandardError=`, journald's console a pseudo-terminal the test reads.
//!
//! One run logs at each priority without any peer: a stale temporary file beside the
//! destination (info: removed), `LOG_SENSITIVE_BODIES` (warning), and an IMDS on a loopback
//! port nobody listens on, so the config step fails (error).

use crate::harness::sandbox::*;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

const WARNING: &str = "LOG_SENSITIVE_BODIES is set and ignored";
const INFO: &str = "removed a temporary file left by an interrupted run";
const ERROR: &str = "nothing was written";

/// The run's command line, in `dir` (with a stale temporary file of a killed run in it).
fn scenario(dir: &Path) -> Vec<String> {
    let stale = dir.join(".ecs.config.ecs-bootstrap-tmp.99999");
    std::fs::write(&stale, "x").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let d = dir.to_str().unwrap();
    [
        BIN,
        "fetch-config",
        "--root",
        d,
        "--source",
        "s3://ebs-logtest/ecs.config",
        "--dest",
        &format!("{d}/ecs.config"),
        "--deadline",
        "2",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn command(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LOG_SENSITIVE_BODIES", "1")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// Where `JOURNAL_STREAM` points.
enum Stream {
    /// At the pipe that is stderr, as systemd sets it.
    Stderr,
    /// At another pipe: stderr was redirected away from the journal.
    Elsewhere,
}

/// Runs `argv` with stderr on a pipe of ours and `JOURNAL_STREAM` set; its exit code and stderr.
fn run_stderr(argv: &[String], extra: &[&str], stream: Stream) -> (Option<i32>, String) {
    let pipe_file = |w: std::io::PipeWriter| std::fs::File::from(std::os::fd::OwnedFd::from(w));
    let (mut reader, writer) = std::io::pipe().unwrap();
    let writer = pipe_file(writer);
    let (_other_r, other_w) = std::io::pipe().unwrap();
    let other_w = pipe_file(other_w);
    let named = match stream {
        Stream::Stderr => writer.metadata().unwrap(),
        Stream::Elsewhere => other_w.metadata().unwrap(),
    };
    let mut cmd = command(argv);
    cmd.args(extra)
        .env("JOURNAL_STREAM", format!("{}:{}", named.dev(), named.ino()))
        .stderr(Stdio::from(writer));
    let mut child = cmd.spawn().expect("spawn ecs-bootstrap");
    drop(cmd);
    let mut err = String::new();
    reader.read_to_string(&mut err).unwrap();
    (child.wait().unwrap().code(), err)
}

/// The lines of `text` containing `needle`.
fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn under_systemd_each_line_on_stderr_carries_its_priority() {
    let dir = tempfile::tempdir().unwrap();
    let argv = scenario(dir.path());
    let (code, err) = run_stderr(&argv, &["-vv"], Stream::Stderr);
    // 3 (the fetch failed) or 7 (IMDS out of reach), as the time left decides: a failure.
    assert!(matches!(code, Some(3 | 7)), "a failed run: {code:?}\n{err}");
    for (needle, prefix) in [
        (WARNING, "<4>WARN "),
        (INFO, "<6>INFO "),
        (ERROR, "<3>ERROR "),
    ] {
        let found = lines_with(&err, needle);
        assert!(!found.is_empty(), "no line with {needle:?}:\n{err}");
        assert!(
            found.iter().all(|l| l.starts_with(prefix)),
            "{needle:?} not at {prefix}: {found:?}"
        );
    }
    assert!(
        err.lines()
            .any(|l| l.starts_with("<7>DEBUG ") || l.starts_with("<7>TRACE ")),
        "-vv: debug lines at <7>:\n{err}"
    );
    let bare: Vec<&str> = err
        .lines()
        .filter(|l| {
            !["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    assert!(bare.is_empty(), "lines without a priority: {bare:?}");

    // Control: the same run with JOURNAL_STREAM naming another stream (stderr redirected away
    // from the journal): the same lines, no prefix.
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_stderr(&scenario(dir.path()), &[], Stream::Elsewhere);
    assert!(matches!(code, Some(3 | 7)), "{code:?}\n{err}");
    for needle in [WARNING, INFO, ERROR] {
        assert!(!lines_with(&err, needle).is_empty(), "{needle:?}:\n{err}");
    }
    assert!(!err.contains('<'), "a prefix off the journal:\n{err}");

    // JSON: never a prefix, every line one JSON document with its level, also on the journal.
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_stderr(
        &scenario(dir.path()),
        &["--log-format", "json"],
        Stream::Stderr,
    );
    assert!(matches!(code, Some(3 | 7)), "{code:?}\n{err}");
    let levels: Vec<String> = err
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            v["level"].as_str().unwrap().to_owned()
        })
        .collect();
    for level in ["WARN", "INFO", "ERROR"] {
        assert!(levels.iter().any(|l| l == level), "{level}: {err}");
    }
}

/// A real systemd-journald, private to the test: tmpfs over its sockets and journal folders
/// in a new mount namespace, and a new PID namespace whose end ends journald too. The run is
/// connected to a journal stream as systemd connects a service (systemd-cat, with
/// `JOURNAL_STREAM` set to that stream, as systemd sets it); the control run has no
/// `JOURNAL_STREAM`: without the prefix, journald stores every line at info.
const JOURNAL_SCRIPT: &str = r#"
set -euo pipefail
for d in /run/systemd /run/log /var/log/journal; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
mkdir -p /run/systemd/journal
SYSTEMD_LOG_TARGET=console /lib/systemd/systemd-journald 2>"$WORK/journald.log" &
for _ in $(seq 100); do [[ -S /run/systemd/journal/stdout ]] && break; sleep 0.05; done
[[ -S /run/systemd/journal/stdout ]] || { echo "journald did not start: $(cat "$WORK/journald.log")" >&2; exit 1; }
systemd-cat -t ebs-logtest --level-prefix=true \
    sh -c 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && export JOURNAL_STREAM && exec "$@"' sh "$@" || true
systemd-cat -t ebs-logtest-control --level-prefix=true \
    sh -c 'unset JOURNAL_STREAM; exec "$@"' sh "$@" || true
journalctl --sync
for id in ebs-logtest ebs-logtest-control; do
    for p in err warning info; do
        echo "== $id -p $p"
        journalctl --no-pager -q -o cat -p "$p" -t "$id"
    done
done
"#;

/// Each section of the script's output: `== ID -p PRIORITY` and the messages.
fn section<'a>(out: &'a str, id: &str, priority: &str) -> Vec<&'a str> {
    let head = format!("== {id} -p {priority}");
    out.lines()
        .skip_while(|l| *l != head)
        .skip(1)
        .take_while(|l| !l.starts_with("== "))
        .collect()
}

#[test]
fn journalctl_shows_errors_at_err_and_warnings_at_warning() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let argv = scenario(dir.path());
    let out = Command::new("timeout")
        .args([
            "60",
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
        ])
        .args(["bash", "-c", JOURNAL_SCRIPT, "journal"])
        .args(&argv)
        .env("WORK", dir.path())
        .env("LOG_SENSITIVE_BODIES", "1")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1")
        .env_remove("JOURNAL_STREAM")
        .output()
        .expect("run the journal script");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |lines: &[&str], needle: &str| lines.iter().any(|l| l.contains(needle));

    let err = section(&text, "ebs-logtest", "err");
    let warning = section(&text, "ebs-logtest", "warning");
    let info = section(&text, "ebs-logtest", "info");
    assert!(has(&err, ERROR), "-p err shows the error:\n{text}");
    assert!(
        !has(&err, WARNING),
        "-p err leaves the warning out:\n{text}"
    );
    assert!(
        has(&warning, ERROR) && has(&warning, WARNING),
        "-p warning shows both:\n{text}"
    );
    assert!(!has(&warning, INFO), "-p warning leaves info out:\n{text}");
    assert!(has(&info, INFO), "-p info shows the info line:\n{text}");
    // The report on stdout has no prefix: info.
    assert!(
        has(&info, "failed in") && !has(&warning, "failed in"),
        "the report at info:\n{text}"
    );
    assert!(
        !info.iter().any(|l| l.starts_with('<')),
        "journald strips the prefix:\n{text}"
    );

    // Control: without JOURNAL_STREAM (no prefix) everything lands at info.
    let c_warning = section(&text, "ebs-logtest-control", "warning");
    let c_info = section(&text, "ebs-logtest-control", "info");
    assert!(
        has(&c_info, ERROR) && has(&c_info, WARNING),
        "the control run logged:\n{text}"
    );
    assert!(c_warning.is_empty(), "control: nothing at warning:\n{text}");
}

/// A unit's stdout and stderr as systemd connects them: a stream to journald each, with the
/// header systemd sends (identifier, unit, priority, level prefix, forward to syslog, kmsg,
/// console), `JOURNAL_STREAM` naming stderr's; journald's console (`TTYPath=`) a pty whose
/// other side the script reads. Arguments: the forward-to-console flags for stdout and stderr,
/// then the command.
const CONSOLE_SCRIPT: &str = r#"
import os, pty, select, socket, subprocess, sys, time
for d in ["/run/systemd", "/run/log", "/var/log/journal", "/etc/systemd/journald.conf.d"]:
    os.makedirs(d, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", d], check=True)
os.makedirs("/run/systemd/journal")
master, slave = pty.openpty()
with open("/etc/systemd/journald.conf.d/console.conf", "w") as f:
    f.write("[Journal]\nTTYPath=%s\n" % os.ttyname(slave))
env = dict(os.environ, SYSTEMD_LOG_TARGET="console")
journald = subprocess.Popen(["/lib/systemd/systemd-journald"], env=env, stderr=subprocess.DEVNULL)
for _ in range(100):
    if os.path.exists("/run/systemd/journal/stdout"):
        break
    time.sleep(0.05)
else:
    sys.exit("journald did not start")
def stream(console):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("/run/systemd/journal/stdout")
    s.sendall(("ecs-bootstrap-config\n\n6\n1\n0\n0\n%s\n" % console).encode())
    return s
out, err = stream(sys.argv[1]), stream(sys.argv[2])
st = os.fstat(err.fileno())
child_env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
subprocess.run(sys.argv[3:], stdout=out.fileno(), stderr=err.fileno(), env=child_env, stdin=subprocess.DEVNULL)
out.close()
err.close()
time.sleep(0.5)
data = b""
while select.select([master], [], [], 0.3)[0]:
    data += os.read(master, 65536)
sys.stdout.write(data.decode(errors="replace"))
journald.kill()
"#;

/// `KEY=`'s value in a unit file's lines, once.
fn unit_setting(unit: &str, key: &str) -> String {
    let values: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect();
    assert_eq!(values.len(), 1, "{key}= in the unit: {values:?}");
    values[0].to_owned()
}

/// The config unit's outcome and, on failure, the reason reach the console; the log lines do
/// not (they stay in the journal). The flags come from the unit file as the packages ship it.
/// The control: the same run with both streams forwarded puts the log lines there too, so
/// their absence is the unit's setting, not the console dropping them.
#[test]
fn the_console_shows_the_report_and_not_the_log_lines() {
    require_root();
    let unit =
        std::fs::read_to_string(repo().join("systemd/ecs-bootstrap-config.service")).unwrap();
    let flag = |key: &str| match unit_setting(&unit, key).as_str() {
        "journal+console" => "1",
        "journal" => "0",
        other => panic!("{key}={other}: not a journal stream"),
    };
    let console = |stdout: &str, stderr: &str| {
        let dir = tempfile::tempdir().unwrap();
        let argv = scenario(dir.path());
        let out = Command::new("timeout")
            .args([
                "60",
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
            ])
            .args([python(), "-c", CONSOLE_SCRIPT, stdout, stderr])
            .args(&argv)
            .env("LOG_SENSITIVE_BODIES", "1")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
            .env("AWS_REGION", "us-east-1")
            .env_remove("JOURNAL_STREAM")
            .output()
            .expect("run the console script");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let text = console(flag("StandardOutput"), flag("StandardError"));
    let line = |needle: &str| {
        text.lines()
            .any(|l| l.contains("ecs-bootstrap-config[") && l.contains(needle))
    };
    assert!(line("config    FAILED"), "the step's outcome:\n{text}");
    assert!(line("error: nothing was written"), "the reason:\n{text}");
    assert!(
        line("failed in") && (line("(exit 3)") || line("(exit 7)")),
        "the run's outcome:\n{text}"
    );
    for log in [WARNING, INFO] {
        assert!(!line(log), "a log line on the console ({log}):\n{text}");
    }

    let both = console("1", "1");
    assert!(
        both.contains(WARNING) && both.contains(INFO),
        "control: log lines forwarded reach this console:\n{both}"
    );
}

/// A command line the parser rejects (an operator's drop-in with `--deadline 1m`, an
/// unknown flag) under systemd: the error reaches the journal at err like every other error,
/// not at the stream's default (info), where `journalctl -p err` misses it. Control: the same
/// error from a setting (the environment) is at `<3>`.
#[test]
fn a_rejected_command_line_is_an_error_in_the_journal() {
    let bin = env!("CARGO_BIN_EXE_ecs-bootstrap").to_owned();
    let (code, err) = run_stderr(
        &[
            bin.clone(),
            "--deadline".into(),
            "1m".into(),
            "check-imds".into(),
        ],
        &[],
        Stream::Stderr,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("1m"), "{err}");
    let bare: Vec<&str> = err
        .lines()
        .filter(|l| !l.is_empty())
        .filter(|l| {
            !["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    let error_at_err = err
        .lines()
        .any(|l| l.starts_with("<3>") && l.contains("1m"));
    // The control: the same value from the environment is logged at <3>.
    let mut cmd = command(&[bin, "check-imds".into()]);
    let (mut reader, writer) = std::io::pipe().unwrap();
    let writer = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
    let named = writer.metadata().unwrap();
    cmd.env("ECS_BOOTSTRAP_DEADLINE", "1m")
        .env("JOURNAL_STREAM", format!("{}:{}", named.dev(), named.ino()))
        .stderr(Stdio::from(writer));
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut control = String::new();
    reader.read_to_string(&mut control).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(2), "{control}");
    assert!(
        control
            .lines()
            .any(|l| l.starts_with("<3>") && l.contains("ECS_BOOTSTRAP_DEADLINE")),
        "control: {control}"
    );
    assert!(
        error_at_err && bare.is_empty(),
        "a command-line error reaches the journal without its priority: {bare:?}\n{err}"
    );
}

/// Journald ends a stream's line at a NUL byte as at a newline, and reads a
/// priority prefix at the start of each. Text from outside (here an iptables whose error
/// output holds `\0<3>...`) must not start an entry of its own: every record on stderr, split
/// at newlines and NULs, starts with our prefix. Control: the text did reach the log line.
#[test]
fn a_nul_in_logged_text_cannot_start_a_journal_entry() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let ipt = dir.path().join("iptables");
    std::fs::write(
        &ipt,
        "#!/bin/sh\nprintf 'iptables: bad\\000<3>FORGED entry\\n' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&ipt, std::fs::Permissions::from_mode(0o755)).unwrap();
    let argv: Vec<String> = [
        env!("CARGO_BIN_EXE_ecs-bootstrap"),
        "block-imds",
        "--root",
        dir.path().to_str().unwrap(),
        "--iptables",
        ipt.to_str().unwrap(),
        "--ipv6",
        "off",
        "--persist",
        "none",
    ]
    .map(str::to_owned)
    .to_vec();
    let (code, err) = run_stderr(&argv, &[], Stream::Stderr);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("FORGED entry"), "control: {err:?}");
    let records: Vec<&str> = err.split(['\n', '\0']).filter(|r| !r.is_empty()).collect();
    let bare: Vec<&&str> = records
        .iter()
        .filter(|r| {
            !["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| r.starts_with(p))
        })
        .collect();
    let forged: Vec<&&str> = records
        .iter()
        .filter(|r| r.starts_with("<3>FORGED"))
        .collect();
    assert!(
        bare.is_empty() && forged.is_empty(),
        "journal entries not ours: {forged:?} {bare:?}\n{err:?}"
    );
}

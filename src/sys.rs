//! The seams through which the agent touches the system: commands it runs, the file system
//! root under which default paths live, and the deadline that bounds blocking work. Production
//! code gets the real implementations from `app`; tests pass a root in a temporary folder or a
//! scripted command runner.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What a finished command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// Runs a program with an explicit argument list (never through a shell).
pub trait CommandRunner: Send + Sync {
    fn run(&self, program: &Path, args: &[OsString], stdin: Option<&[u8]>)
    -> io::Result<CmdOutput>;
}

/// Why a run stopped before its work was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    #[error("the deadline (--deadline) passed")]
    Deadline,
    #[error("the run was interrupted (a signal)")]
    Interrupted,
}

/// When a run must be over, and whether it was stopped early: the one bound a step's blocking
/// work (lock waits, child commands) takes its time from. Clones share the stop, so the caller
/// that started the work can stop it ([`Deadline::stop`], e.g. on SIGTERM), and the work checks
/// [`Deadline::check`] before every change, so nothing changes once it is stopped or the time
/// is up.
#[derive(Debug, Clone)]
pub struct Deadline {
    at: Instant,
    stopped: Arc<AtomicBool>,
}

impl Deadline {
    /// A deadline at `at`, not stopped.
    pub fn at(at: Instant) -> Self {
        Deadline {
            at,
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A deadline `d` from now.
    pub fn after(d: Duration) -> Self {
        Deadline::at(Instant::now() + d)
    }

    /// Stops the work bound by this deadline (and its clones): [`Deadline::check`] fails from
    /// now on, and a child command running now is killed within a poll (20 ms).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// The time left (zero once stopped or past).
    pub fn left(&self) -> Duration {
        if self.stopped.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        self.at.saturating_duration_since(Instant::now())
    }

    /// Ok while there is time left and nobody stopped the run.
    pub fn check(&self) -> Result<(), Stopped> {
        if self.stopped.load(Ordering::SeqCst) {
            Err(Stopped::Interrupted)
        } else if Instant::now() >= self.at {
            Err(Stopped::Deadline)
        } else {
            Ok(())
        }
    }
}

/// How often a waiting runner or lock looks at its [`Deadline`]: the most a stop or the
/// deadline can take to end a child command or a lock wait.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// Runs blocking work (`f`, given the deadline) on tokio's blocking pool, bound by `deadline`.
/// When the returned future is dropped before `f` returned (the caller's deadline fired, or a
/// signal ended the run), the deadline is stopped and the drop waits (at most 2 s)
/// until `f` has returned, so that once the caller goes on (and reports), the work changes
/// nothing more.
pub async fn run_blocking<T: Send + 'static>(
    deadline: &Deadline,
    f: impl FnOnce(&Deadline) -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let mut guard = StopOnDrop {
        deadline: deadline.clone(),
        done: done.clone(),
        armed: true,
    };
    let d = deadline.clone();
    let out = tokio::task::spawn_blocking(move || {
        let out = f(&d);
        let (m, c) = &*done;
        *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        c.notify_all();
        out
    })
    .await;
    // Returned (or panicked): nothing left to stop.
    guard.armed = false;
    out
}

/// The longest a dropped [`run_blocking`] waits for its work to return after stopping it.
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(2);

struct StopOnDrop {
    deadline: Deadline,
    done: Arc<(Mutex<bool>, Condvar)>,
    armed: bool,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (m, c) = &*self.done;
        let finished = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *finished {
            return;
        }
        self.deadline.stop();
        let _ = c.wait_timeout_while(finished, STOP_WAIT, |f| !*f);
    }
}

/// The real runner: `std::process::Command`, each command killed after `limit` or at the
/// deadline, whichever comes first, or as soon as the deadline is stopped. Once the deadline
/// has passed or was stopped, no command starts.
///
/// Each command leads a process group of its own, and a kill takes the whole group, so that
/// nothing a command started outlives the run. The cost: a terminal's signals go to
/// ecs-bootstrap's group only, not to the command; the app handles every terminal signal that
/// ends a process (SIGINT, SIGQUIT, SIGHUP, and SIGTERM) by stopping the run, which kills the
/// group here. (SIGKILL of ecs-bootstrap leaves a running command to its own bound.)
#[derive(Debug, Clone)]
pub struct SystemRunner {
    pub limit: Duration,
    pub deadline: Deadline,
}

impl SystemRunner {
    /// A runner bound by `deadline`, with the default per-command limit.
    pub fn new(deadline: Deadline) -> Self {
        SystemRunner {
            deadline,
            ..SystemRunner::default()
        }
    }
}

impl Default for SystemRunner {
    /// 30 s per command, and no deadline beyond that.
    fn default() -> Self {
        SystemRunner {
            limit: Duration::from_secs(30),
            deadline: Deadline::after(Duration::from_secs(365 * 24 * 3600)),
        }
    }
}

/// Why a child was killed.
#[derive(Debug, thiserror::Error)]
#[error("{program} did not finish within {limit:?}")]
struct TooLong {
    program: String,
    limit: Duration,
}

/// Kills a child and its process group (see [`SystemRunner`]), and reaps it: a wrapper script's
/// own children (a `sleep`, the real iptables behind a shim) go with it, instead of running on
/// after ecs-bootstrap has exited.
fn kill(child: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl SystemRunner {
    /// Whether the child must be killed now: its limit or the deadline passed, or the deadline
    /// was stopped; the error to return then.
    fn must_stop(&self, program: &Path, started: Instant) -> Option<io::Error> {
        if let Err(stopped) = self.deadline.check() {
            return Some(io::Error::new(io::ErrorKind::TimedOut, stopped));
        }
        (started.elapsed() >= self.limit).then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                TooLong {
                    program: program.display().to_string(),
                    limit: self.limit,
                },
            )
        })
    }
}

impl CommandRunner for SystemRunner {
    fn run(
        &self,
        program: &Path,
        args: &[OsString],
        stdin: Option<&[u8]>,
    ) -> io::Result<CmdOutput> {
        use std::io::{Read, Write};
        use std::sync::mpsc;
        if let Err(stopped) = self.deadline.check() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, stopped));
        }
        let started = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .process_group(0)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("LC_ALL", "C")
            .spawn()?;
        // Read both pipes on threads so a chatty child cannot block on a full pipe. Each
        // reader drops its sender at end of file: the channel disconnects when both pipes are
        // closed, which is when the child exits (a command that ends returns at once; the
        // wait wakes every POLL only to look at the deadline).
        let (done, closed) = mpsc::channel::<()>();
        let reader = |mut pipe: Box<dyn Read + Send>, done: mpsc::Sender<()>| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                let _ = pipe.read_to_end(&mut s);
                drop(done);
                s
            })
        };
        let t_out = reader(Box::new(child.stdout.take().expect("piped")), done.clone());
        let t_err = reader(Box::new(child.stderr.take().expect("piped")), done);
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // On a thread of its own: a child that does not read an input larger than a pipe's
            // buffer would block the write, and with it the watch on the deadline below. Once
            // the child is killed the write fails and the thread ends. A child that exits
            // without reading its input is reported by its status.
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        while let Err(mpsc::RecvTimeoutError::Timeout) = closed.recv_timeout(POLL) {
            if let Some(e) = self.must_stop(program, started) {
                kill(&mut child);
                return Err(e);
            }
        }
        // Both pipes are closed: the child has exited or is about to. Bounded the same way,
        // in case it closed them and went on running.
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if let Some(e) = self.must_stop(program, started) {
                kill(&mut child);
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
        Ok(CmdOutput {
            status: status.code(),
            stdout,
            stderr,
        })
    }
}

/// The file system root for default paths (`/` in production).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Root(path.into())
    }

    /// `path` (absolute, as on a real system) resolved under this root.
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        let p = path.as_ref();
        self.0.join(p.strip_prefix("/").unwrap_or(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_joins_absolute_paths() {
        assert_eq!(
            Root::new("/").join("/etc/ecs/ecs.config"),
            PathBuf::from("/etc/ecs/ecs.config")
        );
        assert_eq!(
            Root::new("/mnt/img").join("/etc/os-release"),
            PathBuf::from("/mnt/img/etc/os-release")
        );
    }

    #[test]
    fn runner_captures_output_and_status() {
        let r = SystemRunner::default();
        let out = r
            .run(
                Path::new("/bin/sh"),
                &["-c".into(), "echo hi; echo err >&2; exit 3".into()],
                None,
            )
            .unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn runner_kills_after_timeout() {
        let r = SystemRunner {
            limit: Duration::from_millis(100),
            ..SystemRunner::default()
        };
        let e = r
            .run(Path::new("/bin/sleep"), &["5".into()], None)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn runner_feeds_stdin() {
        let input = "line\n".repeat(20_000); // larger than a pipe's buffer
        let out = SystemRunner::default()
            .run(Path::new("/bin/cat"), &[], Some(input.as_bytes()))
            .unwrap();
        assert!(out.success());
        assert_eq!(out.stdout, input);
    }

    /// A child that closes its output and goes on running is still bounded by the time limit.
    #[test]
    fn runner_bounds_a_child_that_closed_its_pipes() {
        let r = SystemRunner {
            limit: Duration::from_millis(200),
            ..SystemRunner::default()
        };
        let e = r
            .run(
                Path::new("/bin/sh"),
                &["-c".into(), "exec >&- 2>&-; sleep 5".into()],
                None,
            )
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    /// A stop from another thread kills the running child within a poll, and no command starts
    /// after it.
    #[test]
    fn a_stop_kills_the_child_and_nothing_starts_after() {
        let r = SystemRunner::new(Deadline::after(Duration::from_secs(60)));
        let d = r.deadline.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            d.stop();
        });
        let t = Instant::now();
        let e = r
            .run(Path::new("/bin/sleep"), &["5".into()], None)
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(
            e.get_ref().and_then(|i| i.downcast_ref::<Stopped>()),
            Some(&Stopped::Interrupted)
        );
        stopper.join().unwrap();
        let e = r.run(Path::new("/bin/true"), &[], None).unwrap_err();
        assert_eq!(
            e.get_ref().and_then(|i| i.downcast_ref::<Stopped>()),
            Some(&Stopped::Interrupted)
        );
    }

    /// A killed command takes its own children with it: the shell's `sleep` is gone too.
    #[test]
    fn a_killed_command_takes_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let r = SystemRunner {
            limit: Duration::from_millis(300),
            ..SystemRunner::default()
        };
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let e = r
            .run(Path::new("/bin/sh"), &["-c".into(), script.into()], None)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The control: the pid was a live child while the command ran (it wrote its own pid).
        assert!(pid > 0);
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            // Reaped by init once killed; a zombie counts as gone.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |st| st.split_whitespace().nth(2) == Some("Z"))
        });
        if !gone {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(gone, "the command's child {pid} still runs");
    }

    /// The deadline bounds a command below its own limit.
    #[test]
    fn the_deadline_bounds_a_command() {
        let r = SystemRunner::new(Deadline::after(Duration::from_millis(200)));
        let t = Instant::now();
        let e = r
            .run(Path::new("/bin/sleep"), &["5".into()], None)
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(
            e.get_ref().and_then(|i| i.downcast_ref::<Stopped>()),
            Some(&Stopped::Deadline)
        );
    }

    /// Dropping a `run_blocking` future (a timeout or a signal in the caller) stops the work and
    /// waits for it to return; one that finished stops nothing.
    #[test]
    fn a_dropped_run_blocking_stops_the_work_and_waits_for_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let d = Deadline::after(Duration::from_secs(60));
        let returned = Arc::new(AtomicBool::new(false));
        let r2 = returned.clone();
        rt.block_on(async {
            let work = run_blocking(&d, move |d| {
                while d.check().is_ok() {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(50));
                r2.store(true, Ordering::SeqCst);
            });
            let _ = tokio::time::timeout(Duration::from_millis(100), work).await;
        });
        assert!(returned.load(Ordering::SeqCst), "the drop did not wait");
        assert_eq!(d.check(), Err(Stopped::Interrupted));

        let d = Deadline::after(Duration::from_secs(60));
        rt.block_on(run_blocking(&d, |_| ())).unwrap();
        assert_eq!(d.check(), Ok(()));
    }
}

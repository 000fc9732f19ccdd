//! The seams through which the agent touches the system: commands it runs and the file system
//! root under which default paths live. Production code gets the real implementations from
//! `main`; tests pass a root in a temporary folder or a scripted command runner.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// The real runner: `std::process::Command`, killed after a time limit.
#[derive(Debug, Clone)]
pub struct SystemRunner {
    pub timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        SystemRunner {
            timeout: Duration::from_secs(30),
        }
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
        let mut child = Command::new(program)
            .args(args)
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
        // closed, which is when the child exits (no polling, so no added latency per command).
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
            // A child that exits without reading its input is reported by its status.
            let _ = pipe.write_all(data);
        }
        let deadline = Instant::now() + self.timeout;
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not finish within {:?}",
                    program.display(),
                    self.timeout
                ),
            )
        };
        let status = match closed.recv_timeout(self.timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(timed_out());
            }
            // Both pipes are closed: the child has exited or is about to. Bounded by the
            // same time limit, in case it closed them and went on running.
            _ => loop {
                if let Some(status) = child.try_wait()? {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(timed_out());
                }
                std::thread::sleep(Duration::from_micros(200));
            },
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

    pub fn path(&self) -> &Path {
        &self.0
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
            timeout: Duration::from_millis(100),
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
            timeout: Duration::from_millis(200),
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
}

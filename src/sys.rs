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
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(data)?;
        }
        // Read both pipes on threads so a chatty child cannot block on a full pipe.
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let t_out = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            s
        });
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not finish within {:?}",
                        program.display(),
                        self.timeout
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
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
}

//! Running iptables and ip6tables: explicit argument lists through the [`CommandRunner`] seam
//! (never a shell), a bounded wait for the xtables lock (`-w`), and errors a caller can branch
//! on.
//!
//! Why not the `iptables` crate: its `exists` maps every non-zero exit of `-C` to "absent" (a
//! missing chain, a lock timeout and a typo all read as "insert the rule"), its errors are
//! `Box<dyn Error>` without `Send` (they cannot cross our blocking task), it cannot pass `-w`
//! with a bound, and it runs a fixed binary name we could not route through the
//! `CommandRunner` seam. The step reads the kernel's state with one `-S` listing of the filter
//! table and plans from it ([`super::plan`]), so it never asks `-C`. The runner tells apart
//! what the step branches on:
//! - `-N` of a chain that exists (dockerd created it meanwhile): not an error;
//! - `-D` of a rule that is gone (someone removed it meanwhile): not an error;
//! - a lock held past the wait (exit 4): reported at once, never retried;
//! - anything else (exit 2 for a bad argument, 3 for a missing kernel module, ...) is a
//!   failure whose message names the command line and its stderr.

use crate::sys::{CmdOutput, CommandRunner, Deadline, Stopped};
use serde::Serialize;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

/// Seconds iptables waits for the xtables lock (`-w`) before giving up with exit 4.
pub(crate) const LOCK_WAIT_SECS: &str = "10";

/// Where the default binary is looked for after `$PATH` (systemd's PATH has them, cron's not).
pub(crate) const SBIN_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// How iptables talks to the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `iptables v1.8.x (nf_tables)`: iptables-nft, rules live in nftables.
    Nft,
    /// `iptables v1.8.x (legacy)` or any version before 1.8 (which only had legacy).
    Legacy,
}

impl Backend {
    /// Parses the first line of `iptables -V`.
    pub(crate) fn from_version(out: &str) -> Option<Backend> {
        let line = out.lines().find(|l| l.contains("tables"))?;
        if line.contains("nf_tables") {
            Some(Backend::Nft)
        } else if line.contains("(legacy)") || line.contains(" v1.") {
            Some(Backend::Legacy)
        } else {
            None
        }
    }

    /// The backend of the multi-call binary that the iptables links resolve to, when its
    /// name says (`/usr/sbin/xtables-nft-multi`); None for any other name.
    pub(crate) fn from_multi_binary(resolved: &Path) -> Option<Backend> {
        match resolved.file_name()?.to_str()? {
            "xtables-nft-multi" => Some(Backend::Nft),
            "xtables-legacy-multi" => Some(Backend::Legacy),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

/// A command's exit status; None when a signal ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub Option<i32>);

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(s) => write!(f, "{s}"),
            None => f.write_str("killed by a signal"),
        }
    }
}

/// Why an iptables command did not do what was asked. Every message names the command line.
#[derive(Debug, thiserror::Error)]
pub enum IptError {
    #[error(
        "{bin} not found: install the package `iptables` (Amazon Linux 2023: `dnf install iptables-nft`; Amazon Linux 2 and RHEL: `yum install iptables`; Debian and Ubuntu: `apt-get install iptables`), or point --iptables at the binary"
    )]
    Missing { bin: String },
    /// The run was stopped (deadline or signal) before or while the command ran; a command
    /// running then was killed.
    #[error("{why}: `{cmdline}` was not run or was killed, and no rule was changed after that")]
    Stopped { cmdline: String, why: Stopped },
    #[error("`{cmdline}` could not be run: {source}")]
    Spawn {
        cmdline: String,
        #[source]
        source: io::Error,
    },
    #[error("`{cmdline}` failed (exit status {status}): {stderr}{hint}")]
    Failed {
        cmdline: String,
        status: Status,
        stderr: String,
        hint: &'static str,
    },
}

impl IptError {
    /// Another program held the xtables lock for the whole `-w` wait (exit status 4).
    pub(crate) fn is_lock_timeout(&self) -> bool {
        matches!(
            self,
            IptError::Failed {
                status: Status(Some(4)),
                ..
            }
        )
    }
}

/// One iptables binary (iptables or ip6tables, nft or legacy) and the runner that runs it.
pub struct Ipt<'a> {
    pub(crate) bin: PathBuf,
    pub(crate) runner: &'a dyn CommandRunner,
    /// No command starts once this has passed or was stopped.
    pub(crate) deadline: &'a Deadline,
}

fn cmdline(bin: &Path, args: &[&str]) -> String {
    let mut s = bin.display().to_string();
    for a in args {
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
            s.push_str(&format!("'{}'", a.replace('\'', "'\\''")));
        } else {
            s.push_str(a);
        }
    }
    s
}

/// The stop behind a runner's error, if that is what it is.
fn stopped_by(e: &io::Error) -> Option<Stopped> {
    e.get_ref()?.downcast_ref::<Stopped>().copied()
}

fn first_line(s: &str) -> String {
    let t: Vec<&str> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect();
    if t.is_empty() {
        "(no output on stderr)".into()
    } else {
        t.join(" / ")
    }
}

impl<'a> Ipt<'a> {
    pub fn new(bin: PathBuf, runner: &'a dyn CommandRunner, deadline: &'a Deadline) -> Self {
        Ipt {
            bin,
            runner,
            deadline,
        }
    }

    /// Runs `bin args` as given (no `-w` added) and returns the output whatever the status.
    /// No command starts once the deadline has passed or was stopped (the runner kills one
    /// that is running then): after a stop, nothing changes.
    fn raw(&self, bin: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<CmdOutput, IptError> {
        if let Err(why) = self.deadline.check() {
            return Err(IptError::Stopped {
                cmdline: cmdline(bin, args),
                why,
            });
        }
        let argv: Vec<OsString> = args.iter().map(OsString::from).collect();
        self.runner
            .run(bin, &argv, stdin)
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => IptError::Missing {
                    bin: bin.display().to_string(),
                },
                _ if let Some(why) = stopped_by(&source) => IptError::Stopped {
                    cmdline: cmdline(bin, args),
                    why,
                },
                _ => IptError::Spawn {
                    cmdline: cmdline(bin, args),
                    source,
                },
            })
    }

    /// Runs `bin -w SECS args`.
    fn run(&self, args: &[&str]) -> Result<(String, CmdOutput), IptError> {
        let mut argv = vec!["-w", LOCK_WAIT_SECS];
        argv.extend_from_slice(args);
        let out = self.raw(&self.bin, &argv, None)?;
        Ok((cmdline(&self.bin, &argv), out))
    }

    fn failed(cmdline: String, out: &CmdOutput) -> IptError {
        let hint = match out.status {
            Some(4) => {
                "; another program held the xtables lock for the whole wait; find it with `fuser /run/xtables.lock` and retry"
            }
            Some(3) => "; the kernel lacks the module (is netfilter available here?)",
            _ => "",
        };
        IptError::Failed {
            cmdline,
            status: Status(out.status),
            stderr: first_line(&out.stderr),
            hint,
        }
    }

    /// Runs and requires success.
    pub(crate) fn must(&self, args: &[&str]) -> Result<CmdOutput, IptError> {
        let (cl, out) = self.run(args)?;
        if out.success() {
            Ok(out)
        } else {
            Err(Self::failed(cl, &out))
        }
    }

    /// The backend in use: from the binary the path resolves to when that tells
    /// (`xtables-nft-multi`, `xtables-legacy-multi`: no process to start), else `iptables -V`.
    pub fn backend(&self) -> Result<Backend, IptError> {
        if let Some(b) = self.backend_by_name() {
            return Ok(b);
        }
        let out = self.raw(&self.bin, &["-V"], None)?;
        let cl = cmdline(&self.bin, &["-V"]);
        if !out.success() {
            return Err(Self::failed(cl, &out));
        }
        Backend::from_version(&out.stdout).ok_or_else(|| IptError::Failed {
            cmdline: cl,
            status: Status(Some(0)),
            stderr: format!("unrecognized version line {:?}", out.stdout.trim()),
            hint: "; is --iptables an iptables binary?",
        })
    }

    /// The backend when the binary the path resolves to says it by its name; no process.
    pub(crate) fn backend_by_name(&self) -> Option<Backend> {
        std::fs::canonicalize(&self.bin)
            .ok()
            .as_deref()
            .and_then(Backend::from_multi_binary)
    }

    /// `iptables -t filter -S`: every line of the filter table (policies, `-N` chain
    /// declarations, `-A` rules), in one call, and whether iptables-nft said that
    /// iptables-legacy tables exist beside its own (it says so on stderr).
    pub fn list_table(&self) -> Result<(Vec<String>, bool), IptError> {
        let (cl, out) = self.run(&["-t", "filter", "-S"])?;
        if out.success() {
            return Ok((
                out.stdout.lines().map(str::to_owned).collect(),
                out.stderr.contains("iptables-legacy tables present"),
            ));
        }
        Err(Self::failed(cl, &out))
    }

    /// `iptables -N CHAIN`; Ok(false) when it already exists (created by dockerd meanwhile).
    pub fn new_chain(&self, chain: &str) -> Result<bool, IptError> {
        let (cl, out) = self.run(&["-t", "filter", "-N", chain])?;
        if out.success() {
            Ok(true)
        } else if out.status == Some(1) && out.stderr.contains("already exists") {
            Ok(false)
        } else {
            Err(Self::failed(cl, &out))
        }
    }

    /// `iptables -I CHAIN POS spec`.
    pub fn insert(&self, chain: &str, pos: usize, spec: &[String]) -> Result<(), IptError> {
        let pos = pos.to_string();
        let mut args = vec!["-t", "filter", "-I", chain, pos.as_str()];
        args.extend(spec.iter().map(String::as_str));
        self.must(&args).map(drop)
    }

    /// `iptables -D CHAIN SPEC`: deletes the first rule with exactly this specification (never
    /// a position: another program may have inserted above it meanwhile). Ok(false) when no
    /// such rule is there any more.
    pub fn delete_spec(&self, chain: &str, spec: &[String]) -> Result<bool, IptError> {
        let mut args = vec!["-t", "filter", "-D", chain];
        args.extend(spec.iter().map(String::as_str));
        let (cl, out) = self.run(&args)?;
        match out.status {
            Some(0) => Ok(true),
            Some(1)
                if out.stderr.contains("Bad rule")
                    || out.stderr.contains("does a matching rule exist") =>
            {
                Ok(false)
            }
            _ => Err(Self::failed(cl, &out)),
        }
    }

    /// The sibling tool of this binary: `iptables-legacy` + `-save` → `iptables-legacy-save`.
    pub(crate) fn sibling(&self, suffix: &str) -> PathBuf {
        let name = self
            .bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.bin.with_file_name(format!("{name}{suffix}"))
    }

    /// `iptables-restore -w SECS MODE` with `input` on stdin.
    fn restore(&self, mode: &str, input: &str) -> Result<(), IptError> {
        let bin = self.sibling("-restore");
        let args = ["-w", LOCK_WAIT_SECS, mode];
        let out = self.raw(&bin, &args, Some(input.as_bytes()))?;
        if out.success() {
            Ok(())
        } else {
            Err(Self::failed(cmdline(&bin, &args), &out))
        }
    }

    /// `iptables-restore -w SECS --test` with `rules` on stdin: Ok, or the error naming the line.
    pub(crate) fn restore_test(&self, rules: &str) -> Result<(), IptError> {
        self.restore("--test", rules)
    }

    /// `iptables-restore -w SECS --noflush` with `commands` (each an iptables command without
    /// the table, such as `-N DOCKER-USER` or `-I FORWARD 1 -j DOCKER-USER`) in one `*filter`
    /// transaction: all of them apply, or none (one commit instead of one per command). The
    /// arguments must hold no whitespace (rule specs and chain names here never do). An error
    /// also shows the input, which holds nothing secret.
    pub(crate) fn restore_noflush(&self, commands: &[Vec<String>]) -> Result<(), IptError> {
        let mut input = String::from("*filter\n");
        for c in commands {
            input.push_str(&c.join(" "));
            input.push('\n');
        }
        input.push_str("COMMIT\n");
        self.restore("--noflush", &input).map_err(|mut e| {
            if let IptError::Failed { stderr, .. } = &mut e {
                stderr.push_str(&format!(
                    " (input: {})",
                    input.trim_end().replace('\n', "; ")
                ));
            }
            e
        })
    }

    /// `iptables-save`: every table, as the AWS documentation saves them.
    pub(crate) fn save_all(&self) -> Result<String, IptError> {
        let bin = self.sibling("-save");
        let out = self.raw(&bin, &[], None)?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(Self::failed(cmdline(&bin, &[]), &out))
        }
    }
}

/// The ip6tables binary beside an iptables binary: `/usr/sbin/iptables-legacy` →
/// `/usr/sbin/ip6tables-legacy`, `iptables` → `ip6tables`. None when the name does not start
/// with `iptables`.
pub(crate) fn ip6tables_beside(bin: &Path) -> Option<PathBuf> {
    let name = bin.file_name()?.to_str()?;
    let rest = name.strip_prefix("iptables")?;
    Some(bin.with_file_name(format!("ip6tables{rest}")))
}

/// Finds `name` in `path_var` (a `$PATH` value), then in [`SBIN_DIRS`].
pub(crate) fn find_binary(name: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let from_path = path_var
        .map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Replays canned outputs: fakes only for faults a real iptables cannot be made to produce
    /// on demand (a lock timeout, a vanished binary).
    struct Canned(Mutex<Vec<io::Result<CmdOutput>>>, Mutex<Vec<String>>);

    impl CommandRunner for Canned {
        fn run(&self, p: &Path, a: &[OsString], _: Option<&[u8]>) -> io::Result<CmdOutput> {
            let mut line = p.display().to_string();
            for x in a {
                line.push(' ');
                line.push_str(&x.to_string_lossy());
            }
            self.1.lock().unwrap().push(line);
            self.0.lock().unwrap().remove(0)
        }
    }

    fn far() -> Deadline {
        Deadline::after(Duration::from_secs(3600))
    }

    fn out(status: i32, stderr: &str) -> io::Result<CmdOutput> {
        Ok(CmdOutput {
            status: Some(status),
            stdout: String::new(),
            stderr: stderr.into(),
        })
    }

    #[test]
    fn backend_from_version_lines() {
        assert_eq!(
            Backend::from_version("iptables v1.8.9 (nf_tables)\n"),
            Some(Backend::Nft)
        );
        assert_eq!(
            Backend::from_version("iptables v1.8.4 (legacy)\n"),
            Some(Backend::Legacy)
        );
        assert_eq!(
            Backend::from_version("ip6tables v1.4.21\n"),
            Some(Backend::Legacy)
        );
        assert_eq!(Backend::from_version("hello\n"), None);
    }

    #[test]
    fn backend_from_the_resolved_binary() {
        assert_eq!(
            Backend::from_multi_binary(Path::new("/usr/sbin/xtables-nft-multi")),
            Some(Backend::Nft)
        );
        assert_eq!(
            Backend::from_multi_binary(Path::new("/usr/sbin/xtables-legacy-multi")),
            Some(Backend::Legacy)
        );
        assert_eq!(
            Backend::from_multi_binary(Path::new("/usr/sbin/iptables")),
            None
        );
    }

    /// On this machine (Debian's iptables, as CI installs it) the names resolve without -V,
    /// and they agree with what -V says.
    #[test]
    fn resolved_backend_agrees_with_version() {
        for (bin, want) in [
            ("/usr/sbin/iptables-nft", Backend::Nft),
            ("/usr/sbin/iptables-legacy", Backend::Legacy),
        ] {
            let resolved = std::fs::canonicalize(bin).unwrap();
            assert_eq!(
                Backend::from_multi_binary(&resolved),
                Some(want.clone()),
                "{bin}"
            );
            let v = std::process::Command::new(bin).arg("-V").output().unwrap();
            assert_eq!(
                Backend::from_version(&String::from_utf8_lossy(&v.stdout)),
                Some(want),
                "{bin}"
            );
        }
    }

    #[test]
    fn lock_timeout_is_a_failure_naming_command_and_stderr() {
        let r = Canned(
            Mutex::new(vec![out(
                4,
                "Another app is currently holding the xtables lock. Stopped waiting after 10s.\n",
            )]),
            Mutex::new(vec![]),
        );
        let d = far();
        let ipt = Ipt::new("/usr/sbin/iptables".into(), &r, &d);
        let e = ipt
            .insert("DOCKER-USER", 1, &["-j".into(), "DROP".into()])
            .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("`/usr/sbin/iptables -w 10 -t filter -I DOCKER-USER 1 -j DROP`"),
            "{m}"
        );
        assert!(m.contains("holding the xtables lock"), "{m}");
        assert!(m.contains("fuser /run/xtables.lock"), "{m}");
    }

    #[test]
    fn missing_binary_names_the_package() {
        let r = Canned(
            Mutex::new(vec![Err(io::Error::from(io::ErrorKind::NotFound))]),
            Mutex::new(vec![]),
        );
        let d = far();
        let ipt = Ipt::new("iptables".into(), &r, &d);
        let m = ipt.backend().unwrap_err().to_string();
        assert!(m.contains("install the package `iptables`"), "{m}");
    }

    #[test]
    fn siblings_and_ip6tables() {
        let r = Canned(Mutex::new(vec![]), Mutex::new(vec![]));
        let d = far();
        let ipt = Ipt::new("/usr/sbin/iptables-legacy".into(), &r, &d);
        assert_eq!(
            ipt.sibling("-restore"),
            PathBuf::from("/usr/sbin/iptables-legacy-restore")
        );
        assert_eq!(
            ip6tables_beside(Path::new("/usr/sbin/iptables-nft")),
            Some(PathBuf::from("/usr/sbin/ip6tables-nft"))
        );
        assert_eq!(
            ip6tables_beside(Path::new("iptables")),
            Some(PathBuf::from("ip6tables"))
        );
        assert_eq!(ip6tables_beside(Path::new("/opt/xt/xtables-multi")), None);
    }

    #[test]
    fn find_binary_falls_back_to_sbin() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            find_binary("no-such-tool-here", Some(d.path().as_os_str())),
            None
        );
        let p = d.path().join("mytool");
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert_eq!(find_binary("mytool", Some(d.path().as_os_str())), None);
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_binary("mytool", Some(d.path().as_os_str())), Some(p));
        let sh = find_binary("sh", Some(std::ffi::OsStr::new(""))).unwrap();
        assert!(
            SBIN_DIRS.iter().any(|d| sh.starts_with(d)),
            "{}",
            sh.display()
        );
    }
}

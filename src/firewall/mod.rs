//! The firewall step: keep containers on the Docker bridge away from instance metadata with a
//! DROP rule at the top of DOCKER-USER (which dockerd never rewrites), `-j DOCKER-USER` first in
//! FORWARD, and the rule persisted to the distribution's rules file.
//!
//! Walking skeleton: IPv4 only, default placement; the production version is tracked in the
//! firewall issue.

use crate::cli::FirewallArgs;
use crate::error::UsageError;
use crate::fsutil;
use crate::report::StepResult;
use crate::sys::{CmdOutput, CommandRunner, Root};
use anyhow::{Context as _, bail};
use serde_json::json;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub const IMDS_V4: &str = "169.254.169.254/32";
pub const CHAIN: &str = "DOCKER-USER";

#[derive(Debug, Clone)]
pub struct Options {
    pub iptables: PathBuf,
    pub interfaces: Vec<String>,
    pub persist_file: Option<PathBuf>,
}

impl Options {
    pub fn from_args(args: &FirewallArgs, root: &Root) -> Result<Self, UsageError> {
        let persist_file = match args.persist {
            crate::cli::PersistMode::None => None,
            _ => args
                .persist_file
                .clone()
                .or_else(|| Some(root.join("/etc/sysconfig/iptables"))),
        };
        Ok(Options {
            iptables: args
                .iptables
                .clone()
                .unwrap_or_else(|| PathBuf::from("iptables")),
            interfaces: args.interfaces.clone(),
            persist_file,
        })
    }
}

struct Ipt<'a> {
    bin: &'a Path,
    runner: &'a dyn CommandRunner,
}

impl Ipt<'_> {
    fn run(&self, args: &[&str]) -> anyhow::Result<CmdOutput> {
        let mut argv: Vec<OsString> = vec!["-w".into(), "5".into()];
        argv.extend(args.iter().map(OsString::from));
        self.runner
            .run(self.bin, &argv, None)
            .with_context(|| format!("running {} {}", self.bin.display(), args.join(" ")))
    }

    fn must(&self, args: &[&str]) -> anyhow::Result<CmdOutput> {
        let out = self.run(args)?;
        if !out.success() {
            bail!(
                "`{} -w 5 {}` failed: {}",
                self.bin.display(),
                args.join(" "),
                out.stderr.trim()
            );
        }
        Ok(out)
    }
}

pub fn run(opts: &Options, runner: &dyn CommandRunner) -> anyhow::Result<StepResult> {
    let ipt = Ipt {
        bin: &opts.iptables,
        runner,
    };
    let mut summary = vec![];
    let mut changed = false;
    if !ipt.run(&["-S", CHAIN])?.success() {
        ipt.must(&["-N", CHAIN])?;
        summary.push(format!("created chain {CHAIN}"));
        changed = true;
    }
    for iface in &opts.interfaces {
        let rule = ["-i", iface.as_str(), "-d", IMDS_V4, "-j", "DROP"];
        let mut check = vec!["-C", CHAIN];
        check.extend(rule);
        if ipt.run(&check)?.success() {
            summary.push(format!(
                "rule -i {iface} -d {IMDS_V4} -j DROP already present in {CHAIN}"
            ));
        } else {
            let mut insert = vec!["-I", CHAIN, "1"];
            insert.extend(rule);
            ipt.must(&insert)?;
            summary.push(format!(
                "rule -i {iface} -d {IMDS_V4} -j DROP added to {CHAIN}"
            ));
            changed = true;
        }
    }
    let forward = ipt.must(&["-S", "FORWARD"])?.stdout;
    let first = forward.lines().find(|l| l.starts_with("-A FORWARD"));
    if first != Some("-A FORWARD -j DOCKER-USER") {
        while ipt.run(&["-C", "FORWARD", "-j", CHAIN])?.success() {
            ipt.must(&["-D", "FORWARD", "-j", CHAIN])?;
        }
        ipt.must(&["-I", "FORWARD", "1", "-j", CHAIN])?;
        summary.push(format!("jump to {CHAIN} placed first in FORWARD"));
        changed = true;
    }
    if let Some(path) = &opts.persist_file {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let merged = merge_minimal(&old, &opts.interfaces);
        let outcome = fsutil::write_atomic(path, merged.as_bytes(), 0o600)?;
        summary.push(format!("persisted to {} ({outcome:?})", path.display()));
    }
    Ok(StepResult {
        changed,
        summary,
        details: json!({"chain": CHAIN, "persist_file": opts.persist_file}),
    })
}

fn merge_minimal(old: &str, interfaces: &[String]) -> String {
    let mut lines: Vec<String> = old.lines().map(str::to_owned).collect();
    if !lines.iter().any(|l| l == "*filter") {
        lines.extend(
            [
                "*filter",
                ":INPUT ACCEPT [0:0]",
                ":FORWARD ACCEPT [0:0]",
                ":OUTPUT ACCEPT [0:0]",
                "COMMIT",
            ]
            .map(String::from),
        );
    }
    let at = lines.iter().position(|l| l == "*filter").expect("present") + 1;
    let mut want = vec![
        format!(":{CHAIN} - [0:0]"),
        format!("-A FORWARD -j {CHAIN}"),
    ];
    for i in interfaces {
        want.push(format!("-A {CHAIN} -i {i} -d {IMDS_V4} -j DROP"));
    }
    for (n, w) in want.into_iter().enumerate() {
        if !lines.contains(&w) {
            lines.insert(at + n, w);
        }
    }
    lines.join("\n") + "\n"
}

//! From the parsed command line to the validated work of one invocation: each step's own
//! clap-free `Options`, built here and nowhere else.

use super::cli::{
    ChainChoice, CheckArgs, Cli, Command, ConfigArgs, FirewallArgs, IamPolicyArgs, Ipv6Mode,
    PersistMode, PolicyFormat, ProveArgs, RunArgs, StatusArgs,
};
use crate::config::{self, parse, source};
use crate::error::UsageError;
use crate::firewall::{self, iptables, rules};
use crate::sys::Root;
use crate::{iam_policy, prove, report};

/// The validated work of one invocation.
pub(super) struct Plan {
    pub(super) command: report::Command,
    pub(super) config: Option<config::Options>,
    pub(super) firewall: Option<firewall::Options>,
    pub(super) check: Option<crate::check::Options>,
    pub(super) prove: Option<prove::Options>,
}

impl Plan {
    /// The plan of every command but `iam-policy`, which only prints (see [`policy_request`]).
    pub(super) fn from_cli(cli: &Cli, root: &Root) -> Result<Self, UsageError> {
        let only = |command| Plan {
            command,
            config: None,
            firewall: None,
            check: None,
            prove: None,
        };
        Ok(match &cli.command {
            Command::Run(r) => run_plan(r, root)?,
            Command::FetchConfig(c) => Plan {
                config: Some(config_options(&with_awsvpc(c), root)?),
                ..only(report::Command::FetchConfig)
            },
            Command::BlockImds(f) => Plan {
                firewall: Some(firewall_options(f, root)?),
                ..only(report::Command::BlockImds)
            },
            Command::Prove(p) => Plan {
                prove: Some(prove_options(p)),
                ..only(report::Command::Prove)
            },
            Command::CheckImds(c) => Plan {
                check: Some(check_options(c)),
                ..only(report::Command::CheckImds)
            },
            Command::IamPolicy(_) | Command::Status(_) => {
                unreachable!("iam-policy and status run no step, and are handled before planning")
            }
        })
    }
}

fn check_options(c: &CheckArgs) -> crate::check::Options {
    crate::check::Options {
        probe_imdsv1: c.probe_imdsv1,
    }
}

fn run_plan(r: &RunArgs, root: &Root) -> Result<Plan, UsageError> {
    if r.firewall.remove {
        return Err(UsageError(
            "--remove undoes the block and belongs to `ecs-bootstrap block-imds --remove`, not to run".into(),
        ));
    }
    if r.firewall.drift {
        return Err(UsageError(
            "--drift is the periodic re-check `ecs-bootstrap block-imds --drift` (the drift timer), not part of run".into(),
        ));
    }
    Ok(Plan {
        command: report::Command::Run,
        config: (!r.skip_config)
            .then(|| config_options(&with_awsvpc(&r.config), root))
            .transpose()?,
        firewall: (!r.skip_firewall)
            .then(|| firewall_options(&r.firewall, root))
            .transpose()?,
        check: (!r.skip_check).then(|| check_options(&r.check)),
        prove: r.prove.then(|| prove::Options {
            bridge: None,
            interfaces: r.firewall.interfaces.clone(),
            iptables: r.firewall.iptables.clone(),
            ipv6: prove_ipv6(r.firewall.ipv6),
        }),
    })
}

/// `--block-awsvpc-imds` as the last `--set`, so it goes through the same validation and wins.
fn with_awsvpc(c: &ConfigArgs) -> ConfigArgs {
    let mut c = c.clone();
    if c.block_awsvpc_imds {
        c.set.push(format!("{}=true", crate::posture::AWSVPC_KEY));
    }
    c
}

fn config_options(args: &ConfigArgs, root: &Root) -> Result<config::Options, UsageError> {
    let source = match (&args.source, &args.source_from_tag) {
        (Some(url), _) => config::SourceSpec::Url(url.parse()?),
        (None, Some(tag)) => {
            if tag.is_empty() || tag.contains('/') {
                return Err(UsageError(format!(
                    "--source-from-tag {tag:?}: give the tag key, which cannot be empty or hold `/` \
                     (instance metadata cannot serve such tags)"
                )));
            }
            config::SourceSpec::Tag(tag.clone())
        }
        (None, None) => {
            return Err(UsageError(
                "no source for ecs.config: give --source s3://BUCKET/KEY (or ECS_BOOTSTRAP_SOURCE, \
                 or set it in /etc/ecs-bootstrap/env), or --source-from-tag KEY"
                    .into(),
            ));
        }
    };
    let sha256 = match &args.sha256 {
        None => None,
        Some(h) => {
            let h = h.trim().to_ascii_lowercase();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(UsageError(
                    "--sha256 must be 64 hexadecimal digits: the SHA-256 of the object, as printed by \
                     `sha256sum ecs.config`"
                        .into(),
                ));
            }
            Some(h)
        }
    };
    let expected_owner = args
        .expected_bucket_owner
        .as_deref()
        .map(source::bucket_owner)
        .transpose()?;
    if args.max_size == 0 || args.max_size > config::MAX_SIZE_LIMIT {
        return Err(UsageError(format!(
            "--max-size {}: give a size in bytes from 1 to {}",
            args.max_size,
            config::MAX_SIZE_LIMIT
        )));
    }
    let sets = args
        .set
        .iter()
        .map(|s| parse::parse_set(s).map_err(UsageError))
        .collect::<Result<Vec<_>, _>>()?;
    if args.strict {
        let mut probe = parse::Config::default();
        if let Some(f) = parse::apply_sets(&mut probe, &sets).first() {
            return Err(UsageError(format!("{f} (--strict)")));
        }
    }
    Ok(config::Options {
        source,
        dest: args
            .dest
            .clone()
            .unwrap_or_else(|| root.join(config::DEFAULT_DEST)),
        sha256,
        expected_owner,
        max_size: args.max_size,
        strict: args.strict,
        allow_empty: args.allow_empty,
        sets,
    })
}

fn firewall_options(args: &FirewallArgs, root: &Root) -> Result<firewall::Options, UsageError> {
    let mut interfaces: Vec<String> = vec![];
    for i in &args.interfaces {
        rules::validate_interface(i).map_err(UsageError)?;
        if !interfaces.contains(i) {
            interfaces.push(i.clone());
        }
    }
    if interfaces.is_empty() {
        interfaces.push("docker+".into());
    }
    if let Some(p) = &args.iptables
        && p.as_os_str().is_empty()
    {
        return Err(UsageError(
            "--iptables is empty; give the path of an iptables binary, e.g. /usr/sbin/iptables-nft"
                .into(),
        ));
    }
    if args.ipv6 == Ipv6Mode::On
        && let Some(p) = &args.iptables
        && iptables::ip6tables_beside(p).is_none()
    {
        return Err(UsageError(format!(
            "--ipv6 on needs ip6tables beside --iptables {}, but its name does not start with `iptables`; use --ipv6 off or a binary named iptables*",
            p.display()
        )));
    }
    Ok(firewall::Options {
        iptables: args.iptables.clone(),
        placement: match args.chain {
            ChainChoice::DockerUser => rules::Placement::DockerUser,
            ChainChoice::Forward => rules::Placement::Forward,
        },
        interfaces,
        ipv6: match args.ipv6 {
            Ipv6Mode::Auto => firewall::Ipv6Mode::Auto,
            Ipv6Mode::On => firewall::Ipv6Mode::On,
            Ipv6Mode::Off => firewall::Ipv6Mode::Off,
        },
        persist: match args.persist {
            PersistMode::Merge => firewall::PersistMode::Merge,
            PersistMode::FullSave => firewall::PersistMode::FullSave,
            PersistMode::None => firewall::PersistMode::None,
        },
        persist_file: args.persist_file.clone(),
        persist_file6: args.persist_file6.clone(),
        root: root.clone(),
        remove: args.remove,
        drift: args.drift,
    })
}

fn prove_ipv6(mode: Ipv6Mode) -> prove::Ipv6Mode {
    match mode {
        Ipv6Mode::Auto => prove::Ipv6Mode::Auto,
        Ipv6Mode::On => prove::Ipv6Mode::On,
        Ipv6Mode::Off => prove::Ipv6Mode::Off,
    }
}

fn prove_options(a: &ProveArgs) -> prove::Options {
    prove::Options {
        bridge: a.bridge.clone(),
        interfaces: a.interfaces.clone(),
        iptables: a.iptables.clone(),
        ipv6: prove_ipv6(a.ipv6),
    }
}

/// Where the last boot's report is: the config unit's `--report`.
pub(super) const BOOT_REPORT: &str = "/run/ecs-bootstrap/report.json";

/// What `status` looks at.
pub(super) fn status_request(
    a: &StatusArgs,
    root: &Root,
) -> Result<crate::status::Request, UsageError> {
    if a.firewall.remove || a.firewall.drift {
        return Err(UsageError(
            "status changes nothing: --remove and --drift belong to `ecs-bootstrap block-imds`"
                .into(),
        ));
    }
    Ok(crate::status::Request {
        firewall: firewall_options(&a.firewall, root)?,
        dest: a
            .dest
            .clone()
            .unwrap_or_else(|| root.join(config::DEFAULT_DEST)),
        boot_report: a
            .boot_report
            .clone()
            .unwrap_or_else(|| root.join(BOOT_REPORT)),
    })
}

/// What `iam-policy` is asked to print.
pub(super) fn policy_request(a: &IamPolicyArgs) -> iam_policy::Request {
    iam_policy::Request {
        source: a.source.clone(),
        kms_key: a.kms_key.clone(),
        expected_bucket_owner: a.expected_bucket_owner.clone(),
        partition: a.partition.clone(),
        format: match a.format {
            PolicyFormat::Json => iam_policy::Format::Json,
            PolicyFormat::Cloudformation => iam_policy::Format::Cloudformation,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// `status` reads the last boot's report where the config unit writes it.
    #[test]
    fn the_boot_report_is_where_the_config_unit_writes_it() {
        let unit = include_str!("../../systemd/ecs-bootstrap-config.service");
        assert!(unit.contains(&format!("--report {BOOT_REPORT}")), "{unit}");
    }

    fn args(extra: &[&str]) -> ConfigArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            c: ConfigArgs,
        }
        let mut v = vec!["t"];
        v.extend_from_slice(extra);
        T::try_parse_from(v).unwrap().c
    }

    fn opts(extra: &[&str]) -> Result<config::Options, UsageError> {
        config_options(&args(extra), &Root::new("/r"))
    }

    #[test]
    fn options_validate() {
        let o = opts(&[
            "--source",
            "s3://bkt/k",
            "--sha256",
            &"AB".repeat(32),
            "--expected-bucket-owner",
            "123456789012",
            "--set",
            "ECS_CLUSTER=prod",
        ])
        .unwrap();
        assert_eq!(o.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(o.dest, PathBuf::from("/r/etc/ecs/ecs.config"));
        assert_eq!(o.max_size, 65536);
        assert_eq!(o.sets.len(), 1);
        for (a, why) in [
            (vec!["--sha256", "abc"], "64 hexadecimal"),
            (vec!["--expected-bucket-owner", "12345"], "12-digit"),
            (vec!["--max-size", "0"], "--max-size"),
            (vec!["--set", "noequals"], "KEY=VALUE"),
            (vec!["--set", "bad key=x"], "invalid key"),
            (
                vec!["--set", "ECS_CLUSTR=x", "--strict"],
                "did you mean ECS_CLUSTER",
            ),
            (vec!["--source-from-tag", "a/b"], "tag key"),
        ] {
            let mut full = vec!["--source", "s3://bkt/k"];
            if a[0] == "--source-from-tag" {
                full.clear();
            }
            full.extend(a.iter().copied());
            let e = opts(&full).unwrap_err().to_string();
            assert!(e.contains(why), "{a:?}: {e}");
        }
        // Unknown --set key is only a warning without --strict.
        assert!(opts(&["--source", "s3://bkt/k", "--set", "ECS_CLUSTR=x"]).is_ok());
        // A secret --set value never shows in Debug.
        let o = opts(&[
            "--source",
            "s3://bkt/k",
            "--set",
            "ECS_ENGINE_AUTH_DATA=hunter2",
        ])
        .unwrap();
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}

//! The command-line contract. Users' scripts and AMIs depend on it: keep it stable.
//!
//! Every flag but `-v`, `block-imds --remove` and `--drift`, and `iam-policy --format` is also read from an
//! environment variable `ECS_BOOTSTRAP_<FLAG>` and from the settings file
//! `/etc/ecs-bootstrap/env` (same names). Precedence: flag, then environment,
//! then file, then the built-in default. [`super::settings`] resolves the environment and the
//! file and gives the result to clap as defaults, so clap's own precedence puts flags first.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Path of the settings file, relative to the root (see `--root`).
pub(crate) const SETTINGS_FILE: &str = "etc/ecs-bootstrap/env";

#[derive(Debug, Parser)]
#[command(
    name = "ecs-bootstrap",
    version,
    about = "Boot agent for Amazon ECS container instances",
    long_about = "Boot agent for Amazon ECS container instances (EC2 launch type).\n\n\
        It fetches ecs.config from a private S3 bucket with the instance role's credentials \
        (from instance metadata), keeps containers on the Docker bridge away from instance \
        metadata (169.254.169.254, fd00:ec2::254) with iptables, and checks that the host still \
        reaches IMDSv2.\n\n\
        Every flag but -v, block-imds --remove and --drift, and iam-policy --format can also be set with an \
        environment variable ECS_BOOTSTRAP_<FLAG> (for example ECS_BOOTSTRAP_SOURCE) or in \
        /etc/ecs-bootstrap/env with the same names; a flag beats the environment, which beats \
        the file. Booleans take 1/0, true/false, \
        yes/no, on/off. A bad setting fails only a command that uses it (block-imds falls back \
        to its defaults); the file is used only when root owns it and others cannot write it.",
    after_help = "Exit codes: 0 success, 1 internal error, 2 usage or configuration error, \
        3 config step failed, 4 firewall step failed, 5 metadata check failed (an unexpected answer \
        from instance metadata, also in prove), 6 prove failed \
        (a bridge reaches instance metadata), 7 the host cannot reach instance metadata \
        (whichever step noticed it), 8 prove could not prove the block (no bridge to probe, no \
        free address for the probe, the probe path is broken, or our DROP rule's counter did \
        not move).\n\
        For `run`, the code names the first step that failed, except that 7 outranks the others."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Log line format: `text` (plain under systemd) or `json` for log shippers.
    /// Example: --log-format json
    #[arg(long, value_enum, env = "ECS_BOOTSTRAP_LOG_FORMAT", default_value_t = LogFormat::Text, global = true)]
    pub(crate) log_format: LogFormat,

    /// More log output (-v: debug, -vv: trace). Example: -v
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,

    /// Less log output: warnings and errors only. Example: -q
    #[arg(short, long, env = "ECS_BOOTSTRAP_QUIET", global = true)]
    pub(crate) quiet: bool,

    /// Format of the report printed at the end: readable `text` or one `json` document.
    /// Example: --output json
    #[arg(long, value_enum, env = "ECS_BOOTSTRAP_OUTPUT", default_value_t = OutputFormat::Text, global = true)]
    pub(crate) output: OutputFormat,

    /// Also write the JSON report to this file (atomically), for fleet tooling.
    /// Example: --report /run/ecs-bootstrap/report.json
    #[arg(long, env = "ECS_BOOTSTRAP_REPORT", value_name = "PATH", global = true)]
    pub(crate) report: Option<PathBuf>,

    /// Overall time limit in seconds; no step runs past it. Example: --deadline 60
    #[arg(long, env = "ECS_BOOTSTRAP_DEADLINE", value_name = "SECS", default_value_t = 120, global = true,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) deadline: u64,

    /// Treat PATH as the file system root for default paths (settings file, ecs.config,
    /// rules files, /etc/os-release, locks under /run). For image builds and tests.
    /// Example: --root /mnt/image
    #[arg(
        long,
        env = "ECS_BOOTSTRAP_ROOT",
        value_name = "PATH",
        default_value = "/",
        global = true
    )]
    pub(crate) root: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run every step: firewall and config fetch concurrently, then the metadata check.
    Run(RunArgs),
    /// Fetch ecs.config from S3 and write it atomically (mode 0600).
    FetchConfig(ConfigArgs),
    /// Block containers on the Docker bridge from instance metadata, and persist the rule.
    BlockImds(FirewallArgs),
    /// Check that the host reaches IMDSv2 and print what it says.
    CheckImds(CheckArgs),
    /// Prove the block: from a throwaway namespace on each blocked bridge, a control connection
    /// to the bridge's address must succeed, IMDS must not answer and our DROP rule's counter
    /// must rise; from the host IMDS must answer.
    Prove(ProveArgs),
    /// Print the least-privilege IAM policies for the instance role and its trust policy.
    IamPolicy(IamPolicyArgs),
    /// Say whether this instance is protected now: the block in the kernel (read-only: nothing
    /// is changed), the rules files and who loads them at boot, the last boot's report and the
    /// written ecs.config. Exit 0 only when the block holds now, 4 when it does not (or cannot
    /// be confirmed). Writes no file.
    Status(StatusArgs),
}

#[derive(Debug, Args, Clone)]
pub(crate) struct ProveArgs {
    /// IPv6 probe of [fd00:ec2::254]:80 as well: auto (when docker0 has an IPv6 address), on, off.
    /// Example: --ipv6 on
    #[arg(long = "ipv6", value_enum, env = "ECS_BOOTSTRAP_IPV6", default_value_t = Ipv6Mode::Auto)]
    pub(crate) ipv6: Ipv6Mode,

    /// Probe only this bridge [default: every bridge matching an --interface pattern].
    /// Example: --bridge docker0
    #[arg(long, env = "ECS_BOOTSTRAP_BRIDGE", value_name = "NAME")]
    pub(crate) bridge: Option<String>,

    /// Interface patterns that block-imds blocks; prove probes every bridge matching one.
    /// Example: --interface docker+ --interface br-+
    #[arg(
        long = "interface",
        env = "ECS_BOOTSTRAP_INTERFACE",
        value_name = "PATTERN",
        default_value = "docker+",
        value_delimiter = ','
    )]
    pub(crate) interfaces: Vec<String>,

    /// iptables binary whose DROP counters prove the block (ip6tables is looked up beside it).
    /// Example: --iptables /usr/sbin/iptables-legacy
    #[arg(long, env = "ECS_BOOTSTRAP_IPTABLES", value_name = "PATH")]
    pub(crate) iptables: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct IamPolicyArgs {
    /// The config object the role must read: s3://BUCKET/KEY[?versionId=V].
    /// Example: --source s3://my-bucket/ecs/prod.config
    #[arg(long, env = "ECS_BOOTSTRAP_SOURCE", value_name = "S3_URL")]
    pub(crate) source: String,

    /// KMS key that encrypts the object (adds kms:Decrypt on it).
    /// Example: --kms-key arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab
    #[arg(long, env = "ECS_BOOTSTRAP_KMS_KEY", value_name = "ARN")]
    pub(crate) kms_key: Option<String>,

    /// The 12-digit account that owns the bucket: the read is allowed only from that account's
    /// bucket (an s3:ResourceAccount condition), as --expected-bucket-owner enforces at fetch
    /// time. Example: --expected-bucket-owner 123456789012
    #[arg(
        long,
        env = "ECS_BOOTSTRAP_EXPECTED_BUCKET_OWNER",
        value_name = "ACCOUNT_ID"
    )]
    pub(crate) expected_bucket_owner: Option<String>,

    /// Partition of the ARNs and service domains: aws, aws-cn or aws-us-gov [default: the one
    /// of --kms-key or of an access point source, else aws]. Example: --partition aws-cn
    #[arg(long, env = "ECS_BOOTSTRAP_PARTITION", value_name = "PARTITION",
          value_parser = ["aws", "aws-cn", "aws-us-gov"])]
    pub(crate) partition: Option<String>,

    /// Output format: json (the policy documents) or cloudformation (a template snippet).
    /// Example: --format cloudformation
    #[arg(long, value_enum, default_value_t = PolicyFormat::Json)]
    pub(crate) format: PolicyFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PolicyFormat {
    Json,
    Cloudformation,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct ConfigArgs {
    /// Where ecs.config lives: s3://BUCKET/KEY, optionally with ?versionId=V.
    /// Example: --source s3://my-bucket/ecs/prod.config
    #[arg(long, env = "ECS_BOOTSTRAP_SOURCE", value_name = "S3_URL")]
    pub(crate) source: Option<String>,

    /// Read the source URL from this instance tag through IMDS (instance metadata tags must be
    /// enabled). Example: --source-from-tag ecs-bootstrap:source
    #[arg(
        long,
        env = "ECS_BOOTSTRAP_SOURCE_FROM_TAG",
        value_name = "TAG_KEY",
        conflicts_with = "source"
    )]
    pub(crate) source_from_tag: Option<String>,

    /// Destination file [default: /etc/ecs/ecs.config under --root].
    /// Example: --dest /etc/ecs/ecs.config
    #[arg(long, env = "ECS_BOOTSTRAP_DEST", value_name = "PATH")]
    pub(crate) dest: Option<PathBuf>,

    /// Required SHA-256 of the object (hex); on mismatch nothing is written.
    /// Example: --sha256 9f86d081884c7d65...
    #[arg(long, env = "ECS_BOOTSTRAP_SHA256", value_name = "HEX")]
    pub(crate) sha256: Option<String>,

    /// Refuse the bucket unless this account owns it (S3 ExpectedBucketOwner).
    /// Example: --expected-bucket-owner 123456789012
    #[arg(
        long,
        env = "ECS_BOOTSTRAP_EXPECTED_BUCKET_OWNER",
        value_name = "ACCOUNT_ID"
    )]
    pub(crate) expected_bucket_owner: Option<String>,

    /// Largest object accepted, in bytes. Example: --max-size 65536
    #[arg(
        long,
        env = "ECS_BOOTSTRAP_MAX_SIZE",
        value_name = "BYTES",
        default_value_t = 65536
    )]
    pub(crate) max_size: u64,

    /// Treat validation warnings (unknown or duplicate keys, ambiguous values) as errors.
    /// Example: --strict
    #[arg(long, env = "ECS_BOOTSTRAP_STRICT")]
    pub(crate) strict: bool,

    /// Accept an object without a single setting (empty, or only comments): without this flag
    /// it is an error and ecs.config is left as it is, since an empty ecs.config makes the ECS
    /// agent join the `default` cluster. Example: --allow-empty
    #[arg(long, env = "ECS_BOOTSTRAP_ALLOW_EMPTY")]
    pub(crate) allow_empty: bool,

    /// Override or add a key after the fetched content; repeatable.
    /// Example: --set ECS_CLUSTER=prod --set ECS_LOGLEVEL=debug
    #[arg(long = "set", env = "ECS_BOOTSTRAP_SET", value_name = "KEY=VALUE")]
    pub(crate) set: Vec<String>,

    /// Write ECS_AWSVPC_BLOCK_IMDS=true into ecs.config (as a last --set): the ECS agent then
    /// blocks instance metadata for tasks in awsvpc mode. Example: --block-awsvpc-imds
    #[arg(long, env = "ECS_BOOTSTRAP_BLOCK_AWSVPC_IMDS")]
    pub(crate) block_awsvpc_imds: bool,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct FirewallArgs {
    /// Chain for the DROP rule: DOCKER-USER (survives dockerd restarts) or FORWARD (the
    /// documented placement, bypassed after dockerd restarts). Example: --chain DOCKER-USER
    #[arg(long, value_enum, env = "ECS_BOOTSTRAP_CHAIN", default_value_t = ChainChoice::DockerUser)]
    pub(crate) chain: ChainChoice,

    /// Input interface pattern to block; repeatable or comma-separated. iptables' wildcard is a
    /// trailing + (not *). User-defined bridge networks use interfaces named br-<id>, which
    /// docker+ does not match: add br-+ to cover them.
    /// Example: --interface docker+ --interface br-+
    #[arg(
        long = "interface",
        env = "ECS_BOOTSTRAP_INTERFACE",
        value_name = "PATTERN",
        default_value = "docker+",
        value_delimiter = ','
    )]
    pub(crate) interfaces: Vec<String>,

    /// IPv6 (fd00:ec2::254 with ip6tables): auto (when the host has IPv6 and ip6tables),
    /// on, or off. Example: --ipv6 off
    #[arg(long, value_enum, env = "ECS_BOOTSTRAP_IPV6", default_value_t = Ipv6Mode::Auto)]
    pub(crate) ipv6: Ipv6Mode,

    /// iptables binary to run (ip6tables is looked up beside it). Example: --iptables /usr/sbin/iptables-legacy
    #[arg(long, env = "ECS_BOOTSTRAP_IPTABLES", value_name = "PATH")]
    pub(crate) iptables: Option<PathBuf>,

    /// How to persist: merge our rule into the rules file, full-save (iptables-save output, as
    /// the AWS documentation does), or none. Example: --persist none
    #[arg(long, value_enum, env = "ECS_BOOTSTRAP_PERSIST", default_value_t = PersistMode::Merge)]
    pub(crate) persist: PersistMode,

    /// IPv4 rules file; default from the distribution (/etc/sysconfig/iptables on Amazon
    /// Linux and RHEL, /etc/iptables/rules.v4 on Debian and Ubuntu).
    /// Example: --persist-file /etc/sysconfig/iptables
    #[arg(long, env = "ECS_BOOTSTRAP_PERSIST_FILE", value_name = "PATH")]
    pub(crate) persist_file: Option<PathBuf>,

    /// IPv6 rules file; default from the distribution. Example: --persist-file6 /etc/iptables/rules.v6
    #[arg(long, env = "ECS_BOOTSTRAP_PERSIST_FILE6", value_name = "PATH")]
    pub(crate) persist_file6: Option<PathBuf>,

    /// Undo the block: remove every rule ecs-bootstrap added (they carry the comment
    /// `ecs-bootstrap`), from the kernel and from the rules file; DOCKER-USER and its jump too
    /// when nothing else uses them. Containers on the bridges reach instance metadata again.
    /// Example: block-imds --remove
    #[arg(long)]
    pub(crate) remove: bool,

    /// Re-check a block asserted at boot (the ecs-bootstrap-drift.timer runs this every
    /// minute): repairs it, and logs every repair as an error ("drift: ..."). A check that
    /// finds nothing runs one iptables -S per family and nothing else.
    /// Example: block-imds --drift
    #[arg(long, conflicts_with = "remove")]
    pub(crate) drift: bool,
}

#[derive(Debug, Args, Clone, Default)]
pub(crate) struct CheckArgs {
    /// Also make one request without a token to learn whether IMDSv1 still answers. Off by
    /// default: EC2 counts every tokenless request in the CloudWatch metric MetadataNoToken,
    /// which fleets watch to find IMDSv1 callers. Example: --probe-imdsv1
    #[arg(long, env = "ECS_BOOTSTRAP_PROBE_IMDSV1")]
    pub(crate) probe_imdsv1: bool,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct StatusArgs {
    /// The block to check: the same flags (and settings) as block-imds.
    #[command(flatten)]
    pub(crate) firewall: FirewallArgs,

    /// The ecs.config to describe [default: /etc/ecs/ecs.config under --root].
    /// Example: --dest /etc/ecs/ecs.config
    #[arg(long, env = "ECS_BOOTSTRAP_DEST", value_name = "PATH")]
    pub(crate) dest: Option<PathBuf>,

    /// The last boot's report, where the config unit writes it [default:
    /// /run/ecs-bootstrap/report.json under --root]. Example: --boot-report /run/ecs-bootstrap/report.json
    #[arg(long, env = "ECS_BOOTSTRAP_BOOT_REPORT", value_name = "PATH")]
    pub(crate) boot_report: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    #[command(flatten)]
    pub(crate) firewall: FirewallArgs,
    #[command(flatten)]
    pub(crate) check: CheckArgs,

    /// Skip fetching ecs.config. Example: --skip-config
    #[arg(long, env = "ECS_BOOTSTRAP_SKIP_CONFIG")]
    pub(crate) skip_config: bool,
    /// Skip the firewall step. Example: --skip-firewall
    #[arg(long, env = "ECS_BOOTSTRAP_SKIP_FIREWALL")]
    pub(crate) skip_firewall: bool,
    /// Skip the metadata check. Example: --skip-check
    #[arg(long, env = "ECS_BOOTSTRAP_SKIP_CHECK")]
    pub(crate) skip_check: bool,
    /// Add `prove` as a fourth step. Example: --prove
    #[arg(long, env = "ECS_BOOTSTRAP_PROVE")]
    pub(crate) prove: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ChainChoice {
    #[value(name = "DOCKER-USER", alias = "docker-user")]
    DockerUser,
    #[value(name = "FORWARD", alias = "forward")]
    Forward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Ipv6Mode {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PersistMode {
    Merge,
    FullSave,
    None,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).expect("parses")
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The flags without a variable are exactly the four README and `--help` name; every
    /// other flag's variable is `ECS_BOOTSTRAP_` and its long name.
    #[test]
    fn every_flag_but_four_has_its_variable() {
        fn walk(cmd: &clap::Command, without: &mut std::collections::BTreeSet<String>) {
            for a in cmd.get_arguments() {
                let Some(long) = a.get_long() else { continue };
                let propagated = a.is_global_set() && cmd.get_name() != "ecs-bootstrap";
                if propagated || ["help", "version"].contains(&long) {
                    continue;
                }
                match a.get_env().and_then(|e| e.to_str()) {
                    None => {
                        without.insert(format!("{} --{long}", cmd.get_name()));
                    }
                    Some(env) => {
                        let want = format!(
                            "ECS_BOOTSTRAP_{}",
                            long.to_ascii_uppercase().replace('-', "_")
                        );
                        assert_eq!(env, want, "--{long}");
                    }
                }
            }
            for s in cmd.get_subcommands() {
                walk(s, without);
            }
        }
        let mut without = std::collections::BTreeSet::new();
        let mut cmd = Cli::command();
        cmd.build();
        walk(&cmd, &mut without);
        let without: Vec<&str> = without.iter().map(String::as_str).collect();
        assert_eq!(
            without,
            [
                "block-imds --drift",
                "block-imds --remove",
                "ecs-bootstrap --verbose",
                "iam-policy --format",
                "run --drift",
                "run --remove",
                "status --drift",
                "status --remove",
            ]
        );
    }

    #[test]
    fn global_flags_after_subcommand() {
        let cli = parse(&["ecs-bootstrap", "run", "--output", "json", "-v"]);
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.verbose, 1);
    }
}

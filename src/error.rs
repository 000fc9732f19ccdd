//! Steps and the documented exit codes.

use serde::{Deserialize, Serialize};

/// One step of a run. The order is the order of the exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Config,
    Firewall,
    Check,
    Prove,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Config => "config",
            Step::Firewall => "firewall",
            Step::Check => "check",
            Step::Prove => "prove",
        }
    }

    pub fn exit_code(self) -> Exit {
        match self {
            Step::Config => Exit::Config,
            Step::Firewall => Exit::Firewall,
            Step::Check => Exit::Check,
            Step::Prove => Exit::Prove,
        }
    }
}

/// Documented exit codes (README, `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    Internal = 1,
    Usage = 2,
    Config = 3,
    Firewall = 4,
    Check = 5,
    Prove = 6,
    /// The host cannot reach instance metadata: whichever step noticed it first (the region
    /// lookup, the credentials, the check), this is the cause to fix, so it has its own code.
    ImdsUnreachable = 7,
    /// `prove` could not prove the block: no bridge to probe, no free address for the probe,
    /// the probe path is broken (the
    /// control connection through the bridge failed), or IMDS did not answer but our DROP
    /// rule's counter did not move (something else stopped the packet). Neither a pass (0)
    /// nor a leak (6).
    NotProven = 8,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A usage or configuration error: bad flag values, an unreadable settings file. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

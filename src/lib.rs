//! ecs-bootstrap: boot agent for Amazon ECS container instances. See ARCHITECTURE.md.

pub mod app;
mod backoff;
mod check;
pub mod config;
pub(crate) mod error;
pub mod firewall;
pub(crate) mod fsutil;
pub(crate) mod iam_policy;
pub(crate) mod imds;
pub(crate) mod logging;
pub(crate) mod posture;
pub(crate) mod prove;
pub(crate) mod report;
pub(crate) mod status;
pub mod sys;

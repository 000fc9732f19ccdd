//! ecs-bootstrap: boot agent for Amazon ECS container instances. See ARCHITECTURE.md.

pub mod app;
mod backoff;
mod check;
pub mod config;
pub mod error;
pub mod firewall;
pub mod fsutil;
pub mod iam_policy;
pub mod imds;
pub mod logging;
pub mod posture;
pub mod prove;
pub mod report;
pub mod sys;

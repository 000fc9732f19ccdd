//! The integration tests: one crate, one harness ([`harness`]). Each module runs the real
//! `ecs-bootstrap` binary (or, for the firewall runner, the library) against real peers: moto,
//! the IMDSv2 emulator, real iptables in namespaces the tests create, a real dockerd.
//! Tests that need root and namespaces fail, never skip, without them.
//!
//! Run one module with `cargo test --test integration MODULE::` (for example `firewall::`).

mod harness;

mod check;
mod config;
mod docs;
mod e2e;
mod faults;
mod firewall;
mod firewall_dockerd;
mod iam_policy;
mod logging;
mod posture;
mod properties;
mod prove;
mod readers;
mod run_cmd;
mod status;

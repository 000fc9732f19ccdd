//! The one test harness: `sandbox` runs the real binary in a sandbox of real peers
//! (`tests/sandbox/sandbox.py`); `netns` builds the firewall tests' own namespaces, bridge and
//! listeners and runs a real dockerd in them.

pub mod netns;
pub mod sandbox;

#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this). Run as root on Debian or Ubuntu:
#   sudo tests/run.sh
# Installs what the tests need when it is missing (apt packages, the pinned Python peers in a
# venv), then runs formatting and lint checks, unit tests, and the integration tests that run
# the real binary in network-namespace sandboxes.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/run.sh needs root (network namespaces, iptables): run it with sudo" >&2
    exit 2
fi

log "dependencies (apt packages when missing; pinned Python peers in a venv)"
ECS_BOOTSTRAP_PYTHON=$(bash tests/deps.sh --tests)
export ECS_BOOTSTRAP_PYTHON

# Sandboxes and namespaces left by killed runs. Only in CI (or when asked): on a shared
# development machine this would also tear down sandboxes of suites running beside this one.
if [[ ${CI:-} == true || ${ECS_BOOTSTRAP_SWEEP:-} == 1 ]]; then
    log "leftover sandboxes from killed runs"
    "$ECS_BOOTSTRAP_PYTHON" tests/sandbox/sandbox.py down --all >&2 || true
    ip netns list | awk '$1 ~ /^ebs-(fw|prove)-/ {print $1}' | xargs -r -n1 ip netns del
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings denied)"
cargo clippy --all-targets --locked -- -D warnings

log "shellcheck"
mapfile -t scripts < <(git ls-files '*.sh' .ci/run)
shellcheck "${scripts[@]}"

log "cargo test (unit + integration, real binary in sandboxes)"
cargo test --locked -- --test-threads "${TEST_THREADS:-4}"

log "systemd units: systemd-analyze verify, exposure, and the boot order beside cloud-init and the ECS agent"
bash packaging/check-units.sh
bash packaging/check-boot-order.sh

log "examples: shellcheck, YAML, Packer"
bash examples/check.sh

log "packages: build the .deb and .rpm, check them, install the .deb"
bash packaging/check-packages.sh

# Real boots: a Debian 12 guest under qemu with the .deb baked in (tests/vm/run.sh; about
# 20-30 minutes under TCG, the guest image is cached under target/vm/).
if [[ ${ECS_BOOTSTRAP_SKIP_VM:-} == 1 ]]; then
    log "VM suite: SKIPPED because ECS_BOOTSTRAP_SKIP_VM=1 (CI never sets it)"
else
    log "VM suite: real boots of a Debian 12 guest (tests/vm/run.sh)"
    bash tests/vm/run.sh
fi

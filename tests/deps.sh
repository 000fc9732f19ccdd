#!/usr/bin/env bash
# Installs what the demo and the tests need when it is missing (Debian or Ubuntu, as root),
# then prints the sandbox venv's python path on stdout. Sourced by tests/run.sh and demo.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
for pair in iptables:iptables-legacy iproute2:ip curl:curl python3-venv:- time:/usr/bin/time \
            shellcheck:shellcheck util-linux:unshare docker.io:/usr/sbin/dockerd; do
    pkg=${pair%%:*} bin=${pair#*:}
    if [[ $bin == - ]]; then
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    elif ! command -v "$bin" >/dev/null 2>&1 && [[ ! -x $bin ]]; then
        need+=("$pkg")
    fi
done
if ((${#need[@]})); then
    echo "deps: installing ${need[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "deps: cargo is missing: install the Rust toolchain (rustup), 1.95 or later" >&2
    exit 2
fi
bash tests/sandbox/venv.sh

#!/usr/bin/env bash
# Installs what the demo (and, with --tests, the test suite) needs when it is missing (Debian or
# Ubuntu, as root), then prints the sandbox venv's python path on stdout. Called by
# tests/run.sh and tests/demo.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

wanted=(iptables:iptables-legacy iproute2:ip curl:curl python3-venv:- util-linux:unshare)
if [[ ${1:-} == --tests ]]; then
    # docker.io: the real-dockerd firewall test; nftables (nft): the firewall test that emulates
    # Docker 29's nftables backend; rpm: package queries; time and binutils (strip): the
    # benchmark scripts under bench/, which use this list too; strace: the processes a drift
    # check starts (the firewall test and the benchmark count them).
    wanted+=(shellcheck:shellcheck docker.io:/usr/sbin/dockerd nftables:/usr/sbin/nft rpm:rpm time:/usr/bin/time binutils:strip strace:strace)
    # systemd: systemd-analyze for packaging/check-units.sh; systemd-journald, systemd-cat and
    # journalctl for the test that reads log priorities back from a journald of its own.
    wanted+=(systemd:/lib/systemd/systemd-journald)
    # The VM suite (tests/vm): the guest image from Debian's packages, qemu, the NoCloud seed
    # (a vfat volume), ssh into the guest, the offline check of the power-cut disk.
    wanted+=(mmdebstrap:mmdebstrap qemu-system-x86:qemu-system-x86_64 dosfstools:mkfs.vfat
        mtools:mcopy openssh-client:ssh e2fsprogs:debugfs)
fi
need=()
for pair in "${wanted[@]}"; do
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
    # Installing docker.io must not start dockerd on this machine (it would add a docker0 and
    # iptables rules to the machine's own network): a policy-rc.d that refuses service starts
    # during the install, unless the machine already has one.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 || rc=$?
    [[ -n $own_policy ]] && rm -f "$policy"
    ((rc == 0)) || exit "$rc"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "deps: cargo is missing: install the Rust toolchain (rustup), 1.95 or later" >&2
    exit 2
fi
bash tests/sandbox/venv.sh

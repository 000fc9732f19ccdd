#!/usr/bin/env bash
# Offline check of the boot ordering: our units beside cloud-init's, Docker's and an ECS agent
# unit, as each supported distribution orders them, must form no ordering cycle.
#
# `systemd-analyze verify` of our units alone cannot see a cycle: it closes only through other
# packages' units (on Debian and Ubuntu, cloud-final.service is ordered after
# multi-user.target). So this script builds an image tree per case under a temporary folder:
#   - systemd's own units (this machine's /lib/systemd/system);
#   - cloud-init's units from Debian's cloud-init package (apt-get download, cached under
#     target/boot-order/), as shipped ("debian"), with the two orderings that only its Debian
#     and Ubuntu variants carry removed ("amazon-linux": After=multi-user.target and
#     Before=apt-daily.service in cloud-final.service), or none at all;
#   - docker.service and docker.socket (this machine's, from docker.io, else a stand-in with
#     the same ordering);
#   - an ecs.service like amazon-ecs-init's Debian unit (After=docker.service), like its Amazon
#     Linux unit (also After=cloud-final.service), or none;
#   - our units and drop-ins from systemd/, enabled with `systemctl --root enable` as the
#     packages do, and cloud-init.target wanted by multi-user.target as cloud-init's generator
#     does at boot;
# then runs `systemd-analyze verify --root` on default.target, our units and ecs.service, which
# builds the start transactions and reports any ordering cycle. Any "cycle" line fails.
#
# Control: the same Debian tree without the ecs.service drop-in and with the config unit's
# defaults ordered as before the fix must show the cycle; otherwise this check could not fail and says so.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${CARGO_TARGET_DIR:-$repo/target}/boot-order
mkdir -p "$cache"

command -v systemd-analyze >/dev/null || {
    echo "check-boot-order: systemd-analyze is missing; install the systemd package" >&2
    exit 1
}

# cloud-init's units, from Debian's package.
ci_units=$cache/cloud-init/lib/systemd/system
if [[ ! -f $ci_units/cloud-final.service ]]; then
    (
        cd "$cache"
        rm -f cloud-init_*.deb
        if ! apt-get download cloud-init >/dev/null 2>&1; then
            apt-get update -qq >/dev/null
            apt-get download cloud-init >/dev/null
        fi
        rm -rf cloud-init && mkdir cloud-init
        dpkg-deb -x cloud-init_*.deb cloud-init
    ) || {
        echo "check-boot-order: could not fetch Debian's cloud-init package (apt-get download cloud-init)" >&2
        exit 1
    }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# make_tree DIR CLOUD_INIT(debian|amazon-linux|none) ECS(debian|amazon-linux|none) [control]
make_tree() {
    local root=$1 ci=$2 ecs=$3 control=${4:-}
    local lib=$root/usr/lib/systemd/system
    mkdir -p "$lib" "$root/etc/systemd/system" "$root/usr/bin"
    cp -a /lib/systemd/system/. "$lib/"
    # What this machine has installed beyond systemd does not belong in the image.
    rm -rf "$lib"/docker.* "$lib"/containerd.* "$lib"/cloud-* "$lib"/ecs*
    printf '#!/bin/sh\nexit 0\n' >"$root/usr/bin/ecs-bootstrap"
    chmod 755 "$root/usr/bin/ecs-bootstrap"

    if [[ -f /lib/systemd/system/docker.service ]]; then
        cp /lib/systemd/system/docker.service /lib/systemd/system/docker.socket "$lib/"
    else
        printf '[Unit]\nAfter=network-online.target docker.socket firewalld.service containerd.service\nWants=network-online.target\nRequires=docker.socket\n[Service]\nType=notify\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n' >"$lib/docker.service"
        printf '[Unit]\nPartOf=docker.service\n[Socket]\nListenStream=/run/docker.sock\n[Install]\nWantedBy=sockets.target\n' >"$lib/docker.socket"
    fi

    case $ci in
    debian) cp "$ci_units"/cloud-* "$lib/" ;;
    amazon-linux)
        cp "$ci_units"/cloud-* "$lib/"
        sed -i -e '/^After=multi-user.target$/d' -e '/^Before=apt-daily.service$/d' "$lib/cloud-final.service"
        ;;
    none) ;;
    esac

    local after_cloud=
    [[ $ecs == amazon-linux ]] && after_cloud=$'\nAfter=cloud-final.service'
    if [[ $ecs != none ]]; then
        printf '[Unit]\nDescription=ECS agent stand-in (%s ordering)\nRequires=docker.service\nAfter=docker.service%s\n[Service]\nType=simple\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n' \
            "$ecs" "$after_cloud" >"$lib/ecs.service"
    fi

    cp "$repo"/systemd/*.service "$lib/"
    local d
    for d in "$repo"/systemd/*.service.d; do
        mkdir -p "$lib/$(basename "$d")"
        cp "$d"/*.conf "$lib/$(basename "$d")/"
    done
    if [[ $control == control ]]; then
        # The units as they were before the fix: no ecs.service drop-in, the config unit not
        # ordered after multi-user.target.
        rm -rf "$lib/ecs.service.d"
        sed -i -e '/^After=/s/ multi-user.target//' "$lib/ecs-bootstrap-config.service"
    fi

    local enable=(docker.service ecs-bootstrap-firewall.service ecs-bootstrap-config.service)
    [[ $ecs != none ]] && enable+=(ecs.service)
    [[ $ci != none ]] && enable+=(cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service)
    systemctl --root="$root" enable "${enable[@]}" >/dev/null 2>&1
    if [[ $ci != none ]]; then
        mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
        ln -sf /usr/lib/systemd/system/cloud-init.target "$root/etc/systemd/system/multi-user.target.wants/cloud-init.target"
    fi
}

# verify_tree ROOT -> prints systemd-analyze's output for the boot and our units
verify_tree() {
    local root=$1 u targets=(default.target ecs-bootstrap-firewall.service ecs-bootstrap-config.service)
    [[ -f $root/usr/lib/systemd/system/ecs.service ]] && targets+=(ecs.service)
    for u in "${targets[@]}"; do
        systemd-analyze verify --root="$root" --man=no "$u" 2>&1 || true
    done
}

n=0
for ci in debian amazon-linux none; do
    for ecs in debian amazon-linux none; do
        n=$((n + 1))
        root=$tmp/tree$n
        make_tree "$root" "$ci" "$ecs"
        out=$(verify_tree "$root")
        if grep -qi 'cycle' <<<"$out"; then
            fail "cloud-init $ci, ecs.service $ecs: ordering cycle:"
            grep -i 'cycle\|dependency on' <<<"$out" | sed 's/^/    /' >&2
        else
            echo "ok: cloud-init $ci, ecs.service $ecs: no ordering cycle"
        fi
        # The config unit must run at boot whether or not ecs.service exists.
        if [[ ! -L $root/etc/systemd/system/multi-user.target.wants/ecs-bootstrap-config.service ]]; then
            fail "cloud-init $ci, ecs.service $ecs: ecs-bootstrap-config.service is not wanted by multi-user.target once enabled"
        fi
    done
done

root=$tmp/control
make_tree "$root" debian debian control
if grep -qi 'ordering cycle' <<<"$(verify_tree "$root")"; then
    echo "ok: control: the units without the fix show the Debian cycle, so this check can see one"
else
    fail "control: the units without the fix show no cycle on the Debian tree; this check cannot detect one"
fi

if ((failures > 0)); then
    echo "check-boot-order: $failures failure(s)" >&2
    exit 1
fi
echo "check-boot-order: no ordering cycle in $n trees"

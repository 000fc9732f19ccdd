#!/usr/bin/env bash
# Quick start: the main job end to end in a local sandbox (no EC2 needed). As root:
#   tests/demo.sh          (or `sudo tests/demo.sh` from another user)
# Builds ecs-bootstrap, starts a sandbox of real peers (network namespaces with a docker0
# bridge and a "container" on it, moto as S3 with authentication on, an IMDSv2 emulator on
# 169.254.169.254 inside the sandbox), runs `ecs-bootstrap run --prove` in the sandbox's host
# namespace, shows what it did, and tears everything down (also on failure and Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "tests/demo.sh needs root (network namespaces, iptables): run it as root, or with sudo" >&2
    exit 2
fi
py=$(bash tests/deps.sh)
cargo build --release --locked >&2
bin=$PWD/target/release/ecs-bootstrap

name=demo$$
name=${name:0:8}
root=$(mktemp -d /tmp/ecs-bootstrap-demo.XXXXXX)
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    "$py" tests/sandbox/sandbox.py down "$name" >/dev/null 2>&1 || true
    rm -rf "$root"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# `--root` stands in for the instance's file system. An empty folder would be an instance
# without /etc/os-release, where ecs-bootstrap rightly warns that it cannot tell where the
# distribution keeps its rules file; so the root gets this machine's os-release and an enabled
# netfilter-persistent (as on a Debian image with iptables-persistent installed).
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
cp /etc/os-release "$root/etc/os-release"
ln -s /lib/systemd/system/netfilter-persistent.service \
    "$root/etc/systemd/system/multi-user.target.wants/netfilter-persistent.service"
echo "== --root $root: this machine's /etc/os-release, netfilter-persistent enabled"

echo "== starting the sandbox ($name)"
state=$("$py" tests/sandbox/sandbox.py up "$name")
field() { "$py" -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" <<<"$state"; }
host=ebs-$name-host ctr=ebs-$name-ctr
source_url="s3://$(field bucket)/$(field key)"

probe() { # namespace -> "reachable" or "blocked"
    if ip netns exec "$1" curl -s -o /dev/null -m 2 -X PUT \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token; then
        echo reachable
    else
        echo blocked
    fi
}
echo "== before: container -> IMDS: $(probe "$ctr")"

echo "== ecs-bootstrap run --source $source_url --prove"
rc=0
ip netns exec "$host" env -i PATH="$PATH" AWS_ENDPOINT_URL_S3="$(field s3_endpoint)" \
    "$bin" --root "$root" run --source "$source_url" --prove || rc=$?

echo
echo "== $root/etc/ecs/ecs.config ($(stat -c %a "$root/etc/ecs/ecs.config"))"
cat "$root/etc/ecs/ecs.config"
echo "== iptables in the host namespace (filter: FORWARD, DOCKER-USER)"
ip netns exec "$host" iptables -S FORWARD
ip netns exec "$host" iptables -S DOCKER-USER
echo "== ip6tables in the host namespace (DOCKER-USER)"
ip netns exec "$host" ip6tables -S DOCKER-USER 2>/dev/null || true
for f in "$root"/etc/sysconfig/iptables "$root"/etc/iptables/rules.v4; do
    [[ -f $f ]] && { echo "== persisted: $f"; cat "$f"; }
done
echo "== after: container -> IMDS: $(probe "$ctr"); host -> IMDS: $(probe "$host")"
echo "== ecs-bootstrap exited with $rc"
exit "$rc"

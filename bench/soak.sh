#!/usr/bin/env bash
# Soak: many consecutive `ecs-bootstrap run`s in one sandbox (default 500), as root:
#   sudo bench/soak.sh [RUNS]          # RUNS: 100 to 5000, default 500
#   SOAK_PROVE=1 sudo bench/soak.sh    # each run also proves the block (`run --prove`: a
#                                      # throwaway namespace on docker0, made and deleted)
# After every run it checks, and stops at the first drift with a clear FAIL:
# - exit code 0 and a report, within 60 s (timeout; --deadline 30);
# - no process left in the sandbox's host namespace (`ip netns pids`), no `ebs-prove-*`
#   namespace left (with SOAK_PROVE=1 each run makes and deletes one) and the sandbox's three
#   namespaces still there;
# - no temp file: the private TMPDIR is empty and the --root folder holds exactly the files it
#   held after run 1 (ecs.config, the rules files, lock files under run/);
# - exactly one DROP rule and one jump (iptables -S), and the same for IPv6 when run 1 made one;
# - ecs.config byte-identical to the S3 object and the rules file identical to run 1's;
# - the peers' open file descriptors (moto, the IMDS emulator) do not grow by more than 32;
# - exactly one IMDS token PUT per run (two with SOAK_PROVE=1: prove measures the PUT
#   response hop limit with a token PUT of its own).
# At the end: peak RSS (GNU time %M) median/max of the first 50 and the last 50 runs, which
# must not grow by more than 10% + 512 KiB; wall time median of the first and last 50.
# The figures also go to target/bench/soak-latest.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

runs=${1:-${SOAK_RUNS:-500}}
if ! [[ $runs =~ ^[0-9]+$ ]] || ((runs < 100 || runs > 5000)); then
    echo "usage: bench/soak.sh [RUNS]   (RUNS: 100 to 5000, default 500)" >&2
    exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "bench/soak.sh needs root (network namespaces, iptables): run it with sudo" >&2
    exit 2
fi

log() { printf '== %s\n' "$*" >&2; }
py=$(bash tests/deps.sh --tests)
cargo build --release --locked >&2
bin=$repo/target/release/ecs-bootstrap

kind=soak
# shellcheck source=bench/sandbox.sh
. bench/sandbox.sh
pid_of() { "$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["pids"][sys.argv[2]]["pid"])' "$work/state.json" "$1"; }
moto_pid=$(pid_of moto)
imds_pid=$(pid_of imds)
root=$work/root
tmp=$work/tmp
mkdir -p "$root" "$tmp"

fail() {
    echo "FAIL at run $i: $*" >&2
    [[ -f $work/out ]] && { echo "--- output of the run" >&2; cat "$work/out" >&2; }
    exit 1
}
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
puts() { grep -c '"method": "PUT"' "$imds_log" || true; }
files() { (cd "$root" && find . -mindepth 1 | LC_ALL=C sort); }
rules() { # family tool -> "drops jumps"
    local s
    s=$(ip netns exec "$host" "$1" -S 2>/dev/null || true)
    printf '%s %s\n' "$(grep -c -- '-j DROP$' <<<"$s" || true)" \
        "$(grep -c -- '^-A FORWARD -j DOCKER-USER$' <<<"$s" || true)"
}

prove=()
[[ ${SOAK_PROVE:-0} == 1 ]] && prove=(--prove)
moto_fd0=$(fds "$moto_pid") imds_fd0=$(fds "$imds_pid")
: >"$work/results.tsv"
log "$runs runs of: ecs-bootstrap run ${prove[*]} --source $src"
start=$(date +%s)
for ((i = 1; i <= runs; i++)); do
    p0=$(puts)
    ns0=$(ip netns list 2>/dev/null | awk '/^ebs-prove-/ {print $1}')
    t0=$(date +%s%N)
    rc=0
    timeout 60 /usr/bin/time -f %M -o "$work/rss" ip netns exec "$host" env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TMPDIR="$tmp" \
        AWS_ENDPOINT_URL_S3="$s3" "$bin" --root "$root" --deadline 30 run "${prove[@]}" \
        --source "$src" --persist-file "$root/etc/sysconfig/iptables" \
        --persist-file6 "$root/etc/sysconfig/ip6tables" >"$work/out" 2>&1 || rc=$?
    t1=$(date +%s%N)
    ((rc == 0)) || fail "exit code $rc"
    sleep 0.02 # the emulator's last log line
    rss=$(tail -n1 "$work/rss")
    printf '%s\t%s\t%s\n' "$i" "$(((t1 - t0) / 1000))" "$rss" >>"$work/results.tsv"

    [[ -z $(ip netns pids "$host") ]] || fail "processes left in $host: $(ip netns pids "$host" | xargs)"
    ns=$(ip netns list 2>/dev/null | awk '{print $1}')
    # Other test suites on the machine may make their own ebs-prove-* namespaces: only those
    # that appeared during this run count.
    left=$(comm -13 <(printf '%s\n' "$ns0" | LC_ALL=C sort) <(grep '^ebs-prove-' <<<"$ns" | LC_ALL=C sort))
    [[ -z $left ]] || fail "prove namespace left: $(xargs <<<"$left")"
    for n in host ctr svc; do
        grep -qx "ebs-$name-$n" <<<"$ns" || fail "sandbox namespace ebs-$name-$n is gone"
    done
    [[ -z $(ls -A "$tmp") ]] || fail "temp files in TMPDIR: $(find "$tmp" -mindepth 1 | head -5 | xargs)"
    [[ $(sha256sum "$root/etc/ecs/ecs.config" | cut -d' ' -f1) == "$object_sha" ]] ||
        fail "ecs.config differs from the S3 object"
    ((p1 = $(puts) - p0)) || true
    # One for the run's IMDS client; prove measures the PUT response hop limit with its own.
    want=$((1 + ${#prove[@]}))
    ((p1 == want)) || fail "$p1 token PUTs in this run (want $want)"
    v4=$(rules iptables) v6=$(rules ip6tables)
    if ((i == 1)); then
        files >"$work/files1"
        sha256sum "$root/etc/sysconfig/iptables" >"$work/rules1"
        v6_1=$v6
        [[ $v4 == "1 1" ]] || fail "iptables: want one DROP rule and one jump, got (drops jumps) $v4"
        [[ $v6 == "1 1" || $v6 == "0 0" ]] || fail "ip6tables: (drops jumps) $v6"
        log "run 1: $(wc -l <"$work/files1") paths under --root; IPv4 (drops jumps) $v4, IPv6 $v6"
    else
        [[ $v4 == "1 1" ]] || fail "iptables: want one DROP rule and one jump, got (drops jumps) $v4"
        [[ $v6 == "$v6_1" ]] || fail "ip6tables changed from ($v6_1) to ($v6)"
        files | cmp -s - "$work/files1" || fail "files under --root changed: $(files | diff "$work/files1" - | xargs)"
        sha256sum -c --quiet "$work/rules1" >/dev/null 2>&1 || fail "the rules file changed"
    fi
    if ((i % 50 == 0)); then
        m=$(fds "$moto_pid") d=$(fds "$imds_pid")
        ((m <= moto_fd0 + 32 && d <= imds_fd0 + 32)) ||
            fail "peer fds grew: moto $moto_fd0 -> $m, imds $imds_fd0 -> $d"
        log "run $i: ok (rss ${rss} KiB; peer fds moto $moto_fd0 -> $m, imds $imds_fd0 -> $d)"
    fi
done
elapsed=$(($(date +%s) - start))
moto_fd1=$(fds "$moto_pid") imds_fd1=$(fds "$imds_pid")

{
    echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)," \
        "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r)," \
        "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "soak: $runs consecutive runs of \`run ${prove[*]}\` in $elapsed s, every check passed on every run"
    echo "peer fds: moto $moto_fd0 -> $moto_fd1, IMDS emulator $imds_fd0 -> $imds_fd1"
    python3 - "$work/results.tsv" <<'EOF'
import statistics as st, sys
rows = [l.split("\t") for l in open(sys.argv[1])]
ms = [int(r[1]) / 1000 for r in rows]
rss = [int(r[2]) for r in rows]
a, b = rss[:50], rss[-50:]
print(f"peak RSS KiB: first 50 median {st.median(a):.0f} max {max(a)}; last 50 median {st.median(b):.0f} max {max(b)}; all max {max(rss)}")
print(f"wall ms: first 50 median {st.median(ms[:50]):.1f}; last 50 median {st.median(ms[-50:]):.1f}; all max {max(ms):.1f}")
ok = st.median(b) <= st.median(a) * 1.1 + 512
print(f"{'PASS' if ok else 'FAIL'}  stable RSS (last-50 median <= first-50 median * 1.1 + 512 KiB)")
sys.exit(0 if ok else 1)
EOF
} | tee "$out_dir/soak-latest.txt"

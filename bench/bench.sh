#!/usr/bin/env bash
# Benchmark: `ecs-bootstrap run` against the documented manual procedure (bench/documented.sh:
# AWS CLI `aws s3 cp`, iptables insert if absent, iptables-save, curl IMDSv2 check), in one
# sandbox of real peers (tests/sandbox: moto as S3 with authentication on, the IMDSv2
# emulator). A script, not a timed test. As root:
#   sudo bench/bench.sh [PAIRS]        # PAIRS paired runs, default 10 (at least 10)
# Prints wall times (median, min, max), the ratio ours/theirs pair by pair and its median, peak
# RSS, IMDS requests and token PUTs per run (from the emulator's log), the fetch step alone,
# `--help` start-up, the stripped binary size, the cost of one drift check (`block-imds
# --drift` where the block is in place: wall time, and the processes it starts, counted with
# strace), and PASS/FAIL per target (docs/benchmarks.md, "Targets"). Exits 1 when a target fails. The figures also
# go to target/bench/latest.txt.
#
# Method (docs/benchmarks.md says more):
# - Both sides run in the sandbox's host namespace through `ip netns exec` with a clean
#   environment (`env -i`), S3 at moto (AWS_ENDPOINT_URL_S3). The AWS CLI gets the region from
#   AWS_DEFAULT_REGION (spares it an IMDS request); ecs-bootstrap asks IMDS for it.
# - Before every run, the host namespace's filter tables (iptables and ip6tables) are flushed
#   and their chains deleted, and the destination root is a new empty folder: each run does
#   the full work (fetch and write, create the rule, persist, check).
# - Pairs alternate the order (even pairs ours first, odd pairs theirs first). One untimed
#   warm-up run of each comes first (page cache, Python bytecode): figures are warm-cache.
# - Wall time: `date +%s%N` around the whole command (including `ip netns exec` and `env`,
#   the same on both sides). Peak RSS: GNU time's %M, i.e. ru_maxrss of wait4() on the
#   command. Linux folds the maxrss of every reaped descendant into it, so it is the peak of
#   the largest single process of the tree (not a sum): for the documented procedure that is
#   the AWS CLI's Python; for ecs-bootstrap, itself or an iptables child it ran.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

pairs=${1:-${BENCH_PAIRS:-10}}
if ! [[ $pairs =~ ^[0-9]+$ ]] || ((pairs < 10 || pairs > 200)); then
    echo "usage: bench/bench.sh [PAIRS]   (PAIRS: 10 to 200, default 10)" >&2
    exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "bench/bench.sh needs root (network namespaces, iptables): run it with sudo" >&2
    exit 2
fi

log() { printf '== %s\n' "$*" >&2; }

log "dependencies (apt packages when missing, sandbox venv)"
py=$(bash tests/deps.sh --tests)

log "release build"
cargo build --release --locked >&2
bin=$repo/target/release/ecs-bootstrap

# The AWS CLI, pinned, in its own venv; pip runs only when bench/requirements.txt changed.
venv=$repo/target/bench-venv
req=$repo/bench/requirements.txt
want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ ! -x $venv/bin/aws || $(cat "$venv/.requirements.sha256" 2>/dev/null) != "$want" ]]; then
    log "installing the AWS CLI into $venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req" >&2
    printf '%s\n' "$want" >"$venv/.requirements.sha256"
fi

kind=bench
# shellcheck source=bench/sandbox.sh
. bench/sandbox.sh
clean_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

reset() {
    ip netns exec "$host" iptables -F
    ip netns exec "$host" iptables -X
    ip netns exec "$host" ip6tables -F
    ip netns exec "$host" ip6tables -X
    rm -rf "$work/root"
    mkdir -p "$work/root"
}

# The command prefixes: ecs-bootstrap, and a command with the AWS CLI on PATH, each in the
# host namespace with a clean environment.
ours=(ip netns exec "$host" env -i PATH="$clean_path" AWS_ENDPOINT_URL_S3="$s3"
    "$bin" --root "$work/root")
theirs=(ip netns exec "$host" env -i PATH="$venv/bin:$clean_path" HOME="$work/root"
    AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL_S3="$s3")

# measure LABEL CMD... : runs CMD under GNU time; appends "LABEL ms rss_kib imds puts" to
# results.tsv; fails loudly when CMD fails.
measure() {
    local label=$1 n0 n1 p0 p1 t0 t1 rc=0
    shift
    n0=$(wc -l <"$imds_log")
    p0=$(grep -c '"method": "PUT"' "$imds_log" || true)
    t0=$(date +%s%N)
    /usr/bin/time -f %M -o "$work/rss" "$@" >"$work/out" 2>&1 || rc=$?
    t1=$(date +%s%N)
    if ((rc != 0)); then
        echo "FAILED: $label exited with $rc:" >&2
        cat "$work/out" >&2
        exit 1
    fi
    sleep 0.05 # let the emulator flush its last log line
    n1=$(wc -l <"$imds_log")
    p1=$(grep -c '"method": "PUT"' "$imds_log" || true)
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$(((t1 - t0) / 1000))" "$(tail -n1 "$work/rss")" \
        "$((n1 - n0))" "$((p1 - p0))" >>"$work/results.tsv"
}

verify() { # checks that a run did the work
    local got
    got=$(sha256sum "$work/root/etc/ecs/ecs.config" | cut -d' ' -f1)
    [[ $got == "$object_sha" ]] || { echo "FAILED: ecs.config differs from the object" >&2; exit 1; }
    [[ -s $work/root/etc/sysconfig/iptables ]] || { echo "FAILED: no rules file" >&2; exit 1; }
    # Ours carries its comment; the documented procedure's rule has none.
    ip netns exec "$host" iptables-save | grep -qE -- '-d 169\.254\.169\.254/32 -i docker\+ (-m comment --comment ecs-bootstrap )?-j DROP' ||
        { echo "FAILED: no DROP rule" >&2; exit 1; }
}

run_ours() {
    reset
    measure "${1:-run}" "${ours[@]}" run --source "$src" \
        --persist-file "$work/root/etc/sysconfig/iptables"
    verify
}
run_theirs() {
    reset
    measure "${1:-documented}" "${theirs[@]}" "$repo/bench/documented.sh" "$src" "$work/root"
    verify
}

: >"$work/results.tsv"
log "warm-up (not counted)"
run_ours warmup
run_theirs warmup
log "$pairs paired runs, alternating order"
for ((i = 0; i < pairs; i++)); do
    if ((i % 2 == 0)); then run_ours; run_theirs; else run_theirs; run_ours; fi
done
log "fetch step alone: ecs-bootstrap fetch-config vs aws s3 cp ($pairs each, alternating)"
for ((i = 0; i < pairs; i++)); do
    reset
    if ((i % 2 == 0)); then
        measure fetch "${ours[@]}" fetch-config --source "$src"
        reset
        measure s3cp "${theirs[@]}" aws s3 cp --only-show-errors "$src" "$work/root/ecs.config"
    else
        measure s3cp "${theirs[@]}" aws s3 cp --only-show-errors "$src" "$work/root/ecs.config"
        reset
        measure fetch "${ours[@]}" fetch-config --source "$src"
    fi
done
log "start-up: ecs-bootstrap --help vs aws --version ($pairs each)"
for ((i = 0; i < pairs; i++)); do
    measure help "${ours[@]}" --help
    measure awsversion "${theirs[@]}" aws --version
done

log "drift check: block-imds --drift where the block is in place ($pairs runs)"
reset
drift=("${ours[@]}" block-imds --persist-file "$work/root/etc/sysconfig/iptables")
"${drift[@]}" >"$work/out" 2>&1 || { cat "$work/out" >&2; echo "FAILED: block-imds" >&2; exit 1; }
drift+=(--drift)
for ((i = 0; i < pairs; i++)); do
    measure drift "${drift[@]}"
done
# The programs one drift check starts (execve that succeeded, the binary itself left out).
ip netns exec "$host" strace -f -qq -z -e trace=execve -e signal=none -o "$work/drift.trace" \
    "$bin" --root "$work/root" block-imds --drift --persist-file "$work/root/etc/sysconfig/iptables" \
    >"$work/out" 2>&1 || { cat "$work/out" >&2; echo "FAILED: traced drift check" >&2; exit 1; }
drift_procs=$(($(grep -c 'execve(' "$work/drift.trace") - 1))
drift_cmds=$(grep 'execve(' "$work/drift.trace" | tail -n +2 | sed -E 's/.*execve\("([^"]*)".*/\1/' | xargs -r -n1 basename | tr '\n' ' ')

stripped=$work/ecs-bootstrap.stripped
cp "$bin" "$stripped"
strip "$stripped"
size=$(stat -c %s "$stripped")

{
    echo "machine: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)," \
        "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), kernel $(uname -r)," \
        "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "ecs-bootstrap $(git describe --always --dirty 2>/dev/null || echo '?')," \
        "$(target/bench-venv/bin/aws --version 2>&1)"
    python3 - "$work/results.tsv" "$size" "$pairs" "$drift_procs" "$drift_cmds" <<'EOF'
import statistics as st, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
size, pairs = int(sys.argv[2]), int(sys.argv[3])
drift_procs, drift_cmds = int(sys.argv[4]), sys.argv[5].strip()
by = {}
for label, us, rss, n, puts in rows:
    by.setdefault(label, []).append((int(us) / 1000, int(rss), int(n), int(puts)))
def col(label, i):
    return [r[i] for r in by.get(label, [])]
def line(label, what):
    ms, rss, n, puts = (col(label, i) for i in range(4))
    print(f"{what:<34} wall ms median {st.median(ms):8.1f}  min {min(ms):8.1f}  max {max(ms):8.1f}"
          f"   peak RSS KiB median {st.median(rss):7.0f}  max {max(rss):7d}"
          f"   IMDS req/run {min(n)}..{max(n)}  token PUTs/run {min(puts)}..{max(puts)}")
print()
line("run", "ecs-bootstrap run")
line("documented", "documented procedure")
line("fetch", "ecs-bootstrap fetch-config")
line("s3cp", "aws s3 cp (alone)")
line("help", "ecs-bootstrap --help")
line("awsversion", "aws --version")
line("drift", "drift check (block in place)")
print(f"{'drift check processes':<34} {drift_procs} ({drift_cmds or 'none'}; the IPv4 and IPv6 listings)")
ours, theirs = col("run", 0), col("documented", 0)
ratios = [o / t for o, t in zip(ours, theirs)]
print()
print("ratio ours/theirs per pair:", " ".join(f"{r:.3f}" for r in ratios))
med = st.median(ratios)
print(f"median ratio {med:.3f}  =>  ecs-bootstrap run is {1 / med:.1f}x faster")
fetch_ratio = st.median(col("fetch", 0)) / st.median(col("s3cp", 0))
print(f"fetch step: median fetch-config / median aws s3 cp = {fetch_ratio:.3f} ({1 / fetch_ratio:.1f}x faster)")
rss_ours, rss_theirs = max(col("run", 1)), st.median(col("documented", 1))
puts = col("run", 3)
print(f"stripped release binary: {size} bytes ({size / 1048576:.2f} MiB)")
print()
targets = [
    ("run at least 15x faster (median pair ratio <= 1/15)", 1 / med >= 15, f"{1 / med:.1f}x"),
    ("peak RSS <= 1/6 of the documented procedure's", rss_ours * 6 <= rss_theirs,
     f"{rss_ours} KiB max vs {rss_theirs:.0f} KiB median (1/{rss_theirs / rss_ours:.1f})"),
    ("peak RSS <= 10 MiB", rss_ours <= 10240, f"{rss_ours} KiB max"),
    ("exactly one token PUT per run", all(p == 1 for p in puts), f"{min(puts)}..{max(puts)} per run"),
    ("stripped release binary < 7 MiB", size < 7 * 1048576, f"{size / 1048576:.2f} MiB"),
    ("a drift check that changes nothing starts one iptables -S per family", drift_procs <= 2,
     f"{drift_procs} processes: {drift_cmds}"),
]
failed = 0
for what, ok, fig in targets:
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'}  {what}: {fig}")
sys.exit(1 if failed else 0)
EOF
} | tee "$out_dir/latest.txt"

# Sourced by bench/bench.sh and bench/soak.sh: starts one sandbox of real peers and tears it
# down (with the work folder) on exit, also on failure and Ctrl-C. Expects: $repo, $py, $kind
# (bench or soak) and log(). Sets: out_dir, work, name, host, s3, src, imds_log, object_sha,
# field().
# shellcheck shell=bash disable=SC2154,SC2034  # inputs from and outputs to the sourcing script
out_dir=$repo/target/bench
mkdir -p "$out_dir"
work=$(mktemp -d "/tmp/ecs-bootstrap-$kind.XXXXXX")
name=$kind$(($$ % 1000))
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    "$py" tests/sandbox/sandbox.py down "$name" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "sandbox $name"
"$py" tests/sandbox/sandbox.py up "$name" >"$work/state.json"
field() { "$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/state.json" "$1"; }
host=ebs-$name-host
s3=$(field s3_endpoint)
src="s3://$(field bucket)/$(field key)"
imds_log=$(field imds_log)
object_sha=$(field object_sha256)

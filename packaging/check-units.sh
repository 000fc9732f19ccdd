#!/usr/bin/env bash
# Checks every systemd unit in systemd/ (and the drop-ins for docker.service and ecs.service):
#   1. `systemd-analyze verify` passes with nothing at all on stderr (no warning either);
#   2. `systemd-analyze security --offline=true` gives an exposure of MAX_EXPOSURE (3.0) or
#      lower for each unit, and the drift check's service (run every minute) no more than the
#      firewall unit's, whose job it repeats;
#   3. our units send stdout (the report) to the journal and the console, stderr (the log
#      lines) to the journal only;
#   4. the drift timer starts the drift service every minute from boot.
# verify checks that ExecStart binaries exist, so the units are copied to a temporary folder
# with /usr/bin/ecs-bootstrap rewritten to a built binary: $ECS_BOOTSTRAP_BIN, or
# ${CARGO_TARGET_DIR:-target}/{release,debug}/ecs-bootstrap (a debug build is made when neither
# exists). Needs: systemd (systemd-analyze), cargo when no binary is given.
set -euo pipefail

MAX_EXPOSURE=${MAX_EXPOSURE:-3.0}
repo=$(cd "$(dirname "$0")/.." && pwd)
units_dir="$repo/systemd"
target_dir=${CARGO_TARGET_DIR:-$repo/target}

command -v systemd-analyze >/dev/null || {
    echo "check-units: systemd-analyze is missing; install the systemd package" >&2
    exit 1
}

bin=${ECS_BOOTSTRAP_BIN:-}
if [[ -z $bin ]]; then
    for candidate in "$target_dir/release/ecs-bootstrap" "$target_dir/debug/ecs-bootstrap"; do
        if [[ -x $candidate ]]; then
            bin=$candidate
            break
        fi
    done
fi
if [[ -z $bin ]]; then
    echo "check-units: no built binary; building a debug one" >&2
    (cd "$repo" && cargo build --quiet --bin ecs-bootstrap)
    bin="$target_dir/debug/ecs-bootstrap"
fi
[[ -x $bin ]] || {
    echo "check-units: $bin is not an executable file" >&2
    exit 1
}
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

shopt -s nullglob
units=("$units_dir"/*.service "$units_dir"/*.timer "$units_dir"/*.socket "$units_dir"/*.path)
if ((${#units[@]} == 0)); then
    echo "check-units: no unit files in $units_dir" >&2
    exit 1
fi

failures=0
declare -A exposure
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# Every command line that runs ecs-bootstrap must run it where the packages install it.
while IFS= read -r line; do
    [[ -n $line ]] || continue
    fail "$line: runs ecs-bootstrap from another path than /usr/bin/ecs-bootstrap, where the .deb and the .rpm install it"
done < <(grep -HnE '^[[:space:]]*Exec[A-Za-z]*=' "${units[@]}" "$units_dir"/*.service.d/*.conf 2>/dev/null |
    grep -E '[^[:space:]=]*/ecs-bootstrap([[:space:]]|$)' | grep -vE '=[-+!@:]*/usr/bin/ecs-bootstrap([[:space:]]|$)' || true)

# Our units send the report (stdout) to the console as well as the journal, where operators
# who cannot log in look (EC2 console output), and keep the log lines (stderr) in the journal.
# Not the drift check, which runs every minute: its report would flood the console (and push
# the boot units' lines out of what get-console-output returns); it drops the report, and its
# log lines (each drift at priority err) must reach the journal.
for unit in "$units_dir"/ecs-bootstrap-*.service; do
    if [[ $(basename "$unit") == ecs-bootstrap-drift.service ]]; then
        grep -qx 'StandardOutput=null' "$unit" ||
            fail "ecs-bootstrap-drift.service: no StandardOutput=null (a report every minute)"
        grep -qx 'StandardError=journal' "$unit" ||
            fail "ecs-bootstrap-drift.service: no StandardError=journal (the drift lines would follow stdout to /dev/null)"
        continue
    fi
    grep -qx 'StandardOutput=journal+console' "$unit" ||
        fail "$(basename "$unit"): no StandardOutput=journal+console (the report would not reach the console)"
    grep -qx 'StandardError=journal' "$unit" ||
        fail "$(basename "$unit"): no StandardError=journal (the log lines would follow stdout to the console)"
done

# Copies with the binary path rewritten; the originals are what the packages ship.
copies=()
for unit in "${units[@]}"; do
    name=$(basename "$unit")
    sed "s#/usr/bin/ecs-bootstrap#$bin#g" "$unit" >"$tmp/$name"
    copies+=("$tmp/$name")
done
# The drop-ins for other packages' units (docker.service.d, ecs.service.d) are verified on a
# minimal stand-in for that unit (verify loads drop-ins from NAME.d/ next to the unit file it is
# given).
dropin_dirs=("$units_dir"/*.service.d)
if ((${#dropin_dirs[@]} == 0)); then
    fail "no drop-in folder (systemd/*.service.d) found"
fi
for dir in "${dropin_dirs[@]}"; do
    host=$(basename "$dir" .d)
    mkdir -p "$tmp/$host.d"
    printf '[Unit]\nDescription=stand-in for %s\n\n[Service]\nType=notify\nExecStart=/bin/true\n' \
        "$host" >"$tmp/$host"
    for d in "$dir"/*.conf; do
        sed -E "s#/usr/(local/)?bin/ecs-bootstrap#$bin#g" "$d" >"$tmp/$host.d/$(basename "$d")"
    done
    copies+=("$tmp/$host")
done

for copy in "${copies[@]}"; do
    name=$(basename "$copy")
    if ! systemd-analyze verify --man=no "$copy" >"$tmp/verify.out" 2>"$tmp/verify.err"; then
        fail "systemd-analyze verify $name exited non-zero:"
        sed 's/^/    /' "$tmp/verify.err" >&2
    elif [[ -s $tmp/verify.err ]]; then
        fail "systemd-analyze verify $name printed on stderr:"
        sed 's/^/    /' "$tmp/verify.err" >&2
    else
        echo "ok: verify $name"
    fi
done

for unit in "${units[@]}"; do
    name=$(basename "$unit")
    [[ $name == *.service ]] || continue
    out=$(systemd-analyze security --offline=true "$unit" 2>&1) || true
    figure=$(printf '%s\n' "$out" | sed -n 's/^.*Overall exposure level for [^:]*: \([0-9][0-9]*\.[0-9]\).*$/\1/p')
    if [[ -z $figure ]]; then
        fail "no exposure figure for $name in:"
        printf '%s\n' "$out" | sed 's/^/    /' >&2
    elif awk -v a="$figure" -v b="$MAX_EXPOSURE" 'BEGIN { exit !(a > b) }'; then
        fail "$name exposure $figure is above $MAX_EXPOSURE; what counts:"
        printf '%s\n' "$out" | grep '✗' | sed 's/^/    /' >&2
    else
        echo "ok: exposure $name $figure (max $MAX_EXPOSURE)"
    fi
    exposure[$name]=${figure:-99}
done

drift=ecs-bootstrap-drift.service firewall=ecs-bootstrap-firewall.service
if [[ -z ${exposure[$drift]:-} || -z ${exposure[$firewall]:-} ]]; then
    fail "no exposure figure for $drift or $firewall"
elif awk -v a="${exposure[$drift]}" -v b="${exposure[$firewall]}" 'BEGIN { exit !(a > b) }'; then
    fail "$drift exposure ${exposure[$drift]} is above $firewall's ${exposure[$firewall]}"
else
    echo "ok: exposure $drift ${exposure[$drift]} <= $firewall ${exposure[$firewall]}"
fi

# The timer: every minute from boot, enabled through timers.target, starting the drift service.
timer=$units_dir/ecs-bootstrap-drift.timer
for want in OnBootSec=1min OnUnitActiveSec=1min WantedBy=timers.target; do
    if grep -qx "$want" "$timer"; then
        echo "ok: ecs-bootstrap-drift.timer has $want"
    else
        fail "ecs-bootstrap-drift.timer lacks $want"
    fi
done
if grep -qE '^ExecStart=/usr/bin/ecs-bootstrap .*--report /run/ecs-bootstrap/drift\.json block-imds --drift$' "$units_dir/$drift"; then
    echo "ok: $drift runs block-imds --drift"
else
    fail "$drift does not run /usr/bin/ecs-bootstrap ... --report /run/ecs-bootstrap/drift.json block-imds --drift"
fi

if ((failures > 0)); then
    echo "check-units: $failures failure(s)" >&2
    exit 1
fi
echo "check-units: all units verified"

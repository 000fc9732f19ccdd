#!/usr/bin/env bash
# Create/update the sandbox venv idempotently and print its python path.
#   venv dir: ${ECS_BOOTSTRAP_VENV:-<repo>/target/sandbox-venv}
# pip runs only when tests/requirements.txt changed since the last successful
# install (its sha256 is stored in the venv). Logs go to stderr; stdout is
# only the python path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
req="$repo/tests/requirements.txt"
venv="${ECS_BOOTSTRAP_VENV:-$repo/target/sandbox-venv}"
stamp="$venv/.requirements.sha256"

log() { printf 'venv.sh: %s\n' "$*" >&2; }

# Serialize concurrent callers (parallel tests) on a lock beside the venv.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock -w 900 9 || { log "timed out waiting for $venv.lock"; exit 1; }

want="$(sha256sum "$req" | cut -d' ' -f1)"
have=""
if [[ -f "$stamp" ]]; then
    have="$(cat "$stamp")"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    log "creating venv at $venv"
    python3 -m venv "$venv" >&2
    have=""
fi

if [[ "$want" != "$have" ]]; then
    log "installing $req"
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req" >&2
    printf '%s\n' "$want" >"$stamp"
else
    log "requirements unchanged; skipping pip"
fi

printf '%s\n' "$venv/bin/python"

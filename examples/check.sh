#!/usr/bin/env bash
# Checks the examples and the packaging scripts:
#   - shellcheck on every shell script in examples/ and packaging/ (maintainer scripts too);
#   - the Image Builder component parses as YAML (python3 with PyYAML, which tests/run.sh
#     installs in the sandbox venv; without it the check fails), has build, validate and test
#     phases, and the commands of its ExecuteBash steps pass shellcheck;
#   - the Packer template's inline commands pass shellcheck and its braces balance.
# Needs: shellcheck, python3 (PyYAML for the YAML check).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
command -v shellcheck >/dev/null || {
    echo "examples/check.sh: shellcheck is missing; apt-get install shellcheck" >&2
    exit 1
}

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Shell scripts: by extension or by a shell shebang.
mapfile -t scripts < <(
    find examples packaging -type f | sort | while read -r f; do
        case $f in
        *.sh) echo "$f" ;;
        *) head -n1 "$f" | grep -qE '^#!.*\b(ba)?sh\b' && echo "$f" ;;
        esac
    done
)
if ((${#scripts[@]} == 0)); then
    fail "no shell scripts found"
fi
for f in "${scripts[@]}"; do
    # rpm scriptlets have no shebang: rpm runs them with /bin/sh.
    shell=()
    head -n1 "$f" | grep -q '^#!' || shell=(-s sh)
    if shellcheck "${shell[@]}" "$f"; then
        echo "ok: shellcheck $f"
    else
        fail "shellcheck $f"
    fi
done

component=examples/image-builder-component.yaml
py=${ECS_BOOTSTRAP_PYTHON:-python3}
if "$py" -c 'import yaml' 2>/dev/null; then
    if "$py" - "$component" "$tmp" <<'PY'; then
import sys, yaml
path, out = sys.argv[1], sys.argv[2]
doc = yaml.safe_load(open(path))
assert isinstance(doc, dict), "not a mapping"
for key in ("name", "schemaVersion", "phases"):
    assert key in doc, f"no {key}"
phases = {p["name"]: p for p in doc["phases"]}
for name in ("build", "validate", "test"):
    assert name in phases, f"no {name} phase"
n = 0
for p in doc["phases"]:
    for step in p["steps"]:
        assert step.get("name") and step.get("action"), f"step without name or action in {p['name']}"
        if step["action"] == "ExecuteBash":
            n += 1
            with open(f"{out}/{p['name']}-{step['name']}.sh", "w") as f:
                f.write("#!/bin/bash\n" + "\n".join(step["inputs"]["commands"]) + "\n")
assert n >= 3, "expected ExecuteBash steps in build, validate and test"
PY
        echo "ok: $component parses and has build, validate and test phases"
        for f in "$tmp"/*.sh; do
            if shellcheck "$f"; then
                echo "ok: shellcheck $component step $(basename "$f" .sh)"
            else
                fail "shellcheck $component step $(basename "$f" .sh)"
            fi
        done
    else
        fail "$component does not parse or lacks phases"
    fi
else
    fail "cannot check $component: $py has no yaml module (tests/requirements.txt pins PyYAML; run tests/sandbox/venv.sh)"
fi

packer=examples/packer/ecs-bootstrap.pkr.hcl
if python3 - "$packer" "$tmp/packer.sh" <<'PY'; then
import json, re, sys
text = open(sys.argv[1]).read()
code = re.sub(r'"(\\.|[^"\\])*"', '""', text)  # strings may hold braces
code = re.sub(r'#[^\n]*', '', code)
assert code.count("{") == code.count("}"), "unbalanced braces"
assert code.count("[") == code.count("]"), "unbalanced brackets"
m = re.search(r'inline\s*=\s*\[(.*?)\]', text, re.S)
assert m, "no inline shell provisioner"
cmds = [json.loads(s) for s in re.findall(r'"(?:\\.|[^"\\])*"', m.group(1))]
assert cmds, "empty inline list"
open(sys.argv[2], "w").write("#!/bin/sh\n" + "\n".join(cmds) + "\n")
PY
    if shellcheck "$tmp/packer.sh"; then
        echo "ok: $packer is balanced and its inline commands pass shellcheck"
    else
        fail "shellcheck of $packer inline commands"
    fi
else
    fail "$packer structure"
fi

if ((failures > 0)); then
    echo "examples/check.sh: $failures failure(s)" >&2
    exit 1
fi
echo "examples/check.sh: all checks passed"

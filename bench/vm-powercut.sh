#!/usr/bin/env bash
# The power-cut soak: tests/vm/powercut.sh with VM_CUTS cuts (default 20): a Debian 12 guest
# rewrites ecs.config and the rules file in a loop with ecs-bootstrap, qemu is killed at random
# points, and after each cut every file must be a complete old or new version. CI runs the
# same script with 3 cuts (tests/vm/run.sh). Needs root; about 40-60 s per cut under TCG.
#   sudo bench/vm-powercut.sh            # 20 cuts
#   sudo VM_CUTS=50 bench/vm-powercut.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VM_CUTS=${VM_CUTS:-20} exec bash tests/vm/powercut.sh

#!/usr/bin/env bash
# Boot timing on a real boot (Debian 12 guest under qemu, the VM suite's image and peers):
# the time from kernel start until ecs.config is written and the IMDS block is in place,
#   A. with ecs-bootstrap baked in (the .deb, examples/user-data-debian.sh as user data):
#      when each unit finished (systemd's monotonic timestamps, which count from kernel start);
#   B. with the documented procedure as user data run by cloud-init (Debian's awscli,
#      iptables, iptables-save; as bench/documented.sh, written for a Debian host):
#      /proc/uptime when the script started and ended.
# Also: how long each step itself ran, and what ecs.service (the amazon-ecs-init stand-in)
# found when it started. ROUNDS boots of each (default 1). Prints the figures; nothing is
# timed against a limit. docs/benchmarks.md records a run. Needs root.
# Commands for the guest are single-quoted on purpose: they expand there.
# shellcheck disable=SC2016
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# shellcheck source=tests/vm/lib.sh
source "$repo/tests/vm/lib.sh"
rounds=${ROUNDS:-1}

vm_init boot
deb=$(vm_deb)
vm_sandbox_up
vm_accel
echo "accelerator: $VM_ACCEL_NAME"
bucket=$(vm_field bucket)
key=$(vm_field key)
s3=$(vm_field s3_endpoint)
region=$(vm_field region)

sed "s#^SOURCE=\"s3://[^\"]*\"#SOURCE=\"s3://$bucket/$key\"#" examples/user-data-debian.sh >"$vm_work/ud-baked"
cat >"$vm_work/ud-documented" <<UD
#!/bin/bash
# The documented procedure (bench/documented.sh) as user data on a Debian host.
set -euo pipefail
t0=\$(cut -d' ' -f1 /proc/uptime)
export AWS_DEFAULT_REGION=$region
mkdir -p /etc/ecs /etc/iptables
aws --endpoint-url $s3 s3 cp --only-show-errors s3://$bucket/$key /etc/ecs/ecs.config
echo ECS_CLUSTER=prod >>/etc/ecs/ecs.config
rule=(FORWARD --in-interface docker+ --destination 169.254.169.254/32 --jump DROP)
iptables -C "\${rule[@]}" 2>/dev/null || iptables --insert FORWARD 1 --in-interface docker+ --destination 169.254.169.254/32 --jump DROP
iptables-save >/etc/iptables/rules.v4
t1=\$(cut -d' ' -f1 /proc/uptime)
echo "documented: start=\$t0 done=\$t1" >/run/documented.times
UD

# secs MICROSECONDS -> seconds with two decimals
secs() { awk -v u="$1" 'BEGIN { printf "%.2f", u / 1e6 }'; }

# run_time UNIT: microseconds its main process ran.
run_time() {
    local a b
    a=$(vm_ssh "systemctl show -P ExecMainStartTimestampMonotonic $1")
    b=$(vm_ssh "systemctl show -P ExecMainExitTimestampMonotonic $1")
    echo $((b - a))
}

run_case() {
    local case=$1 r=$2 disk=$vm_work/disk-$1.raw
    if [[ $case == baked ]]; then vm_bake "$deb" "$disk"; else vm_bake none "$disk"; fi
    vm_seed "$vm_work/seed-$case.img" "$vm_work/ud-$case"
    VM_SERIAL=$vm_work/serial-$case-$r.log
    vm_start "$VM_SERIAL" "$disk" "$vm_work/seed-$case.img"
    vm_wait_up 1200 || return 1
    local stub final kernel
    stub=$(vm_ssh "journalctl -b -o cat -u ecs.service | grep 'ecs-agent-stub: started' | head -n 1")
    final=$(vm_ssh 'systemctl show -P ActiveEnterTimestampMonotonic cloud-final.service')
    kernel=$(vm_ssh 'systemd-analyze | head -n 1')
    if [[ $case == baked ]]; then
        local fw cfg fw_run cfg_run
        fw=$(vm_ssh 'systemctl show -P ActiveEnterTimestampMonotonic ecs-bootstrap-firewall.service')
        cfg=$(vm_ssh 'systemctl show -P ActiveEnterTimestampMonotonic ecs-bootstrap-config.service')
        fw_run=$(run_time ecs-bootstrap-firewall.service)
        cfg_run=$(run_time ecs-bootstrap-config.service)
        echo "A baked, round $r: block in place at $(secs "$fw") s, ecs.config ready at $(secs "$cfg") s after kernel start (both: $(secs $((fw > cfg ? fw : cfg))) s); the firewall unit ran $(secs "$fw_run") s, the config unit $(secs "$cfg_run") s; cloud-final done at $(secs "$final") s; $stub; $kernel"
    else
        local times
        times=$(vm_ssh 'cat /run/documented.times' || echo "documented: no times")
        echo "B documented, round $r: $times (s after kernel start); cloud-final done at $(secs "$final") s; $stub; $kernel"
    fi
    vm_ssh 'systemctl poweroff' || true
    vm_wait_exit 300
}

for ((r = 1; r <= rounds; r++)); do
    run_case baked "$r"
    run_case documented "$r"
done

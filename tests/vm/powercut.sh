#!/usr/bin/env bash
# Power cuts while ecs-bootstrap rewrites ecs.config and the rules file. The guest boots the
# VM suite's image with init= a small loop (no systemd, root read-only) and a second, real
# virtio disk (ext4, cache=writeback, mounted with noauto_da_alloc so that nothing but our own
# fsyncs orders data before the rename: ext4's default rename heuristic would hide a missing
# fsync, file systems such as XFS have none). The loop runs, with changing content each round:
#   ecs-bootstrap fetch-config --dest /mnt/ecs.config --set ECS_CLUSTER=gen-K   (S3: moto)
#   ecs-bootstrap block-imds --interface vmtK+ --persist merge --persist-file /mnt/rules.v4
# and prints "powercut: gen K done" on the serial console after each round. The host kills
# qemu (SIGKILL: the guest's page cache is lost, the host's is not) at a random point after a
# random number of rounds, then checks offline: a copy of the data disk, e2fsck -fy to replay
# the journal as a mount would, debugfs to read the files (no mount, no loop device). Every
# file must be a complete version: ecs.config exactly gen K's content for a K the loop
# finished or the one in flight; rules.v4 the reference file's skeleton, COMMIT last, with
# exactly one rule of ours (a change of --interface replaces the rule of the previous gen), of
# the last finished gen or the one in flight. The next cut boots the disk as the cut left it.
#
# Usage: tests/vm/powercut.sh            (VM_CUTS cuts, default 3; bench/vm-powercut.sh: 20)
#        ECS_BOOTSTRAP_VM_BIN=PATH tests/vm/powercut.sh   (test another build of the binary)
# Prints "cut N: ..." per cut and ends with "N passed, N failed"; exits 1 on any failure.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
# shellcheck source=tests/vm/lib.sh
source "$repo/tests/vm/lib.sh"
cuts=${VM_CUTS:-3}
t_start=$SECONDS

vm_init cut
deb=$(vm_deb)
vm_sandbox_up
vm_accel
echo "accelerator: $VM_ACCEL_NAME"
src="s3://$(vm_field bucket)/$(vm_field key)"

add_loop() {
    local tree=$1
    # ECS_BOOTSTRAP_VM_BIN: another build of the binary to test (e.g. one without the fsyncs).
    if [[ -n ${ECS_BOOTSTRAP_VM_BIN:-} ]]; then
        install -m 755 "$ECS_BOOTSTRAP_VM_BIN" "$tree/usr/bin/ecs-bootstrap"
        vm_log "binary under test: $ECS_BOOTSTRAP_VM_BIN ($(sha256sum <"$ECS_BOOTSTRAP_VM_BIN" | cut -c1-12))"
    fi
    install -m 755 /dev/stdin "$tree/usr/local/sbin/powercut-init" <<INIT
#!/bin/sh
# PID 1 of the power-cut guest: mounts, network on the tap, then the rewrite loop.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs run /run
mount -t tmpfs tmp /tmp
say() { echo "powercut: \$*" >/dev/console; }
modprobe -q virtio_net; modprobe -q virtio_blk; modprobe -q ext4
i=0
while [ ! -e /sys/class/net/eth0 ] || [ ! -b /dev/vdb ]; do
    i=\$((i + 1)); [ \$i -gt 100 ] && { say "no eth0 or /dev/vdb"; break; }; sleep 0.1
done
ip link set lo up
ip link set eth0 up
ip addr add $VM_GUEST_IP/24 dev eth0
ip route add default via $VM_GW_IP
# /mnt: the root file system is read-only.
mount -o noauto_da_alloc /dev/vdb /mnt || say "mount failed"
mode=\$(sed -n 's/.*powercut.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
gen=\$(sed -n 's/.*powercut.gen=\([0-9]*\).*/\1/p' /proc/cmdline)
set -a; . /etc/ecs-bootstrap/env; set +a
# A failed round ends the guest: the host sees "failed" and the power-off.
stop() { sync; echo o >/proc/sysrq-trigger; sleep 60; }
say "loop starting at gen \$gen (mode \$mode)"
while :; do
    ecs-bootstrap -q fetch-config --source $src --dest /mnt/ecs.config --set ECS_CLUSTER=gen-\$gen --deadline 60 >/dev/null 2>/tmp/err ||
        { say "fetch-config failed at gen \$gen: \$(tail -c 300 /tmp/err)"; stop; continue; }
    ecs-bootstrap -q block-imds --interface vmt\$gen+ --ipv6 off --persist merge --persist-file /mnt/rules.v4 --deadline 60 >/dev/null 2>/tmp/err ||
        { say "block-imds failed at gen \$gen: \$(tail -c 300 /tmp/err)"; stop; continue; }
    say "gen \$gen done"
    if [ "\$mode" = prep ]; then
        sync; umount /mnt; say "prep done"; echo o >/proc/sysrq-trigger; sleep 60
    fi
    gen=\$((gen + 1))
done
INIT
}

disk=$vm_work/root.raw
data=$vm_work/data.raw
vm_bake "$deb" "$disk" add_loop
rm -f "$data"
mkfs.ext4 -q -F -L data "$data" 256M

# boot_loop SERIAL MODE GEN
boot_loop() {
    VM_SERIAL=$1
    vm_start "$1" "$disk" "" "ro init=/usr/local/sbin/powercut-init powercut.mode=$2 powercut.gen=$3 quiet" \
        "file=$data,format=raw,if=virtio,cache=writeback"
}
read_file() { debugfs -R "cat /$2" "$1" 2>/dev/null; }

# The reference: one clean round (gen 1), then a clean power-off.
vm_log "prep: one clean round"
boot_loop "$vm_work/prep.log" prep 1
vm_wait_exit 300
if ! grep -aq 'powercut: prep done' "$vm_work/prep.log"; then
    fail "prep round" "$(tr -d '\0' <"$vm_work/prep.log" | grep -a powercut | tail -n 5)"
    echo "$passed passed, $failed failed"
    exit 1
fi
ref_cfg=$(read_file "$data" ecs.config)
ref_rules=$(read_file "$data" rules.v4)
if grep -q '^ECS_CLUSTER=gen-1$' <<<"$ref_cfg" && grep -qE -- '-i vmt1\+ (-m comment --comment ecs-bootstrap )?-j DROP' <<<"$ref_rules"; then
    pass "prep: a clean round wrote the reference files (gen 1)" "$ref_cfg"
else
    fail "prep: reference files" "$ref_cfg
$ref_rules"
fi
skeleton() { grep -vE -- '-d 169\.254\.169\.254/32 -i vmt[0-9]+\+ ' <<<"$1"; }
ref_skel=$(skeleton "$ref_rules")

done_gens=(1)
declare -A written=([1]=1)
next=2
for ((c = 1; c <= cuts; c++)); do
    start_gen=$next
    serial=$vm_work/cut$c.log
    boot_loop "$serial" loop "$start_gen"
    # Wait for the loop's first round, then 2 to 6 more rounds (at least ~8 s: past ext4's
    # 5 s journal commit), then a random 0-999 ms.
    rounds=$((2 + RANDOM % 5))
    deadline=$((SECONDS + 300))
    while ((SECONDS < deadline)); do
        n=$(tr -d '\0' <"$serial" | grep -ac 'powercut: gen [0-9]* done' || true)
        ((n >= rounds + 1)) && break
        kill -0 "$VM_PID" 2>/dev/null || break
        sleep 0.2
    done
    sleep "0.$(printf '%03d' $((RANDOM % 1000)))"
    kill -9 "$VM_PID" 2>/dev/null || true
    wait "$VM_PID" 2>/dev/null || true
    mapfile -t finished < <(tr -d '\0' <"$serial" | sed -n 's/.*powercut: gen \([0-9]*\) done.*/\1/p')
    if ((${#finished[@]} == 0)); then
        fail "cut $c: the loop finished no round" "$(tr -d '\0' <"$serial" | grep -a 'powercut' | tail -n 5)"
        continue
    fi
    done_gens+=("${finished[@]}")
    last=${finished[-1]}
    inflight=$((last + 1))
    # Gens whose lines may be on disk: every finished one, and every one in flight at a cut.
    for g in "${finished[@]}" "$inflight"; do written[$g]=1; done
    next=$((inflight + 1))
    # Offline check on a copy: journal replayed by e2fsck, files read with debugfs.
    cp --sparse=always "$data" "$vm_work/check.raw"
    fsck_out=$(e2fsck -fy "$vm_work/check.raw" 2>&1 || true)
    cfg=$(read_file "$vm_work/check.raw" ecs.config; echo x)
    cfg=${cfg%x}
    rules=$(read_file "$vm_work/check.raw" rules.v4; echo x)
    rules=${rules%x}
    rm -f "$vm_work/check.raw"
    cfg_gen=$(sed -n 's/^ECS_CLUSTER=gen-\([0-9]*\)$/\1/p' <<<"$cfg")
    problems=()
    if grep -aq 'powercut: .* failed' "$serial"; then
        problems+=("a round failed: $(tr -d '\0' <"$serial" | grep -a 'powercut: .* failed' | head -n 1)")
    fi
    if [[ -z $cfg_gen ]]; then
        problems+=("ecs.config is not a complete version (${#cfg} bytes)")
    elif [[ $cfg != "${ref_cfg//gen-1/gen-$cfg_gen}"$'\n' ]]; then
        problems+=("ecs.config (gen $cfg_gen) differs from that gen's complete content")
    elif ((cfg_gen != last && cfg_gen != inflight)); then
        problems+=("ecs.config is gen $cfg_gen, neither the last finished ($last) nor the one in flight ($inflight)")
    fi
    rule_gens=$({ grep -oE -- '-i vmt[0-9]+\+ ' <<<"$rules" || true; } | grep -oE '[0-9]+' | sort -n | tr '\n' ' ' || true)
    rule_gens=${rule_gens% }
    if [[ -z $rules ]]; then
        problems+=("rules.v4 is empty")
    elif [[ $(tail -n 1 <<<"${rules%$'\n'}") != COMMIT ]]; then
        problems+=("rules.v4 does not end with COMMIT (${#rules} bytes)")
    elif [[ $(skeleton "$rules") != "$ref_skel" ]]; then
        problems+=("rules.v4's lines other than our rules differ from the reference")
    elif (($(wc -w <<<"$rule_gens") != 1)); then
        problems+=("rules.v4 holds the rules of gens '$rule_gens', not exactly one")
    elif ((rule_gens != last && rule_gens != inflight)); then
        problems+=("rules.v4 holds gen $rule_gens, neither the last finished ($last) nor the one in flight ($inflight)")
    elif [[ -z ${written[$rule_gens]:-} ]]; then
        problems+=("rules.v4 holds gen $rule_gens, never written")
    fi
    summary="cut $c: gens $start_gen..$last finished in this boot, cut during $inflight; ecs.config is gen ${cfg_gen:-?} (${#cfg} bytes), rules.v4 ${#rules} bytes with rules of $(wc -w <<<"$rule_gens") gens; e2fsck: $(grep -aE 'clean|recover|journal|files' <<<"$fsck_out" | tail -n 1)"
    if ((${#problems[@]} == 0)); then
        pass "$summary"
    else
        fail "$summary" "$(printf '%s\n' "${problems[@]}")"
    fi
done
echo "power cuts: $cuts in $((SECONDS - t_start)) s, accelerator $VM_ACCEL_NAME"
echo "$passed passed, $failed failed"
((failed == 0))

# shellcheck shell=bash
# Shared by tests/vm/run.sh, tests/vm/powercut.sh and the bench/vm-*.sh scripts: the sandbox
# and the guest's tap, the accelerator probe, the bake of the .deb into a copy of the base
# tree, qemu, ssh into the guest, checks, and teardown on every exit path.
#
# Network: the guest's NIC is a tap inside the sandbox's host namespace (ebs-NAME-host), where
# IMDS (169.254.169.254) and moto (192.0.2.2:5000) are routed. Nothing touches the machine's
# own interfaces or its root network namespace.
# Expects: repo (the repository's root).
# shellcheck disable=SC2154  # repo comes from the sourcing script Sets: vm_work, vm_name, vm_hostns, vm_base.
# shellcheck disable=SC2034  # variables read by the sourcing scripts

VM_GUEST_IP=198.51.100.2
VM_GW_IP=198.51.100.1
VM_TAP=tapvm0
VM_MAC=52:54:00:12:34:56
VM_MEM=${ECS_BOOTSTRAP_VM_MEM:-2048}

vm_log() { printf '[vm %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

passed=0
failed=0
# pass WHAT EVIDENCE / fail WHAT EVIDENCE
pass() {
    passed=$((passed + 1))
    printf 'ok   %s\n' "$1"
    [[ -z ${2:-} ]] || printf '%s\n' "$2" | sed 's/^/       /'
}
fail() {
    failed=$((failed + 1))
    printf 'FAIL %s\n' "$1"
    [[ -z ${2:-} ]] || printf '%s\n' "$2" | sed 's/^/       /'
}
# check WHAT EVIDENCE COMMAND...: pass when COMMAND succeeds.
check() {
    local what=$1 evidence=$2
    shift 2
    if "$@"; then pass "$what" "$evidence"; else fail "$what" "$evidence"; fi
}

vm_pids=()
vm_cleanup() {
    local p
    if [[ -S ${vm_work:-}/ssh.sock ]]; then
        ip netns exec "$vm_hostns" ssh -q -o "ControlPath=$vm_work/ssh.sock" -O exit x 2>/dev/null || true
    fi
    for p in "${vm_pids[@]}"; do
        kill -9 "$p" 2>/dev/null || true
    done
    for p in "${vm_pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    vm_pids=()
    if [[ -n ${vm_name:-} ]]; then
        "$VM_PY" "$repo/tests/sandbox/sandbox.py" down "$vm_name" >/dev/null 2>&1 || true
    fi
    if [[ -n ${vm_work:-} && -d $vm_work && -z ${ECS_BOOTSTRAP_VM_KEEP:-} ]]; then
        rm -rf "$vm_work"
    fi
}

# vm_init KIND: work folder, cleanup trap, python for the sandbox, the base image.
vm_init() {
    local kind=$1
    if [[ $(id -u) -ne 0 ]]; then
        echo "the VM tests need root (namespaces, taps, chroot)" >&2
        exit 2
    fi
    VM_PY=${ECS_BOOTSTRAP_PYTHON:-$(bash "$repo/tests/deps.sh" --tests)}
    local c
    for c in mmdebstrap qemu-system-x86_64 ssh mkfs.ext4 mkfs.vfat mcopy debugfs e2fsck; do
        command -v "$c" >/dev/null || {
            echo "$c is missing: run tests/deps.sh --tests" >&2
            exit 2
        }
    done
    mkdir -p "$repo/target/vm"
    vm_work=$(mktemp -d "$repo/target/vm/$kind.XXXXXX")
    vm_name=$kind$(($$ % 1000))
    vm_hostns=ebs-$vm_name-host
    trap vm_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    vm_base=$(bash "$repo/tests/vm/image.sh")
    VM_KEY=$vm_base/id_ed25519
}

# vm_deb: the .deb of the sources at hand, built by packaging/build.sh.
vm_deb() {
    # Always built from the sources at hand (cargo's build is a no-op when nothing changed): a
    # .deb left in target/packages by an earlier build would test an older product.
    vm_log "packaging/build.sh (the .deb of these sources)"
    bash "$repo/packaging/build.sh" >&2
    local debs
    shopt -s nullglob
    debs=("$repo"/target/packages/*.deb)
    shopt -u nullglob
    if ((${#debs[@]} != 1)); then
        vm_log "packaging/build.sh left ${#debs[@]} .deb files in target/packages, not one"
        return 1
    fi
    echo "${debs[0]}"
}

# vm_sandbox_up: the sandbox's peers, plus the guest's tap in its host namespace.
vm_sandbox_up() {
    vm_log "sandbox $vm_name (moto, IMDSv2 emulator)"
    "$VM_PY" "$repo/tests/sandbox/sandbox.py" up "$vm_name" >"$vm_work/state.json"
    ip -n "$vm_hostns" tuntap add dev "$VM_TAP" mode tap
    ip -n "$vm_hostns" addr add "$VM_GW_IP/24" dev "$VM_TAP"
    ip -n "$vm_hostns" link set "$VM_TAP" up
    ip -n "ebs-$vm_name-svc" route add 198.51.100.0/24 via 192.0.2.1
}
vm_field() {
    "$VM_PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$vm_work/state.json" "$1"
}

# vm_accel: KVM when a stock kernel boots under it here, else TCG. Sets VM_ACCEL (the qemu
# arguments) and VM_ACCEL_NAME. On hosts whose /dev/kvm serves only PVM guest kernels, a
# stock kernel hangs right after "Probing EDD" and prints nothing on the serial console.
vm_accel() {
    # shellcheck disable=SC2054  # one qemu argument with commas
    VM_ACCEL=(-accel tcg,thread=multi -cpu max)
    VM_ACCEL_NAME="TCG (-accel tcg,thread=multi)"
    if [[ -n ${ECS_BOOTSTRAP_VM_ACCEL:-} ]]; then
        [[ $ECS_BOOTSTRAP_VM_ACCEL == kvm ]] && VM_ACCEL=(-accel kvm -cpu host) VM_ACCEL_NAME="KVM (forced)"
        vm_log "accelerator: $VM_ACCEL_NAME (ECS_BOOTSTRAP_VM_ACCEL)"
        return
    fi
    if [[ ! -c /dev/kvm ]]; then
        vm_log "accelerator: $VM_ACCEL_NAME: no /dev/kvm"
        return
    fi
    local log=$vm_work/kvm-probe.log pid i
    : >"$log"
    qemu-system-x86_64 -accel kvm -cpu host -m 512 -nodefaults -display none \
        -kernel "$vm_base/vmlinuz" -initrd "$vm_base/initrd.img" \
        -append "console=ttyS0 panic=-1 rdinit=/nonexistent" -serial "file:$log" -no-reboot \
        >"$vm_work/kvm-probe.out" 2>&1 &
    pid=$!
    vm_pids+=("$pid")
    for ((i = 0; i < 40; i++)); do
        grep -q 'Linux version' "$log" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if grep -q 'Linux version' "$log"; then
        VM_ACCEL=(-accel kvm -cpu host)
        VM_ACCEL_NAME="KVM"
        vm_log "accelerator: KVM (the probe kernel printed its banner under KVM)"
    else
        vm_log "accelerator: $VM_ACCEL_NAME: a stock kernel printed nothing within 20 s under KVM ($(tr -d '\0' <"$log" | tail -c 200 | tr '\n' ' ') $(head -c 200 "$vm_work/kvm-probe.out"))"
    fi
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# vm_bake DEB DISK [HOOK]: the AMI bake. A copy of the base tree, the .deb installed with
# dpkg -i in a chroot (its postinst enables the units; DEB "none": no ecs-bootstrap), a stand-in for amazon-ecs-init's
# ecs.service, the image's settings, then HOOK TREE (if given), then an ext4 image built from
# the tree (mkfs.ext4 -d: no loop device).
vm_bake() {
    local deb=$1 disk=$2 hook=${3:-}
    local tree=$vm_work/tree
    vm_log "bake: copy of the base tree, dpkg -i $(basename "$deb")"
    rm -rf "$tree"
    cp -a "$vm_base/tree" "$tree"
    if [[ $deb != none ]]; then
        cp "$deb" "$tree/tmp/ecs-bootstrap.deb"
        chroot "$tree" dpkg -i /tmp/ecs-bootstrap.deb >"$vm_work/dpkg.log" 2>&1 || {
            cat "$vm_work/dpkg.log" >&2
            return 1
        }
        rm -f "$tree/tmp/ecs-bootstrap.deb"
    fi
    # amazon-ecs-init's Debian unit, as far as ordering goes: after and requiring docker,
    # wanted by multi-user.target. It records when it started and what ecs.config held.
    install -m 755 /dev/stdin "$tree/usr/local/sbin/ecs-agent-stub" <<'STUB'
#!/bin/sh
if [ -f /etc/ecs/ecs.config ]; then
    state="present mode=$(stat -c %a /etc/ecs/ecs.config) $(grep '^ECS_CLUSTER=' /etc/ecs/ecs.config)"
else
    state=absent
fi
echo "ecs-agent-stub: started uptime=$(cut -d' ' -f1 /proc/uptime) ecs.config=$state"
exec sleep infinity
STUB
    cat >"$tree/etc/systemd/system/ecs.service" <<'UNIT'
[Unit]
Description=Amazon Elastic Container Service - container agent (stand-in)
Requires=docker.service
After=docker.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/ecs-agent-stub
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
    ln -sf /etc/systemd/system/ecs.service "$tree/etc/systemd/system/multi-user.target.wants/ecs.service"
    # The image's settings: an AMI that runs containers on user-defined bridges too (a bake
    # choice), and the one test-only line: S3 is the sandbox's moto.
    [[ $deb == none ]] || cat >>"$tree/etc/ecs-bootstrap/env" <<ENV

# Baked by tests/vm: user-defined bridges too; S3 is the sandbox's moto (test only).
ECS_BOOTSTRAP_INTERFACE=docker+,br-+
AWS_ENDPOINT_URL_S3=$(vm_field s3_endpoint)
ENV
    # Test probe: the kernel's rules just before dockerd starts, every boot.
    cat >"$tree/etc/systemd/system/ecs-vmtest-predocker.service" <<'UNIT'
[Unit]
Description=tests/vm: iptables state before dockerd starts
After=ecs-bootstrap-firewall.service
Before=docker.service
DefaultDependencies=no
After=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'mkdir -p /run/vmtest && iptables-save -c >/run/vmtest/predocker.v4 && ip6tables-save -c >/run/vmtest/predocker.v6'

[Install]
WantedBy=multi-user.target
UNIT
    ln -sf /etc/systemd/system/ecs-vmtest-predocker.service \
        "$tree/etc/systemd/system/multi-user.target.wants/ecs-vmtest-predocker.service"
    # Test probe: the kernel's rules once dockerd is up, before our drop-in re-asserts the
    # block (drop-ins apply in name order, ExecStartPost= lines run in order).
    mkdir -p "$tree/etc/systemd/system/docker.service.d"
    cat >"$tree/etc/systemd/system/docker.service.d/05-vmtest.conf" <<'UNIT'
[Service]
ExecStartPost=/bin/sh -c 'mkdir -p /run/vmtest && iptables-save -c -t filter >/run/vmtest/postdockerd.v4'
UNIT
    # cloud-init: the modules an ECS host's boot uses (user data, hostname, bootcmd, runcmd);
    # the image has no locales, and under TCG each module costs seconds.
    cat >"$tree/etc/cloud/cloud.cfg.d/91-ecs-vm-modules.cfg" <<'CFG'
cloud_init_modules: [seed_random, bootcmd, write-files, set_hostname, update_hostname, update_etc_hosts]
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts-vendor, scripts-per-once, scripts-per-boot, scripts-per-instance, scripts-user, final-message]
CFG
    [[ -z $hook ]] || "$hook" "$tree"
    vm_log "bake: mkfs.ext4 -d (6 GiB sparse)"
    rm -f "$disk"
    mkfs.ext4 -q -F -L root -d "$tree" "$disk" 6G
    rm -rf "$tree"
}

# vm_seed OUT USER_DATA: a NoCloud seed (vfat labelled CIDATA): meta-data, the user data,
# and network-config with the guest's static address on the tap.
vm_seed() {
    local out=$1 user_data=$2 d=$vm_work/seed
    rm -rf "$d"
    mkdir -p "$d"
    printf 'instance-id: i-0vmtest0000000001\nlocal-hostname: ecsvm\n' >"$d/meta-data"
    cp "$user_data" "$d/user-data"
    cat >"$d/network-config" <<NET
version: 2
ethernets:
  eth0:
    match:
      macaddress: "$VM_MAC"
    set-name: eth0
    addresses: [$VM_GUEST_IP/24]
    routes:
      - to: 0.0.0.0/0
        via: $VM_GW_IP
NET
    rm -f "$out"
    mkfs.vfat -n CIDATA -C "$out" 2048 >/dev/null
    mcopy -i "$out" "$d/meta-data" "$d/user-data" "$d/network-config" ::
}

# vm_start SERIAL_LOG DISK [SEED] [APPEND] [EXTRA_DRIVE]: boots qemu in the sandbox's host
# namespace, in the background. Sets VM_PID.
vm_start() {
    local serial=$1 disk=$2 seed=${3:-} append=${4:-} extra=${5:-}
    local args=(-m "$VM_MEM" -smp 2 "${VM_ACCEL[@]}" -nodefaults -display none -vga none
        -kernel "$vm_base/vmlinuz" -initrd "$vm_base/initrd.img"
        -append "root=/dev/vda rw console=ttyS0,115200 net.ifnames=0 panic=-1 $append"
        -drive "file=$disk,format=raw,if=virtio,cache=unsafe"
        -netdev "tap,id=n0,ifname=$VM_TAP,script=no,downscript=no"
        -device "virtio-net-pci,netdev=n0,mac=$VM_MAC"
        -device virtio-rng-pci -serial "file:$serial")
    [[ -z $seed ]] || args+=(-drive "file=$seed,format=raw,if=virtio,readonly=on")
    [[ -z $extra ]] || args+=(-drive "$extra")
    : >"$serial"
    ip netns exec "$vm_hostns" qemu-system-x86_64 "${args[@]}" >>"$vm_work/qemu.out" 2>&1 &
    VM_PID=$!
    vm_pids+=("$VM_PID")
    VM_BOOT_T0=$SECONDS
}

# vm_ssh COMMAND: runs COMMAND in the guest as root. One multiplexed connection (a handshake
# costs seconds under TCG); it ends with the guest or with vm_cleanup.
vm_ssh() {
    ip netns exec "$vm_hostns" ssh -q -i "$VM_KEY" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 -o ServerAliveInterval=5 \
        -o ServerAliveCountMax=3 -o ControlMaster=auto -o "ControlPath=$vm_work/ssh.sock" \
        -o ControlPersist=60 "root@$VM_GUEST_IP" "$@"
}

# vm_wait_up TIMEOUT: until ssh answers and systemd says the boot finished.
vm_wait_up() {
    local timeout=$1 deadline=$((SECONDS + $1)) state
    while ((SECONDS < deadline)); do
        kill -0 "$VM_PID" 2>/dev/null || {
            vm_log "qemu exited during boot; serial log tail:"
            tail -n 30 "$VM_SERIAL" >&2
            return 1
        }
        if vm_ssh true 2>/dev/null; then
            state=$(vm_ssh "timeout $((deadline - SECONDS + 1)) systemctl is-system-running --wait" 2>/dev/null || true)
            vm_log "guest up after $((SECONDS - VM_BOOT_T0)) s: $state"
            return 0
        fi
        sleep 3
    done
    vm_log "guest not up within $timeout s; serial log tail:"
    tail -n 30 "$VM_SERIAL" >&2
    return 1
}

# vm_wait_exit TIMEOUT: until qemu exits (after a poweroff); killed when it does not.
vm_wait_exit() {
    local deadline=$((SECONDS + $1))
    while kill -0 "$VM_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
    if kill -0 "$VM_PID" 2>/dev/null; then
        vm_log "qemu still running after $1 s: killed"
        kill -9 "$VM_PID" 2>/dev/null || true
    fi
    wait "$VM_PID" 2>/dev/null || true
}

#!/usr/bin/env bash
# The VM suite: ecs-bootstrap as users ship it, on a real boot. A Debian 12 guest (its own
# kernel, systemd as PID 1, Debian's docker.io, cloud-init), the project's .deb baked in with
# dpkg -i before the first boot, a stand-in for amazon-ecs-init's ecs.service, cloud-init with
# a NoCloud seed running examples/user-data-debian.sh (only the source bucket changed), S3 and
# IMDS from the sandbox's moto and IMDSv2 emulator through a tap inside the sandbox's host
# namespace. Three boots of one disk:
#   boot 1 (first boot): both units ran and succeeded, their order against dockerd, cloud-init
#     and ecs.service, no ordering cycle, ecs.config 0600 with the cluster from user data,
#     containers on docker0 and on a user-defined bridge blocked from IMDS while they reach
#     moto through the same bridge (our rule's counter moved), the host reaches IMDS; each
#     unit's outcome on the console (the serial log); a provoked config failure at priority err
#     in the journal and, with its reason, on the console; then `systemctl restart docker` with
#     a restart-policy container probing IMDS, without and with live-restore.
#   boot 2 (reboot): the same checks, nothing changed (ecs.config, rules files), the block in
#     the kernel before dockerd starts, no ordering cycle at the first boot's shutdown.
#   boot 3: the iptables-legacy alternative, netfilter modules not loaded at boot: the
#     firewall unit succeeds under its sandbox, the block holds.
# Then the power-cut test (tests/vm/powercut.sh, VM_CUTS cuts).
# Prints evidence for each check and ends with "N passed, N failed"; exits 1 on any failure.
# Needs root; tests/deps.sh --tests installs mmdebstrap, qemu and the rest. The guest image is
# cached under target/vm/ (tests/vm/image.sh). ECS_BOOTSTRAP_VM_KEEP=1 keeps the work folder.
# Commands for the guest are single-quoted on purpose: they expand there.
# shellcheck disable=SC2016
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
# shellcheck source=tests/vm/lib.sh
source "$repo/tests/vm/lib.sh"
suite_t0=$SECONDS

vm_init vm
deb=$(vm_deb)
vm_sandbox_up
vm_accel
echo "accelerator: $VM_ACCEL_NAME"
instance_id=$(vm_field instance_id)
bucket=$(vm_field bucket)
object_key=$(vm_field key)

# User data: the Debian example with the sandbox's bucket (and key) as the source.
example=examples/user-data-debian.sh
sed "s#^SOURCE=\"s3://[^\"]*\"#SOURCE=\"s3://$bucket/$object_key\"#" "$example" >"$vm_work/user-data"
changed=$(diff "$example" "$vm_work/user-data" | grep -c '^>' || true)
check "user data is $example with one line changed (the source)" \
    "$(diff "$example" "$vm_work/user-data" | grep '^[<>]' || true)" test "$changed" = 1

disk=$vm_work/disk.raw
vm_bake "$deb" "$disk"
vm_seed "$vm_work/seed.img" "$vm_work/user-data"

# ------------------------------------------------------------------ helpers on the guest
guest_unit() { vm_ssh "systemctl show -P $2 $1"; }

# import_busybox: a local image for the containers (the guest has no registry): Debian's
# busybox-static for the shell and ping, and the guest's curl with its libraries (busybox's
# static wget crashes on Debian 12), packed into a tarball for docker import.
import_busybox() {
    vm_ssh 'docker image inspect vmtest/busybox >/dev/null 2>&1 || {
        d=$(mktemp -d) && mkdir -p "$d/bin" "$d/tmp" && cp /bin/busybox "$d/bin/busybox" &&
        for a in sh ping sleep date cat echo seq head wc; do ln -s busybox "$d/bin/$a"; done &&
        for f in /usr/bin/curl $(ldd /usr/bin/curl | grep -o "/[^ ]*"); do cp -L --parents "$f" "$d/"; done &&
        tar -C "$d" -c . | docker import - vmtest/busybox >/dev/null && rm -rf "$d"; }'
}

# rule_packets IPT PATTERN: packets counted by our DROP rule for interface PATTERN.
rule_packets() {
    vm_ssh "$1 -w 5 -L DOCKER-USER -v -x -n" |
        awk -v i="$2" '$3 == "DROP" && $6 == i && $9 == "169.254.169.254" { print $1; exit }'
}

# container_probe NETWORK: in a container on NETWORK, IMDS then moto (same bridge). curl
# prints the HTTP status (000: no answer) and its exit code (28: timed out).
container_probe() {
    vm_ssh "docker run --rm --network $1 vmtest/busybox sh -c '
        r=\$(/usr/bin/curl -s -m 4 -o /dev/null -w %{http_code} http://169.254.169.254/latest/meta-data/instance-id); echo imds: \$r exit \$?
        r=\$(/usr/bin/curl -s -m 4 -o /dev/null -w %{http_code} http://192.0.2.2:5000/); echo control: \$r exit \$?'" 2>&1
}

# block_checks LABEL IPT: containers on docker0 and on a user-defined bridge; the host.
block_checks() {
    local label=$1 ipt=$2 net pattern out before after
    import_busybox
    vm_ssh 'docker network inspect vmnet >/dev/null 2>&1 || docker network create vmnet >/dev/null'
    for net in bridge vmnet; do
        if [[ $net == bridge ]]; then pattern=docker+; else pattern=br-+; fi
        before=$(rule_packets "$ipt" "$pattern")
        out=$(container_probe "$net")
        after=$(rule_packets "$ipt" "$pattern")
        local bridge_if
        bridge_if=$(vm_ssh "docker network inspect -f '{{.Id}}' $net" | cut -c1-12)
        [[ $net == bridge ]] && bridge_if=docker0 || bridge_if=br-$bridge_if
        if grep -qx 'imds: 000 exit 28' <<<"$out" &&
            grep -qE '^control: [1-5][0-9][0-9] exit 0$' <<<"$out" &&
            [[ -n $before && -n $after ]] && ((after > before)); then
            pass "$label: a container on $bridge_if ($net) cannot reach IMDS and reaches moto through the same bridge; our $pattern rule counted $((after - before)) packets" "$out"
        else
            fail "$label: container on $bridge_if ($net): IMDS blocked, control reached, counter moved ($before -> $after)" "$out
$(vm_ssh "$ipt -w 5 -S FORWARD; $ipt -w 5 -L DOCKER-USER -v -x -n" 2>&1)"
        fi
    done
    out=$(vm_ssh 'tok=$(curl -sS -f -m 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" http://169.254.169.254/latest/api/token) &&
        curl -sS -f -m 5 -H "X-aws-ec2-metadata-token: $tok" http://169.254.169.254/latest/meta-data/instance-id' 2>&1 || true)
    check "$label: the host reaches IMDSv2 (instance-id $out)" "" test "$out" = "$instance_id"
}

# boot_checks LABEL: the units, their order, no cycle, ecs.config.
boot_checks() {
    local label=$1 u state
    for u in ecs-bootstrap-firewall ecs-bootstrap-config; do
        state=$(vm_ssh "systemctl show -p ActiveState -p Result -p ExecMainStatus $u.service | sort | tr '\n' ' '")
        check "$label: $u.service ran and succeeded" "$state" \
            test "$state" = "ActiveState=active ExecMainStatus=0 Result=success "
    done
    local fw_done dockerd cfg_start cfg_done ecs_start final_done
    fw_done=$(guest_unit ecs-bootstrap-firewall.service ActiveEnterTimestampMonotonic)
    dockerd=$(guest_unit docker.service InactiveExitTimestampMonotonic)
    cfg_start=$(guest_unit ecs-bootstrap-config.service InactiveExitTimestampMonotonic)
    cfg_done=$(guest_unit ecs-bootstrap-config.service ActiveEnterTimestampMonotonic)
    ecs_start=$(guest_unit ecs.service InactiveExitTimestampMonotonic)
    final_done=$(guest_unit cloud-final.service ActiveEnterTimestampMonotonic)
    check "$label: the firewall unit finished before docker.service started" \
        "firewall done at ${fw_done} us, docker.service start at ${dockerd} us (monotonic)" \
        test "$fw_done" -gt 0 -a "$dockerd" -gt 0 -a "$fw_done" -le "$dockerd"
    check "$label: the config unit finished before ecs.service started" \
        "config done at ${cfg_done} us, ecs.service start at ${ecs_start} us" \
        test "$cfg_done" -gt 0 -a "$ecs_start" -gt 0 -a "$cfg_done" -le "$ecs_start"
    check "$label: user data (cloud-final.service) finished before the config unit started" \
        "cloud-final done at ${final_done} us, config start at ${cfg_start} us" \
        test "$final_done" -gt 0 -a "$cfg_start" -gt 0 -a "$final_done" -le "$cfg_start"
    local stub
    stub=$(vm_ssh "journalctl -b -o cat -u ecs.service | grep 'ecs-agent-stub: started' | tail -n 1")
    check "$label: ecs.service (stand-in) started and found ecs.config with user data's cluster" "$stub" \
        grep -q 'ecs.config=present mode=600 ECS_CLUSTER=prod' <<<"$stub"
    local cycles
    cycles=$(vm_ssh "journalctl -b -o short-monotonic | grep -i 'ordering cycle'" || true)
    check "$label: no ordering cycle in this boot's journal" "$cycles" test -z "$cycles"
    local mode content
    mode=$(vm_ssh 'stat -c "%a %U" /etc/ecs/ecs.config')
    content=$(vm_ssh 'cat /etc/ecs/ecs.config')
    check "$label: /etc/ecs/ecs.config mode 0600, root" "$mode" test "$mode" = "600 root"
    check "$label: ecs.config holds the object's content and ECS_CLUSTER=prod from user data" "$content" \
        bash -c '[[ $(grep -c "^ECS_CLUSTER=" <<<"$1") == 1 ]] && grep -qx ECS_CLUSTER=prod <<<"$1" && grep -qx ECS_ENABLE_TASK_IAM_ROLE=true <<<"$1"' _ "$content"
}

# imds_pings: ICMP echo requests from the guest that arrived at IMDS, counted by a rule in the
# sandbox's service namespace (the guest's host never pings IMDS; its containers' traffic is
# masqueraded to the guest's address).
imds_pings() {
    local svc=ebs-$vm_name-svc
    if ! ip netns exec "$svc" iptables -w 5 -C INPUT -p icmp --icmp-type echo-request -s "$VM_GUEST_IP" -d 169.254.169.254 2>/dev/null; then
        ip netns exec "$svc" iptables -w 5 -I INPUT -p icmp --icmp-type echo-request -s "$VM_GUEST_IP" -d 169.254.169.254
    fi
    ip netns exec "$svc" iptables -w 5 -L INPUT -v -x -n | awk -v ip="$VM_GUEST_IP" '/icmptype 8/ && $7 == ip { print $1; exit }'
}

# restart_probe LABEL: `systemctl restart docker` with a restart-policy container probing IMDS
# the whole time (TCP: three curl loops, each IMDS try followed by a moto try as the control;
# ICMP: ping every 10 ms, counted where IMDS is). Any IMDS answer or arrival counts as reached.
restart_probe() {
    local label=$1
    vm_ssh 'rm -rf /var/lib/vmprobe && mkdir -p /var/lib/vmprobe; docker rm -f probe >/dev/null 2>&1 || true'
    vm_ssh 'cat >/var/lib/vmprobe/probe.sh' <<'PROBE'
tcp() {
    n=0
    while [ $n -lt 400 ]; do
        n=$((n + 1))
        r=$(/usr/bin/curl -s -m 1 -o /dev/null -w %{http_code} http://169.254.169.254/latest/meta-data/instance-id)
        case $r in 000) s=blocked ;; *) s=REACHED ;; esac
        c=$(/usr/bin/curl -s -m 1 -o /dev/null -w %{http_code} http://192.0.2.2:5000/)
        case $c in 000) k=no ;; *) k=ok ;; esac
        echo "$(date +%s) $1 imds=$s control=$k" >>/out/tcp.log
    done
}
tcp a &
sleep 0.3
tcp b &
sleep 0.3
tcp c &
ping -q -i 0.01 -W 1 -w 100 169.254.169.254 >/dev/null 2>&1 &
wait
PROBE
    vm_ssh 'docker run -d --name probe --restart always -v /var/lib/vmprobe:/out vmtest/busybox sh /out/probe.sh' >/dev/null
    sleep 8
    local t0 t1 out reached ctl_after pings icmp0 icmp1
    icmp0=$(imds_pings)
    t0=$(vm_ssh 'date +%s')
    vm_ssh 'systemctl restart docker'
    # The probe runs on (live-restore) or is started again by dockerd (restart policy).
    sleep 25
    t1=$(vm_ssh 'date +%s')
    icmp1=$(imds_pings)
    vm_ssh 'docker rm -f probe >/dev/null'
    pings=$((icmp1 - icmp0))
    out=$(vm_ssh "awk -v t0=$t0 '\$1 >= t0 {print \$3, \$4}' /var/lib/vmprobe/tcp.log | sort | uniq -c
        journalctl -o short-monotonic -u docker.service --since @$t0 | grep -E 'Started|Stopped|ecs-bootstrap' | tail -n 6")
    reached=$(vm_ssh "grep -c REACHED /var/lib/vmprobe/tcp.log" || true)
    ctl_after=$(vm_ssh "awk -v t0=$t0 '\$1 > t0 + 2 && /control=ok/' /var/lib/vmprobe/tcp.log | wc -l")
    out+=$'\n'"FORWARD once dockerd was up, before our drop-in ran: "$(vm_ssh "grep -E -- '-A FORWARD' /run/vmtest/postdockerd.v4 | head -n 3 | tr '\n' ';'")
    out+=$'\n'"ICMP echo requests from the guest that arrived at IMDS (counted in the sandbox) during the restart: $pings"
    if ((reached == 0 && pings == 0 && ctl_after > 0)); then
        pass "$label: across systemctl restart docker (t=$t0..$t1) no container packet reached IMDS; the probe reached moto $ctl_after times after the restart" "$out"
    else
        fail "$label: across systemctl restart docker: TCP reached IMDS $reached times, ping replies $pings, control after restart $ctl_after" "$out
$(vm_ssh "grep -v 'imds=blocked control=ok' /var/lib/vmprobe/tcp.log | head -n 20" 2>&1)"
    fi
}

# ------------------------------------------------------------------ boot 1
vm_log "boot 1 (first boot; cloud-init runs the user data)"
VM_SERIAL=$vm_work/serial.log
vm_start "$VM_SERIAL" "$disk" "$vm_work/seed.img"
vm_wait_up 900 || {
    fail "boot 1: the guest came up (ssh, systemctl is-system-running)" "$(tail -n 40 "$VM_SERIAL")"
    echo "$passed passed, $failed failed"
    exit 1
}
boot1_time=$((SECONDS - VM_BOOT_T0))
echo "boot 1: up in $boot1_time s ($VM_ACCEL_NAME)"
out=$(vm_ssh 'cloud-init status --long; grep -c . /var/lib/cloud/instance/scripts/part-001 2>/dev/null || ls /var/lib/cloud/instance/scripts/' 2>&1 || true)
check "boot 1: cloud-init ran the user data (status done)" "$out" grep -q 'status: done' <<<"$out"
out=$(vm_ssh 'ls -l /etc/systemd/system/*.wants/ecs-bootstrap-* ; dpkg -s ecs-bootstrap | grep -E "^(Status|Version)"' 2>&1 || true)
check "boot 1: the .deb is installed and its postinst enabled both units" "$out" \
    bash -c 'grep -q "install ok installed" <<<"$1" && grep -q "multi-user.target.wants/ecs-bootstrap-firewall.service" <<<"$1" && grep -q "ecs-bootstrap-config.service" <<<"$1"' _ "$out"
boot_checks "boot 1"
# The console (the serial log, what `aws ec2 get-console-output` returns): each unit's report.
for u in ecs-bootstrap-firewall ecs-bootstrap-config; do
    out=$(grep -aE "$u(\[[0-9]+\])?: " "$VM_SERIAL" | tail -n 8 || true)
    check "boot 1: the console shows $u's outcome line (done, exit 0)" "$out" \
        grep -qE "$u(\[[0-9]+\])?: done in [0-9]+ ms \(exit 0\)" <<<"$out"
done
block_checks "boot 1" iptables

# Point 4: docker restarts with a restart-policy container, then with live-restore. First the
# control of the ICMP counter: the host's own pings to IMDS are counted.
c0=$(imds_pings)
vm_ssh 'busybox ping -c 3 -W 2 169.254.169.254 >/dev/null'
c1=$(imds_pings)
check "boot 1: control: the sandbox counts ICMP echo requests from the guest at IMDS (host: 3 pings)" \
    "counter $c0 -> $c1" test "$((c1 - c0))" = 3
restart_probe "boot 1, restart without live-restore"
block_checks "boot 1 after restart" iptables
vm_ssh 'printf "{\"live-restore\": true}\n" >/etc/docker/daemon.json && systemctl restart docker'
restart_probe "boot 1, restart with live-restore"

# reboot_and_wait NAME: reboots the guest and waits (bounded) until a new boot is up.
reboot_and_wait() {
    local boot_id b t
    boot_id=$(vm_ssh 'cat /proc/sys/kernel/random/boot_id')
    vm_ssh 'systemctl reboot' || true
    t=$SECONDS
    while ((SECONDS - t < 600)); do
        sleep 5
        b=$(vm_ssh 'cat /proc/sys/kernel/random/boot_id' 2>/dev/null || true)
        [[ -n $b && $b != "$boot_id" ]] && break
    done
    VM_BOOT_T0=$t
    vm_wait_up 900 || fail "$1: the guest came up" "$(tail -n 40 "$VM_SERIAL")"
    echo "$1: up in $((SECONDS - t)) s"
}

# Journal priorities and the console on a failure: the config unit with a source that does not
# exist (a runtime drop-in, removed afterwards). The step's error is at err, shown by
# `journalctl -p err` and `-p warning`; the report's closing line (info) is in the journal but
# not under `-p warning` (the control: the filter filters); the console shows the outcome and
# the reason, and not the log lines (stderr stays in the journal).
dropin=/run/systemd/system/ecs-bootstrap-config.service.d
vm_ssh "mkdir -p $dropin && printf '[Service]\nExecStart=\nExecStart=/usr/bin/ecs-bootstrap run --skip-firewall --source s3://$bucket/vmtest-missing.config --deadline 30 --report /run/ecs-bootstrap/report.json\n' >$dropin/90-vmtest-fail.conf && systemctl daemon-reload"
t0=$(vm_ssh 'date +%s')
sleep 1
vm_ssh 'systemctl restart ecs-bootstrap-config.service' >/dev/null 2>&1 || true
state=$(vm_ssh "systemctl show -p Result -p ExecMainStatus ecs-bootstrap-config.service | sort | tr '\n' ' '")
err=$(vm_ssh "journalctl -b -q -o cat -p err -u ecs-bootstrap-config.service --since @$t0" || true)
warn=$(vm_ssh "journalctl -b -q -o cat -p warning -u ecs-bootstrap-config.service --since @$t0" || true)
all=$(vm_ssh "journalctl -b -q -o cat -u ecs-bootstrap-config.service --since @$t0" || true)
check "boot 1: a failed fetch fails the config unit with exit 3" "$state" \
    grep -qE "ExecMainStatus=3 Result=exit-code" <<<"$state"
check "boot 1: journalctl -p err shows the config step's error (and no <N> prefix is left in it)" "$err" \
    bash -c 'grep -qE "^ERROR .*(nothing was written|vmtest-missing)" <<<"$1" && ! grep -q "^<[0-9]>" <<<"$1"' _ "$err"
check "boot 1: journalctl -p warning shows the error, and not the report's info line that the unfiltered journal holds" \
    "$(printf -- '-p warning:\n%s\nall (last lines):\n%s' "$warn" "$(tail -n 4 <<<"$all")")" \
    bash -c 'grep -qE "^ERROR .*(nothing was written|vmtest-missing)" <<<"$1" && ! grep -qE "failed in [0-9]+ ms" <<<"$1" &&
        grep -qE "failed in [0-9]+ ms \(exit 3\)" <<<"$2"' _ "$warn" "$all"
out=$(grep -aE "ecs-bootstrap-config(\[[0-9]+\])?: " "$VM_SERIAL" | tail -n 12 || true)
check "boot 1: the console shows the failed config unit's outcome and reason, and no log line" "$out" \
    bash -c 'grep -qE "ecs-bootstrap-config(\[[0-9]+\])?: failed in [0-9]+ ms \(exit 3\)" <<<"$1" &&
        grep -qE "ecs-bootstrap-config(\[[0-9]+\])?: +error: .*(nothing was written|vmtest-missing)" <<<"$1" &&
        ! grep -qE "ecs-bootstrap-config(\[[0-9]+\])?: (ERROR|WARN|INFO) " <<<"$1"' _ "$out"
vm_ssh "rm -rf $dropin && systemctl daemon-reload && systemctl restart ecs-bootstrap-config.service" >/dev/null 2>&1 || true
state=$(vm_ssh "systemctl show -p ActiveState -p Result -p ExecMainStatus ecs-bootstrap-config.service | sort | tr '\n' ' '")
check "boot 1: the config unit succeeds again with its own source" "$state" \
    test "$state" = "ActiveState=active ExecMainStatus=0 Result=success "

hashes() {
    vm_ssh 'sha256sum /etc/ecs/ecs.config /etc/iptables/rules.v4 /etc/iptables/rules.v6 2>&1; stat -c "%n %a %Y" /etc/ecs/ecs.config /etc/iptables/rules.v4 2>&1'
}
h1=$(hashes)

# ------------------------------------------------------------------ boot 2
vm_log "boot 2 (reboot)"
reboot_and_wait "boot 2"
boot_checks "boot 2"
h2=$(hashes)
check "boot 2: the reboot changed nothing (ecs.config, rules files: content, mode, mtime)" "$h2" test "$h1" = "$h2"
cycles=$(vm_ssh "journalctl -b -1 -o short-monotonic | grep -i 'ordering cycle'" || true)
cycles+=$(grep -ai 'ordering cycle' "$VM_SERIAL" || true)
check "boot 2: no ordering cycle at boot 1's shutdown (journal -b -1) nor on the console" "$cycles" test -z "$cycles"
pre=$(vm_ssh 'cat /run/vmtest/predocker.v4')
check "boot 2: before dockerd started, the kernel held our DROP rules and FORWARD's first rule jumps to DOCKER-USER" \
    "$(grep -E '^(\[[0-9:]+\] )?-A (FORWARD|DOCKER-USER)' <<<"$pre")" \
    bash -c 'grep -qE -- "-A DOCKER-USER -d 169.254.169.254/32 -i docker\+ (-m comment --comment ecs-bootstrap )?-j DROP" <<<"$1" &&
        grep -qE -- "-A DOCKER-USER -d 169.254.169.254/32 -i br-\+ (-m comment --comment ecs-bootstrap )?-j DROP" <<<"$1" &&
        [[ $(grep -E -- "-A FORWARD" <<<"$1" | head -n1) == *"-j DOCKER-USER" ]]' _ "$pre"
block_checks "boot 2" iptables

# Drift: the packages enable the timer; something flushes DOCKER-USER; the timer's next check
# repairs it within its period and logs the drift at priority err. Control: before the flush
# the checks (which found the block in place) logged no drift.
drift=$(vm_ssh 'echo "timer: $(systemctl is-enabled ecs-bootstrap-drift.timer) $(systemctl is-active ecs-bootstrap-drift.timer)"
    echo "drift lines before: $(journalctl -b -q -o cat -p err -u ecs-bootstrap-drift.service | grep -c "drift:")"
    ecs-bootstrap status >/dev/null 2>&1; echo "status before: $?"
    iptables -F DOCKER-USER; t0=$(date +%s)
    ecs-bootstrap status >/dev/null 2>&1; echo "status after the flush: $?"
    for _ in $(seq 1 30); do sleep 5; iptables -S DOCKER-USER | grep -q "comment ecs-bootstrap" && break; done
    echo "repaired after $(($(date +%s) - t0)) s: $(iptables -S DOCKER-USER | grep -c "comment ecs-bootstrap") rules"
    sleep 2
    journalctl -b -q -o cat -p err -u ecs-bootstrap-drift.service | grep "drift:" | tail -n 3' || true)
check "boot 2: ecs-bootstrap status says protected (0), and not (4) right after DOCKER-USER is flushed; the drift timer (enabled by the package) repairs it within its period and logs the drift at priority err" "$drift" \
    bash -c 'grep -qx "timer: enabled active" <<<"$1" && grep -qx "drift lines before: 0" <<<"$1" &&
        grep -qx "status before: 0" <<<"$1" && grep -qx "status after the flush: 4" <<<"$1" &&
        grep -qE "^repaired after [0-9]+ s: [2-9] rules" <<<"$1" && grep -q "drift: IPv4: " <<<"$1"' _ "$drift"
block_checks "boot 2 after drift" iptables

# ------------------------------------------------------------------ boot 3: iptables-legacy
vm_log "boot 3 (iptables-legacy alternative; no netfilter module loaded at boot)"
vm_ssh 'update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null &&
    update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null &&
    rm -f /etc/docker/daemon.json && ! grep -rqsE "ip_tables|iptable_" /etc/modules /etc/modules-load.d /usr/lib/modules-load.d'
reboot_and_wait "boot 3"
out=$(vm_ssh 'readlink -f /etc/alternatives/iptables; systemctl show -p Result -p ExecMainStatus ecs-bootstrap-firewall.service | tr "\n" " "; echo; journalctl -b -o cat -u ecs-bootstrap-firewall.service | tail -n 8')
check "boot 3: on iptables-legacy the firewall unit succeeds under its sandbox" "$out" \
    bash -c 'grep -q xtables-legacy <<<"$1" && grep -qw "ExecMainStatus=0" <<<"$1" && grep -qw "Result=success" <<<"$1" && ! grep -q insmod <<<"$1"' _ "$out"
pre=$(vm_ssh 'cat /run/vmtest/predocker.v4; echo; iptables-legacy-save | grep -c "169.254.169.254"' || true)
check "boot 3: before dockerd started, the legacy tables held our DROP rules" \
    "$(grep -E -- '-A DOCKER-USER' <<<"$pre")" grep -qE -- '-A DOCKER-USER -d 169.254.169.254/32 -i docker\+ (-m comment --comment ecs-bootstrap )?-j DROP' <<<"$pre"
block_checks "boot 3 (legacy)" iptables-legacy
cycles=$(vm_ssh "journalctl -b -1 -o short-monotonic | grep -i 'ordering cycle'" || true)
check "boot 3: no ordering cycle at boot 2's shutdown" "$cycles" test -z "$cycles"

# The first-boot guard (ecs.service.d/20-ecs-bootstrap-first-boot.conf) under the real systemd:
# an ecs.config that ecs-bootstrap never wrote (no sidecar) and that sets no ECS_CLUSTER keeps
# the agent from starting; the operator's override lets it start (the control); the instance's
# own files put back, it starts as before.
guard=$(vm_ssh 'systemctl stop ecs.service
    mv /etc/ecs/ecs.config.ecs-bootstrap /run/vmtest/sidecar.keep && cp -p /etc/ecs/ecs.config /run/vmtest/ecs.config.keep
    printf "ECS_LOGLEVEL=info\n" >/etc/ecs/ecs.config
    systemctl start ecs.service; echo "no-cluster: rc=$? $(systemctl is-active ecs.service)"
    echo "guard lines: $(journalctl -b -o cat -u ecs.service | grep -c "ecs-bootstrap: not starting the ECS agent")"
    touch /etc/ecs-bootstrap/allow-agent-defaults && systemctl reset-failed ecs.service
    systemctl start ecs.service; echo "allowed: rc=$? $(systemctl is-active ecs.service)"
    systemctl stop ecs.service; rm -f /etc/ecs-bootstrap/allow-agent-defaults
    mv /run/vmtest/sidecar.keep /etc/ecs/ecs.config.ecs-bootstrap && cp -p /run/vmtest/ecs.config.keep /etc/ecs/ecs.config
    systemctl reset-failed ecs.service; systemctl start ecs.service; echo "restored: rc=$? $(systemctl is-active ecs.service)"' || true)
check "boot 3: the first-boot guard keeps the agent from starting on an ecs.config we never wrote without ECS_CLUSTER; the override and the restored files let it start" "$guard" \
    bash -c 'grep -qE "^no-cluster: rc=1 (failed|activating)$" <<<"$1" && grep -qE "^guard lines: [1-9]" <<<"$1" &&
        grep -qx "allowed: rc=0 active" <<<"$1" && grep -qx "restored: rc=0 active" <<<"$1"' _ "$guard"

vm_log "power off"
vm_ssh 'systemctl poweroff' || true
vm_wait_exit 180
cycles=$(grep -ai 'ordering cycle' "$VM_SERIAL" || true)
check "all boots and shutdowns: no ordering cycle on the serial console" "$cycles" test -z "$cycles"

# ------------------------------------------------------------------ power cuts
if ((${VM_CUTS:-3} > 0)); then
    vm_log "power cuts: ${VM_CUTS:-3}"
    cut_out=$vm_work/powercut.out
    if VM_CUTS=${VM_CUTS:-3} VM_PARENT_WORK=$vm_work bash "$repo/tests/vm/powercut.sh" >"$cut_out" 2>&1; then
        pass "power cuts: every file complete, old or new" "$(grep -E '^(cut|ok|FAIL)' "$cut_out" | tail -n 12)"
    else
        fail "power cuts" "$(tail -n 30 "$cut_out")"
    fi
fi

echo "VM suite: $((SECONDS - suite_t0)) s wall time, accelerator $VM_ACCEL_NAME"
echo "$passed passed, $failed failed"
((failed == 0))

#!/usr/bin/env bash
# Builds (or reuses) the base guest tree for the VM suite: Debian 12 from Debian's packages
# (mmdebstrap, http://deb.debian.org/debian), with its own kernel, systemd as PID 1, docker.io,
# cloud-init, iptables, openssh-server (the suite's command channel), curl and busybox-static
# (the containers' image), awscli (the documented procedure in bench/vm-boot-time.sh).
# Nothing of ecs-bootstrap is in it: tests/vm/run.sh copies the tree and installs the .deb per
# run. The tree is cached under target/vm/base-HASH/, HASH covering this script and the
# package list, so a change here builds a new one; older ones are removed.
# Prints the cached folder on stdout. Needs root, mmdebstrap.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
mirror=${ECS_BOOTSTRAP_VM_MIRROR:-http://deb.debian.org/debian}
# apparmor: Debian's kernel enables AppArmor, and dockerd then needs apparmor_parser to load
# its docker-default profile (a Recommends of docker.io, which this build leaves out).
packages=(systemd systemd-sysv udev dbus linux-image-amd64 initramfs-tools kmod apparmor
    docker.io cloud-init iptables iproute2 openssh-server curl busybox-static
    procps e2fsprogs netbase ca-certificates awscli less)
key=$( (cat "$0"; printf '%s\n' "$mirror" "${packages[@]}") | sha256sum | cut -c1-16)
cache=$repo/target/vm
out=$cache/base-$key
if [[ -f $out/done ]]; then
    echo "image: cached $out" >&2
    echo "$out"
    exit 0
fi
mkdir -p "$cache"
rm -rf "$out"
mkdir -p "$out"
tree=$out/tree
echo "image: mmdebstrap bookworm from $mirror into $tree (a few minutes)" >&2
start=$SECONDS
incl=$(
    IFS=,
    echo "${packages[*]}"
)
# Recommends off: a small image; docker.io's and cloud-init's Depends are enough.
mmdebstrap --mode=root --variant=minbase --aptopt='APT::Install-Recommends "false"' \
    --include="$incl" --components=main \
    bookworm "$tree" "$mirror" >"$out/mmdebstrap.log" 2>&1 ||
    {
        tail -n 40 "$out/mmdebstrap.log" >&2
        echo "image: mmdebstrap failed (log: $out/mmdebstrap.log)" >&2
        exit 1
    }

# --- the base configuration (the "AMI" before ecs-bootstrap is baked in)
echo ecsvm >"$tree/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 ecsvm\n' >"$tree/etc/hosts"
printf '/dev/vda / ext4 defaults,noatime 0 1\n' >"$tree/etc/fstab"
# The journal survives reboots (the suite reads the previous boot's shutdown messages).
mkdir -p "$tree/var/log/journal"
# Network: cloud-init renders the seed's network-config for systemd-networkd.
ln -sf /lib/systemd/system/systemd-networkd.service \
    "$tree/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
mkdir -p "$tree/etc/systemd/system/network-online.target.wants"
ln -sf /lib/systemd/system/systemd-networkd-wait-online.service \
    "$tree/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service"
# cloud-init: the NoCloud seed only (no probing of other clouds' metadata services).
cat >"$tree/etc/cloud/cloud.cfg.d/90-ecs-vm.cfg" <<'CFG'
datasource_list: [NoCloud, None]
CFG
# The suite's command channel: root over ssh with a key made for this image.
ssh-keygen -q -t ed25519 -N '' -C ecs-vm -f "$out/id_ed25519"
install -d -m 700 "$tree/root/.ssh"
install -m 600 "$out/id_ed25519.pub" "$tree/root/.ssh/authorized_keys"
# The boot timing bench starts from a clean /etc/ecs.
mkdir -p "$tree/etc/ecs"
# Kernel and initrd for qemu -kernel/-initrd.
cp "$(readlink -f "$tree/vmlinuz")" "$out/vmlinuz"
cp "$(readlink -f "$tree/initrd.img")" "$out/initrd.img"
# apt's lists and caches are not needed at run time.
rm -rf "$tree"/var/lib/apt/lists/* "$tree"/var/cache/apt/*.bin "$tree"/var/cache/apt/archives/*.deb
du -sh "$tree" | awk '{print "image: tree " $1}' >&2
echo "image: built in $((SECONDS - start)) s" >&2
touch "$out/done"
# Older images (other inputs) go once this one is complete.
for old in "$cache"/base-*; do
    [[ -e $old && $old != "$out" ]] && rm -rf "$old"
done
echo "$out"

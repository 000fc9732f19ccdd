#!/usr/bin/env bash
# Builds both packages (packaging/build.sh) and checks them:
#   .deb: file list and modes (dpkg-deb -c), control fields, conffiles and maintainer scripts
#         (dpkg-deb -I / -e); then installs it into this machine with apt-get, runs
#         `ecs-bootstrap --version`, checks the units are enabled, that a changed
#         /etc/ecs-bootstrap/env survives a reinstall, and removes and purges it again.
#   .rpm: file list, modes and config flags (rpm -qp), requirements, scripts
#         (rpm -qp --scripts) and the payload compressor (gzip); then `rpm -i --root` into a
#         scratch root with its scriptlets running: installed files equal to the .deb's, the
#         units enabled by the preset, and `rpm -e` disabling them again.
# Needs root (it installs the .deb), apt-get, and the `rpm` Debian package (installed when
# missing). Set SKIP_BUILD=1 to check packages already in ${CARGO_TARGET_DIR:-target}/packages.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out="$target_dir/packages"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n1)

if [[ $(id -u) -ne 0 ]]; then
    echo "check-packages: must run as root (it installs the .deb)" >&2
    exit 1
fi
if ! command -v rpm >/dev/null; then
    echo "check-packages: installing the rpm package for rpm queries" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q rpm >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q rpm >/dev/null; }
fi

if [[ -z ${SKIP_BUILD:-} ]]; then
    "$repo/packaging/build.sh"
fi

shopt -s nullglob
debs=("$out"/*.deb)
rpms=("$out"/*.rpm)
if ((${#debs[@]} != 1 || ${#rpms[@]} != 1)); then
    echo "check-packages: expected one .deb and one .rpm in $out, found: ${debs[*]} ${rpms[*]}" >&2
    exit 1
fi
deb=${debs[0]}
rpm_file=${rpms[0]}

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
ok() { echo "ok: $*"; }
# check GOOD BAD COMMAND...: ok GOOD when COMMAND succeeds, else fail BAD.
check() {
    local good=$1 bad=$2
    shift 2
    if "$@"; then ok "$good"; else fail "$bad"; fi
}

# expect_contains WHAT TEXT NEEDLE...
expect_contains() {
    local what=$1 text=$2
    shift 2
    local n
    for n in "$@"; do
        if grep -qF -- "$n" <<<"$text"; then
            ok "$what has $n"
        else
            fail "$what lacks $n"
        fi
    done
}

tmp=$(mktemp -d)
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT

# The files both packages ship: path and mode.
expected_files="/etc/ecs-bootstrap/env -rw-------
/usr/bin/ecs-bootstrap -rwxr-xr-x
/usr/lib/systemd/system/docker.service.d/10-ecs-bootstrap.conf -rw-r--r--
/usr/lib/systemd/system/ecs-bootstrap-config.service -rw-r--r--
/usr/lib/systemd/system/ecs-bootstrap-drift.service -rw-r--r--
/usr/lib/systemd/system/ecs-bootstrap-drift.timer -rw-r--r--
/usr/lib/systemd/system/ecs-bootstrap-firewall.service -rw-r--r--
/usr/lib/systemd/system/ecs.service.d/10-ecs-bootstrap.conf -rw-r--r--
/usr/lib/systemd/system/ecs.service.d/20-ecs-bootstrap-first-boot.conf -rw-r--r--
/usr/share/doc/ecs-bootstrap/README.md -rw-r--r--"

# ---------------------------------------------------------------- .deb
echo "== $deb"
# Regular files only (dpkg-deb -c also lists folders); cargo-deb adds a copyright file.
deb_files=$(dpkg-deb -c "$deb" | awk '$1 ~ /^-/ { p = $6; sub(/^\./, "", p); print p, $1 }' |
    grep -v '^/usr/share/doc/ecs-bootstrap/copyright ' | sort)
if [[ $deb_files == "$expected_files" ]]; then
    ok ".deb file list and modes"
else
    fail ".deb file list and modes differ (expected, then got):"
    diff <(echo "$expected_files") <(echo "$deb_files") >&2 || true
fi
info=$(dpkg-deb -I "$deb")
expect_contains ".deb control" "$info" "Package: ecs-bootstrap" "Version: $version" "Architecture: amd64"
depends=$(dpkg-deb -f "$deb" Depends)
expect_contains ".deb Depends" "$depends" "iptables" "libc6"
dpkg-deb -e "$deb" "$tmp/control"
conffiles=$(cat "$tmp/control/conffiles" 2>/dev/null || true)
if [[ $(grep -c . <<<"$conffiles") -eq 1 ]] && grep -qx /etc/ecs-bootstrap/env <<<"$conffiles"; then
    ok ".deb conffiles is exactly /etc/ecs-bootstrap/env"
else
    fail ".deb conffiles: $conffiles"
fi
for s in postinst prerm postrm; do
    [[ -x $tmp/control/$s ]] || fail ".deb has no executable $s"
done
expect_contains ".deb postinst" "$(cat "$tmp/control/postinst")" \
    "deb-systemd-helper enable \"\$unit\"" ecs-bootstrap-firewall.service ecs-bootstrap-config.service \
    ecs-bootstrap-drift.timer
expect_contains ".deb postrm" "$(cat "$tmp/control/postrm")" "deb-systemd-helper purge"

# ---------------------------------------------------------------- .rpm
echo "== $rpm_file"
compressor=$(rpm -qp --qf '%{PAYLOADCOMPRESSOR}' "$rpm_file")
if [[ $compressor == gzip ]]; then ok ".rpm payload is gzip"; else fail ".rpm payload is $compressor, not gzip"; fi
rpm_files=$(rpm -qp --qf '[%{FILENAMES} %{FILEMODES:perms}\n]' "$rpm_file" |
    grep -v '^/usr/lib/systemd/system-preset/50-ecs-bootstrap.preset -rw-r--r--$' | sort)
if [[ $rpm_files == "$expected_files" ]]; then
    ok ".rpm file list and modes"
else
    fail ".rpm file list and modes differ (expected, then got):"
    diff <(echo "$expected_files") <(echo "$rpm_files") >&2 || true
fi
if rpm -qpl "$rpm_file" | grep -x /usr/lib/systemd/system-preset/50-ecs-bootstrap.preset >/dev/null; then
    ok ".rpm has the preset that enables the units"
else
    fail ".rpm lacks /usr/lib/systemd/system-preset/50-ecs-bootstrap.preset"
fi
# %config(noreplace) on the settings file; nothing else is configuration.
flags=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$rpm_file")
env_flags=$(awk '$1 == "/etc/ecs-bootstrap/env" { print $2 }' <<<"$flags")
if [[ $env_flags == *c* && $env_flags == *n* ]]; then
    ok ".rpm /etc/ecs-bootstrap/env is %config(noreplace) ($env_flags)"
else
    fail ".rpm /etc/ecs-bootstrap/env flags are '$env_flags', want config noreplace (c, n)"
fi
others=$(awk '$1 != "/etc/ecs-bootstrap/env" && $2 ~ /c/' <<<"$flags")
[[ -z $others ]] || fail ".rpm marks other files as config: $others"
requires=$(rpm -qp --requires "$rpm_file")
for r in iptables iptables-services systemd; do
    check ".rpm Requires $r" ".rpm does not require $r" grep -qx "$r" <<<"$requires"
done

# The spec that builds from source in the target's build root parses and has our version.
spec_version=$(rpmspec -q --srpm --qf '%{VERSION}' "$repo/packaging/ecs-bootstrap.spec" 2>"$tmp/rpmspec.err" || true)
check "packaging/ecs-bootstrap.spec parses, version $version" \
    "packaging/ecs-bootstrap.spec: version '$spec_version', want $version ($(cat "$tmp/rpmspec.err"))" \
    test "$spec_version" = "$version"
scripts=$(rpm -qp --scripts "$rpm_file")
expect_contains ".rpm scripts" "$scripts" "postinstall scriptlet" "preuninstall scriptlet" \
    "postuninstall scriptlet" "systemctl --no-reload preset ecs-bootstrap-firewall.service ecs-bootstrap-config.service ecs-bootstrap-drift.timer" \
    "systemctl --no-reload disable --now ecs-bootstrap-drift.timer ecs-bootstrap-firewall.service ecs-bootstrap-config.service"
rpm_version=$(rpm -qp --qf '%{VERSION}' "$rpm_file")
check ".rpm version $version" ".rpm version $rpm_version, want $version" test "$rpm_version" = "$version"

# ---------------------------------------------------------------- install the .rpm
# rpm -i --root into a scratch root, scriptlets run (chrooted there, as rpm does): the root
# holds what they call (sh, mkdir, systemctl and their libraries, copied from this machine)
# and nothing else. --nodeps: the scratch root has no rpm database of iptables or systemd.
# Then the installed files (paths and modes, as on disk) against the .deb's list, the units
# enabled by the preset, and rpm -e, whose %preun disables them again.
echo "== rpm -i --root $rpm_file"
scratch=$tmp/rpmroot
mkdir -p "$scratch"
copy_with_libs() {
    local f lib
    for f in "$@"; do
        mkdir -p "$scratch$(dirname "$f")"
        cp -L "$f" "$scratch$f"
        while read -r lib; do
            [[ -e $scratch$lib ]] && continue
            mkdir -p "$scratch$(dirname "$lib")"
            cp -L "$lib" "$scratch$lib"
        done < <(ldd "$f" | grep -oE '/[^ ]+\.so[^ ]*' || true)
    done
}
copy_with_libs /bin/sh /bin/mkdir /bin/systemctl /bin/rm
mkdir -p "$scratch/etc/systemd/system" "$scratch/usr/lib/systemd/system" "$scratch/var/lib/rpm" "$scratch/dev"
mknod -m 666 "$scratch/dev/null" c 1 3
rpm_root=(rpm --root "$scratch" --dbpath /var/lib/rpm)
"${rpm_root[@]}" --initdb
if "${rpm_root[@]}" -i --nodeps "$rpm_file" >"$tmp/rpm-i.log" 2>&1; then
    ok "rpm -i --root: installed, scriptlets ran$(grep -q . "$tmp/rpm-i.log" && printf ' (output: %s)' "$(tr '\n' ' ' <"$tmp/rpm-i.log")")"
else
    fail "rpm -i --root failed: $(cat "$tmp/rpm-i.log")"
fi
rpm_disk=$(cd "$scratch" && "${rpm_root[@]}" -ql ecs-bootstrap | while read -r f; do
    [[ -f $scratch$f && ! -L $scratch$f ]] && echo "$f $(stat -c %A "$scratch$f")"
done | grep -v '^/usr/lib/systemd/system-preset/50-ecs-bootstrap.preset ' | sort)
if [[ $rpm_disk == "$deb_files" ]]; then
    ok ".rpm installed files and modes equal the .deb's ($(grep -c . <<<"$rpm_disk") files, the preset aside)"
else
    fail ".rpm installed files differ from the .deb's (deb, then rpm):"
    diff <(echo "$deb_files") <(echo "$rpm_disk") >&2 || true
fi
for link in multi-user.target.wants/ecs-bootstrap-firewall.service docker.service.wants/ecs-bootstrap-firewall.service \
    multi-user.target.wants/ecs-bootstrap-config.service ecs.service.wants/ecs-bootstrap-config.service \
    timers.target.wants/ecs-bootstrap-drift.timer; do
    check "rpm %post (preset) enabled: $link" "rpm %post did not enable: $link missing" \
        test -L "$scratch/etc/systemd/system/$link"
done
check "rpm %post created /etc/ecs" "rpm %post did not create /etc/ecs" test -d "$scratch/etc/ecs"
if "${rpm_root[@]}" -e ecs-bootstrap >"$tmp/rpm-e.log" 2>&1; then
    left=$(find "$scratch/etc/systemd/system" -name 'ecs-bootstrap-*' 2>/dev/null || true)
    check "rpm -e --root: %preun disabled the units" "links left after rpm -e: $left" test -z "$left"
    check "rpm -e --root: binary removed" "binary left after rpm -e" test ! -e "$scratch/usr/bin/ecs-bootstrap"
else
    fail "rpm -e --root failed: $(cat "$tmp/rpm-e.log")"
fi

# ---------------------------------------------------------------- install the .deb
echo "== install $deb"
if dpkg-query -W -f '${Status}' ecs-bootstrap 2>/dev/null | grep 'install ok' >/dev/null; then
    echo "check-packages: ecs-bootstrap is already installed on this machine; purge it first (apt-get purge ecs-bootstrap)" >&2
    exit 1
fi
# Folders the postinst creates; removed again at the end when they were not there before.
new_dirs=()
for d in /etc/ecs /etc/iptables; do
    [[ -d $d ]] || new_dirs+=("$d")
done
purge() {
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q ecs-bootstrap >/dev/null 2>&1 || true
    local d
    for d in "${new_dirs[@]}"; do rmdir "$d" 2>/dev/null || true; done
}
trap 'purge; cleanup' EXIT

DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb" >"$tmp/apt.log" 2>&1 ||
    { cat "$tmp/apt.log" >&2; fail "apt-get install $deb failed"; }
got=$(/usr/bin/ecs-bootstrap --version 2>&1 || true)
check "installed: $got" "ecs-bootstrap --version said: $got" test "$got" = "ecs-bootstrap $version"
for link in /etc/systemd/system/multi-user.target.wants/ecs-bootstrap-firewall.service \
    /etc/systemd/system/docker.service.wants/ecs-bootstrap-firewall.service \
    /etc/systemd/system/ecs.service.wants/ecs-bootstrap-config.service \
    /etc/systemd/system/timers.target.wants/ecs-bootstrap-drift.timer; do
    check "enabled: $link" "not enabled: $link missing" test -L "$link"
done
check "/etc/ecs exists" "/etc/ecs was not created" test -d /etc/ecs
check "/etc/iptables exists" "/etc/iptables was not created" test -d /etc/iptables
mode=$(stat -c %a /etc/ecs-bootstrap/env)
check "/etc/ecs-bootstrap/env mode 600" "/etc/ecs-bootstrap/env mode $mode" test "$mode" = 600

# A changed settings file survives a reinstall (conffile).
echo "ECS_BOOTSTRAP_SOURCE=s3://check-packages/kept" >>/etc/ecs-bootstrap/env
DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$deb" >"$tmp/dpkg.log" 2>&1 ||
    { cat "$tmp/dpkg.log" >&2; fail "reinstall failed"; }
check "changed env kept on reinstall" "the changed /etc/ecs-bootstrap/env was replaced on reinstall" \
    grep -q 's3://check-packages/kept' /etc/ecs-bootstrap/env

DEBIAN_FRONTEND=noninteractive apt-get remove -y -q ecs-bootstrap >"$tmp/apt.log" 2>&1 ||
    { cat "$tmp/apt.log" >&2; fail "apt-get remove failed"; }
check "removed: binary gone" "binary still there after remove" test ! -e /usr/bin/ecs-bootstrap
check "removed: settings kept until purge" "settings gone after remove" test -f /etc/ecs-bootstrap/env
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q ecs-bootstrap >"$tmp/apt.log" 2>&1 ||
    { cat "$tmp/apt.log" >&2; fail "apt-get purge failed"; }
check "purged: settings gone" "settings still there after purge" test ! -e /etc/ecs-bootstrap/env
leftover=$(find /etc/systemd/system -name 'ecs-bootstrap-*' 2>/dev/null || true)
check "purged: no unit links left" "links left after purge: $leftover" test -z "$leftover"

if ((failures > 0)); then
    echo "check-packages: $failures failure(s)" >&2
    exit 1
fi
echo "check-packages: both packages checked"

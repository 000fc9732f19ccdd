#!/usr/bin/env bash
# Builds the release binary once and packs it as a .deb (cargo-deb) and an .rpm
# (cargo-generate-rpm, gzip payload for Amazon Linux 2's rpm), both left in
# ${CARGO_TARGET_DIR:-target}/packages/. Installs the two packaging tools (pinned versions)
# when they are missing or at another version.
#
# The binary links against the build machine's glibc: a Debian 12 build needs glibc 2.34 or
# newer. For older distributions (Amazon Linux 2: 2.26) build in their own build root with
# packaging/ecs-bootstrap.spec, or make a static build with
#   BUILD_TARGET=x86_64-unknown-linux-musl packaging/build.sh
# where that Rust target is installed (this script never downloads toolchains or targets).
#
# Environment: CARGO_TARGET_DIR (default target/), BUILD_TARGET (a Rust target triple; default
# the host's).
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out="$target_dir/packages"
target_args=()
if [[ -n ${BUILD_TARGET:-} ]]; then
    if ! rustup target list --installed 2>/dev/null | grep -x "$BUILD_TARGET" >/dev/null; then
        echo "build.sh: the Rust target $BUILD_TARGET is not installed; install it (rustup target add $BUILD_TARGET) or unset BUILD_TARGET" >&2
        exit 2
    fi
    target_args=(--target "$BUILD_TARGET")
fi

# tool_version SUBCOMMAND: the version cargo SUBCOMMAND reports, or nothing.
tool_version() {
    cargo "$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1 || true
}

ensure_tool() {
    local crate=$1 subcommand=$2 version=$3
    local have
    have=$(tool_version "$subcommand")
    if [[ $have != "$version" ]]; then
        echo "build.sh: installing $crate $version (found: ${have:-none})" >&2
        cargo install --locked --quiet "$crate@$version"
    fi
}

ensure_tool cargo-deb deb "$CARGO_DEB_VERSION"
ensure_tool cargo-generate-rpm generate-rpm "$CARGO_GENERATE_RPM_VERSION"

# Every file the packages list must exist; say which one is missing and why it matters.
for f in systemd/ecs-bootstrap-firewall.service systemd/ecs-bootstrap-config.service \
    systemd/docker.service.d/10-ecs-bootstrap.conf systemd/ecs.service.d/10-ecs-bootstrap.conf \
    systemd/ecs.service.d/20-ecs-bootstrap-first-boot.conf \
    packaging/env.default README.md \
    packaging/rpm/50-ecs-bootstrap.preset; do
    if [[ ! -f $f ]]; then
        echo "build.sh: $f is missing; the packages list it (Cargo.toml [package.metadata.deb] and [package.metadata.generate-rpm])" >&2
        exit 1
    fi
done

echo "build.sh: cargo build --release ${target_args[*]}" >&2
cargo build --release --locked "${target_args[@]}"

rm -rf "$out"
mkdir -p "$out"
cargo deb --no-build --locked "${target_args[@]}" --output "$out/"
cargo generate-rpm --payload-compress gzip "${target_args[@]}" --output "$out/"

echo "build.sh: packages in $out:" >&2
ls -l "$out" >&2

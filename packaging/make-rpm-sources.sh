#!/usr/bin/env bash
# Makes the two sources packaging/ecs-bootstrap.spec builds from, in DIR (default
# ${CARGO_TARGET_DIR:-target}/rpm-sources): the committed tree (git archive of HEAD) and the
# vendored dependencies (cargo vendor, from the registry or cargo's cache), so rpmbuild runs
# offline in the target's build root:
#   rpmbuild -ba packaging/ecs-bootstrap.spec --define "_sourcedir DIR"
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
spec_version=$(sed -n 's/^Version: *//p' packaging/ecs-bootstrap.spec)
if [[ $version != "$spec_version" ]]; then
    echo "make-rpm-sources: Cargo.toml says $version, packaging/ecs-bootstrap.spec says $spec_version; make them agree" >&2
    exit 1
fi
dir=${1:-${CARGO_TARGET_DIR:-$repo/target}/rpm-sources}
mkdir -p "$dir"
git archive --format=tar.gz --prefix="ecs-bootstrap-$version/" -o "$dir/ecs-bootstrap-$version.tar.gz" HEAD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo vendor --locked --versioned-dirs "$work/vendor" >/dev/null
tar -czf "$dir/ecs-bootstrap-$version-vendor.tar.gz" -C "$work" vendor
ls -l "$dir"

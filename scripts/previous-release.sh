#!/usr/bin/env bash
# Builds the previous release, the one this release must upgrade from, once and keeps it
# under target/<tag>/: its binary (tests/upgrade.rs), and with `packages` its .deb and
# .rpm (the package upgrade test). Usage: scripts/previous-release.sh [binary|packages]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=v0.1.0
commit=90fb533 # what the tag names: a clone without tags still has the commit
version=${tag#v}
dir=$PWD/target/$tag
src=$dir/source
mkdir -p "$dir"
if [ ! -f "$src/Cargo.toml" ]; then
    revision=$tag
    git rev-parse --quiet --verify "$tag" >/dev/null || revision=$commit
    rm -rf "$src"
    git worktree prune
    git worktree add --detach --force "$src" "$revision" >/dev/null
fi
if [ ! -x "$dir/release/kai" ]; then
    (cd "$src" && cargo build --release --locked --bin kai --target-dir "$dir")
fi
[ "${1:-binary}" = packages ] || exit 0

mkdir -p "$dir/packages"
deb=$dir/packages/kai_${version}-1_amd64.deb
if [ ! -f "$deb" ]; then
    (cd "$src" && CARGO_TARGET_DIR=$dir cargo deb --no-build --strip -o "$deb")
fi
rpm=$dir/packages/kai-${version}-1.x86_64.rpm
if [ ! -f "$rpm" ]; then
    (cd "$src" && git archive --format=tar.gz --prefix="kai-$version/" \
        -o "$dir/kai-$version.tar.gz" HEAD)
    # --nocheck: the tag's tests ran when it was released.
    rpmbuild -bb "$src/kai.spec" --nodeps --nocheck --quiet \
        --define "_topdir $dir/rpmbuild" --define "_sourcedir $dir" \
        --define "kai_version $version" --define "cargo_target_dir $dir" >/dev/null
    cp "$dir/rpmbuild/RPMS/x86_64/kai-$version-1.x86_64.rpm" "$rpm"
fi

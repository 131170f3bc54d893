#!/usr/bin/env bash
# `make install` into a scratch DESTDIR: every file in place, and an existing (edited)
# configuration is never overwritten by a second install.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
make -s -C "$here/../.." install DESTDIR="$dest" PREFIX=/usr >/dev/null
for file in usr/bin/kai lib/systemd/system/kai.service etc/init.d/kai etc/kai/kai.toml \
    etc/default/kai usr/share/man/man8/kai.8 usr/share/man/man5/kai.toml.5; do
    check "make install: $file" test -f "$dest/$file"
done
check "make install: conf.d exists" test -d "$dest/etc/kai/conf.d"
check "make install: the binary runs" "$dest/usr/bin/kai" --version
echo '# edited' >> "$dest/etc/kai/kai.toml"
make -s -C "$here/../.." install DESTDIR="$dest" PREFIX=/usr >/dev/null
check "a second install keeps the edited kai.toml" grep -q '^# edited' "$dest/etc/kai/kai.toml"
echo "make install test: all checks passed"

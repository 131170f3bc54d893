#!/usr/bin/env bash
# Installs the .rpm for real on this machine and checks the account, the files, the
# scriptlets and the init script; then erases it.
# Usage: packaging/test/rpm.sh KAI.rpm
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=lib.sh
. "$here/lib.sh"
package=$(realpath "$1")
[ "$(id -u)" -eq 0 ] || fail "needs root (rpm -i)"
[ ! -e /usr/bin/kai ] || fail "/usr/bin/kai exists before the test"
initd=$(rpm --eval '%{_initddir}')

cleanup() {
    "$initd/kai" stop >/dev/null 2>&1 || true
    rpm -e --nodeps kai >/dev/null 2>&1 || true
    userdel kai >/dev/null 2>&1 || true
    groupdel kai >/dev/null 2>&1 || true
    rm -rf /etc/kai /var/lib/kai /run/kai /etc/sysconfig/kai.rpmsave
}
trap cleanup EXIT

check "rpmlint: no errors" rpmlint -r "$here/../rpm/kai.rpmlintrc" "$package"
check "the scriptlets create the kai user" sh -c "rpm -qp --scripts '$package' | grep -q 'useradd -r -g kai'"
check "systemd scriptlets are present" sh -c "rpm -qp --scripts '$package' | grep -q 'systemctl --no-reload preset kai.service'"
for file in /usr/bin/kai /usr/lib/systemd/system/kai.service "$initd/kai" /etc/sysconfig/kai \
    /usr/share/man/man8/kai.8 /var/lib/kai; do
    check "the package holds $file" sh -c "rpm -qlp '$package' | grep -qx '$file'"
done
check "kai.toml is %config(noreplace)" sh -c "rpm -qp --configfiles '$package' | grep -qx /etc/kai/kai.toml"

# --nodeps: this machine's packages are managed by dpkg, so rpm's own database knows
# nothing of /bin/sh, getent or useradd that the scriptlets need, though they are here.
rpm -i --nodeps "$package"
check "the kai user exists" getent passwd kai
check "/var/lib/kai is 750 kai:kai" test "$(mode_of /var/lib/kai)" = "750 kai:kai"
check "/usr/bin/kai is 755 root:root" test "$(mode_of /usr/bin/kai)" = "755 root:root"
check "the unit is installed" test -f "/usr/lib/systemd/system/kai.service"
check "nothing was started by the install" not pgrep -x kai

check "init script: start" "$initd/kai" start
check "the node answers stats" wait_for_stats 127.0.0.1 11211 5
pid=$(cat /run/kai/kai.pid)
check "it runs as user kai" test "$(ps -o user= -p "$pid")" = kai
check "init script: status 0" "$initd/kai" status
check "init script: stop" "$initd/kai" stop
check "the process is gone" not alive "$pid"

rpm -e --nodeps kai
check "erase: binary gone" test ! -e /usr/bin/kai
check "erase: unit gone" test ! -e "/usr/lib/systemd/system/kai.service"
echo "rpm package test: all checks passed"

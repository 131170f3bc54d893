#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Installs the .deb for real with dpkg on this machine and checks the account, the files,
# the SysV init script, an upgrade that keeps edited config and data, remove and purge.
# Usage: packaging/test/deb.sh OLD.deb NEW.deb   (NEW has a higher version)
set -euo pipefail
here=$(dirname "$0")
# shellcheck source=lib.sh
. "$here/lib.sh"
old=$(realpath "$1")
new=$(realpath "$2")
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
! dpkg-query -W kai >/dev/null 2>&1 || fail "a kai package is already installed here"
[ ! -e /etc/kai/kai.toml ] || fail "/etc/kai/kai.toml exists before the test"

cleanup() {
    /etc/init.d/kai stop >/dev/null 2>&1 || true
    dpkg -P kai >/dev/null 2>&1 || true
}
trap cleanup EXIT

dpkg -i "$old" >/dev/null
check "the kai user exists" getent passwd kai
check "its login shell is nologin" test "$(getent passwd kai | cut -d: -f7)" = /usr/sbin/nologin
check "/var/lib/kai is 750 kai:kai" test "$(mode_of /var/lib/kai)" = "750 kai:kai"
check "/usr/bin/kai is 755 root:root" test "$(mode_of /usr/bin/kai)" = "755 root:root"
check "/etc/kai/kai.toml is 644 root:root" test "$(mode_of /etc/kai/kai.toml)" = "644 root:root"
check "/etc/init.d/kai is 755" test "$(mode_of /etc/init.d/kai)" = "755 root:root"
check "kai.toml is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' kai | grep -q /etc/kai/kai.toml"
check "the unit is enabled" test -L /etc/systemd/system/multi-user.target.wants/kai.service
check "the init script has runlevel links" sh -c 'ls /etc/rc2.d/ | grep -q kai'
check "the man page is installed" test -f /usr/share/man/man8/kai.8.gz
check "nothing was started by the install" sh -c '! pgrep -x kai'

check "init script: status before start is 3" sh -c '/etc/init.d/kai status >/dev/null; test $? -eq 3'
check "init script: start" /etc/init.d/kai start
check "the node answers stats" wait_for_stats 127.0.0.1 11211 5
pid=$(cat /run/kai/kai.pid)
check "it runs as user kai" test "$(ps -o user= -p "$pid")" = kai
check "init script: status 0 while running" /etc/init.d/kai status
check "init script: reload" /etc/init.d/kai reload
sleep 0.5
check "reload keeps the process" alive "$pid"

# Upgrade while running: edited config and data survive, the node is not restarted.
echo '# edited by the operator' >> /etc/kai/kai.toml
echo marker > /var/lib/kai/marker
dpkg -i "$new" >/dev/null
check "upgraded to the new version" test "$(dpkg-query -W -f='${Version}' kai)" = "$(dpkg-deb -f "$new" Version)"
check "the edited kai.toml is kept" grep -q '^# edited by the operator' /etc/kai/kai.toml
check "data in /var/lib/kai is kept" test -f /var/lib/kai/marker
check "the running node was not restarted" test "$(cat /run/kai/kai.pid)" = "$pid"
check "init script: stop" /etc/init.d/kai stop
check "stopped: status 3" sh -c '/etc/init.d/kai status >/dev/null; test $? -eq 3'
check "the process is gone" not alive "$pid"

dpkg -r kai >/dev/null
check "remove: binary gone" test ! -e /usr/bin/kai
check "remove: data kept" test -f /var/lib/kai/marker
check "remove: configuration kept" test -f /etc/kai/kai.toml
check "remove: user kept" getent passwd kai

dpkg -P kai >/dev/null
check "purge: configuration gone" test ! -e /etc/kai
check "purge: data gone" test ! -e /var/lib/kai
check "purge: user gone" sh -c '! getent passwd kai'
check "purge: group gone" sh -c '! getent group kai'
check "purge: runlevel links gone" sh -c '! ls /etc/rc2.d/ | grep -q kai'
echo "deb package test: all checks passed"

#!/usr/bin/env bash
# Boots a real systemd (systemd-nspawn over a throw-away overlay of /) and checks the
# packages under it: the .deb with systemctl start/status/reload/kill -9/journalctl/stop,
# then the .rpm with `systemctl enable --now` and the kickstart example's %post; given the
# previous release's packages, the upgrade from each to this one with data kept.
# Usage: packaging/test/systemd.sh KAI.deb KAI.rpm [PREVIOUS.deb PREVIOUS.rpm]
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
deb=$(realpath "$1")
rpm=$(realpath "$2")
previous_deb=${3:+$(realpath "$3")}
previous_rpm=${4:+$(realpath "$4")}
kickstart="$here/../kickstart/kai.ks"
[ "$(id -u)" -eq 0 ] || fail "needs root (mounts and systemd-nspawn)"
command -v systemd-nspawn >/dev/null || fail "systemd-nspawn missing (Debian package systemd-container)"

scratch=$(mktemp -d /tmp/kai-systemd-test.XXXXXX)
nspawn_pid=""
pid1=""

inside() { nsenter -t "$pid1" -a "$@"; }

boot() { # boots the overlay at $scratch/root; sets pid1
    setsid systemd-nspawn -D "$scratch/root" --register=no --keep-unit --private-network \
        --console=passive -b </dev/null >"$scratch/nspawn.log" 2>&1 &
    nspawn_pid=$!
    state=""
    for _ in $(seq 300); do
        # The container's PID 1 is nspawn's child named systemd (helpers come and go first).
        pid1=$(pgrep -P "$nspawn_pid" -x systemd | head -1 || true)
        if [ -n "$pid1" ]; then
            state=$(inside systemctl is-system-running 2>/dev/null || true)
            case "$state" in running|degraded) return 0 ;; esac
        fi
        sleep 0.1
    done
    fail "systemd did not finish booting (state: $state): $(tail -5 "$scratch/nspawn.log")"
}

poweroff() {
    if [ -n "$pid1" ]; then
        inside systemctl poweroff >/dev/null 2>&1 || true
    fi
    if [ -n "$nspawn_pid" ]; then
        for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    nspawn_pid=""
    pid1=""
}

prepare() { # a fresh overlay root with the packages under /opt/kai-test
    mkdir -p "$scratch/t" "$scratch/root"
    mount -t tmpfs -o size=2G tmpfs "$scratch/t"
    mkdir -p "$scratch/t/upper" "$scratch/t/work"
    mount -t overlay overlay \
        -o "lowerdir=/,upperdir=$scratch/t/upper,workdir=$scratch/t/work" "$scratch/root"
    local root=$scratch/root
    rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/machine-id"
    systemd-machine-id-setup --root="$root" >/dev/null 2>&1
    for unit in memcached.service postgresql.service; do
        ln -sf /dev/null "$root/etc/systemd/system/$unit"
    done
    # Anything a previous kai install left on the host must not leak in.
    rm -rf "$root/etc/kai" "$root/var/lib/kai"
    mkdir -p "$root/opt/kai-test"
    cp "$deb" "$rpm" ${previous_deb:+"$previous_deb"} ${previous_rpm:+"$previous_rpm"} \
        "$root/opt/kai-test/"
    cp "$kickstart" "$root/opt/kai-test/kai.ks"
}

teardown() {
    poweroff
    umount "$scratch/root" 2>/dev/null || umount -l "$scratch/root" 2>/dev/null || true
    umount "$scratch/t" 2>/dev/null || umount -l "$scratch/t" 2>/dev/null || true
    rm -rf "$scratch"
}
trap teardown EXIT

stats_inside() { # address port
    inside bash -c "exec 3<>/dev/tcp/$1/$2 && printf 'stats\r\n' >&3 && timeout 5 sed '/^END/q' <&3"
}

main_pid() { inside systemctl show -p MainPID --value kai.service; }
node_answers() { stats_inside "$1" "$2" | grep -q "^STAT kai_node${3:+ $3}"; }
settings_have() {
    inside bash -c "exec 3<>/dev/tcp/127.0.0.1/11211 && printf 'stats settings\r\n' >&3 && timeout 5 sed '/^END/q' <&3" | grep -q "$1"
}
journal() { inside journalctl -u kai.service --no-pager -o cat "$@"; }
journal_has() { local pattern=$1; shift; journal "$@" | grep -q "$pattern"; }
status_shows_notify_text() {
    inside systemctl status kai.service --no-pager | grep -q 'Status: ".*items.*client connections.*members up'
}
read_only_root() { inside grep -Eq ' / / ro[, ]' "/proc/$1/mountinfo"; }

# --- the .deb under systemd ---------------------------------------------------------
prepare
boot
inside dpkg -i "/opt/kai-test/$(basename "$deb")" >/dev/null
check "postinst enabled the unit" inside systemctl is-enabled --quiet kai.service
check "the install did not start it" not inside systemctl is-active --quiet kai.service
check "systemctl start kai" inside systemctl start kai.service
# Type=notify: start returned after READY=1, so the port answers now, without retrying.
check "the node answers the moment start returns" node_answers 127.0.0.1 11211
check "systemctl status shows kai's STATUS= line" status_shows_notify_text
pid=$(main_pid)
status=$(inside cat "/proc/$pid/status")
check "it runs as user kai" test "$(inside ps -o user= -p "$pid")" = kai
check "NoNewPrivs is set" grep -Eq '^NoNewPrivs:[[:space:]]+1' <<<"$status"
check "a seccomp filter is applied" grep -Eq '^Seccomp:[[:space:]]+2' <<<"$status"
check "ProtectSystem=strict: / is read-only for kai" read_only_root "$pid"

inside sh -c 'mkdir -p /etc/kai/conf.d && printf "[log]\nlevel = \"debug\"\n" > /etc/kai/conf.d/10-debug.toml'
check "systemctl reload kai" inside systemctl reload kai.service
check "reload applied the log level" settings_have 'kai_log_level debug'
check "reload kept the process" test "$(main_pid)" = "$pid"

inside kill -KILL "$pid"
restarted=""
for _ in $(seq 100); do
    new=$(main_pid)
    if [ "$new" != 0 ] && [ "$new" != "$pid" ] && inside systemctl is-active --quiet kai.service; then
        restarted=$new
        break
    fi
    sleep 0.1
done
check "kill -9 is followed by an automatic restart" test -n "$restarted"
check "the restarted node answers" node_answers 127.0.0.1 11211
check "journal: startup line at priority info" journal_has 'serving memcache on' -p 6..6
check "journal: not logged above info" not journal_has 'serving memcache on' -p 0..5
check "journal: the reload is logged" journal_has 'configuration reloaded'
check "systemctl stop kai" inside systemctl stop kai.service
check "it stopped cleanly (exit 0)" test "$(inside systemctl show -p ExecMainStatus --value kai.service)" = 0
check "journal: the shutdown is logged" journal_has 'kai stopped'
teardown
trap teardown EXIT

# --- the .rpm under systemd, then the kickstart %post -------------------------------
scratch=$(mktemp -d /tmp/kai-systemd-test.XXXXXX)
prepare
boot
# --nodeps: inside this Debian tree rpm's database knows none of the installed packages.
inside rpm -i --nodeps "/opt/kai-test/$(basename "$rpm")" 2>/dev/null
check "systemctl enable --now kai (rpm)" inside systemctl enable --now kai.service
check "the rpm-installed node answers" node_answers 127.0.0.1 11211
# The %post section, run as anaconda would: a shell script in the installed system.
sed -n '/^%post/,/^%end/p' "$kickstart" | sed '1d;$d' > "$scratch/root/opt/kai-test/post.sh"
check "kickstart %post runs" inside env KAI_ADDRESS=127.0.0.10 KAI_SEEDS='"127.0.0.11:11011"' \
    KAI_SECRET=test-secret bash -e /opt/kai-test/post.sh
check "%post wrote the cluster drop-in" inside test -f /etc/kai/conf.d/50-cluster.toml
check "%post left the unit enabled" inside systemctl is-enabled --quiet kai.service
# First boot after installation: no further step.
poweroff
boot
check "after boot the node runs with the drop-in" node_answers 127.0.0.10 11211 127.0.0.10:11011
seeds_configured() { inside kai config check | grep -q '127.0.0.11:11011'; }
check "the seeds are in the effective configuration" seeds_configured
teardown
trap teardown EXIT

# --- upgrade from the previous release: its package, data written, this package, restart
memcache_inside() { # request lines → reply, through bash /dev/tcp inside the container
    inside bash -c "exec 3<>/dev/tcp/127.0.0.1/11211 && printf '$1' >&3 && timeout 5 sed '/^END/q;/^STORED/q' <&3"
}
write_keys() {
    for i in $(seq 50); do
        memcache_inside "set upgrade$i 0 0 ${#i}\r\n$i\r\n" | grep -q STORED || return 1
    done
}
keys_read_back() {
    for i in $(seq 50); do
        memcache_inside "get upgrade$i\r\n" | grep -qx "$i"$'\r' || return 1
    done
}
runs_version() { stats_inside 127.0.0.1 11211 | grep -q "^STAT kai_version $1"; }
disk_engine() {
    inside sh -c 'mkdir -p /etc/kai/conf.d && printf "[store]\nengine = \"disk\"\n" > /etc/kai/conf.d/20-disk.toml'
}
install_package() { # deb|rpm file first|upgrade
    local file
    file="/opt/kai-test/$(basename "$2")"
    case "$1:$3" in
        deb:*) inside dpkg -i "$file" ;;
        rpm:first) inside rpm -i --nodeps "$file" ;;
        rpm:upgrade) inside rpm -U --nodeps "$file" ;;
    esac >/dev/null 2>&1
}
upgrade_path() { # deb|rpm previous-package current-package
    local format=$1 old=$2 new=$3
    local kind="$format $old_version → $new_version"
    scratch=$(mktemp -d /tmp/kai-systemd-test.XXXXXX)
    prepare
    boot
    disk_engine
    install_package "$format" "$old" first
    inside systemctl enable --now kai.service >/dev/null 2>&1
    check "$kind: the previous release answers" runs_version "${old_version}"
    check "$kind: data written through the previous release" write_keys
    install_package "$format" "$new" upgrade
    check "$kind: systemctl restart kai after the upgrade" inside systemctl restart kai.service
    check "$kind: the new release answers" runs_version "${new_version}"
    check "$kind: everything written before the upgrade reads back" keys_read_back
    check "$kind: the configuration drop-in survived the upgrade" inside test -f /etc/kai/conf.d/20-disk.toml
    teardown
    trap teardown EXIT
}
if [ -n "$previous_deb" ] && [ -n "$previous_rpm" ]; then
    old_version=$(dpkg-deb -f "$previous_deb" Version | sed 's/-.*//')
    new_version=$(dpkg-deb -f "$deb" Version | sed 's/-.*//')
    upgrade_path deb "$previous_deb" "$deb"
    upgrade_path rpm "$previous_rpm" "$rpm"
fi
echo "systemd package test: all checks passed"

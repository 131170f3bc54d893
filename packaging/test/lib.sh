# shellcheck shell=bash
# Helpers shared by the package tests (sourced).

fail() { echo "FAIL: $*" >&2; exit 1; }
check() { # description, command...
    desc=$1; shift
    if "$@"; then echo "ok - $desc"; else fail "$desc"; fi
}

# Sends `stats` to HOST:PORT and prints the reply (bash /dev/tcp, no client needed).
memcache_stats() {
    exec 3<>"/dev/tcp/$1/$2" || return 1
    printf 'stats\r\n' >&3
    timeout 5 sed '/^END/q' <&3
    exec 3<&- 3>&-
}

wait_for_stats() { # host port seconds
    for _ in $(seq $(( $3 * 10 ))); do
        memcache_stats "$1" "$2" 2>/dev/null | grep -q '^STAT kai_node' && return 0
        sleep 0.1
    done
    return 1
}

mode_of() { stat -c '%a %U:%G' "$1"; }

# Whether process $1 runs (a zombie waiting for its reaper does not count).
alive() {
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    case "$state" in Z*) return 1 ;; esac
}

not() { ! "$@"; }

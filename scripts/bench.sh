#!/usr/bin/env bash
# make bench: kai against Debian's memcached (-t 2), driven one after the other by the same
# external load generator (memcaslap from libmemcached-tools): 2 client threads,
# 50 connections, 64-byte keys, 1 KiB values, get-only / set-only / 9:1 get:set rows.
# Prints one table of ops/s and the kai/memcached ratio; raw output is kept in bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_ROW=${BENCH_SECONDS:-10}
KAI=${KAI:-target/release/kai}
OUT="bench-results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listening on $1" >&2; exit 1
}

MC_PORT=$(free_port)
KAI_PORT=$(free_port)
USER_OPT=()
[ "$(id -u)" -eq 0 ] && USER_OPT=(-u root)
memcached "${USER_OPT[@]}" -l 127.0.0.1 -p "$MC_PORT" -U 0 -t 2 -m 4096 -c 4096 &
MC_PID=$!
cat > "$OUT/kai.toml" <<TOML
[memcache]
listen = "127.0.0.1:$KAI_PORT"
[log]
level = "warn"
TOML
"$KAI" --config "$OUT/kai.toml" 2> "$OUT/kai.log" &
KAI_PID=$!
trap 'kill $MC_PID $KAI_PID 2>/dev/null || true' EXIT
wait_port "$MC_PORT"
wait_port "$KAI_PORT"

# memcaslap workload files: key size, value size, command mix (0 = set, 1 = get).
workload() { printf 'key\n64 64 1\nvalue\n1024 1024 1\ncmd\n0 %s\n1 %s\n' "$1" "$2" > "$OUT/$3.cfg"; }
workload 0.0 1.0 get
workload 1.0 0.0 set
workload 0.1 0.9 mix

run() { # server-name port row
    # -w 2k: each connection first loads a 2k-item window (~100k items), the warm-up that
    # get-only rows read back.
    # CONNS and PROTOCOL (-B: binary) pick the connections and the protocol.
    local raw="$OUT/$1-$3-${CONNS:-50}${PROTOCOL:-}.txt"
    # shellcheck disable=SC2086
    memcaslap -s "127.0.0.1:$2" -T 2 -c "${CONNS:-50}" ${PROTOCOL:-} -w 2k -t "${SECONDS_PER_ROW}s" \
        -F "$OUT/$3.cfg" > "$raw" 2>&1
    awk '/^Run time:/ { for (i = 1; i <= NF; i++) if ($i == "TPS:") print $(i + 1) }' "$raw" | tail -1
}

printf '%-16s %14s %14s %8s\n' "row" "memcached/s" "kai/s" "ratio" | tee "$OUT/table.txt"
for row in get set mix; do
    mc=$(run memcached "$MC_PORT" "$row")
    kai=$(run kai "$KAI_PORT" "$row")
    ratio=$(awk -v a="$kai" -v b="$mc" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    printf '%-16s %14s %14s %8s\n' "$row" "$mc" "$kai" "$ratio" | tee -a "$OUT/table.txt"
done
# The same rows in memcached's binary protocol (memcaslap -B), at 10 and 50 connections.
for conns in 10 50; do
    for row in get set mix; do
        mc=$(CONNS=$conns PROTOCOL=-B run memcached "$MC_PORT" "$row")
        kai=$(CONNS=$conns PROTOCOL=-B run kai "$KAI_PORT" "$row")
        ratio=$(awk -v a="$kai" -v b="$mc" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
        printf '%-16s %14s %14s %8s\n' "binary $conns $row" "$mc" "$kai" "$ratio" | tee -a "$OUT/table.txt"
    done
done

# Second table: exact latency percentiles and failures, with our closed-loop load generator
# (connection i goes to server i mod n, like a round-robin load balancer), for memcached,
# one kai node and a 3-node kai cluster (N=3 R=2 W=2, memory engine) on this machine.
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
CLUSTER_PORT=$(free_port)
CLUSTER_RPC=$(free_port)
CLUSTER_PIDS=()
for i in 1 2 3; do
    mkdir -p "$OUT/node$i"
    cat > "$OUT/node$i.toml" <<TOML
[node]
hostname = "127.0.0.1$i"
data_dir = "$OUT/node$i"
[memcache]
listen = "127.0.0.1$i:$CLUSTER_PORT"
max_connections = 4096
[rpc]
listen = "127.0.0.1$i:$CLUSTER_RPC"
[cluster]
quorum = { n = 3, r = 2, w = 2 }
seeds = ["127.0.0.11:$CLUSTER_RPC"]
[log]
level = "warn"
TOML
    "$KAI" --config "$OUT/node$i.toml" 2> "$OUT/node$i.log" &
    CLUSTER_PIDS+=($!)
done
trap 'kill $MC_PID $KAI_PID "${CLUSTER_PIDS[@]}" 2>/dev/null || true' EXIT
members_up() { # host port: how many members the node sees up
    python3 - "$1" "$2" <<'PY' 2>/dev/null || echo 0
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.sendall(b"stats\r\n")
data = b""
while not data.endswith(b"END\r\n"):
    data += s.recv(65536)
for line in data.decode().splitlines():
    if line.startswith("STAT kai_curr_nodes "):
        print(len(line.split()) - 2)
PY
}
for _ in $(seq 100); do
    [ "$(members_up 127.0.0.11 "$CLUSTER_PORT")" = 3 ] && break
    sleep 0.2
done
CLUSTER="127.0.0.11:$CLUSTER_PORT,127.0.0.12:$CLUSTER_PORT,127.0.0.13:$CLUSTER_PORT"

echo | tee -a "$OUT/table.txt"
printf '%-12s %5s %-4s %10s %8s %8s %9s %7s %7s\n' target conns row "ops/s" "p50 us" "p99 us" "p99.9 us" errors closed | tee -a "$OUT/table.txt"
DISK_PORT=$(free_port)
mkdir -p "$OUT/disk"
cat > "$OUT/disk.toml" <<TOML
[node]
data_dir = "$OUT/disk"
[memcache]
listen = "127.0.0.1:$DISK_PORT"
max_connections = 4096
[rpc]
listen = "127.0.0.1:0"
[store]
engine = "disk"
[log]
level = "warn"
TOML
"$KAI" --config "$OUT/disk.toml" 2> "$OUT/disk.log" &
DISK_PID=$!
trap 'kill $MC_PID $KAI_PID $DISK_PID "${CLUSTER_PIDS[@]}" 2>/dev/null || true' EXIT
wait_port "$DISK_PORT"

for target in memcached kai kai-disk kai-3-nodes; do
    case $target in
        memcached) servers="127.0.0.1:$MC_PORT" ;;
        kai) servers="127.0.0.1:$KAI_PORT" ;;
        kai-disk) servers="127.0.0.1:$DISK_PORT" ;;
        *) servers=$CLUSTER ;;
    esac
    "$LOADGEN" --servers "$servers" --connections 50 --mix fill > /dev/null
    for conns in 10 50; do
        for row in get set mix; do
            read -r ops p50 p99 p999 errors closed < <("$LOADGEN" --servers "$servers" --connections "$conns" --seconds "$SECONDS_PER_ROW" --mix "$row")
            printf '%-12s %5s %-4s %10s %8s %8s %9s %7s %7s\n' "$target" "$conns" "$row" "$ops" "$p50" "$p99" "$p999" "$errors" "$closed" | tee -a "$OUT/table.txt"
        done
    done
done
kill "$DISK_PID" "${CLUSTER_PIDS[@]}" 2>/dev/null || true
wait "$DISK_PID" 2>/dev/null || true

# Third: the seed's production size on the disk engine (BENCH_ITEMS items of 2 KiB,
# 1.5 M ≈ 3 GB by default), then a restart: time to accepting clients, and RSS after start.
ITEMS=${BENCH_ITEMS:-1500000}
rm -rf "$OUT/disk"; mkdir -p "$OUT/disk"
"$KAI" --config "$OUT/disk.toml" 2> "$OUT/disk.log" &
DISK_PID=$!
wait_port "$DISK_PORT"
load_started=$(date +%s.%N)
read -r load_rate _ < <("$LOADGEN" --servers "127.0.0.1:$DISK_PORT" --connections 50 --mix fill --keys "$ITEMS" --value 2048)
load_seconds=$(awk -v a="$load_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
kill -TERM "$DISK_PID"; wait "$DISK_PID" 2>/dev/null || true
db_bytes=$(stat -c %s "$OUT/disk/kai.redb")
start=$(date +%s.%N)
"$KAI" --config "$OUT/disk.toml" 2> "$OUT/disk-restart.log" &
DISK_PID=$!
wait_port "$DISK_PORT"
ready_ms=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
rss_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$DISK_PID/status")
{
    echo
    echo "disk engine at production size: $ITEMS items of 2 KiB loaded in ${load_seconds}s (${load_rate} durable sets/s, 50 connections)"
    echo "  database file $((db_bytes / 1048576)) MiB; restart to accepting clients ${ready_ms} ms; RSS after restart $((rss_kib / 1024)) MiB ($(awk -v r="$rss_kib" -v d="$db_bytes" 'BEGIN { printf "%.1f", r * 1024 * 100 / d }')% of the data)"
} | tee -a "$OUT/table.txt"
kill "$DISK_PID" 2>/dev/null || true
rm -rf "$OUT/disk"
echo "kai $(git rev-parse --short HEAD 2>/dev/null || echo unknown); raw output in $OUT" | tee -a "$OUT/table.txt"

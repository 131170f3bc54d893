#!/usr/bin/env bash
# make bench: kai against Debian's memcached (-t 2), driven one after the other by the same
# external load generator (memcaslap from libmemcached-tools): 2 client threads,
# 50 connections, 64-byte keys, 1 KiB values, get-only / set-only / 9:1 get:set rows; then
# latency with our own closed-loop generator, RSS per item, the disk engine at the seed's
# production size, and last one summary of kai/peer ratios. Raw output stays in bench-results/.
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
# The disk engine twice: every write fsynced before its answer, and synced every second.
disk_node() { # name port durability
    mkdir -p "$OUT/$1"
    cat > "$OUT/$1.toml" <<TOML
[node]
data_dir = "$OUT/$1"
[memcache]
listen = "127.0.0.1:$2"
max_connections = 4096
[rpc]
listen = "127.0.0.1:0"
[store]
engine = "disk"
durability = "$3"
[log]
level = "warn"
TOML
    "$KAI" --config "$OUT/$1.toml" 2> "$OUT/$1.log" &
}
FSYNC_PORT=$(free_port)
PERIODIC_PORT=$(free_port)
disk_node fsync "$FSYNC_PORT" fsync
FSYNC_PID=$!
disk_node periodic "$PERIODIC_PORT" periodic
PERIODIC_PID=$!
trap 'kill $MC_PID $KAI_PID $FSYNC_PID $PERIODIC_PID 2>/dev/null || true' EXIT
for port in "$MC_PORT" "$KAI_PORT" "$FSYNC_PORT" "$PERIODIC_PORT"; do wait_port "$port"; done
declare -A TPS # target/row/conns -> ops/s from memcaslap

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

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
# On a virtual machine the hypervisor may run other guests on our cores: the time it took
# ("steal", /proc/stat) is time neither server had, and it comes and goes within a run (the
# test VM has shown 30-65 % during a row). Each row and pair says how much there was.
cpu_snapshot() { awk '/^cpu / { total = 0; for (i = 2; i <= 9; i++) total += $i; print $9, total; exit }' /proc/stat; }
steal_since() { # "steal total" from cpu_snapshot: the share of CPU time stolen since, in %
    local steal total
    read -r steal total < <(cpu_snapshot)
    awk -v s="$((steal - ${1% *}))" -v t="$((total - ${1#* }))" 'BEGIN { if (t > 0) printf "%.0f", 100 * s / t; else print 0 }'
}
RUN_START=$(cpu_snapshot)
# What the disk under the data directories allows: 4 KiB appends, each fdatasynced, for 3 s.
# The fsync rows are bounded by it, and on a virtual disk it moves between runs.
fdatasync_rate() {
    python3 - "$OUT/fdatasync-probe" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
count, start = 0, time.monotonic()
while time.monotonic() - start < 3:
    os.write(fd, b"x" * 4096)
    os.fdatasync(fd)
    count += 1
print(round(count / (time.monotonic() - start)))
os.close(fd)
os.unlink(sys.argv[1])
PY
}
FDATASYNC_BEFORE=$(fdatasync_rate)
printf '%-16s %12s %12s %6s %12s %12s\n' "row" "memcached/s" "kai/s" "ratio" "fsync/s" "periodic/s" | tee "$OUT/table.txt"
for conns in 10 50; do
    for row in get set mix; do
        mc=$(CONNS=$conns run memcached "$MC_PORT" "$row")
        kai=$(CONNS=$conns run kai "$KAI_PORT" "$row")
        fsync=$(CONNS=$conns run kai-fsync "$FSYNC_PORT" "$row")
        periodic=$(CONNS=$conns run kai-periodic "$PERIODIC_PORT" "$row")
        TPS[memcached/$row/$conns]=$mc TPS[kai/$row/$conns]=$kai
        TPS[fsync/$row/$conns]=$fsync TPS[periodic/$row/$conns]=$periodic
        printf '%-16s %12s %12s %6s %12s %12s\n' "$conns $row" "$mc" "$kai" "$(ratio "$kai" "$mc")" "$fsync" "$periodic" | tee -a "$OUT/table.txt"
    done
done
# The same rows in memcached's binary protocol (memcaslap -B), at 10 and 50 connections.
for conns in 10 50; do
    for row in get set mix; do
        mc=$(CONNS=$conns PROTOCOL=-B run memcached "$MC_PORT" "$row")
        kai=$(CONNS=$conns PROTOCOL=-B run kai "$KAI_PORT" "$row")
        printf '%-16s %12s %12s %6s\n' "binary $conns $row" "$mc" "$kai" "$(ratio "$kai" "$mc")" | tee -a "$OUT/table.txt"
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
trap 'kill $MC_PID $KAI_PID $FSYNC_PID $PERIODIC_PID "${CLUSTER_PIDS[@]}" 2>/dev/null || true' EXIT
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
# cpu us/op: the servers' CPU time (user + system, every node of the cluster) over the row,
# per operation; client us/op: the load generator's own.
printf '%-12s %5s %-4s %10s %8s %8s %9s %7s %7s %10s %10s %7s\n' target conns row "ops/s" "p50 us" "p99 us" "p99.9 us" errors closed "cpu us/op" "client us/op" "steal %" | tee -a "$OUT/table.txt"
cpu_ticks() { # pids...: their CPU time so far, in clock ticks
    local total=0 pid
    for pid in "$@"; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
    echo "$total"
}
TICK=$(getconf CLK_TCK)
declare -A LAT # target/row/conns -> "ops p50 p99 p99.9"
for target in memcached kai kai-fsync kai-periodic kai-3-nodes; do
    case $target in
        memcached) servers="127.0.0.1:$MC_PORT" pids=("$MC_PID") ;;
        kai) servers="127.0.0.1:$KAI_PORT" pids=("$KAI_PID") ;;
        kai-fsync) servers="127.0.0.1:$FSYNC_PORT" pids=("$FSYNC_PID") ;;
        kai-periodic) servers="127.0.0.1:$PERIODIC_PORT" pids=("$PERIODIC_PID") ;;
        *) servers=$CLUSTER pids=("${CLUSTER_PIDS[@]}") ;;
    esac
    "$LOADGEN" --servers "$servers" --connections 50 --mix fill > /dev/null
    for conns in 10 50; do
        for row in get set mix; do
            ticks=$(cpu_ticks "${pids[@]}") since=$(cpu_snapshot)
            read -r ops p50 p99 p999 errors closed client < <("$LOADGEN" --servers "$servers" --connections "$conns" --seconds "$SECONDS_PER_ROW" --mix "$row")
            cpu=$(awk -v t="$(( $(cpu_ticks "${pids[@]}") - ticks ))" -v hz="$TICK" -v ops="$ops" -v s="$SECONDS_PER_ROW" \
                'BEGIN { if (ops > 0) printf "%.1f", t / hz * 1e6 / (ops * s); else print "n/a" }')
            LAT[$target/$row/$conns]="$ops $p50 $p99 $p999 $cpu $client"
            printf '%-12s %5s %-4s %10s %8s %8s %9s %7s %7s %10s %10s %7s\n' "$target" "$conns" "$row" "$ops" "$p50" "$p99" "$p999" "$errors" "$closed" "$cpu" "$client" "$(steal_since "$since")" | tee -a "$OUT/table.txt"
        done
    done
done
# Three targets, paired: rows of different servers run a minute apart above, and this
# machine's speed drifts between them (disk/memory gets ranged 0.74-1.08 over runs, kai/
# memcached sets 0.81-1.02, periodic/memory sets 0.72-0.91). Five pairs of 5 s rows back
# to back, the order alternating; the median of their ratios.
ops_of() { # port mix
    "$LOADGEN" --servers "127.0.0.1:$1" --connections 50 --seconds 5 --mix "$2" | cut -d' ' -f1
}
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }
# Context switches of all a process's threads so far, voluntary (it waited for input) and
# not (it was preempted): on cores the load generator shares, each is CPU neither side
# spends on requests, so the paired set rows print them per set.
switches() { cat /proc/"$1"/task/*/status | awk '/_ctxt_switches:/ { n += $2 } END { print n }'; }
measured() { # port mix [pid]: ops/s, then the pid's context switches per op (or -)
    local before ops
    [ -n "${3:-}" ] && before=$(switches "$3")
    ops=$(ops_of "$1" "$2")
    if [ -n "${3:-}" ]; then
        awk -v n="$(( $(switches "$3") - before ))" -v o="$ops" 'BEGIN { printf "%s %.3f", o, (o > 0 ? n / (o * 5) : 0) }'
    else
        echo "$ops -"
    fi
}
paired() { # name mix port peer-port [pid peer-pid]: prints the median ratio
    local pair ours peer since detail ratios=() ours_cs=() peer_cs=()
    for pair in 1 2 3 4 5; do
        since=$(cpu_snapshot)
        if ((pair % 2)); then
            peer=$(measured "$4" "$2" "${6:-}"); ours=$(measured "$3" "$2" "${5:-}")
        else
            ours=$(measured "$3" "$2" "${5:-}"); peer=$(measured "$4" "$2" "${6:-}")
        fi
        ratios+=("$(ratio "${ours% *}" "${peer% *}")"); ours_cs+=("${ours#* }"); peer_cs+=("${peer#* }")
        detail=""
        [ -n "${6:-}" ] && detail=", server context switches per op ${ours#* } against ${peer#* }"
        echo "paired $1 $pair: ${ours% *} against ${peer% *}, ratio ${ratios[-1]}$detail, steal $(steal_since "$since") %" >> "$OUT/table.txt"
    done
    [ -n "${6:-}" ] && echo "$(median "${ours_cs[@]}") $(median "${peer_cs[@]}")" > "$OUT/paired-switches"
    median "${ratios[@]}"
}
# Page faults of the disk node over its paired gets, and the memory left: by now the
# servers hold about 20 GiB, and a mapped page the kernel took back costs a fault to read.
faults() { awk '{ print $10, $12 }' "/proc/$1/stat"; }
available_mib() { awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo; }
read -r minor major < <(faults "$FSYNC_PID")
available=$(available_mib)
PAIRED_DISK_GET=$(paired "get, disk fsync node / memory node" get "$FSYNC_PORT" "$KAI_PORT")
read -r minor_after major_after < <(faults "$FSYNC_PID")
echo "paired get: the disk node took $((minor_after - minor)) minor and $((major_after - major)) major page faults; memory available $available MiB before, $(available_mib) MiB after" >> "$OUT/table.txt"
# Loadgen's sets overwrite 100 k keys, so the periodic node compacts during its rows.
PAIRED_PERIODIC_SET=$(paired "set, disk periodic node / memory node" set "$PERIODIC_PORT" "$KAI_PORT")
since=$(cpu_snapshot)
PAIRED_SET=$(paired "set, kai memory node / memcached" set "$KAI_PORT" "$MC_PORT" "$KAI_PID" "$MC_PID")
read -r PAIRED_SET_KAI_CS PAIRED_SET_MC_CS < "$OUT/paired-switches"
PAIRED_SET_STEAL=$(steal_since "$since")
# The same set pairs with each server on one core and the load generator on another, which
# is how a remote client meets a server: each side's scheduling no longer preempts the
# other's, and what is left is the servers' own cost. Prints the median ratio and the median
# server CPU µs per set of kai and of memcached.
read -r CLIENT_CORE SERVER_CORE _ < <(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')
pinned_row() { # port pid: ops/s and the server's CPU µs per op
    local ticks ops
    ticks=$(cpu_ticks "$2")
    ops=$(taskset -c "$CLIENT_CORE" "$LOADGEN" --servers "127.0.0.1:$1" --connections 50 --seconds 5 --mix set | cut -d' ' -f1)
    awk -v o="$ops" -v t="$(( $(cpu_ticks "$2") - ticks ))" -v hz="$TICK" 'BEGIN { printf "%s %.1f", o, t / hz * 1e6 / (o * 5) }'
}
pinned_paired() {
    local pair kai mc since ratios=() kai_cpu=() mc_cpu=()
    taskset -a -p -c "$SERVER_CORE" "$KAI_PID" > /dev/null
    taskset -a -p -c "$SERVER_CORE" "$MC_PID" > /dev/null
    for pair in 1 2 3 4 5; do
        since=$(cpu_snapshot)
        if ((pair % 2)); then
            mc=$(pinned_row "$MC_PORT" "$MC_PID"); kai=$(pinned_row "$KAI_PORT" "$KAI_PID")
        else
            kai=$(pinned_row "$KAI_PORT" "$KAI_PID"); mc=$(pinned_row "$MC_PORT" "$MC_PID")
        fi
        ratios+=("$(ratio "${kai% *}" "${mc% *}")"); kai_cpu+=("${kai#* }"); mc_cpu+=("${mc#* }")
        echo "pinned set $pair: kai ${kai% *}/s at ${kai#* } µs, memcached ${mc% *}/s at ${mc#* } µs, ratio ${ratios[-1]}, steal $(steal_since "$since") %" >> "$OUT/table.txt"
    done
    echo "$(median "${ratios[@]}") $(median "${kai_cpu[@]}") $(median "${mc_cpu[@]}")"
}
# The 3-node rows again, five times each, alternating with memcached alone under the same
# client: a 5 s row's p99.9 is a few hundred requests, and one scheduling stall on this
# shared machine moves it by milliseconds (memcached alone's mix p99.9 ranged 2.4-8.0 ms
# between runs). Prints the medians: the cluster's ops/s and p99.9, memcached's p99.9.
cluster_repeated() { # mix
    local pair kai mc since k_ops k_p999 m_ops m_p999 ops=() kai_p999=() mc_p999=()
    for pair in 1 2 3 4 5; do
        since=$(cpu_snapshot)
        if ((pair % 2)); then
            mc=$("$LOADGEN" --servers "127.0.0.1:$MC_PORT" --connections 50 --seconds 5 --mix "$1")
            kai=$("$LOADGEN" --servers "$CLUSTER" --connections 50 --seconds 5 --mix "$1")
        else
            kai=$("$LOADGEN" --servers "$CLUSTER" --connections 50 --seconds 5 --mix "$1")
            mc=$("$LOADGEN" --servers "127.0.0.1:$MC_PORT" --connections 50 --seconds 5 --mix "$1")
        fi
        read -r k_ops _ _ k_p999 _ <<< "$kai"
        read -r m_ops _ _ m_p999 _ <<< "$mc"
        ops+=("$k_ops"); kai_p999+=("$k_p999"); mc_p999+=("$m_p999")
        echo "3 nodes $1 $pair: $k_ops/s, p99.9 $k_p999 µs; memcached alone $m_ops/s, p99.9 $m_p999 µs; steal $(steal_since "$since") %" >> "$OUT/table.txt"
    done
    echo "$(median "${ops[@]}") $(median "${kai_p999[@]}") $(median "${mc_p999[@]}")"
}
read -r CLUSTER_GET _ _ <<< "$(cluster_repeated get)"
read -r CLUSTER_SET _ _ <<< "$(cluster_repeated set)"
read -r _ CLUSTER_MIX_P999 MC_MIX_P999 <<< "$(cluster_repeated mix)"
PINNED_SET="n/a n/a n/a"
since=$(cpu_snapshot)
[ -n "${SERVER_CORE:-}" ] && PINNED_SET=$(pinned_paired)
PINNED_SET_STEAL=$(steal_since "$since")
read -r PINNED_RATIO PINNED_KAI_CPU PINNED_MC_CPU <<< "$PINNED_SET"
kill "$KAI_PID" "$FSYNC_PID" "$PERIODIC_PID" "${CLUSTER_PIDS[@]}" 2>/dev/null || true
kill "$MC_PID" 2>/dev/null || true
wait 2>/dev/null || true

# RSS per item: a fresh server, 1 M items of the given size loaded, (RSS after - before) / items.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
per_item() { # pid port value-bytes
    local before after
    before=$(rss_kib "$1")
    "$LOADGEN" --servers "127.0.0.1:$2" --connections 50 --mix fill --keys 1000000 --value "$3" > /dev/null
    after=$(rss_kib "$1")
    echo $(( (after - before) * 1024 / 1000000 ))
}
declare -A RSS
for size in 1024 100; do
    port=$(free_port)
    memcached "${USER_OPT[@]}" -l 127.0.0.1 -p "$port" -U 0 -t 2 -m 4096 -c 4096 &
    pid=$!; wait_port "$port"
    RSS[memcached/$size]=$(per_item "$pid" "$port" "$size")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    sed "s/^listen = .*/listen = \"127.0.0.1:$port\"/" "$OUT/kai.toml" > "$OUT/kai-rss.toml"
    "$KAI" --config "$OUT/kai-rss.toml" 2> "$OUT/kai-rss.log" &
    pid=$!; wait_port "$port"
    RSS[kai/$size]=$(per_item "$pid" "$port" "$size")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    printf 'RSS per item, 1 M items of %s B: memcached %s B, kai memory engine %s B\n' "$size" "${RSS[memcached/$size]}" "${RSS[kai/$size]}" | tee -a "$OUT/table.txt"
done

# The seed's production size on the disk engine (BENCH_ITEMS items of 2 KiB, 1.5 M ≈ 3 GB by
# default, loaded with durability = "periodic" to save time), half of them overwritten, then
# a restart: time to accepting clients, RSS, and the log's size against the live data before
# and after compaction.
ITEMS=${BENCH_ITEMS:-1500000}
DISK_PORT=$(free_port)
rm -rf "$OUT/periodic"
disk_node periodic "$DISK_PORT" periodic
DISK_PID=$!
trap 'kill $DISK_PID 2>/dev/null || true' EXIT
wait_port "$DISK_PORT"
load_started=$(date +%s.%N)
read -r load_rate _ < <("$LOADGEN" --servers "127.0.0.1:$DISK_PORT" --connections 50 --mix fill --keys "$ITEMS" --value 2048)
load_seconds=$(awk -v a="$load_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
"$LOADGEN" --servers "127.0.0.1:$DISK_PORT" --connections 50 --mix fill --keys $((ITEMS / 2)) --value 2048 > /dev/null
stat_of() { # port name
    python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.sendall(b"stats\r\n")
data = b""
while not data.endswith(b"END\r\n"):
    data += s.recv(65536)
for line in data.decode().splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] == sys.argv[2]:
        print(parts[2])
PY
}
live_bytes=$(( $(stat_of "$DISK_PORT" kai_store_file_bytes) - $(stat_of "$DISK_PORT" kai_store_dead_bytes) ))
kill -TERM "$DISK_PID"; wait "$DISK_PID" 2>/dev/null || true
log_bytes() { du -sb "$OUT/periodic/log" | cut -f1; }
before_compaction=$(log_bytes)
start=$(date +%s.%N)
"$KAI" --config "$OUT/periodic.toml" 2> "$OUT/periodic-restart.log" &
DISK_PID=$!
# The listener is bound before the store opens (the kernel queues connections): serving
# means a get of the first loaded key answers its value.
python3 - "$DISK_PORT" <<'PY'
import socket, sys, time
deadline = time.time() + 300
while time.time() < deadline:
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60)
        s.sendall(b"get key:000000000000\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"VALUE"):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.01)
sys.exit("the restarted node did not serve the first key")
PY
ready_ms=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
rss=$(rss_kib "$DISK_PID")
kill -TERM "$DISK_PID"; wait "$DISK_PID" 2>/dev/null || true
"$KAI" store compact --data-dir "$OUT/periodic" > "$OUT/compact.txt"
after_compaction=$(log_bytes)
{
    echo
    echo "disk engine at production size: $ITEMS items of 2 KiB loaded in ${load_seconds}s (${load_rate} sets/s, 50 connections), half overwritten"
    echo "  restart to serving the first key ${ready_ms} ms; RSS after restart $((rss / 1024)) MiB"
    echo "  log $((before_compaction / 1048576)) MiB before compaction, $((after_compaction / 1048576)) MiB after; live data $((live_bytes / 1048576)) MiB"
} | tee -a "$OUT/table.txt"
rm -rf "$OUT/periodic" "$OUT/fsync" "$OUT"/node?

FDATASYNC_AFTER=$(fdatasync_rate)

# The summary: issue 19's rows, each a ratio against its peer from this run.
lat() { echo "${LAT[$1]}" | cut -d' ' -f"$2"; } # target/row/conns field (1 ops, 4 p99.9, 5 cpu, 6 client cpu)
# Cores a rate needs on this machine, where the client shares the cores with the servers:
# (servers' + client's CPU µs per op, measured in the row) × ops/s.
cores_at() { awk -v s="$(lat "$1" 5)" -v c="$(lat "$1" 6)" -v r="$2" 'BEGIN { printf "%.2f", (s + c) * r / 1e6 }'; }
{
    echo
    printf '| row | kai | peer | ratio | target |\n|---|---|---|---|---|\n'
    row() { printf '| %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(ratio "$2" "$3")" "$4"; }
    row "disk fsync set, 50 conns (vs memory engine)" "${TPS[fsync/set/50]}" "${TPS[kai/set/50]}" "≥ 0.5"
    printf '| %s | %s | | | %s |\n' "this machine's fdatasync rate, 4 KiB appends per second, before the rows and after them" "$FDATASYNC_BEFORE / $FDATASYNC_AFTER" "—"
    row "disk fsync set, 10 conns (vs memory engine)" "${TPS[fsync/set/10]}" "${TPS[kai/set/10]}" "—"
    row "disk periodic set, 50 conns, memcaslap (vs memory engine)" "${TPS[periodic/set/50]}" "${TPS[kai/set/50]}" "—"
    printf '| %s | | | %s | %s |\n' "disk periodic set, 50 conns, median of 5 paired loadgen rows (vs memory engine)" "$PAIRED_PERIODIC_SET" "≥ 0.8"
    # memcaslap's get row begins with its window's 100 k sets (about a fifth of the row's
    # operations), fsynced on this node: the read path is the loadgen row after it.
    row "disk get, 50 conns, memcaslap incl. its warm-up sets (vs memory engine)" "${TPS[fsync/get/50]}" "${TPS[kai/get/50]}" "—"
    row "disk get, 50 conns, gets only (loadgen, vs memory engine)" "$(lat kai-fsync/get/50 1)" "$(lat kai/get/50 1)" "—"
    printf '| %s | | | %s | %s |\n' "disk get, 50 conns, median of 5 paired loadgen rows (vs memory engine)" "$PAIRED_DISK_GET" "≥ 0.95"
    row "disk get, server CPU µs per op (vs memory engine's)" "$(lat kai-fsync/get/50 5)" "$(lat kai/get/50 5)" "—"
    row "RSS per 1 KiB item, bytes (vs memcached)" "${RSS[kai/1024]}" "${RSS[memcached/1024]}" "≤ 1.0"
    row "RSS per 100 B item, bytes (vs memcached)" "${RSS[kai/100]}" "${RSS[memcached/100]}" "≤ 1.0"
    row "single node set, 50 conns, memcaslap (vs memcached -t 2)" "${TPS[kai/set/50]}" "${TPS[memcached/set/50]}" "—"
    printf '| %s | | | %s | %s |\n' "single node set, 50 conns, median of 5 paired loadgen rows (vs memcached -t 2)" "$PAIRED_SET" "≥ 1.0"
    printf '| %s | %s | | | %s |\n' "CPU time stolen by the hypervisor during those paired rows, %" "$PAIRED_SET_STEAL" "—"
    printf '| %s | | | %s | %s |\n' "single node set, pinned: server on one core, load generator on another, median of 5 pairs (vs memcached -t 2)" "$PINNED_RATIO" "—"
    printf '| %s | %s | | | %s |\n' "CPU time stolen by the hypervisor during the pinned pairs, %" "$PINNED_SET_STEAL" "—"
    row "single node set, paired rows: server context switches per set, medians (vs memcached's)" "$PAIRED_SET_KAI_CS" "$PAIRED_SET_MC_CS" "—"
    row "single node set, pinned: server CPU µs per set, medians (vs memcached's)" "$PINNED_KAI_CPU" "$PINNED_MC_CPU" "—"
    row "single node set p99.9 µs, 50 conns (vs memcached)" "$(lat kai/set/50 4)" "$(lat memcached/set/50 4)" "≤ 1.0"
    row "3 nodes N=3 R=2 W=2 get, 50 conns, median of 5 rows (vs 80 k/s)" "$CLUSTER_GET" 80000 "≥ 1.0"
    row "3 nodes set, 50 conns, median of 5 rows (vs 60 k/s)" "$CLUSTER_SET" 60000 "≥ 1.0"
    row "3 nodes mix p99.9 µs, 50 conns, median of 5 rows (vs 3 ms)" "$CLUSTER_MIX_P999" 3000 "≤ 1.0"
    row "3 nodes mix p99.9 µs, median of 5 (vs memcached alone's, alternating rows)" "$CLUSTER_MIX_P999" "$MC_MIX_P999" "—"
    row "3 nodes get, 50 conns, the one row above (vs 80 k/s)" "$(lat kai-3-nodes/get/50 1)" 80000 "—"
    row "3 nodes set, 50 conns, the one row above (vs 60 k/s)" "$(lat kai-3-nodes/set/50 1)" 60000 "—"
    row "3 nodes mix p99.9 µs, 50 conns, the one row above (vs 3 ms)" "$(lat kai-3-nodes/mix/50 4)" 3000 "—"
    row "3 nodes get: cores that 80 k/s needs, servers + client (vs this machine's)" "$(cores_at kai-3-nodes/get/50 80000)" "$(nproc)" "—"
    row "3 nodes set: cores that 60 k/s needs, servers + client (vs this machine's)" "$(cores_at kai-3-nodes/set/50 60000)" "$(nproc)" "—"
    row "memcached get, 50 conns: cores used, server + client, at its own rate (vs this machine's: the method's check)" "$(cores_at memcached/get/50 "$(lat memcached/get/50 1)")" "$(nproc)" "—"
    row "3 nodes mix p99.9 µs (vs memcached alone's, same client)" "$(lat kai-3-nodes/mix/50 4)" "$(lat memcached/mix/50 4)" "—"
    row "3 nodes get, server CPU µs per op (vs one kai node's)" "$(lat kai-3-nodes/get/50 5)" "$(lat kai/get/50 5)" "—"
    row "one kai node get, server CPU µs per op (vs memcached's)" "$(lat kai/get/50 5)" "$(lat memcached/get/50 5)" "—"
    printf '| %s | %s | | | %s |\n' "CPU time stolen by the hypervisor over the whole run, % (per row: the tables above)" "$(steal_since "$RUN_START")" "—"
    row "restart at $ITEMS × 2 KiB, ms (vs 5 s)" "$ready_ms" 5000 "< 1.0"
    row "log after compaction (vs live data)" "$after_compaction" "$live_bytes" "≤ 1.5"
} | tee -a "$OUT/table.txt"
echo "kai $(git rev-parse --short HEAD 2>/dev/null || echo unknown); raw output in $OUT" | tee -a "$OUT/table.txt"

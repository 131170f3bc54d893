//! The optional Prometheus endpoint (`[metrics] listen`): `GET /metrics` in the text
//! exposition format, built from the same numbers as `stats`.

use crate::node::Node;
use crate::node::StatsSection;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Stats that only grow, exported as `kai_<name>_total` counters.
const COUNTERS: &[(&str, &str)] = &[
    ("total_connections", "Client connections accepted"),
    (
        "rejected_connections",
        "Client connections refused at max_connections",
    ),
    (
        "ssl_handshake_errors",
        "TLS listener handshakes that failed or timed out",
    ),
    ("cmd_get", "Keys read that returned a value (Kai semantics)"),
    ("cmd_set", "Successful storage commands"),
    ("cmd_touch", "touch and gat commands"),
    ("cmd_flush", "flush_all commands"),
    ("get_hits", "Keys read and found"),
    ("get_misses", "Keys read and not found"),
    ("delete_hits", "Deletes of existing keys"),
    ("delete_misses", "Deletes of missing keys"),
    ("cas_hits", "Successful cas"),
    ("cas_misses", "cas on missing keys"),
    ("cas_badval", "cas with a stale unique"),
    ("incr_hits", "Successful incr"),
    ("incr_misses", "incr on missing keys"),
    ("decr_hits", "Successful decr"),
    ("decr_misses", "decr on missing keys"),
    ("touch_hits", "Touches of existing keys"),
    ("touch_misses", "Touches of missing keys"),
    ("auth_cmds", "Client logins (SASL and text)"),
    ("auth_errors", "Client logins refused"),
    (
        "kai_http_requests_closed",
        "Client connections closed for sending an HTTP request line",
    ),
    ("total_items", "Items stored"),
    ("evictions", "Items evicted by memory_limit"),
    ("bytes_read", "Value bytes sent to clients (Kai semantics)"),
    (
        "bytes_write",
        "Value bytes received from clients (Kai semantics)",
    ),
    (
        "kai_hinted_handoffs",
        "Hinted writes handed back to their owner",
    ),
    ("kai_read_repairs", "Replicas repaired by reads"),
    (
        "kai_read_quorum_failures",
        "Client reads failed for too few replicas up or answering",
    ),
    (
        "kai_write_quorum_failures",
        "Client writes failed for too few replicas up or acknowledging",
    ),
    (
        "kai_forward_failures",
        "Client writes that could not be forwarded to a replica",
    ),
    ("kai_sync_keys", "Keys exchanged by anti-entropy"),
    (
        "kai_sync_bytes",
        "Key and value bytes exchanged by anti-entropy",
    ),
    (
        "kai_purged_tombstones",
        "Tombstones purged once every replica held them",
    ),
    (
        "kai_store_compactions",
        "Disk engine segments rewritten by compaction",
    ),
    (
        "kai_store_compacted_bytes",
        "Disk engine bytes given back by compaction",
    ),
    (
        "kai_store_write_errors",
        "Disk engine writes and syncs of its log that failed (a full or failing disk)",
    ),
];

/// Stats that go up and down, exported as gauges under the given name.
const GAUGES: &[(&str, &str, &str)] = &[
    (
        "uptime",
        "kai_uptime_seconds",
        "Seconds since the node started",
    ),
    (
        "curr_connections",
        "kai_curr_connections",
        "Open client connections",
    ),
    (
        "max_connections",
        "kai_max_connections",
        "Client connection limit",
    ),
    ("threads", "kai_threads", "Threads serving clients"),
    ("bytes", "kai_bytes", "Bytes held by stored items"),
    ("curr_items", "kai_curr_items", "Items stored"),
    (
        "limit_maxbytes",
        "kai_limit_maxbytes",
        "memory_limit in bytes (0 = none)",
    ),
    ("kai_members", "kai_members", "Members in the ring"),
    (
        "kai_pending_hints",
        "kai_pending_hints",
        "Keys waiting for hinted handoff to their owner",
    ),
    (
        "kai_sync_pending_buckets",
        "kai_sync_pending_buckets",
        "Buckets that differ from a replica or wait to move to their owners",
    ),
    (
        "kai_max_clock_offset_ms",
        "kai_max_clock_offset_milliseconds",
        "Largest clock offset measured to an active member",
    ),
    (
        "kai_version_mix_secs",
        "kai_version_mix_seconds",
        "Seconds the active members have run more than one release (0: one release)",
    ),
    (
        "kai_rss_anon_bytes",
        "kai_rss_anon_bytes",
        "Resident memory of the process's own pages: heap, index, stacks",
    ),
    (
        "kai_rss_file_bytes",
        "kai_rss_file_bytes",
        "Resident pages of files the process maps, the disk engine's log among them (reclaimable)",
    ),
    (
        "kai_store_file_bytes",
        "kai_store_file_bytes",
        "Bytes in the disk engine's files (0: memory engine)",
    ),
    (
        "kai_store_dead_bytes",
        "kai_store_dead_bytes",
        "Bytes in the disk engine's files no longer current, awaiting compaction",
    ),
    (
        "kai_store_write_failing",
        "kai_store_write_failing",
        "1 from a failed write or sync of the disk engine's log until a sync succeeds: client writes are refused",
    ),
    (
        "runtime_tasks",
        "kai_runtime_tasks",
        "Tasks alive in the runtime",
    ),
];

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text for `node`.
pub fn render(node: &Node) -> String {
    let stats = node.stats(StatsSection::General);
    let get = |name: &str| {
        stats
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    let node_label = label(get("kai_node").unwrap_or(""));
    let build_field = |prefix: &str| {
        (get("kai_build").unwrap_or("").split(' '))
            .find_map(|field| field.strip_prefix(prefix))
            .unwrap_or("")
    };
    let mut out = String::new();
    for (stat, help) in COUNTERS {
        let name = format!(
            "{}_total",
            if stat.starts_with("kai_") {
                stat.to_string()
            } else {
                format!("kai_{stat}")
            }
        );
        let value = get(stat).unwrap_or("0");
        let _ = writeln!(
            out,
            "# HELP {name} {help}.\n# TYPE {name} counter\n{name}{{node=\"{node_label}\"}} {value}"
        );
    }
    for (stat, name, help) in GAUGES {
        let value = get(stat).unwrap_or("0");
        let _ = writeln!(
            out,
            "# HELP {name} {help}.\n# TYPE {name} gauge\n{name}{{node=\"{node_label}\"}} {value}"
        );
    }
    for (stat, mode) in [("rusage_user", "user"), ("rusage_system", "system")] {
        let name = format!("kai_cpu_{mode}_seconds_total");
        let value = get(stat).unwrap_or("0");
        let _ = writeln!(out, "# HELP {name} CPU time in {mode} mode.\n# TYPE {name} counter\n{name}{{node=\"{node_label}\"}} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP kai_peer_clock_offset_seconds How far each peer's clock is ahead of this node's (negative: behind).\n# TYPE kai_peer_clock_offset_seconds gauge"
    );
    for (peer, ms) in node.clock_offsets() {
        let _ = writeln!(
            out,
            "kai_peer_clock_offset_seconds{{node=\"{node_label}\",peer=\"{}\"}} {:.3}",
            label(&peer.to_string()),
            ms as f64 / 1000.0
        );
    }
    let _ = writeln!(
        out,
        "# HELP kai_build_info kai's version, peer protocols, capabilities and runtime.\n# TYPE kai_build_info gauge\nkai_build_info{{node=\"{node_label}\",version=\"{}\",protocols=\"{}\",capabilities=\"{}\",finalized=\"{}\",runtime=\"{}\"}} 1",
        label(get("kai_version").unwrap_or("")),
        label(build_field("protocols=")),
        label(build_field("capabilities=")),
        label(build_field("finalized=")),
        label(get("runtime_version").unwrap_or("")),
    );
    let _ = writeln!(
        out,
        "# HELP kai_node_info The node's cluster settings and view.\n# TYPE kai_node_info gauge\nkai_node_info{{node=\"{node_label}\",quorum=\"{}\",store=\"{}\",ring_digest=\"{}\"}} 1",
        label(get("kai_quorum").unwrap_or("")),
        label(get("kai_store").unwrap_or("")),
        label(get("kai_ring_digest").unwrap_or("")),
    );
    out
}

/// Serves `/metrics` until `shutdown` fires.
pub async fn serve(listener: TcpListener, node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let node = Arc::clone(&node);
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), answer(stream, &node)).await;
                });
            }
            Err(e) => {
                log::warn!("accept on the metrics port failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One HTTP/1.x request, then close.
async fn answer(mut stream: TcpStream, node: &Node) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || request.len() > 8192 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(node),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

//! `kai cluster …`: membership status over the memcache port (read-only, like `stats`), and
//! the operator commands over the authenticated rpc port of the local node (they change
//! the cluster, so they need the cluster secret, which only the node's host can read).

use super::client::{fetch, FetchError};
use crate::address::resolve;
use crate::cluster::rpc::auth::Secret;
use crate::cluster::rpc::client::Pool;
use crate::cluster::rpc::message::{Request, Response};
use crate::cluster::rpc::tls::PeerTls;
use crate::cluster::rpc::RpcSettings;
use crate::config::Config;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// The member table of `kai cluster status`.
pub fn status(host: &str, timeout: Duration) -> Result<String, FetchError> {
    let lines = fetch(host, "stats cluster", timeout)?;
    let mut out = format!(
        "{:<24} {:<8} {:<12} {:>8} {:>8} {:>10} {:<10}\n",
        "MEMBER", "STATE", "ZONE", "BUCKETS", "HINTS", "CLOCK", "VERSION"
    );
    for (_, line) in lines.iter().filter(|(name, _)| name == "member") {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |prefix: &str| {
            (fields.iter())
                .find_map(|f| f.strip_prefix(prefix))
                .unwrap_or("?")
                .to_string()
        };
        let me = if fields.contains(&"self") {
            "  (this node)"
        } else {
            ""
        };
        // The member's clock offset from this node's, as this node measured it.
        let clock = match field("clock_offset_ms=").as_str() {
            _ if !me.is_empty() => "-".to_string(),
            "?" | "unmeasured" => "?".to_string(),
            ms => format!("{ms} ms"),
        };
        out.push_str(&format!(
            "{:<24} {:<8} {:<12} {:>8} {:>8} {clock:>10} {:<10}{me}\n",
            fields.first().unwrap_or(&"?"),
            fields.get(1).unwrap_or(&"?"),
            (fields.iter().find_map(|f| f.strip_prefix("zone="))).unwrap_or("-"),
            field("buckets="),
            field("hints="),
            field("version="),
        ));
    }
    let stats = fetch(host, "stats", timeout)?;
    let stat = |name: &str| {
        (stats.iter())
            .find(|(n, _)| n == name)
            .map_or("?", |(_, v)| v.as_str())
            .to_string()
    };
    out.push_str(&format!("build (this node): {}\n", stat("kai_build")));
    out.push_str(&format!(
        "transfers (this node): {} buckets pending, {} keys and {} bytes moved by anti-entropy\n",
        stat("kai_sync_pending_buckets"),
        stat("kai_sync_keys"),
        stat("kai_sync_bytes"),
    ));
    Ok(out)
}

/// What an operator asks the local node to do.
pub enum Command {
    Join(String),
    Leave,
    Remove(String),
    Inspect(String),
    Digests,
    Finalize,
}

/// Sends `command` to the node configured by `config` (its rpc.listen, authenticated with
/// its rpc.secret_file) and returns what to print.
pub fn run(config: &Config, node: Option<&str>, command: Command) -> Result<String, String> {
    let (target, pool, runtime) = connect(config, node)?;
    let request = match &command {
        Command::Join(seed) => Request::AdminJoin { seed: seed.clone() },
        Command::Leave => Request::AdminLeave,
        Command::Remove(node) => Request::AdminRemove { node: node.clone() },
        Command::Inspect(key) => Request::Get {
            key: Bytes::copy_from_slice(key.as_bytes()),
        },
        Command::Digests => Request::AdminDigests,
        Command::Finalize => Request::AdminFinalize,
    };
    let reply = runtime.block_on(pool.call(target, request));
    print_reply(target, reply.map_err(|e| e.to_string())?)
}

/// The local node's rpc address (or `node`), a connection pool authenticated with the
/// configured secret, and a runtime to drive it.
pub(super) fn connect(
    config: &Config,
    node: Option<&str>,
) -> Result<(std::net::SocketAddr, Pool, tokio::runtime::Runtime), String> {
    let target = resolve(node.unwrap_or(&config.rpc.listen)).map_err(|e| e.to_string())?;
    let secret = if config.rpc.secret_file.exists() {
        Secret::load(&config.rpc.secret_file).map_err(|e| format!("rpc.secret_file: {e}"))?
    } else {
        Secret::none()
    };
    // The node's own certificate: a node with rpc.tls = "on" takes nothing else.
    let tls = PeerTls::from_config(&config.rpc).map_err(|e| format!("rpc TLS: {e}"))?;
    let transport = Arc::new(RpcSettings {
        secret,
        cluster: config.cluster.name.clone(),
        node: format!("admin@{}", std::process::id()),
        timeout: config.rpc.timeout.0.max(Duration::from_secs(10)),
        max_connections: 1,
        bind: None,
        clock: Arc::new(crate::time::HybridClock::new()),
        max_clock_skew: config.cluster.max_clock_skew.0,
        upgrade: Arc::new(crate::cluster::upgrade::Upgrade::in_memory()),
        tls,
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let pool = Pool::new(transport);
    Ok((target, pool, runtime))
}

fn print_reply(target: std::net::SocketAddr, reply: Response) -> Result<String, String> {
    match reply {
        Response::Done(text) => Ok(format!("{text}\n")),
        Response::Error(err) => Err(err),
        Response::Versions(None) => Ok(format!("{target}: no version of this key\n")),
        Response::Versions(Some(versions)) => {
            let mut out = String::new();
            for record in versions.0 {
                let clock: Vec<String> = (record.clock.entries().iter())
                    .map(|(node, counter)| format!("{node:016x}:{counter}"))
                    .collect();
                let what = if record.tombstone {
                    "tombstone".to_string()
                } else {
                    format!("value {:?}", String::from_utf8_lossy(&record.value))
                };
                out.push_str(&format!(
                    "{what} flags={} expires_at={} timestamp={} clock=[{}]\n",
                    record.flags,
                    record.expires_at,
                    record.timestamp,
                    clock.join(" ")
                ));
            }
            Ok(out)
        }
        other => Err(format!("unexpected reply {other:?}")),
    }
}

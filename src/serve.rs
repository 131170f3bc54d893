//! Runs a node: bind the listeners, serve, wait for a signal, shut down in order.

use crate::config::{Engine, Loaded};
use crate::memcache::listener;
use crate::node::{Node, VERSION};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How long open client connections get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often expired records are reclaimed in the background.
const PURGE_INTERVAL: Duration = Duration::from_secs(5);

/// Builds the runtime and serves until SIGTERM or SIGINT.
pub fn run(loaded: Loaded) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("kai-worker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(loaded, threads))
}

async fn serve(loaded: Loaded, threads: usize) -> anyhow::Result<()> {
    let Loaded {
        config,
        sources,
        warnings,
    } = loaded;
    // Handlers first: a signal that arrives once the node is up must never hit the default
    // disposition (which would kill the process without a clean shutdown).
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    for warning in &warnings {
        log::warn!("{warning}");
    }
    raise_open_files_limit(
        u64::from(config.memcache.max_connections) + u64::from(config.rpc.max_connections),
    );
    let listen = config.memcache.listen.clone();
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on memcache.listen {listen}"))?;
    if config.store.engine == Engine::Disk {
        log::warn!("store.engine = \"disk\" is not available yet; serving from memory");
    }
    let described_sources = if sources.is_empty() {
        "embedded defaults".to_string()
    } else {
        sources
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let node = Arc::new(Node::new(config, sources, threads));
    log::info!(
        "kai {VERSION} serving memcache on {} (engine {}, config {described_sources})",
        listener.local_addr().map_or(listen, |a| a.to_string()),
        node.config().store.engine.name(),
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let purger = tokio::spawn(purge_expired(Arc::clone(&node)));
    let clients = tokio::spawn(listener::serve(
        listener,
        Arc::clone(&node),
        shutdown_rx,
        SHUTDOWN_GRACE,
    ));

    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    log::info!("{name} received: shutting down");
    let _ = shutdown_tx.send(true);
    let _ = clients.await;
    purger.abort();
    log::info!("kai stopped");
    Ok(())
}

async fn purge_expired(node: Arc<Node>) {
    let mut ticks = tokio::time::interval(PURGE_INTERVAL);
    loop {
        ticks.tick().await;
        let node = Arc::clone(&node);
        let purged = tokio::task::spawn_blocking(move || node.purge_expired()).await;
        if let Ok(count @ 1..) = purged {
            log::debug!("reclaimed {count} expired items");
        }
    }
}

/// Descriptors kai needs beyond its client and peer connections: listeners, store files, logs.
const RESERVED_FILES: u64 = 64;

/// Raises the soft RLIMIT_NOFILE to cover every connection kai may accept. Without the
/// privilege to go past the hard limit, it logs how many connections fit instead.
fn raise_open_files_limit(connections: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let wanted = connections + RESERVED_FILES;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= wanted {
        return;
    }
    let target = wanted.min(hard);
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        log::warn!("cannot raise the open files limit from {soft} to {target}: {e}");
        return;
    }
    if target < wanted {
        log::warn!(
            "open files limit is {target} (hard limit), below the {wanted} that max_connections              needs: expect accept failures under full load (raise LimitNOFILE / ulimit -n)"
        );
    }
}

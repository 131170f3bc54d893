//! The composition root: binds the listeners before any thread exists (so the process can
//! still daemonize), opens the store after daemonizing and dropping privileges, then builds
//! the runtime, wires node, cluster and listeners, serves, handles signals and shuts down in
//! order (docs/design.md, "Service integration").

use crate::address::resolve;
use crate::client_threads::ClientThreads;
use crate::cluster::anti_entropy::AntiEntropy;
use crate::cluster::coordinator::{Books, Coordinator};
use crate::cluster::counters::ClusterCounters;
use crate::cluster::handoff;
use crate::cluster::hints::Hints;
use crate::cluster::membership::{Membership, RingShape};
use crate::cluster::peer_handler::PeerHandler;
use crate::cluster::peers::Peers;
use crate::cluster::replica::Replica;
use crate::cluster::rpc::auth::Secret;
use crate::cluster::rpc::client::Pool;
use crate::cluster::rpc::message::PEER_PROTOCOL;
use crate::cluster::rpc::server as rpc_server;
use crate::cluster::rpc::tls::PeerTls;
use crate::cluster::rpc::RpcSettings;
use crate::cluster::upgrade::{self, Upgrade};
use crate::config::{self, Config, Durability, Engine, Loaded};
use crate::daemon::notify;
use crate::memcache::auth::Auth;
use crate::memcache::listener;
use crate::node::{Node, VERSION};
use crate::store;
use crate::store::disk::{self, DiskStore};
use crate::store::memory::MemoryStore;
use crate::store::migrate::{self, Layout};
use crate::store::vlog::{self, LogStore};
use crate::store::Store;
use crate::tls::{Tls, TlsFiles};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How long open client connections get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often expired records are reclaimed in the background.
const PURGE_INTERVAL: Duration = Duration::from_secs(5);
/// How often systemd's STATUS= line is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How often pending hints are offered to owners that are up again.
const HANDOFF_INTERVAL: Duration = Duration::from_secs(1);
/// Descriptors kai needs beyond its client and peer connections: listeners, store files, logs.
const RESERVED_FILES: u64 = 64;

/// A node whose sockets are bound and store is open, not yet serving.
pub struct Prepared {
    config: Config,
    sources: Vec<PathBuf>,
    memcache: std::net::TcpListener,
    rpc: std::net::TcpListener,
    /// This node's identity: the resolved hostname and the rpc port.
    me: SocketAddr,
    /// rpc.listen asked for port 0: the identity changes on every start, so no member
    /// list is persisted (it would name a node that can never come back).
    ephemeral: bool,
    secret: Secret,
    peer_tls: PeerTls,
    /// The memcache TLS listener and its certificates, when `memcache.tls_listen` is set.
    client_tls: Option<(std::net::TcpListener, Arc<Tls>)>,
    /// Client credentials (`memcache.auth_file`), re-read on SIGHUP.
    auth: Arc<Auth>,
    /// The Prometheus listener, when `[metrics] listen` is set.
    metrics: Option<std::net::TcpListener>,
    /// The `--config` path, re-read on SIGHUP (None: the default path or embedded defaults).
    config_path: Option<PathBuf>,
    threads: usize,
}

/// Binds the listeners and opens the store. Runs no thread, so it may precede a fork.
pub fn prepare(loaded: Loaded, config_path: Option<PathBuf>) -> anyhow::Result<Prepared> {
    let Loaded {
        config,
        sources,
        warnings,
    } = loaded;
    for warning in &warnings {
        log::warn!("{warning}");
    }
    raise_open_files_limit(
        u64::from(config.memcache.max_connections) + u64::from(config.rpc.max_connections),
    );
    let listen = &config.memcache.listen;
    let memcache = bind("memcache.listen", listen)?;
    let mut config = config;
    let rpc_listen = &config.rpc.listen;
    let rpc = bind("rpc.listen", rpc_listen)?;
    let rpc_port = rpc.local_addr()?.port();
    let ephemeral = matches!(config.rpc.listen.rsplit_once(':'), Some((_, "0")));
    if let Some((host, "0")) = config.rpc.listen.rsplit_once(':') {
        // An ephemeral port (tests): the identity is the port actually bound.
        config.rpc.listen = format!("{host}:{rpc_port}");
    }
    let me = resolve(&format!("{}:{rpc_port}", config.node.hostname))
        .map_err(|e| anyhow::anyhow!("node.hostname: {e}"))?;
    let secret = cluster_secret(&config)?;
    let peer_tls =
        PeerTls::from_config(&config.rpc).map_err(|e| anyhow::anyhow!("rpc TLS: {e}"))?;
    let client_tls = match config.memcache.tls_listen.as_str() {
        "" => None,
        listen => {
            let listener = bind("memcache.tls_listen", listen)?;
            let memcache = &config.memcache;
            let tls = Tls::for_clients(TlsFiles {
                cert: memcache.tls_cert.clone(),
                key: memcache.tls_key.clone(),
                ca: (!memcache.tls_ca.as_os_str().is_empty()).then(|| memcache.tls_ca.clone()),
            })
            .map_err(|e| anyhow::anyhow!("memcache TLS: {e}"))?;
            Some((listener, Arc::new(tls)))
        }
    };
    let auth = Arc::new(Auth::load(&config.memcache.auth_file)?);
    let metrics = match config.metrics.listen.as_str() {
        "" => None,
        listen => Some(bind("metrics.listen", listen)?),
    };
    let data_dir = &config.node.data_dir;
    if config.store.engine == Engine::Memory
        && nix::unistd::access(data_dir, nix::unistd::AccessFlags::W_OK).is_err()
    {
        // The memory engine runs anyway (so the embedded defaults work as any user).
        log::warn!(
            "node.data_dir {} is not writable: nothing will be persisted",
            data_dir.display()
        );
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    Ok(Prepared {
        config,
        sources,
        memcache,
        rpc,
        me,
        ephemeral,
        secret,
        peer_tls,
        client_tls,
        auth,
        metrics,
        config_path,
        threads,
    })
}

/// A non-blocking listener on `listen`; the error names the config key.
fn bind(key: &str, listen: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {key} {listen}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Opens the store. Runs after daemonizing and dropping privileges: the disk engine starts
/// a committer thread (which a fork would lose) and creates files the service user owns.
pub fn open_store(prepared: &Prepared) -> anyhow::Result<Arc<dyn Store>> {
    let config = &prepared.config;
    let data_dir = &config.node.data_dir;
    let buckets = config.cluster.buckets;
    Ok(match config.store.engine {
        Engine::Memory => Arc::new(MemoryStore::new(config.store.memory_limit.0, buckets)),
        Engine::Disk => {
            let started = std::time::Instant::now();
            let durability = match config.store.durability {
                Durability::Fsync => store::Durability::Fsync,
                Durability::Periodic => store::Durability::Periodic,
            };
            let flush = config.store.flush_interval.0;
            let finalized = Upgrade::load(Some(data_dir.join("upgrade"))).formats_final();
            let layout = migrate::layout(data_dir);
            if layout != Layout::Log && !finalized {
                // Until the upgrade is finalised the previous release must be able to take
                // this data directory back.
                let store = DiskStore::open(data_dir, durability, flush, buckets)
                    .context("store.engine = \"disk\"")?;
                log::info!(
                    "disk store {} (release 0.1.0's format until `kai cluster finalize`; the value log takes over at the first start after it) opened in {} ms ({} items)",
                    data_dir.join(disk::FILE_NAME).display(),
                    started.elapsed().as_millis(),
                    store.stats().items
                );
                return Ok(Arc::new(store));
            }
            if layout != Layout::Log {
                let moved = migrate::redb_to_log(data_dir, buckets).with_context(|| {
                    format!(
                        "store.engine = \"disk\": moving {} to the value log",
                        data_dir.join(disk::FILE_NAME).display()
                    )
                })?;
                log::info!(
                    "disk store: {moved} keys moved from {} to the value log in {} ms",
                    disk::FILE_NAME,
                    started.elapsed().as_millis()
                );
            }
            let settings = vlog::Settings::new(durability, flush, buckets);
            let store = LogStore::open(data_dir, settings).context("store.engine = \"disk\"")?;
            log::info!(
                "disk store {} opened in {} ms ({} items)",
                data_dir.join(vlog::DIR_NAME).display(),
                started.elapsed().as_millis(),
                store.stats().items
            );
            Arc::new(store)
        }
    })
}

/// Builds the runtime and the client threads and serves until SIGTERM or SIGINT.
pub fn run(prepared: Prepared, store: Arc<dyn Store>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(prepared.threads)
        .thread_name("kai-worker")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let clients = ClientThreads::start(prepared.threads).context("cannot start client threads")?;
    let clients = Arc::new(clients);
    let served = runtime.block_on(serve(prepared, store, Arc::clone(&clients)));
    // Connections still open past the shutdown grace end here; the last closes the store.
    clients.stop();
    served
}

async fn serve(
    prepared: Prepared,
    store: Arc<dyn Store>,
    client_threads: Arc<ClientThreads>,
) -> anyhow::Result<()> {
    let Prepared {
        config,
        sources,
        threads,
        memcache,
        rpc,
        me,
        ephemeral,
        secret,
        peer_tls,
        client_tls,
        auth,
        metrics,
        config_path,
    } = prepared;
    let node = Arc::new(Node::new(config, sources, threads, store));
    // Handlers first: a signal that arrives once the node is up must never hit the default
    // disposition (which would kill the process without a clean shutdown).
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let listener = tokio::net::TcpListener::from_std(memcache)?;
    let address = listener.local_addr()?;
    let config = node.config();
    let sources = config_path.as_ref().map_or_else(
        || "embedded defaults or /etc/kai/kai.toml".to_string(),
        |p| p.display().to_string(),
    );
    log::info!(
        "kai {VERSION} serving memcache on {address} (engine {}, config {sources}, pid {})",
        config.store.engine.name(),
        std::process::id(),
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let certificates = Certificates {
        peers: peer_tls.tls().cloned(),
        clients: client_tls.as_ref().map(|(_, tls)| Arc::clone(tls)),
    };
    let cluster = start_cluster(
        &node,
        (rpc, Arc::clone(&client_threads)),
        (me, ephemeral),
        (secret, peer_tls),
        shutdown_rx.clone(),
    )?;
    if let Some(metrics) = metrics {
        let metrics = tokio::net::TcpListener::from_std(metrics)?;
        log::info!("serving metrics on {}", metrics.local_addr()?);
        tokio::spawn(crate::metrics::serve(
            metrics,
            Arc::clone(&node),
            shutdown_rx.clone(),
        ));
    }
    let background = [
        tokio::spawn(purge_expired(Arc::clone(&node))),
        tokio::spawn(report_status(Arc::clone(&node))),
        tokio::spawn(pet_watchdog(Arc::clone(&client_threads))),
    ];
    let mut clients = vec![tokio::spawn(listener::serve(
        listener,
        None,
        Arc::clone(&client_threads),
        Arc::clone(&node),
        Arc::clone(&auth),
        shutdown_rx.clone(),
        SHUTDOWN_GRACE,
    ))];
    if let Some((tls_listener, tls)) = client_tls {
        let tls_listener = tokio::net::TcpListener::from_std(tls_listener)?;
        log::info!(
            "serving memcache over TLS on {} (certificate {})",
            tls_listener.local_addr()?,
            tls.files().cert.display()
        );
        clients.push(tokio::spawn(listener::serve(
            tls_listener,
            Some(tls),
            client_threads,
            Arc::clone(&node),
            Arc::clone(&auth),
            shutdown_rx,
            SHUTDOWN_GRACE,
        )));
    }
    notify::ready(&status_line(&node));

    let name = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => reload(&node, &auth, &certificates, config_path.as_deref()),
        }
    };
    notify::stopping();
    log::info!("{name} received: shutting down");
    let membership = cluster.coordinator.membership();
    if membership.active().len() > 1 {
        // Members route around this node before it stops; meanwhile it keeps serving.
        membership.depart();
        let grace = (2 * node.config().cluster.gossip_interval.0).clamp(DEPART_MIN, DEPART_MAX);
        tokio::time::sleep(grace).await;
    }
    let _ = shutdown_tx.send(true);
    // Clients first (in-flight requests still reach peers), then the cluster's workers in
    // order, then the hints they may have added; the store flushes when it is dropped.
    for listener in clients {
        let _ = listener.await;
    }
    for (name, task) in cluster.workers {
        if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
            log::warn!("{name} did not stop within {SHUTDOWN_GRACE:?}");
        }
    }
    cluster.coordinator.hints().persist();
    // A member-list write still queued on the blocking pool would be dropped with it.
    membership.persist();
    for task in background {
        task.abort();
    }
    log::info!("kai stopped");
    Ok(())
}

/// The cluster secret: required once this node listens or reaches peers beyond loopback.
fn cluster_secret(config: &Config) -> anyhow::Result<Secret> {
    let path = &config.rpc.secret_file;
    if path.exists() {
        return Secret::load(path).map_err(|e| anyhow::anyhow!("rpc.secret_file: {e}"));
    }
    let outside: Vec<&str> = std::iter::once(config.rpc.listen.as_str())
        .chain(config.cluster.seeds.iter().map(String::as_str))
        .filter(|address| !resolve(address).is_ok_and(|a| a.ip().is_loopback()))
        .collect();
    if !outside.is_empty() {
        anyhow::bail!(
            "rpc.secret_file {} does not exist, but {} is not on loopback: create the secret \
             (e.g. `head -c 32 /dev/urandom | base64 > {0}; chmod 0600 {0}`) on every node",
            path.display(),
            outside.join(", ")
        );
    }
    Ok(Secret::none())
}

fn data_file(config: &Config, name: &str) -> Option<PathBuf> {
    let dir = &config.node.data_dir;
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
        .is_ok()
        .then(|| dir.join(name))
}

/// The running cluster: its coordinator and its background workers, stopped in this order.
struct RunningCluster {
    coordinator: Arc<Coordinator>,
    workers: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
}

/// How long a stopping node keeps serving after telling the members it goes down.
const DEPART_MIN: Duration = Duration::from_millis(500);
const DEPART_MAX: Duration = Duration::from_secs(5);

/// Starts the rpc server (its sessions on the client threads), membership and failure
/// detection, the coordinator, hinted handoff and anti-entropy, then contacts the seeds.
fn start_cluster(
    node: &Arc<Node>,
    (rpc, client_threads): (std::net::TcpListener, Arc<ClientThreads>),
    (me, ephemeral): (SocketAddr, bool),
    (secret, tls): (Secret, PeerTls),
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<RunningCluster> {
    let config = node.config();
    let rpc = tokio::net::TcpListener::from_std(rpc)?;
    let proof = match secret.is_empty() {
        true => "without a cluster secret (loopback only)",
        false => "peers authenticated with the cluster secret",
    };
    let encryption = match tls.tls() {
        None => String::new(),
        Some(setup) => format!(
            ", TLS {} (certificate {}, CA {})",
            tls.name(),
            setup.files().cert.display(),
            config.rpc.tls_ca.display()
        ),
    };
    log::info!("rpc on {me}, {proof}{encryption}");
    let clock = Arc::clone(node.clock());
    let upgrade = Arc::new(Upgrade::load(
        data_file(&config, "upgrade").filter(|_| !ephemeral),
    ));
    let store = node.local_store();
    upgrade.on_finalize(move |protocol| store.set_record_format(upgrade::record_format(protocol)));
    let settings = Arc::new(RpcSettings {
        secret,
        cluster: config.cluster.name.clone(),
        node: me.to_string(),
        timeout: config.rpc.timeout.0,
        max_connections: config.rpc.max_connections as usize,
        bind: Some(me.ip()),
        clock: Arc::clone(&clock),
        max_clock_skew: config.cluster.max_clock_skew.0,
        upgrade: Arc::clone(&upgrade),
        tls,
    });
    let peers = Peers::new(Arc::new(Pool::new(Arc::clone(&settings))));
    let gossip = config.cluster.gossip_interval.0;
    let shape = RingShape {
        virtual_nodes: config.cluster.virtual_nodes.min(u32::from(u16::MAX)) as u16,
        buckets: config.cluster.buckets,
        replicas: config.cluster.quorum.n as usize,
    };
    let membership = Membership::open(
        me,
        config.node.zone_name(),
        shape,
        data_file(&config, "members").filter(|_| !ephemeral),
    );
    let counters = Arc::new(ClusterCounters::default());
    let replica = Arc::new(Replica::new(
        node.local_store(),
        config.cluster.max_siblings as usize,
        config.cluster.tombstone_grace.0,
        Arc::clone(&counters),
        clock,
    ));
    let hints = Arc::new(Hints::load(data_file(&config, "hints")));
    let (files, hinted) = (Arc::clone(&membership), Arc::clone(&hints));
    upgrade.on_finalize(move |protocol| {
        if protocol >= PEER_PROTOCOL {
            files.write_final_format();
            hinted.write_final_format();
        }
    });
    let coordinator = Coordinator::new(
        node.id(),
        Arc::clone(&membership),
        peers.clone(),
        replica,
        config.cluster.quorum,
        Books {
            hints,
            counters,
            upgrade,
        },
    );
    node.attach_cluster(Arc::clone(&coordinator));
    let flushing = Arc::clone(node);
    let handler = Arc::new(PeerHandler::new(
        Arc::clone(&coordinator),
        Box::new(move |delay| flushing.flush_from_peer(delay)),
    ));
    let detection = membership.start_detection(peers, gossip, shutdown.clone());
    let anti_entropy = AntiEntropy::new(
        Arc::clone(&coordinator),
        node.local_store(),
        config.cluster.sync_rate.0,
    );
    let workers = vec![
        (
            "anti-entropy",
            tokio::spawn(
                anti_entropy.run(
                    config.cluster.sync_interval.0,
                    data_file(&config, crate::store::backup::RESTORED_MARK)
                        .filter(|mark| mark.exists()),
                    shutdown.clone(),
                ),
            ),
        ),
        (
            "hinted handoff",
            tokio::spawn(handoff::run(
                Arc::clone(&coordinator),
                HANDOFF_INTERVAL,
                shutdown.clone(),
            )),
        ),
        (
            "version watch",
            tokio::spawn(Arc::clone(&coordinator).watch_versions(gossip, shutdown.clone())),
        ),
        ("member exchange", detection.exchange),
        ("failure detection", detection.swim),
    ];
    tokio::spawn(rpc_server::serve(rpc, settings, handler, client_threads));
    let seeds: Vec<String> = (config.cluster.seeds.iter())
        .filter(|seed| !resolve(seed).is_ok_and(|a| a == me))
        .cloned()
        .collect();
    if !seeds.is_empty() {
        membership.expect_cluster();
    }
    for seed in seeds {
        let coordinator = Arc::clone(&coordinator);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut last_warning: Option<std::time::Instant> = None;
            // Until the seed answers once; afterwards member exchange keeps us in touch.
            loop {
                match coordinator.join(&seed).await {
                    Ok(()) => {
                        log::info!("joined the cluster through seed {seed}");
                        return;
                    }
                    Err(err) if coordinator.membership().is_awaiting_join() => {
                        // Loud while it lasts: clients get SERVER_ERROR meanwhile.
                        if last_warning.is_none_or(|t| t.elapsed() >= NOT_JOINED_WARNING) {
                            last_warning = Some(std::time::Instant::now());
                            log::warn!(
                                "not joined: seed {seed}: {err}; client requests are refused \
                                 until a seed answers"
                            );
                        }
                    }
                    Err(err) => log::debug!("seed {seed}: {err}"),
                }
                tokio::select! {
                    () = tokio::time::sleep(gossip) => {}
                    () = crate::shutdown::requested(&mut shutdown) => return,
                }
            }
        });
    }
    Ok(RunningCluster {
        coordinator,
        workers,
    })
}

/// How often a node that has not joined repeats its warning.
const NOT_JOINED_WARNING: Duration = Duration::from_secs(30);

/// The TLS setups SIGHUP re-reads.
struct Certificates {
    peers: Option<Arc<Tls>>,
    clients: Option<Arc<Tls>>,
}

impl Certificates {
    fn reload(&self) {
        for (what, tls) in [("rpc", &self.peers), ("memcache", &self.clients)] {
            let Some(tls) = tls else { continue };
            match tls.reload() {
                Ok(()) => log::info!(
                    "{what} TLS certificate {} re-read",
                    tls.files().cert.display()
                ),
                Err(e) => log::error!("{what} TLS: {e}; keeping the running certificates"),
            }
        }
    }
}

/// SIGHUP: re-read the configuration and the TLS certificates; apply what can change live,
/// keep the rest (and the whole running configuration when the new one is invalid).
fn reload(node: &Node, auth: &Auth, certificates: &Certificates, path: Option<&std::path::Path>) {
    notify::reloading();
    certificates.reload();
    match config::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                log::warn!("{warning}");
            }
            let level = loaded.config.log.level;
            let pending = node.reload(loaded.config, loaded.sources);
            crate::logging::set_level(level.filter());
            let auth_file = node.config().memcache.auth_file.clone();
            match auth.reload(&auth_file) {
                Ok(()) if auth.enabled() => log::info!("client credentials re-read"),
                Ok(()) => {}
                Err(e) => log::error!("{e}; keeping the running client credentials"),
            }
            log::info!(
                "configuration reloaded (log level, connection and item limits, \
                 conflict_resolution applied)"
            );
            if !pending.is_empty() {
                log::warn!(
                    "changes to {} take effect after a restart",
                    pending.join(", ")
                );
            }
        }
        Err(e) => log::error!("configuration reload failed, keeping the running one: {e}"),
    }
    notify::ready(&status_line(node));
}

fn status_line(node: &Node) -> String {
    if node.is_awaiting_join() {
        return "not joined: waiting for a seed to answer; client requests refused".into();
    }
    format!(
        "{} items, {} client connections, {} members up",
        node.curr_items(),
        node.counters().curr_connections.get(),
        node.members_up().len()
    )
}

async fn report_status(node: Arc<Node>) {
    if !notify::under_systemd() {
        return;
    }
    let mut ticks = tokio::time::interval(STATUS_INTERVAL);
    loop {
        ticks.tick().await;
        notify::status(&status_line(&node));
    }
}

/// Pets systemd's watchdog from the event loop once every client thread has run a task
/// too: if the runtime or a client thread wedges, the petting stops and systemd restarts
/// the service.
async fn pet_watchdog(client_threads: Arc<ClientThreads>) {
    let Some(interval) = notify::watchdog_interval() else {
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    let mut wedged = false;
    loop {
        ticks.tick().await;
        if client_threads.responsive(interval).await {
            notify::watchdog();
            if wedged {
                wedged = false;
                log::warn!("every client thread runs again: petting the watchdog");
            }
        } else if !wedged {
            wedged = true;
            log::error!(
                "a client thread has not run for {interval:?}: no longer petting the watchdog"
            );
        }
    }
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
    // Root may raise the hard limit too; others stop at it.
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard)).is_ok() {
        return;
    }
    let target = wanted.min(hard);
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        log::warn!("cannot raise the open files limit from {soft} to {target}: {e}");
        return;
    }
    log::warn!(
        "open files limit is {target} (the hard limit), below the {wanted} that the connection \
         limits need: expect accept failures under full load (raise LimitNOFILE / ulimit -n)"
    );
}

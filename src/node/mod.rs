//! The facade the protocol layer calls: one method per memcached operation.
//!
//! `Node` turns client commands into versioned records (vector clock, timestamp, expiry),
//! keeps the stats counters and answers `stats`. Today it serves every key from the local
//! store; the cluster coordinator slots in underneath without changing this interface, which
//! is why every operation is async and can fail with a `NodeError`.

pub mod ops;

use crate::cluster::coordinator::Cluster;
use crate::cluster::rpc::message::{Request, Response};
use crate::cluster::rpc::server::{Handler, Immediate};
use crate::config::{Config, ConflictResolution};
use crate::memcache::parse::{StatsSection, StoreMode, RELATIVE_EXPTIME_LIMIT};
use crate::stats::{self, Counters, Unreconciled};
use crate::store::{Change, Record, Store, Versions};
use crate::version::{unix_now, NodeId};
use bytes::Bytes;
use md5::{Digest, Md5};
pub use ops::{ArithOutcome, Outcome, StoreOutcome, WriteOp};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// What `version` and the `version` stat report: the memcached release whose protocol kai
/// follows, then kai's own version. Clients (libmemcached among them) read the leading
/// "1.6" to decide which protocol behaviour to expect.
pub const PROTOCOL_VERSION: &str = concat!("1.6.18-kai-", env!("CARGO_PKG_VERSION"));

/// A request the node could not serve; the client sees `SERVER_ERROR <reason>`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NodeError(pub String);

/// A value as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub value: Bytes,
    pub flags: u32,
    pub cas: u64,
}

pub struct Node {
    id: NodeId,
    /// "host:port" of this node's rpc address: its identity in the cluster.
    address: String,
    /// The running configuration; SIGHUP swaps in a new one (live keys only).
    config: RwLock<Arc<Config>>,
    /// Bumped on every reload, so connections notice new limits with one atomic load.
    config_generation: AtomicU64,
    config_sources: RwLock<Vec<PathBuf>>,
    worker_threads: usize,
    store: Arc<dyn Store>,
    cluster: OnceLock<Arc<Cluster>>,
    counters: Counters,
    unreconciled: Unreconciled,
    started: Instant,
    /// Bumped by every `flush_all`, so a delayed flush superseded by a newer one does nothing.
    flush_generation: AtomicU64,
    /// conflict_resolution = "siblings", read by every get without touching the config lock.
    siblings_mode: AtomicBool,
}

/// memcached's exptime rule: 0 never expires, negative is already expired, up to 30 days is
/// relative, anything larger is an absolute Unix time.
pub fn expiry(exptime: i64, now_secs: u64) -> u64 {
    match exptime {
        0 => 0,
        e if e < 0 => 1,
        e if e <= RELATIVE_EXPTIME_LIMIT => now_secs + e as u64,
        e => e as u64,
    }
}

fn item(record: &Record) -> Item {
    Item {
        value: record.value.clone(),
        flags: record.flags,
        cas: ops::cas_unique(record),
    }
}

impl Node {
    /// A node over `store` (opened by the caller, which knows how to report its errors).
    pub fn new(
        config: Config,
        config_sources: Vec<PathBuf>,
        worker_threads: usize,
        store: Arc<dyn Store>,
    ) -> Self {
        let port = config
            .rpc
            .listen
            .rsplit_once(':')
            .map_or("11011", |(_, p)| p);
        let address = format!("{}:{}", config.node.hostname, port);
        let id = u64::from_be_bytes(
            Md5::digest(address.as_bytes())[..8]
                .try_into()
                .expect("md5 is 16 bytes"),
        );
        let siblings = config.cluster.conflict_resolution == ConflictResolution::Siblings;
        Node {
            id,
            address,
            unreconciled: Unreconciled::new(config.cluster.quorum.n),
            config: RwLock::new(Arc::new(config)),
            config_generation: AtomicU64::new(0),
            config_sources: RwLock::new(config_sources),
            worker_threads,
            store,
            cluster: OnceLock::new(),
            counters: Counters::default(),
            started: Instant::now(),
            flush_generation: AtomicU64::new(0),
            siblings_mode: AtomicBool::new(siblings),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn config_generation(&self) -> u64 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// Applies the keys that can change while running (log level, connection and item
    /// limits, idle timeout) from a re-read configuration. Returns the sections whose other
    /// changes wait for a restart.
    pub fn reload(&self, mut new: Config, sources: Vec<PathBuf>) -> Vec<&'static str> {
        let current = self.config();
        if new.rpc.listen.ends_with(":0") {
            // Port 0 was resolved at start; the same file asks for no change.
            new.rpc.listen.clone_from(&current.rpc.listen);
        }
        let mut next = (*current).clone();
        next.log.level = new.log.level;
        next.memcache.max_connections = new.memcache.max_connections;
        next.memcache.max_item_size = new.memcache.max_item_size;
        next.memcache.idle_timeout = new.memcache.idle_timeout;
        next.memcache.request_timeout = new.memcache.request_timeout;
        next.cluster.conflict_resolution = new.cluster.conflict_resolution;
        self.siblings_mode.store(
            new.cluster.conflict_resolution == ConflictResolution::Siblings,
            Ordering::Relaxed,
        );
        let pending = [
            ("node", next.node != new.node),
            ("memcache.listen", next.memcache != new.memcache),
            ("rpc", next.rpc != new.rpc),
            ("cluster", next.cluster != new.cluster),
            ("store", next.store != new.store),
            ("log", next.log != new.log),
            ("metrics", next.metrics != new.metrics),
            ("daemon", next.daemon != new.daemon),
        ];
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        *self
            .config_sources
            .write()
            .unwrap_or_else(|p| p.into_inner()) = sources;
        self.config_generation.fetch_add(1, Ordering::Release);
        pending
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(name, _)| name)
            .collect()
    }

    fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get().filter(|c| c.is_clustered())
    }

    /// Attaches the cluster once the rpc listener is up; until then, and while this node is
    /// its only member, every key is served from the local store.
    pub fn attach_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn store_handle(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Reads every version of `key`: from the replicas' quorum in a cluster, else locally.
    async fn read(&self, key: &[u8]) -> Result<Option<Versions>, NodeError> {
        match self.cluster() {
            Some(cluster) => {
                let read = cluster.read(key).await?;
                self.unreconciled.record(read.gathered, read.kept);
                Ok(read.versions)
            }
            None => Ok(self.store.get(key, unix_now().as_secs())),
        }
    }

    /// Runs a write: through the coordinator in a cluster, else atomically on the local
    /// store (where a delete needs no tombstone: there is no replica to resurrect it).
    async fn write(&self, key: &[u8], op: WriteOp) -> Result<Outcome, NodeError> {
        if let Some(cluster) = self.cluster() {
            return cluster.write(key, op).await;
        }
        let wall = unix_now();
        let now = wall.as_secs();
        let mut outcome = Outcome::Deleted(false);
        let commit = self.store.update(key, now, &mut |current| {
            let (new, decided) = ops::decide(&op, current);
            outcome = decided;
            match new {
                None => Change::Keep,
                Some(new) if new.tombstone => Change::Remove,
                Some(new) => {
                    let base = current.map(Versions::merged_clock).unwrap_or_default();
                    let record = ops::version(new, &base, self.id, wall);
                    if let Outcome::Touched(touched) = &mut outcome {
                        *touched = Some(record.clone());
                    }
                    Change::Put(Versions::one(record))
                }
            }
        });
        commit
            .wait()
            .await
            .map_err(|e| NodeError(format!("store: {e}")))?;
        Ok(outcome)
    }

    /// `get`/`gets`, or with `touch` set `gat`/`gats`. Several items only with siblings
    /// under `conflict_resolution = "siblings"`.
    pub async fn get(&self, key: &[u8], touch: Option<i64>) -> Result<Vec<Item>, NodeError> {
        let now = unix_now().as_secs();
        let found = match touch {
            None => {
                let versions = self.read(key).await?;
                let live = versions.iter().flat_map(|v| v.live());
                if self.siblings_mode.load(Ordering::Relaxed) {
                    live.map(item).collect()
                } else {
                    crate::version::newest_of(live)
                        .map(item)
                        .into_iter()
                        .collect()
                }
            }
            Some(exptime) => {
                self.counters.cmd_touch.add(1);
                let op = WriteOp::Touch {
                    expires_at: expiry(exptime, now),
                };
                let touched = match self.write(key, op).await? {
                    Outcome::Touched(Some(record)) => vec![item(&record)],
                    _ => Vec::new(),
                };
                let (hit, miss) = (&self.counters.touch_hits, &self.counters.touch_misses);
                (if touched.is_empty() { miss } else { hit }).add(1);
                touched
            }
        };
        if found.is_empty() {
            self.counters.get_misses.add(1);
        }
        for item in &found {
            self.counters.get_hits.add(1);
            self.counters.cmd_get.add(1);
            self.counters.bytes_read.add(item.value.len() as u64);
        }
        Ok(found)
    }

    /// The storage commands: set, add, replace, append, prepend, cas.
    pub async fn store(
        &self,
        mode: StoreMode,
        key: &[u8],
        flags: u32,
        exptime: i64,
        data: &[u8],
    ) -> Result<StoreOutcome, NodeError> {
        let op = WriteOp::Store {
            mode,
            flags,
            expires_at: expiry(exptime, unix_now().as_secs()),
            data: Bytes::copy_from_slice(data),
        };
        let Outcome::Store(outcome) = self.write(key, op).await? else {
            return Err(NodeError("unexpected reply to a store".into()));
        };
        let counters = &self.counters;
        match (mode, outcome) {
            (StoreMode::Cas(_), StoreOutcome::Stored) => counters.cas_hits.add(1),
            (StoreMode::Cas(_), StoreOutcome::Exists) => counters.cas_badval.add(1),
            (StoreMode::Cas(_), StoreOutcome::NotFound) => counters.cas_misses.add(1),
            _ => {}
        }
        if outcome == StoreOutcome::Stored {
            counters.cmd_set.add(1);
            counters.total_items.add(1);
            counters.bytes_write.add(data.len() as u64);
        }
        Ok(outcome)
    }

    /// Drops `key` after a refused `set`, as memcached does, so a stale value cannot be read.
    pub async fn unlink(&self, key: &[u8]) -> Result<(), NodeError> {
        self.write(key, WriteOp::Delete).await.map(|_| ())
    }

    pub async fn delete(&self, key: &[u8]) -> Result<bool, NodeError> {
        let found = matches!(
            self.write(key, WriteOp::Delete).await?,
            Outcome::Deleted(true)
        );
        let (hit, miss) = (&self.counters.delete_hits, &self.counters.delete_misses);
        (if found { hit } else { miss }).add(1);
        Ok(found)
    }

    /// incr (wrapping at 2^64) and decr (stopping at 0).
    pub async fn arith(
        &self,
        key: &[u8],
        incr: bool,
        delta: u64,
    ) -> Result<ArithOutcome, NodeError> {
        let Outcome::Arith(outcome) = self.write(key, WriteOp::Arith { incr, delta }).await? else {
            return Err(NodeError("unexpected reply to incr/decr".into()));
        };
        let counters = &self.counters;
        let (hit, miss) = if incr {
            (&counters.incr_hits, &counters.incr_misses)
        } else {
            (&counters.decr_hits, &counters.decr_misses)
        };
        match outcome {
            ArithOutcome::Value(_) => hit.add(1),
            ArithOutcome::NotFound => miss.add(1),
            ArithOutcome::NonNumeric => {}
        }
        Ok(outcome)
    }

    pub async fn touch(&self, key: &[u8], exptime: i64) -> Result<bool, NodeError> {
        let op = WriteOp::Touch {
            expires_at: expiry(exptime, unix_now().as_secs()),
        };
        let found = matches!(self.write(key, op).await?, Outcome::Touched(Some(_)));
        self.counters.cmd_touch.add(1);
        let (hit, miss) = (&self.counters.touch_hits, &self.counters.touch_misses);
        (if found { hit } else { miss }).add(1);
        Ok(found)
    }

    /// `flush_all [delay]`: everything stored before the deadline is dropped at the deadline;
    /// a later flush_all replaces a pending one.
    pub fn flush_all(self: &Arc<Self>, delay: i64) {
        self.counters.cmd_flush.add(1);
        if let Some(cluster) = self.cluster() {
            cluster.broadcast_flush(delay);
        }
        self.flush_local(delay);
    }

    fn flush_local(self: &Arc<Self>, delay: i64) {
        let generation = self.flush_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let now = unix_now().as_secs();
        let deadline = if delay <= 0 { 0 } else { expiry(delay, now) };
        if deadline <= now {
            self.store.clear();
            return;
        }
        let node = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(deadline - now)).await;
            if node.flush_generation.load(Ordering::SeqCst) == generation {
                node.store.clear();
            }
        });
    }

    /// Drops expired records; run periodically off the request path.
    pub fn purge_expired(&self) -> u64 {
        self.store.purge_expired(unix_now().as_secs())
    }

    pub fn curr_items(&self) -> u64 {
        self.store.stats().items
    }

    /// Members seen up, as `host:port`, sorted.
    pub fn members_up(&self) -> Vec<String> {
        match self.cluster.get() {
            Some(cluster) => (cluster.membership().up().iter())
                .map(ToString::to_string)
                .collect(),
            None => vec![self.address.clone()],
        }
    }

    /// Members in the ring, as `host:port`, sorted.
    pub fn members(&self) -> Vec<String> {
        match self.cluster.get() {
            Some(cluster) => (cluster.membership().active().iter())
                .map(ToString::to_string)
                .collect(),
            None => vec![self.address.clone()],
        }
    }

    pub fn stats(&self, section: StatsSection) -> Vec<(&'static str, String)> {
        match section {
            StatsSection::General => self.general_stats(),
            StatsSection::Settings => self.settings_stats(),
            StatsSection::Kai => self.kai_stats(),
            StatsSection::Cluster => self.cluster_stats(),
        }
    }

    fn general_stats(&self) -> Vec<(&'static str, String)> {
        let c = &self.counters;
        let read = |counter: &crate::stats::Counter| counter.get().to_string();
        let store = self.store.stats();
        let (user, system) = stats::rusage();
        let mut out = vec![
            ("uptime", self.started.elapsed().as_secs().to_string()),
            ("time", unix_now().as_secs().to_string()),
            ("version", PROTOCOL_VERSION.to_string()),
            ("pid", std::process::id().to_string()),
            ("pointer_size", (usize::BITS).to_string()),
            ("rusage_user", user),
            ("rusage_system", system),
            (
                "max_connections",
                self.config().memcache.max_connections.to_string(),
            ),
            ("curr_connections", read(&c.curr_connections)),
            ("total_connections", read(&c.total_connections)),
            ("rejected_connections", read(&c.rejected_connections)),
            ("threads", self.worker_threads.to_string()),
            ("bytes", store.bytes.to_string()),
            ("curr_items", store.items.to_string()),
            ("total_items", read(&c.total_items)),
            ("cmd_get", read(&c.cmd_get)),
            ("cmd_set", read(&c.cmd_set)),
            ("cmd_touch", read(&c.cmd_touch)),
            ("cmd_flush", read(&c.cmd_flush)),
            ("get_hits", read(&c.get_hits)),
            ("get_misses", read(&c.get_misses)),
            ("delete_hits", read(&c.delete_hits)),
            ("delete_misses", read(&c.delete_misses)),
            ("cas_hits", read(&c.cas_hits)),
            ("cas_misses", read(&c.cas_misses)),
            ("cas_badval", read(&c.cas_badval)),
            ("incr_hits", read(&c.incr_hits)),
            ("incr_misses", read(&c.incr_misses)),
            ("decr_hits", read(&c.decr_hits)),
            ("decr_misses", read(&c.decr_misses)),
            ("touch_hits", read(&c.touch_hits)),
            ("touch_misses", read(&c.touch_misses)),
            ("evictions", store.evictions.to_string()),
            ("limit_maxbytes", store.limit_bytes.to_string()),
            ("bytes_read", read(&c.bytes_read)),
            ("bytes_write", read(&c.bytes_write)),
        ];
        out.extend(self.kai_stats());
        let metrics = tokio::runtime::Handle::try_current().map(|h| h.metrics());
        out.push((
            "runtime_tasks",
            metrics.map_or(0, |m| m.num_alive_tasks()).to_string(),
        ));
        out.push(("runtime_version", env!("KAI_RUNTIME_VERSION").to_string()));
        out
    }

    /// One `STAT member <host:port> <state> buckets=<owned> hints=<pending> [self]` per member.
    fn cluster_stats(&self) -> Vec<(&'static str, String)> {
        match self.cluster.get() {
            Some(cluster) => cluster
                .status()
                .into_iter()
                .map(|line| ("member", line))
                .collect(),
            None => vec![(
                "member",
                format!("{} up buckets=0 hints=0 self", self.address),
            )],
        }
    }

    fn kai_stats(&self) -> Vec<(&'static str, String)> {
        let config = self.config();
        let q = config.cluster.quorum;
        let up = self.members_up();
        let members = self.members();
        let digest = Md5::digest(members.join(" ").as_bytes());
        let ring_digest: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let (hinted, repairs, hints) = self.cluster.get().map_or((0, 0, 0), |cluster| {
            (
                cluster.hinted_handoffs.load(Ordering::Relaxed),
                cluster.read_repairs.load(Ordering::Relaxed),
                cluster.hints().total(),
            )
        });
        let sync = |read: fn(&crate::cluster::sync::SyncStats) -> &AtomicU64| {
            (self.cluster.get())
                .map_or(0, |cluster| {
                    read(&cluster.sync_stats).load(Ordering::Relaxed)
                })
                .to_string()
        };
        vec![
            ("kai_version", VERSION.to_string()),
            ("kai_node", self.address.clone()),
            ("kai_quorum", format!("{},{},{}", q.n, q.r, q.w)),
            ("kai_number_of_buckets", config.cluster.buckets.to_string()),
            (
                "kai_number_of_virtual_nodes",
                config.cluster.virtual_nodes.to_string(),
            ),
            ("kai_store", config.store.engine.name().to_string()),
            ("kai_curr_nodes", up.join(" ")),
            ("kai_members", members.len().to_string()),
            ("kai_ring_digest", ring_digest),
            ("kai_unreconciled_get", self.unreconciled.render()),
            ("kai_hinted_handoffs", hinted.to_string()),
            ("kai_pending_hints", hints.to_string()),
            ("kai_read_repairs", repairs.to_string()),
            ("kai_sync_keys", sync(|s| &s.keys)),
            ("kai_sync_bytes", sync(|s| &s.bytes)),
            ("kai_sync_pending_buckets", sync(|s| &s.pending_buckets)),
            ("kai_purged_tombstones", sync(|s| &s.purged_tombstones)),
        ]
    }

    fn settings_stats(&self) -> Vec<(&'static str, String)> {
        let c = self.config();
        let (host, port) = c
            .memcache
            .listen
            .rsplit_once(':')
            .unwrap_or((&c.memcache.listen, ""));
        let files: Vec<String> = (self.config_sources.read())
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let on_off = |on: bool| if on { "on" } else { "off" }.to_string();
        vec![
            ("maxbytes", c.store.memory_limit.0.to_string()),
            ("maxconns", c.memcache.max_connections.to_string()),
            ("tcpport", port.to_string()),
            ("udpport", "0".to_string()),
            ("inter", host.trim_matches(['[', ']']).to_string()),
            ("evictions", on_off(c.store.memory_limit.0 != 0)),
            ("cas_enabled", "yes".to_string()),
            ("num_threads", self.worker_threads.to_string()),
            ("item_size_max", c.memcache.max_item_size.0.to_string()),
            (
                "idle_timeout",
                c.memcache.idle_timeout.0.as_secs().to_string(),
            ),
            ("flush_enabled", "yes".to_string()),
            (
                "kai_config_files",
                if files.is_empty() {
                    "embedded".into()
                } else {
                    files.join(",")
                },
            ),
            ("kai_hostname", c.node.hostname.clone()),
            ("kai_data_dir", c.node.data_dir.display().to_string()),
            ("kai_rpc_listen", c.rpc.listen.clone()),
            ("kai_rpc_timeout", c.rpc.timeout.to_string()),
            ("kai_store_engine", c.store.engine.name().to_string()),
            (
                "kai_conflict_resolution",
                format!("{:?}", c.cluster.conflict_resolution),
            ),
            ("kai_max_siblings", c.cluster.max_siblings.to_string()),
            ("kai_log_level", format!("{:?}", c.log.level).to_lowercase()),
        ]
    }
}

impl Handler for Node {
    fn immediate(&self, body: Request) -> Immediate {
        match self.cluster.get() {
            Some(cluster) => cluster.handle_now(body),
            None => Immediate::Task(body),
        }
    }

    async fn request(self: Arc<Self>, body: Request) -> Response {
        match (body, self.cluster.get()) {
            (Request::Flush { delay }, _) => {
                self.counters.cmd_flush.add(1);
                self.flush_local(delay);
                Response::Done(String::new())
            }
            (body, Some(cluster)) => cluster.handle(body).await,
            (_, None) => Response::Error("the cluster is not started".into()),
        }
    }

    fn swim(&self, data: Bytes) {
        if let Some(cluster) = self.cluster.get() {
            cluster.membership().swim_data(data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exptime_rules() {
        assert_eq!(expiry(0, 1000), 0);
        assert_eq!(expiry(-1, 1000), 1);
        assert_eq!(expiry(10, 1000), 1010);
        assert_eq!(
            expiry(RELATIVE_EXPTIME_LIMIT, 1000),
            1000 + RELATIVE_EXPTIME_LIMIT as u64
        );
        assert_eq!(
            expiry(RELATIVE_EXPTIME_LIMIT + 1, 1000),
            RELATIVE_EXPTIME_LIMIT as u64 + 1
        );
    }
}

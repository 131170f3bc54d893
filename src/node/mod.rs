//! The facade every protocol calls: one method per memcached operation.
//!
//! `Node` turns client commands into the shared operations of `crate::ops`, runs them on the
//! local store (a one-member cluster) or through the quorum coordinator, and keeps the
//! stats counters. Reports (`stats` and its sections) live in `report.rs`, the live
//! configuration and SIGHUP reload in `settings.rs`.

pub mod access;
mod report;
mod settings;

use crate::causality::NodeId;
use crate::cluster::coordinator::Coordinator;
use crate::cluster::error::ClusterError;
use crate::config::{Config, ConflictResolution};
use crate::ops::{self, expiry, StoreMode};
pub use crate::ops::{ArithOutcome, CasGuard, DeleteOutcome, Outcome, StoreOutcome, WriteOp};
use crate::record::{Record, Versions};
use crate::stats::{Clients, Counters, Unreconciled};
use crate::store::{Change, Store, StoreError};
use crate::time::unix_secs;
use bytes::Bytes;
use md5::{Digest, Md5};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

/// kai's own release.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// What `version` and the `version` stat report: the memcached release whose protocol kai
/// follows, then kai's own version. Clients (libmemcached among them) read the leading
/// "1.6" to decide which protocol behaviour to expect.
pub const SERVER_VERSION: &str = concat!("1.6.18-kai-", env!("CARGO_PKG_VERSION"));

/// Which `stats` group a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsSection {
    General,
    Settings,
    Kai,
    /// `stats cluster`: one line per member (what `kai cluster status` shows).
    Cluster,
    /// memcached's slab and LRU groups, as true of kai's engines: one class holding every
    /// item (docs/design.md, "Stats").
    Slabs,
    Items,
    /// Item size histograms, which kai does not keep (memcached's default too).
    Sizes,
    /// One entry per open client connection.
    Conns,
}

impl StatsSection {
    /// The group a `stats <name>` (text) or Stat key (binary) asks for.
    pub fn named(name: &[u8]) -> Option<StatsSection> {
        match name {
            b"settings" => Some(StatsSection::Settings),
            b"kai" => Some(StatsSection::Kai),
            b"cluster" => Some(StatsSection::Cluster),
            b"slabs" => Some(StatsSection::Slabs),
            b"items" => Some(StatsSection::Items),
            b"sizes" => Some(StatsSection::Sizes),
            b"conns" => Some(StatsSection::Conns),
            _ => None,
        }
    }
}

/// A request the node could not serve; the client sees `SERVER_ERROR <reason>`.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Seeds are configured and none has answered: serving alone would acknowledge writes
    /// the cluster never sees (docs/design.md, "Joining").
    #[error("not joined: no seed has answered yet")]
    NotJoined,
    /// A forwarded write came back with the outcome of another kind of operation.
    #[error("unexpected outcome of {0} from its coordinator")]
    UnexpectedOutcome(&'static str),
}

/// A value as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub value: Bytes,
    pub flags: u32,
    pub cas: u64,
    /// Unix seconds; 0 = never.
    pub expires_at: u64,
    /// When the version was written, Unix seconds.
    pub written_secs: u64,
    /// Meta's stale-while-revalidate state (`X`, `Z`).
    pub stale: bool,
    pub recache_claimed: bool,
}

/// A storage command from any protocol.
#[derive(Clone, Copy, Debug)]
pub struct StoreRequest<'a> {
    pub mode: StoreMode,
    pub cas: CasGuard,
    /// Meta `I` with a cas: an older cas stores a stale version (see `ops::WriteOp`).
    pub stale_if_older: bool,
    pub flags: u32,
    pub exptime: i64,
    pub data: &'a [u8],
}

/// What an incr/decr answers: the outcome, and the new version's cas and expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    pub outcome: ArithOutcome,
    pub cas: u64,
    pub expires_at: u64,
}

/// A meta get's options that may change the item (memcached exptime rules for each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetchRequest {
    /// `T`: the new exptime.
    pub touch: Option<i64>,
    /// `N`: on a miss, create an empty placeholder with this exptime.
    pub vivify: Option<i64>,
    /// `R`: win the recache token when the item expires sooner than this exptime.
    pub recache: Option<i64>,
    /// Not `u`: the access counts (hit before, last access).
    pub bump: bool,
    /// `h`, `l`: the access history before this request is wanted.
    pub history: bool,
}

/// What a meta get found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub item: Option<Item>,
    /// `W`: this reader should recache the item.
    pub won: bool,
    /// `Z`: another reader already holds the recache token.
    pub claimed_before: bool,
    /// The access history before this request (when asked for).
    pub history: Option<access::History>,
}

/// What `me` shows of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debug {
    pub item: Item,
    pub history: access::History,
    /// Bytes the version is charged (the `bytes` stat).
    pub size: usize,
    /// Live versions held (more than one only with concurrent writes).
    pub siblings: usize,
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
    cluster: OnceLock<Arc<Coordinator>>,
    counters: Counters,
    clients: Clients,
    accesses: access::AccessLog,
    unreconciled: Unreconciled,
    started: Instant,
    /// Bumped by every `flush_all`, so a delayed flush superseded by a newer one does nothing.
    flush_generation: AtomicU64,
    /// conflict_resolution = "siblings", read by every get without touching the config lock.
    siblings_mode: AtomicBool,
    /// Stamps this node's writes, alone or (shared with the cluster's replica and rpc) as
    /// a coordinator.
    clock: Arc<crate::time::HybridClock>,
}

fn item(record: &Record) -> Item {
    Item {
        value: record.value.clone(),
        flags: record.flags,
        cas: ops::cas_unique(record),
        expires_at: record.expires_at,
        written_secs: record.timestamp / 1_000_000,
        stale: record.stale,
        recache_claimed: record.recache_claimed,
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
            clients: Clients::default(),
            accesses: access::AccessLog::default(),
            started: Instant::now(),
            flush_generation: AtomicU64::new(0),
            siblings_mode: AtomicBool::new(siblings),
            clock: Arc::new(crate::time::HybridClock::new()),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The open client connections (`stats conns`).
    pub fn clients(&self) -> &Clients {
        &self.clients
    }

    pub fn clock(&self) -> &Arc<crate::time::HybridClock> {
        &self.clock
    }

    /// Whether this node waits to join the cluster its seeds name.
    pub fn is_awaiting_join(&self) -> bool {
        (self.cluster.get()).is_some_and(|c| c.membership().is_awaiting_join())
    }

    /// `standalone` (no seeds, alone), `joining` (seeds, none answered) or `joined`.
    pub fn cluster_state(&self) -> &'static str {
        if self.is_awaiting_join() {
            "joining"
        } else if self.cluster().is_some() {
            "joined"
        } else {
            "standalone"
        }
    }

    fn check_joined(&self) -> Result<(), NodeError> {
        if self.is_awaiting_join() {
            return Err(NodeError::NotJoined);
        }
        Ok(())
    }

    fn cluster(&self) -> Option<&Arc<Coordinator>> {
        self.cluster.get().filter(|c| c.is_clustered())
    }

    /// Attaches the coordinator once the rpc listener is up; until then, and while this
    /// node is its only member, every key is served from the local store.
    pub fn attach_cluster(&self, coordinator: Arc<Coordinator>) {
        let _ = self.cluster.set(coordinator);
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The local store (shared with the cluster's replica).
    pub fn local_store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Reads every version of `key`: from the replicas' quorum in a cluster, else locally.
    async fn read(&self, key: &[u8]) -> Result<Option<Versions>, NodeError> {
        self.check_joined()?;
        match self.cluster() {
            Some(cluster) => {
                // Boxed: the quorum's state would otherwise sit in every connection's task,
                // idle or not (see `write`).
                let read = Box::pin(cluster.read(key)).await?;
                self.unreconciled.record(read.gathered, read.kept);
                Ok(read.versions)
            }
            None => Ok(self.store.get(key, unix_secs())),
        }
    }

    /// Runs a write: through the coordinator in a cluster, else atomically on the local
    /// store (where a delete needs no tombstone: there is no replica to resurrect it).
    async fn write(&self, key: &[u8], op: WriteOp) -> Result<Outcome, NodeError> {
        self.check_joined()?;
        if let Some(cluster) = self.cluster() {
            // Boxed, one allocation per clustered write: a connection's task is as large as
            // the largest future it may await, and an idle client costs that much.
            return Ok(Box::pin(cluster.write(key, op)).await?);
        }
        let mut outcome = Outcome::Deleted(DeleteOutcome::NotFound);
        let reads_value = op.reads_value();
        // Moved into the decision, which the store makes once (`Store::update`).
        let mut op = Some(op);
        let mut decide = |current: Option<&Versions>| {
            let Some(op) = op.take() else {
                debug_assert!(false, "a store decided a write twice");
                return Change::Keep;
            };
            let done = ops::transition(op, current, self.id, self.clock.stamp());
            outcome = done.outcome;
            match done.record {
                None => Change::Keep,
                Some(record) if record.tombstone => Change::Remove,
                Some(record) => Change::Put(Versions::one(record)),
            }
        };
        let now_secs = unix_secs();
        let commit = if reads_value {
            self.store.update(key, now_secs, &mut decide)
        } else {
            self.store.overwrite(key, now_secs, &mut decide)
        };
        commit.wait().await?;
        Ok(outcome)
    }

    /// `get`/`gets`, or with `touch` set `gat`/`gats`. Several items only with siblings
    /// under `conflict_resolution = "siblings"`, newest first.
    pub async fn get(&self, key: &[u8], touch: Option<i64>) -> Result<Vec<Item>, NodeError> {
        let found = match touch {
            None => self.read_items(key).await?,
            Some(exptime) => self.touch_item(key, exptime).await?.into_iter().collect(),
        };
        self.count_retrieval(key, &found);
        Ok(found)
    }

    /// A get for protocols that answer one value per key (binary, meta): the newest live
    /// version, which under siblings is the newest sibling. Its cas resolves them all.
    pub async fn get_one(&self, key: &[u8], touch: Option<i64>) -> Result<Option<Item>, NodeError> {
        let found = match touch {
            None => self.read_items(key).await?.into_iter().next(),
            Some(exptime) => self.touch_item(key, exptime).await?,
        };
        self.count_retrieval(key, found.as_slice());
        Ok(found)
    }

    async fn read_items(&self, key: &[u8]) -> Result<Vec<Item>, NodeError> {
        let versions = self.read(key).await?;
        Ok(self
            .visible(versions.as_ref())
            .into_iter()
            .map(item)
            .collect())
    }

    /// The versions a get shows: every live sibling, newest first, under
    /// `conflict_resolution = "siblings"`; else the last-write-wins one.
    fn visible<'v>(&self, versions: Option<&'v Versions>) -> Vec<&'v Record> {
        if self.siblings_mode.load(Ordering::Relaxed) {
            let mut live: Vec<&Record> = versions.iter().flat_map(|v| v.live()).collect();
            live.sort_by_key(|r| std::cmp::Reverse(r.timestamp));
            live
        } else {
            versions
                .and_then(Versions::newest_live)
                .into_iter()
                .collect()
        }
    }

    /// A meta get: a read, and a write only when the request changes the item (`T`), a
    /// miss is to be vivified (`N`), or the reader wins the recache token (a stale version,
    /// or `R` and an expiry that close), which the write then decides atomically.
    pub async fn fetch(&self, key: &[u8], request: FetchRequest) -> Result<Fetch, NodeError> {
        let now = unix_secs();
        let touch = request.touch.map(|exptime| expiry(exptime, now));
        let vivify = request.vivify.map(|exptime| expiry(exptime, now));
        let recache_before = request.recache.map(|exptime| expiry(exptime, now));
        let fetch_op = WriteOp::Fetch {
            touch,
            vivify,
            recache_before,
        };
        let mut fetched = None;
        if touch.is_none() {
            let versions = self.read(key).await?;
            let newest = self.visible(versions.as_ref()).first().copied();
            let wins = |r: &Record| {
                let expiring =
                    recache_before.is_some_and(|before| r.expires_at != 0 && r.expires_at < before);
                !r.recache_claimed && (r.stale || expiring)
            };
            let needs_write = newest.map_or(vivify.is_some(), wins);
            if !needs_write {
                fetched = Some(ops::Fetched {
                    record: newest.cloned(),
                    won: false,
                    claimed_before: newest.is_some_and(|r| r.recache_claimed),
                    created: false,
                });
            }
        }
        let fetched = match fetched {
            Some(fetched) => fetched,
            None => match self.write(key, fetch_op).await? {
                Outcome::Fetched(fetched) => fetched,
                _ => return Err(NodeError::UnexpectedOutcome("a meta get")),
            },
        };
        let found = fetched.record.as_ref().map(item);
        if touch.is_some() {
            self.counters.cmd_touch.add(1);
            let (hit, miss) = (&self.counters.touch_hits, &self.counters.touch_misses);
            (if found.is_some() { hit } else { miss }).add(1);
        }
        let history = (request.history).then(|| {
            self.accesses.track();
            let (cas, written) = found.as_ref().map_or((0, 0), |i| (i.cas, i.written_secs));
            self.accesses.history(key, cas, written)
        });
        if request.bump {
            self.count_retrieval(key, found.as_slice());
        } else {
            self.count_lookups(found.as_slice());
        }
        Ok(Fetch {
            item: found,
            won: fetched.won,
            claimed_before: fetched.claimed_before,
            history,
        })
    }

    /// `me`: what this node can tell of a key without counting it as an access.
    pub async fn debug(&self, key: &[u8]) -> Result<Option<Debug>, NodeError> {
        let versions = self.read(key).await?;
        let visible = self.visible(versions.as_ref());
        let Some(&newest) = visible.first() else {
            return Ok(None);
        };
        self.accesses.track();
        let shown = item(newest);
        Ok(Some(Debug {
            history: self.accesses.history(key, shown.cas, shown.written_secs),
            size: newest.footprint(key),
            siblings: versions.as_ref().map_or(0, |v| v.live().count()),
            item: shown,
        }))
    }

    async fn touch_item(&self, key: &[u8], exptime: i64) -> Result<Option<Item>, NodeError> {
        self.counters.cmd_touch.add(1);
        let op = WriteOp::Touch {
            expires_at: expiry(exptime, unix_secs()),
        };
        let touched = match self.write(key, op).await? {
            Outcome::Touched(Some(record)) => Some(item(&record)),
            _ => None,
        };
        let (hit, miss) = (&self.counters.touch_hits, &self.counters.touch_misses);
        (if touched.is_some() { hit } else { miss }).add(1);
        Ok(touched)
    }

    /// Counts a retrieval in the stats and notes the access (hit before, last access).
    fn count_retrieval(&self, key: &[u8], found: &[Item]) {
        self.count_lookups(found);
        for item in found {
            self.accesses.note(key, item.cas);
        }
    }

    fn count_lookups(&self, found: &[Item]) {
        if found.is_empty() {
            self.counters.get_misses.add(1);
        }
        for item in found {
            self.counters.get_hits.add(1);
            self.counters.cmd_get.add(1);
            self.counters.bytes_read.add(item.value.len() as u64);
        }
    }

    /// The storage commands (set, add, replace, append, prepend), each with an optional
    /// cas guard (text `cas` is a guarded set). Answers the stored version's cas unique.
    pub async fn store_item(
        &self,
        key: &[u8],
        request: StoreRequest<'_>,
    ) -> Result<(StoreOutcome, u64), NodeError> {
        let StoreRequest {
            mode,
            cas,
            stale_if_older,
            flags,
            exptime,
            data,
        } = request;
        let op = WriteOp::Store {
            mode,
            cas,
            stale_if_older,
            flags,
            expires_at: expiry(exptime, unix_secs()),
            data: Bytes::copy_from_slice(data),
        };
        let (outcome, unique) = match self.write(key, op).await? {
            Outcome::Store(outcome, unique) => (outcome, unique),
            _ => return Err(NodeError::UnexpectedOutcome("a store")),
        };
        let counters = &self.counters;
        // memcached counts only compare-and-swap sets in its cas_* stats.
        if mode == StoreMode::Set && cas.is_some() {
            match outcome {
                StoreOutcome::Stored => counters.cas_hits.add(1),
                StoreOutcome::Exists => counters.cas_badval.add(1),
                StoreOutcome::NotFound => counters.cas_misses.add(1),
                StoreOutcome::NotStored => {}
            }
        }
        if outcome == StoreOutcome::Stored {
            counters.cmd_set.add(1);
            counters.total_items.add(1);
            counters.bytes_write.add(data.len() as u64);
        }
        Ok((outcome, unique))
    }

    /// Drops `key` after a refused `set`, as memcached does, so a stale value cannot be read.
    pub async fn unlink(&self, key: &[u8]) -> Result<(), NodeError> {
        self.write(key, WriteOp::Delete { cas: None })
            .await
            .map(|_| ())
    }

    /// Meta `md … I`: marks the version stale (a new cas; the next reader wins the
    /// recache), with a new exptime when given.
    pub async fn invalidate(
        &self,
        key: &[u8],
        cas: CasGuard,
        exptime: Option<i64>,
    ) -> Result<DeleteOutcome, NodeError> {
        let expires_at = exptime.map(|exptime| expiry(exptime, unix_secs()));
        match self
            .write(key, WriteOp::Invalidate { cas, expires_at })
            .await?
        {
            Outcome::Deleted(outcome) => Ok(outcome),
            _ => Err(NodeError::UnexpectedOutcome("an invalidation")),
        }
    }

    /// A delete, only of the version `cas` names when given.
    pub async fn delete(&self, key: &[u8], cas: CasGuard) -> Result<DeleteOutcome, NodeError> {
        let outcome = match self.write(key, WriteOp::Delete { cas }).await? {
            Outcome::Deleted(outcome) => outcome,
            _ => return Err(NodeError::UnexpectedOutcome("a delete")),
        };
        let (hit, miss) = (&self.counters.delete_hits, &self.counters.delete_misses);
        match outcome {
            DeleteOutcome::Deleted => hit.add(1),
            DeleteOutcome::NotFound => miss.add(1),
            DeleteOutcome::Exists => {}
        }
        Ok(outcome)
    }

    /// incr (wrapping at 2^64) and decr (stopping at 0), guarded by `cas` when given; a
    /// missing key is created from `vivify` (initial value, exptime) when given; `touch`
    /// sets an updated counter's exptime. Answers the new version's cas and expiry.
    pub async fn arith(
        &self,
        key: &[u8],
        incr: bool,
        delta: u64,
        cas: CasGuard,
        vivify: Option<(u64, i64)>,
        touch: Option<i64>,
    ) -> Result<Counted, NodeError> {
        let now = unix_secs();
        let vivify = vivify.map(|(initial, exptime)| ops::Vivify {
            initial,
            expires_at: expiry(exptime, now),
        });
        let op = WriteOp::Arith {
            incr,
            delta,
            cas,
            vivify,
            touch: touch.map(|exptime| expiry(exptime, now)),
        };
        let counted = match self.write(key, op).await? {
            Outcome::Arith {
                outcome,
                cas,
                expires_at,
            } => Counted {
                outcome,
                cas,
                expires_at,
            },
            _ => return Err(NodeError::UnexpectedOutcome("incr/decr")),
        };
        let outcome = counted.outcome;
        let counters = &self.counters;
        let (hit, miss) = if incr {
            (&counters.incr_hits, &counters.incr_misses)
        } else {
            (&counters.decr_hits, &counters.decr_misses)
        };
        match outcome {
            ArithOutcome::Value(_) => hit.add(1),
            ArithOutcome::NotFound => miss.add(1),
            ArithOutcome::NonNumeric | ArithOutcome::Exists => {}
        }
        Ok(counted)
    }

    /// `touch`: the touched value (whose cas stays, as in memcached), if there was one.
    pub async fn touch(&self, key: &[u8], exptime: i64) -> Result<Option<Item>, NodeError> {
        self.touch_item(key, exptime).await
    }

    /// `flush_all [delay]`: everything stored before the deadline is dropped at the deadline;
    /// a later flush_all replaces a pending one.
    pub async fn flush_all(self: &Arc<Self>, delay: i64) {
        self.counters.cmd_flush.add(1);
        self.flush_local(delay);
        if let Some(cluster) = self.cluster() {
            cluster.broadcast_flush(delay).await;
        }
    }

    /// `flush_all` sent by another node: this node only.
    pub fn flush_from_peer(self: &Arc<Self>, delay: i64) {
        self.counters.cmd_flush.add(1);
        self.flush_local(delay);
    }

    fn flush_local(self: &Arc<Self>, delay: i64) {
        let generation = self.flush_generation.fetch_add(1, Ordering::SeqCst) + 1;
        let now = unix_secs();
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

    /// `stats cachedump`: up to `limit` keys this node holds (0: as many as fit in 2 MB of
    /// reply, memcached's cap), with value size and expiry (Unix seconds, 0 = never). One
    /// size class holds every item, so any other class is empty.
    pub fn cache_dump(&self, class: u32, limit: u32) -> Vec<(Bytes, usize, u64)> {
        const MAX_REPLY: usize = 2 * 1024 * 1024;
        const STEP: u64 = 1 << 24;
        let mut found = Vec::new();
        let (mut reply_bytes, now) = (0, unix_secs());
        let full = |found: &Vec<_>, bytes| {
            (limit != 0 && found.len() >= limit as usize) || bytes >= MAX_REPLY
        };
        let mut low = 0u64;
        while class == 1 && low <= u64::from(u32::MAX) && !full(&found, reply_bytes) {
            let high = (low + STEP - 1).min(u64::from(u32::MAX));
            for (key, _) in self.store.keys_in(low as u32, high as u32) {
                let versions = self.store.get(&key, now);
                let Some(newest) = versions.as_ref().and_then(Versions::newest_live) else {
                    continue;
                };
                reply_bytes += key.len() + 32;
                found.push((key.clone(), newest.value.len(), newest.expires_at));
                if full(&found, reply_bytes) {
                    break;
                }
            }
            low = high + 1;
        }
        found
    }

    /// `cache_memlimit`: the memory engine's limit until restart (the configuration's
    /// comes back then); false for the disk engine, which has none.
    pub fn set_memory_limit(&self, megabytes: u64) -> bool {
        let changed = self
            .store
            .set_memory_limit(megabytes.saturating_mul(1 << 20));
        if changed {
            log::info!("cache_memlimit: memory limit now {megabytes} MiB until restart");
        }
        changed
    }

    /// Drops expired records; run periodically off the request path.
    pub fn purge_expired(&self) -> u64 {
        self.store.purge_expired(unix_secs())
    }

    pub fn curr_items(&self) -> u64 {
        self.store.stats().items
    }

    /// Members seen up, as `host:port`, sorted.
    /// Each active member's clock offset from this node in ms, as last measured.
    pub fn clock_offsets(&self) -> Vec<(std::net::SocketAddr, i64)> {
        let Some(cluster) = self.cluster.get() else {
            return Vec::new();
        };
        let active = cluster.membership().active();
        (cluster.peers().clock_offsets().into_iter())
            .filter(|(peer, _)| active.contains(peer))
            .map(|(peer, offset)| (peer, offset.offset_us / 1000))
            .collect()
    }

    pub fn members_up(&self) -> Vec<String> {
        match self.cluster.get() {
            Some(cluster) => (cluster.membership().up().iter())
                .map(ToString::to_string)
                .collect(),
            None => vec![self.address.clone()],
        }
    }

    /// Members in the ring, as `host:port`, sorted.
    /// What the ring digest covers: the members, each with its zone when the ring is zoned
    /// (two nodes that disagree on zones place keys differently).
    pub fn ring_layout(&self) -> String {
        let Some(cluster) = self.cluster.get() else {
            return self.address.clone();
        };
        let ring = cluster.membership().ring();
        let members =
            (cluster.membership().active().into_iter()).map(|addr| match ring.zone(addr) {
                Some(zone) => format!("{addr}@{zone}"),
                None => addr.to_string(),
            });
        members.collect::<Vec<_>>().join(" ")
    }

    pub fn members(&self) -> Vec<String> {
        match self.cluster.get() {
            Some(cluster) => (cluster.membership().active().iter())
                .map(ToString::to_string)
                .collect(),
            None => vec![self.address.clone()],
        }
    }
}

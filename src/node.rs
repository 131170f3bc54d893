//! The facade the protocol layer calls: one method per memcached operation.
//!
//! `Node` turns client commands into versioned records (vector clock, timestamp, expiry),
//! keeps the stats counters and answers `stats`. Today it serves every key from the local
//! store; the cluster coordinator slots in underneath without changing this interface, which
//! is why every operation is async and can fail with a `NodeError`.

use crate::config::{Config, Engine};
use crate::memcache::parse::{StatsSection, StoreMode, RELATIVE_EXPTIME_LIMIT};
use crate::stats::{self, Counters, Unreconciled};
use crate::store::{memory::MemoryStore, Change, Record, Store};
use crate::version::{NodeId, VectorClock};
use bytes::Bytes;
use md5::{Digest, Md5};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored,
    NotStored,
    Exists,
    NotFound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithOutcome {
    Value(u64),
    NotFound,
    NonNumeric,
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
    store: Box<dyn Store>,
    counters: Counters,
    unreconciled: Unreconciled,
    started: Instant,
    /// Bumped by every `flush_all`, so a delayed flush superseded by a newer one does nothing.
    flush_generation: AtomicU64,
}

fn unix_now() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
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

/// A cas unique: identifies the version (its clock and write time); never 0.
fn cas_unique(record: &Record) -> u64 {
    let mixed = record.clock.digest() ^ record.timestamp.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    mixed.max(1)
}

fn item(record: &Record) -> Item {
    Item {
        value: record.value.clone(),
        flags: record.flags,
        cas: cas_unique(record),
    }
}

/// Parses an incr/decr operand as memcached does: leading blanks, digits, then blanks or end.
fn numeric_value(value: &[u8]) -> Option<u64> {
    let start = value.iter().position(|b| !b.is_ascii_whitespace())?;
    let text = &value[start..];
    let end = text
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    if end == 0 || !text[end..].first().is_none_or(u8::is_ascii_whitespace) {
        return None;
    }
    crate::memcache::parse::parse_u64(&text[..end])
}

impl Node {
    pub fn new(config: Config, config_sources: Vec<PathBuf>, worker_threads: usize) -> Self {
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
        let store: Box<dyn Store> = match config.store.engine {
            // The disk engine lands with its own issue; until then both run in memory.
            Engine::Memory | Engine::Disk => {
                Box::new(MemoryStore::new(config.store.memory_limit.0))
            }
        };
        Node {
            id,
            address,
            unreconciled: Unreconciled::new(config.cluster.quorum.n),
            config: RwLock::new(Arc::new(config)),
            config_generation: AtomicU64::new(0),
            config_sources: RwLock::new(config_sources),
            worker_threads,
            store,
            counters: Counters::default(),
            started: Instant::now(),
            flush_generation: AtomicU64::new(0),
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
    pub fn reload(&self, new: Config, sources: Vec<PathBuf>) -> Vec<&'static str> {
        let current = self.config();
        let mut next = (*current).clone();
        next.log.level = new.log.level;
        next.memcache.max_connections = new.memcache.max_connections;
        next.memcache.max_item_size = new.memcache.max_item_size;
        next.memcache.idle_timeout = new.memcache.idle_timeout;
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

    fn new_record(
        &self,
        value: Bytes,
        flags: u32,
        expires_at: u64,
        base: Option<&Record>,
        now: std::time::Duration,
    ) -> Record {
        let clock = match base {
            Some(record) => record.clock.incremented(self.id),
            None => VectorClock::new().incremented(self.id),
        };
        Record {
            value,
            flags,
            expires_at,
            timestamp: now.as_micros() as u64,
            clock,
        }
    }

    /// `get`/`gets`, or with `touch` set `gat`/`gats`.
    pub async fn get(&self, key: &[u8], touch: Option<i64>) -> Result<Option<Item>, NodeError> {
        let now = unix_now().as_secs();
        let found = match touch {
            None => self.store.get(key, now).map(|r| item(&r)),
            Some(exptime) => {
                self.counters.cmd_touch.add(1);
                let mut found = None;
                self.store.update(key, now, &mut |current| match current {
                    Some(record) => {
                        let touched = Record {
                            expires_at: expiry(exptime, now),
                            ..record.clone()
                        };
                        found = Some(item(&touched));
                        Change::Put(touched)
                    }
                    None => Change::Keep,
                });
                let (hit, miss) = (&self.counters.touch_hits, &self.counters.touch_misses);
                (if found.is_some() { hit } else { miss }).add(1);
                found
            }
        };
        match &found {
            Some(item) => {
                self.counters.get_hits.add(1);
                self.counters.cmd_get.add(1);
                self.counters.bytes_read.add(item.value.len() as u64);
            }
            None => self.counters.get_misses.add(1),
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
        let wall = unix_now();
        let now = wall.as_secs();
        let expires_at = expiry(exptime, now);
        let mut outcome = StoreOutcome::NotStored;
        self.store.update(key, now, &mut |current| {
            let (value, flags, expires_at) = match (mode, current) {
                (StoreMode::Add, Some(_)) | (StoreMode::Replace, None) => {
                    outcome = StoreOutcome::NotStored;
                    return Change::Keep;
                }
                (StoreMode::Append | StoreMode::Prepend, None) => {
                    outcome = StoreOutcome::NotStored;
                    return Change::Keep;
                }
                (StoreMode::Cas(_), None) => {
                    outcome = StoreOutcome::NotFound;
                    return Change::Keep;
                }
                (StoreMode::Cas(unique), Some(record)) if cas_unique(record) != unique => {
                    outcome = StoreOutcome::Exists;
                    return Change::Keep;
                }
                (StoreMode::Append, Some(record)) => {
                    let value = [&record.value[..], data].concat();
                    (Bytes::from(value), record.flags, record.expires_at)
                }
                (StoreMode::Prepend, Some(record)) => {
                    let value = [data, &record.value[..]].concat();
                    (Bytes::from(value), record.flags, record.expires_at)
                }
                _ => (Bytes::copy_from_slice(data), flags, expires_at),
            };
            outcome = StoreOutcome::Stored;
            Change::Put(self.new_record(value, flags, expires_at, current, wall))
        });
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
        self.store
            .update(key, unix_now().as_secs(), &mut |_| Change::Remove);
        Ok(())
    }

    pub async fn delete(&self, key: &[u8]) -> Result<bool, NodeError> {
        let mut found = false;
        self.store
            .update(key, unix_now().as_secs(), &mut |current| {
                found = current.is_some();
                Change::Remove
            });
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
        let wall = unix_now();
        let now = wall.as_secs();
        let mut outcome = ArithOutcome::NotFound;
        self.store.update(key, now, &mut |current| {
            let Some(record) = current else {
                outcome = ArithOutcome::NotFound;
                return Change::Keep;
            };
            let Some(number) = numeric_value(&record.value) else {
                outcome = ArithOutcome::NonNumeric;
                return Change::Keep;
            };
            let result = if incr {
                number.wrapping_add(delta)
            } else {
                number.saturating_sub(delta)
            };
            outcome = ArithOutcome::Value(result);
            // memcached rewrites a shorter number in place, padded with spaces to the old length.
            let text = format!("{result:<width$}", width = record.value.len());
            let value = Bytes::from(text.into_bytes());
            Change::Put(self.new_record(value, record.flags, record.expires_at, Some(record), wall))
        });
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
        let now = unix_now().as_secs();
        let mut found = false;
        self.store.update(key, now, &mut |current| match current {
            Some(record) => {
                found = true;
                Change::Put(Record {
                    expires_at: expiry(exptime, now),
                    ..record.clone()
                })
            }
            None => Change::Keep,
        });
        self.counters.cmd_touch.add(1);
        let (hit, miss) = (&self.counters.touch_hits, &self.counters.touch_misses);
        (if found { hit } else { miss }).add(1);
        Ok(found)
    }

    /// `flush_all [delay]`: everything stored before the deadline is dropped at the deadline;
    /// a later flush_all replaces a pending one.
    pub fn flush_all(self: &Arc<Self>, delay: i64) {
        self.counters.cmd_flush.add(1);
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
        vec![self.address.clone()]
    }

    pub fn stats(&self, section: StatsSection) -> Vec<(&'static str, String)> {
        match section {
            StatsSection::General => self.general_stats(),
            StatsSection::Settings => self.settings_stats(),
            StatsSection::Kai => self.kai_stats(),
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

    fn kai_stats(&self) -> Vec<(&'static str, String)> {
        let config = self.config();
        let q = config.cluster.quorum;
        let members = self.members_up();
        let digest = Md5::digest(members.join(" ").as_bytes());
        let ring_digest: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let c = &self.counters;
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
            ("kai_curr_nodes", members.join(" ")),
            ("kai_members", members.len().to_string()),
            ("kai_ring_digest", ring_digest),
            ("kai_unreconciled_get", self.unreconciled.render()),
            ("kai_hinted_handoffs", c.hinted_handoffs.get().to_string()),
            ("kai_read_repairs", c.read_repairs.get().to_string()),
            ("kai_sync_keys", c.sync_keys.get().to_string()),
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

    #[test]
    fn numeric_values_as_memcached_reads_them() {
        assert_eq!(numeric_value(b"12"), Some(12));
        assert_eq!(numeric_value(b" 12"), Some(12));
        assert_eq!(numeric_value(b"99 "), Some(99));
        assert_eq!(numeric_value(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(numeric_value(b"18446744073709551616"), None);
        for bad in [&b""[..], b"12a", b"-1", b" ", b"a"] {
            assert_eq!(numeric_value(bad), None, "{bad:?}");
        }
    }
}

//! Storage engines behind one trait. The store knows keys, records and memory; it knows
//! nothing of the cluster or the protocol (DESIGN §2).

pub mod digest;
pub mod disk;
pub mod memory;

use crate::version::VectorClock;
use bytes::Bytes;
use digest::Digests;

/// One stored version of a key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub value: Bytes,
    /// Opaque client flags (memcached: 32 bits).
    pub flags: u32,
    /// Unix seconds after which the record is gone; 0 = never.
    pub expires_at: u64,
    /// Wall-clock time of the write in Unix microseconds (orders siblings, last-write-wins).
    pub timestamp: u64,
    pub clock: VectorClock,
    /// A delete: a version without a value that supersedes what it descends, so anti-entropy
    /// cannot resurrect the key. Its `expires_at` is when it may be purged.
    pub tombstone: bool,
}

/// Bytes a record is charged beyond key and value: map entry, LRU links, record fields.
pub const RECORD_OVERHEAD: usize = 96;

impl Record {
    pub fn is_expired(&self, now_secs: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now_secs
    }

    /// Memory charged for this record under `key` (the `bytes` stat, `memory_limit`).
    pub fn footprint(&self, key: &[u8]) -> usize {
        key.len() + self.value.len() + RECORD_OVERHEAD
    }
}

impl crate::version::Versioned for Record {
    fn clock(&self) -> &VectorClock {
        &self.clock
    }

    fn timestamp(&self) -> u64 {
        self.timestamp
    }
}

/// Every version of one key this node holds: one after an ordinary write, several siblings
/// after concurrent writes on different nodes, tombstones included. Newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Versions(pub Vec<Record>);

impl Versions {
    pub fn one(record: Record) -> Self {
        Versions(vec![record])
    }

    /// The versions that hold a value (not tombstones).
    pub fn live(&self) -> impl Iterator<Item = &Record> + Clone {
        self.0.iter().filter(|r| !r.tombstone)
    }

    pub fn has_live(&self) -> bool {
        self.live().next().is_some()
    }

    /// The per-node maximum of every version's clock: what a write superseding them all
    /// increments.
    pub fn merged_clock(&self) -> VectorClock {
        (self.0.iter()).fold(VectorClock::new(), |clock, r| clock.merged(&r.clock))
    }

    pub fn footprint(&self, key: &[u8]) -> usize {
        self.0.iter().map(|r| r.footprint(key)).sum()
    }

    /// Drops expired versions (and purgeable tombstones); false when none is left.
    pub fn retain_unexpired(&mut self, now_secs: u64) -> bool {
        self.0.retain(|r| !r.is_expired(now_secs));
        !self.0.is_empty()
    }

    pub fn any_expired(&self, now_secs: u64) -> bool {
        self.0.iter().any(|r| r.is_expired(now_secs))
    }
}

/// Resolves once a write is durable (disk engine); the memory engine's are done at once.
#[must_use = "a write is acknowledged only after its commit"]
pub struct Commit(Option<tokio::sync::oneshot::Receiver<Result<(), String>>>);

impl Commit {
    pub fn done() -> Self {
        Commit(None)
    }

    pub fn pending(receiver: tokio::sync::oneshot::Receiver<Result<(), String>>) -> Self {
        Commit(Some(receiver))
    }

    pub fn is_done(&self) -> bool {
        self.0.is_none()
    }

    pub async fn wait(self) -> Result<(), String> {
        match self.0 {
            None => Ok(()),
            Some(receiver) => receiver
                .await
                .unwrap_or_else(|_| Err("the store stopped before the write was durable".into())),
        }
    }
}

/// What a read-modify-write decides to do with a key.
pub enum Change {
    Keep,
    Put(Versions),
    Remove,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub items: u64,
    pub bytes: u64,
    pub evictions: u64,
    pub limit_bytes: u64,
}

/// A key/value engine. Every method is atomic per key; none blocks on the network.
pub trait Store: Send + Sync {
    /// The unexpired versions of `key` (tombstones included), if any.
    fn get(&self, key: &[u8], now_secs: u64) -> Option<Versions>;

    /// Reads `key`'s unexpired versions and applies `decide`'s change, atomically: later
    /// reads see it at once; the returned `Commit` says when it is durable.
    fn update(
        &self,
        key: &[u8],
        now_secs: u64,
        decide: &mut dyn FnMut(Option<&Versions>) -> Change,
    ) -> Commit;

    /// Drops every record.
    fn clear(&self);

    /// Drops expired records; returns how many.
    fn purge_expired(&self, now_secs: u64) -> u64;

    /// `items` counts keys with at least one live version.
    fn stats(&self) -> StoreStats;

    /// Per-bucket digests of what this store holds (anti-entropy).
    fn digests(&self) -> &Digests;

    /// Every key whose ring hash lies in `low..=high`, with its fingerprint.
    fn keys_in(&self, low: u32, high: u32) -> Vec<(Bytes, u64)>;
}

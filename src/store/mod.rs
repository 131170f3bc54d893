//! Storage engines behind one trait. The store knows keys, records and memory; it knows
//! nothing of the cluster or the protocol (DESIGN §2).

pub mod memory;

use crate::version::VectorClock;
use bytes::Bytes;

/// One stored version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub value: Bytes,
    /// Opaque client flags (memcached: 32 bits).
    pub flags: u32,
    /// Unix seconds after which the record is gone; 0 = never.
    pub expires_at: u64,
    /// Wall-clock time of the write in Unix microseconds (orders siblings, last-write-wins).
    pub timestamp: u64,
    pub clock: VectorClock,
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

/// What a read-modify-write decides to do with a key.
pub enum Change {
    Keep,
    Put(Record),
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
    /// The live record of `key`, if any; expired records read as absent.
    fn get(&self, key: &[u8], now_secs: u64) -> Option<Record>;

    /// Reads `key` (absent if expired) and applies `decide`'s change, atomically.
    fn update(&self, key: &[u8], now_secs: u64, decide: &mut dyn FnMut(Option<&Record>) -> Change);

    /// Drops every record.
    fn clear(&self);

    /// Drops expired records; returns how many.
    fn purge_expired(&self, now_secs: u64) -> u64;

    fn stats(&self) -> StoreStats;
}

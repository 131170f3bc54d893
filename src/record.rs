//! The versioned record: one stored version of a key (value, flags, expiry, vector clock,
//! write time, tombstone flag) and the set of sibling versions a key holds. Every layer above
//! speaks in these; the store persists them, the cluster ships them, the protocols read them.

use crate::causality::VectorClock;
use bytes::Bytes;

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

impl crate::causality::Versioned for Record {
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

    /// The last-write-wins view: the version with the greatest timestamp, unless that is a
    /// tombstone (a delete later than every concurrent write hides them).
    pub fn newest_live(&self) -> Option<&Record> {
        crate::causality::newest(&self.0).filter(|r| !r.tombstone)
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

/// A live record written once by node 1, for tests of the layers above.
#[cfg(test)]
pub(crate) fn test_record(value: &str, expires_at: u64) -> Record {
    Record {
        value: Bytes::copy_from_slice(value.as_bytes()),
        flags: 3,
        expires_at,
        timestamp: 1,
        clock: VectorClock::new().incremented(1),
        tombstone: false,
    }
}

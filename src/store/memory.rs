//! The memory engine (Kai's "ets"): a sharded map with per-shard LRU order.
//!
//! Keys hash to one of `SHARDS` mutex-guarded shards, so concurrent clients rarely meet on a
//! lock. With a `memory_limit`, a write that takes the total over the limit evicts the least
//! recently used records, first from its own shard, then from the others.

use super::{Change, Record, Store, StoreStats};
use lru::LruCache;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

/// One lock's worth of the store. Its byte count lives under the same lock, so the request
/// path touches no shared counter.
struct Shard {
    records: LruCache<Box<[u8]>, Record>,
    bytes: u64,
}

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    limit_bytes: u64,
    /// Bytes across all shards; kept only with a limit, where eviction needs the total.
    limited_bytes: AtomicU64,
    evictions: AtomicU64,
    /// Where the next cross-shard eviction starts, so no shard is always the victim.
    eviction_cursor: AtomicUsize,
}

impl MemoryStore {
    /// `limit_bytes` = 0 means unlimited.
    pub fn new(limit_bytes: u64) -> Self {
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        records: LruCache::unbounded(),
                        bytes: 0,
                    })
                })
                .collect(),
            limit_bytes,
            limited_bytes: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            eviction_cursor: AtomicUsize::new(0),
        }
    }

    /// Spreads keys over shards. Not collision-resistant on purpose: a client that aims many
    /// keys at one shard only slows itself on that lock; each shard's map is DoS-resistant.
    fn shard_of(&self, key: &[u8]) -> usize {
        let mut hash: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunks = key.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
            hash = (hash ^ word).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
        }
        for &byte in chunks.remainder() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        ((hash ^ (hash >> 32)) as usize) % SHARDS
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave a half-written record (LruCache
        // operations are single calls), so a poisoned lock is still usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Accounts for `added` bytes stored and `removed` bytes released in `shard`.
    fn charge(&self, shard: &mut Shard, added: u64, removed: u64) {
        shard.bytes = shard.bytes + added - removed;
        if self.limit_bytes != 0 {
            self.limited_bytes.fetch_add(added, Ordering::Relaxed);
            self.limited_bytes.fetch_sub(removed, Ordering::Relaxed);
        }
    }

    fn remove(&self, shard: &mut Shard, key: &[u8]) {
        if let Some((key, record)) = shard.records.pop_entry(key) {
            self.charge(shard, 0, record.footprint(&key) as u64);
        }
    }

    fn over_limit(&self) -> bool {
        self.limit_bytes != 0 && self.limited_bytes.load(Ordering::Relaxed) > self.limit_bytes
    }

    /// Evicts least recently used records from `shard`, never the one just written (`keep`).
    fn evict_from(&self, shard: &mut Shard, keep: Option<&[u8]>) {
        while self.over_limit() {
            let Some((key, _)) = shard.records.peek_lru() else {
                return;
            };
            if Some(&**key) == keep {
                return;
            }
            if let Some((key, record)) = shard.records.pop_lru() {
                self.charge(shard, 0, record.footprint(&key) as u64);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn evict_elsewhere(&self, written: usize) {
        let start = self.eviction_cursor.fetch_add(1, Ordering::Relaxed);
        for step in 0..SHARDS {
            if !self.over_limit() {
                return;
            }
            let index = (start + step) % SHARDS;
            if index != written {
                self.evict_from(&mut self.lock(index), None);
            }
        }
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8], now_secs: u64) -> Option<Record> {
        let mut shard = self.lock(self.shard_of(key));
        // Recency only matters when something may be evicted: without a limit, reads do not
        // reorder the LRU list (and touch no neighbouring nodes).
        let found = if self.limit_bytes == 0 {
            shard.records.peek(key)
        } else {
            shard.records.get(key)
        };
        match found {
            Some(record) if !record.is_expired(now_secs) => return Some(record.clone()),
            Some(_) => {}
            None => return None,
        }
        self.remove(&mut shard, key);
        None
    }

    fn update(&self, key: &[u8], now_secs: u64, decide: &mut dyn FnMut(Option<&Record>) -> Change) {
        let index = self.shard_of(key);
        let mut guard = self.lock(index);
        let shard = &mut *guard;
        // One lookup serves the read, the decision and the write.
        let slot = if self.limit_bytes == 0 {
            shard.records.peek_mut(key)
        } else {
            shard.records.get_mut(key)
        };
        let expired = slot.as_ref().is_some_and(|r| r.is_expired(now_secs));
        let change = decide(if expired { None } else { slot.as_deref() });
        match (change, slot) {
            (Change::Put(record), Some(slot)) => {
                let added = record.footprint(key) as u64;
                let removed = slot.footprint(key) as u64;
                *slot = record;
                self.charge(shard, added, removed);
            }
            (Change::Put(record), None) => {
                let added = record.footprint(key) as u64;
                shard.records.put(key.into(), record);
                self.charge(shard, added, 0);
            }
            (Change::Keep, Some(_)) if !expired => return,
            // Removing, or leaving an expired record: either way it goes now.
            (Change::Keep | Change::Remove, Some(_)) => {
                self.remove(shard, key);
                return;
            }
            (Change::Keep | Change::Remove, None) => return,
        }
        if self.over_limit() {
            self.evict_from(shard, Some(key));
            drop(guard);
            self.evict_elsewhere(index);
        }
    }

    fn clear(&self) {
        for index in 0..SHARDS {
            let mut shard = self.lock(index);
            let bytes = shard.bytes;
            self.charge(&mut shard, 0, bytes);
            shard.records.clear();
        }
    }

    fn purge_expired(&self, now_secs: u64) -> u64 {
        let mut purged = 0;
        for index in 0..SHARDS {
            let mut shard = self.lock(index);
            let expired: Vec<Box<[u8]>> = (shard.records.iter())
                .filter(|(_, record)| record.is_expired(now_secs))
                .map(|(key, _)| key.clone())
                .collect();
            for key in expired {
                self.remove(&mut shard, &key);
                purged += 1;
            }
        }
        purged
    }

    fn stats(&self) -> StoreStats {
        let (mut items, mut bytes) = (0, 0);
        for index in 0..SHARDS {
            let shard = self.lock(index);
            items += shard.records.len() as u64;
            bytes += shard.bytes;
        }
        StoreStats {
            items,
            bytes,
            evictions: self.evictions.load(Ordering::Relaxed),
            limit_bytes: self.limit_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::VectorClock;
    use bytes::Bytes;

    fn record(value: &str, expires_at: u64) -> Record {
        Record {
            value: Bytes::copy_from_slice(value.as_bytes()),
            flags: 0,
            expires_at,
            timestamp: 0,
            clock: VectorClock::new(),
        }
    }

    fn put(store: &MemoryStore, key: &str, value: &str, expires_at: u64) {
        store.update(key.as_bytes(), 100, &mut |_| {
            Change::Put(record(value, expires_at))
        });
    }

    #[test]
    fn put_get_remove_and_accounting() {
        let store = MemoryStore::new(0);
        put(&store, "a", "hello", 0);
        put(&store, "a", "hi", 0);
        assert_eq!(store.get(b"a", 100).unwrap().value, "hi");
        let stats = store.stats();
        assert_eq!(
            (stats.items, stats.bytes),
            (1, (1 + 2 + super::super::RECORD_OVERHEAD) as u64)
        );
        store.update(b"a", 100, &mut |_| Change::Remove);
        assert_eq!(store.get(b"a", 100), None);
        assert_eq!(store.stats().bytes, 0);
    }

    #[test]
    fn expiry_is_lazy_and_purged() {
        let store = MemoryStore::new(0);
        put(&store, "short", "x", 150);
        put(&store, "long", "x", 0);
        assert!(store.get(b"short", 149).is_some());
        assert!(store.get(b"short", 150).is_none());
        assert_eq!(store.stats().items, 1);
        put(&store, "short2", "x", 150);
        assert_eq!(store.purge_expired(151), 1);
        assert_eq!(store.stats().items, 1);
        let mut seen = None;
        store.update(b"short2", 151, &mut |r| {
            seen = Some(r.is_some());
            Change::Keep
        });
        assert_eq!(seen, Some(false));
    }

    #[test]
    fn lru_eviction_keeps_the_limit_and_recent_keys() {
        let value = "v".repeat(100);
        let limit = 2000 * (100 + 4 + super::super::RECORD_OVERHEAD) as u64;
        let store = MemoryStore::new(limit);
        for i in 0..5000 {
            put(&store, &format!("{i:04}"), &value, 0);
            // Keep "0000" hot: it must survive every eviction.
            assert!(store.get(b"0000", 100).is_some(), "0000 evicted at {i}");
            assert!(store.stats().bytes <= limit);
        }
        let stats = store.stats();
        assert!(stats.evictions >= 3000, "{stats:?}");
        assert_eq!(stats.items + stats.evictions, 5000);
        assert!(store.get(b"4999", 100).is_some());
        assert!(store.get(b"0001", 100).is_none());
    }

    #[test]
    fn clear_empties_everything() {
        let store = MemoryStore::new(0);
        for i in 0..100 {
            put(&store, &i.to_string(), "x", 0);
        }
        store.clear();
        assert_eq!(store.stats(), StoreStats::default());
    }
}

//! The memory engine (Kai's "ets"): a sharded map with per-shard LRU order.
//!
//! Keys go to one of `SHARDS` mutex-guarded shards by the top bits of their ring hash, so
//! concurrent clients rarely meet on a lock and one bucket's keys sit in one shard (what
//! anti-entropy lists). With a `memory_limit`, a write that takes the total over the limit evicts the least
//! recently used records, first from its own shard, then from the others.

use super::digest::Digests;
use super::{Change, Commit, Store, StoreStats, Versions};
use crate::keyspace::key_hash;
use bytes::Bytes;
use lru::LruCache;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;
const SHARD_SHIFT: u32 = 32 - SHARDS.trailing_zeros();

/// One lock's worth of the store. Its byte count lives under the same lock, so the request
/// path touches no shared counter.
struct Shard {
    records: LruCache<Box<[u8]>, Versions>,
    bytes: u64,
    /// Keys holding a live (non-tombstone) version: the `curr_items` stat.
    live_keys: u64,
}

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// 0 = unlimited; `cache_memlimit` changes it while running.
    limit_bytes: AtomicU64,
    /// Bytes across all shards, which eviction compares with the limit.
    total_bytes: AtomicU64,
    evictions: AtomicU64,
    /// Where the next cross-shard eviction starts, so no shard is always the victim.
    eviction_cursor: AtomicUsize,
    digests: Digests,
}

impl MemoryStore {
    /// `limit_bytes` = 0 means unlimited; `buckets` is the ring's bucket count (digests).
    pub fn new(limit_bytes: u64, buckets: u32) -> Self {
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        records: LruCache::unbounded(),
                        bytes: 0,
                        live_keys: 0,
                    })
                })
                .collect(),
            limit_bytes: AtomicU64::new(limit_bytes),
            total_bytes: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            eviction_cursor: AtomicUsize::new(0),
            digests: Digests::new(buckets),
        }
    }

    /// The shard of a key with ring hash `hash` (computed once per request, then passed on).
    fn shard_of(hash: u32) -> usize {
        (hash >> SHARD_SHIFT) as usize
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave a half-written record (LruCache
        // operations are single calls), so a poisoned lock is still usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Accounts for `added` versions stored and `removed` ones released in `shard`.
    fn charge(
        &self,
        shard: &mut Shard,
        hash: u32,
        key: &[u8],
        added: Option<&Versions>,
        removed: Option<&Versions>,
    ) {
        let bytes = |v: Option<&Versions>| v.map_or(0, |v| v.footprint(key) as u64);
        let live = |v: Option<&Versions>| u64::from(v.is_some_and(Versions::has_live));
        shard.live_keys = shard.live_keys + live(added) - live(removed);
        self.digests.change(hash, key, removed, added);
        self.charge_bytes(shard, bytes(added), bytes(removed));
    }

    fn charge_bytes(&self, shard: &mut Shard, added: u64, removed: u64) {
        shard.bytes = shard.bytes + added - removed;
        if added != removed {
            self.total_bytes
                .fetch_add(added.wrapping_sub(removed), Ordering::Relaxed);
        }
    }

    fn remove(&self, shard: &mut Shard, hash: u32, key: &[u8]) {
        if let Some((key, versions)) = shard.records.pop_entry(key) {
            self.charge(shard, hash, &key, None, Some(&versions));
        }
    }

    /// Drops the expired versions of `key`, in `versions` and in the shard (the key goes
    /// when none is left).
    fn replace(
        &self,
        shard: &mut Shard,
        hash: u32,
        key: &[u8],
        versions: &mut Versions,
        now_secs: u64,
    ) {
        self.remove(shard, hash, key);
        if versions.retain_unexpired(now_secs) {
            self.charge(shard, hash, key, Some(versions), None);
            shard.records.put(key.into(), versions.clone());
        }
    }

    fn limit(&self) -> u64 {
        self.limit_bytes.load(Ordering::Relaxed)
    }

    fn over_limit(&self) -> bool {
        let limit = self.limit();
        limit != 0 && self.total_bytes.load(Ordering::Relaxed) > limit
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
            if let Some((key, versions)) = shard.records.pop_lru() {
                self.charge(shard, key_hash(&key), &key, None, Some(&versions));
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
    fn get(&self, key: &[u8], now_secs: u64) -> Option<Versions> {
        let hash = key_hash(key);
        let mut shard = self.lock(Self::shard_of(hash));
        // Recency only matters when something may be evicted: without a limit, reads do not
        // reorder the LRU list (and touch no neighbouring nodes).
        let found = if self.limit() == 0 {
            shard.records.peek(key)
        } else {
            shard.records.get(key)
        };
        match found {
            Some(versions) if !versions.any_expired(now_secs) => return Some(versions.clone()),
            Some(_) => {}
            None => return None,
        }
        let mut pruned = shard.records.peek(key).cloned()?;
        self.replace(&mut shard, hash, key, &mut pruned, now_secs);
        Some(pruned).filter(|v| !v.0.is_empty())
    }

    fn update(
        &self,
        key: &[u8],
        now_secs: u64,
        decide: &mut dyn FnMut(Option<&Versions>) -> Change,
    ) -> Commit {
        let hash = key_hash(key);
        let index = Self::shard_of(hash);
        let mut guard = self.lock(index);
        let shard = &mut *guard;
        // One lookup serves the read, the decision and the write.
        let slot = if self.limit() == 0 {
            shard.records.peek_mut(key)
        } else {
            shard.records.get_mut(key)
        };
        let fresh = slot.as_ref().map(|v| !v.any_expired(now_secs));
        let change = match (fresh, slot) {
            (Some(true), Some(slot)) => match decide(Some(slot)) {
                Change::Put(versions) => {
                    // Replace in place: no second lookup, no LRU relink.
                    let (added, added_live) = (versions.footprint(key), versions.has_live());
                    let old = std::mem::replace(slot, versions);
                    self.digests.change(hash, key, Some(&old), Some(slot));
                    shard.live_keys =
                        shard.live_keys + u64::from(added_live) - u64::from(old.has_live());
                    self.charge_bytes(shard, added as u64, old.footprint(key) as u64);
                    Change::Keep
                }
                other => other,
            },
            (Some(false), _) => {
                let mut pruned = shard.records.peek(key).cloned().unwrap_or_default();
                self.replace(shard, hash, key, &mut pruned, now_secs);
                decide((!pruned.0.is_empty()).then_some(&pruned))
            }
            _ => decide(None),
        };
        match change {
            Change::Put(versions) => {
                self.remove(shard, hash, key);
                self.charge(shard, hash, key, Some(&versions), None);
                shard.records.put(key.into(), versions);
            }
            Change::Remove => self.remove(shard, hash, key),
            Change::Keep => {}
        }
        if self.over_limit() {
            self.evict_from(shard, Some(key));
            drop(guard);
            self.evict_elsewhere(index);
        }
        Commit::done()
    }

    fn clear(&self) {
        for index in 0..SHARDS {
            let mut shard = self.lock(index);
            let bytes = shard.bytes;
            self.charge_bytes(&mut shard, 0, bytes);
            shard.live_keys = 0;
            shard.records.clear();
        }
        self.digests.clear();
    }

    fn purge_expired(&self, now_secs: u64) -> u64 {
        let mut purged = 0;
        for index in 0..SHARDS {
            let mut shard = self.lock(index);
            let expired: Vec<Box<[u8]>> = (shard.records.iter())
                .filter(|(_, versions)| versions.any_expired(now_secs))
                .map(|(key, _)| key.clone())
                .collect();
            for key in expired {
                let Some(mut pruned) = shard.records.peek(&key[..]).cloned() else {
                    continue;
                };
                purged += pruned.0.len() as u64;
                self.replace(&mut shard, key_hash(&key), &key, &mut pruned, now_secs);
                purged -= pruned.0.len() as u64;
            }
        }
        purged
    }

    fn digests(&self) -> &Digests {
        &self.digests
    }

    fn keys_in(&self, low: u32, high: u32) -> Vec<(Bytes, u64)> {
        let mut out = Vec::new();
        for index in (low >> SHARD_SHIFT)..=(high >> SHARD_SHIFT) {
            let shard = self.lock(index as usize);
            for (key, versions) in shard.records.iter() {
                if (low..=high).contains(&key_hash(key)) {
                    let fingerprint = super::digest::fingerprint(key, Some(versions));
                    out.push((Bytes::copy_from_slice(key), fingerprint));
                }
            }
        }
        out
    }

    fn stats(&self) -> StoreStats {
        let (mut items, mut bytes) = (0, 0);
        for index in 0..SHARDS {
            let shard = self.lock(index);
            items += shard.live_keys;
            bytes += shard.bytes;
        }
        StoreStats {
            items,
            bytes,
            evictions: self.evictions.load(Ordering::Relaxed),
            limit_bytes: self.limit(),
            ..StoreStats::default()
        }
    }

    fn set_memory_limit(&self, limit_bytes: u64) -> bool {
        self.limit_bytes.store(limit_bytes, Ordering::Relaxed);
        for index in 0..SHARDS {
            if !self.over_limit() {
                break;
            }
            self.evict_from(&mut self.lock(index), None);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::test_record as record;

    fn put(store: &MemoryStore, key: &str, value: &str, expires_at: u64) {
        let _ = store.update(key.as_bytes(), 100, &mut |_| {
            Change::Put(Versions::one(record(value, expires_at)))
        });
    }

    #[test]
    fn lru_eviction_keeps_the_limit_and_recent_keys() {
        let value = "v".repeat(100);
        let limit = 2000 * (100 + 4 + super::super::RECORD_OVERHEAD) as u64;
        let store = MemoryStore::new(limit, 1024);
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
}

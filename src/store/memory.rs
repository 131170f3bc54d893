//! The memory engine (Kai's "ets"): sharded, each key's versions packed in one allocation.
//!
//! Keys go to one of `SHARDS` mutex-guarded shards by the top bits of their ring hash, so
//! concurrent clients rarely meet on a lock and one bucket's keys sit in one shard (what
//! anti-entropy lists). A key is one `Item`: a header, the key and its versions (packed
//! tighter than the record encoding, see `packed`), in a single heap block that a slot
//! (24 bytes, with the earliest expiry) points at and a table of slot numbers finds; reads
//! decode it. That keeps a 1 KiB item near its own size, as memcached's slabs do, where a
//! map of decoded records spent five allocations on it (docs/design.md, "Memory engine").
//!
//! With a `memory_limit`, a write that takes the total over the limit evicts by CLOCK
//! (second chance): a read or an overwrite marks an item referenced, the shard's hand
//! clears a mark or evicts an unmarked item, first in the writer's shard, then in the
//! others.

use super::digest::Digests;
use super::{Change, Commit, Store, StoreStats, Versions};
use crate::keyspace::key_hash;
use allocator_api2::alloc::System;
use allocator_api2::boxed::Box as SystemBox;
use allocator_api2::vec::Vec as SystemVec;
use bytes::Bytes;
use hashbrown::HashTable;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

mod packed;

const SHARDS: usize = 64;
const SHARD_SHIFT: u32 = 32 - SHARDS.trailing_zeros();

/// An item's header: referenced mark (1 byte), key length (2). Its expiry is in its slot.
const HEADER: usize = 3;

/// One key and its versions, packed. The empty item marks a free slot.
///
/// Items (and the slots and tables) live in the C library's malloc, whatever the process's
/// global allocator: it rounds a block up to 16 bytes and returns a grown table's old pages,
/// where a size-class allocator (mimalloc, the binary's) rounds a 1 KiB item up by a quarter.
struct Item(SystemBox<[u8], System>);

impl Default for Item {
    fn default() -> Item {
        Item(SystemVec::new_in(System).into_boxed_slice())
    }
}

impl Item {
    fn new(key: &[u8], versions: &Versions, referenced: bool) -> Item {
        let mut item = Item::default();
        item.repack(key, versions, referenced);
        item
    }

    /// Makes this item hold `key` and `versions`. Encoded in a scratch buffer, then copied
    /// into a block of exactly its size (a block allocated larger and shrunk leaves a
    /// sliver malloc rarely reuses): this item's own block when the size is unchanged, as
    /// an overwrite of a key with a value of the same length mostly is, saving a malloc
    /// and a free.
    fn repack(&mut self, key: &[u8], versions: &Versions, referenced: bool) {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|packed| {
            packed.clear();
            packed.push(u8::from(referenced));
            packed.extend_from_slice(&(key.len() as u16).to_le_bytes());
            packed.extend_from_slice(key);
            packed::pack(versions, packed);
            if packed.len() == self.0.len() {
                self.0.copy_from_slice(packed);
            } else {
                let mut block = SystemVec::with_capacity_in(packed.len(), System);
                block.extend_from_slice(packed);
                self.0 = block.into_boxed_slice();
            }
        })
    }

    fn is_free(&self) -> bool {
        self.0.is_empty()
    }

    fn key(&self) -> &[u8] {
        match &*self.0 {
            [_, a, b, rest @ ..] => &rest[..usize::from(u16::from_le_bytes([*a, *b]))],
            _ => &[],
        }
    }

    fn versions(&self) -> Versions {
        let start = HEADER + self.key().len();
        // Written by `new`, so it unpacks.
        packed::unpack(&self.0[start..]).unwrap_or_default()
    }

    fn referenced(&self) -> bool {
        self.0[0] != 0
    }

    fn mark(&mut self, referenced: bool) {
        self.0[0] = u8::from(referenced);
    }
}

struct Slot {
    item: Item,
    /// The key's ring hash: shard, bucket range and table position without rehashing.
    hash: u32,
    /// The earliest expiry of the item's versions, Unix seconds (0: none; past 2106, 2106).
    /// Here, in what was the slot's padding, the purge finds expired items by reading the
    /// slots in order instead of every item (a cache miss each, under the shard's lock).
    expires_at: u32,
}

impl Slot {
    fn new(item: Item, hash: u32, versions: &Versions) -> Slot {
        Slot {
            item,
            hash,
            expires_at: Slot::expiry_of(versions),
        }
    }

    fn expiry_of(versions: &Versions) -> u32 {
        u32::try_from(versions.earliest_expiry()).unwrap_or(u32::MAX)
    }

    fn any_expired(&self, now_secs: u64) -> bool {
        self.expires_at != 0 && u64::from(self.expires_at) <= now_secs
    }
}

/// One lock's worth of the store. Its byte count lives under the same lock, so the request
/// path touches no shared counter.
struct Shard {
    /// Slot numbers, found by key.
    table: HashTable<u32, System>,
    slots: SystemVec<Slot, System>,
    free: Vec<u32>,
    /// The CLOCK hand: the next slot eviction looks at.
    hand: usize,
    bytes: u64,
    /// Keys holding a live (non-tombstone) version: the `curr_items` stat.
    live_keys: u64,
}

/// The table's hash of ring hash `hash`: spread over 64 bits, since the table takes its
/// tag from the top bits and a shard's ring hashes share theirs.
fn table_hash(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Default for Shard {
    fn default() -> Shard {
        Shard {
            table: HashTable::new_in(System),
            slots: SystemVec::new_in(System),
            free: Vec::new(),
            hand: 0,
            bytes: 0,
            live_keys: 0,
        }
    }
}

impl Shard {
    fn find(&self, hash: u32, key: &[u8]) -> Option<usize> {
        let slots = &self.slots;
        (self.table)
            .find(table_hash(hash), |&at| slots[at as usize].item.key() == key)
            .map(|&at| at as usize)
    }

    fn insert(&mut self, slot: Slot) {
        let hash = slot.hash;
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = slot;
                at
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        (self.table).insert_unique(table_hash(hash), at, |&at| {
            table_hash(slots[at as usize].hash)
        });
    }

    /// Frees slot `at`, returning its item.
    fn remove_at(&mut self, at: usize) -> Item {
        let hash = table_hash(self.slots[at].hash);
        if let Ok(entry) = self.table.find_entry(hash, |&slot| slot as usize == at) {
            entry.remove();
        }
        self.free.push(at as u32);
        self.slots[at].expires_at = 0;
        std::mem::take(&mut self.slots[at].item)
    }
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
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
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
        // A panic while holding a shard cannot leave a half-written item (each change of
        // the table and slots is one call), so a poisoned lock is still usable.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `new` what `key` (at slot `at`, if it has one) holds in place of `old`: None
    /// removes it. Accounts for the change.
    fn set(
        &self,
        shard: &mut Shard,
        hash: u32,
        key: &[u8],
        at: Option<usize>,
        old: Option<&Versions>,
        new: Option<&Versions>,
    ) {
        let bytes = |v: Option<&Versions>| v.map_or(0, |v| v.footprint(key) as u64);
        let live = |v: Option<&Versions>| u64::from(v.is_some_and(Versions::has_live));
        shard.live_keys = shard.live_keys + live(new) - live(old);
        self.digests.change(hash, key, old, new);
        self.charge_bytes(shard, bytes(new), bytes(old));
        match (at, new) {
            // A key written again counts as used; a new key waits for its first read, so a
            // stream of new keys cannot clear every read key's mark.
            (Some(at), Some(new)) => {
                let slot = &mut shard.slots[at];
                slot.item.repack(key, new, true);
                slot.expires_at = Slot::expiry_of(new);
            }
            (Some(at), None) => drop(shard.remove_at(at)),
            (None, Some(new)) => shard.insert(Slot::new(Item::new(key, new, false), hash, new)),
            (None, None) => {}
        }
    }

    fn charge_bytes(&self, shard: &mut Shard, added: u64, removed: u64) {
        shard.bytes = shard.bytes + added - removed;
        if added != removed {
            self.total_bytes
                .fetch_add(added.wrapping_sub(removed), Ordering::Relaxed);
        }
    }

    /// Drops the expired versions of the key at slot `at`: what is left, if anything, and
    /// how many versions went. Expiry is not a use, so the item keeps its mark.
    fn prune(
        &self,
        shard: &mut Shard,
        hash: u32,
        key: &[u8],
        at: usize,
        now_secs: u64,
    ) -> (Option<Versions>, usize) {
        let referenced = shard.slots[at].item.referenced();
        let old = shard.slots[at].item.versions();
        let mut kept = old.clone();
        let any = kept.retain_unexpired(now_secs);
        let dropped = old.0.len() - if any { kept.0.len() } else { 0 };
        let kept = any.then_some(kept);
        self.set(shard, hash, key, Some(at), Some(&old), kept.as_ref());
        if kept.is_some() {
            shard.slots[at].item.mark(referenced);
        }
        (kept, dropped)
    }

    fn limit(&self) -> u64 {
        self.limit_bytes.load(Ordering::Relaxed)
    }

    fn over_limit(&self) -> bool {
        let limit = self.limit();
        limit != 0 && self.total_bytes.load(Ordering::Relaxed) > limit
    }

    /// Evicts from `shard` until under the limit, never the key just written (`keep`).
    fn evict_from(&self, shard: &mut Shard, keep: Option<&[u8]>) {
        // Two turns of the hand clear every mark once and then meet every unmarked item.
        let mut budget = 2 * shard.slots.len() + 1;
        while self.over_limit() && budget > 0 && !shard.slots.is_empty() {
            budget -= 1;
            let at = shard.hand % shard.slots.len();
            shard.hand = at + 1;
            let item = &mut shard.slots[at].item;
            if item.is_free() || Some(item.key()) == keep {
                continue;
            }
            if item.referenced() {
                item.mark(false);
                continue;
            }
            let hash = shard.slots[at].hash;
            let item = shard.remove_at(at);
            let versions = item.versions();
            let key = item.key();
            shard.live_keys -= u64::from(versions.has_live());
            self.digests.change(hash, key, Some(&versions), None);
            self.charge_bytes(shard, 0, versions.footprint(key) as u64);
            self.evictions.fetch_add(1, Ordering::Relaxed);
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
        let mut guard = self.lock(Self::shard_of(hash));
        let shard = &mut *guard;
        let at = shard.find(hash, key)?;
        let slot = &mut shard.slots[at];
        // The mark only matters when something may be evicted: without a limit, reads
        // write nothing.
        if self.limit() != 0 && !slot.item.referenced() {
            slot.item.mark(true);
        }
        if !slot.any_expired(now_secs) {
            return Some(slot.item.versions());
        }
        self.prune(shard, hash, key, at, now_secs).0
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
        let mut at = shard.find(hash, key);
        let current = match at {
            Some(slot) if shard.slots[slot].any_expired(now_secs) => {
                let (kept, _) = self.prune(shard, hash, key, slot, now_secs);
                at = at.filter(|_| kept.is_some());
                kept
            }
            Some(slot) => Some(shard.slots[slot].item.versions()),
            None => None,
        };
        match decide(current.as_ref()) {
            Change::Put(versions) => {
                self.set(shard, hash, key, at, current.as_ref(), Some(&versions))
            }
            Change::Remove => self.set(shard, hash, key, at, current.as_ref(), None),
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
            *shard = Shard::default();
        }
        self.digests.clear();
    }

    fn purge_expired(&self, now_secs: u64) -> u64 {
        let mut purged = 0;
        for index in 0..SHARDS {
            let mut guard = self.lock(index);
            let shard = &mut *guard;
            for at in 0..shard.slots.len() {
                let slot = &shard.slots[at];
                if slot.item.is_free() || !slot.any_expired(now_secs) {
                    continue;
                }
                let (hash, key) = (slot.hash, slot.item.key().to_vec());
                purged += self.prune(shard, hash, &key, at, now_secs).1 as u64;
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
            for slot in &shard.slots {
                if !slot.item.is_free() && (low..=high).contains(&slot.hash) {
                    let key = slot.item.key();
                    let fingerprint = super::digest::fingerprint(key, Some(&slot.item.versions()));
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
    fn eviction_keeps_the_limit_and_recently_read_keys() {
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

    #[test]
    fn an_item_keeps_its_key_and_versions_and_its_slot_the_earliest_expiry() {
        let key = vec![b'k'; 250];
        let mut versions = Versions::one(record("first", 300));
        versions.0.push(record("second", 0));
        versions.0.push(record("third", 200));
        let item = Item::new(&key, &versions, false);
        assert_eq!(item.key(), &key[..]);
        assert_eq!(item.versions(), versions);
        let slot = Slot::new(item, 7, &versions);
        assert!(!slot.any_expired(199));
        assert!(slot.any_expired(200));
        let never = Versions::one(record("v", 0));
        let empty_key = Slot::new(Item::new(b"", &never, true), 7, &never);
        assert_eq!(empty_key.item.key(), b"");
        assert!(!empty_key.any_expired(u64::MAX));
        // Past what 32 bits of seconds hold (2106): kept, as if expiring then.
        let far = Versions::one(record("v", u64::from(u32::MAX) + 10));
        let far_slot = Slot::new(Item::new(b"k", &far, true), 7, &far);
        assert!(!far_slot.any_expired(u64::from(u32::MAX) - 1));
        assert_eq!(
            far_slot.item.versions(),
            far,
            "the record keeps its own expiry"
        );
    }

    #[test]
    fn an_overwrite_of_the_same_size_reuses_the_block_and_changes_expiry_and_value() {
        let store = MemoryStore::new(0, 1024);
        let block_of = |key: &[u8]| {
            let hash = key_hash(key);
            let shard = store.lock(MemoryStore::shard_of(hash));
            let at = shard.find(hash, key).expect("stored");
            (shard.slots[at].item.0.as_ptr(), shard.slots[at].expires_at)
        };
        put(&store, "k", "first", 500);
        let (first, _) = block_of(b"k");
        put(&store, "k", "again", 600);
        assert_eq!(block_of(b"k"), (first, 600), "same size: the same block");
        assert_eq!(store.get(b"k", 100).unwrap().0[0].value, "again");
        put(&store, "k", "a longer value", 650);
        assert_eq!(block_of(b"k").1, 650);
        assert_eq!(store.get(b"k", 100).unwrap().0[0].value, "a longer value");
        assert_eq!(
            store.stats().bytes,
            (1 + 14 + super::super::RECORD_OVERHEAD) as u64
        );
        assert_eq!(
            store.get(b"k", 700),
            None,
            "expired by the slot's new expiry"
        );
    }

    #[test]
    fn freed_slots_are_reused_and_every_key_stays_findable() {
        let store = MemoryStore::new(0, 1024);
        for round in 0..3 {
            for i in 0..2000 {
                put(&store, &format!("k{i}"), &format!("v{round}.{i}"), 0);
            }
            for i in (0..2000).step_by(2) {
                let _ = store.update(format!("k{i}").as_bytes(), 100, &mut |_| Change::Remove);
            }
        }
        let slots: usize = (0..SHARDS).map(|i| store.lock(i).slots.len()).sum();
        assert!(slots <= 2000, "{slots} slots for at most 2000 keys");
        assert_eq!(store.stats().items, 1000);
        for i in 0..2000 {
            let found = store.get(format!("k{i}").as_bytes(), 100);
            assert_eq!(found.is_some(), i % 2 == 1, "k{i}");
        }
    }

    #[test]
    fn expiry_is_not_a_use_and_purge_counts_the_dropped_versions() {
        let store = MemoryStore::new(1 << 30, 1024);
        let mut versions = Versions::one(record("stale", 150));
        versions.0.push(record("live", 0));
        let _ = store.update(b"k", 100, &mut |_| Change::Put(versions.clone()));
        assert_eq!(store.purge_expired(200), 1);
        assert_eq!(store.purge_expired(200), 0);
        let hash = key_hash(b"k");
        let shard = store.lock(MemoryStore::shard_of(hash));
        let at = shard.find(hash, b"k").expect("the live version stays");
        assert!(
            !shard.slots[at].item.referenced(),
            "purging marked the item used"
        );
        assert_eq!(shard.slots[at].item.versions().0.len(), 1);
    }
}

//! One behavioural suite, run against every engine: what every `Store` must do, whatever
//! keeps the records.

use super::disk::{DiskStore, Durability};
use super::memory::MemoryStore;
use super::vlog::{self, LogStore};
use super::{Change, Commit, Store, StoreStats, RECORD_OVERHEAD};
use crate::record::{test_record as record, Record, Versions};
use bytes::Bytes;
use std::time::{Duration, Instant};

fn block(commit: Commit) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(commit.wait()).unwrap();
}

fn change(store: &dyn Store, key: &str, now: u64, change: impl Fn() -> Change) {
    block(store.update(key.as_bytes(), now, &mut |_| change()));
}

fn put(store: &dyn Store, key: &str, value: &str, expires_at: u64) {
    let versions = Versions::one(record(value, expires_at));
    change(store, key, 100, || Change::Put(versions.clone()));
}

/// The disk engine settles its counters when a background commit lands.
fn eventually(store: &dyn Store, wanted: impl Fn(&StoreStats) -> bool) -> StoreStats {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = store.stats();
        if wanted(&stats) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn put_get_remove_and_accounting(store: &dyn Store) {
    put(store, "a", "hello", 0);
    put(store, "a", "hi", 0);
    assert_eq!(store.get(b"a", 100).unwrap().0[0].value, "hi");
    let stats = store.stats();
    let footprint = (1 + 2 + RECORD_OVERHEAD) as u64;
    assert_eq!((stats.items, stats.bytes), (1, footprint));
    change(store, "a", 100, || Change::Remove);
    assert_eq!(store.get(b"a", 100), None);
    assert_eq!(store.stats().bytes, 0);
}

fn expiry_is_lazy_and_purged(store: &dyn Store) {
    put(store, "short", "x", 150);
    put(store, "long", "x", 0);
    assert!(store.get(b"short", 149).is_some());
    assert!(store.get(b"short", 150).is_none());
    put(store, "short2", "x", 150);
    // The memory engine drops an expired record on the read that finds it; the disk
    // engine leaves it to the purge.
    assert!((1..=2).contains(&store.purge_expired(151)));
    assert_eq!(eventually(store, |s| s.items == 1).items, 1);
    let mut seen = None;
    block(store.update(b"short2", 151, &mut |current| {
        seen = Some(current.is_some());
        Change::Keep
    }));
    assert_eq!(seen, Some(false));
}

fn tombstones_and_siblings_are_kept_but_not_counted_as_items(store: &dyn Store) {
    let tombstone = Record {
        tombstone: true,
        ..record("", 200)
    };
    let siblings = Versions(vec![record("a", 0), record("b", 150)]);
    change(store, "k", 100, || Change::Put(siblings.clone()));
    assert_eq!(store.stats().items, 1);
    // One sibling expires; the other stays.
    assert_eq!(store.get(b"k", 160).unwrap().0.len(), 1);
    change(store, "k", 160, || {
        Change::Put(Versions::one(tombstone.clone()))
    });
    assert_eq!(store.stats().items, 0);
    assert!(store.get(b"k", 160).is_some_and(|v| !v.has_live()));
    assert_eq!(store.purge_expired(200), 1);
    let stats = eventually(store, |s| s.items == 0 && s.bytes == 0);
    assert_eq!((stats.items, stats.bytes, stats.evictions), (0, 0, 0));
}

fn clear_empties_everything(store: &dyn Store) {
    for i in 0..100 {
        put(store, &i.to_string(), "x", 0);
    }
    store.clear();
    let stats = eventually(store, |s| s.items == 0);
    assert_eq!((stats.items, stats.bytes), (0, 0));
    assert_eq!(store.get(b"7", 100), None);
    assert!(store.digests().all().iter().all(|&d| d == 0));
}

/// The same writes give the same digests and bucket listings on either engine: anti-entropy
/// between a memory node and a disk node compares like with like.
fn digests_and_bucket_listings(store: &dyn Store) -> (Vec<u64>, Vec<(Bytes, u64)>) {
    for i in 0..200 {
        put(store, &format!("key{i}"), &format!("value{i}"), 0);
    }
    for i in (0..200).step_by(3) {
        let tombstone = Record {
            tombstone: true,
            ..record("", 0)
        };
        change(store, &format!("key{i}"), 100, || {
            Change::Put(Versions::one(tombstone.clone()))
        });
    }
    // Removed outright, tombstones among them.
    for i in (0..200).step_by(7) {
        change(store, &format!("key{i}"), 100, || Change::Remove);
    }
    let (low, high) = store.digests().hash_range(5);
    let mut listed = store.keys_in(low, high);
    listed.sort();
    (store.digests().all(), listed)
}

fn memory() -> MemoryStore {
    MemoryStore::new(0, 64)
}

fn disk(dir: &tempfile::TempDir) -> DiskStore {
    DiskStore::open(dir.path(), Durability::Fsync, Duration::from_secs(1), 64).unwrap()
}

fn log(dir: &tempfile::TempDir) -> LogStore {
    let settings = vlog::Settings::new(Durability::Fsync, Duration::from_secs(1), 64);
    LogStore::open(dir.path(), settings).unwrap()
}

macro_rules! every_engine {
    ($($case:ident),* $(,)?) => {
        mod memory_engine {
            $(#[test]
            fn $case() {
                super::$case(&super::memory());
            })*
        }
        mod disk_engine {
            $(#[test]
            fn $case() {
                let dir = tempfile::tempdir().unwrap();
                super::$case(&super::disk(&dir));
            })*
        }
        mod log_engine {
            $(#[test]
            fn $case() {
                let dir = tempfile::tempdir().unwrap();
                super::$case(&super::log(&dir));
            })*
        }
    };
}

every_engine!(
    put_get_remove_and_accounting,
    expiry_is_lazy_and_purged,
    tombstones_and_siblings_are_kept_but_not_counted_as_items,
    clear_empties_everything,
);

#[test]
fn every_engine_agrees_on_digests_and_bucket_listings() {
    let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (memory_digests, memory_keys) = digests_and_bucket_listings(&memory());
    let (disk_digests, disk_keys) = digests_and_bucket_listings(&disk(&dir));
    let (log_digests, log_keys) = digests_and_bucket_listings(&log(&other));
    assert!(memory_digests.iter().any(|&d| d != 0));
    assert!(!memory_keys.is_empty());
    assert_eq!(memory_digests, disk_digests);
    assert_eq!(memory_keys, disk_keys);
    assert_eq!(memory_digests, log_digests);
    assert_eq!(memory_keys, log_keys);
}

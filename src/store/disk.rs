//! The disk engine (Kai's "dets", without its 2 GB cap, per-write fsync or long repair): a
//! redb database `kai.redb` in data_dir.
//!
//! Writes take the key's shard lock, decide, put the new versions in a small in-memory
//! overlay (so reads see them at once) and queue them for one committer thread. The
//! committer applies everything queued in one transaction and one fsync (group commit), then
//! resolves each writer's `Commit`: a client hears STORED only once its write is durable.
//! Records are keyed by (ring hash, key), so one bucket is one contiguous range; an expiry
//! index lets the purge find expired records without scanning; item and byte counts are
//! kept in the same transactions, so `stats` and startup never count; so are the per-bucket
//! digests anti-entropy compares.

use super::digest::{self, Delta, Digests, Summary};
use super::{Change, Commit, Store, StoreError, StoreStats, Versions};
use crate::keyspace::key_hash;
use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// expires_at (8 bytes BE) ‖ record key → ().
const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// bucket → its digest summary (16 bytes); meta "digest_buckets" says for which bucket count.
const DIGESTS: TableDefinition<u32, &[u8]> = TableDefinition::new("digests");
const SHARDS: usize = 64;
/// Writes one commit takes at most, so a burst cannot grow one transaction without bound.
const MAX_BATCH: usize = 4096;
pub const FILE_NAME: &str = "kai.redb";

pub use super::Durability;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}: in use by another process (is another kai running on this data_dir?)")]
    InUse(PathBuf),
    #[error("{0}: cannot open the store ({1}); the file is left untouched: move it away to start empty, or inspect it with `kai store check`")]
    Unusable(PathBuf, String),
}

/// One queued write: the record key, its new versions (None = remove), and what the
/// counters and the expiry index must learn.
struct Op {
    key: Vec<u8>,
    seq: u64,
    shard: usize,
    new: Option<Versions>,
    old_expiries: Vec<u64>,
    items_delta: i64,
    bytes_delta: i64,
    digest: Delta,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

enum Work {
    Write(Op),
    Clear(oneshot::Sender<Result<(), StoreError>>),
}

#[derive(Default)]
struct Shard {
    /// Written but not yet committed: what reads must see meanwhile.
    pending: HashMap<Vec<u8>, (u64, Option<Versions>)>,
    seq: u64,
    /// flush_all calls not yet committed: until then the database reads as empty.
    clears_pending: u32,
}

pub struct DiskStore {
    db: Arc<Database>,
    shards: Arc<Vec<Mutex<Shard>>>,
    /// None once dropping: the committer then finishes what is queued and exits.
    queue: Mutex<Option<mpsc::Sender<Work>>>,
    committer: Option<std::thread::JoinHandle<()>>,
    items: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    digests: Digests,
    /// The record format written (`record::format`): the previous release's until the
    /// upgrade is finalised.
    record_format: Arc<AtomicU8>,
}

fn record_key(key: &[u8]) -> Vec<u8> {
    record_key_hashed(key, key_hash(key))
}

fn record_key_hashed(key: &[u8], hash: u32) -> Vec<u8> {
    debug_assert_eq!(hash, key_hash(key));
    let mut out = Vec::with_capacity(4 + key.len());
    out.extend_from_slice(&hash.to_be_bytes());
    out.extend_from_slice(key);
    out
}

fn expiry_key(expires_at: u64, record_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + record_key.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(record_key);
    out
}

fn expiries(versions: &Versions) -> Vec<u64> {
    let mut out: Vec<u64> = versions
        .0
        .iter()
        .map(|r| r.expires_at)
        .filter(|&e| e != 0)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

fn decode(bytes: &[u8]) -> Option<Versions> {
    crate::record::format::decode(bytes)
}

impl DiskStore {
    /// Opens (or creates) `dir/kai.redb`. Never overwrites a file it cannot read.
    pub fn open(
        dir: &Path,
        durability: Durability,
        flush_interval: Duration,
        buckets: u32,
    ) -> Result<DiskStore, OpenError> {
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse(path.clone()),
            other => OpenError::Unusable(path.clone(), other.to_string()),
        })?;
        let unusable = |e: &dyn std::fmt::Display| OpenError::Unusable(path.clone(), e.to_string());
        // Create the tables (a no-op when they exist) and read the kept counts.
        let (items, bytes) = {
            let txn = db.begin_write().map_err(|e| unusable(&e))?;
            let counts = {
                txn.open_table(RECORDS).map_err(|e| unusable(&e))?;
                txn.open_table(EXPIRY).map_err(|e| unusable(&e))?;
                txn.open_table(DIGESTS).map_err(|e| unusable(&e))?;
                let meta = txn.open_table(META).map_err(|e| unusable(&e))?;
                let get = |name| meta.get(name).ok().flatten().map_or(0, |v| v.value());
                (get("items"), get("bytes"))
            };
            txn.commit().map_err(|e| unusable(&e))?;
            counts
        };
        let digests = load_digests(&db, buckets).map_err(|e| unusable(&e))?;
        let db = Arc::new(db);
        let shards: Arc<Vec<Mutex<Shard>>> =
            Arc::new((0..SHARDS).map(|_| Mutex::default()).collect());
        let (queue, work) = mpsc::channel();
        let record_format = Arc::new(AtomicU8::new(crate::record::format::LEGACY));
        let committer = Committer {
            db: Arc::clone(&db),
            shards: Arc::clone(&shards),
            durability,
            flush_interval,
            items,
            bytes,
            record_format: Arc::clone(&record_format),
        };
        let committer = std::thread::Builder::new()
            .name("kai-committer".into())
            .spawn(move || committer.run(work))
            .map_err(|e| unusable(&e))?;
        Ok(DiskStore {
            db,
            shards,
            queue: Mutex::new(Some(queue)),
            committer: Some(committer),
            items: Arc::new(AtomicU64::new(items)),
            bytes: Arc::new(AtomicU64::new(bytes)),
            digests,
            record_format,
        })
    }

    fn shard_of(record_key: &[u8]) -> usize {
        // The ring hash prefix spreads keys evenly already.
        u32::from_be_bytes(record_key[..4].try_into().expect("hash prefix")) as usize % SHARDS
    }

    /// The committed versions of a record key.
    fn load(&self, record_key: &[u8]) -> Result<Option<Versions>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::disk)?;
        let table = txn.open_table(RECORDS).map_err(StoreError::disk)?;
        let found = table.get(record_key).map_err(StoreError::disk)?;
        Ok(found.and_then(|v| decode(v.value())))
    }

    fn current(&self, shard: &Shard, record_key: &[u8]) -> Option<Versions> {
        match shard.pending.get(record_key) {
            Some((_, versions)) => versions.clone(),
            None if shard.clears_pending > 0 => None,
            None => self.load(record_key).unwrap_or_else(|err| {
                log::error!("disk store read failed: {err}");
                None
            }),
        }
    }

    fn send(&self, work: Work) {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.as_ref().is_none_or(|q| q.send(work).is_err()) {
            log::error!("disk store committer is gone: writes are not persisted");
        }
    }

    /// Record keys whose expiry passed (at most `limit`), from the expiry index.
    fn expired_keys(&self, now_secs: u64, limit: usize) -> Vec<Vec<u8>> {
        let Ok(txn) = self.db.begin_read() else {
            return Vec::new();
        };
        let Ok(table) = txn.open_table(EXPIRY) else {
            return Vec::new();
        };
        let end = expiry_key(now_secs + 1, &[]);
        let Ok(range) = table.range::<&[u8]>(..end.as_slice()) else {
            return Vec::new();
        };
        range
            .filter_map(Result::ok)
            .take(limit)
            .map(|(k, _)| k.value()[8..].to_vec())
            .collect()
    }

    fn update_record(
        &self,
        record_key: &[u8],
        now_secs: u64,
        decide: &mut dyn FnMut(Option<&Versions>) -> Change,
    ) -> Commit {
        let index = Self::shard_of(record_key);
        let mut shard = lock(&self.shards[index]);
        let stored = self.current(&shard, record_key);
        let mut live = stored.clone();
        let pruned = live.as_mut().is_some_and(|v| v.any_expired(now_secs));
        if let Some(versions) = &mut live {
            if !versions.retain_unexpired(now_secs) {
                live = None;
            }
        }
        let new = match decide(live.as_ref()) {
            Change::Put(versions) => Some(versions),
            Change::Remove => None,
            Change::Keep if pruned => live,
            Change::Keep => return Commit::done(),
        };
        let (old_items, old_bytes) = counts(stored.as_ref(), record_key);
        let (new_items, new_bytes) = counts(new.as_ref(), record_key);
        let digest = self.digests.delta(
            record_hash(record_key),
            &record_key[4..],
            stored.as_ref(),
            new.as_ref(),
        );
        self.digests.record(&digest);
        shard.seq += 1;
        let seq = shard.seq;
        shard
            .pending
            .insert(record_key.to_vec(), (seq, new.clone()));
        drop(shard);
        apply_delta(&self.items, new_items - old_items);
        apply_delta(&self.bytes, new_bytes - old_bytes);
        let (done, commit) = oneshot::channel();
        self.send(Work::Write(Op {
            key: record_key.to_vec(),
            seq,
            shard: index,
            new,
            old_expiries: stored.as_ref().map(expiries).unwrap_or_default(),
            items_delta: new_items - old_items,
            bytes_delta: new_bytes - old_bytes,
            digest,
            done: Some(done),
        }));
        Commit::pending(commit)
    }

    /// Offline integrity check of `dir/kai.redb` (`kai store check`).
    pub fn check(dir: &Path) -> Result<String, StoreError> {
        let path = dir.join(FILE_NAME);
        let mut db = Database::open(&path).map_err(|e| file_error(&path, e))?;
        let clean = db.check_integrity().map_err(|e| file_error(&path, e))?;
        let txn = db.begin_read().map_err(StoreError::disk)?;
        let records = txn.open_table(RECORDS).map_err(StoreError::disk)?;
        let meta = txn.open_table(META).map_err(StoreError::disk)?;
        let (mut keys, mut undecodable) = (0u64, 0u64);
        for entry in records.iter().map_err(StoreError::disk)? {
            let (_, value) = entry.map_err(StoreError::disk)?;
            keys += 1;
            if decode(value.value()).is_none() {
                undecodable += 1;
            }
        }
        let kept = |name| meta.get(name).ok().flatten().map_or(0, |v| v.value());
        let report = format!(
            "{}: {} ({keys} keys, {} live items and {} bytes recorded, {undecodable} undecodable records)\n",
            path.display(),
            if clean { "consistent" } else { "repaired" },
            kept("items"),
            kept("bytes"),
        );
        if undecodable > 0 {
            return Err(StoreError::Damaged(report));
        }
        Ok(report)
    }

    /// Every key and its versions in `dir/kai.redb`, read offline (migrating to the log).
    pub fn export(dir: &Path, each: &mut dyn FnMut(&[u8], Versions)) -> Result<u64, StoreError> {
        let path = dir.join(FILE_NAME);
        let db = Database::open(&path).map_err(|e| file_error(&path, e))?;
        let txn = db.begin_read().map_err(StoreError::disk)?;
        let records = txn.open_table(RECORDS).map_err(StoreError::disk)?;
        let mut exported = 0;
        for entry in records.iter().map_err(StoreError::disk)? {
            let (key, value) = entry.map_err(StoreError::disk)?;
            let record_key = key.value();
            let versions = decode(value.value()).ok_or_else(|| {
                StoreError::Damaged(format!(
                    "{}: an undecodable record (run `kai store check`)",
                    path.display()
                ))
            })?;
            each(&record_key[4..], versions);
            exported += 1;
        }
        Ok(exported)
    }

    /// Offline compaction (`kai store compact`): returns the file size before and after.
    pub fn compact(dir: &Path) -> Result<(u64, u64), StoreError> {
        let path = dir.join(FILE_NAME);
        let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let before = size();
        let mut db = Database::open(&path).map_err(|e| file_error(&path, e))?;
        while db.compact().map_err(|e| file_error(&path, e))? {}
        drop(db);
        Ok((before, size()))
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

fn file_error(path: &Path, error: impl Into<redb::Error>) -> StoreError {
    StoreError::File {
        path: path.to_path_buf(),
        source: Arc::new(error.into()),
    }
}

fn record_hash(record_key: &[u8]) -> u32 {
    u32::from_be_bytes(record_key[..4].try_into().expect("hash prefix"))
}

/// The kept digests, or (first start, or another bucket count) digests rebuilt by one scan.
fn load_digests(db: &Database, buckets: u32) -> Result<Digests, StoreError> {
    let digests = Digests::new(buckets);
    let txn = db.begin_write().map_err(StoreError::disk)?;
    {
        let mut meta = txn.open_table(META).map_err(StoreError::disk)?;
        let mut table = txn.open_table(DIGESTS).map_err(StoreError::disk)?;
        let kept_for = meta.get("digest_buckets").map_err(StoreError::disk)?;
        if kept_for.map(|v| v.value()) == Some(u64::from(digests.buckets())) {
            for entry in table.iter().map_err(StoreError::disk)? {
                let (bucket, summary) = entry.map_err(StoreError::disk)?;
                if let Some(summary) = Summary::decode(summary.value()) {
                    if bucket.value() < digests.buckets() {
                        digests.set(bucket.value(), summary);
                    }
                }
            }
            return Ok(digests);
        }
        let records = txn.open_table(RECORDS).map_err(StoreError::disk)?;
        for entry in records.iter().map_err(StoreError::disk)? {
            let (key, value) = entry.map_err(StoreError::disk)?;
            let record_key = key.value();
            let versions = decode(value.value());
            digests.change(
                record_hash(record_key),
                &record_key[4..],
                None,
                versions.as_ref(),
            );
        }
        table.retain(|_, _| false).map_err(StoreError::disk)?;
        for bucket in 0..digests.buckets() {
            let summary = digests.summary(bucket);
            if summary != Summary::default() {
                table
                    .insert(bucket, summary.encode().as_slice())
                    .map_err(StoreError::disk)?;
            }
        }
        meta.insert("digest_buckets", u64::from(digests.buckets()))
            .map_err(StoreError::disk)?;
    }
    txn.commit().map_err(StoreError::disk)?;
    Ok(digests)
}

fn counts(versions: Option<&Versions>, record_key: &[u8]) -> (i64, i64) {
    let key = &record_key[4..];
    versions.map_or((0, 0), |v| {
        (i64::from(v.has_live()), v.footprint(key) as i64)
    })
}

fn apply_delta(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

impl Store for DiskStore {
    /// Release 0.1.0's engine keys its table by the key alone.
    fn get_hashed(&self, key: &[u8], _hash: u32, now_secs: u64) -> Option<Versions> {
        let record_key = record_key(key);
        let shard = lock(&self.shards[Self::shard_of(&record_key)]);
        let mut versions = self.current(&shard, &record_key)?;
        drop(shard);
        // Expired versions are hidden here and reclaimed by the purge.
        versions.retain_unexpired(now_secs).then_some(versions)
    }

    fn update_hashed(
        &self,
        key: &[u8],
        hash: u32,
        now_secs: u64,
        decide: &mut dyn FnMut(Option<&Versions>) -> Change,
    ) -> Commit {
        self.update_record(&record_key_hashed(key, hash), now_secs, decide)
    }

    fn clear(&self) {
        // Hold every shard so no write slips between the clear and the reset counters.
        let mut guards: Vec<_> = self.shards.iter().map(lock).collect();
        for shard in &mut guards {
            shard.pending.clear();
            shard.clears_pending += 1;
        }
        let (done, _ignored) = oneshot::channel();
        self.send(Work::Clear(done));
        self.items.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.digests.clear();
    }

    fn purge_expired(&self, now_secs: u64) -> u64 {
        let mut purged = 0;
        loop {
            let keys = self.expired_keys(now_secs, 1024);
            if keys.is_empty() {
                return purged;
            }
            let batch = keys.len();
            for key in keys {
                // Keep: the update drops the expired versions on its own.
                drop(self.update_record(&key, now_secs, &mut |_| Change::Keep));
                purged += 1;
            }
            if batch < 1024 {
                return purged;
            }
            // Let the committer catch up before the index is read again.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn set_record_format(&self, format: u8) {
        self.record_format.store(format, Ordering::Relaxed);
    }

    fn digests(&self) -> &Digests {
        &self.digests
    }

    fn keys_in(&self, low: u32, high: u32) -> Vec<(Bytes, u64)> {
        let mut found: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
        let mut cleared = false;
        // Committed records first, then the overlay's newer state on top.
        let committed = || -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
            let txn = self.db.begin_read().map_err(StoreError::disk)?;
            let table = txn.open_table(RECORDS).map_err(StoreError::disk)?;
            let start = low.to_be_bytes();
            let range = match high.checked_add(1) {
                Some(end) => table.range::<&[u8]>(&start[..]..&end.to_be_bytes()[..]),
                None => table.range::<&[u8]>(&start[..]..),
            }
            .map_err(StoreError::disk)?;
            let mut out = Vec::new();
            for entry in range {
                let (key, value) = entry.map_err(StoreError::disk)?;
                let record_key = key.value().to_vec();
                let versions = decode(value.value());
                out.push((
                    record_key.clone(),
                    digest::fingerprint(&record_key[4..], versions.as_ref()),
                ));
            }
            Ok(out)
        };
        for shard in self.shards.iter() {
            cleared |= lock(shard).clears_pending > 0;
        }
        if !cleared {
            match committed() {
                Ok(records) => found.extend(records),
                Err(err) => log::error!("disk store scan failed: {err}"),
            }
        }
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for (record_key, (_, versions)) in &shard.pending {
                if (low..=high).contains(&record_hash(record_key)) {
                    match versions {
                        Some(v) => {
                            let print = digest::fingerprint(&record_key[4..], Some(v));
                            found.insert(record_key.clone(), print)
                        }
                        None => found.remove(record_key),
                    };
                }
            }
        }
        (found.into_iter())
            .map(|(record_key, print)| (Bytes::copy_from_slice(&record_key[4..]), print))
            .collect()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            items: self.items.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }
}

struct Committer {
    db: Arc<Database>,
    shards: Arc<Vec<Mutex<Shard>>>,
    durability: Durability,
    flush_interval: Duration,
    items: u64,
    bytes: u64,
    record_format: Arc<AtomicU8>,
}

impl Committer {
    fn run(mut self, work: mpsc::Receiver<Work>) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        loop {
            let first = match self.durability {
                Durability::Periodic if unsynced => {
                    let wait = self.flush_interval.saturating_sub(last_sync.elapsed());
                    match work.recv_timeout(wait) {
                        Ok(first) => Some(first),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            // Closing: make the last periodic window durable.
                            let _ = self.commit(&mut [], true);
                            return;
                        }
                    }
                }
                _ => match work.recv() {
                    Ok(first) => Some(first),
                    Err(_) => return,
                },
            };
            let mut batch: Vec<Work> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match work.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let sync =
                self.durability == Durability::Fsync || last_sync.elapsed() >= self.flush_interval;
            let result = self.commit(&mut batch, sync);
            if sync {
                last_sync = Instant::now();
                unsynced = false;
            } else {
                unsynced = true;
            }
            if let Err(err) = &result {
                log::error!("disk store commit failed: {err}");
            }
            self.finish(batch, result);
        }
    }

    fn commit(&mut self, batch: &mut [Work], sync: bool) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(StoreError::disk)?;
        txn.set_durability(if sync {
            redb::Durability::Immediate
        } else {
            redb::Durability::Eventual
        });
        let (mut items, mut bytes) = (self.items as i64, self.bytes as i64);
        // One summary update per bucket touched, however many writes it took.
        let mut digest_deltas: HashMap<u32, Delta> = HashMap::new();
        {
            let mut digests = txn.open_table(DIGESTS).map_err(StoreError::disk)?;
            let mut records = txn.open_table(RECORDS).map_err(StoreError::disk)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(StoreError::disk)?;
            for work in batch.iter() {
                match work {
                    Work::Clear(_) => {
                        records.retain(|_, _| false).map_err(StoreError::disk)?;
                        expiry.retain(|_, _| false).map_err(StoreError::disk)?;
                        digests.retain(|_, _| false).map_err(StoreError::disk)?;
                        digest_deltas.clear();
                        (items, bytes) = (0, 0);
                    }
                    Work::Write(op) => {
                        for at in &op.old_expiries {
                            expiry
                                .remove(expiry_key(*at, &op.key).as_slice())
                                .map_err(StoreError::disk)?;
                        }
                        match &op.new {
                            Some(versions) => {
                                let format = self.record_format.load(Ordering::Relaxed);
                                let encoded = crate::record::format::encode_as(versions, format)
                                    .map_err(StoreError::Encode)?;
                                records
                                    .insert(op.key.as_slice(), encoded.as_slice())
                                    .map_err(StoreError::disk)?;
                                for at in expiries(versions) {
                                    expiry
                                        .insert(expiry_key(at, &op.key).as_slice(), ())
                                        .map_err(StoreError::disk)?;
                                }
                            }
                            None => {
                                records
                                    .remove(op.key.as_slice())
                                    .map_err(StoreError::disk)?;
                            }
                        }
                        items += op.items_delta;
                        bytes += op.bytes_delta;
                        if !op.digest.is_empty() {
                            (digest_deltas.entry(op.digest.bucket))
                                .or_insert_with(|| Delta {
                                    bucket: op.digest.bucket,
                                    ..Delta::default()
                                })
                                .absorb(&op.digest);
                        }
                    }
                }
            }
            for (bucket, delta) in digest_deltas {
                let kept = digests.get(bucket).map_err(StoreError::disk)?;
                let mut summary = kept
                    .and_then(|v| Summary::decode(v.value()))
                    .unwrap_or_default();
                summary.apply(&delta);
                digests
                    .insert(bucket, summary.encode().as_slice())
                    .map_err(StoreError::disk)?;
            }
            let mut meta = txn.open_table(META).map_err(StoreError::disk)?;
            meta.insert("items", items.max(0) as u64)
                .map_err(StoreError::disk)?;
            meta.insert("bytes", bytes.max(0) as u64)
                .map_err(StoreError::disk)?;
        }
        txn.commit().map_err(StoreError::disk)?;
        (self.items, self.bytes) = (items.max(0) as u64, bytes.max(0) as u64);
        Ok(())
    }

    /// Drops committed entries from the overlay (unless rewritten since) and answers the
    /// writers.
    fn finish(&self, batch: Vec<Work>, result: Result<(), StoreError>) {
        for work in batch {
            match work {
                Work::Clear(done) => {
                    for shard in self.shards.iter() {
                        let mut shard = lock(shard);
                        shard.clears_pending = shard.clears_pending.saturating_sub(1);
                    }
                    let _ = done.send(result.clone());
                }
                Work::Write(mut op) => {
                    if result.is_ok() {
                        let mut shard = lock(&self.shards[op.shard]);
                        if shard
                            .pending
                            .get(&op.key)
                            .is_some_and(|(seq, _)| *seq == op.seq)
                        {
                            shard.pending.remove(&op.key);
                        }
                    }
                    if let Some(done) = op.done.take() {
                        let _ = done.send(result.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(value: &str, expires_at: u64) -> Versions {
        Versions::one(crate::record::test_record(value, expires_at))
    }

    fn put(store: &DiskStore, key: &str, value: &str, expires_at: u64) -> Commit {
        let v = versions(value, expires_at);
        store.update(key.as_bytes(), 100, &mut |_| Change::Put(v.clone()))
    }

    fn block(commit: Commit) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(commit.wait()).unwrap();
    }

    #[test]
    fn writes_survive_reopen_with_exact_counts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store =
                DiskStore::open(dir.path(), Durability::Fsync, Duration::from_secs(1), 1024)
                    .unwrap();
            block(put(&store, "a", "one", 0));
            block(put(&store, "b", "two", 0));
            block(store.update(b"a", 100, &mut |_| Change::Remove));
            assert_eq!(store.stats().items, 1);
            assert_eq!(store.get(b"b", 100).unwrap().0[0].value, "two");
        }
        let store =
            DiskStore::open(dir.path(), Durability::Fsync, Duration::from_secs(1), 1024).unwrap();
        assert_eq!(store.get(b"a", 100), None);
        assert_eq!(store.get(b"b", 100).unwrap().0[0].flags, 3);
        let stats = store.stats();
        assert_eq!(
            (stats.items, stats.bytes),
            (1, (1 + 3 + crate::store::RECORD_OVERHEAD) as u64)
        );
    }

    #[test]
    fn expired_records_are_purged_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            DiskStore::open(dir.path(), Durability::Fsync, Duration::from_secs(1), 1024).unwrap();
        block(put(&store, "short", "x", 150));
        block(put(&store, "long", "x", 0));
        assert!(store.get(b"short", 149).is_some());
        assert!(store.get(b"short", 150).is_none());
        assert_eq!(store.purge_expired(151), 1);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(store.stats().items, 1);
        assert!(store.expired_keys(10_000, 10).is_empty());
    }

    #[test]
    fn a_second_opener_and_a_foreign_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first =
            DiskStore::open(dir.path(), Durability::Fsync, Duration::from_secs(1), 1024).unwrap();
        let err = DiskStore::open(dir.path(), Durability::Fsync, Duration::from_secs(1), 1024)
            .err()
            .unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
        let other = tempfile::tempdir().unwrap();
        std::fs::write(
            other.path().join(FILE_NAME),
            b"not a database at all, just text",
        )
        .unwrap();
        let err = DiskStore::open(
            other.path(),
            Durability::Fsync,
            Duration::from_secs(1),
            1024,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("left untouched"), "{err}");
        assert_eq!(
            std::fs::read(other.path().join(FILE_NAME)).unwrap(),
            b"not a database at all, just text"
        );
    }
}

//! The log engine, the disk engine's format from release 0.2.0 on: an append-only value log
//! in `data_dir/log/` with the index in memory (docs/design.md, "Disk engine").
//!
//! A write takes its key's shard lock, decides, appends one frame to the head's write
//! buffer and points the index at it, all on the request's own thread: later reads find it
//! at once (in the buffer until it is written), and one key's frames are in the log in the
//! order they were decided. The buffer is written out with one `pwrite` when it fills (by
//! the append that filled it, after releasing the head's lock) or the syncer runs. With
//! `fsync` the writer then waits for the syncer thread, which writes
//! the buffer and fdatasyncs the head for every write appended since its last sync (group
//! commit: one write and one sync per batch of concurrent writers); a client hears STORED
//! only once its write is durable. With `periodic` the writer goes on at once and the
//! syncer runs every `flush_interval`, or sooner once `WRITEBACK_BYTES` wait for it.
//!
//! The log is cut into segments. A full segment is synced and sealed, then summed up in a
//! hint file (every frame's key, place, expiry, fingerprint) by the hint writer thread; a
//! start reads the hints and scans only the unsealed segment (and any sealed one whose hint
//! file is missing), truncating a torn last frame. Compaction copies a sealed
//! segment's live frames to the head, paced, then deletes it. Items, bytes and the
//! anti-entropy digests are rebuilt from the index at start, never stored, and kept up to
//! date from the index entries' summaries.

mod compaction;
pub mod frame;
mod hint_writer;
mod mapping;
mod recovery;
#[cfg(test)]
mod tests;
mod unsynced;
mod write_health;

use super::digest::{Delta, Digests};
use super::table::{Hashed, Table};
use super::{Change, Commit, Durability, Store, StoreError, StoreStats, Versions};
use crate::keyspace::key_hash;
use crate::record::{earlier_expiry, expired_by};
use bytes::Bytes;
use frame::{HintFile, Kind, Summary};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;
use unsynced::Before;

pub const DIR_NAME: &str = "log";
const SHARDS: usize = 64;
const SHARD_SHIFT: u32 = 32 - SHARDS.trailing_zeros();
/// The head's write buffer is written out once it holds this much: one syscall per batch
/// of frames, where a `pwrite` per frame cost an eighth of a worker's time.
const WRITE_BUFFER: usize = 64 << 10;
/// With `periodic`, the syncer runs early once this much is unsynced. A seal syncs the
/// head under its lock, stopping every write meanwhile: with a second's appends to sync
/// (60 MB at 60 k sets/s of 1 KiB) that took 3-85 ms.
const WRITEBACK_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug)]
pub struct Settings {
    pub durability: Durability,
    pub flush_interval: Duration,
    /// The ring's bucket count (digests).
    pub buckets: u32,
    /// A segment is sealed once it holds this many bytes.
    pub segment_bytes: u64,
    /// Compaction copies at most this many bytes per second.
    pub compaction_rate: u64,
    /// How long fewer segments than a full pass wait for more before they are compacted.
    pub compaction_settle: Duration,
}

impl Settings {
    pub fn new(durability: Durability, flush_interval: Duration, buckets: u32) -> Settings {
        Settings {
            durability,
            flush_interval,
            buckets,
            segment_bytes: 64 << 20,
            compaction_rate: 16 << 20,
            compaction_settle: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}: in use by another process (is another kai running on this data_dir?)")]
    InUse(PathBuf),
    #[error("{0}: cannot open the store ({1}); the files are left untouched: move them away to start empty, or inspect them with `kai store check`")]
    Unusable(PathBuf, String),
}

/// Where a key's current frame is, and what the index keeps of it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    segment: u32,
    offset: u32,
    len: u32,
    hash: u32,
    summary: Summary,
}

/// A key and where its frame is: one slot of a shard's index.
struct Indexed {
    key: Box<[u8]>,
    entry: Entry,
}

impl Hashed for Indexed {
    fn ring_hash(&self) -> u32 {
        self.entry.hash
    }
}

#[derive(Default)]
struct Shard {
    /// Found by ring hash (already computed for the shard) and then key: no second hash
    /// of the key, and one cache miss fewer than a map keyed by it.
    index: Table<Indexed>,
    /// At or before every entry's expiry (0: none expires), so the purge passes over a
    /// shard with nothing due instead of reading its whole index under the lock.
    earliest_expiry: u64,
}

impl Shard {
    /// Points `key` at `entry` (which holds its ring hash), returning the entry it replaces.
    /// The key is copied only for a key new to the index: most writes overwrite.
    fn insert(&mut self, key: &[u8], entry: Entry) -> Option<Entry> {
        self.earliest_expiry = earlier_expiry(self.earliest_expiry, entry.summary.expires);
        match self.find(entry.hash, key) {
            Some(at) => {
                let slot = self.index.get_mut(at).expect("just found");
                Some(std::mem::replace(&mut slot.entry, entry))
            }
            None => {
                let key = key.into();
                self.index.insert(Indexed { key, entry });
                None
            }
        }
    }

    fn find(&self, hash: u32, key: &[u8]) -> Option<usize> {
        self.index.find(hash, |slot| *slot.key == *key)
    }

    fn get(&self, hash: u32, key: &[u8]) -> Option<&Entry> {
        let at = self.find(hash, key)?;
        self.index.get(at).map(|slot| &slot.entry)
    }

    fn remove(&mut self, hash: u32, key: &[u8]) -> Option<Entry> {
        let at = self.find(hash, key)?;
        Some(self.index.remove(at).entry)
    }
}

/// One segment file: read by anyone, appended to while it is the head.
struct Segment {
    file: File,
    /// Bytes appended, the head's write buffer included.
    size: AtomicU64,
    /// Bytes in the file: frames below it are read from the file, frames above from the
    /// head's buffer.
    written: AtomicU64,
    /// Bytes of frames no longer current (overwritten, removed, or a remove frame).
    dead: AtomicU64,
    /// What reads copy out of, where it covers the frame.
    mapping: Option<mapping::Mapping>,
}

impl Segment {
    /// A segment of `size` bytes so far, read through a mapping of its first `map_len`.
    fn new(file: File, size: u64, map_len: u64, path: &Path) -> Segment {
        let mapping = if map_len == 0 {
            None
        } else {
            mapping::Mapping::new(&file, map_len)
                .map_err(|err| log::warn!("{}: cannot map, read by pread: {err}", path.display()))
                .ok()
        };
        Segment {
            file,
            size: AtomicU64::new(size),
            written: AtomicU64::new(size),
            dead: AtomicU64::new(0),
            mapping,
        }
    }
}

/// The segment being appended to.
struct Head {
    id: u32,
    segment: Arc<Segment>,
    /// Its frames so far: its hint file once it is sealed.
    hints: HintFile,
    /// Frames handed to a writer that writes them without this lock, from
    /// `segment.written` on.
    in_flight: Option<Arc<Vec<u8>>>,
    /// Frames appended but not yet written, after `in_flight`'s.
    buffer: Vec<u8>,
    /// Bytes appended to the log since the store opened: a write's position in time.
    appended: u64,
    /// Frames written since the last sync that succeeded (`unsynced.rs`).
    unsynced: unsynced::Unsynced,
}

/// What the syncer and the writers waiting on it share.
#[derive(Default)]
struct Syncs {
    /// `Head::appended` as of the last sync that completed.
    durable: u64,
    /// With `periodic`: a writer found `WRITEBACK_BYTES` unsynced and woke the syncer.
    writeback_wanted: bool,
    /// Writers waiting for `durable` to pass their position, oldest first.
    waiting: VecDeque<(u64, oneshot::Sender<Result<(), StoreError>>)>,
    stopping: bool,
}

/// What the request path, the syncer and the compactor share.
struct Shared {
    dir: PathBuf,
    settings: Settings,
    shards: Vec<Mutex<Shard>>,
    segments: RwLock<BTreeMap<u32, Arc<Segment>>>,
    head: Mutex<Head>,
    /// Signalled, with the head's lock, when a handed-off write ends.
    written_out: Condvar,
    /// `head.id`, readable without the head's lock: every lower segment is sealed.
    head_id: AtomicU32,
    syncs: Mutex<Syncs>,
    sync_wanted: Condvar,
    /// The head's fdatasyncs, one at a time, and whether one failed.
    syncing: unsynced::Syncing,
    /// `Syncs::durable`, mirrored for `periodic` writers to read without the lock.
    durable_mirror: AtomicU64,
    /// Wakes the compactor when the store closes.
    stop_signal: Condvar,
    items: AtomicU64,
    bytes: AtomicU64,
    digests: Digests,
    compactions: AtomicU64,
    compacted_bytes: AtomicU64,
    /// Whether the log's writes and syncs fail: a full or failing disk, which refuses
    /// client writes (`kai_store_write_errors`, `_failing`, and the node's log).
    write_health: write_health::WriteHealth,
    compacting: Mutex<()>,
    hint_writer: hint_writer::HintWriter,
}

pub struct LogStore {
    shared: Arc<Shared>,
    syncer: Option<std::thread::JoinHandle<()>>,
    compactor: Option<std::thread::JoinHandle<()>>,
    hint_writer: Option<std::thread::JoinHandle<()>>,
    /// Held for the store's life: a second process on the same directory is refused.
    _lock: nix::fcntl::Flock<File>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn shard_of(hash: u32) -> usize {
    (hash >> SHARD_SHIFT) as usize
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.log"))
}

fn hint_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.hint"))
}

pub(crate) fn io_error(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source: Arc::new(error),
    }
}

fn apply_delta(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

/// The items and bytes an indexed key counts for.
fn counts(summary: Option<&Summary>) -> (i64, i64) {
    summary.map_or((0, 0), |s| (i64::from(s.live), i64::from(s.footprint)))
}

fn failed(error: StoreError) -> Commit {
    let (done, commit) = oneshot::channel();
    let _ = done.send(Err(error));
    Commit::pending(commit)
}

impl LogStore {
    /// Opens (or creates) the log in `data_dir/log`. Never rewrites a file it cannot read,
    /// except a torn last frame of the head segment, which no write was acknowledged for.
    pub fn open(data_dir: &Path, settings: Settings) -> Result<LogStore, OpenError> {
        Self::open_at(&data_dir.join(DIR_NAME), settings)
    }

    pub(crate) fn open_at(dir: &Path, settings: Settings) -> Result<LogStore, OpenError> {
        let unusable =
            |e: &dyn std::fmt::Display| OpenError::Unusable(dir.to_path_buf(), e.to_string());
        std::fs::create_dir_all(dir).map_err(|e| unusable(&e))?;
        let lock_file = File::create(dir.join("LOCK")).map_err(|e| unusable(&e))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| OpenError::InUse(dir.to_path_buf()))?;
        let recovered = recovery::recover(dir, &settings)?;
        let head_segment = Arc::clone(&recovered.segments[&recovered.head]);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            shards: recovered.shards.into_iter().map(Mutex::new).collect(),
            segments: RwLock::new(recovered.segments),
            head: Mutex::new(Head {
                id: recovered.head,
                segment: head_segment,
                hints: recovered.head_hints,
                in_flight: None,
                buffer: Vec::with_capacity(WRITE_BUFFER),
                appended: 0,
                unsynced: unsynced::Unsynced::default(),
            }),
            written_out: Condvar::new(),
            head_id: AtomicU32::new(recovered.head),
            syncs: Mutex::new(Syncs::default()),
            sync_wanted: Condvar::new(),
            syncing: unsynced::Syncing::default(),
            durable_mirror: AtomicU64::new(0),
            stop_signal: Condvar::new(),
            items: AtomicU64::new(recovered.items),
            bytes: AtomicU64::new(recovered.bytes),
            digests: recovered.digests,
            compactions: AtomicU64::new(0),
            compacted_bytes: AtomicU64::new(0),
            write_health: write_health::WriteHealth::default(),
            compacting: Mutex::new(()),
            hint_writer: hint_writer::HintWriter::default(),
            settings,
        });
        let for_syncer = Arc::clone(&shared);
        let syncer = std::thread::Builder::new()
            .name("kai-syncer".into())
            .spawn(move || for_syncer.run_syncer())
            .map_err(|e| unusable(&e))?;
        let for_compactor = Arc::clone(&shared);
        let compactor = std::thread::Builder::new()
            .name("kai-compactor".into())
            .spawn(move || compaction::run(&for_compactor))
            .map_err(|e| unusable(&e))?;
        let for_hint_writer = Arc::clone(&shared);
        let hint_writer = std::thread::Builder::new()
            .name("kai-hints".into())
            .spawn(move || hint_writer::run(&for_hint_writer))
            .map_err(|e| unusable(&e))?;
        Ok(LogStore {
            shared,
            syncer: Some(syncer),
            compactor: Some(compactor),
            hint_writer: Some(hint_writer),
            _lock: lock,
        })
    }

    /// Makes every write so far durable now, whatever the durability (`kai store restore`).
    pub fn sync_now(&self) -> Result<(), StoreError> {
        self.shared.sync()
    }

    /// Compacts every sealed segment holding any dead frame, now (`kai store compact`);
    /// returns the bytes on disk before and after.
    pub fn compact_now(&self) -> (u64, u64) {
        let before = self.shared.file_bytes();
        self.shared.hint_writer.flush();
        while compaction::compact_once(&self.shared, true) {}
        (before, self.shared.file_bytes())
    }

    /// Offline check of `data_dir/log` (`kai store check`).
    pub fn check(data_dir: &Path) -> Result<String, StoreError> {
        recovery::check(&data_dir.join(DIR_NAME))
    }
}

impl Shared {
    fn segment(&self, id: u32) -> Option<Arc<Segment>> {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        segments.get(&id).cloned()
    }

    fn file_bytes(&self) -> u64 {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        (segments.values())
            .map(|s| s.size.load(Ordering::Relaxed))
            .sum()
    }

    fn dead_bytes(&self) -> u64 {
        let segments = self.segments.read().unwrap_or_else(|p| p.into_inner());
        (segments.values())
            .map(|s| s.dead.load(Ordering::Relaxed))
            .sum()
    }

    fn add_dead(&self, segment: u32, bytes: u32) {
        if let Some(segment) = self.segment(segment) {
            segment.dead.fetch_add(u64::from(bytes), Ordering::Relaxed);
        }
    }

    /// The frame an index entry points at, as written.
    fn read_frame(&self, segment: &Segment, entry: &Entry) -> Result<Bytes, StoreError> {
        let end = u64::from(entry.offset) + u64::from(entry.len);
        if end > segment.written.load(Ordering::Acquire) {
            // Still in the head's buffer, unless it was written out since.
            let head = lock(&self.head);
            let written = head.segment.written.load(Ordering::Acquire);
            if head.id == entry.segment && u64::from(entry.offset) >= written {
                // A frame is never split between the two: the buffer is handed off whole.
                let start = (u64::from(entry.offset) - written) as usize;
                let in_flight = head.in_flight.as_deref().map_or(&[][..], Vec::as_slice);
                let frame = match start.checked_sub(in_flight.len()) {
                    None => in_flight.get(start..start + entry.len as usize),
                    Some(start) => head.buffer.get(start..start + entry.len as usize),
                };
                if let Some(frame) = frame {
                    return Ok(Bytes::copy_from_slice(frame));
                }
            }
        }
        let mapped = (segment.mapping.as_ref())
            .and_then(|mapping| mapping.read(u64::from(entry.offset), entry.len as usize));
        if let Some(frame) = mapped {
            return Ok(Bytes::from(frame));
        }
        let mut frame = vec![0; entry.len as usize];
        (segment.file)
            .read_exact_at(&mut frame, u64::from(entry.offset))
            .map_err(|e| {
                let path = segment_path(&self.dir, entry.segment);
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    StoreError::Damaged(format!(
                        "{}: the file ends before byte {end}, where the index has a frame",
                        path.display()
                    ))
                } else {
                    io_error(&path, e)
                }
            })?;
        Ok(Bytes::from(frame))
    }

    /// Reads back the versions an index entry points at. Called with the key's shard
    /// locked, or with the segment taken while it was (compaction deletes a segment only
    /// once no entry points into it).
    fn read(&self, segment: &Segment, entry: &Entry, key: &[u8]) -> Result<Versions, StoreError> {
        let frame = self.read_frame(segment, entry)?;
        let damaged = || {
            StoreError::Damaged(format!(
                "{}: the frame at byte {} does not hold the key it should",
                segment_path(&self.dir, entry.segment).display(),
                entry.offset
            ))
        };
        let (decoded, _) = frame::decode(&frame).ok_or_else(damaged)?;
        if decoded.kind != Kind::Put || decoded.key != key {
            return Err(damaged());
        }
        crate::record::format::decode_shared(&frame.slice_ref(decoded.value)).ok_or_else(damaged)
    }

    /// The current versions of `key`, unexpired or not; with `values` false, possibly
    /// with their values left empty (for a write that reads none), unless some version
    /// has expired, which a write keeps the rest of.
    fn current(
        &self,
        shard: &Shard,
        hash: u32,
        key: &[u8],
        values: bool,
        now_secs: u64,
    ) -> Option<Versions> {
        let entry = shard.get(hash, key)?;
        let segment = self.segment(entry.segment)?;
        if !values {
            let identity = self.read_identity(&segment, entry, key);
            if let Some(versions) = identity.filter(|v| !v.any_expired(now_secs)) {
                return Some(versions);
            }
        }
        self.read(&segment, entry, key)
            .map_err(|err| log::error!("disk store read failed: {err}"))
            .ok()
    }

    /// A key's one version with its value left empty, read around the value: the frame's
    /// header and key, then what follows the value (three cache lines of a 1 KiB frame,
    /// where the whole read copied and checked seventeen). In place of the CRC, what was
    /// read must match what the index holds of the frame: the fingerprint (clock,
    /// timestamp, tombstone), the expiry and the footprint (the value's length). The
    /// client's flags are not covered, and no write that reads no value keeps them; a
    /// version marked stale or claimed (meta) is left to the whole read. None when the
    /// frame is still in the head's buffer, is not one version in the current format, or
    /// does not match (then the whole read decides).
    fn read_identity(&self, segment: &Segment, entry: &Entry, key: &[u8]) -> Option<Versions> {
        use crate::record::format::{decode_lone_without_value, lone_value_span, MAX_AFTER_VALUE};
        let offset = u64::from(entry.offset);
        let len = entry.len as usize;
        if offset + len as u64 > segment.written.load(Ordering::Acquire) {
            return None;
        }
        let mapping = segment.mapping.as_ref()?;
        // The header and key, the format, the count and the value's length.
        let mut start = [0; frame::HEADER + 256 + 2 + 10 + 10];
        let start = start.get_mut(..(frame::HEADER + key.len() + 22).min(len))?;
        mapping.read_into(offset, start)?;
        let body = frame::put_value_start(start, key)?;
        let (value_at, value_len) = lone_value_span(body)?;
        let value_end = (frame::HEADER + key.len() + value_at).checked_add(value_len)?;
        let mut after = [0; MAX_AFTER_VALUE];
        let after = after.get_mut(..len.checked_sub(value_end)?)?;
        mapping.read_into(offset + value_end as u64, after)?;
        let versions = decode_lone_without_value(after)?;
        let record = versions.0.first()?;
        let summary = &entry.summary;
        let matches = !record.stale
            && !record.recache_claimed
            && versions.earliest_expiry() == summary.expires
            && (versions.footprint(key) + value_len).min(u32::MAX as usize) as u32
                == summary.footprint
            && crate::store::digest::fingerprint(key, Some(&versions)) == summary.fingerprint;
        matches.then_some(versions)
    }

    /// `Store::update`; with `values` false, `Store::overwrite`.
    fn update(
        &self,
        key: &[u8],
        hash: u32,
        now_secs: u64,
        decide: &mut dyn FnMut(Option<&Versions>) -> Change,
        values: bool,
    ) -> Commit {
        debug_assert_eq!(hash, key_hash(key));
        let mut shard = lock(&self.shards[shard_of(hash)]);
        let stored = self.current(&shard, hash, key, values, now_secs);
        // A copy without the expired versions only when there are some: most writes find
        // none, and the copy allocates every clock.
        let pruned = stored.as_ref().is_some_and(|v| v.any_expired(now_secs));
        let unexpired = match &stored {
            Some(versions) if pruned => {
                let mut versions = versions.clone();
                versions.retain_unexpired(now_secs).then_some(versions)
            }
            _ => None,
        };
        let live = if pruned {
            unexpired.as_ref()
        } else {
            stored.as_ref()
        };
        let new = match decide(live) {
            Change::Put(versions) => Some(versions),
            Change::Remove if stored.is_none() => return Commit::done(),
            Change::Remove => None,
            Change::Keep if pruned => unexpired,
            Change::Keep => return Commit::done(),
        };
        let (frame, summary) = match &new {
            Some(versions) => {
                let capacity = frame::HEADER + versions.footprint(key) + 16;
                let frame =
                    frame::encode_with(Vec::with_capacity(capacity), Kind::Put, key, |out| {
                        crate::record::format::encode_onto(versions, out)
                    });
                match frame {
                    Ok(frame) => (frame, Some(Summary::of(key, versions))),
                    Err(err) => return failed(StoreError::Encode(err)),
                }
            }
            None => {
                let mut frame = Vec::with_capacity(frame::HEADER + key.len());
                frame::encode(&mut frame, Kind::Remove, key, &[]);
                (frame, None)
            }
        };
        let position = match self.append(&frame, key, summary) {
            Ok(position) => position,
            Err(err) => return failed(err),
        };
        let replaced = self.place(&mut shard, key, hash, summary, &position);
        // Counted under the shard lock, which a flush_all also holds, from the summaries a
        // start sums up too: the versions need not be hashed again.
        let old = replaced.map(|entry| entry.summary);
        let (old_items, old_bytes) = counts(old.as_ref());
        let (new_items, new_bytes) = counts(summary.as_ref());
        self.digests.record(&index_delta(
            &self.digests,
            hash,
            old.as_ref(),
            summary.as_ref(),
        ));
        apply_delta(&self.items, new_items - old_items);
        apply_delta(&self.bytes, new_bytes - old_bytes);
        drop(shard);
        self.durable(position.appended)
    }

    /// Points the index at a frame just appended (a put) or drops the key (a remove),
    /// returning the entry it replaced.
    fn place(
        &self,
        shard: &mut Shard,
        key: &[u8],
        hash: u32,
        summary: Option<Summary>,
        at: &Position,
    ) -> Option<Entry> {
        let old = match summary {
            Some(summary) => shard.insert(
                key,
                Entry {
                    segment: at.segment,
                    offset: at.offset,
                    len: at.len,
                    hash,
                    summary,
                },
            ),
            None => {
                self.add_dead(at.segment, at.len);
                shard.remove(hash, key)
            }
        };
        if let Some(old) = old {
            self.add_dead(old.segment, old.len);
        }
        old
    }

    /// Appends one frame at the head, sealing it first when the frame would not fit.
    fn append(
        &self,
        frame: &[u8],
        key: &[u8],
        summary: Option<Summary>,
    ) -> Result<Position, StoreError> {
        let full = |head: &Head| {
            let size = head.segment.size.load(Ordering::Relaxed);
            size > 0 && size + frame.len() as u64 > self.settings.segment_bytes
        };
        let mut head = lock(&self.head);
        if full(&head) {
            head = self.settled(head);
            // Unless another append sealed it while this one waited.
            if full(&head) {
                self.seal(&mut head)?;
            }
        }
        if self.write_health.failing() {
            // While the log's writes or syncs fail, a frame joins the buffer only once the
            // log is durable: one the disk cannot store is refused, not acknowledged
            // (periodic), left buffered to be stored later, or kept in memory for a sync
            // that never succeeds (`unsynced`).
            head = self.settled(head);
            self.sync_settled(&mut head)?;
        }
        let offset = head.segment.size.load(Ordering::Relaxed);
        head.buffer.extend_from_slice(frame);
        head.segment
            .size
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        head.appended += frame.len() as u64;
        let kind = if summary.is_some() {
            Kind::Put
        } else {
            Kind::Remove
        };
        let summary = summary.unwrap_or_default();
        (head.hints).push(kind, key, offset as u32, frame.len() as u32, &summary);
        let position = Position {
            segment: head.id,
            offset: offset as u32,
            len: frame.len() as u32,
            appended: head.appended,
        };
        let ready = head.buffer.len() >= WRITE_BUFFER;
        // While failing, the buffer is written under the lock (above), not handed off.
        let handoff = (ready && head.in_flight.is_none() && !self.write_health.failing())
            .then(|| Handoff::take(&mut head));
        drop(head);
        if let Some(handoff) = handoff {
            self.write_handed_off(handoff);
        }
        Ok(position)
    }

    /// Writes frames taken from the head's buffer without holding its lock, so appends go
    /// on meanwhile: a 64 KiB write under the lock (about 20 µs) made the other threads'
    /// appends wait, each wait a futex sleep and wake-up.
    fn write_handed_off(&self, handoff: Handoff) {
        let Handoff {
            id,
            segment,
            at,
            frames,
        } = handoff;
        let result = (segment.file.write_all_at(&frames, at))
            .map_err(|e| io_error(&segment_path(&self.dir, id), e));
        let result = self
            .write_health
            .note_write("disk store write failed", result);
        let mut head = lock(&self.head);
        head.in_flight = None;
        match result {
            Ok(()) => {
                (segment.written).fetch_add(frames.len() as u64, Ordering::Release);
                head.unsynced.push(id, at, frames);
            }
            Err(_) => {
                // Back in front of the buffer: the next sync writes them again and tells
                // its writers if that fails too.
                let mut frames = Arc::try_unwrap(frames).unwrap_or_else(|f| f.to_vec());
                frames.extend_from_slice(&head.buffer);
                head.buffer = frames;
            }
        }
        drop(head);
        self.written_out.notify_all();
    }

    /// The head once no handed-off write is in flight: what writes or syncs under the lock
    /// must follow every frame before it.
    fn settled<'a>(&self, head: MutexGuard<'a, Head>) -> MutexGuard<'a, Head> {
        (self.written_out)
            .wait_while(head, |head| head.in_flight.is_some())
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the head's buffer to its file. On failure the frames stay buffered (reads
    /// still find them) and the next sync reports the error to its writers.
    /// Called with the head `settled`.
    fn write_out(&self, head: &mut Head) -> Result<(), StoreError> {
        debug_assert!(head.in_flight.is_none());
        if head.buffer.is_empty() {
            return Ok(());
        }
        let written = head.segment.written.load(Ordering::Relaxed);
        let result = (head.segment.file.write_all_at(&head.buffer, written))
            .map_err(|e| io_error(&segment_path(&self.dir, head.id), e));
        (self.write_health).note_write("disk store write failed", result)?;
        (head.segment.written).fetch_add(head.buffer.len() as u64, Ordering::Release);
        let empty = head.unsynced.buffer(WRITE_BUFFER);
        let frames = std::mem::replace(&mut head.buffer, empty);
        let id = head.id;
        head.unsynced.push(id, written, Arc::new(frames));
        Ok(())
    }

    /// What a sync of the head must follow: writes the buffer, and again the kept frames
    /// if a sync failed since the last one trusted. Returns how far the head's file is
    /// written. Called with the head `settled`.
    fn prepare_sync(&self, head: &mut Head) -> Result<u64, StoreError> {
        self.write_out(head)?;
        if self.syncing.must_rewrite() {
            let result = (head.unsynced.rewrite(head.id, &head.segment.file))
                .map_err(|e| io_error(&segment_path(&self.dir, head.id), e));
            (self.write_health).note_write("disk store write failed", result)?;
        }
        Ok(head.segment.written.load(Ordering::Relaxed))
    }

    /// fdatasyncs segment `id` (`unsynced::Syncing::sync`), counted and logged.
    fn sync_segment(&self, id: u32, segment: &Segment, before: Before) -> Result<(), StoreError> {
        let result = (self.syncing.sync(&segment.file, before))
            .map_err(|e| io_error(&segment_path(&self.dir, id), e));
        (self.write_health).note_sync("disk store sync failed", result)
    }

    /// Makes the head durable under its lock. Called with the head `settled`.
    fn sync_settled(&self, head: &mut Head) -> Result<(), StoreError> {
        let before = self.syncing.before();
        let written = self.prepare_sync(head)?;
        self.sync_segment(head.id, &head.segment, before)?;
        let id = head.id;
        head.unsynced.synced(id, written);
        self.synced(head.appended, None);
        Ok(())
    }

    /// Syncs the head, starts the next segment and queues the sealed one's hint file.
    /// Called with the head `settled`.
    fn seal(&self, head: &mut Head) -> Result<(), StoreError> {
        // Durable before any frame lands in the next segment: only the last segment may
        // end in a torn write.
        self.sync_settled(head)?;
        let next = head.id + 1;
        let created = recovery::create_segment(&self.dir, next, self.settings.segment_bytes);
        let segment = Arc::new(
            (self.write_health).note_write("disk store could not start a segment", created)?,
        );
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        segments.insert(next, Arc::clone(&segment));
        drop(segments);
        (self.hint_writer).push(head.id, std::mem::take(&mut head.hints));
        head.id = next;
        head.segment = segment;
        self.head_id.store(next, Ordering::Relaxed);
        Ok(())
    }

    /// A `Commit` that resolves once the log is durable up to `appended`. With `periodic`
    /// at once, unless the log is failing: then, as with `fsync`, once a sync succeeds,
    /// since a disk whose syncs fail would lose far more than an interval.
    fn durable(&self, appended: u64) -> Commit {
        if self.settings.durability == Durability::Periodic && !self.write_health.failing() {
            let synced = self.durable_mirror.load(Ordering::Relaxed);
            if appended.saturating_sub(synced) >= WRITEBACK_BYTES {
                let mut syncs = lock(&self.syncs);
                if !syncs.writeback_wanted {
                    syncs.writeback_wanted = true;
                    drop(syncs);
                    self.sync_wanted.notify_one();
                }
            }
            return Commit::done();
        }
        let mut syncs = lock(&self.syncs);
        if syncs.durable >= appended {
            return Commit::done();
        }
        let (done, commit) = oneshot::channel();
        // Only a first waiter can find the syncer asleep (it sleeps while none waits):
        // a wake per write was a futex call per write while the syncer was busy anyway.
        let first = syncs.waiting.is_empty();
        syncs.waiting.push_back((appended, done));
        drop(syncs);
        if first {
            self.sync_wanted.notify_one();
        }
        Commit::pending(commit)
    }

    /// Records a sync that covered everything up to `appended`, and answers the writers
    /// it made durable (or, on failure, every writer waiting).
    fn synced(&self, appended: u64, failure: Option<StoreError>) {
        let mut syncs = lock(&self.syncs);
        let answered: Vec<_> = match &failure {
            None => {
                syncs.durable = syncs.durable.max(appended);
                let durable = syncs.durable;
                self.durable_mirror.store(durable, Ordering::Relaxed);
                let count = (syncs.waiting.iter())
                    .take_while(|(at, _)| *at <= durable)
                    .count();
                syncs.waiting.drain(..count).collect()
            }
            Some(_) => syncs.waiting.drain(..).collect(),
        };
        drop(syncs);
        for (_, done) in answered {
            let _ = done.send(failure.clone().map_or(Ok(()), Err));
        }
    }

    /// Syncs the head now; returns how far the log is durable.
    fn sync(&self) -> Result<(), StoreError> {
        let before = self.syncing.before();
        let (id, segment, appended, prepared) = {
            let mut head = self.settled(lock(&self.head));
            let prepared = self.prepare_sync(&mut head);
            (head.id, Arc::clone(&head.segment), head.appended, prepared)
        };
        // Outside the head's lock: appends go on meanwhile.
        let result = prepared.and_then(|written| {
            self.sync_segment(id, &segment, before)?;
            lock(&self.head).unsynced.synced(id, written);
            Ok(())
        });
        match &result {
            Ok(()) => self.synced(appended, None),
            Err(err) => self.synced(appended, Some(err.clone())),
        }
        result
    }

    /// The syncer thread: with `fsync`, one sync whenever writers wait (group commit);
    /// with `periodic`, one every `flush_interval` or once `WRITEBACK_BYTES` are unsynced.
    /// A last sync when closing.
    fn run_syncer(&self) {
        loop {
            let stopping = {
                let syncs = lock(&self.syncs);
                let syncs = match self.settings.durability {
                    // Frames whose write failed wait in the buffer: retried every
                    // interval, so they are stored and the failing state ends once the
                    // disk has room again, whether or not writers come.
                    Durability::Fsync if self.write_health.failing() => {
                        (self.sync_wanted)
                            .wait_timeout_while(syncs, self.settings.flush_interval, |s| {
                                s.waiting.is_empty() && !s.stopping
                            })
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    Durability::Fsync => (self.sync_wanted)
                        .wait_while(syncs, |s| s.waiting.is_empty() && !s.stopping)
                        .unwrap_or_else(|p| p.into_inner()),
                    // Writers wait for it only while the log is failing (`durable`).
                    Durability::Periodic => {
                        let mut syncs = (self.sync_wanted)
                            .wait_timeout_while(syncs, self.settings.flush_interval, |s| {
                                !s.stopping && !s.writeback_wanted && s.waiting.is_empty()
                            })
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        syncs.writeback_wanted = false;
                        syncs
                    }
                };
                syncs.stopping
            };
            let _ = self.sync();
            if stopping {
                return;
            }
        }
    }

    fn stop_requested(&self) -> bool {
        lock(&self.syncs).stopping
    }
}

/// Frames taken from the head's buffer to be written without its lock.
struct Handoff {
    id: u32,
    segment: Arc<Segment>,
    /// Where in the segment they go.
    at: u64,
    frames: Arc<Vec<u8>>,
}

impl Handoff {
    fn take(head: &mut Head) -> Handoff {
        let empty = head.unsynced.buffer(WRITE_BUFFER);
        let frames = std::mem::replace(&mut head.buffer, empty);
        let frames = Arc::new(frames);
        head.in_flight = Some(Arc::clone(&frames));
        Handoff {
            id: head.id,
            segment: Arc::clone(&head.segment),
            at: head.segment.written.load(Ordering::Relaxed),
            frames,
        }
    }
}

/// Where a frame landed.
struct Position {
    segment: u32,
    offset: u32,
    len: u32,
    appended: u64,
}

impl Drop for LogStore {
    fn drop(&mut self) {
        lock(&self.shared.syncs).stopping = true;
        self.shared.sync_wanted.notify_all();
        self.shared.stop_signal.notify_all();
        if let Some(compactor) = self.compactor.take() {
            let _ = compactor.join();
        }
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
        // Last: the compactor may have sealed a segment on its way out.
        self.shared.hint_writer.stop();
        if let Some(hint_writer) = self.hint_writer.take() {
            let _ = hint_writer.join();
        }
    }
}

impl Store for LogStore {
    fn get_hashed(&self, key: &[u8], hash: u32, now_secs: u64) -> Option<Versions> {
        let shard = lock(&self.shared.shards[shard_of(hash)]);
        let entry = *shard.get(hash, key)?;
        let segment = self.shared.segment(entry.segment)?;
        // The read itself needs no lock: a frame never changes and the segment outlives
        // this handle.
        drop(shard);
        let mut versions = (self.shared.read(&segment, &entry, key))
            .map_err(|err| log::error!("disk store read failed: {err}"))
            .ok()?;
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
        self.shared.update(key, hash, now_secs, decide, true)
    }

    /// A plain set or delete reads the stored version around its value (`read_identity`):
    /// under 1 KiB overwrites, copying and checking the whole frame took 5 % of a periodic
    /// node's CPU.
    fn overwrite_hashed(
        &self,
        key: &[u8],
        hash: u32,
        now_secs: u64,
        decide: &mut dyn FnMut(Option<&Versions>) -> Change,
    ) -> Commit {
        self.shared.update(key, hash, now_secs, decide, false)
    }

    fn clear(&self) {
        let shared = &self.shared;
        // Every shard and the head: no write slips between the clear and the reset counters.
        let mut guards: Vec<_> = shared.shards.iter().map(lock).collect();
        let mut head = shared.settled(lock(&shared.head));
        let first = (shared.seal(&mut head))
            .and_then(|()| recovery::set_first(&shared.dir, head.id).map(|()| head.id));
        drop(head);
        for shard in &mut guards {
            shard.index = Table::default();
        }
        shared.items.store(0, Ordering::Relaxed);
        shared.bytes.store(0, Ordering::Relaxed);
        shared.digests.clear();
        let first = match first {
            Ok(first) => first,
            Err(err) => {
                log::error!("flush_all did not reach the disk: {err}");
                return;
            }
        };
        let old: Vec<u32> = {
            let mut segments = shared.segments.write().unwrap_or_else(|p| p.into_inner());
            let old: Vec<u32> = segments.range(..first).map(|(id, _)| *id).collect();
            for id in &old {
                segments.remove(id);
            }
            old
        };
        drop(guards);
        for id in old {
            recovery::delete_segment(&shared.dir, id);
        }
    }

    fn purge_expired(&self, now_secs: u64) -> u64 {
        let mut purged = 0;
        for shard in &self.shared.shards {
            let mut shard = lock(shard);
            if !expired_by(shard.earliest_expiry, now_secs) {
                continue;
            }
            // The expired keys count too: one whose purge fails stays due.
            let (mut earliest, mut expired) = (0, Vec::new());
            for Indexed { key, entry } in shard.index.iter() {
                let expires = entry.summary.expires;
                earliest = earlier_expiry(earliest, expires);
                if expired_by(expires, now_secs) {
                    expired.push(key.clone());
                }
            }
            shard.earliest_expiry = earliest;
            drop(shard);
            for key in expired {
                // Keep: the update drops the expired versions on its own and writes back
                // the others, values and all.
                let keep = &mut |_: Option<&Versions>| Change::Keep;
                drop((self.shared).update(&key, key_hash(&key), now_secs, keep, true));
                purged += 1;
            }
        }
        purged
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            items: self.shared.items.load(Ordering::Relaxed),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            file_bytes: self.shared.file_bytes(),
            dead_bytes: self.shared.dead_bytes(),
            compactions: self.shared.compactions.load(Ordering::Relaxed),
            compacted_bytes: self.shared.compacted_bytes.load(Ordering::Relaxed),
            write_errors: self.shared.write_health.errors(),
            write_failing: self.shared.write_health.failing(),
            ..StoreStats::default()
        }
    }

    fn digests(&self) -> &Digests {
        &self.shared.digests
    }

    fn keys_in(&self, low: u32, high: u32) -> Vec<(Bytes, u64)> {
        let mut found: Vec<(u32, Box<[u8]>, u64)> = Vec::new();
        for shard in &self.shared.shards[shard_of(low)..=shard_of(high)] {
            let shard = lock(shard);
            let listed = (shard.index.iter())
                .filter(|slot| (low..=high).contains(&slot.entry.hash))
                .map(|Indexed { key, entry }| (entry.hash, key.clone(), entry.summary.fingerprint));
            found.extend(listed);
        }
        found.sort_unstable();
        (found.into_iter())
            .map(|(_, key, print)| (Bytes::from(key.into_vec()), print))
            .collect()
    }
}

/// The bucket summary change of adding one indexed key (a start rebuilding its digests).
fn entry_delta(digests: &Digests, entry: &Entry) -> Delta {
    index_delta(digests, entry.hash, None, Some(&entry.summary))
}

/// The bucket summary change of the index's entry for a key going from `old` to `new`
/// (None: no entry). An entry's fingerprint is that of its versions, which are never
/// empty, so it counts as one key.
fn index_delta(
    digests: &Digests,
    hash: u32,
    old: Option<&Summary>,
    new: Option<&Summary>,
) -> Delta {
    let fingerprint = |s: Option<&Summary>| s.map_or(0, |s| s.fingerprint);
    let tombstoned = |s: Option<&Summary>| i32::from(s.is_some_and(|s| s.tombstoned));
    Delta {
        bucket: digests.bucket_of(hash),
        xor: fingerprint(old) ^ fingerprint(new),
        keys: i32::from(new.is_some()) - i32::from(old.is_some()),
        tombstoned: tombstoned(new) - tombstoned(old),
    }
}

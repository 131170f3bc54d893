//! Opening the log: which segments count, the index rebuilt from hint files (a scan where
//! a segment has none), a torn head truncated, counters and digests summed from the index.

use super::frame::{self, Hint, HintFile, Kind, Summary};
use super::{
    entry_delta, hint_path, segment_path, Entry, OpenError, Segment, Settings, Shard, SHARDS,
};
use crate::keyspace::key_hash;
use crate::store::digest::Digests;
use crate::store::StoreError;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The file naming the first segment that counts (written by flush_all).
const FIRST: &str = "first";

pub(super) struct Recovered {
    pub shards: Vec<Shard>,
    pub segments: BTreeMap<u32, Arc<Segment>>,
    pub head: u32,
    pub head_hints: HintFile,
    pub items: u64,
    pub bytes: u64,
    pub digests: Digests,
}

fn first(dir: &Path) -> u32 {
    (fs::read_to_string(dir.join(FIRST)).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

pub(super) fn set_first(dir: &Path, id: u32) -> Result<(), StoreError> {
    let path = dir.join(FIRST);
    crate::durable::write_atomically(&path, format!("{id}\n").as_bytes())
        .map_err(|e| super::io_error(&path, e))
}

/// A new, empty segment, mapped at `map_len` bytes for the appends to come.
pub(super) fn create_segment(dir: &Path, id: u32, map_len: u64) -> Result<Segment, StoreError> {
    let path = segment_path(dir, id);
    let file = (OpenOptions::new().read(true).write(true).create_new(true))
        .open(&path)
        .map_err(|e| super::io_error(&path, e))?;
    // The new name must be durable before a write acknowledged in it is.
    (File::open(dir).and_then(|d| d.sync_all())).map_err(|e| super::io_error(dir, e))?;
    Ok(Segment::new(file, 0, map_len, &path))
}

pub(super) fn delete_segment(dir: &Path, id: u32) {
    for path in [segment_path(dir, id), hint_path(dir, id)] {
        if let Err(err) = fs::remove_file(&path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                log::warn!("{}: cannot delete: {err}", path.display());
            }
        }
    }
    // A deleted segment must not come back after a crash: the removes a later compaction
    // drops would no longer hide its records.
    if let Err(err) = File::open(dir).and_then(|d| d.sync_all()) {
        log::warn!("{}: cannot sync: {err}", dir.display());
    }
}

/// The segment ids in `dir`, ascending.
fn segment_ids(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The frames of a whole segment as hints; `Err(at)` gives where the valid frames end
/// when something follows them.
fn scan(bytes: &[u8]) -> (Vec<Hint>, Result<(), usize>) {
    let mut hints = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some((frame, len)) = frame::decode(&bytes[at..]) else {
            return (hints, Err(at));
        };
        let summary = match frame.kind {
            Kind::Put => match crate::record::format::decode(frame.value) {
                Some(versions) => Summary::of(frame.key, &versions),
                None => return (hints, Err(at)),
            },
            Kind::Remove => Summary::default(),
        };
        hints.push(Hint {
            kind: frame.kind,
            key: frame.key.into(),
            offset: at as u32,
            len: len as u32,
            summary,
        });
        at += len;
    }
    (hints, Ok(()))
}

pub(super) fn recover(dir: &Path, settings: &Settings) -> Result<Recovered, OpenError> {
    let unusable = |what: String| OpenError::Unusable(dir.to_path_buf(), what);
    let first = first(dir);
    let mut ids = segment_ids(dir).map_err(|e| unusable(e.to_string()))?;
    // Segments before the last flush_all's first one are what it deleted.
    for &id in ids.iter().filter(|&&id| id < first) {
        delete_segment(dir, id);
    }
    ids.retain(|&id| id >= first);
    let mut shards: Vec<Shard> = (0..SHARDS).map(|_| Shard::default()).collect();
    let mut segments: BTreeMap<u32, Arc<Segment>> = BTreeMap::new();
    let mut head_hints = HintFile::default();
    let last = ids.last().copied();
    for &id in &ids {
        let path = segment_path(dir, id);
        let file = (OpenOptions::new().read(true).write(true))
            .open(&path)
            .map_err(|e| OpenError::Unusable(path.clone(), e.to_string()))?;
        let is_head = Some(id) == last;
        let kept = (!is_head)
            .then(|| fs::read(hint_path(dir, id)).ok())
            .flatten()
            .and_then(|bytes| frame::decode_hints(&bytes));
        let (hints, size) = match kept {
            Some(hints) => {
                let size = file.metadata().map_err(|e| unusable(e.to_string()))?.len();
                (hints, size)
            }
            None => {
                let bytes = fs::read(&path)
                    .map_err(|e| OpenError::Unusable(path.clone(), e.to_string()))?;
                let (hints, end) = scan(&bytes);
                let size = match end {
                    Ok(()) => bytes.len() as u64,
                    Err(at) if is_head => {
                        // A torn append: no write in it was acknowledged (the sync that
                        // would have come after it did not return).
                        log::warn!(
                            "{}: dropping {} bytes of an unfinished write at byte {at}",
                            path.display(),
                            bytes.len() - at
                        );
                        file.set_len(at as u64)
                            .map_err(|e| unusable(e.to_string()))?;
                        file.sync_all().map_err(|e| unusable(e.to_string()))?;
                        at as u64
                    }
                    Err(at) => {
                        return Err(OpenError::Unusable(
                            path,
                            format!("damaged frame at byte {at} of a sealed segment"),
                        ))
                    }
                };
                if !is_head {
                    let hint = hint_path(dir, id);
                    crate::durable::write_atomically(&hint, &frame::encode_hints(&hints))
                        .map_err(|e| OpenError::Unusable(hint, e.to_string()))?;
                }
                (hints, size)
            }
        };
        // The head is mapped for the appends to come.
        let map_len = if is_head {
            size.max(settings.segment_bytes)
        } else {
            size
        };
        segments.insert(id, Arc::new(Segment::new(file, size, map_len, &path)));
        replay(&mut shards, &segments, id, &hints);
        if is_head {
            head_hints = HintFile::of(&hints);
        }
    }
    let head = match last {
        Some(id) => id,
        None => {
            let id = first.max(1);
            let segment = create_segment(dir, id, settings.segment_bytes)
                .map_err(|e| unusable(e.to_string()))?;
            segments.insert(id, Arc::new(segment));
            id
        }
    };
    let digests = Digests::new(settings.buckets);
    let (mut items, mut bytes) = (0, 0);
    for shard in &shards {
        for entry in shard.index.iter().map(|slot| &slot.entry) {
            items += u64::from(entry.summary.live);
            bytes += u64::from(entry.summary.footprint);
            digests.record(&entry_delta(&digests, entry));
        }
    }
    Ok(Recovered {
        shards,
        segments,
        head,
        head_hints,
        items,
        bytes,
        digests,
    })
}

/// Applies one segment's frames, in order, to the index.
fn replay(shards: &mut [Shard], segments: &BTreeMap<u32, Arc<Segment>>, id: u32, hints: &[Hint]) {
    let dead = |segment: u32, len: u32| {
        if let Some(s) = segments.get(&segment) {
            s.dead.fetch_add(u64::from(len), Ordering::Relaxed);
        }
    };
    for hint in hints {
        let hash = key_hash(&hint.key);
        let shard = &mut shards[super::shard_of(hash)];
        let old = match hint.kind {
            Kind::Put => shard.insert(
                &hint.key,
                Entry {
                    segment: id,
                    offset: hint.offset,
                    len: hint.len,
                    hash,
                    summary: hint.summary,
                },
            ),
            Kind::Remove => {
                dead(id, hint.len);
                shard.remove(hash, &hint.key)
            }
        };
        if let Some(old) = old {
            dead(old.segment, old.len);
        }
    }
}

/// Reads every frame of every segment (`kai store check`).
pub(super) fn check(dir: &Path) -> Result<String, StoreError> {
    let ids = segment_ids(dir).map_err(|e| super::io_error(dir, e))?;
    let first = first(dir);
    let (mut frames, mut bytes, mut problems) = (0u64, 0u64, Vec::new());
    for id in ids.into_iter().filter(|&id| id >= first) {
        let path = segment_path(dir, id);
        let content = fs::read(&path).map_err(|e| super::io_error(&path, e))?;
        let (hints, end) = scan(&content);
        frames += hints.len() as u64;
        bytes += content.len() as u64;
        if let Err(at) = end {
            problems.push(format!("{}: unreadable from byte {at}", path.display()));
        }
        let hint = hint_path(dir, id);
        if let Ok(kept) = fs::read(&hint) {
            if frame::decode_hints(&kept).as_deref() != Some(&hints[..]) {
                problems.push(format!("{}: does not match its segment", hint.display()));
            }
        }
    }
    let report = format!(
        "{}: {} ({frames} frames in {bytes} bytes)\n{}",
        dir.display(),
        if problems.is_empty() {
            "consistent"
        } else {
            "damaged"
        },
        problems
            .iter()
            .map(|p| format!("  {p}\n"))
            .collect::<String>()
    );
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(StoreError::Damaged(report))
    }
}

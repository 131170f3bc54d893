//! Compaction: a sealed segment in which at least a third of the bytes are dead has its
//! live records copied to the head of the log (through the committer, like any write, and
//! paced), and is deleted once the copies are on disk and no index entry points into it.
//! Every sealed segment then holds at most 1.5× its live bytes.

use super::frame::{self, Kind};
use super::{hint_path, key_hash, lock, recovery, shard_of, Shared};
use crate::store::StoreError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the compactor looks for a segment worth compacting.
const INTERVAL: Duration = Duration::from_secs(1);

pub(super) fn run(shared: &Shared) {
    loop {
        {
            let syncs = lock(&shared.syncs);
            let (syncs, _) = (shared.stop_signal)
                .wait_timeout_while(syncs, INTERVAL, |s| !s.stopping)
                .unwrap_or_else(|p| p.into_inner());
            if syncs.stopping {
                return;
            }
        }
        while compact_once(shared, false) {
            if shared.stop_requested() {
                return;
            }
        }
    }
}

/// The sealed segment to compact next: the one with most dead bytes among those at least a
/// third dead (with `force`, any dead byte will do).
pub(super) fn candidate(shared: &Shared, force: bool) -> Option<u32> {
    let head = shared.head_id.load(Ordering::Relaxed);
    let segments = shared.segments.read().unwrap_or_else(|p| p.into_inner());
    (segments.range(..head))
        // Its hint file, what compaction reads, is not on disk yet.
        .filter(|(id, _)| !shared.hint_writer.is_unwritten(**id))
        .map(|(id, s)| {
            (
                *id,
                s.size.load(Ordering::Relaxed),
                s.dead.load(Ordering::Relaxed),
            )
        })
        .filter(|&(_, size, dead)| {
            if force {
                dead > 0
            } else {
                dead * 3 >= size && dead > 0
            }
        })
        .max_by_key(|&(_, _, dead)| dead)
        .map(|(id, _, _)| id)
}

/// Compacts one segment; false when none needed it (or the store is closing).
pub(super) fn compact_once(shared: &Shared, force: bool) -> bool {
    // One compaction at a time (the compactor thread and `kai store compact`).
    let _one = shared.compacting.lock().unwrap_or_else(|p| p.into_inner());
    let Some(id) = candidate(shared, force) else {
        return false;
    };
    match compact(shared, id) {
        Ok(true) => true,
        Ok(false) => false,
        Err(err) => {
            log::error!("disk store compaction of segment {id} failed: {err}");
            false
        }
    }
}

fn compact(shared: &Shared, id: u32) -> Result<bool, StoreError> {
    let hint_file = hint_path(&shared.dir, id);
    let hints = std::fs::read(&hint_file)
        .ok()
        .and_then(|bytes| frame::decode_hints(&bytes))
        .ok_or_else(|| {
            StoreError::Damaged(format!("{}: missing or damaged", hint_file.display()))
        })?;
    let Some(segment) = shared.segment(id) else {
        return Ok(false);
    };
    let size = segment.size.load(Ordering::Relaxed);
    let oldest = {
        let segments = shared.segments.read().unwrap_or_else(|p| p.into_inner());
        segments.keys().next() == Some(&id)
    };
    let rate = shared.settings.compaction_rate.max(1 << 20) as f64;
    let started = Instant::now();
    let mut copied = 0u64;
    // The puts moved, by ring hash and key: only their entries could still point here, as
    // an entry that no longer points at a frame never points back (writes go to the head).
    let mut moved = Vec::new();
    for hint in &hints {
        if shared.stop_requested() {
            return Ok(false);
        }
        let hash = key_hash(&hint.key);
        let mut shard = lock(&shared.shards[shard_of(hash)]);
        match hint.kind {
            Kind::Put => {
                let Some(entry) = shard.get(hash, &hint.key).copied() else {
                    continue;
                };
                if entry.segment != id || entry.offset != hint.offset {
                    continue;
                }
                // The frame moves as it is: it holds the key and its versions already.
                let frame = shared.read_frame(&segment, &entry)?;
                let summary = Some(entry.summary);
                let at = shared.append(&frame, &hint.key, summary)?;
                shared.place(&mut shard, &hint.key, hash, summary, &at);
                moved.push((hash, &hint.key));
            }
            // A remove must outlive every older frame of its key; only in the oldest
            // segment is there none.
            Kind::Remove if !oldest && shard.get(hash, &hint.key).is_none() => {
                let mut frame = Vec::new();
                frame::encode(&mut frame, Kind::Remove, &hint.key, &[]);
                let at = shared.append(&frame, &hint.key, None)?;
                shared.place(&mut shard, &hint.key, hash, None, &at);
            }
            Kind::Remove => continue,
        }
        drop(shard);
        copied += u64::from(hint.len);
        // Pace: never ahead of `compaction_rate`.
        let due = Duration::from_secs_f64(copied as f64 / rate);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    // The copies must be on disk before the originals go.
    shared.sync()?;
    let still_used = moved.iter().any(|&(hash, key)| {
        let shard = lock(&shared.shards[shard_of(hash)]);
        shard.get(hash, key).is_some_and(|e| e.segment == id)
    });
    if still_used {
        log::info!("disk store compaction of segment {id}: records were rewritten while it ran; it is retried");
        return Ok(false);
    }
    {
        let mut segments = shared.segments.write().unwrap_or_else(|p| p.into_inner());
        segments.remove(&id);
    }
    recovery::delete_segment(&shared.dir, id);
    shared.compactions.fetch_add(1, Ordering::Relaxed);
    (shared.compacted_bytes).fetch_add(size.saturating_sub(copied), Ordering::Relaxed);
    log::debug!("disk store compacted segment {id}: {size} bytes, {copied} still live");
    Ok(true)
}

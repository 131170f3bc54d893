//! Compaction: a sealed segment in which at least a third of the bytes are dead has its
//! live records copied to the head of the log (through the committer, like any write, and
//! paced), and is deleted once the copies are on disk and no index entry points into it.
//! Every sealed segment then holds at most 1.5× its live bytes.
//!
//! The live records are found by walking the index for entries that point into the
//! segment (one walk for a pass of up to `PASS_SEGMENTS`, which waits to fill); its hint
//! file is read only for its removes, which no entry names.

use super::frame::{self, Kind};
use super::{hint_path, key_hash, lock, recovery, shard_of, Shared};
use crate::store::StoreError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the compactor looks for a segment worth compacting.
const INTERVAL: Duration = Duration::from_secs(1);

/// Compacts whenever a pass is full, and otherwise once its segments have waited
/// `compaction_settle`: every pass walks the whole index, and under a storm of overwrites a
/// pass a second (of two or three segments) was 7 % of a periodic node's CPU with 2-3 M keys.
/// Meanwhile the waiting segments die further, so there is less to copy when they go.
pub(super) fn run(shared: &Shared) {
    let mut waiting_since: Option<Instant> = None;
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
        loop {
            let waiting = candidates(shared, false).len();
            if waiting == 0 {
                waiting_since = None;
                break;
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if waiting < PASS_SEGMENTS && since.elapsed() < shared.settings.compaction_settle {
                break;
            }
            waiting_since = None;
            if !compact_once(shared, false) || shared.stop_requested() {
                break;
            }
        }
        if shared.stop_requested() {
            return;
        }
    }
}

/// The most segments one pass compacts after one walk of the index (below `u8::MAX`).
pub(super) const PASS_SEGMENTS: usize = 8;

/// The sealed segments to compact next, most dead bytes first: those at least a third dead
/// (with `force`, any dead byte will do), at most `PASS_SEGMENTS`.
pub(super) fn candidates(shared: &Shared, force: bool) -> Vec<u32> {
    let head = shared.head_id.load(Ordering::Relaxed);
    let segments = shared.segments.read().unwrap_or_else(|p| p.into_inner());
    let mut found: Vec<(u32, u64)> = (segments.range(..head))
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
        .map(|(id, _, dead)| (id, dead))
        .collect();
    found.sort_unstable_by_key(|&(id, dead)| (std::cmp::Reverse(dead), id));
    found
        .into_iter()
        .take(PASS_SEGMENTS)
        .map(|(id, _)| id)
        .collect()
}

/// Compacts the segments most worth it, after one walk of the index for all of them (a
/// walk per segment was 12 % of a periodic node's CPU with 4.4 M keys); false when none
/// was compacted (none needed it, or the store is closing).
pub(super) fn compact_once(shared: &Shared, force: bool) -> bool {
    // One compaction at a time (the compactor thread and `kai store compact`).
    let _one = shared.compacting.lock().unwrap_or_else(|p| p.into_inner());
    let ids = candidates(shared, force);
    if ids.is_empty() {
        return false;
    }
    let mut compacted = false;
    for (id, live) in ids.iter().zip(entries_into(shared, &ids)) {
        match compact_found(shared, *id, live) {
            Ok(done) => compacted |= done,
            // A full or failing disk is logged once a spell (`write_health`), not once
            // per segment and pass.
            Err(err) if shared.write_health.failing() => {
                log::debug!("disk store compaction of segment {id} failed: {err}")
            }
            Err(err) => log::error!("disk store compaction of segment {id} failed: {err}"),
        }
        if shared.stop_requested() {
            return false;
        }
    }
    compacted
}

/// Compacts segment `id` alone.
#[cfg(test)]
pub(super) fn compact(shared: &Shared, id: u32) -> Result<bool, StoreError> {
    let live = entries_into(shared, &[id]).pop().unwrap_or_default();
    compact_found(shared, id, live)
}

/// Compacts segment `id`, whose live puts are among `live` (found by `entries_into` after
/// it was sealed).
fn compact_found(shared: &Shared, id: u32, live: Vec<Live>) -> Result<bool, StoreError> {
    let hint_file = hint_path(&shared.dir, id);
    let removes = std::fs::read(&hint_file)
        .ok()
        // Only removes: a live put is found in the index.
        .and_then(|bytes| frame::decode_hints_of(&bytes, |kind| kind == Kind::Remove))
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
    let mut pace = Pace::new(shared.settings.compaction_rate);
    // The live puts, in file order. Only an entry that pointed here at the walk can be
    // live: one that no longer does never points back, as writes go to the head.
    for (offset, hash, key) in &live {
        if shared.stop_requested() {
            return Ok(false);
        }
        let mut shard = lock(&shared.shards[shard_of(*hash)]);
        let Some(entry) = shard.get(*hash, key).copied() else {
            continue;
        };
        if entry.segment != id || entry.offset != *offset {
            continue;
        }
        // The frame moves as it is: it holds the key and its versions already.
        let frame = shared.read_frame(&segment, &entry)?;
        let summary = Some(entry.summary);
        let at = shared.append(&frame, key, summary)?;
        shared.place(&mut shard, key, *hash, summary, &at);
        drop(shard);
        pace.copied(entry.len);
    }
    // A remove must outlive every older frame of its key; only in the oldest segment is
    // there none. No index entry names a removed key, so removes are found in the hints.
    for hint in removes.iter().filter(|_| !oldest) {
        if shared.stop_requested() {
            return Ok(false);
        }
        let hash = key_hash(&hint.key);
        let mut shard = lock(&shared.shards[shard_of(hash)]);
        if shard.get(hash, &hint.key).is_some() {
            continue;
        }
        let mut frame = Vec::new();
        frame::encode(&mut frame, Kind::Remove, &hint.key, &[]);
        let at = shared.append(&frame, &hint.key, None)?;
        shared.place(&mut shard, &hint.key, hash, None, &at);
        drop(shard);
        pace.copied(hint.len);
    }
    // The copies must be on disk before the originals go.
    shared.sync()?;
    // Only the keys found live can still point here; a second walk of the whole index cost
    // as much as the first.
    let still_used = live.iter().any(|(_, hash, key)| {
        let shard = lock(&shared.shards[shard_of(*hash)]);
        shard.get(*hash, key).is_some_and(|e| e.segment == id)
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
    (shared.compacted_bytes).fetch_add(size.saturating_sub(pace.total), Ordering::Relaxed);
    log::debug!(
        "disk store compacted segment {id}: {size} bytes, {} still live",
        pace.total
    );
    Ok(true)
}

/// An index entry found pointing into a segment: its offset there, ring hash and key.
type Live = (u32, u32, Box<[u8]>);

/// For each of the segments `ids`, the index entries that point into it, in file order,
/// from one walk of the index. Walking costs a few instructions an entry; looking each of
/// a segment's hints up cost an md5 of its key, and by the time a segment is compacted
/// most of its hints are dead.
fn entries_into(shared: &Shared, ids: &[u32]) -> Vec<Vec<Live>> {
    let mut found = vec![Vec::new(); ids.len()];
    // Which of `ids` a segment id is, by its distance from the lowest: one comparison for
    // most slots, which point elsewhere.
    let lowest = ids.iter().copied().min().unwrap_or(0);
    let span = ids.iter().map(|&id| id - lowest + 1).max().unwrap_or(0);
    let mut position = vec![u8::MAX; span as usize];
    for (at, &id) in ids.iter().enumerate() {
        position[(id - lowest) as usize] = at as u8;
    }
    for shard in &shared.shards {
        let shard = lock(shard);
        for slot in shard.index.iter() {
            let distance = slot.entry.segment.wrapping_sub(lowest);
            if let Some(&at) = position.get(distance as usize).filter(|&&at| at != u8::MAX) {
                found[usize::from(at)].push((slot.entry.offset, slot.entry.hash, slot.key.clone()));
            }
        }
    }
    for live in &mut found {
        live.sort_unstable_by_key(|&(offset, _, _)| offset);
    }
    found
}

/// How far ahead of its rate the copying may run before it sleeps. A sleep after every
/// record (one every 64 µs at 16 MiB/s) cost a periodic node 2 % of its CPU in timer
/// syscalls and context switches taken from the clients.
const PACE_SLACK: Duration = Duration::from_millis(5);

/// Keeps compaction's copying under `compaction_rate` bytes a second.
struct Pace {
    rate: f64,
    started: Instant,
    total: u64,
    sleeps: u32,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate: rate.max(1 << 20) as f64,
            started: Instant::now(),
            total: 0,
            sleeps: 0,
        }
    }

    /// Counts `len` bytes copied, sleeping once the copying is `PACE_SLACK` ahead of the
    /// rate.
    fn copied(&mut self, len: u32) {
        self.total += u64::from(len);
        let due = Duration::from_secs_f64(self.total as f64 / self.rate);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            if ahead >= PACE_SLACK {
                self.sleeps += 1;
                std::thread::sleep(ahead);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_keeps_the_rate_with_a_sleep_per_slack_not_per_record() {
        // 256 KiB in 1 KiB records at the floor rate of 1 MiB/s: a quarter of a second.
        let mut pace = Pace::new(0);
        let started = Instant::now();
        for _ in 0..256 {
            pace.copied(1024);
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(250) - PACE_SLACK,
            "{elapsed:?}"
        );
        let most = (250_000 / PACE_SLACK.as_micros() + 1) as u32;
        assert!(
            pace.sleeps <= most,
            "{} sleeps for 256 records",
            pace.sleeps
        );
        assert!(pace.sleeps > 0);
    }
}

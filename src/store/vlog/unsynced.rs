//! The head's frames written since its last sync that succeeded, kept until one does.
//!
//! Linux marks the pages of a failed writeback clean: after an fdatasync fails, the frames
//! it covered may be neither dirty nor on disk, and the next fdatasync returns 0 without
//! writing them. Trusting it would leave a hole in the head, and recovery cuts the head
//! at its first damaged frame, taking every frame acknowledged after the hole with it.
//! So after a failed sync the kept frames are written again before a sync is trusted.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Buffers kept for reuse once their frames are synced: a write-out per group commit
/// would otherwise allocate a fresh 64 KiB buffer each time.
const SPARE_BUFFERS: usize = 2;

struct Chunk {
    segment: u32,
    at: u64,
    frames: Arc<Vec<u8>>,
}

/// Lives in the head, under its lock.
#[derive(Default)]
pub(super) struct Unsynced {
    /// In the order written, which is the log's order: the head is written by one writer
    /// at a time (a handed-off write, or a write-out of the settled head).
    chunks: Vec<Chunk>,
    spare: Vec<Vec<u8>>,
}

impl Unsynced {
    /// Keeps `frames`, just written at `at` in `segment`.
    pub fn push(&mut self, segment: u32, at: u64, frames: Arc<Vec<u8>>) {
        debug_assert!((self.chunks.last()).is_none_or(|c| (c.segment, c.at) < (segment, at)));
        self.chunks.push(Chunk {
            segment,
            at,
            frames,
        });
    }

    /// An empty buffer with room for `capacity` bytes.
    pub fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Writes the kept frames of `segment` to `file` again, in order.
    pub fn rewrite(&self, segment: u32, file: &File) -> std::io::Result<()> {
        (self.chunks.iter())
            .filter(|chunk| chunk.segment == segment)
            .try_for_each(|chunk| file.write_all_at(&chunk.frames, chunk.at))
    }

    /// Drops the frames a sync of `segment` up to byte `written` made durable, and those
    /// of earlier segments (sealed only after a sync that succeeded).
    pub fn synced(&mut self, segment: u32, written: u64) {
        let covered = |c: &Chunk| c.segment < segment || (c.segment == segment && c.at < written);
        let done = self.chunks.iter().take_while(|c| covered(c)).count();
        for chunk in self.chunks.drain(..done) {
            let Ok(mut buffer) = Arc::try_unwrap(chunk.frames) else {
                continue;
            };
            if self.spare.len() < SPARE_BUFFERS {
                buffer.clear();
                self.spare.push(buffer);
            }
        }
    }

    #[cfg(test)]
    pub fn kept_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.frames.len()).sum()
    }
}

/// The order of the head's syncs. They run one at a time: Linux reports a writeback error
/// to the first fdatasync that asks, so of two overlapping ones the second could return 0
/// for frames the failure dropped.
#[derive(Default)]
pub(super) struct Syncing {
    one_at_a_time: Mutex<()>,
    failures: AtomicU64,
    must_rewrite: AtomicBool,
}

/// Taken before a sync's frames are prepared: which failures it knows of.
#[derive(Clone, Copy)]
pub(super) struct Before(u64);

impl Syncing {
    pub fn before(&self) -> Before {
        Before(self.failures.load(Ordering::Acquire))
    }

    /// Whether a sync has failed since the last one trusted: the kept frames must be
    /// written again first.
    pub fn must_rewrite(&self) -> bool {
        self.must_rewrite.load(Ordering::Acquire)
    }

    /// fdatasyncs `file`. Fails too when another sync failed since `before`: this one may
    /// have returned 0 only because that one took the error.
    pub fn sync(&self, file: &File, before: Before) -> std::io::Result<()> {
        let _alone = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = file.sync_data() {
            self.failures.fetch_add(1, Ordering::AcqRel);
            self.must_rewrite.store(true, Ordering::Release);
            return Err(err);
        }
        if self.failures.load(Ordering::Acquire) != before.0 {
            return Err(std::io::Error::other(
                "an overlapping sync of the log failed",
            ));
        }
        self.must_rewrite.store(false, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_drops_what_it_covered_and_a_rewrite_puts_the_rest_back_in_place() {
        let mut unsynced = Unsynced::default();
        unsynced.push(1, 0, Arc::new(b"sealed".to_vec()));
        unsynced.push(2, 0, Arc::new(b"aaaa".to_vec()));
        unsynced.push(2, 4, Arc::new(b"bbbb".to_vec()));
        // A sync of segment 2 that began after the first write-out, before the second.
        unsynced.synced(2, 4);
        assert_eq!(unsynced.kept_bytes(), 4);
        // Its buffers come back for reuse, empty.
        let reused = unsynced.buffer(64);
        assert!(reused.is_empty() && reused.capacity() >= 4);

        let file = tempfile::tempfile().unwrap();
        file.write_all_at(b"aaaa\0\0\0\0", 0).unwrap();
        unsynced.rewrite(2, &file).unwrap();
        let mut read = [0u8; 8];
        file.read_exact_at(&mut read, 0).unwrap();
        assert_eq!(&read, b"aaaabbbb");
        unsynced.synced(2, 8);
        assert_eq!(unsynced.kept_bytes(), 0);
    }

    #[test]
    fn a_sync_that_follows_a_failed_one_it_overlapped_is_not_trusted() {
        let syncing = Syncing::default();
        let file = tempfile::tempfile().unwrap();
        let before = syncing.before();
        // Another sync failed after this one took `before`.
        syncing.failures.fetch_add(1, Ordering::AcqRel);
        syncing.must_rewrite.store(true, Ordering::Release);
        assert!(syncing.sync(&file, before).is_err());
        assert!(syncing.must_rewrite());
        // One that began after the failure, and so rewrote, is.
        assert!(syncing.sync(&file, syncing.before()).is_ok());
        assert!(!syncing.must_rewrite());
    }
}

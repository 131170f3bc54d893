//! Hint files of sealed segments, written by their own thread. A seal holds the head's lock,
//! and a segment's hint file is megabytes and two fsyncs (5-12 ms for a 64 MiB segment of
//! 1 KiB values): written there, it stopped every write, and the runtime threads waiting on
//! the lock, once per segment. A hint file only saves a scan at the next start (recovery
//! rebuilds a missing one from its segment), so it may come a moment after the seal; the
//! compactor leaves a segment alone until its hint file is on disk.

use super::frame::HintFile;
use super::{hint_path, lock, Shared};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// After a failed write, the next try waits this long.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct HintWriter {
    queue: Mutex<Queue>,
    wanted: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Sealed segments and their frames, oldest first.
    unwritten: VecDeque<(u32, Arc<HintFile>)>,
    /// The segment whose hint file failed to write last, until a write succeeds.
    failing: Option<u32>,
    stopping: bool,
}

impl HintWriter {
    /// Queues the hint file of segment `id`, just sealed.
    pub(super) fn push(&self, id: u32, hints: HintFile) {
        lock(&self.queue).unwritten.push_back((id, Arc::new(hints)));
        // All: `flush` waits on the same condition variable.
        self.wanted.notify_all();
    }

    /// Waits until every queued hint file is written (`kai store compact`), or one fails:
    /// a full disk must not hang the caller.
    pub(super) fn flush(&self) {
        let queue = lock(&self.queue);
        drop(
            (self.wanted)
                .wait_while(queue, |q| {
                    !q.unwritten.is_empty() && !q.stopping && q.failing.is_none()
                })
                .unwrap_or_else(|p| p.into_inner()),
        );
    }

    /// Whether segment `id`'s hint file is still to be written.
    pub(super) fn is_unwritten(&self, id: u32) -> bool {
        (lock(&self.queue).unwritten.iter()).any(|(queued, _)| *queued == id)
    }

    /// Ends `run` once every queued file is written (or has failed once more).
    pub(super) fn stop(&self) {
        lock(&self.queue).stopping = true;
        self.wanted.notify_all();
    }
}

/// The hint writer thread.
pub(super) fn run(shared: &Shared) {
    let writer = &shared.hint_writer;
    loop {
        let (id, hints, stopping) = {
            let queue = lock(&writer.queue);
            let queue = (writer.wanted)
                .wait_while(queue, |q| q.unwritten.is_empty() && !q.stopping)
                .unwrap_or_else(|p| p.into_inner());
            match queue.unwritten.front() {
                Some((id, hints)) => (*id, Arc::clone(hints), queue.stopping),
                None => return,
            }
        };
        let path = hint_path(&shared.dir, id);
        match crate::durable::write_atomically(&path, &hints.finish()) {
            Ok(()) => {
                let mut queue = lock(&writer.queue);
                queue.unwritten.pop_front();
                queue.failing = None;
                drop(queue);
                writer.wanted.notify_all();
                // A flush_all may have deleted the segment meanwhile: no file outlives it.
                if shared.segment(id).is_none() {
                    let _ = std::fs::remove_file(&path);
                }
            }
            Err(err) if stopping => {
                // The next start rebuilds it from the segment.
                log::warn!("{}: cannot write: {err}", path.display());
                lock(&writer.queue).unwritten.pop_front();
            }
            Err(err) => {
                let mut queue = lock(&writer.queue);
                // Warned about once, not at every retry.
                if queue.failing.replace(id) != Some(id) {
                    log::warn!(
                        "{}: cannot write (retrying each second): {err}",
                        path.display()
                    );
                }
                writer.wanted.notify_all();
                let _ = (writer.wanted)
                    .wait_timeout_while(queue, RETRY, |q| !q.stopping)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

//! Whether the log's writes and syncs succeed, for the stats, the syncer and the node's log.
//! A full disk fails every write and sync, as often as clients write: a spell of
//! failures is logged when it starts, then at most once a minute with how many failed
//! since, and once when a write succeeds again.

use super::StoreError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a spell that goes on is logged again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct WriteHealth {
    errors: AtomicU64,
    failing: AtomicBool,
    /// The spell under way; `failing` changes only under this lock.
    spell: Mutex<Option<Spell>>,
}

struct Spell {
    started: Instant,
    failures: u64,
    reported_at: Instant,
    /// Failures since the last line.
    unreported: u64,
}

impl WriteHealth {
    /// Failed writes and syncs so far (`kai_store_write_errors`).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Whether the last write or sync failed (`kai_store_write_failing`).
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Passes `result` on, counting and logging it if `what` failed ("disk store sync
    /// failed") and ending a spell of failures if it succeeded.
    pub fn note<T>(&self, what: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Err(err) => self.failed(what, err),
            // Read first, so the common case leaves the cache line shared.
            Ok(_) if self.failing() => self.recovered(),
            Ok(_) => {}
        }
        result
    }

    fn failed(&self, what: &str, err: &StoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut spell = self.spell.lock().unwrap_or_else(|p| p.into_inner());
        self.failing.store(true, Ordering::Relaxed);
        let now = Instant::now();
        let Some(spell) = spell.as_mut() else {
            log::error!("{what}: {err}");
            *spell = Some(Spell {
                started: now,
                failures: 1,
                reported_at: now,
                unreported: 0,
            });
            return;
        };
        spell.failures += 1;
        spell.unreported += 1;
        if now.duration_since(spell.reported_at) >= REPORT_EVERY {
            log::error!(
                "{what}: {err} (failing for {} s; {} more failures since the last report)",
                now.duration_since(spell.started).as_secs(),
                spell.unreported - 1
            );
            spell.reported_at = now;
            spell.unreported = 0;
        }
    }

    fn recovered(&self) {
        let mut spell = self.spell.lock().unwrap_or_else(|p| p.into_inner());
        self.failing.store(false, Ordering::Relaxed);
        if let Some(spell) = spell.take() {
            log::warn!(
                "disk store writes succeed again, after {} failed writes and syncs over {} s",
                spell.failures,
                spell.started.elapsed().as_secs()
            );
        }
    }
}

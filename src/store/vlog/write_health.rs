//! Whether the log's writes and syncs succeed, for the stats, the syncer and the node's log.
//! A full disk fails every write and sync, as often as clients write: a spell of
//! failures is logged when it starts, then at most once a minute with how many failed so
//! far, and once when a sync succeeds again. Only a sync ends a spell: a disk that fails
//! its syncs takes every write into the page cache, and a write's success there says
//! nothing about whether the disk stores it.

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
}

impl WriteHealth {
    /// Failed writes and syncs so far (`kai_store_write_errors`).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Whether a write or sync failed since the last sync that succeeded
    /// (`kai_store_write_failing`).
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Passes on the result of a write (or of creating a segment), counting and logging
    /// it if `what` failed ("disk store write failed").
    pub fn note_write<T>(
        &self,
        what: &str,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(err) = &result {
            if let Some(line) = self.failed(what, err, Instant::now()) {
                log::error!("{line}");
            }
        }
        result
    }

    /// Passes on the result of a sync: a failure as `note_write`, a success ends the
    /// spell of failures.
    pub fn note_sync<T>(&self, what: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        // Read first, so the common case leaves the cache line shared.
        if result.is_ok() && self.failing() {
            if let Some(line) = self.recovered(Instant::now()) {
                log::warn!("{line}");
            }
        }
        self.note_write(what, result)
    }

    /// Counts a failure at `now`; the line to log, if one is due.
    fn failed(&self, what: &str, err: &StoreError, now: Instant) -> Option<String> {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut spell = self.spell.lock().unwrap_or_else(|p| p.into_inner());
        self.failing.store(true, Ordering::Relaxed);
        let Some(spell) = spell.as_mut() else {
            *spell = Some(Spell {
                started: now,
                failures: 1,
                reported_at: now,
            });
            return Some(format!("{what}: {err}"));
        };
        spell.failures += 1;
        if now.duration_since(spell.reported_at) < REPORT_EVERY {
            return None;
        }
        let line = format!(
            "{what}: {err} (failing for {} s, {} failed writes and syncs so far)",
            now.duration_since(spell.started).as_secs(),
            spell.failures
        );
        spell.reported_at = now;
        Some(line)
    }

    /// Ends the spell at `now`; the line to log, unless another thread ended it first.
    fn recovered(&self, now: Instant) -> Option<String> {
        let mut spell = self.spell.lock().unwrap_or_else(|p| p.into_inner());
        self.failing.store(false, Ordering::Relaxed);
        let spell = spell.take()?;
        Some(format!(
            "disk store syncs succeed again, after {} failed writes and syncs over {} s",
            spell.failures,
            now.duration_since(spell.started).as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> StoreError {
        let error = std::io::Error::from_raw_os_error(28);
        super::super::io_error(std::path::Path::new("/data/log/0000000001.log"), error)
    }

    #[test]
    fn only_a_sync_ends_a_spell() {
        let health = WriteHealth::default();
        let _ = health.note_sync("disk store sync failed", Err::<(), _>(full()));
        assert!(health.failing());
        // A write that succeeds went to the page cache: it says nothing of the disk.
        let _ = health.note_write("disk store write failed", Ok(()));
        assert!(health.failing());
        let _ = health.note_sync("disk store sync failed", Ok(()));
        assert!(!health.failing());
        assert_eq!(health.errors(), 1);
    }

    #[test]
    fn a_spell_is_logged_when_it_starts_once_a_minute_while_it_lasts_and_when_it_ends() {
        let health = WriteHealth::default();
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let first = health.failed("disk store sync failed", &full(), at(0));
        assert_eq!(
            first.as_deref(),
            Some(
                "disk store sync failed: /data/log/0000000001.log: \
                 No space left on device (os error 28)"
            )
        );
        assert!(health.failing());
        for secs in [1, 30, 59] {
            assert_eq!(
                health.failed("disk store write failed", &full(), at(secs)),
                None
            );
        }
        let reminder = health
            .failed("disk store write failed", &full(), at(61))
            .unwrap();
        assert!(
            reminder.ends_with("(failing for 61 s, 5 failed writes and syncs so far)"),
            "{reminder}"
        );
        assert_eq!(
            health.failed("disk store write failed", &full(), at(100)),
            None
        );
        let reminder = health
            .failed("disk store write failed", &full(), at(121))
            .unwrap();
        assert!(reminder.ends_with("(failing for 121 s, 7 failed writes and syncs so far)"));
        assert_eq!(health.errors(), 7);
        assert_eq!(
            health.recovered(at(130)).as_deref(),
            Some("disk store syncs succeed again, after 7 failed writes and syncs over 130 s")
        );
        assert!(!health.failing());
        // Another writer's success after the first: nothing more to say.
        assert_eq!(health.recovered(at(131)), None);
        // A new spell is a new first line.
        assert!(health
            .failed("disk store sync failed", &full(), at(200))
            .is_some());
        assert_eq!(health.errors(), 8);
    }
}

//! Which versions this node has served, and when last: meta's `h` (hit before) and `l`
//! (seconds since last access), and `me`'s `fetch` and `la`.
//!
//! memcached keeps these in every item. kai's versions are replicated, and an access is
//! not a write, so this is node-local bookkeeping: a reader asking another node sees that
//! node's accesses. It costs nothing until a client first asks for `h`, `l` or `me`; from
//! then on every hit served here is noted. Entries are keyed by a hash of the key and
//! validated by the version's cas, so a new version reads as never fetched, last accessed
//! when written. The table is bounded: a full shard is emptied (those versions then read
//! as not fetched since their write).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const SHARDS: usize = 16;
/// 16 × 65,536 entries of about 32 bytes: at most some 32 MiB.
const SHARD_CAPACITY: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Access {
    cas: u64,
    at_secs: u64,
}

pub struct AccessLog {
    tracking: AtomicBool,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<u64, Access>>>,
}

/// A version's access history as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct History {
    pub fetched: bool,
    /// Unix seconds of the last access (the write, if never fetched here).
    pub last_access_secs: u64,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog {
            tracking: AtomicBool::new(false),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl AccessLog {
    /// Starts noting accesses (the first request that asks about them).
    pub fn track(&self) {
        self.tracking.store(true, Ordering::Relaxed);
    }

    /// Notes that the version `cas` of `key` was served now. Until tracking starts this
    /// is one atomic load: no clock read, no hashing, on every get.
    pub fn note(&self, key: &[u8], cas: u64) {
        if !self.tracking.load(Ordering::Relaxed) {
            return;
        }
        let now_secs = crate::time::unix_secs();
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(&hash) {
            shard.clear();
        }
        shard.insert(
            hash,
            Access {
                cas,
                at_secs: now_secs,
            },
        );
    }

    /// The history of version `cas` of `key`, written at `written_secs`.
    pub fn history(&self, key: &[u8], cas: u64, written_secs: u64) -> History {
        let hash = self.hasher.hash_one(key);
        match self.shard(hash).get(&hash) {
            Some(access) if access.cas == cas => History {
                fetched: true,
                last_access_secs: access.at_secs,
            },
            _ => History {
                fetched: false,
                last_access_secs: written_secs,
            },
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Access>> {
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_are_noted_once_tracking_starts_and_belong_to_one_version() {
        let log = AccessLog::default();
        log.note(b"k", 7);
        let unseen = History {
            fetched: false,
            last_access_secs: 50,
        };
        assert_eq!(log.history(b"k", 7, 50), unseen, "not tracking yet");
        log.track();
        log.note(b"k", 7);
        let seen = log.history(b"k", 7, 50);
        assert!(seen.fetched);
        assert!(seen.last_access_secs >= crate::time::unix_secs() - 5);
        // A new version of the key has not been fetched.
        assert_eq!(log.history(b"k", 8, 50), unseen);
        assert!(!log.history(b"other", 7, 50).fetched);
    }

    #[test]
    fn a_full_shard_is_emptied_rather_than_grown() {
        let log = AccessLog::default();
        log.track();
        for i in 0..(SHARDS * SHARD_CAPACITY * 2) as u64 {
            log.note(&i.to_be_bytes(), 1);
        }
        let held: usize = log.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * SHARD_CAPACITY, "{held}");
    }
}

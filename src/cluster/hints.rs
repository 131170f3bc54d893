//! Hinted handoff: keys whose owner missed a write, kept until the owner is up again and
//! has been sent this node's versions. Persisted in data_dir so a restart does not forget
//! them; bounded so a long outage cannot exhaust memory (past the bound, anti-entropy is
//! what repairs the owner).

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

pub const MAX_HINTS: usize = 1_000_000;

/// The hint file's first line from format 2 on; format 1 (release 0.1.0) has none.
const HINTS_FORMAT: &str = "# kai hints 2";

pub struct Hints {
    pending: Mutex<BTreeMap<SocketAddr, BTreeSet<Bytes>>>,
    path: Option<PathBuf>,
    dirty: AtomicBool,
    /// Set once the bound was hit, so the warning is logged once per episode.
    overflowed: AtomicBool,
    /// Write the format line (the upgrade is finalised; 0.1.0 would warn at it).
    final_format: AtomicBool,
    /// Before this instant a paced rewrite is skipped.
    next_persist: Mutex<Option<Instant>>,
}

/// A paced rewrite waits this many times as long as the last one took.
const PACE: u32 = 10;

impl Hints {
    pub fn load(path: Option<PathBuf>) -> Hints {
        let mut pending: BTreeMap<SocketAddr, BTreeSet<Bytes>> = BTreeMap::new();
        let text = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        let text = text.filter(|text| match text.lines().next() {
            Some(first) if first.starts_with('#') && first != HINTS_FORMAT => {
                // Hints only speed repair up: anti-entropy still finds what they name.
                log::warn!("ignoring hints in a format this release does not read: {first:?}");
                false
            }
            _ => true,
        });
        if let Some(text) = text {
            for line in text.lines().filter(|line| *line != HINTS_FORMAT) {
                let parsed = line
                    .split_once(' ')
                    .and_then(|(owner, key)| Some((owner.parse().ok()?, unhex(key)?)));
                match parsed {
                    Some((owner, key)) => {
                        pending.entry(owner).or_default().insert(key);
                    }
                    None => log::warn!("ignoring malformed hint line {line:?}"),
                }
            }
        }
        Hints {
            pending: Mutex::new(pending),
            path,
            dirty: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            final_format: AtomicBool::new(false),
            next_persist: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, BTreeSet<Bytes>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, owner: SocketAddr, key: &[u8]) {
        let mut pending = self.lock();
        if pending.values().map(BTreeSet::len).sum::<usize>() >= MAX_HINTS {
            if !self.overflowed.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "{MAX_HINTS} hints pending: further missed writes are left to anti-entropy"
                );
            }
            return;
        }
        if pending
            .entry(owner)
            .or_default()
            .insert(Bytes::copy_from_slice(key))
        {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Up to `limit` keys hinted for `owner`.
    pub fn batch(&self, owner: SocketAddr, limit: usize) -> Vec<Bytes> {
        (self.lock().get(&owner))
            .map(|keys| keys.iter().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    pub fn remove(&self, owner: SocketAddr, key: &Bytes) {
        let mut pending = self.lock();
        if let Some(keys) = pending.get_mut(&owner) {
            keys.remove(key);
            if keys.is_empty() {
                pending.remove(&owner);
            }
            self.dirty.store(true, Ordering::Release);
            self.overflowed.store(false, Ordering::Relaxed);
        }
    }

    pub fn owners(&self) -> Vec<SocketAddr> {
        self.lock().keys().copied().collect()
    }

    pub fn count_for(&self, owner: SocketAddr) -> usize {
        self.lock().get(&owner).map_or(0, BTreeSet::len)
    }

    pub fn total(&self) -> usize {
        self.lock().values().map(BTreeSet::len).sum()
    }

    /// From now on the file is written with its format line.
    pub fn write_final_format(&self) {
        if !self.final_format.swap(true, Ordering::AcqRel) {
            self.dirty.store(true, Ordering::Release);
        }
    }

    /// Whether there is a file to write (the in-process cluster tests have none).
    pub fn is_file_backed(&self) -> bool {
        self.path.is_some()
    }

    /// Rewrites the hint file if anything changed since the last call.
    pub fn persist(&self) {
        self.persist_at(Instant::now(), false);
    }

    /// `persist`, unless the last rewrite was so recent that rewriting again would spend
    /// more than a tenth of the time writing: during a long outage the file holds up to a
    /// million hints, tens of megabytes, and handoff passes run every second.
    pub fn persist_paced(&self) {
        self.persist_at(Instant::now(), true);
    }

    fn persist_at(&self, now: Instant, paced: bool) {
        let Some(path) = &self.path else { return };
        let mut next = self.next_persist.lock().unwrap_or_else(|p| p.into_inner());
        if paced && next.is_some_and(|next| now < next) {
            return;
        }
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let started = Instant::now();
        // The keys are copied out under the lock and written as text after it is
        // released: a write that adds a hint waits for the copy of a million keys (about
        // 25 ms), not for their hex text.
        let (owners, keys, ends) = {
            let pending = self.lock();
            let (mut keys, mut ends) = (Vec::new(), Vec::new());
            let owners: Vec<(SocketAddr, usize)> = (pending.iter())
                .map(|(owner, hinted)| {
                    for key in hinted {
                        keys.extend_from_slice(key);
                        ends.push(keys.len());
                    }
                    (*owner, hinted.len())
                })
                .collect();
            (owners, keys, ends)
        };
        let mut text = String::with_capacity(keys.len() * 2);
        if self.final_format.load(Ordering::Acquire) {
            text.push_str(HINTS_FORMAT);
            text.push('\n');
        }
        let (mut ends, mut start) = (ends.into_iter(), 0);
        for (owner, count) in owners {
            let owner = owner.to_string();
            for end in ends.by_ref().take(count) {
                let key = &keys[start..end];
                start = end;
                text.push_str(&owner);
                text.push(' ');
                push_hex(&mut text, key);
                text.push('\n');
            }
        }
        if let Err(err) = crate::durable::write_atomically(path, text.as_bytes()) {
            // Try again next time.
            self.dirty.store(true, Ordering::Release);
            log::warn!("cannot persist hints to {}: {err}", path.display());
        }
        *next = Some(now + started.elapsed() * PACE);
    }
}

fn push_hex(text: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        text.push(DIGITS[usize::from(b >> 4)] as char);
        text.push(DIGITS[usize::from(b & 15)] as char);
    }
}

fn unhex(text: &str) -> Option<Bytes> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Hints backed by a file named `hints` in `dir`.
    fn in_dir(dir: &Path) -> (PathBuf, Hints) {
        let path = dir.join("hints");
        (path.clone(), Hints::load(Some(path)))
    }

    #[test]
    fn the_format_line_is_written_once_final_and_an_unknown_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (path, hints) = in_dir(dir.path());
        let owner: SocketAddr = "127.0.0.1:1".parse().unwrap();
        hints.add(owner, b"k");
        hints.persist();
        assert!(!std::fs::read_to_string(&path).unwrap().starts_with('#'));
        hints.write_final_format();
        hints.persist();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&format!("{HINTS_FORMAT}\n")), "{text}");
        assert_eq!(Hints::load(Some(path.clone())).count_for(owner), 1);
        std::fs::write(&path, "# kai hints 9\n127.0.0.1:1 6b\n").unwrap();
        assert_eq!(Hints::load(Some(path)).total(), 0);
    }

    #[test]
    fn a_paced_rewrite_waits_ten_times_the_last_one_and_a_forced_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (path, hints) = in_dir(dir.path());
        let owner: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let start = Instant::now();
        hints.add(owner, b"a");
        hints.persist_at(start, true);
        assert_eq!(Hints::load(Some(path.clone())).count_for(owner), 1);
        // At the same instant: too soon, so the file keeps one hint and stays dirty.
        hints.add(owner, b"b");
        hints.persist_at(start, true);
        assert_eq!(Hints::load(Some(path.clone())).count_for(owner), 1);
        // An hour on, the paced rewrite goes through.
        hints.persist_at(start + std::time::Duration::from_secs(3600), true);
        assert_eq!(Hints::load(Some(path.clone())).count_for(owner), 2);
        // Shutdown's rewrite is never skipped.
        hints.add(owner, b"c");
        hints.persist();
        assert_eq!(Hints::load(Some(path)).count_for(owner), 3);
    }

    #[test]
    fn hints_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (path, hints) = in_dir(dir.path());
        let owner: SocketAddr = "127.0.0.2:11011".parse().unwrap();
        hints.add(owner, b"k\x01 y");
        hints.add(owner, b"other");
        hints.persist();
        let reloaded = Hints::load(Some(path));
        assert_eq!(reloaded.count_for(owner), 2);
        reloaded.remove(owner, &Bytes::from_static(b"k\x01 y"));
        assert_eq!(
            reloaded.batch(owner, 10),
            vec![Bytes::from_static(b"other")]
        );
        assert_eq!(unhex("zz"), None);
    }
}

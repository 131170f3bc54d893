//! This node as a replica: stores versions received from a coordinator, a read repair, a
//! hint or anti-entropy (dominated local versions go, concurrent ones stay as siblings), and
//! forgets tombstones once their grace has passed.

use super::counters::ClusterCounters;
use crate::causality;
use crate::record::{Record, Versions};
use crate::store::{Change, Commit, Store};
use crate::time::{unix_secs, HybridClock};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub struct Replica {
    store: Arc<dyn Store>,
    max_siblings: usize,
    tombstone_grace: Duration,
    counters: Arc<ClusterCounters>,
    clock: Arc<HybridClock>,
}

impl Replica {
    pub fn new(
        store: Arc<dyn Store>,
        max_siblings: usize,
        tombstone_grace: Duration,
        counters: Arc<ClusterCounters>,
        clock: Arc<HybridClock>,
    ) -> Replica {
        Replica {
            store,
            max_siblings,
            tombstone_grace,
            counters,
            clock,
        }
    }

    /// This node's hybrid clock: stamps the writes it coordinates.
    pub fn clock(&self) -> &Arc<HybridClock> {
        &self.clock
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// This node's unexpired versions of `key`, whose ring hash is `hash`.
    pub fn get(&self, key: &[u8], hash: u32) -> Option<Versions> {
        self.store.get_hashed(key, hash, unix_secs())
    }

    /// Stores versions received as a replica (`hash` is the key's ring hash). Returns
    /// whether a live value was there before, and when the change is durable.
    pub fn apply(&self, key: &[u8], hash: u32, incoming: Versions) -> (bool, Commit) {
        let (_, had_live, commit) = self.store_versions(key, hash, incoming, None);
        (had_live, commit)
    }

    /// Stores a version this node coordinates (not a touch). Its clock is raised, in the
    /// same atomic step, to descend every version held here at that moment: two writes
    /// coordinated here at once then get distinct clocks (the later descends the earlier)
    /// rather than equal clocks with different contents (the simulation found it). Returns
    /// the version as stored, to replicate.
    pub fn apply_coordinated(
        &self,
        key: &[u8],
        hash: u32,
        record: Record,
        writer: causality::NodeId,
    ) -> (Record, bool, Commit) {
        let (stored, had_live, commit) =
            self.store_versions(key, hash, Versions::one(record), Some(writer));
        let stored = stored.0.into_iter().next().expect("one version");
        (stored, had_live, commit)
    }

    fn store_versions(
        &self,
        key: &[u8],
        hash: u32,
        incoming: Versions,
        coordinated_by: Option<causality::NodeId>,
    ) -> (Versions, bool, Commit) {
        for version in &incoming.0 {
            self.clock.observe(version.timestamp);
        }
        let mut had_live = false;
        let mut raised: Option<Versions> = None;
        let keeps_held = std::cell::Cell::new(false);
        let mut decide = |current: Option<&Versions>, without_values: bool| {
            had_live = current.is_some_and(Versions::has_live);
            let mut kept = current.map(|v| v.0.clone()).unwrap_or_default();
            let before = kept.clone();
            let incoming = match (coordinated_by, current) {
                (Some(writer), Some(current)) => {
                    &*raised.insert(raise_clocks(&incoming, current, writer))
                }
                _ => &incoming,
            };
            let mut dropped_siblings = 0;
            for version in &incoming.0 {
                // The same version amended (a touch, a recache claim), which keeps
                // clock and cas. A claim, once made, stays.
                if let Some(held) = kept.iter_mut().find(|k| k.is_same_version(version)) {
                    held.expires_at = version.expires_at;
                    held.recache_claimed |= version.recache_claimed;
                    continue;
                }
                let (next, dropped) = causality::apply(kept, version.clone(), self.max_siblings);
                dropped_siblings += dropped;
                kept = next;
            }
            let held = |k: &Record| before.iter().any(|b| b.is_same_version(k));
            if without_values && kept.iter().any(held) {
                // Decided again with the values: logged then, once.
                keeps_held.set(true);
                return Change::Keep;
            }
            if dropped_siblings > 0 {
                log::info!(
                    "key {:?}: dropped {dropped_siblings} oldest siblings over max_siblings",
                    String::from_utf8_lossy(key)
                );
            }
            if kept == before {
                Change::Keep
            } else {
                Change::Put(Versions(kept))
            }
        };
        // The common write supersedes every version held here, so it is first decided on
        // the versions without their values (not copied out of the store). Only a write
        // that keeps one of them is decided again with the values.
        let now_secs = unix_secs();
        let mut commit =
            (self.store).overwrite_hashed(key, hash, now_secs, &mut |c| decide(c, true));
        if keeps_held.get() {
            commit = (self.store).update_hashed(key, hash, now_secs, &mut |c| decide(c, false));
        }
        (raised.unwrap_or(incoming), had_live, commit)
    }

    /// A tombstone written before this (Unix microseconds, on the clock that stamps
    /// writes) is past its grace period.
    fn tombstones_due_before(&self) -> u64 {
        let grace = self.tombstone_grace.as_micros() as u64;
        self.clock.wall_micros().saturating_sub(grace)
    }

    /// Only tombstones whose grace has passed: once every replica held them, safe to forget.
    pub fn only_due_tombstones(&self, versions: &Versions) -> bool {
        let due = self.tombstones_due_before();
        versions.0.iter().all(|r| r.tombstone && r.timestamp <= due)
    }

    /// Drops the tombstones of `key` whose grace has passed (siblings with values stay).
    pub fn forget_due_tombstones(&self, key: &[u8]) {
        let due = self.tombstones_due_before();
        let mut dropped = 0;
        let commit = self.store.update(key, unix_secs(), &mut |current| {
            let Some(current) = current else {
                return Change::Keep;
            };
            let kept: Vec<_> = (current.0.iter())
                .filter(|r| !(r.tombstone && r.timestamp <= due))
                .cloned()
                .collect();
            dropped = current.0.len() - kept.len();
            match (dropped, kept.is_empty()) {
                (0, _) => Change::Keep,
                (_, true) => Change::Remove,
                (_, false) => Change::Put(Versions(kept)),
            }
        });
        // Need not wait for durability: a purge lost in a crash is redone by a later round.
        drop(commit);
        (self.counters.purged_tombstones).fetch_add(dropped as u64, Ordering::Relaxed);
    }
}

/// `incoming` with each clock raised to descend every version `held` here as well, by an
/// increment of `writer`'s entry (see `Replica::apply_coordinated`).
fn raise_clocks(incoming: &Versions, held: &Versions, writer: causality::NodeId) -> Versions {
    let held = held.merged_clock();
    let raised = (incoming.0.iter()).map(|version| {
        let mut version = version.clone();
        if !version.clock.descends(&held) {
            version.clock = version
                .clock
                .merged(&held)
                .advanced(writer, version.timestamp);
        }
        version
    });
    Versions(raised.collect())
}

//! Anti-entropy and ownership handoff (docs/design.md, "Cluster").
//!
//! Every `sync_interval` a node fetches the bucket digests of every member that is up and
//! walks the ring's buckets:
//! - a bucket it owns whose digest differs from another owner's is repaired: the two key
//!   lists (key, fingerprint) are compared and only the differing keys travel, both ways,
//!   merged by vector clock like any replica write (siblings stay, tombstones supersede);
//! - a bucket it owns whose digest every other owner shares, and which holds tombstones,
//!   has the tombstones older than `tombstone_grace` purged: every replica holds them;
//! - a bucket it holds but no longer owns (after a join, a leave, a remove, or as a
//!   fallback replica) is pushed to all its owners, and each key is dropped only after every
//!   owner acknowledged it, and only if it did not change meanwhile.
//!
//! All of it is paced by `sync_rate` bytes per second. Nothing is kept between rounds
//! except the digests themselves, so a crash mid-transfer resumes with the next round.

use super::coordinator::Coordinator;
use super::counters::ClusterCounters;
use super::error::PeerError;
use super::member::Liveness;
use crate::keyspace::key_hash;
use crate::record::Versions;
use crate::shutdown::Periodic;
use crate::store::digest::fingerprint;
use crate::store::{Change, Store};
use crate::time::unix_secs;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keys in flight at once within one bucket exchange.
const CONCURRENCY: usize = 32;

/// Paces all background transfer to `rate` bytes per second.
struct Pace {
    rate: u64,
    next_free: tokio::sync::Mutex<Instant>,
}

impl Pace {
    async fn take(&self, bytes: u64) {
        if self.rate == 0 {
            return;
        }
        let wait_until = {
            let mut next_free = self.next_free.lock().await;
            let now = Instant::now();
            // An idle link may not bank more than a tenth of a second of credit.
            let start = (*next_free).max(now - Duration::from_millis(100));
            *next_free = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            start
        };
        tokio::time::sleep_until(wait_until.into()).await;
    }
}

pub struct AntiEntropy {
    cluster: Arc<Coordinator>,
    store: Arc<dyn Store>,
    pace: Pace,
}

enum Task {
    Repair(u32, Vec<SocketAddr>),
    PurgeTombstones(u32),
    Handoff(u32, Vec<SocketAddr>),
}

fn size_of(key: &[u8], versions: &Versions) -> u64 {
    (key.len() + versions.0.iter().map(|r| r.value.len() + 64).sum::<usize>()) as u64
}

impl AntiEntropy {
    pub fn new(cluster: Arc<Coordinator>, store: Arc<dyn Store>, rate: u64) -> Arc<AntiEntropy> {
        Arc::new(AntiEntropy {
            cluster,
            store,
            pace: Pace {
                rate,
                next_free: tokio::sync::Mutex::new(Instant::now()),
            },
        })
    }

    /// Runs a round every `interval` until `shutdown` turns true (a round in progress is
    /// abandoned: nothing is kept between rounds).
    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        restored: Option<PathBuf>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        if let Some(mark) = restored {
            // A restore just happened: compare every bucket with every owner now, starting
            // every exchange from this side, and again each second until one round reached
            // them all; then the mark goes.
            let mut eager = Periodic::new(Duration::from_secs(1), shutdown.clone());
            // The first tick is at once: give the node a second to start joining.
            eager.tick().await;
            loop {
                if !eager.tick().await {
                    return;
                }
                let complete = tokio::select! {
                    complete = self.round(true) => complete,
                    () = eager.stopping() => return,
                };
                if complete {
                    // The mark goes before the line is logged: whoever reads the line (an
                    // operator, a test) may look for the mark at once.
                    if let Err(err) = std::fs::remove_file(&mark) {
                        log::warn!("{}: {err}", mark.display());
                    }
                    log::info!(
                        "restored data compared with every member: the restored buckets are repaired"
                    );
                    break;
                }
            }
        }
        let mut periodic = Periodic::new(interval, shutdown);
        while periodic.tick().await {
            tokio::select! {
                _ = self.round(false) => {}
                () = periodic.stopping() => return,
            }
        }
    }

    fn stats(&self) -> &ClusterCounters {
        self.cluster.counters()
    }

    /// One round over every bucket (in-process tests drive rounds one by one).
    pub async fn run_round(&self) {
        self.round(false).await;
    }

    /// One round; true when every other member answered and every repair succeeded.
    /// `eager`: this node starts the exchange of every differing pair it is in.
    async fn round(&self, eager: bool) -> bool {
        let membership = self.cluster.membership();
        let ring = membership.ring();
        let digests = self.store.digests();
        if digests.buckets() != ring.buckets() {
            log::error!(
                "store digests cover {} buckets, the ring {}: anti-entropy is off",
                digests.buckets(),
                ring.buckets()
            );
            return false;
        }
        let me = membership.me();
        let peers: Vec<SocketAddr> = (membership.active().into_iter())
            .filter(|&m| m != me && membership.liveness(m) == Liveness::Up)
            .collect();
        let mut fetched: FuturesUnordered<_> = (peers.iter())
            .map(|&peer| async move { (peer, self.remote_digests(peer).await) })
            .collect();
        let mut remote: BTreeMap<SocketAddr, Vec<u64>> = BTreeMap::new();
        while let Some((peer, digests)) = fetched.next().await {
            match digests {
                Ok(d) if d.len() == ring.buckets() as usize => {
                    remote.insert(peer, d);
                }
                Ok(d) => log::warn!(
                    "{peer} has {} buckets, this node {}: not syncing with it",
                    d.len(),
                    ring.buckets()
                ),
                Err(err) => log::debug!("sync: no digests from {peer}: {err}"),
            }
        }
        let n = self.cluster.replicas();
        let mut tasks = Vec::new();
        for bucket in 0..ring.buckets() {
            let owners: Vec<SocketAddr> = ring.preference_list(bucket).take(n).collect();
            let local = digests.summary(bucket);
            if owners.contains(&me) {
                let mut differing = false;
                let mut mine = Vec::new();
                let mut all_agree = true;
                for &owner in owners.iter().filter(|&&o| o != me) {
                    match remote.get(&owner) {
                        Some(d) if d[bucket as usize] == local.digest => {}
                        Some(_) => {
                            differing = true;
                            all_agree = false;
                            // One side of each pair starts the (two-way) exchange.
                            if me < owner || eager {
                                mine.push(owner);
                            }
                        }
                        None => all_agree = false,
                    }
                }
                if differing {
                    tasks.push(Task::Repair(bucket, mine));
                } else if all_agree && local.tombstoned > 0 {
                    tasks.push(Task::PurgeTombstones(bucket));
                }
            } else if local.keys > 0 {
                tasks.push(Task::Handoff(bucket, owners));
            }
        }
        // Pending: the buckets this node has to repair (it starts each pair's exchange) or
        // hand off, until done.
        let moving = (tasks.iter())
            .filter(|t| match t {
                Task::Repair(_, peers) => !peers.is_empty(),
                Task::Handoff(..) => true,
                Task::PurgeTombstones(_) => false,
            })
            .count() as u64;
        self.stats()
            .pending_buckets
            .store(moving, Ordering::Relaxed);
        // Complete once every other member answered; a node alone (no seeds) has no one
        // to compare with, one still joining is not done.
        let mut complete = if membership.is_clustered() {
            remote.len() == peers.len() && peers.len() + 1 == membership.active().len()
        } else {
            !membership.is_awaiting_join()
        };
        for task in tasks {
            let purge = matches!(task, Task::PurgeTombstones(_));
            let done = match task {
                Task::Repair(bucket, peers) => {
                    let mut done = !peers.is_empty();
                    for peer in peers {
                        if let Err(err) = self.exchange(bucket, peer, true).await {
                            log::debug!("sync of bucket {bucket} with {peer}: {err}");
                            done = false;
                        }
                    }
                    done
                }
                Task::PurgeTombstones(bucket) => {
                    self.purge_tombstones(bucket);
                    false
                }
                Task::Handoff(bucket, owners) => self.hand_off(bucket, &owners, &remote).await,
            };
            complete &= done || purge;
            if done {
                let pending = &self.stats().pending_buckets;
                let _ = pending.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                    Some(p.saturating_sub(1))
                });
            }
        }
        complete
    }

    async fn remote_digests(&self, peer: SocketAddr) -> Result<Vec<u64>, PeerError> {
        self.cluster.peers().digests(peer).await
    }

    fn local_keys(&self, bucket: u32) -> Vec<(Bytes, u64)> {
        let (low, high) = self.store.digests().hash_range(bucket);
        self.store.keys_in(low, high)
    }

    /// Makes `peer`'s copy of `bucket` and this node's equal for every key that differed:
    /// pulls what the peer holds (when `pull`), pushes what this node holds. Returns
    /// whether every push was acknowledged.
    async fn exchange(&self, bucket: u32, peer: SocketAddr, pull: bool) -> Result<bool, PeerError> {
        let peers = self.cluster.peers();
        let remote: BTreeMap<Bytes, u64> = peers.keys(peer, bucket).await?.into_iter().collect();
        let local: BTreeMap<Bytes, u64> = self.local_keys(bucket).into_iter().collect();
        if pull {
            let wanted: Vec<Bytes> = (remote.iter())
                .filter(|(key, print)| local.get(*key) != Some(print))
                .map(|(key, _)| key.clone())
                .collect();
            let mut calls = FuturesUnordered::new();
            let mut purged_there = Vec::new();
            for key in wanted {
                if calls.len() >= CONCURRENCY {
                    purged_there.extend(calls.next().await.flatten());
                }
                let had = local.contains_key(&key);
                calls.push(self.pull(peer, key, had));
            }
            while let Some(forget) = calls.next().await {
                purged_there.extend(forget);
            }
            if !purged_there.is_empty() {
                // This node purged them already: the peer may too.
                if let Err(err) = peers.forget(peer, purged_there).await {
                    log::debug!("sync: {peer} did not forget purged tombstones: {err}");
                }
            }
        }
        let mut confirmed = true;
        let mut calls = FuturesUnordered::new();
        for (key, print) in &local {
            if remote.get(key) == Some(print) {
                continue;
            }
            if calls.len() >= CONCURRENCY {
                confirmed &= calls.next().await.unwrap_or(false);
            }
            calls.push(self.push(peer, key.clone(), remote.contains_key(key)));
        }
        while let Some(ok) = calls.next().await {
            confirmed &= ok;
        }
        Ok(confirmed)
    }

    /// Takes in the peer's versions of `key`; returns the key when they are only tombstones
    /// this node has purged already (the peer should forget them rather than spread them).
    async fn pull(&self, peer: SocketAddr, key: Bytes, had: bool) -> Option<Bytes> {
        let reply = self.cluster.peers().get(peer, key.clone()).await;
        let Ok(Some(versions)) = reply else {
            return None;
        };
        if !had && self.cluster.replica().only_due_tombstones(&versions) {
            return Some(key);
        }
        let bytes = size_of(&key, &versions);
        self.pace.take(bytes).await;
        let (_, commit) = (self.cluster.replica()).apply(&key, key_hash(&key), versions);
        if commit.wait().await.is_ok() {
            self.stats().sync_keys.fetch_add(1, Ordering::Relaxed);
            self.stats().sync_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        None
    }

    /// Sends this node's versions of `key` to `peer`; true once it acknowledged them.
    async fn push(&self, peer: SocketAddr, key: Bytes, peer_has_key: bool) -> bool {
        let Some(versions) = self.store.get(&key, unix_secs()) else {
            return true;
        };
        if !peer_has_key && self.cluster.replica().only_due_tombstones(&versions) {
            // The peer purged it already: forget it here too.
            self.cluster.replica().forget_due_tombstones(&key);
            return true;
        }
        let bytes = size_of(&key, &versions);
        self.pace.take(bytes).await;
        match self.cluster.peers().put(peer, key, versions).await {
            Ok(_) => {
                self.stats().sync_keys.fetch_add(1, Ordering::Relaxed);
                self.stats().sync_bytes.fetch_add(bytes, Ordering::Relaxed);
                true
            }
            Err(err) => {
                log::debug!("sync push to {peer}: {err}");
                false
            }
        }
    }

    fn purge_tombstones(&self, bucket: u32) {
        for (key, _) in self.local_keys(bucket) {
            self.cluster.replica().forget_due_tombstones(&key);
        }
    }

    /// Moves a bucket this node does not own to every owner, then forgets the keys they all
    /// acknowledged (unless a key changed meanwhile). True once done.
    async fn hand_off(
        &self,
        bucket: u32,
        owners: &[SocketAddr],
        up: &BTreeMap<SocketAddr, Vec<u64>>,
    ) -> bool {
        if owners.iter().any(|o| !up.contains_key(o)) {
            // An owner is down or unreachable: keep the data until all can confirm.
            return false;
        }
        let listed = self.local_keys(bucket);
        for &owner in owners {
            match self.exchange(bucket, owner, false).await {
                Ok(true) => {}
                Ok(false) => return false,
                Err(err) => {
                    log::debug!("handoff of bucket {bucket} to {owner}: {err}");
                    return false;
                }
            }
        }
        let now = unix_secs();
        let mut dropped = 0;
        for (key, print) in listed {
            let commit = self.store.update(&key, now, &mut |current| {
                // Changed since it was pushed: the next round moves the new version.
                if fingerprint(&key, current) == print {
                    dropped += 1;
                    Change::Remove
                } else {
                    Change::Keep
                }
            });
            drop(commit);
        }
        log::info!(
            "bucket {bucket} handed off to {} ({dropped} keys)",
            owners
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        true
    }
}

//! Quorum reads and writes over the ring (docs/design.md, "Cluster").
//!
//! Writes are coordinated by a replica (forwarded one hop otherwise), stored locally, sent
//! to the other replicas and acknowledged after W of them; owners that missed the write get
//! a hint. Reads ask R replicas (this node first: its answer is free) and widen to the rest
//! only on a failure or a miss (after a restart or a membership change the first replies may
//! come from nodes that lack the key); the remaining replies then repair stale replicas.

use super::counters::ClusterCounters;
use super::error::{ClusterError, Failures, QuorumKind};
use super::hints::Hints;
use super::member::Liveness;
use super::membership::Membership;
use super::peers::Peers;
use super::placement::{self, Placement};
use super::replica::Replica;
use crate::causality::{self, NodeId};
use crate::config::Quorum;
use crate::keyspace::key_hash;
use crate::ops::{self, Outcome, WriteOp};
use crate::record::Versions;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long after a ring change reads that miss also ask the next nodes of the preference
/// list: the previous owners, which may not have handed the key over yet.
const MOVE_WINDOW: Duration = Duration::from_secs(300);

/// How long the read a write decides on waits for the holders beyond its quorum (and how
/// fast a failed call must have failed to be retried): far below rpc.timeout, so a write
/// forwarded to this node is answered before its forwarder gives up.
const THOROUGH_GRACE: Duration = Duration::from_millis(200);

pub struct Coordinator {
    pub(super) me: SocketAddr,
    id: NodeId,
    pub(super) membership: Arc<Membership>,
    pub(super) peers: Peers,
    pub(super) replica: Arc<Replica>,
    pub(super) quorum: Quorum,
    pub(super) hints: Arc<Hints>,
    pub(super) counters: Arc<ClusterCounters>,
    pub(super) upgrade: Arc<super::upgrade::Upgrade>,
    /// Serializes recache claims per key (by hash shard) on their one coordinator.
    claims: Vec<tokio::sync::Mutex<()>>,
}

/// What the coordinator keeps account of besides the data: hints for absent owners, its
/// counters, and the members' builds.
pub struct Books {
    pub hints: Arc<Hints>,
    pub counters: Arc<ClusterCounters>,
    pub upgrade: Arc<super::upgrade::Upgrade>,
}

/// Lock shards for recache claims.
const CLAIM_SHARDS: usize = 64;

/// What a quorum read found.
pub struct Read {
    pub versions: Option<Versions>,
    /// Distinct versions among the replies, and how many survived reconciliation (Kai's
    /// `kai_unreconciled_get`).
    pub gathered: usize,
    pub kept: usize,
}

type Replies = Vec<(SocketAddr, Option<Versions>)>;

impl Coordinator {
    pub fn new(
        id: NodeId,
        membership: Arc<Membership>,
        peers: Peers,
        replica: Arc<Replica>,
        quorum: Quorum,
        books: Books,
    ) -> Arc<Coordinator> {
        let Books {
            hints,
            counters,
            upgrade,
        } = books;
        Arc::new(Coordinator {
            me: membership.me(),
            id,
            membership,
            peers,
            replica,
            quorum,
            hints,
            counters,
            upgrade,
            claims: (0..CLAIM_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        })
    }

    /// A timestamp later than every version the new one supersedes, and than anything this
    /// node has seen from its peers.
    fn stamp_after(&self, current: Option<&Versions>) -> u64 {
        let clock = self.replica.clock();
        for version in current.iter().flat_map(|v| v.0.iter()) {
            clock.observe(version.timestamp);
        }
        clock.stamp()
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    pub fn hints(&self) -> &Hints {
        &self.hints
    }

    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    pub fn replica(&self) -> &Arc<Replica> {
        &self.replica
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// N: how many owners each bucket has.
    pub fn replicas(&self) -> usize {
        self.quorum.n as usize
    }

    /// Buckets may be between owners: the ring changed lately or this node still moves some.
    fn moving(&self) -> bool {
        self.membership.ring_age() < MOVE_WINDOW
            || self.counters.pending_buckets.load(Ordering::Relaxed) > 0
    }

    /// False while this node is the ring's only member: then the local store serves all.
    pub fn is_clustered(&self) -> bool {
        self.membership.is_clustered()
    }

    /// Where the key whose ring hash is `hash` goes.
    fn placement(&self, hash: u32) -> Placement {
        let ring = self.membership.ring();
        Placement::of_hash(&ring, hash, self.replicas(), |node| {
            self.membership.is_available(node)
        })
    }

    fn needed(&self, wanted: u32) -> usize {
        placement::needed(wanted, self.membership.ring().nodes().len())
    }

    /// A quorum read of every version of `key`.
    pub async fn read(self: &Arc<Self>, key: &[u8]) -> Result<Read, ClusterError> {
        let read = self.quorum_read(key, false).await;
        if let Err(err) = &read {
            self.counters.count_failure(err);
        }
        read
    }

    /// A quorum read. `thorough` (the read a write decides on) asks every possible holder
    /// (replicas, the next fallbacks, members that left lately) and waits for them all,
    /// retrying a failed call once, instead of stopping at the first R that found
    /// something: with a sloppy quorum the first R may be a fallback and a replica that
    /// missed the latest write, and a delete or cas decided on them would undo an
    /// acknowledged write (the simulation found both). While buckets move it also needs R
    /// of the key's owners before the last membership change.
    async fn quorum_read(
        self: &Arc<Self>,
        key: &[u8],
        thorough: bool,
    ) -> Result<Read, ClusterError> {
        let hash = key_hash(key);
        let placement = self.placement(hash);
        let needed = self.needed(self.quorum.r);
        if placement.replicas.len() < needed {
            return Err(ClusterError::Unavailable {
                kind: QuorumKind::Read,
                up: placement.replicas.len(),
                needed,
            });
        }
        let key = Bytes::copy_from_slice(key);
        let mut order = placement.replicas.clone();
        if let Some(at) = order.iter().position(|&r| r == self.me) {
            order[..=at].rotate_right(1);
        }
        // While buckets move, a key may still be only with its previous owners, or with a
        // member that left and has not handed it over yet.
        let moving = self.moving();
        if moving || thorough {
            order.extend(&placement.next);
        }
        // The key's owners before the last membership change: a write they took may not have
        // reached the new owners yet, so while buckets move a thorough read needs them too.
        let previous_owners: Vec<SocketAddr> = match self.membership.previous_ring() {
            Some(ring) if thorough && moving => {
                ring.nodes_for(key.as_ref()).take(self.replicas()).collect()
            }
            _ => Vec::new(),
        };
        for &owner in &previous_owners {
            if !order.contains(&owner) && self.membership.is_available(owner) {
                order.push(owner);
            }
        }
        if moving {
            let departed = self.membership.departed_within(MOVE_WINDOW);
            let reachable = |a: &SocketAddr| *a != self.me && self.membership.is_available(*a);
            order.extend(departed.into_iter().filter(reachable));
        }
        let first = if thorough { order.len() } else { needed };
        let mut unasked = order.into_iter();
        let ask = |replica: SocketAddr| {
            let (coordinator, key) = (Arc::clone(self), key.clone());
            async move {
                let started = thorough.then(tokio::time::Instant::now);
                let mut result = coordinator.peers.get(replica, key.clone()).await;
                // A call that failed fast (a lost message, a broken connection) once more.
                if result.is_err() && started.is_some_and(|s| s.elapsed() < THOROUGH_GRACE) {
                    result = coordinator.peers.get(replica, key).await;
                }
                (replica, result)
            }
        };
        let mut pending = FuturesUnordered::new();
        let mut replies: Replies = Vec::new();
        // This node's own copy is read in place: as a future in `pending` it cost a task
        // node and three moves of the call's future (3 % of a coordinated get).
        for replica in unasked.by_ref().take(first) {
            if replica == self.me {
                replies.push((replica, self.replica.get(&key, hash)));
            } else {
                pending.push(ask(replica));
            }
        }
        let mut failures = Vec::new();
        let found = |replies: &Replies| replies.iter().any(|(_, v)| v.is_some());
        // A thorough read waits for the stragglers only this long once it has its quorum.
        let mut grace_until = None;
        // What counts toward R. A thorough read counts only owners: a fallback and a
        // replica that missed the latest write must not make its quorum (the simulation
        // found it). While buckets move it needs R of the previous owners as well.
        let previous_needed = needed.min(previous_owners.len());
        let from = |replies: &Replies, group: &[SocketAddr]| {
            (replies.iter()).filter(|(a, _)| group.contains(a)).count()
        };
        let counted = |replies: &Replies| {
            if thorough {
                from(replies, &placement.owners)
            } else {
                replies.len()
            }
        };
        let enough = |replies: &Replies| {
            counted(replies) >= needed && from(replies, &previous_owners) >= previous_needed
        };
        loop {
            let enough = enough(&replies);
            if enough && (thorough || found(&replies)) {
                if !thorough || pending.is_empty() {
                    break;
                }
                let until = *grace_until
                    .get_or_insert_with(|| tokio::time::Instant::now() + THOROUGH_GRACE);
                match tokio::time::timeout_at(until, pending.next()).await {
                    Ok(Some((replica, Ok(versions)))) => replies.push((replica, versions)),
                    Ok(Some((_, Err(err)))) => failures.push(err),
                    Ok(None) | Err(_) => break,
                }
                continue;
            }
            if pending.len() + replies.len() < needed || (pending.is_empty() && !found(&replies)) {
                match unasked.next() {
                    Some(replica) if replica == self.me => {
                        replies.push((replica, self.replica.get(&key, hash)));
                        continue;
                    }
                    Some(replica) => {
                        pending.push(ask(replica));
                        continue;
                    }
                    None if pending.is_empty() => break,
                    None => {}
                }
            }
            match pending.next().await {
                Some((replica, Ok(versions))) => replies.push((replica, versions)),
                Some((_, Err(err))) => failures.push(err),
                None => break,
            }
        }
        if !enough(&replies) {
            return Err(ClusterError::ReadQuorum {
                replies: counted(&replies),
                needed,
                failures: Failures(failures),
            });
        }
        let read = reconcile(&replies);
        // Every reply is in and none is stale (the common case): no repair task.
        if pending.is_empty() && !replies.iter().any(|(_, held)| is_stale(&read, held)) {
            return Ok(read);
        }
        // The remaining replies finish in the background, then stale replicas are repaired.
        let coordinator = Arc::clone(self);
        tokio::spawn(async move {
            while let Some((replica, result)) = pending.next().await {
                if let Ok(versions) = result {
                    replies.push((replica, versions));
                }
            }
            coordinator.repair(key, replies).await;
        });
        Ok(read)
    }

    /// Sends the reconciled versions to every replica whose reply lacked one of them.
    async fn repair(&self, key: Bytes, replies: Replies) {
        let read = reconcile(&replies);
        let Some(merged) = &read.versions else {
            return;
        };
        for (replica, held) in &replies {
            if !is_stale(&read, held) {
                continue;
            }
            self.counters.read_repairs.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = self.put(*replica, key.clone(), merged.clone()).await {
                log::debug!("read repair of {replica} failed: {err}");
            }
        }
    }

    /// Stores `versions` on `replica` (this node included); whether a live value was there.
    pub(super) async fn put(
        &self,
        replica: SocketAddr,
        key: Bytes,
        versions: Versions,
    ) -> Result<bool, ClusterError> {
        if replica == self.me {
            let (had_live, commit) = self.replica.apply(&key, key_hash(&key), versions);
            commit.wait().await?;
            return Ok(had_live);
        }
        (self.peers.put(replica, key, versions).await).map_err(ClusterError::Forward)
    }

    /// A write from a client of this node: coordinated here if this node is a replica,
    /// else forwarded to one (one hop).
    pub async fn write(self: &Arc<Self>, key: &[u8], op: WriteOp) -> Result<Outcome, ClusterError> {
        let written = self.route_write(key, op).await;
        if let Err(err) = &written {
            self.counters.count_failure(err);
        }
        written
    }

    async fn route_write(
        self: &Arc<Self>,
        key: &[u8],
        op: WriteOp,
    ) -> Result<Outcome, ClusterError> {
        let hash = key_hash(key);
        let placement = self.placement(hash);
        // A recache claim (meta's `W`) must have one winner: every node sends it to the
        // same coordinator, the first replica up, which decides claims on a key one at a
        // time. Other writes are coordinated by any replica.
        let claim_coordinator = matches!(op, WriteOp::Fetch { .. })
            .then(|| {
                (placement.replicas.iter())
                    .find(|&&r| r == self.me || self.membership.liveness(r) == Liveness::Up)
                    .copied()
            })
            .flatten();
        match claim_coordinator {
            Some(coordinator) if coordinator == self.me => {
                return self.coordinate(key, hash, op).await
            }
            Some(coordinator) => {
                let key = Bytes::copy_from_slice(key);
                return (self.peers.forward_write(coordinator, key, op).await)
                    .map_err(ClusterError::Forward);
            }
            None if placement.replicas.contains(&self.me) => {
                return self.coordinate(key, hash, op).await
            }
            None => {}
        }
        // Replicas known to be up first, then merely suspected ones. A replica the write
        // surely did not reach (no connection, or an older release that cannot express
        // it) hands it to the next: a node restarting must not fail its peers' clients.
        let mut targets: Vec<SocketAddr> = placement.replicas.clone();
        targets.sort_by_key(|&r| self.membership.liveness(r) != Liveness::Up);
        let key = Bytes::copy_from_slice(key);
        let mut last = None;
        for target in targets {
            match self
                .peers
                .forward_write(target, key.clone(), op.clone())
                .await
            {
                Err(err) if err.not_delivered() || (err.lost() && !op.needs_read()) => {
                    last = Some(err);
                }
                done => return done.map_err(ClusterError::Forward),
            }
        }
        Err(last.map_or(ClusterError::NoReplicaUp, ClusterError::Forward))
    }

    /// Runs a write as its coordinator: decide on the current versions, store the new
    /// version here, replicate it and wait for W acknowledgements. `hash` is the key's
    /// ring hash (`keyspace::key_hash`).
    pub async fn coordinate(
        self: &Arc<Self>,
        key: &[u8],
        hash: u32,
        op: WriteOp,
    ) -> Result<Outcome, ClusterError> {
        let _claim = match op {
            WriteOp::Fetch { .. } => {
                let shard = hash as usize % CLAIM_SHARDS;
                Some(self.claims[shard].lock().await)
            }
            _ => None,
        };
        let local = self.replica.get(key, hash);
        let current = if op.needs_read() {
            // The read a write decides on asks every possible holder while buckets move: a
            // delete or cas that missed the one node still holding a version would be
            // decided on stale state (the simulation found it).
            let read = self.quorum_read(key, true).await?;
            match (read.versions, &local) {
                (Some(read), Some(local)) => Some(Versions(causality::reconcile(
                    read.0.into_iter().chain(local.0.iter().cloned()).collect(),
                ))),
                (read, local) => read.or(local.clone()),
            }
        } else {
            local
        };
        let ops::Transition {
            record,
            mut outcome,
            amends,
        } = ops::transition(
            op,
            current.as_ref(),
            self.id,
            self.stamp_after(current.as_ref()),
        );
        let Some(record) = record else {
            return Ok(outcome);
        };
        let placement = self.placement(hash);
        let key = Bytes::copy_from_slice(key);
        // Owners that are down get a hint now; those that fail below get one then.
        for &owner in &placement.owners {
            if !placement.replicas.contains(&owner) {
                self.hints.add(owner, &key);
            }
        }
        // An amendment (touch, recache claim) keeps its version's clock; any other write
        // gets a fresh one here.
        let (versions, mut had_live, local_commit) = if amends {
            let versions = Versions::one(record);
            let (had_live, commit) = self.replica.apply(&key, hash, versions.clone());
            (versions, had_live, commit)
        } else {
            let (stored, had_live, commit) =
                (self.replica).apply_coordinated(&key, hash, record, self.id);
            outcome.set_stored(&stored);
            (Versions::one(stored), had_live, commit)
        };
        let needed = self.needed(self.quorum.w);
        let mut acks = 1;
        let mut puts = Replication(FuturesUnordered::new());
        for &replica in placement.replicas.iter().filter(|&&r| r != self.me) {
            let (coordinator, key, versions) = (Arc::clone(self), key.clone(), versions.clone());
            let owner = placement.owners.contains(&replica);
            puts.0.push(async move {
                let result = coordinator.peers.put(replica, key.clone(), versions).await;
                if result.is_err() && owner {
                    coordinator.hints.add(replica, &key);
                }
                result
            });
        }
        let mut failures = Vec::new();
        let remote_acks = async {
            while acks < needed {
                match puts.0.next().await {
                    Some(Ok(live)) => {
                        acks += 1;
                        had_live |= live;
                    }
                    Some(Err(err)) => failures.push(err),
                    None => break,
                }
            }
        };
        // The replicas are sent to while the local write commits, not after.
        let (local, ()) = tokio::join!(local_commit.wait(), remote_acks);
        // Every replica is sent the write before the client hears of it: a call that was
        // answered at its first poll ends the wait before the others were polled at all.
        while let Some(Some(_)) = puts.0.next().now_or_never() {}
        local?;
        if acks < needed {
            return Err(ClusterError::WriteQuorum {
                acks,
                needed,
                failures: Failures(failures),
            });
        }
        if let (Outcome::Deleted(found @ ops::DeleteOutcome::NotFound), true) =
            (&mut outcome, had_live)
        {
            *found = ops::DeleteOutcome::Deleted;
        }
        Ok(outcome)
    }

    /// `flush_all` on every other active member (this node flushes itself), waiting for
    /// each to answer (within the rpc timeout), so that a read after the reply cannot find
    /// a flushed value on a replica that has not heard of the flush yet.
    pub async fn broadcast_flush(&self, delay: i64) {
        let mut flushes = tokio::task::JoinSet::new();
        for member in self.membership.active() {
            if member == self.me {
                continue;
            }
            let peers = self.peers.clone();
            flushes.spawn(async move {
                if let Err(err) = peers.flush(member, delay).await {
                    log::warn!("flush_all did not reach {member}: {err}");
                }
            });
        }
        while flushes.join_next().await.is_some() {}
    }
}

/// A write's calls to the other replicas. The coordinator awaits them until its quorum is
/// met; when it lets go (done, failed or cancelled) the calls still in flight move to a task
/// of their own, so every replica is still written, and hinted if that fails. One task for
/// the stragglers instead of one per replica, and no channel, halves a set's task work.
struct Replication<F: Future + Send + 'static>(FuturesUnordered<F>)
where
    F::Output: Send;

impl<F: Future + Send + 'static> Drop for Replication<F>
where
    F::Output: Send,
{
    fn drop(&mut self) {
        let mut rest = std::mem::take(&mut self.0);
        if rest.is_empty() {
            return;
        }
        // Outside a runtime (it is shutting down) nothing could run them anyway.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { while rest.next().await.is_some() {} });
        }
    }
}

/// Whether a replica that answered `held` lacks one of the versions `read` reconciled.
fn is_stale(read: &Read, held: &Option<Versions>) -> bool {
    let Some(merged) = &read.versions else {
        return false;
    };
    let held = held.as_ref().map_or(&[][..], |v| &v.0[..]);
    (merged.0.iter()).any(|m| !held.iter().any(|h| h.clock.descends(&m.clock)))
}

/// `reconcile` where every reply that found the key holds the same single version (by clock
/// and timestamp), as after every quorum write: that version, with none of the sorting and
/// digests the general case needs (they were 7 % of a coordinator's CPU under gets).
fn agreed(replies: &[(SocketAddr, Option<Versions>)]) -> Option<Read> {
    let mut found = replies.iter().filter_map(|(_, held)| held.as_ref());
    let Some(first) = found.next() else {
        return Some(Read {
            gathered: 0,
            kept: 0,
            versions: None,
        });
    };
    let [version] = &first.0[..] else {
        return None;
    };
    let same = |held: &Versions| match &held.0[..] {
        [other] => other.is_same_version(version),
        _ => false,
    };
    if !found.all(same) {
        return None;
    }
    Some(Read {
        gathered: 1,
        kept: usize::from(!version.tombstone),
        versions: Some(Versions::one(version.clone())),
    })
}

/// The versions no reply's version supersedes, and Kai's unreconciled counts.
fn reconcile(replies: &[(SocketAddr, Option<Versions>)]) -> Read {
    agreed(replies).unwrap_or_else(|| reconcile_all(replies))
}

fn reconcile_all(replies: &[(SocketAddr, Option<Versions>)]) -> Read {
    let all: Vec<_> = (replies.iter())
        .flat_map(|(_, v)| v.iter().flat_map(|v| v.0.iter().cloned()))
        .collect();
    let mut distinct = all.clone();
    distinct.sort_by_key(|r| (r.clock.digest(), r.timestamp));
    distinct.dedup_by_key(|r| (r.clock.digest(), r.timestamp));
    let kept = causality::reconcile(all);
    Read {
        gathered: distinct.len(),
        kept: kept.iter().filter(|r| !r.tombstone).count(),
        versions: (!kept.is_empty()).then_some(Versions(kept)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::VectorClock;
    use crate::record::{test_record, Record};

    #[test]
    fn replies_that_agree_reconcile_as_the_general_case_does() {
        let one = test_record("v", 0);
        let later = Record {
            timestamp: 2,
            ..one.clone()
        };
        let elsewhere = Record {
            clock: VectorClock::new().incremented(2),
            ..one.clone()
        };
        let tombstone = Record {
            tombstone: true,
            value: Bytes::new(),
            ..one.clone()
        };
        let cases = [
            vec![None, None],
            vec![Some(vec![one.clone()]), None],
            vec![Some(vec![one.clone()]), Some(vec![one.clone()])],
            vec![None, Some(vec![tombstone.clone()]), Some(vec![tombstone])],
            vec![Some(vec![one.clone()]), Some(vec![later])],
            vec![Some(vec![one.clone()]), Some(vec![elsewhere.clone()])],
            vec![Some(vec![one.clone(), elsewhere]), Some(vec![one.clone()])],
            vec![Some(vec![]), Some(vec![one])],
        ];
        let mut agreeing = 0;
        for case in cases {
            let replies: Replies = (case.into_iter().enumerate())
                .map(|(i, held)| {
                    (
                        SocketAddr::from(([127, 0, 0, 1], i as u16)),
                        held.map(Versions),
                    )
                })
                .collect();
            let Some(fast) = agreed(&replies) else {
                continue;
            };
            agreeing += 1;
            let general = reconcile_all(&replies);
            assert_eq!(
                (fast.versions, fast.gathered, fast.kept),
                (general.versions, general.gathered, general.kept),
                "{replies:?}"
            );
        }
        // Only where the replies hold one version between them, by clock and timestamp.
        assert_eq!(agreeing, 4);
    }
}

//! Quorum reads and writes over the ring (DESIGN §6 "Coordinator").
//!
//! A key's *owners* are the first N members of its preference list; its *replicas* are the
//! first N members walking that list that are not down (sloppy quorum). Writes are
//! coordinated by a replica (forwarded one hop otherwise), stored locally, sent to the
//! other replicas and acknowledged after W of them; owners that missed the write get a
//! hint. Reads ask every replica, answer after R replies (a miss only after all of them:
//! the first replies may come from a restarted or new owner), and repair stale replicas.

use super::hints::Hints;
use super::membership::{Liveness, Membership};
use super::rpc::client::Pool;
use super::rpc::message::{Request, Response};
use super::rpc::server::Immediate;
use super::sync::SyncStats;
use crate::config::Quorum;
use crate::node::ops::{self, Outcome, WriteOp};
use crate::node::NodeError;
use crate::store::{Change, Commit, Record, Store, Versions};
use crate::version::{self, unix_now, NodeId};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Cluster {
    me: SocketAddr,
    id: NodeId,
    membership: Arc<Membership>,
    pool: Arc<Pool>,
    store: Arc<dyn Store>,
    quorum: Quorum,
    max_siblings: usize,
    tombstone_grace: Duration,
    hints: Hints,
    pub read_repairs: AtomicU64,
    pub hinted_handoffs: AtomicU64,
    pub sync_stats: SyncStats,
}

/// How long after a ring change reads that miss also ask the next nodes of the preference
/// list: the previous owners, which may not have handed the key over yet.
const MOVE_WINDOW: Duration = Duration::from_secs(300);

/// What a quorum read found.
pub struct Read {
    pub versions: Option<Versions>,
    /// Distinct versions among the replies, and how many survived reconciliation (Kai's
    /// `kai_unreconciled_get`).
    pub gathered: usize,
    pub kept: usize,
}

struct Placement {
    owners: Vec<SocketAddr>,
    replicas: Vec<SocketAddr>,
    /// Up to two available nodes after the replicas in the preference list.
    next: Vec<SocketAddr>,
}

impl Cluster {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        membership: Arc<Membership>,
        pool: Arc<Pool>,
        store: Arc<dyn Store>,
        quorum: Quorum,
        max_siblings: usize,
        tombstone_grace: Duration,
        hints: Hints,
    ) -> Arc<Cluster> {
        Arc::new(Cluster {
            me: membership.me(),
            id,
            membership,
            pool,
            store,
            quorum,
            max_siblings,
            tombstone_grace,
            hints,
            read_repairs: AtomicU64::new(0),
            hinted_handoffs: AtomicU64::new(0),
            sync_stats: SyncStats::default(),
        })
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn hints(&self) -> &Hints {
        &self.hints
    }

    /// N: how many owners each bucket has.
    pub fn replicas(&self) -> usize {
        self.quorum.n as usize
    }

    /// Buckets may be between owners: the ring changed lately or this node still moves some.
    fn moving(&self) -> bool {
        self.membership.ring_age() < MOVE_WINDOW
            || self.sync_stats.pending_buckets.load(Ordering::Relaxed) > 0
    }

    /// False while this node is the ring's only member: then the local store serves all.
    pub fn is_clustered(&self) -> bool {
        self.membership.is_clustered()
    }

    fn placement(&self, key: &[u8]) -> Placement {
        let ring = self.membership.ring();
        let n = self.quorum.n as usize;
        let walk = ring.nodes_for(key);
        let mut owners = Vec::with_capacity(n);
        let mut replicas = Vec::with_capacity(n);
        let mut next = Vec::new();
        for (position, node) in walk.enumerate() {
            if position < n {
                owners.push(node);
            }
            if self.membership.is_available(node) {
                if replicas.len() < n {
                    replicas.push(node);
                } else if next.len() < 2 {
                    next.push(node);
                }
            }
            if position >= n && next.len() == 2 {
                break;
            }
        }
        Placement {
            owners,
            replicas,
            next,
        }
    }

    /// R and W are capped at the member count, so small clusters still work.
    fn needed(&self, wanted: u32) -> usize {
        (wanted as usize)
            .min(self.membership.ring().nodes().len())
            .max(1)
    }

    pub async fn read(self: &Arc<Self>, key: &[u8]) -> Result<Read, NodeError> {
        let placement = self.placement(key);
        let needed = self.needed(self.quorum.r);
        if placement.replicas.len() < needed {
            return Err(NodeError(format!(
                "read quorum unavailable: {} of {needed} replicas up",
                placement.replicas.len()
            )));
        }
        let key = Bytes::copy_from_slice(key);
        // Ask R replicas (this node first: its answer is free), and one more for every
        // failure; a miss asks the rest too, since after a restart or a membership change
        // the first replies may come from nodes that lack the key.
        let mut order = placement.replicas.clone();
        if let Some(at) = order.iter().position(|&r| r == self.me) {
            order[..=at].rotate_right(1);
        }
        // While buckets move, a key may still be only with its previous owners.
        if self.moving() {
            order.extend(&placement.next);
        }
        let mut unasked = order.into_iter();
        let ask = |replica: SocketAddr| {
            let (cluster, key) = (Arc::clone(self), key.clone());
            async move { (replica, cluster.replica_get(replica, key).await) }
        };
        let mut pending: FuturesUnordered<_> = unasked.by_ref().take(needed).map(ask).collect();
        let mut replies: Vec<(SocketAddr, Option<Versions>)> = Vec::new();
        let mut failures = Vec::new();
        let found =
            |replies: &[(SocketAddr, Option<Versions>)]| replies.iter().any(|(_, v)| v.is_some());
        while replies.len() < needed || !found(&replies) {
            if pending.len() + replies.len() < needed || (pending.is_empty() && !found(&replies)) {
                match unasked.next() {
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
                Some((replica, Err(err))) => failures.push(format!("{replica}: {err}")),
                None => break,
            }
        }
        if replies.len() < needed {
            return Err(NodeError(format!(
                "read quorum not reached: {} of {needed} replies ({})",
                replies.len(),
                failures.join(", ")
            )));
        }
        let read = reconcile(&replies);
        // The remaining replies finish in the background, then stale replicas are repaired.
        let cluster = Arc::clone(self);
        tokio::spawn(async move {
            while let Some((replica, result)) = pending.next().await {
                if let Ok(versions) = result {
                    replies.push((replica, versions));
                }
            }
            cluster.repair(key, replies).await;
        });
        Ok(read)
    }

    async fn replica_get(
        &self,
        replica: SocketAddr,
        key: Bytes,
    ) -> Result<Option<Versions>, String> {
        if replica == self.me {
            return Ok(self.store.get(&key, unix_now().as_secs()));
        }
        match self.pool.call(replica, Request::Get { key }).await {
            Ok(Response::Versions(versions)) => Ok(versions),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Sends the reconciled versions to every replica whose reply lacked one of them.
    async fn repair(&self, key: Bytes, replies: Vec<(SocketAddr, Option<Versions>)>) {
        let Some(merged) = reconcile(&replies).versions else {
            return;
        };
        for (replica, versions) in replies {
            let held = versions.unwrap_or_default();
            let stale = merged
                .0
                .iter()
                .any(|m| !held.0.iter().any(|h| h.clock.descends(&m.clock)));
            if !stale {
                continue;
            }
            self.read_repairs.fetch_add(1, Ordering::Relaxed);
            if let Err(err) = self.put(replica, key.clone(), merged.clone()).await {
                log::debug!("read repair of {replica} failed: {err}");
            }
        }
    }

    async fn put(
        &self,
        replica: SocketAddr,
        key: Bytes,
        versions: Versions,
    ) -> Result<bool, String> {
        if replica == self.me {
            let (had_live, commit) = self.apply(&key, versions);
            commit.wait().await?;
            return Ok(had_live);
        }
        match self
            .pool
            .call(replica, Request::Put { key, versions })
            .await
        {
            Ok(Response::Applied { had_live }) => Ok(had_live),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Stores versions received as a replica: dominated local versions go, concurrent ones
    /// stay as siblings. Returns whether a live value was there before.
    pub fn apply(&self, key: &[u8], incoming: Versions) -> (bool, Commit) {
        let mut had_live = false;
        let commit = self
            .store
            .update(key, unix_now().as_secs(), &mut |current| {
                had_live = current.is_some_and(Versions::has_live);
                let mut kept = current.map(|v| v.0.clone()).unwrap_or_default();
                let before = kept.clone();
                for version in &incoming.0 {
                    // The same version with another expiry: a touch, which keeps clock and cas.
                    let same =
                        |k: &Record| k.clock == version.clock && k.timestamp == version.timestamp;
                    if let Some(held) = kept.iter_mut().find(|k| same(k)) {
                        held.expires_at = version.expires_at;
                        continue;
                    }
                    let (next, dropped) = version::apply(kept, version.clone(), self.max_siblings);
                    if dropped > 0 {
                        log::info!(
                            "key {:?}: dropped {dropped} oldest siblings over max_siblings",
                            String::from_utf8_lossy(key)
                        );
                    }
                    kept = next;
                }
                if kept == before {
                    Change::Keep
                } else {
                    Change::Put(Versions(kept))
                }
            });
        (had_live, commit)
    }

    /// A tombstone written before this (Unix microseconds) is past its grace period.
    fn tombstones_due_before(&self) -> u64 {
        unix_now().saturating_sub(self.tombstone_grace).as_micros() as u64
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
        let commit = self
            .store
            .update(key, unix_now().as_secs(), &mut |current| {
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
        (self.sync_stats.purged_tombstones).fetch_add(dropped as u64, Ordering::Relaxed);
    }

    /// A write from a client of this node: coordinated here if this node is a replica,
    /// else forwarded to one (one hop).
    pub async fn write(self: &Arc<Self>, key: &[u8], op: WriteOp) -> Result<Outcome, NodeError> {
        let placement = self.placement(key);
        if placement.replicas.contains(&self.me) {
            return self.coordinate(key, op).await;
        }
        // Prefer a replica known to be up over a merely suspected one.
        let target = (placement.replicas.iter())
            .find(|&&r| self.membership.liveness(r) == Liveness::Up)
            .or(placement.replicas.first())
            .copied()
            .ok_or_else(|| NodeError("no replica of this key is up".into()))?;
        let key = Bytes::copy_from_slice(key);
        match self.pool.call(target, Request::Write { key, op }).await {
            Ok(Response::Outcome(outcome)) => Ok(outcome),
            Ok(Response::Error(err)) => Err(NodeError(err)),
            Ok(other) => Err(NodeError(format!("{target}: unexpected reply {other:?}"))),
            Err(err) => Err(NodeError(format!("forwarding failed: {err}"))),
        }
    }

    /// Runs a write as its coordinator: decide on the current versions, store the new
    /// version here, replicate it and wait for W acknowledgements.
    pub async fn coordinate(
        self: &Arc<Self>,
        key: &[u8],
        op: WriteOp,
    ) -> Result<Outcome, NodeError> {
        let wall = unix_now();
        let local = self.store.get(key, wall.as_secs());
        let current = if op.needs_read() {
            let read = self.read(key).await?;
            match (read.versions, &local) {
                (Some(read), Some(local)) => Some(Versions(version::reconcile(
                    read.0.into_iter().chain(local.0.iter().cloned()).collect(),
                ))),
                (read, local) => read.or(local.clone()),
            }
        } else {
            local
        };
        let (new, mut outcome) = ops::decide(&op, current.as_ref());
        let Some(new) = new else {
            return Ok(outcome);
        };
        let base = current
            .as_ref()
            .map(Versions::merged_clock)
            .unwrap_or_default();
        let record = ops::version(new, &base, self.id, wall);
        if let Outcome::Touched(touched) = &mut outcome {
            *touched = Some(record.clone());
        }
        let versions = Versions::one(record);
        let placement = self.placement(key);
        let key = Bytes::copy_from_slice(key);
        // Owners that are down get a hint now; those that fail below get one then.
        for &owner in &placement.owners {
            if !placement.replicas.contains(&owner) {
                self.hints.add(owner, &key);
            }
        }
        let (mut had_live, local_commit) = self.apply(&key, versions.clone());
        let needed = self.needed(self.quorum.w);
        let mut acks = 1;
        let (done, mut results) = tokio::sync::mpsc::channel(placement.replicas.len().max(1));
        for &replica in placement.replicas.iter().filter(|&&r| r != self.me) {
            let (cluster, key, versions, done) = (
                Arc::clone(self),
                key.clone(),
                versions.clone(),
                done.clone(),
            );
            let owner = placement.owners.contains(&replica);
            tokio::spawn(async move {
                let result = cluster.put(replica, key.clone(), versions).await;
                if result.is_err() && owner {
                    cluster.hints.add(replica, &key);
                }
                let _ = done.send((replica, result)).await;
            });
        }
        drop(done);
        local_commit
            .wait()
            .await
            .map_err(|e| NodeError(format!("store: {e}")))?;
        let mut failures = Vec::new();
        while acks < needed {
            match results.recv().await {
                Some((_, Ok(live))) => {
                    acks += 1;
                    had_live |= live;
                }
                Some((replica, Err(err))) => failures.push(format!("{replica}: {err}")),
                None => break,
            }
        }
        if acks < needed {
            return Err(NodeError(format!(
                "write quorum not reached: {acks} of {needed} acknowledgements ({})",
                failures.join(", ")
            )));
        }
        if let Outcome::Deleted(found) = &mut outcome {
            *found |= had_live;
        }
        Ok(outcome)
    }

    /// `flush_all` on every other member (this node flushes itself).
    pub fn broadcast_flush(self: &Arc<Self>, delay: i64) {
        for member in self.membership.active() {
            if member == self.me {
                continue;
            }
            let pool = Arc::clone(&self.pool);
            tokio::spawn(async move {
                if let Err(err) = pool.call(member, Request::Flush { delay }).await {
                    log::warn!("flush_all did not reach {member}: {err}");
                }
            });
        }
    }

    /// Delivers hints to owners that are up again; runs until the process ends.
    pub async fn run_handoff(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            for owner in self.hints.owners() {
                if self.membership.liveness(owner) != Liveness::Up {
                    continue;
                }
                for key in self.hints.batch(owner, 512) {
                    let versions = self.store.get(&key, unix_now().as_secs());
                    let Some(versions) = versions else {
                        // Expired or purged here: nothing left to hand over.
                        self.hints.remove(owner, &key);
                        continue;
                    };
                    match self.put(owner, key.clone(), versions).await {
                        Ok(_) => {
                            self.hints.remove(owner, &key);
                            self.hinted_handoffs.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => {
                            log::debug!("hinted handoff to {owner} failed: {err}");
                            break;
                        }
                    }
                }
            }
            self.hints.persist();
        }
    }

    /// Replica reads and writes: answered on the connection's own task.
    pub fn handle_now(&self, request: Request) -> Immediate {
        match request {
            Request::Get { key } => Immediate::Reply(Response::Versions(
                self.store.get(&key, unix_now().as_secs()),
            )),
            Request::Put { key, versions } => {
                let (had_live, commit) = self.apply(&key, versions);
                let reply = Response::Applied { had_live };
                if commit.is_done() {
                    Immediate::Reply(reply)
                } else {
                    Immediate::AfterCommit(reply, commit)
                }
            }
            other => Immediate::Task(other),
        }
    }

    /// Answers a request from another node (or from `kai cluster …`).
    pub async fn handle(self: &Arc<Self>, request: Request) -> Response {
        let request = match self.handle_now(request) {
            Immediate::Reply(response) => return response,
            Immediate::AfterCommit(response, commit) => {
                return match commit.wait().await {
                    Ok(()) => response,
                    Err(err) => Response::Error(format!("store: {err}")),
                }
            }
            Immediate::Task(request) => request,
        };
        match request {
            // handle_now answered these already.
            Request::Get { .. } | Request::Put { .. } => Response::Error("misrouted".into()),
            // Forwarded once already: coordinate here whatever this node's view says.
            Request::Write { key, op } => match self.coordinate(&key, op).await {
                Ok(outcome) => Response::Outcome(outcome),
                Err(err) => Response::Error(err.0),
            },
            Request::Members { members } => {
                self.membership.merge(&members);
                Response::Members(self.membership.records())
            }
            Request::AdminJoin { seed } => match self.join(&seed).await {
                Ok(()) => Response::Done(format!("joined the cluster through {seed}")),
                Err(err) => Response::Error(err),
            },
            Request::AdminLeave => match self.membership.retire(self.me) {
                Ok(()) => {
                    self.push_members(None).await;
                    Response::Done(format!("{} left the cluster", self.me))
                }
                Err(err) => Response::Error(err),
            },
            Request::AdminRemove { node } => {
                let removed = match node.parse::<SocketAddr>() {
                    Ok(addr) => self.membership.retire(addr).map(|()| addr),
                    Err(_) => Err(format!("{node:?} is not a host:port rpc address")),
                };
                match removed {
                    Ok(addr) => {
                        // The removed node hears it too, if it is still running.
                        self.push_members(Some(addr)).await;
                        Response::Done(format!("{node} removed from the cluster"))
                    }
                    Err(err) => Response::Error(err),
                }
            }
            Request::Flush { .. } => Response::Error("flush is handled by the node".into()),
            Request::SyncDigests => Response::Digests(self.store.digests().all()),
            Request::SyncForget { keys } => {
                for key in &keys {
                    self.forget_due_tombstones(key);
                }
                Response::Done(String::new())
            }
            Request::AdminDigests => Response::Done(self.digest_report()),
            Request::SyncKeys { bucket } => {
                let digests = self.store.digests();
                if bucket >= digests.buckets() {
                    return Response::Error(format!("no bucket {bucket}"));
                }
                let (low, high) = digests.hash_range(bucket);
                Response::Keys(self.store.keys_in(low, high))
            }
        }
    }

    /// Joins through `seed` (one of this node's seeds, or `kai cluster join`).
    pub async fn join(&self, seed: &str) -> Result<(), String> {
        let addr = resolve(seed)?;
        self.membership.rejoin();
        self.membership.exchange(&self.pool, addr).await
    }

    /// Tells every member (and `also`) about a membership change right away.
    async fn push_members(&self, also: Option<SocketAddr>) {
        let calls: FuturesUnordered<_> = (self.membership.active().into_iter())
            .chain(also)
            .filter(|&m| m != self.me)
            .map(|member| async move { self.membership.exchange(&self.pool, member).await })
            .collect();
        let _: Vec<_> = calls.collect().await;
    }

    /// `kai cluster digests`: "bucket digest keys" for every bucket this node owns.
    fn digest_report(&self) -> String {
        let ring = self.membership.ring();
        let digests = self.store.digests();
        let mut out = Vec::new();
        for bucket in 0..ring.buckets().min(digests.buckets()) {
            if ring
                .preference_list(bucket)
                .take(self.replicas())
                .any(|o| o == self.me)
            {
                let summary = digests.summary(bucket);
                out.push(format!("{bucket} {:016x} {}", summary.digest, summary.keys));
            }
        }
        out.join("\n")
    }

    /// `kai cluster status`: each member, its liveness, owned buckets and pending hints.
    pub fn status(&self) -> Vec<String> {
        let ring = self.membership.ring();
        let n = self.quorum.n as usize;
        let mut owned = std::collections::HashMap::new();
        for bucket in 0..ring.buckets() {
            for node in ring.preference_list(bucket).take(n) {
                *owned.entry(node).or_insert(0u32) += 1;
            }
        }
        (self.membership.records().into_iter())
            .map(|record| {
                let state = if record.left {
                    "left"
                } else {
                    self.membership.liveness(record.addr).name()
                };
                format!(
                    "{} {state} buckets={} hints={}{}",
                    record.addr,
                    owned.get(&record.addr).copied().unwrap_or(0),
                    self.hints.count_for(record.addr),
                    if record.addr == self.me { " self" } else { "" }
                )
            })
            .collect()
    }
}

/// The versions no reply's version supersedes, and Kai's unreconciled counts.
fn reconcile(replies: &[(SocketAddr, Option<Versions>)]) -> Read {
    let all: Vec<_> = (replies.iter())
        .flat_map(|(_, v)| v.iter().flat_map(|v| v.0.iter().cloned()))
        .collect();
    let mut distinct = all.clone();
    distinct.sort_by_key(|r| (r.clock.digest(), r.timestamp));
    distinct.dedup_by_key(|r| (r.clock.digest(), r.timestamp));
    let kept = version::reconcile(all);
    Read {
        gathered: distinct.len(),
        kept: kept.iter().filter(|r| !r.tombstone).count(),
        versions: (!kept.is_empty()).then_some(Versions(kept)),
    }
}

pub fn resolve(address: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    (address.to_socket_addrs())
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))
}

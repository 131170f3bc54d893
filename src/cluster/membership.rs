//! Who is in the cluster, and who is up (docs/design.md, "Cluster").
//!
//! Two separate things. *Members* make the ring: they change only by join, leave and remove,
//! are persisted in data_dir (a restarted node rejoins by itself) and spread by push-pull
//! exchange of member lists, merged by generation. *Liveness* (up/suspect/down) comes from
//! SWIM failure detection (foca) over the authenticated rpc transport; a down member stays
//! in the ring, its writes go to fallbacks with hints.

use super::error::PeerError;
use super::fast_map::FastMap;
pub use super::member::{Liveness, MemberRecord};
use super::peers::Peers;
use super::ring::Ring;
use bytes::Bytes;
use foca::{Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

pub struct RingShape {
    pub virtual_nodes: u16,
    pub buckets: u32,
    pub replicas: usize,
}

struct View {
    members: BTreeMap<SocketAddr, MemberRecord>,
    ring: Arc<Ring>,
}

pub struct Membership {
    me: SocketAddr,
    /// This node's `[node] zone`.
    zone: Option<String>,
    shape: RingShape,
    view: RwLock<View>,
    /// More than this node in the ring: read on every client request, so kept apart from
    /// the view's lock.
    clustered: AtomicBool,
    /// Seeds are configured and no other member is known yet: this node belongs to a
    /// cluster it has not reached, and must not serve as a cluster of one.
    awaiting_join: AtomicBool,
    /// Liveness of the other members as failure detection last reported it.
    liveness: RwLock<FastMap<SocketAddr, Liveness>>,
    /// Where the member list is persisted; None when data_dir is not writable.
    path: Option<PathBuf>,
    swim: mpsc::UnboundedSender<SwimInput>,
    /// The detector's end of `swim`, until it starts.
    swim_inputs: std::sync::Mutex<Option<mpsc::UnboundedReceiver<SwimInput>>>,
    /// When the ring last changed (or the node started).
    /// When the ring last changed, on the coarse monotonic clock (read by every request).
    ring_changed: RwLock<Duration>,
    /// Members that left or were removed, and when this node heard: they may still hold
    /// keys they have not handed to the new owners.
    departed: RwLock<Vec<(SocketAddr, std::time::Instant)>>,
    /// The ring before the last change of its members (never a ring of this node alone):
    /// while buckets move, its owners may hold writes the new owners lack.
    previous_ring: RwLock<Option<Arc<Ring>>>,
    /// Write the member list's format line (the upgrade is finalised).
    final_format: AtomicBool,
    /// Shutting down: told the members, so no rejoining.
    departing: AtomicBool,
    /// This membership, for the blocking task that persists it.
    this: Weak<Membership>,
    /// A persist is queued and has not taken its snapshot yet: later changes ride on it.
    persist_queued: AtomicBool,
    /// One writer of the member file at a time, each writing the view as it then is.
    persisting: std::sync::Mutex<()>,
}

type Swim = Foca<SwimId, PostcardCodec, StdRng, NoCustomBroadcast>;

enum SwimInput {
    Data(Bytes),
    Announce(SocketAddr),
    Leave,
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("{0} is not a member")]
    NotAMember(SocketAddr),
}

/// The background tasks of membership: failure detection and periodic list exchange.
pub struct Detection {
    pub swim: tokio::task::JoinHandle<()>,
    pub exchange: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Loads the persisted member list (if any). `path` is the member file, or None when
    /// nothing can be persisted. Nothing runs until [`Membership::start_detection`]; until
    /// then every other member counts as suspect (usable).
    pub fn open(
        me: SocketAddr,
        zone: Option<String>,
        shape: RingShape,
        path: Option<PathBuf>,
    ) -> Arc<Membership> {
        let mut members = BTreeMap::new();
        if let Some(path) = &path {
            match load(path) {
                Ok(records) => {
                    for record in records {
                        members.insert(record.addr, record);
                    }
                    if !members.is_empty() {
                        log::info!("loaded {} members from {}", members.len(), path.display());
                    }
                }
                Err(err) => log::warn!("{}: {err}; starting with no members", path.display()),
            }
        }
        let own = members.entry(me).or_insert(MemberRecord {
            addr: me,
            generation: 1,
            left: false,
            zone: zone.clone(),
        });
        if own.zone != zone {
            // A new generation, so every member replaces the old zone.
            log::info!(
                "this node's zone is now {}",
                zone.as_deref().unwrap_or("(none)")
            );
            own.generation += 1;
            own.zone = zone.clone();
        }
        let (swim, inputs) = mpsc::unbounded_channel();
        let ring = Arc::new(build_ring(me, &shape, &members));
        let clustered = AtomicBool::new(ring.nodes() != [me]);
        let membership = Arc::new_cyclic(|this| Membership {
            me,
            zone,
            shape,
            clustered,
            awaiting_join: AtomicBool::new(false),
            view: RwLock::new(View { members, ring }),
            liveness: RwLock::default(),
            path,
            swim,
            swim_inputs: std::sync::Mutex::new(Some(inputs)),
            ring_changed: RwLock::new(crate::time::coarse_monotonic()),
            departed: RwLock::new(Vec::new()),
            previous_ring: RwLock::new(None),
            final_format: AtomicBool::new(false),
            departing: AtomicBool::new(false),
            this: this.clone(),
            persist_queued: AtomicBool::new(false),
            persisting: std::sync::Mutex::new(()),
        });
        membership.persist();
        membership
    }

    /// Starts failure detection (SWIM) and the periodic member-list exchange over `peers`.
    /// Both end when `shutdown` turns true.
    pub fn start_detection(
        self: &Arc<Self>,
        peers: Peers,
        gossip_interval: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Detection {
        let inputs = (self.swim_inputs.lock().unwrap_or_else(|p| p.into_inner()))
            .take()
            .expect("failure detection starts once");
        let detector = Arc::clone(self);
        let swim = tokio::spawn(detector.run_swim(
            inputs,
            peers.clone(),
            gossip_interval,
            shutdown.clone(),
        ));
        let gossip = Arc::clone(self);
        let exchange = tokio::spawn(gossip.run_exchange(peers, gossip_interval, shutdown));
        Detection { swim, exchange }
    }

    /// Sets what failure detection would say of `addr` (in-process tests).
    #[cfg(test)]
    pub fn set_liveness(&self, addr: SocketAddr, liveness: Liveness) {
        write_lock(&self.liveness).insert(addr, liveness);
    }

    pub fn me(&self) -> SocketAddr {
        self.me
    }

    /// False while this node is the ring's only member.
    pub fn is_clustered(&self) -> bool {
        self.clustered.load(Ordering::Acquire)
    }

    /// Called when seeds are configured: until a member list with another member arrives,
    /// [`Membership::is_awaiting_join`] holds.
    pub fn expect_cluster(&self) {
        if !self.is_clustered() {
            self.awaiting_join.store(true, Ordering::Release);
        }
    }

    /// Seeds are configured and none has answered yet (see `expect_cluster`).
    pub fn is_awaiting_join(&self) -> bool {
        self.awaiting_join.load(Ordering::Acquire)
    }

    /// Time since the ring last changed.
    pub fn ring_age(&self) -> Duration {
        crate::time::coarse_monotonic().saturating_sub(*read_lock(&self.ring_changed))
    }

    /// The ring before the last membership change, if there was one with other members.
    pub fn previous_ring(&self) -> Option<Arc<Ring>> {
        read_lock(&self.previous_ring).clone()
    }

    pub fn ring(&self) -> Arc<Ring> {
        Arc::clone(&read_lock(&self.view).ring)
    }

    pub fn records(&self) -> Vec<MemberRecord> {
        read_lock(&self.view).members.values().cloned().collect()
    }

    /// Members in the ring (not left), sorted.
    pub fn active(&self) -> Vec<SocketAddr> {
        let view = read_lock(&self.view);
        (view.members.values())
            .filter(|r| !r.left)
            .map(|r| r.addr)
            .collect()
    }

    pub fn liveness(&self, addr: SocketAddr) -> Liveness {
        if addr == self.me {
            return Liveness::Up;
        }
        // Not heard of by failure detection yet (just started): assume reachable; calls
        // to it fail fast if it is not.
        (read_lock(&self.liveness).get(&addr).copied()).unwrap_or(Liveness::Suspect)
    }

    /// Usable as a replica: up, or suspected but not yet declared down.
    pub fn is_available(&self, addr: SocketAddr) -> bool {
        self.liveness(addr) != Liveness::Down
    }

    /// Members that left within `window` and are not back: reads may still find keys there.
    pub fn departed_within(&self, window: Duration) -> Vec<SocketAddr> {
        let active = self.active();
        (read_lock(&self.departed).iter())
            .filter(|(addr, at)| at.elapsed() < window && !active.contains(addr))
            .map(|(addr, _)| *addr)
            .collect()
    }

    /// Members seen up (this node included), sorted.
    pub fn up(&self) -> Vec<SocketAddr> {
        (self.active().into_iter())
            .filter(|&a| self.liveness(a) == Liveness::Up)
            .collect()
    }

    /// Merges a member list received from a peer; returns true when anything changed.
    pub fn merge(&self, incoming: &[MemberRecord]) -> bool {
        let mut added = Vec::new();
        {
            let mut view = write_lock(&self.view);
            let mut changed = false;
            for record in incoming {
                let known = view.members.get(&record.addr);
                if known.is_none_or(|k| record.improves_on(k)) {
                    if record.left && known.is_some_and(|k| !k.left) {
                        let mut departed = write_lock(&self.departed);
                        departed.retain(|(a, _)| *a != record.addr);
                        departed.push((record.addr, std::time::Instant::now()));
                    }
                    match (known, record.left) {
                        (_, true) => log::warn!(
                            "member {} left the cluster (generation {})",
                            record.addr,
                            record.generation
                        ),
                        (None, false) | (Some(MemberRecord { left: true, .. }), false) => {
                            log::info!("member {} joined the cluster", record.addr);
                            added.push(record.addr);
                        }
                        (Some(known), false) if known.zone != record.zone => log::info!(
                            "member {} is in zone {}",
                            record.addr,
                            record.zone.as_deref().unwrap_or("(none)")
                        ),
                        _ => {}
                    }
                    if record.addr == self.me && record.left {
                        log::warn!(
                            "this node was removed from the cluster; `kai cluster join` brings it back"
                        );
                    }
                    view.members.insert(record.addr, record.clone());
                    changed = true;
                }
            }
            if !changed {
                return false;
            }
            let ring = Arc::new(build_ring(self.me, &self.shape, &view.members));
            if !ring.same_layout(&view.ring) {
                let previous = if view.ring.nodes().len() > 1 {
                    Some(Arc::clone(&view.ring))
                } else {
                    // This node just joined: before, the cluster was everyone else.
                    let mut others = view.members.clone();
                    others.remove(&self.me);
                    let others_active = others.values().any(|r| !r.left);
                    others_active.then(|| Arc::new(build_ring(self.me, &self.shape, &others)))
                };
                *write_lock(&self.previous_ring) = previous;
            }
            view.ring = ring;
            let clustered = view.ring.nodes() != [self.me];
            (self.clustered).store(clustered, Ordering::Release);
            if clustered && self.awaiting_join.swap(false, Ordering::AcqRel) {
                log::info!(
                    "joined: the ring now has {} members",
                    view.ring.nodes().len()
                );
            }
            *write_lock(&self.ring_changed) = crate::time::coarse_monotonic();
        }
        self.persist_soon();
        for addr in added.into_iter().filter(|&a| a != self.me) {
            let _ = self.swim.send(SwimInput::Announce(addr));
        }
        true
    }

    /// Marks `addr` as gone (operator `remove`, or this node's own `leave`).
    pub fn retire(&self, addr: SocketAddr) -> Result<(), MembershipError> {
        let record = {
            let view = read_lock(&self.view);
            let known = view
                .members
                .get(&addr)
                .ok_or(MembershipError::NotAMember(addr))?;
            MemberRecord {
                addr,
                generation: known.generation + 1,
                left: true,
                zone: known.zone.clone(),
            }
        };
        self.merge(&[record]);
        if addr == self.me {
            let _ = self.swim.send(SwimInput::Leave);
        }
        Ok(())
    }

    /// Shutting down (not leaving the cluster): failure detection tells the members this
    /// node is down now, so they route around it while it finishes its requests, instead
    /// of finding out by failed calls. Its next start rejoins as a new incarnation.
    pub fn depart(&self) {
        if !self.departing.swap(true, Ordering::AcqRel) {
            let _ = self.swim.send(SwimInput::Leave);
        }
    }

    /// Brings this node (back) into the member list, e.g. after it was removed.
    pub fn rejoin(&self) {
        let record = {
            let view = read_lock(&self.view);
            let known = view.members.get(&self.me);
            match known {
                Some(k) if !k.left => return,
                _ => MemberRecord {
                    addr: self.me,
                    generation: known.map_or(1, |k| k.generation + 1),
                    left: false,
                    zone: self.zone.clone(),
                },
            }
        };
        self.merge(&[record]);
    }

    /// Push-pull with one peer: send our list, merge theirs.
    pub async fn exchange(&self, peers: &Peers, peer: SocketAddr) -> Result<(), PeerError> {
        let members = peers.exchange_members(peer, self.records()).await?;
        self.merge(&members);
        let _ = self.swim.send(SwimInput::Announce(peer));
        Ok(())
    }

    pub fn swim_data(&self, data: Bytes) {
        let _ = self.swim.send(SwimInput::Data(data));
    }

    /// From now on the member list is written with its format line (once the upgrade is
    /// finalised: release 0.1.0 would reject the line).
    pub fn write_final_format(&self) {
        if !self.final_format.swap(true, Ordering::AcqRel) {
            self.persist();
        }
    }

    /// `persist` on the runtime's blocking pool, not on the worker that merged a change:
    /// a write and two fsyncs on a busy disk can take seconds, and a worker stopped for
    /// them stops every request queued on it. Synchronous outside a runtime.
    fn persist_soon(&self) {
        let (Ok(runtime), Some(this)) =
            (tokio::runtime::Handle::try_current(), self.this.upgrade())
        else {
            return self.persist();
        };
        if !self.persist_queued.swap(true, Ordering::AcqRel) {
            runtime.spawn_blocking(move || this.persist());
        }
    }

    /// Writes the member list as it is now, durably (at start, once final, at shutdown).
    pub fn persist(&self) {
        let Some(path) = &self.path else { return };
        let _writer = self.persisting.lock().unwrap_or_else(|p| p.into_inner());
        // Cleared before the snapshot: a change after it queues another write.
        self.persist_queued.store(false, Ordering::Release);
        // Format 1 (release 0.1.0) has no format line and no zones.
        let final_format = self.final_format.load(Ordering::Acquire);
        let header = if final_format {
            format!("{MEMBERS_FORMAT}\n")
        } else {
            String::new()
        };
        let text: String = std::iter::once(header)
            .chain((read_lock(&self.view).members.values()).map(|r| {
                let state = if r.left { "left" } else { "active" };
                match &r.zone {
                    Some(zone) if final_format => {
                        format!("{} {} {state} zone={zone}\n", r.addr, r.generation)
                    }
                    _ => format!("{} {} {state}\n", r.addr, r.generation),
                }
            }))
            .collect();
        if let Err(err) = crate::durable::write_atomically(path, text.as_bytes()) {
            log::warn!(
                "cannot persist the member list to {}: {err}",
                path.display()
            );
        }
    }

    /// Periodic member-list exchange with a random other member, plus contacting the
    /// seeds' replacements: every member we know but failure detection calls down.
    async fn run_exchange(
        self: Arc<Self>,
        peers: Peers,
        interval: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut periodic = crate::shutdown::Periodic::new(interval, shutdown);
        while periodic.tick().await {
            let others: Vec<SocketAddr> = (self.active().into_iter())
                .filter(|&a| a != self.me)
                .collect();
            if others.is_empty() {
                continue;
            }
            let peer = others[rand::rng().random_range(0..others.len())];
            if let Err(err) = self.exchange(&peers, peer).await {
                log::debug!("member exchange with {peer}: {err}");
            }
        }
    }

    async fn run_swim(
        self: Arc<Self>,
        mut inputs: mpsc::UnboundedReceiver<SwimInput>,
        peers: Peers,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let identity = SwimId {
            addr: self.me,
            incarnation: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64),
        };
        let mut config = foca::Config::new_lan(NonZeroU32::new(5).expect("non-zero"));
        config.probe_period = interval;
        config.probe_rtt = (interval / 2).max(Duration::from_millis(100));
        config.max_packet_size = NonZeroUsize::new(64 << 10).expect("non-zero");
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: interval * 3,
            num_members: NonZeroUsize::new(3).expect("non-zero"),
        });
        // foca times out only the suspicions its own probes raised: one learned from gossip
        // stays until the suspect refutes it, which it never does if the rumour missed it.
        let suspicion_limit = config.suspect_to_down_after + config.probe_period * 2;
        let mut suspicions = Suspicions::default();
        let mut foca: Swim = Foca::new(identity, config, StdRng::from_os_rng(), PostcardCodec);
        let mut runtime = foca::AccumulatingRuntime::new();
        let (timers, mut fired) = mpsc::unbounded_channel();
        for addr in self.active() {
            if addr != self.me {
                let _ = foca.announce(SwimId::at(addr), &mut runtime);
            }
        }
        let mut announce = tokio::time::interval(interval * 3);
        loop {
            let result = tokio::select! {
                () = crate::shutdown::requested(&mut shutdown) => return,
                input = inputs.recv() => match input {
                    Some(SwimInput::Data(data)) => foca.handle_data(&data, &mut runtime),
                    Some(SwimInput::Announce(addr)) => foca.announce(SwimId::at(addr), &mut runtime),
                    Some(SwimInput::Leave) => foca.leave_cluster(&mut runtime),
                    None => return,
                },
                Some(timer) = fired.recv() => foca.handle_timer(timer, &mut runtime),
                _ = announce.tick(), if !self.departing.load(Ordering::Acquire) => {
                    // Members failure detection does not know as up (never met, restarted,
                    // or on the other side of a healed partition) are greeted again.
                    let alive: Vec<SocketAddr> = foca.iter_members().map(|m| m.id().addr).collect();
                    for addr in self.active() {
                        if addr != self.me && !alive.contains(&addr) {
                            let _ = foca.announce(SwimId::at(addr), &mut runtime);
                        }
                    }
                    let expired = suspicions.expired(&foca, suspicion_limit);
                    // Declared down here, the member hears so on its next message and
                    // rejoins under a new incarnation.
                    foca.apply_many(expired.into_iter(), true, &mut runtime)
                }
            };
            if let Err(err) = result {
                log::debug!("swim: {err}");
            }
            while let Some((to, data)) = runtime.to_send() {
                peers.send_swim(to.addr, data);
            }
            while let Some((after, timer)) = runtime.to_schedule() {
                let timers = timers.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = timers.send(timer);
                });
            }
            while let Some(notification) = runtime.to_notify() {
                match notification {
                    OwnedNotification::Defunct if self.departing.load(Ordering::Acquire) => {}
                    OwnedNotification::Defunct => {
                        log::warn!("failure detection declared this node down; rejoining");
                        let _ = foca.reuse_down_identity();
                    }
                    OwnedNotification::Idle => log::info!("no other member is reachable"),
                    OwnedNotification::Rejoin(id) => log::info!(
                        "failure detection had declared this node down; rejoined as incarnation {}",
                        id.incarnation
                    ),
                    _ => {}
                }
            }
            // Suspect → alive raises no notification: read the states after every event.
            self.refresh_liveness(&foca);
        }
    }

    fn refresh_liveness(&self, foca: &Swim) {
        let mut next = FastMap::default();
        for member in foca.iter_membership_state() {
            let state = match member.state() {
                foca::State::Alive => Liveness::Up,
                foca::State::Suspect => Liveness::Suspect,
                foca::State::Down => Liveness::Down,
            };
            let id = member.id();
            // The newest identity of an address wins (a restarted node's old one is down).
            match next.get(&id.addr) {
                Some(Liveness::Up) => {}
                _ => {
                    next.insert(id.addr, state);
                }
            }
        }
        next.remove(&self.me);
        let mut liveness = write_lock(&self.liveness);
        for (addr, state) in &next {
            let before = liveness.get(addr).copied();
            if before != Some(*state) {
                log::info!("member {addr} is {}", state.name());
            }
        }
        *liveness = next;
    }

    pub fn shape(&self) -> &RingShape {
        &self.shape
    }
}

/// When each suspicion (member identity and incarnation) was first seen.
#[derive(Default)]
struct Suspicions(HashMap<(SwimId, foca::Incarnation), std::time::Instant>);

impl Suspicions {
    /// The suspects held longer than `limit`, as Down updates; forgets refuted ones.
    fn expired(&mut self, foca: &Swim, limit: Duration) -> Vec<foca::Member<SwimId>> {
        let now = std::time::Instant::now();
        let current: Vec<(SwimId, foca::Incarnation)> = (foca.iter_membership_state())
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()))
            .collect();
        self.0.retain(|suspicion, _| current.contains(suspicion));
        let mut expired = Vec::new();
        for suspicion in current {
            let since = *self.0.entry(suspicion.clone()).or_insert(now);
            if now.duration_since(since) > limit {
                log::info!(
                    "member {} stayed suspect for {limit:?}; declaring it down",
                    suspicion.0.addr
                );
                let (id, incarnation) = suspicion;
                expired.push(foca::Member::new(id, incarnation, foca::State::Down));
            }
        }
        expired
    }
}

fn build_ring(
    me: SocketAddr,
    shape: &RingShape,
    members: &BTreeMap<SocketAddr, MemberRecord>,
) -> Ring {
    let mut nodes: Vec<SocketAddr> = (members.values())
        .filter(|r| !r.left)
        .map(|r| r.addr)
        .collect();
    if nodes.is_empty() {
        // Removed from every list: serve alone rather than not at all.
        nodes.push(me);
    }
    // Full preference walks: the coordinator needs the fallbacks after the N owners.
    let walk = nodes.len();
    let zoned: Vec<(SocketAddr, Option<&str>)> = (nodes.iter())
        .map(|addr| (*addr, members.get(addr).and_then(|r| r.zone.as_deref())))
        .collect();
    Ring::with_zones(
        &zoned,
        shape.virtual_nodes,
        shape.buckets,
        walk,
        shape.replicas,
    )
}

#[derive(Debug, thiserror::Error)]
enum MemberFileError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("line {number}: malformed member {line:?}")]
    Malformed { number: usize, line: String },
    #[error("format {0:?} is not one this release reads (a newer release wrote it)")]
    UnknownFormat(String),
}

/// The member list's first line from format 2 on; format 1 (release 0.1.0) has none.
const MEMBERS_FORMAT: &str = "# kai members 2";

fn load(path: &PathBuf) -> Result<Vec<MemberRecord>, MemberFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    let mut records = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            if number == 0 && line == MEMBERS_FORMAT {
                continue;
            }
            return Err(MemberFileError::UnknownFormat(line.to_string()));
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (zone, fields) = match fields[..] {
            [ref rest @ .., last] if last.starts_with("zone=") => (Some(&last[5..]), rest),
            _ => (None, &fields[..]),
        };
        let parsed = match fields {
            [addr, generation, state @ ("active" | "left")] => addr
                .parse()
                .ok()
                .zip(generation.parse().ok())
                .map(|(addr, generation)| MemberRecord {
                    addr,
                    generation,
                    left: *state == "left",
                    zone: zone.filter(|z| !z.is_empty()).map(String::from),
                }),
            _ => None,
        };
        let record = parsed.ok_or_else(|| MemberFileError::Malformed {
            number: number + 1,
            line: line.to_string(),
        })?;
        records.push(record);
    }
    Ok(records)
}

/// A member as failure detection knows it: its address plus an incarnation that grows
/// with every restart, so a restarted node is a new identity that wins over its old one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct SwimId {
    addr: SocketAddr,
    incarnation: u64,
}

impl SwimId {
    /// The identity to greet an address whose incarnation we do not know.
    fn at(addr: SocketAddr) -> Self {
        SwimId {
            addr,
            incarnation: 0,
        }
    }
}

impl Identity for SwimId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(SwimId {
            addr: self.addr,
            incarnation: self.incarnation + 1,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(port: u16, generation: u64, left: bool) -> MemberRecord {
        MemberRecord {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            generation,
            left,
            zone: None,
        }
    }

    #[test]
    fn newer_generations_win_and_removal_wins_ties() {
        assert!(record(1, 2, false).supersedes(&record(1, 1, true)));
        assert!(record(1, 1, true).supersedes(&record(1, 1, false)));
        assert!(!record(1, 1, false).supersedes(&record(1, 1, true)));
        assert!(!record(1, 1, false).supersedes(&record(1, 1, false)));
    }

    #[test]
    fn a_suspicion_learned_from_gossip_expires_into_down() {
        let me = SwimId::at(SocketAddr::from(([127, 0, 0, 1], 1)));
        let other = SwimId::at(SocketAddr::from(([127, 0, 0, 2], 1)));
        let config = foca::Config::new_lan(NonZeroU32::new(3).unwrap());
        let mut foca: Swim = Foca::new(me, config, StdRng::seed_from_u64(1), PostcardCodec);
        let mut runtime = foca::AccumulatingRuntime::new();
        // Heard from gossip, not from a probe of ours: foca sets no timer for it.
        let suspect = foca::Member::new(other.clone(), 0, foca::State::Suspect);
        foca.apply_many(std::iter::once(suspect), true, &mut runtime)
            .unwrap();
        while let Some((_, timer)) = runtime.to_schedule() {
            assert!(!matches!(timer, foca::Timer::ChangeSuspectToDown { .. }));
        }
        let mut suspicions = Suspicions::default();
        assert!(suspicions
            .expired(&foca, Duration::from_secs(60))
            .is_empty());
        let expired = suspicions.expired(&foca, Duration::ZERO);
        assert_eq!(expired.len(), 1);
        foca.apply_many(expired.into_iter(), true, &mut runtime)
            .unwrap();
        let state = foca.iter_membership_state().find(|m| m.id() == &other);
        assert_eq!(state.map(|m| m.state()), Some(foca::State::Down));
    }

    #[test]
    fn member_file_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members");
        std::fs::write(&path, "127.0.0.1:1 3 active\n127.0.0.1:2 1 left\n").unwrap();
        assert_eq!(
            load(&path).unwrap(),
            vec![record(1, 3, false), record(2, 1, true)]
        );
        std::fs::write(&path, "127.0.0.1:1 x active\n").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("line 1"));
        assert_eq!(load(&dir.path().join("absent")).unwrap(), vec![]);
        // Format 2 opens with its line; a format this release does not know is refused.
        std::fs::write(&path, format!("{MEMBERS_FORMAT}\n127.0.0.1:1 3 active\n")).unwrap();
        assert_eq!(load(&path).unwrap(), vec![record(1, 3, false)]);
        std::fs::write(&path, "# kai members 3\n127.0.0.1:1 3 active\n").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("members 3"));
    }

    fn shape() -> RingShape {
        RingShape {
            virtual_nodes: 16,
            buckets: 64,
            replicas: 2,
        }
    }

    #[test]
    fn a_member_file_write_held_up_by_the_disk_does_not_hold_up_the_merge() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members");
        let me = SocketAddr::from(([127, 0, 0, 1], 1));
        let membership = Membership::open(me, None, shape(), Some(path.clone()));
        // A write in progress (a stalled fsync) holds the writer's lock.
        let stalled = membership.persisting.lock().unwrap();
        let (merged, merge_returned) = std::sync::mpsc::channel();
        let (runtime_handle, merging) = (runtime.handle().clone(), Arc::clone(&membership));
        std::thread::spawn(move || {
            let _inside = runtime_handle.enter();
            merging.merge(&[record(2, 1, false)]);
            let _ = merged.send(());
        });
        merge_returned
            .recv_timeout(Duration::from_secs(5))
            .expect("the merge waited for the member file");
        assert!(!std::fs::read_to_string(&path)
            .unwrap()
            .contains("127.0.0.1:2"));
        drop(stalled);
        // Once the disk answers, the file catches up with the change.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&path)
            .unwrap()
            .contains("127.0.0.1:2 1 active")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the member file was never written"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(runtime);
    }

    #[tokio::test]
    async fn zones_are_persisted_once_final_and_a_new_zone_is_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members");
        let me = SocketAddr::from(([127, 0, 0, 1], 1));
        let zone = |z: &str| Some(z.to_string());
        let membership = Membership::open(me, zone("a"), shape(), Some(path.clone()));
        assert_eq!(membership.records()[0].zone, zone("a"));
        // Release 0.1.0 reads the file until the upgrade is final: no zone in it.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1:1 1 active\n"
        );
        membership.write_final_format();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("127.0.0.1:1 1 active zone=a\n"), "{text}");
        assert_eq!(load(&path).unwrap()[0].zone, zone("a"));
        drop(membership);
        let moved = Membership::open(me, zone("b"), shape(), Some(path.clone()));
        let own = moved.records()[0].clone();
        assert_eq!((own.generation, own.zone), (2, zone("b")));
        // A relay that dropped the zone (0.1.0) does not erase it; a copy with it fills it in.
        let other = SocketAddr::from(([127, 0, 0, 2], 1));
        let bare = MemberRecord {
            addr: other,
            generation: 1,
            left: false,
            zone: None,
        };
        assert!(moved.merge(std::slice::from_ref(&bare)));
        assert!(
            !moved.ring().is_zoned(),
            "a member without a zone: Kai's ring"
        );
        let zoned = MemberRecord {
            zone: zone("c"),
            ..bare.clone()
        };
        assert!(moved.merge(&[zoned]));
        assert!(!moved.merge(&[bare]));
        assert_eq!(moved.ring().zone(other), Some("c"));
        assert!(moved.ring().is_zoned());
    }
}

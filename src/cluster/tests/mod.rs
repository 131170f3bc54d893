//! The replication core in-process: several coordinators over a [`FakeNetwork`], each with
//! its own memory store, driven deterministically on one thread. Quorum reads and writes,
//! read repair, sloppy quorum and hints, anti-entropy, partitions and message loss, in
//! milliseconds and without root.

mod network;
mod simulation;

use super::anti_entropy::AntiEntropy;
use super::coordinator::Coordinator;
use super::counters::ClusterCounters;
use super::error::ClusterError;
use super::handoff;
use super::hints::Hints;
use super::member::{Liveness, MemberRecord};
use super::membership::{Membership, RingShape};
use super::peer_handler::PeerHandler;
use super::peers::Peers;
use super::replica::Replica;
use crate::causality;
use crate::config::Quorum;
use crate::ops::{Outcome, StoreMode, StoreOutcome, WriteOp};
use crate::store::memory::MemoryStore;
use crate::store::Store;
use bytes::Bytes;
use network::FakeNetwork;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const BUCKETS: u32 = 64;

struct TestNode {
    addr: SocketAddr,
    coordinator: Arc<Coordinator>,
    store: Arc<dyn Store>,
}

struct TestCluster {
    network: Arc<FakeNetwork>,
    nodes: Vec<TestNode>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i as u8 + 1], 11011))
}

/// Nodes 0..size as members, each in its first generation.
fn member_records(size: usize) -> Vec<MemberRecord> {
    (0..size)
        .map(|i| MemberRecord {
            addr: addr(i),
            generation: 1,
            left: false,
            zone: None,
        })
        .collect()
}

/// Node `i` over `store`, knowing `members`, attached to `network` (replacing any earlier
/// incarnation at its address). Every other member counts as suspect until marked.
fn start_node(
    network: &Arc<FakeNetwork>,
    i: usize,
    members: &[MemberRecord],
    quorum: Quorum,
    store: Arc<dyn Store>,
    hints: Arc<Hints>,
    clock: Arc<crate::time::HybridClock>,
) -> TestNode {
    let shape = RingShape {
        virtual_nodes: 32,
        buckets: BUCKETS,
        replicas: quorum.n as usize,
    };
    let membership = Membership::open(addr(i), None, shape, None);
    membership.merge(members);
    let counters = Arc::new(ClusterCounters::default());
    let replica = Arc::new(Replica::new(
        Arc::clone(&store),
        8,
        Duration::from_secs(3600),
        Arc::clone(&counters),
        Arc::clone(&clock),
    ));
    let coordinator = Coordinator::new(
        i as u64 + 1,
        membership,
        Peers::new(network.link(addr(i))),
        replica,
        quorum,
        crate::cluster::coordinator::Books {
            hints,
            counters,
            upgrade: Arc::new(crate::cluster::upgrade::Upgrade::in_memory()),
        },
    );
    let handler = PeerHandler::new(Arc::clone(&coordinator), Box::new(|_| {}));
    network.attach(addr(i), Arc::new(handler), clock);
    TestNode {
        addr: addr(i),
        coordinator,
        store,
    }
}

impl TestCluster {
    fn start(size: usize, quorum: Quorum) -> TestCluster {
        let network = FakeNetwork::new(7);
        let records = member_records(size);
        let nodes = (0..size)
            .map(|i| {
                let store: Arc<dyn Store> = Arc::new(MemoryStore::new(0, BUCKETS));
                let hints = Arc::new(Hints::load(None));
                let clock = Arc::new(crate::time::HybridClock::new());
                let node = start_node(&network, i, &records, quorum, store, hints, clock);
                for other in (0..size).filter(|&o| o != i) {
                    (node.coordinator.membership()).set_liveness(addr(other), Liveness::Up);
                }
                node
            })
            .collect();
        TestCluster { network, nodes }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// What every other node's failure detection says of node `i`.
    fn mark(&self, i: usize, liveness: Liveness) {
        for node in self.nodes.iter().filter(|n| n.addr != addr(i)) {
            node.coordinator
                .membership()
                .set_liveness(addr(i), liveness);
        }
    }

    /// Cuts node `i` off, and both sides' failure detection notices.
    fn partition(&self, i: usize) {
        self.network.isolate(addr(i), &self.addrs());
        self.mark(i, Liveness::Down);
        for other in (0..self.nodes.len()).filter(|&o| o != i) {
            (self.nodes[i].coordinator.membership()).set_liveness(addr(other), Liveness::Down);
        }
    }

    /// Every link back, every node seen up.
    fn heal(&self) {
        self.network.heal();
        for i in 0..self.nodes.len() {
            self.mark(i, Liveness::Up);
        }
    }

    async fn set(&self, via: usize, key: &str, value: &str) -> Result<StoreOutcome, ClusterError> {
        let written = self.nodes[via]
            .coordinator
            .write(key.as_bytes(), set_op(value))
            .await?;
        Ok(store_outcome(&written))
    }

    async fn get(&self, via: usize, key: &str) -> Result<Option<Bytes>, ClusterError> {
        let read = self.nodes[via].coordinator.read(key.as_bytes()).await?;
        Ok(read.versions.and_then(|v| newest_value(&v)))
    }

    /// The value node `i` holds itself.
    fn held(&self, i: usize, key: &str) -> Option<Bytes> {
        (self.nodes[i].store.get(key.as_bytes(), 0)).and_then(|v| newest_value(&v))
    }

    /// The owners of `key`, as node indices.
    fn owners(&self, key: &str) -> Vec<usize> {
        let ring = self.nodes[0].coordinator.membership().ring();
        let n = self.nodes[0].coordinator.replicas();
        (ring.nodes_for(key.as_bytes()).take(n))
            .map(|a| self.nodes.iter().position(|node| node.addr == a).unwrap())
            .collect()
    }

    async fn anti_entropy_round(&self) {
        for node in &self.nodes {
            let store = Arc::clone(&node.store);
            AntiEntropy::new(Arc::clone(&node.coordinator), store, 0)
                .run_round()
                .await;
        }
    }

    fn digests_agree(&self) -> bool {
        // Every owner of a bucket holds the same digest for it.
        let ring = self.nodes[0].coordinator.membership().ring();
        (0..ring.buckets()).all(|bucket| {
            let owners: Vec<_> = ring.preference_list(bucket).take(3).collect();
            let digest = |a: SocketAddr| {
                let node = self.nodes.iter().find(|n| n.addr == a).unwrap();
                node.store.digests().summary(bucket).digest
            };
            owners.iter().all(|&o| digest(o) == digest(owners[0]))
        })
    }

    fn counters(&self, i: usize) -> &ClusterCounters {
        self.nodes[i].coordinator.counters()
    }
}

fn newest_value(versions: &crate::record::Versions) -> Option<Bytes> {
    causality::newest_of(versions.live()).map(|r| r.value.clone())
}

fn quorum(n: u32, r: u32, w: u32) -> Quorum {
    Quorum { n, r, w }
}

/// Lets spawned replica writes and background repairs run to completion.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

const STORED: StoreOutcome = StoreOutcome::Stored;

fn set_op(value: &str) -> WriteOp {
    WriteOp::Store {
        mode: StoreMode::Set,
        cas: None,
        stale_if_older: false,
        flags: 0,
        expires_at: 0,
        data: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// A store's outcome without its cas unique; anything else is a test failure.
fn store_outcome(written: &Outcome) -> StoreOutcome {
    match written {
        Outcome::Store(outcome, _) => *outcome,
        other => panic!("a set answered {other:?}"),
    }
}

#[tokio::test]
async fn a_quorum_write_reaches_every_replica_and_any_node_reads_it() {
    let cluster = TestCluster::start(3, quorum(3, 2, 2));
    assert_eq!(cluster.set(0, "k", "v1").await.unwrap(), STORED);
    settle().await;
    for i in 0..3 {
        assert_eq!(
            cluster.held(i, "k").as_deref(),
            Some(&b"v1"[..]),
            "node {i}"
        );
        assert_eq!(
            cluster.get(i, "k").await.unwrap().as_deref(),
            Some(&b"v1"[..])
        );
    }
    // A later write from another coordinator supersedes it everywhere: no siblings.
    cluster.set(2, "k", "v2").await.unwrap();
    settle().await;
    for i in 0..3 {
        let versions = cluster.nodes[i].store.get(b"k", 0).unwrap();
        assert_eq!(versions.0.len(), 1, "node {i} holds {versions:?}");
    }
}

#[tokio::test]
async fn a_write_without_its_quorum_fails_with_counts_and_leaves_hints() {
    let cluster = TestCluster::start(3, quorum(3, 2, 2));
    // Node 0 is cut off but nobody has noticed yet: replicas look available.
    cluster.network.isolate(addr(0), &cluster.addrs());
    let err = cluster.set(0, "k", "v").await.unwrap_err();
    match &err {
        ClusterError::WriteQuorum {
            acks: 1,
            needed: 2,
            failures,
        } => assert_eq!(failures.0.len(), 2, "{err}"),
        other => panic!("unexpected {other}"),
    }
    assert!(err
        .to_string()
        .starts_with("write quorum not reached: 1 of 2"));
    assert_eq!(
        cluster
            .counters(0)
            .write_quorum_failures
            .load(Ordering::Relaxed),
        1
    );
    // The two owners that missed it get a hint each.
    assert_eq!(cluster.nodes[0].coordinator.hints().total(), 2);
    let err = cluster.get(0, "k").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::ReadQuorum {
                replies: 1,
                needed: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        cluster
            .counters(0)
            .read_quorum_failures
            .load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn too_few_live_replicas_is_refused_before_any_call() {
    let cluster = TestCluster::start(3, quorum(3, 2, 2));
    cluster.mark(1, Liveness::Down);
    cluster.mark(2, Liveness::Down);
    let calls = cluster.network.calls.load(Ordering::Relaxed);
    let err = cluster.get(0, "k").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::Unavailable {
                up: 1,
                needed: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(cluster.network.calls.load(Ordering::Relaxed), calls);
}

#[tokio::test]
async fn read_repair_brings_a_stale_replica_up_to_date() {
    let cluster = TestCluster::start(3, quorum(3, 3, 2));
    cluster.set(0, "k", "old").await.unwrap();
    settle().await;
    // Node 2 misses the new value (W = 2 is met without it).
    cluster.network.isolate(addr(2), &cluster.addrs());
    cluster.set(0, "k", "new").await.unwrap();
    settle().await;
    assert_eq!(cluster.held(2, "k").as_deref(), Some(&b"old"[..]));
    cluster.network.heal();
    assert_eq!(
        cluster.get(1, "k").await.unwrap().as_deref(),
        Some(&b"new"[..])
    );
    settle().await;
    assert_eq!(cluster.held(2, "k").as_deref(), Some(&b"new"[..]));
    assert!(cluster.counters(1).read_repairs.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn one_handoff_pass_delivers_every_hint_not_one_batch() {
    let cluster = TestCluster::start(3, quorum(3, 2, 2));
    let down = 2;
    cluster.mark(down, Liveness::Down);
    cluster.network.isolate(addr(down), &cluster.addrs());
    let keys: Vec<String> = (0..1500).map(|i| format!("missed-{i}")).collect();
    for key in &keys {
        assert_eq!(cluster.set(0, key, "v").await.unwrap(), STORED);
    }
    let coordinator = &cluster.nodes[0].coordinator;
    assert_eq!(coordinator.hints().count_for(addr(down)), keys.len());
    cluster.network.heal();
    cluster.mark(down, Liveness::Up);
    handoff::deliver_hints(coordinator).await;
    assert_eq!(coordinator.hints().total(), 0);
    for key in &keys {
        assert_eq!(cluster.held(down, key).as_deref(), Some(&b"v"[..]), "{key}");
    }
}

#[tokio::test]
async fn a_down_owner_is_replaced_by_a_fallback_and_gets_its_hint_back() {
    let cluster = TestCluster::start(4, quorum(3, 2, 2));
    let key = "hinted";
    let owners = cluster.owners(key);
    let down = owners[2];
    let fallback = (0..4).find(|i| !owners.contains(i)).unwrap();
    cluster.mark(down, Liveness::Down);
    cluster.network.isolate(addr(down), &cluster.addrs());
    assert_eq!(cluster.set(owners[0], key, "v").await.unwrap(), STORED);
    settle().await;
    // Sloppy quorum: the fallback holds the write, the coordinator a hint for the owner.
    assert_eq!(cluster.held(fallback, key).as_deref(), Some(&b"v"[..]));
    assert_eq!(cluster.held(down, key), None);
    let coordinator = &cluster.nodes[owners[0]].coordinator;
    assert_eq!(coordinator.hints().count_for(addr(down)), 1);
    // Still down: nothing is delivered.
    handoff::deliver_hints(coordinator).await;
    assert_eq!(coordinator.hints().count_for(addr(down)), 1);
    cluster.network.heal();
    cluster.mark(down, Liveness::Up);
    handoff::deliver_hints(coordinator).await;
    assert_eq!(cluster.held(down, key).as_deref(), Some(&b"v"[..]));
    assert_eq!(coordinator.hints().total(), 0);
    assert_eq!(
        coordinator
            .counters()
            .hinted_handoffs
            .load(Ordering::Relaxed),
        1
    );
    // The fallback hands the bucket it does not own back to the owners, then drops it.
    cluster.anti_entropy_round().await;
    assert_eq!(cluster.held(fallback, key), None);
}

#[tokio::test]
async fn anti_entropy_repairs_replicas_that_missed_writes() {
    let cluster = TestCluster::start(3, quorum(3, 2, 2));
    cluster.network.isolate(addr(2), &cluster.addrs());
    for i in 0..40 {
        cluster.set(i % 2, &format!("key{i}"), "v").await.unwrap();
    }
    settle().await;
    cluster.network.heal();
    assert!(!cluster.digests_agree());
    assert!((0..40).all(|i| cluster.held(2, &format!("key{i}")).is_none()));
    cluster.anti_entropy_round().await;
    assert!(cluster.digests_agree());
    assert!((0..40).all(|i| cluster.held(2, &format!("key{i}")).is_some()));
    let moved: u64 = (0..3)
        .map(|i| cluster.counters(i).sync_keys.load(Ordering::Relaxed))
        .sum();
    assert_eq!(moved, 40);
}

#[tokio::test(start_paused = true)]
async fn a_write_given_up_by_its_client_still_reaches_every_replica() {
    let cluster = TestCluster::start(3, quorum(3, 2, 2));
    // Every call waits up to a second on the way there, so none is answered at once.
    cluster.network.set_faults(0, 0, 1000);
    let key = "abandoned";
    let write = cluster.set(0, key, "v1");
    let given_up = tokio::time::timeout(Duration::ZERO, write).await;
    assert!(
        given_up.is_err(),
        "the write finished at once: {given_up:?}"
    );
    // The calls in flight when the coordinator was dropped still arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    settle().await;
    for i in 0..3 {
        assert_eq!(
            cluster.held(i, key).as_deref(),
            Some(&b"v1"[..]),
            "node {i}"
        );
    }
}

#[tokio::test]
async fn writes_acknowledged_under_message_loss_are_never_lost() {
    let cluster = TestCluster::start(3, quorum(3, 2, 2));
    cluster.network.set_loss(25);
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        let key = format!("key{i}");
        if cluster.set(i % 3, &key, &format!("v{i}")).await.is_ok() {
            acknowledged.push(i);
        }
    }
    settle().await;
    assert!(cluster.network.lost.load(Ordering::Relaxed) > 0);
    assert!(
        acknowledged.len() > 20 && acknowledged.len() < 200,
        "{}",
        acknowledged.len()
    );
    // Every acknowledged write is readable at once, through any node...
    cluster.network.heal();
    for &i in &acknowledged {
        let value = cluster.get(i % 3, &format!("key{i}")).await.unwrap();
        assert_eq!(value, Some(Bytes::from(format!("v{i}"))), "key{i}");
    }
    // ...and after one anti-entropy round every replica holds it.
    cluster.anti_entropy_round().await;
    assert!(cluster.digests_agree());
    for &i in &acknowledged {
        assert!(
            (0..3).all(|n| cluster.held(n, &format!("key{i}")).is_some()),
            "key{i}"
        );
    }
}

#[tokio::test]
async fn both_sides_of_a_partition_keep_concurrent_writes_as_siblings() {
    let cluster = TestCluster::start(3, quorum(3, 1, 1));
    cluster.set(0, "k", "before").await.unwrap();
    settle().await;
    cluster.partition(0);
    cluster.set(0, "k", "left").await.unwrap();
    cluster.set(1, "k", "right").await.unwrap();
    settle().await;
    cluster.heal();
    cluster.anti_entropy_round().await;
    for i in 0..3 {
        let versions = cluster.nodes[i].store.get(b"k", 0).unwrap();
        let mut values: Vec<_> = versions.live().map(|r| r.value.clone()).collect();
        values.sort();
        assert_eq!(
            values,
            [Bytes::from("left"), Bytes::from("right")],
            "node {i}"
        );
    }
}

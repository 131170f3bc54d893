//! An in-process network for the replication core: every node's [`PeerHandler`] reachable
//! by address, requests and replies encoded and decoded as on the wire, links that can be
//! cut (a partition), and seeded shares of messages lost, duplicated and delayed (which
//! reorders them). Each message's fate is a hash of the seed, its link, its bytes and how
//! often that message was sent before, so it does not depend on the order in which nodes
//! happen to send: a seed replays the same faults.

use crate::cluster::peer_handler::PeerHandler;
use crate::cluster::peers::PeerTransport;
use crate::cluster::rpc::client::RpcError;
use crate::cluster::rpc::message::{Request, Response};
use crate::time::HybridClock;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct FakeNetwork {
    /// Each node's handler and hybrid clock (every rpc message carries the clock).
    handlers: Mutex<HashMap<SocketAddr, Attached>>,
    /// Cut links, both directions.
    cut: Mutex<HashSet<(SocketAddr, SocketAddr)>>,
    /// Percent of calls whose request (or, as often, whose reply) is lost.
    loss_percent: AtomicU64,
    /// Percent of requests delivered twice (a retransmission after a reconnect).
    duplicate_percent: AtomicU64,
    /// Each request and reply waits up to this long (tokio time: paused in simulations).
    max_delay_ms: AtomicU64,
    seed: u64,
    /// Times each (link, message) was sent: repeated messages get fates of their own.
    sent: Mutex<HashMap<(SocketAddr, SocketAddr, u64), u64>>,
    pub calls: AtomicU64,
    pub lost: AtomicU64,
}

/// What happens to one call.
struct Fate {
    request_lost: bool,
    reply_lost: bool,
    duplicated: bool,
    request_delay: std::time::Duration,
    reply_delay: std::time::Duration,
}

type Attached = (Arc<PeerHandler>, Arc<HybridClock>);

/// One node's end of the network.
pub struct Link {
    from: SocketAddr,
    network: Arc<FakeNetwork>,
}

impl FakeNetwork {
    pub fn new(seed: u64) -> Arc<FakeNetwork> {
        Arc::new(FakeNetwork {
            handlers: Mutex::default(),
            cut: Mutex::default(),
            loss_percent: AtomicU64::new(0),
            duplicate_percent: AtomicU64::new(0),
            max_delay_ms: AtomicU64::new(0),
            seed,
            sent: Mutex::default(),
            calls: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        })
    }

    pub fn link(self: &Arc<Self>, from: SocketAddr) -> Link {
        Link {
            from,
            network: Arc::clone(self),
        }
    }

    pub fn attach(&self, addr: SocketAddr, handler: Arc<PeerHandler>, clock: Arc<HybridClock>) {
        self.handlers.lock().unwrap().insert(addr, (handler, clock));
    }

    fn clock_of(&self, addr: SocketAddr) -> Option<Arc<HybridClock>> {
        let handlers = self.handlers.lock().unwrap();
        handlers.get(&addr).map(|(_, clock)| Arc::clone(clock))
    }

    /// Takes `addr` off the network (a crashed node): calls to it fail at once.
    pub fn detach(&self, addr: SocketAddr) {
        self.handlers.lock().unwrap().remove(&addr);
    }

    /// Cuts every link between `side` and the rest.
    pub fn isolate(&self, side: SocketAddr, rest: &[SocketAddr]) {
        let mut cut = self.cut.lock().unwrap();
        for &other in rest.iter().filter(|&&o| o != side) {
            cut.insert((side, other));
            cut.insert((other, side));
        }
    }

    /// Every link back; no loss, duplication or delay.
    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
        self.set_faults(0, 0, 0);
    }

    pub fn set_loss(&self, percent: u64) {
        self.loss_percent.store(percent, Ordering::Relaxed);
    }

    pub fn set_faults(&self, loss_percent: u64, duplicate_percent: u64, max_delay_ms: u64) {
        self.loss_percent.store(loss_percent, Ordering::Relaxed);
        (self.duplicate_percent).store(duplicate_percent, Ordering::Relaxed);
        self.max_delay_ms.store(max_delay_ms, Ordering::Relaxed);
    }

    fn fate(&self, from: SocketAddr, to: SocketAddr, message: &[u8]) -> Fate {
        let digest = stable_hash(&message);
        let nth = {
            let mut sent = self.sent.lock().unwrap();
            let count = sent.entry((from, to, digest)).or_default();
            *count += 1;
            *count
        };
        let link = stable_hash(&(from, to));
        let mut rng = StdRng::seed_from_u64(self.seed ^ digest ^ link.rotate_left(17) ^ nth);
        let mut percent = |of: &AtomicU64| {
            let p = of.load(Ordering::Relaxed);
            p > 0 && rng.random_range(0..100) < p
        };
        let (request_lost, reply_lost) = (percent(&self.loss_percent), percent(&self.loss_percent));
        let duplicated = percent(&self.duplicate_percent);
        let max = self.max_delay_ms.load(Ordering::Relaxed);
        let mut delay = || {
            std::time::Duration::from_millis(if max == 0 {
                0
            } else {
                rng.random_range(0..=max)
            })
        };
        Fate {
            request_lost,
            reply_lost,
            duplicated,
            request_delay: delay(),
            reply_delay: delay(),
        }
    }

    fn is_cut(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.cut.lock().unwrap().contains(&(from, to))
    }
}

/// Hashes with fixed keys: the same in every run.
fn stable_hash(value: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn wire<T: serde::Serialize + serde::de::DeserializeOwned>(message: &T) -> T {
    let bytes = postcard::to_allocvec(message).expect("encodes");
    postcard::from_bytes(&bytes).expect("decodes")
}

impl PeerTransport for Link {
    fn call(
        &self,
        peer: SocketAddr,
        request: Request,
    ) -> BoxFuture<'_, Result<Response, RpcError>> {
        Box::pin(async move {
            let network = &self.network;
            network.calls.fetch_add(1, Ordering::Relaxed);
            let bytes = postcard::to_allocvec(&request).expect("encodes");
            let fate = network.fate(self.from, peer, &bytes);
            if !fate.request_delay.is_zero() {
                tokio::time::sleep(fate.request_delay).await;
            }
            if network.is_cut(self.from, peer) {
                return Err(RpcError::Timeout(peer));
            }
            if fate.request_lost {
                network.lost.fetch_add(1, Ordering::Relaxed);
                return Err(RpcError::Timeout(peer));
            }
            let target = network.handlers.lock().unwrap().get(&peer).cloned();
            let (handler, clock) =
                target.ok_or(RpcError::Unreachable(peer, "no such node".into()))?;
            let caller_clock = network.clock_of(self.from);
            if let Some(caller) = &caller_clock {
                clock.observe(caller.peek());
            }
            let decode = || postcard::from_bytes::<Request>(&bytes).expect("decodes");
            if fate.duplicated {
                // The copy runs too, its reply goes nowhere.
                let (handler, copy) = (Arc::clone(&handler), decode());
                tokio::spawn(async move { handler.answer(copy).await });
                // Delivered with the original: the copy starts first, not whenever the
                // caller next happens to wait (a caller answered without waiting would
                // otherwise see its copy run after later client operations).
                tokio::task::yield_now().await;
            }
            let response = handler.answer(decode()).await;
            if !fate.reply_delay.is_zero() {
                tokio::time::sleep(fate.reply_delay).await;
            }
            // A lost reply: the peer acted, the caller cannot know.
            if network.is_cut(peer, self.from) || fate.reply_lost {
                network.lost.fetch_add(1, Ordering::Relaxed);
                return Err(RpcError::Lost(peer));
            }
            if let Some(caller) = caller_clock {
                caller.observe(clock.peek());
            }
            Ok(wire(&response))
        })
    }

    fn send_swim(&self, _peer: SocketAddr, _data: Bytes) {}
}

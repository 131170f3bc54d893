//! An in-process network for the replication core: every node's [`PeerHandler`] reachable
//! by address, requests and replies encoded and decoded as on the wire, links that can be
//! cut (a partition) and a seeded share of requests or replies lost.

use crate::cluster::peer_handler::PeerHandler;
use crate::cluster::peers::PeerTransport;
use crate::cluster::rpc::client::RpcError;
use crate::cluster::rpc::message::{Request, Response};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct FakeNetwork {
    handlers: Mutex<HashMap<SocketAddr, Arc<PeerHandler>>>,
    /// Cut links, both directions.
    cut: Mutex<HashSet<(SocketAddr, SocketAddr)>>,
    /// Percent of calls whose request (or, as often, whose reply) is lost.
    loss_percent: AtomicU64,
    rng: Mutex<StdRng>,
    pub calls: AtomicU64,
    pub lost: AtomicU64,
}

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
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
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

    pub fn attach(&self, addr: SocketAddr, handler: Arc<PeerHandler>) {
        self.handlers.lock().unwrap().insert(addr, handler);
    }

    /// Cuts every link between `side` and the rest.
    pub fn isolate(&self, side: SocketAddr, rest: &[SocketAddr]) {
        let mut cut = self.cut.lock().unwrap();
        for &other in rest.iter().filter(|&&o| o != side) {
            cut.insert((side, other));
            cut.insert((other, side));
        }
    }

    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
        self.loss_percent.store(0, Ordering::Relaxed);
    }

    pub fn set_loss(&self, percent: u64) {
        self.loss_percent.store(percent, Ordering::Relaxed);
    }

    fn is_cut(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.cut.lock().unwrap().contains(&(from, to))
    }

    fn loses(&self) -> bool {
        let percent = self.loss_percent.load(Ordering::Relaxed);
        let lost = percent > 0 && self.rng.lock().unwrap().random_range(0..100) < percent;
        if lost {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        lost
    }
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
            if network.is_cut(self.from, peer) {
                return Err(RpcError::Timeout(peer));
            }
            if network.loses() {
                return Err(RpcError::Timeout(peer));
            }
            let handler = network.handlers.lock().unwrap().get(&peer).cloned();
            let handler = handler.ok_or(RpcError::Unreachable(peer, "no such node".into()))?;
            let response = handler.answer(wire(&request)).await;
            // A lost reply: the peer acted, the caller cannot know.
            if network.is_cut(peer, self.from) || network.loses() {
                return Err(RpcError::Lost(peer));
            }
            Ok(wire(&response))
        })
    }

    fn send_swim(&self, _peer: SocketAddr, _data: Bytes) {}
}

//! The seam between the replication core and the network. Coordinator, hinted handoff,
//! anti-entropy and membership call peers only through [`Peers`], whose typed methods turn
//! replies into values or [`PeerError`]s. The real transport is the rpc [`Pool`]; tests plug
//! in an in-process network (`cluster::testing`) with partitions and message loss.

use super::error::PeerError;
use super::member::MemberRecord;
use super::rpc::client::{Pool, RpcError};
use super::rpc::message::{Request, Response};
use super::rpc::offsets::ClockOffset;
use crate::ops::{Outcome, WriteOp};
use crate::record::Versions;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;

/// Carries requests to peers and their replies back.
pub trait PeerTransport: Send + Sync + 'static {
    fn call(&self, peer: SocketAddr, request: Request)
        -> BoxFuture<'_, Result<Response, RpcError>>;
    /// One-way failure-detection datagram; dropped when the peer cannot be reached.
    fn send_swim(&self, peer: SocketAddr, data: Bytes);
    /// Each peer's clock offset as last measured (none where clocks are not measured).
    fn clock_offsets(&self) -> Vec<(SocketAddr, ClockOffset)> {
        Vec::new()
    }
}

impl PeerTransport for Arc<Pool> {
    fn call(
        &self,
        peer: SocketAddr,
        request: Request,
    ) -> BoxFuture<'_, Result<Response, RpcError>> {
        Box::pin(Pool::call(self, peer, request))
    }

    fn send_swim(&self, peer: SocketAddr, data: Bytes) {
        self.send(peer, data);
    }

    fn clock_offsets(&self) -> Vec<(SocketAddr, ClockOffset)> {
        self.offsets().all()
    }
}

/// Typed calls to other nodes.
#[derive(Clone)]
pub struct Peers(Arc<dyn PeerTransport>);

fn unexpected(peer: SocketAddr, request: &'static str) -> PeerError {
    PeerError::Unexpected { peer, request }
}

impl Peers {
    pub fn new(transport: impl PeerTransport) -> Peers {
        Peers(Arc::new(transport))
    }

    /// Any request; a peer's `Error` reply becomes [`PeerError::Refused`].
    pub async fn call(&self, peer: SocketAddr, request: Request) -> Result<Response, PeerError> {
        match self.0.call(peer, request).await? {
            Response::Error(reason) => Err(PeerError::Refused { peer, reason }),
            response => Ok(response),
        }
    }

    pub fn clock_offsets(&self) -> Vec<(SocketAddr, ClockOffset)> {
        self.0.clock_offsets()
    }

    pub fn send_swim(&self, peer: SocketAddr, data: Bytes) {
        self.0.send_swim(peer, data);
    }

    /// The peer's versions of `key` (a replica read).
    pub async fn get(&self, peer: SocketAddr, key: Bytes) -> Result<Option<Versions>, PeerError> {
        match self.call(peer, Request::Get { key }).await? {
            Response::Versions(versions) => Ok(versions),
            _ => Err(unexpected(peer, "get")),
        }
    }

    /// Stores `versions` on the peer as a replica; whether it held a live value before.
    pub async fn put(
        &self,
        peer: SocketAddr,
        key: Bytes,
        versions: Versions,
    ) -> Result<bool, PeerError> {
        match self.call(peer, Request::Put { key, versions }).await? {
            Response::Applied { had_live } => Ok(had_live),
            _ => Err(unexpected(peer, "put")),
        }
    }

    /// Asks a replica of `key` to coordinate `op`.
    pub async fn forward_write(
        &self,
        peer: SocketAddr,
        key: Bytes,
        op: WriteOp,
    ) -> Result<Outcome, PeerError> {
        match self.call(peer, Request::Write { key, op }).await? {
            Response::Outcome(outcome) => Ok(outcome),
            _ => Err(unexpected(peer, "write")),
        }
    }

    pub async fn flush(&self, peer: SocketAddr, delay: i64) -> Result<(), PeerError> {
        match self.call(peer, Request::Flush { delay }).await? {
            Response::Done(_) => Ok(()),
            _ => Err(unexpected(peer, "flush")),
        }
    }

    /// Push-pull of member lists: sends ours, returns theirs.
    pub async fn exchange_members(
        &self,
        peer: SocketAddr,
        members: Vec<MemberRecord>,
    ) -> Result<Vec<MemberRecord>, PeerError> {
        match self.call(peer, Request::Members { members }).await? {
            Response::Members(members) => Ok(members),
            _ => Err(unexpected(peer, "members")),
        }
    }

    /// The digest of every bucket the peer holds.
    pub async fn digests(&self, peer: SocketAddr) -> Result<Vec<u64>, PeerError> {
        match self.call(peer, Request::SyncDigests).await? {
            Response::Digests(digests) => Ok(digests),
            _ => Err(unexpected(peer, "sync digests")),
        }
    }

    /// Every key the peer holds in `bucket`, with its fingerprint.
    pub async fn keys(
        &self,
        peer: SocketAddr,
        bucket: u32,
    ) -> Result<Vec<(Bytes, u64)>, PeerError> {
        match self.call(peer, Request::SyncKeys { bucket }).await? {
            Response::Keys(keys) => Ok(keys),
            _ => Err(unexpected(peer, "sync keys")),
        }
    }

    /// Tells the peer these keys' tombstones were purged here.
    pub async fn forget(&self, peer: SocketAddr, keys: Vec<Bytes>) -> Result<(), PeerError> {
        match self.call(peer, Request::SyncForget { keys }).await? {
            Response::Done(_) => Ok(()),
            _ => Err(unexpected(peer, "sync forget")),
        }
    }
}

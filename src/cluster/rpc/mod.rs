//! Node-to-node RPC (docs/design.md, "Cluster"): length-prefixed postcard frames over TCP
//! (or TLS), a handshake that proves the cluster secret, a pipelined client pool and the
//! server.

pub mod auth;
pub mod client;
pub mod frame;
pub mod message;
pub mod offsets;
pub mod server;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod v3;
mod wire;

use crate::time::HybridClock;
use futures_util::{Sink, SinkExt};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What both ends of a connection need to know.
#[derive(Debug)]
pub struct RpcSettings {
    pub secret: auth::Secret,
    pub cluster: String,
    /// This node's "host:port" rpc address, announced in the handshake.
    pub node: String,
    pub timeout: Duration,
    pub max_connections: usize,
    /// Source address of outgoing connections: the node's own address, so peers (and
    /// firewalls) see connections coming from the node they name.
    pub bind: Option<IpAddr>,
    /// This node's hybrid clock: its wall clock times the deadlines, its reading rides on
    /// every request and reply.
    pub clock: Arc<HybridClock>,
    /// Peer clock offsets above this are logged as warnings.
    pub max_clock_skew: Duration,
    /// The protocols this node speaks and what handshakes tell of each peer's build.
    pub upgrade: Arc<crate::cluster::upgrade::Upgrade>,
    /// `[rpc] tls`: what this node accepts and how it dials.
    pub tls: tls::PeerTls,
}

/// Writes what `queue` delivers to `sink`, batching whatever is ready into one flush (one
/// syscall under load). Ends when the queue closes or the connection fails. Both the
/// client pool and the server run one per connection.
///
/// What `urgent` delivers (the failure detector's datagrams) goes ahead of the queue: a
/// probe waiting behind a burst of replica writes would miss its round trip, and a node
/// that is only busy would be suspected and declared down.
async fn write_batched<S>(
    mut sink: S,
    mut queue: mpsc::Receiver<message::Message>,
    mut urgent: Option<mpsc::Receiver<message::Message>>,
) where
    S: Sink<message::Message> + Unpin,
{
    loop {
        let first = match urgent.as_mut() {
            Some(urgent) => tokio::select! {
                biased;
                Some(message) = urgent.recv() => Some(message),
                message = queue.recv() => message,
            },
            None => queue.recv().await,
        };
        let Some(first) = first else {
            return;
        };
        if sink.feed(first).await.is_err() {
            return;
        }
        // Let the tasks already runnable (other clients' requests, the rest of a read
        // batch) queue their messages first, so one write carries them all.
        tokio::task::yield_now().await;
        while let Some(message) = urgent.as_mut().and_then(|u| u.try_recv().ok()) {
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        while let Ok(message) = queue.try_recv() {
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

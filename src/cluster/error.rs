//! The cluster's failures as values: what a peer call and a quorum operation can end in.
//! Quorum failures carry their counts, so they are counted in `stats` and a client's
//! `SERVER_ERROR` line says how far the operation got.

use super::rpc::client::RpcError;
use crate::store::StoreError;
use std::fmt;
use std::net::SocketAddr;

/// A call to one peer that did not give the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// The peer answered with an error of its own (a late request, a store failure, a
    /// failed quorum when it coordinated a forwarded write).
    #[error("{peer}: {reason}")]
    Refused { peer: SocketAddr, reason: String },
    #[error("{peer}: unexpected reply to {request}")]
    Unexpected {
        peer: SocketAddr,
        request: &'static str,
    },
}

impl PeerError {
    /// The request surely never reached the peer: trying another one is safe for any op.
    pub fn not_delivered(&self) -> bool {
        matches!(
            self,
            PeerError::Rpc(RpcError::Unreachable(..) | RpcError::Older(..))
        )
    }

    /// The connection broke with the request in flight: it may or may not have run.
    pub fn lost(&self) -> bool {
        matches!(self, PeerError::Rpc(RpcError::Lost(_)))
    }
}

/// Which quorum an operation waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuorumKind {
    Read,
    Write,
}

impl fmt::Display for QuorumKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuorumKind::Read => "read",
            QuorumKind::Write => "write",
        })
    }
}

/// The peers that failed an operation, shown as "peer: reason, …".
#[derive(Debug, Default)]
pub struct Failures(pub Vec<PeerError>);

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Too few replicas are up to even try.
    #[error("{kind} quorum unavailable: {up} of {needed} replicas up")]
    Unavailable {
        kind: QuorumKind,
        up: usize,
        needed: usize,
    },
    #[error("read quorum not reached: {replies} of {needed} replies ({failures})")]
    ReadQuorum {
        replies: usize,
        needed: usize,
        failures: Failures,
    },
    #[error("write quorum not reached: {acks} of {needed} acknowledgements ({failures})")]
    WriteQuorum {
        acks: usize,
        needed: usize,
        failures: Failures,
    },
    #[error("no replica of this key is up")]
    NoReplicaUp,
    /// The replica this write was forwarded to could not coordinate it.
    #[error("forwarding failed: {0}")]
    Forward(PeerError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

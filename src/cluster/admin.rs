//! The operator's view and commands: `kai cluster join|leave|remove|digests` arrive here
//! over rpc, `kai cluster status` and `stats cluster` read the member table.

use super::coordinator::Coordinator;
use super::placement;
use crate::address::resolve;
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Resolve(#[from] crate::address::ResolveError),
    #[error(transparent)]
    Membership(#[from] super::membership::MembershipError),
    #[error("{0:?} is not a host:port rpc address")]
    BadAddress(String),
    #[error("cannot reach {peer}: {source}")]
    Unreachable {
        peer: SocketAddr,
        source: super::error::PeerError,
    },
}

impl Coordinator {
    /// Joins through `seed` (one of this node's seeds, or `kai cluster join`).
    pub async fn join(&self, seed: &str) -> Result<(), AdminError> {
        let addr = resolve(seed)?;
        self.membership.rejoin();
        (self.membership.exchange(&self.peers, addr).await)
            .map_err(|source| AdminError::Unreachable { peer: addr, source })
    }

    /// This node leaves: every member hears it at once.
    pub async fn leave(&self) -> Result<(), AdminError> {
        self.membership.retire(self.me)?;
        self.push_members(None).await;
        Ok(())
    }

    /// Removes `node` from the cluster (it hears it too, if it is still running).
    pub async fn remove(&self, node: &str) -> Result<SocketAddr, AdminError> {
        let addr = (node.parse::<SocketAddr>()).map_err(|_| AdminError::BadAddress(node.into()))?;
        self.membership.retire(addr)?;
        self.push_members(Some(addr)).await;
        Ok(addr)
    }

    /// Tells every member (and `also`) about a membership change right away.
    async fn push_members(&self, also: Option<SocketAddr>) {
        let calls: FuturesUnordered<_> = (self.membership.active().into_iter())
            .chain(also)
            .filter(|&m| m != self.me)
            .map(|member| async move { self.membership.exchange(&self.peers, member).await })
            .collect();
        let _: Vec<_> = calls.collect().await;
    }

    /// `kai cluster digests`: "bucket digest keys" for every bucket this node owns.
    pub fn digest_report(&self) -> String {
        let ring = self.membership.ring();
        let digests = self.replica.store().digests();
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
        let owned = placement::owned_buckets(&self.membership.ring(), self.replicas());
        let offsets: std::collections::HashMap<_, _> =
            self.peers.clock_offsets().into_iter().collect();
        (self.membership.records().into_iter())
            .map(|record| {
                let clock = match offsets.get(&record.addr) {
                    _ if record.addr == self.me => String::new(),
                    Some(o) => format!(" clock_offset_ms={:+}", o.offset_us / 1000),
                    None => " clock_offset_ms=unmeasured".to_string(),
                };
                let state = if record.left {
                    "left"
                } else {
                    self.membership.liveness(record.addr).name()
                };
                format!(
                    "{} {state} buckets={} hints={}{clock}{}",
                    record.addr,
                    owned.get(&record.addr).copied().unwrap_or(0),
                    self.hints.count_for(record.addr),
                    if record.addr == self.me { " self" } else { "" }
                )
            })
            .collect()
    }
}

//! The cluster (docs/design.md, "Cluster"): ring and placement as pure code, membership and
//! failure detection, node-to-node rpc behind the [`peers::Peers`] seam, and the replication
//! core over it: replica apply, the quorum coordinator, hinted handoff, anti-entropy, the
//! peer request handler and the operator commands.

pub mod admin;
pub mod anti_entropy;
pub mod coordinator;
pub mod counters;
pub mod error;
pub mod fast_map;
pub mod handoff;
pub mod hints;
pub mod member;
pub mod membership;
pub mod peer_handler;
pub mod peers;
pub mod placement;
pub mod replica;
pub mod ring;
pub mod rpc;
#[cfg(test)]
mod tests;
pub mod upgrade;

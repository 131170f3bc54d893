//! The cluster (DESIGN §6): ring, membership and failure detection, node-to-node rpc, the
//! quorum coordinator with hinted handoff, anti-entropy and ownership handoff.

pub mod coordinator;
pub mod hints;
pub mod membership;
pub mod ring;
pub mod rpc;
pub mod sync;

//! The cluster: the consistent-hash ring today; membership, RPC, the coordinator and
//! anti-entropy land here next (DESIGN §2).

pub mod ring;
pub mod rpc;

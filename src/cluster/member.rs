//! What every node records about a member, and what failure detection says of it. Shared
//! by membership (which keeps the list) and the rpc messages (which carry it).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// One member as every node records it. Of two records for one address, the higher
/// generation wins; at equal generations, `left` wins (a removal is never undone by a
/// stale copy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub addr: SocketAddr,
    pub generation: u64,
    pub left: bool,
    /// `[node] zone`: a changed zone comes with a new generation. None from a node that
    /// declares none, and from release 0.1.0, which cannot carry it.
    pub zone: Option<String>,
}

impl MemberRecord {
    pub fn supersedes(&self, other: &MemberRecord) -> bool {
        (self.generation, self.left) > (other.generation, other.left)
    }

    /// Newer than `other`, or the same record with the zone a 0.1.0 relay dropped.
    pub fn improves_on(&self, other: &MemberRecord) -> bool {
        self.supersedes(other)
            || ((self.generation, self.left) == (other.generation, other.left)
                && other.zone.is_none()
                && self.zone.is_some())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Up,
    Suspect,
    Down,
}

impl Liveness {
    pub fn name(self) -> &'static str {
        match self {
            Liveness::Up => "up",
            Liveness::Suspect => "suspect",
            Liveness::Down => "down",
        }
    }
}

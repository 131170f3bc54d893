//! Everything nodes say to each other. One enum travels in every frame; before the
//! handshake completes only the handshake variants are accepted.

use crate::cluster::member::MemberRecord;
use crate::ops::{Outcome, WriteOp};
use crate::record::Versions;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::cluster::upgrade::{Build, OLDEST_PEER_PROTOCOL, PEER_PROTOCOL};

pub type Nonce = [u8; 32];
pub type Proof = [u8; 32];

#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// Client → server: who I am, which cluster, and a fresh challenge for the server.
    Hello {
        /// The oldest protocol the client speaks (release 0.1.0 sent its only one and
        /// refuses any other, so a client that still speaks 3 offers 3 here).
        protocol: u32,
        cluster: String,
        node: String,
        nonce: Nonce,
        /// Sent after the 0.1.0 layout, which 0.1.0 ignores; None from 0.1.0.
        build: Option<Build>,
    },
    /// Server → client: the server's proof of the secret and a fresh challenge back, with
    /// the server's wall clock (Unix µs): the client's first measure of the clock offset.
    Challenge {
        nonce: Nonce,
        proof: Proof,
        now_us: u64,
        /// The protocol the connection speaks from now on (0.1.0: its only one, 3).
        protocol: u32,
        /// Sent after the 0.1.0 layout; None from 0.1.0.
        build: Option<Build>,
    },
    /// Client → server: the client's proof of the secret.
    Proof {
        proof: Proof,
    },
    Welcome,
    Refused {
        reason: String,
    },
    Request {
        id: u64,
        /// When the sender gives up, in Unix µs on the *receiver's* clock (the sender's clock
        /// corrected by the offset it measured): a request held up by a partition and
        /// delivered late by TCP must not run (a late forwarded write would supersede writes
        /// acknowledged since), whatever the two wall clocks say.
        deadline_us: u64,
        /// The sender's hybrid clock (docs/design.md, "Last write wins").
        hlc: u64,
        body: Request,
    },
    Response {
        id: u64,
        /// The responder's wall clock when it answered (Unix µs): a clock-offset sample.
        now_us: u64,
        hlc: u64,
        body: Response,
    },
    /// SWIM traffic (foca's own encoding); one-way, no reply. Its hybrid clock reading
    /// keeps every node's clock within a probe period of the others'.
    Swim {
        hlc: u64,
        data: Bytes,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// This node's versions of a key (replica read, and `kai cluster inspect`).
    Get {
        key: Bytes,
    },
    /// Store these versions as a replica: a write, a read repair or a hinted handoff.
    Put {
        key: Bytes,
        versions: Versions,
    },
    /// Coordinate this write (the sender is not one of the key's replicas).
    Write {
        key: Bytes,
        op: WriteOp,
    },
    /// Anti-entropy: the digest of every bucket this node holds.
    SyncDigests,
    /// Anti-entropy: every key this node holds in `bucket`, with its fingerprint.
    SyncKeys {
        bucket: u32,
    },
    /// Anti-entropy: the sender purged these keys' tombstones; drop them if due here too.
    SyncForget {
        keys: Vec<Bytes>,
    },
    /// `flush_all` seen by another node.
    Flush {
        delay: i64,
    },
    /// Push-pull exchange of member lists (also how a node joins).
    Members {
        members: Vec<MemberRecord>,
    },
    /// Operator commands, sent by `kai cluster …` to the local node.
    AdminJoin {
        seed: String,
    },
    AdminLeave,
    /// `kai cluster digests`: the digest of each bucket this node owns.
    AdminDigests,
    AdminRemove {
        node: String,
    },
    /// `kai store backup`: a page of this node's keys with ring hash in `low..=high`,
    /// after key `after` (see `Coordinator::backup_page`).
    AdminBackup {
        low: u32,
        high: u32,
        after: Option<Bytes>,
    },
    /// `kai cluster finalize`, sent to the local node.
    AdminFinalize,
    /// The operator finalised `protocol`: persist it, stop speaking older ones.
    Finalize {
        protocol: u32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Versions(Option<Versions>),
    /// Put applied; whether a live value was there before.
    Applied {
        had_live: bool,
    },
    Outcome(Outcome),
    Members(Vec<MemberRecord>),
    Digests(Vec<u64>),
    Keys(Vec<(Bytes, u64)>),
    /// A backup page: keys with every version; `more` when the range continues.
    Backup {
        entries: Vec<(Bytes, Versions)>,
        more: bool,
    },
    Done(String),
    Error(String),
}

//! Peer protocol 3, release 0.1.0's, kept so a cluster can be upgraded one node at a time:
//! the message layout that release sends and expects, and the conversions to and from the
//! current messages. What protocol 3 cannot say (meta's recache state, cas guards beyond
//! text `cas`, vivifying counters) is either dropped where that is harmless (a record's
//! `stale` and `recache_claimed`) or refused before it is sent ([`expressible`]).

use super::message::{Message, Nonce, Proof, Request, Response};
use crate::cluster::member::MemberRecord;
use crate::ops::{ArithOutcome, DeleteOutcome, Outcome, StoreMode, StoreOutcome, WriteOp};
use crate::record::format::RecordV1;
use crate::record::{Record, Versions};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub const PROTOCOL: u32 = 3;

#[derive(Debug, Serialize, Deserialize)]
pub enum Message3 {
    Hello {
        protocol: u32,
        cluster: String,
        node: String,
        nonce: Nonce,
    },
    Challenge {
        nonce: Nonce,
        proof: Proof,
        now_us: u64,
    },
    Proof {
        proof: Proof,
    },
    Welcome,
    Refused {
        reason: String,
    },
    Request {
        id: u64,
        deadline_us: u64,
        hlc: u64,
        body: Request3,
    },
    Response {
        id: u64,
        now_us: u64,
        hlc: u64,
        body: Response3,
    },
    Swim {
        hlc: u64,
        data: Bytes,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request3 {
    Get { key: Bytes },
    Put { key: Bytes, versions: Vec<RecordV1> },
    Write { key: Bytes, op: WriteOp3 },
    SyncDigests,
    SyncKeys { bucket: u32 },
    SyncForget { keys: Vec<Bytes> },
    Flush { delay: i64 },
    Members { members: Vec<MemberRecord3> },
    AdminJoin { seed: String },
    AdminLeave,
    AdminDigests,
    AdminRemove { node: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response3 {
    Versions(Option<Vec<RecordV1>>),
    Applied { had_live: bool },
    Outcome(Outcome3),
    Members(Vec<MemberRecord3>),
    Digests(Vec<u64>),
    Keys(Vec<(Bytes, u64)>),
    Done(String),
    Error(String),
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum StoreMode3 {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas(u64),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WriteOp3 {
    Store {
        mode: StoreMode3,
        flags: u32,
        expires_at: u64,
        data: Bytes,
    },
    Delete,
    Arith {
        incr: bool,
        delta: u64,
    },
    Touch {
        expires_at: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ArithOutcome3 {
    Value(u64),
    NotFound,
    NonNumeric,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome3 {
    Store(StoreOutcome),
    Deleted(bool),
    Arith(ArithOutcome3),
    Touched(Option<RecordV1>),
}

/// Why a message cannot be sent to a protocol-3 peer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a peer on protocol 3 (release 0.1.0) cannot {0}; it can once every member is upgraded")]
pub struct Inexpressible(pub &'static str);

/// Whether `request` can be sent to a protocol-3 peer (checked before sending, so a
/// connection never breaks on a message it cannot encode).
pub fn expressible(request: &Request) -> Result<(), Inexpressible> {
    match request {
        Request::Write { op, .. } => write_op(op.clone()).map(|_| ()),
        Request::AdminFinalize | Request::Finalize { .. } => {
            Err(Inexpressible("take part in finalising an upgrade"))
        }
        _ => Ok(()),
    }
}

fn record_v1(record: Record) -> RecordV1 {
    RecordV1 {
        value: record.value,
        flags: record.flags,
        expires_at: record.expires_at,
        timestamp: record.timestamp,
        clock: record.clock,
        tombstone: record.tombstone,
    }
}

fn versions_v1(versions: Versions) -> Vec<RecordV1> {
    versions.0.into_iter().map(record_v1).collect()
}

fn versions(records: Vec<RecordV1>) -> Versions {
    Versions(records.into_iter().map(Record::from).collect())
}

fn write_op(op: WriteOp) -> Result<WriteOp3, Inexpressible> {
    Ok(match op {
        WriteOp::Store {
            mode,
            cas,
            stale_if_older: false,
            flags,
            expires_at,
            data,
        } => {
            let mode = match (mode, cas) {
                (StoreMode::Set, Some(unique)) => StoreMode3::Cas(unique),
                (_, Some(_)) => return Err(Inexpressible("guard this store with a cas")),
                (StoreMode::Set, None) => StoreMode3::Set,
                (StoreMode::Add, None) => StoreMode3::Add,
                (StoreMode::Replace, None) => StoreMode3::Replace,
                (StoreMode::Append, None) => StoreMode3::Append,
                (StoreMode::Prepend, None) => StoreMode3::Prepend,
            };
            WriteOp3::Store {
                mode,
                flags,
                expires_at,
                data,
            }
        }
        WriteOp::Store { .. } => return Err(Inexpressible("store a stale version (ms I)")),
        WriteOp::Delete { cas: None } => WriteOp3::Delete,
        WriteOp::Delete { cas: Some(_) } => return Err(Inexpressible("guard a delete with a cas")),
        WriteOp::Arith {
            incr,
            delta,
            cas: None,
            vivify: None,
            touch: None,
        } => WriteOp3::Arith { incr, delta },
        WriteOp::Arith { .. } => {
            return Err(Inexpressible(
                "run an incr/decr with a cas, an initial value or a new expiry",
            ))
        }
        WriteOp::Touch { expires_at } => WriteOp3::Touch { expires_at },
        WriteOp::Invalidate { .. } => return Err(Inexpressible("invalidate a key (md I)")),
        WriteOp::Fetch { .. } => {
            return Err(Inexpressible(
                "touch, vivify or claim a key from a meta get",
            ))
        }
    })
}

fn from_write_op(op: WriteOp3) -> WriteOp {
    match op {
        WriteOp3::Store {
            mode,
            flags,
            expires_at,
            data,
        } => {
            let (mode, cas) = match mode {
                StoreMode3::Set => (StoreMode::Set, None),
                StoreMode3::Add => (StoreMode::Add, None),
                StoreMode3::Replace => (StoreMode::Replace, None),
                StoreMode3::Append => (StoreMode::Append, None),
                StoreMode3::Prepend => (StoreMode::Prepend, None),
                StoreMode3::Cas(unique) => (StoreMode::Set, Some(unique)),
            };
            WriteOp::Store {
                mode,
                cas,
                stale_if_older: false,
                flags,
                expires_at,
                data,
            }
        }
        WriteOp3::Delete => WriteOp::Delete { cas: None },
        WriteOp3::Arith { incr, delta } => WriteOp::Arith {
            incr,
            delta,
            cas: None,
            vivify: None,
            touch: None,
        },
        WriteOp3::Touch { expires_at } => WriteOp::Touch { expires_at },
    }
}

/// The answer to a protocol-3 peer's forwarded write. Only text-protocol writes arrive
/// from one, so the outcomes protocol 3 lacks (cas mismatches, meta fetches) cannot occur;
/// they map to the nearest miss rather than a panic.
fn outcome_v3(outcome: Outcome) -> Outcome3 {
    match outcome {
        Outcome::Store(outcome, _) => Outcome3::Store(outcome),
        Outcome::Deleted(deleted) => Outcome3::Deleted(deleted == DeleteOutcome::Deleted),
        Outcome::Arith { outcome, .. } => Outcome3::Arith(match outcome {
            ArithOutcome::Value(value) => ArithOutcome3::Value(value),
            ArithOutcome::NonNumeric => ArithOutcome3::NonNumeric,
            ArithOutcome::NotFound | ArithOutcome::Exists => ArithOutcome3::NotFound,
        }),
        Outcome::Touched(record) => Outcome3::Touched(record.map(record_v1)),
        Outcome::Fetched(fetched) => Outcome3::Touched(fetched.record.map(record_v1)),
    }
}

/// A protocol-3 coordinator's answer. It does not return the cas unique it stored, so a
/// binary or meta client of this node is told 0 (no cas) for that write.
fn outcome(outcome: Outcome3) -> Outcome {
    match outcome {
        Outcome3::Store(outcome) => Outcome::Store(outcome, 0),
        Outcome3::Deleted(true) => Outcome::Deleted(DeleteOutcome::Deleted),
        Outcome3::Deleted(false) => Outcome::Deleted(DeleteOutcome::NotFound),
        Outcome3::Arith(arith) => Outcome::Arith {
            outcome: match arith {
                ArithOutcome3::Value(value) => ArithOutcome::Value(value),
                ArithOutcome3::NotFound => ArithOutcome::NotFound,
                ArithOutcome3::NonNumeric => ArithOutcome::NonNumeric,
            },
            cas: 0,
            expires_at: 0,
        },
        Outcome3::Touched(record) => Outcome::Touched(record.map(Record::from)),
    }
}

fn request_v3(request: Request) -> Result<Request3, Inexpressible> {
    Ok(match request {
        Request::Get { key } => Request3::Get { key },
        Request::Put { key, versions } => Request3::Put {
            key,
            versions: versions_v1(versions),
        },
        Request::Write { key, op } => Request3::Write {
            key,
            op: write_op(op)?,
        },
        Request::SyncDigests => Request3::SyncDigests,
        Request::SyncKeys { bucket } => Request3::SyncKeys { bucket },
        Request::SyncForget { keys } => Request3::SyncForget { keys },
        Request::Flush { delay } => Request3::Flush { delay },
        Request::Members { members: m } => Request3::Members {
            members: members_v3(m),
        },
        Request::AdminJoin { seed } => Request3::AdminJoin { seed },
        Request::AdminLeave => Request3::AdminLeave,
        Request::AdminDigests => Request3::AdminDigests,
        Request::AdminRemove { node } => Request3::AdminRemove { node },
        Request::AdminFinalize | Request::Finalize { .. } => {
            return Err(Inexpressible("take part in finalising an upgrade"))
        }
        Request::AdminBackup { .. } => return Err(Inexpressible("be backed up")),
    })
}

fn request(request: Request3) -> Request {
    match request {
        Request3::Get { key } => Request::Get { key },
        Request3::Put { key, versions: v } => Request::Put {
            key,
            versions: versions(v),
        },
        Request3::Write { key, op } => Request::Write {
            key,
            op: from_write_op(op),
        },
        Request3::SyncDigests => Request::SyncDigests,
        Request3::SyncKeys { bucket } => Request::SyncKeys { bucket },
        Request3::SyncForget { keys } => Request::SyncForget { keys },
        Request3::Flush { delay } => Request::Flush { delay },
        Request3::Members { members: m } => Request::Members {
            members: members(m),
        },
        Request3::AdminJoin { seed } => Request::AdminJoin { seed },
        Request3::AdminLeave => Request::AdminLeave,
        Request3::AdminDigests => Request::AdminDigests,
        Request3::AdminRemove { node } => Request::AdminRemove { node },
    }
}

/// A member as release 0.1.0 records it: no zone.
#[derive(Debug, Serialize, Deserialize)]
pub struct MemberRecord3 {
    addr: std::net::SocketAddr,
    generation: u64,
    left: bool,
}

fn members_v3(members: Vec<MemberRecord>) -> Vec<MemberRecord3> {
    (members.into_iter())
        .map(|m| MemberRecord3 {
            addr: m.addr,
            generation: m.generation,
            left: m.left,
        })
        .collect()
}

fn members(members: Vec<MemberRecord3>) -> Vec<MemberRecord> {
    (members.into_iter())
        .map(|m| MemberRecord {
            addr: m.addr,
            generation: m.generation,
            left: m.left,
            zone: None,
        })
        .collect()
}

fn response_v3(response: Response) -> Response3 {
    match response {
        Response::Versions(v) => Response3::Versions(v.map(versions_v1)),
        Response::Applied { had_live } => Response3::Applied { had_live },
        Response::Outcome(o) => Response3::Outcome(outcome_v3(o)),
        Response::Members(m) => Response3::Members(members_v3(m)),
        Response::Digests(digests) => Response3::Digests(digests),
        Response::Keys(keys) => Response3::Keys(keys),
        Response::Backup { .. } => Response3::Error("a backup needs peer protocol 4".into()),
        Response::Done(text) => Response3::Done(text),
        Response::Error(text) => Response3::Error(text),
    }
}

fn response(response: Response3) -> Response {
    match response {
        Response3::Versions(v) => Response::Versions(v.map(versions)),
        Response3::Applied { had_live } => Response::Applied { had_live },
        Response3::Outcome(o) => Response::Outcome(outcome(o)),
        Response3::Members(m) => Response::Members(members(m)),
        Response3::Digests(digests) => Response::Digests(digests),
        Response3::Keys(keys) => Response::Keys(keys),
        Response3::Done(text) => Response::Done(text),
        Response3::Error(text) => Response::Error(text),
    }
}

/// The current message in protocol 3's layout (the handshake's extensions are left off;
/// `wire` appends them).
pub fn to_v3(message: Message) -> Result<Message3, Inexpressible> {
    Ok(match message {
        Message::Hello {
            protocol,
            cluster,
            node,
            nonce,
            build: _,
        } => Message3::Hello {
            protocol,
            cluster,
            node,
            nonce,
        },
        Message::Challenge {
            nonce,
            proof,
            now_us,
            ..
        } => Message3::Challenge {
            nonce,
            proof,
            now_us,
        },
        Message::Proof { proof } => Message3::Proof { proof },
        Message::Welcome => Message3::Welcome,
        Message::Refused { reason } => Message3::Refused { reason },
        Message::Request {
            id,
            deadline_us,
            hlc,
            body,
        } => Message3::Request {
            id,
            deadline_us,
            hlc,
            body: request_v3(body)?,
        },
        Message::Response {
            id,
            now_us,
            hlc,
            body,
        } => Message3::Response {
            id,
            now_us,
            hlc,
            body: response_v3(body),
        },
        Message::Swim { hlc, data } => Message3::Swim { hlc, data },
    })
}

pub fn from_v3(message: Message3) -> Message {
    match message {
        Message3::Hello {
            protocol,
            cluster,
            node,
            nonce,
        } => Message::Hello {
            protocol,
            cluster,
            node,
            nonce,
            build: None,
        },
        Message3::Challenge {
            nonce,
            proof,
            now_us,
        } => Message::Challenge {
            nonce,
            proof,
            now_us,
            protocol: PROTOCOL,
            build: None,
        },
        Message3::Proof { proof } => Message::Proof { proof },
        Message3::Welcome => Message::Welcome,
        Message3::Refused { reason } => Message::Refused { reason },
        Message3::Request {
            id,
            deadline_us,
            hlc,
            body,
        } => Message::Request {
            id,
            deadline_us,
            hlc,
            body: request(body),
        },
        Message3::Response {
            id,
            now_us,
            hlc,
            body,
        } => Message::Response {
            id,
            now_us,
            hlc,
            body: response(body),
        },
        Message3::Swim { hlc, data } => Message::Swim { hlc, data },
    }
}

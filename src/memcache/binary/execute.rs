//! Runs one binary request against the node and encodes its response packets. The same
//! node operations serve text and binary, so quorum, forwarding, siblings and stats do not
//! depend on the protocol.
//!
//! Quiet commands answer only their errors (and quiet gets only their hits); the connection
//! writes whatever a batch produced at once, so a run of GetKQ ended by a Noop costs one
//! write, as in memcached.

use super::frame::{Header, Request, Status, RESPONSE_MAGIC};
use crate::memcache::auth::{self, Auth};
use crate::memcache::execute::Flow;
use crate::node::{
    ArithOutcome, DeleteOutcome, Item, Node, NodeError, StatsSection, StoreOutcome, StoreRequest,
    SERVER_VERSION,
};
use crate::ops::StoreMode;
use std::net::SocketAddr;
use std::sync::Arc;

/// Appends one response packet for `request`.
pub fn respond(
    out: &mut Vec<u8>,
    request: &Header,
    status: Status,
    cas: u64,
    (extras, key, value): (&[u8], &[u8], &[u8]),
) {
    let body = extras.len() + key.len() + value.len();
    out.extend_from_slice(&[RESPONSE_MAGIC, request.opcode]);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(&[extras.len() as u8, 0]);
    out.extend_from_slice(&(status as u16).to_be_bytes());
    out.extend_from_slice(&(body as u32).to_be_bytes());
    out.extend_from_slice(&request.opaque.to_be_bytes());
    out.extend_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// An error packet with memcached's text for `status`.
pub fn error(out: &mut Vec<u8>, request: &Header, status: Status) {
    respond(
        out,
        request,
        status,
        0,
        (&[], &[], status.message().as_bytes()),
    );
}

fn success(out: &mut Vec<u8>, request: &Header, cas: u64, value: &[u8]) {
    respond(out, request, Status::Success, cas, (&[], &[], value));
}

/// What a binary connection knows about its client.
pub struct Session<'a> {
    pub node: &'a Arc<Node>,
    pub auth: &'a Auth,
    pub authenticated: &'a mut bool,
    pub peer: SocketAddr,
}

impl Session<'_> {
    /// Whether `opcode` may run now: with authentication on, only the SASL commands and
    /// Version run before a successful login.
    pub fn admits(&self, opcode: u8) -> bool {
        use super::frame::opcode::*;
        *self.authenticated || matches!(opcode, SASL_LIST_MECHS | SASL_AUTH | SASL_STEP | VERSION)
    }
}

/// Runs `request`, appending its response packets to `out`.
pub async fn execute(
    header: &Header,
    request: Request<'_>,
    session: &mut Session<'_>,
    out: &mut Vec<u8>,
) -> Flow {
    let start = out.len();
    match run(header, request, session, out).await {
        Ok(flow) => flow,
        Err(failure) => {
            // The node could not serve it: the reason goes in the body, as text does.
            out.truncate(start);
            let status = match failure {
                NodeError::Cluster(_) | NodeError::NotJoined => Status::TemporaryFailure,
                NodeError::Store(_) | NodeError::UnexpectedOutcome(_) => Status::InternalError,
            };
            let reason = failure.to_string();
            respond(out, header, status, 0, (&[], &[], reason.as_bytes()));
            Flow::Continue
        }
    }
}

fn hit(out: &mut Vec<u8>, header: &Header, item: &Item, key: &[u8], value: bool) {
    let value: &[u8] = if value { &item.value } else { &[] };
    let flags = item.flags.to_be_bytes();
    respond(out, header, Status::Success, item.cas, (&flags, key, value));
}

/// A miss: a keyed get answers with its key and no text, the others with "Not found".
fn miss(out: &mut Vec<u8>, header: &Header, key: Option<&[u8]>) {
    match key {
        Some(key) => respond(out, header, Status::KeyNotFound, 0, (&[], key, &[])),
        None => error(out, header, Status::KeyNotFound),
    }
}

async fn run(
    header: &Header,
    request: Request<'_>,
    session: &mut Session<'_>,
    out: &mut Vec<u8>,
) -> Result<Flow, NodeError> {
    let node = session.node;
    let guard = (header.cas != 0).then_some(header.cas);
    match request {
        Request::Get {
            key,
            touch,
            quiet,
            with_key,
        } => {
            let shown_key = if with_key { key } else { &[] };
            match node.get_one(key, touch.map(i64::from)).await? {
                Some(item) => hit(out, header, &item, shown_key, true),
                None if quiet => {}
                None => miss(out, header, with_key.then_some(key)),
            }
        }
        Request::Touch { key, exptime } => match node.touch(key, i64::from(exptime)).await? {
            Some(item) => hit(out, header, &item, &[], false),
            None => miss(out, header, None),
        },
        Request::Store {
            mode,
            key,
            flags,
            exptime,
            value,
            quiet,
        } => {
            // memcached turns an add or replace that carries a cas into a cas (a guarded set).
            let mode = match (mode, guard) {
                (StoreMode::Add | StoreMode::Replace, Some(_)) => StoreMode::Set,
                (mode, _) => mode,
            };
            let exptime = i64::from(exptime);
            let request = StoreRequest {
                mode,
                cas: guard,
                stale_if_older: false,
                flags,
                exptime,
                data: value,
            };
            let (outcome, cas) = node.store_item(key, request).await?;
            let status = match (outcome, mode) {
                (StoreOutcome::Stored, _) => Status::Success,
                (StoreOutcome::Exists, _) | (StoreOutcome::NotStored, StoreMode::Add) => {
                    Status::KeyExists
                }
                (StoreOutcome::NotFound, _) | (StoreOutcome::NotStored, StoreMode::Replace) => {
                    Status::KeyNotFound
                }
                (StoreOutcome::NotStored, _) => Status::NotStored,
            };
            match status {
                Status::Success if quiet => {}
                Status::Success => success(out, header, cas, &[]),
                status => error(out, header, status),
            }
        }
        Request::Delete { key, quiet } => match node.delete(key, guard).await? {
            DeleteOutcome::Deleted if quiet => {}
            DeleteOutcome::Deleted => success(out, header, 0, &[]),
            DeleteOutcome::NotFound => error(out, header, Status::KeyNotFound),
            DeleteOutcome::Exists => error(out, header, Status::KeyExists),
        },
        Request::Arith {
            incr,
            key,
            delta,
            initial,
            exptime,
            quiet,
        } => {
            let vivify = (exptime != u32::MAX).then_some((initial, i64::from(exptime)));
            let counted = node.arith(key, incr, delta, guard, vivify, None).await?;
            match counted.outcome {
                ArithOutcome::Value(_) if quiet => {}
                ArithOutcome::Value(n) => success(out, header, counted.cas, &n.to_be_bytes()),
                ArithOutcome::NotFound => error(out, header, Status::KeyNotFound),
                ArithOutcome::NonNumeric => error(out, header, Status::NonNumeric),
                ArithOutcome::Exists => error(out, header, Status::KeyExists),
            }
        }
        Request::Quit { quiet } => {
            if !quiet {
                success(out, header, 0, &[]);
            }
            return Ok(Flow::Close);
        }
        Request::Flush { delay, quiet } => {
            node.flush_all(i64::from(delay)).await;
            if !quiet {
                success(out, header, 0, &[]);
            }
        }
        Request::Noop => success(out, header, 0, &[]),
        Request::Version => success(out, header, 0, SERVER_VERSION.as_bytes()),
        Request::Stat { group } => {
            let section = match group {
                b"" => Some(StatsSection::General),
                name => StatsSection::named(name),
            };
            let Some(section) = section else {
                error(out, header, Status::KeyNotFound);
                return Ok(Flow::Continue);
            };
            for (name, value) in node.stats(section) {
                let (name, value) = (name.as_bytes(), value.as_bytes());
                respond(out, header, Status::Success, 0, (&[], name, value));
            }
            success(out, header, 0, &[]);
        }
        Request::SaslListMechanisms if session.auth.enabled() => {
            success(out, header, 0, auth::MECHANISMS.as_bytes());
        }
        Request::SaslAuth { mechanism, data } if session.auth.enabled() => {
            let credentials = (mechanism == auth::MECHANISMS.as_bytes())
                .then(|| auth::plain_credentials(data))
                .flatten();
            let user = credentials.map(|(user, _)| user);
            let accepted = credentials.is_some_and(|(user, pw)| session.auth.check(user, pw));
            auth::record_login(node, accepted, user.unwrap_or_default(), session.peer);
            if accepted {
                *session.authenticated = true;
                success(out, header, 0, b"Authenticated");
            } else {
                error(out, header, Status::AuthError);
            }
        }
        Request::SaslStep { .. } if session.auth.enabled() => {
            // PLAIN completes in one step: a step is always out of place.
            auth::record_login(node, false, b"", session.peer);
            error(out, header, Status::AuthError);
        }
        // Authentication is off: memcached without SASL answers these as unknown.
        Request::SaslListMechanisms | Request::SaslAuth { .. } | Request::SaslStep { .. } => {
            error(out, header, Status::UnknownCommand);
        }
    }
    Ok(Flow::Continue)
}

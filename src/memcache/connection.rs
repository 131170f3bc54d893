//! One client connection: read, parse every complete request, answer them in order with a
//! single write per batch (so pipelined requests cost one syscall), repeat.
//!
//! The first byte picks the protocol for the connection's life, as in memcached: 0x80 is
//! binary, anything else text. An idle connection holds no read buffer, so thousands of idle
//! clients stay cheap.

use super::auth::{self, Auth, TextLogin};
use super::binary;
use super::execute::{execute, Flow};
use super::parse::{parse, Parsed, LINE_TOO_LONG};
use super::stream::ClientStream;
use crate::node::Node;
use crate::time::unix_secs;
use bytes::{Buf, BytesMut};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// A read buffer this large is released once drained (after a big value went through).
const KEEP_BUFFER: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Text,
    Binary,
}

/// What one step through the input buffer did.
enum Step {
    /// A request was answered (or discarded): look for the next.
    Next,
    /// The request at the front is incomplete: at least this many bytes in all.
    Wait {
        need: usize,
    },
    Close,
}

pub struct Connection<S> {
    stream: S,
    peer: SocketAddr,
    node: Arc<Node>,
    auth: Arc<Auth>,
    /// Chosen by the first byte received.
    protocol: Option<Protocol>,
    /// Always true when authentication is off.
    authenticated: bool,
    /// This connection's line in `stats conns`.
    entry: crate::stats::ClientEntry,
    input: BytesMut,
    output: Vec<u8>,
    /// Bytes of a refused data block still to discard.
    swallow: u64,
    max_item_size: usize,
    idle_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    /// The node configuration generation the limits above were read from.
    limits_generation: u64,
    /// When the first byte of the request still incomplete arrived.
    partial_since: Option<Instant>,
}

impl<S: ClientStream> Connection<S> {
    pub fn new(stream: S, peer: SocketAddr, node: Arc<Node>, auth: Arc<Auth>) -> Self {
        let local = stream.local_addr().unwrap_or(peer);
        let mut connection = Connection {
            entry: node.clients().register(peer, local, unix_secs()),
            stream,
            peer,
            node,
            protocol: None,
            authenticated: !auth.enabled(),
            auth,
            input: BytesMut::new(),
            output: Vec::new(),
            swallow: 0,
            max_item_size: 0,
            idle_timeout: None,
            request_timeout: None,
            limits_generation: u64::MAX,
            partial_since: None,
        };
        connection.refresh_limits();
        connection
    }

    /// Picks up limits changed by a configuration reload (one atomic load when unchanged).
    fn refresh_limits(&mut self) {
        let generation = self.node.config_generation();
        if generation == self.limits_generation {
            return;
        }
        let config = self.node.config();
        let (idle, request) = (
            config.memcache.idle_timeout.0,
            config.memcache.request_timeout.0,
        );
        self.max_item_size = config.memcache.max_item_size.0 as usize;
        self.idle_timeout = (!idle.is_zero()).then_some(idle);
        self.request_timeout = (!request.is_zero()).then_some(request);
        self.limits_generation = generation;
    }

    /// Serves requests until the client leaves, errs, idles out or `shutdown` fires. Requests
    /// already received when shutdown fires are answered first.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) -> io::Result<()> {
        let mut draining = false;
        // One wait on `shutdown` for the connection's life, polled again only once the
        // channel has changed: polling a wait takes a lock that every connection shares,
        // and a fresh wait per request took it twice per request.
        let probe = shutdown.clone();
        let mut stopped = std::pin::pin!(async move {
            let mut shutdown = shutdown;
            let _ = shutdown.changed().await;
        });
        let mut waiting_on_stop = false;
        loop {
            self.refresh_limits();
            let flow = self.answer_buffered().await;
            if !self.output.is_empty() {
                self.stream.write_all(&self.output).await?;
                // TLS holds records back until flushed (a no-op for TCP).
                self.stream.flush().await?;
                self.output.clear();
            }
            let idle = self.input.is_empty() && self.swallow == 0;
            if flow == Flow::Close || (draining && idle) {
                return Ok(());
            }
            self.partial_since = match (idle, self.partial_since) {
                (true, _) => None,
                (false, since) => Some(since.unwrap_or_else(Instant::now)),
            };
            if self.input.is_empty() && self.input.capacity() > KEEP_BUFFER {
                self.input = BytesMut::new();
            }
            if draining {
                // Shutting down with half a request buffered: read the rest of it (the
                // listener's grace period bounds how long), answer, then close.
                self.readable().await?;
            } else {
                let stop = std::future::poll_fn(|cx| {
                    if waiting_on_stop && matches!(probe.has_changed(), Ok(false)) {
                        return std::task::Poll::Pending;
                    }
                    waiting_on_stop = true;
                    std::future::Future::poll(stopped.as_mut(), cx)
                });
                tokio::select! {
                    biased;
                    ready = self.readable() => ready?,
                    () = stop => {
                        draining = true;
                        continue;
                    }
                }
            }
            if !self.fill()? {
                return Ok(());
            }
            self.entry.seen(unix_secs());
        }
    }

    /// Waits for input, within the idle timeout (nothing buffered) or what is left of the
    /// request timeout (part of a request buffered).
    async fn readable(&mut self) -> io::Result<()> {
        let (limit, what) = match self.partial_since {
            Some(since) => (
                (self.request_timeout).map(|limit| limit.saturating_sub(since.elapsed())),
                "request timeout",
            ),
            None => (self.idle_timeout, "idle timeout"),
        };
        match limit {
            None => self.stream.readable().await,
            Some(limit) => tokio::time::timeout(limit, self.stream.readable())
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, what))),
        }
    }

    /// One read of what the socket has (at most the free space after reserving a chunk,
    /// so a fast sender cannot grow the buffer beyond the request being assembled); false
    /// when the peer closed.
    fn fill(&mut self) -> io::Result<bool> {
        self.input.reserve(READ_CHUNK);
        loop {
            match self.stream.try_read_buf(&mut self.input) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers every complete request in the input buffer.
    async fn answer_buffered(&mut self) -> Flow {
        loop {
            if self.swallow > 0 {
                let dropped = self.swallow.min(self.input.len() as u64);
                self.input.advance(dropped as usize);
                self.swallow -= dropped;
                if self.swallow > 0 {
                    return Flow::Continue;
                }
            }
            let Some(&first) = self.input.first() else {
                return Flow::Continue;
            };
            let protocol = *self.protocol.get_or_insert(match first {
                binary::frame::REQUEST_MAGIC => Protocol::Binary,
                _ => Protocol::Text,
            });
            let step = match protocol {
                Protocol::Text if !self.authenticated => self.text_login(),
                Protocol::Text => self.text_request().await,
                Protocol::Binary => self.binary_request().await,
            };
            match step {
                Step::Next => {}
                Step::Wait { need } => {
                    self.input.reserve(need.saturating_sub(self.input.len()));
                    return Flow::Continue;
                }
                Step::Close => return Flow::Close,
            }
            if let Err(e) = super::reply::flush_if_full(&mut self.output, &mut self.stream).await {
                log::debug!("write failed: {e}");
                return Flow::Close;
            }
        }
    }

    async fn text_request(&mut self) -> Step {
        match parse(&self.input, self.max_item_size) {
            Parsed::Frame(frame) => {
                let (consumed, swallow) = (frame.consumed, frame.swallow);
                let flow = execute(
                    frame.command,
                    &self.node,
                    &mut self.output,
                    &mut self.stream,
                )
                .await;
                self.input.advance(consumed);
                self.swallow = swallow;
                match flow {
                    Flow::Continue => Step::Next,
                    Flow::Close => Step::Close,
                }
            }
            Parsed::Incomplete { need } => Step::Wait { need },
            Parsed::LineTooLong => {
                super::reply::line(&mut self.output, LINE_TOO_LONG);
                Step::Close
            }
        }
    }

    /// memcached's text login, before any other text command when authentication is on.
    fn text_login(&mut self) -> Step {
        let (consumed, reply) = match auth::text_login(&self.input) {
            TextLogin::Incomplete { need } => return Step::Wait { need },
            TextLogin::Close => return Step::Close,
            TextLogin::Refuse { consumed, reply } => (consumed, reply),
            TextLogin::Attempt {
                consumed,
                user,
                password,
            } => {
                let accepted = self.auth.check(user, password);
                auth::record_login(&self.node, accepted, user, self.peer);
                self.authenticated = accepted;
                let reply = match accepted {
                    true => "STORED",
                    false => "CLIENT_ERROR authentication failure",
                };
                (consumed, reply)
            }
        };
        super::reply::line(&mut self.output, reply);
        self.input.advance(consumed);
        Step::Next
    }

    async fn binary_request(&mut self) -> Step {
        use binary::execute::{error, execute, Session};
        use binary::frame::{parse, Parsed, Status};
        let mut session = Session {
            node: &self.node,
            auth: &self.auth,
            authenticated: &mut self.authenticated,
            peer: self.peer,
        };
        match parse(&self.input, self.max_item_size) {
            Parsed::Incomplete { need } => Step::Wait { need },
            Parsed::Invalid { magic } => {
                log::warn!(
                    "closing the binary connection from {}: a request starts with 0x{magic:02x},                      not the request magic 0x80",
                    self.peer
                );
                Step::Close
            }
            Parsed::Request { header, .. } | Parsed::Refused { header, .. }
                if !session.admits(header.opcode) =>
            {
                // memcached answers an unauthenticated command and hangs up.
                error(&mut self.output, &header, Status::AuthError);
                Step::Close
            }
            Parsed::Request {
                header,
                request,
                consumed,
            } => {
                let flow = execute(&header, request, &mut session, &mut self.output).await;
                self.input.advance(consumed);
                match flow {
                    Flow::Continue => Step::Next,
                    Flow::Close => Step::Close,
                }
            }
            Parsed::Refused {
                header,
                status,
                consumed,
                swallow,
                close,
                unlink,
            } => {
                if let Some(key) = unlink {
                    if let Err(e) = self.node.unlink(key).await {
                        log::debug!("dropping the old value of a refused set failed: {e}");
                    }
                }
                error(&mut self.output, &header, status);
                if close {
                    log::warn!(
                        "closing the binary connection from {}: opcode 0x{:02x} with extras {},                          key {} and body {} bytes ({})",
                        self.peer,
                        header.opcode,
                        header.extras_len,
                        header.key_len,
                        header.body_len,
                        status.message()
                    );
                    return Step::Close;
                }
                self.input.advance(consumed);
                self.swallow = swallow;
                Step::Next
            }
        }
    }
}

//! The rpc listener: authenticates each peer, then serves its pipelined requests
//! concurrently and answers them in whatever order they finish.

use super::auth::{Refusal, ServerHandshake};
use super::frame::{FrameCodec, FrameError};
use super::message::{Message, Request, Response};
use super::tls::{self, AcceptError, Accepted, PeerStream};
use super::RpcSettings;
use crate::client_threads::ClientThreads;
use crate::store::Commit;
use crate::time::HybridClock;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::Framed;

/// How a request is answered without a task of its own.
pub enum Immediate {
    Reply(Response),
    /// Reply once the write is durable.
    AfterCommit(Response, Commit),
    /// Needs a task (it waits on other nodes).
    Task(Request),
}

/// What a node does with authenticated traffic.
pub trait Handler: Send + Sync + 'static {
    /// Answers at once what needs no waiting on other nodes (replica reads and writes).
    fn immediate(&self, body: Request) -> Immediate;
    fn request(self: Arc<Self>, body: Request) -> impl Future<Output = Response> + Send;
    /// SWIM datagrams: must not block.
    fn swim(&self, data: Bytes);
}

/// Replies queued per connection before the reader stops taking requests.
const REPLY_QUEUE: usize = 1024;
/// Slack on a request's deadline: the sender corrects it by the clock offset it measured
/// (and that measure's uncertainty), so this covers only drift since the last sample.
const DEADLINE_SLACK_US: u64 = 250_000;

/// Accepts peers on `listener` and serves each session on one of `threads`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    transport: Arc<RpcSettings>,
    handler: Arc<H>,
    threads: Arc<ClientThreads>,
) {
    let slots = Arc::new(Semaphore::new(transport.max_connections));
    let refused_peers = Arc::new(Mutex::new(HashSet::new()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("rpc accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let permit = Arc::clone(&slots).try_acquire_owned();
        let (transport, handler, refused) = (
            Arc::clone(&transport),
            Arc::clone(&handler),
            Arc::clone(&refused_peers),
        );
        threads.serve(stream, move |stream| async move {
            // One log line per peer address and cause: a misconfigured node retries forever.
            let log_once = |reason: String| {
                let first = (refused.lock().unwrap_or_else(|p| p.into_inner()))
                    .insert((peer.ip(), reason.clone()));
                if first {
                    log::warn!("rpc: refused peer {peer}: {reason}");
                }
            };
            let Ok(permit) = permit else {
                // Told at once, before TLS: a peer over the limit gets no session either way.
                let mut framed = Framed::new(stream, FrameCodec::<Message>::default());
                let reason = "too many rpc connections".to_string();
                let _ = framed.send(Message::Refused { reason }).await;
                return;
            };
            let accepted =
                tokio::time::timeout(transport.timeout, tls::accept(stream, &transport.tls)).await;
            let outcome = match accepted {
                Ok(Ok(Accepted::Plain(stream))) => session(stream, &transport, handler).await,
                Ok(Ok(Accepted::Tls(stream))) => session(*stream, &transport, handler).await,
                Ok(Err(AcceptError::Closed)) => Outcome::Served,
                Ok(Err(err)) => Outcome::Refused(err.to_string()),
                Err(_) => Outcome::TimedOut,
            };
            drop(permit);
            match outcome {
                Outcome::Served => {}
                Outcome::TimedOut => log::debug!("rpc: handshake with {peer} timed out"),
                Outcome::Refused(reason) => log_once(reason),
            }
        });
    }
}

enum Outcome {
    /// Served until the connection ended.
    Served,
    Refused(String),
    TimedOut,
}

/// Runs the cluster handshake on an accepted stream, then serves the peer.
async fn session<S: PeerStream, H: Handler>(
    stream: S,
    transport: &Arc<RpcSettings>,
    handler: Arc<H>,
) -> Outcome {
    let mut framed = Framed::new(stream, FrameCodec::<Message>::default());
    match tokio::time::timeout(transport.timeout, handshake(&mut framed, transport)).await {
        Ok(Ok(_node)) => {
            connection(framed, handler, Arc::clone(&transport.clock)).await;
            Outcome::Served
        }
        Ok(Err(reason)) => Outcome::Refused(reason.to_string()),
        Err(_) => Outcome::TimedOut,
    }
}

type Connection<S> = Framed<S, FrameCodec<Message>>;

/// The reply to request `id`, stamped with this node's clocks when it is sent.
struct Reply {
    id: u64,
    clock: Arc<HybridClock>,
}

impl Reply {
    fn with(self, body: Response) -> Message {
        Message::Response {
            id: self.id,
            now_us: self.clock.wall_micros(),
            hlc: self.clock.peek(),
            body,
        }
    }
}

/// Why a peer's handshake did not complete.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    /// Refused before it named itself (protocol, cluster).
    #[error("{0}")]
    Early(Refusal),
    /// Named itself, then failed the proof.
    #[error("{node} ({reason})")]
    Proof { node: String, reason: Refusal },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("closed during the handshake")]
    Closed,
}

async fn step<S: PeerStream>(framed: &mut Connection<S>) -> Result<Message, Rejection> {
    match framed.next().await {
        Some(Ok(message)) => Ok(message),
        Some(Err(err)) => Err(err.into()),
        None => Err(Rejection::Closed),
    }
}

async fn refuse<S: PeerStream>(framed: &mut Connection<S>, reason: &Refusal) {
    let reason = reason.to_string();
    let _ = framed.send(Message::Refused { reason }).await;
}

async fn handshake<S: PeerStream>(
    framed: &mut Connection<S>,
    settings: &RpcSettings,
) -> Result<String, Rejection> {
    let local = settings.upgrade.local_build();
    let mut handshake = ServerHandshake::new(&settings.secret, &settings.cluster, local);
    let hello = step(framed).await?;
    let challenge = match handshake.hello(hello, settings.clock.wall_micros()) {
        Ok(challenge) => challenge,
        Err(reason) => {
            refuse(framed, &reason).await;
            return Err(Rejection::Early(reason));
        }
    };
    framed.send(challenge).await?;
    let proof = step(framed).await?;
    if let Err(reason) = handshake.proof(proof) {
        refuse(framed, &reason).await;
        let node = handshake.peer.unwrap_or_default();
        return Err(Rejection::Proof { node, reason });
    }
    framed.send(Message::Welcome).await?;
    framed.codec_mut().protocol = handshake.protocol;
    let node = handshake.peer.unwrap_or_default();
    if let Ok(addr) = node.parse() {
        (settings.upgrade).record_peer(addr, handshake.protocol, handshake.peer_build);
    }
    Ok(node)
}

async fn connection<S: PeerStream, H: Handler>(
    framed: Connection<S>,
    handler: Arc<H>,
    clock: Arc<HybridClock>,
) {
    let (sink, mut stream) = framed.split();
    let (replies, queue) = mpsc::channel::<Message>(REPLY_QUEUE);
    let writer = tokio::spawn(super::write_batched(sink, queue, None));
    let mut late_requests = 0u64;
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Request {
                id,
                deadline_us,
                hlc,
                body,
            } => {
                let (handler, replies) = (Arc::clone(&handler), replies.clone());
                // Holding a queue slot before starting bounds the work one peer can queue.
                let Ok(slot) = replies.reserve_owned().await else {
                    break;
                };
                clock.observe(hlc);
                let reply = Reply {
                    id,
                    clock: Arc::clone(&clock),
                };
                // A tick late at most, against deadlines of seconds.
                let now_us = clock.coarse_wall_micros();
                if now_us > deadline_us.saturating_add(DEADLINE_SLACK_US) {
                    let late_ms = (now_us - deadline_us) / 1000;
                    late_requests += 1;
                    // A healed partition can deliver a burst: the first and every 100th.
                    if late_requests % 100 == 1 {
                        log::warn!(
                            "rpc: refused a request that arrived {late_ms} ms after its \
                             deadline ({late_requests} on this connection)"
                        );
                    }
                    let body = Response::Error(format!(
                        "request arrived {late_ms} ms after its deadline; not run"
                    ));
                    slot.send(reply.with(body));
                    continue;
                }
                let body = match handler.immediate(body) {
                    Immediate::Reply(body) => {
                        slot.send(reply.with(body));
                        continue;
                    }
                    Immediate::AfterCommit(body, commit) => {
                        tokio::spawn(async move {
                            let body = match commit.wait().await {
                                Ok(()) => body,
                                Err(err) => Response::Error(format!("store: {err}")),
                            };
                            slot.send(reply.with(body));
                        });
                        continue;
                    }
                    Immediate::Task(body) => body,
                };
                tokio::spawn(async move {
                    let body = handler.request(body).await;
                    slot.send(reply.with(body));
                });
            }
            Message::Swim { hlc, data } => {
                clock.observe(hlc);
                handler.swim(data);
            }
            other => {
                log::debug!("rpc: unexpected {other:?} after the handshake");
                break;
            }
        }
    }
    drop(replies);
    let _ = writer.await;
}

//! The rpc listener: authenticates each peer, then serves its pipelined requests
//! concurrently and answers them in whatever order they finish.

use super::auth::{Refusal, ServerHandshake};
use super::frame::{FrameCodec, FrameError};
use super::message::{Message, Request, Response};
use super::RpcSettings;
use crate::store::Commit;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
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
/// How far peers' clocks may disagree before requests count as late (last-write-wins
/// assumes synchronised clocks anyway).
const CLOCK_SKEW_MS: u64 = 1000;

pub async fn serve<H: Handler>(
    listener: TcpListener,
    transport: Arc<RpcSettings>,
    handler: Arc<H>,
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
        tokio::spawn(async move {
            let mut framed = Framed::new(stream, FrameCodec::<Message>::default());
            let Ok(_permit) = permit else {
                let reason = "too many rpc connections".to_string();
                let _ = framed.send(Message::Refused { reason }).await;
                return;
            };
            match tokio::time::timeout(transport.timeout, handshake(&mut framed, &transport)).await
            {
                Ok(Ok(_node)) => connection(framed, handler).await,
                Ok(Err(reason)) => {
                    // One log line per peer address: a misconfigured node retries forever.
                    if refused
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(peer.ip())
                    {
                        log::warn!("rpc: refused peer {peer}: {reason}");
                    }
                }
                Err(_) => log::debug!("rpc: handshake with {peer} timed out"),
            }
        });
    }
}

type Connection = Framed<TcpStream, FrameCodec<Message>>;

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

async fn step(framed: &mut Connection) -> Result<Message, Rejection> {
    match framed.next().await {
        Some(Ok(message)) => Ok(message),
        Some(Err(err)) => Err(err.into()),
        None => Err(Rejection::Closed),
    }
}

async fn refuse(framed: &mut Connection, reason: &Refusal) {
    let reason = reason.to_string();
    let _ = framed.send(Message::Refused { reason }).await;
}

async fn handshake(framed: &mut Connection, settings: &RpcSettings) -> Result<String, Rejection> {
    let mut handshake = ServerHandshake::new(&settings.secret, &settings.cluster);
    let hello = step(framed).await?;
    let challenge = match handshake.hello(hello) {
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
    Ok(handshake.peer.unwrap_or_default())
}

async fn connection<H: Handler>(framed: Connection, handler: Arc<H>) {
    let (sink, mut stream) = framed.split();
    let (replies, queue) = mpsc::channel::<Message>(REPLY_QUEUE);
    let writer = tokio::spawn(super::write_batched(sink, queue));
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Request {
                id,
                deadline_ms,
                body,
            } => {
                let (handler, replies) = (Arc::clone(&handler), replies.clone());
                // Holding a queue slot before starting bounds the work one peer can queue.
                let Ok(slot) = replies.reserve_owned().await else {
                    break;
                };
                let now_ms = crate::time::unix_now().as_millis() as u64;
                if now_ms > deadline_ms.saturating_add(CLOCK_SKEW_MS) {
                    let late = now_ms - deadline_ms;
                    log::debug!("rpc: dropped a request that arrived {late} ms after its deadline");
                    let body = Response::Error(format!(
                        "request arrived {late} ms after its deadline; not run"
                    ));
                    slot.send(Message::Response { id, body });
                    continue;
                }
                let body = match handler.immediate(body) {
                    Immediate::Reply(body) => {
                        slot.send(Message::Response { id, body });
                        continue;
                    }
                    Immediate::AfterCommit(body, commit) => {
                        tokio::spawn(async move {
                            let body = match commit.wait().await {
                                Ok(()) => body,
                                Err(err) => Response::Error(format!("store: {err}")),
                            };
                            slot.send(Message::Response { id, body });
                        });
                        continue;
                    }
                    Immediate::Task(body) => body,
                };
                tokio::spawn(async move {
                    let body = handler.request(body).await;
                    slot.send(Message::Response { id, body });
                });
            }
            Message::Swim(data) => handler.swim(data),
            other => {
                log::debug!("rpc: unexpected {other:?} after the handshake");
                break;
            }
        }
    }
    drop(replies);
    let _ = writer.await;
}

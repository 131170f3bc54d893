//! Accepts memcache clients: enforces `max_connections`, hands each client to one of the
//! [`ClientThreads`], where TLS is completed (on the TLS listener) and a [`Connection`]
//! serves it, and, on shutdown, stops accepting and waits (bounded) for the connections to
//! finish.

use super::auth::Auth;
use super::connection::Connection;
use crate::client_threads::ClientThreads;
use crate::node::Node;
use crate::tls::Tls;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const TOO_MANY: &[u8] = b"SERVER_ERROR too many connections\r\n";

/// Decrements `curr_connections` when a connection ends, however it ends.
struct Slot {
    node: Arc<Node>,
    _done: mpsc::Sender<()>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.node.counters().curr_connections.sub(1);
    }
}

/// A TLS client gets this long to complete its handshake.
const TLS_HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Serves clients from `listener` (over TLS with `tls`) until `shutdown` fires, then gives
/// open connections up to `grace` to answer what they already received.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    threads: Arc<ClientThreads>,
    node: Arc<Node>,
    auth: Arc<Auth>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    if let (Ok(address), None) = (listener.local_addr(), &tls) {
        node.clients().set_listening(address);
    }
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (mut stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(e) => {
                // EMFILE and friends: wait instead of spinning, then try again.
                log::warn!("accept on the memcache port failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let counters = node.counters();
        let max = u64::from(node.config().memcache.max_connections);
        if counters.curr_connections.get() >= max {
            counters.rejected_connections.add(1);
            log::debug!("refusing {peer}: {max} connections open");
            tokio::spawn(async move {
                let _ = stream.write_all(TOO_MANY).await;
                let _ = stream.shutdown().await;
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        counters.curr_connections.add(1);
        counters.total_connections.add(1);
        let slot = Slot {
            node: Arc::clone(&node),
            _done: done_tx.clone(),
        };
        let (node, auth, shutdown) = (Arc::clone(&node), Arc::clone(&auth), shutdown.clone());
        // Plain and TLS connections are separate tasks: a plain connection's task holds no
        // room for a TLS session (an idle connection's whole cost is its task).
        match tls.as_ref().map(|tls| tls.acceptor()) {
            None => threads.serve(stream, move |stream| async move {
                let ended = Connection::new(stream, peer, node, auth)
                    .run(shutdown)
                    .await;
                if let Err(e) = ended {
                    log::debug!("connection from {peer} ended: {e}");
                }
                drop(slot);
            }),
            Some(acceptor) => threads.serve(stream, move |stream| async move {
                let accepted =
                    tokio::time::timeout(TLS_HANDSHAKE_LIMIT, acceptor.accept(stream)).await;
                let ended = match accepted {
                    Ok(Ok(stream)) => {
                        Connection::new(stream, peer, node, auth)
                            .run(shutdown)
                            .await
                    }
                    Ok(Err(e)) => {
                        node.counters().ssl_handshake_errors.add(1);
                        log::info!("TLS handshake with client {peer} failed: {e}");
                        Ok(())
                    }
                    Err(_) => {
                        node.counters().ssl_handshake_errors.add(1);
                        log::info!("TLS handshake with client {peer} timed out");
                        Ok(())
                    }
                };
                if let Err(e) = ended {
                    log::debug!("connection from {peer} ended: {e}");
                }
                drop(slot);
            }),
        }
    }
    drop(listener);
    drop(done_tx);
    // Every Slot holds a sender: recv() returns None once the last connection is gone.
    if tokio::time::timeout(grace, done_rx.recv()).await.is_err() {
        log::warn!(
            "{} client connections still open after {grace:?}; closing them",
            node.counters().curr_connections.get()
        );
    }
}

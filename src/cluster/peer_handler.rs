//! Answers what other nodes (and `kai cluster …`) ask of this one. Replica reads and writes
//! are answered on the connection's own task; everything that waits on other nodes gets a
//! task of its own.

use super::coordinator::Coordinator;
use super::rpc::message::{Request, Response};
use super::rpc::server::{Handler, Immediate};
use crate::keyspace::key_hash;
use bytes::Bytes;
use std::sync::Arc;

/// What this node does on a peer's `flush_all` (the node owns the flush schedule).
pub type FlushHook = Box<dyn Fn(i64) + Send + Sync>;

pub struct PeerHandler {
    coordinator: Arc<Coordinator>,
    flush: FlushHook,
}

impl PeerHandler {
    pub fn new(coordinator: Arc<Coordinator>, flush: FlushHook) -> PeerHandler {
        PeerHandler { coordinator, flush }
    }

    /// Answers `request` whichever way it is served (the in-process test network uses this).
    pub async fn answer(self: &Arc<Self>, request: Request) -> Response {
        match self.immediate(request) {
            Immediate::Reply(response) => response,
            Immediate::AfterCommit(response, commit) => match commit.wait().await {
                Ok(()) => response,
                Err(err) => Response::Error(format!("store: {err}")),
            },
            Immediate::Task(request) => Arc::clone(self).request(request).await,
        }
    }
}

impl Handler for PeerHandler {
    fn immediate(&self, request: Request) -> Immediate {
        let replica = self.coordinator.replica();
        match request {
            Request::Get { key } => {
                Immediate::Reply(Response::Versions(replica.get(&key, key_hash(&key))))
            }
            Request::Put { key, versions } => {
                let (had_live, commit) = replica.apply(&key, key_hash(&key), versions);
                let reply = Response::Applied { had_live };
                if commit.is_done() {
                    Immediate::Reply(reply)
                } else {
                    Immediate::AfterCommit(reply, commit)
                }
            }
            Request::Flush { delay } => {
                (self.flush)(delay);
                Immediate::Reply(Response::Done(String::new()))
            }
            other => Immediate::Task(other),
        }
    }

    async fn request(self: Arc<Self>, request: Request) -> Response {
        let coordinator = &self.coordinator;
        let store = coordinator.replica().store();
        match request {
            // `immediate` answered these already.
            Request::Get { .. } | Request::Put { .. } | Request::Flush { .. } => {
                Response::Error("misrouted".into())
            }
            // Forwarded once already: coordinate here whatever this node's view says.
            Request::Write { key, op } => {
                match coordinator.coordinate(&key, key_hash(&key), op).await {
                    Ok(outcome) => Response::Outcome(outcome),
                    Err(err) => Response::Error(err.to_string()),
                }
            }
            Request::Members { members } => {
                coordinator.membership().merge(&members);
                Response::Members(coordinator.membership().records())
            }
            Request::AdminJoin { seed } => match coordinator.join(&seed).await {
                Ok(()) => Response::Done(format!("joined the cluster through {seed}")),
                Err(err) => Response::Error(err.to_string()),
            },
            Request::AdminLeave => match coordinator.leave().await {
                Ok(()) => Response::Done(format!("{} left the cluster", coordinator.me)),
                Err(err) => Response::Error(err.to_string()),
            },
            Request::AdminRemove { node } => match coordinator.remove(&node).await {
                Ok(_) => Response::Done(format!("{node} removed from the cluster")),
                Err(err) => Response::Error(err.to_string()),
            },
            Request::SyncDigests => Response::Digests(store.digests().all()),
            Request::SyncForget { keys } => {
                for key in &keys {
                    coordinator.replica().forget_due_tombstones(key);
                }
                Response::Done(String::new())
            }
            Request::AdminDigests => Response::Done(coordinator.digest_report()),
            Request::AdminBackup { low, high, after } => {
                // Reading the store may block on disk: off the runtime's workers.
                let coordinator = Arc::clone(coordinator);
                let page =
                    tokio::task::spawn_blocking(move || coordinator.backup_page(low, high, after));
                match page.await {
                    Ok((entries, more)) => Response::Backup { entries, more },
                    Err(err) => Response::Error(format!("backup: {err}")),
                }
            }
            Request::AdminFinalize => match coordinator.finalize_upgrade().await {
                Ok(report) => Response::Done(report),
                Err(err) => Response::Error(err.to_string()),
            },
            Request::Finalize { protocol } => match coordinator.upgrade().finalize(protocol) {
                Ok(_) => Response::Done(String::new()),
                Err(err) => Response::Error(err.to_string()),
            },
            Request::SyncKeys { bucket } => {
                let digests = store.digests();
                if bucket >= digests.buckets() {
                    return Response::Error(format!("no bucket {bucket}"));
                }
                let (low, high) = digests.hash_range(bucket);
                Response::Keys(store.keys_in(low, high))
            }
        }
    }

    fn swim(&self, data: Bytes) {
        self.coordinator.membership().swim_data(data);
    }
}

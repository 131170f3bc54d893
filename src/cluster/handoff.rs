//! Hinted handoff: delivers the keys an owner missed once failure detection sees it up
//! again, then forgets the hint. Hints are persisted after a pass (paced, see
//! [`Hints::persist_paced`]) and at shutdown.

use super::coordinator::Coordinator;
use super::hints::Hints;
use super::member::Liveness;
use crate::keyspace::key_hash;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Keys taken from the hint list at a time.
const BATCH: usize = 512;
/// Puts in flight to one owner: enough to hide the round trip, few enough that an owner
/// catching up still serves its clients.
const IN_FLIGHT: usize = 32;

/// One pass: every owner that is up gets all its hinted keys, until a put to it fails.
/// A node that was away for a minute under load may hold hundreds of thousands of hints;
/// one batch of 512 a second would take half an hour to hand back a million.
pub async fn deliver_hints(coordinator: &Coordinator) {
    let hints = &coordinator.hints;
    for owner in hints.owners() {
        while coordinator.membership.liveness(owner) == Liveness::Up {
            let batch = hints.batch(owner, BATCH);
            if batch.is_empty() || !deliver_batch(coordinator, owner, batch).await {
                break;
            }
        }
    }
    persist_off_the_runtime(&coordinator.hints).await;
}

/// A paced rewrite of the hint file, on a blocking thread: at a million hints it takes
/// long enough to stall the clients of the worker it ran on.
async fn persist_off_the_runtime(hints: &Arc<Hints>) {
    // Without a file there is nothing to write, and no blocking thread may run: the
    // simulation's paused clock would advance while it waited for one.
    if !hints.is_file_backed() {
        return;
    }
    let hints = Arc::clone(hints);
    let _ = tokio::task::spawn_blocking(move || hints.persist_paced()).await;
}

/// Hands `keys` to `owner`, forgetting each hint once its put succeeded; false when any
/// put failed (the rest wait for the next pass).
async fn deliver_batch(coordinator: &Coordinator, owner: SocketAddr, keys: Vec<Bytes>) -> bool {
    let hints = &coordinator.hints;
    let puts = stream::iter(keys).map(|key| async move {
        let Some(versions) = coordinator.replica.get(&key, key_hash(&key)) else {
            // Expired or purged here: nothing left to hand over.
            hints.remove(owner, &key);
            return true;
        };
        match coordinator.put(owner, key.clone(), versions).await {
            Ok(_) => {
                hints.remove(owner, &key);
                (coordinator.counters.hinted_handoffs).fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(err) => {
                log::debug!("hinted handoff to {owner} failed: {err}");
                false
            }
        }
    });
    (puts.buffer_unordered(IN_FLIGHT))
        .fold(true, |all, delivered| async move { all && delivered })
        .await
}

/// Runs a pass every `interval` until `shutdown` turns true, then persists the hints.
pub async fn run(
    coordinator: Arc<Coordinator>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut periodic = crate::shutdown::Periodic::new(interval, shutdown);
    while periodic.tick().await {
        // A long pass stops midway at shutdown: a hint goes only once its put succeeded.
        tokio::select! {
            () = deliver_hints(&coordinator) => {}
            () = periodic.stopping() => break,
        }
    }
    coordinator.hints.persist();
}

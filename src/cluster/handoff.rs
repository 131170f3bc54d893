//! Hinted handoff: delivers the keys an owner missed once failure detection sees it up
//! again, then forgets the hint. Hints are persisted after every pass and at shutdown.

use super::coordinator::Coordinator;
use super::member::Liveness;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Keys offered to one owner per pass.
const BATCH: usize = 512;

/// One pass: every owner that is up gets (up to a batch of) its hinted keys.
pub async fn deliver_hints(coordinator: &Coordinator) {
    let hints = &coordinator.hints;
    for owner in hints.owners() {
        if coordinator.membership.liveness(owner) != Liveness::Up {
            continue;
        }
        for key in hints.batch(owner, BATCH) {
            let Some(versions) = coordinator.replica.get(&key) else {
                // Expired or purged here: nothing left to hand over.
                hints.remove(owner, &key);
                continue;
            };
            match coordinator.put(owner, key.clone(), versions).await {
                Ok(_) => {
                    hints.remove(owner, &key);
                    (coordinator.counters.hinted_handoffs).fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    log::debug!("hinted handoff to {owner} failed: {err}");
                    break;
                }
            }
        }
    }
    hints.persist();
}

/// Runs a pass every `interval` until `shutdown` turns true, then persists the hints.
pub async fn run(
    coordinator: Arc<Coordinator>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut periodic = crate::shutdown::Periodic::new(interval, shutdown);
    while periodic.tick().await {
        deliver_hints(&coordinator).await;
    }
    coordinator.hints.persist();
}

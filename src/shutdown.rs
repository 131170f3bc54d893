//! The one shutdown signal every background worker listens on: a watch channel that turns
//! true once, on SIGTERM or SIGINT.

use tokio::sync::watch;

/// Resolves once shutdown was requested (or the sender is gone, which means the same).
pub async fn requested(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}

//! The one shutdown signal every background worker listens on: a watch channel that turns
//! true once, on SIGTERM or SIGINT.

use tokio::sync::watch;

/// Resolves once shutdown was requested (or the sender is gone, which means the same).
pub async fn requested(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|stop| *stop).await;
}

/// The clock of a periodic worker: a tick every `interval` (a late tick delays the next,
/// never bunches them) until shutdown is requested.
pub struct Periodic {
    ticker: tokio::time::Interval,
    signal: watch::Receiver<bool>,
}

impl Periodic {
    pub fn new(interval: std::time::Duration, signal: watch::Receiver<bool>) -> Periodic {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Periodic { ticker, signal }
    }

    /// Waits for the next tick; false once shutdown was requested.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.ticker.tick() => true,
            () = requested(&mut self.signal) => false,
        }
    }

    /// Resolves once shutdown was requested: for work that may stop midway.
    pub async fn stopping(&mut self) {
        requested(&mut self.signal).await;
    }
}

//! The one wall clock: write timestamps, expiry and tombstone deadlines all read it here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time since the Unix epoch (zero if the clock is set before 1970).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Whole seconds since the Unix epoch, for expiry and access times. Read from the kernel's
/// coarse clock (as of its last tick, a few milliseconds behind at most), which costs no
/// counter read: on the test VM a precise read took 60-80 ns and this one 10, and a set
/// read the seconds three times.
pub fn unix_secs() -> u64 {
    coarse_unix().as_secs()
}

/// `unix_now` from the kernel's coarse clock, a tick (a few ms) behind at most.
fn coarse_unix() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_REALTIME_COARSE) {
        Ok(now) if now.tv_sec() >= 0 => Duration::from(now),
        Ok(_) => Duration::ZERO,
        Err(_) => unix_now(),
    }
}

/// Time since boot from the kernel's coarse monotonic clock: for intervals of a second or
/// more on the request path, where a tick's error does not matter and a precise read would.
pub fn coarse_monotonic() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).map_or(Duration::ZERO, Duration::from)
}

/// A hybrid logical clock: write timestamps in Unix microseconds that follow the wall clock
/// but never run backwards and never fall behind a timestamp this node has seen from a peer
/// (docs/design.md, "Last write wins"). So a write coordinated after a node heard of
/// another write, directly or through any peer message, is stamped later than it, however
/// far the two wall clocks disagree.
#[derive(Debug, Default)]
pub struct HybridClock {
    last: std::sync::atomic::AtomicU64,
    /// Added to the wall clock: zero except in simulations of a skewed node.
    skew_micros: i64,
    /// Simulations read tokio's (paused, virtual) clock from this instant instead of the
    /// wall clock, so a seed replays the same timestamps.
    virtual_start: Option<tokio::time::Instant>,
}

impl HybridClock {
    pub fn new() -> Self {
        HybridClock::default()
    }

    /// A clock whose wall clock runs `skew_micros` off the real one (tests).
    pub fn skewed(skew_micros: i64) -> Self {
        HybridClock {
            last: Default::default(),
            skew_micros,
            virtual_start: None,
        }
    }

    /// A skewed clock on tokio's virtual time, starting at a fixed date (simulations).
    #[cfg(test)]
    pub fn simulated(skew_micros: i64) -> Self {
        HybridClock {
            virtual_start: Some(tokio::time::Instant::now()),
            ..HybridClock::skewed(skew_micros)
        }
    }

    /// This node's wall clock in Unix microseconds.
    pub fn wall_micros(&self) -> u64 {
        let wall = match self.virtual_start {
            // 2026-01-01 plus the virtual time elapsed.
            Some(start) => 1_767_225_600_000_000 + start.elapsed().as_micros() as u64,
            None => unix_now().as_micros() as u64,
        };
        wall.saturating_add_signed(self.skew_micros)
    }

    /// `wall_micros` as of the kernel's last tick: for rpc deadlines and the clock readings
    /// peers are sent, which a few milliseconds do not change, read on every call.
    pub fn coarse_wall_micros(&self) -> u64 {
        let wall = match self.virtual_start {
            Some(_) => return self.wall_micros(),
            None => coarse_unix().as_micros() as u64,
        };
        wall.saturating_add_signed(self.skew_micros)
    }

    /// A fresh timestamp: later than every one handed out or observed before.
    pub fn stamp(&self) -> u64 {
        let wall = self.wall_micros();
        let mut last = self.last.load(std::sync::atomic::Ordering::Acquire);
        loop {
            let next = wall.max(last + 1);
            match self.last.compare_exchange_weak(
                last,
                next,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Takes in a timestamp from a peer (a message or a record it sent).
    pub fn observe(&self, remote: u64) {
        (self.last).fetch_max(remote, std::sync::atomic::Ordering::AcqRel);
    }

    /// The latest timestamp handed out or observed, without advancing (to send to peers).
    /// Every stamp handed out is in it; the wall clock's part may trail by a tick.
    pub fn peek(&self) -> u64 {
        let last = self.last.load(std::sync::atomic::Ordering::Acquire);
        last.max(self.coarse_wall_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_seconds_are_unix_time_at_most_a_tick_behind() {
        let before = unix_now().as_secs();
        let coarse = unix_secs();
        let after = unix_now().as_secs();
        // A kernel tick is a few milliseconds: at most one second boundary lies between.
        assert!(
            before.saturating_sub(1) <= coarse && coarse <= after,
            "{before} {coarse} {after}"
        );
    }

    #[test]
    fn the_coarse_clocks_trail_the_precise_ones_by_at_most_a_tick() {
        let clock = HybridClock::skewed(-30_000_000);
        let (before, monotonic_before) = (clock.wall_micros(), std::time::Instant::now());
        let coarse = clock.coarse_wall_micros();
        let after = clock.wall_micros();
        assert!(
            before.saturating_sub(50_000) <= coarse && coarse <= after,
            "{before} {coarse} {after}"
        );
        let first = coarse_monotonic();
        std::thread::sleep(Duration::from_millis(100));
        let waited = coarse_monotonic() - first;
        let slept = monotonic_before.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited <= slept + Duration::from_millis(50),
            "{waited:?} of {slept:?}"
        );
    }

    #[test]
    fn stamps_rise_and_follow_what_peers_have_seen() {
        let behind = HybridClock::skewed(-30_000_000);
        let first = behind.stamp();
        assert!(behind.stamp() > first);
        // A peer 30 s ahead stamped a write; anything stamped here afterwards is later.
        let ahead = HybridClock::skewed(30_000_000);
        let theirs = ahead.stamp();
        assert!(theirs > first + 59_000_000);
        behind.observe(theirs);
        let after = behind.stamp();
        assert!(after > theirs);
        // Observing an older stamp changes nothing.
        behind.observe(first);
        assert!(behind.stamp() > after);
        assert!(behind.peek() >= after);
    }
}

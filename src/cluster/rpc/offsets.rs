//! How far each peer's wall clock is from ours, measured on every exchange: the handshake's
//! challenge and every reply carry the peer's clock, and the round trip bounds the error
//! (NTP's estimate: offset = theirs − midpoint of ours). Deadlines are sent in the peer's
//! clock with it, and operators see it in stats and `kai cluster status`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A sample older than this is replaced by the next one, however noisy.
const FRESH_FOR: Duration = Duration::from_secs(10);

/// The best recent estimate for one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    /// Peer's clock minus ours, in microseconds.
    pub offset_us: i64,
    /// Round trip of the sample it came from: the estimate is within half of it.
    pub rtt_us: u64,
}

struct Estimate {
    best: ClockOffset,
    taken: Instant,
    /// The over-the-limit warning was logged (until the offset falls back under half).
    warned: bool,
}

pub struct ClockOffsets {
    peers: Mutex<HashMap<SocketAddr, Estimate>>,
    /// Above this a warning is logged, once per episode.
    warn_above: Duration,
}

impl ClockOffsets {
    pub fn new(warn_above: Duration) -> Self {
        ClockOffsets {
            peers: Mutex::new(HashMap::new()),
            warn_above,
        }
    }

    /// One exchange: we sent at `sent_us` and heard back at `received_us` (our clock), the
    /// peer's clock read `theirs_us` in between.
    pub fn sample(&self, peer: SocketAddr, sent_us: u64, theirs_us: u64, received_us: u64) {
        let rtt_us = received_us.saturating_sub(sent_us);
        let midpoint = sent_us + rtt_us / 2;
        let sample = ClockOffset {
            offset_us: theirs_us as i64 - midpoint as i64,
            rtt_us,
        };
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let estimate = peers.entry(peer).or_insert(Estimate {
            best: sample,
            taken: now,
            warned: false,
        });
        // Keep the tightest recent sample: a slow reply says little about the clock.
        let better = sample.rtt_us <= estimate.best.rtt_us.saturating_mul(2) + 1000;
        if better || now.duration_since(estimate.taken) > FRESH_FOR {
            estimate.best = sample;
            estimate.taken = now;
        }
        let skew = Duration::from_micros(estimate.best.offset_us.unsigned_abs());
        if skew > self.warn_above && !estimate.warned {
            estimate.warned = true;
            log::warn!(
                "clock of peer {peer} is {} ms {} ours (limit {} ms): check NTP on both",
                skew.as_millis(),
                if estimate.best.offset_us > 0 {
                    "ahead of"
                } else {
                    "behind"
                },
                self.warn_above.as_millis()
            );
        } else if skew < self.warn_above / 2 && estimate.warned {
            estimate.warned = false;
            log::info!(
                "clock of peer {peer} is back within {} ms",
                skew.as_millis()
            );
        }
    }

    pub fn get(&self, peer: SocketAddr) -> Option<ClockOffset> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.get(&peer).map(|e| e.best)
    }

    /// Every peer measured so far, sorted by address.
    pub fn all(&self) -> Vec<(SocketAddr, ClockOffset)> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = peers.iter().map(|(a, e)| (*a, e.best)).collect();
        all.sort_by_key(|(a, _)| *a);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_come_from_the_tightest_recent_exchange() {
        let offsets = ClockOffsets::new(Duration::from_secs(1));
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        // Peer 30 s ahead; a 2 ms round trip.
        offsets.sample(peer, 1_000_000, 31_001_000, 1_002_000);
        assert_eq!(
            offsets.get(peer),
            Some(ClockOffset {
                offset_us: 30_000_000,
                rtt_us: 2000
            })
        );
        // A slow reply (400 ms) does not replace it.
        offsets.sample(peer, 2_000_000, 32_000_000, 2_400_000);
        assert_eq!(offsets.get(peer).unwrap().offset_us, 30_000_000);
        // A comparable one does.
        offsets.sample(peer, 3_000_000, 33_000_500, 3_001_000);
        assert_eq!(offsets.get(peer).unwrap().offset_us, 30_000_000);
        offsets.sample(peer, 4_000_000, 3_000_500, 4_001_000);
        assert_eq!(offsets.get(peer).unwrap().offset_us, -1_000_000);
        assert_eq!(offsets.all().len(), 1);
    }
}

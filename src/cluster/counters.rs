//! What the cluster counts for `stats`, Prometheus and `kai cluster status`: repairs,
//! handoffs, quorum failures by kind, and the anti-entropy transfers.

use super::error::{ClusterError, QuorumKind};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct ClusterCounters {
    /// Replicas sent the reconciled versions after a read (kai_read_repairs).
    pub read_repairs: AtomicU64,
    /// Hints delivered to their owner (kai_hinted_handoffs).
    pub hinted_handoffs: AtomicU64,
    /// Reads that failed for too few replies or too few replicas up.
    pub read_quorum_failures: AtomicU64,
    /// Writes that failed for too few acknowledgements or too few replicas up.
    pub write_quorum_failures: AtomicU64,
    /// Writes this node could not forward to a replica.
    pub forward_failures: AtomicU64,
    /// Keys sent or received by anti-entropy and ownership handoff (kai_sync_keys).
    pub sync_keys: AtomicU64,
    /// Key and value bytes sent or received by them (kai_sync_bytes).
    pub sync_bytes: AtomicU64,
    /// Buckets that differ from another owner's or wait to move (kai_sync_pending_buckets).
    pub pending_buckets: AtomicU64,
    /// Tombstones purged after every replica held them past the grace period.
    pub purged_tombstones: AtomicU64,
}

impl ClusterCounters {
    /// Counts a failed client operation by its kind.
    pub fn count_failure(&self, error: &ClusterError) {
        let counter = match error {
            ClusterError::Unavailable {
                kind: QuorumKind::Read,
                ..
            }
            | ClusterError::ReadQuorum { .. } => &self.read_quorum_failures,
            ClusterError::Unavailable {
                kind: QuorumKind::Write,
                ..
            }
            | ClusterError::WriteQuorum { .. } => &self.write_quorum_failures,
            ClusterError::NoReplicaUp | ClusterError::Forward(_) => &self.forward_failures,
            ClusterError::Store(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

//! Storage engines behind one trait. The store knows keys, records and memory; it knows
//! nothing of the ring, the cluster, the configuration or the protocols (docs/design.md).

pub mod backup;
pub mod digest;
pub mod disk;
pub mod memory;
pub mod migrate;
mod table;
#[cfg(test)]
mod tests;
pub mod vlog;

pub use crate::record::{Record, Versions, RECORD_OVERHEAD};
use bytes::Bytes;
use digest::Digests;
use std::sync::Arc;

/// Why the store could not read or make a write durable.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store stopped before the write was durable")]
    Stopped,
    #[error("disk engine: {0}")]
    Disk(Arc<redb::Error>),
    #[error("cannot encode a record: {0}")]
    Encode(postcard::Error),
    #[error("{path}: {source}")]
    File {
        path: std::path::PathBuf,
        source: Arc<redb::Error>,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("{0}")]
    Damaged(String),
}

/// When a disk engine write counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the group commit that holds it reached the disk (fsync).
    Fsync,
    /// After it was written; the disk is synced every `flush_interval`.
    Periodic,
}

impl StoreError {
    pub(crate) fn disk(error: impl Into<redb::Error>) -> StoreError {
        StoreError::Disk(Arc::new(error.into()))
    }
}

/// Resolves once a write is durable (disk engine); the memory engine's are done at once.
#[must_use = "a write is acknowledged only after its commit"]
pub struct Commit(Option<tokio::sync::oneshot::Receiver<Result<(), StoreError>>>);

impl Commit {
    pub fn done() -> Self {
        Commit(None)
    }

    pub fn pending(receiver: tokio::sync::oneshot::Receiver<Result<(), StoreError>>) -> Self {
        Commit(Some(receiver))
    }

    pub fn is_done(&self) -> bool {
        self.0.is_none()
    }

    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(receiver) => receiver.await.unwrap_or(Err(StoreError::Stopped)),
        }
    }
}

/// What a read-modify-write decides to do with a key.
pub enum Change {
    Keep,
    Put(Versions),
    Remove,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub items: u64,
    pub bytes: u64,
    pub evictions: u64,
    pub limit_bytes: u64,
    /// The disk engine's files, the part of them no longer current, how many segments
    /// compaction rewrote and the bytes that gave back.
    pub file_bytes: u64,
    pub dead_bytes: u64,
    pub compactions: u64,
    pub compacted_bytes: u64,
    /// The disk engine's failed writes and syncs of its files, and whether the last failed.
    pub write_errors: u64,
    pub write_failing: bool,
}

/// A key/value engine. Every method is atomic per key; none blocks on the network.
pub trait Store: Send + Sync {
    /// The unexpired versions of `key` (tombstones included), if any.
    fn get(&self, key: &[u8], now_secs: u64) -> Option<Versions> {
        self.get_hashed(key, crate::keyspace::key_hash(key), now_secs)
    }

    /// `get` for a caller that holds the key's ring hash (`keyspace::key_hash`) already, as
    /// the cluster's placement does: one md5 per read instead of two.
    fn get_hashed(&self, key: &[u8], hash: u32, now_secs: u64) -> Option<Versions>;

    /// Reads `key`'s unexpired versions and applies `decide`'s change, atomically: later
    /// reads see it at once; the returned `Commit` says when it is durable. `decide` is
    /// called once (a node's write moves its value into the decision).
    fn update(
        &self,
        key: &[u8],
        now_secs: u64,
        decide: &mut dyn FnMut(Option<&Versions>) -> Change,
    ) -> Commit {
        self.update_hashed(key, crate::keyspace::key_hash(key), now_secs, decide)
    }

    /// `update` for a caller that holds the key's ring hash already (as `get_hashed`): a
    /// coordinated write hashes its key once, for placement.
    fn update_hashed(
        &self,
        key: &[u8],
        hash: u32,
        now_secs: u64,
        decide: &mut dyn FnMut(Option<&Versions>) -> Change,
    ) -> Commit;

    /// `update` for a `decide` that reads no value of the current versions and keeps none
    /// of them (a plain set or delete): the versions it is shown may have empty values.
    fn overwrite(
        &self,
        key: &[u8],
        now_secs: u64,
        decide: &mut dyn FnMut(Option<&Versions>) -> Change,
    ) -> Commit {
        self.overwrite_hashed(key, crate::keyspace::key_hash(key), now_secs, decide)
    }

    /// `overwrite` with the key's ring hash, as `update_hashed`.
    fn overwrite_hashed(
        &self,
        key: &[u8],
        hash: u32,
        now_secs: u64,
        decide: &mut dyn FnMut(Option<&Versions>) -> Change,
    ) -> Commit {
        self.update_hashed(key, hash, now_secs, decide)
    }

    /// Drops every record.
    fn clear(&self);

    /// Drops expired records; returns how many.
    fn purge_expired(&self, now_secs: u64) -> u64;

    /// `items` counts keys with at least one live version.
    fn stats(&self) -> StoreStats;

    /// Per-bucket digests of what this store holds (anti-entropy).
    fn digests(&self) -> &Digests;

    /// Every key whose ring hash lies in `low..=high`, with its fingerprint.
    fn keys_in(&self, low: u32, high: u32) -> Vec<(Bytes, u64)>;

    /// Changes the memory limit while running (0 = none), evicting down to it; false for
    /// an engine that has no memory limit.
    fn set_memory_limit(&self, _limit_bytes: u64) -> bool {
        false
    }

    /// Which `record::format` new writes use (engines that persist records).
    fn set_record_format(&self, _format: u8) {}
}

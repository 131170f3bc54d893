//! The node's running configuration: read on the request path without a lock held across
//! awaits, swapped whole by SIGHUP for the keys that can change live.

use super::Node;
use crate::config::{Config, ConflictResolution};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Node {
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn config_generation(&self) -> u64 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// Applies the keys that can change while running (log level, connection and item
    /// limits, idle timeout) from a re-read configuration. Returns the sections whose other
    /// changes wait for a restart.
    pub fn reload(&self, mut new: Config, sources: Vec<PathBuf>) -> Vec<&'static str> {
        let current = self.config();
        if new.rpc.listen.ends_with(":0") {
            // Port 0 was resolved at start; the same file asks for no change.
            new.rpc.listen.clone_from(&current.rpc.listen);
        }
        let mut next = (*current).clone();
        next.log.level = new.log.level;
        next.memcache.max_connections = new.memcache.max_connections;
        next.memcache.max_item_size = new.memcache.max_item_size;
        next.memcache.idle_timeout = new.memcache.idle_timeout;
        next.memcache.request_timeout = new.memcache.request_timeout;
        next.memcache.auth_file.clone_from(&new.memcache.auth_file);
        next.cluster.conflict_resolution = new.cluster.conflict_resolution;
        self.siblings_mode.store(
            new.cluster.conflict_resolution == ConflictResolution::Siblings,
            Ordering::Relaxed,
        );
        let pending = [
            ("node", next.node != new.node),
            ("memcache.listen", next.memcache != new.memcache),
            ("rpc", next.rpc != new.rpc),
            ("cluster", next.cluster != new.cluster),
            ("store", next.store != new.store),
            ("log", next.log != new.log),
            ("metrics", next.metrics != new.metrics),
            ("daemon", next.daemon != new.daemon),
        ];
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        *self
            .config_sources
            .write()
            .unwrap_or_else(|p| p.into_inner()) = sources;
        self.config_generation.fetch_add(1, Ordering::Release);
        pending
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(name, _)| name)
            .collect()
    }
}

//! kai: a Dynamo-style distributed key/value store speaking the memcached protocol.
//!
//! docs/design.md maps the modules and the allowed imports between them (checked by
//! `tests/layers.rs`): leaf helpers, then records and operation semantics, the store, the
//! cluster, the node facade, the protocols and tools, and `serve` composing them.

// Leaves: no imports from the rest of the crate (config and logging aside).
pub mod address;
pub mod causality;
pub mod client_threads;
pub mod config;
pub mod daemon;
pub mod durable;
pub mod keyspace;
pub mod logging;
pub mod shutdown;
pub mod stats;
pub mod time;
pub mod tls;

// Records and the memcached operation semantics every protocol shares.
pub mod ops;
pub mod record;

pub mod store;

pub mod cluster;

pub mod node;

// Protocols, metrics and the operator's tools.
pub mod admin;
pub mod memcache;
pub mod metrics;

// The composition root.
pub mod serve;

//! kai: a Dynamo-style distributed key/value store speaking the memcached protocol.
//! DESIGN.md §2 maps the modules; data flows memcache → node → store.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod memcache;
pub mod metrics;
pub mod node;
pub mod serve;
pub mod stats;
pub mod store;
pub mod version;

//! Operator tools that talk to running nodes over the memcache port: `kai stats` and the
//! Nagios plugin `kai check`.

pub mod check;
pub mod client;
pub mod range;
pub mod stats;

//! Operator tools that talk to running nodes: `kai stats`, the Nagios plugin `kai check`
//! and `kai cluster …`.

pub mod backup;
pub mod check;
pub mod client;
pub mod cluster;
pub mod range;
pub mod stats;

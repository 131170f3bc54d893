//! The memcached text protocol front end (docs/design.md, "Client protocol"): parsing, reply encoding, the
//! per-connection loop and the listener. It talks only to [`crate::node::Node`].

pub mod connection;
pub mod execute;
pub mod listener;
pub mod parse;
pub mod reply;

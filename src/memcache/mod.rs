//! The memcached protocols (docs/design.md, "Client protocol"): the text parser and reply
//! encoding, the binary protocol, client authentication, the per-connection loop that tells
//! the protocols apart and the listeners (plain and TLS). They talk only to [`crate::node::Node`].

pub mod auth;
pub mod binary;
pub mod connection;
pub mod execute;
pub mod listener;
pub mod meta;
pub mod parse;
pub mod reply;
pub mod stream;
pub mod token;

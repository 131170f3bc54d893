//! Node-to-node RPC (DESIGN §6): length-prefixed postcard frames over TCP, a handshake that
//! proves the cluster secret, a pipelined client pool and the server.

pub mod auth;
pub mod client;
pub mod frame;
pub mod message;
pub mod server;

use std::net::IpAddr;
use std::time::Duration;

/// What both ends of a connection need to know.
#[derive(Debug)]
pub struct Transport {
    pub secret: auth::Secret,
    pub cluster: String,
    /// This node's "host:port" rpc address, announced in the handshake.
    pub node: String,
    pub timeout: Duration,
    pub max_connections: usize,
    /// Source address of outgoing connections: the node's own address, so peers (and
    /// firewalls) see connections coming from the node they name.
    pub bind: Option<IpAddr>,
}

//! Turning "host:port" text from configuration and the command line into socket addresses.

use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{address}: {source}")]
    Lookup {
        address: String,
        source: std::io::Error,
    },
    #[error("{0}: no address")]
    NoAddress(String),
}

/// The first address `address` ("host:port") resolves to.
pub fn resolve(address: &str) -> Result<SocketAddr, ResolveError> {
    (address.to_socket_addrs())
        .map_err(|source| ResolveError::Lookup {
            address: address.to_string(),
            source,
        })?
        .next()
        .ok_or_else(|| ResolveError::NoAddress(address.to_string()))
}

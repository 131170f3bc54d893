//! `[rpc] tls`: which connections a node accepts and how it dials (docs/design.md, "TLS").
//!
//! Off: plaintext both ways. Transitional: accepts both (told apart by the first byte, a
//! TLS record's 0x16 against a frame length's high byte), dials TLS and falls back to
//! plaintext only when the peer closes a TLS hello unanswered, as a node still off does;
//! a peer that answers in TLS and refuses us is never retried in plaintext. On: TLS only.
//! The cluster-secret handshake runs inside TLS either way.

use crate::config::{RpcSection, TlsMode};
use crate::tls::{self, Tls, TlsError, TlsFiles};
use rustls::pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

#[derive(Clone, Debug)]
pub enum PeerTls {
    Off,
    Transitional(Arc<Tls>),
    On(Arc<Tls>),
}

impl PeerTls {
    pub fn from_config(rpc: &RpcSection) -> Result<PeerTls, TlsError> {
        let load = || {
            Tls::for_peers(TlsFiles {
                cert: rpc.tls_cert.clone(),
                key: rpc.tls_key.clone(),
                ca: Some(rpc.tls_ca.clone()),
            })
            .map(Arc::new)
        };
        Ok(match rpc.tls {
            TlsMode::Off => PeerTls::Off,
            TlsMode::Transitional => PeerTls::Transitional(load()?),
            TlsMode::On => PeerTls::On(load()?),
        })
    }

    pub fn tls(&self) -> Option<&Arc<Tls>> {
        match self {
            PeerTls::Off => None,
            PeerTls::Transitional(tls) | PeerTls::On(tls) => Some(tls),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            PeerTls::Off => "off",
            PeerTls::Transitional(_) => "transitional",
            PeerTls::On(_) => "on",
        }
    }
}

/// A byte stream to a peer, plaintext or TLS.
pub trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> PeerStream for S {}

/// An accepted connection, ready for the cluster handshake.
pub enum Accepted {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("it dialled TLS, but this node's rpc.tls is \"off\"")]
    TlsWhileOff,
    #[error("it dialled plaintext, but this node's rpc.tls is \"on\"")]
    PlainWhileOn,
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("closed before its first byte")]
    Closed,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Tells a TLS hello from a plaintext frame and completes TLS when that is what came.
pub async fn accept(stream: TcpStream, mode: &PeerTls) -> Result<Accepted, AcceptError> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(AcceptError::Closed);
    }
    let dials_tls = first[0] == tls::HANDSHAKE_RECORD;
    match (mode.tls(), dials_tls) {
        (None, true) => Err(AcceptError::TlsWhileOff),
        (None, false) => Ok(Accepted::Plain(stream)),
        (Some(_), false) if matches!(mode, PeerTls::On(_)) => Err(AcceptError::PlainWhileOn),
        (Some(_), false) => Ok(Accepted::Plain(stream)),
        (Some(tls), true) => match tls.acceptor().accept(stream).await {
            Ok(stream) => Ok(Accepted::Tls(Box::new(stream))),
            Err(err) => Err(AcceptError::Handshake(err)),
        },
    }
}

/// How a dial went at the TLS layer.
pub enum Dialled {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Transitional, and the peer hung up on the TLS hello: dial again in plaintext.
    SpeaksPlaintext,
}

/// Starts TLS on a fresh connection to `peer`, whose certificate must name its address.
pub async fn dial(stream: TcpStream, peer: SocketAddr, mode: &PeerTls) -> io::Result<Dialled> {
    let Some(connector) = mode.tls().and_then(|tls| tls.connector()) else {
        return Ok(Dialled::Plain(stream));
    };
    let name = ServerName::IpAddress(peer.ip().into());
    match connector.connect(name, stream).await {
        Ok(stream) => Ok(Dialled::Tls(Box::new(stream))),
        Err(err) if matches!(mode, PeerTls::Transitional(_)) && !tls::is_tls_refusal(&err) => {
            Ok(Dialled::SpeaksPlaintext)
        }
        Err(err) => Err(err),
    }
}

//! TLS with rustls (docs/design.md, "TLS"): certificates and keys read from PEM files, the
//! configurations built from them, and their reload. The rpc port uses it mutually (each
//! side shows a certificate from the cluster's CA); the memcache TLS listener as a server,
//! asking clients for certificates only when it has a CA to check them against.
//!
//! A reload builds the new configurations first and swaps them in only when all of them
//! load, so a half-written certificate never replaces a working one. Connections already
//! open keep the session they negotiated.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The PEM files a TLS endpoint is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This end's certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs the other end's certificate (required for peers).
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{cert} and {key}: {reason}", cert = files.cert.display(), key = files.key.display())]
    Refused {
        files: Box<TlsFiles>,
        reason: String,
    },
    #[error("a peer TLS setup needs a CA file")]
    NoCa,
}

/// Who the endpoint talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Other nodes: accepts and dials, both ends show certificates from the CA.
    Peers,
    /// memcache clients: accepts only.
    Clients,
}

struct Configs {
    server: Arc<ServerConfig>,
    client: Option<Arc<ClientConfig>>,
}

pub struct Tls {
    files: TlsFiles,
    side: Side,
    configs: RwLock<Configs>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// The rpc port's TLS: mutual, against `files.ca`.
    pub fn for_peers(files: TlsFiles) -> Result<Tls, TlsError> {
        if files.ca.is_none() {
            return Err(TlsError::NoCa);
        }
        Tls::new(files, Side::Peers)
    }

    /// The memcache TLS listener: client certificates are asked for (and required) only
    /// when `files.ca` is set.
    pub fn for_clients(files: TlsFiles) -> Result<Tls, TlsError> {
        Tls::new(files, Side::Clients)
    }

    fn new(files: TlsFiles, side: Side) -> Result<Tls, TlsError> {
        let configs = RwLock::new(build(&files, side)?);
        Ok(Tls {
            files,
            side,
            configs,
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again; on any error the running certificates stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = build(&self.files, self.side)?;
        *self.configs.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        let configs = self.configs.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(Arc::clone(&configs.server))
    }

    /// Dials peers (None for a client listener, which never dials).
    pub fn connector(&self) -> Option<TlsConnector> {
        let configs = self.configs.read().unwrap_or_else(|p| p.into_inner());
        configs
            .client
            .as_ref()
            .map(|c| TlsConnector::from(Arc::clone(c)))
    }
}

/// Whether a handshake error came from TLS itself (the other end speaks TLS and refused
/// us, or we refused it) rather than from the connection (closed or reset, as a node that
/// does not speak TLS does).
pub fn is_tls_refusal(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
pub const HANDSHAKE_RECORD: u8 = 0x16;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build(files: &TlsFiles, side: Side) -> Result<Configs, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key)?;
    let roots = match &files.ca {
        Some(ca) => Some(Arc::new(root_store(ca)?)),
        None => None,
    };
    let refused = |reason: String| TlsError::Refused {
        files: Box::new(files.clone()),
        reason,
    };
    let versions = rustls::DEFAULT_VERSIONS;
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| refused(e.to_string()))?;
    let server = match &roots {
        Some(roots) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider())
                    .build()
                    .map_err(|e| refused(e.to_string()))?;
            server.with_client_cert_verifier(verifier)
        }
        None => server.with_no_client_auth(),
    }
    .with_single_cert(chain.clone(), key.clone_key())
    .map_err(|e| refused(e.to_string()))?;
    let client = match (side, roots) {
        (Side::Peers, Some(roots)) => Some(Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(versions)
                .map_err(|e| refused(e.to_string()))?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(|e| refused(e.to_string()))?,
        )),
        _ => None,
    };
    Ok(Configs {
        server: Arc::new(server),
        client,
    })
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if chain.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(chain)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, e))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file_error(path, "no PEM private key in the file")
        }
        e => file_error(path, e),
    })
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a CA certificate: {e}")))?;
    }
    Ok(roots)
}

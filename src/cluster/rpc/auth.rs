//! The cluster secret and the handshake that proves it (docs/design.md, "Cluster").
//!
//! Both sides send a fresh random nonce and answer the other's with
//! HMAC-SHA256(secret, role ‖ cluster ‖ their nonce ‖ our nonce). The secret never crosses the
//! wire, a recorded handshake cannot be replayed (the other side's nonce is new each time),
//! and the client learns the server knows the secret too.

use super::frame::FrameError;
use super::message::{Build, Message, Nonce, Proof};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The shared cluster secret: the first line of the secret file proves this node; every line
/// is accepted from peers, so a new secret can be rolled out without downtime (add it as a
/// second line everywhere, then make it the first, then drop the old one). Its Debug output
/// is redacted so it cannot reach a log line.
#[derive(Clone)]
pub struct Secret(Vec<Vec<u8>>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(vec![bytes.into()])
    }

    /// No secret file on an all-loopback cluster: handshakes still run, keyed by nothing.
    pub fn none() -> Self {
        Secret(vec![Vec::new()])
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Vec::is_empty)
    }

    fn current(&self) -> &[u8] {
        &self.0[0]
    }

    /// Reads the secret file: trailing whitespace is ignored, an empty file, or one that
    /// other users may read, is refused.
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let unreadable = |source| SecretError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(SecretError::WorldReadable(path.to_path_buf()));
        }
        let bytes = std::fs::read(path).map_err(unreadable)?;
        let lines: Vec<Vec<u8>> = (bytes.split(|&b| b == b'\n'))
            .map(|line| line.trim_ascii().to_vec())
            .filter(|line| !line.is_empty())
            .collect();
        if lines.is_empty() {
            return Err(SecretError::Empty(path.to_path_buf()));
        }
        Ok(Secret(lines))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: the cluster secret is world-readable; run chmod 0600 (or 0640 root:kai)", .0.display())]
    WorldReadable(std::path::PathBuf),
    #[error("{}: the cluster secret is empty", .0.display())]
    Empty(std::path::PathBuf),
}

/// Why the server side refuses a peer; its text is sent to the peer as `Refused`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("expected a handshake")]
    NotAHandshake,
    #[error(
        "no common peer protocol: the peer speaks {}..={}, this node {}..={}",
        theirs.0, theirs.1, ours.0, ours.1
    )]
    Protocol {
        theirs: (u32, u32),
        ours: (u32, u32),
    },
    #[error("cluster {theirs:?} is not {ours:?}")]
    Cluster { theirs: String, ours: String },
    #[error("expected a proof")]
    NotAProof,
    #[error("wrong cluster secret")]
    WrongSecret,
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer refused us: {0}")]
    Refused(String),
    #[error("{0}")]
    Rejected(String),
    #[error("peer closed the connection during the handshake")]
    Closed,
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl HandshakeError {
    /// A failure that says the two sides disagree on secret or cluster (worth one log
    /// line per peer), as opposed to a connection that simply broke.
    pub fn is_authentication(&self) -> bool {
        match self {
            HandshakeError::Refused(_) | HandshakeError::Rejected(_) => true,
            // A TLS 1.3 server checks our certificate after we think TLS is up: its
            // refusal arrives as the first read of the handshake.
            HandshakeError::Frame(FrameError::Io(err)) => crate::tls::is_tls_refusal(err),
            _ => false,
        }
    }
}

pub fn nonce() -> Nonce {
    rand::random()
}

fn mac(key: &[u8], role: &[u8], cluster: &str, theirs: &Nonce, ours: &Nonce) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(role);
    mac.update(&(cluster.len() as u32).to_be_bytes());
    mac.update(cluster.as_bytes());
    mac.update(theirs);
    mac.update(ours);
    mac
}

fn proof(secret: &Secret, role: &[u8], cluster: &str, theirs: &Nonce, ours: &Nonce) -> Proof {
    mac(secret.current(), role, cluster, theirs, ours)
        .finalize()
        .into_bytes()
        .into()
}

/// Constant-time check of a proof the other side sent, against every accepted secret.
fn verify(
    secret: &Secret,
    role: &[u8],
    cluster: &str,
    theirs: &Nonce,
    ours: &Nonce,
    claimed: &Proof,
) -> bool {
    (secret.0.iter()).any(|key| {
        mac(key, role, cluster, theirs, ours)
            .verify_slice(claimed)
            .is_ok()
    })
}

const SERVER: &[u8] = b"kai-server";
const CLIENT: &[u8] = b"kai-client";

/// One step of the handshake as seen by the server, so the transport stays outside.
pub struct ServerHandshake<'a> {
    pub secret: &'a Secret,
    pub cluster: &'a str,
    local: Build,
    nonce: Nonce,
    client_nonce: Option<Nonce>,
    pub peer: Option<String>,
    /// The protocol the connection speaks, and what the client said of its build.
    pub protocol: u32,
    pub peer_build: Option<Build>,
}

impl<'a> ServerHandshake<'a> {
    pub fn new(secret: &'a Secret, cluster: &'a str, local: Build) -> Self {
        ServerHandshake {
            secret,
            cluster,
            protocol: local.newest,
            local,
            nonce: nonce(),
            client_nonce: None,
            peer: None,
            peer_build: None,
        }
    }

    /// Answers the client's Hello with a Challenge carrying `now_us` (this node's wall
    /// clock), or an error to send as Refused.
    pub fn hello(&mut self, message: Message, now_us: u64) -> Result<Message, Refusal> {
        let Message::Hello {
            protocol: oldest,
            cluster,
            node,
            nonce,
            build,
        } = message
        else {
            return Err(Refusal::NotAHandshake);
        };
        // A Hello without a build comes from release 0.1.0, which speaks one protocol.
        let newest = build.as_ref().map_or(oldest, |b| b.newest);
        let chosen = newest.min(self.local.newest);
        if chosen < oldest.max(self.local.oldest) {
            return Err(Refusal::Protocol {
                theirs: (oldest, newest),
                ours: (self.local.oldest, self.local.newest),
            });
        }
        self.protocol = chosen;
        self.peer_build = build;
        if cluster != self.cluster {
            return Err(Refusal::Cluster {
                theirs: cluster,
                ours: self.cluster.to_string(),
            });
        }
        self.peer = Some(node);
        self.client_nonce = Some(nonce);
        Ok(Message::Challenge {
            nonce: self.nonce,
            proof: proof(self.secret, SERVER, self.cluster, &nonce, &self.nonce),
            now_us,
            protocol: chosen,
            build: Some(self.local.clone()),
        })
    }

    /// Checks the client's Proof.
    pub fn proof(&self, message: Message) -> Result<(), Refusal> {
        let (Message::Proof { proof }, Some(client_nonce)) = (message, self.client_nonce) else {
            return Err(Refusal::NotAProof);
        };
        if verify(
            self.secret,
            CLIENT,
            self.cluster,
            &self.nonce,
            &client_nonce,
            &proof,
        ) {
            Ok(())
        } else {
            Err(Refusal::WrongSecret)
        }
    }
}

/// The client's side: the Hello to send, then the Proof answering the server's Challenge.
pub struct ClientHandshake<'a> {
    secret: &'a Secret,
    cluster: &'a str,
    local: Build,
    nonce: Nonce,
}

impl<'a> ClientHandshake<'a> {
    pub fn new(secret: &'a Secret, cluster: &'a str, local: Build) -> Self {
        ClientHandshake {
            secret,
            cluster,
            local,
            nonce: nonce(),
        }
    }

    /// Offers the oldest protocol in `protocol` (all release 0.1.0 reads), the rest of
    /// the range in the build.
    pub fn hello(&self, node: &str) -> Message {
        Message::Hello {
            protocol: self.local.oldest,
            cluster: self.cluster.to_string(),
            node: node.to_string(),
            nonce: self.nonce,
            build: Some(self.local.clone()),
        }
    }

    pub fn challenge(&self, message: &Message) -> Result<Message, HandshakeError> {
        match message {
            Message::Challenge {
                nonce,
                proof: claimed,
                protocol,
                ..
            } => {
                if !(self.local.oldest..=self.local.newest).contains(protocol) {
                    return Err(HandshakeError::Rejected(format!(
                        "peer chose protocol {protocol}, outside this node's {}..={}",
                        self.local.oldest, self.local.newest
                    )));
                }
                if !verify(
                    self.secret,
                    SERVER,
                    self.cluster,
                    &self.nonce,
                    nonce,
                    claimed,
                ) {
                    return Err(HandshakeError::Rejected(
                        "peer does not know the cluster secret".into(),
                    ));
                }
                Ok(Message::Proof {
                    proof: proof(self.secret, CLIENT, self.cluster, nonce, &self.nonce),
                })
            }
            Message::Refused { reason } => Err(HandshakeError::Refused(reason.clone())),
            _ => Err(HandshakeError::Rejected(
                "unexpected handshake message".into(),
            )),
        }
    }
}

/// Plays `data` as the Hello and Proof of a peer that does not know the secret; true if the
/// server accepted it (which must never happen: its nonce is fresh). For the fuzz target and
/// its regression test.
pub fn forged_handshake_accepted(data: &[u8]) -> bool {
    let secret = Secret::new("a secret the peer does not know");
    let mut server = ServerHandshake::new(&secret, "kai", test_build(3, 4));
    let Ok((hello, rest)) = postcard::take_from_bytes::<Message>(data) else {
        return false;
    };
    if server.hello(hello, 0).is_err() {
        return false;
    }
    postcard::from_bytes::<Message>(rest).is_ok_and(|proof| server.proof(proof).is_ok())
}

/// A build speaking `oldest..=newest`, for tests and the fuzz helper.
pub fn test_build(oldest: u32, newest: u32) -> Build {
    Build {
        version: "test".into(),
        oldest,
        newest,
        capabilities: Vec::new(),
        finalized: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> Build {
        test_build(3, 4)
    }

    /// The handshake's failure as text, if it fails.
    fn run(client_secret: &str, server_secret: &str) -> Option<String> {
        let (cs, ss) = (Secret::new(client_secret), Secret::new(server_secret));
        let client = ClientHandshake::new(&cs, "kai", current());
        let mut server = ServerHandshake::new(&ss, "kai", current());
        let challenge = server.hello(client.hello("127.0.0.1:1"), 0).unwrap();
        let proof = match client.challenge(&challenge) {
            Ok(proof) => proof,
            Err(err) => return Some(err.to_string()),
        };
        server.proof(proof).err().map(|e| e.to_string())
    }

    #[test]
    fn same_secret_passes_and_wrong_secret_fails_on_both_sides() {
        assert_eq!(run("s3cret", "s3cret"), None);
        let err = run("wrong", "s3cret").unwrap();
        assert!(err.contains("does not know the cluster secret"), "{err}");
    }

    #[test]
    fn a_rotation_accepts_old_and_new_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            Secret::load(&path).unwrap()
        };
        let handshake = |client: &Secret, server: &Secret| {
            let hello = ClientHandshake::new(client, "kai", current());
            let mut accept = ServerHandshake::new(server, "kai", current());
            let challenge = accept.hello(hello.hello("a"), 0).unwrap();
            match hello.challenge(&challenge) {
                Ok(proof) => accept.proof(proof).is_ok(),
                Err(_) => false,
            }
        };
        // The rotation's steps, one node at a time: old; old + new accepted; new + old
        // accepted; new. Nodes one step apart always get in, both ways.
        let steps = [
            file("0", "old\n"),
            file("1", "old\nnew\n"),
            file("2", "new\nold\n"),
            file("3", "new\n"),
        ];
        for pair in steps.windows(2) {
            assert!(handshake(&pair[0], &pair[1]));
            assert!(handshake(&pair[1], &pair[0]));
        }
        assert!(!handshake(&steps[0], &steps[3]));
    }

    #[test]
    fn a_recorded_proof_cannot_be_replayed() {
        let secret = Secret::new("s3cret");
        let client = ClientHandshake::new(&secret, "kai", current());
        let mut first = ServerHandshake::new(&secret, "kai", current());
        let challenge = first.hello(client.hello("a"), 0).unwrap();
        let proof = client.challenge(&challenge).unwrap();
        let Message::Proof { proof: recorded } = proof else {
            panic!()
        };
        // A second connection gets a new server nonce: the old proof is worthless.
        let mut second = ServerHandshake::new(&secret, "kai", current());
        second.hello(client.hello("a"), 0).unwrap();
        assert!(second.proof(Message::Proof { proof: recorded }).is_err());
    }

    #[test]
    fn cluster_name_and_protocol_must_match() {
        let secret = Secret::new("s");
        let mut server = ServerHandshake::new(&secret, "prod", current());
        let err = server.hello(
            ClientHandshake::new(&secret, "test", current()).hello("a"),
            0,
        );
        assert!(matches!(err, Err(Refusal::Cluster { .. })));
        let hello = Message::Hello {
            protocol: 99,
            cluster: "prod".into(),
            node: "a".into(),
            nonce: [0; 32],
            build: None,
        };
        assert!(server
            .hello(hello, 0)
            .unwrap_err()
            .to_string()
            .contains("protocol"));
    }

    /// The pair speaks the highest protocol both have; a peer with none in common is
    /// refused with both ranges named.
    #[test]
    fn the_highest_common_protocol_is_chosen() {
        let secret = Secret::new("s");
        let chosen = |client: Build, server: Build| {
            let hello = ClientHandshake::new(&secret, "kai", client).hello("a");
            let mut accept = ServerHandshake::new(&secret, "kai", server);
            match accept.hello(hello, 0) {
                Ok(Message::Challenge { protocol, .. }) => Ok(protocol),
                Ok(other) => panic!("{other:?}"),
                Err(refusal) => Err(refusal.to_string()),
            }
        };
        assert_eq!(chosen(test_build(3, 4), test_build(3, 4)), Ok(4));
        assert_eq!(chosen(test_build(3, 5), test_build(3, 4)), Ok(4));
        assert_eq!(chosen(test_build(3, 4), test_build(4, 5)), Ok(4));
        assert_eq!(
            chosen(test_build(3, 3), test_build(4, 4)),
            Err("no common peer protocol: the peer speaks 3..=3, this node 4..=4".into())
        );
        // Release 0.1.0's Hello: protocol 3, no build.
        let mut accept = ServerHandshake::new(&secret, "kai", current());
        let old = Message::Hello {
            protocol: 3,
            cluster: "kai".into(),
            node: "a".into(),
            nonce: [0; 32],
            build: None,
        };
        assert!(accept.hello(old, 0).is_ok());
        assert_eq!((accept.protocol, accept.peer_build), (3, None));
        // A server that picks outside the client's range is not believed.
        let client = ClientHandshake::new(&secret, "kai", test_build(4, 4));
        let odd = Message::Challenge {
            nonce: [0; 32],
            proof: [0; 32],
            now_us: 0,
            protocol: 3,
            build: None,
        };
        assert!(client
            .challenge(&odd)
            .unwrap_err()
            .to_string()
            .contains("outside"));
    }

    #[test]
    fn secret_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Secret::load(&path)
            .unwrap_err()
            .to_string()
            .contains("world-readable"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Secret::load(&path).unwrap().0, vec![b"abc".to_vec()]);
        assert!(!format!("{:?}", Secret::load(&path).unwrap()).contains("abc"));
        std::fs::write(&path, "\n").unwrap();
        assert!(Secret::load(&path)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }
}

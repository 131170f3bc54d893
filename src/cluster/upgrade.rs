//! Mixed-version clusters (docs/design.md, "Upgrades"): what each peer told us of its build
//! in the handshake, which capabilities every active member supports, and the operator's
//! finalisation, after which the new on-disk formats are written and older peer protocols
//! are refused.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The newest peer protocol this release speaks; bumped on any incompatible change of these
/// messages. Each connection speaks the highest version both ends support (docs/design.md,
/// "Upgrades").
pub const PEER_PROTOCOL: u32 = 4;
/// The oldest it still speaks: release 0.1.0's (see `rpc::v3`).
pub const OLDEST_PEER_PROTOCOL: u32 = 3;

/// What a node tells each peer about itself in the handshake: the first-hand source of the
/// member versions `kai cluster status`, `stats` and `kai check cluster` show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// The release, as `kai --version` prints it.
    pub version: String,
    /// The peer protocols it accepts, oldest and newest.
    pub oldest: u32,
    pub newest: u32,
    /// What it supports beyond the protocol (docs/design.md, "Upgrades").
    pub capabilities: Vec<String>,
    /// The protocol the operator finalised (`kai cluster finalize`), 0 if none.
    pub finalized: u32,
}

/// What this release supports beyond the protocol. `meta-state`: records on the wire carry
/// meta's stale and recache-claim flags. The two formats are written only once finalised.
pub const CAPABILITIES: &[&str] = &["meta-state", "record-format-2", "side-files-2"];

/// The release 0.1.0 spoke only protocol 3 and sends no build: the version we report for it.
const PROTOCOL_3_RELEASE: &str = "0.1.0";

/// The disk record format to write once `finalized` is the finalised protocol: the
/// previous release's until the upgrade is final.
pub fn record_format(finalized: u32) -> u8 {
    if finalized >= PEER_PROTOCOL {
        crate::record::format::FORMAT
    } else {
        crate::record::format::LEGACY
    }
}

/// A peer as its handshake described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerBuild {
    /// The protocol the connection speaks.
    pub protocol: u32,
    pub build: Option<Build>,
}

impl PeerBuild {
    pub fn version(&self) -> &str {
        self.build
            .as_ref()
            .map_or(PROTOCOL_3_RELEASE, |b| b.version.as_str())
    }

    fn supports(&self, capability: &str) -> bool {
        (self.build.as_ref()).is_some_and(|b| b.capabilities.iter().any(|c| c == capability))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error("cannot finalise: {0} not upgraded (or not heard from yet); upgrade them first")]
    NotUpgraded(String),
    #[error("cannot record the finalisation in {}: {source}", path.display())]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
}

type Listener = Box<dyn Fn(u32) + Send + Sync>;

pub struct Upgrade {
    finalized: AtomicU32,
    path: Option<PathBuf>,
    peers: Mutex<HashMap<SocketAddr, PeerBuild>>,
    /// Since when the active members' versions have differed.
    mixed_since: Mutex<Option<Instant>>,
    on_finalize: Mutex<Vec<Listener>>,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("finalized", &self.finalized())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Upgrade {
    /// Reads the finalisation recorded in `path` ("finalized <protocol>"); none if absent.
    pub fn load(path: Option<PathBuf>) -> Upgrade {
        let finalized = (path.as_ref())
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| {
                let protocol = text.trim().strip_prefix("finalized ")?.parse::<u32>().ok();
                if protocol.is_none() {
                    log::warn!("ignoring a malformed upgrade file: {text:?}");
                }
                protocol
            })
            .unwrap_or(0);
        Upgrade {
            finalized: AtomicU32::new(finalized),
            path,
            peers: Mutex::new(HashMap::new()),
            mixed_since: Mutex::new(None),
            on_finalize: Mutex::new(Vec::new()),
        }
    }

    /// No side file: for the `kai cluster` client and tests.
    pub fn in_memory() -> Upgrade {
        Upgrade::load(None)
    }

    pub fn finalized(&self) -> u32 {
        self.finalized.load(Ordering::Acquire)
    }

    /// Whether the new on-disk formats may be written (rolling back is no longer possible).
    pub fn formats_final(&self) -> bool {
        self.finalized() >= PEER_PROTOCOL
    }

    /// Called now with the current finalisation and again whenever it changes.
    pub fn on_finalize(&self, listener: impl Fn(u32) + Send + Sync + 'static) {
        listener(self.finalized());
        lock(&self.on_finalize).push(Box::new(listener));
    }

    /// What this node tells peers in the handshake.
    pub fn local_build(&self) -> Build {
        let finalized = self.finalized();
        Build {
            version: env!("CARGO_PKG_VERSION").to_string(),
            oldest: OLDEST_PEER_PROTOCOL.max(finalized),
            newest: PEER_PROTOCOL,
            capabilities: CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            finalized,
        }
    }

    /// Records `protocol` as finalised (persisted before it takes effect); false if it
    /// already was. A protocol newer than this release's is refused.
    pub fn finalize(&self, protocol: u32) -> Result<bool, FinalizeError> {
        let protocol = protocol.min(PEER_PROTOCOL);
        if protocol <= self.finalized() {
            return Ok(false);
        }
        if let Some(path) = &self.path {
            let text = format!("finalized {protocol}\n");
            crate::durable::write_atomically(path, text.as_bytes()).map_err(|source| {
                FinalizeError::Persist {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        self.finalized.fetch_max(protocol, Ordering::AcqRel);
        log::info!("upgrade finalised: peer protocol {protocol}; older releases are refused");
        for listener in lock(&self.on_finalize).iter() {
            listener(protocol);
        }
        Ok(true)
    }

    /// What a handshake told us of `peer`. A finalisation it reports is adopted: the
    /// operator ran `kai cluster finalize` while this node was away.
    pub fn record_peer(&self, peer: SocketAddr, protocol: u32, build: Option<Build>) {
        let finalized = build.as_ref().map_or(0, |b| b.finalized);
        lock(&self.peers).insert(peer, PeerBuild { protocol, build });
        if finalized > self.finalized() {
            if let Err(err) = self.finalize(finalized) {
                log::warn!("{err}");
            }
        }
    }

    pub fn peer(&self, peer: SocketAddr) -> Option<PeerBuild> {
        lock(&self.peers).get(&peer).cloned()
    }

    /// `peer`'s release as last heard, "unknown" before its first handshake.
    pub fn version_of(&self, peer: SocketAddr) -> String {
        self.peer(peer)
            .map_or_else(|| "unknown".into(), |p| p.version().to_string())
    }

    /// The capabilities every one of `others` (the other active members) supports, with
    /// this node's: a member not heard from yet supports none.
    pub fn active_capabilities(&self, others: &[SocketAddr]) -> Vec<&'static str> {
        let peers = lock(&self.peers);
        (CAPABILITIES.iter().copied())
            .filter(|c| {
                others
                    .iter()
                    .all(|m| peers.get(m).is_some_and(|p| p.supports(c)))
            })
            .collect()
    }

    /// The other active members that do not speak this release's newest protocol.
    pub fn behind(&self, others: &[SocketAddr]) -> Vec<SocketAddr> {
        let peers = lock(&self.peers);
        (others.iter().copied())
            .filter(|m| {
                let newest = peers
                    .get(m)
                    .and_then(|p| p.build.as_ref())
                    .map(|b| b.newest);
                newest.is_none_or(|n| n < PEER_PROTOCOL)
            })
            .collect()
    }

    /// The distinct releases among this node and `others`, and for how long there has been
    /// more than one (zero while there is one). Members not heard from are left out.
    pub fn versions(&self, others: &[SocketAddr]) -> (BTreeSet<String>, Duration) {
        let mut versions = BTreeSet::from([env!("CARGO_PKG_VERSION").to_string()]);
        {
            let peers = lock(&self.peers);
            versions.extend(
                (others.iter())
                    .filter_map(|m| peers.get(m))
                    .map(|p| p.version().to_string()),
            );
        }
        let mut since = lock(&self.mixed_since);
        let mixed_for = if versions.len() > 1 {
            since.get_or_insert_with(Instant::now).elapsed()
        } else {
            *since = None;
            Duration::ZERO
        };
        (versions, mixed_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(version: &str, newest: u32, finalized: u32) -> Build {
        Build {
            version: version.into(),
            oldest: 3,
            newest,
            capabilities: if newest >= 4 {
                CAPABILITIES.iter().map(|c| c.to_string()).collect()
            } else {
                Vec::new()
            },
            finalized,
        }
    }

    #[test]
    fn capabilities_need_every_active_member_and_finalising_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade");
        let upgrade = Upgrade::load(Some(path.clone()));
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert_eq!(upgrade.active_capabilities(&[]), CAPABILITIES.to_vec());
        upgrade.record_peer(a, 4, Some(build("0.2.0", 4, 0)));
        upgrade.record_peer(b, 3, None);
        assert!(upgrade.active_capabilities(&[a, b]).is_empty());
        assert_eq!(upgrade.active_capabilities(&[a]), CAPABILITIES.to_vec());
        assert_eq!(upgrade.behind(&[a, b]), vec![b]);
        assert_eq!(upgrade.version_of(b), "0.1.0");
        let (versions, _) = upgrade.versions(&[a, b]);
        assert_eq!(versions.len(), 2, "{versions:?}");
        assert!(!upgrade.formats_final());
        assert_eq!(upgrade.local_build().oldest, 3);

        let seen = std::sync::Arc::new(AtomicU32::new(99));
        let heard = std::sync::Arc::clone(&seen);
        upgrade.on_finalize(move |p| heard.store(p, Ordering::SeqCst));
        assert_eq!(seen.load(Ordering::SeqCst), 0);
        assert!(upgrade.finalize(4).unwrap());
        assert!(!upgrade.finalize(4).unwrap());
        assert_eq!(seen.load(Ordering::SeqCst), 4);
        assert_eq!(upgrade.local_build().oldest, 4);
        assert!(
            Upgrade::load(Some(path)).formats_final(),
            "survives a restart"
        );
    }

    #[test]
    fn a_finalisation_heard_from_a_peer_is_adopted() {
        let upgrade = Upgrade::in_memory();
        upgrade.record_peer(
            "127.0.0.1:1".parse().unwrap(),
            4,
            Some(build("0.2.0", 4, 4)),
        );
        assert_eq!(upgrade.finalized(), 4);
    }
}

//! The kai.toml schema (docs/design.md, "Configuration"): every key, its type and its default.
//!
//! Every struct is `deny_unknown_fields` so a typo is an error, and `default` so a file
//! only needs the keys it changes.

use super::units::{ByteSize, Span};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub memcache: MemcacheSection,
    pub rpc: RpcSection,
    pub cluster: ClusterSection,
    pub store: StoreSection,
    pub log: LogSection,
    pub metrics: MetricsSection,
    pub daemon: DaemonSection,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    pub hostname: String,
    pub data_dir: PathBuf,
    /// Failure domain (rack, room, site); empty: none. Replicas spread over zones once
    /// every member declares one.
    pub zone: String,
}

impl NodeSection {
    pub fn zone_name(&self) -> Option<String> {
        (!self.zone.is_empty()).then(|| self.zone.clone())
    }
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            hostname: "127.0.0.1".into(),
            data_dir: "/var/lib/kai".into(),
            zone: String::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MemcacheSection {
    pub listen: String,
    pub max_connections: u32,
    pub max_item_size: ByteSize,
    pub idle_timeout: Span,
    pub request_timeout: Span,
    /// Client credentials, one `user:password` a line; empty: no authentication.
    pub auth_file: PathBuf,
    /// A second listener speaking TLS (memcached's `-Z`); empty: none.
    pub tls_listen: String,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// When set, TLS clients must show a certificate this CA signed.
    pub tls_ca: PathBuf,
}

impl Default for MemcacheSection {
    fn default() -> Self {
        MemcacheSection {
            listen: "127.0.0.1:11211".into(),
            max_connections: 1024,
            max_item_size: ByteSize(1 << 20),
            idle_timeout: Span(Duration::ZERO),
            request_timeout: Span(Duration::from_secs(30)),
            auth_file: PathBuf::new(),
            tls_listen: String::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_ca: PathBuf::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RpcSection {
    pub listen: String,
    pub max_connections: u32,
    pub timeout: Span,
    pub secret_file: PathBuf,
    pub tls: TlsMode,
    /// This node's certificate: it must name the node's rpc address (an IP SAN).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The cluster's CA: every peer's certificate must be signed by it.
    pub tls_ca: PathBuf,
}

/// Whether peer traffic is encrypted.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Off,
    /// Accepts TLS and plaintext, dials TLS (plaintext to a peer that does not speak it):
    /// the step between off and on in a rolling change.
    Transitional,
    On,
}

impl Default for RpcSection {
    fn default() -> Self {
        RpcSection {
            listen: "127.0.0.1:11011".into(),
            max_connections: 256,
            timeout: Span(Duration::from_secs(5)),
            secret_file: "/etc/kai/cluster.secret".into(),
            tls: TlsMode::Off,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_ca: PathBuf::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Quorum {
    pub n: u32,
    pub r: u32,
    pub w: u32,
}

impl Default for Quorum {
    fn default() -> Self {
        Quorum { n: 3, r: 2, w: 2 }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictResolution {
    LastWriteWins,
    Siblings,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Peers must present the same name in the rpc handshake (keeps a test cluster and a
    /// production cluster that share a secret apart).
    pub name: String,
    pub quorum: Quorum,
    pub buckets: u32,
    pub virtual_nodes: u32,
    pub seeds: Vec<String>,
    pub gossip_interval: Span,
    pub sync_interval: Span,
    pub sync_rate: ByteSize,
    pub tombstone_grace: Span,
    pub conflict_resolution: ConflictResolution,
    pub max_siblings: u32,
    /// A peer clock further off than this is logged as a warning; `kai check cluster`
    /// warns about it too.
    pub max_clock_skew: Span,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            name: "kai".into(),
            quorum: Quorum::default(),
            buckets: 1024,
            virtual_nodes: 128,
            seeds: Vec::new(),
            gossip_interval: Span(Duration::from_secs(1)),
            sync_interval: Span(Duration::from_secs(10)),
            sync_rate: ByteSize(20 << 20),
            tombstone_grace: Span(Duration::from_secs(3600)),
            conflict_resolution: ConflictResolution::LastWriteWins,
            max_siblings: 8,
            max_clock_skew: Span(Duration::from_secs(1)),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[serde(alias = "ets")]
    Memory,
    #[serde(alias = "dets")]
    Disk,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Memory => "memory",
            Engine::Disk => "disk",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Fsync,
    Periodic,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    pub engine: Engine,
    pub memory_limit: ByteSize,
    pub durability: Durability,
    pub flush_interval: Span,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            engine: Engine::Memory,
            memory_limit: ByteSize(0),
            durability: Durability::Fsync,
            flush_interval: Span(Duration::from_secs(1)),
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    Auto,
    Stderr,
    Syslog,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    pub target: LogTarget,
    pub level: LogLevel,
    pub facility: String,
    pub syslog_socket: PathBuf,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            target: LogTarget::Auto,
            level: LogLevel::Info,
            facility: "daemon".into(),
            syslog_socket: "/dev/log".into(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSection {
    pub pid_file: PathBuf,
    pub user: String,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            pid_file: "/run/kai/kai.pid".into(),
            user: String::new(),
        }
    }
}

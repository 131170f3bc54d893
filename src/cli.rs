//! Command-line interface.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "kai",
    version,
    about = "A Dynamo-style key/value store speaking the memcached protocol"
)]
pub struct Cli {
    /// Configuration file [default: /etc/kai/kai.toml if present, else embedded defaults]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// For `kai` with no subcommand, which serves like `kai serve`.
    #[command(flatten)]
    pub serve: ServeOptions,

    #[command(subcommand)]
    pub command: Option<Action>,
}

/// The options of a running node: only `kai` and `kai serve` take them.
#[derive(Args, Clone, Debug, Default)]
pub struct ServeOptions {
    /// Detach and run in the background (SysV init); the parent exits 0 once kai serves
    #[arg(long)]
    pub daemon: bool,

    /// Write and lock a pid file [default with --daemon: [daemon] pid_file]
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// When started as root, switch to this user after binding [default: [daemon] user]
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
}

impl ServeOptions {
    /// These options, completed by `other` where they say nothing.
    pub fn or(self, other: ServeOptions) -> ServeOptions {
        ServeOptions {
            daemon: self.daemon || other.daemon,
            pid_file: self.pid_file.or(other.pid_file),
            user: self.user.or(other.user),
        }
    }
}

#[derive(Subcommand)]
pub enum Action {
    /// Run a node in the foreground (the default)
    Serve(ServeOptions),
    /// Configuration tools
    #[command(subcommand)]
    Config(ConfigAction),
    /// Show the stats of one or more nodes (table, JSON, cacti line, or live rates)
    Stats {
        /// Node to ask, host:port of its memcache listener (repeatable)
        #[arg(
            long = "host",
            short = 'H',
            value_name = "HOST:PORT",
            default_value = "127.0.0.1:11211"
        )]
        hosts: Vec<String>,
        /// Print JSON: {"host": {"stat": value}}
        #[arg(long, conflicts_with_all = ["cacti", "watch"])]
        json: bool,
        /// Print cacti's data input line (name:value ...) for the first host
        #[arg(long, conflicts_with = "watch")]
        cacti: bool,
        /// Refresh every SECS seconds with per-second rates
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
        /// With --watch: stop after N refreshes
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
        /// Seconds to wait for each node
        #[arg(long, short = 't', default_value_t = 10)]
        timeout: u64,
    },
    /// Nagios/Icinga plugin: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    #[command(subcommand)]
    Check(CheckAction),
    /// Cluster membership: status, join, leave, remove, inspect
    #[command(subcommand)]
    Cluster(ClusterAction),
    /// Disk store maintenance on a stopped node's data_dir; backup of a running node
    #[command(subcommand)]
    Store(StoreAction),
}

#[derive(Subcommand)]
pub enum StoreAction {
    /// Verify the database (checksums, records decodable) and print its counts
    Check {
        /// Data directory [default: node.data_dir of the configuration]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Reclaim free space in the database file
    Compact {
        /// Data directory [default: node.data_dir of the configuration]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Write every version of every key a running node holds (siblings, clocks,
    /// tombstones) to a backup file
    Backup {
        /// The backup file to write (replaced atomically once complete)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Node to back up, host:port of its rpc listener [default: the local node]
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
    /// Merge a backup file into a stopped node's disk store; its next start repairs the
    /// restored buckets with anti-entropy at once
    Restore {
        /// The backup file
        file: PathBuf,
        /// Data directory [default: node.data_dir of the configuration]
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ClusterAction {
    /// Members with up/suspect/down/left, owned buckets and pending hints
    Status {
        /// Node to ask, host:port of its memcache listener
        #[arg(
            long = "host",
            short = 'H',
            value_name = "HOST:PORT",
            default_value = "127.0.0.1:11211"
        )]
        host: String,
        /// Seconds to wait for the node
        #[arg(long, short = 't', default_value_t = 10)]
        timeout: u64,
    },
    /// Make the local node (per --config) join the cluster of the node at HOST:PORT (rpc)
    Join {
        #[arg(value_name = "HOST:PORT")]
        seed: String,
    },
    /// Take the local node out of the cluster
    Leave,
    /// Remove a member (rpc host:port) from the cluster, e.g. a dead machine
    Remove {
        #[arg(value_name = "HOST:PORT")]
        node: String,
    },
    /// Finish a rolling upgrade once every member runs this release: new on-disk formats
    /// are written from then on and older releases are refused (no rolling back)
    Finalize,
    /// Show the versions of KEY that one node holds (its own replica, no quorum)
    Inspect {
        key: String,
        /// Node to ask, host:port of its rpc listener [default: the local node]
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
    /// Show the anti-entropy digest of every bucket one node owns (replicas that agree
    /// print the same digest for a bucket)
    Digests {
        /// Node to ask, host:port of its rpc listener [default: the local node]
        #[arg(long, value_name = "HOST:PORT")]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum CheckAction {
    /// The node answers stats in time; thresholds apply to its client connections
    Node {
        /// Host of the memcache listener, as host or host:port
        #[arg(short = 'H', long = "hostname", default_value = "127.0.0.1")]
        host: String,
        /// Port of the memcache listener, for a host given without one [default: 11211]
        #[arg(short = 'p', long)]
        port: Option<u16>,
        /// Seconds before giving up (CRITICAL)
        #[arg(short = 't', long, default_value_t = 10)]
        timeout: u64,
        /// Warning range for open client connections (Nagios range syntax)
        #[arg(short = 'w', long, value_name = "RANGE")]
        warning: Option<String>,
        /// Critical range for open client connections (Nagios range syntax)
        #[arg(short = 'c', long, value_name = "RANGE")]
        critical: Option<String>,
    },
    /// Every listed node answers and all agree on the member list
    Cluster {
        /// Node to ask, host or host:port of its memcache listener (repeatable)
        #[arg(
            long = "host",
            short = 'H',
            value_name = "HOST[:PORT]",
            required = true
        )]
        hosts: Vec<String>,
        /// Port of the memcache listener, for hosts given without one [default: 11211]
        #[arg(short = 'p', long)]
        port: Option<u16>,
        /// CRITICAL when fewer members are up
        #[arg(long, value_name = "N", default_value_t = 1)]
        expect_members: usize,
        /// WARNING when more writes than this wait for hinted handoff (all hosts together)
        #[arg(long, value_name = "N", default_value_t = 1000)]
        warn_hints: u64,
        /// WARNING when more buckets than this wait for anti-entropy or an ownership move
        /// (all hosts together)
        #[arg(long, value_name = "N", default_value_t = 100)]
        warn_sync: u64,
        /// WARNING when a node measures a member's clock further off than this many
        /// milliseconds [default: each node's own cluster.max_clock_skew]
        #[arg(long, value_name = "MS")]
        warn_skew: Option<u64>,
        /// WARNING when the members have run different releases for longer than this many
        /// seconds (a rolling upgrade left half done)
        #[arg(long, value_name = "SECS", default_value_t = 3600)]
        warn_version_mix: u64,
        /// Seconds to wait for each node
        #[arg(short = 't', long, default_value_t = 10)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration and print the effective result (exit 0 valid, 2 invalid)
    Check {
        /// File to check [default: --config, else /etc/kai/kai.toml]
        file: Option<PathBuf>,
    },
}

/// A Nagios-style target: `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address;
/// `port` (from -p) applies when the host names none.
pub fn nagios_target(host: &str, port: Option<u16>) -> String {
    let port = port.unwrap_or(11211);
    let has_port = match host.rsplit_once(':') {
        Some((name, digits)) => {
            !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        host.to_string()
    } else if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::nagios_target;
    use clap::CommandFactory;

    #[test]
    fn nagios_targets_take_either_form() {
        assert_eq!(nagios_target("127.0.0.1", None), "127.0.0.1:11211");
        assert_eq!(nagios_target("127.0.0.1", Some(11311)), "127.0.0.1:11311");
        assert_eq!(nagios_target("127.0.0.1:11311", None), "127.0.0.1:11311");
        assert_eq!(nagios_target("cache1", Some(1)), "cache1:1");
        assert_eq!(nagios_target("::1", None), "[::1]:11211");
        assert_eq!(nagios_target("[::1]:5", None), "[::1]:5");
        assert_eq!(nagios_target("[::1]", Some(6)), "[::1]:6");
    }

    #[test]
    fn serve_flags_belong_to_serving_only() {
        use clap::Parser;
        let parse = |args: &[&str]| super::Cli::try_parse_from(args);
        assert!(parse(&["kai", "--daemon", "--pid-file", "/run/kai/kai.pid"]).is_ok());
        assert!(parse(&["kai", "serve", "--daemon", "--user", "kai"]).is_ok());
        assert!(parse(&["kai", "stats", "--daemon"]).is_err());
        assert!(parse(&["kai", "check", "node", "--user", "kai"]).is_err());
        assert!(parse(&["kai", "--config", "/etc/kai/kai.toml", "stats"]).is_ok());
        assert!(parse(&["kai", "check", "cluster", "-H", "a", "-H", "b:1", "-p", "5"]).is_ok());
        assert!(parse(&["kai", "check", "node", "-H", "a:11311"]).is_ok());
    }

    /// clap checks option clashes (a global `-c` against `kai check -c`) only when asked.
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

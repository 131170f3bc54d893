//! Semantic checks that serde cannot express: ranges, powers of two, address syntax.

use super::schema::{Config, Engine, TlsMode};

/// Largest item kai accepts: a replica must fit in one RPC frame (64 MiB) with room to spare.
pub const MAX_ITEM_SIZE_LIMIT: u64 = 32 << 20;
const MIN_ITEM_SIZE: u64 = 1024;
const MAX_BUCKETS: u32 = 1 << 20;

pub struct Problem {
    pub key: String,
    pub reason: String,
}

fn problem(key: &str, reason: impl Into<String>) -> Problem {
    Problem {
        key: key.to_string(),
        reason: reason.into(),
    }
}

pub fn check(config: &Config, warnings: &mut Vec<String>) -> Result<(), Problem> {
    if config.node.hostname.trim().is_empty() {
        return Err(problem("node.hostname", "must not be empty"));
    }
    let zone = &config.node.zone;
    let zone_char = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if zone.len() > 64 || !zone.chars().all(zone_char) {
        return Err(problem(
            "node.zone",
            format!("{zone:?}: a zone is up to 64 letters, digits, '.', '_' or '-'"),
        ));
    }
    check_address("memcache.listen", &config.memcache.listen)?;
    check_address("rpc.listen", &config.rpc.listen)?;
    check_tls(config)?;
    if !config.metrics.listen.is_empty() {
        check_address("metrics.listen", &config.metrics.listen)?;
    }
    for seed in &config.cluster.seeds {
        check_address("cluster.seeds", seed)?;
    }
    if config.memcache.max_connections == 0 {
        return Err(problem("memcache.max_connections", "must be at least 1"));
    }
    if config.rpc.max_connections == 0 {
        return Err(problem("rpc.max_connections", "must be at least 1"));
    }
    let item = config.memcache.max_item_size.0;
    if !(MIN_ITEM_SIZE..=MAX_ITEM_SIZE_LIMIT).contains(&item) {
        return Err(problem(
            "memcache.max_item_size",
            format!("{item} bytes is out of range: must be between 1KiB and 32MiB"),
        ));
    }
    if config.rpc.timeout.is_zero() {
        return Err(problem("rpc.timeout", "must be greater than zero"));
    }

    let cluster = &config.cluster;
    let q = cluster.quorum;
    if q.n == 0 {
        return Err(problem("cluster.quorum.n", "n must be at least 1"));
    }
    if q.r == 0 || q.r > q.n {
        return Err(problem(
            "cluster.quorum.r",
            format!(
                "r = {} is out of range: must satisfy 1 <= r <= n (n = {})",
                q.r, q.n
            ),
        ));
    }
    if q.w == 0 || q.w > q.n {
        return Err(problem(
            "cluster.quorum.w",
            format!(
                "w = {} is out of range: must satisfy 1 <= w <= n (n = {})",
                q.w, q.n
            ),
        ));
    }
    if q.r + q.w <= q.n {
        warnings.push(format!(
            "cluster.quorum: r + w <= n ({} + {} <= {}): reads may miss the latest write",
            q.r, q.w, q.n
        ));
    }
    if !cluster.buckets.is_power_of_two() || cluster.buckets > MAX_BUCKETS {
        return Err(problem(
            "cluster.buckets",
            format!(
                "{} is not a power of two between 1 and {MAX_BUCKETS}; the nearest is {}",
                cluster.buckets,
                nearest_power_of_two(cluster.buckets)
            ),
        ));
    }
    if !(1..=u16::MAX as u32).contains(&cluster.virtual_nodes) {
        return Err(problem(
            "cluster.virtual_nodes",
            "must be between 1 and 65535",
        ));
    }
    if cluster.gossip_interval.is_zero() {
        return Err(problem(
            "cluster.gossip_interval",
            "must be greater than zero",
        ));
    }
    if cluster.sync_interval.is_zero() {
        return Err(problem(
            "cluster.sync_interval",
            "must be greater than zero",
        ));
    }
    if cluster.sync_rate.0 == 0 {
        return Err(problem("cluster.sync_rate", "must be greater than zero"));
    }
    if cluster.max_clock_skew.is_zero() {
        return Err(problem(
            "cluster.max_clock_skew",
            "must be greater than zero",
        ));
    }
    if !(1..=64).contains(&cluster.max_siblings) {
        return Err(problem("cluster.max_siblings", "must be between 1 and 64"));
    }
    if config.store.flush_interval.is_zero() {
        return Err(problem("store.flush_interval", "must be greater than zero"));
    }
    if config.store.engine == Engine::Memory
        && config.store.memory_limit.0 != 0
        && config.store.memory_limit.0 < config.memcache.max_item_size.0
    {
        return Err(problem(
            "store.memory_limit",
            "must be 0 (unlimited) or at least memcache.max_item_size",
        ));
    }
    if !FACILITIES.contains(&config.log.facility.as_str()) {
        return Err(problem(
            "log.facility",
            format!(
                "unknown facility {:?}; one of: {}",
                config.log.facility,
                FACILITIES.join(", ")
            ),
        ));
    }
    Ok(())
}

/// TLS needs its files named; they are read (and their errors reported) when kai starts.
fn check_tls(config: &Config) -> Result<(), Problem> {
    let required = |key: &str, path: &std::path::Path, why: &str| {
        if path.as_os_str().is_empty() {
            Err(problem(key, format!("must name a PEM file when {why}")))
        } else {
            Ok(())
        }
    };
    let rpc = &config.rpc;
    if rpc.tls != TlsMode::Off {
        let why = "rpc.tls is \"transitional\" or \"on\"";
        required("rpc.tls_cert", &rpc.tls_cert, why)?;
        required("rpc.tls_key", &rpc.tls_key, why)?;
        required("rpc.tls_ca", &rpc.tls_ca, why)?;
    }
    let memcache = &config.memcache;
    if !memcache.tls_listen.is_empty() {
        check_address("memcache.tls_listen", &memcache.tls_listen)?;
        if memcache.tls_listen == memcache.listen && !memcache.listen.ends_with(":0") {
            return Err(problem(
                "memcache.tls_listen",
                "must differ from memcache.listen",
            ));
        }
        let why = "memcache.tls_listen is set";
        required("memcache.tls_cert", &memcache.tls_cert, why)?;
        required("memcache.tls_key", &memcache.tls_key, why)?;
    }
    Ok(())
}

pub const FACILITIES: &[&str] = &[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
];

fn nearest_power_of_two(n: u32) -> u32 {
    if n >= MAX_BUCKETS {
        return MAX_BUCKETS;
    }
    if n <= 1 {
        return 1;
    }
    let upper = n.next_power_of_two();
    let lower = upper / 2;
    if n - lower < upper - n {
        lower
    } else {
        upper
    }
}

/// "host:port" or "[v6]:port"; the host is resolved when the listener binds.
fn check_address(key: &str, text: &str) -> Result<(), Problem> {
    if text.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || {
        problem(
            key,
            format!("{text:?} is not an address of the form host:port"),
        )
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(':') || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    port.parse::<u16>().map(|_| ()).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::nearest_power_of_two;

    #[test]
    fn nearest() {
        assert_eq!(nearest_power_of_two(1000), 1024);
        assert_eq!(nearest_power_of_two(1400), 1024);
        assert_eq!(nearest_power_of_two(1600), 2048);
        assert_eq!(nearest_power_of_two(5), 4);
        assert_eq!(nearest_power_of_two(0), 1);
        assert_eq!(nearest_power_of_two(u32::MAX), 1 << 20);
    }
}

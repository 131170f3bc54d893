//! A minimal blocking memcached-protocol client for the admin tools: fetch `stats`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The `stats` of one node, in the order it reported them.
pub type Stats = Vec<(String, String)>;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}: cannot resolve the address")]
    Resolve(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: unexpected reply {1:?}")]
    Protocol(String, String),
}

/// Sends `stats` to `host` ("host:port") and reads the reply, all within `timeout`.
pub fn fetch_stats(host: &str, timeout: Duration) -> Result<Stats, FetchError> {
    fetch(host, "stats", timeout)
}

/// Sends a `stats` command (`stats`, `stats cluster`, …) and reads its STAT lines.
pub fn fetch(host: &str, command: &str, timeout: Duration) -> Result<Stats, FetchError> {
    let deadline = Instant::now() + timeout;
    let io = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            FetchError::Timeout(host.to_string(), timeout)
        } else {
            FetchError::Io(host.to_string(), e)
        }
    };
    let addr = (host
        .to_socket_addrs()
        .map_err(|_| FetchError::Resolve(host.into()))?)
    .next()
    .ok_or_else(|| FetchError::Resolve(host.into()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .map_err(io)?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 8192];
    while !reply.ends_with(b"END\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FetchError::Timeout(host.to_string(), timeout));
        }
        stream.set_read_timeout(Some(left)).map_err(io)?;
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 || reply.len() > 1 << 20 {
            let text = String::from_utf8_lossy(&reply).into_owned();
            return Err(FetchError::Protocol(host.to_string(), text));
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    let mut stats = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("STAT ") {
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            stats.push((name.to_string(), value.to_string()));
        } else if line != "END" {
            return Err(FetchError::Protocol(host.to_string(), line.to_string()));
        }
    }
    Ok(stats)
}

/// Looks up one stat by name.
pub fn stat<'a>(stats: &'a Stats, name: &str) -> Option<&'a str> {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

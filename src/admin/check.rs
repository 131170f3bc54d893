//! `kai check`: a Nagios/Icinga plugin (monitoring plugins guidelines). One status line,
//! `|` perfdata, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
//!
//! `node` checks that one node answers `stats`; `cluster` checks that every listed node
//! answers and that they agree on the member list — a node that dropped out of the cluster
//! but still answers clients is the split-brain the original Kai's operators met.

use super::client::{fetch_stats, stat};
use super::range::Range;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// The plugin's verdict: exit status and the line to print.
pub struct Verdict {
    pub status: Status,
    pub line: String,
}

fn verdict(status: Status, text: &str, perfdata: &str) -> Verdict {
    let mut line = format!("KAI {} - {text}", status.word());
    if !perfdata.is_empty() {
        line.push_str(" | ");
        line.push_str(perfdata);
    }
    Verdict { status, line }
}

pub fn unknown(text: &str) -> Verdict {
    verdict(Status::Unknown, text, "")
}

fn number(stats: &super::client::Stats, name: &str) -> f64 {
    stat(stats, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `kai check node`: the node answers `stats` within the timeout; `-w`/`-c` apply to its
/// open client connections.
pub fn node(
    host: &str,
    timeout: Duration,
    warning: Option<&str>,
    critical: Option<&str>,
) -> Verdict {
    let parse = |t: Option<&str>| t.map(Range::parse).transpose();
    let (warning, critical) = match (parse(warning), parse(critical)) {
        (Ok(w), Ok(c)) => (w, c),
        (Err(e), _) | (_, Err(e)) => return unknown(&e),
    };
    let stats = match fetch_stats(host, timeout) {
        Ok(stats) => stats,
        Err(e) => return verdict(Status::Critical, &format!("cannot get stats: {e}"), ""),
    };
    let connections = number(&stats, "curr_connections");
    let max = number(&stats, "max_connections");
    let items = number(&stats, "curr_items");
    let bytes = number(&stats, "bytes");
    let (hits, misses) = (number(&stats, "get_hits"), number(&stats, "get_misses"));
    let ratio = if hits + misses > 0.0 {
        hits / (hits + misses)
    } else {
        1.0
    };
    let status = if critical.is_some_and(|r| r.alerts(connections)) {
        Status::Critical
    } else if warning.is_some_and(|r| r.alerts(connections)) {
        Status::Warning
    } else {
        Status::Ok
    };
    let range_text = |r: Option<Range>| r.map(|r| r.text()).unwrap_or_default();
    let perfdata = format!(
        "connections={connections};{};{};0;{max} items={items};;;0; bytes={bytes}B;;;0; hit_ratio={ratio:.3};;;0;1",
        range_text(warning),
        range_text(critical),
    );
    let text = format!(
        "{} ({}) up {}s, {connections} of {max} connections, {items} items",
        host,
        stat(&stats, "kai_node").unwrap_or("?"),
        stat(&stats, "uptime").unwrap_or("?"),
    );
    verdict(status, &text, &perfdata)
}

/// `kai check cluster`: every host answers, all agree on the member list, and at least
/// `expect_members` members are up.
pub fn cluster(hosts: &[String], expect_members: usize, timeout: Duration) -> Verdict {
    if hosts.is_empty() {
        return unknown("no --host given");
    }
    let mut views = Vec::new();
    let mut unreachable = Vec::new();
    for host in hosts {
        match fetch_stats(host, timeout) {
            Ok(stats) => views.push((host, stats)),
            Err(e) => unreachable.push(e.to_string()),
        }
    }
    let members = |stats: &super::client::Stats| -> Vec<String> {
        let list = stat(stats, "kai_curr_nodes").unwrap_or("");
        list.split_whitespace().map(str::to_string).collect()
    };
    let up = views.first().map_or(0, |(_, stats)| members(stats).len());
    let perfdata = format!(
        "members={up};;{expect_members}:;0; reachable={};;;0;{}",
        views.len(),
        hosts.len()
    );
    if !unreachable.is_empty() {
        let text = format!("unreachable: {}", unreachable.join("; "));
        return verdict(Status::Critical, &text, &perfdata);
    }
    let first = &views[0];
    let digest =
        |stats: &super::client::Stats| stat(stats, "kai_ring_digest").unwrap_or("").to_string();
    let disagreeing: Vec<String> = views
        .iter()
        .filter(|(_, stats)| digest(stats) != digest(&first.1))
        .map(|(host, stats)| format!("{host} sees [{}]", members(stats).join(" ")))
        .collect();
    if !disagreeing.is_empty() {
        let text = format!(
            "nodes disagree on membership (split brain?): {} sees [{}], {}",
            first.0,
            members(&first.1).join(" "),
            disagreeing.join(", ")
        );
        return verdict(Status::Critical, &text, &perfdata);
    }
    if up < expect_members {
        let text = format!(
            "only {up} of {expect_members} expected members up: {}",
            members(&first.1).join(" ")
        );
        return verdict(Status::Critical, &text, &perfdata);
    }
    let text = format!("{} nodes agree on {up} members up", views.len());
    verdict(Status::Ok, &text, &perfdata)
}

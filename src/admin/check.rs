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
    let joining = stat(&stats, "kai_cluster_state") == Some("joining");
    let write_errors = number(&stats, "kai_store_write_errors");
    let write_failing = stat(&stats, "kai_store_write_failing") == Some("1");
    let status = if joining || write_failing || critical.is_some_and(|r| r.alerts(connections)) {
        Status::Critical
    } else if warning.is_some_and(|r| r.alerts(connections)) {
        Status::Warning
    } else {
        Status::Ok
    };
    let range_text = |r: Option<Range>| r.map(|r| r.text()).unwrap_or_default();
    let perfdata = format!(
        "connections={connections};{};{};0;{max} items={items};;;0; bytes={bytes}B;;;0; hit_ratio={ratio:.3};;;0;1 store_write_errors={write_errors}c;;;0;",
        range_text(warning),
        range_text(critical),
    );
    let not_joined = if joining {
        "not joined (no seed has answered; client requests refused), "
    } else {
        ""
    };
    let failing = if write_failing {
        "store writes failing (full or failing disk; see the node's log), "
    } else {
        ""
    };
    let text = format!(
        "{not_joined}{failing}{} ({}) up {}s, {connections} of {max} connections, {items} items",
        host,
        stat(&stats, "kai_node").unwrap_or("?"),
        stat(&stats, "uptime").unwrap_or("?"),
    );
    verdict(status, &text, &perfdata)
}

/// What `kai check cluster` alerts on.
pub struct ClusterLimits {
    /// CRITICAL below this many members up.
    pub expect_members: usize,
    /// WARNING above this many writes waiting for hinted handoff (all hosts together).
    pub warn_hints: u64,
    /// WARNING above this many buckets waiting for anti-entropy or a move (all hosts).
    pub warn_sync: u64,
    /// WARNING when a node's largest member clock offset exceeds this (None: the limit
    /// each node reports, its `cluster.max_clock_skew`).
    pub warn_skew_ms: Option<u64>,
    /// WARNING when members have run different releases for longer (seconds).
    pub warn_version_mix_secs: u64,
}

/// `kai check cluster`: every host answers, all agree on the member list and on who is up,
/// enough members are up, and the hint and sync backlogs stay under their thresholds.
pub fn cluster(hosts: &[String], limits: &ClusterLimits, timeout: Duration) -> Verdict {
    let ClusterLimits {
        expect_members,
        warn_hints,
        warn_sync,
        warn_skew_ms,
        warn_version_mix_secs,
    } = *limits;
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
    let members = |stats: &super::client::Stats| -> String {
        stat(stats, "kai_curr_nodes").unwrap_or("").to_string()
    };
    // What a node believes: the member list (digest) and who is up. Nodes that agree have
    // the same view; an isolated node that still serves clients has another.
    let view = |stats: &super::client::Stats| {
        (
            stat(stats, "kai_ring_digest").unwrap_or("").to_string(),
            members(stats),
        )
    };
    let mut counts: Vec<((String, String), usize)> = Vec::new();
    for (_, stats) in &views {
        let v = view(stats);
        match counts.iter_mut().find(|(known, _)| *known == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let majority = counts
        .iter()
        .max_by_key(|(_, n)| *n)
        .map(|(v, _)| v.clone());
    let up = majority
        .as_ref()
        .map_or(0, |(_, m)| m.split_whitespace().count());
    let total = |name: &str| -> u64 {
        (views.iter())
            .filter_map(|(_, stats)| stat(stats, name)?.parse::<u64>().ok())
            .sum()
    };
    let hints = total("kai_pending_hints");
    let sync = total("kai_sync_pending_buckets");
    // Nodes whose clocks disagree with a member's by more than the limit, as text.
    let mut skewed = Vec::new();
    let mut max_skew = 0;
    for (host, stats) in &views {
        let skew = number(stats, "kai_max_clock_offset_ms") as u64;
        max_skew = max_skew.max(skew);
        let limit = warn_skew_ms
            .or_else(|| stat(stats, "kai_max_clock_skew_ms").and_then(|v| v.parse().ok()));
        if limit.is_some_and(|limit| skew > limit) {
            skewed.push(format!(
                "{host} measures [{}]",
                stat(stats, "kai_clock_offsets").unwrap_or("")
            ));
        }
    }
    // The releases the nodes report, and the longest any has seen them differ.
    let mut releases = std::collections::BTreeSet::new();
    let mut mixed_for = 0;
    for (_, stats) in &views {
        let versions = stat(stats, "kai_member_versions").unwrap_or("");
        releases.extend(
            versions
                .split(',')
                .filter(|v| !v.is_empty())
                .map(str::to_string),
        );
        mixed_for = mixed_for.max(number(stats, "kai_version_mix_secs") as u64);
    }
    let skew_threshold = warn_skew_ms.map(|w| w.to_string()).unwrap_or_default();
    let perfdata = format!(
        "members={up};;{expect_members}:;0; reachable={};;;0;{} hints={hints};{warn_hints};;0; sync_buckets={sync};{warn_sync};;0; clock_skew={max_skew}ms;{skew_threshold};;0; version_mix={mixed_for}s;{warn_version_mix_secs};;0;",
        views.len(),
        hosts.len()
    );
    if !unreachable.is_empty() {
        let text = format!("unreachable: {}", unreachable.join("; "));
        return verdict(Status::Critical, &text, &perfdata);
    }
    let majority = majority.expect("at least one view");
    let outliers: Vec<String> = (views.iter())
        .filter(|(_, stats)| view(stats) != majority)
        .map(|(host, stats)| {
            format!(
                "{host} ({}) sees [{}]",
                stat(stats, "kai_node").unwrap_or("?"),
                members(stats)
            )
        })
        .collect();
    if !outliers.is_empty() {
        let text = format!(
            "nodes disagree on membership (split brain?): {}; the others see [{}]",
            outliers.join(", "),
            majority.1
        );
        return verdict(Status::Critical, &text, &perfdata);
    }
    if up < expect_members {
        let text = format!(
            "only {up} of {expect_members} expected members up: {}",
            majority.1
        );
        return verdict(Status::Critical, &text, &perfdata);
    }
    if hints > warn_hints {
        let text = format!("{hints} writes wait for hinted handoff (more than {warn_hints})");
        return verdict(Status::Warning, &text, &perfdata);
    }
    if sync > warn_sync {
        let text = format!(
            "{sync} buckets wait for anti-entropy or an ownership move (more than {warn_sync})"
        );
        return verdict(Status::Warning, &text, &perfdata);
    }
    if !skewed.is_empty() {
        let text = format!(
            "clocks disagree by up to {max_skew} ms (check NTP): {} (member=ms, + ahead)",
            skewed.join("; ")
        );
        return verdict(Status::Warning, &text, &perfdata);
    }
    if releases.len() > 1 && mixed_for > warn_version_mix_secs {
        let releases: Vec<String> = releases.into_iter().collect();
        let text = format!(
            "members have run different releases ({}) for {mixed_for} s (more than \
             {warn_version_mix_secs}): finish the rolling upgrade, then kai cluster finalize",
            releases.join(", ")
        );
        return verdict(Status::Warning, &text, &perfdata);
    }
    let text = format!("{} nodes agree on {up} members up", views.len());
    verdict(Status::Ok, &text, &perfdata)
}

//! `kai stats`: the `stats` of one or many nodes as a table (a column per node), JSON,
//! cacti's `name:value` line, or a refreshing view of per-second rates.

use super::client::{fetch_stats, stat, Stats};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// The fields Kai's cacti templates graph (data template "Kai").
pub const CACTI_FIELDS: &[&str] = &[
    "bytes",
    "curr_items",
    "cmd_get",
    "cmd_set",
    "bytes_read",
    "bytes_write",
];

/// Fields shown with per-second rates by `--watch`.
const WATCH_FIELDS: &[&str] = &[
    "cmd_get",
    "cmd_set",
    "get_hits",
    "get_misses",
    "bytes_read",
    "bytes_write",
    "curr_connections",
    "curr_items",
];

pub enum Format {
    Table,
    Json,
    Cacti,
}

/// Fetches every host's stats; returns the text to print, or an error naming the host.
pub fn report(hosts: &[String], format: Format, timeout: Duration) -> Result<String, String> {
    let mut all = Vec::new();
    for host in hosts {
        all.push((
            host.clone(),
            fetch_stats(host, timeout).map_err(|e| e.to_string())?,
        ));
    }
    Ok(match format {
        Format::Table => table(&all),
        Format::Json => json(&all),
        Format::Cacti => cacti(&all[0].1),
    })
}

fn table(all: &[(String, Stats)]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for (_, stats) in all {
        for (name, _) in stats {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    let width = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
    let column = |i: usize| {
        let host_width = all[i].0.len();
        let value_width = all[i].1.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        host_width.max(value_width)
    };
    let mut out = format!("{:<width$}", "stat");
    for (i, (host, _)) in all.iter().enumerate() {
        let _ = write!(out, "  {host:>w$}", w = column(i));
    }
    out.push('\n');
    for name in names {
        let _ = write!(out, "{name:<width$}");
        for (i, (_, stats)) in all.iter().enumerate() {
            let _ = write!(
                out,
                "  {:>w$}",
                stat(stats, name).unwrap_or("-"),
                w = column(i)
            );
        }
        out.push('\n');
    }
    out
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `{"host": {"stat": value, …}, …}`; integers as numbers, everything else as strings.
fn json(all: &[(String, Stats)]) -> String {
    let nodes: Vec<String> = all
        .iter()
        .map(|(host, stats)| {
            let fields: Vec<String> = stats
                .iter()
                .map(|(name, value)| {
                    let value = match value.parse::<u64>() {
                        Ok(number) => number.to_string(),
                        Err(_) => json_string(value),
                    };
                    format!("{}:{value}", json_string(name))
                })
                .collect();
            format!("{}:{{{}}}", json_string(host), fields.join(","))
        })
        .collect();
    format!("{{{}}}\n", nodes.join(","))
}

fn cacti(stats: &Stats) -> String {
    let fields: Vec<String> = CACTI_FIELDS
        .iter()
        .map(|name| format!("{name}:{}", stat(stats, name).unwrap_or("U")))
        .collect();
    format!("{}\n", fields.join(" "))
}

/// Prints per-second rates every `interval`, `count` times (forever when None).
pub fn watch(
    hosts: &[String],
    interval: Duration,
    count: Option<u64>,
    timeout: Duration,
) -> Result<(), String> {
    let mut previous: Vec<Option<(Instant, Stats)>> = vec![None; hosts.len()];
    let mut done = 0;
    loop {
        let mut out = String::new();
        for (i, host) in hosts.iter().enumerate() {
            let now = Instant::now();
            let stats = fetch_stats(host, timeout).map_err(|e| e.to_string())?;
            let _ = write!(out, "{host}");
            for name in WATCH_FIELDS {
                let value: f64 = stat(&stats, name)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                let gauge = name.starts_with("curr_");
                match &previous[i] {
                    Some((then, old)) if !gauge => {
                        let old: f64 = stat(old, name).and_then(|v| v.parse().ok()).unwrap_or(0.0);
                        let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
                        let _ = write!(out, "  {name}={:.1}/s", (value - old).max(0.0) / seconds);
                    }
                    _ => {
                        let _ = write!(out, "  {name}={value}");
                    }
                }
            }
            out.push('\n');
            previous[i] = Some((now, stats));
        }
        print!("{out}");
        done += 1;
        if count.is_some_and(|count| done >= count) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

//! Monitoring that operators plug in unmodified: `kai check` (Nagios), `kai stats` (table,
//! JSON, cacti) and the Prometheus endpoint, all against real nodes.

mod common;

use common::{Kai, KAI};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn kai(args: &[&str]) -> (i32, String) {
    let out = Command::new(KAI).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), text)
}

fn port(kai: &Kai) -> String {
    kai.addr.port().to_string()
}

/// One status line, then optional `|` perfdata of `label=value[UOM];warn;crit;min;max`.
fn assert_plugin_output(text: &str, status: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].starts_with(&format!("KAI {status} - ")), "{text}");
    if let Some((_, perfdata)) = lines[0].split_once(" | ") {
        for item in perfdata.split(' ') {
            let (label, rest) = item.split_once('=').unwrap_or_else(|| panic!("{item}"));
            assert!(!label.is_empty() && !label.contains(' '));
            let value = rest.split(';').next().unwrap();
            let number = value.trim_end_matches(|c: char| c.is_ascii_alphabetic() || c == '%');
            number
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad perfdata value {item}"));
            assert!(rest.split(';').count() <= 5, "{item}");
        }
    }
}

/// Runs a `kai check`, asserting the exit status that goes with `status`; returns the line.
fn expect_plugin(args: &[&str], status: &str) -> String {
    let (code, text) = kai(args);
    let expected = ["OK", "WARNING", "CRITICAL", "UNKNOWN"]
        .iter()
        .position(|s| *s == status);
    assert_eq!(Some(code as usize), expected, "{text}");
    assert_plugin_output(&text, status);
    text
}

#[test]
fn check_node_ok_warning_critical_unknown() {
    let node = Kai::start("");
    let _client = node.client();
    let p = port(&node);
    let text = expect_plugin(&["check", "node", "-H", "127.0.0.1", "-p", &p], "OK");
    // Nagios users write the port either way.
    expect_plugin(&["check", "node", "-H", &format!("127.0.0.1:{p}")], "OK");
    let other = common::free_port().to_string();
    expect_plugin(
        &[
            "check",
            "node",
            "-H",
            &format!("127.0.0.1:{p}"),
            "-p",
            &other,
        ],
        "OK",
    );
    assert!(
        text.contains("connections=") && text.contains("hit_ratio="),
        "{text}"
    );
    // At least one connection is open (ours), so "0" (alert above 0) fires.
    let text = expect_plugin(
        &["check", "node", "-p", &p, "-w", "0", "-c", "100"],
        "WARNING",
    );
    assert!(text.contains(";0;100;0;1024"), "{text}");
    expect_plugin(
        &["check", "node", "-p", &p, "-w", "0", "-c", "0"],
        "CRITICAL",
    );
    expect_plugin(&["check", "node", "-p", &p, "-w", "nonsense"], "UNKNOWN");
    expect_plugin(&["check", "node", "--no-such-option"], "UNKNOWN");
}

#[test]
fn check_node_down_or_hung_is_critical() {
    let closed = common::free_port().to_string();
    let (code, text) = kai(&["check", "node", "-p", &closed]);
    assert_eq!(code, 2, "{text}");
    assert_plugin_output(&text, "CRITICAL");
    // A port that accepts but never answers: the timeout decides.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port().to_string();
    let started = Instant::now();
    let (code, text) = kai(&["check", "node", "-p", &hung_port, "-t", "1"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no answer within"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn check_cluster_flags_nodes_that_disagree() {
    let a = Kai::start("[rpc]\nlisten = \"127.0.0.1:11901\"\n");
    let b = Kai::start("[rpc]\nlisten = \"127.0.0.1:11902\"\n");
    let host = |k: &Kai| format!("127.0.0.1:{}", port(k));
    let (code, text) = kai(&[
        "check",
        "cluster",
        "--host",
        &host(&a),
        "--expect-members",
        "1",
    ]);
    assert_eq!(code, 0, "{text}");
    assert_plugin_output(&text, "OK");
    // A bare host takes its port from -p.
    let a_port = host(&a).rsplit_once(':').unwrap().1.to_string();
    let (code, text) = kai(&["check", "cluster", "-H", "127.0.0.1", "-p", &a_port]);
    assert_eq!(code, 0, "{text}");
    // Two nodes that each see only themselves: the split-brain signature.
    let (code, text) = kai(&["check", "cluster", "--host", &host(&a), "--host", &host(&b)]);
    assert_eq!(code, 2, "{text}");
    assert_plugin_output(&text, "CRITICAL");
    assert!(
        text.contains("disagree") && text.contains("127.0.0.1:11902"),
        "{text}"
    );
    let (code, text) = kai(&[
        "check",
        "cluster",
        "--host",
        &host(&a),
        "--expect-members",
        "3",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("only 1 of 3"), "{text}");
    let down = format!("127.0.0.1:{}", common::free_port());
    let (code, text) = kai(&["check", "cluster", "--host", &host(&a), "--host", &down]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("unreachable") && text.contains(&down),
        "{text}"
    );
}

/// A scripted workload whose counters are known exactly.
fn workload(node: &Kai) {
    let mut client = node.client();
    for i in 0..10 {
        client.set(&format!("k{i}"), b"0123456789");
    }
    for i in 0..4 {
        assert!(client.get(&format!("k{i}")).is_some());
    }
    assert!(client.get("missing").is_none());
}

#[test]
fn stats_for_cacti_json_and_people_match_the_workload() {
    let node = Kai::start("");
    workload(&node);
    let host = format!("127.0.0.1:{}", port(&node));
    // cacti's data input method reads `name:value` pairs separated by spaces.
    let (code, text) = kai(&["stats", "--host", &host, "--cacti"]);
    assert_eq!(code, 0);
    assert_eq!(text.lines().count(), 1, "{text}");
    let fields: HashMap<&str, u64> = text
        .split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once(':').unwrap();
            (name, value.parse().unwrap())
        })
        .collect();
    assert_eq!(fields["cmd_set"], 10);
    assert_eq!(fields["bytes_write"], 100);
    assert_eq!(fields["cmd_get"], 4);
    assert_eq!(fields["bytes_read"], 40);
    assert_eq!(fields["curr_items"], 10);
    assert!(fields["bytes"] > 100);

    let (code, json) = kai(&["stats", "--host", &host, "--host", &host, "--json"]);
    assert_eq!(code, 0);
    let check = Command::new("python3")
        .args(["-c", "import json,sys; d=json.load(sys.stdin); v=list(d.values())[0]; assert v['cmd_set']==10 and v['kai_quorum']=='3,2,2', v"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(json.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(check.success(), "{json}");

    let (code, table) = kai(&["stats", "--host", &host]);
    assert_eq!(code, 0);
    assert!(table.lines().next().unwrap().contains(&host), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("cmd_set") && l.trim_end().ends_with(" 10")),
        "{table}"
    );

    let (code, watched) = kai(&["stats", "--host", &host, "--watch", "1", "--count", "2"]);
    assert_eq!(code, 0);
    assert_eq!(watched.lines().count(), 2, "{watched}");
    assert!(
        watched.lines().nth(1).unwrap().contains("cmd_set=0.0/s"),
        "{watched}"
    );

    let (code, _) = kai(&[
        "stats",
        "--host",
        &format!("127.0.0.1:{}", common::free_port()),
    ]);
    assert_eq!(code, 1);
}

/// The metrics listener's address, from the node's startup log.
fn metrics_addr(node: &Kai) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = node.log();
        if let Some(line) = log.lines().find(|l| l.contains("serving metrics on ")) {
            return line
                .split("serving metrics on ")
                .nth(1)
                .unwrap()
                .trim()
                .to_string();
        }
        assert!(Instant::now() < deadline, "no metrics line: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: kai\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// A strict reading of the Prometheus text format: HELP and TYPE before each family,
/// valid names and labels, numeric values, counters named `_total`.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "{line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "duplicate {name}"
            );
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            let name = series.split('{').next().unwrap();
            assert!(
                valid_name(name) && typed.contains_key(name),
                "untyped sample {line}"
            );
            if let Some(labels) = series.strip_prefix(name) {
                let labels = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap();
                for pair in labels.split("\",") {
                    let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        valid_name(key) && !value.trim_end_matches('"').contains('"'),
                        "{line}"
                    );
                }
            }
            samples.insert(name.to_string(), value);
        }
    }
    samples
}

#[test]
fn prometheus_endpoint_serves_valid_metrics() {
    let node = Kai::start("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let addr = metrics_addr(&node);
    workload(&node);
    let (head, body) = http_get(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let samples = parse_exposition(&body);
    assert_eq!(samples["kai_cmd_set_total"], 10.0);
    assert_eq!(samples["kai_bytes_write_total"], 100.0);
    assert_eq!(samples["kai_cmd_get_total"], 4.0);
    assert_eq!(samples["kai_curr_items"], 10.0);
    assert_eq!(samples["kai_build_info"], 1.0);
    // A full disk's stats, a counter and a gauge (0 on a memory node).
    assert_eq!(samples["kai_store_write_errors_total"], 0.0);
    assert_eq!(samples["kai_store_write_failing"], 0.0);
    let build = (body.lines())
        .find(|l| l.starts_with("kai_build_info{"))
        .unwrap();
    assert!(
        build.contains("protocols=\"3-4\"")
            && build.contains("capabilities=\"meta-state,record-format-2,side-files-2\"")
            && build.contains("finalized=\"0\"")
            && build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(body.contains("kai_version_mix_seconds{"), "{body}");
    let identity = &node.stats()["kai_node"];
    assert!(body.contains(&format!("node=\"{identity}\"")), "{body}");
    let (head, _) = http_get(&addr, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn metrics_are_off_by_default() {
    let node = Kai::start("");
    assert!(!node.log().contains("serving metrics"));
}

/// The shipped Grafana dashboard is valid JSON and only queries metrics kai exports.
#[test]
fn grafana_dashboard_queries_exported_metrics() {
    let node = Kai::start("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let addr = metrics_addr(&node);
    let exported = parse_exposition(&http_get(&addr, "/metrics").1);
    let dashboard = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/kai.json");
    let script = "import json,re,sys\nd=json.load(open(sys.argv[1]))\nfor p in d['panels']:\n  for t in p['targets']:\n    for m in re.findall(r'kai_[a-z_]+', t['expr']): print(m)";
    let out = Command::new("python3")
        .args(["-c", script, dashboard])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let used = String::from_utf8(out.stdout).unwrap();
    assert!(used.lines().count() > 10);
    for metric in used.lines() {
        assert!(
            exported.contains_key(metric),
            "dashboard queries {metric}, which kai does not export"
        );
    }
}

/// The cacti data input script prints what cacti parses, and the Nagios commands call the
/// real plugin with options it accepts.
#[test]
fn contrib_scripts_work() {
    let node = Kai::start("");
    workload(&node);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/cacti/kai_cacti.sh");
    let out = Command::new(script)
        .args(["127.0.0.1", &port(&node)])
        .env("KAI", KAI)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("bytes:") && text.contains(" cmd_set:10 "),
        "{text}"
    );

    let nagios = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/nagios/kai.cfg"
    ))
    .unwrap();
    let node_command = nagios
        .lines()
        .find(|l| l.trim_start().starts_with("command_line") && l.contains("check node"))
        .unwrap();
    let args = node_command
        .split_whitespace()
        .skip(2)
        .collect::<Vec<_>>()
        .join(" ");
    let args = args
        .replace("$HOSTADDRESS$", "127.0.0.1")
        .replace("$ARG1$", &port(&node))
        .replace("$ARG2$", "800")
        .replace("$ARG3$", "950");
    let words: Vec<&str> = args.split_whitespace().collect();
    let (code, text) = kai(&words);
    assert_eq!(code, 0, "{text}");
    assert_plugin_output(&text, "OK");
}

/// The cacti templates are what their generator writes, reference only objects they define
/// (or Cacti's stock "Normal" GPRINT and default profile), and name exactly the fields the
/// data input script prints, sizes as GAUGE and counters as DERIVE.
#[test]
fn cacti_templates_match_the_script_and_hold_together() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/cacti");
    let xml = std::fs::read_to_string(format!("{dir}/cacti_kai_templates.xml")).unwrap();
    let generated = std::process::Command::new("python3")
        .arg(format!("{dir}/generate-templates.py"))
        .output()
        .expect("python3");
    assert!(generated.status.success());
    assert_eq!(
        String::from_utf8(generated.stdout).unwrap(),
        xml,
        "cacti_kai_templates.xml is stale: regenerate it with generate-templates.py"
    );
    // Every element opened is closed, in order.
    let mut open: Vec<&str> = Vec::new();
    for tag in xml.split('<').skip(1).map(|t| t.split('>').next().unwrap()) {
        match tag.strip_prefix('/') {
            Some(name) => assert_eq!(open.pop(), Some(name), "unbalanced </{name}>"),
            None => open.push(tag),
        }
    }
    assert!(open.is_empty());
    let stock = [
        "hash_060103e9c43831e54eca8069317a2ce8c6f751",
        "hash_200103d62c52891f4f9688729a5bc9fad91b18",
    ];
    let value_of = |tag: &str| -> Vec<String> { values_in(&xml, tag) };
    for tag in [
        "task_item_id",
        "data_input_id",
        "data_input_field_id",
        "gprint_id",
        "data_source_profile_id",
    ] {
        for reference in value_of(tag) {
            assert!(
                stock.contains(&reference.as_str()) || xml.contains(&format!("<{reference}>")),
                "{tag} {reference} is not defined"
            );
        }
    }
    let names = value_of("data_source_name");
    let types = value_of("data_source_type_id");
    let mut sources: Vec<(String, String)> = names.into_iter().zip(types).collect();
    sources.sort();
    let expected = [
        ("bytes", "1"),
        ("bytes_read", "3"),
        ("bytes_write", "3"),
        ("cmd_get", "3"),
        ("cmd_set", "3"),
        ("curr_items", "1"),
    ];
    let expected: Vec<(String, String)> = (expected.iter())
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(sources, expected);
    // The output fields of the data input method are what the script prints.
    let kai = Kai::start("");
    let script = format!("{dir}/kai_cacti.sh");
    let out = std::process::Command::new("sh")
        .args([&script, "127.0.0.1", &kai.addr.port().to_string()])
        .env("KAI", KAI)
        .output()
        .unwrap();
    let printed: Vec<String> = (String::from_utf8_lossy(&out.stdout).split_whitespace())
        .map(|pair| pair.split(':').next().unwrap().to_string())
        .collect();
    let mut outputs: Vec<String> = (xml.split("<input_output>out</input_output>").skip(1))
        .map(|rest| values_in(rest, "data_name").swap_remove(0))
        .collect();
    outputs.sort();
    let mut printed_sorted = printed.clone();
    printed_sorted.sort();
    assert_eq!(outputs, printed_sorted, "script prints {printed:?}");
}

/// The text of every `<tag>…</tag>` in `text`, in order.
fn values_in(text: &str, tag: &str) -> Vec<String> {
    (text.split(&format!("<{tag}>")).skip(1))
        .map(|rest| rest.split('<').next().unwrap().to_string())
        .collect()
}

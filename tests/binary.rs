//! memcached's binary protocol over a real socket: the same packets sent to kai and to
//! Debian's memcached must get byte-identical responses (cas uniques compared by shape:
//! zero or not; the version text excepted), plus what only kai has (its limits, stats
//! groups, authentication, a cluster behind the port).

mod common;

use common::binary::*;
use common::{Client, Kai, Memcached};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// A scripted session: sends packets, may use the cas of an earlier response.
type Script = fn(&mut Client) -> Vec<Response>;

fn normalize(mut responses: Vec<Response>) -> Vec<Response> {
    for response in &mut responses {
        response.cas = u64::from(response.cas != 0);
        if response.opcode == VERSION && response.status == 0 {
            response.value = b"<version>".to_vec();
        }
    }
    responses
}

fn fresh(addr: std::net::SocketAddr) -> Client {
    let mut client = Client::connect(addr);
    let flushed = exchange(&mut client, &packet(FLUSH, &[], b"", b"", 0, 9));
    assert_eq!(flushed[0].status, 0);
    client
}

fn set(key: &[u8], value: &[u8], flags: u32) -> Vec<u8> {
    packet(SET, &set_extras(flags, 0), key, value, 0, 1)
}

fn scripts() -> Vec<(&'static str, Script)> {
    vec![
        ("get family hit and miss", |c| {
            let mut bytes = set(b"k", b"value", 5);
            for (op, key) in [
                (GET, &b"k"[..]),
                (GETK, b"k"),
                (GETQ, b"k"),
                (GETKQ, b"k"),
                (GET, b"none"),
                (GETK, b"none"),
                (GETQ, b"none"),
                (GETKQ, b"none"),
            ] {
                bytes.extend(packet(op, &[], key, b"", 0, u32::from(op) + 100));
            }
            exchange(c, &bytes)
        }),
        ("storage modes", |c| {
            let mut bytes = set(b"k", b"v", 0);
            bytes.extend(packet(ADD, &set_extras(1, 0), b"k", b"x", 0, 2));
            bytes.extend(packet(ADD, &set_extras(1, 0), b"new", b"x", 0, 3));
            bytes.extend(packet(REPLACE, &set_extras(2, 0), b"none", b"x", 0, 4));
            bytes.extend(packet(REPLACE, &set_extras(2, 0), b"k", b"r", 0, 5));
            bytes.extend(packet(APPEND, &[], b"k", b"+a", 0, 6));
            bytes.extend(packet(PREPEND, &[], b"k", b"p+", 0, 7));
            bytes.extend(packet(APPEND, &[], b"none", b"x", 0, 8));
            bytes.extend(packet(PREPEND, &[], b"none", b"x", 0, 9));
            bytes.extend(packet(GET, &[], b"k", b"", 0, 10));
            bytes.extend(packet(ADDQ, &set_extras(1, 0), b"new", b"x", 0, 11));
            bytes.extend(packet(SETQ, &set_extras(1, 0), b"q", b"quiet", 0, 12));
            bytes.extend(packet(APPENDQ, &[], b"q", b"!", 0, 13));
            bytes.extend(packet(GETK, &[], b"q", b"", 0, 14));
            exchange(c, &bytes)
        }),
        ("compare and swap", |c| {
            let mut out = exchange(c, &set(b"k", b"v1", 3));
            let cas = out[0].cas;
            let mut bytes = packet(SET, &set_extras(0, 0), b"k", b"v2", cas ^ 0x7777_0000, 2);
            bytes.extend(packet(SET, &set_extras(0, 0), b"none", b"v", cas, 3));
            bytes.extend(packet(
                REPLACE,
                &set_extras(0, 0),
                b"k",
                b"v",
                cas ^ 0x7777_0000,
                4,
            ));
            bytes.extend(packet(APPEND, &[], b"k", b"!", cas ^ 0x7777_0000, 5));
            bytes.extend(packet(DELETE, &[], b"k", b"", cas ^ 0x7777_0000, 6));
            bytes.extend(packet(
                INCREMENT,
                &arith_extras(1, 0, 0),
                b"k",
                b"",
                cas ^ 0x7777_0000,
                7,
            ));
            bytes.extend(packet(SET, &set_extras(9, 0), b"k", b"v3", cas, 8));
            bytes.extend(packet(GET, &[], b"k", b"", 0, 9));
            out.extend(exchange(c, &bytes));
            let cas = out[out.len() - 2].cas;
            let mut bytes = packet(ADD, &set_extras(0, 0), b"k", b"added", cas, 10);
            bytes.extend(packet(GET, &[], b"k", b"", 0, 11));
            out.extend(exchange(c, &bytes));
            let cas = out[out.len() - 2].cas;
            out.extend(exchange(c, &packet(DELETE, &[], b"k", b"", cas, 12)));
            out
        }),
        ("delete", |c| {
            let mut bytes = set(b"a", b"1", 0);
            bytes.extend(set(b"b", b"2", 0));
            bytes.extend(packet(DELETE, &[], b"a", b"", 0, 2));
            bytes.extend(packet(DELETE, &[], b"a", b"", 0, 3));
            bytes.extend(packet(DELETEQ, &[], b"b", b"", 0, 4));
            bytes.extend(packet(DELETEQ, &[], b"b", b"", 0, 5));
            bytes.extend(packet(GET, &[], b"b", b"", 0, 6));
            exchange(c, &bytes)
        }),
        ("incr and decr", |c| {
            let mut bytes = packet(INCREMENT, &arith_extras(1, 5, u32::MAX), b"n", b"", 0, 1);
            bytes.extend(packet(INCREMENT, &arith_extras(1, 5, 0), b"n", b"", 0, 2));
            bytes.extend(packet(INCREMENT, &arith_extras(10, 5, 0), b"n", b"", 0, 3));
            bytes.extend(packet(DECREMENT, &arith_extras(14, 0, 0), b"n", b"", 0, 4));
            bytes.extend(packet(GET, &[], b"n", b"", 0, 5));
            bytes.extend(packet(DECREMENT, &arith_extras(100, 0, 0), b"n", b"", 0, 6));
            bytes.extend(packet(DECREMENT, &arith_extras(1, 7, 0), b"m", b"", 0, 7));
            bytes.extend(set(b"max", b"18446744073709551615", 0));
            bytes.extend(packet(INCREMENT, &arith_extras(2, 0, 0), b"max", b"", 0, 8));
            bytes.extend(set(b"text", b"abc", 0));
            bytes.extend(packet(
                INCREMENT,
                &arith_extras(1, 0, 0),
                b"text",
                b"",
                0,
                9,
            ));
            bytes.extend(packet(
                INCREMENTQ,
                &arith_extras(1, 0, 0),
                b"max",
                b"",
                0,
                10,
            ));
            bytes.extend(packet(
                INCREMENTQ,
                &arith_extras(1, 0, u32::MAX),
                b"gone",
                b"",
                0,
                11,
            ));
            bytes.extend(packet(GETK, &[], b"max", b"", 0, 12));
            exchange(c, &bytes)
        }),
        ("touch and get-and-touch", |c| {
            let mut bytes = set(b"k", b"v", 4);
            let hour = 3600u32.to_be_bytes();
            for (op, key) in [
                (TOUCH, &b"k"[..]),
                (TOUCH, b"none"),
                (GAT, b"k"),
                (GATK, b"k"),
                (GATQ, b"k"),
                (GATKQ, b"k"),
                (GAT, b"none"),
                (GATK, b"none"),
                (GATQ, b"none"),
                (GATKQ, b"none"),
            ] {
                bytes.extend(packet(op, &hour, key, b"", 0, u32::from(op)));
            }
            // Exptimes are unsigned here: 0xffffffff is an absolute time (year 2106).
            bytes.extend(packet(TOUCH, &u32::MAX.to_be_bytes(), b"k", b"", 0, 50));
            exchange(c, &bytes)
        }),
        ("flush, noop, version, quiet flush", |c| {
            let mut bytes = set(b"k", b"v", 0);
            bytes.extend(packet(FLUSHQ, &[], b"", b"", 0, 2));
            bytes.extend(packet(GET, &[], b"k", b"", 0, 3));
            bytes.extend(set(b"k", b"v", 0));
            bytes.extend(packet(FLUSH, &0u32.to_be_bytes(), b"", b"", 0, 4));
            bytes.extend(packet(GET, &[], b"k", b"", 0, 5));
            bytes.extend(packet(VERSION, &[], b"", b"", 0, 6));
            bytes.extend(packet(NOOP, &[], b"", b"", 0, 7));
            exchange(c, &bytes)
        }),
        ("a quiet batch ended by noop", |c| {
            let mut bytes = Vec::new();
            for i in 0..50u32 {
                let key = format!("key{i}");
                bytes.extend(packet(
                    SETQ,
                    &set_extras(i, 0),
                    key.as_bytes(),
                    &[b'v'; 100],
                    0,
                    i,
                ));
            }
            for i in 0..60u32 {
                let key = format!("key{i}");
                bytes.extend(packet(GETKQ, &[], key.as_bytes(), b"", 0, 1000 + i));
            }
            exchange(c, &bytes)
        }),
        ("unknown opcode and sasl without auth", |c| {
            let mut bytes = packet(0x50, &[], b"", b"xyz", 0, 1);
            bytes.extend(packet(SASL_LIST, &[], b"", b"", 0, 2));
            bytes.extend(packet(GET, &[], b"k", b"", 0, 3));
            exchange(c, &bytes)
        }),
        ("values up to the item limit", |c| {
            let mut bytes = set(b"big", b"small", 0);
            bytes.extend(packet(
                SET,
                &set_extras(0, 0),
                b"big",
                &vec![b'x'; (1 << 20) + 100],
                0,
                2,
            ));
            bytes.extend(packet(GET, &[], b"big", b"", 0, 3));
            bytes.extend(set(b"big2", b"small", 0));
            bytes.extend(packet(
                APPEND,
                &[],
                b"big2",
                &vec![b'x'; (1 << 20) + 100],
                0,
                4,
            ));
            bytes.extend(packet(GET, &[], b"big2", b"", 0, 5));
            bytes.extend(packet(
                SET,
                &set_extras(0, 0),
                b"large",
                &vec![b'L'; 500_000],
                0,
                6,
            ));
            bytes.extend(packet(GET, &[], b"large", b"", 0, 7));
            exchange(c, &bytes)
        }),
        ("key of 250 bytes", |c| {
            let key = vec![b'k'; 250];
            let mut bytes = set(&key, b"v", 0);
            bytes.extend(packet(GETK, &[], &key, b"", 0, 2));
            exchange(c, &bytes)
        }),
        ("quit", |c| {
            let mut bytes = packet(GET, &[], b"k", b"", 0, 1);
            bytes.extend(packet(QUIT, &[], b"", b"", 0, 2));
            c.send(&bytes);
            let out = vec![read(c), read(c)];
            assert!(c.read_to_close().is_empty());
            out
        }),
        ("quiet quit", |c| {
            c.send(&packet(QUITQ, &[], b"", b"", 0, 2));
            assert!(c.read_to_close().is_empty());
            Vec::new()
        }),
        ("malformed: key over 250 bytes closes", |c| {
            c.send(&packet(GET, &[], &[b'k'; 251], b"", 0, 1));
            let out = vec![read(c)];
            assert!(c.read_to_close().is_empty());
            out
        }),
        ("malformed: extras on a get close", |c| {
            c.send(&packet(GET, &[0; 4], b"k", b"", 0, 1));
            let out = vec![read(c)];
            assert!(c.read_to_close().is_empty());
            out
        }),
        ("malformed: key beyond the body closes", |c| {
            let mut bytes = packet(GET, &[], b"key", b"", 0, 1);
            bytes[8..12].copy_from_slice(&1u32.to_be_bytes());
            c.send(&bytes);
            let out = vec![read(c)];
            assert!(c.read_to_close().is_empty());
            out
        }),
        (
            "malformed: bad magic after a good request closes silently",
            |c| {
                let mut bytes = packet(NOOP, &[], b"", b"", 0, 1);
                bytes.extend([0x81; 24]);
                c.send(&bytes);
                let out = vec![read(c)];
                assert!(c.read_to_close().is_empty());
                out
            },
        ),
    ]
}

#[test]
fn binary_sessions_match_memcached_byte_for_byte() {
    let memcached = Memcached::start();
    let kai = Kai::start("");
    let mut failures = Vec::new();
    for (name, script) in scripts() {
        let expected = normalize(script(&mut fresh(memcached.addr)));
        let got = normalize(script(&mut fresh(kai.addr)));
        if got != expected {
            failures.push(format!(
                "{name}:\n memcached {expected:?}\n kai       {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Each malformed header closed its connection with a logged reason.
    let logged = || {
        let log = kai.log();
        log.contains("not the request magic 0x80")
            && log.matches("closing the binary connection").count() >= 4
    };
    assert!(
        common::wait_until(Duration::from_secs(5), logged),
        "{}",
        kai.log()
    );
}

#[test]
fn stat_groups_over_binary() {
    let kai = Kai::start("");
    let mut client = Client::connect(kai.addr);
    exchange(&mut client, &set(b"k", b"v", 0));
    for group in [&b""[..], b"settings", b"kai", b"cluster"] {
        client.send(&packet(STAT, &[], group, b"", 0, 77));
        let mut stats = Vec::new();
        loop {
            let response = read(&mut client);
            assert_eq!((response.status, response.opaque), (0, 77));
            if response.key.is_empty() {
                assert!(response.value.is_empty());
                break;
            }
            stats.push((response.key, response.value));
        }
        let names: Vec<String> = (stats.iter())
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        match group {
            b"" => {
                assert_eq!(names[0], "uptime");
                let items = stats.iter().find(|(k, _)| k == b"curr_items").unwrap();
                assert_eq!(items.1, b"1");
                assert!(names.contains(&"auth_cmds".to_string()));
            }
            b"settings" => assert!(names.contains(&"item_size_max".to_string()), "{names:?}"),
            _ => assert!(!names.is_empty(), "{group:?}"),
        }
    }
    let missing = exchange(&mut client, &packet(STAT, &[], b"bogus", b"", 0, 5));
    assert_eq!(
        (missing[0].status, &missing[0].value[..]),
        (1, &b"Not found"[..])
    );
    // The text stats count binary commands like text ones.
    let stats = kai.stats();
    assert_eq!(stats["cmd_set"], "1");
}

/// Limits hold before buffering: a 512 MiB body announced is refused on its header and
/// swallowed as it streams, without the server holding it.
#[test]
fn an_announced_huge_value_is_refused_on_its_header() {
    let kai = Kai::start("");
    let mut client = Client::connect(kai.addr);
    let total = 512usize << 20;
    let mut header = packet(SET, &set_extras(0, 0), b"k", b"", 0, 1);
    header[8..12].copy_from_slice(&((total + 9) as u32).to_be_bytes());
    client.send(&header);
    let refused = read(&mut client);
    assert_eq!(
        (refused.status, &refused.value[..]),
        (3, &b"Too large."[..])
    );
    let chunk = vec![b'z'; 1 << 20];
    for _ in 0..(total >> 20) {
        client.stream.write_all(&chunk).unwrap();
    }
    let after = exchange(&mut client, &packet(GET, &[], b"k", b"", 0, 2));
    assert_eq!(after[0].status, 1);
    assert!(kai.rss_kib() < 200 * 1024, "rss {} KiB", kai.rss_kib());
}

fn credentials(kai_dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = kai_dir.join("users");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn sasl_and_text_logins_gate_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let users = credentials(dir.path(), "# test users\napp:s3cret pass\n");
    let kai = Kai::start(&format!("auth_file = \"{}\"\n", users.display()));

    // Binary: mechanisms and version before login; anything else is refused and closed.
    let mut client = Client::connect(kai.addr);
    client.send(&packet(SASL_LIST, &[], b"", b"", 0, 1));
    assert_eq!(read(&mut client).value, b"PLAIN");
    client.send(&packet(VERSION, &[], b"", b"", 0, 2));
    assert_eq!(read(&mut client).status, 0);
    client.send(&packet(GET, &[], b"k", b"", 0, 3));
    let refused = read(&mut client);
    assert_eq!(
        (refused.status, &refused.value[..]),
        (0x20, &b"Auth failure."[..])
    );
    assert!(client.read_to_close().is_empty());

    let mut client = Client::connect(kai.addr);
    assert_eq!(login(&mut client, "app", "wrong"), 0x20);
    assert_eq!(login(&mut client, "nobody", "s3cret pass"), 0x20);
    assert_eq!(login(&mut client, "app", "s3cret pass"), 0);
    let stored = exchange(&mut client, &set(b"k", b"v", 0));
    assert_eq!(stored[0].status, 0);

    // Text: memcached's login, a first set whose value is "user password".
    let mut text = Client::connect(kai.addr);
    assert_eq!(text.call("get k\r\n"), "CLIENT_ERROR unauthenticated\r\n");
    assert_eq!(
        text.call("set x 0 0 9\r\napp wrong\r\n"),
        "CLIENT_ERROR authentication failure\r\n"
    );
    assert_eq!(
        text.call("set x 0 0 15\r\napp s3cret pass\r\n"),
        "STORED\r\n"
    );
    assert_eq!(text.call("get k\r\n"), "VALUE k 0 1\r\n");

    // The log reaches the test through a reader thread: wait for the line.
    let failure_logged = || kai.log().contains("authentication failed for user \"app\"");
    assert!(
        common::wait_until(Duration::from_secs(5), failure_logged),
        "{}",
        kai.log()
    );
    let log = kai.log();
    assert!(!log.contains("wrong") && !log.contains("s3cret"), "{log}");
    // Three binary and two text logins above, and the one stats_as makes.
    let stats = kai.stats_as("app", "s3cret pass");
    assert_eq!(
        (stats["auth_cmds"].as_str(), stats["auth_errors"].as_str()),
        ("6", "3")
    );

    // SIGHUP re-reads the file: the new password works on new connections, the old does not.
    credentials(dir.path(), "app:rotated\n");
    kai.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(common::wait_until(Duration::from_secs(5), || kai
        .log()
        .contains("client credentials re-read")));
    let mut client = Client::connect(kai.addr);
    assert_eq!(login(&mut client, "app", "s3cret pass"), 0x20);
    assert_eq!(login(&mut client, "app", "rotated"), 0);
    // A broken file on reload keeps the running credentials.
    std::fs::write(&users, "broken line\n").unwrap();
    kai.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(common::wait_until(Duration::from_secs(5), || kai
        .log()
        .contains("keeping the running client credentials")));
    let mut client = Client::connect(kai.addr);
    assert_eq!(login(&mut client, "app", "rotated"), 0);
}

#[test]
fn a_readable_credentials_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let users = credentials(dir.path(), "app:pw\n");
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("kai.toml");
    std::fs::write(
        &config,
        format!(
            "[memcache]\nlisten = \"127.0.0.1:0\"\nauth_file = \"{}\"\n[rpc]\nlisten = \"127.0.0.1:0\"\n[node]\ndata_dir = \"{}\"\n",
            users.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::KAI)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("mode 0644") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

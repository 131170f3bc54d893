//! The binary as an operator meets it: configuration errors, the embedded defaults, signals.

mod common;

use common::{free_port, Client, Kai, KAI};
use nix::sys::signal::Signal;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn run_with_config(text: &str) -> (i32, String, u16) {
    let port = free_port();
    let (code, stderr) = run_on_port(port, text);
    (code, stderr, port)
}

/// An ephemeral rpc port, appended (so line numbers in `text` stay put) unless `text` sets one.
fn own_rpc_port(text: &str) -> &'static str {
    if text.contains("[rpc]") {
        ""
    } else {
        "\n[rpc]\nlisten = \"127.0.0.1:0\"\n"
    }
}

/// Runs kai in the foreground with memcache on `port` plus `text`; returns its exit code and
/// stderr with the config path replaced by FILE.
fn run_on_port(port: u16, text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kai.toml");
    std::fs::write(
        &path,
        format!(
            "[memcache]\nlisten = \"127.0.0.1:{port}\"\n{text}{}",
            own_rpc_port(text)
        ),
    )
    .unwrap();
    let out = Command::new(KAI)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn configuration_errors_exit_2_naming_file_line_and_key() {
    let cases = [
        (
            "bogus = 1\n",
            "FILE:3: memcache.bogus: unknown field `bogus`",
        ),
        (
            "[cluster]\nbuckets = 1000\n",
            "FILE:4: cluster.buckets: 1000 is not a power of two",
        ),
        (
            "[cluster]\nquorum = { n = 2, r = 3, w = 1 }\n",
            "FILE:4: cluster.quorum.r: r = 3",
        ),
        (
            "[store]\nengine = \"tape\"\n",
            "FILE:4: store.engine: unknown variant `tape`",
        ),
        (
            "[rpc]\ntimeout = \"soon\"\n",
            "FILE:4: rpc.timeout: invalid duration",
        ),
        (
            "[memcache]\n",
            "FILE:3: memcache: invalid table header: duplicate key `memcache`",
        ),
    ];
    for (text, expected) in cases {
        let (code, stderr, port) = run_with_config(text);
        assert_eq!(code, 2, "{text}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{text}: expected {expected:?} in {stderr:?}"
        );
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "bound before validating"
        );
    }
    let out = Command::new(KAI)
        .args(["--config", "/nonexistent/kai.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/kai.toml: cannot read"));
}

#[test]
fn config_check_prints_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kai.toml");
    std::fs::write(&path, "[memcache]\nmax_item_size = \"2MiB\"\n").unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/50-fleet.toml"),
        "[cluster]\nseeds = [\"10.0.0.1:11011\"]\n",
    )
    .unwrap();
    let out = Command::new(KAI)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("max_item_size = \"2MiB\""), "{text}");
    assert!(text.contains("seeds = [\"10.0.0.1:11011\"]"), "{text}");
    assert!(text.contains("buckets = 1024"), "{text}");
    std::fs::write(&path, "[memcache]\nmax_item_size = \"2 furlongs\"\n").unwrap();
    let out = Command::new(KAI)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn runs_on_embedded_defaults_without_a_config_file() {
    assert!(
        !std::path::Path::new("/etc/kai/kai.toml").exists(),
        "/etc/kai/kai.toml exists: this test checks the embedded defaults"
    );
    assert!(
        TcpStream::connect("127.0.0.1:11211").is_err(),
        "127.0.0.1:11211 is taken by another process"
    );
    let mut child = Command::new(KAI)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = loop {
        if let Ok(stream) = TcpStream::connect("127.0.0.1:11211") {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "default node did not listen on 127.0.0.1:11211"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stream);
    let mut client = Client::connect("127.0.0.1:11211".parse().unwrap());
    client.set("hello", b"world");
    let stats = client.stats("stats");
    assert_eq!(stats["kai_store"], "memory");
    assert_eq!(stats["kai_node"], "127.0.0.1:11011");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn port_in_use_fails_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, stderr) = run_on_port(port, "");
    assert_eq!(code, 1);

    assert!(
        stderr.contains(&format!(
            "cannot listen on memcache.listen 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let mut kai = Kai::start("");
    let mut idle = kai.client();
    let mut busy = kai.client();
    busy.send(b"set k 0 0 10\r\n12345");
    std::thread::sleep(Duration::from_millis(100));
    kai.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    // Half a request was buffered: it is completed and answered before the close.
    busy.send(b"67890\r\n");
    assert_eq!(busy.line(), "STORED\r\n");
    assert_eq!(busy.read_to_close(), b"");
    assert_eq!(idle.read_to_close(), b"");
    let status = kai
        .wait(Duration::from_secs(5))
        .expect("kai did not exit after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(
        TcpStream::connect(kai.addr).is_err(),
        "still accepting after shutdown"
    );
    let log = kai.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("kai stopped"), "{log}");
}

#[test]
fn sigint_exits_0_promptly() {
    let mut kai = Kai::start("");
    let _idle = kai.client();
    // Idle now, after requests: each request's wait for input also waited for shutdown.
    let mut served = kai.client();
    for _ in 0..3 {
        assert_eq!(served.call("set k 0 0 1\r\nx\r\n"), "STORED\r\n");
    }
    let started = Instant::now();
    kai.signal(Signal::SIGINT);
    assert_eq!(served.read_to_close(), b"");
    let status = kai
        .wait(Duration::from_secs(5))
        .expect("kai did not exit after SIGINT");
    assert_eq!(status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!kai.log().contains("still open after"), "{}", kai.log());
}

#[test]
fn a_stalled_half_request_cannot_hold_shutdown_forever() {
    let mut kai = Kai::start("");
    let mut stalled = kai.client();
    stalled.send(b"set k 0 0 10\r\n123");
    std::thread::sleep(Duration::from_millis(100));
    kai.signal(Signal::SIGTERM);
    let status = kai
        .wait(Duration::from_secs(10))
        .expect("shutdown not bounded");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_unreachable_open_files_limit_is_a_warning_not_a_failure() {
    // More descriptors than the kernel allows any process (fs.nr_open): even root cannot
    // raise the limit that far, so kai must say so and serve anyway.
    let kai = Kai::start("max_connections = 4000000000\n");
    assert!(kai.client().call("version\r\n").starts_with("VERSION"));
    let log = kai.log();
    assert!(
        log.contains("open files limit is") && log.contains("raise LimitNOFILE"),
        "{log}"
    );
}

#[test]
fn an_unwritable_data_dir_is_a_warning_with_the_memory_engine() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[node]\ndata_dir = \"/nonexistent/kai\"\n[rpc]\nlisten = \"127.0.0.1:0\"\n[memcache]\nlisten = \"127.0.0.1:0\"\n";
    let kai = Kai::start_with_config(dir, config, &[]);
    assert!(kai.client().call("version\r\n").starts_with("VERSION"));
    let log = kai.log();
    assert!(
        log.contains("node.data_dir /nonexistent/kai is not writable"),
        "{log}"
    );
}

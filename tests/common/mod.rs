//! Test harness: runs the real `kai` binary (and Debian's memcached as a reference) on
//! loopback, and talks to them over real TCP sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod binary;
pub mod cluster;
pub mod failing_disk;
pub mod small_disk;

pub const KAI: &str = env!("CARGO_BIN_EXE_kai");

/// A running kai node with its own config file and data dir; killed when dropped.
pub struct Kai {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: Arc<Mutex<String>>,
}

impl Kai {
    /// Starts kai with `extra` appended to a config that listens on an ephemeral loopback port.
    pub fn start(extra: &str) -> Kai {
        let dir = tempfile::tempdir().unwrap();
        // Every node gets its own ephemeral rpc port unless the test picks one.
        let rpc = if extra.contains("[rpc]") {
            ""
        } else {
            "[rpc]\nlisten = \"127.0.0.1:0\"\n"
        };
        // KAI_TEST_ENGINE=disk reruns a suite against the disk engine (make test does).
        let engine = match std::env::var("KAI_TEST_ENGINE") {
            Ok(engine) if !extra.contains("[store]") => format!("[store]\nengine = \"{engine}\"\n"),
            _ => String::new(),
        };
        let config = format!(
            "[node]\ndata_dir = \"{}\"\n{rpc}[memcache]\nlisten = \"127.0.0.1:0\"\n{extra}{engine}",
            dir.path().display()
        );
        Kai::start_with_config(dir, &config, &[])
    }

    pub fn start_with_config(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Kai {
        Kai::start_with(dir, config, env, &[])
    }

    /// Starts kai in the foreground and waits for its "serving memcache on" line on stderr.
    pub fn start_with(
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Kai {
        Kai::start_binary(std::path::Path::new(KAI), dir, config, env, args)
    }

    /// Starts `binary` (another release of kai, for the upgrade tests).
    pub fn start_binary(
        binary: &std::path::Path,
        dir: tempfile::TempDir,
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Kai {
        let path = dir.path().join("kai.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
            .stderr(Stdio::piped())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn kai");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Logged before the start is announced, so the caller sees the line.
                {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(addr) = line.split("serving memcache on ").nth(1) {
                    let addr = addr
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().expect("listen address in the startup line"),
            Err(_) => {
                let _ = child.kill();
                panic!("kai did not start: {}", log.lock().unwrap());
            }
        };
        Kai {
            child,
            addr,
            dir,
            log,
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The `stats` of this node as name → value.
    pub fn stats(&self) -> std::collections::HashMap<String, String> {
        self.client().stats("stats")
    }

    /// `stats` on a node with authentication on, after memcached's text login.
    pub fn stats_as(
        &self,
        user: &str,
        password: &str,
    ) -> std::collections::HashMap<String, String> {
        let mut client = self.client();
        let token = format!("{user} {password}");
        let login = format!("set login 0 0 {}\r\n{token}\r\n", token.len());
        assert_eq!(client.call(&login), "STORED\r\n");
        client.stats("stats")
    }
}

impl Drop for Kai {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's memcached on a free loopback port, as the reference implementation.
pub struct Memcached {
    child: Child,
    pub addr: SocketAddr,
}

impl Memcached {
    pub fn start() -> Memcached {
        let binary = ["/usr/bin/memcached", "/usr/local/bin/memcached"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("memcached is not installed: run `make test` (it installs the test deps)");
        for _ in 0..10 {
            let port = free_port();
            let mut command = Command::new(binary);
            command.args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-t",
                "2",
            ]);
            if nix::unistd::Uid::effective().is_root() {
                command.args(["-u", "root"]);
            }
            let mut child = command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect(addr).is_ok() {
                    return Memcached { child, addr };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("memcached did not start");
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn process_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; it counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// Polls `condition` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw memcached text-protocol connection.
pub struct Client {
    pub stream: TcpStream,
    pending: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = loop {
            match self.stream.read(&mut chunk) {
                // A signal to the test process (a child exiting) interrupts a blocking read.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other.expect("read from server"),
            }
        };
        self.pending.extend_from_slice(&chunk[..n]);
        n
    }

    /// Reads until the received bytes end with `terminator`.
    pub fn read_until(&mut self, terminator: &[u8]) -> Vec<u8> {
        while !self.pending.ends_with(terminator) {
            if self.fill() == 0 {
                panic!(
                    "connection closed; got {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
        }
        std::mem::take(&mut self.pending)
    }

    /// Reads one line including its CR LF.
    pub fn line(&mut self) -> String {
        loop {
            if let Some(at) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.pending.drain(..at + 2).collect();
                return String::from_utf8_lossy(&line).into_owned();
            }
            if self.fill() == 0 {
                panic!(
                    "connection closed; got {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
            }
        }
    }

    /// Exactly `n` bytes (panics if the server closes first).
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            if self.fill() == 0 {
                panic!("connection closed after {:?}", self.pending);
            }
        }
        self.pending.drain(..n).collect()
    }

    /// Everything until the server closes the connection.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        while self.fill() > 0 {}
        std::mem::take(&mut self.pending)
    }

    /// Sends a request and returns its one-line reply.
    /// Runs `script` after a `flush_all` and returns every reply to it: a sentinel set
    /// and get sent after it mark where the replies end.
    pub fn script(&mut self, script: &[u8]) -> Vec<u8> {
        const SENTINEL: &[u8] = b"set __sentinel 0 0 6\r\nSENTIN\r\nget __sentinel\r\n";
        const SENTINEL_REPLY: &[u8] = b"STORED\r\nVALUE __sentinel 0 6\r\nSENTIN\r\nEND\r\n";
        self.send(b"flush_all\r\n");
        assert_eq!(self.line(), "OK\r\n");
        self.send(script);
        self.send(SENTINEL);
        let mut reply = self.read_until(SENTINEL_REPLY);
        reply.truncate(reply.len() - SENTINEL_REPLY.len());
        reply
    }

    pub fn call(&mut self, request: &str) -> String {
        self.send(request.as_bytes());
        self.line()
    }

    /// Sends `request` and reads the reply up to and including `end`.
    pub fn call_until(&mut self, request: &str, end: &str) -> String {
        self.send(request.as_bytes());
        String::from_utf8_lossy(&self.read_until(end.as_bytes())).into_owned()
    }

    pub fn set(&mut self, key: &str, value: &[u8]) {
        self.send(format!("set {key} 0 0 {}\r\n", value.len()).as_bytes());
        self.send(value);
        self.send(b"\r\n");
        assert_eq!(self.line(), "STORED\r\n");
    }

    /// `get` of one key: Some(value) or None.
    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.send(format!("get {key}\r\n").as_bytes());
        let header = self.line();
        if header == "END\r\n" {
            return None;
        }
        let length: usize = header.split_whitespace().nth(3).unwrap().parse().unwrap();
        while self.pending.len() < length + 2 {
            self.fill();
        }
        let value: Vec<u8> = self.pending.drain(..length + 2).take(length).collect();
        assert_eq!(self.line(), "END\r\n");
        Some(value)
    }

    pub fn stats(&mut self, command: &str) -> std::collections::HashMap<String, String> {
        self.send(format!("{command}\r\n").as_bytes());
        let text = String::from_utf8(self.read_until(b"END\r\n")).unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix("STAT "))
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap_or((l, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    }
}

/// Where `make deps` put the venv's python (KAI_TEST_PYTHON overrides).
pub fn venv_python() -> PathBuf {
    let path = std::env::var_os("KAI_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python3"));
    assert!(
        path.exists(),
        "{} missing: run `make test` (it creates the venv)",
        path.display()
    );
    path
}

/// A system user for one test, removed when dropped, however the test ends.
pub struct ThrowawayUser(pub String);

impl ThrowawayUser {
    /// Creates `kai<tag><pid>`; needs root, as CI has.
    pub fn create(tag: &str) -> ThrowawayUser {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (CI runs as root): it creates a system user"
        );
        let name = format!("kai{tag}{}", std::process::id() % 100_000);
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .unwrap();
        assert!(status.success(), "useradd {name} failed");
        ThrowawayUser(name)
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

/// Runs every named script on fresh connections to memcached and to kai and panics with
/// each session whose normalized replies differ.
#[allow(dead_code)]
pub fn assert_sessions_match(
    kai: &Kai,
    memcached: &Memcached,
    scripts: Vec<(&str, Vec<u8>)>,
    normalize: fn(&[u8]) -> String,
) {
    let mut failures = Vec::new();
    for (name, script) in scripts {
        let expected = normalize(&memcached.client().script(&script));
        let actual = normalize(&kai.client().script(&script));
        if expected != actual {
            failures.push(format!(
                "{name}:\n  memcached: {expected:?}\n  kai:       {actual:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} sessions differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

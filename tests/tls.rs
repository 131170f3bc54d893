//! TLS against real processes, with certificates made by `openssl` for each test: the memcache
//! TLS listener served to pymemcache's `tls_context` and to `openssl s_client` (and its
//! certificate re-read on SIGHUP); a peer whose certificate the cluster's CA did not sign,
//! refused and logged on both sides; and a 3-node cluster moved from plaintext to TLS in
//! two rolling restarts (off → transitional → on) under load, with no failed request on the
//! nodes in service and no acknowledged write lost.

mod common;

use common::cluster::Cluster;
use common::{wait_until, Kai};
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A throwaway CA and the certificates it signs, in a temporary directory.
struct Authority {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl) is needed for the TLS tests");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Authority {
    fn new(name: &str) -> Authority {
        let dir = tempfile::tempdir().unwrap();
        let subject = format!("/CN={name}");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Authority { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Signs a certificate `file`.pem (key `file`.key) for `ips`, usable by servers and
    /// clients alike, as a node's is.
    fn issue(&self, file: &str, common_name: &str, ips: &[String]) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        let (key, csr, pem) = (
            format!("{file}.key"),
            format!("{file}.csr"),
            format!("{file}.pem"),
        );
        let subject = format!("/CN={common_name}");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subject,
            ],
        );
        let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
        let extensions = format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
            sans.join(",")
        );
        std::fs::write(dir.join(format!("{file}.ext")), extensions).unwrap();
        let ext = format!("{file}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        (dir.join(pem), dir.join(key))
    }
}

/// `[rpc]` lines for `tls` with a certificate for `hosts` from `authority`.
fn rpc_tls(mode: &str, authority: &Authority, file: &str, hosts: &[String]) -> String {
    let (cert, key) = authority.issue(file, file, hosts);
    format!(
        "tls = \"{mode}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n",
        cert.display(),
        key.display(),
        authority.ca().display()
    )
}

/// What `openssl s_client` prints for `request` sent over TLS to `addr`.
fn s_client(addr: &str, ca: &Path, request: &[u8]) -> String {
    // `timeout` bounds a session kai never closes (a failure, not a hang).
    let mut child = Command::new("timeout")
        .args(["20", "openssl", "s_client", "-connect", addr, "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // -ign_eof reads on after stdin ends; kai closes the session at `quit`.
    stdin.write_all(request).unwrap();
    stdin.write_all(b"quit\r\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

/// Waits (bounded) for `text` in the node's log; fails with the log.
fn wait_for_log(kai: &Kai, text: &str) {
    let logged = wait_until(Duration::from_secs(5), || kai.log().contains(text));
    assert!(logged, "no {text:?} in the log:\n{}", kai.log());
}

fn tls_port(kai: &Kai) -> String {
    let announced = |kai: &Kai| kai.log().contains("serving memcache over TLS on ");
    wait_until(Duration::from_secs(10), || announced(kai));
    let log = kai.log();
    let line = (log.lines())
        .find(|l| l.contains("serving memcache over TLS on "))
        .unwrap_or_else(|| panic!("no TLS listener in the log:\n{log}"));
    let rest = line.split("serving memcache over TLS on ").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().to_string()
}

#[test]
fn the_tls_listener_serves_real_clients_and_rereads_its_certificate_on_sighup() {
    let authority = Authority::new("kai client CA");
    let (cert, key) = authority.issue("server", "kai-first", &["127.0.0.1".into()]);
    let kai = Kai::start(&format!(
        "tls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let tls = tls_port(&kai);

    // openssl s_client: text protocol over TLS, and the certificate it was shown.
    let out = s_client(
        &tls,
        &authority.ca(),
        b"set greeting 0 0 5\r\nhello\r\nget greeting\r\n",
    );
    assert!(out.contains("STORED"), "{out}");
    assert!(out.contains("VALUE greeting 0 5\r\nhello\r\nEND"), "{out}");
    assert!(out.contains("CN = kai-first"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");

    // pymemcache with tls_context: a large value, a multi-get, and what s_client stored.
    let script = r#"
import ssl, sys
from pymemcache.client.base import Client
host, port = sys.argv[1].rsplit(":", 1)
context = ssl.create_default_context(cafile=sys.argv[2])
client = Client((host, int(port)), tls_context=context)
big = b"x" * 500000
assert client.set("big", big), "set big"
assert client.get("big") == big, "get big"
assert client.get("greeting") == b"hello", client.get("greeting")
client.set_many({"a": b"1", "b": b"2"})
assert client.get_many(["a", "b", "none"]) == {"a": b"1", "b": b"2"}
assert client.incr("a", 41) == 42
print("pymemcache over TLS: ok")
"#;
    let out = Command::new(common::venv_python())
        .args(["-c", script, &tls])
        .arg(authority.ca())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("pymemcache over TLS: ok"), "{text}");
    // The plain listener sees the same data.
    assert_eq!(kai.client().get("big").map(|v| v.len()), Some(500000));

    // A plaintext client on the TLS port: refused, counted, and the port keeps serving.
    let mut plain = common::Client::connect(tls.parse().unwrap());
    plain.send(b"get greeting\r\n");
    // rustls answers with an alert record, never with memcache's reply.
    let reply = String::from_utf8_lossy(&plain.read_to_close()).to_string();
    assert!(
        !reply.contains("END") && !reply.contains("VALUE"),
        "{reply:?}"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        kai.stats()["ssl_handshake_errors"] == "1"
    }));

    // A renewed certificate: SIGHUP makes new sessions use it.
    let (renewed, renewed_key) = authority.issue("renewed", "kai-renewed", &["127.0.0.1".into()]);
    std::fs::copy(&renewed, &cert).unwrap();
    std::fs::copy(&renewed_key, &key).unwrap();
    kai.signal(Signal::SIGHUP);
    wait_for_log(&kai, "memcache TLS certificate");
    let out = s_client(&tls, &authority.ca(), b"get greeting\r\n");
    assert!(out.contains("CN = kai-renewed"), "{out}");
    assert!(out.contains("hello"), "{out}");

    // A damaged certificate: the reload is refused and the running one stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    kai.signal(Signal::SIGHUP);
    wait_for_log(&kai, "keeping the running certificates");
    let out = s_client(&tls, &authority.ca(), b"get greeting\r\n");
    assert!(
        out.contains("CN = kai-renewed") && out.contains("hello"),
        "{out}"
    );
}

#[test]
fn a_tls_listener_with_a_ca_requires_client_certificates() {
    let authority = Authority::new("kai client CA");
    let (cert, key) = authority.issue("server", "kai", &["127.0.0.1".into()]);
    let (client_cert, client_key) = authority.issue("app", "app", &["127.0.0.1".into()]);
    let kai = Kai::start(&format!(
        "tls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n",
        cert.display(),
        key.display(),
        authority.ca().display()
    ));
    let tls = tls_port(&kai);
    let script = r#"
import ssl, sys
from pymemcache.client.base import Client
host, port = sys.argv[1].rsplit(":", 1)
context = ssl.create_default_context(cafile=sys.argv[2])
if len(sys.argv) > 3:
    context.load_cert_chain(sys.argv[3], sys.argv[4])
client = Client((host, int(port)), tls_context=context, connect_timeout=5, timeout=5)
try:
    client.set("k", b"v")
    print("stored:", client.get("k"))
except Exception as e:
    print("refused:", type(e).__name__, e)
"#;
    let run = |extra: &[&Path]| {
        let out = Command::new(common::venv_python())
            .args(["-c", script, &tls])
            .arg(authority.ca())
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let with = run(&[&client_cert, &client_key]);
    assert!(with.contains("stored: b'v'"), "{with}");
    let without = run(&[]);
    assert!(without.contains("refused:"), "{without}");
    assert!(wait_until(Duration::from_secs(5), || {
        kai.stats()["ssl_handshake_errors"] != "0"
    }));
}

/// The TLS settings of the whole cluster, changed between restarts.
fn hosts(net: u8, count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("127.0.{net}.{i}")).collect()
}

#[test]
fn a_peer_with_a_certificate_from_another_ca_is_refused_and_logged() {
    const NET: u8 = 65;
    let cluster_ca = Authority::new("kai cluster CA");
    let stranger_ca = Authority::new("some other CA");
    let good = rpc_tls("on", &cluster_ca, "node", &hosts(NET, 3));
    let mut cluster = Cluster::start_with(NET, 2, "", &good);
    assert!(
        cluster.wait_converged(&[0, 1], Duration::from_secs(30)),
        "{}",
        cluster.logs()
    );

    // Node 3 has a certificate for its address, from the wrong CA.
    cluster.rpc_extra = rpc_tls("on", &stranger_ca, "stranger", &hosts(NET, 3));
    let stranger = cluster.add_member();
    cluster.start_node(stranger, true);
    let refused = |cluster: &Cluster| {
        let first = cluster.node(0).log();
        let third = cluster.node(stranger).log();
        first.contains("rpc: refused peer 127.0.65.3")
            && first.contains("certificate")
            && third.contains("cannot join peer 127.0.65.1")
            && third.contains("UnknownIssuer")
    };
    assert!(
        wait_until(Duration::from_secs(20), || refused(&cluster)),
        "{}",
        cluster.logs()
    );
    let members = cluster.stats(0)["kai_curr_nodes"].clone();
    assert!(
        !members.contains("127.0.65.3"),
        "the stranger joined: {members}\n{}",
        cluster.logs()
    );

    // A node still on plaintext is refused by a node that requires TLS.
    cluster.rpc_extra = String::new();
    let plain = cluster.add_member();
    cluster.start_node(plain, true);
    assert!(
        wait_until(Duration::from_secs(20), || cluster
            .node(0)
            .log()
            .contains("dialled plaintext, but this node's rpc.tls is \"on\"")),
        "{}",
        cluster.logs()
    );
    let members = cluster.stats(0)["kai_curr_nodes"].clone();
    assert!(
        !members.contains("127.0.65.4"),
        "a plaintext node joined: {members}"
    );
}

/// Per node: requests and failures while in service.
#[derive(Default)]
struct Tally {
    requests: u64,
    failures: Vec<String>,
    /// key → value of every acknowledged set.
    acknowledged: HashMap<String, String>,
}

/// Sets unique keys and reads back earlier ones, round-robin over the nodes in service
/// (`draining` is the node a balancer has taken out for its restart).
fn load(
    nodes: Vec<std::net::SocketAddr>,
    draining: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    let mut clients: HashMap<usize, common::Client> = HashMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let node = n as usize % nodes.len();
        if draining.load(Ordering::SeqCst) == node {
            clients.remove(&node);
            continue;
        }
        let client = clients
            .entry(node)
            .or_insert_with(|| common::Client::connect(nodes[node]));
        let (key, value) = (format!("roll{n}"), format!("value{n}"));
        let reply = client.call(&format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()));
        let mut books = tally.lock().unwrap();
        books.requests += 1;
        if reply != "STORED\r\n" {
            books
                .failures
                .push(format!("node {}: set {key}: {reply:?}", node + 1));
            continue;
        }
        books.acknowledged.insert(key, value);
        // An earlier acknowledged key, read through this node (R = 2 must find it).
        let earlier = format!("roll{}", n / 2);
        let Some(expected) = books.acknowledged.get(&earlier).cloned() else {
            continue;
        };
        drop(books);
        let got = client
            .get(&earlier)
            .map(|v| String::from_utf8_lossy(&v).to_string());
        let mut tally = tally.lock().unwrap();
        tally.requests += 1;
        if got.as_deref() != Some(expected.as_str()) {
            let failure = format!("node {}: get {earlier}: {got:?}, not {expected}", node + 1);
            tally.failures.push(failure);
        }
    }
}

/// Stops node `i` with SIGTERM (the packaged unit's stop) and waits for it.
fn stop_gracefully(cluster: &mut Cluster, i: usize) {
    let mut kai = cluster.members[i].process.take().unwrap();
    kai.signal(Signal::SIGTERM);
    assert!(
        kai.wait(Duration::from_secs(30)).is_some(),
        "node {i} did not stop"
    );
}

#[test]
fn a_cluster_moves_to_tls_in_two_rolling_restarts_without_a_failed_request() {
    const NET: u8 = 64;
    let authority = Authority::new("kai cluster CA");
    // Writes are acknowledged before their fsync: the subject is the TLS transition. With
    // three nodes fsyncing every write to one disk, a CI run once saw a write time out on
    // both peers at once (5 s), most likely an fsync stall. Graceful stops still sync.
    let settings = "quorum = { n = 3, r = 2, w = 2 }\nsync_interval = \"1s\"\n\
                    [store]\nengine = \"disk\"\ndurability = \"periodic\"\n";
    let mut cluster = Cluster::start(NET, 3, settings);
    let all = [0, 1, 2];
    assert!(
        cluster.wait_converged(&all, Duration::from_secs(30)),
        "{}",
        cluster.logs()
    );
    let nodes: Vec<_> = cluster.members.iter().map(|m| m.memcache).collect();
    let (draining, stop) = (
        Arc::new(AtomicUsize::new(usize::MAX)),
        Arc::new(AtomicBool::new(false)),
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    let worker = {
        let (draining, stop, tally) =
            (Arc::clone(&draining), Arc::clone(&stop), Arc::clone(&tally));
        std::thread::spawn(move || load(nodes, draining, stop, tally))
    };
    std::thread::sleep(Duration::from_secs(2));
    let mut steps = Vec::new();
    for mode in ["transitional", "on"] {
        cluster.rpc_extra = rpc_tls(mode, &authority, mode, &hosts(NET, 3));
        for i in all {
            let before = tally.lock().unwrap().requests;
            draining.store(i, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            stop_gracefully(&mut cluster, i);
            cluster.start_node(i, true);
            assert!(
                cluster.wait_converged(&all, Duration::from_secs(30)),
                "node {} did not rejoin as {mode}\n{}",
                i + 1,
                cluster.logs()
            );
            draining.store(usize::MAX, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(2));
            let after = tally.lock().unwrap().requests;
            steps.push(format!(
                "node {} to {mode}: {} requests",
                i + 1,
                after - before
            ));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    worker.join().unwrap();
    let tally = tally.lock().unwrap();
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        tally.failures.len(),
        tally.requests,
        &tally.failures[..tally.failures.len().min(20)],
        cluster.logs()
    );
    assert!(tally.acknowledged.len() > 500, "{steps:?}");

    // Nothing acknowledged is lost: every key reads back its value through every node.
    for i in all {
        let mut client = cluster.client(i);
        for (key, value) in tally.acknowledged.iter() {
            let got = client
                .get(key)
                .map(|v| String::from_utf8_lossy(&v).to_string());
            assert_eq!(
                got.as_deref(),
                Some(value.as_str()),
                "node {}: {key}",
                i + 1
            );
        }
    }
    // Every node now runs TLS only: peers talk, and a plaintext dial is refused.
    for i in all {
        assert!(
            cluster.node(i).log().contains("TLS on"),
            "{}",
            cluster.node(i).log()
        );
    }
    let tls = cluster.rpc_extra.clone();
    cluster.rpc_extra = String::new();
    let plaintext = cluster.config_file(0);
    cluster.rpc_extra = tls;
    let path = plaintext.path().to_str().unwrap().to_string();
    let (code, text) = cluster.kai(&["--config", &path, "cluster", "inspect", "roll2"]);
    assert_ne!(code, 0, "{text}");
    let secure = cluster.config_file(0);
    let path = secure.path().to_str().unwrap().to_string();
    let (code, text) = cluster.kai(&["--config", &path, "cluster", "inspect", "roll2"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("value2"), "{text}");
    eprintln!(
        "rolled to TLS: {} requests, {} acknowledged writes, none failed or lost; {steps:?}",
        tally.requests,
        tally.acknowledged.len()
    );
}

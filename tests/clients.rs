//! Compatibility with real client libraries, never only with our own client.

mod common;

use common::Kai;
use std::process::Command;

/// libmemcached's conformance suite, `-a` (text) or `-b` (binary), against `addr`.
fn memccapable(addr: std::net::SocketAddr, suite: &str) {
    let out = Command::new("memccapable")
        .args([
            suite,
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
            "-t",
            "10",
        ])
        .output()
        .expect("memccapable (libmemcached-tools) is not installed: run `make test`");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("All tests passed"),
        "{text}"
    );
    assert!(!text.contains("[FAIL]"), "{text}");
    let sample = if suite == "-b" {
        "binary getkq"
    } else {
        "ascii get"
    };
    assert!(
        text.contains(sample),
        "the {suite} suite did not run: {text}"
    );
}

#[test]
fn memccapable_ascii_suite_passes() {
    let kai = Kai::start("");
    memccapable(kai.addr, "-a");
}

#[test]
fn pymemcache_client_works() {
    let kai = Kai::start("");
    let out = Command::new(common::venv_python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/pymemcache_check.py"
        ))
        .args(["127.0.0.1", &kai.addr.port().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rust_memcache_crate_works() {
    let kai = Kai::start("");
    let url = format!(
        "memcache://127.0.0.1:{}?timeout=5&protocol=ascii",
        kai.addr.port()
    );
    let client = memcache::Client::connect(url).unwrap();
    client.set("k", "v", 0).unwrap();
    assert_eq!(client.get::<String>("k").unwrap().as_deref(), Some("v"));
    client.set("n", 41u64, 0).unwrap();
    assert_eq!(client.increment("n", 1).unwrap(), 42);
    let many: std::collections::HashMap<String, String> = client.gets(&["k", "none"]).unwrap();
    assert_eq!(many.len(), 1);
    let _ = client.add("k", "other", 0);
    assert_eq!(client.get::<String>("k").unwrap().as_deref(), Some("v"));
    assert!(client.delete("k").unwrap());
    assert_eq!(client.get::<String>("k").unwrap(), None);
    // (memcache 0.17 parses no ascii stats, from memcached either; only the round trip counts.)
    assert_eq!(client.stats().unwrap().len(), 1);
}

/// Runs a stock client script from tests/clients/ with `interpreter` against `servers`
/// (host:port, comma-separated), with SASL credentials when given.
fn client_script(
    interpreter: &str,
    script: &str,
    servers: &str,
    login: Option<(&str, &str)>,
) -> std::process::Output {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(interpreter);
    command.arg(&path).arg(servers);
    if let Some((user, password)) = login {
        command.args([user, password]);
    }
    // memjs comes from npm into target/npm (make deps).
    command.env(
        "NODE_PATH",
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/npm/node_modules"),
    );
    command
        .output()
        .unwrap_or_else(|e| panic!("{interpreter} {script}: {e} (run `make deps`)"))
}

/// The binary-protocol clients Debian and npm ship: interpreter and script.
const BINARY_CLIENTS: &[(&str, &str)] = &[
    ("ruby", "dalli_check.rb"),
    ("php", "php_memcached_check.php"),
    ("/usr/bin/python3", "pylibmc_check.py"),
    ("node", "memjs_check.js"),
];

/// Every binary-protocol client passes its checks against `servers`.
fn binary_clients_pass(servers: &str, login: Option<(&str, &str)>) {
    for (interpreter, script) in BINARY_CLIENTS {
        let out = client_script(interpreter, script, servers, login);
        assert!(
            out.status.success(),
            "{script} against {servers}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn rust_memcache_binary(addr: std::net::SocketAddr) {
    // The crate's default protocol is binary.
    let url = format!("memcache://{addr}?timeout=5");
    let client = memcache::Client::connect(url).unwrap();
    client.set("rk", "v", 0).unwrap();
    assert_eq!(client.get::<String>("rk").unwrap().as_deref(), Some("v"));
    client.set("rn", 41u64, 0).unwrap();
    assert_eq!(client.increment("rn", 1).unwrap(), 42);
    assert_eq!(client.decrement("rn", 50).unwrap(), 0);
    let many: std::collections::HashMap<String, String> = client.gets(&["rk", "none"]).unwrap();
    assert_eq!(many.len(), 1);
    assert!(client.add("rk", "other", 0).is_err());
    assert!(client.touch("rk", 3600).unwrap());
    assert!(!client.touch("none", 3600).unwrap());
    client.append("rk", "+").unwrap();
    assert_eq!(client.get::<String>("rk").unwrap().as_deref(), Some("v+"));
    assert!(client.delete("rk").unwrap());
    assert!(!client.delete("rk").unwrap());
    assert!(client.version().unwrap()[0].1.starts_with("1.6"));
    assert!(client.stats().unwrap()[0].1.contains_key("curr_items"));
}

#[test]
fn binary_protocol_clients_work_against_one_node() {
    let kai = Kai::start("");
    binary_clients_pass(&kai.addr.to_string(), None);
    memccapable(kai.addr, "-b");
    rust_memcache_binary(kai.addr);
}

/// A converged 3-node N=3 R=2 W=2 cluster on loopback net `net`, and its memcache
/// addresses as a client's server list.
fn three_node_cluster(net: u8) -> (common::cluster::Cluster, String) {
    let cluster = common::cluster::Cluster::start(net, 3, "quorum = { n = 3, r = 2, w = 2 }\n");
    assert!(
        cluster.wait_converged(&[0, 1, 2], std::time::Duration::from_secs(30)),
        "no convergence"
    );
    let servers: Vec<String> = (cluster.members.iter())
        .map(|m| m.memcache.to_string())
        .collect();
    (cluster, servers.join(","))
}

#[test]
fn binary_protocol_clients_work_against_a_three_node_cluster() {
    let (cluster, servers) = three_node_cluster(43);
    binary_clients_pass(&servers, None);
    for member in &cluster.members {
        rust_memcache_binary(member.memcache);
    }
    memccapable(cluster.members[1].memcache, "-b");
    // The writes went through the cluster: every node counted its share.
    let sets: u64 = (0..3)
        .map(|i| cluster.stats(i)["cmd_set"].parse::<u64>().unwrap())
        .sum();
    assert!(sets > 100, "{sets}");
}

/// meta-memcache (PyPI), a meta-protocol-only client: get/set/delete, modes, cas,
/// arithmetic, leases, stale-while-revalidate and recache (tests/clients/).
fn meta_memcache_passes(servers: &str) {
    let python = common::venv_python();
    let out = client_script(
        python.to_str().unwrap(),
        "meta_memcache_check.py",
        servers,
        None,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.contains("all checks passed"),
        "{text}"
    );
}

#[test]
fn meta_protocol_client_works_against_one_node() {
    let kai = Kai::start("");
    meta_memcache_passes(&kai.addr.to_string());
}

#[test]
fn meta_protocol_client_works_against_a_three_node_cluster() {
    let (cluster, servers) = three_node_cluster(45);
    meta_memcache_passes(&servers);
    let gets: u64 = (0..3)
        .map(|i| cluster.stats(i)["cmd_get"].parse::<u64>().unwrap())
        .sum();
    assert!(gets > 40, "{gets}");
}

/// pymemcache ships its own integration suite (pymemcache/test/test_integration.py, run
/// by pytest with --server and --port): all of it passes against kai.
#[test]
fn pymemcache_integration_suite_passes() {
    let kai = Kai::start("");
    let python = common::venv_python();
    let out = Command::new(&python)
        .args([
            "-c",
            "import pymemcache.test, os; print(os.path.dirname(pymemcache.test.__file__))",
        ])
        .output()
        .unwrap();
    let suite = String::from_utf8_lossy(&out.stdout).trim().to_string() + "/test_integration.py";
    let port = kai.addr.port().to_string();
    let mut pytest = Command::new(&python);
    pytest.args([
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore",
        &suite,
    ]);
    pytest.args(["--server", "127.0.0.1", "--port", &port]);
    // test_misc sets cache_memlimit, which the disk engine (holding no items in memory)
    // refuses with a CLIENT_ERROR.
    if std::env::var("KAI_TEST_ENGINE").as_deref() == Ok("disk") {
        pytest.args(["-k", "not test_misc"]);
    }
    let out = pytest.output().expect("pytest (make deps)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let passed: u32 = (text.split_whitespace())
        .zip(text.split_whitespace().skip(1))
        .find(|(_, word)| word.starts_with("passed"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 90, "{text}");
}

#[test]
fn sasl_clients_log_in_and_wrong_passwords_are_refused() {
    let users = tempfile::tempdir().unwrap();
    let path = users.path().join("users");
    std::fs::write(&path, "app:s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let kai = Kai::start(&format!("auth_file = \"{}\"\n", path.display()));
    let server = kai.addr.to_string();
    binary_clients_pass(&server, Some(("app", "s3cret")));
    for (interpreter, script) in BINARY_CLIENTS {
        let out = client_script(interpreter, script, &server, Some(("app", "wrong")));
        assert!(
            !out.status.success(),
            "{script} passed with a wrong password"
        );
    }
    let stats = kai.stats_as("app", "s3cret");
    assert!(
        stats["auth_errors"].parse::<u64>().unwrap() >= 4,
        "{stats:?}"
    );
}

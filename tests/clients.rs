//! Compatibility with real client libraries, never only with our own client.

mod common;

use common::Kai;
use std::process::Command;

#[test]
fn memccapable_ascii_suite_passes() {
    let kai = Kai::start("");
    let out = Command::new("memccapable")
        .args([
            "-a",
            "-h",
            "127.0.0.1",
            "-p",
            &kai.addr.port().to_string(),
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

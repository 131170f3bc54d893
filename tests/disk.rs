//! The disk engine through the real binary: acknowledged writes survive SIGKILL at random
//! moments, a full disk and a disk whose syncs fail, data survives a restart, a data_dir
//! is used by one node at a time, and the offline `kai store` tools work.

mod common;

use common::failing_disk::FailingDisk;
use common::small_disk::SmallDisk;
use common::{Client, Kai, KAI};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A disk-engine node over `data`, which outlives the process.
fn start(data: &std::path::Path) -> Kai {
    start_with_store(data, "")
}

/// `start`, with more lines for the `[store]` section.
fn start_with_store(data: &std::path::Path, store: &str) -> Kai {
    let config = format!(
        "[node]\ndata_dir = \"{}\"\n[memcache]\nlisten = \"127.0.0.1:0\"\n[rpc]\nlisten = \"127.0.0.1:0\"\n[store]\nengine = \"disk\"\n{store}",
        data.display()
    );
    Kai::start_with_config(tempfile::tempdir().unwrap(), &config, &[])
}

/// A numeric stat.
fn number(stats: &HashMap<String, String>, name: &str) -> u64 {
    stats[name].parse().unwrap()
}

/// What a client was told about a key: its value, or deleted; keys with an unanswered
/// request are forgotten (either outcome is correct for them).
type Acknowledged = Arc<Mutex<HashMap<String, Option<String>>>>;

/// Sets (and deletes every third) unique keys until `stop` or until the node dies; the
/// test client panics on a closed connection, which ends this writer.
fn writer(
    addr: std::net::SocketAddr,
    round: usize,
    thread: usize,
    acked: Acknowledged,
    stop: Arc<AtomicBool>,
) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write_until_stopped(addr, round, thread, &acked, &stop)
    }));
}

fn write_until_stopped(
    addr: std::net::SocketAddr,
    round: usize,
    thread: usize,
    acked: &Acknowledged,
    stop: &AtomicBool,
) {
    let mut client = Client::connect(addr);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("r{round}t{thread}n{n}");
        let value = format!("value-{round}-{thread}-{n}");
        let request = format!("set {key} 0 0 {}\r\n{value}\r\n", value.len());
        if client.call(&request) != "STORED\r\n" {
            return;
        }
        acked.lock().unwrap().insert(key.clone(), Some(value));
        if n % 3 == 0 {
            // Delete every third key once its set was acknowledged.
            acked.lock().unwrap().remove(&key);
            if client.call(&format!("delete {key}\r\n")) != "DELETED\r\n" {
                return;
            }
            acked.lock().unwrap().insert(key, None);
        }
    }
}

#[test]
fn acknowledged_writes_and_deletes_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let acked: Acknowledged = Arc::default();
    let mut total_checked = 0;
    for round in 0..20 {
        let kai = start(data.path());
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..8)
            .map(|thread| {
                let (acked, stop, addr) = (Arc::clone(&acked), Arc::clone(&stop), kai.addr);
                std::thread::spawn(move || writer(addr, round, thread, acked, stop))
            })
            .collect();
        // A different moment every round: 100 to 480 ms into the load.
        std::thread::sleep(Duration::from_millis(100 + (round as u64 * 97) % 380));
        let mut kai = kai;
        kai.child.kill().unwrap(); // SIGKILL
        kai.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            let _ = thread.join();
        }
        let kai = start(data.path());
        let mut client = kai.client();
        let expected = acked.lock().unwrap().clone();
        for (key, value) in &expected {
            let found = client.get(key).map(|v| String::from_utf8(v).unwrap());
            assert_eq!(&found, value, "round {round}: {key} after kill -9");
        }
        total_checked = expected.len();
        drop(kai);
    }
    assert!(
        total_checked > 1000,
        "only {total_checked} acknowledged operations checked"
    );
}

#[test]
fn data_survives_a_restart_and_a_data_dir_serves_one_node() {
    let data = tempfile::tempdir().unwrap();
    let mut kai = start(data.path());
    let mut client = kai.client();
    for i in 0..500 {
        client.set(&format!("key{i}"), format!("value{i}").as_bytes());
    }
    assert_eq!(client.call("set gone 0 0 1\r\nx\r\n"), "STORED\r\n");
    assert_eq!(client.call("delete gone\r\n"), "DELETED\r\n");
    assert_eq!(client.call("set brief 0 1 1\r\nx\r\n"), "STORED\r\n");
    let before = kai.stats();
    assert_eq!(before["curr_items"], "501");
    for i in 0..100 {
        client.set(&format!("key{i}"), format!("again{i}").as_bytes());
    }
    // The overwritten frames stay in the file as dead bytes until compaction.
    let after = kai.stats();
    assert!(number(&before, "kai_store_file_bytes") > 500 * 6);
    assert!(number(&after, "kai_store_file_bytes") > number(&before, "kai_store_file_bytes"));
    assert!(
        number(&after, "kai_store_dead_bytes") >= number(&before, "kai_store_dead_bytes") + 100 * 6
    );
    assert_eq!(after["kai_store_compactions"], "0");
    for i in 0..100 {
        client.set(&format!("key{i}"), format!("value{i}").as_bytes());
    }
    // A second node on the same data_dir is refused with a clear error.
    let config = format!(
        "[node]\ndata_dir = \"{}\"\n[memcache]\nlisten = \"127.0.0.1:0\"\n[rpc]\nlisten = \"127.0.0.1:0\"\n[store]\nengine = \"disk\"\n",
        data.path().display()
    );
    let path = data.path().join("second.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(KAI)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("/log: in use by another process"),
        "{stderr}"
    );

    kai.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(kai.wait(Duration::from_secs(10)).unwrap().code(), Some(0));
    std::thread::sleep(Duration::from_secs(2));
    let kai = start(data.path());
    assert!(kai.log().contains("disk store"), "{}", kai.log());
    let mut client = kai.client();
    for i in (0..500).step_by(37) {
        assert_eq!(
            client.get(&format!("key{i}")).as_deref(),
            Some(format!("value{i}").as_bytes())
        );
    }
    assert_eq!(client.get("gone"), None);
    assert_eq!(client.get("brief"), None, "expired while the node was down");
    let stats = kai.stats();
    assert_eq!(stats["kai_store"], "disk");
    assert!(
        ["500", "501"].contains(&stats["curr_items"].as_str()),
        "{}",
        stats["curr_items"]
    );
    drop(client);
    drop(kai);

    // Offline tools on the stopped node's data_dir.
    let dir = data.path().to_str().unwrap();
    let out = std::process::Command::new(KAI)
        .args(["store", "check", "--data-dir", dir])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("/log: consistent (") && text.contains(" frames in "),
        "{text}"
    );
    let out = std::process::Command::new(KAI)
        .args(["store", "compact", "--data-dir", dir])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_foreign_file_in_data_dir_stops_the_node_and_stays_untouched() {
    let data = tempfile::tempdir().unwrap();
    let foreign = data.path().join("kai.redb");
    std::fs::write(&foreign, b"DETS file from the Erlang Kai, not ours\n").unwrap();
    let config = data.path().join("kai.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\ndata_dir = \"{}\"\n[memcache]\nlisten = \"127.0.0.1:0\"\n[rpc]\nlisten = \"127.0.0.1:0\"\n[store]\nengine = \"dets\"\n",
            data.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(KAI)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&foreign.display().to_string()) && stderr.contains("left untouched"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&foreign).unwrap(),
        b"DETS file from the Erlang Kai, not ours\n"
    );
}

#[test]
fn a_log_file_cut_short_under_a_running_node_costs_its_keys_not_the_node() {
    let data = tempfile::tempdir().unwrap();
    let kai = start(data.path());
    let mut client = kai.client();
    let value = vec![b'v'; 1024];
    for i in 0..100 {
        client.set(&format!("key{i}"), &value);
    }
    assert_eq!(client.get("key7").as_deref(), Some(value.as_slice()));
    // Reads copy out of a mapping of the file: a page past its end raises SIGBUS.
    let log = data.path().join("log").join("0000000001.log");
    (std::fs::File::options().write(true).open(&log).unwrap())
        .set_len(0)
        .unwrap();
    assert_eq!(client.get("key7"), None);
    assert_eq!(client.get("key8"), None);
    assert!(common::process_alive(kai.pid()));
    assert!(
        kai.log().contains("disk store read failed")
            && kai
                .log()
                .contains("0000000001.log: the file ends before byte"),
        "{}",
        kai.log()
    );
    client.set("after", b"written after the cut");
    assert_eq!(
        client.get("after").as_deref(),
        Some(&b"written after the cut"[..])
    );
}

#[test]
fn stats_tell_the_log_pages_reads_mapped_apart_from_the_heap() {
    let data = tempfile::tempdir().unwrap();
    let kai = start(data.path());
    let mut client = kai.client();
    let value = vec![b'm'; 512 * 1024];
    for i in 0..32 {
        client.set(&format!("big{i}"), &value);
    }
    let before = kai.stats();
    // 16 MiB read back: each get copies its frame out of the mapped log.
    for i in 0..32 {
        assert_eq!(
            client.get(&format!("big{i}")).map(|v| v.len()),
            Some(value.len())
        );
    }
    let after = kai.stats();
    let mapped =
        number(&after, "kai_rss_file_bytes").saturating_sub(number(&before, "kai_rss_file_bytes"));
    assert!(
        mapped >= 15 << 20,
        "{mapped} bytes of the log became resident"
    );
    let own = number(&after, "kai_rss_anon_bytes");
    assert!(own > 1 << 20, "{own}");
    // The two make up ps's RSS, give or take what the process allocated between the two
    // reads (kai maps no shared memory).
    let rss = kai.rss_kib() * 1024;
    let reported = own + number(&after, "kai_rss_file_bytes");
    assert!(
        reported <= rss + (1 << 20) && rss - reported.min(rss) < 4 << 20,
        "stats say {reported}, /proc says {rss}"
    );
}

/// A 4 KiB value that names its key, so a read shows which write it came from.
fn page_of(key: &str) -> String {
    let mut page = key.to_string();
    page.extend(std::iter::repeat_n('.', 4096 - key.len()));
    page
}

/// `kai check node` on `kai`: its exit status and line.
fn check_node(kai: &Kai) -> (Option<i32>, String) {
    let out = std::process::Command::new(KAI)
        .args(["check", "node", "-H", &kai.addr.to_string()])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code(), line)
}

/// One log line for a spell of failures, not one per failed write or sync.
fn assert_logged_once(kai: &Kai, error: &str, durability: &str) {
    let log = kai.log();
    assert_eq!(log.matches(error).count(), 1, "{durability}: {log}");
}

/// Once the disk recovers, the node leaves the failing state on its own (no write is
/// needed), logs the end of the spell, has still logged `error` once, and its Nagios
/// check is OK again.
fn assert_recovers(kai: &Kai, client: &mut Client, durability: &str, error: &str) {
    let cleared = common::wait_until(Duration::from_secs(5), || {
        client.stats("stats")["kai_store_write_failing"] == "0"
    });
    assert!(
        cleared,
        "{durability}: still failing once the disk recovered"
    );
    let log = kai.log();
    assert!(
        log.contains("disk store syncs succeed again, after"),
        "{durability}: {log}"
    );
    assert_logged_once(kai, error, durability);
    let (status, line) = check_node(kai);
    assert_eq!(status, Some(0), "{durability}: {line}");
}

/// Kills `kai` with SIGKILL, runs `meanwhile`, starts it again and reads every key in
/// `acked` back.
fn survives_kill_9(
    mut kai: Kai,
    meanwhile: impl FnOnce(),
    start: impl Fn() -> Kai,
    durability: &str,
    acked: &[String],
    value_of: impl Fn(&str) -> Vec<u8>,
) {
    // A periodic node's last acknowledged writes wait for its next sync.
    std::thread::sleep(Duration::from_millis(500));
    kai.child.kill().unwrap(); // SIGKILL
    kai.child.wait().unwrap();
    meanwhile();
    let kai = start();
    let mut client = kai.client();
    for key in acked {
        let expected = value_of(key);
        let found = client.get(key);
        assert_eq!(found, Some(expected), "{durability}: {key} after kill -9");
    }
}

/// Fills an 8 MiB disk (6 MiB of it ballast) under a node with `durability`: writes past
/// the space are refused with SERVER_ERROR naming the error, reads go on, the stats and
/// the Nagios check say so, freeing the space lets writes through again without a
/// restart, and after kill -9 every write the node acknowledged is there.
fn a_full_disk(durability: &str) {
    let disk = SmallDisk::mount(8);
    let ballast = disk.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 6 << 20]).unwrap();
    let data = disk.path().join("data");
    let store = format!("durability = \"{durability}\"\nflush_interval = \"100ms\"\n");
    let start = || start_with_store(&data, &store);
    let kai = start();
    let mut client = kai.client();
    let (mut acked, mut refused) = (Vec::new(), 0);
    // 16 MiB of writes for 2 MiB of space: the loop ends on refusals, not on its count.
    for i in 0..4096 {
        let key = format!("page{i}");
        let value = page_of(&key);
        let reply = client.call(&format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()));
        if reply == "STORED\r\n" {
            acked.push(key);
            continue;
        }
        assert!(
            reply.starts_with("SERVER_ERROR ") && reply.contains("No space left on device"),
            "{durability}: {key} answered {reply:?}"
        );
        refused += 1;
        if refused == 10 {
            break;
        }
    }
    assert_eq!(refused, 10, "{durability}: the disk never filled");
    assert!(
        acked.len() > 100,
        "{durability}: {} acknowledged",
        acked.len()
    );
    assert_logged_once(&kai, "No space left on device", durability);
    let stats = client.stats("stats");
    assert!(number(&stats, "kai_store_write_errors") > 0, "{durability}");
    assert_eq!(stats["kai_store_write_failing"], "1", "{durability}");
    let (status, line) = check_node(&kai);
    assert_eq!(status, Some(2), "{durability}: {line}");
    assert!(
        line.contains("store writes failing"),
        "{durability}: {line}"
    );
    // Reads need no space.
    for key in [&acked[0], &acked[acked.len() - 1]] {
        let page = page_of(key).into_bytes();
        assert_eq!(client.get(key), Some(page), "{durability}: {key}");
    }

    std::fs::remove_file(&ballast).unwrap();
    assert_recovers(&kai, &mut client, durability, "No space left on device");
    assert_eq!(client.call("set freed 0 0 2\r\nok\r\n"), "STORED\r\n");
    acked.push("freed".into());
    let value_of = |key: &str| match key {
        "freed" => b"ok".to_vec(),
        _ => page_of(key).into_bytes(),
    };
    survives_kill_9(kai, || (), start, durability, &acked, value_of);
}

#[test]
fn a_full_disk_refuses_writes_and_keeps_every_acknowledged_one_with_fsync() {
    a_full_disk("fsync");
}

#[test]
fn a_full_disk_refuses_writes_and_keeps_every_acknowledged_one_with_periodic_sync() {
    a_full_disk("periodic");
}

/// A disk that takes every write and fails every sync (EIO), dropping what the sync
/// covered, under a node with `durability`: once a sync has failed, no write is
/// acknowledged (not even with `periodic`, which would otherwise lose far more than its
/// interval), the stats and the Nagios check say so and the log has one line for the
/// spell, and once syncs succeed again the node takes writes without a restart and keeps
/// every one it acknowledged, those written before the failure included.
fn syncs_that_fail(durability: &str) {
    let mut disk = FailingDisk::mount();
    let data = disk.path().join("data");
    let store = format!("durability = \"{durability}\"\nflush_interval = \"100ms\"\n");
    let start = || start_with_store(&data, &store);
    let kai = start();
    let mut client = kai.client();
    let set = |client: &mut Client, key: &str| {
        client.call(&format!("set {key} 0 0 {}\r\n{key}\r\n", key.len()))
    };
    let mut acked = vec!["before".to_string()];
    assert_eq!(set(&mut client, "before"), "STORED\r\n", "{durability}");
    // Synced by then under periodic too: a dropped frame could not be read meanwhile.
    std::thread::sleep(Duration::from_millis(300));

    disk.fail_syncs(true);
    let mut answers = Vec::new();
    for i in 0..1000 {
        let key = format!("while{i}");
        let reply = set(&mut client, &key);
        if reply == "STORED\r\n" {
            acked.push(key);
        }
        answers.push(reply);
        if answers.iter().filter(|r| *r != "STORED\r\n").count() == 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let first_refusal = answers.iter().position(|r| r != "STORED\r\n");
    let first_refusal = first_refusal.expect("no write refused while every sync fails");
    for reply in &answers[first_refusal..] {
        assert!(
            reply.starts_with("SERVER_ERROR ") && reply.contains("Input/output error"),
            "{durability}: after a refusal, {reply:?}"
        );
    }
    if durability == "fsync" {
        assert_eq!(
            first_refusal, 0,
            "fsync acknowledged a write no sync stored"
        );
    }
    let stats = client.stats("stats");
    assert!(
        number(&stats, "kai_store_write_errors") >= 20,
        "{durability}"
    );
    assert_eq!(stats["kai_store_write_failing"], "1", "{durability}");
    let (status, line) = check_node(&kai);
    assert_eq!(status, Some(2), "{durability}: {line}");
    assert_logged_once(&kai, "Input/output error", durability);
    assert_eq!(
        client.get("before"),
        Some(b"before".to_vec()),
        "{durability}"
    );

    disk.fail_syncs(false);
    assert_recovers(&kai, &mut client, durability, "Input/output error");
    assert_eq!(set(&mut client, "after"), "STORED\r\n", "{durability}");
    acked.push("after".into());
    // Only what the disk kept: the frames a failed sync dropped must have been written
    // again, or recovery cuts the log at the first of them and loses every later one.
    let remount = || disk.remount();
    survives_kill_9(kai, remount, start, durability, &acked, |key| {
        key.as_bytes().to_vec()
    });
}

#[test]
fn a_disk_whose_syncs_fail_refuses_writes_until_they_succeed_with_fsync() {
    syncs_that_fail("fsync");
}

#[test]
fn a_disk_whose_syncs_fail_refuses_writes_until_they_succeed_with_periodic_sync() {
    syncs_that_fail("periodic");
}

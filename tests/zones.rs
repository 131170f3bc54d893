//! Zone-aware placement against real processes: six nodes, two in each of three zones,
//! N = 3. Every bucket gets one owner per zone, `kai cluster status` shows the zones, and a
//! whole zone killed with SIGKILL at W = 2 loses no acknowledged write and leaves every key
//! readable.

mod common;

use common::cluster::Cluster;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ZONES: [&str; 6] = ["a", "a", "b", "b", "c", "c"];
const CONVERGE: Duration = Duration::from_secs(30);

/// Owned buckets per zone, from node `i`'s `stats cluster` member lines.
fn buckets_per_zone(cluster: &Cluster, i: usize) -> BTreeMap<String, u32> {
    let text = cluster.client(i).call_until("stats cluster\r\n", "END\r\n");
    let mut per_zone = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("STAT member ")) {
        let field = |name: &str| {
            (line.split_whitespace())
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line}"))
                .to_string()
        };
        *per_zone.entry(field("zone=")).or_insert(0) += field("buckets=").parse::<u32>().unwrap();
    }
    per_zone
}

/// Sets unique keys through node `via` until `stop`; remembers every acknowledged one.
fn writer(
    cluster: &Cluster,
    via: usize,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<HashMap<String, String>>>,
) -> std::thread::JoinHandle<()> {
    let addr = cluster.members[via].memcache;
    std::thread::spawn(move || {
        let mut client = common::Client::connect(addr);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let (key, value) = (format!("w{via}-{n}"), format!("value-{via}-{n}"));
            let reply = client.call(&format!("set {key} 0 0 {}\r\n{value}\r\n", value.len()));
            if reply == "STORED\r\n" {
                acknowledged.lock().unwrap().insert(key, value);
            }
            n += 1;
        }
    })
}

#[test]
fn every_bucket_spans_the_zones_and_a_whole_zone_can_die_at_w2() {
    let mut cluster = Cluster::start_zoned(62, &ZONES, "quorum = { n = 3, r = 2, w = 2 }\n", "");
    let all: Vec<usize> = (0..6).collect();
    assert!(cluster.wait_converged(&all, CONVERGE), "no convergence");

    // One owner per zone for each of the 1024 buckets: each zone's two nodes own 1024
    // between them, and every member agrees.
    for i in 0..6 {
        let per_zone = buckets_per_zone(&cluster, i);
        let want: BTreeMap<String, u32> = ["a", "b", "c"].map(|z| (z.to_string(), 1024)).into();
        assert_eq!(per_zone, want, "as node {i} sees it");
    }
    let (code, table) = cluster.kai(&[
        "cluster",
        "status",
        "-H",
        &cluster.members[3].memcache.to_string(),
    ]);
    assert_eq!(code, 0, "{table}");
    assert!(table.lines().next().unwrap().contains(" ZONE "), "{table}");
    for (i, member) in cluster.members.iter().enumerate() {
        let name = member.rpc.to_string();
        let row =
            (table.lines().find(|l| l.starts_with(&name))).unwrap_or_else(|| panic!("{table}"));
        assert_eq!(row.split_whitespace().nth(2), Some(ZONES[i]), "{row}");
    }

    // Zone c dies at once while two writers run through zones a and b.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(HashMap::new()));
    let writers =
        [0, 2].map(|via| writer(&cluster, via, Arc::clone(&stop), Arc::clone(&acknowledged)));
    std::thread::sleep(Duration::from_secs(2));
    cluster.kill(4);
    cluster.kill(5);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 200,
        "{} writes acknowledged",
        acknowledged.len()
    );

    // Every acknowledged write is read back (R = 2) from every surviving node.
    for i in 0..4 {
        let mut client = cluster.client(i);
        for (key, value) in &acknowledged {
            assert_eq!(
                client.get(key).as_deref(),
                Some(value.as_bytes()),
                "{key} through node {i}\n{}",
                cluster.logs()
            );
        }
    }
    // New writes are still acknowledged with a zone gone.
    let mut client = cluster.client(1);
    for n in 0..100 {
        client.set(&format!("after{n}"), b"x");
    }
    assert_eq!(cluster.client(3).get("after7").as_deref(), Some(&b"x"[..]));
}

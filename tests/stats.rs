//! The `stats` contract (docs/design.md, "Stats"): every field present, Kai's counting semantics.

mod common;

use common::Kai;

const FIELDS: &[&str] = &[
    "uptime",
    "time",
    "version",
    "pid",
    "pointer_size",
    "rusage_user",
    "rusage_system",
    "curr_connections",
    "total_connections",
    "threads",
    "bytes",
    "curr_items",
    "total_items",
    "cmd_get",
    "cmd_set",
    "get_hits",
    "get_misses",
    "delete_hits",
    "delete_misses",
    "cas_hits",
    "cas_misses",
    "cas_badval",
    "incr_hits",
    "incr_misses",
    "touch_hits",
    "touch_misses",
    "evictions",
    "limit_maxbytes",
    "bytes_read",
    "bytes_write",
    "kai_node",
    "kai_quorum",
    "kai_number_of_buckets",
    "kai_number_of_virtual_nodes",
    "kai_store",
    "kai_curr_nodes",
    "kai_members",
    "kai_ring_digest",
    "kai_unreconciled_get",
    "kai_hinted_handoffs",
    "kai_read_repairs",
    "kai_sync_keys",
    "kai_rss_anon_bytes",
    "kai_rss_file_bytes",
    "kai_store_file_bytes",
    "kai_store_dead_bytes",
    "kai_store_compactions",
    "kai_store_compacted_bytes",
    "kai_store_write_errors",
    "kai_store_write_failing",
    "kai_build",
    "kai_member_versions",
    "kai_version_mix_secs",
    "runtime_tasks",
    "runtime_version",
];

#[test]
fn every_field_is_reported_in_order() {
    let kai = Kai::start("[rpc]\nlisten = \"127.0.0.1:11999\"\n[cluster]\nquorum = { n = 3, r = 1, w = 3 }\nbuckets = 256\nvirtual_nodes = 64\n");
    let mut client = kai.client();
    client.send(b"stats\r\n");
    let text = String::from_utf8(client.read_until(b"END\r\n")).unwrap();
    let names: Vec<&str> = text.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    let mut last = 0;
    for field in FIELDS {
        let at = names
            .iter()
            .position(|n| n == field)
            .unwrap_or_else(|| panic!("{field} missing"));
        assert!(at >= last, "{field} out of order");
        last = at;
    }
    let stats = kai.stats();
    assert_eq!(stats["pid"], kai.pid().to_string());
    assert_eq!(stats["kai_node"], "127.0.0.1:11999");
    assert_eq!(stats["kai_curr_nodes"], "127.0.0.1:11999");
    assert_eq!(stats["kai_members"], "1");
    assert_eq!(stats["kai_quorum"], "3,1,3");
    assert_eq!(stats["kai_number_of_buckets"], "256");
    assert_eq!(stats["kai_number_of_virtual_nodes"], "64");
    assert_eq!(stats["kai_store"], "memory");
    // Only the disk engine's log can fail a write.
    assert_eq!(stats["kai_store_write_errors"], "0");
    assert_eq!(stats["kai_store_write_failing"], "0");
    assert_eq!(stats["kai_unreconciled_get"], "0(0) 0(0)");
    assert_eq!(stats["kai_ring_digest"].len(), 16);
    assert!(stats["version"].starts_with("1.6.18-kai-"));
    let release = env!("CARGO_PKG_VERSION");
    assert_eq!(
        stats["kai_build"],
        format!(
            "version={release} protocols=3-4 \
             capabilities=meta-state,record-format-2,side-files-2 finalized=0"
        )
    );
    assert_eq!(stats["kai_member_versions"], release);
    assert_eq!(stats["kai_version_mix_secs"], "0");
    let settings = client.stats("stats settings");
    assert_eq!(settings["maxconns"], "1024");
    assert_eq!(settings["item_size_max"], "1048576");
    assert_eq!(client.stats("stats kai")["kai_quorum"], "3,1,3");
}

#[test]
fn counters_follow_kai_semantics() {
    let kai = Kai::start("");
    let mut client = kai.client();
    client.set("a", b"12345");
    client.set("b", b"xy");
    client.send(b"get a b missing\r\n");
    client.read_until(b"END\r\n");
    client.get("missing");
    client
        .send(b"delete a\r\ndelete a\r\nincr b 1\r\nset n 0 0 1\r\n1\r\nincr n 1\r\nincr zz 1\r\n");
    for _ in 0..6 {
        client.line();
    }
    let stats = kai.stats();
    let get = |name: &str| stats[name].parse::<u64>().unwrap();
    // cmd_get counts keys that returned a value, not get commands.
    assert_eq!(get("cmd_get"), 2);
    assert_eq!((get("get_hits"), get("get_misses")), (2, 2));
    // bytes_read: value bytes sent to clients; bytes_write: value bytes received.
    assert_eq!(get("bytes_read"), 7);
    assert_eq!(get("bytes_write"), 5 + 2 + 1);
    assert_eq!(get("cmd_set"), 3);
    assert_eq!((get("delete_hits"), get("delete_misses")), (1, 1));
    assert_eq!((get("incr_hits"), get("incr_misses")), (1, 1));
    assert_eq!((get("curr_items"), get("total_items")), (2, 3));
    assert_eq!(get("total_connections"), 2);
}

/// The groups monitoring tools built for memcached call (memcached-tool, exporters, cacti
/// templates): answered with what is true of kai, never `ERROR`.
#[test]
fn memcached_stats_groups_answer() {
    let kai = Kai::start("");
    let mut client = kai.client();
    let empty = client.stats("stats slabs");
    assert_eq!(empty["active_slabs"], "0");
    assert!(client.stats("stats items").is_empty());
    client.set("a", b"hello");
    client.set("b", &[b'x'; 2000]);
    let slabs = client.stats("stats slabs");
    assert_eq!(slabs["active_slabs"], "1");
    assert_eq!(slabs["1:used_chunks"], "2");
    assert_eq!(slabs["1:cmd_set"], "2");
    assert_eq!(slabs["1:chunk_size"], "1048576");
    let items = client.stats("stats items");
    assert_eq!(items["items:1:number"], "2");
    assert_eq!(items["items:1:evicted"], "0");
    assert_eq!(client.stats("stats sizes")["sizes_status"], "disabled");
    let other = kai.client();
    let mine = other.stream.local_addr().unwrap();
    // The server registers a connection once it has accepted it: wait for that.
    let listed = |stats: &std::collections::HashMap<String, String>| {
        stats.values().any(|v| *v == format!("tcp:{mine}"))
    };
    assert!(common::wait_until(
        std::time::Duration::from_secs(5),
        || { listed(&client.stats("stats conns")) }
    ));
    let conns = client.stats("stats conns");
    assert_eq!(conns["0:state"], "conn_listening");
    assert_eq!(conns["0:addr"], format!("tcp:{}", kai.addr));
    let entry = (conns.iter())
        .find(|(k, v)| k.ends_with(":addr") && **v == format!("tcp:{mine}"))
        .map(|(k, _)| k.trim_end_matches(":addr").to_string())
        .unwrap_or_else(|| panic!("{mine} not in {conns:?}"));
    assert_eq!(
        conns[&format!("{entry}:listen_addr")],
        format!("tcp:{}", kai.addr)
    );
    assert!(conns.contains_key(&format!("{entry}:secs_since_last_cmd")));
    drop(other);
    assert!(common::wait_until(
        std::time::Duration::from_secs(5),
        || {
            !client
                .stats("stats conns")
                .values()
                .any(|v| *v == format!("tcp:{mine}"))
        }
    ));
    assert_eq!(client.call("stats nonsense\r\n"), "ERROR\r\n");
}

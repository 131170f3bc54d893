//! The cluster core against real processes: 3 and 5 nodes on their own loopback addresses,
//! joined by seeds, killed with SIGKILL, restarted from their data dirs, partitioned with
//! nftables. Each test uses its own 127.0.<net>.x block so they can run in parallel.

mod common;

use common::cluster::{values, Cluster};
use common::Client;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(20);

#[test]
fn three_nodes_serve_every_key_from_every_node_and_agree_on_membership() {
    let cluster = Cluster::start(31, 3, "quorum = { n = 3, r = 2, w = 2 }\n");
    assert!(
        cluster.wait_converged(&[0, 1, 2], CONVERGE),
        "no convergence"
    );
    let mut first = cluster.client(0);
    for i in 0..100 {
        first.set(&format!("key{i}"), format!("value{i}").as_bytes());
    }
    for node in 0..3 {
        let mut client = cluster.client(node);
        for i in 0..100 {
            assert_eq!(
                client.get(&format!("key{i}")).as_deref(),
                Some(format!("value{i}").as_bytes()),
                "key{i} through node {node}"
            );
        }
        let stats = cluster.stats(node);
        assert_eq!(stats["kai_members"], "3");
        assert_eq!(stats["kai_quorum"], "3,2,2");
    }
    // Every node holds a replica (N = 3 of 3 members).
    for node in 0..3 {
        assert!(cluster.inspect(node, "key7").contains("value \"value7\""));
    }
    let (code, table) = cluster.kai(&[
        "cluster",
        "status",
        "-H",
        &cluster.members[1].memcache.to_string(),
    ]);
    assert_eq!(code, 0, "{table}");
    for name in cluster.rpc_names() {
        let row = table
            .lines()
            .find(|l| l.starts_with(&name))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(row.contains(" up ") && row.contains("1024"), "{row}");
    }
    assert!(table.contains("(this node)"), "{table}");
    assert!(
        table.contains("transfers (this node): ") && table.contains(" buckets pending"),
        "{table}"
    );
    // Deletes and the other commands go through the coordinator too.
    assert_eq!(first.call("delete key1\r\n"), "DELETED\r\n");
    assert_eq!(cluster.client(2).get("key1"), None);
    assert_eq!(cluster.client(1).call("delete key1\r\n"), "NOT_FOUND\r\n");
    assert_eq!(first.call("add key2 0 0 1\r\nx\r\n"), "NOT_STORED\r\n");
    assert_eq!(
        cluster.client(2).call("set n 0 0 2\r\n41\r\n"),
        "STORED\r\n"
    );
    assert_eq!(cluster.client(1).call("incr n 1\r\n"), "42\r\n");
    assert_eq!(
        cluster.client(0).call("append n 0 0 1\r\n!\r\n"),
        "STORED\r\n"
    );
    assert_eq!(cluster.client(2).get("n").as_deref(), Some(&b"42!"[..]));
    assert_eq!(first.call("flush_all\r\n"), "OK\r\n");
    std::thread::sleep(Duration::from_millis(500));
    for node in 0..3 {
        assert_eq!(
            cluster.client(node).get("key3"),
            None,
            "node {node} after flush_all"
        );
    }
}

#[test]
fn writes_go_on_with_a_killed_node_and_its_hints_reach_it_after_restart() {
    let mut cluster = Cluster::start(32, 3, "quorum = { n = 3, r = 2, w = 2 }\n");
    assert!(cluster.wait_converged(&[0, 1, 2], CONVERGE));
    cluster.kill(2);
    // No pause: the first writes reach the dead node before failure detection notices.
    for i in 0..50 {
        let mut client = cluster.client(i % 2);
        let reply = client.call(&format!("set hinted{i} 0 0 2\r\nv{}\r\n", i % 10));
        assert_eq!(reply, "STORED\r\n", "write {i} with one node down");
        assert_eq!(
            cluster
                .client((i + 1) % 2)
                .get(&format!("hinted{i}"))
                .as_deref(),
            Some(format!("v{}", i % 10).as_bytes())
        );
    }
    let pending: u64 = (0..2)
        .map(|i| {
            cluster.stats(i)["kai_pending_hints"]
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(pending >= 50, "hints kept for the dead owner: {pending}");
    // Restarted without seeds: the persisted member list alone brings it back.
    cluster.start_node(2, false);
    assert!(
        cluster.wait_converged(&[0, 1, 2], CONVERGE),
        "restarted node did not rejoin"
    );
    let delivered = common::wait_until(CONVERGE, || {
        (0..2).all(|i| cluster.stats(i)["kai_pending_hints"] == "0")
    });
    assert!(delivered, "hints still pending");
    let handed: u64 = (0..2)
        .map(|i| {
            cluster.stats(i)["kai_hinted_handoffs"]
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(handed >= 50, "{handed}");
    // The memory engine lost everything on restart: what node 3 holds came from hints.
    for i in (0..50).step_by(7) {
        let held = cluster.inspect(2, &format!("hinted{i}"));
        assert!(
            held.contains(&format!("value \"v{}\"", i % 10)),
            "hinted{i}: {held}"
        );
    }
    assert!(cluster.node(2).log().contains("loaded 3 members"));
}

#[test]
fn reads_see_acknowledged_writes_across_nodes_under_a_concurrent_writer() {
    let cluster = Cluster::start(33, 3, "quorum = { n = 3, r = 2, w = 2 }\n");
    assert!(cluster.wait_converged(&[0, 1, 2], CONVERGE));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acknowledged, stop) = (Arc::clone(&acknowledged), Arc::clone(&stop));
        let mut client = cluster.client(0);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let reply = client.call(&format!("set hot 0 0 {}\r\n{n}\r\n", n.to_string().len()));
                assert_eq!(reply, "STORED\r\n");
                acknowledged.store(n, Ordering::SeqCst);
            }
            n
        })
    };
    let mut readers: Vec<Client> = (1..3).map(|i| cluster.client(i)).collect();
    for round in 0..300 {
        let floor = acknowledged.load(Ordering::SeqCst);
        let reader = &mut readers[round % 2];
        let seen: u64 = String::from_utf8(reader.get("hot").unwrap_or_default())
            .unwrap()
            .parse()
            .unwrap_or(0);
        assert!(
            seen >= floor,
            "read {seen} after write {floor} was acknowledged"
        );
        // And a client's own writes, written on one node and read on another.
        let key = format!("own{round}");
        cluster.client(round % 3).set(&key, key.as_bytes());
        assert_eq!(
            cluster.client((round + 1) % 3).get(&key).as_deref(),
            Some(key.as_bytes())
        );
    }
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 100);
}

#[test]
fn a_peer_with_the_wrong_secret_never_joins() {
    use std::os::unix::fs::PermissionsExt;
    let secrets = tempfile::tempdir().unwrap();
    let write_secret = |name: &str, text: &str, mode: u32| {
        let path = secrets.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    };
    let good = write_secret("good", "correct horse battery staple\n", 0o600);
    let bad = write_secret("bad", "wrong\n", 0o600);
    let mut cluster = Cluster::start_with(34, 2, "", &format!("secret_file = \"{good}\"\n"));
    assert!(cluster.wait_converged(&[0, 1], CONVERGE));
    cluster.rpc_extra = format!("secret_file = \"{bad}\"\n");
    cluster.add_member();
    cluster.start_node(2, true);
    std::thread::sleep(Duration::from_secs(3));
    for node in 0..2 {
        let stats = cluster.stats(node);
        assert_eq!(stats["kai_members"], "2", "node {node} let the intruder in");
        assert!(!stats["kai_curr_nodes"].contains("127.0.34.3"));
    }
    assert_eq!(cluster.stats(2)["kai_members"], "1");
    let intruder = cluster.node(2).log();
    assert!(
        intruder.contains("does not know the cluster secret"),
        "{intruder}"
    );
    // Refused once in the log, however often it retries.
    let refused = cluster
        .node(0)
        .log()
        .matches("refused peer 127.0.34.3")
        .count();
    assert!(refused <= 1, "{refused} refusal lines");
    assert!(!cluster.node(0).log().contains("correct horse"));
}

#[test]
fn partitioned_writers_make_siblings_that_reads_and_a_later_set_resolve() {
    // W = 1 lets both sides of the partition accept writes; R = 3 makes reads see both.
    let mut cluster = Cluster::start(35, 3, "quorum = { n = 3, r = 3, w = 1 }\n");
    assert!(cluster.wait_converged(&[0, 1, 2], CONVERGE));
    cluster.client(0).set("k", b"before");
    cluster.isolate(2);
    assert!(
        cluster.wait_converged(&[0, 1], CONVERGE),
        "majority did not see the partition"
    );
    assert!(
        cluster.wait_converged(&[2], CONVERGE),
        "isolated node did not notice"
    );
    // The isolated node still answers clients, as in the seed's story.
    assert_eq!(
        cluster.client(0).call("set k 0 0 4\r\nleft\r\n"),
        "STORED\r\n"
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        cluster.client(2).call("set k 0 0 5\r\nright\r\n"),
        "STORED\r\n"
    );
    let hosts: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.memcache.to_string())
        .collect();
    let check = |cluster: &Cluster| {
        let mut args = vec!["check", "cluster", "--expect-members", "3"];
        for host in &hosts {
            args.extend(["--host", host]);
        }
        cluster.kai(&args)
    };
    let (code, text) = check(&cluster);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("disagree") && text.contains(&hosts[2]),
        "{text}"
    );
    cluster.heal();
    assert!(
        cluster.wait_converged(&[0, 1, 2], CONVERGE),
        "no convergence after healing:\n{}",
        cluster.logs()
    );
    let (code, text) = check(&cluster);
    assert_eq!(code, 0, "{text}");
    // last-write-wins: one VALUE, the newer write; the sibling stays stored.
    assert_eq!(values(&mut cluster.client(1), "k"), vec!["right"]);
    let unreconciled = cluster.stats(1)["kai_unreconciled_get"].clone();
    assert_ne!(
        unreconciled.split_whitespace().next(),
        Some("0(0)"),
        "{unreconciled}"
    );
    // Read repair gives every replica both siblings.
    assert!(common::wait_until(CONVERGE, || {
        (0..3).all(|i| cluster.inspect(i, "k").lines().count() == 2)
    }));
    // "siblings" mode (switched live with SIGHUP) returns every sibling, newest first.
    cluster.extra = "quorum = { n = 3, r = 3, w = 1 }\nconflict_resolution = \"siblings\"\n".into();
    std::fs::write(
        cluster.node(1).dir.path().join("kai.toml"),
        cluster.config(1, true),
    )
    .unwrap();
    cluster.node(1).signal(nix::sys::signal::Signal::SIGHUP);
    assert!(common::wait_until(Duration::from_secs(5), || {
        cluster.node(1).log().contains("configuration reloaded")
    }));
    assert_eq!(values(&mut cluster.client(1), "k"), vec!["right", "left"]);
    // A later set supersedes both.
    assert_eq!(
        cluster.client(0).call("set k 0 0 6\r\nlatest\r\n"),
        "STORED\r\n"
    );
    assert_eq!(values(&mut cluster.client(1), "k"), vec!["latest"]);
    assert!(common::wait_until(CONVERGE, || {
        (0..3).all(|i| cluster.inspect(i, "k").lines().count() == 1)
    }));
}

#[test]
fn unsafe_secret_setups_refuse_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = common::free_port();
    let cases = [
        (
            format!("[rpc]\nlisten = \"0.0.0.0:{port}\"\nsecret_file = \"/nonexistent/secret\"\n"),
            "rpc.secret_file /nonexistent/secret does not exist, but 0.0.0.0",
        ),
        (
            format!(
                "[rpc]\nlisten = \"127.0.0.1:0\"\nsecret_file = \"{}\"\n",
                secret.display()
            ),
            "world-readable",
        ),
    ];
    for (rpc, expected) in cases {
        let config = dir.path().join("kai.toml");
        std::fs::write(
            &config,
            format!("[memcache]\nlisten = \"127.0.0.1:0\"\n{rpc}"),
        )
        .unwrap();
        let out = std::process::Command::new(common::KAI)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("s3cret"));
    }
}

#[test]
fn five_nodes_keep_three_replicas_use_fallbacks_and_survive_a_removal() {
    let mut cluster = Cluster::start(36, 5, "quorum = { n = 3, r = 2, w = 2 }\n");
    assert!(
        cluster.wait_converged(&[0, 1, 2, 3, 4], CONVERGE),
        "{}",
        cluster.logs()
    );
    for i in 0..100 {
        let key = format!("before{i}");
        assert_eq!(
            cluster
                .client(i % 5)
                .call(&format!("set {key} 0 0 1\r\nb\r\n")),
            "STORED\r\n"
        );
    }
    // N = 3 of 5: each key lives on exactly three nodes.
    for i in (0..100).step_by(20) {
        let holders = (0..5)
            .filter(|&n| cluster.inspect(n, &format!("before{i}")).contains("value"))
            .count();
        assert_eq!(holders, 3, "before{i}");
    }
    cluster.kill(3);
    let running = [0, 1, 2, 4];
    assert!(
        cluster.wait_converged(&running, CONVERGE),
        "{}",
        cluster.logs()
    );
    for i in 0..100 {
        let node = running[i % 4];
        let reply = cluster
            .client(node)
            .call(&format!("set during{i} 0 0 1\r\nd\r\n"));
        assert_eq!(reply, "STORED\r\n", "during{i} through node {node}");
        let reader = running[(i + 1) % 4];
        assert_eq!(
            cluster.client(reader).get(&format!("during{i}")).as_deref(),
            Some(&b"d"[..])
        );
    }
    // Sloppy quorum: a fallback took the dead owner's replica, and one hint per key waits.
    let hinted: u64 = running
        .iter()
        .map(|&n| {
            cluster.stats(n)["kai_pending_hints"]
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(
        (30..=90).contains(&hinted),
        "about 3/5 of 100 keys are node 4's: {hinted}"
    );
    cluster.start_node(3, false);
    assert!(
        cluster.wait_converged(&[0, 1, 2, 3, 4], CONVERGE),
        "{}",
        cluster.logs()
    );
    assert!(common::wait_until(CONVERGE, || {
        running
            .iter()
            .all(|&n| cluster.stats(n)["kai_pending_hints"] == "0")
    }));
    let delivered = (0..100)
        .filter(|i| cluster.inspect(3, &format!("during{i}")).contains("value"))
        .count() as u64;
    assert_eq!(delivered, hinted, "every hinted key reached its owner");

    // An operator removes node 5 for good: the others drop it from the ring.
    let config = cluster.config_file(0);
    let removed = cluster.members[4].rpc.to_string();
    let (code, text) = cluster.kai(&[
        "--config",
        config.path().to_str().unwrap(),
        "cluster",
        "remove",
        &removed,
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(common::wait_until(CONVERGE, || {
        (0..4).all(|n| cluster.stats(n)["kai_members"] == "4")
    }));
    assert!(common::wait_until(CONVERGE, || {
        cluster
            .node(4)
            .log()
            .contains("this node was removed from the cluster")
    }));
    for i in 0..100 {
        let reader = i % 4;
        for key in [format!("before{i}"), format!("during{i}")] {
            assert!(
                cluster.client(reader).get(&key).is_some(),
                "{key} through node {reader}"
            );
        }
    }
}

#[test]
fn operators_join_and_leave_with_the_cluster_commands() {
    let mut cluster = Cluster::start(37, 1, "quorum = { n = 2, r = 1, w = 1 }\n");
    // A second node started without seeds stays alone until an operator joins it.
    let second = cluster.add_member();
    cluster.start_node(second, false);
    assert!(cluster.wait_converged(&[1], CONVERGE));
    assert_eq!(cluster.stats(1)["kai_members"], "1");
    let config = cluster.config_file(1);
    let path = config.path().to_str().unwrap().to_string();
    let seed = cluster.members[0].rpc.to_string();
    let (code, text) = cluster.kai(&["--config", &path, "cluster", "join", &seed]);
    assert_eq!(code, 0, "{text}");
    assert!(
        cluster.wait_converged(&[0, 1], CONVERGE),
        "{}",
        cluster.logs()
    );
    cluster.client(1).set("shared", b"both");
    assert_eq!(
        cluster.client(0).get("shared").as_deref(),
        Some(&b"both"[..])
    );
    // It leaves again: the first node's ring shrinks back to itself.
    let (code, text) = cluster.kai(&["--config", &path, "cluster", "leave"]);
    assert_eq!(code, 0, "{text}");
    assert!(common::wait_until(CONVERGE, || {
        cluster.stats(0)["kai_members"] == "1"
    }));
    // A join through a node that is not there fails with a message, not a hang.
    let nowhere = format!("127.0.37.9:{}", cluster.members[0].rpc.port());
    let (code, text) = cluster.kai(&["--config", &path, "cluster", "join", &nowhere]);
    assert_ne!(code, 0);
    assert!(text.contains("127.0.37.9"), "{text}");
}

#[test]
fn hints_written_just_before_sigterm_survive_the_restart() {
    // The disk engine: the restarted node still holds the values its hints point at.
    let extra = "quorum = { n = 2, r = 1, w = 1 }\n[store]\nengine = \"disk\"\n";
    let mut cluster = Cluster::start(38, 2, extra);
    assert!(
        cluster.wait_converged(&[0, 1], CONVERGE),
        "{}",
        cluster.logs()
    );
    cluster.kill(1);
    // N = 2 of 2 nodes: every key is owed to the dead node as well.
    let mut client = cluster.client(0);
    for i in 0..20 {
        client.set(&format!("owed{i}"), b"v");
    }
    let pending = cluster.stats(0)["kai_pending_hints"].clone();
    assert_eq!(pending, "20");
    // SIGTERM at once, well inside the handoff loop's one-second persist interval.
    let mut node = cluster.members[0].process.take().unwrap();
    node.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(node
        .wait(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    assert!(node.log().contains("kai stopped"), "{}", node.log());
    cluster.start_node(0, false);
    assert_eq!(cluster.stats(0)["kai_pending_hints"], pending);
    // The owner comes back and gets every write it missed.
    cluster.start_node(1, false);
    assert!(common::wait_until(CONVERGE, || {
        cluster.stats(0)["kai_pending_hints"] == "0"
    }));
    assert_eq!(
        cluster.client(1).get("owed7").as_deref(),
        Some(&b"v"[..]),
        "{}\n{}\n{}",
        cluster.inspect(0, "owed7"),
        cluster.inspect(1, "owed7"),
        cluster.logs()
    );
}

/// A node whose seed is not up yet has not joined: it refuses clients (it would otherwise
/// acknowledge writes the cluster never sees), says so in stats and to Nagios, and joins
/// as soon as the seed starts; the start itself never waits for the seed.
#[test]
fn a_node_that_has_not_joined_refuses_clients_until_its_seed_answers() {
    let mut cluster = Cluster::start(39, 0, "quorum = { n = 3, r = 2, w = 2 }\n");
    let (seed, waiting) = (cluster.add_member(), cluster.add_member());
    cluster.start_node(waiting, true);
    let mut client = cluster.client(waiting);
    let refused = "SERVER_ERROR not joined: no seed has answered yet\r\n";
    assert_eq!(client.call("set k 0 0 1\r\nv\r\n"), refused);
    assert_eq!(client.call("get k\r\n"), refused);
    assert_eq!(cluster.stats(waiting)["kai_cluster_state"], "joining");
    let host = cluster.members[waiting].memcache.to_string();
    let (code, text) = cluster.kai(&["check", "node", "-H", &host]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("not joined"), "{text}");
    assert!(
        common::wait_until(CONVERGE, || cluster
            .node(waiting)
            .log()
            .contains("not joined: seed")),
        "no warning while not joined"
    );
    // The seed (its own seed: it starts the cluster) comes up; the other joins through it.
    cluster.start_node(seed, true);
    assert!(
        cluster.wait_converged(&[seed, waiting], CONVERGE),
        "{}",
        cluster.logs()
    );
    assert_eq!(cluster.stats(waiting)["kai_cluster_state"], "joined");
    assert_eq!(cluster.stats(seed)["kai_cluster_state"], "joined");
    assert_eq!(client.call("set k 0 0 1\r\nv\r\n"), "STORED\r\n");
    assert_eq!(cluster.client(seed).get("k").as_deref(), Some(&b"v"[..]));
}

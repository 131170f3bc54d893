//! Hardened defaults checked on a running node: TCP only (no UDP socket, ever), and the rpc
//! listener's connection limit.

mod common;

use common::cluster::Cluster;
use std::collections::HashSet;
use std::io::Read;
use std::time::Duration;

/// Inodes of the sockets process `pid` holds open.
fn socket_inodes(pid: i32) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().to_string();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.parse().unwrap());
            }
        }
    }
    inodes
}

/// Socket inodes listed in /proc/net/<table> (tcp, tcp6, udp, udp6…).
fn table_inodes(table: &str) -> HashSet<u64> {
    let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(9)?.parse().ok())
        .collect()
}

#[test]
fn a_clustered_node_opens_no_udp_socket() {
    let cluster = Cluster::start(41, 2, "");
    assert!(cluster.wait_converged(&[0, 1], Duration::from_secs(20)));
    cluster.client(0).set("k", b"v");
    assert_eq!(cluster.client(1).get("k").as_deref(), Some(&b"v"[..]));
    for node in 0..2 {
        let sockets = socket_inodes(cluster.node(node).pid());
        let tcp: HashSet<u64> = &table_inodes("tcp") | &table_inodes("tcp6");
        let udp: HashSet<u64> = ["udp", "udp6", "udplite", "udplite6", "raw", "raw6"]
            .iter()
            .flat_map(|t| table_inodes(t))
            .collect();
        // Listeners (memcache, rpc) and peer connections: the test can see sockets at all.
        assert!(sockets.intersection(&tcp).count() >= 3, "{sockets:?}");
        assert!(
            sockets.is_disjoint(&udp),
            "node {node} holds a UDP or raw socket"
        );
    }
}

#[test]
fn rpc_connections_beyond_the_limit_are_refused() {
    let cluster = Cluster::start_with(42, 1, "", "max_connections = 2\n");
    let rpc = cluster.members[0].rpc;
    let held: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(rpc).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = std::net::TcpStream::connect(rpc).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = Vec::new();
    let _ = refused.read_to_end(&mut reply);
    // A Refused frame, then the close.
    assert!(
        String::from_utf8_lossy(&reply).contains("too many rpc connections"),
        "{reply:?}"
    );
    drop(held);
    // The node itself is unharmed.
    assert_eq!(
        cluster.client(0).call("version\r\n")[..8].to_string(),
        "VERSION "
    );
}

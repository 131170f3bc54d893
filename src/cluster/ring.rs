//! Kai-compatible consistent hashing (docs/design.md, "Cluster"): MD5 over buckets and virtual nodes, and
//! the preference list of every bucket, computed once per membership change.
//!
//! - a key hashes to the first 4 bytes (big-endian) of MD5(key);
//! - virtual node i (1..=virtual_nodes) of a node sits at the first 4 bytes of
//!   MD5(address bytes, port as u16 BE, i as u16 BE) (4 address bytes for IPv4, 16 for IPv6);
//! - bucket = hash / (2^32 / buckets);
//! - a bucket's preference list walks the ring clockwise from the bucket's lower boundary,
//!   taking vnodes strictly greater, and collects up to N distinct nodes.
//!
//! Zones (docs/design.md, "Zones") change only the order within each list, and only when
//! every node declares one: a bucket's first N entries are then the first node of each new
//! zone met on the walk, up to min(N, zones), then the walk's next nodes. Without zones the
//! lists are Kai's.
//!
//! The ring is pure data. Lookups return slices of a precomputed table: no allocation.

use crate::keyspace::{self, key_hash};
use md5::{Digest, Md5};
use std::net::{IpAddr, SocketAddr};

/// A built ring: nodes, vnode positions and every bucket's preference list.
#[derive(Clone, Debug)]
pub struct Ring {
    nodes: Vec<SocketAddr>,
    /// (position, index into `nodes`), sorted by position.
    vnodes: Vec<(u32, usize)>,
    buckets: u32,
    replicas: usize,
    /// `buckets` rows of up to `replicas` node indices; row b is bucket b's list.
    preference: Vec<usize>,
    /// Length of each row (shorter when there are fewer nodes than replicas).
    row_len: usize,
    /// Each node's zone (same order as `nodes`) when every node has one; else empty.
    zones: Vec<String>,
    /// How many of a row's first entries must span distinct zones: min(N, zones).
    spread: usize,
}

/// First 4 bytes of MD5 as a big-endian u32.
fn md5_u32(parts: &[&[u8]]) -> u32 {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The ring position of virtual node `index` (1-based, as Kai counts) of `node`.
pub fn vnode_hash(node: SocketAddr, index: u16) -> u32 {
    let port = node.port().to_be_bytes();
    let index = index.to_be_bytes();
    match node.ip() {
        IpAddr::V4(ip) => md5_u32(&[&ip.octets(), &port, &index]),
        IpAddr::V6(ip) => md5_u32(&[&ip.octets(), &port, &index]),
    }
}

impl Ring {
    /// Builds the ring of `nodes`, each with `virtual_nodes` positions. `buckets` must be a
    /// power of two (the configuration guarantees it).
    pub fn new(nodes: &[SocketAddr], virtual_nodes: u16, buckets: u32, replicas: usize) -> Ring {
        let unzoned: Vec<(SocketAddr, Option<&str>)> = nodes.iter().map(|&n| (n, None)).collect();
        Ring::with_zones(&unzoned, virtual_nodes, buckets, replicas, replicas)
    }

    /// Like [`Ring::new`], for nodes that may declare a zone: when all of them do, each
    /// row's first `owners` (N) entries span min(N, zones) distinct zones.
    pub fn with_zones(
        nodes: &[(SocketAddr, Option<&str>)],
        virtual_nodes: u16,
        buckets: u32,
        replicas: usize,
        owners: usize,
    ) -> Ring {
        assert!(buckets.is_power_of_two(), "buckets must be a power of two");
        let mut zoned: Vec<(SocketAddr, Option<&str>)> = nodes.to_vec();
        zoned.sort_by_key(|&(addr, _)| addr);
        zoned.dedup_by_key(|&mut (addr, _)| addr);
        let nodes: Vec<SocketAddr> = zoned.iter().map(|&(addr, _)| addr).collect();
        let zones: Vec<String> = match zoned.iter().map(|&(_, z)| z).collect::<Option<Vec<_>>>() {
            Some(zones) if !zones.is_empty() => zones.into_iter().map(String::from).collect(),
            _ => Vec::new(),
        };
        let mut distinct: Vec<&String> = zones.iter().collect();
        distinct.sort();
        distinct.dedup();
        let spread = owners.min(distinct.len());
        let mut vnodes: Vec<(u32, usize)> =
            Vec::with_capacity(nodes.len() * virtual_nodes as usize);
        for (index, &node) in nodes.iter().enumerate() {
            for i in 1..=virtual_nodes {
                vnodes.push((vnode_hash(node, i), index));
            }
        }
        // Two vnodes on one position (a 1 in 2^32 event): the lower node address keeps it,
        // so every node builds the same ring whatever order members joined in.
        vnodes.sort();
        vnodes.dedup_by_key(|(position, _)| *position);
        let row_len = replicas.min(nodes.len());
        let mut ring = Ring {
            nodes,
            vnodes,
            buckets,
            replicas,
            preference: Vec::with_capacity(buckets as usize * row_len),
            row_len,
            zones,
            spread,
        };
        for bucket in 0..buckets {
            ring.fill_row(bucket);
        }
        ring
    }

    fn fill_row(&mut self, bucket: u32) {
        let start = u64::from(keyspace::hash_range(bucket, self.buckets).0);
        // First vnode strictly greater than the bucket's lower boundary, wrapping.
        let first = self
            .vnodes
            .partition_point(|&(position, _)| u64::from(position) <= start);
        let row_start = self.preference.len();
        // With zones the whole walk is needed: the zone a row lacks may come last.
        let wanted = if self.zones.is_empty() {
            self.row_len
        } else {
            self.nodes.len()
        };
        for step in 0..self.vnodes.len() {
            if self.preference.len() - row_start == wanted {
                break;
            }
            let (_, node) = self.vnodes[(first + step) % self.vnodes.len()];
            if !self.preference[row_start..].contains(&node) {
                self.preference.push(node);
            }
        }
        if !self.zones.is_empty() {
            let walk = self.preference.split_off(row_start);
            let mut front: Vec<usize> = Vec::with_capacity(self.spread);
            for &node in &walk {
                let zone = &self.zones[node];
                if front.len() < self.spread && !front.iter().any(|&f| &self.zones[f] == zone) {
                    front.push(node);
                }
            }
            let rest = walk.iter().filter(|n| !front.contains(n));
            let row: Vec<usize> = front.iter().chain(rest).copied().collect();
            self.preference.extend(&row[..self.row_len]);
        }
    }

    /// Same nodes in the same zones: the two rings place every key alike.
    pub fn same_layout(&self, other: &Ring) -> bool {
        self.nodes == other.nodes && self.zones == other.zones
    }

    /// Whether placement follows zones (every node declares one).
    pub fn is_zoned(&self) -> bool {
        !self.zones.is_empty()
    }

    /// The zone `node` declared, when the ring is zoned.
    pub fn zone(&self, node: SocketAddr) -> Option<&str> {
        let index = self.nodes.binary_search(&node).ok()?;
        self.zones.get(index).map(String::as_str)
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    pub fn replicas(&self) -> usize {
        self.replicas
    }

    pub fn nodes(&self) -> &[SocketAddr] {
        &self.nodes
    }

    /// The bucket of a ring position.
    pub fn bucket_of(&self, hash: u32) -> u32 {
        keyspace::bucket_of(hash, self.buckets)
    }

    /// The bucket `key` belongs to.
    pub fn bucket(&self, key: &[u8]) -> u32 {
        self.bucket_of(key_hash(key))
    }

    /// The nodes holding `bucket`, first replica first.
    pub fn preference_list(&self, bucket: u32) -> impl ExactSizeIterator<Item = SocketAddr> + '_ {
        let row = bucket as usize * self.row_len;
        self.preference[row..row + self.row_len]
            .iter()
            .map(|&i| self.nodes[i])
    }

    /// The nodes holding `key`.
    pub fn nodes_for(&self, key: &[u8]) -> impl ExactSizeIterator<Item = SocketAddr> + '_ {
        self.preference_list(self.bucket(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 11011))
    }

    /// Kai's own test vectors (kai_hash_SUITE): rpc port 11011, 2 vnodes, 4 buckets, N = 2.
    #[test]
    fn kai_test_vectors() {
        assert_eq!(
            [vnode_hash(node(1), 1), vnode_hash(node(1), 2)],
            [3495790055, 2311136591]
        );
        assert_eq!(
            [vnode_hash(node(2), 1), vnode_hash(node(2), 2)],
            [2213434410, 1471129163]
        );
        assert_eq!(
            [vnode_hash(node(3), 1), vnode_hash(node(3), 2)],
            [1548361913, 401940458]
        );
        let ring = Ring::new(&[node(1), node(2), node(3)], 2, 4, 2);
        let cases = [
            ("key1", 3266172564, 3, [node(1), node(3)]),
            ("key2", 2029528490, 1, [node(2), node(3)]),
            ("key3", 909203333, 0, [node(3), node(2)]),
        ];
        for (key, hash, bucket, list) in cases {
            assert_eq!(key_hash(key.as_bytes()), hash, "{key}");
            assert_eq!(ring.bucket(key.as_bytes()), bucket, "{key}");
            assert_eq!(
                ring.nodes_for(key.as_bytes()).collect::<Vec<_>>(),
                list,
                "{key}"
            );
        }
    }

    #[test]
    fn small_rings() {
        let alone = Ring::new(&[node(1)], 128, 1024, 3);
        assert!((0..1024).all(|b| alone.preference_list(b).collect::<Vec<_>>() == [node(1)]));
        let empty = Ring::new(&[], 128, 1024, 3);
        assert_eq!(empty.nodes_for(b"k").len(), 0);
        let one_bucket = Ring::new(&[node(1), node(2)], 4, 1, 2);
        assert_eq!(one_bucket.bucket(b"anything"), 0);
        assert_eq!(one_bucket.preference_list(0).len(), 2);
        let v6 = SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 11011));
        assert_eq!(
            Ring::new(&[v6, node(1)], 16, 64, 2)
                .preference_list(5)
                .len(),
            2
        );
    }

    /// Two nodes per zone, zones a, b, c: 127.0.0.1..=6.
    fn zoned(zones: &[&'static str]) -> Vec<(SocketAddr, Option<&'static str>)> {
        (zones.iter().enumerate())
            .map(|(i, &z)| (node(i as u8 + 1), Some(z)))
            .collect()
    }

    #[test]
    fn with_zones_every_bucket_has_one_owner_per_zone() {
        let nodes = zoned(&["a", "a", "b", "b", "c", "c"]);
        let ring = Ring::with_zones(&nodes, 128, 1024, 6, 3);
        assert!(ring.is_zoned());
        assert_eq!(ring.zone(node(3)), Some("b"));
        for bucket in 0..1024 {
            let list: Vec<_> = ring.preference_list(bucket).collect();
            assert_eq!(list.len(), 6, "the fallbacks follow the owners");
            let mut zones: Vec<_> = list[..3].iter().map(|&n| ring.zone(n).unwrap()).collect();
            zones.sort();
            assert_eq!(zones, ["a", "b", "c"], "bucket {bucket}: {list:?}");
        }
        // Without zones, the same nodes leave some buckets with two owners in one zone.
        let plain: Vec<SocketAddr> = nodes.iter().map(|&(n, _)| n).collect();
        let plain = Ring::new(&plain, 128, 1024, 3);
        let zone_of = |n: SocketAddr| nodes.iter().find(|&&(m, _)| m == n).unwrap().1;
        let crowded = (0..1024)
            .filter(|&b| {
                let mut zones: Vec<_> = plain.preference_list(b).map(zone_of).collect();
                zones.sort();
                zones.dedup();
                zones.len() < 3
            })
            .count();
        assert!(crowded > 100, "{crowded}");
    }

    #[test]
    fn a_node_without_a_zone_keeps_kais_ring() {
        let mut nodes = zoned(&["a", "b", "c", "a"]);
        nodes[3].1 = None;
        let mixed = Ring::with_zones(&nodes, 2, 4, 2, 2);
        let plain = Ring::new(&[node(1), node(2), node(3), node(4)], 2, 4, 2);
        assert!(!mixed.is_zoned());
        assert_eq!(mixed.zone(node(1)), None);
        for bucket in 0..4 {
            assert!(mixed
                .preference_list(bucket)
                .eq(plain.preference_list(bucket)));
        }
    }

    fn cluster(size: usize) -> Vec<SocketAddr> {
        (0..size)
            .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 11011)))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn every_bucket_has_min_n_members_distinct_nodes(members in 1usize..12, n in 1usize..5) {
            let ring = Ring::new(&cluster(members), 32, 256, n);
            for bucket in 0..256 {
                let list: Vec<_> = ring.preference_list(bucket).collect();
                prop_assert_eq!(list.len(), n.min(members));
                let mut distinct = list.clone();
                distinct.sort();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), list.len());
            }
        }

        #[test]
        fn zoned_owners_span_min_n_zones(members in 1usize..12, zones in 1usize..5, n in 1usize..5) {
            let names = ["a", "b", "c", "d"];
            let nodes: Vec<_> = (cluster(members).into_iter().enumerate())
                .map(|(i, addr)| (addr, Some(names[i % zones])))
                .collect();
            let ring = Ring::with_zones(&nodes, 32, 256, members, n);
            let present = zones.min(members);
            for bucket in 0..256 {
                let list: Vec<_> = ring.preference_list(bucket).collect();
                prop_assert_eq!(list.len(), members);
                let mut owner_zones: Vec<_> = list.iter().take(n).map(|&a| ring.zone(a)).collect();
                owner_zones.sort();
                owner_zones.dedup();
                prop_assert_eq!(owner_zones.len(), n.min(present).min(members));
                let mut distinct = list.clone();
                distinct.sort();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), members);
            }
        }

        #[test]
        fn adding_a_node_moves_about_one_share_of_buckets(members in 2usize..16) {
            let before = Ring::new(&cluster(members), 128, 1024, 3);
            let after = Ring::new(&cluster(members + 1), 128, 1024, 3);
            let moved = (0..1024)
                .filter(|&b| before.preference_list(b).next() != after.preference_list(b).next())
                .count() as f64 / 1024.0;
            let share = 1.0 / (members as f64 + 1.0);
            prop_assert!(moved > share * 0.5 && moved < share * 1.6, "moved {} of buckets, share {}", moved, share);
            // Buckets only move to the new node, never between old ones.
            let newcomer = cluster(members + 1)[members];
            for b in 0..1024 {
                let (old, new) = (before.preference_list(b).next(), after.preference_list(b).next());
                prop_assert!(old == new || new == Some(newcomer));
            }
        }
    }
}

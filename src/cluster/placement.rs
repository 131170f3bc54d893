//! Where a key's copies go, as pure code over the ring and what failure detection says.
//!
//! A key's *owners* are the first N members of its preference list; its *replicas* are the
//! first N members walking that list that are not down (sloppy quorum); `next` are up to two
//! further available members, asked while buckets move between owners. On a zoned ring a
//! fallback from a zone that holds no available replica yet comes first, so a down node's
//! copy lands in a zone the surviving replicas do not cover.

use super::ring::Ring;
use std::collections::HashMap;
use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub owners: Vec<SocketAddr>,
    pub replicas: Vec<SocketAddr>,
    pub next: Vec<SocketAddr>,
}

impl Placement {
    #[cfg(test)]
    pub fn of(
        ring: &Ring,
        key: &[u8],
        n: usize,
        available: impl Fn(SocketAddr) -> bool,
    ) -> Placement {
        Placement::of_hash(ring, crate::keyspace::key_hash(key), n, available)
    }

    /// The placement of the key whose ring hash is `hash` (`keyspace::key_hash`).
    pub fn of_hash(
        ring: &Ring,
        hash: u32,
        n: usize,
        available: impl Fn(SocketAddr) -> bool,
    ) -> Placement {
        // One hash per request; the list is a slice of the ring's table, walked again
        // rather than copied.
        let bucket = ring.bucket_of(hash);
        let owners: Vec<SocketAddr> = ring.preference_list(bucket).take(n).collect();
        let fallbacks = || (ring.preference_list(bucket).skip(n)).filter(|&node| available(node));
        let mut replicas: Vec<SocketAddr> = Vec::with_capacity(n);
        replicas.extend(owners.iter().copied().filter(|&node| available(node)));
        if ring.is_zoned() && replicas.len() < n {
            for node in fallbacks() {
                let zone = ring.zone(node);
                if !replicas.iter().any(|&r| ring.zone(r) == zone) {
                    replicas.push(node);
                    if replicas.len() == n {
                        break;
                    }
                }
            }
        }
        if replicas.len() < n {
            for node in fallbacks() {
                if !replicas.contains(&node) {
                    replicas.push(node);
                    if replicas.len() == n {
                        break;
                    }
                }
            }
        }
        let next = fallbacks()
            .filter(|node| !replicas.contains(node))
            .take(2)
            .collect();
        Placement {
            owners,
            replicas,
            next,
        }
    }
}

/// How many replies an operation needs: R or W, capped at the member count so a cluster
/// smaller than N still works, and at least one.
pub fn needed(wanted: u32, members: usize) -> usize {
    (wanted as usize).min(members).max(1)
}

/// How many buckets each member owns (is among the first `n` of) in `ring`.
pub fn owned_buckets(ring: &Ring, n: usize) -> HashMap<SocketAddr, u32> {
    let mut owned = HashMap::new();
    for bucket in 0..ring.buckets() {
        for node in ring.preference_list(bucket).take(n) {
            *owned.entry(node).or_insert(0u32) += 1;
        }
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 11011))
    }

    fn ring() -> Ring {
        let nodes: Vec<_> = (1..=5).map(node).collect();
        Ring::new(&nodes, 16, 64, nodes.len())
    }

    #[test]
    fn replicas_skip_down_nodes_and_owners_do_not() {
        let ring = ring();
        let all = Placement::of(&ring, b"k", 3, |_| true);
        assert_eq!(all.owners, all.replicas);
        assert_eq!(all.next.len(), 2);
        let down = all.owners[1];
        let sloppy = Placement::of(&ring, b"k", 3, |n| n != down);
        assert_eq!(sloppy.owners, all.owners);
        assert!(!sloppy.replicas.contains(&down));
        assert_eq!(sloppy.replicas.len(), 3);
        // The fallback is the first node after the owners.
        assert_eq!(sloppy.replicas[2], all.next[0]);
    }

    #[test]
    fn a_fallback_comes_from_the_zone_the_survivors_lack() {
        let zones = ["a", "a", "b", "b", "c", "c"];
        let nodes: Vec<_> = (1..=6)
            .map(|i| (node(i), Some(zones[i as usize - 1])))
            .collect();
        let ring = Ring::with_zones(&nodes, 16, 64, 6, 3);
        for key in ["k", "x", "zone", "another"] {
            let all = Placement::of(&ring, key.as_bytes(), 3, |_| true);
            let down = all.owners[0];
            let sloppy = Placement::of(&ring, key.as_bytes(), 3, |n| n != down);
            assert_eq!(sloppy.replicas.len(), 3);
            let fallback = sloppy.replicas[2];
            assert!(!all.owners.contains(&fallback));
            assert_eq!(ring.zone(fallback), ring.zone(down), "{key}: {sloppy:?}");
        }
    }

    #[test]
    fn quorum_needs_are_capped_by_the_members() {
        assert_eq!(needed(2, 3), 2);
        assert_eq!(needed(3, 1), 1);
        assert_eq!(needed(0, 3), 1);
    }

    #[test]
    fn every_bucket_has_n_owners() {
        let owned = owned_buckets(&ring(), 3);
        assert_eq!(owned.values().sum::<u32>(), 64 * 3);
    }
}

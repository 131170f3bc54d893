//! Vector clocks and sibling reconciliation: the causal history every stored version carries
//! (docs/design.md, "Records and siblings").
//!
//! A clock is a small sorted list of (node id, counter). It is shared behind an `Arc` because
//! every read hands out a copy and only writes create a new one.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Identifies a node inside clocks: a hash of its "host:port" rpc address.
pub type NodeId = u64;

/// Clocks keep at most this many entries; the smallest counters go first.
pub const MAX_CLOCK_ENTRIES: usize = 16;

/// The empty clock holds no `Arc`: the standard library's empty `Arc<[T]>` is one static
/// shared by the process, so every client thread making or dropping an empty clock (a
/// write merges from one) counted references on the same cache line.
#[derive(Clone, Default)]
pub struct VectorClock(Option<Arc<[(NodeId, u64)]>>);

impl VectorClock {
    pub fn new() -> Self {
        VectorClock::default()
    }

    pub fn entries(&self) -> &[(NodeId, u64)] {
        self.0.as_deref().unwrap_or_default()
    }

    fn of(entries: &[(NodeId, u64)]) -> Self {
        VectorClock((!entries.is_empty()).then(|| Arc::from(entries)))
    }

    /// A clock from entries as `entries` gave them (sorted by node, one each).
    pub fn from_entries(entries: &[(NodeId, u64)]) -> Self {
        debug_assert!(entries.windows(2).all(|pair| pair[0].0 < pair[1].0));
        VectorClock::of(entries)
    }

    /// A clock read back from stored or received bytes, as they hold it: the same clock
    /// `Deserialize` gives, which checks no order either.
    pub fn from_stored(entries: &[(NodeId, u64)]) -> Self {
        VectorClock::of(entries)
    }

    pub fn counter(&self, node: NodeId) -> u64 {
        self.entries()
            .iter()
            .find(|(n, _)| *n == node)
            .map_or(0, |(_, c)| *c)
    }

    /// This clock with `node`'s counter advanced by one.
    pub fn incremented(&self, node: NodeId) -> Self {
        self.advanced(node, 0)
    }

    /// This clock with `node`'s counter advanced by one, and to at least `at_least`. Writes
    /// pass their hybrid timestamp, so a node's counter never repeats even for a key it no
    /// longer holds (handed off, or a wiped data dir): a repeated counter made a new write
    /// look older than the one it replaced (the simulation found it). Built on the stack
    /// and allocated once: every write calls this.
    pub fn advanced(&self, node: NodeId, at_least: u64) -> Self {
        let mut entries = [(0, 0); MAX_CLOCK_ENTRIES + 1];
        let mut len = 0;
        let mut placed = false;
        for &(other, counter) in self.entries() {
            if !placed && other >= node {
                placed = true;
                let next = if other == node { counter + 1 } else { 1 };
                entries[len] = (node, next.max(at_least));
                len += 1;
                if other == node {
                    continue;
                }
            }
            entries[len] = (other, counter);
            len += 1;
        }
        if !placed {
            entries[len] = (node, at_least.max(1));
            len += 1;
        }
        if len > MAX_CLOCK_ENTRIES {
            // Drop the entry with the smallest counter, never the writer's own.
            let smallest = (0..len)
                .filter(|&i| entries[i].0 != node)
                .min_by_key(|&i| entries[i].1)
                .expect("more than one entry");
            entries.copy_within(smallest + 1..len, smallest);
            len -= 1;
        }
        VectorClock::of(&entries[..len])
    }

    /// The per-node maximum of both clocks.
    pub fn merged(&self, other: &VectorClock) -> Self {
        // The common case, a write over one version, shares that version's clock.
        if self.0.is_none() || other.0.is_none() {
            return if self.0.is_none() { other } else { self }.clone();
        }
        let mut entries = self.entries().to_vec();
        for &(node, counter) in other.entries() {
            match entries.binary_search_by_key(&node, |(n, _)| *n) {
                Ok(i) => entries[i].1 = entries[i].1.max(counter),
                Err(i) => entries.insert(i, (node, counter)),
            }
        }
        VectorClock::of(&entries)
    }

    /// True when every event `other` saw, this clock saw too (equality included).
    pub fn descends(&self, other: &VectorClock) -> bool {
        other
            .entries()
            .iter()
            .all(|&(node, counter)| self.counter(node) >= counter)
    }

    /// Neither clock descends the other: the versions are siblings.
    pub fn concurrent(&self, other: &VectorClock) -> bool {
        !self.descends(other) && !other.descends(self)
    }

    /// A 64-bit digest (FNV-1a), stable across processes and releases.
    pub fn digest(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        // Two fixed-length loops, not one over a chained iterator: the same bytes in the
        // same order, and the compiler unrolls them.
        let mut feed = |bytes: [u8; 8]| {
            for byte in bytes {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for &(node, counter) in self.entries() {
            feed(node.to_be_bytes());
            feed(counter.to_be_bytes());
        }
        hash
    }
}

// Equality, hashing, printing and the wire form are the entries' own, as they were when
// the clock was a bare `Arc<[_]>`: a sequence of (node, counter) pairs.
impl PartialEq for VectorClock {
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries()
    }
}

impl Eq for VectorClock {}

impl Hash for VectorClock {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.entries().hash(state);
    }
}

impl fmt::Debug for VectorClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("VectorClock").field(&self.entries()).finish()
    }
}

impl serde::Serialize for VectorClock {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.entries().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for VectorClock {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<(NodeId, u64)>::deserialize(deserializer)?;
        Ok(VectorClock::of(&entries))
    }
}

/// Something that carries a causal history: stored versions, and replies from replicas.
pub trait Versioned {
    fn clock(&self) -> &VectorClock;
    /// Wall-clock write time (Unix microseconds), used only to order true siblings.
    fn timestamp(&self) -> u64;
}

impl<T: Versioned> Versioned for &T {
    fn clock(&self) -> &VectorClock {
        (*self).clock()
    }

    fn timestamp(&self) -> u64 {
        (*self).timestamp()
    }
}

/// Keeps the versions no other version descends (duplicates collapse to one): what a read
/// that gathered replies from several replicas returns. Newest first.
pub fn reconcile<V: Versioned>(mut versions: Vec<V>) -> Vec<V> {
    let mut kept: Vec<V> = Vec::with_capacity(versions.len());
    // Newest first, so among equal clocks the newest copy survives.
    versions.sort_by_key(|v| std::cmp::Reverse(order_key(v)));
    for version in versions {
        if kept.iter().any(|k| k.clock().descends(version.clock())) {
            continue;
        }
        kept.retain(|k| !version.clock().descends(k.clock()));
        kept.push(version);
    }
    kept.sort_by_key(|v| std::cmp::Reverse(order_key(v)));
    kept
}

/// A replica storing `incoming`: local versions it descends are dropped, concurrent ones
/// stay as siblings; `incoming` itself is dropped when a local version already descends it.
/// At most `max_siblings` are kept, oldest dropped first; returns the survivors and how
/// many were dropped for the bound (to be logged).
pub fn apply<V: Versioned>(local: Vec<V>, incoming: V, max_siblings: usize) -> (Vec<V>, usize) {
    // Equal clocks with different contents (a coordinator that lost its data dir reusing a
    // counter): every replica keeps the same one, the greater by timestamp and digest.
    let beaten =
        |held: &V| held.clock() == incoming.clock() && order_key(held) < order_key(&incoming);
    if (local.iter()).any(|l| l.clock().descends(incoming.clock()) && !beaten(l)) {
        return (local, 0);
    }
    let mut kept: Vec<V> = local
        .into_iter()
        .filter(|l| !incoming.clock().descends(l.clock()))
        .collect();
    kept.push(incoming);
    kept.sort_by_key(|v| std::cmp::Reverse(order_key(v)));
    let dropped = kept.len().saturating_sub(max_siblings.max(1));
    kept.truncate(max_siblings.max(1));
    (kept, dropped)
}

/// last-write-wins: the sibling with the latest timestamp (the clock digest breaks ties, so
/// every node picks the same one).
pub fn newest<V: Versioned>(siblings: &[V]) -> Option<&V> {
    newest_of(siblings.iter())
}

/// `newest` over any iterator of versions (no collecting on the read path).
pub fn newest_of<V: Versioned>(siblings: impl Iterator<Item = V>) -> Option<V> {
    // The greatest (timestamp, clock digest), the later one of equals, as `max_by_key`
    // would pick; a digest is hashed only for a timestamp tie (a get's one version needs
    // none: 180 instructions per read).
    siblings.reduce(
        |newest, next| match next.timestamp().cmp(&newest.timestamp()) {
            Ordering::Greater => next,
            Ordering::Less => newest,
            Ordering::Equal if next.clock().digest() >= newest.clock().digest() => next,
            Ordering::Equal => newest,
        },
    )
}

fn order_key<V: Versioned>(version: &V) -> (u64, u64) {
    (version.timestamp(), version.clock().digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct V(VectorClock, u64);

    impl Versioned for V {
        fn clock(&self) -> &VectorClock {
            &self.0
        }
        fn timestamp(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn reconcile_keeps_only_concurrent_versions() {
        let base = VectorClock::new().incremented(1);
        let a = V(base.incremented(1), 10);
        let b = V(base.incremented(2), 20);
        let old = V(base.clone(), 5);
        let kept = reconcile(vec![old.clone(), a.clone(), b.clone(), a.clone()]);
        assert_eq!(kept, vec![b.clone(), a.clone()]);
        let merged = V(a.0.merged(&b.0).incremented(3), 30);
        assert_eq!(reconcile(vec![a, b, merged.clone(), old]), vec![merged]);
    }

    #[test]
    fn apply_supersedes_or_adds_a_sibling() {
        let base = V(VectorClock::new().incremented(1), 1);
        let newer = V(base.0.incremented(1), 2);
        let (kept, _) = apply(vec![base.clone()], newer.clone(), 8);
        assert_eq!(kept, vec![newer.clone()]);
        // A stale write changes nothing.
        let (kept, _) = apply(vec![newer.clone()], base.clone(), 8);
        assert_eq!(kept, vec![newer.clone()]);
        // A concurrent write becomes a sibling; the bound drops the oldest.
        let other = V(base.0.incremented(2), 3);
        let (kept, dropped) = apply(vec![newer.clone()], other.clone(), 8);
        assert_eq!((kept.len(), dropped), (2, 0));
        let (kept, dropped) = apply(vec![newer], other.clone(), 1);
        assert_eq!((kept, dropped), (vec![other.clone()], 1));
        assert_eq!(newest(&[base, other.clone()]), Some(&other));
    }

    proptest::proptest! {
        /// The newest of any siblings is the one sorting by (timestamp, digest) puts
        /// first, the later of equals; the timestamps are drawn from few so ties happen.
        #[test]
        fn newest_is_the_greatest_timestamp_then_digest(
            versions in proptest::collection::vec((0u64..4, 0u64..3, 0u64..3), 0..6)
        ) {
            let versions: Vec<V> = (versions.into_iter())
                .map(|(writer, counter, at)| V(VectorClock::from_entries(&[(writer, counter)]), at))
                .collect();
            let expected = versions.iter().max_by_key(|v| order_key(*v));
            proptest::prop_assert_eq!(newest(&versions).map(|v| v as *const V), expected.map(|v| v as *const V));
        }
    }

    #[test]
    fn increment_and_descend() {
        let empty = VectorClock::new();
        let a1 = empty.incremented(1);
        let a2 = a1.incremented(1);
        let b1 = a1.incremented(2);
        assert!(a2.descends(&a1) && a1.descends(&empty) && a1.descends(&a1));
        assert!(!a1.descends(&a2));
        assert!(a2.concurrent(&b1));
        let merged = a2.merged(&b1);
        assert!(merged.descends(&a2) && merged.descends(&b1));
        assert_eq!(merged.entries(), &[(1, 2), (2, 1)]);
    }

    #[test]
    fn order_does_not_matter() {
        let x = VectorClock::new().incremented(5).incremented(3);
        let y = VectorClock::new().incremented(3).incremented(5);
        assert_eq!(x, y);
        assert_eq!(x.digest(), y.digest());
        assert_ne!(x.digest(), x.incremented(3).digest());
    }

    #[test]
    fn a_clock_travels_and_compares_as_its_bare_entries() {
        // Peers of an older release send and expect a clock as a bare sequence of entries,
        // the form an `Arc<[_]>` field had; an empty clock is one, however it was made.
        let entries = [(3, 1), (9, 4)];
        for clock in [VectorClock::new(), VectorClock::from_entries(&entries)] {
            let bare: Arc<[(NodeId, u64)]> = Arc::from(clock.entries());
            let wire = postcard::to_allocvec(&clock).expect("encodes");
            assert_eq!(wire, postcard::to_allocvec(&bare).expect("encodes"));
            let back: VectorClock = postcard::from_bytes(&wire).expect("decodes");
            assert_eq!(back, clock);
            assert_eq!(
                format!("{back:?}"),
                format!("VectorClock({:?})", clock.entries())
            );
        }
        let empty = VectorClock::from_stored(&[]);
        assert_eq!(empty, VectorClock::new());
        assert!(empty
            .merged(&VectorClock::from_entries(&entries))
            .0
            .is_some());
        assert!(VectorClock::new().merged(&VectorClock::new()).0.is_none());
    }

    #[test]
    fn pruned_to_the_limit_keeping_the_writer() {
        let mut clock = VectorClock::new();
        for node in 0..40 {
            clock = clock.incremented(node);
        }
        assert_eq!(clock.entries().len(), MAX_CLOCK_ENTRIES);
        assert_eq!(clock.counter(39), 1);
    }
}

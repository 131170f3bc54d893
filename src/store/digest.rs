//! Per-bucket digests for anti-entropy, kept up to date on every write (never by scanning).
//!
//! A key's *fingerprint* hashes the key and the identity (clock, timestamp, tombstone) of
//! each version it holds; a bucket's digest is the XOR of its keys' fingerprints, so a write
//! changes it by XOR-ing out the old fingerprint and in the new one. Two replicas holding
//! the same versions of the same keys have equal digests. Expiry is left out on purpose: a
//! touch keeps the version, and replicas may differ in when they noticed an expiry.

use super::Versions;
use crate::keyspace;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// 64-bit FNV-1a, then a finalizer so nearby inputs spread over all bits. Stable across
/// processes and releases: digests are compared between nodes.
fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = seed ^ FNV_OFFSET;
    for &byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    }
    mix(hash)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The same as `hash_bytes` for two seeds in one pass: the two multiply chains run side by
/// side instead of one after the other (an overwrite hashes the key for its old and its new
/// versions).
fn hash_bytes_twice(seeds: (u64, u64), bytes: &[u8]) -> (u64, u64) {
    let (mut a, mut b) = (seeds.0 ^ FNV_OFFSET, seeds.1 ^ FNV_OFFSET);
    for &byte in bytes {
        a = (a ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        b = (b ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
    }
    (mix(a), mix(b))
}

/// What identifies a set of versions apart from the key; none for no versions.
fn version_set(versions: Option<&Versions>) -> Option<u64> {
    let versions = versions.filter(|v| !v.0.is_empty())?;
    // XOR over versions: the order siblings are stored in does not matter.
    Some((versions.0.iter()).fold(0u64, |acc, r| {
        acc ^ mix(r.clock.digest() ^ mix(r.timestamp ^ u64::from(r.tombstone) << 63))
    }))
}

/// Identifies the set of versions `key` holds; 0 for none.
pub fn fingerprint(key: &[u8], versions: Option<&Versions>) -> u64 {
    version_set(versions).map_or(0, |set| hash_bytes(set, key) | 1)
}

/// `fingerprint(key, old) ^ fingerprint(key, new)`.
fn fingerprint_change(key: &[u8], old: Option<&Versions>, new: Option<&Versions>) -> u64 {
    match (version_set(old), version_set(new)) {
        (Some(old), Some(new)) => {
            let (old, new) = hash_bytes_twice((old, new), key);
            (old | 1) ^ (new | 1)
        }
        (Some(set), None) | (None, Some(set)) => hash_bytes(set, key) | 1,
        (None, None) => 0,
    }
}

fn has_tombstone(versions: Option<&Versions>) -> bool {
    versions.is_some_and(|v| v.0.iter().any(|r| r.tombstone))
}

/// What one write changed in its bucket's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub bucket: u32,
    pub xor: u64,
    pub keys: i32,
    pub tombstoned: i32,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.xor == 0 && self.keys == 0 && self.tombstoned == 0
    }

    /// Adds `other` (of the same bucket) to this delta.
    pub fn absorb(&mut self, other: &Delta) {
        self.xor ^= other.xor;
        self.keys += other.keys;
        self.tombstoned += other.tombstoned;
    }
}

/// One bucket's summary: the digest, how many keys, how many of them hold a tombstone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub digest: u64,
    pub keys: u32,
    pub tombstoned: u32,
}

impl Summary {
    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..8].copy_from_slice(&self.digest.to_be_bytes());
        out[8..12].copy_from_slice(&self.keys.to_be_bytes());
        out[12..].copy_from_slice(&self.tombstoned.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Summary> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        Some(Summary {
            digest: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            keys: u32::from_be_bytes(bytes[8..12].try_into().ok()?),
            tombstoned: u32::from_be_bytes(bytes[12..].try_into().ok()?),
        })
    }

    pub fn apply(&mut self, delta: &Delta) {
        self.digest ^= delta.xor;
        self.keys = self.keys.saturating_add_signed(delta.keys);
        self.tombstoned = self.tombstoned.saturating_add_signed(delta.tombstoned);
    }
}

/// The summaries of every bucket (the ring's `cluster.buckets`, a power of two).
pub struct Digests {
    digests: Box<[AtomicU64]>,
    keys: Box<[AtomicU32]>,
    tombstoned: Box<[AtomicU32]>,
}

impl Digests {
    pub fn new(buckets: u32) -> Digests {
        let buckets = buckets.max(1).next_power_of_two();
        Digests {
            digests: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            keys: (0..buckets).map(|_| AtomicU32::new(0)).collect(),
            tombstoned: (0..buckets).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub fn buckets(&self) -> u32 {
        self.digests.len() as u32
    }

    /// The bucket of a ring hash (the same bucket the ring places it in).
    pub fn bucket_of(&self, hash: u32) -> u32 {
        keyspace::bucket_of(hash, self.buckets())
    }

    /// The ring hashes bucket `bucket` covers, inclusive.
    pub fn hash_range(&self, bucket: u32) -> (u32, u32) {
        keyspace::hash_range(bucket, self.buckets())
    }

    /// The change from `old` to `new` versions of `key` (with ring hash `hash`).
    pub fn delta(
        &self,
        hash: u32,
        key: &[u8],
        old: Option<&Versions>,
        new: Option<&Versions>,
    ) -> Delta {
        let present = |v: Option<&Versions>| i32::from(v.is_some_and(|v| !v.0.is_empty()));
        Delta {
            bucket: self.bucket_of(hash),
            xor: fingerprint_change(key, old, new),
            keys: present(new) - present(old),
            tombstoned: i32::from(has_tombstone(new)) - i32::from(has_tombstone(old)),
        }
    }

    pub fn record(&self, delta: &Delta) {
        if delta.is_empty() {
            return;
        }
        let at = delta.bucket as usize;
        self.digests[at].fetch_xor(delta.xor, Ordering::Relaxed);
        let add = |counter: &AtomicU32, by: i32| {
            if by > 0 {
                counter.fetch_add(by as u32, Ordering::Relaxed);
            } else if by < 0 {
                let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    Some(c.saturating_sub(by.unsigned_abs()))
                });
            }
        };
        add(&self.keys[at], delta.keys);
        add(&self.tombstoned[at], delta.tombstoned);
    }

    /// `old` → `new` for `key` in one call.
    pub fn change(&self, hash: u32, key: &[u8], old: Option<&Versions>, new: Option<&Versions>) {
        self.record(&self.delta(hash, key, old, new));
    }

    pub fn summary(&self, bucket: u32) -> Summary {
        let at = bucket as usize;
        Summary {
            digest: self.digests[at].load(Ordering::Relaxed),
            keys: self.keys[at].load(Ordering::Relaxed),
            tombstoned: self.tombstoned[at].load(Ordering::Relaxed),
        }
    }

    pub fn all(&self) -> Vec<u64> {
        (self.digests.iter())
            .map(|d| d.load(Ordering::Relaxed))
            .collect()
    }

    pub fn set(&self, bucket: u32, summary: Summary) {
        let at = bucket as usize;
        self.digests[at].store(summary.digest, Ordering::Relaxed);
        self.keys[at].store(summary.keys, Ordering::Relaxed);
        self.tombstoned[at].store(summary.tombstoned, Ordering::Relaxed);
    }

    pub fn clear(&self) {
        for bucket in 0..self.buckets() {
            self.set(bucket, Summary::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::VectorClock;
    use crate::store::Record;
    use bytes::Bytes;

    fn version(node: u64, counter: u64, tombstone: bool) -> Record {
        let mut clock = VectorClock::new();
        for _ in 0..counter {
            clock = clock.incremented(node);
        }
        Record {
            value: Bytes::from_static(b"v"),
            flags: 0,
            expires_at: 0,
            timestamp: 1000 + counter,
            clock,
            tombstone,
            stale: false,
            recache_claimed: false,
        }
    }

    #[test]
    fn digests_follow_writes_and_ignore_order_and_expiry() {
        let digests = Digests::new(4);
        let one = Versions(vec![version(1, 1, false), version(2, 1, false)]);
        let swapped = Versions(vec![version(2, 1, false), version(1, 1, false)]);
        assert_eq!(
            fingerprint(b"k", Some(&one)),
            fingerprint(b"k", Some(&swapped))
        );
        let mut touched = one.clone();
        touched.0[0].expires_at = 99;
        assert_eq!(
            fingerprint(b"k", Some(&one)),
            fingerprint(b"k", Some(&touched))
        );
        assert_ne!(fingerprint(b"k", Some(&one)), fingerprint(b"j", Some(&one)));

        let hash = 0xC000_0001;
        digests.change(hash, b"k", None, Some(&one));
        let after_put = digests.summary(3);
        assert_eq!((after_put.keys, after_put.tombstoned), (1, 0));
        assert_ne!(after_put.digest, 0);
        let deleted = Versions::one(version(1, 2, true));
        digests.change(hash, b"k", Some(&one), Some(&deleted));
        assert_eq!(digests.summary(3).tombstoned, 1);
        digests.change(hash, b"k", Some(&deleted), None);
        assert_eq!(digests.summary(3), Summary::default());
        assert_eq!(digests.hash_range(3), (0xC000_0000, 0xFFFF_FFFF));
        let round = Summary::decode(&after_put.encode()).unwrap();
        assert_eq!(round, after_put);
    }

    #[test]
    fn a_change_xors_out_the_old_fingerprint_and_in_the_new() {
        let old = Versions(vec![version(1, 1, false), version(2, 3, false)]);
        let new = Versions::one(version(1, 4, true));
        let empty = Versions(Vec::new());
        let key = b"a key long enough to take many rounds of the byte loop: 0123456789";
        for key in [&key[..], b"k", b""] {
            for (before, after) in [
                (Some(&old), Some(&new)),
                (Some(&old), None),
                (None, Some(&new)),
                (Some(&empty), Some(&new)),
                (None, None),
            ] {
                assert_eq!(
                    fingerprint_change(key, before, after),
                    fingerprint(key, before) ^ fingerprint(key, after)
                );
            }
        }
        // Digests are compared between nodes of different releases: the value is pinned.
        assert_eq!(fingerprint(b"k", Some(&old)), 6_617_256_186_607_805_739);
    }
}

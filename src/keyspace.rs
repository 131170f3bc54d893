//! Where a key lives in the hash space: its ring hash and the bucket that hash falls in.
//! The ring, the store engines (shards, digests, bucket ranges) and anti-entropy all agree
//! on these two functions, so they live below all of them.

use md5::{Digest, Md5};

/// The ring position of `key`: the first 4 bytes of MD5(key), big-endian (Kai's hash).
pub fn key_hash(key: &[u8]) -> u32 {
    let digest = Md5::digest(key);
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Bits a ring hash is shifted right by to give its bucket among `buckets` (a power of two).
fn bucket_shift(buckets: u32) -> u32 {
    32 - buckets.max(1).next_power_of_two().trailing_zeros()
}

/// The bucket of ring hash `hash` among `buckets` (a power of two): hash / (2^32 / buckets).
pub fn bucket_of(hash: u32, buckets: u32) -> u32 {
    hash.checked_shr(bucket_shift(buckets)).unwrap_or(0)
}

/// The ring hashes bucket `bucket` covers, inclusive.
pub fn hash_range(bucket: u32, buckets: u32) -> (u32, u32) {
    let width = 1u64 << bucket_shift(buckets);
    let low = u64::from(bucket) * width;
    (low as u32, (low + width - 1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kai_hash_vectors() {
        assert_eq!(key_hash(b"key1"), 3266172564);
        assert_eq!(key_hash(b"key2"), 2029528490);
        assert_eq!(key_hash(b"key3"), 909203333);
    }

    #[test]
    fn buckets_tile_the_hash_space() {
        assert_eq!(bucket_of(3266172564, 4), 3);
        assert_eq!(bucket_of(u32::MAX, 1), 0);
        assert_eq!(hash_range(0, 1), (0, u32::MAX));
        for bucket in 0..8 {
            let (low, high) = hash_range(bucket, 8);
            assert_eq!((bucket_of(low, 8), bucket_of(high, 8)), (bucket, bucket));
        }
    }
}

//! How the memory engine packs a key's versions into its item: postcard's layout less what
//! every write repeats. A write's own clock entry carries the write's timestamp as its
//! counter (`VectorClock::advanced`), so that counter is a one-byte "same as the timestamp";
//! node ids are hashes, 8 bytes fixed where a varint takes 10; the three flags share a byte.
//! A 100 B item shrinks by 11 bytes, which moves it down one malloc size class (16 bytes).
//! The values come last, after every record's metadata (in reverse order, so a reader takes
//! each from the end as it meets its record): a write that replaces them unread then reads
//! only the item's first cache line, which finding the key already loaded.
//! Items never leave the process, so this layout can change with any release.

use crate::causality::{NodeId, VectorClock};
use crate::record::format::{put_varint, Input};
use crate::record::{Record, Versions};
use bytes::Bytes;

const TOMBSTONE: u8 = 1;
const STALE: u8 = 2;
const RECACHE_CLAIMED: u8 = 4;

/// A clock counter equal to its record's timestamp, else the counter follows.
const COUNTER_IS_TIMESTAMP: u8 = 0;
const COUNTER_FOLLOWS: u8 = 1;

/// Appends `versions` to `out`.
#[cfg(test)]
pub fn pack(versions: &Versions, out: &mut Vec<u8>) {
    pack_metadata(versions, out);
    for value in values(versions) {
        out.extend_from_slice(value);
    }
}

/// Appends what `versions` packs to before their values; the values follow, as `values`
/// gives them. Apart, so the values are copied once, straight into the item's block.
pub fn pack_metadata(versions: &Versions, out: &mut Vec<u8>) {
    put_varint(out, versions.0.len() as u64);
    for record in &versions.0 {
        let set = |flag: bool, bit: u8| if flag { bit } else { 0 };
        out.push(
            set(record.tombstone, TOMBSTONE)
                | set(record.stale, STALE)
                | set(record.recache_claimed, RECACHE_CLAIMED),
        );
        put_varint(out, record.value.len() as u64);
        put_varint(out, u64::from(record.flags));
        put_varint(out, record.expires_at);
        put_varint(out, record.timestamp);
        let entries = record.clock.entries();
        put_varint(out, entries.len() as u64);
        for &(node, counter) in entries {
            out.extend_from_slice(&node.to_le_bytes());
            if counter == record.timestamp {
                out.push(COUNTER_IS_TIMESTAMP);
            } else {
                out.push(COUNTER_FOLLOWS);
                put_varint(out, counter);
            }
        }
    }
}

/// The values that follow `pack_metadata`'s bytes, in order.
pub fn values(versions: &Versions) -> impl Iterator<Item = &[u8]> {
    versions.0.iter().rev().map(|record| &record.value[..])
}

/// The versions `pack` wrote, or None for bytes it did not write.
pub fn unpack(bytes: &[u8]) -> Option<Versions> {
    decode(bytes, true).map(|(versions, _)| versions)
}

/// As `unpack`, but every value is left empty instead of copied out; with the total length
/// the values have. For a write that replaces them unread.
pub fn unpack_without_values(bytes: &[u8]) -> Option<(Versions, usize)> {
    decode(bytes, false)
}

fn decode(bytes: &[u8], copy_values: bool) -> Option<(Versions, usize)> {
    let mut input = Input(bytes);
    let mut value_bytes = 0;
    let count = input.varint()?;
    // Every record takes at least 5 bytes: no count can claim more than the input holds.
    let mut versions = Vec::with_capacity(usize::try_from(count).ok()?.min(bytes.len() / 5));
    for _ in 0..count {
        let bits = input.byte()?;
        let value_len = usize::try_from(input.varint()?).ok()?;
        let value = input.take_back(value_len)?;
        value_bytes += value_len;
        let flags = u32::try_from(input.varint()?).ok()?;
        let expires_at = input.varint()?;
        let timestamp = input.varint()?;
        let entry_count = usize::try_from(input.varint()?).ok()?;
        let mut entries: Vec<(NodeId, u64)> = Vec::with_capacity(entry_count.min(bytes.len() / 9));
        for _ in 0..entry_count {
            let node = NodeId::from_le_bytes(input.take(8)?.try_into().ok()?);
            let counter = match input.byte()? {
                COUNTER_IS_TIMESTAMP => timestamp,
                COUNTER_FOLLOWS => input.varint()?,
                _ => return None,
            };
            if entries.last().is_some_and(|&(before, _)| before >= node) {
                return None;
            }
            entries.push((node, counter));
        }
        versions.push(Record {
            value: if copy_values {
                Bytes::copy_from_slice(value)
            } else {
                Bytes::new()
            },
            flags,
            expires_at,
            timestamp,
            clock: VectorClock::from_entries(&entries),
            tombstone: bits & TOMBSTONE != 0,
            stale: bits & STALE != 0,
            recache_claimed: bits & RECACHE_CLAIMED != 0,
        });
    }
    input
        .0
        .is_empty()
        .then_some((Versions(versions), value_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_set_of_versions_unpacks_to_itself_with_or_without_values(
            records in prop::collection::vec(crate::record::arbitrary_record(), 0..4)
        ) {
            let versions = Versions(records);
            let mut packed = Vec::new();
            pack(&versions, &mut packed);
            prop_assert_eq!(unpack(&packed), Some(versions.clone()));
            let (bare, value_bytes) = unpack_without_values(&packed).expect("unpacks");
            prop_assert_eq!(value_bytes, versions.0.iter().map(|r| r.value.len()).sum::<usize>());
            let mut emptied = versions;
            for record in &mut emptied.0 {
                record.value = Bytes::new();
            }
            prop_assert_eq!(bare, emptied);
        }

        #[test]
        fn cut_or_altered_bytes_never_panic(
            records in prop::collection::vec(crate::record::arbitrary_record(), 1..3),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let mut packed = Vec::new();
            pack(&Versions(records), &mut packed);
            let end = cut.index(packed.len());
            prop_assert_eq!(unpack(&packed[..end]), None);
            let at = flip.index(packed.len());
            packed[at] ^= 0xff;
            let _ = unpack(&packed);
        }
    }

    #[test]
    fn a_fresh_100_byte_write_packs_eleven_bytes_smaller_than_postcard() {
        let stamp = 1_796_000_000_000_000;
        let record = Record {
            value: Bytes::from(vec![b'v'; 100]),
            flags: 0,
            expires_at: 0,
            timestamp: stamp,
            clock: VectorClock::new().advanced(0x9c3f_1a2b_4d5e_6f70, stamp),
            tombstone: false,
            stale: false,
            recache_claimed: false,
        };
        let versions = Versions::one(record);
        let mut packed = Vec::new();
        pack(&versions, &mut packed);
        let postcard = postcard::to_allocvec(&versions).expect("encodes");
        assert_eq!(postcard.len() - packed.len(), 11, "{packed:?}");
    }
}

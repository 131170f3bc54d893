//! The versioned record: one stored version of a key (value, flags, expiry, vector clock,
//! write time, tombstone flag) and the set of sibling versions a key holds. Every layer above
//! speaks in these; the store persists them, the cluster ships them, the protocols read them.

use crate::causality::VectorClock;
use bytes::Bytes;

/// One stored version of a key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub value: Bytes,
    /// Opaque client flags (memcached: 32 bits).
    pub flags: u32,
    /// Unix seconds after which the record is gone; 0 = never.
    pub expires_at: u64,
    /// Wall-clock time of the write in Unix microseconds (orders siblings, last-write-wins).
    pub timestamp: u64,
    pub clock: VectorClock,
    /// A delete: a version without a value that supersedes what it descends, so anti-entropy
    /// cannot resurrect the key. Its `expires_at` is when it may be purged.
    pub tombstone: bool,
    /// Stale-while-revalidate (meta protocol): marked stale by `md <key> I`, or stored by
    /// `ms … I` with an older cas; readers are told `X` and may still use the value.
    pub stale: bool,
    /// A reader was told it won the right to recache this version (`W`); later readers are
    /// told `Z`. Amended in place (clock and cas stay), like a touch.
    pub recache_claimed: bool,
}

/// Bytes a record is charged beyond key and value (`bytes`, `memory_limit`): a little more
/// than the memory engine's slot, table entry, header and encoding take.
pub const RECORD_OVERHEAD: usize = 96;

/// Whether an expiry (Unix seconds, 0 = never) has passed at `now_secs`.
pub fn expired_by(expires_at: u64, now_secs: u64) -> bool {
    expires_at != 0 && expires_at <= now_secs
}

/// The earlier of two expiries, where 0 means never.
pub fn earlier_expiry<T: Copy + Ord + Default>(a: T, b: T) -> T {
    match (a == T::default(), b == T::default()) {
        (true, _) => b,
        (_, true) => a,
        _ => a.min(b),
    }
}

impl Record {
    pub fn is_expired(&self, now_secs: u64) -> bool {
        expired_by(self.expires_at, now_secs)
    }

    /// The same write as `other` (clock and write time), whatever amendments (expiry,
    /// recache claim) either carries.
    pub fn is_same_version(&self, other: &Record) -> bool {
        self.clock == other.clock && self.timestamp == other.timestamp
    }

    /// Memory charged for this record under `key` (the `bytes` stat, `memory_limit`).
    pub fn footprint(&self, key: &[u8]) -> usize {
        key.len() + self.value.len() + RECORD_OVERHEAD
    }
}

impl crate::causality::Versioned for Record {
    fn clock(&self) -> &VectorClock {
        &self.clock
    }

    fn timestamp(&self) -> u64 {
        self.timestamp
    }
}

/// Every version of one key this node holds: one after an ordinary write, several siblings
/// after concurrent writes on different nodes, tombstones included. Newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Versions(pub Vec<Record>);

impl Versions {
    pub fn one(record: Record) -> Self {
        Versions(vec![record])
    }

    /// The versions that hold a value (not tombstones).
    pub fn live(&self) -> impl Iterator<Item = &Record> + Clone {
        self.0.iter().filter(|r| !r.tombstone)
    }

    /// The last-write-wins view: the version with the greatest timestamp, unless that is a
    /// tombstone (a delete later than every concurrent write hides them).
    pub fn newest_live(&self) -> Option<&Record> {
        crate::causality::newest(&self.0).filter(|r| !r.tombstone)
    }

    pub fn has_live(&self) -> bool {
        self.live().next().is_some()
    }

    /// The per-node maximum of every version's clock: what a write superseding them all
    /// increments.
    pub fn merged_clock(&self) -> VectorClock {
        (self.0.iter()).fold(VectorClock::new(), |clock, r| clock.merged(&r.clock))
    }

    pub fn footprint(&self, key: &[u8]) -> usize {
        self.0.iter().map(|r| r.footprint(key)).sum()
    }

    /// Drops expired versions (and purgeable tombstones); false when none is left.
    pub fn retain_unexpired(&mut self, now_secs: u64) -> bool {
        self.0.retain(|r| !r.is_expired(now_secs));
        !self.0.is_empty()
    }

    pub fn any_expired(&self, now_secs: u64) -> bool {
        self.0.iter().any(|r| r.is_expired(now_secs))
    }

    /// The earliest expiry among the versions, Unix seconds; 0 when none expires.
    pub fn earliest_expiry(&self) -> u64 {
        (self.0.iter()).fold(0, |earliest, r| earlier_expiry(earliest, r.expires_at))
    }
}

/// The stored form of a key's versions (the disk engine's records). It starts with
/// `[0, FORMAT]`; release 0.1.0 wrote the bare postcard vector of its records, whose first
/// byte (the sibling count, at least 1) is never 0, so both are read. Older formats are
/// rewritten in the current one by the next write of their key.
pub mod format {
    use super::{Record, Versions};
    use crate::causality::{VectorClock, MAX_CLOCK_ENTRIES};
    use bytes::Bytes;

    /// 2: records gained `stale` and `recache_claimed` (meta protocol). 1: release 0.1.0.
    pub const FORMAT: u8 = 2;
    /// Release 0.1.0's format, written until the upgrade is finalised so the previous
    /// release can still read the data directory after a roll back.
    pub const LEGACY: u8 = 1;

    pub fn encode(versions: &Versions) -> Result<Vec<u8>, postcard::Error> {
        encode_onto(versions, Vec::new())
    }

    /// `encode`, appended to `out`. Written by hand, byte for byte what postcard writes for
    /// `versions` (a test holds it to that): serde's generic path took 620 instructions of
    /// a disk engine's set.
    pub fn encode_onto(versions: &Versions, mut out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
        let values: usize = versions.0.iter().map(|r| r.value.len()).sum();
        out.reserve(2 + values + versions.0.len() * 64);
        out.extend_from_slice(&[0, FORMAT]);
        put_varint(&mut out, versions.0.len() as u64);
        for record in &versions.0 {
            put_varint(&mut out, record.value.len() as u64);
            out.extend_from_slice(&record.value);
            put_varint(&mut out, u64::from(record.flags));
            put_varint(&mut out, record.expires_at);
            put_varint(&mut out, record.timestamp);
            put_varint(&mut out, record.clock.entries().len() as u64);
            for &(node, counter) in record.clock.entries() {
                put_varint(&mut out, node);
                put_varint(&mut out, counter);
            }
            let flags = [record.tombstone, record.stale, record.recache_claimed];
            out.extend(flags.map(u8::from));
        }
        Ok(out)
    }

    /// Appends `value` as a LEB128 varint (postcard's). Eight bytes at a time, as `varint`
    /// reads them: a push per byte took 230 instructions of a disk engine's set.
    #[inline(always)]
    pub(crate) fn put_varint(out: &mut Vec<u8>, value: u64) {
        // Most are lengths, counts, flags and expiries: one byte, pushed in place.
        if value < 0x80 {
            out.push(value as u8);
        } else {
            put_long_varint(out, value);
        }
    }

    fn put_long_varint(out: &mut Vec<u8>, value: u64) {
        let len = (64 - value.leading_zeros() as usize).div_ceil(7);
        let low = spread_seven_bit_groups(value & ((1 << 56) - 1));
        if len <= 8 {
            // A continuation bit on every byte but the last; the word's unused bytes
            // are cut off again.
            let more = 0x8080_8080_8080_8080 & u64::MAX >> (64 - 8 * (len - 1));
            out.extend_from_slice(&(low | more).to_le_bytes());
            out.truncate(out.len() - (8 - len));
            return;
        }
        out.extend_from_slice(&(low | 0x8080_8080_8080_8080).to_le_bytes());
        let high = value >> 56;
        if len == 9 {
            out.push(high as u8);
        } else {
            out.extend_from_slice(&[high as u8 | 0x80, (high >> 7) as u8]);
        }
    }

    /// `value`'s (below 2^56) 7-bit groups, one to each little-endian byte: the inverse
    /// of `seven_bit_groups`.
    fn spread_seven_bit_groups(value: u64) -> u64 {
        let x = (value & 0x0000_0000_0fff_ffff) | (value & 0x00ff_ffff_f000_0000) << 4;
        let x = (x & 0x0000_3fff_0000_3fff) | (x & 0x0fff_c000_0fff_c000) << 2;
        (x & 0x007f_007f_007f_007f) | (x & 0x3f80_3f80_3f80_3f80) << 1
    }

    /// `versions` in `format`. LEGACY is 0.1.0's layout; meta's flags, which 0.1.0 has no
    /// field for, follow it as a trailer of (stale, recache_claimed) per record, which
    /// 0.1.0 ignores (it reads one postcard value) and this release reads back.
    pub fn encode_as(versions: &Versions, format: u8) -> Result<Vec<u8>, postcard::Error> {
        if format >= FORMAT {
            return encode(versions);
        }
        let legacy: Vec<RecordV1> = (versions.0.iter()).map(RecordV1::from).collect();
        let out = postcard::to_allocvec(&legacy)?;
        let flags: Vec<(bool, bool)> = (versions.0.iter())
            .map(|r| (r.stale, r.recache_claimed))
            .collect();
        if flags.iter().any(|&(stale, claimed)| stale || claimed) {
            return postcard::to_extend(&flags, out);
        }
        Ok(out)
    }

    /// None for bytes no known format decodes.
    pub fn decode(bytes: &[u8]) -> Option<Versions> {
        match bytes {
            [0, FORMAT, rest @ ..] => decode_current(rest, Bytes::copy_from_slice),
            [0, ..] => None,
            legacy => {
                let (records, trailer) = postcard::take_from_bytes::<Vec<RecordV1>>(legacy).ok()?;
                let mut versions = Versions(records.into_iter().map(Record::from).collect());
                if let Ok(flags) = postcard::from_bytes::<Vec<(bool, bool)>>(trailer) {
                    if flags.len() == versions.0.len() {
                        for (record, (stale, claimed)) in versions.0.iter_mut().zip(flags) {
                            (record.stale, record.recache_claimed) = (stale, claimed);
                        }
                    }
                }
                Some(versions)
            }
        }
    }

    /// `decode` of `bytes` whose values stay in `bytes`' buffer instead of being copied
    /// out: a disk read's frame is already a fresh buffer (one allocation and one copy of
    /// the value fewer per get).
    pub fn decode_shared(bytes: &Bytes) -> Option<Versions> {
        let [0, FORMAT, rest @ ..] = &bytes[..] else {
            return decode(bytes);
        };
        decode_current(rest, |value| bytes.slice_ref(value))
    }

    /// The most a record's fields after its value take: flags, expiry, timestamp, a
    /// clock of the most entries this release writes, and the three flags.
    pub const MAX_AFTER_VALUE: usize = 5 + 10 + 10 + 1 + MAX_CLOCK_ENTRIES * 20 + 3;

    /// Where the value of a body holding one version in FORMAT starts and how long it is,
    /// from the body's first bytes (up to the value): a reader that needs no value can
    /// skip it. None for siblings, other formats, or bytes cut short.
    pub fn lone_value_span(body_start: &[u8]) -> Option<(usize, usize)> {
        let [0, FORMAT, rest @ ..] = body_start else {
            return None;
        };
        let mut input = Input(rest);
        if input.varint()? != 1 {
            return None;
        }
        let len = usize::try_from(input.varint()?).ok()?;
        Some((body_start.len() - input.0.len(), len))
    }

    /// The version of a body `lone_value_span` measured, from the bytes after its value;
    /// its value is left empty.
    pub fn decode_lone_without_value(after_value: &[u8]) -> Option<Versions> {
        let mut body = [0; 2 + MAX_AFTER_VALUE];
        let body = body.get_mut(..2 + after_value.len())?;
        // A count of one and an empty value, then the record's other fields.
        body[..2].copy_from_slice(&[1, 0]);
        body[2..].copy_from_slice(after_value);
        decode_current(body, |_| Bytes::new())
    }

    /// FORMAT's body, postcard's encoding of `Versions`, read by hand: serde's generic
    /// path took 1,200 instructions of a 1 KiB disk get, this under half of that. It takes
    /// exactly what `postcard::from_bytes` takes (a test holds the two to it on any bytes),
    /// bytes after the last record included.
    fn decode_current(body: &[u8], value_of: impl Fn(&[u8]) -> Bytes) -> Option<Versions> {
        let mut input = Input(body);
        let count = usize::try_from(input.varint()?).ok()?;
        // A record takes at least 8 bytes: no count can claim more than the input holds.
        let mut records = Vec::with_capacity(count.min(body.len() / 8));
        for _ in 0..count {
            let value_len = usize::try_from(input.varint()?).ok()?;
            let value = value_of(input.take(value_len)?);
            let flags = input.varint_u32()?;
            let expires_at = input.varint()?;
            let timestamp = input.varint()?;
            let clock = decode_clock(&mut input)?;
            records.push(Record {
                value,
                flags,
                expires_at,
                timestamp,
                clock,
                tombstone: input.bool()?,
                stale: input.bool()?,
                recache_claimed: input.bool()?,
            });
        }
        Some(Versions(records))
    }

    fn decode_clock(input: &mut Input<'_>) -> Option<VectorClock> {
        let count = usize::try_from(input.varint()?).ok()?;
        let mut entries = [(0, 0); MAX_CLOCK_ENTRIES];
        if count > MAX_CLOCK_ENTRIES {
            // Not written by this release, but read as postcard would.
            let mut entries = Vec::with_capacity(count.min(input.0.len() / 2));
            for _ in 0..count {
                entries.push((input.varint()?, input.varint()?));
            }
            return Some(VectorClock::from_stored(&entries));
        }
        for entry in &mut entries[..count] {
            *entry = (input.varint()?, input.varint()?);
        }
        Some(VectorClock::from_stored(&entries[..count]))
    }

    /// The low 7 bits of each of `word`'s little-endian bytes, packed together.
    fn seven_bit_groups(word: u64) -> u64 {
        let x = word & 0x7f7f_7f7f_7f7f_7f7f;
        let x = (x & 0x007f_007f_007f_007f) | (x & 0x7f00_7f00_7f00_7f00) >> 1;
        let x = (x & 0x0000_3fff_0000_3fff) | (x & 0x3fff_0000_3fff_0000) >> 2;
        (x & 0x0000_0000_0fff_ffff) | (x & 0x0fff_ffff_0000_0000) >> 4
    }

    /// A reader of encoded bytes, front to back (and back to front, for the memory
    /// engine's values).
    pub(crate) struct Input<'a>(pub(crate) &'a [u8]);

    impl<'a> Input<'a> {
        pub(crate) fn byte(&mut self) -> Option<u8> {
            let (&first, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(first)
        }

        pub(crate) fn take(&mut self, len: usize) -> Option<&'a [u8]> {
            if self.0.len() < len {
                return None;
            }
            let (taken, rest) = self.0.split_at(len);
            self.0 = rest;
            Some(taken)
        }

        /// The last `len` bytes.
        pub(crate) fn take_back(&mut self, len: usize) -> Option<&'a [u8]> {
            let at = self.0.len().checked_sub(len)?;
            let (rest, taken) = self.0.split_at(at);
            self.0 = rest;
            Some(taken)
        }

        /// postcard's bool: 0 or 1.
        fn bool(&mut self) -> Option<bool> {
            match self.byte()? {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            }
        }

        /// A LEB128 u64 of at most 10 bytes, as postcard writes it. Eight bytes at a time
        /// where the input has them: a byte loop took 430 instructions of a disk get, whose
        /// record holds a 10-byte node id and two 8-byte timestamps.
        pub(crate) fn varint(&mut self) -> Option<u64> {
            // Most are lengths, counts, flags and expiries: one byte.
            if let Some((&first, rest)) = self.0.split_first() {
                if first < 0x80 {
                    self.0 = rest;
                    return Some(u64::from(first));
                }
            }
            let Some(head) = self.0.first_chunk::<8>() else {
                return self.varint_of(64);
            };
            let word = u64::from_le_bytes(*head);
            let ends = !word & 0x8080_8080_8080_8080;
            if ends == 0 {
                // Nine or ten bytes: the first eight carry the low 56 bits.
                self.0 = &self.0[8..];
                let low = seven_bit_groups(word);
                let ninth = self.byte()?;
                if ninth < 0x80 {
                    return Some(low | u64::from(ninth) << 56);
                }
                let tenth = self.byte()?;
                let high = u64::from(ninth & 0x7f) << 56 | u64::from(tenth) << 63;
                return (tenth <= 1).then_some(low | high);
            }
            let len = ends.trailing_zeros() as usize / 8 + 1;
            self.0 = &self.0[len..];
            Some(seven_bit_groups(word & u64::MAX >> (64 - 8 * len)))
        }

        /// A u32's varint: at most 5 bytes, the fifth carrying 4 bits.
        fn varint_u32(&mut self) -> Option<u32> {
            self.varint_of(32).map(|value| value as u32)
        }

        /// A varint of a `bits`-wide type: at most `bits / 7` bytes rounded up, the last
        /// carrying only the bits left over (64: 10 bytes, the last 1 bit; 32: 5 and 4).
        fn varint_of(&mut self, bits: u32) -> Option<u64> {
            let max_bytes = bits.div_ceil(7);
            let last_bits = bits - 7 * (max_bytes - 1);
            let mut value = 0u64;
            for i in 0..max_bytes {
                let byte = self.byte()?;
                value |= u64::from(byte & 0x7f) << (7 * i);
                if byte < 0x80 {
                    return (i + 1 < max_bytes || byte < 1 << last_bits).then_some(value);
                }
            }
            None
        }
    }

    /// A record as release 0.1.0 stored it.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub struct RecordV1 {
        pub value: Bytes,
        pub flags: u32,
        pub expires_at: u64,
        pub timestamp: u64,
        pub clock: VectorClock,
        pub tombstone: bool,
    }

    impl From<&Record> for RecordV1 {
        fn from(record: &Record) -> RecordV1 {
            RecordV1 {
                value: record.value.clone(),
                flags: record.flags,
                expires_at: record.expires_at,
                timestamp: record.timestamp,
                clock: record.clock.clone(),
                tombstone: record.tombstone,
            }
        }
    }

    impl From<RecordV1> for Record {
        fn from(old: RecordV1) -> Record {
            Record {
                value: old.value,
                flags: old.flags,
                expires_at: old.expires_at,
                timestamp: old.timestamp,
                clock: old.clock,
                tombstone: old.tombstone,
                stale: false,
                recache_claimed: false,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn current_and_release_0_1_0_records_decode() {
            let mut record = crate::record::test_record("v", 7);
            record.stale = true;
            let versions = Versions::one(record.clone());
            let encoded = encode(&versions).unwrap();
            assert_eq!(&encoded[..2], &[0, FORMAT]);
            assert_eq!(decode(&encoded), Some(versions));
            let old = vec![RecordV1 {
                value: record.value.clone(),
                flags: record.flags,
                expires_at: record.expires_at,
                timestamp: record.timestamp,
                clock: record.clock.clone(),
                tombstone: false,
            }];
            let legacy = postcard::to_allocvec(&old).unwrap();
            assert_ne!(legacy[0], 0, "a 0.1.0 record starts with its sibling count");
            let read = decode(&legacy).expect("0.1.0 records stay readable");
            assert_eq!(read.0[0].value, record.value);
            assert!(!read.0[0].stale && !read.0[0].recache_claimed);
            // Written for 0.1.0: its reader sees its own layout; ours keeps the flags.
            let legacy = encode_as(&Versions::one(record.clone()), LEGACY).unwrap();
            assert_eq!(legacy[0], 1);
            let as_0_1_0: Vec<RecordV1> = postcard::from_bytes(&legacy).unwrap();
            assert_eq!(as_0_1_0[0].value, record.value);
            assert!(decode(&legacy).unwrap().0[0].stale, "the flags survive");
            // An unknown future format is refused, not misread.
            assert_eq!(decode(&[0, FORMAT + 1, 1]), None);
            assert_eq!(decode(&[0]), None);
            assert_eq!(
                decode_shared(&Bytes::from_static(&[0, FORMAT + 1, 1])),
                None
            );
            let legacy = Bytes::from(encode_as(&Versions::one(record.clone()), LEGACY).unwrap());
            assert_eq!(decode_shared(&legacy), decode(&legacy));
        }

        #[test]
        fn an_overlong_varint_is_refused() {
            let eleven_bytes = [0xff; 10].into_iter().chain([0x01]).collect::<Vec<u8>>();
            assert_eq!(Input(&eleven_bytes).varint(), None);
            assert_eq!(Input(&[0x80, 0x01]).varint(), Some(128));
            let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
            assert_eq!(Input(&max).varint(), Some(u64::MAX));
            let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
            assert_eq!(Input(&over).varint(), None);
            assert_eq!(
                Input(&[0xff, 0xff, 0xff, 0xff, 0x0f]).varint_u32(),
                Some(u32::MAX)
            );
            assert_eq!(Input(&[0xff, 0xff, 0xff, 0xff, 0x10]).varint_u32(), None);
            assert_eq!(
                Input(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]).varint_u32(),
                None
            );
            // Eight bytes at hand: an end within them, or the ninth or tenth byte.
            let padded = |bytes: &[u8]| [bytes, &[0xaa; 8]].concat();
            assert_eq!(Input(&padded(&[0x80, 0x01])).varint(), Some(128));
            assert_eq!(Input(&padded(&max)).varint(), Some(u64::MAX));
            assert_eq!(Input(&padded(&over)).varint(), None);
            assert_eq!(
                Input(&padded(&[0xff; 8])).varint(),
                None,
                "a tenth byte over 1"
            );
            let nine = [[0xff; 8].as_slice(), &[0x00]].concat();
            assert_eq!(Input(&padded(&nine)).varint(), Some(u64::MAX >> 8));
            assert_eq!(Input(&[0xff; 9]).varint(), None, "cut short");
        }

        proptest::proptest! {
            /// Any value, as postcard writes it or padded out with zero groups (which
            /// postcard also reads), and whatever follows it.
            #[test]
            fn a_varint_reads_back_what_was_written(
                // Every length: a random value cut to a random width.
                value in proptest::strategy::Strategy::prop_map((proptest::prelude::any::<u64>(), 0u32..64), |(v, cut)| v >> cut),
                padding in 0usize..3,
                after in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
            ) {
                let mut bytes = postcard::to_allocvec(&value).unwrap();
                for _ in 0..padding.min(10 - bytes.len()) {
                    *bytes.last_mut().unwrap() |= 0x80;
                    bytes.push(0);
                }
                let written = bytes.len();
                bytes.extend_from_slice(&after);
                let mut written_here = Vec::new();
                put_varint(&mut written_here, value);
                proptest::prop_assert_eq!(&written_here, &postcard::to_allocvec(&value).unwrap());
                let mut input = Input(&bytes);
                proptest::prop_assert_eq!(input.varint(), Some(value));
                proptest::prop_assert_eq!(input.0, &bytes[written..]);
                proptest::prop_assert_eq!(postcard::take_from_bytes::<u64>(&bytes).ok().map(|(v, _)| v), Some(value));
            }
        }

        proptest::proptest! {
            /// The hand-written reader against postcard's own, on what this release writes
            /// and on that cut, altered and followed by other bytes.
            #[test]
            fn the_current_format_reads_as_postcard_reads_it(
                records in proptest::collection::vec(crate::record::arbitrary_record(), 0..4),
                cut in proptest::prelude::any::<proptest::sample::Index>(),
                flip in proptest::prelude::any::<proptest::sample::Index>(),
                xor in 1u8..=255,
                trailer in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
            ) {
                let versions = Versions(records);
                let mut body = postcard::to_allocvec(&versions).unwrap();
                let by_postcard = |bytes: &[u8]| postcard::from_bytes::<Versions>(bytes).ok();
                proptest::prop_assert_eq!(decode_current(&body, Bytes::copy_from_slice), Some(versions));
                body.extend_from_slice(&trailer);
                proptest::prop_assert_eq!(decode_current(&body, Bytes::copy_from_slice), by_postcard(&body));
                let end = cut.index(body.len() + 1);
                proptest::prop_assert_eq!(decode_current(&body[..end], Bytes::copy_from_slice), by_postcard(&body[..end]));
                let at = flip.index(body.len());
                body[at] ^= xor;
                proptest::prop_assert_eq!(decode_current(&body, Bytes::copy_from_slice), by_postcard(&body));
            }

            #[test]
            fn encoding_writes_what_postcard_writes(
                records in proptest::collection::vec(crate::record::arbitrary_record(), 0..4),
            ) {
                let versions = Versions(records);
                let mut by_postcard = vec![0, FORMAT];
                by_postcard.extend(postcard::to_allocvec(&versions).unwrap());
                proptest::prop_assert_eq!(encode(&versions).unwrap(), by_postcard);
            }

            #[test]
            fn shared_decoding_reads_what_copying_decoding_reads(
                records in proptest::collection::vec(crate::record::arbitrary_record(), 0..4),
                cut in 0usize..2000,
            ) {
                let encoded = encode(&Versions(records.clone())).unwrap();
                let owner = Bytes::from(encoded.clone());
                let shared = decode_shared(&owner);
                proptest::prop_assert_eq!(shared.as_ref(), Some(&Versions(records)));
                let within = owner.as_ptr_range();
                for value in shared.iter().flat_map(|v| &v.0).map(|r| &r.value) {
                    proptest::prop_assert!(value.is_empty() || within.contains(&value.as_ptr()), "a value was copied");
                }
                // Truncated bytes: the same answer as the copying decoder, never a panic.
                let cut = cut.min(encoded.len());
                proptest::prop_assert_eq!(decode_shared(&Bytes::copy_from_slice(&encoded[..cut])), decode(&encoded[..cut]));
            }

            #[test]
            fn a_lone_version_read_around_its_value_is_the_version_without_it(
                record in crate::record::arbitrary_record(),
                siblings in proptest::collection::vec(crate::record::arbitrary_record(), 1..3),
            ) {
                let encoded = encode(&Versions::one(record.clone())).unwrap();
                // From the bytes up to the value only: a count and a length, each a varint.
                let (start, len) = lone_value_span(&encoded[..encoded.len().min(2 + 1 + 10)]).unwrap();
                proptest::prop_assert_eq!(&encoded[start..start + len], &record.value[..]);
                let read = decode_lone_without_value(&encoded[start + len..]);
                let without = Record { value: Bytes::new(), ..record.clone() };
                proptest::prop_assert_eq!(read, Some(Versions::one(without)));
                // Siblings and other formats are left to the whole read.
                let mut several = siblings;
                several.push(record.clone());
                proptest::prop_assert_eq!(lone_value_span(&encode(&Versions(several)).unwrap()), None);
                proptest::prop_assert_eq!(lone_value_span(&encode_as(&Versions::one(record), LEGACY).unwrap()), None);
            }
        }
    }
}

/// A live record written once by node 1, for tests of the layers above.
#[cfg(test)]
pub(crate) fn test_record(value: &str, expires_at: u64) -> Record {
    Record {
        value: Bytes::copy_from_slice(value.as_bytes()),
        flags: 3,
        expires_at,
        timestamp: 1,
        clock: VectorClock::new().incremented(1),
        tombstone: false,
        stale: false,
        recache_claimed: false,
    }
}

/// Any record: values up to 300 bytes, clocks of up to 4 entries, most holding the write's
/// own entry (counter == timestamp), every flag either way.
#[cfg(test)]
pub(crate) fn arbitrary_record() -> impl proptest::strategy::Strategy<Value = Record> {
    use proptest::prelude::*;
    let clock = prop::collection::btree_map(any::<u64>(), any::<u64>(), 0..4);
    (
        prop::collection::vec(any::<u8>(), 0..300),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        clock,
        any::<[bool; 4]>(),
    )
        .prop_map(
            |(value, flags, expires_at, timestamp, clock, [tombstone, stale, claimed, own])| {
                let mut entries: Vec<(u64, u64)> = clock.into_iter().collect();
                if own {
                    if let Some(entry) = entries.first_mut() {
                        entry.1 = timestamp;
                    }
                }
                Record {
                    value: Bytes::from(value),
                    flags,
                    expires_at,
                    timestamp,
                    clock: VectorClock::from_entries(&entries),
                    tombstone,
                    stale,
                    recache_claimed: claimed,
                }
            },
        )
}

//! The bytes of the log engine's files: frames in a segment, entries in a hint file.
//!
//! A segment is a run of frames, each `crc32 ‖ len ‖ kind ‖ key_len ‖ key ‖ value` (little
//! endian; the CRC covers everything after itself, `len` counts the bytes after itself). A
//! put's value is the key's versions in `record::format`; a remove has none. A torn or
//! damaged frame fails its CRC, so a scan knows where the written log ends.
//!
//! A hint file sums up one sealed segment: for every frame its kind, key, place and what
//! the index keeps about it, so a start reads the hints instead of every value.

use crate::store::Versions;

pub const HEADER: usize = 4 + 4 + 1 + 2;
/// A key is at most 250 bytes (memcached's limit); anything longer is damage.
const MAX_KEY: usize = u16::MAX as usize;
const HINT_MAGIC: &[u8; 8] = b"kaihint1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Put = 1,
    Remove = 2,
}

/// Appends one frame to `out`; returns its length.
pub fn encode(out: &mut Vec<u8>, kind: Kind, key: &[u8], value: &[u8]) -> usize {
    let start = out.len();
    let Ok(appended) = encode_with(std::mem::take(out), kind, key, |mut out| {
        out.extend_from_slice(value);
        Ok::<_, std::convert::Infallible>(out)
    });
    *out = appended;
    out.len() - start
}

/// Appends one frame to `out` whose value `append_value` appends, so a value encoded
/// straight into the frame is not copied into it.
pub fn encode_with<E>(
    mut out: Vec<u8>,
    kind: Kind,
    key: &[u8],
    append_value: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, E> {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.push(kind as u8);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    let mut out = append_value(out)?;
    let len = (out.len() - start - 8) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// One frame read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: Kind,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// The frame at the start of `bytes` and its length; None when it is torn or damaged.
pub fn decode(bytes: &[u8]) -> Option<(Frame<'_>, usize)> {
    let header = bytes.get(..HEADER)?;
    let crc = u32::from_le_bytes(header[..4].try_into().ok()?);
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let total = 8usize.checked_add(len)?;
    let body = bytes.get(8..total)?;
    if crc32fast::hash(&bytes[4..total]) != crc {
        return None;
    }
    let (kind, key, value) = split_body(body)?;
    Some((Frame { kind, key, value }, total))
}

/// What follows the header and key of a put of `key`, among a frame's first bytes, read
/// without its CRC (the caller checks what it takes from it otherwise); None for anything
/// else.
pub fn put_value_start<'a>(frame_start: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let (kind, stored_key, rest) = split_body(frame_start.get(8..)?)?;
    (kind == Kind::Put && stored_key == key).then_some(rest)
}

/// A frame's kind, key and what follows the key, from the bytes after its CRC and length.
fn split_body(body: &[u8]) -> Option<(Kind, &[u8], &[u8])> {
    let kind = match body.first()? {
        1 => Kind::Put,
        2 => Kind::Remove,
        _ => return None,
    };
    let key_len = u16::from_le_bytes([*body.get(1)?, *body.get(2)?]) as usize;
    let key = body.get(3..3 + key_len)?;
    Some((kind, key, &body[3 + key_len..]))
}

/// What the index keeps of a key besides where its frame is: enough to count items and
/// bytes, rebuild the digests and find expired records without reading a value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The earliest expiry among the versions (0 = none expires).
    pub expires: u64,
    pub fingerprint: u64,
    pub footprint: u32,
    pub live: bool,
    pub tombstoned: bool,
}

impl Summary {
    pub fn of(key: &[u8], versions: &Versions) -> Summary {
        Summary {
            expires: versions.earliest_expiry(),
            fingerprint: crate::store::digest::fingerprint(key, Some(versions)),
            footprint: versions.footprint(key).min(u32::MAX as usize) as u32,
            live: versions.has_live(),
            tombstoned: versions.0.iter().any(|r| r.tombstone),
        }
    }
}

/// One line of a hint file: a frame of the segment and (for a put) its summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    pub kind: Kind,
    pub key: Box<[u8]>,
    pub offset: u32,
    pub len: u32,
    pub summary: Summary,
}

pub fn encode_hints(hints: &[Hint]) -> Vec<u8> {
    HintFile::of(hints).finish()
}

/// A hint file being written as its segment is: each frame's hint is encoded when the
/// frame is appended, where a `Hint` per frame copied its key into an allocation of its own.
#[derive(Clone, Debug)]
pub struct HintFile {
    body: Vec<u8>,
}

impl Default for HintFile {
    fn default() -> HintFile {
        HintFile {
            body: HINT_MAGIC.to_vec(),
        }
    }
}

impl HintFile {
    /// A hint file holding `hints` so far.
    pub fn of(hints: &[Hint]) -> HintFile {
        let mut file = HintFile::default();
        for hint in hints {
            file.push(hint.kind, &hint.key, hint.offset, hint.len, &hint.summary);
        }
        file
    }

    pub fn push(&mut self, kind: Kind, key: &[u8], offset: u32, len: u32, summary: &Summary) {
        let out = &mut self.body;
        out.push(kind as u8);
        out.extend_from_slice(&(key.len() as u16).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&summary.expires.to_le_bytes());
        out.extend_from_slice(&summary.fingerprint.to_le_bytes());
        out.extend_from_slice(&summary.footprint.to_le_bytes());
        out.push(u8::from(summary.live) | u8::from(summary.tombstoned) << 1);
    }

    /// The file's bytes: the hints so far and the CRC that seals them.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 4);
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&crc32fast::hash(&self.body).to_le_bytes());
        out
    }
}

/// The hints in `bytes`; None unless the whole file is intact.
pub fn decode_hints(bytes: &[u8]) -> Option<Vec<Hint>> {
    decode_hints_of(bytes, |_| true)
}

/// The hints in `bytes` of the kinds `wanted` picks, the others read past without copying
/// their keys; None unless the whole file is intact.
pub fn decode_hints_of(bytes: &[u8], wanted: impl Fn(Kind) -> bool) -> Option<Vec<Hint>> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let mut rest = body.strip_prefix(HINT_MAGIC)?;
    let mut hints = Vec::new();
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = rest.split_at_checked(n)?;
        rest = tail;
        Some(head)
    };
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    while let Some(kind) = take(1) {
        let kind = match kind[0] {
            1 => Kind::Put,
            2 => Kind::Remove,
            _ => return None,
        };
        let key_len = take(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)?;
        if key_len > MAX_KEY {
            return None;
        }
        let key = take(key_len)?;
        let fixed = take(4 + 4 + 8 + 8 + 4 + 1)?;
        if !wanted(kind) {
            continue;
        }
        hints.push(Hint {
            kind,
            key: key.into(),
            offset: u32_at(&fixed[0..4]),
            len: u32_at(&fixed[4..8]),
            summary: Summary {
                expires: u64_at(&fixed[8..16]),
                fingerprint: u64_at(&fixed[16..24]),
                footprint: u32_at(&fixed[24..28]),
                live: fixed[28] & 1 != 0,
                tombstoned: fixed[28] & 2 != 0,
            },
        });
    }
    Some(hints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_any_damage_is_seen() {
        let mut log = Vec::new();
        let first = encode(&mut log, Kind::Put, b"key", b"value");
        encode(&mut log, Kind::Remove, b"other", b"");
        let (frame, len) = decode(&log).unwrap();
        assert_eq!(
            (frame.kind, frame.key, frame.value),
            (Kind::Put, &b"key"[..], &b"value"[..])
        );
        assert_eq!(len, first);
        let (frame, _) = decode(&log[first..]).unwrap();
        assert_eq!((frame.kind, frame.key), (Kind::Remove, &b"other"[..]));
        // Torn at every length, and one flipped bit anywhere: never a frame.
        for cut in 0..first {
            assert_eq!(decode(&log[..cut]), None, "cut at {cut}");
        }
        for at in 0..first {
            let mut damaged = log[..first].to_vec();
            damaged[at] ^= 0x10;
            assert_eq!(decode(&damaged), None, "bit flipped at {at}");
        }
    }

    #[test]
    fn a_value_encoded_into_the_frame_makes_the_same_frame_as_one_copied_in() {
        let versions = Versions::one(crate::record::test_record("value", 0));
        let value = crate::record::format::encode(&versions).unwrap();
        let mut copied = b"earlier frames".to_vec();
        encode(&mut copied, Kind::Put, b"key", &value);
        let direct = encode_with(b"earlier frames".to_vec(), Kind::Put, b"key", |out| {
            crate::record::format::encode_onto(&versions, out)
        })
        .unwrap();
        assert_eq!(direct, copied);
        let (frame, _) = decode(&direct[14..]).unwrap();
        let decoded = crate::record::format::decode(frame.value);
        assert_eq!(decoded, Some(versions));
    }

    #[test]
    fn hints_round_trip_and_a_damaged_file_is_refused() {
        let hints = vec![
            Hint {
                kind: Kind::Put,
                key: b"a".as_slice().into(),
                offset: 0,
                len: 40,
                summary: Summary {
                    expires: 7,
                    fingerprint: 99,
                    footprint: 120,
                    live: true,
                    tombstoned: false,
                },
            },
            Hint {
                kind: Kind::Remove,
                key: b"bb".as_slice().into(),
                offset: 40,
                len: 13,
                summary: Summary::default(),
            },
        ];
        let bytes = encode_hints(&hints);
        assert_eq!(decode_hints(&bytes).unwrap(), hints);
        assert_eq!(decode_hints(&bytes[..bytes.len() - 1]), None);
        let mut damaged = bytes.clone();
        damaged[10] ^= 1;
        assert_eq!(decode_hints(&damaged), None);
        // The layout is the release's file format: magic, then per hint kind, key length,
        // key, offset, length, expiry, fingerprint, footprint and flags, then the CRC.
        assert_eq!(&bytes[..8], b"kaihint1");
        assert_eq!(&bytes[8..12], &[1, 1, 0, b'a']);
        assert_eq!(bytes.len(), 8 + (3 + 1 + 29) + (3 + 2 + 29) + 4);
        // Compaction reads only the removes; the puts' keys are passed over.
        let removes = decode_hints_of(&bytes, |kind| kind == Kind::Remove).unwrap();
        assert_eq!(removes, hints[1..]);
        assert_eq!(decode_hints_of(&damaged, |_| false), None);
    }
}

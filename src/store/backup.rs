//! The backup file (docs/design.md, "Backup and restore"): every version of every key as a
//! node held it — siblings, vector clocks, write timestamps, tombstones — and restoring it
//! into a store by the same merge a replica applies.
//!
//! Layout, all integers little-endian:
//! - `KAIBACKUP` then the format, u16 (1);
//! - a header frame, then one frame per key, then an end mark;
//! - a frame is a u32 body length, the body, and the CRC-32 of the body. The header's body
//!   is postcard of [`Header`]; a key's is postcard of (key, versions in `record::format`);
//! - the end mark is a length of u32::MAX followed by the key count, u64, and its CRC-32:
//!   a file cut short has none and is refused.

use super::{Change, Store, Versions};
use crate::record::format;
use bytes::Bytes;
use std::io::{Read, Write};

const MAGIC: &[u8; 9] = b"KAIBACKUP";
/// The file in data_dir that says a restore happened and anti-entropy has not yet compared
/// the restored buckets with every member.
pub const RESTORED_MARK: &str = "restored";
pub const FORMAT: u16 = 1;
const END: u32 = u32::MAX;
/// No frame is larger: a key (250 B) with `max_siblings` versions of the largest item.
const MAX_FRAME: u32 = 1 << 30;

/// Who wrote a backup, and when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// `kai --version` of the node that was backed up.
    pub release: String,
    /// The node's rpc address.
    pub node: String,
    pub cluster: String,
    /// Unix seconds when the backup started.
    pub started: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a kai backup (no KAIBACKUP mark at the start)")]
    NotABackup,
    #[error("backup format {0} is not one this release reads (a newer release wrote it)")]
    UnknownFormat(u16),
    #[error("damaged at byte {0}: {1}")]
    Damaged(u64, &'static str),
    #[error("cut short at byte {0}: the backup did not finish (no end mark)")]
    Truncated(u64),
    #[error("cannot encode a record: {0}")]
    Encode(#[from] postcard::Error),
}

pub struct BackupWriter<W: Write> {
    out: W,
    keys: u64,
}

fn frame(out: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&crc32fast::hash(body).to_le_bytes())
}

impl<W: Write> BackupWriter<W> {
    pub fn new(mut out: W, header: &Header) -> Result<Self, BackupError> {
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT.to_le_bytes())?;
        frame(&mut out, &postcard::to_allocvec(header)?)?;
        Ok(BackupWriter { out, keys: 0 })
    }

    pub fn key(&mut self, key: &[u8], versions: &Versions) -> Result<(), BackupError> {
        let body = postcard::to_allocvec(&(key, format::encode(versions)?))?;
        frame(&mut self.out, &body)?;
        self.keys += 1;
        Ok(())
    }

    /// Writes the end mark; returns the output and how many keys it holds.
    pub fn finish(mut self) -> Result<(W, u64), BackupError> {
        let count = self.keys.to_le_bytes();
        self.out.write_all(&END.to_le_bytes())?;
        self.out.write_all(&count)?;
        self.out.write_all(&crc32fast::hash(&count).to_le_bytes())?;
        self.out.flush()?;
        Ok((self.out, self.keys))
    }
}

/// Reads a backup key by key; the last item is an error unless the end mark and the key
/// count it states are there.
pub struct BackupReader<R: Read> {
    input: R,
    at: u64,
    keys: u64,
    done: bool,
}

impl<R: Read> BackupReader<R> {
    pub fn open(mut input: R) -> Result<(Self, Header), BackupError> {
        let mut start = [0u8; 11];
        input
            .read_exact(&mut start)
            .map_err(|_| BackupError::NotABackup)?;
        if &start[..9] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let format = u16::from_le_bytes([start[9], start[10]]);
        if format != FORMAT {
            return Err(BackupError::UnknownFormat(format));
        }
        let mut reader = BackupReader {
            input,
            at: 11,
            keys: 0,
            done: false,
        };
        let body = reader
            .frame()?
            .ok_or(BackupError::Damaged(11, "no header"))?;
        let header = postcard::from_bytes(&body).map_err(|_| BackupError::Damaged(11, "header"))?;
        Ok((reader, header))
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), BackupError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.at += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(BackupError::Truncated(self.at))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The next frame's body, or None at the end mark (whose count is checked).
    fn frame(&mut self) -> Result<Option<Vec<u8>>, BackupError> {
        let start = self.at;
        let mut word = [0u8; 4];
        self.read(&mut word)?;
        let len = u32::from_le_bytes(word);
        if len == END {
            let mut count = [0u8; 8];
            self.read(&mut count)?;
            self.read(&mut word)?;
            if crc32fast::hash(&count) != u32::from_le_bytes(word) {
                return Err(BackupError::Damaged(start, "end mark checksum"));
            }
            if u64::from_le_bytes(count) != self.keys {
                return Err(BackupError::Damaged(
                    start,
                    "key count differs from the end mark",
                ));
            }
            return Ok(None);
        }
        if len > MAX_FRAME {
            return Err(BackupError::Damaged(start, "frame length"));
        }
        let mut body = vec![0u8; len as usize];
        self.read(&mut body)?;
        self.read(&mut word)?;
        if crc32fast::hash(&body) != u32::from_le_bytes(word) {
            return Err(BackupError::Damaged(start, "checksum"));
        }
        Ok(Some(body))
    }

    fn next_key(&mut self) -> Result<Option<(Bytes, Versions)>, BackupError> {
        let start = self.at;
        let Some(body) = self.frame()? else {
            return Ok(None);
        };
        let (key, record): (Bytes, Vec<u8>) =
            postcard::from_bytes(&body).map_err(|_| BackupError::Damaged(start, "key frame"))?;
        let versions = format::decode(&record).ok_or(BackupError::Damaged(start, "record"))?;
        self.keys += 1;
        Ok(Some((key, versions)))
    }
}

impl<R: Read> Iterator for BackupReader<R> {
    type Item = Result<(Bytes, Versions), BackupError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_key().transpose();
        self.done = !matches!(next, Some(Ok(_)));
        next
    }
}

/// What a restore did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub keys: u64,
    pub versions: u64,
    /// Keys whose every version had expired since the backup.
    pub expired: u64,
}

/// Merges every key of `backup` into `store` as a replica would: a version the store holds
/// a descendant of is dropped, concurrent ones become siblings (at most `max_siblings`).
/// Returns once every write is durable.
pub fn restore<R: Read>(
    store: &dyn Store,
    backup: BackupReader<R>,
    max_siblings: usize,
    now_secs: u64,
) -> Result<Restored, super::StoreError> {
    let mut restored = Restored::default();
    // Only a store whose writes wait for a sync (fsync durability) needs one.
    let mut runtime = None;
    for entry in backup {
        let (key, mut versions) = entry.map_err(|e| super::StoreError::Damaged(e.to_string()))?;
        if !versions.retain_unexpired(now_secs) {
            restored.expired += 1;
            continue;
        }
        restored.keys += 1;
        restored.versions += versions.0.len() as u64;
        let commit = store.update(&key, now_secs, &mut |current| {
            let mut kept = current.map(|v| v.0.clone()).unwrap_or_default();
            let before = kept.clone();
            for version in &versions.0 {
                kept = crate::causality::apply(kept, version.clone(), max_siblings).0;
            }
            if kept == before {
                Change::Keep
            } else {
                Change::Put(Versions(kept))
            }
        });
        if !commit.is_done() {
            let runtime = match &mut runtime {
                Some(runtime) => runtime,
                None => runtime.insert(
                    tokio::runtime::Builder::new_current_thread()
                        .build()
                        .map_err(|e| super::StoreError::Damaged(format!("cannot start: {e}")))?,
                ),
            };
            runtime.block_on(commit.wait())?;
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causality::VectorClock;
    use crate::record::test_record;
    use crate::store::memory::MemoryStore;

    fn header() -> Header {
        Header {
            release: "test".into(),
            node: "127.0.0.1:11011".into(),
            cluster: "kai".into(),
            started: 1,
        }
    }

    fn siblings_and_a_tombstone() -> Vec<(Bytes, Versions)> {
        let mut left = test_record("left", 0);
        left.clock = VectorClock::new().incremented(1);
        left.timestamp = 10;
        let mut right = test_record("right", 0);
        right.clock = VectorClock::new().incremented(2);
        right.timestamp = 20;
        let mut gone = test_record("", 0);
        gone.tombstone = true;
        gone.timestamp = 30;
        vec![
            (Bytes::from_static(b"siblings"), Versions(vec![right, left])),
            (Bytes::from_static(b"deleted"), Versions::one(gone)),
            (
                Bytes::from_static(b"plain"),
                Versions::one(test_record("v", 0)),
            ),
        ]
    }

    fn backup_of(entries: &[(Bytes, Versions)]) -> Vec<u8> {
        let mut writer = BackupWriter::new(Vec::new(), &header()).unwrap();
        for (key, versions) in entries {
            writer.key(key, versions).unwrap();
        }
        writer.finish().unwrap().0
    }

    #[test]
    fn every_version_survives_the_round_trip() {
        let entries = siblings_and_a_tombstone();
        let bytes = backup_of(&entries);
        let (reader, read_header) = BackupReader::open(&bytes[..]).unwrap();
        assert_eq!(read_header, header());
        let read: Vec<_> = reader.map(Result::unwrap).collect();
        assert_eq!(read, entries);

        let store = MemoryStore::new(0, 1024);
        let (reader, _) = BackupReader::open(&bytes[..]).unwrap();
        let restored = restore(&store, reader, 8, 100).unwrap();
        assert_eq!((restored.keys, restored.versions), (3, 4));
        for (key, versions) in &entries {
            assert_eq!(store.get(key, 100).as_ref(), Some(versions), "{key:?}");
        }
    }

    #[test]
    fn a_restore_into_an_fsync_log_store_waits_for_its_syncs_and_survives_reopening() {
        use crate::store::vlog::{LogStore, Settings};
        use crate::store::Durability;
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::new(Durability::Fsync, std::time::Duration::from_secs(1), 1024);
        let entries = siblings_and_a_tombstone();
        let bytes = backup_of(&entries);
        {
            let store = LogStore::open(dir.path(), settings.clone()).unwrap();
            let (reader, _) = BackupReader::open(&bytes[..]).unwrap();
            assert_eq!(restore(&store, reader, 8, 100).unwrap().keys, 3);
        }
        let store = LogStore::open(dir.path(), settings).unwrap();
        for (key, versions) in &entries {
            assert_eq!(store.get(key, 100).as_ref(), Some(versions), "{key:?}");
        }
    }

    #[test]
    fn a_restore_merges_with_what_the_store_holds() {
        let store = MemoryStore::new(0, 1024);
        let mut newer = test_record("newer", 0);
        newer.clock = VectorClock::new().incremented(1).incremented(1);
        let _ = store.update(b"siblings", 100, &mut |_| {
            Change::Put(Versions::one(newer.clone()))
        });
        let bytes = backup_of(&siblings_and_a_tombstone());
        let (reader, _) = BackupReader::open(&bytes[..]).unwrap();
        restore(&store, reader, 8, 100).unwrap();
        // "left" (node 1's first write) is superseded by the newer write; "right" is concurrent.
        let held = store.get(b"siblings", 100).unwrap();
        let values: Vec<_> = held.0.iter().map(|r| &r.value[..]).collect();
        assert_eq!(values.len(), 2, "{values:?}");
        assert!(values.contains(&&b"newer"[..]) && values.contains(&&b"right"[..]));
    }

    #[test]
    fn a_cut_or_damaged_backup_is_refused() {
        let bytes = backup_of(&siblings_and_a_tombstone());
        let cut = &bytes[..bytes.len() - 10];
        let (reader, _) = BackupReader::open(cut).unwrap();
        let last = reader.last().unwrap();
        assert!(matches!(last, Err(BackupError::Truncated(_))), "{last:?}");

        let mut damaged = bytes.clone();
        damaged[60] ^= 0xff;
        let result =
            BackupReader::open(&damaged[..]).map(|(r, _)| r.collect::<Result<Vec<_>, _>>());
        assert!(
            matches!(result, Err(_) | Ok(Err(BackupError::Damaged(..)))),
            "{result:?}"
        );

        let store = MemoryStore::new(0, 1024);
        let (reader, _) = BackupReader::open(cut).unwrap();
        let err = restore(&store, reader, 8, 100).unwrap_err();
        assert!(err.to_string().contains("cut short"), "{err}");

        assert!(matches!(
            BackupReader::open(&b"KAIBACKUP\x09\x00"[..]),
            Err(BackupError::UnknownFormat(9))
        ));
        assert!(matches!(
            BackupReader::open(&b"memcached dump"[..]),
            Err(BackupError::NotABackup)
        ));
    }
}

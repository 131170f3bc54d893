//! Moving a data directory from release 0.1.0's redb file to the value log, once the
//! upgrade is finalised (docs/design.md, "Upgrades"). Crash-safe: the log is built beside
//! the old file and renamed into place; the old file goes only after that rename is durable.

use super::disk::{self, DiskStore};
use super::vlog::{self, LogStore};
use super::{Change, Store, StoreError};
use std::fs::{self, File};
use std::path::Path;

/// What a start found in the data directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Layout {
    /// Only release 0.1.0's `kai.redb`.
    Redb,
    /// The value log (or nothing yet).
    Log,
    /// Both: the node ran 0.1.0 again after this release made its log (a roll back).
    Both,
}

pub fn layout(data_dir: &Path) -> Layout {
    let redb = data_dir.join(disk::FILE_NAME).exists();
    let log = data_dir.join(vlog::DIR_NAME).is_dir();
    match (redb, log) {
        (true, false) => Layout::Redb,
        (true, true) => Layout::Both,
        _ => Layout::Log,
    }
}

/// Rewrites `kai.redb` as the log; returns how many keys moved. With a log already there
/// (after a roll back), the redb file is the newer state: the old log is kept aside as
/// `log.superseded`.
pub fn redb_to_log(data_dir: &Path, buckets: u32) -> Result<u64, StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| super::vlog::io_error(&path, e)
    };
    let building = data_dir.join("log.migrating");
    if building.exists() {
        // An earlier migration stopped half way; kai.redb is still whole.
        fs::remove_dir_all(&building).map_err(io(&building))?;
    }
    let settings = vlog::Settings::new(
        super::Durability::Periodic,
        std::time::Duration::from_secs(1),
        buckets,
    );
    let moved = {
        let log = LogStore::open_at(&building, settings)
            .map_err(|e| StoreError::Damaged(e.to_string()))?;
        let mut pending = Vec::new();
        let moved = DiskStore::export(data_dir, &mut |key, versions| {
            let mut versions = Some(versions);
            // At time 0 nothing counts as expired: every version moves as it is.
            pending.push(log.update(key, 0, &mut |_| {
                versions.take().map_or(Change::Keep, Change::Put)
            }));
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(io(data_dir))?;
        for commit in pending {
            runtime.block_on(commit.wait())?;
        }
        moved
        // Dropping the log syncs it.
    };
    let log = data_dir.join(vlog::DIR_NAME);
    if log.exists() {
        let aside = data_dir.join("log.superseded");
        if aside.exists() {
            fs::remove_dir_all(&aside).map_err(io(&aside))?;
        }
        fs::rename(&log, &aside).map_err(io(&log))?;
        log::warn!(
            "{}: kai.redb is newer (the node ran release 0.1.0 after this log was made); the old log is kept as {}",
            log.display(),
            aside.display()
        );
    }
    fs::rename(&building, &log).map_err(io(&building))?;
    File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(data_dir))?;
    let redb = data_dir.join(disk::FILE_NAME);
    fs::remove_file(&redb).map_err(io(&redb))?;
    File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(data_dir))?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{test_record, Record, Versions};
    use crate::store::Durability;
    use std::time::Duration;

    fn block(commit: crate::store::Commit) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(commit.wait()).unwrap();
    }

    #[test]
    fn every_version_moves_and_the_redb_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let siblings = Versions(vec![test_record("a", 0), test_record("b", 9_999_999_999)]);
        let tombstone = Versions::one(Record {
            tombstone: true,
            ..test_record("", 0)
        });
        let digests = {
            let redb =
                DiskStore::open(dir.path(), Durability::Fsync, Duration::from_secs(1), 64).unwrap();
            for i in 0..500 {
                let one = Versions::one(test_record(&format!("value{i}"), 0));
                block(redb.update(format!("key{i}").as_bytes(), 100, &mut |_| {
                    Change::Put(one.clone())
                }));
            }
            block(redb.update(b"siblings", 100, &mut |_| Change::Put(siblings.clone())));
            block(redb.update(b"deleted", 100, &mut |_| Change::Put(tombstone.clone())));
            redb.digests().all()
        };
        assert_eq!(layout(dir.path()), Layout::Redb);
        assert_eq!(redb_to_log(dir.path(), 64).unwrap(), 502);
        assert_eq!(layout(dir.path()), Layout::Log);
        assert!(!dir.path().join(disk::FILE_NAME).exists());
        let settings = vlog::Settings::new(Durability::Fsync, Duration::from_secs(1), 64);
        let log = LogStore::open(dir.path(), settings).unwrap();
        assert_eq!(log.digests().all(), digests);
        assert_eq!(log.get(b"siblings", 100), Some(siblings));
        assert_eq!(log.get(b"deleted", 100), Some(tombstone));
        assert_eq!(log.get(b"key42", 100).unwrap().0[0].value, "value42");
        assert_eq!(log.stats().items, 501);
    }
}

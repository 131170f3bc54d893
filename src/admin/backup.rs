//! `kai store backup` and `kai store restore` (docs/design.md, "Backup and restore").
//!
//! A backup is read from a running node page by page over its authenticated rpc port, so
//! the file is written by the operator's process, wherever the operator wants it (the
//! service's sandbox cannot write outside its data_dir). A restore goes into a stopped
//! node's disk store, merging as a replica would, and leaves a mark so that the node's
//! first anti-entropy rounds compare every restored bucket with its owners at once.

use crate::cluster::rpc::message::{Request, Response};
use crate::config::Config;
use crate::store::backup::{self, BackupReader, BackupWriter, Header, RESTORED_MARK};
use crate::store::migrate::{layout, Layout};
use crate::store::vlog::{self, LogStore};
use crate::time::unix_secs;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::{Duration, Instant};

/// The hash space is read in this many ranges (each paged by the node).
const RANGES: u64 = 1024;

fn other(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

/// Backs up the node at `node` (default: the configured rpc.listen) into `out`.
pub fn backup(config: &Config, node: Option<&str>, out: &Path) -> Result<String, String> {
    let (target, pool, runtime) = super::cluster::connect(config, node)?;
    let started = Instant::now();
    let header = Header {
        release: env!("CARGO_PKG_VERSION").to_string(),
        node: target.to_string(),
        cluster: config.cluster.name.clone(),
        started: unix_secs(),
    };
    let (mut keys, mut versions) = (0u64, 0u64);
    crate::durable::write_file_atomically(out, |file| {
        let mut writer = BackupWriter::new(BufWriter::new(file), &header).map_err(other)?;
        let span = (1u64 << 32) / RANGES;
        for range in 0..RANGES {
            let (low, high) = ((range * span) as u32, ((range + 1) * span - 1) as u32);
            let mut after = None;
            loop {
                let request = Request::AdminBackup { low, high, after };
                let reply = runtime.block_on(pool.call(target, request));
                let (entries, more) = match reply.map_err(|e| other(format!("{target}: {e}")))? {
                    Response::Backup { entries, more } => (entries, more),
                    Response::Error(err) => return Err(other(format!("{target}: {err}"))),
                    reply => return Err(other(format!("{target}: unexpected reply {reply:?}"))),
                };
                for (key, held) in &entries {
                    writer.key(key, held).map_err(other)?;
                    keys += 1;
                    versions += held.0.len() as u64;
                }
                after = entries.last().map(|(key, _)| key.clone());
                if !more || after.is_none() {
                    break;
                }
            }
        }
        writer.finish().map_err(other)?;
        Ok(())
    })
    .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(format!(
        "backed up {keys} keys ({versions} versions) of {target} to {} in {:.1} s\n",
        out.display(),
        started.elapsed().as_secs_f64()
    ))
}

/// Restores `file` into the disk store in `data_dir`, which no node may be running on.
pub fn restore(config: &Config, data_dir: &Path, file: &Path) -> Result<String, String> {
    if config.store.engine != crate::config::Engine::Disk {
        return Err(
            "store.engine is \"memory\" in the configuration: that node starts empty and would \
             never read a restored store; restore with the disk-engine node's configuration (--config)"
                .to_string(),
        );
    }
    if layout(data_dir) == Layout::Redb {
        return Err(format!(
            "{}: holds a release 0.1.0 store (kai.redb): start the node once so it migrates, stop it, then restore",
            data_dir.display()
        ));
    }
    let input = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let (reader, header) = BackupReader::open(BufReader::new(input))
        .map_err(|e| format!("{}: {e}", file.display()))?;
    if header.cluster != config.cluster.name {
        log::warn!(
            "{}: backed up from cluster {:?}, restoring into {:?}",
            file.display(),
            header.cluster,
            config.cluster.name
        );
    }
    // Each write waits for nothing; one sync at the end makes them all durable.
    let settings = vlog::Settings::new(
        crate::store::Durability::Periodic,
        Duration::from_secs(3600),
        config.cluster.buckets,
    );
    let store = LogStore::open(data_dir, settings).map_err(|e| e.to_string())?;
    let now = unix_secs();
    let max_siblings = config.cluster.max_siblings as usize;
    let restored = backup::restore(&store, reader, max_siblings, now)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    store.sync_now().map_err(|e| e.to_string())?;
    drop(store);
    let mark = format!("{} {}\n", header.node, header.started);
    crate::durable::write_atomically(&data_dir.join(RESTORED_MARK), mark.as_bytes())
        .map_err(|e| format!("{}: {e}", data_dir.join(RESTORED_MARK).display()))?;
    Ok(format!(
        "restored {} keys ({} versions) of {} into {}; {} keys had expired since the backup. \
         At its next start the node compares every restored bucket with its owners.\n",
        restored.keys,
        restored.versions,
        header.node,
        data_dir.display(),
        restored.expired
    ))
}

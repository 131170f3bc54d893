use super::*;
use crate::record::test_record;
use std::time::Instant;

#[path = "../../../tests/common/small_disk.rs"]
mod small_disk;
use small_disk::SmallDisk;

fn settings(segment_bytes: u64) -> Settings {
    Settings {
        segment_bytes,
        compaction_rate: 1 << 30,
        ..Settings::new(Durability::Fsync, Duration::from_secs(1), 64)
    }
}

/// Periodic, with an interval long enough that only an early sync or a close syncs.
fn periodic(segment_bytes: u64) -> Settings {
    Settings {
        durability: Durability::Periodic,
        flush_interval: Duration::from_secs(3600),
        ..settings(segment_bytes)
    }
}

/// What `commit` resolves to.
fn committed(commit: Commit) -> Result<(), StoreError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(commit.wait())
}

fn block(commit: Commit) {
    committed(commit).unwrap();
}

fn put(store: &LogStore, key: &str, value: &str) {
    try_put(store, key, value).unwrap();
}

fn try_put(store: &LogStore, key: &str, value: &str) -> Result<(), StoreError> {
    let versions = Versions::one(test_record(value, 0));
    committed(store.update(key.as_bytes(), 100, &mut |_| Change::Put(versions.clone())))
}

fn remove(store: &LogStore, key: &str) {
    block(store.update(key.as_bytes(), 100, &mut |_| Change::Remove));
}

fn value(store: &LogStore, key: &str) -> Option<String> {
    let versions = store.get(key.as_bytes(), 100)?;
    Some(String::from_utf8(versions.0[0].value.to_vec()).unwrap())
}

fn files(dir: &Path, suffix: &str) -> usize {
    (std::fs::read_dir(dir.join(DIR_NAME)).unwrap())
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(suffix)
        })
        .count()
}

#[test]
fn writes_removes_counts_and_digests_survive_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (stats, digests) = {
        let store = LogStore::open(dir.path(), settings(1024)).unwrap();
        for i in 0..300 {
            put(&store, &format!("key{i}"), &format!("value{i}"));
        }
        for i in (0..300).step_by(7) {
            remove(&store, &format!("key{i}"));
        }
        put(&store, "key1", "rewritten");
        (store.stats(), store.digests().all())
    };
    assert!(
        files(dir.path(), ".hint") > 3,
        "the log was cut into sealed segments"
    );
    let store = LogStore::open(dir.path(), settings(1024)).unwrap();
    assert_eq!(value(&store, "key1").as_deref(), Some("rewritten"));
    assert_eq!(value(&store, "key2").as_deref(), Some("value2"));
    assert_eq!(value(&store, "key7"), None);
    let reopened = store.stats();
    assert_eq!((reopened.items, reopened.bytes), (stats.items, stats.bytes));
    assert_eq!(reopened.items, 300 - 43);
    assert_eq!(store.digests().all(), digests);
}

#[test]
fn a_torn_last_write_is_cut_off_and_a_lost_hint_file_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path(), settings(2048)).unwrap();
        for i in 0..100 {
            put(&store, &format!("key{i}"), "x");
        }
    }
    let log = dir.path().join(DIR_NAME);
    let head = recovery_head(&log);
    // Half a frame at the head's end, as a crash mid-append leaves it.
    let mut torn = Vec::new();
    frame::encode(&mut torn, Kind::Put, b"never-acknowledged", b"value");
    let path = segment_path(&log, head);
    let mut content = std::fs::read(&path).unwrap();
    let intact = content.len();
    content.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&path, &content).unwrap();
    std::fs::remove_file(hint_path(&log, 1)).unwrap();
    let store = LogStore::open(dir.path(), settings(2048)).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), intact as u64);
    assert!(hint_path(&log, 1).exists(), "rebuilt from the segment");
    assert_eq!(store.stats().items, 100);
    assert!((0..100).all(|i| value(&store, &format!("key{i}")).is_some()));
    assert_eq!(value(&store, "never-acknowledged"), None);
}

fn recovery_head(log: &Path) -> u32 {
    (std::fs::read_dir(log).unwrap())
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.strip_suffix(".log")?.parse().ok()
        })
        .max()
        .unwrap()
}

#[test]
fn a_damaged_sealed_segment_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path(), settings(1024)).unwrap();
        for i in 0..50 {
            put(&store, &format!("key{i}"), "some value");
        }
    }
    let log = dir.path().join(DIR_NAME);
    std::fs::remove_file(hint_path(&log, 1)).unwrap();
    let path = segment_path(&log, 1);
    let mut content = std::fs::read(&path).unwrap();
    content[20] ^= 0xff;
    std::fs::write(&path, &content).unwrap();
    let err = LogStore::open(dir.path(), settings(1024)).err().unwrap();
    assert!(err.to_string().contains("damaged frame at byte 0"), "{err}");
    assert!(err.to_string().contains("0000000001.log"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), content);
    assert!(LogStore::check(dir.path()).is_err());
}

#[test]
fn compaction_keeps_the_files_within_half_again_the_live_data() {
    let dir = tempfile::tempdir().unwrap();
    let value = "v".repeat(200);
    {
        let store = LogStore::open(dir.path(), settings(16 << 10)).unwrap();
        for round in 0..20 {
            for i in 0..100 {
                put(&store, &format!("key{i}"), &format!("{round}{value}"));
            }
        }
        for i in 0..10 {
            remove(&store, &format!("key{i}"));
        }
        // 20 rounds wrote 20× the live data; the compactor may have started already.
        let (_, after) = store.compact_now();
        let stats = store.stats();
        let live = stats.file_bytes - stats.dead_bytes;
        assert!(stats.compactions > 0 && stats.compacted_bytes > 0);
        assert!(
            after * 2 <= live * 3 + (16 << 10),
            "{after} bytes on disk for {live} live"
        );
        assert_eq!(stats.items, 90);
    }
    // Nothing removed comes back, nothing live is lost.
    let store = LogStore::open(dir.path(), settings(16 << 10)).unwrap();
    assert_eq!(store.stats().items, 90);
    assert!((0..10).all(|i| store.get(format!("key{i}").as_bytes(), 100).is_none()));
    assert!((10..100).all(|i| value_of(&store, i).starts_with("19")));
}

fn value_of(store: &LogStore, i: usize) -> String {
    value(store, &format!("key{i}")).unwrap()
}

#[test]
fn the_compactor_lets_a_short_pass_wait_to_settle_then_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let settle = Duration::from_secs(4);
    let store = LogStore::open(
        dir.path(),
        Settings {
            compaction_settle: settle,
            ..settings(1024)
        },
    )
    .unwrap();
    for round in 0..3 {
        for i in 0..10 {
            put(&store, &format!("key{i}"), &format!("{round:0100}"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut waiting = Vec::new();
    while waiting.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        waiting = compaction::candidates(&store.shared, false);
    }
    let since = Instant::now();
    assert!(
        (1..compaction::PASS_SEGMENTS).contains(&waiting.len()),
        "{waiting:?}: fewer than a full pass"
    );
    // The compactor looks every second: two looks and more without compacting, with a
    // margin for a busy machine's scheduling.
    std::thread::sleep(settle - Duration::from_millis(1500));
    assert_eq!(store.stats().compactions, 0, "waited {:?}", since.elapsed());
    while store.stats().compactions == 0 && since.elapsed() < settle * 3 {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(store.stats().compactions > 0, "compacted once settled");
    assert!((0..10).all(|i| value_of(&store, i) == format!("{:0100}", 2)));
}

#[test]
fn the_compactor_runs_on_its_own_while_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), settings(8 << 10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut round = 0;
    while store.stats().compactions == 0 && Instant::now() < deadline {
        for i in 0..50 {
            put(&store, &format!("key{i}"), &format!("{round:06}"));
        }
        round += 1;
    }
    assert!(store.stats().compactions > 0);
    assert!((0..50).all(|i| value_of(&store, i) == format!("{:06}", round - 1)));
}

#[test]
fn flush_all_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path(), settings(1024)).unwrap();
        for i in 0..50 {
            put(&store, &format!("key{i}"), "before");
        }
        store.clear();
        put(&store, "after", "kept");
    }
    let store = LogStore::open(dir.path(), settings(1024)).unwrap();
    assert_eq!(store.stats().items, 1);
    assert_eq!(value(&store, "after").as_deref(), Some("kept"));
    assert_eq!(value(&store, "key3"), None);
}

#[test]
fn periodic_writes_are_on_disk_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let periodic = Settings {
        durability: Durability::Periodic,
        ..settings(1 << 20)
    };
    {
        let store = LogStore::open(dir.path(), periodic.clone()).unwrap();
        for i in 0..100 {
            put(&store, &format!("key{i}"), "x");
        }
    }
    let store = LogStore::open(dir.path(), periodic).unwrap();
    assert_eq!(store.stats().items, 100);
}

#[test]
fn a_second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = LogStore::open(dir.path(), settings(1 << 20)).unwrap();
    let err = LogStore::open(dir.path(), settings(1 << 20)).err().unwrap();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn frames_still_in_the_write_buffer_are_read_and_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let config = periodic(1 << 20);
    let on_disk = |dir: &Path| -> u64 {
        let log = std::fs::read_dir(dir.join(DIR_NAME)).unwrap();
        (log.map(|e| e.unwrap().path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    {
        let store = LogStore::open(dir.path(), config.clone()).unwrap();
        for i in 0..20 {
            put(&store, &format!("key{i}"), "first");
        }
        assert_eq!(
            on_disk(dir.path()),
            0,
            "the frames were written out already"
        );
        assert_eq!(value(&store, "key3").as_deref(), Some("first"));
        for i in 0..20 {
            put(&store, &format!("key{i}"), &format!("second{i}"));
        }
        assert_eq!(value(&store, "key7").as_deref(), Some("second7"));
        assert_eq!(store.stats().items, 20);
        assert!(
            store.stats().dead_bytes > 0,
            "overwritten frames count as dead"
        );
    }
    let store = LogStore::open(dir.path(), config).unwrap();
    assert!((0..20).all(|i| value_of(&store, i) == format!("second{i}")));
}

#[test]
fn a_hint_file_that_cannot_be_written_stops_neither_writes_nor_seals_and_comes_later() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join(DIR_NAME);
    std::fs::create_dir_all(&log).unwrap();
    // Where segment 1's hint file goes, a directory: its rename fails until it is gone.
    let blocked = hint_path(&log, 1);
    std::fs::create_dir(&blocked).unwrap();
    let store = LogStore::open(dir.path(), settings(1024)).unwrap();
    for i in 0..100 {
        put(&store, &format!("key{i}"), "value");
    }
    for i in 0..100 {
        put(&store, &format!("key{i}"), "again");
    }
    assert!(store.shared.head_id.load(Ordering::Relaxed) > 3, "sealed");
    assert!((0..100).all(|i| value_of(&store, i) == "again"));
    // Half dead and more, yet left alone: compaction reads the hint files.
    assert!(store.shared.hint_writer.is_unwritten(1));
    assert_eq!(
        compaction::candidates(&store.shared, true),
        Vec::<u32>::new()
    );
    // `kai store compact` meanwhile returns, having compacted nothing: it does not wait
    // for a file that cannot be written.
    let store = Arc::new(store);
    let (done, finished) = std::sync::mpsc::channel();
    let compacting = Arc::clone(&store);
    std::thread::spawn(move || done.send(compacting.compact_now()).unwrap());
    let (before, after) = (finished.recv_timeout(Duration::from_secs(10)))
        .expect("compact_now returned while a hint file could not be written");
    assert_eq!((before, store.stats().compactions), (after, 0));
    std::fs::remove_dir(&blocked).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.shared.hint_writer.is_unwritten(1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The compactor may have compacted segment 1 away since, hint file and all, which it
    // does only once the file is written.
    assert!(
        blocked.is_file() || store.shared.segment(1).is_none(),
        "written once it could be"
    );
    let (_, after) = store.compact_now();
    assert!(store.stats().compactions > 0, "{after}");
    drop(Arc::into_inner(store).expect("the compacting thread is done"));
    let store = LogStore::open(dir.path(), settings(1024)).unwrap();
    assert!((0..100).all(|i| value_of(&store, i) == "again"));
    LogStore::check(dir.path()).expect("consistent");
}

#[test]
fn a_remove_outlives_the_compaction_of_its_segment_while_an_older_put_remains() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), settings(1024)).unwrap();
    let with_put = store.shared.head_id.load(Ordering::Relaxed);
    put(&store, "gone", "old");
    // Never overwritten: the put's segment stays mostly live, so it is not compacted.
    for i in 0..40 {
        put(&store, &format!("kept{i}"), "value");
    }
    remove(&store, "gone");
    let with_remove = store.shared.head_id.load(Ordering::Relaxed);
    assert!(with_remove > with_put);
    for round in ["first", "second"] {
        for i in 0..40 {
            put(&store, &format!("churn{i}"), round);
        }
    }
    store.shared.hint_writer.flush();
    assert!(compaction::compact(&store.shared, with_remove).unwrap());
    assert!(store.shared.segment(with_remove).is_none());
    assert!(
        store.shared.segment(with_put).is_some(),
        "the older put is still on disk"
    );
    drop(store);
    let store = LogStore::open(dir.path(), settings(1024)).unwrap();
    assert_eq!(value(&store, "gone"), None, "the remove was carried over");
    assert_eq!(value(&store, "churn3").as_deref(), Some("second"));
}

#[test]
fn frames_read_back_while_their_buffer_is_written_out_by_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path(), periodic(1 << 20)).unwrap());
    let writers: Vec<_> = (0..4)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..1500 {
                    let key = format!("t{thread}k{}", i % 500);
                    let written = format!("{i:04}").repeat(256);
                    put(&store, &key, &written);
                    // Found wherever it is: the buffer, a handed-off write or the file.
                    assert_eq!(value(&store, &key), Some(written), "{key}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    assert!(store.shared.head_id.load(Ordering::Relaxed) > 3, "sealed");
    drop(Arc::into_inner(store).expect("the writers are done"));
    let store = LogStore::open(dir.path(), periodic(1 << 20)).unwrap();
    for thread in 0..4 {
        for i in 1000..1500 {
            let key = format!("t{thread}k{}", i % 500);
            assert_eq!(value(&store, &key), Some(format!("{i:04}").repeat(256)));
        }
    }
    LogStore::check(dir.path()).expect("consistent");
}

#[test]
fn periodic_syncs_early_once_a_mebibyte_waits_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        segment_bytes: 64 << 20,
        ..Settings::new(Durability::Periodic, Duration::from_secs(3600), 64)
    };
    let store = LogStore::open(dir.path(), settings).unwrap();
    let value = "v".repeat(1024);
    for i in 0..2000 {
        put(&store, &format!("key{i}"), &value);
    }
    // Two MiB appended: a sync has run, though the interval is an hour.
    let deadline = Instant::now() + Duration::from_secs(5);
    while lock(&store.shared.syncs).durable < WRITEBACK_BYTES && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(lock(&store.shared.syncs).durable >= WRITEBACK_BYTES);
}

#[test]
fn a_segment_cut_short_under_the_store_fails_only_its_own_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), settings(64 << 10)).unwrap();
    let big = "v".repeat(1000);
    for i in 0..200 {
        put(&store, &format!("key{i}"), &big);
    }
    let first = store.shared.segment(1).unwrap();
    assert!(first.mapping.is_some(), "reads go through the mapping");
    assert_eq!(value(&store, "key0").as_deref(), Some(big.as_str()));
    // Its pages now lie past the end of the file: touching them raises SIGBUS.
    let path = segment_path(&dir.path().join(DIR_NAME), 1);
    (File::options().write(true).open(&path).unwrap())
        .set_len(0)
        .unwrap();
    assert_eq!(
        value(&store, "key0"),
        None,
        "the read failed, the node did not"
    );
    assert!(first.mapping.as_ref().unwrap().has_faulted());
    assert_eq!(value(&store, "key1"), None);
    assert_eq!(value(&store, "key199").as_deref(), Some(big.as_str()));
    put(&store, "key0", "again");
    assert_eq!(value(&store, "key0").as_deref(), Some("again"));
}

#[test]
fn the_purge_finds_what_expires_after_a_restart_and_passes_over_shards_with_nothing_due() {
    let dir = tempfile::tempdir().unwrap();
    // A quarter of the keys expire at 150, a quarter at 250, the rest never.
    let expiry = |i: usize| [150, 250, 0, 0][i % 4];
    {
        let store = LogStore::open(dir.path(), settings(4096)).unwrap();
        for i in 0..400 {
            let versions = Versions::one(test_record("x", expiry(i)));
            let key = format!("key{i}");
            block(store.update(key.as_bytes(), 100, &mut |_| Change::Put(versions.clone())));
        }
    }
    // The index rebuilt from the hint files knows which shards hold a key with a TTL.
    let store = LogStore::open(dir.path(), settings(4096)).unwrap();
    let due = |now| {
        let bounds = store.shared.shards.iter().map(|s| lock(s).earliest_expiry);
        bounds.filter(|&bound| expired_by(bound, now)).count()
    };
    assert_eq!(due(149), 0);
    assert!(due(150) > 0);
    let kept = |store: &LogStore| {
        (0..400)
            .filter(|i| value(store, &format!("key{i}")).is_some())
            .count()
    };
    assert_eq!(store.purge_expired(200), 100);
    assert_eq!(kept(&store), 300);
    assert_eq!(
        store.purge_expired(300),
        100,
        "the keys due later are purged then"
    );
    assert_eq!(kept(&store), 200);
    // The pass that purged keeps its shards due once more (a key whose purge failed would
    // still be there); the next finds nothing, and from then on no index is read.
    assert_eq!(store.purge_expired(400), 0);
    assert_eq!(due(u64::MAX), 0);
    // A write with a TTL makes its shard due again.
    let late = Versions::one(test_record("x", 500));
    block(store.update(b"late", 450, &mut |_| Change::Put(late.clone())));
    assert_eq!((due(499), due(500)), (0, 1));
    assert_eq!(store.purge_expired(600), 1);
}

/// A store holding "k" with a 1000-byte value on disk, where its frame is and the
/// segment file holding it.
fn one_frame_on_disk(dir: &Path) -> (LogStore, Entry, PathBuf) {
    let store = LogStore::open(dir, settings(1 << 20)).unwrap();
    put(&store, "k", &"v".repeat(1000));
    let hash = key_hash(b"k");
    let entry = *lock(&store.shared.shards[shard_of(hash)])
        .get(hash, b"k")
        .unwrap();
    let path = segment_path(&dir.join(DIR_NAME), entry.segment);
    (store, entry, path)
}

/// Overwrites `key` with "new", returning the clock of the version the write was shown.
fn overwrite_seeing(store: &LogStore, key: &str) -> Option<crate::causality::VectorClock> {
    let mut seen = None;
    block(store.overwrite(key.as_bytes(), 100, &mut |current| {
        seen = current.map(|v| v.0[0].clock.clone());
        Change::Put(Versions::one(test_record("new", 0)))
    }));
    seen
}

fn damage(path: &Path, at: u64) {
    let file = File::options().read(true).write(true).open(path).unwrap();
    let mut byte = [0];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x02], at).unwrap();
}

#[test]
fn an_overwrite_reads_the_stored_version_around_its_value() {
    let dir = tempfile::tempdir().unwrap();
    let (store, entry, path) = one_frame_on_disk(dir.path());
    let segment = store.shared.segment(entry.segment).unwrap();
    assert!(segment.mapping.is_some(), "read through the mapping");
    // A damaged value fails the whole read's CRC...
    damage(&path, u64::from(entry.offset + entry.len / 2));
    assert_eq!(value(&store, "k"), None);
    // ...which an overwrite, reading around the value, never makes.
    let clock = overwrite_seeing(&store, "k");
    assert_eq!(clock, Some(test_record("", 0).clock));
    assert_eq!(value(&store, "k").as_deref(), Some("new"));
}

#[test]
fn an_overwrite_that_finds_the_stored_clock_damaged_reads_the_whole_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (store, entry, path) = one_frame_on_disk(dir.path());
    // The clock's counter, before the three flags that end the frame: 1 becomes 3, a
    // clock that decodes but is not the one the index fingerprinted.
    damage(&path, u64::from(entry.offset + entry.len - 4));
    // The whole read fails its CRC, so the write is shown nothing rather than a clock
    // the version never had.
    assert_eq!(overwrite_seeing(&store, "k"), None);
    assert_eq!(value(&store, "k").as_deref(), Some("new"));
}

/// A 1 KiB value naming its key.
fn kibibyte_of(key: &str) -> String {
    format!("{key:.<1024}")
}

/// Segments of 16 KiB, under the 64 KiB write buffer, so the buffer is written out when a
/// segment is sealed: the disk fills during a seal. Appends are refused with the error,
/// counted in the stats, reads go on, and once space is free the seal completes and
/// writes are taken again; after a reopen every acknowledged write is there.
fn a_full_disk_during_seals(settings: Settings) {
    let disk = SmallDisk::mount(2);
    let ballast = disk.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 1 << 20]).unwrap();
    let data = disk.path().join("data");
    let store = LogStore::open(&data, settings.clone()).unwrap();
    // First segments half dead: compacting them means appending their live half.
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..60 {
        expected.insert(format!("old{i}"), kibibyte_of(&format!("old{i}")));
    }
    for i in (0..60).step_by(2) {
        expected.insert(format!("old{i}"), kibibyte_of(&format!("old{i} again")));
    }
    for i in 0..60 {
        let key = format!("old{i}");
        put(&store, &key, &kibibyte_of(&key));
    }
    for i in (0..60).step_by(2) {
        put(
            &store,
            &format!("old{i}"),
            &kibibyte_of(&format!("old{i} again")),
        );
    }
    let mut acknowledged = Vec::new();
    let refusal = loop {
        let key = format!("key{}", acknowledged.len());
        match try_put(&store, &key, &kibibyte_of(&key)) {
            Ok(()) => acknowledged.push(key),
            Err(refusal) => break refusal,
        }
        assert!(acknowledged.len() < 4096, "a 2 MiB disk never filled");
    };
    assert!(
        refusal.to_string().contains("No space left on device"),
        "{refusal}"
    );
    assert!(store.shared.head_id.load(Ordering::Relaxed) > 10, "sealed");
    let stats = store.stats();
    assert!(stats.write_errors > 0 && stats.write_failing, "{stats:?}");
    // Still full: a write that needs the seal is refused again, and so is one that would
    // fit in the segment, which the buffer waiting for the seal has no room for on disk.
    assert!(try_put(&store, "still-full", &kibibyte_of("still-full")).is_err());
    assert!(try_put(&store, "small", "x").is_err());
    assert_eq!(value(&store, "small"), None);
    // Compaction has no room for the live half either: it fails, and returns, and
    // nothing is lost.
    let errors = store.stats().write_errors;
    store.compact_now();
    let stats = store.stats();
    assert!(stats.write_errors > errors, "compaction tried: {stats:?}");
    assert_eq!(stats.compactions, 0);
    let everything = |store: &LogStore, acknowledged: &[String]| {
        for key in acknowledged {
            assert_eq!(value(store, key), Some(kibibyte_of(key)), "{key}");
        }
        for (key, expected) in &expected {
            assert_eq!(value(store, key).as_ref(), Some(expected), "{key}");
        }
    };
    everything(&store, &acknowledged);
    std::fs::remove_file(&ballast).unwrap();
    try_put(&store, "after", &kibibyte_of("after")).expect("taken once space is free");
    acknowledged.push("after".into());
    assert!(!store.stats().write_failing);
    store.compact_now();
    assert!(store.stats().compactions > 0);
    everything(&store, &acknowledged);
    drop(store);
    let store = LogStore::open(&data, settings).unwrap();
    everything(&store, &acknowledged);
    drop(store);
    LogStore::check(&data).expect("consistent");
}

#[test]
fn a_disk_filling_during_seals_refuses_appends_and_keeps_acknowledged_ones_periodic() {
    a_full_disk_during_seals(periodic(16 << 10));
}

#[test]
fn a_disk_filling_during_seals_refuses_appends_and_keeps_acknowledged_ones_fsync() {
    a_full_disk_during_seals(settings(16 << 10));
}

//! The LSM store on real files: a model-based test against a `BTreeMap` oracle, bit flips in
//! every part of an SSTable, the side-car hook, reference-counted deletion, tombstones at the
//! bottom, and the scrubber thread.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vortex_io::RingConfig;
use vortex_storage::sstable::table::{table_name, Section, Table};
use vortex_storage::store::{CompactionHook, OpenReport, StoreHooks};
use vortex_storage::wal::WalOptions;
use vortex_storage::{
    DirectIo, Key, Point, PosixEnv, Snapshot, StorageError, Store, StoreOptions, WriteSize,
};
use vortex_test_support::files::{copy_dir, flip};
use vortex_test_support::{test_seed, Rng};

type TestStore = Store<PosixEnv>;

/// Small everything, so that a few hundred writes flush and compact through several levels.
fn small_options() -> StoreOptions {
    StoreOptions {
        wal: WalOptions {
            segment_bytes_target: 256 << 10,
            ..WalOptions::default()
        },
        memtable_bytes: 24 << 10,
        table_bytes_target: 16 << 10,
        l0_compaction_trigger: 3,
        l0_stop: 8,
        level1_bytes: 48 << 10,
        level_multiplier: 3,
        compaction_bytes_per_second: 0,
        scrub_bytes_per_second: 0,
        ..StoreOptions::default()
    }
}

fn open_with(dir: &Path, options: StoreOptions, hooks: StoreHooks) -> (TestStore, OpenReport) {
    let env = PosixEnv::new(&RingConfig::plain(64), DirectIo::Auto).unwrap();
    Store::open(env, dir, options, hooks).unwrap()
}

fn open(dir: &Path) -> TestStore {
    open_with(dir, small_options(), StoreHooks::default()).0
}

fn key(collection: u32, point: u64) -> Key {
    Key { collection, point }
}

/// A vector and payload that depend on the write, so a stale or foreign version is caught.
fn point_for(collection: u32, point: u64, version: u64, rng: &mut Rng) -> Point {
    let dim = match collection {
        0 => 16,                                // 64-byte vectors: 64-aligned without padding
        1 => 3,                                 // 12-byte vectors, padded to 64
        _ => [0, 5, 40][rng.below(3) as usize], // lengths change: tables split
    };
    let vector: Vec<u8> = (0..dim * 4)
        .map(|i| (point as u8) ^ (version as u8).wrapping_add(i as u8))
        .collect();
    let mut payload = format!("c{collection} p{point} v{version}").into_bytes();
    payload.resize(payload.len() + rng.below(300) as usize, b'.');
    Point { vector, payload }
}

fn put(store: &mut TestStore, key: Key, point: &Point) -> u64 {
    loop {
        match store.put(key, &point.vector, &point.payload) {
            Ok(sequence) => return sequence,
            Err(StorageError::Throttled(_)) => {
                store.poll(Some(Duration::from_millis(5))).unwrap();
            }
            Err(error) => panic!("put: {error}"),
        }
    }
}

fn delete(store: &mut TestStore, key: Key) -> u64 {
    loop {
        match store.delete(key) {
            Ok(sequence) => return sequence,
            Err(StorageError::Throttled(_)) => {
                store.poll(Some(Duration::from_millis(5))).unwrap();
            }
            Err(error) => panic!("delete: {error}"),
        }
    }
}

fn check_against_model(store: &TestStore, model: &BTreeMap<Key, Point>, context: &str) {
    for collection in 0..3 {
        for point in 0..40 {
            let k = key(collection, point);
            let got = store
                .get(&k)
                .unwrap_or_else(|e| panic!("{context}: get {k:?}: {e}"));
            assert_eq!(got.as_ref(), model.get(&k), "{context}: get {k:?}");
        }
        let mut scanned = Vec::new();
        let mut after = None;
        loop {
            let page = store.scan(collection, after, 7).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|(id, _)| *id);
            scanned.extend(page);
        }
        let expected: Vec<(u64, Point)> = model
            .range(key(collection, 0)..=key(collection, u64::MAX))
            .map(|(k, p)| (k.point, p.clone()))
            .collect();
        assert_eq!(
            scanned, expected,
            "{context}: scan of collection {collection}"
        );
    }
}

/// Every point of a snapshot, by `get` and through its MemTables and tables.
fn check_snapshot(snapshot: &Snapshot, model: &BTreeMap<Key, Point>, context: &str) {
    for collection in 0..3 {
        let fresh = snapshot.memtable_points(collection);
        for point in 0..40 {
            let k = key(collection, point);
            let got = snapshot
                .get(&k)
                .unwrap_or_else(|e| panic!("{context}: get {k:?}: {e}"));
            assert_eq!(got.as_ref(), model.get(&k), "{context}: get {k:?}");
            // A point the MemTables hold is found there, with the same answer.
            if let Ok(at) = fresh.binary_search_by_key(&point, |(id, _)| *id) {
                assert_eq!(fresh[at].1, model.get(&k), "{context}: memtable {k:?}");
            }
        }
    }
}

/// Random puts, overwrites, deletes, flushes, full compactions, closes and reopens (and
/// drops without close: the WAL has everything acknowledged), checked against a `BTreeMap`.
#[test]
fn random_operations_match_a_btreemap() {
    let seed = test_seed();
    println!("seed {seed} (replay with VORTEX_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut model: BTreeMap<Key, Point> = BTreeMap::new();
    let mut version = 0u64;
    let mut compactions_seen = 0;
    let mut snapshots: Vec<(Snapshot, BTreeMap<Key, Point>, String)> = Vec::new();
    for step in 0..3_000u64 {
        let context = format!("seed {seed} step {step}");
        match rng.below(100) {
            0..=59 => {
                let k = key(rng.below(3) as u32, rng.below(40));
                version += 1;
                let point = point_for(k.collection, k.point, version, &mut rng);
                put(&mut store, k, &point);
                model.insert(k, point);
            }
            60..=79 => {
                let k = key(rng.below(3) as u32, rng.below(40));
                delete(&mut store, k);
                model.remove(&k);
            }
            80..=89 => {
                store.sync().unwrap();
                check_against_model(&store, &model, &context);
                // Snapshots taken earlier still read as the store did then, whatever was
                // written, flushed, compacted (their tables' files deleted) or reopened since.
                for (snapshot, then, taken) in &snapshots {
                    check_snapshot(snapshot, then, &format!("{context}: snapshot of {taken}"));
                }
                let snapshot = store.snapshot();
                check_snapshot(&snapshot, &model, &format!("{context}: new snapshot"));
                if snapshots.len() == 4 {
                    snapshots.remove(0);
                }
                snapshots.push((snapshot, model.clone(), context.clone()));
            }
            90..=93 => store.flush().unwrap(),
            94 => store.compact_all().unwrap(),
            95..=97 => {
                store.sync().unwrap();
                compactions_seen += store.stats().compactions;
                store.close().unwrap();
                store = open(dir.path());
                check_against_model(&store, &model, &context);
            }
            _ => {
                // Dropped without close: acknowledged writes come back from the WAL.
                store.sync().unwrap();
                compactions_seen += store.stats().compactions;
                drop(store);
                store = open(dir.path());
                check_against_model(&store, &model, &context);
            }
        }
    }
    store.sync().unwrap();
    check_against_model(&store, &model, &format!("seed {seed} end"));
    let stats = store.stats();
    println!("final stats: {stats:?}");
    compactions_seen += stats.compactions;
    assert!(stats.flushes > 0 || compactions_seen > 0, "{stats:?}");
    assert!(compactions_seen > 0, "no compaction ran: {stats:?}");
    assert_eq!(stats.quarantined_tables, 0);
    assert!(store.scrub().is_empty());
}

/// Where each part of a table is, from its footer.
/// A byte inside `section` of `table`'s file (in slot 0's vector, for the vector region).
fn section_offset(table: &Table, section: Section) -> u64 {
    table.footer().section_start(section) + 5
}

/// A bit flipped in each part of an SSTable is found by a read and by the scrubber, with an
/// error that names the table, and never returns garbage.
#[test]
fn a_flipped_bit_in_any_part_of_a_table_is_detected() {
    let source = tempfile::tempdir().unwrap();
    let mut store = open_with(
        source.path(),
        StoreOptions {
            memtable_bytes: 1 << 20,
            ..small_options()
        },
        StoreHooks::default(),
    )
    .0;
    let mut rng = Rng(7);
    for point in 0..30 {
        let p = point_for(0, point, 1, &mut rng);
        put(&mut store, key(0, point), &p);
    }
    store.flush().unwrap();
    let tables = store.tables();
    assert_eq!(tables.len(), 1);
    let table = Arc::clone(&tables[0].1);
    drop(tables);
    store.close().unwrap();
    for section in Section::ALL {
        let scratch = tempfile::tempdir().unwrap();
        copy_dir(source.path(), scratch.path());
        let path = scratch
            .path()
            .join("tables")
            .join(table_name(table.number()));
        flip(&path, section_offset(&table, section));
        let (store, report) = open_with(scratch.path(), small_options(), StoreHooks::default());
        // A scan over the damage fails too (a placeholder for a table that could not be
        // opened has no index: it must not be skipped as if empty).
        let scanned = store.scan(0, None, 1000);
        assert!(scanned.is_err(), "{section}: a scan read past the damage");
        // Data blocks and vectors are checked when read; the meta blocks at open.
        let read_fails = (0..30).any(|point| store.get(&key(0, point)).is_err());
        assert!(read_fails, "{section}: no read failed");
        for point in 0..30 {
            match store.get(&key(0, point)) {
                Ok(Some(p)) => {
                    // Collection 0's vectors do not depend on the generator.
                    assert_eq!(p.vector, point_for(0, point, 1, &mut Rng(0)).vector);
                    assert!(p.payload.starts_with(format!("c0 p{point} v1").as_bytes()));
                }
                Ok(None) => panic!("{section}: point {point} vanished"),
                Err(error) => {
                    let text = error.to_string();
                    assert!(text.contains(&table_name(table.number())), "{text}");
                    assert!(
                        matches!(
                            error,
                            StorageError::TableCorrupt { .. } | StorageError::Quarantined { .. }
                        ),
                        "{section}: {error}"
                    );
                }
            }
        }
        assert_eq!(store.stats().quarantined_tables, 1, "{section}");
        let found = store.scrub();
        assert_eq!(found.len(), 1, "{section}: the scrubber reports the table");
        drop(store);
        if report.quarantined == 0 {
            // Found by a read: the section named is the one flipped.
            let fresh = open_with(scratch.path(), small_options(), StoreHooks::default()).0;
            let found = fresh.scrub();
            match &found[..] {
                [StorageError::TableCorrupt { section: s, .. }] => assert_eq!(*s, section),
                other => panic!("{section}: scrub found {other:?}"),
            }
        } else {
            assert!(
                matches!(
                    section,
                    Section::VectorChecksums | Section::Index | Section::Bloom | Section::Footer
                ),
                "{section} quarantined at open"
            );
        }
    }
}

/// A side-car builder for tests: writes `<number>.side` holding the table's vector region's
/// checksum, durably; can be told to fail.
#[derive(Default)]
struct SideCars {
    dir: Mutex<Option<PathBuf>>,
    fail: AtomicBool,
    written: AtomicUsize,
    deleted: Mutex<Vec<u64>>,
}

impl CompactionHook for SideCars {
    fn table_written(&self, table: &Table) -> Result<(), String> {
        if self.fail.load(Ordering::Acquire) {
            return Err("side-car builder told to fail".into());
        }
        let dir = self.dir.lock().unwrap().clone().unwrap();
        let path = dir.join(format!("{}.side", table.number()));
        let crc = crc32c::crc32c(table.vector_region());
        std::fs::write(&path, crc.to_le_bytes()).map_err(|e| e.to_string())?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| e.to_string())?;
        self.written.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    fn table_deleted(&self, number: u64) {
        self.deleted.lock().unwrap().push(number);
    }
}

/// Tables are published only after their side-car is durable; a failing builder holds the
/// flush back (the data stays readable) until it works again; compaction removes inputs'
/// files only when nobody holds them, and tells the hook.
#[test]
fn the_side_car_hook_gates_publication_and_files_outlive_their_readers() {
    let dir = tempfile::tempdir().unwrap();
    let side = tempfile::tempdir().unwrap();
    let hook = Arc::new(SideCars::default());
    *hook.dir.lock().unwrap() = Some(side.path().to_owned());
    let hooks = StoreHooks {
        compaction: Arc::clone(&hook) as Arc<dyn CompactionHook>,
        ..StoreHooks::default()
    };
    let options = StoreOptions {
        memtable_bytes: 1 << 20,
        l0_compaction_trigger: 100,
        l0_stop: 200,
        ..small_options()
    };
    let (mut store, _) = open_with(dir.path(), options.clone(), hooks.clone());
    let mut rng = Rng(3);
    for point in 0..50 {
        let p = point_for(0, point, 1, &mut rng);
        put(&mut store, key(0, point), &p);
    }
    hook.fail.store(true, Ordering::Release);
    let refused = store.flush();
    assert!(
        refused.is_err(),
        "a flush whose side-car fails is not published"
    );
    assert!(store.tables().is_empty());
    assert!(store.stats().background_errors >= 1);
    assert!(store.get(&key(0, 7)).unwrap().is_some(), "still readable");
    assert_eq!(
        std::fs::read_dir(dir.path().join("tables"))
            .unwrap()
            .count(),
        0,
        "unpublished outputs are deleted"
    );
    hook.fail.store(false, Ordering::Release);
    store.flush().unwrap();
    let tables = store.tables();
    assert_eq!(tables.len(), 1);
    let first = tables[0].1.number();
    assert!(side.path().join(format!("{first}.side")).exists());
    drop(tables);

    for point in 0..50 {
        store.delete(key(0, point)).unwrap();
    }
    store.flush().unwrap();
    let held = store.tables();
    assert_eq!(held.len(), 2);
    // The outputs of the failed flushes were deleted, and the hook told; from here on only
    // the compaction's inputs may go, once nobody holds them.
    let deleted_before = hook.deleted.lock().unwrap().len();
    assert!(
        deleted_before > 0,
        "discarded outputs' side-cars are deleted too"
    );
    store.compact_all().unwrap();
    // Everything was deleted and compaction reached the bottom: no table is left, yet the
    // held inputs' files are still there for their reader.
    assert!(
        store.tables().is_empty(),
        "tombstones dropped at the bottom"
    );
    for (_, table) in &held {
        assert!(table.path().exists(), "deleted under a reader");
    }
    assert_eq!(hook.deleted.lock().unwrap().len(), deleted_before);
    let paths: Vec<PathBuf> = held.iter().map(|(_, t)| t.path().to_owned()).collect();
    drop(held);
    for path in &paths {
        assert!(
            !path.exists(),
            "{} outlived its last reader",
            path.display()
        );
    }
    let deleted: BTreeSet<u64> = hook.deleted.lock().unwrap().iter().copied().collect();
    assert!(deleted.contains(&first));
    store.close().unwrap();
    let (store, report) = open_with(dir.path(), options, hooks);
    assert_eq!(report.tables, 0);
    assert_eq!(store.get(&key(0, 7)).unwrap(), None);
}

/// Leftover outputs of an interrupted flush or compaction are removed at open.
#[test]
fn files_no_version_lists_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut rng = Rng(5);
    for point in 0..20 {
        let p = point_for(1, point, 1, &mut rng);
        put(&mut store, key(1, point), &p);
    }
    store.flush().unwrap();
    let live = store.tables()[0].1.path().to_owned();
    store.close().unwrap();
    let orphan = dir.path().join("tables").join(table_name(999));
    std::fs::copy(&live, &orphan).unwrap();
    let (store, report) = open_with(dir.path(), small_options(), StoreHooks::default());
    assert_eq!(report.orphans_removed, 1);
    assert!(!orphan.exists() && live.exists());
    assert!(store.get(&key(1, 3)).unwrap().is_some());
}

/// The scrubber thread finds a bit flipped under a running store and quarantines the table.
#[test]
fn the_scrubber_thread_finds_corruption_at_its_pace() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        memtable_bytes: 1 << 20,
        scrub_bytes_per_second: 4 << 20,
        scrub_interval: Duration::from_millis(20),
        ..small_options()
    };
    let (mut store, _) = open_with(dir.path(), options, StoreHooks::default());
    let mut rng = Rng(9);
    for point in 0..30 {
        let p = point_for(0, point, 1, &mut rng);
        put(&mut store, key(0, point), &p);
    }
    store.flush().unwrap();
    let table = Arc::clone(&store.tables()[0].1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stats().scrub_passes < 2 {
        assert!(Instant::now() < deadline, "the scrubber never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(store.stats().scrub_corruptions, 0);
    assert!(store.stats().scrub_bytes >= table.file_bytes());
    // Flip a vector bit through the file: the mapping shares the page cache.
    let offset = table.footer().data_end + 1;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(table.path())
        .unwrap();
    let mut byte = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, offset).unwrap();
    byte[0] ^= 1;
    std::os::unix::fs::FileExt::write_all_at(&file, &byte, offset).unwrap();
    while store.stats().scrub_corruptions == 0 {
        assert!(Instant::now() < deadline, "the scrubber missed the flip");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(store.stats().quarantined_tables, 1);
    let error = store.get(&key(0, 0)).unwrap_err();
    assert!(matches!(error, StorageError::Quarantined { .. }), "{error}");
}

/// Oversized writes are refused with a clear error, and options that would let one through
/// to an SSTable block are refused at open.
#[test]
fn oversized_writes_and_unsafe_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let huge = vec![0u8; 600 << 10];
    let error = store.put(key(0, 1), &[0; 8], &huge).unwrap_err();
    assert!(
        matches!(error, StorageError::RecordTooLarge { .. }),
        "{error}"
    );
    let error = store.put(key(0, 1), &vec![0; 65 << 10], b"").unwrap_err();
    assert!(error.to_string().contains("exceeds the limit"), "{error}");
    drop(store);
    let env = PosixEnv::new(&RingConfig::plain(8), DirectIo::Auto).unwrap();
    let mut options = small_options();
    options.wal.record_bytes_max = 32 << 20;
    options.wal.batch_bytes_max = 64 << 20;
    let error = Store::open(env, dir.path(), options, StoreHooks::default()).unwrap_err();
    assert!(error.to_string().contains("record_bytes_max"), "{error}");
}

/// A table abandoned before it is finished (a failed write, a stopped job) leaves no file.
#[test]
fn an_abandoned_table_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(table_name(5));
    let mut builder = vortex_storage::sstable::table::TableBuilder::create(
        &vortex_storage::PosixFiles::shared(),
        &path,
        1,
    )
    .unwrap();
    builder
        .add(key(1, 1), 1, Some(&Point::new(&[1; 16], b"x")), None)
        .unwrap();
    assert!(path.exists());
    drop(builder);
    assert!(!path.exists());
}

/// `admit` answers for a whole batch before any of it is written: what it admits is taken
/// without THROTTLED, what it refuses leaves the WAL untouched, and a batch no empty WAL
/// batch could hold is refused as invalid (retrying it would never succeed).
#[test]
fn admit_keeps_batches_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = small_options();
    options.memtable_bytes = 1 << 20;
    options.wal.batch_bytes_max = 64 << 10; // batches up to 32 KiB of records
    options.wal.record_bytes_max = 16 << 10;
    let mut store = open_with(dir.path(), options, StoreHooks::default()).0;
    let put = |bytes: usize| WriteSize::Put {
        vector_bytes: 64,
        payload_bytes: bytes,
    };
    let (appends_max, bytes_max) = store.batch_limits();
    assert_eq!(bytes_max, 32 << 10);
    let error = store.admit(&vec![put(1000); 40]).unwrap_err();
    assert!(
        matches!(&error, StorageError::Invalid(m) if m.contains("split it")),
        "{error}"
    );
    let error = store
        .admit(&vec![WriteSize::Delete; appends_max + 1])
        .unwrap_err();
    assert!(
        matches!(&error, StorageError::Invalid(m) if m.contains("split it")),
        "{error}"
    );

    // A capped MemTable caps a batch too: a batch the MemTable could only take once it is
    // due for a flush would be refused forever while it is not.
    {
        let dir = tempfile::tempdir().unwrap();
        let mut options = small_options();
        options.memtable_entries_max = 16;
        let mut capped = open_with(dir.path(), options, StoreHooks::default()).0;
        assert_eq!(capped.batch_limits().0, 16);
        capped.put(key(0, 1), &[1; 64], b"").unwrap();
        capped.sync().unwrap();
        let error = capped.admit(&[WriteSize::Delete; 17]).unwrap_err();
        assert!(error.to_string().contains("split it"), "{error}");
        capped.admit(&[WriteSize::Delete; 16]).unwrap();
        let error = capped
            .admit(&[WriteSize::Put {
                vector_bytes: 64,
                payload_bytes: 600 << 10,
            }])
            .unwrap_err();
        assert!(
            matches!(error, StorageError::RecordTooLarge { .. }),
            "{error}"
        );
    }

    // Fill the open batch without waiting for it: a batch that would not fit is refused
    // before its first write, and one that fits is written whole.
    let mut written = Vec::new();
    let mut refused = 0;
    for round in 0..40u64 {
        let batch = vec![put(2000); 8]; // ~16.7 KiB: three fit an open batch of 64 KiB
        match store.admit(&batch) {
            Ok(()) => {
                for index in 0..8 {
                    let payload = vec![round as u8; 2000];
                    store
                        .put(key(0, round * 8 + index), &[1; 64], &payload)
                        .unwrap_or_else(|e| panic!("an admitted write was refused: {e}"));
                    written.push(round * 8 + index);
                }
            }
            Err(StorageError::Throttled(_)) => {
                refused += 1;
                let before = store.stats().user_bytes;
                store.poll(Some(Duration::from_millis(20))).unwrap();
                assert_eq!(store.stats().user_bytes, before, "a refused batch wrote");
            }
            Err(error) => panic!("admit: {error}"),
        }
    }
    store.sync().unwrap();
    assert!(refused > 0, "the open batch never filled");
    assert!(written.len() >= 8);
    for &point in &written {
        assert!(
            store.get(&key(0, point)).unwrap().is_some(),
            "point {point}"
        );
    }
}

/// A full merge leaves one table per collection (however many `table_bytes_target` would
/// cut), at a level whose size target holds it, so that no compaction is due at once to cut
/// it again; `merged_table_bytes` still bounds each output.
#[test]
fn a_full_merge_leaves_one_table_per_collection_where_no_compaction_is_due() {
    for (merged_table_bytes, expect_one) in [(1 << 30, true), (64 << 10, false)] {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            merged_table_bytes,
            ..small_options()
        };
        let (mut store, _) = open_with(dir.path(), options, StoreHooks::default());
        let mut rng = Rng(11);
        let mut model = BTreeMap::new();
        for point in 0..1_500 {
            for collection in 0..2 {
                let p = point_for(collection, point, 1, &mut rng);
                put(&mut store, key(collection, point), &p);
                model.insert(key(collection, point), p);
            }
        }
        store.compact_all().unwrap();
        // Let any compaction that would now be due start and finish.
        for _ in 0..20 {
            store.poll(Some(Duration::from_millis(5))).unwrap();
        }
        let stats = store.stats();
        assert_eq!(stats.compactions_due, 0, "merged tables are not cut again");
        assert!(!stats.compacting);
        let tables = store.tables();
        let bytes: u64 = tables.iter().map(|(_, t)| t.file_bytes()).sum();
        assert!(bytes > 4 * (64 << 10), "the data spans several cut tables");
        let levels: Vec<usize> = tables.iter().map(|(level, _)| *level).collect();
        assert!(levels.windows(2).all(|w| w[0] == w[1]), "{levels:?}");
        for collection in 0..2 {
            let count = tables
                .iter()
                .filter(|(_, t)| t.footer().collection == collection)
                .count();
            if expect_one {
                assert_eq!(count, 1, "collection {collection}");
            } else {
                assert!(count > 1, "collection {collection}: {count} tables");
                for (_, table) in &tables {
                    assert!(table.file_bytes() < 2 * merged_table_bytes);
                }
            }
        }
        for (k, p) in &model {
            assert_eq!(store.get(k).unwrap().as_ref(), Some(p), "{k:?}");
        }
    }
}

/// Issue #23 item 2: a close does not wait for a long merge. With compaction limited to
/// 1 MiB/s, merging about 4 MiB of tables would take four seconds; a close started while it
/// runs abandons it (its inputs stay) and returns within a second and a half, and the
/// reopened store holds every write.
#[test]
fn a_close_abandons_a_running_merge() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        memtable_bytes: 512 << 10,
        table_bytes_target: 512 << 10,
        merged_table_bytes: 64 << 20,
        l0_compaction_trigger: 20,
        l0_stop: 40,
        compaction_bytes_per_second: 1 << 20,
        ..small_options()
    };
    let (mut store, _) = open_with(dir.path(), options.clone(), StoreHooks::default());
    let vector = vec![7u8; 4096];
    let points = 1000u64;
    for flushed in 0..4u64 {
        for point in 0..points / 4 {
            let id = flushed * points / 4 + point;
            store.put(key(0, id), &vector, &id.to_le_bytes()).unwrap();
        }
        store.flush().unwrap();
    }
    assert!(store.compact_all_soon().unwrap(), "the merge did not start");
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    store.close().unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the close waited {took:?} for the merge"
    );
    let (store, _) = open_with(dir.path(), options, StoreHooks::default());
    for id in 0..points {
        let found = store.get(&key(0, id)).unwrap().expect("a write kept");
        assert_eq!(found.payload, id.to_le_bytes());
    }
}

/// The WAL segment under `dir` whose bytes hold `marker`, and where.
fn find_in_wal(dir: &Path, marker: &[u8]) -> (std::path::PathBuf, u64) {
    for entry in std::fs::read_dir(dir.join("wal")).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
            return (entry.path(), at as u64);
        }
    }
    panic!("no WAL segment holds the marker");
}

/// Issue #23 item 6: a clean close seals the WAL, so that a bit flipped afterwards in the
/// last acknowledged write is corruption (the start refuses, naming file and offset), not a
/// torn tail silently cut off with the write in it. After a crash (no close), the same
/// damage is still a torn tail, as only a crash can leave one.
#[test]
fn a_clean_close_seals_the_wal_so_damage_to_the_last_write_is_not_taken_for_a_torn_tail() {
    let marker = b"THE-LAST-ACKNOWLEDGED-WRITE";
    for clean in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            // Nothing flushed: every write stays in the WAL.
            memtable_bytes: 64 << 20,
            ..small_options()
        };
        let (mut store, _) = open_with(dir.path(), options.clone(), StoreHooks::default());
        for id in 0..20u64 {
            store
                .put(key(0, id), &[1u8; 64], &id.to_le_bytes())
                .unwrap();
        }
        store.put(key(0, 20), &[1u8; 64], marker).unwrap();
        store.sync().unwrap();
        if clean {
            store.close().unwrap();
        } else {
            drop(store); // as a crash leaves it: synced, not sealed
        }
        let (segment, at) = find_in_wal(dir.path(), marker);
        flip(&segment, at + 3);
        let env = PosixEnv::new(&RingConfig::plain(64), DirectIo::Auto).unwrap();
        match Store::open(env, dir.path(), options, StoreHooks::default()) {
            Err(error) => {
                assert!(clean, "a crash's torn tail refused the start: {error}");
                let text = error.to_string();
                assert!(
                    text.contains("corrupt") && text.contains("wal-"),
                    "the error names the damage and the file: {text}"
                );
            }
            Ok((store, _)) => {
                assert!(
                    !clean,
                    "damage to the last write of a sealed log was truncated away"
                );
                // The torn tail (the damaged record) is cut; everything before it is there.
                assert!(store.get(&key(0, 20)).unwrap().is_none());
                assert!(store.get(&key(0, 19)).unwrap().is_some());
            }
        }
    }
}

/// Issue #23 item 7: a damaged CURRENT is named as damaged, with the MANIFEST it most likely
/// should name, and without echoing its bytes.
#[test]
fn a_damaged_current_names_the_manifest_to_restore() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open_with(dir.path(), small_options(), StoreHooks::default());
    store.put(key(0, 1), &[1u8; 64], b"p").unwrap();
    store.close().unwrap();
    let wal = dir.path().join("wal");
    let manifest = std::fs::read_to_string(wal.join("CURRENT")).unwrap();
    std::fs::write(wal.join("CURRENT"), b"MANIF\xffST-junk").unwrap();
    let env = PosixEnv::new(&RingConfig::plain(64), DirectIo::Auto).unwrap();
    let error = match Store::open(env, dir.path(), small_options(), StoreHooks::default()) {
        Ok(_) => panic!("a damaged CURRENT did not refuse the start"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("CURRENT")
            && error.contains("damaged")
            && error.contains(&format!("should read {:?}", manifest))
            && !error.contains("junk"),
        "{error}"
    );
}

/// Resident kB of this process's mapping that holds `address`.
fn resident_kib_at(address: usize) -> u64 {
    vortex_io::memlock::mapping_resident_kib(address)
        .unwrap()
        .unwrap_or_else(|| panic!("no mapping holds {address:#x}"))
}

/// A finished table was read whole once (the check after writing it), and a scrub reads it
/// whole again: neither leaves its pages in the process's resident set, where a search
/// touches a few rows (before, every table of a node stayed resident, and locked under
/// `mlockall`). The table still reads and verifies after.
#[test]
fn whole_table_passes_leave_no_page_resident() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(table_name(7));
    let mut builder = vortex_storage::sstable::table::TableBuilder::create(
        &vortex_storage::PosixFiles::shared(),
        &path,
        1,
    )
    .unwrap();
    let vector = vec![7u8; 4096];
    for point in 0..2048 {
        builder
            .add(key(1, point), point, Some(&Point::new(&vector, b"p")), None)
            .unwrap();
    }
    let table = builder.finish(7, 10, None).unwrap();
    let address = table.vector_region().as_ptr() as usize;
    let after_finish = resident_kib_at(address);
    let verified = table.verify(None, None).unwrap();
    let after_verify = resident_kib_at(address);
    table.release_pages();
    let after_release = resident_kib_at(address);
    eprintln!(
        "resident: {after_finish} kB after finish, {after_verify} kB after a verify of \
         {verified} bytes, {after_release} kB after release"
    );
    assert!(after_verify >= 8 << 10, "the verify read the table");
    assert!(
        after_finish <= 64,
        "{after_finish} kB resident after finish"
    );
    assert!(
        after_release <= 64,
        "{after_release} kB resident after release"
    );
    assert_eq!(table.region_points().unwrap().len(), 2048);
    assert_eq!(table.verify(None, None).unwrap(), verified);
}

/// Issue #23 item 1: the WAL is bounded in bytes, not only through the MemTable. With a
/// MemTable far larger than the bound, writes past `wal_bytes_max` start a flush and are
/// refused THROTTLED until its checkpoint retires segments; the WAL never holds much more
/// than the bound, a start replays no more than that, and every write is there.
#[test]
fn the_wal_is_bounded_in_bytes_and_writes_wait_for_a_flush_at_the_bound() {
    let scratch = tempfile::tempdir().unwrap();
    let segment = 64u64 << 10;
    let batch = 64usize << 10;
    let bound = 2 * segment + batch as u64 + (64 << 10);
    let options = StoreOptions {
        wal: WalOptions {
            segment_bytes_target: segment,
            batch_bytes_max: batch,
            record_bytes_max: 16 << 10,
            ..WalOptions::default()
        },
        memtable_bytes: 64 << 20, // never full here: only the WAL's bound flushes
        wal_bytes_max: bound,
        ..small_options()
    };
    let (mut store, _) = open_with(scratch.path(), options.clone(), StoreHooks::default());
    let mut model = BTreeMap::new();
    let mut rng = Rng(0x3A1B);
    let mut throttled = 0;
    let mut largest = 0;
    for point in 0..4_000u64 {
        let key = key(0, point % 1_500);
        let value = point_for(0, key.point, point, &mut rng);
        loop {
            match store.put(key, &value.vector, &value.payload) {
                Ok(_) => break,
                Err(StorageError::Throttled(reason)) => {
                    if reason.contains("wal_bytes_max") {
                        throttled += 1;
                    }
                    store.poll(Some(Duration::from_millis(5))).unwrap();
                }
                Err(error) => panic!("put: {error}"),
            }
        }
        model.insert(key, value);
        store.poll(None).unwrap();
        largest = largest.max(store.stats().wal_live_bytes);
    }
    store.sync().unwrap();
    let stats = store.stats();
    eprintln!(
        "{} bytes written to the WAL, at most {largest} live (bound {bound}); {throttled} \
         writes waited for a flush; {} flushes",
        stats.wal_bytes, stats.flushes
    );
    assert!(
        stats.wal_bytes > 3 * bound,
        "the run wrote well past the bound"
    );
    assert!(throttled > 0, "the bound was reached");
    assert!(stats.flushes >= 2, "the bound made flushes: {stats:?}");
    assert!(
        largest <= bound + batch as u64,
        "the WAL held {largest} bytes, bound {bound}"
    );
    check_against_model(&store, &model, "after the run");
    drop(store);
    let (store, report) = open_with(scratch.path(), options, StoreHooks::default());
    assert!(
        report.replay.bytes <= bound + batch as u64,
        "a start replayed {} bytes, bound {bound}",
        report.replay.bytes
    );
    check_against_model(&store, &model, "after a restart");
}

/// A hook under which every compaction fails and every flush succeeds: level 0 only grows.
#[derive(Debug, Default)]
struct CompactionsFail;

impl CompactionHook for CompactionsFail {
    fn table_written(&self, _table: &Table) -> Result<(), String> {
        Err("compactions fail in this test".to_owned())
    }

    fn table_flushed(&self, _table: &Arc<Table>) -> Result<(), String> {
        Ok(())
    }
}

/// Issue #23 item 1: a start takes writes at once whatever it replayed. Level 0 at its
/// stop (every compaction fails here) holds the MemTable's flush back, so writes fill it to
/// its THROTTLED mark; after a crash the replay refills it past that mark. The start
/// flushes what it replayed anyway (level 0 may pass its stop, up to twice it), so the
/// first write after the start is taken; before, every write was refused until a
/// compaction made room, and a node killed again before that never took one.
#[test]
fn a_start_takes_writes_at_once_though_level_0_is_at_its_stop() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = StoreHooks {
        compaction: Arc::new(CompactionsFail) as Arc<dyn CompactionHook>,
        ..StoreHooks::default()
    };
    let options = small_options();
    let (mut store, _) = open_with(dir.path(), options.clone(), hooks.clone());
    let mut rng = Rng(0x10_57);
    let mut model = BTreeMap::new();
    let mut point = 0u64;
    // Write until a write is refused with level 0 at its stop.
    let started = std::time::Instant::now();
    loop {
        let value = point_for(0, point, 1, &mut rng);
        match store.put(key(0, point), &value.vector, &value.payload) {
            Ok(_) => {
                model.insert(key(0, point), value);
                point += 1;
            }
            Err(StorageError::Throttled(_))
                if store.stats().levels[0].tables >= options.l0_stop =>
            {
                break
            }
            Err(StorageError::Throttled(_)) => {}
            Err(error) => panic!("put: {error}"),
        }
        store.poll(Some(Duration::from_millis(1))).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "level 0 never filled"
        );
    }
    store.sync().unwrap();
    let level_0 = store.stats().levels[0].tables;
    eprintln!(
        "{point} writes; level 0 at {level_0} tables (stop {})",
        options.l0_stop
    );
    drop(store); // a crash: the MemTable is only in the WAL
    let (mut store, report) = open_with(dir.path(), options.clone(), hooks);
    assert!(report.replay.records > 0, "{report:?}");
    let value = point_for(0, point, 1, &mut rng);
    let taken = store.put(key(0, point), &value.vector, &value.payload);
    assert!(
        taken.is_ok(),
        "the first write after the start was refused: {taken:?}"
    );
    model.insert(key(0, point), value);
    store.sync().unwrap();
    check_against_model(&store, &model, "after the start");
    assert!(store.stats().levels[0].tables <= 2 * options.l0_stop);
}

/// Flips one byte of the last edit in the store's live MANIFEST (`dir/wal`), so that it
/// fails its checksum; returns that edit and the MANIFEST's path.
fn damage_last_manifest_edit(dir: &Path) -> (vortex_storage::Edit, PathBuf) {
    use vortex_storage::record::{LogReader, Step};
    let wal = dir.join("wal");
    let current = std::fs::read_to_string(wal.join("CURRENT")).unwrap();
    let path = wal.join(current.trim_end());
    let mut bytes = std::fs::read(&path).unwrap();
    let mut last = None;
    {
        let mut reader = LogReader::new(&bytes, 1 << 20);
        while let Step::Record(record) = reader.next_record() {
            let edit = vortex_storage::Edit::decode(record.payload).unwrap();
            last = Some((edit, record.end));
        }
    }
    let (edit, end) = last.expect("the MANIFEST holds an edit");
    bytes[end as usize - 1] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    (edit, path)
}

/// Issue #23 item 7: a damaged last MANIFEST edit that was a flush. Before, the start took
/// it for torn and deleted the flushed SSTable as an orphan (the WAL, checkpointed by that
/// edit, may no longer hold its data). Now the table is moved into `lost+found/`, the report
/// names the MANIFEST and the offset, and new tables do not reuse its number.
#[test]
fn a_damaged_flush_edit_moves_its_table_aside_instead_of_deleting_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open_with(dir.path(), small_options(), StoreHooks::default());
    for point in 0..50 {
        store.put(key(0, point), &[7u8; 64], b"p").unwrap();
    }
    store.flush().unwrap();
    store.wait_idle().unwrap();
    let flushed: Vec<u64> = store.tables().iter().map(|(_, t)| t.number()).collect();
    assert_eq!(flushed.len(), 1);
    drop(store); // a crash: the flush edit is the MANIFEST's last
    let (edit, manifest) = damage_last_manifest_edit(dir.path());
    assert_eq!(
        edit.tables_added
            .iter()
            .map(|t| t.number)
            .collect::<Vec<_>>(),
        flushed,
        "the last edit is the flush"
    );
    let (mut store, report) = open_with(dir.path(), small_options(), StoreHooks::default());
    let damage = report
        .replay
        .manifest_damage
        .clone()
        .expect("damage reported");
    assert!(
        damage.contains(&manifest.display().to_string()) && damage.contains("offset"),
        "{damage}"
    );
    assert_eq!(report.orphans_removed, 0, "{report:?}");
    let aside = dir
        .path()
        .join(vortex_storage::store::LOST_FOUND)
        .join(table_name(flushed[0]));
    assert_eq!(report.moved_aside, vec![aside.clone()]);
    assert!(aside.exists(), "the flushed table is kept");
    assert!(!dir
        .path()
        .join("tables")
        .join(table_name(flushed[0]))
        .exists());
    // New tables take numbers past it, so nothing in lost+found is ever shadowed.
    store.put(key(0, 99), &[1u8; 64], b"p").unwrap();
    store.flush().unwrap();
    assert!(store.tables().iter().all(|(_, t)| t.number() > flushed[0]));
    store.close().unwrap();
}

/// Issue #23 item 7: a damaged last MANIFEST edit that was a compaction. Its inputs were
/// deleted once it was synced; the state before it lists them. Before, the start named a
/// missing `.sst` and nothing else. Now the missing tables are quarantined with a reason that
/// names the damaged MANIFEST edit, and the compaction's outputs are in `lost+found/`.
#[test]
fn a_damaged_compaction_edit_names_the_manifest_and_keeps_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open_with(dir.path(), small_options(), StoreHooks::default());
    for round in 0..3u64 {
        for point in 0..40 {
            store
                .put(key(0, round * 100 + point), &[round as u8; 64], b"p")
                .unwrap();
        }
        store.flush().unwrap();
    }
    store.compact_all().unwrap();
    store.wait_idle().unwrap();
    let outputs: Vec<u64> = store.tables().iter().map(|(_, t)| t.number()).collect();
    drop(store); // a crash: the compaction's edit is the MANIFEST's last
    let (edit, manifest) = damage_last_manifest_edit(dir.path());
    assert!(
        !edit.tables_removed.is_empty() && !edit.tables_added.is_empty(),
        "the last edit is the compaction: {edit:?}"
    );
    let (store, report) = open_with(dir.path(), small_options(), StoreHooks::default());
    assert_eq!(report.quarantined, edit.tables_removed.len(), "{report:?}");
    for (_, table) in store.tables() {
        let reason = table.quarantined().expect("an input, missing");
        assert!(
            reason.contains(&manifest.display().to_string()) && reason.contains("compaction"),
            "{reason}"
        );
    }
    let mut aside: Vec<PathBuf> = outputs
        .iter()
        .map(|&n| {
            dir.path()
                .join(vortex_storage::store::LOST_FOUND)
                .join(table_name(n))
        })
        .collect();
    aside.sort();
    let mut moved = report.moved_aside.clone();
    moved.sort();
    assert_eq!(moved, aside);
    assert!(aside.iter().all(|path| path.exists()));
    drop(store);
}

/// Issue #23 item 5: a scrub on demand. The scrubber rests an hour between passes; asked
/// for a pass (`scrub_soon`), it starts one at once at its pace and reports its progress
/// (the pass's bytes to do and done) and what it found.
#[test]
fn a_scrub_asked_for_runs_now_and_reports_its_progress() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        memtable_bytes: 1 << 20,
        scrub_bytes_per_second: 16 << 20,
        scrub_interval: Duration::from_secs(3600),
        ..small_options()
    };
    let (mut store, _) = open_with(dir.path(), options, StoreHooks::default());
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stats().scrub_passes < 1 {
        assert!(Instant::now() < deadline, "the first pass never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut rng = Rng(5);
    for point in 0..60 {
        let p = point_for(0, point, 1, &mut rng);
        put(&mut store, key(0, point), &p);
    }
    store.flush().unwrap();
    let bytes: u64 = store.tables().iter().map(|(_, t)| t.file_bytes()).sum();
    // Resting: nothing more happens on its own.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        store.stats().scrub_passes,
        1,
        "a pass ran without being asked"
    );
    assert!(store.scrub_soon());
    while store.stats().scrub_passes < 2 {
        assert!(Instant::now() < deadline, "the pass asked for did not run");
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = store.stats();
    assert_eq!(stats.scrub_pass_total_bytes, bytes);
    assert_eq!(stats.scrub_pass_done_bytes, bytes);
    assert_eq!(stats.scrub_corruptions, 0);
    store.close().unwrap();
    // Without a scrubber thread there is nothing to ask.
    let quiet = StoreOptions {
        scrub_bytes_per_second: 0,
        ..small_options()
    };
    let (store, _) = open_with(dir.path(), quiet, StoreHooks::default());
    assert!(!store.scrub_soon());
    store.close().unwrap();
}

/// Issue #23 item 5: the offline repair of a damaged table. Three generations of one
/// collection: every id in an older (merged) table, the even ids overwritten and one id in
/// six deleted in table T, ids below 200 overwritten again in a newer table N. One bit flips
/// in a vector unit of T and one in a data block of T. The repair keeps every point T's
/// verified parts hold (written again where T held the newest version), deletes the points
/// whose vectors are gone, deletes the points of the damaged block's range rather than serve
/// their older versions, reports each, takes T out (its file kept in lost+found), and leaves
/// a store that opens clean and answers as the model says for every other id.
#[test]
fn repair_keeps_what_verifies_and_reports_exactly_what_it_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let options = || StoreOptions {
        memtable_bytes: 4 << 20,
        table_bytes_target: 64 << 20,
        l0_compaction_trigger: 8,
        l0_stop: 16,
        compaction_bytes_per_second: 0,
        scrub_bytes_per_second: 0,
        ..StoreOptions::default()
    };
    let ids = 2000u64;
    // 64-byte vectors: 64 to a 4 KiB unit of the region.
    let value = |point: u64, version: u64| Point {
        vector: (0..64)
            .map(|i| (point as u8) ^ (version as u8 * 31) ^ i)
            .collect(),
        payload: format!("p{point} v{version}").into_bytes(),
    };
    let mut model: BTreeMap<u64, Point> = BTreeMap::new();
    {
        let (mut store, _) = open_with(dir.path(), options(), StoreHooks::default());
        for point in 0..ids {
            put(&mut store, key(0, point), &value(point, 1));
            model.insert(point, value(point, 1));
        }
        store.sync().unwrap();
        store.flush().unwrap();
        store.compact_all().unwrap();
        for point in 0..ids {
            if point % 2 == 0 {
                put(&mut store, key(0, point), &value(point, 2));
                model.insert(point, value(point, 2));
            } else if point % 6 == 1 {
                delete(&mut store, key(0, point));
                model.remove(&point);
            }
        }
        store.sync().unwrap();
        store.flush().unwrap();
        for point in 0..200 {
            put(&mut store, key(0, point), &value(point, 3));
            model.insert(point, value(point, 3));
        }
        store.sync().unwrap();
        store.flush().unwrap();
        store.close().unwrap();
    }
    // T: the table with the tombstones and 1,000 vectors.
    let tables_dir = dir.path().join("tables");
    let (t_path, t_number) = std::fs::read_dir(&tables_dir)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .find_map(|path| {
            let name = path.file_name()?.to_string_lossy().into_owned();
            let number = vortex_storage::sstable::table::parse_table_name(&name)?;
            let table = Table::open(&vortex_storage::PosixFiles::shared(), &path, number).ok()?;
            (table.footer().tombstones > 0 && table.footer().vector_count == 1000)
                .then_some((path, number))
        })
        .expect("table T");
    let region = Table::open(&vortex_storage::PosixFiles::shared(), &t_path, t_number)
        .unwrap()
        .region_points()
        .unwrap();
    let unit = 5usize;
    let in_unit: BTreeSet<u64> = region[unit * 64..(unit + 1) * 64].iter().copied().collect();
    let start = Table::open(&vortex_storage::PosixFiles::shared(), &t_path, t_number)
        .unwrap()
        .footer()
        .section_start(Section::Vectors);
    flip(&t_path, start + unit as u64 * 4096 + 100);
    flip(&t_path, 7 * 4096 + 100); // the eighth data block

    // A copy, for a repair that crashed after writing part of what it writes again.
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());

    let (mut store, _) = open_with(dir.path(), options(), StoreHooks::default());
    let repairs = store.repair().unwrap();
    assert_eq!(repairs.len(), 1, "{repairs:?}");
    let repair = &repairs[0];
    assert_eq!(repair.table, t_number);
    assert!(repair.removed, "{repair:?}");
    assert_eq!(repair.lost_ranges.len(), 1, "{repair:?}");
    assert!(repair.rewritten > 0 && repair.superseded > 0, "{repair:?}");
    let in_ranges = |point: u64| {
        repair
            .lost_ranges
            .iter()
            .any(|&(first, last)| (first..=last).contains(&point))
    };
    // The vectors lost: exactly the damaged unit's points (none below 200, which N holds).
    let expected_lost: Vec<u64> = in_unit
        .iter()
        .copied()
        .filter(|&point| point >= 200 && !in_ranges(point))
        .collect();
    assert!(!expected_lost.is_empty());
    assert_eq!(repair.lost_points, expected_lost);
    // The damaged block's range: every id in it without a newer version in N was deleted
    // (each has an older version in the merged table).
    let (first, last) = repair.lost_ranges[0];
    let expected_deleted: Vec<u64> = (first..=last).filter(|&point| point >= 200).collect();
    assert!(!expected_deleted.is_empty());
    assert_eq!(repair.deleted_older, expected_deleted);
    let deleted: BTreeSet<u64> = repair
        .lost_points
        .iter()
        .chain(&repair.deleted_older)
        .copied()
        .collect();
    let check = |store: &TestStore, context: &str| {
        for point in 0..ids {
            let got = store
                .get(&key(0, point))
                .unwrap_or_else(|e| panic!("{context}: get {point}: {e}"));
            let expected = if deleted.contains(&point) {
                None
            } else {
                model.get(&point)
            };
            assert_eq!(got.as_ref(), expected, "{context}: point {point}");
        }
    };
    check(&store, "after the repair");
    store.close().unwrap();
    assert!(dir
        .path()
        .join("lost+found")
        .join(table_name(t_number))
        .exists());

    let (mut store, report) = open_with(dir.path(), options(), StoreHooks::default());
    assert_eq!(report.quarantined, 0, "{report:?}");
    assert!(store.scrub().is_empty());
    check(&store, "after a restart");
    assert!(store.repair().unwrap().is_empty(), "nothing left to repair");
    store.close().unwrap();

    // The crashed repair: half of T's verified entries were written again (durably), then
    // the process died before the table was taken out. The next run finds those newer and
    // ends where one run ends.
    let salvage = Table::open(
        &vortex_storage::PosixFiles::shared(),
        &crashed.path().join("tables").join(table_name(t_number)),
        t_number,
    )
    .unwrap()
    .salvage();
    let (mut store, _) = open_with(crashed.path(), options(), StoreHooks::default());
    for entry in salvage
        .entries
        .iter()
        .filter(|e| e.key.point >= 200)
        .step_by(2)
    {
        match &entry.point {
            Some(point) => put(&mut store, entry.key, point),
            None => delete(&mut store, entry.key),
        };
    }
    store.sync().unwrap();
    drop(store); // no close: a crash
    let (mut store, _) = open_with(crashed.path(), options(), StoreHooks::default());
    let again = store.repair().unwrap();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].lost_points, repair.lost_points);
    assert_eq!(again[0].lost_ranges, repair.lost_ranges);
    assert_eq!(again[0].deleted_older, repair.deleted_older);
    assert_eq!(
        again[0].rewritten + again[0].superseded,
        repair.rewritten + repair.superseded
    );
    assert!(again[0].superseded > repair.superseded, "{again:?}");
    check(&store, "after a repair that had crashed part-way");
    store.close().unwrap();
}

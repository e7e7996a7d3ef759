//! The store on a file system that fails on purpose (`FaultEnv`, issue #23 item 11): every
//! file the store touches (WAL segments, MANIFEST, CURRENT, SSTables, lost+found) goes
//! through it. Each test makes operations fail (ENOSPC, EIO), fall short, lose their
//! `fsync`, or lose the power at every step of a flush and of a compaction, and then checks
//! the store against a model of what was acknowledged: nothing acknowledged is lost, nothing
//! deleted or overwritten comes back, and no table is left damaged.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use vortex_storage::store::{OpenReport, StoreHooks, StoreStats};
use vortex_storage::wal::WalOptions;
use vortex_storage::{Fault, FaultEnv, Key, Point, StorageError, Store, StoreOptions, Target};
use vortex_test_support::{test_seed, Rng};

type FaultStore = Store<FaultEnv>;

/// How long a test waits for a flush or a compaction to end (or fail).
const WAIT: Duration = Duration::from_secs(20);

const DIR: &str = "/leu";
const COLLECTION: u32 = 1;
/// Points are drawn from `0..IDS`, so that rounds overwrite and delete each other's.
const IDS: u64 = 120;

/// Small WAL segments (a flush retires several) and small tables (several per flush), and
/// no automatic compaction: the tests start each flush and compaction themselves.
fn options() -> StoreOptions {
    StoreOptions {
        wal: WalOptions {
            segment_bytes_target: 8 << 10,
            batch_bytes_max: 64 << 10,
            record_bytes_max: 2 << 10,
            ..WalOptions::default()
        },
        memtable_bytes: 32 << 10,
        table_bytes_target: 4 << 10,
        l0_compaction_trigger: 1000,
        l0_stop: 2000,
        compaction_bytes_per_second: 0,
        scrub_bytes_per_second: 0,
        background_threads: 1,
        ..StoreOptions::default()
    }
}

fn open_with(
    env: &FaultEnv,
    options: StoreOptions,
) -> Result<(FaultStore, OpenReport), StorageError> {
    Store::open(env.clone(), Path::new(DIR), options, StoreHooks::default())
}

fn open(env: &FaultEnv) -> (FaultStore, OpenReport) {
    open_with(env, options()).unwrap_or_else(|error| panic!("open: {error}"))
}

fn key(point: u64) -> Key {
    Key {
        collection: COLLECTION,
        point,
    }
}

/// A test's seed (printed), an empty file system, its random numbers and an empty model.
fn fresh() -> (u64, FaultEnv, Rng, Model) {
    let seed = test_seed();
    (seed, FaultEnv::direct(512), Rng(seed), Model::default())
}

/// Loses the power (or, given a snapshot, a copy's), restarts, and checks: no table damaged
/// and every acknowledged write there.
fn crash_and_check(env: &FaultEnv, options: StoreOptions, model: &Model, context: &str) {
    env.crash();
    let (store, report) = open_with(env, options)
        .unwrap_or_else(|error| panic!("{context}: the restart failed: {error}"));
    assert_eq!(report.quarantined, 0, "{context}: a table is damaged");
    check(&store, model, context);
}

/// What the store acknowledged: each id's last value (`None`: deleted).
#[derive(Debug, Default, Clone)]
struct Model(BTreeMap<u64, Option<Point>>);

fn point_for(id: u64, round: u64, rng: &mut Rng) -> Point {
    let vector = (0..64u64)
        .map(|i| (id as u8) ^ (round as u8).wrapping_mul(31) ^ i as u8)
        .collect();
    let mut payload = format!("p{id} r{round}").into_bytes();
    payload.resize(payload.len() + rng.below(120) as usize, b'.');
    Point { vector, payload }
}

/// `writes` puts and deletes of random ids, all acknowledged (synced) before it returns.
fn write_round(store: &mut FaultStore, model: &mut Model, rng: &mut Rng, round: u64, writes: u64) {
    let mut applied = Vec::new();
    for _ in 0..writes {
        let id = rng.below(IDS);
        let value = (rng.below(5) != 0).then(|| point_for(id, round, rng));
        loop {
            let result = match &value {
                Some(point) => store.put(key(id), &point.vector, &point.payload),
                None => store.delete(key(id)),
            };
            match result {
                Ok(_) => break,
                Err(StorageError::Throttled(_)) => {
                    store.poll(Some(Duration::from_millis(2))).unwrap();
                }
                Err(error) => panic!("round {round}: write of {id}: {error}"),
            }
        }
        applied.push((id, value));
    }
    store.sync().unwrap();
    model.0.extend(applied);
}

/// Every id reads as the model says, and a scan lists exactly the model's live points.
fn check(store: &FaultStore, model: &Model, context: &str) {
    for id in 0..IDS {
        let got = store
            .get(&key(id))
            .unwrap_or_else(|error| panic!("{context}: get {id}: {error}"));
        let want = model.0.get(&id).cloned().flatten();
        assert_eq!(got, want, "{context}: point {id}");
    }
    let mut scanned = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan(COLLECTION, after, 50).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        scanned.extend(page.into_iter().map(|(id, _)| id));
    }
    let live: Vec<u64> = model
        .0
        .iter()
        .filter(|(_, value)| value.is_some())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(scanned, live, "{context}: scan");
}

/// Loses the power after 0, 1, 2, … operations of the job `start` begins (after `prepare`
/// has written and acknowledged the data), until a run where the job ends with the power
/// still on. After each crash, the store opens with every acknowledged write and nothing
/// else, no table damaged, and takes writes and flushes again. With `crash_restarts`, the
/// restart after each crash is itself crashed at every step first. Returns the steps
/// counted.
fn crash_at_every_step(
    name: &str,
    crash_restarts: bool,
    prepare: impl Fn(&mut FaultStore, &mut Model, &mut Rng),
    start: impl Fn(&mut FaultStore) -> Result<(), StorageError>,
    ended: impl Fn(&StoreStats, &StoreStats) -> bool,
) -> u32 {
    let seed = test_seed();
    let mut restart_steps = 0;
    let model = std::cell::RefCell::new(Model::default());
    let steps = FaultEnv::crash_at_every_step(
        512,
        10_000,
        |env, step| {
            let mut rng = Rng(seed);
            let mut model = model.borrow_mut();
            *model = Model::default();
            let (mut store, _) = open(env);
            prepare(&mut store, &mut model, &mut rng);
            let result = store.run_losing_power(env, step, &start, &ended);
            if !env.is_powered_off() {
                result.unwrap_or_else(|error| panic!("{name}: with the power on: {error}"));
            }
        },
        |env, step, _| {
            let mut model = model.borrow_mut();
            let context = format!("{name}, power lost after {step} operations (seed {seed})");
            if crash_restarts {
                let steps = restart_crashes_at_every_step(env, &model, &context);
                restart_steps = restart_steps.max(steps);
            }
            let (mut store, report) = open_with(env, options())
                .unwrap_or_else(|error| panic!("{context}: the restart failed: {error}"));
            assert_eq!(report.quarantined, 0, "{context}: a table is damaged");
            check(&store, &model, &context);
            let mut rng = Rng(seed ^ 99);
            write_round(&mut store, &mut model, &mut rng, 99, 40);
            store
                .flush()
                .unwrap_or_else(|error| panic!("{context}: flush after: {error}"));
            check(
                &store,
                &model,
                &format!("{context}, then written and flushed"),
            );
        },
    );
    let restarts = if crash_restarts {
        format!(", and each restart at each of its steps (at most {restart_steps})")
    } else {
        String::new()
    };
    println!("{name}: the power was lost at each of {steps} steps{restarts} (seed {seed})");
    steps
}

/// On a copy of the crashed `env`, loses the power after 0, 1, 2, … operations of the
/// start (removing orphans, starting a segment, the MANIFEST's rollover), until a start ends
/// with the power on; after each, a start with the power on finds the model whole.
fn restart_crashes_at_every_step(env: &FaultEnv, model: &Model, context: &str) -> u32 {
    for step in 0..10_000 {
        let copy = env.snapshot();
        copy.inject(Fault::PowerOff { after: step });
        let opened = open_with(&copy, options());
        let finished = !copy.is_powered_off();
        if finished {
            opened
                .unwrap_or_else(|error| panic!("{context}: a restart with the power on: {error}"));
        } else {
            drop(opened);
        }
        copy.crash();
        let (store, report) = open_with(&copy, options()).unwrap_or_else(|error| {
            panic!("{context}, then the restart lost the power after {step} operations: {error}")
        });
        assert_eq!(
            report.quarantined, 0,
            "{context}, restart crashed at {step}"
        );
        check(
            &store,
            model,
            &format!("{context}, then the restart crashed at {step}"),
        );
        if finished {
            return step;
        }
    }
    panic!("{context}: the restart never ended with the power on");
}

#[test]
fn a_crash_at_any_step_of_a_flush_or_of_the_restart_after_it_loses_no_acknowledged_write() {
    let steps = crash_at_every_step(
        "flush",
        true,
        |store, model, rng| {
            write_round(store, model, rng, 1, 150);
            store.flush().unwrap();
            write_round(store, model, rng, 2, 150);
        },
        |store| store.flush_soon(),
        |before, now| now.flushes > before.flushes,
    );
    // Table creations, writes, syncs, the directory sync, the MANIFEST edit, the WAL's
    // checkpoint: a flush that took fewer steps did not do them all.
    assert!(
        steps >= 8,
        "a flush of several tables took only {steps} steps"
    );
}

#[test]
fn a_crash_at_any_step_of_a_compaction_loses_no_acknowledged_write() {
    let steps = crash_at_every_step(
        "compaction",
        false,
        |store, model, rng| {
            for round in 1..=3 {
                write_round(store, model, rng, round, 120);
                store.flush().unwrap();
            }
            write_round(store, model, rng, 4, 60);
        },
        |store| {
            assert!(store.compact_all_soon()?, "the compaction did not start");
            Ok(())
        },
        |before, now| now.compactions > before.compactions,
    );
    assert!(steps >= 6, "a compaction took only {steps} steps");
}

/// A flush whose table writes, syncs or directory sync fail does not publish: the WAL keeps
/// the data, the flush is retried into new files, and a crash at any point after loses
/// nothing.
fn flush_survives(fault: Fault, what: &str) {
    let (seed, env, mut rng, mut model) = fresh();
    let (mut store, _) = open(&env);
    write_round(&mut store, &mut model, &mut rng, 1, 150);
    env.inject(fault);
    let before = store.stats();
    store.flush_soon().unwrap();
    store
        .poll_until(WAIT, |now| now.background_errors > before.background_errors)
        .unwrap();
    assert_eq!(
        store.stats().flushes,
        before.flushes,
        "{what}: the failed flush published"
    );
    // Reads go on from the frozen MemTable.
    check(&store, &model, &format!("{what}: after the failure"));
    // Crash now: the WAL still holds every write.
    let crashed = env.snapshot();
    let context = format!("{what}: crashed after the failure (seed {seed})");
    crash_and_check(&crashed, options(), &model, &context);
    // The retry (a second after the failure) writes new files and publishes.
    store
        .flush()
        .unwrap_or_else(|error| panic!("{what}: the retried flush: {error}"));
    assert!(store.stats().flushes > before.flushes);
    check(&store, &model, &format!("{what}: after the retry"));
    drop(store);
    env.crash();
    let (store, report) = open(&env);
    assert_eq!(report.quarantined, 0);
    assert_eq!(
        report.orphans_removed, 0,
        "{what}: the failed table was left behind"
    );
    check(
        &store,
        &model,
        &format!("{what}: crashed after the retry (seed {seed})"),
    );
}

#[test]
fn a_table_write_that_fails_with_eio_is_retried_into_a_new_table() {
    flush_survives(
        Fault::Fail {
            target: Target::NewFileWrite,
            errno: libc::EIO,
            skip: 0,
        },
        "EIO on a table write",
    );
}

#[test]
fn a_table_whose_creation_fails_is_retried() {
    flush_survives(
        Fault::Fail {
            target: Target::NewFile,
            errno: libc::EIO,
            skip: 1,
        },
        "EIO creating the second table",
    );
}

#[test]
fn a_failed_table_fsync_is_never_retried_as_if_it_had_succeeded() {
    // The failed fsync loses the table's pages and a second fsync of that file would report
    // success (FaultEnv acts as Linux does): a store that synced again and published would
    // lose the flushed writes at the crash below, since the WAL was retired.
    flush_survives(
        Fault::Fail {
            target: Target::NewFileSync,
            errno: libc::EIO,
            skip: 0,
        },
        "EIO on a table fsync",
    );
}

#[test]
fn a_table_that_cannot_be_read_back_after_writing_is_not_published() {
    flush_survives(
        Fault::Fail {
            target: Target::Read,
            errno: libc::EIO,
            skip: 0,
        },
        "EIO reading a new table back",
    );
}

#[test]
fn a_failed_directory_sync_after_the_tables_is_retried() {
    flush_survives(
        Fault::Fail {
            target: Target::DirSync,
            errno: libc::EIO,
            skip: 0,
        },
        "EIO on the tables directory's fsync",
    );
}

#[test]
fn short_table_writes_are_continued_and_the_tables_verify() {
    let (seed, env, mut rng, mut model) = fresh();
    let (mut store, _) = open(&env);
    write_round(&mut store, &mut model, &mut rng, 1, 150);
    for bytes in [1, 100, 4095, 4097, 70_000] {
        env.inject(Fault::ShortNewFileWrite { bytes });
    }
    store.flush().unwrap();
    let before = store.stats();
    assert!(before.flushes > 0 && before.background_errors == 0);
    assert!(
        store.scrub().is_empty(),
        "a table written in short writes is damaged"
    );
    drop(store);
    crash_and_check(
        &env,
        options(),
        &model,
        &format!("short writes (seed {seed})"),
    );
}

#[test]
fn a_table_that_cannot_be_read_at_start_is_fenced_and_the_rest_is_served() {
    let (seed, env, mut rng, mut model) = fresh();
    let (mut store, _) = open(&env);
    write_round(&mut store, &mut model, &mut rng, 1, 150);
    store.flush().unwrap();
    drop(store);
    let tables = env.file_names(&Path::new(DIR).join("tables"));
    assert!(tables.len() >= 2, "the flush wrote {tables:?}");
    // The start reads CURRENT, the MANIFEST and the WAL's segments, then maps the tables:
    // the first table's read fails with EIO.
    let segments = env
        .file_names(&Path::new(DIR).join("wal"))
        .iter()
        .filter(|name| name.ends_with(".log"))
        .count();
    env.inject(Fault::Fail {
        target: Target::Read,
        errno: libc::EIO,
        skip: 2 + segments as u32,
    });
    let (store, report) = open(&env);
    assert_eq!(report.quarantined, 1, "one table fenced at start");
    let mut fenced = 0;
    for id in 0..IDS {
        match store.get(&key(id)) {
            Ok(got) => assert_eq!(got, model.0.get(&id).cloned().flatten(), "point {id}"),
            Err(StorageError::Quarantined { reason, .. }) => {
                assert!(reason.contains("Input/output error"), "{reason}");
                fenced += 1;
            }
            Err(error) => panic!("get {id}: {error}"),
        }
    }
    assert!(
        fenced > 0 && fenced < IDS,
        "{fenced} of {IDS} ids fenced (seed {seed})"
    );
}

#[test]
fn a_disk_too_full_for_a_flush_refuses_writes_with_no_space_serves_reads_and_recovers() {
    let seed = test_seed();
    let env = FaultEnv::direct(512);
    let mut rng = Rng(seed);
    let mut model = Model::default();
    // Small WAL segments, so that the WAL's bound is small; a MemTable that holds what the
    // WAL may.
    let options = StoreOptions {
        wal: WalOptions {
            segment_bytes_target: 8 << 10,
            batch_bytes_max: 64 << 10,
            record_bytes_max: 2 << 10,
            ..WalOptions::default()
        },
        memtable_bytes: 128 << 10,
        wal_bytes_max: 88 << 10,
        ..options()
    };
    let (mut store, _) = open_with(&env, options.clone()).unwrap();
    write_round(&mut store, &mut model, &mut rng, 1, 100);
    store.flush().unwrap();
    // 72 KiB of acknowledged writes wait in the MemTable and the WAL.
    let mut round = 2;
    while store.stats().wal_live_bytes < 72 << 10 {
        write_round(&mut store, &mut model, &mut rng, round, 10);
        round += 1;
    }
    // Room for the WAL up to its bound, not for the tables of those writes.
    env.set_free_bytes(40 << 10);
    let before = store.stats();
    store.flush_soon().unwrap();
    store
        .poll_until(WAIT, |now| now.background_errors > before.background_errors)
        .unwrap();
    check(
        &store,
        &model,
        "reads after the flush failed on a full disk",
    );
    let mut refused = None;
    for attempt in 0..2_000u64 {
        let id = rng.below(IDS);
        let point = point_for(id, round, &mut rng);
        match store.put(key(id), &point.vector, &point.payload) {
            Ok(_) => {
                store.sync().unwrap();
                model.0.insert(id, Some(point));
            }
            Err(error) => {
                refused = Some((attempt, error));
                break;
            }
        }
    }
    let Some((attempt, error)) = refused else {
        panic!("2,000 writes on a full disk were all taken");
    };
    // Before: THROTTLED, as if a retry soon would help.
    let StorageError::NoSpace { path, .. } = &error else {
        panic!("write {attempt} on a full disk: {error}");
    };
    assert!(
        path.starts_with(Path::new(DIR).join("tables")),
        "the refusal names the table the flush could not write: {error}"
    );
    assert!(store.wal().read_only().is_none(), "the WAL itself had room");
    check(&store, &model, "reads on a full disk");
    // Space frees: the flush's retry (every second) goes through and writes are taken.
    env.set_full(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let id = rng.below(IDS);
        let point = point_for(id, round + 1, &mut rng);
        match store.put(key(id), &point.vector, &point.payload) {
            Ok(_) => {
                store.sync().unwrap();
                model.0.insert(id, Some(point));
                break;
            }
            Err(StorageError::NoSpace { .. } | StorageError::Throttled(_)) => {
                assert!(
                    Instant::now() < deadline,
                    "writes were not taken once space freed"
                );
                store.poll(Some(Duration::from_millis(10))).unwrap();
            }
            Err(error) => panic!("a write once space freed: {error}"),
        }
    }
    write_round(&mut store, &mut model, &mut rng, round + 2, 100);
    store.flush().unwrap();
    check(&store, &model, "after space freed");
    drop(store);
    let context = format!("crashed after the full disk (seed {seed})");
    crash_and_check(&env, options, &model, &context);
}

#[test]
fn a_failed_manifest_sync_at_a_flush_stops_writes_and_a_restart_keeps_every_write() {
    let (seed, env, mut rng, mut model) = fresh();
    let (mut store, _) = open(&env);
    write_round(&mut store, &mut model, &mut rng, 1, 150);
    store.flush().unwrap();
    write_round(&mut store, &mut model, &mut rng, 2, 150);
    // The flush's MANIFEST edit is written, then its fsync fails: the edit may or may not be
    // on disk, so the WAL turns read-only instead of going on either way.
    env.inject(Fault::Fail {
        target: Target::FileSync,
        errno: libc::EIO,
        skip: 0,
    });
    let before = store.stats();
    store.flush_soon().unwrap();
    let polled = store.poll_until(WAIT, |now| now.flushes > before.flushes);
    assert!(polled.is_err(), "the failed MANIFEST sync went unnoticed");
    assert!(store.wal().read_only().is_some());
    let point = point_for(1, 3, &mut rng);
    assert!(store.put(key(1), &point.vector, &point.payload).is_err());
    check(&store, &model, "reads after the failed MANIFEST sync");
    drop(store);
    // Either way the restart finds every write: with the edit (the process's view) and
    // without it (the crash's).
    let (store, _) = open(&env.snapshot());
    check(
        &store,
        &model,
        &format!("restarted with the edit (seed {seed})"),
    );
    drop(store);
    let context = format!("crashed without the edit (seed {seed})");
    crash_and_check(&env, options(), &model, &context);
}

#[test]
fn a_compaction_whose_write_fails_publishes_nothing_and_loses_nothing() {
    let (seed, env, mut rng, mut model) = fresh();
    let (mut store, _) = open(&env);
    for round in 1..=3 {
        write_round(&mut store, &mut model, &mut rng, round, 120);
        store.flush().unwrap();
    }
    let tables = store.tables().len();
    env.inject(Fault::Fail {
        target: Target::NewFileWrite,
        errno: libc::EIO,
        skip: 0,
    });
    let before = store.stats();
    assert!(store.compact_all_soon().unwrap());
    store
        .poll_until(WAIT, |now| now.background_errors > before.background_errors)
        .unwrap();
    assert_eq!(store.stats().compactions, before.compactions);
    assert_eq!(
        store.tables().len(),
        tables,
        "the failed compaction changed the tables"
    );
    check(&store, &model, "after the failed compaction");
    let crashed = env.snapshot();
    let context = format!("crashed after the failed compaction (seed {seed})");
    crash_and_check(&crashed, options(), &model, &context);
    store.compact_all().unwrap();
    assert_eq!(store.stats().compactions, before.compactions + 1);
    check(&store, &model, "after the compaction ran again");
    drop(store);
    let context = format!("crashed after the compaction (seed {seed})");
    crash_and_check(&env, options(), &model, &context);
}

//! Side-car index builds on a file system that fails on purpose (`FaultEnv`, issue #23 item
//! 11). The store and its side-cars share one environment, as in the shard (the SSTables,
//! the MANIFEST, the WAL and the `.hnsw` files all go through it), and the flush builds each
//! table's graph before it publishes. The power is lost at every step of a flush with its
//! side-car builds, and of a compaction with its, and a side-car's write, fsync and rename
//! fail: each time, the restart serves every acknowledged point, and every segment has a
//! graph that finds each of its vectors (a graph whose file was lost or cut is rebuilt).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vortex_shard::sidecar::SideCars;
use vortex_storage::store::StoreStats;
use vortex_storage::wal::WalOptions;
use vortex_storage::{
    CompactionHook, Env, Fault, FaultEnv, Key, StorageError, Store, StoreHooks, StoreOptions,
    Target,
};
use vortex_test_support::{test_seed, Rng};
use vortex_vbp::message::{CollectionSpec, Metric, VectorType};

const COLLECTION: u32 = 1;
const DIM: usize = 16;
/// Ids are drawn from `0..IDS`: rounds overwrite each other's points.
const IDS: u64 = 400;

fn spec() -> CollectionSpec {
    CollectionSpec {
        name: "docs".into(),
        dimension: DIM as u32,
        metric: Metric::L2,
        m: 8,
        ef_construction: 32,
        vector_type: VectorType::F32,
    }
}

/// Several tables per flush, small WAL segments, no automatic compaction.
fn options() -> StoreOptions {
    StoreOptions {
        wal: WalOptions {
            segment_bytes_target: 16 << 10,
            batch_bytes_max: 64 << 10,
            record_bytes_max: 2 << 10,
            ..WalOptions::default()
        },
        memtable_bytes: 256 << 10,
        table_bytes_target: 16 << 10,
        l0_compaction_trigger: 1000,
        l0_stop: 2000,
        compaction_bytes_per_second: 0,
        scrub_bytes_per_second: 0,
        background_threads: 1,
        ..StoreOptions::default()
    }
}

type FaultStore = Store<FaultEnv>;

/// How long a test waits for a flush or a compaction to end (or fail).
const WAIT: Duration = Duration::from_secs(30);

/// Opens the store with its side-cars on `env`: graphs missing or failing their checks are
/// built again before it returns. Returns how many were.
fn open(env: &FaultEnv) -> Result<(FaultStore, Arc<SideCars>, usize), String> {
    let sidecars = Arc::new(
        SideCars::new(env.files(), Path::new("/leu/indexes"), 1).map_err(|e| e.to_string())?,
    );
    sidecars.set_spec(COLLECTION, Some(spec()));
    let hooks = StoreHooks {
        compaction: Arc::clone(&sidecars) as Arc<dyn CompactionHook>,
        ..StoreHooks::default()
    };
    let (store, _) = Store::open(env.clone(), Path::new("/leu/store"), options(), hooks)
        .map_err(|e| e.to_string())?;
    let tables: Vec<_> = store.tables().into_iter().map(|(_, t)| t).collect();
    let rebuilt = sidecars.load(&tables).map_err(|e| e.to_string())?;
    Ok((store, sidecars, rebuilt))
}

fn key(point: u64) -> Key {
    Key {
        collection: COLLECTION,
        point,
    }
}

fn vector(id: u64, round: u64) -> Vec<f32> {
    let mut rng = Rng(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round);
    (0..DIM)
        .map(|_| rng.below(1 << 20) as f32 / 1024.0)
        .collect()
}

fn bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The acknowledged vector of each id.
type Model = BTreeMap<u64, Vec<f32>>;

/// `writes` upserts of random ids, acknowledged (synced) before it returns.
fn write_round(store: &mut FaultStore, model: &mut Model, rng: &mut Rng, round: u64, writes: u64) {
    let mut applied = Vec::new();
    for _ in 0..writes {
        let id = rng.below(IDS);
        let vector = vector(id, round);
        loop {
            match store.put(key(id), &bytes(&vector), &[]) {
                Ok(_) => break,
                Err(StorageError::Throttled(_)) => {
                    store.poll(Some(Duration::from_millis(2))).unwrap();
                }
                Err(error) => panic!("round {round}: put {id}: {error}"),
            }
        }
        applied.push((id, vector));
    }
    store.sync().unwrap();
    model.extend(applied);
}

/// Every acknowledged point reads back exact; every live table has its graph, over all of
/// its vectors, and the graph finds each of them at distance 0.
fn check(store: &FaultStore, sidecars: &SideCars, model: &Model, context: &str) {
    for (&id, want) in model {
        let got = store
            .get(&key(id))
            .unwrap_or_else(|e| panic!("{context}: get {id}: {e}"))
            .unwrap_or_else(|| panic!("{context}: point {id} lost"));
        assert_eq!(got.vector, bytes(want), "{context}: point {id}");
    }
    for (_, table) in store.tables() {
        assert!(
            table.quarantined().is_none(),
            "{context}: table {} fenced",
            table.number()
        );
        let segment = sidecars
            .index(table.number())
            .unwrap_or_else(|| panic!("{context}: table {} has no segment", table.number()));
        let graph = segment
            .graph
            .as_ref()
            .unwrap_or_else(|| panic!("{context}: table {} has no graph", table.number()));
        assert_eq!(graph.len() as u64, table.footer().vector_count, "{context}");
        let stride = table.footer().stride as usize;
        let region = table.vector_region();
        let points = table.region_points().unwrap();
        for (slot, point) in points.iter().enumerate() {
            let row: Vec<f32> = region[slot * stride..slot * stride + DIM * 4]
                .chunks_exact(4)
                .map(|raw| f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
                .collect();
            let hits = graph.search(&row, 1, 64).unwrap();
            assert!(
                hits.first().is_some_and(|hit| hit.distance == 0.0),
                "{context}: table {}'s graph does not find point {point}: {hits:?}",
                table.number()
            );
        }
    }
}

/// Loses the power after 0, 1, 2, … operations of the job `start` begins, until one run
/// ends with the power on; after each crash the restart (which rebuilds lost graphs) is
/// checked. Returns the steps and the graphs rebuilt over all restarts.
fn crash_at_every_step(
    name: &str,
    prepare: impl Fn(&mut FaultStore, &mut Model, &mut Rng),
    start: impl Fn(&mut FaultStore) -> Result<(), StorageError>,
    ended: impl Fn(&StoreStats, &StoreStats) -> bool,
) -> (u32, usize) {
    let seed = test_seed();
    let mut rebuilt_total = 0;
    let model = std::cell::RefCell::new(Model::new());
    let steps = FaultEnv::crash_at_every_step(
        512,
        10_000,
        |env, step| {
            let mut rng = Rng(seed);
            let mut model = model.borrow_mut();
            model.clear();
            let (mut store, _sidecars, _) = open(env).unwrap();
            prepare(&mut store, &mut model, &mut rng);
            let result = store.run_losing_power(env, step, &start, &ended);
            if !env.is_powered_off() {
                result.unwrap_or_else(|error| panic!("{name}: with the power on: {error}"));
            }
        },
        |env, step, _| {
            let context = format!("{name}, power lost after {step} operations (seed {seed})");
            let (store, sidecars, rebuilt) =
                open(env).unwrap_or_else(|error| panic!("{context}: the restart failed: {error}"));
            rebuilt_total += rebuilt;
            check(&store, &sidecars, &model.borrow(), &context);
        },
    );
    println!(
        "{name}: the power was lost at each of {steps} steps; the restarts rebuilt \
         {rebuilt_total} graphs (seed {seed})"
    );
    (steps, rebuilt_total)
}

#[test]
fn a_crash_at_any_step_of_a_flush_and_its_graph_builds_loses_nothing() {
    let (steps, rebuilt) = crash_at_every_step(
        "flush with side-car builds",
        |store, model, rng| {
            write_round(store, model, rng, 1, 300);
            store.flush().unwrap();
            write_round(store, model, rng, 2, 300);
        },
        |store| store.flush_soon(),
        |before, now| now.flushes > before.flushes,
    );
    // Each table: its file (create, write, sync), its side-car (create, write, sync,
    // rename, directory sync); then the table directory's sync and the MANIFEST edit.
    assert!(
        steps >= 10,
        "a flush with its graphs took only {steps} steps"
    );
    // A graph is durable (file and directory entry synced) before its table is published,
    // so no crash leaves a live table without its graph; one before the publish leaves a
    // side-car of a table that never became live, removed at start.
    assert_eq!(rebuilt, 0, "a crash lost the graph of a live table");
}

#[test]
fn a_crash_at_any_step_of_a_compaction_and_its_graph_builds_loses_nothing() {
    let (steps, rebuilt) = crash_at_every_step(
        "compaction with side-car builds",
        |store, model, rng| {
            for round in 1..=3 {
                write_round(store, model, rng, round, 250);
                store.flush().unwrap();
            }
        },
        |store| {
            assert!(store.compact_all_soon()?, "the compaction did not start");
            Ok(())
        },
        |before, now| now.compactions > before.compactions,
    );
    assert!(
        steps >= 10,
        "a compaction with its graphs took only {steps} steps"
    );
    assert_eq!(rebuilt, 0, "a crash lost the graph of a live table");
}

/// A flush whose side-car write fails as `fault` says publishes nothing (the WAL keeps
/// every point, reads go on), and its retry builds and saves the graph.
fn side_car_failure_is_retried(fault: Fault, what: &str) {
    let seed = test_seed();
    let env = FaultEnv::direct(512);
    let mut rng = Rng(seed);
    let mut model = Model::new();
    let (mut store, sidecars, _) = open(&env).unwrap();
    write_round(&mut store, &mut model, &mut rng, 1, 300);
    env.inject(fault);
    let before = store.stats();
    store.flush_soon().unwrap();
    store
        .poll_until(WAIT, |now| now.background_errors > before.background_errors)
        .unwrap();
    assert_eq!(store.stats().flushes, before.flushes, "{what}: published");
    assert!(
        store.tables().is_empty(),
        "{what}: a table went live without its graph"
    );
    let crashed = env.snapshot();
    store
        .flush()
        .unwrap_or_else(|error| panic!("{what}: the retry: {error}"));
    let context = format!("{what}, retried (seed {seed})");
    check(&store, &sidecars, &model, &context);
    drop(store);
    drop(sidecars);
    // What the failure left on disk: the restart finds every point (from the WAL).
    crashed.crash();
    let (store, sidecars, _) = open(&crashed).unwrap();
    check(
        &store,
        &sidecars,
        &model,
        &format!("{what}, crashed before the retry"),
    );
    drop(store);
    drop(sidecars);
    env.crash();
    let (store, sidecars, rebuilt) = open(&env).unwrap();
    assert_eq!(
        rebuilt, 0,
        "{what}: the retried flush's graphs were not durable"
    );
    check(
        &store,
        &sidecars,
        &model,
        &format!("{what}, crashed after the retry"),
    );
}

#[test]
fn a_side_car_write_that_fails_with_enospc_holds_the_flush_back_until_it_succeeds() {
    // Write faults count table writes too: skip the table's.
    side_car_failure_is_retried(
        Fault::Fail {
            target: Target::NewFileWrite,
            errno: libc::ENOSPC,
            skip: 1,
        },
        "ENOSPC on a side-car write",
    );
}

#[test]
fn a_side_car_whose_fsync_fails_is_never_trusted() {
    side_car_failure_is_retried(
        Fault::Fail {
            target: Target::NewFileSync,
            errno: libc::EIO,
            skip: 1,
        },
        "EIO on a side-car fsync",
    );
}

#[test]
fn a_side_car_whose_rename_fails_is_retried() {
    side_car_failure_is_retried(
        Fault::Fail {
            target: Target::Rename,
            errno: libc::EIO,
            skip: 0,
        },
        "EIO renaming a side-car into place",
    );
}

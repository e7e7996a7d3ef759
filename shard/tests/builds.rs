//! Index builds that use the idle cores and can be stopped: a close during a long merge
//! cancels its graph build instead of waiting for it, and loses nothing (the merge is
//! abandoned; its inputs and the WAL still hold every point).

use vortex_shard::{SearchRequest, Shard, ShardOptions};
use vortex_vbp::message::{CollectionSpec, Metric, VectorType};

const DIM: usize = 48;
const SEED: u64 = 0x0B0D_1E5E_ED5E_ED00;

/// A deterministic vector for `id` (SplitMix64 per component).
fn vector(id: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|d| {
            let mut z = SEED ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (d << 48);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn upsert(shard: &mut Shard, ids: std::ops::Range<u64>) {
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(500) {
        let vectors: Vec<f32> = chunk.iter().flat_map(|&id| vector(id)).collect();
        let sequence = shard.upsert("docs", chunk, &vectors, &[]).unwrap();
        while shard
            .poll(Some(std::time::Duration::from_millis(1)))
            .unwrap()
            < sequence
        {}
    }
}

fn finds_itself(shard: &Shard, id: u64) -> bool {
    let query = vector(id);
    shard
        .search(&SearchRequest {
            collection: "docs",
            vector: &query,
            k: 1,
            ef: 64,
            filter: None,
            with_payload: false,
        })
        .unwrap()
        .first()
        .is_some_and(|hit| hit.id == id)
}

/// Options under which flushed segments stay apart until a merge is asked for.
fn apart() -> ShardOptions {
    let mut options = ShardOptions::default();
    options.store.l0_compaction_trigger = 8;
    options
}

/// The `docs` collection of these tests (`DIM`-dimensional, L2).
fn docs(m: u16, ef_construction: u16) -> CollectionSpec {
    CollectionSpec {
        name: "docs".into(),
        dimension: DIM as u32,
        metric: Metric::L2,
        m,
        ef_construction,
        vector_type: VectorType::F32,
    }
}

#[test]
fn a_close_during_a_merge_cancels_its_build_and_loses_nothing() {
    eprintln!("seed {SEED:#x}");
    let dir = tempfile::tempdir().unwrap();
    // One build thread: the merge below takes seconds, far longer than the close needs.
    // The two flushed segments stay apart until the merge asked for below.
    let options = || ShardOptions {
        index_build_threads: 1,
        ..apart()
    };
    let (mut shard, _) = Shard::open(dir.path(), options()).unwrap();
    shard.create_collection(docs(24, 300)).unwrap();
    // Segments of 12,000 points (the MemTable flushes on its own too), then a merge of all
    // in the background (its graph is seeded from the largest and inserts the others).
    upsert(&mut shard, 0..6_000);
    shard.flush().unwrap();
    upsert(&mut shard, 6_000..12_000);
    shard.flush().unwrap();
    shard.wait_idle().unwrap();
    assert!(shard.stats().segments >= 2);
    assert!(shard.compact_all_soon().unwrap(), "the merge started");
    // The close abandons the merge wherever it is: writing its table (the store stops it)
    // or building its graph (the shard cancels it). Either way it does not wait for it.
    let started = std::time::Instant::now();
    let report = shard.close().unwrap();
    let took = started.elapsed();
    assert!(report.builds_cancelled <= 1, "{report:?}");
    assert!(
        took < std::time::Duration::from_secs(2),
        "the close waited {took:?} for the merge"
    );

    let (mut shard, _) = Shard::open(dir.path(), options()).unwrap();
    assert_eq!(shard.describe_collection("docs").unwrap().points, 12_000);
    for id in (0..12_000).step_by(997) {
        assert!(finds_itself(&shard, id), "point {id}");
    }
    // The merge was installed before its graph was built (or runs again, if the close came
    // while it wrote its table): to the end, with every point, and its graph after it.
    shard.compact_all().unwrap();
    shard.wait_idle().unwrap();
    assert_eq!(shard.stats().segments, 1);
    assert_eq!(shard.stats().indexes, 1);
    assert_eq!(shard.describe_collection("docs").unwrap().points, 12_000);
    for id in (0..12_000).step_by(997) {
        assert!(finds_itself(&shard, id), "point {id} after the merge");
    }
    assert_eq!(shard.close().unwrap().builds_cancelled, 0);
}

/// A merge does not wait for its graph either (issue #23 item 1): with the builds held, a
/// merge of two segments installs its table at once (one segment, no graph yet, searched
/// exactly), and a crash before the graph is built keeps the merge: the restart has the one
/// merged table, finds every point, and builds its graph in the background. Before, a merge
/// built its graph before it installed, and a kill during that build threw the merge away
/// too.
#[test]
fn a_merge_is_installed_before_its_graph_and_a_crash_during_the_build_keeps_it() {
    eprintln!("seed {SEED:#x}");
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), apart()).unwrap();
    shard.create_collection(docs(12, 64)).unwrap();
    upsert(&mut shard, 0..2_000);
    shard.flush().unwrap();
    upsert(&mut shard, 2_000..4_000);
    shard.flush().unwrap();
    shard.wait_idle().unwrap();
    assert_eq!(shard.stats().segments, 2);
    assert_eq!(shard.stats().indexes, 2);
    shard.hold_index_builds(true);
    shard.compact_all().unwrap(); // returns once installed: the build is held
    let stats = shard.stats();
    assert_eq!(stats.segments, 1, "{stats:?}");
    assert_eq!(
        stats.indexes, 0,
        "the merged table has no graph yet: {stats:?}"
    );
    assert_eq!(stats.index_build_backlog, 4_000);
    for id in (0..4_000).step_by(97) {
        assert!(finds_itself(&shard, id), "point {id}");
    }
    drop(shard); // a crash before the build

    let (mut shard, report) = Shard::open(dir.path(), apart()).unwrap();
    assert_eq!(report.replayed, 0, "{report:?}");
    assert_eq!(shard.stats().segments, 1, "the merge was kept");
    assert_eq!(report.indexes_rebuilt, 1, "{report:?}");
    assert_eq!(shard.describe_collection("docs").unwrap().points, 4_000);
    for id in (0..4_000).step_by(97) {
        assert!(finds_itself(&shard, id), "point {id} after the restart");
    }
    shard.wait_idle().unwrap();
    assert_eq!(shard.stats().indexes, 1);
    for id in (0..4_000).step_by(97) {
        assert!(finds_itself(&shard, id), "point {id} with the graph");
    }
    shard.close().unwrap();
}

/// A flush does not wait for its graph (issue #23 item 1): with the builds held, the flushed
/// table is published at once, the WAL is checkpointed (a crash then replays nothing), and
/// searches answer exactly from the table's rows. A restart finds the table without its
/// side-car, opens without building it, searches it exactly, and builds it in the
/// background.
#[test]
fn a_flush_is_published_and_retires_the_wal_before_its_graph_is_built() {
    eprintln!("seed {SEED:#x}");
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(dir.path(), apart()).unwrap();
    shard.create_collection(docs(12, 64)).unwrap();
    shard.hold_index_builds(true);
    let count = 3_000u64;
    upsert(&mut shard, 0..count);
    shard.flush().unwrap(); // returns once published: the build is held
    let stats = shard.stats();
    assert_eq!(stats.fresh_points, 0, "the MemTable was flushed");
    assert_eq!(stats.segments, 1);
    assert_eq!(stats.indexes, 0, "no graph yet");
    assert_eq!(stats.index_build_backlog, count as usize);
    let exact = |shard: &Shard| {
        for id in (0..count).step_by(101) {
            assert!(finds_itself(shard, id), "point {id}");
        }
    };
    exact(&shard);
    // A crash now (no close): the WAL was checkpointed by the flush.
    drop(shard);
    let (mut shard, report) = Shard::open(dir.path(), apart()).unwrap();
    assert_eq!(report.replayed, 0, "the flush retired the WAL: {report:?}");
    assert_eq!(report.indexes_rebuilt, 1, "{report:?}");
    assert_eq!(shard.describe_collection("docs").unwrap().points, count);
    exact(&shard);
    // The build runs in the background; once it is done the table has its graph.
    shard.wait_idle().unwrap();
    let stats = shard.stats();
    assert_eq!(stats.indexes, 1, "{stats:?}");
    assert_eq!(stats.index_build_backlog, 0);
    exact(&shard);
    shard.close().unwrap();
    let (_, report) = Shard::open(dir.path(), apart()).unwrap();
    assert_eq!(
        report.indexes_rebuilt, 0,
        "the background build saved its side-car"
    );
}

/// The side-car builder thread does not share its LEU's core: a shard opened on a pinned
/// thread (as an LEU opens its own) starts it unpinned and at the store's background
/// priority, like the store's workers. It inherited the LEU's one CPU and a normal priority
/// before, and a write's p99 tripled on two cores.
#[test]
fn the_side_car_builder_leaves_its_leu_s_core_and_runs_below_it() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().unwrap();
    let seen = std::thread::spawn(move || {
        vortex_io::affinity::pin_current_thread(0).unwrap();
        let mut options = ShardOptions::default();
        // A nice value no other test's shard uses: tests in this binary run side by side,
        // and their builder threads (nice 0) come and go while this one looks.
        options.store.background_nice = 13;
        let (shard, _) = Shard::open(dir.path(), options).unwrap();
        // The builder thread sets itself up first thing; give it a moment.
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen = sidecar_threads();
            if let Some(found) = seen
                .iter()
                .find(|(allowed, nice)| *nice == 13 && (cpus == 1 || *allowed > 1))
            {
                return *found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(shard);
        panic!("no builder thread left its LEU's core at nice 13: (CPUs allowed, nice) {seen:?}");
    })
    .join()
    .unwrap();
    eprintln!("side-car builder: {seen:?} (CPUs allowed, nice) on a {cpus}-CPU machine");
}

/// The side-car builder threads of this process now, as (CPUs allowed, nice value); a
/// thread that ends while it is read is left out.
fn sidecar_threads() -> Vec<(usize, i32)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_string_lossy().parse().ok()?;
            if vortex_io::affinity::thread_name(tid).ok()? != "vortex-sidecar" {
                return None;
            }
            let allowed = vortex_io::affinity::allowed_cpus_of_thread(tid).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
            // Field 19 is the nice value; fields start after the parenthesised name.
            let after = stat.get(stat.rfind(')')? + 2..)?;
            let nice = after.split_whitespace().nth(16)?.parse().ok()?;
            Some((allowed.len(), nice))
        })
        .collect()
}

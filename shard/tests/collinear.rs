//! Points on a line: HNSW's neighbour heuristic keeps about two links per node there, so a
//! graph whose chain breaks (in a build or in a seeded merge) strands the greedy walk. Every
//! point must find itself first, after flushes and after merging the segments into one.

use vortex_shard::{SearchRequest, Shard, ShardOptions};
use vortex_vbp::message::{CollectionSpec, Metric, VectorType};

const DIM: usize = 8;

fn vector(id: u64) -> Vec<f32> {
    (0..DIM).map(|d| id as f32 + d as f32 * 0.001).collect()
}

fn misses(shard: &Shard, count: u64) -> Vec<(u64, u64)> {
    let mut wrong = Vec::new();
    for id in 0..count {
        let query = vector(id);
        let hits = shard
            .search(&SearchRequest {
                collection: "line",
                vector: &query,
                k: 5,
                ef: 0,
                filter: None,
                with_payload: false,
            })
            .unwrap();
        if hits.first().map(|h| h.id) != Some(id) {
            wrong.push((id, hits.first().map_or(u64::MAX, |h| h.id)));
        }
    }
    wrong
}

/// A shard (in `dir`) holding the points `0..count` of the line, written in batches of
/// `batch` through a MemTable of `memtable` entries, with `build_threads` per graph build.
fn loaded(
    dir: &std::path::Path,
    batch: u64,
    memtable: usize,
    count: u64,
    build_threads: usize,
) -> Shard {
    let mut options = ShardOptions {
        index_build_threads: build_threads,
        ..ShardOptions::default()
    };
    options.store.memtable_entries_max = memtable;
    let (mut shard, _) = Shard::open(dir, options).unwrap();
    shard
        .create_collection(CollectionSpec {
            name: "line".into(),
            dimension: DIM as u32,
            metric: Metric::L2,
            m: 8,
            ef_construction: 64,
            vector_type: VectorType::F32,
        })
        .unwrap();
    let mut start = 0;
    while start < count {
        let ids: Vec<u64> = (start..(start + batch).min(count)).collect();
        let vectors: Vec<f32> = ids.iter().flat_map(|&id| vector(id)).collect();
        while let Err(e) = shard.upsert("line", &ids, &vectors, &[]) {
            assert!(e.is_throttled(), "{e}");
            shard
                .poll(Some(std::time::Duration::from_millis(5)))
                .unwrap();
        }
        shard.sync().unwrap();
        start += batch;
    }
    shard.flush().unwrap();
    shard.wait_idle().unwrap();
    shard
}

fn run(batch: u64, memtable: usize, count: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut shard = loaded(dir.path(), batch, memtable, count, 1);
    let before = misses(&shard, count);
    shard.compact_all().unwrap();
    shard.wait_idle().unwrap();
    let segments = shard.stats().segments;
    let after = misses(&shard, count);
    println!(
        "batch {batch} memtable {memtable}: {} segments; misses before merge {:?}, after {:?}",
        segments,
        &before[..before.len().min(10)],
        &after[..after.len().min(10)]
    );
    assert!(before.is_empty() && after.is_empty());
}

#[test]
fn every_point_on_a_line_finds_itself_after_flushes_and_a_merge() {
    run(100, 200, 3000);
    run(100, 500, 3000);
    run(37, 300, 3000);
}

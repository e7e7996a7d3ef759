//! Node graphs saved by the index tier: a restarted tier publishes them before its first
//! look, so that a search walks one graph at once (no build), and answers as exact search
//! does; a graph whose files were damaged, or whose collection was dropped, is not used but
//! removed, and the tier builds a new one; half-written saves are cleaned away.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vortex_shard::tier::coverage;
use vortex_shard::{search_node, IndexTier, SearchRequest, Shard, ShardOptions, ShardView};
use vortex_test_support::{test_seed, Rng};
use vortex_vbp::message::{CollectionSpec, Metric, VectorType};

const DIMENSION: usize = 8;
const COLLECTION: &str = "c";

fn spec(vector_type: VectorType) -> CollectionSpec {
    CollectionSpec {
        name: COLLECTION.into(),
        dimension: DIMENSION as u32,
        metric: Metric::L2,
        m: 8,
        ef_construction: 64,
        vector_type,
    }
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum()
}

/// Waits (a minute at most) for `done`.
fn wait(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "waited a minute for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The saved graph's directory under `tier_dir` (one collection: the only entry).
fn saved_dir(tier_dir: &Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(tier_dir)
        .ok()?
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().contains('.'))
        .map(|e| e.path())
}

#[test]
fn saved_node_graphs_are_searched_after_a_restart_and_damaged_ones_rebuilt() {
    saved_graphs_of(VectorType::F32);
}

/// An `i8` collection's node graph holds no vectors (it re-ranks with the covered tables'
/// rows): saved without a rows file, loaded without one, exact all the same.
#[test]
fn codes_only_node_graphs_are_saved_and_searched_without_rows_of_their_own() {
    saved_graphs_of(VectorType::I8);
}

fn saved_graphs_of(vector_type: VectorType) {
    let seed = test_seed();
    println!("seed {seed} (replay with VORTEX_TEST_SEED={seed})");
    let mut rng = Rng(seed);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let tier_root = tempfile::tempdir().unwrap();
    let tier_dir = tier_root.path().join("tier");
    let mut shards: Vec<Shard> = dirs
        .iter()
        .map(|dir| Shard::open(dir.path(), ShardOptions::default()).unwrap().0)
        .collect();
    let mut points: Vec<(u64, Vec<f32>)> = Vec::new();
    for (owner, shard) in shards.iter_mut().enumerate() {
        shard.create_collection(spec(vector_type)).unwrap();
        for batch in 0..2u64 {
            let ids: Vec<u64> = (0..800)
                .map(|i| (batch * 800 + i) * 2 + owner as u64)
                .collect();
            let vectors: Vec<f32> = (0..ids.len() * DIMENSION)
                .map(|_| rng.signed_unit())
                .collect();
            for (id, vector) in ids.iter().zip(vectors.chunks_exact(DIMENSION)) {
                points.push((*id, vector.to_vec()));
            }
            shard.upsert(COLLECTION, &ids, &vectors, &[]).unwrap();
            shard.sync().unwrap();
            shard.flush().unwrap();
        }
    }
    let published: Vec<_> = shards.iter().map(|s| s.published().clone()).collect();
    let walks_now = |tier: &IndexTier| {
        let loaded: Vec<_> = published.iter().map(|p| Arc::clone(&*p.load())).collect();
        let views: Vec<&ShardView> = loaded.iter().map(Arc::as_ref).collect();
        let graphs = tier.graphs().load();
        coverage(&views, COLLECTION, graphs.get(COLLECTION).map(Arc::as_ref)).walks
    };
    // Every search, over the views and the tier's node graph, equals exact search.
    let check_exact = |tier: &IndexTier, rng: &mut Rng| {
        let loaded: Vec<_> = published.iter().map(|p| Arc::clone(&*p.load())).collect();
        let views: Vec<&ShardView> = loaded.iter().map(Arc::as_ref).collect();
        let graphs = tier.graphs().load();
        let graph = graphs.get(COLLECTION).map(Arc::as_ref);
        assert!(graph.is_some(), "no node graph");
        let codes_only = graph.is_some_and(|graph| graph.is_codes_only());
        assert_eq!(codes_only, vector_type == VectorType::I8);
        let mut exact_answers = 0;
        for _ in 0..30 {
            let query: Vec<f32> = (0..DIMENSION).map(|_| rng.signed_unit()).collect();
            let hits = search_node(
                &views,
                graph,
                &SearchRequest {
                    collection: COLLECTION,
                    vector: &query,
                    k: 10,
                    ef: 200,
                    filter: None,
                    with_payload: false,
                },
            )
            .unwrap();
            let mut exact: Vec<(f32, u64)> =
                points.iter().map(|(id, v)| (l2(&query, v), *id)).collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let ids: Vec<u64> = hits.iter().map(|h| h.id).collect();
            let want: Vec<u64> = exact[..10].iter().map(|(_, id)| *id).collect();
            exact_answers += usize::from(ids == want);
        }
        assert!(exact_answers >= 29, "{exact_answers} of 30 searches exact");
    };

    // A first tier builds the node graph and, nothing more being due, saves it.
    let tier = IndexTier::start(published.clone(), 1, Some(tier_dir.clone())).unwrap();
    wait("the node graph", || walks_now(&tier) == 1);
    wait("the save", || {
        saved_dir(&tier_dir).is_some_and(|d| d.join("meta").exists())
    });
    let rows_saved = saved_dir(&tier_dir).unwrap().join("rows").exists();
    assert_eq!(rows_saved, vector_type == VectorType::F32);
    assert_eq!(tier.graphs().builds(), 1);
    check_exact(&tier, &mut rng);
    drop(tier);

    // Restarted: the saved graph is published before anything is built.
    std::fs::create_dir_all(tier_dir.join("c9-9.new")).unwrap(); // a save cut short
    let tier = IndexTier::start(published.clone(), 1, Some(tier_dir.clone())).unwrap();
    wait("the saved graph", || {
        tier.graphs().load().contains_key(COLLECTION)
    });
    assert_eq!(tier.graphs().builds(), 0, "built instead of loaded");
    assert_eq!(walks_now(&tier), 1);
    check_exact(&tier, &mut rng);
    assert!(!tier_dir.join("c9-9.new").exists(), "a leftover kept");
    drop(tier);

    // Each file damaged in turn: not used, removed, and built again (then saved again).
    for file in ["meta", "rows", "graph.hnsw"] {
        let path = saved_dir(&tier_dir).unwrap().join(file);
        if file == "rows" && !rows_saved {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 2 + (rng.below(16) as usize);
        bytes[at] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let tier = IndexTier::start(published.clone(), 1, Some(tier_dir.clone())).unwrap();
        wait("a new graph", || tier.graphs().builds() == 1);
        assert_eq!(walks_now(&tier), 1);
        check_exact(&tier, &mut rng);
        wait("the new save", || {
            saved_dir(&tier_dir).is_some_and(|d| d.join("meta").exists())
        });
        drop(tier);
    }

    // The collection dropped: its saved graph goes at the next start.
    for shard in &mut shards {
        shard.drop_collection(COLLECTION).unwrap();
    }
    let tier = IndexTier::start(published.clone(), 1, Some(tier_dir.clone())).unwrap();
    wait("the stale graph removed", || saved_dir(&tier_dir).is_none());
    assert!(tier.graphs().load().is_empty());
    drop(tier);
    for shard in shards {
        shard.close().unwrap();
    }
}

/// A node graph never ranks a damaged row either (issue #23 item 4): an `f32` graph's build
/// copies only rows that verify (a damaged one fences its table instead of being copied
/// with checksums of its own), and an `i8` graph, which re-ranks with the covered tables'
/// rows, checks each row it reads. Either way the search answers `Fenced`.
#[test]
fn node_graphs_never_rank_a_damaged_row() {
    for vector_type in [VectorType::F32, VectorType::I8] {
        let seed = test_seed();
        println!("{vector_type:?}: seed {seed} (replay with VORTEX_TEST_SEED={seed})");
        let mut rng = Rng(seed);
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut shards: Vec<Shard> = dirs
            .iter()
            .map(|dir| Shard::open(dir.path(), ShardOptions::default()).unwrap().0)
            .collect();
        let mut vectors = Vec::new();
        for (owner, shard) in shards.iter_mut().enumerate() {
            shard.create_collection(spec(vector_type)).unwrap();
            let ids: Vec<u64> = (0..600).map(|i| i * 2 + owner as u64).collect();
            let rows: Vec<f32> = (0..ids.len() * DIMENSION)
                .map(|_| rng.signed_unit())
                .collect();
            vectors.push(rows.clone());
            shard.upsert(COLLECTION, &ids, &rows, &[]).unwrap();
            shard.sync().unwrap();
            shard.flush().unwrap();
            shard.wait_idle().unwrap();
        }
        // Slot `node` of shard 0's only table holds point `2 node`.
        let table = std::fs::read_dir(dirs[0].path().join("store/tables"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .next()
            .unwrap();
        let opened = vortex_storage::sstable::table::Table::open(
            &vortex_storage::PosixFiles::shared(),
            &table,
            0,
        )
        .unwrap();
        let node = 100 + rng.below(400);
        let at = opened
            .footer()
            .section_start(vortex_storage::sstable::table::Section::Vectors)
            + node * u64::from(opened.footer().stride)
            + 2;
        drop(opened);
        let flip = || vortex_test_support::files::flip(&table, at);
        let published: Vec<_> = shards.iter().map(|s| s.published().clone()).collect();
        if vector_type == VectorType::F32 {
            flip(); // before the build that copies the rows
        }
        let tier = IndexTier::start(published.clone(), 1, None).unwrap();
        if vector_type == VectorType::F32 {
            wait("the damaged table fenced", || {
                shards[0].stats().store.quarantined_tables == 1
            });
        } else {
            wait("the node graph", || {
                tier.graphs().load().contains_key(COLLECTION)
            });
            flip(); // after it: its searches re-rank with the table's rows
        }
        let query = &vectors[0][node as usize * DIMENSION..(node as usize + 1) * DIMENSION];
        let loaded: Vec<_> = published.iter().map(|p| Arc::clone(&*p.load())).collect();
        let views: Vec<&ShardView> = loaded.iter().map(Arc::as_ref).collect();
        let graphs = tier.graphs().load();
        let answer = search_node(
            &views,
            graphs.get(COLLECTION).map(Arc::as_ref),
            &SearchRequest {
                collection: COLLECTION,
                vector: query,
                k: 10,
                ef: 64,
                filter: None,
                with_payload: false,
            },
        );
        match answer {
            Err(vortex_shard::ShardError::Fenced { first, last, .. }) => {
                assert_eq!((first, last), (0, 1198), "{vector_type:?}")
            }
            other => panic!("{vector_type:?}: point {} damaged: {other:?}", node * 2),
        }
        drop(tier);
        for shard in shards {
            shard.close().unwrap();
        }
    }
}

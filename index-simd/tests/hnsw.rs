//! HNSW against a brute-force oracle: recall@10 on random and clustered data for every
//! metric, with and without quantization, one and two build threads; determinism; deletes
//! and compaction; filters; bad input. Seeded; every test prints its seed.

mod common;

use common::{clustered, clustered_split, exact, recall, uniform, Predicate, Random};
use vortex_index::{
    BuildControl, BuildParams, Helpers, Hnsw, IndexError, Metric, NodeSet, Quantization,
    SearchParams, SearchScratch, Seed, Store,
};

const SEED: u64 = 0x4E5F_2026_1125;
const K: usize = 10;

fn params(metric: Metric) -> BuildParams {
    BuildParams {
        metric,
        m: 16,
        ef_construction: 100,
        seed: SEED,
        threads: 1,
        quantization: Quantization::None,
        control: BuildControl::default(),
    }
}

/// Three build threads, two of them idle-priority helpers.
fn parallel_params() -> BuildParams {
    BuildParams {
        threads: 3,
        control: BuildControl {
            cancel: None,
            helpers: Helpers::Idle,
        },
        ..params(Metric::L2)
    }
}

/// Mean recall@10 of `queries` against the exact answer over the nodes `allowed` admits.
fn mean_recall(
    index: &Hnsw,
    data: &[f32],
    queries: &[f32],
    search: &SearchParams,
    allowed: &dyn Fn(u32) -> bool,
    filtered: Option<&dyn vortex_index::Filter>,
) -> f64 {
    let dim = index.dim();
    let mut scratch = SearchScratch::new();
    let mut results = Vec::new();
    let mut total = 0.0;
    for query in queries.chunks_exact(dim) {
        index
            .search_with(&mut scratch, query, search, filtered, &mut results)
            .unwrap();
        let found: Vec<u32> = results.iter().map(|n| n.node).collect();
        assert!(
            found.iter().all(|&node| allowed(node)),
            "a refused node came back"
        );
        assert!(
            results.windows(2).all(|w| w[0].distance <= w[1].distance),
            "results out of order"
        );
        let truth = exact(index.metric(), data, dim, query, search.k, allowed);
        assert_eq!(
            found.len(),
            truth.len(),
            "fewer results than admissible nodes"
        );
        total += recall(&found, &truth);
    }
    total / (queries.len() / dim) as f64
}

fn search_params(ef: usize) -> SearchParams {
    SearchParams {
        k: K,
        ef,
        rerank_factor: 4,
    }
}

#[test]
fn recall_on_random_and_clustered_data_for_every_metric() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (4000, 48);
    for metric in Metric::ALL {
        for (name, (data, queries)) in [
            (
                "uniform",
                (uniform(count, dim, SEED), uniform(100, dim, SEED + 1)),
            ),
            (
                "clustered",
                clustered_split(count, 100, dim, 4, SEED, metric),
            ),
        ] {
            let index = Hnsw::build(dim, &data, None, &params(metric)).unwrap();
            let recall = mean_recall(&index, &data, &queries, &search_params(64), &|_| true, None);
            // Uniform 48-d data has no structure to navigate by: the hardest case (measured
            // 0.957-0.962 here); the clustered sets, like real embeddings, measure 0.987+.
            let floor = if name == "uniform" { 0.93 } else { 0.97 };
            eprintln!("{} {name}: recall@10 = {recall:.3} at ef 64", metric.name());
            assert!(
                recall >= floor,
                "{} {name}: recall@10 {recall} < {floor} at ef 64",
                metric.name()
            );
        }
    }
}

#[test]
fn quantized_walk_with_rerank_keeps_recall() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (4000, 32);
    for metric in [Metric::L2, Metric::Cosine] {
        let (data, queries) = clustered_split(count, 100, dim, 20, SEED, metric);
        let build = BuildParams {
            quantization: Quantization::ScalarI8,
            ..params(metric)
        };
        let index = Hnsw::build(dim, &data, None, &build).unwrap();
        assert!(index.quantizer().is_some());
        let recall = mean_recall(&index, &data, &queries, &search_params(64), &|_| true, None);
        eprintln!("{} i8: recall@10 = {recall:.3} at ef 64", metric.name());
        assert!(
            recall >= 0.95,
            "{}: quantized recall@10 {recall} < 0.95",
            metric.name()
        );
        // Re-ranked distances are the exact f32 ones.
        let query = &queries[..dim];
        let found = index.search(query, K, 64).unwrap();
        let kernels = vortex_index::Kernels::active();
        for neighbor in &found {
            let expected = metric.distance(kernels, query, index.vector(neighbor.node).unwrap());
            assert!((neighbor.distance - expected).abs() <= 1e-4 * expected.abs().max(1.0));
        }
    }
}

#[test]
fn one_thread_builds_the_same_graph_every_time_and_two_threads_keep_recall() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (3000, 16);
    let (data, queries) = clustered_split(count, 100, dim, 10, SEED, Metric::L2);
    let first = Hnsw::build(dim, &data, None, &params(Metric::L2)).unwrap();
    let second = Hnsw::build(dim, &data, None, &params(Metric::L2)).unwrap();
    for node in 0..count as u32 {
        let level = first.level_of(node).unwrap();
        assert_eq!(level, second.level_of(node).unwrap());
        for layer in 0..=level {
            assert_eq!(
                first.neighbors_of(node, layer),
                second.neighbors_of(node, layer)
            );
        }
    }
    let parallel = BuildParams {
        threads: 2,
        ..params(Metric::L2)
    };
    let index = Hnsw::build(dim, &data, None, &parallel).unwrap();
    let recall = mean_recall(&index, &data, &queries, &search_params(64), &|_| true, None);
    eprintln!("two threads: recall@10 = {recall:.3}");
    assert!(recall >= 0.95);
}

#[test]
fn links_are_bounded_valid_and_free_of_self_loops() {
    let (count, dim) = (2000, 8);
    let data = clustered(count, dim, 5, SEED, Metric::L2);
    let single = Hnsw::build(dim, &data, None, &params(Metric::L2)).unwrap();
    // A parallel build, repair pass included, keeps the same invariants.
    let parallel = parallel_params();
    let parallel = Hnsw::build(dim, &data, None, &parallel).unwrap();
    for index in [single, parallel] {
        check_links(&index, count);
    }
}

fn check_links(index: &Hnsw, count: usize) {
    for node in 0..count as u32 {
        for layer in 0..=index.level_of(node).unwrap() {
            let neighbors = index.neighbors_of(node, layer).unwrap();
            let max = if layer == 0 { 2 * index.m() } else { index.m() };
            assert!(neighbors.len() <= max);
            assert!(!neighbors.contains(&node), "node {node} links to itself");
            let mut distinct = neighbors.to_vec();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                neighbors.len(),
                "node {node} links twice to one"
            );
            for &neighbor in neighbors {
                assert!(index.level_of(neighbor).unwrap() >= layer);
            }
        }
    }
}

#[test]
fn deleted_nodes_never_come_back_and_compaction_reclaims_them() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (4000, 32);
    let (data, queries) = clustered_split(count, 100, dim, 4, SEED, Metric::L2);
    let labels: Vec<u64> = (0..count as u64).map(|row| 1_000_000 + row * 7).collect();
    let mut index = Hnsw::build(dim, &data, Some(&labels), &params(Metric::L2)).unwrap();
    let mut random = Random::new(SEED);
    let mut deleted = NodeSet::with_capacity(count);
    while deleted.len() < count * 3 / 10 {
        let node = random.below(count) as u32;
        assert_eq!(index.delete(node).unwrap(), deleted.insert(node));
    }
    assert_eq!(index.deleted_count(), deleted.len());
    assert_eq!(
        index.delete(count as u32),
        Err(IndexError::NoSuchNode {
            node: count as u32,
            count
        })
    );
    let live = |node: u32| !deleted.contains(node);
    let recall = mean_recall(&index, &data, &queries, &search_params(64), &live, None);
    eprintln!("30% deleted: recall@10 = {recall:.3}");
    assert!(recall >= 0.95);

    let memory_before = index.memory_bytes();
    let compacted = index.compact().unwrap();
    let fresh = &compacted.index;
    assert_eq!(fresh.len(), count - deleted.len());
    assert_eq!(fresh.deleted_count(), 0);
    assert!(fresh.memory_bytes() < memory_before * 8 / 10);
    // Labels and vectors moved with their nodes.
    for old in 0..count as u32 {
        let new = compacted.old_to_new[old as usize];
        if deleted.contains(old) {
            assert_eq!(new, u32::MAX);
        } else {
            assert_eq!(fresh.label(new), Some(labels[old as usize]));
            assert_eq!(fresh.vector(new), index.vector(old));
        }
    }
    // The repaired graph still finds the live neighbours, and only them.
    let live_rows: Vec<f32> = (0..count)
        .filter(|&row| !deleted.contains(row as u32))
        .flat_map(|row| data[row * dim..(row + 1) * dim].to_vec())
        .collect();
    let recall = mean_recall(
        fresh,
        &live_rows,
        &queries,
        &search_params(64),
        &|_| true,
        None,
    );
    eprintln!("after compact: recall@10 = {recall:.3}");
    assert!(recall >= 0.95);
    for query in queries.chunks_exact(dim) {
        for neighbor in fresh.search(query, K, 64).unwrap() {
            assert!(!labels
                .iter()
                .enumerate()
                .any(|(row, &label)| label == neighbor.label && deleted.contains(row as u32)));
        }
    }
}

#[test]
fn filters_are_respected_and_keep_recall_when_selective() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (20_000, 32);
    let (data, queries) = clustered_split(count, 50, dim, 8, SEED, Metric::L2);
    let index = Hnsw::build(dim, &data, None, &params(Metric::L2)).unwrap();
    for selectivity_percent in [1u64, 10, 50] {
        // A pseudo-random subset, unrelated to the clusters.
        let allowed = |node: u32| {
            (u64::from(node).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 100 < selectivity_percent
        };
        let set: NodeSet = (0..count as u32).filter(|&node| allowed(node)).collect();
        let with_set = mean_recall(
            &index,
            &data,
            &queries,
            &search_params(64),
            &allowed,
            Some(&set),
        );
        let predicate = Predicate(allowed);
        let with_predicate = mean_recall(
            &index,
            &data,
            &queries,
            &search_params(64),
            &allowed,
            Some(&predicate),
        );
        eprintln!(
            "{selectivity_percent}% allowed: recall@10 {with_set:.3} (set), {with_predicate:.3} (predicate walk)"
        );
        assert!(
            with_set >= 0.95,
            "{selectivity_percent}%: set recall {with_set}"
        );
        assert!(
            with_predicate >= 0.95,
            "{selectivity_percent}%: walk recall {with_predicate}"
        );
    }
    // Nothing allowed: nothing returned.
    let none = NodeSet::with_capacity(count);
    let found = index
        .search_filtered(&queries[..dim], &search_params(64), &none)
        .unwrap();
    assert!(found.is_empty());
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let dim = 8;
    let data = uniform(100, dim, SEED);
    let index = Hnsw::build(dim, &data, None, &params(Metric::L2)).unwrap();
    assert_eq!(
        index.search(&[0.0; 7], K, 64),
        Err(IndexError::DimensionMismatch {
            expected: 8,
            actual: 7
        })
    );
    let mut query = vec![0.0; dim];
    query[3] = f32::NAN;
    assert_eq!(
        index.search(&query, K, 64),
        Err(IndexError::NotFinite { row: 0 })
    );
    assert!(matches!(
        index.search(&[0.0; 8], 0, 64),
        Err(IndexError::InvalidParameter(_))
    ));

    let mut bad = data.clone();
    bad[5 * dim + 1] = f32::INFINITY;
    assert_eq!(
        Hnsw::build(dim, &bad, None, &params(Metric::L2)).unwrap_err(),
        IndexError::NotFinite { row: 5 }
    );
    assert!(Hnsw::build(dim, &data[..dim * 3 + 1], None, &params(Metric::L2)).is_err());
    for m in [0, 1, 1000] {
        let build = BuildParams {
            m,
            ..params(Metric::L2)
        };
        let error = Hnsw::build(dim, &data, None, &build).unwrap_err();
        assert!(error.to_string().contains("m must be"), "{error}");
    }
    assert!(Hnsw::build(0, &[], None, &params(Metric::L2)).is_err());
    assert!(Hnsw::build(dim, &data, Some(&[1, 2, 3]), &params(Metric::L2)).is_err());
}

#[test]
fn degenerate_sets_work() {
    let dim = 4;
    // Empty.
    let empty = Hnsw::build(dim, &[], None, &params(Metric::L2)).unwrap();
    assert!(empty.search(&[0.0; 4], K, 16).unwrap().is_empty());
    // One vector.
    let one = Hnsw::build(dim, &[1.0, 2.0, 3.0, 4.0], None, &params(Metric::L2)).unwrap();
    let found = one.search(&[1.0, 2.0, 3.0, 4.0], K, 16).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].distance, 0.0);
    // Many copies of the same vector, and zero vectors under cosine.
    let same = vec![0.5f32; 500 * dim];
    let index = Hnsw::build(dim, &same, None, &params(Metric::L2)).unwrap();
    assert_eq!(index.search(&[0.5; 4], K, 16).unwrap().len(), K);
    let zeros = vec![0.0f32; 50 * dim];
    let index = Hnsw::build(dim, &zeros, None, &params(Metric::Cosine)).unwrap();
    assert_eq!(index.search(&[0.0; 4], K, 16).unwrap().len(), K);
    // Everything deleted.
    let mut index = Hnsw::build(dim, &same[..20 * dim], None, &params(Metric::L2)).unwrap();
    for node in 0..20 {
        index.delete(node).unwrap();
    }
    assert!(index.search(&[0.5; 4], K, 16).unwrap().is_empty());
    let compacted = index.compact().unwrap();
    assert!(compacted.index.is_empty());
    assert!(compacted.index.search(&[0.5; 4], K, 16).unwrap().is_empty());
}

/// Rows of `vector_stride(dim)` floats holding `values` (`dim` per row).
fn padded_rows(values: &[f32], dim: usize) -> Vec<f32> {
    let stride = vortex_index::vector_stride(dim);
    let mut rows = vec![0.0; values.len() / dim * stride];
    for (row, value) in rows.chunks_exact_mut(stride).zip(values.chunks_exact(dim)) {
        row[..dim].copy_from_slice(value);
    }
    rows
}

/// Points on a line (`i + d × 0.001` in every dimension), where the neighbour heuristic
/// keeps about two links per node: a seeded build that carries one run of them and inserts
/// the rest must leave every point findable. In key order the nodes before the carried run
/// linked only to one another, the run's first node had no room left for them, and a
/// search for 191 stranded at 194 (a dataplane test saw the same after an idle merge).
#[test]
fn a_seeded_build_over_points_on_a_line_leaves_every_point_findable() {
    let dim = 8;
    let count = 3000;
    let line = |ids: std::ops::Range<usize>| -> Vec<f32> {
        ids.flat_map(|id| (0..dim).map(move |d| id as f32 + d as f32 * 0.001))
            .collect()
    };
    let parameters = BuildParams {
        m: 8,
        ef_construction: 64,
        ..params(Metric::L2)
    };
    let values = line(0..count);
    for (start, end) in [
        (200, 400),
        (0, 200),
        (1000, 2000),
        (2800, 3000),
        (1500, 1510),
    ] {
        let old = Hnsw::build_over(
            dim,
            Store::owned(&padded_rows(&line(start..end), dim)),
            None,
            &parameters,
        )
        .unwrap();
        let carried: Vec<u32> = (0..count)
            .map(|row| match row {
                row if (start..end).contains(&row) => (row - start) as u32,
                _ => u32::MAX,
            })
            .collect();
        let seed = Seed {
            graph: &old,
            carried: &carried,
        };
        let rows = Store::owned(&padded_rows(&values, dim));
        let index = Hnsw::build_over_seeded(dim, rows, None, &parameters, seed).unwrap();
        let stranded: Vec<(usize, u32)> = (0..count)
            .filter_map(|row| {
                let found = index
                    .search(&values[row * dim..(row + 1) * dim], 5, 64)
                    .unwrap();
                (found[0].node as usize != row).then_some((row, found[0].node))
            })
            .collect();
        assert!(
            stranded.is_empty(),
            "carrying rows {start}..{end}: (point, found first) {:?}",
            &stranded[..stranded.len().min(10)]
        );
    }
}

#[test]
fn a_build_seeded_from_an_earlier_graph_keeps_recall_and_carries_its_links() {
    eprintln!("seed {SEED:#x}");
    let dim = 24;
    let (data, queries) = clustered_split(3000, 50, dim, 12, SEED, Metric::L2);
    let parameters = params(Metric::L2);
    // The earlier graph: rows 0..2000.
    let old = Hnsw::build_over(
        dim,
        Store::owned(&padded_rows(&data[..2000 * dim], dim)),
        None,
        &parameters,
    )
    .unwrap();
    // The new set, as a merge leaves it: the old rows but every fifth (superseded or
    // deleted), and 1,000 new rows, interleaved.
    let mut rows: Vec<usize> = (0..2000).filter(|row| row % 5 != 0).collect();
    rows.extend(2000..3000);
    rows.sort_by_key(|&row| (row * 7919) % 3001);
    let values: Vec<f32> = rows
        .iter()
        .flat_map(|&row| data[row * dim..(row + 1) * dim].iter().copied())
        .collect();
    let carried: Vec<u32> = rows
        .iter()
        .map(|&row| if row < 2000 { row as u32 } else { u32::MAX })
        .collect();
    let seed = Seed {
        graph: &old,
        carried: &carried,
    };
    let build = || {
        Hnsw::build_over_seeded(
            dim,
            Store::owned(&padded_rows(&values, dim)),
            None,
            &parameters,
            seed,
        )
        .unwrap()
    };
    let seeded = build();
    let fresh = Hnsw::build(dim, &values, None, &parameters).unwrap();
    let search = search_params(16); // a narrow beam, so that graph quality shows
    let seeded_recall = mean_recall(&seeded, &values, &queries, &search, &|_| true, None);
    let fresh_recall = mean_recall(&fresh, &values, &queries, &search, &|_| true, None);
    eprintln!("recall@10: seeded {seeded_recall:.3}, fresh build {fresh_recall:.3}");
    assert!(seeded_recall >= 0.9, "seeded recall {seeded_recall}");
    assert!(seeded_recall >= fresh_recall - 0.03);

    // Carried nodes keep their level.
    let new_of = |old_node: u32| {
        carried
            .iter()
            .position(|&c| c == old_node)
            .map(|n| n as u32)
    };
    let (mut kept, mut had) = (0, 0);
    for (node, &old_node) in carried.iter().enumerate() {
        if old_node == u32::MAX {
            continue;
        }
        assert_eq!(seeded.level_of(node as u32), old.level_of(old_node));
        let now = seeded.neighbors_of(node as u32, 0).unwrap();
        for &link in old.neighbors_of(old_node, 0).unwrap() {
            had += 1;
            kept += usize::from(new_of(link).is_some_and(|n| now.contains(&n)));
        }
    }
    // (New nodes take some places: about half remain in this mix.)
    eprintln!("{kept} of {had} layer-0 links carried over");

    // With every node carried and none new, the graph is the seed's, renumbered.
    // `carried` rows of the seed, all carried, none new.
    let carry_only = |carried: &[u32]| {
        let values: Vec<f32> = carried
            .iter()
            .flat_map(|&row| data[row as usize * dim..(row as usize + 1) * dim].to_vec())
            .collect();
        let seed = Seed {
            graph: &old,
            carried,
        };
        let rows = Store::owned(&padded_rows(&values, dim));
        let index = Hnsw::build_over_seeded(dim, rows, None, &parameters, seed).unwrap();
        (index, values)
    };
    let order: Vec<u32> = (0..2000u32).rev().collect();
    let (renumbered, _) = carry_only(&order);
    for (node, &old_node) in order.iter().enumerate() {
        for layer in 0..=old.level_of(old_node).unwrap() {
            let mut expected: Vec<u32> = old
                .neighbors_of(old_node, layer)
                .unwrap()
                .iter()
                .map(|&n| 1999 - n)
                .collect();
            let mut got = renumbered
                .neighbors_of(node as u32, layer)
                .unwrap()
                .to_vec();
            expected.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, expected, "node {node} layer {layer}");
        }
    }

    // Most of the seed dropped (the paths between what is left ran through it): every
    // carried node must still be reachable, so each finds itself.
    let kept: Vec<u32> = (0..2000u32).filter(|row| row % 5 >= 3).collect();
    let (sparse, kept_values) = carry_only(&kept);
    for (node, row) in kept_values.chunks_exact(dim).enumerate() {
        let found = sparse.search(row, 1, 100).unwrap();
        assert_eq!(found[0].distance, 0.0, "node {node} cannot be reached");
    }

    // One thread: deterministic.
    let again = build();
    for query in queries.chunks_exact(dim) {
        assert_eq!(
            seeded.search(query, K, 64).unwrap(),
            again.search(query, K, 64).unwrap()
        );
    }

    // A carried node whose row differs is inserted instead; bad seeds are refused.
    let mut changed = values.clone();
    changed[0] += 1.0;
    let rebuilt = Hnsw::build_over_seeded(
        dim,
        Store::owned(&padded_rows(&changed, dim)),
        None,
        &parameters,
        seed,
    )
    .unwrap();
    assert_eq!(rebuilt.len(), values.len() / dim);
    let rows_of = || Store::owned(&padded_rows(&values, dim));
    let refused = |seed: Seed<'_>, parameters: &BuildParams, needle: &str| {
        let error = Hnsw::build_over_seeded(dim, rows_of(), None, parameters, seed).unwrap_err();
        assert!(error.to_string().contains(needle), "{error}");
    };
    refused(
        Seed {
            graph: &old,
            carried: &carried[1..],
        },
        &parameters,
        "carried entries",
    );
    let mut twice = carried.clone();
    let first = twice.iter().position(|&c| c != u32::MAX).unwrap();
    let second = first
        + 1
        + twice[first + 1..]
            .iter()
            .position(|&c| c != u32::MAX)
            .unwrap();
    twice[second] = twice[first];
    refused(
        Seed {
            graph: &old,
            carried: &twice,
        },
        &parameters,
        "carried twice",
    );
    let other_m = BuildParams { m: 8, ..parameters };
    refused(seed, &other_m, "must have the build's metric");
}

/// Issue #22: a parallel build whose helpers run at idle priority keeps the recall of a
/// single-thread build of the same data: no more than 0.005 below it at the same, small
/// beam width, over 1,000 queries. Both sides are the mean of three builds, with three
/// seeds (the seed draws each node's level, so one single-thread graph is itself one draw:
/// comparing one draw against a mean left the test at its own noise, and one run under the
/// whole suite's load failed it). At ef 16. Under CPU contention (two busy loops beside it
/// on a 2-core VM, so that the idle-priority helpers get the CPU in bursts) it used to
/// fail: a helper preempted half-way through an insertion left a node linked on its upper
/// layers with empty lower lists, and the insertions meanwhile took that dead end as their
/// only neighbour (parallel graphs at 0.9593 to 0.9772 against 0.9786 to 0.9816). A node is
/// now linked from others only once its own lists are written on every layer: 24 parallel
/// graphs under the same load measured 0.9783 to 0.9817, each within 0.0004 of its seed's
/// single-thread graph.
#[test]
fn parallel_builds_with_idle_helpers_keep_the_single_thread_recall() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (8000, 24);
    let (data, queries) = clustered_split(count, 1000, dim, 40, SEED ^ 7, Metric::L2);
    let search = search_params(16);
    let seeds = [SEED, SEED ^ 1, SEED ^ 2];
    let mean_over_seeds = |base: &BuildParams| -> (f64, Vec<f64>) {
        let recalls: Vec<f64> = seeds
            .iter()
            .map(|&seed| {
                let params = BuildParams {
                    seed,
                    ..base.clone()
                };
                let index = Hnsw::build(dim, &data, None, &params).unwrap();
                assert_eq!(index.len(), count);
                mean_recall(&index, &data, &queries, &search, &|_| true, None)
            })
            .collect();
        (recalls.iter().sum::<f64>() / recalls.len() as f64, recalls)
    };
    let (single_recall, singles) = mean_over_seeds(&params(Metric::L2));
    let (parallel_recall, parallels) = mean_over_seeds(&parallel_params());
    eprintln!(
        "recall@10 at ef 16: one thread {single_recall:.4} {singles:.4?}, three \
         {parallel_recall:.4} {parallels:.4?}"
    );
    assert!(
        parallel_recall >= single_recall - 0.005,
        "one thread {single_recall:.4}, three {parallel_recall:.4}"
    );
}

/// A cancelled build stops and says so, whatever its thread count; an uncancelled one with
/// the same control finishes.
#[test]
fn a_cancelled_build_stops_and_says_so() {
    let (count, dim) = (3000, 16);
    let data = clustered(count, dim, 10, SEED, Metric::L2);
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for threads in [1, 2] {
        let build = BuildParams {
            threads,
            control: BuildControl {
                cancel: Some(std::sync::Arc::clone(&flag)),
                helpers: Helpers::Idle,
            },
            ..params(Metric::L2)
        };
        flag.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(Hnsw::build(dim, &data, None, &build).unwrap().len(), count);
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(matches!(
            Hnsw::build(dim, &data, None, &build),
            Err(IndexError::Cancelled)
        ));
        // Cancelled part-way, from another thread: it returns long before the whole build
        // would have (a build that ignored the flag until its end would take as long).
        let big = clustered(60_000, dim, 10, SEED ^ 3, Metric::L2);
        flag.store(false, std::sync::atomic::Ordering::Relaxed);
        let started = std::time::Instant::now();
        let whole = Hnsw::build(dim, &big, None, &build).unwrap();
        let whole_took = started.elapsed();
        assert_eq!(whole.len(), 60_000);
        let stopper = {
            let flag = std::sync::Arc::clone(&flag);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(5));
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            })
        };
        let started = std::time::Instant::now();
        let outcome = Hnsw::build(dim, &big, None, &build);
        let cancelled_took = started.elapsed();
        stopper.join().unwrap();
        assert!(
            matches!(outcome, Err(IndexError::Cancelled)),
            "{threads} thread(s)"
        );
        assert!(
            cancelled_took < whole_took / 2,
            "{threads} thread(s): cancelled after {cancelled_took:?}, a whole build {whole_took:?}"
        );
    }
}

/// The repair pass after a parallel build: on points on a line (where concurrent insertions
/// strand nodes most easily) every node is reachable on layer 0 from the top layer's nodes,
/// where every search's descent ends up.
#[test]
fn a_parallel_build_leaves_no_node_unreachable_on_a_line() {
    let (count, dim) = (3000u32, 8);
    let data: Vec<f32> = (0..count)
        .flat_map(|id| (0..dim).map(move |d| id as f32 + d as f32 * 0.001))
        .collect();
    let parallel = BuildParams {
        m: 8,
        ef_construction: 64,
        ..parallel_params()
    };
    for round in 0..3 {
        let index = Hnsw::build(dim, &data, None, &parallel).unwrap();
        let top = (0..count)
            .filter_map(|node| index.level_of(node))
            .max()
            .unwrap();
        let mut reached = vec![false; count as usize];
        let mut queue: Vec<u32> = (0..count)
            .filter(|&node| index.level_of(node) == Some(top))
            .collect();
        for &node in &queue {
            reached[node as usize] = true;
        }
        while let Some(node) = queue.pop() {
            for &next in index.neighbors_of(node, 0).unwrap() {
                if !std::mem::replace(&mut reached[next as usize], true) {
                    queue.push(next);
                }
            }
        }
        let stranded: Vec<u32> = (0..count).filter(|&n| !reached[n as usize]).collect();
        assert!(stranded.is_empty(), "round {round}: stranded {stranded:?}");
    }
}

/// Every node of a small graph, seeded or not, is reachable from the entry point: a walk wide
/// enough to see the whole graph finds all of them. A shard's side-cars are small graphs,
/// each seeded from an earlier one, generation after generation; an unreachable node there is
/// a live point no search returns (a reader stress test found one in a 31-node graph).
#[test]
fn every_node_of_small_graphs_seeded_generation_after_generation_is_reachable() {
    let dim = 8;
    let parameters = BuildParams {
        m: 8,
        ef_construction: 64,
        ..params(Metric::L2)
    };
    let mut random = Random::new(SEED);
    let mut stranded_graphs = Vec::new();
    for chain in 0..20 {
        let mut values: Vec<f32> = (0..(8 + random.below(60)) * dim)
            .map(|_| random.unit() * 2.0 - 1.0)
            .collect();
        let mut graph = Hnsw::build_over(
            dim,
            Store::owned(&padded_rows(&values, dim)),
            None,
            &parameters,
        )
        .unwrap();
        for generation in 0..40 {
            let found = graph
                .search(&values[..dim], graph.len(), 4 * graph.len())
                .unwrap();
            if found.len() != graph.len() {
                stranded_graphs.push((chain, generation, graph.len() - found.len(), graph.len()));
            }
            // The next table: rows kept (carried), overwritten or dropped, new rows.
            let old_count = values.len() / dim;
            let mut next = Vec::new();
            let mut carried = Vec::new();
            for row in 0..old_count {
                match random.below(6) {
                    0 => {}
                    1 => {
                        next.extend((0..dim).map(|_| random.unit() * 2.0 - 1.0));
                        carried.push(u32::MAX);
                    }
                    _ => {
                        next.extend_from_slice(&values[row * dim..(row + 1) * dim]);
                        carried.push(row as u32);
                    }
                }
            }
            for _ in 0..random.below(12) {
                next.extend((0..dim).map(|_| random.unit() * 2.0 - 1.0));
                carried.push(u32::MAX);
            }
            if carried.is_empty() {
                break;
            }
            graph = Hnsw::build_over_seeded(
                dim,
                Store::owned(&padded_rows(&next, dim)),
                None,
                &parameters,
                Seed {
                    graph: &graph,
                    carried: &carried,
                },
            )
            .unwrap();
            values = next;
        }
    }
    assert!(
        stranded_graphs.is_empty(),
        "(chain, generation, nodes unreachable, nodes): {stranded_graphs:?}"
    );
}

/// A merged table often carries a small share of its seed graph: a compaction's output
/// that covers part of the seed's key range, say. Dropping most of the seed's nodes left
/// the carried ones in islands: every node was reachable from the entry point on layer 0,
/// but a search's layer-0 beam starts where its descent through the upper layers ends, and
/// from some of those nodes half the graph could not be reached (a search of a node's own
/// vector with a beam wider than the graph missed it; a shard test saw it one run in
/// twenty). The build's repair now also re-inserts nodes that cannot reach the entry point,
/// looking for their neighbours from the entry point rather than by a descent that ends in
/// the island again.
#[test]
fn graphs_seeded_with_a_small_share_of_a_larger_graph_find_every_node() {
    let dim = 8;
    let parameters = BuildParams {
        m: 8,
        ef_construction: 64,
        ..params(Metric::L2)
    };
    let mut random = Random::new(SEED ^ 0x15_1A2D);
    let mut incomplete = Vec::new();
    for trial in 0..1000 {
        let old: Vec<f32> = (0..(150 + random.below(100)) * dim)
            .map(|_| random.unit() * 2.0 - 1.0)
            .collect();
        let seed = Hnsw::build_over(
            dim,
            Store::owned(&padded_rows(&old, dim)),
            None,
            &parameters,
        )
        .unwrap();
        // A few new points, then a run of 8 to 24 of the seed's nodes.
        let mut rows = Vec::new();
        let mut carried = Vec::new();
        for _ in 0..random.below(12) {
            rows.extend((0..dim).map(|_| random.unit() * 2.0 - 1.0));
            carried.push(u32::MAX);
        }
        let run = 8 + random.below(17);
        let first = random.below(seed.len() - run);
        for node in first..first + run {
            rows.extend_from_slice(&old[node * dim..(node + 1) * dim]);
            carried.push(node as u32);
        }
        let graph = Hnsw::build_over_seeded(
            dim,
            Store::owned(&padded_rows(&rows, dim)),
            None,
            &parameters,
            Seed {
                graph: &seed,
                carried: &carried,
            },
        )
        .unwrap();
        let count = graph.len();
        let missed = (0..count)
            .filter(|&node| {
                let found = graph
                    .search(&rows[node * dim..(node + 1) * dim], count, 4 * count)
                    .unwrap();
                found.len() != count
            })
            .count();
        if missed > 0 {
            incomplete.push((trial, missed, count));
        }
    }
    assert!(
        incomplete.is_empty(),
        "(trial, searches that did not reach every node, nodes): {incomplete:?}"
    );
}

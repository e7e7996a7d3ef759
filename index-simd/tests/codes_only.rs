//! Codes-only indexes (`Hnsw::into_codes_only`): an `i8` index that keeps its codes and
//! graph but not its `f32` vectors, and re-ranks with rows the caller keeps. It must answer
//! exactly as the same index holding its vectors, leave out nodes whose rows the caller no
//! longer has, survive a save and load, seed a build as the full index does, and refuse
//! what it cannot do with a clear error. Seeded; every test prints its seed.

mod common;

use common::{clustered_split, Random};
use vortex_index::{
    vector_stride, BuildParams, Filter, Hnsw, IndexError, Metric, NodeSet, Quantization, Rows,
    SearchParams, Seed, Store,
};

const SEED: u64 = 0xC0DE_2026_1207;

fn params(metric: Metric, quantization: Quantization) -> BuildParams {
    BuildParams {
        metric,
        m: 12,
        ef_construction: 80,
        seed: SEED,
        threads: 1,
        quantization,
        ..BuildParams::default()
    }
}

/// The rows a caller keeps: one vector per node, or none where it has lost the row.
struct Kept {
    rows: Vec<Option<Vec<f32>>>,
}

impl Kept {
    /// The stored vectors of `index` (normalised for cosine, as its rows were).
    fn of(index: &Hnsw) -> Kept {
        Kept {
            rows: (0..index.len() as u32)
                .map(|node| index.vector(node).map(<[f32]>::to_vec))
                .collect(),
        }
    }
}

impl Rows for Kept {
    fn read(&self, node: u32, out: &mut [f32]) -> Result<bool, IndexError> {
        Ok(match self.rows.get(node as usize) {
            Some(Some(row)) if row.len() == out.len() => {
                out.copy_from_slice(row);
                true
            }
            _ => false,
        })
    }
}

fn search(k: usize, ef: usize) -> SearchParams {
    SearchParams {
        k,
        ef,
        rerank_factor: 4,
    }
}

fn built(metric: Metric, count: usize, dim: usize) -> (Hnsw, Vec<f32>) {
    let (data, queries) = clustered_split(count, 30, dim, 8, SEED, metric);
    let labels: Vec<u64> = (0..count as u64).map(|row| row * 5 + 1).collect();
    let index = Hnsw::build(
        dim,
        &data,
        Some(&labels),
        &params(metric, Quantization::ScalarI8),
    )
    .unwrap();
    (index, queries)
}

#[test]
fn a_codes_only_index_answers_exactly_as_the_full_one_with_the_callers_rows() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (3000, 40);
    for metric in [Metric::L2, Metric::Cosine, Metric::InnerProduct] {
        let (full, queries) = built(metric, count, dim);
        let kept = Kept::of(&full);
        let full_bytes = full.memory_bytes();
        let codes = built(metric, count, dim).0.into_codes_only().unwrap();
        assert!(codes.is_codes_only());
        assert_eq!(codes.vector(0), None);
        assert_eq!(
            full_bytes - codes.memory_bytes(),
            count * vector_stride(dim) * 4,
            "exactly the vectors are gone"
        );
        // A filter the walk serves (half the nodes) and one the exact scan serves (1 %).
        let mut random = Random::new(SEED);
        let half = NodeSet::from_iter((0..count as u32).filter(|n| n % 2 == 0));
        let few = NodeSet::from_iter((0..30).map(|_| random.below(count) as u32));
        for query in queries.chunks_exact(dim) {
            for filter in [None, Some(&half as &dyn Filter), Some(&few as &dyn Filter)] {
                let p = search(10, 48);
                let expected = match filter {
                    None => full.search(query, p.k, p.ef).unwrap(),
                    Some(filter) => full.search_filtered(query, &p, filter).unwrap(),
                };
                let found = codes.search_over_rows(query, &p, filter, &kept).unwrap();
                assert_eq!(
                    found,
                    expected,
                    "{} filter {}",
                    metric.name(),
                    filter.is_some()
                );
            }
        }
    }
}

#[test]
fn nodes_whose_rows_the_caller_lost_are_left_out() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (2000, 24);
    let (full, queries) = built(Metric::L2, count, dim);
    let mut kept = Kept::of(&full);
    let codes = full.into_codes_only().unwrap();
    for node in (0..count).step_by(3) {
        kept.rows[node] = None;
    }
    let few = NodeSet::from_iter((0..60).map(|n| n * 7));
    for query in queries.chunks_exact(dim) {
        for filter in [None, Some(&few as &dyn Filter)] {
            let found = codes
                .search_over_rows(query, &search(10, 64), filter, &kept)
                .unwrap();
            assert!(!found.is_empty());
            assert!(
                found.iter().all(|n| n.node % 3 != 0),
                "a lost row came back"
            );
            assert!(found.iter().all(|n| n.distance.is_finite()));
            assert!(found.windows(2).all(|w| w[0].distance <= w[1].distance));
        }
    }
}

#[test]
fn what_a_codes_only_index_cannot_do_is_refused() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (500, 16);
    let (data, queries) = clustered_split(count, 5, dim, 4, SEED, Metric::L2);
    let plain = Hnsw::build(dim, &data, None, &params(Metric::L2, Quantization::None)).unwrap();
    assert!(matches!(
        plain.into_codes_only(),
        Err(IndexError::InvalidParameter(_))
    ));
    let (full, _) = built(Metric::L2, count, dim);
    let codes = full.into_codes_only().unwrap();
    let error = codes.search(&queries[..dim], 10, 32).unwrap_err();
    assert!(error.to_string().contains("search_over_rows"), "{error}");
    assert!(matches!(
        codes.compact(),
        Err(IndexError::InvalidParameter(_))
    ));
}

#[test]
fn a_codes_only_index_is_saved_without_vectors_and_loaded_without_them() {
    eprintln!("seed {SEED:#x}");
    let directory = tempfile::tempdir().unwrap();
    let (count, dim) = (1500, 32);
    let (full, queries) = built(Metric::Cosine, count, dim);
    let kept = Kept::of(&full);
    let mut codes = full.into_codes_only().unwrap();
    codes.delete(17).unwrap();
    let path = directory.path().join("codes.hnsw");
    codes.save(&path).unwrap();
    // The file is the same index's file less the vectors.
    let mut with_vectors = built(Metric::Cosine, count, dim).0;
    with_vectors.delete(17).unwrap();
    let full_path = directory.path().join("full.hnsw");
    with_vectors.save(&full_path).unwrap();
    let size = |path: &std::path::Path| std::fs::metadata(path).unwrap().len() as usize;
    assert_eq!(
        size(&full_path) - size(&path),
        count * vector_stride(dim) * 4
    );

    let loaded = Hnsw::load_codes_only(&path).unwrap();
    assert!(loaded.is_codes_only() && loaded.is_deleted(17));
    for query in queries.chunks_exact(dim) {
        let p = search(10, 40);
        assert_eq!(
            loaded.search_over_rows(query, &p, None, &kept).unwrap(),
            codes.search_over_rows(query, &p, None, &kept).unwrap()
        );
    }
    // Loaded another way, or another index loaded this way: refused, saying why.
    let error = Hnsw::load(&path).unwrap_err().to_string();
    assert!(error.contains("outside the file"), "{error}");
    let plain_path = directory.path().join("plain.hnsw");
    let (data, _) = clustered_split(count, 1, dim, 4, SEED, Metric::L2);
    let stride = vector_stride(dim);
    let mut rows = vec![0.0; count * stride];
    for (row, vector) in rows.chunks_exact_mut(stride).zip(data.chunks_exact(dim)) {
        row[..dim].copy_from_slice(vector);
    }
    Hnsw::build_over(
        dim,
        Store::owned(&rows),
        None,
        &params(Metric::L2, Quantization::None),
    )
    .unwrap()
    .save(&plain_path)
    .unwrap();
    let error = Hnsw::load_codes_only(&plain_path).unwrap_err().to_string();
    assert!(error.contains("cannot be loaded without them"), "{error}");
    let inside_path = directory.path().join("inside.hnsw");
    built(Metric::L2, count, dim).0.save(&inside_path).unwrap();
    let error = Hnsw::load_codes_only(&inside_path).unwrap_err().to_string();
    assert!(error.contains("holds its own vectors"), "{error}");
}

/// A build seeded from a codes-only graph carries what a build seeded from the same graph
/// with its vectors carries: with one thread, the same graph. A row that changed is not
/// carried by either.
#[test]
fn a_codes_only_seed_carries_what_the_full_seed_carries() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (1200, 20);
    let (data, _) = clustered_split(count + 300, 1, dim, 5, SEED, Metric::L2);
    let stride = vector_stride(dim);
    let rows_of = |vectors: &[f32]| {
        let mut rows = vec![0.0; vectors.len() / dim * stride];
        for (row, vector) in rows.chunks_exact_mut(stride).zip(vectors.chunks_exact(dim)) {
            row[..dim].copy_from_slice(vector);
        }
        rows
    };
    let build = params(Metric::L2, Quantization::ScalarI8);
    let old = || {
        Hnsw::build_over(
            dim,
            Store::owned(&rows_of(&data[..count * dim])),
            None,
            &build,
        )
        .unwrap()
    };
    let full_seed = old();
    let codes_seed = old().into_codes_only().unwrap();
    // The new set: every old row (row 5 moved far away) and 300 new ones.
    let mut values = data.clone();
    values[5 * dim..6 * dim].iter_mut().for_each(|x| *x += 50.0);
    let carried: Vec<u32> = (0..count as u32 + 300)
        .map(|node| {
            if (node as usize) < count {
                node
            } else {
                u32::MAX
            }
        })
        .collect();
    let seeded = |graph: &Hnsw| {
        Hnsw::build_over_seeded(
            dim,
            Store::owned(&rows_of(&values)),
            None,
            &build,
            Seed {
                graph,
                carried: &carried,
            },
        )
        .unwrap()
    };
    let (from_full, from_codes) = (seeded(&full_seed), seeded(&codes_seed));
    for node in 0..from_full.len() as u32 {
        assert_eq!(from_full.level_of(node), from_codes.level_of(node));
        for layer in 0..=from_full.level_of(node).unwrap() {
            assert_eq!(
                from_full.neighbors_of(node, layer),
                from_codes.neighbors_of(node, layer),
                "node {node} layer {layer}"
            );
        }
    }
}

/// An `i8` index loaded from its file re-ranks its candidates with `f32` rows read from
/// the file (`Hnsw::read_vector`), not through its mapping: searches answer exactly as the
/// index built in memory and leave the rows out of the resident set. (Through the mapping,
/// 300 searches re-ranking 40 rows each brought nearly every row in, with the pages, or on
/// this kernel the folios, around them.)
#[test]
fn a_loaded_i8_index_re_ranks_from_its_file_and_its_rows_stay_out_of_memory() {
    eprintln!("seed {SEED:#x}");
    let (count, dim) = (3000, 256);
    let (built, queries) = built(Metric::Cosine, count, dim);
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("index");
    built.save(&path).unwrap();
    let loaded = Hnsw::load(&path).unwrap();
    loaded.release_pages();
    let address = loaded.vector(0).unwrap().as_ptr() as usize;
    let before = common::resident_kib_at(address);
    let mut searches = 0;
    while searches < 300 {
        for query in queries.chunks_exact(dim) {
            let from_file = loaded.search(query, 10, 64).unwrap();
            let in_memory = built.search(query, 10, 64).unwrap();
            assert_eq!(
                from_file, in_memory,
                "a re-rank from the file answers the same"
            );
            searches += 1;
        }
    }
    let file_kib = std::fs::metadata(&path).unwrap().len() / 1024;
    let rows_kib = (count * vector_stride(dim) * 4) as u64 / 1024;
    let after = common::resident_kib_at(address);
    eprintln!(
        "index file {file_kib} KiB, rows {rows_kib} KiB; resident {before} KiB after the \
         release, {after} KiB after {searches} searches"
    );
    assert!(
        after < file_kib - rows_kib / 2,
        "the rows came into memory: {after} KiB resident of a {file_kib} KiB file \
         ({rows_kib} KiB of rows)"
    );
}

//! Deterministic ANN datasets: clustered Gaussian mixtures with exact ground truth.
//!
//! Real embeddings are neither uniform nor isotropic: they sit in clusters, and within a
//! cluster most of the variance lies along a few directions (SIFT's intrinsic dimension is
//! about 16 of 128). The generator imitates both. Each cluster has a centre drawn from
//! `N(0, centre_spread²)` per component and its own ordering of the components; the spread
//! along the component of rank `r` in that ordering is `1/√(r+1)`, so the variance decays
//! like a real spectrum (participation ratio ≈ 18 of 128 dimensions) and different clusters
//! stretch along different axes. Queries are further draws from the same mixture. For
//! cosine sets every vector is normalised.
//!
//! Every row is drawn from its own generator seeded by (seed, row), so the data does not
//! depend on the thread count. Ground truth is the exact top 100 by a full scan with the
//! `f32` kernels, ties broken by the lower row.

use crate::vecs::{self, Rows};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BinaryHeap;
use std::path::Path;
use vortex_index::metric::normalize;
use vortex_index::random::SplitMix;
use vortex_index::{Kernels, Metric, Scored};

/// Ground-truth neighbours written per query.
pub const GROUND_TRUTH_DEPTH: usize = 100;

/// How the mixture's centres spread relative to the clusters' own spread: clusters overlap
/// their neighbours, as topics in an embedding space do, instead of being separate islands.
const CENTRE_SPREAD: f32 = 0.2;

/// What a dataset is; written as `meta.json` beside the vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetMeta {
    /// The dataset's name (also its directory's).
    pub name: String,
    /// `l2` or `cosine`.
    pub metric: String,
    /// Base vectors.
    pub n: usize,
    /// Components per vector.
    pub dim: usize,
    /// Query vectors.
    pub queries: usize,
    /// Mixture components.
    pub clusters: usize,
    /// The generator's seed.
    pub seed: u64,
}

impl DatasetMeta {
    /// The metric, parsed.
    pub fn metric(&self) -> anyhow::Result<Metric> {
        Metric::from_name(&self.metric)
            .with_context(|| format!("unknown metric `{}` in meta.json", self.metric))
    }
}

/// The generator of one row, from (seed, row).
fn row_random(seed: u64, stream: u64, row: usize) -> SplitMix {
    let mut mix = SplitMix::new(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
    let base = mix.next_u64();
    SplitMix::new(base ^ (row as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB))
}

/// The mixture: every cluster's centre and per-component spread.
struct Mixture {
    dim: usize,
    centres: Vec<f32>,
    spreads: Vec<f32>,
}

impl Mixture {
    fn new(dim: usize, clusters: usize, seed: u64) -> Mixture {
        let mut centres = Vec::with_capacity(clusters * dim);
        let mut spreads = Vec::with_capacity(clusters * dim);
        for cluster in 0..clusters {
            let mut random = row_random(seed, 1, cluster);
            centres.extend((0..dim).map(|_| random.gaussian() * CENTRE_SPREAD));
            // A random ordering of the components (Fisher-Yates), then the decaying spread.
            let mut ranks: Vec<usize> = (0..dim).collect();
            for i in (1..dim).rev() {
                ranks.swap(i, (random.next_u64() % (i as u64 + 1)) as usize);
            }
            spreads.extend(ranks.iter().map(|&rank| 1.0 / ((rank + 1) as f32).sqrt()));
        }
        Mixture {
            dim,
            centres,
            spreads,
        }
    }

    fn clusters(&self) -> usize {
        self.centres.len() / self.dim
    }

    /// Writes draw number `row` of stream `stream` into `out`.
    fn draw(&self, seed: u64, stream: u64, row: usize, metric: Metric, out: &mut [f32]) {
        let mut random = row_random(seed, stream, row);
        let cluster = (random.next_u64() % self.clusters() as u64) as usize;
        let range = cluster * self.dim..(cluster + 1) * self.dim;
        for ((x, &centre), &spread) in out
            .iter_mut()
            .zip(&self.centres[range.clone()])
            .zip(&self.spreads[range])
        {
            *x = centre + spread * random.gaussian();
        }
        if metric == Metric::Cosine {
            normalize(out);
        }
    }

    /// `count` draws of stream `stream`, on `threads` threads.
    fn draws(
        &self,
        seed: u64,
        stream: u64,
        count: usize,
        metric: Metric,
        threads: usize,
    ) -> Vec<f32> {
        let mut values = vec![0.0f32; count * self.dim];
        let rows_per_thread = count.div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            for (part, chunk) in values.chunks_mut(rows_per_thread * self.dim).enumerate() {
                scope.spawn(move || {
                    for (offset, row) in chunk.chunks_exact_mut(self.dim).enumerate() {
                        self.draw(seed, stream, part * rows_per_thread + offset, metric, row);
                    }
                });
            }
        });
        values
    }
}

/// The exact `depth` nearest base rows of every query, on `threads` threads.
pub fn ground_truth(
    metric: Metric,
    base: &Rows<f32>,
    queries: &Rows<f32>,
    depth: usize,
    threads: usize,
) -> Rows<i32> {
    let kernels = Kernels::active();
    let depth = depth.min(base.len());
    let mut neighbours = vec![0i32; queries.len() * depth];
    if depth == 0 {
        return Rows {
            dim: 1,
            values: Vec::new(),
        };
    }
    let per_thread = queries.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (part, chunk) in neighbours.chunks_mut(per_thread * depth).enumerate() {
            scope.spawn(move || {
                let mut heap = BinaryHeap::with_capacity(depth + 1);
                for (offset, out) in chunk.chunks_exact_mut(depth).enumerate() {
                    let query = queries.row(part * per_thread + offset);
                    heap.clear();
                    for (row, vector) in base.values.chunks_exact(base.dim).enumerate() {
                        let distance = metric.distance(kernels, query, vector);
                        if heap.len() < depth {
                            heap.push(Scored {
                                distance,
                                node: row as u32,
                            });
                        } else if heap.peek().is_some_and(|w: &Scored| distance < w.distance) {
                            heap.pop();
                            heap.push(Scored {
                                distance,
                                node: row as u32,
                            });
                        }
                    }
                    let sorted = std::mem::take(&mut heap).into_sorted_vec();
                    for (slot, scored) in out.iter_mut().zip(&sorted) {
                        *slot = scored.node as i32;
                    }
                    heap = BinaryHeap::from(sorted);
                }
            });
        }
    });
    Rows {
        dim: depth,
        values: neighbours,
    }
}

/// Generates the dataset `meta` into `directory`: base.fvecs, query.fvecs,
/// groundtruth.ivecs and meta.json.
pub fn generate(meta: &DatasetMeta, directory: &Path, threads: usize) -> anyhow::Result<()> {
    let metric = meta.metric()?;
    anyhow::ensure!(meta.dim > 0 && meta.n > 0 && meta.queries > 0 && meta.clusters > 0);
    std::fs::create_dir_all(directory)
        .with_context(|| format!("creating {}", directory.display()))?;
    let mixture = Mixture::new(meta.dim, meta.clusters, meta.seed);
    let base = Rows {
        dim: meta.dim,
        values: mixture.draws(meta.seed, 2, meta.n, metric, threads),
    };
    let queries = Rows {
        dim: meta.dim,
        values: mixture.draws(meta.seed, 3, meta.queries, metric, threads),
    };
    vecs::write(&directory.join("base.fvecs"), &base)?;
    vecs::write(&directory.join("query.fvecs"), &queries)?;
    let truth = ground_truth(metric, &base, &queries, GROUND_TRUTH_DEPTH, threads);
    vecs::write(&directory.join("groundtruth.ivecs"), &truth)?;
    std::fs::write(
        directory.join("meta.json"),
        serde_json::to_string_pretty(meta)? + "\n",
    )?;
    Ok(())
}

/// A dataset read back.
#[derive(Debug)]
pub struct Dataset {
    /// Its description.
    pub meta: DatasetMeta,
    /// The base vectors.
    pub base: Rows<f32>,
    /// The queries.
    pub queries: Rows<f32>,
    /// Exact neighbours of each query, nearest first.
    pub truth: Rows<i32>,
}

impl Dataset {
    /// Reads the dataset in `directory` and checks that its parts agree.
    pub fn load(directory: &Path) -> anyhow::Result<Dataset> {
        let meta_path = directory.join("meta.json");
        let meta: DatasetMeta = serde_json::from_slice(
            &std::fs::read(&meta_path)
                .with_context(|| format!("reading {}", meta_path.display()))?,
        )
        .with_context(|| format!("parsing {}", meta_path.display()))?;
        let base = vecs::read::<f32>(&directory.join("base.fvecs"))?;
        let queries = vecs::read::<f32>(&directory.join("query.fvecs"))?;
        let truth = vecs::read::<i32>(&directory.join("groundtruth.ivecs"))?;
        anyhow::ensure!(
            base.dim == meta.dim && queries.dim == meta.dim,
            "vector dimensions disagree with meta.json ({})",
            meta.dim
        );
        anyhow::ensure!(
            base.len() == meta.n && queries.len() == meta.queries && truth.len() == meta.queries,
            "row counts disagree with meta.json"
        );
        anyhow::ensure!(
            truth
                .values
                .iter()
                .all(|&row| row >= 0 && (row as usize) < base.len()),
            "ground truth names rows outside the base set"
        );
        Ok(Dataset {
            meta,
            base,
            queries,
            truth,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_across_thread_counts_and_truth_is_exact() {
        let meta = DatasetMeta {
            name: "tiny".into(),
            metric: "cosine".into(),
            n: 700,
            dim: 12,
            queries: 9,
            clusters: 5,
            seed: 42,
        };
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        generate(&meta, one.path(), 1).unwrap();
        generate(&meta, two.path(), 3).unwrap();
        for file in [
            "base.fvecs",
            "query.fvecs",
            "groundtruth.ivecs",
            "meta.json",
        ] {
            assert_eq!(
                std::fs::read(one.path().join(file)).unwrap(),
                std::fs::read(two.path().join(file)).unwrap(),
                "{file} depends on the thread count"
            );
        }
        let dataset = Dataset::load(one.path()).unwrap();
        assert_eq!(dataset.meta, meta);
        assert_eq!(dataset.truth.dim, GROUND_TRUTH_DEPTH);
        for row in dataset.base.values.chunks_exact(meta.dim) {
            let norm: f32 = row.iter().map(|x| x * x).sum();
            assert!((norm - 1.0).abs() < 1e-4);
        }
        // The truth is the brute-force order.
        let kernels = Kernels::active();
        for q in 0..meta.queries {
            let query = dataset.queries.row(q);
            let mut all: Vec<(f32, i32)> = (0..meta.n)
                .map(|r| {
                    (
                        Metric::Cosine.distance(kernels, query, dataset.base.row(r)),
                        r as i32,
                    )
                })
                .collect();
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let expected: Vec<i32> = all.iter().take(GROUND_TRUTH_DEPTH).map(|p| p.1).collect();
            assert_eq!(dataset.truth.row(q), &expected[..]);
        }
    }
}

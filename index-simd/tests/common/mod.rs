//! Shared by the index tests: seeded data and a brute-force oracle.

#![allow(dead_code)]

use vortex_index::metric::normalize;
use vortex_index::{Filter, Kernels, Metric};

/// xorshift64*, seeded.
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Random {
        Random(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in 0..bound.
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn gaussian(&mut self) -> f32 {
        let u = self.unit().max(1e-7);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// `count` vectors uniform in [-1, 1)^dim.
pub fn uniform(count: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut random = Random::new(seed);
    (0..count * dim)
        .map(|_| random.unit() * 2.0 - 1.0)
        .collect()
}

/// `count` vectors from a mixture of `clusters` Gaussians (centres uniform in [-10, 10),
/// spread 1), normalised when `metric` is cosine.
pub fn clustered(count: usize, dim: usize, clusters: usize, seed: u64, metric: Metric) -> Vec<f32> {
    let mut random = Random::new(seed);
    let centres: Vec<f32> = (0..clusters * dim)
        .map(|_| random.unit() * 20.0 - 10.0)
        .collect();
    let mut data = Vec::with_capacity(count * dim);
    for _ in 0..count {
        let centre = random.below(clusters);
        let start = data.len();
        data.extend((0..dim).map(|d| centres[centre * dim + d] + random.gaussian()));
        if metric == Metric::Cosine {
            normalize(&mut data[start..]);
        }
    }
    data
}

/// `count` base vectors and `queries` query vectors from one mixture (see [`clustered`]).
pub fn clustered_split(
    count: usize,
    queries: usize,
    dim: usize,
    clusters: usize,
    seed: u64,
    metric: Metric,
) -> (Vec<f32>, Vec<f32>) {
    let mut data = clustered(count + queries, dim, clusters, seed, metric);
    let queries = data.split_off(count * dim);
    (data, queries)
}

/// The exact `k` nearest rows to `query` that `allowed` admits, nearest first.
pub fn exact(
    metric: Metric,
    data: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    allowed: &dyn Fn(u32) -> bool,
) -> Vec<u32> {
    let kernels = Kernels::for_level(vortex_index::Level::Scalar).unwrap();
    let mut query = query.to_vec();
    if metric == Metric::Cosine {
        normalize(&mut query);
    }
    let mut scored: Vec<(f32, u32)> = data
        .chunks_exact(dim)
        .enumerate()
        .filter(|&(row, _)| allowed(row as u32))
        .map(|(row, vector)| {
            let mut vector = vector.to_vec();
            if metric == Metric::Cosine {
                normalize(&mut vector);
            }
            (metric.distance(&kernels, &query, &vector), row as u32)
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, row)| row).collect()
}

/// |found ∩ truth| / |truth|.
pub fn recall(found: &[u32], truth: &[u32]) -> f64 {
    if truth.is_empty() {
        return 1.0;
    }
    let hits = found.iter().filter(|node| truth.contains(node)).count();
    hits as f64 / truth.len() as f64
}

/// A filter from a closure that does not tell its size (so the search must walk).
pub struct Predicate<F: Fn(u32) -> bool>(pub F);

impl<F: Fn(u32) -> bool> Filter for Predicate<F> {
    fn allows(&self, node: u32) -> bool {
        (self.0)(node)
    }
}

/// The resident kilobytes of this process's mapping that holds `address`.
#[allow(dead_code)] // not every test file reads residency
pub fn resident_kib_at(address: usize) -> u64 {
    vortex_io::memlock::mapping_resident_kib(address)
        .unwrap()
        .unwrap_or_else(|| panic!("no mapping holds {address:#x}"))
}

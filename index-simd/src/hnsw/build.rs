//! Building a graph: the paper's insertion (Malkov & Yashunin, algorithms 1 and 4) over a
//! fixed set of vectors, in parallel.
//!
//! Every node's level is drawn up front from the seed, so the layout of the upper layers is
//! known before the first insertion and no array ever grows. Node 0 is inserted first; the
//! others are claimed in order from a shared counter by `threads` workers. Neighbour lists
//! are `AtomicU32` blocks guarded by one small lock per node: a reader copies a list under
//! the lock, a writer replaces it under the lock, and no thread holds two locks at once, so
//! there is no deadlock. A node whose level is above the current top holds the entry lock
//! for its whole insertion, so the entry point always has its links (as hnswlib does).
//!
//! With one thread the insertion order, and therefore the graph, is a pure function of the
//! vectors and the parameters: a build is deterministic for a seed.

use super::search::{beam, greedy, ExactSpace, Links, Scored, SearchScratch, Space};
use super::{
    block_range, code_stride, vector_stride, Hnsw, IndexError, DIM_MAX, EF_MAX, LEVEL_MAX, M_MAX,
    NO_NODE,
};
use crate::distance::Kernels;
use crate::filter::NodeSet;
use crate::metric::{normalize, Metric};
use crate::quantize::ScalarQuantizer;
use crate::random::SplitMix;
use crate::store::{huge_vec, Store};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

/// How vectors are kept for the graph walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    /// The walk compares `f32` vectors.
    #[default]
    None,
    /// The walk compares `i8` codes and re-ranks with `f32` (the vectors are kept too).
    ScalarI8,
}

/// How a graph is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildParams {
    /// The metric.
    pub metric: Metric,
    /// Neighbours per node on layers above 0; layer 0 keeps `2m`.
    pub m: usize,
    /// The beam width while inserting.
    pub ef_construction: usize,
    /// The seed of the level draw.
    pub seed: u64,
    /// Worker threads (0: one per available core). One thread gives a deterministic graph.
    pub threads: usize,
    /// Whether the walk uses `i8` codes.
    pub quantization: Quantization,
}

impl Default for BuildParams {
    fn default() -> BuildParams {
        BuildParams {
            metric: Metric::L2,
            m: 16,
            ef_construction: 200,
            seed: 0x5EED_0F4E_5F00,
            threads: 1,
            quantization: Quantization::None,
        }
    }
}

/// The paper's level draw: `⌊-ln(U) · mL⌋` with `mL = 1 / ln m`, capped.
pub(crate) fn draw_levels(count: usize, m: usize, seed: u64) -> Vec<u8> {
    let level_scale = 1.0 / (m as f64).ln();
    let mut random = SplitMix::new(seed);
    (0..count)
        .map(|_| (-random.unit().ln() * level_scale).min(f64::from(LEVEL_MAX)) as u8)
        .collect()
}

/// Where each node's upper-layer blocks start, and the total length, or `None` when that
/// does not fit the `u32` offsets.
pub(crate) fn upper_layout(levels: &[u8], m: usize) -> Option<(Vec<u32>, usize)> {
    let mut offsets = Vec::with_capacity(levels.len());
    let mut total = 0usize;
    for &level in levels {
        offsets.push(if level == 0 {
            NO_NODE
        } else {
            u32::try_from(total).ok()?
        });
        total = total.checked_add(level as usize * (1 + m))?;
    }
    u32::try_from(total).ok()?;
    Some((offsets, total))
}

/// The paper's neighbour-selection heuristic (algorithm 4, without extending candidates or
/// keeping pruned ones, as hnswlib): walking `candidates` from the nearest, keep one when it
/// is nearer to the base than to every one kept so far, up to `max`. This keeps links that
/// point in different directions, which is what lets clustered data stay navigable.
pub(crate) fn select_neighbors(
    space: &ExactSpace<'_>,
    candidates: &[Scored],
    max: usize,
    selected: &mut Vec<Scored>,
) {
    debug_assert!(candidates.is_sorted());
    selected.clear();
    for &candidate in candidates {
        if selected.len() >= max {
            break;
        }
        let row = space.row(candidate.node);
        let diverse = selected.iter().all(|kept| {
            space
                .metric
                .distance(space.kernels, row, space.row(kept.node))
                >= candidate.distance
        });
        if diverse {
            selected.push(candidate);
        }
    }
}

/// Checks the parameters of a build.
/// `count` if an index can hold that many nodes (ids are `u32`, `NO_NODE` reserved).
fn check_count(count: usize) -> Result<usize, IndexError> {
    if count >= NO_NODE as usize {
        return Err(IndexError::InvalidParameter(format!(
            "an index holds fewer than {NO_NODE} vectors, not {count}"
        )));
    }
    Ok(count)
}

pub(crate) fn check_params(dim: usize, params: &BuildParams) -> Result<(), IndexError> {
    let invalid = |message: String| Err(IndexError::InvalidParameter(message));
    if dim == 0 || dim > DIM_MAX {
        return invalid(format!("dimension must be in 1..={DIM_MAX}, not {dim}"));
    }
    if params.m < 2 || params.m > M_MAX {
        return invalid(format!("m must be in 2..={M_MAX}, not {}", params.m));
    }
    if params.ef_construction == 0 || params.ef_construction > EF_MAX {
        return invalid(format!(
            "ef_construction must be in 1..={EF_MAX}, not {}",
            params.ef_construction
        ));
    }
    Ok(())
}

/// The graph while it is built.
struct Builder<'a> {
    space: ExactSpace<'a>,
    m: usize,
    m0: usize,
    ef_construction: usize,
    levels: &'a [u8],
    upper_offsets: &'a [u32],
    links0: Vec<AtomicU32>,
    upper_links: Vec<AtomicU32>,
    /// Beside every link slot, the link's distance (`f32` bits), so that pruning a full list
    /// does not compute again the distances it was chosen by. Build-time only.
    distances0: Vec<AtomicU32>,
    upper_distances: Vec<AtomicU32>,
    locks: Vec<Mutex<()>>,
    /// The entry point and the top layer.
    entry: Mutex<(u32, u8)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a node lock cannot leave a list half-written in a way that
    // matters (counts are stored last), so a poisoned lock is taken as is.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Links for Builder<'_> {
    #[inline]
    fn for_each_neighbor(&self, node: u32, layer: u8, visit: impl FnMut(u32)) {
        let _guard = lock(&self.locks[node as usize]);
        let block = self.block(node, layer);
        let count = (block[0].load(Relaxed) as usize).min(block.len() - 1);
        block[1..1 + count]
            .iter()
            .map(|id| id.load(Relaxed))
            .for_each(visit);
    }
}

impl Builder<'_> {
    /// Where the neighbour block of `node` at `layer` lies in its layer's array.
    fn range(&self, node: u32, layer: u8) -> std::ops::Range<usize> {
        block_range(self.m, self.upper_offsets, node, layer)
    }

    /// The neighbour block (count, then ids) of `node` at `layer`.
    fn block(&self, node: u32, layer: u8) -> &[AtomicU32] {
        let range = self.range(node, layer);
        if layer == 0 {
            &self.links0[range]
        } else {
            &self.upper_links[range]
        }
    }

    /// The distances beside the block of `node` at `layer` (slot 0 unused).
    fn block_distances(&self, node: u32, layer: u8) -> &[AtomicU32] {
        let range = self.range(node, layer);
        if layer == 0 {
            &self.distances0[range]
        } else {
            &self.upper_distances[range]
        }
    }

    /// Writes `neighbors` as the list of `node` at `layer`; the caller holds its lock.
    fn store(&self, node: u32, layer: u8, neighbors: &[Scored]) {
        let block = self.block(node, layer);
        let distances = self.block_distances(node, layer);
        debug_assert!(neighbors.len() < block.len());
        for ((slot, distance), neighbor) in block[1..].iter().zip(&distances[1..]).zip(neighbors) {
            slot.store(neighbor.node, Relaxed);
            distance.store(neighbor.distance.to_bits(), Relaxed);
        }
        block[0].store(neighbors.len() as u32, Relaxed);
    }

    /// Inserts `node` (already in the vector array) into the graph.
    fn insert(&self, node: u32, scratch: &mut SearchScratch, work: &mut Work) {
        let level = self.levels[node as usize];
        let mut entry_guard = Some(lock(&self.entry));
        let (entry, top) = *entry_guard.as_deref().unwrap_or(&(0, 0));
        if level <= top {
            entry_guard = None;
        }
        let space = self.space.with_query(self.space.row(node));
        let mut current = Scored {
            distance: space.distance(entry),
            node: entry,
        };
        for layer in (level.saturating_add(1)..=top).rev() {
            current = greedy(self, &space, current, layer);
        }
        for layer in (0..=level.min(top)).rev() {
            scratch.visited.reset(self.levels.len());
            beam(
                self,
                scratch,
                &space,
                current,
                self.ef_construction,
                layer,
                &|_| true,
            );
            work.candidates.clear();
            work.candidates.extend(scratch.results.drain());
            work.candidates.sort_unstable();
            current = work.candidates[0];
            select_neighbors(&space, &work.candidates, self.m, &mut work.selected);
            {
                let _guard = lock(&self.locks[node as usize]);
                self.store(node, layer, &work.selected);
            }
            let max = if layer == 0 { self.m0 } else { self.m };
            for index in 0..work.selected.len() {
                let neighbor = work.selected[index];
                // Every metric here is symmetric: the distance from the neighbour to the
                // node is the one the node chose it by.
                self.link(neighbor.node, node, neighbor.distance, layer, max, work);
            }
        }
        if let Some(mut guard) = entry_guard {
            *guard = (node, level);
        }
    }

    /// Adds `node` to the list of `target` at `layer`, pruning with the heuristic when the
    /// list is full.
    fn link(&self, target: u32, node: u32, distance: f32, layer: u8, max: usize, work: &mut Work) {
        let _guard = lock(&self.locks[target as usize]);
        let block = self.block(target, layer);
        let distances = self.block_distances(target, layer);
        let count = (block[0].load(Relaxed) as usize).min(block.len() - 1);
        if block[1..1 + count]
            .iter()
            .any(|id| id.load(Relaxed) == node)
        {
            return;
        }
        if count < max {
            block[1 + count].store(node, Relaxed);
            distances[1 + count].store(distance.to_bits(), Relaxed);
            block[0].store(count as u32 + 1, Relaxed);
            return;
        }
        let space = self.space.with_query(self.space.row(target));
        work.pruned.clear();
        work.pruned.extend(
            block[1..1 + count]
                .iter()
                .zip(&distances[1..])
                .map(|(id, distance)| Scored {
                    distance: f32::from_bits(distance.load(Relaxed)),
                    node: id.load(Relaxed),
                })
                .chain(std::iter::once(Scored { distance, node })),
        );
        work.pruned.sort_unstable();
        select_neighbors(&space, &work.pruned, max, &mut work.selected_for_link);
        self.store(target, layer, &work.selected_for_link);
    }
}

/// A worker's reusable buffers.
#[derive(Default)]
struct Work {
    candidates: Vec<Scored>,
    selected: Vec<Scored>,
    pruned: Vec<Scored>,
    selected_for_link: Vec<Scored>,
}

impl Hnsw {
    /// Builds an index over `vectors` (row-major, `dim` components per row), copied into
    /// the index's own padded rows (normalised for cosine). Node `i` is row `i`; `labels[i]`
    /// is its caller-given id (default: `i`).
    pub fn build(
        dim: usize,
        vectors: &[f32],
        labels: Option<&[u64]>,
        params: &BuildParams,
    ) -> Result<Hnsw, IndexError> {
        check_params(dim, params)?;
        if !vectors.len().is_multiple_of(dim) {
            return Err(IndexError::DimensionMismatch {
                expected: dim,
                actual: vectors.len() % dim,
            });
        }
        let count = check_count(vectors.len() / dim)?;
        let stride = vector_stride(dim);
        let mut stored = Store::<f32>::zeroed(count * stride);
        for (row, source) in stored
            .chunks_exact_mut(stride)
            .zip(vectors.chunks_exact(dim))
        {
            row[..dim].copy_from_slice(source);
            if params.metric.normalizes() {
                normalize(&mut row[..dim]);
            }
        }
        Self::build_rows(dim, Store::from_avec(stored), false, labels, params)
    }

    /// Builds an index over the caller's rows, in place: `rows` holds one row of
    /// [`vector_stride`]`(dim)` floats per node (the first `dim` are the vector), typically
    /// an SSTable's vector region seen through its file mapping. Nothing is copied; the
    /// index keeps `rows` and [`Hnsw::save`] leaves them out of the file
    /// ([`Hnsw::load_over`] takes them back). For cosine the rows must already be unit
    /// vectors (or zero): a row whose squared norm is off by more than 10⁻³ is refused.
    pub fn build_over(
        dim: usize,
        rows: Store<f32>,
        labels: Option<&[u64]>,
        params: &BuildParams,
    ) -> Result<Hnsw, IndexError> {
        check_params(dim, params)?;
        let stride = vector_stride(dim);
        if !rows.len().is_multiple_of(stride) {
            return Err(IndexError::InvalidParameter(format!(
                "{} floats are not whole rows of {stride}",
                rows.len()
            )));
        }
        check_count(rows.len() / stride)?;
        if params.metric.normalizes() {
            let unit = |row: &[f32]| {
                let squared: f32 = row[..dim].iter().map(|x| x * x).sum();
                squared == 0.0 || (squared - 1.0).abs() <= 1e-3 || !squared.is_finite()
            };
            if let Some(row) = rows.chunks_exact(stride).position(|row| !unit(row)) {
                return Err(IndexError::InvalidParameter(format!(
                    "row {row} is not a unit vector; cosine rows must be stored normalised"
                )));
            }
        }
        Self::build_rows(dim, rows, true, labels, params)
    }

    /// The build proper, over rows already laid out (and normalised for cosine).
    fn build_rows(
        dim: usize,
        stored: Store<f32>,
        external: bool,
        labels: Option<&[u64]>,
        params: &BuildParams,
    ) -> Result<Hnsw, IndexError> {
        let stride = vector_stride(dim);
        let count = stored.len() / stride;
        if let Some(row) = stored
            .chunks_exact(stride)
            .position(|row| !row[..dim].iter().all(|x| x.is_finite()))
        {
            return Err(IndexError::NotFinite { row });
        }
        let labels: Vec<u64> = match labels {
            Some(labels) if labels.len() == count => labels.to_vec(),
            Some(labels) => {
                return Err(IndexError::InvalidParameter(format!(
                    "{} labels for {count} vectors",
                    labels.len()
                )))
            }
            None => (0..count as u64).collect(),
        };

        let kernels = Kernels::active();
        let (quantizer, codes) = match params.quantization {
            Quantization::None => (None, Store::<i8>::zeroed(0)),
            Quantization::ScalarI8 => {
                // Trained on what is stored (normalised rows for cosine).
                let quantizer = ScalarQuantizer::train_strided(params.metric, dim, stride, &stored);
                let code_stride = code_stride(dim);
                let mut codes = Store::<i8>::zeroed(count * code_stride);
                for (code_row, row) in codes
                    .chunks_exact_mut(code_stride)
                    .zip(stored.chunks_exact(stride))
                {
                    quantizer.encode(&row[..dim], &mut code_row[..dim]);
                }
                (Some(quantizer), codes)
            }
        };

        let m = params.m;
        let m0 = 2 * m;
        let levels = draw_levels(count, m, params.seed);
        let (upper_offsets, upper_length) = upper_layout(&levels, m).ok_or_else(|| {
            IndexError::InvalidParameter("the upper layers outgrow 32-bit offsets".into())
        })?;
        let links0_length = count.checked_mul(1 + m0).filter(|&l| l < u32::MAX as usize);
        let Some(links0_length) = links0_length else {
            return Err(IndexError::InvalidParameter(format!(
                "{count} nodes × {} links outgrow the layer-0 array",
                1 + m0
            )));
        };

        let (links0, upper_links, entry, top_level) = {
            let builder = Builder {
                space: ExactSpace {
                    metric: params.metric,
                    kernels,
                    vectors: &stored,
                    stride,
                    dim,
                    query: &[],
                },
                m,
                m0,
                ef_construction: params.ef_construction.max(m),
                levels: &levels,
                upper_offsets: &upper_offsets,
                links0: huge_vec(links0_length, || AtomicU32::new(0)),
                upper_links: huge_vec(upper_length, || AtomicU32::new(0)),
                distances0: huge_vec(links0_length, || AtomicU32::new(0)),
                upper_distances: huge_vec(upper_length, || AtomicU32::new(0)),
                locks: huge_vec(count, || Mutex::new(())),
                entry: Mutex::new((0, levels.first().copied().unwrap_or(0))),
            };
            let threads = match params.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                threads => threads,
            }
            .min(count.max(1));
            let next = AtomicUsize::new(1);
            let worker = || {
                let mut scratch = SearchScratch::new();
                let mut work = Work::default();
                loop {
                    let node = next.fetch_add(1, Relaxed);
                    if node >= count {
                        break;
                    }
                    builder.insert(node as u32, &mut scratch, &mut work);
                }
            };
            if threads <= 1 {
                worker();
            } else {
                std::thread::scope(|scope| {
                    for _ in 0..threads {
                        scope.spawn(worker);
                    }
                });
            }
            let (entry, top_level) = *lock(&builder.entry);
            let into_store = |links: Vec<AtomicU32>| {
                let mut values = Store::<u32>::zeroed(links.len());
                for (value, link) in values.iter_mut().zip(links) {
                    *value = link.into_inner();
                }
                Store::from_avec(values)
            };
            (
                into_store(builder.links0),
                into_store(builder.upper_links),
                entry,
                top_level,
            )
        };

        Ok(Hnsw {
            metric: params.metric,
            dim,
            vector_stride: stride,
            code_stride: code_stride(dim),
            m,
            m0,
            ef_construction: params.ef_construction,
            seed: params.seed,
            count,
            entry: if count == 0 { NO_NODE } else { entry },
            top_level,
            vectors: stored,
            external,
            quantizer,
            codes: Store::from_avec(codes),
            labels: Store::owned(&labels),
            levels: Store::owned(&levels),
            upper_offsets: Store::owned(&upper_offsets),
            links0,
            upper_links,
            tombstones: NodeSet::with_capacity(count),
            kernels,
        })
    }
}

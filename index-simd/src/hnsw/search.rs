//! Search: a greedy descent through the upper layers, then the paper's beam search at layer
//! 0, optionally on `i8` codes with an `f32` re-rank, optionally filtered.
//!
//! Nothing is allocated per query once a [`SearchScratch`] has served one query of the same
//! size: the visited set is an epoch-stamped array (bumping the epoch clears it), and the
//! heaps and buffers keep their capacity.
//!
//! Filters: a node that the filter refuses (or that is deleted) is still walked through, so
//! the graph stays connected, but never enters the results; the walk therefore goes on until
//! it has `ef` admissible results, which widens it by itself as the filter gets more
//! selective. When the filter knows its size and the allowed nodes are fewer than such a
//! walk would visit, an exact scan of just those nodes is both faster and exact.

use super::{block_range, Hnsw, IndexError, EF_MAX, NO_NODE};
use crate::checksums::{RowChecksums, RowDamage};
use crate::distance::Kernels;
use crate::filter::Filter;
use crate::metric::{normalize, Metric};
use crate::store::Store;
use std::cell::{Cell, RefCell};
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// One result: the node, its label and its distance to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbor {
    /// The node (local id: the row its vector was given in).
    pub node: u32,
    /// The caller's id of the node.
    pub label: u64,
    /// The distance to the query (exact `f32`, also after a quantized walk).
    pub distance: f32,
}

/// How a search runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParams {
    /// Results wanted.
    pub k: usize,
    /// The beam width at layer 0 (raised to `k` when smaller). Larger is slower and finds
    /// more of the true neighbours.
    pub ef: usize,
    /// With quantization: re-rank the best `k × rerank_factor` candidates of the walk with
    /// the `f32` vectors (at least `k`, at most `ef`).
    pub rerank_factor: usize,
}

impl Default for SearchParams {
    fn default() -> SearchParams {
        SearchParams {
            k: 10,
            ef: 64,
            rerank_factor: 4,
        }
    }
}

/// A node and its distance, ordered by distance (then node, so that ties are deterministic;
/// `total_cmp`, so that even a NaN has a place).
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    /// The distance.
    pub distance: f32,
    /// The node (or row).
    pub node: u32,
}

impl PartialEq for Scored {
    fn eq(&self, other: &Scored) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Scored) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Scored) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.node.cmp(&other.node))
    }
}

/// A set of visited nodes that is cleared in O(1): a node is visited when its tag equals the
/// current epoch.
#[derive(Debug, Default)]
pub(crate) struct Visited {
    tags: Vec<u16>,
    epoch: u16,
}

impl Visited {
    /// Empties the set and makes room for nodes below `count`.
    pub fn reset(&mut self, count: usize) {
        if self.tags.len() < count {
            // Grown once per index size; huge pages, since every query touches it at random.
            self.tags = crate::store::huge_vec(count, || 0);
            self.epoch = 0;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Every 65,535 queries the tags are really cleared, so no stale tag can match.
            self.tags.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `node`; true when it was not visited yet.
    #[inline(always)]
    pub fn insert(&mut self, node: u32) -> bool {
        let tag = &mut self.tags[node as usize];
        let fresh = *tag != self.epoch;
        *tag = self.epoch;
        fresh
    }
}

/// The reusable state of a search (one per thread).
#[derive(Debug, Default)]
pub struct SearchScratch {
    pub(crate) visited: Visited,
    pub(crate) candidates: BinaryHeap<Reverse<Scored>>,
    pub(crate) results: BinaryHeap<Scored>,
    pub(crate) fresh: Vec<u32>,
    query: Vec<f32>,
    query_codes: Vec<i8>,
    /// One row read for a re-rank (`RowsSpace`), kept between searches.
    row: Vec<f32>,
    ranked: Vec<Scored>,
}

impl SearchScratch {
    /// An empty scratch; it grows to the index's size on first use.
    pub fn new() -> SearchScratch {
        SearchScratch::default()
    }
}

thread_local! {
    static SCRATCH: RefCell<SearchScratch> = RefCell::new(SearchScratch::new());
}

/// Distances from one query to nodes, and how to prefetch a node's data.
pub(crate) trait Space {
    fn distance(&self, node: u32) -> f32;
    fn prefetch(&self, node: u32);
}

/// Exact `f32` distances from `query` to rows of `vectors`.
pub(crate) struct ExactSpace<'a> {
    pub metric: Metric,
    pub kernels: &'static Kernels,
    pub vectors: &'a [f32],
    pub stride: usize,
    pub dim: usize,
    pub query: &'a [f32],
}

impl<'a> ExactSpace<'a> {
    /// Distances from `query` to the vectors of `index`.
    pub fn of(index: &'a Hnsw, query: &'a [f32]) -> ExactSpace<'a> {
        ExactSpace {
            metric: index.metric,
            kernels: index.kernels,
            vectors: &index.vectors,
            stride: index.vector_stride,
            dim: index.dim,
            query,
        }
    }

    /// The same rows, from another query.
    pub fn with_query<'b>(&self, query: &'b [f32]) -> ExactSpace<'b>
    where
        'a: 'b,
    {
        ExactSpace { query, ..*self }
    }

    /// The vector of `node`.
    #[inline(always)]
    pub fn row(&self, node: u32) -> &'a [f32] {
        let start = node as usize * self.stride;
        &self.vectors[start..start + self.dim]
    }
}

impl Space for ExactSpace<'_> {
    #[inline(always)]
    fn distance(&self, node: u32) -> f32 {
        self.metric
            .distance(self.kernels, self.query, self.row(node))
    }

    #[inline(always)]
    fn prefetch(&self, node: u32) {
        let start = node as usize * self.stride;
        if let Some(row) = self.vectors.get(start..start + self.dim) {
            prefetch_bytes(row.as_ptr().cast(), size_of_val(row));
        }
    }
}

/// Where a codes-only index ([`Hnsw::into_codes_only`]) reads the `f32` vector of a node to
/// re-rank it: the rows the index was built from, kept by the caller (an SSTable's vector
/// region, say). A row is `dim` floats, normalised for cosine as the build's were.
pub trait Rows {
    /// Copies the vector of `node` into `out` (`dim` floats); `Ok(false)` where the caller
    /// no longer has it (the node is then left out of the answer), an error where the row
    /// is damaged (the search then fails: a damaged row is never ranked). Read it without
    /// touching a mapping where the rows are mapped ([`Hnsw::read_vector`]): a search reads
    /// a few dozen rows scattered over all of them, and through a mapping each read would
    /// keep the pages around it resident.
    fn read(&self, node: u32, out: &mut [f32]) -> Result<bool, IndexError>;
}

/// An index's own rows, read without touching its mapping ([`Hnsw::read_vector`]): how an
/// `i8` index with mapped rows re-ranks.
struct OwnRows<'a>(&'a Hnsw);

impl Rows for OwnRows<'_> {
    fn read(&self, node: u32, out: &mut [f32]) -> Result<bool, IndexError> {
        self.0.read_vector(node, out)
    }
}

/// Exact distances to rows read from `rows` one at a time into `row`; the first read that
/// failed is kept in `failure` (its distance is infinite meanwhile).
struct RowsSpace<'a> {
    metric: Metric,
    kernels: &'static Kernels,
    rows: &'a dyn Rows,
    query: &'a [f32],
    row: RefCell<Vec<f32>>,
    failure: RefCell<Option<IndexError>>,
}

impl RowsSpace<'_> {
    /// The scratch row back, or the first failed read.
    fn finish(self) -> Result<Vec<f32>, IndexError> {
        match self.failure.into_inner() {
            Some(error) => Err(error),
            None => Ok(self.row.into_inner()),
        }
    }
}

impl Space for RowsSpace<'_> {
    fn distance(&self, node: u32) -> f32 {
        if self.failure.borrow().is_some() {
            return f32::INFINITY; // the search fails already: no more reads
        }
        let mut row = self.row.borrow_mut();
        row.resize(self.query.len(), 0.0);
        match self.rows.read(node, &mut row) {
            Ok(true) => self.metric.distance(self.kernels, self.query, &row),
            Ok(false) => f32::INFINITY,
            Err(error) => {
                self.failure.borrow_mut().get_or_insert(error);
                f32::INFINITY
            }
        }
    }

    // The rows are read, not touched where they lie: nothing to prefetch.
    fn prefetch(&self, _node: u32) {}
}

/// [`ExactSpace`] over rows with checksums ([`Hnsw::check_rows_with`]): each row's units
/// are verified before its first distance; a damaged one is kept in `damage` (its distance
/// is infinite meanwhile) and fails the search.
struct CheckedSpace<'a> {
    exact: ExactSpace<'a>,
    checksums: &'a RowChecksums,
    rows: &'a Store<f32>,
    damage: Cell<Option<RowDamage>>,
}

impl CheckedSpace<'_> {
    #[cold]
    fn verify(&self, node: u32) -> bool {
        if self.damage.get().is_some() {
            return false; // the search fails already: no more checks (nor reports)
        }
        match self.checksums.check(self.rows, node) {
            Ok(()) => true,
            Err(damage) => {
                self.damage.set(Some(damage));
                false
            }
        }
    }
}

impl Space for CheckedSpace<'_> {
    #[inline(always)]
    fn distance(&self, node: u32) -> f32 {
        if self.checksums.is_verified(node) || self.verify(node) {
            self.exact.distance(node)
        } else {
            f32::INFINITY
        }
    }

    #[inline(always)]
    fn prefetch(&self, node: u32) {
        self.exact.prefetch(node);
    }
}

/// Read access to neighbour lists.
pub(crate) trait Links {
    /// Calls `visit` with every neighbour of `node` at `layer`.
    fn for_each_neighbor(&self, node: u32, layer: u8, visit: impl FnMut(u32));

    /// Starts loading the neighbour list of `node` at `layer`.
    fn prefetch_neighbors(&self, _node: u32, _layer: u8) {}
}

impl Links for Hnsw {
    #[inline(always)]
    fn for_each_neighbor(&self, node: u32, layer: u8, visit: impl FnMut(u32)) {
        self.neighbors(node, layer).iter().copied().for_each(visit);
    }

    #[inline(always)]
    fn prefetch_neighbors(&self, node: u32, layer: u8) {
        if layer == 0 {
            if let Some(block) = self.links0.get(block_range(self.m, &[], node, 0)) {
                prefetch_bytes(block.as_ptr().cast(), size_of_val(block));
            }
        }
    }
}

/// Distances on `i8` codes.
struct CodeSpace<'a> {
    index: &'a Hnsw,
    query: &'a [i8],
}

impl Space for CodeSpace<'_> {
    #[inline(always)]
    fn distance(&self, node: u32) -> f32 {
        self.index
            .metric
            .code_distance(self.index.kernels, self.query, self.index.code_row(node))
    }

    #[inline(always)]
    fn prefetch(&self, node: u32) {
        let start = node as usize * self.index.code_stride;
        if let Some(row) = self.index.codes.get(start..start + self.index.dim) {
            prefetch_bytes(row.as_ptr().cast(), row.len());
        }
    }
}

/// The most cache lines of one row that a prefetch asks for (a 128-d `f32` row is 8); the
/// hardware's own prefetcher follows the rest of a longer row once it is read.
const PREFETCH_LINES_MAX: usize = 8;

/// How many neighbours ahead of the distance being computed the beam prefetches. On
/// 100k × 128 codes, 2 ahead was clearly slower than 4, 8 or all at once; 8 and all at once
/// were within the noise of this machine, and a bounded window keeps the outstanding loads
/// within what the line-fill buffers hold on larger rows.
const PREFETCH_AHEAD: usize = 8;

/// Asks the CPU to start loading the cache lines of `bytes` bytes at `address`.
#[inline(always)]
pub(crate) fn prefetch_bytes(address: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let lines = bytes.div_ceil(64).min(PREFETCH_LINES_MAX);
        for line in 0..lines {
            // SAFETY: SSE is part of the x86-64 baseline, and a prefetch is only a hint: it
            // never faults, whatever the address (`wrapping_add` keeps the arithmetic defined).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(address.wrapping_add(line * 64).cast()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (address, bytes);
    }
}

impl Hnsw {
    /// The `k` nearest live nodes to `query` with beam width `ef`, on this thread's scratch.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Neighbor>, IndexError> {
        let params = SearchParams {
            k,
            ef,
            ..SearchParams::default()
        };
        let mut results = Vec::with_capacity(k);
        SCRATCH.with_borrow_mut(|scratch| {
            self.search_with(scratch, query, &params, None, &mut results)
        })?;
        Ok(results)
    }

    /// The `k` nearest live nodes that `filter` allows, on this thread's scratch.
    pub fn search_filtered(
        &self,
        query: &[f32],
        params: &SearchParams,
        filter: &dyn Filter,
    ) -> Result<Vec<Neighbor>, IndexError> {
        let mut results = Vec::with_capacity(params.k);
        SCRATCH.with_borrow_mut(|scratch| {
            self.search_with(scratch, query, params, Some(filter), &mut results)
        })?;
        Ok(results)
    }

    /// The `k` nearest live nodes that `filter` (if any) allows, in an index that walks on
    /// `i8` codes, re-ranked with the caller's `rows`, on this thread's scratch. The search
    /// for a codes-only index ([`Hnsw::into_codes_only`]); an index holding its vectors
    /// re-ranks with its own and ignores `rows`.
    pub fn search_over_rows(
        &self,
        query: &[f32],
        params: &SearchParams,
        filter: Option<&dyn Filter>,
        rows: &dyn Rows,
    ) -> Result<Vec<Neighbor>, IndexError> {
        let mut results = Vec::with_capacity(params.k);
        SCRATCH.with_borrow_mut(|scratch| {
            self.search_inner(scratch, query, params, filter, Some(rows), &mut results)
        })?;
        Ok(results)
    }

    /// The full search: writes the `params.k` nearest live nodes that `filter` allows into
    /// `results`, nearest first, using `scratch` (which then holds no allocation to make for
    /// the next query on this index). A codes-only index is refused: it needs
    /// [`Hnsw::search_over_rows`].
    pub fn search_with(
        &self,
        scratch: &mut SearchScratch,
        query: &[f32],
        params: &SearchParams,
        filter: Option<&dyn Filter>,
        results: &mut Vec<Neighbor>,
    ) -> Result<(), IndexError> {
        self.search_inner(scratch, query, params, filter, None, results)
    }

    fn search_inner(
        &self,
        scratch: &mut SearchScratch,
        query: &[f32],
        params: &SearchParams,
        filter: Option<&dyn Filter>,
        rows: Option<&dyn Rows>,
        results: &mut Vec<Neighbor>,
    ) -> Result<(), IndexError> {
        results.clear();
        let rows = match (self.codes_only, rows) {
            (false, _) => None,
            (true, Some(rows)) => Some(rows),
            (true, None) => {
                return Err(IndexError::InvalidParameter(
                    "a codes-only index re-ranks with the caller's rows: search_over_rows".into(),
                ))
            }
        };
        if query.len() != self.dim {
            return Err(IndexError::DimensionMismatch {
                expected: self.dim,
                actual: query.len(),
            });
        }
        if !query.iter().all(|x| x.is_finite()) {
            return Err(IndexError::NotFinite { row: 0 });
        }
        if params.k == 0 || params.ef > EF_MAX || params.k > EF_MAX {
            return Err(IndexError::InvalidParameter(format!(
                "k must be in 1..={EF_MAX} and ef at most {EF_MAX} (k = {}, ef = {})",
                params.k, params.ef
            )));
        }
        if self.live_count() == 0 || self.entry == NO_NODE {
            return Ok(());
        }
        let mut query_buffer = std::mem::take(&mut scratch.query);
        query_buffer.clear();
        query_buffer.extend_from_slice(query);
        if self.metric.normalizes() {
            normalize(&mut query_buffer);
        }
        let query = query_buffer.as_slice();

        let outcome = match self.checksums.as_deref() {
            None => {
                let exact = ExactSpace::of(self, query);
                self.search_in(scratch, query, params, filter, rows, &exact, results)
            }
            Some(checksums) => {
                let exact = CheckedSpace {
                    exact: ExactSpace::of(self, query),
                    checksums,
                    rows: &self.vectors,
                    damage: Cell::new(None),
                };
                self.search_in(scratch, query, params, filter, rows, &exact, results)
                    .and_then(|()| {
                        exact
                            .damage
                            .get()
                            .map_or(Ok(()), |damage| Err(IndexError::Corrupt(damage)))
                    })
                    .and_then(|()| {
                        checksums
                            .check_lost(&self.vectors)
                            .map_err(IndexError::Corrupt)
                    })
            }
        };
        scratch.query = query_buffer;
        // A page lost under the walk (links, codes or rows read as zeros) taints the answer,
        // whatever was verified.
        let outcome = outcome.and_then(|()| self.check_pages());
        if outcome.is_err() {
            results.clear();
        }
        outcome
    }

    /// The search after its checks, the query normalised: `exact` gives the `f32`
    /// distances to the index's own rows, `rows` are the caller's (a codes-only index).
    #[allow(clippy::too_many_arguments)]
    fn search_in<E: Space>(
        &self,
        scratch: &mut SearchScratch,
        query: &[f32],
        params: &SearchParams,
        filter: Option<&dyn Filter>,
        rows: Option<&dyn Rows>,
        exact: &E,
        results: &mut Vec<Neighbor>,
    ) -> Result<(), IndexError> {
        let ef = params.ef.max(params.k);
        let allowed_count = filter.and_then(|filter| filter.allowed_count());
        if let (Some(filter), Some(allowed)) = (filter, allowed_count) {
            if self.prefers_scan(allowed, ef) {
                match rows {
                    None => self.scan(scratch, exact, params.k, filter, results),
                    Some(rows) => {
                        let space = self.rows_space(rows, query, std::mem::take(&mut scratch.row));
                        self.scan(scratch, &space, params.k, filter, results);
                        scratch.row = space.finish()?;
                    }
                }
                return Ok(());
            }
        }

        let accepts_all = filter.is_none() && self.tombstones.is_empty();
        let accept = |node: u32| {
            accepts_all || (!self.is_deleted(node) && filter.is_none_or(|f| f.allows(node)))
        };
        match &self.quantizer {
            None => {
                self.walk(scratch, exact, ef, &accept);
                scratch.ranked.clear();
                scratch.ranked.extend(scratch.results.drain());
                scratch.ranked.sort_unstable();
            }
            Some(quantizer) => {
                let mut codes = std::mem::take(&mut scratch.query_codes);
                codes.resize(self.dim, 0);
                quantizer.encode_query(query, &mut codes);
                self.walk(
                    scratch,
                    &CodeSpace {
                        index: self,
                        query: &codes,
                    },
                    ef,
                    &accept,
                );
                scratch.query_codes = codes;
                scratch.ranked.clear();
                scratch.ranked.extend(scratch.results.drain());
                scratch.ranked.sort_unstable();
                let rerank = (params.k * params.rerank_factor.max(1)).clamp(params.k, ef);
                scratch.ranked.truncate(rerank);
                // Mapped rows are read for the candidates only (see `Rows`); rows in memory
                // are used where they are.
                let own = OwnRows(self);
                let rows = rows.or_else(|| self.vectors.is_mapped().then_some(&own as &dyn Rows));
                match rows {
                    None => rerank_with(exact, &mut scratch.ranked),
                    Some(rows) => {
                        let space = self.rows_space(rows, query, std::mem::take(&mut scratch.row));
                        rerank_with(&space, &mut scratch.ranked);
                        scratch.row = space.finish()?;
                        // Nodes whose rows the caller no longer has.
                        scratch.ranked.retain(|scored| scored.distance.is_finite());
                    }
                }
            }
        }
        results.extend(scratch.ranked.iter().take(params.k).map(|scored| Neighbor {
            node: scored.node,
            label: self.labels[scored.node as usize],
            distance: scored.distance,
        }));
        Ok(())
    }

    /// Whether an exact scan of `allowed` nodes costs less than a filtered walk: the walk
    /// admits about `allowed / count` of the nodes it reaches, so it reaches about
    /// `ef · count / allowed` of them to fill its beam, each with up to `m0` distances.
    fn prefers_scan(&self, allowed: usize, ef: usize) -> bool {
        let walk_distances = (ef * self.m0) as f64 * self.count as f64 / allowed.max(1) as f64;
        allowed as f64 <= walk_distances
    }

    /// Distances to `rows`, read one at a time into `row` (the scratch's, handed back after).
    fn rows_space<'a>(&self, rows: &'a dyn Rows, query: &'a [f32], row: Vec<f32>) -> RowsSpace<'a> {
        RowsSpace {
            metric: self.metric,
            kernels: self.kernels,
            rows,
            query,
            row: RefCell::new(row),
            failure: RefCell::new(None),
        }
    }

    /// Exact top-`k` over the nodes `filter` allows, with the distances of `exact`.
    fn scan<S: Space>(
        &self,
        scratch: &mut SearchScratch,
        exact: &S,
        k: usize,
        filter: &dyn Filter,
        results: &mut Vec<Neighbor>,
    ) {
        // The allowed live nodes first, so that the rows a few places ahead can be
        // prefetched while one is compared (the rows are scattered: each is a cold miss).
        let nodes = &mut scratch.fresh;
        nodes.clear();
        filter.for_each_allowed(self.count as u32, &mut |node| {
            if !self.is_deleted(node) {
                nodes.push(node);
            }
        });
        let heap = &mut scratch.results;
        heap.clear();
        for_each_distance(exact, nodes, |node, distance| {
            if !distance.is_finite() {
                // A row the caller no longer has (codes-only index).
            } else if heap.len() < k {
                heap.push(Scored { distance, node });
            } else if heap.peek().is_some_and(|worst| distance < worst.distance) {
                heap.pop();
                heap.push(Scored { distance, node });
            }
        });
        scratch.ranked.clear();
        scratch.ranked.extend(heap.drain());
        scratch.ranked.sort_unstable();
        results.extend(scratch.ranked.iter().map(|scored| Neighbor {
            node: scored.node,
            label: self.labels[scored.node as usize],
            distance: scored.distance,
        }));
    }

    /// Descends from the entry point to layer 0 and leaves the `ef` best admissible nodes
    /// in `scratch.results`.
    fn walk<S: Space>(
        &self,
        scratch: &mut SearchScratch,
        space: &S,
        ef: usize,
        accept: &impl Fn(u32) -> bool,
    ) {
        let mut current = Scored {
            distance: space.distance(self.entry),
            node: self.entry,
        };
        for layer in (1..=self.top_level).rev() {
            current = greedy(self, space, current, layer);
        }
        scratch.visited.reset(self.count);
        beam(self, scratch, space, current, ef, 0, accept);
    }
}

/// Replaces the code distances of `ranked` by exact ones and sorts it again. The rows are
/// cold (the walk read codes): all of them are asked for first.
fn rerank_with<S: Space>(exact: &S, ranked: &mut [Scored]) {
    for candidate in ranked.iter() {
        exact.prefetch(candidate.node);
    }
    for candidate in ranked.iter_mut() {
        candidate.distance = exact.distance(candidate.node);
    }
    ranked.sort_unstable();
}

/// Moves to the nearest neighbour while that gets closer to the query.
pub(crate) fn greedy<L: Links, S: Space>(
    links: &L,
    space: &S,
    current: Scored,
    layer: u8,
) -> Scored {
    greedy_within(links, space, current, layer, |_| true)
}

/// [`greedy`] through the nodes `within` admits only (`current` must be one).
pub(crate) fn greedy_within<L: Links, S: Space>(
    links: &L,
    space: &S,
    mut current: Scored,
    layer: u8,
    within: impl Fn(u32) -> bool,
) -> Scored {
    loop {
        let before = current.node;
        links.for_each_neighbor(before, layer, |neighbor| {
            if within(neighbor) {
                let distance = space.distance(neighbor);
                if distance < current.distance {
                    current = Scored {
                        distance,
                        node: neighbor,
                    };
                }
            }
        });
        if current.node == before {
            return current;
        }
    }
}

/// The paper's beam search at `layer` from `entry`: afterwards `scratch.results` holds the
/// best `ef` nodes that `accept` admits. The visited set must have been reset.
pub(crate) fn beam<L: Links, S: Space>(
    links: &L,
    scratch: &mut SearchScratch,
    space: &S,
    entry: Scored,
    ef: usize,
    layer: u8,
    accept: &impl Fn(u32) -> bool,
) {
    let SearchScratch {
        visited,
        candidates,
        results,
        fresh,
        ..
    } = scratch;
    candidates.clear();
    results.clear();
    visited.insert(entry.node);
    candidates.push(Reverse(entry));
    if accept(entry.node) {
        results.push(entry);
    }
    while let Some(Reverse(current)) = candidates.pop() {
        if let Some(Reverse(next)) = candidates.peek() {
            links.prefetch_neighbors(next.node, layer);
        }
        if results.len() >= ef
            && results
                .peek()
                .is_some_and(|w| current.distance > w.distance)
        {
            break;
        }
        // Pick the unvisited neighbours, then compute their distances while the data of
        // the next few is loading.
        fresh.clear();
        links.for_each_neighbor(current.node, layer, |neighbor| {
            if visited.insert(neighbor) {
                fresh.push(neighbor);
            }
        });
        for_each_distance(space, fresh, |neighbor, distance| {
            let bound = results.peek().map_or(f32::INFINITY, |worst| worst.distance);
            if results.len() < ef || distance < bound {
                let scored = Scored {
                    distance,
                    node: neighbor,
                };
                candidates.push(Reverse(scored));
                if accept(neighbor) {
                    results.push(scored);
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        });
    }
}

/// Calls `visit` with each of `nodes` and its distance, in order, prefetching the data of
/// the node [`PREFETCH_AHEAD`] places on while the current one is compared: a window of
/// loads in flight rather than all at once, so the CPU's line-fill buffers do not fill up
/// and stall the loop.
#[inline(always)]
fn for_each_distance<S: Space>(space: &S, nodes: &[u32], mut visit: impl FnMut(u32, f32)) {
    for &node in nodes.iter().take(PREFETCH_AHEAD) {
        space.prefetch(node);
    }
    for (position, &node) in nodes.iter().enumerate() {
        if let Some(&next) = nodes.get(position + PREFETCH_AHEAD) {
            space.prefetch(next);
        }
        visit(node, space.distance(node));
    }
}

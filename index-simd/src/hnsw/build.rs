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
//!
//! With more, the calling thread is one of the workers and the others are helpers; with
//! [`Helpers::Idle`] the helpers run under `SCHED_IDLE` on the CPUs the calling thread may
//! use, so the kernel gives them only CPU time nothing else wants: a build then uses the idle cores
//! and gives way to foreground work (the LEUs) at once. Caveat: idle priority has no
//! inheritance, so a helper preempted while it holds a node's lock (or the entry lock, for
//! a node above the top level) stalls the workers that need that lock until it runs again.
//! A helper preempted between two layers of an insertion does no harm to the graph: the
//! node is linked from others only once its own lists are written on every layer. A build can be
//! cancelled ([`BuildControl::cancel`]): the workers stop claiming nodes and it returns
//! [`IndexError::Cancelled`].

use super::search::{beam, greedy, greedy_within, ExactSpace, Links, Scored, SearchScratch, Space};
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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

/// How vectors are kept for the graph walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    /// The walk compares `f32` vectors.
    #[default]
    None,
    /// The walk compares `i8` codes and re-ranks with `f32` (the vectors are kept too).
    ScalarI8,
}

/// Rounds of re-inserting the nodes a parallel build left unreachable (each round inserts
/// all of them; one is almost always enough).
const REPAIR_ROUNDS_MAX: usize = 4;

/// How the helper threads of a parallel build are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Helpers {
    /// As the calling thread.
    #[default]
    Normal,
    /// `SCHED_IDLE`: only on CPU time no other thread wants (the calling thread keeps its
    /// own priority, so the build always progresses).
    Idle,
}

/// What a running build answers to: a cancel flag, and how its helpers are scheduled.
#[derive(Debug, Clone, Default)]
pub struct BuildControl {
    /// Set it to stop the build: in the insertion phase (nearly all of a build) the workers
    /// stop claiming nodes, each within the insertion it is in, and the build returns
    /// [`IndexError::Cancelled`]; the repair pass after it looks between insertions too.
    /// The short phases before (quantizer training, carrying a seed graph) do not.
    pub cancel: Option<Arc<AtomicBool>>,
    /// How the helper threads run.
    pub helpers: Helpers,
}

impl PartialEq for BuildControl {
    fn eq(&self, other: &Self) -> bool {
        let same_flag = match (&self.cancel, &other.cancel) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        same_flag && self.helpers == other.helpers
    }
}

impl Eq for BuildControl {}

impl BuildControl {
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|flag| flag.load(Relaxed))
    }
}

/// How a graph is built.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Cancellation and the helpers' scheduling.
    pub control: BuildControl,
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
            control: BuildControl::default(),
        }
    }
}

/// An earlier graph a build starts from ([`Hnsw::build_over_seeded`]): the nodes of the new
/// index that hold exactly the vector of one of its nodes are *carried*, keeping that node's
/// level and links (translated to the new ids, and repaired around the nodes not carried as
/// [`Hnsw::compact`] repairs around deleted ones); only the other nodes are inserted. A
/// merge of segments then costs the insertion of what is new, not a whole build (Lucene
/// seeds a merged segment's graph from its largest input the same way).
#[derive(Debug, Clone, Copy)]
pub struct Seed<'a> {
    /// The earlier graph: the same metric, dimension and `m`.
    pub graph: &'a Hnsw,
    /// For each node of the new index, the node of `graph` with the same vector, or
    /// `u32::MAX`. A node whose row differs from that node's vector is inserted instead.
    pub carried: &'a [u32],
}

/// The paper's level draw: `⌊-ln(U) · mL⌋` with `mL = 1 / ln m`, capped.
pub(crate) fn draw_levels(count: usize, m: usize, seed: u64) -> Vec<u8> {
    let level_scale = 1.0 / (m as f64).ln();
    let mut random = SplitMix::new(seed);
    (0..count)
        .map(|_| (-random.unit().ln() * level_scale).min(f64::from(LEVEL_MAX)) as u8)
        .collect()
}

/// Puts the nodes a seeded build inserts in a random order (Fisher–Yates, from the build's
/// seed). In key order, new nodes beside the seed graph's region (ids before or after its
/// own, with vectors that follow the ids) link to one another and not to the seed's nodes,
/// whose lists have no room for them: the walk from the seed's entry then reaches them only
/// far away, and a greedy search strands (points on a line inserted before a carried run
/// were unreachable). In random order each new node meets neighbours on both sides.
fn shuffle(order: &mut [u32], seed: u64) {
    let mut random = SplitMix::new(seed ^ 0x0DDE_C0DE_5EED_0001);
    for last in (1..order.len()).rev() {
        let pick = (random.next_u64() % (last as u64 + 1)) as usize;
        order.swap(last, pick);
    }
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

/// Checks the caller's rows for `build_over` and `build_over_seeded`: whole rows, a count an
/// index can hold, and unit vectors (or zero) for cosine.
fn check_rows(dim: usize, rows: &[f32], params: &BuildParams) -> Result<(), IndexError> {
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
    Ok(())
}

/// `count` if an index can hold that many nodes (ids are `u32`, `NO_NODE` reserved).
fn check_count(count: usize) -> Result<usize, IndexError> {
    if count >= NO_NODE as usize {
        return Err(IndexError::InvalidParameter(format!(
            "an index holds fewer than {NO_NODE} vectors, not {count}"
        )));
    }
    Ok(count)
}

/// Checks the parameters of a build.
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

/// Checks a seed against the build and returns, for each new node, the seed node it carries
/// (`NO_NODE` for one to insert, and for one whose row differs from that node's vector).
fn carried_nodes(
    dim: usize,
    rows: &[f32],
    params: &BuildParams,
    seed: Seed<'_>,
) -> Result<Vec<u32>, IndexError> {
    let graph = seed.graph;
    let stride = vector_stride(dim);
    let count = rows.len() / stride;
    if graph.metric != params.metric || graph.m != params.m || graph.dim != dim {
        return Err(IndexError::InvalidParameter(format!(
            "a seed graph must have the build's metric, m and dimension ({:?}, {}, {dim}), not \
             ({:?}, {}, {})",
            params.metric, params.m, graph.metric, graph.m, graph.dim
        )));
    }
    if seed.carried.len() != count {
        return Err(IndexError::InvalidParameter(format!(
            "{} carried entries for {count} nodes",
            seed.carried.len()
        )));
    }
    let mut taken = NodeSet::with_capacity(graph.count);
    let mut carried = Vec::with_capacity(count);
    let mut code = Vec::new();
    for (node, &old) in seed.carried.iter().enumerate() {
        if old == NO_NODE {
            carried.push(NO_NODE);
            continue;
        }
        if old as usize >= graph.count || !taken.insert(old) {
            return Err(IndexError::InvalidParameter(format!(
                "node {node} carries seed node {old}: out of range or carried twice"
            )));
        }
        let row = &rows[node * stride..node * stride + dim];
        let same = match (&graph.quantizer, graph.codes_only) {
            // No vectors to compare: the row must at least encode to the node's codes (the
            // caller compared the vectors where it keeps them).
            (Some(quantizer), true) => {
                code.resize(dim, 0);
                quantizer.encode(row, &mut code);
                code[..] == *graph.code_row(old)
            }
            _ => row
                .iter()
                .zip(graph.row(old))
                .all(|(a, b)| a.to_bits() == b.to_bits()),
        };
        carried.push(if same { old } else { NO_NODE });
    }
    Ok(carried)
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
        self.insert_from(node, Descent::Greedy, scratch, work);
    }

    /// Inserts `node`, finding its neighbours on each layer as `descent` says.
    fn insert_from(
        &self,
        node: u32,
        descent: Descent<'_>,
        scratch: &mut SearchScratch,
        work: &mut Work,
    ) {
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
            current = match descent {
                Descent::Greedy => greedy(self, &space, current, layer),
                Descent::Within(within) => greedy_within(self, &space, current, layer, within),
            };
        }
        let layers = usize::from(level.min(top)) + 1;
        let mut chosen = std::mem::take(&mut work.chosen);
        chosen.resize_with(chosen.len().max(layers), Vec::new);
        for list in &mut chosen[..layers] {
            list.clear();
        }
        for layer in (0..=level.min(top)).rev() {
            scratch.visited.reset(self.levels.len());
            let ef = self.ef_construction;
            match descent {
                // (The common case's filter, inlined.)
                Descent::Greedy => beam(self, scratch, &space, current, ef, layer, &|_| true),
                Descent::Within(within) => beam(self, scratch, &space, current, ef, layer, &within),
            }
            work.candidates.clear();
            // A carried node inserted again can meet itself (other nodes link to it).
            work.candidates
                .extend(scratch.results.drain().filter(|found| found.node != node));
            if work.candidates.is_empty() {
                continue;
            }
            work.candidates.sort_unstable();
            current = work.candidates[0];
            select_neighbors(&space, &work.candidates, self.m, &mut work.selected);
            let max = if layer == 0 { self.m0 } else { self.m };
            match descent {
                Descent::Greedy => {
                    let _guard = lock(&self.locks[node as usize]);
                    self.store(node, layer, &work.selected);
                }
                // A repair keeps the node's own links (into the island it bridges) beside
                // the new ones, as a link back would be added (pruned when full).
                Descent::Within(_) => {
                    for index in 0..work.selected.len() {
                        let neighbor = work.selected[index];
                        self.link(node, neighbor.node, neighbor.distance, layer, max, work);
                    }
                }
            }
            chosen[usize::from(layer)].extend_from_slice(&work.selected);
        }
        // Only now is the node linked from others: until its own list is written on every
        // layer no search can step onto it. Linked layer by layer, a thread preempted half
        // way (an idle-priority helper under load) left a node with upper links and empty
        // lower lists, a dead end that the insertions meanwhile took as their only
        // neighbour. (One thread builds the same graph either way: a layer's search reads
        // only that layer's lists.)
        for layer in (0..=level.min(top)).rev() {
            let max = if layer == 0 { self.m0 } else { self.m };
            for neighbor in &chosen[usize::from(layer)] {
                // Every metric here is symmetric: the distance from the neighbour to the
                // node is the one the node chose it by.
                self.link(neighbor.node, node, neighbor.distance, layer, max, work);
            }
        }
        work.chosen = chosen;
        if let Some(mut guard) = entry_guard {
            *guard = (node, level);
        }
    }

    /// Gives every carried node its links from the seed graph, translated to the new ids;
    /// a link to a node not carried is replaced by that node's own carried neighbours on the
    /// layer, and such a list is chosen again with the heuristic.
    fn carry(&self, graph: &Hnsw, carried: &[u32]) {
        let mut inverse = vec![NO_NODE; graph.count];
        for (node, &old) in carried.iter().enumerate() {
            if old != NO_NODE {
                inverse[old as usize] = node as u32;
            }
        }
        let mut candidates: Vec<u32> = Vec::new();
        let mut scored: Vec<Scored> = Vec::new();
        let mut selected: Vec<Scored> = Vec::new();
        for (node, &old) in carried.iter().enumerate() {
            if old == NO_NODE {
                continue;
            }
            let node = node as u32;
            let space = self.space.with_query(self.space.row(node));
            for layer in 0..=self.levels[node as usize] {
                candidates.clear();
                let mut repaired = false;
                for &neighbor in graph.neighbors(old, layer) {
                    match inverse[neighbor as usize] {
                        NO_NODE => {
                            repaired = true;
                            candidates.extend(
                                graph
                                    .neighbors(neighbor, layer)
                                    .iter()
                                    .map(|&n| inverse[n as usize])
                                    .filter(|&n| n != NO_NODE && n != node),
                            );
                        }
                        kept => candidates.push(kept),
                    }
                }
                if repaired {
                    candidates.sort_unstable();
                    candidates.dedup();
                }
                scored.clear();
                scored.extend(candidates.iter().map(|&n| Scored {
                    distance: space.distance(n),
                    node: n,
                }));
                scored.sort_unstable();
                let max = if layer == 0 { self.m0 } else { self.m };
                let list = if repaired {
                    select_neighbors(&space, &scored, max, &mut selected);
                    &selected
                } else {
                    &scored // the seed's own choice, kept as it is
                };
                let _guard = lock(&self.locks[node as usize]);
                self.store(node, layer, list);
            }
        }
    }

    /// The nodes reachable from `entry` along layer-0 links (every search ends its descent
    /// on layer 0, and the upper layers' nodes are all on layer 0 too).
    fn reachable_from(&self, entry: u32) -> NodeSet {
        let mut reached = NodeSet::with_capacity(self.levels.len());
        self.spread_reached(entry, &mut reached);
        reached
    }

    /// The layer-0 links as they are now, reversed.
    fn reversed(&self) -> Reversed {
        let count = self.levels.len();
        let mut starts = vec![0u32; count + 1];
        for node in 0..count as u32 {
            self.for_each_neighbor(node, 0, |neighbor| {
                if let Some(start) = starts.get_mut(neighbor as usize + 1) {
                    *start += 1;
                }
            });
        }
        for index in 1..starts.len() {
            starts[index] += starts[index - 1];
        }
        let mut filled = starts.clone();
        let mut sources = vec![0u32; starts[count] as usize];
        for node in 0..count as u32 {
            self.for_each_neighbor(node, 0, |neighbor| {
                if let Some(slot) = filled.get_mut(neighbor as usize) {
                    sources[*slot as usize] = node;
                    *slot += 1;
                }
            });
        }
        Reversed { starts, sources }
    }

    /// Whether `from` links to `to` on layer 0 now.
    fn links_to(&self, from: u32, to: u32) -> bool {
        let mut found = false;
        self.for_each_neighbor(from, 0, |neighbor| found |= neighbor == to);
        found
    }

    /// Adds to `reached` `start` and what it reaches along layer-0 links.
    fn spread_reached(&self, start: u32, reached: &mut NodeSet) {
        let mut queue = vec![start];
        reached.insert(start);
        while let Some(node) = queue.pop() {
            self.for_each_neighbor(node, 0, |neighbor| {
                if reached.insert(neighbor) {
                    queue.push(neighbor);
                }
            });
        }
    }

    /// Adds to `reaching` `start` and the nodes that reach it along layer-0 links: those
    /// that `reversed` says linked to a node and still do (an insertion since may have
    /// pruned the link).
    fn spread_reaching(&self, start: u32, reversed: &Reversed, reaching: &mut NodeSet) {
        let mut queue = vec![start];
        reaching.insert(start);
        while let Some(node) = queue.pop() {
            for &source in reversed.sources_of(node) {
                if !reaching.contains(source) && self.links_to(source, node) {
                    reaching.insert(source);
                    queue.push(source);
                }
            }
        }
    }

    /// Inserts every node that the entry point does not reach along layer-0 links or that
    /// does not reach the entry point back, with neighbours among the nodes connected both
    /// ways ([`Descent::Within`]), for a few rounds or until there is none. A search starts
    /// its layer-0 beam where its descent through the upper layers ended: a part of the
    /// graph with no layer-0 link back to the entry's is an island for every query whose
    /// descent ends there. Within a round, what an insertion connects is marked at once
    /// (forward from the node, and back along the links into it), so that an island costs
    /// one insertion or a few, not one per node. A pure function of the graph: a one-thread
    /// build stays deterministic.
    fn repair(&self, control: &BuildControl, scratch: &mut SearchScratch, work: &mut Work) {
        let count = self.levels.len();
        for _ in 0..REPAIR_ROUNDS_MAX {
            let (entry, _) = *lock(&self.entry);
            let mut reached = self.reachable_from(entry);
            let reversed = self.reversed();
            let mut reaching = NodeSet::with_capacity(count);
            self.spread_reaching(entry, &reversed, &mut reaching);
            let stranded: Vec<u32> = (0..count as u32)
                .filter(|&node| !reached.contains(node) || !reaching.contains(node))
                .collect();
            if stranded.is_empty() {
                return;
            }
            for node in stranded {
                if control.cancelled() {
                    return;
                }
                if reached.contains(node) && reaching.contains(node) {
                    continue; // connected by an insertion of this round
                }
                let core = |n: u32| reached.contains(n) && reaching.contains(n);
                self.insert_from(node, Descent::Within(&core), scratch, work);
                if !reached.contains(node) {
                    let mut linked = false;
                    self.for_each_neighbor(node, 0, |neighbor| {
                        linked |= reached.contains(neighbor) && self.links_to(neighbor, node);
                    });
                    if linked {
                        self.spread_reached(node, &mut reached);
                    }
                }
                if !reaching.contains(node) {
                    let mut links_in = false;
                    self.for_each_neighbor(node, 0, |neighbor| {
                        links_in |= reaching.contains(neighbor);
                    });
                    if links_in {
                        self.spread_reaching(node, &reversed, &mut reaching);
                    }
                }
            }
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

/// Where an insertion looks for a node's neighbours on each of its layers.
#[derive(Clone, Copy)]
enum Descent<'a> {
    /// The paper's: greedy from the entry point down to the node's top layer, then a beam
    /// on each layer from the nearest node found on the layer above.
    Greedy,
    /// The same, but moving through and choosing only nodes the filter admits: the repair
    /// of stranded nodes, which admits the nodes connected to the entry point both ways on
    /// layer 0. An unrestricted descent can end in the stranded node's own island
    /// (upper-layer links lead into it where no layer-0 link leads out of it), and an
    /// insertion from there links the node to the island again.
    Within(&'a dyn Fn(u32) -> bool),
}

/// Layer-0 links reversed, as compressed rows: the nodes linking to node `n` are
/// `sources[starts[n]..starts[n + 1]]`.
struct Reversed {
    starts: Vec<u32>,
    sources: Vec<u32>,
}

impl Reversed {
    fn sources_of(&self, node: u32) -> &[u32] {
        let start = self.starts[node as usize] as usize;
        let end = self.starts[node as usize + 1] as usize;
        &self.sources[start..end]
    }
}

/// A worker's reusable buffers.
#[derive(Default)]
struct Work {
    candidates: Vec<Scored>,
    selected: Vec<Scored>,
    pruned: Vec<Scored>,
    selected_for_link: Vec<Scored>,
    /// The neighbours chosen on each layer of the insertion, linked back once every
    /// layer's own list is written.
    chosen: Vec<Vec<Scored>>,
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
        Self::build_rows(dim, Store::from_avec(stored), false, labels, params, None)
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
        check_rows(dim, &rows, params)?;
        Self::build_rows(dim, rows, true, labels, params, None)
    }

    /// [`Hnsw::build_over`], starting from an earlier graph (see [`Seed`]). With one thread
    /// the result is a pure function of the rows, the parameters and the seed graph.
    pub fn build_over_seeded(
        dim: usize,
        rows: Store<f32>,
        labels: Option<&[u64]>,
        params: &BuildParams,
        seed: Seed<'_>,
    ) -> Result<Hnsw, IndexError> {
        check_rows(dim, &rows, params)?;
        Self::build_rows(dim, rows, true, labels, params, Some(seed))
    }

    /// The build proper, over rows already laid out (and normalised for cosine).
    fn build_rows(
        dim: usize,
        stored: Store<f32>,
        external: bool,
        labels: Option<&[u64]>,
        params: &BuildParams,
        seed: Option<Seed<'_>>,
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
        let carried = match seed {
            Some(seed) => carried_nodes(dim, &stored, params, seed)?,
            None => Vec::new(),
        };
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
        let mut levels = draw_levels(count, m, params.seed);
        let donor = seed.map(|seed| seed.graph);
        if let Some(graph) = donor {
            for (node, &old) in carried.iter().enumerate() {
                if old != NO_NODE {
                    levels[node] = graph.levels[old as usize];
                }
            }
        }
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
            // Carried nodes take their links from the seed graph; the rest are inserted in
            // order, the first node being the entry of an empty graph.
            let (order, initial) = match donor {
                Some(graph) if carried.iter().any(|&old| old != NO_NODE) => {
                    builder.carry(graph, &carried);
                    let entry = carried
                        .iter()
                        .position(|&old| old == graph.entry)
                        .or_else(|| {
                            (0..count)
                                .filter(|&node| carried[node] != NO_NODE)
                                .max_by_key(|&node| (levels[node], std::cmp::Reverse(node)))
                        })
                        .unwrap_or(0) as u32;
                    // A carried node that the entry point no longer reaches (the paths to
                    // it ran through nodes not carried) would never be found: it is
                    // inserted again, like the new nodes.
                    let reached = builder.reachable_from(entry);
                    let mut order: Vec<u32> = (0..count as u32)
                        .filter(|&node| {
                            carried[node as usize] == NO_NODE || !reached.contains(node)
                        })
                        .collect();
                    shuffle(&mut order, params.seed);
                    // Those start afresh: their carried lists lead only into their island.
                    for &node in &order {
                        if carried[node as usize] != NO_NODE {
                            let _guard = lock(&builder.locks[node as usize]);
                            for layer in 0..=levels[node as usize] {
                                builder.store(node, layer, &[]);
                            }
                        }
                    }
                    (order, entry)
                }
                _ => ((1..count as u32).collect(), 0),
            };
            *lock(&builder.entry) = (initial, levels.get(initial as usize).copied().unwrap_or(0));
            let threads = match params.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                threads => threads,
            }
            .min(order.len().max(1));
            let next = AtomicUsize::new(0);
            let control = &params.control;
            let worker = || {
                let mut scratch = SearchScratch::new();
                let mut work = Work::default();
                while !control.cancelled() {
                    let Some(&node) = order.get(next.fetch_add(1, Relaxed)) else {
                        break;
                    };
                    builder.insert(node, &mut scratch, &mut work);
                }
            };
            // The calling thread is a worker too: with idle helpers, the build progresses
            // at its priority whatever else runs.
            std::thread::scope(|scope| {
                for _ in 1..threads {
                    // A helper the system refuses (a thread limit) is simply not there: the
                    // others, and this thread, insert its share.
                    let _ = std::thread::Builder::new()
                        .name("hnsw-build".to_owned())
                        .spawn_scoped(scope, || {
                            if control.helpers == Helpers::Idle {
                                run_at_idle_priority();
                            }
                            worker();
                        });
                }
                worker();
            });
            if control.cancelled() {
                return Err(IndexError::Cancelled);
            }
            if count > 0 {
                // Every node the entry point cannot reach on layer 0, or that cannot reach
                // it, is inserted again, on this thread (`Builder::repair`). Concurrent
                // insertions do not see one another: two neighbours inserted at once can
                // each link only to older nodes, and a later pruning can then drop the one
                // link into a node. A seeded build strands nodes too: a carried node keeps
                // its links, and generation after generation a pruning can drop the last
                // link into one (1 node in 40 after 13 generations of small seeded graphs;
                // test `every_node_of_small_graphs_seeded_generation_after_generation_is_reachable`),
                // so the pass runs after every build. Degenerate data can still lose with
                // threads: on 3,000 points on a line, parallel graphs missed from none to
                // 31 points in searches; since a node is linked only once its own lists
                // are written, none in 32 rounds here, but one round under the whole test
                // suite's load still missed 5. One thread stays the shard's default.
                builder.repair(control, &mut SearchScratch::new(), &mut Work::default());
                if control.cancelled() {
                    return Err(IndexError::Cancelled);
                }
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
            codes_only: false,
            quantizer,
            codes: Store::from_avec(codes),
            labels: Store::owned(&labels),
            levels: Store::owned(&levels),
            upper_offsets: Store::owned(&upper_offsets),
            links0,
            upper_links,
            tombstones: NodeSet::with_capacity(count),
            checksums: None,
            kernels,
        })
    }
}

/// Moves the calling thread to `SCHED_IDLE`. A helper inherits the CPUs its build's thread
/// may use (the store's background workers may use every CPU of the process). A failure (a
/// kernel or sandbox that refuses) leaves it at its priority: the build is then only less
/// polite, never wrong.
fn run_at_idle_priority() {
    let parameters = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's (pid 0) policy from a live sched_param; the result
    // is deliberately ignored (see above).
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &parameters) };
}

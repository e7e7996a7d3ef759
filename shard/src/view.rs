//! What reads see: a shard as it stood at one moment, published for every LEU to search.
//!
//! A [`ShardView`] holds a store [`Snapshot`] (the MemTables and live tables then), the
//! side-car segment of each live table, each segment's superseded set then, and the catalog.
//! All of it is immutable and reference-counted, so a view is read from any thread without a
//! lock, and nothing it holds is unmapped or deleted while it is held.
//!
//! The shard publishes a new view after every change a read could see (writes made durable,
//! flushes and compactions published, collections created or dropped) through a
//! [`PublishedView`], an `arc_swap` cell: publishing never waits for readers, and a reader's
//! load is a few atomic operations. Superseded sets are copied on write (`Arc::make_mut`)
//! when a newer segment arrives, so a view taken earlier keeps the sets that match its own
//! segments: a reader never sees a point hidden by a segment its view does not hold.
//!
//! [`search_views`] runs one search over several LEUs' views (the whole node's data on one
//! core): each LEU owns its points (VNode ownership), so the views hold disjoint points and
//! their candidates merge by distance.

use crate::catalog::{Catalog, State};
use crate::error::ShardError;
use crate::payload;
use crate::sidecar::{index_metric, Region, Segment};
use crate::tier::{NodeGraph, NodeRows};
use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use vortex_index::metric::normalize;
use vortex_index::{
    Filter, IndexError, Kernels, Metric, NodeSet, RowDamage, ScalarQuantizer, SearchParams,
};
use vortex_storage::sstable::table::Table;
use vortex_storage::{Key, Point, Snapshot};
use vortex_vbp::message::{CollectionSpec, Hit, Payload, PointRecord};

/// Results a search may ask for (VBP's limit).
pub const K_MAX: usize = vortex_vbp::validator::K_MAX as usize;
/// The largest beam width (VBP's limit, which the index serves).
pub const EF_MAX: usize = vortex_vbp::validator::EF_MAX as usize;
const _: () = assert!(EF_MAX <= vortex_index::hnsw::EF_MAX);
/// Ids one get may carry (VBP's limit). Upserts and deletes are limited by the store's
/// batch limit (`Store::batch_limits`), which with a shard's default options holds VBP's
/// `WRITE_POINTS_MAX` and `WRITE_BODY_BYTES_MAX` (a test in `engine.rs` checks).
pub const BATCH_POINTS_MAX: usize = vortex_vbp::validator::GET_IDS_MAX;

/// A search request.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest<'a> {
    /// The collection.
    pub collection: &'a str,
    /// The query: the collection's dimension, finite.
    pub vector: &'a [f32],
    /// Results wanted (1 to [`K_MAX`]).
    pub k: usize,
    /// Beam width (0: `max(k, 64)`).
    pub ef: usize,
    /// Only points whose payload matches.
    pub filter: Option<&'a vortex_vbp::message::Filter>,
    /// Return each hit's payload.
    pub with_payload: bool,
}

/// A live table as a view holds it.
#[derive(Debug, Clone)]
pub(crate) struct ViewSegment {
    pub table: Arc<Table>,
    /// `None` for a table of a dropped collection, about to go.
    pub segment: Option<Arc<Segment>>,
    /// Nodes whose point has a newer version in a segment read before this one, or in a
    /// table of the same view.
    pub superseded: Arc<NodeSet>,
}

/// One shard as it stood when published. See the module documentation.
#[derive(Debug)]
pub struct ShardView {
    dir: Arc<Path>,
    catalog: Arc<Catalog>,
    store: Snapshot,
    /// The live tables in read order (level 0 newest first, then each level down).
    segments: Vec<ViewSegment>,
    kernels: &'static Kernels,
    /// Each live collection's fresh points, gathered at the view's first search of it.
    fresh: Vec<(u32, OnceLock<Fresh>)>,
}

/// A view's fresh points of one collection (its MemTables' newest versions), gathered once
/// per view, at the first search that wants them, instead of at every search: a search then
/// scans one block of rows, keeps only its `k` nearest, and tests segment nodes against a
/// plain sorted list. Bounded by the MemTables' entry cap (`ShardOptions::store`).
#[derive(Debug, Default)]
pub(crate) struct Fresh {
    /// Every fresh point, upserted or deleted, in id order: each hides the older versions
    /// that segments hold.
    ids: Vec<u64>,
    /// The upserted points whose vector has the collection's dimension, in id order.
    live: Vec<u64>,
    /// Their vectors, row after row (unit vectors for cosine, as stored).
    rows: Vec<f32>,
    /// With at least [`FRESH_CODES_MIN`] rows of an `l2` or `cosine` collection, their
    /// `i8` codes too, scanned first: a quarter of the bytes.
    codes: Option<FreshCodes>,
}

/// The fewest fresh rows that are scanned through `i8` codes; fewer are scanned in `f32`
/// alone.
const FRESH_CODES_MIN: usize = 1024;

/// Fresh rows as `i8` codes of an `l2` quantizer (one scale for every dimension, so the
/// distance of two codes is the distance of the vectors they decode to, times the scale),
/// with each row's quantization error: together they bound every row's true distance to a
/// query, and the scan re-ranks in `f32` every row that the bounds cannot rule out of the
/// `k` nearest. The result is the exact scan's, whatever the data's range (a few far
/// outliers coarsen the codes; then more rows are re-ranked, none is missed).
#[derive(Debug)]
struct FreshCodes {
    quantizer: ScalarQuantizer,
    codes: Vec<i8>,
    /// `‖row − decode(code)‖`, rounded up.
    errors: Vec<f32>,
}

impl FreshCodes {
    /// The codes of `rows`; `None` for a metric whose order is not the `l2` order of the
    /// stored rows (inner product).
    fn of(rows: &[f32], dimension: usize, metric: Metric) -> Option<FreshCodes> {
        if metric == Metric::InnerProduct || dimension == 0 {
            return None;
        }
        // Cosine rows are stored as unit vectors and its queries normalised: its order is
        // the `l2` order (‖q − x‖² = 2 − 2 cos).
        let quantizer = ScalarQuantizer::train(Metric::L2, dimension, rows);
        let mut codes = vec![0i8; rows.len()];
        let mut errors = Vec::with_capacity(rows.len() / dimension);
        for (row, code) in rows
            .chunks_exact(dimension)
            .zip(codes.chunks_exact_mut(dimension))
        {
            quantizer.encode(row, code);
            errors.push(round_up(quantization_error(&quantizer, row, code)));
        }
        Some(FreshCodes {
            quantizer,
            codes,
            errors,
        })
    }
}

/// `‖vector − decode(code)‖`, with the decoding done in `f64` (`offset + code × scale`,
/// exact there): decoded in `f32`, large coordinates with a small spread would round by as
/// much as the codes' resolution, and the bound built on it would not hold.
fn quantization_error(quantizer: &ScalarQuantizer, vector: &[f32], code: &[i8]) -> f64 {
    vector
        .iter()
        .zip(code)
        .zip(quantizer.offsets().iter().zip(quantizer.scales()))
        .map(|((&x, &c), (&offset, &scale))| {
            let d = f64::from(x) - (f64::from(offset) + f64::from(c) * f64::from(scale));
            d * d
        })
        .sum::<f64>()
        .sqrt()
}

/// `value` as an `f32` no smaller than it.
fn round_up(value: f64) -> f32 {
    let rounded = value as f32;
    if f64::from(rounded) >= value {
        rounded
    } else {
        rounded.next_up()
    }
}

impl Fresh {
    fn gather(points: &[(u64, Option<&Point>)], dimension: usize, metric: Metric) -> Fresh {
        let mut fresh = Fresh {
            ids: points.iter().map(|(point, _)| *point).collect(),
            ..Fresh::default()
        };
        for (point, found) in points {
            let Some(found) = found else { continue };
            if found.vector.len() != dimension * 4 {
                continue;
            }
            fresh.live.push(*point);
            fresh.rows.extend(floats(&found.vector));
        }
        if fresh.live.len() >= FRESH_CODES_MIN {
            fresh.codes = FreshCodes::of(&fresh.rows, dimension, metric);
        }
        fresh
    }

    /// Whether `point` has a fresh version (so a segment's is not its newest).
    fn hides(&self, point: u64) -> bool {
        self.ids.binary_search(&point).is_ok()
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The `k` nearest fresh points to `prepared`'s query, as candidates of view `view`:
    /// exact, and only `k` of them whatever the fresh count (no other can be among a
    /// search's `k` best).
    fn nearest(
        &self,
        prepared: &Prepared<'_>,
        kernels: &Kernels,
        view: usize,
        candidates: &mut Vec<(f32, u64, usize)>,
    ) {
        let dimension = prepared.query.len();
        if dimension == 0 || self.live.is_empty() {
            return;
        }
        if let Some(codes) = &self.codes {
            return self.nearest_by_codes(prepared, kernels, codes, view, candidates);
        }
        let mut scored: Vec<(f32, u64, usize)> = self
            .rows
            .chunks_exact(dimension)
            .zip(&self.live)
            .map(|(row, &point)| {
                (
                    prepared.metric.distance(kernels, &prepared.query, row),
                    point,
                    view,
                )
            })
            .collect();
        keep_nearest(&mut scored, prepared.k);
        candidates.extend(scored);
    }

    /// [`Fresh::nearest`] through the codes. With `e_q` the query's quantization error and
    /// `e_x` a row's, the row's true distance lies within `e_q + e_x` of its code distance
    /// `c_x` (triangle inequality). The `k` rows of smallest code distance are within
    /// `t = max(c_x + e_q + e_x)` of the query, so the `k` nearest rows are too, and a row
    /// can be one of them only if `c_x − e_q − e_x ≤ t`: those rows are re-ranked with
    /// their `f32` vectors, and the `k` best of them are the exact answer. The test is made
    /// on squares, so the scan takes no square root per row.
    fn nearest_by_codes(
        &self,
        prepared: &Prepared<'_>,
        kernels: &Kernels,
        codes: &FreshCodes,
        view: usize,
        candidates: &mut Vec<(f32, u64, usize)>,
    ) {
        let dimension = prepared.query.len();
        let quantizer = &codes.quantizer;
        let mut query = vec![0i8; dimension];
        quantizer.encode(&prepared.query, &mut query);
        let query_error = quantization_error(quantizer, &prepared.query, &query);
        let scale = f64::from(quantizer.scales().first().copied().unwrap_or(1.0));
        // (squared code distance, row).
        let mut rows: Vec<(u32, u32)> = codes
            .codes
            .chunks_exact(dimension)
            .enumerate()
            .map(|(row, code)| ((kernels.l2_squared_i8)(&query, code), row as u32))
            .collect();
        let k = prepared.k.min(rows.len());
        if k == 0 {
            return;
        }
        rows.select_nth_unstable(k - 1);
        // The bounds are on true distances; the exact scan ranks by `f32` ones, which are
        // off by at most about `(d + 2) · 2⁻²⁴` relative (the kernel's sum), and for cosine
        // (`1 − cos` of unit vectors) by about that much absolute, per unit of `‖q − x‖²/2`.
        let relative = (dimension as f64 + 2.0) * f64::from(f32::EPSILON);
        let absolute = match prepared.metric {
            Metric::Cosine => 2.0 * relative.sqrt(),
            _ => 0.0,
        };
        let slack = |row: u32| query_error + f64::from(codes.errors[row as usize]);
        let within = rows[..k]
            .iter()
            .map(|&(squared, row)| scale * f64::from(squared).sqrt() + slack(row))
            .fold(0.0f64, f64::max)
            * (1.0 + relative)
            + absolute;
        let scale_squared = scale * scale;
        let mut scored: Vec<(f32, u64, usize)> = rows
            .iter()
            .filter(|&&(squared, row)| {
                let reach = (within + slack(row)) * (1.0 + relative) + absolute;
                f64::from(squared) * scale_squared <= reach * reach
            })
            .map(|&(_, row)| {
                let row = row as usize;
                (
                    prepared.metric.distance(
                        kernels,
                        &prepared.query,
                        &self.rows[row * dimension..(row + 1) * dimension],
                    ),
                    self.live[row],
                    view,
                )
            })
            .collect();
        keep_nearest(&mut scored, prepared.k);
        candidates.extend(scored);
    }
}

/// The `k` nearest nodes of a segment that has rows but no graph yet (its build is queued),
/// by an exact scan of the rows `admitted` lets through: node `i` is row `i` of the table's
/// vector region (rows of `vector_stride(dim)` floats, unit vectors for cosine), each
/// verified against the region's checksums before it is ranked.
fn scan_rows(
    prepared: &Prepared<'_>,
    kernels: &Kernels,
    region: &Region,
    segment: &Segment,
    admitted: &dyn Fn(u32) -> bool,
    view: usize,
    candidates: &mut Vec<(f32, u64, usize)>,
) -> Result<(), RowDamage> {
    let dim = prepared.query.len();
    let mut scored: Vec<(f32, u64, usize)> = Vec::new();
    for (node, &point) in segment.labels.iter().enumerate() {
        let node = node as u32;
        if !admitted(node) {
            continue;
        }
        let Some(row) = region.row(node, dim)? else {
            break;
        };
        scored.push((
            prepared.metric.distance(kernels, &prepared.query, row),
            point,
            view,
        ));
        // Bounded: the k best so far, whatever the segment's size.
        if scored.len() >= 4 * prepared.k.max(16) {
            keep_nearest(&mut scored, prepared.k);
        }
    }
    // A page lost under the mapping during the scan read as zeros, verified or not.
    region.checksums.check_lost(&region.rows)?;
    keep_nearest(&mut scored, prepared.k);
    candidates.extend(scored);
    Ok(())
}

/// Keeps the `k` nearest of `scored` (ties by point), unordered.
fn keep_nearest(scored: &mut Vec<(f32, u64, usize)>, k: usize) {
    if scored.len() > k && k > 0 {
        scored.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    }
    scored.truncate(k);
}

/// A table fenced for damage: requests that need it are refused with
/// [`ShardError::Fenced`], naming the same range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencedRange {
    /// The collection's name (`#id` for one no longer in the catalog).
    pub collection: String,
    /// The smallest point id the table holds.
    pub first: u64,
    /// The largest.
    pub last: u64,
    /// The table's number.
    pub table: u64,
    /// What was found (file, part, offset).
    pub detail: String,
}

impl From<FencedRange> for ShardError {
    fn from(range: FencedRange) -> ShardError {
        let FencedRange {
            collection,
            first,
            last,
            table,
            detail,
        } = range;
        ShardError::Fenced {
            collection,
            first,
            last,
            table,
            detail,
        }
    }
}

/// Where a shard publishes its views; clones share the cell, for other LEUs to read.
#[derive(Debug, Clone)]
pub struct PublishedView(Arc<ArcSwap<ShardView>>);

impl PublishedView {
    pub(crate) fn new(view: ShardView) -> Self {
        PublishedView(Arc::new(ArcSwap::from_pointee(view)))
    }

    pub(crate) fn publish(&self, view: ShardView) {
        self.0.store(Arc::new(view));
    }

    /// The newest view: lock-free, and cheap enough to take for every search.
    pub fn load(&self) -> arc_swap::Guard<Arc<ShardView>> {
        self.0.load()
    }
}

/// The search parameters once checked against the collection.
struct Prepared<'a> {
    metric: Metric,
    /// The query as the index compares it (unit length for cosine).
    query: Vec<f32>,
    k: usize,
    ef: usize,
    request: &'a SearchRequest<'a>,
}

/// What a segment's search may return: nodes the payload filter allows (when there is one)
/// whose point's newest version is in this segment.
struct SegmentFilter<'a> {
    allowed: Option<&'a NodeSet>,
    live: &'a dyn Fn(u32) -> bool,
}

impl Filter for SegmentFilter<'_> {
    fn allows(&self, node: u32) -> bool {
        self.allowed.is_none_or(|set| set.contains(node)) && (self.live)(node)
    }

    /// An upper bound (liveness is found out per node), which is what the search needs to
    /// choose between an exact scan and a graph walk.
    fn allowed_count(&self) -> Option<usize> {
        self.allowed.map(NodeSet::len)
    }

    /// The allowed set's own walk (not a test of every node), then liveness.
    fn for_each_allowed(&self, count: u32, visit: &mut dyn FnMut(u32)) {
        match self.allowed {
            Some(set) => set.for_each_allowed(count, &mut |node| {
                if (self.live)(node) {
                    visit(node)
                }
            }),
            None => (0..count).filter(|&node| self.allows(node)).for_each(visit),
        }
    }
}

/// Checks a vector sent for `dimension`: its length, finite components, and a length whose
/// distances cannot overflow.
pub(crate) fn check_vector(vector: &[f32], dimension: usize, what: &str) -> Result<(), ShardError> {
    if vector.len() != dimension {
        return Err(ShardError::Invalid(format!(
            "{what} has {} components; the collection's dimension is {dimension}",
            vector.len()
        )));
    }
    if !vector.iter().all(|x| x.is_finite()) {
        return Err(ShardError::Invalid(format!(
            "{what} holds a NaN or an infinity"
        )));
    }
    // Below a quarter of f32::MAX, every distance between two accepted vectors is a finite
    // f32 (|q - x|^2 <= 2|q|^2 + 2|x|^2, |q.x| <= (|q|^2 + |x|^2) / 2), and cosine's
    // normalisation cannot overflow either.
    let length_squared: f64 = vector.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    if length_squared >= LENGTH_SQUARED_MAX {
        return Err(ShardError::Invalid(format!(
            "{what} is too long: its squared length {length_squared:.2e} is not below \
             {LENGTH_SQUARED_MAX:.2e}, and distances to it would overflow to infinity; scale \
             the vectors down"
        )));
    }
    Ok(())
}

/// The largest squared length a vector may have (exclusive): a quarter of `f32::MAX`.
const LENGTH_SQUARED_MAX: f64 = f32::MAX as f64 / 4.0;

pub(crate) fn decode_vector(bytes: &[u8]) -> Vec<f32> {
    floats(bytes).collect()
}

/// The `f32`s a stored vector's little-endian bytes hold.
fn floats(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The live collection `name` of `catalog`: its id and spec.
pub(crate) fn live_collection(
    catalog: &Catalog,
    name: &str,
) -> Result<(u32, CollectionSpec), ShardError> {
    catalog
        .by_name(name)
        .filter(|c| c.state == State::Live)
        .map(|c| (c.id, c.spec.clone()))
        .ok_or_else(|| ShardError::NotFound(name.to_owned()))
}

impl ShardView {
    pub(crate) fn new(
        dir: Arc<Path>,
        catalog: Arc<Catalog>,
        store: Snapshot,
        segments: Vec<ViewSegment>,
        kernels: &'static Kernels,
    ) -> Self {
        let fresh = catalog.live().map(|c| (c.id, OnceLock::new())).collect();
        ShardView {
            dir,
            catalog,
            store,
            segments,
            kernels,
            fresh,
        }
    }

    /// The fresh points of live collection `id`: gathered by the first search of this view
    /// that wants them (a search that finds them being gathered gathers its own copy rather
    /// than wait; the first one set is kept).
    fn fresh_of(&self, id: u32) -> Result<&Fresh, ShardError> {
        let (_, cell) = self
            .fresh
            .iter()
            .find(|(collection, _)| *collection == id)
            .ok_or_else(|| ShardError::NotFound(format!("collection id {id} in this view")))?;
        if let Some(fresh) = cell.get() {
            return Ok(fresh);
        }
        let (dimension, metric) = self.catalog.by_id(id).map_or((0, Metric::L2), |c| {
            (c.spec.dimension as usize, index_metric(c.spec.metric))
        });
        let _ = cell.set(Fresh::gather(
            &self.store.memtable_points(id),
            dimension,
            metric,
        ));
        cell.get()
            .ok_or_else(|| ShardError::NotFound(format!("collection id {id} in this view")))
    }

    /// The catalog then.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The store's table version epoch then.
    pub fn version_epoch(&self) -> u64 {
        self.store.version_epoch()
    }

    /// The `k` nearest live points (newest versions only) that match the filter.
    pub fn search(&self, request: &SearchRequest<'_>) -> Result<Vec<Hit>, ShardError> {
        search_views(&[self], request)
    }

    /// Checks a search against this view's catalog.
    fn prepare<'a>(&self, request: &'a SearchRequest<'a>) -> Result<Prepared<'a>, ShardError> {
        let (_, spec) = live_collection(&self.catalog, request.collection)?;
        let dimension = spec.dimension as usize;
        if request.vector.len() != dimension {
            return Err(ShardError::DimensionMismatch(format!(
                "the query has {} components; the collection's dimension is {dimension}",
                request.vector.len()
            )));
        }
        check_vector(request.vector, dimension, "the query")?;
        if request.k == 0 || request.k > K_MAX {
            return Err(ShardError::Invalid(format!("k must be 1 to {K_MAX}")));
        }
        if request.ef > EF_MAX {
            return Err(ShardError::Invalid(format!("ef must be at most {EF_MAX}")));
        }
        if let Some(filter) = request.filter {
            payload::validate_filter(filter).map_err(|e| ShardError::Invalid(e.to_string()))?;
        }
        let k = request.k;
        let ef = if request.ef == 0 {
            k.max(64)
        } else {
            request.ef.max(k)
        };
        let metric = index_metric(spec.metric);
        let mut query = request.vector.to_vec();
        if metric.normalizes() {
            normalize(&mut query);
        }
        Ok(Prepared {
            metric,
            query,
            k,
            ef,
            request,
        })
    }

    /// The live tables of collection `id`, in read order.
    pub(crate) fn segments_of(&self, id: u32) -> impl Iterator<Item = &ViewSegment> {
        self.segments
            .iter()
            .filter(move |entry| entry.table.footer().collection == id)
    }

    /// Every table of this view fenced for damage (quarantined by a read, the scrubber or
    /// the open), by collection id and first point.
    pub fn fenced_tables(&self) -> Vec<FencedRange> {
        let mut fenced: Vec<(u32, FencedRange)> = self
            .segments
            .iter()
            .filter(|entry| entry.table.is_quarantined())
            .map(|entry| (entry.table.footer().collection, self.fenced_range(entry)))
            .collect();
        fenced.sort_by_key(|(id, range)| (*id, range.first, range.table));
        fenced.into_iter().map(|(_, range)| range).collect()
    }

    /// The error for a request that needs collection `id`'s quarantined table, the one
    /// whose key range holds `point` if given, else the first: `None` while none is.
    pub(crate) fn fenced(&self, id: u32, point: Option<u64>) -> Option<ShardError> {
        let quarantined = |entry: &&ViewSegment| entry.table.is_quarantined();
        let holds = |entry: &&ViewSegment| {
            let footer = entry.table.footer();
            point.is_none_or(|point| (footer.smallest..=footer.largest).contains(&point))
        };
        let entry = self
            .segments_of(id)
            .filter(quarantined)
            .find(holds)
            .or_else(|| self.segments_of(id).find(quarantined))?;
        Some(self.fenced_range(entry).into())
    }

    /// What a quarantined table of this view refuses, and why.
    fn fenced_range(&self, entry: &ViewSegment) -> FencedRange {
        let footer = entry.table.footer();
        FencedRange {
            collection: self.catalog.name_of(footer.collection),
            first: footer.smallest,
            last: footer.largest,
            table: entry.table.number(),
            detail: entry.table.quarantined().unwrap_or_default(),
        }
    }

    /// `error` as the request's answer: a table's corruption found by a read is answered
    /// as the fenced range of collection `id` it belongs to.
    fn fence(&self, id: u32, point: Option<u64>, error: ShardError) -> ShardError {
        if error.is_corruption() {
            self.fenced(id, point).unwrap_or(error)
        } else {
            error
        }
    }

    /// The live table `number`, if this view holds it.
    pub(crate) fn segment(&self, number: u64) -> Option<&ViewSegment> {
        self.segments
            .iter()
            .find(|entry| entry.table.number() == number)
    }

    /// This view's best candidates, `(distance, point)`, at most `k` of them per source:
    /// from `fresh` (its MemTables' points, see [`Snapshot::memtable_points`]) and from the
    /// segments of the collection but those `covered` (by a node graph) says to leave.
    fn candidates(
        &self,
        prepared: &Prepared<'_>,
        id: u32,
        fresh: &Fresh,
        covered: &dyn Fn(u64) -> bool,
        view: usize,
        candidates: &mut Vec<(f32, u64, usize)>,
    ) -> Result<(), ShardError> {
        let request = prepared.request;
        let (k, ef) = (prepared.k, prepared.ef);
        // The MemTables: exact, and their versions hide everything older.
        match request.filter {
            None => fresh.nearest(prepared, self.kernels, view, candidates),
            Some(filter) => self.fresh_matching(prepared, id, filter, view, candidates)?,
        }

        // Each segment through its index, admitting only points whose newest version it holds.
        for entry in self.segments_of(id) {
            let number = entry.table.number();
            if covered(number) {
                continue; // the node graph answers for it
            }
            let segment = entry.segment.as_ref().ok_or_else(|| ShardError::Index {
                table: number,
                detail: "no side-car for a live segment".to_owned(),
            })?;
            if segment.graph.is_none() && segment.rows.is_none() {
                continue; // no vectors: only deletes
            }
            // The payload filter, from the segment's payload index: a node set, known before
            // the walk starts (so a selective filter can pick an exact scan).
            let allowed = request
                .filter
                .map(|filter| segment.payloads.evaluate(filter));
            if allowed.as_ref().is_some_and(|set| set.is_empty()) {
                continue;
            }
            // Live: no newer version in a segment read before this one, nor in a MemTable.
            let superseded = &entry.superseded;
            let admits = |node: u32| -> bool {
                !superseded.contains(node)
                    && (fresh.is_empty()
                        || segment
                            .labels
                            .get(node as usize)
                            .is_some_and(|&point| !fresh.hides(point)))
            };
            let Some(index) = segment.graph.as_ref() else {
                // Its graph is being built (a table published by a flush): exact, meanwhile.
                if let Some(region) = segment.rows.as_ref() {
                    let admitted = |node: u32| {
                        admits(node) && allowed.as_ref().is_none_or(|set| set.contains(node))
                    };
                    scan_rows(
                        prepared,
                        self.kernels,
                        region,
                        segment,
                        &admitted,
                        view,
                        candidates,
                    )
                    .map_err(|damage| ShardError::index(number, IndexError::Corrupt(damage)))?;
                }
                continue;
            };
            let params = SearchParams {
                k,
                ef,
                ..SearchParams::default()
            };
            let filter = SegmentFilter {
                allowed: allowed.as_ref(),
                live: &admits,
            };
            // Nothing to exclude: the unfiltered walk, which skips the per-node test.
            let everything_live = allowed.is_none() && superseded.is_empty() && fresh.is_empty();
            let found = if everything_live {
                index.search(request.vector, params.k, params.ef)
            } else {
                index.search_filtered(request.vector, &params, &filter)
            }
            .map_err(|error| {
                if let IndexError::PageLost { .. } = &error {
                    // The side-car (or the table under it) lost a page: fenced, as for
                    // damaged rows, until a restart rebuilds the side-car.
                    entry
                        .table
                        .quarantine(&format!("its side-car index: {error}"));
                }
                ShardError::index(number, error)
            })?;
            candidates.extend(found.iter().map(|n| (n.distance, n.label, view)));
        }
        Ok(())
    }

    /// The `k` nearest fresh points of collection `id` whose payload matches `filter`
    /// (decoded per point: a filtered search reads the MemTables themselves).
    fn fresh_matching(
        &self,
        prepared: &Prepared<'_>,
        id: u32,
        filter: &vortex_vbp::message::Filter,
        view: usize,
        candidates: &mut Vec<(f32, u64, usize)>,
    ) -> Result<(), ShardError> {
        let mut row = Vec::new();
        let mut scored = Vec::new();
        for (point, found) in self.store.memtable_points(id) {
            let Some(found) = found else { continue };
            if found.vector.len() != prepared.query.len() * 4
                || !payload::matches(filter, self.decode_payload(&found.payload)?.as_ref())
            {
                continue;
            }
            // Stored as unit vectors for cosine (see `Shard::upsert`).
            row.clear();
            row.extend(floats(&found.vector));
            scored.push((
                prepared
                    .metric
                    .distance(self.kernels, &prepared.query, &row),
                point,
                view,
            ));
        }
        keep_nearest(&mut scored, prepared.k);
        candidates.extend(scored);
        Ok(())
    }

    /// The payload of `point` in collection `id` (`None` when it has none, or is gone).
    fn payload_of(&self, id: u32, point: u64) -> Result<Option<Payload>, ShardError> {
        let key = Key {
            collection: id,
            point,
        };
        match self.store.get(&key)? {
            Some(found) => self.decode_payload(&found.payload),
            None => Ok(None),
        }
    }

    fn decode_payload(&self, bytes: &[u8]) -> Result<Option<Payload>, ShardError> {
        payload::decode(bytes).map_err(|error| ShardError::Corrupt {
            path: self.dir.join("store"),
            detail: error.to_string(),
        })
    }

    /// The points that exist, in request order.
    pub fn get(
        &self,
        collection: &str,
        ids: &[u64],
        with_vectors: bool,
        with_payload: bool,
    ) -> Result<Vec<PointRecord>, ShardError> {
        let (id, _) = live_collection(&self.catalog, collection)?;
        if ids.len() > BATCH_POINTS_MAX {
            return Err(ShardError::Invalid(format!(
                "a get carries at most {BATCH_POINTS_MAX} ids"
            )));
        }
        let mut points = Vec::new();
        for &point in ids {
            let key = Key {
                collection: id,
                point,
            };
            let found = self
                .store
                .get(&key)
                .map_err(|error| self.fence(id, Some(point), error.into()))?;
            if let Some(found) = found {
                points.push(PointRecord {
                    id: point,
                    vector: if with_vectors {
                        decode_vector(&found.vector)
                    } else {
                        Vec::new()
                    },
                    payload: if with_payload {
                        self.decode_payload(&found.payload)?
                    } else {
                        None
                    },
                });
            }
        }
        Ok(points)
    }

    /// Live points of collection `id`, without reading a table: the MemTables' newest
    /// versions that are puts, plus, in each segment of the collection, the nodes neither
    /// superseded nor newer in a MemTable. Bounded by the fresh points and the segment count.
    pub(crate) fn count_points(&self, id: u32) -> Result<u64, ShardError> {
        let fresh = self.store.memtable_points(id);
        let mut count = fresh.iter().filter(|(_, found)| found.is_some()).count() as u64;
        for entry in &self.segments {
            if entry.table.footer().collection != id {
                continue;
            }
            if entry.segment.is_none() && entry.table.is_quarantined() {
                continue; // fenced, unread: its points are not counted (docs/SHARD.md)
            }
            let segment = entry.segment.as_ref().ok_or_else(|| ShardError::Index {
                table: entry.table.number(),
                detail: "no side-car for a live segment".to_owned(),
            })?;
            let newer_fresh = fresh
                .iter()
                .filter_map(|(point, _)| segment.node_of(*point))
                .filter(|&node| !entry.superseded.contains(node))
                .count();
            let live = segment
                .labels
                .len()
                .saturating_sub(entry.superseded.len() + newer_fresh);
            count += live as u64;
        }
        Ok(count)
    }
}

/// One search over several shards' views: the `k` nearest live points of all of them. The
/// views must hold disjoint points (each LEU owns its own); the request is checked against
/// each view's catalog, so a collection missing from one is an error, as it would be there.
pub fn search_views(
    views: &[&ShardView],
    request: &SearchRequest<'_>,
) -> Result<Vec<Hit>, ShardError> {
    search_node(views, None, request)
}

/// [`search_views`] over every LEU's view (in LEU order) with the node graph of the
/// collection, when there is one (`tier.rs`): it answers for the tables it covers, as long
/// as they are live, and the views' other segments and MemTables for the rest. A search
/// with a payload filter walks the segments (their payload indexes) instead.
pub fn search_node(
    views: &[&ShardView],
    graph: Option<&NodeGraph>,
    request: &SearchRequest<'_>,
) -> Result<Vec<Hit>, ShardError> {
    search_node_checked(views, graph, request).map_err(|error| {
        if !error.is_corruption() {
            return error;
        }
        // A read found a table corrupt (and quarantined it): the answer names the range.
        fenced_in(views, request.collection).unwrap_or(error)
    })
}

/// The error for a search of `collection` while one of its tables is fenced in any of
/// `views` (see [`ShardView::fenced`]); for an error path (the search's own check uses the
/// collection ids it already looked up).
fn fenced_in(views: &[&ShardView], collection: &str) -> Option<ShardError> {
    views.iter().find_map(|view| {
        let (id, _) = live_collection(&view.catalog, collection).ok()?;
        view.fenced(id, None)
    })
}

fn search_node_checked(
    views: &[&ShardView],
    graph: Option<&NodeGraph>,
    request: &SearchRequest<'_>,
) -> Result<Vec<Hit>, ShardError> {
    let Some(first) = views.first() else {
        return Ok(Vec::new());
    };
    // Checked (and the query normalised) once; every view must hold the collection, under
    // its own id.
    let prepared = first.prepare(request)?;
    let ids = views
        .iter()
        .map(|view| live_collection(&view.catalog, request.collection).map(|(id, _)| id))
        .collect::<Result<Vec<u32>, _>>()?;
    // A search ranks every point of the collection: with a table of it fenced, any answer
    // could be wrong, so it is refused, naming the range (other collections are served).
    if let Some(fenced) = views
        .iter()
        .zip(&ids)
        .find_map(|(view, &id)| view.fenced(id, None))
    {
        return Err(fenced);
    }
    let fresh = views
        .iter()
        .zip(&ids)
        .map(|(view, &id)| view.fresh_of(id))
        .collect::<Result<Vec<&Fresh>, _>>()?;
    let graph = graph.filter(|graph| {
        request.filter.is_none() && !graph.is_empty() && graph.serves(request.collection, views)
    });
    // Each covered table's superseded set where the node graph answers for it.
    let superseded: Vec<Option<&NodeSet>> =
        graph.map_or_else(Vec::new, |graph| graph.answering(views));
    // (distance, point, the view that holds it).
    let mut candidates: Vec<(f32, u64, usize)> = Vec::new();
    for (index, view) in views.iter().enumerate() {
        let covered = |number: u64| {
            graph.is_some_and(|graph| graph.answers_for(&superseded, index, number).is_some())
        };
        view.candidates(
            &prepared,
            ids[index],
            fresh[index],
            &covered,
            index,
            &mut candidates,
        )?;
    }
    if let Some(graph) = graph {
        let admits = |node: u32| -> bool {
            let Some(source) = graph.sources.get(node as usize) else {
                return false;
            };
            let Some(Some(set)) = superseded.get(source.table as usize) else {
                return false; // its table was retired: the segments answer for the point
            };
            if set.contains(source.node) {
                return false;
            }
            let leu = usize::from(graph.covered[source.table as usize].0);
            let newer = fresh[leu];
            newer.is_empty()
                || graph
                    .graph
                    .label(node)
                    .is_some_and(|point| !newer.hides(point))
        };
        let params = SearchParams {
            k: prepared.k,
            ef: prepared.ef,
            ..SearchParams::default()
        };
        // Nothing superseded since the build (the graph holds no node superseded before it)
        // and nothing fresh: the unfiltered walk, which skips the per-node test.
        let everything_live = superseded
            .iter()
            .zip(&graph.superseded_at_build)
            .all(|(set, &at_build)| set.is_some_and(|set| set.len() == at_build))
            && graph
                .covered
                .iter()
                .all(|&(leu, _)| fresh[usize::from(leu)].is_empty());
        let filter = SegmentFilter {
            allowed: None,
            live: &admits,
        };
        let found = if graph.graph.is_codes_only() {
            // An `i8` collection's graph: re-ranked with the covered tables' rows.
            let rows = NodeRows::of(graph, views);
            let filter = (!everything_live).then_some(&filter as &dyn Filter);
            graph
                .graph
                .search_over_rows(request.vector, &params, filter, &rows)
        } else if everything_live {
            graph.graph.search(request.vector, params.k, params.ef)
        } else {
            graph
                .graph
                .search_filtered(request.vector, &params, &filter)
        }
        .map_err(ShardError::node_graph)?;
        // Each hit's view: the LEU of the table its node came from.
        candidates.extend(found.iter().filter_map(|n| {
            let source = graph.sources.get(n.node as usize)?;
            let (leu, _) = graph.covered.get(source.table as usize)?;
            Some((n.distance, n.label, usize::from(*leu)))
        }));
    }
    let k = request.k;
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    candidates.truncate(k);
    let mut hits = Vec::with_capacity(candidates.len());
    for (distance, point, view) in candidates {
        let payload = if request.with_payload {
            views[view].payload_of(ids[view], point)?
        } else {
            None
        };
        hits.push(Hit {
            id: point,
            distance,
            payload,
        });
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_nearest_keeps_the_k_best_with_ties_by_point() {
        let mut scored = vec![
            (3.0, 30, 0),
            (1.0, 12, 1),
            (2.0, 20, 0),
            (1.0, 11, 0),
            (5.0, 50, 1),
        ];
        keep_nearest(&mut scored, 3);
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        assert_eq!(scored, vec![(1.0, 11, 0), (1.0, 12, 1), (2.0, 20, 0)]);
        // Fewer than k: all of them.
        let mut few = vec![(4.0, 4, 0), (2.0, 2, 0)];
        keep_nearest(&mut few, 10);
        assert_eq!(few.len(), 2);
    }

    #[test]
    fn fresh_points_gather_ids_of_deletes_and_rows_of_the_right_dimension() {
        let point = |values: &[f32]| Point {
            vector: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            payload: Vec::new(),
        };
        let (a, b) = (point(&[1.0, 2.0]), point(&[1.0, 2.0, 3.0]));
        let fresh = Fresh::gather(&[(1, Some(&a)), (2, None), (3, Some(&b))], 2, Metric::L2);
        // A delete hides older versions as much as an upsert; a vector of another
        // dimension is no candidate.
        assert!(fresh.hides(1) && fresh.hides(2) && fresh.hides(3) && !fresh.hides(4));
        assert_eq!(fresh.live, vec![1]);
        assert_eq!(fresh.rows, vec![1.0, 2.0]);
    }

    /// (distance, point, view).
    type Candidate = (f32, u64, usize);

    /// The `k` nearest of `fresh` by [`Fresh::nearest`], beside the exact scan of `vectors`
    /// (point `3 i` is row `i`), both sorted.
    fn both_scans(
        fresh: &Fresh,
        vectors: &[Vec<f32>],
        metric: Metric,
        query: &[f32],
        k: usize,
    ) -> (Vec<Candidate>, Vec<Candidate>) {
        let kernels = Kernels::active();
        let request = SearchRequest {
            collection: "c",
            vector: query,
            k,
            ef: 0,
            filter: None,
            with_payload: false,
        };
        let prepared = Prepared {
            metric,
            query: query.to_vec(),
            k,
            ef: 64,
            request: &request,
        };
        let mut scanned = Vec::new();
        fresh.nearest(&prepared, kernels, 0, &mut scanned);
        let mut exact: Vec<(f32, u64, usize)> = vectors
            .iter()
            .enumerate()
            .map(|(id, v)| (metric.distance(kernels, query, v), id as u64 * 3, 0))
            .collect();
        keep_nearest(&mut exact, k);
        let order =
            |a: &(f32, u64, usize), b: &(f32, u64, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
        scanned.sort_by(order);
        exact.sort_by(order);
        (scanned, exact)
    }

    fn gathered(vectors: &[Vec<f32>], metric: Metric) -> Fresh {
        let points: Vec<Point> = vectors
            .iter()
            .map(|v| Point {
                vector: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                payload: Vec::new(),
            })
            .collect();
        let listed: Vec<(u64, Option<&Point>)> = points
            .iter()
            .enumerate()
            .map(|(id, point)| (id as u64 * 3, Some(point)))
            .collect();
        Fresh::gather(&listed, vectors[0].len(), metric)
    }

    fn seed() -> u64 {
        let seed = std::env::var("VORTEX_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_f4e5);
        println!("seed {seed} (replay with VORTEX_TEST_SEED={seed})");
        seed
    }

    /// Above [`FRESH_CODES_MIN`] rows of an `l2` or `cosine` collection the fresh scan goes
    /// through `i8` codes and re-ranks what their error bounds cannot rule out: on
    /// clustered rows (near ties everywhere) its `k` nearest are exactly the exact scan's,
    /// with the exact distances, for every query.
    #[test]
    fn the_code_scan_finds_what_the_exact_scan_finds() {
        let mut rng = vortex_index::random::SplitMix::new(seed());
        let (dimension, rows, k) = (24, 3000, 10);
        let centres: Vec<Vec<f32>> = (0..8)
            .map(|_| (0..dimension).map(|_| rng.gaussian() * 4.0).collect())
            .collect();
        let raw: Vec<Vec<f32>> = (0..rows)
            .map(|row| {
                centres[row % 8]
                    .iter()
                    .map(|c| c + rng.gaussian() * 0.5)
                    .collect()
            })
            .collect();
        for metric in [Metric::L2, Metric::InnerProduct, Metric::Cosine] {
            let mut vectors = raw.clone();
            if metric.normalizes() {
                vectors.iter_mut().for_each(|v| normalize(v));
            }
            let fresh = gathered(&vectors, metric);
            // Inner product does not rank like `l2`: scanned in `f32`.
            assert_eq!(fresh.codes.is_some(), metric != Metric::InnerProduct);
            for _ in 0..200 {
                let mut query: Vec<f32> = centres[(rng.next_u64() % 8) as usize]
                    .iter()
                    .map(|c| c + rng.gaussian() * 0.6)
                    .collect();
                if metric.normalizes() {
                    normalize(&mut query);
                }
                let (scanned, exact) = both_scans(&fresh, &vectors, metric, &query, k);
                assert_eq!(scanned, exact, "{metric:?}");
            }
        }
    }

    /// Rows of very different magnitudes (a far cluster stretches the one scale, so the near
    /// rows share a handful of codes) and queries far outside the rows' range (their codes
    /// clamp): still the exact answer, by re-ranking more.
    #[test]
    fn the_code_scan_is_exact_on_wide_ranges_and_clamped_queries() {
        let mut rng = vortex_index::random::SplitMix::new(seed());
        let (dimension, k) = (8, 5);
        let vectors: Vec<Vec<f32>> = (0..2000)
            .map(|row| {
                let base = if row % 2 == 0 { 100_000.0 } else { 0.0 };
                (0..dimension)
                    .map(|d| base + (row / 2) as f32 + d as f32 * 0.001 + rng.gaussian() * 0.01)
                    .collect()
            })
            .collect();
        let fresh = gathered(&vectors, Metric::L2);
        assert!(fresh.codes.is_some());
        for at in [3.0f32, 250.5, 999.0, 100_500.0, -5e6, 7e7] {
            let query: Vec<f32> = (0..dimension).map(|d| at + d as f32 * 0.001).collect();
            let (scanned, exact) = both_scans(&fresh, &vectors, Metric::L2, &query, k);
            assert_eq!(scanned, exact, "query at {at}");
        }
    }

    /// The bound itself, row by row: a row's true distance lies within (query's error +
    /// row's error) of its code distance, for large coordinates close together (where an
    /// `f32` decoding rounds by as much as the codes' resolution) and for ordinary ones.
    #[test]
    fn every_rows_true_distance_is_within_its_bound() {
        let mut rng = vortex_index::random::SplitMix::new(seed());
        for (centre, spread) in [(999_999.5f32, 0.9f32), (0.0, 3.0), (-40_000.0, 0.01)] {
            let dimension = 6;
            let rows: Vec<f32> = (0..dimension * 1200)
                .map(|_| centre + (rng.unit() as f32 - 0.5) * spread)
                .collect();
            let codes = FreshCodes::of(&rows, dimension, Metric::L2).unwrap();
            let scale = f64::from(codes.quantizer.scales()[0]);
            for _ in 0..20 {
                let query: Vec<f32> = (0..dimension)
                    .map(|_| centre + (rng.unit() as f32 - 0.5) * spread * 1.2)
                    .collect();
                let mut code = vec![0i8; dimension];
                codes.quantizer.encode(&query, &mut code);
                let query_error = quantization_error(&codes.quantizer, &query, &code);
                for (row, vector) in rows.chunks_exact(dimension).enumerate() {
                    let stored = &codes.codes[row * dimension..(row + 1) * dimension];
                    let by_code: f64 = code
                        .iter()
                        .zip(stored)
                        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                        .sum::<f64>()
                        .sqrt()
                        * scale;
                    let truth: f64 = query
                        .iter()
                        .zip(vector)
                        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    let slack = query_error + f64::from(codes.errors[row]);
                    assert!(
                        (truth - by_code).abs() <= slack * (1.0 + 1e-9) + 1e-12 * f64::from(centre.abs() + 1.0),
                        "centre {centre}: row {row} at {truth}, code distance {by_code}, slack {slack}"
                    );
                }
            }
        }
    }
}

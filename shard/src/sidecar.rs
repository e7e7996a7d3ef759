//! Side-car indexes: an HNSW graph per SSTable, built by the storage engine's compaction hook
//! while a flush or compaction runs, durable before the table is published.
//!
//! For each table of a live collection, [`SideCars::table_written`] reads the table's vector
//! region (the mapped file, slot `i` at `i × stride`), labels node `i` with the point id of
//! slot `i` ([`Table::region_points`]), builds the graph with the collection's metric, `m`,
//! `ef_construction` and quantization, and saves it as `<shard>/indexes/<table>.hnsw`
//! (temporary file, sync, rename, directory sync: `Hnsw::save`). The table is published only
//! after this returned. A deleted table's side-car is deleted with it; at open, side-cars of
//! tables no version lists are removed, the others are mapped (no rebuild), and a missing one
//! is rebuilt.
//!
//! The graph is built over the region in place (`Hnsw::build_over`, through a mapping of the
//! table file): the vectors are not copied, and the side-car file holds only the graph,
//! labels and codes. Cosine collections store unit vectors, so the rows are used as they are.
//!
//! **A flush does not wait for its graph** (issue #23 item 1): [`SideCars::table_flushed`]
//! registers the flushed table at once without a graph, with its rows for an exact scan
//! ([`Segment::rows`]), and queues the build for the side-car's own builder thread; the
//! flush installs and the WAL is checkpointed meanwhile. When the build is done the segment
//! is registered again with its graph ([`SideCars::generation`] moves, and the shard
//! publishes it). A table whose side-car is missing at open (a crash before its build
//! finished) is registered and queued the same way, after a check of its blocks, so that
//! an open never waits for builds (at most [`DEFERRED_MAX`] of them; past that they are
//! built before the shard opens). A flush defers its build only while the builder has
//! nothing to do; otherwise it builds before it publishes, as before, so that ingest does
//! not outrun index builds. **A compaction's outputs are deferred too**
//! ([`SideCars::table_compacted`]), up to [`DEFERRED_MAX`] waiting builds: the merge
//! installs at once and each graph follows, seeded from the graph of the input holding most of its points, chosen
//! when the build is deferred (the inputs' side-cars go once they are retired; the job keeps
//! the seed mapped). A kill during that build then loses the build, not the merge: before,
//! a merge of level 1 built its graph before it installed, and each kill threw both away.

use crate::error::ShardError;
use crate::payload;
use crate::payload_index::PayloadIndex;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use vortex_index::{
    vector_stride, BuildControl, BuildParams, Helpers, Hnsw, IndexError, MappedSource, Mapping,
    Metric, Quantization, RowChecksums, RowDamage, Seed, Store,
};
use vortex_storage::sstable::table::Table;
use vortex_storage::{CompactionHook, Files, Mapped};
use vortex_vbp::message::{CollectionSpec, Metric as WireMetric, VectorType};

/// The index metric of a collection's metric.
pub fn index_metric(metric: WireMetric) -> Metric {
    match metric {
        WireMetric::L2 => Metric::L2,
        WireMetric::Ip => Metric::InnerProduct,
        WireMetric::Cosine => Metric::Cosine,
    }
}

/// The side-car file of table `number`.
fn sidecar_name(number: u64) -> String {
    format!("{number:06}.hnsw")
}

fn parse_sidecar_name(name: &str) -> Option<u64> {
    name.strip_suffix(".hnsw")?.parse().ok()
}

/// A segment's search structures, by node (node `i` = slot `i` of the vector region).
#[derive(Debug)]
pub struct Segment {
    /// The table's number.
    pub number: u64,
    /// The collection's id.
    pub collection: u32,
    /// The side-car HNSW (built, or mapped from its file); `None` when the table holds no
    /// vector of the collection's dimension (only deletes, say), or while its build waits.
    pub graph: Option<Hnsw>,
    /// While the graph is being built (a flushed table's, or one missing at open): the
    /// table's vector region, searched by an exact scan meanwhile.
    pub rows: Option<Region>,
    /// Which nodes hold which payload values.
    pub payloads: PayloadIndex,
    /// Each node's point id, ascending (slots are in key order).
    pub labels: Vec<u64>,
    /// Every point id the table holds a version of, tombstones included, ascending.
    pub keys: Vec<u64>,
}

impl Segment {
    /// The node of `point`, if this segment holds a vector of it.
    pub fn node_of(&self, point: u64) -> Option<u32> {
        self.labels
            .binary_search(&point)
            .ok()
            .map(|node| node as u32)
    }

    /// Bytes of its search structures in memory (a mapped graph counts in full).
    pub fn resident_bytes(&self) -> usize {
        self.graph.as_ref().map_or(0, Hnsw::memory_bytes)
            + (self.labels.len() + self.keys.len()) * 8
    }

    /// Whether the key ranges of the two segments meet (if not, neither can supersede the
    /// other).
    pub fn overlaps(&self, other: &Segment) -> bool {
        match (
            self.keys.first(),
            self.keys.last(),
            other.keys.first(),
            other.keys.last(),
        ) {
            (Some(low), Some(high), Some(other_low), Some(other_high)) => {
                low <= other_high && other_low <= high
            }
            _ => false,
        }
    }

    /// Whether this segment holds a version (or a tombstone) of `point`.
    pub fn holds(&self, point: u64) -> bool {
        self.keys.binary_search(&point).is_ok()
    }
}

/// A table's vector region as rows of `vector_stride(dim)` floats (node `i` = slot `i`),
/// with the region's checksums, verified as searches read the rows in place: a unit that
/// fails fences the table ([`region_checksums`]).
#[derive(Debug)]
pub struct Region {
    /// The rows, through a mapping of the table's file.
    pub rows: Store<f32>,
    /// Their checksums.
    pub checksums: Arc<RowChecksums>,
}

impl Region {
    /// The vector of `node` (`dim` floats), its units verified; `Ok(None)` past the rows.
    pub fn row(&self, node: u32, dim: usize) -> Result<Option<&[f32]>, RowDamage> {
        let start = node as usize * vector_stride(dim);
        let Some(row) = self.rows.get(start..start + dim) else {
            return Ok(None);
        };
        self.checksums.check(&self.rows, node)?;
        Ok(Some(row))
    }

    /// Copies the vector of `node` into `out` (`dim` floats) by a read of the file, not of
    /// the mapping (see `vortex_index::Rows`), its units verified the same way; false past
    /// the rows.
    pub fn read(&self, node: u32, out: &mut [f32]) -> Result<bool, RowDamage> {
        if !self.checksums.covers(node as usize + 1) {
            return Ok(false);
        }
        self.checksums.check_read(&self.rows, node)?;
        Ok(self
            .rows
            .read_into(node as usize * vector_stride(out.len()), out))
    }
}

/// The checksums of `table`'s vector region (rows of `dim` floats), for the rows searches
/// read in place: a unit that fails fences the table, as a read of the table would.
pub(crate) fn region_checksums(table: &Table, dim: usize) -> Arc<RowChecksums> {
    let fence = table.vector_fence();
    Arc::new(RowChecksums::new(
        table.vector_unit_checksums().to_vec(),
        dim,
        Some(Box::new(move |damage: &RowDamage| {
            fence.damaged(damage.unit, &damage.to_string());
        })),
    ))
}

/// What a segment reads from its table.
struct Contents {
    labels: Vec<u64>,
    payloads: PayloadIndex,
    keys: Vec<u64>,
}

/// The side-car builder and registry, shared by the shard and the background workers.
#[derive(Debug)]
pub struct SideCars {
    /// The LEU's storage file system: side-cars and the tables they map go through it.
    files: Arc<dyn Files>,
    dir: PathBuf,
    /// Live collections' schemas by id (dropped ones are absent).
    specs: RwLock<HashMap<u32, CollectionSpec>>,
    /// Loaded or built indexes by table number.
    indexes: RwLock<HashMap<u64, Arc<Segment>>>,
    /// Graph nodes built by insertion, and carried over from a seed graph, since open.
    nodes_inserted: AtomicU64,
    nodes_carried: AtomicU64,
    /// Threads per graph build: the background worker, plus idle-priority helpers.
    build_threads: usize,
    /// Set when the shard closes: running builds stop, their flush or merge is abandoned
    /// (the WAL and the older tables still hold everything) and redone after the next open.
    cancel: Arc<AtomicBool>,
    /// Builds cancelled since open.
    builds_cancelled: AtomicU64,
    /// Flushed tables whose graphs are built after they were published.
    builder: Builder,
    /// Moves whenever a segment is registered (a deferred build finished, say): the shard
    /// publishes again when it moved.
    generation: AtomicU64,
}

/// A seed graph is used when it carries at least this share of a new graph's nodes.
const SEED_SHARE_MIN: f64 = 0.125;

/// Builds that may wait for the builder thread at open (tables found without their
/// side-car); past this, the table's graph is built before the shard opens (bounds the
/// tables searched by exact scan). A flush defers its build only when the builder is idle.
pub const DEFERRED_MAX: usize = 16;

/// A table whose graph is built after it was published.
#[derive(Debug)]
struct Deferred {
    table: Arc<Table>,
    /// Found without its side-car at open: its blocks are checked before the build.
    verify: bool,
    /// A compaction's output: the graph it is seeded from, chosen when the build was
    /// deferred (the compaction's inputs, whose side-cars go once they are retired, are
    /// still registered then), with the carried node of each row.
    seed: Option<(Arc<Segment>, Vec<u32>)>,
}

/// Why a build is deferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A flushed table.
    Flush,
    /// A compaction's output.
    Compaction,
    /// Found without its side-car at open: checked before the build.
    Open,
}

/// The builds that wait, and the thread that runs them.
#[derive(Debug, Default)]
struct Builder {
    queue: Mutex<VecDeque<Deferred>>,
    /// Signalled when a build is queued or finishes, and at stop.
    changed: Condvar,
    /// Vectors of the queued tables and of the one being built.
    points: AtomicU64,
    /// A build is running.
    busy: AtomicBool,
    /// Builds wait while set ([`SideCars::hold_builds`]).
    held: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl SideCars {
    /// Side-cars kept in `dir` in `files` (created if missing), each graph built by
    /// `build_threads` threads (at least one).
    pub fn new(
        files: Arc<dyn Files>,
        dir: &Path,
        build_threads: usize,
    ) -> Result<Self, ShardError> {
        files
            .create_dir_all(dir)
            .map_err(|e| ShardError::io("create", dir, e))?;
        Ok(SideCars {
            files,
            dir: dir.to_owned(),
            specs: RwLock::new(HashMap::new()),
            indexes: RwLock::new(HashMap::new()),
            nodes_inserted: AtomicU64::new(0),
            nodes_carried: AtomicU64::new(0),
            build_threads: build_threads.max(1),
            cancel: Arc::new(AtomicBool::new(false)),
            builds_cancelled: AtomicU64::new(0),
            builder: Builder::default(),
            generation: AtomicU64::new(0),
        })
    }

    /// Starts the thread that builds the graphs of flushed tables after they were
    /// published, at `nice` (the store's background priority). Until it runs, flushes build
    /// before they publish.
    pub fn start_builder(self: &Arc<Self>, nice: i32) -> Result<(), ShardError> {
        let weak = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("vortex-sidecar".to_owned())
            .spawn(move || {
                // Spawned by a pinned LEU, it would share that LEU's one CPU: it may run
                // anywhere the process may, below the LEUs as the store's workers do.
                let _ = vortex_io::affinity::unpin_current_thread();
                if nice != 0 {
                    if let Err(error) = vortex_io::affinity::set_current_thread_nice(nice) {
                        tracing::warn!(nice, %error, "cannot lower the side-car builder's priority");
                    }
                }
                build_deferred_loop(&weak)
            })
            .map_err(|e| ShardError::io("start the side-car builder", &self.dir, e))?;
        if let Ok(mut slot) = self.builder.thread.lock() {
            *slot = Some(thread);
        }
        Ok(())
    }

    /// Stops every running build, and every later one (the shard is closing), and waits for
    /// the builder thread to end. What was queued is built after the next open.
    pub fn cancel_builds(&self) {
        self.cancel.store(true, Ordering::Release);
        {
            let _queue = self.builder.queue.lock();
            self.builder.changed.notify_all();
        }
        let thread = self
            .builder
            .thread
            .lock()
            .ok()
            .and_then(|mut slot| slot.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Holds the deferred builds (they queue, their tables searched exactly) until
    /// released; a build running goes on.
    pub fn hold_builds(&self, hold: bool) {
        self.builder.held.store(hold, Ordering::Release);
        let _queue = self.builder.queue.lock();
        self.builder.changed.notify_all();
    }

    /// Moves whenever a segment is registered: a shard that published at another value
    /// publishes again (a deferred build finished).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Vectors whose graph is queued or being built (stats: index build backlog).
    pub fn deferred_points(&self) -> u64 {
        self.builder.points.load(Ordering::Acquire)
    }

    /// Waits until no build is queued or running (or the builds are cancelled or held):
    /// after [`Shard::flush`](crate::Shard::flush), every segment has its graph.
    pub fn wait_deferred(&self) {
        let Ok(mut queue) = self.builder.queue.lock() else {
            return;
        };
        loop {
            let busy = self.builder.busy.load(Ordering::Acquire);
            let held = self.builder.held.load(Ordering::Acquire);
            // Done when nothing waits or runs; given up on when cancelled, or when the
            // queued builds are held (and none runs).
            if (queue.is_empty() && !busy) || self.cancel.load(Ordering::Acquire) || (held && !busy)
            {
                return;
            }
            queue = match self.builder.changed.wait(queue) {
                Ok(queue) => queue,
                Err(_) => return,
            };
        }
    }

    /// Registers `table` without its graph, searched by an exact scan over its rows, and
    /// queues the build; false (nothing done) when the builder is not running, or has work
    /// already for a flushed table (`verify` false), or [`DEFERRED_MAX`] builds wait for
    /// one found at open (`verify` true).
    fn defer(&self, table: &Arc<Table>, why: Why) -> Result<bool, ShardError> {
        let verify = why == Why::Open;
        let Some(spec) = self.spec(table.footer().collection) else {
            return Ok(false);
        };
        let running = self
            .builder
            .thread
            .lock()
            .is_ok_and(|thread| thread.is_some());
        // A flush defers only while the builder is idle: with a build running or waiting it
        // builds its own graph, so that ingest never outruns index builds (flushes that
        // outran them filled level 0 up to its stop, and a restart then stayed THROTTLED
        // until a compaction had caught up). An open queues what it finds, up to the bound.
        // A merge's outputs queue up to the bound: the merge is what drains level 0, and
        // a kill during its builds must not throw it away (issue #23 item 1).
        // The builds that wait or run, whose tables a crash leaves without a side-car: an
        // open takes up to the bound into its queue without building them first.
        let room = self.builder.queue.lock().is_ok_and(|queue| {
            let busy = self.builder.busy.load(Ordering::Acquire);
            match why {
                Why::Open => queue.len() < DEFERRED_MAX,
                Why::Compaction => queue.len() + usize::from(busy) < DEFERRED_MAX,
                Why::Flush => queue.is_empty() && !busy,
            }
        });
        if !running || !room {
            return Ok(false);
        }
        // Read before the queue is locked: the builder thread does not wait on this.
        let rows = Region {
            rows: self.rows(table, spec.dimension as usize)?,
            checksums: region_checksums(table, spec.dimension as usize),
        };
        let contents = self.read_table(table)?;
        let seed = match why {
            Why::Compaction => {
                self.seed_for(table.number(), table.footer().collection, &contents.labels)
            }
            Why::Flush | Why::Open => None,
        };
        let Ok(mut queue) = self.builder.queue.lock() else {
            return Ok(false);
        };
        self.register_segment(table, None, Some(rows), contents, false);
        self.builder
            .points
            .fetch_add(table.footer().vector_count, Ordering::AcqRel);
        queue.push_back(Deferred {
            table: Arc::clone(table),
            verify,
            seed,
        });
        self.builder.changed.notify_all();
        Ok(true)
    }

    /// Runs one deferred build: its graph replaces the segment registered without one, if
    /// that is still there (a table compacted away meanwhile is skipped).
    fn build_deferred(&self, deferred: &Deferred) {
        let number = deferred.table.number();
        let waiting = self
            .index(number)
            .is_some_and(|segment| segment.graph.is_none() && segment.rows.is_some());
        if !waiting || self.cancel.load(Ordering::Acquire) {
            return;
        }
        let checked = if deferred.verify {
            deferred
                .table
                .verify(None, None)
                .map(|_| ())
                .map_err(ShardError::from)
        } else {
            Ok(())
        };
        let built = checked.and_then(|()| self.build_graph(&deferred.table, deferred.seed.clone()));
        match built {
            Ok(Some((graph, contents))) => {
                // Compacted away while it was built: its side-car goes with it.
                if !self.register_segment(&deferred.table, Some(graph), None, contents, true) {
                    self.table_deleted(number);
                }
            }
            Ok(None) => {}
            Err(_) if self.cancel.load(Ordering::Acquire) => {} // built after the next open
            Err(error) => {
                tracing::error!(table = number, %error, "a side-car build failed; the table is searched exactly");
                if deferred.verify {
                    deferred
                        .table
                        .quarantine(&format!("side-car rebuild failed: {error}"));
                }
            }
        }
    }

    /// Builds cancelled since open.
    pub fn builds_cancelled(&self) -> u64 {
        self.builds_cancelled.load(Ordering::Relaxed)
    }

    /// Records a live collection's schema (tables of unknown collections get no side-car
    /// and are dropped by flushes and compactions).
    pub fn set_spec(&self, id: u32, spec: Option<CollectionSpec>) {
        if let Ok(mut specs) = self.specs.write() {
            match spec {
                Some(spec) => specs.insert(id, spec),
                None => specs.remove(&id),
            };
        }
    }

    fn spec(&self, id: u32) -> Option<CollectionSpec> {
        self.specs.read().ok()?.get(&id).cloned()
    }

    /// Graph nodes built by insertion, and carried over from a seed graph, since open.
    pub fn build_counts(&self) -> (u64, u64) {
        (
            self.nodes_inserted.load(Ordering::Relaxed),
            self.nodes_carried.load(Ordering::Relaxed),
        )
    }

    /// The live segment of `collection` (other than table `number`) with a graph that holds
    /// the most of `labels`, and for each label its node there (`u32::MAX` where it has
    /// none), if it holds at least [`SEED_SHARE_MIN`] of them. The build checks each
    /// carried node's vector, so a segment holding an older version of a point is harmless.
    fn seed_for(
        &self,
        number: u64,
        collection: u32,
        labels: &[u64],
    ) -> Option<(Arc<Segment>, Vec<u32>)> {
        let (first, last) = (*labels.first()?, *labels.last()?);
        let candidates: Vec<Arc<Segment>> = self
            .indexes
            .read()
            .ok()?
            .values()
            .filter(|segment| {
                segment.number != number
                    && segment.collection == collection
                    && segment.graph.is_some()
                    && segment.labels.first().is_some_and(|&low| low <= last)
                    && segment.labels.last().is_some_and(|&high| high >= first)
            })
            .cloned()
            .collect();
        let (held, segment) = candidates
            .into_iter()
            .map(|segment| {
                let held = labels
                    .iter()
                    .filter(|&&l| segment.node_of(l).is_some())
                    .count();
                (held, segment)
            })
            .max_by_key(|(held, segment)| (*held, std::cmp::Reverse(segment.number)))?;
        if (held as f64) < labels.len() as f64 * SEED_SHARE_MIN {
            return None;
        }
        let carried = labels
            .iter()
            .map(|&label| segment.node_of(label).unwrap_or(u32::MAX))
            .collect();
        Some((segment, carried))
    }

    /// The search structures of table `number`, if it has them.
    pub fn index(&self, number: u64) -> Option<Arc<Segment>> {
        self.indexes.read().ok()?.get(&number).cloned()
    }

    /// Maps the side-car of each live table, building the missing ones (queued for the
    /// builder thread where it runs, built here otherwise). Returns how many were rebuilt
    /// or queued.
    pub fn load(&self, tables: &[Arc<Table>]) -> Result<usize, ShardError> {
        let mut rebuilt = 0;
        for table in tables {
            if self.index(table.number()).is_some()
                || self.spec(table.footer().collection).is_none()
            {
                continue;
            }
            if let Some(reason) = table.quarantined() {
                // The store could not open it: fenced, with no segment (docs/SHARD.md).
                tracing::error!(table = table.number(), %reason, "a fenced table: not served");
                continue;
            }
            match self.load_one(table) {
                Ok(true) => rebuilt += 1,
                Ok(false) => {}
                Err(error) => {
                    // One table's damage fences that table, not the shard: the open goes on,
                    // and requests that need the table answer `Fenced`.
                    tracing::error!(
                        table = table.number(),
                        %error,
                        "a table failed its checks at open: fenced"
                    );
                    table.quarantine(&format!("at open: {error}"));
                }
            }
        }
        Ok(rebuilt)
    }

    /// Loads (or queues, or builds) one table's side-car; whether it is to be rebuilt.
    fn load_one(&self, table: &Arc<Table>) -> Result<bool, ShardError> {
        if !self.wants_index(table) {
            self.build(table)?; // no graph: keys and labels only
            return Ok(false);
        }
        let path = self.dir.join(sidecar_name(table.number()));
        let dim = self
            .spec(table.footer().collection)
            .map_or(0, |s| s.dimension as usize);
        let loaded = self.load_graph(table, dim, &path);
        match loaded {
            Ok(index) if index.len() as u64 == table.footer().vector_count => {
                index.release_pages(); // the load's checks read every section
                let contents = self.read_table(table)?;
                self.register(table, Some(index), contents);
                Ok(false)
            }
            outcome => {
                if let Err(error) = outcome {
                    tracing::warn!(path = %path.display(), %error, "rebuilding a side-car index");
                }
                // Searched exactly until the builder thread has built it (after a
                // check of the table's blocks): an open does not wait for builds.
                if matches!(self.defer(table, Why::Open), Ok(true)) {
                    return Ok(true);
                }
                // Rebuild only from a table whose blocks and vectors check out.
                table.verify(None, None).map_err(ShardError::from)?;
                self.build(table)?;
                Ok(true)
            }
        }
    }

    /// Registers `table`'s segment: its graph, and what was read from the table itself.
    fn register(&self, table: &Table, graph: Option<Hnsw>, contents: Contents) {
        self.register_segment(table, graph, None, contents, false);
    }

    /// Registers `table`'s segment (with `rows` for an exact scan while it has no graph);
    /// with `replacing`, only if a segment of the table is registered now (not one compacted
    /// away meanwhile). Returns whether it did.
    fn register_segment(
        &self,
        table: &Table,
        graph: Option<Hnsw>,
        rows: Option<Region>,
        contents: Contents,
        replacing: bool,
    ) -> bool {
        let segment = Segment {
            number: table.number(),
            collection: table.footer().collection,
            graph,
            rows,
            payloads: contents.payloads,
            labels: contents.labels,
            keys: contents.keys,
        };
        let Ok(mut indexes) = self.indexes.write() else {
            return false;
        };
        if replacing && !indexes.contains_key(&table.number()) {
            return false;
        }
        indexes.insert(table.number(), Arc::new(segment));
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Reads `table` once: each slot's point id and payload (indexed), and every key.
    fn read_table(&self, table: &Table) -> Result<Contents, ShardError> {
        let footer = table.footer();
        let mut labels = Vec::with_capacity(footer.vector_count as usize);
        let mut payloads = Vec::with_capacity(labels.capacity());
        let mut keys = Vec::with_capacity(footer.entries as usize);
        let mut damage = None;
        table.for_each_entry(|point, slot_payload| {
            keys.push(point);
            let Some(bytes) = slot_payload else { return };
            labels.push(point);
            match payload::decode(bytes) {
                Ok(decoded) => payloads.push(decoded),
                Err(error) => {
                    damage.get_or_insert(error);
                    payloads.push(None);
                }
            }
        })?;
        if let Some(error) = damage {
            return Err(ShardError::Corrupt {
                path: table.path().to_owned(),
                detail: error.to_string(),
            });
        }
        Ok(Contents {
            labels,
            payloads: PayloadIndex::build(&payloads),
            keys,
        })
    }

    /// Whether `table` gets an index: a live collection's, with vectors of its dimension.
    fn wants_index(&self, table: &Table) -> bool {
        let footer = table.footer();
        self.spec(footer.collection).is_some_and(|spec| {
            footer.vector_count > 0 && footer.vector_bytes as usize == spec.dimension as usize * 4
        })
    }

    /// The vector region of `table` as index rows, through a mapping of its file of its own
    /// (the file is never rewritten, and an unlinked file stays readable while mapped).
    fn rows(&self, table: &Table, dim: usize) -> Result<Store<f32>, ShardError> {
        let footer = table.footer();
        let path = table.path();
        if footer.stride as usize != vector_stride(dim) * 4 {
            return Err(ShardError::Index {
                table: table.number(),
                detail: format!(
                    "vector stride {} does not fit rows of {dim} floats",
                    footer.stride
                ),
            });
        }
        let mapping = self.map(path)?;
        let floats = footer.vector_count as usize * vector_stride(dim);
        Store::mapped(&mapping, footer.data_end as usize, floats).ok_or_else(|| {
            ShardError::Corrupt {
                path: path.to_owned(),
                detail: format!(
                    "the vector region ({} rows at {}) lies outside the file",
                    footer.vector_count, footer.data_end
                ),
            }
        })
    }

    fn build(&self, table: &Table) -> Result<(), ShardError> {
        if let Some((graph, contents)) = self.build_graph(table, None)? {
            self.register(table, Some(graph), contents);
        }
        Ok(())
    }

    /// Builds `table`'s graph and saves its side-car; the graph, served from its file, and
    /// what was read from the table. `None` when there is nothing to build: the collection
    /// is gone, or the table holds no vectors of its dimension (then registered without a
    /// graph here).
    fn build_graph(
        &self,
        table: &Table,
        seed: Option<(Arc<Segment>, Vec<u32>)>,
    ) -> Result<Option<(Hnsw, Contents)>, ShardError> {
        let footer = table.footer();
        let Some(spec) = self.spec(footer.collection) else {
            return Ok(None);
        };
        let contents = self.read_table(table)?;
        if !self.wants_index(table) {
            self.register(table, None, contents);
            return Ok(None);
        }
        let index_error = |detail: String| ShardError::Index {
            table: table.number(),
            detail,
        };
        let rows = self.rows(table, spec.dimension as usize)?;
        let params = BuildParams {
            metric: index_metric(spec.metric),
            m: spec.m as usize,
            ef_construction: spec.ef_construction as usize,
            threads: self.build_threads,
            control: BuildControl {
                cancel: Some(Arc::clone(&self.cancel)),
                helpers: Helpers::Idle,
            },
            quantization: match spec.vector_type {
                VectorType::F32 => Quantization::None,
                VectorType::I8 => Quantization::ScalarI8,
            },
            ..BuildParams::default()
        };
        let dim = spec.dimension as usize;
        // A node is carried only with exactly the vector its seed node has (an older
        // version of the point is inserted afresh).
        let seed = seed
            .or_else(|| self.seed_for(table.number(), footer.collection, &contents.labels))
            .filter(|(segment, _)| {
                segment.graph.as_ref().is_some_and(|graph| {
                    graph.dim() == dim && graph.m() == params.m && graph.metric() == params.metric
                })
            })
            .map(|(segment, mut carried)| {
                let graph = segment.graph.as_ref().expect("filtered on a graph");
                carry_unchanged(
                    // A damaged seed row is not carried (and fences its table).
                    |node, out| matches!(graph.read_vector(node, out), Ok(true)),
                    &rows,
                    dim,
                    &mut carried,
                );
                (segment, carried)
            });
        let built = match &seed {
            Some((segment, carried)) => {
                let graph = segment.graph.as_ref().expect("filtered on a graph");
                Hnsw::build_over_seeded(
                    dim,
                    rows,
                    Some(&contents.labels),
                    &params,
                    Seed { graph, carried },
                )
            }
            None => Hnsw::build_over(dim, rows, Some(&contents.labels), &params),
        };
        let index = built.map_err(|error| {
            if matches!(error, IndexError::Cancelled) {
                self.builds_cancelled.fetch_add(1, Ordering::Relaxed);
            }
            index_error(error.to_string())
        })?;
        let carried = seed.as_ref().map_or(0, |(_, carried)| {
            carried.iter().filter(|&&node| node != u32::MAX).count()
        });
        self.nodes_carried
            .fetch_add(carried as u64, Ordering::Relaxed);
        self.nodes_inserted
            .fetch_add((index.len() - carried) as u64, Ordering::Relaxed);
        // Rows read as zeros (a page the disk could not give, under the table's mapping or
        // the seed's) would be saved as the graph: the build fails instead.
        let lost = index.lost_page().or_else(|| {
            seed.as_ref()
                .and_then(|(segment, _)| segment.graph.as_ref()?.lost_page())
        });
        if let Some(offset) = lost {
            return Err(ShardError::index(
                table.number(),
                IndexError::PageLost { offset },
            ));
        }
        let path = self.dir.join(sidecar_name(table.number()));
        crate::files::replace_synced(&*self.files, &path.with_extension("tmp"), &path, |out| {
            index.write_to(out)
        })?;
        // Served from its file, as after a restart, not from the heap: once the node's tier
        // covers the table, nothing reads its graph or codes, and mapped pages leave the
        // resident set where heap would stay (an `i8` graph's codes are a byte per
        // dimension per point). The build read every row, and the load checks every
        // section: searches need only what they touch.
        drop(index);
        let index = self.load_graph(table, dim, &path)?;
        index.release_pages();
        Ok(Some((index, contents)))
    }

    /// Loads `table`'s side-car from `path` over the table's vector region, the region's
    /// checksums verified as searches read it ([`region_checksums`]).
    fn load_graph(&self, table: &Table, dim: usize, path: &Path) -> Result<Hnsw, ShardError> {
        let index_error = |detail: String| ShardError::Index {
            table: table.number(),
            detail,
        };
        let mapping = self.map(path)?;
        let mut index = Hnsw::load_mapped_over(path, mapping, self.rows(table, dim)?)
            .map_err(|error| index_error(error.to_string()))?;
        index
            .check_rows_with(region_checksums(table, dim))
            .map_err(|error| index_error(error.to_string()))?;
        Ok(index)
    }
}

/// A file's bytes from the storage file system, as the index reads them: the mapping
/// and, for reads that leave it untouched, `pread` (a copy, in memory).
#[derive(Debug)]
pub(crate) struct MappedFile(Mapped);

/// Maps `path` through `files` for the index (guarded against SIGBUS, see
/// `vortex_storage::lost_pages`); an empty file is refused.
pub(crate) fn map_for_index(files: &dyn Files, path: &Path) -> Result<Arc<Mapping>, ShardError> {
    let mapped = files
        .map(path)
        .map_err(|e| ShardError::io("mmap", path, e))?;
    if mapped.is_empty() {
        return Err(ShardError::io(
            "mmap",
            path,
            std::io::Error::other("empty file"),
        ));
    }
    Ok(Arc::new(Mapping::of_source(Box::new(MappedFile(mapped)))))
}

impl MappedSource for MappedFile {
    fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn read_at(&self, offset: usize, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, out)
    }

    fn is_file_mapping(&self) -> bool {
        self.0.is_file_mapping()
    }

    fn lost_page(&self) -> Option<usize> {
        self.0.lost_page()
    }
}

impl SideCars {
    /// Maps `path` (a table, a side-car) through the storage file system.
    fn map(&self, path: &Path) -> Result<Arc<Mapping>, ShardError> {
        map_for_index(&*self.files, path)
    }
}

/// The builder thread: runs the deferred builds one at a time until the builds are
/// cancelled (the shard is closing) or the side-cars are gone.
fn build_deferred_loop(weak: &Weak<SideCars>) {
    loop {
        let Some(sidecars) = weak.upgrade() else {
            return;
        };
        let builder = &sidecars.builder;
        let job = {
            let Ok(mut queue) = builder.queue.lock() else {
                return;
            };
            loop {
                if sidecars.cancel.load(Ordering::Acquire) {
                    return;
                }
                if !builder.held.load(Ordering::Acquire) {
                    if let Some(job) = queue.pop_front() {
                        builder.busy.store(true, Ordering::Release);
                        break job;
                    }
                }
                queue = match builder.changed.wait(queue) {
                    Ok(queue) => queue,
                    Err(_) => return,
                };
            }
        };
        sidecars.build_deferred(&job);
        builder
            .points
            .fetch_sub(job.table.footer().vector_count, Ordering::AcqRel);
        drop(job);
        let finished = builder.queue.lock();
        builder.busy.store(false, Ordering::Release);
        builder.changed.notify_all();
        drop(finished);
    }
}

/// Keeps in `carried` (for each row of `rows`, a node of the earlier graph or `u32::MAX`)
/// only the nodes whose vector (read by `read_old_vector`) equals the row bit for bit: a
/// seeded build carries a node only with exactly the vector it had (an older version of the
/// point is inserted afresh).
pub(crate) fn carry_unchanged(
    read_old_vector: impl Fn(u32, &mut [f32]) -> bool,
    rows: &[f32],
    dim: usize,
    carried: &mut [u32],
) {
    let stride = vector_stride(dim);
    let mut old_vector = vec![0.0f32; dim];
    for (node, old) in carried.iter_mut().enumerate() {
        if *old == u32::MAX {
            continue;
        }
        let row = &rows[node * stride..node * stride + dim];
        let same = read_old_vector(*old, &mut old_vector)
            && old_vector
                .iter()
                .zip(row)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            *old = u32::MAX;
        }
    }
}

impl CompactionHook for SideCars {
    fn table_written(&self, table: &Table) -> Result<(), String> {
        self.build(table).map_err(|error| error.to_string())
    }

    /// Published now, searched by an exact scan, its graph built by the builder thread
    /// (see the module's documentation); built here when the builder has work already.
    fn table_flushed(&self, table: &Arc<Table>) -> Result<(), String> {
        if self.wants_index(table) && self.defer(table, Why::Flush).map_err(|e| e.to_string())? {
            return Ok(());
        }
        self.table_written(table)
    }

    /// As a flushed table: published now while the builder is idle, its graph seeded from
    /// the inputs' (chosen now, while they are registered).
    fn table_compacted(&self, table: &Arc<Table>) -> Result<(), String> {
        if self.wants_index(table)
            && self
                .defer(table, Why::Compaction)
                .map_err(|e| e.to_string())?
        {
            return Ok(());
        }
        self.table_written(table)
    }

    fn table_deleted(&self, number: u64) {
        if let Ok(mut indexes) = self.indexes.write() {
            indexes.remove(&number);
        }
        let path = self.dir.join(sidecar_name(number));
        if let Err(error) = self.files.remove(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), %error, "cannot delete a side-car index");
            }
        }
    }

    fn retain(&self, live: &BTreeSet<u64>) {
        let Ok(names) = self.files.list(&self.dir) else {
            return;
        };
        for name in names {
            let leftover = match parse_sidecar_name(&name) {
                Some(number) => !live.contains(&number),
                None => name.ends_with(".tmp"),
            };
            if leftover {
                let _ = self.files.remove(&self.dir.join(&name));
            }
        }
    }

    fn keep_collection(&self, collection: u32) -> bool {
        self.spec(collection).is_some()
    }
}

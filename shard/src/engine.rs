//! The shard engine: collections, durable points and search over one LEU's LSM store.
//!
//! Layout of a shard's directory:
//!
//! ```text
//! <dir>/CATALOG            the collections (catalog.rs)
//! <dir>/store/             the LSM store: wal/ and tables/ (docs/STORAGE.md)
//! <dir>/indexes/           side-car HNSW indexes, one per SSTable (sidecar.rs)
//! ```
//!
//! **Writes.** A point is stored under `(collection id, point id)`: its vector as
//! little-endian `f32` (it lands in the SSTables' aligned vector region), its payload in
//! `payload.rs`'s encoding. `upsert` and `delete` return the sequence number of the batch's
//! last write; the write is acknowledged once [`Shard::poll`] reports it durable. The store
//! admits a batch whole before its first write (`Store::admit`), so THROTTLED writes nothing
//! and the client retries the batch; a batch too large for the WAL to ever take at once is
//! refused with an error that says to split it.
//!
//! **Search.** The MemTables are scanned exactly (they hold the newest versions, and their
//! tombstones hide older ones); each live segment is searched through its side-car HNSW with
//! a filter that admits a node only when its point's newest version is in that segment (not
//! overwritten or deleted since) and, with a payload filter, when the payload matches. The
//! candidates are merged by distance into the top k.
//!
//! **Drop** marks the collection dropped in the catalog (durably), then removes all its
//! tables in one MANIFEST edit; what the MemTables hold of it is dropped at the next flush.

use crate::catalog::Catalog;
use crate::error::ShardError;
use crate::payload;
use crate::sidecar::{index_metric, Segment, SideCars};
use crate::view::decode_vector;
use crate::view::{
    check_vector, live_collection, PublishedView, SearchRequest, ShardView, ViewSegment,
};
pub use crate::view::{BATCH_POINTS_MAX, EF_MAX, K_MAX};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Weak;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vortex_index::metric::normalize;
use vortex_index::{Kernels, NodeSet};
use vortex_io::RingConfig;
use vortex_storage::{
    DirLock, DirectIo, Env, Files, Key, PosixEnv, SharedLogRing, Store, StoreHooks, StoreOptions,
    StoreStats, TableRepair, WalOptions, WriteSize,
};
use vortex_vbp::message::{CollectionInfo, CollectionSpec, Hit, Payload, PointRecord};

/// Bytes of a put's WAL record before its vector: collection, point id, vector length.
const RECORD_HEADER_BYTES: usize = 4 + 8 + 4;

/// Fresh points (MemTable entries) a search scans exactly at most, by default: beyond
/// this the MemTable is flushed into a segment with its own index.
pub const FRESH_POINTS_MAX: usize = 4096;

/// How a shard is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOptions {
    /// The LSM store's options (`memtable_entries_max` bounds the exact scan).
    pub store: StoreOptions,
    /// Threads per side-car graph build: the store's background worker, plus helpers at
    /// idle priority (they run only on CPU time the LEUs leave). The default, one, builds a
    /// graph that is a pure function of its table; more build a big merge that many times
    /// faster on idle cores, with the recall of one on ordinary data but not on degenerate
    /// data (on 3,000 points on a line, parallel graphs missed from none to 31 of them).
    pub index_build_threads: usize,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            store: StoreOptions {
                memtable_entries_max: FRESH_POINTS_MAX,
                // A batch of 1,000 points of 768 floats (3 MiB) is admitted whole.
                wal: WalOptions {
                    batch_bytes_max: 8 << 20,
                    ..WalOptions::default()
                },
                ..StoreOptions::default()
            },
            index_build_threads: 1,
        }
    }
}

/// What an upsert's checks found: the collection, and the batch as the store takes it.
struct CheckedUpsert {
    id: u32,
    spec: CollectionSpec,
    /// Each point's payload, encoded (empty: no payloads).
    encoded: Vec<Vec<u8>>,
    sizes: Vec<WriteSize>,
}

/// What closing did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardCloseReport {
    /// Index builds (of a flush or a merge) stopped by the close, or earlier since open.
    pub builds_cancelled: u64,
}

/// What opening found.
#[derive(Debug, Clone)]
pub struct ShardOpenReport {
    /// WAL records replayed.
    pub replayed: u64,
    /// Live segments (SSTables).
    pub segments: usize,
    /// Side-car indexes rebuilt because they were missing or damaged.
    pub indexes_rebuilt: usize,
    /// From the call to ready to serve.
    pub time_to_ready: Duration,
}

/// Shard statistics.
#[derive(Debug, Clone, Default)]
pub struct ShardStats {
    /// Live collections.
    pub collections: usize,
    /// Live segments.
    pub segments: usize,
    /// Side-car indexes held.
    pub indexes: usize,
    /// Resident bytes of the indexes (mapped files count in full).
    pub index_bytes: usize,
    /// Fresh points a search scans exactly (MemTable entries, frozen one included).
    pub fresh_points: usize,
    /// Points whose side-car build is pending (the frozen MemTable being flushed).
    pub index_build_backlog: usize,
    /// Compactions running or due.
    pub pending_compactions: usize,
    /// Bytes of segments and indexes per indexed vector version.
    pub bytes_per_vector: f64,
    /// Graph nodes inserted by index builds since open.
    pub index_nodes_inserted: u64,
    /// Graph nodes carried over from an earlier segment's graph instead (see `Seed`).
    pub index_nodes_carried: u64,
    /// The store's own.
    pub store: StoreStats,
}

/// One LEU's shard.
pub struct Shard {
    /// The store's file system, which the catalog and the side-cars share.
    files: Arc<dyn Files>,
    /// Shared with the views (error messages name it).
    dir: Arc<Path>,
    /// Cancels running index builds when the shard is dropped, before the store (declared
    /// after it, so dropped after it) waits for its background jobs.
    _cancel_builds: CancelBuilds,
    store: Store<PosixEnv>,
    catalog: Arc<Catalog>,
    sidecars: Arc<SideCars>,
    kernels: &'static Kernels,
    scratch: Vec<u8>,
    /// The live tables, in read order, when the superseded sets were last brought up to date.
    segment_order: Vec<u64>,
    /// The store's version epoch then.
    segment_epoch: Option<u64>,
    /// Each live table's superseded set (see `refresh_segments`); copied on write, so views
    /// published earlier keep theirs.
    superseded: HashMap<u64, Arc<NodeSet>>,
    /// What reads see (see view.rs), republished after every change.
    view: PublishedView,
    /// The store's reads epoch and the side-cars' generation when the view was last
    /// published.
    published_at: Option<(u64, u64)>,
    /// This process's hold on `dir`; declared last so that it is let go of after the store
    /// has stopped.
    _lock: DirLock,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Shard {
    /// Opens (or creates) the shard in `dir`: catalog, store (WAL replay), side-car indexes
    /// (mapped, missing ones rebuilt). Logs the time to ready.
    pub fn open(dir: &Path, options: ShardOptions) -> Result<(Self, ShardOpenReport), ShardError> {
        let started = Instant::now();
        std::fs::create_dir_all(dir).map_err(|e| ShardError::io("create", dir, e))?;
        // Before anything is read: a second opener would replay and rewrite the same WAL.
        let lock = DirLock::acquire(dir)?;
        let env = PosixEnv::new(&RingConfig::plain(256), DirectIo::Auto)
            .map_err(|e| ShardError::io("io_uring setup", dir, e))?;
        let files = env.files();
        let catalog = Catalog::load(&*files, dir)?;
        let sidecars = Arc::new(SideCars::new(
            Arc::clone(&files),
            &dir.join("indexes"),
            options.index_build_threads,
        )?);
        for collection in catalog.live() {
            sidecars.set_spec(collection.id, Some(collection.spec.clone()));
        }
        // Flushed tables' graphs, and those missing at open, are built by this thread after
        // the tables are published; the guard stops it if the open fails from here on.
        sidecars.start_builder(options.store.background_nice)?;
        let cancel_builds = CancelBuilds(Arc::clone(&sidecars));
        let hooks = StoreHooks {
            compaction: Arc::clone(&sidecars) as Arc<dyn vortex_storage::CompactionHook>,
            ..StoreHooks::default()
        };
        let (mut store, report) = Store::open(env, &dir.join("store"), options.store, hooks)?;
        // A drop interrupted between the catalog and the store finishes now.
        let dropped: Vec<u32> = catalog.dropped().collect();
        for id in dropped {
            store.remove_collection_tables(id)?;
        }
        let tables: Vec<_> = store.tables().into_iter().map(|(_, t)| t).collect();
        let indexes_rebuilt = sidecars.load(&tables)?;
        let view = PublishedView::new(ShardView::new(
            Arc::from(dir),
            Arc::new(catalog.clone()),
            store.snapshot(),
            Vec::new(),
            Kernels::active(),
        ));
        let mut shard = Shard {
            files,
            dir: Arc::from(dir),
            store,
            catalog: Arc::new(catalog),
            _cancel_builds: cancel_builds,
            sidecars,
            kernels: Kernels::active(),
            scratch: Vec::new(),
            segment_order: Vec::new(),
            segment_epoch: None,
            superseded: HashMap::new(),
            view,
            published_at: None,
            _lock: lock,
        };
        shard.refresh_segments()?;
        shard.publish();
        let report = ShardOpenReport {
            replayed: report.replay.records,
            segments: shard.segment_order.len(),
            indexes_rebuilt,
            time_to_ready: started.elapsed(),
        };
        tracing::info!(
            dir = %dir.display(),
            replayed = report.replayed,
            segments = report.segments,
            rebuilt = report.indexes_rebuilt,
            ms = report.time_to_ready.as_secs_f64() * 1e3,
            "shard ready"
        );
        Ok((shard, report))
    }

    /// Creates a collection (durably in the catalog).
    pub fn create_collection(&mut self, spec: CollectionSpec) -> Result<(), ShardError> {
        let mut catalog = Catalog::clone(&self.catalog);
        let id = catalog.create(spec.clone())?;
        catalog.save(&*self.files, &self.dir)?;
        self.catalog = Arc::new(catalog);
        self.sidecars.set_spec(id, Some(spec));
        self.publish();
        Ok(())
    }

    /// Drops a collection: gone from the catalog at once (durably), its segments removed.
    pub fn drop_collection(&mut self, name: &str) -> Result<(), ShardError> {
        let mut catalog = Catalog::clone(&self.catalog);
        let id = catalog.drop_collection(name)?;
        catalog.save(&*self.files, &self.dir)?;
        self.catalog = Arc::new(catalog);
        self.sidecars.set_spec(id, None);
        self.published_at = None; // the catalog changed: publish whatever the store did
        let result = self.store.remove_collection_tables(id);
        self.settle(result).map(|_| ())
    }

    /// Live collections with their live point counts (from the segments and MemTables, no
    /// scan).
    pub fn list_collections(&self) -> Result<Vec<CollectionInfo>, ShardError> {
        let view = self.view.load();
        self.catalog
            .live()
            .map(|c| {
                Ok(CollectionInfo {
                    spec: c.spec.clone(),
                    points: view.count_points(c.id)?,
                })
            })
            .collect()
    }

    /// One collection with its live point count.
    pub fn describe_collection(&self, name: &str) -> Result<CollectionInfo, ShardError> {
        let (id, spec) = live_collection(&self.catalog, name)?;
        let view = self.view.load();
        // Its count would leave the fenced table's points out (a listing does, documented).
        if let Some(fenced) = view.fenced(id, None) {
            return Err(fenced);
        }
        Ok(CollectionInfo {
            spec,
            points: view.count_points(id)?,
        })
    }

    /// Checks an upsert as [`upsert`](Self::upsert) would, without writing anything: every
    /// error `upsert` can give that depends only on the request and the catalog (collection,
    /// batch limit, dimension, values, payloads, record size). The LEU that reads a batch
    /// spanning several LEUs checks all of it here before any LEU runs its part, so that
    /// such an error means nothing was applied.
    pub fn check_upsert(
        &self,
        collection: &str,
        ids: &[u64],
        vectors: &[f32],
        payloads: &[Payload],
    ) -> Result<(), ShardError> {
        self.checked_upsert(collection, ids, vectors, payloads)
            .map(|_| ())
    }

    /// Checks a delete as [`delete`](Self::delete) would, without writing anything.
    pub fn check_delete(&self, collection: &str, ids: &[u64]) -> Result<(), ShardError> {
        self.checked_delete(collection, ids).map(|_| ())
    }

    /// An upsert's checks; the collection's id and spec and the encoded payloads.
    fn checked_upsert(
        &self,
        collection: &str,
        ids: &[u64],
        vectors: &[f32],
        payloads: &[Payload],
    ) -> Result<CheckedUpsert, ShardError> {
        let (id, spec) = live_collection(&self.catalog, collection)?;
        let dimension = spec.dimension as usize;
        let (writes_max, _) = self.store.batch_limits();
        if ids.is_empty() || ids.len() > writes_max {
            return Err(ShardError::Invalid(format!(
                "an upsert carries 1 to {writes_max} points (the store's batch limit), not {}",
                ids.len()
            )));
        }
        if vectors.len() != ids.len() * dimension {
            let points = ids.len();
            return Err(if vectors.len().is_multiple_of(points) {
                ShardError::DimensionMismatch(format!(
                    "collection {collection:?} has dimension {dimension}; the {points} \
                     point(s) sent have vectors of dimension {}",
                    vectors.len() / points
                ))
            } else {
                ShardError::Invalid(format!(
                    "{} floats do not make {points} vectors of one dimension (collection \
                     {collection:?} has dimension {dimension})",
                    vectors.len()
                ))
            });
        }
        if !payloads.is_empty() && payloads.len() != ids.len() {
            return Err(ShardError::Invalid(format!(
                "{} payloads for {} points (give none or one each)",
                payloads.len(),
                ids.len()
            )));
        }
        for (index, row) in vectors.chunks_exact(dimension).enumerate() {
            if let Err(ShardError::Invalid(detail)) = check_vector(row, dimension, "") {
                return Err(ShardError::Invalid(format!("point {}{detail}", ids[index])));
            }
        }
        let record_bytes_max = self.store.record_bytes_max();
        if RECORD_HEADER_BYTES + dimension * 4 > record_bytes_max {
            return Err(ShardError::Invalid(format!(
                "a vector of dimension {dimension} exceeds the record limit of {record_bytes_max} bytes"
            )));
        }
        let mut encoded = Vec::with_capacity(payloads.len());
        for (index, payload) in payloads.iter().enumerate() {
            payload::validate(payload).map_err(|e| ShardError::Invalid(e.to_string()))?;
            let mut bytes = Vec::new();
            payload::encode(Some(payload), &mut bytes);
            let record_bytes = RECORD_HEADER_BYTES + dimension * 4 + bytes.len();
            if record_bytes > record_bytes_max {
                return Err(ShardError::Invalid(format!(
                    "point {}: {record_bytes} bytes with its payload, above the limit of \
                     {record_bytes_max}",
                    ids[index]
                )));
            }
            encoded.push(bytes);
        }
        let sizes: Vec<WriteSize> = (0..ids.len())
            .map(|index| WriteSize::Put {
                vector_bytes: dimension * 4,
                payload_bytes: encoded.get(index).map_or(0, Vec::len),
            })
            .collect();
        self.store
            .check_batch(&sizes)
            .map_err(|error| ShardError::Invalid(error.to_string()))?;
        Ok(CheckedUpsert {
            id,
            spec,
            encoded,
            sizes,
        })
    }

    /// Upserts a batch: `vectors` holds `ids.len() × dimension` floats, `payloads` is empty
    /// or one per id. Returns the sequence number to wait for (see [`Shard::poll`]).
    pub fn upsert(
        &mut self,
        collection: &str,
        ids: &[u64],
        vectors: &[f32],
        payloads: &[Payload],
    ) -> Result<u64, ShardError> {
        // Everything is checked before the first write, and the store admits the whole batch
        // before it (THROTTLED then comes before any write, not part-way); only an I/O
        // failure can stop a batch part-way, and a retry of the whole batch is harmless.
        let CheckedUpsert {
            id,
            spec,
            encoded,
            sizes,
        } = self.checked_upsert(collection, ids, vectors, payloads)?;
        let dimension = spec.dimension as usize;
        // Admitted whole or not at all: THROTTLED never cuts a batch part-way.
        let admitted = self.store.admit(&sizes);
        self.settle(admitted)?;
        // Cosine vectors are stored as unit vectors, so that a segment's index reads the
        // table's rows as they are (and `get` returns the unit vector).
        let normalizes = index_metric(spec.metric).normalizes();
        let store = &mut self.store;
        let scratch = &mut self.scratch;
        let mut unit = Vec::with_capacity(if normalizes { dimension } else { 0 });
        let written = ids.iter().enumerate().try_fold(0, |_, (index, &point)| {
            let mut row = &vectors[index * dimension..(index + 1) * dimension];
            if normalizes {
                unit.clear();
                unit.extend_from_slice(row);
                normalize(&mut unit);
                row = &unit;
            }
            scratch.clear();
            for value in row {
                scratch.extend_from_slice(&value.to_le_bytes());
            }
            let payload = encoded.get(index).map_or(&[][..], Vec::as_slice);
            let key = Key {
                collection: id,
                point,
            };
            store.put(key, scratch, payload)
        });
        self.settle(written)
    }

    /// Passes a store result on after bringing the segments' derived state up to date and
    /// publishing the view: any store call may have made writes durable (they are then in
    /// the MemTable) or published a flush or compaction, whatever it returned.
    fn settle<T>(
        &mut self,
        result: Result<T, vortex_storage::StorageError>,
    ) -> Result<T, ShardError> {
        self.refresh_segments()?;
        if self.published_at != Some(self.published_state()) {
            self.publish();
        }
        Ok(result?)
    }

    /// What a published view reflects: the store's reads epoch and the side-cars'
    /// generation (a graph built after its table was published).
    fn published_state(&self) -> (u64, u64) {
        (self.store.reads_epoch(), self.sidecars.generation())
    }

    /// Publishes what reads see now: the store's snapshot, the live tables with their
    /// segments and superseded sets, the catalog. Constant time in the points; linear in the
    /// live tables.
    fn publish(&mut self) {
        self.published_at = Some(self.published_state());
        let store = self.store.snapshot();
        let segments = store
            .tables()
            .map(|table| ViewSegment {
                table: Arc::clone(table),
                segment: self.sidecars.index(table.number()),
                superseded: self
                    .superseded
                    .get(&table.number())
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        self.view.publish(ShardView::new(
            Arc::clone(&self.dir),
            Arc::clone(&self.catalog),
            store,
            segments,
            self.kernels,
        ));
    }

    /// Deletes points; returns the sequence number to wait for.
    pub fn delete(&mut self, collection: &str, ids: &[u64]) -> Result<u64, ShardError> {
        let id = self.checked_delete(collection, ids)?;
        let admitted = self.store.admit(&vec![WriteSize::Delete; ids.len()]);
        self.settle(admitted)?;
        let store = &mut self.store;
        let deleted = ids.iter().try_fold(0, |_, &point| {
            store.delete(Key {
                collection: id,
                point,
            })
        });
        self.settle(deleted)
    }

    /// A delete's checks; the collection's id.
    fn checked_delete(&self, collection: &str, ids: &[u64]) -> Result<u32, ShardError> {
        let (id, _) = live_collection(&self.catalog, collection)?;
        let (writes_max, _) = self.store.batch_limits();
        if ids.is_empty() || ids.len() > writes_max {
            return Err(ShardError::Invalid(format!(
                "a delete carries 1 to {writes_max} ids (the store's batch limit), not {}",
                ids.len()
            )));
        }
        self.store
            .check_batch(&vec![WriteSize::Delete; ids.len()])
            .map_err(|error| ShardError::Invalid(error.to_string()))?;
        Ok(id)
    }

    /// Moves writes and background work forward; returns the durable sequence number.
    pub fn poll(&mut self, wait: Option<Duration>) -> Result<u64, ShardError> {
        let result = self.store.poll(wait);
        self.settle(result)
    }

    /// Makes every write so far durable, then sends the WAL's writes through `ring`: the
    /// ring of the LEU that runs this shard, so that one submit carries its network and log
    /// I/O and a log write's completion wakes its loop (see [`PosixEnv::share_ring`]).
    pub fn share_log_ring(&mut self, ring: Weak<dyn SharedLogRing>) -> Result<(), ShardError> {
        let result = self.store.share_log_ring(ring);
        self.settle(result)
    }

    /// Waits until every write so far is durable (acknowledged) and visible.
    pub fn sync(&mut self) -> Result<u64, ShardError> {
        let result = self.store.sync();
        self.settle(result)
    }

    /// The points that exist, in request order.
    pub fn get(
        &self,
        collection: &str,
        ids: &[u64],
        with_vectors: bool,
        with_payload: bool,
    ) -> Result<Vec<PointRecord>, ShardError> {
        self.view
            .load()
            .get(collection, ids, with_vectors, with_payload)
    }

    /// The `k` nearest live points (newest versions only) that match the filter.
    pub fn search(&self, request: &SearchRequest<'_>) -> Result<Vec<Hit>, ShardError> {
        self.view.load().search(request)
    }

    /// Where this shard publishes what its reads see, for other LEUs to search.
    pub fn published(&self) -> &PublishedView {
        &self.view
    }

    /// Asks the store's scrubber for a pass now ([`vortex_storage::Store::scrub_soon`]);
    /// `false` when none runs.
    pub fn scrub_soon(&self) -> bool {
        self.store.scrub_soon()
    }

    /// Flushes the MemTable into a segment (and its index) and waits for it.
    pub fn flush(&mut self) -> Result<(), ShardError> {
        let result = self.store.flush();
        // A flushed table's graph is built after it was published: waited for here.
        self.sidecars.wait_deferred();
        self.settle(result)
    }

    /// Starts flushing the MemTable into a segment without waiting ([`Shard::poll`]
    /// installs it).
    pub fn flush_soon(&mut self) -> Result<(), ShardError> {
        let result = self.store.flush_soon();
        self.settle(result)
    }

    /// Starts merging every segment into one without waiting, if nothing else runs
    /// ([`Shard::poll`] installs it; its index is seeded from the largest segment). Returns
    /// whether it started.
    pub fn compact_all_soon(&mut self) -> Result<bool, ShardError> {
        let result = self.store.compact_all_soon();
        self.settle(result)
    }

    /// Merges every segment (tests and operators), and waits for the merged table's graph
    /// (built after the merge installed it; not while the builds are held).
    pub fn compact_all(&mut self) -> Result<(), ShardError> {
        let result = self.store.compact_all();
        self.sidecars.wait_deferred();
        self.settle(result)
    }

    /// Holds the deferred graph builds until released (`false`): they stay queued and their
    /// tables are searched by an exact scan meanwhile (a flush defers only while nothing is
    /// queued, so later flushes build their own graphs). For tests of that state, and for a
    /// bulk load that wants every core for ingest.
    pub fn hold_index_builds(&self, hold: bool) {
        self.sidecars.hold_builds(hold);
    }

    /// Waits until no flush or compaction is running or due.
    pub fn wait_idle(&mut self) -> Result<(), ShardError> {
        let result = self.store.wait_idle();
        self.sidecars.wait_deferred();
        self.settle(result)
    }

    /// Offline repair of the shard's damaged tables ([`vortex_storage::Store::repair`]):
    /// what each table kept, lost and deleted, with its collection's name (`#id` for one no
    /// longer in the catalog). The tables written meanwhile get their side-car graphs before
    /// this returns.
    pub fn repair(&mut self) -> Result<Vec<(String, TableRepair)>, ShardError> {
        let result = self.store.repair();
        let repairs = self.settle(result)?;
        self.wait_idle()?;
        Ok(repairs
            .into_iter()
            .map(|repair| (self.catalog.name_of(repair.collection), repair))
            .collect())
    }

    /// Statistics.
    pub fn stats(&self) -> ShardStats {
        // Live segments only: a flush or compaction running now may have registered its
        // outputs' side-cars before they are published.
        let (indexes, index_bytes) = self
            .store
            .tables()
            .iter()
            .filter_map(|(_, table)| self.sidecars.index(table.number()))
            .fold((0, 0), |(graphs, bytes), segment| {
                (
                    graphs + usize::from(segment.graph.is_some()),
                    bytes + segment.resident_bytes(),
                )
            });
        let store = self.store.stats();
        let table_bytes: u64 = store.levels.iter().map(|level| level.bytes).sum();
        let (index_nodes_inserted, index_nodes_carried) = self.sidecars.build_counts();
        ShardStats {
            collections: self.catalog.live().count(),
            segments: store.levels.iter().map(|level| level.tables).sum(),
            indexes,
            index_bytes,
            fresh_points: store.memtable_entries + store.frozen_entries,
            index_build_backlog: store.frozen_entries + self.sidecars.deferred_points() as usize,
            pending_compactions: store.compactions_due.max(usize::from(store.compacting)),
            bytes_per_vector: (table_bytes + index_bytes as u64) as f64
                / store.table_vectors.max(1) as f64,
            index_nodes_inserted,
            index_nodes_carried,
            store,
        }
    }

    /// Brings the segments' superseded sets up to date after the store's version changed:
    /// for each segment new since the last call, its nodes whose point a segment read before
    /// it holds (newer) are superseded, and so are the nodes of segments read after it
    /// (older) whose point it holds. Read order is the store's: level 0 newest first, then
    /// each level down.
    fn refresh_segments(&mut self) -> Result<(), ShardError> {
        if self.segment_epoch == Some(self.store.version_epoch()) {
            return Ok(());
        }
        let tables = self.store.tables();
        let order: Vec<u64> = tables.iter().map(|(_, t)| t.number()).collect();
        let known: std::collections::HashSet<u64> = self.segment_order.iter().copied().collect();
        let segments: Vec<_> = tables
            .iter()
            .map(|(_, table)| {
                let segment = self.sidecars.index(table.number());
                (table.footer().collection, segment)
            })
            .collect();
        for (position, (_, table)) in tables.iter().enumerate() {
            if known.contains(&table.number()) {
                continue;
            }
            let (collection, Some(fresh)) = &segments[position] else {
                continue; // a dropped collection's table, about to go
            };
            for (other_position, (other_collection, other)) in segments.iter().enumerate() {
                // Segments whose key ranges do not meet cannot supersede one another.
                let Some(other) = other
                    .as_ref()
                    .filter(|other| other_collection == collection && fresh.overlaps(other))
                else {
                    continue;
                };
                if other_position < position {
                    // `other` is newer: it supersedes what `fresh` holds of its points.
                    for (node, point) in fresh.labels.iter().enumerate() {
                        if other.holds(*point) {
                            supersede(&mut self.superseded, fresh, node as u32);
                        }
                    }
                } else if other_position > position {
                    // `other` is older: `fresh` supersedes what it holds of fresh's points.
                    for point in &fresh.keys {
                        if let Some(node) = other.node_of(*point) {
                            supersede(&mut self.superseded, other, node);
                        }
                    }
                }
            }
        }
        self.superseded.retain(|number, _| order.contains(number));
        self.segment_order = order;
        self.segment_epoch = Some(self.store.version_epoch());
        Ok(())
    }

    /// Checks that every live segment's side-car index agrees with its SSTable: one node per
    /// vector of the region, labelled with the slot's point id, holding the slot's vector
    /// (normalised for cosine). Returns the segments checked.
    pub fn verify_indexes(&self) -> Result<usize, ShardError> {
        let mut checked = 0;
        for (_, table) in self.store.tables() {
            let footer = *table.footer();
            let Some(collection) = self.catalog.by_id(footer.collection) else {
                continue;
            };
            let dimension = collection.spec.dimension as usize;
            if footer.vector_count == 0 || footer.vector_bytes as usize != dimension * 4 {
                continue;
            }
            let number = table.number();
            let mismatch = |detail: String| ShardError::Index {
                table: number,
                detail,
            };
            let segment = self
                .sidecars
                .index(number)
                .ok_or_else(|| mismatch("no side-car index".to_owned()))?;
            if segment.graph.is_none() && segment.rows.is_some() {
                continue; // its build is queued: searched exactly until then
            }
            let index = segment
                .graph
                .as_ref()
                .ok_or_else(|| mismatch("no graph for a table with vectors".to_owned()))?;
            let labels = table.region_points()?;
            if labels != segment.labels {
                return Err(mismatch(
                    "the segment's labels differ from its table".to_owned(),
                ));
            }
            if index.len() != labels.len() {
                return Err(mismatch(format!(
                    "{} nodes for {} vectors",
                    index.len(),
                    labels.len()
                )));
            }
            let region = table.vector_region();
            for (node, label) in labels.iter().enumerate() {
                let node = node as u32;
                if index.label(node) != Some(*label) {
                    return Err(mismatch(format!("node {node} is not labelled {label}")));
                }
                let at = node as usize * footer.stride as usize;
                let expected = decode_vector(&region[at..at + dimension * 4]);
                if index.vector(node) != Some(&expected[..]) {
                    return Err(mismatch(format!(
                        "node {node}'s vector differs from slot {node}"
                    )));
                }
            }
            checked += 1;
        }
        Ok(checked)
    }

    /// Finishes background work and makes every write durable.
    pub fn close(self) -> Result<ShardCloseReport, ShardError> {
        // A running build would hold the close for as long as it takes (minutes for a big
        // merge): cancel it. Its flush or merge is abandoned and redone after the next
        // open; every acknowledged write is in the WAL or an older table.
        self.sidecars.cancel_builds();
        self.store.close()?;
        Ok(ShardCloseReport {
            builds_cancelled: self.sidecars.builds_cancelled(),
        })
    }
}

/// Records that `node` of `segment` has a newer version elsewhere: in a copy of its set when
/// a published view still holds the current one.
fn supersede(sets: &mut HashMap<u64, Arc<NodeSet>>, segment: &Segment, node: u32) {
    let set = sets
        .entry(segment.number)
        .or_insert_with(|| Arc::new(NodeSet::with_capacity(segment.labels.len())));
    Arc::make_mut(set).insert(node);
}

/// Cancels a shard's index builds when dropped (see [`Shard`]'s field order).
#[derive(Debug)]
struct CancelBuilds(Arc<SideCars>);

impl Drop for CancelBuilds {
    fn drop(&mut self) {
        self.0.cancel_builds();
    }
}

//! The store: one LEU's LSM tree. WAL and MemTable in front, SSTables in levels behind,
//! flushes and compactions on a bounded background pool, a rate-limited scrubber.
//!
//! **Writes.** [`Store::put`] and [`Store::delete`] append a record to the WAL and return its
//! sequence number; [`Store::poll`] moves the WAL and, once a write is durable (it is then
//! acknowledged), applies it to the MemTable. Reads therefore never see a write that a crash
//! could still take back. Writes are refused with THROTTLED while the MemTable plus the
//! writes in flight hold twice `memtable_bytes` (a flush is then running or queued).
//!
//! **Flush.** A full MemTable is frozen (still read) and handed to the pool, which writes one
//! SSTable per collection (and per vector length) into level 0, syncs them and the directory,
//! and calls the [`CompactionHook`] for each. The LEU then publishes the new tables and the
//! WAL checkpoint in one MANIFEST edit: the tables are live and the log below the checkpoint
//! is gone at the same instant.
//!
//! **Compaction (leveled).** Level 0 holds whole flushes, which may overlap; levels 1 to 6
//! each hold non-overlapping tables, level `n` up to `level1_bytes × multiplierⁿ⁻¹`. When
//! level 0 has `l0_compaction_trigger` tables, or a level is past its size, one compaction
//! merges the chosen tables with the overlapping ones of the next level, keeping only the
//! newest version of each key and dropping tombstones when nothing older can lie below. The
//! outputs are published, and the inputs dropped, in one MANIFEST edit; an input's file is
//! deleted only when the last reader holding it lets go. Compaction I/O goes through a
//! byte-rate limiter. docs/STORAGE.md gives the reasons for leveled over size-tiered.
//!
//! **Reads.** [`Store::get`] looks in the MemTable, the frozen MemTable, level 0 newest
//! first, then each level (one table per level at most, bloom filter first). [`Store::scan`]
//! pages through a collection in point order over the merge of all of them.
//!
//! **Scrubber.** A thread walks every block of every live table at `scrub_bytes_per_second`
//! and checks its CRC32C; corruption quarantines the table (reads that need it then fail with
//! a clear error), counts in [`StoreStats`], is logged, and is handed to the
//! [`ReplicaRepair`] hook, where repair from a replica plugs in once there is Raft.

use crate::background::{BackgroundPool, Job, PoolFull, RateLimiter};
use crate::env::{Env, Files};
use crate::error::{io_error, StorageError};
use crate::manifest::{Edit, TableMeta, LEVELS};
use crate::memtable::{Key, Lookup, MemTable, Point, Value};
use crate::merge::{memtable_entry, Merge, Source};
use crate::sstable::table::VECTOR_BYTES_MAX;
use crate::sstable::table::{parse_table_name, table_name, Entry, Table, TableBuilder};
use crate::wal::{disk_full, ReplayReport, Wal, WalOptions, WalStats};
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// WAL record kinds written by the store.
const RECORD_PUT: u8 = 2;
const RECORD_DELETE: u8 = 3;
/// Appended by a clean [`Store::close`] after the last write: it carries nothing and is
/// skipped at replay, but it is a valid record after every write of the run, so that damage
/// to any of them (a flipped bit in the last one included) is found as corruption ("valid
/// records after it") instead of being truncated as a torn tail, which only a crash leaves.
const RECORD_SEAL: u8 = 4;
/// The largest WAL record the store accepts: a put must fit one SSTable data block (16 MiB).
const RECORD_BYTES_MAX: usize = 8 << 20;
/// How long a failed flush or compaction waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How the store is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// The WAL's options.
    pub wal: WalOptions,
    /// A MemTable this large is flushed; writes are refused (THROTTLED) at twice this.
    pub memtable_bytes: usize,
    /// The WAL a start would replay holds at most about this many bytes (0: no bound): at
    /// this size a flush is started and writes are refused (THROTTLED) until a checkpoint
    /// retires segments. The MemTable bounds the WAL while flushes complete; this bounds it
    /// when they do not (a start's replay, and so its time to serve, stays bounded). At
    /// least two WAL segments and a batch.
    pub wal_bytes_max: u64,
    /// A MemTable with this many entries is flushed too, and writes are refused (THROTTLED)
    /// at twice this (0: no cap). The shard engine caps it so that the fresh vectors a search
    /// scans exactly stay few.
    pub memtable_entries_max: usize,
    /// Compaction outputs are cut at about this size.
    pub table_bytes_target: u64,
    /// A full merge ([`Store::compact_all`], [`Store::compact_all_soon`]) cuts its outputs
    /// at about this size instead, so that a collection up to this size becomes one table
    /// (one segment, one graph for a search to walk). A table being written holds its
    /// vectors in memory until it is finished, so this bounds the merge's memory too.
    pub merged_table_bytes: u64,
    /// Level 0 is compacted when it holds this many tables.
    pub l0_compaction_trigger: usize,
    /// Flushes wait (and writes are soon throttled) while level 0 holds this many tables.
    pub l0_stop: usize,
    /// Level 1's size target; level `n` gets `level_multiplier` times level `n - 1`'s.
    pub level1_bytes: u64,
    /// The growth factor between levels.
    pub level_multiplier: u64,
    /// Compaction reads plus writes, in bytes per second (0: unlimited).
    pub compaction_bytes_per_second: u64,
    /// The scrubber's rate in bytes per second (0: no scrubber thread).
    pub scrub_bytes_per_second: u64,
    /// The pause between two scrubber passes.
    pub scrub_interval: Duration,
    /// Bloom filter bits per key (10: about 1 % false positives).
    pub bloom_bits_per_key: usize,
    /// Worker threads for flushes and compactions.
    pub background_threads: usize,
    /// Their nice value, 0 to 19 (0: the process's). Above 0 they yield the CPU to the
    /// threads that serve (LEUs): index builds slow down under load instead of searches.
    pub background_nice: i32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            wal: WalOptions::default(),
            memtable_bytes: 64 << 20,
            wal_bytes_max: 512 << 20,
            memtable_entries_max: 0,
            table_bytes_target: 64 << 20,
            merged_table_bytes: 1 << 30,
            l0_compaction_trigger: 4,
            l0_stop: 24,
            level1_bytes: 256 << 20,
            level_multiplier: 10,
            compaction_bytes_per_second: 256 << 20,
            scrub_bytes_per_second: 16 << 20,
            scrub_interval: Duration::from_secs(3600),
            bloom_bits_per_key: 10,
            background_threads: 2,
            background_nice: 0,
        }
    }
}

impl StoreOptions {
    fn validate(&self) -> Result<(), String> {
        if self.memtable_bytes == 0 || self.table_bytes_target == 0 || self.level1_bytes == 0 {
            return Err(
                "memtable_bytes, table_bytes_target and level1_bytes must be positive".into(),
            );
        }
        if self.merged_table_bytes < self.table_bytes_target {
            return Err("merged_table_bytes must be at least table_bytes_target".into());
        }
        if !(0..=19).contains(&self.background_nice) {
            return Err("background_nice must be 0 to 19".into());
        }
        if self.l0_compaction_trigger < 2 || self.l0_stop <= self.l0_compaction_trigger {
            return Err("need 2 <= l0_compaction_trigger < l0_stop".into());
        }
        if self.level_multiplier < 2 {
            return Err("level_multiplier must be at least 2".into());
        }
        let wal_floor = 2 * self.wal.segment_bytes_target + self.wal.batch_bytes_max as u64;
        if self.wal_bytes_max != 0 && self.wal_bytes_max < wal_floor {
            return Err(format!(
                "wal_bytes_max must be 0 or at least two WAL segments and a batch ({wal_floor} bytes)"
            ));
        }
        if self.wal.record_bytes_max > RECORD_BYTES_MAX {
            return Err(format!(
                "wal.record_bytes_max above {RECORD_BYTES_MAX}: an entry must fit an SSTable block"
            ));
        }
        Ok(())
    }
}

/// Where a start puts table files it would otherwise delete, when the MANIFEST's last edit
/// was damaged (see [`OpenReport::moved_aside`]).
pub const LOST_FOUND: &str = "lost+found";

/// Why a write is refused while the WAL is at its bound.
const WAL_FULL: &str = "the WAL holds wal_bytes_max bytes until a flush retires them";

/// Called for each SSTable a flush or compaction writes, before it is published: the
/// side-car index of issue #7 is built here.
pub trait CompactionHook: Send + Sync {
    /// `table` is written, synced and verified, not yet live. Build its side-car and make it
    /// durable before returning: the table is published only after `Ok`. An error abandons
    /// the flush or compaction (its outputs are deleted) and it is tried again later.
    fn table_written(&self, table: &Table) -> Result<(), String>;

    /// A flush wrote `table` (written, synced and verified, not yet live). As
    /// [`table_written`](Self::table_written), except that the hook may publish now and make
    /// its side-car durable later, so that the flush, and the WAL checkpoint it allows, do
    /// not wait for an index build (issue #23: a flush that is all or nothing with its
    /// build starts from zero after every crash, and the WAL only grows). The hook keeps
    /// `table` to build from, and must search the table without its side-car meanwhile.
    /// Default: [`table_written`](Self::table_written).
    fn table_flushed(&self, table: &Arc<Table>) -> Result<(), String> {
        self.table_written(table)
    }

    /// A compaction wrote `table` (written, synced and verified, not yet live). As
    /// [`table_flushed`](Self::table_flushed): the hook may publish now and make its
    /// side-car durable later, so that a merge's work survives a crash during the build
    /// (issue #23 item 1: a merge all or nothing with its graph started from zero after
    /// every kill). Default: [`table_written`](Self::table_written).
    fn table_compacted(&self, table: &Arc<Table>) -> Result<(), String> {
        self.table_written(table)
    }

    /// The table's file was deleted (it was compacted away and no reader holds it): its
    /// side-car can go too.
    fn table_deleted(&self, number: u64) {
        let _ = number;
    }

    /// At open: the live tables. Side-cars of any other table are leftovers of a crash.
    fn retain(&self, live: &BTreeSet<u64>) {
        let _ = live;
    }

    /// Whether entries of `collection` are kept: flushes and compactions drop those of a
    /// collection for which this says no (a dropped collection's data is reclaimed so).
    fn keep_collection(&self, collection: u32) -> bool {
        let _ = collection;
        true
    }
}

/// The hook when there is no side-car to build.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSideCar;

impl CompactionHook for NoSideCar {
    fn table_written(&self, _table: &Table) -> Result<(), String> {
        Ok(())
    }
}

/// Where repair of a corrupt table from a replica plugs in.
pub trait ReplicaRepair: Send + Sync {
    /// `table` was found corrupt and is quarantined. Fetch a good copy from a replica and
    /// bring it back; until then reads that need it fail.
    fn request(&self, table: &Table, damage: &StorageError);
}

/// No replicas yet (Raft membership comes later): repair requests are logged.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReplicas;

impl ReplicaRepair for NoReplicas {
    fn request(&self, table: &Table, damage: &StorageError) {
        tracing::error!(
            path = %table.path().display(),
            %damage,
            "no replica to repair from: the table stays quarantined; restore it from a backup \
             or drop and re-ingest its collection"
        );
    }
}

/// The hooks a store calls.
#[derive(Clone)]
pub struct StoreHooks {
    /// Side-car builder.
    pub compaction: Arc<dyn CompactionHook>,
    /// Repair of corrupt tables.
    pub repair: Arc<dyn ReplicaRepair>,
}

impl Default for StoreHooks {
    fn default() -> Self {
        StoreHooks {
            compaction: Arc::new(NoSideCar),
            repair: Arc::new(NoReplicas),
        }
    }
}

impl std::fmt::Debug for StoreHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreHooks")
    }
}

/// Tables and bytes in one level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// Tables.
    pub tables: usize,
    /// Bytes of their files.
    pub bytes: u64,
}

/// Counters and sizes, for stats and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// The WAL's counters.
    pub wal: WalStats,
    /// Bytes in the MemTable (values plus bookkeeping).
    pub memtable_bytes: usize,
    /// Whether a frozen MemTable is being flushed.
    pub flushing: bool,
    /// Entries in the MemTable, and in the frozen one being flushed (the backlog of the
    /// side-car builds that the flush will run).
    pub memtable_entries: usize,
    /// Entries of the frozen MemTable.
    pub frozen_entries: usize,
    /// Whether a compaction is running.
    pub compacting: bool,
    /// Levels past their compaction trigger (work due).
    pub compactions_due: usize,
    /// Vectors in live tables' vector regions (versions, not distinct points).
    pub table_vectors: u64,
    /// Per level.
    pub levels: [LevelStats; LEVELS],
    /// Key and value bytes of acknowledged writes (for write amplification).
    pub user_bytes: u64,
    /// WAL bytes written.
    pub wal_bytes: u64,
    /// Bytes of the WAL a start would replay now (see `StoreOptions::wal_bytes_max`).
    pub wal_live_bytes: u64,
    /// Flushes published.
    pub flushes: u64,
    /// Bytes of tables written by flushes.
    pub flush_bytes: u64,
    /// Compactions published.
    pub compactions: u64,
    /// Bytes of tables read by compactions.
    pub compaction_bytes_read: u64,
    /// Bytes of tables written by compactions.
    pub compaction_bytes_written: u64,
    /// Flushes and compactions that failed (and were retried).
    pub background_errors: u64,
    /// Live tables quarantined for corruption.
    pub quarantined_tables: usize,
    /// Scrubber passes over every table.
    pub scrub_passes: u64,
    /// Bytes the scrubber verified.
    pub scrub_bytes: u64,
    /// Corrupt tables the scrubber found.
    pub scrub_corruptions: u64,
    /// The scrubber's pass now running (or the last one): the live tables' bytes when it
    /// began, and the bytes of those it has done.
    pub scrub_pass_total_bytes: u64,
    /// See [`StoreStats::scrub_pass_total_bytes`].
    pub scrub_pass_done_bytes: u64,
    /// Scrubber passes begun: a pass asked for after this read `n` is done once
    /// `scrub_passes` reaches `n + 1`.
    pub scrub_passes_started: u64,
}

impl StoreStats {
    /// Bytes written to disk per byte of user data: WAL, flushes and compactions.
    pub fn write_amplification(&self) -> f64 {
        (self.wal_bytes + self.flush_bytes + self.compaction_bytes_written) as f64
            / self.user_bytes.max(1) as f64
    }
}

/// What [`Store::repair`] did with one damaged table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRepair {
    /// The table's number.
    pub table: u64,
    /// Its collection's id.
    pub collection: u32,
    /// The smallest point id it held.
    pub first: u64,
    /// The largest.
    pub last: u64,
    /// What was found damaged.
    pub reason: String,
    /// Entries that verified and held their point's newest version: written again.
    pub rewritten: usize,
    /// Entries that verified, with a newer version elsewhere: nothing to do.
    pub superseded: usize,
    /// Points whose newest version was here and whose vector did not verify: deleted.
    pub lost_points: Vec<u64>,
    /// `(first, last)` ids of data blocks that failed their checks: which points they held,
    /// and those points' newest versions, are lost.
    pub lost_ranges: Vec<(u64, u64)>,
    /// Points in `lost_ranges` that an older table holds: the damaged block may have held a
    /// newer version or a delete, so they were deleted rather than served stale.
    pub deleted_older: Vec<u64>,
    /// Whether the table is out of the store (its file in `lost+found/`); `false` for a
    /// table that could not be opened, which stays fenced.
    pub removed: bool,
}

/// Where [`Store::locate`] found a key's newest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The table holding it (`None`: a MemTable).
    pub table: Option<u64>,
    /// The point, or `None` for a tombstone.
    pub point: Option<Point>,
}

fn point_of(value: &Value) -> Option<&Point> {
    match value {
        Value::Put(point) => Some(point.as_ref()),
        Value::Tombstone => None,
    }
}

/// The live tables: level 0 newest first, other levels in key order.
#[derive(Debug, Default, Clone)]
struct Version {
    levels: [Vec<Arc<Table>>; LEVELS],
}

impl Version {
    fn tables(&self) -> impl Iterator<Item = (usize, &Arc<Table>)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(level, tables)| tables.iter().map(move |table| (level, table)))
    }

    fn insert(&mut self, level: usize, table: Arc<Table>) {
        let tables = &mut self.levels[level];
        tables.push(table);
        if level == 0 {
            tables.sort_by_key(|table| Reverse(table.number()));
        } else {
            tables.sort_by_key(|table| table.smallest());
        }
    }

    fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|t| t.file_bytes()).sum()
    }
}

use std::cmp::Reverse;

fn overlaps(table: &Table, range: &(Key, Key)) -> bool {
    table.smallest() <= range.1 && table.largest() >= range.0
}

fn key_range<'a>(tables: impl IntoIterator<Item = &'a Arc<Table>>) -> Option<(Key, Key)> {
    tables.into_iter().fold(None, |range, table| match range {
        None => Some((table.smallest(), table.largest())),
        Some((low, high)) => Some((low.min(table.smallest()), high.max(table.largest()))),
    })
}

/// State shared with the background threads.
struct Shared {
    files: Arc<dyn Files>,
    tables_dir: PathBuf,
    table_next: AtomicU64,
    current: Mutex<Arc<Version>>,
    hooks: StoreHooks,
    stop: Arc<AtomicBool>,
    scrub_passes: AtomicU64,
    scrub_bytes: AtomicU64,
    scrub_corruptions: AtomicU64,
    /// The pass now running: the live tables' bytes when it began, and those it has done
    /// (verified, or passed over as quarantined or compacted away).
    scrub_pass_total: AtomicU64,
    scrub_pass_done: AtomicU64,
    /// Passes begun (`scrub_passes` counts those finished).
    scrub_passes_started: AtomicU64,
    /// A pass is wanted now ([`Store::scrub_soon`]): the scrubber ends its rest.
    scrub_wanted: AtomicBool,
}

/// What a background job reports.
enum Finished {
    Flush {
        outputs: Result<Vec<Arc<Table>>, StorageError>,
        last_sequence: u64,
    },
    Compaction {
        inputs: Vec<Arc<Table>>,
        output_level: usize,
        outputs: Result<Vec<Arc<Table>>, StorageError>,
    },
}

/// What a compaction is to do.
struct CompactionPlan {
    inputs: Vec<Arc<Table>>,
    output_level: usize,
    drop_tombstones: bool,
    /// Outputs are cut at about this size.
    cut_bytes: u64,
}

/// A write appended to the WAL and not yet durable.
#[derive(Debug)]
struct Pending {
    sequence: u64,
    key: Key,
    value: Value,
}

/// One LEU's store.
pub struct Store<E: Env> {
    dir: PathBuf,
    options: StoreOptions,
    wal: Wal<E>,
    memtable: MemTable,
    frozen: Option<Arc<MemTable>>,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    version: Arc<Version>,
    shared: Arc<Shared>,
    pool: Option<BackgroundPool>,
    finished_tx: SyncSender<Finished>,
    finished_rx: Receiver<Finished>,
    deferred: Option<Job>,
    flush_running: bool,
    compaction_running: bool,
    retry_at: Option<Instant>,
    /// The last flush failed on a full disk (the file, the error): writes that wait for a
    /// flush are answered NoSpace until one succeeds.
    flush_disk_full: Option<(PathBuf, String)>,
    compact_pointer: [Option<Key>; LEVELS],
    scrubber: Option<JoinHandle<()>>,
    scratch: Vec<u8>,
    stats: StoreStats,
    /// Counts version changes (tables published or removed).
    version_epoch: u64,
    /// Counts changes of what reads see: writes applied, MemTables frozen or dropped, versions.
    reads_epoch: u64,
}

impl Store<crate::PosixEnv> {
    /// Makes every write so far durable, then sends the WAL's writes through `ring`, the ring
    /// the caller's other I/O uses (see [`Wal::share_ring`]).
    pub fn share_log_ring(
        &mut self,
        ring: std::rc::Weak<dyn crate::SharedLogRing>,
    ) -> Result<(), StorageError> {
        self.wal.share_ring(ring)?;
        let durable = self.wal.durable_sequence();
        self.apply_durable(durable);
        Ok(())
    }
}

impl Store<crate::FaultEnv> {
    /// For fault tests: arms [`Fault::PowerOff`](crate::Fault::PowerOff) after `after`
    /// operations on `env` (this store's file system), starts a job with `start`, and
    /// polls until `ended(before, now)` says it is done or a background job failed, for at
    /// most 30 s ([`poll_until`](Store::poll_until)). With the power lost on the way, what it
    /// answers does not matter: the caller crashes the file system and checks the restart.
    pub fn run_losing_power(
        &mut self,
        env: &crate::FaultEnv,
        after: u32,
        start: impl FnOnce(&mut Self) -> Result<(), StorageError>,
        ended: impl Fn(&StoreStats, &StoreStats) -> bool,
    ) -> Result<(), StorageError> {
        let before = self.stats();
        env.inject(crate::Fault::PowerOff { after });
        start(self)?;
        self.poll_until(Duration::from_secs(30), |now| {
            ended(&before, now) || now.background_errors > before.background_errors
        })
    }
}

impl<E: Env> std::fmt::Debug for Store<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What opening found.
#[derive(Debug, Clone)]
pub struct OpenReport {
    /// What WAL replay did.
    pub replay: ReplayReport,
    /// Live tables opened.
    pub tables: usize,
    /// Files removed that no MANIFEST version lists (outputs of an interrupted flush or
    /// compaction).
    pub orphans_removed: usize,
    /// Files no MANIFEST version lists, moved into `lost+found/` instead of removed because
    /// the MANIFEST's last edit was damaged (`replay.manifest_damage`): that edit may have
    /// listed them (a flush or a compaction whose inputs and WAL are gone since).
    pub moved_aside: Vec<PathBuf>,
    /// Tables that could not be opened and were quarantined.
    pub quarantined: usize,
}

fn encode_put(out: &mut Vec<u8>, key: Key, vector: &[u8], payload: &[u8]) {
    out.clear();
    out.extend_from_slice(&key.collection.to_le_bytes());
    out.extend_from_slice(&key.point.to_le_bytes());
    out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
    out.extend_from_slice(vector);
    out.extend_from_slice(payload);
}

/// Decodes a WAL record written by the store.
fn decode_record(kind: u8, payload: &[u8]) -> Result<(Key, Value), String> {
    let key_of = |bytes: &[u8]| -> Option<Key> {
        Some(Key {
            collection: u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?),
            point: u64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?),
        })
    };
    match kind {
        RECORD_PUT => {
            let key = key_of(payload).ok_or("put record shorter than its key")?;
            let vector_len = payload
                .get(12..16)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or("put record without a vector length")?;
            let vector = payload
                .get(16..16 + vector_len)
                .ok_or("put record shorter than its vector")?;
            let point = Point::new(vector, &payload[16 + vector_len..]);
            Ok((key, Value::Put(Arc::new(point))))
        }
        RECORD_DELETE if payload.len() == 12 => {
            Ok((key_of(payload).ok_or("bad delete")?, Value::Tombstone))
        }
        RECORD_DELETE => Err(format!("delete record of {} bytes", payload.len())),
        kind => Err(format!("unknown record kind {kind}")),
    }
}

/// A put record's bytes before its vector: collection, point, vector length.
const PUT_HEADER_BYTES: usize = 4 + 8 + 4;

/// A delete record's bytes: collection, point.
const DELETE_RECORD_BYTES: usize = 4 + 8;

/// The size of a write, for [`Store::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSize {
    /// A put of a vector and a payload of these sizes.
    Put {
        /// The vector's bytes.
        vector_bytes: usize,
        /// The payload's bytes.
        payload_bytes: usize,
    },
    /// A delete.
    Delete,
}

impl WriteSize {
    /// Its WAL record's payload bytes.
    fn record_bytes(&self) -> usize {
        match *self {
            WriteSize::Put {
                vector_bytes,
                payload_bytes,
            } => PUT_HEADER_BYTES + vector_bytes + payload_bytes,
            WriteSize::Delete => DELETE_RECORD_BYTES,
        }
    }

    /// The MemTable bytes it is counted as.
    fn memtable_bytes(&self) -> usize {
        VALUE_OVERHEAD_BYTES
            + match *self {
                WriteSize::Put {
                    vector_bytes,
                    payload_bytes,
                } => vector_bytes + payload_bytes,
                WriteSize::Delete => 0,
            }
    }
}

/// The read path over borrowed state: a store's own, or a snapshot's.
struct Reader<'a> {
    memtable: &'a MemTable,
    frozen: Option<&'a MemTable>,
    version: &'a Version,
}

impl<'a> Reader<'a> {
    /// Where the newest version of `key` is: `None` when no version is held anywhere.
    fn locate(&self, key: &Key) -> Result<Option<Located>, StorageError> {
        for memtable in std::iter::once(self.memtable).chain(self.frozen) {
            match memtable.get(key) {
                Lookup::Found(point) => {
                    return Ok(Some(Located {
                        table: None,
                        point: Some(point.clone()),
                    }))
                }
                Lookup::Deleted => {
                    return Ok(Some(Located {
                        table: None,
                        point: None,
                    }))
                }
                Lookup::Missing => {}
            }
        }
        let found = |table: &Arc<Table>| -> Result<Option<Located>, StorageError> {
            Ok(table.get(key)?.map(|entry| Located {
                table: Some(table.number()),
                point: entry.point,
            }))
        };
        for table in &self.version.levels[0] {
            if let Some(located) = found(table)? {
                return Ok(Some(located));
            }
        }
        for tables in &self.version.levels[1..] {
            let at = tables.partition_point(|table| table.largest() < *key);
            if let Some(table) = tables.get(at).filter(|t| t.smallest() <= *key) {
                if let Some(located) = found(table)? {
                    return Ok(Some(located));
                }
            }
        }
        Ok(None)
    }

    /// The newest MemTable version of every point of `collection` the MemTables hold
    /// (`None`: deleted), in point order: what a search must scan exactly, and what hides
    /// older versions in tables.
    fn memtable_points(&self, collection: u32) -> Vec<(u64, Option<&'a Point>)> {
        let mut points: Vec<(u64, Option<&'a Point>)> = self
            .memtable
            .collection(collection)
            .map(|(key, version)| (key.point, point_of(&version.value)))
            .collect();
        if let Some(frozen) = self.frozen {
            let active = points.len();
            for (key, version) in frozen.collection(collection) {
                if points[..active]
                    .binary_search_by_key(&key.point, |(id, _)| *id)
                    .is_err()
                {
                    points.push((key.point, point_of(&version.value)));
                }
            }
            points.sort_unstable_by_key(|(id, _)| *id);
        }
        points
    }
}

/// A store as it read at one moment: its MemTables and its live tables. Taken in constant time
/// ([`Store::snapshot`]) and `Send + Sync`, so another thread (another LEU) reads it while
/// the store goes on writing. Like the store, it holds only durable writes. The tables it
/// holds stay mapped, and their files on disk, until the last snapshot holding them goes.
#[derive(Debug, Clone)]
pub struct Snapshot {
    memtable: MemTable,
    frozen: Option<Arc<MemTable>>,
    version: Arc<Version>,
    version_epoch: u64,
}

impl Snapshot {
    /// Where the newest version of `key` was: see [`Store::locate`].
    pub fn locate(&self, key: &Key) -> Result<Option<Located>, StorageError> {
        self.reader().locate(key)
    }

    /// The newest version of `key`: see [`Store::get`].
    pub fn get(&self, key: &Key) -> Result<Option<Point>, StorageError> {
        Ok(self.locate(key)?.and_then(|located| located.point))
    }

    /// See [`Store::memtable_points`].
    pub fn memtable_points(&self, collection: u32) -> Vec<(u64, Option<&Point>)> {
        self.reader().memtable_points(collection)
    }

    /// The live tables then, in read order: level 0 newest first, then each level down.
    pub fn tables(&self) -> impl Iterator<Item = &Arc<Table>> {
        self.version.tables().map(|(_, table)| table)
    }

    /// The store's [`Store::version_epoch`] then.
    pub fn version_epoch(&self) -> u64 {
        self.version_epoch
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            memtable: &self.memtable,
            frozen: self.frozen.as_deref(),
            version: &self.version,
        }
    }
}

/// What a MemTable entry is counted as beyond its vector and payload.
const VALUE_OVERHEAD_BYTES: usize = 64;

/// The MemTable bytes a value is counted as.
fn value_bytes(value: &Value) -> usize {
    VALUE_OVERHEAD_BYTES
        + match value {
            Value::Put(point) => point.vector.len() + point.payload.len(),
            Value::Tombstone => 0,
        }
}

fn sync_dir(files: &dyn Files, dir: &Path) -> Result<(), StorageError> {
    files.sync_dir(dir).map_err(io_error("fsync", dir))
}

impl<E: Env> Store<E> {
    /// Opens (or creates) the store in `dir`: the WAL and MANIFEST in `dir/wal`, tables in
    /// `dir/tables`. Replays the WAL into the MemTable, opens every live table, removes
    /// files no version lists, and starts the background workers and the scrubber.
    pub fn open(
        env: E,
        dir: &Path,
        options: StoreOptions,
        hooks: StoreHooks,
    ) -> Result<(Self, OpenReport), StorageError> {
        options.validate().map_err(StorageError::Invalid)?;
        let files = env.files();
        let tables_dir = dir.join("tables");
        files
            .create_dir_all(&tables_dir)
            .map_err(io_error("create", &tables_dir))?;
        let mut memtable = MemTable::new(options.memtable_bytes);
        let mut bad_record = None;
        let (wal, replay) =
            Wal::open(
                env,
                &dir.join("wal"),
                options.wal.clone(),
                |record| match decode_record(record.kind, record.payload) {
                    _ if record.kind == RECORD_SEAL => {} // a clean stop's mark
                    Ok((key, value)) => memtable.apply_replayed(key, record.sequence, value),
                    Err(detail) => {
                        bad_record.get_or_insert(format!("record {}: {detail}", record.sequence));
                    }
                },
            )?;
        if let Some(detail) = bad_record {
            return Err(StorageError::Inconsistent {
                dir: dir.join("wal"),
                detail: format!("a checksum-valid WAL record the store cannot read: {detail}"),
            });
        }
        // The `tables` and `wal` entries themselves must survive a power loss.
        sync_dir(&*files, dir)?;
        let state = wal.manifest_state().clone();
        let mut version = Version::default();
        let mut quarantined = 0;
        let damage = replay.manifest_damage.as_deref();
        for meta in state.tables.values() {
            let path = tables_dir.join(table_name(meta.number));
            let table = match Table::open(&files, &path, meta.number) {
                Ok(table) => table,
                Err(error) => {
                    quarantined += 1;
                    // A table the MANIFEST lists that is gone: with its last edit damaged,
                    // most likely that edit's compaction replaced it (its outputs are in
                    // lost+found then).
                    let reason = match damage {
                        Some(damage) => format!(
                            "{error}; {damage}: that edit may be the compaction that \
                             replaced this table (see lost+found/)"
                        ),
                        None => error.to_string(),
                    };
                    Table::broken(&files, &path, meta, &reason)
                }
            };
            version.insert(meta.level as usize, Arc::new(table));
        }
        let live: BTreeSet<u64> = state.tables.keys().copied().collect();
        let mut orphans_removed = 0;
        let mut moved_aside = Vec::new();
        // Past the numbers moved aside too: the damaged edit may have counted them.
        let mut table_next = state.table_next;
        let lost_found = dir.join(LOST_FOUND);
        let names = files
            .list(&tables_dir)
            .map_err(io_error("list", &tables_dir))?;
        for name in names {
            let orphan = parse_table_name(&name).filter(|number| !live.contains(number));
            if let Some(number) = orphan {
                let path = tables_dir.join(&name);
                if let Some(damage) = damage {
                    table_next = table_next.max(number + 1);
                    // Never delete what a damaged edit may list: keep it for the operator.
                    let aside = move_to_lost_found(&*files, dir, &path)?;
                    tracing::error!(
                        path = %aside.display(),
                        %damage,
                        "moved aside an SSTable no version lists: the damaged MANIFEST edit \
                         may have listed it"
                    );
                    moved_aside.push(aside);
                } else {
                    files.remove(&path).map_err(io_error("remove", &path))?;
                    tracing::info!(path = %path.display(), "removed an SSTable no version lists");
                    orphans_removed += 1;
                }
            }
        }
        if orphans_removed > 0 || !moved_aside.is_empty() {
            sync_dir(&*files, &tables_dir)?;
        }
        if !moved_aside.is_empty() {
            sync_dir(&*files, &lost_found)?;
        }
        hooks.compaction.retain(&live);
        let version = Arc::new(version);
        let shared = Arc::new(Shared {
            files,
            tables_dir,
            table_next: AtomicU64::new(table_next),
            current: Mutex::new(Arc::clone(&version)),
            hooks,
            stop: Arc::new(AtomicBool::new(false)),
            scrub_passes: AtomicU64::new(0),
            scrub_pass_total: AtomicU64::new(0),
            scrub_passes_started: AtomicU64::new(0),
            scrub_pass_done: AtomicU64::new(0),
            scrub_wanted: AtomicBool::new(false),
            scrub_bytes: AtomicU64::new(0),
            scrub_corruptions: AtomicU64::new(0),
        });
        let pool = BackgroundPool::new(
            "vortex-compact",
            options.background_threads,
            4,
            options.background_nice,
        )
        .map_err(io_error("spawn", dir))?;
        let (finished_tx, finished_rx) = mpsc::sync_channel(8);
        let scrubber = if options.scrub_bytes_per_second > 0 {
            let shared = Arc::clone(&shared);
            let rate = options.scrub_bytes_per_second;
            let interval = options.scrub_interval;
            Some(
                std::thread::Builder::new()
                    .name("vortex-scrub".into())
                    .spawn(move || {
                        // As the pool's workers: not on the LEU's one CPU.
                        let _ = vortex_io::affinity::unpin_current_thread();
                        scrub_loop(&shared, rate, interval)
                    })
                    .map_err(io_error("spawn", dir))?,
            )
        } else {
            None
        };
        let report = OpenReport {
            replay,
            tables: live.len(),
            orphans_removed,
            moved_aside,
            quarantined,
        };
        tracing::info!(
            tables = report.tables,
            orphans = orphans_removed,
            moved_aside = report.moved_aside.len(),
            quarantined,
            replayed = report.replay.records,
            "store open"
        );
        let mut store = Store {
            dir: dir.to_owned(),
            options,
            wal,
            memtable,
            frozen: None,
            pending: VecDeque::new(),
            pending_bytes: 0,
            version,
            shared,
            pool: Some(pool),
            finished_tx,
            finished_rx,
            deferred: None,
            flush_running: false,
            compaction_running: false,
            retry_at: None,
            flush_disk_full: None,
            compact_pointer: [None; LEVELS],
            scrubber,
            scratch: Vec::new(),
            stats: StoreStats::default(),
            version_epoch: 0,
            reads_epoch: 0,
        };
        // What the start replayed goes to a table at once, even with level 0 at its stop
        // (up to twice it): otherwise a MemTable refilled past its mark by replay would
        // refuse every write until a compaction had made room, and a node killed again
        // before that never took a write (issue #23 item 1).
        let replayed_full =
            store.memtable_full() && store.version.levels[0].len() < 2 * store.options.l0_stop;
        store.maintain(replayed_full)?;
        Ok((store, report))
    }

    /// Appends a put of `vector` and `payload` under `key`; returns its sequence number. It
    /// is acknowledged (durable, and visible to reads) once [`poll`](Self::poll) returns a
    /// durable sequence number at least as high.
    pub fn put(&mut self, key: Key, vector: &[u8], payload: &[u8]) -> Result<u64, StorageError> {
        if vector.len() > VECTOR_BYTES_MAX {
            return Err(StorageError::Invalid(format!(
                "a vector of {} bytes exceeds the limit of {VECTOR_BYTES_MAX}",
                vector.len()
            )));
        }
        let value = Value::Put(Arc::new(Point::new(vector, payload)));
        let mut scratch = std::mem::take(&mut self.scratch);
        encode_put(&mut scratch, key, vector, payload);
        let result = self.append(RECORD_PUT, &scratch, key, value);
        self.scratch = scratch;
        result
    }

    /// Checks that every one of `writes` would be taken now, so that a batch is written
    /// whole or not at all: `Ok` when each would be (nothing else writes in between, as the
    /// store has one thread), else THROTTLED, after moving background work on, as
    /// [`put`](Self::put) would answer part-way. A batch larger than an empty WAL batch is
    /// sure to hold ([`batch_limits`](Self::batch_limits)) could never be admitted and is
    /// refused as invalid.
    pub fn admit(&mut self, writes: &[WriteSize]) -> Result<(), StorageError> {
        self.resume_wal();
        if let Some(error) = self.wal.read_only() {
            return Err(error);
        }
        self.check_batch(writes)?;
        let entries_max = self.options.memtable_entries_max;
        let mut held = self.memtable.bytes() + self.pending_bytes;
        let entries_before = self.memtable.len() + self.pending.len();
        let mut room = true;
        for (entries, write) in (entries_before..).zip(writes) {
            let bytes = write.memtable_bytes();
            let entries_full = entries_max > 0 && entries >= 2 * entries_max;
            if held > 0 && (held + bytes > 2 * self.options.memtable_bytes || entries_full) {
                room = false;
                break;
            }
            held += bytes;
        }
        if self.wal_full() {
            self.maintain(true)?;
            return Err(self.waiting_for_flush(WAL_FULL));
        }
        if room
            && self
                .wal
                .has_room(writes.iter().map(WriteSize::record_bytes))
        {
            return Ok(());
        }
        self.maintain(false)?;
        if !room {
            return Err(
                self.waiting_for_flush("the memtable is full until the running flush completes")
            );
        }
        Err(StorageError::Throttled(
            "the WAL's open batch is full until a write completes",
        ))
    }

    /// The answer to a write that waits for a flush: THROTTLED, or, while the last flush
    /// failed on a full disk, [`StorageError::NoSpace`] (retrying soon will not help; the
    /// flush is retried every second and writes are taken once it succeeds).
    fn waiting_for_flush(&self, reason: &'static str) -> StorageError {
        match &self.flush_disk_full {
            Some((path, cause)) => StorageError::NoSpace {
                path: path.clone(),
                cause: cause.clone(),
            },
            None => StorageError::Throttled(reason),
        }
    }

    /// The checks of [`admit`](Self::admit) that depend on the batch alone, not on the
    /// store's state: each record within the record limit, the batch within
    /// [`batch_limits`](Self::batch_limits). An error here is an error on every store with
    /// these options, now and later.
    pub fn check_batch(&self, writes: &[WriteSize]) -> Result<(), StorageError> {
        let record_bytes_max = self.options.wal.record_bytes_max;
        if let Some(too_large) = writes.iter().find(|w| w.record_bytes() > record_bytes_max) {
            return Err(StorageError::RecordTooLarge {
                bytes: too_large.record_bytes(),
                max_bytes: record_bytes_max,
            });
        }
        let (writes_max, bytes_max) = self.batch_limits();
        let total: usize = writes.iter().map(WriteSize::record_bytes).sum();
        let memtable_total: usize = writes.iter().map(WriteSize::memtable_bytes).sum();
        if writes.len() > writes_max
            || total > bytes_max
            || memtable_total > self.options.memtable_bytes
        {
            return Err(StorageError::Invalid(format!(
                "a batch of {} writes and {total} bytes is larger than the store takes at once \
                 ({writes_max} writes, {bytes_max} bytes): split it",
                writes.len()
            )));
        }
        Ok(())
    }

    /// The largest batch [`admit`](Self::admit) takes: (writes, record bytes). Half the
    /// WAL's batch limits (an empty WAL batch is sure to hold it), and no more writes than a
    /// MemTable holds before it is due for a flush (so that a batch refused while the
    /// MemTable is not yet due cannot be refused forever: the THROTTLED mark is twice that).
    pub fn batch_limits(&self) -> (usize, usize) {
        let (appends, bytes) = self.wal.batch_limits();
        let entries_max = self.options.memtable_entries_max;
        let writes = if entries_max > 0 {
            appends.min(entries_max)
        } else {
            appends
        };
        (writes, bytes.min(self.options.memtable_bytes))
    }

    /// Appends a delete of `key`; acknowledged as for [`put`](Self::put).
    pub fn delete(&mut self, key: Key) -> Result<u64, StorageError> {
        let mut record = [0u8; DELETE_RECORD_BYTES];
        record[..4].copy_from_slice(&key.collection.to_le_bytes());
        record[4..].copy_from_slice(&key.point.to_le_bytes());
        self.append(RECORD_DELETE, &record, key, Value::Tombstone)
    }

    fn append(
        &mut self,
        kind: u8,
        record: &[u8],
        key: Key,
        value: Value,
    ) -> Result<u64, StorageError> {
        if record.len() > self.options.wal.record_bytes_max {
            return Err(StorageError::RecordTooLarge {
                bytes: record.len(),
                max_bytes: self.options.wal.record_bytes_max,
            });
        }
        let bytes = value_bytes(&value);
        let held = self.memtable.bytes() + self.pending_bytes;
        // A write larger than the whole budget is let in when nothing else is held, or it
        // would be refused forever.
        let entries_max = self.options.memtable_entries_max;
        let entries_full =
            entries_max > 0 && self.memtable.len() + self.pending.len() >= 2 * entries_max;
        if held > 0 && (held + bytes > 2 * self.options.memtable_bytes || entries_full) {
            self.maintain(false)?;
            return Err(
                self.waiting_for_flush("the memtable is full until the running flush completes")
            );
        }
        if self.wal_full() {
            self.maintain(true)?;
            return Err(self.waiting_for_flush(WAL_FULL));
        }
        let sequence = self.wal.append(kind, record)?;
        self.pending_bytes += bytes;
        self.stats.user_bytes += record.len() as u64;
        self.pending.push_back(Pending {
            sequence,
            key,
            value,
        });
        Ok(sequence)
    }

    /// Moves everything forward: WAL writes (waiting up to `wait` for one in flight), the
    /// MemTable, finished flushes and compactions, and new ones. Returns the durable
    /// sequence number: every write up to it is acknowledged.
    pub fn poll(&mut self, wait: Option<Duration>) -> Result<u64, StorageError> {
        self.resume_wal();
        let durable = self.wal.poll(wait)?;
        self.apply_durable(durable);
        self.maintain(false)?;
        Ok(durable)
    }

    /// Moves a WAL that a full disk stopped on ([`Wal::resume`]: a start on a full disk, or
    /// the disk filling up while it ran), from every poll and every admission (a healthy
    /// WAL answers at once): once it takes appends again, the writes it failed
    /// are dropped here too (they were answered with errors and are not in the log, and
    /// their sequence numbers are passed over).
    fn resume_wal(&mut self) {
        if !self.wal.resume() {
            return;
        }
        if let Some((from, to)) = self.wal.take_skipped() {
            let before = self.pending.len();
            self.pending
                .retain(|write| write.sequence < from || write.sequence > to);
            self.pending_bytes = self
                .pending
                .iter()
                .map(|write| value_bytes(&write.value))
                .sum();
            tracing::info!(
                dropped = before - self.pending.len(),
                first = from,
                last = to,
                "the writes the full disk failed are dropped; the WAL takes writes again"
            );
        }
    }

    fn apply_durable(&mut self, durable: u64) {
        while self.pending.front().is_some_and(|p| p.sequence <= durable) {
            let Some(write) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes -= value_bytes(&write.value);
            self.memtable
                .apply_replayed(write.key, write.sequence, write.value);
            self.reads_epoch += 1;
        }
    }

    /// Waits until every write so far is durable and applied.
    pub fn sync(&mut self) -> Result<u64, StorageError> {
        let durable = self.wal.flush()?;
        self.apply_durable(durable);
        self.maintain(false)?;
        Ok(durable)
    }

    /// The newest version of `key`: `None` if it was never written or is deleted.
    pub fn get(&self, key: &Key) -> Result<Option<Point>, StorageError> {
        Ok(self.locate(key)?.and_then(|located| located.point))
    }

    /// Up to `limit` live points of `collection` with ids above `after` (from the start when
    /// `None`), in id order: page through a collection by passing the last id back.
    pub fn scan(
        &self,
        collection: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Point)>, StorageError> {
        let start = Key {
            collection,
            point: after.map_or(0, |a| a.saturating_add(1)),
        };
        let end = Key {
            collection,
            point: u64::MAX,
        };
        if after == Some(u64::MAX) {
            return Ok(Vec::new());
        }
        let mut sources: Vec<Source<'_>> = Vec::new();
        for memtable in std::iter::once(&self.memtable).chain(self.frozen.as_deref()) {
            sources.push(Box::new(
                memtable
                    .collection(collection)
                    .filter(move |(key, _)| **key >= start)
                    .map(|(key, version)| memtable_entry(key, version)),
            ));
        }
        for (_, table) in self.version.tables() {
            if overlaps(table, &(start, end)) {
                sources.push(Box::new(table.iter_after(after)));
            }
        }
        let mut out = Vec::new();
        for entry in Merge::new(sources)? {
            if out.len() == limit {
                break;
            }
            let entry = entry?;
            if let Some(point) = entry.point {
                out.push((entry.key.point, point));
            }
        }
        Ok(out)
    }

    /// Flushes the MemTable now (if it holds anything) and waits until the flush is
    /// published.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        self.sync()?;
        let errors = self.stats.background_errors;
        loop {
            self.maintain(true)?;
            if self.frozen.is_none() && self.memtable.is_empty() {
                return Ok(());
            }
            if self.stats.background_errors > errors + 2 {
                return Err(StorageError::Invalid(
                    "the flush failed three times; see the log".to_owned(),
                ));
            }
            self.wait_background()?;
        }
    }

    /// Starts a flush of the MemTable (if it holds anything and none is running) without
    /// waiting: [`poll`](Self::poll) installs it when it is done.
    pub fn flush_soon(&mut self) -> Result<(), StorageError> {
        self.maintain(true)
    }

    /// Starts merging every table into one (as [`compact_all`](Self::compact_all) does)
    /// without waiting, if no flush or compaction is running or due and there are at least
    /// two tables; [`poll`](Self::poll) installs it. Returns whether it started.
    pub fn compact_all_soon(&mut self) -> Result<bool, StorageError> {
        self.maintain(false)?;
        let busy = self.flush_running
            || self.compaction_running
            || self.frozen.is_some()
            || self.deferred.is_some()
            || self.retry_at.is_some();
        let inputs: Vec<Arc<Table>> = self.version.tables().map(|(_, t)| Arc::clone(t)).collect();
        if busy || inputs.len() < 2 || inputs.iter().any(|t| t.quarantined().is_some()) {
            return Ok(false);
        }
        let output_level = self.full_merge_level(&inputs);
        self.start_compaction(CompactionPlan {
            inputs,
            output_level,
            drop_tombstones: true,
            cut_bytes: self.options.merged_table_bytes,
        })?;
        Ok(true)
    }

    /// Merges every table into the last non-empty level (at least level 1), dropping deleted
    /// and overwritten versions, and waits for it; background compactions are let finish
    /// first.
    pub fn compact_all(&mut self) -> Result<(), StorageError> {
        self.flush()?;
        while self.compaction_running {
            self.wait_background()?;
        }
        let inputs: Vec<Arc<Table>> = self.version.tables().map(|(_, t)| Arc::clone(t)).collect();
        if inputs.is_empty() {
            return Ok(());
        }
        if let Some(table) = inputs.iter().find(|t| t.quarantined().is_some()) {
            return Err(StorageError::Quarantined {
                path: table.path().to_owned(),
                reason: table.quarantined().unwrap_or_default(),
            });
        }
        let output_level = self.full_merge_level(&inputs);
        let errors = self.stats.background_errors;
        self.start_compaction(CompactionPlan {
            inputs,
            output_level,
            drop_tombstones: true,
            cut_bytes: self.options.merged_table_bytes,
        })?;
        while self.compaction_running {
            self.wait_background()?;
        }
        if self.stats.background_errors > errors {
            return Err(StorageError::Invalid(
                "the compaction failed; see the log".to_owned(),
            ));
        }
        Ok(())
    }

    /// Polls (as [`poll`](Self::poll), waiting up to 2 ms each time) until `done` holds
    /// for the store's stats. A poll's error ends the wait with it, and so does `limit`
    /// passing first (`Invalid`, saying so).
    pub fn poll_until(
        &mut self,
        limit: Duration,
        done: impl Fn(&StoreStats) -> bool,
    ) -> Result<(), StorageError> {
        let deadline = Instant::now() + limit;
        while !done(&self.stats()) {
            if Instant::now() >= deadline {
                return Err(StorageError::Invalid(format!(
                    "what was waited for did not happen within {limit:?}"
                )));
            }
            self.poll(Some(Duration::from_millis(2)))?;
        }
        Ok(())
    }

    /// Waits until no flush or compaction is running or due.
    pub fn wait_idle(&mut self) -> Result<(), StorageError> {
        self.sync()?;
        let errors = self.stats.background_errors;
        loop {
            self.maintain(false)?;
            let idle = !self.flush_running && !self.compaction_running && self.deferred.is_none();
            if idle && self.frozen.is_none() {
                return Ok(());
            }
            if self.stats.background_errors > errors + 2 {
                return Err(StorageError::Invalid(
                    "flushes or compactions keep failing; see the log".to_owned(),
                ));
            }
            self.wait_background()?;
        }
    }

    /// Asks the scrubber thread for a pass now, at its pace, instead of after its rest
    /// (`scrub_interval`); a pass already running goes on. Returns `false` when this store
    /// runs no scrubber (`scrub_bytes_per_second` 0). Progress is in [`Store::stats`]
    /// (`scrub_pass_*`, then `scrub_passes` counts it).
    pub fn scrub_soon(&self) -> bool {
        self.shared.scrub_wanted.store(true, Ordering::Release);
        self.scrubber.is_some()
    }

    /// Checks every live table now (outside the scrubber's pace); returns the corrupt ones'
    /// errors. Each is quarantined and reported to the repair hook.
    pub fn scrub(&self) -> Vec<StorageError> {
        let mut found = Vec::new();
        for (_, table) in self.version.tables() {
            if let Err(error) = scrub_table(&self.shared, table, None) {
                found.push(error);
            }
        }
        found
    }

    /// Counters and sizes.
    pub fn stats(&self) -> StoreStats {
        let mut stats = self.stats.clone();
        stats.wal = self.wal.stats();
        stats.memtable_bytes = self.memtable.bytes();
        stats.flushing = self.frozen.is_some();
        stats.memtable_entries = self.memtable.len();
        stats.frozen_entries = self.frozen.as_ref().map_or(0, |frozen| frozen.len());
        stats.compacting = self.compaction_running;
        stats.compactions_due = self.levels_due();
        stats.table_vectors = self
            .version
            .tables()
            .map(|(_, table)| table.footer().vector_count)
            .sum();
        for (level, tables) in self.version.levels.iter().enumerate() {
            stats.levels[level] = LevelStats {
                tables: tables.len(),
                bytes: self.version.level_bytes(level),
            };
        }
        stats.quarantined_tables = self
            .version
            .tables()
            .filter(|(_, t)| t.quarantined().is_some())
            .count();
        stats.scrub_passes = self.shared.scrub_passes.load(Ordering::Relaxed);
        stats.scrub_bytes = self.shared.scrub_bytes.load(Ordering::Relaxed);
        stats.scrub_corruptions = self.shared.scrub_corruptions.load(Ordering::Relaxed);
        stats.scrub_pass_total_bytes = self.shared.scrub_pass_total.load(Ordering::Relaxed);
        stats.scrub_pass_done_bytes = self.shared.scrub_pass_done.load(Ordering::Relaxed);
        stats.scrub_passes_started = self.shared.scrub_passes_started.load(Ordering::Acquire);
        stats.wal_bytes = stats.wal.bytes_written;
        stats.wal_live_bytes = self.wal.live_bytes();
        stats
    }

    /// The live tables with their levels (for the side-car builder and tests).
    pub fn tables(&self) -> Vec<(usize, Arc<Table>)> {
        self.version
            .tables()
            .map(|(level, table)| (level, Arc::clone(table)))
            .collect()
    }

    /// A number that changes whenever what a read sees may have changed (a write made
    /// durable and applied, a MemTable frozen or flushed, a version published): a
    /// [`Snapshot`] taken at the same number reads the same.
    pub fn reads_epoch(&self) -> u64 {
        self.reads_epoch
    }

    /// A number that changes whenever the set of live tables changes (a flush or compaction
    /// published, tables removed): what a caller that derives state from the tables compares.
    pub fn version_epoch(&self) -> u64 {
        self.version_epoch
    }

    /// The largest WAL record a write may make (key, vector and payload).
    pub fn record_bytes_max(&self) -> usize {
        self.options.wal.record_bytes_max
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The WAL (tests reach their fault injector through it).
    pub fn wal(&self) -> &Wal<E> {
        &self.wal
    }

    /// Waits for one background result and installs it.
    fn wait_background(&mut self) -> Result<(), StorageError> {
        if !self.flush_running && !self.compaction_running {
            if let Some(at) = self.retry_at {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
            return self.maintain(false);
        }
        match self.finished_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(finished) => self.install(finished)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(StorageError::Closed("background workers are gone"))
            }
        }
        self.maintain(false)
    }

    /// Installs finished jobs and starts due ones. `force_flush` flushes a non-empty
    /// MemTable whatever its size.
    fn maintain(&mut self, force_flush: bool) -> Result<(), StorageError> {
        while let Ok(finished) = self.finished_rx.try_recv() {
            self.install(finished)?;
        }
        if let Some(job) = self.deferred.take() {
            self.submit(job);
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        self.retry_at = None;
        let l0 = self.version.levels[0].len();
        if !self.flush_running && self.deferred.is_none() {
            if let Some(frozen) = self.frozen.clone() {
                self.start_flush(frozen); // a retry
            } else if !self.memtable.is_empty()
                && (force_flush || self.memtable_full() && l0 < self.options.l0_stop)
            {
                let frozen = Arc::new(std::mem::replace(
                    &mut self.memtable,
                    MemTable::new(self.options.memtable_bytes),
                ));
                self.frozen = Some(Arc::clone(&frozen));
                self.reads_epoch += 1;
                self.start_flush(frozen);
            }
        }
        if !self.compaction_running && self.deferred.is_none() {
            if let Some(plan) = self.pick_compaction() {
                self.start_compaction(plan)?;
            }
        }
        Ok(())
    }

    /// Whether the WAL holds `wal_bytes_max` bytes (writes wait for a flush's checkpoint).
    fn wal_full(&self) -> bool {
        self.options.wal_bytes_max > 0 && self.wal.live_bytes() >= self.options.wal_bytes_max
    }

    /// Whether the MemTable is due for a flush: by bytes, or by entries when capped.
    fn memtable_full(&self) -> bool {
        let entries_max = self.options.memtable_entries_max;
        self.memtable.needs_flush() || entries_max > 0 && self.memtable.len() >= entries_max
    }

    fn submit(&mut self, job: Job) {
        let Some(pool) = &self.pool else {
            return;
        };
        if let Err(PoolFull(job)) = pool.try_submit(job) {
            self.deferred = Some(job);
        }
    }

    fn start_flush(&mut self, frozen: Arc<MemTable>) {
        self.flush_running = true;
        let shared = Arc::clone(&self.shared);
        let sender = self.finished_tx.clone();
        let options = self.options.clone();
        self.submit(Box::new(move || {
            let entries: Source<'_> = Box::new(frozen.iter().map(|(k, v)| memtable_entry(k, v)));
            let cut_bytes = options.table_bytes_target;
            let outputs = write_tables(
                &shared,
                &options,
                entries,
                false,
                cut_bytes,
                None,
                Written::Flush,
            );
            let _ = sender.send(Finished::Flush {
                outputs,
                last_sequence: frozen.last_sequence(),
            });
        }));
    }

    fn start_compaction(&mut self, plan: CompactionPlan) -> Result<(), StorageError> {
        self.compaction_running = true;
        let shared = Arc::clone(&self.shared);
        let sender = self.finished_tx.clone();
        let options = self.options.clone();
        self.submit(Box::new(move || {
            let mut limiter = (options.compaction_bytes_per_second > 0).then(|| {
                RateLimiter::new(options.compaction_bytes_per_second, Instant::now())
                    .stopping_on(Arc::clone(&shared.stop))
            });
            let sources: Vec<Source<'static>> = plan
                .inputs
                .iter()
                .map(|table| {
                    let source: Source<'static> = Box::new(table.iter_after(None));
                    source
                })
                .collect();
            let outputs = Merge::new(sources).and_then(|merge| {
                write_tables(
                    &shared,
                    &options,
                    Box::new(merge),
                    plan.drop_tombstones,
                    plan.cut_bytes,
                    limiter.as_mut(),
                    Written::Compaction,
                )
            });
            let _ = sender.send(Finished::Compaction {
                inputs: plan.inputs,
                output_level: plan.output_level,
                outputs,
            });
        }));
        Ok(())
    }

    /// Where a full merge of `inputs` (every table) goes: the last non-empty level (at
    /// least 1), or a deeper one if the merged data would be past that level's size, so
    /// that no compaction is due at once to cut the merged tables again.
    fn full_merge_level(&self, inputs: &[Arc<Table>]) -> usize {
        let bytes: u64 = inputs.iter().map(|t| t.file_bytes()).sum();
        let deepest = (1..LEVELS)
            .rev()
            .find(|&level| !self.version.levels[level].is_empty())
            .unwrap_or(1);
        (deepest..LEVELS)
            .find(|&level| bytes < self.level_target(level))
            .unwrap_or(LEVELS - 1)
    }

    /// Level `level`'s size target (`level` ≥ 1).
    fn level_target(&self, level: usize) -> u64 {
        let multiplier = self.options.level_multiplier;
        (1..level).fold(self.options.level1_bytes, |target, _| {
            target.saturating_mul(multiplier)
        })
    }

    /// Levels past their trigger.
    fn levels_due(&self) -> usize {
        self.scores(&self.version).len()
    }

    /// (score, level) of every level at or past its trigger.
    fn scores(&self, version: &Version) -> Vec<(f64, usize)> {
        (0..LEVELS - 1)
            .map(|level| {
                let score = if level == 0 {
                    version.levels[0].len() as f64 / self.options.l0_compaction_trigger as f64
                } else {
                    version.level_bytes(level) as f64 / self.level_target(level) as f64
                };
                (score, level)
            })
            .filter(|(score, _)| *score >= 1.0)
            .collect()
    }

    /// A level whose tables are damaged is passed over for the next most urgent one.
    fn pick_compaction(&mut self) -> Option<CompactionPlan> {
        let version = Arc::clone(&self.version);
        let mut due = self.scores(&version);
        due.sort_by(|a, b| b.0.total_cmp(&a.0));
        due.into_iter()
            .find_map(|(_, level)| self.plan_level(&version, level))
    }

    fn plan_level(&mut self, version: &Version, level: usize) -> Option<CompactionPlan> {
        let chosen: Vec<Arc<Table>> = if level == 0 {
            version.levels[0].clone()
        } else {
            let tables = &version.levels[level];
            let after = self.compact_pointer[level];
            let start = tables
                .iter()
                .position(|t| after.is_none_or(|after| t.smallest() > after))
                .unwrap_or(0);
            // The next table in turn, and its neighbours in key order while together they
            // stay within one output table and bring in no more of the next level: a run of
            // small tables (ids written in order leave them) is merged into one instead of
            // moved down one by one, so the levels below hold fewer, larger segments (each
            // is a graph a search walks), and the merge never widens into the next level.
            let below = &version.levels[level + 1];
            let overlapped =
                |range: &(Key, Key)| below.iter().filter(|t| overlaps(t, range)).count();
            let mut chosen: Vec<Arc<Table>> = Vec::new();
            let mut bytes = 0u64;
            for table in tables.get(start..)? {
                if let Some(first) = chosen.first() {
                    let current = (first.smallest(), chosen[chosen.len() - 1].largest());
                    let widened = (first.smallest(), table.largest());
                    if bytes + table.file_bytes() > self.options.table_bytes_target
                        || table.quarantined().is_some()
                        || overlapped(&widened) > overlapped(&current)
                    {
                        break;
                    }
                }
                bytes += table.file_bytes();
                chosen.push(Arc::clone(table));
            }
            self.compact_pointer[level] = chosen.last().map(|t| t.largest());
            chosen
        };
        let range = key_range(&chosen)?;
        let mut inputs = chosen;
        inputs.extend(
            version.levels[level + 1]
                .iter()
                .filter(|t| overlaps(t, &range))
                .cloned(),
        );
        if inputs.iter().any(|t| t.quarantined().is_some()) {
            return None; // never merge a damaged table: it waits for repair
        }
        // Tombstones go when no level below the output can hold an older version of any key
        // the outputs will cover (the inputs' whole range, the next level's tables included).
        let covered = key_range(&inputs)?;
        let drop_tombstones = version.levels[level + 2..]
            .iter()
            .flatten()
            .all(|t| !overlaps(t, &covered));
        Some(CompactionPlan {
            inputs,
            output_level: level + 1,
            drop_tombstones,
            cut_bytes: self.options.table_bytes_target,
        })
    }

    fn install(&mut self, finished: Finished) -> Result<(), StorageError> {
        match finished {
            Finished::Flush {
                outputs,
                last_sequence,
            } => {
                self.flush_running = false;
                let outputs = match outputs {
                    Ok(outputs) => self.without_dropped(outputs),
                    Err(error) => {
                        // The frozen MemTable stays readable; maintain() flushes it again
                        // once the retry delay has passed.
                        self.flush_disk_full = match &error {
                            StorageError::Io { path, source, .. } if disk_full(source) => {
                                Some((path.clone(), source.to_string()))
                            }
                            _ => None,
                        };
                        self.background_failed("flush", &error);
                        return Ok(());
                    }
                };
                self.flush_disk_full = None;
                let edit = Edit {
                    table_next: Some(self.shared.table_next.load(Ordering::Acquire)),
                    tables_added: outputs.iter().map(|t| table_meta(t, 0)).collect(),
                    ..Edit::default()
                };
                // On an error the edit may still have reached the MANIFEST (a failed sync, a
                // failed rollover after the append): the outputs stay, and the next open keeps
                // or removes them by what the MANIFEST says. The WAL is read-only by then.
                self.wal.publish(Some(last_sequence), edit)?;
                let mut version = (*self.version).clone();
                for table in outputs.iter() {
                    self.stats.flush_bytes += table.file_bytes();
                    version.insert(0, Arc::clone(table));
                }
                self.stats.flushes += 1;
                self.frozen = None;
                self.reads_epoch += 1;
                self.set_version(version);
            }
            Finished::Compaction {
                inputs,
                output_level,
                outputs,
            } => {
                self.compaction_running = false;
                let outputs = match outputs {
                    Ok(outputs) => self.without_dropped(outputs),
                    Err(error) => {
                        self.background_failed("compaction", &error);
                        return Ok(());
                    }
                };
                let edit = Edit {
                    table_next: Some(self.shared.table_next.load(Ordering::Acquire)),
                    tables_removed: inputs.iter().map(|t| t.number()).collect(),
                    tables_added: outputs
                        .iter()
                        .map(|t| table_meta(t, output_level as u8))
                        .collect(),
                    ..Edit::default()
                };
                // As for a flush: never delete outputs after a failed publish.
                self.wal.publish(None, edit)?;
                let mut version = (*self.version).clone();
                for tables in &mut version.levels {
                    tables.retain(|t| !inputs.iter().any(|i| i.number() == t.number()));
                }
                for table in &outputs {
                    self.stats.compaction_bytes_written += table.file_bytes();
                    version.insert(output_level, Arc::clone(table));
                }
                for table in &inputs {
                    self.stats.compaction_bytes_read += table.file_bytes();
                    obsolete(&self.shared, table);
                }
                self.stats.compactions += 1;
                self.set_version(version);
            }
        }
        Ok(())
    }

    /// Outputs of collections dropped while the job ran are deleted, not published.
    fn without_dropped(&self, outputs: Vec<Arc<Table>>) -> Vec<Arc<Table>> {
        let hook = &self.shared.hooks.compaction;
        let (kept, dropped): (Vec<_>, Vec<_>) = outputs
            .into_iter()
            .partition(|table| hook.keep_collection(table.footer().collection));
        discard(&self.shared, &dropped);
        kept
    }

    /// Offline repair of every damaged table (issue #23 item 5; `vortex-dataplane repair`):
    /// checks every table now (as the scrubber does), then, newest table first, for each
    /// table quarantined (found damaged now, earlier, or at open):
    ///
    /// - every entry that verifies ([`Table::salvage`]) whose newest version is in this
    ///   table is written again, as a new write (`rewritten`); one with a newer version
    ///   elsewhere needs nothing (`superseded`);
    /// - a point whose entry verified but whose vector did not, and whose newest version was
    ///   here, is deleted: `lost_points`;
    /// - the ids of a data block that failed its checks are unknown (`lost_ranges`); a point
    ///   in that range that an older table holds, and no newer one, could have been
    ///   overwritten or deleted in the damaged block: it is deleted rather than served
    ///   stale (`deleted_older`);
    /// - once those writes are durable, one MANIFEST edit removes the table, and its file
    ///   goes to `lost+found/` for the operator.
    ///
    /// A table that could not be opened (its footer or a meta block damaged) has no index
    /// to salvage from: it is reported with `removed: false` and stays fenced. Everything is
    /// flushed at the end. Run again after a crash, it finds the rewritten points newer and
    /// goes on. The store must be opened by nothing else (the data directory's lock).
    pub fn repair(&mut self) -> Result<Vec<TableRepair>, StorageError> {
        self.scrub();
        let damaged: Vec<Arc<Table>> = self
            .version
            .tables()
            .filter(|(_, table)| table.is_quarantined())
            .map(|(_, table)| Arc::clone(table))
            .collect();
        let mut repairs = Vec::new();
        for table in damaged {
            let footer = *table.footer();
            let mut repair = TableRepair {
                table: table.number(),
                collection: footer.collection,
                first: footer.smallest,
                last: footer.largest,
                reason: table.quarantined().unwrap_or_default(),
                ..TableRepair::default()
            };
            // A newer damaged table that stays (it could not be opened) may hold newer
            // versions of this one's points: nothing here can be said newest.
            let overlapped = repairs.iter().any(|earlier: &TableRepair| {
                !earlier.removed
                    && earlier.collection == footer.collection
                    && earlier.first <= footer.largest
                    && footer.smallest <= earlier.last
            });
            if !table.is_open() || overlapped {
                if overlapped {
                    repair.reason = format!(
                        "{}; not repaired: a newer damaged table that could not be opened \
                         overlaps its ids",
                        repair.reason
                    );
                }
                repairs.push(repair);
                continue;
            }
            let salvage = table.salvage();
            // Where the newest version of `point` is: `true` when it is this table's (the
            // read stops at this table, quarantined), `false` when a newer one is elsewhere.
            let newest_here = |store: &Store<E>, point: u64| -> Result<bool, StorageError> {
                let key = Key {
                    collection: footer.collection,
                    point,
                };
                match store.locate(&key) {
                    Ok(_) => Ok(false),
                    Err(StorageError::Quarantined { path, .. }) if path == table.path() => Ok(true),
                    Err(error) => Err(error),
                }
            };
            for entry in &salvage.entries {
                if !newest_here(self, entry.key.point)? {
                    repair.superseded += 1;
                    continue;
                }
                match &entry.point {
                    Some(point) => {
                        let (key, vector, payload) = (entry.key, &point.vector, &point.payload);
                        self.write_through(|store| store.put(key, vector, payload))?;
                    }
                    None => {
                        let key = entry.key;
                        self.write_through(|store| store.delete(key))?;
                    }
                }
                repair.rewritten += 1;
            }
            // Deletes `point` where its newest version was this table's; whether it did.
            let delete_here = |store: &mut Store<E>, point: u64| -> Result<bool, StorageError> {
                if !newest_here(store, point)? {
                    return Ok(false);
                }
                let key = Key {
                    collection: footer.collection,
                    point,
                };
                store.write_through(|store| store.delete(key))?;
                Ok(true)
            };
            for &point in &salvage.lost_points {
                if delete_here(self, point)? {
                    repair.lost_points.push(point);
                }
            }
            // Older tables' points in the damaged blocks' ranges.
            let older: Vec<Arc<Table>> = self
                .version
                .tables()
                .map(|(_, other)| Arc::clone(other))
                .filter(|other| {
                    other.number() != table.number()
                        && other.footer().collection == footer.collection
                        && !other.is_quarantined()
                })
                .collect();
            let mut candidates = BTreeSet::new();
            for &(first, last) in &salvage.lost_ranges {
                for other in &older {
                    let mut entries = other.iter_after(first.checked_sub(1));
                    for entry in entries.by_ref() {
                        let entry = entry?;
                        if entry.key.point > last {
                            break;
                        }
                        candidates.insert(entry.key.point);
                    }
                }
            }
            repair.lost_ranges = salvage.lost_ranges;
            for point in candidates {
                if delete_here(self, point)? {
                    repair.deleted_older.push(point);
                }
            }
            self.sync()?;
            self.remove_damaged_table(&table)?;
            repair.removed = true;
            repairs.push(repair);
        }
        if !repairs.is_empty() {
            self.flush()?;
        }
        Ok(repairs)
    }

    /// Runs a write, flushing and retrying while the store answers THROTTLED (offline, a
    /// repair's writes wait for nothing else).
    fn write_through(
        &mut self,
        mut write: impl FnMut(&mut Self) -> Result<u64, StorageError>,
    ) -> Result<u64, StorageError> {
        loop {
            match write(self) {
                Err(StorageError::Throttled(_)) => self.flush()?,
                other => return other,
            }
        }
    }

    /// Removes a damaged table from the version in one MANIFEST edit and moves its file to
    /// `lost+found/` (never deleted: the operator may want it).
    fn remove_damaged_table(&mut self, table: &Arc<Table>) -> Result<(), StorageError> {
        self.remove_tables(std::slice::from_ref(table))?;
        let files = &*self.shared.files;
        let exists = files
            .exists(table.path())
            .map_err(io_error("stat", table.path()))?;
        if exists {
            let aside = move_to_lost_found(files, &self.dir, table.path())?;
            if let Some(tables_dir) = table.path().parent() {
                sync_dir(files, tables_dir)?;
            }
            sync_dir(files, &self.dir.join(LOST_FOUND))?;
            tracing::warn!(
                table = table.number(),
                path = %aside.display(),
                "repair: the damaged table is out of the store; its file is kept in lost+found"
            );
        }
        // Its side-car goes (the file is gone from the store's view).
        self.shared.hooks.compaction.table_deleted(table.number());
        Ok(())
    }

    /// Takes `doomed` out of the version in one MANIFEST edit (their files are the
    /// caller's to dispose of).
    fn remove_tables(&mut self, doomed: &[Arc<Table>]) -> Result<(), StorageError> {
        let numbers: BTreeSet<u64> = doomed.iter().map(|t| t.number()).collect();
        let edit = Edit {
            tables_removed: numbers.iter().copied().collect(),
            ..Edit::default()
        };
        self.wal.publish(None, edit)?;
        let mut version = (*self.version).clone();
        for tables in &mut version.levels {
            tables.retain(|t| !numbers.contains(&t.number()));
        }
        self.set_version(version);
        Ok(())
    }

    /// Removes every table of `collection` in one MANIFEST edit (a dropped collection's
    /// data goes at once; what the MemTables still hold is dropped by the next flush, as
    /// [`CompactionHook::keep_collection`] must by then say no). Returns the tables removed.
    pub fn remove_collection_tables(&mut self, collection: u32) -> Result<usize, StorageError> {
        let doomed: Vec<Arc<Table>> = self
            .version
            .tables()
            .filter(|(_, table)| table.footer().collection == collection)
            .map(|(_, table)| Arc::clone(table))
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        self.remove_tables(&doomed)?;
        for table in &doomed {
            obsolete(&self.shared, table);
        }
        Ok(doomed.len())
    }

    /// Where the newest version of `key` is: `None` when no version is held anywhere.
    pub fn locate(&self, key: &Key) -> Result<Option<Located>, StorageError> {
        self.reader().locate(key)
    }

    /// The newest MemTable version of every point of `collection` the MemTables hold
    /// (`None`: deleted), in point order: what a search must scan exactly, and what hides
    /// older versions in tables.
    pub fn memtable_points(&self, collection: u32) -> Vec<(u64, Option<&Point>)> {
        self.reader().memtable_points(collection)
    }

    /// The store as it reads now, for other threads: see [`Snapshot`]. Constant time.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            memtable: self.memtable.clone(),
            frozen: self.frozen.clone(),
            version: Arc::clone(&self.version),
            version_epoch: self.version_epoch,
        }
    }

    fn reader(&self) -> Reader<'_> {
        Reader {
            memtable: &self.memtable,
            frozen: self.frozen.as_deref(),
            version: &self.version,
        }
    }

    fn background_failed(&mut self, what: &str, error: &StorageError) {
        self.stats.background_errors += 1;
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
        if self.shared.stop.load(Ordering::Acquire) {
            // Closing ([`Store::close`] set the flag): the failure is the close's doing (a
            // job it stopped, a side-car build the shard cancelled), not an error to retry.
            // Its inputs stay (the WAL, the tables): the next start does it again.
            tracing::info!(%error, "{what} abandoned: the store is closing");
            return;
        }
        tracing::error!(%error, "{what} failed; retrying in {RETRY_AFTER:?}");
    }

    fn set_version(&mut self, version: Version) {
        self.version_epoch += 1;
        self.reads_epoch += 1;
        let version = Arc::new(version);
        if let Ok(mut current) = self.shared.current.lock() {
            *current = Arc::clone(&version);
        }
        self.version = version;
    }

    /// Makes every write durable, abandons the running flush or compaction (a rate-limited
    /// write stops within 20 ms; a side-car build is the hook's to cancel) and stops the
    /// background threads: what was abandoned is done again after the next open, from the
    /// WAL or the tables it left in place.
    pub fn close(mut self) -> Result<(), StorageError> {
        self.sync()?;
        // The seal after the last write (see `RECORD_SEAL`); a log that cannot be written
        // any more is left as it is (a start then treats its tail as a crash's).
        if self.wal.read_only().is_none() {
            self.wal.append(RECORD_SEAL, &[])?;
            self.wal.flush()?;
        }
        // A running flush or merge is abandoned, not waited for (issue #23: a stop must be
        // quick): its inputs stay, the WAL or the tables, and the next start does it again.
        self.shared.stop.store(true, Ordering::Release);
        // Only the jobs running now: a failed flush is not retried (the WAL holds its data).
        while self.flush_running || self.compaction_running {
            match self.finished_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(finished) => self.install(finished)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(StorageError::Closed("background workers are gone"))
                }
            }
        }
        Ok(())
    }
}

impl<E: Env> Drop for Store<E> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        drop(self.pool.take()); // lets a running job finish; its outputs are orphans
        if let Some(scrubber) = self.scrubber.take() {
            let _ = scrubber.join();
        }
    }
}

fn table_meta(table: &Table, level: u8) -> TableMeta {
    let footer = table.footer();
    TableMeta {
        number: table.number(),
        level,
        collection: footer.collection,
        smallest: footer.smallest,
        largest: footer.largest,
        file_bytes: table.file_bytes(),
        max_sequence: footer.max_sequence,
    }
}

/// Deletes tables that will never be published.
fn discard(shared: &Shared, tables: &[Arc<Table>]) {
    for table in tables {
        obsolete(shared, table);
    }
}

/// Marks `table` obsolete: its file goes with its last holder, then its side-car.
fn obsolete(shared: &Shared, table: &Table) {
    let hook = Arc::clone(&shared.hooks.compaction);
    table.mark_obsolete(Some(Box::new(move |number| hook.table_deleted(number))));
}

/// Moves `path` into the store's `lost+found/` (created if need be) under its own name, or
/// with `.1`, `.2`, … appended where that is taken; returns where it went. Files the store
/// must not delete, and no longer uses, go there for the operator.
fn move_to_lost_found(files: &dyn Files, dir: &Path, path: &Path) -> Result<PathBuf, StorageError> {
    let lost_found = dir.join(LOST_FOUND);
    if !files
        .exists(&lost_found)
        .map_err(io_error("stat", &lost_found))?
    {
        files
            .create_dir_all(&lost_found)
            .map_err(io_error("create", &lost_found))?;
        // Its own entry durable before anything is moved into it.
        sync_dir(files, dir)?;
    }
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut aside = lost_found.join(&name);
    for copy in 1.. {
        if !files.exists(&aside).map_err(io_error("stat", &aside))? {
            break;
        }
        aside = lost_found.join(format!("{name}.{copy}"));
    }
    files
        .rename(path, &aside)
        .map_err(io_error("rename", path))?;
    Ok(aside)
}

/// What wrote a table: its side-car hook differs ([`CompactionHook::table_flushed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Flush,
    Compaction,
}

/// Writes `entries` into new tables (cut at collection and vector length boundaries and
/// at about `cut_bytes`), calls the side-car hook for each, and syncs the directory. On any
/// failure the tables written so far are deleted.
fn write_tables(
    shared: &Shared,
    options: &StoreOptions,
    entries: Source<'_>,
    drop_tombstones: bool,
    cut_bytes: u64,
    mut limiter: Option<&mut RateLimiter>,
    written: Written,
) -> Result<Vec<Arc<Table>>, StorageError> {
    let mut outputs: Vec<Arc<Table>> = Vec::new();
    let result = (|| {
        let mut builder: Option<(u64, TableBuilder)> = None;
        let mut kept: Option<(u32, bool)> = None;
        for entry in entries {
            if shared.stop.load(Ordering::Acquire) {
                return Err(StorageError::Closed("stopping"));
            }
            let Entry {
                key,
                sequence,
                point,
            } = entry?;
            if point.is_none() && drop_tombstones {
                continue;
            }
            if kept.is_none_or(|(collection, _)| collection != key.collection) {
                kept = Some((
                    key.collection,
                    shared.hooks.compaction.keep_collection(key.collection),
                ));
            }
            if kept.is_some_and(|(_, keep)| !keep) {
                continue;
            }
            let full = builder
                .as_ref()
                .is_some_and(|(_, b)| !b.accepts(&key) || b.bytes() >= cut_bytes);
            if full {
                if let Some((number, done)) = builder.take() {
                    outputs.push(finish_table(
                        shared,
                        options,
                        number,
                        done,
                        limiter.as_deref_mut(),
                        written,
                    )?);
                }
            }
            if builder.is_none() {
                let number = shared.table_next.fetch_add(1, Ordering::AcqRel);
                let path = shared.tables_dir.join(table_name(number));
                builder = Some((
                    number,
                    TableBuilder::create(&shared.files, &path, key.collection)?,
                ));
            }
            if let Some((_, building)) = builder.as_mut() {
                building.add(key, sequence, point.as_ref(), limiter.as_deref_mut())?;
            }
        }
        if let Some((number, done)) = builder.take() {
            outputs.push(finish_table(
                shared, options, number, done, limiter, written,
            )?);
        }
        sync_dir(&*shared.files, &shared.tables_dir)
    })();
    match result {
        Ok(()) => Ok(outputs),
        Err(error) => {
            discard(shared, &outputs);
            Err(error)
        }
    }
}

fn finish_table(
    shared: &Shared,
    options: &StoreOptions,
    number: u64,
    builder: TableBuilder,
    limiter: Option<&mut RateLimiter>,
    written: Written,
) -> Result<Arc<Table>, StorageError> {
    let table = Arc::new(builder.finish(number, options.bloom_bits_per_key, limiter)?);
    let hooked = match written {
        Written::Flush => shared.hooks.compaction.table_flushed(&table),
        Written::Compaction => shared.hooks.compaction.table_compacted(&table),
    };
    if let Err(detail) = hooked {
        obsolete(shared, &table); // the hook may have saved a side-car before it failed
        return Err(StorageError::Invalid(format!(
            "the side-car builder failed for {}: {detail}",
            table.path().display()
        )));
    }
    Ok(table)
}

/// Verifies one table; corruption is counted, quarantines it, and goes to the repair hook.
fn scrub_table(
    shared: &Shared,
    table: &Table,
    limiter: Option<&mut RateLimiter>,
) -> Result<u64, StorageError> {
    if let Some(reason) = table.quarantined() {
        return Err(StorageError::Quarantined {
            path: table.path().to_owned(),
            reason,
        });
    }
    match table.verify(limiter, Some(&shared.stop)) {
        Ok(bytes) => {
            table.release_pages();
            shared.scrub_bytes.fetch_add(bytes, Ordering::Relaxed);
            Ok(bytes)
        }
        Err(error @ StorageError::Closed(_)) => Err(error),
        Err(error) => {
            shared.scrub_corruptions.fetch_add(1, Ordering::Relaxed);
            shared.hooks.repair.request(table, &error);
            Err(error)
        }
    }
}

fn scrub_loop(shared: &Shared, bytes_per_second: u64, interval: Duration) {
    let mut limiter =
        RateLimiter::new(bytes_per_second, Instant::now()).stopping_on(Arc::clone(&shared.stop));
    let current = || {
        shared
            .current
            .lock()
            .ok()
            .map(|current| Arc::clone(&current))
    };
    while !shared.stop.load(Ordering::Acquire) {
        // Numbers, not tables: a table compacted away during the pass is skipped, and its
        // file is not kept alive by the scrubber.
        let Some(version) = current() else { return };
        let numbers: Vec<(u64, u64)> = version
            .tables()
            .map(|(_, t)| (t.number(), t.file_bytes()))
            .collect();
        drop(version);
        shared.scrub_wanted.store(false, Ordering::Release);
        shared.scrub_passes_started.fetch_add(1, Ordering::AcqRel);
        shared.scrub_pass_done.store(0, Ordering::Relaxed);
        shared.scrub_pass_total.store(
            numbers.iter().map(|&(_, bytes)| bytes).sum(),
            Ordering::Relaxed,
        );
        for (number, bytes) in numbers {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            let Some(version) = current() else { return };
            let table = version
                .tables()
                .find(|(_, t)| t.number() == number)
                .map(|(_, t)| Arc::clone(t));
            drop(version);
            if let Some(table) = table {
                let _ = scrub_table(shared, &table, Some(&mut limiter));
            }
            shared.scrub_pass_done.fetch_add(bytes, Ordering::Relaxed);
        }
        shared.scrub_passes.fetch_add(1, Ordering::Relaxed);
        let resume = Instant::now() + interval;
        while Instant::now() < resume
            && !shared.stop.load(Ordering::Acquire)
            && !shared.scrub_wanted.load(Ordering::Acquire)
        {
            std::thread::sleep(Duration::from_millis(50).min(interval));
        }
    }
}

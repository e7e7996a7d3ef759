//! The write-ahead log: group commit, segment rotation, checkpoints and BOOT_REPLAY.
//!
//! **Group commit.** [`Wal::append`] frames a record into the open batch's block buffers and
//! returns its sequence number at once. At most one batch is being written at a time; appends
//! that arrive meanwhile fill the next batch, which is written as soon as the one in flight
//! completes. An append is acknowledged (its sequence number is at or below
//! [`Wal::durable_sequence`]) only after the chain holding it completed in full: on a Direct
//! I/O file each write is `O_DSYNC`, on a buffered one the chain ends with `fdatasync`.
//! Bounds: a batch holds at most `batch_bytes_max` bytes and `appends_pending_max` appends;
//! past either, `append` answers [`StorageError::Throttled`].
//!
//! **Aligned appends.** Direct I/O writes whole aligned units, so a batch's first write starts
//! at the aligned unit holding the log's end and re-writes the bytes already there (kept in
//! memory), and its last write is padded with zeros to the next unit. Re-written bytes are
//! identical, so a torn re-write cannot damage records already acknowledged. Only one chain
//! is in flight, so two writes never race for the same unit.
//!
//! **Failures.** A short write is retried from where it stopped (the rest of the chain was
//! cancelled by the link), a bounded number of times. Any failed write or sync makes the WAL
//! read-only: the appends not yet durable are failed and new ones are refused
//! ([`StorageError::ReadOnly`]). It never retries a failed `fsync` as if nothing happened:
//! after one, the kernel may have dropped the dirty pages, and only recovery at the next
//! start can say what is on disk.
//!
//! **Segments.** The log is a series of files `wal-<number>.log`; once the current one reaches
//! `segment_bytes_target` the next append opens a new one (the limit is soft by at most one
//! batch). [`Wal::checkpoint`] records in the MANIFEST that records up to a sequence number
//! are persisted elsewhere, then deletes the segments wholly below it.
//!
//! **BOOT_REPLAY.** [`Wal::open`] reads every segment from the MANIFEST's replay point,
//! hands each record after the checkpoint to the caller, and only then returns. A torn tail
//! (damage with nothing valid after it anywhere in the log) is truncated and logged. Damage
//! with valid records after it is [`StorageError::Corrupt`], naming file and offset, unless
//! salvage mode is on; salvage skips the damage, reports it, and re-writes the surviving
//! records into a fresh segment so that the next start is clean.

use crate::env::{block_buffer, BlockBuffer, BlockWrite, Env, FinishedChain, LogFile, WriteChain};
use crate::error::{io_error, StorageError};
use crate::manifest::{parse_file_number, parse_manifest_name, Edit, Manifest, ManifestState};
use crate::record::{self, Damage, Defect, LogReader, Step, BLOCK_BYTES};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Short writes retried per chain before the WAL gives up with EIO.
const SHORT_WRITE_RETRIES_MAX: u32 = 8;
/// The longest one wait inside [`Wal::flush`] blocks before it checks again.
const FLUSH_WAIT: Duration = Duration::from_millis(100);

/// The file name of WAL segment `number`.
pub fn segment_name(number: u64) -> String {
    format!("wal-{number:06}.log")
}

/// The number in a WAL segment's file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    parse_file_number(name, "wal-", ".log")
}

/// How the WAL is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment this large is closed and the next append opens a new one.
    pub segment_bytes_target: u64,
    /// The most bytes one batch (one chain of writes) holds.
    pub batch_bytes_max: usize,
    /// The most appends waiting in the open batch.
    pub appends_pending_max: usize,
    /// The largest record payload accepted.
    pub record_bytes_max: usize,
    /// At open, skip damage in the middle of the log instead of refusing to start.
    pub salvage: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_target: 64 << 20,
            batch_bytes_max: 2 << 20,
            appends_pending_max: 16_384,
            record_bytes_max: 512 << 10,
            salvage: false,
        }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<(), String> {
        if self.batch_bytes_max < BLOCK_BYTES {
            return Err(format!("batch_bytes_max must be at least {BLOCK_BYTES}"));
        }
        let framed = record::framed_bytes(0, self.record_bytes_max) as usize + BLOCK_BYTES;
        if framed > self.batch_bytes_max {
            return Err(format!(
                "record_bytes_max {} does not fit in batch_bytes_max {}",
                self.record_bytes_max, self.batch_bytes_max
            ));
        }
        if self.appends_pending_max == 0 || self.segment_bytes_target == 0 {
            return Err("appends_pending_max and segment_bytes_target must be positive".into());
        }
        Ok(())
    }
}

/// A record handed to the caller during replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayedRecord<'a> {
    /// Its kind.
    pub kind: u8,
    /// Its sequence number.
    pub sequence: u64,
    /// Its payload.
    pub payload: &'a [u8],
}

/// A torn tail cut off at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment.
    pub path: PathBuf,
    /// Where it now ends.
    pub offset: u64,
    /// What was wrong at that offset.
    pub defect: Defect,
    /// Bytes cut off.
    pub bytes_dropped: u64,
}

/// Damage skipped in salvage mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The segment.
    pub path: PathBuf,
    /// Where the damage starts.
    pub offset: u64,
    /// What was wrong.
    pub defect: Defect,
    /// Where reading resumed.
    pub resumed_at: u64,
}

/// What BOOT_REPLAY did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Segments read.
    pub segments: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Records handed to the caller (those after the checkpoint).
    pub records: u64,
    /// The checkpoint replay started after.
    pub checkpoint_sequence: u64,
    /// The last sequence number in the log.
    pub last_sequence: u64,
    /// Torn tails cut off.
    pub truncated: Vec<Truncation>,
    /// Damage skipped (salvage mode only).
    pub skipped: Vec<Skipped>,
    /// How long replay took, truncation and the new segment included.
    pub duration: Duration,
    /// The MANIFEST's last edit was damaged and ignored (see
    /// [`crate::manifest::Replayed::damaged_tail`]): what, and where.
    pub manifest_damage: Option<String>,
}

/// Counters, for stats and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Appends accepted.
    pub appends: u64,
    /// Chains submitted (batches, plus retries).
    pub chains: u64,
    /// Write operations submitted.
    pub writes: u64,
    /// Bytes submitted for writing (re-written and padding bytes included).
    pub bytes_written: u64,
    /// Short writes seen.
    pub short_writes: u64,
    /// Segments opened after the first.
    pub rotations: u64,
    /// Appends refused with THROTTLED.
    pub throttled: u64,
}

/// Why the WAL is read-only.
#[derive(Debug, Clone)]
struct Failure {
    operation: &'static str,
    path: PathBuf,
    offset: u64,
    cause: String,
    /// The disk was full (ENOSPC, EDQUOT): [`Wal::resume`] may start a new segment once it
    /// is not (other failures wait for a restart).
    resumable: bool,
}

impl Failure {
    /// The error appends get: `NoSpace` while the WAL waits for the disk to have room
    /// ([`Wal::resume`]), else `ReadOnly`.
    fn error(&self, waiting: bool) -> StorageError {
        if waiting {
            return StorageError::NoSpace {
                path: self.path.clone(),
                cause: self.cause.clone(),
            };
        }
        StorageError::ReadOnly {
            operation: self.operation,
            path: self.path.clone(),
            offset: self.offset,
            cause: self.cause.clone(),
        }
    }
}

/// A live segment.
#[derive(Debug, Clone)]
struct Segment {
    number: u64,
    /// The last sequence number sealed into a write to it (0 if none).
    last_sequence: u64,
    /// Its length once closed (the current segment's is the open batch's end).
    bytes: u64,
}

/// The open batch: appends not yet submitted.
#[derive(Debug, Default)]
struct Batch {
    /// Segment position where its new bytes start.
    start: u64,
    /// Position after its last record.
    end: u64,
    /// Index (in the segment) of the block `blocks[0]` holds.
    first_block: u64,
    blocks: Vec<BlockBuffer>,
    appends: usize,
    last_sequence: u64,
}

/// The chain being written.
#[derive(Debug)]
struct InFlight {
    segment: u64,
    file: LogFile,
    end: u64,
    last_sequence: u64,
    retries: u32,
    /// A chain to resubmit (after a short write, or when the ring was busy).
    resubmit: Option<WriteChain>,
}

/// The write-ahead log.
#[derive(Debug)]
pub struct Wal<E: Env> {
    env: E,
    dir: PathBuf,
    options: WalOptions,
    manifest: Manifest,
    /// Sealed segments still live, oldest first, then the current one.
    segments: VecDeque<Segment>,
    file: LogFile,
    /// The previous segment's file, closed once its last chain completes.
    closing: Option<LogFile>,
    batch: Batch,
    in_flight: Option<InFlight>,
    pool: Vec<BlockBuffer>,
    finished: Vec<FinishedChain>,
    sequence_next: u64,
    durable_sequence: u64,
    failure: Option<Failure>,
    /// The segment an open could not start on a disk that took no writes, or that replaces
    /// the one the disk filled up ([`Wal::resume`]).
    waiting: Option<Waiting>,
    /// Where the durable bytes of the current segment end (every chain on it up to there
    /// completed): what a resume keeps of it.
    durable_end: u64,
    /// What the last resume skipped, until [`Wal::take_skipped`].
    skipped: Option<(u64, u64)>,
    /// The last sequence number actually in the log (replayed, or written by a completed
    /// chain): `durable_sequence` without the numbers a resume passed over.
    written_sequence: u64,
    stats: WalStats,
}

/// The current file of a WAL without a segment (one waiting for the disk to have room):
/// nothing is written to it (appends are refused) and it is never handed to the Env.
const NO_FILE: LogFile = LogFile {
    id: u32::MAX,
    alignment: 1,
    direct: false,
};

/// How often [`Wal::resume`] tries again to start the segment an open could not.
pub const RESUME_INTERVAL: Duration = Duration::from_secs(1);

/// The segment an open could not start because the disk took no writes (full, over quota,
/// read-only): until [`Wal::resume`] starts it, `file` is a placeholder nothing is written
/// to, `manifest` is the current MANIFEST (nothing is appended to it), and every append is
/// refused with [`StorageError::NoSpace`].
#[derive(Debug)]
struct Waiting {
    /// The segment to start.
    number: u64,
    /// The MANIFEST state to write with it (the replayed state, with the segment recorded).
    state: ManifestState,
    /// The number of the next MANIFEST tried: a new one per try, so that a try cut short
    /// after it made its MANIFEST current is never undone by the next.
    manifest_next: u64,
    /// The next try, not before.
    retry_at: Instant,
    /// Sequence numbers of appends failed by the disk filling up while the WAL ran (none
    /// for a start on a full disk): never durable, never used again ([`Wal::take_skipped`]).
    skipped: Option<(u64, u64)>,
}

/// Whether `error` says the disk is full (ENOSPC, or EDQUOT over a quota): what a running
/// WAL waits out ([`Wal::resume`]).
pub(crate) fn disk_full(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// The I/O error inside `error`, if that is what it is.
fn io_source(error: &StorageError) -> Option<&std::io::Error> {
    match error {
        StorageError::Io { source, .. } => Some(source),
        _ => None,
    }
}

/// Whether `error` says the disk takes no writes now (full, over quota, or read-only): what
/// an open waits out rather than fails on, serving reads meanwhile.
pub fn takes_no_writes(error: &StorageError) -> bool {
    io_source(error)
        .is_some_and(|source| disk_full(source) || source.raw_os_error() == Some(libc::EROFS))
}

/// Creates segment `number` (removing an empty one a failed try left), syncs the directory,
/// and makes MANIFEST `manifest_number` holding `state` current (removing `previous`). A
/// failure closes and removes the new segment, best effort.
fn start_segment<E: Env>(
    env: &mut E,
    dir: &Path,
    number: u64,
    manifest_number: u64,
    state: ManifestState,
    previous: Option<u64>,
) -> Result<(LogFile, Manifest), StorageError> {
    let path = dir.join(segment_name(number));
    if env.exists(&path).map_err(io_error("stat", &path))? {
        env.remove(&path).map_err(io_error("remove", &path))?;
    }
    let file = env.open_log(&path).map_err(io_error("create", &path))?;
    let recorded = env
        .sync_dir(dir)
        .map_err(io_error("fsync", dir))
        .and_then(|()| Manifest::create(env, dir, manifest_number, state, previous));
    match recorded {
        Ok(manifest) => Ok((file, manifest)),
        Err(error) => {
            env.close_log(file);
            if let Err(removing) = env.remove(&path) {
                tracing::warn!(path = %path.display(), %removing, "cannot remove an unused segment");
            }
            Err(error)
        }
    }
}

/// Removes every MANIFEST in `dir` but `current`: leftovers of an interrupted switch, or
/// of tries of [`Wal::resume`] cut short. Best effort: one left is removed at a later start.
fn remove_stale_manifests<E: Env>(env: &mut E, dir: &Path, current: u64) {
    let names = match env.list(dir) {
        Ok(names) => names,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot list the WAL directory");
            return;
        }
    };
    for name in names {
        if parse_manifest_name(&name).is_some_and(|n| n != current) {
            let path = dir.join(&name);
            if let Err(error) = env.remove(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot remove an old MANIFEST");
            }
        }
    }
}

fn align_down(value: u64, alignment: u32) -> u64 {
    value - value % u64::from(alignment)
}

fn align_up(value: u64, alignment: u32) -> u64 {
    align_down(value + u64::from(alignment) - 1, alignment)
}

impl<E: Env> Wal<E> {
    /// Opens the WAL in `dir` (created if missing), replays it through `on_record`, and
    /// returns it ready for appends with what replay did. Blocks until replay is done.
    pub fn open(
        mut env: E,
        dir: &Path,
        options: WalOptions,
        mut on_record: impl FnMut(ReplayedRecord<'_>),
    ) -> Result<(Self, ReplayReport), StorageError> {
        let started = Instant::now();
        options
            .validate()
            .map_err(|detail| StorageError::Inconsistent {
                dir: dir.to_owned(),
                detail,
            })?;
        env.create_dir_all(dir).map_err(io_error("create", dir))?;
        let names = env.list(dir).map_err(io_error("list", dir))?;
        let mut numbers: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        numbers.sort_unstable();
        let (manifest_number, state, manifest_damage) = match Manifest::load(&mut env, dir)? {
            Some((number, replayed)) => (number, replayed.state, replayed.damaged_tail),
            None => {
                // A crash during the very first open can leave empty segments (and a MANIFEST
                // that never became current) before CURRENT exists: nothing was ever
                // acknowledged then, so start afresh. Anything else is refused.
                let mut written = false;
                for &number in &numbers {
                    let path = dir.join(segment_name(number));
                    let bytes = env.read(&path).map_err(io_error("read", &path))?;
                    written |= bytes.iter().any(|&byte| byte != 0);
                }
                if !written {
                    for name in names.iter().filter(|n| {
                        parse_segment_name(n).is_some() || parse_manifest_name(n).is_some()
                    }) {
                        let path = dir.join(name);
                        env.remove(&path).map_err(io_error("remove", &path))?;
                    }
                    numbers.clear();
                }
                let manifests = names.iter().any(|n| parse_manifest_name(n).is_some());
                if written {
                    return Err(StorageError::Inconsistent {
                        dir: dir.to_owned(),
                        detail: format!(
                            "WAL segments with data exist but CURRENT does not{}; refusing \
                             to start over them",
                            if manifests {
                                " (MANIFEST files do)"
                            } else {
                                ""
                            }
                        ),
                    });
                }
                (0, ManifestState::default(), None)
            }
        };
        let mut report = ReplayReport {
            checkpoint_sequence: state.wal_checkpoint_sequence,
            manifest_damage,
            ..ReplayReport::default()
        };

        // Segments below the replay point are leftovers of an interrupted checkpoint.
        for &number in numbers
            .iter()
            .filter(|&&n| n < state.wal_replay_from_segment)
        {
            let path = dir.join(segment_name(number));
            env.remove(&path).map_err(io_error("remove", &path))?;
        }
        let live: Vec<u64> = numbers
            .into_iter()
            .filter(|&n| n >= state.wal_replay_from_segment)
            .collect();
        // Every segment from the replay point to the newest the MANIFEST knows must be here:
        // a missing one (even the newest) would lose acknowledged records silently.
        let newest_known = state.segment_next.saturating_sub(1);
        let newest = live.last().copied().unwrap_or(0).max(newest_known);
        if let Some(missing) =
            (state.wal_replay_from_segment..=newest).find(|n| live.binary_search(n).is_err())
        {
            return Err(StorageError::Inconsistent {
                dir: dir.to_owned(),
                detail: format!(
                    "segment {} is missing (replay starts at {}, the newest is {})",
                    segment_name(missing),
                    segment_name(state.wal_replay_from_segment),
                    segment_name(newest)
                ),
            });
        }

        let mut replay = Replay {
            options: &options,
            checkpoint: state.wal_checkpoint_sequence,
            last_sequence: 0,
            tails: Vec::new(),
            salvaged: Vec::new(),
            segments: VecDeque::new(),
        };
        for &number in &live {
            let path = dir.join(segment_name(number));
            let bytes = env.read(&path).map_err(io_error("read", &path))?;
            report.segments += 1;
            report.bytes += bytes.len() as u64;
            replay.segment(number, &path, &bytes, &mut report, &mut on_record)?;
        }
        report.last_sequence = replay.last_sequence.max(state.wal_checkpoint_sequence);
        // Records a previous open read back whole cannot be a torn tail now.
        if !options.salvage && report.last_sequence < state.wal_sealed_sequence {
            return Err(match replay.tails.first() {
                Some(tail) => StorageError::Corrupt {
                    path: tail.path.clone(),
                    offset: tail.damage.offset,
                    defect: tail.damage.defect,
                },
                None => StorageError::Inconsistent {
                    dir: dir.to_owned(),
                    detail: format!(
                        "the log ends at sequence {} but reached {} at an earlier start",
                        report.last_sequence, state.wal_sealed_sequence
                    ),
                },
            });
        }
        for tail in std::mem::take(&mut replay.tails) {
            let dropped = tail.length - tail.valid_end;
            tracing::warn!(
                path = %tail.path.display(),
                offset = tail.valid_end,
                defect = %tail.damage.defect,
                bytes_dropped = dropped,
                "truncating a torn WAL tail"
            );
            env.truncate_synced(&tail.path, tail.valid_end)
                .map_err(io_error("truncate", &tail.path))?;
            report.truncated.push(Truncation {
                path: tail.path,
                offset: tail.valid_end,
                defect: tail.damage.defect,
                bytes_dropped: dropped,
            });
        }

        // Appends go to a new segment, so that no file is ever written after a crash left
        // it, and a torn tail stays cut off.
        let number = state
            .segment_next
            .max(live.last().map_or(0, |&n| n + 1))
            .max(state.wal_replay_from_segment);
        let next_state = ManifestState {
            wal_replay_from_segment: if live.is_empty() {
                number
            } else {
                state.wal_replay_from_segment
            },
            segment_next: number + 1,
            wal_sealed_sequence: report.last_sequence.max(state.wal_sealed_sequence),
            ..state.clone()
        };
        let previous = Some(manifest_number).filter(|&n| n > 0);
        let started_segment = start_segment(
            &mut env,
            dir,
            number,
            manifest_number + 1,
            next_state.clone(),
            previous,
        );
        let mut segments = replay.segments;
        let (file, manifest, waiting, failure) = match started_segment {
            Ok((file, manifest)) => {
                // MANIFESTs other than the new one are leftovers of an interrupted switch.
                remove_stale_manifests(&mut env, dir, manifest.number());
                segments.push_back(Segment {
                    number,
                    last_sequence: 0,
                    bytes: 0,
                });
                (file, manifest, None, None)
            }
            // On a disk that takes no writes, the log is served as replayed (the caller's
            // reads go on) and appends wait for `resume` (salvage must write: refused).
            Err(error) if takes_no_writes(&error) && report.skipped.is_empty() => {
                tracing::error!(
                    dir = %dir.display(),
                    %error,
                    "the disk takes no writes: the WAL refuses appends until it does \
                     (tried again every second); reads are served"
                );
                let waiting = Waiting {
                    number,
                    state: next_state,
                    manifest_next: manifest_number + 2,
                    retry_at: Instant::now() + RESUME_INTERVAL,
                    skipped: None,
                };
                let failure = Failure {
                    operation: "starting a segment",
                    path: dir.join(segment_name(number)),
                    offset: 0,
                    cause: error.to_string(),
                    resumable: true,
                };
                let current = Manifest::unwritable(dir, manifest_number, state);
                (NO_FILE, current, Some(waiting), Some(failure))
            }
            Err(error) => return Err(error),
        };

        let blocks_per_batch = options.batch_bytes_max / BLOCK_BYTES + 2;
        let pool = (0..2 * blocks_per_batch)
            .map(|_| block_buffer(BLOCK_BYTES))
            .collect();
        let salvaged = std::mem::take(&mut replay.salvaged);
        let mut wal = Wal {
            env,
            dir: dir.to_owned(),
            options,
            manifest,
            segments,
            file,
            closing: None,
            batch: Batch::default(),
            in_flight: None,
            pool,
            finished: Vec::new(),
            sequence_next: report.last_sequence + 1,
            durable_sequence: report.last_sequence,
            failure,
            waiting,
            durable_end: 0,
            skipped: None,
            written_sequence: report.last_sequence,
            stats: WalStats::default(),
        };
        if !report.skipped.is_empty() {
            wal.rewrite_salvaged(&salvaged, number)?;
        }
        report.duration = started.elapsed();
        tracing::info!(
            dir = %dir.display(),
            segments = report.segments,
            records = report.records,
            bytes = report.bytes,
            last_sequence = report.last_sequence,
            truncated = report.truncated.len(),
            skipped = report.skipped.len(),
            duration_ms = report.duration.as_secs_f64() * 1e3,
            "BOOT_REPLAY done"
        );
        Ok((wal, report))
    }

    /// Adds a record to the open batch and returns its sequence number; it is durable once
    /// [`durable_sequence`](Self::durable_sequence) reaches that number.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<u64, StorageError> {
        let sequence = self.sequence_next;
        self.append_sequenced(kind, sequence, payload)?;
        Ok(sequence)
    }

    /// Whether appends of payloads of these sizes, in this order, would all be taken now:
    /// false when one of them would meet THROTTLED (the open batch's bytes or appends, or the
    /// free buffers, run out until a batch has been written) or be refused. The same walk as
    /// [`append`](Self::append), so a caller can keep a batch of appends whole.
    pub fn has_room(&self, payloads: impl IntoIterator<Item = usize>) -> bool {
        if self.failure.is_some() {
            return false;
        }
        // The first append of an empty batch past the segment target opens a new segment.
        let rotates =
            self.batch.appends == 0 && self.batch.start >= self.options.segment_bytes_target;
        let (start, mut end, first_block, held, free) = if rotates {
            (0, 0, 0, 0, self.pool.len() + self.batch.blocks.len())
        } else {
            (
                self.batch.start,
                self.batch.end,
                self.batch.first_block,
                self.batch.blocks.len(),
                self.pool.len(),
            )
        };
        for (index, (appends, payload)) in (self.batch.appends..).zip(payloads).enumerate() {
            if payload > self.options.record_bytes_max
                || appends >= self.options.appends_pending_max
                || self.sequence_next.saturating_add(index as u64) > record::SEQUENCE_MAX
            {
                return false;
            }
            let framed = record::framed_bytes(end, payload);
            if appends > 0 && end + framed - start > self.options.batch_bytes_max as u64 {
                return false;
            }
            let last_block = (end + framed - 1) / BLOCK_BYTES as u64;
            let blocks_needed = (last_block + 1 - first_block) as usize;
            if blocks_needed.saturating_sub(held) > free {
                return false;
            }
            end += framed;
        }
        true
    }

    /// The largest batch of appends (count, payload bytes) that [`has_room`](Self::has_room)
    /// is sure to accept once the open batch is empty: half an open batch's limits, leaving
    /// room for framing.
    pub fn batch_limits(&self) -> (usize, usize) {
        (
            self.options.appends_pending_max / 2,
            self.options.batch_bytes_max / 2,
        )
    }

    /// Bytes of the log that a start would read: every segment not yet retired by a
    /// checkpoint, the open batch included.
    pub fn live_bytes(&self) -> u64 {
        let closed: u64 = self
            .segments
            .iter()
            .rev()
            .skip(1)
            .map(|segment| segment.bytes)
            .sum();
        closed + self.batch.end
    }

    /// The highest sequence number known durable: every append up to it is acknowledged.
    pub fn durable_sequence(&self) -> u64 {
        self.durable_sequence
    }

    /// The sequence number the next append gets.
    pub fn next_sequence(&self) -> u64 {
        self.sequence_next
    }

    /// Whether an I/O failure made the WAL read-only, and why.
    pub fn read_only(&self) -> Option<StorageError> {
        let waiting = self.waiting.is_some();
        self.failure.as_ref().map(|failure| failure.error(waiting))
    }

    /// Takes appends again after a full disk: for a WAL the disk filled up while it ran,
    /// first cuts the segment back (`park`); then tries, at most once per
    /// [`RESUME_INTERVAL`], to start a new segment as an open on a full disk could not (see
    /// [`Wal::open`]): create it, sync the directory, make a MANIFEST recording it current,
    /// each try with a MANIFEST number of its own. True when the WAL takes appends (now or
    /// already); a WAL made read-only by another failure stays so until a restart. Called
    /// on every poll: a healthy WAL answers without reading the clock.
    pub fn resume(&mut self) -> bool {
        if self.failure.is_none() {
            return true;
        }
        self.resume_at(Instant::now())
    }

    /// [`Wal::resume`] as if it were `now` (tests pass a time past the interval).
    pub fn resume_at(&mut self, now: Instant) -> bool {
        if self.waiting.is_none() && !self.park() {
            return self.failure.is_none();
        }
        let Some(waiting) = self.waiting.as_mut() else {
            return self.failure.is_none();
        };
        if now < waiting.retry_at {
            return false;
        }
        waiting.retry_at = now + RESUME_INTERVAL;
        let manifest_number = waiting.manifest_next;
        waiting.manifest_next += 1;
        let (number, state) = (waiting.number, waiting.state.clone());
        let previous = Some(self.manifest.number()).filter(|&n| n > 0);
        let started = start_segment(
            &mut self.env,
            &self.dir,
            number,
            manifest_number,
            state,
            previous,
        );
        match started {
            Ok((file, manifest)) => {
                remove_stale_manifests(&mut self.env, &self.dir, manifest.number());
                self.file = file;
                self.manifest = manifest;
                self.segments.push_back(Segment {
                    number,
                    last_sequence: 0,
                    bytes: 0,
                });
                self.durable_end = 0;
                if let Some(skipped) = self.waiting.as_ref().and_then(|waiting| waiting.skipped) {
                    // The failed appends' numbers are passed over, never used again.
                    self.durable_sequence = skipped.1;
                    self.skipped = Some(skipped);
                }
                self.waiting = None;
                self.failure = None;
                tracing::info!(dir = %self.dir.display(), segment = number, "the disk takes writes again: the WAL takes appends");
                true
            }
            Err(error) => {
                tracing::debug!(dir = %self.dir.display(), %error, "the disk still takes no writes");
                if let Some(failure) = &mut self.failure {
                    failure.cause = error.to_string();
                }
                false
            }
        }
    }

    /// The sequence numbers of the appends a resume passed over (they failed when the disk
    /// filled up and were never durable), once: the caller drops what it kept of them.
    pub fn take_skipped(&mut self) -> Option<(u64, u64)> {
        self.skipped.take()
    }

    /// After the disk filled up while the WAL ran: once no chain is in flight, cuts the
    /// current segment back to its durable end (the failed chain's bytes, torn or not, go),
    /// closes it, drops the open batch (its appends failed), and waits to start a new
    /// segment as a start on a full disk does. False while that cannot be done (another
    /// failure, a chain still in flight, or the cut itself failed).
    fn park(&mut self) -> bool {
        if !self
            .failure
            .as_ref()
            .is_some_and(|failure| failure.resumable)
        {
            return false;
        }
        if self.in_flight.is_some() {
            self.reap(None);
            if self.in_flight.is_some() {
                return false;
            }
        }
        let Some(current) = self.segments.back().map(|segment| segment.number) else {
            return false;
        };
        let path = self.dir.join(segment_name(current));
        if let Err(error) = self.env.truncate_synced(&path, self.durable_end) {
            tracing::error!(path = %path.display(), %error, "cannot cut the WAL back to its durable end: read-only until restart");
            if let Some(failure) = &mut self.failure {
                failure.resumable = false;
            }
            return false;
        }
        if let Some(closing) = self.closing.take() {
            self.env.close_log(closing);
        }
        let file = std::mem::replace(&mut self.file, NO_FILE);
        self.env.close_log(file);
        if let Some(segment) = self.segments.back_mut() {
            segment.bytes = self.durable_end;
        }
        self.pool.append(&mut self.batch.blocks);
        self.batch = Batch::default();
        let skipped = (self.durable_sequence < self.sequence_next - 1)
            .then_some((self.durable_sequence + 1, self.sequence_next - 1));
        let state = self.manifest.state();
        let state = ManifestState {
            segment_next: current + 2,
            wal_sealed_sequence: state.wal_sealed_sequence.max(self.written_sequence),
            ..state.clone()
        };
        self.waiting = Some(Waiting {
            number: current + 1,
            state,
            // The failed MANIFEST switch, if that was what failed, tried `number + 1`.
            manifest_next: self.manifest.number() + 2,
            retry_at: Instant::now(),
            skipped,
        });
        tracing::info!(path = %path.display(), durable_end = self.durable_end, "the WAL waits for the disk to have room, to start a new segment");
        true
    }

    /// Whether the current segment is written with Direct I/O (`O_DIRECT | O_DSYNC`) rather
    /// than buffered writes and `fdatasync`.
    pub fn direct_io(&self) -> bool {
        self.file.direct
    }

    /// The current segment's number.
    pub fn segment_number(&self) -> u64 {
        self.segments.back().map_or(0, |segment| segment.number)
    }

    /// Counters.
    pub fn stats(&self) -> WalStats {
        self.stats
    }

    /// The environment (tests reach their fault injector through it).
    pub fn env(&self) -> &E {
        &self.env
    }

    /// The MANIFEST state in force.
    pub fn manifest_state(&self) -> &ManifestState {
        self.manifest.state()
    }

    /// Moves the log forward: reaps finished writes, waiting up to `wait` when a write is in
    /// flight, and starts the next batch. Returns the durable sequence number, or the error
    /// that made the WAL read-only (every append above the durable number has then failed).
    pub fn poll(&mut self, wait: Option<Duration>) -> Result<u64, StorageError> {
        self.start_write();
        if self.in_flight.is_some() {
            let wait = wait.filter(|_| self.failure.is_none());
            self.reap(wait);
            self.start_write();
        }
        match &self.failure {
            Some(failure) => Err(failure.error(self.waiting.is_some())),
            None => Ok(self.durable_sequence),
        }
    }

    /// Polls until every append so far is durable.
    pub fn flush(&mut self) -> Result<u64, StorageError> {
        let target = self.sequence_next - 1;
        while self.durable_sequence < target {
            self.poll(Some(FLUSH_WAIT))?;
        }
        Ok(self.durable_sequence)
    }

    /// Records that every record up to `sequence` is persisted elsewhere (clamped to the
    /// durable sequence number): replay will skip them, and segments holding only such
    /// records are deleted.
    pub fn checkpoint(&mut self, sequence: u64) -> Result<(), StorageError> {
        self.publish(Some(sequence), Edit::default())
    }

    /// Appends `edit` (the SSTable changes of a flush or a compaction) to the MANIFEST
    /// durably, in the same record as a [`checkpoint`](Self::checkpoint) at `checkpoint` when
    /// one is given: a flush's new table and the checkpoint it allows land atomically. A
    /// failed MANIFEST append makes the WAL read-only.
    pub fn publish(&mut self, checkpoint: Option<u64>, edit: Edit) -> Result<(), StorageError> {
        if let Some(failure) = &self.failure {
            return Err(failure.error(self.waiting.is_some()));
        }
        let Some(sequence) = checkpoint else {
            if let Err(error) = self.manifest.apply(&mut self.env, &edit) {
                self.fail_manifest(&error);
                return Err(error);
            }
            return Ok(());
        };
        let sequence = sequence.min(self.durable_sequence);
        let current = self.segments.back().map_or(0, |segment| segment.number);
        let replay_from = self
            .segments
            .iter()
            .find(|segment| segment.number == current || segment.last_sequence > sequence)
            .map_or(current, |segment| segment.number)
            .min(
                self.in_flight
                    .as_ref()
                    .map_or(u64::MAX, |flight| flight.segment),
            );
        self.move_replay_point(replay_from, sequence, edit)
    }

    /// Records a new replay point and checkpoint in the MANIFEST (durably), then deletes the
    /// segments below the replay point. A failed MANIFEST append makes the WAL read-only.
    fn move_replay_point(
        &mut self,
        replay_from: u64,
        checkpoint: u64,
        tables: Edit,
    ) -> Result<(), StorageError> {
        let edit = Edit {
            wal_replay_from_segment: Some(replay_from),
            wal_checkpoint_sequence: Some(checkpoint),
            ..tables
        };
        if let Err(error) = self.manifest.apply(&mut self.env, &edit) {
            self.fail_manifest(&error);
            return Err(error);
        }
        // The edit is durable: from here on the checkpoint has happened. A segment that
        // cannot be removed now is logged and removed by a later checkpoint, or at open.
        let mut removed = false;
        while let Some(segment) = self.segments.front() {
            if segment.number >= replay_from {
                break;
            }
            let path = self.dir.join(segment_name(segment.number));
            if let Err(error) = self.env.remove(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot remove a retired WAL segment");
                break;
            }
            self.segments.pop_front();
            removed = true;
        }
        if removed {
            if let Err(error) = self.env.sync_dir(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot sync the WAL directory");
            }
        }
        Ok(())
    }

    fn append_sequenced(
        &mut self,
        kind: u8,
        sequence: u64,
        payload: &[u8],
    ) -> Result<(), StorageError> {
        if let Some(failure) = &self.failure {
            return Err(failure.error(self.waiting.is_some()));
        }
        if kind == 0 {
            return Err(StorageError::ReservedKind);
        }
        if payload.len() > self.options.record_bytes_max {
            return Err(StorageError::RecordTooLarge {
                bytes: payload.len(),
                max_bytes: self.options.record_bytes_max,
            });
        }
        debug_assert!(sequence >= self.sequence_next);
        if sequence > record::SEQUENCE_MAX {
            // Replay reads a record past the bound as damage (a torn tail): one written
            // would be acknowledged and then lost at the next start.
            return Err(StorageError::Invalid(format!(
                "the log has used every sequence number (up to {}); it takes no more appends",
                record::SEQUENCE_MAX
            )));
        }
        if self.batch.appends == 0 && self.batch.start >= self.options.segment_bytes_target {
            self.rotate()?;
        }
        if self.batch.appends >= self.options.appends_pending_max {
            self.stats.throttled += 1;
            return Err(StorageError::Throttled(
                "appends_pending_max appends are waiting",
            ));
        }
        let framed = record::framed_bytes(self.batch.end, payload.len());
        let batch_bytes = self.batch.end + framed - self.batch.start;
        if self.batch.appends > 0 && batch_bytes > self.options.batch_bytes_max as u64 {
            self.stats.throttled += 1;
            return Err(StorageError::Throttled(
                "the open batch holds batch_bytes_max bytes",
            ));
        }
        let last_block = (self.batch.end + framed - 1) / BLOCK_BYTES as u64;
        let blocks_needed = (last_block + 1 - self.batch.first_block) as usize;
        if blocks_needed - self.batch.blocks.len().min(blocks_needed) > self.pool.len() {
            self.stats.throttled += 1;
            return Err(StorageError::Throttled("no free WAL buffer"));
        }
        while self.batch.blocks.len() < blocks_needed {
            let Some(buffer) = self.pool.pop() else {
                unreachable!("pool size checked above");
            };
            self.batch.blocks.push(buffer);
        }
        let first_block = self.batch.first_block;
        let blocks = &mut self.batch.blocks;
        let end = record::frame(self.batch.end, kind, sequence, payload, |at, bytes| {
            let block = (at / BLOCK_BYTES as u64 - first_block) as usize;
            let offset = (at % BLOCK_BYTES as u64) as usize;
            blocks[block][offset..offset + bytes.len()].copy_from_slice(bytes);
        });
        debug_assert_eq!(end, self.batch.end + framed);
        self.batch.end = end;
        self.batch.appends += 1;
        self.batch.last_sequence = sequence;
        self.sequence_next = sequence + 1;
        self.stats.appends += 1;
        Ok(())
    }

    /// Closes the current segment and opens the next.
    fn rotate(&mut self) -> Result<(), StorageError> {
        let number = self.segments.back().map_or(1, |segment| segment.number + 1);
        let path = self.dir.join(segment_name(number));
        let file = match self.env.open_log(&path) {
            Ok(file) => file,
            Err(error) => {
                self.fail_io("creating a segment", 0, &error);
                return Err(io_error("create", &path)(error));
            }
        };
        if let Err(error) = self.env.sync_dir(&self.dir) {
            self.env.close_log(file);
            self.fail_io("fsync of the WAL directory", 0, &error);
            return Err(io_error("fsync", &self.dir)(error));
        }
        // The MANIFEST learns of the segment only once it exists: a crash in between leaves
        // an extra empty segment, never a recorded one missing.
        let edit = Edit {
            segment_next: Some(number + 1),
            ..Edit::default()
        };
        if let Err(error) = self.manifest.apply(&mut self.env, &edit) {
            self.env.close_log(file);
            self.fail_manifest(&error);
            return Err(error);
        }
        let previous = std::mem::replace(&mut self.file, file);
        match &self.in_flight {
            Some(in_flight) if in_flight.file == previous => self.closing = Some(previous),
            _ => self.env.close_log(previous),
        }
        if let Some(closed) = self.segments.back_mut() {
            closed.bytes = self.batch.start;
        }
        self.segments.push_back(Segment {
            number,
            last_sequence: 0,
            bytes: 0,
        });
        self.pool.append(&mut self.batch.blocks);
        self.batch.start = 0;
        self.batch.end = 0;
        self.batch.first_block = 0;
        self.stats.rotations += 1;
        Ok(())
    }

    /// Seals the open batch into a chain and submits it, if nothing is in flight.
    fn start_write(&mut self) {
        if self.failure.is_some() {
            return;
        }
        if let Some(in_flight) = &mut self.in_flight {
            if let Some(chain) = in_flight.resubmit.take() {
                self.submit(chain);
            }
            return;
        }
        if self.batch.appends == 0 {
            return;
        }
        let alignment = self.file.alignment;
        let batch = &mut self.batch;
        let mut writes = Vec::with_capacity(batch.blocks.len());
        let count = batch.blocks.len();
        // The next batch continues in the block this one ends in: keep its bytes.
        let tail_block = batch.end / BLOCK_BYTES as u64;
        let tail_offset = batch.end % BLOCK_BYTES as u64;
        let mut head = None;
        for (index, mut buffer) in batch.blocks.drain(..).enumerate() {
            let block = batch.first_block + index as u64;
            let block_start = block * BLOCK_BYTES as u64;
            let lo = if index == 0 {
                align_down(batch.start - block_start, alignment)
            } else {
                0
            };
            let hi = if index + 1 == count {
                let end_in_block = batch.end - block_start;
                let hi = align_up(end_in_block, alignment);
                buffer[end_in_block as usize..hi as usize].fill(0);
                hi
            } else {
                BLOCK_BYTES as u64
            };
            if block == tail_block && tail_offset > 0 {
                let keep_from = align_down(tail_offset, alignment) as usize;
                if keep_from < tail_offset as usize {
                    let Some(mut next) = self.pool.pop() else {
                        unreachable!("the pool holds two batches' buffers");
                    };
                    next[keep_from..tail_offset as usize]
                        .copy_from_slice(&buffer[keep_from..tail_offset as usize]);
                    head = Some(next);
                }
            }
            writes.push(BlockWrite {
                offset: block_start + lo,
                buffer,
                start: lo as u32,
                end: hi as u32,
            });
        }
        let chain = WriteChain {
            file: self.file,
            writes,
            sync: !self.file.direct,
        };
        // A segment's last sequence number counts from the moment its records are sealed into
        // a chain, not when the chain completes: a checkpoint must never retire a segment
        // whose last write is still in flight.
        if let Some(segment) = self.segments.back_mut() {
            segment.last_sequence = batch.last_sequence;
        }
        self.in_flight = Some(InFlight {
            segment: self.segments.back().map_or(0, |segment| segment.number),
            file: self.file,
            end: batch.end,
            last_sequence: batch.last_sequence,
            retries: 0,
            resubmit: None,
        });
        batch.start = batch.end;
        batch.first_block = tail_block;
        batch.appends = 0;
        batch.blocks.extend(head);
        self.submit(chain);
    }

    fn submit(&mut self, chain: WriteChain) {
        self.stats.chains += 1;
        self.stats.writes += chain.writes.len() as u64;
        self.stats.bytes_written += chain.writes.iter().map(|w| w.len() as u64).sum::<u64>();
        if let Err((chain, error)) = self.env.submit(chain) {
            let offset = chain.writes.first().map_or(0, |write| write.offset);
            if error.raw_os_error() == Some(libc::EBUSY) {
                // The ring is full of other work: try again at the next poll.
                if let Some(in_flight) = &mut self.in_flight {
                    in_flight.resubmit = Some(chain);
                    return;
                }
            }
            self.recycle(chain);
            // It never reached the device: nothing of it is in flight.
            self.in_flight = None;
            self.fail_io("submitting a write", offset, &error);
        }
    }

    /// Handles a finished chain: acknowledges its appends, retries a short write, or fails.
    fn complete(&mut self, finished: FinishedChain) {
        let FinishedChain { mut chain, results } = finished;
        let Some(mut in_flight) = self.in_flight.take() else {
            debug_assert!(false, "a chain finished with none in flight");
            self.recycle(chain);
            return;
        };
        let writes = chain.writes.len();
        for (index, &result) in results.iter().enumerate().take(writes) {
            let wanted = chain.writes[index].len() as i32;
            if result == wanted {
                continue;
            }
            let offset = chain.writes[index].offset;
            if result < 0 {
                let error = std::io::Error::from_raw_os_error(-result);
                self.fail_io("write", offset, &error);
                self.retire(chain, in_flight.file);
                return;
            }
            if self.failure.is_some() {
                // Read-only already: the rest is not written (a resume cuts it off).
                self.retire(chain, in_flight.file);
                return;
            }
            // Short: the rest of the chain was cancelled. Write the remainder again, from the
            // aligned unit where this write stopped.
            self.stats.short_writes += 1;
            in_flight.retries += 1;
            if in_flight.retries > SHORT_WRITE_RETRIES_MAX {
                self.fail(
                    "write",
                    offset,
                    &format!("{SHORT_WRITE_RETRIES_MAX} short writes in a row"),
                );
                self.retire(chain, in_flight.file);
                return;
            }
            let mut rest: Vec<BlockWrite> = chain.writes.drain(index..).collect();
            self.pool
                .extend(chain.writes.drain(..).map(|write| write.buffer));
            let advance = align_down(result as u64, chain.file.alignment);
            rest[0].start += advance as u32;
            rest[0].offset += advance;
            chain.writes = rest;
            in_flight.resubmit = Some(chain);
            self.in_flight = Some(in_flight);
            self.start_write();
            return;
        }
        if chain.sync {
            let result = results.get(writes).copied().unwrap_or(-libc::EIO);
            if result < 0 {
                let error = std::io::Error::from_raw_os_error(-result);
                let offset = in_flight.end;
                self.fail_io("fdatasync", offset, &error);
                self.retire(chain, in_flight.file);
                return;
            }
        }
        self.durable_sequence = in_flight.last_sequence;
        self.written_sequence = in_flight.last_sequence;
        if self.segments.back().map(|segment| segment.number) == Some(in_flight.segment) {
            self.durable_end = in_flight.end;
        }
        self.retire(chain, in_flight.file);
    }

    /// Reaps finished chains (waiting up to `wait` for one) and handles each.
    fn reap(&mut self, wait: Option<Duration>) {
        if let Err(error) = self.env.reap(wait, &mut self.finished) {
            self.fail_io("reap", self.batch.start, &error);
        }
        let mut finished = std::mem::take(&mut self.finished);
        for chain in finished.drain(..) {
            self.complete(chain);
        }
        self.finished = finished;
    }

    /// Done with a chain on `file`: its buffers go back to the pool, and `file` is closed
    /// if it is the previous segment's, which waited for its last chain.
    fn retire(&mut self, chain: WriteChain, file: LogFile) {
        self.recycle(chain);
        if self.closing == Some(file) {
            self.closing = None;
            self.env.close_log(file);
        }
    }

    fn recycle(&mut self, chain: WriteChain) {
        self.pool
            .extend(chain.writes.into_iter().map(|write| write.buffer));
    }

    /// Makes the WAL read-only after a failed operation. A chain in flight stays tracked:
    /// it is reaped as it completes (its appends become durable if it succeeded), so that
    /// nothing is left in the kernel when [`Wal::resume`] cuts the segment back.
    fn fail(&mut self, operation: &'static str, offset: u64, cause: &str) {
        self.fail_as(operation, offset, cause, false);
    }

    /// [`Wal::fail`] for an I/O error: resumable when it says the disk was full.
    fn fail_io(&mut self, operation: &'static str, offset: u64, error: &std::io::Error) {
        self.fail_as(operation, offset, &error.to_string(), disk_full(error));
    }

    /// [`Wal::fail`] for a MANIFEST error: resumable when the disk was full (the MANIFEST's
    /// tail may be torn; a resume replaces the MANIFEST).
    fn fail_manifest(&mut self, error: &StorageError) {
        let full = io_source(error).is_some_and(disk_full);
        self.fail_as("MANIFEST append", 0, &error.to_string(), full);
    }

    fn fail_as(&mut self, operation: &'static str, offset: u64, cause: &str, resumable: bool) {
        if self.failure.is_some() {
            return;
        }
        let segment = self.segments.back().map_or(0, |segment| segment.number);
        let path = self.dir.join(segment_name(segment));
        tracing::error!(
            operation,
            path = %path.display(),
            offset,
            cause,
            durable_sequence = self.durable_sequence,
            failed_appends = self.sequence_next - 1 - self.durable_sequence,
            "WAL write failed; the WAL is read-only {}",
            if resumable {
                "until the disk has room again"
            } else {
                "until restart"
            }
        );
        self.failure = Some(Failure {
            operation,
            path,
            offset,
            cause: cause.to_owned(),
            resumable,
        });
    }

    /// Salvage: writes the records that survived into the new segment with their own
    /// sequence numbers, then moves the replay point to it and deletes the damaged segments.
    fn rewrite_salvaged(
        &mut self,
        records: &[(u8, u64, Vec<u8>)],
        segment: u64,
    ) -> Result<(), StorageError> {
        let last = self.sequence_next - 1;
        if let Some((_, first, _)) = records.first() {
            // Nothing re-written is durable until the flush below says so: the old segments
            // are deleted only after it.
            self.sequence_next = *first;
            self.durable_sequence = first - 1;
        }
        for (kind, sequence, payload) in records {
            loop {
                match self.append_sequenced(*kind, *sequence, payload) {
                    Ok(()) => break,
                    Err(StorageError::Throttled(_)) => {
                        self.poll(Some(FLUSH_WAIT))?;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        self.flush()?;
        self.sequence_next = self.sequence_next.max(last + 1);
        self.durable_sequence = self.sequence_next - 1;
        let checkpoint = self.manifest.state().wal_checkpoint_sequence;
        self.move_replay_point(segment, checkpoint, Edit::default())
    }
}

/// A torn-tail candidate: damage with nothing valid after it so far.
#[derive(Debug)]
struct TailCandidate {
    path: PathBuf,
    damage: Damage,
    valid_end: u64,
    length: u64,
}

/// The state of BOOT_REPLAY across segments.
#[derive(Debug)]
struct Replay<'o> {
    options: &'o WalOptions,
    checkpoint: u64,
    last_sequence: u64,
    /// Damage with nothing valid after it so far (one per segment at most).
    tails: Vec<TailCandidate>,
    /// Records kept for re-writing (salvage mode only).
    salvaged: Vec<(u8, u64, Vec<u8>)>,
    segments: VecDeque<Segment>,
}

impl Wal<crate::PosixEnv> {
    /// Makes every append so far durable, then sends the log's writes through `ring`, the
    /// ring the caller's other I/O uses (see [`PosixEnv::share_ring`](crate::PosixEnv)).
    pub fn share_ring(
        &mut self,
        ring: std::rc::Weak<dyn crate::SharedLogRing>,
    ) -> Result<(), StorageError> {
        self.flush()?;
        self.env
            .share_ring(ring)
            .map_err(io_error("share the log's ring", &self.dir))
    }
}

impl Replay<'_> {
    fn segment(
        &mut self,
        number: u64,
        path: &Path,
        bytes: &[u8],
        report: &mut ReplayReport,
        on_record: &mut impl FnMut(ReplayedRecord<'_>),
    ) -> Result<(), StorageError> {
        // No record limit on reading: the segment in memory bounds it, and a record written
        // under a larger `record_bytes_max` must not turn into damage after a config change.
        let mut reader = LogReader::new(bytes, usize::MAX);
        reader.set_last_sequence(self.last_sequence);
        let mut segment_last = 0;
        loop {
            match reader.next_record() {
                Step::Record(record) => {
                    // Valid records after earlier damage: it was not the tail after all.
                    for tail in std::mem::take(&mut self.tails) {
                        if !self.options.salvage {
                            return Err(StorageError::Corrupt {
                                path: tail.path,
                                offset: tail.damage.offset,
                                defect: tail.damage.defect,
                            });
                        }
                        report.skipped.push(Skipped {
                            path: tail.path,
                            offset: tail.damage.offset,
                            defect: tail.damage.defect,
                            resumed_at: 0,
                        });
                    }
                    self.last_sequence = record.sequence;
                    segment_last = record.sequence;
                    if record.sequence > self.checkpoint {
                        report.records += 1;
                        on_record(ReplayedRecord {
                            kind: record.kind,
                            sequence: record.sequence,
                            payload: record.payload,
                        });
                        if self.options.salvage {
                            self.salvaged.push((
                                record.kind,
                                record.sequence,
                                record.payload.to_vec(),
                            ));
                        }
                    }
                }
                Step::End => break,
                Step::Damaged(damage) => match damage.resume {
                    None => {
                        self.tails.push(TailCandidate {
                            path: path.to_owned(),
                            damage,
                            valid_end: reader.valid_end(),
                            length: bytes.len() as u64,
                        });
                        break;
                    }
                    Some(resume) => {
                        if !self.options.salvage {
                            return Err(StorageError::Corrupt {
                                path: path.to_owned(),
                                offset: damage.offset,
                                defect: damage.defect,
                            });
                        }
                        tracing::warn!(
                            path = %path.display(),
                            offset = damage.offset,
                            defect = %damage.defect,
                            resume,
                            "salvage: skipping damaged WAL bytes"
                        );
                        report.skipped.push(Skipped {
                            path: path.to_owned(),
                            offset: damage.offset,
                            defect: damage.defect,
                            resumed_at: resume,
                        });
                        reader.resume_at(resume);
                    }
                },
            }
        }
        self.segments.push_back(Segment {
            number,
            last_sequence: segment_last,
            bytes: bytes.len() as u64,
        });
        Ok(())
    }
}

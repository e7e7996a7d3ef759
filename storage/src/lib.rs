//! The storage engine: an LSM tree of vector segments.
//!
//! Owns the write-ahead log (Direct I/O appends through the LEU's io_uring from `vortex-io`),
//! the MANIFEST and crash recovery, and (issue #6) the memtable, 4 KiB-block SSTables with
//! CRC32C, compaction with the side-car index hook, and the scrubber. The on-disk formats are
//! written down in docs/STORAGE.md.
//!
//! - [`record`]: the block-framed log record format shared by WAL segments and the MANIFEST.
//! - [`wal`]: group commit, rotation, checkpoints, BOOT_REPLAY.
//! - [`manifest`]: versioned edits and the atomic CURRENT switch.
//! - [`memtable`]: one LEU's fresh writes in key order, newest version per key, bounded.
//! - [`background`]: the bounded pool for flushes and compactions, and the byte-rate limiter.
//! - [`bloom`]: bloom filters for SSTable point lookups; [`sstable`]: the 4 KiB data blocks.
//! - [`lock`]: one process per directory (`flock` on `LOCK`, the holder's PID inside).
//! - [`lost_pages`]: a SIGBUS under a mapped file (an I/O error) fences the file instead of
//!   killing the process.
//! - [`env`]: what storage asks of the file system; [`posix`] runs it on real files and the
//!   LEU's io_uring, [`fault`] in memory with injected faults.

pub mod background;
pub mod bloom;
pub mod env;
pub mod error;
pub mod fault;
pub mod lock;
pub mod lost_pages;
pub mod manifest;
pub mod memtable;
pub mod merge;
pub mod posix;
pub mod record;
pub mod sstable;
pub mod store;
pub mod wal;

pub use env::{Env, Files, Mapped, NewFile};
pub use error::StorageError;
pub use fault::{Fault, FaultEnv, Target};
pub use lock::{DirLock, LockError};
pub use manifest::{Edit, Manifest, ManifestState};
pub use memtable::{Key, Lookup, MemTable, MemTableFull, Point};
pub use posix::{DirectIo, LogChain, LogOp, PosixEnv, PosixFiles, SharedLogRing};
pub use store::{
    CompactionHook, Located, Snapshot, Store, StoreHooks, StoreOptions, StoreStats, TableRepair,
    WriteSize,
};
pub use wal::{ReplayReport, ReplayedRecord, Wal, WalOptions, WalStats};

//! The crate's error type.

use crate::record::Defect;
use std::io;
use std::path::PathBuf;

/// What can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file system operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Damage in the middle of the log: valid records follow it, so it is not a torn tail.
    #[error(
        "{path} is corrupt at offset {offset}: {defect}, with valid records after it; recovery \
         stopped rather than skip acknowledged writes. Salvage mode (WalOptions::salvage) \
         skips the damage and loses what it held"
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Offset of the damaged record.
        offset: u64,
        /// What is wrong.
        defect: Defect,
    },
    /// A MANIFEST or CURRENT that cannot be understood.
    #[error("{path}: {detail}")]
    BadManifest {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        detail: String,
    },
    /// The files of the log do not fit together.
    #[error("inconsistent WAL directory {dir}: {detail}")]
    Inconsistent {
        /// The directory.
        dir: PathBuf,
        /// What does not fit.
        detail: String,
    },
    /// An earlier write or sync failed: the WAL refuses appends until it is reopened (or,
    /// after a full disk, until the disk has room again: `Wal::resume`).
    #[error(
        "the WAL is read-only since {operation} failed at {path} offset {offset}: {cause}; \
         appends not yet durable were failed (they may or may not be there). A full disk \
         needs no restart: writes are taken again once it has room. Otherwise fix the cause \
         and restart: recovery decides what is on disk"
    )]
    ReadOnly {
        /// The failed operation.
        operation: &'static str,
        /// The segment.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// The error.
        cause: String,
    },
    /// The disk takes no writes (full, over quota, read-only): the WAL could not start a
    /// segment, or the flush that would make room in the memtable could not write its
    /// table. No write is taken until it can, which the store tries every second; reads
    /// are served.
    #[error(
        "the disk takes no writes ({path}: {cause}): writes are refused until it does (the \
         store tries again every second); reads are served"
    )]
    NoSpace {
        /// The file that could not be created or written.
        path: PathBuf,
        /// The error.
        cause: String,
    },
    /// The open batch or the memtable is full: retry after the write or flush in flight
    /// completes.
    #[error("busy: {0} (THROTTLED; retry shortly)")]
    Throttled(&'static str),
    /// A record larger than the WAL accepts.
    #[error("a WAL record of {bytes} bytes exceeds the limit of {max_bytes} bytes")]
    RecordTooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A damaged SSTable: a checksum or layout check failed. The table is quarantined.
    #[error(
        "SSTable {path} is corrupt: {section} at offset {offset}: {detail}; the table is \
         quarantined and reads that need it fail until it is repaired or restored"
    )]
    TableCorrupt {
        /// The table.
        path: PathBuf,
        /// The part found damaged.
        section: crate::sstable::table::Section,
        /// Where.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// A read needed a table quarantined earlier for corruption.
    #[error("SSTable {path} is quarantined ({reason}); reads that need it fail")]
    Quarantined {
        /// The table.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A request the store cannot take (a bad argument, a limit).
    #[error("{0}")]
    Invalid(String),
    /// The store was closed, or a background worker is gone.
    #[error("the store is shutting down: {0}")]
    Closed(&'static str),
    /// A record kind of 0, which the format reserves.
    #[error("record kind 0 is reserved")]
    ReservedKind,
}

/// Shorthand for an I/O error with its context.
pub(crate) fn io_error(
    operation: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io {
        operation,
        path,
        source,
    }
}

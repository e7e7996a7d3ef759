//! The file layer under the WAL and the MANIFEST: what storage asks of the file system.
//!
//! Two implementations: [`PosixEnv`](crate::posix::PosixEnv), real files with the log's writes
//! going through the LEU's io_uring, and [`FaultEnv`](crate::fault::FaultEnv), an in-memory
//! file system that can lose unsynced data, tear writes, flip bits and fail operations, so
//! that every branch that handles a failed syscall or a damaged file is exercised by a test
//! that forces it.
//!
//! The log's write path is asynchronous: the WAL hands over a [`WriteChain`] (the block
//! writes of one group commit, in order, and for a buffered file a trailing `fdatasync`) and
//! gets it back, with one result per operation, from [`Env::reap`]. Everything else (the
//! MANIFEST, CURRENT, directory listings, truncation at recovery) is synchronous: it happens
//! at boot, at rotation and at checkpoints, never per append.

use aligned_vec::{AVec, ConstAlign};
use std::io;
use std::path::Path;
use std::time::Duration;

/// Memory alignment of log buffers: enough for any Direct I/O device in use.
pub const BUFFER_ALIGN_BYTES: usize = 4096;

/// A log block's buffer, aligned for Direct I/O.
pub type BlockBuffer = AVec<u8, ConstAlign<BUFFER_ALIGN_BYTES>>;

/// A log file opened for the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFile {
    /// The environment's handle.
    pub id: u32,
    /// Offsets and lengths of writes must be multiples of this (1 for buffered files).
    pub alignment: u32,
    /// Whether writes are durable when they complete (`O_DIRECT | O_DSYNC`); otherwise the
    /// chain ends with an `fdatasync`.
    pub direct: bool,
}

/// One write of a chain: `buffer[start..end]` at file offset `offset`.
#[derive(Debug)]
pub struct BlockWrite {
    /// File offset of `buffer[start]`.
    pub offset: u64,
    /// The block's buffer; the environment holds it while the write is in flight.
    pub buffer: BlockBuffer,
    /// First byte of the buffer to write.
    pub start: u32,
    /// One past the last byte to write.
    pub end: u32,
}

impl BlockWrite {
    /// Bytes this write covers.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether it covers nothing.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The writes of one group commit, performed in order: each starts only after the one before
/// it completed in full (`IOSQE_IO_LINK`).
#[derive(Debug)]
pub struct WriteChain {
    /// The file written.
    pub file: LogFile,
    /// The writes, in file order.
    pub writes: Vec<BlockWrite>,
    /// Whether an `fdatasync` follows the writes (buffered files).
    pub sync: bool,
}

/// A chain given back by [`Env::reap`].
#[derive(Debug)]
pub struct FinishedChain {
    /// The chain, buffers included.
    pub chain: WriteChain,
    /// One raw result per write, then one for the sync if the chain had one: a byte count or
    /// `-errno` (`-ECANCELED` for the operations after one that failed or fell short).
    pub results: Vec<i32>,
}

/// What storage asks of the file system.
pub trait Env {
    /// Creates `dir` and its parents.
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()>;
    /// The names of the entries in `dir`.
    fn list(&mut self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` exists.
    fn exists(&mut self, path: &Path) -> io::Result<bool>;
    /// The whole content of `path`.
    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates or truncates `path`, writes `bytes` and `fdatasync`s it.
    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Appends `bytes` to `path` (created if missing) and `fdatasync`s it.
    fn append_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Truncates `path` to `length` bytes and `fdatasync`s it.
    fn truncate_synced(&mut self, path: &Path, length: u64) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file `path`.
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    /// `fsync`s the directory `dir`, making its entries durable.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;

    /// Creates the log file `path` (it must not exist) for the write path.
    fn open_log(&mut self, path: &Path) -> io::Result<LogFile>;
    /// Closes a log file with no chain in flight.
    fn close_log(&mut self, file: LogFile);
    /// Starts a chain; on refusal the chain comes back with why.
    fn submit(&mut self, chain: WriteChain) -> Result<(), (WriteChain, io::Error)>;
    /// Moves finished chains to `finished`, waiting up to `wait` for at least one when some
    /// are in flight (`None`: do not wait).
    fn reap(&mut self, wait: Option<Duration>, finished: &mut Vec<FinishedChain>)
        -> io::Result<()>;
}

/// A zeroed block buffer.
pub fn block_buffer(bytes: usize) -> BlockBuffer {
    AVec::from_iter(BUFFER_ALIGN_BYTES, std::iter::repeat_n(0u8, bytes))
}

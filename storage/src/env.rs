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
//! gets it back, with one result per operation, from [`Env::reap`]. Everything else goes
//! through [`Files`], which the environment hands out ([`Env::files`]) and which is shared
//! with the background threads: the MANIFEST, CURRENT, directory listings and truncation at
//! recovery (synchronous, at boot, rotation and checkpoints, never per append), and the
//! SSTables, written front to back by flushes and compactions ([`NewFile`]) and read in
//! place ([`Mapped`]).

use aligned_vec::{AVec, ConstAlign};
use std::io;
use std::path::Path;
use std::sync::Arc;
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

/// The file system under everything but the log's write path: shared by the LEU and its
/// background threads (flushes, compactions, the scrubber, table deletion).
pub trait Files: Send + Sync + std::fmt::Debug {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the entries in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// The whole content of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates or truncates `path`, writes `bytes` and `fdatasync`s it.
    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Appends `bytes` to `path` (created if missing) and `fdatasync`s it.
    fn append_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Truncates `path` to `length` bytes and `fdatasync`s it.
    fn truncate_synced(&self, path: &Path, length: u64) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// `fsync`s the directory `dir`, making its entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates `path` (it must not exist) to be written once, front to back.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn NewFile>>;
    /// The whole content of `path`, to be read in place (mapped, on a real file system).
    fn map(&self, path: &Path) -> io::Result<Mapped>;
}

/// A file being written front to back ([`Files::create_new`]). Writes may fall short, as
/// `write(2)` may: `write_all` (or a `BufWriter`) continues them.
pub trait NewFile: io::Write + Send + std::fmt::Debug {
    /// `fsync`s the file. After a failure nothing written is known to be durable, and
    /// nothing may be: the file is abandoned, never synced again and trusted (a retried
    /// `fsync` can succeed without writing what the failed one lost).
    fn sync(&mut self) -> io::Result<()>;
}

/// A whole file's bytes for reading in place: the file's mapping on a real file system, a
/// copy in [`FaultEnv`](crate::FaultEnv).
pub struct Mapped(MappedBytes);

enum MappedBytes {
    /// The mapping's SIGBUS guard (dropped first, before the mapping goes), the mapping, and
    /// the file for `pread`s that leave the mapping untouched.
    File(
        Option<crate::lost_pages::Registration>,
        memmap2::Mmap,
        std::fs::File,
    ),
    Memory(Arc<BlockBuffer>),
}

impl Mapped {
    /// A mapping of `file`, which nothing may change while it lives; the file is kept for
    /// `pread`s.
    ///
    /// # Safety
    /// The caller guarantees that no one writes to or truncates the file while the mapping
    /// lives (a truncated mapping raises SIGBUS on access).
    pub unsafe fn of_file(file: std::fs::File) -> io::Result<Self> {
        if file.metadata()?.len() == 0 {
            return Ok(Mapped::copy(&[]));
        }
        // SAFETY: the caller's promise above.
        let map = unsafe { memmap2::Mmap::map(&file) }?;
        let guard = crate::lost_pages::register(map.as_ptr(), map.len());
        Ok(Mapped(MappedBytes::File(guard, map, file)))
    }

    /// Bytes in memory (aligned as log buffers are, so that vectors in them are aligned as
    /// in a page-aligned mapping).
    pub fn copy(bytes: &[u8]) -> Self {
        Mapped(MappedBytes::Memory(Arc::new(AVec::from_slice(
            BUFFER_ALIGN_BYTES,
            bytes,
        ))))
    }

    /// Reads `out.len()` bytes at `offset`: by `pread` from a mapped file (the mapping's
    /// pages are not touched, so they do not enter the resident set), by copying from memory.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> io::Result<()> {
        match &self.0 {
            MappedBytes::File(_, _, file) => {
                use std::os::unix::fs::FileExt;
                file.read_exact_at(out, offset as u64)
            }
            MappedBytes::Memory(bytes) => {
                let end = offset.checked_add(out.len());
                let bytes = end.and_then(|end| bytes.get(offset..end)).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "a read past the end")
                })?;
                out.copy_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// The offset of the first page of the file the kernel could not read through the
    /// mapping (an I/O error, or the file cut short under it): that read saw zeros instead
    /// (see `lost_pages.rs`), and the file is to be fenced. `None` for bytes in memory.
    pub fn lost_page(&self) -> Option<usize> {
        match &self.0 {
            MappedBytes::File(guard, ..) => guard.as_ref().and_then(|g| g.lost_page()),
            MappedBytes::Memory(_) => None,
        }
    }

    /// Whether the bytes are a read-only mapping of a file (whose pages may be dropped and
    /// read again), not memory.
    pub fn is_file_mapping(&self) -> bool {
        matches!(self.0, MappedBytes::File(..))
    }

    /// Unlocks the pages and drops this process's page-table entries for them (later reads
    /// fault back in what they touch); nothing for bytes in memory.
    pub fn release_pages(&self) {
        if let MappedBytes::File(_, map, _) = &self.0 {
            let _ = map.unlock();
            // SAFETY: a read-only mapping of a file nothing writes (see `of_file`): dropping
            // the page-table entries loses nothing, and every later read sees the same bytes.
            let _ = unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            MappedBytes::File(_, map, _) => map,
            MappedBytes::Memory(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.0 {
            MappedBytes::File(..) => "file",
            MappedBytes::Memory(_) => "memory",
        };
        write!(f, "Mapped({kind}, {} bytes)", self.len())
    }
}

/// What storage asks of the file system: [`Files`] for everything, and the log's
/// asynchronous write path. The synchronous operations default to [`Env::files`]'.
pub trait Env {
    /// The file system, for sharing with background threads.
    fn files(&self) -> Arc<dyn Files>;

    /// Creates `dir` and its parents.
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        self.files().create_dir_all(dir)
    }
    /// The names of the entries in `dir`.
    fn list(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        self.files().list(dir)
    }
    /// Whether `path` exists.
    fn exists(&mut self, path: &Path) -> io::Result<bool> {
        self.files().exists(path)
    }
    /// The whole content of `path`.
    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        self.files().read(path)
    }
    /// Creates or truncates `path`, writes `bytes` and `fdatasync`s it.
    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.files().write_synced(path, bytes)
    }
    /// Appends `bytes` to `path` (created if missing) and `fdatasync`s it.
    fn append_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.files().append_synced(path, bytes)
    }
    /// Truncates `path` to `length` bytes and `fdatasync`s it.
    fn truncate_synced(&mut self, path: &Path, length: u64) -> io::Result<()> {
        self.files().truncate_synced(path, length)
    }
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.files().rename(from, to)
    }
    /// Removes the file `path`.
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.files().remove(path)
    }
    /// `fsync`s the directory `dir`, making its entries durable.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.files().sync_dir(dir)
    }

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

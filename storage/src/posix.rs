//! `PosixEnv`: real files, with the log's writes submitted to an io_uring [`RingDriver`].
//!
//! Log files are opened `O_DIRECT | O_DSYNC`: a write's completion means its bytes are on
//! stable storage, with no separate `fdatasync`, and the page cache is bypassed. The buffer
//! and offset alignment comes from discovery (`statx(STATX_DIOALIGN)`, or the device's
//! logical sector size). A file system that refuses `O_DIRECT` (tmpfs) gets buffered writes
//! with an `fdatasync` linked at the end of every chain, and one logged warning.
//!
//! A chain's writes are linked with `IOSQE_IO_LINK`: a write starts only after the previous
//! one completed in full, so the log never has a hole before bytes that reached the disk.
//! When one falls short or fails, the kernel completes the rest with `-ECANCELED`; the WAL
//! sees every result and decides (see `wal.rs`).
//!
//! **Whose ring.** A new environment has a ring of its own. The dataplane hands it its LEU's
//! ring instead ([`PosixEnv::share_ring`], through [`SharedLogRing`]): the log's writes are
//! then queued on the ring the LEU's network I/O uses, one `io_uring_enter` submits both, and
//! a write's completion wakes the loop that waits on that ring, so an acknowledgement is not
//! found by polling a second ring. The environment holds the shared ring weakly: its owner
//! drops it (after making every write durable) and the environment goes back to a ring of
//! its own; a chain that was still in flight then fails with `-ECANCELED` (the WAL turns
//! read-only, as for any failed write), and nothing is left for the kernel to write from.

use crate::env::{
    block_buffer, BlockBuffer, Env, Files, FinishedChain, LogFile, Mapped, NewFile, WriteChain,
};
use crate::record::BLOCK_BYTES;
use io_uring::{opcode, squeue, types};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;
use vortex_config::{BlockDevice, DirectIoAlignment};
use vortex_io::{Owner, PushError, RingConfig, RingDriver};

/// Log files open at once at most (the current segment and one being retired).
const LOG_FILES_MAX: usize = 8;
/// Chains in flight at once at most.
const CHAINS_INFLIGHT_MAX: usize = 4;

/// Whether log files use Direct I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectIo {
    /// `O_DIRECT | O_DSYNC` where the file system allows it, buffered + `fdatasync` where not.
    Auto,
    /// Always buffered writes + `fdatasync`.
    Off,
}

/// The most bytes one `writev` of a chain carries. Contiguous block writes are gathered into
/// one `writev` up to this size: on an `O_DSYNC` file every write ends with a device flush,
/// so a batch of 32 blocks written one by one would cost 32 flushes.
const WRITEV_BYTES_MAX: usize = 1 << 20;

/// The owner of one log operation on a ring: which chain, which of its writes (`first` and
/// `count`; the sync has `count` 0), the buffers the kernel reads from, and the iovecs
/// pointing into them. All are held here until the completion, so none can be freed under
/// the kernel. Opaque: a [`SharedLogRing`] keeps it among its own operations' owners and
/// hands it back with its result.
pub struct LogOp {
    chain: usize,
    first: usize,
    count: usize,
    buffers: Vec<BlockBuffer>,
    iovecs: Vec<libc::iovec>,
}

impl LogOp {
    /// The bytes this operation writes (0 for the sync): what a complete write returns.
    pub fn bytes(&self) -> usize {
        self.iovecs.iter().map(|iovec| iovec.iov_len).sum()
    }
}

impl fmt::Debug for LogOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogOp")
            .field("chain", &self.chain)
            .field("first", &self.first)
            .field("count", &self.count)
            .field("iovecs", &self.iovecs.len())
            .finish_non_exhaustive()
    }
}

/// A linked chain of log operations, as a ring takes it.
pub type LogChain = Vec<(squeue::Entry, LogOp)>;

/// A ring the log shares with the other I/O of its thread (the dataplane's LEU ring). The
/// implementer owns the ring: it keeps each [`LogOp`] with its operation, and when the
/// operation completes it keeps the op and its raw result for
/// [`take_log_completions`](Self::take_log_completions). Every method is called on the
/// ring's own thread, and none while another of them runs.
pub trait SharedLogRing {
    /// Queues `ops` as one linked chain, as [`RingDriver::push_chain`] does; they are
    /// submitted by the owner's next submit, or by [`wait`](Self::wait).
    ///
    /// # Safety
    ///
    /// As [`RingDriver::push_chain`]: the memory each entry refers to is owned by its op and
    /// stays valid until the op is handed back.
    unsafe fn push_log_chain(&self, ops: LogChain) -> Result<(), PushError<LogChain>>;

    /// Submits what is queued and waits up to `timeout` for at least one completion, then
    /// takes what completed: the log's ops are kept for `take_log_completions`, the other
    /// operations' completions for the owner's own next pass. Only the log's blocking calls
    /// (a sync at shutdown, a salvage at open) wait here; a serving loop waits itself.
    fn wait(&self, timeout: Duration) -> io::Result<()>;

    /// Moves the log ops that completed, with their raw results, into `done`.
    fn take_log_completions(&self, done: &mut Vec<(LogOp, i32)>);
}

/// A chain whose writes are in flight.
#[derive(Debug)]
struct PendingChain {
    chain: WriteChain,
    results: Vec<Option<i32>>,
    outstanding: usize,
}

/// The ring the log's writes go through.
enum LogRing {
    /// The environment's own (boxed: it is large, and gone once the dataplane shares its
    /// ring).
    Own(Box<RingDriver<LogOp>>),
    /// Another owner's, while it lives.
    Shared(Weak<dyn SharedLogRing>),
}

impl fmt::Debug for LogRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogRing::Own(ring) => f.debug_tuple("Own").field(ring).finish(),
            LogRing::Shared(ring) => f
                .debug_tuple("Shared")
                .field(&(ring.strong_count() > 0))
                .finish(),
        }
    }
}

/// Real files under an io_uring.
#[derive(Debug)]
pub struct PosixEnv {
    ring: LogRing,
    /// What a ring of the environment's own is built with (at `new`, and again when a
    /// shared ring goes away).
    ring_config: RingConfig,
    direct: DirectIo,
    files: Vec<Option<File>>,
    pending: Vec<Option<PendingChain>>,
    /// The Direct I/O alignment of the log directory, probed at the first `open_log`.
    alignment: Option<DirectIoAlignment>,
    fallback_warned: bool,
    /// Completions taken off the ring by one `reap`, kept to reuse its allocation.
    completed: Vec<(LogOp, i32)>,
    /// Chains failed because the shared ring they were in flight on went away, for the next
    /// `reap`.
    lost: Vec<FinishedChain>,
}

impl PosixEnv {
    /// An environment whose log writes go through a new ring created on this thread.
    pub fn new(ring: &RingConfig, direct: DirectIo) -> io::Result<Self> {
        let own = RingDriver::new(ring).map_err(io::Error::other)?;
        Ok(PosixEnv {
            ring: LogRing::Own(Box::new(own)),
            ring_config: ring.clone(),
            direct,
            files: (0..LOG_FILES_MAX).map(|_| None).collect(),
            pending: (0..CHAINS_INFLIGHT_MAX).map(|_| None).collect(),
            alignment: None,
            fallback_warned: false,
            completed: Vec::with_capacity(CHAINS_INFLIGHT_MAX * 8),
            lost: Vec::new(),
        })
    }

    /// The setup of the environment's own ring, for reports; `None` while it shares one.
    pub fn ring_setup(&self) -> Option<&vortex_io::RingSetup> {
        match &self.ring {
            LogRing::Own(ring) => Some(ring.setup()),
            LogRing::Shared(_) => None,
        }
    }

    /// Sends the log's writes through `ring` from now on, and drops the environment's own
    /// ring. Refused (`EBUSY`) while a chain is in flight: make every append durable first
    /// ([`Wal::share_ring`](crate::Wal::share_ring) does).
    pub fn share_ring(&mut self, ring: Weak<dyn SharedLogRing>) -> io::Result<()> {
        if self.chains_in_flight() > 0 {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        self.ring = LogRing::Shared(ring);
        Ok(())
    }

    /// Whether the log's writes go through a ring shared with other work.
    pub fn shares_ring(&self) -> bool {
        matches!(self.ring, LogRing::Shared(_))
    }

    fn chains_in_flight(&self) -> usize {
        self.pending.iter().flatten().count()
    }

    /// The shared ring if it still lives. When it has gone, the chains that were in flight
    /// on it are failed (`-ECANCELED`, delivered by the next `reap`) and the environment
    /// builds a ring of its own again.
    fn shared_ring(&mut self) -> io::Result<Option<Rc<dyn SharedLogRing>>> {
        let LogRing::Shared(weak) = &self.ring else {
            return Ok(None);
        };
        if let Some(ring) = weak.upgrade() {
            return Ok(Some(ring));
        }
        for slot in &mut self.pending {
            let Some(pending) = slot.take() else {
                continue;
            };
            let PendingChain {
                mut chain, results, ..
            } = pending;
            // The ring dropped the ops with their buffers (after the kernel finished with
            // them): the WAL gets block buffers back (every one of its buffers is a block).
            for write in &mut chain.writes {
                if write.buffer.is_empty() {
                    write.buffer = block_buffer(BLOCK_BYTES);
                }
            }
            let results = results
                .into_iter()
                .map(|result| result.unwrap_or(-libc::ECANCELED))
                .collect();
            tracing::error!("the ring shared with the log went away with a write in flight");
            self.lost.push(FinishedChain { chain, results });
        }
        let own = RingDriver::new(&self.ring_config).map_err(io::Error::other)?;
        self.ring = LogRing::Own(Box::new(own));
        Ok(None)
    }

    fn direct_alignment(&mut self, dir: &Path) -> io::Result<Option<u32>> {
        if self.direct == DirectIo::Off {
            return Ok(None);
        }
        let alignment = match self.alignment {
            Some(alignment) => alignment,
            None => {
                let device = BlockDevice::for_path(dir).ok().flatten();
                let alignment = DirectIoAlignment::probe(dir, device.as_ref())
                    .map_err(|error| io::Error::other(error.to_string()))?;
                self.alignment = Some(alignment);
                alignment
            }
        };
        let bytes = alignment.offset_bytes.max(alignment.memory_bytes);
        let usable = alignment.supported()
            && bytes.is_power_of_two()
            && bytes as usize <= crate::env::BUFFER_ALIGN_BYTES;
        if usable {
            return Ok(Some(bytes));
        }
        if !self.fallback_warned {
            self.fallback_warned = true;
            tracing::warn!(
                dir = %dir.display(),
                source = ?alignment.source,
                alignment_bytes = bytes,
                "Direct I/O is unavailable for the WAL here; using buffered writes + fdatasync"
            );
        }
        Ok(None)
    }

    fn file(&self, log: LogFile) -> io::Result<&File> {
        self.files
            .get(log.id as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "log file is not open"))
    }

    fn finish_op(&mut self, op: LogOp, result: i32, finished: &mut Vec<FinishedChain>) {
        let Some(Some(pending)) = self.pending.get_mut(op.chain) else {
            debug_assert!(false, "completion for an unknown chain");
            return;
        };
        if op.count == 0 {
            pending.results[op.first] = Some(result);
        }
        // A gathered write's count is spread over its block writes in order: the first one
        // not written in full is where a short write stopped.
        let mut left = result;
        for (position, buffer) in (op.first..op.first + op.count).zip(op.buffers) {
            let write = &mut pending.chain.writes[position];
            write.buffer = buffer;
            let share = if result < 0 {
                result
            } else {
                let share = left.min(write.len() as i32);
                left -= share;
                share
            };
            pending.results[position] = Some(share);
        }
        pending.outstanding -= 1;
        if pending.outstanding == 0 {
            let Some(pending) = self.pending[op.chain].take() else {
                return;
            };
            let results = pending
                .results
                .into_iter()
                .map(|r| r.unwrap_or(0))
                .collect();
            finished.push(FinishedChain {
                chain: pending.chain,
                results,
            });
        }
    }
}

/// Real files: [`Files`] with `std::fs`, tables mapped.
#[derive(Debug, Clone, Copy, Default)]
pub struct PosixFiles;

impl PosixFiles {
    /// Real files as a shareable [`Files`] (what [`PosixEnv::files`] hands out).
    pub fn shared() -> Arc<dyn Files> {
        Arc::new(PosixFiles)
    }
}

/// A table file being written ([`Files::create_new`] on real files).
#[derive(Debug)]
struct PosixNewFile(File);

impl Write for PosixNewFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl NewFile for PosixNewFile {
    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

impl Files for PosixFiles {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(bytes)?;
        file.sync_data()
    }

    fn append_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        file.write_all(bytes)?;
        file.sync_data()
    }

    fn truncate_synced(&self, path: &Path, length: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(length)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn NewFile>> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Box::new(PosixNewFile(file)))
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        let file = File::open(path)?;
        // SAFETY: storage maps only files it wrote whole and never changes again (tables),
        // and deletes one only when nothing maps it (the obsolete-on-drop rule).
        unsafe { Mapped::of_file(file) }
    }
}

impl Env for PosixEnv {
    fn files(&self) -> Arc<dyn Files> {
        PosixFiles::shared()
    }

    fn open_log(&mut self, path: &Path) -> io::Result<LogFile> {
        let Some(id) = self.files.iter().position(Option::is_none) else {
            return Err(io::Error::other("too many log files open"));
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let direct = self.direct_alignment(dir)?;
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        let (file, alignment) = match direct {
            Some(alignment) => {
                options.custom_flags(libc::O_DIRECT | libc::O_DSYNC);
                match options.open(path) {
                    Ok(file) => (file, Some(alignment)),
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                        // The probe said yes but this file says no: buffered, and say so.
                        tracing::warn!(path = %path.display(), "O_DIRECT refused; buffered WAL writes");
                        let _ = std::fs::remove_file(path);
                        (
                            OpenOptions::new().write(true).create_new(true).open(path)?,
                            None,
                        )
                    }
                    Err(error) => return Err(error),
                }
            }
            None => (options.open(path)?, None),
        };
        self.files[id] = Some(file);
        Ok(LogFile {
            id: id as u32,
            alignment: alignment.unwrap_or(1),
            direct: alignment.is_some(),
        })
    }

    fn close_log(&mut self, file: LogFile) {
        debug_assert!(
            self.pending
                .iter()
                .flatten()
                .all(|pending| pending.chain.file.id != file.id),
            "closing a log file with a chain in flight"
        );
        if let Some(slot) = self.files.get_mut(file.id as usize) {
            *slot = None;
        }
    }

    fn submit(&mut self, mut chain: WriteChain) -> Result<(), (WriteChain, io::Error)> {
        let Some(slot) = self.pending.iter().position(Option::is_none) else {
            return Err((chain, io::Error::from_raw_os_error(libc::EBUSY)));
        };
        let fd = match self.file(chain.file) {
            Ok(file) => file.as_raw_fd(),
            Err(error) => return Err((chain, error)),
        };
        let shared = match self.shared_ring() {
            Ok(shared) => shared,
            Err(error) => return Err((chain, error)),
        };
        let mut ops: LogChain = Vec::new();
        let mut position = 0;
        while position < chain.writes.len() {
            // Gather the contiguous writes that fit in one writev.
            let first = position;
            let offset = chain.writes[first].offset;
            let mut bytes = 0usize;
            while position < chain.writes.len() {
                let write = &chain.writes[position];
                debug_assert!(write.start <= write.end && write.end as usize <= write.buffer.len());
                let contiguous = write.offset == offset + bytes as u64;
                if position > first && (!contiguous || bytes + write.len() > WRITEV_BYTES_MAX) {
                    break;
                }
                bytes += write.len();
                position += 1;
            }
            let mut buffers = Vec::with_capacity(position - first);
            let mut iovecs = Vec::with_capacity(position - first);
            for write in &mut chain.writes[first..position] {
                let buffer = std::mem::replace(&mut write.buffer, BlockBuffer::new(0));
                iovecs.push(libc::iovec {
                    // SAFETY: `start..end` lies inside the buffer (asserted above).
                    iov_base: unsafe { buffer.as_ptr().add(write.start as usize) } as *mut _,
                    iov_len: write.len(),
                });
                buffers.push(buffer);
            }
            // The iovec array and the buffers' heap memory do not move when their Vecs move
            // into the op's owner, which the ring keeps until this operation's completion.
            let entry = opcode::Writev::new(types::Fd(fd), iovecs.as_ptr(), iovecs.len() as u32)
                .offset(offset)
                .build();
            ops.push((
                entry,
                LogOp {
                    chain: slot,
                    first,
                    count: position - first,
                    buffers,
                    iovecs,
                },
            ));
        }
        if chain.sync {
            let entry = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            ops.push((
                entry,
                LogOp {
                    chain: slot,
                    first: chain.writes.len(),
                    count: 0,
                    buffers: Vec::new(),
                    iovecs: Vec::new(),
                },
            ));
        }
        let results = chain.writes.len() + usize::from(chain.sync);
        let ops_count = ops.len();
        // Every write's buffer is owned by its op (see above); the file descriptor stays open
        // until the WAL closes the file, which it does only with no chain in flight.
        let pushed = match (&shared, &mut self.ring) {
            // SAFETY: as above.
            (Some(ring), _) => unsafe { ring.push_log_chain(ops) },
            // SAFETY: as above.
            (None, LogRing::Own(ring)) => unsafe { ring.push_chain(ops) },
            // `shared_ring` replaced a shared ring that went away with one of our own.
            (None, LogRing::Shared(_)) => Err(PushError::Ring(
                ops,
                io::Error::other("the log's ring went away"),
            )),
        };
        match pushed {
            Ok(()) => {
                self.pending[slot] = Some(PendingChain {
                    chain,
                    results: vec![None; results],
                    outstanding: ops_count,
                });
                Ok(())
            }
            Err(refused) => {
                let (ops, error) = match refused {
                    PushError::Busy(ops) => (ops, io::Error::from_raw_os_error(libc::EBUSY)),
                    PushError::Ring(ops, error) => (ops, error),
                };
                for (_, op) in ops {
                    for (position, buffer) in (op.first..).zip(op.buffers) {
                        chain.writes[position].buffer = buffer;
                    }
                }
                Err((chain, error))
            }
        }
    }

    fn reap(
        &mut self,
        wait: Option<Duration>,
        finished: &mut Vec<FinishedChain>,
    ) -> io::Result<()> {
        let shared = self.shared_ring()?;
        finished.append(&mut self.lost);
        let mut done = std::mem::take(&mut self.completed);
        match (shared, &mut self.ring) {
            (Some(ring), _) => {
                // The owner submits and reaps its ring in its own loop; only a blocking
                // wait drives it from here.
                if let Some(timeout) = wait.filter(|_| self.pending.iter().any(Option::is_some)) {
                    ring.wait(timeout)?;
                }
                ring.take_log_completions(&mut done);
            }
            (None, LogRing::Own(ring)) => {
                match wait {
                    Some(timeout) if ring.inflight() > 0 => {
                        ring.submit_and_wait_timeout(1, timeout)
                            .map_err(io::Error::other)?;
                    }
                    _ => {
                        ring.submit().map_err(io::Error::other)?;
                    }
                }
                ring.reap(|completion, owner| {
                    if let Owner::Finished(op) = owner {
                        done.push((op, completion.result));
                    }
                });
            }
            // `shared_ring` replaced a shared ring that went away with one of our own.
            (None, LogRing::Shared(_)) => {
                self.completed = done;
                return Err(io::Error::other("the log's ring went away"));
            }
        }
        for (op, result) in done.drain(..) {
            self.finish_op(op, result, finished);
        }
        self.completed = done;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{block_buffer, BlockWrite};

    fn write(offset: u64, length: u32) -> BlockWrite {
        BlockWrite {
            offset,
            buffer: block_buffer(8192),
            start: 0,
            end: length,
        }
    }

    fn run(env: &mut PosixEnv, chain: WriteChain) -> Vec<i32> {
        env.submit(chain).map_err(|(_, error)| error).unwrap();
        let mut finished = Vec::new();
        while finished.is_empty() {
            env.reap(Some(Duration::from_millis(100)), &mut finished)
                .unwrap();
        }
        finished.pop().unwrap().results
    }

    #[test]
    fn a_chain_completes_in_order_and_a_failed_link_cancels_the_rest() {
        let scratch = tempfile::tempdir().unwrap();
        let mut env = PosixEnv::new(&RingConfig::plain(32), DirectIo::Auto).unwrap();
        let file = env.open_log(&scratch.path().join("log")).unwrap();
        let unit = file.alignment.max(512);
        let chain = WriteChain {
            file,
            writes: vec![write(0, unit), write(u64::from(unit), unit)],
            sync: !file.direct,
        };
        let results = run(&mut env, chain);
        assert_eq!(&results[..2], &[unit as i32, unit as i32]);
        if !file.direct {
            println!("no O_DIRECT here: the misalignment case cannot be forced");
            return;
        }
        // O_DIRECT refuses a misaligned length: the link breaks there, and the kernel
        // cancels what follows. The first two writes are contiguous and go out as one writev.
        let chain = WriteChain {
            file,
            writes: vec![
                write(0, unit),
                write(u64::from(unit), unit),
                write(3 * u64::from(unit), 100),
                write(5 * u64::from(unit), unit),
            ],
            sync: false,
        };
        let results = run(&mut env, chain);
        assert_eq!(
            results,
            vec![unit as i32, unit as i32, -libc::EINVAL, -libc::ECANCELED]
        );
        env.close_log(file);
    }
}

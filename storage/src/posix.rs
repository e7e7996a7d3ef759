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

use crate::env::{BlockBuffer, Env, FinishedChain, LogFile, WriteChain};
use io_uring::{opcode, types};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
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

/// The owner of one ring operation: which chain, which of its writes (`first` and `count`;
/// the sync has `count` 0), the buffers the kernel reads from, and the iovecs pointing into
/// them. All are held here until the completion, so none can be freed under the kernel.
struct ChainOp {
    chain: usize,
    first: usize,
    count: usize,
    buffers: Vec<BlockBuffer>,
    iovecs: Vec<libc::iovec>,
}

impl fmt::Debug for ChainOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainOp")
            .field("chain", &self.chain)
            .field("first", &self.first)
            .field("count", &self.count)
            .field("iovecs", &self.iovecs.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct PendingChain {
    chain: WriteChain,
    results: Vec<Option<i32>>,
    outstanding: usize,
}

/// Real files under an io_uring.
#[derive(Debug)]
pub struct PosixEnv {
    ring: RingDriver<ChainOp>,
    direct: DirectIo,
    files: Vec<Option<File>>,
    pending: Vec<Option<PendingChain>>,
    /// The Direct I/O alignment of the log directory, probed at the first `open_log`.
    alignment: Option<DirectIoAlignment>,
    fallback_warned: bool,
    /// Completions taken off the ring by one `reap`, kept to reuse its allocation.
    completed: Vec<(ChainOp, i32)>,
}

impl PosixEnv {
    /// An environment whose log writes go through a new ring created on this thread.
    pub fn new(ring: &RingConfig, direct: DirectIo) -> io::Result<Self> {
        let ring = RingDriver::new(ring).map_err(io::Error::other)?;
        Ok(Self::with_ring(ring, direct))
    }

    /// An environment around an existing ring.
    fn with_ring(ring: RingDriver<ChainOp>, direct: DirectIo) -> Self {
        PosixEnv {
            ring,
            direct,
            files: (0..LOG_FILES_MAX).map(|_| None).collect(),
            pending: (0..CHAINS_INFLIGHT_MAX).map(|_| None).collect(),
            alignment: None,
            fallback_warned: false,
            completed: Vec::with_capacity(CHAINS_INFLIGHT_MAX * 8),
        }
    }

    /// The ring's setup, for reports.
    pub fn ring_setup(&self) -> &vortex_io::RingSetup {
        self.ring.setup()
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

    fn finish_op(&mut self, op: ChainOp, result: i32, finished: &mut Vec<FinishedChain>) {
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

impl Env for PosixEnv {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn exists(&mut self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(bytes)?;
        file.sync_data()
    }

    fn append_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        file.write_all(bytes)?;
        file.sync_data()
    }

    fn truncate_synced(&mut self, path: &Path, length: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(length)?;
        file.sync_all()
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
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
        let mut ops: Vec<(io_uring::squeue::Entry, ChainOp)> = Vec::new();
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
                ChainOp {
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
                ChainOp {
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
        // SAFETY: every write's buffer is owned by its op (see above); the file descriptor
        // stays open until the WAL closes the file, which it does only with no chain in flight.
        match unsafe { self.ring.push_chain(ops) } {
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
        match wait {
            Some(timeout) if self.ring.inflight() > 0 => {
                self.ring
                    .submit_and_wait_timeout(1, timeout)
                    .map_err(io::Error::other)?;
            }
            _ => {
                self.ring.submit().map_err(io::Error::other)?;
            }
        }
        let mut done = std::mem::take(&mut self.completed);
        self.ring.reap(|completion, owner| {
            if let Owner::Finished(op) = owner {
                done.push((op, completion.result));
            }
        });
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

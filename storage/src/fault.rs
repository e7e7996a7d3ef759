//! `FaultEnv`: an in-memory file system that fails on purpose (LevelDB's fault-injection
//! environment, for this crate's [`Env`]).
//!
//! It keeps two images of everything: what a process would read now, and what would survive
//! a power loss. A write changes the first; `fdatasync` (or a Direct I/O write, which is
//! `O_DSYNC`) copies a file's data to the second; `fsync` of a directory copies that
//! directory's names (creations, renames, removals) to the second. [`FaultEnv::crash`]
//! throws the first image away, which is exactly what a power loss does to unsynced data.
//!
//! On top of that it can, on request: fail a chosen operation with any errno (EIO, ENOSPC),
//! cut a log write short, tear a log write after any byte (and then lose power), and flip a
//! bit anywhere. A Direct I/O log checks every write's alignment as the kernel would.
//!
//! `FaultEnv` is a cheap handle: clones share one file system, so a test keeps one clone to
//! inject faults and crash while the WAL owns another.

use crate::env::{Env, FinishedChain, LogFile, WriteChain};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// Which operations a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A write of a log chain.
    LogWrite,
    /// The `fdatasync` at the end of a buffered log chain.
    LogSync,
    /// The write of `write_synced` / `append_synced` (MANIFEST, CURRENT).
    FileWrite,
    /// The sync of `write_synced` / `append_synced` / `truncate_synced`.
    FileSync,
    /// `sync_dir`.
    DirSync,
    /// Creating a log file.
    OpenLog,
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The `skip + 1`-th next operation on `target` fails with `errno` and changes nothing.
    Fail {
        /// The operations it applies to.
        target: Target,
        /// The error, e.g. `libc::EIO` or `libc::ENOSPC`.
        errno: i32,
        /// Matching operations to let through first.
        skip: u32,
    },
    /// The next log write writes only `bytes` bytes and reports that count.
    ShortWrite {
        /// Bytes written.
        bytes: usize,
    },
    /// The next log write persists only its first `bytes` bytes, and then the power goes:
    /// nothing completes and every operation fails with EIO until [`FaultEnv::crash`].
    TearWrite {
        /// Bytes persisted.
        bytes: usize,
    },
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeMap<PathBuf, ()>,
    inodes: HashMap<u64, Inode>,
    inode_next: u64,
    logs: Vec<Option<(u64, LogFile)>>,
    finished: Vec<FinishedChain>,
    faults: Vec<Fault>,
    /// Direct I/O alignment of log files; `None` for buffered logs.
    direct_alignment: Option<u32>,
    powered_off: bool,
    /// The disk is full ([`FaultEnv::set_full`]).
    full: bool,
    /// Completed chains are kept back from `reap` (a slow device).
    holding: bool,
    log_writes: u64,
}

/// The fault-injecting in-memory file system.
#[derive(Debug, Clone, Default)]
pub struct FaultEnv {
    state: Rc<RefCell<State>>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl FaultEnv {
    /// A file system whose log files act as Direct I/O files with `alignment` (writes durable
    /// when they complete, misaligned writes refused with EINVAL).
    pub fn direct(alignment: u32) -> Self {
        let env = FaultEnv::default();
        env.state.borrow_mut().direct_alignment = Some(alignment);
        env
    }

    /// A file system whose log files are buffered: durable only after the chain's `fdatasync`.
    pub fn buffered() -> Self {
        FaultEnv::default()
    }

    /// An independent copy of the file system as it is now (open files, chains in flight and
    /// armed faults are not copied).
    pub fn snapshot(&self) -> FaultEnv {
        let state = self.state.borrow();
        let copy = State {
            names: state.names.clone(),
            durable_names: state.durable_names.clone(),
            dirs: state.dirs.clone(),
            inodes: state.inodes.clone(),
            inode_next: state.inode_next,
            direct_alignment: state.direct_alignment,
            ..State::default()
        };
        FaultEnv {
            state: Rc::new(RefCell::new(copy)),
        }
    }

    /// The names of the files in `dir` as a process sees them now.
    pub fn files(&self, dir: &Path) -> Vec<String> {
        let state = self.state.borrow();
        state
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect()
    }

    /// Arms a fault.
    pub fn inject(&self, fault: Fault) {
        self.state.borrow_mut().faults.push(fault);
    }

    /// Keeps completed log writes from being reported (`true`), as a slow device would, or
    /// lets them through again (`false`).
    pub fn hold_completions(&self, hold: bool) {
        self.state.borrow_mut().holding = hold;
    }

    /// Fills the disk (`true`) or frees space again (`false`): while it is full, every
    /// operation that adds bytes or a file (a log write, `write_synced`, `append_synced`,
    /// creating a log) fails with ENOSPC and changes nothing; reads, truncation, removal,
    /// renames and syncs go on, as on a real file system.
    pub fn set_full(&self, full: bool) {
        self.state.borrow_mut().full = full;
    }

    /// Disarms every fault not yet triggered.
    pub fn clear_faults(&self) {
        self.state.borrow_mut().faults.clear();
    }

    /// Power loss: every unsynced byte and every unsynced directory change is gone, open log
    /// files are closed and chains in flight are lost.
    pub fn crash(&self) {
        let mut state = self.state.borrow_mut();
        state.names = state.durable_names.clone();
        let live: std::collections::HashSet<u64> = state.names.values().copied().collect();
        state.inodes.retain(|inode, _| live.contains(inode));
        for inode in state.inodes.values_mut() {
            inode.data = inode.durable.clone();
        }
        state.logs.clear();
        state.finished.clear();
        state.faults.clear();
        state.powered_off = false;
        state.holding = false;
    }

    /// Flips bit `bit` of byte `offset` of `path`, in both images.
    pub fn flip_bit(&self, path: &Path, offset: usize, bit: u8) -> io::Result<()> {
        self.modify(path, |bytes| {
            if let Some(byte) = bytes.get_mut(offset) {
                *byte ^= 1 << (bit % 8);
            }
        })
    }

    /// Truncates `path` to `length` in both images (a tear at that byte).
    pub fn cut(&self, path: &Path, length: usize) -> io::Result<()> {
        self.modify(path, |bytes| bytes.truncate(length))
    }

    /// The bytes of `path` that would survive a crash now.
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        let inode = state.durable_names.get(path)?;
        state.inodes.get(inode).map(|inode| inode.durable.clone())
    }

    /// Log writes performed so far.
    pub fn log_writes(&self) -> u64 {
        self.state.borrow().log_writes
    }

    /// `write_synced` and `append_synced`: the file is created if missing, changed (a write
    /// fault changes nothing), then synced (a sync fault leaves the change unsynced).
    fn write_file(&mut self, path: &Path, change: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.parent_exists(path)?;
        state.check(Target::FileWrite)?;
        let inode = match state.names.get(path) {
            Some(&inode) => inode,
            None => state.create(path),
        };
        change(&mut state.inodes.entry(inode).or_default().data);
        state.check(Target::FileSync)?;
        let node = state.inodes.entry(inode).or_default();
        node.durable = node.data.clone();
        Ok(())
    }

    fn modify(&self, path: &Path, change: impl Fn(&mut Vec<u8>)) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let inode = *state.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = state.inodes.entry(inode).or_default();
        change(&mut inode.data);
        change(&mut inode.durable);
        Ok(())
    }
}

impl State {
    /// Takes the armed fault for `target`, if one is due now.
    fn take_fail(&mut self, target: Target) -> Option<i32> {
        let position = self
            .faults
            .iter()
            .position(|fault| matches!(fault, Fault::Fail { target: t, .. } if *t == target))?;
        let Fault::Fail { errno, skip, .. } = &mut self.faults[position] else {
            return None;
        };
        if *skip > 0 {
            *skip -= 1;
            return None;
        }
        let code = *errno;
        self.faults.remove(position);
        Some(code)
    }

    fn take_log_write_fault(&mut self) -> Option<Fault> {
        let position = self.faults.iter().position(|fault| {
            matches!(fault, Fault::ShortWrite { .. } | Fault::TearWrite { .. })
        })?;
        Some(self.faults.remove(position))
    }

    fn check(&mut self, target: Target) -> io::Result<()> {
        if self.powered_off {
            return Err(errno(libc::EIO));
        }
        if self.full
            && matches!(
                target,
                Target::LogWrite | Target::FileWrite | Target::OpenLog
            )
        {
            return Err(errno(libc::ENOSPC));
        }
        match self.take_fail(target) {
            Some(code) => Err(errno(code)),
            None => Ok(()),
        }
    }

    fn inode_of(&self, path: &Path) -> io::Result<u64> {
        self.names.get(path).copied().ok_or_else(|| not_found(path))
    }

    fn create(&mut self, path: &Path) -> u64 {
        self.inode_next += 1;
        let inode = self.inode_next;
        self.inodes.insert(inode, Inode::default());
        self.names.insert(path.to_owned(), inode);
        inode
    }

    fn parent_exists(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() && !self.dirs.contains_key(parent) => {
                Err(not_found(parent))
            }
            _ => Ok(()),
        }
    }

    /// Runs a chain's operations in order, as linked io_uring operations would.
    fn run_chain(&mut self, chain: &WriteChain) -> Option<Vec<i32>> {
        let Some(Some((inode, file))) = self.logs.get(chain.file.id as usize).copied() else {
            return Some(vec![
                -libc::EBADF;
                chain.writes.len() + usize::from(chain.sync)
            ]);
        };
        let mut results = Vec::with_capacity(chain.writes.len() + 1);
        let mut broken = false;
        for write in &chain.writes {
            if broken {
                results.push(-libc::ECANCELED);
                continue;
            }
            if let Some(alignment) = self.direct_alignment {
                let alignment = u64::from(alignment);
                if !write.offset.is_multiple_of(alignment)
                    || !(write.len() as u64).is_multiple_of(alignment)
                {
                    results.push(-libc::EINVAL);
                    broken = true;
                    continue;
                }
            }
            if let Err(error) = self.check(Target::LogWrite) {
                results.push(-error.raw_os_error().unwrap_or(libc::EIO));
                broken = true;
                continue;
            }
            self.log_writes += 1;
            let bytes = &write.buffer[write.start as usize..write.end as usize];
            let (count, tear) = match self.take_log_write_fault() {
                Some(Fault::ShortWrite { bytes: short }) => (short.min(bytes.len()), false),
                Some(Fault::TearWrite { bytes: torn }) => (torn.min(bytes.len()), true),
                _ => (bytes.len(), false),
            };
            let durable_now = self.direct_alignment.is_some() || tear;
            let Some(node) = self.inodes.get_mut(&inode) else {
                results.push(-libc::EBADF);
                broken = true;
                continue;
            };
            let at = write.offset as usize;
            for image in [&mut node.data].into_iter().chain(if durable_now {
                Some(&mut node.durable)
            } else {
                None
            }) {
                if image.len() < at + count {
                    image.resize(at + count, 0);
                }
                image[at..at + count].copy_from_slice(&bytes[..count]);
            }
            if tear {
                self.powered_off = true;
                return None;
            }
            results.push(count as i32);
            if count < bytes.len() {
                broken = true;
            }
        }
        if chain.sync {
            if broken {
                results.push(-libc::ECANCELED);
            } else {
                match self.check(Target::LogSync) {
                    Ok(()) => {
                        if let Some(node) = self.inodes.get_mut(&inode) {
                            node.durable = node.data.clone();
                        }
                        results.push(0);
                    }
                    Err(error) => results.push(-error.raw_os_error().unwrap_or(libc::EIO)),
                }
            }
        }
        let _ = file;
        Some(results)
    }
}

impl Env for FaultEnv {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                state.dirs.insert(ancestor.to_owned(), ());
            }
        }
        Ok(())
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.state.borrow();
        if !state.dirs.contains_key(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect())
    }

    fn exists(&mut self, path: &Path) -> io::Result<bool> {
        let state = self.state.borrow();
        Ok(state.names.contains_key(path) || state.dirs.contains_key(path))
    }

    fn read(&mut self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.state.borrow();
        if state.powered_off {
            return Err(errno(libc::EIO));
        }
        let inode = state.inode_of(path)?;
        Ok(state
            .inodes
            .get(&inode)
            .map(|inode| inode.data.clone())
            .unwrap_or_default())
    }

    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.write_file(path, |data| *data = bytes.to_vec())
    }

    fn append_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.write_file(path, |data| data.extend_from_slice(bytes))
    }

    fn truncate_synced(&mut self, path: &Path, length: u64) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        if state.powered_off {
            return Err(errno(libc::EIO));
        }
        let inode = state.inode_of(path)?;
        state
            .inodes
            .entry(inode)
            .or_default()
            .data
            .resize(length as usize, 0);
        state.check(Target::FileSync)?;
        let node = state.inodes.entry(inode).or_default();
        node.durable = node.data.clone();
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        if state.powered_off {
            return Err(errno(libc::EIO));
        }
        state.parent_exists(to)?;
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_owned(), inode);
        Ok(())
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        if state.powered_off {
            return Err(errno(libc::EIO));
        }
        state
            .names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        state.check(Target::DirSync)?;
        let in_dir = |path: &Path| path.parent() == Some(dir);
        state.durable_names.retain(|path, _| !in_dir(path));
        let entries: Vec<(PathBuf, u64)> = state
            .names
            .iter()
            .filter(|(path, _)| in_dir(path))
            .map(|(path, inode)| (path.clone(), *inode))
            .collect();
        state.durable_names.extend(entries);
        Ok(())
    }

    fn open_log(&mut self, path: &Path) -> io::Result<LogFile> {
        let mut state = self.state.borrow_mut();
        state.parent_exists(path)?;
        state.check(Target::OpenLog)?;
        if state.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let inode = state.create(path);
        let id = match state.logs.iter().position(Option::is_none) {
            Some(id) => id,
            None => {
                state.logs.push(None);
                state.logs.len() - 1
            }
        };
        let file = LogFile {
            id: id as u32,
            alignment: state.direct_alignment.unwrap_or(1),
            direct: state.direct_alignment.is_some(),
        };
        state.logs[id] = Some((inode, file));
        Ok(file)
    }

    fn close_log(&mut self, file: LogFile) {
        if let Some(slot) = self.state.borrow_mut().logs.get_mut(file.id as usize) {
            *slot = None;
        }
    }

    fn submit(&mut self, chain: WriteChain) -> Result<(), (WriteChain, io::Error)> {
        let mut state = self.state.borrow_mut();
        if state.powered_off {
            return Err((chain, errno(libc::EIO)));
        }
        if let Some(results) = state.run_chain(&chain) {
            state.finished.push(FinishedChain { chain, results });
        }
        // A torn write lost the power: the chain never completes.
        Ok(())
    }

    fn reap(
        &mut self,
        _wait: Option<Duration>,
        finished: &mut Vec<FinishedChain>,
    ) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        if state.powered_off {
            // The device is gone: what was in flight will never complete.
            return Err(errno(libc::EIO));
        }
        if !state.holding {
            finished.append(&mut state.finished);
        }
        Ok(())
    }
}

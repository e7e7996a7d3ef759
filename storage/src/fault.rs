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
//! cut a write short, tear a log write after any byte (and then lose power), lose power
//! after any number of operations (to crash at every step of a flush or a compaction), and
//! flip a bit anywhere. A Direct I/O log checks every write's alignment as the kernel would.
//! A failed `fsync` of a table file acts as Linux's does: what it did not make durable is
//! lost, and later `fsync`s of that file succeed without writing it.
//!
//! `FaultEnv` is a cheap handle: clones share one file system, so a test keeps one clone to
//! inject faults and crash while the WAL owns another and the background threads a third
//! (as [`Files`]).

use crate::env::{Env, Files, FinishedChain, LogFile, Mapped, NewFile, WriteChain};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// Creating a file with [`Files::create_new`] (a table).
    NewFile,
    /// A write to such a file.
    NewFileWrite,
    /// Its `fsync`.
    NewFileSync,
    /// Reading or mapping a file.
    Read,
    /// A rename.
    Rename,
    /// A removal.
    Remove,
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
    /// The next write to a [`Files::create_new`] file writes at most `bytes` bytes (at least
    /// one) and reports that count.
    ShortNewFileWrite {
        /// Bytes written.
        bytes: usize,
    },
    /// `after` more operations that change the file system (reads do not count) succeed;
    /// the one after them finds the power gone: it fails with EIO, as does everything until
    /// [`FaultEnv::crash`].
    PowerOff {
        /// Operations let through first.
        after: u32,
    },
}

#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// An `fsync` of it failed: later ones report success and persist nothing.
    sync_lost: bool,
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
    /// The most bytes the files may hold ([`FaultEnv::set_full`],
    /// [`FaultEnv::set_free_bytes`]); `None`: unlimited.
    capacity: Option<u64>,
    /// Completed chains are kept back from `reap` (a slow device).
    holding: bool,
    log_writes: u64,
}

/// The fault-injecting in-memory file system.
#[derive(Debug, Clone, Default)]
pub struct FaultEnv {
    state: Arc<Mutex<State>>,
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
        env.state().direct_alignment = Some(alignment);
        env
    }

    /// A file system whose log files are buffered: durable only after the chain's `fdatasync`.
    pub fn buffered() -> Self {
        FaultEnv::default()
    }

    /// An independent copy of the file system as it is now (open files, chains in flight and
    /// armed faults are not copied).
    pub fn snapshot(&self) -> FaultEnv {
        let state = self.state();
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
            state: Arc::new(Mutex::new(copy)),
        }
    }

    /// Crashes a job at every step: for `step` = 0, 1, 2, …, on a fresh Direct I/O file
    /// system (`alignment`), `job(env, step)` prepares, arms [`Fault::PowerOff`] with
    /// `after: step` where the job begins, runs it, and lets go of what holds the file
    /// system; then the power goes ([`FaultEnv::crash`]) and `check(env, step, ended)`
    /// checks what a restart finds (`ended`: the power was still on when the job ended).
    /// Stops after the first run that ended with the power on, and returns its step: the
    /// number of steps the job takes. Panics after `steps_max` runs.
    pub fn crash_at_every_step(
        alignment: u32,
        steps_max: u32,
        mut job: impl FnMut(&FaultEnv, u32),
        mut check: impl FnMut(&FaultEnv, u32, bool),
    ) -> u32 {
        for step in 0..steps_max {
            let env = FaultEnv::direct(alignment);
            job(&env, step);
            let ended = !env.is_powered_off();
            env.crash();
            check(&env, step, ended);
            if ended {
                return step;
            }
        }
        panic!("the job did not end with the power on within {steps_max} steps");
    }

    /// The state; a panic in another test thread holding it leaves it usable.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the power is gone ([`Fault::PowerOff`], [`Fault::TearWrite`]).
    pub fn is_powered_off(&self) -> bool {
        self.state().powered_off
    }

    /// The names of the files in `dir` as a process sees them now.
    pub fn file_names(&self, dir: &Path) -> Vec<String> {
        let state = self.state();
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
        self.state().faults.push(fault);
    }

    /// Keeps completed log writes from being reported (`true`), as a slow device would, or
    /// lets them through again (`false`).
    pub fn hold_completions(&self, hold: bool) {
        self.state().holding = hold;
    }

    /// Fills the disk (`true`: no byte free from now on) or lifts the limit (`false`):
    /// while it is full, every write that adds bytes and every file creation fails with
    /// ENOSPC and changes nothing; reads, overwrites in place, truncation, removal, renames
    /// and syncs go on, as on a real file system.
    pub fn set_full(&self, full: bool) {
        let mut state = self.state();
        state.capacity = full.then(|| state.used_bytes());
    }

    /// Leaves `bytes` free from now on: a write that would take more fails with ENOSPC
    /// and changes nothing, and creating a file fails once none are free; removing or
    /// truncating files frees their bytes again. [`FaultEnv::set_full`]`(false)` lifts it.
    pub fn set_free_bytes(&self, bytes: u64) {
        let mut state = self.state();
        state.capacity = Some(state.used_bytes() + bytes);
    }

    /// The bytes the files hold now.
    pub fn used_bytes(&self) -> u64 {
        self.state().used_bytes()
    }

    /// Disarms every fault not yet triggered.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Power loss: every unsynced byte and every unsynced directory change is gone, open log
    /// files are closed and chains in flight are lost.
    pub fn crash(&self) {
        let mut state = self.state();
        state.names = state.durable_names.clone();
        let live: std::collections::HashSet<u64> = state.names.values().copied().collect();
        state.inodes.retain(|inode, _| live.contains(inode));
        for inode in state.inodes.values_mut() {
            inode.data = inode.durable.clone();
            inode.sync_lost = false;
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
        let state = self.state();
        let inode = state.durable_names.get(path)?;
        state.inodes.get(inode).map(|inode| inode.durable.clone())
    }

    /// Log writes performed so far.
    pub fn log_writes(&self) -> u64 {
        self.state().log_writes
    }

    /// `write_synced` and `append_synced`: the file is created if missing, changed (a write
    /// fault changes nothing), then synced (a sync fault leaves the change unsynced).
    fn write_file(&self, path: &Path, change: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut state = self.state();
        state.parent_exists(path)?;
        state.check(Target::FileWrite)?;
        let existing = state.names.get(path).copied();
        let mut data = existing
            .and_then(|inode| state.inodes.get(&inode))
            .map(|inode| inode.data.clone())
            .unwrap_or_default();
        let old_len = data.len();
        change(&mut data);
        state.check_space((data.len().saturating_sub(old_len)) as u64)?;
        let inode = match existing {
            Some(inode) => inode,
            None => state.create(path),
        };
        state.inodes.entry(inode).or_default().data = data;
        state.check(Target::FileSync)?;
        let node = state.inodes.entry(inode).or_default();
        node.durable = node.data.clone();
        Ok(())
    }

    fn modify(&self, path: &Path, change: impl Fn(&mut Vec<u8>)) -> io::Result<()> {
        let mut state = self.state();
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

    /// Takes the first armed fault that `wanted` picks.
    fn take_fault(&mut self, wanted: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let position = self.faults.iter().position(wanted)?;
        Some(self.faults.remove(position))
    }

    fn check(&mut self, target: Target) -> io::Result<()> {
        if self.powered_off {
            return Err(errno(libc::EIO));
        }
        if target != Target::Read {
            let power_off = self
                .faults
                .iter()
                .position(|fault| matches!(fault, Fault::PowerOff { .. }));
            if let Some(position) = power_off {
                if let Fault::PowerOff { after } = &mut self.faults[position] {
                    if *after == 0 {
                        self.faults.remove(position);
                        self.powered_off = true;
                        return Err(errno(libc::EIO));
                    }
                    *after -= 1;
                }
            }
        }
        match self.take_fail(target) {
            Some(code) => Err(errno(code)),
            None => Ok(()),
        }
    }

    /// The bytes of every file a name reaches.
    fn used_bytes(&self) -> u64 {
        let live: std::collections::HashSet<u64> = self.names.values().copied().collect();
        live.iter()
            .filter_map(|inode| self.inodes.get(inode))
            .map(|inode| inode.data.len() as u64)
            .sum()
    }

    /// The bytes left under the capacity; `None`: unlimited.
    fn free_bytes(&self) -> Option<u64> {
        self.capacity
            .map(|capacity| capacity.saturating_sub(self.used_bytes()))
    }

    /// ENOSPC when `growth` more bytes do not fit (creating a file asks for one).
    fn check_space(&self, growth: u64) -> io::Result<()> {
        let Some(free) = self.free_bytes() else {
            return Ok(());
        };
        if growth > free {
            return Err(errno(libc::ENOSPC));
        }
        Ok(())
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

    /// Creates `path`, which must not exist, as an operation on `target`.
    fn create_new(&mut self, path: &Path, target: Target) -> io::Result<u64> {
        self.parent_exists(path)?;
        self.check(target)?;
        self.check_space(1)?;
        if self.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        Ok(self.create(path))
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
            let growth = self.inodes.get(&inode).map_or(0, |node| {
                (write.offset as usize + write.len()).saturating_sub(node.data.len())
            });
            if let Err(error) = self
                .check(Target::LogWrite)
                .and_then(|()| self.check_space(growth as u64))
            {
                results.push(-error.raw_os_error().unwrap_or(libc::EIO));
                broken = true;
                continue;
            }
            self.log_writes += 1;
            let bytes = &write.buffer[write.start as usize..write.end as usize];
            let (count, tear) = match self.take_fault(|fault| {
                matches!(fault, Fault::ShortWrite { .. } | Fault::TearWrite { .. })
            }) {
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

/// A file being written ([`Files::create_new`]) in a [`FaultEnv`].
#[derive(Debug)]
struct FaultNewFile {
    env: FaultEnv,
    inode: u64,
}

impl io::Write for FaultNewFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.env.state();
        state.check(Target::NewFileWrite)?;
        let short = state.take_fault(|fault| matches!(fault, Fault::ShortNewFileWrite { .. }));
        let count = match short {
            Some(Fault::ShortNewFileWrite { bytes: short }) => short.clamp(1, bytes.len().max(1)),
            _ => bytes.len(),
        }
        .min(bytes.len());
        // As write(2) on a disk nearly full: what fits, then ENOSPC.
        let count = match state.free_bytes() {
            Some(0) if count > 0 => return Err(errno(libc::ENOSPC)),
            Some(free) => count.min(usize::try_from(free).unwrap_or(usize::MAX)),
            None => count,
        };
        let node = state
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| errno(libc::EBADF))?;
        node.data.extend_from_slice(&bytes[..count]);
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl NewFile for FaultNewFile {
    fn sync(&mut self) -> io::Result<()> {
        let mut state = self.env.state();
        let failed = state.check(Target::NewFileSync);
        let node = state
            .inodes
            .get_mut(&self.inode)
            .ok_or_else(|| errno(libc::EBADF))?;
        match failed {
            Err(error) => {
                // Linux marks the pages clean: the data never reaches the disk, and no
                // later fsync reports it.
                node.sync_lost = true;
                Err(error)
            }
            Ok(()) if node.sync_lost => Ok(()),
            Ok(()) => {
                node.durable = node.data.clone();
                Ok(())
            }
        }
    }
}

impl Files for FaultEnv {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
        for ancestor in dir.ancestors() {
            if !ancestor.as_os_str().is_empty() {
                state.dirs.insert(ancestor.to_owned(), ());
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        if !self.state().dirs.contains_key(dir) {
            return Err(not_found(dir));
        }
        Ok(self.file_names(dir))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = self.state();
        Ok(state.names.contains_key(path) || state.dirs.contains_key(path))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut state = self.state();
        state.check(Target::Read)?;
        let inode = state.inode_of(path)?;
        Ok(state
            .inodes
            .get(&inode)
            .map(|inode| inode.data.clone())
            .unwrap_or_default())
    }

    fn write_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.write_file(path, |data| *data = bytes.to_vec())
    }

    fn append_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.write_file(path, |data| data.extend_from_slice(bytes))
    }

    fn truncate_synced(&self, path: &Path, length: u64) -> io::Result<()> {
        let mut state = self.state();
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

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.check(Target::Rename)?;
        state.parent_exists(to)?;
        let inode = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_owned(), inode);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.check(Target::Remove)?;
        state
            .names
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state();
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

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn NewFile>> {
        let inode = self.state().create_new(path, Target::NewFile)?;
        Ok(Box::new(FaultNewFile {
            env: self.clone(),
            inode,
        }))
    }

    fn map(&self, path: &Path) -> io::Result<Mapped> {
        let mut state = self.state();
        state.check(Target::Read)?;
        let inode = state.inode_of(path)?;
        let bytes = state.inodes.get(&inode).map(|inode| &inode.data[..]);
        Ok(Mapped::copy(bytes.unwrap_or_default()))
    }
}

impl Env for FaultEnv {
    fn files(&self) -> Arc<dyn Files> {
        Arc::new(self.clone())
    }

    fn open_log(&mut self, path: &Path) -> io::Result<LogFile> {
        let mut state = self.state();
        let inode = state.create_new(path, Target::OpenLog)?;
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
        if let Some(slot) = self.state().logs.get_mut(file.id as usize) {
            *slot = None;
        }
    }

    fn submit(&mut self, chain: WriteChain) -> Result<(), (WriteChain, io::Error)> {
        let mut state = self.state();
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
        let mut state = self.state();
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

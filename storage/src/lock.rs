//! One process per directory: an exclusive `flock` on `DIR/LOCK`, held for the life of the
//! value and released by the kernel when the process ends, however it ends.
//!
//! Two servers on one data directory each replay the WAL, each rotate segments and each
//! delete the files the other still needs: the data is lost within seconds. So the dataplane
//! takes this lock on its data directory before it reads or writes anything there, and
//! every shard takes it on its own directory before it reads its catalog (a tool that opens
//! a shard directly is refused while a server holds it). The holder writes its PID into the
//! file so that a refused start can name it; the PID is a hint, the `flock` is the lock.
//!
//! `flock` locks belong to the open file description, so a second `acquire` in the same
//! process is refused too, as a second process would be.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the locked directory.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// Tries before a held lock is reported, `ACQUIRE_PAUSE` apart (about 100 ms in all).
const ACQUIRE_TRIES: u32 = 10;
const ACQUIRE_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// An exclusive lock on a directory; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DirLock {
    /// Held open: closing it releases the lock.
    _file: File,
    path: PathBuf,
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process (or another open of this process) holds the lock.
    #[error(
        "{dir} is in use by {holder}: one server (or tool) at a time may open a data \
         directory; stop it first, or give this one another directory",
        dir = .dir.display(),
        holder = .holder.map_or_else(|| "another process".to_owned(), |pid| format!("process {pid}"))
    )]
    Held {
        /// The locked directory.
        dir: PathBuf,
        /// The holder's PID, as it wrote it (absent while it is still writing it).
        holder: Option<u32>,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl DirLock {
    /// Takes the lock on `dir` (which must exist), without waiting: a held lock is
    /// [`LockError::Held`] at once.
    pub fn acquire(dir: &Path) -> Result<DirLock, LockError> {
        let path = dir.join(LOCK_FILE_NAME);
        let io_error = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        // A holder keeps the lock for its life; [`DirLock::holder`] (doctor) only for an
        // instant, so a refusal is retried for a moment before it is believed.
        let mut tries = 0;
        loop {
            // SAFETY: flock on a descriptor we own; it touches no memory.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_error(error));
            }
            tries += 1;
            if tries >= ACQUIRE_TRIES {
                return Err(LockError::Held {
                    dir: dir.to_owned(),
                    holder: read_holder(&mut file),
                });
            }
            std::thread::sleep(ACQUIRE_PAUSE);
        }
        // Ours now: record who holds it. The PID is only a hint for the refusal message, so
        // it needs no fsync.
        file.set_len(0).map_err(io_error)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io_error)?;
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The PID written in `dir`'s lock file by a process that holds it now, or `None`
    /// when nobody holds it (or there is no lock file). Takes nothing.
    pub fn holder(dir: &Path) -> Result<Option<u32>, LockError> {
        let path = dir.join(LOCK_FILE_NAME);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(LockError::Io { path, source }),
        };
        // A shared lock is granted only while no exclusive one is held.
        // SAFETY: flock on a descriptor we own; it touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return Ok(None);
        }
        Ok(Some(read_holder(&mut file).unwrap_or(0)))
    }
}

fn read_holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_acquire_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        assert_eq!(
            DirLock::holder(dir.path()).unwrap(),
            Some(std::process::id())
        );
        match DirLock::acquire(dir.path()) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        let message = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains(&format!("process {}", std::process::id())),
            "{message}"
        );
        drop(first);
        assert_eq!(DirLock::holder(dir.path()).unwrap(), None);
        let again = DirLock::acquire(dir.path()).unwrap();
        assert_eq!(again.path(), dir.path().join(LOCK_FILE_NAME));
    }

    #[test]
    fn no_lock_file_means_no_holder_and_a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DirLock::holder(dir.path()).unwrap(), None);
        let missing = dir.path().join("absent");
        assert!(matches!(
            DirLock::acquire(&missing),
            Err(LockError::Io { .. })
        ));
    }

    #[test]
    fn a_stale_pid_in_an_unlocked_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE_NAME), "4242\n").unwrap();
        assert_eq!(DirLock::holder(dir.path()).unwrap(), None);
        drop(DirLock::acquire(dir.path()).unwrap());
    }
}

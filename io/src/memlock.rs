//! Resilient memory locking: `mlockall(MCL_CURRENT | MCL_FUTURE)` as the config's policy says.
//!
//! Locking keeps the hot path free of major page faults. It fails when `RLIMIT_MEMLOCK` is
//! below what the process maps and the process lacks `CAP_IPC_LOCK`; under `try` that is one
//! warning naming the limit and the fix, under `required` a refusal to start.

use std::fmt;
use std::io;
use vortex_config::MemoryLockPolicy;

/// What memory locking did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemlockOutcome {
    /// All current and future pages are locked.
    Locked,
    /// The policy is `off`.
    Skipped,
    /// Under `try`, locking failed and the process goes on unlocked (the warning was logged).
    Unlocked {
        /// The errno of `mlockall`.
        errno: i32,
        /// `RLIMIT_MEMLOCK` at the time.
        limit: MemlockLimit,
    },
}

/// The soft `RLIMIT_MEMLOCK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemlockLimit {
    /// No limit.
    Unlimited,
    /// This many bytes.
    Bytes(u64),
    /// getrlimit failed.
    Unknown,
}

impl MemlockLimit {
    /// The calling process's soft limit.
    pub fn current() -> Self {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid rlimit to write.
        if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
            return MemlockLimit::Unknown;
        }
        if limit.rlim_cur == libc::RLIM_INFINITY {
            MemlockLimit::Unlimited
        } else {
            MemlockLimit::Bytes(limit.rlim_cur)
        }
    }
}

impl fmt::Display for MemlockLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemlockLimit::Unlimited => f.write_str("unlimited"),
            MemlockLimit::Bytes(bytes) if bytes % (1 << 20) == 0 && *bytes > 0 => {
                write!(f, "{} MiB", bytes >> 20)
            }
            MemlockLimit::Bytes(bytes) => write!(f, "{} KiB", bytes / 1024),
            MemlockLimit::Unknown => f.write_str("unknown"),
        }
    }
}

/// `memory.lock = "required"` and locking failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory.lock = \"required\" but mlockall failed: {source}; RLIMIT_MEMLOCK is {limit}. \
     Fix: raise the limit (LimitMEMLOCK=infinity in the systemd unit, or `ulimit -l unlimited` \
     in the shell that starts VORTEX) or grant CAP_IPC_LOCK, or set memory.lock = \"try\""
)]
pub struct MemlockError {
    /// Why mlockall failed.
    pub source: io::Error,
    /// `RLIMIT_MEMLOCK` at the time.
    pub limit: MemlockLimit,
}

/// Applies the memory-lock policy to the whole process. Call it once, early, before the LEUs
/// allocate their pools.
pub fn apply(policy: MemoryLockPolicy) -> Result<MemlockOutcome, MemlockError> {
    if policy == MemoryLockPolicy::Off {
        return Ok(MemlockOutcome::Skipped);
    }
    // SAFETY: mlockall takes flags only and touches no memory of ours.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0 {
        return Ok(MemlockOutcome::Locked);
    }
    let source = io::Error::last_os_error();
    let limit = MemlockLimit::current();
    if policy == MemoryLockPolicy::Required {
        return Err(MemlockError { source, limit });
    }
    tracing::warn!(
        "memory is not locked: mlockall failed ({source}) with RLIMIT_MEMLOCK = {limit}; \
         the hot path may page-fault. Fix: LimitMEMLOCK=infinity in the systemd unit or \
         `ulimit -l unlimited`, or set memory.lock = \"off\" to silence this"
    );
    Ok(MemlockOutcome::Unlocked {
        errno: source.raw_os_error().unwrap_or(0),
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_does_nothing() {
        assert_eq!(
            apply(MemoryLockPolicy::Off).unwrap(),
            MemlockOutcome::Skipped
        );
    }

    #[test]
    fn limits_print_in_human_units() {
        assert_eq!(MemlockLimit::Bytes(8 << 20).to_string(), "8 MiB");
        assert_eq!(MemlockLimit::Bytes(65536).to_string(), "64 KiB");
        assert_eq!(MemlockLimit::Bytes(0).to_string(), "0 KiB");
        assert_eq!(MemlockLimit::Unlimited.to_string(), "unlimited");
    }
}

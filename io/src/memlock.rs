//! Resilient memory locking, as the config's `memory.lock` policy says.
//!
//! Locking keeps the hot path free of major page faults. `mlockall(MCL_CURRENT |
//! MCL_FUTURE)` locks every page the process has and will map; it is what `required` does,
//! and what `try` does when nothing bounds it (`RLIMIT_MEMLOCK` unlimited, or
//! `CAP_IPC_LOCK`). Under a finite limit `MCL_FUTURE` is a trap: the call succeeds while the
//! process is small, and a later mapping (a thread's stack, a buffer pool, a mapped table)
//! fails once the locked total reaches the limit, so an ordinary user's 8 MiB would stop the
//! server a moment after it said memory was locked. So under `try` with a finite limit,
//! nothing is locked wholesale: the hot regions (each LEU's buffer pool, its rings) are
//! locked one by one with `mlock` through [`lock_hot`], as far as the limit allows, and the
//! rest of the process stays unlocked; one warning says so.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use vortex_config::MemoryLockPolicy;

/// Bytes [`lock_hot`] may still lock; 0 when it locks nothing (the policy locked everything
/// already, is `off`, or the limit is used up).
static HOT_BUDGET_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes [`lock_hot`] has locked.
static HOT_LOCKED_BYTES: AtomicU64 = AtomicU64::new(0);

/// What memory locking did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemlockOutcome {
    /// All current and future pages are locked.
    Locked,
    /// The policy is `off`.
    Skipped,
    /// Under `try` with a finite limit: the hot regions are locked one by one as far as the
    /// limit allows ([`lock_hot`]); the rest is not (the warning was logged).
    Partial {
        /// `RLIMIT_MEMLOCK` at the time.
        limit: MemlockLimit,
        /// What the limit left for the hot regions, after what was locked already.
        budget_bytes: u64,
    },
    /// Under `try`, locking failed and the process goes on unlocked (the warning was logged).
    Unlocked {
        /// The errno of `mlockall`.
        errno: i32,
        /// `RLIMIT_MEMLOCK` at the time.
        limit: MemlockLimit,
    },
}

impl fmt::Display for MemlockOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemlockOutcome::Locked => f.write_str("locked"),
            MemlockOutcome::Skipped => f.write_str("off"),
            MemlockOutcome::Partial { limit, .. } => {
                write!(f, "in part, the buffer pools within RLIMIT_MEMLOCK {limit}")
            }
            MemlockOutcome::Unlocked { limit, .. } => {
                write!(f, "not locked, RLIMIT_MEMLOCK {limit}")
            }
        }
    }
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
    apply_as(policy, MemlockLimit::current(), has_ipc_lock())
}

/// [`apply`] for a given limit and capability (what the process has, or what a test says).
fn apply_as(
    policy: MemoryLockPolicy,
    limit: MemlockLimit,
    ipc_lock: bool,
) -> Result<MemlockOutcome, MemlockError> {
    HOT_BUDGET_BYTES.store(0, Ordering::Release);
    if policy == MemoryLockPolicy::Off {
        return Ok(MemlockOutcome::Skipped);
    }
    let unbounded = ipc_lock || limit == MemlockLimit::Unlimited;
    if policy == MemoryLockPolicy::Try && !unbounded {
        let locked = locked_bytes_now();
        let budget_bytes = match limit {
            MemlockLimit::Bytes(bytes) => bytes.saturating_sub(locked),
            MemlockLimit::Unlimited | MemlockLimit::Unknown => 0,
        };
        HOT_BUDGET_BYTES.store(budget_bytes, Ordering::Release);
        tracing::warn!(
            "memory is locked only in part: RLIMIT_MEMLOCK = {limit} (and no CAP_IPC_LOCK), \
             so the LEUs' buffer pools are locked as far as it allows ({} KiB) and the rest \
             may page-fault. Fix: LimitMEMLOCK=infinity in the systemd unit or `ulimit -l \
             unlimited`, or set memory.lock = \"off\" to silence this",
            budget_bytes / 1024
        );
        return Ok(MemlockOutcome::Partial {
            limit,
            budget_bytes,
        });
    }
    // SAFETY: mlockall takes flags only and touches no memory of ours.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0 {
        return Ok(MemlockOutcome::Locked);
    }
    let source = io::Error::last_os_error();
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

/// Locks `region` (a hot buffer that lives as long as the process serves) with `mlock` when
/// the policy locks in part and the limit has room for it; returns whether it did. A region
/// that does not fit is left unlocked (later, smaller ones may still fit). Never fails the
/// caller: under `required` or an unbounded `try` the region is locked already, under `off`
/// nothing is.
pub fn lock_hot(region: &[u8]) -> bool {
    let bytes = region_pages_bytes(region);
    if bytes == 0 {
        return false;
    }
    let reserved = HOT_BUDGET_BYTES.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
        left.checked_sub(bytes)
    });
    if reserved.is_err() {
        return false;
    }
    // SAFETY: locks the pages of a live slice; mlock reads no memory and changes only
    // whether the pages may be swapped.
    if unsafe { libc::mlock(region.as_ptr().cast(), region.len()) } == 0 {
        HOT_LOCKED_BYTES.fetch_add(bytes, Ordering::Relaxed);
        true
    } else {
        // The kernel counts otherwise than we do (or the limit changed): stop trying.
        HOT_BUDGET_BYTES.store(0, Ordering::Release);
        false
    }
}

/// Bytes [`lock_hot`] has locked in this process.
pub fn hot_locked_bytes() -> u64 {
    HOT_LOCKED_BYTES.load(Ordering::Relaxed)
}

/// The bytes of the whole pages `region` touches (what mlock charges).
fn region_pages_bytes(region: &[u8]) -> u64 {
    if region.is_empty() {
        return 0;
    }
    const PAGE: usize = 4096;
    let start = region.as_ptr() as usize & !(PAGE - 1);
    let end = (region.as_ptr() as usize + region.len()).div_ceil(PAGE) * PAGE;
    (end - start) as u64
}

/// Whether this process has `CAP_IPC_LOCK` in effect (root does, unless it gave it up).
pub fn has_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| ipc_lock_in_status(&status))
}

/// Whether `/proc/self/status` text shows `CAP_IPC_LOCK` (bit 14) in `CapEff`.
pub fn ipc_lock_in_status(status: &str) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

/// Bytes this process has locked now (`VmLck` in `/proc/self/status`), 0 when unreadable.
fn locked_bytes_now() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmLck:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test that touches the process-wide budget (tests run in parallel).
    #[test]
    fn a_finite_limit_under_try_locks_hot_regions_only_within_the_budget() {
        assert_eq!(
            apply(MemoryLockPolicy::Off).unwrap(),
            MemlockOutcome::Skipped
        );
        // Nothing is locked wholesale (no MCL_FUTURE): a later mapping cannot fail.
        let outcome = apply_as(MemoryLockPolicy::Try, MemlockLimit::Bytes(8 << 20), false).unwrap();
        let MemlockOutcome::Partial { budget_bytes, .. } = outcome else {
            panic!("expected Partial, got {outcome:?}");
        };
        assert!(budget_bytes <= 8 << 20);
        // Test the budget's arithmetic with a small one of our own.
        HOT_BUDGET_BYTES.store(3 * 4096, Ordering::Release);
        let region = vec![0u8; 16 * 4096];
        let before = hot_locked_bytes();
        assert!(
            !lock_hot(&region),
            "a region larger than the budget stays unlocked"
        );
        assert!(lock_hot(&region[..4096 * 2 - 100]));
        assert!(hot_locked_bytes() - before >= 2 * 4096);
        assert!(!lock_hot(&region[..4096 * 3]), "the budget is used up");
        assert!(!lock_hot(&[]));
        // Later policies reset it.
        apply_as(MemoryLockPolicy::Off, MemlockLimit::Bytes(8 << 20), false).unwrap();
        assert!(!lock_hot(&region[..1]));
    }

    #[test]
    fn capabilities_come_from_the_effective_set() {
        assert!(ipc_lock_in_status("Name:\tx\nCapEff:\t000001ffffffffff\n"));
        assert!(!ipc_lock_in_status("CapEff:\t0000000000000000\n"));
        assert!(!ipc_lock_in_status("no such line"));
    }

    #[test]
    fn pages_touched_are_counted_whole() {
        let buffer = vec![0u8; 3 * 4096];
        assert_eq!(region_pages_bytes(&buffer[..1]), 4096);
        assert_eq!(region_pages_bytes(&[]), 0);
        // Two bytes across a page boundary touch two pages.
        let to_boundary = 4096 - buffer.as_ptr() as usize % 4096;
        assert_eq!(
            region_pages_bytes(&buffer[to_boundary - 1..to_boundary + 1]),
            8192
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

//! Resilient memory locking, as the config's `memory.lock` policy says.
//!
//! Locking keeps the hot path free of major page faults. `mlockall(MCL_CURRENT |
//! MCL_FUTURE | MCL_ONFAULT)` locks every page the process has and every page it touches
//! from then on (not every page of a mapping at once: a mapped table's cold rows, which an
//! `i8` collection reads only to re-rank, are not read in for it; kernels before 4.4, which
//! lack `MCL_ONFAULT`, lock every page mapped); it is what `required` does,
//! and what `try` does when nothing bounds it (`RLIMIT_MEMLOCK` unlimited, or
//! `CAP_IPC_LOCK`). Under a finite limit `MCL_FUTURE` is a trap: the call succeeds while the
//! process is small, and a later mapping (a thread's stack, a buffer pool, a mapped table)
//! fails once the locked total reaches the limit, so an ordinary user's 8 MiB would stop the
//! server a moment after it said memory was locked. So under `try` with a finite limit,
//! nothing is locked wholesale: each LEU takes an equal share of what the limit leaves
//! ([`HotShare`]) and locks its buffer pool with `mlock`, receive buffers first, as far as
//! the share goes; the rest of the process stays unlocked, and one warning says so. Under
//! `required` a finite limit is refused at once (without `CAP_IPC_LOCK`), for the same
//! reason: `MCL_FUTURE` would fail the process later, once it outgrew the limit.
//!
//! `CAP_IPC_LOCK` counts only outside a user namespace: root in a container sees the bit in
//! `CapEff`, but the kernel checks the capability in the initial namespace.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use vortex_config::MemoryLockPolicy;

/// Bytes the hot regions may still lock; 0 when nothing is locked that way (the policy locked
/// everything already, is `off`, or the limit is used up).
static HOT_BUDGET_BYTES: AtomicU64 = AtomicU64::new(0);
/// What the limit left for the hot regions when the policy was applied.
static HOT_BUDGET_TOTAL_BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes locked as hot regions.
static HOT_LOCKED_BYTES: AtomicU64 = AtomicU64::new(0);

/// What memory locking did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemlockOutcome {
    /// All current and future pages are locked.
    Locked,
    /// The policy is `off`.
    Skipped,
    /// Under `try` with a finite limit: the hot regions are locked one by one as far as the
    /// limit allows ([`HotShare`]); the rest is not (the warning was logged).
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
    "memory.lock = \"required\" cannot lock memory: {source}; RLIMIT_MEMLOCK is {limit}. \
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
    HOT_BUDGET_TOTAL_BYTES.store(0, Ordering::Release);
    if policy == MemoryLockPolicy::Off {
        return Ok(MemlockOutcome::Skipped);
    }
    let unbounded = ipc_lock || limit == MemlockLimit::Unlimited;
    if policy == MemoryLockPolicy::Required && !unbounded {
        return Err(MemlockError {
            source: io::Error::other(
                "the limit is finite and the process lacks CAP_IPC_LOCK, so locking every \
                 future mapping would make a later one fail once the process outgrew it",
            ),
            limit,
        });
    }
    if policy == MemoryLockPolicy::Try && !unbounded {
        let locked = locked_bytes_now();
        let budget_bytes = match limit {
            MemlockLimit::Bytes(bytes) => bytes.saturating_sub(locked),
            MemlockLimit::Unlimited | MemlockLimit::Unknown => 0,
        };
        HOT_BUDGET_BYTES.store(budget_bytes, Ordering::Release);
        HOT_BUDGET_TOTAL_BYTES.store(budget_bytes, Ordering::Release);
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
    let lock = |flags| unsafe { libc::mlockall(flags) } == 0;
    // Pages are locked as they are first touched (MCL_ONFAULT, Linux 4.4): a mapped table
    // is not read in whole at its mapping, only what is used of it. Older kernels refuse
    // the flag (EINVAL): then every page, as before.
    if lock(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT)
        || lock(libc::MCL_CURRENT | libc::MCL_FUTURE)
    {
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

/// One LEU's share of what a partial lock may lock: an equal part of the budget, so that
/// every LEU gets its receive buffers locked before any LEU locks its larger ones. Taken
/// once per LEU; when the policy does not lock in part, the share is empty and locks nothing
/// (under `required` or an unbounded `try` everything is locked already, under `off`
/// nothing should be).
#[derive(Debug)]
pub struct HotShare {
    left_bytes: u64,
}

impl HotShare {
    /// Takes this LEU's share, one of `leus`, from the process's budget.
    pub fn take(leus: usize) -> HotShare {
        let share = HOT_BUDGET_TOTAL_BYTES.load(Ordering::Acquire) / (leus.max(1) as u64);
        let taken = HOT_BUDGET_BYTES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                Some(left - left.min(share))
            })
            .map_or(0, |left| left.min(share));
        HotShare { left_bytes: taken }
    }

    /// Locks `region` (a buffer that lives as long as the LEU serves) with `mlock` if it fits
    /// in what is left of the share; returns whether it did. A region that does not fit is
    /// left unlocked (a later, smaller one may still fit). Never fails the caller.
    pub fn lock(&mut self, region: &[u8]) -> bool {
        let bytes = region_pages_bytes(region);
        if bytes == 0 || bytes > self.left_bytes {
            return false;
        }
        // SAFETY: locks the pages of a live slice; mlock reads no memory and changes only
        // whether the pages may be swapped.
        if unsafe { libc::mlock(region.as_ptr().cast(), region.len()) } == 0 {
            self.left_bytes -= bytes;
            HOT_LOCKED_BYTES.fetch_add(bytes, Ordering::Relaxed);
            true
        } else {
            // The kernel counts otherwise than we do (or the limit changed): stop trying.
            self.left_bytes = 0;
            false
        }
    }

    /// What is left of the share.
    pub fn left_bytes(&self) -> u64 {
        self.left_bytes
    }
}

/// Bytes locked as hot regions ([`HotShare::lock`]) in this process.
pub fn hot_locked_bytes() -> u64 {
    HOT_LOCKED_BYTES.load(Ordering::Relaxed)
}

/// The bytes of the whole pages `region` touches (what mlock charges).
fn region_pages_bytes(region: &[u8]) -> u64 {
    if region.is_empty() {
        return 0;
    }
    // SAFETY: sysconf reads a constant of the system and touches no memory of ours.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    const PAGE_FALLBACK: usize = 4096;
    let page = if page.is_power_of_two() {
        page
    } else {
        PAGE_FALLBACK
    };
    let start = region.as_ptr() as usize & !(page - 1);
    let end = (region.as_ptr() as usize + region.len()).div_ceil(page) * page;
    (end - start) as u64
}

/// Whether this process has `CAP_IPC_LOCK` in effect where the kernel checks it: in
/// `CapEff`, and not inside a user namespace (root in a container sees the bit, but the
/// memlock limit still binds it).
pub fn has_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| ipc_lock_in_status(&status))
        && std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|map| uid_map_is_initial(&map))
}

/// Whether `/proc/self/uid_map` text is the initial namespace's identity map.
pub fn uid_map_is_initial(map: &str) -> bool {
    let fields: Vec<&str> = map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
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

/// The resident kilobytes (`Rss` in `/proc/self/smaps`) of this process's mapping that holds
/// `address`, or `None` when no mapping holds it: how the tests check that mapped tables
/// and indexes leave the resident set once their pages are released.
pub fn mapping_resident_kib(address: usize) -> io::Result<Option<u64>> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) {
                inside = (start..end).contains(&address);
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("Rss:").filter(|_| inside) {
            let kib = rest.trim().trim_end_matches("kB").trim();
            return kib.parse().map(Some).map_err(io::Error::other);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test that touches the process-wide budget (tests run in parallel).
    #[test]
    fn a_finite_limit_under_try_locks_hot_regions_only_within_each_leus_share() {
        assert_eq!(
            apply(MemoryLockPolicy::Off).unwrap(),
            MemlockOutcome::Skipped
        );
        assert_eq!(HotShare::take(1).left_bytes(), 0, "off: nothing to lock");
        // Nothing is locked wholesale (no MCL_FUTURE): a later mapping cannot fail.
        let outcome = apply_as(MemoryLockPolicy::Try, MemlockLimit::Bytes(8 << 20), false).unwrap();
        let MemlockOutcome::Partial { budget_bytes, .. } = outcome else {
            panic!("expected Partial, got {outcome:?}");
        };
        assert!(budget_bytes <= 8 << 20);
        // Test the shares' arithmetic with a small budget of our own: two LEUs, three
        // pages each.
        HOT_BUDGET_BYTES.store(6 * 4096, Ordering::Release);
        HOT_BUDGET_TOTAL_BYTES.store(6 * 4096, Ordering::Release);
        let mut first = HotShare::take(2);
        let mut second = HotShare::take(2);
        assert_eq!(
            (first.left_bytes(), second.left_bytes()),
            (3 * 4096, 3 * 4096)
        );
        assert_eq!(
            HotShare::take(2).left_bytes(),
            0,
            "the budget is shared out"
        );
        let region = vec![0u8; 16 * 4096];
        assert!(
            !first.lock(&region),
            "a region larger than the share stays unlocked"
        );
        assert!(!first.lock(&[]));
        // A real mlock: it can fail only where the limit is below a few pages.
        if MemlockLimit::current() == MemlockLimit::Unlimited
            || matches!(MemlockLimit::current(), MemlockLimit::Bytes(b) if b >= 1 << 20)
        {
            let before = hot_locked_bytes();
            assert!(first.lock(&region[..4096 * 2 - 100]));
            assert!(hot_locked_bytes() - before >= 2 * 4096);
            assert!(!first.lock(&region[..4096 * 3]), "the share is used up");
            assert!(
                second.lock(&region[..4096]),
                "the other LEU's share is its own"
            );
        }
        // `required` with a finite limit and no CAP_IPC_LOCK is refused at once.
        let error = apply_as(
            MemoryLockPolicy::Required,
            MemlockLimit::Bytes(64 << 30),
            false,
        )
        .unwrap_err();
        assert!(error.to_string().contains("outgrew"), "{error}");
        apply_as(MemoryLockPolicy::Off, MemlockLimit::Bytes(8 << 20), false).unwrap();
    }

    #[test]
    fn capabilities_come_from_the_effective_set() {
        assert!(ipc_lock_in_status("Name:\tx\nCapEff:\t000001ffffffffff\n"));
        assert!(!ipc_lock_in_status("CapEff:\t0000000000000000\n"));
        assert!(!ipc_lock_in_status("no such line"));
        assert!(uid_map_is_initial("         0          0 4294967295\n"));
        assert!(!uid_map_is_initial("         0       1000          1\n"));
        assert!(!uid_map_is_initial(""));
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

//! Pages of mapped files that the kernel cannot read.
//!
//! A read through a file mapping of a page the kernel cannot bring in (an I/O error on the
//! disk, or a page past the end of a file truncated under the mapping) raises SIGBUS, whose
//! default action kills the process: one bad sector under an SSTable would stop the node,
//! and stop it again at every start that touched the page. Mappings made by
//! [`Mapped::of_file`](crate::env::Mapped::of_file) (every table, and the side-car indexes
//! and vector regions the shard maps through [`Files`](crate::env::Files)) are registered
//! here. A SIGBUS at an address inside one of them puts a page of zeros there (an anonymous
//! read-only mapping over that page), notes the offset, and returns: the read that faulted
//! sees zeros, which fail the checksum every reader of table bytes verifies, and the owner
//! finds the lost page ([`Registration::lost_page`]) and fences the file with an I/O error
//! (a table is quarantined; a search that ranked rows from it fails). A SIGBUS anywhere else
//! goes to the handler that was there before (the Rust runtime's, which reports stack
//! overflows) or, with none, kills the process as it always did.
//!
//! The handler touches only atomics and calls `mmap(2)` (a system call, safe in a signal
//! handler on Linux). The table of mappings is fixed in size and lock-free: a mapping that
//! finds it full is not protected (a warning is logged once) and works as before.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Once;

/// Mappings protected at once at most (tables and side-cars of every LEU).
const SLOTS: usize = 16_384;
/// The page size (`sysconf`), read when the handler is installed.
static PAGE: AtomicUsize = AtomicUsize::new(0);
const FREE: u8 = 0;
const CLAIMED: u8 = 1;
const LIVE: u8 = 2;

struct Slot {
    state: AtomicU8,
    /// Moves at every registration, so that the handler can tell a slot reused while it
    /// read `start` and `len` (it then reads them again).
    generation: AtomicUsize,
    start: AtomicUsize,
    len: AtomicUsize,
    /// The offset of the first page lost, plus one; 0: none.
    lost: AtomicUsize,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            state: AtomicU8::new(FREE),
            generation: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
        }
    }
}

static MAPPINGS: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
static INSTALL: Once = Once::new();
static FULL_WARNED: AtomicBool = AtomicBool::new(false);

/// The SIGBUS action found when ours was installed: written once, inside `INSTALL`, before
/// the handler that reads it can run.
struct Previous(UnsafeCell<Option<libc::sigaction>>);
// SAFETY: written once before any reader exists (see above), read-only after.
unsafe impl Sync for Previous {}
static PREVIOUS: Previous = Previous(UnsafeCell::new(None));

/// A mapping's entry in the table; removed when dropped (before the mapping is unmapped).
#[derive(Debug)]
pub(crate) struct Registration(usize);

impl Registration {
    /// The offset in the mapping of the first page the kernel could not read, if any.
    pub(crate) fn lost_page(&self) -> Option<usize> {
        let lost = MAPPINGS[self.0].lost.load(Ordering::Acquire);
        lost.checked_sub(1)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let slot = &MAPPINGS[self.0];
        slot.state.store(CLAIMED, Ordering::Release);
        slot.lost.store(0, Ordering::Relaxed);
        slot.state.store(FREE, Ordering::Release);
    }
}

/// Protects the mapping of `len` bytes at `start` (see the module docs); `None` when the
/// table is full or the handler could not be installed.
pub(crate) fn register(start: *const u8, len: usize) -> Option<Registration> {
    if !install() {
        return None;
    }
    for (index, slot) in MAPPINGS.iter().enumerate() {
        // A load first: a compare-exchange on every taken slot would write-lock its line.
        if slot.state.load(Ordering::Relaxed) == FREE
            && slot
                .state
                .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            slot.generation.fetch_add(1, Ordering::AcqRel);
            slot.start.store(start as usize, Ordering::Release);
            slot.len.store(len, Ordering::Release);
            slot.lost.store(0, Ordering::Relaxed);
            slot.state.store(LIVE, Ordering::Release);
            return Some(Registration(index));
        }
    }
    if !FULL_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            mappings = SLOTS,
            "more files mapped than the SIGBUS guard holds: an I/O error under the others \
             kills the process"
        );
    }
    None
}

/// Installs the handler once; whether it is installed.
fn install() -> bool {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    INSTALL.call_once(|| {
        // SAFETY: plain sigaction calls with zeroed, then filled, structures; PREVIOUS is
        // written before our handler, its only reader, is installed.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page <= 0 {
                return;
            }
            PAGE.store(page as usize, Ordering::Relaxed);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                return;
            }
            *PREVIOUS.0.get() = Some(previous);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0 {
                INSTALLED.store(true, Ordering::Release);
            }
        }
    });
    INSTALLED.load(Ordering::Acquire)
}

/// The range of a live slot, read consistently: `None` when it is not live, or was freed or
/// registered again while it was read.
fn live_range(slot: &Slot) -> Option<(usize, usize)> {
    if slot.state.load(Ordering::Acquire) != LIVE {
        return None;
    }
    let generation = slot.generation.load(Ordering::Acquire);
    let start = slot.start.load(Ordering::Acquire);
    let len = slot.len.load(Ordering::Acquire);
    let stable = slot.state.load(Ordering::Acquire) == LIVE
        && slot.generation.load(Ordering::Acquire) == generation;
    stable.then_some((start, len))
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // Only a fault the kernel raised has an address; a SIGBUS another process sent (code
    // 0 or below) is passed on.
    let page_bytes = PAGE.load(Ordering::Relaxed);
    for slot in MAPPINGS.iter().filter(|_| code > 0 && page_bytes > 0) {
        let Some((start, len)) = live_range(slot) else {
            continue;
        };
        if address < start || address - start >= len {
            continue;
        }
        let page = address & !(page_bytes - 1);
        // SAFETY: the page lies inside a live mapping of this process (the faulting thread
        // is reading it, so its owner cannot unmap it meanwhile); replacing it with zeros
        // changes only what that mapping reads.
        let zeros = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                page_bytes,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if zeros != libc::MAP_FAILED {
            let _ = slot.lost.compare_exchange(
                0,
                address - start + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            return;
        }
        break;
    }
    // SAFETY: PREVIOUS was written before this handler was installed.
    let previous = unsafe { *PREVIOUS.0.get() };
    match previous {
        Some(previous)
            if previous.sa_sigaction != libc::SIG_DFL && previous.sa_sigaction != libc::SIG_IGN =>
        {
            // SAFETY: calling the handler that was installed before ours, as the kernel would
            // have, with the same arguments.
            unsafe {
                if previous.sa_flags & libc::SA_SIGINFO != 0 {
                    let handler: extern "C" fn(
                        libc::c_int,
                        *mut libc::siginfo_t,
                        *mut libc::c_void,
                    ) = std::mem::transmute(previous.sa_sigaction);
                    handler(signal, info, context);
                } else {
                    let handler: extern "C" fn(libc::c_int) =
                        std::mem::transmute(previous.sa_sigaction);
                    handler(signal);
                }
            }
        }
        _ => {
            // No one else's: the default action once the faulting read runs again (death).
            // SAFETY: resetting a signal's disposition is async-signal-safe.
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
            }
        }
    }
}

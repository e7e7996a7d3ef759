//! Handing requests between LEUs: the queues, the frames lent across them, and waking an
//! LEU that sleeps in its ring.
//!
//! A frame read by one LEU (the **origin**) that needs another (see [`crate::gather`]) is
//! not copied: the origin keeps the pool buffer that holds it and sends a [`LentFrame`] (its
//! address and length) on the bounded SPSC queue to that LEU; the other LEU validates and
//! runs its part in place and sends a [`Reply`] back on a second queue. The origin frees
//! the buffer only when every reply is in, so the lent bytes stay valid and unchanged for as
//! long as any LEU may read them. Requests and replies travel on separate queues, and an
//! origin never has more requests out to one LEU than the reply queue holds, so a reply
//! always finds room.
//!
//! Each LEU sleeps in its ring's wait with a read armed on its own eventfd; before it sleeps
//! it says so ([`Wake::sleeping`]) and looks at its queues once more, and a sender that
//! finds it sleeping after a push writes the eventfd (a Dekker-style handshake with a full
//! fence on both sides, so a push is never missed).

use crate::routing::Ring;
use crate::spsc::{Consumer, Mesh, Producer};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use vortex_shard::{PublishedView, TierGraphs};
use vortex_vbp::codec::Response;

/// The bytes of a frame the origin LEU keeps, lent to another LEU.
#[derive(Debug)]
pub struct LentFrame {
    address: *const u8,
    len: usize,
}

// SAFETY: a lent frame is only an address; `lend`'s contract keeps the bytes alive and
// unchanged while any LEU can read them, and they are only read.
unsafe impl Send for LentFrame {}

impl LentFrame {
    /// Lends `bytes`.
    ///
    /// # Safety
    /// The caller keeps the bytes alive and unchanged until the reply to this frame has come
    /// back (or, if it never can, forever).
    pub unsafe fn lend(bytes: &[u8]) -> LentFrame {
        LentFrame {
            address: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// The lent bytes.
    ///
    /// # Safety
    /// Only before the reply to this frame is sent: after it the origin may free them.
    pub unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: `lend`'s contract: the bytes are alive and unchanged until the reply.
        unsafe { std::slice::from_raw_parts(self.address, self.len) }
    }
}

/// A request handed to another LEU.
#[derive(Debug)]
pub struct Handover {
    /// The origin's name for the request, returned in the reply.
    pub token: u32,
    /// The frame.
    pub frame: LentFrame,
}

/// Another LEU's answer to its part of a request.
#[derive(Debug)]
pub struct Reply {
    /// The request's token.
    pub token: u32,
    /// The answer to the part.
    pub response: Response,
}

/// How an LEU is woken from its ring's wait.
#[derive(Debug)]
pub struct Wake {
    /// An eventfd the LEU keeps a read armed on. Blocking on purpose: io_uring waits for a
    /// blocking file to become readable, while kernels before about 5.12 answer a read of a
    /// non-blocking one at once with EAGAIN (the loop would never sleep).
    pub fd: OwnedFd,
    /// Set while the LEU is (about to be) waiting in its ring.
    pub sleeping: AtomicBool,
}

impl Wake {
    fn new() -> io::Result<Wake> {
        // SAFETY: creates a new descriptor, owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Wake {
            // SAFETY: `fd` is a fresh descriptor nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    /// Wakes the LEU if it sleeps: called after pushing onto one of its queues.
    pub fn after_push(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            self.signal();
        }
    }

    /// Wakes the LEU whether it sleeps or not.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. It could only block
        // with the counter at 2^64 - 2, which an LEU that reads it never lets it reach.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&raw const one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Marks the LEU as going to sleep; the caller then looks at its queues once more and
    /// sleeps only if they are empty.
    pub fn going_to_sleep(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Marks the LEU awake.
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

/// What the LEUs of one appliance share.
#[derive(Debug)]
pub struct Team {
    /// Each LEU's wake.
    pub wakes: Vec<Wake>,
    /// LEUs that have stopped and have nothing of their own left in flight.
    pub quiet: AtomicUsize,
    /// Set when an LEU's loop fails: the others stop too.
    pub failed: AtomicBool,
    /// Idle merges running in the team: every LEU goes quiet at once after a bulk load, and
    /// each full merge holds up to `merged_table_bytes` of vectors in memory, so the LEUs
    /// take turns (`ServerConfig::idle_merges_at_once`).
    pub merges: AtomicUsize,
    /// Client connections open on every LEU together: `ServerConfig::connections_max`
    /// bounds this sum (the limit is the appliance's, not each LEU's).
    pub connections: AtomicUsize,
    /// Each LEU's published shard view (`vortex_shard::view`), set by the LEU once its shard
    /// is open and before it passes the start gate: what a whole search on any LEU reads.
    pub views: Vec<OnceLock<PublishedView>>,
    /// The node's index tier (`vortex_shard::tier`), when one runs: set by the appliance
    /// before its go.
    pub tier: OnceLock<TierGraphs>,
}

/// One LEU's ends of the queues between LEUs.
#[derive(Debug)]
pub struct Links {
    /// This LEU.
    pub leu: u16,
    /// The placement of points.
    pub ring: Arc<Ring>,
    /// The team.
    pub team: Arc<Team>,
    /// Requests to each other LEU (`None` at this LEU's own place).
    pub requests_out: Vec<Option<Producer<Handover>>>,
    /// Requests from each other LEU.
    pub requests_in: Vec<Option<Consumer<Handover>>>,
    /// Replies to each other LEU.
    pub replies_out: Vec<Option<Producer<Reply>>>,
    /// Replies from each other LEU.
    pub replies_in: Vec<Option<Consumer<Reply>>>,
}

impl Links {
    /// The links of an LEU that serves alone (LEU 0 of a team of one).
    pub fn solo() -> io::Result<Links> {
        let ring = Ring::new(1, 1)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
        let mut links = team(ring, 1)?;
        links
            .pop()
            .ok_or_else(|| io::Error::other("a team of one has one LEU"))
    }

    /// The LEUs in the team.
    pub fn leus(&self) -> usize {
        self.ring.leus()
    }

    /// Whether any queue into this LEU holds something.
    pub fn has_inbound(&self) -> bool {
        self.requests_in.iter().flatten().any(|q| !q.is_empty())
            || self.replies_in.iter().flatten().any(|q| !q.is_empty())
    }

    /// How many requests one LEU may have out to another: the reply queue's capacity.
    pub fn window(&self) -> usize {
        self.replies_out
            .iter()
            .flatten()
            .map(|q| q.capacity())
            .min()
            .unwrap_or(0)
    }
}

/// The links of a team of `ring.leus()` LEUs, queues of `capacity` slots (rounded up to a
/// power of two), in LEU order.
pub fn team(ring: Ring, capacity: usize) -> io::Result<Vec<Links>> {
    let leus = ring.leus();
    let refused = || io::Error::new(io::ErrorKind::InvalidInput, "bad queue capacity");
    let requests = Mesh::<Handover>::new(leus, capacity).ok_or_else(refused)?;
    let replies = Mesh::<Reply>::new(leus, capacity).ok_or_else(refused)?;
    let wakes = (0..leus)
        .map(|_| Wake::new())
        .collect::<io::Result<Vec<_>>>()?;
    let team = Arc::new(Team {
        wakes,
        quiet: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        merges: AtomicUsize::new(0),
        connections: AtomicUsize::new(0),
        views: (0..leus).map(|_| OnceLock::new()).collect(),
        tier: OnceLock::new(),
    });
    let ring = Arc::new(ring);
    let Mesh {
        senders: request_senders,
        receivers: request_receivers,
    } = requests;
    let Mesh {
        senders: reply_senders,
        receivers: reply_receivers,
    } = replies;
    Ok(request_senders
        .into_iter()
        .zip(request_receivers)
        .zip(reply_senders.into_iter().zip(reply_receivers))
        .enumerate()
        .map(
            |(leu, ((requests_out, requests_in), (replies_out, replies_in)))| Links {
                leu: leu as u16,
                ring: Arc::clone(&ring),
                team: Arc::clone(&team),
                requests_out,
                requests_in,
                replies_out,
                replies_in,
            },
        )
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeping_leu_is_woken_through_its_eventfd() {
        let links = team(Ring::new(2, 64).unwrap(), 8).unwrap();
        let wake = &links[1].team.wakes[1];
        let read = || {
            let mut ready = libc::pollfd {
                fd: wake.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one live pollfd without waiting.
            if unsafe { libc::poll(&mut ready, 1, 0) } != 1 {
                return None;
            }
            let mut value = 0u64;
            // SAFETY: reads 8 bytes into a live u64 from an eventfd we own (readable, so
            // the read does not block).
            let n = unsafe { libc::read(wake.fd.as_raw_fd(), (&raw mut value).cast(), 8) };
            (n == 8).then_some(value)
        };
        wake.after_push();
        assert_eq!(read(), None, "an awake LEU is not signalled");
        wake.going_to_sleep();
        wake.after_push();
        wake.after_push();
        assert_eq!(read(), Some(2));
        wake.awake();
        assert_eq!(links[0].window(), 8);
        assert!(!links[1].has_inbound());
    }
}

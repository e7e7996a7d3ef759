//! A ring of provided buffers (`IORING_REGISTER_PBUF_RING`, Linux 5.19): buffers handed to
//! the kernel up front, from which it picks one for each multishot receive completion.
//!
//! Connections then hold no buffer while they are idle: a buffer is only taken when bytes
//! arrive. The caller owns the buffers' memory (the dataplane's `BufferPool`); this module
//! only publishes their addresses to the kernel. When the ring is empty, a multishot
//! receive ends with `ENOBUFS`, which is how a full LEU stops reading.

use crate::ring::{RingDriver, RingError};
use io_uring::types::BufRingEntry;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// A registered ring of provided buffers.
#[derive(Debug)]
pub struct ProvidedRing {
    base: *mut BufRingEntry,
    map_bytes: usize,
    entries: u16,
    /// The next slot to fill (the kernel sees slots up to the published tail).
    tail: u16,
    group: u16,
}

impl ProvidedRing {
    /// A ring of `entries` slots (a power of two, at most 32,768) for buffer group `group`,
    /// registered with `ring`. The ring starts empty: [`push`](Self::push) buffers into it.
    /// `ring` must outlive this value's use, and is dropped before it (io_uring unregisters
    /// the group when the ring closes).
    pub fn register<T>(
        ring: &mut RingDriver<T>,
        entries: u16,
        group: u16,
    ) -> Result<ProvidedRing, RingError> {
        if !entries.is_power_of_two() || entries > 32_768 {
            return Err(RingError::Register(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{entries} provided buffers: give a power of two up to 32768"),
            )));
        }
        let map_bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: a fresh private anonymous mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(RingError::Register(io::Error::last_os_error()));
        }
        let provided = ProvidedRing {
            base: base.cast(),
            map_bytes,
            entries,
            tail: 0,
            group,
        };
        // SAFETY: the mapping is page-aligned, zeroed (tail 0), `entries` slots long, and
        // lives until `provided` drops; the caller drops the ring first.
        unsafe { ring.register_buf_ring(provided.base as u64, entries, group) }?;
        Ok(provided)
    }

    /// The buffer group id, for `RecvMulti`.
    pub fn group(&self) -> u16 {
        self.group
    }

    /// Slots in the ring.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Queues buffer `id` (`len` bytes at `address`) for the kernel; it sees it after
    /// [`publish`](Self::publish).
    ///
    /// # Safety
    /// The memory stays valid and is neither read nor written by the caller until the
    /// kernel hands the buffer back in a completion (or the io_uring is closed). The caller
    /// never has more than `entries` buffers in the ring.
    pub unsafe fn push(&mut self, address: *mut u8, len: u32, id: u16) {
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot` is within the mapping; the kernel does not read slots past the
        // published tail, so this write does not race with it.
        let entry = unsafe { &mut *self.base.add(slot) };
        entry.set_addr(address as u64);
        entry.set_len(len);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed buffers visible to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: the tail field is the `resv` u16 of the first slot (the kernel's
        // `io_uring_buf_ring` layout), inside the mapping and 2-aligned; the kernel only
        // reads it, so an atomic release store publishes the slots written before it.
        let tail = unsafe { &*BufRingEntry::tail(self.base).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for ProvidedRing {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `register`; the io_uring that used it is gone.
        unsafe { libc::munmap(self.base.cast(), self.map_bytes) };
    }
}

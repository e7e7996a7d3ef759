//! `BufferPool`: pre-allocated, 4 KiB-aligned buffers in two size classes, leased and
//! returned, with a persistence lock for write handover.
//!
//! On a server every buffer is allocated (and zero-filled, so its pages are resident and,
//! after `mlockall`, locked) when the pool is built ([`BufferPool::new`]); nothing is
//! allocated afterwards. A client, which starts often and rarely needs its large buffers,
//! builds the pool with [`BufferPool::on_demand`]: a buffer is allocated the first time a
//! lease needs it and kept afterwards, up to the same counts. A lease *owns*
//! its buffer's memory (moved out of the pool's free list and back on drop), so the pool
//! cannot hand the same buffer out twice: Rust's ownership is the tracking, and the per-buffer
//! state table records it for stats and for the property test.
//!
//! The handover (the plan's "persistence" state): a received buffer becomes a
//! [`SharedBuffer`] that every frame sliced from it holds. A write's frame takes a
//! [`PersistLock`] on its buffer; the buffer returns to the pool only when every frame and
//! every lock is gone, so a buffer whose bytes the WAL has not yet made durable is never
//! reused. The pool is per LEU and single-threaded (`Rc`), like everything an LEU owns.

use aligned_vec::{ABox, AVec, ConstAlign};
use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

/// Buffer alignment: a page, as Direct I/O and provided-buffer rings want.
pub const BUFFER_ALIGN: usize = 4096;
/// Most buffers in one size class.
pub const BUFFER_COUNT_MAX: usize = 1 << 20;

type Memory = ABox<[u8], ConstAlign<BUFFER_ALIGN>>;

/// The three buffer sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeClass {
    /// Receive buffers; most frames live here.
    Standard,
    /// Frames larger than a standard buffer and no larger than a medium one (bulk writes
    /// of a few hundred vectors), assembled across receives; many at a time.
    Medium,
    /// Frames larger than a medium buffer, up to the largest accepted; few at a time.
    Large,
}

impl SizeClass {
    /// Every class, smallest first.
    pub const ALL: [SizeClass; 3] = [SizeClass::Standard, SizeClass::Medium, SizeClass::Large];

    fn index(self) -> usize {
        match self {
            SizeClass::Standard => 0,
            SizeClass::Medium => 1,
            SizeClass::Large => 2,
        }
    }
}

/// Pool dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Bytes per standard buffer, a multiple of 4096.
    pub buffer_bytes: usize,
    /// Standard buffers.
    pub buffer_count: usize,
    /// Bytes per medium buffer, a multiple of 4096, from `buffer_bytes` to
    /// `large_buffer_bytes`.
    pub medium_buffer_bytes: usize,
    /// Medium buffers.
    pub medium_buffer_count: usize,
    /// Bytes per large buffer, a multiple of 4096, at least `medium_buffer_bytes`; at least
    /// the largest frame accepted.
    pub large_buffer_bytes: usize,
    /// Large buffers.
    pub large_buffer_count: usize,
}

impl Default for PoolConfig {
    /// 256 × 64 KiB receive buffers, 16 × 1 MiB and 2 × 16 MiB frame buffers: 64 MiB per
    /// LEU.
    fn default() -> Self {
        PoolConfig {
            buffer_bytes: 64 << 10,
            buffer_count: 256,
            medium_buffer_bytes: 1 << 20,
            medium_buffer_count: 16,
            large_buffer_bytes: 16 << 20,
            large_buffer_count: 2,
        }
    }
}

/// Pool errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every buffer of the class is leased: the LEU should answer THROTTLED.
    #[error("buffer pool exhausted: all {count} {class:?} buffers are in use")]
    Exhausted {
        /// The class.
        class: SizeClass,
        /// Its buffer count.
        count: usize,
    },
    /// No class holds this many bytes.
    #[error("{bytes} bytes do not fit the largest pool buffer ({max} bytes)")]
    TooLarge {
        /// Requested.
        bytes: usize,
        /// Largest buffer.
        max: usize,
    },
    /// The configuration is unusable.
    #[error("invalid buffer pool configuration: {0}")]
    Config(String),
}

/// A zero-filled buffer of `bytes` (a multiple of [`BUFFER_ALIGN`]), its pages resident.
fn allocate(bytes: usize) -> Memory {
    let mut vec = AVec::<u8, ConstAlign<BUFFER_ALIGN>>::with_capacity(0, bytes);
    // SAFETY: the capacity is `bytes`; every byte is written (a memset, fast even
    // unoptimised) before the length covers it.
    unsafe {
        std::ptr::write_bytes(vec.as_mut_ptr(), 0, bytes);
        vec.set_len(bytes);
        vec.into_boxed_slice()
    }
}

/// What the pool knows about one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferState {
    /// In the free list.
    Free,
    /// Owned by a lease.
    Leased,
    /// Owned by a lease and held by at least one persistence lock.
    Locked,
}

/// Counts per class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Free buffers.
    pub free: usize,
    /// Leased, not locked.
    pub leased: usize,
    /// Locked for persistence.
    pub locked: usize,
    /// Lease attempts refused for exhaustion.
    pub exhausted: u64,
}

struct ClassPool {
    buffer_bytes: usize,
    free: Vec<(u32, Memory)>,
    /// Buffers not allocated yet (on-demand pools), next to allocate last.
    unborn: Vec<u32>,
    states: Vec<BufferState>,
    locks: Vec<u32>,
    exhausted: u64,
}

struct Inner {
    classes: [RefCell<ClassPool>; 3],
}

/// A per-LEU pool of pre-allocated buffers. Cloning gives another handle to the same pool.
#[derive(Clone)]
pub struct BufferPool {
    inner: Rc<Inner>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("standard", &self.stats(SizeClass::Standard))
            .field("medium", &self.stats(SizeClass::Medium))
            .field("large", &self.stats(SizeClass::Large))
            .finish()
    }
}

impl BufferPool {
    /// Allocates every buffer now.
    pub fn new(config: PoolConfig) -> Result<Self, PoolError> {
        Self::build(config, true)
    }

    /// Allocates each buffer when a lease first needs it (at most the configured counts).
    pub fn on_demand(config: PoolConfig) -> Result<Self, PoolError> {
        Self::build(config, false)
    }

    fn build(config: PoolConfig, upfront: bool) -> Result<Self, PoolError> {
        for (name, bytes, count) in [
            ("buffer", config.buffer_bytes, config.buffer_count),
            (
                "medium buffer",
                config.medium_buffer_bytes,
                config.medium_buffer_count,
            ),
            (
                "large buffer",
                config.large_buffer_bytes,
                config.large_buffer_count,
            ),
        ] {
            if bytes == 0 || bytes % BUFFER_ALIGN != 0 {
                return Err(PoolError::Config(format!(
                    "{name} size {bytes} is not a positive multiple of {BUFFER_ALIGN}"
                )));
            }
            if count == 0 || count > BUFFER_COUNT_MAX {
                return Err(PoolError::Config(format!(
                    "{name} count {count} is not from 1 to {BUFFER_COUNT_MAX}"
                )));
            }
        }
        if config.medium_buffer_bytes < config.buffer_bytes
            || config.large_buffer_bytes < config.medium_buffer_bytes
        {
            return Err(PoolError::Config(
                "buffer sizes must grow from standard to medium to large".to_owned(),
            ));
        }
        let class = |bytes: usize, count: usize| {
            let ids = (0..count as u32).rev();
            let (free, unborn) = if upfront {
                (ids.map(|id| (id, allocate(bytes))).collect(), Vec::new())
            } else {
                (Vec::new(), ids.collect())
            };
            RefCell::new(ClassPool {
                buffer_bytes: bytes,
                free,
                unborn,
                states: vec![BufferState::Free; count],
                locks: vec![0; count],
                exhausted: 0,
            })
        };
        Ok(BufferPool {
            inner: Rc::new(Inner {
                classes: [
                    class(config.buffer_bytes, config.buffer_count),
                    class(config.medium_buffer_bytes, config.medium_buffer_count),
                    class(config.large_buffer_bytes, config.large_buffer_count),
                ],
            }),
        })
    }

    /// Calls `visit` with each buffer that is not leased, standard ones first (the receive
    /// buffers, the hottest), then medium, then large: how the dataplane locks the pool's
    /// memory as far as `RLIMIT_MEMLOCK` allows.
    pub fn for_each_free_buffer(&self, mut visit: impl FnMut(&[u8])) {
        for class in &self.inner.classes {
            for (_, memory) in class.borrow().free.iter() {
                visit(memory);
            }
        }
    }

    /// Leases a buffer of `class`.
    pub fn lease(&self, class: SizeClass) -> Result<Lease, PoolError> {
        self.lease_counted(class, true)
    }

    /// Leases a buffer of `class`; an empty class counts as a refusal (`exhausted`, which
    /// makes an LEU THROTTLED) only when `count_refusal`.
    fn lease_counted(&self, class: SizeClass, count_refusal: bool) -> Result<Lease, PoolError> {
        let mut pool = self.inner.classes[class.index()].borrow_mut();
        let born = match pool.free.pop() {
            Some(buffer) => Some(buffer),
            None => {
                let bytes = pool.buffer_bytes;
                pool.unborn.pop().map(|id| (id, allocate(bytes)))
            }
        };
        let Some((id, memory)) = born else {
            if count_refusal {
                pool.exhausted += 1;
            }
            return Err(PoolError::Exhausted {
                class,
                count: pool.states.len(),
            });
        };
        debug_assert_eq!(pool.states[id as usize], BufferState::Free);
        pool.states[id as usize] = BufferState::Leased;
        Ok(Lease {
            pool: Rc::clone(&self.inner),
            class,
            id,
            memory: Some(memory),
        })
    }

    /// Leases the smallest buffer that holds `bytes` (a large one when every medium one
    /// that would do is leased).
    pub fn lease_for(&self, bytes: usize) -> Result<Lease, PoolError> {
        if bytes <= self.buffer_bytes(SizeClass::Standard) {
            self.lease(SizeClass::Standard)
        } else if bytes <= self.buffer_bytes(SizeClass::Medium) {
            // No medium buffer is a refusal only if no large one stands in.
            self.lease_counted(SizeClass::Medium, false)
                .or_else(|_| self.lease(SizeClass::Large))
        } else if bytes <= self.buffer_bytes(SizeClass::Large) {
            self.lease(SizeClass::Large)
        } else {
            Err(PoolError::TooLarge {
                bytes,
                max: self.buffer_bytes(SizeClass::Large),
            })
        }
    }

    /// Bytes per buffer of `class`.
    pub fn buffer_bytes(&self, class: SizeClass) -> usize {
        self.inner.classes[class.index()].borrow().buffer_bytes
    }

    /// Buffers in `class`.
    pub fn buffer_count(&self, class: SizeClass) -> usize {
        self.inner.classes[class.index()].borrow().states.len()
    }

    /// The state of buffer `id` of `class`.
    pub fn state(&self, class: SizeClass, id: u32) -> Option<BufferState> {
        self.inner.classes[class.index()]
            .borrow()
            .states
            .get(id as usize)
            .copied()
    }

    /// Counts for `class`.
    pub fn stats(&self, class: SizeClass) -> ClassStats {
        let pool = self.inner.classes[class.index()].borrow();
        let mut stats = ClassStats {
            exhausted: pool.exhausted,
            ..ClassStats::default()
        };
        for state in &pool.states {
            match state {
                BufferState::Free => stats.free += 1,
                BufferState::Leased => stats.leased += 1,
                BufferState::Locked => stats.locked += 1,
            }
        }
        stats
    }
}

/// Exclusive ownership of one pool buffer; returns it to the pool on drop.
pub struct Lease {
    pool: Rc<Inner>,
    class: SizeClass,
    id: u32,
    /// Invariant: `Some` from lease until drop.
    memory: Option<Memory>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("class", &self.class)
            .field("id", &self.id)
            .finish()
    }
}

impl Lease {
    /// The buffer's id within its class.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its size class.
    pub fn class(&self) -> SizeClass {
        self.class
    }

    /// Its size in bytes.
    pub fn capacity(&self) -> usize {
        self.as_slice().len()
    }

    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        self.memory.as_deref().unwrap_or(&[])
    }

    /// The whole buffer, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.memory.as_deref_mut().unwrap_or(&mut [])
    }

    /// Turns the lease into a buffer that frames can share.
    pub fn share(self) -> SharedBuffer {
        SharedBuffer {
            lease: Rc::new(self),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(memory) = self.memory.take() else {
            return;
        };
        let mut pool = self.pool.classes[self.class.index()].borrow_mut();
        let id = self.id as usize;
        // Invariant: a lease is dropped only when no persistence lock holds it (locks hold
        // a SharedBuffer, which holds the lease).
        debug_assert_eq!(pool.locks[id], 0, "buffer returned while locked");
        pool.states[id] = BufferState::Free;
        pool.free.push((self.id, memory));
    }
}

/// A leased buffer shared by the frames sliced from it; returns to the pool when the last
/// holder (frame or persistence lock) is dropped.
#[derive(Clone)]
pub struct SharedBuffer {
    lease: Rc<Lease>,
}

impl fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBuffer")
            .field("lease", &*self.lease)
            .field("holders", &Rc::strong_count(&self.lease))
            .finish()
    }
}

impl SharedBuffer {
    /// The whole buffer.
    pub fn as_slice(&self) -> &[u8] {
        self.lease.as_slice()
    }

    /// The buffer's id within its class.
    pub fn id(&self) -> u32 {
        self.lease.id
    }

    /// Its size class.
    pub fn class(&self) -> SizeClass {
        self.lease.class
    }

    /// Keeps the buffer out of the pool until the lock is released: taken by a write whose
    /// bytes are not yet durable.
    pub fn lock_for_persistence(&self) -> PersistLock {
        let mut pool = self.lease.pool.classes[self.lease.class.index()].borrow_mut();
        let id = self.lease.id as usize;
        pool.locks[id] += 1;
        pool.states[id] = BufferState::Locked;
        PersistLock {
            buffer: self.clone(),
        }
    }
}

/// A persistence lock on a buffer: the buffer is not reused while it exists.
pub struct PersistLock {
    buffer: SharedBuffer,
}

impl fmt::Debug for PersistLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersistLock")
            .field("buffer", &self.buffer.lease.id)
            .finish()
    }
}

impl PersistLock {
    /// The locked buffer.
    pub fn buffer(&self) -> &SharedBuffer {
        &self.buffer
    }

    /// Persistence is done: release the lock (same as dropping it).
    pub fn release(self) {}
}

impl Drop for PersistLock {
    fn drop(&mut self) {
        let lease = &self.buffer.lease;
        let mut pool = lease.pool.classes[lease.class.index()].borrow_mut();
        let id = lease.id as usize;
        pool.locks[id] -= 1;
        if pool.locks[id] == 0 {
            pool.states[id] = BufferState::Leased;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small_pool() -> BufferPool {
        BufferPool::new(PoolConfig {
            buffer_bytes: 4096,
            buffer_count: 4,
            medium_buffer_bytes: 8192,
            medium_buffer_count: 1,
            large_buffer_bytes: 16384,
            large_buffer_count: 1,
        })
        .unwrap()
    }

    #[test]
    fn an_on_demand_pool_allocates_at_the_first_lease_and_keeps_its_counts() {
        let pool = BufferPool::on_demand(PoolConfig {
            buffer_bytes: 4096,
            buffer_count: 2,
            medium_buffer_bytes: 8192,
            medium_buffer_count: 1,
            large_buffer_bytes: 1 << 20,
            large_buffer_count: 1,
        })
        .unwrap();
        let mut allocated = 0;
        pool.for_each_free_buffer(|_| allocated += 1);
        assert_eq!(allocated, 0, "nothing allocated before a lease");
        assert_eq!(pool.stats(SizeClass::Standard).free, 2);
        let first = pool.lease(SizeClass::Standard).unwrap();
        let second = pool.lease(SizeClass::Standard).unwrap();
        assert_eq!(first.capacity(), 4096);
        assert_eq!(first.as_slice().as_ptr() as usize % BUFFER_ALIGN, 0);
        assert!(first.as_slice().iter().all(|&b| b == 0));
        assert!(matches!(
            pool.lease(SizeClass::Standard),
            Err(PoolError::Exhausted { count: 2, .. })
        ));
        drop(first);
        // The returned buffer is reused, not a new one allocated.
        let again = pool.lease(SizeClass::Standard).unwrap();
        drop((again, second));
        let mut sizes = Vec::new();
        pool.for_each_free_buffer(|buffer| sizes.push(buffer.len()));
        assert_eq!(sizes, [4096, 4096], "the large buffer was never needed");
        assert_eq!(pool.lease_for(5000).unwrap().capacity(), 8192);
    }

    #[test]
    fn free_buffers_are_visited_smallest_class_first_and_leased_ones_skipped() {
        let pool = small_pool();
        let mut sizes = Vec::new();
        pool.for_each_free_buffer(|buffer| sizes.push(buffer.len()));
        assert_eq!(sizes, [4096, 4096, 4096, 4096, 8192, 16384]);
        let _lease = pool.lease(SizeClass::Standard).unwrap();
        let mut count = 0;
        pool.for_each_free_buffer(|_| count += 1);
        assert_eq!(count, 5);
    }

    #[test]
    fn buffers_are_page_aligned_and_sized() {
        let pool = small_pool();
        let lease = pool.lease(SizeClass::Standard).unwrap();
        assert_eq!(lease.as_slice().as_ptr() as usize % BUFFER_ALIGN, 0);
        assert_eq!(lease.capacity(), 4096);
        let medium = pool.lease_for(5000).unwrap();
        assert_eq!(medium.class(), SizeClass::Medium);
        assert_eq!(medium.capacity(), 8192);
        // Every medium buffer leased: a large one does.
        let large = pool.lease_for(5000).unwrap();
        assert_eq!(large.class(), SizeClass::Large);
        assert_eq!(large.capacity(), 16384);
        assert_eq!(
            pool.stats(SizeClass::Medium).exhausted,
            0,
            "the large one stood in"
        );
        assert!(pool.lease_for(5000).is_err());
        assert_eq!(pool.stats(SizeClass::Large).exhausted, 1);
        drop(medium);
        assert_eq!(
            pool.lease_for(9000).unwrap_err(),
            PoolError::Exhausted {
                class: SizeClass::Large,
                count: 1,
            }
        );
        assert_eq!(
            pool.lease_for(20000).unwrap_err(),
            PoolError::TooLarge {
                bytes: 20000,
                max: 16384
            }
        );
    }

    #[test]
    fn exhaustion_is_an_error_and_returns_refill() {
        let pool = small_pool();
        let leases: Vec<_> = (0..4)
            .map(|_| pool.lease(SizeClass::Standard).unwrap())
            .collect();
        assert!(matches!(
            pool.lease(SizeClass::Standard),
            Err(PoolError::Exhausted { count: 4, .. })
        ));
        assert_eq!(pool.stats(SizeClass::Standard).exhausted, 1);
        drop(leases);
        assert_eq!(pool.stats(SizeClass::Standard).free, 4);
        pool.lease(SizeClass::Standard).unwrap();
    }

    #[test]
    fn a_locked_buffer_outlives_its_frames() {
        let pool = small_pool();
        let shared = pool.lease(SizeClass::Standard).unwrap().share();
        let id = shared.id();
        let lock = shared.lock_for_persistence();
        assert_eq!(
            pool.state(SizeClass::Standard, id),
            Some(BufferState::Locked)
        );
        drop(shared);
        // Every frame is gone, the WAL has not acked: still locked, not in the free list.
        assert_eq!(
            pool.state(SizeClass::Standard, id),
            Some(BufferState::Locked)
        );
        assert_eq!(pool.stats(SizeClass::Standard).free, 3);
        lock.release();
        assert_eq!(pool.state(SizeClass::Standard, id), Some(BufferState::Free));
        assert_eq!(pool.stats(SizeClass::Standard).free, 4);
    }

    #[test]
    fn bad_configs_are_refused() {
        let good = PoolConfig::default();
        for bad in [
            PoolConfig {
                buffer_bytes: 1000,
                ..good
            },
            PoolConfig {
                buffer_count: 0,
                ..good
            },
            PoolConfig {
                large_buffer_bytes: 4096,
                buffer_bytes: 8192,
                ..good
            },
        ] {
            assert!(matches!(BufferPool::new(bad), Err(PoolError::Config(_))));
        }
    }

    #[derive(Debug, Clone)]
    enum Action {
        Lease,
        DropLease(usize),
        Share(usize),
        Lock(usize),
        DropShared(usize),
        Release(usize),
        Write(usize, u8),
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            3 => Just(Action::Lease),
            1 => any::<usize>().prop_map(Action::DropLease),
            1 => any::<usize>().prop_map(Action::Share),
            2 => any::<usize>().prop_map(Action::Lock),
            1 => any::<usize>().prop_map(Action::DropShared),
            2 => any::<usize>().prop_map(Action::Release),
            2 => (any::<usize>(), any::<u8>()).prop_map(|(index, byte)| Action::Write(index, byte)),
        ]
    }

    proptest! {
        /// The pool as a state machine against a model: a buffer is never handed out twice,
        /// a locked buffer is never reused, contents written through a lease survive while
        /// anything holds the buffer, and the counts always add up.
        #[test]
        fn pool_state_machine(actions in proptest::collection::vec(action(), 1..200)) {
            let pool = small_pool();
            let mut leases: Vec<(Lease, u8)> = Vec::new();
            let mut shared: Vec<(SharedBuffer, u8)> = Vec::new();
            let mut locks: Vec<(PersistLock, u8)> = Vec::new();
            for action in actions {
                match action {
                    Action::Lease => match pool.lease(SizeClass::Standard) {
                        Ok(lease) => {
                            let id = lease.id();
                            // Never an id some holder still has.
                            prop_assert!(leases.iter().all(|(held, _)| held.id() != id));
                            prop_assert!(shared.iter().all(|(held, _)| held.id() != id));
                            prop_assert!(locks.iter().all(|(held, _)| held.buffer().id() != id));
                            // A recycled buffer keeps its old bytes (the pool does not clear
                            // them); every write in this model fills whole buffers.
                            let byte = lease.as_slice()[0];
                            leases.push((lease, byte));
                        }
                        Err(PoolError::Exhausted { .. }) => {
                            let mut ids: Vec<u32> = leases.iter().map(|(lease, _)| lease.id())
                                .chain(shared.iter().map(|(buffer, _)| buffer.id()))
                                .chain(locks.iter().map(|(lock, _)| lock.buffer().id()))
                                .collect();
                            ids.sort_unstable();
                            ids.dedup();
                            prop_assert_eq!(ids.len(), 4, "exhausted with free buffers");
                        }
                        Err(other) => prop_assert!(false, "{other}"),
                    },
                    Action::DropLease(index) if !leases.is_empty() => {
                        leases.swap_remove(index % leases.len());
                    }
                    Action::Share(index) if !leases.is_empty() => {
                        let (lease, byte) = leases.swap_remove(index % leases.len());
                        shared.push((lease.share(), byte));
                    }
                    Action::Lock(index) if !shared.is_empty() => {
                        let (buffer, byte) = &shared[index % shared.len()];
                        locks.push((buffer.lock_for_persistence(), *byte));
                    }
                    Action::DropShared(index) if !shared.is_empty() => {
                        shared.swap_remove(index % shared.len());
                    }
                    Action::Release(index) if !locks.is_empty() => {
                        locks.swap_remove(index % locks.len()).0.release();
                    }
                    Action::Write(index, byte) if !leases.is_empty() => {
                        let position = index % leases.len();
                        let (lease, expected) = &mut leases[position];
                        lease.as_mut_slice().fill(byte);
                        *expected = byte;
                    }
                    _ => {}
                }
                // Contents held anywhere are what was written.
                for (lease, byte) in &leases {
                    prop_assert!(lease.as_slice().iter().all(|b| b == byte));
                }
                for (buffer, byte) in &shared {
                    prop_assert!(buffer.as_slice().iter().all(|b| b == byte));
                }
                for (lock, byte) in &locks {
                    prop_assert!(lock.buffer().as_slice().iter().all(|b| b == byte));
                    prop_assert_eq!(pool.state(SizeClass::Standard, lock.buffer().id()), Some(BufferState::Locked));
                }
                // Counts add up.
                let stats = pool.stats(SizeClass::Standard);
                prop_assert_eq!(stats.free + stats.leased + stats.locked, 4);
                let mut locked_ids: Vec<u32> = locks.iter().map(|(lock, _)| lock.buffer().id()).collect();
                locked_ids.sort_unstable();
                locked_ids.dedup();
                prop_assert_eq!(stats.locked, locked_ids.len());
            }
        }
    }
}

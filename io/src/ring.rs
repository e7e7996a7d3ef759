//! `RingDriver`: one io_uring per LEU, shared by that LEU's network and disk I/O.
//!
//! Why one ring for both: an LEU is one thread that polls; with one ring, a single
//! `io_uring_enter` submits socket receives and WAL writes together and one pass over the
//! completion queue reaps both, so neither kind of I/O waits behind the other's syscall.
//!
//! What the driver adds to the raw ring:
//!
//! - **Setup flags probed, with fallback.** The best flags for a single-threaded poller are
//!   tried one at a time (`SINGLE_ISSUER`, `DEFER_TASKRUN`, `TASKRUN_FLAG`, `COOP_TASKRUN`,
//!   `SUBMIT_ALL`, or `SQPOLL` when configured); each the kernel refuses is recorded in
//!   [`RingSetup::refused`] with the reason, and the ring is built from the ones it accepted.
//! - **Bounded in-flight operations.** At most `inflight_max` operations are submitted and not
//!   yet completed, no more than the completion queue holds, so completions never overflow and
//!   an LEU that asks for more gets [`PushError::Busy`] (the reactor's THROTTLED signal).
//! - **Completion dispatch by user data.** Each operation gets a slot from a table allocated
//!   up front; the user data carries the slot index and a generation, so a completion finds
//!   its owner (any `T` the LEU chooses: a connection, a WAL write) without a map lookup, and
//!   a stale completion is caught rather than delivered to the slot's next owner.
//!   Multishot operations keep their slot until the completion without `IORING_CQE_F_MORE`.
//!
//! The ring must be created on the thread that uses it: with `SINGLE_ISSUER` the kernel
//! refuses submissions from any other task. `RingDriver` is therefore neither `Send` nor
//! `Sync`.

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// The user data of the driver's own operations (cancellations at drop); their completions
/// are consumed by the driver.
const USER_DATA_INTERNAL: u64 = u64::MAX;
/// Ring size used while probing setup flags: the answer does not depend on it.
const PROBE_ENTRIES: u32 = 8;
/// How long drop waits for cancelled operations before leaking their owners.
const DROP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What a [`RingDriver`] is built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Submission queue entries (a power of two); the completion queue gets twice as many.
    pub queue_depth: u32,
    /// In-flight operations at most; clamped to the completion queue's size.
    pub inflight_max: u32,
    /// Ask for a kernel submission-polling thread.
    pub sqpoll: bool,
    /// Idle time before the SQPOLL thread sleeps.
    pub sqpoll_idle_ms: u32,
    /// CPU to pin the SQPOLL thread to (the LEU core's idle SMT sibling, typically).
    pub sqpoll_cpu: Option<u32>,
}

impl RingConfig {
    /// The ring an LEU runs with, from the appliance config.
    pub fn from_config(config: &vortex_config::IoUringConfig) -> Self {
        RingConfig {
            queue_depth: config.queue_depth,
            inflight_max: config.inflight_max,
            sqpoll: config.sqpoll,
            sqpoll_idle_ms: config.sqpoll_idle_ms,
            sqpoll_cpu: None,
        }
    }

    /// A ring with no optional setup flag at all: the baseline the NOP benchmark compares to.
    pub fn plain(queue_depth: u32) -> Self {
        RingConfig {
            queue_depth,
            inflight_max: queue_depth,
            sqpoll: false,
            sqpoll_idle_ms: 0,
            sqpoll_cpu: None,
        }
    }
}

/// An optional `io_uring_setup` flag the driver may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetupFlag {
    /// `IORING_SETUP_SINGLE_ISSUER` (6.0): only one task submits; lets the kernel skip locking.
    SingleIssuer,
    /// `IORING_SETUP_DEFER_TASKRUN` (6.1): completion work runs only when the LEU asks for
    /// completions, never interrupting it.
    DeferTaskrun,
    /// `IORING_SETUP_TASKRUN_FLAG` (5.19): the kernel flags pending completion work in the SQ
    /// ring, so the LEU enters the kernel only when there is some.
    TaskrunFlag,
    /// `IORING_SETUP_COOP_TASKRUN` (5.19): no inter-processor interrupt to run completion work.
    CoopTaskrun,
    /// `IORING_SETUP_SUBMIT_ALL` (5.18): a failing submission does not stop the batch.
    SubmitAll,
    /// `IORING_SETUP_SQPOLL` (5.11 unprivileged): a kernel thread polls the submission queue.
    Sqpoll,
}

impl SetupFlag {
    /// The flag's kernel name.
    pub fn name(self) -> &'static str {
        match self {
            SetupFlag::SingleIssuer => "SINGLE_ISSUER",
            SetupFlag::DeferTaskrun => "DEFER_TASKRUN",
            SetupFlag::TaskrunFlag => "TASKRUN_FLAG",
            SetupFlag::CoopTaskrun => "COOP_TASKRUN",
            SetupFlag::SubmitAll => "SUBMIT_ALL",
            SetupFlag::Sqpoll => "SQPOLL",
        }
    }

    /// Flags that must already be accepted for this one to be tried.
    fn requires(self) -> &'static [SetupFlag] {
        match self {
            SetupFlag::DeferTaskrun => &[SetupFlag::SingleIssuer],
            _ => &[],
        }
    }

    /// Whether this flag works alongside `other` (the kernel refuses `DEFER_TASKRUN` with
    /// `SQPOLL`; `TASKRUN_FLAG` needs `COOP_TASKRUN` or `DEFER_TASKRUN`, checked in order).
    fn compatible_with(self, accepted: &[SetupFlag]) -> bool {
        match self {
            SetupFlag::TaskrunFlag => accepted
                .iter()
                .any(|flag| matches!(flag, SetupFlag::DeferTaskrun | SetupFlag::CoopTaskrun)),
            _ => true,
        }
    }
}

impl fmt::Display for SetupFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the ring was set up, for logs, `topology --verify` and `vortexctl doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSetup {
    /// Flags in use.
    pub accepted: Vec<SetupFlag>,
    /// Flags asked for and not in use, with why.
    pub refused: Vec<(SetupFlag, String)>,
    /// Submission queue entries the kernel gave.
    pub sq_entries: u32,
    /// Completion queue entries the kernel gave.
    pub cq_entries: u32,
    /// The in-flight bound in force.
    pub inflight_max: u32,
    /// Whether the kernel keeps completions that do not fit (`IORING_FEAT_NODROP`).
    pub feature_nodrop: bool,
    /// Whether `io_uring_enter` takes a timeout argument (`IORING_FEAT_EXT_ARG`, 5.11).
    pub feature_ext_arg: bool,
}

impl RingSetup {
    /// Whether `flag` is in use.
    pub fn uses(&self, flag: SetupFlag) -> bool {
        self.accepted.contains(&flag)
    }
}

/// Errors of the ring itself.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The kernel refused to create even a plain ring.
    #[error("io_uring is unavailable: {source}; {hint}")]
    Unavailable {
        /// The setup error.
        source: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// `io_uring_enter` failed.
    #[error("io_uring_enter failed: {0}")]
    Enter(#[source] io::Error),
    /// A registration (`io_uring_register`) was refused.
    #[error("io_uring_register failed: {0}")]
    Register(#[source] io::Error),
}

/// Why an operation was not queued; the owner comes back.
#[derive(Debug)]
pub enum PushError<T> {
    /// `inflight_max` operations are in flight: back off (THROTTLED) and retry after reaping.
    Busy(T),
    /// The submission queue was full and submitting to make room failed.
    Ring(T, io::Error),
}

impl<T> PushError<T> {
    /// The owner of the refused operation.
    pub fn into_owner(self) -> T {
        match self {
            PushError::Busy(owner) | PushError::Ring(owner, _) => owner,
        }
    }
}

/// Identifies one submitted operation: slot index and generation, as in its user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpId {
    index: u32,
    generation: u32,
}

impl OpId {
    pub(crate) fn new(index: u32, generation: u32) -> Self {
        OpId { index, generation }
    }

    pub(crate) fn index(self) -> u32 {
        self.index
    }

    pub(crate) fn generation(self) -> u32 {
        self.generation
    }

    fn user_data(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    fn from_user_data(user_data: u64) -> Self {
        OpId {
            index: user_data as u32,
            generation: (user_data >> 32) as u32,
        }
    }
}

/// One completion, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The operation.
    pub op: OpId,
    /// The raw result: a count or `-errno`.
    pub result: i32,
    /// `IORING_CQE_F_*` flags.
    pub flags: u32,
}

impl Completion {
    /// The result as an `io::Result`.
    pub fn outcome(&self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }

    /// Whether more completions of this (multishot) operation will follow.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer the kernel picked, for buffer-select operations.
    pub fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// The owner of a completed operation: borrowed while a multishot operation goes on,
/// handed back after its last completion.
#[derive(Debug)]
pub enum Owner<'a, T> {
    /// More completions will follow; the slot stays.
    Continuing(&'a mut T),
    /// The operation is over; its slot is free again.
    Finished(T),
}

/// Counters, for stats and the NOP benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Operations queued.
    pub pushed: u64,
    /// Operations completed (last completion seen).
    pub completed: u64,
    /// Submit and wait calls made; each enters the kernel, except under SQPOLL when the
    /// polling thread is awake and nothing is awaited.
    pub submit_calls: u64,
    /// Pushes refused because `inflight_max` operations were in flight.
    pub busy: u64,
    /// Completions whose user data matched no live operation (a bug if ever non-zero).
    pub unmatched: u64,
    /// The most operations in flight at once.
    pub inflight_peak: u32,
}

enum Slot<T> {
    Free { generation: u32 },
    Busy { generation: u32, owner: T },
}

/// One LEU's io_uring.
pub struct RingDriver<T> {
    ring: IoUring,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    inflight: u32,
    setup: RingSetup,
    probe: Probe,
    stats: RingStats,
    /// Invariant: created on, and used from, one thread (`SINGLE_ISSUER`).
    _single_thread: PhantomData<*mut ()>,
}

impl<T> fmt::Debug for RingDriver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingDriver")
            .field("setup", &self.setup)
            .field("inflight", &self.inflight)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T> RingDriver<T> {
    /// Creates the ring on the calling thread with the best setup flags the kernel accepts.
    pub fn new(config: &RingConfig) -> Result<Self, RingError> {
        let wanted: &[SetupFlag] = if config.sqpoll {
            &[
                SetupFlag::Sqpoll,
                SetupFlag::SingleIssuer,
                SetupFlag::SubmitAll,
            ]
        } else {
            &[
                SetupFlag::SingleIssuer,
                SetupFlag::DeferTaskrun,
                SetupFlag::CoopTaskrun,
                SetupFlag::TaskrunFlag,
                SetupFlag::SubmitAll,
            ]
        };
        Self::with_flags(config, wanted)
    }

    /// Creates the ring asking for exactly `wanted` (each still probed, in order).
    pub fn with_flags(config: &RingConfig, wanted: &[SetupFlag]) -> Result<Self, RingError> {
        assert!(
            config.queue_depth.is_power_of_two(),
            "queue depth must be a power of two (the config validates it)"
        );
        // A plain ring first: if even that fails, say why io_uring is unavailable.
        drop(build_ring(config, &[], PROBE_ENTRIES).map_err(unavailable)?);
        let mut accepted: Vec<SetupFlag> = Vec::new();
        let mut refused: Vec<(SetupFlag, String)> = Vec::new();
        for &flag in wanted {
            if let Some(missing) = flag.requires().iter().find(|need| !accepted.contains(need)) {
                refused.push((flag, format!("needs {missing}")));
                continue;
            }
            if !flag.compatible_with(&accepted) {
                refused.push((flag, "needs COOP_TASKRUN or DEFER_TASKRUN".to_owned()));
                continue;
            }
            let mut trial = accepted.clone();
            trial.push(flag);
            match build_ring(config, &trial, PROBE_ENTRIES) {
                Ok(ring) => {
                    drop(ring);
                    accepted = trial;
                }
                Err(error) => refused.push((flag, refusal_reason(flag, &error))),
            }
        }
        let ring = build_ring(config, &accepted, config.queue_depth).map_err(unavailable)?;
        let params = ring.params();
        let inflight_max = config.inflight_max.clamp(1, params.cq_entries());
        let setup = RingSetup {
            accepted,
            refused,
            sq_entries: params.sq_entries(),
            cq_entries: params.cq_entries(),
            inflight_max,
            feature_nodrop: params.is_feature_nodrop(),
            feature_ext_arg: params.is_feature_ext_arg(),
        };
        let mut probe = Probe::new();
        if ring.submitter().register_probe(&mut probe).is_err() {
            // Kernels before 5.6 cannot tell; the probe then reports nothing as supported.
            probe = Probe::new();
        }
        let slot_count = inflight_max as usize;
        let slots = (0..slot_count)
            .map(|_| Slot::Free { generation: 0 })
            .collect();
        // Pop from the end: lowest indices first, which keeps the table warm in cache.
        let free = (0..inflight_max).rev().collect();
        Ok(RingDriver {
            ring,
            slots,
            free,
            inflight: 0,
            setup,
            probe,
            stats: RingStats::default(),
            _single_thread: PhantomData,
        })
    }

    /// How the ring was set up.
    pub fn setup(&self) -> &RingSetup {
        &self.setup
    }

    /// Counters since creation.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Operations submitted and not yet completed.
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// How many more operations may be pushed before [`PushError::Busy`].
    pub fn capacity_left(&self) -> u32 {
        self.setup.inflight_max - self.inflight
    }

    /// Registers a provided-buffer ring (see [`crate::provided`]).
    ///
    /// # Safety
    /// `address` is page-aligned, holds `entries` buffer-ring slots, and stays mapped until
    /// this ring is dropped.
    pub(crate) unsafe fn register_buf_ring(
        &mut self,
        address: u64,
        entries: u16,
        group: u16,
    ) -> Result<(), RingError> {
        // SAFETY: the caller's contract is the kernel's.
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(address, entries, group, 0)
        }
        .map_err(RingError::Register)
    }

    /// Whether the kernel supports `opcode` (from `IORING_REGISTER_PROBE`).
    pub fn supports(&self, opcode: u8) -> bool {
        self.probe.is_supported(opcode)
    }

    /// Queues a no-op owned by `owner`. NOPs reference no memory, so this is safe.
    pub fn push_nop(&mut self, owner: T) -> Result<OpId, PushError<T>> {
        // SAFETY: a NOP refers to no buffer and no file descriptor.
        unsafe { self.push(opcode::Nop::new().build(), owner) }
    }

    /// Queues `entry` (its user data is overwritten) on behalf of `owner`; it reaches the
    /// kernel at the next [`submit`](Self::submit) or wait.
    ///
    /// # Safety
    /// Every buffer, file descriptor and other pointer the entry refers to must stay valid
    /// until this operation's last completion has been dispatched by [`reap`](Self::reap)
    /// (the usual way: `owner` holds them).
    pub unsafe fn push(&mut self, entry: squeue::Entry, owner: T) -> Result<OpId, PushError<T>> {
        if self.free.is_empty() {
            self.stats.busy += 1;
            return Err(PushError::Busy(owner));
        }
        if let Err(error) = self.make_room() {
            return Err(PushError::Ring(owner, error));
        }
        let Some(index) = self.free.pop() else {
            unreachable!("free list checked non-empty above");
        };
        let slot = &mut self.slots[index as usize];
        let generation = match slot {
            Slot::Free { generation } => *generation,
            Slot::Busy { .. } => unreachable!("slot {index} on the free list is busy"),
        };
        *slot = Slot::Busy { generation, owner };
        let op = OpId { index, generation };
        let entry = entry.user_data(op.user_data());
        // SAFETY: the caller guarantees the entry's memory outlives the operation.
        unsafe { self.push_entry(&entry) };
        self.inflight += 1;
        self.stats.pushed += 1;
        self.stats.inflight_peak = self.stats.inflight_peak.max(self.inflight);
        Ok(op)
    }

    /// Queues `ops` as one chain linked with `IOSQE_IO_LINK`: each starts only after the one
    /// before it succeeded; after a failure (or a short read or write) the rest complete with
    /// `-ECANCELED`. All or nothing: if the chain does not fit in the in-flight bound, nothing
    /// is queued and the owners come back in `Busy`.
    ///
    /// # Safety
    /// As for [`push`](Self::push), for every entry.
    pub unsafe fn push_chain(
        &mut self,
        ops: Vec<(squeue::Entry, T)>,
    ) -> Result<(), PushError<Vec<(squeue::Entry, T)>>> {
        if ops.len() > self.free.len() {
            self.stats.busy += 1;
            return Err(PushError::Busy(ops));
        }
        let last = ops.len().saturating_sub(1);
        // Room for the whole chain in the SQ first, so that it cannot be cut in two.
        if self.sq_room() < ops.len() {
            self.stats.submit_calls += 1;
            if let Err(error) = self.ring.submit() {
                return Err(PushError::Ring(ops, error));
            }
        }
        if self.sq_room() < ops.len() {
            return Err(PushError::Busy(ops));
        }
        for (position, (entry, owner)) in ops.into_iter().enumerate() {
            let entry = if position < last {
                entry.flags(squeue::Flags::IO_LINK)
            } else {
                entry
            };
            // SAFETY: forwarded from the caller. Capacity was checked above, so this push
            // cannot be refused halfway through the chain.
            let pushed = unsafe { self.push(entry, owner) };
            debug_assert!(pushed.is_ok(), "chain push refused after capacity check");
        }
        Ok(())
    }

    /// Asks the kernel to cancel `op`; its completion then arrives with `-ECANCELED` (or its
    /// real result if it finished first).
    pub fn cancel(&mut self, op: OpId) -> Result<(), RingError> {
        let entry = opcode::AsyncCancel::new(op.user_data())
            .build()
            .user_data(USER_DATA_INTERNAL);
        self.make_room().map_err(RingError::Enter)?;
        // SAFETY: a cancel refers only to a user data value, no memory.
        unsafe { self.push_entry(&entry) };
        Ok(())
    }

    /// Submits what is queued without waiting. With `DEFER_TASKRUN` this also runs pending
    /// completion work when the kernel flags some.
    pub fn submit(&mut self) -> Result<usize, RingError> {
        self.stats.submit_calls += 1;
        self.ring.submit().map_err(RingError::Enter)
    }

    /// Submits what is queued and waits until at least `want` completions are ready.
    pub fn submit_and_wait(&mut self, want: usize) -> Result<usize, RingError> {
        self.stats.submit_calls += 1;
        match self.ring.submit_and_wait(want) {
            Ok(count) => Ok(count),
            Err(error) if error.raw_os_error() == Some(libc::EINTR) => Ok(0),
            Err(error) => Err(RingError::Enter(error)),
        }
    }

    /// Submits and waits for `want` completions or until `timeout` passes, whichever is first.
    pub fn submit_and_wait_timeout(
        &mut self,
        want: usize,
        timeout: Duration,
    ) -> Result<usize, RingError> {
        self.stats.submit_calls += 1;
        if !self.setup.feature_ext_arg {
            // Kernels before 5.11: no timed wait; do not block at all.
            return self.ring.submit().map_err(RingError::Enter);
        }
        let timespec = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&timespec);
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(count) => Ok(count),
            Err(error) if matches!(error.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => Ok(0),
            Err(error) => Err(RingError::Enter(error)),
        }
    }

    /// Dispatches every ready completion to `on_completion` with its owner, and returns how
    /// many it dispatched. Does not enter the kernel: pair it with a submit or wait.
    pub fn reap(&mut self, mut on_completion: impl FnMut(Completion, Owner<'_, T>)) -> usize {
        let mut dispatched = 0;
        loop {
            // Take completions one at a time so that the handler may push new operations.
            let Some(entry) = self.ring.completion().next() else {
                break;
            };
            let user_data = entry.user_data();
            if user_data == USER_DATA_INTERNAL {
                continue;
            }
            let op = OpId::from_user_data(user_data);
            let completion = Completion {
                op,
                result: entry.result(),
                flags: entry.flags(),
            };
            let Some(slot) = self.slots.get_mut(op.index as usize) else {
                self.stats.unmatched += 1;
                debug_assert!(false, "completion for slot {} out of range", op.index);
                continue;
            };
            match slot {
                Slot::Busy { generation, owner } if *generation == op.generation => {
                    dispatched += 1;
                    if completion.more() {
                        on_completion(completion, Owner::Continuing(owner));
                        continue;
                    }
                    let next = generation.wrapping_add(1);
                    let Slot::Busy { owner, .. } =
                        std::mem::replace(slot, Slot::Free { generation: next })
                    else {
                        unreachable!("slot matched as busy");
                    };
                    self.free.push(op.index);
                    self.inflight -= 1;
                    self.stats.completed += 1;
                    on_completion(completion, Owner::Finished(owner));
                }
                _ => {
                    self.stats.unmatched += 1;
                    debug_assert!(false, "stale completion for {op:?}");
                }
            }
        }
        dispatched
    }

    /// Free entries in the submission queue.
    fn sq_room(&mut self) -> usize {
        let submission = self.ring.submission();
        submission.capacity() - submission.len()
    }

    /// Makes room for one entry in the submission queue, submitting what is queued if it is
    /// full. The in-flight bound keeps completions within the CQ, so this cannot overflow it.
    fn make_room(&mut self) -> io::Result<()> {
        if !self.ring.submission().is_full() {
            return Ok(());
        }
        self.stats.submit_calls += 1;
        self.ring.submit()?;
        if self.ring.submission().is_full() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        Ok(())
    }

    /// Pushes a raw entry into a submission queue that has room (see `make_room`).
    ///
    /// # Safety
    /// As for [`push`](Self::push).
    unsafe fn push_entry(&mut self, entry: &squeue::Entry) {
        // SAFETY: forwarded from the caller.
        let pushed = unsafe { self.ring.submission().push(entry) };
        debug_assert!(pushed.is_ok(), "push_entry without room in the SQ");
    }
}

impl<T> Drop for RingDriver<T> {
    fn drop(&mut self) {
        if self.inflight == 0 {
            return;
        }
        // The kernel may still write into buffers that owners hold: cancel everything and
        // wait for the last completions before the owners are dropped.
        let busy: Vec<OpId> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| match slot {
                Slot::Busy { generation, .. } => Some(OpId {
                    index: index as u32,
                    generation: *generation,
                }),
                Slot::Free { .. } => None,
            })
            .collect();
        for op in busy {
            if self.cancel(op).is_err() {
                break;
            }
        }
        let deadline = Instant::now() + DROP_DRAIN_TIMEOUT;
        while self.inflight > 0 && Instant::now() < deadline {
            if self
                .submit_and_wait_timeout(1, Duration::from_millis(50))
                .is_err()
            {
                break;
            }
            self.reap(|_, _| {});
        }
        if self.inflight > 0 {
            // Operations the kernel would not give back: their memory must never be freed.
            tracing::error!(
                inflight = self.inflight,
                "io_uring operations did not complete at shutdown; leaking their buffers"
            );
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}

fn build_ring(config: &RingConfig, flags: &[SetupFlag], entries: u32) -> io::Result<IoUring> {
    let mut builder = IoUring::builder();
    builder.setup_cqsize(entries * 2);
    for flag in flags {
        match flag {
            SetupFlag::SingleIssuer => builder.setup_single_issuer(),
            SetupFlag::DeferTaskrun => builder.setup_defer_taskrun(),
            SetupFlag::TaskrunFlag => builder.setup_taskrun_flag(),
            SetupFlag::CoopTaskrun => builder.setup_coop_taskrun(),
            SetupFlag::SubmitAll => builder.setup_submit_all(),
            SetupFlag::Sqpoll => {
                if let Some(cpu) = config.sqpoll_cpu {
                    builder.setup_sqpoll_cpu(cpu);
                }
                builder.setup_sqpoll(config.sqpoll_idle_ms)
            }
        };
    }
    builder.build(entries)
}

fn refusal_reason(flag: SetupFlag, error: &io::Error) -> String {
    match (flag, error.raw_os_error()) {
        (_, Some(libc::EINVAL)) => "not supported by this kernel (EINVAL)".to_owned(),
        (SetupFlag::Sqpoll, Some(libc::EPERM)) => {
            "needs CAP_SYS_NICE on kernels before 5.11 (EPERM)".to_owned()
        }
        _ => error.to_string(),
    }
}

fn unavailable(source: io::Error) -> RingError {
    let hint = match source.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel lacks io_uring (5.1 or later is needed, 6.1 or later recommended), or a seccomp filter blocks it",
        Some(libc::EPERM) => "io_uring is disabled: check the sysctl kernel.io_uring_disabled (0 enables it) and any seccomp or container policy",
        Some(libc::ENOMEM) => "ring memory counts against RLIMIT_MEMLOCK for processes without CAP_IPC_LOCK: raise the limit (LimitMEMLOCK=infinity) or lower io_uring.queue_depth",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "out of file descriptors: raise the open-files limit",
        _ => "see INSTALL.md for the kernel requirements",
    };
    RingError::Unavailable { source, hint }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn driver<T>() -> RingDriver<T> {
        RingDriver::new(&RingConfig::plain(32)).expect("io_uring on the test machine")
    }

    #[test]
    fn nops_complete_and_dispatch_to_their_owners() {
        let mut ring: RingDriver<u32> = driver();
        for owner in 0..10 {
            ring.push_nop(owner).unwrap();
        }
        assert_eq!(ring.inflight(), 10);
        ring.submit_and_wait(10).unwrap();
        let mut seen = Vec::new();
        let count = ring.reap(|completion, owner| {
            assert_eq!(completion.result, 0);
            assert!(!completion.more());
            match owner {
                Owner::Finished(owner) => seen.push(owner),
                Owner::Continuing(_) => panic!("a NOP is single-shot"),
            }
        });
        assert_eq!(count, 10);
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<u32>>());
        assert_eq!(ring.inflight(), 0);
        assert_eq!(ring.stats().completed, 10);
        assert_eq!(ring.stats().unmatched, 0);
    }

    #[test]
    fn inflight_is_bounded_and_the_owner_comes_back() {
        let mut config = RingConfig::plain(8);
        config.inflight_max = 4;
        let mut ring: RingDriver<&'static str> = RingDriver::new(&config).unwrap();
        assert_eq!(ring.setup().inflight_max, 4);
        for _ in 0..4 {
            ring.push_nop("ok").unwrap();
        }
        assert_eq!(ring.capacity_left(), 0);
        let refused = ring.push_nop("refused").unwrap_err();
        assert_eq!(refused.into_owner(), "refused");
        assert_eq!(ring.stats().busy, 1);
        ring.submit_and_wait(4).unwrap();
        assert_eq!(ring.reap(|_, _| {}), 4);
        // Slots are reused after completion, with a new generation.
        for _ in 0..4 {
            ring.push_nop("again").unwrap();
        }
        ring.submit_and_wait(4).unwrap();
        assert_eq!(ring.reap(|_, _| {}), 4);
    }

    #[test]
    fn inflight_max_is_clamped_to_the_completion_queue() {
        let mut config = RingConfig::plain(8);
        config.inflight_max = 10_000;
        let ring: RingDriver<()> = RingDriver::new(&config).unwrap();
        assert_eq!(ring.setup().inflight_max, ring.setup().cq_entries);
    }

    #[test]
    fn more_pushes_than_sq_entries_submit_to_make_room() {
        let mut config = RingConfig::plain(8);
        config.inflight_max = 16;
        let mut ring: RingDriver<u32> = RingDriver::new(&config).unwrap();
        for owner in 0..16 {
            ring.push_nop(owner).unwrap();
        }
        ring.submit_and_wait(16).unwrap();
        let mut total = 0;
        while total < 16 {
            total += ring.reap(|_, _| {});
            if total < 16 {
                ring.submit_and_wait(1).unwrap();
            }
        }
        assert_eq!(total, 16);
    }

    #[test]
    fn best_flags_are_probed_and_reported() {
        let ring: RingDriver<()> = RingDriver::new(&RingConfig::plain(64)).unwrap();
        let setup = ring.setup();
        // Every wanted flag is either accepted or refused with a reason, never lost.
        for flag in [
            SetupFlag::SingleIssuer,
            SetupFlag::DeferTaskrun,
            SetupFlag::CoopTaskrun,
            SetupFlag::TaskrunFlag,
            SetupFlag::SubmitAll,
        ] {
            let refused = setup.refused.iter().any(|(refused, _)| *refused == flag);
            assert!(setup.uses(flag) != refused, "{flag} both or neither");
        }
        assert!(setup.sq_entries >= 64);
        assert!(ring.supports(opcode::Nop::CODE));
    }

    #[test]
    fn flag_dependencies_are_respected_without_asking_the_kernel() {
        // DEFER_TASKRUN without SINGLE_ISSUER, TASKRUN_FLAG alone: refused before any setup.
        let ring: RingDriver<()> = RingDriver::with_flags(
            &RingConfig::plain(8),
            &[SetupFlag::DeferTaskrun, SetupFlag::TaskrunFlag],
        )
        .unwrap();
        assert!(ring.setup().accepted.is_empty());
        assert_eq!(ring.setup().refused.len(), 2);
        assert!(ring.setup().refused[0].1.contains("SINGLE_ISSUER"));
    }

    #[test]
    fn sqpoll_is_probed_and_falls_back_cleanly() {
        let mut config = RingConfig::plain(8);
        config.sqpoll = true;
        config.sqpoll_idle_ms = 10;
        let mut ring: RingDriver<u8> = RingDriver::new(&config).unwrap();
        // Accepted or refused, the ring works.
        ring.push_nop(7).unwrap();
        ring.submit_and_wait(1).unwrap();
        let mut owners = Vec::new();
        while owners.is_empty() {
            ring.reap(|_, owner| {
                if let Owner::Finished(owner) = owner {
                    owners.push(owner);
                }
            });
        }
        assert_eq!(owners, vec![7]);
        assert!(!ring.setup().uses(SetupFlag::DeferTaskrun));
    }

    #[test]
    fn a_broken_chain_cancels_the_rest() {
        let mut ring: RingDriver<&'static str> = driver();
        let mut buffer = [0u8; 16];
        // A read from an invalid descriptor fails, so the linked NOPs after it are cancelled.
        let read =
            opcode::Read::new(types::Fd(-1), buffer.as_mut_ptr(), buffer.len() as u32).build();
        let chain = vec![
            (read, "read"),
            (opcode::Nop::new().build(), "second"),
            (opcode::Nop::new().build(), "third"),
        ];
        // SAFETY: `buffer` outlives the operations: they are reaped below.
        unsafe { ring.push_chain(chain) }.unwrap();
        ring.submit_and_wait(3).unwrap();
        let mut results = Vec::new();
        ring.reap(|completion, owner| {
            if let Owner::Finished(name) = owner {
                results.push((name, completion.result));
            }
        });
        results.sort_unstable();
        assert_eq!(
            results,
            vec![
                ("read", -libc::EBADF),
                ("second", -libc::ECANCELED),
                ("third", -libc::ECANCELED),
            ]
        );
    }

    #[test]
    fn a_chain_that_does_not_fit_is_refused_whole() {
        let mut config = RingConfig::plain(8);
        config.inflight_max = 2;
        let mut ring: RingDriver<u8> = RingDriver::new(&config).unwrap();
        let chain = vec![
            (opcode::Nop::new().build(), 1),
            (opcode::Nop::new().build(), 2),
            (opcode::Nop::new().build(), 3),
        ];
        // SAFETY: NOPs refer to no memory.
        let refused = unsafe { ring.push_chain(chain) }.unwrap_err();
        assert_eq!(refused.into_owner().len(), 3);
        assert_eq!(ring.inflight(), 0);
    }

    #[test]
    fn cancel_and_drop_with_operations_in_flight() {
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut ring: RingDriver<Box<[u8; 64]>> = driver();
        let mut buffer = Box::new([0u8; 64]);
        let pointer = buffer.as_mut_ptr();
        let read = opcode::Read::new(types::Fd(reader.as_raw_fd()), pointer, 64).build();
        // SAFETY: the box owning the buffer is the owner; the driver keeps it until the
        // read's completion, and the heap allocation does not move when the box does.
        let op = unsafe { ring.push(read, buffer) }.unwrap();
        ring.submit().unwrap();
        // Nothing to read: the read waits. Cancel it.
        ring.cancel(op).unwrap();
        let mut result = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        while result.is_none() && Instant::now() < deadline {
            ring.submit_and_wait_timeout(1, Duration::from_millis(100))
                .unwrap();
            ring.reap(|completion, _| result = Some(completion.result));
        }
        assert_eq!(result, Some(-libc::ECANCELED));

        // A pending read left at drop is cancelled and drained, not freed under the kernel.
        let mut buffer = Box::new([0u8; 64]);
        let pointer = buffer.as_mut_ptr();
        let read = opcode::Read::new(types::Fd(reader.as_raw_fd()), pointer, 64).build();
        // SAFETY: as above.
        unsafe { ring.push(read, buffer) }.unwrap();
        ring.submit().unwrap();
        drop(ring);
        drop(writer);
    }

    #[test]
    fn timed_wait_returns_when_nothing_completes() {
        let mut ring: RingDriver<()> = driver();
        let started = Instant::now();
        let count = ring
            .submit_and_wait_timeout(1, Duration::from_millis(20))
            .unwrap();
        assert_eq!(count, 0);
        assert!(started.elapsed() >= Duration::from_millis(15));
    }
}

//! The LEU's one io_uring, shared by its reactor and its shard's WAL (issue #22 item 6).
//!
//! The WAL queues its write chains here ([`SharedLogRing`]) instead of on a ring of its own:
//! the loop's one `io_uring_enter` per pass submits the answers' sends and the log's writes
//! together, and a log write's completion wakes the loop's wait like a receive does, so an
//! acknowledgement goes out as soon as its write is durable rather than at the next poll of
//! a second ring.
//!
//! Completions are sorted as they are reaped: the log's go to the WAL (its next poll takes
//! them), the reactor's become [`Event`]s. The WAL drives the ring itself only in a blocking
//! call (the sync at the end of the loop); what such a wait reaps for the reactor is kept
//! and handed to the loop's next reap, so no completion is lost whoever reaped it.
//!
//! Borrows of the ring never outlive one call of these methods, and none calls back into the
//! shard, so the WAL (reached only through the shard, from the loop) never finds the ring
//! borrowed.

use super::{Event, Op};
use std::cell::{Cell, RefCell};
use std::io;
use std::rc::{Rc, Weak};
use std::time::Duration;
#[cfg(test)]
use vortex_io::FakeRing;
use vortex_io::{Completion, OpId, Owner, PushError, RingDriver, RingError};
use vortex_storage::{LogChain, LogOp, SharedLogRing};

/// The ring under a [`LeuRing`]: the kernel's, or in the server's unit tests a fake one
/// whose completions the test writes (`server/tests.rs`).
// One per LEU, made once and never moved: the variants' sizes do not matter.
#[cfg_attr(test, allow(clippy::large_enum_variant))]
pub(super) enum Driver {
    Kernel(RingDriver<Op>),
    #[cfg(test)]
    Fake(Box<FakeRing<Op>>),
}

type Entry = io_uring::squeue::Entry;

impl Driver {
    /// # Safety
    ///
    /// As [`RingDriver::push`].
    unsafe fn push(&mut self, entry: Entry, op: Op) -> Result<OpId, PushError<Op>> {
        match self {
            // SAFETY: forwarded from the caller.
            Driver::Kernel(ring) => unsafe { ring.push(entry, op) },
            #[cfg(test)]
            Driver::Fake(ring) => ring.push(entry, op),
        }
    }

    /// # Safety
    ///
    /// As [`RingDriver::push_chain`].
    unsafe fn push_chain(
        &mut self,
        ops: Vec<(Entry, Op)>,
    ) -> Result<(), PushError<Vec<(Entry, Op)>>> {
        match self {
            // SAFETY: forwarded from the caller.
            Driver::Kernel(ring) => unsafe { ring.push_chain(ops) },
            #[cfg(test)]
            Driver::Fake(ring) => ring.push_chain(ops),
        }
    }

    fn cancel(&mut self, op: OpId) -> Result<(), RingError> {
        match self {
            Driver::Kernel(ring) => ring.cancel(op),
            #[cfg(test)]
            Driver::Fake(ring) => {
                ring.cancel(op);
                Ok(())
            }
        }
    }

    fn inflight(&self) -> u32 {
        match self {
            Driver::Kernel(ring) => ring.inflight(),
            #[cfg(test)]
            Driver::Fake(ring) => ring.inflight(),
        }
    }

    fn capacity_left(&self) -> u32 {
        match self {
            Driver::Kernel(ring) => ring.capacity_left(),
            #[cfg(test)]
            Driver::Fake(ring) => ring.capacity_left(),
        }
    }

    fn submit(&mut self) -> Result<usize, RingError> {
        match self {
            Driver::Kernel(ring) => ring.submit(),
            #[cfg(test)]
            Driver::Fake(ring) => Ok(ring.submit()),
        }
    }

    fn submit_and_wait_timeout(
        &mut self,
        want: usize,
        timeout: Duration,
    ) -> Result<usize, RingError> {
        match self {
            Driver::Kernel(ring) => ring.submit_and_wait_timeout(want, timeout),
            #[cfg(test)]
            Driver::Fake(ring) => Ok(ring.submit_and_wait_timeout(want, timeout)),
        }
    }

    fn reap(&mut self, on_completion: impl FnMut(Completion, Owner<'_, Op>)) -> usize {
        match self {
            Driver::Kernel(ring) => ring.reap(on_completion),
            #[cfg(test)]
            Driver::Fake(ring) => ring.reap(on_completion),
        }
    }
}

/// The ring and what its reaps sorted out for the WAL and the loop.
pub(super) struct LeuRing {
    driver: RefCell<Driver>,
    /// The log's completed writes, for the WAL's next poll.
    log_done: RefCell<Vec<(LogOp, i32)>>,
    /// The loop's completions that a wait of the WAL's reaped, for the loop's next reap.
    parked: RefCell<Vec<(Completion, Event)>>,
    /// The log's operations that completed on this ring (stats: `wal_ops_on_leu_ring`).
    log_completed: Cell<u64>,
}

impl LeuRing {
    pub(super) fn new(driver: Driver) -> Rc<LeuRing> {
        Rc::new(LeuRing {
            driver: RefCell::new(driver),
            log_done: RefCell::new(Vec::new()),
            parked: RefCell::new(Vec::new()),
            log_completed: Cell::new(0),
        })
    }

    /// The fake ring under a test's server.
    #[cfg(test)]
    pub(super) fn fake(&self) -> std::cell::RefMut<'_, FakeRing<Op>> {
        std::cell::RefMut::map(self.driver.borrow_mut(), |driver| match driver {
            Driver::Fake(ring) => &mut **ring,
            Driver::Kernel(_) => panic!("this server runs on the kernel's ring"),
        })
    }

    /// The log's operations that completed on this ring so far.
    pub(super) fn log_completed(&self) -> u64 {
        self.log_completed.get()
    }

    /// The handle the shard's WAL holds: weak, so that the ring drops with the server (before
    /// the sockets and buffers its operations use), whatever the shard does after.
    pub(super) fn for_log(self: &Rc<Self>) -> Weak<dyn SharedLogRing> {
        let weak: Weak<LeuRing> = Rc::downgrade(self);
        weak
    }

    /// Queues an operation of the loop's.
    ///
    /// # Safety
    ///
    /// As [`RingDriver::push`]: the memory `entry` refers to is owned by `op` or outlives the
    /// operation.
    pub(super) unsafe fn push(
        &self,
        entry: io_uring::squeue::Entry,
        op: Op,
    ) -> Result<OpId, PushError<Op>> {
        // SAFETY: forwarded from the caller.
        unsafe { self.driver.borrow_mut().push(entry, op) }
    }

    pub(super) fn cancel(&self, op: OpId) -> Result<(), RingError> {
        self.driver.borrow_mut().cancel(op)
    }

    pub(super) fn inflight(&self) -> u32 {
        self.driver.borrow().inflight()
    }

    pub(super) fn capacity_left(&self) -> u32 {
        self.driver.borrow().capacity_left()
    }

    pub(super) fn submit(&self) -> Result<usize, RingError> {
        self.driver.borrow_mut().submit()
    }

    pub(super) fn submit_and_wait_timeout(
        &self,
        want: usize,
        timeout: Duration,
    ) -> Result<usize, RingError> {
        self.driver
            .borrow_mut()
            .submit_and_wait_timeout(want, timeout)
    }

    /// Moves what completed into `events` (the parked completions first, in the order they
    /// were reaped) and the log's completions to the WAL; returns how many completions
    /// there were for the loop.
    pub(super) fn reap(&self, events: &mut Vec<(Completion, Event)>) -> usize {
        let parked = {
            let mut parked = self.parked.borrow_mut();
            let count = parked.len();
            events.append(&mut parked);
            count
        };
        parked + self.reap_into(events)
    }

    fn reap_into(&self, events: &mut Vec<(Completion, Event)>) -> usize {
        let mut log_done = self.log_done.borrow_mut();
        let mut reaped = 0;
        self.driver.borrow_mut().reap(|completion, owner| {
            if let Owner::Finished(Op::Log(op)) = owner {
                log_done.push((op, completion.result));
                self.log_completed.set(self.log_completed.get() + 1);
                return;
            }
            reaped += 1;
            events.push((completion, event_of(&completion, owner)));
        });
        reaped
    }
}

/// What a completion means to the loop.
fn event_of(completion: &Completion, owner: Owner<'_, Op>) -> Event {
    match owner {
        // A multishot accept goes on.
        Owner::Continuing(Op::Accept { .. }) => Event::Accepted,
        Owner::Continuing(Op::RecvMulti { conn }) => Event::Received {
            conn: *conn,
            last: false,
        },
        Owner::Finished(Op::RecvMulti { conn }) => Event::Received { conn, last: true },
        // A zero-copy send's own completion; its notification ends it.
        Owner::Continuing(Op::SendZc { result, .. }) => {
            *result = Some(completion.result);
            Event::Ignored
        }
        Owner::Continuing(_) => Event::Ignored,
        Owner::Finished(op) => Event::Finished(op),
    }
}

impl SharedLogRing for LeuRing {
    unsafe fn push_log_chain(&self, ops: LogChain) -> Result<(), PushError<LogChain>> {
        let ops = ops
            .into_iter()
            .map(|(entry, op)| (entry, Op::Log(op)))
            .collect();
        // SAFETY: forwarded from the caller (each entry's memory is owned by its log op).
        let pushed = unsafe { self.driver.borrow_mut().push_chain(ops) };
        pushed.map_err(|refused| match refused {
            PushError::Busy(ops) => PushError::Busy(log_ops(ops)),
            PushError::Ring(ops, error) => PushError::Ring(log_ops(ops), error),
        })
    }

    fn wait(&self, timeout: Duration) -> io::Result<()> {
        self.submit_and_wait_timeout(1, timeout)
            .map_err(io::Error::other)?;
        let mut parked = self.parked.borrow_mut();
        self.reap_into(&mut parked);
        Ok(())
    }

    fn take_log_completions(&self, done: &mut Vec<(LogOp, i32)>) {
        done.append(&mut self.log_done.borrow_mut());
    }
}

/// A refused chain's log ops back (it holds nothing else).
fn log_ops(ops: Vec<(io_uring::squeue::Entry, Op)>) -> LogChain {
    ops.into_iter()
        .filter_map(|(entry, op)| match op {
            Op::Log(op) => Some((entry, op)),
            _ => None,
        })
        .collect()
}

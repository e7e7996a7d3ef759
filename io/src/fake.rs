//! `FakeRing`: a ring with no kernel behind it, for unit tests of code that drives a
//! [`RingDriver`](crate::RingDriver) (the dataplane's reactor).
//!
//! It takes the same calls as the driver (push, chains, cancel, submit, wait, reap, the
//! in-flight bound) and keeps each operation's owner until the test completes it: the test
//! looks at what was pushed ([`FakeRing::pending`]), fills a receive's buffer through its
//! owner ([`FakeRing::owner_mut`]), and decides every result ([`FakeRing::complete`]):
//! short transfers, errors, a multishot operation that goes on, completions held back or
//! delivered out of order. Submission queue entries are dropped unread: the kernel is not
//! there to act on them, so the owners are the whole story. Waits never block.
//!
//! The driver's contracts hold here too: at most `inflight_max` operations at once
//! ([`PushError::Busy`] past it), a completion reaches its owner once and only while the
//! operation lives, and a multishot completion (`more`) leaves the operation in flight.

use crate::ring::{Completion, OpId, Owner, PushError};
use io_uring::squeue;
use std::collections::VecDeque;
use std::time::Duration;

/// `IORING_CQE_F_MORE`: more completions of this operation follow.
const CQE_F_MORE: u32 = 1 << 1;

/// A ring whose completions the test writes. See the module documentation.
pub struct FakeRing<T> {
    slots: Vec<Option<(u32, T)>>,
    generations: Vec<u32>,
    inflight_max: u32,
    inflight: u32,
    /// Completions the test made, not yet reaped.
    ready: VecDeque<Completion>,
    /// Submit and wait calls, as the driver counts them.
    submits: u64,
    /// Operations whose cancellation was asked for, in order.
    cancelled: Vec<OpId>,
}

impl<T> std::fmt::Debug for FakeRing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRing")
            .field("inflight", &self.inflight)
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl<T> FakeRing<T> {
    /// A fake ring that holds at most `inflight_max` operations.
    pub fn new(inflight_max: u32) -> Self {
        FakeRing {
            slots: Vec::new(),
            generations: Vec::new(),
            inflight_max,
            inflight: 0,
            ready: VecDeque::new(),
            submits: 0,
            cancelled: Vec::new(),
        }
    }

    /// Queues an operation (its entry is not read).
    pub fn push(&mut self, _entry: squeue::Entry, owner: T) -> Result<OpId, PushError<T>> {
        if self.inflight >= self.inflight_max {
            return Err(PushError::Busy(owner));
        }
        let index = match self.slots.iter().position(Option::is_none) {
            Some(index) => index,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        let generation = self.generations[index];
        self.slots[index] = Some((generation, owner));
        self.inflight += 1;
        Ok(OpId::new(index as u32, generation))
    }

    /// Queues a chain, all or nothing, as the driver does.
    pub fn push_chain(
        &mut self,
        ops: Vec<(squeue::Entry, T)>,
    ) -> Result<(), PushError<Vec<(squeue::Entry, T)>>> {
        if ops.len() > (self.inflight_max - self.inflight) as usize {
            return Err(PushError::Busy(ops));
        }
        for (entry, owner) in ops {
            if self.push(entry, owner).is_err() {
                debug_assert!(false, "chain push refused after the capacity check");
            }
        }
        Ok(())
    }

    /// Records the cancellation; the test completes the operation (typically with
    /// `-ECANCELED`) when it chooses.
    pub fn cancel(&mut self, op: OpId) {
        self.cancelled.push(op);
    }

    /// Counts the call; nothing is submitted anywhere.
    pub fn submit(&mut self) -> usize {
        self.submits += 1;
        0
    }

    /// Counts the call and returns at once (a test never waits on a fake).
    pub fn submit_and_wait_timeout(&mut self, _want: usize, _timeout: Duration) -> usize {
        self.submits += 1;
        0
    }

    /// Hands each completion the test made to `on_completion` with its owner, as
    /// [`RingDriver::reap`](crate::RingDriver::reap) does; returns how many.
    pub fn reap(&mut self, mut on_completion: impl FnMut(Completion, Owner<'_, T>)) -> usize {
        let mut dispatched = 0;
        while let Some(completion) = self.ready.pop_front() {
            let index = completion.op.index() as usize;
            let live = matches!(
                self.slots.get(index),
                Some(Some((generation, _))) if *generation == completion.op.generation()
            );
            if !live {
                debug_assert!(false, "completion for an operation that ended");
                continue;
            }
            dispatched += 1;
            if completion.more() {
                if let Some(Some((_, owner))) = self.slots.get_mut(index) {
                    on_completion(completion, Owner::Continuing(owner));
                }
                continue;
            }
            if let Some((_, owner)) = self.slots[index].take() {
                self.generations[index] = self.generations[index].wrapping_add(1);
                self.inflight -= 1;
                on_completion(completion, Owner::Finished(owner));
            }
        }
        dispatched
    }

    /// Operations in flight.
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// Operations that may still be pushed.
    pub fn capacity_left(&self) -> u32 {
        self.inflight_max - self.inflight
    }

    /// The operations in flight and not yet completed by the test, oldest slot first.
    pub fn pending(&self) -> impl Iterator<Item = (OpId, &T)> {
        let completing: Vec<OpId> = self
            .ready
            .iter()
            .filter(|c| !c.more())
            .map(|c| c.op)
            .collect();
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let (generation, owner) = slot.as_ref()?;
                Some((OpId::new(index as u32, *generation), owner))
            })
            .filter(move |(op, _)| !completing.contains(op))
    }

    /// The owner of a live operation, to fill a receive's buffer before completing it.
    pub fn owner_mut(&mut self, op: OpId) -> Option<&mut T> {
        match self.slots.get_mut(op.index() as usize) {
            Some(Some((generation, owner))) if *generation == op.generation() => Some(owner),
            _ => None,
        }
    }

    /// Completes `op` with `result` (a count or `-errno`) at the next reap; with `more`,
    /// the operation goes on (a multishot operation's completion). `flags` are the other
    /// `IORING_CQE_F_*` bits (a provided buffer's id, say).
    pub fn complete(&mut self, op: OpId, result: i32, more: bool, flags: u32) {
        let flags = if more {
            flags | CQE_F_MORE
        } else {
            flags & !CQE_F_MORE
        };
        self.ready.push_back(Completion { op, result, flags });
    }

    /// Submit and wait calls so far.
    pub fn submits(&self) -> u64 {
        self.submits
    }

    /// Cancellations asked for so far, in order.
    pub fn cancelled(&self) -> &[OpId] {
        &self.cancelled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::opcode;

    fn nop() -> squeue::Entry {
        opcode::Nop::new().build()
    }

    #[test]
    fn owners_come_back_once_with_the_results_the_test_chose() {
        let mut ring = FakeRing::new(2);
        let a = ring.push(nop(), "a").unwrap();
        let b = ring.push(nop(), "b").unwrap();
        assert!(matches!(ring.push(nop(), "c"), Err(PushError::Busy("c"))));
        assert_eq!(ring.pending().count(), 2);
        ring.complete(b, -104, false, 0);
        ring.complete(a, 7, true, 0);
        let mut seen = Vec::new();
        ring.reap(|completion, owner| match owner {
            Owner::Finished(owner) => seen.push((owner, completion.result, false)),
            Owner::Continuing(owner) => seen.push((*owner, completion.result, true)),
        });
        assert_eq!(seen, vec![("b", -104, false), ("a", 7, true)]);
        assert_eq!(
            ring.inflight(),
            1,
            "a multishot completion leaves it in flight"
        );
        assert_eq!(
            ring.pending().map(|(op, _)| op).collect::<Vec<_>>(),
            vec![a]
        );
        // The freed slot is reused with a new generation: the old id no longer reaches it.
        let c = ring.push(nop(), "c").unwrap();
        assert_ne!(c, b);
        assert!(ring.owner_mut(b).is_none());
        assert_eq!(ring.owner_mut(c), Some(&mut "c"));
        assert!(ring.push_chain(vec![(nop(), "d"), (nop(), "e")]).is_err());
    }
}

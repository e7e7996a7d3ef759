//! The request handlers that wait, as `async` tasks on the LEU's [`Executor`]: a write's
//! acknowledgement waits for the WAL to make it durable, a scattered request waits for the
//! other LEUs' parts (and for its own write part's durability). A request that needs no
//! wait is answered where it is read, without a task.
//!
//! The tasks and the loop meet in [`Waits`], shared by `Rc` (the tasks are not `Send`:
//! they live and die on the LEU's thread):
//!
//! - the loop tells it what happened: the WAL's durable sequence number moved
//!   ([`Waits::durable_through`]) or the WAL failed ([`Waits::failed`]), another LEU's part
//!   of a gather came in ([`Waits::add_part`]); each wakes exactly the tasks it concerns;
//! - a task that is done leaves its answer in [`Waits::finished`] for the loop to send (the
//!   loop owns the connections and the queues to the other LEUs).
//!
//! Every wait is bounded by what the executor bounds: one task per waiting request, and the
//! executor has a fixed number of slots.

use crate::dispatch::{error_response, Outcome};
use crate::gather::Merge;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use vortex_shard::ShardError;
use vortex_vbp::codec::Response;
use vortex_vbp::stream::FrameBuf;

/// Where an answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// To a client. Its connection's slot is not reused before the answer: the request
    /// counts in the connection's `unanswered`, and a slot is freed only at 0. `since`: when
    /// its frame was taken off the connection (the request's time is counted in stats).
    Client {
        conn: usize,
        request_id: u64,
        since: Instant,
    },
    /// To LEU `leu`, as its part of its gather `token`.
    Peer { leu: u16, token: u32 },
}

/// A handler's answer, for the loop to send.
#[derive(Debug)]
pub(crate) struct Finished {
    pub to: Destination,
    pub response: Response,
}

/// One gather: the parts that came in and were not yet taken by its task, and the request's
/// frame, which the other LEUs read in place until every part is in.
#[derive(Debug, Default)]
struct Parts {
    arrived: Vec<(u16, Response)>,
    waker: Option<Waker>,
    frame: Option<FrameBuf>,
}

/// What the loop and the waiting handlers share.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    /// The WAL's durable sequence number, as last polled.
    durable: Cell<u64>,
    /// The highest sequence number a handler waits for.
    expected: Cell<u64>,
    /// The WAL failed: writes from the first to the second sequence number (not durable
    /// by then) get this answer, even once the WAL is durable past them (a WAL that a full
    /// disk stopped passes over the numbers of the writes it failed when it resumes).
    failure: RefCell<Option<(u64, u64, Response)>>,
    /// Handlers waiting for durability: (sequence, waker).
    acks: RefCell<Vec<(u64, Waker)>>,
    /// By gather token.
    parts: RefCell<Vec<Option<Parts>>>,
    /// Tokens of gathers that are over.
    tokens_free: RefCell<Vec<u32>>,
    finished: RefCell<VecDeque<Finished>>,
}

impl Waits {
    /// Whether some write waits for the WAL: a handler registered, or a write issued (its
    /// handler not yet polled) beyond what is durable and what a failure answered.
    pub fn acks_waiting(&self) -> bool {
        let answered = self
            .failure
            .borrow()
            .as_ref()
            .map_or(0, |(_, through, _)| *through);
        !self.acks.borrow().is_empty() || self.expected.get() > self.durable.get().max(answered)
    }

    /// The WAL is durable through `sequence`: the writes up to it are acknowledged.
    pub fn durable_through(&self, sequence: u64) {
        if sequence <= self.durable.get() {
            return;
        }
        self.durable.set(sequence);
        self.acks.borrow_mut().retain(|(waiting, waker)| {
            let done = *waiting <= sequence;
            if done {
                waker.wake_by_ref();
            }
            !done
        });
    }

    /// The WAL failed with `error`: every write waiting now is answered with it.
    pub fn failed(&self, error: &ShardError) {
        *self.failure.borrow_mut() = Some((
            self.durable.get() + 1,
            self.expected.get(),
            error_response(error),
        ));
        for (_, waker) in self.acks.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// A write with WAL `sequence` was issued: its acknowledgement will wait for it.
    pub fn expect(&self, sequence: u64) {
        if sequence > self.expected.get() {
            self.expected.set(sequence);
        }
    }

    /// The answer to a write with WAL `sequence`, `response` once it is durable (or the
    /// WAL's error if it failed first).
    pub fn durable(self: &Rc<Self>, sequence: u64, response: Response) -> Durable {
        self.expect(sequence);
        Durable {
            waits: Rc::clone(self),
            sequence,
            response: Some(response),
            registered: false,
        }
    }

    /// Starts a gather, keeping the request's `frame` (lent to the other LEUs) until it is
    /// over; returns its token.
    pub fn open(&self, frame: Option<FrameBuf>) -> u32 {
        let mut parts = self.parts.borrow_mut();
        let token = self.tokens_free.borrow_mut().pop().unwrap_or_else(|| {
            parts.push(None);
            (parts.len() - 1) as u32
        });
        parts[token as usize] = Some(Parts {
            frame,
            ..Parts::default()
        });
        token
    }

    /// A gather that will never finish (its task could not start): the parts still out
    /// come back to it and are dropped, and its frame, which they may still read, is
    /// leaked rather than reused under them. Its token is not reused.
    pub fn abandon(&self, token: u32) {
        if let Some(slot) = self
            .parts
            .borrow_mut()
            .get_mut(token as usize)
            .and_then(Option::as_mut)
        {
            if let Some(frame) = slot.frame.take() {
                std::mem::forget(frame);
            }
        }
    }

    /// At the end of the loop: the frames of gathers still open may still be read by
    /// another LEU, so their buffers are leaked rather than returned to the pool.
    pub fn leak_frames(&self) {
        for slot in self.parts.borrow_mut().iter_mut().flatten() {
            if let Some(frame) = slot.frame.take() {
                std::mem::forget(frame);
            }
        }
    }

    /// LEU `leu`'s part of gather `token` came in (ignored if the gather is over).
    pub fn add_part(&self, token: u32, leu: u16, response: Response) {
        let mut parts = self.parts.borrow_mut();
        let Some(slot) = parts.get_mut(token as usize).and_then(Option::as_mut) else {
            return;
        };
        slot.arrived.push((leu, response));
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }

    /// The parts of gather `token` that came in since the last call; waits for one.
    pub fn parts(self: &Rc<Self>, token: u32) -> NextParts {
        NextParts {
            waits: Rc::clone(self),
            token,
        }
    }

    /// A handler is done: the loop sends `response` to `to`. Ending gather `gather`
    /// returns its frame to the pool (every part is in) and frees its token.
    pub fn finish(&self, to: Destination, response: Response, gather: Option<u32>) {
        if let Some(token) = gather {
            let ended = self
                .parts
                .borrow_mut()
                .get_mut(token as usize)
                .and_then(Option::take);
            if ended.is_some() {
                self.tokens_free.borrow_mut().push(token);
            }
        }
        self.finished
            .borrow_mut()
            .push_back(Finished { to, response });
    }

    /// The next answer a handler left for the loop.
    pub fn take_finished(&self) -> Option<Finished> {
        self.finished.borrow_mut().pop_front()
    }
}

/// See [`Waits::durable`].
#[derive(Debug)]
pub(crate) struct Durable {
    waits: Rc<Waits>,
    sequence: u64,
    response: Option<Response>,
    /// The waker is in `acks`: a task's waker is its slot's for the task's whole life, so
    /// once is enough (a spurious poll must not add it twice).
    registered: bool,
}

impl Future for Durable {
    type Output = Response;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Response> {
        let waits = Rc::clone(&self.waits);
        if let Some((from, through, error)) = waits.failure.borrow().as_ref() {
            if (*from..=*through).contains(&self.sequence) {
                return Poll::Ready(error.clone());
            }
        }
        if self.sequence <= waits.durable.get() {
            let response = self.response.take();
            return Poll::Ready(response.unwrap_or_else(gone));
        }
        if !self.registered {
            self.registered = true;
            waits
                .acks
                .borrow_mut()
                .push((self.sequence, context.waker().clone()));
        }
        Poll::Pending
    }
}

/// Polled again after it answered: not done by the handlers here.
fn gone() -> Response {
    Response::error(
        vortex_vbp::message::ErrorCode::Internal,
        "an acknowledgement was taken twice",
    )
}

/// See [`Waits::parts`].
#[derive(Debug)]
pub(crate) struct NextParts {
    waits: Rc<Waits>,
    token: u32,
}

impl Future for NextParts {
    type Output = Vec<(u16, Response)>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let mut parts = self.waits.parts.borrow_mut();
        let Some(slot) = parts.get_mut(self.token as usize).and_then(Option::as_mut) else {
            return Poll::Ready(Vec::new()); // the gather is over: nothing more comes
        };
        if slot.arrived.is_empty() {
            slot.waker = Some(context.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(std::mem::take(&mut slot.arrived))
    }
}

/// A write's acknowledgement: sent to `to` once WAL `sequence` is durable. The request's
/// `frame`, if given, stays leased until then.
pub(crate) async fn acknowledge(
    waits: Rc<Waits>,
    to: Destination,
    sequence: u64,
    response: Response,
    frame: Option<FrameBuf>,
) {
    let response = waits.durable(sequence, response).await;
    drop(frame);
    waits.finish(to, response, None);
}

/// A request scattered to several LEUs: this LEU's part (`local`, if it has one) and
/// `waiting` parts from the others (the local one included), merged into one answer to the
/// client `to`.
pub(crate) async fn gather(
    waits: Rc<Waits>,
    token: u32,
    me: u16,
    local: Option<Outcome>,
    mut merge: Merge,
    mut waiting: usize,
    to: Destination,
) {
    if let Some(outcome) = local {
        let response = match outcome {
            Outcome::Ready(response) => response,
            Outcome::AfterDurable { sequence, response } => waits.durable(sequence, response).await,
        };
        merge.add(me, response);
        waiting = waiting.saturating_sub(1);
    }
    while waiting > 0 {
        let parts = waits.parts(token).await;
        if parts.is_empty() {
            break;
        }
        for (leu, response) in parts {
            merge.add(leu, response);
            waiting = waiting.saturating_sub(1);
        }
    }
    waits.finish(to, merge.finish(), Some(token));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::Executor;
    use vortex_vbp::message::{CountResult, ErrorCode};

    fn counted(count: u64) -> Response {
        Response::Counted(CountResult { count })
    }

    fn text(response: &Response) -> String {
        format!("{response:?}")
    }

    fn marker(n: u64) -> Response {
        Response::error(ErrorCode::InvalidArgument, format!("marker {n}"))
    }

    #[test]
    fn acknowledgements_wait_for_their_own_sequence_and_no_other() {
        let waits = Rc::new(Waits::default());
        let mut executor = Executor::new(16).unwrap();
        // Spawned out of order: slot order is not sequence order.
        for sequence in [7, 3, 5] {
            let to = Destination::Client {
                conn: 0,
                request_id: sequence,
                since: Instant::now(),
            };
            let task = acknowledge(Rc::clone(&waits), to, sequence, marker(sequence), None);
            executor.spawn(task).unwrap();
        }
        executor.run_ready(100);
        assert!(waits.take_finished().is_none(), "nothing is durable yet");
        assert!(waits.acks_waiting());
        waits.durable_through(5);
        assert_eq!(
            executor.run_ready(100),
            2,
            "only the two durable writes run"
        );
        let mut done: Vec<u64> = std::iter::from_fn(|| waits.take_finished())
            .map(|f| match f.to {
                Destination::Client { request_id, .. } => request_id,
                Destination::Peer { .. } => unreachable!(),
            })
            .collect();
        done.sort_unstable();
        assert_eq!(done, vec![3, 5]);
        waits.durable_through(4); // going back changes nothing
        assert_eq!(executor.run_ready(100), 0);
        waits.durable_through(9);
        executor.run_ready(100);
        let last = waits.take_finished().unwrap();
        assert!(text(&last.response).contains("marker 7"));
        assert_eq!(executor.live(), 0);
        assert!(!waits.acks_waiting());
    }

    /// A WAL that a full disk stopped passes over the failed writes' sequence numbers when it
    /// resumes: durable past them, it must still not acknowledge them, even to a handler
    /// that is polled only then; a write durable before the failure is acknowledged.
    #[test]
    fn writes_the_wal_failed_stay_failed_when_it_resumes_past_their_numbers() {
        let waits = Rc::new(Waits::default());
        let mut executor = Executor::new(16).unwrap();
        let to = Destination::Peer { leu: 1, token: 4 };
        waits.durable_through(2);
        for sequence in [3, 4] {
            waits.expect(sequence);
        }
        let error = ShardError::Invalid("no space left".to_owned());
        waits.failed(&error);
        // The WAL resumes and passes over 3 and 4; their handlers run only now.
        waits.durable_through(4);
        for sequence in [2, 3, 4] {
            let task = acknowledge(Rc::clone(&waits), to, sequence, marker(sequence), None);
            executor.spawn(task).unwrap();
        }
        executor.run_ready(100);
        let answers: Vec<String> = std::iter::from_fn(|| waits.take_finished())
            .map(|finished| text(&finished.response))
            .collect();
        assert_eq!(answers.len(), 3, "{answers:?}");
        assert!(answers[0].contains("marker 2"), "{answers:?}");
        assert!(
            answers[1..]
                .iter()
                .all(|answer| answer.contains("no space left")),
            "{answers:?}"
        );
        // A write after the resume is acknowledged once durable.
        let task = acknowledge(Rc::clone(&waits), to, 5, marker(5), None);
        executor.spawn(task).unwrap();
        waits.durable_through(5);
        executor.run_ready(100);
        assert!(text(&waits.take_finished().unwrap().response).contains("marker 5"));
    }

    #[test]
    fn a_failed_wal_answers_the_waiting_writes_with_its_error_and_later_ones_wait_again() {
        let waits = Rc::new(Waits::default());
        let mut executor = Executor::new(16).unwrap();
        let to = Destination::Peer { leu: 1, token: 4 };
        for sequence in [1, 2] {
            let task = acknowledge(Rc::clone(&waits), to, sequence, marker(sequence), None);
            executor.spawn(task).unwrap();
        }
        executor.run_ready(100);
        let error = ShardError::Invalid("the disk is gone".to_owned());
        waits.failed(&error);
        executor.run_ready(100);
        for _ in 0..2 {
            let finished = waits.take_finished().unwrap();
            assert_eq!(finished.to, to);
            assert!(text(&finished.response).contains("the disk is gone"));
        }
        // A write after the failure waits for its own durability.
        let task = acknowledge(Rc::clone(&waits), to, 3, marker(3), None);
        executor.spawn(task).unwrap();
        executor.run_ready(100);
        assert!(waits.take_finished().is_none());
        waits.durable_through(3);
        executor.run_ready(100);
        assert!(text(&waits.take_finished().unwrap().response).contains("marker 3"));
    }

    #[test]
    fn a_gather_answers_once_every_part_and_its_own_durable_write_are_in() {
        use vortex_vbp::validator::RequestRef;
        let waits = Rc::new(Waits::default());
        let mut executor = Executor::new(4).unwrap();
        let token = waits.open(None);
        // Another LEU's part may come in before the task first runs.
        waits.add_part(token, 1, counted(1));
        let local = Outcome::AfterDurable {
            sequence: 10,
            response: counted(4),
        };
        let ring = std::sync::Arc::new(crate::routing::Ring::new(1, 1).unwrap());
        let merge = Merge::new(&RequestRef::ListCollections, &ring);
        let to = Destination::Client {
            conn: 5,
            request_id: 77,
            since: Instant::now(),
        };
        let task = gather(Rc::clone(&waits), token, 0, Some(local), merge, 3, to);
        executor.spawn(task).unwrap();
        executor.run_ready(100);
        waits.add_part(token, 2, counted(2));
        executor.run_ready(100);
        assert!(
            waits.take_finished().is_none(),
            "the local write is not durable"
        );
        waits.durable_through(10);
        executor.run_ready(100);
        let finished = waits.take_finished().expect("answered");
        assert_eq!(finished.to, to);
        assert!(matches!(
            finished.response,
            Response::Counted(CountResult { count: 7 })
        ));
        waits.add_part(token, 1, counted(1)); // late: ignored, the gather is over
        assert_eq!(executor.live(), 0);
        assert_eq!(waits.open(None), token, "the gather's token is free again");
    }
}

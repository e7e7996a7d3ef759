//! The per-LEU executor: request handlers are `async` state machines that the LEU's loop
//! polls between its passes over the io_uring completion queue, so a handler can wait for a
//! WAL acknowledgement or another LEU's answer without blocking the loop (no tokio on this
//! path).
//!
//! - **Bounded.** A fixed number of task slots, allocated up front; [`Executor::spawn`]
//!   refuses when they are all taken (the caller answers THROTTLED), so a flood of requests
//!   cannot grow memory.
//! - **Wakes are bits.** Each slot has a ready bit in an array of `AtomicU64` words; a waker
//!   sets its slot's bit (from any thread: wakers must be `Send`), and
//!   [`Executor::run_ready`] polls the tasks whose bits are set, up to a budget, so one pass
//!   of the loop stays short. A wake never allocates. A waker that outlives its task can at
//!   worst wake the slot's next task once, which then polls `Pending` and waits on.
//! - **Futures are not `Send`**: a handler may hold the LEU's `Rc`s and `RefCell`s.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

/// The largest number of task slots an executor may have.
pub const TASKS_MAX: usize = 1 << 20;

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// The ready bits, shared with the wakers.
#[derive(Debug)]
struct ReadyBits {
    words: Box<[AtomicU64]>,
}

impl ReadyBits {
    fn set(&self, slot: usize) {
        self.words[slot / 64].fetch_or(1 << (slot % 64), Ordering::Release);
    }
}

/// Wakes one slot.
struct SlotWaker {
    bits: Arc<ReadyBits>,
    slot: usize,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.bits.set(self.slot);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.bits.set(self.slot);
    }
}

/// Every slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {0} task slots are taken")]
pub struct Full(pub usize);

/// A single-threaded, bounded executor.
pub struct Executor {
    tasks: Vec<Option<Task>>,
    /// One waker per slot, made once.
    wakers: Vec<Waker>,
    free: Vec<usize>,
    bits: Arc<ReadyBits>,
    /// Where the last pass stopped, so that a budget does not starve the higher slots.
    cursor: usize,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("slots", &self.tasks.len())
            .field("live", &self.live())
            .finish()
    }
}

impl Executor {
    /// An executor of `slots` task slots (1 to [`TASKS_MAX`]).
    pub fn new(slots: usize) -> Option<Executor> {
        if slots == 0 || slots > TASKS_MAX {
            return None;
        }
        let bits = Arc::new(ReadyBits {
            words: (0..slots.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        });
        let wakers = (0..slots)
            .map(|slot| {
                Waker::from(Arc::new(SlotWaker {
                    bits: Arc::clone(&bits),
                    slot,
                }))
            })
            .collect();
        Some(Executor {
            tasks: (0..slots).map(|_| None).collect(),
            wakers,
            free: (0..slots).rev().collect(),
            bits,
            cursor: 0,
        })
    }

    /// Starts `task`; it is first polled by the next [`run_ready`](Self::run_ready).
    pub fn spawn(&mut self, task: impl Future<Output = ()> + 'static) -> Result<(), Full> {
        let slot = self.free.pop().ok_or(Full(self.tasks.len()))?;
        self.tasks[slot] = Some(Box::pin(task));
        self.bits.set(slot);
        Ok(())
    }

    /// Tasks started and not finished.
    pub fn live(&self) -> usize {
        self.tasks.len() - self.free.len()
    }

    /// Slots free: tasks that can be started now.
    pub fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Whether some task has been woken and not polled since.
    pub fn has_ready(&self) -> bool {
        self.bits
            .words
            .iter()
            .any(|word| word.load(Ordering::Acquire) != 0)
    }

    /// Polls woken tasks, at most `budget` polls, starting after where the last pass
    /// stopped. Returns the polls made.
    pub fn run_ready(&mut self, budget: usize) -> usize {
        let words = self.bits.words.len();
        let mut polled = 0;
        let start_word = self.cursor / 64;
        for step in 0..=words {
            let word_index = (start_word + step) % words;
            let mut ready = self.bits.words[word_index].swap(0, Ordering::Acquire);
            while ready != 0 {
                let bit = ready.trailing_zeros() as usize;
                ready &= ready - 1;
                let slot = word_index * 64 + bit;
                if polled == budget {
                    // Put back what this pass will not reach.
                    self.bits.words[word_index].fetch_or(ready | 1 << bit, Ordering::Release);
                    self.cursor = slot;
                    return polled;
                }
                polled += 1;
                self.poll_slot(slot);
            }
        }
        self.cursor = 0;
        polled
    }

    fn poll_slot(&mut self, slot: usize) {
        let Some(task) = self.tasks[slot].as_mut() else {
            return; // a stale wake of a finished task
        };
        let mut context = Context::from_waker(&self.wakers[slot]);
        if task.as_mut().poll(&mut context).is_ready() {
            self.tasks[slot] = None;
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::task::Poll;

    /// A value another part of the loop fills in later (a WAL acknowledgement, say).
    #[derive(Default)]
    struct Cell {
        value: RefCell<Option<u64>>,
        waker: RefCell<Option<Waker>>,
    }

    impl Cell {
        fn fill(&self, value: u64) {
            *self.value.borrow_mut() = Some(value);
            if let Some(waker) = self.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    struct Wait(Rc<Cell>);

    impl Future for Wait {
        type Output = u64;
        fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<u64> {
            match self.0.value.borrow_mut().take() {
                Some(value) => Poll::Ready(value),
                None => {
                    *self.0.waker.borrow_mut() = Some(context.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    #[test]
    fn tasks_wait_without_blocking_and_finish_when_woken() {
        let mut executor = Executor::new(8).unwrap();
        let cells: Vec<Rc<Cell>> = (0..3).map(|_| Rc::new(Cell::default())).collect();
        let results = Rc::new(RefCell::new(Vec::new()));
        for (index, cell) in cells.iter().enumerate() {
            let (cell, results) = (Rc::clone(cell), Rc::clone(&results));
            executor
                .spawn(async move {
                    let first = Wait(Rc::clone(&cell)).await;
                    let second = Wait(cell).await;
                    results.borrow_mut().push((index, first + second));
                })
                .unwrap();
        }
        assert_eq!(executor.run_ready(100), 3);
        assert!(!executor.has_ready(), "nothing woken: every task waits");
        cells[1].fill(10);
        assert_eq!(executor.run_ready(100), 1, "only the woken task is polled");
        cells[1].fill(5);
        cells[2].fill(1);
        executor.run_ready(100);
        assert_eq!(*results.borrow(), vec![(1, 15)]);
        assert_eq!(executor.live(), 2);
        cells[2].fill(2);
        cells[0].fill(7);
        executor.run_ready(100);
        cells[0].fill(7);
        executor.run_ready(100);
        assert_eq!(*results.borrow(), vec![(1, 15), (2, 3), (0, 14)]);
        assert_eq!(executor.live(), 0);
    }

    #[test]
    fn slots_are_bounded_and_reused() {
        let mut executor = Executor::new(2).unwrap();
        let cell = Rc::new(Cell::default());
        executor.spawn(Wait(Rc::clone(&cell)).map_unit()).unwrap();
        executor.spawn(async {}).unwrap();
        assert_eq!(executor.free_slots(), 0);
        assert_eq!(executor.spawn(async {}), Err(Full(2)));
        executor.run_ready(10);
        assert_eq!(executor.live(), 1, "the finished task's slot is free");
        executor.spawn(async {}).unwrap();
        assert!(Executor::new(0).is_none());
    }

    #[test]
    fn a_budget_limits_a_pass_and_the_next_pass_goes_on() {
        let mut executor = Executor::new(200).unwrap();
        let done = Rc::new(RefCell::new(0));
        for _ in 0..150 {
            let done = Rc::clone(&done);
            executor
                .spawn(async move { *done.borrow_mut() += 1 })
                .unwrap();
        }
        assert_eq!(executor.run_ready(64), 64);
        assert_eq!(*done.borrow(), 64);
        assert!(executor.has_ready());
        assert_eq!(executor.run_ready(64), 64);
        assert_eq!(executor.run_ready(64), 22);
        assert_eq!(*done.borrow(), 150);
        assert!(!executor.has_ready());
    }

    #[test]
    fn a_waker_works_from_another_thread() {
        let mut executor = Executor::new(4).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel::<Waker>();
        let woken = Rc::new(RefCell::new(false));
        let flag = Rc::clone(&woken);
        let mut sent = false;
        let mut sender = Some(sender);
        executor
            .spawn(std::future::poll_fn(move |context| {
                if sent {
                    *flag.borrow_mut() = true;
                    return Poll::Ready(());
                }
                if let Some(sender) = sender.take() {
                    sender.send(context.waker().clone()).unwrap();
                }
                sent = true;
                Poll::Pending
            }))
            .unwrap();
        executor.run_ready(10);
        let waker = receiver.recv().unwrap();
        std::thread::spawn(move || waker.wake()).join().unwrap();
        assert!(executor.has_ready());
        executor.run_ready(10);
        assert!(*woken.borrow());
    }

    trait MapUnit: Future + Sized {
        fn map_unit(self) -> impl Future<Output = ()> {
            async move {
                self.await;
            }
        }
    }
    impl<F: Future> MapUnit for F {}
}

//! Bounded lock-free single-producer single-consumer queues: how LEUs hand work to each
//! other (a frame that arrived on the wrong LEU, a scattered search and its answer) without
//! sharing anything else.
//!
//! One queue is a power-of-two ring of slots with two counters, each on its own cache line:
//! `tail`, written only by the producer (slots below it are filled), and `head`, written
//! only by the consumer (slots below it are taken). Each side keeps a copy of the other's
//! counter and reads the shared one only when its copy says the ring is full (producer) or
//! empty (consumer), so a busy queue costs about one cache-line transfer per batch rather
//! than per item. The producer publishes a slot with a `Release` store of `tail` after
//! writing it, and the consumer reads `tail` with `Acquire` before reading the slot (and the
//! reverse for `head`), so a slot is never read before it is written, nor overwritten before
//! it is read. Counters are `usize` and wrap; their difference is the fill level.
//!
//! [`Mesh`] builds one queue per ordered pair of LEUs.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The largest capacity a queue may have.
pub const CAPACITY_MAX: usize = 1 << 24;

/// A value on its own cache line (128 bytes: adjacent-line prefetchers pull pairs).
#[repr(align(128))]
#[derive(Debug, Default)]
struct Padded<T>(T);

/// The ring both ends share.
struct Ring<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
    /// Slots below `head` have been taken (written by the consumer).
    head: Padded<AtomicUsize>,
    /// Slots below `tail` have been filled (written by the producer).
    tail: Padded<AtomicUsize>,
}

// SAFETY: the ring moves values of `T` from one thread to another (hence `T: Send`); every
// slot is accessed by one side at a time, as the module docs explain, so sharing the ring
// between the two ends is sound.
unsafe impl<T: Send> Sync for Ring<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Ring<T> {}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Both ends are gone (each held an `Arc`): drop what is still queued.
        let head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        for index in head..tail {
            let slot = &mut self.slots[index & self.mask];
            // SAFETY: slots in `head..tail` were filled by the producer and not taken.
            unsafe { slot.get_mut().assume_init_drop() };
        }
    }
}

/// The sending end of a queue.
pub struct Producer<T> {
    ring: Arc<Ring<T>>,
    /// Our `tail` (the shared one is only ever written by us).
    tail: usize,
    /// The consumer's `head` as last read.
    head_seen: usize,
}

/// The receiving end of a queue.
pub struct Consumer<T> {
    ring: Arc<Ring<T>>,
    /// Our `head`.
    head: usize,
    /// The producer's `tail` as last read.
    tail_seen: usize,
}

impl<T> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &(self.ring.mask + 1))
            .field("tail", &self.tail)
            .finish()
    }
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &(self.ring.mask + 1))
            .field("head", &self.head)
            .finish()
    }
}

/// A queue of at least `capacity` slots (rounded up to a power of two), or `None` when
/// `capacity` is 0 or above [`CAPACITY_MAX`].
pub fn channel<T: Send>(capacity: usize) -> Option<(Producer<T>, Consumer<T>)> {
    if capacity == 0 || capacity > CAPACITY_MAX {
        return None;
    }
    let size = capacity.next_power_of_two();
    let slots = (0..size)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let ring = Arc::new(Ring {
        slots,
        mask: size - 1,
        head: Padded::default(),
        tail: Padded::default(),
    });
    Some((
        Producer {
            ring: Arc::clone(&ring),
            tail: 0,
            head_seen: 0,
        },
        Consumer {
            ring,
            head: 0,
            tail_seen: 0,
        },
    ))
}

impl<T: Send> Producer<T> {
    /// Queues `value`, or hands it back when the queue is full.
    pub fn push(&mut self, value: T) -> Result<(), T> {
        let capacity = self.ring.mask + 1;
        if self.tail.wrapping_sub(self.head_seen) == capacity {
            self.head_seen = self.ring.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head_seen) == capacity {
                return Err(value);
            }
        }
        let slot = &self.ring.slots[self.tail & self.ring.mask];
        // SAFETY: the slot is below `head + capacity`, so the consumer has taken whatever
        // was in it (its `Release` store of `head` happened before our `Acquire` load), and
        // it is not yet below `tail`, so the consumer will not read it until we publish.
        unsafe { (*slot.get()).write(value) };
        self.tail = self.tail.wrapping_add(1);
        self.ring.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// The slots of the queue.
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }

    /// Items queued and not yet taken (a snapshot: the consumer may be taking them).
    pub fn len(&self) -> usize {
        self.tail
            .wrapping_sub(self.ring.head.0.load(Ordering::Acquire))
    }

    /// Whether nothing is queued (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the consumer end has been dropped (nothing pushed will be taken).
    pub fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.ring) == 1
    }
}

impl<T: Send> Consumer<T> {
    /// Takes the oldest queued value, if any.
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.tail_seen {
            self.tail_seen = self.ring.tail.0.load(Ordering::Acquire);
            if self.head == self.tail_seen {
                return None;
            }
        }
        let slot = &self.ring.slots[self.head & self.ring.mask];
        // SAFETY: the slot is below `tail` (the producer wrote it before its `Release`
        // store, which our `Acquire` load saw) and not below `head`, so it holds a value
        // that nobody else will read; moving it out leaves the slot free for the producer
        // once `head` is published.
        let value = unsafe { (*slot.get()).assume_init_read() };
        self.head = self.head.wrapping_add(1);
        self.ring.head.0.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Items waiting (a snapshot: the producer may be adding more).
    pub fn len(&self) -> usize {
        self.ring
            .tail
            .0
            .load(Ordering::Acquire)
            .wrapping_sub(self.head)
    }

    /// Whether nothing is waiting (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the producer end has been dropped (after what is queued, nothing comes).
    pub fn is_abandoned(&self) -> bool {
        Arc::strong_count(&self.ring) == 1
    }
}

/// One queue per ordered pair of LEUs: LEU `i` sends to LEU `j` on queue `(i, j)`.
#[derive(Debug)]
pub struct Mesh<T> {
    /// For each LEU, its producers by destination (`None` for itself).
    pub senders: Vec<Vec<Option<Producer<T>>>>,
    /// For each LEU, its consumers by source (`None` for itself).
    pub receivers: Vec<Vec<Option<Consumer<T>>>>,
}

impl<T: Send> Mesh<T> {
    /// Queues of `capacity` slots between every ordered pair of `leus` LEUs, or `None` for
    /// a capacity [`channel`] refuses. Each LEU then takes its row of `senders` and of
    /// `receivers` to its own thread.
    pub fn new(leus: usize, capacity: usize) -> Option<Mesh<T>> {
        let mut senders: Vec<Vec<Option<Producer<T>>>> = (0..leus)
            .map(|_| (0..leus).map(|_| None).collect())
            .collect();
        let mut receivers: Vec<Vec<Option<Consumer<T>>>> = (0..leus)
            .map(|_| (0..leus).map(|_| None).collect())
            .collect();
        for from in 0..leus {
            for to in (0..leus).filter(|&to| to != from) {
                let (producer, consumer) = channel(capacity)?;
                senders[from][to] = Some(producer);
                receivers[to][from] = Some(consumer);
            }
        }
        Some(Mesh { senders, receivers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn items_come_out_in_order_and_a_full_queue_hands_the_item_back() {
        let (mut producer, mut consumer) = channel::<u32>(3).unwrap();
        assert_eq!(producer.capacity(), 4);
        assert!(consumer.pop().is_none());
        for round in 0..5u32 {
            for i in 0..4 {
                producer.push(round * 10 + i).unwrap();
            }
            assert_eq!(producer.push(99), Err(99));
            assert_eq!(producer.len(), 4);
            assert_eq!(consumer.pop(), Some(round * 10));
            producer.push(round * 10 + 4).unwrap();
            let drained: Vec<u32> = std::iter::from_fn(|| consumer.pop()).collect();
            assert_eq!(drained, (1..5).map(|i| round * 10 + i).collect::<Vec<_>>());
            assert!(consumer.is_empty());
        }
        assert!(channel::<u8>(0).is_none());
        assert!(channel::<u8>(CAPACITY_MAX + 1).is_none());
    }

    #[test]
    fn queued_items_are_dropped_with_the_queue() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Counted;
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (mut producer, mut consumer) = channel::<Counted>(8).unwrap();
        for _ in 0..6 {
            assert!(producer.push(Counted).is_ok());
        }
        drop(consumer.pop());
        assert_eq!(DROPS.load(Ordering::Relaxed), 1);
        drop(producer);
        assert!(consumer.is_abandoned());
        drop(consumer);
        assert_eq!(
            DROPS.load(Ordering::Relaxed),
            6,
            "the five still queued were dropped"
        );
    }

    #[test]
    fn two_threads_pass_a_million_items_in_order() {
        let count = 1_000_000u64;
        let (mut producer, mut consumer) = channel::<u64>(64).unwrap();
        let sender = std::thread::spawn(move || {
            for value in 0..count {
                let mut item = value;
                while let Err(back) = producer.push(item) {
                    item = back;
                    std::hint::spin_loop();
                }
            }
        });
        let mut expected = 0u64;
        while expected < count {
            match consumer.pop() {
                Some(value) => {
                    assert_eq!(value, expected, "out of order or lost");
                    expected += 1;
                }
                None => std::hint::spin_loop(),
            }
        }
        sender.join().unwrap();
        assert!(consumer.pop().is_none());
    }

    #[test]
    fn a_mesh_connects_every_ordered_pair() {
        let leus = 4;
        let mesh = Mesh::<(usize, usize, u32)>::new(leus, 16).unwrap();
        let Mesh { senders, receivers } = mesh;
        let threads: Vec<_> = senders
            .into_iter()
            .zip(receivers)
            .enumerate()
            .map(|(me, (mut out, mut inbox))| {
                std::thread::spawn(move || {
                    let mut next = vec![0u32; leus]; // next sequence expected from each
                    let mut sent = vec![0u32; leus];
                    let rounds = 10_000;
                    while sent
                        .iter()
                        .enumerate()
                        .any(|(to, &n)| to != me && n < rounds)
                        || next
                            .iter()
                            .enumerate()
                            .any(|(from, &n)| from != me && n < rounds)
                    {
                        for (to, producer) in out.iter_mut().enumerate() {
                            if let Some(producer) = producer {
                                if sent[to] < rounds && producer.push((me, to, sent[to])).is_ok() {
                                    sent[to] += 1;
                                }
                            }
                        }
                        for (from, consumer) in inbox.iter_mut().enumerate() {
                            if let Some(consumer) = consumer {
                                while let Some((source, target, sequence)) = consumer.pop() {
                                    assert_eq!((source, target), (from, me));
                                    assert_eq!(sequence, next[from]);
                                    next[from] += 1;
                                }
                            }
                        }
                    }
                    assert!(out[me].is_none() && inbox[me].is_none());
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }
}

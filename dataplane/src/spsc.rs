//! Bounded lock-free single-producer single-consumer queues: how LEUs hand work to each
//! other (a frame that arrived on the wrong LEU, a scattered search and its answer) without
//! sharing anything else.
//!
//! The ring itself is `rtrb`'s, a well-kept crate with the design this module had by hand
//! (head and tail on their own cache lines, each side caching the other's counter,
//! `Release`/`Acquire` publication). Side by side in
//! `cargo bench -p vortex-bench --bench spsc` the hand-written ring passed a million items
//! 1.64× slower than `rtrb` and won the round trip by only 1.16× on this noisy VM, and it
//! had no model-checked tests, so it went (issue #22). This module keeps the dataplane's
//! names and rules: capacities rounded up to a power of two and bounded by
//! [`CAPACITY_MAX`], a full queue handing the value back, and [`Mesh`].
//!
//! [`Mesh`] builds one queue per ordered pair of LEUs.

/// The largest capacity a queue may have.
pub const CAPACITY_MAX: usize = 1 << 24;

/// The sending end of a queue.
#[derive(Debug)]
pub struct Producer<T>(rtrb::Producer<T>);

/// The receiving end of a queue.
#[derive(Debug)]
pub struct Consumer<T>(rtrb::Consumer<T>);

/// A queue of at least `capacity` slots (rounded up to a power of two), or `None` when
/// `capacity` is 0 or above [`CAPACITY_MAX`].
pub fn channel<T: Send>(capacity: usize) -> Option<(Producer<T>, Consumer<T>)> {
    if capacity == 0 || capacity > CAPACITY_MAX {
        return None;
    }
    let (producer, consumer) = rtrb::RingBuffer::new(capacity.next_power_of_two());
    Some((Producer(producer), Consumer(consumer)))
}

impl<T: Send> Producer<T> {
    /// Queues `value`, or hands it back when the queue is full.
    pub fn push(&mut self, value: T) -> Result<(), T> {
        self.0
            .push(value)
            .map_err(|rtrb::PushError::Full(value)| value)
    }

    /// The slots of the queue.
    pub fn capacity(&self) -> usize {
        self.0.buffer().capacity()
    }

    /// Items queued and not yet taken (a snapshot: the consumer may be taking them).
    pub fn len(&self) -> usize {
        self.capacity() - self.0.slots()
    }

    /// Whether nothing is queued (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the consumer end has been dropped (nothing pushed will be taken).
    pub fn is_abandoned(&self) -> bool {
        self.0.is_abandoned()
    }
}

impl<T: Send> Consumer<T> {
    /// Takes the oldest queued value, if any.
    pub fn pop(&mut self) -> Option<T> {
        self.0.pop().ok()
    }

    /// Items waiting (a snapshot: the producer may be adding more).
    pub fn len(&self) -> usize {
        self.0.slots()
    }

    /// Whether nothing is waiting (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the producer end has been dropped (after what is queued, nothing comes).
    pub fn is_abandoned(&self) -> bool {
        self.0.is_abandoned()
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
    use std::sync::atomic::{AtomicUsize, Ordering};

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

//! The queue between two LEUs (`vortex_dataplane::spsc`) beside `rtrb` used directly. The
//! module was a hand-written ring until this benchmark showed `rtrb` faster at streaming
//! (bench-rigs/README.md has that run); it now wraps `rtrb`, and this shows what the wrapper
//! costs. Two measures, each with one thread per side:
//!
//! - `stream`: a million `u64` through a queue of 1,024 slots (the handover queue's size),
//!   the producer spinning while it is full, the consumer while it is empty; time per item.
//! - `ping-pong`: one item there and back through two queues, as a scattered search's part
//!   and its answer travel; time per round trip.
//!
//! Run: `cargo bench -p vortex-bench --bench spsc`. Results: bench-rigs/README.md.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::spin_loop;
use std::time::{Duration, Instant};

const CAPACITY: usize = 1024;
const ITEMS: u64 = 1_000_000;
const ROUND_TRIPS: u64 = 100_000;

/// One end of a queue, whichever implementation.
trait Sender: Send + 'static {
    fn send(&mut self, value: u64) -> bool;
}
trait Receiver: Send + 'static {
    fn receive(&mut self) -> Option<u64>;
}

impl Sender for vortex_dataplane::spsc::Producer<u64> {
    fn send(&mut self, value: u64) -> bool {
        self.push(value).is_ok()
    }
}
impl Receiver for vortex_dataplane::spsc::Consumer<u64> {
    fn receive(&mut self) -> Option<u64> {
        self.pop()
    }
}
impl Sender for rtrb::Producer<u64> {
    fn send(&mut self, value: u64) -> bool {
        self.push(value).is_ok()
    }
}
impl Receiver for rtrb::Consumer<u64> {
    fn receive(&mut self) -> Option<u64> {
        self.pop().ok()
    }
}

fn ours() -> (
    vortex_dataplane::spsc::Producer<u64>,
    vortex_dataplane::spsc::Consumer<u64>,
) {
    vortex_dataplane::spsc::channel(CAPACITY).expect("a valid capacity")
}

fn theirs() -> (rtrb::Producer<u64>, rtrb::Consumer<u64>) {
    rtrb::RingBuffer::new(CAPACITY)
}

fn send_spinning(sender: &mut impl Sender, value: u64) {
    while !sender.send(value) {
        spin_loop();
    }
}

fn receive_spinning(receiver: &mut impl Receiver) -> u64 {
    loop {
        if let Some(value) = receiver.receive() {
            return value;
        }
        spin_loop();
    }
}

/// Time to pass `ITEMS` through one queue, checked in order.
fn stream<S: Sender, R: Receiver>((mut sender, mut receiver): (S, R)) -> Duration {
    let producer = std::thread::spawn(move || {
        for value in 0..ITEMS {
            send_spinning(&mut sender, value);
        }
    });
    let started = Instant::now();
    for expected in 0..ITEMS {
        assert_eq!(receive_spinning(&mut receiver), expected);
    }
    let took = started.elapsed();
    producer.join().expect("the producer ran");
    took
}

/// Time for `ROUND_TRIPS` items sent there and echoed back.
fn ping_pong<S: Sender, R: Receiver>(there: (S, R), back: (S, R)) -> Duration {
    let (mut ping, mut pinged) = there;
    let (mut pong, mut ponged) = back;
    let echo = std::thread::spawn(move || {
        for _ in 0..ROUND_TRIPS {
            let value = receive_spinning(&mut pinged);
            send_spinning(&mut pong, value);
        }
    });
    let started = Instant::now();
    for value in 0..ROUND_TRIPS {
        send_spinning(&mut ping, value);
        assert_eq!(receive_spinning(&mut ponged), value);
    }
    let took = started.elapsed();
    echo.join().expect("the echo ran");
    took
}

fn bench_queues(c: &mut Criterion) {
    let mut group = c.benchmark_group("spsc");
    group.sample_size(10);
    // Each iteration is a whole run; criterion divides by the iterations, so the figures
    // are per run of ITEMS items (stream) or ROUND_TRIPS round trips (ping-pong).
    group.bench_function("stream/ours", |b| {
        b.iter_custom(|runs| (0..runs).map(|_| stream(ours())).sum())
    });
    group.bench_function("stream/rtrb", |b| {
        b.iter_custom(|runs| (0..runs).map(|_| stream(theirs())).sum())
    });
    group.bench_function("ping-pong/ours", |b| {
        b.iter_custom(|runs| (0..runs).map(|_| ping_pong(ours(), ours())).sum())
    });
    group.bench_function("ping-pong/rtrb", |b| {
        b.iter_custom(|runs| (0..runs).map(|_| ping_pong(theirs(), theirs())).sum())
    });
    group.finish();
}

criterion_group!(benches, bench_queues);
criterion_main!(benches);

//! The WAL on a ring it shares with other work (the dataplane's LEU ring, issue #22 item 6):
//! its writes go out with the owner's submit and complete in the owner's reap, a blocking
//! flush drives the ring without losing the owner's completions, and the ring going away,
//! idle or with a write in flight, costs no record that was acknowledged and no panic.

use std::cell::RefCell;
use std::path::Path;
use std::rc::{Rc, Weak};
use std::time::Duration;
use vortex_io::{Owner, PushError, RingConfig, RingDriver};
use vortex_storage::wal::{Wal, WalOptions};
use vortex_storage::{DirectIo, LogChain, LogOp, PosixEnv, SharedLogRing, StorageError};

/// What the owner's ring carries: the log's writes beside operations of its own.
enum TestOp {
    Log(LogOp),
    Nop(u32),
}

/// A ring owned by "the loop" (the test), shared with the WAL.
struct OwnerRing {
    driver: RefCell<RingDriver<TestOp>>,
    log_done: RefCell<Vec<(LogOp, i32)>>,
    /// The owner's own completions, whoever reaped them.
    nops_done: RefCell<Vec<u32>>,
}

impl OwnerRing {
    fn new() -> Rc<OwnerRing> {
        Rc::new(OwnerRing {
            driver: RefCell::new(RingDriver::new(&RingConfig::plain(64)).unwrap()),
            log_done: RefCell::new(Vec::new()),
            nops_done: RefCell::new(Vec::new()),
        })
    }

    fn weak(self: &Rc<Self>) -> Weak<dyn SharedLogRing> {
        let weak: Weak<OwnerRing> = Rc::downgrade(self);
        weak
    }

    /// Moves what completed to where its owner finds it.
    fn reap(&self) -> usize {
        self.driver
            .borrow_mut()
            .reap(|completion, owner| match owner {
                Owner::Finished(TestOp::Log(op)) => {
                    self.log_done.borrow_mut().push((op, completion.result))
                }
                Owner::Finished(TestOp::Nop(tag)) => self.nops_done.borrow_mut().push(tag),
                Owner::Continuing(_) => {}
            })
    }

    /// One pass of the owner's loop: submit everything queued and wait for completions.
    fn pass(&self) {
        self.driver
            .borrow_mut()
            .submit_and_wait_timeout(1, Duration::from_millis(200))
            .unwrap();
        self.reap();
    }

    fn push_nop(&self, tag: u32) {
        assert!(self.driver.borrow_mut().push_nop(TestOp::Nop(tag)).is_ok());
    }
}

impl SharedLogRing for OwnerRing {
    unsafe fn push_log_chain(&self, ops: LogChain) -> Result<(), PushError<LogChain>> {
        let ops = ops
            .into_iter()
            .map(|(entry, op)| (entry, TestOp::Log(op)))
            .collect();
        // SAFETY: forwarded from the caller.
        let pushed = unsafe { self.driver.borrow_mut().push_chain(ops) };
        pushed.map_err(|refused| {
            let back = |ops: Vec<(io_uring::squeue::Entry, TestOp)>| -> LogChain {
                ops.into_iter()
                    .filter_map(|(entry, op)| match op {
                        TestOp::Log(op) => Some((entry, op)),
                        TestOp::Nop(_) => None,
                    })
                    .collect()
            };
            match refused {
                PushError::Busy(ops) => PushError::Busy(back(ops)),
                PushError::Ring(ops, error) => PushError::Ring(back(ops), error),
            }
        })
    }

    fn wait(&self, timeout: Duration) -> std::io::Result<()> {
        self.driver
            .borrow_mut()
            .submit_and_wait_timeout(1, timeout)
            .map_err(std::io::Error::other)?;
        self.reap();
        Ok(())
    }

    fn take_log_completions(&self, done: &mut Vec<(LogOp, i32)>) {
        done.append(&mut self.log_done.borrow_mut());
    }
}

fn options() -> WalOptions {
    WalOptions {
        segment_bytes_target: 64 << 10,
        batch_bytes_max: 256 << 10,
        appends_pending_max: 256,
        record_bytes_max: 32 << 10,
        salvage: false,
    }
}

type Records = Vec<(u8, u64, Vec<u8>)>;

fn open(dir: &Path) -> (Wal<PosixEnv>, Records) {
    let env = PosixEnv::new(&RingConfig::plain(32), DirectIo::Auto).unwrap();
    let mut records = Vec::new();
    let (wal, _) = Wal::open(env, dir, options(), |record| {
        records.push((record.kind, record.sequence, record.payload.to_vec()))
    })
    .unwrap();
    (wal, records)
}

/// A WAL in `dir` sharing a new owner's ring.
fn open_shared(dir: &Path) -> (Wal<PosixEnv>, Rc<OwnerRing>) {
    let (mut wal, _) = open(dir);
    let ring = OwnerRing::new();
    wal.share_ring(ring.weak()).unwrap();
    (wal, ring)
}

fn payload(sequence: u64) -> Vec<u8> {
    (0..(sequence % 700) as usize + 1)
        .map(|i| (i as u64 ^ sequence) as u8)
        .collect()
}

fn append(wal: &mut Wal<PosixEnv>, written: &mut Records) -> u64 {
    let sequence = wal.next_sequence();
    let body = payload(sequence);
    assert_eq!(wal.append(1, &body).unwrap(), sequence);
    written.push((1, sequence, body));
    sequence
}

#[test]
fn writes_go_out_with_the_owners_submit_and_complete_in_its_reap() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("wal");
    let (mut wal, ring) = open_shared(&dir);
    assert!(wal.env().shares_ring());
    let mut written = Vec::new();
    // Enough to rotate segments several times.
    for round in 0..200u32 {
        let last = append(&mut wal, &mut written);
        append(&mut wal, &mut written);
        // The chain is queued on the owner's ring; the owner's own operation goes in the
        // same submit.
        assert_eq!(wal.poll(None).unwrap(), last - 1, "round {round}");
        ring.push_nop(round);
        let calls = ring.driver.borrow().stats().submit_calls;
        let durable_before = wal.durable_sequence();
        // Nothing completes the log's writes but the owner's pass: polling alone does not.
        for _ in 0..3 {
            assert_eq!(wal.poll(None).unwrap(), durable_before);
        }
        assert_eq!(ring.driver.borrow().stats().submit_calls, calls);
        while wal.durable_sequence() < last + 1 {
            ring.pass();
            wal.poll(None).unwrap();
        }
    }
    assert!(wal.stats().rotations > 0, "{:?}", wal.stats());
    assert_eq!(ring.nops_done.borrow().len(), 200);
    drop(wal);
    let (_, replayed) = open(&dir);
    assert_eq!(replayed, written);
}

#[test]
fn a_blocking_flush_drives_the_shared_ring_and_keeps_the_owners_completions() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("wal");
    let (mut wal, ring) = open_shared(&dir);
    let mut written = Vec::new();
    for tag in 0..50 {
        ring.push_nop(tag);
        for _ in 0..10 {
            append(&mut wal, &mut written);
        }
        let last = written.last().unwrap().1;
        assert_eq!(wal.flush().unwrap(), last);
    }
    // Every one of the owner's completions the flushes reaped was kept for it.
    ring.pass();
    assert_eq!(*ring.nops_done.borrow(), (0..50).collect::<Vec<u32>>());
    drop(wal);
    let (_, replayed) = open(&dir);
    assert_eq!(replayed, written);
}

#[test]
fn an_idle_wal_outlives_its_shared_ring_on_a_ring_of_its_own() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("wal");
    let (mut wal, ring) = open_shared(&dir);
    let mut written = Vec::new();
    for _ in 0..20 {
        append(&mut wal, &mut written);
    }
    wal.flush().unwrap();
    drop(ring);
    // The owner went away with nothing in flight: the log goes on, durably.
    for _ in 0..20 {
        append(&mut wal, &mut written);
    }
    assert_eq!(wal.flush().unwrap(), 40);
    assert!(!wal.env().shares_ring());
    assert!(wal.read_only().is_none());
    drop(wal);
    let (_, replayed) = open(&dir);
    assert_eq!(replayed, written);
}

#[test]
fn a_write_in_flight_when_the_shared_ring_goes_away_fails_the_log_not_the_process() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("wal");
    let (mut wal, ring) = open_shared(&dir);
    let mut written = Vec::new();
    for _ in 0..5 {
        append(&mut wal, &mut written);
    }
    let acknowledged = wal.flush().unwrap();
    for _ in 0..5 {
        append(&mut wal, &mut written);
    }
    wal.poll(None).unwrap(); // queued on the owner's ring, not submitted
    drop(ring);
    match wal.poll(None) {
        Err(StorageError::ReadOnly { .. }) => {}
        other => panic!("expected the log to turn read-only, got {other:?}"),
    }
    assert_eq!(wal.durable_sequence(), acknowledged);
    assert!(matches!(
        wal.append(1, b"after"),
        Err(StorageError::ReadOnly { .. })
    ));
    drop(wal);
    // What was acknowledged is there; what was not may or may not be, in order.
    let (_, replayed) = open(&dir);
    assert!(replayed.len() >= acknowledged as usize);
    assert_eq!(replayed[..], written[..replayed.len()]);
}

#[test]
fn sharing_waits_for_the_writes_in_flight_on_the_own_ring() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("wal");
    let (mut wal, _) = open(&dir);
    let mut written = Vec::new();
    for _ in 0..30 {
        append(&mut wal, &mut written);
    }
    wal.poll(None).unwrap(); // a chain in flight on the WAL's own ring
    let ring = OwnerRing::new();
    wal.share_ring(ring.weak()).unwrap();
    assert_eq!(wal.durable_sequence(), 30);
    drop(wal);
    let (_, replayed) = open(&dir);
    assert_eq!(replayed, written);
}

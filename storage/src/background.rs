//! Work off the reactor threads (issue #6): a bounded pool for flushes and compactions, and a
//! byte-rate limiter that keeps compaction and the scrubber from starving foreground I/O.
//!
//! **The pool.** A fixed number of worker threads take jobs from a bounded queue. An LEU
//! never waits on it: [`BackgroundPool::try_submit`] either queues the job or gives it back
//! at once ([`PoolFull`]), and the LEU retries later (a flush that cannot be queued leaves the
//! MemTable growing towards its hard limit, which throttles writes: the pressure reaches the
//! client as THROTTLED, never as unbounded memory). Dropping the pool lets queued jobs finish
//! and joins the workers.
//!
//! **The rate limiter.** A token bucket in bytes: [`RateLimiter::delay_for`] charges a read or
//! write of `bytes` and says how long the caller must wait first so that the long-run rate
//! stays at `bytes_per_second`, with bursts of at most one second's worth. The clock is passed
//! in, so the accounting is tested without timing anything.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A unit of background work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// The queue was full: the job comes back.
pub struct PoolFull(pub Job);

impl std::fmt::Debug for PoolFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolFull(..)")
    }
}

/// A fixed set of worker threads over a bounded queue.
#[derive(Debug)]
pub struct BackgroundPool {
    sender: Option<SyncSender<Job>>,
    workers: Vec<JoinHandle<()>>,
}

impl BackgroundPool {
    /// `threads` workers (at least one) at nice value `nice` (0: the process's), and room
    /// for `queue_max` waiting jobs.
    pub fn new(name: &str, threads: usize, queue_max: usize, nice: i32) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel::<Job>(queue_max);
        let receiver: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(receiver));
        let mut workers = Vec::new();
        for index in 0..threads.max(1) {
            let receiver = Arc::clone(&receiver);
            let worker = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    // Spawned by a pinned LEU, a worker would share its one CPU: it may
                    // run anywhere the process may (a failure leaves it where it is).
                    let _ = vortex_io::affinity::unpin_current_thread();
                    // Below the LEUs, so that searches and writes win the CPU from index
                    // builds (a failure leaves it at the process's priority).
                    if nice != 0 {
                        if let Err(error) = vortex_io::affinity::set_current_thread_nice(nice) {
                            tracing::warn!(nice, %error, "cannot lower a background worker's priority");
                        }
                    }
                    loop {
                        // Hold the lock only to take a job, never while running one.
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the pool was dropped and the queue drained
                        }
                    }
                })?;
            workers.push(worker);
        }
        Ok(BackgroundPool {
            sender: Some(sender),
            workers,
        })
    }

    /// Queues `job`, or gives it back at once when `queue_max` jobs are waiting.
    pub fn try_submit(&self, job: Job) -> Result<(), PoolFull> {
        let Some(sender) = &self.sender else {
            return Err(PoolFull(job));
        };
        match sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Err(PoolFull(job)),
        }
    }
}

impl Drop for BackgroundPool {
    fn drop(&mut self) {
        // Closing the queue ends each worker once it is drained.
        drop(self.sender.take());
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// A token bucket in bytes.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    bytes_per_second: u64,
    /// Bytes that may go now (negative: owed).
    balance: i128,
    updated: Instant,
    /// When set, a wait ends at once and says so ([`RateLimiter::throttle`]).
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl RateLimiter {
    /// A limiter at `bytes_per_second` (0: unlimited), starting with a full one-second burst.
    pub fn new(bytes_per_second: u64, now: Instant) -> Self {
        RateLimiter {
            stop: None,
            bytes_per_second,
            balance: i128::from(bytes_per_second),
            updated: now,
        }
    }

    /// Charges `bytes` at `now` and returns how long to wait before doing the I/O.
    pub fn delay_for(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.bytes_per_second == 0 {
            return Duration::ZERO;
        }
        let rate = i128::from(self.bytes_per_second);
        let elapsed = now.saturating_duration_since(self.updated);
        self.updated = self.updated.max(now);
        let earned = (elapsed.as_nanos() as i128).saturating_mul(rate) / 1_000_000_000;
        // At most one second's worth is saved up.
        self.balance = (self.balance + earned).min(rate) - i128::from(bytes);
        if self.balance >= 0 {
            return Duration::ZERO;
        }
        let owed_nanos = (-self.balance).saturating_mul(1_000_000_000) / rate;
        Duration::from_nanos(owed_nanos.min(i128::from(u64::MAX)) as u64)
    }

    /// The same limiter, whose waits end as soon as `stop` is set.
    pub fn stopping_on(mut self, stop: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Charges `bytes` and sleeps as long as needed, in slices of at most 20 ms: `Err`
    /// (`Closed`) as soon as the stop flag is set, so that a rate-limited job ends within
    /// one slice of a close.
    pub fn throttle(&mut self, bytes: u64) -> Result<(), crate::StorageError> {
        let mut delay = self.delay_for(bytes, Instant::now());
        let stop = self.stop.as_deref();
        let stopped = || stop.is_some_and(|stop| stop.load(std::sync::atomic::Ordering::Acquire));
        loop {
            if stopped() {
                return Err(crate::StorageError::Closed("stopping"));
            }
            if delay.is_zero() {
                return Ok(());
            }
            let slice = delay.min(Duration::from_millis(20));
            std::thread::sleep(slice);
            delay -= slice;
        }
    }

    /// The configured rate.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    const MIB: u64 = 1 << 20;

    /// A pool made by a pinned thread (an LEU) does not run its jobs on that one CPU only:
    /// the workers may use every CPU the process may.
    #[test]
    fn workers_of_a_pinned_thread_run_on_every_cpu_the_process_may_use() {
        let process = vortex_io::affinity::allowed_cpus_of_thread(std::process::id()).unwrap();
        let first = process.iter().next().unwrap();
        let worker_cpus = std::thread::spawn(move || {
            vortex_io::affinity::pin_current_thread(first).unwrap();
            let pool = BackgroundPool::new("test-unpinned", 1, 1, 0).unwrap();
            let (sender, receiver) = mpsc::channel();
            pool.try_submit(Box::new(move || {
                let tid = vortex_io::affinity::current_thread_id();
                let _ = sender.send(vortex_io::affinity::allowed_cpus_of_thread(tid).unwrap());
            }))
            .unwrap();
            receiver.recv().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(worker_cpus, process, "the worker kept its spawner's pin");
    }

    /// Workers run at the nice value asked for (below the LEUs), and at the process's with 0.
    #[test]
    fn workers_run_at_the_nice_value_asked_for() {
        let nice_of_a_job = |nice: i32| {
            let pool = BackgroundPool::new("test-nice", 1, 1, nice).unwrap();
            let (sender, receiver) = mpsc::channel();
            pool.try_submit(Box::new(move || {
                // SAFETY: getpriority with PRIO_PROCESS and who = 0 reads the calling
                // thread's nice value; it takes no pointer.
                let _ = sender.send(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) });
            }))
            .unwrap();
            receiver.recv().unwrap()
        };
        // SAFETY: as above.
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(nice_of_a_job(0), own);
        if own <= 7 {
            assert_eq!(nice_of_a_job(7), 7);
        }
        assert_eq!(nice_of_a_job(19), 19);
    }

    #[test]
    fn the_rate_holds_over_a_long_run_with_one_second_of_burst() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10 * MIB, start);
        // The first second's worth goes at once.
        assert_eq!(limiter.delay_for(10 * MIB, start), Duration::ZERO);
        // The next MiB must wait a tenth of a second.
        assert_eq!(limiter.delay_for(MIB, start), Duration::from_millis(100));
        // Having waited, 100 MiB in 1 MiB pieces, each charged when the last wait ended,
        // take 10 s: the long-run rate is the configured one.
        let mut now = start + Duration::from_millis(100);
        for _ in 0..100 {
            now += limiter.delay_for(MIB, now);
        }
        let seconds = (now - start).as_secs_f64();
        assert!((10.0..10.2).contains(&seconds), "{seconds}");
        // Idle time saves up at most one second's worth.
        let later = now + Duration::from_secs(60);
        assert_eq!(limiter.delay_for(10 * MIB, later), Duration::ZERO);
        assert!(limiter.delay_for(MIB, later) > Duration::ZERO);
    }

    /// A wait of a thousand seconds ends within a slice of the stop flag being set.
    #[test]
    fn a_throttled_wait_ends_when_the_stop_flag_is_set() {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut limiter = RateLimiter::new(1, Instant::now()).stopping_on(Arc::clone(&stop));
        let setter = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                stop.store(true, std::sync::atomic::Ordering::Release);
            })
        };
        let started = Instant::now();
        assert!(limiter.throttle(1000).is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
        setter.join().unwrap();
        // Without a stop flag nothing ends early (and nothing owed: no wait at all).
        let mut free = RateLimiter::new(1 << 20, Instant::now());
        assert!(free.throttle(10).is_ok());
    }

    #[test]
    fn zero_means_unlimited() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(0, now);
        assert_eq!(limiter.delay_for(u64::MAX, now), Duration::ZERO);
    }

    #[test]
    fn the_queue_is_bounded_and_queued_jobs_finish_at_drop() {
        let pool = BackgroundPool::new("test-pool", 1, 2, 0).unwrap();
        let gate = Arc::new(Barrier::new(2));
        let done = Arc::new(AtomicUsize::new(0));
        // The worker blocks on the first job, so the queue fills behind it.
        let blocker = Arc::clone(&gate);
        pool.try_submit(Box::new(move || {
            blocker.wait();
        }))
        .unwrap();
        let mut accepted = 0;
        let mut refused = 0;
        for _ in 0..10 {
            let done = Arc::clone(&done);
            match pool.try_submit(Box::new(move || {
                done.fetch_add(1, Ordering::SeqCst);
            })) {
                Ok(()) => accepted += 1,
                Err(PoolFull(_)) => refused += 1,
            }
        }
        // Two places in the queue, one of them still held by the blocker if the worker has
        // not taken it off yet.
        assert!((1..=2).contains(&accepted), "{accepted}");
        assert_eq!(accepted + refused, 10);
        gate.wait();
        drop(pool);
        assert_eq!(done.load(Ordering::SeqCst), accepted);
    }
}

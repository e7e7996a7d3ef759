//! The NOP benchmark: how many io_uring round trips an LEU drives per second, and whether it
//! is ever switched out while doing so.
//!
//! Every LEU thread is pinned where the `ThreadMapping` puts it, creates its own ring, and
//! loops: push `batch` NOPs, submit and wait for them, reap them. All LEUs run at once, as
//! they would in the appliance. Context switches are the thread's own (`getrusage(RUSAGE_THREAD)`):
//! voluntary ones mean the thread slept in the kernel, involuntary ones that the scheduler
//! took its core. Each mode (the driver's tuned setup flags, a plain ring, optionally SQPOLL)
//! runs in the same invocation so that their ratio is meaningful on a noisy machine.

use serde::Serialize;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use vortex_config::ThreadMapping;
use vortex_io::{affinity, RingConfig, RingDriver, SetupFlag};

/// A ring configuration to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NopMode {
    /// `RingDriver::new`: the best flags this kernel accepts, as an LEU runs.
    Tuned,
    /// No optional setup flag: the baseline.
    Plain,
    /// SQPOLL: a kernel thread submits.
    Sqpoll,
}

impl NopMode {
    /// The mode's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            NopMode::Tuned => "tuned",
            NopMode::Plain => "plain",
            NopMode::Sqpoll => "sqpoll",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct NopBenchConfig {
    /// Where the LEUs run.
    pub mapping: ThreadMapping,
    /// The appliance's ring settings (queue depth, SQPOLL idle).
    pub ring: RingConfig,
    /// NOPs per submission.
    pub batch: u32,
    /// Measured time per mode.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
}

/// One LEU's result in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct LeuNopResult {
    /// The LEU.
    pub leu: u16,
    /// Its CPU.
    pub cpu: u32,
    /// NOPs completed in the measured time.
    pub nops: u64,
    /// NOPs per second.
    pub nops_per_second: f64,
    /// Submit calls per second (kernel entries, except under SQPOLL).
    pub submits_per_second: f64,
    /// Voluntary context switches during the measured time.
    pub voluntary_context_switches: i64,
    /// Involuntary context switches during the measured time.
    pub involuntary_context_switches: i64,
    /// Setup flags in use.
    pub flags: Vec<&'static str>,
    /// Whether the thread's affinity read back from procfs was exactly its CPU.
    pub pinned: bool,
    /// What failed, if anything.
    pub error: Option<String>,
}

/// All LEUs in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    /// The mode.
    pub mode: NopMode,
    /// Per LEU.
    pub leus: Vec<LeuNopResult>,
}

impl ModeResult {
    /// Mean NOPs per second per LEU, over LEUs without error.
    pub fn mean_nops_per_second(&self) -> f64 {
        let good: Vec<f64> = self
            .leus
            .iter()
            .filter(|leu| leu.error.is_none())
            .map(|leu| leu.nops_per_second)
            .collect();
        if good.is_empty() {
            0.0
        } else {
            good.iter().sum::<f64>() / good.len() as f64
        }
    }
}

/// Runs `mode` on every LEU at once.
pub fn run_mode(config: &NopBenchConfig, mode: NopMode) -> ModeResult {
    let count = config.mapping.leus.len();
    let start_line = Arc::new(Barrier::new(count));
    let handles: Vec<_> = config
        .mapping
        .leus
        .iter()
        .map(|assignment| {
            let assignment = assignment.clone();
            let start_line = Arc::clone(&start_line);
            let mut ring = config.ring.clone();
            ring.sqpoll = mode == NopMode::Sqpoll;
            ring.sqpoll_cpu = config.mapping.sqpoll_cpu(assignment.leu);
            let (batch, duration, warmup) = (config.batch, config.duration, config.warmup);
            std::thread::Builder::new()
                .name(format!("leu-{}", assignment.leu))
                .spawn(move || {
                    let mut result = LeuNopResult {
                        leu: assignment.leu,
                        cpu: assignment.cpu,
                        nops: 0,
                        nops_per_second: 0.0,
                        submits_per_second: 0.0,
                        voluntary_context_switches: 0,
                        involuntary_context_switches: 0,
                        flags: Vec::new(),
                        pinned: false,
                        error: None,
                    };
                    let outcome = leu_loop(
                        &assignment,
                        &ring,
                        mode,
                        batch,
                        warmup,
                        duration,
                        &start_line,
                        &mut result,
                    );
                    if let Err(error) = outcome {
                        result.error = Some(error);
                    }
                    result
                })
        })
        .collect();
    let leus = handles
        .into_iter()
        .filter_map(|handle| handle.ok()?.join().ok())
        .collect();
    ModeResult { mode, leus }
}

#[allow(clippy::too_many_arguments)]
fn leu_loop(
    assignment: &vortex_config::LeuAssignment,
    ring_config: &RingConfig,
    mode: NopMode,
    batch: u32,
    warmup: Duration,
    duration: Duration,
    start_line: &Barrier,
    result: &mut LeuNopResult,
) -> Result<(), String> {
    // Every thread reaches the barrier, whatever fails, so that the others are not stuck.
    let pinned = affinity::pin_current_thread(assignment.cpu);
    let ring: Result<RingDriver<()>, _> = match mode {
        NopMode::Plain => RingDriver::with_flags(ring_config, &[]),
        NopMode::Tuned | NopMode::Sqpoll => RingDriver::new(ring_config),
    };
    start_line.wait();
    pinned.map_err(|error| format!("pinning to CPU {}: {error}", assignment.cpu))?;
    let mut ring = ring.map_err(|error| error.to_string())?;
    result.pinned = affinity::allowed_cpus_of_thread(affinity::current_thread_id())
        .map(|allowed| allowed.as_slice() == [assignment.cpu])
        .unwrap_or(false);
    result.flags = ring
        .setup()
        .accepted
        .iter()
        .map(|flag| flag.name())
        .collect();
    if mode == NopMode::Sqpoll && !ring.setup().uses(SetupFlag::Sqpoll) {
        return Err("SQPOLL refused by the kernel".to_owned());
    }
    let batch = batch.clamp(1, ring.setup().inflight_max);
    let polling = mode == NopMode::Sqpoll;

    let run_for = |ring: &mut RingDriver<()>, how_long: Duration| -> Result<u64, String> {
        let deadline = Instant::now() + how_long;
        let mut completed = 0u64;
        // Check the clock once per 64 batches: reading it is not free.
        loop {
            for _ in 0..64 {
                for _ in 0..batch {
                    ring.push_nop(())
                        .map_err(|_| "in-flight bound hit".to_owned())?;
                }
                let mut reaped = 0;
                while reaped < batch as usize {
                    if polling {
                        // The kernel thread submits and completes: spin on the completion
                        // queue as a polling LEU does, entering only to wake that thread.
                        ring.submit().map_err(|error| error.to_string())?;
                    } else {
                        ring.submit_and_wait(batch as usize - reaped)
                            .map_err(|error| error.to_string())?;
                    }
                    reaped += ring.reap(|_, _| {});
                }
                completed += u64::from(batch);
            }
            if Instant::now() >= deadline {
                return Ok(completed);
            }
        }
    };

    run_for(&mut ring, warmup)?;
    let submits_before = ring.stats().submit_calls;
    let usage_before = thread_usage();
    let started = Instant::now();
    let nops = run_for(&mut ring, duration)?;
    let elapsed = started.elapsed().as_secs_f64();
    let usage_after = thread_usage();
    result.nops = nops;
    result.nops_per_second = nops as f64 / elapsed;
    result.submits_per_second = (ring.stats().submit_calls - submits_before) as f64 / elapsed;
    result.voluntary_context_switches = usage_after.0 - usage_before.0;
    result.involuntary_context_switches = usage_after.1 - usage_before.1;
    Ok(())
}

/// (voluntary, involuntary) context switches of the calling thread so far.
fn thread_usage() -> (i64, i64) {
    // SAFETY: an all-zero rusage is a valid value to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return (0, 0);
    }
    (usage.ru_nvcsw, usage.ru_nivcsw)
}

/// Prints the modes as a table with the ratio of each to the first.
pub fn render(results: &[ModeResult], command: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "command: {command}");
    let _ = writeln!(
        out,
        "{:<7} {:>4} {:>4} {:>14} {:>12} {:>10} {:>10}  flags",
        "mode", "LEU", "CPU", "NOPs/s", "submits/s", "vol. cs", "invol. cs"
    );
    for mode in results {
        for leu in &mode.leus {
            match &leu.error {
                Some(error) => {
                    let _ = writeln!(
                        out,
                        "{:<7} {:>4} {:>4}  error: {error}",
                        mode.mode.name(),
                        leu.leu,
                        leu.cpu
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{:<7} {:>4} {:>4} {:>14.0} {:>12.0} {:>10} {:>10}  {}{}",
                        mode.mode.name(),
                        leu.leu,
                        leu.cpu,
                        leu.nops_per_second,
                        leu.submits_per_second,
                        leu.voluntary_context_switches,
                        leu.involuntary_context_switches,
                        if leu.flags.is_empty() {
                            "none".to_owned()
                        } else {
                            leu.flags.join(",")
                        },
                        if leu.pinned { "" } else { " (NOT PINNED)" }
                    );
                }
            }
        }
    }
    if let Some(baseline) = results.iter().find(|mode| mode.mode == NopMode::Plain) {
        let base = baseline.mean_nops_per_second();
        for mode in results.iter().filter(|mode| mode.mode != NopMode::Plain) {
            if base > 0.0 {
                let _ = writeln!(
                    out,
                    "ratio {}/plain (mean NOPs/s per LEU): {:.3}",
                    mode.mode.name(),
                    mode.mean_nops_per_second() / base
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vortex_config::{LeuConfig, LeuCount, Topology};

    #[test]
    fn a_short_run_counts_nops_on_every_leu() {
        let topology = Topology::discover().unwrap();
        let mapping = ThreadMapping::plan(
            &topology,
            &LeuConfig {
                count: LeuCount::Fixed(1),
                cores: Vec::new(),
                ..LeuConfig::default()
            },
        )
        .unwrap();
        let config = NopBenchConfig {
            mapping,
            ring: RingConfig::plain(64),
            batch: 16,
            duration: Duration::from_millis(50),
            warmup: Duration::from_millis(10),
        };
        for mode in [NopMode::Tuned, NopMode::Plain] {
            let result = run_mode(&config, mode);
            assert_eq!(result.leus.len(), 1);
            let leu = &result.leus[0];
            assert_eq!(leu.error, None);
            assert!(leu.pinned);
            // Whole batches only: the count is a multiple of the batch size.
            assert!(leu.nops > 0 && leu.nops.is_multiple_of(16), "{leu:?}");
        }
    }
}

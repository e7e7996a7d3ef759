//! Starting LEU threads on their cores, and verifying the pinning from outside.
//!
//! Each LEU thread pins itself first (so that everything it allocates afterwards is
//! first-touched on its own NUMA node), then creates its io_uring on itself (the ring is
//! single-issuer: only the creating thread may submit) and proves it with a NOP round trip.
//! For verification the threads then park on a barrier while the main thread reads each one's
//! `Cpus_allowed_list` from `/proc/self/task/<tid>/status`.

use serde::Serialize;
use std::sync::mpsc;
use vortex_config::{CpuSet, LeuAssignment, ThreadMapping};
use vortex_io::affinity;
use vortex_io::{Owner, RingConfig, RingDriver, RingSetup};

/// What one LEU thread reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeuVerification {
    /// The LEU index.
    pub leu: u16,
    /// The CPU the mapping assigned.
    pub cpu_expected: u32,
    /// The kernel thread id.
    pub tid: u32,
    /// The thread name as procfs shows it.
    pub thread_name: String,
    /// The CPUs procfs says the thread may run on.
    pub cpus_allowed: Option<CpuSet>,
    /// Whether `cpus_allowed` is exactly the assigned CPU.
    pub matches: bool,
    /// What went wrong, if anything (pinning, procfs, the ring).
    pub error: Option<String>,
    /// The LEU's ring, when it could be created.
    pub ring: Option<RingSummary>,
}

/// How an LEU's ring was set up, for printing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RingSummary {
    /// Setup flags in use.
    pub flags: Vec<&'static str>,
    /// Flags refused, with why.
    pub refused: Vec<(&'static str, String)>,
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries.
    pub cq_entries: u32,
    /// The in-flight bound.
    pub inflight_max: u32,
}

impl RingSummary {
    fn from_setup(setup: &RingSetup) -> Self {
        RingSummary {
            flags: setup.accepted.iter().map(|flag| flag.name()).collect(),
            refused: setup
                .refused
                .iter()
                .map(|(flag, reason)| (flag.name(), reason.clone()))
                .collect(),
            sq_entries: setup.sq_entries,
            cq_entries: setup.cq_entries,
            inflight_max: setup.inflight_max,
        }
    }
}

struct ThreadReport {
    leu: u16,
    tid: u32,
    error: Option<String>,
    ring: Option<RingSummary>,
}

/// Starts one thread per LEU of `mapping`, pins each, brings up its ring, reads every
/// thread's affinity back from procfs, and returns what it found, in LEU order.
pub fn verify(
    mapping: &ThreadMapping,
    ring_config: &RingConfig,
) -> std::io::Result<Vec<LeuVerification>> {
    let count = mapping.leus.len();
    // Bounded by construction: each LEU sends exactly one report.
    let (report_sender, report_receiver) = mpsc::sync_channel::<ThreadReport>(count);
    // Each thread parks until its release sender is dropped, so that it is still alive (and
    // still pinned) while its affinity is read from procfs.
    let mut releases = Vec::with_capacity(count);
    let mut handles = Vec::with_capacity(count);
    for assignment in &mapping.leus {
        let assignment = assignment.clone();
        let report_sender = report_sender.clone();
        let (release, parked) = mpsc::sync_channel::<()>(0);
        let mut ring_config = ring_config.clone();
        ring_config.sqpoll_cpu = mapping.sqpoll_cpu(assignment.leu);
        let handle = std::thread::Builder::new()
            .name(format!("leu-{}", assignment.leu))
            .spawn(move || {
                let report = bring_up(&assignment, &ring_config);
                // The receiver outlives every sender, so the send cannot fail.
                let _ = report_sender.send(report);
                // Returns when the main thread drops `release`.
                let _ = parked.recv();
            })?;
        releases.push(release);
        handles.push(handle);
    }
    drop(report_sender);
    let mut reports: Vec<ThreadReport> = report_receiver.iter().take(count).collect();
    reports.sort_by_key(|report| report.leu);
    let mut results = Vec::with_capacity(count);
    for (assignment, report) in mapping.leus.iter().zip(reports) {
        let mut error = report.error;
        let cpus_allowed = match affinity::allowed_cpus_of_thread(report.tid) {
            Ok(allowed) => Some(allowed),
            Err(read_error) => {
                error.get_or_insert(format!("cannot read procfs affinity: {read_error}"));
                None
            }
        };
        let thread_name = affinity::thread_name(report.tid).unwrap_or_default();
        let matches = cpus_allowed.as_ref().map(CpuSet::as_slice) == Some(&[assignment.cpu][..]);
        results.push(LeuVerification {
            leu: assignment.leu,
            cpu_expected: assignment.cpu,
            tid: report.tid,
            thread_name,
            cpus_allowed,
            matches,
            error,
            ring: report.ring,
        });
    }
    drop(releases);
    for handle in handles {
        let _ = handle.join();
    }
    Ok(results)
}

/// Runs on the LEU thread: pin, then the ring.
fn bring_up(assignment: &LeuAssignment, ring_config: &RingConfig) -> ThreadReport {
    let tid = affinity::current_thread_id();
    if let Err(error) = affinity::pin_current_thread(assignment.cpu) {
        return ThreadReport {
            leu: assignment.leu,
            tid,
            error: Some(format!(
                "sched_setaffinity to CPU {} failed: {error}",
                assignment.cpu
            )),
            ring: None,
        };
    }
    match ring_round_trip(ring_config) {
        Ok(ring) => ThreadReport {
            leu: assignment.leu,
            tid,
            error: None,
            ring: Some(ring),
        },
        Err(error) => ThreadReport {
            leu: assignment.leu,
            tid,
            error: Some(error),
            ring: None,
        },
    }
}

/// Creates the LEU's ring and proves it with one NOP.
fn ring_round_trip(config: &RingConfig) -> Result<RingSummary, String> {
    let mut ring: RingDriver<()> = RingDriver::new(config).map_err(|error| error.to_string())?;
    ring.push_nop(())
        .map_err(|_| "the ring refused a NOP on an empty queue".to_owned())?;
    ring.submit_and_wait(1).map_err(|error| error.to_string())?;
    let mut finished = 0;
    ring.reap(|completion, owner| {
        if completion.result == 0 && matches!(owner, Owner::Finished(())) {
            finished += 1;
        }
    });
    if finished != 1 {
        return Err("the ring's NOP did not complete".to_owned());
    }
    Ok(RingSummary::from_setup(ring.setup()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vortex_config::{LeuConfig, LeuCount, Topology};

    #[test]
    fn every_planned_leu_is_pinned_and_verified() {
        let topology = Topology::discover().unwrap();
        let mapping = ThreadMapping::plan(
            &topology,
            &LeuConfig {
                count: LeuCount::Fixed(topology.cores.len() as u16),
                cores: Vec::new(),
                ..LeuConfig::default()
            },
        )
        .unwrap();
        let results = verify(&mapping, &RingConfig::plain(16)).unwrap();
        assert_eq!(results.len(), mapping.leus.len());
        for (result, assignment) in results.iter().zip(&mapping.leus) {
            assert_eq!(result.leu, assignment.leu);
            assert!(result.matches, "{result:?}");
            assert_eq!(result.error, None);
            assert_eq!(result.thread_name, format!("leu-{}", assignment.leu));
            assert!(result.ring.is_some());
        }
    }
}

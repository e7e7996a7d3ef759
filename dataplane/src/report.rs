//! What `vortex-dataplane topology` prints: the discovered hardware, the data directory's
//! device, the LEU mapping and, with `--verify`, each LEU's pinning and ring.

use crate::leu::LeuVerification;
use serde::Serialize;
use std::fmt::Write;
use std::path::PathBuf;
use vortex_config::{BlockDevice, DirectIoAlignment, DirectIoSource, ThreadMapping, Topology};

/// Everything the command found, printable as text or JSON.
#[derive(Debug, Clone, Serialize)]
pub struct TopologyReport {
    /// Where the config came from.
    pub config_origin: String,
    /// CPUs, cores, nodes.
    pub topology: Topology,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Its block device, if it has one.
    pub block_device: Option<BlockDevice>,
    /// Direct I/O alignment there.
    pub direct_io: DirectIoAlignment,
    /// The LEU plan.
    pub mapping: ThreadMapping,
    /// The memory lock outcome, when `--verify` applied it.
    pub memory_lock: Option<String>,
    /// Per-LEU verification, with `--verify`.
    pub verification: Option<Vec<LeuVerification>>,
}

impl TopologyReport {
    /// Whether every LEU was verified pinned where planned (true when not verifying).
    pub fn all_match(&self) -> bool {
        self.verification.as_ref().is_none_or(|results| {
            results
                .iter()
                .all(|result| result.matches && result.error.is_none())
        })
    }

    /// The human-readable text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let topology = &self.topology;
        let _ = writeln!(out, "Hardware");
        let _ = writeln!(
            out,
            "  CPUs         {} online ({}), {} socket(s), {} physical core(s), up to {} thread(s) per core",
            topology.cpus.len(),
            topology.online(),
            topology.package_count(),
            topology.cores.len(),
            topology.threads_per_core_max()
        );
        for node in &topology.nodes {
            let memory = node
                .memory_total_bytes
                .map(|bytes| format!(", {:.1} GiB", bytes as f64 / (1u64 << 30) as f64))
                .unwrap_or_default();
            let _ = writeln!(out, "  NUMA node {}  CPUs {}{memory}", node.id, node.cpus);
        }
        let _ = writeln!(
            out,
            "  isolated     {} (nohz_full: {})",
            topology.isolated, topology.nohz_full
        );
        let device = match &self.block_device {
            Some(device) => format!(
                "{} ({}:{}{}), logical sector {} B, physical sector {} B",
                device.name,
                device.major,
                device.minor,
                if device.partition { ", partition" } else { "" },
                device.logical_sector_bytes,
                device.physical_sector_bytes
            ),
            None => "no block device (tmpfs, overlay or network file system)".to_owned(),
        };
        let _ = writeln!(
            out,
            "  data dir     {} on {device}",
            self.data_dir.display()
        );
        let direct_io = match self.direct_io.source {
            DirectIoSource::Unsupported => {
                "not supported here: the WAL will use buffered writes and fdatasync".to_owned()
            }
            source => format!(
                "buffer alignment {} B, offset alignment {} B (from {})",
                self.direct_io.memory_bytes,
                self.direct_io.offset_bytes,
                match source {
                    DirectIoSource::Statx => "statx STATX_DIOALIGN",
                    _ => "the logical sector size",
                }
            ),
        };
        let _ = writeln!(out, "  Direct I/O   {direct_io}");
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "LEU mapping ({} LEU(s), config: {})",
            self.mapping.leus.len(),
            self.config_origin
        );
        let _ = writeln!(
            out,
            "  {:>4}  {:>5}  {:>6}  {:>5}  {:>5}  {:<8}  idle siblings",
            "LEU", "CPU", "socket", "core", "node", "isolated"
        );
        for leu in &self.mapping.leus {
            let _ = writeln!(
                out,
                "  {:>4}  {:>5}  {:>6}  {:>5}  {:>5}  {:<8}  {}",
                leu.leu,
                leu.cpu,
                leu.package,
                leu.core_id,
                leu.node,
                if leu.isolated { "yes" } else { "no" },
                leu.idle_siblings
            );
        }
        if self.mapping.housekeeping.is_empty() {
            let _ = writeln!(
                out,
                "  housekeeping CPUs: none (the OS and the controlplane share the LEUs' cores)"
            );
        } else {
            let _ = writeln!(
                out,
                "  housekeeping CPUs: {} (OS, interrupts, controlplane)",
                self.mapping.housekeeping
            );
        }
        if let Some(results) = &self.verification {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "Pinning verified from /proc/self/task/*/status (memory lock: {})",
                self.memory_lock.as_deref().unwrap_or("not applied")
            );
            for result in results {
                let allowed = result
                    .cpus_allowed
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), ToString::to_string);
                let verdict = if result.matches { "match" } else { "MISMATCH" };
                let _ = writeln!(
                    out,
                    "  LEU {:>3}  thread {} (tid {})  expected CPU {}  allowed {}  {verdict}",
                    result.leu, result.thread_name, result.tid, result.cpu_expected, allowed
                );
                if let Some(ring) = &result.ring {
                    let _ = writeln!(
                        out,
                        "           io_uring: {} SQ / {} CQ entries, in-flight max {}, flags {}",
                        ring.sq_entries,
                        ring.cq_entries,
                        ring.inflight_max,
                        if ring.flags.is_empty() {
                            "none".to_owned()
                        } else {
                            ring.flags.join(" ")
                        }
                    );
                    for (flag, reason) in &ring.refused {
                        let _ = writeln!(out, "           io_uring: {flag} not used: {reason}");
                    }
                }
                if let Some(error) = &result.error {
                    let _ = writeln!(out, "           error: {error}");
                }
            }
            let matched = results.iter().filter(|result| result.matches).count();
            if self.all_match() {
                let _ = writeln!(out, "all {matched} LEU(s) pinned as planned");
            } else {
                let _ = writeln!(
                    out,
                    "{} of {} LEU(s) not pinned as planned",
                    results.len() - matched.min(results.len()),
                    results.len()
                );
            }
        }
        out
    }
}

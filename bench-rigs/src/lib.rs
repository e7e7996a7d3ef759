//! VORTEX benchmarks: load generators, the recall/QPS harness and side-by-side peer runs.
//!
//! Performance targets live here, never in timed tests. Each rig prints the exact command
//! that produced it and reports ratios against a baseline measured in the same run, because
//! absolute times on a shared machine are noise.
//!
//! - [`nop`]: io_uring NOP round trips per LEU through `vortex_io::RingDriver`, with the
//!   context switches each LEU thread took during the run (the plan's "zero context-switch
//!   baseline"), tuned setup flags against a plain ring.
//! - [`dataset`]: deterministic clustered Gaussian-mixture datasets as `.fvecs` with exact
//!   top-100 ground truth in `.ivecs` ([`vecs`]).
//! - [`ann`]: recall@10 / QPS / latency / build time / memory of our HNSW on such a set, in
//!   the same JSON as the peers' script (`peers/ann_peers.py`); `peers/report.py` turns both
//!   into tables and plots.
//! - [`wal`]: durable WAL appends/s and ack latency by record size and appender count, beside
//!   a `write` + `fdatasync` loop on the same file system (the device's floor).
//! - [`lsm`]: random upserts then point lookups on our LSM store beside `fjall`, same
//!   workload and durability: throughput, write amplification, lookups/s, ratios.
//! - [`shard`]: a dataset ingested into one shard with side-car indexes built in the
//!   background: ingest rate, QPS and recall during and after ingest, time to ready, bytes
//!   per vector.

pub mod ann;
pub mod dataset;
pub mod ingest;
pub mod load;
pub mod lsm;
pub mod nop;
pub mod serve;
pub mod shard;
pub mod vecs;
pub mod wal;

/// The `percent`th percentile of `latencies_ns`, nearest rank (sorts them); 0 when empty.
pub fn percentile_ns(latencies_ns: &mut [u64], percent: usize) -> u64 {
    latencies_ns.sort_unstable();
    let rank = (latencies_ns.len() * percent)
        .div_ceil(100)
        .saturating_sub(1);
    latencies_ns.get(rank).copied().unwrap_or(0)
}

/// Bytes of the files under `dir`, recursively (0 for what cannot be read).
pub fn disk_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

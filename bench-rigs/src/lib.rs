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

pub mod ann;
pub mod dataset;
pub mod nop;
pub mod vecs;

//! The LEU's platform layer: its io_uring, its pinning, and the process's memory locking.
//!
//! This crate sits below both `vortex-storage` and `vortex-dataplane`: the WAL submits its
//! Direct I/O writes through the same per-LEU [`RingDriver`] that the reactor uses for
//! sockets, and storage must not depend on the dataplane to get it (docs/ARCHITECTURE.md).
//!
//! - [`ring`]: `RingDriver`, one io_uring per LEU with probed setup flags, bounded in-flight
//!   operations and completion dispatch by user data.
//! - [`affinity`]: pinning a thread to a CPU and reading the pinning back from procfs.
//! - [`memlock`]: `mlockall` under the `required` / `try` / `off` policy.
//! - [`allocator`]: fixed thresholds for glibc's malloc, so that freed memory goes back.
//! - [`fake`]: `FakeRing`, a ring whose completions a unit test writes.

pub mod affinity;
pub mod allocator;
pub mod fake;
pub mod memlock;
pub mod provided;
pub mod ring;

pub use fake::FakeRing;
pub use memlock::{HotShare, MemlockError, MemlockLimit, MemlockOutcome};
pub use provided::ProvidedRing;
pub use ring::{
    Completion, OpId, Owner, PushError, RingConfig, RingDriver, RingError, RingSetup, RingStats,
    SetupFlag,
};

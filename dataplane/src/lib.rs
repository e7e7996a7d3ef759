//! The VORTEX dataplane: one pinned, polling thread per core (an LEU, logical execution unit).
//!
//! Today this crate starts LEUs on the cores that `vortex-config`'s `ThreadMapping` chose,
//! pins them, gives each its own io_uring ([`vortex_io::RingDriver`]), and proves the pinning
//! from outside the threads ([`leu::verify`], behind `vortex-dataplane topology --verify`).
//! It also holds the routing of points to LEUs ([`routing`]: VNodes on a Ketama ring,
//! docs/DATAPLANE.md), the bounded lock-free SPSC queues between LEUs ([`spsc`]), and the
//! per-LEU executor of request handlers ([`executor`]), on which the handlers that wait (for
//! the WAL, for other LEUs' parts) run as `async` tasks. The reactor, the VBP server and
//! backpressure (issue #8) build on these LEUs.

pub mod appliance;
pub mod dispatch;
pub mod executor;
pub mod gather;
mod handlers;
pub mod handover;
pub mod leu;
pub mod listen;
pub mod looptime;
pub mod report;
/// Routing lives in the protocol crate, where shard-aware clients use it too.
pub use vortex_vbp::routing;
pub mod server;
pub mod spsc;

//! Appliance configuration, hardware discovery and the LEU mapping.
//!
//! This crate answers three questions before any LEU (logical execution unit) starts:
//!
//! 1. *What did the operator ask for?* [`ApplianceConfig`], one TOML file with a documented
//!    default for every field, validated so that a typo or an out-of-range value is refused
//!    with one line naming the field and what is accepted ([`Error::Invalid`]).
//! 2. *What is this machine?* [`Topology`] (logical CPUs, physical cores and their SMT
//!    siblings, NUMA nodes, isolated CPUs) and [`BlockDevice`] (sector sizes and Direct I/O
//!    alignment of the data directory's device), read from sysfs under a root path so that
//!    tests can run the same code over fixture trees ([`fixture`]).
//! 3. *Which core runs which LEU?* [`ThreadMapping`], a deterministic plan that gives each
//!    LEU its own physical core.
//!
//! It reads files and never changes the machine: pinning, memory locking and io_uring live in
//! `vortex-io`.

mod blockdev;
mod config;
mod cpuset;
mod error;
pub mod fixture;
mod mapping;
mod topology;

pub use blockdev::{BlockDevice, DirectIoAlignment, DirectIoSource};
pub use config::{
    ApplianceConfig, IoUringConfig, LeuConfig, LeuCount, LimitsConfig, LogConfig, LogLevel,
    MemoryConfig, MemoryLockPolicy, NetworkBackend, NetworkConfig, SearchSpread, StorageConfig,
};
pub use cpuset::CpuSet;
pub use error::{Error, InvalidConfig, EXIT_CODE_CONFIG, EXIT_CODE_RUNTIME};
pub use mapping::{LeuAssignment, ThreadMapping};
pub use topology::{LogicalCpu, NumaNode, PhysicalCore, Topology};

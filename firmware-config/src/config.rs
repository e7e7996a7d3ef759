//! The appliance config: one TOML file, every field documented and defaulted.
//!
//! The defaults run on a laptop: loopback, a data directory under the working directory,
//! memory locking attempted but not required, no SQPOLL. `firmware-config/examples/` holds a
//! laptop config (`dev.toml`) and a two-socket server config (`appliance.toml`).
//!
//! Parsing refuses unknown fields and wrong types (serde, with the field's dotted path from
//! `serde_path_to_error`); [`ApplianceConfig::validate`] then refuses out-of-range values.
//! Checks that need the machine (a CPU that does not exist, a data directory that cannot be
//! created) happen in [`ApplianceConfig::plan_leus`] and [`ApplianceConfig::prepare_data_dir`].

use crate::error::{Error, InvalidConfig};
use crate::mapping::ThreadMapping;
use crate::topology::Topology;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The most LEUs one appliance runs; far above any socket's core count, it bounds per-LEU
/// tables (SPSC queue pairs grow with its square).
pub const LEU_COUNT_MAX: u16 = 1024;
/// Smallest and largest io_uring submission queue depth (the kernel's own maximum is 32768).
pub const QUEUE_DEPTH_MIN: u32 = 8;
pub const QUEUE_DEPTH_MAX: u32 = 32768;
/// Upper bound of `io_uring.busy_poll_us`: a second.
pub const BUSY_POLL_US_MAX: u32 = 1_000_000;
/// Bounds of `io_uring.sqpoll_idle_ms`.
pub const SQPOLL_IDLE_MS_MAX: u32 = 10_000;
/// Bounds of `limits.frame_size_max_bytes`: one page up to 1 GiB.
pub const FRAME_SIZE_MIN_BYTES: u32 = 4096;
pub const FRAME_SIZE_MAX_BYTES: u32 = 1 << 30;
/// Upper bound of `limits.connections_max`.
pub const CONNECTIONS_MAX: u32 = 1 << 20;
/// Upper bound of `storage.scrub_mib_per_second`.
pub const SCRUB_MIB_PER_SECOND_MAX: u32 = 4096;
/// Upper bound of `storage.scrub_interval_s`: a week.
pub const SCRUB_INTERVAL_MAX_S: u32 = 604_800;
/// Bounds of `limits.stop_timeout_s`: a second to ten minutes.
pub const STOP_TIMEOUT_MAX_S: u32 = 600;
/// Upper bound of `limits.idle_timeout_s`: a day.
const IDLE_TIMEOUT_MAX_S: u32 = 86_400;

/// Upper bound of `limits.inflight_per_connection_max`.
pub const INFLIGHT_PER_CONNECTION_MAX: u32 = 4096;

/// The whole appliance config. Every section may be left out and takes its defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplianceConfig {
    /// Where clients connect.
    pub network: NetworkConfig,
    /// Where data lives.
    pub storage: StorageConfig,
    /// How many LEUs run, and on which cores.
    pub leu: LeuConfig,
    /// Memory locking.
    pub memory: MemoryConfig,
    /// io_uring setup for each LEU's ring.
    pub io_uring: IoUringConfig,
    /// Bounds on what clients may ask of the appliance.
    pub limits: LimitsConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[network]`: listening addresses and the network backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Address every listening socket binds. Default `127.0.0.1`.
    pub listen_address: IpAddr,
    /// The port shared by every LEU (`SO_REUSEPORT`): any client may connect here. Default 7700.
    pub port: u16,
    /// LEU `i` also listens on `leu_port_base + i`, so that shard-aware clients reach the
    /// owning core directly. Default 7710. The range may not include `port`.
    pub leu_port_base: u16,
    /// How packets reach the LEUs: `uring` (kernel sockets through io_uring). `dpdk` is
    /// reserved for the kernel-bypass backend and refused by this build.
    pub backend: NetworkBackend,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 7700,
            leu_port_base: 7710,
            backend: NetworkBackend::Uring,
        }
    }
}

/// The network backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkBackend {
    /// Kernel sockets driven through each LEU's io_uring.
    Uring,
    /// DPDK poll-mode drivers (reserved: not in this build).
    Dpdk,
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The data directory: WAL, MANIFEST, SSTables. A relative path is relative to the working
    /// directory of the process. Created at start if missing. Default `vortex-data`.
    pub data_dir: PathBuf,
    /// The nice value of the threads that flush, compact and build indexes, 0 to 19: above
    /// the LEUs' 0, so that under load searches and writes get the CPU first and index
    /// builds take what is left (on idle cores they run at full speed). 0 puts them level
    /// with the LEUs: loads finish sooner while searches run, and searches answer fewer.
    /// Default 10.
    pub background_nice: u8,
    /// The scrubber's pace in MiB per second: a thread per LEU re-reads every table and
    /// checks it against its checksums (a damaged table is fenced). 0 runs no scrubber.
    /// Default 16; at most 4096.
    pub scrub_mib_per_second: u32,
    /// Seconds the scrubber rests between passes, 1 to 604800 (a week). Default 3600.
    /// `vortexctl scrub` starts a pass at once.
    pub scrub_interval_s: u32,
}

/// [`StorageConfig::background_nice`]'s default.
pub const BACKGROUND_NICE_DEFAULT: u8 = 10;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("vortex-data"),
            background_nice: BACKGROUND_NICE_DEFAULT,
            scrub_mib_per_second: 16,
            scrub_interval_s: 3600,
        }
    }
}

/// `[leu]`: the logical execution units, one pinned thread per physical core.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeuConfig {
    /// `"auto"` (default) or a number from 1 to 1024. Auto runs one LEU per isolated physical
    /// core when the kernel isolates any, otherwise one per physical core, leaving the core of
    /// CPU 0 to the OS and the controlplane when there are three cores or more.
    pub count: LeuCount,
    /// An explicit list of CPU ids, one LEU each, in LEU order. Overrides the automatic
    /// choice; `count` must then be `"auto"` or equal to its length. Default: empty (automatic).
    pub cores: Vec<u32>,
    /// How a search uses the LEUs: `"whole"` (default) runs each search to the end on the LEU
    /// that received it, over every LEU's published segments, so throughput grows with
    /// cores; `"fan-out"` splits each search over every LEU and merges their answers, which
    /// can shorten one search on idle cores at the cost of throughput.
    pub search: SearchSpread,
}

/// `[leu] search`: see [`LeuConfig::search`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SearchSpread {
    /// Each search on one LEU, over all LEUs' data.
    #[default]
    Whole,
    /// Each search split over every LEU.
    FanOut,
}

/// How many LEUs to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LeuCount {
    /// Chosen from the machine (see [`LeuConfig::count`]).
    #[default]
    Auto,
    /// Exactly this many.
    Fixed(u16),
}

impl Serialize for LeuCount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LeuCount::Auto => serializer.serialize_str("auto"),
            LeuCount::Fixed(count) => serializer.serialize_u16(*count),
        }
    }
}

impl<'de> Deserialize<'de> for LeuCount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        const EXPECTED: &str = "\"auto\" or a number of LEUs from 1 to 1024";

        impl Visitor<'_> for CountVisitor {
            type Value = LeuCount;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<LeuCount, E> {
                if value == "auto" {
                    Ok(LeuCount::Auto)
                } else {
                    Err(E::custom(format!(
                        "`{value}` is not accepted; expected {EXPECTED}"
                    )))
                }
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<LeuCount, E> {
                match u16::try_from(value) {
                    Ok(count) if (1..=LEU_COUNT_MAX).contains(&count) => Ok(LeuCount::Fixed(count)),
                    _ => Err(E::custom(format!(
                        "{value} is out of range; expected {EXPECTED}"
                    ))),
                }
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<LeuCount, E> {
                self.visit_i64(i64::try_from(value).unwrap_or(i64::MAX))
            }
        }

        deserializer.deserialize_any(CountVisitor)
    }
}

/// `[memory]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Locking memory at start, so that the hot path never takes a page fault to swap:
    /// `required` (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`, or refuse to start), `try` (default:
    /// the same when nothing bounds it, otherwise the buffer pools as far as the limit allows;
    /// one warning, and go on), `off`.
    pub lock: MemoryLockPolicy,
}

/// Whether and how hard to lock memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryLockPolicy {
    /// Lock, or exit with an error.
    Required,
    /// Lock everything where `RLIMIT_MEMLOCK` is unlimited or `CAP_IPC_LOCK` is held; under
    /// a finite limit lock the buffer pools as far as it allows (never every future mapping,
    /// which would make later thread stacks and pools fail); one warning, and go on.
    #[default]
    Try,
    /// Do not lock.
    Off,
}

/// `[io_uring]`: each LEU's ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoUringConfig {
    /// Submission queue entries per ring, a power of two from 8 to 32768. The completion queue
    /// gets twice as many. Default 256.
    pub queue_depth: u32,
    /// Operations in flight per ring at most (submitted, not yet completed), from 1 to twice
    /// `queue_depth` (the completion queue's size). Beyond it the LEU is THROTTLED. Default 256.
    pub inflight_max: u32,
    /// A kernel thread polls the submission queue (`IORING_SETUP_SQPOLL`), saving the
    /// submit syscall at the price of a busy kernel thread per ring. Default false.
    pub sqpoll: bool,
    /// Milliseconds the SQPOLL thread spins idle before it sleeps, 1 to 10000. Default 50.
    pub sqpoll_idle_ms: u32,
    /// Microseconds an LEU keeps polling its completion queue after its last piece of work
    /// before it sleeps in the kernel (a request arriving within the window is picked up
    /// without a wake-up), 0 to 1000000; 0 sleeps at once. Default 50. An idle LEU sleeps.
    pub busy_poll_us: u32,
}

impl Default for IoUringConfig {
    fn default() -> Self {
        IoUringConfig {
            queue_depth: 256,
            inflight_max: 256,
            sqpoll: false,
            sqpoll_idle_ms: 50,
            busy_poll_us: 50,
        }
    }
}

/// `[limits]`: every resource a client can make the appliance hold is bounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open client connections per appliance, 1 to 1048576. Default 1024.
    pub connections_max: u32,
    /// Largest VBP frame (header and body), 4096 bytes to 1 GiB. Default 16 MiB.
    pub frame_size_max_bytes: u32,
    /// Requests one connection may have read and not yet answered, 1 to 4096; past it the
    /// connection is not read until answers go out (its sender slows down). Default 64.
    pub inflight_per_connection_max: u32,
    /// Seconds a connection may stay idle (no request in flight, nothing received) before
    /// it is closed; 0 keeps idle connections forever. 0 to 86400, default 300.
    pub idle_timeout_s: u32,
    /// Seconds from SIGTERM (or SIGINT) to the process's exit, at most, 1 to 600. The first
    /// half goes to answering what was read; then the WALs are synced and sealed and
    /// running flushes, merges and index builds are abandoned (they resume at the next
    /// start). A stop still running at the bound ends the process as a crash would (every
    /// acknowledged write is durable; the next start replays the WAL). Default 5, well
    /// inside systemd's `TimeoutStopSec`.
    pub stop_timeout_s: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            connections_max: 1024,
            frame_size_max_bytes: 16 << 20,
            inflight_per_connection_max: 64,
            idle_timeout_s: 300,
            stop_timeout_s: 5,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info` (default), `debug` or `trace`. The `RUST_LOG` environment
    /// variable, when set, overrides it.
    pub level: LogLevel,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Verbose.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level's name as `tracing` filters spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl ApplianceConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_toml_str(&text, &path.display().to_string())?)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, InvalidConfig> {
        let with_origin = |mut invalid: InvalidConfig| {
            invalid.origin = origin.to_owned();
            if invalid.line.is_none() {
                invalid.line = line_of_field(text, &invalid.field);
            }
            invalid
        };
        let deserializer = toml::Deserializer::new(text);
        let config: ApplianceConfig =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let path = error.path().to_string();
                let inner = error.into_inner();
                let line = inner.span().map(|span| line_at(text, span.start));
                let field = if path.is_empty() || path == "." {
                    "(syntax)".to_owned()
                } else {
                    path
                };
                let mut invalid = InvalidConfig::new(&field, inner.message().trim());
                invalid.line = line;
                with_origin(invalid)
            })?;
        config.validate().map_err(with_origin)?;
        Ok(config)
    }

    /// Checks every value that the types alone do not bound.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let network = &self.network;
        if network.port == 0 {
            return Err(InvalidConfig::new(
                "network.port",
                "0 is not accepted; expected a port from 1 to 65535",
            ));
        }
        if network.leu_port_base == 0 {
            return Err(InvalidConfig::new(
                "network.leu_port_base",
                "0 is not accepted; expected a port from 1 to 65535",
            ));
        }
        if network.backend == NetworkBackend::Dpdk {
            return Err(InvalidConfig::new(
                "network.backend",
                "\"dpdk\" is reserved for the kernel-bypass backend and not available in this build; accepted: \"uring\"",
            ));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(InvalidConfig::new(
                "storage.data_dir",
                "is empty; expected a directory path",
            ));
        }
        if self.storage.background_nice > 19 {
            return Err(InvalidConfig::new(
                "storage.background_nice",
                format!(
                    "{} is not a nice value for background work; expected 0 to 19",
                    self.storage.background_nice
                ),
            ));
        }
        check_range(
            "storage.scrub_mib_per_second",
            self.storage.scrub_mib_per_second,
            0,
            SCRUB_MIB_PER_SECOND_MAX,
            "",
        )?;
        check_range(
            "storage.scrub_interval_s",
            self.storage.scrub_interval_s,
            1,
            SCRUB_INTERVAL_MAX_S,
            "",
        )?;
        let leu = &self.leu;
        if leu.cores.len() > usize::from(LEU_COUNT_MAX) {
            return Err(InvalidConfig::new(
                "leu.cores",
                format!(
                    "lists {} CPUs; at most {LEU_COUNT_MAX} LEUs are accepted",
                    leu.cores.len()
                ),
            ));
        }
        if let LeuCount::Fixed(count) = leu.count {
            if !leu.cores.is_empty() && usize::from(count) != leu.cores.len() {
                return Err(InvalidConfig::new(
                    "leu.count",
                    format!(
                        "{count} conflicts with leu.cores, which lists {} CPUs; set count = \"auto\" or leave it out",
                        leu.cores.len()
                    ),
                ));
            }
        }
        if let LeuCount::Fixed(count) = leu.count {
            self.validate_leu_ports(usize::from(count))?;
        } else if !leu.cores.is_empty() {
            self.validate_leu_ports(leu.cores.len())?;
        }
        let uring = &self.io_uring;
        if !uring.queue_depth.is_power_of_two()
            || !(QUEUE_DEPTH_MIN..=QUEUE_DEPTH_MAX).contains(&uring.queue_depth)
        {
            return Err(InvalidConfig::new(
                "io_uring.queue_depth",
                format!(
                    "{} is not accepted; expected a power of two from {QUEUE_DEPTH_MIN} to {QUEUE_DEPTH_MAX}",
                    uring.queue_depth
                ),
            ));
        }
        check_range(
            "io_uring.inflight_max",
            uring.inflight_max,
            1,
            2 * uring.queue_depth,
            " (twice io_uring.queue_depth, the completion queue's size)",
        )?;
        check_range(
            "io_uring.sqpoll_idle_ms",
            uring.sqpoll_idle_ms,
            1,
            SQPOLL_IDLE_MS_MAX,
            "",
        )?;
        check_range(
            "io_uring.busy_poll_us",
            uring.busy_poll_us,
            0,
            BUSY_POLL_US_MAX,
            "",
        )?;
        let limits = &self.limits;
        check_range(
            "limits.connections_max",
            limits.connections_max,
            1,
            CONNECTIONS_MAX,
            "",
        )?;
        check_range(
            "limits.frame_size_max_bytes",
            limits.frame_size_max_bytes,
            FRAME_SIZE_MIN_BYTES,
            FRAME_SIZE_MAX_BYTES,
            "",
        )?;
        check_range(
            "limits.inflight_per_connection_max",
            limits.inflight_per_connection_max,
            1,
            INFLIGHT_PER_CONNECTION_MAX,
            "",
        )?;
        check_range(
            "limits.idle_timeout_s",
            limits.idle_timeout_s,
            0,
            IDLE_TIMEOUT_MAX_S,
            "",
        )?;
        check_range(
            "limits.stop_timeout_s",
            limits.stop_timeout_s,
            1,
            STOP_TIMEOUT_MAX_S,
            "",
        )?;
        Ok(())
    }

    /// Checks that `leu_count` per-LEU ports fit above `network.leu_port_base` and do not
    /// include the shared `network.port`.
    pub fn validate_leu_ports(&self, leu_count: usize) -> Result<(), InvalidConfig> {
        let network = &self.network;
        let first = usize::from(network.leu_port_base);
        let last = first + leu_count.saturating_sub(1);
        if last > usize::from(u16::MAX) {
            return Err(InvalidConfig::new(
                "network.leu_port_base",
                format!(
                    "{first} leaves no room for {leu_count} per-LEU ports (the last would be {last}); expected at most {}",
                    usize::from(u16::MAX) + 1 - leu_count
                ),
            ));
        }
        let shared = usize::from(network.port);
        if (first..=last).contains(&shared) {
            return Err(InvalidConfig::new(
                "network.leu_port_base",
                format!(
                    "per-LEU ports {first}-{last} include network.port {shared}; move one of them"
                ),
            ));
        }
        Ok(())
    }

    /// Plans which core runs which LEU on this machine, and checks that the per-LEU ports fit.
    pub fn plan_leus(&self, topology: &Topology) -> Result<ThreadMapping, Error> {
        let mapping = ThreadMapping::plan(topology, &self.leu)?;
        self.validate_leu_ports(mapping.leus.len())?;
        Ok(mapping)
    }

    /// Creates the data directory if it is missing; a path that cannot be a directory is a
    /// config error naming `storage.data_dir`.
    pub fn prepare_data_dir(&self) -> Result<PathBuf, Error> {
        let dir = &self.storage.data_dir;
        std::fs::create_dir_all(dir).map_err(|error| {
            InvalidConfig::new(
                "storage.data_dir",
                format!(
                    "cannot create `{}`: {error}; expected a directory this process can create and write",
                    dir.display()
                ),
            )
        })?;
        if !dir.is_dir() {
            return Err(InvalidConfig::new(
                "storage.data_dir",
                format!("`{}` exists and is not a directory", dir.display()),
            )
            .into());
        }
        if let Err(error) = writable(dir) {
            return Err(InvalidConfig::new(
                "storage.data_dir",
                format!(
                    "`{}` is not writable by this user (uid {}): {error}; expected a directory \
                     this process can create and write (its owner, its mode, or a read-only \
                     mount; or change data_dir)",
                    dir.display(),
                    // SAFETY: geteuid takes no arguments and cannot fail.
                    unsafe { libc::geteuid() }
                ),
            )
            .into());
        }
        Ok(dir.clone())
    }
}

/// Whether this process may create files in `dir`: write and search permission as the
/// kernel judges it for the effective user and capabilities (`AT_EACCESS`), on a writable
/// mount.
fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    // SAFETY: faccessat reads a NUL-terminated path we own and touches no other memory.
    let checked = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if checked == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn check_range(
    field: &str,
    value: u32,
    min: u32,
    max: u32,
    why_max: &str,
) -> Result<(), InvalidConfig> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(InvalidConfig::new(
            field,
            format!("{value} is out of range; expected {min} to {max}{why_max}"),
        ))
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
        + 1
}

/// The line where a dotted `section.key` field is set, for errors found after parsing. It
/// understands the plain `[section]` / `key = value` layout of our examples; for anything
/// fancier it gives up and the error carries no line.
fn line_of_field(text: &str, field: &str) -> Option<usize> {
    let (section, key) = field.rsplit_once('.')?;
    let mut current = String::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header.trim_end_matches(']').trim().to_owned();
            continue;
        }
        if current == section {
            if let Some((name, _)) = line.split_once('=') {
                if name.trim() == key {
                    return Some(index + 1);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> InvalidConfig {
        ApplianceConfig::from_toml_str(text, "test.toml").expect_err("config was accepted")
    }

    #[test]
    fn empty_file_gives_the_laptop_defaults() {
        let config = ApplianceConfig::from_toml_str("", "test.toml").unwrap();
        assert_eq!(config, ApplianceConfig::default());
        assert_eq!(config.network.listen_address.to_string(), "127.0.0.1");
        assert_eq!(config.memory.lock, MemoryLockPolicy::Try);
        assert_eq!(config.leu.count, LeuCount::Auto);
        assert_eq!(config.limits.frame_size_max_bytes, 16 << 20);
    }

    #[test]
    fn every_field_round_trips_through_toml() {
        let mut config = ApplianceConfig::default();
        config.leu.count = LeuCount::Fixed(3);
        config.memory.lock = MemoryLockPolicy::Required;
        config.io_uring.sqpoll = true;
        config.log.level = LogLevel::Debug;
        let text = toml::to_string(&config).unwrap();
        let back = ApplianceConfig::from_toml_str(&text, "round-trip").unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn unknown_field_names_the_field_and_line() {
        let error = invalid("[network]\nport = 7700\nprot = 1\n");
        assert_eq!(error.field, "network.prot");
        assert_eq!(error.line, Some(3));
        assert!(error.message.contains("unknown field"), "{error}");
        assert!(error.message.contains("listen_address"), "{error}");
    }

    #[test]
    fn unknown_section_is_refused() {
        let error = invalid("[netwrok]\nport = 1\n");
        assert_eq!(error.field, "netwrok");
        assert!(error.message.contains("unknown field"), "{error}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let error = invalid("[network]\nport = \"seven\"\n");
        assert_eq!(error.field, "network.port");
        assert_eq!(error.line, Some(2));
        assert!(error.message.contains("u16"), "{error}");
    }

    #[test]
    fn bad_enum_value_lists_the_accepted_ones() {
        let error = invalid("[memory]\nlock = \"always\"\n");
        assert_eq!(error.field, "memory.lock");
        assert!(
            error.message.contains("`required`, `try`, `off`"),
            "{error}"
        );
    }

    #[test]
    fn leu_count_accepts_auto_or_a_number_in_range() {
        let config = ApplianceConfig::from_toml_str("[leu]\ncount = 4\n", "t").unwrap();
        assert_eq!(config.leu.count, LeuCount::Fixed(4));
        let config = ApplianceConfig::from_toml_str("[leu]\ncount = \"auto\"\n", "t").unwrap();
        assert_eq!(config.leu.count, LeuCount::Auto);
        for bad in ["0", "-1", "1025", "\"many\"", "1.5"] {
            let error = invalid(&format!("[leu]\ncount = {bad}\n"));
            assert_eq!(error.field, "leu.count", "{bad}: {error}");
            assert!(error.message.contains("1 to 1024"), "{bad}: {error}");
        }
    }

    #[test]
    fn out_of_range_values_are_refused_with_what_is_accepted() {
        let cases = [
            (
                "[io_uring]\nqueue_depth = 300\n",
                "io_uring.queue_depth",
                "power of two",
            ),
            (
                "[storage]\nbackground_nice = 20\n",
                "storage.background_nice",
                "0 to 19",
            ),
            (
                "[io_uring]\nqueue_depth = 4\n",
                "io_uring.queue_depth",
                "8 to 32768",
            ),
            (
                "[io_uring]\ninflight_max = 0\n",
                "io_uring.inflight_max",
                "1 to 512",
            ),
            (
                "[io_uring]\nsqpoll_idle_ms = 0\n",
                "io_uring.sqpoll_idle_ms",
                "1 to 10000",
            ),
            (
                "[limits]\nconnections_max = 0\n",
                "limits.connections_max",
                "1 to",
            ),
            (
                "[limits]\nframe_size_max_bytes = 100\n",
                "limits.frame_size_max_bytes",
                "4096 to",
            ),
            (
                "[limits]\ninflight_per_connection_max = 5000\n",
                "limits.inflight_per_connection_max",
                "1 to 4096",
            ),
            ("[network]\nport = 0\n", "network.port", "1 to 65535"),
            ("[network]\nport = 70000\n", "network.port", "u16"),
            (
                "[network]\nbackend = \"dpdk\"\n",
                "network.backend",
                "\"uring\"",
            ),
            (
                "[network]\nbackend = \"xdp\"\n",
                "network.backend",
                "`uring` or `dpdk`",
            ),
            (
                "[storage]\ndata_dir = \"\"\n",
                "storage.data_dir",
                "directory",
            ),
            ("[log]\nlevel = \"loud\"\n", "log.level", "`error`"),
        ];
        for (text, field, accepted) in cases {
            let error = invalid(text);
            assert_eq!(error.field, field, "{text}: {error}");
            assert!(error.message.contains(accepted), "{text}: {error}");
            assert_eq!(error.line, Some(2), "{text}: {error}");
            assert_eq!(error.to_string().lines().count(), 1, "{error}");
        }
    }

    #[test]
    fn count_and_core_list_must_agree() {
        let error = invalid("[leu]\ncount = 3\ncores = [1, 2]\n");
        assert_eq!(error.field, "leu.count");
        assert!(error.message.contains("lists 2 CPUs"), "{error}");
        ApplianceConfig::from_toml_str("[leu]\ncount = 2\ncores = [1, 2]\n", "t").unwrap();
    }

    #[test]
    fn per_leu_ports_must_fit_and_not_overlap_the_shared_port() {
        let error = invalid("[network]\nport = 7712\nleu_port_base = 7710\n[leu]\ncount = 4\n");
        assert_eq!(error.field, "network.leu_port_base");
        assert!(
            error.message.contains("include network.port 7712"),
            "{error}"
        );
        let error = invalid("[network]\nleu_port_base = 65535\n[leu]\ncount = 2\n");
        assert!(error.message.contains("expected at most 65534"), "{error}");
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let error = invalid("[network]\nport = = 3\n");
        assert_eq!(error.field, "(syntax)");
        assert_eq!(error.line, Some(2));
        assert_eq!(error.to_string().lines().count(), 1, "{error}");
    }

    #[test]
    fn data_dir_that_cannot_be_created_is_a_config_error() {
        let scratch = tempfile::tempdir().unwrap();
        let file = scratch.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let mut config = ApplianceConfig::default();
        config.storage.data_dir = file.join("below-a-file");
        let error = config.prepare_data_dir().unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("storage.data_dir"), "{error}");
        config.storage.data_dir = file;
        let error = config.prepare_data_dir().unwrap_err();
        assert!(error.to_string().contains("storage.data_dir"), "{error}");
        config.storage.data_dir = scratch.path().join("new/nested");
        assert!(config.prepare_data_dir().unwrap().is_dir());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    fn example(name: &str) -> ApplianceConfig {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        ApplianceConfig::load(&path).unwrap_or_else(|error| panic!("{name}: {error}"))
    }

    #[test]
    fn dev_example_asks_for_two_leus_on_loopback() {
        let config = example("dev.toml");
        assert_eq!(config.leu.count, LeuCount::Fixed(2));
        assert!(config.network.listen_address.is_loopback());
        assert_eq!(config.memory.lock, MemoryLockPolicy::Try);
    }

    #[test]
    fn appliance_example_requires_memory_locking() {
        let config = example("appliance.toml");
        // No authentication yet: the example must not listen everywhere.
        match config.network.listen_address {
            IpAddr::V4(address) => assert!(address.is_private(), "{address}"),
            IpAddr::V6(address) => panic!("expected a private IPv4 address, got {address}"),
        }
        assert_eq!(config.leu.count, LeuCount::Auto);
        assert_eq!(config.memory.lock, MemoryLockPolicy::Required);
        assert_eq!(config.io_uring.queue_depth, 1024);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary text is a config or one line of error, never a panic.
        #[test]
        fn arbitrary_text_is_parsed_or_refused_on_one_line(text in "(?s).{0,200}") {
            if let Err(error) = ApplianceConfig::from_toml_str(&text, "fuzz.toml") {
                prop_assert_eq!(error.to_string().lines().count(), 1);
            }
        }

        /// TOML-shaped text with our section and field names, and arbitrary values.
        #[test]
        fn config_shaped_text_is_parsed_or_refused_on_one_line(
            section in "(network|storage|leu|memory|io_uring|limits|log|bogus)",
            key in "(port|leu_port_base|backend|data_dir|count|cores|lock|queue_depth|inflight_max|sqpoll|sqpoll_idle_ms|busy_poll_us|connections_max|frame_size_max_bytes|inflight_per_connection_max|idle_timeout_s|stop_timeout_s|scrub_mib_per_second|scrub_interval_s|level|bogus)",
            value in "(-?[0-9]{1,12}|\"[a-z]{0,8}\"|true|\\[[0-9, ]{0,12}\\]|[0-9]\\.[0-9])",
        ) {
            let text = format!("[{section}]\n{key} = {value}\n");
            match ApplianceConfig::from_toml_str(&text, "fuzz.toml") {
                Ok(config) => prop_assert!(config.validate().is_ok()),
                Err(error) => {
                    prop_assert_eq!(error.to_string().lines().count(), 1);
                    prop_assert!(!error.field.is_empty());
                }
            }
        }
    }
}

//! `vortex-dataplane`: the dataplane binary.
//!
//! Exit status: 0 success; 1 the machine failed us (pinning mismatch, io_uring unavailable,
//! memory lock required and refused, sysfs unreadable); 2 a mistake in the config or the
//! command line, reported on one line naming the field and what is accepted.

use clap::{Parser, Subcommand};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vortex_config::{ApplianceConfig, BlockDevice, DirectIoAlignment, ThreadMapping, Topology};
use vortex_dataplane::handover::team;
use vortex_dataplane::leu;
use vortex_dataplane::report::TopologyReport;
use vortex_dataplane::routing::{Ring, VNODES_DEFAULT};
use vortex_dataplane::server::{serve, ServeReport, ServerConfig};
use vortex_io::affinity;
use vortex_io::{memlock, MemlockOutcome, RingConfig};
use vortex_shard::{Shard, ShardOptions};

const EXIT_RUNTIME: u8 = 1;

#[derive(Debug, Parser)]
#[command(name = "vortex-dataplane", version, about = "The VORTEX dataplane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the discovered hardware and the LEU mapping; with --verify, start the LEUs,
    /// pin them and check their affinity from /proc.
    Topology {
        /// The appliance config (TOML). Without it, the built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Start and pin the LEU threads, bring up their io_uring, and check each thread's
        /// affinity from /proc/self/task/*/status; exit 1 on any mismatch.
        #[arg(long)]
        verify: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serve VBP until SIGTERM or SIGINT: opens the shard in the data directory, listens on
    /// `[network] listen_address:port`, prints a readiness line, and on a signal stops
    /// accepting, answers what it has read, syncs the WAL and exits 0.
    ///
    /// For now one LEU serves (the first of the plan) and holds all the data: handing
    /// requests between LEUs comes with the rest of the reactor (issue #8).
    Run {
        /// The appliance config (TOML). Without it, the built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// A failure with the exit status it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn runtime(error: impl std::fmt::Display) -> Self {
        Failure {
            code: EXIT_RUNTIME,
            message: error.to_string(),
        }
    }

    fn from_config_error(error: vortex_config::Error) -> Self {
        Failure {
            code: u8::try_from(error.exit_code()).unwrap_or(EXIT_RUNTIME),
            message: error.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Topology {
            config,
            verify,
            json,
        } => topology(config, verify, json),
        Command::Run { config } => run(config),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("vortex-dataplane: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<(ApplianceConfig, String), Failure> {
    match path {
        Some(path) => {
            let config = ApplianceConfig::load(path).map_err(Failure::from_config_error)?;
            Ok((config, path.display().to_string()))
        }
        None => Ok((ApplianceConfig::default(), "built-in defaults".to_owned())),
    }
}

fn init_logging(config: &ApplianceConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.log.level.as_str()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .try_init();
}

/// The config, the machine, the LEU plan and the data directory, as every command needs.
struct Planned {
    config: ApplianceConfig,
    origin: String,
    topology: Topology,
    mapping: ThreadMapping,
    data_dir: PathBuf,
}

/// Loads the config, starts logging, discovers the machine, plans the LEUs and prepares the
/// data directory.
fn plan(config_path: Option<PathBuf>) -> Result<Planned, Failure> {
    let (config, origin) = load_config(config_path.as_ref())?;
    init_logging(&config);
    let topology = Topology::discover().map_err(Failure::from_config_error)?;
    let mapping = config
        .plan_leus(&topology)
        .map_err(Failure::from_config_error)?;
    let data_dir = config
        .prepare_data_dir()
        .map_err(Failure::from_config_error)?;
    Ok(Planned {
        config,
        origin,
        topology,
        mapping,
        data_dir,
    })
}

fn topology(config_path: Option<PathBuf>, verify: bool, json: bool) -> Result<u8, Failure> {
    let Planned {
        config,
        origin,
        topology,
        mapping,
        data_dir,
    } = plan(config_path)?;
    let block_device = BlockDevice::for_path(&data_dir).map_err(Failure::from_config_error)?;
    let direct_io = DirectIoAlignment::probe(&data_dir, block_device.as_ref())
        .map_err(Failure::from_config_error)?;

    let mut report = TopologyReport {
        config_origin: origin,
        topology,
        data_dir,
        block_device,
        direct_io,
        mapping,
        memory_lock: None,
        verification: None,
    };
    if verify {
        let outcome = memlock::apply(config.memory.lock).map_err(Failure::runtime)?;
        report.memory_lock = Some(match outcome {
            MemlockOutcome::Locked => "locked".to_owned(),
            MemlockOutcome::Skipped => "off".to_owned(),
            MemlockOutcome::Unlocked { limit, .. } => {
                format!("not locked, RLIMIT_MEMLOCK {limit}")
            }
        });
        let ring_config = RingConfig::from_config(&config.io_uring);
        let results = leu::verify(&report.mapping, &ring_config)
            .map_err(|error| Failure::runtime(format!("cannot start LEU threads: {error}")))?;
        report.verification = Some(results);
    }
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(Failure::runtime)?;
        println!("{text}");
    } else {
        print!("{}", report.to_text());
    }
    if report.all_match() {
        Ok(0)
    } else {
        Ok(EXIT_RUNTIME)
    }
}

/// Set by SIGTERM and SIGINT.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    // Async-signal-safe: one atomic store.
    STOP.store(true, Ordering::Release);
}

fn run(config_path: Option<PathBuf>) -> Result<u8, Failure> {
    let Planned {
        config,
        origin,
        mapping,
        data_dir,
        ..
    } = plan(config_path)?;
    match memlock::apply(config.memory.lock).map_err(Failure::runtime)? {
        MemlockOutcome::Unlocked { limit, .. } => {
            tracing::warn!(%limit, "memory not locked (RLIMIT_MEMLOCK too low); going on")
        }
        MemlockOutcome::Locked | MemlockOutcome::Skipped => {}
    }
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
    let leus = mapping.leus.len();
    let layout = Layout {
        leus,
        vnodes: VNODES_DEFAULT,
    };
    layout.check(&data_dir).map_err(Failure::runtime)?;
    let listeners = bind_listeners(&config, leus, &origin)?;
    let ring = Ring::new(leus, VNODES_DEFAULT).map_err(Failure::runtime)?;
    let server_config = ServerConfig {
        connections_max: config.limits.connections_max as usize,
        requests_per_connection_max: config.limits.inflight_per_connection_max as usize,
        frame_size_max_bytes: config.limits.frame_size_max_bytes,
        idle_timeout: (config.limits.idle_timeout_s > 0)
            .then(|| Duration::from_secs(u64::from(config.limits.idle_timeout_s))),
        ring: RingConfig::from_config(&config.io_uring),
        busy_poll: Duration::from_micros(u64::from(config.io_uring.busy_poll_us)),
        ..ServerConfig::default()
    };
    let links = team(ring, server_config.handover_queue)
        .map_err(|error| Failure::runtime(format!("cannot set up the LEU queues: {error}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
    let mut threads = Vec::with_capacity(leus);
    for ((links, listeners), leu) in links.into_iter().zip(listeners).zip(&mapping.leus) {
        let index = links.leu;
        let shard_dir = data_dir.join(format!("leu-{index}"));
        let (server_config, stop, ready_tx, cpu) = (
            server_config.clone(),
            Arc::clone(&stop),
            ready_tx.clone(),
            leu.cpu,
        );
        let thread = std::thread::Builder::new()
            .name(format!("leu-{index}"))
            .spawn(move || -> Result<ServeReport, String> {
                if let Err(error) = affinity::pin_current_thread(cpu) {
                    tracing::warn!(cpu, %error, "cannot pin LEU {index}");
                }
                let (shard, report) = match Shard::open(&shard_dir, ShardOptions::default()) {
                    Ok(opened) => opened,
                    Err(error) => {
                        let message =
                            format!("cannot open the shard in {}: {error}", shard_dir.display());
                        // Nothing was served: the other LEUs are told to stop by `run`.
                        let _ = ready_tx.send(Err(message.clone()));
                        return Err(message);
                    }
                };
                let _ = ready_tx.send(Ok(format!(
                    "LEU {index}: {} WAL records replayed, {} segments, ready in {:.0} ms",
                    report.replayed,
                    report.segments,
                    report.time_to_ready.as_secs_f64() * 1e3
                )));
                serve(listeners, shard, links, server_config, stop).map_err(|e| e.to_string())
            })
            .map_err(Failure::runtime)?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut details = Vec::with_capacity(leus);
    let mut failure = None;
    for _ in 0..leus {
        match ready_rx.recv() {
            Ok(Ok(detail)) => details.push(detail),
            Ok(Err(message)) => {
                failure = Some(message);
                break;
            }
            Err(_) => {
                failure = Some("an LEU thread stopped before it was ready".to_owned());
                break;
            }
        }
    }
    if let Some(message) = failure {
        stop.store(true, Ordering::Release);
        for thread in threads {
            let _ = thread.join();
        }
        return Err(Failure::runtime(message));
    }
    details.sort();
    let address = SocketAddr::new(config.network.listen_address, config.network.port);
    let base = config.network.leu_port_base;
    println!(
        "vortex-dataplane ready: serving VBP on {address} ({leus} LEU(s); LEU i also on port \
         {base}+i; data in {}; {})",
        data_dir.display(),
        details.join("; ")
    );
    let _ = std::io::Write::flush(&mut std::io::stdout());
    while !threads.iter().all(|thread| thread.is_finished()) {
        if STOP.load(Ordering::Acquire) || threads.iter().any(|thread| thread.is_finished()) {
            // A signal, or an LEU that ended on its own (it failed): stop them all.
            stop.store(true, Ordering::Release);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut total = ServeReport::default();
    let mut errors = Vec::new();
    for (leu, thread) in threads.into_iter().enumerate() {
        match thread.join() {
            Ok(Ok(report)) => {
                total.accepted += report.accepted;
                total.answered += report.answered;
            }
            Ok(Err(error)) => errors.push(format!("LEU {leu}: {error}")),
            Err(_) => errors.push(format!("LEU {leu} panicked")),
        }
    }
    if !errors.is_empty() {
        return Err(Failure::runtime(errors.join("; ")));
    }
    println!(
        "vortex-dataplane stopped: {} connections, {} requests answered, WAL synced",
        total.accepted, total.answered
    );
    Ok(0)
}

/// Binds, for each LEU, its own port (`leu_port_base + i`, exclusive: a second dataplane
/// on the same ports fails here) and the shared port (`SO_REUSEPORT`: the kernel spreads
/// the connections over the LEUs). Returns each LEU's listeners, shared first.
fn bind_listeners(
    config: &ApplianceConfig,
    leus: usize,
    origin: &str,
) -> Result<Vec<Vec<TcpListener>>, Failure> {
    let host = config.network.listen_address;
    let taken = |address: SocketAddr, error: std::io::Error| {
        Failure::runtime(format!(
            "cannot listen on {address}: {error} (is another dataplane running? change \
             [network] port or leu_port_base in {origin})"
        ))
    };
    let mut own = Vec::with_capacity(leus);
    for leu in 0..leus {
        let port = usize::from(config.network.leu_port_base) + leu;
        let address = SocketAddr::new(host, u16::try_from(port).map_err(Failure::runtime)?);
        own.push(TcpListener::bind(address).map_err(|error| taken(address, error))?);
    }
    let shared = SocketAddr::new(host, config.network.port);
    own.into_iter()
        .map(|own| {
            let shared = reuseport_listener(shared).map_err(|error| taken(shared, error))?;
            Ok(vec![shared, own])
        })
        .collect()
}

/// A listener on `address` with `SO_REUSEPORT` set, so that every LEU can bind it.
fn reuseport_listener(address: SocketAddr) -> std::io::Result<TcpListener> {
    let family = match address {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: creates a new socket, owned just below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        // SAFETY: sets an int option from a live int on a socket we own.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let (storage, length) = socket_address(address);
    // SAFETY: binds to an address held in a live sockaddr_storage of the given length.
    let bound = unsafe { libc::bind(socket.as_raw_fd(), (&raw const storage).cast(), length) };
    if bound != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: listens on a bound socket we own.
    if unsafe { libc::listen(socket.as_raw_fd(), 1024) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TcpListener::from(socket))
}

fn socket_address(address: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid (unspecified) address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let length = match address {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, length as libc::socklen_t)
}

/// How the data directory's points are spread over LEUs. Points live in the LEU that owns
/// their VNode, so the directory only fits a dataplane with the same LEU and VNode counts;
/// moving VNodes between LEUs (rebalancing) is not built yet, so a mismatch is refused.
struct Layout {
    leus: usize,
    vnodes: u16,
}

impl Layout {
    const FILE: &'static str = "LAYOUT";

    fn text(&self) -> String {
        format!("leus = {}\nvnodes = {}\n", self.leus, self.vnodes)
    }

    /// Writes the layout into a new data directory, or checks an existing one's.
    fn check(&self, data_dir: &std::path::Path) -> Result<(), String> {
        let path = data_dir.join(Self::FILE);
        match std::fs::read_to_string(&path) {
            Ok(found) if found == self.text() => Ok(()),
            Ok(found) => Err(format!(
                "{} holds data spread over another LEU layout ({}), and this config runs {} \
                 LEU(s) with {} VNodes; set [leu] count back, or start from an empty data \
                 directory (moving data between layouts is not supported yet)",
                data_dir.display(),
                found.trim().replace('\n', ", "),
                self.leus,
                self.vnodes
            )),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if self.leus > 1 && data_dir.join("leu-0").exists() {
                    return Err(format!(
                        "{} holds data of a single-LEU dataplane and this config runs {} LEUs; \
                         set [leu] count = 1, or start from an empty data directory",
                        data_dir.display(),
                        self.leus
                    ));
                }
                write_durably(&path, self.text().as_bytes())
                    .map_err(|error| format!("cannot write {}: {error}", path.display()))
            }
            Err(error) => Err(format!("cannot read {}: {error}", path.display())),
        }
    }
}

/// Writes a small file and makes it and its name durable.
fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

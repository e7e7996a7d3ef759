//! `vortex-dataplane`: the dataplane binary.
//!
//! Exit status: 0 success; 1 the machine failed us (pinning mismatch, io_uring unavailable,
//! memory lock required and refused, sysfs unreadable), or `repair` left a damaged table; 2
//! a mistake in the config or the command line, reported on one line naming the field and
//! what is accepted; 3 a stop that outran its bound.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use vortex_config::{ApplianceConfig, BlockDevice, DirectIoAlignment, ThreadMapping, Topology};
use vortex_dataplane::appliance::{Appliance, Ports};
use vortex_dataplane::leu;
use vortex_dataplane::report::TopologyReport;
use vortex_io::{memlock, RingConfig};

const EXIT_RUNTIME: u8 = 1;
/// A stop that did not end within `[limits] stop_timeout_s`: the process ended as after a
/// crash (acknowledged writes are durable; the next start replays the WAL).
const EXIT_STOP_TIMEOUT: u8 = 3;

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
    Run {
        /// The appliance config (TOML). Without it, the built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Offline repair of damaged tables, with the dataplane stopped: checks every table of
    /// every LEU, keeps every record that verifies, deletes what is lost rather than serve
    /// older versions of it, lists each lost id (or id range), and moves the damaged files
    /// to `store/lost+found/`. Exit 0 when no table is left damaged, 1 otherwise.
    Repair {
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
    // Before any thread or large block: freed memory goes back to the system
    // (vortex_io::allocator).
    vortex_io::allocator::bound_retention();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Topology {
            config,
            verify,
            json,
        } => topology(config, verify, json),
        Command::Run { config } => run(config),
        Command::Repair { config } => repair(config),
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

/// `repair`: every LEU's shard opened in turn under the data directory's lock (refused while
/// a dataplane runs on it), repaired and closed; one report per damaged table.
fn repair(config_path: Option<PathBuf>) -> Result<u8, Failure> {
    let (config, _) = load_config(config_path.as_ref())?;
    init_logging(&config);
    let data_dir = config
        .prepare_data_dir()
        .map_err(Failure::from_config_error)?;
    let _lock = vortex_storage::DirLock::acquire(&data_dir).map_err(Failure::runtime)?;
    let leus = vortex_dataplane::appliance::shard_dirs(&data_dir);
    if leus.is_empty() {
        println!(
            "no LEU directory in {}: nothing to repair",
            data_dir.display()
        );
        return Ok(0);
    }
    let (mut damaged, mut left) = (0usize, 0usize);
    for (index, dir) in leus {
        let at_dir = |error: vortex_shard::ShardError| {
            Failure::runtime(format!("{}: {error}", dir.display()))
        };
        let mut options = vortex_shard::ShardOptions::default();
        options.store.scrub_bytes_per_second = 0;
        let (mut shard, _) = vortex_shard::Shard::open(&dir, options).map_err(at_dir)?;
        let repairs = shard.repair().map_err(at_dir)?;
        shard.close().map_err(at_dir)?;
        for (collection, repair) in &repairs {
            damaged += 1;
            left += usize::from(!repair.removed);
            print!("{}", repair_report(index, &dir, collection, repair));
        }
    }
    println!(
        "{damaged} damaged table(s) found, {} repaired, {left} left fenced",
        damaged - left
    );
    Ok(u8::from(left > 0))
}

/// What the repair of one table did, for the operator: every id lost, listed.
fn repair_report(
    leu: u32,
    dir: &std::path::Path,
    collection: &str,
    repair: &vortex_storage::TableRepair,
) -> String {
    use std::fmt::Write as _;
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    let mut out = format!(
        "LEU {leu}: table {} of collection `{collection}` (ids {}..={}): {}\n",
        repair.table, repair.first, repair.last, repair.reason
    );
    if !repair.removed {
        out.push_str("  not repaired: it stays fenced (restore it from a backup, or drop and re-ingest the collection)\n");
        return out;
    }
    let _ = writeln!(
        out,
        "  kept: {} point(s) written again, {} with a newer version elsewhere",
        repair.rewritten, repair.superseded
    );
    if !repair.lost_points.is_empty() {
        let _ = writeln!(
            out,
            "  lost, their vectors damaged (deleted): {} point(s): {}",
            repair.lost_points.len(),
            ids(&repair.lost_points)
        );
    }
    for (first, last) in &repair.lost_ranges {
        let _ = writeln!(
            out,
            "  lost: a damaged block held ids in {first}..={last}: which ones, and their versions here, are unknown"
        );
    }
    if !repair.deleted_older.is_empty() {
        let _ = writeln!(
            out,
            "  deleted rather than served stale (an older version exists, the damaged block may have held a newer one or a delete): {} point(s): {}",
            repair.deleted_older.len(),
            ids(&repair.deleted_older)
        );
    }
    let _ = writeln!(
        out,
        "  removed from the store; the damaged file is kept in {}",
        dir.join("store").join("lost+found").display()
    );
    out
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
        report.memory_lock = Some(outcome.to_string());
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

/// Ends the process if the stop now starting has not ended within `bound`: the LEUs drain
/// for half of it and then sync and seal their WALs and abandon background work, which
/// should take far less than the rest; if something still holds the stop at the bound (a
/// disk that does not answer a sync), exiting as a crash would is safe, since every
/// acknowledged write is durable, and it keeps the promise made to the supervisor.
fn watch_the_stop(bound: Duration) {
    let watch = std::thread::Builder::new()
        .name("vortex-stop-bound".to_owned())
        .spawn(move || {
            std::thread::sleep(bound);
            eprintln!(
                "vortex-dataplane: the stop did not end within limits.stop_timeout_s = {} s: \
                 exiting now, as after a crash (every acknowledged write is durable; the next \
                 start replays the WAL and redoes the abandoned work)",
                bound.as_secs()
            );
            std::process::exit(i32::from(EXIT_STOP_TIMEOUT));
        });
    if let Err(error) = watch {
        tracing::warn!(%error, "cannot watch the stop's time bound");
    }
}

fn run(config_path: Option<PathBuf>) -> Result<u8, Failure> {
    if config_path.is_none() {
        // Said first, so that it stands above any error the defaults lead to.
        let data_dir = ApplianceConfig::default().storage.data_dir;
        let data =
            std::env::current_dir().map_or_else(|_| data_dir.clone(), |cwd| cwd.join(&data_dir));
        eprintln!(
            "vortex-dataplane: no --config given: running with the built-in defaults \
             (docs/CONFIG.md; firmware-config/examples/ has annotated configs), data in {}",
            data.display()
        );
    }
    let Planned {
        config,
        origin,
        mapping,
        data_dir,
        ..
    } = plan(config_path)?;
    // Under `try` a failure or a partial lock was logged once, and the server goes on.
    memlock::apply(config.memory.lock).map_err(Failure::runtime)?;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
    let appliance = Appliance::start(&config, &mapping, &data_dir, Ports::Configured, &origin)
        .map_err(Failure::runtime)?;
    println!("{}", appliance.ready_line());
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // A signal, or an LEU that ended on its own (it failed): stop them all.
    while !STOP.load(Ordering::Acquire) && !appliance.failed() {
        std::thread::sleep(Duration::from_millis(20));
    }
    watch_the_stop(vortex_dataplane::appliance::stop_bound(&config));
    let stopped = appliance.stop().map_err(Failure::runtime)?;
    println!(
        "vortex-dataplane stopped: {} connections, {} requests answered, {} connections reset \
         unread, WAL synced",
        stopped.accepted, stopped.answered, stopped.aborted
    );
    Ok(0)
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

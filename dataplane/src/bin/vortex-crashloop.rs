//! The appliance crash loop (issue #23 item 1): the real `vortex-dataplane` on loopback,
//! SIGKILLed again and again while writers upsert without pause, restarted at once each time.
//! Every cycle must acknowledge writes again within `--first-ack-timeout-s` of its start
//! (a node whose WAL only grows, or whose restart rebuilds indexes before it serves, fails
//! here), and no write acknowledged in any cycle may be missing afterwards.
//!
//! ```text
//! vortex-crashloop [--cycles N] [--leus L] [--seed S] [--dir DIR] [--dataplane PATH]
//!                  [--kill-after-ms-min M] [--kill-after-ms-max M] [--first-ack-timeout-s T]
//! ```
//!
//! Each of `--writers` writers upserts batches of `--batch` new points (ids of its own, 32-d
//! `l2` vectors that are a function of the id) into the collection `crash`, retrying a
//! THROTTLED answer after the advised wait. After each restart a sample of the acknowledged
//! points is read back; after the last cycle, all of them. Prints the time from each start to
//! its first acknowledged write (p50, p90, max) and the largest WAL seen at a kill.

use clap::Parser;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vortex_vbp::client::{Client, ClientOptions};
use vortex_vbp::message::{CollectionSpec, Metric, Upsert, VectorType};

const COLLECTION: &str = "crash";
const DIMENSION: usize = 32;

#[derive(Debug, Parser)]
#[command(about = "SIGKILL the dataplane during writes, again and again (issue #23 item 1)")]
struct Args {
    /// Kill-and-restart cycles.
    #[arg(long, default_value_t = 200)]
    cycles: u64,
    /// LEUs of the node.
    #[arg(long, default_value_t = 2)]
    leus: u16,
    /// Seed of the kill times (random when not given; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Data directory (a temporary one when not given, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The dataplane binary (default: `vortex-dataplane` beside this one).
    #[arg(long)]
    dataplane: Option<PathBuf>,
    /// Writer connections.
    #[arg(long, default_value_t = 2)]
    writers: u64,
    /// Points per upsert.
    #[arg(long, default_value_t = 200)]
    batch: u64,
    /// Points per second each writer sends at most (0: as fast as acknowledged). A node
    /// written at full speed for hundreds of cycles holds millions of points, and its
    /// compactions grow with them; a rate keeps the run about the crashes.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The kill comes this long after the cycle's first acknowledged write, at least...
    #[arg(long, default_value_t = 500)]
    kill_after_ms_min: u64,
    /// ... and at most.
    #[arg(long, default_value_t = 4000)]
    kill_after_ms_max: u64,
    /// A cycle that acknowledges nothing for this long after its start fails the run.
    #[arg(long, default_value_t = 30)]
    first_ack_timeout_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(summary) => {
            println!("ok: {summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("FAILED: {error}");
            ExitCode::FAILURE
        }
    }
}

/// SplitMix64.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn vector_of(id: u64) -> Vec<f32> {
    let mut state = id ^ 0x5851_F42D_4C95_7F2D;
    (0..DIMENSION)
        .map(|_| (splitmix(&mut state) >> 40) as f32 / (1u64 << 24) as f32)
        .collect()
}

/// What the writers had acknowledged, per writer: ids `writer << 40 | 0..next`.
struct Acknowledged {
    next: Vec<u64>,
}

fn id_of(writer: u64, n: u64) -> u64 {
    writer << 40 | n
}

fn run(args: &Args) -> Result<String, String> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("seed {seed} (replay with --seed {seed})");
    let scratch = tempfile_dir(args.dir.as_deref())?;
    let dir = scratch.path().to_owned();
    let dataplane = match &args.dataplane {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("vortex-dataplane"),
    };
    let port = free_port()?;
    let config = dir.join("vortex.toml");
    std::fs::write(
        &config,
        format!(
            "[network]\nport = {port}\nleu_port_base = {}\n[storage]\ndata_dir = \"{}\"\n\
             [leu]\ncount = {}\n[memory]\nlock = \"off\"\n",
            free_port()?,
            dir.join("data").display(),
            args.leus
        ),
    )
    .map_err(|e| e.to_string())?;
    let address = format!("127.0.0.1:{port}");
    let acknowledged = Arc::new(Mutex::new(Acknowledged {
        next: vec![0; args.writers as usize],
    }));
    let mut state = seed;
    let mut first_acks = Vec::new();
    let mut wal_bytes_max = 0u64;
    for cycle in 0..args.cycles {
        let started = Instant::now();
        let mut child = spawn(&dataplane, &config, &dir.join("dataplane.log"))?;
        let client = connect(&address, started, args.first_ack_timeout_s, &mut child)
            .map_err(|e| format!("cycle {cycle}: {e}"))?;
        if cycle == 0 {
            create(&client)?;
        } else {
            check_sample(&client, &acknowledged, &mut state, cycle)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let first_ack: Arc<Mutex<Option<Duration>>> = Arc::new(Mutex::new(None));
        let writers: Vec<_> = (0..args.writers)
            .map(|writer| {
                let (address, acknowledged, stop, first_ack) = (
                    address.clone(),
                    Arc::clone(&acknowledged),
                    Arc::clone(&stop),
                    Arc::clone(&first_ack),
                );
                let (batch, rate) = (args.batch, args.rate);
                std::thread::spawn(move || {
                    let pace = Pace { batch, rate };
                    write(
                        &address,
                        writer,
                        pace,
                        &acknowledged,
                        &stop,
                        &first_ack,
                        started,
                    )
                })
            })
            .collect();
        // The first acknowledgement of this start, then the kill at a random moment.
        let deadline = started + Duration::from_secs(args.first_ack_timeout_s);
        let first = loop {
            if let Some(first) = *first_ack.lock().map_err(|e| e.to_string())? {
                break Some(first);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let span = args
            .kill_after_ms_max
            .saturating_sub(args.kill_after_ms_min)
            + 1;
        let delay = args.kill_after_ms_min + splitmix(&mut state) % span;
        if first.is_some() {
            std::thread::sleep(Duration::from_millis(delay));
        }
        wal_bytes_max = wal_bytes_max.max(wal_bytes(&dir.join("data")));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        stop.store(true, Ordering::Release);
        for writer in writers {
            let _ = writer.join();
        }
        let Some(first) = first else {
            return Err(format!(
                "cycle {cycle}: no write acknowledged within {} s of the start (log: {})",
                args.first_ack_timeout_s,
                dir.join("dataplane.log").display()
            ));
        };
        first_acks.push(first);
        if cycle % 20 == 0 || cycle + 1 == args.cycles {
            let total: u64 = acknowledged
                .lock()
                .map_err(|e| e.to_string())?
                .next
                .iter()
                .sum();
            println!(
                "cycle {cycle}: first write acknowledged {} ms after the start; {total} writes acknowledged so far; WAL at the kill {} MiB",
                first.as_millis(),
                wal_bytes(&dir.join("data")) >> 20
            );
        }
    }
    // Every acknowledged write, after one more restart.
    let started = Instant::now();
    let mut child = spawn(&dataplane, &config, &dir.join("dataplane.log"))?;
    let client = connect(&address, started, args.first_ack_timeout_s, &mut child)?;
    let checked = check_all(&client, &acknowledged)?;
    let _ = child.kill();
    let _ = child.wait();
    first_acks.sort();
    let quantile = |q: f64| first_acks[((first_acks.len() - 1) as f64 * q) as usize].as_millis();
    Ok(format!(
        "{} SIGKILL cycles with {} LEUs; every cycle acknowledged writes; time from start to the first acknowledged write p50 {} ms, p90 {} ms, max {} ms; {checked} acknowledged writes all present; largest WAL at a kill {} MiB",
        args.cycles,
        args.leus,
        quantile(0.5),
        quantile(0.9),
        quantile(1.0),
        wal_bytes_max >> 20
    ))
}

/// A directory that is removed at the end unless the caller named one.
enum Scratch {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl Scratch {
    fn path(&self) -> &Path {
        match self {
            Scratch::Temporary(dir) => dir.path(),
            Scratch::Kept(path) => path,
        }
    }
}

fn tempfile_dir(dir: Option<&Path>) -> Result<Scratch, String> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            Ok(Scratch::Kept(dir.to_owned()))
        }
        None => tempfile::tempdir()
            .map(Scratch::Temporary)
            .map_err(|e| e.to_string()),
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|e| e.to_string())
}

fn spawn(dataplane: &Path, config: &Path, log: &Path) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    Command::new(dataplane)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", dataplane.display()))
}

/// A client, once the node answers a ping (it may still be replaying its WAL before that).
fn connect(
    address: &str,
    started: Instant,
    timeout_s: u64,
    child: &mut Child,
) -> Result<Client, String> {
    let deadline = started + Duration::from_secs(timeout_s);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the dataplane exited: {status}"));
        }
        let options = ClientOptions {
            request_timeout: Duration::from_secs(timeout_s),
            ..ClientOptions::default()
        };
        if let Ok(client) = Client::connect(&[address], options) {
            if client.ping().is_ok() {
                return Ok(client);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err(format!("the node did not serve within {timeout_s} s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn create(client: &Client) -> Result<(), String> {
    client
        .create_collection(CollectionSpec {
            name: COLLECTION.into(),
            dimension: DIMENSION as u32,
            metric: Metric::L2,
            m: 12,
            ef_construction: 64,
            vector_type: VectorType::F32,
        })
        .map_err(|e| format!("create: {e}"))
}

/// A writer's batch size and rate (points per second, 0: unlimited).
struct Pace {
    batch: u64,
    rate: u64,
}

/// One writer: batches of new points until the node dies or the cycle ends.
fn write(
    address: &str,
    writer: u64,
    pace: Pace,
    acknowledged: &Mutex<Acknowledged>,
    stop: &AtomicBool,
    first_ack: &Mutex<Option<Duration>>,
    started: Instant,
) {
    let Ok(client) = Client::connect(&[address], ClientOptions::default()) else {
        return;
    };
    let batch = pace.batch;
    let interval =
        (pace.rate > 0).then(|| Duration::from_secs_f64(batch as f64 / pace.rate as f64));
    let mut next_send = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if let Some(interval) = interval {
            let now = Instant::now();
            if next_send > now {
                std::thread::sleep(next_send - now);
            }
            next_send = next_send.max(now) + interval;
        }
        let Ok(from) = acknowledged.lock().map(|a| a.next[writer as usize]) else {
            return;
        };
        let ids: Vec<u64> = (from..from + batch).map(|n| id_of(writer, n)).collect();
        let vectors = ids.iter().flat_map(|&id| vector_of(id)).collect();
        match client.upsert(Upsert {
            collection: COLLECTION.into(),
            dimension: DIMENSION as u32,
            ids,
            vectors,
            payloads: Vec::new(),
        }) {
            Ok(_) => {
                if let Ok(mut acknowledged) = acknowledged.lock() {
                    acknowledged.next[writer as usize] = from + batch;
                }
                if let Ok(mut first) = first_ack.lock() {
                    first.get_or_insert_with(|| started.elapsed());
                }
            }
            // THROTTLED, whole or in part: the batch is sent again (a part written twice
            // holds the same values).
            Err(error) => match error.retry_after() {
                Some(retry_after) => std::thread::sleep(retry_after),
                // The node went away (the kill): what was not answered proves nothing.
                None => return,
            },
        }
    }
}

/// Reads back 200 acknowledged points chosen at random.
fn check_sample(
    client: &Client,
    acknowledged: &Mutex<Acknowledged>,
    state: &mut u64,
    cycle: u64,
) -> Result<(), String> {
    let next = acknowledged.lock().map_err(|e| e.to_string())?.next.clone();
    let ids: Vec<u64> = (0..200)
        .filter_map(|_| {
            let writer = splitmix(state) % next.len() as u64;
            let count = next[writer as usize];
            (count > 0).then(|| id_of(writer, splitmix(state) % count))
        })
        .collect();
    check(client, &ids).map_err(|e| format!("cycle {cycle}: {e}"))
}

/// Reads back every acknowledged point; returns how many.
fn check_all(client: &Client, acknowledged: &Mutex<Acknowledged>) -> Result<u64, String> {
    let next = acknowledged.lock().map_err(|e| e.to_string())?.next.clone();
    let mut checked = 0;
    for (writer, &count) in next.iter().enumerate() {
        let ids: Vec<u64> = (0..count).map(|n| id_of(writer as u64, n)).collect();
        for chunk in ids.chunks(1000) {
            check(client, chunk)?;
            checked += chunk.len() as u64;
        }
    }
    Ok(checked)
}

/// Every id in `ids` is there with its vector.
fn check(client: &Client, ids: &[u64]) -> Result<(), String> {
    let found = client
        .get(COLLECTION, ids.to_vec())
        .map_err(|e| format!("get: {e}"))?;
    if found.len() != ids.len() {
        let have: std::collections::HashSet<u64> = found.iter().map(|p| p.id).collect();
        let missing: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !have.contains(id))
            .collect();
        return Err(format!(
            "{} acknowledged points are missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if let Some(wrong) = found
        .iter()
        .find(|point| point.vector != vector_of(point.id))
    {
        return Err(format!("point {} came back with another vector", wrong.id));
    }
    Ok(())
}

/// Bytes of every LEU's WAL segments under `data`.
fn wal_bytes(data: &Path) -> u64 {
    let Ok(leus) = std::fs::read_dir(data) else {
        return 0;
    };
    leus.flatten()
        .filter_map(|leu| std::fs::read_dir(leu.path().join("store").join("wal")).ok())
        .flat_map(|files| files.flatten())
        .filter(|file| file.file_name().to_string_lossy().starts_with("wal-"))
        .filter_map(|file| file.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}

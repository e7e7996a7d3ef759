//! The WAL benchmark: durable appends per second and ack latency, beside the device's floor.
//!
//! For each record size and each number of concurrent appenders, a closed loop on one thread
//! (an LEU's view: N clients, each with one write outstanding) appends, polls the WAL, and
//! when an append's sequence number becomes durable records its latency and lets that
//! appender send its next record. The floor is the same file system with the plainest
//! durable write there is: `write` then `fdatasync`, one record at a time.
//!
//! Target (issue #5): with 256 appenders, at least 10× the floor's records/s.

use anyhow::Context;
use serde::Serialize;
use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vortex_io::RingConfig;
use vortex_storage::wal::{Wal, WalOptions};
use vortex_storage::{DirectIo, PosixEnv, StorageError};

use crate::percentile_ns;

/// What to run.
#[derive(Debug, Clone)]
pub struct WalBenchConfig {
    /// A directory on the file system under test (emptied first).
    pub dir: PathBuf,
    /// Record payload sizes.
    pub record_bytes: Vec<usize>,
    /// Concurrent appenders.
    pub appenders: Vec<usize>,
    /// Measured seconds per configuration.
    pub seconds: f64,
    /// Direct I/O where the file system allows it, or buffered + fdatasync.
    pub direct: DirectIo,
}

/// One configuration's result.
#[derive(Debug, Clone, Serialize)]
pub struct WalRun {
    /// `wal` or `floor`.
    pub engine: String,
    pub record_bytes: usize,
    pub appenders: usize,
    pub records: u64,
    pub seconds: f64,
    pub records_per_second: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    /// Write chains (group commits) per second; for the floor, fdatasyncs per second.
    pub commits_per_second: f64,
    /// Whether the WAL used Direct I/O.
    pub direct_io: bool,
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct WalResult {
    pub command: String,
    pub dir: String,
    pub runs: Vec<WalRun>,
}

fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn summarize(
    engine: &str,
    record_bytes: usize,
    appenders: usize,
    latencies_ns: &mut [u64],
    elapsed: Duration,
    commits: u64,
    direct_io: bool,
) -> WalRun {
    let seconds = elapsed.as_secs_f64();
    let records = latencies_ns.len() as u64;
    WalRun {
        engine: engine.to_owned(),
        record_bytes,
        appenders,
        records,
        seconds,
        records_per_second: records as f64 / seconds,
        latency_us_p50: percentile_ns(latencies_ns, 50) as f64 / 1e3,
        latency_us_p99: percentile_ns(latencies_ns, 99) as f64 / 1e3,
        commits_per_second: commits as f64 / seconds,
        direct_io,
    }
}

/// The WAL with `appenders` closed-loop appenders of `record_bytes`-byte records.
pub fn run_wal(
    config: &WalBenchConfig,
    record_bytes: usize,
    appenders: usize,
) -> anyhow::Result<WalRun> {
    let dir = config.dir.join("wal");
    fresh_dir(&dir)?;
    let env = PosixEnv::new(&RingConfig::plain(256), config.direct)?;
    let (mut wal, _) = Wal::open(env, &dir, WalOptions::default(), |_| {})?;
    let payload = vec![0xA5u8; record_bytes];
    // Sequence number and append time of each outstanding append, oldest first.
    let mut outstanding: VecDeque<(u64, Instant)> = VecDeque::with_capacity(appenders);
    let mut latencies_ns: Vec<u64> = Vec::with_capacity(1 << 20);
    let mut checkpointed_segment = wal.segment_number();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(config.seconds);
    let chains_before = wal.stats().chains;
    while Instant::now() < deadline {
        while outstanding.len() < appenders {
            match wal.append(1, &payload) {
                Ok(sequence) => outstanding.push_back((sequence, Instant::now())),
                Err(StorageError::Throttled(_)) => break,
                Err(error) => return Err(error.into()),
            }
        }
        let durable = wal.poll(Some(Duration::from_millis(1)))?;
        let now = Instant::now();
        while let Some(&(sequence, appended)) = outstanding.front() {
            if sequence > durable {
                break;
            }
            latencies_ns.push((now - appended).as_nanos() as u64);
            outstanding.pop_front();
        }
        // Keep the disk use bounded: everything durable counts as persisted elsewhere.
        if wal.segment_number() > checkpointed_segment + 1 {
            wal.checkpoint(durable)?;
            checkpointed_segment = wal.segment_number();
        }
    }
    let elapsed = started.elapsed();
    let chains = wal.stats().chains - chains_before;
    let direct_io = wal.direct_io();
    wal.flush()?;
    drop(wal);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(summarize(
        "wal",
        record_bytes,
        appenders,
        &mut latencies_ns,
        elapsed,
        chains,
        direct_io,
    ))
}

/// The floor: `write` + `fdatasync` of one record at a time, appending to a plain file.
pub fn run_floor(config: &WalBenchConfig, record_bytes: usize) -> anyhow::Result<WalRun> {
    let dir = config.dir.join("floor");
    fresh_dir(&dir)?;
    let path = dir.join("floor.log");
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let payload = vec![0xA5u8; record_bytes];
    let mut latencies_ns: Vec<u64> = Vec::with_capacity(1 << 16);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(config.seconds);
    while Instant::now() < deadline {
        let begun = Instant::now();
        file.write_all(&payload)?;
        file.sync_data()?;
        latencies_ns.push(begun.elapsed().as_nanos() as u64);
    }
    let elapsed = started.elapsed();
    let syncs = latencies_ns.len() as u64;
    drop(file);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(summarize(
        "floor",
        record_bytes,
        1,
        &mut latencies_ns,
        elapsed,
        syncs,
        false,
    ))
}

/// Every configuration, floor first for each record size.
pub fn run(config: &WalBenchConfig, command: &str) -> anyhow::Result<WalResult> {
    let mut runs = Vec::new();
    for &record_bytes in &config.record_bytes {
        let floor = run_floor(config, record_bytes)?;
        eprintln!(
            "floor   {record_bytes:>5} B            {:>10.0} records/s  p50 {:>8.1} us  p99 {:>8.1} us",
            floor.records_per_second, floor.latency_us_p50, floor.latency_us_p99
        );
        let floor_rate = floor.records_per_second;
        runs.push(floor);
        for &appenders in &config.appenders {
            let run = run_wal(config, record_bytes, appenders)?;
            eprintln!(
                "wal     {record_bytes:>5} B  {appenders:>3} appenders {:>10.0} records/s  p50 {:>8.1} us  p99 {:>8.1} us  {:>8.0} commits/s  {:>6.1}x floor",
                run.records_per_second,
                run.latency_us_p50,
                run.latency_us_p99,
                run.commits_per_second,
                run.records_per_second / floor_rate
            );
            runs.push(run);
        }
    }
    Ok(WalResult {
        command: command.to_owned(),
        dir: config.dir.display().to_string(),
        runs,
    })
}

//! The WAL crash loop: SIGKILL a process that writes to the WAL, at random moments, again
//! and again, and check after every restart that no acknowledged record was lost, reordered
//! or invented.
//!
//! ```text
//! vortex-wal-crashloop [--cycles N] [--seed S] [--dir DIR] [--kill-after-ms-max M]
//! ```
//!
//! The parent spawns itself as a child. The child opens the WAL (BOOT_REPLAY), checks every
//! replayed record against what it must be (sequence numbers contiguous from the checkpoint,
//! payloads a function of the sequence number and the run's key, the last one at or past the
//! highest acknowledgement the parent has seen), then appends with many appenders and prints
//! `ack N` on stdout each time its durable sequence number advances. That pipe is outside the
//! WAL: what the parent read there was acknowledged. The parent kills the child with SIGKILL
//! after a random delay (sometimes during replay itself), reads what was acknowledged, and
//! starts the next cycle. Exit status 0 means every cycle checked out.

#[path = "shared/crashloop.rs"]
mod crashloop;

use crashloop::{number, splitmix, value, watch, LoopArgs};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vortex_io::RingConfig;
use vortex_storage::wal::{Wal, WalOptions};
use vortex_storage::{DirectIo, PosixEnv, StorageError};

/// How long a child appends at most if nobody kills it.
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(30);
/// Appends a child keeps outstanding (appended, not yet durable) at most.
const CHILD_APPENDERS: u64 = 64;
/// A checkpoint every this many acknowledged records exercises MANIFEST edits and segment
/// deletion under SIGKILL.
const CHECKPOINT_EVERY: u64 = 3_000;

fn options() -> WalOptions {
    WalOptions {
        segment_bytes_target: 1 << 20,
        batch_bytes_max: 256 << 10,
        appends_pending_max: 1024,
        record_bytes_max: 32 << 10,
        salvage: false,
    }
}

/// The record a sequence number must hold: kind and payload, from the run's key.
fn record_for(key: u64, sequence: u64) -> (u8, Vec<u8>) {
    let mut state = key ^ sequence.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let shape = splitmix(&mut state);
    let size = match shape % 16 {
        0 => (shape >> 8) as usize % (16 << 10),
        1..=4 => (shape >> 8) as usize % 2048,
        _ => (shape >> 8) as usize % 200,
    };
    let mut payload = Vec::with_capacity(size + 8);
    payload.extend_from_slice(&sequence.to_le_bytes());
    while payload.len() < size + 8 {
        payload.extend_from_slice(&splitmix(&mut state).to_le_bytes());
    }
    payload.truncate(size + 8);
    (1 + (shape % 7) as u8, payload)
}

fn main() -> ExitCode {
    crashloop::run(child, parent)
}

/// The child: replay and check, then append until killed.
fn child(args: &[String]) -> Result<(), String> {
    let dir = PathBuf::from(value(args, "--dir").ok_or("child needs --dir")?);
    let key = number(args, "--key", 0)?;
    let acknowledged = number(args, "--acked", 0)?;
    let verify_only = args.iter().any(|arg| arg == "--verify-only");

    let env = PosixEnv::new(&RingConfig::plain(256), DirectIo::Auto)
        .map_err(|error| format!("io_uring: {error}"))?;
    let mut expected: Option<u64> = None;
    let mut problem: Option<String> = None;
    let (mut wal, report) = Wal::open(env, &dir, options(), |record| {
        if problem.is_some() {
            return;
        }
        let next = expected.unwrap_or(record.sequence);
        if record.sequence != next {
            problem = Some(format!(
                "replay gave sequence {} where {next} was due",
                record.sequence
            ));
            return;
        }
        let (kind, payload) = record_for(key, record.sequence);
        if record.kind != kind || record.payload != payload.as_slice() {
            problem = Some(format!(
                "record {} is not what was written (invented or damaged)",
                record.sequence
            ));
        }
        expected = Some(next + 1);
    })
    .map_err(|error| format!("open: {error}"))?;
    if let Some(problem) = problem {
        return Err(problem);
    }
    if let Some(first) = expected.map(|next| next - report.records) {
        if first != report.checkpoint_sequence + 1 {
            return Err(format!(
                "replay started at {first}, not right after the checkpoint {}",
                report.checkpoint_sequence
            ));
        }
    }
    if report.last_sequence < acknowledged {
        return Err(format!(
            "acknowledged records lost: the parent saw {acknowledged} acknowledged, replay ends at {}",
            report.last_sequence
        ));
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "replayed {} last {} checkpoint {} truncated {} us {}",
        report.records,
        report.last_sequence,
        report.checkpoint_sequence,
        report.truncated.len(),
        report.duration.as_micros()
    )
    .map_err(|error| error.to_string())?;
    stdout.flush().map_err(|error| error.to_string())?;
    if verify_only {
        return Ok(());
    }

    let started = Instant::now();
    let mut reported = wal.durable_sequence();
    let mut checkpointed = reported;
    while started.elapsed() < CHILD_LIFETIME_MAX {
        while wal.next_sequence() - 1 - wal.durable_sequence() < CHILD_APPENDERS {
            let (kind, payload) = record_for(key, wal.next_sequence());
            match wal.append(kind, &payload) {
                Ok(_) => {}
                Err(StorageError::Throttled(_)) => break,
                Err(error) => return Err(format!("append: {error}")),
            }
        }
        let durable = wal
            .poll(Some(Duration::from_millis(5)))
            .map_err(|error| format!("poll: {error}"))?;
        if durable > reported {
            writeln!(stdout, "ack {durable}").map_err(|error| error.to_string())?;
            stdout.flush().map_err(|error| error.to_string())?;
            reported = durable;
        }
        if durable >= checkpointed + CHECKPOINT_EVERY {
            wal.checkpoint(durable - CHECKPOINT_EVERY / 2)
                .map_err(|error| format!("checkpoint: {error}"))?;
            checkpointed = durable;
        }
    }
    Ok(())
}

/// What one child said before it died.
#[derive(Debug, Default)]
struct Cycle {
    replayed: Option<String>,
    acknowledged: u64,
}

fn spawn(dir: &Path, key: u64, acknowledged: u64, verify_only: bool) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut command = Command::new(exe);
    command
        .arg("child")
        .arg("--dir")
        .arg(dir)
        .arg("--key")
        .arg(key.to_string())
        .arg("--acked")
        .arg(acknowledged.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if verify_only {
        command.arg("--verify-only");
    }
    command.spawn().map_err(|error| format!("spawn: {error}"))
}

fn absorb(cycle: &mut Cycle, line: String) -> Result<(), String> {
    if let Some(rest) = line.strip_prefix("ack ") {
        let sequence: u64 = rest.parse().map_err(|_| format!("bad ack line {line:?}"))?;
        if sequence < cycle.acknowledged {
            return Err(format!(
                "acks went backwards: {sequence} after {}",
                cycle.acknowledged
            ));
        }
        cycle.acknowledged = sequence;
    } else if line.starts_with("replayed ") {
        cycle.replayed = Some(line);
    }
    Ok(())
}

fn parent(args: &[String]) -> Result<(), String> {
    // Kept whole until the end: it owns the scratch directory.
    let settings = LoopArgs::parse(args, "wal", 300)?;
    let (cycles, seed, kill_after_ms_max) =
        (settings.cycles, settings.seed, settings.kill_after_ms_max);
    let dir = settings.dir.clone();
    let mut random = seed;
    let key = splitmix(&mut random);
    let mut acknowledged = 0u64;
    let mut replay_us_max = 0u64;
    let mut kills_in_replay = 0u64;
    let started = Instant::now();
    for index in 0..cycles {
        // One kill in eight lands within the first few milliseconds: during BOOT_REPLAY.
        let roll = splitmix(&mut random);
        let delay_ms = if roll.is_multiple_of(8) {
            roll % 4
        } else {
            10 + (roll >> 8) % kill_after_ms_max
        };
        let mut child = spawn(&dir, key, acknowledged, false)?;
        let lines = watch(&mut child)?;
        let mut cycle = Cycle::default();
        let deadline = Instant::now() + Duration::from_millis(delay_ms);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) => absorb(&mut cycle, line)?,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Child::kill is SIGKILL: no destructor, no flush, no chance to finish a write.
        let _ = child.kill();
        let status = child.wait().map_err(|error| error.to_string())?;
        for line in lines.iter() {
            absorb(&mut cycle, line)?;
        }
        if status.code().is_some_and(|code| code != 0) {
            return Err(format!(
                "cycle {index}: the child failed ({status}) before it was killed; seed {seed}"
            ));
        }
        match &cycle.replayed {
            Some(line) => {
                let us = line
                    .rsplit(' ')
                    .next()
                    .and_then(|us| us.parse::<u64>().ok())
                    .unwrap_or(0);
                replay_us_max = replay_us_max.max(us);
            }
            None => kills_in_replay += 1,
        }
        if cycle.acknowledged < acknowledged && cycle.acknowledged != 0 {
            return Err(format!(
                "cycle {index}: acks restarted below {acknowledged}; seed {seed}"
            ));
        }
        acknowledged = acknowledged.max(cycle.acknowledged);
        if index.is_multiple_of(25) || index + 1 == cycles {
            println!(
                "cycle {index}: killed after {delay_ms} ms; acknowledged so far {acknowledged}; {}",
                cycle.replayed.as_deref().unwrap_or("killed during replay")
            );
        }
    }
    // A last start that only replays and checks.
    let mut child = spawn(&dir, key, acknowledged, true)?;
    let lines = watch(&mut child)?;
    let status = child.wait().map_err(|error| error.to_string())?;
    let mut last = Cycle::default();
    for line in lines.iter() {
        absorb(&mut last, line)?;
    }
    if !status.success() {
        return Err(format!("final check failed ({status}); seed {seed}"));
    }
    println!(
        "ok: {cycles} SIGKILL cycles ({kills_in_replay} during replay), {acknowledged} records \
         acknowledged and all present in order; longest replay {:.1} ms; {:.1} s; final: {}",
        replay_us_max as f64 / 1e3,
        started.elapsed().as_secs_f64(),
        last.replayed.as_deref().unwrap_or("?")
    );
    if acknowledged == 0 {
        return Err("no record was ever acknowledged: the loop tested nothing".to_owned());
    }
    Ok(())
}

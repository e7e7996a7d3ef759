//! What the crash-loop binaries share: argument parsing, the generator, reading a child's
//! lines, a scratch directory, and what a parent knows of acknowledged writes. Included with
//! `#[path]` by each crash-loop binary (the shard's too); each uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The child's loop, the same for every engine: announces each batch of `batch` ops on
/// stdout (`issued LAST`), applies them in order with `write` (an op refused with THROTTLED,
/// `Ok(None)`, is retried after a short `poll`), waits until `poll` reports the batch's last
/// sequence number durable, and acknowledges it (`ack FIRST LAST`); until `lifetime` passes
/// or the parent kills it.
pub fn write_batches<E>(
    engine: &mut E,
    mut op: u64,
    batch: u64,
    lifetime: Duration,
    write: fn(&mut E, u64) -> Result<Option<u64>, String>,
    poll: fn(&mut E, Duration) -> Result<u64, String>,
) -> Result<(), String> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let started = Instant::now();
    while started.elapsed() < lifetime {
        let first = op;
        let last = op + batch - 1;
        writeln!(stdout, "issued {last}").map_err(|error| error.to_string())?;
        stdout.flush().map_err(|error| error.to_string())?;
        let mut sequence = 0;
        while op <= last {
            match write(engine, op)? {
                Some(appended) => {
                    sequence = appended;
                    op += 1;
                }
                None => {
                    poll(engine, Duration::from_millis(2))?;
                }
            }
        }
        while poll(engine, Duration::from_millis(5))? < sequence {}
        writeln!(stdout, "ack {first} {last}").map_err(|error| error.to_string())?;
        stdout.flush().map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// A role of the binary: the arguments after its name.
pub type Role = fn(&[String]) -> Result<(), String>;

/// `main` of a crash-loop binary: `child ARGS…` runs `child`, anything else `parent`; a
/// failure is printed as `FAIL: …` with exit status 2.
pub fn run(child: Role, parent: Role) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("child") {
        child(&args[1..])
    } else {
        parent(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("FAIL: {message}");
            ExitCode::from(2)
        }
    }
}

/// The value after `name` in `args`.
pub fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|arg| arg == name)
        .and_then(|at| args.get(at + 1))
        .map(String::as_str)
}

/// The number after `name`, or `default`.
pub fn number(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match value(args, name) {
        Some(text) => text
            .parse()
            .map_err(|_| format!("{name} takes a number, not {text:?}")),
        None => Ok(default),
    }
}

/// `--seed`, or one from the clock.
pub fn seed(args: &[String]) -> Result<u64, String> {
    match value(args, "--seed") {
        Some(_) => number(args, "--seed", 0),
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(1)),
    }
}

/// What every crash-loop parent takes: `--cycles`, `--seed`, `--kill-after-ms-max` and
/// `--dir` (a scratch directory, removed at exit, when not given).
pub struct LoopArgs {
    /// SIGKILL cycles to run.
    pub cycles: u64,
    /// The run's seed.
    pub seed: u64,
    /// The longest a child lives before the kill, in milliseconds.
    pub kill_after_ms_max: u64,
    /// Where the child's data lives.
    pub dir: PathBuf,
    _scratch: Option<TempDir>,
}

impl LoopArgs {
    /// Parses the arguments of the `what` crash loop (`wal`, `store`, `shard`) and prints
    /// the banner with the seed to replay.
    pub fn parse(args: &[String], what: &str, kill_after_ms_default: u64) -> Result<Self, String> {
        let cycles = number(args, "--cycles", 20)?;
        let seed = seed(args)?;
        let kill_after_ms_max = number(args, "--kill-after-ms-max", kill_after_ms_default)?.max(1);
        let (dir, scratch) = match value(args, "--dir") {
            Some(dir) => (PathBuf::from(dir), None),
            None => {
                let scratch = TempDir::new(&format!("vortex-{what}-crashloop"))?;
                (scratch.path.join(what), Some(scratch))
            }
        };
        println!(
            "{what} crash loop: {cycles} cycles, seed {seed} (replay with --seed {seed}), dir {}",
            dir.display()
        );
        Ok(LoopArgs {
            cycles,
            seed,
            kill_after_ms_max,
            dir,
            _scratch: scratch,
        })
    }
}

/// SplitMix64: the next value of the generator at `state`.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Reads the child's lines on a thread, so the parent can kill it whenever it likes.
pub fn watch(child: &mut Child) -> Result<mpsc::Receiver<String>, String> {
    let stdout = child.stdout.take().ok_or("child without stdout")?;
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    Ok(receiver)
}

/// A scratch directory removed at exit (the storage crate does not depend on tempfile).
pub struct TempDir {
    /// Its path.
    pub path: PathBuf,
}

impl TempDir {
    /// A fresh directory under `$TMPDIR` named after `name` and the process.
    pub fn new(name: &str) -> Result<Self, String> {
        let base = std::env::var_os("TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let path = base.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One cycle of an op-numbered crash loop: starts this binary as `child --dir DIR
/// --op-start START`, feeds its lines to `knowledge` for `delay_ms`, SIGKILLs it, and takes
/// in what it printed before dying. A child that exited with an error fails the cycle.
pub fn kill_cycle(
    dir: &Path,
    op_start: u64,
    delay_ms: u64,
    knowledge: &mut Knowledge,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    knowledge.issued = op_start - 1;
    let mut child = Command::new(exe)
        .arg("child")
        .arg("--dir")
        .arg(dir)
        .arg("--op-start")
        .arg(op_start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|error| format!("spawn: {error}"))?;
    let lines = watch(&mut child)?;
    let deadline = Instant::now() + Duration::from_millis(delay_ms);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => knowledge.absorb(&line)?,
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Child::kill is SIGKILL: no destructor, no flush, no chance to finish a write.
    let _ = child.kill();
    let status = child.wait().map_err(|error| error.to_string())?;
    for line in lines.iter() {
        knowledge.absorb(&line)?;
    }
    if status.code().is_some_and(|code| code != 0) {
        return Err(format!("the child failed ({status}) before it was killed"));
    }
    Ok(())
}

/// What a crash-loop parent knows of each point from the child's `issued LAST` and
/// `ack FIRST LAST` lines, for workloads where op `X` writes (or deletes) one point that is a
/// function of `X`.
#[derive(Debug)]
pub struct Knowledge {
    /// Per point: the last acknowledged op on it.
    acked: HashMap<u64, u64>,
    /// Per point: ops issued after its last acknowledged one (they may or may not have
    /// become durable before the kill).
    maybe: HashMap<u64, Vec<u64>>,
    /// The last op issued.
    pub issued: u64,
    /// Ops acknowledged, over every cycle.
    pub acknowledged_ops: u64,
    batch: u64,
    /// Op → (point, whether it deletes).
    operation: fn(u64) -> (u64, bool),
}

impl Knowledge {
    /// Knowledge of a child writing batches of `batch` ops.
    pub fn new(batch: u64, operation: fn(u64) -> (u64, bool)) -> Self {
        Knowledge {
            acked: HashMap::new(),
            maybe: HashMap::new(),
            issued: 0,
            acknowledged_ops: 0,
            batch,
            operation,
        }
    }

    /// Takes in one line of the child.
    pub fn absorb(&mut self, line: &str) -> Result<(), String> {
        let numbers: Vec<u64> = line
            .split(' ')
            .skip(1)
            .map(|n| n.parse().map_err(|_| format!("bad line {line:?}")))
            .collect::<Result<_, _>>()?;
        match (line.split(' ').next(), numbers.as_slice()) {
            (Some("issued"), [last]) => {
                for op in self.issued.max(last + 1 - self.batch)..=*last {
                    let (point, _) = (self.operation)(op);
                    self.maybe.entry(point).or_default().push(op);
                }
                self.issued = *last;
            }
            (Some("ack"), [first, last]) => {
                for op in *first..=*last {
                    let (point, _) = (self.operation)(op);
                    self.acked.insert(point, op);
                    if let Some(ops) = self.maybe.get_mut(&point) {
                        ops.retain(|&later| later > op);
                    }
                    self.acknowledged_ops += 1;
                }
            }
            _ => return Err(format!("unexpected line {line:?}")),
        }
        Ok(())
    }

    /// Checks what `point` holds after a restart: `Some(op)` when it holds the content op
    /// `op` put, `None` when it is absent. It must be the last acknowledged op or one issued
    /// after it, never older, never another point's; absence must be explained by a delete.
    pub fn check_point(&self, point: u64, found: Option<u64>) -> Result<(), String> {
        let acked = self.acked.get(&point).copied();
        let maybe = self
            .maybe
            .get(&point)
            .map(Vec::as_slice)
            .unwrap_or_default();
        match found {
            Some(op) => {
                if (self.operation)(op) != (point, false) {
                    return Err(format!("point {point} holds op {op}, which did not put it"));
                }
                if Some(op) != acked && !maybe.contains(&op) {
                    return Err(format!(
                        "point {point} holds op {op}; last acknowledged {acked:?}, issued since {maybe:?}"
                    ));
                }
            }
            None => {
                let deleted = acked.is_none_or(|op| (self.operation)(op).1)
                    || maybe.iter().any(|&op| (self.operation)(op).1);
                if !deleted {
                    return Err(format!(
                        "point {point} is missing; its last acknowledged op {acked:?} put it"
                    ));
                }
            }
        }
        Ok(())
    }
}

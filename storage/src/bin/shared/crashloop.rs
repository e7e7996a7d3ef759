//! What the crash-loop binaries share: argument parsing, the generator, reading a child's
//! lines, and a scratch directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ExitCode};
use std::sync::mpsc;

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

//! Process-level tests of `vortex-dataplane topology`: pinning verified from outside, bad
//! configs refused with exit status 2 and one line, and memory locking under a lowered
//! RLIMIT_MEMLOCK in a child process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_vortex-dataplane");

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes a config whose data directory lies in the scratch directory, plus `extra`.
    fn config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("vortex.toml");
        let text = format!(
            "[storage]\ndata_dir = \"{}\"\n{extra}",
            self.dir.path().join("data").display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn raw_config(&self, text: &str) -> PathBuf {
        let path = self.dir.path().join("raw.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn topology(args: &[&str], config: &Path) -> Output {
    Command::new(BINARY)
        .arg("topology")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn physical_core_count() -> usize {
    vortex_config::Topology::discover().unwrap().cores.len()
}

/// Asserts the refusal contract: exit status 2, exactly one line on stderr naming the field.
fn assert_refused(output: &Output, field: &str, accepted: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.contains(field), "field {field} not named: {stderr}");
    assert!(stderr.contains(accepted), "{accepted:?} missing: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn verify_pins_every_leu_and_says_so() {
    let scratch = Scratch::new();
    let cores = physical_core_count();
    let config = scratch.config(&format!(
        "[leu]\ncount = {cores}\n[memory]\nlock = \"off\"\n"
    ));
    let output = topology(&["--verify"], &config);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert_eq!(stdout.matches("  match").count(), cores, "{stdout}");
    assert!(
        stdout.contains(&format!("all {cores} LEU(s) pinned as planned")),
        "{stdout}"
    );
    assert!(!stdout.contains("MISMATCH"));
    for leu in 0..cores {
        assert!(stdout.contains(&format!("thread leu-{leu} ")), "{stdout}");
    }
}

#[test]
fn dev_example_pins_two_leus_where_there_are_two_cores() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-config/examples/dev.toml");
    let scratch = Scratch::new();
    // Run from a scratch directory so that the example's relative data_dir lands there.
    let output = Command::new(BINARY)
        .current_dir(scratch.dir.path())
        .args(["topology", "--verify", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    if physical_core_count() >= 2 {
        assert_eq!(
            output.status.code(),
            Some(0),
            "{stdout}{}",
            text(&output.stderr)
        );
        assert!(
            stdout.contains("all 2 LEU(s) pinned as planned"),
            "{stdout}"
        );
        assert!(scratch.dir.path().join("target/vortex-dev-data").is_dir());
    } else {
        // A one-core machine cannot give the example its two cores: a clear refusal.
        assert_refused(&output, "leu.count", "accepted: 1 to 1");
    }
}

#[test]
fn json_output_is_machine_readable() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "[leu]\ncount = 1\n[memory]\nlock = \"off\"\n{SMALL_RING}"
    ));
    let output = topology(&["--verify", "--json"], &config);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mapping"]["leus"].as_array().unwrap().len(), 1);
    assert_eq!(report["verification"][0]["matches"], true);
    assert!(!report["topology"]["cpus"].as_array().unwrap().is_empty());
}

#[test]
fn without_config_the_defaults_run() {
    let scratch = Scratch::new();
    let output = Command::new(BINARY)
        .current_dir(scratch.dir.path())
        .arg("topology")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("config: built-in defaults"));
    assert!(scratch.dir.path().join("vortex-data").is_dir());
}

#[test]
fn malformed_configs_exit_two_with_one_line() {
    let scratch = Scratch::new();
    let cases: &[(&str, &str, &str)] = &[
        ("[network]\nport = \"x\"\n", "network.port", "u16"),
        ("[network]\nprot = 1\n", "network.prot", "unknown field"),
        (
            "[io_uring]\nqueue_depth = 100\n",
            "io_uring.queue_depth",
            "power of two",
        ),
        (
            "[limits]\nframe_size_max_bytes = 1\n",
            "limits.frame_size_max_bytes",
            "4096 to",
        ),
        (
            "[leu]\ncores = [4095]\n",
            "leu.cores",
            "CPU 4095 does not exist",
        ),
        ("[leu]\ncount = 5000\n", "leu.count", "1 to 1024"),
        ("[memory]\nlock = \"yes\"\n", "memory.lock", "`required`"),
        ("this is not toml\n", "(syntax)", "raw.toml:1"),
    ];
    for (config_text, field, accepted) in cases {
        let config = scratch.raw_config(config_text);
        let output = topology(&[], &config);
        assert_refused(&output, field, accepted);
    }
}

#[test]
fn a_core_count_above_the_machine_is_refused() {
    let scratch = Scratch::new();
    let too_many = physical_core_count() + 1;
    let config = scratch.config(&format!("[leu]\ncount = {too_many}\n"));
    assert_refused(
        &topology(&["--verify"], &config),
        "leu.count",
        "physical core",
    );
}

#[test]
fn a_data_dir_that_cannot_be_created_is_refused() {
    let scratch = Scratch::new();
    let blocker = scratch.dir.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let config = scratch.raw_config(&format!(
        "[storage]\ndata_dir = \"{}\"\n",
        blocker.join("data").display()
    ));
    assert_refused(&topology(&[], &config), "storage.data_dir", "cannot create");
}

#[test]
fn a_missing_config_file_is_refused() {
    let output = topology(&[], Path::new("/nonexistent/vortex.toml"));
    assert_refused(
        &output,
        "/nonexistent/vortex.toml",
        "cannot read config file",
    );
}

#[test]
fn usage_errors_exit_two() {
    let output = Command::new(BINARY)
        .arg("topology")
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// The lowered limit: far below what the process maps (binary, heap, thread stacks), so that
/// mlockall fails, yet above what a small io_uring needs, since without CAP_IPC_LOCK the
/// kernel charges ring memory to the same limit (per user: tests running beside each other
/// share it).
const MEMLOCK_LIMIT_BYTES: u64 = 1 << 20;
/// A small ring for the low-limit tests.
const SMALL_RING: &str = "[io_uring]\nqueue_depth = 32\ninflight_max = 32\n";

/// Runs `topology --verify` in a child whose RLIMIT_MEMLOCK is 1 MiB and which, when the test
/// runs as root, has given up its capabilities (so CAP_IPC_LOCK cannot bypass the limit).
fn topology_with_low_memlock(config: &Path) -> Output {
    let mut command = Command::new(BINARY);
    command
        .args(["topology", "--verify", "--config"])
        .arg(config);
    vortex_test_support::process::as_ordinary_user(&mut command, MEMLOCK_LIMIT_BYTES)
        .output()
        .unwrap()
}

#[test]
fn memory_lock_try_under_a_low_limit_locks_in_part_warns_once_and_goes_on() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "[leu]\ncount = 1\n[memory]\nlock = \"try\"\n{SMALL_RING}"
    ));
    let output = topology_with_low_memlock(&config);
    let stderr = text(&output.stderr);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(
        stderr.matches("memory is locked only in part").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one warning: {stderr}");
    assert!(stderr.contains("RLIMIT_MEMLOCK = 1 MiB"), "{stderr}");
    assert!(stderr.contains("LimitMEMLOCK=infinity"), "{stderr}");
    assert!(
        stdout.contains("in part, the buffer pools within RLIMIT_MEMLOCK 1 MiB"),
        "{stdout}"
    );
    assert!(
        stdout.contains("all 1 LEU(s) pinned as planned"),
        "{stdout}"
    );
}

#[test]
fn memory_lock_required_refuses_to_start() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "[leu]\ncount = 1\n[memory]\nlock = \"required\"\n{SMALL_RING}"
    ));
    let output = topology_with_low_memlock(&config);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("memory.lock = \"required\""), "{stderr}");
    assert!(stderr.contains("RLIMIT_MEMLOCK is 1 MiB"), "{stderr}");
    assert!(!text(&output.stdout).contains("pinned as planned"));
}

#[test]
fn memory_lock_off_stays_quiet_under_a_low_limit() {
    let scratch = Scratch::new();
    let config = scratch.config(&format!(
        "[leu]\ncount = 1\n[memory]\nlock = \"off\"\n{SMALL_RING}"
    ));
    let output = topology_with_low_memlock(&config);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("memory is"), "{stderr}");
    assert!(text(&output.stdout).contains("memory lock: off"));
}

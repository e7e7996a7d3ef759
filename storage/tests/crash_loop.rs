//! The crash loops in CI: 20 SIGKILL cycles of a process writing to the WAL on real files,
//! each restart checking that every acknowledged record is back, in order, with nothing
//! invented; and 20 of a process writing to the LSM store while flushes and compactions run.
//! The extended runs are the same binaries with `--cycles 500` (docs/STORAGE.md).

use std::process::Command;

/// `VORTEX_CRASHLOOP_SEED`, or one from the clock.
fn crashloop_seed() -> u64 {
    std::env::var("VORTEX_CRASHLOOP_SEED")
        .ok()
        .and_then(|seed| seed.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1)
        })
}

#[test]
fn twenty_sigkill_cycles_lose_no_acknowledged_record() {
    let seed = crashloop_seed();
    println!("crash loop seed {seed} (replay with VORTEX_CRASHLOOP_SEED={seed})");
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vortex-wal-crashloop"))
        .args(["--cycles", "20", "--kill-after-ms-max", "200", "--seed"])
        .arg(seed.to_string())
        .arg("--dir")
        .arg(scratch.path().join("wal"))
        .output()
        .expect("run the crash loop");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "crash loop failed (seed {seed}):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: 20 SIGKILL cycles"), "{stdout}");
}

/// The store's crash loop in CI: 20 SIGKILL cycles of a process writing to the LSM store while
/// flushes and compactions run; after each, the store opens consistent and holds every
/// acknowledged write. Kills must have interrupted flushes or compactions, or the loop tested
/// less than it claims.
#[test]
fn twenty_sigkills_during_flushes_and_compactions_lose_no_acknowledged_write() {
    let seed = crashloop_seed();
    println!("store crash loop seed {seed} (replay with VORTEX_CRASHLOOP_SEED={seed})");
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vortex-store-crashloop"))
        .args(["--cycles", "20", "--kill-after-ms-max", "300", "--seed"])
        .arg(seed.to_string())
        .arg("--dir")
        .arg(scratch.path().join("store"))
        .output()
        .expect("run the store crash loop");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "store crash loop failed (seed {seed}):\n{stdout}\n{stderr}"
    );
    let summary = stdout
        .lines()
        .find(|line| line.starts_with("ok: 20 SIGKILL cycles"))
        .unwrap_or_else(|| panic!("{stdout}"));
    let interrupted: u64 = summary
        .split("; ")
        .find_map(|part| part.strip_suffix(" kills interrupted a flush or compaction"))
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        interrupted > 0,
        "no kill landed in a flush or compaction: {summary}"
    );
}

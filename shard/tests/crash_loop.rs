//! The shard's crash loop in CI: 12 SIGKILL cycles of a process upserting and deleting while
//! flushes, side-car index builds and compactions run; after each, every acknowledged write
//! is back, every segment's index agrees with its SSTable, and searches return live points
//! at their current distances. The extended run is the same binary with `--cycles 500`.

use std::process::Command;

#[test]
fn sigkills_during_ingest_lose_no_acknowledged_write_and_leave_indexes_consistent() {
    let seed = std::env::var("VORTEX_CRASHLOOP_SEED")
        .ok()
        .and_then(|seed| seed.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("shard crash loop seed {seed} (replay with VORTEX_CRASHLOOP_SEED={seed})");
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vortex-shard-crashloop"))
        .args(["--cycles", "12", "--kill-after-ms-max", "300", "--seed"])
        .arg(seed.to_string())
        .arg("--dir")
        .arg(scratch.path().join("shard"))
        .output()
        .expect("run the shard crash loop");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "shard crash loop failed (seed {seed}):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: 12 SIGKILL cycles"), "{stdout}");
}

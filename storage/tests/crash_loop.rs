//! The crash loop in CI: 20 SIGKILL cycles of a process writing to the WAL on real files,
//! each restart checking that every acknowledged record is back, in order, with nothing
//! invented. The extended run is the same binary with `--cycles 500` (docs/STORAGE.md).

use std::process::Command;

#[test]
fn twenty_sigkill_cycles_lose_no_acknowledged_record() {
    let seed = std::env::var("VORTEX_CRASHLOOP_SEED")
        .ok()
        .and_then(|seed| seed.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1)
        });
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

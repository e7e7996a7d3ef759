//! Helpers shared by the integration tests: the storage crate's, and (through `#[path]`) the
//! shard crate's. Each test file uses a part of it.
#![allow(dead_code)]

/// A tiny seeded generator for the randomized tests (the seed is printed on failure).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    /// Uniform in [-1, 1).
    pub fn signed_unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// The number in environment variable `name`, or one from the clock.
fn seed_from(name: &str) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// `VORTEX_TEST_SEED`, or one from the clock.
pub fn test_seed() -> u64 {
    seed_from("VORTEX_TEST_SEED")
}

/// Runs a crash-loop binary for `cycles` SIGKILL cycles in a fresh directory, with the seed
/// from `VORTEX_CRASHLOOP_SEED` or the clock (printed), and returns its standard output once
/// it reported `ok: <cycles> SIGKILL cycles`; fails the test otherwise.
pub fn run_crash_loop(exe: &str, cycles: u32, kill_after_ms_max: u32) -> String {
    let seed = seed_from("VORTEX_CRASHLOOP_SEED");
    println!("{exe}: seed {seed} (replay with VORTEX_CRASHLOOP_SEED={seed})");
    let scratch = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(exe)
        .args(["--cycles", &cycles.to_string()])
        .args(["--kill-after-ms-max", &kill_after_ms_max.to_string()])
        .args(["--seed", &seed.to_string()])
        .arg("--dir")
        .arg(scratch.path().join("data"))
        .output()
        .expect("run the crash loop");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{exe} failed (seed {seed}):\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("ok: {cycles} SIGKILL cycles")),
        "{stdout}"
    );
    stdout
}

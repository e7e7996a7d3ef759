//! What the workspace's tests share, in one place (issue #23: test scaffolding was copied
//! between crates with `#[path]`). A dev-dependency only; nothing here ships.
//!
//! - [`Rng`], [`test_seed`], [`seed_from`]: seeded randomness; a randomised test prints its
//!   seed and replays from `VORTEX_TEST_SEED`.
//! - [`run_crash_loop`]: runs one of the crash-loop binaries and checks its verdict.
//! - [`files`]: copying a data directory and flipping a bit of a file in place.
//! - [`process`]: running a child as an ordinary (unprivileged) user would.

pub mod files;
pub mod process;

/// A tiny seeded generator (SplitMix64) for randomised tests.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits. (Named as the tests have always called it; not an
    /// `Iterator`: it never ends, and an `Option` at every call site would say otherwise.)
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-1, 1).
    pub fn signed_unit(&mut self) -> f32 {
        self.unit() * 2.0 - 1.0
    }
}

/// The number in environment variable `name`, or one from the clock.
pub fn seed_from(name: &str) -> u64 {
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

/// [`test_seed`], printed with how to replay it.
pub fn announced_seed() -> u64 {
    let seed = test_seed();
    println!("seed {seed} (replay with VORTEX_TEST_SEED={seed})");
    seed
}

/// Runs a crash-loop binary for `cycles` SIGKILL cycles in a fresh directory, with the seed
/// from `VORTEX_CRASHLOOP_SEED` or the clock (printed), and returns its standard output once
/// it reported `ok: <cycles> SIGKILL cycles`; fails the test otherwise.
pub fn run_crash_loop(exe: &str, cycles: u32, kill_after_ms_max: u32) -> String {
    let seed = seed_from("VORTEX_CRASHLOOP_SEED");
    println!("{exe}: seed {seed} (replay with VORTEX_CRASHLOOP_SEED={seed})");
    let scratch = tempfile::tempdir().expect("a scratch directory");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_a_pure_function_of_its_seed_and_stays_in_range() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        let first: Vec<u64> = (0..8).map(|_| a.next()).collect();
        assert_eq!(first, (0..8).map(|_| b.next()).collect::<Vec<_>>());
        assert_ne!(first, (0..8).map(|_| Rng(43).next()).collect::<Vec<_>>());
        let mut rng = Rng(7);
        for _ in 0..10_000 {
            assert!(rng.below(10) < 10);
            let unit = rng.unit();
            assert!((0.0..1.0).contains(&unit));
            let signed = rng.signed_unit();
            assert!((-1.0..1.0).contains(&signed));
        }
        assert_eq!(rng.below(0), 0);
    }
}

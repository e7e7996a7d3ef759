//! Every SIMD level against an `f64` reference: every length from 1 to 1024 (so every tail),
//! unaligned slices, extreme magnitudes, and exact `i8` results. Seeded; the seed is printed.
//!
//! Tolerance for the `f32` kernels: a sum of `n` terms computed in `f32` in any order is
//! within about `n·u·Σ|termᵢ|` of the exact sum (`u = 2⁻²⁴`, the classic worst-case bound),
//! and each L2 term carries up to `3u` of its own (the difference, then the square). The
//! tests allow `(2n + 4)·u·Σ|termᵢ|`, twice that, plus an absolute `n·1e-37` for terms near
//! underflow.

use vortex_index::distance::{Kernels, Level, LevelError, LEVEL_ENV};

/// xorshift64*, seeded.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

const SEED: u64 = 0x00C0_FFEE_D157_A4CE;

/// The levels this CPU runs; the others are named so the log shows what was skipped.
fn levels() -> Vec<Kernels> {
    Level::ALL
        .into_iter()
        .filter_map(|level| match Kernels::for_level(level) {
            Ok(kernels) => Some(kernels),
            Err(error) => {
                eprintln!("skipping: {error}");
                None
            }
        })
        .collect()
}

fn tolerance(terms: impl Iterator<Item = f64>, length: usize) -> f64 {
    let magnitude: f64 = terms.map(f64::abs).sum();
    // u = 2⁻²⁴ is f32's unit roundoff (EPSILON / 2).
    let unit_roundoff = f64::from(f32::EPSILON) / 2.0;
    (2 * length + 4) as f64 * unit_roundoff * magnitude + length as f64 * 1e-37
}

fn reference_l2(a: &[f32], b: &[f32]) -> (f64, f64) {
    let terms = a.iter().zip(b).map(|(&x, &y)| {
        let difference = f64::from(x) - f64::from(y);
        difference * difference
    });
    (terms.clone().sum(), tolerance(terms, a.len()))
}

fn reference_dot(a: &[f32], b: &[f32]) -> (f64, f64) {
    let terms = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y));
    (terms.clone().sum(), tolerance(terms, a.len()))
}

fn reference_cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = reference_dot(a, b).0;
    let aa: f64 = reference_dot(a, a).0;
    let bb: f64 = reference_dot(b, b).0;
    if aa == 0.0 || bb == 0.0 {
        1.0
    } else {
        1.0 - dot / (aa * bb).sqrt()
    }
}

fn check_f32(kernels: &Kernels, a: &[f32], b: &[f32], context: &str) {
    let (l2, l2_tolerance) = reference_l2(a, b);
    let got = f64::from((kernels.l2_squared)(a, b));
    assert!(
        (got - l2).abs() <= l2_tolerance,
        "{} l2 {context}: got {got}, want {l2} ± {l2_tolerance} (seed {SEED:#x})",
        kernels.level.name()
    );
    let (dot, dot_tolerance) = reference_dot(a, b);
    let got = f64::from((kernels.dot)(a, b));
    assert!(
        (got - dot).abs() <= dot_tolerance,
        "{} dot {context}: got {got}, want {dot} ± {dot_tolerance} (seed {SEED:#x})",
        kernels.level.name()
    );
    // Cosine: a ratio of three such sums; relative error a few times 2·n·2⁻²⁴.
    let cosine = reference_cosine(a, b);
    let got = f64::from((kernels.cosine_distance)(a, b));
    let cosine_tolerance = 8.0 * a.len() as f64 * f64::from(f32::EPSILON) + 1e-6;
    assert!(
        (got - cosine).abs() <= cosine_tolerance,
        "{} cosine {context}: got {got}, want {cosine} ± {cosine_tolerance} (seed {SEED:#x})",
        kernels.level.name()
    );
}

#[test]
fn every_level_matches_the_reference_at_every_length_and_offset() {
    eprintln!(
        "seed {SEED:#x}; levels: {:?}",
        levels().iter().map(|k| k.level).collect::<Vec<_>>()
    );
    let mut random = Random(SEED);
    let pool_a: Vec<f32> = (0..1100).map(|_| random.unit()).collect();
    let pool_b: Vec<f32> = (0..1100).map(|_| random.unit()).collect();
    for kernels in levels() {
        for length in 1..=1024 {
            // Offsets 0 to 3 floats: unaligned for every SIMD width.
            let offset_a = (random.next() % 4) as usize;
            let offset_b = (random.next() % 4) as usize;
            let a = &pool_a[offset_a..offset_a + length];
            let b = &pool_b[offset_b..offset_b + length];
            check_f32(&kernels, a, b, &format!("length {length}"));
        }
    }
}

#[test]
fn extreme_magnitudes_stay_within_the_bound() {
    let mut random = Random(SEED ^ 1);
    for kernels in levels() {
        for scale in [1e-18f32, 1e-6, 1.0, 1e6, 1e15] {
            for length in [1, 7, 8, 9, 31, 32, 33, 100, 768, 1024] {
                let a: Vec<f32> = (0..length).map(|_| random.unit() * scale).collect();
                let b: Vec<f32> = (0..length).map(|_| random.unit() * scale).collect();
                check_f32(
                    &kernels,
                    &a,
                    &b,
                    &format!("scale {scale:e} length {length}"),
                );
            }
        }
        // Zero vectors: cosine distance is defined as 1, never NaN.
        let zeros = vec![0.0f32; 100];
        let ones = vec![1.0f32; 100];
        assert_eq!((kernels.cosine_distance)(&zeros, &ones), 1.0);
        assert_eq!((kernels.cosine_distance)(&zeros, &zeros), 1.0);
        assert_eq!((kernels.l2_squared)(&ones, &ones), 0.0);
        // Identical and opposite directions.
        let negative: Vec<f32> = ones.iter().map(|value| -value).collect();
        assert!((kernels.cosine_distance)(&ones, &ones).abs() < 1e-6);
        assert!(((kernels.cosine_distance)(&ones, &negative) - 2.0).abs() < 1e-6);
    }
}

#[test]
fn i8_kernels_are_exact() {
    let mut random = Random(SEED ^ 2);
    let pool_a: Vec<i8> = (0..1100).map(|_| random.next() as i8).collect();
    let pool_b: Vec<i8> = (0..1100).map(|_| random.next() as i8).collect();
    for kernels in levels() {
        for length in 0..=1024 {
            let offset_a = (random.next() % 16) as usize;
            let offset_b = (random.next() % 16) as usize;
            let a = &pool_a[offset_a..offset_a + length];
            let b = &pool_b[offset_b..offset_b + length];
            let dot: i64 = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| i64::from(x) * i64::from(y))
                .sum();
            let l2: i64 = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| (i64::from(x) - i64::from(y)).pow(2))
                .sum();
            assert_eq!(
                i64::from((kernels.dot_i8)(a, b)),
                dot,
                "{} dot_i8 length {length}",
                kernels.level.name()
            );
            assert_eq!(
                i64::from((kernels.l2_squared_i8)(a, b)),
                l2,
                "{} l2_i8 length {length}",
                kernels.level.name()
            );
        }
        // The narrow kernel on codes (within ±127): exact too.
        for length in 0..=1024 {
            let offset = (random.next() % 16) as usize;
            let a: Vec<i8> = pool_a[offset..offset + length]
                .iter()
                .map(|&x| x.max(-127))
                .collect();
            let b: Vec<i8> = pool_b[offset..offset + length]
                .iter()
                .map(|&x| x.max(-127))
                .collect();
            let dot: i64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| i64::from(x) * i64::from(y))
                .sum();
            assert_eq!(
                i64::from((kernels.dot_i8_narrow)(&a[..], &b[..])),
                dot,
                "{} dot_i8_narrow length {length}",
                kernels.level.name()
            );
        }
        let edge = vec![-127i8; 65_536];
        let top = vec![127i8; 65_536];
        assert_eq!((kernels.dot_i8_narrow)(&edge, &edge), 127 * 127 * 65_536);
        assert_eq!((kernels.dot_i8_narrow)(&edge, &top), -127 * 127 * 65_536);
        // The extremes, at VBP's largest dimension: every lane at its bound.
        let low = vec![-128i8; 65_536];
        let high = vec![127i8; 65_536];
        assert_eq!((kernels.dot_i8)(&low, &low), 128 * 128 * 65_536);
        assert_eq!((kernels.l2_squared_i8)(&low, &high), 255 * 255 * 65_536);
    }
}

#[test]
fn levels_are_named_and_refused_clearly() {
    for level in Level::ALL {
        assert_eq!(Level::from_name(level.name()), Some(level));
        assert_eq!(Level::from_name(&level.name().to_uppercase()), Some(level));
    }
    assert_eq!(Level::from_name("avx9000"), None);
    assert!(Level::Scalar.available());
    assert!(Level::detected().available());
    for level in Level::ALL {
        match Kernels::for_level(level) {
            Ok(kernels) => assert_eq!(kernels.level, level),
            Err(error) => {
                assert_eq!(error, LevelError::Unavailable(level));
                assert!(error.to_string().contains("not available"), "{error}");
            }
        }
    }
    let unknown = LevelError::Unknown("avx9000".to_owned()).to_string();
    assert!(unknown.contains("scalar, avx2"), "{unknown}");
}

#[test]
fn the_environment_variable_forces_a_level_in_a_child_process() {
    // `Kernels::active` is chosen once per process, so each forced level runs in a child:
    // this test binary again, filtered to the probe below, with the variable set.
    if let Ok(expected) = std::env::var("VORTEX_EXPECT_LEVEL") {
        assert_eq!(Kernels::active().level.name(), expected);
        return;
    }
    for kernels in levels() {
        let name = kernels.level.name();
        assert!(child_reports(name, name), "forcing {name}");
    }
    // An unknown name falls back to the detected level.
    assert!(child_reports("avx9000", Level::detected().name()));
}

/// Runs the probe above in a child with `VORTEX_SIMD_LEVEL=forced`; whether it saw
/// `expected`.
fn child_reports(forced: &str, expected: &str) -> bool {
    let executable = std::env::current_exe().expect("the test binary's path");
    std::process::Command::new(executable)
        .args([
            "the_environment_variable_forces_a_level_in_a_child_process",
            "--exact",
        ])
        .env(LEVEL_ENV, forced)
        .env("VORTEX_EXPECT_LEVEL", expected)
        .status()
        .expect("the test binary runs")
        .success()
}

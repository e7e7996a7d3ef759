//! Distance kernels: squared L2, inner product and cosine over `f32`, dot product and squared
//! L2 over `i8` codes, at the widest SIMD level the CPU has, chosen once.
//!
//! [`Kernels`] is a table of plain function pointers filled for one [`Level`]. The process
//! uses [`Kernels::active`], chosen on first use from the CPU's features, or from the
//! `VORTEX_SIMD_LEVEL` environment variable (`scalar`, `avx2`) so that every level can be
//! run and compared on one machine; tests and benchmarks also call
//! [`Kernels::for_level`] directly.
//!
//! Levels: `Scalar` (portable Rust, what every x86-64 and other CPU runs; eight interleaved
//! partial sums so that the baseline's SSE2 vectorizes it), `Avx2Fma` (AVX2 + FMA, 256-bit),
//! `Avx512` (AVX-512 F and BW, 512-bit, masked loads for the `f32` tails) and `Avx512Vnni`
//! (the same `f32` kernels; the `i8` ones on VNNI's fused multiply-adds, `vpdpbusd` and
//! `vpdpwssd`). The tests run every level the CPU has against an exact reference.
//!
//! Distances follow VBP's convention, smaller is closer: squared L2; the *negative* inner
//! product for `ip`; `1 - cos` for `cosine` (and 1 when either vector is all zeros).
//!
//! Accuracy: the SIMD levels sum in a different order from the scalar one, so results
//! differ in the last bits. Every level stays within `(2n + 4)·2⁻²⁴·Σ|termᵢ|` of the exact
//! value (twice the classic worst-case bound for a sum of `n` rounded terms), which the
//! tests check against an `f64` reference for every length from 1 to 1024. The `i8`
//! kernels are exact.

use std::sync::OnceLock;

/// A SIMD level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Portable code; the compiler may still vectorize it for the baseline target.
    Scalar,
    /// AVX2 and FMA, 256-bit registers.
    Avx2Fma,
    /// AVX-512 F and BW, 512-bit registers.
    Avx512,
    /// AVX-512 F, BW and VNNI: the `i8` kernels on fused byte and word dot products.
    Avx512Vnni,
}

impl Level {
    /// Every level, widest last.
    pub const ALL: [Level; 4] = [
        Level::Scalar,
        Level::Avx2Fma,
        Level::Avx512,
        Level::Avx512Vnni,
    ];

    /// The name used by `VORTEX_SIMD_LEVEL` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2Fma => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Vnni => "avx512vnni",
        }
    }

    /// The level named `name` (as [`Level::name`] gives it).
    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL
            .into_iter()
            .find(|level| level.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether this CPU can run the level.
    pub fn available(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2Fma => avx2::supported(),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => avx512::supported(),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => avx512::supported_vnni(),
            #[cfg(not(target_arch = "x86_64"))]
            Level::Avx2Fma | Level::Avx512 | Level::Avx512Vnni => false,
        }
    }

    /// The widest level this CPU can run.
    pub fn detected() -> Level {
        Level::ALL
            .into_iter()
            .rev()
            .find(|level| level.available())
            .unwrap_or(Level::Scalar)
    }
}

/// A level was asked for that this CPU cannot run, or that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LevelError {
    /// The CPU lacks the level's instructions.
    #[error("SIMD level `{}` is not available on this CPU (it has up to `{}`)", .0.name(), Level::detected().name())]
    Unavailable(Level),
    /// The name is not a level.
    #[error("unknown SIMD level `{0}`; expected one of: scalar, avx2, avx512, avx512vnni")]
    Unknown(String),
}

/// The environment variable that forces a level for the whole process.
pub const LEVEL_ENV: &str = "VORTEX_SIMD_LEVEL";

/// The distance functions of one level. Every function requires slices of equal length
/// (checked with `debug_assert!`; in release builds the shorter length is used).
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    /// The level these functions run at.
    pub level: Level,
    /// `Σ (aᵢ - bᵢ)²`.
    pub l2_squared: fn(&[f32], &[f32]) -> f32,
    /// `Σ aᵢ·bᵢ`.
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// `1 - Σaᵢbᵢ / (|a|·|b|)`, 1 when either norm is zero.
    pub cosine_distance: fn(&[f32], &[f32]) -> f32,
    /// `Σ aᵢ·bᵢ` over `i8` codes, exact up to 131,071 dimensions.
    pub dot_i8: fn(&[i8], &[i8]) -> i32,
    /// `Σ (aᵢ - bᵢ)²` over `i8` codes, exact up to 66,052 dimensions (VBP allows 65,536),
    /// saturating beyond.
    pub l2_squared_i8: fn(&[i8], &[i8]) -> u32,
    /// `Σ aᵢ·bᵢ` over codes in `-127..=127` (what the quantizer makes), exact up to a
    /// million dimensions; twice the width of `dot_i8` per AVX2 instruction. A component of
    /// -128 gives an unspecified (but safe) result.
    pub dot_i8_narrow: fn(&[i8], &[i8]) -> i32,
}

impl Kernels {
    /// The kernels of `level`, if this CPU can run it.
    pub fn for_level(level: Level) -> Result<Kernels, LevelError> {
        if !level.available() {
            return Err(LevelError::Unavailable(level));
        }
        Ok(match level {
            Level::Scalar => SCALAR,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2Fma => Kernels {
                level,
                l2_squared: avx2::l2_squared,
                dot: avx2::dot,
                cosine_distance: avx2::cosine_distance,
                dot_i8: avx2::dot_i8,
                l2_squared_i8: avx2::l2_squared_i8,
                dot_i8_narrow: avx2::dot_i8_narrow,
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => Kernels {
                level,
                l2_squared: avx512::l2_squared,
                dot: avx512::dot,
                cosine_distance: avx512::cosine_distance,
                dot_i8: avx512::dot_i8,
                l2_squared_i8: avx512::l2_squared_i8,
                dot_i8_narrow: avx512::dot_i8_narrow,
            },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => Kernels {
                level,
                l2_squared: avx512::l2_squared,
                dot: avx512::dot,
                cosine_distance: avx512::cosine_distance,
                dot_i8: avx512::dot_i8_vnni,
                l2_squared_i8: avx512::l2_squared_i8,
                dot_i8_narrow: avx512::dot_i8_narrow_vnni,
            },
            #[cfg(not(target_arch = "x86_64"))]
            Level::Avx2Fma | Level::Avx512 | Level::Avx512Vnni => {
                return Err(LevelError::Unavailable(level))
            }
        })
    }

    /// The level `VORTEX_SIMD_LEVEL` asks for, if set: `Ok(None)` when unset.
    pub fn level_from_env() -> Result<Option<Level>, LevelError> {
        match std::env::var(LEVEL_ENV) {
            Ok(name) => {
                let level = Level::from_name(&name).ok_or(LevelError::Unknown(name))?;
                if level.available() {
                    Ok(Some(level))
                } else {
                    Err(LevelError::Unavailable(level))
                }
            }
            Err(_) => Ok(None),
        }
    }

    /// The process's kernels, chosen on first use: `VORTEX_SIMD_LEVEL` if it is set and
    /// valid, else the widest level the CPU has. A bad `VORTEX_SIMD_LEVEL` is reported once
    /// on stderr and ignored (a distance function cannot fail).
    pub fn active() -> &'static Kernels {
        static ACTIVE: OnceLock<Kernels> = OnceLock::new();
        ACTIVE.get_or_init(|| {
            let level = match Kernels::level_from_env() {
                Ok(Some(level)) => level,
                Ok(None) => Level::detected(),
                Err(error) => {
                    eprintln!("{LEVEL_ENV}: {error}; using `{}`", Level::detected().name());
                    Level::detected()
                }
            };
            Kernels::for_level(level).unwrap_or(SCALAR)
        })
    }
}

/// The portable kernels, which every CPU runs.
const SCALAR: Kernels = Kernels {
    level: Level::Scalar,
    l2_squared: scalar::l2_squared,
    dot: scalar::dot,
    cosine_distance: scalar::cosine_distance,
    dot_i8: scalar::dot_i8,
    l2_squared_i8: scalar::l2_squared_i8,
    dot_i8_narrow: scalar::dot_i8,
};

/// `1 - dot / (|a|·|b|)`, 1 when a norm is zero, clamped to [0, 2] against rounding. The
/// norms are square-rooted before they are multiplied, so that tiny or huge vectors do not
/// underflow or overflow the product.
#[inline]
fn cosine_from_parts(dot: f32, norm_a_squared: f32, norm_b_squared: f32) -> f32 {
    let denominator = norm_a_squared.sqrt() * norm_b_squared.sqrt();
    if denominator > 0.0 && denominator.is_finite() {
        (1.0 - dot / denominator).clamp(0.0, 2.0)
    } else {
        1.0
    }
}

/// Portable kernels.
mod scalar {
    use super::cosine_from_parts;

    /// Independent partial sums: enough for the baseline target's SSE2 to vectorize the
    /// loop (two 4-lane registers) instead of one dependent addition per element.
    const PARTIALS: usize = 8;

    /// `Σ term(aᵢ, bᵢ)` in `PARTIALS` interleaved partial sums, then the tail.
    #[inline(always)]
    fn sum_terms(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f32) -> f32 {
        let length = a.len().min(b.len());
        let (a, b) = (&a[..length], &b[..length]);
        let mut partials = [0.0f32; PARTIALS];
        let mut chunks_a = a.chunks_exact(PARTIALS);
        let mut chunks_b = b.chunks_exact(PARTIALS);
        for (chunk_a, chunk_b) in (&mut chunks_a).zip(&mut chunks_b) {
            for lane in 0..PARTIALS {
                partials[lane] += term(chunk_a[lane], chunk_b[lane]);
            }
        }
        let tail: f32 = chunks_a
            .remainder()
            .iter()
            .zip(chunks_b.remainder())
            .map(|(&x, &y)| term(x, y))
            .sum();
        partials.iter().sum::<f32>() + tail
    }

    /// `Σ (aᵢ - bᵢ)²`.
    pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        sum_terms(a, b, |x, y| {
            let difference = x - y;
            difference * difference
        })
    }

    /// `Σ aᵢ·bᵢ`.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        sum_terms(a, b, |x, y| x * y)
    }

    /// `1 - cos(a, b)`, the three sums in one pass of partial sums.
    pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        let length = a.len().min(b.len());
        let (a, b) = (&a[..length], &b[..length]);
        let mut dots = [0.0f32; PARTIALS];
        let mut norms_a = [0.0f32; PARTIALS];
        let mut norms_b = [0.0f32; PARTIALS];
        let mut chunks_a = a.chunks_exact(PARTIALS);
        let mut chunks_b = b.chunks_exact(PARTIALS);
        for (chunk_a, chunk_b) in (&mut chunks_a).zip(&mut chunks_b) {
            for lane in 0..PARTIALS {
                let (x, y) = (chunk_a[lane], chunk_b[lane]);
                dots[lane] += x * y;
                norms_a[lane] += x * x;
                norms_b[lane] += y * y;
            }
        }
        let (mut dot, mut aa, mut bb) = (
            dots.iter().sum::<f32>(),
            norms_a.iter().sum::<f32>(),
            norms_b.iter().sum::<f32>(),
        );
        for (&x, &y) in chunks_a.remainder().iter().zip(chunks_b.remainder()) {
            dot += x * y;
            aa += x * x;
            bb += y * y;
        }
        cosine_from_parts(dot, aa, bb)
    }

    /// `Σ aᵢ·bᵢ` over `i8`, exact.
    pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        debug_assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum()
    }

    /// `Σ (aᵢ - bᵢ)²` over `i8`, exact up to 66,052 dimensions, saturating beyond.
    pub fn l2_squared_i8(a: &[i8], b: &[i8]) -> u32 {
        debug_assert_eq!(a.len(), b.len());
        let total: u64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| {
                let difference = i64::from(x) - i64::from(y);
                (difference * difference) as u64
            })
            .sum();
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// AVX2 + FMA kernels. The module is private because its functions are safe to call only
/// on a CPU with AVX2 and FMA: [`Kernels::for_level`] is the one place that hands them out,
/// after checking; each also carries a debug assertion.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::cosine_from_parts;
    use std::arch::x86_64::*;

    /// Floats per 256-bit register.
    const LANES: usize = 8;
    /// Floats per loop step: four independent accumulators hide the FMA latency.
    const STEP: usize = 4 * LANES;

    pub(super) fn supported() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// `Σ (aᵢ - bᵢ)²`.
    pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
        debug_assert!(supported());
        // SAFETY: these kernels are only handed out by `Kernels::for_level` after it checked
        // that the CPU has AVX2 and FMA.
        unsafe { l2_squared_avx2(a, b) }
    }

    /// `Σ aᵢ·bᵢ`.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        debug_assert!(supported());
        // SAFETY: as in `l2_squared`.
        unsafe { dot_avx2(a, b) }
    }

    /// `1 - cos(a, b)`.
    pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
        debug_assert!(supported());
        // SAFETY: as in `l2_squared`.
        unsafe { cosine_avx2(a, b) }
    }

    /// `Σ aᵢ·bᵢ` over `i8`, exact.
    pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        debug_assert!(supported());
        // SAFETY: as in `l2_squared`.
        unsafe { dot_i8_avx2(a, b) }
    }

    /// `Σ (aᵢ - bᵢ)²` over `i8`, exact.
    pub fn l2_squared_i8(a: &[i8], b: &[i8]) -> u32 {
        debug_assert!(supported());
        // SAFETY: as in `l2_squared`.
        unsafe { l2_squared_i8_avx2(a, b) }
    }

    /// `Σ aᵢ·bᵢ` over codes in `-127..=127`.
    pub fn dot_i8_narrow(a: &[i8], b: &[i8]) -> i32 {
        debug_assert!(supported());
        // SAFETY: as in `l2_squared`.
        unsafe { dot_i8_narrow_avx2(a, b) }
    }

    /// Eight floats of `values` from `offset` (bounds-checked; no alignment needed).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(values: &[f32], offset: usize) -> __m256 {
        let lanes = &values[offset..offset + LANES];
        // SAFETY: `lanes` is 8 readable floats; `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_ps(lanes.as_ptr()) }
    }

    /// Sixteen `i8` of `values` from `offset`, widened to `i16`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_i8_as_i16(values: &[i8], offset: usize) -> __m256i {
        let bytes = &values[offset..offset + 16];
        // SAFETY: `bytes` is 16 readable bytes; `loadu` has no alignment requirement.
        let packed = unsafe { _mm_loadu_si128(bytes.as_ptr().cast::<__m128i>()) };
        _mm256_cvtepi8_epi16(packed)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn horizontal_sum(value: __m256) -> f32 {
        let folded = _mm_add_ps(
            _mm256_castps256_ps128(value),
            _mm256_extractf128_ps::<1>(value),
        );
        let folded = _mm_add_ps(folded, _mm_movehl_ps(folded, folded));
        let folded = _mm_add_ss(folded, _mm_shuffle_ps::<0b01>(folded, folded));
        _mm_cvtss_f32(folded)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn horizontal_sum_i32(value: __m256i) -> i32 {
        let folded = _mm_add_epi32(
            _mm256_castsi256_si128(value),
            _mm256_extracti128_si256::<1>(value),
        );
        let folded = _mm_add_epi32(folded, _mm_shuffle_epi32::<0b01_00_11_10>(folded));
        let folded = _mm_add_epi32(folded, _mm_shuffle_epi32::<0b10_11_00_01>(folded));
        _mm_cvtsi128_si32(folded)
    }

    #[target_feature(enable = "avx2,fma")]
    fn l2_squared_avx2(a: &[f32], b: &[f32]) -> f32 {
        let length = a.len().min(b.len());
        let mut sums = [_mm256_setzero_ps(); 4];
        let mut offset = 0;
        while offset + STEP <= length {
            for (index, sum) in sums.iter_mut().enumerate() {
                let at = offset + index * LANES;
                let difference = _mm256_sub_ps(load(a, at), load(b, at));
                *sum = _mm256_fmadd_ps(difference, difference, *sum);
            }
            offset += STEP;
        }
        while offset + LANES <= length {
            let difference = _mm256_sub_ps(load(a, offset), load(b, offset));
            sums[0] = _mm256_fmadd_ps(difference, difference, sums[0]);
            offset += LANES;
        }
        let total = _mm256_add_ps(
            _mm256_add_ps(sums[0], sums[1]),
            _mm256_add_ps(sums[2], sums[3]),
        );
        horizontal_sum(total) + super::scalar::l2_squared(&a[offset..length], &b[offset..length])
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let length = a.len().min(b.len());
        let mut sums = [_mm256_setzero_ps(); 4];
        let mut offset = 0;
        while offset + STEP <= length {
            for (index, sum) in sums.iter_mut().enumerate() {
                let at = offset + index * LANES;
                *sum = _mm256_fmadd_ps(load(a, at), load(b, at), *sum);
            }
            offset += STEP;
        }
        while offset + LANES <= length {
            sums[0] = _mm256_fmadd_ps(load(a, offset), load(b, offset), sums[0]);
            offset += LANES;
        }
        let total = _mm256_add_ps(
            _mm256_add_ps(sums[0], sums[1]),
            _mm256_add_ps(sums[2], sums[3]),
        );
        horizontal_sum(total) + super::scalar::dot(&a[offset..length], &b[offset..length])
    }

    #[target_feature(enable = "avx2,fma")]
    fn cosine_avx2(a: &[f32], b: &[f32]) -> f32 {
        let length = a.len().min(b.len());
        // Two accumulators per sum: six registers in flight.
        let mut dots = [_mm256_setzero_ps(); 2];
        let mut norms_a = [_mm256_setzero_ps(); 2];
        let mut norms_b = [_mm256_setzero_ps(); 2];
        let mut offset = 0;
        while offset + 2 * LANES <= length {
            for index in 0..2 {
                let at = offset + index * LANES;
                let (x, y) = (load(a, at), load(b, at));
                dots[index] = _mm256_fmadd_ps(x, y, dots[index]);
                norms_a[index] = _mm256_fmadd_ps(x, x, norms_a[index]);
                norms_b[index] = _mm256_fmadd_ps(y, y, norms_b[index]);
            }
            offset += 2 * LANES;
        }
        while offset + LANES <= length {
            let (x, y) = (load(a, offset), load(b, offset));
            dots[0] = _mm256_fmadd_ps(x, y, dots[0]);
            norms_a[0] = _mm256_fmadd_ps(x, x, norms_a[0]);
            norms_b[0] = _mm256_fmadd_ps(y, y, norms_b[0]);
            offset += LANES;
        }
        let mut dot = horizontal_sum(_mm256_add_ps(dots[0], dots[1]));
        let mut aa = horizontal_sum(_mm256_add_ps(norms_a[0], norms_a[1]));
        let mut bb = horizontal_sum(_mm256_add_ps(norms_b[0], norms_b[1]));
        for (x, y) in a[offset..length].iter().zip(&b[offset..length]) {
            dot += x * y;
            aa += x * x;
            bb += y * y;
        }
        cosine_from_parts(dot, aa, bb)
    }

    #[target_feature(enable = "avx2")]
    fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
        let length = a.len().min(b.len());
        // Each `madd` lane adds two products of at most 2^14: 2^15 per step, so an i32
        // lane holds 2^16 steps (a million dimensions) without overflow.
        let mut sums = [_mm256_setzero_si256(); 2];
        let mut offset = 0;
        while offset + 32 <= length {
            for (index, sum) in sums.iter_mut().enumerate() {
                let at = offset + index * 16;
                let products = _mm256_madd_epi16(load_i8_as_i16(a, at), load_i8_as_i16(b, at));
                *sum = _mm256_add_epi32(*sum, products);
            }
            offset += 32;
        }
        while offset + 16 <= length {
            let products = _mm256_madd_epi16(load_i8_as_i16(a, offset), load_i8_as_i16(b, offset));
            sums[0] = _mm256_add_epi32(sums[0], products);
            offset += 16;
        }
        horizontal_sum_i32(_mm256_add_epi32(sums[0], sums[1]))
            + super::scalar::dot_i8(&a[offset..length], &b[offset..length])
    }

    /// Thirty-two `i8` of `values` from `offset`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_i8x32(values: &[i8], offset: usize) -> __m256i {
        let bytes = &values[offset..offset + 32];
        // SAFETY: `bytes` is 32 readable bytes; `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_si256(bytes.as_ptr().cast::<__m256i>()) }
    }

    #[target_feature(enable = "avx2")]
    fn dot_i8_narrow_avx2(a: &[i8], b: &[i8]) -> i32 {
        let length = a.len().min(b.len());
        // `maddubs` multiplies unsigned by signed bytes: |a| times b with a's sign moved onto
        // it. With every code within ±127 each 16-bit lane adds two products of at most
        // 16,129 (no saturation), and `madd` by ones widens pairs of lanes to 32 bits: an
        // i32 lane grows by at most 64,516 per 32 bytes, so a million dimensions fit.
        let ones = _mm256_set1_epi16(1);
        let mut sums = [_mm256_setzero_si256(); 2];
        let mut offset = 0;
        while offset + 64 <= length {
            for (index, sum) in sums.iter_mut().enumerate() {
                let at = offset + index * 32;
                let (x, y) = (load_i8x32(a, at), load_i8x32(b, at));
                let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
                *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(pairs, ones));
            }
            offset += 64;
        }
        while offset + 32 <= length {
            let (x, y) = (load_i8x32(a, offset), load_i8x32(b, offset));
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
            sums[0] = _mm256_add_epi32(sums[0], _mm256_madd_epi16(pairs, ones));
            offset += 32;
        }
        horizontal_sum_i32(_mm256_add_epi32(sums[0], sums[1]))
            + super::scalar::dot_i8(&a[offset..length], &b[offset..length])
    }

    #[target_feature(enable = "avx2")]
    fn l2_squared_i8_avx2(a: &[i8], b: &[i8]) -> u32 {
        let length = a.len().min(b.len());
        // A difference is at most 255 in magnitude: each `madd` lane adds two squares of at
        // most 65,025 a step. Drained every 2,048 steps, a lane stays under 2.7e8 and the
        // eight lanes' sum under i32::MAX (2,048 × 130,050 × 8 = 2,130,739,200).
        const DRAIN_STEPS: usize = 2048;
        let mut total: u64 = 0;
        let mut sum = _mm256_setzero_si256();
        let mut steps = 0;
        let mut offset = 0;
        while offset + 16 <= length {
            let difference = _mm256_sub_epi16(load_i8_as_i16(a, offset), load_i8_as_i16(b, offset));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(difference, difference));
            offset += 16;
            steps += 1;
            if steps == DRAIN_STEPS {
                total += u64::from(horizontal_sum_i32(sum) as u32);
                sum = _mm256_setzero_si256();
                steps = 0;
            }
        }
        total += u64::from(horizontal_sum_i32(sum) as u32);
        total += u64::from(super::scalar::l2_squared_i8(
            &a[offset..length],
            &b[offset..length],
        ));
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// AVX-512 kernels (F and BW; VNNI for the `*_vnni` ones). Private for the reason the AVX2
/// module is: [`Kernels::for_level`] hands them out only after checking the CPU.
///
/// The `f32` tails (the last `n mod 16` floats) are read with masked loads: the masked-off
/// lanes are neither read nor faulted on, so a load never reaches past the slice. The `i8`
/// tails go to the scalar kernels.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::cosine_from_parts;
    use std::arch::x86_64::*;

    /// Floats per 512-bit register.
    const LANES: usize = 16;
    /// Floats per loop step: four independent accumulators hide the FMA latency.
    const STEP: usize = 4 * LANES;

    pub(super) fn supported() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }

    pub(super) fn supported_vnni() -> bool {
        supported() && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    /// `Σ (aᵢ - bᵢ)²`.
    pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
        debug_assert!(supported());
        // SAFETY: these kernels are only handed out by `Kernels::for_level` after it checked
        // that the CPU has AVX-512 F and BW.
        unsafe { l2_squared_avx512(a, b) }
    }

    /// `Σ aᵢ·bᵢ`.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        debug_assert!(supported());
        // SAFETY: as in `l2_squared`.
        unsafe { dot_avx512(a, b) }
    }

    /// `1 - cos(a, b)`.
    pub fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
        debug_assert!(supported());
        // SAFETY: as in `l2_squared`.
        unsafe { cosine_avx512(a, b) }
    }

    /// `Σ aᵢ·bᵢ` over `i8`, exact.
    pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        debug_assert!(supported());
        // SAFETY: as in `l2_squared`.
        unsafe { dot_i8_avx512(a, b) }
    }

    /// `Σ aᵢ·bᵢ` over `i8`, exact, on VNNI.
    pub fn dot_i8_vnni(a: &[i8], b: &[i8]) -> i32 {
        debug_assert!(supported_vnni());
        // SAFETY: handed out by `Kernels::for_level` only after it checked for AVX-512 F,
        // BW and VNNI.
        unsafe { dot_i8_vnni_avx512(a, b) }
    }

    /// `Σ (aᵢ - bᵢ)²` over `i8`, exact.
    pub fn l2_squared_i8(a: &[i8], b: &[i8]) -> u32 {
        debug_assert!(supported());
        // SAFETY: as in `l2_squared`.
        unsafe { l2_squared_i8_avx512(a, b) }
    }

    /// `Σ aᵢ·bᵢ` over codes in `-127..=127`.
    pub fn dot_i8_narrow(a: &[i8], b: &[i8]) -> i32 {
        debug_assert!(supported());
        // SAFETY: as in `l2_squared`.
        unsafe { dot_i8_narrow_avx512(a, b) }
    }

    /// `Σ aᵢ·bᵢ` over codes in `-127..=127`, on VNNI.
    pub fn dot_i8_narrow_vnni(a: &[i8], b: &[i8]) -> i32 {
        debug_assert!(supported_vnni());
        // SAFETY: as in `dot_i8_vnni`.
        unsafe { dot_i8_narrow_vnni_avx512(a, b) }
    }

    /// Sixteen floats of `values` from `offset` (bounds-checked; no alignment needed).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(values: &[f32], offset: usize) -> __m512 {
        let lanes = &values[offset..offset + LANES];
        // SAFETY: `lanes` is 16 readable floats; `loadu` has no alignment requirement.
        unsafe { _mm512_loadu_ps(lanes.as_ptr()) }
    }

    /// The floats of `values` from `offset` to its end (1 to 15 of them), the other lanes
    /// zero.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_tail(values: &[f32], offset: usize) -> __m512 {
        let tail = &values[offset..];
        debug_assert!(!tail.is_empty() && tail.len() < LANES);
        let mask: __mmask16 = (1u16 << tail.len()) - 1;
        // SAFETY: the mask selects exactly `tail.len()` lanes, all inside `tail`; AVX-512
        // neither reads nor faults on masked-off lanes, and `loadu` needs no alignment.
        unsafe { _mm512_maskz_loadu_ps(mask, tail.as_ptr()) }
    }

    /// Thirty-two `i8` of `values` from `offset`, widened to `i16`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn load_i8_as_i16(values: &[i8], offset: usize) -> __m512i {
        let bytes = &values[offset..offset + 32];
        // SAFETY: `bytes` is 32 readable bytes; `loadu` has no alignment requirement.
        let packed = unsafe { _mm256_loadu_si256(bytes.as_ptr().cast::<__m256i>()) };
        _mm512_cvtepi8_epi16(packed)
    }

    /// Sixty-four `i8` of `values` from `offset`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_i8x64(values: &[i8], offset: usize) -> __m512i {
        let bytes = &values[offset..offset + 64];
        // SAFETY: `bytes` is 64 readable bytes; `loadu` has no alignment requirement.
        unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) }
    }

    /// `(|x|, y with x's sign)`: the unsigned and signed operands whose byte products are
    /// `x·y` (0 where x is 0), for `vpmaddubsw` and `vpdpbusd`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn signed_operands(x: __m512i, y: __m512i) -> (__m512i, __m512i) {
        let negative = _mm512_movepi8_mask(x);
        let y_signed = _mm512_mask_sub_epi8(y, negative, _mm512_setzero_si512(), y);
        (_mm512_abs_epi8(x), y_signed)
    }

    #[target_feature(enable = "avx512f")]
    fn l2_squared_avx512(a: &[f32], b: &[f32]) -> f32 {
        let length = a.len().min(b.len());
        let (a, b) = (&a[..length], &b[..length]);
        let mut sums = [_mm512_setzero_ps(); 4];
        let mut offset = 0;
        while offset + STEP <= length {
            for (index, sum) in sums.iter_mut().enumerate() {
                let at = offset + index * LANES;
                let difference = _mm512_sub_ps(load(a, at), load(b, at));
                *sum = _mm512_fmadd_ps(difference, difference, *sum);
            }
            offset += STEP;
        }
        while offset + LANES <= length {
            let difference = _mm512_sub_ps(load(a, offset), load(b, offset));
            sums[0] = _mm512_fmadd_ps(difference, difference, sums[0]);
            offset += LANES;
        }
        if offset < length {
            let difference = _mm512_sub_ps(load_tail(a, offset), load_tail(b, offset));
            sums[1] = _mm512_fmadd_ps(difference, difference, sums[1]);
        }
        let total = _mm512_add_ps(
            _mm512_add_ps(sums[0], sums[1]),
            _mm512_add_ps(sums[2], sums[3]),
        );
        _mm512_reduce_add_ps(total)
    }

    #[target_feature(enable = "avx512f")]
    fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let length = a.len().min(b.len());
        let (a, b) = (&a[..length], &b[..length]);
        let mut sums = [_mm512_setzero_ps(); 4];
        let mut offset = 0;
        while offset + STEP <= length {
            for (index, sum) in sums.iter_mut().enumerate() {
                let at = offset + index * LANES;
                *sum = _mm512_fmadd_ps(load(a, at), load(b, at), *sum);
            }
            offset += STEP;
        }
        while offset + LANES <= length {
            sums[0] = _mm512_fmadd_ps(load(a, offset), load(b, offset), sums[0]);
            offset += LANES;
        }
        if offset < length {
            sums[1] = _mm512_fmadd_ps(load_tail(a, offset), load_tail(b, offset), sums[1]);
        }
        let total = _mm512_add_ps(
            _mm512_add_ps(sums[0], sums[1]),
            _mm512_add_ps(sums[2], sums[3]),
        );
        _mm512_reduce_add_ps(total)
    }

    #[target_feature(enable = "avx512f")]
    fn cosine_avx512(a: &[f32], b: &[f32]) -> f32 {
        let length = a.len().min(b.len());
        let (a, b) = (&a[..length], &b[..length]);
        // Two accumulators per sum: six registers in flight.
        let mut dots = [_mm512_setzero_ps(); 2];
        let mut norms_a = [_mm512_setzero_ps(); 2];
        let mut norms_b = [_mm512_setzero_ps(); 2];
        let mut offset = 0;
        while offset + 2 * LANES <= length {
            for index in 0..2 {
                let at = offset + index * LANES;
                let (x, y) = (load(a, at), load(b, at));
                dots[index] = _mm512_fmadd_ps(x, y, dots[index]);
                norms_a[index] = _mm512_fmadd_ps(x, x, norms_a[index]);
                norms_b[index] = _mm512_fmadd_ps(y, y, norms_b[index]);
            }
            offset += 2 * LANES;
        }
        let mut step = |x: __m512, y: __m512| {
            dots[0] = _mm512_fmadd_ps(x, y, dots[0]);
            norms_a[0] = _mm512_fmadd_ps(x, x, norms_a[0]);
            norms_b[0] = _mm512_fmadd_ps(y, y, norms_b[0]);
        };
        while offset + LANES <= length {
            step(load(a, offset), load(b, offset));
            offset += LANES;
        }
        if offset < length {
            step(load_tail(a, offset), load_tail(b, offset));
        }
        cosine_from_parts(
            _mm512_reduce_add_ps(_mm512_add_ps(dots[0], dots[1])),
            _mm512_reduce_add_ps(_mm512_add_ps(norms_a[0], norms_a[1])),
            _mm512_reduce_add_ps(_mm512_add_ps(norms_b[0], norms_b[1])),
        )
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    fn dot_i8_avx512(a: &[i8], b: &[i8]) -> i32 {
        let length = a.len().min(b.len());
        // Each `madd` lane adds two products of at most 2^14 a step: 2^15, so an i32 lane
        // holds just under 2^16 steps (two million dimensions) without overflow; the sum
        // itself stays within i32 up to 131,071 dimensions, twice VBP's 65,536.
        let mut sums = [_mm512_setzero_si512(); 2];
        let mut offset = 0;
        while offset + 64 <= length {
            for (index, sum) in sums.iter_mut().enumerate() {
                let at = offset + index * 32;
                let products = _mm512_madd_epi16(load_i8_as_i16(a, at), load_i8_as_i16(b, at));
                *sum = _mm512_add_epi32(*sum, products);
            }
            offset += 64;
        }
        while offset + 32 <= length {
            let products = _mm512_madd_epi16(load_i8_as_i16(a, offset), load_i8_as_i16(b, offset));
            sums[0] = _mm512_add_epi32(sums[0], products);
            offset += 32;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(sums[0], sums[1]))
            + super::scalar::dot_i8(&a[offset..length], &b[offset..length])
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn dot_i8_vnni_avx512(a: &[i8], b: &[i8]) -> i32 {
        let length = a.len().min(b.len());
        // `vpdpwssd` adds two i16 products per i32 lane in one instruction: the same bound
        // as `dot_i8_avx512`.
        let mut sums = [_mm512_setzero_si512(); 2];
        let mut offset = 0;
        while offset + 64 <= length {
            for (index, sum) in sums.iter_mut().enumerate() {
                let at = offset + index * 32;
                *sum = _mm512_dpwssd_epi32(*sum, load_i8_as_i16(a, at), load_i8_as_i16(b, at));
            }
            offset += 64;
        }
        while offset + 32 <= length {
            sums[0] = _mm512_dpwssd_epi32(
                sums[0],
                load_i8_as_i16(a, offset),
                load_i8_as_i16(b, offset),
            );
            offset += 32;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(sums[0], sums[1]))
            + super::scalar::dot_i8(&a[offset..length], &b[offset..length])
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    fn dot_i8_narrow_avx512(a: &[i8], b: &[i8]) -> i32 {
        let length = a.len().min(b.len());
        // As on AVX2: `maddubs` of |x| and y-with-x's-sign adds two products of at most
        // 16,129 per 16-bit lane (no saturation within ±127), `madd` by ones widens pairs:
        // an i32 lane grows by at most 64,516 per 64 bytes, so two million dimensions fit.
        let ones = _mm512_set1_epi16(1);
        let mut sums = [_mm512_setzero_si512(); 2];
        let mut offset = 0;
        let step = |sum: __m512i, at: usize| {
            let (x, y) = signed_operands(load_i8x64(a, at), load_i8x64(b, at));
            _mm512_add_epi32(sum, _mm512_madd_epi16(_mm512_maddubs_epi16(x, y), ones))
        };
        while offset + 128 <= length {
            sums[0] = step(sums[0], offset);
            sums[1] = step(sums[1], offset + 64);
            offset += 128;
        }
        while offset + 64 <= length {
            sums[0] = step(sums[0], offset);
            offset += 64;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(sums[0], sums[1]))
            + super::scalar::dot_i8(&a[offset..length], &b[offset..length])
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn dot_i8_narrow_vnni_avx512(a: &[i8], b: &[i8]) -> i32 {
        let length = a.len().min(b.len());
        // `vpdpbusd` adds four products of |x| (unsigned) and y-with-x's-sign per i32 lane:
        // at most 4 × 16,129 = 64,516 per 64 bytes, so two million dimensions fit.
        let mut sums = [_mm512_setzero_si512(); 2];
        let mut offset = 0;
        let step = |sum: __m512i, at: usize| {
            let (x, y) = signed_operands(load_i8x64(a, at), load_i8x64(b, at));
            _mm512_dpbusd_epi32(sum, x, y)
        };
        while offset + 128 <= length {
            sums[0] = step(sums[0], offset);
            sums[1] = step(sums[1], offset + 64);
            offset += 128;
        }
        while offset + 64 <= length {
            sums[0] = step(sums[0], offset);
            offset += 64;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(sums[0], sums[1]))
            + super::scalar::dot_i8(&a[offset..length], &b[offset..length])
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    fn l2_squared_i8_avx512(a: &[i8], b: &[i8]) -> u32 {
        let length = a.len().min(b.len());
        // A difference is at most 255 in magnitude: each `madd` lane adds two squares of at
        // most 65,025 a step. Drained every 1,024 steps, a lane stays under 1.4e8 and the
        // sixteen lanes' sum under i32::MAX (1,024 × 130,050 × 16 = 2,130,739,200).
        const DRAIN_STEPS: usize = 1024;
        let mut total: u64 = 0;
        let mut sum = _mm512_setzero_si512();
        let mut steps = 0;
        let mut offset = 0;
        while offset + 32 <= length {
            let difference = _mm512_sub_epi16(load_i8_as_i16(a, offset), load_i8_as_i16(b, offset));
            sum = _mm512_add_epi32(sum, _mm512_madd_epi16(difference, difference));
            offset += 32;
            steps += 1;
            if steps == DRAIN_STEPS {
                total += u64::from(_mm512_reduce_add_epi32(sum) as u32);
                sum = _mm512_setzero_si512();
                steps = 0;
            }
        }
        total += u64::from(_mm512_reduce_add_epi32(sum) as u32);
        total += u64::from(super::scalar::l2_squared_i8(
            &a[offset..length],
            &b[offset..length],
        ));
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

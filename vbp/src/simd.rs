//! The loop that touches every float of a frame's vectors: the check that each is finite,
//! dispatched at run time (explicit AVX2 where the CPU has it, a portable loop otherwise).
//!
//! A float is NaN or infinite exactly when its exponent bits are all ones; adding one unit
//! at the exponent's lowest bit then carries into the sign bit. The loop ORs
//! `(bits & EXPONENT) + EXPONENT_ONE` over the slice and tests the sign bit once at the end,
//! so it has no branch per value. (The compiler's own vectorization of the portable loop
//! for AVX2 gathered lanes across chunks and was slower than SSE2; hence the intrinsics.)
//!
//! The frame's other full pass, the CRC32C, is in [`crate::checksum`].

/// A float's exponent bits.
const EXPONENT: u32 = 0x7F80_0000;
/// One unit at the exponent's lowest bit.
const EXPONENT_ONE: u32 = 0x0080_0000;
/// The sign bit, where the carry of an all-ones exponent lands.
const SIGN: u32 = 0x8000_0000;

/// Whether every value is finite (no NaN, no infinity).
pub fn all_finite(values: &[f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 was just detected.
            return unsafe { x86::all_finite_avx2(values) };
        }
    }
    all_finite_lanes(values)
}

/// The portable loop (SSE2 vectorizes it; AVX2 machines take the explicit kernel).
fn all_finite_lanes(values: &[f32]) -> bool {
    let any = values.iter().fold(0u32, |any, value| {
        any | ((value.to_bits() & EXPONENT) + EXPONENT_ONE)
    });
    any & SIGN == 0
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{EXPONENT, EXPONENT_ONE};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn all_finite_avx2(values: &[f32]) -> bool {
        let exponent = _mm256_set1_epi32(EXPONENT as i32);
        let one = _mm256_set1_epi32(EXPONENT_ONE as i32);
        // Four independent accumulators of eight lanes: 32 floats a step.
        let mut any = [_mm256_setzero_si256(); 4];
        let mut chunks = values.chunks_exact(32);
        for chunk in &mut chunks {
            for (index, accumulator) in any.iter_mut().enumerate() {
                let lanes = &chunk[index * 8..index * 8 + 8];
                // SAFETY: `lanes` is 8 readable floats (32 bytes); `loadu` needs no alignment.
                let bits = unsafe { _mm256_loadu_si256(lanes.as_ptr().cast::<__m256i>()) };
                let carried = _mm256_add_epi32(_mm256_and_si256(bits, exponent), one);
                *accumulator = _mm256_or_si256(*accumulator, carried);
            }
        }
        let folded = _mm256_or_si256(
            _mm256_or_si256(any[0], any[1]),
            _mm256_or_si256(any[2], any[3]),
        );
        // A set sign bit in any lane (`SIGN`) means a value that is not finite.
        let vector_ok = _mm256_movemask_ps(_mm256_castsi256_ps(folded)) == 0;
        vector_ok && super::all_finite_lanes(chunks.remainder())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_checks_find_every_bad_value_at_every_position() {
        let bad = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0xFFFF_FFFF),
        ];
        let good = [
            0.0,
            -0.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x7F7F_FFFF),
            1.5,
        ];
        for length in 0..70usize {
            let mut values: Vec<f32> = (0..length).map(|index| good[index % good.len()]).collect();
            assert!(all_finite(&values));
            assert!(all_finite_lanes(&values));
            for position in 0..length {
                for &value in &bad {
                    let kept = values[position];
                    values[position] = value;
                    assert!(!all_finite(&values), "{value} at {position} of {length}");
                    assert!(!all_finite_lanes(&values));
                    values[position] = kept;
                }
            }
        }
    }
}

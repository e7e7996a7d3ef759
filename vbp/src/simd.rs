//! The two loops that touch every byte of a frame: the CRC32C checksum and the check that
//! every float of a vector is finite. Both run at run-time-dispatched SIMD width.
//!
//! **CRC32C.** The `crc32` instruction (what the `crc32c` crate uses) does 8 bytes per
//! instruction and, even three streams wide, 8 bytes a cycle at best. On CPUs with
//! VPCLMULQDQ (AVX2 width or wider) the frame is instead *folded*: four 256-bit
//! accumulators each hold two 128-bit lanes of the message, and every step multiplies them
//! forward (carry-less) by `x^1024` modulo the polynomial and XORs in the next 128 bytes.
//! What is left (one 128-bit remainder, then the tail under 128 bytes) goes through the
//! `crc32` instruction. Other CPUs use the `crc32c` crate. The fold constants are
//! `x^e mod P` computed at compile time (`fold_key`), not copied tables.
//!
//! *Why the exponents are what they are* (reflected CRC, as CRC32C is): a 64-bit word `w`
//! loaded from the stream stands for `W(x) = Σ w_i x^(63-i)`, its first bit the highest
//! power. For such words `clmul(a, b)` yields the 128-bit `x·A(x)·B(x)`. A 128-bit lane
//! `C = H·x^64 + L` (H its first 8 bytes) moved forward by `D` bits is
//! `H·x^(D+64) + L·x^D`, so the lane's constants are `K_H = x^(D+63) mod P` and
//! `K_L = x^(D-1) mod P` (the `-1` pays for clmul's extra `x`). A register that ends up
//! holding `R` with nothing after it has the same CRC (initial value 0) as its 16 bytes, and
//! a CRC with initial state `s` equals the CRC with initial state 0 of the message whose
//! first four bytes are XORed with `s`.
//!
//! **Finite floats.** A float is NaN or infinite exactly when its exponent bits are all
//! ones; adding one unit at the exponent's lowest bit then carries into the sign bit. The
//! loop ORs `(bits & EXPONENT) + EXPONENT_ONE` over the slice and tests the sign bit once at
//! the end: explicit AVX2 (32 floats a step) where the CPU has it, else a portable loop.

/// CRC32C's polynomial without its `x^32` term, normal (not reflected) bit order.
const POLYNOMIAL: u32 = 0x1EDC_6F41;

/// `x^exponent mod P` as a 64-bit clmul operand: coefficient of `x^d` at bit `63 - d`.
const fn fold_key(exponent: u32) -> u64 {
    let mut remainder: u32 = 1;
    let mut step = 0;
    while step < exponent {
        let carry = remainder & 0x8000_0000 != 0;
        remainder <<= 1;
        if carry {
            remainder ^= POLYNOMIAL;
        }
        step += 1;
    }
    (remainder.reverse_bits() as u64) << 32
}

/// The constants that move a 128-bit lane forward by `distance_bits`: `[K_H, K_L]`.
const fn fold_keys(distance_bits: u32) -> [u64; 2] {
    [fold_key(distance_bits + 63), fold_key(distance_bits - 1)]
}

/// 256-bit accumulators in the wide loop.
const ACCUMULATORS: usize = 4;
/// 128-bit lanes in the wide loop.
const LANES: usize = 2 * ACCUMULATORS;
/// Bytes one step of the wide loop consumes.
const FOLD_BLOCK_BYTES: usize = 32 * ACCUMULATORS;
/// Below this length one stream of `crc32` instructions is as fast.
const FOLD_MIN_BYTES: usize = 2 * FOLD_BLOCK_BYTES;

/// Folding by one block.
const KEYS_BLOCK: [u64; 2] = fold_keys(FOLD_BLOCK_BYTES as u32 * 8);
/// Folding lane `j` of the last block onto the last lane: `(LANES - 1 - j) * 128` bits.
const KEYS_LANES: [[u64; 2]; LANES - 1] = {
    let mut keys = [[0u64; 2]; LANES - 1];
    let mut lane = 0;
    while lane < LANES - 1 {
        keys[lane] = fold_keys((LANES - 1 - lane) as u32 * 128);
        lane += 1;
    }
    keys
};

/// Continues a CRC32C: `crc` is a finished CRC32C of earlier bytes (0 to start), the
/// result the finished CRC32C of those bytes followed by `data`, as `crc32c::crc32c_append`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() >= FOLD_MIN_BYTES && fold_available() {
            // SAFETY: `fold_available` checked every target feature the function enables.
            return unsafe { x86::crc32c_fold(crc, data) };
        }
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: SSE4.2 was just detected.
            return unsafe { !x86::crc32c_words(!crc, data) };
        }
    }
    crc32c::crc32c_append(crc, data)
}

/// The portable path (the `crc32c` crate), for tests that compare the two.
pub fn crc32c_append_portable(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// Whether this CPU takes the folding path; read once, then cached by std.
pub fn fold_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("sse4.2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ACCUMULATORS, FOLD_BLOCK_BYTES, FOLD_MIN_BYTES, KEYS_BLOCK, KEYS_LANES, LANES};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have VPCLMULQDQ, PCLMULQDQ, AVX2 and SSE4.2; `data` at least
    /// `FOLD_MIN_BYTES` long.
    #[target_feature(enable = "vpclmulqdq,pclmulqdq,avx2,sse4.2")]
    pub(super) unsafe fn crc32c_fold(crc: u32, data: &[u8]) -> u32 {
        assert!(data.len() >= FOLD_MIN_BYTES);
        let blocks = data.len() / FOLD_BLOCK_BYTES;
        // Every offset passed is below blocks × 128 - 32, so each load is inside `data`.
        let load = |offset: usize| load_32(data, offset);
        // The initial state goes into the message's first four bytes (see the module docs).
        let state = _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, !crc as i32);
        let mut accumulators = [_mm256_setzero_si256(); ACCUMULATORS];
        for (index, accumulator) in accumulators.iter_mut().enumerate() {
            *accumulator = load(index * 32);
        }
        accumulators[0] = _mm256_xor_si256(accumulators[0], state);
        let keys = _mm256_set_epi64x(
            KEYS_BLOCK[1] as i64,
            KEYS_BLOCK[0] as i64,
            KEYS_BLOCK[1] as i64,
            KEYS_BLOCK[0] as i64,
        );
        for block in 1..blocks {
            let base = block * FOLD_BLOCK_BYTES;
            for (index, accumulator) in accumulators.iter_mut().enumerate() {
                let high = _mm256_clmulepi64_epi128::<0x00>(*accumulator, keys);
                let low = _mm256_clmulepi64_epi128::<0x11>(*accumulator, keys);
                *accumulator =
                    _mm256_xor_si256(_mm256_xor_si256(high, low), load(base + index * 32));
            }
        }
        // The lanes in stream order; fold every one onto the last.
        let mut lanes = [_mm_setzero_si128(); LANES];
        for (index, accumulator) in accumulators.iter().enumerate() {
            lanes[2 * index] = _mm256_castsi256_si128(*accumulator);
            lanes[2 * index + 1] = _mm256_extracti128_si256::<1>(*accumulator);
        }
        let mut remainder = lanes[LANES - 1];
        for (lane, keys) in lanes.iter().zip(KEYS_LANES.iter()) {
            let keys = _mm_set_epi64x(keys[1] as i64, keys[0] as i64);
            let high = _mm_clmulepi64_si128::<0x00>(*lane, keys);
            let low = _mm_clmulepi64_si128::<0x11>(*lane, keys);
            remainder = _mm_xor_si128(remainder, _mm_xor_si128(high, low));
        }
        // The remainder's 16 bytes, then the tail, through the crc32 instruction, state 0.
        let mut state = _mm_crc32_u64(0, _mm_cvtsi128_si64(remainder) as u64);
        state = _mm_crc32_u64(state, _mm_extract_epi64::<1>(remainder) as u64);
        !crc32c_words(state as u32, &data[blocks * FOLD_BLOCK_BYTES..])
    }

    /// The raw CRC32C register (no inversions) after `data`, from `state`, one `crc32`
    /// instruction per 8 bytes: for short inputs and the fold's tail.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    pub(super) fn crc32c_words(state: u32, data: &[u8]) -> u32 {
        let mut state = u64::from(state);
        let mut words = data.chunks_exact(8);
        for word in &mut words {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            state = _mm_crc32_u64(state, u64::from_le_bytes(bytes));
        }
        let mut state = state as u32;
        for &byte in words.remainder() {
            state = _mm_crc32_u8(state, byte);
        }
        state
    }

    /// 32 bytes of `data` from `offset`; panics (never reads out of bounds) if they are not
    /// all inside it.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_32(data: &[u8], offset: usize) -> __m256i {
        let bytes = &data[offset..offset + 32];
        // SAFETY: `bytes` is 32 readable bytes; `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_si256(bytes.as_ptr().cast::<__m256i>()) }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn all_finite_avx2(values: &[f32]) -> bool {
        use super::{EXPONENT, EXPONENT_ONE};
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

/// A float's exponent bits.
const EXPONENT: u32 = 0x7F80_0000;
/// One unit at the exponent's lowest bit.
const EXPONENT_ONE: u32 = 0x0080_0000;
/// The sign bit, where the carry of an all-ones exponent lands.
const SIGN: u32 = 0x8000_0000;

/// The portable loop (SSE2 vectorizes it; AVX2 machines take the explicit kernel).
fn all_finite_lanes(values: &[f32]) -> bool {
    let any = values.iter().fold(0u32, |any, value| {
        any | ((value.to_bits() & EXPONENT) + EXPONENT_ONE)
    });
    any & SIGN == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*, seeded, for test data.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c_append(0, b"123456789"), 0xE306_9283);
        let zeros = [0u8; 4096];
        assert_eq!(crc32c_append(0, &zeros), crc32c_append_portable(0, &zeros));
    }

    #[test]
    fn crc32c_agrees_with_the_portable_path_at_every_length_and_offset() {
        let seed = 0x5EED_C3C3_u64;
        eprintln!("seed {seed:#x} (fold path available: {})", fold_available());
        let mut random = Random(seed);
        let data: Vec<u8> = (0..4200).map(|_| random.next() as u8).collect();
        for length in 0..=2100 {
            let offset = (random.next() % 64) as usize;
            let start = random.next() as u32;
            let slice = &data[offset..offset + length];
            assert_eq!(
                crc32c_append(start, slice),
                crc32c_append_portable(start, slice),
                "length {length} offset {offset} start {start:#x} (seed {seed:#x})"
            );
        }
    }

    #[test]
    fn crc32c_continues_across_pieces() {
        let mut random = Random(7);
        let data: Vec<u8> = (0..3000).map(|_| random.next() as u8).collect();
        let whole = crc32c_append(0, &data);
        for cut in [0, 1, 31, 256, 1000, 2999, 3000] {
            let (first, second) = data.split_at(cut);
            assert_eq!(crc32c_append(crc32c_append(0, first), second), whole);
        }
    }

    #[test]
    fn the_fold_constants_are_powers_of_x() {
        // x^0 is 1: coefficient of x^0 at bit 63.
        assert_eq!(fold_key(0), 1 << 63);
        // x^31 is below the modulus: coefficient at bit 32.
        assert_eq!(fold_key(31), 1 << 32);
        // x^32 ≡ the polynomial's low terms, bit-reflected into the upper word.
        assert_eq!(fold_key(32), u64::from(POLYNOMIAL.reverse_bits()) << 32);
    }

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

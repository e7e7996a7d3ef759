//! CRC32C for frames, the cost that dominates validating a large one: the `crc32c` crate,
//! and for large inputs a kernel that folds with carry-less multiplication beside it.
//!
//! The `crc32` instruction computes 8 bytes per instruction with a latency of 3 cycles, so
//! three independent streams (what the `crc32c` crate runs) saturate its port at about
//! 8 bytes a cycle. Carry-less multiplication (VPCLMULQDQ) runs on another port and can
//! *fold* the message about as fast. The kernel here runs both at once, in one loop, on
//! different parts of each superblock:
//!
//! ```text
//! superblock of 248·N bytes:  [ A: 128·N bytes, folded ][ S1: 40·N ][ S2: 40·N ][ S3: 40·N ]
//! each step:                    128 bytes of A          5 words of each S, crc32 instruction
//! ```
//!
//! and then joins the four partial CRCs by shifting each by the length that follows it.
//! Where the CPU lacks VPCLMULQDQ, AVX2, PCLMULQDQ or SSE4.2, and for inputs under
//! `FUSED_MIN_BYTES`, the `crc32c` crate runs instead.
//!
//! Measured here (an AVX2 machine on which the `crc32` and carry-less multiply instructions
//! turn out to share an execution unit, so the two paths do not add up): 1.12 times the
//! crate's speed on a 3 KiB frame, 1.28 on 6 KiB. CPUs that run them on separate units, or
//! fold 512 bits at a time (AVX-512), should gain more; measure there before widening. Every constant is `x^e mod P`, computed at compile
//! time by [`power`]; none is copied from a table.
//!
//! The algebra, for a reflected CRC such as CRC32C:
//! - A 64-bit word `w` read from the stream stands for `W(x) = Σ w_i x^(63-i)`: its first
//!   bit is the highest power. For such words `clmul(a, b)` yields the 128-bit `x·A(x)·B(x)`.
//! - The raw CRC register (no inversions) after a message `M` from state 0 is
//!   `M(x)·x^32 mod P`; so `raw(A‖B) = raw(A)·x^(8|B|) + raw(B)`, and a start state `s`
//!   equals state 0 with `s` XORed into the first four bytes.
//! - Folding a 128-bit lane `C = H·x^64 + L` (`H` its first 8 bytes) forward by `D` bits is
//!   `H·x^(D+64) + L·x^D`, that is `clmul(H, x^(D+63)) ⊕ clmul(L, x^(D-1))`: the `-1` pays for
//!   clmul's extra `x`. A 128-bit value with nothing after it has the raw CRC of its 16 bytes.
//! - Shifting a raw state `s` by `n` bytes: `s` in the low half of a word is `S·x^32`, and
//!   the raw CRC of the 16 bytes of `clmul(s, x^(8n-65))` is `S·x^(8n)`.

/// CRC32C's polynomial without its `x^32` term, normal (not reflected) bit order.
const POLYNOMIAL: u32 = 0x1EDC_6F41;

/// Folded bytes per step: four 256-bit accumulators.
const FOLD_STEP_BYTES: usize = 128;
/// Bytes per step of each of the three `crc32` streams: five words, 15 cycles of latency,
/// about what the four folds take on the carry-less multiplier.
const STREAM_STEP_BYTES: usize = 40;
/// Bytes per step, all streams.
const STEP_BYTES: usize = FOLD_STEP_BYTES + 3 * STREAM_STEP_BYTES;
/// Below this length the `crc32c` crate alone is faster: the fused kernel's joins cost
/// more than they save (paired measurements in bench-rigs/README.md: 0.87 times the
/// crate's speed on a 600-byte frame, 1.12 on 3 KiB, 1.28 on 6 KiB).
const FUSED_MIN_BYTES: usize = 2048;
/// Up to this length one inline stream of `crc32` instructions beats the crate, whose
/// per-call set-up costs about as much as 15 ns here (the frame header's 32 bytes are
/// checksummed on their own).
const WORDS_MAX_BYTES: usize = 64;
/// Steps per superblock at most: bounds the shift table.
const STEPS_MAX: usize = 64;

/// `x^exponent mod P` as a clmul operand: the coefficient of `x^d` at bit `63 - d`.
const fn power(exponent: u32) -> u64 {
    as_operand(times_x_power(1, exponent))
}

/// `remainder · x^count mod P`, normal bit order.
const fn times_x_power(mut remainder: u32, count: u32) -> u32 {
    let mut step = 0;
    while step < count {
        let carry = remainder & 0x8000_0000 != 0;
        remainder <<= 1;
        if carry {
            remainder ^= POLYNOMIAL;
        }
        step += 1;
    }
    remainder
}

const fn as_operand(remainder: u32) -> u64 {
    (remainder.reverse_bits() as u64) << 32
}

/// The constants that move a 128-bit lane forward by `distance_bits`: `[x^(D+63), x^(D-1)]`.
const fn lane_keys(distance_bits: u32) -> [u64; 2] {
    [power(distance_bits + 63), power(distance_bits - 1)]
}

/// Moving each accumulator lane forward by one fold step.
const KEYS_STEP: [u64; 2] = lane_keys(FOLD_STEP_BYTES as u32 * 8);

/// Folding lane `j` (of 8, in stream order) onto lane 7: `(7 - j)·128` bits.
const KEYS_LANES: [[u64; 2]; 7] = {
    let mut keys = [[0u64; 2]; 7];
    let mut lane = 0;
    while lane < 7 {
        keys[lane] = lane_keys((7 - lane) as u32 * 128);
        lane += 1;
    }
    keys
};

/// `SHIFTS[k]` shifts a raw state by `k` stream steps (`40·k` bytes): `x^(320k-65)`.
const SHIFTS: [u64; 3 * STEPS_MAX + 1] = {
    const STEP_BITS: u32 = STREAM_STEP_BYTES as u32 * 8;
    let mut shifts = [0u64; 3 * STEPS_MAX + 1];
    let mut remainder = times_x_power(1, STEP_BITS - 65);
    let mut k = 1;
    while k <= 3 * STEPS_MAX {
        shifts[k] = as_operand(remainder);
        remainder = times_x_power(remainder, STEP_BITS);
        k += 1;
    }
    shifts
};

/// Continues a CRC32C: `crc` is the finished CRC32C of earlier bytes (0 to start); returns
/// the finished CRC32C of those bytes followed by `data` (as `crc32c::crc32c_append`).
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    if data.len() >= FUSED_MIN_BYTES {
        if let Some(crc) = crc32c_append_fused(crc, data) {
            return crc;
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() <= WORDS_MAX_BYTES && std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: SSE4.2 was just detected.
            return unsafe { !x86::crc32c_words(!crc, data) };
        }
    }
    crc32c::crc32c_append(crc, data)
}

/// The fused kernel for any length, where the CPU has it (`None` otherwise).
pub fn crc32c_append_fused(crc: u32, data: &[u8]) -> Option<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        if fused_available() {
            // SAFETY: `fused_available` checked every feature the kernel enables.
            return Some(unsafe { x86::crc32c_fused(crc, data) });
        }
    }
    let _ = (crc, data);
    None
}

/// The `crc32c` crate alone: the reference in tests, the baseline in benchmarks.
pub fn crc32c_append_portable(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// Whether this CPU runs the fused kernel (std caches the detection).
pub fn fused_available() -> bool {
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
    use super::{
        FOLD_STEP_BYTES, KEYS_LANES, KEYS_STEP, SHIFTS, STEPS_MAX, STEP_BYTES, STREAM_STEP_BYTES,
    };
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have VPCLMULQDQ, PCLMULQDQ, AVX2 and SSE4.2.
    #[target_feature(enable = "vpclmulqdq,pclmulqdq,avx2,sse4.2")]
    pub(super) unsafe fn crc32c_fused(crc: u32, data: &[u8]) -> u32 {
        let mut state = !crc;
        let mut rest = data;
        while rest.len() >= STEP_BYTES {
            let steps = (rest.len() / STEP_BYTES).min(STEPS_MAX);
            let (superblock, after) = rest.split_at(steps * STEP_BYTES);
            state = superblock_state(state, superblock, steps);
            rest = after;
        }
        crc32c::crc32c_append(!state, rest)
    }

    /// The raw state after `superblock` (exactly `steps · STEP_BYTES` bytes) from `state`.
    #[inline]
    #[target_feature(enable = "vpclmulqdq,pclmulqdq,avx2,sse4.2")]
    fn superblock_state(state: u32, superblock: &[u8], steps: usize) -> u32 {
        assert!(superblock.len() == steps * STEP_BYTES && (1..=STEPS_MAX).contains(&steps));
        let (folded, streams) = superblock.split_at(steps * FOLD_STEP_BYTES);
        let stream_bytes = steps * STREAM_STEP_BYTES;
        let (first, streams) = streams.split_at(stream_bytes);
        let (second, third) = streams.split_at(stream_bytes);

        // The start state goes into the message's first four bytes.
        let start = _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, state as i32);
        let mut accumulators = [
            _mm256_xor_si256(load_32(folded, 0), start),
            load_32(folded, 32),
            load_32(folded, 64),
            load_32(folded, 96),
        ];
        let keys = _mm256_set_epi64x(
            KEYS_STEP[1] as i64,
            KEYS_STEP[0] as i64,
            KEYS_STEP[1] as i64,
            KEYS_STEP[0] as i64,
        );
        let mut streams = [0u64; 3];
        for step in 0..steps {
            if step > 0 {
                let base = step * FOLD_STEP_BYTES;
                for (index, accumulator) in accumulators.iter_mut().enumerate() {
                    let high = _mm256_clmulepi64_epi128::<0x00>(*accumulator, keys);
                    let low = _mm256_clmulepi64_epi128::<0x11>(*accumulator, keys);
                    *accumulator = _mm256_xor_si256(
                        _mm256_xor_si256(high, low),
                        load_32(folded, base + index * 32),
                    );
                }
            }
            let base = step * STREAM_STEP_BYTES;
            for word in 0..STREAM_STEP_BYTES / 8 {
                let at = base + word * 8;
                streams[0] = _mm_crc32_u64(streams[0], load_8(first, at));
                streams[1] = _mm_crc32_u64(streams[1], load_8(second, at));
                streams[2] = _mm_crc32_u64(streams[2], load_8(third, at));
            }
        }

        // The eight 128-bit lanes in stream order, folded onto the last one.
        let mut lanes = [_mm_setzero_si128(); 8];
        for (index, accumulator) in accumulators.iter().enumerate() {
            lanes[2 * index] = _mm256_castsi256_si128(*accumulator);
            lanes[2 * index + 1] = _mm256_extracti128_si256::<1>(*accumulator);
        }
        let mut remainder = lanes[7];
        for (lane, keys) in lanes.iter().zip(KEYS_LANES.iter()) {
            let keys = _mm_set_epi64x(keys[1] as i64, keys[0] as i64);
            let high = _mm_clmulepi64_si128::<0x00>(*lane, keys);
            let low = _mm_clmulepi64_si128::<0x11>(*lane, keys);
            remainder = _mm_xor_si128(remainder, _mm_xor_si128(high, low));
        }
        let folded_state = raw_of_16_bytes(remainder);

        // Join: each part shifted by the length after it (3, 2, 1 and 0 stream parts).
        shift(folded_state, SHIFTS[3 * steps])
            ^ shift(streams[0] as u32, SHIFTS[2 * steps])
            ^ shift(streams[1] as u32, SHIFTS[steps])
            ^ streams[2] as u32
    }

    /// The raw CRC register after `data` from `state`, one `crc32` instruction per word.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    pub(super) fn crc32c_words(state: u32, data: &[u8]) -> u32 {
        let mut state = u64::from(state);
        let mut words = data.chunks_exact(8);
        for word in &mut words {
            state = _mm_crc32_u64(state, load_8(word, 0));
        }
        let mut state = state as u32;
        for &byte in words.remainder() {
            state = _mm_crc32_u8(state, byte);
        }
        state
    }

    /// The raw CRC (from state 0) of the 16 bytes of `value`.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    fn raw_of_16_bytes(value: __m128i) -> u32 {
        let state = _mm_crc32_u64(0, _mm_cvtsi128_si64(value) as u64);
        _mm_crc32_u64(state, _mm_extract_epi64::<1>(value) as u64) as u32
    }

    /// `state · x^(8n)` for the `n` that `key` (`x^(8n-65)`) stands for.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.2")]
    fn shift(state: u32, key: u64) -> u32 {
        let product = _mm_clmulepi64_si128::<0x00>(
            _mm_cvtsi64_si128(i64::from(state)),
            _mm_cvtsi64_si128(key as i64),
        );
        raw_of_16_bytes(product)
    }

    /// 32 bytes of `data` from `offset` (bounds-checked).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_32(data: &[u8], offset: usize) -> __m256i {
        let bytes = &data[offset..offset + 32];
        // SAFETY: `bytes` is 32 readable bytes; `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_si256(bytes.as_ptr().cast::<__m256i>()) }
    }

    /// The little-endian word at `offset` (bounds-checked).
    #[inline]
    fn load_8(data: &[u8], offset: usize) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&data[offset..offset + 8]);
        u64::from_le_bytes(word)
    }
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
    fn the_check_value() {
        assert_eq!(crc32c_append(0, b"123456789"), 0xE306_9283);
        let zeros = vec![0u8; 5000];
        assert_eq!(crc32c_append(0, &zeros), crc32c_append_portable(0, &zeros));
    }

    #[test]
    fn agrees_with_the_portable_path_at_every_length_and_offset() {
        let seed = 0x5EED_C3C3_u64;
        eprintln!("seed {seed:#x} (fused kernel: {})", fused_available());
        let mut random = Random(seed);
        let data: Vec<u8> = (0..40_000).map(|_| random.next() as u8).collect();
        // Every length through several superblock sizes, then lengths past a full
        // superblock (64 steps) so that superblocks chain.
        let lengths = (0..=3 * STEP_BYTES + 17).chain((0..40).map(|index| 15_000 + index * 601));
        for length in lengths {
            let offset = (random.next() % 64) as usize;
            let start = random.next() as u32;
            let slice = &data[offset..offset + length];
            let expected = crc32c_append_portable(start, slice);
            assert_eq!(
                crc32c_append(start, slice),
                expected,
                "length {length} offset {offset} start {start:#x} (seed {seed:#x})"
            );
            if let Some(fused) = crc32c_append_fused(start, slice) {
                assert_eq!(
                    fused, expected,
                    "fused kernel, length {length} (seed {seed:#x})"
                );
            }
        }
    }

    #[test]
    fn continues_across_pieces() {
        let mut random = Random(7);
        let data: Vec<u8> = (0..3000).map(|_| random.next() as u8).collect();
        let whole = crc32c_append_portable(0, &data);
        for cut in [0, 1, 31, 248, 1000, 2999, 3000] {
            let (first, second) = data.split_at(cut);
            assert_eq!(crc32c_append(crc32c_append(0, first), second), whole);
            if let Some(first_crc) = crc32c_append_fused(0, first) {
                assert_eq!(crc32c_append_fused(first_crc, second), Some(whole));
            }
        }
    }

    #[test]
    fn the_constants_are_powers_of_x() {
        assert_eq!(power(0), 1 << 63);
        assert_eq!(power(31), 1 << 32);
        assert_eq!(power(32), u64::from(POLYNOMIAL.reverse_bits()) << 32);
        for k in [1, 2, 17, 3 * STEPS_MAX] {
            assert_eq!(
                SHIFTS[k],
                power(k as u32 * STREAM_STEP_BYTES as u32 * 8 - 65),
                "shift {k}"
            );
        }
        assert_eq!(KEYS_LANES[6], lane_keys(128));
    }
}

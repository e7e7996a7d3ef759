//! The vector index: distance kernels, quantization and HNSW.
//!
//! Owns the SIMD distance kernels (AVX2 + FMA and scalar today, AVX-512 next, chosen once at
//! run time), scalar (i8) quantization, and the HNSW graph stored CSR-style with 32-bit local
//! node ids over one contiguous 64-byte-aligned vector array, as the side-car index of a
//! segment.
//!
//! Built so far (issue #4 in progress): [`distance`].

pub mod distance;

pub use distance::{Kernels, Level, LevelError};

//! The vector index: distance kernels, quantization and HNSW.
//!
//! Owns the SIMD distance kernels (AVX-512, AVX2 + FMA and scalar, chosen once at run time),
//! scalar (i8) quantization, and the HNSW graph stored CSR-style with 32-bit local node ids
//! over one contiguous 64-byte-aligned vector array, as the side-car index of a segment.
//!
//! Empty until issue #4 fills it.

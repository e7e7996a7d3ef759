//! The vector index: distance kernels, quantization and HNSW.
//!
//! Owns the SIMD distance kernels ([`distance`]: AVX2 + FMA and scalar, chosen once at run
//! time), scalar `i8` quantization ([`quantize`]), and the HNSW graph ([`hnsw`]) stored
//! CSR-style with 32-bit local node ids over one contiguous 64-byte-aligned vector array,
//! persisted as a file that loads by mmap: the side-car index of a segment.

pub mod checksums;
pub mod distance;
pub mod filter;
pub mod hnsw;
pub mod metric;
pub mod quantize;
pub mod random;
pub mod store;

pub use checksums::{OnDamage, RowChecksums, RowDamage};
pub use distance::{Kernels, Level, LevelError};
pub use filter::{Filter, NodeSet};
pub use hnsw::{
    vector_stride, BuildControl, BuildParams, Compacted, Helpers, Hnsw, IndexError, Neighbor,
    Quantization, Rows, Scored, SearchParams, SearchScratch, Seed,
};
pub use metric::Metric;
pub use quantize::ScalarQuantizer;
pub use store::{MappedSource, Mapping, Store};

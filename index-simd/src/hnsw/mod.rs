//! HNSW (hierarchical navigable small world) graphs, stored CSR-style.
//!
//! Layout (no per-node heap allocation; every array is one allocation, 64-byte aligned, and
//! the same arrays are the sections of the index file, so a mapped file is used as is):
//! - `vectors`: every vector in one array, each row padded to a multiple of 16 floats (64
//!   bytes) so that every row starts on a cache line; cosine vectors are stored normalised.
//! - `codes`: with `i8` quantization, every vector's codes, rows padded to 64 bytes.
//! - `links0`: layer 0, one fixed block of `1 + m0` `u32` per node: the neighbour count,
//!   then up to `m0` neighbour ids (node ids are `u32`, local to the index: the row of the
//!   vector).
//! - `upper_links`: layers 1 and up, one fixed block of `1 + m` per node and layer; the
//!   blocks of node `n` (layers 1..=level) are consecutive from `upper_offsets[n]`. About one
//!   node in `m` has any.
//! - `levels`: each node's top layer; `labels`: each node's caller-given `u64` id.
//! - tombstones: a bitset of deleted nodes (never returned; [`Hnsw::compact`] removes them).
//!
//! Searches walk the graph greedily through the upper layers and then run the beam search of
//! the paper at layer 0, with a visited set and heaps that live in a reusable
//! [`SearchScratch`], prefetching each neighbour's vector before it is needed. With
//! quantization the walk compares `i8` codes and the best candidates are re-ranked with the
//! `f32` vectors.

mod build;
mod compact;
mod file;
mod search;

use crate::checksums::{RowChecksums, RowDamage};
use crate::distance::Kernels;
use crate::filter::NodeSet;
use crate::metric::Metric;
use crate::quantize::ScalarQuantizer;
use crate::store::Store;
use std::sync::Arc;

pub use build::{BuildControl, BuildParams, Helpers, Quantization, Seed};
pub use compact::Compacted;
pub use file::{FileError, FILE_MAGIC, FILE_VERSION};
pub use search::{Neighbor, Rows, Scored, SearchParams, SearchScratch};

/// The marker of an unused neighbour slot or "no node".
pub(crate) const NO_NODE: u32 = u32::MAX;

/// The highest layer a node may reach (with `m ≥ 2`, reaching it by chance has a
/// probability below 2⁻³²).
pub const LEVEL_MAX: u8 = 31;

/// The largest `m` accepted: `m0 = 2m` neighbours per node at layer 0.
pub const M_MAX: usize = 256;

/// The largest dimension accepted (VBP's limit).
pub const DIM_MAX: usize = 65_536;

/// The largest `ef` accepted for a search or a build.
pub const EF_MAX: usize = 1 << 16;

/// An error from building or searching an index.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IndexError {
    /// A parameter is out of its range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// A vector has the wrong number of components.
    #[error("vector has {actual} components, the index has {expected}")]
    DimensionMismatch {
        /// The index's dimension.
        expected: usize,
        /// The vector's length.
        actual: usize,
    },
    /// A vector holds NaN or an infinity.
    #[error("vector {row} holds a NaN or an infinity")]
    NotFinite {
        /// The row of the vector (0 for a query).
        row: usize,
    },
    /// The build was cancelled ([`BuildControl::cancel`](build::BuildControl::cancel)).
    #[error("the build was cancelled")]
    Cancelled,
    /// Rows the index read failed their checksums ([`Hnsw::check_rows_with`]): nothing was
    /// ranked with them.
    #[error("damaged rows: {0}")]
    Corrupt(RowDamage),
    /// A page of the index's file (or of the rows it walks) could not be read: the kernel
    /// raised SIGBUS under the mapping and the storage engine's guard put zeros there
    /// (`vortex_storage::lost_pages`). Nothing read since can be trusted; the search
    /// answers this instead.
    #[error(
        "a page of the index file could not be read (an I/O error at byte {offset} of its \
         mapping); nothing was ranked with it"
    )]
    PageLost {
        /// The page's offset in its mapping.
        offset: usize,
    },
    /// A node id is not in the index.
    #[error("node {node} is not in the index ({count} nodes)")]
    NoSuchNode {
        /// The node asked for.
        node: u32,
        /// The number of nodes.
        count: usize,
    },
}

/// An HNSW index over a fixed set of vectors.
#[derive(Debug)]
pub struct Hnsw {
    pub(crate) metric: Metric,
    pub(crate) dim: usize,
    /// Floats per row of `vectors` (`dim` rounded up to 16).
    pub(crate) vector_stride: usize,
    /// Bytes per row of `codes` (`dim` rounded up to 64).
    pub(crate) code_stride: usize,
    pub(crate) m: usize,
    pub(crate) m0: usize,
    pub(crate) ef_construction: usize,
    pub(crate) seed: u64,
    pub(crate) count: usize,
    pub(crate) entry: u32,
    pub(crate) top_level: u8,
    pub(crate) vectors: Store<f32>,
    /// Whether `vectors` belongs to the caller (rows inside an SSTable's mapped vector
    /// region, say) and is left out of the index file.
    pub(crate) external: bool,
    /// Whether the index holds no vectors at all ([`Hnsw::into_codes_only`]): it walks on
    /// its codes and re-ranks with rows the caller gives ([`Hnsw::search_over_rows`]).
    pub(crate) codes_only: bool,
    pub(crate) quantizer: Option<ScalarQuantizer>,
    pub(crate) codes: Store<i8>,
    pub(crate) labels: Store<u64>,
    pub(crate) levels: Store<u8>,
    pub(crate) upper_offsets: Store<u32>,
    pub(crate) links0: Store<u32>,
    pub(crate) upper_links: Store<u32>,
    /// The deleted nodes.
    pub(crate) tombstones: NodeSet,
    pub(crate) kernels: &'static Kernels,
    /// The checksums of external rows, verified as searches read them
    /// ([`Hnsw::check_rows_with`]).
    pub(crate) checksums: Option<Arc<RowChecksums>>,
}

impl Hnsw {
    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The number of components of every vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Nodes in the index, deleted ones included (until [`Hnsw::compact`]).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the index has no nodes.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Nodes not deleted.
    pub fn live_count(&self) -> usize {
        self.count - self.tombstones.len()
    }

    /// Nodes deleted and not yet compacted away.
    pub fn deleted_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Neighbours per node on layers above 0.
    pub fn m(&self) -> usize {
        self.m
    }

    /// The beam width the graph was built with.
    pub fn ef_construction(&self) -> usize {
        self.ef_construction
    }

    /// The quantizer, when the index walks on `i8` codes.
    pub fn quantizer(&self) -> Option<&ScalarQuantizer> {
        self.quantizer.as_ref()
    }

    /// The caller's id of `node`.
    pub fn label(&self, node: u32) -> Option<u64> {
        self.labels.get(node as usize).copied()
    }

    /// The stored vector of `node` (normalised for cosine); `None` out of range and in a
    /// codes-only index. Not checked: see [`Hnsw::checked_vector`].
    pub fn vector(&self, node: u32) -> Option<&[f32]> {
        ((node as usize) < self.count && !self.codes_only).then(|| self.row(node))
    }

    /// [`Hnsw::vector`], its rows' checksums verified first where the index has them
    /// ([`Hnsw::check_rows_with`]): for a caller that copies the vector elsewhere.
    pub fn checked_vector(&self, node: u32) -> Result<Option<&[f32]>, IndexError> {
        if (node as usize) < self.count && !self.codes_only {
            if let Some(checksums) = &self.checksums {
                checksums
                    .check(&self.vectors, node)
                    .and_then(|()| checksums.check_lost(&self.vectors))
                    .map_err(IndexError::Corrupt)?;
            }
        }
        self.check_pages()?;
        Ok(self.vector(node))
    }

    /// Copies the stored vector of `node` (normalised for cosine) into `out` (`dim` floats)
    /// without touching a mapping: a mapped index reads it from its file
    /// ([`Store::read_into`](crate::store::Store::read_into)), its rows' checksums verified
    /// the same way where it has them. `Ok(false)` for a node out of range, a codes-only
    /// index, an `out` of another length, or a failed read.
    pub fn read_vector(&self, node: u32, out: &mut [f32]) -> Result<bool, IndexError> {
        if (node as usize) >= self.count || self.codes_only || out.len() != self.dim {
            return Ok(false);
        }
        if let Some(checksums) = &self.checksums {
            checksums
                .check_read(&self.vectors, node)
                .map_err(IndexError::Corrupt)?;
        }
        Ok(self
            .vectors
            .read_into(node as usize * self.vector_stride, out))
    }

    /// Verifies the rows this index reads but does not own (an SSTable's vector region,
    /// given to [`Hnsw::build_over`] or [`Hnsw::load_over`]) against `checksums` as searches
    /// read them: a search that reads a damaged unit fails with [`IndexError::Corrupt`]
    /// instead of ranking it (see [`crate::checksums`]). Refused for an index whose rows
    /// are its own or in memory, and for checksums that do not cover every row.
    pub fn check_rows_with(&mut self, checksums: Arc<RowChecksums>) -> Result<(), IndexError> {
        if !self.external || self.codes_only || !self.vectors.is_mapped() {
            return Err(IndexError::InvalidParameter(
                "row checksums are for the caller's mapped rows".into(),
            ));
        }
        if !checksums.covers(self.count) {
            return Err(IndexError::InvalidParameter(format!(
                "{} checksum units do not cover {} rows of {} floats",
                checksums.units(),
                self.count,
                self.vector_stride
            )));
        }
        self.checksums = Some(checksums);
        Ok(())
    }

    /// The checksums the rows are verified with, if any ([`Hnsw::check_rows_with`]).
    pub fn row_checksums(&self) -> Option<&Arc<RowChecksums>> {
        self.checksums.as_ref()
    }

    /// The same index without its `f32` vectors, for one that walks on `i8` codes: only the
    /// codes and the graph stay resident, and a search re-ranks its candidates with rows the
    /// caller reads from wherever the vectors live ([`Hnsw::search_over_rows`]). Such an
    /// index is saved without vectors and loaded with [`Hnsw::load_codes_only`]; it cannot
    /// be compacted (compaction re-ranks links with the vectors).
    pub fn into_codes_only(mut self) -> Result<Hnsw, IndexError> {
        if self.quantizer.is_none() {
            return Err(IndexError::InvalidParameter(
                "only an index that walks on i8 codes can drop its vectors".into(),
            ));
        }
        self.vectors = Store::owned(&[]);
        self.external = true;
        self.codes_only = true;
        Ok(self)
    }

    /// A page the kernel could not read under the index's mappings, its file's or its
    /// rows' ([`IndexError::PageLost`]); always `None` for an index built in memory.
    pub fn lost_page(&self) -> Option<usize> {
        self.links0
            .mapping_lost_page()
            .or_else(|| self.vectors.mapping_lost_page())
    }

    /// `Ok` while no page of the index's mappings was lost ([`Hnsw::lost_page`]).
    pub(crate) fn check_pages(&self) -> Result<(), IndexError> {
        match self.lost_page() {
            Some(offset) => Err(IndexError::PageLost { offset }),
            None => Ok(()),
        }
    }

    /// Lets go of the resident pages of every array kept in a file mapping (a loaded
    /// index's, and the caller's rows of [`Hnsw::build_over`]): see
    /// [`Store::release_pages`]. For after a pass that read them all (a build reads every
    /// row, a load checks every section): searches then bring back only what they touch.
    /// The rows' verified units are forgotten too: the next read may come from the disk.
    pub fn release_pages(&self) {
        self.vectors.release_pages();
        if let Some(checksums) = &self.checksums {
            checksums.forget();
        }
        self.codes.release_pages();
        self.labels.release_pages();
        self.levels.release_pages();
        self.upper_offsets.release_pages();
        self.links0.release_pages();
        self.upper_links.release_pages();
    }

    /// Whether the index holds no vectors ([`Hnsw::into_codes_only`]).
    pub fn is_codes_only(&self) -> bool {
        self.codes_only
    }

    /// The neighbours of `node` at `layer`, if the node reaches that layer.
    pub fn neighbors_of(&self, node: u32, layer: u8) -> Option<&[u32]> {
        let level = *self.levels.get(node as usize)?;
        (layer <= level).then(|| self.neighbors(node, layer))
    }

    /// The top layer of `node`.
    pub fn level_of(&self, node: u32) -> Option<u8> {
        self.levels.get(node as usize).copied()
    }

    /// Whether `node` is deleted.
    pub fn is_deleted(&self, node: u32) -> bool {
        self.tombstones.contains(node)
    }

    /// Deletes `node`: searches never return it again. Its links stay (other nodes route
    /// through it) until [`Hnsw::compact`]. True when it was live.
    pub fn delete(&mut self, node: u32) -> Result<bool, IndexError> {
        if node as usize >= self.count {
            return Err(IndexError::NoSuchNode {
                node,
                count: self.count,
            });
        }
        Ok(self.tombstones.insert(node))
    }

    /// Resident bytes of the index's arrays (mapped ones and external vectors included; a
    /// codes-only index has none).
    pub fn memory_bytes(&self) -> usize {
        size_of_val(&*self.vectors)
            + size_of_val(&*self.codes)
            + size_of_val(&*self.labels)
            + size_of_val(&*self.levels)
            + size_of_val(&*self.upper_offsets)
            + size_of_val(&*self.links0)
            + size_of_val(&*self.upper_links)
            + size_of_val(self.tombstones.words())
    }

    /// Whether the arrays live in a mapped file.
    pub fn is_mapped(&self) -> bool {
        self.vectors.is_mapped()
    }

    /// Whether the vectors are the caller's rows ([`Hnsw::build_over`],
    /// [`Hnsw::load_over`]) rather than the index's own copy.
    pub fn vectors_external(&self) -> bool {
        self.external
    }

    /// The stored vector of `node` (no padding).
    #[inline(always)]
    pub(crate) fn row(&self, node: u32) -> &[f32] {
        let start = node as usize * self.vector_stride;
        &self.vectors[start..start + self.dim]
    }

    /// The codes of `node` (no padding).
    #[inline(always)]
    pub(crate) fn code_row(&self, node: u32) -> &[i8] {
        let start = node as usize * self.code_stride;
        &self.codes[start..start + self.dim]
    }

    /// The neighbours of `node` at `layer` (which must be at most its level).
    #[inline(always)]
    pub(crate) fn neighbors(&self, node: u32, layer: u8) -> &[u32] {
        let range = block_range(self.m, &self.upper_offsets, node, layer);
        let block = if layer == 0 {
            &self.links0[range]
        } else {
            &self.upper_links[range]
        };
        let count = (block[0] as usize).min(block.len() - 1);
        &block[1..1 + count]
    }
}

/// Where the neighbour block (count, then ids) of `node` at `layer` lies: in the layer-0
/// array (`1 + 2m` per node) for layer 0, else in the upper-links array (`1 + m` per layer,
/// from the node's offset). The one statement of the layout; `layer` must be at most the
/// node's level.
#[inline(always)]
pub(crate) fn block_range(
    m: usize,
    upper_offsets: &[u32],
    node: u32,
    layer: u8,
) -> std::ops::Range<usize> {
    if layer == 0 {
        let start = node as usize * (1 + 2 * m);
        start..start + 1 + 2 * m
    } else {
        let start = upper_offsets[node as usize] as usize + (layer as usize - 1) * (1 + m);
        start..start + 1 + m
    }
}

/// Floats per stored row: `dim` rounded up to whole 64-byte rows of `f32` (the row layout
/// [`Hnsw::build_over`] expects).
pub fn vector_stride(dim: usize) -> usize {
    dim.next_multiple_of(crate::store::ALIGN_BYTES / size_of::<f32>())
}

/// `dim` rounded up to whole 64-byte rows of `i8`.
pub(crate) fn code_stride(dim: usize) -> usize {
    dim.next_multiple_of(crate::store::ALIGN_BYTES)
}

//! The shard engine: the per-core owner of collections and points.
//!
//! One instance per LEU; its reactor calls it and never waits on it (index builds, flushes
//! and compactions run on the storage engine's bounded background pool).
//!
//! - [`catalog`]: collections (name, dimension, metric, HNSW parameters, vector type),
//!   persisted in one file replaced atomically; ids never reused.
//! - [`payload`]: the stored payload encoding and payload filters; [`payload_index`]: a
//!   segment's payload index (bitmaps and sorted values), which turns a filter into a node set.
//! - [`sidecar`]: the side-car HNSW index of each SSTable, built by the compaction hook.
//! - [`engine`]: [`Shard`]: create/drop/list/describe, upsert/delete/get, search over the
//!   MemTables (exactly) and every live segment (through its index), newest versions only.

pub mod catalog;
pub mod engine;
pub mod error;
mod files;
pub mod payload;
pub mod payload_index;
pub mod sidecar;
pub mod tier;
mod tier_file;
pub mod view;

pub use engine::{Shard, ShardCloseReport, ShardOpenReport, ShardOptions, ShardStats};
pub use error::ShardError;
pub use tier::{IndexTier, NodeGraph, TierGraphs};
pub use view::{search_node, search_views, FencedRange, PublishedView, SearchRequest, ShardView};

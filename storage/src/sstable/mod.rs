//! SSTables (issue #6): immutable sorted files of 4 KiB blocks, each checked with CRC32C.
//!
//! Built so far: [`block`], the data block format with its builder and verifying parser. The
//! file around the blocks (vector region, index block, bloom filter, footer), flush,
//! compaction and the scrubber come next; docs/STORAGE.md describes what exists.

pub mod block;

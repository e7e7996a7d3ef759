//! SSTables (issue #6): immutable sorted files of 4 KiB blocks, each checked with CRC32C.
//!
//! - [`block`]: the data block format with its builder and verifying parser.
//! - [`table`]: the file around the blocks (the aligned vector region, the index block, the
//!   bloom filter, the footer), its builder and its reader.

pub mod block;
pub mod table;

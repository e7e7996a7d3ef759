//! The storage engine: an LSM tree of vector segments.
//!
//! Owns the write-ahead log (Direct I/O appends through the LEU's io_uring from `vortex-io`),
//! the MANIFEST and crash recovery, the memtable, 4 KiB-block SSTables with CRC32C, compaction
//! with the side-car index hook, and the scrubber.
//!
//! Empty until issues #5 and #6 fill it.

//! VBP, the VORTEX Binary Protocol.
//!
//! Owns the wire format (a fixed little-endian frame header followed by an rkyv-archived body,
//! 16-byte aligned), the `LayoutValidator` that checks every frame before any byte of its body
//! is used, the TCP stream decoder, the pre-allocated `BufferPool` whose buffers are handed to
//! the shard engines without copying, and the client library.
//!
//! Empty until issue #3 fills it: the crate exists now so that the workspace has its final
//! shape and later crates can name it.

//! VBP, the VORTEX Binary Protocol.
//!
//! A frame is a fixed 32-byte little-endian header ([`header`]) followed by an rkyv 0.8
//! archived body ([`message`]) padded to 16 bytes. docs/VBP.md is the format's reference.
//!
//! - [`codec`]: building frames from owned messages.
//! - [`validator`]: the `LayoutValidator`, which checks every byte of a frame before any of
//!   its body is used and hands out archived bodies read in place.
//! - [`pool`]: the pre-allocated, 4 KiB-aligned `BufferPool` that receive buffers and frames
//!   live in, with the persistence lock that keeps a write's buffer until it is durable.
//! - [`stream`]: the TCP stream decoder, zero-copy for frames that lie whole in one buffer.
//! - [`client`]: the Rust client library (pipelined, timeouts, several endpoints).
//! - [`checksum`]: CRC32C on two execution ports at once; [`simd`]: the finite-float check
//!   of vectors. Both dispatched at run time.

pub mod check_error;
pub mod checksum;
pub mod client;
pub mod codec;
pub mod header;
pub mod message;
pub mod pool;
pub mod routing;
pub mod samples;
pub mod sharded;
pub mod simd;
pub mod stream;
pub mod validator;

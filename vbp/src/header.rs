//! The fixed 32-byte frame header, identical in every protocol version.
//!
//! ```text
//! offset  size  field
//!      0     4  magic        b"VRTX"
//!      4     2  version      u16 LE, 1 today
//!      6     2  opcode       u16 LE (see `Opcode`)
//!      8     2  flags        u16 LE, bit 0 = RESPONSE, bit 1 = FAN_OUT (Search requests
//!                              only); other bits must be 0
//!     10     2  reserved     must be 0
//!     12     4  body_length  u32 LE, bytes of the rkyv body, without padding
//!     16     8  request_id   u64 LE, chosen by the client, echoed in the response
//!     24     4  checksum     u32 LE, CRC32C of the header (this field as 0), body and padding
//!     28     4  reserved     must be 0
//!     32     -  body, then 0 to 15 zero bytes of padding to a multiple of 16
//! ```
//!
//! Invariant: every frame's length is a multiple of 16, so frames that follow each other in
//! a 16-aligned buffer all start 16-aligned, as the rkyv bodies need.

/// Header length in bytes.
pub const HEADER_BYTES: usize = 32;
/// The magic at the start of every frame.
pub const MAGIC: [u8; 4] = *b"VRTX";
/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// Frame and body alignment in bytes.
pub const FRAME_ALIGN: usize = 16;
/// Default bound on a whole frame (header, body, padding): 16 MiB.
pub const FRAME_SIZE_MAX_BYTES_DEFAULT: u32 = 16 << 20;
/// The RESPONSE bit of `flags`.
pub const FLAG_RESPONSE: u16 = 1;
/// The FAN_OUT bit of `flags`, on a Search request only: the server spreads this search over
/// every LEU and merges their answers (shorter for one search on idle cores) instead of
/// running it whole on the LEU that reads it (more searches per second).
pub const FLAG_FAN_OUT: u16 = 1 << 1;

use crate::checksum;

const CHECKSUM_OFFSET: usize = 24;

/// Operation codes. Requests and their responses share a code; a response sets
/// [`FLAG_RESPONSE`]. `Partial`, `Error` and `Throttled` exist only as responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Opcode {
    /// Liveness check.
    Ping = 1,
    /// Create a collection.
    CreateCollection = 2,
    /// Drop a collection and its data.
    DropCollection = 3,
    /// List collections.
    ListCollections = 4,
    /// Describe one collection.
    DescribeCollection = 5,
    /// Insert or replace a batch of points.
    Upsert = 6,
    /// Delete points by id.
    Delete = 7,
    /// Fetch points by id.
    Get = 8,
    /// k-nearest-neighbour search.
    Search = 9,
    /// Count points, optionally filtered.
    Count = 10,
    /// Per-LEU statistics.
    Stats = 11,
    /// Start a scrubber pass on every LEU now (progress in `Stats`).
    Scrub = 12,
    /// The tables fenced for damage on every LEU, with their collections and id ranges.
    Fenced = 13,
    /// A write applied on some of the LEUs it spans and failed on others (response only).
    Partial = 0xFD,
    /// A typed error (response only).
    Error = 0xFE,
    /// The server is overloaded; retry later (response only).
    Throttled = 0xFF,
}

impl Opcode {
    /// Every opcode, for tests and docs.
    pub const ALL: [Opcode; 16] = [
        Opcode::Ping,
        Opcode::CreateCollection,
        Opcode::DropCollection,
        Opcode::ListCollections,
        Opcode::DescribeCollection,
        Opcode::Upsert,
        Opcode::Delete,
        Opcode::Get,
        Opcode::Search,
        Opcode::Count,
        Opcode::Stats,
        Opcode::Scrub,
        Opcode::Fenced,
        Opcode::Partial,
        Opcode::Error,
        Opcode::Throttled,
    ];

    /// The opcode with this wire value.
    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|opcode| *opcode as u16 == value)
    }

    /// Whether the opcode may only appear in responses.
    pub fn response_only(self) -> bool {
        matches!(self, Opcode::Partial | Opcode::Error | Opcode::Throttled)
    }
}

/// A parsed header. Parsing checks nothing but the length of the input; see
/// `LayoutValidator` for the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The first four bytes.
    pub magic: [u8; 4],
    /// Protocol version.
    pub version: u16,
    /// Raw opcode.
    pub opcode: u16,
    /// Raw flags.
    pub flags: u16,
    /// The reserved u16 at offset 10.
    pub reserved_a: u16,
    /// Body length without padding.
    pub body_length: u32,
    /// Request id.
    pub request_id: u64,
    /// CRC32C as sent.
    pub checksum: u32,
    /// The reserved u32 at offset 28.
    pub reserved_b: u32,
}

impl FrameHeader {
    /// A header for a new frame (checksum filled in by `seal`).
    pub fn new(opcode: Opcode, response: bool, request_id: u64, body_length: u32) -> Self {
        FrameHeader {
            magic: MAGIC,
            version: VERSION,
            opcode: opcode as u16,
            flags: if response { FLAG_RESPONSE } else { 0 },
            reserved_a: 0,
            body_length,
            request_id,
            checksum: 0,
            reserved_b: 0,
        }
    }

    /// Parses the first 32 bytes of `bytes`; `None` if there are fewer.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let header: &[u8; HEADER_BYTES] = bytes.get(..HEADER_BYTES)?.try_into().ok()?;
        let u16_at = |offset: usize| u16::from_le_bytes([header[offset], header[offset + 1]]);
        let u32_at = |offset: usize| {
            u32::from_le_bytes([
                header[offset],
                header[offset + 1],
                header[offset + 2],
                header[offset + 3],
            ])
        };
        let mut request_id = [0u8; 8];
        request_id.copy_from_slice(&header[16..24]);
        Some(FrameHeader {
            magic: [header[0], header[1], header[2], header[3]],
            version: u16_at(4),
            opcode: u16_at(6),
            flags: u16_at(8),
            reserved_a: u16_at(10),
            body_length: u32_at(12),
            request_id: u64::from_le_bytes(request_id),
            checksum: u32_at(CHECKSUM_OFFSET),
            reserved_b: u32_at(28),
        })
    }

    /// Writes the header into `out[..32]`.
    pub fn write(&self, out: &mut [u8; HEADER_BYTES]) {
        out[0..4].copy_from_slice(&self.magic);
        out[4..6].copy_from_slice(&self.version.to_le_bytes());
        out[6..8].copy_from_slice(&self.opcode.to_le_bytes());
        out[8..10].copy_from_slice(&self.flags.to_le_bytes());
        out[10..12].copy_from_slice(&self.reserved_a.to_le_bytes());
        out[12..16].copy_from_slice(&self.body_length.to_le_bytes());
        out[16..24].copy_from_slice(&self.request_id.to_le_bytes());
        out[24..28].copy_from_slice(&self.checksum.to_le_bytes());
        out[28..32].copy_from_slice(&self.reserved_b.to_le_bytes());
    }

    /// Whether the RESPONSE flag is set.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// The whole frame's length on the wire: header, body and padding. Computed in u64 so
    /// that no body length overflows it.
    pub fn frame_length(&self) -> u64 {
        HEADER_BYTES as u64 + padded(u64::from(self.body_length))
    }
}

/// `length` rounded up to a multiple of [`FRAME_ALIGN`].
pub fn padded(length: u64) -> u64 {
    length.div_ceil(FRAME_ALIGN as u64) * FRAME_ALIGN as u64
}

/// The CRC32C of a whole frame with its checksum field taken as zero.
///
/// For a large frame this is most of the cost of validating it: see [`crate::checksum`].
pub fn frame_checksum(frame: &[u8]) -> u32 {
    debug_assert!(frame.len() >= HEADER_BYTES);
    let header_length = frame.len().min(HEADER_BYTES);
    let mut header = [0u8; HEADER_BYTES];
    header[..header_length].copy_from_slice(&frame[..header_length]);
    header[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].fill(0);
    let crc = checksum::crc32c_append(0, &header[..header_length]);
    checksum::crc32c_append(crc, &frame[header_length..])
}

/// Fills in the checksum of a complete frame.
pub fn seal(frame: &mut [u8]) {
    let checksum = frame_checksum(frame);
    frame[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 4].copy_from_slice(&checksum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut header = FrameHeader::new(Opcode::Search, true, 0x0102_0304_0506_0708, 100);
        header.checksum = 0xDEAD_BEEF;
        let mut bytes = [0u8; HEADER_BYTES];
        header.write(&mut bytes);
        assert_eq!(&bytes[..4], b"VRTX");
        assert_eq!(FrameHeader::parse(&bytes), Some(header));
        assert_eq!(header.frame_length(), 32 + 112);
        assert!(FrameHeader::parse(&bytes[..31]).is_none());
    }

    #[test]
    fn opcodes_round_trip_and_unknown_ones_are_none() {
        for opcode in Opcode::ALL {
            assert_eq!(Opcode::from_u16(opcode as u16), Some(opcode));
        }
        assert_eq!(Opcode::from_u16(0), None);
        assert_eq!(Opcode::from_u16(14), None);
        assert_eq!(Opcode::from_u16(0xFFFF), None);
    }

    #[test]
    fn padding_rounds_to_sixteen() {
        assert_eq!(padded(0), 0);
        assert_eq!(padded(1), 16);
        assert_eq!(padded(16), 16);
        assert_eq!(padded(u64::from(u32::MAX)), u64::from(u32::MAX) + 1);
    }
}

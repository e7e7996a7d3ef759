//! The `LayoutValidator`: every check a frame must pass before any byte of its body is used.
//!
//! Order of checks, cheapest first, each with its own error:
//!
//! 1. header: magic, version, reserved bits and fields zero, known opcode in a valid
//!    direction, frame length within `frame_size_max_bytes`;
//! 2. layout: the slice is exactly one frame long, 16-aligned, padding bytes zero;
//! 3. CRC32C over header, body and padding;
//! 4. rkyv's checked access (bytecheck): every relative pointer and length in bounds, every
//!    enum tag and bool valid, strings UTF-8;
//! 5. meaning: limits (names, dimensions, k, ef, filter shape), finite vectors, columnar
//!    lengths consistent.
//!
//! No input can make it panic or read out of bounds: the header is parsed from a checked
//! 32-byte slice, lengths are compared in u64, and the body is only ever touched through
//! rkyv's validated access. Vectors come back as `&[f32]` pointing into the frame.

use crate::check_error::CheckError;
use crate::codec::{Request, Response};
use crate::header::{frame_checksum, FRAME_SIZE_MAX_BYTES_DEFAULT};
use crate::header::{
    FrameHeader, Opcode, FLAG_FAN_OUT, FLAG_RESPONSE, FRAME_ALIGN, HEADER_BYTES, MAGIC, VERSION,
};
use crate::message::*;
use rkyv::vec::ArchivedVec;

// The protocol's limits: the one definition that the validator, the shard and the dataplane
// use, and that docs/VBP.md states (a test compares). They are what the server serves: the
// shard checks at compile time that its storage and index hold them.

/// Longest collection name, payload key or filter field, in bytes.
pub const NAME_BYTES_MAX: usize = 255;
/// Largest vector dimension: 64 KiB of `f32`, the storage engine's largest vector.
pub const DIMENSION_MAX: u32 = 16_384;
/// Largest `k`.
pub const K_MAX: u32 = 10_000;
/// Largest `ef`: the index's widest beam.
pub const EF_MAX: u32 = 65_536;
/// Longest string in a payload (a `Str`, or one string of a `StrList`), in bytes.
pub const STRING_BYTES_MAX: usize = 64 << 10;
/// Points one upsert or delete may carry, whichever LEUs own them: any LEU's part of it
/// then fits the batch its store admits at once (4,096 writes).
pub const WRITE_POINTS_MAX: usize = 4096;
/// Bytes one upsert's body may hold (ids, vectors, payloads): any LEU's part of it then
/// fits its store's batch (4 MiB of WAL records), the records' own headers included. 3.5
/// MiB: 1,000 points of 768 floats with payloads fit.
pub const WRITE_BODY_BYTES_MAX: usize = 7 << 19;
/// Ids one get may carry.
pub const GET_IDS_MAX: usize = 65_536;
/// Most nodes in one filter.
pub const FILTER_NODES_MAX: usize = 256;
/// Most values in one `In` filter node, or strings in one list value.
pub const LIST_VALUES_MAX: usize = 1024;
/// Most fields in one payload.
pub const PAYLOAD_FIELDS_MAX: usize = 64;
/// Bounds of `CollectionSpec::m`.
pub const M_MIN: u16 = 2;
/// Bounds of `CollectionSpec::m`.
pub const M_MAX: u16 = 128;
/// Upper bound of `CollectionSpec::ef_construction`.
pub const EF_CONSTRUCTION_MAX: u16 = 4096;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header or the header's length says.
    #[error("frame truncated: {have} bytes, {need} needed")]
    Truncated {
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// More bytes than the header's length says.
    #[error("frame has {have} bytes, its header says {expected}")]
    TrailingBytes {
        /// Bytes the header accounts for.
        expected: u64,
        /// Bytes present.
        have: u64,
    },
    /// The first four bytes are not `VRTX`.
    #[error("bad magic {0:02x?}: not a VBP frame")]
    BadMagic([u8; 4]),
    /// A version this side does not speak.
    #[error("VBP version {version} is not supported (this side speaks version {VERSION})")]
    UnsupportedVersion {
        /// The frame's version.
        version: u16,
    },
    /// Flag bits or reserved fields that must be zero are not.
    #[error("reserved header bits are set (flags {flags:#06x})")]
    ReservedBits {
        /// The flags.
        flags: u16,
    },
    /// Unknown opcode, or one not valid in this direction.
    #[error("opcode {opcode:#06x} is not valid {direction}")]
    BadOpcode {
        /// The opcode.
        opcode: u16,
        /// `in a request` or `in a response`.
        direction: &'static str,
    },
    /// Longer than `frame_size_max_bytes`.
    #[error("frame of {length} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's length.
        length: u64,
        /// The limit.
        max: u32,
    },
    /// The frame does not start on a 16-byte boundary.
    #[error("frame is not 16-byte aligned")]
    Misaligned,
    /// Padding after the body is not zero.
    #[error("padding bytes after the body are not zero")]
    NonZeroPadding,
    /// CRC32C mismatch.
    #[error("checksum mismatch: header says {expected:#010x}, frame hashes to {actual:#010x}")]
    Checksum {
        /// Sent.
        expected: u32,
        /// Computed.
        actual: u32,
    },
    /// rkyv's checked access refused the body.
    #[error("malformed {opcode:?} body: {detail}")]
    Malformed {
        /// The opcode.
        opcode: Opcode,
        /// rkyv's description.
        detail: String,
    },
    /// A value out of range or inconsistent.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// The field, dotted (`search.k`).
        field: &'static str,
        /// What is wrong and what is accepted.
        detail: String,
    },
    /// A vector's length differs from the dimension expected.
    #[error("dimension mismatch: expected {expected}, got {actual}")]
    DimensionMismatch {
        /// Expected dimension.
        expected: u32,
        /// Actual length.
        actual: u64,
    },
}

impl FrameError {
    /// The wire error code a server answers this with.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::BadOpcode { .. } => ErrorCode::UnknownOpcode,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::Invalid { .. } => ErrorCode::InvalidArgument,
            FrameError::DimensionMismatch { .. } => ErrorCode::DimensionMismatch,
            _ => ErrorCode::BadFrame,
        }
    }
}

impl FrameError {
    /// Whether the stream is lost with this error (the next frame's start is unknown), so the
    /// connection must close. Every other error is answered with an error frame carrying the
    /// request's id, and the connection goes on: this is the version rule too, since a frame
    /// of another version is framed by the same header and refused on its own.
    pub fn closes_connection(&self) -> bool {
        matches!(self, FrameError::BadMagic(_) | FrameError::TooLarge { .. })
    }

    /// The error frame a server answers with.
    pub fn to_response(&self) -> Response {
        Response::error(self.code(), self.to_string())
    }
}

fn invalid(field: &'static str, detail: impl Into<String>) -> FrameError {
    FrameError::Invalid {
        field,
        detail: detail.into(),
    }
}

/// A frame that passed the header, layout and checksum checks.
#[derive(Debug, Clone, Copy)]
pub struct CheckedFrame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// The opcode.
    pub opcode: Opcode,
    /// The body without padding.
    pub body: &'a [u8],
}

/// A validated upsert, its vectors read in place.
#[derive(Debug, Clone, Copy)]
pub struct UpsertView<'a> {
    /// The archived body.
    pub body: &'a ArchivedUpsert,
    /// All vectors, flat, in the frame's memory.
    pub vectors: &'a [f32],
}

impl<'a> UpsertView<'a> {
    /// The batch's dimension.
    pub fn dimension(&self) -> u32 {
        self.body.dimension.to_native()
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.body.ids.len()
    }

    /// Whether the batch is empty (never, once validated).
    pub fn is_empty(&self) -> bool {
        self.body.ids.is_empty()
    }

    /// Point `index`'s id and vector.
    pub fn point(&self, index: usize) -> Option<(u64, &'a [f32])> {
        let id = self.body.ids.get(index)?.to_native();
        let dimension = self.dimension() as usize;
        let vector = self
            .vectors
            .get(index * dimension..(index + 1) * dimension)?;
        Some((id, vector))
    }

    /// Checks the batch against a collection's dimension.
    pub fn expect_dimension(&self, expected: u32) -> Result<(), FrameError> {
        if self.dimension() == expected {
            Ok(())
        } else {
            Err(FrameError::DimensionMismatch {
                expected,
                actual: u64::from(self.dimension()),
            })
        }
    }
}

/// A validated search, its query vector read in place.
#[derive(Debug, Clone, Copy)]
pub struct SearchView<'a> {
    /// The archived body.
    pub body: &'a ArchivedSearch,
    /// The query vector in the frame's memory.
    pub vector: &'a [f32],
}

impl<'a> SearchView<'a> {
    /// The query vector, checked against a collection's dimension.
    pub fn vector_for(&self, dimension: u32) -> Result<&'a [f32], FrameError> {
        if self.vector.len() as u64 == u64::from(dimension) {
            Ok(self.vector)
        } else {
            Err(FrameError::DimensionMismatch {
                expected: dimension,
                actual: self.vector.len() as u64,
            })
        }
    }
}

/// A validated request, body in place.
#[derive(Debug, Clone, Copy)]
pub enum RequestRef<'a> {
    /// `Ping`.
    Ping(&'a ArchivedPing),
    /// `CreateCollection`.
    CreateCollection(&'a ArchivedCollectionSpec),
    /// `DropCollection`.
    DropCollection(&'a ArchivedCollectionRef),
    /// `ListCollections`.
    ListCollections,
    /// `DescribeCollection`.
    DescribeCollection(&'a ArchivedCollectionRef),
    /// `Upsert`.
    Upsert(UpsertView<'a>),
    /// `Delete`.
    Delete(&'a ArchivedDelete),
    /// `Get`.
    Get(&'a ArchivedGet),
    /// `Search`.
    Search(SearchView<'a>),
    /// `Count`.
    Count(&'a ArchivedCount),
    /// `Stats`.
    Stats,
    /// `Scrub`.
    Scrub,
    /// `Fenced`.
    Fenced,
}

impl RequestRef<'_> {
    /// An owned copy (for tests, tools and the in-test server; the dataplane reads in place).
    pub fn to_request(&self) -> Result<Request, FrameError> {
        fn de<T, A>(opcode: Opcode, archived: &A) -> Result<T, FrameError>
        where
            A: rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<CheckError>>,
        {
            rkyv::deserialize::<T, CheckError>(archived).map_err(|error| FrameError::Malformed {
                opcode,
                detail: error.to_string(),
            })
        }
        Ok(match self {
            RequestRef::Ping(body) => Request::Ping(de(Opcode::Ping, *body)?),
            RequestRef::CreateCollection(body) => {
                Request::CreateCollection(de(Opcode::CreateCollection, *body)?)
            }
            RequestRef::DropCollection(body) => {
                Request::DropCollection(de(Opcode::DropCollection, *body)?)
            }
            RequestRef::ListCollections => Request::ListCollections,
            RequestRef::DescribeCollection(body) => {
                Request::DescribeCollection(de(Opcode::DescribeCollection, *body)?)
            }
            RequestRef::Upsert(view) => Request::Upsert(de(Opcode::Upsert, view.body)?),
            RequestRef::Delete(body) => Request::Delete(de(Opcode::Delete, *body)?),
            RequestRef::Get(body) => Request::Get(de(Opcode::Get, *body)?),
            RequestRef::Search(view) => Request::Search(de(Opcode::Search, view.body)?),
            RequestRef::Count(body) => Request::Count(de(Opcode::Count, *body)?),
            RequestRef::Stats => Request::Stats,
            RequestRef::Scrub => Request::Scrub,
            RequestRef::Fenced => Request::Fenced,
        })
    }
}

/// Checks frames. Cheap to copy; one per LEU or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutValidator {
    frame_size_max_bytes: u32,
}

impl Default for LayoutValidator {
    fn default() -> Self {
        LayoutValidator::new(FRAME_SIZE_MAX_BYTES_DEFAULT)
    }
}

impl LayoutValidator {
    /// A validator refusing frames longer than `frame_size_max_bytes` (header included).
    pub fn new(frame_size_max_bytes: u32) -> Self {
        LayoutValidator {
            frame_size_max_bytes: frame_size_max_bytes.max(HEADER_BYTES as u32),
        }
    }

    /// The frame length limit.
    pub fn frame_size_max_bytes(&self) -> u32 {
        self.frame_size_max_bytes
    }

    /// Header checks alone (what a stream decoder needs to find the frame's end): magic,
    /// version, length. A frame of another version is still framed by its length (the header
    /// layout is the same in every version), so a server can answer it with an error.
    pub fn check_framing(&self, header: &FrameHeader) -> Result<u64, FrameError> {
        if header.magic != MAGIC {
            return Err(FrameError::BadMagic(header.magic));
        }
        let length = header.frame_length();
        if length > u64::from(self.frame_size_max_bytes) {
            return Err(FrameError::TooLarge {
                length,
                max: self.frame_size_max_bytes,
            });
        }
        Ok(length)
    }

    /// Header, layout and checksum checks of one whole frame; `response` says which
    /// direction the caller expects.
    pub fn check<'a>(
        &self,
        frame: &'a [u8],
        response: bool,
    ) -> Result<CheckedFrame<'a>, FrameError> {
        let Some(header) = FrameHeader::parse(frame) else {
            return Err(FrameError::Truncated {
                need: HEADER_BYTES as u64,
                have: frame.len() as u64,
            });
        };
        let length = self.check_framing(&header)?;
        if header.version != VERSION {
            return Err(FrameError::UnsupportedVersion {
                version: header.version,
            });
        }
        // FAN_OUT is a request's option, and only a search's.
        let fan_out = if !response && header.opcode == Opcode::Search as u16 {
            FLAG_FAN_OUT
        } else {
            0
        };
        if header.flags & !(FLAG_RESPONSE | fan_out) != 0
            || header.reserved_a != 0
            || header.reserved_b != 0
        {
            return Err(FrameError::ReservedBits {
                flags: header.flags,
            });
        }
        let direction = if response {
            "in a response"
        } else {
            "in a request"
        };
        let opcode = match Opcode::from_u16(header.opcode) {
            Some(opcode)
                if header.is_response() == response && (response || !opcode.response_only()) =>
            {
                opcode
            }
            _ => {
                return Err(FrameError::BadOpcode {
                    opcode: header.opcode,
                    direction,
                })
            }
        };
        let have = frame.len() as u64;
        if have < length {
            return Err(FrameError::Truncated { need: length, have });
        }
        if have > length {
            return Err(FrameError::TrailingBytes {
                expected: length,
                have,
            });
        }
        if !(frame.as_ptr() as usize).is_multiple_of(FRAME_ALIGN) {
            return Err(FrameError::Misaligned);
        }
        let body_end = HEADER_BYTES + header.body_length as usize;
        if frame[body_end..].iter().any(|&byte| byte != 0) {
            return Err(FrameError::NonZeroPadding);
        }
        let actual = frame_checksum(frame);
        if actual != header.checksum {
            return Err(FrameError::Checksum {
                expected: header.checksum,
                actual,
            });
        }
        Ok(CheckedFrame {
            header,
            opcode,
            body: &frame[HEADER_BYTES..body_end],
        })
    }

    /// Validates a request frame completely and returns its body in place.
    pub fn request<'a>(
        &self,
        frame: &'a [u8],
    ) -> Result<(FrameHeader, RequestRef<'a>), FrameError> {
        let checked = self.check(frame, false)?;
        let request = request_body(checked.opcode, checked.body)?;
        Ok((checked.header, request))
    }

    /// Validates a response frame and returns it owned (clients copy; servers never do).
    pub fn response(&self, frame: &[u8]) -> Result<(FrameHeader, Response), FrameError> {
        let checked = self.check(frame, true)?;
        let response = response_body(checked.opcode, checked.body)?;
        Ok((checked.header, response))
    }
}

fn access<'a, T>(opcode: Opcode, body: &'a [u8]) -> Result<&'a T, FrameError>
where
    T: rkyv::Portable
        + for<'b> bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, CheckError>>,
{
    rkyv::access::<T, CheckError>(body).map_err(|error| FrameError::Malformed {
        opcode,
        detail: error.to_string(),
    })
}

fn expect_empty(opcode: Opcode, body: &[u8]) -> Result<(), FrameError> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(FrameError::Malformed {
            opcode,
            detail: format!("{} body bytes where none belong", body.len()),
        })
    }
}

fn request_body(opcode: Opcode, body: &[u8]) -> Result<RequestRef<'_>, FrameError> {
    Ok(match opcode {
        Opcode::Ping => RequestRef::Ping(access(opcode, body)?),
        Opcode::CreateCollection => {
            let spec: &ArchivedCollectionSpec = access(opcode, body)?;
            check_spec(spec)?;
            RequestRef::CreateCollection(spec)
        }
        Opcode::DropCollection | Opcode::DescribeCollection => {
            let collection: &ArchivedCollectionRef = access(opcode, body)?;
            check_name("collection", collection.name.as_str())?;
            if opcode == Opcode::DropCollection {
                RequestRef::DropCollection(collection)
            } else {
                RequestRef::DescribeCollection(collection)
            }
        }
        Opcode::ListCollections => {
            expect_empty(opcode, body)?;
            RequestRef::ListCollections
        }
        Opcode::Stats => {
            expect_empty(opcode, body)?;
            RequestRef::Stats
        }
        Opcode::Scrub => {
            expect_empty(opcode, body)?;
            RequestRef::Scrub
        }
        Opcode::Fenced => {
            expect_empty(opcode, body)?;
            RequestRef::Fenced
        }
        Opcode::Upsert => {
            if body.len() > WRITE_BODY_BYTES_MAX {
                return Err(invalid(
                    "upsert",
                    format!(
                        "a body of {} bytes; expected at most {WRITE_BODY_BYTES_MAX}: split the batch",
                        body.len()
                    ),
                ));
            }
            RequestRef::Upsert(check_upsert(access(opcode, body)?)?)
        }
        Opcode::Delete => {
            let delete: &ArchivedDelete = access(opcode, body)?;
            check_name("delete.collection", delete.collection.as_str())?;
            check_id_count("delete.ids", delete.ids.len(), WRITE_POINTS_MAX)?;
            RequestRef::Delete(delete)
        }
        Opcode::Get => {
            let get: &ArchivedGet = access(opcode, body)?;
            check_name("get.collection", get.collection.as_str())?;
            check_id_count("get.ids", get.ids.len(), GET_IDS_MAX)?;
            RequestRef::Get(get)
        }
        Opcode::Search => RequestRef::Search(check_search(access(opcode, body)?)?),
        Opcode::Count => {
            let count: &ArchivedCount = access(opcode, body)?;
            check_name("count.collection", count.collection.as_str())?;
            if let Some(filter) = count.filter.as_ref() {
                check_filter(filter)?;
            }
            RequestRef::Count(count)
        }
        Opcode::Partial | Opcode::Error | Opcode::Throttled => {
            return Err(FrameError::BadOpcode {
                opcode: opcode as u16,
                direction: "in a request",
            })
        }
    })
}

fn response_body(opcode: Opcode, body: &[u8]) -> Result<Response, FrameError> {
    fn owned<T, A>(opcode: Opcode, body: &[u8]) -> Result<T, FrameError>
    where
        A: rkyv::Portable
            + for<'b> bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, CheckError>>
            + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<CheckError>>,
    {
        let archived: &A = access(opcode, body)?;
        rkyv::deserialize::<T, CheckError>(archived).map_err(|error| FrameError::Malformed {
            opcode,
            detail: error.to_string(),
        })
    }
    Ok(match opcode {
        Opcode::Ping => Response::Pong(owned::<Ping, ArchivedPing>(opcode, body)?),
        Opcode::CreateCollection => {
            expect_empty(opcode, body)?;
            Response::Created
        }
        Opcode::DropCollection => {
            expect_empty(opcode, body)?;
            Response::Dropped
        }
        Opcode::ListCollections => Response::Collections(owned::<
            CollectionList,
            ArchivedCollectionList,
        >(opcode, body)?),
        Opcode::DescribeCollection => Response::Collection(owned::<
            CollectionInfo,
            ArchivedCollectionInfo,
        >(opcode, body)?),
        Opcode::Upsert => Response::Upserted(owned::<WriteAck, ArchivedWriteAck>(opcode, body)?),
        Opcode::Delete => Response::Deleted(owned::<WriteAck, ArchivedWriteAck>(opcode, body)?),
        Opcode::Get => Response::Points(owned::<GetResult, ArchivedGetResult>(opcode, body)?),
        Opcode::Search => {
            Response::Hits(owned::<SearchResult, ArchivedSearchResult>(opcode, body)?)
        }
        Opcode::Count => {
            Response::Counted(owned::<CountResult, ArchivedCountResult>(opcode, body)?)
        }
        Opcode::Stats => Response::Stats(owned::<StatsResult, ArchivedStatsResult>(opcode, body)?),
        Opcode::Scrub => {
            expect_empty(opcode, body)?;
            Response::Scrubbing
        }
        Opcode::Fenced => {
            Response::FencedTables(owned::<FencedResult, ArchivedFencedResult>(opcode, body)?)
        }
        Opcode::Partial => {
            Response::Partial(owned::<PartialBody, ArchivedPartialBody>(opcode, body)?)
        }
        Opcode::Error => Response::Error(owned::<ErrorBody, ArchivedErrorBody>(opcode, body)?),
        Opcode::Throttled => {
            Response::Throttled(owned::<ThrottledBody, ArchivedThrottledBody>(opcode, body)?)
        }
    })
}

/// Views archived little-endian floats as native `f32` without copying.
fn as_f32_slice(values: &ArchivedVec<rkyv::rend::f32_le>) -> &[f32] {
    let slice = values.as_slice();
    #[cfg(target_endian = "little")]
    {
        // SAFETY: `f32_le` is `#[repr(C, align(4))]` around one `f32` (rend 0.5), so it has
        // f32's size and alignment, and on a little-endian target its bytes are the native
        // f32's. Every bit pattern is a valid f32. The slice borrows the same frame memory
        // for the same lifetime.
        unsafe { std::slice::from_raw_parts(slice.as_ptr().cast::<f32>(), slice.len()) }
    }
    #[cfg(not(target_endian = "little"))]
    compile_error!("VBP reads vectors in place and needs a little-endian target");
}

fn check_name(field: &'static str, name: &str) -> Result<(), FrameError> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(invalid(
            field,
            format!("{} bytes; expected 1 to {NAME_BYTES_MAX}", name.len()),
        ));
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'))
    {
        return Err(invalid(
            field,
            "expected only the characters A-Z a-z 0-9 _ - .",
        ));
    }
    Ok(())
}

fn check_key(field: &'static str, key: &str) -> Result<(), FrameError> {
    if key.is_empty() || key.len() > NAME_BYTES_MAX {
        return Err(invalid(
            field,
            format!("{} bytes; expected 1 to {NAME_BYTES_MAX}", key.len()),
        ));
    }
    Ok(())
}

fn check_dimension(field: &'static str, dimension: u32) -> Result<(), FrameError> {
    if (1..=DIMENSION_MAX).contains(&dimension) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{dimension}; expected 1 to {DIMENSION_MAX}"),
        ))
    }
}

fn check_finite(field: &'static str, values: &[f32]) -> Result<(), FrameError> {
    // One SIMD pass over the whole slice; the position is looked for only on error.
    if crate::simd::all_finite(values) {
        return Ok(());
    }
    let position = values
        .iter()
        .position(|value| !value.is_finite())
        .unwrap_or(0);
    Err(invalid(
        field,
        format!("value {position} is not finite (NaN or infinity)"),
    ))
}

fn check_spec(spec: &ArchivedCollectionSpec) -> Result<(), FrameError> {
    check_name("collection.name", spec.name.as_str())?;
    check_dimension("collection.dimension", spec.dimension.to_native())?;
    let m = spec.m.to_native();
    if !(M_MIN..=M_MAX).contains(&m) {
        return Err(invalid(
            "collection.m",
            format!("{m}; expected {M_MIN} to {M_MAX}"),
        ));
    }
    let ef_construction = spec.ef_construction.to_native();
    if !(1..=EF_CONSTRUCTION_MAX).contains(&ef_construction) {
        return Err(invalid(
            "collection.ef_construction",
            format!("{ef_construction}; expected 1 to {EF_CONSTRUCTION_MAX}"),
        ));
    }
    Ok(())
}

/// At least one id, and at most `max`.
fn check_id_count(field: &'static str, count: usize, max: usize) -> Result<(), FrameError> {
    if count == 0 {
        return Err(invalid(field, "empty; expected at least one id"));
    }
    if count > max {
        return Err(invalid(
            field,
            format!("{count} ids; expected at most {max}: split the batch"),
        ));
    }
    Ok(())
}

fn check_upsert(upsert: &ArchivedUpsert) -> Result<UpsertView<'_>, FrameError> {
    check_name("upsert.collection", upsert.collection.as_str())?;
    let dimension = upsert.dimension.to_native();
    check_dimension("upsert.dimension", dimension)?;
    check_id_count("upsert.ids", upsert.ids.len(), WRITE_POINTS_MAX)?;
    let count = upsert.ids.len() as u64;
    let expected = count * u64::from(dimension);
    if upsert.vectors.len() as u64 != expected {
        return Err(FrameError::DimensionMismatch {
            expected: dimension,
            actual: upsert.vectors.len() as u64 / count.max(1),
        });
    }
    let payloads = upsert.payloads.len() as u64;
    if payloads != 0 && payloads != count {
        return Err(invalid(
            "upsert.payloads",
            format!("{payloads} payloads for {count} points; expected none or one per point"),
        ));
    }
    for payload in upsert.payloads.iter() {
        check_payload(payload)?;
    }
    let vectors = as_f32_slice(&upsert.vectors);
    check_finite("upsert.vectors", vectors)?;
    Ok(UpsertView {
        body: upsert,
        vectors,
    })
}

fn check_payload(payload: &ArchivedPayload) -> Result<(), FrameError> {
    let fields = payload.fields.as_slice();
    if fields.len() > PAYLOAD_FIELDS_MAX {
        return Err(invalid(
            "payload.fields",
            format!(
                "{} fields; expected at most {PAYLOAD_FIELDS_MAX}",
                fields.len()
            ),
        ));
    }
    for (index, field) in fields.iter().enumerate() {
        check_key("payload.key", field.key.as_str())?;
        if fields[..index]
            .iter()
            .any(|earlier| earlier.key.as_str() == field.key.as_str())
        {
            return Err(invalid(
                "payload.key",
                format!(
                    "`{}` appears twice; keys must be unique",
                    field.key.as_str()
                ),
            ));
        }
        check_value("payload.value", &field.value)?;
    }
    Ok(())
}

fn check_value(field: &'static str, value: &ArchivedPayloadValue) -> Result<(), FrameError> {
    match value {
        ArchivedPayloadValue::Float(float) if !float.to_native().is_finite() => {
            Err(invalid(field, "float is not finite"))
        }
        ArchivedPayloadValue::StrList(list) if list.len() > LIST_VALUES_MAX => Err(invalid(
            field,
            format!("{} strings; expected at most {LIST_VALUES_MAX}", list.len()),
        )),
        _ => Ok(()),
    }
}

fn check_search(search: &ArchivedSearch) -> Result<SearchView<'_>, FrameError> {
    check_name("search.collection", search.collection.as_str())?;
    let dimension = u32::try_from(search.vector.len()).unwrap_or(u32::MAX);
    check_dimension("search.vector", dimension)?;
    let k = search.k.to_native();
    if !(1..=K_MAX).contains(&k) {
        return Err(invalid("search.k", format!("{k}; expected 1 to {K_MAX}")));
    }
    let ef = search.ef.to_native();
    if ef != 0 && !(k..=EF_MAX).contains(&ef) {
        return Err(invalid(
            "search.ef",
            format!("{ef}; expected 0 (the collection's default) or k ({k}) to {EF_MAX}"),
        ));
    }
    if let Some(filter) = search.filter.as_ref() {
        check_filter(filter)?;
    }
    let vector = as_f32_slice(&search.vector);
    check_finite("search.vector", vector)?;
    Ok(SearchView {
        body: search,
        vector,
    })
}

/// Checks a filter's shape: bounded size, children strictly before their parent (so the
/// graph is acyclic and evaluation in index order needs no recursion), sane leaves.
pub fn check_filter(filter: &ArchivedFilter) -> Result<(), FrameError> {
    let nodes = filter.nodes.as_slice();
    if nodes.is_empty() || nodes.len() > FILTER_NODES_MAX {
        return Err(invalid(
            "filter.nodes",
            format!("{} nodes; expected 1 to {FILTER_NODES_MAX}", nodes.len()),
        ));
    }
    for (index, node) in nodes.iter().enumerate() {
        let child_ok = |child: u32| (child as usize) < index;
        match node {
            ArchivedFilterNode::Eq { field, value } => {
                check_key("filter.field", field.as_str())?;
                check_value("filter.value", value)?;
            }
            ArchivedFilterNode::Range {
                field, min, max, ..
            } => {
                check_key("filter.field", field.as_str())?;
                let min = min.as_ref().map(|value| value.to_native());
                let max = max.as_ref().map(|value| value.to_native());
                if min.is_none() && max.is_none() {
                    return Err(invalid(
                        "filter.range",
                        "no bound; expected min, max or both",
                    ));
                }
                if min.is_some_and(f64::is_nan) || max.is_some_and(f64::is_nan) {
                    return Err(invalid("filter.range", "a bound is NaN"));
                }
            }
            ArchivedFilterNode::In { field, values } => {
                check_key("filter.field", field.as_str())?;
                if values.is_empty() || values.len() > LIST_VALUES_MAX {
                    return Err(invalid(
                        "filter.in",
                        format!("{} values; expected 1 to {LIST_VALUES_MAX}", values.len()),
                    ));
                }
                for value in values.iter() {
                    check_value("filter.value", value)?;
                }
            }
            ArchivedFilterNode::And(children) | ArchivedFilterNode::Or(children) => {
                if children.is_empty() {
                    return Err(invalid(
                        "filter.children",
                        "an and/or node without children",
                    ));
                }
                if let Some(child) = children.iter().find(|child| !child_ok(child.to_native())) {
                    return Err(invalid(
                        "filter.children",
                        format!(
                            "node {index} refers to node {}; children must come before their parent",
                            child.to_native()
                        ),
                    ));
                }
            }
            ArchivedFilterNode::Not(child) => {
                if !child_ok(child.to_native()) {
                    return Err(invalid(
                        "filter.children",
                        format!(
                            "node {index} refers to node {}; children must come before their parent",
                            child.to_native()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

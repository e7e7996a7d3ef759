//! Building frames from owned messages.
//!
//! The body is serialized by rkyv straight after a 32-byte header placeholder in one
//! 16-aligned buffer; then the padding is appended, the header written and the checksum
//! sealed. Nothing is copied after serialization.

use crate::check_error::CheckError;
use crate::header::{self, FrameHeader, Opcode, FRAME_ALIGN, HEADER_BYTES};
use crate::message::*;
use rkyv::util::AlignedVec;

/// A complete frame, 16-aligned.
pub type FrameBytes = AlignedVec<16>;

/// Why a frame could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The body does not fit a u32 length.
    #[error("frame body of {0} bytes is too large for VBP")]
    TooLarge(usize),
    /// rkyv could not serialize it.
    #[error("cannot serialize the frame body: {0}")]
    Serialize(String),
}

/// Every request, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Liveness check.
    Ping(Ping),
    /// Create a collection.
    CreateCollection(CollectionSpec),
    /// Drop a collection.
    DropCollection(CollectionRef),
    /// List collections.
    ListCollections,
    /// Describe a collection.
    DescribeCollection(CollectionRef),
    /// Upsert points.
    Upsert(Upsert),
    /// Delete points.
    Delete(Delete),
    /// Fetch points.
    Get(Get),
    /// Search.
    Search(Search),
    /// Count points.
    Count(Count),
    /// Statistics.
    Stats,
    /// Start a scrubber pass on every LEU.
    Scrub,
    /// The fenced tables of every LEU.
    Fenced,
}

impl Request {
    /// The request's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Ping(_) => Opcode::Ping,
            Request::CreateCollection(_) => Opcode::CreateCollection,
            Request::DropCollection(_) => Opcode::DropCollection,
            Request::ListCollections => Opcode::ListCollections,
            Request::DescribeCollection(_) => Opcode::DescribeCollection,
            Request::Upsert(_) => Opcode::Upsert,
            Request::Delete(_) => Opcode::Delete,
            Request::Get(_) => Opcode::Get,
            Request::Search(_) => Opcode::Search,
            Request::Count(_) => Opcode::Count,
            Request::Stats => Opcode::Stats,
            Request::Scrub => Opcode::Scrub,
            Request::Fenced => Opcode::Fenced,
        }
    }

    /// Builds the frame for this request.
    pub fn encode(&self, request_id: u64) -> Result<FrameBytes, EncodeError> {
        self.encode_flagged(request_id, 0)
    }

    /// Builds the frame for this request with header `flags` beside RESPONSE (clear): only
    /// [`crate::header::FLAG_FAN_OUT`] on a search is valid.
    pub fn encode_flagged(&self, request_id: u64, flags: u16) -> Result<FrameBytes, EncodeError> {
        let mut frame = self.encode_plain(request_id)?;
        if flags != 0 {
            // `flags` is the u16 at offset 8 of the header (header.rs); the checksum covers it.
            let old = u16::from_le_bytes([frame[8], frame[9]]);
            frame[8..10].copy_from_slice(&(old | flags).to_le_bytes());
            header::seal(&mut frame);
        }
        Ok(frame)
    }

    fn encode_plain(&self, request_id: u64) -> Result<FrameBytes, EncodeError> {
        let opcode = self.opcode();
        match self {
            Request::Ping(body) => encode_body(opcode, false, request_id, Some(body)),
            Request::CreateCollection(body) => encode_body(opcode, false, request_id, Some(body)),
            Request::DropCollection(body) | Request::DescribeCollection(body) => {
                encode_body(opcode, false, request_id, Some(body))
            }
            Request::ListCollections | Request::Stats | Request::Scrub | Request::Fenced => {
                encode_body::<Ping>(opcode, false, request_id, None)
            }
            Request::Upsert(body) => encode_body(opcode, false, request_id, Some(body)),
            Request::Delete(body) => encode_body(opcode, false, request_id, Some(body)),
            Request::Get(body) => encode_body(opcode, false, request_id, Some(body)),
            Request::Search(body) => encode_body(opcode, false, request_id, Some(body)),
            Request::Count(body) => encode_body(opcode, false, request_id, Some(body)),
        }
    }
}

/// Every response, owned.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// To `Ping`.
    Pong(Ping),
    /// To `CreateCollection` (empty body).
    Created,
    /// To `DropCollection` (empty body).
    Dropped,
    /// To `ListCollections`.
    Collections(CollectionList),
    /// To `DescribeCollection`.
    Collection(CollectionInfo),
    /// To `Upsert`.
    Upserted(WriteAck),
    /// To `Delete`.
    Deleted(WriteAck),
    /// To `Get`.
    Points(GetResult),
    /// To `Search`.
    Hits(SearchResult),
    /// To `Count`.
    Counted(CountResult),
    /// To `Stats`.
    Stats(StatsResult),
    /// To `Scrub` (empty body): every LEU's scrubber began a pass, or goes on with one.
    Scrubbing,
    /// To `Fenced`.
    FencedTables(FencedResult),
    /// Applied on some LEUs, failed on others: to an `Upsert` or `Delete`.
    Partial(PartialBody),
    /// A typed error, to any request.
    Error(ErrorBody),
    /// Overloaded, to any request.
    Throttled(ThrottledBody),
}

impl Response {
    /// The response's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Response::Pong(_) => Opcode::Ping,
            Response::Created => Opcode::CreateCollection,
            Response::Dropped => Opcode::DropCollection,
            Response::Collections(_) => Opcode::ListCollections,
            Response::Collection(_) => Opcode::DescribeCollection,
            Response::Upserted(_) => Opcode::Upsert,
            Response::Deleted(_) => Opcode::Delete,
            Response::Points(_) => Opcode::Get,
            Response::Hits(_) => Opcode::Search,
            Response::Counted(_) => Opcode::Count,
            Response::Stats(_) => Opcode::Stats,
            Response::Scrubbing => Opcode::Scrub,
            Response::FencedTables(_) => Opcode::Fenced,
            Response::Partial(_) => Opcode::Partial,
            Response::Error(_) => Opcode::Error,
            Response::Throttled(_) => Opcode::Throttled,
        }
    }

    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error(ErrorBody {
            code: code as u16,
            message: message.into(),
        })
    }

    /// Builds the frame for this response to request `request_id`.
    pub fn encode(&self, request_id: u64) -> Result<FrameBytes, EncodeError> {
        let opcode = self.opcode();
        match self {
            Response::Pong(body) => encode_body(opcode, true, request_id, Some(body)),
            Response::Created | Response::Dropped | Response::Scrubbing => {
                encode_body::<Ping>(opcode, true, request_id, None)
            }
            Response::Collections(body) => encode_body(opcode, true, request_id, Some(body)),
            Response::Collection(body) => encode_body(opcode, true, request_id, Some(body)),
            Response::Upserted(body) | Response::Deleted(body) => {
                encode_body(opcode, true, request_id, Some(body))
            }
            Response::Points(body) => encode_body(opcode, true, request_id, Some(body)),
            Response::Hits(body) => encode_body(opcode, true, request_id, Some(body)),
            Response::Counted(body) => encode_body(opcode, true, request_id, Some(body)),
            Response::Stats(body) => encode_body(opcode, true, request_id, Some(body)),
            Response::FencedTables(body) => encode_body(opcode, true, request_id, Some(body)),
            Response::Partial(body) => encode_body(opcode, true, request_id, Some(body)),
            Response::Error(body) => encode_body(opcode, true, request_id, Some(body)),
            Response::Throttled(body) => encode_body(opcode, true, request_id, Some(body)),
        }
    }
}

type Serializer<'a> =
    rkyv::api::high::HighSerializer<FrameBytes, rkyv::ser::allocator::ArenaHandle<'a>, CheckError>;

/// Serializes `body` (or nothing) behind a header into one sealed frame.
pub fn encode_body<T>(
    opcode: Opcode,
    response: bool,
    request_id: u64,
    body: Option<&T>,
) -> Result<FrameBytes, EncodeError>
where
    T: for<'a> rkyv::Serialize<Serializer<'a>>,
{
    let mut frame = FrameBytes::with_capacity(256);
    frame.extend_from_slice(&[0u8; HEADER_BYTES]);
    if let Some(body) = body {
        frame = rkyv::api::high::to_bytes_in::<_, CheckError>(body, frame)
            .map_err(|error| EncodeError::Serialize(error.to_string()))?;
    }
    let body_length = frame.len() - HEADER_BYTES;
    let body_length_u32 =
        u32::try_from(body_length).map_err(|_| EncodeError::TooLarge(body_length))?;
    let padding = (FRAME_ALIGN - body_length % FRAME_ALIGN) % FRAME_ALIGN;
    frame.extend_from_slice(&[0u8; FRAME_ALIGN][..padding]);
    let mut header_bytes = [0u8; HEADER_BYTES];
    FrameHeader::new(opcode, response, request_id, body_length_u32).write(&mut header_bytes);
    frame[..HEADER_BYTES].copy_from_slice(&header_bytes);
    header::seal(&mut frame);
    debug_assert_eq!(frame.len() % FRAME_ALIGN, 0);
    Ok(frame)
}

//! The stream decoder: VBP frames out of TCP receives, zero-copy where it can be.
//!
//! Received bytes arrive in pool buffers ([`Lease`]) in arbitrary pieces: a frame split over
//! several receives, many frames in one, a frame larger than any receive buffer. The decoder
//! turns them into [`FrameBuf`]s, each one whole frame, 16-aligned, in pool memory:
//!
//! - a frame that lies whole and aligned in one receive buffer is **not copied**: the
//!   `FrameBuf` is a slice of the shared buffer;
//! - a frame that straddles buffers is assembled in a fresh pool buffer (a large one if it
//!   does not fit a standard buffer): the only copy.
//!
//! Alignment: every frame is a multiple of 16 bytes long, so frame starts sit at stream
//! offsets that are multiples of 16. A receiver that places each receive at
//! [`StreamDecoder::receive_offset`] within its 4 KiB-aligned buffer therefore gets every
//! frame 16-aligned. A receiver that cannot choose the offset (kernel-provided buffers) still
//! gets correct frames; a misaligned one is copied into an aligned buffer and counted in
//! [`DecoderStats::copied_misaligned`].
//!
//! The decoder checks framing only (magic, length limit); the `LayoutValidator` checks the
//! rest when the frame is used. A framing error is fatal for the stream: the connection must
//! be closed, since the next frame's start is unknown.

use crate::header::{FrameHeader, FRAME_ALIGN, HEADER_BYTES};
use crate::pool::{BufferPool, Lease, PoolError, SharedBuffer};
use crate::validator::{FrameError, LayoutValidator};
use std::ops::Range;

/// Why the decoder stopped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamError {
    /// The stream is not VBP, or a frame is over the limit: close the connection.
    #[error("stream framing error: {0}")]
    Framing(#[from] FrameError),
    /// No pool buffer for assembly: throttle, then call again (no byte was lost).
    #[error("{0}")]
    Pool(#[from] PoolError),
    /// `push` was called before the previous receive was drained with `next_frame`.
    #[error("the previous receive buffer has not been drained")]
    NotDrained,
    /// A framing error happened earlier; the stream is unusable.
    #[error("the stream failed earlier and must be closed")]
    Failed,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Frames handed out in place.
    pub in_place: u64,
    /// Frames assembled across receive buffers.
    pub assembled: u64,
    /// Frames copied because the receive left them misaligned.
    pub copied_misaligned: u64,
    /// Bytes consumed.
    pub bytes: u64,
}

/// One whole frame in pool memory. Holds its buffer: the buffer returns to the pool when
/// every frame sliced from it (and every persistence lock on it) is gone.
#[derive(Debug, Clone)]
pub struct FrameBuf {
    buffer: SharedBuffer,
    range: Range<usize>,
    header: FrameHeader,
}

impl FrameBuf {
    /// The frame's bytes, header included; 16-aligned.
    pub fn bytes(&self) -> &[u8] {
        &self.buffer.as_slice()[self.range.clone()]
    }

    /// The parsed header (framing-checked only).
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    /// The pool buffer holding the frame, for a persistence lock.
    pub fn buffer(&self) -> &SharedBuffer {
        &self.buffer
    }
}

struct Chunk {
    buffer: SharedBuffer,
    position: usize,
    end: usize,
}

impl Chunk {
    fn remaining(&self) -> &[u8] {
        &self.buffer.as_slice()[self.position..self.end]
    }
}

struct Partial {
    lease: Lease,
    filled: usize,
    /// The frame's length, once its header is in.
    total: Option<usize>,
}

/// The frame being assembled, lent out ([`StreamDecoder::lend_partial`]) so that a receive
/// writes the rest of it straight into its buffer: no receive buffer is needed to finish it,
/// and nothing is copied. Whoever holds it owns the buffer until it is given back
/// ([`StreamDecoder::return_partial`]) or dropped (the buffer then returns to the pool).
pub struct LentPartial {
    lease: Lease,
    filled: usize,
    total: usize,
}

impl LentPartial {
    /// Where the frame's missing bytes go: exactly the rest of this frame, so a receive
    /// into it never takes bytes of the next one.
    pub fn missing(&mut self) -> &mut [u8] {
        let (filled, total) = (self.filled, self.total);
        &mut self.lease.as_mut_slice()[filled..total]
    }
}

impl std::fmt::Debug for LentPartial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LentPartial")
            .field("filled", &self.filled)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// Decodes one connection's byte stream.
pub struct StreamDecoder {
    pool: BufferPool,
    validator: LayoutValidator,
    pushed_bytes: u64,
    current: Option<Chunk>,
    partial: Option<Partial>,
    /// The partial frame is lent out for a receive into it.
    lent: bool,
    failed: bool,
    stats: DecoderStats,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("pushed_bytes", &self.pushed_bytes)
            .field("stats", &self.stats)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl StreamDecoder {
    /// A decoder taking assembly buffers from `pool` and framing limits from `validator`.
    pub fn new(pool: BufferPool, validator: LayoutValidator) -> Self {
        StreamDecoder {
            pool,
            validator,
            pushed_bytes: 0,
            current: None,
            partial: None,
            lent: false,
            failed: false,
            stats: DecoderStats::default(),
        }
    }

    /// Where the next received bytes should start within a 4 KiB-aligned buffer so that the
    /// frames in them come out aligned (see the module docs).
    pub fn receive_offset(&self) -> usize {
        (self.pushed_bytes % FRAME_ALIGN as u64) as usize
    }

    /// Counters.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Frames decoded so far, however they came out.
    pub fn frames_decoded(&self) -> u64 {
        self.stats.in_place + self.stats.assembled + self.stats.copied_misaligned
    }

    /// Whether bytes of an incomplete frame are held (or lent out for a receive).
    pub fn has_partial_frame(&self) -> bool {
        self.lent
            || self.partial.is_some()
            || self
                .current
                .as_ref()
                .is_some_and(|chunk| chunk.position < chunk.end)
    }

    /// The bytes still to come of the frame being assembled, once its length is known and
    /// no received bytes wait in the decoder (what [`lend_partial`](Self::lend_partial)
    /// would lend).
    pub fn partial_missing(&self) -> Option<usize> {
        if self.failed || self.lent || self.current.is_some() {
            return None;
        }
        let partial = self.partial.as_ref()?;
        Some(partial.total? - partial.filled)
    }

    /// The frame being assembled, when its length is known, no received bytes wait, and
    /// at least `min_missing` of its bytes are still to come: lent out, so that the caller
    /// receives the rest straight into it. Nothing may be pushed until it is given back.
    pub fn lend_partial(&mut self, min_missing: usize) -> Option<LentPartial> {
        if self.partial_missing()? < min_missing.max(1) {
            return None;
        }
        let partial = self.partial.take()?;
        let total = partial.total?;
        self.lent = true;
        Some(LentPartial {
            lease: partial.lease,
            filled: partial.filled,
            total,
        })
    }

    /// Gives back the frame lent by [`lend_partial`](Self::lend_partial), with `received`
    /// more bytes written at the start of its [`LentPartial::missing`] part.
    pub fn return_partial(&mut self, lent: LentPartial, received: usize) {
        let received = received.min(lent.total - lent.filled);
        self.pushed_bytes += received as u64;
        self.stats.bytes += received as u64;
        self.partial = Some(Partial {
            lease: lent.lease,
            filled: lent.filled + received,
            total: Some(lent.total),
        });
        self.lent = false;
    }

    /// Hands over the next received bytes: `buffer[range]`. Drain the previous ones with
    /// [`next_frame`](Self::next_frame) first.
    pub fn push(&mut self, buffer: Lease, range: Range<usize>) -> Result<(), StreamError> {
        if self.failed {
            return Err(StreamError::Failed);
        }
        if self.current.is_some() || self.lent {
            return Err(StreamError::NotDrained);
        }
        let end = range.end.min(buffer.capacity());
        let start = range.start.min(end);
        self.pushed_bytes += (end - start) as u64;
        if start < end {
            self.current = Some(Chunk {
                buffer: buffer.share(),
                position: start,
                end,
            });
        }
        Ok(())
    }

    /// The next complete frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<FrameBuf>, StreamError> {
        if self.failed {
            return Err(StreamError::Failed);
        }
        match self.step() {
            Err(StreamError::Framing(error)) => {
                self.failed = true;
                self.current = None;
                self.partial = None;
                Err(StreamError::Framing(error))
            }
            other => other,
        }
    }

    fn step(&mut self) -> Result<Option<FrameBuf>, StreamError> {
        if self.lent {
            return Ok(None);
        }
        if self.partial.is_some() {
            return self.continue_partial();
        }
        let Some(chunk) = self.current.as_mut() else {
            return Ok(None);
        };
        let available = chunk.end - chunk.position;
        if available == 0 {
            self.current = None;
            return Ok(None);
        }
        if available < HEADER_BYTES {
            let mut lease = self.pool.lease(crate::pool::SizeClass::Standard)?;
            lease.as_mut_slice()[..available].copy_from_slice(chunk.remaining());
            self.stats.bytes += available as u64;
            self.partial = Some(Partial {
                lease,
                filled: available,
                total: None,
            });
            self.current = None;
            return Ok(None);
        }
        let header = FrameHeader::parse(chunk.remaining()).ok_or(FrameError::Truncated {
            need: HEADER_BYTES as u64,
            have: available as u64,
        })?;
        let total = self.validator.check_framing(&header)? as usize;
        if available >= total {
            let start = chunk.position;
            let aligned =
                (chunk.buffer.as_slice().as_ptr() as usize + start).is_multiple_of(FRAME_ALIGN);
            let frame = if aligned {
                self.stats.in_place += 1;
                FrameBuf {
                    buffer: chunk.buffer.clone(),
                    range: start..start + total,
                    header,
                }
            } else {
                let mut lease = self.pool.lease_for(total)?;
                lease.as_mut_slice()[..total].copy_from_slice(&chunk.remaining()[..total]);
                self.stats.copied_misaligned += 1;
                FrameBuf {
                    buffer: lease.share(),
                    range: 0..total,
                    header,
                }
            };
            chunk.position += total;
            self.stats.bytes += total as u64;
            if chunk.position == chunk.end {
                self.current = None;
            }
            return Ok(Some(frame));
        }
        // The frame continues in later receives: assemble it.
        let mut lease = self.pool.lease_for(total)?;
        lease.as_mut_slice()[..available].copy_from_slice(chunk.remaining());
        self.stats.bytes += available as u64;
        self.partial = Some(Partial {
            lease,
            filled: available,
            total: Some(total),
        });
        self.current = None;
        Ok(None)
    }

    fn continue_partial(&mut self) -> Result<Option<FrameBuf>, StreamError> {
        let whole = self
            .partial
            .as_ref()
            .is_some_and(|p| p.total == Some(p.filled));
        if whole {
            // Completed by a receive straight into it (`return_partial`).
            return self.finish_partial();
        }
        let Some(chunk) = self.current.as_mut() else {
            return Ok(None);
        };
        let Some(partial) = self.partial.as_mut() else {
            return Ok(None);
        };
        if partial.total.is_none() {
            let wanted = HEADER_BYTES - partial.filled;
            let taken = wanted.min(chunk.end - chunk.position);
            partial.lease.as_mut_slice()[partial.filled..partial.filled + taken]
                .copy_from_slice(&chunk.remaining()[..taken]);
            partial.filled += taken;
            chunk.position += taken;
            self.stats.bytes += taken as u64;
            if partial.filled < HEADER_BYTES {
                self.current = None;
                return Ok(None);
            }
            let header =
                FrameHeader::parse(partial.lease.as_slice()).ok_or(FrameError::Truncated {
                    need: HEADER_BYTES as u64,
                    have: partial.filled as u64,
                })?;
            let total = self.validator.check_framing(&header)? as usize;
            if total > partial.lease.capacity() {
                // Invariant: only the header is in, so the move copies 32 bytes.
                let mut larger = self.pool.lease_for(total)?;
                larger.as_mut_slice()[..partial.filled]
                    .copy_from_slice(&partial.lease.as_slice()[..partial.filled]);
                partial.lease = larger;
            }
            partial.total = Some(total);
        }
        let total = partial.total.unwrap_or(HEADER_BYTES);
        let taken = (total - partial.filled).min(chunk.end - chunk.position);
        partial.lease.as_mut_slice()[partial.filled..partial.filled + taken]
            .copy_from_slice(&chunk.remaining()[..taken]);
        partial.filled += taken;
        chunk.position += taken;
        self.stats.bytes += taken as u64;
        if chunk.position == chunk.end {
            self.current = None;
        }
        if partial.filled < total {
            return Ok(None);
        }
        self.finish_partial()
    }

    /// The assembled frame, out of the partial (whose header was parsed when its length
    /// became known).
    fn finish_partial(&mut self) -> Result<Option<FrameBuf>, StreamError> {
        let Some(partial) = self.partial.take() else {
            return Ok(None);
        };
        let total = partial.total.unwrap_or(partial.filled);
        let header = FrameHeader::parse(partial.lease.as_slice()).ok_or(FrameError::Truncated {
            need: HEADER_BYTES as u64,
            have: partial.filled as u64,
        })?;
        self.stats.assembled += 1;
        Ok(Some(FrameBuf {
            buffer: partial.lease.share(),
            range: 0..total,
            header,
        }))
    }
}

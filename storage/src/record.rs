//! The log record format shared by WAL segments and the MANIFEST (docs/STORAGE.md).
//!
//! A log is a sequence of 32 KiB blocks. A record is written as one or more *fragments*, each
//! a 16-byte header and a payload that never crosses a block boundary:
//!
//! ```text
//! offset  size  field
//!      0     4  crc32c     CRC32C of bytes 4..16 of the header, then the fragment payload
//!      4     2  length     payload bytes in this fragment (little-endian)
//!      6     1  fragment   1 FULL, 2 FIRST, 3 MIDDLE, 4 LAST
//!      7     1  kind       the record's type, chosen by the log's user (never 0)
//!      8     8  sequence   the record's sequence number (little-endian, never 0)
//! ```
//!
//! A record that fits in what is left of the block is one FULL fragment; a longer one is a
//! FIRST, any MIDDLEs and a LAST, each carrying the record's kind and sequence number so that
//! a fragment from another record cannot be spliced in unnoticed.
//!
//! Invariant: a fragment header never starts in the last 15 bytes of a block; the writer fills
//! them with zeros and the reader skips them (and checks that they are zeros).
//!
//! Why blocks: a reader that meets damage can find the next record boundary again at the
//! next block start, which is what tells a torn tail (nothing valid after the damage) from
//! corruption in the middle of the log (valid records after it), and what salvage resumes at.

use std::fmt;

/// Bytes per block.
pub const BLOCK_BYTES: usize = 32 * 1024;
/// Bytes per fragment header.
pub const HEADER_BYTES: usize = 16;
/// The largest sequence number a log may hold: far beyond any real log, and far enough from
/// `u64::MAX` that arithmetic on it cannot overflow.
pub const SEQUENCE_MAX: u64 = 1 << 62;
/// How far above the last record's sequence number a fragment found inside a damaged block
/// may be to count as a record after the damage: no block holds more records than this.
const SEQUENCE_WINDOW_IN_BLOCK: u64 = (BLOCK_BYTES / HEADER_BYTES) as u64;
/// The most payload one fragment carries.
pub const FRAGMENT_PAYLOAD_MAX_BYTES: usize = BLOCK_BYTES - HEADER_BYTES;

/// A fragment's place in its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fragment {
    /// The whole record.
    Full = 1,
    /// Its first part.
    First = 2,
    /// A part that is neither first nor last.
    Middle = 3,
    /// Its last part.
    Last = 4,
}

impl Fragment {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Fragment::Full),
            2 => Some(Fragment::First),
            3 => Some(Fragment::Middle),
            4 => Some(Fragment::Last),
            _ => None,
        }
    }
}

/// A decoded fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The stored checksum.
    pub crc: u32,
    /// Payload bytes.
    pub length: u16,
    /// Place in the record.
    pub fragment: Fragment,
    /// Record type.
    pub kind: u8,
    /// Record sequence number.
    pub sequence: u64,
}

/// Encodes a fragment header, checksum included, into `out` (16 bytes).
pub fn encode_header(out: &mut [u8], fragment: Fragment, kind: u8, sequence: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= FRAGMENT_PAYLOAD_MAX_BYTES);
    debug_assert!(kind != 0 && sequence != 0);
    out[4..6].copy_from_slice(&(payload.len() as u16).to_le_bytes());
    out[6] = fragment as u8;
    out[7] = kind;
    out[8..16].copy_from_slice(&sequence.to_le_bytes());
    let crc = fragment_crc(&out[4..HEADER_BYTES], payload);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// The checksum of a fragment: CRC32C over header bytes 4..16 (`header_tail`), then the
/// payload.
pub fn fragment_crc(header_tail: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header_tail), payload)
}

/// The bytes a record of `payload_bytes` takes when it starts at `position` in the log,
/// block-trailer padding included.
pub fn framed_bytes(position: u64, payload_bytes: usize) -> u64 {
    let mut position = position;
    let start = position;
    let mut left = payload_bytes;
    loop {
        let in_block = BLOCK_BYTES - (position % BLOCK_BYTES as u64) as usize;
        if in_block < HEADER_BYTES {
            position += in_block as u64;
            continue;
        }
        let take = left.min(in_block - HEADER_BYTES);
        position += (HEADER_BYTES + take) as u64;
        left -= take;
        if left == 0 {
            return position - start;
        }
    }
}

/// Writes the fragments of one record at log position `position`, through `put`, which
/// receives each (log position, bytes) piece in order; returns the position after the record.
/// Block-trailer zeros are put too, so the caller's buffer never holds stale bytes there.
pub fn frame(
    position: u64,
    kind: u8,
    sequence: u64,
    payload: &[u8],
    mut put: impl FnMut(u64, &[u8]),
) -> u64 {
    const ZEROS: [u8; HEADER_BYTES] = [0; HEADER_BYTES];
    let mut position = position;
    let mut rest = payload;
    let mut first = true;
    loop {
        let in_block = BLOCK_BYTES - (position % BLOCK_BYTES as u64) as usize;
        if in_block < HEADER_BYTES {
            put(position, &ZEROS[..in_block]);
            position += in_block as u64;
            continue;
        }
        let take = rest.len().min(in_block - HEADER_BYTES);
        let last = take == rest.len();
        let fragment = match (first, last) {
            (true, true) => Fragment::Full,
            (true, false) => Fragment::First,
            (false, false) => Fragment::Middle,
            (false, true) => Fragment::Last,
        };
        let mut header = [0u8; HEADER_BYTES];
        encode_header(&mut header, fragment, kind, sequence, &rest[..take]);
        put(position, &header);
        put(position + HEADER_BYTES as u64, &rest[..take]);
        position += (HEADER_BYTES + take) as u64;
        rest = &rest[take..];
        first = false;
        if last {
            return position;
        }
    }
}

/// The bytes of one record framed at log position `position`: what the log holds from
/// `position` to `position + framed_bytes(position, payload.len())`.
pub fn framed(position: u64, kind: u8, sequence: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; framed_bytes(position, payload.len()) as usize];
    frame(position, kind, sequence, payload, |at, piece| {
        let at = (at - position) as usize;
        bytes[at..at + piece.len()].copy_from_slice(piece);
    });
    bytes
}

/// A whole log holding `records` (kind, sequence, payload) from position 0.
pub fn encode_log(records: &[(u8, u64, Vec<u8>)]) -> Vec<u8> {
    let mut log = Vec::new();
    for (kind, sequence, payload) in records {
        let bytes = framed(log.len() as u64, *kind, *sequence, payload);
        log.extend_from_slice(&bytes);
    }
    log
}

/// Why the bytes at an offset are not a valid fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// The header is zeros but non-zero bytes follow.
    ZerosThenData,
    /// A non-zero byte in a block trailer.
    DirtyTrailer,
    /// The log ends inside a header.
    TruncatedHeader,
    /// The payload runs past the end of the log.
    TruncatedPayload,
    /// The fragment type byte is unknown.
    UnknownFragment,
    /// Kind or sequence number 0.
    ZeroField,
    /// The payload runs past the end of its block.
    OverrunsBlock,
    /// The checksum does not match.
    Checksum,
    /// A MIDDLE or LAST without a FIRST, a FIRST or FULL inside a record, or a fragment whose
    /// kind or sequence number differs from its record's.
    OutOfOrder,
    /// A record's sequence number is not above the one before it.
    SequenceRegression,
    /// A sequence number above [`SEQUENCE_MAX`].
    SequenceOutOfRange,
    /// A record longer than the reader's limit.
    RecordTooLarge,
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Defect::ZerosThenData => "a zero header followed by data",
            Defect::DirtyTrailer => "non-zero bytes in a block trailer",
            Defect::TruncatedHeader => "the log ends inside a fragment header",
            Defect::TruncatedPayload => "the log ends inside a fragment payload",
            Defect::UnknownFragment => "an unknown fragment type",
            Defect::ZeroField => "a zero kind or sequence number",
            Defect::OverrunsBlock => "a fragment longer than its block",
            Defect::Checksum => "a checksum mismatch",
            Defect::OutOfOrder => "a fragment out of order",
            Defect::SequenceRegression => "a sequence number not above the previous record's",
            Defect::SequenceOutOfRange => "a sequence number out of range",
            Defect::RecordTooLarge => "a record longer than the limit",
        })
    }
}

/// Damage found by a [`LogReader`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the first bad byte's fragment (or of the record it broke).
    pub offset: u64,
    /// What is wrong there.
    pub defect: Defect,
    /// The offset of the next valid fragment after the damage, if any: `None` means nothing
    /// valid follows (a torn tail), `Some` means the damage is in the middle of the log.
    pub resume: Option<u64>,
}

/// One record read back.
#[derive(Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Record type.
    pub kind: u8,
    /// Sequence number.
    pub sequence: u64,
    /// Offset of its first fragment.
    pub offset: u64,
    /// Offset just past its last fragment.
    pub end: u64,
    /// The payload.
    pub payload: &'a [u8],
}

/// Reads records from the bytes of one log file.
#[derive(Debug)]
pub struct LogReader<'a> {
    bytes: &'a [u8],
    position: usize,
    /// Payload of a record being assembled from fragments.
    assembled: Vec<u8>,
    /// End of the last whole record read: where a writer may continue.
    valid_end: u64,
    last_sequence: u64,
    record_bytes_max: usize,
}

/// What [`LogReader::next_record`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'r> {
    /// A whole record.
    Record(RecordRef<'r>),
    /// The log ends cleanly here (end of bytes, or zeros to the end).
    End,
    /// Damage; reading further continues at `resume` (salvage) or stops.
    Damaged(Damage),
}

impl<'a> LogReader<'a> {
    /// A reader over a whole log file. Records longer than `record_bytes_max` are damage.
    pub fn new(bytes: &'a [u8], record_bytes_max: usize) -> Self {
        LogReader {
            bytes,
            position: 0,
            assembled: Vec::new(),
            valid_end: 0,
            last_sequence: 0,
            record_bytes_max,
        }
    }

    /// The end of the last whole record read.
    pub fn valid_end(&self) -> u64 {
        self.valid_end
    }

    /// The sequence number of the last whole record read (0 before any).
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// Requires the next record's sequence number to be above `sequence`.
    pub fn set_last_sequence(&mut self, sequence: u64) {
        self.last_sequence = sequence;
    }

    /// Continues after damage at `offset` (a [`Damage::resume`]); fragments that continue a
    /// broken record are skipped up to the next record start.
    pub fn resume_at(&mut self, offset: u64) {
        self.position = (offset as usize).min(self.bytes.len());
        self.assembled.clear();
    }

    /// Reads the next record.
    pub fn next_record(&mut self) -> Step<'_> {
        let mut record_start: Option<(usize, u8, u64)> = None;
        self.assembled.clear();
        let mut single: Option<(usize, usize)> = None;
        loop {
            let at = self.position;
            match self.fragment_at(at) {
                Err(Some(defect)) => {
                    let offset = record_start.map_or(at, |(start, _, _)| start) as u64;
                    return Step::Damaged(Damage {
                        offset,
                        defect,
                        resume: self.find_valid_after(at),
                    });
                }
                Err(None) => {
                    // A clean end inside a record is a truncated record.
                    if let Some((start, _, _)) = record_start {
                        return Step::Damaged(Damage {
                            offset: start as u64,
                            defect: Defect::TruncatedPayload,
                            resume: None,
                        });
                    }
                    self.position = self.bytes.len();
                    return Step::End;
                }
                Ok((header, payload_at, next)) => {
                    let payload = payload_at..payload_at + header.length as usize;
                    let in_order = match (header.fragment, record_start) {
                        (Fragment::Full | Fragment::First, None) => true,
                        (Fragment::Middle | Fragment::Last, Some((_, kind, sequence))) => {
                            kind == header.kind && sequence == header.sequence
                        }
                        _ => false,
                    };
                    let regression =
                        record_start.is_none() && header.sequence <= self.last_sequence && in_order;
                    if !in_order || regression {
                        let offset = record_start.map_or(at, |(start, _, _)| start) as u64;
                        return Step::Damaged(Damage {
                            offset,
                            defect: if in_order {
                                Defect::SequenceRegression
                            } else {
                                Defect::OutOfOrder
                            },
                            resume: self.find_valid_after(at),
                        });
                    }
                    self.position = next;
                    match header.fragment {
                        Fragment::Full => single = Some((payload.start, payload.end)),
                        Fragment::First => {
                            record_start = Some((at, header.kind, header.sequence));
                            self.assembled.extend_from_slice(&self.bytes[payload]);
                        }
                        Fragment::Middle | Fragment::Last => {
                            self.assembled.extend_from_slice(&self.bytes[payload]);
                        }
                    }
                    if self.assembled.len() > self.record_bytes_max {
                        let (start, _, _) = record_start.unwrap_or((at, 0, 0));
                        return Step::Damaged(Damage {
                            offset: start as u64,
                            defect: Defect::RecordTooLarge,
                            resume: self.find_valid_after(at),
                        });
                    }
                    if matches!(header.fragment, Fragment::Full | Fragment::Last) {
                        let start = record_start.map_or(at, |(start, _, _)| start);
                        self.valid_end = next as u64;
                        self.last_sequence = header.sequence;
                        let payload = match single {
                            Some((from, to)) => &self.bytes[from..to],
                            None => &self.assembled[..],
                        };
                        return Step::Record(RecordRef {
                            kind: header.kind,
                            sequence: header.sequence,
                            offset: start as u64,
                            end: next as u64,
                            payload,
                        });
                    }
                }
            }
        }
    }

    /// The fragment at `at` (skipping a block trailer first): its header, payload offset and
    /// the offset after it; `Err(None)` at a clean end, `Err(Some(defect))` on damage.
    fn fragment_at(&mut self, at: usize) -> Result<(Header, usize, usize), Option<Defect>> {
        let mut at = at;
        let in_block = BLOCK_BYTES - at % BLOCK_BYTES;
        if in_block < HEADER_BYTES {
            let trailer_end = (at + in_block).min(self.bytes.len());
            if self.bytes[at..trailer_end].iter().any(|&byte| byte != 0) {
                return Err(Some(Defect::DirtyTrailer));
            }
            at = trailer_end;
            self.position = at;
        }
        if at >= self.bytes.len() {
            return Err(None);
        }
        let rest = &self.bytes[at..];
        if rest.len() < HEADER_BYTES {
            return if rest.iter().all(|&byte| byte == 0) {
                Err(None)
            } else {
                Err(Some(Defect::TruncatedHeader))
            };
        }
        if rest[..HEADER_BYTES].iter().all(|&byte| byte == 0) {
            return if rest.iter().all(|&byte| byte == 0) {
                Err(None)
            } else {
                Err(Some(Defect::ZerosThenData))
            };
        }
        let (header, payload_at) = check_fragment(self.bytes, at)?;
        let next = payload_at + header.length as usize;
        Ok((header, payload_at, next))
    }

    /// The offset of the first valid fragment after damage at `at`: in the rest of `at`'s
    /// block at any offset, then at each later block start.
    fn find_valid_after(&self, at: usize) -> Option<u64> {
        let block_end = ((at / BLOCK_BYTES) + 1) * BLOCK_BYTES;
        let in_block_end = block_end.min(self.bytes.len());
        // Inside the block, a valid-looking fragment could be an image embedded in some
        // payload; one that continues the log's numbering is not an accident.
        let window = self.last_sequence + 1..=self.last_sequence + SEQUENCE_WINDOW_IN_BLOCK;
        for candidate in at + 1..in_block_end {
            if let Ok((header, _)) = check_fragment(self.bytes, candidate) {
                if window.contains(&header.sequence) {
                    return Some(candidate as u64);
                }
            }
        }
        (block_end..self.bytes.len())
            .step_by(BLOCK_BYTES)
            .find(|&start| check_fragment(self.bytes, start).is_ok())
            .map(|start| start as u64)
    }
}

/// Whether a valid fragment starts at `at`: header fields in range, payload inside its block
/// and the log, checksum right.
fn check_fragment(bytes: &[u8], at: usize) -> Result<(Header, usize), Option<Defect>> {
    let in_block = BLOCK_BYTES - at % BLOCK_BYTES;
    if in_block < HEADER_BYTES {
        return Err(Some(Defect::DirtyTrailer));
    }
    let Some(raw) = bytes.get(at..at + HEADER_BYTES) else {
        return Err(Some(Defect::TruncatedHeader));
    };
    let length = u16::from_le_bytes([raw[4], raw[5]]);
    let Some(fragment) = Fragment::from_byte(raw[6]) else {
        return Err(Some(Defect::UnknownFragment));
    };
    let kind = raw[7];
    let mut sequence_bytes = [0u8; 8];
    sequence_bytes.copy_from_slice(&raw[8..16]);
    let sequence = u64::from_le_bytes(sequence_bytes);
    if kind == 0 || sequence == 0 {
        return Err(Some(Defect::ZeroField));
    }
    if sequence > SEQUENCE_MAX {
        return Err(Some(Defect::SequenceOutOfRange));
    }
    if length as usize > in_block - HEADER_BYTES {
        return Err(Some(Defect::OverrunsBlock));
    }
    let payload_at = at + HEADER_BYTES;
    let Some(payload) = bytes.get(payload_at..payload_at + length as usize) else {
        return Err(Some(Defect::TruncatedPayload));
    };
    let crc = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    if fragment_crc(&raw[4..HEADER_BYTES], payload) != crc {
        return Err(Some(Defect::Checksum));
    }
    Ok((
        Header {
            crc,
            length,
            fragment,
            kind,
            sequence,
        },
        payload_at,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Frames `records` into a log image starting at position 0.
    /// Frames `records` into a log image, checking each record's size against
    /// `framed_bytes`.
    fn log_of(records: &[(u8, u64, Vec<u8>)]) -> Vec<u8> {
        let log = encode_log(records);
        let mut position = 0;
        for (_, _, payload) in records {
            position += framed_bytes(position, payload.len());
        }
        assert_eq!(position, log.len() as u64);
        log
    }

    type Records = Vec<(u8, u64, Vec<u8>)>;

    fn read_all(log: &[u8]) -> (Records, Option<Damage>) {
        let mut reader = LogReader::new(log, usize::MAX);
        let mut records = Vec::new();
        loop {
            match reader.next_record() {
                Step::Record(record) => {
                    records.push((record.kind, record.sequence, record.payload.to_vec()))
                }
                Step::End => return (records, None),
                Step::Damaged(damage) => return (records, Some(damage)),
            }
        }
    }

    #[test]
    fn records_span_blocks_and_read_back() {
        let records = vec![
            (1, 1, vec![7u8; 100]),
            (2, 2, vec![8u8; BLOCK_BYTES * 2 + 5]),
            (1, 3, Vec::new()),
            (3, 4, vec![9u8; BLOCK_BYTES - 100 - 3 * HEADER_BYTES]),
            (1, 5, vec![1u8; 3]),
        ];
        let log = log_of(&records);
        let (read, damage) = read_all(&log);
        assert_eq!(damage, None);
        assert_eq!(read, records);
    }

    #[test]
    fn the_example_in_docs_storage_md_holds() {
        let log = log_of(&[(2, 7, vec![0xAA; 100]), (1, 8, vec![0xBB; 40_000])]);
        let header = |at: usize| log[at + 4..at + 16].to_vec();
        assert_eq!(header(0), [0x64, 0, 1, 2, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(header(0x74), [0x7c, 0x7f, 2, 1, 8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(header(0x8000), [0xc4, 0x1c, 4, 1, 8, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn trailer_is_zero_filled_and_skipped() {
        // The first record leaves 10 bytes in block 0: too few for a header.
        let first = BLOCK_BYTES - HEADER_BYTES - 10;
        let records = vec![(1, 1, vec![5u8; first]), (1, 2, vec![6u8; 20])];
        let log = log_of(&records);
        assert!(log[BLOCK_BYTES - 10..BLOCK_BYTES].iter().all(|&b| b == 0));
        assert_eq!(read_all(&log).0, records);
    }

    #[test]
    fn zeros_after_the_last_record_are_a_clean_end() {
        let mut log = log_of(&[(1, 1, vec![1u8; 50])]);
        log.resize(BLOCK_BYTES * 3, 0);
        let (read, damage) = read_all(&log);
        assert_eq!(read.len(), 1);
        assert_eq!(damage, None);
    }

    #[test]
    fn damage_with_records_after_it_names_where_to_resume() {
        let records: Vec<_> = (1..=5).map(|seq| (1u8, seq, vec![seq as u8; 40])).collect();
        let mut log = log_of(&records);
        let second = framed_bytes(0, 40) as usize;
        log[second + HEADER_BYTES + 3] ^= 0x10;
        let (read, damage) = read_all(&log);
        assert_eq!(read.len(), 1);
        let damage = damage.unwrap();
        assert_eq!(damage.offset, second as u64);
        assert_eq!(damage.defect, Defect::Checksum);
        assert_eq!(damage.resume, Some(2 * second as u64));
    }

    #[test]
    fn damage_in_the_last_record_has_nothing_after_it() {
        let records: Vec<_> = (1..=3).map(|seq| (1u8, seq, vec![seq as u8; 40])).collect();
        let mut log = log_of(&records);
        let last = 2 * framed_bytes(0, 40) as usize;
        log[last + 20] ^= 1;
        let (read, damage) = read_all(&log);
        assert_eq!(read.len(), 2);
        assert_eq!(damage.unwrap().resume, None);
    }

    #[test]
    fn a_sequence_regression_is_damage() {
        let log = log_of(&[(1, 5, vec![1]), (1, 5, vec![2])]);
        let (read, damage) = read_all(&log);
        assert_eq!(read.len(), 1);
        assert_eq!(damage.unwrap().defect, Defect::SequenceRegression);
    }

    proptest! {
        /// Any truncation of a log reads back a prefix of its records, and never reports
        /// records after the cut as valid.
        #[test]
        fn truncation_yields_a_prefix(
            sizes in proptest::collection::vec(0usize..40_000, 1..6),
            cut_fraction in 0.0f64..1.0,
        ) {
            let records: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| (1u8, i as u64 + 1, vec![i as u8 + 1; size]))
                .collect();
            let log = log_of(&records);
            let cut = (log.len() as f64 * cut_fraction) as usize;
            let (read, damage) = read_all(&log[..cut]);
            prop_assert!(read.len() <= records.len());
            prop_assert_eq!(&read[..], &records[..read.len()]);
            if let Some(damage) = damage {
                prop_assert_eq!(damage.resume, None);
            }
        }

        /// Arbitrary bytes never panic the reader, and it always makes progress.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            let mut reader = LogReader::new(&bytes, 1 << 20);
            for _ in 0..10_000 {
                match reader.next_record() {
                    Step::Record(_) => {}
                    Step::End => break,
                    Step::Damaged(damage) => match damage.resume {
                        Some(resume) => {
                            prop_assert!(resume as usize > damage.offset as usize);
                            reader.resume_at(resume);
                        }
                        None => break,
                    },
                }
            }
        }
    }
}

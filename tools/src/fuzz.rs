//! The bodies of the fuzz targets, as plain functions: the VBP frame validator and stream
//! decoder, the WAL's log reader with BOOT_REPLAY, the MANIFEST's edits, SSTable data
//! blocks, whole SSTable files, the shard's stored payloads and catalog file, HNSW
//! side-car index files, and `vortexctl`'s input parsers (`.npy` headers, JSON filters,
//! payloads and JSON Lines points).
//!
//! The libFuzzer targets in `tools/fuzz/` call these, and so does an ordinary test
//! (`tools/tests/fuzz_corpus.rs`) that replays the committed corpus on stable Rust: every
//! input the fuzzer ever kept is checked by `cargo test` too, with no nightly toolchain.
//!
//! Each function panics only when the code under test broke one of its promises (a frame
//! accepted that does not round-trip, a frame out of the decoder that is not the stream's
//! next bytes, a leaked pool buffer); libFuzzer reports that panic as a crash.

use vortex_vbp::codec::{FrameBytes, Request, Response};
use vortex_vbp::header::{self, FrameHeader, FRAME_ALIGN, HEADER_BYTES};
use vortex_vbp::pool::{BufferPool, PoolConfig, SizeClass};
use vortex_vbp::stream::{StreamDecoder, StreamError};
use vortex_vbp::validator::{FrameError, LayoutValidator, RequestRef};

use std::path::Path;
use vortex_storage::manifest::{self, Edit};
use vortex_storage::memtable::Key;
use vortex_storage::memtable::Point;
use vortex_storage::record::{
    self, LogReader, Step, BLOCK_BYTES, HEADER_BYTES as LOG_HEADER_BYTES,
};
use vortex_storage::sstable::block::{Block, BlockBuilder, BLOCK_UNIT_BYTES};
use vortex_storage::sstable::table::{Table, TableBuilder};
use vortex_storage::wal::{segment_name, Wal, WalOptions};
use vortex_storage::{Env, FaultEnv};

/// Mode bit of the validator target's first byte: rewrite the body length to the input's
/// length less the header (so the input should carry no padding; see [`MODE_PAD`]).
pub const MODE_FIX_LENGTH: u8 = 1;
/// Mode bit: pad to 16 bytes with zeros (after the length fix).
pub const MODE_PAD: u8 = 2;
/// Mode bit: recompute the checksum, so that mutations reach the body checks.
pub const MODE_SEAL: u8 = 4;
/// Mode bit: validate as a response instead of a request.
pub const MODE_RESPONSE: u8 = 8;
/// Mode bit: validate with a 256-byte frame limit.
pub const MODE_SMALL_LIMIT: u8 = 16;

/// Small limit used under [`MODE_SMALL_LIMIT`].
const SMALL_FRAME_SIZE_MAX_BYTES: u32 = 256;

/// Builds a validator-target input from a mode byte and a frame.
pub fn validator_input(mode: u8, frame: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(frame.len() + 1);
    input.push(mode);
    input.extend_from_slice(frame);
    input
}

/// Validator target: `data[0]` is a mode (the `MODE_*` bits), the rest a frame. The frame
/// is copied into a 16-aligned buffer, optionally repaired so that mutations get past the
/// length and checksum checks, then validated. Accepted frames must round-trip; refused
/// ones must turn into a valid error frame. Returns whether the frame was accepted.
pub fn validator(data: &[u8]) -> bool {
    let Some((&mode, input)) = data.split_first() else {
        return false;
    };
    let mut frame = FrameBytes::with_capacity(input.len() + FRAME_ALIGN);
    frame.extend_from_slice(input);
    if frame.len() >= HEADER_BYTES {
        if mode & MODE_FIX_LENGTH != 0 {
            let body_length = u32::try_from(frame.len() - HEADER_BYTES).unwrap_or(u32::MAX);
            frame[12..16].copy_from_slice(&body_length.to_le_bytes());
        }
        if mode & MODE_PAD != 0 {
            let padding = (FRAME_ALIGN - frame.len() % FRAME_ALIGN) % FRAME_ALIGN;
            frame.extend_from_slice(&[0u8; FRAME_ALIGN][..padding]);
        }
        if mode & MODE_SEAL != 0 {
            header::seal(&mut frame);
        }
    }
    let validator = if mode & MODE_SMALL_LIMIT != 0 {
        LayoutValidator::new(SMALL_FRAME_SIZE_MAX_BYTES)
    } else {
        LayoutValidator::default()
    };
    let request_id = FrameHeader::parse(&frame).map_or(0, |header| header.request_id);
    let refusal = if mode & MODE_RESPONSE != 0 {
        match validator.response(&frame) {
            Ok((header, response)) => {
                check_response_round_trip(&header, &response);
                None
            }
            Err(error) => Some(error),
        }
    } else {
        match validator.request(&frame) {
            Ok((header, request)) => {
                check_views_in_frame(&frame, &request);
                check_request_round_trip(&header, &request);
                None
            }
            Err(error) => Some(error),
        }
    };
    match refusal {
        Some(error) => {
            check_error_answer(&error, request_id);
            false
        }
        None => true,
    }
}

/// Vectors handed out in place must lie inside the frame and have the promised length.
fn check_views_in_frame(frame: &[u8], request: &RequestRef<'_>) {
    let frame_range = frame.as_ptr_range();
    let inside = |vector: &[f32]| {
        let range = vector.as_ptr_range();
        vector.is_empty()
            || (range.start.cast::<u8>() >= frame_range.start
                && range.end.cast::<u8>() <= frame_range.end)
    };
    match request {
        RequestRef::Upsert(view) => {
            assert!(inside(view.vectors), "upsert vectors outside the frame");
            assert_eq!(
                view.vectors.len() as u64,
                view.len() as u64 * u64::from(view.dimension()),
                "upsert vectors are not ids × dimension"
            );
            assert!(view.vectors.iter().all(|value| value.is_finite()));
        }
        RequestRef::Search(view) => {
            assert!(inside(view.vector), "search vector outside the frame");
            assert!(!view.vector.is_empty());
            assert!(view.vector.iter().all(|value| value.is_finite()));
        }
        _ => {}
    }
}

/// An accepted frame need not be laid out as rkyv would write it (a fuzzed archive may share
/// bytes between fields), so the re-encoded frame can be longer: it is checked under the
/// default limit.
fn check_request_round_trip(header: &FrameHeader, request: &RequestRef<'_>) {
    let owned: Request = request
        .to_request()
        .expect("a validated request must deserialize");
    let again = owned
        .encode(header.request_id)
        .expect("a validated request must encode");
    let (again_header, again_request) = LayoutValidator::default()
        .request(&again)
        .expect("a re-encoded request must validate");
    assert_eq!(again_header.request_id, header.request_id);
    assert_eq!(again_header.opcode, header.opcode);
    let again_owned = again_request
        .to_request()
        .expect("a re-encoded request must deserialize");
    let canonical = again_owned
        .encode(header.request_id)
        .expect("a round-tripped request must encode");
    assert_same_encoding(&canonical, &again, "request");
}

/// Round trips are compared as canonical encodings, not with `==`: floats then compare by
/// their bits, and a response's NaN (responses are not checked for finite floats: a client
/// takes what the server sent) equals itself.
fn assert_same_encoding(canonical: &[u8], first: &[u8], what: &str) {
    assert_eq!(canonical, first, "{what} changed in a round trip");
}

fn check_response_round_trip(header: &FrameHeader, response: &Response) {
    let again = response
        .encode(header.request_id)
        .expect("a validated response must encode");
    let (again_header, again_response) = LayoutValidator::default()
        .response(&again)
        .expect("a re-encoded response must validate");
    assert_eq!(again_header.request_id, header.request_id);
    let canonical = again_response
        .encode(header.request_id)
        .expect("a round-tripped response must encode");
    assert_same_encoding(&canonical, &again, "response");
}

/// Every refusal must become an error frame that a client accepts.
fn check_error_answer(error: &FrameError, request_id: u64) {
    let answer = error.to_response();
    let frame = answer
        .encode(request_id)
        .expect("an error answer must encode");
    let (header, decoded) = LayoutValidator::default()
        .response(&frame)
        .expect("an error answer must validate");
    assert_eq!(header.request_id, request_id);
    assert_eq!(decoded, answer);
}

/// Receive buffer size of the stream target.
const STREAM_BUFFER_BYTES: usize = 4096;
/// Frame limit of the stream target: a few receive buffers, so large frames are exercised.
const STREAM_FRAME_SIZE_MAX_BYTES: u32 = 3 * STREAM_BUFFER_BYTES as u32;
/// Most receives one input may make (bounds the time per input).
const STREAM_RECEIVES_MAX: usize = 4096;

/// Stream-decoder target: `data[0..2]` seed the receive sizes (and `data[2]` bit 0 forces
/// misaligned receives), the rest is the byte stream. The stream is received in pieces
/// into pool buffers; every frame that comes out must be exactly the stream's next bytes,
/// 16-aligned, whole; a framing error must stick; and no pool buffer may leak. Returns the
/// number of frames decoded.
pub fn stream(data: &[u8]) -> usize {
    if data.len() < 3 {
        return 0;
    }
    let mut seed = u32::from(u16::from_le_bytes([data[0], data[1]])) | 1;
    let misalign = data[2] & 1 != 0;
    let bytes = &data[3..];
    let pool = BufferPool::new(PoolConfig {
        buffer_bytes: STREAM_BUFFER_BYTES,
        buffer_count: 4,
        medium_buffer_bytes: 4 * STREAM_BUFFER_BYTES,
        medium_buffer_count: 1,
        large_buffer_bytes: 4 * STREAM_BUFFER_BYTES,
        large_buffer_count: 1,
    })
    .expect("the fuzz pool's configuration is valid");
    let validator = LayoutValidator::new(STREAM_FRAME_SIZE_MAX_BYTES);
    let mut decoder = StreamDecoder::new(pool.clone(), validator);
    let mut sent = 0usize;
    let mut consumed = 0usize;
    let mut failed = false;
    let mut frames = 0usize;
    for _ in 0..STREAM_RECEIVES_MAX {
        if sent == bytes.len() || failed {
            break;
        }
        // xorshift32: receive sizes from 1 to a buffer, weighted towards small ones.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let offset = if misalign {
            (seed >> 24) as usize % FRAME_ALIGN
        } else {
            decoder.receive_offset()
        };
        let room = STREAM_BUFFER_BYTES - offset;
        let size_max = if seed & 0x100 != 0 { 64 } else { room };
        let size = (seed as usize % size_max + 1)
            .min(room)
            .min(bytes.len() - sent);
        let Ok(mut lease) = pool.lease(SizeClass::Standard) else {
            // Every buffer is held by the decoder: the reactor would throttle. The frames
            // we took are dropped, so this only happens while a frame is being assembled.
            break;
        };
        lease.as_mut_slice()[offset..offset + size].copy_from_slice(&bytes[sent..sent + size]);
        decoder
            .push(lease, offset..offset + size)
            .expect("push after draining must succeed");
        sent += size;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let frame_bytes = frame.bytes();
                    assert_eq!(frame_bytes.as_ptr() as usize % FRAME_ALIGN, 0);
                    assert_eq!(frame_bytes.len() as u64, frame.header().frame_length());
                    assert!(frame_bytes.len() <= STREAM_FRAME_SIZE_MAX_BYTES as usize);
                    assert_eq!(
                        frame_bytes,
                        &bytes[consumed..consumed + frame_bytes.len()],
                        "a frame is not the stream's next bytes"
                    );
                    consumed += frame_bytes.len();
                    frames += 1;
                    if let Err(error) = validator.request(frame_bytes) {
                        check_error_answer(&error, frame.header().request_id);
                    }
                }
                Ok(None) => break,
                Err(StreamError::Framing(_)) => {
                    failed = true;
                    assert!(matches!(decoder.next_frame(), Err(StreamError::Failed)));
                    break;
                }
                Err(StreamError::Pool(_)) => {
                    failed = true;
                    break;
                }
                Err(other) => panic!("unexpected decoder error: {other}"),
            }
        }
    }
    assert!(consumed <= sent);
    drop(decoder);
    for class in SizeClass::ALL {
        let stats = pool.stats(class);
        assert_eq!(
            stats.free,
            pool.buffer_count(class),
            "pool buffers leaked: {stats:?}"
        );
    }
    frames
}

/// Mode bit of the `wal_log` target's first byte: recompute every fragment's CRC, so that
/// mutations reach the structure checks behind it.
pub const LOG_MODE_SEAL: u8 = 1;
/// Mode bit: also run BOOT_REPLAY over the bytes as the newest WAL segment.
pub const LOG_MODE_REPLAY: u8 = 2;
/// Mode bit: replay in salvage mode.
pub const LOG_MODE_SALVAGE: u8 = 4;

/// Records larger than this are damage to the `wal_log` target's reader.
const FUZZ_RECORD_BYTES_MAX: usize = 64 << 10;

/// Recomputes the CRC of every fragment where the reader would look for one.
fn seal_log(log: &mut [u8]) {
    let mut at = 0usize;
    while at + LOG_HEADER_BYTES <= log.len() {
        let in_block = BLOCK_BYTES - at % BLOCK_BYTES;
        if in_block < LOG_HEADER_BYTES {
            at += in_block;
            continue;
        }
        let length = u16::from_le_bytes([log[at + 4], log[at + 5]]) as usize;
        let end = (at + LOG_HEADER_BYTES + length).min(log.len());
        let crc = record::fragment_crc(
            &log[at + 4..at + LOG_HEADER_BYTES],
            &log[at + LOG_HEADER_BYTES..end],
        );
        log[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        at = end.max(at + LOG_HEADER_BYTES);
    }
}

/// WAL log target: `data[0]` is a mode (the `LOG_MODE_*` bits), the rest a log file. The
/// reader must never panic, must make progress through damage, must hand out records with
/// strictly increasing sequence numbers inside the file, and every record it accepts must
/// frame again into a log that reads back the same. With [`LOG_MODE_REPLAY`] the bytes are
/// also the newest segment of a WAL that BOOT_REPLAY opens (in memory): it must answer with
/// records or an error, never a panic. Returns the records read.
pub fn wal_log(data: &[u8]) -> usize {
    let Some((&mode, input)) = data.split_first() else {
        return 0;
    };
    let mut log = input.to_vec();
    if mode & LOG_MODE_SEAL != 0 {
        seal_log(&mut log);
    }
    let mut reader = LogReader::new(&log, FUZZ_RECORD_BYTES_MAX);
    let mut records: Vec<(u8, u64, Vec<u8>)> = Vec::new();
    let mut last_sequence = 0u64;
    // Every step consumes at least one byte, so this bounds the loop.
    for _ in 0..=log.len() + 1 {
        match reader.next_record() {
            Step::Record(found) => {
                assert!(found.sequence > last_sequence, "sequence did not increase");
                assert!(found.offset < found.end && found.end as usize <= log.len());
                last_sequence = found.sequence;
                records.push((found.kind, found.sequence, found.payload.to_vec()));
            }
            Step::End => break,
            Step::Damaged(damage) => match damage.resume {
                Some(resume) => {
                    assert!(resume > damage.offset && resume as usize <= log.len());
                    reader.resume_at(resume);
                }
                None => break,
            },
        }
    }
    // What was accepted frames into a log that reads back the same.
    let framed = record::encode_log(&records);
    let mut again = LogReader::new(&framed, FUZZ_RECORD_BYTES_MAX);
    for (kind, sequence, payload) in &records {
        match again.next_record() {
            Step::Record(found) => {
                assert_eq!((found.kind, found.sequence), (*kind, *sequence));
                assert_eq!(found.payload, payload.as_slice());
            }
            other => panic!("a re-framed record did not read back: {other:?}"),
        }
    }
    if mode & LOG_MODE_REPLAY != 0 {
        replay_segment(&log, mode & LOG_MODE_SALVAGE != 0);
    }
    records.len()
}

/// BOOT_REPLAY of `segment` as the only WAL segment, in memory.
fn replay_segment(segment: &[u8], salvage: bool) {
    let dir = Path::new("/fuzz/wal");
    let options = WalOptions {
        segment_bytes_target: 1 << 20,
        batch_bytes_max: 128 << 10,
        appends_pending_max: 64,
        record_bytes_max: FUZZ_RECORD_BYTES_MAX,
        salvage,
    };
    // A fresh WAL makes the MANIFEST and CURRENT; its first segment is then replaced.
    let mut env = FaultEnv::direct(512);
    let Ok((wal, _)) = Wal::open(env.clone(), dir, options.clone(), |_| {}) else {
        panic!("a fresh WAL failed to open");
    };
    drop(wal);
    let path = dir.join(segment_name(1));
    let written = env
        .remove(&path)
        .and_then(|()| env.write_synced(&path, segment));
    assert!(written.is_ok(), "the in-memory file system refused a write");
    let mut replayed = 0usize;
    if let Ok((mut wal, report)) = Wal::open(env.clone(), dir, options.clone(), |_| replayed += 1) {
        assert_eq!(report.records as usize, replayed);
        // The recovered log takes appends and opens again with the same records and more.
        let appended = wal.append(1, b"after replay").is_ok() && wal.flush().is_ok();
        drop(wal);
        let mut again = 0usize;
        match Wal::open(env, dir, options, |_| again += 1) {
            Ok(_) => assert_eq!(again, replayed + usize::from(appended)),
            Err(error) => panic!("a recovered WAL failed to open again: {error}"),
        }
    }
}

/// MANIFEST target: the bytes of a MANIFEST file. Replaying its edits must answer with a
/// state or an error, never a panic; any record payload that decodes as an edit must encode
/// back to the same bytes.
pub fn manifest(data: &[u8]) -> bool {
    let accepted = manifest::replay_edits(data, Path::new("MANIFEST-000001")).is_ok();
    let mut reader = LogReader::new(data, 64 << 10);
    for _ in 0..=data.len() + 1 {
        match reader.next_record() {
            Step::Record(found) => {
                if let Ok(edit) = Edit::decode(found.payload) {
                    assert_eq!(
                        Edit::decode(&edit.encode()),
                        Ok(edit),
                        "an edit did not round-trip"
                    );
                }
            }
            _ => break,
        }
    }
    if let Ok(edit) = Edit::decode(data) {
        assert_eq!(Edit::decode(&edit.encode()), Ok(edit));
    }
    accepted
}

/// Mode bit of the `sstable_block` target's first byte: pad the block to whole 4 KiB units
/// and recompute its CRC32C, so that mutations reach the layout checks.
pub const BLOCK_MODE_SEAL: u8 = 1;

/// SSTable data block target: `data[0]` is a mode (the `BLOCK_MODE_*` bits), the rest a
/// block. Parsing must refuse or accept without panicking; an accepted block's entries must
/// each be found again by key, in strictly increasing key order, and must build into a block
/// that parses to the same entries. Returns the entries read.
pub fn sstable_block(data: &[u8]) -> usize {
    let Some((&mode, input)) = data.split_first() else {
        return 0;
    };
    let mut bytes = input.to_vec();
    if mode & BLOCK_MODE_SEAL != 0 && !bytes.is_empty() {
        let length = bytes.len().div_ceil(BLOCK_UNIT_BYTES).max(1) * BLOCK_UNIT_BYTES;
        bytes.resize(length, 0);
        let crc = crc32c::crc32c(&bytes[..length - 4]);
        bytes[length - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(block) = Block::parse(&bytes) else {
        return 0;
    };
    let mut previous: Option<Key> = None;
    let mut rebuilt = BlockBuilder::new();
    let mut fits = true;
    for entry in block.iter() {
        assert!(
            previous.is_none_or(|key| key < entry.key),
            "keys out of order"
        );
        previous = Some(entry.key);
        assert_eq!(
            block.get(&entry.key),
            Some(entry),
            "an entry not found by its key"
        );
        fits &= rebuilt.try_add(entry.key, entry.sequence, entry.value);
    }
    if fits && !rebuilt.is_empty() {
        let again = rebuilt.finish();
        let reparsed = Block::parse(&again).expect("a rebuilt block parses");
        assert!(reparsed.iter().eq(block.iter()), "a rebuilt block differs");
    }
    block.len()
}

/// The modes that let a mutated header and body through to the body checks.
const REPAIR: u8 = MODE_FIX_LENGTH | MODE_PAD | MODE_SEAL;

/// A frame without its padding: header and body, as [`REPAIR`] expects them.
fn unpadded(frame: &[u8]) -> &[u8] {
    let body_length = FrameHeader::parse(frame).map_or(0, |header| header.body_length as usize);
    &frame[..(HEADER_BYTES + body_length).min(frame.len())]
}

/// Mode bit of the `sstable_file` target's first byte: recompute the CRC32C of the footer
/// and of the meta blocks it points at, so that mutations reach the decoders behind them.
pub const TABLE_MODE_SEAL: u8 = 1;

/// Where the `sstable_file` target writes its input: `Table::open` maps a real file.
fn fuzz_table_path() -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    // One name per call: the corpus replay tests run targets on several threads at once.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    base.join(format!("vortex-fuzz-{}-{call}.sst", std::process::id()))
}

/// Seals a whole-unit region in place: its last 4 bytes become the CRC32C of the rest.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= BLOCK_UNIT_BYTES && bytes.len().is_multiple_of(BLOCK_UNIT_BYTES) {
        let at = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..at]);
        bytes[at..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// SSTable file target: `data[0]` is a mode (the `TABLE_MODE_*` bits), the rest a table
/// file. Opening must refuse or accept without panicking; an accepted table is verified,
/// iterated, and every entry it yields is found again by key with the same content; damage
/// is an error (the table quarantined), never a panic. Returns the entries read.
pub fn sstable_file(data: &[u8]) -> usize {
    let Some((&mode, input)) = data.split_first() else {
        return 0;
    };
    let mut bytes = input.to_vec();
    let unit = BLOCK_UNIT_BYTES;
    if mode & TABLE_MODE_SEAL != 0 && bytes.len() >= unit && bytes.len().is_multiple_of(unit) {
        let footer_at = bytes.len() - unit;
        let field = |at: usize| -> usize {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[footer_at + at..footer_at + at + 8]);
            u64::from_le_bytes(word).min(bytes.len() as u64) as usize
        };
        // vcrc_offset, index_offset, bloom_offset, footer_offset (see Footer::encode).
        let bounds = [field(24), field(32), field(48), field(56)];
        for pair in bounds.windows(2) {
            if pair[0] < pair[1] {
                reseal(&mut bytes[pair[0]..pair[1]]);
            }
        }
        reseal(&mut bytes[footer_at..]);
    }
    let path = fuzz_table_path();
    if std::fs::write(&path, &bytes).is_err() {
        return 0;
    }
    let opened = Table::open(&vortex_storage::PosixFiles::shared(), &path, 1);
    let _ = std::fs::remove_file(&path); // the mapping outlives the name
    let Ok(table) = opened else {
        return 0;
    };
    let table = std::sync::Arc::new(table);
    let verified = table.verify(None, None).is_ok();
    let _ = table.vector_region();
    let mut read = 0;
    for entry in table.iter_after(None) {
        let Ok(entry) = entry else {
            assert!(
                table.quarantined().is_some(),
                "damage found without quarantining the table"
            );
            break;
        };
        match table.get(&entry.key) {
            Ok(Some(again)) => assert_eq!(again, entry, "an entry read two ways differs"),
            // Only a bloom filter that says no (one resealed over other keys) may hide it: a
            // key range that disagrees with the blocks is refused as corruption.
            Ok(None) => assert!(
                !table.may_contain(&entry.key),
                "an iterated entry is not found by its key"
            ),
            Err(_) => {}
        }
        read += 1;
    }
    if verified && table.quarantined().is_none() {
        assert_eq!(
            read as u64,
            table.footer().entries,
            "a verified table lost entries"
        );
    }
    read
}

/// A small real table (two collections' worth of keys in one collection, puts and
/// tombstones, vectors padded to the stride), as bytes.
pub fn sample_table() -> Vec<u8> {
    let path = fuzz_table_path().with_extension("seed.sst");
    let _ = std::fs::remove_file(&path);
    let mut builder = TableBuilder::create(&vortex_storage::PosixFiles::shared(), &path, 3)
        .expect("create a seed table");
    for point in 0..40u64 {
        let entry = (point % 7 != 3).then(|| Point {
            vector: (0..12).map(|i| (point as u8).wrapping_mul(i)).collect(),
            payload: vec![point as u8; (point as usize * 13) % 200],
        });
        builder
            .add(
                Key {
                    collection: 3,
                    point: point * 3,
                },
                point + 1,
                entry.as_ref(),
                None,
            )
            .expect("add to a seed table");
    }
    drop(builder.finish(1, 10, None).expect("finish a seed table"));
    let bytes = std::fs::read(&path).expect("read the seed table");
    let _ = std::fs::remove_file(&path);
    bytes
}

/// Stored payload target: decoding must refuse or accept without panicking; an accepted
/// payload encodes back to the same bytes, and a payload index over it agrees with matching
/// it against a filter built from its own fields. Returns the fields read.
pub fn payload(data: &[u8]) -> usize {
    use vortex_shard::payload::{decode, encode, matches};
    use vortex_shard::payload_index::PayloadIndex;
    use vortex_vbp::message::{Filter, FilterNode};
    let Ok(Some(decoded)) = decode(data) else {
        return 0;
    };
    let mut again = Vec::new();
    encode(Some(&decoded), &mut again);
    assert_eq!(again, data, "a payload did not round-trip");
    let index = PayloadIndex::build(&[Some(decoded.clone()), None]);
    for field in &decoded.fields {
        let filter = Filter {
            nodes: vec![
                FilterNode::Eq {
                    field: field.key.clone(),
                    value: field.value.clone(),
                },
                FilterNode::Not(0),
            ],
        };
        let set = index.evaluate(&filter);
        assert_eq!(
            set.contains(0),
            matches(&filter, Some(&decoded)),
            "index and matching differ"
        );
        assert_eq!(
            set.contains(1),
            matches(&filter, None),
            "index and matching differ"
        );
    }
    decoded.fields.len()
}

/// Catalog target: the bytes of a CATALOG file. Decoding must refuse or accept without
/// panicking; an accepted catalog encodes back to the same bytes. Returns the collections.
pub fn catalog(data: &[u8]) -> usize {
    use vortex_shard::catalog::Catalog;
    let Ok(catalog) = Catalog::decode(data) else {
        return 0;
    };
    assert_eq!(catalog.encode(), data, "a catalog did not round-trip");
    catalog.live().count() + catalog.dropped().count()
}

/// HNSW file mode bit: recompute the section checksums and the header's before loading, so
/// that mutated inputs reach the structural checks behind them.
pub const HNSW_MODE_SEAL: u8 = 1;

/// The largest external row array the HNSW target makes up for an index built over rows.
const HNSW_ROWS_MAX: usize = 1 << 20;

/// HNSW side-car file target: `data[0]` is a mode (the `HNSW_MODE_*` bits), the rest an index
/// file. Loading must refuse or accept without panicking (an index built over external rows
/// is given made-up rows of the size its header asks for); an accepted index answers plain
/// and filtered searches with nodes in range, takes a delete, and saves and loads back with
/// the same answers. Returns the nodes of an accepted index.
pub fn hnsw_file(data: &[u8]) -> usize {
    use vortex_index::{Hnsw, NodeSet, SearchParams, Store};
    let Some((&mode, input)) = data.split_first() else {
        return 0;
    };
    let mut bytes = input.to_vec();
    const HEADER: usize = 512;
    if mode & HNSW_MODE_SEAL != 0 && bytes.len() >= HEADER {
        let field = |bytes: &[u8], at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        for section in 0..9 {
            let at = 80 + section * 24;
            let offset = field(&bytes, at + 8).min(bytes.len() as u64) as usize;
            let length = field(&bytes, at + 16).min((bytes.len() - offset) as u64) as usize;
            let crc = crc32c::crc32c(&bytes[offset..offset + length]);
            bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&bytes[..HEADER - 4]);
        bytes[HEADER - 4..HEADER].copy_from_slice(&crc.to_le_bytes());
    }
    let path = fuzz_table_path().with_extension("hnsw");
    if std::fs::write(&path, &bytes).is_err() {
        return 0;
    }
    let external = bytes.get(23).is_some_and(|flags| flags & 1 != 0) && bytes.len() >= 64;
    let loaded = if external {
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        };
        let floats = word(36).saturating_mul(word(56));
        if floats > HNSW_ROWS_MAX {
            let _ = std::fs::remove_file(&path);
            return 0;
        }
        let rows: Vec<f32> = (0..floats).map(|i| (i % 7) as f32 * 0.125).collect();
        Hnsw::load_over(&path, Store::owned(&rows))
    } else {
        Hnsw::load(&path)
    };
    let _ = std::fs::remove_file(&path); // the mapping outlives the name
    let Ok(mut index) = loaded else {
        return 0;
    };
    let query: Vec<f32> = (0..index.dim())
        .map(|i| (i % 5) as f32 * 0.25 - 0.5)
        .collect();
    let answers = |index: &Hnsw| {
        let plain = index.search(&query, 5, 16).expect("a valid query");
        let mut allowed = NodeSet::with_capacity(index.len());
        (0..index.len() as u32).step_by(2).for_each(|node| {
            allowed.insert(node);
        });
        let params = SearchParams {
            k: 5,
            ef: 16,
            ..SearchParams::default()
        };
        let filtered = index
            .search_filtered(&query, &params, &allowed)
            .expect("a valid query");
        for hit in plain.iter().chain(&filtered) {
            assert!((hit.node as usize) < index.len(), "a node out of range");
        }
        for hit in &filtered {
            assert!(
                hit.node % 2 == 0,
                "a filtered search returned a node it excludes"
            );
        }
        // Nodes only: a file's vectors may hold NaNs, and NaN distances never compare equal.
        let nodes = |hits: &[vortex_index::Neighbor]| hits.iter().map(|hit| hit.node).collect();
        (nodes(&plain), nodes(&filtered)) as (Vec<u32>, Vec<u32>)
    };
    answers(&index);
    let nodes = index.len();
    if nodes > 0 {
        let _ = index.delete(0);
        let after = answers(&index);
        assert!(!after.0.contains(&0), "a deleted node came back");
        if !index.vectors_external() && index.save(&path).is_ok() {
            let again = Hnsw::load(&path).expect("a saved index loads");
            let _ = std::fs::remove_file(&path);
            assert_eq!(answers(&again), after, "a saved index answers differently");
        }
    }
    nodes
}

/// A small index (as a side-car of an SSTable would be), own vectors or over external rows.
fn sample_index(external: bool, quantized: bool) -> Vec<u8> {
    use vortex_index::{vector_stride, BuildParams, Hnsw, Metric, Quantization, Store};
    let dim = 6;
    let count = 40;
    let values: Vec<f32> = (0..count * dim)
        .map(|i| ((i * 37) % 11) as f32 * 0.1 - 0.5)
        .collect();
    let params = BuildParams {
        metric: Metric::L2,
        m: 4,
        ef_construction: 16,
        threads: 1,
        quantization: if quantized {
            Quantization::ScalarI8
        } else {
            Quantization::None
        },
        ..BuildParams::default()
    };
    let index = if external {
        let stride = vector_stride(dim);
        let mut rows = vec![0.0f32; count * stride];
        for (row, source) in rows.chunks_exact_mut(stride).zip(values.chunks_exact(dim)) {
            row[..dim].copy_from_slice(source);
        }
        Hnsw::build_over(dim, Store::owned(&rows), None, &params)
    } else {
        Hnsw::build(dim, &values, None, &params)
    }
    .expect("a valid sample index");
    let path = fuzz_table_path().with_extension("seed.hnsw");
    index.save(&path).expect("a sample index saves");
    let bytes = std::fs::read(&path).expect("a saved sample reads back");
    let _ = std::fs::remove_file(&path);
    bytes
}

/// Seed inputs for the corpus: every sample request and response, in every useful mode,
/// and streams of them. Returned as (target, name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use vortex_vbp::samples;
    let mut seeds = Vec::new();
    let mut stream_bytes = Vec::new();
    for (index, request) in samples::requests().into_iter().enumerate() {
        let frame = request
            .encode(index as u64)
            .expect("samples encode")
            .to_vec();
        seeds.push((
            "validator",
            format!("request-{:?}-sealed", request.opcode()),
            validator_input(0, &frame),
        ));
        seeds.push((
            "validator",
            format!("request-{:?}-repaired", request.opcode()),
            validator_input(REPAIR, unpadded(&frame)),
        ));
        stream_bytes.extend_from_slice(&frame);
    }
    for (index, response) in samples::responses().into_iter().enumerate() {
        let frame = response
            .encode(index as u64)
            .expect("samples encode")
            .to_vec();
        seeds.push((
            "validator",
            format!("response-{:?}-repaired", response.opcode()),
            validator_input(MODE_RESPONSE | REPAIR, unpadded(&frame)),
        ));
    }
    let large = Request::Search(samples::search(1500, true))
        .encode(99)
        .expect("samples encode")
        .to_vec();
    for (name, misalign) in [("aligned", 0u8), ("misaligned", 1)] {
        let mut input = vec![0x5A, 0xA5, misalign];
        input.extend_from_slice(&stream_bytes);
        input.extend_from_slice(&large);
        seeds.push(("stream", format!("samples-{name}"), input));
    }
    let log = record::encode_log(&[
        (1, 1, vec![0x11; 40]),
        (2, 2, vec![0x22; BLOCK_BYTES + 300]),
        (3, 3, Vec::new()),
        (1, 4, vec![0x44; 700]),
    ]);
    for (name, mode) in [
        ("plain", 0u8),
        ("sealed-replay", LOG_MODE_SEAL | LOG_MODE_REPLAY),
        (
            "salvage",
            LOG_MODE_SEAL | LOG_MODE_REPLAY | LOG_MODE_SALVAGE,
        ),
    ] {
        let mut input = vec![mode];
        input.extend_from_slice(&log);
        seeds.push(("wal_log", format!("records-{name}"), input));
    }
    let edits = [
        Edit::snapshot(&manifest::ManifestState::default()),
        Edit {
            wal_checkpoint_sequence: Some(41),
            wal_replay_from_segment: Some(3),
            ..Edit::default()
        },
    ];
    let manifest_log = record::encode_log(
        &edits
            .iter()
            .enumerate()
            .map(|(index, edit)| (manifest::EDIT_KIND, index as u64 + 1, edit.encode()))
            .collect::<Vec<_>>(),
    );
    seeds.push(("manifest", "two-edits".to_owned(), manifest_log));
    let table_edits = [
        Edit {
            table_next: Some(9),
            tables_added: vec![
                manifest::TableMeta {
                    number: 7,
                    level: 0,
                    collection: 2,
                    smallest: 1,
                    largest: 900,
                    file_bytes: 65_536,
                    max_sequence: 40,
                },
                manifest::TableMeta {
                    number: 8,
                    level: 1,
                    collection: 3,
                    smallest: 0,
                    largest: 0,
                    file_bytes: 16_384,
                    max_sequence: 12,
                },
            ],
            wal_checkpoint_sequence: Some(40),
            ..Edit::default()
        },
        Edit {
            tables_removed: vec![7],
            ..Edit::default()
        },
    ];
    let table_log = record::encode_log(
        &table_edits
            .iter()
            .enumerate()
            .map(|(index, edit)| (manifest::EDIT_KIND, index as u64 + 1, edit.encode()))
            .collect::<Vec<_>>(),
    );
    seeds.push(("manifest", "table-edits".to_owned(), table_log));
    let mut payload_bytes = Vec::new();
    vortex_shard::payload::encode(Some(&vortex_vbp::samples::payload(7)), &mut payload_bytes);
    seeds.push(("payload", "sample".to_owned(), payload_bytes));
    let mut catalog = vortex_shard::catalog::Catalog::default();
    for (name, metric) in [
        ("songs", vortex_vbp::message::Metric::Cosine),
        ("images", vortex_vbp::message::Metric::L2),
    ] {
        catalog
            .create(vortex_vbp::message::CollectionSpec {
                name: name.into(),
                dimension: 128,
                metric,
                m: 16,
                ef_construction: 200,
                vector_type: vortex_vbp::message::VectorType::I8,
            })
            .expect("a valid sample collection");
    }
    catalog.drop_collection("images").expect("it exists");
    seeds.push(("catalog", "two-collections".to_owned(), catalog.encode()));
    for (name, external, quantized) in [
        ("own-vectors", false, false),
        ("quantized", false, true),
        ("external-rows", true, false),
    ] {
        let sample = sample_index(external, quantized);
        for (suffix, mode) in [("plain", 0u8), ("sealed", HNSW_MODE_SEAL)] {
            let mut input = vec![mode];
            input.extend_from_slice(&sample);
            seeds.push(("hnsw_file", format!("{name}-{suffix}"), input));
        }
    }
    let sample = sample_table();
    for (name, mode) in [("plain", 0u8), ("sealed", TABLE_MODE_SEAL)] {
        let mut input = vec![mode];
        input.extend_from_slice(&sample);
        seeds.push(("sstable_file", format!("forty-entries-{name}"), input));
    }
    let mut builder = BlockBuilder::new();
    for (point, value) in [
        (1u64, Some(&b"one"[..])),
        (5, None),
        (9, Some(&[7u8; 300][..])),
    ] {
        builder.try_add(
            Key {
                collection: 3,
                point,
            },
            point + 10,
            value,
        );
    }
    let block = builder.finish();
    for (name, mode) in [("plain", 0u8), ("sealed", BLOCK_MODE_SEAL)] {
        let mut input = vec![mode];
        input.extend_from_slice(&block);
        seeds.push(("sstable_block", format!("three-entries-{name}"), input));
    }
    let npy = crate::ctl::input::npy_file("<f4", "(3, 2)", &[]);
    seeds.push(("ctl_input", "npy-header".to_owned(), npy));
    seeds.push((
        "ctl_input",
        "filter".to_owned(),
        br#"{"and": [{"field": "color", "in": ["red", "blue"]}, {"not": {"field": "price", "gte": 1, "lt": 9.5}}, {"or": [{"field": "n", "eq": 3}]}]}"#.to_vec(),
    ));
    seeds.push((
        "ctl_input",
        "point-line".to_owned(),
        br#"{"id": 7, "vector": [0.5, -1, 2e3], "payload": {"color": "red", "n": 3, "x": 1.5, "ok": true, "tags": ["a", "b"]}}"#.to_vec(),
    ));
    seeds
}

/// `vortexctl`'s input parsers on arbitrary bytes: a `.npy` header, a filter and a payload
/// in JSON, a JSON Lines point. Returns how many accepted the input. Panics if an accepted
/// filter is not a valid node list (children before parents, within VBP's bounds), or an
/// accepted payload does not survive printing and reading back.
pub fn ctl_input(data: &[u8]) -> usize {
    use crate::ctl::input::{json_point, npy_header, DIMENSION_MAX};
    use crate::ctl::json::{filter_from_json, payload_from_json, payload_to_json};
    use vortex_vbp::message::FilterNode;
    let mut accepted = 0;
    if let Ok((_, dimension, _)) = npy_header(&mut &data[..]) {
        assert!((1..=DIMENSION_MAX).contains(&dimension));
        accepted += 1;
    }
    if let Ok((_, vector, _)) = json_point(data, "line 1") {
        assert!(!vector.is_empty() && vector.iter().all(|x| x.is_finite()));
        accepted += 1;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return accepted;
    };
    if let Ok(filter) = filter_from_json(&value) {
        assert!(!filter.nodes.is_empty() && filter.nodes.len() <= 256);
        for (index, node) in filter.nodes.iter().enumerate() {
            let children: Vec<u32> = match node {
                FilterNode::And(c) | FilterNode::Or(c) => c.clone(),
                FilterNode::Not(c) => vec![*c],
                _ => Vec::new(),
            };
            assert!(
                children.iter().all(|&c| (c as usize) < index),
                "a child after its parent"
            );
        }
        accepted += 1;
    }
    if let Ok(payload) = payload_from_json(&value, "payload") {
        let again = payload_from_json(&payload_to_json(&payload), "payload")
            .expect("a printed payload reads back");
        assert_eq!(again, payload, "a payload did not survive printing");
        accepted += 1;
    }
    accepted
}

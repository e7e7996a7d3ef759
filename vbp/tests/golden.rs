//! Golden bytes and layouts: the wire format frozen, and docs/VBP.md kept true.
//!
//! - The ping and search frames below are the bytes of protocol version 1: any change to the
//!   header, the codec or an archived type that moves a byte fails here.
//! - docs/VBP.md carries generated sections (hex dumps, the archived layout of every body
//!   type, taken from the compiler with `offset_of!` and from real archived values). The
//!   tests compare them with the doc; `VORTEX_BLESS=1 cargo test -p vortex-vbp --test golden`
//!   rewrites them after an intended change.
//! - A hand-written encoder and decoder that follow only the doc's rules (no rkyv) build
//!   frames the validator accepts and read frames the codec writes, so the doc is enough
//!   to write a client in another language.

use std::fmt::Write as _;
use std::mem::{align_of, offset_of, size_of};
use vortex_vbp::codec::{Request, Response};
use vortex_vbp::header::{self, Opcode, HEADER_BYTES};
use vortex_vbp::message::*;
use vortex_vbp::samples;
use vortex_vbp::validator::{LayoutValidator, RequestRef};

/// `Ping { nonce: 42 }`, request id 1.
fn ping_frame() -> Vec<u8> {
    Request::Ping(Ping { nonce: 42 })
        .encode(1)
        .unwrap()
        .to_vec()
}

/// A 4-d search in `docs`, k = 10, ef = 64, no filter, request id 2.
fn search_frame() -> Vec<u8> {
    Request::Search(Search {
        collection: "docs".to_owned(),
        vector: vec![0.5, -1.0, 2.0, 0.25],
        k: 10,
        ef: 64,
        filter: None,
        with_payload: false,
    })
    .encode(2)
    .unwrap()
    .to_vec()
}

const PING_GOLDEN: &str = concat!(
    "565254580100010000000000080000000100000000000000c216603300000000",
    "2a000000000000000000000000000000",
);
const SEARCH_GOLDEN: &str = concat!(
    "5652545801000900000000003800000002000000000000003cf2563000000000",
    "0000003f000080bf000000400000803e646f6373ffffffffe8ffffff04000000",
    "0a00000040000000000000000000000000000000000000000000000000000000",
);

/// Dump: offset, 16 bytes in hex (a gap after 8), ASCII.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (line, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:04x}:", line * 16);
        for (index, byte) in chunk.iter().enumerate() {
            let gap = if index == 8 { "  " } else { " " };
            let _ = write!(out, "{gap}{byte:02x}");
        }
        out.push_str("  ");
        out.extend(chunk.iter().map(|&byte| {
            if byte.is_ascii_graphic() || byte == b' ' {
                byte as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

fn compact_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn golden_frames_are_frozen() {
    let ping = compact_hex(&ping_frame());
    let search = compact_hex(&search_frame());
    assert_eq!(ping, PING_GOLDEN, "the ping frame's bytes changed");
    assert_eq!(search, SEARCH_GOLDEN, "the search frame's bytes changed");
}

// ---------------------------------------------------------------------------------------
// Generated doc sections.

/// One struct's layout as a markdown table.
macro_rules! struct_layout {
    ($out:expr, $archived:ty, $name:literal, [$($field:ident: $kind:literal),* $(,)?]) => {{
        let out: &mut String = $out;
        let _ = writeln!(
            out,
            "**{}** (size {}, align {})\n\n| offset | field | type |\n|---:|---|---|",
            $name,
            size_of::<$archived>(),
            align_of::<$archived>()
        );
        $(
            let _ = writeln!(
                out,
                "| {} | `{}` | {} |",
                offset_of!($archived, $field),
                stringify!($field),
                $kind
            );
        )*
        out.push('\n');
    }};
}

fn offset_in<T, F>(outer: &T, field: &F) -> usize {
    field as *const F as usize - outer as *const T as usize
}

/// Enum layouts, measured on real archived values (every variant appears in the samples).
fn enum_layouts() -> String {
    let mut out = String::new();
    // PayloadValue: from the sample payload, which has every kind.
    let frame = Request::Upsert(Upsert {
        collection: "c".to_owned(),
        dimension: 1,
        ids: vec![1],
        vectors: vec![0.0],
        payloads: vec![samples::payload(1)],
    })
    .encode(0)
    .unwrap();
    let (_, request) = LayoutValidator::default().request(&frame).unwrap();
    let RequestRef::Upsert(view) = request else {
        unreachable!()
    };
    let _ = writeln!(
        out,
        "**PayloadValue** (size {}, align {}): tag `u8` at 0, then\n\n| tag | variant | field offset | field type |\n|---:|---|---:|---|",
        size_of::<ArchivedPayloadValue>(),
        align_of::<ArchivedPayloadValue>()
    );
    for field in view.body.payloads[0].fields.iter() {
        let value = &field.value;
        let tag = tag_of(value);
        let (variant, offset, kind) = match value {
            ArchivedPayloadValue::Int(inner) => ("Int", offset_in(value, inner), "i64"),
            ArchivedPayloadValue::Float(inner) => ("Float", offset_in(value, inner), "f64"),
            ArchivedPayloadValue::Str(inner) => ("Str", offset_in(value, inner), "string"),
            ArchivedPayloadValue::Bool(inner) => ("Bool", offset_in(value, inner), "bool"),
            ArchivedPayloadValue::StrList(inner) => {
                ("StrList", offset_in(value, inner), "vec<string>")
            }
        };
        let _ = writeln!(out, "| {tag} | {variant} | {offset} | {kind} |");
    }
    out.push('\n');

    // FilterNode: from the sample filter, which has every node kind.
    let frame = Request::Count(Count {
        collection: "c".to_owned(),
        filter: Some(samples::filter()),
    })
    .encode(0)
    .unwrap();
    let (_, request) = LayoutValidator::default().request(&frame).unwrap();
    let RequestRef::Count(count) = request else {
        unreachable!()
    };
    let filter = count.filter.as_ref().unwrap();
    let _ = writeln!(
        out,
        "**FilterNode** (size {}, align {}): tag `u8` at 0, then\n\n| tag | variant | fields (offset type) |\n|---:|---|---|",
        size_of::<ArchivedFilterNode>(),
        align_of::<ArchivedFilterNode>()
    );
    let mut rows = Vec::new();
    for node in filter.nodes.iter() {
        let tag = tag_of(node);
        let row = match node {
            ArchivedFilterNode::Eq { field, value } => format!(
                "| {tag} | Eq | `field` {} string, `value` {} PayloadValue |",
                offset_in(node, field),
                offset_in(node, value)
            ),
            ArchivedFilterNode::Range {
                field,
                min,
                max,
                min_inclusive,
                max_inclusive,
            } => format!(
                "| {tag} | Range | `field` {} string, `min` {} option<f64>, `max` {} option<f64>, `min_inclusive` {} bool, `max_inclusive` {} bool |",
                offset_in(node, field),
                offset_in(node, min),
                offset_in(node, max),
                offset_in(node, min_inclusive),
                offset_in(node, max_inclusive)
            ),
            ArchivedFilterNode::In { field, values } => format!(
                "| {tag} | In | `field` {} string, `values` {} vec<PayloadValue> |",
                offset_in(node, field),
                offset_in(node, values)
            ),
            ArchivedFilterNode::And(children) => format!(
                "| {tag} | And | `children` {} vec<u32> |",
                offset_in(node, children)
            ),
            ArchivedFilterNode::Or(children) => format!(
                "| {tag} | Or | `children` {} vec<u32> |",
                offset_in(node, children)
            ),
            ArchivedFilterNode::Not(child) => {
                format!("| {tag} | Not | `child` {} u32 |", offset_in(node, child))
            }
        };
        rows.push((tag, row));
    }
    rows.sort();
    for (_, row) in rows {
        let _ = writeln!(out, "{row}");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "**Metric** (size {}): `u8` 0 = L2, 1 = Ip, 2 = Cosine. **VectorType** (size {}): `u8` 0 = F32, 1 = I8.\n",
        size_of::<ArchivedMetric>(),
        size_of::<ArchivedVectorType>()
    );
    out
}

/// The tag byte of an archived `repr(u8)` enum: its first byte.
fn tag_of<T>(value: &T) -> u8 {
    assert!(size_of::<T>() >= 1);
    // SAFETY: `value` is a live reference to an archived enum of at least one byte whose
    // first byte is its initialized `u8` tag; reading one byte stays inside the object.
    unsafe { *(value as *const T).cast::<u8>() }
}

fn struct_layouts() -> String {
    let mut out = String::new();
    struct_layout!(&mut out, ArchivedPing, "Ping", [nonce: "u64"]);
    struct_layout!(&mut out, ArchivedCollectionSpec, "CollectionSpec", [
        name: "string", dimension: "u32", metric: "Metric (u8)", m: "u16",
        ef_construction: "u16", vector_type: "VectorType (u8)",
    ]);
    struct_layout!(&mut out, ArchivedCollectionRef, "CollectionRef", [name: "string"]);
    struct_layout!(&mut out, ArchivedUpsert, "Upsert", [
        collection: "string", dimension: "u32", ids: "vec<u64>", vectors: "vec<f32>",
        payloads: "vec<Payload>",
    ]);
    struct_layout!(&mut out, ArchivedPayload, "Payload", [fields: "vec<PayloadField>"]);
    struct_layout!(&mut out, ArchivedPayloadField, "PayloadField", [
        key: "string", value: "PayloadValue",
    ]);
    struct_layout!(&mut out, ArchivedDelete, "Delete", [collection: "string", ids: "vec<u64>"]);
    struct_layout!(&mut out, ArchivedGet, "Get", [
        collection: "string", ids: "vec<u64>", with_vectors: "bool", with_payload: "bool",
    ]);
    struct_layout!(&mut out, ArchivedSearch, "Search", [
        collection: "string", vector: "vec<f32>", k: "u32", ef: "u32",
        filter: "option<Filter>", with_payload: "bool",
    ]);
    struct_layout!(&mut out, ArchivedFilter, "Filter", [nodes: "vec<FilterNode>"]);
    struct_layout!(&mut out, ArchivedCount, "Count", [
        collection: "string", filter: "option<Filter>",
    ]);
    struct_layout!(&mut out, ArchivedCollectionInfo, "CollectionInfo", [
        spec: "CollectionSpec", points: "u64",
    ]);
    struct_layout!(&mut out, ArchivedCollectionList, "CollectionList", [
        collections: "vec<CollectionInfo>",
    ]);
    struct_layout!(&mut out, ArchivedWriteAck, "WriteAck", [count: "u32"]);
    struct_layout!(&mut out, ArchivedPointRecord, "PointRecord", [
        id: "u64", vector: "vec<f32>", payload: "option<Payload>",
    ]);
    struct_layout!(&mut out, ArchivedGetResult, "GetResult", [points: "vec<PointRecord>"]);
    struct_layout!(&mut out, ArchivedHit, "Hit", [
        id: "u64", distance: "f32", payload: "option<Payload>",
    ]);
    struct_layout!(&mut out, ArchivedSearchResult, "SearchResult", [hits: "vec<Hit>"]);
    struct_layout!(&mut out, ArchivedCountResult, "CountResult", [count: "u64"]);
    struct_layout!(&mut out, ArchivedCounter, "Counter", [name: "string", value: "u64"]);
    struct_layout!(&mut out, ArchivedLeuStats, "LeuStats", [leu: "u16", counters: "vec<Counter>"]);
    struct_layout!(&mut out, ArchivedStatsResult, "StatsResult", [leus: "vec<LeuStats>"]);
    struct_layout!(&mut out, ArchivedFencedTable, "FencedTable", [
        leu: "u16", collection: "string", first: "u64", last: "u64", table: "u64",
        detail: "string"
    ]);
    struct_layout!(&mut out, ArchivedFencedResult, "FencedResult", [tables: "vec<FencedTable>"]);
    struct_layout!(&mut out, ArchivedPartialBody, "PartialBody", [
        applied: "u32", failed_ids: "vec<u64>", throttled: "bool", retry_after_ms: "u32",
        code: "u16", message: "string",
    ]);
    struct_layout!(&mut out, ArchivedErrorBody, "ErrorBody", [code: "u16", message: "string"]);
    struct_layout!(&mut out, ArchivedThrottledBody, "ThrottledBody", [
        retry_after_ms: "u32", reason: "string",
    ]);
    out
}

fn golden_section(name: &str) -> String {
    match name {
        "ping" => format!("```text\n{}```\n", hex_dump(&ping_frame())),
        "search" => format!("```text\n{}```\n", hex_dump(&search_frame())),
        "structs" => struct_layouts(),
        "enums" => enum_layouts(),
        _ => unreachable!("unknown section {name}"),
    }
}

const SECTIONS: [&str; 4] = ["ping", "search", "structs", "enums"];

fn doc_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/VBP.md")
}

/// Replaces the text between `<!-- generated:NAME -->` and `<!-- end:NAME -->`.
fn splice(doc: &str, name: &str, body: &str) -> Option<String> {
    let begin = format!("<!-- generated:{name} -->\n");
    let end = format!("<!-- end:{name} -->");
    let start = doc.find(&begin)? + begin.len();
    let stop = start + doc[start..].find(&end)?;
    Some(format!("{}{}{}", &doc[..start], body, &doc[stop..]))
}

#[test]
fn docs_carry_the_generated_sections() {
    let path = doc_path();
    let doc = std::fs::read_to_string(&path).expect("docs/VBP.md exists");
    let mut expected = doc.clone();
    for name in SECTIONS {
        expected = splice(&expected, name, &golden_section(name))
            .unwrap_or_else(|| panic!("docs/VBP.md lacks the markers of section `{name}`"));
    }
    if std::env::var_os("VORTEX_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap();
        return;
    }
    assert!(
        doc == expected,
        "docs/VBP.md is out of date with the code: run \
         VORTEX_BLESS=1 cargo test -p vortex-vbp --test golden and review the diff"
    );
}

// ---------------------------------------------------------------------------------------
// A client written from the doc alone.

/// Appends little-endian bytes by the doc's rules; positions are body offsets.
#[derive(Default)]
struct BodyWriter {
    bytes: Vec<u8>,
}

impl BodyWriter {
    fn align(&mut self, align: usize) {
        while !self.bytes.len().is_multiple_of(align) {
            self.bytes.push(0);
        }
    }
    fn position(&self) -> usize {
        self.bytes.len()
    }
    fn put(&mut self, bytes: &[u8]) -> usize {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        at
    }
    /// Out-of-line string bytes (strings longer than 8 bytes); returns their position.
    fn string_data(&mut self, text: &str) -> Option<usize> {
        (text.len() > 8).then(|| self.put(text.as_bytes()))
    }
    /// The 8-byte string field at the current position (aligned to 4).
    fn string_field(&mut self, text: &str, data: Option<usize>) {
        self.align(4);
        let here = self.position();
        match data {
            None => {
                let mut inline = [0xFFu8; 8];
                inline[..text.len()].copy_from_slice(text.as_bytes());
                self.put(&inline);
            }
            Some(at) => {
                let length = text.len() as u32;
                let encoded = (length & 0x3F) | 0x80 | ((length & !0x3F) << 2);
                self.put(&encoded.to_le_bytes());
                self.put(&((at as i64 - here as i64) as i32).to_le_bytes());
            }
        }
    }
    /// The 8-byte vec field: relative offset from the field, then element count.
    fn vec_field(&mut self, data: usize, count: usize) {
        self.align(4);
        let here = self.position() as i64;
        self.put(&((data as i64 - here) as i32).to_le_bytes());
        self.put(&(count as u32).to_le_bytes());
    }
}

/// Wraps a body in a header by the doc: length, padding to 16, CRC32C with the field zero.
fn frame_by_hand(opcode: u16, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(b"VRTX");
    frame.extend_from_slice(&1u16.to_le_bytes());
    frame.extend_from_slice(&opcode.to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes()); // flags: a request
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&request_id.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes()); // checksum, filled below
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(body);
    while frame.len() % 16 != 0 {
        frame.push(0);
    }
    let checksum = crc32c::crc32c(&frame);
    frame[24..28].copy_from_slice(&checksum.to_le_bytes());
    frame
}

/// Copies into 16-aligned memory, as a receive buffer would be.
fn aligned(frame: &[u8]) -> vortex_vbp::codec::FrameBytes {
    let mut out = vortex_vbp::codec::FrameBytes::with_capacity(frame.len());
    out.extend_from_slice(frame);
    out
}

#[test]
fn a_search_written_from_the_doc_is_accepted() {
    let collection = "collection.with.a.long.name";
    let vector = [0.5f32, -1.0, 2.0, 0.25, 3.0, -0.125, 1.5, 0.0];
    let mut body = BodyWriter::default();
    // Out-of-line data first, in field order (depth first), then the root struct last.
    let name_at = body.string_data(collection);
    body.align(4);
    let vector_at = body.position();
    for value in vector {
        body.put(&value.to_le_bytes());
    }
    // The filter `genre == "jazz"`: one Eq node (tag 0), its string inline, its value
    // PayloadValue::Str (tag 2) with the string inline.
    body.align(8);
    let nodes_at = body.position();
    let node_start = body.put(&[0u8]); // FilterNode tag: Eq
    body.align(4);
    body.string_field("genre", None);
    body.align(8);
    body.put(&[2u8]); // PayloadValue tag: Str
    body.align(4);
    body.string_field("jazz", None);
    // An enum is as large as its largest variant (Range): the doc's FilterNode size, 56.
    const FILTER_NODE_BYTES: usize = 56;
    while body.position() < node_start + FILTER_NODE_BYTES {
        body.put(&[0]);
    }
    assert_eq!(FILTER_NODE_BYTES, size_of::<ArchivedFilterNode>());
    // The root: Search { collection, vector, k, ef, filter: Some(Filter { nodes }), with_payload }.
    body.align(4);
    let root = body.position();
    body.string_field(collection, name_at);
    body.vec_field(vector_at, vector.len());
    body.put(&10u32.to_le_bytes());
    body.put(&100u32.to_le_bytes());
    body.put(&[1u8, 0, 0, 0]); // option tag Some, padding to the Filter's alignment 4
    body.vec_field(nodes_at, 1);
    body.put(&[0u8]); // with_payload
    body.align(4);
    assert_eq!(body.position() - root, size_of::<ArchivedSearch>());

    let frame = aligned(&frame_by_hand(Opcode::Search as u16, 77, &body.bytes));
    let (header, request) = LayoutValidator::default()
        .request(&frame)
        .expect("a frame built from the doc validates");
    assert_eq!(header.request_id, 77);
    let Request::Search(search) = request.to_request().unwrap() else {
        panic!("not a search")
    };
    assert_eq!(search.collection, collection);
    assert_eq!(search.vector, vector);
    assert_eq!((search.k, search.ef, search.with_payload), (10, 100, false));
    assert_eq!(
        search.filter,
        Some(Filter {
            nodes: vec![FilterNode::Eq {
                field: "genre".to_owned(),
                value: PayloadValue::Str("jazz".to_owned()),
            }]
        })
    );
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn i32_at(bytes: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Reads a vec field at `at`: (data position, count).
fn read_vec(bytes: &[u8], at: usize) -> (usize, usize) {
    let data = (at as i64 + i64::from(i32_at(bytes, at))) as usize;
    (data, u32_at(bytes, at + 4) as usize)
}

/// Reads a string field at `at`.
fn read_string(bytes: &[u8], at: usize) -> String {
    let first = bytes[at];
    if first & 0xC0 != 0x80 {
        let inline = &bytes[at..at + 8];
        let length = inline.iter().position(|&byte| byte == 0xFF).unwrap_or(8);
        return String::from_utf8(inline[..length].to_vec()).unwrap();
    }
    let encoded = u32_at(bytes, at);
    let length = ((encoded & 0x3F) | ((encoded & !0xFF) >> 2)) as usize;
    let data = (at as i64 + i64::from(i32_at(bytes, at + 4))) as usize;
    String::from_utf8(bytes[data..data + length].to_vec()).unwrap()
}

#[test]
fn responses_read_by_the_doc_match() {
    let hits = SearchResult {
        hits: vec![
            Hit {
                id: 3,
                distance: 0.25,
                payload: None,
            },
            Hit {
                id: 11,
                distance: 1.5,
                payload: None,
            },
        ],
    };
    let frame = Response::Hits(hits.clone()).encode(9).unwrap();
    assert_eq!(&frame[..4], b"VRTX");
    assert_eq!(
        u16::from_le_bytes([frame[6], frame[7]]),
        Opcode::Search as u16
    );
    assert_eq!(u16::from_le_bytes([frame[8], frame[9]]), 1, "RESPONSE flag");
    let body_length = u32_at(&frame, 12) as usize;
    let body = &frame[HEADER_BYTES..HEADER_BYTES + body_length];
    // SearchResult is one vec field: the root is the body's last 8 bytes.
    let (hits_at, count) = read_vec(body, body.len() - size_of::<ArchivedSearchResult>());
    assert_eq!(count, 2);
    let hit_size = size_of::<ArchivedHit>();
    for (index, expected) in hits.hits.iter().enumerate() {
        let hit = hits_at + index * hit_size;
        let id = u64::from_le_bytes(body[hit..hit + 8].try_into().unwrap());
        let distance = f32::from_le_bytes(body[hit + 8..hit + 12].try_into().unwrap());
        let payload_tag = body[hit + offset_of!(ArchivedHit, payload)];
        assert_eq!(
            (id, distance, payload_tag),
            (expected.id, expected.distance, 0)
        );
    }

    let error = Response::error(ErrorCode::CollectionNotFound, "no collection `a-long-name`")
        .encode(10)
        .unwrap();
    let body_length = u32_at(&error, 12) as usize;
    let body = &error[HEADER_BYTES..HEADER_BYTES + body_length];
    let root = body.len() - size_of::<ArchivedErrorBody>();
    let code = u16::from_le_bytes([body[root], body[root + 1]]);
    assert_eq!(code, ErrorCode::CollectionNotFound as u16);
    let message = read_string(body, root + offset_of!(ArchivedErrorBody, message));
    assert_eq!(message, "no collection `a-long-name`");
    assert_eq!(header::frame_checksum(&error), u32_at(&error, 24));
}

#[test]
fn the_checksum_is_the_documented_crc32c() {
    // docs/VBP.md gives the check value of CRC32C for a third party to test against.
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    // And the checksum field is the CRC of the frame with that field zero.
    let frame = ping_frame();
    let mut zeroed = frame.clone();
    zeroed[24..28].fill(0);
    assert_eq!(crc32c::crc32c(&zeroed), u32_at(&frame, 24));
}

//! Request and response bodies: the rkyv 0.8 archived types behind each opcode.
//!
//! Bodies are plain structs so that their archived forms (`ArchivedSearch`, ...) can be read
//! in place from a receive buffer. Two layout choices serve that:
//!
//! - An upsert carries its vectors **columnar**: one flat `vectors` array of
//!   `ids.len() * dimension` floats, so the whole batch is one contiguous `&[f32]` in the
//!   buffer, ready for the SIMD kernels and the WAL without a copy.
//! - A payload filter is a **flat list of nodes** in which a node refers to earlier nodes by
//!   index and the last node is the root. Nothing in the wire format is recursive, so
//!   validating a hostile filter cannot overflow the stack, and its size is bounded by the
//!   node count.

use rkyv::{Archive, Deserialize, Serialize};

/// Distance metric of a collection.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum Metric {
    /// Squared Euclidean distance.
    L2,
    /// Negative inner product (smaller is closer).
    Ip,
    /// Cosine distance, `1 - cos`.
    Cosine,
}

/// How vectors are stored in a collection's index.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq, Clone, Copy))]
#[repr(u8)]
pub enum VectorType {
    /// 32-bit floats.
    F32,
    /// Scalar-quantized 8-bit integers.
    I8,
}

/// A collection's schema (`CreateCollection` body; part of `CollectionInfo`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct CollectionSpec {
    /// 1 to 255 bytes of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Vector dimension, 1 to 65536.
    pub dimension: u32,
    /// Distance metric.
    pub metric: Metric,
    /// HNSW links per node, 2 to 128.
    pub m: u16,
    /// HNSW build beam width, 1 to 4096.
    pub ef_construction: u16,
    /// Index storage type.
    pub vector_type: VectorType,
}

/// Names one collection (`DropCollection`, `DescribeCollection` bodies).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct CollectionRef {
    /// The collection.
    pub name: String,
}

/// `Ping` body and `Ping` response body: the nonce comes back.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Ping {
    /// Any value.
    pub nonce: u64,
}

/// A payload value.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum PayloadValue {
    /// 64-bit signed integer.
    Int(i64),
    /// 64-bit float.
    Float(f64),
    /// UTF-8 string.
    Str(String),
    /// Boolean.
    Bool(bool),
    /// List of strings.
    StrList(Vec<String>),
}

/// One payload field.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PayloadField {
    /// Field name, 1 to 255 bytes.
    pub key: String,
    /// Value.
    pub value: PayloadValue,
}

/// A point's payload: a small map, kept as a list.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[rkyv(derive(Debug))]
pub struct Payload {
    /// At most 64 fields, keys unique.
    pub fields: Vec<PayloadField>,
}

/// `Upsert` body: a batch of points, columnar.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Upsert {
    /// Target collection.
    pub collection: String,
    /// Dimension of every vector in the batch.
    pub dimension: u32,
    /// Point ids, at least one.
    pub ids: Vec<u64>,
    /// `ids.len() * dimension` finite floats: point `i`'s vector is
    /// `vectors[i * dimension .. (i + 1) * dimension]`.
    pub vectors: Vec<f32>,
    /// Empty (no payloads) or one per id.
    pub payloads: Vec<Payload>,
}

/// `Delete` body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Delete {
    /// Collection.
    pub collection: String,
    /// Ids to delete, at least one.
    pub ids: Vec<u64>,
}

/// `Get` body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Get {
    /// Collection.
    pub collection: String,
    /// Ids to fetch, at least one.
    pub ids: Vec<u64>,
    /// Return the vectors.
    pub with_vectors: bool,
    /// Return the payloads.
    pub with_payload: bool,
}

/// One node of a payload filter. Child references are indices of earlier nodes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum FilterNode {
    /// `field == value` (for a string list: the list contains the value).
    Eq {
        /// Field name.
        field: String,
        /// Value.
        value: PayloadValue,
    },
    /// A numeric range over an int or float field; at least one bound.
    Range {
        /// Field name.
        field: String,
        /// Lower bound.
        min: Option<f64>,
        /// Upper bound.
        max: Option<f64>,
        /// Whether `min` itself matches.
        min_inclusive: bool,
        /// Whether `max` itself matches.
        max_inclusive: bool,
    },
    /// `field` equals one of `values` (1 to 1024 values).
    In {
        /// Field name.
        field: String,
        /// Accepted values.
        values: Vec<PayloadValue>,
    },
    /// All children match (1 or more).
    And(Vec<u32>),
    /// Any child matches (1 or more).
    Or(Vec<u32>),
    /// The child does not match.
    Not(u32),
}

/// A payload filter: nodes in dependency order, the last one the root.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Filter {
    /// 1 to 256 nodes; each refers only to nodes before it.
    pub nodes: Vec<FilterNode>,
}

/// `Search` body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Search {
    /// Collection.
    pub collection: String,
    /// The query vector: finite floats, the collection's dimension.
    pub vector: Vec<f32>,
    /// Results wanted, 1 to 10000.
    pub k: u32,
    /// Search beam width; 0 for the collection's default, else k to 100000.
    pub ef: u32,
    /// Only points whose payload matches.
    pub filter: Option<Filter>,
    /// Return each hit's payload.
    pub with_payload: bool,
}

/// `Count` body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Count {
    /// Collection.
    pub collection: String,
    /// Only points whose payload matches.
    pub filter: Option<Filter>,
}

/// `DescribeCollection` response body, and an entry of `CollectionList`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct CollectionInfo {
    /// Schema.
    pub spec: CollectionSpec,
    /// Live points.
    pub points: u64,
}

/// `ListCollections` response body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct CollectionList {
    /// Every collection.
    pub collections: Vec<CollectionInfo>,
}

/// `Upsert` and `Delete` response body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WriteAck {
    /// Points written or deleted.
    pub count: u32,
}

/// One point returned by `Get`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PointRecord {
    /// Id.
    pub id: u64,
    /// Vector, empty unless asked for.
    pub vector: Vec<f32>,
    /// Payload, if asked for and present.
    pub payload: Option<Payload>,
}

/// `Get` response body: the ids that exist, in request order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct GetResult {
    /// Found points.
    pub points: Vec<PointRecord>,
}

/// One search hit.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Hit {
    /// Point id.
    pub id: u64,
    /// Distance under the collection's metric (smaller is closer).
    pub distance: f32,
    /// Payload, if asked for.
    pub payload: Option<Payload>,
}

/// `Search` response body: hits by increasing distance.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct SearchResult {
    /// At most k hits.
    pub hits: Vec<Hit>,
}

/// `Count` response body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct CountResult {
    /// Matching points.
    pub count: u64,
}

/// A named counter.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Counter {
    /// Name, such as `connections` or `throttled_us`.
    pub name: String,
    /// Value.
    pub value: u64,
}

/// One LEU's statistics.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct LeuStats {
    /// LEU index.
    pub leu: u16,
    /// Counters; names are documented in docs/VBP.md and only ever added.
    pub counters: Vec<Counter>,
}

impl LeuStats {
    /// The counter `name`, if this LEU reports it.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value)
    }
}

/// The counters `names` summed over every LEU (a name an LEU does not report counts 0).
pub fn counters_sum(leus: &[LeuStats], names: &[&str]) -> u64 {
    leus.iter()
        .flat_map(|leu| leu.counters.iter())
        .filter(|c| names.contains(&c.name.as_str()))
        .map(|c| c.value)
        .sum()
}

/// Counters that stay above 0 while an LEU has index builds or compactions to do, or the
/// node's index tier a node graph to build: a benchmark or a demo waits for their sum to
/// reach 0 before it measures.
pub const BACKGROUND_WORK_COUNTERS: [&str; 3] = [
    "pending_compactions",
    "index_build_backlog",
    "node_graphs_due",
];

/// `Stats` response body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StatsResult {
    /// Per LEU.
    pub leus: Vec<LeuStats>,
}

/// A table fenced for damage (docs/VBP.md, `Fenced`): requests that need it are refused
/// with [`ErrorCode::Fenced`], naming the same range.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FencedTable {
    /// The LEU whose store holds it.
    pub leu: u16,
    /// The collection.
    pub collection: String,
    /// The smallest point id the table holds.
    pub first: u64,
    /// The largest point id the table holds.
    pub last: u64,
    /// The table's number (its file is `store/tables/{table:06}.sst` in the LEU's directory).
    pub table: u64,
    /// What was found: the file, the part and the offset.
    pub detail: String,
}

/// `Fenced` response body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FencedResult {
    /// Every fenced table, by LEU, collection and first id.
    pub tables: Vec<FencedTable>,
}

/// `Error` response body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ErrorBody {
    /// An `ErrorCode` value; clients treat unknown codes as generic errors.
    pub code: u16,
    /// Human-readable detail.
    pub message: String,
}

/// `Throttled` response body.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ThrottledBody {
    /// Suggested wait before retrying, in milliseconds.
    pub retry_after_ms: u32,
    /// What is saturated (buffers, in-flight requests, ring).
    pub reason: String,
}

/// `Partial` response body: a write whose points live on several LEUs (or nodes) was
/// applied on some of them and failed on others. The parts that succeeded are durable,
/// exactly as a full success would be; `failed_ids` names the points of the parts that
/// failed. Those were not applied, except when `code` is `Internal`, where they may or may
/// not have been (as for any `Internal` answer). Upserts and deletes are idempotent: sending
/// the whole request again, or only `failed_ids`, is safe.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PartialBody {
    /// What the parts that succeeded did, counted as a full answer counts it: points
    /// upserted, or points deleted that existed.
    pub applied: u32,
    /// The ids of the parts that failed, each once, in request order.
    pub failed_ids: Vec<u64>,
    /// The failure was THROTTLED: retry `failed_ids` after `retry_after_ms`; `code` is 0.
    pub throttled: bool,
    /// Suggested wait before a retry, in milliseconds (0 unless `throttled`).
    pub retry_after_ms: u32,
    /// An `ErrorCode` value when not `throttled`.
    pub code: u16,
    /// The failure, in words (the first failed part's, by LEU order).
    pub message: String,
}

/// Wire error codes carried in `ErrorBody::code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame failed validation (checksum, layout, limits).
    BadFrame = 1,
    /// The frame's protocol version is not spoken here.
    UnsupportedVersion = 2,
    /// The opcode is unknown or not valid in this direction.
    UnknownOpcode = 3,
    /// The frame is larger than `frame_size_max_bytes`.
    FrameTooLarge = 4,
    /// A field is out of range or inconsistent.
    InvalidArgument = 5,
    /// No such collection.
    CollectionNotFound = 6,
    /// The collection already exists.
    CollectionExists = 7,
    /// A vector's dimension differs from the collection's.
    DimensionMismatch = 8,
    /// The server failed; the request may or may not have been applied.
    Internal = 9,
    /// The server cannot serve now (starting, read-only after a disk error).
    Unavailable = 10,
    /// Data the request needs is fenced after corruption; the message names the collection
    /// and the id range. Other data is served.
    Fenced = 11,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadFrame,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownOpcode,
        ErrorCode::FrameTooLarge,
        ErrorCode::InvalidArgument,
        ErrorCode::CollectionNotFound,
        ErrorCode::CollectionExists,
        ErrorCode::DimensionMismatch,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Fenced,
    ];

    /// The code with this wire value.
    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|code| *code as u16 == value)
    }
}

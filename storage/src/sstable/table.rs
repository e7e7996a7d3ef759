//! The SSTable file: data blocks, the aligned vector region, and the meta blocks that find
//! and check them. One table holds one collection's points; the vectors of the table's
//! length (the first put's) live in the region, any other length inline in its data block.
//!
//! ```text
//! offset 0        data blocks (block.rs), 4 KiB units, keys strictly increasing
//! data_end        vector region: vector_count slots of `stride` bytes (the vector length
//!                 rounded up to 64), zero-padded to a 4 KiB unit; no framing inside, so the
//!                 side-car index reads it through mmap as one array
//! vcrc_offset     meta block: crc32c u32 per 4 KiB unit of the vector region
//! index_offset    meta block: count u32, then per data block
//!                 last point u64 | offset u64 | length u32
//! bloom_offset    meta block: the bloom filter (bloom.rs)
//! file_len - 4096 footer, a meta block (one unit): see `Footer`
//! ```
//!
//! A meta block is `payload | zero padding | payload_len u32 | crc32c u32`, padded to whole
//! 4 KiB units, the CRC over every byte before it. The sections are contiguous and in this
//! order; the footer's offsets must say so exactly. A put's value in a data block is
//! `slot u32 | payload`, `slot` indexing the vector region, or, for a vector whose length is
//! not the table's, `0xFFFFFFFF u32 | vector_len u32 | vector | payload`.
//!
//! Pair assertions: every block is parsed before it is written (block.rs, and [`seal`] for
//! meta blocks), and a finished table is reopened and verified end to end before the builder
//! reports it. A reader verifies the footer and meta blocks at open, each data block when it
//! reads it, and the vector region's units under the vectors it returns.

use super::block::{Block, BlockBuilder, BLOCK_UNIT_BYTES};
use crate::background::RateLimiter;
use crate::bloom::BloomFilter;
use crate::env::{Files, Mapped, NewFile};
use crate::error::{io_error, StorageError};
use crate::manifest::{parse_file_number, TableMeta};
use crate::memtable::{Key, Point};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The footer's magic number: "VTXSST" then two format bytes, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VTXSST\x01\x00");
/// The table format version.
pub const FORMAT_VERSION: u32 = 1;
/// Vectors start on multiples of this many bytes.
pub const VECTOR_ALIGN_BYTES: usize = 64;
/// The largest vector accepted (a 16 384-dimensional f32 vector).
pub const VECTOR_BYTES_MAX: usize = 64 << 10;
const UNIT: usize = BLOCK_UNIT_BYTES;
const INDEX_ENTRY_BYTES: usize = 8 + 8 + 4;
/// The slot of a put whose vector is stored inline.
const SLOT_INLINE: u32 = u32::MAX;
const FOOTER_PAYLOAD_BYTES: usize = 8 + 4 + 4 + 8 * 3 + 4 + 4 + 8 * 6 + 8 * 6;
/// The largest meta block accepted at open.
const META_BYTES_MAX: usize = 256 << 20;

/// The file name of table `number`.
pub fn table_name(number: u64) -> String {
    format!("{number:06}.sst")
}

/// The number in a table's file name.
pub fn parse_table_name(name: &str) -> Option<u64> {
    parse_file_number(name, "", ".sst")
}

/// The parts of a table, for error messages and the bit-flip tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// A data block.
    Data,
    /// The vector region.
    Vectors,
    /// The vector region's checksums.
    VectorChecksums,
    /// The index block.
    Index,
    /// The bloom filter.
    Bloom,
    /// The footer.
    Footer,
}

impl Section {
    /// Every part, in file order.
    pub const ALL: [Section; 6] = [
        Section::Data,
        Section::Vectors,
        Section::VectorChecksums,
        Section::Index,
        Section::Bloom,
        Section::Footer,
    ];
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Section::Data => "data block",
            Section::Vectors => "vector region",
            Section::VectorChecksums => "vector checksum block",
            Section::Index => "index block",
            Section::Bloom => "bloom filter block",
            Section::Footer => "footer",
        })
    }
}

fn corrupt(path: &Path, section: Section, offset: u64, detail: impl Into<String>) -> StorageError {
    StorageError::TableCorrupt {
        path: path.to_owned(),
        section,
        offset,
        detail: detail.into(),
    }
}

/// Seals a meta block: payload, zero padding, length, CRC, in whole units; checked before
/// it is returned (the assertion before the write).
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let size = (payload.len() + 8).div_ceil(UNIT) * UNIT;
    let mut block = payload.to_vec();
    block.resize(size - 8, 0);
    block.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&block);
    block.extend_from_slice(&crc.to_le_bytes());
    assert!(
        unseal(&block).is_ok(),
        "a meta block failed its own check before the write"
    );
    block
}

/// The payload of a sealed meta block, or what is wrong with it.
pub fn unseal(block: &[u8]) -> Result<&[u8], String> {
    if block.len() < UNIT || !block.len().is_multiple_of(UNIT) {
        return Err(format!(
            "{} bytes is not a whole number of units",
            block.len()
        ));
    }
    let crc_at = block.len() - 4;
    let stored = u32::from_le_bytes([
        block[crc_at],
        block[crc_at + 1],
        block[crc_at + 2],
        block[crc_at + 3],
    ]);
    let computed = crc32c::crc32c(&block[..crc_at]);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let len_at = crc_at - 4;
    let len = u32::from_le_bytes([
        block[len_at],
        block[len_at + 1],
        block[len_at + 2],
        block[len_at + 3],
    ]) as usize;
    if len > len_at {
        return Err(format!("payload length {len} exceeds the block"));
    }
    if block[len..len_at].iter().any(|&byte| byte != 0) {
        return Err("non-zero padding".to_owned());
    }
    Ok(&block[..len])
}

/// A little-endian reader over a payload that reports running off its end.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, at: 0 }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let raw = self
            .bytes
            .get(self.at..self.at + N)
            .ok_or_else(|| format!("truncated at byte {}", self.at))?;
        self.at += N;
        let mut out = [0u8; N];
        out.copy_from_slice(raw);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.take::<4>().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

/// What the footer says: where everything is, and a summary of the contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footer {
    /// The collection every entry belongs to.
    pub collection: u32,
    /// Bytes of each vector (0 when the table holds only tombstones or empty vectors).
    pub vector_bytes: u32,
    /// Bytes from one vector to the next: `vector_bytes` rounded up to 64.
    pub stride: u32,
    /// Vectors in the region (one per put).
    pub vector_count: u64,
    /// Where the data blocks end and the vector region starts.
    pub data_end: u64,
    /// Where the vector checksum block starts (the vector region ends).
    pub vcrc_offset: u64,
    /// Where the index block starts.
    pub index_offset: u64,
    /// Where the bloom filter block starts.
    pub bloom_offset: u64,
    /// Where the footer starts.
    pub footer_offset: u64,
    /// Entries (puts and tombstones).
    pub entries: u64,
    /// Tombstones among them.
    pub tombstones: u64,
    /// Puts whose vector is stored inline (its length is not the table's).
    pub inline_vectors: u64,
    /// The smallest point id.
    pub smallest: u64,
    /// The largest point id.
    pub largest: u64,
    /// The lowest sequence number.
    pub min_sequence: u64,
    /// The highest sequence number.
    pub max_sequence: u64,
}

impl Footer {
    /// Where `section` starts in the file (a data block: the first one).
    pub fn section_start(&self, section: Section) -> u64 {
        match section {
            Section::Data => 0,
            Section::Vectors => self.data_end,
            Section::VectorChecksums => self.vcrc_offset,
            Section::Index => self.index_offset,
            Section::Bloom => self.bloom_offset,
            Section::Footer => self.footer_offset,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(FOOTER_PAYLOAD_BYTES);
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&self.collection.to_le_bytes());
        for value in [self.data_end, self.vcrc_offset, self.index_offset] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.extend_from_slice(&self.vector_bytes.to_le_bytes());
        bytes.extend_from_slice(&self.stride.to_le_bytes());
        for value in [
            self.bloom_offset,
            self.footer_offset,
            self.vector_count,
            self.entries,
            self.tombstones,
            self.inline_vectors,
            self.smallest,
            self.largest,
            self.min_sequence,
            self.max_sequence,
            0, // reserved
            0, // reserved
        ] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        debug_assert_eq!(bytes.len(), FOOTER_PAYLOAD_BYTES);
        bytes
    }

    fn decode(payload: &[u8], file_len: u64) -> Result<Self, String> {
        if payload.len() != FOOTER_PAYLOAD_BYTES {
            return Err(format!("footer payload of {} bytes", payload.len()));
        }
        let mut fields = Fields::new(payload);
        let magic = fields.u64()?;
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#018x}: not a VORTEX SSTable"));
        }
        let version = fields.u32()?;
        if version != FORMAT_VERSION {
            return Err(format!("unsupported table format version {version}"));
        }
        let collection = fields.u32()?;
        let data_end = fields.u64()?;
        let vcrc_offset = fields.u64()?;
        let index_offset = fields.u64()?;
        let vector_bytes = fields.u32()?;
        let stride = fields.u32()?;
        let mut rest = [0u64; 12];
        for value in &mut rest {
            *value = fields.u64()?;
        }
        let [bloom_offset, footer_offset, vector_count, entries, tombstones, inline_vectors, smallest, largest, min_sequence, max_sequence, _, _] =
            rest;
        let footer = Footer {
            collection,
            vector_bytes,
            stride,
            vector_count,
            data_end,
            vcrc_offset,
            index_offset,
            bloom_offset,
            footer_offset,
            entries,
            tombstones,
            inline_vectors,
            smallest,
            largest,
            min_sequence,
            max_sequence,
        };
        footer.check(file_len)?;
        Ok(footer)
    }

    fn check(&self, file_len: u64) -> Result<(), String> {
        let unit = UNIT as u64;
        let offsets = [
            0,
            self.data_end,
            self.vcrc_offset,
            self.index_offset,
            self.bloom_offset,
            self.footer_offset,
            file_len,
        ];
        if offsets.iter().any(|offset| !offset.is_multiple_of(unit))
            || offsets.windows(2).any(|pair| pair[0] > pair[1])
            || self.footer_offset + unit != file_len
            || self.index_offset == self.vcrc_offset
            || self.bloom_offset == self.index_offset
        {
            return Err(format!("section offsets out of order: {self:?}"));
        }
        let expected_stride =
            (self.vector_bytes as usize).div_ceil(VECTOR_ALIGN_BYTES) * VECTOR_ALIGN_BYTES;
        let region = (self.vector_count as u128) * u128::from(self.stride);
        if self.vector_bytes as usize > VECTOR_BYTES_MAX
            || self.stride as usize != expected_stride
            || region.div_ceil(UNIT as u128) * UNIT as u128
                != u128::from(self.vcrc_offset - self.data_end)
        {
            return Err(format!(
                "vector region does not fit its description: {self:?}"
            ));
        }
        if self.entries == 0
            || self.tombstones > self.entries
            || self.vector_count.checked_add(self.inline_vectors)
                != Some(self.entries - self.tombstones)
            || self.smallest > self.largest
            || self.min_sequence > self.max_sequence
        {
            return Err(format!("inconsistent summary: {self:?}"));
        }
        Ok(())
    }
}

/// Where a data block is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexEntry {
    last_point: u64,
    offset: u64,
    len: u32,
}

/// What [`Table::salvage`] found in a damaged table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvage {
    /// Every entry whose block and vector verify, in key order.
    pub entries: Vec<Entry>,
    /// Points whose entry verified and whose vector did not.
    pub lost_points: Vec<u64>,
    /// `(first, last)` point ids of each data block that failed its checks.
    pub lost_ranges: Vec<(u64, u64)>,
}

/// What an entry of a table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its key.
    pub key: Key,
    /// Its sequence number.
    pub sequence: u64,
    /// The point, or `None` for a tombstone.
    pub point: Option<Point>,
}

/// Writes one table. Entries come in key order; [`TableBuilder::accepts`] says whether the
/// next one may join this table (same collection, same vector length).
#[derive(Debug)]
pub struct TableBuilder {
    files: Arc<dyn Files>,
    path: PathBuf,
    /// `None` once finished; a builder dropped before then deletes its file.
    file: Option<io::BufWriter<Box<dyn NewFile>>>,
    footer: Footer,
    vector_bytes: Option<usize>,
    block: BlockBuilder,
    index: Vec<IndexEntry>,
    offset: u64,
    vectors: Vec<u8>,
    keys: Vec<Key>,
    scratch: Vec<u8>,
    last_point: Option<u64>,
}

impl TableBuilder {
    /// Creates `path` in `files` (it must not exist) for a table of `collection`.
    pub fn create(
        files: &Arc<dyn Files>,
        path: &Path,
        collection: u32,
    ) -> Result<Self, StorageError> {
        let file = files.create_new(path).map_err(io_error("create", path))?;
        Ok(TableBuilder {
            files: Arc::clone(files),
            path: path.to_owned(),
            file: Some(io::BufWriter::with_capacity(256 << 10, file)),
            footer: Footer {
                collection,
                min_sequence: u64::MAX,
                ..Footer::default()
            },
            vector_bytes: None,
            block: BlockBuilder::new(),
            index: Vec::new(),
            offset: 0,
            vectors: Vec::new(),
            keys: Vec::new(),
            scratch: Vec::new(),
            last_point: None,
        })
    }

    /// Whether an entry of `key` may be added to this table (it is of the same collection).
    pub fn accepts(&self, key: &Key) -> bool {
        key.collection == self.footer.collection
    }

    /// Bytes written or buffered so far.
    pub fn bytes(&self) -> u64 {
        self.offset + self.vectors.len() as u64
    }

    /// Entries added.
    pub fn entries(&self) -> u64 {
        self.footer.entries
    }

    /// Adds an entry; keys must increase and [`accepts`](Self::accepts) must hold. Data
    /// blocks are written as they fill, through `limiter` when one is given.
    pub fn add(
        &mut self,
        key: Key,
        sequence: u64,
        point: Option<&Point>,
        limiter: Option<&mut RateLimiter>,
    ) -> Result<(), StorageError> {
        debug_assert!(self.accepts(&key));
        debug_assert!(self.last_point.is_none_or(|last| last < key.point));
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let is_put = match point {
            Some(point) => {
                if point.vector.len() > VECTOR_BYTES_MAX {
                    return Err(StorageError::Invalid(format!(
                        "a vector of {} bytes exceeds the limit of {VECTOR_BYTES_MAX}",
                        point.vector.len()
                    )));
                }
                let table_len = *self.vector_bytes.get_or_insert(point.vector.len());
                if point.vector.len() == table_len {
                    let stride = table_len.div_ceil(VECTOR_ALIGN_BYTES) * VECTOR_ALIGN_BYTES;
                    let slot = u32::try_from(self.footer.vector_count)
                        .ok()
                        .filter(|&slot| slot != SLOT_INLINE)
                        .ok_or_else(|| {
                            StorageError::Invalid("too many vectors in one table".to_owned())
                        })?;
                    scratch.extend_from_slice(&slot.to_le_bytes());
                    let start = self.vectors.len();
                    self.vectors.resize(start + stride, 0);
                    self.vectors[start..start + point.vector.len()].copy_from_slice(&point.vector);
                    self.footer.vector_count += 1;
                } else {
                    scratch.extend_from_slice(&SLOT_INLINE.to_le_bytes());
                    scratch.extend_from_slice(&(point.vector.len() as u32).to_le_bytes());
                    scratch.extend_from_slice(&point.vector);
                    self.footer.inline_vectors += 1;
                }
                scratch.extend_from_slice(&point.payload);
                true
            }
            None => {
                self.footer.tombstones += 1;
                false
            }
        };
        let value = is_put.then_some(&scratch[..]);
        if !self.block.try_add(key, sequence, value) {
            self.write_block(limiter)?;
            let added = self.block.try_add(key, sequence, value);
            debug_assert!(added, "an empty block takes any entry");
        }
        self.scratch = scratch;
        if self.footer.entries == 0 {
            self.footer.smallest = key.point;
        }
        self.footer.entries += 1;
        self.footer.largest = key.point;
        self.footer.min_sequence = self.footer.min_sequence.min(sequence);
        self.footer.max_sequence = self.footer.max_sequence.max(sequence);
        self.keys.push(key);
        self.last_point = Some(key.point);
        Ok(())
    }

    fn write_block(&mut self, limiter: Option<&mut RateLimiter>) -> Result<(), StorageError> {
        if self.block.is_empty() {
            return Ok(());
        }
        let last_point = self.last_point.unwrap_or_default();
        let block = self.block.finish();
        self.write(&block, limiter)?;
        self.index.push(IndexEntry {
            last_point,
            offset: self.offset - block.len() as u64,
            len: block.len() as u32,
        });
        Ok(())
    }

    fn write(
        &mut self,
        bytes: &[u8],
        limiter: Option<&mut RateLimiter>,
    ) -> Result<(), StorageError> {
        if let Some(limiter) = limiter {
            limiter.throttle(bytes.len() as u64)?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(StorageError::Invalid("the table is finished".to_owned()));
        };
        file.write_all(bytes)
            .map_err(io_error("write", &self.path))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes the rest (vector region, checksums, index, bloom filter, footer), syncs the
    /// file, then reopens and verifies it whole. Returns the opened table.
    pub fn finish(
        mut self,
        number: u64,
        bloom_bits_per_key: usize,
        mut limiter: Option<&mut RateLimiter>,
    ) -> Result<Table, StorageError> {
        if self.footer.entries == 0 {
            return Err(StorageError::Invalid(
                "an SSTable needs an entry".to_owned(),
            ));
        }
        self.write_block(limiter.as_deref_mut())?;
        self.footer.data_end = self.offset;
        self.footer.vector_bytes = self.vector_bytes.unwrap_or(0) as u32;
        self.footer.stride = (self.footer.vector_bytes as usize).div_ceil(VECTOR_ALIGN_BYTES)
            as u32
            * VECTOR_ALIGN_BYTES as u32;
        let mut vectors = std::mem::take(&mut self.vectors);
        vectors.resize(vectors.len().div_ceil(UNIT) * UNIT, 0);
        let mut crcs = Vec::with_capacity(vectors.len() / UNIT * 4);
        for unit in vectors.chunks_exact(UNIT) {
            crcs.extend_from_slice(&crc32c::crc32c(unit).to_le_bytes());
        }
        self.write(&vectors, limiter.as_deref_mut())?;
        drop(vectors);
        self.footer.vcrc_offset = self.offset;
        self.write(&seal(&crcs), limiter.as_deref_mut())?;
        self.footer.index_offset = self.offset;
        let mut index = Vec::with_capacity(4 + self.index.len() * INDEX_ENTRY_BYTES);
        index.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        for entry in &self.index {
            index.extend_from_slice(&entry.last_point.to_le_bytes());
            index.extend_from_slice(&entry.offset.to_le_bytes());
            index.extend_from_slice(&entry.len.to_le_bytes());
        }
        self.write(&seal(&index), limiter.as_deref_mut())?;
        self.footer.bloom_offset = self.offset;
        let bloom = BloomFilter::build(self.keys.iter(), bloom_bits_per_key).encode();
        self.write(&seal(&bloom), limiter.as_deref_mut())?;
        self.footer.footer_offset = self.offset;
        let footer = seal(&self.footer.encode());
        self.write(&footer, limiter)?;
        let Some(writer) = self.file.take() else {
            return Err(StorageError::Invalid("the table is finished".to_owned()));
        };
        let result = writer
            .into_inner()
            .map_err(|error| io_error("write", &self.path)(error.into_error()))
            .and_then(|mut file| file.sync().map_err(io_error("fsync", &self.path)))
            .and_then(|()| {
                // The assertion after the write: what is on disk opens and verifies whole.
                let table = Table::open(&self.files, &self.path, number)?;
                table.verify(None, None)?;
                table.release_pages();
                Ok(table)
            });
        if result.is_err() {
            self.remove_file();
        }
        result
    }

    fn remove_file(&self) {
        if let Err(error) = self.files.remove(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove an abandoned SSTable");
        }
    }
}

impl Drop for TableBuilder {
    /// A table abandoned before `finish` (a failed write, a stopped job) is deleted.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            self.remove_file();
        }
    }
}

/// An open table: the file mapped, its index, bloom filter and vector checksums in memory.
///
/// Shared by `Arc` between the LEU, compactions, the scrubber and iterators. Once a newer
/// version of the store no longer lists it, it is marked obsolete, and the last holder to
/// drop it deletes the file: a file is never deleted under a reader.
pub struct Table {
    files: Arc<dyn Files>,
    number: u64,
    path: PathBuf,
    /// `None` for a table that could not be opened (quarantined from the start).
    map: Option<Mapped>,
    file_bytes: u64,
    footer: Footer,
    index: Vec<IndexEntry>,
    bloom: BloomFilter,
    vector_crcs: Vec<u32>,
    quarantine: Arc<Quarantine>,
    obsolete: AtomicBool,
    on_delete: Mutex<Option<OnDelete>>,
}

/// What runs after an obsolete table's file is deleted (the side-car's removal).
pub type OnDelete = Box<dyn FnOnce(u64) + Send>;

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("number", &self.number)
            .field("path", &self.path)
            .field("footer", &self.footer)
            .finish_non_exhaustive()
    }
}

/// A table's quarantine: set once, with the reason, and read without a lock.
#[derive(Debug)]
struct Quarantine {
    path: PathBuf,
    reason: Mutex<Option<String>>,
    is_set: AtomicBool,
}

impl Quarantine {
    fn new(path: &Path) -> Quarantine {
        Quarantine {
            path: path.to_owned(),
            reason: Mutex::new(None),
            is_set: AtomicBool::new(false),
        }
    }

    fn is_set(&self) -> bool {
        self.is_set.load(Ordering::Acquire)
    }

    fn reason(&self) -> Option<String> {
        if !self.is_set() {
            return None;
        }
        self.reason.lock().ok().and_then(|reason| reason.clone())
    }

    fn set(&self, reason: &str) {
        if let Ok(mut slot) = self.reason.lock() {
            if slot.is_none() {
                tracing::error!(path = %self.path.display(), reason, "SSTable quarantined");
                *slot = Some(reason.to_owned());
                self.is_set.store(true, Ordering::Release);
            }
        }
    }
}

/// Fences a table for damage found in its vector region by a reader outside it
/// ([`Table::vector_fence`]).
#[derive(Debug, Clone)]
pub struct VectorFence {
    quarantine: Arc<Quarantine>,
    /// Where the vector region starts in the file.
    region_offset: u64,
}

impl VectorFence {
    /// Quarantines the table for damage in unit `unit` of its vector region, as a read of
    /// the table itself would ([`StorageError::TableCorrupt`]); the error.
    pub fn damaged(&self, unit: usize, detail: &str) -> StorageError {
        let error = corrupt(
            &self.quarantine.path,
            Section::Vectors,
            self.region_offset + (unit * UNIT) as u64,
            detail,
        );
        self.quarantine.set(&error.to_string());
        error
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if !self.obsolete.load(Ordering::Acquire) {
            return;
        }
        if let Err(error) = self.files.remove(&self.path) {
            tracing::warn!(path = %self.path.display(), %error, "cannot delete an obsolete SSTable");
        }
        let on_delete = self.on_delete.get_mut().ok().and_then(Option::take);
        if let Some(on_delete) = on_delete {
            on_delete(self.number);
        }
    }
}

impl Table {
    /// Opens and maps `path` in `files`, verifying its footer, index, bloom filter and
    /// vector checksums.
    pub fn open(files: &Arc<dyn Files>, path: &Path, number: u64) -> Result<Self, StorageError> {
        let map = files.map(path).map_err(io_error("open", path))?;
        let file_len = map.len() as u64;
        if file_len < UNIT as u64 || !file_len.is_multiple_of(UNIT as u64) {
            return Err(corrupt(
                path,
                Section::Footer,
                0,
                format!("file of {file_len} bytes is not a whole number of 4 KiB units"),
            ));
        }
        let footer_at = file_len - UNIT as u64;
        let footer_payload = unseal(&map[footer_at as usize..])
            .map_err(|detail| corrupt(path, Section::Footer, footer_at, detail))?;
        let footer = Footer::decode(footer_payload, file_len)
            .map_err(|detail| corrupt(path, Section::Footer, footer_at, detail))?;
        let meta = |section, start: u64, end: u64| -> Result<&[u8], StorageError> {
            if end - start > META_BYTES_MAX as u64 {
                return Err(corrupt(path, section, start, "meta block too large"));
            }
            unseal(&map[start as usize..end as usize])
                .map_err(|detail| corrupt(path, section, start, detail))
        };
        let crcs = meta(
            Section::VectorChecksums,
            footer.vcrc_offset,
            footer.index_offset,
        )?;
        let units = (footer.vcrc_offset - footer.data_end) / UNIT as u64;
        if crcs.len() as u64 != units * 4 {
            return Err(corrupt(
                path,
                Section::VectorChecksums,
                footer.vcrc_offset,
                format!("{} checksum bytes for {units} units", crcs.len()),
            ));
        }
        let vector_crcs = crcs
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let index_bytes = meta(Section::Index, footer.index_offset, footer.bloom_offset)?;
        let index = decode_index(index_bytes, &footer)
            .map_err(|detail| corrupt(path, Section::Index, footer.index_offset, detail))?;
        let bloom_bytes = meta(Section::Bloom, footer.bloom_offset, footer.footer_offset)?;
        let bloom = BloomFilter::decode(bloom_bytes).map_err(|error| {
            corrupt(path, Section::Bloom, footer.bloom_offset, error.to_string())
        })?;
        Ok(Table {
            files: Arc::clone(files),
            number,
            path: path.to_owned(),
            map: Some(map),
            file_bytes: file_len,
            footer,
            index,
            bloom,
            vector_crcs,
            quarantine: Arc::new(Quarantine::new(path)),
            obsolete: AtomicBool::new(false),
            on_delete: Mutex::new(None),
        })
    }

    /// A live table that cannot be opened (missing, or its footer or a meta block damaged):
    /// quarantined from the start, with its key range from the MANIFEST, so that reads that
    /// need it fail instead of silently reading older versions.
    pub fn broken(files: &Arc<dyn Files>, path: &Path, meta: &TableMeta, reason: &str) -> Self {
        let table = Table {
            files: Arc::clone(files),
            number: meta.number,
            path: path.to_owned(),
            map: None,
            file_bytes: meta.file_bytes,
            footer: Footer {
                collection: meta.collection,
                smallest: meta.smallest,
                largest: meta.largest,
                max_sequence: meta.max_sequence,
                ..Footer::default()
            },
            index: Vec::new(),
            bloom: BloomFilter::build(std::iter::empty(), 1),
            vector_crcs: Vec::new(),
            quarantine: Arc::new(Quarantine::new(path)),
            obsolete: AtomicBool::new(false),
            on_delete: Mutex::new(None),
        };
        table.quarantine(reason);
        table
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or_default()
    }

    /// The table's file number.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What its footer says.
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The file's size.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// The smallest key.
    pub fn smallest(&self) -> Key {
        Key {
            collection: self.footer.collection,
            point: self.footer.smallest,
        }
    }

    /// The largest key.
    pub fn largest(&self) -> Key {
        Key {
            collection: self.footer.collection,
            point: self.footer.largest,
        }
    }

    /// Lets go of the pages of the table this process holds mapped, so that they leave its
    /// resident set; later reads fault back in what they touch (from the page cache while
    /// the kernel keeps it). For after a pass over the whole table (the check after writing
    /// it, a scrub): without it, such a pass leaves every page of every table resident (and
    /// locked, under `mlockall`), where a search reads a few rows of each. The pages are
    /// unlocked first (`madvise` refuses locked pages) and stay unlocked.
    pub fn release_pages(&self) {
        if let Some(map) = &self.map {
            map.release_pages();
        }
    }

    /// The vector region, `vector_count` slots of `stride` bytes (then padding), mapped and
    /// unverified: the side-car builder reads it in place; [`verify`](Self::verify) and the
    /// scrubber check it against its checksums.
    pub fn vector_region(&self) -> &[u8] {
        let start = self.footer.data_end as usize;
        let len = (self.footer.vector_count * u64::from(self.footer.stride)) as usize;
        self.bytes().get(start..start + len).unwrap_or_default()
    }

    /// Marks the table obsolete: the last holder deletes the file, then calls `on_delete`.
    pub fn mark_obsolete(&self, on_delete: Option<OnDelete>) {
        if let Ok(mut slot) = self.on_delete.lock() {
            *slot = on_delete;
        }
        self.obsolete.store(true, Ordering::Release);
    }

    /// Why the table is quarantined, if it is. A healthy table answers from an atomic flag,
    /// without a lock: every read asks, and so does every search (to fence what needs it).
    pub fn quarantined(&self) -> Option<String> {
        self.quarantine.reason()
    }

    /// Whether the table is quarantined (see [`Table::quarantined`] for why).
    pub fn is_quarantined(&self) -> bool {
        self.quarantine.is_set()
    }

    /// Quarantines the table: every later read of it fails with
    /// [`StorageError::Quarantined`]. Logged once.
    pub fn quarantine(&self, reason: &str) {
        self.quarantine.set(reason);
    }

    /// The checksum of each 4 KiB unit of the vector region, from its start.
    pub fn vector_unit_checksums(&self) -> &[u32] {
        &self.vector_crcs
    }

    /// What lets a reader of the vector region outside this table (a side-car graph
    /// searching it in place, verifying [`Table::vector_unit_checksums`]) fence the table
    /// when a unit fails, without keeping the table alive.
    pub fn vector_fence(&self) -> VectorFence {
        VectorFence {
            quarantine: Arc::clone(&self.quarantine),
            region_offset: self.footer.data_end,
        }
    }

    fn check_quarantine(&self) -> Result<(), StorageError> {
        match self.quarantined() {
            Some(reason) => Err(StorageError::Quarantined {
                path: self.path.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Runs a read; corruption found quarantines the table, and so does a page of its file
    /// the kernel could not read (the read saw zeros instead, see `lost_pages.rs`), whatever
    /// the read made of them.
    fn guarded<T>(
        &self,
        read: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.check_quarantine()?;
        let result = read();
        if let Some(offset) = self.map.as_ref().and_then(Mapped::lost_page) {
            self.quarantine(&format!(
                "an I/O error: the page at byte {offset} could not be read (SIGBUS under the \
                 mapping); the disk or the file is damaged"
            ));
            return Err(StorageError::Quarantined {
                path: self.path.clone(),
                reason: self.quarantined().unwrap_or_default(),
            });
        }
        if let Err(error @ StorageError::TableCorrupt { .. }) = &result {
            self.quarantine(&error.to_string());
        }
        result
    }

    fn block(&self, index: usize) -> Result<Block<'_>, StorageError> {
        let entry = self.index[index];
        let bytes =
            &self.bytes()[entry.offset as usize..(entry.offset + u64::from(entry.len)) as usize];
        let block = Block::parse(bytes)
            .map_err(|error| corrupt(&self.path, Section::Data, entry.offset, error.to_string()))?;
        // A checksum-valid block must still agree with the index and the footer.
        match block.key_range() {
            Some((first, last))
                if first.collection == self.footer.collection
                    && last.collection == self.footer.collection
                    && last.point == entry.last_point
                    && (index > 0 || first.point == self.footer.smallest)
                    && (index == 0 || first.point > self.index[index - 1].last_point) =>
            {
                Ok(block)
            }
            _ => Err(corrupt(
                &self.path,
                Section::Data,
                entry.offset,
                "block keys disagree with the index",
            )),
        }
    }

    /// The vector in `slot`, its region units verified.
    fn vector(&self, slot: u32) -> Result<&[u8], StorageError> {
        let stride = self.footer.stride as usize;
        if u64::from(slot) >= self.footer.vector_count {
            return Err(corrupt(
                &self.path,
                Section::Data,
                0,
                format!("vector slot {slot} beyond the region"),
            ));
        }
        let start = slot as usize * stride;
        let len = self.footer.vector_bytes as usize;
        if len > 0 {
            for unit in start / UNIT..=(start + len - 1) / UNIT {
                self.check_vector_unit(unit)?;
            }
        }
        let at = self.footer.data_end as usize + start;
        Ok(&self.bytes()[at..at + len])
    }

    fn check_vector_unit(&self, unit: usize) -> Result<(), StorageError> {
        let at = self.footer.data_end as usize + unit * UNIT;
        let computed = crc32c::crc32c(&self.bytes()[at..at + UNIT]);
        if computed != self.vector_crcs[unit] {
            return Err(corrupt(
                &self.path,
                Section::Vectors,
                at as u64,
                format!(
                    "checksum mismatch (stored {:#010x}, computed {computed:#010x})",
                    self.vector_crcs[unit]
                ),
            ));
        }
        Ok(())
    }

    fn entry_from(
        &self,
        key: Key,
        sequence: u64,
        value: Option<&[u8]>,
    ) -> Result<Entry, StorageError> {
        let point = match value {
            None => None,
            Some(value) => {
                let Some((slot, rest)) = value.split_first_chunk::<4>() else {
                    return Err(corrupt(&self.path, Section::Data, 0, "put without a slot"));
                };
                match u32::from_le_bytes(*slot) {
                    SLOT_INLINE => {
                        let inline = rest.split_first_chunk::<4>().and_then(|(len, rest)| {
                            let len = u32::from_le_bytes(*len) as usize;
                            (len <= rest.len()).then(|| rest.split_at(len))
                        });
                        let Some((vector, payload)) = inline else {
                            return Err(corrupt(
                                &self.path,
                                Section::Data,
                                0,
                                "inline vector past its entry",
                            ));
                        };
                        Some(Point::new(vector, payload))
                    }
                    slot => Some(Point::new(self.vector(slot)?, rest)),
                }
            }
        };
        Ok(Entry {
            key,
            sequence,
            point,
        })
    }

    /// The point id of each vector-region slot, in slot order (what the side-car index
    /// labels its nodes with). Data blocks are verified on the way.
    pub fn region_points(&self) -> Result<Vec<u64>, StorageError> {
        let mut points = Vec::with_capacity(self.footer.vector_count as usize);
        self.for_each_slot(|point, _| points.push(point))?;
        Ok(points)
    }

    /// Calls `visit(point, payload)` for each vector-region slot, in slot order. Data blocks
    /// are verified on the way.
    pub fn for_each_slot(&self, mut visit: impl FnMut(u64, &[u8])) -> Result<(), StorageError> {
        self.for_each_entry(|point, slot_payload| {
            if let Some(payload) = slot_payload {
                visit(point, payload);
            }
        })
    }

    /// Calls `visit(point, slot_payload)` for every entry in key order, tombstones included:
    /// `slot_payload` is the payload of an entry whose vector is in the region (slots come in
    /// order), `None` for a tombstone or an inline vector. Data blocks are verified on the
    /// way, and the slots must number the region exactly.
    pub fn for_each_entry(
        &self,
        mut visit: impl FnMut(u64, Option<&[u8]>),
    ) -> Result<(), StorageError> {
        self.guarded(|| {
            let mut slots = 0usize;
            for index in 0..self.index.len() {
                for found in self.block(index)?.iter() {
                    let slot = found
                        .value
                        .and_then(|value| value.split_first_chunk::<4>())
                        .map(|(slot, payload)| (u32::from_le_bytes(*slot), payload));
                    match slot {
                        Some((SLOT_INLINE, _)) | None => visit(found.key.point, None),
                        Some((slot, payload)) if slot as usize == slots => {
                            visit(found.key.point, Some(payload));
                            slots += 1;
                        }
                        Some((slot, _)) => {
                            return Err(corrupt(
                                &self.path,
                                Section::Data,
                                self.index[index].offset,
                                format!("slot {slot} out of order"),
                            ))
                        }
                    }
                }
            }
            if slots as u64 != self.footer.vector_count {
                return Err(corrupt(
                    &self.path,
                    Section::Data,
                    0,
                    "slots do not cover the region",
                ));
            }
            Ok(())
        })
    }

    /// What a damaged table still holds, read past its quarantine for an offline repair
    /// (`Store::repair`): every entry whose data block and vector verify, in key order; the
    /// points whose entry verified but whose vector did not; and the id range of each data
    /// block that failed its checks (its entries are unknown), from the index. A table
    /// that could not be opened ([`Table::broken`]) has no index: nothing is salvaged.
    pub fn salvage(&self) -> Salvage {
        let mut salvage = Salvage::default();
        for index in 0..self.index.len() {
            let first = match index {
                0 => self.footer.smallest,
                _ => self.index[index - 1].last_point.saturating_add(1),
            };
            match self.block(index) {
                Err(_) => salvage
                    .lost_ranges
                    .push((first, self.index[index].last_point)),
                Ok(block) => {
                    for found in block.iter() {
                        match self.entry_from(found.key, found.sequence, found.value) {
                            Ok(entry) => salvage.entries.push(entry),
                            Err(_) => salvage.lost_points.push(found.key.point),
                        }
                    }
                }
            }
        }
        salvage
    }

    /// Whether the table was opened (a [`Table::broken`] one was not: it has no index).
    pub fn is_open(&self) -> bool {
        self.map.is_some()
    }

    /// Whether the bloom filter and key range admit `key`.
    pub fn may_contain(&self, key: &Key) -> bool {
        key.collection == self.footer.collection
            && (self.footer.smallest..=self.footer.largest).contains(&key.point)
            && (self.quarantine.is_set() || self.bloom.may_contain(key))
    }

    /// The entry for `key`, if the table holds one (a tombstone included).
    pub fn get(&self, key: &Key) -> Result<Option<Entry>, StorageError> {
        if !self.may_contain(key) {
            return Ok(None);
        }
        self.guarded(|| {
            let index = self
                .index
                .partition_point(|entry| entry.last_point < key.point);
            if index == self.index.len() {
                return Ok(None);
            }
            let block = self.block(index)?;
            match block.get(key) {
                Some(found) => self
                    .entry_from(found.key, found.sequence, found.value)
                    .map(Some),
                None => Ok(None),
            }
        })
    }

    /// The entries with point ids above `after` (all when `None`), in order.
    pub fn iter_after(self: &Arc<Self>, after: Option<u64>) -> TableIter {
        let block = match after {
            Some(after) => self
                .index
                .partition_point(|entry| entry.last_point <= after),
            None => 0,
        };
        TableIter {
            table: Arc::clone(self),
            block,
            entries: Vec::new(),
            next: 0,
            after,
            failed: false,
        }
    }

    /// Checks every block and every vector unit against its checksum (the meta blocks were
    /// checked at open and are checked again here), through `limiter` when given. Corruption
    /// quarantines the table.
    /// `stop`, when given and set, ends the walk early with [`StorageError::Closed`].
    pub fn verify(
        &self,
        mut limiter: Option<&mut RateLimiter>,
        stop: Option<&AtomicBool>,
    ) -> Result<u64, StorageError> {
        let stopped = || stop.is_some_and(|stop| stop.load(Ordering::Acquire));
        self.guarded(|| {
            let mut bytes = 0u64;
            for index in 0..self.index.len() {
                if stopped() {
                    return Err(StorageError::Closed("stopping"));
                }
                if let Some(limiter) = limiter.as_deref_mut() {
                    limiter.throttle(u64::from(self.index[index].len))?;
                }
                self.block(index)?;
                bytes += u64::from(self.index[index].len);
            }
            for unit in 0..self.vector_crcs.len() {
                if stopped() {
                    return Err(StorageError::Closed("stopping"));
                }
                if let Some(limiter) = limiter.as_deref_mut() {
                    limiter.throttle(UNIT as u64)?;
                }
                self.check_vector_unit(unit)?;
                bytes += UNIT as u64;
            }
            let reopened_footer = unseal(&self.bytes()[self.footer.footer_offset as usize..])
                .map_err(|detail| {
                    corrupt(
                        &self.path,
                        Section::Footer,
                        self.footer.footer_offset,
                        detail,
                    )
                })?;
            if reopened_footer != self.footer.encode() {
                return Err(corrupt(
                    &self.path,
                    Section::Footer,
                    self.footer.footer_offset,
                    "footer changed since open",
                ));
            }
            for (section, start, end) in [
                (
                    Section::VectorChecksums,
                    self.footer.vcrc_offset,
                    self.footer.index_offset,
                ),
                (
                    Section::Index,
                    self.footer.index_offset,
                    self.footer.bloom_offset,
                ),
                (
                    Section::Bloom,
                    self.footer.bloom_offset,
                    self.footer.footer_offset,
                ),
            ] {
                unseal(&self.bytes()[start as usize..end as usize])
                    .map_err(|detail| corrupt(&self.path, section, start, detail))?;
            }
            Ok(bytes + self.file_bytes() - self.footer.vcrc_offset)
        })
    }
}

fn decode_index(bytes: &[u8], footer: &Footer) -> Result<Vec<IndexEntry>, String> {
    let mut fields = Fields::new(bytes);
    let count = fields.u32()? as usize;
    if bytes.len() != 4 + count * INDEX_ENTRY_BYTES {
        return Err(format!("{} bytes for {count} entries", bytes.len()));
    }
    let mut index = Vec::with_capacity(count);
    let mut expected_offset = 0u64;
    for _ in 0..count {
        let entry = IndexEntry {
            last_point: fields.u64()?,
            offset: fields.u64()?,
            len: fields.u32()?,
        };
        if entry.offset != expected_offset
            || entry.len == 0
            || !(entry.len as usize).is_multiple_of(UNIT)
            || index
                .last()
                .is_some_and(|last: &IndexEntry| last.last_point >= entry.last_point)
        {
            return Err(format!("entry {entry:?} out of order"));
        }
        expected_offset += u64::from(entry.len);
        index.push(entry);
    }
    if expected_offset != footer.data_end
        || index.last().map(|e| e.last_point) != Some(footer.largest)
    {
        return Err("blocks do not cover the data region".to_owned());
    }
    Ok(index)
}

/// Entries of one table in key order, reading a block at a time.
#[derive(Debug)]
pub struct TableIter {
    table: Arc<Table>,
    block: usize,
    entries: Vec<Entry>,
    next: usize,
    after: Option<u64>,
    failed: bool,
}

impl Iterator for TableIter {
    type Item = Result<Entry, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.table.is_quarantined() {
            // A placeholder has no index: without this a scan would skip it silently.
            self.failed = true;
            return Some(self.table.check_quarantine().map(|()| unreachable_entry()));
        }
        while self.next == self.entries.len() {
            if self.block == self.table.index.len() {
                return None;
            }
            let table = Arc::clone(&self.table);
            let loaded = table.guarded(|| {
                let block = table.block(self.block)?;
                let mut entries = Vec::with_capacity(block.len());
                for found in block.iter() {
                    if self.after.is_some_and(|after| found.key.point <= after) {
                        continue;
                    }
                    entries.push(table.entry_from(found.key, found.sequence, found.value)?);
                }
                Ok(entries)
            });
            match loaded {
                Ok(entries) => {
                    self.entries = entries;
                    self.next = 0;
                    self.block += 1;
                }
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
        }
        let entry = std::mem::replace(&mut self.entries[self.next], unreachable_entry());
        self.next += 1;
        Some(Ok(entry))
    }
}

/// A placeholder entry (moved-out slots; never handed out as data).
fn unreachable_entry() -> Entry {
    Entry {
        key: Key {
            collection: 0,
            point: 0,
        },
        sequence: 0,
        point: None,
    }
}

//! The index file: a self-describing header, then every array of the index as a section,
//! each 64-byte aligned and covered by its own CRC32C, so that loading maps the file and
//! uses the arrays in place. The byte layout is in docs/INDEX.md.
//!
//! Loading checks, in order: the magic, the version, the header's checksum, the parameters'
//! ranges, every section's place and length (all derived from the parameters), every
//! section's checksum, and then the graph's bounds: every level, offset, neighbour count and
//! neighbour id is in range, so that a search can never index out of bounds whatever the
//! file says. These are linear scans over the mapped arrays; nothing is parsed or allocated
//! per node (the tombstone bitset, which deletes modify, is the one array copied).
//!
//! Saving writes a temporary file beside the target, syncs it, renames it over the target
//! and syncs the directory, so a crash leaves the old file or the new one, never a mix.

use super::build::upper_layout;
use super::{
    block_range, code_stride, vector_stride, Hnsw, DIM_MAX, EF_MAX, LEVEL_MAX, M_MAX, NO_NODE,
};
use crate::distance::Kernels;
use crate::filter::NodeSet;
use crate::metric::Metric;
use crate::quantize::ScalarQuantizer;
use crate::store::{as_bytes, Mapping, Plain, Store, ALIGN_BYTES};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The first eight bytes of every index file.
pub const FILE_MAGIC: [u8; 8] = *b"VXHNSW\r\n";

/// The format version this build writes. Version 1 (no flags; the vectors always inside)
/// is read too.
pub const FILE_VERSION: u32 = 2;

/// Header flag (byte 23): the vectors section is empty because the vectors are the
/// caller's rows ([`Hnsw::build_over`]).
const FLAG_EXTERNAL_VECTORS: u8 = 1;

/// The header's size: parameters, the section table, and the header's checksum last.
const HEADER_BYTES: usize = 512;

/// Where the section table starts in the header.
const TABLE_OFFSET: usize = 80;

/// Bytes per section-table entry: kind u32, crc32c u32, offset u64, length u64.
const TABLE_ENTRY_BYTES: usize = 24;

/// The sections, in file order. The discriminant is the kind stored in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Vectors = 1,
    Quantizer = 2,
    Codes = 3,
    Labels = 4,
    Levels = 5,
    UpperOffsets = 6,
    Links0 = 7,
    UpperLinks = 8,
    Tombstones = 9,
}

const SECTIONS: [Section; 9] = [
    Section::Vectors,
    Section::Quantizer,
    Section::Codes,
    Section::Labels,
    Section::Levels,
    Section::UpperOffsets,
    Section::Links0,
    Section::UpperLinks,
    Section::Tombstones,
];

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::Vectors => "vectors",
            Section::Quantizer => "quantizer",
            Section::Codes => "codes",
            Section::Labels => "labels",
            Section::Levels => "levels",
            Section::UpperOffsets => "upper offsets",
            Section::Links0 => "layer-0 links",
            Section::UpperLinks => "upper links",
            Section::Tombstones => "tombstones",
        }
    }
}

/// An error from saving or loading an index file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file does not start with the index magic.
    #[error("{path}: not a VORTEX HNSW index file (bad magic)")]
    NotAnIndex {
        /// The file.
        path: PathBuf,
    },
    /// The file is from another format version.
    #[error("{path}: index file version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The file is damaged or inconsistent.
    #[error("{path}: corrupt index file: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        detail: String,
    },
    /// The index and the rows given for its vectors do not go together.
    #[error("{path}: {detail}")]
    Rows {
        /// The file.
        path: PathBuf,
        /// What does not fit.
        detail: String,
    },
    /// This platform cannot use the format.
    #[error("index files are little-endian; this platform is not")]
    BigEndian,
}

/// What a load is given for an index's vectors.
enum Given {
    /// Nothing: the vectors are in the file.
    Nothing,
    /// The rows the index was built over.
    Rows(Store<f32>),
    /// Nothing, for an index saved without vectors that walks on codes.
    CodesOnly,
}

/// Little-endian field access over the header bytes.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().unwrap_or_default())
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.0[at..at + 8].try_into().unwrap_or_default())
    }
}

impl Hnsw {
    /// Writes the index to `path` atomically (temporary file, sync, rename, sync the
    /// directory).
    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        let io = |source| FileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let temporary = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temporary)?;
            let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
            self.write_to(&mut writer)?;
            let file = writer.into_inner().map_err(|error| error.into_error())?;
            file.sync_all()?;
            std::fs::rename(&temporary, path)?;
            let directory = path.parent().filter(|p| !p.as_os_str().is_empty());
            File::open(directory.unwrap_or(Path::new(".")))?.sync_all()
        };
        write().map_err(|error| {
            let _ = std::fs::remove_file(&temporary);
            io(error)
        })
    }

    /// Writes the index file's bytes to `out` (what [`save`](Self::save) puts in the file),
    /// for a caller that writes the file itself; it syncs and renames it into place.
    pub fn write_to(&self, out: &mut (impl Write + ?Sized)) -> std::io::Result<()> {
        if cfg!(target_endian = "big") {
            return Err(std::io::Error::other(FileError::BigEndian.to_string()));
        }
        let quantizer: Vec<f32> = self
            .quantizer
            .as_ref()
            .map(|q| q.offsets().iter().chain(q.scales()).copied().collect())
            .unwrap_or_default();
        let vectors: &[f32] = if self.external { &[] } else { &self.vectors };
        let bodies: [&[u8]; 9] = [
            as_bytes(vectors),
            as_bytes(&quantizer),
            as_bytes(&self.codes),
            as_bytes(&self.labels),
            as_bytes(&self.levels),
            as_bytes(&self.upper_offsets),
            as_bytes(&self.links0),
            as_bytes(&self.upper_links),
            as_bytes(self.tombstones.words()),
        ];

        let mut header = vec![0u8; HEADER_BYTES];
        let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &FILE_MAGIC);
        put(8, &FILE_VERSION.to_le_bytes());
        put(12, &(HEADER_BYTES as u32).to_le_bytes());
        put(16, &(self.dim as u32).to_le_bytes());
        put(
            20,
            &[
                self.metric.code(),
                u8::from(self.quantizer.is_some()),
                self.top_level,
                if self.external {
                    FLAG_EXTERNAL_VECTORS
                } else {
                    0
                },
            ],
        );
        put(24, &(self.m as u32).to_le_bytes());
        put(28, &(self.m0 as u32).to_le_bytes());
        put(32, &(self.ef_construction as u32).to_le_bytes());
        put(36, &(self.count as u32).to_le_bytes());
        put(40, &self.entry.to_le_bytes());
        put(44, &(self.tombstones.len() as u32).to_le_bytes());
        put(48, &self.seed.to_le_bytes());
        put(56, &(self.vector_stride as u32).to_le_bytes());
        put(60, &(self.code_stride as u32).to_le_bytes());
        put(64, &(SECTIONS.len() as u32).to_le_bytes());
        let mut offset = HEADER_BYTES;
        for (index, (section, body)) in SECTIONS.iter().zip(bodies).enumerate() {
            let at = TABLE_OFFSET + index * TABLE_ENTRY_BYTES;
            put(at, &(*section as u32).to_le_bytes());
            put(at + 4, &crc32c::crc32c(body).to_le_bytes());
            put(at + 8, &(offset as u64).to_le_bytes());
            put(at + 16, &(body.len() as u64).to_le_bytes());
            offset = (offset + body.len()).next_multiple_of(ALIGN_BYTES);
        }
        let checksum = crc32c::crc32c(&header[..HEADER_BYTES - 4]);
        header[HEADER_BYTES - 4..].copy_from_slice(&checksum.to_le_bytes());

        out.write_all(&header)?;
        let mut written = HEADER_BYTES;
        for body in bodies {
            out.write_all(body)?;
            written += body.len();
            let padding = written.next_multiple_of(ALIGN_BYTES) - written;
            out.write_all(&[0u8; ALIGN_BYTES][..padding])?;
            written += padding;
        }
        out.flush()
    }

    /// Maps the index file at `path` and checks it (see the module docs). An index built
    /// over the caller's rows needs them: [`Hnsw::load_over`].
    pub fn load(path: &Path) -> Result<Hnsw, FileError> {
        Self::load_with(path, Given::Nothing)
    }

    /// Maps the index file at `path`, saved by a codes-only index
    /// ([`Hnsw::into_codes_only`]), without any vectors: searches need
    /// [`Hnsw::search_over_rows`].
    pub fn load_codes_only(path: &Path) -> Result<Hnsw, FileError> {
        Self::load_with(path, Given::CodesOnly)
    }

    /// Maps the index file at `path`, built by [`Hnsw::build_over`], and takes `rows` as its
    /// vectors (the same rows it was built over: one row of [`vector_stride`]`(dim)` floats
    /// per node). The file's checks apply; the rows are the caller's to keep intact (an
    /// SSTable checks its own region).
    ///
    /// [`vector_stride`]: super::vector_stride
    pub fn load_over(path: &Path, rows: Store<f32>) -> Result<Hnsw, FileError> {
        Self::load_with(path, Given::Rows(rows))
    }

    fn load_with(path: &Path, given: Given) -> Result<Hnsw, FileError> {
        let io = |source| FileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            return Err(FileError::NotAnIndex {
                path: path.to_path_buf(),
            });
        }
        let mapping = Arc::new(Mapping::of(&file).map_err(io)?);
        Self::load_mapped(path, mapping, given)
    }

    /// Checks and takes the index file whose bytes `mapping` holds (`path` names it in
    /// errors), built by [`Hnsw::build_over`], with `rows` as its vectors, as
    /// [`Hnsw::load_over`] does for a file it maps itself.
    pub fn load_mapped_over(
        path: &Path,
        mapping: Arc<Mapping>,
        rows: Store<f32>,
    ) -> Result<Hnsw, FileError> {
        Self::load_mapped(path, mapping, Given::Rows(rows))
    }

    /// [`Hnsw::load_codes_only`] over bytes the caller mapped.
    pub fn load_mapped_codes_only(path: &Path, mapping: Arc<Mapping>) -> Result<Hnsw, FileError> {
        Self::load_mapped(path, mapping, Given::CodesOnly)
    }

    fn load_mapped(path: &Path, mapping: Arc<Mapping>, given: Given) -> Result<Hnsw, FileError> {
        if cfg!(target_endian = "big") {
            return Err(FileError::BigEndian);
        }
        let corrupt = |detail: String| FileError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let filled = mapping.bytes().len().min(HEADER_BYTES);
        let mut header = vec![0u8; HEADER_BYTES];
        header[..filled].copy_from_slice(&mapping.bytes()[..filled]);
        if filled < FILE_MAGIC.len() || header[..8] != FILE_MAGIC {
            return Err(FileError::NotAnIndex {
                path: path.to_path_buf(),
            });
        }
        let fields = Fields(&header);
        let version = if filled >= 12 { fields.u32(8) } else { 0 };
        if version != FILE_VERSION && version != 1 {
            return Err(FileError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: FILE_VERSION,
            });
        }
        if filled < HEADER_BYTES {
            return Err(corrupt(format!(
                "file ends inside the header ({filled} bytes)"
            )));
        }
        let stored = u32::from_le_bytes(header[HEADER_BYTES - 4..].try_into().unwrap_or_default());
        if crc32c::crc32c(&header[..HEADER_BYTES - 4]) != stored {
            return Err(corrupt("header checksum mismatch".into()));
        }

        // Parameters.
        let dim = fields.u32(16) as usize;
        let [metric, quantized, top_level, flags] =
            [header[20], header[21], header[22], header[23]];
        let m = fields.u32(24) as usize;
        let m0 = fields.u32(28) as usize;
        let ef_construction = fields.u32(32) as usize;
        let count = fields.u32(36) as usize;
        let entry = fields.u32(40);
        let deleted_count = fields.u32(44) as usize;
        let seed = fields.u64(48);
        let stride = fields.u32(56) as usize;
        let codes_stride = fields.u32(60) as usize;
        let metric = Metric::from_code(metric)
            .ok_or_else(|| corrupt(format!("unknown metric code {metric}")))?;
        let checks = [
            (fields.u32(12) as usize == HEADER_BYTES, "header size"),
            ((1..=DIM_MAX).contains(&dim), "dimension"),
            (quantized <= 1, "quantization code"),
            (
                flags & !FLAG_EXTERNAL_VECTORS == 0 && (version > 1 || flags == 0),
                "flags",
            ),
            (top_level <= LEVEL_MAX, "top level"),
            ((2..=M_MAX).contains(&m) && m0 == 2 * m, "m / m0"),
            ((1..=EF_MAX).contains(&ef_construction), "ef_construction"),
            (count < NO_NODE as usize, "node count"),
            (
                (count == 0 && entry == NO_NODE) || (entry as usize) < count,
                "entry point",
            ),
            (deleted_count <= count, "deleted count"),
            (
                stride == vector_stride(dim) && codes_stride == code_stride(dim),
                "row strides",
            ),
            (fields.u32(64) as usize == SECTIONS.len(), "section count"),
        ];
        if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(corrupt(format!("{what} out of range")));
        }

        // Sections: place, length and checksum.
        let bytes = mapping.bytes();
        let table = |index: usize| {
            let at = TABLE_OFFSET + index * TABLE_ENTRY_BYTES;
            (
                fields.u32(at),
                fields.u32(at + 4),
                fields.u64(at + 8),
                fields.u64(at + 16),
            )
        };
        let quantized = quantized == 1;
        let mut places = [(0usize, 0usize); 9];
        for (index, &section) in SECTIONS.iter().enumerate() {
            let (kind, checksum, offset, length) = table(index);
            let name = section.name();
            if kind != section as u32 {
                return Err(corrupt(format!(
                    "section {index} has kind {kind}, expected {name}"
                )));
            }
            let (offset, length) = (offset as usize, length as usize);
            let end = offset.checked_add(length).filter(|&end| end <= bytes.len());
            let Some(end) = end else {
                return Err(corrupt(format!(
                    "{name} section ({length} bytes at {offset}) runs past the end of the file ({} bytes)",
                    bytes.len()
                )));
            };
            if offset < HEADER_BYTES || !offset.is_multiple_of(ALIGN_BYTES) {
                return Err(corrupt(format!("{name} section misplaced at {offset}")));
            }
            if crc32c::crc32c(&bytes[offset..end]) != checksum {
                return Err(corrupt(format!(
                    "{name} section checksum mismatch (bytes {offset}..{end})"
                )));
            }
            places[index] = (offset, length);
        }
        let view =
            |section: Section, expected_length: usize| -> Result<(usize, usize), FileError> {
                let (offset, length) = places[section as usize - 1];
                if length != expected_length {
                    return Err(corrupt(format!(
                        "{} section is {length} bytes, expected {expected_length}",
                        section.name()
                    )));
                }
                Ok((offset, length))
            };
        fn store<T: Plain>(mapping: &Arc<Mapping>, (offset, length): (usize, usize)) -> Store<T> {
            Store::mapped(mapping, offset, length / size_of::<T>())
                .unwrap_or_else(|| Store::owned(&[]))
        }
        let external = flags & FLAG_EXTERNAL_VECTORS != 0;
        let rows_error = |detail: String| FileError::Rows {
            path: path.to_path_buf(),
            detail,
        };
        let (vectors, codes_only): (Store<f32>, bool) = match (external, given) {
            (false, Given::Nothing) => (
                store(&mapping, view(Section::Vectors, count * stride * 4)?),
                false,
            ),
            (true, Given::Rows(rows)) => {
                view(Section::Vectors, 0)?;
                if rows.len() != count * stride {
                    return Err(rows_error(format!(
                        "{} floats given for {count} rows of {stride}",
                        rows.len()
                    )));
                }
                (rows, false)
            }
            (true, Given::CodesOnly) if quantized => {
                view(Section::Vectors, 0)?;
                (Store::owned(&[]), true)
            }
            (true, Given::CodesOnly) => {
                return Err(rows_error(
                    "the index walks on f32 vectors and cannot be loaded without them".into(),
                ))
            }
            (true, Given::Nothing) => {
                return Err(rows_error(
                    "the index was built over rows kept outside the file; load it with them".into(),
                ))
            }
            (false, Given::Rows(_) | Given::CodesOnly) => {
                return Err(rows_error(
                    "the index holds its own vectors; load it with Hnsw::load".into(),
                ))
            }
        };
        let quantizer_values: Store<f32> = store(
            &mapping,
            view(Section::Quantizer, if quantized { 2 * dim * 4 } else { 0 })?,
        );
        let codes: Store<i8> = store(
            &mapping,
            view(
                Section::Codes,
                if quantized { count * codes_stride } else { 0 },
            )?,
        );
        let labels: Store<u64> = store(&mapping, view(Section::Labels, count * 8)?);
        let levels: Store<u8> = store(&mapping, view(Section::Levels, count)?);
        let upper_offsets: Store<u32> = store(&mapping, view(Section::UpperOffsets, count * 4)?);
        let links0: Store<u32> = store(&mapping, view(Section::Links0, count * (1 + m0) * 4)?);
        let (expected_offsets, upper_length) = upper_layout(&levels, m)
            .ok_or_else(|| corrupt("upper layers outgrow 32-bit offsets".into()))?;
        let upper_links: Store<u32> = store(&mapping, view(Section::UpperLinks, upper_length * 4)?);
        let tombstone_bytes = view(Section::Tombstones, count.div_ceil(64) * 8)?;
        let tombstones: Vec<u64> = store::<u64>(&mapping, tombstone_bytes).to_vec();

        // The graph's bounds, so that no search can go out of range.
        if levels.iter().any(|&level| level > top_level) {
            return Err(corrupt("a node's level is above the top level".into()));
        }
        if count > 0 && levels[entry as usize] != top_level {
            return Err(corrupt("the entry point is not on the top level".into()));
        }
        if *upper_offsets != expected_offsets[..] {
            return Err(corrupt(
                "upper-layer offsets do not match the levels".into(),
            ));
        }
        let block_valid = |block: &[u32], layer: u8| {
            let used = block[0] as usize;
            used < block.len()
                && block[1..1 + used]
                    .iter()
                    .all(|&n| (n as usize) < count && levels[n as usize] >= layer)
        };
        if let Some(node) = links0
            .chunks_exact(1 + m0)
            .position(|block| !block_valid(block, 0))
        {
            return Err(corrupt(format!(
                "layer-0 links of node {node} out of range"
            )));
        }
        for node in 0..count {
            for layer in 1..=levels[node] {
                let range = block_range(m, &upper_offsets, node as u32, layer);
                if !block_valid(&upper_links[range], layer) {
                    return Err(corrupt(format!(
                        "layer-{layer} links of node {node} out of range"
                    )));
                }
            }
        }
        let marked: usize = tombstones
            .iter()
            .map(|word| word.count_ones() as usize)
            .sum();
        let stray = tombstones
            .last()
            .is_some_and(|&last| !count.is_multiple_of(64) && last >> (count % 64) != 0);
        if marked != deleted_count || stray {
            return Err(corrupt("tombstones disagree with the deleted count".into()));
        }
        let quantizer = if quantized {
            let values = &*quantizer_values;
            Some(
                ScalarQuantizer::from_parts(metric, values[..dim].to_vec(), values[dim..].to_vec())
                    .ok_or_else(|| {
                        corrupt("quantizer offsets or scales unusable for the metric".into())
                    })?,
            )
        } else {
            None
        };

        Ok(Hnsw {
            metric,
            dim,
            vector_stride: stride,
            code_stride: codes_stride,
            m,
            m0,
            ef_construction,
            seed,
            count,
            entry: if count == 0 { NO_NODE } else { entry },
            top_level,
            vectors,
            external,
            codes_only,
            quantizer,
            codes,
            labels,
            levels,
            upper_offsets,
            links0,
            upper_links,
            tombstones: NodeSet::from_words(tombstones),
            checksums: None,
            kernels: Kernels::active(),
        })
    }
}

//! Node graphs on disk, so that a restarted node searches one graph per collection at once
//! instead of walking every segment until the tier has built its graphs again.
//!
//! Each saved node graph is a directory `<tier dir>/c<id>-<id>…` (the collection's id in
//! each LEU's catalog, in LEU order) holding three files:
//!
//! - `graph.hnsw`: the graph, as `Hnsw::save` writes it (its vectors outside it);
//! - `rows`: its vectors, one row of `vector_stride(dim)` floats per node, after a 64-byte
//!   header (magic `VXNGROWS`, dim, stride, rows, CRC32C of the rows), mapped at load. A
//!   codes-only graph (an `i8` collection's) has none: its searches re-rank with the rows of
//!   the covered tables, and it is loaded with `Hnsw::load_codes_only`;
//! - `meta`: magic `VXNGMETA`, format version, CRC32C of the rest, then the collection's
//!   name and ids, the tables covered (LEU, table number, superseded nodes at build) and
//!   each node's source (covered table, node there).
//!
//! A save writes `<dir>.new/`, syncs its files and the directory, then replaces `<dir>`
//! (renames, then a sync of the tier directory): a crash leaves the old graph, the new one,
//! or none, and anything else found at start (a `.new` or `.old` directory) is removed. A
//! graph whose files fail a check, or that no longer serves its collection, is removed and
//! built again. Loading is safe whatever happened to the LEUs since the save: table numbers
//! are never reused, so a covered table that is gone is simply not answered for (see
//! `NodeGraph::answering`), exactly as after a merge while running.
//!
//! These files, which span LEUs, are on the real file system ([`PosixFiles`]), not on an
//! LEU's storage environment as the catalog and the side-cars are: the fault tests do not
//! reach them yet.

use crate::error::ShardError;
use crate::files::{sync_dir, write_new};
use crate::sidecar::map_for_index;
use crate::tier::{NodeGraph, Source};
use crate::view::ShardView;
use std::path::{Path, PathBuf};
use vortex_index::{vector_stride, Hnsw, Store};
use vortex_storage::PosixFiles;

const META_MAGIC: [u8; 8] = *b"VXNGMETA";
const META_VERSION: u32 = 1;
const ROWS_MAGIC: [u8; 8] = *b"VXNGROWS";
/// The rows file's header; the rows start 64-byte aligned after it.
const ROWS_HEADER: usize = 64;

/// The directory name of a node graph of the collection with these ids.
fn directory_name(collection_ids: &[u32]) -> String {
    let ids: Vec<String> = collection_ids.iter().map(u32::to_string).collect();
    format!("c{}", ids.join("-"))
}

fn corrupt(path: &Path, detail: impl Into<String>) -> ShardError {
    ShardError::Corrupt {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

/// Writes `graph` under `tier_dir`, replacing any earlier save of its collection.
pub(crate) fn save(tier_dir: &Path, graph: &NodeGraph) -> Result<(), ShardError> {
    std::fs::create_dir_all(tier_dir).map_err(|e| ShardError::io("create", tier_dir, e))?;
    let name = directory_name(&graph.collection_ids);
    let target = tier_dir.join(&name);
    let fresh = tier_dir.join(format!("{name}.new"));
    let old = tier_dir.join(format!("{name}.old"));
    for leftover in [&fresh, &old] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).map_err(|e| ShardError::io("remove", leftover, e))?;
        }
    }
    std::fs::create_dir(&fresh).map_err(|e| ShardError::io("create", &fresh, e))?;

    let hnsw = &graph.graph;
    // A codes-only graph (`i8`) has no rows of its own: its searches read them from the
    // covered tables.
    if !hnsw.is_codes_only() {
        write_rows(&fresh.join("rows"), hnsw)?;
    }
    hnsw.save(&fresh.join("graph.hnsw"))
        .map_err(|e| ShardError::NodeGraph(format!("saving: {e}")))?;

    let body = encode_meta(graph);
    let mut head = Vec::with_capacity(16);
    head.extend_from_slice(&META_MAGIC);
    head.extend_from_slice(&META_VERSION.to_le_bytes());
    head.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let meta = fresh.join("meta");
    write_new(&PosixFiles, &meta, |out| {
        out.write_all(&head)
            .and_then(|()| out.write_all(&body))
            .map_err(|e| ShardError::io("write", &meta, e))
    })?;
    sync_dir(&PosixFiles, &fresh)?;

    if target.exists() {
        std::fs::rename(&target, &old).map_err(|e| ShardError::io("rename", &target, e))?;
    }
    std::fs::rename(&fresh, &target).map_err(|e| ShardError::io("rename", &fresh, e))?;
    sync_dir(&PosixFiles, tier_dir)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| ShardError::io("remove", &old, e))?;
    }
    Ok(())
}

fn encode_meta(graph: &NodeGraph) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(graph.name.len() as u32).to_le_bytes());
    out.extend_from_slice(graph.name.as_bytes());
    out.extend_from_slice(&(graph.collection_ids.len() as u32).to_le_bytes());
    for id in &graph.collection_ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.extend_from_slice(&(graph.covered.len() as u32).to_le_bytes());
    for (&(leu, number), &at_build) in graph.covered.iter().zip(&graph.superseded_at_build) {
        out.extend_from_slice(&leu.to_le_bytes());
        out.extend_from_slice(&number.to_le_bytes());
        out.extend_from_slice(&(at_build as u64).to_le_bytes());
    }
    out.extend_from_slice(&(graph.sources.len() as u64).to_le_bytes());
    for source in &graph.sources {
        out.extend_from_slice(&source.table.to_le_bytes());
        out.extend_from_slice(&source.node.to_le_bytes());
    }
    out
}

/// A cursor over the meta file's body that refuses to read past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    path: &'a Path,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], ShardError> {
        if self.bytes.len() < count {
            return Err(corrupt(self.path, "the meta file ends early"));
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, ShardError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ShardError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, ShardError> {
        let b = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(b);
        Ok(u64::from_le_bytes(array))
    }

    /// A count of items of `each` bytes, checked against what is left.
    fn count(&mut self, wide: bool, each: usize) -> Result<usize, ShardError> {
        let count = if wide {
            self.u64()?
        } else {
            u64::from(self.u32()?)
        };
        let count = usize::try_from(count).map_err(|_| corrupt(self.path, "a count too large"))?;
        if count.saturating_mul(each) > self.bytes.len() {
            return Err(corrupt(self.path, "a count larger than the file"));
        }
        Ok(count)
    }
}

/// Writes the rows file of `hnsw` at `rows_path`, synced.
fn write_rows(rows_path: &Path, hnsw: &Hnsw) -> Result<(), ShardError> {
    // The rows are written one at a time (a node graph's vectors can be most of the
    // node's memory: no second copy), their checksum computed in a first pass.
    let dim = hnsw.dim();
    let stride = vector_stride(dim);
    let mut row = vec![0u8; stride * 4];
    let mut each_row =
        |visit: &mut dyn FnMut(&[u8]) -> Result<(), ShardError>| -> Result<(), ShardError> {
            for node in 0..hnsw.len() as u32 {
                let vector = hnsw
                    .vector(node)
                    .ok_or_else(|| ShardError::NodeGraph(format!("node {node} has no vector")))?;
                for (bytes, x) in row.chunks_exact_mut(4).zip(vector) {
                    bytes.copy_from_slice(&x.to_le_bytes());
                }
                visit(&row)?;
            }
            Ok(())
        };
    let mut crc = 0u32;
    each_row(&mut |bytes| {
        crc = crc32c::crc32c_append(crc, bytes);
        Ok(())
    })?;
    let mut header = [0u8; ROWS_HEADER];
    header[..8].copy_from_slice(&ROWS_MAGIC);
    header[8..12].copy_from_slice(&(dim as u32).to_le_bytes());
    header[12..16].copy_from_slice(&(stride as u32).to_le_bytes());
    header[16..24].copy_from_slice(&(hnsw.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    write_new(&PosixFiles, rows_path, |out| {
        let io = |e| ShardError::io("write", rows_path, e);
        out.write_all(&header).map_err(io)?;
        each_row(&mut |bytes| out.write_all(bytes).map_err(io))
    })
}

/// Reads the saved node graph in `dir` (checks every file).
fn load_one(dir: &Path) -> Result<NodeGraph, ShardError> {
    let meta_path = dir.join("meta");
    let meta = std::fs::read(&meta_path).map_err(|e| ShardError::io("read", &meta_path, e))?;
    if meta.len() < 16 || meta[..8] != META_MAGIC {
        return Err(corrupt(&meta_path, "not a node graph's meta file"));
    }
    let version = u32::from_le_bytes([meta[8], meta[9], meta[10], meta[11]]);
    if version != META_VERSION {
        return Err(corrupt(&meta_path, format!("format version {version}")));
    }
    let crc = u32::from_le_bytes([meta[12], meta[13], meta[14], meta[15]]);
    let body = &meta[16..];
    if crc32c::crc32c(body) != crc {
        return Err(corrupt(&meta_path, "checksum mismatch"));
    }
    let mut reader = Reader {
        bytes: body,
        path: &meta_path,
    };
    let name_len = reader.count(false, 1)?;
    let name = String::from_utf8(reader.take(name_len)?.to_vec())
        .map_err(|_| corrupt(&meta_path, "a collection name that is not UTF-8"))?;
    let leus = reader.count(false, 4)?;
    let collection_ids = (0..leus)
        .map(|_| reader.u32())
        .collect::<Result<Vec<u32>, _>>()?;
    let tables = reader.count(false, 18)?;
    let mut covered = Vec::with_capacity(tables);
    let mut superseded_at_build = Vec::with_capacity(tables);
    for _ in 0..tables {
        covered.push((reader.u16()?, reader.u64()?));
        let at_build = usize::try_from(reader.u64()?)
            .map_err(|_| corrupt(&meta_path, "a superseded count too large"))?;
        superseded_at_build.push(at_build);
    }
    let nodes = reader.count(true, 8)?;
    let mut sources = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let source = Source {
            table: reader.u32()?,
            node: reader.u32()?,
        };
        if source.table as usize >= covered.len() {
            return Err(corrupt(&meta_path, "a node from a table not covered"));
        }
        sources.push(source);
    }
    if !reader.bytes.is_empty() {
        return Err(corrupt(&meta_path, "bytes after the last node"));
    }

    let rows_path = dir.join("rows");
    let graph_path = dir.join("graph.hnsw");
    // Mapped through the storage file system, guarded against a page the disk cannot read.
    let graph_mapping = map_for_index(&PosixFiles, &graph_path)?;
    let (graph, rows_dim) = if rows_path.exists() {
        let (rows, dim) = map_rows(&rows_path, nodes)?;
        (
            Hnsw::load_mapped_over(&graph_path, graph_mapping, rows),
            Some(dim),
        )
    } else {
        // Saved without rows: a codes-only graph (refused here if it is not one).
        (
            Hnsw::load_mapped_codes_only(&graph_path, graph_mapping),
            None,
        )
    };
    let graph = graph.map_err(|e| corrupt(&graph_path, e.to_string()))?;
    if graph.len() != nodes || rows_dim.is_some_and(|dim| dim != graph.dim()) {
        return Err(corrupt(
            &graph_path,
            "not the graph of the meta file's nodes",
        ));
    }
    Ok(NodeGraph {
        name,
        collection_ids,
        graph,
        sources,
        covered,
        superseded_at_build,
    })
}

/// Maps and checks the rows file at `rows_path` of a graph of `nodes` nodes: the rows, and
/// their dimension.
fn map_rows(rows_path: &Path, nodes: usize) -> Result<(Store<f32>, usize), ShardError> {
    let mapping = map_for_index(&PosixFiles, rows_path)?;
    let bytes = mapping.bytes();
    if bytes.len() < ROWS_HEADER || bytes[..8] != ROWS_MAGIC {
        return Err(corrupt(rows_path, "not a node graph's rows file"));
    }
    let field =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (dim, stride) = (field(8) as usize, field(12) as usize);
    let mut count = [0u8; 8];
    count.copy_from_slice(&bytes[16..24]);
    let count = u64::from_le_bytes(count);
    let floats = usize::try_from(count)
        .ok()
        .and_then(|count| count.checked_mul(stride))
        .filter(|&floats| {
            stride == vector_stride(dim)
                && floats
                    .checked_mul(4)
                    .and_then(|b| b.checked_add(ROWS_HEADER))
                    == Some(bytes.len())
        })
        .ok_or_else(|| corrupt(rows_path, "sizes that do not match the file"))?;
    if crc32c::crc32c(&bytes[ROWS_HEADER..]) != field(24) {
        return Err(corrupt(rows_path, "checksum mismatch"));
    }
    if count != nodes as u64 {
        return Err(corrupt(rows_path, "not one row per node of the meta file"));
    }
    let rows = Store::mapped(&mapping, ROWS_HEADER, floats)
        .ok_or_else(|| corrupt(rows_path, "rows not aligned"))?;
    Ok((rows, dim))
}

/// The node graphs saved under `tier_dir` that still serve their collection in `views`;
/// every other entry there (damaged, stale, half-written) is removed, and said in the log.
pub(crate) fn load(tier_dir: &Path, views: &[&ShardView]) -> Vec<NodeGraph> {
    let Ok(entries) = std::fs::read_dir(tier_dir) else {
        return Vec::new();
    };
    let mut graphs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let complete = !file_name.contains('.');
        let loaded = if complete {
            load_one(&path).and_then(|graph| {
                if graph.serves(&graph.name, views) {
                    Ok(graph)
                } else {
                    Err(ShardError::NodeGraph(format!(
                        "{} is a graph of a collection gone",
                        path.display()
                    )))
                }
            })
        } else {
            Err(ShardError::NodeGraph(format!(
                "{} is left over",
                path.display()
            )))
        };
        match loaded {
            Ok(graph) => {
                tracing::info!(
                    collection = %graph.name,
                    nodes = graph.len(),
                    tables = graph.tables_covered(),
                    "node graph loaded"
                );
                graphs.push(graph);
            }
            Err(error) => {
                tracing::warn!(%error, "a saved node graph is not used; removing it");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
    }
    graphs
}

/// Removes the saved graph of the collection with these ids, if any.
pub(crate) fn remove(tier_dir: &Path, collection_ids: &[u32]) {
    let path: PathBuf = tier_dir.join(directory_name(collection_ids));
    if path.exists() {
        let _ = std::fs::remove_dir_all(&path);
    }
}

//! The catalog: the shard's collections, persisted in one small file replaced atomically.
//!
//! ```text
//! <shard dir>/CATALOG
//! magic "VTXCATL" 0x01 (8 bytes) | version u32 (1) | next_id u32 | count u32 | entries
//! | crc32c u32 over every byte before it
//! entry: id u32 | state u8 (1 live, 2 dropped) | name_len u8 | name | dimension u32
//!        | metric u8 (0 l2, 1 ip, 2 cosine) | m u16 | ef_construction u16
//!        | vector_type u8 (0 f32, 1 i8)
//! ```
//!
//! A collection's id (its key prefix in the LSM tree) is never reused: a dropped collection
//! stays in the catalog as dropped, so that data of it that is still somewhere (the WAL, a
//! MemTable) is recognised and discarded rather than mistaken for a new collection's. The
//! file is written to `CATALOG.tmp`, synced, renamed over `CATALOG`, and the directory is
//! synced: a crash leaves the old catalog or the new one, whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vortex_storage::Files;
use vortex_vbp::message::{CollectionSpec, Metric, VectorType};

use crate::error::ShardError;

const MAGIC: [u8; 8] = *b"VTXCATL\x01";
const VERSION: u32 = 1;
/// The catalog's file name.
pub const CATALOG: &str = "CATALOG";
const CATALOG_TEMP: &str = "CATALOG.tmp";
/// Collections one shard holds (live and dropped) at most.
pub const COLLECTIONS_MAX: usize = 4096;
/// The largest dimension accepted (VBP's limit), which the storage engine's largest vector
/// and the index hold.
pub const DIMENSION_MAX: u32 = vortex_vbp::validator::DIMENSION_MAX;
const _: () = assert!(
    DIMENSION_MAX as usize * 4 <= vortex_storage::sstable::table::VECTOR_BYTES_MAX
        && DIMENSION_MAX as usize <= vortex_index::hnsw::DIM_MAX
        && vortex_vbp::validator::M_MAX as usize <= vortex_index::hnsw::M_MAX
);

/// Whether a collection is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Live.
    Live,
    /// Dropped: its data is being reclaimed; the id is never reused.
    Dropped,
}

/// A collection as the catalog holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Collection {
    /// Its id, the key prefix of its points.
    pub id: u32,
    /// Live or dropped.
    pub state: State,
    /// Its schema.
    pub spec: CollectionSpec,
}

/// The catalog in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    next_id: u32,
    collections: BTreeMap<u32, Collection>,
}

fn metric_code(metric: Metric) -> u8 {
    match metric {
        Metric::L2 => 0,
        Metric::Ip => 1,
        Metric::Cosine => 2,
    }
}

fn metric_of(code: u8) -> Option<Metric> {
    match code {
        0 => Some(Metric::L2),
        1 => Some(Metric::Ip),
        2 => Some(Metric::Cosine),
        _ => None,
    }
}

fn vector_type_code(vector_type: VectorType) -> u8 {
    match vector_type {
        VectorType::F32 => 0,
        VectorType::I8 => 1,
    }
}

fn vector_type_of(code: u8) -> Option<VectorType> {
    match code {
        0 => Some(VectorType::F32),
        1 => Some(VectorType::I8),
        _ => None,
    }
}

/// Checks a schema from a client.
pub fn validate_spec(spec: &CollectionSpec) -> Result<(), ShardError> {
    let invalid = |detail: String| Err(ShardError::Invalid(detail));
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 255
        && spec
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name_ok {
        return invalid(format!(
            "collection name {:?}: 1 to 255 bytes of [A-Za-z0-9_.-]",
            spec.name
        ));
    }
    if spec.dimension == 0 || spec.dimension > DIMENSION_MAX {
        return invalid(format!(
            "dimension {} (1 to {DIMENSION_MAX})",
            spec.dimension
        ));
    }
    if !(2..=128).contains(&spec.m) {
        return invalid(format!("m {} (2 to 128)", spec.m));
    }
    if !(1..=4096).contains(&spec.ef_construction) {
        return invalid(format!(
            "ef_construction {} (1 to 4096)",
            spec.ef_construction
        ));
    }
    Ok(())
}

impl Catalog {
    /// Reads `dir/CATALOG` from `files`, or an empty catalog when there is none yet.
    pub fn load(files: &dyn Files, dir: &Path) -> Result<Self, ShardError> {
        let path = dir.join(CATALOG);
        let bytes = match files.read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Catalog::default())
            }
            Err(error) => return Err(ShardError::io("read", &path, error)),
        };
        Self::decode(&bytes).map_err(|detail| ShardError::Corrupt {
            path: path.clone(),
            detail,
        })
    }

    /// Decodes a catalog file's bytes (what [`Catalog::load`] reads), or says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
            return Err("shorter than its checksum".to_owned());
        };
        let computed = crc32c::crc32c(body);
        if u32::from_le_bytes(*crc) != computed {
            return Err("checksum mismatch".to_owned());
        }
        let mut at = 0usize;
        let mut take = |count: usize| -> Result<&[u8], String> {
            let slice = body
                .get(at..at + count)
                .ok_or_else(|| format!("truncated at byte {at}"))?;
            at += count;
            Ok(slice)
        };
        if take(8)? != MAGIC {
            return Err("not a VORTEX catalog".to_owned());
        }
        let u32_of = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let version = u32_of(take(4)?);
        if version != VERSION {
            return Err(format!("unsupported catalog version {version}"));
        }
        let next_id = u32_of(take(4)?);
        let count = u32_of(take(4)?) as usize;
        if count > COLLECTIONS_MAX {
            return Err(format!("{count} collections"));
        }
        let mut collections = BTreeMap::new();
        for _ in 0..count {
            let id = u32_of(take(4)?);
            let state = match take(1)?[0] {
                1 => State::Live,
                2 => State::Dropped,
                other => return Err(format!("collection {id}: state {other}")),
            };
            let name_len = take(1)?[0] as usize;
            let name = String::from_utf8(take(name_len)?.to_vec())
                .map_err(|_| format!("collection {id}: name is not UTF-8"))?;
            let dimension = u32_of(take(4)?);
            let metric =
                metric_of(take(1)?[0]).ok_or_else(|| format!("collection {id}: metric"))?;
            let m_bytes = take(2)?;
            let m = u16::from_le_bytes([m_bytes[0], m_bytes[1]]);
            let ef_bytes = take(2)?;
            let ef_construction = u16::from_le_bytes([ef_bytes[0], ef_bytes[1]]);
            let vector_type = vector_type_of(take(1)?[0])
                .ok_or_else(|| format!("collection {id}: vector type"))?;
            let spec = CollectionSpec {
                name,
                dimension,
                metric,
                m,
                ef_construction,
                vector_type,
            };
            validate_spec(&spec).map_err(|error| format!("collection {id}: {error}"))?;
            if id >= next_id || collections.contains_key(&id) {
                return Err(format!("collection id {id} repeated or not below next_id"));
            }
            collections.insert(id, Collection { id, state, spec });
        }
        if at != body.len() {
            return Err("bytes after the last collection".to_owned());
        }
        Ok(Catalog {
            next_id,
            collections,
        })
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&self.next_id.to_le_bytes());
        bytes.extend_from_slice(&(self.collections.len() as u32).to_le_bytes());
        for collection in self.collections.values() {
            let spec = &collection.spec;
            bytes.extend_from_slice(&collection.id.to_le_bytes());
            bytes.push(match collection.state {
                State::Live => 1,
                State::Dropped => 2,
            });
            bytes.push(spec.name.len() as u8);
            bytes.extend_from_slice(spec.name.as_bytes());
            bytes.extend_from_slice(&spec.dimension.to_le_bytes());
            bytes.push(metric_code(spec.metric));
            bytes.extend_from_slice(&spec.m.to_le_bytes());
            bytes.extend_from_slice(&spec.ef_construction.to_le_bytes());
            bytes.push(vector_type_code(spec.vector_type));
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Writes the catalog to `dir` in `files` atomically and durably.
    pub fn save(&self, files: &dyn Files, dir: &Path) -> Result<(), ShardError> {
        let temp: PathBuf = dir.join(CATALOG_TEMP);
        let path = dir.join(CATALOG);
        let bytes = self.encode();
        debug_assert_eq!(Self::decode(&bytes).as_ref(), Ok(self));
        crate::files::replace_synced(files, &temp, &path, |out| out.write_all(&bytes))
    }

    /// The live collection named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Collection> {
        self.collections
            .values()
            .find(|c| c.state == State::Live && c.spec.name == name)
    }

    /// The collection with id `id`, live or dropped.
    pub fn by_id(&self, id: u32) -> Option<&Collection> {
        self.collections.get(&id)
    }

    /// The name of collection `id` (live or dropped), `#id` for one the catalog does not
    /// know: what messages about a table of it say.
    pub fn name_of(&self, id: u32) -> String {
        self.by_id(id)
            .map_or_else(|| format!("#{id}"), |c| c.spec.name.clone())
    }

    /// Live collections, by id.
    pub fn live(&self) -> impl Iterator<Item = &Collection> {
        self.collections.values().filter(|c| c.state == State::Live)
    }

    /// Dropped collections' ids.
    pub fn dropped(&self) -> impl Iterator<Item = u32> + '_ {
        self.collections
            .values()
            .filter(|c| c.state == State::Dropped)
            .map(|c| c.id)
    }

    /// Adds a live collection (validated, name unused); returns its id. Not yet saved.
    pub fn create(&mut self, spec: CollectionSpec) -> Result<u32, ShardError> {
        validate_spec(&spec)?;
        if self.by_name(&spec.name).is_some() {
            return Err(ShardError::Exists(spec.name));
        }
        if self.collections.len() >= COLLECTIONS_MAX || self.next_id == u32::MAX {
            return Err(ShardError::Invalid(format!(
                "a shard holds at most {COLLECTIONS_MAX} collections, dropped ones included"
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.collections.insert(
            id,
            Collection {
                id,
                state: State::Live,
                spec,
            },
        );
        Ok(id)
    }

    /// Marks the live collection `name` dropped; returns its id. Not yet saved.
    pub fn drop_collection(&mut self, name: &str) -> Result<u32, ShardError> {
        let id = self
            .by_name(name)
            .map(|c| c.id)
            .ok_or_else(|| ShardError::NotFound(name.to_owned()))?;
        if let Some(collection) = self.collections.get_mut(&id) {
            collection.state = State::Dropped;
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vortex_storage::PosixFiles;

    pub(crate) fn spec(name: &str, dimension: u32) -> CollectionSpec {
        CollectionSpec {
            name: name.into(),
            dimension,
            metric: Metric::Cosine,
            m: 16,
            ef_construction: 100,
            vector_type: VectorType::I8,
        }
    }

    #[test]
    fn the_catalog_survives_a_reload_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::load(&PosixFiles, dir.path()).unwrap();
        let a = catalog.create(spec("a", 4)).unwrap();
        let b = catalog.create(spec("b", 8)).unwrap();
        assert!(matches!(
            catalog.create(spec("a", 4)),
            Err(ShardError::Exists(_))
        ));
        catalog.drop_collection("a").unwrap();
        let again = catalog.create(spec("a", 16)).unwrap();
        assert!(again != a && again != b);
        catalog.save(&PosixFiles, dir.path()).unwrap();
        let loaded = Catalog::load(&PosixFiles, dir.path()).unwrap();
        assert_eq!(loaded, catalog);
        assert_eq!(loaded.by_name("a").unwrap().spec.dimension, 16);
        assert_eq!(loaded.dropped().collect::<Vec<_>>(), vec![a]);
        // Damage anywhere is refused with the path.
        let bytes = std::fs::read(dir.path().join(CATALOG)).unwrap();
        for at in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            std::fs::write(dir.path().join(CATALOG), &bad).unwrap();
            let error = Catalog::load(&PosixFiles, dir.path()).unwrap_err();
            assert!(error.to_string().contains("CATALOG"), "{error}");
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut catalog = Catalog::default();
        for bad in [
            spec("", 4),
            spec("with space", 4),
            spec("ok", 0),
            CollectionSpec {
                m: 1,
                ..spec("ok", 4)
            },
            CollectionSpec {
                ef_construction: 0,
                ..spec("ok", 4)
            },
        ] {
            assert!(matches!(catalog.create(bad), Err(ShardError::Invalid(_))));
        }
    }
}

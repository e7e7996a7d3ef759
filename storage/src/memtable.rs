//! The MemTable: fresh writes of one LEU, in key order, until a flush turns them into an
//! SSTable (issue #6).
//!
//! Thread-per-core: each LEU owns its MemTable and is its only writer, so it needs no locking.
//! Other LEUs read it through snapshots ([`crate::Snapshot`]): the map is a persistent one
//! (`imbl`'s B-tree with shared nodes), so a snapshot is a clone in constant time, and a
//! write after it copies only the nodes on its path (values are `Arc`s, so a copied node
//! does not copy vectors). Keys are `(collection id, point id)`; each holds the
//! newest version seen: a sequence number and a value or a tombstone. Writes are applied in
//! WAL order, and replay after a crash may apply a write again; a version older than the one
//! held is ignored, so applying the log twice changes nothing.
//!
//! Bounded: past `bytes_flush` the MemTable asks to be flushed ([`MemTable::needs_flush`]);
//! past twice that it refuses writes ([`MemTableFull`]), which the LEU reports as THROTTLED
//! until the flush has made room.

use imbl::OrdMap;
use std::ops::Bound;
use std::sync::Arc;

/// A point's key: collection first, so a collection's points are contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The collection's id.
    pub collection: u32,
    /// The point's id.
    pub point: u64,
}

/// A point as stored: its vector (the collection's element encoding, opaque here) and its
/// payload. SSTables keep the two apart: vectors go to the file's aligned vector region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Point {
    /// The vector's bytes.
    pub vector: Vec<u8>,
    /// The encoded payload.
    pub payload: Vec<u8>,
}

impl Point {
    /// A point from borrowed parts.
    pub fn new(vector: &[u8], payload: &[u8]) -> Self {
        Point {
            vector: vector.to_vec(),
            payload: payload.to_vec(),
        }
    }
}

/// What a key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// The point's newest content (shared: MemTable snapshots hold it too).
    Put(Arc<Point>),
    /// The point was deleted.
    Tombstone,
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The sequence number of the write (its WAL record).
    pub sequence: u64,
    /// The value.
    pub value: Value,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The newest version is a value.
    Found(&'a Point),
    /// The newest version is a tombstone: older tables must not be consulted.
    Deleted,
    /// The MemTable knows nothing of the key.
    Missing,
}

/// Bytes of bookkeeping counted per entry on top of the value (key, sequence, map node).
const ENTRY_OVERHEAD_BYTES: usize = 64;

/// The write was refused: the MemTable is at its hard limit until a flush makes room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the memtable holds {bytes} bytes, its limit; THROTTLED until a flush completes")]
pub struct MemTableFull {
    /// Bytes held.
    pub bytes: usize,
}

/// One LEU's MemTable.
#[derive(Debug, Clone)]
pub struct MemTable {
    map: OrdMap<Key, Version>,
    bytes: usize,
    bytes_flush: usize,
    last_sequence: u64,
}

impl MemTable {
    /// An empty MemTable that asks for a flush past `bytes_flush` bytes and refuses writes
    /// past twice that.
    pub fn new(bytes_flush: usize) -> Self {
        MemTable {
            map: OrdMap::new(),
            bytes: 0,
            bytes_flush: bytes_flush.max(1),
            last_sequence: 0,
        }
    }

    /// Stores `point` for `key` at `sequence`, unless a newer version is held.
    pub fn put(&mut self, key: Key, sequence: u64, point: Point) -> Result<(), MemTableFull> {
        self.apply(key, sequence, Value::Put(Arc::new(point)))
    }

    /// Records that `key` was deleted at `sequence`, unless a newer version is held.
    pub fn delete(&mut self, key: Key, sequence: u64) -> Result<(), MemTableFull> {
        self.apply(key, sequence, Value::Tombstone)
    }

    /// Applies a write whatever the size: for WAL replay, whose writes were acknowledged
    /// already and cannot be refused (the store flushes right after replay).
    pub fn apply_replayed(&mut self, key: Key, sequence: u64, value: Value) {
        self.insert(key, sequence, value);
    }

    /// Applies a write unless the MemTable is at its hard limit.
    pub fn apply(&mut self, key: Key, sequence: u64, value: Value) -> Result<(), MemTableFull> {
        if self.bytes >= 2 * self.bytes_flush {
            return Err(MemTableFull { bytes: self.bytes });
        }
        self.insert(key, sequence, value);
        Ok(())
    }

    fn insert(&mut self, key: Key, sequence: u64, value: Value) {
        self.last_sequence = self.last_sequence.max(sequence);
        let added = entry_bytes(&value);
        match self.map.get_mut(&key) {
            Some(held) if held.sequence >= sequence => {}
            Some(held) => {
                self.bytes = self.bytes - entry_bytes(&held.value) + added;
                *held = Version { sequence, value };
            }
            None => {
                self.bytes += added;
                self.map.insert(key, Version { sequence, value });
            }
        }
    }

    /// The newest version of `key` held here.
    pub fn get(&self, key: &Key) -> Lookup<'_> {
        match self.map.get(key) {
            Some(Version {
                value: Value::Put(point),
                ..
            }) => Lookup::Found(point),
            Some(Version {
                value: Value::Tombstone,
                ..
            }) => Lookup::Deleted,
            None => Lookup::Missing,
        }
    }

    /// The version held for `key`, with its sequence number.
    pub fn version(&self, key: &Key) -> Option<&Version> {
        self.map.get(key)
    }

    /// Every key in order, tombstones included (what a flush writes).
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Version)> {
        self.map.iter()
    }

    /// The keys of one collection in point order, tombstones included.
    pub fn collection(&self, collection: u32) -> impl Iterator<Item = (&Key, &Version)> {
        let start = Key {
            collection,
            point: 0,
        };
        let end = Key {
            collection,
            point: u64::MAX,
        };
        self.map
            .range((Bound::Included(start), Bound::Included(end)))
    }

    /// Whether the MemTable has reached its flush size.
    pub fn needs_flush(&self) -> bool {
        self.bytes >= self.bytes_flush
    }

    /// Approximate bytes held (values plus per-entry bookkeeping).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The highest sequence number applied: once this MemTable is flushed, the WAL may be
    /// checkpointed up to it.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }
}

fn entry_bytes(value: &Value) -> usize {
    ENTRY_OVERHEAD_BYTES
        + match value {
            Value::Put(point) => point.vector.len() + point.payload.len(),
            Value::Tombstone => 0,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn key(collection: u32, point: u64) -> Key {
        Key { collection, point }
    }

    fn with_payload(payload: &[u8]) -> Point {
        Point::new(&[1, 2, 3, 4], payload)
    }

    #[test]
    fn the_newest_version_wins_whatever_the_order_applied() {
        let mut table = MemTable::new(1 << 20);
        table.put(key(1, 7), 5, with_payload(b"five")).unwrap();
        table.put(key(1, 7), 3, with_payload(b"three")).unwrap(); // replayed older write: ignored
        assert_eq!(table.get(&key(1, 7)), Lookup::Found(&with_payload(b"five")));
        table.delete(key(1, 7), 6).unwrap();
        assert_eq!(table.get(&key(1, 7)), Lookup::Deleted);
        table
            .put(key(1, 7), 6, with_payload(b"same sequence"))
            .unwrap(); // applied twice: no change
        assert_eq!(table.get(&key(1, 7)), Lookup::Deleted);
        assert_eq!(table.get(&key(2, 7)), Lookup::Missing);
        assert_eq!(table.last_sequence(), 6);
    }

    /// A clone is a snapshot: writes to either side afterwards leave the other as it was.
    #[test]
    fn a_clone_is_unchanged_by_later_writes() {
        let mut table = MemTable::new(1 << 20);
        for point in 0..1000 {
            table
                .put(key(1, point), point + 1, with_payload(b"old"))
                .unwrap();
        }
        let snapshot = table.clone();
        for point in (0..1000).step_by(3) {
            table
                .put(key(1, point), 2000 + point, with_payload(b"new"))
                .unwrap();
        }
        table.delete(key(1, 1), 5000).unwrap();
        table
            .put(key(1, 5000), 5001, with_payload(b"added"))
            .unwrap();
        for point in 0..1000 {
            assert_eq!(
                snapshot.get(&key(1, point)),
                Lookup::Found(&with_payload(b"old"))
            );
        }
        assert_eq!(snapshot.get(&key(1, 5000)), Lookup::Missing);
        assert_eq!((snapshot.len(), table.len()), (1000, 1001));
        assert_eq!(table.get(&key(1, 3)), Lookup::Found(&with_payload(b"new")));
        assert_eq!(table.get(&key(1, 1)), Lookup::Deleted);
    }

    #[test]
    fn collections_iterate_in_point_order_and_apart() {
        let mut table = MemTable::new(1 << 20);
        for (collection, point) in [(2, 5), (1, u64::MAX), (1, 0), (3, 1), (1, 9)] {
            table
                .put(key(collection, point), 1, Point::new(&[], b"v"))
                .unwrap();
        }
        let points: Vec<u64> = table.collection(1).map(|(k, _)| k.point).collect();
        assert_eq!(points, vec![0, 9, u64::MAX]);
        let all: Vec<(u32, u64)> = table.iter().map(|(k, _)| (k.collection, k.point)).collect();
        assert_eq!(all, vec![(1, 0), (1, 9), (1, u64::MAX), (2, 5), (3, 1)]);
    }

    #[test]
    fn size_asks_for_a_flush_then_throttles() {
        let mut table = MemTable::new(10_000);
        let value = vec![0u8; 1000];
        let mut point = 0;
        while !table.needs_flush() {
            table
                .put(key(1, point), point + 1, Point::new(&[], &value))
                .unwrap();
            point += 1;
        }
        assert!(point < 20);
        let mut refused = None;
        for _ in 0..100 {
            if let Err(full) = table.put(key(1, point), point + 1, Point::new(&[], &value)) {
                refused = Some(full);
                break;
            }
            point += 1;
        }
        let full = refused.expect("the hard limit refuses writes");
        assert!(full.bytes >= 20_000 && full.bytes < 20_000 + 1100);
        assert!(full.to_string().contains("THROTTLED"));
        // Overwrites account for the bytes they replace.
        let mut table = MemTable::new(1 << 20);
        table
            .put(key(1, 1), 1, Point::new(&[0; 100], &[0; 400]))
            .unwrap();
        table
            .put(key(1, 1), 2, Point::new(&[0; 60], &[0; 40]))
            .unwrap();
        assert_eq!(table.bytes(), ENTRY_OVERHEAD_BYTES + 100);
    }

    proptest! {
        /// Against a model: applying writes in any order leaves, per key, the version with
        /// the highest sequence number.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(
            (0u32..3, 0u64..20, 1u64..200, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20))),
            0..300,
        )) {
            let mut table = MemTable::new(usize::MAX / 4);
            let mut model: BTreeMap<Key, (u64, Option<Vec<u8>>)> = BTreeMap::new();
            for (collection, point, sequence, value) in ops {
                let k = key(collection, point);
                match &value {
                    Some(bytes) => table.put(k, sequence, with_payload(bytes)).unwrap(),
                    None => table.delete(k, sequence).unwrap(),
                }
                let held = model.entry(k).or_insert((0, None));
                if sequence > held.0 {
                    *held = (sequence, value);
                }
            }
            prop_assert_eq!(table.len(), model.len());
            for (k, (sequence, value)) in &model {
                let version = table.version(k).unwrap();
                prop_assert_eq!(version.sequence, *sequence);
                match value {
                    Some(bytes) => prop_assert_eq!(table.get(k), Lookup::Found(&with_payload(bytes))),
                    None => prop_assert_eq!(table.get(k), Lookup::Deleted),
                }
            }
        }
    }
}

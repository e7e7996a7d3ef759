//! Merging sorted sources into one: the newest version of each key, in key order.
//!
//! Used by compaction (over tables), by flush (over one MemTable) and by scans (over the
//! MemTables and every table of a collection). Each source yields entries in strictly
//! increasing key order; where several hold a key, the entry with the highest sequence number
//! wins and the others are skipped.

use crate::error::StorageError;
use crate::memtable::{Key, Point, Value, Version};
use crate::sstable::table::Entry;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A source of entries in key order.
pub type Source<'a> = Box<dyn Iterator<Item = Result<Entry, StorageError>> + Send + 'a>;

/// An entry built from a MemTable version.
pub fn memtable_entry(key: &Key, version: &Version) -> Result<Entry, StorageError> {
    Ok(Entry {
        key: *key,
        sequence: version.sequence,
        point: match &version.value {
            Value::Put(point) => Some(Point::clone(point)),
            Value::Tombstone => None,
        },
    })
}

/// The merge of several sources.
pub struct Merge<'a> {
    sources: Vec<Source<'a>>,
    heads: Vec<Option<Entry>>,
    /// (key, newest first, source) of every source's head.
    heap: BinaryHeap<Reverse<(Key, Reverse<u64>, usize)>>,
    failed: bool,
}

impl std::fmt::Debug for Merge<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merge")
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Merge<'a> {
    /// Merges `sources`.
    pub fn new(sources: Vec<Source<'a>>) -> Result<Self, StorageError> {
        let mut merge = Merge {
            heads: (0..sources.len()).map(|_| None).collect(),
            sources,
            heap: BinaryHeap::new(),
            failed: false,
        };
        for index in 0..merge.sources.len() {
            merge.advance(index)?;
        }
        Ok(merge)
    }

    fn advance(&mut self, index: usize) -> Result<(), StorageError> {
        match self.sources[index].next() {
            Some(Ok(entry)) => {
                self.heap
                    .push(Reverse((entry.key, Reverse(entry.sequence), index)));
                self.heads[index] = Some(entry);
            }
            Some(Err(error)) => return Err(error),
            None => self.heads[index] = None,
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<Entry>, StorageError> {
        let Some(Reverse((key, _, index))) = self.heap.pop() else {
            return Ok(None);
        };
        let Some(newest) = self.heads[index].take() else {
            unreachable!("every source in the heap has a head");
        };
        self.advance(index)?;
        // Older versions of the same key, in other sources, are skipped.
        while let Some(Reverse((next_key, _, other))) = self.heap.peek().copied() {
            if next_key != key {
                break;
            }
            self.heap.pop();
            self.heads[other] = None;
            self.advance(other)?;
        }
        Ok(Some(newest))
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<Entry, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(entry) => entry.map(Ok),
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(point: u64, sequence: u64, value: Option<u8>) -> Result<Entry, StorageError> {
        Ok(Entry {
            key: Key {
                collection: 1,
                point,
            },
            sequence,
            point: value.map(|byte| Point::new(&[byte], &[])),
        })
    }

    #[test]
    fn the_newest_version_of_each_key_comes_out_in_order() {
        let older: Source = Box::new(vec![entry(1, 1, Some(1)), entry(3, 2, Some(2))].into_iter());
        let newer: Source = Box::new(vec![entry(1, 5, None), entry(2, 6, Some(6))].into_iter());
        let out: Vec<(u64, u64)> = Merge::new(vec![older, newer])
            .unwrap()
            .map(|e| e.map(|e| (e.key.point, e.sequence)).unwrap())
            .collect();
        assert_eq!(out, vec![(1, 5), (2, 6), (3, 2)]);
    }

    #[test]
    fn an_error_ends_the_merge() {
        let bad: Source = Box::new(
            vec![
                entry(1, 1, Some(1)),
                Err(StorageError::Invalid("boom".into())),
            ]
            .into_iter(),
        );
        let mut merge = Merge::new(vec![bad]).unwrap();
        assert!(merge.next().is_some_and(|r| r.is_err()));
        assert!(merge.next().is_none());
    }
}

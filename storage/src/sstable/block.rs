//! SSTable data blocks: sorted entries in 4 KiB units, each block checked with CRC32C.
//!
//! ```text
//! entries, back to back from offset 0, keys strictly increasing:
//!   collection u32 | point u64 | sequence u64 | kind u8 (1 put, 2 tombstone) | value_len u32 | value
//! zero padding
//! entry offsets   u32 × count     (from the block's start)
//! count           u32             (the block's last 8 bytes are count and crc32c)
//! crc32c          u32             over every byte before it
//! ```
//!
//! A block is one 4 KiB unit, or as many as a single entry too large for one needs. All
//! integers are little-endian. [`Block::parse`] checks everything before anything is read:
//! length, checksum, count, every offset, every entry's bounds, key order. The builder checks
//! its own output the same way before handing it over, and a reader checks again after a read:
//! the pair of assertions around the disk.

use crate::memtable::Key;

/// Bytes per block unit.
pub const BLOCK_UNIT_BYTES: usize = 4096;
/// Bytes of an entry before its value.
const ENTRY_HEADER_BYTES: usize = 4 + 8 + 8 + 1 + 4;
/// Bytes of the trailer: count and CRC.
const TRAILER_BYTES: usize = 4 + 4;
/// The largest block accepted (a single value of about 16 MiB).
pub const BLOCK_BYTES_MAX: usize = 16 << 20;

const KIND_PUT: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;

/// Why bytes are not a valid block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Not a whole number of units, or too large.
    #[error("block of {0} bytes is not a whole number of 4 KiB units up to 16 MiB")]
    Length(usize),
    /// The checksum does not match.
    #[error("block checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Stored.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// The layout is inconsistent (a checksum-valid block that a bug or an attacker wrote).
    #[error("malformed block: {0}")]
    Malformed(&'static str),
}

/// A parsed, verified block borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    bytes: &'a [u8],
    offsets: &'a [u8],
    count: usize,
}

/// One entry read from a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Its key.
    pub key: Key,
    /// Its sequence number.
    pub sequence: u64,
    /// Its value; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let raw = bytes.get(at..at + 8)?;
    let mut word = [0u8; 8];
    word.copy_from_slice(raw);
    Some(u64::from_le_bytes(word))
}

/// Decodes the entry at `at`, whose bytes must end by `limit`; returns it and its end.
fn entry_at(bytes: &[u8], at: usize, limit: usize) -> Result<(EntryRef<'_>, usize), BlockError> {
    let malformed = BlockError::Malformed;
    let header_end = at
        .checked_add(ENTRY_HEADER_BYTES)
        .filter(|&end| end <= limit)
        .ok_or(malformed("entry header past the entries"))?;
    let collection = read_u32(bytes, at).ok_or(malformed("entry header"))?;
    let point = read_u64(bytes, at + 4).ok_or(malformed("entry header"))?;
    let sequence = read_u64(bytes, at + 12).ok_or(malformed("entry header"))?;
    let kind = bytes[at + 20];
    let value_len = read_u32(bytes, at + 21).ok_or(malformed("entry header"))? as usize;
    let end = header_end
        .checked_add(value_len)
        .filter(|&end| end <= limit)
        .ok_or(malformed("entry value past the entries"))?;
    let value = match kind {
        KIND_PUT => Some(&bytes[header_end..end]),
        KIND_TOMBSTONE if value_len == 0 => None,
        KIND_TOMBSTONE => return Err(malformed("tombstone with a value")),
        _ => return Err(malformed("unknown entry kind")),
    };
    Ok((
        EntryRef {
            key: Key { collection, point },
            sequence,
            value,
        },
        end,
    ))
}

impl<'a> Block<'a> {
    /// Verifies and parses a block.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BlockError> {
        let length = bytes.len();
        if length == 0 || !length.is_multiple_of(BLOCK_UNIT_BYTES) || length > BLOCK_BYTES_MAX {
            return Err(BlockError::Length(length));
        }
        let crc_at = length - 4;
        let stored = read_u32(bytes, crc_at).unwrap_or(0);
        let computed = crc32c::crc32c(&bytes[..crc_at]);
        if stored != computed {
            return Err(BlockError::Checksum { stored, computed });
        }
        let malformed = BlockError::Malformed;
        let count_at = crc_at - 4;
        let count = read_u32(bytes, count_at).ok_or(malformed("count"))? as usize;
        let offsets_bytes = count
            .checked_mul(4)
            .filter(|&n| n <= count_at)
            .ok_or(malformed("entry count too large for the block"))?;
        let offsets_at = count_at - offsets_bytes;
        let block = Block {
            bytes,
            offsets: &bytes[offsets_at..count_at],
            count,
        };
        // Entries are back to back from 0; the region between them and the offsets is zeros.
        let mut expected = 0usize;
        let mut previous: Option<Key> = None;
        for index in 0..count {
            let at = block.offset(index);
            if at != expected {
                return Err(malformed("entry offsets are not back to back"));
            }
            let (entry, end) = entry_at(bytes, at, offsets_at)?;
            if previous.is_some_and(|key| key >= entry.key) {
                return Err(malformed("keys not strictly increasing"));
            }
            previous = Some(entry.key);
            expected = end;
        }
        if bytes[expected..offsets_at].iter().any(|&byte| byte != 0) {
            return Err(malformed("non-zero padding"));
        }
        Ok(block)
    }

    fn offset(&self, index: usize) -> usize {
        read_u32(self.offsets, index * 4).unwrap_or(0) as usize
    }

    fn entry(&self, index: usize) -> EntryRef<'a> {
        // Every entry was checked by `parse`.
        let limit = self.bytes.len();
        match entry_at(self.bytes, self.offset(index), limit) {
            Ok((entry, _)) => entry,
            Err(_) => unreachable!("entry {index} was verified at parse"),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entry for `key`, by binary search.
    pub fn get(&self, key: &Key) -> Option<EntryRef<'a>> {
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let middle = (low + high) / 2;
            let entry = self.entry(middle);
            match entry.key.cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Some(entry),
            }
        }
        None
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = EntryRef<'a>> + '_ {
        (0..self.count).map(|index| self.entry(index))
    }

    /// The first and last keys, if any.
    pub fn key_range(&self) -> Option<(Key, Key)> {
        (self.count > 0).then(|| (self.entry(0).key, self.entry(self.count - 1).key))
    }
}

/// Builds one block from entries added in key order.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    entries: Vec<u8>,
    offsets: Vec<u32>,
    last_key: Option<Key>,
}

impl BlockBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        BlockBuilder::default()
    }

    /// The block's size if it were finished now.
    fn size_with(&self, extra_entry_bytes: usize, extra_entries: usize) -> usize {
        let used = self.entries.len()
            + extra_entry_bytes
            + 4 * (self.offsets.len() + extra_entries)
            + TRAILER_BYTES;
        used.div_ceil(BLOCK_UNIT_BYTES).max(1) * BLOCK_UNIT_BYTES
    }

    /// Adds an entry if it keeps the block at one unit (or the block is empty, when a large
    /// entry gets a block of its own). Keys must increase. Returns whether it was added.
    /// `value` is `None` for a tombstone.
    pub fn try_add(&mut self, key: Key, sequence: u64, value: Option<&[u8]>) -> bool {
        debug_assert!(
            self.last_key.is_none_or(|last| last < key),
            "keys out of order"
        );
        let kind = if value.is_some() {
            KIND_PUT
        } else {
            KIND_TOMBSTONE
        };
        let value = value.unwrap_or_default();
        let entry_bytes = ENTRY_HEADER_BYTES + value.len();
        if !self.offsets.is_empty() && self.size_with(entry_bytes, 1) > BLOCK_UNIT_BYTES {
            return false;
        }
        self.offsets.push(self.entries.len() as u32);
        self.entries
            .extend_from_slice(&key.collection.to_le_bytes());
        self.entries.extend_from_slice(&key.point.to_le_bytes());
        self.entries.extend_from_slice(&sequence.to_le_bytes());
        self.entries.push(kind);
        self.entries
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.entries.extend_from_slice(value);
        self.last_key = Some(key);
        true
    }

    /// Entries added.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The finished block, verified as a reader would verify it; the builder is emptied.
    pub fn finish(&mut self) -> Vec<u8> {
        let size = self.size_with(0, 0);
        let count = self.offsets.len() as u32;
        let mut block = std::mem::take(&mut self.entries);
        let offsets_at = size - TRAILER_BYTES - 4 * self.offsets.len();
        block.resize(offsets_at, 0);
        for offset in self.offsets.drain(..) {
            block.extend_from_slice(&offset.to_le_bytes());
        }
        block.extend_from_slice(&count.to_le_bytes());
        let crc = crc32c::crc32c(&block);
        block.extend_from_slice(&crc.to_le_bytes());
        self.last_key = None;
        // The assertion before the write: what goes to disk parses back.
        assert!(
            Block::parse(&block).is_ok(),
            "a block failed its own check before the write"
        );
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(point: u64) -> Key {
        Key {
            collection: 1,
            point,
        }
    }

    #[test]
    fn entries_round_trip_and_are_found_by_key() {
        let mut builder = BlockBuilder::new();
        assert!(builder.try_add(key(1), 5, Some(b"one")));
        assert!(builder.try_add(key(4), 6, None));
        assert!(builder.try_add(key(9), 7, Some(&[])));
        let bytes = builder.finish();
        assert_eq!(bytes.len(), BLOCK_UNIT_BYTES);
        let block = Block::parse(&bytes).unwrap();
        assert_eq!(block.len(), 3);
        assert_eq!(block.get(&key(1)).unwrap().value, Some(&b"one"[..]));
        assert_eq!(block.get(&key(4)).unwrap().value, None);
        assert_eq!(block.get(&key(9)).unwrap().sequence, 7);
        assert_eq!(block.get(&key(5)), None);
        assert_eq!(block.key_range(), Some((key(1), key(9))));
        assert!(builder.is_empty());
    }

    #[test]
    fn a_block_stops_at_one_unit_and_a_large_entry_gets_its_own() {
        let mut builder = BlockBuilder::new();
        let mut point = 0;
        while builder.try_add(key(point), 1, Some(&[7; 500])) {
            point += 1;
        }
        assert_eq!(point, 7, "7 entries of 525 bytes + offsets fit in 4 KiB");
        assert_eq!(builder.finish().len(), BLOCK_UNIT_BYTES);
        assert!(builder.try_add(key(100), 1, Some(&[1; 10_000])));
        assert!(!builder.try_add(key(101), 1, Some(b"x")));
        let big = builder.finish();
        assert_eq!(big.len(), 3 * BLOCK_UNIT_BYTES);
        assert_eq!(
            Block::parse(&big)
                .unwrap()
                .get(&key(100))
                .unwrap()
                .value
                .unwrap()
                .len(),
            10_000
        );
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut builder = BlockBuilder::new();
        for point in 0..5 {
            builder.try_add(key(point), point + 1, Some(b"value"));
        }
        let good = builder.finish();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert!(
                matches!(Block::parse(&bad), Err(BlockError::Checksum { .. })),
                "flip at {at}"
            );
        }
        assert!(matches!(
            Block::parse(&good[..4095]),
            Err(BlockError::Length(_))
        ));
        assert!(matches!(Block::parse(&[]), Err(BlockError::Length(0))));
    }

    /// Seals arbitrary bytes with a valid checksum, so that parsing reaches the layout checks.
    fn sealed(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.resize(BLOCK_UNIT_BYTES, 0);
        let crc = crc32c::crc32c(&bytes[..BLOCK_UNIT_BYTES - 4]);
        bytes[BLOCK_UNIT_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn checksum_valid_nonsense_is_refused() {
        let mut count_too_large = vec![0u8; BLOCK_UNIT_BYTES];
        count_too_large[BLOCK_UNIT_BYTES - 8..BLOCK_UNIT_BYTES - 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Block::parse(&sealed(count_too_large)),
            Err(BlockError::Malformed(_))
        ));
        let mut builder = BlockBuilder::new();
        builder.try_add(key(1), 1, Some(b"a"));
        builder.try_add(key(2), 2, Some(b"b"));
        let mut swapped = builder.finish();
        swapped[4..12].copy_from_slice(&9u64.to_le_bytes()); // first key now above the second
        assert!(matches!(
            Block::parse(&sealed(swapped[..BLOCK_UNIT_BYTES - 4].to_vec())),
            Err(BlockError::Malformed("keys not strictly increasing"))
        ));
    }

    proptest! {
        #[test]
        fn built_blocks_hold_what_was_added(
            values in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)), 1..40)
        ) {
            let mut builder = BlockBuilder::new();
            let mut added = Vec::new();
            for (point, value) in values.iter().enumerate() {
                let sequence = point as u64 + 1;
                if !builder.try_add(key(point as u64), sequence, value.as_deref()) {
                    break;
                }
                added.push((key(point as u64), sequence, value));
            }
            let bytes = builder.finish();
            let block = Block::parse(&bytes).unwrap();
            prop_assert_eq!(block.len(), added.len());
            for ((key, sequence, value), entry) in added.iter().zip(block.iter()) {
                prop_assert_eq!(entry.key, *key);
                prop_assert_eq!(entry.sequence, *sequence);
                prop_assert_eq!(entry.value, value.as_deref());
            }
        }

        #[test]
        fn sealed_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..BLOCK_UNIT_BYTES)) {
            if let Ok(block) = Block::parse(&sealed(bytes)) {
                for entry in block.iter() {
                    let _ = block.get(&entry.key);
                }
            }
        }
    }
}

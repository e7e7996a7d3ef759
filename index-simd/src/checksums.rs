//! Checksums of rows an index reads but does not own: an SSTable's vector region, which
//! carries a CRC32C for every 4 KiB unit of it (docs/STORAGE.md), searched in place by the
//! segment's graph ([`Hnsw::build_over`](crate::Hnsw::build_over)).
//!
//! A search verifies each unit the first time it reads a row in it, and the index remembers
//! which units verified (one bit each), so that later reads of a verified unit cost one bit
//! test: the rule RocksDB follows for blocks entering its block cache. The bits are
//! forgotten whenever the index lets go of the rows' pages ([`Hnsw::release_pages`](
//! crate::Hnsw::release_pages)), since the next read may come from the disk again. A unit
//! that fails is never marked: the search that read it fails with
//! [`IndexError::Corrupt`](crate::IndexError::Corrupt) instead of ranking a damaged row,
//! and the owner's [`OnDamage`] hook is told (the shard quarantines the table).
//!
//! Bytes of a verified unit that change in memory afterwards are not seen by searches; the
//! scrubber re-reads every unit within its period (docs/STORAGE.md, "The scrubber").

use crate::store::Store;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes per checksummed unit.
pub const UNIT_BYTES: usize = 4096;

/// A unit of rows that failed its checksum (or could not be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowDamage {
    /// The unit, counted from the first row.
    pub unit: usize,
    /// The checksum stored for it.
    pub stored: u32,
    /// The checksum of its bytes as read; `None` when they could not be read.
    pub computed: Option<u32>,
}

impl std::fmt::Display for RowDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.unit * UNIT_BYTES;
        match self.computed {
            Some(computed) => write!(
                f,
                "rows unit {} (bytes {at}..{}): checksum mismatch (stored {:#010x}, computed \
                 {computed:#010x})",
                self.unit,
                at + UNIT_BYTES,
                self.stored
            ),
            None => write!(
                f,
                "rows unit {} (bytes {at}..{}) could not be read",
                self.unit,
                at + UNIT_BYTES
            ),
        }
    }
}

/// Called for each failed check (a search stops at its first), from the thread of the read
/// that found it.
pub type OnDamage = Box<dyn Fn(&RowDamage) + Send + Sync>;

/// The checksums of a region of rows and which of its units verified.
pub struct RowChecksums {
    /// CRC32C of each unit, the last one over the rows' end and the zero padding after it.
    crcs: Box<[u32]>,
    /// One bit per unit: it verified since the rows' pages were last let go.
    verified: Box<[AtomicU64]>,
    /// Bytes from one row to the next.
    row_bytes: usize,
    /// Bytes of a row's vector (the rest of the stride is padding).
    vector_bytes: usize,
    on_damage: Option<OnDamage>,
}

impl std::fmt::Debug for RowChecksums {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowChecksums")
            .field("units", &self.crcs.len())
            .field("verified", &self.verified_units())
            .field("row_bytes", &self.row_bytes)
            .finish_non_exhaustive()
    }
}

impl RowChecksums {
    /// The checksums `crcs` (one per [`UNIT_BYTES`] of the rows, from the first row) of rows
    /// of `dim` floats, [`vector_stride`](crate::vector_stride)`(dim)` apart.
    pub fn new(crcs: Vec<u32>, dim: usize, on_damage: Option<OnDamage>) -> RowChecksums {
        let units = crcs.len();
        RowChecksums {
            crcs: crcs.into_boxed_slice(),
            verified: (0..units.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            row_bytes: crate::vector_stride(dim) * size_of::<f32>(),
            vector_bytes: dim * size_of::<f32>(),
            on_damage,
        }
    }

    /// Units covered.
    pub fn units(&self) -> usize {
        self.crcs.len()
    }

    /// Whether the units cover `rows` rows.
    pub fn covers(&self, rows: usize) -> bool {
        rows.checked_mul(self.row_bytes)
            .is_some_and(|bytes| bytes <= self.crcs.len() * UNIT_BYTES)
    }

    /// Units verified since the pages were last let go.
    pub fn verified_units(&self) -> usize {
        self.verified
            .iter()
            .map(|word| word.load(Ordering::Relaxed).count_ones() as usize)
            .sum()
    }

    /// Forgets which units verified: the next read of each checks it again.
    pub fn forget(&self) {
        for word in self.verified.iter() {
            word.store(0, Ordering::Relaxed);
        }
    }

    /// The first and last unit of `node`'s vector.
    #[inline(always)]
    fn units_of(&self, node: u32) -> (usize, usize) {
        let start = node as usize * self.row_bytes;
        (
            start / UNIT_BYTES,
            (start + self.vector_bytes.max(1) - 1) / UNIT_BYTES,
        )
    }

    #[inline(always)]
    fn is_marked(&self, unit: usize) -> bool {
        self.verified
            .get(unit / 64)
            .is_some_and(|word| word.load(Ordering::Relaxed) & (1 << (unit % 64)) != 0)
    }

    /// Whether every unit of `node`'s vector verified already (the search's fast path).
    #[inline(always)]
    pub fn is_verified(&self, node: u32) -> bool {
        let (first, last) = self.units_of(node);
        self.is_marked(first) && (first == last || self.is_marked(last))
    }

    /// Verifies the units of `node`'s vector in `rows` not verified yet, through the
    /// mapping (for rows a search reads in place).
    pub fn check(&self, rows: &Store<f32>, node: u32) -> Result<(), RowDamage> {
        self.check_with(node, |unit| {
            rows.bytes_after(unit * UNIT_BYTES, UNIT_BYTES)
                .map(crc32c::crc32c)
        })
    }

    /// [`RowChecksums::check`] reading the units from the file (`pread`), not through the
    /// mapping, so that they do not enter the resident set (for rows read one at a time
    /// to re-rank, see [`Store::read_into`]).
    pub fn check_read(&self, rows: &Store<f32>, node: u32) -> Result<(), RowDamage> {
        self.check_with(node, |unit| {
            let mut buffer = [0u8; UNIT_BYTES];
            rows.read_bytes_after(unit * UNIT_BYTES, &mut buffer)
                .then(|| crc32c::crc32c(&buffer))
        })
    }

    /// Fails when the kernel could not read a page of `rows` (reads of it saw zeros: the
    /// storage engine's SIGBUS guard), verified or not: for after a search or a copy, since
    /// a unit verified before its page was lost is not checked again.
    pub fn check_lost(&self, rows: &Store<f32>) -> Result<(), RowDamage> {
        let Some(at) = rows.lost_page() else {
            return Ok(());
        };
        let unit = at / UNIT_BYTES;
        let damage = RowDamage {
            unit,
            stored: self.crcs.get(unit).copied().unwrap_or(0),
            computed: None,
        };
        if let Some(hook) = &self.on_damage {
            hook(&damage);
        }
        Err(damage)
    }

    fn check_with(
        &self,
        node: u32,
        crc_of: impl Fn(usize) -> Option<u32>,
    ) -> Result<(), RowDamage> {
        let (first, last) = self.units_of(node);
        for unit in first..=last {
            if self.is_marked(unit) {
                continue;
            }
            let stored = self.crcs.get(unit).copied();
            let computed = crc_of(unit);
            match stored {
                Some(stored) if computed == Some(stored) => {
                    self.verified[unit / 64].fetch_or(1 << (unit % 64), Ordering::Relaxed);
                }
                _ => {
                    let damage = RowDamage {
                        unit,
                        stored: stored.unwrap_or(0),
                        computed,
                    };
                    if let Some(hook) = &self.on_damage {
                        hook(&damage);
                    }
                    return Err(damage);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_straddling_units_check_both_and_a_row_inside_one_checks_one() {
        // 100 floats: rows of 112 floats (448 bytes), so row 9 spans bytes 4032..4432.
        let checksums = RowChecksums::new(vec![0; 3], 100, None);
        assert_eq!(checksums.units_of(0), (0, 0));
        assert_eq!(checksums.units_of(9), (0, 1));
        assert_eq!(checksums.units_of(10), (1, 1));
        assert!(checksums.covers(27) && !checksums.covers(28));
    }
}

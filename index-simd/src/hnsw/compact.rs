//! Compaction: a new index without the deleted nodes, links repaired around them, memory
//! reclaimed.
//!
//! A live node that linked to a deleted one gets, in its place, candidates from the deleted
//! node's own live neighbours on the same layer (the neighbourhood it was reaching through
//! it); its list is then chosen again from its live neighbours and those candidates with the
//! same heuristic as the build. This is the repair DiskANN calls consolidation; unlike
//! hnswlib's "mark deleted", nothing is kept for deleted nodes afterwards: the new index
//! holds only live nodes, renumbered densely in their old order.

use super::build::{select_neighbors, upper_layout};
use super::search::{ExactSpace, Scored, Space};
use super::{block_range, Hnsw, IndexError, NO_NODE};
use crate::filter::NodeSet;
use crate::store::Store;

/// The result of [`Hnsw::compact`].
#[derive(Debug)]
pub struct Compacted {
    /// The new index, with only the live nodes.
    pub index: Hnsw,
    /// For every old node, its new id, or `u32::MAX` when it was deleted.
    pub old_to_new: Vec<u32>,
}

impl Hnsw {
    /// A copy of the index without its deleted nodes (see the module docs). Node ids change:
    /// `old_to_new` maps them; labels stay with their nodes. A codes-only index
    /// ([`Hnsw::into_codes_only`]) has no vectors to repair its links with, and is refused.
    pub fn compact(&self) -> Result<Compacted, IndexError> {
        if self.codes_only {
            return Err(IndexError::InvalidParameter(
                "a codes-only index cannot be compacted: it holds no vectors".into(),
            ));
        }
        let mut old_to_new = vec![NO_NODE; self.count];
        let live: Vec<u32> = (0..self.count as u32)
            .filter(|&node| !self.is_deleted(node))
            .collect();
        for (new, &old) in live.iter().enumerate() {
            old_to_new[old as usize] = new as u32;
        }
        let count = live.len();
        let levels: Vec<u8> = live.iter().map(|&old| self.levels[old as usize]).collect();
        let (upper_offsets, upper_length) = upper_layout(&levels, self.m)
            .expect("a subset of a valid layout fits the same offsets");
        let mut links0 = Store::<u32>::zeroed(count * (1 + self.m0));
        let mut upper_links = Store::<u32>::zeroed(upper_length);

        let space = ExactSpace::of(self, &[]);
        let mut candidates: Vec<u32> = Vec::new();
        let mut scored: Vec<Scored> = Vec::new();
        let mut selected: Vec<Scored> = Vec::new();
        for (new, &old) in live.iter().enumerate() {
            for layer in 0..=self.levels[old as usize] {
                let neighbors = self.neighbors(old, layer);
                candidates.clear();
                if neighbors.iter().all(|&n| !self.is_deleted(n)) {
                    candidates.extend_from_slice(neighbors);
                    selected.clear();
                    selected.extend(candidates.iter().map(|&node| Scored {
                        distance: 0.0,
                        node,
                    }));
                } else {
                    for &neighbor in neighbors {
                        if !self.is_deleted(neighbor) {
                            candidates.push(neighbor);
                            continue;
                        }
                        candidates.extend(
                            self.neighbors(neighbor, layer)
                                .iter()
                                .filter(|&&n| n != old && !self.is_deleted(n)),
                        );
                    }
                    candidates.sort_unstable();
                    candidates.dedup();
                    let space = space.with_query(self.row(old));
                    scored.clear();
                    scored.extend(candidates.iter().map(|&node| Scored {
                        distance: space.distance(node),
                        node,
                    }));
                    scored.sort_unstable();
                    let max = if layer == 0 { self.m0 } else { self.m };
                    select_neighbors(&space, &scored, max, &mut selected);
                }
                let range = block_range(self.m, &upper_offsets, new as u32, layer);
                let block = if layer == 0 {
                    &mut links0[range]
                } else {
                    &mut upper_links[range]
                };
                block[0] = selected.len() as u32;
                for (slot, neighbor) in block[1..].iter_mut().zip(&selected) {
                    *slot = old_to_new[neighbor.node as usize];
                }
            }
        }

        // The entry point: the old one if it lives, else a live node of the highest level.
        let entry = if count == 0 {
            NO_NODE
        } else if !self.is_deleted(self.entry) {
            old_to_new[self.entry as usize]
        } else {
            let top = levels.iter().copied().max().unwrap_or(0);
            levels.iter().position(|&level| level == top).unwrap_or(0) as u32
        };
        let top_level = levels.iter().copied().max().unwrap_or(0);

        let mut vectors = Store::<f32>::zeroed(count * self.vector_stride);
        for (row, &old) in vectors.chunks_exact_mut(self.vector_stride).zip(&live) {
            let start = old as usize * self.vector_stride;
            row.copy_from_slice(&self.vectors[start..start + self.vector_stride]);
        }
        let codes = if self.quantizer.is_some() {
            let mut codes = Store::<i8>::zeroed(count * self.code_stride);
            for (row, &old) in codes.chunks_exact_mut(self.code_stride).zip(&live) {
                let start = old as usize * self.code_stride;
                row.copy_from_slice(&self.codes[start..start + self.code_stride]);
            }
            codes
        } else {
            Store::<i8>::zeroed(0)
        };
        let labels: Vec<u64> = live.iter().map(|&old| self.labels[old as usize]).collect();

        let index = Hnsw {
            metric: self.metric,
            dim: self.dim,
            vector_stride: self.vector_stride,
            code_stride: self.code_stride,
            m: self.m,
            m0: self.m0,
            ef_construction: self.ef_construction,
            seed: self.seed,
            count,
            entry,
            top_level,
            vectors: Store::from_avec(vectors),
            external: false,
            codes_only: false,
            quantizer: self.quantizer.clone(),
            codes: Store::from_avec(codes),
            labels: Store::owned(&labels),
            levels: Store::owned(&levels),
            upper_offsets: Store::owned(&upper_offsets),
            links0: Store::from_avec(links0),
            upper_links: Store::from_avec(upper_links),
            tombstones: NodeSet::with_capacity(count),
            checksums: None,
            kernels: self.kernels,
        };
        Ok(Compacted { index, old_to_new })
    }
}

//! Routing: which LEU owns a point.
//!
//! A point belongs to one of a fixed number of **VNodes** (virtual nodes, 4,096 by default):
//! `vnode = splitmix64(point id) mod vnodes`. VNodes are placed on LEUs by a **Ketama
//! consistent-hash ring**:
//!
//! - every LEU `l` puts [`RING_POINTS_PER_LEU`] points on a ring of `u64` positions, point
//!   `r` at `splitmix64(RING_SALT ^ (l << 32 | r))`;
//! - VNode `v` sits at the evenly spaced position `v × (2⁶⁴ / vnodes)` (evenly spaced rather
//!   than hashed, so that how many VNodes an LEU gets follows its share of the ring, without
//!   the extra noise of hashing the samples) and belongs to the LEU of the first ring point
//!   at or after it, wrapping around; ties between ring points go to the lower LEU.
//!
//! The placement is a pure function of the LEU count and the VNode count, the same on every
//! machine and in every version: a test pins its values. When an LEU is added, the only
//! VNodes that move are those the new LEU takes (about `vnodes / (n + 1)`); when the last one
//! is removed, only its VNodes move. The layout is documented in docs/DATAPLANE.md.

/// The default number of VNodes. Each LEU's share of the VNodes is a sample of its share of
/// the ring, so more VNodes balance better: on 2 to 16 LEUs the busiest LEU gets at most
/// 1.11 × the mean with 4,096 VNodes, against 1.24 × with 1,024 and 1.38 × with 256.
pub const VNODES_DEFAULT: u16 = 4096;

/// Ring points per LEU: enough that each LEU's share of the ring is within a few percent of
/// `1 / n` (the spread of a share is about `1 / √points`).
pub const RING_POINTS_PER_LEU: u32 = 1024;

/// Mixed into every ring point's position, so that the ring is not the identity of the
/// VNode hash.
const RING_SALT: u64 = 0x564F_5254_4558_5247; // "VORTEXRG"

/// The most LEUs a ring places VNodes on.
pub const LEUS_MAX: usize = 4096;

/// SplitMix64's finaliser: a fixed bijection on `u64` that spreads nearby inputs apart.
pub fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A placement of VNodes on LEUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// The owner LEU of each VNode.
    owners: Vec<u16>,
    leus: usize,
}

/// A ring that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// No LEU, or more than [`LEUS_MAX`].
    #[error("a ring places VNodes on 1 to {LEUS_MAX} LEUs, not {0}")]
    LeuCount(usize),
    /// Fewer VNodes than LEUs would leave an LEU without data.
    #[error("{vnodes} VNodes cannot cover {leus} LEUs: give at least one VNode per LEU")]
    TooFewVnodes {
        /// VNodes asked for.
        vnodes: u16,
        /// LEUs.
        leus: usize,
    },
}

impl Ring {
    /// The Ketama placement of `vnodes` VNodes on `leus` LEUs.
    pub fn new(leus: usize, vnodes: u16) -> Result<Ring, RingError> {
        if leus == 0 || leus > LEUS_MAX {
            return Err(RingError::LeuCount(leus));
        }
        if usize::from(vnodes) < leus {
            return Err(RingError::TooFewVnodes { vnodes, leus });
        }
        let mut points: Vec<(u64, u16)> = (0..leus as u64)
            .flat_map(|leu| {
                (0..u64::from(RING_POINTS_PER_LEU))
                    .map(move |replica| (splitmix64(RING_SALT ^ (leu << 32 | replica)), leu as u16))
            })
            .collect();
        points.sort_unstable();
        let spacing = (1u128 << 64) / u128::from(vnodes);
        let owners = (0..u128::from(vnodes))
            .map(|vnode| {
                let position = (vnode * spacing) as u64;
                let at = points.partition_point(|&(point, _)| point < position);
                points[at % points.len()].1
            })
            .collect();
        Ok(Ring { owners, leus })
    }

    /// The number of VNodes.
    pub fn vnodes(&self) -> u16 {
        self.owners.len() as u16
    }

    /// The number of LEUs.
    pub fn leus(&self) -> usize {
        self.leus
    }

    /// The VNode of `point`.
    pub fn vnode_of(&self, point: u64) -> u16 {
        (splitmix64(point) % self.owners.len() as u64) as u16
    }

    /// The LEU that owns `vnode` (VNodes past the count wrap around).
    pub fn owner(&self, vnode: u16) -> usize {
        usize::from(self.owners[usize::from(vnode) % self.owners.len()])
    }

    /// The LEU that owns `point`.
    pub fn leu_of(&self, point: u64) -> usize {
        self.owner(self.vnode_of(point))
    }

    /// The VNodes each LEU owns.
    pub fn vnode_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.leus];
        for &owner in &self.owners {
            counts[usize::from(owner)] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placement_is_pinned() {
        // A change here moves data between LEUs on upgrade: it must be deliberate.
        let ring = Ring::new(4, VNODES_DEFAULT).unwrap();
        let first: Vec<usize> = (0..16).map(|vnode| ring.owner(vnode)).collect();
        assert_eq!(first, PINNED_FIRST_16_OF_4);
        assert_eq!(ring.vnode_counts(), PINNED_COUNTS_OF_4);
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(ring.vnode_of(42), (splitmix64(42) % 4096) as u16);
    }

    // Also what an independent re-implementation (Python, from the module docs) computes.
    const PINNED_FIRST_16_OF_4: [usize; 16] = [0, 2, 2, 2, 2, 2, 3, 3, 3, 2, 2, 3, 3, 3, 3, 3];
    const PINNED_COUNTS_OF_4: [usize; 4] = [1069, 1006, 1006, 1015];

    /// How far a count may stray from `mean`: the ring shares' spread (a few percent) and
    /// the VNodes' sampling noise (about √mean), generously.
    fn slack(mean: f64) -> f64 {
        0.12 * mean + 4.0 * mean.sqrt() + 1.0
    }

    #[test]
    fn every_leu_gets_close_to_its_share() {
        for leus in 1..=32usize {
            let ring = Ring::new(leus, VNODES_DEFAULT).unwrap();
            let counts = ring.vnode_counts();
            assert_eq!(counts.iter().sum::<usize>(), usize::from(VNODES_DEFAULT));
            let mean = f64::from(VNODES_DEFAULT) / leus as f64;
            for &count in &counts {
                assert!(
                    (count as f64 - mean).abs() <= slack(mean),
                    "{leus} LEUs: counts {counts:?} stray from the mean {mean:.1}"
                );
            }
            if (2..=16).contains(&leus) {
                let high = *counts.iter().max().unwrap() as f64;
                assert!(
                    high <= mean * 1.12,
                    "{leus} LEUs: busiest {high} of {mean:.1}"
                );
            }
        }
    }

    #[test]
    fn adding_an_leu_moves_only_what_it_takes_and_removing_only_what_it_had() {
        for leus in 1..32usize {
            let before = Ring::new(leus, VNODES_DEFAULT).unwrap();
            let after = Ring::new(leus + 1, VNODES_DEFAULT).unwrap();
            let mut moved = 0;
            for vnode in 0..VNODES_DEFAULT {
                if before.owner(vnode) != after.owner(vnode) {
                    assert_eq!(
                        after.owner(vnode),
                        leus,
                        "vnode {vnode} moved between old LEUs"
                    );
                    moved += 1;
                }
            }
            let share = f64::from(VNODES_DEFAULT) / (leus + 1) as f64;
            assert!(
                (moved as f64 - share).abs() <= slack(share),
                "{leus} → {}: {moved} VNodes moved, about {share:.1} expected",
                leus + 1
            );
            // Removing the last LEU is the same change backwards: only its VNodes move.
            assert_eq!(moved, after.vnode_counts()[leus]);
        }
    }

    #[test]
    fn points_spread_over_vnodes_and_bad_rings_are_refused() {
        let ring = Ring::new(8, VNODES_DEFAULT).unwrap();
        let mut per_leu = [0usize; 8];
        for point in 0..100_000u64 {
            per_leu[ring.leu_of(point)] += 1;
        }
        let counts = ring.vnode_counts();
        for (leu, &points) in per_leu.iter().enumerate() {
            let expected = 100_000.0 * counts[leu] as f64 / f64::from(VNODES_DEFAULT);
            assert!(
                (points as f64 - expected).abs() < expected * 0.1,
                "LEU {leu}: {points} points, {expected:.0} expected"
            );
        }
        assert_eq!(Ring::new(0, 256), Err(RingError::LeuCount(0)));
        assert_eq!(
            Ring::new(300, 256),
            Err(RingError::TooFewVnodes {
                vnodes: 256,
                leus: 300
            })
        );
        assert!(Ring::new(LEUS_MAX + 1, u16::MAX).is_err());
        assert_eq!(Ring::new(3, 256).unwrap(), Ring::new(3, 256).unwrap());
    }
}

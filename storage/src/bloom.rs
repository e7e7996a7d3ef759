//! Bloom filters for point lookups in SSTables (issue #6): "is this key possibly here?",
//! so that a get skips the tables that certainly do not hold it.
//!
//! `bits_per_key` bits per key and `k = round(bits_per_key × ln 2)` probes give a false
//! positive rate of about 0.6^bits_per_key (1 % at 10 bits per key). Probes use double
//! hashing (Kirsch and Mitzenmacher): `h1 + i × h2` over one 64-bit hash of the key.
//!
//! Encoding: `k` (1 byte, 1 to 30), then the bit array, little-endian bit order within each
//! byte. The SSTable's block checksum covers it; [`BloomFilter::decode`] still refuses
//! anything malformed rather than trusting it.

use crate::memtable::Key;

/// The most probes a filter may use.
const PROBES_MAX: u8 = 30;

/// A built or decoded filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    probes: u8,
    bits: Vec<u8>,
}

/// Why bytes are not a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BloomError {
    /// No bytes, or no bit array.
    #[error("bloom filter too short")]
    TooShort,
    /// A probe count outside 1..=30.
    #[error("bloom filter with {0} probes")]
    BadProbes(u8),
}

/// The 64-bit hash a key is probed with (SplitMix64's finalizer over both fields).
fn key_hash(key: &Key) -> u64 {
    let mut z = u64::from(key.collection).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ key.point;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl BloomFilter {
    /// A filter over `keys` with `bits_per_key` bits each (at least 64 bits in all).
    pub fn build<'a>(keys: impl ExactSizeIterator<Item = &'a Key>, bits_per_key: usize) -> Self {
        let bits_per_key = bits_per_key.clamp(1, 64);
        let probes = ((bits_per_key as f64) * std::f64::consts::LN_2).round() as u8;
        let bit_count = (keys.len() * bits_per_key).max(64);
        let mut filter = BloomFilter {
            probes: probes.clamp(1, PROBES_MAX),
            bits: vec![0u8; bit_count.div_ceil(8)],
        };
        for key in keys {
            let bit_count = filter.bit_count();
            for bit in probe_bits(key, filter.probes, bit_count) {
                filter.bits[bit / 8] |= 1 << (bit % 8);
            }
        }
        filter
    }

    /// Whether `key` may be in the set (`false`: it certainly is not).
    pub fn may_contain(&self, key: &Key) -> bool {
        let bit_count = self.bit_count();
        probe_bits(key, self.probes, bit_count)
            .all(|bit| self.bits[bit / 8] & (1 << (bit % 8)) != 0)
    }

    /// The encoded filter.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(1 + self.bits.len());
        bytes.push(self.probes);
        bytes.extend_from_slice(&self.bits);
        bytes
    }

    /// Decodes a filter, refusing malformed bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, BloomError> {
        let [probes, bits @ ..] = bytes else {
            return Err(BloomError::TooShort);
        };
        if bits.is_empty() {
            return Err(BloomError::TooShort);
        }
        if !(1..=PROBES_MAX).contains(probes) {
            return Err(BloomError::BadProbes(*probes));
        }
        Ok(BloomFilter {
            probes: *probes,
            bits: bits.to_vec(),
        })
    }

    fn bit_count(&self) -> usize {
        self.bits.len() * 8
    }
}

/// The bits `key` sets or tests.
fn probe_bits(key: &Key, probes: u8, bit_count: usize) -> impl Iterator<Item = usize> {
    let hash = key_hash(key);
    let first = hash as u32 as u64;
    // Odd, so that successive probes do not cycle early on power-of-two sizes.
    let step = (hash >> 32) | 1;
    (0..u64::from(probes))
        .map(move |i| (first.wrapping_add(i.wrapping_mul(step)) % bit_count as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(count: u64, collection: u32) -> Vec<Key> {
        (0..count)
            .map(|point| Key {
                collection,
                point: point.wrapping_mul(0x2545_F491_4F6C_DD1D),
            })
            .collect()
    }

    #[test]
    fn no_false_negatives_and_about_one_percent_false_positives_at_ten_bits() {
        let inside = keys(20_000, 1);
        let filter = BloomFilter::build(inside.iter(), 10);
        assert!(inside.iter().all(|key| filter.may_contain(key)));
        let outside = keys(100_000, 2);
        let false_positives = outside.iter().filter(|key| filter.may_contain(key)).count();
        let rate = false_positives as f64 / outside.len() as f64;
        println!("false positive rate at 10 bits/key: {rate:.4}");
        assert!(rate < 0.02, "{rate}");
    }

    #[test]
    fn round_trips_and_refuses_malformed_bytes() {
        let filter = BloomFilter::build(keys(100, 3).iter(), 10);
        assert_eq!(BloomFilter::decode(&filter.encode()), Ok(filter));
        assert_eq!(BloomFilter::decode(&[]), Err(BloomError::TooShort));
        assert_eq!(BloomFilter::decode(&[7]), Err(BloomError::TooShort));
        assert_eq!(BloomFilter::decode(&[0, 1]), Err(BloomError::BadProbes(0)));
        assert_eq!(
            BloomFilter::decode(&[31, 1]),
            Err(BloomError::BadProbes(31))
        );
        // An empty set's filter rejects (almost) everything.
        let empty = BloomFilter::build([].iter(), 10);
        assert!(!empty.may_contain(&Key {
            collection: 1,
            point: 1
        }));
    }

    proptest! {
        #[test]
        fn every_key_built_in_is_found(points in proptest::collection::vec(any::<u64>(), 0..500), bits in 1usize..20) {
            let set: Vec<Key> = points.iter().map(|&point| Key { collection: 9, point }).collect();
            let filter = BloomFilter::build(set.iter(), bits);
            let decoded = BloomFilter::decode(&filter.encode()).unwrap();
            for key in &set {
                prop_assert!(decoded.may_contain(key));
            }
        }

        #[test]
        fn arbitrary_bytes_decode_or_refuse_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(filter) = BloomFilter::decode(&bytes) {
                let _ = filter.may_contain(&Key { collection: 0, point: 0 });
            }
        }
    }
}

//! The reactor loop's iteration times: a fixed-size log-linear histogram (eight buckets per
//! power of two, so a percentile is within 12.5 % of the truth), cheap enough to record on
//! every pass. The loop records the time it spent working in each pass (from the return of
//! its wait to the start of the next one): under load, where it hardly waits, that is the
//! loop's jitter, and every request read in a pass waits for the pass to end.

/// Sub-buckets per power of two.
const SUB: u32 = 8;
const BUCKETS: usize = 64 * SUB as usize;

/// Iteration times in nanoseconds.
#[derive(Debug, Clone)]
pub struct LoopTimes {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max_ns: u64,
}

impl Default for LoopTimes {
    fn default() -> Self {
        LoopTimes {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max_ns: 0,
        }
    }
}

fn bucket(ns: u64) -> usize {
    if ns < u64::from(SUB) {
        return ns as usize;
    }
    let octave = 63 - ns.leading_zeros(); // ≥ 3
    let sub = (ns >> (octave - 3)) & u64::from(SUB - 1);
    ((octave - 2) * SUB) as usize + sub as usize
}

/// The largest value in `index`'s bucket.
fn upper(index: usize) -> u64 {
    if index < SUB as usize {
        return index as u64;
    }
    let octave = index as u32 / SUB + 2;
    let sub = index as u64 % u64::from(SUB);
    ((u64::from(SUB) + sub + 1) << (octave - 3)) - 1
}

impl LoopTimes {
    /// Records one iteration of `ns` nanoseconds.
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket(ns).min(BUCKETS - 1)] += 1;
        self.total += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    /// Iterations recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The non-empty buckets: (the largest time in the bucket, iterations), shortest
    /// first. Two readings subtract bucket by bucket into the histogram of the time between
    /// them.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .map(|(index, &count)| (upper(index), count))
    }

    /// The longest iteration.
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// The iteration time at quantile `q` (0 to 1): the top of its bucket, at most the
    /// maximum. 0 when nothing was recorded.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper(index).min(self.max_ns);
            }
        }
        self.max_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_an_eighth() {
        let mut last = 0;
        for ns in (0..100_000u64).chain([1 << 40, u64::MAX / 2]) {
            let index = bucket(ns);
            assert!(index >= last, "{ns}");
            last = index;
            assert!(
                upper(index) >= ns,
                "{ns} above its bucket's top {}",
                upper(index)
            );
            assert!(
                (upper(index) - ns) as f64 <= ns as f64 / 8.0 + 1.0,
                "{ns}: bucket top {} too far",
                upper(index)
            );
        }
    }

    #[test]
    fn quantiles_come_from_the_recorded_times() {
        let mut times = LoopTimes::default();
        assert_eq!(times.quantile_ns(0.99), 0);
        for ns in 1..=1000u64 {
            times.record(ns * 1000);
        }
        let p50 = times.quantile_ns(0.5);
        assert!((500_000..=562_500).contains(&p50), "{p50}");
        let p99 = times.quantile_ns(0.99);
        assert!((990_000..=1_000_000).contains(&p99), "{p99}");
        assert_eq!(times.quantile_ns(1.0), 1_000_000);
        assert_eq!(times.max_ns(), 1_000_000);
        assert_eq!(times.count(), 1000);
        let buckets: Vec<(u64, u64)> = times.buckets().collect();
        assert_eq!(buckets.iter().map(|&(_, n)| n).sum::<u64>(), 1000);
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(buckets.last().is_some_and(|&(top, _)| top >= 1_000_000));
    }
}

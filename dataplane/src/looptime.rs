//! The reactor loop's iteration times, and the server's request times: an HDR histogram
//! (`hdrhistogram`, one significant digit: a percentile is within 10 % of the truth, about
//! sixteen buckets per power of two), allocated once and cheap enough to record on every
//! pass. The loop records the time it spent working in each pass (from the return of its
//! wait to the start of the next one): under load, where it hardly waits, that is the loop's
//! jitter, and every request read in a pass waits for the pass to end.

use hdrhistogram::Histogram;

/// The longest time recorded as itself (an hour); longer ones count as this.
const HIGHEST_NS: u64 = 3_600_000_000_000;
/// Significant decimal digits kept per value.
const SIGNIFICANT_DIGITS: u8 = 1;

/// Iteration times in nanoseconds.
#[derive(Debug, Clone)]
pub struct LoopTimes {
    histogram: Histogram<u64>,
}

impl Default for LoopTimes {
    fn default() -> Self {
        LoopTimes {
            histogram: Histogram::new_with_bounds(1, HIGHEST_NS, SIGNIFICANT_DIGITS)
                .expect("constant bounds that hdrhistogram accepts"),
        }
    }
}

impl LoopTimes {
    /// Records one iteration of `ns` nanoseconds (0 counts as 1; past an hour, as an hour).
    pub fn record(&mut self, ns: u64) {
        self.histogram.saturating_record(ns.max(1));
    }

    /// Iterations recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The non-empty buckets: (the largest time in the bucket, iterations), shortest
    /// first. Two readings subtract bucket by bucket into the histogram of the time between
    /// them.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.histogram
            .iter_recorded()
            .map(|value| (value.value_iterated_to(), value.count_at_value()))
    }

    /// The longest iteration (to the histogram's precision).
    pub fn max_ns(&self) -> u64 {
        self.histogram.max()
    }

    /// The iteration time at quantile `q` (0 to 1): the top of its bucket, at most the
    /// maximum. 0 when nothing was recorded.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        self.histogram
            .value_at_quantile(q.clamp(0.0, 1.0))
            .min(self.max_ns())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percentile_is_within_a_tenth_of_the_recorded_time() {
        for ns in (1..100_000u64).step_by(7).chain([1 << 40, HIGHEST_NS]) {
            let mut times = LoopTimes::default();
            times.record(ns);
            let seen = times.quantile_ns(0.5);
            assert!(seen >= ns || seen == times.max_ns(), "{ns}: {seen}");
            assert!(
                seen.abs_diff(ns) as f64 <= ns as f64 / 10.0 + 1.0,
                "{ns}: {seen} too far"
            );
        }
        let mut times = LoopTimes::default();
        times.record(u64::MAX);
        times.record(0);
        assert_eq!(times.count(), 2);
        assert!(times.max_ns() >= HIGHEST_NS - HIGHEST_NS / 10);
    }

    #[test]
    fn quantiles_come_from_the_recorded_times() {
        let mut times = LoopTimes::default();
        assert_eq!(times.quantile_ns(0.99), 0);
        for ns in 1..=1000u64 {
            times.record(ns * 1000);
        }
        let p50 = times.quantile_ns(0.5);
        assert!((500_000..=550_000).contains(&p50), "{p50}");
        let p99 = times.quantile_ns(0.99);
        assert!((990_000..=1_100_000).contains(&p99), "{p99}");
        assert_eq!(times.quantile_ns(1.0), times.max_ns());
        assert!((1_000_000..=1_100_000).contains(&times.max_ns()));
        assert_eq!(times.count(), 1000);
        let buckets: Vec<(u64, u64)> = times.buckets().collect();
        assert_eq!(buckets.iter().map(|&(_, n)| n).sum::<u64>(), 1000);
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(buckets.last().is_some_and(|&(top, _)| top >= 1_000_000));
        // About sixteen buckets per power of two: ten powers of two here.
        assert!(buckets.len() <= 10 * 16 + 16, "{} buckets", buckets.len());
    }
}

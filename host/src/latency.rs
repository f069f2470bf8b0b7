//! Call times in constant memory.
//!
//! A scheduler host makes a decision call for every event, for as long as
//! it runs: keeping every call's time would grow without bound in a
//! service. A log-linear histogram (as HdrHistogram does) keeps the
//! percentiles operators and papers quote to within 1.6% in a few
//! kilobytes, whatever the number of calls.

/// Sub-buckets per power of two: 2^6 = 64, so a bucket is at most 1/64
/// (1.6%) of its values wide.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;

/// A distribution of durations in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    max: u64,
    last: Option<u64>,
}

fn bucket(nanos: u64) -> usize {
    if nanos < SUB {
        return nanos as usize;
    }
    let exp = 63 - nanos.leading_zeros(); // >= SUB_BITS
    let shift = exp - SUB_BITS;
    let sub = (nanos >> shift) & (SUB - 1);
    (((shift + 1) as u64) << SUB_BITS | sub) as usize
}

/// The smallest value in `bucket`, and the bucket's width.
fn bounds(bucket: usize) -> (u64, u64) {
    let bucket = bucket as u64;
    if bucket < SUB {
        return (bucket, 1);
    }
    let shift = (bucket >> SUB_BITS) - 1;
    let sub = bucket & (SUB - 1);
    ((SUB + sub) << shift, 1 << shift)
}

impl Latencies {
    /// Count one call that took `nanos`.
    pub fn record(&mut self, nanos: u64) {
        let b = bucket(nanos);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.count += 1;
        self.sum += u128::from(nanos);
        self.max = self.max.max(nanos);
        self.last = Some(nanos);
    }

    /// Calls counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The most recent call's time (exact), for a caller timing one call.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    /// The longest call (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean call time in nanoseconds (exact); 0 with no calls.
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Total time in all calls, in nanoseconds (exact).
    pub fn sum(&self) -> u128 {
        self.sum
    }

    /// The `q` quantile (0..=1) in nanoseconds, by nearest rank: exact below
    /// 64 ns, otherwise the middle of its bucket (within 0.8%), never above
    /// the maximum. 0 with no calls.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bounds(b);
                let mid = low as f64 + (width as f64 - 1.0) / 2.0;
                return mid.min(self.max as f64);
            }
        }
        self.max as f64
    }

    /// Buckets with calls in them, as (upper bound in nanoseconds, calls
    /// at or below it): the cumulative form Prometheus histograms use.
    pub fn cumulative(&self) -> Vec<(u64, u64)> {
        let mut seen = 0;
        self.counts
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(b, &n)| {
                seen += n;
                let (low, width) = bounds(b);
                (low + (width - 1), seen)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut next = 0u64;
        for b in 0..bucket(u64::MAX) + 1 {
            let (low, width) = bounds(b);
            assert_eq!(low, next, "bucket {b}");
            assert_eq!(bucket(low), b);
            assert_eq!(bucket(low + (width - 1)), b);
            next = low.wrapping_add(width);
        }
        assert_eq!(next, 0, "the last bucket ends at u64::MAX");
    }

    #[test]
    fn quantiles_are_exact_when_small_and_close_when_large() {
        let mut l = Latencies::default();
        for n in 1..=50 {
            l.record(n);
        }
        assert_eq!(l.quantile(0.5), 25.0);
        assert_eq!(l.quantile(1.0), 50.0);
        assert_eq!(l.mean(), 25.5);

        let mut l = Latencies::default();
        for n in 1..=100_000u64 {
            l.record(n * 1000);
        }
        for (q, exact) in [(0.5, 50_000_000.0), (0.99, 99_000_000.0), (0.999, 99_900_000.0)] {
            let got = l.quantile(q);
            assert!((got - exact).abs() / exact < 0.008, "q{q}: {got} vs {exact}");
        }
        assert_eq!(l.quantile(1.0), 100_000_000.0, "capped at the exact maximum");
        assert_eq!(l.count(), 100_000);
        assert_eq!(l.last(), Some(100_000_000));
    }

    #[test]
    fn memory_stays_small() {
        let mut l = Latencies::default();
        for shift in 0..64 {
            l.record(1u64 << shift);
        }
        l.record(u64::MAX);
        assert!(l.counts.len() <= 3776, "{} buckets", l.counts.len());
        let cumulative = l.cumulative();
        assert_eq!(cumulative.last(), Some(&(u64::MAX, 65)));
        assert!(cumulative.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
    }

    #[test]
    fn empty_is_zero() {
        let l = Latencies::default();
        assert_eq!(l.quantile(0.5), 0.0);
        assert_eq!(l.mean(), 0.0);
        assert_eq!(l.last(), None);
    }
}

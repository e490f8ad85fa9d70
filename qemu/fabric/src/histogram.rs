//! A log-linear histogram for latencies: exact below 64 ns, then 64 buckets per power of
//! two, so a reported percentile is within 1/64 (1.6 %) of the true value. 30 KiB once used.

/// Sub-buckets per power of two, as a power of two.
const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
const BUCKETS: usize = SUB_BUCKETS + (64 - SUB_BUCKET_BITS as usize) * SUB_BUCKETS;

/// Counts of `u64` samples (nanoseconds) in log-linear buckets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Empty until the first sample.
    counts: Vec<u64>,
    samples: u64,
    min: u64,
    max: u64,
    sum: u128,
}

/// Percentiles of a [`Histogram`], in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Number of samples.
    pub samples: u64,
    /// Smallest sample (exact).
    pub min_ns: u64,
    /// Median.
    pub median_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest sample (exact).
    pub max_ns: u64,
    /// Mean (exact).
    pub mean_ns: u64,
}

fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS as u64 {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BUCKET_BITS;
    let sub_bucket = (value >> shift) as usize - SUB_BUCKETS;
    SUB_BUCKETS + shift as usize * SUB_BUCKETS + sub_bucket
}

/// The smallest and largest value of a bucket.
fn bucket_range(bucket: usize) -> (u64, u64) {
    if bucket < SUB_BUCKETS {
        return (bucket as u64, bucket as u64);
    }
    let shift = (bucket - SUB_BUCKETS) / SUB_BUCKETS;
    let sub_bucket = (bucket - SUB_BUCKETS) % SUB_BUCKETS;
    let low = ((SUB_BUCKETS + sub_bucket) as u64) << shift;
    (low, low + ((1u64 << shift) - 1))
}

impl Histogram {
    /// An empty histogram (allocates nothing until the first sample).
    pub fn new() -> Histogram {
        Histogram::default()
    }

    /// Adds one sample.
    pub fn record(&mut self, value: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
            self.min = value;
            self.max = value;
        }
        self.counts[bucket_of(value)] += 1;
        self.samples += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += u128::from(value);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.samples == 0 {
            return;
        }
        if self.samples == 0 {
            *self = other.clone();
            return;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.samples += other.samples;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// Number of samples.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The value below which a fraction `quantile` (0 to 1) of the samples lie: the middle
    /// of the bucket holding that rank, clamped to the exact minimum and maximum.
    pub fn quantile(&self, quantile: f64) -> Option<u64> {
        if self.samples == 0 {
            return None;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * self.samples as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (bucket, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, high) = bucket_range(bucket);
                let middle = low + (high - low) / 2;
                return Some(middle.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// Minimum, median, 99th percentile, maximum and mean; `None` without samples.
    pub fn summary(&self) -> Option<LatencySummary> {
        Some(LatencySummary {
            samples: self.samples,
            min_ns: self.min,
            median_ns: self.quantile(0.5)?,
            p99_ns: self.quantile(0.99)?,
            max_ns: self.max,
            mean_ns: u64::try_from(self.sum / u128::from(self.samples)).unwrap_or(u64::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        for value in (0..5000).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let bucket = bucket_of(value);
            let (low, high) = bucket_range(bucket);
            assert!(low <= value && value <= high, "{value} in bucket {bucket}");
            assert!(bucket < BUCKETS);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_are_within_bucket_precision() {
        let mut histogram = Histogram::new();
        assert_eq!(histogram.summary(), None);
        for value in 1..=10_000u64 {
            histogram.record(value * 1000);
        }
        let summary = histogram.summary().unwrap();
        assert_eq!(summary.samples, 10_000);
        assert_eq!(summary.min_ns, 1000);
        assert_eq!(summary.max_ns, 10_000_000);
        assert_eq!(summary.mean_ns, 5_000_500);
        let close = |value: u64, expected: u64| value.abs_diff(expected) * 64 <= expected;
        assert!(close(summary.median_ns, 5_000_000), "{summary:?}");
        assert!(close(summary.p99_ns, 9_900_000), "{summary:?}");

        let mut other = Histogram::new();
        other.record(20_000_000);
        histogram.merge(&other);
        assert_eq!(histogram.samples(), 10_001);
        assert_eq!(histogram.summary().unwrap().max_ns, 20_000_000);
    }
}

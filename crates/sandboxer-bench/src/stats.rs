//! Percentiles of latency samples and the units they are shown in.
use std::time::Duration;

/// Sorted latency samples.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Take `samples` in any order.
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Samples(samples)
    }

    /// The `p`-th percentile (nearest rank); zero when there are no samples.
    pub fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    /// Every sample, in order.
    pub fn all(&self) -> Vec<Duration> {
        self.0.clone()
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.pct(50.0)
    }

    /// The largest sample.
    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    /// `p50 / p95 / p99` in one cell.
    pub fn triple(&self) -> String {
        format!(
            "{} / {} / {}",
            ms(self.pct(50.0)),
            ms(self.pct(95.0)),
            ms(self.pct(99.0))
        )
    }
}

/// A duration in milliseconds (microseconds below one millisecond).
pub fn ms(d: Duration) -> String {
    let millis = d.as_secs_f64() * 1e3;
    if millis < 1.0 {
        format!("{:.0} µs", millis * 1e3)
    } else if millis < 100.0 {
        format!("{millis:.2} ms")
    } else {
        format!("{millis:.0} ms")
    }
}

/// Kibibytes as MiB.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Samples::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(s.p50(), Duration::from_millis(50));
        assert_eq!(s.pct(99.0), Duration::from_millis(99));
        assert_eq!(s.pct(100.0), Duration::from_millis(100));
        assert_eq!(s.max(), Duration::from_millis(100));
        assert_eq!(Samples::default().p50(), Duration::ZERO);
        assert_eq!(
            Samples::new(vec![Duration::from_millis(7)]).pct(99.0),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn units() {
        assert_eq!(ms(Duration::from_micros(250)), "250 µs");
        assert_eq!(ms(Duration::from_micros(12_345)), "12.35 ms");
        assert_eq!(ms(Duration::from_millis(250)), "250 ms");
        assert_eq!(mib(40 * 1024), "40.0 MiB");
    }
}

//! Limits on the label sets clients send (remote write in, gRPC ingest), so that one client
//! cannot make the index and every answer carry megabytes per series.

use kappie_storage::Labels;

/// Most labels per series and longest label names and values, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelLimits {
    pub max_labels: usize,
    pub max_name_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for LabelLimits {
    fn default() -> Self {
        LabelLimits {
            max_labels: 64,
            max_name_bytes: 1024,
            max_value_bytes: 4096,
        }
    }
}

impl LabelLimits {
    /// Why `labels` is over a limit (with the flag to raise), or `Ok`.
    pub fn check(&self, labels: &Labels) -> Result<(), String> {
        self.check_iter(
            labels.len(),
            labels.iter().map(|l| (l.name.as_str(), l.value.as_str())),
        )
    }

    /// [`Self::check`] of a label set given as `(name, value)` pairs.
    pub fn check_pairs(&self, pairs: &[(&str, &str)]) -> Result<(), String> {
        self.check_iter(pairs.len(), pairs.iter().copied())
    }

    fn check_iter<'a>(
        &self,
        n: usize,
        pairs: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), String> {
        if n > self.max_labels {
            return Err(format!(
                "{n} labels, more than the limit of {} (--max-labels-per-series)",
                self.max_labels
            ));
        }
        for (name, value) in pairs {
            if name.len() > self.max_name_bytes {
                return Err(format!(
                    "label name of {} bytes, more than the limit of {} (--max-label-name-bytes)",
                    name.len(),
                    self.max_name_bytes
                ));
            }
            if value.len() > self.max_value_bytes {
                return Err(format!(
                    "label {name:?} has a value of {} bytes, more than the limit of {} (--max-label-value-bytes)",
                    value.len(),
                    self.max_value_bytes
                ));
            }
        }
        Ok(())
    }
}

/// Pushes refused because their shipper sent samples faster than
/// `--max-samples-per-shipper-per-second`.
pub static REFUSED_RATE_LIMITED: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// gRPC metadata key on the RESOURCE_EXHAUSTED status of a rate-limited push: how many
/// milliseconds to wait before the batch would be taken. A shipper retries the batch after
/// it (a push refused for any other RESOURCE_EXHAUSTED reason is dropped).
pub const RETRY_AFTER_MS_METADATA: &str = "kappie-retry-after-ms";

/// Samples per second each shipper may push (a GCRA token bucket per shipper id), so that
/// one shipper, buggy or hostile, cannot take the collector's ingest from the others.
pub struct ShipperRateLimit {
    limiter: governor::DefaultKeyedRateLimiter<String>,
    pub per_second: u32,
    burst: std::num::NonZeroU32,
    calls: std::sync::atomic::AtomicU64,
}

impl ShipperRateLimit {
    /// `per_second` samples on average, up to `burst` at once (a batch larger than the
    /// burst is charged as the burst, so every batch can pass); `None` if either is 0
    /// (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<ShipperRateLimit> {
        let rate = std::num::NonZeroU32::new(per_second)?;
        let burst = std::num::NonZeroU32::new(burst)?;
        Some(ShipperRateLimit {
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_second(rate).allow_burst(burst),
            ),
            per_second: rate.get(),
            burst,
            calls: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Takes `samples` from `shipper`'s allowance, or says how long until they are there.
    pub fn check(&self, shipper: &str, samples: usize) -> Result<(), std::time::Duration> {
        use governor::clock::Clock;
        // Forget shippers that have been idle for longer than a full bucket takes to refill,
        // so that made-up shipper ids cannot grow the map without bound.
        if self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % 1024
            == 1023
        {
            self.limiter.retain_recent();
        }
        let n = u32::try_from(samples)
            .ok()
            .and_then(std::num::NonZeroU32::new)
            .map_or(std::num::NonZeroU32::MIN, |n| n.min(self.burst));
        match self.limiter.check_key_n(&shipper.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                REFUSED_RATE_LIMITED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(not_until.wait_time_from(governor::clock::DefaultClock::default().now()))
            }
            // n is at most the burst.
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_refuses_past_the_burst_and_says_when() {
        let l = ShipperRateLimit::new(100, 1000).expect("a limit");
        assert!(l.check("a", 600).is_ok());
        let wait = l.check("a", 600).expect_err("over the burst");
        // 200 samples short at 100/s: about 2 s.
        assert!(
            wait > std::time::Duration::from_millis(1500)
                && wait <= std::time::Duration::from_secs(2),
            "{wait:?}"
        );
        // Another shipper has its own allowance; a batch larger than the burst passes.
        assert!(l.check("b", 5000).is_ok());
        assert!(ShipperRateLimit::new(0, 10).is_none());
    }
}

//! Exponential backoff with full jitter, shared by the S3 fetch and the metadata client. Pure:
//! the caller passes the random number and the time left.
//!
//! Attempt n waits a uniform random time in `[0, min(cap, base * 2^(n-1))]`. Full jitter
//! spreads a fleet that booted at the same instant, so that its retries do not hit S3 or IMDS
//! in waves. The deadline bounds the retries, not a count: a boot whose network comes up late
//! still gets its answer while time is left (the count is only a safety net).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
    /// Time an attempt needs at least; no retry is started with less time left.
    pub min_attempt: Duration,
}

/// Why no further attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Attempts,
    Deadline,
}

impl Backoff {
    /// S3: a GetObject needs a TLS handshake and a round trip to the region.
    pub const S3: Backoff = Backoff {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(5),
        max_attempts: 1000,
        min_attempt: Duration::from_millis(500),
    };

    /// Instance metadata: a link-local service, asked again sooner than S3.
    pub const IMDS: Backoff = Backoff {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(2),
        max_attempts: 1000,
        min_attempt: Duration::ZERO,
    };

    /// The ceiling of the delay after attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }

    /// The delay before the next attempt after attempt `attempt` failed, with `unit` a random
    /// number in [0, 1) and `remaining` the time left before the deadline; or why to stop.
    pub fn next(&self, attempt: u32, remaining: Duration, unit: f64) -> Result<Duration, Stop> {
        if attempt >= self.max_attempts {
            return Err(Stop::Attempts);
        }
        let delay = self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0));
        if delay + self.min_attempt >= remaining {
            return Err(Stop::Deadline);
        }
        Ok(delay)
    }
}

/// `period` spread over `[period / 2, period]` by `unit` (in [0, 1)): for a poll that repeats
/// at a steady pace, where a delay near zero would only add requests.
pub(crate) fn spread(period: Duration, unit: f64) -> Duration {
    period.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grows_caps_and_stops() {
        let b = Backoff::S3;
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(2), Duration::from_millis(400));
        assert_eq!(b.ceiling(5), Duration::from_millis(3200));
        assert_eq!(b.ceiling(6), Duration::from_secs(5));
        assert_eq!(b.ceiling(60), Duration::from_secs(5));
        assert_eq!(Backoff::IMDS.ceiling(5), Duration::from_secs(2));
        let lots = Duration::from_secs(100);
        assert_eq!(b.next(3, lots, 0.5), Ok(Duration::from_millis(400)));
        assert_eq!(b.next(3, lots, 0.0), Ok(Duration::ZERO));
        assert_eq!(b.next(8, lots, 0.5), Ok(Duration::from_millis(2500)));
        assert_eq!(b.next(1000, lots, 0.5), Err(Stop::Attempts));
        assert_eq!(
            b.next(5, Duration::from_millis(1000), 0.9),
            Err(Stop::Deadline)
        );
        assert_eq!(
            b.next(1, Duration::from_millis(100), 0.0),
            Err(Stop::Deadline)
        );
        // No time left at all: no retry, even with a zero delay and no minimum attempt time.
        assert_eq!(
            Backoff::IMDS.next(1, Duration::ZERO, 0.0),
            Err(Stop::Deadline)
        );
        assert_eq!(
            Backoff::IMDS.next(1, Duration::from_millis(50), 0.1),
            Ok(Duration::from_millis(20))
        );
    }

    #[test]
    fn spread_stays_within_half_and_whole() {
        let p = Duration::from_secs(1);
        assert_eq!(spread(p, 0.0), Duration::from_millis(500));
        assert_eq!(spread(p, 0.5), Duration::from_millis(750));
        assert_eq!(spread(p, 7.0), p);
    }

    proptest! {
        #[test]
        fn delay_within_ceiling_and_deadline(attempt in 1u32..2000, rem_ms in 0u64..200_000, unit in 0.0f64..1.0) {
            for b in [Backoff::S3, Backoff::IMDS] {
                let remaining = Duration::from_millis(rem_ms);
                if let Ok(d) = b.next(attempt, remaining, unit) {
                    prop_assert!(d <= b.ceiling(attempt));
                    prop_assert!(d + b.min_attempt < remaining);
                    prop_assert!(attempt < b.max_attempts);
                }
            }
        }
    }
}

//! Request rate limits: token buckets kept in this process's memory, one per
//! key (an API key id, a flow id), refilled continuously at `rate` per
//! second and holding at most `rate` (so a burst of one second's worth
//! passes at once).
//!
//! The buckets are `governor`'s GCRA: one atomic timestamp per key in a
//! sharded map, no lock on the hot path. Keys are only ever ids of API keys
//! and flows that exist (limits are checked after authentication), so the map
//! is bounded by the database; idle keys are dropped every few thousand
//! checks anyway. With several hookflow processes each has its own buckets:
//! the limit is per process.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

type Buckets<C> =
    RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Checks between two sweeps of idle keys.
const SWEEP_EVERY: u32 = 4096;

/// A rate limit per key, or none (`rate` 0).
pub struct RateLimit<C: Clock = DefaultClock> {
    buckets: Option<Buckets<C>>,
    clock: C,
    checks: AtomicU32,
}

impl RateLimit {
    /// `rate` requests per second per key, in bursts of up to `rate`;
    /// 0 means unlimited.
    pub fn per_second(rate: u32) -> Self {
        Self::with_clock(rate, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimit<C> {
    /// As [`RateLimit::per_second`], on `clock` (tests use a fake one).
    pub fn with_clock(rate: u32, clock: C) -> Self {
        let buckets = NonZeroU32::new(rate).map(|r| {
            RateLimiter::new(
                Quota::per_second(r),
                DashMapStateStore::default(),
                clock.clone(),
            )
        });
        Self {
            buckets,
            clock,
            checks: AtomicU32::new(0),
        }
    }

    /// Takes one request from `key`'s bucket; when it is empty, how long
    /// until a request would pass.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // Keys whose bucket has refilled are indistinguishable from new.
            buckets.retain_recent();
            buckets.shrink_to_fit();
        }
        buckets
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Keys currently remembered (for tests of the sweep).
    #[cfg(test)]
    pub fn tracked_keys(&self) -> usize {
        self.buckets.as_ref().map_or(0, |b| b.len())
    }
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The limits of `POST /hooks/{token}`.
pub struct InboundLimits {
    /// Per API key (`inbound_rate_per_key`): one integration cannot starve
    /// the others of a workspace. Signed calls carry no key and only meet
    /// the per-flow limit.
    pub per_key: RateLimit,
    /// Per flow (`inbound_rate_per_flow`): one inbound URL cannot take the
    /// whole server, whoever calls it.
    pub per_flow: RateLimit,
    /// Refused calls from callers who proved nothing, logged per flow
    /// ([`UNAUTHENTICATED_LOG_RATE`] a second): the log shows that a shop
    /// forgets its key without letting anyone who holds only the URL write
    /// to the database at will.
    pub unauthenticated_log: RateLimit,
}

/// Unauthenticated refusals logged per flow and second, in bursts of as many.
pub const UNAUTHENTICATED_LOG_RATE: u32 = 2;

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn a_bucket_holds_one_seconds_worth_and_refills() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::with_clock(4, clock.clone());
        for _ in 0..4 {
            assert_eq!(limit.check("key_a"), Ok(()));
        }
        let wait = limit.check("key_a").unwrap_err();
        assert_eq!(wait, Duration::from_millis(250));
        assert_eq!(limit.check("key_b"), Ok(()), "keys have their own buckets");
        clock.advance(Duration::from_millis(250));
        assert_eq!(limit.check("key_a"), Ok(()));
        assert!(limit.check("key_a").is_err());
    }

    #[test]
    fn zero_means_unlimited() {
        let limit = RateLimit::per_second(0);
        for _ in 0..10_000 {
            assert_eq!(limit.check("k"), Ok(()));
        }
        assert_eq!(limit.tracked_keys(), 0);
    }

    #[test]
    fn idle_keys_are_swept() {
        let clock = FakeRelativeClock::default();
        let limit = RateLimit::with_clock(1000, clock.clone());
        for i in 0..SWEEP_EVERY - 1 {
            let _ = limit.check(&format!("k{i}"));
        }
        assert_eq!(limit.tracked_keys(), (SWEEP_EVERY - 1) as usize);
        clock.advance(Duration::from_secs(5));
        let _ = limit.check("last");
        assert!(limit.tracked_keys() <= 1, "{}", limit.tracked_keys());
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(250)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}

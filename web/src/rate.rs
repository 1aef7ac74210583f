//! The API's rate limits (and the sign-in throttle's): a token bucket per key.

use std::collections::HashMap;
use std::sync::Mutex;

/// Requests per minute, counted per key; the minute is the state clock's.
#[derive(Debug)]
pub struct RateLimiter<K> {
    /// Per key: the tokens left (in millionths) and when they were last counted.
    buckets: Mutex<HashMap<K, (i64, i64)>>,
}

impl<K> Default for RateLimiter<K> {
    fn default() -> Self {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    /// Counts one request; `Err(seconds to wait)` past `per_minute`. A token bucket: a full
    /// minute's worth may come at once, then they come back evenly, so no boundary between
    /// minutes lets twice the limit through.
    pub fn hit(&self, key: K, per_minute: u32, now_us: i64) -> Result<(), u64> {
        const ONE: i64 = 1_000_000;
        let capacity = i64::from(per_minute) * ONE;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Full buckets hold nothing worth keeping.
        buckets.retain(|_, (tokens, at)| {
            *tokens + (now_us - *at).max(0) * i64::from(per_minute) / 60 < capacity
        });
        let (tokens, at) = buckets.entry(key).or_insert((capacity, now_us));
        let refilled = (now_us - *at).max(0) * i64::from(per_minute) / 60;
        *tokens = (*tokens + refilled).min(capacity);
        *at = now_us;
        if *tokens >= ONE {
            *tokens -= ONE;
            Ok(())
        } else {
            let missing = ONE - *tokens;
            let wait_us = missing * 60 / i64::from(per_minute.max(1));
            Err(u64::try_from(wait_us / 1_000_000 + 1).unwrap_or(60))
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::RateLimiter;

    #[test]
    fn a_minutes_worth_then_one_per_interval_and_no_double_at_a_boundary() {
        let limiter = RateLimiter::default();
        let start = 59_900_000; // just before a minute boundary
        for _ in 0..10 {
            assert!(limiter.hit("a", 10, start).is_ok());
        }
        assert!(limiter.hit("a", 10, start).is_err(), "the eleventh at once");
        // Across the boundary, 0.2 s later: still limited (a fixed window would reset here).
        assert!(limiter.hit("a", 10, start + 200_000).is_err());
        // One comes back every 6 s at 10 per minute.
        assert!(limiter.hit("a", 10, start + 6_100_000).is_ok());
        assert!(limiter.hit("a", 10, start + 6_200_000).is_err());
        // Other keys are not affected.
        assert!(limiter.hit("b", 10, start).is_ok());
    }
}

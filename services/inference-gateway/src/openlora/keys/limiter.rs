//! Per-key limits: two token buckets per key, requests per minute and tokens per minute (a
//! request's tokens are its prompt plus the most output it may produce). A bucket holds up to
//! one minute's allowance and refills continuously; a request is admitted when both buckets
//! hold enough, and then takes from both. Integer arithmetic throughout, on a clock the caller
//! passes in (nanoseconds from any fixed origin), so the arithmetic is tested without time
//! passing.
//!
//! Memory is bounded: at most [`MAX_TRACKED_KEYS`] keys are tracked. A full bucket is the same
//! as a fresh one, so when the table is full every key whose buckets have refilled is dropped
//! (idle keys); if none has, the key touched longest ago is.

use std::collections::HashMap;

/// Most keys whose buckets are kept in memory (about 100 bytes each).
pub const MAX_TRACKED_KEYS: usize = 65_536;

const NANOS_PER_MINUTE: u128 = 60_000_000_000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// A key's limits per minute (both at least 1 once resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
}

impl Limits {
    /// The limits a key lives under: its own where set (non-zero), never above `defaults`.
    pub fn resolve(self, defaults: Limits) -> Limits {
        let pick = |own: u64, default: u64| if own == 0 { default } else { own.min(default) };
        Limits {
            requests_per_minute: pick(self.requests_per_minute, defaults.requests_per_minute).max(1),
            tokens_per_minute: pick(self.tokens_per_minute, defaults.tokens_per_minute).max(1),
        }
    }
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The buckets will hold enough in this many whole seconds (at least 1).
    RetryAfter { seconds: u64 },
    /// The request alone needs more tokens than a minute allows: it can never be admitted.
    TooLarge { tokens: u64, tokens_per_minute: u64 },
}

/// One allowance. `level` counts units × nanoseconds-per-minute, so refilling `limit` units a
/// minute adds exactly `limit` per elapsed nanosecond.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    level: u128,
    at_ns: u64,
}

impl Bucket {
    fn full(limit: u64, now_ns: u64) -> Self {
        Self { level: u128::from(limit) * NANOS_PER_MINUTE, at_ns: now_ns }
    }

    /// The level at `now_ns`, refilled and capped at one minute's allowance.
    fn level_at(&self, limit: u64, now_ns: u64) -> u128 {
        let elapsed = u128::from(now_ns.saturating_sub(self.at_ns));
        let capacity = u128::from(limit) * NANOS_PER_MINUTE;
        self.level.saturating_add(elapsed.saturating_mul(u128::from(limit))).min(capacity)
    }

    /// Nanoseconds until `cost` units are available (0: now).
    fn wait_ns(&self, limit: u64, cost: u64, now_ns: u64) -> u128 {
        debug_assert!(limit > 0 && cost <= limit, "a cost above the limit is refused before");
        let needed = u128::from(cost) * NANOS_PER_MINUTE;
        needed.saturating_sub(self.level_at(limit, now_ns)).div_ceil(u128::from(limit))
    }

    fn take(&mut self, limit: u64, cost: u64, now_ns: u64) {
        let level = self.level_at(limit, now_ns);
        self.level = level - u128::from(cost) * NANOS_PER_MINUTE;
        self.at_ns = now_ns;
    }
}

#[derive(Clone, Copy, Debug)]
struct KeyBuckets {
    requests: Bucket,
    tokens: Bucket,
    touched_ns: u64,
}

impl KeyBuckets {
    fn is_full(&self, limits: Limits, now_ns: u64) -> bool {
        let full = |bucket: &Bucket, limit: u64| bucket.level_at(limit, now_ns) == u128::from(limit) * NANOS_PER_MINUTE;
        full(&self.requests, limits.requests_per_minute) && full(&self.tokens, limits.tokens_per_minute)
    }
}

/// The buckets of every key in use.
#[derive(Debug)]
pub struct Limiter {
    keys: HashMap<String, (KeyBuckets, Limits)>,
    max_keys: usize,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::with_max_keys(MAX_TRACKED_KEYS)
    }
}

impl Limiter {
    pub fn with_max_keys(max_keys: usize) -> Self {
        assert!(max_keys > 0, "the limiter tracks at least one key");
        Self { keys: HashMap::new(), max_keys }
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }

    /// Admits one request of `tokens` for `key_id` under `limits` at `now_ns`, taking from
    /// both buckets, or says why not (taking nothing).
    pub fn admit_at(&mut self, key_id: &str, limits: Limits, tokens: u64, now_ns: u64) -> Result<(), Refusal> {
        debug_assert!(limits.requests_per_minute > 0 && limits.tokens_per_minute > 0, "limits are resolved");
        if tokens > limits.tokens_per_minute {
            return Err(Refusal::TooLarge { tokens, tokens_per_minute: limits.tokens_per_minute });
        }
        if !self.keys.contains_key(key_id) && self.keys.len() >= self.max_keys {
            self.evict(now_ns);
        }
        let (buckets, tracked_limits) = self.keys.entry(key_id.to_owned()).or_insert_with(|| {
            let buckets = KeyBuckets {
                requests: Bucket::full(limits.requests_per_minute, now_ns),
                tokens: Bucket::full(limits.tokens_per_minute, now_ns),
                touched_ns: now_ns,
            };
            (buckets, limits)
        });
        *tracked_limits = limits;
        buckets.touched_ns = buckets.touched_ns.max(now_ns);
        let wait = buckets.requests.wait_ns(limits.requests_per_minute, 1, now_ns).max(buckets.tokens.wait_ns(
            limits.tokens_per_minute,
            tokens,
            now_ns,
        ));
        if wait > 0 {
            let seconds = u64::try_from(wait.div_ceil(NANOS_PER_SECOND)).unwrap_or(u64::MAX).max(1);
            return Err(Refusal::RetryAfter { seconds });
        }
        buckets.requests.take(limits.requests_per_minute, 1, now_ns);
        buckets.tokens.take(limits.tokens_per_minute, tokens, now_ns);
        Ok(())
    }

    /// Drops every key whose buckets are full again; if none is, the least recently used one.
    fn evict(&mut self, now_ns: u64) {
        self.keys.retain(|_, (buckets, limits)| !buckets.is_full(*limits, now_ns));
        if self.keys.len() >= self.max_keys {
            let oldest = self.keys.iter().min_by_key(|(_, (buckets, _))| buckets.touched_ns).map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.keys.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn limits(requests_per_minute: u64, tokens_per_minute: u64) -> Limits {
        Limits { requests_per_minute, tokens_per_minute }
    }

    #[test]
    fn a_keys_own_limits_apply_only_below_the_defaults() {
        let defaults = limits(600, 1_000_000);
        assert_eq!(limits(0, 0).resolve(defaults), defaults);
        assert_eq!(limits(10, 0).resolve(defaults), limits(10, 1_000_000));
        assert_eq!(limits(10_000, 500).resolve(defaults), limits(600, 500));
    }

    #[test]
    fn a_minutes_requests_pass_then_one_more_waits_for_its_share_to_refill() {
        let mut limiter = Limiter::default();
        let limits = limits(60, 1_000_000);
        for _ in 0..60 {
            assert_eq!(limiter.admit_at("k", limits, 1, 0), Ok(()));
        }
        // One request a second refills: the 61st waits exactly a second.
        assert_eq!(limiter.admit_at("k", limits, 1, 0), Err(Refusal::RetryAfter { seconds: 1 }));
        assert_eq!(limiter.admit_at("k", limits, 1, SECOND - 1), Err(Refusal::RetryAfter { seconds: 1 }));
        assert_eq!(limiter.admit_at("k", limits, 1, SECOND), Ok(()));
        assert_eq!(limiter.admit_at("k", limits, 1, SECOND), Err(Refusal::RetryAfter { seconds: 1 }));
        // Another key has its own buckets.
        assert_eq!(limiter.admit_at("other", limits, 1, SECOND), Ok(()));
    }

    #[test]
    fn retry_after_is_the_whole_seconds_until_the_tokens_refill() {
        let mut limiter = Limiter::default();
        let limits = limits(600, 6_000); // 100 tokens a second
        assert_eq!(limiter.admit_at("k", limits, 5_000, 0), Ok(()));
        // 1,000 left; 2,500 needs 1,500 more: 15 s.
        assert_eq!(limiter.admit_at("k", limits, 2_500, 0), Err(Refusal::RetryAfter { seconds: 15 }));
        // 14.5 s later 50 are still missing: half a second, rounded up to 1.
        assert_eq!(
            limiter.admit_at("k", limits, 2_500, 14 * SECOND + SECOND / 2),
            Err(Refusal::RetryAfter { seconds: 1 })
        );
        // The refused requests took nothing: at 15 s exactly 2,500 are there.
        assert_eq!(limiter.admit_at("k", limits, 2_500, 15 * SECOND), Ok(()));
        assert_eq!(limiter.admit_at("k", limits, 1, 15 * SECOND), Err(Refusal::RetryAfter { seconds: 1 }));
    }

    #[test]
    fn refills_stop_at_one_minutes_allowance() {
        let mut limiter = Limiter::default();
        let limits = limits(2, 1_000);
        assert_eq!(limiter.admit_at("k", limits, 1, 0), Ok(()));
        assert_eq!(limiter.admit_at("k", limits, 1, 0), Ok(()));
        // An hour idle refills two requests, not 120.
        let later = 3_600 * SECOND;
        assert_eq!(limiter.admit_at("k", limits, 1, later), Ok(()));
        assert_eq!(limiter.admit_at("k", limits, 1, later), Ok(()));
        assert_eq!(limiter.admit_at("k", limits, 1, later), Err(Refusal::RetryAfter { seconds: 30 }));
    }

    #[test]
    fn a_request_larger_than_a_minutes_tokens_is_never_admitted() {
        let mut limiter = Limiter::default();
        let refused = limiter.admit_at("k", limits(600, 1_000), 1_001, 0);
        assert_eq!(refused, Err(Refusal::TooLarge { tokens: 1_001, tokens_per_minute: 1_000 }));
        assert_eq!(limiter.admit_at("k", limits(600, 1_000), 1_000, 0), Ok(()));
    }

    #[test]
    fn the_table_never_holds_more_than_its_maximum_and_drops_idle_keys_first() {
        let mut limiter = Limiter::with_max_keys(3);
        let limits = limits(60, 60);
        for key in ["a", "b", "c"] {
            assert_eq!(limiter.admit_at(key, limits, 60, 0), Ok(()));
        }
        // "a" idles a minute (full again); "b" and "c" are drained again at 30 s.
        for key in ["b", "c"] {
            assert_eq!(limiter.admit_at(key, limits, 30, 30 * SECOND), Ok(()));
        }
        assert_eq!(limiter.admit_at("d", limits, 1, 60 * SECOND), Ok(()));
        assert_eq!(limiter.tracked(), 3);
        // "b" and "c" kept their state: each holds 30 of 60 tokens, so 31 waits a second.
        assert_eq!(limiter.admit_at("b", limits, 31, 60 * SECOND), Err(Refusal::RetryAfter { seconds: 1 }));
        // With every key busy, the least recently used goes.
        assert_eq!(limiter.admit_at("e", limits, 60, 60 * SECOND), Ok(()));
        assert_eq!(limiter.tracked(), 3);
        assert_eq!(limiter.admit_at("c", limits, 60, 60 * SECOND), Ok(()), "c was dropped, so it starts full");
    }
}

//! Rate limiting of failed verifications, per client address and per token id.
//!
//! What is limited: argon2 verifications that failed — a well-formed token whose id is
//! known but whose secret is wrong. Those are the only failures that cost anything (one
//! argon2 run each) and the only ones that look like guessing at a real token. Garbage,
//! unknown ids and expired tokens are rejected in microseconds without a budget: counting
//! them would let one misconfigured client behind the kube-apiserver — which is the
//! TokenReview caller for *every* user — exhaust the apiserver's budget for everybody.
//!
//! What a limit does: while a key is over its budget, tokens that would need argon2 are
//! refused without running it (cache hits, which need no argon2, still succeed). The
//! answer is the same as for any other rejected token.
//!
//! Why not `governor`: its keyed limiter grows with every key until pruned and only
//! counts by consuming on check, while this needs "check without consuming, consume on
//! failure" and a hard memory bound. A token bucket per key in a capped map is ~100 lines
//! and testable with an injected clock.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Budget of failures for one key: `burst` at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    pub burst: u32,
    pub per_minute: u32,
    /// Keys tracked at most; beyond that new keys go untracked (see [`FailureLimiter`]).
    pub max_keys: usize,
}

impl LimitConfig {
    pub const DISABLED: Self = Self {
        burst: 0,
        per_minute: 0,
        max_keys: 0,
    };
}

/// The address a request came from, coarsened so one host cannot mint fresh keys:
/// IPv4 addresses as they are, IPv6 addresses by /64 (what one site is usually given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    pub fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(u32::from(v4))),
                None => Self(u128::from(v6) & !((1u128 << 64) - 1) | (1u128 << 127)),
            },
        }
    }

    /// For callers whose address is unknown (tests, local sockets): one shared key.
    pub const UNKNOWN: Self = Self(u128::MAX);
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets per key in a map of bounded size.
///
/// When the map is full, buckets that have refilled completely (they carry no history) are
/// dropped; if it is still full, a new key is simply not tracked. Refusing new keys instead
/// would let an attacker with many addresses lock out every new client, and tracking them
/// anyway would let it grow memory without bound; an attacker with that many addresses is
/// bounded by the argon2 pool, not by this limiter.
pub struct FailureLimiter<K> {
    config: LimitConfig,
    refill_per_sec: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> FailureLimiter<K> {
    pub fn new(config: LimitConfig) -> Self {
        Self {
            config,
            refill_per_sec: f64::from(config.per_minute) / 60.0,
            buckets: Mutex::default(),
        }
    }

    fn enabled(&self) -> bool {
        self.config.burst > 0 && self.config.max_keys > 0
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * self.refill_per_sec).min(f64::from(self.config.burst));
        bucket.updated = now;
    }

    /// Whether `key` has used up its failure budget.
    pub fn is_limited(&self, key: &K, now: Instant) -> bool {
        if !self.enabled() {
            return false;
        }
        let mut buckets = self.lock();
        match buckets.get_mut(key) {
            Some(bucket) => {
                self.refill(bucket, now);
                bucket.tokens < 1.0
            }
            None => false,
        }
    }

    /// Spends one unit of `key`'s budget.
    pub fn record_failure(&self, key: &K, now: Instant) {
        if !self.enabled() {
            return;
        }
        let mut buckets = self.lock();
        if let Some(bucket) = buckets.get_mut(key) {
            self.refill(bucket, now);
            bucket.tokens = (bucket.tokens - 1.0).max(0.0);
            return;
        }
        if buckets.len() >= self.config.max_keys {
            let burst = f64::from(self.config.burst);
            let rate = self.refill_per_sec;
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
            });
            if buckets.len() >= self.config.max_keys {
                return;
            }
        }
        buckets.insert(
            key.clone(),
            Bucket {
                tokens: f64::from(self.config.burst) - 1.0,
                updated: now,
            },
        );
    }

    /// Forgets `key` (its token was removed).
    pub fn forget(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Drops buckets that have refilled completely; run now and then to return memory.
    pub fn prune(&self, now: Instant) {
        let burst = f64::from(self.config.burst);
        let rate = self.refill_per_sec;
        self.lock().retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
        });
    }

    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Bucket>> {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long a full bucket takes to refill from empty, for documentation and tests.
pub fn refill_time(config: LimitConfig) -> Option<Duration> {
    (config.per_minute > 0).then(|| {
        Duration::from_secs_f64(f64::from(config.burst) * 60.0 / f64::from(config.per_minute))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const CONFIG: LimitConfig = LimitConfig {
        burst: 3,
        per_minute: 60,
        max_keys: 4,
    };

    #[test]
    fn a_key_is_limited_after_its_burst_and_recovers_at_the_refill_rate() {
        let limiter = FailureLimiter::new(CONFIG);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(!limiter.is_limited(&"k", t0));
            limiter.record_failure(&"k", t0);
        }
        assert!(limiter.is_limited(&"k", t0));
        assert!(!limiter.is_limited(&"other", t0), "keys are independent");
        // One failure's worth refills in a second at 60 per minute.
        assert!(limiter.is_limited(&"k", t0 + Duration::from_millis(900)));
        assert!(!limiter.is_limited(&"k", t0 + Duration::from_millis(1_000)));
        assert_eq!(refill_time(CONFIG), Some(Duration::from_secs(3)));
    }

    #[test]
    fn checking_does_not_spend_budget() {
        let limiter = FailureLimiter::new(CONFIG);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(!limiter.is_limited(&"k", t0));
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded_and_idle_buckets_make_room() {
        let limiter = FailureLimiter::new(CONFIG);
        let t0 = Instant::now();
        for k in 0..10 {
            limiter.record_failure(&k, t0);
        }
        assert_eq!(limiter.tracked(), 4, "keys beyond the cap are not tracked");
        // Later, the old buckets have refilled and are dropped to make room.
        let later = t0 + Duration::from_secs(5);
        limiter.record_failure(&99, later);
        assert_eq!(limiter.tracked(), 1);
        limiter.prune(later + Duration::from_secs(5));
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn disabled_limits_never_limit() {
        let limiter = FailureLimiter::new(LimitConfig::DISABLED);
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.record_failure(&"k", t0);
        }
        assert!(!limiter.is_limited(&"k", t0));
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn forget_clears_a_key() {
        let limiter = FailureLimiter::new(CONFIG);
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.record_failure(&"k", t0);
        }
        limiter.forget(&"k");
        assert!(!limiter.is_limited(&"k", t0));
    }

    #[test]
    fn client_keys_group_ipv6_by_64_and_unmap_ipv4() {
        let v6 = |s: &str| ClientKey::from_ip(IpAddr::V6(s.parse::<Ipv6Addr>().unwrap()));
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"));
        assert_ne!(v6("2001:db8:1:2::1"), v6("2001:db8:1:3::1"));
        let v4 = ClientKey::from_ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(v4, v6("::ffff:10.1.2.3"));
        assert_ne!(
            v4,
            ClientKey::from_ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 4)))
        );
        // An IPv6 /64 never collides with an IPv4 address.
        assert_ne!(
            ClientKey::from_ip(IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0))),
            v6("::")
        );
    }
}

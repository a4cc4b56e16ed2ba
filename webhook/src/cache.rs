//! The positive validation cache: tokens that passed argon2 recently, so repeated use costs
//! a keyed hash and a map lookup instead of ~20 ms of argon2.
//!
//! Entries are keyed by HMAC-SHA256 of the presented token under a random key drawn when
//! the process starts and never stored or logged: the cache holds no token and nothing a
//! dump of memory could turn back into one without that key. Keys are compared by the
//! map's ordinary equality; that is not constant-time, but an attacker can neither choose
//! nor learn HMAC outputs without the key, so the timing of those comparisons tells
//! nothing about cached tokens.
//!
//! An entry is only a shortcut past argon2. A hit still requires that the index holds the
//! very same record (pointer-equal, so any change or deletion invalidates it at once) and
//! the caller re-checks expiry on every use. Entries live at most `ttl` and the map holds
//! at most `max_entries`; watch events also evict by token id to free memory promptly.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use patrol_api::token::TokenId;
use ring::hmac;

use crate::index::IndexedRecord;

/// HMAC-SHA256 of a presented token under the process key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenMac([u8; 32]);

impl std::fmt::Debug for TokenMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenMac(…)")
    }
}

struct Entry {
    record: Arc<IndexedRecord>,
    inserted: Instant,
}

#[derive(Default)]
struct State {
    by_mac: HashMap<TokenMac, Entry>,
    /// Which entry belongs to a token id, for eviction on watch events. A token id names
    /// exactly one token, so one MAC per id.
    by_id: HashMap<TokenId, TokenMac>,
    last_sweep: Option<Instant>,
}

/// Errors creating the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the system random number generator failed while drawing the cache key")]
    Random,
}

pub struct ValidationCache {
    key: hmac::Key,
    ttl: Duration,
    max_entries: usize,
    state: RwLock<State>,
}

impl ValidationCache {
    /// A cache whose entries live `ttl` (zero disables caching) with at most
    /// `max_entries` entries.
    pub fn new(ttl: Duration, max_entries: usize) -> Result<Self, CacheError> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| CacheError::Random)?;
        Ok(Self {
            key,
            ttl,
            max_entries,
            state: RwLock::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.max_entries > 0
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn mac(&self, presented: &str) -> TokenMac {
        let tag = hmac::sign(&self.key, presented.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        TokenMac(out)
    }

    /// The record cached for `mac`, if the entry is younger than the TTL.
    pub fn get(&self, mac: &TokenMac, now: Instant) -> Option<Arc<IndexedRecord>> {
        if !self.enabled() {
            return None;
        }
        let state = self.read();
        let entry = state.by_mac.get(mac)?;
        (now.saturating_duration_since(entry.inserted) < self.ttl).then(|| entry.record.clone())
    }

    /// Caches a successful verification.
    pub fn insert(&self, mac: TokenMac, record: Arc<IndexedRecord>, now: Instant) {
        if !self.enabled() {
            return;
        }
        let mut state = self.write();
        if let Some(old) = state.by_id.get(&record.id).copied()
            && old != mac
        {
            state.by_mac.remove(&old);
        }
        if state.by_mac.len() >= self.max_entries && !state.by_mac.contains_key(&mac) {
            self.make_room(&mut state, now);
        }
        state.by_id.insert(record.id.clone(), mac);
        state.by_mac.insert(
            mac,
            Entry {
                record,
                inserted: now,
            },
        );
    }

    /// Drops the entry of `id`, if any (its record changed or disappeared).
    pub fn evict(&self, id: &TokenId) {
        let mut state = self.write();
        if let Some(mac) = state.by_id.remove(id) {
            state.by_mac.remove(&mac);
        }
    }

    /// Drops `mac`'s entry if it still holds `record` (found stale on lookup).
    pub fn evict_stale(&self, mac: &TokenMac, record: &Arc<IndexedRecord>) {
        let mut state = self.write();
        if state
            .by_mac
            .get(mac)
            .is_some_and(|e| Arc::ptr_eq(&e.record, record))
        {
            state.by_mac.remove(mac);
            state.by_id.remove(&record.id);
        }
    }

    /// Drops every entry older than the TTL.
    pub fn purge_expired(&self, now: Instant) {
        let mut state = self.write();
        self.sweep(&mut state, now);
    }

    pub fn len(&self) -> usize {
        self.read().by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(&self, state: &mut State, now: Instant) {
        let ttl = self.ttl;
        let State {
            by_mac,
            by_id,
            last_sweep,
        } = state;
        by_mac.retain(|_, e| {
            let keep = now.saturating_duration_since(e.inserted) < ttl;
            if !keep {
                by_id.remove(&e.record.id);
            }
            keep
        });
        *last_sweep = Some(now);
    }

    /// At capacity: sweep expired entries (at most once a second, so a cache full of live
    /// entries does not sweep on every insert), then, if still full, drop an arbitrary
    /// entry — the map's iteration order is randomised, and a dropped entry costs one
    /// argon2 verification later, nothing more.
    fn make_room(&self, state: &mut State, now: Instant) {
        let swept_recently = state
            .last_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1));
        if !swept_recently {
            self.sweep(state, now);
        }
        while state.by_mac.len() >= self.max_entries {
            let Some(victim) = state.by_mac.keys().next().copied() else {
                break;
            };
            if let Some(entry) = state.by_mac.remove(&victim) {
                state.by_id.remove(&entry.record.id);
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::record;

    fn entry(id: &str) -> Arc<IndexedRecord> {
        Arc::new(IndexedRecord::new(
            TokenId::parse(id).unwrap(),
            record(id, "h"),
            "s",
        ))
    }

    #[test]
    fn macs_are_keyed_per_process_and_never_the_token() {
        let a = ValidationCache::new(Duration::from_secs(30), 10).unwrap();
        let b = ValidationCache::new(Duration::from_secs(30), 10).unwrap();
        assert_eq!(a.mac("patrol_x"), a.mac("patrol_x"));
        assert_ne!(a.mac("patrol_x"), a.mac("patrol_y"));
        assert_ne!(
            a.mac("patrol_x"),
            b.mac("patrol_x"),
            "the key is random per cache"
        );
        assert_eq!(format!("{:?}", a.mac("patrol_x")), "TokenMac(…)");
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = ValidationCache::new(Duration::from_secs(30), 10).unwrap();
        let t0 = Instant::now();
        let mac = cache.mac("t1");
        cache.insert(mac, entry("AAAAAAAAAAAA"), t0);
        assert!(cache.get(&mac, t0 + Duration::from_secs(29)).is_some());
        assert!(cache.get(&mac, t0 + Duration::from_secs(30)).is_none());
        cache.purge_expired(t0 + Duration::from_secs(31));
        assert!(cache.is_empty());
    }

    #[test]
    fn eviction_by_id_and_by_staleness() {
        let cache = ValidationCache::new(Duration::from_secs(30), 10).unwrap();
        let now = Instant::now();
        let a = entry("AAAAAAAAAAAA");
        let mac = cache.mac("ta");
        cache.insert(mac, a.clone(), now);
        cache.evict(&a.id);
        assert!(cache.get(&mac, now).is_none());

        cache.insert(mac, a.clone(), now);
        cache.evict_stale(&mac, &entry("AAAAAAAAAAAA")); // a different record: kept
        assert!(cache.get(&mac, now).is_some());
        cache.evict_stale(&mac, &a);
        assert!(cache.get(&mac, now).is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn one_entry_per_token_id() {
        let cache = ValidationCache::new(Duration::from_secs(30), 10).unwrap();
        let now = Instant::now();
        let a = entry("AAAAAAAAAAAA");
        cache.insert(cache.mac("first"), a.clone(), now);
        cache.insert(cache.mac("second"), a.clone(), now);
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&cache.mac("first"), now).is_none());
        cache.evict(&a.id);
        assert!(cache.is_empty());
    }

    #[test]
    fn size_is_bounded() {
        let cache = ValidationCache::new(Duration::from_secs(30), 3).unwrap();
        let now = Instant::now();
        let ids = [
            "AAAAAAAAAAAA",
            "BBBBBBBBBBBB",
            "CCCCCCCCCCCC",
            "DDDDDDDDDDDD",
            "EEEEEEEEEEEE",
        ];
        for id in ids {
            cache.insert(cache.mac(id), entry(id), now);
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
        assert!(
            cache.get(&cache.mac("EEEEEEEEEEEE"), now).is_some(),
            "the newest entry is kept"
        );
        // Expired entries make room before live ones are dropped.
        let later = now + Duration::from_secs(31);
        cache.insert(cache.mac("FFFFFFFFFFFF"), entry("FFFFFFFFFFFF"), later);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn zero_ttl_disables_caching() {
        let cache = ValidationCache::new(Duration::ZERO, 10).unwrap();
        let now = Instant::now();
        let mac = cache.mac("t");
        cache.insert(mac, entry("AAAAAAAAAAAA"), now);
        assert!(cache.get(&mac, now).is_none());
        assert!(cache.is_empty());
    }
}

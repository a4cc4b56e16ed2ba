//! The validation core every endpoint shares: presented token → accepted record, or why not.
//!
//! Order of checks, cheapest first, so garbage never reaches argon2:
//!
//! 1. the index has synced (else the service is unavailable, not the token invalid);
//! 2. format and checksum ([`token::parse`]) — microseconds, no lookup;
//! 3. the positive cache (HMAC of the token) — a hit still needs the index to hold the
//!    very same record, and expiry and idle time are re-checked;
//! 4. id lookup in the index; expiry, and idleness already confirmed;
//! 5. failure budgets of the client and the token id ([`crate::limiter`]);
//! 6. argon2 on the bounded pool ([`crate::verify_pool`]);
//! 7. the record is still current after verification (a deletion during the ~20 ms of
//!    argon2 wins), then expiry and idle time.
//!
//! Callers learn only accepted / rejected / unavailable. Unknown id, wrong secret, expiry,
//! idleness and rate limiting are all "rejected" to the outside; the reason exists for
//! metrics and debug logs, which carry token ids but never tokens or hashes. (Ids are
//! public by design, so answering an unknown id faster than a wrong secret leaks nothing.)

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use patrol_api::token::{self, TokenId};
use tracing::{debug, warn};

/// How far ahead of this clock a `lastUsedAt` written by another replica may be.
const CLOCK_SKEW_SECONDS: i64 = 300;
use zeroize::Zeroizing;

use crate::{
    cache::{CacheError, ValidationCache},
    index::{IndexedRecord, RecordIndex},
    limiter::{ClientKey, FailureLimiter, LimitConfig},
    metrics::Metrics,
    owners::{OwnerDirectory, OwnerState, owner_state},
    usage::{PatActivity, PatActivitySource, UsageRecorder},
    verify_pool::{PoolError, VerifyPool},
};

/// Tunables of the validation core.
#[derive(Debug, Clone)]
pub struct ValidatorConfig {
    /// How long a positive result is reused; zero disables the cache.
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
    /// Failed verifications allowed per client address.
    pub client_limit: LimitConfig,
    /// Failed verifications allowed per token id.
    pub token_limit: LimitConfig,
    pub argon2_workers: usize,
    pub argon2_max_queue: usize,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(30),
            cache_max_entries: 100_000,
            client_limit: LimitConfig {
                burst: 50,
                per_minute: 600,
                max_keys: 65_536,
            },
            token_limit: LimitConfig {
                burst: 10,
                per_minute: 6,
                max_keys: 200_000,
            },
            argon2_workers: VerifyPool::default_workers(),
            argon2_max_queue: 1_024,
        }
    }
}

/// Why a token was not accepted. Never shown to callers; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not a well-formed Patrol token (prefix, length, charset or checksum).
    Malformed,
    /// Well-formed, but no record has its id.
    UnknownId,
    /// The id is known, the secret is not the one hashed.
    WrongSecret,
    /// Past the record's expiry.
    Expired,
    /// Unused for longer than the record's idle timeout.
    Idle,
    /// The PersonalAccessToken the record belongs to no longer exists.
    Orphaned,
    /// The ServiceAccount that owns the token was deleted (or recreated with a new uid).
    OwnerGone,
    /// The client or the token id used up its failure budget.
    RateLimited,
    /// The record changed or disappeared while the token was being verified.
    Superseded,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownId => "unknown_id",
            Self::WrongSecret => "wrong_secret",
            Self::Expired => "expired",
            Self::Idle => "idle",
            Self::Orphaned => "orphaned",
            Self::OwnerGone => "owner_gone",
            Self::RateLimited => "rate_limited",
            Self::Superseded => "superseded",
        }
    }
}

/// Why the token could not be judged at all; callers answer 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The index has not listed every record yet.
    NotSynced,
    /// The argon2 queue is full.
    Overloaded,
    /// The token looks idle here and the apiserver could not be asked otherwise.
    ActivityUnknown,
    /// A verification worker failed.
    Internal,
    /// The token's owner is a ServiceAccount and the ServiceAccount cache has not synced.
    OwnersNotSynced,
}

impl Unavailable {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotSynced => "not_synced",
            Self::Overloaded => "overloaded",
            Self::ActivityUnknown => "activity_unknown",
            Self::Internal => "internal",
            Self::OwnersNotSynced => "owners_not_synced",
        }
    }

    /// What callers are told (they answer 503 with it).
    pub fn message(self) -> &'static str {
        match self {
            Self::NotSynced => "the token record index has not synced yet; retry shortly",
            Self::Overloaded => "too many token verifications in progress; retry shortly",
            Self::ActivityUnknown => {
                "cannot determine the token's last use right now; retry shortly"
            }
            Self::Internal => "token verification failed internally; retry",
            Self::OwnersNotSynced => {
                "the ServiceAccount cache has not synced yet, and this token belongs to a ServiceAccount; retry shortly"
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    Rejected(Rejection),
    Unavailable(Unavailable),
}

impl From<Rejection> for Denial {
    fn from(r: Rejection) -> Self {
        Self::Rejected(r)
    }
}

impl From<Unavailable> for Denial {
    fn from(u: Unavailable) -> Self {
        Self::Unavailable(u)
    }
}

/// Whether a record's idle timeout may have passed, judged from what is known locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleCheck {
    /// No idle timeout, or a use within it is known.
    Active,
    /// No use within the timeout is known here; another replica may know better.
    PossiblyIdle,
}

/// Decides idleness from the record's issue time and the latest use known. A token is idle
/// once `idle_timeout_seconds` have passed since the later of the two (inclusive, like expiry).
pub fn idle_check(
    issued_at: DateTime<Utc>,
    idle_timeout_seconds: Option<u64>,
    last_used: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> IdleCheck {
    let Some(timeout) = idle_timeout_seconds else {
        return IdleCheck::Active;
    };
    let last_activity = last_used.map_or(issued_at, |used| used.max(issued_at));
    let timeout = chrono::Duration::seconds(i64::try_from(timeout).unwrap_or(i64::MAX / 1_000));
    match last_activity.checked_add_signed(timeout) {
        Some(deadline) if deadline <= now => IdleCheck::PossiblyIdle,
        _ => IdleCheck::Active,
    }
}

/// How a token was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    CacheHit,
    Verified,
}

pub struct Validator {
    index: Arc<RecordIndex>,
    cache: ValidationCache,
    client_limits: FailureLimiter<ClientKey>,
    token_limits: FailureLimiter<TokenId>,
    pool: VerifyPool,
    usage: UsageRecorder,
    activity: Arc<dyn PatActivitySource>,
    /// Where ServiceAccount owners are checked; `None`: not checked (unit tests).
    owners: Option<Arc<dyn OwnerDirectory>>,
    metrics: Arc<Metrics>,
}

impl Validator {
    pub fn new(
        config: &ValidatorConfig,
        index: Arc<RecordIndex>,
        usage: UsageRecorder,
        activity: Arc<dyn PatActivitySource>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, CacheError> {
        Ok(Self {
            index,
            cache: ValidationCache::new(config.cache_ttl, config.cache_max_entries)?,
            client_limits: FailureLimiter::new(config.client_limit),
            token_limits: FailureLimiter::new(config.token_limit),
            pool: VerifyPool::new(
                config.argon2_workers,
                config.argon2_max_queue,
                metrics.clone(),
            ),
            usage,
            activity,
            owners: None,
            metrics,
        })
    }

    /// Refuses tokens whose ServiceAccount owner no longer exists as issued.
    pub fn with_owners(mut self, owners: Arc<dyn OwnerDirectory>) -> Self {
        self.owners = Some(owners);
        self
    }

    /// Where ServiceAccount owners are checked, when they are.
    pub fn owners(&self) -> Option<&dyn OwnerDirectory> {
        self.owners.as_deref()
    }

    pub fn index(&self) -> &Arc<RecordIndex> {
        &self.index
    }

    pub fn is_ready(&self) -> bool {
        self.index.is_synced()
    }

    /// Validates a presented token for a caller at `client`.
    pub async fn verify_presented_token(
        &self,
        presented: &str,
        client: ClientKey,
    ) -> Result<Arc<IndexedRecord>, Denial> {
        let result = self.verify_inner(presented, client).await;
        match &result {
            Ok((entry, how)) => {
                let reason = match how {
                    Acceptance::CacheHit => "cache_hit",
                    Acceptance::Verified => "verified",
                };
                self.metrics.record_validation("authenticated", reason);
                debug!(token_id = %entry.id, how = reason, "token accepted");
            }
            Err((id, Denial::Rejected(r))) => {
                self.metrics.record_validation("rejected", r.reason());
                debug!(
                    token_id = id.as_ref().map(TokenId::as_str),
                    reason = r.reason(),
                    "token rejected"
                );
            }
            Err((id, Denial::Unavailable(u))) => {
                self.metrics.record_validation("unavailable", u.reason());
                debug!(
                    token_id = id.as_ref().map(TokenId::as_str),
                    reason = u.reason(),
                    "token not judged"
                );
            }
        }
        result.map(|(entry, _)| entry).map_err(|(_, denial)| denial)
    }

    async fn verify_inner(
        &self,
        presented: &str,
        client: ClientKey,
    ) -> Result<(Arc<IndexedRecord>, Acceptance), (Option<TokenId>, Denial)> {
        if !self.index.is_synced() {
            return Err((None, Unavailable::NotSynced.into()));
        }
        let parsed = token::parse(presented).map_err(|_| (None, Rejection::Malformed.into()))?;
        let id = parsed.id().clone();
        let fail = |d: Denial| (Some(id.clone()), d);
        let started = Instant::now();
        let now = Utc::now();

        let mac = self.cache.enabled().then(|| self.cache.mac(presented));
        if let Some(mac) = &mac {
            if let Some(entry) = self.cache.get(mac, started) {
                if entry.id == id && self.index.is_current(&entry) {
                    self.metrics.cache_hits.inc();
                    self.check_usable(&entry, now).await.map_err(fail)?;
                    self.usage.note_use(&entry, now);
                    return Ok((entry, Acceptance::CacheHit));
                }
                self.cache.evict_stale(mac, &entry);
            }
            self.metrics.cache_misses.inc();
        }

        let entry = self
            .index
            .get(id.as_str())
            .ok_or_else(|| fail(Rejection::UnknownId.into()))?;
        if entry.is_expired_at(now) {
            return Err(fail(Rejection::Expired.into()));
        }
        if entry.idle_confirmed() {
            return Err(fail(Rejection::Idle.into()));
        }
        if self.client_limits.is_limited(&client, started) {
            self.metrics.record_rate_limited("client");
            return Err(fail(Rejection::RateLimited.into()));
        }
        if self.token_limits.is_limited(&id, started) {
            self.metrics.record_rate_limited("token");
            return Err(fail(Rejection::RateLimited.into()));
        }

        let verified = self
            .pool
            .verify(
                Zeroizing::new(presented.to_owned()),
                Arc::from(entry.hash()),
            )
            .await
            .map_err(|e| {
                fail(match e {
                    PoolError::Overloaded(_) => Unavailable::Overloaded.into(),
                    PoolError::WorkerFailed => Unavailable::Internal.into(),
                })
            })?;
        if !verified {
            let now = Instant::now();
            self.client_limits.record_failure(&client, now);
            self.token_limits.record_failure(&id, now);
            return Err(fail(Rejection::WrongSecret.into()));
        }

        // A deletion or change that landed during verification wins; a change that kept the
        // hash (same token, new attributes) is honoured with the new attributes.
        let entry = match self.index.get(id.as_str()) {
            Some(current) if Arc::ptr_eq(&current, &entry) || current.hash() == entry.hash() => {
                current
            }
            _ => return Err(fail(Rejection::Superseded.into())),
        };
        let now = Utc::now();
        self.check_usable(&entry, now).await.map_err(fail)?;
        if let Some(mac) = mac {
            self.cache.insert(mac, entry.clone(), Instant::now());
        }
        self.usage.note_use(&entry, now);
        Ok((entry, Acceptance::Verified))
    }

    /// Expiry, the owner and idle time, checked on every acceptance (cached or not).
    async fn check_usable(&self, entry: &IndexedRecord, now: DateTime<Utc>) -> Result<(), Denial> {
        if entry.is_expired_at(now) {
            return Err(Rejection::Expired.into());
        }
        if let Some(owners) = &self.owners {
            match owner_state(entry, owners.as_ref()) {
                OwnerState::Current => {}
                OwnerState::Gone => return Err(Rejection::OwnerGone.into()),
                OwnerState::Unknown => return Err(Unavailable::OwnersNotSynced.into()),
            }
        }
        if idle_check(
            entry.issued_at(),
            entry.idle_timeout_seconds(),
            entry.last_used(),
            now,
        ) == IdleCheck::Active
        {
            return Ok(());
        }
        if entry.idle_confirmed() {
            return Err(Rejection::Idle.into());
        }
        // This replica has not seen a recent use; the PAT's status knows every replica's.
        match self.activity.activity(&entry.pat()).await {
            Ok(PatActivity::Exists { last_used_at }) => {
                // Status is writable by others: a use far ahead of now is not believed.
                if let Some(at) = last_used_at
                    .filter(|at| *at <= now + chrono::Duration::seconds(CLOCK_SKEW_SECONDS))
                {
                    entry.observe_use(at);
                }
                if idle_check(
                    entry.issued_at(),
                    entry.idle_timeout_seconds(),
                    entry.last_used(),
                    now,
                ) == IdleCheck::Active
                {
                    Ok(())
                } else {
                    // Idleness is permanent: a token refused for it is never used again.
                    entry.confirm_idle();
                    Err(Rejection::Idle.into())
                }
            }
            Ok(PatActivity::Gone) => Err(Rejection::Orphaned.into()),
            Err(e) => {
                warn!(token_id = %entry.id, error = %e, "cannot tell whether the token is idle");
                Err(Unavailable::ActivityUnknown.into())
            }
        }
    }

    /// Drops what watch events made stale.
    pub fn on_index_change(&self, ids: &[TokenId]) {
        for id in ids {
            self.cache.evict(id);
            self.token_limits.forget(id);
        }
        self.metrics
            .cache_entries
            .set(i64::try_from(self.cache.len()).unwrap_or(i64::MAX));
    }

    /// Periodic housekeeping: expired cache entries and refilled rate-limit buckets.
    pub fn maintain(&self) {
        let now = Instant::now();
        self.cache.purge_expired(now);
        self.client_limits.prune(now);
        self.token_limits.prune(now);
        self.metrics
            .cache_entries
            .set(i64::try_from(self.cache.len()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        index::{RecordEvent, tests::record},
        usage::{UsageError, UsageWrite},
    };
    use futures::future::BoxFuture;
    use patrol_api::{
        record::{PatReference, TokenRecord},
        token::{HashParams, PlaintextToken, TokenHasher, generate},
    };
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    /// What the fake apiserver says about PATs, and how often it was asked.
    #[derive(Default)]
    pub(crate) struct FakeActivity {
        pub answer: Mutex<Option<Result<PatActivity, ()>>>,
        pub calls: Mutex<usize>,
    }

    impl PatActivitySource for FakeActivity {
        fn activity<'a>(
            &'a self,
            pat: &'a PatReference,
        ) -> BoxFuture<'a, Result<PatActivity, UsageError>> {
            *self.calls.lock().unwrap() += 1;
            let answer = self.answer.lock().unwrap().clone();
            let name = pat.name.clone();
            Box::pin(async move {
                match answer {
                    Some(Ok(a)) => Ok(a),
                    Some(Err(())) | None => Err(UsageError::Read {
                        namespace: "ns".into(),
                        name,
                        source: kube::Error::Api(
                            kube::core::Status::failure(
                                "apiserver unavailable",
                                "ServiceUnavailable",
                            )
                            .with_code(503)
                            .boxed(),
                        ),
                    }),
                }
            })
        }
    }

    pub(crate) struct Harness {
        pub validator: Validator,
        pub activity: Arc<FakeActivity>,
        pub usage_rx: mpsc::Receiver<UsageWrite>,
        pub metrics: Arc<Metrics>,
    }

    pub(crate) fn fast_hasher() -> TokenHasher {
        TokenHasher::new(HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap()
    }

    pub(crate) fn harness_with(config: ValidatorConfig) -> Harness {
        let metrics = Arc::new(Metrics::default());
        let index = Arc::new(RecordIndex::new(metrics.clone()));
        index.apply(RecordEvent::Relist);
        index.apply(RecordEvent::RelistDone);
        let (usage, usage_rx) = UsageRecorder::new(64, Duration::from_secs(60), metrics.clone());
        let activity = Arc::new(FakeActivity::default());
        let validator =
            Validator::new(&config, index, usage, activity.clone(), metrics.clone()).unwrap();
        Harness {
            validator,
            activity,
            usage_rx,
            metrics,
        }
    }

    pub(crate) fn harness() -> Harness {
        harness_with(ValidatorConfig {
            argon2_workers: 1,
            ..ValidatorConfig::default()
        })
    }

    impl Harness {
        /// Issues a token and indexes its record, adjusted by `edit`.
        pub(crate) fn issue(
            &self,
            edit: impl FnOnce(&mut TokenRecord),
        ) -> (PlaintextToken, TokenRecord) {
            let token = generate().unwrap();
            let mut r = record(token.id().as_str(), &fast_hasher().hash(&token).unwrap());
            edit(&mut r);
            self.put(r.clone());
            (token, r)
        }

        pub(crate) fn put(&self, r: TokenRecord) {
            let secret = r.to_secret("patrol-system").unwrap();
            let changed = self.validator.index.apply(RecordEvent::upsert(
                secret.metadata.name.clone().unwrap(),
                TokenRecord::from_secret(&secret),
            ));
            self.validator.on_index_change(&changed);
        }

        pub(crate) fn delete(&self, id: &str) {
            let changed = self.validator.index.apply(RecordEvent::Delete {
                secret: TokenRecord::secret_name(id),
            });
            self.validator.on_index_change(&changed);
        }

        pub(crate) async fn check(&self, token: &str) -> Result<Arc<IndexedRecord>, Denial> {
            self.validator
                .verify_presented_token(token, ClientKey::UNKNOWN)
                .await
        }

        fn argon2_runs(&self) -> u64 {
            let text = self.metrics.encode().unwrap();
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("patrol_webhook_argon2_verify_duration_seconds_count ")
                })
                .map_or(0, |v| v.trim().parse().unwrap())
        }

        fn count(&self, outcome: &str, reason: &str) -> u64 {
            let text = self.metrics.encode().unwrap();
            let needle = format!(
                "patrol_webhook_token_validations_total{{outcome=\"{outcome}\",reason=\"{reason}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&needle))
                .map_or(0, |v| v.trim().parse().unwrap())
        }
    }

    #[tokio::test]
    async fn accepts_a_valid_token_then_serves_it_from_the_cache() {
        let h = harness();
        let (token, _) = h.issue(|_| {});
        let entry = h.check(token.expose_secret()).await.unwrap();
        assert_eq!(entry.username(), "alice");
        h.check(token.expose_secret()).await.unwrap();
        assert_eq!(h.count("authenticated", "verified"), 1);
        assert_eq!(h.count("authenticated", "cache_hit"), 1);
        assert_eq!(h.metrics.cache_hits.get(), 1);
    }

    #[tokio::test]
    async fn garbage_is_rejected_without_argon2() {
        let h = harness();
        for garbage in [
            "",
            "x",
            "Bearer abc",
            "patrol_",
            "patrol_AAAAAAAAAAAA_",
            &"a".repeat(100_000),
            "patrol_ü",
        ] {
            assert_eq!(
                h.check(garbage).await.unwrap_err(),
                Denial::Rejected(Rejection::Malformed)
            );
        }
        assert_eq!(h.argon2_runs(), 0, "no argon2 ran");
        assert_eq!(
            h.metrics.cache_misses.get(),
            0,
            "not even the cache was consulted"
        );
    }

    #[tokio::test]
    async fn unknown_wrong_and_expired_are_told_apart_only_internally() {
        let h = harness();
        let (token, _) = h.issue(|_| {});
        let unknown = generate().unwrap();
        assert_eq!(
            h.check(unknown.expose_secret()).await.unwrap_err(),
            Rejection::UnknownId.into()
        );

        // Same id, another secret, valid checksum.
        let forged = forge_same_id(&token);
        assert_eq!(
            h.check(&forged).await.unwrap_err(),
            Rejection::WrongSecret.into()
        );

        let (expired, _) =
            h.issue(|r| r.expires_at = Some(Utc::now() - chrono::Duration::seconds(1)));
        assert_eq!(
            h.check(expired.expose_secret()).await.unwrap_err(),
            Rejection::Expired.into()
        );
    }

    /// A token with `token`'s id and a different secret that still passes the checksum.
    pub(crate) fn forge_same_id(token: &PlaintextToken) -> String {
        let body = format!("patrol_{}_{}", token.id(), "x".repeat(token::SECRET_LEN));
        let sum = crc32fast_hash(body.as_bytes());
        format!("{body}{}", base62_fixed(sum))
    }

    fn crc32fast_hash(bytes: &[u8]) -> u32 {
        // CRC-32 (IEEE), bitwise; test-only, to forge checksums without the private helper.
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn base62_fixed(mut n: u32) -> String {
        const ALPHABET: &[u8; 62] =
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut out = [b'0'; token::CHECKSUM_LEN];
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(n % 62) as usize];
            n /= 62;
        }
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn forged_checksums_really_parse() {
        let token = generate().unwrap();
        let forged = forge_same_id(&token);
        assert!(
            token::parse(&forged).is_ok(),
            "the test forger must produce well-formed tokens"
        );
    }

    #[tokio::test]
    async fn a_cached_token_expires_on_time() {
        let h = harness();
        let (token, _) =
            h.issue(|r| r.expires_at = Some(Utc::now() + chrono::Duration::milliseconds(1500)));
        h.check(token.expose_secret()).await.unwrap();
        h.check(token.expose_secret()).await.unwrap();
        assert_eq!(h.count("authenticated", "cache_hit"), 1);
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(
            h.check(token.expose_secret()).await.unwrap_err(),
            Rejection::Expired.into()
        );
    }

    #[tokio::test]
    async fn deleting_or_changing_the_record_invalidates_the_cache_at_once() {
        let h = harness();
        let (token, r) = h.issue(|_| {});
        h.check(token.expose_secret()).await.unwrap();
        h.delete(token.id().as_str());
        assert_eq!(
            h.check(token.expose_secret()).await.unwrap_err(),
            Rejection::UnknownId.into()
        );

        // Re-create, cache it, then change its scopes: the next check sees the new scopes.
        h.put(r.clone());
        h.check(token.expose_secret()).await.unwrap();
        let mut changed = r;
        changed.scopes = vec!["admin".into()];
        h.put(changed);
        let entry = h.check(token.expose_secret()).await.unwrap();
        assert_eq!(entry.scopes().collect::<Vec<_>>(), ["admin"]);
        assert_eq!(
            h.count("authenticated", "verified"),
            3,
            "each change forced a fresh verification"
        );
    }

    #[tokio::test]
    async fn a_stale_cache_entry_is_never_served_even_without_eviction() {
        let h = harness();
        let (token, r) = h.issue(|_| {});
        h.check(token.expose_secret()).await.unwrap();
        // Replace the record behind the cache's back (no on_index_change).
        let mut changed = r;
        changed.owner.username = "mallory".into();
        let secret = changed.to_secret("ns").unwrap();
        h.validator.index.apply(RecordEvent::upsert(
            secret.metadata.name.clone().unwrap(),
            TokenRecord::from_secret(&secret),
        ));
        let entry = h.check(token.expose_secret()).await.unwrap();
        assert_eq!(entry.username(), "mallory");
        assert_eq!(h.count("authenticated", "cache_hit"), 0);
    }

    #[tokio::test]
    async fn nothing_is_judged_before_the_index_syncs() {
        let metrics = Arc::new(Metrics::default());
        let index = Arc::new(RecordIndex::new(metrics.clone()));
        let (usage, _rx) = UsageRecorder::new(8, Duration::from_secs(60), metrics.clone());
        let v = Validator::new(
            &ValidatorConfig::default(),
            index,
            usage,
            Arc::new(FakeActivity::default()),
            metrics,
        )
        .unwrap();
        assert!(!v.is_ready());
        let t = generate().unwrap();
        assert_eq!(
            v.verify_presented_token(t.expose_secret(), ClientKey::UNKNOWN)
                .await
                .unwrap_err(),
            Denial::Unavailable(Unavailable::NotSynced)
        );
    }

    #[tokio::test]
    async fn wrong_secrets_exhaust_the_token_budget_then_even_the_right_one_waits() {
        let h = harness_with(ValidatorConfig {
            argon2_workers: 1,
            token_limit: LimitConfig {
                burst: 3,
                per_minute: 1,
                max_keys: 10,
            },
            client_limit: LimitConfig::DISABLED,
            ..ValidatorConfig::default()
        });
        let (token, _) = h.issue(|_| {});
        let forged = forge_same_id(&token);
        for _ in 0..3 {
            assert_eq!(
                h.check(&forged).await.unwrap_err(),
                Rejection::WrongSecret.into()
            );
        }
        assert_eq!(
            h.check(&forged).await.unwrap_err(),
            Rejection::RateLimited.into()
        );
        assert_eq!(
            h.check(token.expose_secret()).await.unwrap_err(),
            Rejection::RateLimited.into()
        );
        assert_eq!(h.argon2_runs(), 3, "limited attempts never reached argon2");
        // Other tokens are unaffected.
        let (other, _) = h.issue(|_| {});
        h.check(other.expose_secret()).await.unwrap();
    }

    #[tokio::test]
    async fn a_cached_token_still_works_while_its_id_is_under_attack() {
        let h = harness_with(ValidatorConfig {
            argon2_workers: 1,
            token_limit: LimitConfig {
                burst: 1,
                per_minute: 1,
                max_keys: 10,
            },
            ..ValidatorConfig::default()
        });
        let (token, _) = h.issue(|_| {});
        h.check(token.expose_secret()).await.unwrap();
        let forged = forge_same_id(&token);
        h.check(&forged).await.unwrap_err();
        assert_eq!(
            h.check(&forged).await.unwrap_err(),
            Rejection::RateLimited.into()
        );
        h.check(token.expose_secret()).await.unwrap();
    }

    #[tokio::test]
    async fn the_client_budget_spans_token_ids() {
        let h = harness_with(ValidatorConfig {
            argon2_workers: 1,
            client_limit: LimitConfig {
                burst: 2,
                per_minute: 1,
                max_keys: 10,
            },
            token_limit: LimitConfig::DISABLED,
            ..ValidatorConfig::default()
        });
        let (a, _) = h.issue(|_| {});
        let (b, _) = h.issue(|_| {});
        let (c, _) = h.issue(|_| {});
        h.check(&forge_same_id(&a)).await.unwrap_err();
        h.check(&forge_same_id(&b)).await.unwrap_err();
        assert_eq!(
            h.check(c.expose_secret()).await.unwrap_err(),
            Rejection::RateLimited.into()
        );
        // Another client is not affected.
        let other = ClientKey::from_ip("10.0.0.9".parse().unwrap());
        h.validator
            .verify_presented_token(c.expose_secret(), other)
            .await
            .unwrap();
        assert!(
            h.metrics
                .encode()
                .unwrap()
                .contains("patrol_webhook_rate_limited_attempts_total{scope=\"client\"} 1")
        );
    }

    #[tokio::test]
    async fn successful_use_is_queued_for_last_used_at_once_per_window() {
        let mut h = harness();
        let (token, _) = h.issue(|_| {});
        for _ in 0..5 {
            h.check(token.expose_secret()).await.unwrap();
        }
        let write = h.usage_rx.try_recv().unwrap();
        assert_eq!(write.token_id, *token.id());
        assert_eq!(write.pat.name, "laptop");
        assert!(h.usage_rx.try_recv().is_err(), "debounced to one write");
    }

    #[test]
    fn idle_decisions() {
        let now = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let days = |n| chrono::Duration::days(n);
        let mut r = record("AAAAAAAAAAAA", "h");
        r.issued_at = now - days(40);
        assert_eq!(
            idle_check(r.issued_at, r.idle_timeout_seconds, None, now),
            IdleCheck::Active,
            "no timeout"
        );
        r.idle_timeout_seconds = Some(30 * 86_400);
        assert_eq!(
            idle_check(r.issued_at, r.idle_timeout_seconds, None, now),
            IdleCheck::PossiblyIdle
        );
        assert_eq!(
            idle_check(
                r.issued_at,
                r.idle_timeout_seconds,
                Some(now - days(29)),
                now
            ),
            IdleCheck::Active
        );
        assert_eq!(
            idle_check(
                r.issued_at,
                r.idle_timeout_seconds,
                Some(now - days(30)),
                now
            ),
            IdleCheck::PossiblyIdle,
            "inclusive"
        );
        // A use recorded before issue (clock skew, rotation) never extends past issue time.
        r.issued_at = now - days(1);
        assert_eq!(
            idle_check(
                r.issued_at,
                r.idle_timeout_seconds,
                Some(now - days(90)),
                now
            ),
            IdleCheck::Active
        );
        r.idle_timeout_seconds = Some(u64::MAX);
        assert_eq!(
            idle_check(r.issued_at, r.idle_timeout_seconds, None, now),
            IdleCheck::Active,
            "huge timeouts do not overflow"
        );
    }

    #[tokio::test]
    async fn idleness_is_confirmed_with_the_pat_status_before_refusing() {
        let h = harness();
        let idle = |r: &mut TokenRecord| {
            r.issued_at = Utc::now() - chrono::Duration::days(40);
            r.idle_timeout_seconds = Some(30 * 86_400);
        };
        // Another replica saw a use yesterday: accepted, and remembered (no second lookup).
        *h.activity.answer.lock().unwrap() = Some(Ok(PatActivity::Exists {
            last_used_at: Some(Utc::now() - chrono::Duration::days(1)),
        }));
        let (used, _) = h.issue(idle);
        h.check(used.expose_secret()).await.unwrap();
        h.check(used.expose_secret()).await.unwrap();
        assert_eq!(*h.activity.calls.lock().unwrap(), 1);

        // Nobody used it: refused, and refused again without asking or verifying.
        *h.activity.answer.lock().unwrap() = Some(Ok(PatActivity::Exists { last_used_at: None }));
        let (unused, _) = h.issue(idle);
        assert_eq!(
            h.check(unused.expose_secret()).await.unwrap_err(),
            Rejection::Idle.into()
        );
        assert_eq!(
            h.check(unused.expose_secret()).await.unwrap_err(),
            Rejection::Idle.into()
        );
        assert_eq!(*h.activity.calls.lock().unwrap(), 2);

        // A last use far ahead (status is writable by others) is not believed.
        *h.activity.answer.lock().unwrap() = Some(Ok(PatActivity::Exists {
            last_used_at: Some(Utc::now() + chrono::Duration::days(3_650)),
        }));
        let (forged, _) = h.issue(idle);
        assert_eq!(
            h.check(forged.expose_secret()).await.unwrap_err(),
            Rejection::Idle.into()
        );

        // The PAT is gone.
        *h.activity.answer.lock().unwrap() = Some(Ok(PatActivity::Gone));
        let (orphan, _) = h.issue(idle);
        assert_eq!(
            h.check(orphan.expose_secret()).await.unwrap_err(),
            Rejection::Orphaned.into()
        );

        // The apiserver cannot be asked: not judged (503), rather than guessed.
        *h.activity.answer.lock().unwrap() = Some(Err(()));
        let (unknown, _) = h.issue(idle);
        assert_eq!(
            h.check(unknown.expose_secret()).await.unwrap_err(),
            Unavailable::ActivityUnknown.into()
        );
    }

    #[tokio::test]
    async fn a_full_argon2_queue_is_unavailable_not_rejected() {
        let h = harness_with(ValidatorConfig {
            argon2_workers: 1,
            argon2_max_queue: 0,
            ..ValidatorConfig::default()
        });
        let (token, _) = h.issue(|_| {});
        assert_eq!(
            h.check(token.expose_secret()).await.unwrap_err(),
            Unavailable::Overloaded.into()
        );
    }

    #[tokio::test]
    async fn with_the_cache_disabled_every_use_verifies() {
        let h = harness_with(ValidatorConfig {
            argon2_workers: 1,
            cache_ttl: Duration::ZERO,
            ..ValidatorConfig::default()
        });
        let (token, _) = h.issue(|_| {});
        h.check(token.expose_secret()).await.unwrap();
        h.check(token.expose_secret()).await.unwrap();
        assert_eq!(h.count("authenticated", "verified"), 2);
        assert_eq!(h.metrics.cache_misses.get(), 0);
    }
}

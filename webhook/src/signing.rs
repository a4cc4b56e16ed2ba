//! Signing keys of exchanged tokens: ES256 (ECDSA on P-256 with SHA-256), through *ring*,
//! the project's only crypto provider.
//!
//! **Where keys live.** One Secret (default `patrol-signing-keys`, type
//! `patrol.dev/signing-keys`) in the webhook's namespace holds every key that signs or may
//! still be needed to verify, as PKCS#8 documents with their activation times. Replicas do
//! not coordinate: each watches the Secret and signs with the key it says is current, and
//! each may write it — the first start creates it (a replica that loses the race gets 409
//! AlreadyExists and reads the winner's), later changes are replaces guarded by
//! `resourceVersion` (a loser gets 409 Conflict, re-reads and usually finds nothing left
//! to do). Private keys never leave this module except into that Secret; `Debug` output
//! and logs show key ids only.
//!
//! **Rotation.** Keys are switched by time, not by writes: every key has an `activatesAt`,
//! and the signing key is the latest one whose time has come. So all replicas switch
//! together (give or take clock skew, which is harmless since both keys are published),
//! and a key is published *before* it signs:
//!
//! - first start: the current key (active now) and the next one (active one period later);
//! - whenever no future key exists (the next one just became current), a new next key is
//!   added, activating one period after the current one — or, after a long outage left
//!   the current key overdue, at least `min(period, overlap)` from now, so verifiers that
//!   cache the JWKS still see it before it signs;
//! - a key stays published until its successor has been signing for `overlap`, which is
//!   at least the longest lifetime of an exchanged token, so every token ever signed by
//!   a key expires before the key leaves the JWKS.
//!
//! The decisions ([`plan`], [`KeySet::signing_key`], [`KeySet::published`]) are pure and
//! tested with explicit clocks; [`run`] is the I/O around them.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api,
    api::PostParams,
    runtime::{WatchStreamExt, watcher},
};
use ring::{
    digest,
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair},
};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};
use zeroize::{Zeroize, Zeroizing};

use crate::metrics::Metrics;

/// JWS `alg` of every token Patrol signs.
pub const ALGORITHM: &str = "ES256";
/// Secret type of the key Secret.
pub const SECRET_TYPE: &str = "patrol.dev/signing-keys";
/// Data key holding the keys as JSON.
pub const DATA_KEY: &str = "keys.json";
/// Value of `patrol.dev/component` on the key Secret.
pub const COMPONENT: &str = "signing-keys";
/// Default name of the key Secret.
pub const DEFAULT_SECRET_NAME: &str = "patrol-signing-keys";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot generate a signing key (the system random source failed)")]
    Generate,
    #[error("signing key {kid} is not a P-256 PKCS#8 private key")]
    BadKey { kid: String },
    #[error("signing key {stored} is stored under the wrong id (its thumbprint is {actual})")]
    KidMismatch { stored: String, actual: String },
    #[error("signing-key Secret {name} is not usable: {reason}")]
    Malformed { name: String, reason: String },
    #[error("cannot encode the signing keys: {0}")]
    Encode(serde_json::Error),
    #[error("signing failed")]
    Sign,
}

/// How keys rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// How long each key signs.
    pub period: Duration,
    /// How long a key stays published after its successor started signing; at least the
    /// longest lifetime of a signed token.
    pub overlap: Duration,
}

impl Rotation {
    /// How long before it signs a key added late (after an outage) is published.
    fn late_lead(&self) -> Duration {
        self.period.min(self.overlap)
    }
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A public key as a JSON Web Key (RFC 7517, RFC 7518 §6.2).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
}

/// A JWK Set (RFC 7517 §5).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// RFC 7638 thumbprint of a P-256 public key: SHA-256 over the required members in
/// lexicographic order with no whitespace, base64url without padding.
pub fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

/// One key pair. The private half is only used to sign and to be stored.
pub struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
    /// Uncompressed SEC1 point (0x04 ‖ x ‖ y).
    public: Vec<u8>,
    jwk: Jwk,
    created_at: DateTime<Utc>,
    activates_at: DateTime<Utc>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key that signs from `activates_at`.
    pub fn generate(
        created_at: DateTime<Utc>,
        activates_at: DateTime<Utc>,
    ) -> Result<Self, SigningError> {
        let rng = SystemRandom::new();
        let document =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| SigningError::Generate)?;
        Self::from_pkcs8(
            Zeroizing::new(document.as_ref().to_vec()),
            created_at,
            activates_at,
        )
    }

    /// A key from its PKCS#8 document; the key id is derived from the public key.
    pub fn from_pkcs8(
        pkcs8: Zeroizing<Vec<u8>>,
        created_at: DateTime<Utc>,
        activates_at: DateTime<Utc>,
    ) -> Result<Self, SigningError> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| SigningError::BadKey {
            kid: "(new)".into(),
        })?;
        let public = pair.public_key().as_ref().to_vec();
        let (x, y) = match public.as_slice() {
            [0x04, rest @ ..] if rest.len() == 64 => (
                URL_SAFE_NO_PAD.encode(&rest[..32]),
                URL_SAFE_NO_PAD.encode(&rest[32..]),
            ),
            _ => {
                return Err(SigningError::BadKey {
                    kid: "(new)".into(),
                });
            }
        };
        let kid = thumbprint(&x, &y);
        let jwk = Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x,
            y,
            kid: kid.clone(),
            use_: "sig".into(),
            alg: ALGORITHM.into(),
        };
        Ok(Self {
            kid,
            pair,
            pkcs8,
            public,
            jwk,
            created_at,
            activates_at,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub fn activates_at(&self) -> DateTime<Utc> {
        self.activates_at
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }

    /// A JWS ES256 signature of `message`: `r ‖ s`, 64 bytes (RFC 7518 §3.4).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SigningError> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| SigningError::Sign)
    }

    /// Whether `signature` (`r ‖ s`) is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(message, signature)
            .is_ok()
    }
}

/// The keys of one moment, oldest activation first.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    keys: Vec<Arc<SigningKey>>,
}

impl KeySet {
    pub fn new(mut keys: Vec<Arc<SigningKey>>) -> Self {
        keys.sort_by(|a, b| {
            a.activates_at
                .cmp(&b.activates_at)
                .then_with(|| a.kid.cmp(&b.kid))
        });
        keys.dedup_by(|a, b| a.kid == b.kid);
        Self { keys }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// The key that signs at `now`: the latest one already active, or — if none is yet,
    /// which only clock skew between replicas causes — the earliest.
    pub fn signing_key(&self, now: DateTime<Utc>) -> Option<&Arc<SigningKey>> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.activates_at <= now)
            .or_else(|| self.keys.first())
    }

    /// Keys verifiers should know at `now`: all but those whose successor has been signing
    /// for `overlap` already.
    pub fn published(&self, now: DateTime<Utc>, overlap: Duration) -> Vec<&Arc<SigningKey>> {
        let overlap = chrono(overlap);
        self.keys
            .iter()
            .enumerate()
            .filter(|(i, _)| match self.keys.get(i + 1) {
                Some(next) => next
                    .activates_at
                    .checked_add_signed(overlap)
                    .is_none_or(|until| until > now),
                None => true,
            })
            .map(|(_, k)| k)
            .collect()
    }

    /// The JWKS served at `now`.
    pub fn jwks(&self, now: DateTime<Utc>, overlap: Duration) -> Jwks {
        Jwks {
            keys: self
                .published(now, overlap)
                .into_iter()
                .map(|k| k.jwk.clone())
                .collect(),
        }
    }

    /// A published key by id, to verify a token with.
    pub fn verifying_key(
        &self,
        kid: &str,
        now: DateTime<Utc>,
        overlap: Duration,
    ) -> Option<Arc<SigningKey>> {
        self.published(now, overlap)
            .into_iter()
            .find(|k| k.kid == kid)
            .cloned()
    }

    /// The set after `plan`: retired keys dropped, new ones generated.
    pub fn apply(&self, plan: &KeyPlan, now: DateTime<Utc>) -> Result<Self, SigningError> {
        let mut keys: Vec<Arc<SigningKey>> = self
            .keys
            .iter()
            .filter(|k| !plan.retire.contains(&k.kid))
            .cloned()
            .collect();
        for at in &plan.add {
            keys.push(Arc::new(SigningKey::generate(now, *at)?));
        }
        Ok(Self::new(keys))
    }

    /// The set as its Secret.
    pub fn to_secret(&self, name: &str, namespace: &str) -> Result<Secret, SigningError> {
        let stored = StoredKeys {
            keys: self
                .keys
                .iter()
                .map(|k| StoredKey {
                    kid: k.kid.clone(),
                    created_at: k.created_at,
                    activates_at: k.activates_at,
                    private_key: STANDARD.encode(k.pkcs8.as_slice()),
                })
                .collect(),
        };
        let json = Zeroizing::new(serde_json::to_vec(&stored).map_err(SigningError::Encode)?);
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([
                    (
                        patrol_api::record::COMPONENT_LABEL.to_owned(),
                        COMPONENT.to_owned(),
                    ),
                    (
                        patrol_api::record::MANAGED_BY_LABEL.to_owned(),
                        "patrol-webhook".to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.to_owned()),
            data: Some(BTreeMap::from([(
                DATA_KEY.to_owned(),
                ByteString(json.to_vec()),
            )])),
            ..Secret::default()
        })
    }

    /// Reads a key Secret. Keys that do not decode are skipped (and reported); a Secret
    /// without one usable key is an error.
    pub fn from_secret(secret: &Secret) -> Result<(Self, Vec<SigningError>), SigningError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let malformed = |reason: &str| SigningError::Malformed {
            name: name.clone(),
            reason: reason.to_owned(),
        };
        if secret.type_.as_deref() != Some(SECRET_TYPE) {
            return Err(malformed("wrong Secret type"));
        }
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(DATA_KEY))
            .ok_or_else(|| malformed("no keys.json"))?;
        // serde's message could quote the content, which holds private keys: say only where.
        let stored: StoredKeys = serde_json::from_slice(&data.0).map_err(|e| {
            malformed(&format!(
                "keys.json is not valid (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for entry in &stored.keys {
            match entry.decode() {
                Ok(key) => keys.push(Arc::new(key)),
                Err(e) => skipped.push(e),
            }
        }
        if keys.is_empty() {
            return Err(malformed("no usable key"));
        }
        Ok((Self::new(keys), skipped))
    }
}

#[derive(Serialize, Deserialize)]
struct StoredKeys {
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredKey {
    kid: String,
    created_at: DateTime<Utc>,
    activates_at: DateTime<Utc>,
    /// Base64 of the PKCS#8 document.
    private_key: String,
}

impl Drop for StoredKey {
    fn drop(&mut self) {
        self.private_key.zeroize();
    }
}

impl StoredKey {
    fn decode(&self) -> Result<SigningKey, SigningError> {
        let bad = || SigningError::BadKey {
            kid: self.kid.clone(),
        };
        let pkcs8 = Zeroizing::new(STANDARD.decode(&self.private_key).map_err(|_| bad())?);
        let key =
            SigningKey::from_pkcs8(pkcs8, self.created_at, self.activates_at).map_err(|_| bad())?;
        if key.kid != self.kid {
            return Err(SigningError::KidMismatch {
                stored: self.kid.clone(),
                actual: key.kid,
            });
        }
        Ok(key)
    }
}

/// What to change in a key set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPlan {
    /// Ids of keys to drop.
    pub retire: Vec<String>,
    /// Activation times of keys to add.
    pub add: Vec<DateTime<Utc>>,
}

impl KeyPlan {
    pub fn is_empty(&self) -> bool {
        self.retire.is_empty() && self.add.is_empty()
    }
}

/// What the key set `(kid, activatesAt)` (oldest first) needs at `now`; see the module docs.
pub fn plan(keys: &[(&str, DateTime<Utc>)], now: DateTime<Utc>, rotation: Rotation) -> KeyPlan {
    let period = chrono(rotation.period);
    let overlap = chrono(rotation.overlap);
    let after = |t: DateTime<Utc>, d: chrono::Duration| {
        t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
    };
    if keys.is_empty() {
        return KeyPlan {
            retire: Vec::new(),
            add: vec![now, after(now, period)],
        };
    }
    let current = keys.iter().rposition(|(_, at)| *at <= now).unwrap_or(0);
    let retire = keys[..current]
        .iter()
        .enumerate()
        .filter(|(i, _)| after(keys[i + 1].1, overlap) <= now)
        .map(|(_, (kid, _))| (*kid).to_owned())
        .collect();
    let mut add = Vec::new();
    if !keys.iter().any(|(_, at)| *at > now) {
        let on_schedule = after(keys[current].1, period);
        let earliest = after(now, chrono(rotation.late_lead()));
        add.push(on_schedule.max(earliest));
    }
    KeyPlan { retire, add }
}

/// The live key set every handler reads; empty until the Secret was first read.
#[derive(Default)]
pub struct SigningKeys {
    set: RwLock<Arc<KeySet>>,
}

impl SigningKeys {
    pub fn new(set: KeySet) -> Self {
        Self {
            set: RwLock::new(Arc::new(set)),
        }
    }

    pub fn current(&self) -> Arc<KeySet> {
        match self.set.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn is_loaded(&self) -> bool {
        !self.current().is_empty()
    }

    fn replace(&self, set: KeySet) {
        let set = Arc::new(set);
        match self.set.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }
}

/// Where the key Secret is and how keys rotate.
#[derive(Debug, Clone)]
pub struct KeyStore {
    pub namespace: String,
    pub name: String,
    pub rotation: Rotation,
}

/// Keeps `keys` in step with the key Secret: creates it if missing, rotates it when due,
/// and follows every change any replica makes. Runs until the process ends.
pub async fn run(api: Api<Secret>, store: KeyStore, keys: Arc<SigningKeys>, metrics: Arc<Metrics>) {
    let watch = {
        let (api, store, keys, metrics) =
            (api.clone(), store.clone(), keys.clone(), metrics.clone());
        async move { follow(api, &store, &keys, &metrics).await }
    };
    let maintain = async move {
        let tick = (store.rotation.period / 4)
            .min(store.rotation.overlap / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut backoff = Duration::from_secs(1);
        loop {
            match reconcile(&api, &store, &keys, &metrics).await {
                Ok(()) => {
                    backoff = Duration::from_secs(1);
                    tokio::time::sleep(tick).await;
                }
                Err(e) => {
                    metrics.record_signing_key_write("error");
                    warn!(secret = %store.name, error = %e, "cannot maintain the signing keys; retrying");
                    tokio::time::sleep(backoff.min(tick)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    };
    tokio::join!(watch, maintain);
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error("gave up after repeated write conflicts")]
    Contended,
}

/// One pass: read the Secret, and create or update it if the plan says so.
async fn reconcile(
    api: &Api<Secret>,
    store: &KeyStore,
    keys: &SigningKeys,
    metrics: &Metrics,
) -> Result<(), ReconcileError> {
    for _ in 0..5 {
        let now = Utc::now();
        let existing = api.get_opt(&store.name).await?;
        let (set, resource_version) = match &existing {
            None => (KeySet::default(), None),
            Some(secret) => match KeySet::from_secret(secret) {
                Ok((set, skipped)) => {
                    for e in skipped {
                        warn!(secret = %store.name, error = %e, "skipping a stored signing key");
                    }
                    (set, secret.metadata.resource_version.clone())
                }
                Err(e) => {
                    // Unusable as it is: replace it, or nothing can ever be signed.
                    error!(secret = %store.name, error = %e, "replacing the unusable signing-key Secret");
                    (KeySet::default(), secret.metadata.resource_version.clone())
                }
            },
        };
        let meta: Vec<(&str, DateTime<Utc>)> = set
            .keys()
            .iter()
            .map(|k| (k.kid(), k.activates_at()))
            .collect();
        let plan = plan(&meta, now, store.rotation);
        if plan.is_empty() {
            install(keys, set, metrics);
            return Ok(());
        }
        let next = set.apply(&plan, now)?;
        let mut secret = next.to_secret(&store.name, &store.namespace)?;
        let written = match resource_version {
            None => api.create(&PostParams::default(), &secret).await,
            Some(rv) => {
                secret.metadata.resource_version = Some(rv);
                api.replace(&store.name, &PostParams::default(), &secret)
                    .await
            }
        };
        match written {
            Ok(_) => {
                let result = if existing.is_none() {
                    "created"
                } else {
                    "rotated"
                };
                metrics.record_signing_key_write(result);
                info!(
                    secret = %store.name,
                    added = plan.add.len(),
                    retired = plan.retire.len(),
                    signing = next.signing_key(now).map(|k| k.kid()).unwrap_or_default(),
                    "signing keys {result}"
                );
                install(keys, next, metrics);
                return Ok(());
            }
            // Another replica wrote first: read what it wrote and decide again.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                metrics.record_signing_key_write("conflict");
                debug!(secret = %store.name, "another replica updated the signing keys first");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ReconcileError::Contended)
}

fn install(keys: &SigningKeys, set: KeySet, metrics: &Metrics) {
    let current = keys.current();
    let same = current.len() == set.len()
        && current
            .keys()
            .iter()
            .zip(set.keys())
            .all(|(a, b)| a.kid == b.kid && a.activates_at == b.activates_at);
    if same {
        return;
    }
    metrics
        .signing_keys
        .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
    let kids: Vec<&str> = set.keys().iter().map(|k| k.kid()).collect();
    info!(keys = ?kids, "signing keys loaded");
    keys.replace(set);
}

/// Follows the key Secret, so a rotation written by any replica reaches this one at once.
async fn follow(api: Api<Secret>, store: &KeyStore, keys: &SigningKeys, metrics: &Metrics) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", store.name));
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret)) => {
                match KeySet::from_secret(&secret) {
                    Ok((set, skipped)) => {
                        for e in skipped {
                            warn!(secret = %store.name, error = %e, "skipping a stored signing key");
                        }
                        install(keys, set, metrics);
                    }
                    Err(e) => {
                        warn!(secret = %store.name, error = %e, "ignoring an unusable signing-key Secret")
                    }
                }
            }
            // Deleted (an emergency rotation): the maintainer creates fresh keys, which
            // then replace these; until then the old ones keep working.
            Ok(watcher::Event::Delete(_)) => {
                info!(secret = %store.name, "signing-key Secret deleted; new keys follow");
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => warn!(secret = %store.name, error = %e, "signing-key watch error; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    const DAY: Duration = Duration::from_secs(86_400);
    const HOUR: Duration = Duration::from_secs(3_600);

    fn rotation() -> Rotation {
        Rotation {
            period: 30 * DAY,
            overlap: DAY,
        }
    }

    #[test]
    fn thumbprint_matches_rfc_7638_for_a_known_key() {
        // The P-256 key of RFC 7515 appendix A.3; the expected thumbprint was computed
        // outside Rust (Python hashlib over the RFC 7638 canonical JSON).
        let x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
        assert_eq!(
            thumbprint(x, y),
            "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U"
        );
        assert_eq!(thumbprint(x, y).len(), 43, "32 bytes, unpadded base64url");
    }

    #[test]
    fn a_generated_key_signs_verifiably_and_round_trips_through_its_secret() {
        let now = t("2026-01-01T00:00:00Z");
        let key = SigningKey::generate(now, now).unwrap();
        let jwk = key.jwk().clone();
        assert_eq!(
            (
                jwk.kty.as_str(),
                jwk.crv.as_str(),
                jwk.alg.as_str(),
                jwk.use_.as_str()
            ),
            ("EC", "P-256", "ES256", "sig")
        );
        assert_eq!(jwk.kid, thumbprint(&jwk.x, &jwk.y));
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap().len(), 32);
        let sig = key.sign(b"message").unwrap();
        assert_eq!(sig.len(), 64);
        assert!(key.verify(b"message", &sig));
        assert!(!key.verify(b"massage", &sig));

        let set = KeySet::new(vec![Arc::new(key)]);
        let secret = set.to_secret("patrol-signing-keys", "ns").unwrap();
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        let (back, skipped) = KeySet::from_secret(&secret).unwrap();
        assert!(skipped.is_empty());
        let again = &back.keys()[0];
        assert_eq!(again.kid(), jwk.kid);
        assert!(
            again.verify(b"message", &sig),
            "same key after the round trip"
        );
        assert!(!format!("{set:?}").contains(&STANDARD.encode(set.keys()[0].pkcs8.as_slice())));
    }

    #[test]
    fn unusable_secrets_and_keys_are_reported_without_their_content() {
        let now = t("2026-01-01T00:00:00Z");
        let set = KeySet::new(vec![Arc::new(SigningKey::generate(now, now).unwrap())]);
        let good = set.to_secret("k", "ns").unwrap();

        let mut wrong_type = good.clone();
        wrong_type.type_ = Some("Opaque".into());
        assert!(KeySet::from_secret(&wrong_type).is_err());

        let mut garbage = good.clone();
        garbage.data = Some(BTreeMap::from([(
            DATA_KEY.to_owned(),
            ByteString(b"{\"keys\": [secret-material".to_vec()),
        )]));
        let e = KeySet::from_secret(&garbage).unwrap_err().to_string();
        assert!(!e.contains("secret-material"), "{e}");

        // One bad key among good ones is skipped; a kid that is not the key's is refused.
        let json = String::from_utf8(good.data.as_ref().unwrap()[DATA_KEY].0.clone()).unwrap();
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut bad = value["keys"][0].clone();
        bad["privateKey"] = "AAAA".into();
        bad["kid"] = "bad".into();
        let mut renamed = value["keys"][0].clone();
        renamed["kid"] = "renamed".into();
        value["keys"].as_array_mut().unwrap().extend([bad, renamed]);
        let mut mixed = good.clone();
        mixed.data = Some(BTreeMap::from([(
            DATA_KEY.to_owned(),
            ByteString(serde_json::to_vec(&value).unwrap()),
        )]));
        let (set, skipped) = KeySet::from_secret(&mixed).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(skipped.len(), 2);
        assert!(matches!(skipped[0], SigningError::BadKey { .. }));
        assert!(matches!(skipped[1], SigningError::KidMismatch { .. }));
    }

    #[test]
    fn first_start_creates_the_current_and_the_next_key() {
        let now = t("2026-01-01T00:00:00Z");
        let p = plan(&[], now, rotation());
        assert_eq!(p.add, vec![now, t("2026-01-31T00:00:00Z")]);
        assert!(p.retire.is_empty());
    }

    #[test]
    fn nothing_to_do_while_the_next_key_waits() {
        let keys = [
            ("a", t("2026-01-01T00:00:00Z")),
            ("b", t("2026-01-31T00:00:00Z")),
        ];
        for now in [
            "2026-01-01T00:00:00Z",
            "2026-01-15T00:00:00Z",
            "2026-01-30T23:59:59Z",
        ] {
            assert!(plan(&keys, t(now), rotation()).is_empty(), "{now}");
        }
    }

    #[test]
    fn when_the_next_key_activates_a_new_next_is_added_and_the_old_one_retires_after_the_overlap() {
        let keys = [
            ("a", t("2026-01-01T00:00:00Z")),
            ("b", t("2026-01-31T00:00:00Z")),
        ];
        let p = plan(&keys, t("2026-01-31T00:00:00Z"), rotation());
        assert_eq!(p.add, vec![t("2026-03-02T00:00:00Z")], "one period after b");
        assert!(
            p.retire.is_empty(),
            "a is still needed for tokens it signed"
        );

        let keys = [
            ("a", t("2026-01-01T00:00:00Z")),
            ("b", t("2026-01-31T00:00:00Z")),
            ("c", t("2026-03-02T00:00:00Z")),
        ];
        assert!(plan(&keys, t("2026-01-31T23:59:59Z"), rotation()).is_empty());
        let p = plan(&keys, t("2026-02-01T00:00:00Z"), rotation());
        assert_eq!(
            p.retire,
            vec!["a".to_owned()],
            "b has signed for the overlap"
        );
        assert!(p.add.is_empty());
    }

    #[test]
    fn after_a_long_outage_the_next_key_is_still_published_before_it_signs() {
        let keys = [("a", t("2026-01-01T00:00:00Z"))];
        let now = t("2026-06-01T00:00:00Z");
        let p = plan(&keys, now, rotation());
        assert_eq!(
            p.add,
            vec![now + chrono::Duration::days(1)],
            "min(period, overlap) ahead"
        );
        // Short periods: one period ahead.
        let quick = Rotation {
            period: HOUR,
            overlap: DAY,
        };
        let p = plan(&keys, now, quick);
        assert_eq!(p.add, vec![now + chrono::Duration::hours(1)]);
    }

    #[test]
    fn signing_and_publication_follow_the_clock() {
        let now = t("2026-01-01T00:00:00Z");
        let key = |at: &str| Arc::new(SigningKey::generate(now, t(at)).unwrap());
        let (a, b, c) = (
            key("2026-01-01T00:00:00Z"),
            key("2026-01-31T00:00:00Z"),
            key("2026-03-02T00:00:00Z"),
        );
        let set = KeySet::new(vec![c.clone(), a.clone(), b.clone()]);
        let kids = |v: Vec<&Arc<SigningKey>>| v.iter().map(|k| k.kid.clone()).collect::<Vec<_>>();
        let at = |s| {
            (
                set.signing_key(t(s)).unwrap().kid.clone(),
                kids(set.published(t(s), DAY)),
            )
        };

        assert_eq!(
            at("2026-01-10T00:00:00Z"),
            (a.kid.clone(), kids(vec![&a, &b, &c]))
        );
        assert_eq!(
            at("2026-01-31T00:00:00Z"),
            (b.kid.clone(), kids(vec![&a, &b, &c])),
            "b signs; a still verifies"
        );
        assert_eq!(
            at("2026-02-01T00:00:00Z"),
            (b.kid.clone(), kids(vec![&b, &c])),
            "a gone after the overlap"
        );
        assert_eq!(
            set.signing_key(t("2025-12-31T00:00:00Z")).unwrap().kid,
            a.kid,
            "skew"
        );
        assert!(
            set.verifying_key(&a.kid, t("2026-01-31T12:00:00Z"), DAY)
                .is_some()
        );
        assert!(
            set.verifying_key(&a.kid, t("2026-02-01T00:00:00Z"), DAY)
                .is_none()
        );
        assert!(
            set.verifying_key("unknown", t("2026-01-10T00:00:00Z"), DAY)
                .is_none()
        );

        let jwks = set.jwks(t("2026-01-10T00:00:00Z"), DAY);
        assert_eq!(jwks.keys.len(), 3);
        let json = serde_json::to_value(&jwks).unwrap();
        assert_eq!(
            json["keys"][0]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["alg", "crv", "kid", "kty", "use", "x", "y"]
        );
        assert!(!json.to_string().contains("\"d\""), "no private parts");
    }

    /// The write sequences of [`reconcile`] against a mocked apiserver (a `tower_test` pair
    /// driving a real `kube::Client`), one request at a time.
    mod apiserver {
        use super::*;
        use http::{Method, Request, Response, StatusCode};
        use kube::{Client, client::Body};
        use serde_json::{Value, json};
        use tower_test::mock::{self, Handle};

        const NS: &str = "patrol-system";
        const PATH: &str = "/api/v1/namespaces/patrol-system/secrets/patrol-signing-keys";
        const COLLECTION: &str = "/api/v1/namespaces/patrol-system/secrets";

        type ApiHandle = Handle<Request<Body>, Response<Body>>;

        fn store() -> KeyStore {
            KeyStore {
                namespace: NS.into(),
                name: DEFAULT_SECRET_NAME.into(),
                rotation: Rotation {
                    period: 30 * DAY,
                    overlap: DAY,
                },
            }
        }

        fn status(code: u16, reason: &str) -> Value {
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": reason, "reason": reason, "code": code})
        }

        fn secret_json(set: &KeySet, rv: &str) -> Value {
            let mut secret = set.to_secret(DEFAULT_SECRET_NAME, NS).unwrap();
            secret.metadata.resource_version = Some(rv.into());
            let mut v = serde_json::to_value(secret).unwrap();
            v["apiVersion"] = "v1".into();
            v["kind"] = "Secret".into();
            v
        }

        /// Answers the next request after checking its method and path; returns its body.
        async fn answer(
            handle: &mut ApiHandle,
            method: Method,
            path: &str,
            code: u16,
            body: &Value,
        ) -> Value {
            let (request, respond) =
                tokio::time::timeout(Duration::from_secs(1), handle.next_request())
                    .await
                    .expect("a request within 1s")
                    .expect("a request");
            assert_eq!((request.method(), request.uri().path()), (&method, path));
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let sent = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            respond.send_response(
                Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(body).unwrap()))
                    .unwrap(),
            );
            sent
        }

        fn setup() -> (Api<Secret>, ApiHandle, Arc<SigningKeys>, Arc<Metrics>) {
            let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
            let api = Api::namespaced(Client::new(service, "default"), NS);
            (
                api,
                handle,
                Arc::new(SigningKeys::default()),
                Arc::new(Metrics::default()),
            )
        }

        #[tokio::test]
        async fn first_start_creates_the_secret() {
            let (api, mut handle, keys, metrics) = setup();
            let task = {
                let keys = keys.clone();
                tokio::spawn(async move { reconcile(&api, &store(), &keys, &metrics).await })
            };
            answer(
                &mut handle,
                Method::GET,
                PATH,
                404,
                &status(404, "NotFound"),
            )
            .await;
            let sent = answer(&mut handle, Method::POST, COLLECTION, 201, &json!({})).await;
            assert_eq!(sent["type"], SECRET_TYPE);
            assert_eq!(sent["metadata"]["name"], DEFAULT_SECRET_NAME);
            task.await.unwrap().unwrap();
            assert_eq!(keys.current().len(), 2, "current + next, installed at once");
        }

        #[tokio::test]
        async fn losing_the_creation_race_adopts_the_winners_keys() {
            let (api, mut handle, keys, metrics) = setup();
            let now = Utc::now();
            let winner = KeySet::default()
                .apply(&plan(&[], now, store().rotation), now)
                .unwrap();
            let task = {
                let (keys, metrics) = (keys.clone(), metrics.clone());
                tokio::spawn(async move { reconcile(&api, &store(), &keys, &metrics).await })
            };
            answer(
                &mut handle,
                Method::GET,
                PATH,
                404,
                &status(404, "NotFound"),
            )
            .await;
            answer(
                &mut handle,
                Method::POST,
                COLLECTION,
                409,
                &status(409, "AlreadyExists"),
            )
            .await;
            answer(
                &mut handle,
                Method::GET,
                PATH,
                200,
                &secret_json(&winner, "7"),
            )
            .await;
            task.await.unwrap().unwrap();
            let kids = |s: &KeySet| s.keys().iter().map(|k| k.kid.clone()).collect::<Vec<_>>();
            assert_eq!(
                kids(&keys.current()),
                kids(&winner),
                "the other replica's keys"
            );
            assert!(
                metrics
                    .encode()
                    .unwrap()
                    .contains("patrol_webhook_signing_key_writes_total{result=\"conflict\"} 1")
            );
        }

        #[tokio::test]
        async fn a_due_rotation_is_written_with_the_resource_version_and_retried_on_conflict() {
            let (api, mut handle, keys, metrics) = setup();
            let now = Utc::now();
            let old = now - chrono::Duration::days(31);
            // Only an overdue current key: a next one is due.
            let lonely = KeySet::new(vec![Arc::new(SigningKey::generate(old, old).unwrap())]);
            let task = {
                let keys = keys.clone();
                tokio::spawn(async move { reconcile(&api, &store(), &keys, &metrics).await })
            };
            answer(
                &mut handle,
                Method::GET,
                PATH,
                200,
                &secret_json(&lonely, "10"),
            )
            .await;
            let sent = answer(
                &mut handle,
                Method::PUT,
                PATH,
                409,
                &status(409, "Conflict"),
            )
            .await;
            assert_eq!(sent["metadata"]["resourceVersion"], "10", "guarded replace");
            // Re-read: another replica already added the next key; nothing left to do.
            let meta: Vec<(&str, DateTime<Utc>)> = lonely
                .keys()
                .iter()
                .map(|k| (k.kid(), k.activates_at()))
                .collect();
            let done = lonely
                .apply(&plan(&meta, now, store().rotation), now)
                .unwrap();
            answer(
                &mut handle,
                Method::GET,
                PATH,
                200,
                &secret_json(&done, "11"),
            )
            .await;
            task.await.unwrap().unwrap();
            assert_eq!(keys.current().len(), 2);
        }
    }

    #[test]
    fn applying_a_plan_keeps_the_rest_and_adds_fresh_keys() {
        let now = t("2026-01-01T00:00:00Z");
        let empty = KeySet::default();
        let first = empty.apply(&plan(&[], now, rotation()), now).unwrap();
        assert_eq!(first.len(), 2);
        assert_ne!(first.keys()[0].kid, first.keys()[1].kid);
        let retire = KeyPlan {
            retire: vec![first.keys()[0].kid.clone()],
            add: vec![t("2026-03-02T00:00:00Z")],
        };
        let second = first.apply(&retire, now).unwrap();
        assert_eq!(second.len(), 2);
        assert_eq!(second.keys()[0].kid, first.keys()[1].kid);
    }
}

//! The hashed token record: everything needed to validate a presented token, and nothing
//! that would let anyone recover it. Stored as a Secret of type `patrol.dev/token-hash` in
//! the operator's namespace; the operator writes it, every webhook replica indexes it.
//!
//! Both sides use [`TokenRecord::to_secret`] and [`TokenRecord::from_secret`], so what the
//! operator writes is exactly what the index can read.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Serialize};

use crate::v1alpha1::TokenOwner;

/// Secret type of a token record.
pub const SECRET_TYPE: &str = "patrol.dev/token-hash";
/// Data key holding the record as JSON.
pub const DATA_KEY: &str = "record";
/// Label selecting token records (value [`COMPONENT`]).
pub const COMPONENT_LABEL: &str = "patrol.dev/component";
pub const COMPONENT: &str = "token-record";
/// Label carrying the token id, for lookups with a selector.
pub const TOKEN_ID_LABEL: &str = "patrol.dev/token-id";
/// Labels pointing back at the PersonalAccessToken.
pub const PAT_NAMESPACE_LABEL: &str = "patrol.dev/pat-namespace";
pub const PAT_NAME_LABEL: &str = "patrol.dev/pat-name";
pub const PAT_UID_LABEL: &str = "patrol.dev/pat-uid";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "patrol-operator";

/// The label selector every reader of token records uses.
pub fn selector() -> String {
    format!("{COMPONENT_LABEL}={COMPONENT}")
}

/// Which PersonalAccessToken a record belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PatReference {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// An object in a namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

/// What an exchange of this token may produce.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeGrant {
    /// Audiences allowed (token spec ∩ policies); `None` means any audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// Audience used when a request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_audience: Option<String>,
    /// Usernames allowed to act with this token (the `act` claim).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_actors: Vec<String>,
    /// Longest lifetime of an exchanged JWT, in seconds.
    pub max_ttl_seconds: u64,
}

/// A token as the validators see it. Holds the argon2id hash, never the token; its Debug
/// output leaves the hash out, so debug logs cannot carry it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub token_id: String,
    /// argon2id PHC string.
    pub hash: String,
    /// Prefix and last four characters, for people to recognise the token.
    pub hint: String,
    pub owner: TokenOwner,
    /// Scopes granted (requested ∩ allowed by policy).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Whether the token is restricted to its scopes. True whenever the PAT asked for any
    /// scope, even if policy granted none of them: such a token may do nothing beyond
    /// discovery, never everything its owner may. Records written before this field
    /// existed read as scoped exactly when they hold scopes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scoped: bool,
    pub issued_at: DateTime<Utc>,
    /// Instant after which the token is refused; for a rotated-out token, the grace end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// A token unused for this many seconds is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<u64>,
    pub pat: PatReference,
    #[serde(default)]
    pub exchange: ExchangeGrant,
    /// The ServiceAccount whose tokens an exchange may mint for this token
    /// (`spec.credentials.serviceAccount`, its namespace filled in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<NamespacedName>,
    /// The rotation request this token answered, so a crash after delivering it does not
    /// rotate twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_request: Option<String>,
}

impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("token_id", &self.token_id)
            .field("hash", &"<redacted>")
            .field("hint", &self.hint)
            .field("owner", &self.owner)
            .field("scopes", &self.scopes)
            .field("scoped", &self.scoped)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("idle_timeout_seconds", &self.idle_timeout_seconds)
            .field("pat", &self.pat)
            .field("exchange", &self.exchange)
            .field("service_account", &self.service_account)
            .field("rotation_request", &self.rotation_request)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("secret {0} is not a token record (type is not {SECRET_TYPE})")]
    WrongType(String),
    #[error("token record {0} has no {DATA_KEY:?} key")]
    MissingData(String),
    #[error("token record {name} is malformed: {source}")]
    Malformed {
        name: String,
        source: serde_json::Error,
    },
    #[error("token record {name} names token {inner} but is labelled {label}")]
    Mismatch {
        name: String,
        inner: String,
        label: String,
    },
    #[error("cannot encode token record {name}: {source}")]
    Encode {
        name: String,
        source: serde_json::Error,
    },
}

impl TokenRecord {
    /// Name of the record Secret. Token ids are mixed-case; Secret names are not, so two ids
    /// differing only in case share a name: creation then fails with AlreadyExists and the
    /// operator draws a new token (a 1 in 62^12-ish event, handled rather than assumed away).
    pub fn secret_name(token_id: &str) -> String {
        format!("patrol-token-{}", token_id.to_ascii_lowercase())
    }

    /// Whether the record accepts tokens at `now` (ignoring idle time, which needs last use).
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The record as a Secret in `namespace`.
    pub fn to_secret(&self, namespace: &str) -> Result<Secret, RecordError> {
        let name = Self::secret_name(&self.token_id);
        let json = serde_json::to_vec(self).map_err(|source| RecordError::Encode {
            name: name.clone(),
            source,
        })?;
        let labels = BTreeMap::from([
            (COMPONENT_LABEL.to_owned(), COMPONENT.to_owned()),
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (TOKEN_ID_LABEL.to_owned(), self.token_id.clone()),
            (PAT_NAMESPACE_LABEL.to_owned(), self.pat.namespace.clone()),
            (PAT_NAME_LABEL.to_owned(), self.pat.name.clone()),
            (PAT_UID_LABEL.to_owned(), self.pat.uid.clone()),
        ]);
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.to_owned()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.to_owned()),
            immutable: None,
            data: Some(BTreeMap::from([(DATA_KEY.to_owned(), ByteString(json))])),
            ..Secret::default()
        })
    }

    /// Reads a record back from its Secret, checking type and labels agree with the content.
    pub fn from_secret(secret: &Secret) -> Result<Self, RecordError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        if secret.type_.as_deref() != Some(SECRET_TYPE) {
            return Err(RecordError::WrongType(name));
        }
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(DATA_KEY))
            .ok_or_else(|| RecordError::MissingData(name.clone()))?;
        let record: TokenRecord =
            serde_json::from_slice(&data.0).map_err(|source| RecordError::Malformed {
                name: name.clone(),
                source,
            })?;
        let label = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(TOKEN_ID_LABEL))
            .cloned()
            .unwrap_or_default();
        if label != record.token_id {
            return Err(RecordError::Mismatch {
                name,
                inner: record.token_id,
                label,
            });
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> TokenRecord {
        TokenRecord {
            token_id: "AbCdEf012345".into(),
            hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            hint: "patrol_AbCdEf012345_…wxyz".into(),
            owner: TokenOwner {
                username: "alice".into(),
                uid: Some("u-1".into()),
                groups: vec!["dev".into()],
            },
            scopes: vec!["read:pods".into()],
            scoped: false,
            issued_at: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .expect("time")
                .to_utc(),
            expires_at: Some(
                DateTime::parse_from_rfc3339("2026-04-01T00:00:00Z")
                    .expect("time")
                    .to_utc(),
            ),
            idle_timeout_seconds: Some(86_400),
            pat: PatReference {
                namespace: "team-a".into(),
                name: "laptop".into(),
                uid: "pat-uid".into(),
            },
            exchange: ExchangeGrant {
                max_ttl_seconds: 3_600,
                ..ExchangeGrant::default()
            },
            service_account: None,
            rotation_request: None,
        }
    }

    #[test]
    fn debug_output_leaves_the_hash_out() {
        let record = sample();
        let text = format!("{record:?}");
        assert!(!text.contains(&record.hash), "{text}");
        assert!(text.contains(&record.token_id), "{text}");
    }

    #[test]
    fn round_trips_through_a_secret() {
        let record = sample();
        let secret = record.to_secret("patrol-system").expect("encode");
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("patrol-token-abcdef012345")
        );
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        assert_eq!(TokenRecord::from_secret(&secret).expect("decode"), record);
    }

    #[test]
    fn rejects_what_is_not_a_record() {
        let mut secret = sample().to_secret("ns").expect("encode");
        secret.type_ = Some("Opaque".into());
        assert!(matches!(
            TokenRecord::from_secret(&secret),
            Err(RecordError::WrongType(_))
        ));

        let mut secret = sample().to_secret("ns").expect("encode");
        secret.data = None;
        assert!(matches!(
            TokenRecord::from_secret(&secret),
            Err(RecordError::MissingData(_))
        ));

        let mut secret = sample().to_secret("ns").expect("encode");
        secret.data = Some(BTreeMap::from([(
            DATA_KEY.to_owned(),
            ByteString(b"{not json".to_vec()),
        )]));
        assert!(matches!(
            TokenRecord::from_secret(&secret),
            Err(RecordError::Malformed { .. })
        ));

        let mut secret = sample().to_secret("ns").expect("encode");
        secret
            .metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert(TOKEN_ID_LABEL.into(), "other".into());
        assert!(matches!(
            TokenRecord::from_secret(&secret),
            Err(RecordError::Mismatch { .. })
        ));
    }

    #[test]
    fn expiry_is_inclusive() {
        let record = sample();
        let at = record.expires_at.expect("expiry");
        assert!(!record.is_expired_at(at - chrono::Duration::seconds(1)));
        assert!(record.is_expired_at(at));
    }
}

//! A credential lease: the record of one associated credential minted at an exchange — which
//! provider, for which token, what to remove to revoke it, until when it lives. Never the
//! credential itself. Stored as a Secret of type `patrol.dev/credential-lease` in Patrol's
//! namespace: the token service writes it *before* it mints (so a crash between the two
//! leaves a lease to sweep, never an unrecorded credential), and the operator revokes what
//! it names when the token ends or the lease expires.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Serialize};

use crate::record::{
    COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, PAT_NAME_LABEL, PAT_NAMESPACE_LABEL,
    PatReference, TOKEN_ID_LABEL,
};

/// Secret type of a lease.
pub const SECRET_TYPE: &str = "patrol.dev/credential-lease";
/// Data key holding the lease as JSON.
pub const DATA_KEY: &str = "lease";
/// Value of [`COMPONENT_LABEL`] on leases.
pub const COMPONENT: &str = "credential-lease";
/// Label naming the provider.
pub const PROVIDER_LABEL: &str = "patrol.dev/credential-provider";
/// Label and annotation on a ServiceAccount token's bound Secret, naming its lease.
pub const LEASE_LABEL: &str = "patrol.dev/lease";
/// Value of [`COMPONENT_LABEL`] on the Secrets ServiceAccount tokens are bound to.
pub const BOUND_COMPONENT: &str = "credential-binding";

/// The label selector every reader of leases uses.
pub fn selector() -> String {
    format!("{COMPONENT_LABEL}={COMPONENT}")
}

/// Leases of one token.
pub fn selector_for_token(token_id: &str) -> String {
    format!("{},{TOKEN_ID_LABEL}={token_id}", selector())
}

/// What was minted, and so what revoking it removes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Leased {
    /// A ServiceAccount token bound to a Secret: deleting the Secret makes the
    /// kube-apiserver refuse the token.
    #[serde(rename_all = "camelCase")]
    ServiceAccountToken {
        namespace: String,
        service_account: String,
        bound_secret: String,
    },
    /// A PostgreSQL login role. Where the server is travels with the lease, so revoking works
    /// even after the provider is deleted (as long as the admin Secret remains).
    #[serde(rename_all = "camelCase")]
    PostgresRole {
        host: String,
        port: u16,
        database: String,
        admin_secret: String,
        /// Whether Patrol connects with TLS (`sslMode: VerifyFull`).
        #[serde(default)]
        tls: bool,
        role: String,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Random, lowercase: names the lease Secret and what it binds.
    pub lease_id: String,
    pub provider: String,
    pub token_id: String,
    pub pat: PatReference,
    /// The exchanged JWT's `jti`.
    pub jti: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub leased: Leased,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("secret {0} is not a credential lease (type is not {SECRET_TYPE})")]
    WrongType(String),
    #[error("credential lease {0} has no {DATA_KEY:?} key")]
    MissingData(String),
    #[error("credential lease {name} is malformed: {source}")]
    Malformed {
        name: String,
        source: serde_json::Error,
    },
    #[error("cannot encode credential lease {name}: {source}")]
    Encode {
        name: String,
        source: serde_json::Error,
    },
}

impl Lease {
    /// Name of the lease Secret.
    pub fn secret_name(lease_id: &str) -> String {
        format!("patrol-lease-{lease_id}")
    }

    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
    }

    /// The lease as a Secret in `namespace`.
    pub fn to_secret(&self, namespace: &str) -> Result<Secret, LeaseError> {
        let name = Self::secret_name(&self.lease_id);
        let json = serde_json::to_vec(self).map_err(|source| LeaseError::Encode {
            name: name.clone(),
            source,
        })?;
        let labels = BTreeMap::from([
            (COMPONENT_LABEL.to_owned(), COMPONENT.to_owned()),
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (TOKEN_ID_LABEL.to_owned(), self.token_id.clone()),
            (PROVIDER_LABEL.to_owned(), self.provider.clone()),
            (PAT_NAMESPACE_LABEL.to_owned(), self.pat.namespace.clone()),
            (PAT_NAME_LABEL.to_owned(), self.pat.name.clone()),
        ]);
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace.to_owned()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.to_owned()),
            immutable: Some(true),
            data: Some(BTreeMap::from([(DATA_KEY.to_owned(), ByteString(json))])),
            ..Secret::default()
        })
    }

    /// Reads a lease back from its Secret.
    pub fn from_secret(secret: &Secret) -> Result<Self, LeaseError> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        if secret.type_.as_deref() != Some(SECRET_TYPE) {
            return Err(LeaseError::WrongType(name));
        }
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(DATA_KEY))
            .ok_or_else(|| LeaseError::MissingData(name.clone()))?;
        serde_json::from_slice(&data.0).map_err(|source| LeaseError::Malformed { name, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            lease_id: "k3x9q".into(),
            provider: "analytics".into(),
            token_id: "AbCdEf012345".into(),
            pat: PatReference {
                namespace: "team".into(),
                name: "ci".into(),
                uid: "u-1".into(),
            },
            jti: "j".into(),
            issued_at: DateTime::UNIX_EPOCH,
            expires_at: DateTime::UNIX_EPOCH + chrono::Duration::hours(1),
            leased: Leased::PostgresRole {
                host: "db".into(),
                port: 5432,
                database: "analytics".into(),
                admin_secret: "pg-admin".into(),
                tls: true,
                role: "patrol_k3x9q".into(),
            },
        }
    }

    #[test]
    fn a_lease_survives_its_secret() {
        let secret = lease().to_secret("patrol-system").unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("patrol-lease-k3x9q"));
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[TOKEN_ID_LABEL], "AbCdEf012345");
        assert_eq!(labels[PROVIDER_LABEL], "analytics");
        assert_eq!(Lease::from_secret(&secret).unwrap(), lease());
    }

    #[test]
    fn another_secret_type_is_not_a_lease() {
        let mut secret = lease().to_secret("patrol-system").unwrap();
        secret.type_ = Some("Opaque".into());
        assert!(matches!(
            Lease::from_secret(&secret),
            Err(LeaseError::WrongType(_))
        ));
    }

    #[test]
    fn expiry_is_inclusive() {
        let l = lease();
        assert!(!l.is_expired_at(l.expires_at - chrono::Duration::seconds(1)));
        assert!(l.is_expired_at(l.expires_at));
    }
}

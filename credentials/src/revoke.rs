//! Revoking leases: removing what they name, then the lease. Idempotent, so a crash at any
//! point is repaired by doing it again; the operator does (when a token's record goes, and
//! in [`sweep`] for expired and orphaned leases).

use std::{collections::HashSet, sync::Arc};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams},
};
use patrol_api::lease::{self, Lease, Leased};
use tracing::{info, warn};

use crate::{
    postgres::{PostgresError, Target},
    providers::AdminPool,
    service_account,
};

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("PostgreSQL at {host}:{port}: {source}")]
    Postgres {
        host: String,
        port: u16,
        source: PostgresError,
    },
    #[error("PostgreSQL admin Secret {0}: {1}")]
    AdminSecret(String, String),
}

/// Removes what a lease minted, then the lease itself.
pub async fn revoke(
    client: &Client,
    admins: &AdminPool,
    namespace: &str,
    lease: &Lease,
) -> Result<(), RevokeError> {
    match &lease.leased {
        Leased::ServiceAccountToken {
            namespace: sa_namespace,
            bound_secret,
            ..
        } => service_account::delete_binding(client, sa_namespace, bound_secret).await?,
        Leased::PostgresRole {
            host,
            port,
            database,
            admin_secret,
            tls,
            role,
        } => {
            let target = Target::new(host, *port, database, *tls);
            let admin = admins.get(&target, admin_secret).await?;
            if let Err(source) = admin.drop_user(role).await {
                admins.forget(&target, admin_secret).await;
                return Err(RevokeError::Postgres {
                    host: host.clone(),
                    port: *port,
                    source,
                });
            }
        }
    }
    let leases: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match leases
        .delete(
            &Lease::secret_name(&lease.lease_id),
            &DeleteParams::default(),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    info!(
        lease = %lease.lease_id,
        provider = %lease.provider,
        token_id = %lease.token_id,
        "credential revoked"
    );
    Ok(())
}

/// Every lease in `namespace` (malformed ones are reported and skipped).
pub async fn list(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<Lease>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default().labels(selector)).await?;
    Ok(list
        .items
        .iter()
        .filter_map(|secret| match Lease::from_secret(secret) {
            Ok(lease) => Some(lease),
            Err(e) => {
                warn!(secret = %secret.name_any(), error = %e, "skipping a malformed credential lease");
                None
            }
        })
        .collect())
}

/// Revokes every lease of `token_id`.
pub async fn revoke_token(
    client: &Client,
    admins: &AdminPool,
    namespace: &str,
    token_id: &str,
) -> Result<usize, RevokeError> {
    let leases = list(client, namespace, &lease::selector_for_token(token_id)).await?;
    for lease in &leases {
        revoke(client, admins, namespace, lease).await?;
    }
    Ok(leases.len())
}

/// What a sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Leases revoked because they expired.
    pub expired: usize,
    /// Leases revoked because their token no longer exists (revoked, rotated out, deleted
    /// while an exchange was minting).
    pub orphaned: usize,
    /// Leases that could not be revoked this time (retried on the next sweep).
    pub failed: usize,
    /// Leases still active, per provider.
    pub active: Vec<(String, u32)>,
    /// When the next one expires.
    pub next_expiry: Option<DateTime<Utc>>,
}

/// Revokes those of `leases` that expired or whose token is not in `live_tokens` (listed
/// after the leases, so a lease minted in between is not taken for an orphan).
pub async fn sweep(
    client: &Client,
    admins: &Arc<AdminPool>,
    namespace: &str,
    leases: Vec<Lease>,
    live_tokens: &HashSet<String>,
    now: DateTime<Utc>,
) -> Sweep {
    let mut result = Sweep::default();
    let mut active: std::collections::BTreeMap<String, u32> = Default::default();
    for lease in leases {
        let expired = lease.is_expired_at(now);
        let orphaned = !live_tokens.contains(&lease.token_id);
        if !expired && !orphaned {
            *active.entry(lease.provider.clone()).or_default() += 1;
            result.next_expiry = Some(
                result
                    .next_expiry
                    .map_or(lease.expires_at, |t| t.min(lease.expires_at)),
            );
            continue;
        }
        match revoke(client, admins, namespace, &lease).await {
            Ok(()) if expired => result.expired += 1,
            Ok(()) => result.orphaned += 1,
            Err(e) => {
                warn!(lease = %lease.lease_id, provider = %lease.provider, error = %e, "cannot revoke a credential; retrying later");
                result.failed += 1;
            }
        }
    }
    result.active = active.into_iter().collect();
    result
}

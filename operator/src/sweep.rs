//! The credential sweep: revokes associated credentials whose lease expired or whose token
//! ended (a revocation that failed, or an exchange that minted while the token was being
//! revoked), and (on the one replica that is told to, `--credential-provider-status`)
//! reports each provider's active credentials in its status. It wakes at the
//! next expiry, so a credential is cut close to when its lease says, and at least every
//! [`PERIOD`].

use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use patrol_api::{lease, record, v1alpha1::CredentialProvider};
use patrol_credentials::{providers::AdminPool, revoke};
use tracing::{info, warn};

use crate::{metrics::Metrics, reconciler::FIELD_MANAGER};

/// Longest time between sweeps.
pub const PERIOD: Duration = Duration::from_secs(15);

pub async fn run(
    client: Client,
    admins: Arc<AdminPool>,
    namespace: String,
    metrics: Arc<Metrics>,
    report_status: bool,
) {
    loop {
        let wait = match sweep_once(&client, &admins, &namespace, &metrics, report_status).await {
            Ok(next) => next,
            Err(e) => {
                warn!(error = %e, "credential sweep failed; retrying");
                PERIOD
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// One sweep; returns how long to wait for the next.
pub async fn sweep_once(
    client: &Client,
    admins: &Arc<AdminPool>,
    namespace: &str,
    metrics: &Metrics,
    report_status: bool,
) -> Result<Duration, kube::Error> {
    // Leases before records: a lease minted after the record list would look orphaned.
    let leases = revoke::list(client, namespace, &lease::selector()).await?;
    // No leases, nothing to judge: skip listing the records.
    let live: HashSet<String> = if leases.is_empty() {
        HashSet::new()
    } else {
        Api::<Secret>::namespaced(client.clone(), namespace)
            .list_metadata(&ListParams::default().labels(&record::selector()))
            .await?
            .items
            .iter()
            .filter_map(|s| s.labels().get(record::TOKEN_ID_LABEL).cloned())
            .collect()
    };
    let now = Utc::now();
    let sweep = revoke::sweep(client, admins, namespace, leases, &live, now).await;
    if sweep.expired + sweep.orphaned > 0 {
        info!(
            expired = sweep.expired,
            orphaned = sweep.orphaned,
            failed = sweep.failed,
            "credential sweep"
        );
    }
    metrics.swept(&sweep);
    if report_status {
        report_providers(client, &sweep.active).await;
    }
    let until_next = sweep
        .next_expiry
        .and_then(|at| (at - now).to_std().ok())
        .map_or(PERIOD, |d| d.min(PERIOD));
    let retry = if sweep.failed > 0 { PERIOD } else { until_next };
    Ok(retry.max(Duration::from_millis(200)))
}

/// Writes `status.kind` and `status.activeLeases` of every provider whose values changed.
async fn report_providers(client: &Client, active: &[(String, u32)]) {
    let api: Api<CredentialProvider> = Api::all(client.clone());
    let providers = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            warn!(error = %e, "cannot list CredentialProviders for their status");
            return;
        }
    };
    for provider in providers {
        let name = provider.name_any();
        let count = active
            .iter()
            .find(|(p, _)| *p == name)
            .map_or(0, |(_, n)| i32::try_from(*n).unwrap_or(i32::MAX));
        let kind = provider.spec.kind().map(|k| k.as_str().to_owned());
        let status = provider.status.as_ref();
        if status.and_then(|s| s.active_leases) == Some(count)
            && status.and_then(|s| s.kind.clone()) == kind
        {
            continue;
        }
        let patch = serde_json::json!({
            "apiVersion": "patrol.dev/v1alpha1",
            "kind": "CredentialProvider",
            "status": {"kind": kind, "activeLeases": count},
        });
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            warn!(provider = %name, error = %e, "cannot write CredentialProvider status");
        }
    }
}

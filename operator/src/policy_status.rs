//! TokenPolicy status: how many tokens each policy governs and how many break its rules.
//!
//! Recomputed every [`INTERVAL`] and whenever a policy changes, from one LIST of the PATs.
//! Counting is advisory (for `kubectl get tokenpolicies`), so a short delay is fine and keeps
//! the operator from holding a second cache of every PAT.

use std::{collections::BTreeMap, time::Duration};

use chrono::Utc;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{
        ApiResource, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, Patch,
        PatchParams,
    },
    runtime::reflector::{ObjectRef, Store},
};
use patrol_api::{
    policy::PolicySet,
    v1alpha1::{PersonalAccessToken, TokenPolicy, TokenPolicyStatus},
};
use tracing::warn;

use crate::reconciler::FIELD_MANAGER;

pub const INTERVAL: Duration = Duration::from_secs(15);

/// Counts for one policy over a set of PATs (pure).
pub fn count(
    policy: &TokenPolicy,
    pats: &[(PersonalAccessToken, BTreeMap<String, String>)],
) -> (i32, i32) {
    let single = PolicySet::new(vec![policy.clone()]);
    let now = Utc::now();
    let (mut governed, mut violating) = (0, 0);
    for (pat, labels) in pats {
        let effective = single.effective_for(labels);
        if effective.policies.is_empty() {
            continue;
        }
        governed += 1;
        let issued = pat
            .status
            .as_ref()
            .and_then(|s| s.issued_at.as_ref())
            .map(patrol_api::time::from_k8s)
            .unwrap_or(now);
        let breaks = !effective.admission_violations(&pat.spec, issued).is_empty()
            || !effective
                .resolve(&pat.spec, issued)
                .non_compliance
                .is_empty();
        if breaks {
            violating += 1;
        }
    }
    (governed, violating)
}

pub async fn run(
    client: Client,
    policies: Store<TokenPolicy>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
) {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(patrol_api::GROUP, "v1alpha1", "PersonalAccessToken"),
        "personalaccesstokens",
    );
    let pats_api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let policy_api: Api<TokenPolicy> = Api::all(client);
    loop {
        if let Err(e) = refresh(&pats_api, &policy_api, &policies, &namespaces).await {
            warn!(error = %e, "could not refresh TokenPolicy status");
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

async fn refresh(
    pats_api: &Api<DynamicObject>,
    policy_api: &Api<TokenPolicy>,
    policies: &Store<TokenPolicy>,
    namespaces: &Store<PartialObjectMeta<Namespace>>,
) -> Result<(), kube::Error> {
    let list = pats_api.list(&ListParams::default()).await?;
    let pats: Vec<(PersonalAccessToken, BTreeMap<String, String>)> = list
        .items
        .into_iter()
        .filter_map(|obj| {
            serde_json::to_value(&obj)
                .and_then(serde_json::from_value::<PersonalAccessToken>)
                .ok()
        })
        .map(|pat| {
            let ns = pat.namespace().unwrap_or_default();
            let labels = namespaces
                .get(&ObjectRef::new(&ns))
                .and_then(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            (pat, labels)
        })
        .collect();
    for policy in policies.state() {
        let (governed, violating) = count(&policy, &pats);
        let old = policy.status.clone().unwrap_or_default();
        let desired = TokenPolicyStatus {
            governed_tokens: governed,
            violating_tokens: violating,
            observed_generation: policy.metadata.generation,
            conditions: old.conditions.clone(),
        };
        if desired == old {
            continue;
        }
        let patch = serde_json::json!({
            "apiVersion": "patrol.dev/v1alpha1",
            "kind": "TokenPolicy",
            "status": desired,
        });
        policy_api
            .patch_status(
                &policy.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
    }
    Ok(())
}

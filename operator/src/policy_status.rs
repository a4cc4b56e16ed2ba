//! TokenPolicy status: how many tokens each policy governs and how many break its rules,
//! and two conditions: `Ready` (valid, and applied to the namespaces it selects) and
//! `Conflicting` (with the other policies of some namespace it leaves a setting no allowed
//! value).
//!
//! Recomputed every [`INTERVAL`] and whenever a policy changes, from one LIST of the PATs.
//! Counting is advisory (for `kubectl get tokenpolicies`), so a short delay is fine and keeps
//! the operator from holding a second cache of every PAT.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Client, ResourceExt,
    api::{
        ApiResource, DynamicObject, GroupVersionKind, ListParams, PartialObjectMeta, Patch,
        PatchParams,
    },
    runtime::reflector::{ObjectRef, Store},
};
use patrol_api::{
    policy::{EffectivePolicy, PolicySet},
    v1alpha1::{PersonalAccessToken, TokenPolicy, TokenPolicyStatus},
    validation,
};
use tracing::warn;

use crate::{metrics::Metrics, reconciler::FIELD_MANAGER};

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

/// Condition types of a TokenPolicy.
pub const READY: &str = "Ready";
pub const CONFLICTING: &str = "Conflicting";
/// Namespaces named in one condition message at most.
const NAMED_NAMESPACES: usize = 5;

/// The rules of each namespace (by its labels, which name it): composed once per refresh
/// and shared by every policy's conditions.
pub fn per_namespace(
    set: &PolicySet,
    namespaces: &[BTreeMap<String, String>],
) -> Vec<(String, EffectivePolicy)> {
    namespaces
        .iter()
        .map(|labels| {
            let name = labels
                .get("kubernetes.io/metadata.name")
                .cloned()
                .unwrap_or_default();
            (name, set.effective_for(labels))
        })
        .collect()
}

/// The conditions of `policy`, given the rules of every namespace ([`per_namespace`]). A
/// condition whose status is unchanged keeps its `lastTransitionTime`.
pub fn conditions(
    policy: &TokenPolicy,
    namespaces: &[(String, EffectivePolicy)],
    old: &[Condition],
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let name = policy.name_any();
    let generation = policy.metadata.generation;
    let errors = validation::validate_policy(&policy.spec);
    let mut selected = 0usize;
    let mut clashes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (namespace, effective) in namespaces {
        if !effective.policies.contains(&name) {
            continue;
        }
        selected += 1;
        for conflict in effective.conflicts() {
            if conflict.policies.contains(&name) {
                clashes
                    .entry(conflict.to_string())
                    .or_default()
                    .push(namespace.clone());
            }
        }
    }
    let ready = if errors.is_empty() {
        (
            "True",
            "Applied",
            format!(
                "Valid; governs PersonalAccessTokens in {selected} namespace{}.",
                if selected == 1 { "" } else { "s" }
            ),
        )
    } else {
        let selector = errors
            .iter()
            .all(|e| e.field.starts_with("spec.namespaceSelector"));
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        (
            "False",
            if selector {
                "InvalidSelector"
            } else {
                "InvalidRules"
            },
            format!("Not applied to any token: {}", list.join("; ")),
        )
    };
    let conflicting = if clashes.is_empty() {
        (
            "False",
            "NoConflict",
            "Every namespace it selects leaves each setting an allowed value.".to_owned(),
        )
    } else {
        let parts: Vec<String> = clashes
            .into_iter()
            .map(|(what, mut namespaces)| {
                namespaces.sort();
                let more = namespaces.len().saturating_sub(NAMED_NAMESPACES);
                namespaces.truncate(NAMED_NAMESPACES);
                let tail = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!("in namespace {}{tail}: {what}", namespaces.join(", "))
            })
            .collect();
        (
            "True",
            "NoCommonValue",
            format!(
                "Every token there breaks a policy: {}. Widen one of them or narrow their namespaceSelectors.",
                parts.join("; ")
            ),
        )
    };
    [(READY, ready), (CONFLICTING, conflicting)]
        .into_iter()
        .map(|(type_, (status, reason, message))| {
            let since = old
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or_else(
                    || patrol_api::time::to_k8s(now),
                    |c| c.last_transition_time.clone(),
                );
            Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

pub async fn run(
    client: Client,
    policies: Store<TokenPolicy>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    metrics: Arc<Metrics>,
) {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(patrol_api::GROUP, "v1alpha1", "PersonalAccessToken"),
        "personalaccesstokens",
    );
    let pats_api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let policy_api: Api<TokenPolicy> = Api::all(client);
    loop {
        if let Err(e) = refresh(&pats_api, &policy_api, &policies, &namespaces, &metrics).await {
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
    metrics: &Metrics,
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
    let all = policies.state();
    let set = PolicySet::new(all.iter().map(|p| p.as_ref()));
    let namespace_labels: Vec<BTreeMap<String, String>> = namespaces
        .state()
        .iter()
        .map(|n| {
            let mut labels = n.metadata.labels.clone().unwrap_or_default();
            labels
                .entry("kubernetes.io/metadata.name".to_owned())
                .or_insert_with(|| n.name_any());
            labels
        })
        .collect();
    let rules = per_namespace(&set, &namespace_labels);
    let now = Utc::now();
    let (mut ready, mut invalid, mut conflicting) = (0, 0, 0);
    for policy in all {
        let (governed, violating) = count(&policy, &pats);
        let old = policy.status.clone().unwrap_or_default();
        let desired = TokenPolicyStatus {
            governed_tokens: governed,
            violating_tokens: violating,
            observed_generation: policy.metadata.generation,
            conditions: conditions(&policy, &rules, &old.conditions, now),
        };
        let is = |type_: &str| {
            desired
                .conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == "True")
        };
        if is(READY) {
            ready += 1;
        } else {
            invalid += 1;
        }
        if is(CONFLICTING) {
            conflicting += 1;
        }
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
    metrics.set_policy_states(ready, invalid, conflicting);
    Ok(())
}

#[cfg(test)]
mod tests {
    use patrol_api::v1alpha1::TokenPolicySpec;
    use serde_json::json;

    use super::*;

    fn policy(name: &str, spec: serde_json::Value) -> TokenPolicy {
        let mut p = TokenPolicy::new(
            name,
            serde_json::from_value::<TokenPolicySpec>(spec).unwrap(),
        );
        p.metadata.generation = Some(3);
        p
    }

    fn namespace(name: &str, team: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("kubernetes.io/metadata.name".to_owned(), name.to_owned()),
            ("team".to_owned(), team.to_owned()),
        ])
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_valid_policy_is_ready_and_says_how_far_it_reaches() {
        let a = policy(
            "a",
            json!({"namespaceSelector": {"matchLabels": {"team": "x"}}, "expiration": {"max": "30d"}}),
        );
        let set = PolicySet::new([&a]);
        let namespaces = [
            namespace("n1", "x"),
            namespace("n2", "x"),
            namespace("n3", "y"),
        ];
        let now: DateTime<Utc> = "2026-12-03T12:00:00Z".parse().unwrap();
        let got = conditions(&a, &per_namespace(&set, &namespaces), &[], now);
        let ready = find(&got, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Applied")
        );
        assert!(ready.message.contains("2 namespaces"), "{}", ready.message);
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(find(&got, CONFLICTING).status, "False");

        // Unchanged status keeps its transition time; a change takes the new one.
        let later: DateTime<Utc> = "2026-12-03T13:00:00Z".parse().unwrap();
        let again = conditions(&a, &per_namespace(&set, &namespaces), &got, later);
        assert_eq!(
            find(&again, READY).last_transition_time,
            ready.last_transition_time
        );
    }

    #[test]
    fn an_invalid_policy_is_not_ready_and_names_the_field() {
        let bad = policy("bad", json!({"expiration": {"max": "forever"}}));
        let selector = policy(
            "sel",
            json!({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Sideways"}]}}),
        );
        let set = PolicySet::new([&bad, &selector]);
        let now = Utc::now();
        let got = conditions(
            &bad,
            &per_namespace(&set, &[namespace("n1", "x")]),
            &[],
            now,
        );
        let ready = find(&got, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidRules")
        );
        assert!(
            ready.message.contains("spec.expiration.max"),
            "{}",
            ready.message
        );
        let got = conditions(
            &selector,
            &per_namespace(&set, &[namespace("n1", "x")]),
            &[],
            now,
        );
        assert_eq!(find(&got, READY).reason, "InvalidSelector");
    }

    #[test]
    fn policies_that_contradict_each_other_somewhere_say_where() {
        let a = policy("a", json!({"secret": {"allowedRetention": ["Persistent"]}}));
        let b = policy(
            "b",
            json!({"namespaceSelector": {"matchLabels": {"team": "x"}}, "secret": {"allowedRetention": ["OneTime"]}}),
        );
        let c = policy("c", json!({"expiration": {"max": "30d"}}));
        let set = PolicySet::new([&a, &b, &c]);
        let namespaces = [namespace("n1", "x"), namespace("n2", "y")];
        let now = Utc::now();
        for clashing in [&a, &b] {
            let got = conditions(clashing, &per_namespace(&set, &namespaces), &[], now);
            let conflicting = find(&got, CONFLICTING);
            assert_eq!(
                (conflicting.status.as_str(), conflicting.reason.as_str()),
                ("True", "NoCommonValue")
            );
            assert!(
                conflicting
                    .message
                    .contains("in namespace n1: no secret retention is allowed by all of a, b"),
                "{}",
                conflicting.message
            );
            assert!(
                !conflicting.message.contains("n2"),
                "{}",
                conflicting.message
            );
        }
        let got = conditions(&c, &per_namespace(&set, &namespaces), &[], now);
        assert_eq!(
            find(&got, CONFLICTING).status,
            "False",
            "c takes no part in it"
        );
    }
}

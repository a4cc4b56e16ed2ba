//! Unit tests of admission: decisions with a fake cluster and a fake SubjectAccessReview,
//! and the HTTP surface with bad input.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::body::Body;
use futures::future::BoxFuture;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::{DynamicObject, admission::AdmissionRequest};
use patrol_api::{
    policy::PolicySet,
    v1alpha1::TokenPolicy,
    validation::{OWNER_IMMUTABLE, REVOKED_IS_FINAL},
};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{
    cluster::{ClusterError, ClusterView},
    owner::{
        AccessReviewer, Impersonated, ImpersonationCheck, ReviewError, impersonation_checks,
        subject_access_review,
    },
    review::{parse_review, response_body},
    *,
};
use crate::{
    metrics::Metrics,
    routes::{AppContext, AppState, HttpLimits, router},
    token_review::IdentityMapping,
    validate::tests::harness,
};

// ---------------------------------------------------------------------------------------
// Fakes

#[derive(Default)]
pub(crate) struct FakeCluster {
    pub policies: Mutex<Vec<TokenPolicy>>,
    pub labels: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    pub unsynced: std::sync::atomic::AtomicBool,
    pub broken: std::sync::atomic::AtomicBool,
}

impl ClusterView for FakeCluster {
    fn is_synced(&self) -> bool {
        !self.unsynced.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn policies(&self) -> PolicySet {
        PolicySet::new(self.policies.lock().unwrap().iter())
    }

    fn namespace_labels<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, ClusterError>> {
        Box::pin(async move {
            if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ClusterError::NoSuchNamespace(namespace.to_owned()));
            }
            let labels = self
                .labels
                .lock()
                .unwrap()
                .get(namespace)
                .cloned()
                .unwrap_or_default();
            Ok(cluster::with_name_label(namespace, labels))
        })
    }
}

/// Answers SubjectAccessReviews from a list of allowed targets, and records the questions.
#[derive(Default)]
pub(crate) struct FakeReviewer {
    pub allowed: Mutex<Vec<Impersonated>>,
    pub failing: std::sync::atomic::AtomicBool,
    pub asked: Mutex<Vec<(Option<String>, Impersonated)>>,
}

impl AccessReviewer for FakeReviewer {
    fn may_impersonate<'a>(
        &'a self,
        requester: &'a UserInfo,
        check: &'a ImpersonationCheck,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        self.asked
            .lock()
            .unwrap()
            .push((requester.username.clone(), check.target.clone()));
        let failing = self.failing.load(std::sync::atomic::Ordering::Relaxed);
        let allowed = self.allowed.lock().unwrap().contains(&check.target);
        Box::pin(async move {
            if failing {
                Err(ReviewError::Timeout)
            } else {
                Ok(allowed)
            }
        })
    }
}

struct World {
    admission: Admission,
    cluster: Arc<FakeCluster>,
    reviewer: Arc<FakeReviewer>,
    metrics: Arc<Metrics>,
}

fn world() -> World {
    let cluster = Arc::new(FakeCluster::default());
    let reviewer = Arc::new(FakeReviewer::default());
    let metrics = Arc::new(Metrics::default());
    World {
        admission: Admission::new(cluster.clone(), reviewer.clone(), metrics.clone()),
        cluster,
        reviewer,
        metrics,
    }
}

/// A synced admission service with no policies, for router tests elsewhere.
pub(crate) fn synced() -> Arc<Admission> {
    Arc::new(world().admission)
}

impl World {
    fn policy(&self, name: &str, spec: Value) {
        let policy: TokenPolicy = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenPolicy",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        self.cluster.policies.lock().unwrap().push(policy);
    }

    fn allow(&self, target: Impersonated) {
        self.reviewer.allowed.lock().unwrap().push(target);
    }

    fn asked(&self) -> Vec<Impersonated> {
        self.reviewer
            .asked
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| t.clone())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Requests

fn alice() -> Value {
    json!({"username": "alice", "uid": "alice-uid", "groups": ["dev", "system:authenticated"]})
}

fn pat(spec: Value) -> Value {
    json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": "laptop", "namespace": "team-a"},
        "spec": spec,
    })
}

fn owned(mut spec: Value) -> Value {
    spec["owner"] = json!({"username": "alice", "uid": "alice-uid", "groups": ["dev"]});
    spec
}

fn policy_object(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "patrol.dev/v1alpha1", "kind": "TokenPolicy", "metadata": {"name": name}, "spec": spec})
}

fn review_json(
    operation: &str,
    kind: &str,
    user: &Value,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Value {
    let (resource, namespace) = match kind {
        "PersonalAccessToken" => ("personalaccesstokens", Some("team-a")),
        "TokenPolicy" => ("tokenpolicies", None),
        _ => ("pods", Some("team-a")),
    };
    let group = if kind == "Pod" { "" } else { "patrol.dev" };
    let version = if kind == "Pod" { "v1" } else { "v1alpha1" };
    let name = object
        .or(old)
        .and_then(|o| o["metadata"]["name"].as_str())
        .unwrap_or_default();
    let mut request = json!({
        "uid": "7f0c1c1e-0000-4000-8000-000000000001",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "name": name,
        "operation": operation,
        "userInfo": user,
        "object": object,
        "oldObject": old,
    });
    if let Some(ns) = namespace {
        request["namespace"] = json!(ns);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

fn request(
    operation: &str,
    kind: &str,
    user: &Value,
    object: Option<&Value>,
    old: Option<&Value>,
) -> AdmissionRequest<DynamicObject> {
    let body = serde_json::to_vec(&review_json(operation, kind, user, object, old)).unwrap();
    parse_review(Some("application/json"), &body).unwrap()
}

async fn create(w: &World, user: &Value, spec: Value) -> Value {
    let r = request(
        "CREATE",
        "PersonalAccessToken",
        user,
        Some(&pat(spec)),
        None,
    );
    response_body(w.admission.validate(&r).await)["response"].clone()
}

async fn update(w: &World, user: &Value, old: Value, new: Value) -> Value {
    let r = request(
        "UPDATE",
        "PersonalAccessToken",
        user,
        Some(&pat(new)),
        Some(&pat(old)),
    );
    response_body(w.admission.validate(&r).await)["response"].clone()
}

fn message(response: &Value) -> &str {
    response["status"]["message"].as_str().unwrap_or_default()
}

fn fields(response: &Value) -> Vec<String> {
    response["status"]["details"]["causes"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn assert_allowed(response: &Value) {
    assert_eq!(response["allowed"], true, "{response:#}");
    assert_eq!(response["uid"], "7f0c1c1e-0000-4000-8000-000000000001");
}

#[track_caller]
fn assert_denied(response: &Value, code: u16, field: &str, needles: &[&str]) {
    assert_eq!(response["allowed"], false, "{response:#}");
    assert_eq!(response["status"]["code"], code, "{response:#}");
    assert_eq!(response["status"]["status"], "Failure");
    assert!(
        fields(response).iter().any(|f| f == field),
        "no cause for {field}: {response:#}"
    );
    let text = message(response);
    assert!(text.contains(field), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "{text:?} lacks {needle:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Mutation

fn apply_patch(object: &Value, response: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch");
    let encoded: k8s_openapi::ByteString =
        serde_json::from_value(response["patch"].clone()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&encoded.0).unwrap();
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    patched
}

#[tokio::test]
async fn mutation_stamps_only_the_owner() {
    let w = world();
    let user = json!({
        "username": "alice", "uid": "alice-uid",
        "groups": ["dev", "system:authenticated", "ops", "dev", "system:serviceaccounts"],
        "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=abc"]},
    });
    let object = pat(
        json!({"displayName": "laptop", "scopes": ["read:pods"], "expiration": {"ttl": "30d"}}),
    );
    let r = request("CREATE", "PersonalAccessToken", &user, Some(&object), None);
    let response = response_body(w.admission.mutate(&r).await)["response"].clone();
    assert_allowed(&response);
    let patch: Value = {
        let encoded: k8s_openapi::ByteString =
            serde_json::from_value(response["patch"].clone()).unwrap();
        serde_json::from_slice(&encoded.0).unwrap()
    };
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/spec/owner", "value": {
            "username": "alice", "uid": "alice-uid", "groups": ["dev", "ops", "system:serviceaccounts"],
        }}])
    );
    let mut expected = object.clone();
    expected["spec"]["owner"] = json!({"username": "alice", "uid": "alice-uid", "groups": ["dev", "ops", "system:serviceaccounts"]});
    assert_eq!(
        apply_patch(&object, &response),
        expected,
        "nothing but spec.owner changes"
    );
}

/// A world whose admission attests owners with a fixed key.
fn attesting_world() -> (World, Arc<attestation::KeyCell>) {
    let mut w = world();
    let keys = Arc::new(attestation::KeyCell::default());
    keys.set(key());
    w.admission = w.admission.with_attestation(keys.clone());
    (w, keys)
}

fn key() -> patrol_api::attestation::AttestationKey {
    patrol_api::attestation::AttestationKey::from_bytes(&[7; 32]).unwrap()
}

/// Whether the patched object's attestation vouches for it, as the operator will check.
fn vouched(
    patched: &Value,
    name: &str,
    created: chrono::DateTime<chrono::Utc>,
) -> Result<(), patrol_api::attestation::Refusal> {
    let pat: patrol_api::v1alpha1::PersonalAccessToken =
        serde_json::from_value(patched.clone()).unwrap();
    let owner = pat.spec.owner.clone().unwrap();
    patrol_api::attestation::verify(
        &key(),
        patched["metadata"]["annotations"][patrol_api::attestation::ANNOTATION].as_str(),
        &patrol_api::attestation::Stored {
            namespace: "team-a",
            name,
            generate_name: pat.metadata.generate_name.as_deref(),
            owner: &owner,
            scopes: &pat.spec.scopes,
            created,
        },
    )
}

/// Alice creates `object`; the mutating webhook's response.
async fn mutate_create(w: &World, object: &Value) -> Value {
    let r = request(
        "CREATE",
        "PersonalAccessToken",
        &alice(),
        Some(object),
        None,
    );
    response_body(w.admission.mutate(&r).await)["response"].clone()
}

#[tokio::test]
async fn a_vetted_owner_is_attested_for_the_operator() {
    let (w, _) = attesting_world();
    let now = chrono::Utc::now();

    // Stamped from the requester: vetted by construction, existing annotations kept.
    let mut object = pat(json!({"displayName": "laptop", "scopes": ["read:pods"]}));
    object["metadata"]["annotations"] = json!({"team": "a"});
    let response = mutate_create(&w, &object).await;
    assert_allowed(&response);
    let patched = apply_patch(&object, &response);
    assert_eq!(patched["metadata"]["annotations"]["team"], "a");
    assert_eq!(vouched(&patched, "laptop", now), Ok(()));
    assert!(w.asked().is_empty(), "the requester needs no review");

    // Someone else as owner, and the requester may not impersonate them: no attestation,
    // and one the requester wrote is removed.
    let mut object = pat(
        json!({"displayName": "x", "owner": {"username": "root", "groups": ["system:masters"]}}),
    );
    object["metadata"]["annotations"] =
        json!({(patrol_api::attestation::ANNOTATION): "v1.1.forged"});
    let response = mutate_create(&w, &object).await;
    assert_allowed(&response);
    let patched = apply_patch(&object, &response);
    assert_eq!(patched["metadata"]["annotations"], json!({}), "{patched}");
    assert_eq!(
        patched["spec"]["owner"]["username"], "root",
        "the owner is validation's to refuse"
    );

    // ... and once they may, it is attested.
    w.allow(Impersonated::User("root".into()));
    w.allow(Impersonated::Group("system:masters".into()));
    let response = mutate_create(&w, &object).await;
    let patched = apply_patch(&object, &response);
    assert_eq!(vouched(&patched, "laptop", now), Ok(()));

    // generateName: bound to the prefix, checked against the name the apiserver picks.
    let mut object = pat(json!({"displayName": "ci"}));
    object["metadata"] = json!({"generateName": "ci-", "namespace": "team-a"});
    let response = mutate_create(&w, &object).await;
    let mut patched = apply_patch(&object, &response);
    let value = patched["metadata"]["annotations"][patrol_api::attestation::ANNOTATION]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(value.contains(".g."), "{value}");
    patched["metadata"]["name"] = json!("ci-4xk2p");
    assert_eq!(vouched(&patched, "ci-4xk2p", now), Ok(()));
    assert_eq!(
        vouched(&patched, "prod-4xk2p", now),
        Err(patrol_api::attestation::Refusal::Mismatch)
    );
}

#[tokio::test]
async fn without_its_key_mutation_refuses_new_tokens() {
    let mut w = world();
    w.admission = w
        .admission
        .with_attestation(Arc::new(attestation::KeyCell::default()));
    assert!(!w.admission.is_ready(), "not ready without the key");
    let r = request(
        "CREATE",
        "PersonalAccessToken",
        &alice(),
        Some(&pat(json!({"displayName": "x"}))),
        None,
    );
    let response = response_body(w.admission.mutate(&r).await)["response"].clone();
    assert_denied(
        &response,
        503,
        "metadata.annotations",
        &["owner-attestation key", "retry"],
    );
    // Other objects and updates are not held up.
    let r = request(
        "CREATE",
        "TokenPolicy",
        &alice(),
        Some(&policy_object("p", json!({}))),
        None,
    );
    assert_allowed(&response_body(w.admission.mutate(&r).await)["response"]);
    let (w, _) = attesting_world();
    assert!(w.admission.is_ready());
}

#[tokio::test]
async fn mutation_leaves_everything_else_alone() {
    let w = world();
    let no_uid = json!({"username": "bob", "groups": ["system:authenticated"]});
    let object = pat(json!({"displayName": "x", "owner": null}));
    let r = request(
        "CREATE",
        "PersonalAccessToken",
        &no_uid,
        Some(&object),
        None,
    );
    let response = response_body(w.admission.mutate(&r).await)["response"].clone();
    let patched = apply_patch(&object, &response);
    assert_eq!(
        patched["spec"]["owner"],
        json!({"username": "bob"}),
        "no uid, no groups, an explicit null replaced"
    );

    type Case<'a> = (&'a str, &'a str, &'a str, Value, Option<Value>);
    let cases: Vec<Case> = vec![
        (
            "owner already set",
            "CREATE",
            "PersonalAccessToken",
            pat(owned(json!({"displayName": "x"}))),
            None,
        ),
        (
            "update",
            "UPDATE",
            "PersonalAccessToken",
            pat(json!({"displayName": "x"})),
            Some(pat(json!({"displayName": "y"}))),
        ),
        (
            "no spec: the schema refuses it",
            "CREATE",
            "PersonalAccessToken",
            json!({"metadata": {"name": "x"}}),
            None,
        ),
        (
            "spec not an object",
            "CREATE",
            "PersonalAccessToken",
            json!({"metadata": {"name": "x"}, "spec": "nope"}),
            None,
        ),
        (
            "policy",
            "CREATE",
            "TokenPolicy",
            policy_object("p", json!({})),
            None,
        ),
    ];
    for (case, op, kind, object, old) in cases {
        let r = request(op, kind, &alice(), Some(&object), old.as_ref());
        let response = response_body(w.admission.mutate(&r).await)["response"].clone();
        assert_allowed(&response);
        assert!(response.get("patch").is_none(), "{case}: {response}");
        assert!(response.get("patchType").is_none(), "{case}");
    }
    let anonymous = json!({"groups": ["system:unauthenticated"]});
    let r = request(
        "CREATE",
        "PersonalAccessToken",
        &anonymous,
        Some(&pat(json!({"displayName": "x"}))),
        None,
    );
    assert!(
        response_body(w.admission.mutate(&r).await)["response"]
            .get("patch")
            .is_none(),
        "no username, no owner"
    );

    let r = request(
        "CREATE",
        "Pod",
        &alice(),
        Some(&json!({"metadata": {"name": "p"}, "spec": {}})),
        None,
    );
    let response = response_body(w.admission.mutate(&r).await)["response"].clone();
    assert_allowed(&response);
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("does not judge /v1 Pod"),
        "{response}"
    );
}

// ---------------------------------------------------------------------------------------
// Validation of tokens: shape and policy

#[tokio::test]
async fn a_token_owned_by_its_creator_is_admitted() {
    let w = world();
    let response = create(
        &w,
        &alice(),
        owned(json!({"displayName": "laptop", "scopes": ["read:pods"]})),
    )
    .await;
    assert_allowed(&response);
    assert!(response.get("warnings").is_none(), "{response}");
    assert!(
        w.asked().is_empty(),
        "no SubjectAccessReview for one's own token"
    );
}

#[tokio::test]
async fn shape_errors_and_a_missing_owner_are_invalid() {
    let w = world();
    let response = create(&w, &alice(), json!({"displayName": "laptop"})).await;
    assert_denied(
        &response,
        422,
        "spec.owner",
        &["is required", "mutating webhook"],
    );
    assert_eq!(response["status"]["reason"], "Invalid");
    assert_eq!(response["status"]["details"]["kind"], "PersonalAccessToken");
    assert_eq!(response["status"]["details"]["group"], "patrol.dev");
    assert_eq!(response["status"]["details"]["name"], "laptop");
    assert!(
        message(&response).starts_with("PersonalAccessToken team-a/laptop is not allowed: "),
        "{}",
        message(&response)
    );

    let response = create(
        &w,
        &alice(),
        owned(json!({"displayName": " ", "scopes": ["a b"], "expiration": {"ttl": "0s"}, "rotation": {"every": "0s"}})),
    )
    .await;
    assert_eq!(
        fields(&response),
        [
            "spec.displayName",
            "spec.scopes[0]",
            "spec.expiration.ttl",
            "spec.rotation.every"
        ]
    );
    assert_eq!(
        response["status"]["details"]["causes"][0]["reason"],
        "FieldValueInvalid"
    );

    let anonymous = json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]});
    let spec = json!({"displayName": "x", "owner": {"username": "system:anonymous", "groups": ["system:unauthenticated"]}});
    let response = create(&w, &anonymous, spec).await;
    assert_denied(&response, 422, "spec.owner.username", &["anonymous user"]);
    assert!(fields(&response).contains(&"spec.owner.groups[0]".to_owned()));
}

/// One policy per rule, each named after what it limits, so every message can be checked
/// for its policy.
fn strict(w: &World) {
    w.policy(
        "lifetime",
        json!({"expiration": {"required": true, "max": "30d"}}),
    );
    w.policy("scopes", json!({"allowedScopes": ["read:*"]}));
    w.policy(
        "secrets",
        json!({"secret": {"allowedRetention": ["OneTime"], "maxRevealWindow": "1h"}}),
    );
    w.policy("exchange", json!({"exchange": {"audiences": ["vault"]}}));
}

#[tokio::test]
async fn each_policy_rule_is_enforced_with_its_policy_named() {
    let w = world();
    strict(&w);
    type Case<'a> = (&'a str, Value, &'a str, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (
            "required expiration",
            json!({}),
            "spec.expiration",
            &["policy lifetime requires every token to expire"],
        ),
        (
            "max lifetime",
            json!({"expiration": {"ttl": "60d"}}),
            "spec.expiration.ttl",
            &["policy lifetime", "30d"],
        ),
        (
            "max lifetime, expiresAt",
            json!({"expiration": {"expiresAt": "2999-01-01T00:00:00Z"}}),
            "spec.expiration.expiresAt",
            &["policy lifetime", "30d"],
        ),
        (
            "scope",
            json!({"expiration": {"ttl": "1d"}, "scopes": ["read:pods", "write:pods"]}),
            "spec.scopes[1]",
            &["\"write:pods\"", "policy scopes", "read:*"],
        ),
        (
            "retention",
            json!({"expiration": {"ttl": "1d"}, "secret": {"retention": "Persistent"}}),
            "spec.secret.retention",
            &["Persistent", "policy secrets", "OneTime"],
        ),
        (
            "reveal window",
            json!({"expiration": {"ttl": "1d"}, "secret": {"revealWindow": "2h"}}),
            "spec.secret.revealWindow",
            &["2h", "policy secrets", "1h"],
        ),
        (
            "audience",
            json!({"expiration": {"ttl": "1d"}, "exchange": {"audiences": ["vault", "grafana"]}}),
            "spec.exchange.audiences[1]",
            &["\"grafana\"", "policy exchange", "vault"],
        ),
    ];
    for (case, spec, field, needles) in cases {
        let mut spec = owned(spec);
        spec["displayName"] = json!(case);
        let response = create(&w, &alice(), spec).await;
        assert_denied(&response, 422, field, needles);
        assert_eq!(
            fields(&response),
            [field],
            "{case}: one rule broken, one cause"
        );
        assert_eq!(
            response["status"]["details"]["causes"][0]["reason"], "FieldValueForbidden",
            "{case}"
        );
    }
    let compliant = owned(
        json!({"displayName": "ok", "expiration": {"ttl": "30d"}, "scopes": ["read:x"], "exchange": {"audiences": ["vault"]}}),
    );
    assert_allowed(&create(&w, &alice(), compliant).await);
    let text = w.metrics.encode().unwrap();
    assert!(
        text.contains("patrol_webhook_admission_reviews_total{webhook=\"validate\",kind=\"PersonalAccessToken\",operation=\"CREATE\",allowed=\"false\"} 7"),
        "{text}"
    );
    assert!(text.contains("patrol_webhook_admission_denials_total{kind=\"PersonalAccessToken\",reason=\"policy\"} 7"), "{text}");
}

#[tokio::test]
async fn policies_apply_by_namespace_label_and_warn() {
    let w = world();
    w.policy(
        "prod-only",
        json!({"namespaceSelector": {"matchLabels": {"env": "prod"}}, "expiration": {"max": "1d"}}),
    );
    w.policy("defaults", json!({"expiration": {"default": "7d"}}));
    w.policy(
        "broken",
        json!({"expiration": {"default": "30d", "max": "1d"}}),
    );
    let long = owned(json!({"displayName": "x", "expiration": {"ttl": "2d"}}));
    let response = create(&w, &alice(), long.clone()).await;
    assert_allowed(&response);
    w.cluster.labels.lock().unwrap().insert(
        "team-a".into(),
        BTreeMap::from([("env".into(), "prod".into())]),
    );
    assert_denied(
        &create(&w, &alice(), long).await,
        422,
        "spec.expiration.ttl",
        &["policy prod-only"],
    );

    let response = create(&w, &alice(), owned(json!({"displayName": "no expiry"}))).await;
    assert_allowed(&response);
    let warnings: Vec<&str> = response["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("expire 1d after issue (default lifetime of policy prod-only)"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("TokenPolicy broken is invalid and not enforced"),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn system_group_owners_need_a_policy_that_allows_them() {
    let w = world();
    let admin = json!({"username": "admin", "groups": ["system:masters", "system:authenticated"]});
    let spec =
        json!({"displayName": "x", "owner": {"username": "admin", "groups": ["system:masters"]}});
    let response = create(&w, &admin, spec.clone()).await;
    assert_denied(
        &response,
        422,
        "spec.owner.groups[0]",
        &["\"system:masters\"", "allowSystemGroups"],
    );
    w.policy("admins", json!({"owners": {"allowSystemGroups": true}}));
    assert_allowed(&create(&w, &admin, spec).await);
}

// ---------------------------------------------------------------------------------------
// Escalation

#[test]
fn impersonation_checks_follow_the_apiservers_rules() {
    let user = |name: &str, uid: Option<&str>, groups: &[&str]| UserInfo {
        username: Some(name.into()),
        uid: uid.map(Into::into),
        groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
        extra: None,
    };
    let owner = |name: &str, uid: Option<&str>, groups: &[&str]| patrol_api::v1alpha1::TokenOwner {
        username: name.into(),
        uid: uid.map(Into::into),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    };
    let alice = user("alice", Some("a-1"), &["dev", "system:authenticated"]);
    let targets = |o| {
        impersonation_checks(&alice, &o)
            .into_iter()
            .map(|c| (c.field, c.target))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        targets(owner(
            "alice",
            Some("a-1"),
            &["dev", "system:authenticated"]
        )),
        []
    );
    assert_eq!(
        targets(owner("alice", None, &[])),
        [],
        "less than oneself needs nothing"
    );
    assert_eq!(
        targets(owner("bob", None, &["dev"])),
        [(
            "spec.owner.username".into(),
            Impersonated::User("bob".into())
        )]
    );
    assert_eq!(
        targets(owner("alice", Some("a-2"), &["dev", "ops"])),
        [
            ("spec.owner.uid".into(), Impersonated::Uid("a-2".into())),
            (
                "spec.owner.groups[1]".into(),
                Impersonated::Group("ops".into())
            ),
        ]
    );
    assert_eq!(
        targets(owner(
            "system:serviceaccount:ci:deployer",
            None,
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:ci",
                "system:serviceaccounts:other",
                "system:authenticated"
            ]
        )),
        [
            (
                "spec.owner.username".into(),
                Impersonated::ServiceAccount {
                    namespace: "ci".into(),
                    name: "deployer".into()
                }
            ),
            (
                "spec.owner.groups[2]".into(),
                Impersonated::Group("system:serviceaccounts:other".into())
            ),
        ],
        "a ServiceAccount's own groups come with it"
    );
    assert_eq!(
        targets(owner("system:serviceaccount:bad", None, &[])),
        [(
            "spec.owner.username".into(),
            Impersonated::User("system:serviceaccount:bad".into())
        )],
        "not a ServiceAccount name: a plain user"
    );

    // The review asked of the apiserver: the requester as subject, impersonation as the action.
    let checks = impersonation_checks(
        &alice,
        &owner("system:serviceaccount:ci:deployer", Some("u"), &[]),
    );
    let sar = serde_json::to_value(subject_access_review(&alice, &checks[0])).unwrap();
    assert_eq!(sar["apiVersion"], "authorization.k8s.io/v1");
    assert_eq!(sar["kind"], "SubjectAccessReview");
    assert_eq!(
        sar["spec"],
        json!({
            "user": "alice", "uid": "a-1", "groups": ["dev", "system:authenticated"],
            "resourceAttributes": {"verb": "impersonate", "group": "", "resource": "serviceaccounts", "namespace": "ci", "name": "deployer"},
        })
    );
    let uid = serde_json::to_value(checks[1].resource_attributes()).unwrap();
    assert_eq!(
        uid,
        json!({"verb": "impersonate", "group": "authentication.k8s.io", "resource": "uids", "name": "u"})
    );
}

#[tokio::test]
async fn another_owner_needs_permission_to_impersonate_them() {
    let w = world();
    let spec = json!({"displayName": "for bob", "owner": {"username": "bob", "groups": ["dev"]}});
    let response = create(&w, &alice(), spec.clone()).await;
    assert_denied(
        &response,
        403,
        "spec.owner.username",
        &[
            "alice may not create a token owned by user \"bob\"",
            "verb impersonate on users, resourceNames [bob]",
            "omit spec.owner",
        ],
    );
    assert_eq!(response["status"]["reason"], "Forbidden");
    assert_eq!(w.asked(), [Impersonated::User("bob".into())]);

    w.allow(Impersonated::User("bob".into()));
    let response = create(&w, &alice(), spec).await;
    assert_allowed(&response);
    assert_eq!(
        response["auditAnnotations"]["owner-impersonation"],
        "user \"bob\""
    );

    let extra_group = json!({"displayName": "ops", "owner": {"username": "alice", "uid": "alice-uid", "groups": ["dev", "ops"]}});
    assert_denied(
        &create(&w, &alice(), extra_group.clone()).await,
        403,
        "spec.owner.groups[1]",
        &[
            "owner group \"ops\" is not one of alice's groups",
            "verb impersonate on groups, resourceNames [ops]",
        ],
    );
    w.allow(Impersonated::Group("ops".into()));
    assert_allowed(&create(&w, &alice(), extra_group).await);

    let sa = json!({"displayName": "ci", "owner": {"username": "system:serviceaccount:ci:deployer", "groups": ["system:serviceaccounts:ci"]}});
    assert_denied(
        &create(&w, &alice(), sa).await,
        403,
        "spec.owner.username",
        &[
            "ServiceAccount ci/deployer",
            "verb impersonate on serviceaccounts, resourceNames [deployer] in namespace ci",
        ],
    );

    let uid = json!({"displayName": "uid", "owner": {"username": "alice", "uid": "someone-else"}});
    assert_denied(
        &create(&w, &alice(), uid).await,
        403,
        "spec.owner.uid",
        &["verb impersonate on uids.authentication.k8s.io, resourceNames [someone-else]"],
    );
    let text = w.metrics.encode().unwrap();
    assert!(
        text.contains("patrol_webhook_admission_access_reviews_total{result=\"denied\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("patrol_webhook_admission_access_reviews_total{result=\"allowed\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn a_credentials_service_account_needs_an_owner_who_may_impersonate_it() {
    let w = world();
    let spec = json!({
        "displayName": "deploy", "owner": {"username": "alice", "uid": "alice-uid", "groups": ["dev"]},
        "credentials": {"serviceAccount": {"name": "deployer"}},
    });
    let response = create(&w, &alice(), spec.clone()).await;
    assert_denied(
        &response,
        403,
        "spec.credentials.serviceAccount",
        &[
            "may not impersonate ServiceAccount",
            "impersonate on serviceaccounts",
        ],
    );
    // Asked as the owner, about the ServiceAccount in the PAT's namespace.
    let deployer = Impersonated::ServiceAccount {
        namespace: "team-a".into(),
        name: "deployer".into(),
    };
    assert_eq!(
        w.reviewer.asked.lock().unwrap().last().cloned(),
        Some((Some("alice".into()), deployer.clone()))
    );
    w.allow(deployer);
    assert_allowed(&create(&w, &alice(), spec).await);

    // Undecidable: refused for now.
    w.reviewer
        .failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let other = json!({
        "displayName": "ops", "owner": {"username": "alice", "uid": "alice-uid", "groups": ["dev"]},
        "credentials": {"serviceAccount": {"name": "ops", "namespace": "prod"}},
    });
    assert_denied(
        &create(&w, &alice(), other).await,
        503,
        "spec.credentials.serviceAccount",
        &["could not be checked", "retry"],
    );
}

#[tokio::test]
async fn unanswerable_permission_checks_refuse_for_now() {
    let w = world();
    w.reviewer
        .failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let response = create(
        &w,
        &alice(),
        json!({"displayName": "x", "owner": {"username": "bob"}}),
    )
    .await;
    assert_denied(
        &response,
        503,
        "spec.owner.username",
        &[
            "could not check whether alice may impersonate user \"bob\"",
            "retry",
        ],
    );
    assert_eq!(response["status"]["reason"], "ServiceUnavailable");
    assert_eq!(response["status"]["details"]["retryAfterSeconds"], 1);
}

// ---------------------------------------------------------------------------------------
// Updates

#[tokio::test]
async fn updates_are_held_to_policy_only_where_they_change_something() {
    let w = world();
    let old = owned(
        json!({"displayName": "old", "expiration": {"ttl": "365d"}, "scopes": ["write:x", "read:y"], "secret": {"retention": "Persistent", "revealWindow": "4h"}}),
    );
    strict(&w); // tightened after the token was admitted

    let mut revoked = old.clone();
    revoked["revoked"] = json!(true);
    let response = update(&w, &alice(), old.clone(), revoked).await;
    assert_allowed(&response);
    let warnings = response["warnings"].as_array().unwrap();
    assert_eq!(
        warnings.len(),
        3,
        "ttl, scope, retention still break a rule: {warnings:?}"
    );
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("spec.expiration.ttl breaks policy lifetime but is unchanged")
    );

    let mut renamed = old.clone();
    renamed["displayName"] = json!("renamed");
    renamed["scopes"] = json!(["read:y", "write:x"]);
    assert_allowed(&update(&w, &alice(), old.clone(), renamed).await);

    type Edit = fn(&mut Value);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "longer ttl",
            |s| s["expiration"]["ttl"] = json!("400d"),
            "spec.expiration.ttl",
        ),
        (
            "shorter but still too long",
            |s| s["expiration"]["ttl"] = json!("60d"),
            "spec.expiration.ttl",
        ),
        (
            "expiration removed",
            |s| s["expiration"] = Value::Null,
            "spec.expiration",
        ),
        (
            "a scope added",
            |s| s["scopes"] = json!(["write:x", "read:y", "admin"]),
            "spec.scopes[2]",
        ),
        (
            "window with OneTime",
            |s| s["secret"] = json!({"retention": "OneTime", "revealWindow": "4h"}),
            "spec.secret.revealWindow",
        ),
        (
            "bad display name",
            |s| s["displayName"] = json!(" "),
            "spec.displayName",
        ),
    ];
    for (case, edit, field) in cases {
        let mut new = old.clone();
        edit(&mut new);
        let response = update(&w, &alice(), old.clone(), new).await;
        assert_denied(&response, 422, field, &[]);
        assert!(
            fields(&response).iter().all(|f| f == field),
            "{case}: only the changed field: {:?}",
            fields(&response)
        );
    }
}

#[tokio::test]
async fn transition_rules_and_the_owner_on_update() {
    let w = world();
    let old = owned(json!({"displayName": "x", "revoked": true}));
    let mut unrevoked = old.clone();
    unrevoked["revoked"] = json!(false);
    assert_denied(
        &update(&w, &alice(), old.clone(), unrevoked).await,
        422,
        "spec.revoked",
        &[REVOKED_IS_FINAL],
    );

    let mut other = old.clone();
    other["owner"]["username"] = json!("bob");
    let response = update(&w, &alice(), old, other).await;
    assert_denied(&response, 422, "spec.owner", &[OWNER_IMMUTABLE]);
    assert!(
        w.asked().is_empty(),
        "an owner change is refused without asking about impersonation"
    );

    // A token from before the mutating webhook: setting its owner is the escalation rule.
    let legacy = json!({"displayName": "legacy"});
    let adopted = json!({"displayName": "legacy", "owner": {"username": "bob"}});
    assert_denied(
        &update(&w, &alice(), legacy.clone(), adopted).await,
        403,
        "spec.owner.username",
        &["bob"],
    );
    assert_eq!(w.asked(), [Impersonated::User("bob".into())]);
    let mine = owned(json!({"displayName": "legacy"}));
    assert_allowed(&update(&w, &alice(), legacy.clone(), mine).await);
    let mut renamed = legacy.clone();
    renamed["displayName"] = json!("still no owner");
    assert_allowed(&update(&w, &alice(), legacy, renamed).await);
}

// ---------------------------------------------------------------------------------------
// Availability

#[tokio::test]
async fn unsynced_caches_or_unknown_labels_refuse_tokens_for_now() {
    let w = world();
    w.cluster
        .unsynced
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(!w.admission.is_ready());
    let spec = owned(json!({"displayName": "x"}));
    let response = create(&w, &alice(), spec.clone()).await;
    assert_denied(
        &response,
        503,
        "metadata.namespace",
        &["has not loaded the TokenPolicies"],
    );
    // Policies need no cache, and neither does mutation.
    let r = request(
        "CREATE",
        "TokenPolicy",
        &alice(),
        Some(&policy_object("p", json!({}))),
        None,
    );
    assert_allowed(&response_body(w.admission.validate(&r).await)["response"]);

    w.cluster
        .unsynced
        .store(false, std::sync::atomic::Ordering::Relaxed);
    w.cluster
        .broken
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_denied(
        &create(&w, &alice(), spec).await,
        503,
        "metadata.namespace",
        &["labels of namespace \"team-a\""],
    );
}

// ---------------------------------------------------------------------------------------
// TokenPolicies

#[tokio::test]
async fn token_policies_are_validated() {
    let w = world();
    let validate = |op: &str, spec: Value, old: Option<Value>| {
        let object = policy_object("p", spec);
        let old = old.map(|o| policy_object("p", o));
        let r = request(op, "TokenPolicy", &alice(), Some(&object), old.as_ref());
        let admission = &w.admission;
        async move { response_body(admission.validate(&r).await)["response"].clone() }
    };
    let response = validate(
        "CREATE",
        json!({"expiration": {"default": "90d", "max": "30d"}}),
        None,
    )
    .await;
    assert_denied(
        &response,
        422,
        "spec.expiration.default",
        &["90d is longer than the maximum 30d"],
    );
    assert!(
        message(&response).starts_with("TokenPolicy p is not allowed: "),
        "{}",
        message(&response)
    );
    let response = validate(
        "CREATE",
        json!({"allowedScopes": ["read:*", "read pods", "a{b}"]}),
        None,
    )
    .await;
    assert_eq!(
        fields(&response),
        ["spec.allowedScopes[1]", "spec.allowedScopes[2]"]
    );
    assert!(
        message(&response).contains("scope pattern \"read pods\" contains ' '"),
        "{}",
        message(&response)
    );
    let response = validate(
        "CREATE",
        json!({"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Like"}]}}),
        None,
    )
    .await;
    assert_denied(
        &response,
        422,
        "spec.namespaceSelector.matchExpressions[0].operator",
        &["unknown operator"],
    );

    let response = validate(
        "CREATE",
        json!({"expiration": {"required": true}, "owners": {"allowSystemGroups": true}}),
        None,
    )
    .await;
    assert_allowed(&response);
    assert_eq!(
        response["warnings"].as_array().unwrap().len(),
        2,
        "{response}"
    );

    let broken = json!({"expiration": {"default": "90d", "max": "30d"}});
    let response = validate("UPDATE", broken.clone(), Some(broken.clone())).await;
    assert_allowed(&response);
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("invalid and not enforced")
    );
    assert_denied(
        &validate("UPDATE", broken, Some(json!({}))).await,
        422,
        "spec.expiration.default",
        &[],
    );
}

#[tokio::test]
async fn what_is_not_judged_is_allowed_and_unknown_patrol_kinds_are_not() {
    let w = world();
    let spec = json!({"displayName": "x"});
    for op in ["DELETE", "CONNECT"] {
        let r = request(
            op,
            "PersonalAccessToken",
            &alice(),
            None,
            Some(&pat(spec.clone())),
        );
        assert_allowed(&response_body(w.admission.validate(&r).await)["response"]);
    }
    let mut body = review_json(
        "CREATE",
        "PersonalAccessToken",
        &alice(),
        Some(&pat(spec.clone())),
        None,
    );
    body["request"]["subResource"] = json!("status");
    let r = parse_review(
        Some("application/json"),
        &serde_json::to_vec(&body).unwrap(),
    )
    .unwrap();
    assert_allowed(&response_body(w.admission.validate(&r).await)["response"]);

    body["request"]["subResource"] = Value::Null;
    body["request"]["kind"]["version"] = json!("v1beta1");
    let r = parse_review(
        Some("application/json"),
        &serde_json::to_vec(&body).unwrap(),
    )
    .unwrap();
    let response = response_body(w.admission.validate(&r).await)["response"].clone();
    assert_denied(
        &response,
        422,
        "kind",
        &[
            "patrol.dev/v1beta1 PersonalAccessToken",
            "upgrade patrol-webhook",
        ],
    );

    let r = request(
        "CREATE",
        "Pod",
        &alice(),
        Some(&json!({"metadata": {"name": "p"}})),
        None,
    );
    let response = response_body(w.admission.validate(&r).await)["response"].clone();
    assert_allowed(&response);
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("narrow the webhook configuration's rules")
    );

    // Objects the schema would never let through are still refused, not panicked on.
    let r = request(
        "CREATE",
        "PersonalAccessToken",
        &alice(),
        Some(&pat(json!({"displayName": 5}))),
        None,
    );
    let response = response_body(w.admission.validate(&r).await)["response"].clone();
    assert_denied(
        &response,
        422,
        "object",
        &["request.object could not be read"],
    );
}

// ---------------------------------------------------------------------------------------
// HTTP: bad input

fn app(admission: Arc<Admission>) -> axum::Router {
    let h = harness();
    let state = AppState(Arc::new(AppContext {
        validator: Arc::new(h.validator),
        identity: IdentityMapping::default(),
        metrics: h.metrics,
        admission,
        catalog: Default::default(),
        draining: Default::default(),
    }));
    router(state, &HttpLimits::default())
}

async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

fn post(path: &str, body: impl Into<Body>, content_type: Option<&str>) -> Request<Body> {
    let mut r = Request::post(path);
    if let Some(ct) = content_type {
        r = r.header(header::CONTENT_TYPE, ct);
    }
    r.body(body.into()).unwrap()
}

#[tokio::test]
async fn both_endpoints_answer_reviews_and_refuse_bad_input_clearly() {
    let app = app(Arc::new(world().admission));
    let secret = patrol_api::token::generate().unwrap();
    let secret = secret.expose_secret().to_owned();
    let good = review_json(
        "CREATE",
        "PersonalAccessToken",
        &alice(),
        Some(&pat(json!({"displayName": "x"}))),
        None,
    );
    for path in ["/mutate", "/validate"] {
        let (status, body) = call(
            &app,
            post(
                path,
                serde_json::to_vec(&good).unwrap(),
                Some("application/json"),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(body["response"]["uid"], good["request"]["uid"]);
    }

    let with = |edit: fn(&mut Value, &str)| {
        let mut v = good.clone();
        edit(&mut v, &secret);
        serde_json::to_vec(&v).unwrap()
    };
    let json = Some("application/json");
    type Case<'a> = (&'a str, Request<Body>, StatusCode, &'a str);
    let mut cases: Vec<Case> = Vec::new();
    for path in ["/mutate", "/validate"] {
        cases.extend([
            (
                "bad JSON",
                post(path, format!("{{\"apiVersion\": \"{secret}"), json),
                StatusCode::BAD_REQUEST,
                "not valid JSON",
            ),
            (
                "not an object",
                post(path, serde_json::to_vec(&json!([secret])).unwrap(), json),
                StatusCode::BAD_REQUEST,
                "JSON object",
            ),
            (
                "v1beta1",
                post(
                    path,
                    with(|v, _| v["apiVersion"] = json!("admission.k8s.io/v1beta1")),
                    json,
                ),
                StatusCode::BAD_REQUEST,
                "serves admission.k8s.io/v1 only",
            ),
            (
                "no apiVersion",
                post(path, with(|v, _| v["apiVersion"] = Value::Null), json),
                StatusCode::BAD_REQUEST,
                "apiVersion is required",
            ),
            (
                "wrong kind",
                post(path, with(|v, s| v["kind"] = json!(s)), json),
                StatusCode::BAD_REQUEST,
                "kind is required and must be AdmissionReview",
            ),
            (
                "no request",
                post(path, with(|v, _| v["request"] = Value::Null), json),
                StatusCode::BAD_REQUEST,
                "request is required",
            ),
            (
                "request a string",
                post(path, with(|v, s| v["request"] = json!(s)), json),
                StatusCode::BAD_REQUEST,
                "request is required",
            ),
            (
                "no uid",
                post(path, with(|v, _| v["request"]["uid"] = json!("")), json),
                StatusCode::BAD_REQUEST,
                "request.uid is required",
            ),
            (
                "bad operation",
                post(
                    path,
                    with(|v, s| v["request"]["operation"] = json!(s)),
                    json,
                ),
                StatusCode::BAD_REQUEST,
                "request.operation is required and must be one of CREATE, UPDATE, DELETE, CONNECT",
            ),
            (
                "no kind",
                post(
                    path,
                    with(|v, _| v["request"]["kind"] = json!({"group": "patrol.dev"})),
                    json,
                ),
                StatusCode::BAD_REQUEST,
                "request.kind is required",
            ),
            (
                "no resource",
                post(
                    path,
                    with(|v, _| v["request"]["resource"] = Value::Null),
                    json,
                ),
                StatusCode::BAD_REQUEST,
                "request.resource is required",
            ),
            (
                "no userInfo",
                post(
                    path,
                    with(|v, _| v["request"]["userInfo"] = Value::Null),
                    json,
                ),
                StatusCode::BAD_REQUEST,
                "request.userInfo is required",
            ),
            (
                "object a string",
                post(path, with(|v, s| v["request"]["object"] = json!(s)), json),
                StatusCode::BAD_REQUEST,
                "request.object must be an object",
            ),
            (
                "userInfo of the wrong shape",
                post(
                    path,
                    with(|v, s| v["request"]["userInfo"]["groups"] = json!(s)),
                    json,
                ),
                StatusCode::BAD_REQUEST,
                "does not match admission.k8s.io/v1: invalid type: string \"…\"",
            ),
            (
                "form content type",
                post(
                    path,
                    serde_json::to_vec(&good).unwrap(),
                    Some("application/x-www-form-urlencoded"),
                ),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "application/json",
            ),
            (
                "no content type",
                post(path, serde_json::to_vec(&good).unwrap(), None),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "application/json",
            ),
            (
                "huge body",
                post(path, vec![b' '; 5 * 1024 * 1024], json),
                StatusCode::PAYLOAD_TOO_LARGE,
                "too large",
            ),
            (
                "GET",
                Request::get(path).body(Body::empty()).unwrap(),
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            ),
        ]);
    }
    for (case, request, want, needle) in cases {
        let (status, body) = call(&app, request).await;
        assert_eq!(status, want, "{case}: {body}");
        assert_eq!(body["kind"], "Status", "{case}: {body}");
        assert_eq!(body["code"], want.as_u16(), "{case}");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{case}: {body}"
        );
        assert!(
            !body.to_string().contains(&secret),
            "{case}: the answer quotes the request"
        );
    }
}

#[tokio::test]
async fn readiness_waits_for_the_admission_caches() {
    let w = world();
    w.cluster
        .unsynced
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let cluster = w.cluster.clone();
    let app = app(Arc::new(w.admission));
    let (status, body) = call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("admission have not synced"),
        "{body}"
    );
    cluster
        .unsynced
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let (status, _) = call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

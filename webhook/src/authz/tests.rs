use chrono::Duration;
use patrol_api::{token::TokenId, v1alpha1::TokenScope};

use super::{
    catalog::ScopeCatalog,
    decide,
    review::{AccessReview, Verdict},
    rules::{Access, ResourceAccess, discovery},
};
use crate::{
    index::{IndexedRecord, tests::record},
    owners::OwnerState,
};

const ID: &str = "AbCdEfGhIjKl";

fn catalog() -> ScopeCatalog {
    let scopes: Vec<TokenScope> = serde_json::from_value(serde_json::json!([
        {"apiVersion": "patrol.dev/v1alpha1", "kind": "TokenScope",
         "metadata": {"name": "read-pods"},
         "spec": {"scope": "read:pods", "rules": [
             {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods"]}]}},
        {"apiVersion": "patrol.dev/v1alpha1", "kind": "TokenScope",
         "metadata": {"name": "deploy"},
         "spec": {"rules": [
             {"verbs": ["*"], "apiGroups": ["apps"], "resources": ["deployments"],
              "namespaces": ["team-a"]}]}}
    ]))
    .expect("TokenScopes");
    ScopeCatalog::build(&scopes, [])
}

fn entry(scopes: &[&str], scoped: bool) -> IndexedRecord {
    let mut r = record(ID, "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA");
    r.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
    r.scoped = scoped;
    IndexedRecord::new(TokenId::parse(ID).expect("id"), r, "s")
}

fn access(verb: &str, group: &str, resource: &str, namespace: &str) -> Access {
    Access::Resource(ResourceAccess {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        namespace: namespace.into(),
        ..ResourceAccess::default()
    })
}

fn review(access: Access, jwt_scopes: Option<&[&str]>) -> AccessReview {
    AccessReview {
        token_id: Some(ID.into()),
        jwt_scopes: jwt_scopes.map(|s| s.iter().map(|s| (*s).to_owned()).collect()),
        access,
    }
}

fn verdict(review: &AccessReview, record: Option<&IndexedRecord>) -> Verdict {
    let now = record.map_or_else(chrono::Utc::now, |r| r.issued_at() + Duration::hours(1));
    decide(
        review,
        record,
        OwnerState::Current,
        Some(&catalog()),
        &discovery(),
        now,
    )
}

#[test]
fn a_scoped_pat_may_do_only_what_its_scopes_permit() {
    let pat = entry(&["read:pods"], true);
    let list_pods = review(access("list", "", "pods", "x"), None);
    assert_eq!(
        verdict(&list_pods, Some(&pat)),
        Verdict::NoOpinion("in_scope")
    );
    for outside in [
        access("list", "", "secrets", "x"),
        access("delete", "", "pods", "x"),
        access("create", "patrol.dev", "personalaccesstokens", "x"),
    ] {
        let v = verdict(&review(outside.clone(), None), Some(&pat));
        let Verdict::Deny { reason, message } = v else {
            panic!("{outside} should be denied")
        };
        assert_eq!(reason, "out_of_scope");
        assert!(
            message.contains("limited to scope read:pods") && message.contains(ID),
            "{message}"
        );
    }
    assert_eq!(
        verdict(
            &review(
                Access::NonResource {
                    path: "/apis/apps/v1".into(),
                    verb: "get".into()
                },
                None
            ),
            Some(&pat)
        ),
        Verdict::NoOpinion("discovery")
    );
}

#[test]
fn namespaced_scopes_stay_in_their_namespaces() {
    let pat = entry(&["deploy"], true);
    let patch = |ns| review(access("patch", "apps", "deployments", ns), None);
    assert_eq!(
        verdict(&patch("team-a"), Some(&pat)),
        Verdict::NoOpinion("in_scope")
    );
    assert_eq!(
        verdict(&patch("team-b"), Some(&pat)).reason(),
        "out_of_scope"
    );
}

#[test]
fn an_unscoped_pat_keeps_its_owners_rights() {
    let pat = entry(&[], false);
    assert_eq!(
        verdict(
            &review(access("delete", "", "secrets", "x"), None),
            Some(&pat)
        ),
        Verdict::NoOpinion("unscoped")
    );
}

#[test]
fn a_token_whose_scopes_policy_dropped_may_do_nothing() {
    let pat = entry(&[], true);
    let v = verdict(&review(access("list", "", "pods", "x"), None), Some(&pat));
    let Verdict::Deny { message, .. } = v else {
        panic!("denied")
    };
    assert!(message.contains("holds no scope"), "{message}");
}

#[test]
fn a_jwt_is_narrowed_by_its_own_scopes_never_widened() {
    let pat = entry(&["read:pods", "deploy"], true);
    let patch = access("patch", "apps", "deployments", "team-a");
    assert_eq!(
        verdict(&review(patch.clone(), None), Some(&pat)),
        Verdict::NoOpinion("in_scope")
    );
    assert_eq!(
        verdict(&review(patch.clone(), Some(&["read:pods"])), Some(&pat)).reason(),
        "out_of_scope",
        "a JWT narrowed to read:pods may not deploy"
    );
    let narrow = entry(&["read:pods"], true);
    assert_eq!(
        verdict(
            &review(patch, Some(&["read:pods", "deploy"])),
            Some(&narrow)
        )
        .reason(),
        "out_of_scope",
        "a JWT's claim never adds a scope its PAT lacks"
    );
}

#[test]
fn revoked_expired_and_idle_tokens_are_denied_whatever_they_may_do() {
    let list_pods = review(access("list", "", "pods", "x"), None);
    assert_eq!(verdict(&list_pods, None).reason(), "unknown_token");

    let mut r = record(ID, "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA");
    r.scopes.clear();
    r.expires_at = Some(r.issued_at + Duration::minutes(30));
    let expired = IndexedRecord::new(TokenId::parse(ID).expect("id"), r, "s");
    assert_eq!(verdict(&list_pods, Some(&expired)).reason(), "expired");

    let idle = entry(&[], false);
    idle.confirm_idle();
    assert_eq!(verdict(&list_pods, Some(&idle)).reason(), "idle");
}

#[test]
fn undefined_scopes_are_named_in_the_denial() {
    let pat = entry(&["read:pods", "write:everything"], true);
    let v = verdict(
        &review(access("list", "", "secrets", "x"), None),
        Some(&pat),
    );
    let Verdict::Deny { message, .. } = v else {
        panic!("denied")
    };
    assert!(
        message.contains("write:everything is defined by no TokenScope"),
        "{message}"
    );
}

#[test]
fn requests_without_a_token_id_are_not_patrols_to_judge() {
    let mut anonymous = review(access("list", "", "secrets", "x"), None);
    anonymous.token_id = None;
    assert_eq!(verdict(&anonymous, None), Verdict::NoOpinion("not_patrol"));
}

#[test]
fn scoped_tokens_wait_for_the_catalog_unscoped_ones_do_not() {
    let list_pods = review(access("list", "", "pods", "x"), None);
    let now = chrono::Utc::now();
    let scoped = entry(&["read:pods"], true);
    assert_eq!(
        decide(
            &list_pods,
            Some(&scoped),
            OwnerState::Current,
            None,
            &discovery(),
            now
        )
        .reason(),
        "not_synced"
    );
    let unscoped = entry(&[], false);
    assert_eq!(
        decide(
            &list_pods,
            Some(&unscoped),
            OwnerState::Current,
            None,
            &discovery(),
            now
        ),
        Verdict::NoOpinion("unscoped")
    );
}

#[test]
fn a_token_whose_service_account_is_gone_is_denied() {
    let list_pods = review(access("list", "", "pods", "x"), None);
    let pat = entry(&[], false);
    let now = chrono::Utc::now();
    assert_eq!(
        decide(
            &list_pods,
            Some(&pat),
            OwnerState::Gone,
            Some(&catalog()),
            &discovery(),
            now
        )
        .reason(),
        "owner_gone"
    );
    assert_eq!(
        decide(
            &list_pods,
            Some(&pat),
            OwnerState::Unknown,
            Some(&catalog()),
            &discovery(),
            now
        )
        .reason(),
        "not_synced"
    );
}

//! Tokens minting tokens. A request authenticated by a Patrol token (a PAT, or a JWT
//! exchanged from one) that creates or changes a PersonalAccessToken is admitted only if
//! that token's scopes explicitly permit creating PersonalAccessTokens there, and then the
//! new token can never hold more than its parent: its scopes are a non-empty subset of the
//! parent's, it expires no later, and its owner carries no scope groups. An unscoped token
//! (its owner's full rights) may not mint tokens at all: otherwise one leaked PAT could
//! mint unlimited fresh ones that survive its revocation. Pure.

use chrono::{DateTime, Utc};
use k8s_openapi::api::authentication::v1::UserInfo;
use patrol_api::v1alpha1::PersonalAccessTokenSpec;

use super::Problem;
use crate::{
    authz::{
        catalog::ScopeCatalog,
        review::{EXTRA_SCOPES, scopes_of},
        rules::{Access, ResourceAccess},
    },
    index::IndexedRecord,
    token_review::EXTRA_TOKEN_ID,
};

/// The Patrol token a request was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentToken {
    pub id: String,
    /// An exchanged JWT's scopes (`None` for a PAT).
    pub jwt_scopes: Option<Vec<String>>,
}

/// The token behind `user`, if a Patrol token authenticated the request.
pub fn parent_token(user: &UserInfo) -> Option<ParentToken> {
    let extra = user.extra.as_ref()?;
    let id = extra.get(EXTRA_TOKEN_ID)?.first()?.clone();
    let jwt_scopes = extra.get(EXTRA_SCOPES).map(|values| scopes_of(values));
    Some(ParentToken { id, jwt_scopes })
}

/// What is wrong with `spec` (created or changed in `namespace` by `parent`).
/// `record` is the index's entry for the parent (`None`: unknown); `catalog` is `None`
/// until the scope catalog has synced.
pub fn minted_by_token(
    parent: &ParentToken,
    record: Option<&IndexedRecord>,
    catalog: Option<&ScopeCatalog>,
    namespace: &str,
    spec: &PersonalAccessTokenSpec,
    scope_group_prefix: &str,
    now: DateTime<Utc>,
) -> Vec<Problem> {
    let id = &parent.id;
    let Some(record) = record.filter(|r| !r.is_expired_at(now)) else {
        return vec![Problem::escalation(
            "spec",
            format!(
                "this request was made with Patrol token {id}, which is revoked, expired or unknown; use your own credentials"
            ),
        )];
    };
    if !record.is_scoped() {
        return vec![Problem::escalation(
            "spec",
            format!(
                "this request was made with Patrol token {id}, which has no scopes: a token with its owner's full rights may not create or change PersonalAccessTokens (a leaked token could mint new ones that outlive its revocation); use your own credentials, or a token with a scope that permits creating PersonalAccessTokens"
            ),
        )];
    }
    let granted: Vec<&str> = record.scopes().collect();
    let parent_scopes: Vec<&str> = match &parent.jwt_scopes {
        None => granted,
        Some(jwt) => jwt
            .iter()
            .map(String::as_str)
            .filter(|s| granted.contains(s))
            .collect(),
    };
    let Some(catalog) = catalog else {
        return vec![Problem::unavailable(
            "spec",
            "patrol-webhook has not loaded the TokenScopes yet; retry in a moment",
        )];
    };
    let create = Access::Resource(ResourceAccess {
        verb: "create".into(),
        group: patrol_api::GROUP.into(),
        resource: "personalaccesstokens".into(),
        namespace: namespace.into(),
        ..ResourceAccess::default()
    });
    if !parent_scopes.iter().any(|s| catalog.permits(s, &create)) {
        return vec![Problem::escalation(
            "spec",
            format!(
                "this request was made with Patrol token {id}, whose scopes ({}) do not permit creating PersonalAccessTokens in namespace {namespace}; use your own credentials",
                parent_scopes.join(", ")
            ),
        )];
    }

    let mut problems = Vec::new();
    if spec.scopes.is_empty() {
        problems.push(Problem::escalation(
            "spec.scopes",
            format!(
                "a token created with Patrol token {id} must name scopes, a subset of {}: without scopes it would have its owner's full rights",
                parent_scopes.join(", ")
            ),
        ));
    }
    for (i, scope) in spec.scopes.iter().enumerate() {
        if !parent_scopes.contains(&scope.as_str()) {
            problems.push(Problem::escalation(
                format!("spec.scopes[{i}]"),
                format!(
                    "scope {scope:?} is not held by Patrol token {id}, which created this token; choose among {}",
                    parent_scopes.join(", ")
                ),
            ));
        }
    }
    if let Some(parent_end) = record.expires_at() {
        let end = requested_end(spec, now);
        match end {
            Some(end) if end <= parent_end => {}
            _ => problems.push(Problem::escalation(
                "spec.expiration",
                format!(
                    "a token created with Patrol token {id} must expire no later than it does ({}); set spec.expiration.expiresAt or a ttl that ends by then",
                    parent_end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )),
        }
    }
    if let Some(owner) = &spec.owner {
        for (i, group) in owner.groups.iter().enumerate() {
            if group.starts_with(scope_group_prefix) {
                problems.push(Problem::escalation(
                    format!("spec.owner.groups[{i}]"),
                    format!(
                        "group {group:?} is a scope group of the token that made this request, not a group of its owner; remove it"
                    ),
                ));
            }
        }
    }
    problems
}

/// When `spec` asks to expire, from `now`; `None`: never, or unreadable.
fn requested_end(spec: &PersonalAccessTokenSpec, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let expiration = spec.expiration.as_ref()?;
    if let Some(ttl) = &expiration.ttl {
        let ttl = ttl.parse().ok()?;
        return now.checked_add_signed(chrono::Duration::from_std(ttl).ok()?);
    }
    expiration
        .expires_at
        .as_ref()
        .map(patrol_api::time::from_k8s)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use patrol_api::{token::TokenId, v1alpha1::TokenScope};

    use super::*;
    use crate::index::tests::record;

    const ID: &str = "AbCdEfGhIjKl";

    fn catalog() -> ScopeCatalog {
        let scopes: Vec<TokenScope> = serde_json::from_value(serde_json::json!([
            {"apiVersion": "patrol.dev/v1alpha1", "kind": "TokenScope",
             "metadata": {"name": "mint"},
             "spec": {"scope": "tokens:mint", "rules": [
                 {"verbs": ["create", "update", "patch"], "apiGroups": ["patrol.dev"],
                  "resources": ["personalaccesstokens"], "namespaces": ["ci"]}]}}
        ]))
        .expect("TokenScopes");
        ScopeCatalog::build(&scopes, [])
    }

    fn parent(scopes: &[&str], scoped: bool, hours_left: Option<i64>) -> IndexedRecord {
        let mut r = record(ID, "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA");
        r.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        r.scoped = scoped;
        r.issued_at = Utc::now();
        r.expires_at = hours_left.map(|h| Utc::now() + chrono::Duration::hours(h));
        IndexedRecord::new(TokenId::parse(ID).expect("id"), r, "s")
    }

    fn child(scopes: &[&str], ttl: Option<&str>) -> PersonalAccessTokenSpec {
        serde_json::from_value(serde_json::json!({
            "displayName": "child",
            "owner": {"username": "alice", "groups": ["dev"]},
            "scopes": scopes,
            "expiration": ttl.map(|t| serde_json::json!({"ttl": t})),
        }))
        .expect("spec")
    }

    fn judge(
        record: Option<&IndexedRecord>,
        ns: &str,
        spec: &PersonalAccessTokenSpec,
    ) -> Vec<Problem> {
        let token = ParentToken {
            id: ID.into(),
            jwt_scopes: None,
        };
        minted_by_token(
            &token,
            record,
            Some(&catalog()),
            ns,
            spec,
            "patrol:scope:",
            Utc::now(),
        )
    }

    #[test]
    fn reads_the_parent_from_user_extra() {
        let user = UserInfo {
            username: Some("alice".into()),
            extra: Some(BTreeMap::from([
                (EXTRA_TOKEN_ID.to_owned(), vec![ID.to_owned()]),
                (EXTRA_SCOPES.to_owned(), vec!["a b".to_owned()]),
            ])),
            ..UserInfo::default()
        };
        assert_eq!(
            parent_token(&user),
            Some(ParentToken {
                id: ID.into(),
                jwt_scopes: Some(vec!["a".into(), "b".into()])
            })
        );
        assert_eq!(parent_token(&UserInfo::default()), None);
    }

    #[test]
    fn an_unscoped_or_unknown_token_may_not_mint() {
        let spec = child(&["tokens:mint"], Some("1h"));
        let unscoped = parent(&[], false, None);
        let problems = judge(Some(&unscoped), "ci", &spec);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.contains("has no scopes"),
            "{}",
            problems[0]
        );
        assert!(
            judge(None, "ci", &spec)[0]
                .message
                .contains("revoked, expired or unknown")
        );
    }

    #[test]
    fn a_token_without_the_scope_to_mint_may_not() {
        let reader = parent(&["read:pods"], true, None);
        let problems = judge(Some(&reader), "ci", &child(&["read:pods"], None));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .message
                .contains("do not permit creating PersonalAccessTokens")
        );
        let minter = parent(&["tokens:mint"], true, None);
        assert!(
            !judge(Some(&minter), "elsewhere", &child(&["tokens:mint"], None)).is_empty(),
            "the scope permits minting in namespace ci only"
        );
    }

    #[test]
    fn a_minted_token_never_holds_more_than_its_parent() {
        let minter = parent(&["tokens:mint", "read:pods"], true, Some(24));
        assert!(judge(Some(&minter), "ci", &child(&["read:pods"], Some("12h"))).is_empty());

        let fields = |spec: &PersonalAccessTokenSpec| -> Vec<String> {
            judge(Some(&minter), "ci", spec)
                .into_iter()
                .map(|p| p.field)
                .collect()
        };
        assert_eq!(fields(&child(&[], Some("1h"))), ["spec.scopes"]);
        assert_eq!(
            fields(&child(&["read:pods", "admin"], Some("1h"))),
            ["spec.scopes[1]"]
        );
        assert_eq!(
            fields(&child(&["read:pods"], Some("48h"))),
            ["spec.expiration"]
        );
        assert_eq!(fields(&child(&["read:pods"], None)), ["spec.expiration"]);
        let mut grouped = child(&["read:pods"], Some("1h"));
        if let Some(owner) = grouped.owner.as_mut() {
            owner.groups.push("patrol:scope:admin".into());
        }
        assert_eq!(fields(&grouped), ["spec.owner.groups[1]"]);
    }
}

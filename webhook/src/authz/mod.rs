//! Authorization of requests made with Patrol tokens: a token does only what its owner
//! may **and** what its scopes permit.
//!
//! The kube-apiserver's structured authorization configuration puts Patrol's webhook
//! before RBAC and sends it only requests carrying Patrol's `patrol.dev/token-id` extra
//! (every other request never reaches Patrol). For those, Patrol
//!
//! - denies a token it no longer knows (revoked, deleted, rotated out), an expired one and
//!   an idle one, at once, whatever the apiserver's authentication cache still holds;
//! - denies what none of the token's scopes permits (an exchanged JWT's scopes, a subset
//!   of its PAT's, narrow further), except discovery, which every user may do;
//! - has no opinion otherwise, so RBAC decides with the owner's rights.
//!
//! It never allows, so a scope can only take rights away. A token without scopes keeps
//! its owner's full rights (the classic PAT; policies can require scopes).
//!
//! Rooms: [`rules`] (RBAC-style matching), [`catalog`] (every scope's rules, from
//! TokenScopes and ClusterRoles), [`review`] (the SubjectAccessReview wire format),
//! [`watch`] (keeping the catalog current). This module holds the decision, pure.

pub mod catalog;
pub mod review;
pub mod rules;
pub mod watch;

use chrono::{DateTime, Utc};

use crate::{index::IndexedRecord, owners::OwnerState};
use catalog::ScopeCatalog;
use review::{AccessReview, Verdict};
use rules::Rule;

/// Decides one review. `record` is the index's entry for the review's token id (`None`:
/// unknown; the caller has checked that the index is synced); `catalog` is `None` until
/// the scope catalog has synced, and then only unscoped tokens can be decided.
pub fn decide(
    review: &AccessReview,
    record: Option<&IndexedRecord>,
    owner: OwnerState,
    catalog: Option<&ScopeCatalog>,
    discovery: &[Rule],
    now: DateTime<Utc>,
) -> Verdict {
    let Some(id) = review.token_id.as_deref() else {
        return Verdict::NoOpinion("not_patrol");
    };
    let Some(record) = record else {
        return Verdict::Deny {
            reason: "unknown_token",
            message: format!(
                "Patrol token {id} is revoked, deleted or rotated out: use a current token"
            ),
        };
    };
    if record.is_expired_at(now) {
        return Verdict::Deny {
            reason: "expired",
            message: format!("Patrol token {id} has expired: rotate it or create a new one"),
        };
    }
    if record.idle_confirmed() {
        return Verdict::Deny {
            reason: "idle",
            message: format!(
                "Patrol token {id} expired after being unused too long: rotate it or create a new one"
            ),
        };
    }
    match owner {
        OwnerState::Current => {}
        OwnerState::Gone => {
            return Verdict::Deny {
                reason: "owner_gone",
                message: format!(
                    "Patrol token {id} belongs to ServiceAccount {}, which was deleted or recreated: create a new token",
                    record.username()
                ),
            };
        }
        OwnerState::Unknown => {
            return Verdict::Deny {
                reason: "not_synced",
                message: "Patrol has not loaded the ServiceAccounts yet and cannot tell whether this token's owner still exists; retry shortly".into(),
            };
        }
    }
    let granted: Vec<&str> = record.scopes().collect();
    let effective: Vec<&str> = match (record.is_scoped(), &review.jwt_scopes) {
        (false, None) => return Verdict::NoOpinion("unscoped"),
        (false, Some(jwt)) => jwt.iter().map(String::as_str).collect(),
        (true, None) => granted,
        (true, Some(jwt)) => jwt
            .iter()
            .map(String::as_str)
            .filter(|s| granted.contains(s))
            .collect(),
    };
    if discovery.iter().any(|rule| rule.permits(&review.access)) {
        return Verdict::NoOpinion("discovery");
    }
    let Some(catalog) = catalog else {
        return Verdict::Deny {
            reason: "not_synced",
            message: "Patrol has not loaded the TokenScopes yet and cannot decide what this token's scopes permit; retry shortly".into(),
        };
    };
    if effective
        .iter()
        .any(|scope| catalog.permits(scope, &review.access))
    {
        return Verdict::NoOpinion("in_scope");
    }
    Verdict::Deny {
        reason: "out_of_scope",
        message: out_of_scope(id, &effective, catalog, &review.access),
    }
}

fn out_of_scope(
    id: &str,
    scopes: &[&str],
    catalog: &ScopeCatalog,
    access: &rules::Access,
) -> String {
    if scopes.is_empty() {
        return format!(
            "Patrol token {id} holds no scope, so it may not {access}: ask for a token with a scope that permits it"
        );
    }
    let undefined: Vec<&str> = scopes
        .iter()
        .copied()
        .filter(|s| !catalog.defines(s))
        .collect();
    let mut message = format!(
        "Patrol token {id} is limited to scope{} {}, which do{} not permit {access}",
        if scopes.len() == 1 { "" } else { "s" },
        scopes.join(", "),
        if scopes.len() == 1 { "es" } else { "" },
    );
    if !undefined.is_empty() {
        let (is, permits) = if undefined.len() == 1 {
            ("is", "permits")
        } else {
            ("are", "permit")
        };
        message.push_str(&format!(
            " ({} {is} defined by no TokenScope and {permits} nothing)",
            undefined.join(", ")
        ));
    }
    message
}

#[cfg(test)]
mod tests;

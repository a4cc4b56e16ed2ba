//! The admission rules for Patrol's resources, as pure functions of the objects, the
//! effective policy and the time.
//!
//! **Create.** `validate_token` (shape), `spec.owner` present (the mutating webhook stamps
//! it; its absence means that webhook did not run), no anonymous owner, and every rule of
//! the effective policy (`admission_violations`).
//!
//! **Update.** `validate_token_update` (the CEL transition rules: owner immutable once set,
//! revocation final, Secret name fixed), then shape and policy for the *fields that
//! changed* only. A token admitted under yesterday's policy stays editable where the edit
//! does not touch what today's policy forbids — above all, its owner can always revoke it.
//! What still breaks a rule but did not change is reported as a warning; the operator keeps
//! enforcing the policy when it issues (it clamps lifetimes and drops scopes).
//!
//! "Changed" is decided per reported field, on the JSON of `{metadata.name, spec}`: a list
//! item (`spec.scopes[2]`) changed if the old list does not hold the same value anywhere
//! (reordering is no change); any other field if its value differs. The reveal window is
//! also held to policy when the retention mode changed, since the window only matters for
//! `OneTime` Secrets.

use chrono::{DateTime, Utc};
use patrol_api::{
    policy::EffectivePolicy,
    v1alpha1::{PersonalAccessTokenSpec, TokenPolicySpec},
    validation::{validate_policy, validate_token, validate_token_update},
};
use serde_json::{Value, json};

use super::Problem;

/// The message when a token reaches validation without an owner.
pub const OWNER_MISSING: &str = "is required: Patrol's mutating webhook sets it to the creating user when it is omitted, and did not run; set spec.owner, or install the mutating webhook configuration";
/// The message for a token owned by the anonymous user.
pub const ANONYMOUS_OWNER: &str = "tokens cannot be owned by the anonymous user; authenticate before creating a PersonalAccessToken";

/// Fields held to policy when another field changes, because a rule on the first depends
/// on the second.
const DEPENDS_ON: &[(&str, &str)] = &[("spec.secret.revealWindow", "spec.secret.retention")];

/// Why a new token may not be admitted now.
pub fn token_create(
    name: &str,
    spec: &PersonalAccessTokenSpec,
    policy: &EffectivePolicy,
    now: DateTime<Utc>,
) -> Vec<Problem> {
    let mut problems: Vec<Problem> = validate_token(name, spec)
        .into_iter()
        .map(Problem::from)
        .collect();
    match &spec.owner {
        None => problems.push(Problem::invalid("spec.owner", OWNER_MISSING)),
        Some(owner) => problems.extend(anonymous_owner(owner)),
    }
    problems.extend(
        policy
            .admission_violations(spec, now)
            .into_iter()
            .map(Problem::from),
    );
    problems
}

/// What an update is refused for, and what it may do despite breaking a rule.
#[derive(Debug, Default, PartialEq)]
pub struct UpdateOutcome {
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

/// Why an update may not be admitted now (see the module docs).
pub fn token_update(
    name: &str,
    old: &PersonalAccessTokenSpec,
    new: &PersonalAccessTokenSpec,
    policy: &EffectivePolicy,
    now: DateTime<Utc>,
) -> UpdateOutcome {
    let before = document(name, old);
    let after = document(name, new);
    let changed = |field: &str| field_changed(field, &before, &after);
    let mut outcome = UpdateOutcome {
        problems: validate_token_update(old, new)
            .into_iter()
            .map(Problem::from)
            .collect(),
        warnings: Vec::new(),
    };
    outcome.problems.extend(
        validate_token(name, new)
            .into_iter()
            .filter(|e| changed(&e.field))
            .map(Problem::from),
    );
    if old.owner.is_none()
        && let Some(owner) = &new.owner
    {
        outcome.problems.extend(anonymous_owner(owner));
    }
    for violation in policy.admission_violations(new, now) {
        if changed(&violation.field) {
            outcome.problems.push(violation.into());
        } else {
            let policy = violation.policy.as_deref().map_or_else(
                || "Patrol's system-group rule".to_owned(),
                |p| format!("policy {p}"),
            );
            outcome.warnings.push(format!(
                "{} breaks {policy} but is unchanged, so this update is allowed; the operator enforces the policy when it issues",
                violation.field
            ));
        }
    }
    let widened = widened_fields(old, new);
    if !widened.is_empty() {
        outcome.warnings.push(format!(
            "this change widens {} of a token that may already be in use; the live token keeps its current limits, and the new ones apply to the token the next rotation issues (set spec.rotation.requestedAt)",
            widened.join(", ")
        ));
    }
    outcome
}

/// What an update asks to widen on a live token: a scope it lacked, a later or no expiry
/// (`ttl` or `expiresAt`), more exchange audiences or actors. The operator holds these
/// back until a rotation; admission says so.
fn widened_fields(
    old: &PersonalAccessTokenSpec,
    new: &PersonalAccessTokenSpec,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    let scoped = !old.scopes.is_empty();
    if scoped && (new.scopes.is_empty() || new.scopes.iter().any(|s| !old.scopes.contains(s))) {
        out.push("spec.scopes");
    }
    if old.expiration.is_some() && old.expiration != new.expiration {
        let longer = match (
            old.expiration
                .as_ref()
                .and_then(|e| e.ttl.as_ref())
                .and_then(|d| d.parse().ok()),
            new.expiration
                .as_ref()
                .and_then(|e| e.ttl.as_ref())
                .and_then(|d| d.parse().ok()),
        ) {
            (Some(before), Some(after)) => after > before,
            _ => match (
                old.expiration.as_ref().and_then(|e| e.expires_at.as_ref()),
                new.expiration.as_ref().and_then(|e| e.expires_at.as_ref()),
            ) {
                (Some(before), Some(after)) => after.0 > before.0,
                _ => true,
            },
        };
        if longer {
            out.push("spec.expiration");
        }
    }
    let exchange = |spec: &PersonalAccessTokenSpec| spec.exchange.clone().unwrap_or_default();
    let (before, after) = (exchange(old), exchange(new));
    if !before.audiences.is_empty()
        && (after.audiences.is_empty()
            || after
                .audiences
                .iter()
                .any(|a| !before.audiences.contains(a)))
    {
        out.push("spec.exchange.audiences");
    }
    if after
        .allowed_actors
        .iter()
        .any(|a| !before.allowed_actors.contains(a))
    {
        out.push("spec.exchange.allowedActors");
    }
    out
}

#[cfg(test)]
mod widening_tests {
    use super::*;

    fn spec(value: serde_json::Value) -> PersonalAccessTokenSpec {
        serde_json::from_value(value).expect("spec")
    }

    #[test]
    fn widening_updates_are_named() {
        let old = spec(serde_json::json!({
            "displayName": "t", "scopes": ["read:pods"], "expiration": {"ttl": "30d"},
            "exchange": {"audiences": ["k8s"], "allowedActors": ["ci"]}
        }));
        let same = old.clone();
        assert!(widened_fields(&old, &same).is_empty());
        let narrower = spec(serde_json::json!({
            "displayName": "t", "scopes": ["read:pods"], "expiration": {"ttl": "7d"},
            "exchange": {"audiences": ["k8s"]}
        }));
        assert!(widened_fields(&old, &narrower).is_empty());
        let wider = spec(serde_json::json!({
            "displayName": "t", "scopes": ["read:pods", "admin"], "expiration": {"ttl": "90d"},
            "exchange": {"audiences": ["k8s", "vault"], "allowedActors": ["ci", "x"]}
        }));
        assert_eq!(
            widened_fields(&old, &wider),
            [
                "spec.scopes",
                "spec.expiration",
                "spec.exchange.audiences",
                "spec.exchange.allowedActors"
            ]
        );
        let unscoped = spec(serde_json::json!({"displayName": "t"}));
        assert_eq!(
            widened_fields(&old, &unscoped),
            ["spec.scopes", "spec.expiration", "spec.exchange.audiences"]
        );
    }
}

/// The owner the escalation rule applies to: the new one on create, and on update only
/// when one is set where there was none (changing an owner is refused as immutable).
pub fn owner_to_check<'a>(
    old: Option<&PersonalAccessTokenSpec>,
    new: &'a PersonalAccessTokenSpec,
) -> Option<&'a patrol_api::v1alpha1::TokenOwner> {
    match old {
        None => new.owner.as_ref(),
        Some(old) if old.owner.is_none() => new.owner.as_ref(),
        Some(_) => None,
    }
}

/// Why a TokenPolicy may not be admitted.
pub fn policy(spec: &TokenPolicySpec) -> Vec<Problem> {
    validate_policy(spec)
        .into_iter()
        .map(Problem::from)
        .collect()
}

/// What an administrator should know about a valid policy before it takes effect.
pub fn policy_warnings(spec: &TokenPolicySpec) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(expiration) = &spec.expiration
        && expiration.required
        && expiration.default.is_none()
    {
        warnings.push(
            "expiration.required without expiration.default: tokens that set no expiration will be refused in the namespaces this policy selects".to_owned(),
        );
    }
    if spec.allowed_scopes.as_ref().is_some_and(Vec::is_empty) {
        warnings.push("allowedScopes is empty: tokens with any scope will be refused".to_owned());
    }
    if spec.owners.as_ref().is_some_and(|o| o.allow_system_groups) {
        warnings.push(
            "owners.allowSystemGroups: tokens for members of system groups such as system:masters will be admitted".to_owned(),
        );
    }
    warnings
}

fn anonymous_owner(owner: &patrol_api::v1alpha1::TokenOwner) -> Vec<Problem> {
    let mut problems = Vec::new();
    if owner.username == "system:anonymous" {
        problems.push(Problem::invalid("spec.owner.username", ANONYMOUS_OWNER));
    }
    for (i, group) in owner.groups.iter().enumerate() {
        if group == "system:unauthenticated" {
            problems.push(Problem::invalid(
                format!("spec.owner.groups[{i}]"),
                ANONYMOUS_OWNER,
            ));
        }
    }
    problems
}

/// What changes are compared on.
fn document(name: &str, spec: &PersonalAccessTokenSpec) -> Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

/// One step of a field path: `spec`, `scopes`, `[2]`.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `spec.scopes[2]` → `[Key(spec), Key(scopes), Index(2)]`; `None` for anything else.
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if key.is_empty() {
            return None;
        }
        out.push(Step::Key(key));
        while let Some(inner) = rest.strip_prefix('[') {
            let (index, after) = inner.split_once(']')?;
            out.push(Step::Index(index.parse().ok()?));
            rest = after;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

fn lookup<'v>(value: &'v Value, steps: &[Step<'_>]) -> Option<&'v Value> {
    steps.iter().try_fold(value, |v, step| match step {
        Step::Key(key) => v.get(*key),
        Step::Index(i) => v.get(*i),
    })
}

/// Whether the update changed `field` (see the module docs). A path this module cannot
/// read counts as changed, so an unknown rule is enforced rather than skipped.
fn field_changed(field: &str, before: &Value, after: &Value) -> bool {
    let Some(path) = steps(field) else {
        return true;
    };
    let differs = match path.split_last() {
        Some((Step::Index(_), list)) => match (
            lookup(after, &path),
            lookup(before, list).and_then(Value::as_array),
        ) {
            (Some(item), Some(old_items)) => !old_items.contains(item),
            _ => true,
        },
        _ => lookup(before, &path) != lookup(after, &path),
    };
    differs
        || DEPENDS_ON
            .iter()
            .filter(|(dependent, _)| *dependent == field)
            .any(|(_, on)| field_changed(on, before, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_read_or_refused() {
        assert_eq!(
            steps("spec.scopes[12]"),
            Some(vec![
                Step::Key("spec"),
                Step::Key("scopes"),
                Step::Index(12)
            ])
        );
        assert_eq!(
            steps("metadata.name"),
            Some(vec![Step::Key("metadata"), Step::Key("name")])
        );
        assert_eq!(
            steps("spec.a[1][2].b"),
            Some(vec![
                Step::Key("spec"),
                Step::Key("a"),
                Step::Index(1),
                Step::Index(2),
                Step::Key("b")
            ])
        );
        for bad in ["", "spec..x", "spec.x[", "spec.x[a]", "spec.x[1]y", "[1]"] {
            assert_eq!(steps(bad), None, "{bad}");
        }
    }

    #[test]
    fn changes_are_found_per_field() {
        let before = json!({"spec": {"scopes": ["a", "b"], "secret": {"retention": "OneTime", "revealWindow": "2h"}, "x": 1}});
        let reordered = json!({"spec": {"scopes": ["b", "a"], "secret": {"retention": "OneTime", "revealWindow": "2h"}, "x": 1}});
        let added = json!({"spec": {"scopes": ["b", "c"], "secret": {"retention": "Persistent", "revealWindow": "2h"}, "x": 2}});
        assert!(!field_changed("spec.scopes[0]", &before, &reordered));
        assert!(!field_changed("spec.x", &before, &reordered));
        assert!(!field_changed(
            "spec.secret.revealWindow",
            &before,
            &reordered
        ));
        assert!(
            !field_changed("spec.scopes[0]", &before, &added),
            "b was there"
        );
        assert!(field_changed("spec.scopes[1]", &before, &added), "c is new");
        assert!(field_changed("spec.x", &before, &added));
        assert!(
            field_changed("spec.secret.revealWindow", &before, &added),
            "retention changed"
        );
        assert!(field_changed(
            "spec.unknown",
            &before,
            &json!({"spec": {"unknown": 1}})
        ));
        assert!(!field_changed("spec.unknown", &before, &before));
        assert!(
            field_changed("spec.scopes[", &before, &before),
            "unreadable paths count as changed"
        );
    }
}

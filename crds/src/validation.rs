//! Validation of Patrol's resources: pure functions that return every problem at once.
//!
//! The CRD schema and its CEL rules already stop most malformed objects at the apiserver.
//! This module states the same rules in Rust, so the admission webhook, the operator and the
//! tests agree with the schema without a round trip, and adds what CEL cannot say well:
//! duration arithmetic (a policy's default no longer than its max), DNS-1123 names label by
//! label, label-selector operators. Every function collects all errors instead of stopping
//! at the first, so one `kubectl apply` shows the whole list.
//!
//! Messages say what is wrong and what would be accepted. Duration errors carry
//! [`Duration::parse`]'s own message, which ends with the accepted forms.

use std::{collections::HashMap, fmt, time::Duration as StdDuration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::{
    duration::{self, Duration},
    policy::ScopePattern,
    v1alpha1::{
        MAX_DISPLAY_NAME, MAX_NAME, MAX_SCOPE_LEN, MAX_SCOPES, PersonalAccessTokenSpec,
        TokenPolicySpec,
    },
};

/// CEL message of the owner-immutability rule on `PersonalAccessTokenSpec`.
pub const OWNER_IMMUTABLE: &str =
    "spec.owner is immutable once set; create a new PersonalAccessToken for another owner";
/// CEL message of the revocation rule on `PersonalAccessTokenSpec`.
pub const REVOKED_IS_FINAL: &str = "spec.revoked cannot be set back to false: a revoked token stays revoked; create a new PersonalAccessToken";
/// CEL message of the rule on `SecretDelivery`.
pub const SECRET_NAME_IMMUTABLE: &str = "spec.secret.name is immutable";
/// CEL message of the one-of rule on `Expiration`.
pub const EXPIRATION_ONE_OF: &str =
    "set exactly one of spec.expiration.ttl or spec.expiration.expiresAt";

/// Schema limits that have no named constant in `v1alpha1`; a test checks each against the
/// generated CRD so the two cannot drift.
pub const MAX_SUBJECT_LEN: usize = 253;
pub const MAX_OWNER_GROUPS: usize = 64;
pub const MAX_TOKEN_AUDIENCES: usize = 16;
pub const MAX_TOKEN_ACTORS: usize = 16;
pub const MAX_ROTATION_REQUEST_LEN: usize = 64;
pub const MAX_POLICY_SCOPES: usize = 64;
pub const MAX_POLICY_AUDIENCES: usize = 32;
pub const MAX_SECRET_NAME_LEN: usize = 253;

/// Characters a scope may contain, besides ASCII letters and digits (see `SCOPE_PATTERN`).
const SCOPE_PUNCTUATION: &str = ":._/*-";
/// Label selector operators a `LabelSelector` understands.
const SELECTOR_OPERATORS: &str = "In, NotIn, Exists or DoesNotExist";

/// One problem with one field, e.g. `spec.scopes[2]: scope "a b" contains ' ' ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, as a user writes it in YAML (`spec.expiration.ttl`, `spec.scopes[1]`).
    pub field: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    /// `field: message`; the messages copied from CEL rules already start with their field,
    /// so those print once rather than twice.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.starts_with(&format!("{} ", self.field)) {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for FieldError {}

/// Collects errors so each check is one line.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// Parses a duration field, reporting the parser's message; `None` when absent or broken.
    fn duration(&mut self, field: &str, value: Option<&Duration>) -> Option<StdDuration> {
        match value?.parse() {
            Ok(parsed) => Some(parsed),
            Err(err) => {
                self.push(field, err.to_string());
                None
            }
        }
    }

    /// Like [`Errors::duration`], and zero is an error (`why` says what zero would do);
    /// `None` unless positive, so later comparisons do not repeat the complaint.
    fn positive_duration(
        &mut self,
        field: &str,
        value: Option<&Duration>,
        why: &str,
    ) -> Option<StdDuration> {
        let parsed = self.duration(field, value)?;
        if parsed.is_zero() {
            self.push(field, format!("must be greater than zero: {why}"));
            return None;
        }
        Some(parsed)
    }

    /// A list of distinct, non-empty strings of bounded length and count (an
    /// `x-kubernetes-list-type: set` of bounded strings in the schema).
    fn string_set(
        &mut self,
        field: &str,
        values: &[String],
        max_items: usize,
        max_len: usize,
        what: &str,
    ) {
        if values.len() > max_items {
            self.push(
                field,
                format!(
                    "at most {max_items} {what}s are allowed; this lists {}",
                    values.len()
                ),
            );
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, value) in values.iter().enumerate() {
            let item = format!("{field}[{i}]");
            let len = value.chars().count();
            if value.is_empty() {
                self.push(
                    &item,
                    format!("{what} must not be empty; remove the entry or fill it in"),
                );
            } else if len > max_len {
                self.push(
                    &item,
                    format!("{what} must be at most {max_len} characters; this one has {len}"),
                );
            }
            if let Some(first) = seen.insert(value, i) {
                self.push(
                    &item,
                    format!("duplicate {what} {value:?} (already {field}[{first}]); list each {what} once"),
                );
            }
        }
    }
}

/// Validates a PersonalAccessToken as created or updated: `name` is its `metadata.name`.
pub fn validate_token(name: &str, spec: &PersonalAccessTokenSpec) -> Vec<FieldError> {
    let mut errs = Errors::default();

    let name_len = name.chars().count();
    if name_len > MAX_NAME {
        errs.push(
            "metadata.name",
            format!(
                "must be at most {MAX_NAME} characters because it labels the token record; this one has {name_len}"
            ),
        );
    }

    let display_len = spec.display_name.chars().count();
    if display_len == 0 {
        errs.push(
            "spec.displayName",
            "must not be empty: give the token a name a person recognises, e.g. \"laptop kubectl\"",
        );
    } else if display_len > MAX_DISPLAY_NAME {
        errs.push(
            "spec.displayName",
            format!("must be at most {MAX_DISPLAY_NAME} characters; this one has {display_len}"),
        );
    } else if spec.display_name.chars().all(char::is_whitespace) {
        errs.push(
            "spec.displayName",
            "must not be blank: give the token a name a person recognises, e.g. \"laptop kubectl\"",
        );
    }

    if spec.scopes.len() > MAX_SCOPES {
        errs.push(
            "spec.scopes",
            format!(
                "at most {MAX_SCOPES} scopes are allowed; this token lists {}",
                spec.scopes.len()
            ),
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, scope) in spec.scopes.iter().enumerate() {
        let field = format!("spec.scopes[{i}]");
        if let Err(message) = check_scope(scope) {
            errs.push(&field, message);
        }
        if let Some(first) = seen.insert(scope, i) {
            errs.push(
                &field,
                format!(
                    "duplicate scope {scope:?} (already spec.scopes[{first}]); list each scope once"
                ),
            );
        }
    }

    if let Some(owner) = &spec.owner {
        let len = owner.username.chars().count();
        if owner.username.is_empty() {
            errs.push(
                "spec.owner.username",
                "must not be empty; omit spec.owner to own the token yourself",
            );
        } else if len > MAX_SUBJECT_LEN {
            errs.push(
                "spec.owner.username",
                format!("must be at most {MAX_SUBJECT_LEN} characters; this one has {len}"),
            );
        }
        if let Some(uid) = &owner.uid {
            let len = uid.chars().count();
            if len > MAX_SUBJECT_LEN {
                errs.push(
                    "spec.owner.uid",
                    format!("must be at most {MAX_SUBJECT_LEN} characters; this one has {len}"),
                );
            }
        }
        if owner.groups.len() > MAX_OWNER_GROUPS {
            errs.push(
                "spec.owner.groups",
                format!(
                    "at most {MAX_OWNER_GROUPS} groups are allowed; this lists {}",
                    owner.groups.len()
                ),
            );
        }
        for (i, group) in owner.groups.iter().enumerate() {
            let len = group.chars().count();
            if group.is_empty() {
                errs.push(
                    format!("spec.owner.groups[{i}]"),
                    "group must not be empty; remove the entry",
                );
            } else if len > MAX_SUBJECT_LEN {
                errs.push(
                    format!("spec.owner.groups[{i}]"),
                    format!(
                        "group must be at most {MAX_SUBJECT_LEN} characters; this one has {len}"
                    ),
                );
            }
        }
    }

    if let Some(expiration) = &spec.expiration {
        if expiration.ttl.is_some() == expiration.expires_at.is_some() {
            errs.push("spec.expiration", EXPIRATION_ONE_OF);
        }
        errs.positive_duration(
            "spec.expiration.ttl",
            expiration.ttl.as_ref(),
            "a token with a zero lifetime expires as it is issued; omit spec.expiration for a token that does not expire",
        );
    }

    if let Some(secret) = &spec.secret {
        if let Some(secret_name) = &secret.name
            && let Err(message) = check_dns1123_subdomain(secret_name, MAX_SECRET_NAME_LEN)
        {
            errs.push(
                "spec.secret.name",
                format!("{message}; omit it to use \"<metadata.name>-token\""),
            );
        }
        errs.duration("spec.secret.revealWindow", secret.reveal_window.as_ref());
    }

    if let Some(rotation) = &spec.rotation {
        if let Some(requested_at) = &rotation.requested_at {
            let len = requested_at.chars().count();
            if len > MAX_ROTATION_REQUEST_LEN {
                errs.push(
                    "spec.rotation.requestedAt",
                    format!("must be at most {MAX_ROTATION_REQUEST_LEN} characters (a timestamp reads best); this one has {len}"),
                );
            }
        }
        errs.duration("spec.rotation.gracePeriod", rotation.grace_period.as_ref());
        errs.positive_duration(
            "spec.rotation.every",
            rotation.every.as_ref(),
            "the token would rotate continuously; omit spec.rotation.every to rotate only on request",
        );
    }

    if let Some(exchange) = &spec.exchange {
        errs.string_set(
            "spec.exchange.audiences",
            &exchange.audiences,
            MAX_TOKEN_AUDIENCES,
            MAX_SUBJECT_LEN,
            "audience",
        );
        errs.string_set(
            "spec.exchange.allowedActors",
            &exchange.allowed_actors,
            MAX_TOKEN_ACTORS,
            MAX_SUBJECT_LEN,
            "actor",
        );
    }

    errs.0
}

/// Validates an update: the CEL transition rules of the CRD, with the same messages.
///
/// The Secret name compared is the one set in the spec (absent counts as empty), so removing
/// `spec.secret` and re-adding it under another name is refused too.
pub fn validate_token_update(
    old: &PersonalAccessTokenSpec,
    new: &PersonalAccessTokenSpec,
) -> Vec<FieldError> {
    let mut errs = Errors::default();
    if let Some(old_owner) = &old.owner
        && new.owner.as_ref() != Some(old_owner)
    {
        errs.push("spec.owner", OWNER_IMMUTABLE);
    }
    if old.revoked && !new.revoked {
        errs.push("spec.revoked", REVOKED_IS_FINAL);
    }
    let secret_name =
        |spec: &PersonalAccessTokenSpec| spec.secret.as_ref().and_then(|s| s.name.clone());
    if secret_name(old) != secret_name(new) {
        errs.push("spec.secret.name", SECRET_NAME_IMMUTABLE);
    }
    errs.0
}

/// Validates a TokenPolicy. A policy that fails here is not applied by
/// [`crate::policy::PolicySet`]; it is listed as invalid instead.
pub fn validate_policy(spec: &TokenPolicySpec) -> Vec<FieldError> {
    let mut errs = Errors::default();

    if let Some(selector) = &spec.namespace_selector {
        errs.0
            .extend(validate_label_selector("spec.namespaceSelector", selector));
    }

    if let Some(expiration) = &spec.expiration {
        let default = errs.positive_duration(
            "spec.expiration.default",
            expiration.default.as_ref(),
            "tokens given a zero default lifetime would expire as they are issued; omit it to give none",
        );
        let max = errs.positive_duration(
            "spec.expiration.max",
            expiration.max.as_ref(),
            "a zero maximum lifetime admits no token at all; omit it for no limit",
        );
        if let (Some(default), Some(max)) = (default, max)
            && default > max
        {
            errs.push(
                "spec.expiration.default",
                format!(
                    "default lifetime {} is longer than the maximum {}; lower spec.expiration.default or raise spec.expiration.max",
                    duration::format(default),
                    duration::format(max)
                ),
            );
        }
    }

    errs.positive_duration(
        "spec.idleTimeout",
        spec.idle_timeout.as_ref(),
        "every token would expire as soon as it is issued; omit it to disable idle expiry",
    );

    if let Some(globs) = &spec.allowed_scopes {
        if globs.len() > MAX_POLICY_SCOPES {
            errs.push(
                "spec.allowedScopes",
                format!(
                    "at most {MAX_POLICY_SCOPES} patterns are allowed; this lists {}",
                    globs.len()
                ),
            );
        }
        for (i, glob) in globs.iter().enumerate() {
            if let Err(err) = ScopePattern::new(glob) {
                errs.push(format!("spec.allowedScopes[{i}]"), err.to_string());
            }
        }
    }

    if let Some(secret) = &spec.secret {
        if let Some(allowed) = &secret.allowed_retention {
            if allowed.is_empty() {
                errs.push(
                    "spec.secret.allowedRetention",
                    "an empty list would let no token be delivered; list OneTime and/or Persistent, or omit the field to allow both",
                );
            }
            for (i, retention) in allowed.iter().enumerate() {
                if let Some(first) = allowed[..i].iter().position(|r| r == retention) {
                    errs.push(
                        format!("spec.secret.allowedRetention[{i}]"),
                        format!(
                            "duplicate {retention:?} (already spec.secret.allowedRetention[{first}]); list each once"
                        ),
                    );
                }
            }
        }
        errs.positive_duration(
            "spec.secret.maxRevealWindow",
            secret.max_reveal_window.as_ref(),
            "OneTime Secrets would be deleted before anyone could read them; omit it for no limit",
        );
    }

    if let Some(exchange) = &spec.exchange {
        errs.positive_duration(
            "spec.exchange.maxTTL",
            exchange.max_ttl.as_ref(),
            "exchanged tokens would expire as they are issued; omit it for the 1h default",
        );
        if let Some(audiences) = &exchange.audiences {
            errs.string_set(
                "spec.exchange.audiences",
                audiences,
                MAX_POLICY_AUDIENCES,
                MAX_SUBJECT_LEN,
                "audience",
            );
        }
    }

    if let Some(rotation) = &spec.rotation {
        errs.duration("spec.rotation.warnBefore", rotation.warn_before.as_ref());
    }

    errs.0
}

/// Validates a label selector the way the apiserver does: keys are qualified names, values
/// label values, `In`/`NotIn` need values and `Exists`/`DoesNotExist` take none.
pub fn validate_label_selector(field: &str, selector: &LabelSelector) -> Vec<FieldError> {
    let mut errs = Errors::default();
    for (key, value) in selector.match_labels.iter().flatten() {
        if let Err(message) = check_qualified_name(key) {
            errs.push(
                format!("{field}.matchLabels"),
                format!("key {key:?}: {message}"),
            );
        }
        if let Err(message) = check_label_value(value) {
            errs.push(format!("{field}.matchLabels.{key}"), message);
        }
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        if let Err(message) = check_qualified_name(&requirement.key) {
            errs.push(
                format!("{at}.key"),
                format!("{:?}: {message}", requirement.key),
            );
        }
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.push(
                        format!("{at}.values"),
                        format!(
                            "operator {} needs at least one value; use Exists to match any value",
                            requirement.operator
                        ),
                    );
                }
                for (j, value) in values.iter().enumerate() {
                    if let Err(message) = check_label_value(value) {
                        errs.push(format!("{at}.values[{j}]"), message);
                    }
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.push(
                        format!("{at}.values"),
                        format!(
                            "operator {} takes no values; remove them, or use In to match specific values",
                            requirement.operator
                        ),
                    );
                }
            }
            other => {
                errs.push(
                    format!("{at}.operator"),
                    format!("unknown operator {other:?}; use {SELECTOR_OPERATORS}"),
                );
            }
        }
    }
    errs.0
}

/// Checks one scope against the schema: 1..=128 characters from `SCOPE_PATTERN`.
pub fn check_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() {
        return Err("scope must not be empty; remove the entry".to_owned());
    }
    let len = scope.chars().count();
    if len > MAX_SCOPE_LEN {
        return Err(format!(
            "scope must be at most {MAX_SCOPE_LEN} characters; this one has {len}"
        ));
    }
    let bad = disallowed_chars(scope, is_scope_char);
    if !bad.is_empty() {
        return Err(format!(
            "scope {scope:?} contains {bad}, which scopes may not contain; use letters, digits and {}",
            spaced(SCOPE_PUNCTUATION)
        ));
    }
    Ok(())
}

/// Whether `c` may appear in a scope (`[A-Za-z0-9:._/*-]`).
pub fn is_scope_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || SCOPE_PUNCTUATION.contains(c)
}

/// Checks a DNS-1123 subdomain (what Kubernetes requires of most object names): lowercase
/// alphanumeric labels, inner `-` allowed, joined by single dots.
pub fn check_dns1123_subdomain(name: &str, max_len: usize) -> Result<(), String> {
    const ACCEPTED: &str = "use lowercase letters, digits, '-' and '.', starting and ending each dot-separated part with a letter or digit, e.g. \"ci-token\"";
    if name.is_empty() {
        return Err(format!("must not be empty; {ACCEPTED}"));
    }
    if name.len() > max_len {
        return Err(format!(
            "must be at most {max_len} characters; this one has {}",
            name.len()
        ));
    }
    if !name.split('.').all(is_dns1123_label) {
        return Err(format!(
            "{name:?} is not a valid DNS-1123 subdomain; {ACCEPTED}"
        ));
    }
    Ok(())
}

fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && edge(first)
                && edge(last)
                && bytes.iter().all(|b| edge(b) || *b == b'-')
        }
        _ => false,
    }
}

/// Label names and values: 1..=63 alphanumerics with `-`, `_`, `.` inside.
fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63
                && first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Checks a label key: an optional DNS-1123 subdomain prefix and `/`, then a label name.
fn check_qualified_name(key: &str) -> Result<(), String> {
    const ACCEPTED: &str = "a label key is an optional DNS subdomain prefix and '/', then up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, e.g. \"kubernetes.io/metadata.name\" or \"team\"";
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| check_dns1123_subdomain(p, 253).is_ok());
    if !prefix_ok || !is_label_name(name) {
        return Err(format!("not a valid label key; {ACCEPTED}"));
    }
    Ok(())
}

/// Checks a label value: empty, or a label name.
fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid label value; use up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// The distinct characters of `text` that fail `ok`, quoted and listed: `' ', '"'`.
pub(crate) fn disallowed_chars(text: &str, ok: impl Fn(char) -> bool) -> String {
    let mut bad: Vec<char> = text.chars().filter(|c| !ok(*c)).collect();
    bad.sort_unstable();
    bad.dedup();
    bad.iter()
        .map(|c| format!("{c:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `":._"` → `": . _"`, for listing accepted punctuation in messages.
pub(crate) fn spaced(chars: &str) -> String {
    chars
        .chars()
        .map(String::from)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::{
        ExchangePolicy, ExchangeSpec, Expiration, ExpirationPolicy, PersonalAccessToken, Retention,
        Rotation, RotationPolicy, SCOPE_PATTERN, SecretDelivery, SecretPolicy, TokenOwner,
        TokenPolicy,
    };
    use k8s_openapi::{
        apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time},
        jiff::Timestamp,
    };
    use kube::CustomResourceExt;
    use serde_json::Value;
    use std::collections::BTreeMap;

    fn token() -> PersonalAccessTokenSpec {
        PersonalAccessTokenSpec {
            display_name: "laptop kubectl".into(),
            owner: Some(TokenOwner {
                username: "alice@example.com".into(),
                uid: Some("1234".into()),
                groups: vec!["developers".into()],
            }),
            scopes: vec!["read:pods".into(), "deploy/*".into()],
            expiration: Some(Expiration {
                ttl: Some("90d".into()),
                expires_at: None,
            }),
            secret: Some(SecretDelivery {
                name: Some("laptop-token".into()),
                retention: Some(Retention::OneTime),
                reveal_window: Some("1h".into()),
            }),
            rotation: Some(Rotation {
                requested_at: Some("2030-01-01T00:00:00Z".into()),
                grace_period: Some("10m".into()),
                every: Some("30d".into()),
            }),
            revoked: false,
            exchange: Some(ExchangeSpec {
                audiences: vec!["https://kubernetes.default.svc".into()],
                allowed_actors: vec!["system:serviceaccount:ci:runner".into()],
            }),
            credentials: None,
        }
    }

    fn policy() -> TokenPolicySpec {
        TokenPolicySpec {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("team".into(), "payments".into())])),
                match_expressions: Some(vec![requirement(
                    "kubernetes.io/metadata.name",
                    "NotIn",
                    Some(&["kube-system"]),
                )]),
            }),
            expiration: Some(ExpirationPolicy {
                required: true,
                default: Some("30d".into()),
                max: Some("90d".into()),
            }),
            idle_timeout: Some("30d".into()),
            allowed_scopes: Some(vec!["read:*".into(), "deploy/?".into()]),
            require_scopes: false,
            secret: Some(SecretPolicy {
                allowed_retention: Some(vec![Retention::OneTime]),
                max_reveal_window: Some("1h".into()),
            }),
            exchange: Some(ExchangePolicy {
                max_ttl: Some("15m".into()),
                audiences: Some(vec!["vault".into()]),
            }),
            rotation: Some(RotationPolicy {
                warn_before: Some("7d".into()),
            }),
            owners: None,
        }
    }

    fn requirement(key: &str, operator: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: values.map(|v| v.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    /// Asserts exactly one error, on `field`, whose message contains every `needle`.
    fn assert_one(errs: &[FieldError], field: &str, needles: &[&str], case: &str) {
        assert_eq!(errs.len(), 1, "{case}: expected one error, got {errs:#?}");
        assert_eq!(errs[0].field, field, "{case}: {errs:#?}");
        for needle in needles {
            assert!(
                errs[0].message.contains(needle),
                "{case}: {:?} lacks {needle:?}",
                errs[0].message
            );
        }
    }

    #[test]
    fn accepts_valid_tokens() {
        assert_eq!(validate_token("laptop", &token()), vec![]);
        let minimal = PersonalAccessTokenSpec {
            display_name: "x".into(),
            ..Default::default()
        };
        assert_eq!(validate_token(&"a".repeat(63), &minimal), vec![]);
        let at = PersonalAccessTokenSpec {
            expiration: Some(Expiration {
                ttl: None,
                expires_at: Some(Time(Timestamp::UNIX_EPOCH)),
            }),
            ..minimal
        };
        assert_eq!(validate_token("t", &at), vec![]);
    }

    #[test]
    fn rejects_invalid_tokens_with_actionable_messages() {
        type Edit = fn(&mut PersonalAccessTokenSpec);
        let table: Vec<(&str, Edit, &str, &[&str])> = vec![
            (
                "empty display name",
                |s| s.display_name.clear(),
                "spec.displayName",
                &["must not be empty", "e.g."],
            ),
            (
                "blank display name",
                |s| s.display_name = " \t\u{a0}".into(),
                "spec.displayName",
                &["blank"],
            ),
            (
                "long display name",
                |s| s.display_name = "é".repeat(101),
                "spec.displayName",
                &["at most 100", "101"],
            ),
            (
                "too many scopes",
                |s| s.scopes = (0..33).map(|i| format!("s{i}")).collect(),
                "spec.scopes",
                &["at most 32", "33"],
            ),
            (
                "empty scope",
                |s| s.scopes = vec![String::new()],
                "spec.scopes[0]",
                &["must not be empty"],
            ),
            (
                "long scope",
                |s| s.scopes = vec!["a".repeat(129)],
                "spec.scopes[0]",
                &["at most 128", "129"],
            ),
            (
                "scope chars",
                |s| s.scopes = vec!["ok".into(), "read pods?".into()],
                "spec.scopes[1]",
                &["' '", "'?'", "letters, digits and : . _ / * -"],
            ),
            (
                "duplicate scope",
                |s| s.scopes = vec!["a".into(), "b".into(), "a".into()],
                "spec.scopes[2]",
                &["duplicate", "spec.scopes[0]"],
            ),
            (
                "both expirations",
                |s| {
                    s.expiration = Some(Expiration {
                        ttl: Some("1h".into()),
                        expires_at: Some(Time(Timestamp::UNIX_EPOCH)),
                    })
                },
                "spec.expiration",
                &[EXPIRATION_ONE_OF],
            ),
            (
                "no expiration field",
                |s| s.expiration = Some(Expiration::default()),
                "spec.expiration",
                &[EXPIRATION_ONE_OF],
            ),
            (
                "bad ttl",
                |s| {
                    s.expiration = Some(Expiration {
                        ttl: Some("1y".into()),
                        expires_at: None,
                    })
                },
                "spec.expiration.ttl",
                &["unknown unit \"y\"", "e.g. 90d"],
            ),
            (
                "zero ttl",
                |s| {
                    s.expiration = Some(Expiration {
                        ttl: Some("0s".into()),
                        expires_at: None,
                    })
                },
                "spec.expiration.ttl",
                &["greater than zero", "omit spec.expiration"],
            ),
            (
                "secret name case",
                |s| set_secret_name(s, "Laptop"),
                "spec.secret.name",
                &["DNS-1123", "lowercase"],
            ),
            (
                "secret name dots",
                |s| set_secret_name(s, "a..b"),
                "spec.secret.name",
                &["DNS-1123"],
            ),
            (
                "secret name dash dot",
                |s| set_secret_name(s, "a-.b"),
                "spec.secret.name",
                &["DNS-1123"],
            ),
            (
                "secret name empty",
                |s| set_secret_name(s, ""),
                "spec.secret.name",
                &["must not be empty"],
            ),
            (
                "secret name long",
                |s| set_secret_name(s, &"a".repeat(254)),
                "spec.secret.name",
                &["at most 253"],
            ),
            (
                "bad reveal window",
                |s| {
                    if let Some(x) = s.secret.as_mut() {
                        x.reveal_window = Some("soon".into())
                    }
                },
                "spec.secret.revealWindow",
                &["\"soon\"", "e.g. 90d"],
            ),
            (
                "empty username",
                |s| {
                    if let Some(o) = s.owner.as_mut() {
                        o.username.clear()
                    }
                },
                "spec.owner.username",
                &["must not be empty"],
            ),
            (
                "long username",
                |s| {
                    if let Some(o) = s.owner.as_mut() {
                        o.username = "u".repeat(254)
                    }
                },
                "spec.owner.username",
                &["at most 253"],
            ),
            (
                "long uid",
                |s| {
                    if let Some(o) = s.owner.as_mut() {
                        o.uid = Some("u".repeat(254))
                    }
                },
                "spec.owner.uid",
                &["at most 253"],
            ),
            (
                "empty group",
                |s| {
                    if let Some(o) = s.owner.as_mut() {
                        o.groups = vec![String::new()]
                    }
                },
                "spec.owner.groups[0]",
                &["must not be empty"],
            ),
            (
                "too many groups",
                |s| {
                    if let Some(o) = s.owner.as_mut() {
                        o.groups = (0..65).map(|i| format!("g{i}")).collect()
                    }
                },
                "spec.owner.groups",
                &["at most 64"],
            ),
            (
                "empty audience",
                |s| {
                    if let Some(x) = s.exchange.as_mut() {
                        x.audiences = vec![String::new()]
                    }
                },
                "spec.exchange.audiences[0]",
                &["audience must not be empty"],
            ),
            (
                "duplicate audience",
                |s| {
                    if let Some(x) = s.exchange.as_mut() {
                        x.audiences = vec!["a".into(), "a".into()]
                    }
                },
                "spec.exchange.audiences[1]",
                &["duplicate audience \"a\""],
            ),
            (
                "too many audiences",
                |s| {
                    if let Some(x) = s.exchange.as_mut() {
                        x.audiences = (0..17).map(|i| format!("a{i}")).collect()
                    }
                },
                "spec.exchange.audiences",
                &["at most 16"],
            ),
            (
                "empty actor",
                |s| {
                    if let Some(x) = s.exchange.as_mut() {
                        x.allowed_actors = vec![String::new()]
                    }
                },
                "spec.exchange.allowedActors[0]",
                &["actor must not be empty"],
            ),
            (
                "duplicate actor",
                |s| {
                    if let Some(x) = s.exchange.as_mut() {
                        x.allowed_actors = vec!["a".into(), "a".into()]
                    }
                },
                "spec.exchange.allowedActors[1]",
                &["duplicate actor"],
            ),
            (
                "zero every",
                |s| {
                    if let Some(r) = s.rotation.as_mut() {
                        r.every = Some("0h".into())
                    }
                },
                "spec.rotation.every",
                &["greater than zero"],
            ),
            (
                "bad every",
                |s| {
                    if let Some(r) = s.rotation.as_mut() {
                        r.every = Some("30".into())
                    }
                },
                "spec.rotation.every",
                &["no unit after 30"],
            ),
            (
                "bad grace",
                |s| {
                    if let Some(r) = s.rotation.as_mut() {
                        r.grace_period = Some("".into())
                    }
                },
                "spec.rotation.gracePeriod",
                &["empty"],
            ),
            (
                "long request",
                |s| {
                    if let Some(r) = s.rotation.as_mut() {
                        r.requested_at = Some("x".repeat(65))
                    }
                },
                "spec.rotation.requestedAt",
                &["at most 64"],
            ),
        ];
        for (case, edit, field, needles) in table {
            let mut spec = token();
            edit(&mut spec);
            assert_one(&validate_token("laptop", &spec), field, needles, case);
        }
        assert_one(
            &validate_token(&"n".repeat(64), &token()),
            "metadata.name",
            &["at most 63", "64"],
            "long name",
        );
    }

    fn set_secret_name(spec: &mut PersonalAccessTokenSpec, name: &str) {
        if let Some(secret) = spec.secret.as_mut() {
            secret.name = Some(name.into());
        }
    }

    #[test]
    fn reports_every_error_at_once() {
        let spec = PersonalAccessTokenSpec {
            display_name: String::new(),
            scopes: vec!["a b".into()],
            expiration: Some(Expiration {
                ttl: Some("x".into()),
                expires_at: Some(Time(Timestamp::UNIX_EPOCH)),
            }),
            ..Default::default()
        };
        let fields: Vec<_> = validate_token(&"n".repeat(70), &spec)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.displayName",
                "spec.scopes[0]",
                "spec.expiration",
                "spec.expiration.ttl"
            ]
        );
    }

    #[test]
    fn update_rules_mirror_cel() {
        let base = token();
        fn other_owner(s: &mut PersonalAccessTokenSpec) {
            if let Some(o) = s.owner.as_mut() {
                o.username = "mallory".into();
            }
        }
        type Edit = fn(&mut PersonalAccessTokenSpec, &mut PersonalAccessTokenSpec);
        type Case = (&'static str, Edit, Vec<(&'static str, &'static str)>);
        let table: Vec<Case> = vec![
            ("unchanged", |_, _| {}, vec![]),
            (
                "other fields change",
                |_, new| {
                    new.display_name = "renamed".into();
                    new.scopes.clear();
                },
                vec![],
            ),
            (
                "owner changes",
                |_, new| other_owner(new),
                vec![("spec.owner", OWNER_IMMUTABLE)],
            ),
            (
                "owner groups change",
                |_, new| {
                    if let Some(o) = new.owner.as_mut() {
                        o.groups.push("admins".into())
                    }
                },
                vec![("spec.owner", OWNER_IMMUTABLE)],
            ),
            (
                "owner removed",
                |_, new| new.owner = None,
                vec![("spec.owner", OWNER_IMMUTABLE)],
            ),
            ("owner set later", |old, _| old.owner = None, vec![]),
            ("revoke", |_, new| new.revoked = true, vec![]),
            (
                "un-revoke",
                |old, _| old.revoked = true,
                vec![("spec.revoked", REVOKED_IS_FINAL)],
            ),
            (
                "stay revoked",
                |old, new| {
                    old.revoked = true;
                    new.revoked = true;
                },
                vec![],
            ),
            (
                "secret renamed",
                |_, new| set_secret_name(new, "other"),
                vec![("spec.secret.name", SECRET_NAME_IMMUTABLE)],
            ),
            (
                "secret name removed",
                |_, new| {
                    if let Some(s) = new.secret.as_mut() {
                        s.name = None
                    }
                },
                vec![("spec.secret.name", SECRET_NAME_IMMUTABLE)],
            ),
            (
                "secret name added",
                |old, _| {
                    if let Some(s) = old.secret.as_mut() {
                        s.name = None
                    }
                },
                vec![("spec.secret.name", SECRET_NAME_IMMUTABLE)],
            ),
            // The rule compares the spec's name whether or not the secret block exists, so
            // dropping the block and re-adding it cannot rename the Secret.
            (
                "secret block removed",
                |_, new| new.secret = None,
                vec![("spec.secret.name", SECRET_NAME_IMMUTABLE)],
            ),
            (
                "secret block added",
                |old, _| old.secret = None,
                vec![("spec.secret.name", SECRET_NAME_IMMUTABLE)],
            ),
            (
                "secret retention changes",
                |_, new| {
                    if let Some(s) = new.secret.as_mut() {
                        s.retention = Some(Retention::Persistent)
                    }
                },
                vec![],
            ),
            (
                "everything at once",
                |old, new| {
                    old.revoked = true;
                    other_owner(new);
                    set_secret_name(new, "x");
                },
                vec![
                    ("spec.owner", OWNER_IMMUTABLE),
                    ("spec.revoked", REVOKED_IS_FINAL),
                    ("spec.secret.name", SECRET_NAME_IMMUTABLE),
                ],
            ),
        ];
        for (case, edit, want) in table {
            let (mut old, mut new) = (base.clone(), base.clone());
            edit(&mut old, &mut new);
            let got: Vec<(String, String)> = validate_token_update(&old, &new)
                .into_iter()
                .map(|e| (e.field, e.message))
                .collect();
            let want: Vec<(String, String)> = want
                .into_iter()
                .map(|(f, m)| (f.into(), m.into()))
                .collect();
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn accepts_valid_policies() {
        assert_eq!(validate_policy(&policy()), vec![]);
        assert_eq!(validate_policy(&TokenPolicySpec::default()), vec![]);
        let open = TokenPolicySpec {
            namespace_selector: Some(LabelSelector::default()),
            allowed_scopes: Some(vec![]),
            exchange: Some(ExchangePolicy {
                max_ttl: None,
                audiences: Some(vec![]),
            }),
            rotation: Some(RotationPolicy {
                warn_before: Some("0s".into()),
            }),
            expiration: Some(ExpirationPolicy {
                required: false,
                default: Some("90d".into()),
                max: Some("2160h".into()),
            }),
            ..Default::default()
        };
        assert_eq!(validate_policy(&open), vec![]);
    }

    #[test]
    fn rejects_invalid_policies_with_actionable_messages() {
        type Edit = fn(&mut TokenPolicySpec);
        fn expiration(s: &mut TokenPolicySpec, default: &str, max: &str) {
            s.expiration = Some(ExpirationPolicy {
                required: false,
                default: Some(default.into()),
                max: Some(max.into()),
            });
        }
        let table: Vec<(&str, Edit, &str, &[&str])> = vec![
            (
                "bad default",
                |s| expiration(s, "30 days", "90d"),
                "spec.expiration.default",
                &["\"30 days\"", "e.g. 90d"],
            ),
            (
                "bad max",
                |s| expiration(s, "30d", "3mo"),
                "spec.expiration.max",
                &["unknown unit \"mo\""],
            ),
            (
                "zero default",
                |s| expiration(s, "0d", "90d"),
                "spec.expiration.default",
                &["greater than zero"],
            ),
            (
                "zero max",
                |s| expiration(s, "1d", "0s"),
                "spec.expiration.max",
                &["greater than zero"],
            ),
            (
                "default above max",
                |s| expiration(s, "91d", "2160h"),
                "spec.expiration.default",
                &["91d", "90d", "lower spec.expiration.default"],
            ),
            (
                "zero idle",
                |s| s.idle_timeout = Some("0m".into()),
                "spec.idleTimeout",
                &["greater than zero"],
            ),
            (
                "bad idle",
                |s| s.idle_timeout = Some("m".into()),
                "spec.idleTimeout",
                &["must start with a number"],
            ),
            (
                "glob chars",
                |s| s.allowed_scopes = Some(vec!["read:{pods,svc}".into()]),
                "spec.allowedScopes[0]",
                &["'{'", "','", "'}'", "* and ?"],
            ),
            (
                "glob class",
                |s| s.allowed_scopes = Some(vec!["read:[ps]ods".into()]),
                "spec.allowedScopes[0]",
                &["'['"],
            ),
            (
                "empty glob",
                |s| s.allowed_scopes = Some(vec![String::new()]),
                "spec.allowedScopes[0]",
                &["must not be empty"],
            ),
            (
                "long glob",
                |s| s.allowed_scopes = Some(vec!["*".repeat(129)]),
                "spec.allowedScopes[0]",
                &["at most 128"],
            ),
            (
                "too many globs",
                |s| s.allowed_scopes = Some((0..65).map(|i| format!("s{i}")).collect()),
                "spec.allowedScopes",
                &["at most 64"],
            ),
            (
                "empty retention",
                |s| {
                    s.secret = Some(SecretPolicy {
                        allowed_retention: Some(vec![]),
                        max_reveal_window: None,
                    })
                },
                "spec.secret.allowedRetention",
                &["omit the field to allow both"],
            ),
            (
                "duplicate retention",
                |s| {
                    s.secret = Some(SecretPolicy {
                        allowed_retention: Some(vec![Retention::OneTime, Retention::OneTime]),
                        max_reveal_window: None,
                    })
                },
                "spec.secret.allowedRetention[1]",
                &["duplicate OneTime"],
            ),
            (
                "zero reveal",
                |s| {
                    s.secret = Some(SecretPolicy {
                        allowed_retention: None,
                        max_reveal_window: Some("0s".into()),
                    })
                },
                "spec.secret.maxRevealWindow",
                &["greater than zero"],
            ),
            (
                "zero maxTTL",
                |s| {
                    s.exchange = Some(ExchangePolicy {
                        max_ttl: Some("0s".into()),
                        audiences: None,
                    })
                },
                "spec.exchange.maxTTL",
                &["greater than zero", "1h default"],
            ),
            (
                "bad maxTTL",
                |s| {
                    s.exchange = Some(ExchangePolicy {
                        max_ttl: Some("1h30".into()),
                        audiences: None,
                    })
                },
                "spec.exchange.maxTTL",
                &["no unit after 30"],
            ),
            (
                "empty audience",
                |s| {
                    s.exchange = Some(ExchangePolicy {
                        max_ttl: None,
                        audiences: Some(vec!["a".into(), String::new()]),
                    })
                },
                "spec.exchange.audiences[1]",
                &["must not be empty"],
            ),
            (
                "duplicate audience",
                |s| {
                    s.exchange = Some(ExchangePolicy {
                        max_ttl: None,
                        audiences: Some(vec!["a".into(), "a".into()]),
                    })
                },
                "spec.exchange.audiences[1]",
                &["duplicate audience"],
            ),
            (
                "too many audiences",
                |s| {
                    s.exchange = Some(ExchangePolicy {
                        max_ttl: None,
                        audiences: Some((0..33).map(|i| format!("a{i}")).collect()),
                    })
                },
                "spec.exchange.audiences",
                &["at most 32"],
            ),
            (
                "bad warnBefore",
                |s| {
                    s.rotation = Some(RotationPolicy {
                        warn_before: Some("1w".into()),
                    })
                },
                "spec.rotation.warnBefore",
                &["unknown unit \"w\""],
            ),
            (
                "unknown operator",
                |s| s.namespace_selector = Some(selector(requirement("team", "Gt", Some(&["1"])))),
                "spec.namespaceSelector.matchExpressions[0].operator",
                &["\"Gt\"", "In, NotIn, Exists or DoesNotExist"],
            ),
        ];
        for (case, edit, field, needles) in table {
            let mut spec = policy();
            edit(&mut spec);
            assert_one(&validate_policy(&spec), field, needles, case);
        }
    }

    fn selector(requirement: LabelSelectorRequirement) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![requirement]),
        }
    }

    #[test]
    fn label_selectors() {
        let ok = [
            requirement("team", "In", Some(&["a", "b"])),
            requirement("team", "NotIn", Some(&[""])),
            requirement("example.com/team", "Exists", None),
            requirement("team", "DoesNotExist", Some(&[])),
            requirement("kubernetes.io/metadata.name", "In", Some(&["kube-system"])),
        ];
        for r in ok {
            assert_eq!(
                validate_label_selector("s", &selector(r.clone())),
                vec![],
                "{r:?}"
            );
        }
        let bad: [(LabelSelectorRequirement, &str, &str); 9] = [
            (
                requirement("team", "In", None),
                "s.matchExpressions[0].values",
                "In needs at least one value",
            ),
            (
                requirement("team", "NotIn", Some(&[])),
                "s.matchExpressions[0].values",
                "NotIn needs at least one value",
            ),
            (
                requirement("team", "Exists", Some(&["a"])),
                "s.matchExpressions[0].values",
                "Exists takes no values",
            ),
            (
                requirement("team", "DoesNotExist", Some(&["a"])),
                "s.matchExpressions[0].values",
                "DoesNotExist takes no values",
            ),
            (
                requirement("team", "in", Some(&["a"])),
                "s.matchExpressions[0].operator",
                "unknown operator \"in\"",
            ),
            (
                requirement("team", "", None),
                "s.matchExpressions[0].operator",
                "unknown operator \"\"",
            ),
            (
                requirement("", "Exists", None),
                "s.matchExpressions[0].key",
                "not a valid label key",
            ),
            (
                requirement("Bad_Prefix/x", "Exists", None),
                "s.matchExpressions[0].key",
                "not a valid label key",
            ),
            (
                requirement("team", "In", Some(&["no spaces"])),
                "s.matchExpressions[0].values[0]",
                "not a valid label value",
            ),
        ];
        for (r, field, needle) in bad {
            assert_one(
                &validate_label_selector("s", &selector(r.clone())),
                field,
                &[needle],
                &format!("{r:?}"),
            );
        }
        let labels = LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("a/b/c".into(), "x".into()),
                ("ok".into(), "-bad".into()),
            ])),
            match_expressions: None,
        };
        let errs = validate_label_selector("s", &labels);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert_eq!(errs[0].field, "s.matchLabels");
        assert_eq!(errs[1].field, "s.matchLabels.ok");
    }

    #[test]
    fn field_error_display() {
        assert_eq!(
            FieldError::new("spec.x", "must be set").to_string(),
            "spec.x: must be set"
        );
        assert_eq!(
            FieldError::new("spec.owner", OWNER_IMMUTABLE).to_string(),
            OWNER_IMMUTABLE
        );
        assert_eq!(
            FieldError::new("spec.expiration", EXPIRATION_ONE_OF).to_string(),
            format!("spec.expiration: {EXPIRATION_ONE_OF}")
        );
    }

    /// The Rust checks and the CRD must say the same thing: rules and messages are copied
    /// from the generated schema, and limits are read back from it.
    #[test]
    fn mirrors_the_generated_crd() {
        let pat = serde_json::to_value(PersonalAccessToken::crd()).expect("crd json");
        let text = pat.to_string();
        for message in [
            OWNER_IMMUTABLE,
            REVOKED_IS_FINAL,
            SECRET_NAME_IMMUTABLE,
            EXPIRATION_ONE_OF,
        ] {
            assert!(
                text.contains(&serde_json::to_string(message).expect("json")),
                "CRD lacks {message:?}"
            );
        }
        let spec = &pat["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let tp = serde_json::to_value(TokenPolicy::crd()).expect("crd json");
        let policy = &tp["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let at = |root: &Value, path: &str| -> Value {
            path.split('.').fold(root.clone(), |v, key| match key {
                "[]" => v["items"].clone(),
                "max" | "maxLength" | "maxItems" | "minLength" => v[key].clone(),
                _ => v["properties"][key].clone(),
            })
        };
        let table = [
            (spec, "displayName.maxLength", MAX_DISPLAY_NAME),
            (spec, "scopes.maxItems", MAX_SCOPES),
            (spec, "scopes.[].maxLength", MAX_SCOPE_LEN),
            (spec, "owner.username.maxLength", MAX_SUBJECT_LEN),
            (spec, "owner.uid.maxLength", MAX_SUBJECT_LEN),
            (spec, "owner.groups.maxItems", MAX_OWNER_GROUPS),
            (spec, "owner.groups.[].maxLength", MAX_SUBJECT_LEN),
            (spec, "secret.name.maxLength", MAX_SECRET_NAME_LEN),
            (
                spec,
                "rotation.requestedAt.maxLength",
                MAX_ROTATION_REQUEST_LEN,
            ),
            (spec, "exchange.audiences.maxItems", MAX_TOKEN_AUDIENCES),
            (spec, "exchange.audiences.[].maxLength", MAX_SUBJECT_LEN),
            (spec, "exchange.allowedActors.maxItems", MAX_TOKEN_ACTORS),
            (spec, "exchange.allowedActors.[].maxLength", MAX_SUBJECT_LEN),
            (policy, "allowedScopes.maxItems", MAX_POLICY_SCOPES),
            (policy, "allowedScopes.[].maxLength", MAX_SCOPE_LEN),
            (policy, "exchange.audiences.maxItems", MAX_POLICY_AUDIENCES),
            (policy, "exchange.audiences.[].maxLength", MAX_SUBJECT_LEN),
        ];
        for (root, path, want) in table {
            assert_eq!(at(root, path), Value::from(want), "{path}");
        }
        assert!(text.contains(&format!("size(self.metadata.name) <= {MAX_NAME}")));
    }

    #[test]
    fn scope_check_agrees_with_schema_pattern() {
        let re = regex::Regex::new(SCOPE_PATTERN).expect("pattern");
        let corpus = [
            "read:pods",
            "deploy/prod",
            "a.b_c-d",
            "*",
            "repo:*",
            "A9",
            "",
            " ",
            "read pods",
            "read\"x",
            "ü",
            "a\\b",
            "a?b",
            "a\nb",
            "{a}",
            "a,b",
            "a=b",
        ];
        for scope in corpus {
            assert_eq!(re.is_match(scope), check_scope(scope).is_ok(), "{scope:?}");
        }
    }

    #[test]
    fn dns_subdomain_is_at_least_as_strict_as_schema_pattern() {
        let re = regex::Regex::new(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$").expect("pattern");
        let table = [
            ("a", true),
            ("a-b.c", true),
            ("0.1.2", true),
            ("laptop-token", true),
            (&"a".repeat(63), true),
            ("a..b", false),
            ("a-.b", false),
            ("a.-b", false),
            ("-a", false),
            ("a-", false),
            ("A", false),
            ("a_b", false),
            (".a", false),
            ("", false),
            (&"a".repeat(64), false),
        ];
        for (name, want) in table {
            let ok = check_dns1123_subdomain(name, 253).is_ok();
            assert_eq!(ok, want, "{name:?}");
            if ok {
                assert!(
                    re.is_match(name),
                    "{name:?} accepted here but not by the schema"
                );
            }
        }
    }
}

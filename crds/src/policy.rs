//! Composition of TokenPolicies and the decisions drawn from them.
//!
//! # Which policies apply
//!
//! A TokenPolicy governs the namespaces its `namespaceSelector` matches; an absent or empty
//! selector matches every namespace. *Every* governing policy applies, and for each rule the
//! strictest value wins: the shortest lifetimes and windows, the intersection of allowed
//! scopes, retention modes and audiences, the earliest expiry warning, and system-group owners
//! only when every policy that says anything about owners allows them. Each composed value
//! keeps the name of the policy that decided it, so a message can say "policy org-baseline
//! limits token lifetime to 90d". Ties go to the first policy by name, so the answer never
//! depends on list order.
//!
//! A broken policy must neither silently loosen the rules nor block every token, so:
//!
//! - a policy that fails [`validate_policy`](crate::validation::validate_policy) is not
//!   applied (a duration that cannot be read is neither strict nor loose) and is listed in
//!   [`EffectivePolicy::invalid_policies`] for the namespaces it selects, for the caller to
//!   surface as an admission warning or a status condition;
//! - a malformed `namespaceSelector` (unknown operator, `In` without values, ...) matches no
//!   namespace, because guessing could apply the policy where it was not meant, and the
//!   policy is listed as invalid for *every* namespace, because it may have been meant for any.
//!
//! # Clamp what can be narrowed, report everything
//!
//! Admission ([`EffectivePolicy::admission_violations`]) refuses a token that breaks a rule.
//! Tokens still meet rules they were never admitted under: created before a policy existed or
//! tightened, or while the webhook was bypassed. The operator then issues the token within
//! policy ([`EffectivePolicy::resolve`]):
//!
//! - what can be narrowed without changing the token's meaning is narrowed: the lifetime is
//!   cut to the maximum, disallowed scopes and exchange audiences are dropped (never granted),
//!   the reveal window is shortened;
//! - what cannot (retention mode, the owner's groups, a required expiration with no limit to
//!   fill it in) is left as the spec says;
//! - *everything* that breaks a rule, narrowed or not, is listed in
//!   [`ResolvedToken::non_compliance`] — the operator's `PolicyCompliant=False`.
//!
//! Both paths run the same checks, so a token admitted at `now` and issued at `now` resolves
//! with no non-compliance. A spec without an expiration is not a violation when a policy fills
//! it in: with the composed default, else capped at the maximum lifetime.

use std::{borrow::Borrow, collections::BTreeMap, fmt, time::Duration as StdDuration};

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, Time,
};

use crate::{
    duration::{self, Duration},
    v1alpha1::{MAX_SCOPE_LEN, PersonalAccessTokenSpec, Retention, TokenPolicy, TokenPolicySpec},
    validation::{self, FieldError},
};

/// How long a `OneTime` Secret lives when the token does not say (the API's documented default).
pub const DEFAULT_REVEAL_WINDOW: StdDuration = StdDuration::from_secs(3_600);
/// How long before expiry a token is `ExpiringSoon` when no policy sets
/// `rotation.warnBefore` (GitHub and GitLab warn about a week ahead too), but never more
/// than a quarter of the token's lifetime: a one-day CI token is not "expiring soon" from
/// the moment it is issued.
pub const DEFAULT_WARN_BEFORE: StdDuration = StdDuration::from_secs(7 * 86_400);

/// The default warning for a token issued at `issued_at` that expires at `expires_at`.
pub fn default_warning(issued_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> StdDuration {
    let quarter = (expires_at - issued_at).to_std().unwrap_or_default() / 4;
    quarter.min(DEFAULT_WARN_BEFORE)
}
/// Longest exchanged-JWT lifetime when no policy sets `exchange.maxTTL`.
pub const DEFAULT_EXCHANGE_MAX_TTL: StdDuration = StdDuration::from_secs(3_600);

/// A composed value and the policy that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit<T> {
    pub value: T,
    pub policy: String,
}

/// A scope glob from `allowedScopes`: scope characters plus the wildcards `*` (any run of
/// characters) and `?` (one character).
///
/// Patterns are matched here rather than with a general glob library so that the syntax is
/// exactly what the messages promise (no `{a,b}`, `[ab]` or `**`), and so that a wildcard in
/// a *requested* scope cannot sneak through: scopes may themselves contain `*` (`read:*`), and
/// such a request is broader than any single scope. `?` therefore never matches a literal `*`,
/// while `*` may; so `read:*` is allowed by the pattern `read:*` or `*`, never by `read:?` or
/// `read:p*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScopePattern(String);

/// Why a scope pattern cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopePatternError {
    #[error("scope pattern must not be empty; remove the entry, or use * to allow every scope")]
    Empty,
    #[error("scope pattern must be at most {MAX_SCOPE_LEN} characters; this one has {0}")]
    TooLong(usize),
    #[error(
        "scope pattern {pattern:?} contains {chars}, which patterns may not contain; use scope characters (letters, digits and : . _ / -) and the wildcards * and ?"
    )]
    InvalidChars { pattern: String, chars: String },
}

impl ScopePattern {
    pub fn new(pattern: &str) -> Result<Self, ScopePatternError> {
        if pattern.is_empty() {
            return Err(ScopePatternError::Empty);
        }
        let len = pattern.chars().count();
        if len > MAX_SCOPE_LEN {
            return Err(ScopePatternError::TooLong(len));
        }
        let chars =
            validation::disallowed_chars(pattern, |c| validation::is_scope_char(c) || c == '?');
        if !chars.is_empty() {
            return Err(ScopePatternError::InvalidChars {
                pattern: pattern.to_owned(),
                chars,
            });
        }
        Ok(Self(pattern.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `scope` matches the whole pattern.
    pub fn matches(&self, scope: &str) -> bool {
        let pattern: Vec<char> = self.0.chars().collect();
        let text: Vec<char> = scope.chars().collect();
        // Linear-space wildcard matching: on a mismatch, let the most recent `*` swallow one
        // more character and retry from there.
        let (mut p, mut t) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            let one = |c: char| c == text[t] || (c == '?' && text[t] != '*');
            match pattern.get(p) {
                Some('*') => {
                    star = Some((p, t));
                    p += 1;
                }
                Some(&c) if one(c) => {
                    p += 1;
                    t += 1;
                }
                _ => match star {
                    Some((star_p, star_t)) => {
                        star = Some((star_p, star_t + 1));
                        p = star_p + 1;
                        t = star_t + 1;
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|c| *c == '*')
    }
}

impl fmt::Display for ScopePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `allowedScopes` of one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeRule {
    pub policy: String,
    pub patterns: Vec<ScopePattern>,
}

impl ScopeRule {
    pub fn allows(&self, scope: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(scope))
    }
}

/// One policy's list of allowed values (retention modes, audiences).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowList<T> {
    pub policy: String,
    pub values: Vec<T>,
}

impl<T> AllowList<T> {
    pub fn allows<Q>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.values.iter().any(|v| v.borrow() == value)
    }
}

/// The rules that govern one namespace: every selecting, valid policy composed.
///
/// Pure data; `Default` is "no policy": no expiry rules, any scope, retention and audience,
/// and (as the API documents) no owners in system groups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EffectivePolicy {
    /// The policies applied, sorted by name.
    pub policies: Vec<String>,
    /// Policies that would govern (or, with a malformed selector, might govern) this
    /// namespace but fail validation, so are not applied. Sorted.
    pub invalid_policies: Vec<String>,
    /// The first policy (by name) requiring every token to expire; `None`: not required.
    pub expiration_required_by: Option<String>,
    /// Lifetime of tokens that set none: the shortest default, never above `max_lifetime`.
    pub default_lifetime: Option<Limit<StdDuration>>,
    /// The shortest maximum lifetime.
    pub max_lifetime: Option<Limit<StdDuration>>,
    /// The shortest idle timeout.
    pub idle_timeout: Option<Limit<StdDuration>>,
    /// One entry per policy that restricts scopes: a scope is allowed iff every entry allows it.
    pub allowed_scopes: Vec<ScopeRule>,
    /// The first policy (by name) requiring every token to name a scope; `None`: not required.
    pub scopes_required_by: Option<String>,
    /// One entry per policy that restricts retention; allowed iff every entry allows it.
    pub allowed_retention: Vec<AllowList<Retention>>,
    /// The shortest maximum reveal window.
    pub max_reveal_window: Option<Limit<StdDuration>>,
    /// The shortest maximum lifetime of exchanged JWTs.
    pub exchange_max_ttl: Option<Limit<StdDuration>>,
    /// One entry per policy that lists audiences, in policy-name order; allowed iff every
    /// entry allows it.
    pub exchange_audiences: Vec<AllowList<String>>,
    /// The *longest* warning period: warning earlier is the stricter choice.
    pub warn_before: Option<Limit<StdDuration>>,
    /// Owners in `system:` groups are allowed only if every policy that sets `owners` allows
    /// them, and at least one does.
    pub allow_system_groups: bool,
    /// The policy that decided `allow_system_groups` (the first denying one, else the first
    /// allowing one); `None` when no policy sets `owners`.
    pub system_groups_policy: Option<String>,
    /// Groups the selecting policies name as privileged (their union), beyond the defaults.
    pub privileged_groups: Vec<String>,
}

/// Policies that select one namespace and leave a setting no allowed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The policy field they contradict each other on.
    pub field: &'static str,
    /// What is impossible, ending before the policy names.
    pub what: &'static str,
    /// The policies that restrict that setting, sorted.
    pub policies: Vec<String>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.what,
            self.policies.join(", "),
            self.field
        )
    }
}

/// A rule a token breaks, with the policy that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The spec field at fault, e.g. `spec.scopes[1]`.
    pub field: String,
    /// The rule, the value and the policy, and what to do instead.
    pub message: String,
    /// The policy whose rule is broken; `None` for Patrol's own default (system groups).
    pub policy: Option<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// What the operator issues for a token under an [`EffectivePolicy`].
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedToken {
    /// Policies applied (for `status.policies`).
    pub policies: Vec<String>,
    /// When the token expires; `None`: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// The spec's scopes that policy allows, in spec order; the others are not granted.
    pub granted_scopes: Vec<String>,
    /// The spec's retention (default `OneTime`), even when policy forbids it; see `non_compliance`.
    pub retention: Retention,
    /// How long a `OneTime` Secret is kept.
    pub reveal_window: StdDuration,
    /// Expire the token after this long unused.
    pub idle_timeout: Option<StdDuration>,
    /// Longest lifetime of a JWT exchanged for this token.
    pub exchange_max_ttl: StdDuration,
    /// Audiences exchanged JWTs may name; `None`: any.
    pub exchange_audiences: Option<Vec<String>>,
    /// Raise `ExpiringSoon` this long before expiry.
    pub warn_before: Option<StdDuration>,
    /// Every rule the spec breaks, whether narrowed above or left as is.
    pub non_compliance: Vec<Violation>,
}

impl ResolvedToken {
    pub fn is_compliant(&self) -> bool {
        self.non_compliance.is_empty()
    }
}

/// All TokenPolicies of the cluster, validated once and ready to compose per namespace.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    /// Sorted by name.
    entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    selection: Selection,
    rules: Result<Rules, Vec<FieldError>>,
}

#[derive(Clone, Debug)]
enum Selection {
    All,
    Matching(LabelSelector),
    Malformed,
}

/// A valid policy with its durations parsed and patterns compiled.
#[derive(Clone, Debug)]
struct Rules {
    expiration_required: bool,
    default_lifetime: Option<StdDuration>,
    max_lifetime: Option<StdDuration>,
    idle_timeout: Option<StdDuration>,
    allowed_scopes: Option<Vec<ScopePattern>>,
    scopes_required: bool,
    allowed_retention: Option<Vec<Retention>>,
    max_reveal_window: Option<StdDuration>,
    exchange_max_ttl: Option<StdDuration>,
    exchange_audiences: Option<Vec<String>>,
    warn_before: Option<StdDuration>,
    allow_system_groups: Option<bool>,
    privileged_groups: Vec<String>,
}

impl PolicySet {
    /// Accepts owned policies, references, or `Arc`s from a reflector store.
    pub fn new<P: Borrow<TokenPolicy>>(policies: impl IntoIterator<Item = P>) -> Self {
        let mut entries: Vec<Entry> = policies
            .into_iter()
            .map(|p| {
                let p = p.borrow();
                Entry::new(p.metadata.name.clone().unwrap_or_default(), &p.spec)
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Policies that fail validation, with their errors (for the TokenPolicy's own status).
    pub fn invalid(&self) -> impl Iterator<Item = (&str, &[FieldError])> {
        self.entries.iter().filter_map(|e| {
            e.rules
                .as_ref()
                .err()
                .map(|errs| (e.name.as_str(), errs.as_slice()))
        })
    }

    /// The rules for a namespace with these labels (include `kubernetes.io/metadata.name`
    /// so selectors can name namespaces).
    pub fn effective_for(&self, namespace_labels: &BTreeMap<String, String>) -> EffectivePolicy {
        let mut effective = EffectivePolicy::default();
        for entry in &self.entries {
            let selected = match &entry.selection {
                Selection::All => true,
                Selection::Matching(selector) => matches_valid(selector, namespace_labels),
                Selection::Malformed => false,
            };
            match &entry.rules {
                Ok(rules) if selected => effective.apply(&entry.name, rules),
                Err(_) if selected || matches!(entry.selection, Selection::Malformed) => {
                    effective.invalid_policies.push(entry.name.clone());
                }
                _ => {}
            }
        }
        // A default above another policy's maximum would be clamped at every issue; compose
        // it down once so a token that relies on the default is compliant.
        if let (Some(default), Some(max)) = (&effective.default_lifetime, &effective.max_lifetime)
            && max.value < default.value
        {
            effective.default_lifetime = Some(max.clone());
        }
        effective
    }
}

impl<P: Borrow<TokenPolicy>> FromIterator<P> for PolicySet {
    fn from_iter<I: IntoIterator<Item = P>>(iter: I) -> Self {
        Self::new(iter)
    }
}

impl Entry {
    fn new(name: String, spec: &TokenPolicySpec) -> Self {
        let selection = match &spec.namespace_selector {
            None => Selection::All,
            Some(selector) if !validation::validate_label_selector("", selector).is_empty() => {
                Selection::Malformed
            }
            Some(selector) if selector_is_empty(selector) => Selection::All,
            Some(selector) => Selection::Matching(selector.clone()),
        };
        Self {
            name,
            selection,
            rules: Rules::compile(spec),
        }
    }
}

impl Rules {
    fn compile(spec: &TokenPolicySpec) -> Result<Self, Vec<FieldError>> {
        let errors = validation::validate_policy(spec);
        if !errors.is_empty() {
            return Err(errors);
        }
        // Validation passed, so these cannot fail; errors are still carried, not unwrapped.
        let parse = |field: &str, value: Option<&Duration>| {
            value
                .map(|d| {
                    d.parse()
                        .map_err(|e| vec![FieldError::new(field, e.to_string())])
                })
                .transpose()
        };
        let expiration = spec.expiration.as_ref();
        let secret = spec.secret.as_ref();
        let exchange = spec.exchange.as_ref();
        let allowed_scopes = match &spec.allowed_scopes {
            None => None,
            Some(globs) => Some(
                globs
                    .iter()
                    .map(|g| {
                        ScopePattern::new(g)
                            .map_err(|e| vec![FieldError::new("spec.allowedScopes", e.to_string())])
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Self {
            expiration_required: expiration.is_some_and(|e| e.required),
            default_lifetime: parse(
                "spec.expiration.default",
                expiration.and_then(|e| e.default.as_ref()),
            )?,
            max_lifetime: parse(
                "spec.expiration.max",
                expiration.and_then(|e| e.max.as_ref()),
            )?,
            idle_timeout: parse("spec.idleTimeout", spec.idle_timeout.as_ref())?,
            allowed_scopes,
            scopes_required: spec.require_scopes,
            allowed_retention: secret.and_then(|s| s.allowed_retention.clone()),
            max_reveal_window: parse(
                "spec.secret.maxRevealWindow",
                secret.and_then(|s| s.max_reveal_window.as_ref()),
            )?,
            exchange_max_ttl: parse(
                "spec.exchange.maxTTL",
                exchange.and_then(|e| e.max_ttl.as_ref()),
            )?,
            exchange_audiences: exchange.and_then(|e| e.audiences.clone()),
            warn_before: parse(
                "spec.rotation.warnBefore",
                spec.rotation.as_ref().and_then(|r| r.warn_before.as_ref()),
            )?,
            allow_system_groups: spec.owners.as_ref().map(|o| o.allow_system_groups),
            privileged_groups: spec
                .owners
                .as_ref()
                .map(|o| o.privileged_groups.clone())
                .unwrap_or_default(),
        })
    }
}

/// Whether a namespace with `labels` is selected: absent or empty selects every namespace,
/// a malformed selector (see [`validation::validate_label_selector`]) selects none.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    match selector {
        None => true,
        Some(s) if !validation::validate_label_selector("", s).is_empty() => false,
        Some(s) => matches_valid(s, labels),
    }
}

fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// `matchLabels` AND every `matchExpressions` requirement; the selector must be valid.
fn matches_valid(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value))
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels))
}

fn requirement_matches(
    requirement: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> bool {
    let value = labels.get(&requirement.key);
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        // As in Kubernetes, NotIn also matches namespaces without the label.
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// Whether a group is a Kubernetes system group that makes a token dangerous to mint
/// (`system:masters`, `system:nodes`, ...).
///
/// Exempt are the groups the apiserver gives every authenticated user
/// (`system:authenticated`) and every ServiceAccount (`system:serviceaccounts`,
/// `system:serviceaccounts:<namespace>`): the mutating webhook copies the requester's groups,
/// so refusing those would refuse every token, while they grant nothing a plain user or a
/// ServiceAccount does not already have.
pub fn is_privileged_system_group(group: &str) -> bool {
    group.starts_with("system:")
        && group != "system:authenticated"
        && group != "system:serviceaccounts"
        && !group.starts_with("system:serviceaccounts:")
}

/// Administrator groups outside `system:` that common installers bind to `cluster-admin`;
/// treated like system groups. Policies add more (`owners.privilegedGroups`).
pub const DEFAULT_PRIVILEGED_GROUPS: &[&str] = &["kubeadm:cluster-admins"];

/// Whether members of `group` may not own tokens (without `allowSystemGroups`): a
/// privileged system group, a default administrator group, or one a policy names.
pub fn is_privileged_group(group: &str, named_by_policy: &[String]) -> bool {
    is_privileged_system_group(group)
        || DEFAULT_PRIVILEGED_GROUPS.contains(&group)
        || named_by_policy.iter().any(|g| g == group)
}

/// What the spec asks for as an expiry.
enum Requested {
    Nothing,
    Ttl(StdDuration),
    At(DateTime<Utc>),
    /// A value that does not parse; `validate_token` reports it.
    Unreadable,
}

fn requested_expiry(spec: &PersonalAccessTokenSpec) -> Requested {
    let Some(expiration) = &spec.expiration else {
        return Requested::Nothing;
    };
    if let Some(ttl) = &expiration.ttl {
        return ttl.parse().map_or(Requested::Unreadable, Requested::Ttl);
    }
    match &expiration.expires_at {
        Some(at) => to_chrono(at).map_or(Requested::Unreadable, Requested::At),
        None => Requested::Nothing,
    }
}

fn to_chrono(time: &Time) -> Option<DateTime<Utc>> {
    let (mut secs, mut nanos) = (time.0.as_second(), time.0.subsec_nanosecond());
    if nanos < 0 {
        secs -= 1;
        nanos += 1_000_000_000;
    }
    DateTime::from_timestamp(secs, u32::try_from(nanos).ok()?)
}

/// `start + d`, or `None` when that is beyond what a timestamp can hold (i.e. never).
fn add(start: DateTime<Utc>, d: StdDuration) -> Option<DateTime<Utc>> {
    start.checked_add_signed(chrono::Duration::from_std(d).ok()?)
}

fn show(d: StdDuration) -> String {
    duration::format(d)
}

fn show_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn list<T: fmt::Display>(values: &[T]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl EffectivePolicy {
    fn apply(&mut self, name: &str, rules: &Rules) {
        self.policies.push(name.to_owned());
        if rules.expiration_required && self.expiration_required_by.is_none() {
            self.expiration_required_by = Some(name.to_owned());
        }
        tighten(
            &mut self.default_lifetime,
            rules.default_lifetime,
            name,
            |new, old| new < old,
        );
        tighten(
            &mut self.max_lifetime,
            rules.max_lifetime,
            name,
            |new, old| new < old,
        );
        tighten(
            &mut self.idle_timeout,
            rules.idle_timeout,
            name,
            |new, old| new < old,
        );
        tighten(
            &mut self.max_reveal_window,
            rules.max_reveal_window,
            name,
            |new, old| new < old,
        );
        tighten(
            &mut self.exchange_max_ttl,
            rules.exchange_max_ttl,
            name,
            |new, old| new < old,
        );
        tighten(
            &mut self.warn_before,
            rules.warn_before,
            name,
            |new, old| new > old,
        );
        if rules.scopes_required && self.scopes_required_by.is_none() {
            self.scopes_required_by = Some(name.to_owned());
        }
        if let Some(patterns) = &rules.allowed_scopes {
            self.allowed_scopes.push(ScopeRule {
                policy: name.to_owned(),
                patterns: patterns.clone(),
            });
        }
        if let Some(values) = &rules.allowed_retention {
            self.allowed_retention.push(AllowList {
                policy: name.to_owned(),
                values: values.clone(),
            });
        }
        if let Some(values) = &rules.exchange_audiences {
            self.exchange_audiences.push(AllowList {
                policy: name.to_owned(),
                values: values.clone(),
            });
        }
        for group in &rules.privileged_groups {
            if !self.privileged_groups.contains(group) {
                self.privileged_groups.push(group.clone());
            }
        }
        if let Some(allow) = rules.allow_system_groups {
            let first_vote = self.system_groups_policy.is_none();
            if first_vote || (self.allow_system_groups && !allow) {
                self.allow_system_groups = allow;
                self.system_groups_policy = Some(name.to_owned());
            }
        }
    }

    pub fn expiration_required(&self) -> bool {
        self.expiration_required_by.is_some()
    }

    /// The first rule (by policy name) that does not allow `scope`; `None`: allowed.
    pub fn scope_denied_by(&self, scope: &str) -> Option<&ScopeRule> {
        self.allowed_scopes.iter().find(|rule| !rule.allows(scope))
    }

    pub fn allows_scope(&self, scope: &str) -> bool {
        self.scope_denied_by(scope).is_none()
    }

    pub fn retention_denied_by(&self, retention: Retention) -> Option<&AllowList<Retention>> {
        self.allowed_retention
            .iter()
            .find(|list| !list.allows(&retention))
    }

    /// Retention modes every policy allows; `None`: any.
    pub fn allowed_retention(&self) -> Option<Vec<Retention>> {
        if self.allowed_retention.is_empty() {
            return None;
        }
        let all = [Retention::OneTime, Retention::Persistent];
        Some(
            all.into_iter()
                .filter(|r| self.retention_denied_by(*r).is_none())
                .collect(),
        )
    }

    pub fn audience_denied_by(&self, audience: &str) -> Option<&AllowList<String>> {
        self.exchange_audiences
            .iter()
            .find(|list| !list.allows(audience))
    }

    pub fn allows_audience(&self, audience: &str) -> bool {
        self.audience_denied_by(audience).is_none()
    }

    /// Audiences every policy allows, in the order of the first policy's list; `None`: any.
    pub fn allowed_audiences(&self) -> Option<Vec<String>> {
        let first = self.exchange_audiences.first()?;
        Some(
            first
                .values
                .iter()
                .filter(|a| self.allows_audience(a))
                .cloned()
                .collect(),
        )
    }

    /// Settings on which the policies composed here leave no value at all: every token
    /// in the namespace would break one of them.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        if self.allowed_retention().is_some_and(|r| r.is_empty()) {
            out.push(Conflict {
                field: "spec.secret.allowedRetention",
                what: "no secret retention is allowed by all of",
                policies: self
                    .allowed_retention
                    .iter()
                    .map(|l| l.policy.clone())
                    .collect(),
            });
        }
        if self.allowed_audiences().is_some_and(|a| a.is_empty()) {
            out.push(Conflict {
                field: "spec.exchange.audiences",
                what: "no exchange audience is allowed by all of",
                policies: self
                    .exchange_audiences
                    .iter()
                    .map(|l| l.policy.clone())
                    .collect(),
            });
        }
        out
    }

    /// The audience of an exchange request that names none: the first audience, in the list
    /// of the first policy (by name) that lists audiences, that every policy allows. `None`
    /// when no policy lists audiences (the caller must then require one) or none is common.
    pub fn default_audience(&self) -> Option<&str> {
        let first = self.exchange_audiences.first()?;
        first
            .values
            .iter()
            .find(|a| self.allows_audience(a))
            .map(String::as_str)
    }

    /// Why `spec` may not be admitted now; empty when it may.
    ///
    /// Reports policy rules only: run [`validation::validate_token`] for the shape of the spec
    /// (a duration that does not parse is not reported here).
    pub fn admission_violations(
        &self,
        spec: &PersonalAccessTokenSpec,
        now: DateTime<Utc>,
    ) -> Vec<Violation> {
        self.check(spec, now)
    }

    /// What to issue for `spec` at `issued_at`: the rule at the top of this module.
    ///
    /// Expiry: the spec's (`ttl` from `issued_at`, or `expiresAt`), else the policy default
    /// from `issued_at`, else none; then no later than `issued_at + max_lifetime`. A spec
    /// duration that does not parse (which validation refuses) fails closed: an unreadable
    /// `ttl` expires the token at issue, an unreadable `revealWindow` uses the default.
    pub fn resolve(
        &self,
        spec: &PersonalAccessTokenSpec,
        issued_at: DateTime<Utc>,
    ) -> ResolvedToken {
        let requested = match requested_expiry(spec) {
            Requested::Nothing => self
                .default_lifetime
                .as_ref()
                .and_then(|d| add(issued_at, d.value)),
            Requested::Ttl(ttl) => add(issued_at, ttl),
            Requested::At(at) => Some(at),
            Requested::Unreadable => Some(issued_at),
        };
        let cap = self
            .max_lifetime
            .as_ref()
            .and_then(|m| add(issued_at, m.value));
        let expires_at = match (requested, cap) {
            (Some(expiry), Some(cap)) => Some(expiry.min(cap)),
            (None, cap) => cap,
            (expiry, None) => expiry,
        };

        let secret = spec.secret.as_ref();
        let spec_window = secret
            .and_then(|s| s.reveal_window.as_ref())
            .and_then(|w| w.parse().ok());
        let mut reveal_window = spec_window.unwrap_or(DEFAULT_REVEAL_WINDOW);
        if let Some(max) = &self.max_reveal_window {
            reveal_window = reveal_window.min(max.value);
        }

        let spec_audiences = spec
            .exchange
            .as_ref()
            .map(|e| e.audiences.as_slice())
            .unwrap_or_default();
        let exchange_audiences = if spec_audiences.is_empty() {
            self.allowed_audiences()
        } else {
            Some(
                spec_audiences
                    .iter()
                    .filter(|a| self.allows_audience(a))
                    .cloned()
                    .collect(),
            )
        };

        ResolvedToken {
            policies: self.policies.clone(),
            expires_at,
            granted_scopes: spec
                .scopes
                .iter()
                .filter(|s| self.allows_scope(s))
                .cloned()
                .collect(),
            retention: secret.and_then(|s| s.retention).unwrap_or_default(),
            reveal_window,
            idle_timeout: self.idle_timeout.as_ref().map(|l| l.value),
            exchange_max_ttl: self
                .exchange_max_ttl
                .as_ref()
                .map_or(DEFAULT_EXCHANGE_MAX_TTL, |l| l.value),
            exchange_audiences,
            warn_before: match self.warn_before.as_ref().map(|l| l.value) {
                None => expires_at.map(|at| default_warning(issued_at, at)),
                Some(StdDuration::ZERO) => None,
                set => set,
            },
            non_compliance: self.check(spec, issued_at),
        }
    }

    /// The rules, shared by admission (at `now`) and resolution (at the issue time).
    fn check(&self, spec: &PersonalAccessTokenSpec, start: DateTime<Utc>) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut violation = |field: String, policy: Option<&str>, message: String| {
            out.push(Violation {
                field,
                message,
                policy: policy.map(str::to_owned),
            });
        };

        match requested_expiry(spec) {
            Requested::Nothing => {
                if let Some(policy) = &self.expiration_required_by
                    && self.default_lifetime.is_none()
                {
                    let limit = self
                        .max_lifetime
                        .as_ref()
                        .map(|m| {
                            format!(
                                " (at most {}, the limit of policy {})",
                                show(m.value),
                                m.policy
                            )
                        })
                        .unwrap_or_default();
                    violation(
                        "spec.expiration".into(),
                        Some(policy),
                        format!(
                            "policy {policy} requires every token to expire and no policy sets a default lifetime; set spec.expiration.ttl{limit} or spec.expiration.expiresAt"
                        ),
                    );
                }
            }
            Requested::Ttl(ttl) => {
                if let Some(max) = &self.max_lifetime
                    && ttl > max.value
                {
                    violation(
                        "spec.expiration.ttl".into(),
                        Some(&max.policy),
                        format!(
                            "lifetime {} is longer than policy {} allows: it limits token lifetime to {}; set a ttl of {} or less",
                            show(ttl),
                            max.policy,
                            show(max.value),
                            show(max.value)
                        ),
                    );
                }
            }
            Requested::At(at) => {
                if let Some(max) = &self.max_lifetime {
                    let lifetime = (at - start).to_std().unwrap_or_default();
                    if lifetime > max.value {
                        let latest = add(start, max.value).map(show_time).unwrap_or_default();
                        violation(
                            "spec.expiration.expiresAt".into(),
                            Some(&max.policy),
                            format!(
                                "{} is {} away, longer than policy {} allows: it limits token lifetime to {}; choose an instant no later than {latest}",
                                show_time(at),
                                show(StdDuration::from_secs(lifetime.as_secs())),
                                max.policy,
                                show(max.value)
                            ),
                        );
                    }
                }
            }
            Requested::Unreadable => {}
        }

        if spec.scopes.is_empty()
            && let Some(policy) = &self.scopes_required_by
        {
            violation(
                "spec.scopes".into(),
                Some(policy),
                format!(
                    "policy {policy} requires every token to name at least one scope (a token without scopes may do everything its owner may); add the scopes this token needs, e.g. scopes: [\"read:pods\"]"
                ),
            );
        }

        for (i, scope) in spec.scopes.iter().enumerate() {
            if let Some(rule) = self.scope_denied_by(scope) {
                let allowed = if rule.patterns.is_empty() {
                    "which allows no scopes; remove it".to_owned()
                } else {
                    format!(
                        "which allows only {}; remove it or request a scope matching one of those",
                        list(&rule.patterns)
                    )
                };
                violation(
                    format!("spec.scopes[{i}]"),
                    Some(&rule.policy),
                    format!(
                        "scope {scope:?} is not allowed by policy {}, {allowed}",
                        rule.policy
                    ),
                );
            }
        }

        let secret = spec.secret.as_ref();
        let retention = secret.and_then(|s| s.retention);
        let effective_retention = retention.unwrap_or_default();
        if let Some(rule) = self.retention_denied_by(effective_retention) {
            let defaulted = if retention.is_none() {
                " (the default)"
            } else {
                ""
            };
            let instead = match self.allowed_retention().as_deref() {
                Some([first, ..]) => format!("set spec.secret.retention to {first:?}"),
                _ => format!(
                    "no retention mode satisfies every policy here ({}); ask an administrator",
                    self.retention_policies()
                ),
            };
            violation(
                "spec.secret.retention".into(),
                Some(&rule.policy),
                format!(
                    "retention {effective_retention:?}{defaulted} is not allowed by policy {}, which allows only {}; {instead}",
                    rule.policy,
                    list(
                        &rule
                            .values
                            .iter()
                            .map(|r| format!("{r:?}"))
                            .collect::<Vec<_>>()
                    )
                ),
            );
        }

        // The reveal window only matters while a OneTime Secret exists.
        if effective_retention == Retention::OneTime
            && let Some(max) = &self.max_reveal_window
            && let Some(window) = secret
                .and_then(|s| s.reveal_window.as_ref())
                .and_then(|w| w.parse().ok())
            && window > max.value
        {
            violation(
                "spec.secret.revealWindow".into(),
                Some(&max.policy),
                format!(
                    "reveal window {} is longer than policy {} allows: it limits the reveal window to {}; set {} or less",
                    show(window),
                    max.policy,
                    show(max.value),
                    show(max.value)
                ),
            );
        }

        if !self.allow_system_groups {
            let groups = spec
                .owner
                .as_ref()
                .map(|o| o.groups.as_slice())
                .unwrap_or_default();
            for (i, group) in groups
                .iter()
                .enumerate()
                .filter(|(_, g)| is_privileged_group(g, &self.privileged_groups))
            {
                let kind = if is_privileged_system_group(group) {
                    "a Kubernetes system group"
                } else {
                    "a privileged group"
                };
                let message = match &self.system_groups_policy {
                    Some(policy) => format!(
                        "owner group {group:?} is {kind} and policy {policy} does not allow tokens for owners in system groups; create the token as an identity outside system groups, or set spec.owners.allowSystemGroups: true in policy {policy}"
                    ),
                    None => format!(
                        "owner group {group:?} is {kind}, and tokens for owners in system groups are refused unless a TokenPolicy governing this namespace sets spec.owners.allowSystemGroups: true; create the token as an identity outside system groups"
                    ),
                };
                violation(
                    format!("spec.owner.groups[{i}]"),
                    self.system_groups_policy.as_deref(),
                    message,
                );
            }
        }

        let audiences = spec
            .exchange
            .as_ref()
            .map(|e| e.audiences.as_slice())
            .unwrap_or_default();
        for (i, audience) in audiences.iter().enumerate() {
            if let Some(rule) = self.audience_denied_by(audience) {
                let allowed = if rule.values.is_empty() {
                    "which allows no token exchange; remove it".to_owned()
                } else {
                    format!("which allows only {}; remove it", list(&rule.values))
                };
                violation(
                    format!("spec.exchange.audiences[{i}]"),
                    Some(&rule.policy),
                    format!(
                        "audience {audience:?} is not allowed by policy {}, {allowed}",
                        rule.policy
                    ),
                );
            }
        }

        out
    }

    fn retention_policies(&self) -> String {
        list(
            &self
                .allowed_retention
                .iter()
                .map(|l| l.policy.as_str())
                .collect::<Vec<_>>(),
        )
    }
}

/// Keeps the stricter of `slot` and `value` (strictness given by `stricter(new, old)`);
/// on a tie the earlier policy, which comes first by name, stays.
fn tighten(
    slot: &mut Option<Limit<StdDuration>>,
    value: Option<StdDuration>,
    policy: &str,
    stricter: impl Fn(StdDuration, StdDuration) -> bool,
) {
    let Some(value) = value else { return };
    if slot.as_ref().is_none_or(|old| stricter(value, old.value)) {
        *slot = Some(Limit {
            value,
            policy: policy.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1alpha1::{
        ExchangePolicy, ExchangeSpec, Expiration, ExpirationPolicy, OwnerPolicy, RotationPolicy,
        SecretDelivery, SecretPolicy, TokenOwner,
    };
    use k8s_openapi::jiff::Timestamp;

    fn d(text: &str) -> StdDuration {
        duration::parse(text).expect("duration")
    }

    fn limit(text: &str, policy: &str) -> Option<Limit<StdDuration>> {
        Some(Limit {
            value: d(text),
            policy: policy.into(),
        })
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("time")
    }

    fn at(t: DateTime<Utc>) -> Time {
        Time(Timestamp::from_second(t.timestamp()).expect("timestamp"))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn set(policies: &[(&str, TokenPolicySpec)]) -> PolicySet {
        policies
            .iter()
            .map(|(name, spec)| TokenPolicy::new(name, spec.clone()))
            .collect()
    }

    fn everywhere(policies: &[(&str, TokenPolicySpec)]) -> EffectivePolicy {
        set(policies).effective_for(&labels(&[("kubernetes.io/metadata.name", "dev")]))
    }

    fn lifetime(
        required: bool,
        default: Option<&str>,
        max: Option<&str>,
    ) -> Option<ExpirationPolicy> {
        Some(ExpirationPolicy {
            required,
            default: default.map(Into::into),
            max: max.map(Into::into),
        })
    }

    fn scopes(globs: &[&str]) -> Option<Vec<String>> {
        Some(globs.iter().map(|g| (*g).to_owned()).collect())
    }

    fn audiences(list: &[&str]) -> Option<ExchangePolicy> {
        Some(ExchangePolicy {
            max_ttl: None,
            audiences: Some(list.iter().map(|a| (*a).to_owned()).collect()),
        })
    }

    fn retention(list: &[Retention]) -> Option<SecretPolicy> {
        Some(SecretPolicy {
            allowed_retention: Some(list.to_vec()),
            max_reveal_window: None,
        })
    }

    fn owners(allow: bool) -> Option<OwnerPolicy> {
        Some(OwnerPolicy {
            allow_system_groups: allow,
            ..Default::default()
        })
    }

    fn selector(
        expressions: &[(&str, &str, &[&str])],
        match_labels: &[(&str, &str)],
    ) -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: Some(
                expressions
                    .iter()
                    .map(|(key, op, values)| LabelSelectorRequirement {
                        key: (*key).into(),
                        operator: (*op).into(),
                        values: (!values.is_empty())
                            .then(|| values.iter().map(|v| (*v).to_owned()).collect()),
                    })
                    .collect(),
            ),
        })
    }

    fn pat() -> PersonalAccessTokenSpec {
        PersonalAccessTokenSpec {
            display_name: "laptop".into(),
            owner: Some(TokenOwner {
                username: "alice".into(),
                uid: None,
                groups: vec!["dev".into()],
            }),
            ..Default::default()
        }
    }

    fn ttl(spec: &mut PersonalAccessTokenSpec, text: &str) {
        spec.expiration = Some(Expiration {
            ttl: Some(text.into()),
            expires_at: None,
        });
    }

    #[test]
    fn no_policy_is_the_default() {
        let effective = everywhere(&[]);
        assert_eq!(effective, EffectivePolicy::default());
        assert!(!effective.expiration_required());
        assert!(effective.allows_scope("anything:*"));
        assert_eq!(effective.allowed_retention(), None);
        assert_eq!(effective.allowed_audiences(), None);
        assert_eq!(effective.default_audience(), None);
        assert!(effective.allows_audience("any"));

        let resolved = effective.resolve(
            &PersonalAccessTokenSpec {
                scopes: vec!["a".into()],
                ..pat()
            },
            now(),
        );
        assert_eq!(
            resolved,
            ResolvedToken {
                policies: vec![],
                expires_at: None,
                granted_scopes: vec!["a".into()],
                retention: Retention::OneTime,
                reveal_window: DEFAULT_REVEAL_WINDOW,
                idle_timeout: None,
                exchange_max_ttl: DEFAULT_EXCHANGE_MAX_TTL,
                exchange_audiences: None,
                warn_before: None,
                non_compliance: vec![],
            }
        );
    }

    #[test]
    fn policies_that_leave_no_common_value_conflict() {
        let retention = |values: &[Retention]| TokenPolicySpec {
            secret: Some(SecretPolicy {
                allowed_retention: Some(values.to_vec()),
                max_reveal_window: None,
            }),
            ..Default::default()
        };
        let audiences = |values: &[&str]| TokenPolicySpec {
            exchange: Some(ExchangePolicy {
                max_ttl: None,
                audiences: Some(values.iter().map(|v| (*v).to_owned()).collect()),
            }),
            ..Default::default()
        };
        assert!(
            everywhere(&[("a", retention(&[Retention::OneTime]))])
                .conflicts()
                .is_empty()
        );
        assert!(
            everywhere(&[
                ("a", retention(&[Retention::OneTime, Retention::Persistent])),
                ("b", retention(&[Retention::OneTime])),
            ])
            .conflicts()
            .is_empty()
        );
        let conflicts = everywhere(&[
            ("a", retention(&[Retention::Persistent])),
            ("b", retention(&[Retention::OneTime])),
            ("c", audiences(&["vault"])),
            ("d", audiences(&["argo"])),
        ])
        .conflicts();
        assert_eq!(
            conflicts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "no secret retention is allowed by all of a, b (spec.secret.allowedRetention)",
                "no exchange audience is allowed by all of c, d (spec.exchange.audiences)",
            ]
        );
    }

    #[test]
    fn the_expiry_warning_defaults_to_a_week_and_policies_change_or_silence_it() {
        let warn = |values: &[&str]| warn_for(values, Some("90d"));
        assert_eq!(warn(&[]), Some(d("7d")), "no policy: a week");
        assert_eq!(
            warn(&["1d"]),
            Some(d("1d")),
            "a policy replaces the default"
        );
        assert_eq!(warn(&["0s"]), None, "0s turns the warning off");
        assert_eq!(
            warn(&["0s", "3d"]),
            Some(d("3d")),
            "the longest warning wins"
        );
        assert_eq!(
            warn_for(&[], Some("1d")),
            Some(d("6h")),
            "a quarter of a short life"
        );
        assert_eq!(warn_for(&[], None), None, "a token that never expires");
    }

    fn warn_for(values: &[&str], ttl: Option<&str>) -> Option<StdDuration> {
        let warn = |values: &[&str]| {
            let specs: Vec<(String, TokenPolicySpec)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        format!("p{i}"),
                        TokenPolicySpec {
                            rotation: Some(RotationPolicy {
                                warn_before: Some((*v).into()),
                            }),
                            ..Default::default()
                        },
                    )
                })
                .collect();
            let named: Vec<(&str, TokenPolicySpec)> =
                specs.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
            let mut spec = pat();
            spec.expiration = ttl.map(|t| Expiration {
                ttl: Some(t.into()),
                expires_at: None,
            });
            everywhere(&named).resolve(&spec, now()).warn_before
        };
        warn(values)
    }

    #[test]
    fn one_policy_is_copied_with_its_name() {
        let spec = TokenPolicySpec {
            expiration: lifetime(true, Some("30d"), Some("90d")),
            idle_timeout: Some("14d".into()),
            allowed_scopes: scopes(&["read:*"]),
            secret: Some(SecretPolicy {
                allowed_retention: Some(vec![Retention::OneTime]),
                max_reveal_window: Some("30m".into()),
            }),
            exchange: Some(ExchangePolicy {
                max_ttl: Some("15m".into()),
                audiences: Some(vec!["vault".into()]),
            }),
            rotation: Some(RotationPolicy {
                warn_before: Some("7d".into()),
            }),
            owners: owners(true),
            ..Default::default()
        };
        let effective = everywhere(&[("org", spec)]);
        let name = "org".to_owned();
        assert_eq!(
            effective,
            EffectivePolicy {
                policies: vec![name.clone()],
                invalid_policies: vec![],
                expiration_required_by: Some(name.clone()),
                default_lifetime: limit("30d", "org"),
                max_lifetime: limit("90d", "org"),
                idle_timeout: limit("14d", "org"),
                allowed_scopes: vec![ScopeRule {
                    policy: name.clone(),
                    patterns: vec![ScopePattern("read:*".into())]
                }],
                allowed_retention: vec![AllowList {
                    policy: name.clone(),
                    values: vec![Retention::OneTime]
                }],
                max_reveal_window: limit("30m", "org"),
                exchange_max_ttl: limit("15m", "org"),
                exchange_audiences: vec![AllowList {
                    policy: name.clone(),
                    values: vec!["vault".into()]
                }],
                warn_before: limit("7d", "org"),
                allow_system_groups: true,
                system_groups_policy: Some(name),
                scopes_required_by: None,
                privileged_groups: vec![],
            }
        );
        assert_eq!(effective.default_audience(), Some("vault"));
        assert_eq!(
            effective.allowed_retention(),
            Some(vec![Retention::OneTime])
        );
    }

    #[test]
    fn three_policies_compose_strictest_wins() {
        let policies = [
            // Given out of name order: composition must not depend on it.
            (
                "c-team",
                TokenPolicySpec {
                    expiration: lifetime(false, Some("7d"), Some("60d")),
                    idle_timeout: Some("30d".into()),
                    allowed_scopes: scopes(&["read:*", "deploy:*"]),
                    secret: retention(&[Retention::OneTime, Retention::Persistent]),
                    exchange: Some(ExchangePolicy {
                        max_ttl: Some("10m".into()),
                        audiences: Some(vec!["argo".into(), "vault".into()]),
                    }),
                    rotation: Some(RotationPolicy {
                        warn_before: Some("3d".into()),
                    }),
                    ..Default::default()
                },
            ),
            (
                "a-org",
                TokenPolicySpec {
                    expiration: lifetime(true, Some("30d"), Some("90d")),
                    allowed_scopes: scopes(&["*"]),
                    exchange: audiences(&["vault", "argo", "grafana"]),
                    rotation: Some(RotationPolicy {
                        warn_before: Some("14d".into()),
                    }),
                    ..Default::default()
                },
            ),
            (
                "b-security",
                TokenPolicySpec {
                    expiration: lifetime(true, None, Some("30d")),
                    idle_timeout: Some("45d".into()),
                    allowed_scopes: scopes(&["read:*"]),
                    secret: Some(SecretPolicy {
                        allowed_retention: Some(vec![Retention::OneTime]),
                        max_reveal_window: Some("2h".into()),
                    }),
                    ..Default::default()
                },
            ),
        ];
        let effective = everywhere(&policies);
        assert_eq!(effective.policies, ["a-org", "b-security", "c-team"]);
        assert_eq!(effective.expiration_required_by.as_deref(), Some("a-org"));
        assert_eq!(effective.default_lifetime, limit("7d", "c-team"));
        assert_eq!(effective.max_lifetime, limit("30d", "b-security"));
        assert_eq!(effective.idle_timeout, limit("30d", "c-team"));
        assert_eq!(effective.max_reveal_window, limit("2h", "b-security"));
        assert_eq!(effective.exchange_max_ttl, limit("10m", "c-team"));
        assert_eq!(effective.warn_before, limit("14d", "a-org"));

        let rules: Vec<_> = effective
            .allowed_scopes
            .iter()
            .map(|r| r.policy.as_str())
            .collect();
        assert_eq!(rules, ["a-org", "b-security", "c-team"]);
        assert!(effective.allows_scope("read:pods"));
        assert_eq!(
            effective
                .scope_denied_by("deploy:prod")
                .map(|r| r.policy.as_str()),
            Some("b-security")
        );
        assert_eq!(
            effective
                .scope_denied_by("admin")
                .map(|r| r.policy.as_str()),
            Some("b-security")
        );

        assert_eq!(
            effective.allowed_retention(),
            Some(vec![Retention::OneTime])
        );
        assert_eq!(
            effective
                .retention_denied_by(Retention::Persistent)
                .map(|r| r.policy.as_str()),
            Some("b-security")
        );
        assert_eq!(
            effective.allowed_audiences(),
            Some(vec!["vault".to_owned(), "argo".to_owned()])
        );
        assert_eq!(
            effective
                .audience_denied_by("grafana")
                .map(|r| r.policy.as_str()),
            Some("c-team")
        );
        assert_eq!(effective.default_audience(), Some("vault"));
        assert!(!effective.allow_system_groups);
        assert_eq!(effective.system_groups_policy, None);
    }

    #[test]
    fn ties_go_to_the_first_policy_by_name() {
        let same = TokenPolicySpec {
            expiration: lifetime(false, None, Some("90d")),
            ..Default::default()
        };
        let longer = TokenPolicySpec {
            expiration: lifetime(false, None, Some("2160h")),
            ..Default::default()
        };
        let effective = everywhere(&[("zeta", same.clone()), ("alpha", longer), ("beta", same)]);
        assert_eq!(effective.max_lifetime, limit("90d", "alpha"));
        let effective = everywhere(&[
            (
                "zeta",
                TokenPolicySpec {
                    expiration: lifetime(false, None, Some("89d")),
                    ..Default::default()
                },
            ),
            (
                "alpha",
                TokenPolicySpec {
                    expiration: lifetime(false, None, Some("90d")),
                    ..Default::default()
                },
            ),
        ]);
        assert_eq!(effective.max_lifetime, limit("89d", "zeta"));
    }

    #[test]
    fn default_lifetime_never_exceeds_another_policys_max() {
        let effective = everywhere(&[
            (
                "a",
                TokenPolicySpec {
                    expiration: lifetime(false, Some("60d"), None),
                    ..Default::default()
                },
            ),
            (
                "b",
                TokenPolicySpec {
                    expiration: lifetime(false, None, Some("30d")),
                    ..Default::default()
                },
            ),
        ]);
        assert_eq!(effective.default_lifetime, limit("30d", "b"));
        let resolved = effective.resolve(&pat(), now());
        assert_eq!(resolved.expires_at, add(now(), d("30d")));
        assert!(resolved.is_compliant(), "{:?}", resolved.non_compliance);
    }

    #[test]
    fn default_audience() {
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, Option<ExchangePolicy>)>,
            Option<&'a str>,
        );
        let table: Vec<Case> = vec![
            (
                "no policy lists audiences",
                vec![("a", None), ("b", Some(ExchangePolicy::default()))],
                None,
            ),
            ("one policy", vec![("a", audiences(&["x", "y"]))], Some("x")),
            (
                "first by name wins",
                vec![("b", audiences(&["y", "x"])), ("a", audiences(&["x", "y"]))],
                Some("x"),
            ),
            (
                "first not allowed by all",
                vec![("a", audiences(&["x", "y"])), ("b", audiences(&["y"]))],
                Some("y"),
            ),
            (
                "policies without audiences ignored",
                vec![("a", None), ("b", audiences(&["z"]))],
                Some("z"),
            ),
            (
                "nothing in common",
                vec![("a", audiences(&["x"])), ("b", audiences(&["y"]))],
                None,
            ),
            (
                "empty list allows none",
                vec![("a", audiences(&[])), ("b", audiences(&["y"]))],
                None,
            ),
        ];
        for (case, policies, want) in table {
            let specs: Vec<_> = policies
                .into_iter()
                .map(|(n, exchange)| {
                    (
                        n,
                        TokenPolicySpec {
                            exchange,
                            ..Default::default()
                        },
                    )
                })
                .collect();
            assert_eq!(everywhere(&specs).default_audience(), want, "{case}");
        }
    }

    #[test]
    fn system_groups_need_every_voting_policy() {
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, Option<OwnerPolicy>)>,
            bool,
            Option<&'a str>,
        );
        let table: Vec<Case> = vec![
            ("nobody votes", vec![("a", None)], false, None),
            (
                "one allows",
                vec![("a", None), ("b", owners(true))],
                true,
                Some("b"),
            ),
            (
                "all allow",
                vec![("a", owners(true)), ("b", owners(true))],
                true,
                Some("a"),
            ),
            (
                "one denies",
                vec![
                    ("a", owners(true)),
                    ("b", owners(false)),
                    ("c", owners(false)),
                ],
                false,
                Some("b"),
            ),
            (
                "denier first",
                vec![("a", owners(false)), ("b", owners(true))],
                false,
                Some("a"),
            ),
        ];
        for (case, policies, allow, policy) in table {
            let specs: Vec<_> = policies
                .into_iter()
                .map(|(n, owners)| {
                    (
                        n,
                        TokenPolicySpec {
                            owners,
                            ..Default::default()
                        },
                    )
                })
                .collect();
            let effective = everywhere(&specs);
            assert_eq!(effective.allow_system_groups, allow, "{case}");
            assert_eq!(effective.system_groups_policy.as_deref(), policy, "{case}");
        }
        for (group, privileged) in [
            ("system:masters", true),
            ("system:nodes", true),
            ("system:kube-controller-manager", true),
            ("system:authenticated", false),
            ("system:serviceaccounts", false),
            ("system:serviceaccounts:ci", false),
            ("developers", false),
            ("systems:masters", false),
        ] {
            assert_eq!(is_privileged_system_group(group), privileged, "{group}");
        }
    }

    #[test]
    fn scope_patterns() {
        let table = [
            ("read:pods", "read:pods", true),
            ("read:pods", "read:pod", false),
            ("read:*", "read:pods", true),
            ("read:*", "read:", true),
            ("read:*", "write:pods", false),
            ("*", "anything/at:all", true),
            ("*:pods", "read:pods", true),
            ("*:pods", "read:svc", false),
            ("deploy/?", "deploy/a", true),
            ("deploy/?", "deploy/ab", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "abcbc", true),
            ("a*b*c", "acb", false),
            ("a*a", "aaa", true),
            ("a*a", "a", false),
            ("**", "", true),
            // A wildcard in the requested scope is only covered by a wildcard in the pattern.
            ("read:*", "read:*", true),
            ("*", "*", true),
            ("read:?", "read:*", false),
            ("read:p*", "read:*", false),
            ("r?ad:*", "r*ad:x", false),
        ];
        for (pattern, scope, want) in table {
            let compiled = ScopePattern::new(pattern).expect(pattern);
            assert_eq!(compiled.matches(scope), want, "{pattern} ~ {scope}");
        }
        assert_eq!(ScopePattern::new(""), Err(ScopePatternError::Empty));
        assert!(matches!(
            ScopePattern::new("a[b]"),
            Err(ScopePatternError::InvalidChars { .. })
        ));
        assert_eq!(
            ScopePattern::new(&"*".repeat(129)),
            Err(ScopePatternError::TooLong(129))
        );
    }

    #[test]
    fn selector_matching() {
        let ns = labels(&[
            ("team", "payments"),
            ("env", "prod"),
            ("kubernetes.io/metadata.name", "pay"),
        ]);
        type Case<'a> = (&'a str, Option<LabelSelector>, bool);
        let table: Vec<Case> = vec![
            ("absent", None, true),
            ("empty", Some(LabelSelector::default()), true),
            ("empty lists", selector(&[], &[]), true),
            (
                "matchLabels hit",
                selector(&[], &[("team", "payments")]),
                true,
            ),
            (
                "matchLabels miss",
                selector(&[], &[("team", "search")]),
                false,
            ),
            (
                "matchLabels all needed",
                selector(&[], &[("team", "payments"), ("env", "dev")]),
                false,
            ),
            (
                "In hit",
                selector(&[("env", "In", &["dev", "prod"])], &[]),
                true,
            ),
            ("In miss", selector(&[("env", "In", &["dev"])], &[]), false),
            (
                "In absent key",
                selector(&[("tier", "In", &["web"])], &[]),
                false,
            ),
            (
                "NotIn hit",
                selector(&[("env", "NotIn", &["dev"])], &[]),
                true,
            ),
            (
                "NotIn miss",
                selector(&[("env", "NotIn", &["prod"])], &[]),
                false,
            ),
            (
                "NotIn absent key",
                selector(&[("tier", "NotIn", &["web"])], &[]),
                true,
            ),
            ("Exists", selector(&[("team", "Exists", &[])], &[]), true),
            (
                "Exists absent",
                selector(&[("tier", "Exists", &[])], &[]),
                false,
            ),
            (
                "DoesNotExist",
                selector(&[("tier", "DoesNotExist", &[])], &[]),
                true,
            ),
            (
                "DoesNotExist present",
                selector(&[("team", "DoesNotExist", &[])], &[]),
                false,
            ),
            (
                "labels AND expressions",
                selector(&[("env", "In", &["prod"])], &[("team", "payments")]),
                true,
            ),
            (
                "labels AND expressions miss",
                selector(&[("env", "In", &["dev"])], &[("team", "payments")]),
                false,
            ),
            (
                "by namespace name",
                selector(&[("kubernetes.io/metadata.name", "In", &["pay"])], &[]),
                true,
            ),
            (
                "malformed: unknown operator",
                selector(&[("env", "Gt", &["1"])], &[]),
                false,
            ),
            (
                "malformed: In without values",
                selector(&[("env", "In", &[])], &[]),
                false,
            ),
            (
                "malformed: NotIn without values",
                selector(&[("tier", "NotIn", &[])], &[]),
                false,
            ),
            (
                "malformed: Exists with values",
                selector(&[("env", "Exists", &["prod"])], &[]),
                false,
            ),
            (
                "malformed: bad key",
                selector(&[("bad key", "DoesNotExist", &[])], &[]),
                false,
            ),
        ];
        for (case, sel, want) in table {
            assert_eq!(selects(sel.as_ref(), &ns), want, "{case}");
            // The policy set agrees, and lists a malformed selector as invalid.
            let effective = set(&[(
                "p",
                TokenPolicySpec {
                    namespace_selector: sel,
                    ..Default::default()
                },
            )])
            .effective_for(&ns);
            assert_eq!(effective.policies.len(), usize::from(want), "{case}");
            let malformed = case.starts_with("malformed");
            assert_eq!(
                effective.invalid_policies.len(),
                usize::from(malformed),
                "{case}"
            );
        }
    }

    #[test]
    fn invalid_policies_are_skipped_and_listed() {
        let prod = selector(&[], &[("env", "prod")]);
        let policies = set(&[
            (
                "good",
                TokenPolicySpec {
                    expiration: lifetime(false, None, Some("90d")),
                    ..Default::default()
                },
            ),
            (
                "broken-duration",
                TokenPolicySpec {
                    expiration: lifetime(true, None, Some("1y")),
                    ..Default::default()
                },
            ),
            (
                "broken-in-prod",
                TokenPolicySpec {
                    namespace_selector: prod,
                    allowed_scopes: scopes(&["read:{a,b}"]),
                    ..Default::default()
                },
            ),
            (
                "broken-selector",
                TokenPolicySpec {
                    namespace_selector: selector(&[("env", "Maybe", &[])], &[]),
                    allowed_scopes: scopes(&[]),
                    ..Default::default()
                },
            ),
        ]);
        assert_eq!(policies.len(), 4);
        let invalid: Vec<_> = policies
            .invalid()
            .map(|(name, errs)| (name, errs.len()))
            .collect();
        assert_eq!(
            invalid,
            [
                ("broken-duration", 1),
                ("broken-in-prod", 1),
                ("broken-selector", 1)
            ]
        );

        let dev = policies.effective_for(&labels(&[("env", "dev")]));
        assert_eq!(dev.policies, ["good"]);
        assert_eq!(dev.invalid_policies, ["broken-duration", "broken-selector"]);
        // Neither loosened nor blocked: only the valid policy's rules apply.
        assert_eq!(dev.max_lifetime, limit("90d", "good"));
        assert!(!dev.expiration_required());
        assert!(dev.allows_scope("anything"));

        let prod = policies.effective_for(&labels(&[("env", "prod")]));
        assert_eq!(
            prod.invalid_policies,
            ["broken-duration", "broken-in-prod", "broken-selector"]
        );
        assert!(prod.allows_scope("read:a"));
    }

    #[test]
    fn builds_from_references_and_arcs() {
        let owned = vec![
            TokenPolicy::new("b", TokenPolicySpec::default()),
            TokenPolicy::new("a", TokenPolicySpec::default()),
        ];
        let by_ref = PolicySet::new(owned.iter());
        let arcs: Vec<std::sync::Arc<TokenPolicy>> =
            owned.iter().cloned().map(std::sync::Arc::new).collect();
        let by_arc: PolicySet = arcs.iter().map(std::sync::Arc::clone).collect();
        for set in [by_ref, by_arc, PolicySet::new(owned)] {
            assert_eq!(set.effective_for(&BTreeMap::new()).policies, ["a", "b"]);
        }
        assert!(PolicySet::default().is_empty());
    }

    /// One policy set with a rule of every kind, each from a differently named policy.
    fn strict() -> EffectivePolicy {
        everywhere(&[
            (
                "lifetime",
                TokenPolicySpec {
                    expiration: lifetime(true, None, Some("90d")),
                    ..Default::default()
                },
            ),
            (
                "scopes",
                TokenPolicySpec {
                    allowed_scopes: scopes(&["read:*", "deploy:staging"]),
                    ..Default::default()
                },
            ),
            (
                "no-scopes-for-x",
                TokenPolicySpec {
                    allowed_scopes: scopes(&["read:*", "deploy:*", "x"]),
                    ..Default::default()
                },
            ),
            (
                "secrets",
                TokenPolicySpec {
                    secret: Some(SecretPolicy {
                        allowed_retention: Some(vec![Retention::OneTime]),
                        max_reveal_window: Some("1h".into()),
                    }),
                    ..Default::default()
                },
            ),
            (
                "owners",
                TokenPolicySpec {
                    owners: owners(false),
                    ..Default::default()
                },
            ),
            (
                "exchange",
                TokenPolicySpec {
                    exchange: audiences(&["vault", "argo"]),
                    ..Default::default()
                },
            ),
        ])
    }

    #[test]
    fn admission_violations_name_field_rule_and_policy() {
        type Edit = fn(&mut PersonalAccessTokenSpec);
        let table: Vec<(&str, Edit, &str, &str, &[&str])> = vec![
            (
                "expiration required",
                |_| {},
                "spec.expiration",
                "lifetime",
                &[
                    "policy lifetime requires every token to expire",
                    "at most 90d",
                    "spec.expiration.ttl",
                ],
            ),
            (
                "ttl over max",
                |s| ttl(s, "91d"),
                "spec.expiration.ttl",
                "lifetime",
                &[
                    "91d",
                    "policy lifetime",
                    "limits token lifetime to 90d",
                    "90d or less",
                ],
            ),
            (
                "expiresAt over max",
                |s| {
                    s.expiration = Some(Expiration {
                        ttl: None,
                        expires_at: Some(at(now() + chrono::Duration::days(100))),
                    })
                },
                "spec.expiration.expiresAt",
                "lifetime",
                &[
                    "100d away",
                    "policy lifetime",
                    "90d",
                    "no later than 2027-04-15T08:00:00Z",
                ],
            ),
            (
                "scope not allowed",
                |s| {
                    ttl(s, "1d");
                    s.scopes = vec!["read:pods".into(), "deploy:prod".into()];
                },
                "spec.scopes[1]",
                "scopes",
                &["\"deploy:prod\"", "policy scopes", "read:*, deploy:staging"],
            ),
            (
                "wildcard scope",
                |s| {
                    ttl(s, "1d");
                    s.scopes = vec!["*".into()];
                },
                "spec.scopes[0]",
                "no-scopes-for-x",
                &["\"*\"", "policy no-scopes-for-x"],
            ),
            (
                "retention",
                |s| {
                    ttl(s, "1d");
                    s.secret = Some(SecretDelivery {
                        retention: Some(Retention::Persistent),
                        ..Default::default()
                    });
                },
                "spec.secret.retention",
                "secrets",
                &[
                    "Persistent",
                    "policy secrets",
                    "allows only OneTime",
                    "set spec.secret.retention to OneTime",
                ],
            ),
            (
                "reveal window",
                |s| {
                    ttl(s, "1d");
                    s.secret = Some(SecretDelivery {
                        reveal_window: Some("2h".into()),
                        ..Default::default()
                    });
                },
                "spec.secret.revealWindow",
                "secrets",
                &["2h", "policy secrets", "limits the reveal window to 1h"],
            ),
            (
                "system group",
                |s| {
                    ttl(s, "1d");
                    s.owner = Some(TokenOwner {
                        username: "admin".into(),
                        uid: None,
                        groups: vec!["system:authenticated".into(), "system:masters".into()],
                    });
                },
                "spec.owner.groups[1]",
                "owners",
                &["\"system:masters\"", "policy owners", "allowSystemGroups"],
            ),
            (
                "audience",
                |s| {
                    ttl(s, "1d");
                    s.exchange = Some(ExchangeSpec {
                        audiences: vec!["vault".into(), "grafana".into()],
                        allowed_actors: vec![],
                    });
                },
                "spec.exchange.audiences[1]",
                "exchange",
                &["\"grafana\"", "policy exchange", "vault, argo"],
            ),
        ];
        let effective = strict();
        for (case, edit, field, policy, needles) in table {
            let mut spec = pat();
            edit(&mut spec);
            let violations = effective.admission_violations(&spec, now());
            assert_eq!(violations.len(), 1, "{case}: {violations:#?}");
            let v = &violations[0];
            assert_eq!(
                (v.field.as_str(), v.policy.as_deref()),
                (field, Some(policy)),
                "{case}"
            );
            for needle in needles {
                assert!(
                    v.message.contains(needle),
                    "{case}: {:?} lacks {needle:?}",
                    v.message
                );
            }
            assert!(v.to_string().starts_with(&format!("{field}: ")), "{case}");
        }
    }

    #[test]
    fn admission_accepts_what_policy_allows() {
        let effective = strict();
        type Edit = fn(&mut PersonalAccessTokenSpec);
        let table: Vec<(&str, Edit)> = vec![
            ("ttl at max", |s| ttl(s, "90d")),
            ("expiresAt at max", |s| {
                s.expiration = Some(Expiration {
                    ttl: None,
                    expires_at: Some(at(now() + chrono::Duration::days(90))),
                })
            }),
            ("expiresAt in the past", |s| {
                s.expiration = Some(Expiration {
                    ttl: None,
                    expires_at: Some(at(now() - chrono::Duration::days(1))),
                })
            }),
            ("allowed scopes", |s| {
                ttl(s, "1d");
                s.scopes = vec!["read:*".into(), "deploy:staging".into()];
            }),
            ("reveal window at max", |s| {
                ttl(s, "1d");
                s.secret = Some(SecretDelivery {
                    reveal_window: Some("60m".into()),
                    ..Default::default()
                });
            }),
            ("harmless system groups", |s| {
                ttl(s, "1d");
                s.owner = Some(TokenOwner {
                    username: "system:serviceaccount:ci:deployer".into(),
                    uid: None,
                    groups: vec![
                        "system:serviceaccounts".into(),
                        "system:serviceaccounts:ci".into(),
                        "system:authenticated".into(),
                    ],
                });
            }),
            ("allowed audiences", |s| {
                ttl(s, "1d");
                s.exchange = Some(ExchangeSpec {
                    audiences: vec!["argo".into()],
                    allowed_actors: vec![],
                });
            }),
            ("unparseable ttl is validation's business", |s| {
                ttl(s, "soon")
            }),
        ];
        for (case, edit) in table {
            let mut spec = pat();
            edit(&mut spec);
            assert_eq!(
                effective.admission_violations(&spec, now()),
                vec![],
                "{case}"
            );
        }
    }

    #[test]
    fn admission_expiration_rules() {
        let no_expiry = pat();
        type Case<'a> = (&'a str, Option<ExpirationPolicy>, usize);
        let table: Vec<Case> = vec![
            ("not required", lifetime(false, None, None), 0),
            ("required, no default", lifetime(true, None, None), 1),
            (
                "required, default fills in",
                lifetime(true, Some("30d"), None),
                0,
            ),
            (
                "max without default caps silently",
                lifetime(false, None, Some("90d")),
                0,
            ),
            (
                "required with max still wants one",
                lifetime(true, None, Some("90d")),
                1,
            ),
        ];
        for (case, expiration, want) in table {
            let effective = everywhere(&[(
                "p",
                TokenPolicySpec {
                    expiration,
                    ..Default::default()
                },
            )]);
            assert_eq!(
                effective.admission_violations(&no_expiry, now()).len(),
                want,
                "{case}"
            );
        }
    }

    #[test]
    fn required_scopes_refuse_unscoped_tokens_only() {
        let effective = set(&[
            ("a-open", TokenPolicySpec::default()),
            (
                "b-scoped",
                TokenPolicySpec {
                    require_scopes: true,
                    ..Default::default()
                },
            ),
            (
                "c-scoped-too",
                TokenPolicySpec {
                    require_scopes: true,
                    ..Default::default()
                },
            ),
        ])
        .effective_for(&BTreeMap::new());
        assert_eq!(effective.scopes_required_by.as_deref(), Some("b-scoped"));

        let unscoped = pat();
        let violations = effective.admission_violations(&unscoped, now());
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].field, "spec.scopes");
        assert_eq!(violations[0].policy.as_deref(), Some("b-scoped"));
        assert!(violations[0].message.contains("at least one scope"));

        let mut scoped = pat();
        scoped.scopes = vec!["read:pods".into()];
        assert!(effective.admission_violations(&scoped, now()).is_empty());
        assert!(
            everywhere(&[("open", TokenPolicySpec::default())])
                .admission_violations(&unscoped, now())
                .is_empty()
        );
    }

    #[test]
    fn administrator_groups_outside_system_are_privileged_too() {
        let mut spec = pat();
        if let Some(owner) = spec.owner.as_mut() {
            owner.groups = vec!["kubeadm:cluster-admins".into(), "platform-admins".into()];
        }
        let none = EffectivePolicy::default();
        let violations = none.admission_violations(&spec, now());
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].field, "spec.owner.groups[0]");
        assert!(violations[0].message.contains("is a privileged group"));

        let named = everywhere(&[(
            "admins",
            TokenPolicySpec {
                owners: Some(OwnerPolicy {
                    privileged_groups: vec!["platform-admins".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
        )]);
        let fields: Vec<String> = named
            .admission_violations(&spec, now())
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["spec.owner.groups[0]", "spec.owner.groups[1]"]);
        assert!(!is_privileged_group("developers", &[]));
        assert!(!is_privileged_group("system:authenticated", &[]));
    }

    #[test]
    fn system_groups_refused_without_any_policy() {
        let mut spec = pat();
        spec.owner = Some(TokenOwner {
            username: "root".into(),
            uid: None,
            groups: vec!["system:masters".into()],
        });
        let violations = EffectivePolicy::default().admission_violations(&spec, now());
        assert_eq!(violations.len(), 1, "{violations:#?}");
        assert_eq!(violations[0].policy, None);
        assert!(violations[0].message.contains(
            "unless a TokenPolicy governing this namespace sets spec.owners.allowSystemGroups: true"
        ));
        let allowed = everywhere(&[(
            "admins",
            TokenPolicySpec {
                owners: owners(true),
                ..Default::default()
            },
        )]);
        assert_eq!(allowed.admission_violations(&spec, now()), vec![]);
    }

    #[test]
    fn retention_with_no_common_mode() {
        let effective = everywhere(&[
            (
                "a",
                TokenPolicySpec {
                    secret: retention(&[Retention::OneTime]),
                    ..Default::default()
                },
            ),
            (
                "b",
                TokenPolicySpec {
                    secret: retention(&[Retention::Persistent]),
                    ..Default::default()
                },
            ),
        ]);
        assert_eq!(effective.allowed_retention(), Some(vec![]));
        let violations = effective.admission_violations(&pat(), now());
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].policy.as_deref(), Some("b"));
        assert!(
            violations[0].message.contains("OneTime (the default)"),
            "{}",
            violations[0].message
        );
        assert!(
            violations[0]
                .message
                .contains("no retention mode satisfies every policy here (a, b)"),
            "{}",
            violations[0].message
        );
    }

    #[test]
    fn resolve_clamps_expiry() {
        let issued = now();
        let days = |n: i64| Some(issued + chrono::Duration::days(n));
        type Case<'a> = (
            &'a str,
            Option<ExpirationPolicy>,
            Option<Expiration>,
            Option<DateTime<Utc>>,
            &'a [&'a str],
        );
        let expires = |t: Option<DateTime<Utc>>| {
            Some(Expiration {
                ttl: None,
                expires_at: t.map(at),
            })
        };
        let ttl_of = |text: &str| {
            Some(Expiration {
                ttl: Some(text.into()),
                expires_at: None,
            })
        };
        let table: Vec<Case> = vec![
            ("no policy, no expiry", None, None, None, &[]),
            ("no policy, ttl", None, ttl_of("10d"), days(10), &[]),
            (
                "no policy, expiresAt",
                None,
                expires(days(400)),
                days(400),
                &[],
            ),
            (
                "ttl within max",
                lifetime(false, None, Some("90d")),
                ttl_of("30d"),
                days(30),
                &[],
            ),
            (
                "ttl over max is clamped",
                lifetime(false, None, Some("90d")),
                ttl_of("365d"),
                days(90),
                &["spec.expiration.ttl"],
            ),
            (
                "expiresAt over max is clamped",
                lifetime(false, None, Some("90d")),
                expires(days(400)),
                days(90),
                &["spec.expiration.expiresAt"],
            ),
            (
                "expiresAt within max",
                lifetime(false, None, Some("90d")),
                expires(days(10)),
                days(10),
                &[],
            ),
            (
                "default fills in",
                lifetime(false, Some("30d"), Some("90d")),
                None,
                days(30),
                &[],
            ),
            (
                "max caps no expiry",
                lifetime(false, None, Some("90d")),
                None,
                days(90),
                &[],
            ),
            (
                "required without limits",
                lifetime(true, None, None),
                None,
                None,
                &["spec.expiration"],
            ),
            (
                "required, capped by max",
                lifetime(true, None, Some("90d")),
                None,
                days(90),
                &["spec.expiration"],
            ),
            (
                "huge ttl is capped",
                lifetime(false, None, Some("90d")),
                ttl_of("999999999d"),
                days(90),
                &["spec.expiration.ttl"],
            ),
            (
                "huge ttl without policy never expires",
                None,
                ttl_of("999999999d"),
                None,
                &[],
            ),
            (
                "unreadable ttl fails closed",
                lifetime(false, None, Some("90d")),
                ttl_of("soon"),
                Some(issued),
                &[],
            ),
        ];
        for (case, policy, expiration, want, fields) in table {
            let effective = everywhere(&[(
                "p",
                TokenPolicySpec {
                    expiration: policy,
                    ..Default::default()
                },
            )]);
            let resolved = effective.resolve(
                &PersonalAccessTokenSpec {
                    expiration,
                    ..pat()
                },
                issued,
            );
            assert_eq!(resolved.expires_at, want, "{case}");
            let got: Vec<_> = resolved
                .non_compliance
                .iter()
                .map(|v| v.field.as_str())
                .collect();
            assert_eq!(got, fields, "{case}");
        }
    }

    #[test]
    fn resolve_narrows_and_reports() {
        let effective = strict();
        let spec = PersonalAccessTokenSpec {
            scopes: vec![
                "read:pods".into(),
                "deploy:prod".into(),
                "deploy:staging".into(),
                "x".into(),
            ],
            expiration: Some(Expiration {
                ttl: Some("365d".into()),
                expires_at: None,
            }),
            secret: Some(SecretDelivery {
                name: None,
                retention: Some(Retention::Persistent),
                reveal_window: Some("4h".into()),
            }),
            owner: Some(TokenOwner {
                username: "root".into(),
                uid: None,
                groups: vec!["system:masters".into()],
            }),
            exchange: Some(ExchangeSpec {
                audiences: vec!["grafana".into(), "argo".into()],
                allowed_actors: vec![],
            }),
            ..pat()
        };
        let resolved = effective.resolve(&spec, now());
        assert_eq!(resolved.expires_at, add(now(), d("90d")));
        assert_eq!(resolved.granted_scopes, ["read:pods", "deploy:staging"]);
        // Retention cannot be narrowed without changing what the owner gets: kept, reported.
        assert_eq!(resolved.retention, Retention::Persistent);
        assert_eq!(resolved.reveal_window, d("1h"));
        assert_eq!(resolved.exchange_audiences, Some(vec!["argo".to_owned()]));
        assert_eq!(resolved.exchange_max_ttl, DEFAULT_EXCHANGE_MAX_TTL);
        let got: Vec<_> = resolved
            .non_compliance
            .iter()
            .map(|v| (v.field.as_str(), v.policy.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("spec.expiration.ttl", Some("lifetime")),
                ("spec.scopes[1]", Some("scopes")),
                ("spec.scopes[3]", Some("scopes")),
                ("spec.secret.retention", Some("secrets")),
                ("spec.owner.groups[0]", Some("owners")),
                ("spec.exchange.audiences[0]", Some("exchange")),
            ]
        );
        // The reveal window only counts for OneTime Secrets.
        let mut one_time = spec.clone();
        if let Some(s) = one_time.secret.as_mut() {
            s.retention = None;
        }
        let resolved = effective.resolve(&one_time, now());
        assert!(
            resolved
                .non_compliance
                .iter()
                .any(|v| v.field == "spec.secret.revealWindow")
        );
    }

    #[test]
    fn resolve_windows_and_audiences() {
        let effective = everywhere(&[(
            "a",
            TokenPolicySpec {
                secret: Some(SecretPolicy {
                    allowed_retention: None,
                    max_reveal_window: Some("30m".into()),
                }),
                exchange: Some(ExchangePolicy {
                    max_ttl: Some("5m".into()),
                    audiences: Some(vec!["vault".into(), "argo".into()]),
                }),
                idle_timeout: Some("30d".into()),
                rotation: Some(RotationPolicy {
                    warn_before: Some("7d".into()),
                }),
                ..Default::default()
            },
        )]);
        // The default reveal window is shortened to the policy's without blaming the spec.
        let resolved = effective.resolve(&pat(), now());
        assert_eq!(resolved.reveal_window, d("30m"));
        assert_eq!(resolved.exchange_max_ttl, d("5m"));
        assert_eq!(
            resolved.exchange_audiences,
            Some(vec!["vault".to_owned(), "argo".to_owned()])
        );
        assert_eq!(resolved.idle_timeout, Some(d("30d")));
        assert_eq!(resolved.warn_before, Some(d("7d")));
        assert_eq!(resolved.policies, ["a"]);
        assert!(resolved.is_compliant(), "{:?}", resolved.non_compliance);

        let mut spec = pat();
        spec.secret = Some(SecretDelivery {
            reveal_window: Some("10m".into()),
            ..Default::default()
        });
        spec.exchange = Some(ExchangeSpec {
            audiences: vec!["argo".into()],
            allowed_actors: vec![],
        });
        let resolved = effective.resolve(&spec, now());
        assert_eq!(resolved.reveal_window, d("10m"));
        assert_eq!(resolved.exchange_audiences, Some(vec!["argo".to_owned()]));
        assert!(resolved.is_compliant());

        // Unreadable reveal window: the default, clamped.
        spec.secret = Some(SecretDelivery {
            reveal_window: Some("later".into()),
            ..Default::default()
        });
        assert_eq!(effective.resolve(&spec, now()).reveal_window, d("30m"));
    }

    /// What admission accepts at `now`, resolution at `now` issues without complaint, and
    /// what admission refuses, resolution reports the same way.
    #[test]
    fn admission_and_resolution_agree() {
        let effective = strict();
        let mut specs = vec![pat()];
        type Edit = fn(&mut PersonalAccessTokenSpec);
        let edits: Vec<Edit> = vec![
            |s| ttl(s, "90d"),
            |s| ttl(s, "91d"),
            |s| {
                ttl(s, "1d");
                s.scopes = vec!["read:x".into(), "admin".into()];
            },
            |s| {
                ttl(s, "1d");
                s.secret = Some(SecretDelivery {
                    retention: Some(Retention::Persistent),
                    ..Default::default()
                });
            },
            |s| {
                ttl(s, "1d");
                s.exchange = Some(ExchangeSpec {
                    audiences: vec!["x".into()],
                    allowed_actors: vec![],
                });
            },
        ];
        for edit in edits {
            let mut spec = pat();
            edit(&mut spec);
            specs.push(spec);
        }
        for spec in specs {
            assert_eq!(
                effective.admission_violations(&spec, now()),
                effective.resolve(&spec, now()).non_compliance,
                "{spec:?}"
            );
        }
    }

    #[test]
    fn converts_kubernetes_time() {
        let t = Time(Timestamp::new(-1, -500_000_000).expect("timestamp"));
        assert_eq!(to_chrono(&t), DateTime::from_timestamp(-2, 500_000_000));
        let t = Time(Timestamp::new(1_800_000_000, 250).expect("timestamp"));
        assert_eq!(to_chrono(&t), DateTime::from_timestamp(1_800_000_000, 250));
    }
}

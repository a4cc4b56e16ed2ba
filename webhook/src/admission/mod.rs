//! Admission control for Patrol's resources (`/mutate` and `/validate`, AdmissionReview v1).
//!
//! - **Mutation** ([`owner::owner_to_stamp`]): a PersonalAccessToken created without
//!   `spec.owner` gets the requester as its owner, and once the owner is vetted, an
//!   attestation annotation the operator checks before it issues ([`attestation`]). Nothing
//!   else is touched, so GitOps tools see no drift (annotations they do not manage are not
//!   theirs); updates are never mutated.
//! - **Validation of PersonalAccessTokens** ([`rules`]): the same pure functions the operator
//!   uses (`validate_token`, `validate_token_update`, `EffectivePolicy::admission_violations`),
//!   so what is admitted is exactly what the operator issues without complaint. On update only
//!   the fields that changed are held to policy: an owner can always revoke a token, even
//!   after a policy tightened.
//! - **Owner escalation** ([`owner`]): an owner other than the requester needs the
//!   requester's permission to *impersonate* that owner, asked of the apiserver with
//!   SubjectAccessReviews. Nobody mints a token for an identity they could not already
//!   act as.
//! - **Validation of TokenPolicies**: `validate_policy`.
//!
//! Decisions are pure and unit-tested; the I/O (policies and namespace labels from watches,
//! SubjectAccessReviews) sits behind the [`ClusterView`] and [`AccessReviewer`] traits.
//! [`config`] renders the webhook configurations that route the apiserver here.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::Utc;
use futures::future::join_all;
use json_patch::{Patch, PatchOperation};
use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, Operation},
};
use patrol_api::{
    GROUP,
    attestation::{AttestationKey, Naming, Vetted},
    duration,
    policy::EffectivePolicy,
    v1alpha1::{PersonalAccessToken, PersonalAccessTokenSpec, TokenOwner, TokenPolicy},
};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

pub mod attestation;
pub mod cluster;
pub mod config;
pub mod owner;
pub mod parent;
pub mod review;
pub mod rules;

pub use cluster::{ClusterView, KubeCluster};
pub use owner::{AccessReviewer, SubjectAccessReviewer};

/// The version of Patrol's resources this webhook judges.
pub const VERSION: &str = "v1alpha1";
/// How long all SubjectAccessReviews of one admission request may take together; below
/// the webhook configurations' `timeoutSeconds` so the answer is ours, not a timeout.
pub const ACCESS_REVIEW_TIMEOUT: Duration = Duration::from_secs(3);

/// One reason a request is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field at fault, as written in YAML (`spec.scopes[1]`).
    pub field: String,
    /// What is wrong and what to do instead.
    pub message: String,
    pub kind: ProblemKind,
}

/// What sort of rule a [`Problem`] breaks; decides the status code of the denial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The object itself is malformed (422 Invalid).
    Invalid,
    /// A TokenPolicy rule; `None` is Patrol's own default (system groups) (422 Invalid).
    Policy(Option<String>),
    /// The owner is someone the requester may not act as (403 Forbidden).
    Escalation,
    /// The answer depends on something unavailable right now (503, retry).
    Unavailable,
}

impl Problem {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            kind: ProblemKind::Invalid,
        }
    }

    pub fn escalation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            kind: ProblemKind::Escalation,
        }
    }

    pub fn unavailable(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            kind: ProblemKind::Unavailable,
        }
    }

    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ProblemKind::Invalid => "invalid",
            ProblemKind::Policy(_) => "policy",
            ProblemKind::Escalation => "escalation",
            ProblemKind::Unavailable => "unavailable",
        }
    }
}

impl From<patrol_api::validation::FieldError> for Problem {
    fn from(e: patrol_api::validation::FieldError) -> Self {
        Self::invalid(e.field, e.message)
    }
}

impl From<patrol_api::policy::Violation> for Problem {
    fn from(v: patrol_api::policy::Violation) -> Self {
        Self {
            field: v.field,
            message: v.message,
            kind: ProblemKind::Policy(v.policy),
        }
    }
}

impl std::fmt::Display for Problem {
    /// `field: message`, once, even when the message already starts with the field.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.starts_with(&format!("{} ", self.field)) {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Which Patrol resource a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Token,
    Policy,
    /// A Patrol kind or version this webhook does not know: refused, since it cannot be judged.
    UnknownPatrol,
    /// Not Patrol's: allowed with a warning (the webhook rules are too wide).
    Foreign,
}

impl Target {
    pub fn of(request: &AdmissionRequest<DynamicObject>) -> Self {
        let kind = &request.kind;
        if kind.group != GROUP {
            return Self::Foreign;
        }
        match (kind.version.as_str(), kind.kind.as_str()) {
            (VERSION, "PersonalAccessToken") => Self::Token,
            (VERSION, "TokenPolicy") => Self::Policy,
            _ => Self::UnknownPatrol,
        }
    }

    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Token => "PersonalAccessToken",
            Self::Policy => "TokenPolicy",
            Self::UnknownPatrol | Self::Foreign => "other",
        }
    }
}

pub fn operation_label(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// What admission needs to judge requests made with Patrol tokens (see [`parent`]).
pub struct TokenContext {
    pub index: Arc<crate::index::RecordIndex>,
    pub catalog: Arc<crate::authz::watch::CatalogCell>,
    pub scope_group_prefix: String,
}

/// The admission service: decisions plus the cluster state they need.
pub struct Admission {
    cluster: Arc<dyn ClusterView>,
    reviewer: Arc<dyn AccessReviewer>,
    metrics: Arc<Metrics>,
    /// `None`: requests made with Patrol tokens are refused (nothing to judge them by).
    tokens: Option<TokenContext>,
    /// `None`: owners are not attested (unit tests of other rules).
    attestation: Option<Arc<attestation::KeyCell>>,
}

impl Admission {
    pub fn new(
        cluster: Arc<dyn ClusterView>,
        reviewer: Arc<dyn AccessReviewer>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cluster,
            reviewer,
            metrics,
            tokens: None,
            attestation: None,
        }
    }

    /// Attests vetted owners with the key in `keys` ([`attestation`]); until it holds one,
    /// new PersonalAccessTokens are refused (retry), since the operator would not issue them.
    pub fn with_attestation(mut self, keys: Arc<attestation::KeyCell>) -> Self {
        self.attestation = Some(keys);
        self
    }

    /// Judges requests made with Patrol tokens against the index and the scope catalog.
    pub fn with_tokens(mut self, tokens: TokenContext) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Whether the TokenPolicy and Namespace caches have synced and the attestation key is
    /// loaded (readiness).
    pub fn is_ready(&self) -> bool {
        self.cluster.is_synced()
            && self
                .attestation
                .as_ref()
                .is_none_or(|keys| keys.current().is_some())
    }

    /// `/mutate`: stamps `spec.owner` on a PersonalAccessToken created without one, and
    /// attests the owner once it is vetted ([`attestation`]).
    pub async fn mutate(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let target = Target::of(request);
        let mut response = AdmissionResponse::from(request);
        let outcome = match (target, &request.operation, &request.object) {
            (Target::Token, Operation::Create, Some(object)) if request.sub_resource.is_none() => {
                self.mutate_token(request, object).await
            }
            _ => Ok(vec![]),
        };
        let mut problems = Vec::new();
        match outcome {
            Ok(operations) if !operations.is_empty() => {
                match response.clone().with_patch(Patch(operations)) {
                    Ok(patched) => {
                        debug!(
                            uid = %request.uid,
                            namespace = request.namespace.as_deref().unwrap_or_default(),
                            user = request.user_info.username.as_deref().unwrap_or_default(),
                            "owner stamped or attested"
                        );
                        response = patched;
                    }
                    Err(e) => {
                        // Serializing a JSON patch of strings cannot fail; if it did, refusing
                        // is safer than admitting a token without an owner.
                        warn!(error = %e, "serializing the owner patch failed");
                        problems.push(Problem::unavailable(
                            "spec.owner",
                            "the owner could not be stamped; retry",
                        ));
                    }
                }
            }
            Ok(_) => {
                if target == Target::Foreign {
                    response.warnings = Some(vec![foreign_warning(request)]);
                }
            }
            Err(problem) => problems.push(problem),
        }
        if !problems.is_empty() {
            response = review::deny(response, target, request, &problems);
        }
        self.record("mutate", target, request, &response, &problems);
        response
    }

    /// The patch for a new PersonalAccessToken: its owner when it names none, and the
    /// attestation that the owner was vetted (when this webhook attests).
    async fn mutate_token(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        object: &DynamicObject,
    ) -> Result<Vec<PatchOperation>, Problem> {
        let user = &request.user_info;
        let scope_groups = parent::parent_token(user)
            .and(self.tokens.as_ref())
            .map(|t| t.scope_group_prefix.as_str());
        let stamped = owner::owner_to_stamp(object, user, scope_groups);
        let mut operations: Vec<PatchOperation> = stamped
            .as_ref()
            .and_then(owner::stamp_operation)
            .into_iter()
            .collect();
        let Some(keys) = &self.attestation else {
            return Ok(operations);
        };
        let Some(key) = keys.current() else {
            return Err(Problem::unavailable(
                "metadata.annotations",
                "patrol-webhook has not loaded its owner-attestation key yet; retry in a moment",
            ));
        };
        let value = self.attest(request, object, stamped, &key).await;
        operations.extend(attestation::patch(object, value));
        Ok(operations)
    }

    /// The attestation of a new token whose owner is vetted: the requester, or someone the
    /// requester may impersonate (and, for a request made with a Patrol token, a token that
    /// token may mint). `None` otherwise; validation then says why.
    async fn attest(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        object: &DynamicObject,
        stamped: Option<TokenOwner>,
        key: &AttestationKey,
    ) -> Option<String> {
        let user = &request.user_info;
        let mut pat: PersonalAccessToken = decode(Some(object), "object").ok()?;
        if let Some(owner) = stamped {
            pat.spec.owner = Some(owner);
        } else {
            let checks = owner::impersonation_checks(user, pat.spec.owner.as_ref()?);
            if !checks.is_empty() {
                let answers = self.review_all(user, &checks).await;
                if !owner::escalation_problems(user, &checks, &answers).is_empty() {
                    return None;
                }
            }
        }
        let namespace = request.namespace.as_deref().filter(|n| !n.is_empty())?;
        let now = Utc::now();
        if !self
            .parent_problems(user, namespace, &pat.spec, now)
            .is_empty()
        {
            return None;
        }
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        let naming = match (
            non_empty(pat.metadata.name.clone()),
            non_empty(pat.metadata.generate_name.clone()),
        ) {
            (Some(name), _) => Naming::Name(name),
            (None, Some(prefix)) => Naming::GenerateName(prefix),
            (None, None) => return None,
        };
        let vetted = Vetted {
            namespace,
            naming,
            owner: pat.spec.owner.as_ref()?,
            scopes: &pat.spec.scopes,
        };
        Some(patrol_api::attestation::attest(key, &vetted, now))
    }

    /// What is wrong with a token created or changed with a Patrol token (nothing when the
    /// request was made with other credentials).
    fn parent_problems(
        &self,
        user: &UserInfo,
        namespace: &str,
        spec: &PersonalAccessTokenSpec,
        now: chrono::DateTime<Utc>,
    ) -> Vec<Problem> {
        let Some(token) = parent::parent_token(user) else {
            return vec![];
        };
        match &self.tokens {
            Some(ctx) => {
                let record = ctx.index.get(&token.id);
                let catalog = ctx.catalog.current();
                parent::minted_by_token(
                    &token,
                    record.as_deref(),
                    catalog.as_deref(),
                    namespace,
                    spec,
                    &ctx.scope_group_prefix,
                    now,
                )
            }
            None => vec![Problem::escalation(
                "spec",
                "this request was made with a Patrol token, and this webhook cannot judge those; use your own credentials",
            )],
        }
    }

    /// `/validate`: PersonalAccessTokens and TokenPolicies on create and update.
    pub async fn validate(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let target = Target::of(request);
        let response = AdmissionResponse::from(request);
        let judged = matches!(request.operation, Operation::Create | Operation::Update)
            && request.sub_resource.is_none();
        let (problems, warnings, annotations) = match target {
            Target::Token if judged => self.validate_token(request).await,
            Target::Policy if judged => {
                let (problems, warnings) = validate_policy(request);
                (problems, warnings, BTreeMap::new())
            }
            Target::UnknownPatrol if judged => (
                vec![Problem::invalid(
                    "kind",
                    format!(
                        "patrol-webhook judges {GROUP}/{VERSION} PersonalAccessToken and TokenPolicy only, not {}/{} {}; upgrade patrol-webhook",
                        request.kind.group, request.kind.version, request.kind.kind
                    ),
                )],
                vec![],
                BTreeMap::new(),
            ),
            Target::Foreign => (vec![], vec![foreign_warning(request)], BTreeMap::new()),
            _ => (vec![], vec![], BTreeMap::new()),
        };
        let mut response = if problems.is_empty() {
            response
        } else {
            review::deny(response, target, request, &problems)
        };
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        response.audit_annotations.extend(annotations);
        self.record("validate", target, request, &response, &problems);
        response
    }

    async fn validate_token(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> (Vec<Problem>, Vec<String>, BTreeMap<String, String>) {
        let none = BTreeMap::new();
        let new: PersonalAccessToken = match decode(request.object.as_ref(), "object") {
            Ok(pat) => pat,
            Err(problem) => return (vec![problem], vec![], none),
        };
        let old: Option<PersonalAccessToken> = match request.operation {
            Operation::Update => match decode(request.old_object.as_ref(), "oldObject") {
                Ok(pat) => Some(pat),
                Err(problem) => return (vec![problem], vec![], none),
            },
            _ => None,
        };
        if !self.cluster.is_synced() {
            let problem = Problem::unavailable(
                "metadata.namespace",
                "patrol-webhook has not loaded the TokenPolicies and Namespaces yet; retry in a moment",
            );
            return (vec![problem], vec![], none);
        }
        let namespace = request
            .namespace
            .clone()
            .or_else(|| new.metadata.namespace.clone())
            .unwrap_or_default();
        let labels = match self.cluster.namespace_labels(&namespace).await {
            Ok(labels) => labels,
            Err(e) => {
                warn!(namespace = %namespace, error = %e, "namespace labels unavailable");
                let problem = Problem::unavailable(
                    "metadata.namespace",
                    format!(
                        "the labels of namespace {namespace:?} decide which TokenPolicies apply and could not be read; retry"
                    ),
                );
                return (vec![problem], vec![], none);
            }
        };
        let policy = self.cluster.policies().effective_for(&labels);
        let name = new
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| request.name.clone());
        let now = Utc::now();

        let (mut problems, mut warnings) = match &old {
            None => (
                rules::token_create(&name, &new.spec, &policy, now),
                policy_defaults(&new, &policy),
            ),
            Some(old) => {
                let outcome = rules::token_update(&name, &old.spec, &new.spec, &policy, now);
                (outcome.problems, outcome.warnings)
            }
        };
        warnings.extend(policy.invalid_policies.iter().map(|p| {
            format!("TokenPolicy {p} is invalid and not enforced here; see kubectl describe tokenpolicy {p}")
        }));

        problems.extend(self.parent_problems(&request.user_info, &namespace, &new.spec, now));

        let mut annotations = BTreeMap::new();
        if let Some(owner) = rules::owner_to_check(old.as_ref().map(|o| &o.spec), &new.spec) {
            let checks = owner::impersonation_checks(&request.user_info, owner);
            if !checks.is_empty() {
                let answers = self.review_all(&request.user_info, &checks).await;
                let denied = owner::escalation_problems(&request.user_info, &checks, &answers);
                if denied.is_empty() {
                    let what: Vec<String> = checks.iter().map(|c| c.target.to_string()).collect();
                    annotations.insert("owner-impersonation".to_owned(), what.join(", "));
                }
                problems.extend(denied);
            }
        }
        problems.extend(
            self.service_account_problems(old.as_ref(), &new, &namespace)
                .await,
        );
        (problems, warnings, annotations)
    }

    /// A PAT naming a ServiceAccount for credentials (new, or another one than before)
    /// needs an owner allowed to impersonate it: holding its tokens is acting as it.
    async fn service_account_problems(
        &self,
        old: Option<&PersonalAccessToken>,
        new: &PersonalAccessToken,
        namespace: &str,
    ) -> Vec<Problem> {
        let named = |pat: &PersonalAccessToken| {
            pat.spec
                .credentials
                .as_ref()
                .and_then(|c| c.service_account.as_ref())
                .map(|sa| {
                    (
                        sa.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
                        sa.name.clone(),
                    )
                })
        };
        let Some((sa_namespace, name)) = named(new) else {
            return vec![];
        };
        if old.and_then(named) == Some((sa_namespace.clone(), name.clone())) {
            return vec![];
        }
        let Some(owner) = &new.spec.owner else {
            return vec![];
        };
        let field = "spec.credentials.serviceAccount";
        let owner_info = UserInfo {
            username: Some(owner.username.clone()),
            uid: owner.uid.clone(),
            groups: Some(owner.groups.clone()),
            extra: None,
        };
        let check = owner::ImpersonationCheck {
            target: owner::Impersonated::ServiceAccount {
                namespace: sa_namespace.clone(),
                name: name.clone(),
            },
            field: field.to_owned(),
        };
        let answer = tokio::time::timeout(
            ACCESS_REVIEW_TIMEOUT,
            self.reviewer.may_impersonate(&owner_info, &check),
        )
        .await
        .unwrap_or(Err(owner::ReviewError::Timeout));
        self.metrics.record_access_review(match &answer {
            Ok(true) => "allowed",
            Ok(false) => "denied",
            Err(_) => "error",
        });
        match answer {
            Ok(true) => vec![],
            Ok(false) => vec![Problem::escalation(
                field,
                format!(
                    "the owner {:?} may not impersonate ServiceAccount {sa_namespace}/{name}, so the token may not carry its credentials; an administrator grants impersonate on serviceaccounts {name:?} in {sa_namespace}",
                    owner.username
                ),
            )],
            Err(e) => {
                warn!(error = %e, "cannot review ServiceAccount impersonation");
                vec![Problem::unavailable(
                    field,
                    "whether the owner may impersonate the ServiceAccount could not be checked; retry",
                )]
            }
        }
    }

    /// Asks every check at once, within [`ACCESS_REVIEW_TIMEOUT`] in total.
    async fn review_all(
        &self,
        requester: &UserInfo,
        checks: &[owner::ImpersonationCheck],
    ) -> Vec<Result<bool, owner::ReviewError>> {
        let asks = join_all(
            checks
                .iter()
                .map(|c| self.reviewer.may_impersonate(requester, c)),
        );
        let answers = match tokio::time::timeout(ACCESS_REVIEW_TIMEOUT, asks).await {
            Ok(answers) => answers,
            Err(_) => checks
                .iter()
                .map(|_| Err(owner::ReviewError::Timeout))
                .collect(),
        };
        for answer in &answers {
            let result = match answer {
                Ok(true) => "allowed",
                Ok(false) => "denied",
                Err(_) => "error",
            };
            self.metrics.record_access_review(result);
        }
        answers
    }

    fn record(
        &self,
        webhook: &'static str,
        target: Target,
        request: &AdmissionRequest<DynamicObject>,
        response: &AdmissionResponse,
        problems: &[Problem],
    ) {
        let operation = operation_label(&request.operation);
        self.metrics
            .record_admission(webhook, target.label(), operation, response.allowed);
        let mut reasons: Vec<&'static str> = problems.iter().map(Problem::reason).collect();
        reasons.sort_unstable();
        reasons.dedup();
        for reason in &reasons {
            self.metrics.record_admission_denial(target.label(), reason);
        }
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let user = request.user_info.username.as_deref().unwrap_or_default();
        if response.allowed {
            debug!(webhook, uid = %request.uid, kind = target.label(), operation, namespace, name = %request.name, user, "admitted");
        } else {
            let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
            info!(
                webhook, uid = %request.uid, kind = target.label(), operation, namespace, name = %request.name, user,
                fields = %fields.join(","), reasons = %reasons.join(","), "denied"
            );
        }
    }
}

/// TokenPolicy create and update: `validate_policy`; an update that leaves the spec as it
/// was (labels, finalizers) is not held to it, so a policy made invalid before the webhook
/// existed can still be relabelled or finalized.
fn validate_policy(request: &AdmissionRequest<DynamicObject>) -> (Vec<Problem>, Vec<String>) {
    let new: TokenPolicy = match decode(request.object.as_ref(), "object") {
        Ok(p) => p,
        Err(problem) => return (vec![problem], vec![]),
    };
    if request.operation == Operation::Update
        && let Ok(old) = decode::<TokenPolicy>(request.old_object.as_ref(), "oldObject")
        && old.spec == new.spec
    {
        let problems = rules::policy(&new.spec);
        let warnings = if problems.is_empty() {
            vec![]
        } else {
            vec!["this TokenPolicy is invalid and not enforced; fix its spec".to_owned()]
        };
        return (vec![], warnings);
    }
    (rules::policy(&new.spec), rules::policy_warnings(&new.spec))
}

/// Reads the request's object as a Patrol type. Serde's message may echo a value; the
/// quoted parts are left out, since this text reaches logs and the client.
fn decode<T: DeserializeOwned>(object: Option<&DynamicObject>, what: &str) -> Result<T, Problem> {
    let Some(object) = object else {
        return Err(Problem::invalid(
            what,
            format!("request.{what} is required for this operation"),
        ));
    };
    serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(|e| {
            Problem::invalid(
                what,
                format!(
                    "request.{what} could not be read: {}",
                    review::redact_quoted(&e.to_string())
                ),
            )
        })
}

/// Tells the requester what a policy fills in when the spec leaves expiry open.
fn policy_defaults(pat: &PersonalAccessToken, policy: &EffectivePolicy) -> Vec<String> {
    if pat.spec.expiration.is_some() {
        return vec![];
    }
    let (limit, which) = match (&policy.default_lifetime, &policy.max_lifetime) {
        (Some(default), _) => (default, "default lifetime"),
        (None, Some(max)) => (max, "maximum lifetime"),
        (None, None) => return vec![],
    };
    vec![format!(
        "spec.expiration is not set: the token will expire {} after issue ({which} of policy {})",
        duration::format(limit.value),
        limit.policy
    )]
}

fn foreign_warning(request: &AdmissionRequest<DynamicObject>) -> String {
    format!(
        "patrol-webhook does not judge {}/{} {}; narrow the webhook configuration's rules",
        request.kind.group, request.kind.version, request.kind.kind
    )
}

#[cfg(test)]
pub(crate) mod tests;

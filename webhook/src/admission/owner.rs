//! Who owns a token: stamping the requester as owner, and the escalation rule.
//!
//! # Stamping
//!
//! A token created without `spec.owner` is owned by the requester: username, uid (when the
//! authenticator gave one) and groups. `system:authenticated` is left out, because the
//! apiserver adds it to every authenticated request, including those made with the token.
//! Every other group is kept, ServiceAccount groups included: a token for a ServiceAccount
//! should act as that ServiceAccount does, and RoleBindings to `system:serviceaccounts:<ns>`
//! are how many of them get their rights (the policy module exempts exactly these groups
//! from its system-group rule for that reason). Privileged system groups such as
//! `system:masters` are kept too, so that policy refuses them visibly instead of the token
//! silently getting less than its owner has.
//!
//! # Escalation
//!
//! A token owned by someone other than the requester would let the requester act as that
//! owner. Kubernetes already has a permission for exactly that: `impersonate`. So an owner
//! differing from the requester is admitted only if SubjectAccessReviews say the requester
//! may impersonate what differs, with the attributes the apiserver's own impersonation
//! filter checks:
//!
//! | owner differs in | checked |
//! |---|---|
//! | username (a user) | `impersonate` `users` named the username |
//! | username `system:serviceaccount:<ns>:<name>` | `impersonate` `serviceaccounts` `<name>` in `<ns>` |
//! | a group the requester is not in | `impersonate` `groups` named the group |
//! | uid | `impersonate` `uids.authentication.k8s.io` named the uid |
//!
//! Groups the requester already has need no check: RBAC grants are additive, so a token
//! with them grants nothing the requester lacks. `system:authenticated`, and for a
//! ServiceAccount owner its own `system:serviceaccounts[:<ns>]` groups, come with the
//! identity, as they do when impersonating it. An owner without a uid claims none, so it
//! needs no uid check.

use std::fmt;

use futures::future::BoxFuture;
use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::{
    authentication::v1::UserInfo,
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams, core::DynamicObject};
use patrol_api::v1alpha1::TokenOwner;

use super::Problem;

/// The group the apiserver gives every authenticated user.
pub const ALL_AUTHENTICATED: &str = "system:authenticated";
const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";

/// The owner a requester stamps on a token: `None` for a request without a username.
pub fn owner_of(user: &UserInfo) -> Option<TokenOwner> {
    let username = user.username.as_deref().filter(|u| !u.is_empty())?;
    let mut groups: Vec<String> = Vec::new();
    for group in user.groups.iter().flatten() {
        if group != ALL_AUTHENTICATED && !group.is_empty() && !groups.contains(group) {
            groups.push(group.clone());
        }
    }
    Some(TokenOwner {
        username: username.to_owned(),
        uid: user.uid.clone().filter(|uid| !uid.is_empty()),
        groups,
    })
}

/// The owner to stamp on `object`: the requester, when the object has a `spec` without an
/// owner; `None` otherwise (an object without `spec` is left to the schema). Groups
/// starting with `scope_groups` (when given: the requester authenticated with a Patrol
/// token, whose scopes surface as groups) are the token's, not the owner's, and are left
/// out.
pub fn owner_to_stamp(
    object: &DynamicObject,
    user: &UserInfo,
    scope_groups: Option<&str>,
) -> Option<TokenOwner> {
    let spec = object.data.get("spec")?.as_object()?;
    if spec.get("owner").is_some_and(|o| !o.is_null()) {
        return None;
    }
    let mut owner = owner_of(user)?;
    if let Some(prefix) = scope_groups {
        owner.groups.retain(|g| !g.starts_with(prefix));
    }
    Some(owner)
}

/// The JSON patch operation that sets `spec.owner`.
pub fn stamp_operation(owner: &TokenOwner) -> Option<PatchOperation> {
    Some(PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(["spec", "owner"]),
        value: serde_json::to_value(owner).ok()?,
    }))
}

pub use crate::owners::service_account;

/// What the requester would impersonate to act as the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Impersonated {
    User(String),
    ServiceAccount { namespace: String, name: String },
    Group(String),
    Uid(String),
}

impl fmt::Display for Impersonated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(name) => write!(f, "user {name:?}"),
            Self::ServiceAccount { namespace, name } => {
                write!(f, "ServiceAccount {namespace}/{name}")
            }
            Self::Group(name) => write!(f, "group {name:?}"),
            Self::Uid(uid) => write!(f, "uid {uid:?}"),
        }
    }
}

/// One permission to ask the apiserver about, and the owner field it stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImpersonationCheck {
    pub target: Impersonated,
    pub field: String,
}

impl ImpersonationCheck {
    /// The attributes the apiserver's impersonation filter authorizes.
    pub fn resource_attributes(&self) -> ResourceAttributes {
        let (group, resource, namespace, name) = match &self.target {
            Impersonated::User(name) => ("", "users", None, name),
            Impersonated::ServiceAccount { namespace, name } => {
                ("", "serviceaccounts", Some(namespace), name)
            }
            Impersonated::Group(name) => ("", "groups", None, name),
            Impersonated::Uid(uid) => ("authentication.k8s.io", "uids", None, uid),
        };
        ResourceAttributes {
            verb: Some("impersonate".to_owned()),
            group: Some(group.to_owned()),
            resource: Some(resource.to_owned()),
            namespace: namespace.cloned(),
            name: Some(name.clone()),
            ..ResourceAttributes::default()
        }
    }

    /// The RBAC rule that would allow it, for messages.
    fn rule(&self) -> String {
        let a = self.resource_attributes();
        let group = a
            .group
            .as_deref()
            .filter(|g| !g.is_empty())
            .map(|g| format!(".{g}"))
            .unwrap_or_default();
        let namespace = a
            .namespace
            .map(|ns| format!(" in namespace {ns}"))
            .unwrap_or_default();
        format!(
            "verb impersonate on {}{group}, resourceNames [{}]{namespace}",
            a.resource.unwrap_or_default(),
            a.name.unwrap_or_default()
        )
    }
}

/// The permissions `requester` needs to own a token as `owner`; empty when the owner is
/// the requester (see the module docs).
pub fn impersonation_checks(requester: &UserInfo, owner: &TokenOwner) -> Vec<ImpersonationCheck> {
    let mut checks = Vec::new();
    let same_user = requester.username.as_deref() == Some(owner.username.as_str());
    let owner_sa = service_account(&owner.username);
    if !same_user {
        let target = match owner_sa {
            Some((namespace, name)) => Impersonated::ServiceAccount {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            None => Impersonated::User(owner.username.clone()),
        };
        checks.push(ImpersonationCheck {
            target,
            field: "spec.owner.username".to_owned(),
        });
    }
    if let Some(uid) = &owner.uid
        && requester.uid.as_deref() != Some(uid.as_str())
    {
        checks.push(ImpersonationCheck {
            target: Impersonated::Uid(uid.clone()),
            field: "spec.owner.uid".to_owned(),
        });
    }
    let held = requester.groups.as_deref().unwrap_or_default();
    for (i, group) in owner.groups.iter().enumerate() {
        let comes_with_identity = group == ALL_AUTHENTICATED
            || owner_sa.is_some_and(|(namespace, _)| {
                group == SERVICE_ACCOUNTS_GROUP
                    || group.strip_prefix(SERVICE_ACCOUNTS_GROUP) == Some(&format!(":{namespace}"))
            });
        if comes_with_identity || held.contains(group) {
            continue;
        }
        checks.push(ImpersonationCheck {
            target: Impersonated::Group(group.clone()),
            field: format!("spec.owner.groups[{i}]"),
        });
    }
    checks
}

/// Turns the answers to `checks` (same order) into problems: one per permission missing,
/// one per check that could not be answered (the request is refused, to be retried).
pub fn escalation_problems(
    requester: &UserInfo,
    checks: &[ImpersonationCheck],
    answers: &[Result<bool, ReviewError>],
) -> Vec<Problem> {
    let you = requester.username.as_deref().unwrap_or("an anonymous user");
    checks
        .iter()
        .zip(answers.iter().map(Some).chain(std::iter::repeat(None)))
        .filter_map(|(check, answer)| match answer {
            Some(Ok(true)) => None,
            Some(Ok(false)) => Some(Problem::escalation(
                &check.field,
                denied_message(you, check),
            )),
            Some(Err(e)) => Some(Problem::unavailable(
                &check.field,
                format!(
                    "could not check whether {you} may impersonate {} ({e}); retry",
                    check.target
                ),
            )),
            None => Some(Problem::unavailable(
                &check.field,
                format!(
                    "no answer on whether {you} may impersonate {}; retry",
                    check.target
                ),
            )),
        })
        .collect()
}

fn denied_message(you: &str, check: &ImpersonationCheck) -> String {
    let rule = check.rule();
    match &check.target {
        Impersonated::User(_) | Impersonated::ServiceAccount { .. } => format!(
            "{you} may not create a token owned by {}: that requires permission to impersonate it ({rule}); omit spec.owner to own the token yourself",
            check.target
        ),
        Impersonated::Group(group) => format!(
            "owner group {group:?} is not one of {you}'s groups, and {you} may not impersonate it ({rule}); remove it from spec.owner.groups"
        ),
        Impersonated::Uid(uid) => format!(
            "owner uid {uid:?} is not {you}'s, and {you} may not impersonate it ({rule}); remove spec.owner.uid"
        ),
    }
}

/// Why a permission could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("SubjectAccessReview failed: {0}")]
    Api(#[from] kube::Error),
    #[error("SubjectAccessReview timed out")]
    Timeout,
    #[error("SubjectAccessReview answered without a status")]
    NoStatus,
}

/// Answers "may this user impersonate that?"; the apiserver in production, a fake in tests.
pub trait AccessReviewer: Send + Sync {
    fn may_impersonate<'a>(
        &'a self,
        requester: &'a UserInfo,
        check: &'a ImpersonationCheck,
    ) -> BoxFuture<'a, Result<bool, ReviewError>>;
}

/// Asks the apiserver with a SubjectAccessReview (needs `create` on
/// `subjectaccessreviews.authorization.k8s.io`). Side-effect free, so the webhooks can
/// say `sideEffects: None` and answer dry-run requests.
pub struct SubjectAccessReviewer {
    api: Api<SubjectAccessReview>,
}

impl SubjectAccessReviewer {
    pub fn new(client: Client) -> Self {
        Self {
            api: Api::all(client),
        }
    }
}

/// The review for `requester` doing `check`; the requester's extra attributes go along, as
/// authorizers may decide on them.
pub fn subject_access_review(
    requester: &UserInfo,
    check: &ImpersonationCheck,
) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: requester.username.clone(),
            uid: requester.uid.clone(),
            groups: requester.groups.clone(),
            extra: requester.extra.clone(),
            resource_attributes: Some(check.resource_attributes()),
            non_resource_attributes: None,
        },
        ..SubjectAccessReview::default()
    }
}

impl AccessReviewer for SubjectAccessReviewer {
    fn may_impersonate<'a>(
        &'a self,
        requester: &'a UserInfo,
        check: &'a ImpersonationCheck,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(async move {
            let review = subject_access_review(requester, check);
            let answer = self.api.create(&PostParams::default(), &review).await?;
            let status = answer.status.ok_or(ReviewError::NoStatus)?;
            Ok(status.allowed && status.denied != Some(true))
        })
    }
}

//! `TokenPolicy`: cluster-wide rules that PATs in selected namespaces must follow.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Retention;
use crate::duration::Duration;

/// Desired state of a TokenPolicy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "patrol.dev",
    version = "v1alpha1",
    kind = "TokenPolicy",
    doc = "Rules for PersonalAccessTokens in the namespaces it selects. When several policies select a namespace, every one applies and the strictest value wins (shortest lifetimes, the intersection of allowed scopes and audiences).",
    plural = "tokenpolicies",
    singular = "tokenpolicy",
    shortname = "tp",
    category = "patrol",
    status = "TokenPolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Conflicting","type":"string","jsonPath":".status.conditions[?(@.type==\"Conflicting\")].status"}"#,
    printcolumn = r#"{"name":"Max Lifetime","type":"string","jsonPath":".spec.expiration.max"}"#,
    printcolumn = r#"{"name":"Governed","type":"integer","jsonPath":".status.governedTokens"}"#,
    printcolumn = r#"{"name":"Violating","type":"integer","jsonPath":".status.violatingTokens"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicySpec {
    /// Namespaces this policy governs. Absent or empty selects every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Token lifetime rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<ExpirationPolicy>,

    /// A token unused for this long expires, e.g. `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,

    /// Scopes tokens may request, as globs (`read:*`, `deploy:prod`). Absent allows any
    /// scope; an empty list allows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    pub allowed_scopes: Option<Vec<String>>,

    /// Every token must name at least one scope. A token without scopes may do everything
    /// its owner may; with this set, such tokens are refused at admission.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_scopes: bool,

    /// Rules for the Secret delivering the plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretPolicy>,

    /// Rules for exchanging tokens for short-lived JWTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangePolicy>,

    /// Rotation reminders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationPolicy>,

    /// Who may own tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owners: Option<OwnerPolicy>,
}

/// Token lifetime rules.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExpirationPolicy {
    /// Every token must expire: one with no expiration is refused at admission unless a
    /// `default` fills it in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Lifetime given to tokens that do not set one, e.g. `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Duration>,
    /// Longest lifetime a token may have, e.g. `90d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
}

/// Rules for the plaintext Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretPolicy {
    /// Retention modes tokens may use. Absent allows both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_retention: Option<Vec<Retention>>,
    /// Longest reveal window a OneTime Secret may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reveal_window: Option<Duration>,
}

/// Rules for token exchange.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExchangePolicy {
    /// Longest lifetime of an exchanged JWT (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "maxTTL")]
    pub max_ttl: Option<Duration>,
    /// Audiences exchanged JWTs may name. Absent allows any; the first is the default
    /// when a request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub audiences: Option<Vec<String>>,
}

/// Rotation reminders.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RotationPolicy {
    /// Raise the `ExpiringSoon` condition and an Event this long before a token expires
    /// (default `7d` when no policy sets it; `0s` turns the warning off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_before: Option<Duration>,
}

/// Who may own tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct OwnerPolicy {
    /// Allow owners in `system:` groups (such as `system:masters`). Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_system_groups: bool,
    /// More groups whose members may not own tokens (unless `allowSystemGroups`), beyond
    /// Patrol's own list: every `system:` group but the ones all users and ServiceAccounts
    /// get, and well-known administrator groups such as `kubeadm:cluster-admins`. Name the
    /// groups your cluster binds to powerful roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)), extend("x-kubernetes-list-type" = "set"))]
    pub privileged_groups: Vec<String>,
}

/// Observed state of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicyStatus {
    /// Tokens in the namespaces this policy selects.
    #[serde(default)]
    pub governed_tokens: i32,
    /// Of those, how many break one of its rules (e.g. created before it tightened).
    #[serde(default)]
    pub violating_tokens: i32,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (valid, and applied to the namespaces it selects; False with `InvalidRules`
    /// or `InvalidSelector`) and `Conflicting` (True with `NoCommonValue` where it and
    /// another policy leave a setting no allowed value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

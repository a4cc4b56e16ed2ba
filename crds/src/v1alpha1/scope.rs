//! `TokenScope`: what a scope permits. Cluster-scoped, written by administrators.
//!
//! A request made with a Patrol token that carries scopes may do only what its owner may
//! **and** what one of its scopes permits; the scopes' permissions come from these objects.
//! A scope that no TokenScope defines permits nothing.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most rules one TokenScope may hold.
pub const MAX_SCOPE_RULES: usize = 64;

/// What a scope permits.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "patrol.dev",
    version = "v1alpha1",
    kind = "TokenScope",
    doc = "What a token scope permits. A request made with a PersonalAccessToken (or a JWT exchanged from one) that carries scopes is allowed only if its owner's RBAC allows it and one of its scopes permits it: Patrol's authorization webhook denies everything else. A scope no TokenScope defines permits nothing. Several TokenScopes naming the same scope add up.",
    plural = "tokenscopes",
    singular = "tokenscope",
    shortname = "tscope",
    category = "patrol",
    printcolumn = r#"{"name":"Scope","type":"string","jsonPath":".spec.scope"}"#,
    printcolumn = r#"{"name":"Description","type":"string","jsonPath":".spec.description"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.rules) && size(self.rules) > 0) || (has(self.clusterRoles) && size(self.clusterRoles) > 0)",
        "message": "a TokenScope needs rules or clusterRoles: one that permits nothing is what an undefined scope already is",
    },
]))]
pub struct TokenScopeSpec {
    /// The scope string tokens request (`spec.scopes` of a PersonalAccessToken, `scope` of
    /// an exchange), e.g. `read:pods`. Defaults to `metadata.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9:._/*-]+$"))]
    pub scope: Option<String>,

    /// What the scope is for, shown to people choosing scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub description: Option<String>,

    /// What the scope permits, in RBAC's terms, optionally limited to namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub rules: Vec<ScopeRule>,

    /// ClusterRoles whose rules the scope takes (read as they are now, aggregation
    /// included), each optionally limited to namespaces. A ClusterRole that does not exist
    /// permits nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub cluster_roles: Vec<ClusterRoleGrant>,
}

/// One RBAC-style rule: the verbs it permits on resources or non-resource URLs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.resources) && size(self.resources) > 0) != (has(self.nonResourceURLs) && size(self.nonResourceURLs) > 0)",
        "message": "a rule names either resources or nonResourceURLs, not both and not neither",
    },
    {
        "rule": "!has(self.nonResourceURLs) || size(self.nonResourceURLs) == 0 || ((!has(self.apiGroups) || size(self.apiGroups) == 0) && (!has(self.resourceNames) || size(self.resourceNames) == 0) && (!has(self.namespaces) || size(self.namespaces) == 0))",
        "message": "apiGroups, resourceNames and namespaces apply to resources only, not to nonResourceURLs",
    },
]))]
pub struct ScopeRule {
    /// Verbs permitted, e.g. `get`, `list`, `watch`, `create`; `*` is every verb.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 64)))]
    pub verbs: Vec<String>,
    /// API groups of the resources; `""` is the core group, `*` every group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 253)))]
    pub api_groups: Vec<String>,
    /// Resources, e.g. `pods`, `pods/log` for a subresource, `*` for every resource,
    /// `*/scale` for one subresource of every resource.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub resources: Vec<String>,
    /// Names of the objects permitted; empty permits every name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub resource_names: Vec<String>,
    /// Non-resource paths, e.g. `/healthz`; a trailing `*` matches any path with that prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(rename = "nonResourceURLs")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 512)))]
    pub non_resource_urls: Vec<String>,
    /// Namespaces the rule applies in; empty means every namespace and cluster-scoped
    /// resources too. With namespaces set, cluster-scoped requests are not permitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
}

/// A ClusterRole whose rules a scope takes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRoleGrant {
    /// Name of the ClusterRole, e.g. `view`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespaces its rules apply in; empty means everywhere, cluster-scoped resources
    /// included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
}

impl TokenScope {
    /// The scope string this object defines: `spec.scope`, else its name.
    pub fn scope_name(&self) -> Option<&str> {
        self.spec.scope.as_deref().or(self.metadata.name.as_deref())
    }
}

//! The scope catalog: every scope's rules, compiled from the cluster's TokenScopes and the
//! ClusterRoles they reference. Pure: built from snapshots, replaced whole on each change.

use std::collections::HashMap;

use k8s_openapi::api::rbac::v1::ClusterRole;
use patrol_api::v1alpha1::TokenScope;

use super::rules::{Access, Rule};

/// Scope name → the rules that permit something to it.
#[derive(Debug, Default, Clone)]
pub struct ScopeCatalog {
    scopes: HashMap<String, Vec<Rule>>,
}

impl ScopeCatalog {
    /// Compiles the catalog. Several TokenScopes naming one scope add up; a ClusterRole
    /// that is not among `cluster_roles` contributes nothing.
    pub fn build<'a>(
        token_scopes: impl IntoIterator<Item = &'a TokenScope>,
        cluster_roles: impl IntoIterator<Item = &'a ClusterRole>,
    ) -> Self {
        let roles: HashMap<&str, &ClusterRole> = cluster_roles
            .into_iter()
            .filter_map(|r| Some((r.metadata.name.as_deref()?, r)))
            .collect();
        let mut scopes: HashMap<String, Vec<Rule>> = HashMap::new();
        for token_scope in token_scopes {
            let Some(name) = token_scope.scope_name() else {
                continue;
            };
            let rules = scopes.entry(name.to_owned()).or_default();
            rules.extend(token_scope.spec.rules.iter().map(Rule::from_scope_rule));
            for grant in &token_scope.spec.cluster_roles {
                let Some(role) = roles.get(grant.name.as_str()) else {
                    continue;
                };
                rules.extend(
                    role.rules
                        .iter()
                        .flatten()
                        .filter_map(|r| Rule::from_cluster_role_rule(r, &grant.namespaces)),
                );
            }
        }
        Self { scopes }
    }

    /// Number of scopes defined.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Whether `scope` permits `access`. An undefined scope permits nothing.
    pub fn permits(&self, scope: &str, access: &Access) -> bool {
        self.scopes
            .get(scope)
            .is_some_and(|rules| rules.iter().any(|rule| rule.permits(access)))
    }

    /// Whether any TokenScope defines `scope`.
    pub fn defines(&self, scope: &str) -> bool {
        self.scopes.contains_key(scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::rules::ResourceAccess;

    fn token_scope(value: serde_json::Value) -> TokenScope {
        serde_json::from_value(value).expect("TokenScope")
    }

    fn list(resource: &str, ns: &str) -> Access {
        Access::Resource(ResourceAccess {
            verb: "list".into(),
            resource: resource.into(),
            namespace: ns.into(),
            ..ResourceAccess::default()
        })
    }

    #[test]
    fn scopes_take_their_rules_and_cluster_roles() {
        let scopes = [
            token_scope(serde_json::json!({
                "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenScope",
                "metadata": {"name": "read-pods"},
                "spec": {"scope": "read:pods", "rules": [
                    {"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}
                ]}
            })),
            token_scope(serde_json::json!({
                "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenScope",
                "metadata": {"name": "view-team-a"},
                "spec": {"clusterRoles": [{"name": "view", "namespaces": ["team-a"]},
                                           {"name": "missing"}]}
            })),
            token_scope(serde_json::json!({
                "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenScope",
                "metadata": {"name": "read-pods-configmaps"},
                "spec": {"scope": "read:pods", "rules": [
                    {"verbs": ["list"], "apiGroups": [""], "resources": ["configmaps"]}
                ]}
            })),
        ];
        let view: ClusterRole = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "view"},
            "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["services"]}]
        }))
        .expect("ClusterRole");
        let catalog = ScopeCatalog::build(&scopes, [&view]);
        assert_eq!(catalog.len(), 2);
        assert!(catalog.permits("read:pods", &list("pods", "x")));
        assert!(
            catalog.permits("read:pods", &list("configmaps", "x")),
            "two TokenScopes for one scope add up"
        );
        assert!(!catalog.permits("read:pods", &list("secrets", "x")));
        assert!(catalog.permits("view-team-a", &list("services", "team-a")));
        assert!(!catalog.permits("view-team-a", &list("services", "team-b")));
        assert!(!catalog.permits("undefined", &list("pods", "x")));
        assert!(!catalog.defines("undefined"));
    }
}

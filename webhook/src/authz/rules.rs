//! What a scope permits, as RBAC would match it: rules of verbs over resources or
//! non-resource URLs, optionally limited to namespaces. Pure.
//!
//! Matching follows RBAC's PolicyRule semantics: `*` in verbs, apiGroups or resources
//! matches anything; `pods/log` names a subresource and `*/scale` one subresource of every
//! resource; an empty resourceNames matches every name, a non-empty one never matches a
//! request without a name (list, create); a non-resource URL ending in `*` matches by
//! prefix. Namespaces, which RBAC expresses with RoleBindings, are part of the rule here:
//! a rule limited to namespaces never matches a cluster-scoped or all-namespaces request.

use k8s_openapi::api::rbac::v1::PolicyRule;
use patrol_api::v1alpha1::ScopeRule;

/// The attributes of one request, as a SubjectAccessReview describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Resource(ResourceAccess),
    NonResource { path: String, verb: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceAccess {
    pub verb: String,
    /// `""` for the core group.
    pub group: String,
    pub resource: String,
    pub subresource: String,
    /// `""` for cluster-scoped requests and requests across all namespaces.
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Access {
    /// For reasons shown to people: `list pods in namespace a`, `get /healthz`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::NonResource { path, verb } => write!(f, "{verb} {path}"),
            Access::Resource(r) => {
                write!(f, "{} {}", r.verb, r.resource)?;
                if !r.subresource.is_empty() {
                    write!(f, "/{}", r.subresource)?;
                }
                if !r.group.is_empty() {
                    write!(f, ".{}", r.group)?;
                }
                if !r.name.is_empty() {
                    write!(f, " {:?}", r.name)?;
                }
                if r.namespace.is_empty() {
                    write!(f, " (cluster-wide)")
                } else {
                    write!(f, " in namespace {}", r.namespace)
                }
            }
        }
    }
}

/// One rule, ready to match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
    /// Empty: every namespace and cluster-scoped resources.
    pub namespaces: Vec<String>,
}

impl Rule {
    /// A TokenScope's own rule.
    pub fn from_scope_rule(rule: &ScopeRule) -> Self {
        Self {
            verbs: rule.verbs.clone(),
            api_groups: rule.api_groups.clone(),
            resources: rule.resources.clone(),
            resource_names: rule.resource_names.clone(),
            non_resource_urls: rule.non_resource_urls.clone(),
            namespaces: rule.namespaces.clone(),
        }
    }

    /// A ClusterRole's rule, limited to `namespaces` (empty: everywhere). Non-resource
    /// rules only count without a namespace limit, as with a RoleBinding in RBAC.
    pub fn from_cluster_role_rule(rule: &PolicyRule, namespaces: &[String]) -> Option<Self> {
        let non_resource_urls = rule.non_resource_urls.clone().unwrap_or_default();
        if !non_resource_urls.is_empty() && !namespaces.is_empty() {
            return None;
        }
        Some(Self {
            verbs: rule.verbs.clone(),
            api_groups: rule.api_groups.clone().unwrap_or_default(),
            resources: rule.resources.clone().unwrap_or_default(),
            resource_names: rule.resource_names.clone().unwrap_or_default(),
            non_resource_urls,
            namespaces: namespaces.to_vec(),
        })
    }

    pub fn permits(&self, access: &Access) -> bool {
        match access {
            Access::Resource(r) => self.permits_resource(r),
            Access::NonResource { path, verb } => {
                has_or_star(&self.verbs, verb)
                    && self
                        .non_resource_urls
                        .iter()
                        .any(|url| url_matches(url, path))
            }
        }
    }

    fn permits_resource(&self, r: &ResourceAccess) -> bool {
        if self.resources.is_empty() {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.contains(&r.namespace) {
            return false;
        }
        has_or_star(&self.verbs, &r.verb)
            && has_or_star(&self.api_groups, &r.group)
            && self.resource_matches(&r.resource, &r.subresource)
            && (self.resource_names.is_empty() || self.resource_names.contains(&r.name))
    }

    fn resource_matches(&self, resource: &str, subresource: &str) -> bool {
        self.resources.iter().any(|rule| {
            if rule == "*" {
                return true;
            }
            if subresource.is_empty() {
                return rule == resource;
            }
            match rule.split_once('/') {
                Some(("*", sub)) => sub == subresource,
                Some((res, sub)) => res == resource && sub == subresource,
                None => false,
            }
        })
    }
}

fn has_or_star(values: &[String], wanted: &str) -> bool {
    values.iter().any(|v| v == "*" || v == wanted)
}

fn url_matches(rule: &str, path: &str) -> bool {
    if rule == "*" {
        return true;
    }
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => rule == path,
    }
}

/// What every scoped token may do whatever its scopes, because every authenticated user
/// may (the `system:discovery`, `system:public-info-viewer` and `system:basic-user`
/// ClusterRoles): API discovery, version and health, and asking who it is and what it
/// may do. Without them kubectl cannot even find the resources a scope permits. The
/// owner's RBAC still decides; Patrol only does not deny these.
pub fn discovery() -> Vec<Rule> {
    let urls = [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/openapi",
        "/openapi/*",
        "/version",
        "/version/",
        "/healthz",
        "/livez",
        "/readyz",
    ];
    vec![
        Rule {
            verbs: vec!["get".into()],
            non_resource_urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            ..Rule::default()
        },
        Rule {
            verbs: vec!["create".into()],
            api_groups: vec!["authorization.k8s.io".into()],
            resources: vec![
                "selfsubjectaccessreviews".into(),
                "selfsubjectrulesreviews".into(),
            ],
            ..Rule::default()
        },
        Rule {
            verbs: vec!["create".into()],
            api_groups: vec!["authentication.k8s.io".into()],
            resources: vec!["selfsubjectreviews".into()],
            ..Rule::default()
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    fn res(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Access {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        Access::Resource(ResourceAccess {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: ns.into(),
            name: name.into(),
        })
    }

    fn path(verb: &str, p: &str) -> Access {
        Access::NonResource {
            path: p.into(),
            verb: verb.into(),
        }
    }

    fn read_pods() -> Rule {
        Rule {
            verbs: strings(&["get", "list", "watch"]),
            api_groups: strings(&[""]),
            resources: strings(&["pods", "pods/log"]),
            ..Rule::default()
        }
    }

    #[test]
    fn resource_rules_match_like_rbac() {
        let rule = read_pods();
        let table = [
            (res("list", "", "pods", "a", ""), true),
            (res("get", "", "pods", "a", "web-0"), true),
            (res("list", "", "pods", "", ""), true),
            (res("get", "", "pods/log", "a", "web-0"), true),
            (res("get", "", "pods/exec", "a", "web-0"), false),
            (res("delete", "", "pods", "a", "web-0"), false),
            (res("list", "", "secrets", "a", ""), false),
            (res("list", "apps", "pods", "a", ""), false),
            (path("get", "/api"), false),
        ];
        for (access, want) in table {
            assert_eq!(rule.permits(&access), want, "{access}");
        }
    }

    #[test]
    fn wildcards_and_subresources() {
        let rule = Rule {
            verbs: strings(&["*"]),
            api_groups: strings(&["*"]),
            resources: strings(&["*/scale"]),
            ..Rule::default()
        };
        assert!(rule.permits(&res("patch", "apps", "deployments/scale", "a", "web")));
        assert!(!rule.permits(&res("patch", "apps", "deployments", "a", "web")));
        let all = Rule {
            resources: strings(&["*"]),
            ..rule
        };
        assert!(all.permits(&res("delete", "apps", "deployments/status", "a", "web")));
        assert!(all.permits(&res("delete", "", "secrets", "", "")));
    }

    #[test]
    fn resource_names_need_a_name() {
        let rule = Rule {
            resource_names: strings(&["config"]),
            resources: strings(&["configmaps"]),
            ..read_pods()
        };
        assert!(rule.permits(&res("get", "", "configmaps", "a", "config")));
        assert!(!rule.permits(&res("get", "", "configmaps", "a", "other")));
        assert!(!rule.permits(&res("list", "", "configmaps", "a", "")));
    }

    #[test]
    fn namespaces_limit_resource_rules() {
        let rule = Rule {
            namespaces: strings(&["team-a"]),
            ..read_pods()
        };
        assert!(rule.permits(&res("list", "", "pods", "team-a", "")));
        assert!(!rule.permits(&res("list", "", "pods", "team-b", "")));
        assert!(
            !rule.permits(&res("list", "", "pods", "", "")),
            "all namespaces is not team-a"
        );
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_prefix() {
        let rule = Rule {
            verbs: strings(&["get"]),
            non_resource_urls: strings(&["/healthz", "/metrics/*"]),
            ..Rule::default()
        };
        assert!(rule.permits(&path("get", "/healthz")));
        assert!(!rule.permits(&path("get", "/healthz/etcd")));
        assert!(rule.permits(&path("get", "/metrics/cadvisor")));
        assert!(!rule.permits(&path("post", "/healthz")));
        assert!(!rule.permits(&res("get", "", "pods", "", "")));
    }

    #[test]
    fn cluster_role_rules_keep_non_resource_urls_only_cluster_wide() {
        let rule = PolicyRule {
            verbs: strings(&["get"]),
            non_resource_urls: Some(strings(&["/metrics"])),
            ..PolicyRule::default()
        };
        assert!(Rule::from_cluster_role_rule(&rule, &[]).is_some());
        assert!(Rule::from_cluster_role_rule(&rule, &strings(&["a"])).is_none());
    }

    #[test]
    fn discovery_lets_kubectl_find_its_way_only() {
        let rules = discovery();
        let permitted = |a: &Access| rules.iter().any(|r| r.permits(a));
        assert!(permitted(&path("get", "/api")));
        assert!(permitted(&path("get", "/apis/apps/v1")));
        assert!(permitted(&path("get", "/openapi/v3/api/v1")));
        assert!(permitted(&res(
            "create",
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
            "",
            ""
        )));
        assert!(!permitted(&path("get", "/metrics")));
        assert!(!permitted(&path("post", "/api")));
        assert!(!permitted(&res("list", "", "pods", "a", "")));
        assert!(!permitted(&res(
            "create",
            "authorization.k8s.io",
            "subjectaccessreviews",
            "",
            ""
        )));
    }
}

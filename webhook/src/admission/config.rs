//! The MutatingWebhookConfiguration and ValidatingWebhookConfiguration that route the
//! apiserver to `/mutate` and `/validate`, rendered from Rust so the end-to-end tests, the
//! demo and the chart share one definition (`patrol-admission-config` prints them).
//!
//! Choices, per webhook:
//!
//! - `failurePolicy: Fail`: a token must never be admitted unchecked because the webhook was
//!   down; the price is that PersonalAccessToken and TokenPolicy writes wait for it.
//! - `sideEffects: None`: the webhook only reads (SubjectAccessReviews included), so dry-run
//!   requests are judged too.
//! - `matchPolicy: Equivalent`: a later API version of the same resources is converted and
//!   sent here instead of bypassing the webhook.
//! - `timeoutSeconds` (default 5): the webhook answers within 3 s even when
//!   SubjectAccessReviews hang.
//! - `admissionReviewVersions: [v1]`, the only version served.
//! - The mutating webhook handles CREATE only (updates are never mutated) and is not
//!   reinvoked. The validating webhooks handle CREATE and UPDATE, and a match condition
//!   skips updates that leave `spec` as it was (finalizers, labels, the operator's
//!   bookkeeping): those are never judged, so the webhook being down cannot block a
//!   deletion's finalizer removal. DELETE is not intercepted.
//! - PersonalAccessToken webhooks take a `namespaceSelector`/`objectSelector` when given;
//!   TokenPolicies are cluster-scoped, so only an `objectSelector` applies to them.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
        ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use patrol_api::GROUP;

use super::VERSION;
use crate::routes::admission::{MUTATE, VALIDATE};

/// Webhook names (unique within each configuration; the apiserver prefixes its messages
/// with them: `admission webhook "…" denied the request`).
pub const MUTATE_TOKENS: &str = "owner.personalaccesstokens.patrol.dev";
pub const VALIDATE_TOKENS: &str = "personalaccesstokens.patrol.dev";
pub const VALIDATE_POLICIES: &str = "tokenpolicies.patrol.dev";

/// The CEL match condition that skips updates leaving `spec` unchanged.
pub const SPEC_CHANGED: &str = "request.operation != 'UPDATE' || !has(object.spec) || !has(oldObject.spec) || object.spec != oldObject.spec";

/// Where the apiserver reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A base URL such as `https://127.0.0.1:8443` (local runs); paths are appended.
    Url(String),
    /// A Service in the cluster (the chart).
    Service {
        namespace: String,
        name: String,
        port: Option<i32>,
    },
}

/// Everything the configurations are rendered from.
#[derive(Clone, Debug)]
pub struct WebhookConfigOptions {
    /// `metadata.name` of both configurations.
    pub name: String,
    pub endpoint: Endpoint,
    /// PEM of the CA that signed the webhook's serving certificate.
    pub ca_bundle: Option<Vec<u8>>,
    pub timeout_seconds: i32,
    /// Limits the PersonalAccessToken webhooks to matching namespaces.
    pub token_namespace_selector: Option<LabelSelector>,
    /// Limits the PersonalAccessToken webhooks to matching objects.
    pub token_object_selector: Option<LabelSelector>,
    /// Limits the TokenPolicy webhook to matching objects.
    pub policy_object_selector: Option<LabelSelector>,
    /// Labels of both configurations.
    pub labels: BTreeMap<String, String>,
}

impl WebhookConfigOptions {
    pub fn new(name: impl Into<String>, endpoint: Endpoint) -> Self {
        Self {
            name: name.into(),
            endpoint,
            ca_bundle: None,
            timeout_seconds: 5,
            token_namespace_selector: None,
            token_object_selector: None,
            policy_object_selector: None,
            labels: BTreeMap::new(),
        }
    }

    fn client_config(&self, path: &str) -> WebhookClientConfig {
        let (url, service) = match &self.endpoint {
            Endpoint::Url(base) => (Some(format!("{}{path}", base.trim_end_matches('/'))), None),
            Endpoint::Service {
                namespace,
                name,
                port,
            } => (
                None,
                Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.to_owned()),
                    port: *port,
                }),
            ),
        };
        WebhookClientConfig {
            url,
            service,
            ca_bundle: self.ca_bundle.clone().map(ByteString),
        }
    }

    fn metadata(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            labels: (!self.labels.is_empty()).then(|| self.labels.clone()),
            ..ObjectMeta::default()
        }
    }
}

fn rule(resource: &str, operations: &[&str], scope: &str) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec![GROUP.to_owned()]),
        api_versions: Some(vec![VERSION.to_owned()]),
        operations: Some(operations.iter().map(|o| (*o).to_owned()).collect()),
        resources: Some(vec![resource.to_owned()]),
        scope: Some(scope.to_owned()),
    }
}

fn spec_changed() -> Option<Vec<MatchCondition>> {
    Some(vec![MatchCondition {
        name: "spec-changed".to_owned(),
        expression: SPEC_CHANGED.to_owned(),
    }])
}

/// The mutating configuration: owner stamping on PersonalAccessToken CREATE.
pub fn mutating(options: &WebhookConfigOptions) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: options.metadata(),
        webhooks: Some(vec![MutatingWebhook {
            name: MUTATE_TOKENS.to_owned(),
            client_config: options.client_config(MUTATE),
            rules: Some(vec![rule(
                "personalaccesstokens",
                &["CREATE"],
                "Namespaced",
            )]),
            admission_review_versions: vec!["v1".to_owned()],
            failure_policy: Some("Fail".to_owned()),
            match_policy: Some("Equivalent".to_owned()),
            side_effects: "None".to_owned(),
            timeout_seconds: Some(options.timeout_seconds),
            reinvocation_policy: Some("Never".to_owned()),
            namespace_selector: options.token_namespace_selector.clone(),
            object_selector: options.token_object_selector.clone(),
            match_conditions: None,
        }]),
    }
}

/// The validating configuration: PersonalAccessTokens and TokenPolicies, CREATE and UPDATE.
pub fn validating(options: &WebhookConfigOptions) -> ValidatingWebhookConfiguration {
    let webhook = |name: &str, resource: &str, scope: &str| ValidatingWebhook {
        name: name.to_owned(),
        client_config: options.client_config(VALIDATE),
        rules: Some(vec![rule(resource, &["CREATE", "UPDATE"], scope)]),
        admission_review_versions: vec!["v1".to_owned()],
        failure_policy: Some("Fail".to_owned()),
        match_policy: Some("Equivalent".to_owned()),
        side_effects: "None".to_owned(),
        timeout_seconds: Some(options.timeout_seconds),
        namespace_selector: None,
        object_selector: None,
        match_conditions: spec_changed(),
    };
    let tokens = ValidatingWebhook {
        namespace_selector: options.token_namespace_selector.clone(),
        object_selector: options.token_object_selector.clone(),
        ..webhook(VALIDATE_TOKENS, "personalaccesstokens", "Namespaced")
    };
    let policies = ValidatingWebhook {
        object_selector: options.policy_object_selector.clone(),
        ..webhook(VALIDATE_POLICIES, "tokenpolicies", "Cluster")
    };
    ValidatingWebhookConfiguration {
        metadata: options.metadata(),
        webhooks: Some(vec![tokens, policies]),
    }
}

/// Both configurations as one YAML stream (mutating first).
pub fn render_yaml(options: &WebhookConfigOptions) -> Result<String, serde_yaml::Error> {
    let mutating = serde_yaml::to_string(&mutating(options))?;
    let validating = serde_yaml::to_string(&validating(options))?;
    Ok(format!("---\n{mutating}---\n{validating}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selector(key: &str, value: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
            match_expressions: None,
        }
    }

    #[test]
    fn url_configurations_carry_every_safety_setting() {
        let mut options =
            WebhookConfigOptions::new("patrol", Endpoint::Url("https://127.0.0.1:8443/".into()));
        options.ca_bundle = Some(b"-----BEGIN CERTIFICATE-----\n".to_vec());
        options.token_namespace_selector = Some(selector("team", "a"));
        options.policy_object_selector = Some(selector("run", "1"));
        let m = serde_json::to_value(mutating(&options)).unwrap();
        assert_eq!(m["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(m["kind"], "MutatingWebhookConfiguration");
        let w = &m["webhooks"][0];
        assert_eq!(w["name"], MUTATE_TOKENS);
        assert_eq!(w["clientConfig"]["url"], "https://127.0.0.1:8443/mutate");
        assert_eq!(
            w["clientConfig"]["caBundle"],
            "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
        );
        for (key, value) in [
            ("failurePolicy", json!("Fail")),
            ("sideEffects", json!("None")),
            ("matchPolicy", json!("Equivalent")),
            ("timeoutSeconds", json!(5)),
            ("admissionReviewVersions", json!(["v1"])),
            ("reinvocationPolicy", json!("Never")),
            ("namespaceSelector", json!({"matchLabels": {"team": "a"}})),
        ] {
            assert_eq!(w[key], value, "{key}");
        }
        assert_eq!(
            w["rules"],
            json!([{"apiGroups": ["patrol.dev"], "apiVersions": ["v1alpha1"], "operations": ["CREATE"], "resources": ["personalaccesstokens"], "scope": "Namespaced"}])
        );

        let v = serde_json::to_value(validating(&options)).unwrap();
        assert_eq!(v["kind"], "ValidatingWebhookConfiguration");
        let hooks = v["webhooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        for w in hooks {
            assert_eq!(w["clientConfig"]["url"], "https://127.0.0.1:8443/validate");
            assert_eq!(w["failurePolicy"], "Fail");
            assert_eq!(w["sideEffects"], "None");
            assert_eq!(w["matchPolicy"], "Equivalent");
            assert_eq!(w["timeoutSeconds"], 5);
            assert_eq!(w["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
            assert_eq!(w["matchConditions"][0]["expression"], SPEC_CHANGED);
        }
        assert_eq!(
            hooks[0]["rules"][0]["resources"],
            json!(["personalaccesstokens"])
        );
        assert_eq!(
            hooks[0]["namespaceSelector"],
            json!({"matchLabels": {"team": "a"}})
        );
        assert_eq!(hooks[1]["rules"][0]["resources"], json!(["tokenpolicies"]));
        assert_eq!(hooks[1]["rules"][0]["scope"], "Cluster");
        assert_eq!(
            hooks[1]["objectSelector"],
            json!({"matchLabels": {"run": "1"}})
        );
        assert!(hooks[1].get("namespaceSelector").is_none());
    }

    #[test]
    fn service_configurations_and_yaml() {
        let options = WebhookConfigOptions::new(
            "patrol",
            Endpoint::Service {
                namespace: "patrol-system".into(),
                name: "patrol-webhook".into(),
                port: Some(443),
            },
        );
        let v = serde_json::to_value(validating(&options)).unwrap();
        assert_eq!(
            v["webhooks"][0]["clientConfig"],
            json!({"service": {"namespace": "patrol-system", "name": "patrol-webhook", "path": "/validate", "port": 443}})
        );
        let yaml = render_yaml(&options).unwrap();
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["kind"], "MutatingWebhookConfiguration");
        assert_eq!(docs[1]["kind"], "ValidatingWebhookConfiguration");
        assert_eq!(docs[1]["metadata"]["name"], "patrol");
    }
}

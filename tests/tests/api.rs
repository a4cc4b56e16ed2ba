//! The API against a real kube-apiserver: CRDs install, read well, and reject bad input.

use anyhow::{Context, Result};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use patrol_api::v1alpha1::PersonalAccessToken;
use patrol_e2e::{FIELD_MANAGER, TestCluster, TestNamespace, eventually, repo_root};
use serde_json::{Value, json};
use std::time::Duration;

async fn cluster() -> Result<&'static TestCluster> {
    let cluster = TestCluster::shared()?;
    cluster.install_crds().await?;
    Ok(cluster)
}

fn resource(kind: &str) -> ApiResource {
    let (group, version, plural) = match kind {
        "PersonalAccessToken" => ("patrol.dev", "v1alpha1", "personalaccesstokens"),
        "TokenPolicy" => ("patrol.dev", "v1alpha1", "tokenpolicies"),
        "TokenScope" => ("patrol.dev", "v1alpha1", "tokenscopes"),
        "CredentialProvider" => ("patrol.dev", "v1alpha1", "credentialproviders"),
        // What the workload and credentials examples run alongside their tokens.
        "Role" => ("rbac.authorization.k8s.io", "v1", "roles"),
        "RoleBinding" => ("rbac.authorization.k8s.io", "v1", "rolebindings"),
        "ServiceAccount" => ("", "v1", "serviceaccounts"),
        "Job" => ("batch", "v1", "jobs"),
        other => panic!("unknown kind {other}: add it here to apply the example"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn pat(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("valid object shape: {e}"))
}

#[tokio::test]
async fn crds_are_established_and_documented() -> Result<()> {
    let cluster = cluster().await?;
    // The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    let explain = eventually(Duration::from_secs(30), || async {
        cluster.kubectl_ok(&["explain", "pat.spec.expiration"])
    })
    .await?;
    assert!(
        explain.contains("KIND:       PersonalAccessToken"),
        "{explain}"
    );
    assert!(
        explain.contains("When the token stops working"),
        "{explain}"
    );
    assert!(explain.contains("ttl"), "{explain}");
    let explain = cluster.kubectl_ok(&["explain", "tokenpolicy.spec.expiration.max"])?;
    assert!(
        explain.contains("Longest lifetime a token may have"),
        "{explain}"
    );

    let ns = TestNamespace::create(cluster, "columns").await?;
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client().await?,
        &ns.name,
        &resource("PersonalAccessToken"),
    );
    let obj = pat(
        "columns",
        json!({"displayName": "Printer columns", "owner": {"username": "alice"}}),
    );
    api.create(&PostParams::default(), &obj).await?;
    let table = cluster.kubectl_ok(&["get", "pat", "-n", &ns.name])?;
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "DISPLAY NAME",
        "OWNER",
        "PHASE",
        "EXPIRES",
        "LAST USED",
        "AGE",
    ] {
        assert!(header.contains(column), "missing {column} in {header:?}");
    }
    assert!(
        table.contains("Printer columns") && table.contains("alice"),
        "{table}"
    );
    Ok(())
}

/// Every manifest under examples/ applies with server-side apply, and applying a Patrol
/// object again changes nothing (same resourceVersion).
#[tokio::test]
async fn examples_apply_and_reapply_as_no_op() -> Result<()> {
    let cluster = cluster().await?;
    let client = cluster.client().await?;
    let ns = TestNamespace::create(cluster, "examples").await?;
    let params = PatchParams::apply(FIELD_MANAGER);
    let mut applied_policies = Vec::new();
    let mut count = 0;
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(value)?;
            let kind = obj
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default();
            let api: Api<DynamicObject> = match kind.as_str() {
                "TokenPolicy" | "TokenScope" | "CredentialProvider" => {
                    Api::all_with(client.clone(), &resource(&kind))
                }
                _ => Api::namespaced_with(client.clone(), &ns.name, &resource(&kind)),
            };
            let name = obj.name_any();
            let what = format!("{} {kind}/{name}", file.display());
            let first = api
                .patch(&name, &params, &Patch::Apply(&obj))
                .await
                .with_context(|| what.clone())?;
            let second = api
                .patch(&name, &params, &Patch::Apply(&obj))
                .await
                .with_context(|| what.clone())?;
            // Patrol's own objects must re-apply as no-ops (GitOps sees no drift); a Job's
            // controller-side defaulting is Kubernetes' business.
            if obj
                .types
                .as_ref()
                .is_some_and(|t| t.api_version.starts_with("patrol.dev/"))
            {
                assert_eq!(
                    first.resource_version(),
                    second.resource_version(),
                    "re-applying {what} changed it"
                );
            }
            if ["TokenPolicy", "TokenScope", "CredentialProvider"].contains(&kind.as_str()) {
                applied_policies.push((kind, name));
            }
            count += 1;
        }
    }
    assert!(
        count >= 4,
        "expected the examples to hold at least 4 objects, found {count}"
    );
    // Cluster-scoped policies and scopes would govern other tests' tokens: remove them.
    for (kind, name) in applied_policies {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(&kind));
        api.delete(&name, &Default::default()).await?;
    }
    Ok(())
}

use serde::Deserialize;

/// Invalid manifests are refused by the apiserver with a message a person can act on,
/// and nothing is stored.
#[tokio::test]
async fn invalid_manifests_are_rejected_with_clear_messages() -> Result<()> {
    let cluster = cluster().await?;
    let client = cluster.client().await?;
    let ns = TestNamespace::create(cluster, "invalid").await?;
    let pats: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &resource("PersonalAccessToken"));
    let policies: Api<DynamicObject> = Api::all_with(client.clone(), &resource("TokenPolicy"));
    let long_name = "n".repeat(64);

    let pat_cases: Vec<(&str, DynamicObject, &str)> = vec![
        (
            "missing displayName",
            pat("no-display", json!({})),
            "spec.displayName: Required value",
        ),
        (
            "blank displayName",
            pat("blank", json!({"displayName": "   "})),
            "spec.displayName must not be blank",
        ),
        (
            "long displayName",
            pat("long", json!({"displayName": "x".repeat(101)})),
            "may not be more than 100",
        ),
        (
            "long name",
            pat(&long_name, json!({"displayName": "x"})),
            "metadata.name must be at most 63 characters",
        ),
        (
            "ttl and expiresAt",
            pat(
                "both",
                json!({"displayName": "x", "expiration": {"ttl": "1d", "expiresAt": "2030-01-01T00:00:00Z"}}),
            ),
            "set exactly one of spec.expiration.ttl or spec.expiration.expiresAt",
        ),
        (
            "empty expiration",
            pat("neither", json!({"displayName": "x", "expiration": {}})),
            "set exactly one of spec.expiration.ttl or spec.expiration.expiresAt",
        ),
        (
            "bad ttl",
            pat(
                "bad-ttl",
                json!({"displayName": "x", "expiration": {"ttl": "1.5h"}}),
            ),
            "spec.expiration.ttl: Invalid value: \"1.5h\": must be a duration: use a number with a unit, e.g. 90d",
        ),
        (
            "ttl without unit",
            pat(
                "ttl-unit",
                json!({"displayName": "x", "expiration": {"ttl": "90"}}),
            ),
            "spec.expiration.ttl: Invalid value",
        ),
        (
            "bad revealWindow",
            pat(
                "bad-reveal",
                json!({"displayName": "x", "secret": {"revealWindow": "soon"}}),
            ),
            "spec.secret.revealWindow: Invalid value: \"soon\": must be a duration",
        ),
        (
            "bad gracePeriod",
            pat(
                "bad-grace",
                json!({"displayName": "x", "rotation": {"gracePeriod": "1 day"}}),
            ),
            "spec.rotation.gracePeriod: Invalid value: \"1 day\": must be a duration",
        ),
        (
            "bad rotation interval",
            pat(
                "bad-every",
                json!({"displayName": "x", "rotation": {"every": "monthly"}}),
            ),
            "spec.rotation.every: Invalid value: \"monthly\": must be a duration",
        ),
        (
            "bad retention",
            pat(
                "bad-retention",
                json!({"displayName": "x", "secret": {"retention": "Forever"}}),
            ),
            "supported values: \"OneTime\", \"Persistent\"",
        ),
        (
            "bad scope",
            pat(
                "bad-scope",
                json!({"displayName": "x", "scopes": ["read pods"]}),
            ),
            "spec.scopes[0]: Invalid value: \"read pods\"",
        ),
        (
            "duplicate scope",
            pat(
                "dup-scope",
                json!({"displayName": "x", "scopes": ["a", "a"]}),
            ),
            "spec.scopes[1]: Duplicate value: \"a\"",
        ),
        (
            "owner without username",
            pat(
                "no-user",
                json!({"displayName": "x", "owner": {"groups": ["g"]}}),
            ),
            "spec.owner.username: Required value",
        ),
    ];
    for (case, obj, want) in pat_cases {
        let name = obj.name_any();
        let err = pats
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(case);
        assert_invalid(case, &err, want);
        assert!(
            pats.get_opt(&name).await?.is_none(),
            "{case}: object was stored"
        );
    }

    let policy = |name: &str, spec: Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenPolicy",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("valid object shape")
    };
    let policy_cases = vec![
        (
            "bad max",
            policy("e2e-bad-max", json!({"expiration": {"max": "90days"}})),
            "spec.expiration.max: Invalid value: \"90days\": must be a duration",
        ),
        (
            "bad default",
            policy("e2e-bad-default", json!({"expiration": {"default": "1y"}})),
            "spec.expiration.default: Invalid value: \"1y\": must be a duration",
        ),
        (
            "bad idle",
            policy("e2e-bad-idle", json!({"idleTimeout": "-1h"})),
            "spec.idleTimeout: Invalid value: \"-1h\": must be a duration",
        ),
        (
            "bad maxTTL",
            policy("e2e-bad-ttl", json!({"exchange": {"maxTTL": "x"}})),
            "spec.exchange.maxTTL: Invalid value: \"x\": must be a duration",
        ),
        (
            "bad warnBefore",
            policy("e2e-bad-warn", json!({"rotation": {"warnBefore": "1w"}})),
            "spec.rotation.warnBefore: Invalid value: \"1w\": must be a duration",
        ),
        (
            "bad retention",
            policy(
                "e2e-bad-ret",
                json!({"secret": {"allowedRetention": ["Sometimes"]}}),
            ),
            "supported values: \"OneTime\", \"Persistent\"",
        ),
    ];
    for (case, obj, want) in policy_cases {
        let name = obj.name_any();
        let err = policies
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(case);
        assert_invalid(case, &err, want);
        assert!(
            policies.get_opt(&name).await?.is_none(),
            "{case}: object was stored"
        );
    }
    Ok(())
}

/// Rules that compare an update with the stored object (CEL transition rules).
#[tokio::test]
async fn immutable_fields_cannot_change() -> Result<()> {
    let cluster = cluster().await?;
    let client = cluster.client().await?;
    let ns = TestNamespace::create(cluster, "immutable").await?;
    let api: Api<PersonalAccessToken> = Api::namespaced(client, &ns.name);
    let original = serde_json::from_value::<PersonalAccessToken>(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": "fixed"},
        "spec": {"displayName": "x", "owner": {"username": "alice"}, "secret": {"name": "fixed-secret"}, "revoked": true},
    }))?;
    let stored = api.create(&PostParams::default(), &original).await?;

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "change owner",
            json!({"spec": {"owner": {"username": "mallory"}}}),
            "spec.owner is immutable once set",
        ),
        (
            "drop owner",
            json!({"spec": {"owner": null}}),
            "spec.owner is immutable once set",
        ),
        (
            "un-revoke",
            json!({"spec": {"revoked": false}}),
            "spec.revoked cannot be set back to false",
        ),
        (
            "rename secret",
            json!({"spec": {"secret": {"name": "other"}}}),
            "spec.secret.name is immutable",
        ),
        (
            "drop secret block",
            json!({"spec": {"secret": null}}),
            "spec.secret.name is immutable",
        ),
    ];
    for (case, patch, want) in cases {
        let err = api
            .patch("fixed", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err(case);
        assert_invalid(case, &err, want);
        let now = api.get("fixed").await?;
        assert_eq!(
            now.resource_version(),
            stored.resource_version(),
            "{case}: object changed"
        );
    }
    // What is allowed still works: the display name may change.
    api.patch(
        "fixed",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"displayName": "renamed"}})),
    )
    .await?;
    Ok(())
}

fn assert_invalid(case: &str, err: &kube::Error, want: &str) {
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{case}: {}", status.message);
            assert!(
                status.message.contains(want),
                "{case}: expected {want:?} in {:?}",
                status.message
            );
        }
        other => panic!("{case}: expected a 422 from the apiserver, got {other}"),
    }
}

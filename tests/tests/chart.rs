//! The Helm chart (`charts/patrol`): its CRDs are the generated ones, it lints, its schema
//! refuses bad values, its rendered objects say exactly what they should (RBAC rule lists
//! in full, webhook configurations equal to the webhook crate's own, restricted pods), and
//! it installs into the real kube-apiserver — where the real operator and token service
//! then run under the chart's ServiceAccounts, proving its RBAC suffices, and a few
//! things those accounts must not do are refused.

// Test fixtures fail loudly on impossible input.
#![allow(clippy::expect_used)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::{
    ByteString,
    api::{coordination::v1::Lease, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use patrol_api::{
    attestation,
    v1alpha1::{CredentialProvider, PersonalAccessToken, Phase},
};
use patrol_e2e::{
    TestCluster, TestNamespace,
    chart::{Helm, Manifest, chart_dir},
    eventually,
    operator::{delivered_token, ready_reason, records_for, wait_for_phase},
    process::{self, Process},
    repo_root,
};
use patrol_webhook::admission::config::{Endpoint, WebhookConfigOptions, mutating, validating};
use serde_json::{Value, json};

/// Release and namespace the rendering tests use; the full name is then just "patrol".
const RELEASE: &str = "patrol";
const NAMESPACE: &str = "patrol-system";
const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TT_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The audience the apiserver's JWT authenticator accepts (hack/cluster.sh).
const KUBE_AUDIENCE: &str = "kubernetes-patrol";

fn render(args: &[&str]) -> Result<Manifest> {
    Helm::local()?.template(RELEASE, NAMESPACE, args)
}

fn decode(value: &Value) -> Result<Vec<u8>> {
    Ok(serde_json::from_value::<ByteString>(value.clone())
        .context("not base64")?
        .0)
}

/// `application/x-www-form-urlencoded`.
fn form(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The claims of a JWT (its signature is the token service's business, tested elsewhere).
fn jwt_claims(jwt: &str) -> Result<Value> {
    let part = jwt.split('.').nth(1).context("not a JWT")?;
    let mut standard: String = part
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !standard.len().is_multiple_of(4) {
        standard.push('=');
    }
    Ok(serde_json::from_slice(&decode(&Value::String(standard))?)?)
}

/// `openssl x509 -ext subjectAltName` of a PEM certificate.
fn subject_alt_names(cert_pem: &[u8]) -> Result<String> {
    let dir = tempdir("chart-sans")?;
    let file = dir.join(format!(
        "{}.crt",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::write(&file, cert_pem)?;
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&file)
        .output()?;
    ensure!(
        out.status.success(),
        "openssl x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let _ = std::fs::remove_file(&file);
    Ok(text
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .join("")
        .replace(' ', ""))
}

fn app_version() -> Result<String> {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml"))?)?;
    chart["appVersion"]
        .as_str()
        .map(str::to_owned)
        .context("Chart.yaml has no appVersion")
}

// ---------------------------------------------------------------------------------------
// No cluster needed.

/// The chart ships byte-identical copies of crds/generated/*.yaml. Refresh them with
/// `cp crds/generated/*.yaml charts/patrol/files/crds/`.
#[test]
fn chart_crds_are_the_generated_crds() -> Result<()> {
    let list = |dir: &Path| -> Result<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") {
                names.insert(name);
            }
        }
        Ok(names)
    };
    let generated = repo_root().join("crds/generated");
    let copies = chart_dir().join("files/crds");
    let (want, have) = (list(&generated)?, list(&copies)?);
    let fix = "refresh with: cp crds/generated/*.yaml charts/patrol/files/crds/ (and remove files no longer generated)";
    assert_eq!(
        have, want,
        "charts/patrol/files/crds/ holds other files than crds/generated/; {fix}"
    );
    for name in &want {
        let (a, b) = (
            std::fs::read(generated.join(name))?,
            std::fs::read(copies.join(name))?,
        );
        assert!(
            a == b,
            "charts/patrol/files/crds/{name} differs from crds/generated/{name}; {fix}"
        );
    }
    Ok(())
}

#[test]
fn lint_passes_and_the_schema_refuses_bad_values() -> Result<()> {
    let helm = Helm::local()?;
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path")?;
    helm.ok(&["lint", chart])?;
    helm.ok(&["lint", "--strict", chart])?;

    let dir = tempdir("chart-lint")?;
    let bad = dir.join("bad-values.yaml");
    std::fs::write(
        &bad,
        "operatr:\n  replicas: 2\nwebhook:\n  replicas: two\n  cacheTTL: soon\n",
    )?;
    let out = helm.run(&[
        "lint",
        "--strict",
        chart,
        "-f",
        bad.to_str().context("path")?,
    ])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "lint accepted values that break the schema:\n{text}"
    );
    for clear in [
        "additional properties 'operatr' not allowed",
        "at '/webhook/replicas': got string, want integer",
        "at '/webhook/cacheTTL'",
    ] {
        assert!(
            text.contains(clear),
            "lint output does not say {clear:?}:\n{text}"
        );
    }
    // Installs are refused the same way, before anything reaches a cluster.
    let err =
        render(&["-f", bad.to_str().context("path")?]).expect_err("template accepted bad values");
    assert!(
        format!("{err:#}").contains("additional properties 'operatr' not allowed"),
        "{err:#}"
    );
    Ok(())
}

#[test]
fn default_render_has_every_object_in_the_release_namespace() -> Result<()> {
    let m = render(&[])?;
    let want = [
        "ClusterRole/patrol-operator",
        "ClusterRole/patrol-webhook",
        "ClusterRoleBinding/patrol-operator",
        "ClusterRoleBinding/patrol-webhook",
        "CustomResourceDefinition/credentialproviders.patrol.dev",
        "CustomResourceDefinition/personalaccesstokens.patrol.dev",
        "CustomResourceDefinition/tokenpolicies.patrol.dev",
        "CustomResourceDefinition/tokenscopes.patrol.dev",
        "Deployment/patrol-operator",
        "Deployment/patrol-webhook",
        "MutatingWebhookConfiguration/patrol",
        "PodDisruptionBudget/patrol-webhook",
        "Role/patrol-operator",
        "Role/patrol-webhook",
        "RoleBinding/patrol-operator",
        "RoleBinding/patrol-webhook",
        "Secret/patrol-webhook-ca",
        "Secret/patrol-webhook-tls",
        "Service/patrol-operator-metrics",
        "Service/patrol-webhook",
        "ServiceAccount/patrol-operator",
        "ServiceAccount/patrol-webhook",
        "ValidatingAdmissionPolicy/patrol-operator-secret-writes",
        "ValidatingAdmissionPolicy/patrol-webhook-secret-writes",
        "ValidatingAdmissionPolicyBinding/patrol-operator-secret-writes",
        "ValidatingAdmissionPolicyBinding/patrol-webhook-secret-writes",
        "ValidatingWebhookConfiguration/patrol",
    ];
    assert_eq!(m.names(), want.map(String::from).to_vec());
    let cluster_scoped = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    for doc in &m.docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let namespace = &doc["metadata"]["namespace"];
        if cluster_scoped.contains(&kind) {
            assert!(
                namespace.is_null(),
                "{kind} is cluster-scoped but has a namespace"
            );
        } else {
            assert_eq!(
                namespace, NAMESPACE,
                "{kind} {} is not in the release namespace",
                doc["metadata"]["name"]
            );
        }
        assert_eq!(
            doc["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE,
            "{kind} lacks the chart's labels"
        );
    }
    Ok(())
}

/// The full rule lists: widening either role must change this test.
#[test]
fn rbac_is_exactly_what_the_binaries_use() -> Result<()> {
    let m = render(&[])?;
    let rules =
        |kind: &str, name: &str| -> Result<Value> { Ok(m.get(kind, name)?["rules"].clone()) };
    assert_eq!(
        rules("ClusterRole", "patrol-operator")?,
        json!([
            {"apiGroups": ["patrol.dev"], "resources": ["personalaccesstokens"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["patrol.dev"], "resources": ["personalaccesstokens/status"], "verbs": ["patch"]},
            {"apiGroups": ["patrol.dev"], "resources": ["personalaccesstokens/finalizers"], "verbs": ["update"]},
            {"apiGroups": ["patrol.dev"], "resources": ["tokenpolicies"], "verbs": ["list", "watch"]},
            {"apiGroups": ["patrol.dev"], "resources": ["tokenpolicies/status"], "verbs": ["patch"]},
            {"apiGroups": ["patrol.dev"], "resources": ["credentialproviders"], "verbs": ["list"]},
            {"apiGroups": ["patrol.dev"], "resources": ["credentialproviders/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ])
    );
    assert_eq!(
        rules("Role", "patrol-operator")?,
        json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["patrol-operator"], "verbs": ["get", "patch"]},
        ])
    );
    assert_eq!(
        rules("ClusterRole", "patrol-webhook")?,
        json!([
            {"apiGroups": ["patrol.dev"], "resources": ["personalaccesstokens"], "verbs": ["get"]},
            {"apiGroups": ["patrol.dev"], "resources": ["personalaccesstokens/status"], "verbs": ["patch"]},
            {"apiGroups": ["patrol.dev"], "resources": ["tokenpolicies"], "verbs": ["list", "watch"]},
            {"apiGroups": ["patrol.dev"], "resources": ["tokenscopes"], "verbs": ["list", "watch"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["patrol.dev"], "resources": ["credentialproviders"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete"]},
        ])
    );
    assert_eq!(
        rules("Role", "patrol-webhook")?,
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["patrol-signing-keys"], "verbs": ["update"]},
        ])
    );
    // Without associated credentials, none of their permissions.
    let no_credentials = render(&["--set", "credentials.enabled=false"])?;
    assert_eq!(
        no_credentials.get("ClusterRole", "patrol-webhook")?["rules"]
            .as_array()
            .map(Vec::len),
        Some(9)
    );

    // Each binding grants its role to its own ServiceAccount only.
    for (kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        for component in ["operator", "webhook"] {
            let name = format!("patrol-{component}");
            let binding = m.get(kind, &name)?;
            assert_eq!(
                binding["roleRef"],
                json!({"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name})
            );
            assert_eq!(
                binding["subjects"],
                json!([{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}])
            );
        }
    }
    // Leases and tokens are the operator's; nothing else in the chart grants anything.
    assert_eq!(m.all("ClusterRole").len() + m.all("Role").len(), 4);
    // Without token exchange there are no signing keys, so no Secret updates: only the
    // creation of the owner-attestation key.
    let no_exchange = render(&["--set", "webhook.exchange.enabled=false"])?;
    assert_eq!(
        no_exchange.get("Role", "patrol-webhook")?["rules"],
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        ])
    );
    Ok(())
}

/// What RBAC cannot narrow, the secret-write guard does; its CEL is exercised for real by
/// the install test (the operator runs under it, and a stray write is refused).
#[test]
fn secret_write_guard_binds_each_policy_to_one_service_account() -> Result<()> {
    let m = render(&[])?;
    for (component, allowed) in [
        ("operator", "token-record"),
        ("webhook", "patrol-signing-keys"),
        ("webhook", "patrol-owner-attestation"),
    ] {
        let name = format!("patrol-{component}-secret-writes");
        let policy = m.get("ValidatingAdmissionPolicy", &name)?;
        assert_eq!(policy["spec"]["failurePolicy"], "Fail");
        assert_eq!(
            policy["spec"]["matchConstraints"]["resourceRules"],
            json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["secrets"]}])
        );
        let condition = policy["spec"]["matchConditions"][0]["expression"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            condition,
            format!(
                "request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:patrol-{component}'"
            )
        );
        assert!(
            policy.to_string().contains(allowed),
            "{name} does not mention {allowed}"
        );
        let binding = m.get("ValidatingAdmissionPolicyBinding", &name)?;
        assert_eq!(
            binding["spec"],
            json!({"policyName": name, "validationActions": ["Deny"]})
        );
    }
    assert!(
        render(&["--set", "secretWriteGuard.enabled=false"])?
            .all("ValidatingAdmissionPolicy")
            .is_empty()
    );
    Ok(())
}

/// The webhook configurations are the ones the webhook crate itself renders for a Service
/// (`patrol-admission-config --service`), plus the release-namespace exclusion and the CA.
#[test]
fn webhook_configurations_are_the_webhook_crates_own() -> Result<()> {
    let m = render(&[])?;
    let mut options = WebhookConfigOptions::new(
        "patrol",
        Endpoint::Service {
            namespace: NAMESPACE.into(),
            name: "patrol-webhook".into(),
            port: Some(443),
        },
    );
    options.token_namespace_selector = Some(LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(vec![NAMESPACE.into()]),
        }]),
        match_labels: None,
    });
    let want_mutating = serde_json::to_value(mutating(&options))?;
    let want_validating = serde_json::to_value(validating(&options))?;

    let tls = m.get("Secret", "patrol-webhook-tls")?;
    let ca = decode(&tls["data"]["ca.crt"])?;
    assert_eq!(
        ca,
        decode(&m.get("Secret", "patrol-webhook-ca")?["data"]["tls.crt"])?,
        "a fresh install has one CA"
    );
    for (kind, want) in [
        ("MutatingWebhookConfiguration", want_mutating),
        ("ValidatingWebhookConfiguration", want_validating),
    ] {
        let config = m.get(kind, "patrol")?;
        let mut hooks = config["webhooks"].clone();
        for hook in hooks.as_array_mut().context("webhooks")? {
            let bundle = hook["clientConfig"]
                .as_object_mut()
                .context("clientConfig")?
                .remove("caBundle")
                .context("caBundle")?;
            assert_eq!(
                decode(&bundle)?,
                ca,
                "{kind}: caBundle is not the serving certificate's CA"
            );
            assert_eq!(hook["failurePolicy"], "Fail");
            assert_eq!(hook["sideEffects"], "None");
            assert_eq!(hook["timeoutSeconds"], 5);
            assert_eq!(hook["matchPolicy"], "Equivalent");
            assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
        }
        assert_eq!(
            hooks, want["webhooks"],
            "{kind} differs from patrol_webhook::admission::config"
        );
    }
    let validating = m.get("ValidatingWebhookConfiguration", "patrol")?;
    let rules: Vec<_> = validating["webhooks"]
        .as_array()
        .context("webhooks")?
        .iter()
        .map(|h| h["rules"].clone())
        .collect();
    assert_eq!(
        rules,
        vec![
            json!([{"apiGroups": ["patrol.dev"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"], "resources": ["personalaccesstokens"], "scope": "Namespaced"}]),
            json!([{"apiGroups": ["patrol.dev"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"], "resources": ["tokenpolicies"], "scope": "Cluster"}]),
        ]
    );

    // The serving certificate chains to that CA and names the Service.
    let dir = tempdir("chart-tls")?;
    let (ca_file, cert_file) = (dir.join("ca.crt"), dir.join("tls.crt"));
    std::fs::write(&ca_file, &ca)?;
    std::fs::write(&cert_file, decode(&tls["data"]["tls.crt"])?)?;
    let verify = Command::new("openssl")
        .args(["verify", "-purpose", "sslserver", "-CAfile"])
        .args([&ca_file, &cert_file])
        .output()?;
    ensure!(
        verify.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(
        subject_alt_names(&decode(&tls["data"]["tls.crt"])?)?,
        "DNS:patrol-webhook,DNS:patrol-webhook.patrol-system,DNS:patrol-webhook.patrol-system.svc,\
         DNS:patrol-webhook.patrol-system.svc.cluster.local"
    );
    // The hosts the kube-apiserver is told to use (token webhook URL, issuer) are added.
    let custom = render(&[
        "--set",
        "apiserver.tokenWebhook.url=https://10.96.0.42/authenticate",
        "--set",
        "webhook.exchange.issuer=https://patrol.example.com/tokens",
        "--set",
        "tls.extraDNSNames[0]=patrol.internal",
    ])?;
    let cert = decode(&custom.get("Secret", "patrol-webhook-tls")?["data"]["tls.crt"])?;
    assert_eq!(
        subject_alt_names(&cert)?,
        "DNS:patrol-webhook,DNS:patrol-webhook.patrol-system,DNS:patrol-webhook.patrol-system.svc,\
         DNS:patrol-webhook.patrol-system.svc.cluster.local,DNS:patrol.example.com,DNS:patrol.internal,IPAddress:10.96.0.42"
    );

    // Selectors: further limits are added to, never replace, the release-namespace exclusion.
    let m = render(&[
        "--set",
        "admission.namespaceSelector.matchLabels.team=a",
        "--set",
        "admission.policyObjectSelector.matchLabels.tier=org",
        "--set",
        "admission.timeoutSeconds=3",
    ])?;
    let validating = m.get("ValidatingWebhookConfiguration", "patrol")?;
    assert_eq!(
        validating["webhooks"][0]["namespaceSelector"],
        json!({"matchLabels": {"team": "a"}, "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NAMESPACE]}]})
    );
    assert_eq!(
        validating["webhooks"][1]["objectSelector"],
        json!({"matchLabels": {"tier": "org"}})
    );
    assert_eq!(validating["webhooks"][1]["timeoutSeconds"], 3);
    assert!(
        validating["webhooks"][1].get("namespaceSelector").is_none(),
        "TokenPolicies are cluster-scoped"
    );
    Ok(())
}

#[test]
fn deployments_are_restricted_and_highly_available() -> Result<()> {
    let m = render(&[])?;
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    let version = app_version()?;
    for component in ["operator", "webhook"] {
        let name = format!("patrol-{component}");
        let deployment = m.get("Deployment", &name)?;
        assert_eq!(deployment["spec"]["replicas"], 2, "{name} replicas");
        let selector = &deployment["spec"]["selector"]["matchLabels"];
        assert_eq!(selector["app.kubernetes.io/component"], component);
        let template = &deployment["spec"]["template"];
        for (key, value) in selector.as_object().context("selector")? {
            assert_eq!(
                &template["metadata"]["labels"][key], value,
                "{name}: pod labels do not match the selector"
            );
        }
        let pod = &template["spec"];
        assert_eq!(pod["serviceAccountName"], name);
        assert_eq!(pod["automountServiceAccountToken"], true);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"],
            json!({"type": "RuntimeDefault"})
        );
        let containers = pod["containers"].as_array().context("containers")?;
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        assert_eq!(c["securityContext"], restricted, "{name} securityContext");
        assert_eq!(
            c["image"],
            format!("ghcr.io/patrol-dev/patrol-{component}:{version}")
        );
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][resource].is_string(),
                    "{name} lacks resources.{kind}.{resource}"
                );
            }
        }
        assert_eq!(
            m.get("ServiceAccount", &name)?["automountServiceAccountToken"],
            false
        );
    }

    let operator =
        &m.get("Deployment", "patrol-operator")?["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = operator["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arg in [
        "--metrics-addr=0.0.0.0:8080",
        "--leader-election=true",
        "--lease-name=patrol-operator",
        "--lease-duration-seconds=15",
        "--require-owner-attestation=true",
        "--owner-attestation-secret=patrol-owner-attestation",
    ] {
        assert!(args.contains(&arg), "operator args {args:?} lack {arg}");
    }
    assert_eq!(
        operator["env"],
        json!([
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ])
    );
    assert_eq!(
        operator["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        operator["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    // /readyz is leader-only, which would keep a standby replica unready forever.
    assert_eq!(
        operator["readinessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );

    let webhook_pod = &m.get("Deployment", "patrol-webhook")?["spec"]["template"]["spec"];
    let webhook = &webhook_pod["containers"][0];
    let args: Vec<&str> = webhook["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arg in [
        "--listen=0.0.0.0:8443",
        "--namespace=patrol-system",
        "--tls-cert=/etc/patrol/tls/tls.crt",
        "--tls-key=/etc/patrol/tls/tls.key",
        "--scope-group-prefix=patrol:scope:",
        "--issuer=https://patrol-webhook.patrol-system.svc",
        "--signing-keys-secret=patrol-signing-keys",
        "--owner-attestation-secret=patrol-owner-attestation",
    ] {
        assert!(args.contains(&arg), "webhook args {args:?} lack {arg}");
    }
    assert_eq!(
        webhook["ports"],
        json!([{"name": "https", "containerPort": 8443, "protocol": "TCP"}])
    );
    assert_eq!(
        webhook["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "https", "scheme": "HTTPS"})
    );
    assert_eq!(
        webhook["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "https", "scheme": "HTTPS"})
    );
    assert_eq!(
        webhook["volumeMounts"],
        json!([{"name": "tls", "mountPath": "/etc/patrol/tls", "readOnly": true}])
    );
    assert_eq!(
        webhook_pod["volumes"][0]["secret"]["secretName"],
        "patrol-webhook-tls"
    );

    let pdb = m.get("PodDisruptionBudget", "patrol-webhook")?;
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let webhook_selector =
        &m.get("Deployment", "patrol-webhook")?["spec"]["selector"]["matchLabels"];
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], webhook_selector);
    let service = m.get("Service", "patrol-webhook")?;
    assert_eq!(&service["spec"]["selector"], webhook_selector);
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}])
    );
    let metrics = m.get("Service", "patrol-operator-metrics")?;
    assert_eq!(
        &metrics["spec"]["selector"],
        &m.get("Deployment", "patrol-operator")?["spec"]["selector"]["matchLabels"]
    );

    // One replica: no PDB (it would block every drain).
    let single = render(&["--set", "webhook.replicas=1"])?;
    assert!(single.all("PodDisruptionBudget").is_empty());
    // No leader election: no flag for it and no Lease permissions.
    let solo = render(&[
        "--set",
        "operator.leaderElection.enabled=false",
        "--set",
        "operator.replicas=1",
    ])?;
    assert!(
        solo.all("Role")
            .iter()
            .all(|r| r["metadata"]["name"] != "patrol-operator")
    );
    let args = &solo.get("Deployment", "patrol-operator")?["spec"]["template"]["spec"]["containers"]
        [0]["args"];
    assert!(
        args.as_array()
            .context("args")?
            .iter()
            .any(|a| a == "--leader-election=false")
    );
    assert!(!args.to_string().contains("--lease-name"));
    Ok(())
}

#[test]
fn crds_toggle_and_keep_policy() -> Result<()> {
    let m = render(&[])?;
    let crds = m.all("CustomResourceDefinition");
    assert_eq!(crds.len(), 4);
    for crd in &crds {
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"],
            "keep"
        );
        // Only metadata is added: the rest is the generated CRD itself.
        let name = crd["metadata"]["name"].as_str().context("name")?;
        let file = repo_root().join(format!(
            "crds/generated/patrol.dev_{}.yaml",
            name.trim_end_matches(".patrol.dev")
        ));
        let generated: Value = serde_yaml::from_str(&std::fs::read_to_string(&file)?)?;
        let mut rendered = (*crd).clone();
        let meta = rendered["metadata"].as_object_mut().context("metadata")?;
        meta.remove("labels");
        meta.remove("annotations");
        assert_eq!(
            rendered,
            generated,
            "rendered {name} differs from {}",
            file.display()
        );
    }
    assert!(
        render(&["--set", "crds.install=false"])?
            .all("CustomResourceDefinition")
            .is_empty()
    );
    let unkept = render(&["--set", "crds.keep=false"])?;
    assert!(
        unkept
            .all("CustomResourceDefinition")
            .iter()
            .all(|c| c["metadata"]["annotations"].is_null())
    );
    Ok(())
}

#[test]
fn cert_manager_replaces_the_self_managed_ca() -> Result<()> {
    let m = render(&["--set", "tls.certManager.enabled=true"])?;
    assert!(
        m.all("Secret").is_empty(),
        "no generated key material with cert-manager: {:?}",
        m.names()
    );
    for (kind, name) in [
        ("Issuer", "patrol-webhook-selfsigned"),
        ("Certificate", "patrol-webhook-ca"),
        ("Issuer", "patrol-webhook-ca"),
        ("Certificate", "patrol-webhook-tls"),
    ] {
        m.get(kind, name)?;
    }
    let serving = m.get("Certificate", "patrol-webhook-tls")?;
    assert_eq!(serving["spec"]["secretName"], "patrol-webhook-tls");
    assert_eq!(
        serving["spec"]["issuerRef"],
        json!({"name": "patrol-webhook-ca", "kind": "Issuer", "group": "cert-manager.io"})
    );
    assert!(
        serving["spec"]["dnsNames"]
            .as_array()
            .context("dnsNames")?
            .contains(&json!("patrol-webhook.patrol-system.svc"))
    );
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let config = m.get(kind, "patrol")?;
        assert_eq!(
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "patrol-system/patrol-webhook-tls"
        );
        for hook in config["webhooks"].as_array().context("webhooks")? {
            assert!(
                hook["clientConfig"].get("caBundle").is_none(),
                "{kind}: cainjector owns caBundle"
            );
        }
    }
    // The webhook mounts the same Secret either way.
    let pod = &m.get("Deployment", "patrol-webhook")?["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "patrol-webhook-tls"
    );

    // An existing issuer: only the serving Certificate, issued by it.
    let m = render(&[
        "--set",
        "tls.certManager.enabled=true",
        "--set",
        "tls.certManager.issuerRef.name=corp-ca",
        "--set",
        "tls.certManager.issuerRef.kind=ClusterIssuer",
    ])?;
    assert!(m.all("Issuer").is_empty());
    assert_eq!(m.all("Certificate").len(), 1);
    assert_eq!(
        m.get("Certificate", "patrol-webhook-tls")?["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    Ok(())
}

#[test]
fn optional_objects_are_off_by_default() -> Result<()> {
    let m = render(&[])?;
    assert!(m.all("ServiceMonitor").is_empty() && m.all("NetworkPolicy").is_empty());
    let m = render(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
    ])?;
    assert_eq!(m.all("ServiceMonitor").len(), 2);
    let webhook = m.get("ServiceMonitor", "patrol-webhook")?;
    assert_eq!(webhook["spec"]["endpoints"][0]["scheme"], "https");
    assert_eq!(
        webhook["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"],
        json!({"name": "patrol-webhook-tls", "key": "ca.crt"})
    );
    let policy = m.get("NetworkPolicy", "patrol-webhook")?;
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{"ports": [{"port": "https", "protocol": "TCP"}]}])
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Against the real kube-apiserver.

/// A Helm release that is uninstalled when dropped (also when the test fails), so its
/// cluster-scoped objects never outlive the test.
struct Release {
    helm: Helm,
    name: String,
    namespace: String,
    installed: bool,
}

impl Release {
    fn uninstall(&mut self) -> Result<()> {
        self.installed = false;
        self.helm.ok(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            "60s",
        ])?;
        Ok(())
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.installed {
            let _ = self
                .helm
                .run(&["uninstall", &self.name, "--namespace", &self.namespace]);
        }
    }
}

fn tempdir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("patrol-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn can_i(cluster: &TestCluster, user: &str, args: &[&str]) -> Result<bool> {
    let out = cluster
        .kubectl()
        .args(["auth", "can-i", "--as", user])
        .args(args)
        .output()?;
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!(
            "kubectl auth can-i {args:?}: {other:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Replaces `--flag=...` in a container's args (clap refuses a flag given twice).
fn with_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    let prefix = format!("{flag}=");
    args.retain(|a| !a.starts_with(&prefix));
    args.push(format!("{flag}={value}"));
}

fn container_args(deployment: &Value) -> Result<Vec<String>> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .context("no args")?
        .iter()
        .map(|a| a.as_str().map(str::to_owned).context("arg is not a string"))
        .collect()
}

/// HTTPS to the local webhook as the kube-apiserver would reach it: by the Service's DNS
/// name (resolved to loopback), trusting only the chart's CA.
async fn webhook_request(
    ca: &Path,
    host: &str,
    port: u16,
    path: &str,
    body: Option<(&str, &str)>,
) -> Result<(u16, String)> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(ca)
    .args(["--resolve", &format!("{host}:{port}:127.0.0.1")]);
    if let Some((content_type, _)) = body {
        cmd.args([
            "-X",
            "POST",
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
            "@-",
        ]);
    }
    cmd.arg(format!("https://{host}:{port}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin
        .write_all(body.map(|(_, b)| b).unwrap_or_default().as_bytes())
        .await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    ensure!(
        out.status.success(),
        "curl {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text.rsplit_once('\n').context("no status line")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

fn pod_from(deployment: &Value, namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": deployment["spec"]["template"]["spec"],
    })
}

#[tokio::test]
async fn installs_into_the_apiserver_and_runs_under_its_service_accounts() -> Result<()> {
    let started = Instant::now();
    let cluster = TestCluster::shared()?;
    // The shared CRDs belong to the test harness (server-side apply), so the release leaves
    // them alone (crds.install=false); the CRD templates still go through the server-side
    // dry run below.
    cluster.install_crds().await?;
    let ns = TestNamespace::create(cluster, "chart").await?;
    let pats_ns = TestNamespace::create(cluster, "chart-pats").await?;
    let release = format!("patrol-e2e-{}", std::process::id());
    let helm = Helm::for_cluster(cluster)?;
    let dir = tempdir("chart-install")?;

    // Admission configurations that select nothing: every other test (and process) on this
    // shared apiserver keeps creating tokens while they exist, since the webhook Service
    // has no endpoints without a kubelet.
    let values = dir.join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "crds:\n  install: false\nadmission:\n  namespaceSelector:\n    matchLabels:\n      patrol.dev/chart-e2e: {release}\n\
             \x20 policyObjectSelector:\n    matchLabels:\n      patrol.dev/chart-e2e: {release}\n"
        ),
    )?;
    let values_arg = values.to_str().context("path")?;

    // 1. Server-side dry run of everything, CRDs included.
    let rendered = helm.template(
        &release,
        &ns.name,
        &["-f", values_arg, "--set", "crds.install=true"],
    )?;
    let manifest = dir.join("rendered.yaml");
    std::fs::write(&manifest, rendered.to_yaml()?)?;
    let dry = cluster
        .kubectl()
        .args(["apply", "--dry-run=server", "-f"])
        .arg(&manifest)
        .output()?;
    ensure!(
        dry.status.success(),
        "server-side dry run refused the chart:\n{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let accepted = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(
        accepted,
        rendered.docs.len(),
        "{}",
        String::from_utf8_lossy(&dry.stdout)
    );

    // 2. The real install.
    let chart = chart_dir();
    helm.ok(&[
        "install",
        &release,
        chart.to_str().context("chart")?,
        "--namespace",
        &ns.name,
        "-f",
        values_arg,
    ])?;
    let mut installed = Release {
        helm: helm.clone(),
        name: release.clone(),
        namespace: ns.name.clone(),
        installed: true,
    };
    let live =
        Manifest::parse(&helm.ok(&["get", "manifest", &release, "--namespace", &ns.name])?)?;
    assert!(live.all("CustomResourceDefinition").is_empty());
    let live_file = dir.join("live.yaml");
    std::fs::write(&live_file, live.to_yaml()?)?;
    let got = cluster
        .kubectl()
        .args(["get", "-o", "name", "-f"])
        .arg(&live_file)
        .output()?;
    ensure!(
        got.status.success(),
        "installed objects missing: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).lines().count(),
        live.docs.len()
    );
    println!(
        "installed {} objects in {:?}",
        live.docs.len(),
        started.elapsed()
    );

    // 3. Pods made from the Deployments pass the `restricted` Pod Security level (a server
    // dry run: no kubelet needed), and one without the securityContext does not.
    cluster.kubectl_ok(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
    ])?;
    let operator_name = format!("{release}-operator");
    let webhook_name = format!("{release}-webhook");
    for name in [&operator_name, &webhook_name] {
        let deployment: Value = serde_json::from_str(&cluster.kubectl_ok(&[
            "get",
            "deployment",
            name,
            "-n",
            &ns.name,
            "-o",
            "json",
        ])?)?;
        let pod = pod_from(&deployment, &ns.name, &format!("{name}-psa"));
        let out =
            cluster.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &pod.to_string())?;
        ensure!(
            out.status.success(),
            "{name}'s pod is not restricted: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut loose = pod.clone();
        loose["spec"]["securityContext"] = json!({});
        loose["spec"]["containers"][0]["securityContext"] = json!({});
        let out = cluster.kubectl_stdin(
            &["create", "--dry-run=server", "-f", "-"],
            &loose.to_string(),
        )?;
        assert!(
            !out.status.success(),
            "the restricted level is not enforced in {}",
            ns.name
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("violates PodSecurity"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // 4. What the ServiceAccounts must not do (and a few things they must).
    let operator_user = format!("system:serviceaccount:{}:{operator_name}", ns.name);
    let webhook_user = format!("system:serviceaccount:{}:{webhook_name}", ns.name);
    let other = pats_ns.name.as_str();
    let mine = ns.name.as_str();
    let lease = format!("leases/{operator_name}");
    let signing = format!("secrets/{release}-signing-keys");
    for (user, args, want) in [
        // RBAC lets the webhook delete Secrets (credential leases and bindings) anywhere;
        // the secret-write guard narrows that to those two kinds (checked below).
        (&webhook_user, vec!["delete", "secrets", "-n", other], true),
        (&webhook_user, vec!["list", "secrets", "-n", other], false),
        (&webhook_user, vec!["get", "secrets", "-n", mine], true),
        (&webhook_user, vec!["update", &signing, "-n", mine], true),
        (&webhook_user, vec!["patch", &signing, "-n", mine], false),
        (
            &webhook_user,
            vec!["update", "secrets/something-else", "-n", mine],
            false,
        ),
        (&webhook_user, vec!["delete", &signing, "-n", mine], true),
        (
            &webhook_user,
            vec!["patch", "personalaccesstokens", "-n", other],
            false,
        ),
        (
            &webhook_user,
            vec![
                "patch",
                "personalaccesstokens",
                "--subresource",
                "status",
                "-n",
                other,
            ],
            true,
        ),
        (
            &webhook_user,
            vec!["list", "personalaccesstokens", "-A"],
            false,
        ),
        (&webhook_user, vec!["create", "subjectaccessreviews"], true),
        (&webhook_user, vec!["create", "pods", "-n", mine], false),
        (
            &operator_user,
            vec!["list", "personalaccesstokens", "-A"],
            true,
        ),
        (
            &operator_user,
            vec!["update", "personalaccesstokens", "-n", other],
            false,
        ),
        (
            &operator_user,
            vec!["delete", "personalaccesstokens", "-n", other],
            false,
        ),
        (
            &operator_user,
            vec!["update", "secrets", "-n", other],
            false,
        ),
        (&operator_user, vec!["create", "pods", "-n", other], false),
        (
            &operator_user,
            vec!["patch", "tokenpolicies", "--subresource", "status"],
            true,
        ),
        (&operator_user, vec!["delete", "tokenpolicies"], false),
        (&operator_user, vec!["get", &lease, "-n", mine], true),
        (
            &operator_user,
            vec!["get", "leases/someone-elses", "-n", mine],
            false,
        ),
        (&operator_user, vec!["create", "leases", "-n", other], false),
        (
            &operator_user,
            vec![
                "create",
                "serviceaccounts",
                "--subresource",
                "token",
                "-n",
                other,
            ],
            false,
        ),
    ] {
        assert_eq!(can_i(cluster, user, &args)?, want, "can {user} {args:?}?");
    }

    println!(
        "Pod Security and can-i checks done at {:?}",
        started.elapsed()
    );
    // ServiceAccount tokens, in kubeconfigs holding nothing else.
    let mut kubeconfigs = Vec::new();
    for name in [&operator_name, &webhook_name] {
        let token =
            cluster.kubectl_ok(&["create", "token", name, "-n", &ns.name, "--duration", "2h"])?;
        let path = dir.join(format!("{name}.kubeconfig"));
        cluster.bearer_kubeconfig(&path, token.trim())?;
        kubeconfigs.push(path);
    }
    let (operator_kubeconfig, webhook_kubeconfig) =
        (kubeconfigs[0].clone(), kubeconfigs[1].clone());

    // 5. The secret-write guard refuses what RBAC allows but Patrol never does (policies
    // reach the apiserver's admission within moments of their creation; server-side dry
    // runs are authorized and admitted like real requests, and leave nothing behind).
    eventually(Duration::from_secs(20), || async {
        let out = cluster.kubectl_with(
            &operator_kubeconfig,
            &[
                "create",
                "secret",
                "generic",
                "not-a-token",
                "-n",
                other,
                "--from-literal=a=b",
                "--dry-run=server",
            ],
        )?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("patrol-operator may write only"),
            "operator wrote a stray Secret: {err}"
        );
        let out = cluster.kubectl_with(
            &webhook_kubeconfig,
            &[
                "create",
                "secret",
                "generic",
                "not-the-signing-key",
                "-n",
                mine,
                "--from-literal=a=b",
                "--dry-run=server",
            ],
        )?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("may write only its signing-key Secret"),
            "webhook wrote a stray Secret: {err}"
        );
        Ok(())
    })
    .await?;
    let signing_name = format!("{release}-signing-keys");
    let out = cluster.kubectl_with(
        &webhook_kubeconfig,
        &[
            "create",
            "secret",
            "generic",
            &signing_name,
            "--type=patrol.dev/signing-keys",
            "-n",
            mine,
            "--from-literal=a=b",
            "--dry-run=server",
        ],
    )?;
    ensure!(
        out.status.success(),
        "the webhook may create its signing-key Secret: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A credential binding may be created anywhere, but empty; nothing else may be deleted.
    let binding = |extra: &[&str]| -> Result<std::process::Output> {
        let mut args = vec![
            "create",
            "secret",
            "generic",
            "patrol-binding-x",
            "--type=patrol.dev/credential-binding",
            "-n",
            other,
            "--dry-run=server",
        ];
        args.extend_from_slice(extra);
        let out = cluster.kubectl_with(&webhook_kubeconfig, &args)?;
        Ok(out)
    };
    let labelled = binding(&[])?;
    ensure!(
        !labelled.status.success(),
        "a binding without its label was admitted"
    );
    let out = cluster.kubectl_with(
        &webhook_kubeconfig,
        &[
            "delete",
            "secret",
            &format!("{webhook_name}-tls"),
            "-n",
            mine,
            "--dry-run=server",
        ],
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("may write only"),
        "the webhook deleted a Secret that is no credential: {err}"
    );

    // 6. The operator, with the Deployment's own flags and downward-API environment,
    // under its ServiceAccount. Scoped to the test's namespace so it never reconciles other
    // tests' tokens on this shared apiserver; the can-i checks above cover the cluster-wide
    // list it would otherwise make.
    let client = cluster.client().await?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns.name);
    let operator_deployment = serde_json::to_value(deployments.get(&operator_name).await?)?;
    let mut args = container_args(&operator_deployment)?;
    let metrics_port = process::free_port()?;
    with_flag(
        &mut args,
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    );
    with_flag(&mut args, "--watch-namespace", other);
    let identity = format!("{operator_name}-7d9f-e2e");
    let env = |kubeconfig: &Path| {
        vec![
            ("KUBECONFIG".to_owned(), kubeconfig.display().to_string()),
            ("POD_NAMESPACE".to_owned(), ns.name.clone()),
            ("POD_NAME".to_owned(), identity.clone()),
        ]
    };
    println!("secret-write guard checked at {:?}", started.elapsed());
    let mut operator = Process::spawn(
        cluster,
        "chart-operator",
        &process::binary("patrol-operator")?,
        &args,
        &env(&operator_kubeconfig),
    )?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    eventually(Duration::from_secs(30), || async {
        let lease = leases.get(&operator_name).await?;
        let holder = lease.spec.and_then(|s| s.holder_identity);
        ensure!(
            holder.as_deref() == Some(identity.as_str()),
            "lease held by {holder:?}"
        );
        Ok(())
    })
    .await
    .with_context(|| format!("operator did not lead; log:\n{}", operator.output()))?;

    println!("operator leads at {:?}", started.elapsed());
    // A token whose owner admission never saw (this namespace is outside the webhooks'
    // selector): the operator waits for the attestation key, then refuses it.
    let pats: Api<PersonalAccessToken> = Api::namespaced(client.clone(), other);
    let unvetted: PersonalAccessToken = serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": "unvetted"},
        "spec": {"displayName": "Not vetted", "owner": {"username": "mallory", "groups": ["system:masters"]}},
    }))?;
    pats.create(&PostParams::default(), &unvetted).await?;
    eventually(Duration::from_secs(30), || async {
        let reason = ready_reason(&pats.get("unvetted").await?);
        ensure!(
            reason == "OwnerVettingUnavailable",
            "Ready reason {reason:?}"
        );
        Ok(())
    })
    .await
    .with_context(|| format!("operator log:\n{}", operator.output()))?;

    // 6b. The token service, with the Deployment's flags and the chart's certificate, under
    // its ServiceAccount, on a port of its own.
    let webhook_deployment = serde_json::to_value(deployments.get(&webhook_name).await?)?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), mine);
    let tls = secrets
        .get(&format!("{webhook_name}-tls"))
        .await?
        .data
        .context("TLS Secret has no data")?;
    let (cert, key, ca) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    for (file, field) in [(&cert, "tls.crt"), (&key, "tls.key"), (&ca, "ca.crt")] {
        std::fs::write(
            file,
            &tls.get(field).with_context(|| format!("no {field}"))?.0,
        )?;
    }
    let port = process::free_port()?;
    let mut args = container_args(&webhook_deployment)?;
    with_flag(&mut args, "--listen", &format!("127.0.0.1:{port}"));
    with_flag(&mut args, "--tls-cert", &cert.display().to_string());
    with_flag(&mut args, "--tls-key", &key.display().to_string());
    with_flag(&mut args, "--shutdown-grace", "1s");
    let mut webhook = Process::spawn(
        cluster,
        "chart-webhook",
        &process::binary("patrol-webhook")?,
        &args,
        &env(&webhook_kubeconfig),
    )?;
    let host = format!("{webhook_name}.{mine}.svc");
    eventually(Duration::from_secs(60), || async {
        let (code, body) = webhook_request(&ca, &host, port, "/readyz", None).await?;
        ensure!(code == 200, "/readyz answered {code}: {body}");
        Ok(())
    })
    .await
    .with_context(|| format!("webhook never ready; log:\n{}", webhook.output()))?;

    println!(
        "webhook ready under its ServiceAccount at {:?}",
        started.elapsed()
    );

    // The webhook created the attestation key under the secret-write guard; the operator
    // reads it and refuses the unvetted token for good.
    let key_secret = secrets.get(&format!("{release}-owner-attestation")).await?;
    assert_eq!(key_secret.type_.as_deref(), Some(attestation::SECRET_TYPE));
    let key = attestation::key_of(&key_secret).context("no usable attestation key")?;
    let failed = wait_for_phase(&pats, "unvetted", Phase::Failed, Duration::from_secs(30))
        .await
        .with_context(|| format!("operator log:\n{}", operator.output()))?;
    assert_eq!(ready_reason(&failed), "OwnerNotVetted");
    assert!(
        records_for(cluster, mine, &failed.uid().context("uid")?)
            .await?
            .is_empty()
    );

    // A token, issued under the chart's RBAC and the secret-write guard; a workload
    // ServiceAccount may act with it in token exchange.
    cluster.kubectl_ok(&["create", "serviceaccount", "runner", "-n", other])?;
    let runner = format!("system:serviceaccount:{other}:runner");
    // Admission does not reach this namespace either, so the test attests the owner as the
    // mutating webhook would, with the key the webhook made.
    let mut pat: PersonalAccessToken = serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": "chart"},
        "spec": {"displayName": "Chart e2e", "owner": {"username": "alice", "groups": ["dev"]}, "scopes": ["read:pods"],
                 "expiration": {"ttl": "1h"},
                 "exchange": {"audiences": [KUBE_AUDIENCE], "allowedActors": [&runner]}},
    }))?;
    let vetted = attestation::attest(
        &key,
        &attestation::Vetted {
            namespace: other,
            naming: attestation::Naming::Name("chart".into()),
            owner: pat.spec.owner.as_ref().context("owner")?,
            scopes: &pat.spec.scopes,
        },
        chrono::Utc::now(),
    );
    pat.metadata.annotations = Some([(attestation::ANNOTATION.to_owned(), vetted)].into());
    pats.create(&PostParams::default(), &pat).await?;
    let active = wait_for_phase(&pats, "chart", Phase::Active, Duration::from_secs(30))
        .await
        .with_context(|| format!("operator log:\n{}", operator.output()))?;
    let uid = active.uid().context("uid")?;
    println!(
        "token Active under the operator's ServiceAccount at {:?}",
        started.elapsed()
    );
    let token = eventually(Duration::from_secs(10), || async {
        delivered_token(cluster, other, "chart-token")
            .await?
            .context("no delivered Secret yet")
    })
    .await?;
    assert_eq!(
        records_for(cluster, mine, &uid).await?.len(),
        1,
        "one token record in the release namespace"
    );
    let events = cluster.kubectl_ok(&["get", "events", "-n", other, "-o", "json"])?;
    assert!(
        events.contains("\"Issued\""),
        "the operator may publish events: {events}"
    );

    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}).to_string();
    let (code, body) =
        webhook_request(&ca, &host, port, "/authenticate", Some((JSON, &review))).await?;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body)?;
    assert_eq!(answer["status"]["authenticated"], true, "{answer}");
    assert_eq!(answer["status"]["user"]["username"], "alice");
    // status.lastUsedAt written back under the webhook's account.
    eventually(Duration::from_secs(15), || async {
        let pat = pats.get("chart").await?;
        ensure!(
            pat.status.and_then(|s| s.last_used_at).is_some(),
            "no lastUsedAt yet"
        );
        Ok(())
    })
    .await
    .with_context(|| format!("webhook log:\n{}", webhook.output()))?;

    // 7. Token exchange with an actor: the signing keys are created under the secret-write
    // guard, and the actor's ServiceAccount token is verified by a TokenReview the webhook
    // makes under its account.
    let runner_token = cluster
        .kubectl_ok(&["create", "token", "runner", "-n", other])?
        .trim()
        .to_owned();
    let request = form(&[
        ("grant_type", GRANT),
        ("subject_token", &token),
        ("subject_token_type", TT_ACCESS),
        ("audience", KUBE_AUDIENCE),
        ("actor_token", &runner_token),
        ("actor_token_type", TT_JWT),
    ]);
    let exchanged = eventually(Duration::from_secs(30), || async {
        let (code, body) =
            webhook_request(&ca, &host, port, "/oauth2/token", Some((FORM, &request))).await?;
        ensure!(code == 200, "/oauth2/token answered {code}: {body}");
        Ok(serde_json::from_str::<Value>(&body)?)
    })
    .await
    .with_context(|| format!("webhook log:\n{}", webhook.output()))?;
    let jwt = exchanged["access_token"]
        .as_str()
        .context("no access_token")?
        .to_owned();
    let claims = jwt_claims(&jwt)?;
    assert_eq!(
        claims["iss"],
        format!("https://{webhook_name}.{mine}.svc"),
        "the chart's issuer"
    );
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], KUBE_AUDIENCE);
    assert_eq!(claims["act"], json!({"sub": runner}));
    let keys = secrets.get(&format!("{release}-signing-keys")).await?;
    assert_eq!(keys.type_.as_deref(), Some("patrol.dev/signing-keys"));
    println!("token exchanged at {:?}", started.elapsed());

    // 7b. The seed platform's client with the chart's defaults: discovery, then an
    // exchange without audience asking for `credentials`, from a fresh PAT that holds that
    // scope and names a ServiceAccount. The lease (release namespace) and the token's
    // binding Secret (the ServiceAccount's) are written under the chart's RBAC and the
    // secret-write guard, and removed by the operator when the PAT is revoked.
    cluster.kubectl_ok(&["create", "serviceaccount", "deployer", "-n", other])?;
    cluster.kubectl_ok(&[
        "create",
        "role",
        "impersonate-deployer",
        "--verb=impersonate",
        "--resource=serviceaccounts",
        "--resource-name=deployer",
        "-n",
        other,
    ])?;
    cluster.kubectl_ok(&[
        "create",
        "rolebinding",
        "impersonate-deployer",
        "--role=impersonate-deployer",
        "--user=alice",
        "-n",
        other,
    ])?;
    let provider = format!("chart-deployer-{}", std::process::id());
    let providers: Api<CredentialProvider> = Api::all(client.clone());
    providers
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "patrol.dev/v1alpha1", "kind": "CredentialProvider",
                "metadata": {"name": provider},
                "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other}},
                         "serviceAccount": {}},
            }))?,
        )
        .await?;
    let mut seed: PersonalAccessToken = serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": "seed"},
        "spec": {"displayName": "Seed CLI", "owner": {"username": "alice", "groups": ["dev"]},
                 "scopes": ["credentials"],
                 "credentials": {"serviceAccount": {"name": "deployer"}}},
    }))?;
    let vetted = attestation::attest(
        &key,
        &attestation::Vetted {
            namespace: other,
            naming: attestation::Naming::Name("seed".into()),
            owner: seed.spec.owner.as_ref().context("owner")?,
            scopes: &seed.spec.scopes,
        },
        chrono::Utc::now(),
    );
    seed.metadata.annotations = Some([(attestation::ANNOTATION.to_owned(), vetted)].into());
    pats.create(&PostParams::default(), &seed).await?;
    wait_for_phase(&pats, "seed", Phase::Active, Duration::from_secs(30))
        .await
        .with_context(|| format!("operator log:\n{}", operator.output()))?;
    let seed_token = eventually(Duration::from_secs(10), || async {
        delivered_token(cluster, other, "seed-token")
            .await?
            .context("no delivered Secret yet")
    })
    .await?;
    let (code, body) =
        webhook_request(&ca, &host, port, "/.well-known/openid-configuration", None).await?;
    assert_eq!(code, 200, "{body}");
    let discovery: Value = serde_json::from_str(&body)?;
    assert_eq!(
        discovery["patrol_default_audience"], KUBE_AUDIENCE,
        "the chart's default"
    );
    let seed_request = form(&[
        ("grant_type", GRANT),
        ("subject_token", &seed_token),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:pat"),
        ("client_id", "seed-cli"),
        ("scope", "credentials"),
    ]);
    let seeded = eventually(Duration::from_secs(30), || async {
        let (code, body) = webhook_request(
            &ca,
            &host,
            port,
            "/oauth2/token",
            Some((FORM, &seed_request)),
        )
        .await?;
        ensure!(code == 200, "/oauth2/token answered {code}: {body}");
        let answer: Value = serde_json::from_str(&body)?;
        ensure!(
            answer["credentials"][&provider]["token"].is_string(),
            "no credential yet: {body}"
        );
        Ok(answer)
    })
    .await
    .with_context(|| format!("webhook log:\n{}", webhook.output()))?;
    assert_eq!(
        jwt_claims(seeded["access_token"].as_str().context("no access_token")?)?["aud"],
        KUBE_AUDIENCE
    );
    let sa_token = seeded["credentials"][&provider]["token"]
        .as_str()
        .context("no token")?
        .to_owned();
    let sa_kubeconfig = dir.join("deployer.kubeconfig");
    cluster.bearer_kubeconfig(&sa_kubeconfig, &sa_token)?;
    let whoami = cluster.kubectl_with(&sa_kubeconfig, &["auth", "whoami", "-o", "json"])?;
    ensure!(
        String::from_utf8_lossy(&whoami.stdout)
            .contains(&format!("system:serviceaccount:{other}:deployer")),
        "the credential is the ServiceAccount's: {}",
        String::from_utf8_lossy(&whoami.stderr)
    );
    pats.patch(
        "seed",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"revoked": true}})),
    )
    .await?;
    let bindings: Api<Secret> = Api::namespaced(client.clone(), other);
    eventually(Duration::from_secs(10), || async {
        let left = bindings
            .list(&ListParams::default().labels("patrol.dev/component=credential-binding"))
            .await?
            .items;
        ensure!(left.is_empty(), "the binding Secret remains");
        let leases = secrets
            .list(&ListParams::default().labels("patrol.dev/component=credential-lease"))
            .await?
            .items;
        ensure!(leases.is_empty(), "the lease remains");
        Ok(())
    })
    .await
    .with_context(|| format!("operator log:\n{}", operator.output()))?;
    providers
        .delete(&provider, &DeleteParams::default())
        .await?;
    println!(
        "seed client flow with credentials at {:?}",
        started.elapsed()
    );

    // 8. Revoke: the operator removes record and Secret, the token service stops accepting.
    pats.patch(
        "chart",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"revoked": true}})),
    )
    .await?;
    wait_for_phase(&pats, "chart", Phase::Revoked, Duration::from_secs(30))
        .await
        .with_context(|| format!("operator log:\n{}", operator.output()))?;
    eventually(Duration::from_secs(10), || async {
        ensure!(
            records_for(cluster, mine, &uid).await?.is_empty(),
            "record still there"
        );
        ensure!(
            delivered_token(cluster, other, "chart-token")
                .await?
                .is_none(),
            "delivered Secret still there"
        );
        let (_, body) =
            webhook_request(&ca, &host, port, "/authenticate", Some((JSON, &review))).await?;
        ensure!(
            serde_json::from_str::<Value>(&body)?["status"]["authenticated"] == false,
            "still accepted: {body}"
        );
        Ok(())
    })
    .await?;
    // Deleting it clears the finalizer (a JSON patch under the chart's RBAC).
    pats.delete("chart", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(20), || async {
        ensure!(
            pats.get_opt("chart").await?.is_none(),
            "PersonalAccessToken still there"
        );
        Ok(())
    })
    .await?;

    // Nothing was refused along the way, not even in background tasks.
    for process in [&operator, &webhook] {
        let log = process.output().to_lowercase();
        assert!(
            !log.contains("forbidden"),
            "{} hit a permission it lacks:\n{log}",
            process.name
        );
        assert!(
            !log.contains(&token[20..].to_lowercase()),
            "{} logged the token",
            process.name
        );
        let signature = jwt.rsplit('.').next().unwrap_or_default().to_lowercase();
        assert!(
            !log.contains(&signature),
            "{} logged the exchanged JWT",
            process.name
        );
    }
    operator.kill();
    webhook.kill();

    // 9. Upgrades keep the self-managed certificate (no churn) and the caBundle.
    let before_tls = secrets.get(&format!("{webhook_name}-tls")).await?.data;
    let bundle = |v: &Value| v["webhooks"][0]["clientConfig"]["caBundle"].clone();
    let before_bundle = bundle(&serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "validatingwebhookconfiguration",
        &release,
        "-o",
        "json",
    ])?)?);
    helm.ok(&[
        "upgrade",
        &release,
        chart.to_str().context("chart")?,
        "--namespace",
        mine,
        "-f",
        values_arg,
    ])?;
    assert_eq!(
        secrets.get(&format!("{webhook_name}-tls")).await?.data,
        before_tls,
        "upgrade replaced the serving certificate"
    );
    let after: Value = serde_json::from_str(&cluster.kubectl_ok(&[
        "get",
        "validatingwebhookconfiguration",
        &release,
        "-o",
        "json",
    ])?)?;
    assert_eq!(
        bundle(&after),
        before_bundle,
        "upgrade changed the caBundle"
    );

    // 10. Uninstall removes every object of the release; the CRDs stay.
    installed.uninstall()?;
    let cluster_scoped = [
        ("clusterrole", operator_name.clone()),
        ("clusterrole", webhook_name.clone()),
        ("clusterrolebinding", operator_name.clone()),
        ("validatingwebhookconfiguration", release.clone()),
        ("mutatingwebhookconfiguration", release.clone()),
        (
            "validatingadmissionpolicy",
            format!("{operator_name}-secret-writes"),
        ),
        (
            "validatingadmissionpolicybinding",
            format!("{webhook_name}-secret-writes"),
        ),
    ];
    for (kind, name) in &cluster_scoped {
        let out = cluster.kubectl().args(["get", kind, name]).output()?;
        assert!(
            !out.status.success(),
            "{kind}/{name} survived helm uninstall"
        );
    }
    let out = cluster
        .kubectl()
        .args(["get", "-o", "name", "--ignore-not-found", "-f"])
        .arg(&live_file)
        .output()?;
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "left behind: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    cluster.kubectl_ok(&[
        "get",
        "crd",
        "personalaccesstokens.patrol.dev",
        "tokenpolicies.patrol.dev",
        "tokenscopes.patrol.dev",
    ])?;
    println!(
        "chart install, run under its ServiceAccounts and uninstall took {:?}",
        started.elapsed()
    );
    Ok(())
}

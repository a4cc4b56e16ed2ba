//! Scopes that restrict, enforced by the real kube-apiserver: its structured authorization
//! configuration (hack/cluster.sh) calls Patrol's `/authorize` before RBAC, for requests
//! made with Patrol tokens only.
//!
//! The owner here is a cluster-admin through RBAC (not `system:masters`, which the
//! apiserver lets through before any authorizer runs, and which Patrol refuses as an owner
//! by default), so every refusal below is Patrol's scope, not the owner's rights.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::{core::v1::Pod, rbac::v1::ClusterRoleBinding};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use patrol_api::v1alpha1::{PersonalAccessToken, TokenOwner, TokenScope};
use patrol_e2e::{
    FIELD_MANAGER, TestCluster, TestNamespace, eventually,
    token_service::{TokenService, jwt_claims},
};
use serde_json::json;

/// Serialises the tests of this binary on the one webhook port the apiserver calls.
static WEBHOOK_PORT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ADMIN: &str = "scopes-admin@example.com";
const REQUESTS_TO_AUTHORIZE: &str =
    "patrol_webhook_http_requests_total{route=\"/authorize\",code=\"200\"}";

fn admin() -> TokenOwner {
    TokenOwner {
        username: ADMIN.into(),
        uid: Some("scopes-admin-uid".into()),
        groups: vec!["scopes-admins".into()],
    }
}

/// Cluster-scoped objects this binary creates (idempotent: applied, never removed, since
/// their names are this binary's own).
async fn setup(cluster: &TestCluster, view_namespace: &str) -> Result<()> {
    let client = cluster.client().await?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "e2e-scopes-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ADMIN}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch("e2e-scopes-admin", &params, &Patch::Apply(&binding))
        .await?;
    let scopes: Api<TokenScope> = Api::all(client);
    for (name, spec) in [
        (
            "e2e-scopes-read-pods",
            json!({"scope": "e2e:read-pods", "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}),
        ),
        (
            "e2e-scopes-read-configmaps",
            json!({"scope": "e2e:read-configmaps", "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}),
        ),
        (
            "e2e-scopes-view-one",
            json!({"scope": "e2e:view-one", "clusterRoles": [
                {"name": "view", "namespaces": [view_namespace]}]}),
        ),
    ] {
        let object: TokenScope = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenScope",
            "metadata": {"name": name}, "spec": spec,
        }))?;
        scopes.patch(name, &params, &Patch::Apply(&object)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn scopes_restrict_pats_and_their_jwts_in_the_apiserver() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let mut svc = TokenService::start("scopes", &[]).await?;
    let other = TestNamespace::create(svc.cluster, "scopes-other").await?;
    setup(svc.cluster, &svc.pats.name).await?;
    let ns = svc.pats.name.clone();

    let read_pods = svc
        .issue("read-pods", admin(), &["e2e:read-pods"], None)
        .await?;
    let two = svc
        .issue(
            "pods-and-configmaps",
            admin(),
            &["e2e:read-pods", "e2e:read-configmaps"],
            None,
        )
        .await?;
    let unscoped = svc.issue("everything", admin(), &[], None).await?;
    let undefined = svc
        .issue("undefined", admin(), &["e2e:nobody-defines-this"], None)
        .await?;
    let view_one = svc
        .issue("view-one", admin(), &["e2e:view-one"], None)
        .await?;
    for i in [read_pods, two, unscoped, undefined, view_one] {
        svc.wait_indexed(i).await?;
    }
    let token = svc.token(read_pods).to_owned();

    // The scope permits reading pods, anywhere.
    svc.kubectl_ok_as(&token, &["get", "pods", "-n", &ns], Duration::from_secs(20))
        .await?;
    svc.kubectl_ok_as(&token, &["get", "pods", "-A"], Duration::from_secs(5))
        .await?;
    // Discovery and whoami work for any scoped token.
    let whoami = svc
        .kubectl_ok_as(
            &token,
            &["auth", "whoami", "-o", "json"],
            Duration::from_secs(5),
        )
        .await?;
    ensure!(whoami.contains(ADMIN), "{whoami}");
    // Its owner may do anything; the token may not.
    for args in [
        vec!["get", "secrets", "-n", ns.as_str()],
        vec!["delete", "pod", "web-0", "-n", ns.as_str()],
        vec!["get", "configmaps", "-n", ns.as_str()],
        vec!["get", "nodes"],
    ] {
        let refused = svc.kubectl_refused_as(&token, &args)?;
        println!(
            "read-pods PAT, kubectl {}: {}",
            args.join(" "),
            refused.trim()
        );
        ensure!(
            refused.contains("Forbidden")
                && refused.contains("is limited to scope e2e:read-pods")
                && refused.contains(svc.token_id(read_pods)),
            "kubectl {}: {refused}",
            args.join(" ")
        );
    }

    // Two scopes permit what either does.
    let both = svc.token(two).to_owned();
    for resource in ["pods", "configmaps"] {
        svc.kubectl_ok_as(&both, &["get", resource, "-n", &ns], Duration::from_secs(5))
            .await?;
    }
    svc.kubectl_refused_as(&both, &["get", "secrets", "-n", &ns])?;

    // An unscoped token is the classic PAT: its owner's full rights.
    svc.kubectl_ok_as(
        svc.token(unscoped),
        &["get", "secrets", "-n", &ns],
        Duration::from_secs(5),
    )
    .await?;

    // A scope no TokenScope defines permits nothing, and the refusal says why.
    let refused = svc.kubectl_refused_as(svc.token(undefined), &["get", "pods", "-n", &ns])?;
    ensure!(
        refused.contains("e2e:nobody-defines-this is defined by no TokenScope"),
        "{refused}"
    );

    // A scope that takes a ClusterRole's rules in one namespace.
    let view = svc.token(view_one).to_owned();
    svc.kubectl_ok_as(
        &view,
        &["get", "configmaps", "-n", &ns],
        Duration::from_secs(5),
    )
    .await?;
    svc.kubectl_refused_as(&view, &["get", "configmaps", "-n", &other.name])?;
    svc.kubectl_refused_as(&view, &["get", "secrets", "-n", &ns])?;

    // The JWT exchanged from a scoped PAT carries its scopes and the same limits.
    let jwt = svc.exchange(read_pods, &[]).await?;
    assert_eq!(jwt_claims(&jwt)?["scope"], "e2e:read-pods");
    svc.kubectl_ok_as(&jwt, &["get", "pods", "-n", &ns], Duration::from_secs(60))
        .await?;
    let refused = svc.kubectl_refused_as(&jwt, &["get", "secrets", "-n", &ns])?;
    ensure!(
        refused.contains("is limited to scope e2e:read-pods"),
        "{refused}"
    );
    // A JWT narrowed further is narrower still.
    let narrow = svc
        .exchange(two, &[("scope", "e2e:read-configmaps")])
        .await?;
    svc.kubectl_ok_as(
        &narrow,
        &["get", "configmaps", "-n", &ns],
        Duration::from_secs(5),
    )
    .await?;
    let refused = svc.kubectl_refused_as(&narrow, &["get", "pods", "-n", &ns])?;
    ensure!(
        refused.contains("limited to scope e2e:read-configmaps"),
        "{refused}"
    );
    let wide = svc.exchange(two, &[]).await?;
    svc.kubectl_ok_as(&wide, &["get", "pods", "-n", &ns], Duration::from_secs(5))
        .await?;

    // Requests without a Patrol token never reach the webhook.
    let before = svc.metric(REQUESTS_TO_AUTHORIZE).await?;
    ensure!(
        before > 0.0,
        "the apiserver called /authorize for Patrol tokens"
    );
    for args in [
        vec!["get", "pods", "-n", ns.as_str()],
        vec!["get", "secrets", "-A"],
        vec!["auth", "whoami"],
        vec!["get", "--raw", "/api"],
    ] {
        svc.cluster.kubectl_ok(&args)?;
    }
    let sa_token = svc
        .cluster
        .kubectl_ok(&["create", "token", "default", "-n", &ns])?;
    let out = svc.kubectl_as(sa_token.trim(), &["get", "pods", "-n", &ns])?;
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("Forbidden"),
        "the default ServiceAccount is judged by RBAC alone"
    );
    let after = svc.metric(REQUESTS_TO_AUTHORIZE).await?;
    assert_eq!(
        after, before,
        "admin and ServiceAccount requests must not be sent to Patrol"
    );
    println!("/authorize calls for Patrol tokens: {after}; for others: 0");

    svc.assert_logs_clean(&[&jwt, &narrow, &wide, sa_token.trim()])?;
    Ok(())
}

/// From the revoking write's return to the first refused request, `samples` times.
async fn revocation_latency(
    svc: &mut TokenService,
    label: &str,
    samples: usize,
    jwt: bool,
) -> Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples {
        let i = svc
            .issue(&format!("{label}-{n}"), admin(), &["e2e:read-pods"], None)
            .await?;
        svc.wait_indexed(i).await?;
        let bearer = if jwt {
            svc.exchange(i, &[]).await?
        } else {
            svc.token(i).to_owned()
        };
        let kubeconfig = svc
            .kubeconfig
            .with_file_name(format!("{label}-{n}.kubeconfig"));
        svc.cluster.bearer_kubeconfig(&kubeconfig, &bearer)?;
        let pods: Api<Pod> = Api::namespaced(
            svc.cluster.bearer_client(&kubeconfig).await?,
            &svc.pats.name,
        );
        // In use: the apiserver has it in its authentication cache.
        eventually(Duration::from_secs(60), || async {
            pods.list(&ListParams::default()).await?;
            Ok(())
        })
        .await
        .with_context(|| format!("{label} {n} never worked"))?;
        svc.delete_record(i).await?;
        let revoked = Instant::now();
        loop {
            match pods.list(&ListParams::default()).await {
                Err(kube::Error::Api(e)) if e.code == 403 || e.code == 401 => break,
                _ if revoked.elapsed() > Duration::from_secs(30) => {
                    anyhow::bail!("{label} {n} still works 30s after revocation")
                }
                _ => {}
            }
        }
        latencies.push(revoked.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test]
async fn revoked_tokens_and_their_jwts_are_refused_by_the_apiserver_at_once() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let mut svc = TokenService::start("scopes-revoke", &[]).await?;
    setup(svc.cluster, &svc.pats.name).await?;
    let pat = revocation_latency(&mut svc, "pat", 20, false).await?;
    let jwt = revocation_latency(&mut svc, "jwt", 20, true).await?;
    for (what, l) in [("PAT", &pat), ("JWT", &jwt)] {
        println!(
            "revocation through the apiserver ({what}, {} samples): p50 {:?}, p99 {:?}, max {:?}",
            l.len(),
            percentile(l, 50.0),
            percentile(l, 99.0),
            l[l.len() - 1]
        );
        ensure!(
            percentile(l, 99.0) < Duration::from_secs(1),
            "{what}: p99 {:?} is not under 1s",
            percentile(l, 99.0)
        );
    }
    Ok(())
}

#[tokio::test]
async fn webhook_down_refuses_patrol_tokens_only() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let mut svc = TokenService::start("scopes-down", &[]).await?;
    setup(svc.cluster, &svc.pats.name).await?;
    let ns = svc.pats.name.clone();
    let i = svc.issue("down", admin(), &["e2e:read-pods"], None).await?;
    svc.wait_indexed(i).await?;
    let jwt = svc.exchange(i, &[]).await?;
    svc.kubectl_ok_as(&jwt, &["get", "pods", "-n", &ns], Duration::from_secs(60))
        .await?;

    svc.webhook.kill();
    // The JWT is still authenticated (the apiserver verifies it offline), but nobody can
    // say what it may do: refused (failurePolicy Deny; the apiserver reports the failed
    // call as an internal error).
    let refused = svc.kubectl_refused_as(&jwt, &["get", "pods", "-n", &ns])?;
    println!("JWT with the webhook down: {}", refused.trim());
    ensure!(refused.contains("/authorize"), "{refused}");
    // Everyone else is unaffected.
    svc.cluster.kubectl_ok(&["get", "pods", "-n", &ns])?;
    let sa = svc
        .cluster
        .kubectl_ok(&["create", "token", "default", "-n", &ns])?;
    svc.cluster.kubectl_ok(&[
        "create",
        "rolebinding",
        "default-view",
        "-n",
        &ns,
        "--clusterrole",
        "view",
        &format!("--serviceaccount={ns}:default"),
    ])?;
    eventually(Duration::from_secs(10), || async {
        let out = svc.kubectl_as(sa.trim(), &["get", "pods", "-n", &ns])?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    })
    .await?;

    svc.restart("scopes-down-again", &[]).await?;
    svc.kubectl_ok_as(&jwt, &["get", "pods", "-n", &ns], Duration::from_secs(20))
        .await?;
    Ok(())
}

/// A TokenScope that names neither rules nor ClusterRoles, or a rule mixing resources and
/// URLs, is refused with a message that says what to fix.
#[tokio::test]
async fn invalid_token_scopes_are_refused() -> Result<()> {
    let cluster = TestCluster::shared()?;
    cluster.install_crds().await?;
    let scopes: Api<TokenScope> = Api::all(cluster.client().await?);
    for (spec, want) in [
        (json!({}), "needs rules or clusterRoles"),
        (
            json!({"rules": [{"verbs": ["get"], "resources": ["pods"], "nonResourceURLs": ["/x"]}]}),
            "either resources or nonResourceURLs",
        ),
        (
            json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/x"], "namespaces": ["a"]}]}),
            "apply to resources only",
        ),
        (
            json!({"scope": "bad scope", "rules": [{"verbs": ["get"], "resources": ["pods"]}]}),
            "spec.scope",
        ),
    ] {
        let object: TokenScope = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenScope",
            "metadata": {"name": "e2e-invalid"}, "spec": spec,
        }))?;
        let err = scopes
            .create(&PostParams::default(), &object)
            .await
            .err()
            .with_context(|| format!("{spec} was accepted"))?;
        ensure!(err.to_string().contains(want), "{spec}: {err}");
    }
    let _ = scopes.delete("e2e-invalid", &DeleteParams::default()).await;
    Ok(())
}

/// Registers patrol-webhook (on the token service's port) as the admission webhook for
/// PersonalAccessTokens in `namespace`; removed again when dropped.
struct Admission {
    cluster: &'static TestCluster,
    name: String,
}

impl Admission {
    async fn register(svc: &TokenService, namespace: &str) -> Result<Self> {
        use k8s_openapi::{
            api::admissionregistration::v1::{
                MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
            },
            apimachinery::pkg::apis::meta::v1::LabelSelector,
        };
        use patrol_webhook::admission::config::{
            Endpoint, WebhookConfigOptions, mutating, validating,
        };
        let name = format!("patrol-e2e-scopes-{}", std::process::id());
        let mut options =
            WebhookConfigOptions::new(name.clone(), Endpoint::Url(svc.issuer.clone()));
        options.ca_bundle = Some(std::fs::read(svc.cluster.var("PATROL_CA")?)?);
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"kubernetes.io/metadata.name": namespace}
        }))?;
        options.token_namespace_selector = Some(selector.clone());
        options.policy_object_selector = Some(selector);
        let client = svc.cluster.client().await?;
        let admission = Self {
            cluster: svc.cluster,
            name: name.clone(),
        };
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &mutating(&options))
            .await?;
        Api::<ValidatingWebhookConfiguration>::all(client)
            .create(&PostParams::default(), &validating(&options))
            .await?;
        Ok(admission)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for kind in [
            "mutatingwebhookconfiguration",
            "validatingwebhookconfiguration",
        ] {
            let _ = self
                .cluster
                .kubectl()
                .args(["delete", kind, &self.name, "--ignore-not-found"])
                .output();
        }
    }
}

fn child(name: &str, scopes: &[&str], ttl: Option<&str>) -> Result<PersonalAccessToken> {
    let mut spec = json!({"displayName": format!("minted {name}"), "scopes": scopes});
    if let Some(ttl) = ttl {
        spec["expiration"] = json!({"ttl": ttl});
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": name}, "spec": spec,
    }))?)
}

/// Tokens minting tokens: only a token whose scopes permit creating PersonalAccessTokens
/// may, and what it creates never holds more scopes, a later expiry or its scope groups.
#[tokio::test]
async fn a_token_mints_tokens_only_within_its_own_scopes_and_lifetime() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let mut svc = TokenService::start("scopes-mint", &[]).await?;
    setup(svc.cluster, &svc.pats.name).await?;
    let ns = svc.pats.name.clone();
    patrol_e2e::token_service::define_scope(
        svc.cluster,
        "e2e-scopes-mint",
        "e2e:mint",
        json!([{"apiGroups": ["patrol.dev"], "resources": ["personalaccesstokens"],
                "verbs": ["create", "get"], "namespaces": [ns]}]),
    )
    .await?;
    let in_an_hour = chrono::Utc::now() + chrono::Duration::hours(1);
    let unscoped = svc.issue("unscoped", admin(), &[], None).await?;
    let reader = svc
        .issue("reader", admin(), &["e2e:read-pods"], None)
        .await?;
    let minter = svc
        .issue(
            "minter",
            admin(),
            &["e2e:mint", "e2e:read-pods"],
            Some(in_an_hour),
        )
        .await?;
    for i in [unscoped, reader, minter] {
        svc.wait_indexed(i).await?;
    }
    let _admission = Admission::register(&svc, &ns).await?;

    let pats_with = |i: usize| {
        let kubeconfig = svc
            .kubeconfig
            .with_file_name(format!("mint-{i}.kubeconfig"));
        let token = svc.token(i).to_owned();
        let cluster = svc.cluster;
        let ns = ns.clone();
        async move {
            cluster.bearer_kubeconfig(&kubeconfig, &token)?;
            let client = cluster.bearer_client(&kubeconfig).await?;
            anyhow::Ok(Api::<PersonalAccessToken>::namespaced(client, &ns))
        }
    };
    let refused = |result: kube::Result<PersonalAccessToken>| -> Result<String> {
        match result {
            Err(kube::Error::Api(e)) => Ok(format!("{} {}", e.code, e.message)),
            other => anyhow::bail!("expected a refusal, got {other:?}"),
        }
    };

    // An unscoped token has its owner's full rights, RBAC allows, admission refuses.
    let as_unscoped = pats_with(unscoped).await?;
    let message = eventually(Duration::from_secs(20), || async {
        refused(
            as_unscoped
                .create(
                    &PostParams::default(),
                    &child("a", &["e2e:read-pods"], Some("10m"))?,
                )
                .await,
        )
        .and_then(|m| {
            ensure!(m.contains("has no scopes"), "{m}");
            Ok(m)
        })
    })
    .await?;
    println!("unscoped token minting: {message}");
    ensure!(message.starts_with("403"), "{message}");

    // A token whose scopes do not permit it: the authorizer refuses before admission.
    let message = refused(
        pats_with(reader)
            .await?
            .create(
                &PostParams::default(),
                &child("b", &["e2e:read-pods"], Some("10m"))?,
            )
            .await,
    )?;
    ensure!(
        message.contains("limited to scope e2e:read-pods"),
        "{message}"
    );

    // A token that may mint creates only tokens that hold no more than itself.
    let as_minter = pats_with(minter).await?;
    for (name, scopes, ttl, want) in [
        ("c", vec!["e2e:admin"], Some("10m"), "spec.scopes[0]"),
        ("d", vec![], Some("10m"), "must name scopes"),
        (
            "e",
            vec!["e2e:read-pods"],
            Some("2h"),
            "must expire no later",
        ),
        ("f", vec!["e2e:read-pods"], None, "must expire no later"),
    ] {
        let message = refused(
            as_minter
                .create(&PostParams::default(), &child(name, &scopes, ttl)?)
                .await,
        )?;
        ensure!(message.contains(want), "{name}: {message}");
    }
    let minted = as_minter
        .create(
            &PostParams::default(),
            &child("g", &["e2e:read-pods"], Some("30m"))?,
        )
        .await?;
    let owner = minted.spec.owner.context("owner stamped")?;
    println!("minted by a token: owner {owner:?}");
    assert_eq!(owner.username, ADMIN);
    ensure!(
        owner.groups.iter().all(|g| !g.starts_with("patrol:scope:")),
        "the parent's scope groups were stamped into the owner: {:?}",
        owner.groups
    );
    Ok(())
}

/// Frozen identity: a token owned by a ServiceAccount stops working once the
/// ServiceAccount is deleted, and stays refused when one is recreated under the same name
/// (a new uid: perhaps for someone else).
#[tokio::test]
async fn a_service_account_owners_tokens_die_with_it() -> Result<()> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let _port = WEBHOOK_PORT.lock().await;
    let mut svc = TokenService::start("scopes-sa", &[]).await?;
    let ns = svc.pats.name.clone();
    let sas: Api<ServiceAccount> = Api::namespaced(svc.cluster.client().await?, &ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "deployer"}}))?;
    let created = sas.create(&PostParams::default(), &sa).await?;
    let owner = TokenOwner {
        username: format!("system:serviceaccount:{ns}:deployer"),
        uid: created.metadata.uid.clone(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ],
    };
    let i = svc.issue("deployer", owner, &[], None).await?;
    svc.wait_indexed(i).await?;
    let token = svc.token(i).to_owned();
    svc.kubectl_ok_as(&token, &["auth", "whoami"], Duration::from_secs(10))
        .await?;

    sas.delete("deployer", &DeleteParams::default()).await?;
    let deleted = Instant::now();
    eventually(Duration::from_secs(20), || async {
        let out = svc.kubectl_as(&token, &["auth", "whoami"])?;
        ensure!(!out.status.success(), "still works");
        Ok(())
    })
    .await?;
    println!(
        "ServiceAccount deleted -> its PAT refused after {:?}",
        deleted.elapsed()
    );
    ensure!(
        svc.wait_indexed(i).await.is_err(),
        "TokenReview must refuse the token of a deleted ServiceAccount"
    );

    sas.create(&PostParams::default(), &sa).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = svc.kubectl_as(&token, &["auth", "whoami"])?;
    ensure!(
        !out.status.success(),
        "a ServiceAccount recreated under the same name must not revive the token"
    );
    let refused = svc
        .metric(
            "patrol_webhook_token_validations_total{outcome=\"rejected\",reason=\"owner_gone\"}",
        )
        .await?;
    ensure!(refused > 0.0, "refusals are counted as owner_gone");
    Ok(())
}

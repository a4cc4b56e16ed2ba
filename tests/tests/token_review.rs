//! TokenReview against the real kube-apiserver: `kubectl --token=<PAT>` is authenticated
//! by patrol-webhook as the PAT's owner, with scope groups RBAC can bind; revoked, expired
//! and garbage tokens are refused; lastUsedAt is written back; bad requests to
//! `/authenticate` get clear 4xx answers; and the webhook never logs a token or a hash.
//!
//! The apiserver is configured (hack/cluster.sh) to call
//! `https://127.0.0.1:$PATROL_WEBHOOK_PORT/authenticate` with a cache TTL of 0, so every
//! kubectl call below reaches patrol-webhook. One port per cluster: tests that run the
//! webhook take [`WEBHOOK_PORT`] first.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Method, Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::{
    core::v1::Secret,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
};
use patrol_api::{
    record::{ExchangeGrant, PatReference, TokenRecord},
    token::{self, HashParams, PlaintextToken, TokenHasher},
    v1alpha1::PersonalAccessToken,
};
use patrol_e2e::{
    TestCluster, TestNamespace, eventually,
    process::{self, Process},
    token_service::{Https, https_client},
};
use serde_json::{Value, json};

/// Serializes the tests of this binary on the one webhook port the apiserver calls.
static WEBHOOK_PORT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The kube-apiserver's own audience (its --service-account-issuer, hack/cluster.sh).
const APISERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// A second audience the webhook is told PATs are valid for.
const EXTRA_AUDIENCE: &str = "patrol-e2e";

/// A running patrol-webhook with its namespaces. Field order is drop order: the webhook
/// stops before its namespaces go.
struct Env {
    webhook: Process,
    cluster: &'static TestCluster,
    records: TestNamespace,
    pats: TestNamespace,
    port: u16,
    http1: Https,
    http2: Https,
    kubeconfig: PathBuf,
    issued: Vec<Issued>,
}

/// A token this test issued, with everything that must never appear in the webhook's log.
struct Issued {
    token: PlaintextToken,
    hash: String,
    record: TokenRecord,
}

/// A kubeconfig with only the server and its CA: the token comes from `--token`.
fn write_pat_kubeconfig(cluster: &TestCluster, dir: &Path) -> Result<PathBuf> {
    let server = format!(
        "https://127.0.0.1:{}",
        cluster.var("PATROL_APISERVER_PORT")?
    );
    let ca = cluster.var("PATROL_CA")?;
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: pat\n  user: {{}}\ncontexts:\n- name: pat\n  context: {{cluster: local, user: pat}}\ncurrent-context: pat\n"
        ),
    )?;
    Ok(path)
}

impl Env {
    async fn start(name: &str, extra_args: &[&str]) -> Result<Self> {
        let cluster = TestCluster::shared()?;
        cluster.install_crds().await?;
        let records = TestNamespace::create(cluster, &format!("{name}-rec")).await?;
        let pats = TestNamespace::create(cluster, name).await?;
        let port: u16 = cluster.var("PATROL_WEBHOOK_PORT")?.parse()?;
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--namespace".into(),
            records.name.clone(),
            "--shutdown-grace".into(),
            "1s".into(),
        ];
        if !extra_args.contains(&"--tls-cert") {
            args.extend([
                "--tls-cert".into(),
                cluster.var("PATROL_WEBHOOK_CERT")?.to_owned(),
                "--tls-key".into(),
                cluster.var("PATROL_WEBHOOK_KEY")?.to_owned(),
            ]);
        }
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        // Debug logging, so the scan for leaked tokens covers every log line the code has.
        let env = [(
            "RUST_LOG".to_owned(),
            "debug,h2=info,hyper=info,hyper_util=info,rustls=info,tower=info".to_owned(),
        )];
        let webhook = Process::spawn(
            cluster,
            name,
            &process::binary("patrol-webhook")?,
            &args,
            &env,
        )?;
        let ca = PathBuf::from(cluster.var("PATROL_CA")?);
        let dir = std::env::temp_dir().join(format!("patrol-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut env = Self {
            webhook,
            cluster,
            records,
            pats,
            port,
            http1: https_client(&ca, false)?,
            http2: https_client(&ca, true)?,
            kubeconfig: write_pat_kubeconfig(cluster, &dir)?,
            issued: Vec::new(),
        };
        env.wait_ready().await?;
        Ok(env)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Ok((StatusCode::OK, _, _)) =
                self.request(Method::GET, "/readyz", None, None).await
            {
                println!("patrol-webhook ready after {:?}", started.elapsed());
                return Ok(());
            }
            if !self.webhook.running() {
                bail!("patrol-webhook exited:\n{}", self.webhook.output());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "patrol-webhook not ready after 60s:\n{}",
                    self.webhook.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One HTTPS request to the webhook; the body is parsed as JSON when it is JSON.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Result<(StatusCode, Version, Value)> {
        self.request_on(&self.http1, method, path, body, content_type)
            .await
    }

    async fn request_on(
        &self,
        client: &Https,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: Option<&str>,
    ) -> Result<(StatusCode, Version, Value)> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("https://127.0.0.1:{}{path}", self.port));
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let request = request.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let response =
            tokio::time::timeout(Duration::from_secs(15), client.request(request)).await??;
        let (status, version) = (response.status(), response.version());
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, version, value))
    }

    /// POSTs a TokenReview for `token` and returns the answer's status object.
    async fn review(&self, token: &str, audiences: Option<&[&str]>) -> Result<Value> {
        let mut spec = json!({"token": token});
        if let Some(a) = audiences {
            spec["audiences"] = json!(a);
        }
        let body =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec});
        let (status, _, answer) = self
            .request(
                Method::POST,
                "/authenticate",
                Some(serde_json::to_vec(&body)?),
                Some("application/json"),
            )
            .await?;
        ensure!(
            status == StatusCode::OK,
            "TokenReview answered {status}: {answer}"
        );
        ensure!(
            answer["apiVersion"] == "authentication.k8s.io/v1" && answer["kind"] == "TokenReview",
            "{answer}"
        );
        Ok(answer["status"].clone())
    }

    async fn accepted(&self, token: &str) -> Result<bool> {
        Ok(self.review(token, None).await?["authenticated"] == true)
    }

    /// Creates a PAT object and, as the operator would, its token and hashed record.
    async fn issue(
        &mut self,
        name: &str,
        scopes: &[&str],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<usize> {
        let client = self.cluster.client().await?;
        let pats: Api<PersonalAccessToken> = Api::namespaced(client.clone(), &self.pats.name);
        let pat: PersonalAccessToken = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
            "metadata": {"name": name},
            "spec": {
                "displayName": format!("e2e {name}"),
                "owner": {"username": "alice@example.com", "uid": "alice-uid", "groups": ["team-a-devs"]},
                "scopes": scopes,
            },
        }))?;
        let pat = pats.create(&PostParams::default(), &pat).await?;
        let token = token::generate()?;
        // Small argon2 parameters keep the test fast; verification reads them from the hash.
        let hash = TokenHasher::new(HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })?
        .hash(&token)?;
        let record = TokenRecord {
            token_id: token.id().to_string(),
            hash: hash.clone(),
            hint: token.hint(),
            owner: pat.spec.owner.clone().context("owner")?,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            scoped: false,
            issued_at: Utc::now(),
            expires_at,
            idle_timeout_seconds: None,
            pat: PatReference {
                namespace: self.pats.name.clone(),
                name: name.into(),
                uid: pat.uid().context("uid")?,
            },
            exchange: ExchangeGrant {
                max_ttl_seconds: 3_600,
                ..ExchangeGrant::default()
            },
            service_account: None,
            rotation_request: None,
        };
        let secrets: Api<Secret> = Api::namespaced(client, &self.records.name);
        secrets
            .create(
                &PostParams::default(),
                &record.to_secret(&self.records.name)?,
            )
            .await?;
        self.issued.push(Issued {
            token,
            hash,
            record,
        });
        Ok(self.issued.len() - 1)
    }

    fn token(&self, i: usize) -> &str {
        self.issued[i].token.expose_secret()
    }

    /// Waits until the webhook's index has the record (watch delivery is asynchronous).
    async fn wait_accepted(&self, i: usize) -> Result<()> {
        eventually(Duration::from_secs(10), || async {
            ensure!(self.accepted(self.token(i)).await?, "not accepted yet");
            Ok(())
        })
        .await
    }

    async fn delete_record(&self, i: usize) -> Result<()> {
        let secrets: Api<Secret> =
            Api::namespaced(self.cluster.client().await?, &self.records.name);
        secrets
            .delete(
                &TokenRecord::secret_name(&self.issued[i].record.token_id),
                &DeleteParams::default(),
            )
            .await?;
        Ok(())
    }

    /// kubectl authenticated by `token` alone (no client certificate).
    fn kubectl_as(&self, token: &str, args: &[&str]) -> Result<Output> {
        let bin = Path::new(self.cluster.var("PATROL_BIN")?).join("kubectl");
        Ok(std::process::Command::new(bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg(format!("--token={token}"))
            .args(args)
            .output()?)
    }

    /// The webhook's log never holds a token, its secret part or its hash.
    fn assert_log_clean(&self) {
        let log = self.webhook.output();
        assert!(!log.is_empty(), "no log captured");
        for issued in &self.issued {
            let token = issued.token.expose_secret();
            let secret_part = &token[token.len() - 38..];
            let digest = issued.hash.rsplit('$').next().unwrap_or_default();
            assert!(!log.contains(token), "the log contains a token");
            assert!(
                !log.contains(secret_part),
                "the log contains a token's secret"
            );
            assert!(!log.contains(&issued.hash), "the log contains a hash");
            assert!(
                digest.len() > 16 && !log.contains(digest),
                "the log contains a hash digest"
            );
        }
        println!(
            "webhook log: {} lines, no token or hash in it",
            log.lines().count()
        );
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A token with `t`'s id, another secret, and a valid checksum: only argon2 can refuse it.
fn forge_same_id(t: &PlaintextToken) -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let body = format!("patrol_{}_{}", t.id(), "Z".repeat(token::SECRET_LEN));
    let mut sum = crc32fast::hash(body.as_bytes());
    let mut check = [b'0'; token::CHECKSUM_LEN];
    for slot in check.iter_mut().rev() {
        *slot = ALPHABET[(sum % 62) as usize];
        sum /= 62;
    }
    let forged = format!("{body}{}", String::from_utf8_lossy(&check));
    assert!(
        token::parse(&forged).is_ok(),
        "forged token must be well-formed"
    );
    forged
}

#[tokio::test]
async fn kubectl_with_a_pat_acts_as_its_owner_with_scope_groups() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let audiences = format!("{APISERVER_AUDIENCE},{EXTRA_AUDIENCE}");
    let mut env = Env::start("tr-owner", &["--audiences", &audiences]).await?;
    // Scopes restrict (Patrol's authorization webhook): read:pods must permit reading pods
    // for the scope group's RoleBinding to matter.
    patrol_e2e::token_service::define_read_pods_scope(env.cluster, "e2e-read-pods").await?;
    let i = env.issue("laptop", &["read:pods", "deploy"], None).await?;
    env.wait_accepted(i).await?;

    // Who am I, as the apiserver sees it.
    let out = env.kubectl_as(env.token(i), &["auth", "whoami", "-o", "json"])?;
    ensure!(
        out.status.success(),
        "kubectl auth whoami failed: {}",
        stderr(&out)
    );
    let review: Value = serde_json::from_slice(&out.stdout)?;
    let user = &review["status"]["userInfo"];
    println!("whoami: {user}");
    assert_eq!(user["username"], "alice@example.com");
    assert_eq!(user["uid"], "alice-uid");
    let groups: Vec<&str> = user["groups"]
        .as_array()
        .context("groups")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for g in [
        "team-a-devs",
        "patrol:scope:read:pods",
        "patrol:scope:deploy",
        "system:authenticated",
    ] {
        assert!(groups.contains(&g), "missing group {g} in {groups:?}");
    }
    assert_eq!(
        groups
            .iter()
            .filter(|g| **g == "system:authenticated")
            .count(),
        1,
        "added once, by the apiserver"
    );
    assert_eq!(
        user["extra"]["patrol.dev/token-id"],
        json!([env.issued[i].record.token_id])
    );
    assert_eq!(
        user["extra"]["patrol.dev/pat"],
        json!([format!("{}/laptop", env.pats.name)])
    );

    // RBAC bound to a scope group: pods readable in one namespace, nowhere else.
    let client = env.cluster.client().await?;
    let allowed = TestNamespace::create(env.cluster, "tr-rbac").await?;
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    }))?;
    Api::<Role>::namespaced(client.clone(), &allowed.name)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "scope-read-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "patrol:scope:read:pods"}],
    }))?;
    Api::<RoleBinding>::namespaced(client.clone(), &allowed.name)
        .create(&PostParams::default(), &binding)
        .await?;
    let listed = eventually(Duration::from_secs(10), || async {
        let out = env.kubectl_as(env.token(i), &["get", "pods", "-n", &allowed.name])?;
        ensure!(
            out.status.success(),
            "kubectl get pods failed: {}",
            stderr(&out)
        );
        Ok(out)
    })
    .await?;
    println!("allowed namespace: {}", stderr(&listed).trim());
    let denied = env.kubectl_as(env.token(i), &["get", "pods", "-n", &env.pats.name])?;
    assert!(!denied.status.success());
    let message = stderr(&denied);
    assert!(
        message.contains("Forbidden")
            && message.contains("User \"alice@example.com\" cannot list resource \"pods\""),
        "{message}"
    );

    // lastUsedAt is written back to the PAT's status.
    let pats: Api<PersonalAccessToken> = Api::namespaced(client, &env.pats.name);
    let last_used = eventually(Duration::from_secs(10), || async {
        pats.get("laptop")
            .await?
            .status
            .and_then(|s| s.last_used_at)
            .context("status.lastUsedAt not set yet")
    })
    .await?;
    println!("status.lastUsedAt = {}", last_used.0);
    let managed = pats
        .get("laptop")
        .await?
        .metadata
        .managed_fields
        .unwrap_or_default();
    assert!(
        managed
            .iter()
            .any(|m| m.manager.as_deref() == Some("patrol-webhook")
                && m.subresource.as_deref() == Some("status")),
        "lastUsedAt is applied by field manager patrol-webhook on the status subresource"
    );

    // Audiences, asked directly: the intersection, or a refusal when none is ours.
    let t = env.token(i);
    let status = env
        .review(t, Some(&["someone-else", EXTRA_AUDIENCE]))
        .await?;
    assert_eq!(status["authenticated"], true);
    assert_eq!(status["audiences"], json!([EXTRA_AUDIENCE]));
    let status = env.review(t, Some(&["someone-else"])).await?;
    assert_eq!(status["authenticated"], false);
    let status = env.review(t, None).await?;
    assert_eq!(
        status["audiences"],
        json!([APISERVER_AUDIENCE, EXTRA_AUDIENCE])
    );

    // HTTP/2 and HTTP/1.1 both served.
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t}});
    for (client, version) in [
        (&env.http2, Version::HTTP_2),
        (&env.http1, Version::HTTP_11),
    ] {
        let (code, got, answer) = env
            .request_on(
                client,
                Method::POST,
                "/authenticate",
                Some(serde_json::to_vec(&review)?),
                Some("application/json"),
            )
            .await?;
        assert_eq!((code, got), (StatusCode::OK, version));
        assert_eq!(answer["status"]["authenticated"], true);
    }

    let (code, _, metrics) = env.request(Method::GET, "/metrics", None, None).await?;
    assert_eq!(code, StatusCode::OK);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains(
        "patrol_webhook_token_validations_total{outcome=\"authenticated\",reason=\"cache_hit\"}"
    ));
    assert!(
        metrics.contains("patrol_webhook_last_used_writes_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(t) && !metrics.contains(&env.issued[i].record.token_id));
    env.assert_log_clean();
    Ok(())
}

#[tokio::test]
async fn revoked_expired_forged_and_garbage_tokens_are_refused() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let mut env = Env::start("tr-refuse", &[]).await?;

    // Revocation: the record disappears, the token stops working within a second,
    // even though it was just cached.
    let revoked = env.issue("revoked", &[], None).await?;
    env.wait_accepted(revoked).await?;
    assert!(env.accepted(env.token(revoked)).await?, "cached");
    let started = Instant::now();
    env.delete_record(revoked).await?;
    let deleted_after = started.elapsed();
    loop {
        if !env.accepted(env.token(revoked)).await? {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(5),
            "still accepted 5s after deletion"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let latency = started.elapsed();
    println!(
        "revocation: record deleted in {deleted_after:?}; token refused {latency:?} after the delete call began"
    );
    assert!(
        latency < Duration::from_secs(1),
        "revocation took {latency:?}"
    );
    let out = env.kubectl_as(env.token(revoked), &["auth", "whoami"])?;
    assert!(
        !out.status.success() && stderr(&out).contains("Unauthorized"),
        "{}",
        stderr(&out)
    );

    // Expired: refused by the webhook and by kubectl.
    let expired = env
        .issue(
            "expired",
            &[],
            Some(Utc::now() - chrono::Duration::minutes(1)),
        )
        .await?;
    let live = env.issue("live", &[], None).await?;
    env.wait_accepted(live).await?; // the watch has delivered both records by now
    let refused = env.review(env.token(expired), None).await?;
    assert_eq!(refused["authenticated"], false);
    let out = env.kubectl_as(env.token(expired), &["auth", "whoami"])?;
    assert!(
        !out.status.success() && stderr(&out).contains("Unauthorized"),
        "{}",
        stderr(&out)
    );

    // Expiring while cached: expiry is checked on every call.
    let soon = env
        .issue("soon", &[], Some(Utc::now() + chrono::Duration::seconds(3)))
        .await?;
    env.wait_accepted(soon).await?;
    assert!(env.accepted(env.token(soon)).await?);
    let expires_at = env.issued[soon].record.expires_at.context("expiry")?;
    let wait = (expires_at - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(200);
    tokio::time::sleep(wait).await;
    assert!(
        !env.accepted(env.token(soon)).await?,
        "expired token accepted from the cache"
    );

    // Forged (right id, wrong secret, valid checksum) and garbage: the same answer as the rest.
    let forged = forge_same_id(&env.issued[live].token);
    let unknown = token::generate()?;
    let garbage = [
        "".to_owned(),
        "not-a-token".to_owned(),
        format!("{}x", env.token(live)),
        env.token(live).replace("patrol_", "PATROL_"),
        env.token(live)[..40].to_owned(),
        "patrol_".repeat(500),
        "\u{1F980}".repeat(20),
    ];
    let mut answers = Vec::new();
    for presented in [forged.as_str(), unknown.expose_secret(), env.token(expired)] {
        answers.push(env.review(presented, None).await?);
    }
    for presented in garbage.iter().filter(|g| !g.is_empty()) {
        answers.push(env.review(presented, None).await?);
    }
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "rejections differ: {answers:?}"
    );
    assert_eq!(
        answers[0],
        json!({"authenticated": false, "error": "token not accepted"})
    );
    for presented in [forged.as_str(), "not-a-token"] {
        let out = env.kubectl_as(presented, &["auth", "whoami"])?;
        assert!(
            !out.status.success() && stderr(&out).contains("Unauthorized"),
            "{}",
            stderr(&out)
        );
    }
    assert!(
        env.accepted(env.token(live)).await?,
        "the live token still works"
    );
    env.assert_log_clean();
    Ok(())
}

/// What is sent, and the status and message part expected back.
type BadInput<'a> = (
    &'a str,
    Method,
    &'a str,
    Option<Vec<u8>>,
    Option<&'a str>,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn authenticate_answers_bad_input_with_clear_errors() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let mut env = Env::start("tr-bad-input", &[]).await?;
    let i = env.issue("valid", &[], None).await?;
    env.wait_accepted(i).await?;
    let t = env.token(i).to_owned();
    let review = |v: Value| Some(serde_json::to_vec(&v).unwrap_or_default());
    let json_ct = Some("application/json");
    let huge = review(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": "x".repeat(1024 * 1024)}}),
    );
    let cases: Vec<BadInput> = vec![
        (
            "malformed JSON",
            Method::POST,
            "/authenticate",
            Some(b"{\"apiVersion\":".to_vec()),
            json_ct,
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            "not an object",
            Method::POST,
            "/authenticate",
            review(json!([t])),
            json_ct,
            StatusCode::BAD_REQUEST,
            "JSON object",
        ),
        (
            "wrong apiVersion",
            Method::POST,
            "/authenticate",
            review(
                json!({"apiVersion": "authentication.k8s.io/v1beta1", "kind": "TokenReview", "spec": {"token": t}}),
            ),
            json_ct,
            StatusCode::BAD_REQUEST,
            "apiVersion",
        ),
        (
            "wrong kind",
            Method::POST,
            "/authenticate",
            review(
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"token": t}}),
            ),
            json_ct,
            StatusCode::BAD_REQUEST,
            "kind",
        ),
        (
            "no spec",
            Method::POST,
            "/authenticate",
            review(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"})),
            json_ct,
            StatusCode::BAD_REQUEST,
            "spec is required",
        ),
        (
            "empty token",
            Method::POST,
            "/authenticate",
            review(
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": ""}}),
            ),
            json_ct,
            StatusCode::BAD_REQUEST,
            "spec.token is required",
        ),
        (
            "token not a string",
            Method::POST,
            "/authenticate",
            review(
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": [t]}}),
            ),
            json_ct,
            StatusCode::BAD_REQUEST,
            "spec.token must be a string",
        ),
        (
            "audiences not strings",
            Method::POST,
            "/authenticate",
            review(
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t, "audiences": t}}),
            ),
            json_ct,
            StatusCode::BAD_REQUEST,
            "spec.audiences must be a list of strings",
        ),
        (
            "wrong content type",
            Method::POST,
            "/authenticate",
            review(
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": t}}),
            ),
            Some("application/x-www-form-urlencoded"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            "no content type",
            Method::POST,
            "/authenticate",
            Some(b"{}".to_vec()),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            "GET",
            Method::GET,
            "/authenticate",
            None,
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        ),
        (
            "unknown path",
            Method::POST,
            "/authenticate/../../etc/passwd",
            None,
            None,
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
    ];
    let count = cases.len();
    for (what, method, path, body, ct, want, message) in cases {
        let (code, _, answer) = env.request(method, path, body, ct).await?;
        assert_eq!(code, want, "{what}: {answer}");
        assert_eq!(answer["kind"], "Status", "{what}: {answer}");
        assert_eq!(answer["code"], want.as_u16(), "{what}");
        let text = answer["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{what}: {text:?} lacks {message:?}");
        assert!(
            !answer.to_string().contains(&t),
            "{what}: the error quotes the token"
        );
        println!("{what:>22}: {} {text}", code.as_u16());
    }
    // A huge body is refused as soon as its Content-Length is seen. Over HTTP/1.1 the
    // server then closes the connection without reading the rest, which hyper's client
    // reports as a broken pipe instead of the response (Go's client, the apiserver's, reads
    // the early response); over HTTP/2 the answer arrives cleanly on its stream.
    let (code, version, answer) = env
        .request_on(&env.http2, Method::POST, "/authenticate", huge, json_ct)
        .await?;
    assert_eq!(
        (code, version),
        (StatusCode::PAYLOAD_TOO_LARGE, Version::HTTP_2),
        "{answer}"
    );
    assert_eq!(answer["kind"], "Status");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too large"),
        "{answer}"
    );
    println!(
        "{:>22}: {} {}",
        "huge body (1 MiB)",
        code.as_u16(),
        answer["message"]
    );
    println!("{} bad inputs answered with clear errors", count + 1);

    // Nothing broke: still running, still serving, probes fine.
    assert!(
        env.webhook.running(),
        "webhook died:\n{}",
        env.webhook.output()
    );
    assert!(env.accepted(&t).await?);
    let (code, _, _) = env.request(Method::GET, "/healthz", None, None).await?;
    assert_eq!(code, StatusCode::OK);
    env.assert_log_clean();
    Ok(())
}

/// The subject CN the server at `port` presents, as `openssl s_client` reports it.
fn served_subject(port: u16) -> Result<String> {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            "localhost",
        ])
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .map(|s| s.trim().to_owned())
        .with_context(|| format!("no subject in s_client output: {text}"))
}

/// A new key and a certificate for 127.0.0.1 signed by the cluster CA.
fn sign_webhook_cert(cluster: &TestCluster, dir: &Path, cn: &str) -> Result<(PathBuf, PathBuf)> {
    let pki = Path::new(cluster.var("PATROL_CLUSTER_DIR")?).join("pki");
    let (key, csr, crt, ext) = (
        dir.join("new.key"),
        dir.join("new.csr"),
        dir.join("new.crt"),
        dir.join("new.ext"),
    );
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )?;
    let run = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("openssl").args(args).output()?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let p = |p: &Path| p.to_string_lossy().into_owned();
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p(&key),
    ])?;
    run(&[
        "req",
        "-new",
        "-key",
        &p(&key),
        "-subj",
        &format!("/CN={cn}"),
        "-out",
        &p(&csr),
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&pki.join("ca.crt")),
        "-CAkey",
        &p(&pki.join("ca.key")),
        "-CAcreateserial",
        "-CAserial",
        &p(&dir.join("ca.srl")),
        "-days",
        "1",
        "-sha256",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&crt),
    ])?;
    Ok((crt, key))
}

#[tokio::test]
async fn a_renewed_serving_certificate_is_picked_up_without_restart() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let cluster = TestCluster::shared()?;
    let dir = std::env::temp_dir().join(format!("patrol-e2e-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::copy(cluster.var("PATROL_WEBHOOK_CERT")?, &cert)?;
    std::fs::copy(cluster.var("PATROL_WEBHOOK_KEY")?, &key)?;
    let (cert_arg, key_arg) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let mut env = Env::start(
        "tr-tls",
        &[
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
            "--tls-reload-interval",
            "200ms",
        ],
    )
    .await?;
    let before = served_subject(env.port)?;
    assert!(before.contains("patrol-webhook"), "{before}");

    // Replace both files, as cert-manager or a kubelet Secret update would.
    let (new_cert, new_key) = sign_webhook_cert(cluster, &dir, "patrol-webhook-renewed")?;
    std::fs::copy(&new_key, &key)?;
    std::fs::copy(&new_cert, &cert)?;
    let after = eventually(Duration::from_secs(10), || async {
        let subject = served_subject(env.port)?;
        ensure!(
            subject.contains("patrol-webhook-renewed"),
            "still serving {subject}"
        );
        Ok(subject)
    })
    .await?;
    println!("served certificate: {before} -> {after}");
    // Still trusted and working over the new certificate.
    let i = env.issue("after-renewal", &[], None).await?;
    env.wait_accepted(i).await?;
    assert!(
        env.webhook
            .output()
            .contains("serving certificate reloaded")
    );
    env.assert_log_clean();
    Ok(())
}

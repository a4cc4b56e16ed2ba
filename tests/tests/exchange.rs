//! Token exchange (RFC 8693), introspection (RFC 7662), OIDC discovery and JWKS against the
//! real kube-apiserver.
//!
//! The apiserver is configured (hack/cluster.sh) with a JWT authenticator whose issuer is
//! `https://127.0.0.1:$PATROL_WEBHOOK_PORT`, audience `kubernetes-patrol`, claims
//! `sub`/`groups`/`uid` and `patrol_tid` as `user.extra["patrol.dev/token-id"]`. So a JWT
//! exchanged here is verified by the apiserver itself, through Patrol's discovery document
//! and JWKS — `kubectl --token=<JWT>` is the real thing. Actor tokens and introspection
//! callers are real ServiceAccount tokens from the TokenRequest API, reviewed by the
//! apiserver; RBAC decides who may introspect.
//!
//! One issuer port per cluster: tests that run the webhook on it take [`WEBHOOK_PORT`].

// Test fixtures fail loudly on impossible input.
#![allow(clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::{
    core::v1::Secret,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
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
    token_service::{Https, https_client, spawn_webhook},
};
use serde_json::{Value, json};

/// Serializes the tests of this binary on the one port the apiserver's issuer URL names.
static WEBHOOK_PORT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The audience the apiserver's JWT authenticator accepts (hack/cluster.sh).
const KUBE_AUDIENCE: &str = "kubernetes-patrol";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TT_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
const TT_PAT: &str = "urn:ietf:params:oauth:token-type:pat";
const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const FORM: &str = "application/x-www-form-urlencoded";
const OWNER: &str = "alice@example.com";

/// `application/x-www-form-urlencoded` of `pairs`, every byte but the unreserved escaped.
fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    let escape = |s: &str| -> String {
        s.bytes()
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
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

/// base64url without padding, decoded (for reading JWT parts; verification is the server's).
fn b64url(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => bail!("not base64url"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xFF)?);
        }
    }
    Ok(out)
}

fn jwt_part(jwt: &str, i: usize) -> Result<Value> {
    let part = jwt.split('.').nth(i).context("not a JWT")?;
    Ok(serde_json::from_slice(&b64url(part)?)?)
}

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }

    fn assert_no_store(&self, what: &str) {
        assert_eq!(
            self.headers
                .get(header::CACHE_CONTROL)
                .map(|v| v.to_str().unwrap_or_default()),
            Some("no-store"),
            "{what}: Cache-Control"
        );
        assert_eq!(
            self.headers
                .get(header::PRAGMA)
                .map(|v| v.to_str().unwrap_or_default()),
            Some("no-cache"),
            "{what}: Pragma"
        );
        assert!(
            self.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap_or_default()
                .starts_with("application/json"),
            "{what}: JSON"
        );
    }
}

/// A kubeconfig with only the server and its CA: the token comes from `--token`.
fn write_token_kubeconfig(cluster: &TestCluster, dir: &Path) -> Result<PathBuf> {
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
             users:\n- name: bearer\n  user: {{}}\ncontexts:\n- name: bearer\n  context: {{cluster: local, user: bearer}}\ncurrent-context: bearer\n"
        ),
    )?;
    Ok(path)
}

/// Cluster-scoped objects to delete when the test ends, however it ends.
struct ClusterObjects {
    cluster: &'static TestCluster,
    objects: Vec<(String, String)>,
}

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        for (kind, name) in &self.objects {
            let _ = self
                .cluster
                .kubectl()
                .args(["delete", kind, name, "--ignore-not-found", "--wait=false"])
                .output();
        }
    }
}

/// A PAT this test issued.
struct Issued {
    token: PlaintextToken,
    record: TokenRecord,
}

/// patrol-webhook with --issuer, its namespaces and clients. Field order is drop order:
/// the webhooks stop before their namespaces go.
struct Env {
    webhook: Process,
    replicas: Vec<(Process, u16)>,
    cluster: &'static TestCluster,
    records: TestNamespace,
    pats: TestNamespace,
    port: u16,
    issuer: String,
    http1: Https,
    http2: Https,
    kubeconfig: PathBuf,
    issued: Vec<Issued>,
    /// Everything else (JWTs, ServiceAccount tokens) that must never be logged.
    secrets: Vec<String>,
    cleanup: ClusterObjects,
}

impl Env {
    async fn start(name: &str, extra_args: &[&str]) -> Result<Self> {
        let cluster = TestCluster::shared()?;
        cluster.install_crds().await?;
        let records = TestNamespace::create(cluster, &format!("{name}-rec")).await?;
        let pats = TestNamespace::create(cluster, name).await?;
        let port: u16 = cluster.var("PATROL_WEBHOOK_PORT")?.parse()?;
        let issuer = format!("https://127.0.0.1:{port}");
        let webhook = spawn_webhook(cluster, name, &records.name, port, &issuer, extra_args)?;
        let ca = PathBuf::from(cluster.var("PATROL_CA")?);
        let dir = std::env::temp_dir().join(format!("patrol-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut env = Self {
            webhook,
            replicas: Vec::new(),
            cluster,
            records,
            pats,
            port,
            issuer,
            http1: https_client(&ca, false)?,
            http2: https_client(&ca, true)?,
            kubeconfig: write_token_kubeconfig(cluster, &dir)?,
            issued: Vec::new(),
            secrets: Vec::new(),
            cleanup: ClusterObjects {
                cluster,
                objects: Vec::new(),
            },
        };
        env.wait_ready(port).await?;
        Ok(env)
    }

    /// Starts one more replica on a free port, sharing the namespace (and so the keys).
    async fn start_replica(&mut self, name: &str, extra_args: &[&str]) -> Result<u16> {
        let port = process::free_port()?;
        let replica = spawn_webhook(
            self.cluster,
            name,
            &self.records.name,
            port,
            &self.issuer,
            extra_args,
        )?;
        self.replicas.push((replica, port));
        self.wait_ready(port).await?;
        Ok(port)
    }

    /// Ready, and the signing keys loaded (JWKS answers).
    async fn wait_ready(&mut self, port: u16) -> Result<()> {
        let started = Instant::now();
        loop {
            let ready = self.get_on(port, "/readyz").await.ok();
            let jwks = self.get_on(port, "/jwks").await.ok();
            if ready.is_some_and(|r| r.status == StatusCode::OK)
                && jwks.is_some_and(|r| r.status == StatusCode::OK)
            {
                println!("patrol-webhook :{port} ready after {:?}", started.elapsed());
                return Ok(());
            }
            if !self.webhook.running() {
                bail!("patrol-webhook exited:\n{}", self.webhook.output());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("patrol-webhook :{port} not ready after 60s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get_on(&self, port: u16, path: &str) -> Result<Reply> {
        send(&self.http1, port, Method::GET, path, Vec::new(), None, None).await
    }

    async fn post_form_on(
        &self,
        port: u16,
        path: &str,
        pairs: &[(&str, &str)],
        authorization: Option<&str>,
    ) -> Result<Reply> {
        send(
            &self.http1,
            port,
            Method::POST,
            path,
            form(pairs),
            Some(FORM),
            authorization,
        )
        .await
    }

    /// POST /oauth2/token on the primary.
    async fn exchange(&self, pairs: &[(&str, &str)]) -> Result<Reply> {
        self.post_form_on(self.port, "/oauth2/token", pairs, None)
            .await
    }

    /// Exchanges PAT `i` for a JWT with `extra` parameters; fails unless 200.
    async fn exchange_ok(&mut self, i: usize, extra: &[(&str, &str)]) -> Result<(String, Value)> {
        self.exchange_ok_on(self.port, i, extra).await
    }

    async fn exchange_ok_on(
        &mut self,
        port: u16,
        i: usize,
        extra: &[(&str, &str)],
    ) -> Result<(String, Value)> {
        let token = self.token(i).to_owned();
        let mut pairs = vec![
            ("grant_type", GRANT),
            ("subject_token", token.as_str()),
            ("subject_token_type", TT_ACCESS),
        ];
        pairs.extend_from_slice(extra);
        let reply = self
            .post_form_on(port, "/oauth2/token", &pairs, None)
            .await?;
        ensure!(
            reply.status == StatusCode::OK,
            "exchange answered {}: {}",
            reply.status,
            reply.body
        );
        reply.assert_no_store("exchange");
        let jwt = reply.body["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned();
        self.secrets.push(jwt.clone());
        Ok((jwt, reply.body))
    }

    /// Waits until the webhook's index has PAT `i` (watch delivery is asynchronous).
    async fn wait_indexed(&mut self, i: usize) -> Result<()> {
        let token = self.token(i).to_owned();
        eventually(Duration::from_secs(10), || async {
            let reply = self
                .exchange(&[
                    ("grant_type", GRANT),
                    ("subject_token", &token),
                    ("subject_token_type", TT_ACCESS),
                    ("audience", KUBE_AUDIENCE),
                ])
                .await?;
            ensure!(
                reply.error() != "invalid_grant",
                "not indexed yet: {}",
                reply.body
            );
            Ok(())
        })
        .await
    }

    /// POST /oauth2/introspect on `port`, authenticated with `caller`.
    async fn introspect_on(&self, port: u16, caller: Option<&str>, token: &str) -> Result<Reply> {
        let auth = caller.map(|c| format!("Bearer {c}"));
        self.post_form_on(
            port,
            "/oauth2/introspect",
            &[("token", token)],
            auth.as_deref(),
        )
        .await
    }

    /// Creates a PAT object and, as the operator would, its token and record.
    async fn issue(
        &mut self,
        name: &str,
        scopes: &[&str],
        expires_at: Option<DateTime<Utc>>,
        exchange: ExchangeGrant,
    ) -> Result<usize> {
        let client = self.cluster.client().await?;
        let pats: Api<PersonalAccessToken> = Api::namespaced(client.clone(), &self.pats.name);
        let pat: PersonalAccessToken = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
            "metadata": {"name": name},
            "spec": {
                "displayName": format!("e2e {name}"),
                "owner": {"username": OWNER, "uid": "alice-uid", "groups": ["team-a-devs"]},
                "scopes": scopes,
            },
        }))?;
        let pat = pats.create(&PostParams::default(), &pat).await?;
        let token = token::generate()?;
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
            exchange,
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
        self.secrets.push(hash);
        self.issued.push(Issued { token, record });
        Ok(self.issued.len() - 1)
    }

    fn token(&self, i: usize) -> &str {
        self.issued[i].token.expose_secret()
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

    /// `system:serviceaccount:<pats>:<name>`, created if needed.
    fn service_account(&self, name: &str) -> Result<String> {
        let out = self
            .cluster
            .kubectl()
            .args(["create", "serviceaccount", name, "-n", &self.pats.name])
            .output()?;
        ensure!(
            out.status.success() || stderr(&out).contains("already exists"),
            "creating ServiceAccount {name}: {}",
            stderr(&out)
        );
        Ok(format!("system:serviceaccount:{}:{name}", self.pats.name))
    }

    /// A token for ServiceAccount `name` from the TokenRequest API.
    fn sa_token(&mut self, name: &str) -> Result<String> {
        self.service_account(name)?;
        let token = self
            .cluster
            .kubectl_ok(&[
                "create",
                "token",
                name,
                "-n",
                &self.pats.name,
                "--duration",
                "10m",
            ])?
            .trim()
            .to_owned();
        self.secrets.push(token.clone());
        Ok(token)
    }

    /// Lets ServiceAccount `name` introspect (create tokenintrospections.patrol.dev, a
    /// virtual resource, so RBAC objects are written directly: kubectl would refuse it).
    async fn allow_introspection(&mut self, name: &str) -> Result<()> {
        let client = self.cluster.client().await?;
        let role = format!("patrol-e2e-introspect-{}", self.pats.name);
        let cluster_role: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": role},
            "rules": [{"apiGroups": ["patrol.dev"], "resources": ["tokenintrospections"], "verbs": ["create"]}],
        }))?;
        Api::<ClusterRole>::all(client.clone())
            .create(&PostParams::default(), &cluster_role)
            .await?;
        self.cleanup
            .objects
            .push(("clusterrole".into(), role.clone()));
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": self.pats.name}],
        }))?;
        Api::<ClusterRoleBinding>::all(client)
            .create(&PostParams::default(), &binding)
            .await?;
        self.cleanup
            .objects
            .push(("clusterrolebinding".into(), role));
        Ok(())
    }

    /// kubectl authenticated by `token` alone.
    fn kubectl_as(&self, token: &str, args: &[&str]) -> Result<Output> {
        let bin = Path::new(self.cluster.var("PATROL_BIN")?).join("kubectl");
        Ok(std::process::Command::new(bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg(format!("--token={token}"))
            .args(args)
            .output()?)
    }

    /// `kubectl auth whoami` as `token`, retried while the apiserver's JWT authenticator
    /// initializes (it polls the issuer's discovery document every 10 s until it answers).
    async fn whoami(&self, token: &str) -> Result<Value> {
        let started = Instant::now();
        let review = eventually(Duration::from_secs(60), || async {
            let out = self.kubectl_as(token, &["auth", "whoami", "-o", "json"])?;
            ensure!(
                out.status.success(),
                "kubectl auth whoami: {}",
                stderr(&out)
            );
            Ok(serde_json::from_slice::<Value>(&out.stdout)?)
        })
        .await?;
        println!(
            "kubectl auth whoami with the JWT after {:?}",
            started.elapsed()
        );
        Ok(review["status"]["userInfo"].clone())
    }

    /// The kids `port` publishes in its JWKS, sorted.
    async fn published_kids(&self, port: u16) -> Result<Vec<String>> {
        let r = self.get_on(port, "/jwks").await?;
        ensure!(r.status == StatusCode::OK, "/jwks answered {}", r.status);
        let mut kids: Vec<String> = r.body["keys"]
            .as_array()
            .context("keys")?
            .iter()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect();
        kids.sort();
        Ok(kids)
    }

    /// The signing keys stored in the Secret: (kid, base64 PKCS#8).
    async fn stored_keys(&self) -> Result<Vec<(String, String)>> {
        let secrets: Api<Secret> =
            Api::namespaced(self.cluster.client().await?, &self.records.name);
        let secret = secrets.get("patrol-signing-keys").await?;
        assert_eq!(secret.type_.as_deref(), Some("patrol.dev/signing-keys"));
        let data = secret
            .data
            .and_then(|d| d.get("keys.json").cloned())
            .context("no keys.json")?;
        let stored: Value = serde_json::from_slice(&data.0)?;
        Ok(stored["keys"]
            .as_array()
            .context("keys")?
            .iter()
            .map(|k| {
                (
                    k["kid"].as_str().unwrap_or_default().to_owned(),
                    k["privateKey"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// No PAT, hash, JWT, ServiceAccount token or private key in any webhook's log.
    async fn assert_logs_clean(&self) -> Result<()> {
        let keys = self.stored_keys().await?;
        let mut logs = vec![self.webhook.output()];
        logs.extend(self.replicas.iter().map(|(p, _)| p.output()));
        for log in &logs {
            assert!(!log.is_empty(), "no log captured");
            for issued in &self.issued {
                let t = issued.token.expose_secret();
                assert!(!log.contains(t), "a log contains a PAT");
                assert!(
                    !log.contains(&t[t.len() - 38..]),
                    "a log contains a PAT secret"
                );
            }
            for secret in &self.secrets {
                assert!(
                    !log.contains(secret.as_str()),
                    "a log contains a JWT, SA token or hash"
                );
                if let Some(signature) = secret.rsplit('.').next().filter(|s| s.len() > 40) {
                    assert!(!log.contains(signature), "a log contains a token signature");
                }
            }
            for (_, private) in &keys {
                assert!(private.len() > 100, "stored keys look like PKCS#8");
                assert!(
                    !log.contains(private.as_str()),
                    "a log contains a private key"
                );
                assert!(
                    !log.contains(&private[40..80]),
                    "a log contains part of a private key"
                );
            }
            assert!(!log.contains("privateKey"));
        }
        println!(
            "webhook logs: {} lines, no PAT, JWT, ServiceAccount token or key material",
            logs.iter().map(|l| l.lines().count()).sum::<usize>()
        );
        Ok(())
    }
}

/// One HTTPS request; the body is parsed as JSON when it is JSON.
async fn send(
    client: &Https,
    port: u16,
    method: Method,
    path: &str,
    body: Vec<u8>,
    content_type: Option<&str>,
    authorization: Option<&str>,
) -> Result<Reply> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("https://127.0.0.1:{port}{path}"));
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    if let Some(auth) = authorization {
        request = request.header(header::AUTHORIZATION, auth);
    }
    let request = request.body(Full::new(Bytes::from(body)))?;
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request)).await??;
    let (status, version, headers) = (
        response.status(),
        response.version(),
        response.headers().clone(),
    );
    let bytes = response.into_body().collect().await?.to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok(Reply {
        status,
        version,
        headers,
        body,
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// What most tests grant: the kube audience (default) and a second one, one actor.
fn grant(actors: &[&str]) -> ExchangeGrant {
    ExchangeGrant {
        audiences: Some(vec![
            KUBE_AUDIENCE.into(),
            "vault".into(),
            "https://api.example.com/".into(),
        ]),
        default_audience: Some(KUBE_AUDIENCE.into()),
        allowed_actors: actors.iter().map(|a| (*a).to_owned()).collect(),
        max_ttl_seconds: 900,
    }
}

#[tokio::test]
async fn an_exchanged_jwt_works_with_kubectl_and_rbac_applies_to_its_groups() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let mut env = Env::start("ex-kubectl", &[]).await?;

    // Discovery as the apiserver reads it.
    let doc = env
        .get_on(env.port, "/.well-known/openid-configuration")
        .await?;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["issuer"], env.issuer.as_str());
    assert_eq!(doc.body["jwks_uri"], format!("{}/jwks", env.issuer));
    assert_eq!(
        doc.body["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    let jwks = env.get_on(env.port, "/jwks").await?;
    assert_eq!(
        jwks.body["keys"].as_array().map(Vec::len),
        Some(2),
        "current + next"
    );

    let i = env
        .issue("laptop", &["read:pods", "deploy"], None, grant(&[]))
        .await?;
    // Scopes restrict (Patrol's authorization webhook): read:pods must permit reading pods
    // for the scope group's RoleBinding to matter.
    patrol_e2e::token_service::define_read_pods_scope(env.cluster, "e2e-read-pods").await?;
    env.wait_indexed(i).await?;
    let (jwt, answer) = env.exchange_ok(i, &[("scope", "read:pods")]).await?;
    assert_eq!(answer["issued_token_type"], TT_ACCESS);
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 900);
    assert_eq!(answer["scope"], "read:pods");
    let header = jwt_part(&jwt, 0)?;
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "JWT");
    assert!(
        jwks.body["keys"]
            .as_array()
            .is_some_and(|keys| keys.iter().any(|k| k["kid"] == header["kid"])),
        "signed with a published key"
    );
    let claims = jwt_part(&jwt, 1)?;
    println!("claims: {claims}");
    assert_eq!(claims["aud"], KUBE_AUDIENCE);
    assert_eq!(claims["sub"], OWNER);
    assert_eq!(claims["patrol_tid"], env.issued[i].record.token_id);

    // The apiserver verifies it through discovery + JWKS.
    let user = env.whoami(&jwt).await?;
    println!("whoami (JWT): {user}");
    assert_eq!(user["username"], OWNER);
    assert_eq!(user["uid"], "alice-uid");
    let groups = strings(&user["groups"]);
    for g in [
        "team-a-devs",
        "patrol:scope:read:pods",
        "system:authenticated",
    ] {
        assert!(groups.contains(&g), "missing {g} in {groups:?}");
    }
    assert!(
        !groups.contains(&"patrol:scope:deploy"),
        "the JWT carries the requested scope only"
    );
    assert_eq!(
        user["extra"]["patrol.dev/token-id"],
        json!([env.issued[i].record.token_id])
    );

    // RBAC bound to the scope group applies to the JWT.
    let client = env.cluster.client().await?;
    let allowed = TestNamespace::create(env.cluster, "ex-rbac").await?;
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
    eventually(Duration::from_secs(10), || async {
        let out = env.kubectl_as(&jwt, &["get", "pods", "-n", &allowed.name])?;
        ensure!(out.status.success(), "kubectl get pods: {}", stderr(&out));
        Ok(())
    })
    .await?;
    let denied = env.kubectl_as(&jwt, &["get", "pods", "-n", &env.pats.name])?;
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains(&format!("User \"{OWNER}\" cannot list resource \"pods\"")),
        "{}",
        stderr(&denied)
    );
    // A JWT only scoped to `deploy` cannot read pods even where read:pods could.
    let (deploy_only, _) = env.exchange_ok(i, &[("scope", "deploy")]).await?;
    let out = env.kubectl_as(&deploy_only, &["get", "pods", "-n", &allowed.name])?;
    assert!(
        !out.status.success(),
        "RBAC follows the JWT's own scope groups"
    );

    // A JWT for another audience is not a Kubernetes credential.
    let (for_vault, _) = env.exchange_ok(i, &[("audience", "vault")]).await?;
    assert_eq!(jwt_part(&for_vault, 1)?["aud"], "vault");
    let out = env.kubectl_as(&for_vault, &["auth", "whoami"])?;
    assert!(
        !out.status.success() && stderr(&out).contains("Unauthorized"),
        "{}",
        stderr(&out)
    );

    // Revoking the PAT: the PAT stops at once; its JWT is refused by introspection, while
    // the apiserver, which verifies JWTs offline, accepts it until it expires (≤ the
    // exchange max TTL) — the documented reason to keep that TTL short.
    let sa = env.sa_token("checker")?;
    env.allow_introspection("checker").await?;
    let active = eventually(Duration::from_secs(10), || async {
        let r = env.introspect_on(env.port, Some(&sa), &jwt).await?;
        ensure!(r.status == StatusCode::OK, "{}: {}", r.status, r.body);
        Ok(r.body)
    })
    .await?;
    assert_eq!(active["active"], true);
    env.delete_record(i).await?;
    eventually(Duration::from_secs(5), || async {
        let r = env.introspect_on(env.port, Some(&sa), &jwt).await?;
        ensure!(r.body == json!({"active": false}), "still {}", r.body);
        Ok(())
    })
    .await?;
    let pat_out = env.kubectl_as(env.token(i), &["auth", "whoami"])?;
    assert!(!pat_out.status.success(), "the revoked PAT is refused");
    let jwt_out = env.kubectl_as(&jwt, &["auth", "whoami"])?;
    println!(
        "after revocation: PAT refused; JWT introspects inactive; kube-apiserver still accepts the JWT: {}",
        jwt_out.status.success()
    );

    let metrics = env.get_on(env.port, "/metrics").await?;
    let metrics = metrics.body.as_str().unwrap_or_default();
    assert!(
        metrics
            .contains("patrol_webhook_oauth_requests_total{endpoint=\"token\",outcome=\"issued\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("patrol_webhook_signing_key_writes_total{result=\"created\"} 1"));
    assert!(!metrics.contains(&jwt));
    env.assert_logs_clean().await
}

/// One RFC 8693 row: what is sent, what comes back.
struct ExchangeCase<'a> {
    what: &'a str,
    body: Vec<u8>,
    content_type: Option<&'a str>,
    authorization: Option<&'a str>,
    status: StatusCode,
    error: &'a str,
}

#[tokio::test]
async fn rfc8693_conformance() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let mut env = Env::start("ex-8693", &[]).await?;
    let runner = env.service_account("runner")?;
    let i = env
        .issue("ci", &["read:pods", "deploy"], None, grant(&[&runner]))
        .await?;
    let disabled = env
        .issue(
            "no-exchange",
            &[],
            None,
            ExchangeGrant {
                max_ttl_seconds: 0,
                ..grant(&[])
            },
        )
        .await?;
    let open = env
        .issue(
            "open",
            &[],
            None,
            ExchangeGrant {
                audiences: None,
                default_audience: None,
                allowed_actors: Vec::new(),
                max_ttl_seconds: 900,
            },
        )
        .await?;
    let soon = env
        .issue(
            "soon",
            &["read:pods"],
            Some(Utc::now() + chrono::Duration::seconds(120)),
            grant(&[]),
        )
        .await?;
    let expired = env
        .issue(
            "expired",
            &[],
            Some(Utc::now() - chrono::Duration::seconds(5)),
            grant(&[]),
        )
        .await?;
    let revoked = env.issue("revoked", &[], None, grant(&[])).await?;
    for k in [i, disabled, open, soon] {
        env.wait_indexed(k).await?;
    }
    env.delete_record(revoked).await?;
    let runner_token = env.sa_token("runner")?;
    let intruder_token = env.sa_token("intruder")?;

    // Successes: every optional parameter.
    let (jwt, answer) = env.exchange_ok(i, &[]).await?;
    let claims = jwt_part(&jwt, 1)?;
    assert_eq!(claims["aud"], KUBE_AUDIENCE, "default audience");
    assert_eq!(claims["scope"], "read:pods deploy", "all granted scopes");
    assert_eq!(answer["scope"], "read:pods deploy");
    assert_eq!(answer["issued_token_type"], TT_ACCESS);
    let lifetime =
        claims["exp"].as_i64().unwrap_or_default() - claims["iat"].as_i64().unwrap_or_default();
    assert_eq!(lifetime, 900, "policy exchange max TTL");
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    assert_eq!(claims["iss"], env.issuer.as_str());
    assert_eq!(claims["patrol_pat"], format!("{}/ci", env.pats.name));

    let pat_type = env.token(i).to_owned();
    let (pat_jwt, answer) = env
        .exchange_ok_on(
            env.port,
            i,
            &[
                ("requested_token_type", TT_JWT),
                ("client_id", "patrol-cli/1.0"),
                ("audience", "vault"),
                ("resource", "https://api.example.com/"),
                ("scope", "deploy unknown"),
            ],
        )
        .await?;
    assert_eq!(answer["issued_token_type"], TT_JWT);
    assert_eq!(answer["scope"], "deploy", "requested ∩ granted");
    let claims = jwt_part(&pat_jwt, 1)?;
    assert_eq!(claims["aud"], json!(["vault", "https://api.example.com/"]));
    assert_eq!(claims["client_id"], "patrol-cli/1.0");
    assert_eq!(
        claims["groups"],
        json!(["team-a-devs", "patrol:scope:deploy"])
    );
    let reply = env
        .exchange(&[
            ("grant_type", GRANT),
            ("subject_token", &pat_type),
            ("subject_token_type", TT_PAT),
            ("audience", ""),
        ])
        .await?;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "subject type pat; empty audience is absent: {}",
        reply.body
    );

    let (short, _) = env.exchange_ok(soon, &[]).await?;
    let claims = jwt_part(&short, 1)?;
    let exp = claims["exp"].as_i64().unwrap_or_default();
    let pat_exp = env.issued[soon]
        .record
        .expires_at
        .context("expiry")?
        .timestamp();
    assert!(
        exp <= pat_exp && exp > pat_exp - 10,
        "clamped to the PAT's expiry"
    );

    let (acting, _) = env
        .exchange_ok(
            i,
            &[("actor_token", &runner_token), ("actor_token_type", TT_JWT)],
        )
        .await?;
    let claims = jwt_part(&acting, 1)?;
    println!(
        "act claim from a real ServiceAccount token: {}",
        claims["act"]
    );
    assert_eq!(claims["act"], json!({"sub": runner}));
    assert_eq!(claims["sub"], OWNER, "the subject stays the owner");
    let (acting_at, _) = env
        .exchange_ok(
            i,
            &[
                ("actor_token", &runner_token),
                ("actor_token_type", TT_ACCESS),
            ],
        )
        .await?;
    assert_eq!(jwt_part(&acting_at, 1)?["act"], json!({"sub": runner}));

    // Errors: every code, every parameter.
    let t = env.token(i).to_owned();
    let base = |extra: &[(&str, &str)]| -> Vec<u8> {
        let mut pairs = vec![
            ("grant_type", GRANT),
            ("subject_token", t.as_str()),
            ("subject_token_type", TT_ACCESS),
        ];
        pairs.extend_from_slice(extra);
        form(&pairs)
    };
    let subject = |token: &str| {
        form(&[
            ("grant_type", GRANT),
            ("subject_token", token),
            ("subject_token_type", TT_ACCESS),
        ])
    };
    let forged = {
        let id = env.issued[i].token.id().to_string();
        let body = format!("patrol_{id}_{}", "Z".repeat(token::SECRET_LEN));
        let mut sum = crc32fast::hash(body.as_bytes());
        const ALPHABET: &[u8; 62] =
            b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let mut check = [b'0'; token::CHECKSUM_LEN];
        for slot in check.iter_mut().rev() {
            *slot = ALPHABET[(sum % 62) as usize];
            sum /= 62;
        }
        format!("{body}{}", String::from_utf8_lossy(&check))
    };
    let unknown = token::generate()?;
    let bad = StatusCode::BAD_REQUEST;
    let row = |what, body, status, error| ExchangeCase {
        what,
        body,
        content_type: Some(FORM),
        authorization: None,
        status,
        error,
    };
    let mut cases = vec![
        row(
            "no grant_type",
            form(&[("subject_token", &t), ("subject_token_type", TT_ACCESS)]),
            bad,
            "invalid_request",
        ),
        row(
            "grant_type repeated",
            form(&[
                ("grant_type", GRANT),
                ("grant_type", GRANT),
                ("subject_token", &t),
                ("subject_token_type", TT_ACCESS),
            ]),
            bad,
            "invalid_request",
        ),
        row(
            "other grant_type",
            form(&[("grant_type", "client_credentials")]),
            bad,
            "unsupported_grant_type",
        ),
        row(
            "no subject_token",
            form(&[("grant_type", GRANT), ("subject_token_type", TT_ACCESS)]),
            bad,
            "invalid_request",
        ),
        row(
            "no subject_token_type",
            form(&[("grant_type", GRANT), ("subject_token", &t)]),
            bad,
            "invalid_request",
        ),
        row(
            "unsupported subject_token_type",
            form(&[
                ("grant_type", GRANT),
                ("subject_token", &t),
                (
                    "subject_token_type",
                    "urn:ietf:params:oauth:token-type:id_token",
                ),
            ]),
            bad,
            "invalid_request",
        ),
        row(
            "subject_token repeated",
            base(&[("subject_token", &t)]),
            bad,
            "invalid_request",
        ),
        row(
            "scope repeated",
            base(&[("scope", "deploy"), ("scope", "read:pods")]),
            bad,
            "invalid_request",
        ),
        row(
            "actor_token without type",
            base(&[("actor_token", &runner_token)]),
            bad,
            "invalid_request",
        ),
        row(
            "actor_token_type without token",
            base(&[("actor_token_type", TT_JWT)]),
            bad,
            "invalid_request",
        ),
        row(
            "unsupported actor_token_type",
            base(&[
                ("actor_token", &runner_token),
                ("actor_token_type", "urn:ietf:params:oauth:token-type:saml2"),
            ]),
            bad,
            "invalid_request",
        ),
        row(
            "actor not allowed",
            base(&[
                ("actor_token", &intruder_token),
                ("actor_token_type", TT_JWT),
            ]),
            bad,
            "invalid_request",
        ),
        row(
            "actor token not valid",
            base(&[
                ("actor_token", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
                ("actor_token_type", TT_JWT),
            ]),
            bad,
            "invalid_request",
        ),
        row(
            "requested_token_type id_token",
            base(&[(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            )]),
            bad,
            "invalid_request",
        ),
        row(
            "requested_token_type refresh_token",
            base(&[(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token",
            )]),
            bad,
            "invalid_request",
        ),
        row(
            "malformed client_id",
            base(&[("client_id", "tab\there")]),
            bad,
            "invalid_request",
        ),
        row(
            "no audience and no default",
            form(&[
                ("grant_type", GRANT),
                ("subject_token", env.token(open)),
                ("subject_token_type", TT_ACCESS),
            ]),
            bad,
            "invalid_request",
        ),
        row(
            "client_secret",
            base(&[("client_id", "c"), ("client_secret", "s")]),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        row(
            "client_assertion",
            base(&[
                ("client_assertion", "x"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
            ]),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        row("garbage PAT", subject("not-a-token"), bad, "invalid_grant"),
        row(
            "unknown PAT",
            subject(unknown.expose_secret()),
            bad,
            "invalid_grant",
        ),
        row("forged PAT", subject(&forged), bad, "invalid_grant"),
        row(
            "expired PAT",
            subject(env.token(expired)),
            bad,
            "invalid_grant",
        ),
        row(
            "revoked PAT",
            subject(env.token(revoked)),
            bad,
            "invalid_grant",
        ),
        row(
            "exchange disabled by policy",
            subject(env.token(disabled)),
            bad,
            "unauthorized_client",
        ),
        row(
            "scope not granted",
            base(&[("scope", "admin")]),
            bad,
            "invalid_scope",
        ),
        row(
            "malformed scope",
            base(&[("scope", "a  b")]),
            bad,
            "invalid_scope",
        ),
        row(
            "audience not allowed",
            base(&[("audience", "elsewhere")]),
            bad,
            "invalid_target",
        ),
        row(
            "one of two audiences not allowed",
            base(&[("audience", "vault"), ("audience", "elsewhere")]),
            bad,
            "invalid_target",
        ),
        row(
            "resource not absolute",
            base(&[("resource", "api.example.com")]),
            bad,
            "invalid_target",
        ),
        row(
            "resource with fragment",
            base(&[("resource", "https://api.example.com/#x")]),
            bad,
            "invalid_target",
        ),
        row(
            "resource not allowed",
            base(&[("resource", "https://other.example.com/")]),
            bad,
            "invalid_target",
        ),
    ];
    cases.push(ExchangeCase {
        authorization: Some("Basic Y2xpZW50OnNlY3JldA=="),
        ..row(
            "client authenticates with Basic",
            base(&[]),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        )
    });
    cases.push(ExchangeCase {
        content_type: Some("application/json"),
        ..row(
            "JSON body",
            serde_json::to_vec(&json!({"grant_type": GRANT, "subject_token": t}))?,
            bad,
            "invalid_request",
        )
    });
    cases.push(ExchangeCase {
        content_type: None,
        ..row("no content type", base(&[]), bad, "invalid_request")
    });
    cases.push(row(
        "not UTF-8",
        b"grant_type=%FF".to_vec(),
        bad,
        "invalid_request",
    ));

    let mut invalid_grant_answers = Vec::new();
    let count = cases.len();
    for case in cases {
        let reply = send(
            &env.http1,
            env.port,
            Method::POST,
            "/oauth2/token",
            case.body,
            case.content_type,
            case.authorization,
        )
        .await?;
        assert_eq!(
            (reply.status, reply.error()),
            (case.status, case.error),
            "{}: {}",
            case.what,
            reply.body
        );
        reply.assert_no_store(case.what);
        let description = reply.body["error_description"].as_str().unwrap_or_default();
        assert!(!description.is_empty(), "{}", case.what);
        assert!(
            description
                .bytes()
                .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E)),
            "{}: error_description outside RFC 6749's characters",
            case.what
        );
        assert!(
            !reply.body.to_string().contains(&t) && !reply.body.to_string().contains(&runner_token),
            "{}: the answer quotes a token",
            case.what
        );
        if case.status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                reply.headers[header::WWW_AUTHENTICATE],
                "Basic realm=\"patrol\"",
                "{}",
                case.what
            );
        }
        if case.error == "invalid_grant" {
            invalid_grant_answers.push(reply.body.clone());
        }
        println!(
            "{:>34}: {} {} — {description}",
            case.what,
            reply.status.as_u16(),
            case.error
        );
    }
    assert!(
        invalid_grant_answers
            .iter()
            .all(|a| *a == invalid_grant_answers[0]),
        "refused PATs must be indistinguishable: {invalid_grant_answers:?}"
    );

    // Wrong method and oversized body: still OAuth JSON, still no-store.
    let get = send(
        &env.http1,
        env.port,
        Method::GET,
        "/oauth2/token",
        Vec::new(),
        None,
        None,
    )
    .await?;
    assert_eq!(
        (get.status, get.error()),
        (StatusCode::METHOD_NOT_ALLOWED, "invalid_request")
    );
    get.assert_no_store("GET");
    let huge = base(&[("pad", &"x".repeat(256 * 1024))]);
    let big = send(
        &env.http2,
        env.port,
        Method::POST,
        "/oauth2/token",
        huge,
        Some(FORM),
        None,
    )
    .await?;
    assert_eq!(
        (big.status, big.version),
        (StatusCode::PAYLOAD_TOO_LARGE, Version::HTTP_2)
    );
    assert_eq!(big.error(), "invalid_request");
    big.assert_no_store("huge body");
    println!(
        "{} error rows + GET + oversized body answered per RFC 6749 §5.2",
        count
    );

    assert!(
        env.webhook.running(),
        "webhook died:\n{}",
        env.webhook.output()
    );
    env.assert_logs_clean().await
}

#[tokio::test]
async fn rfc7662_conformance() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let mut env = Env::start("ex-7662", &[]).await?;
    let runner = env.service_account("runner")?;
    let i = env
        .issue("svc", &["read:pods"], None, grant(&[&runner]))
        .await?;
    let expired = env
        .issue(
            "expired",
            &[],
            Some(Utc::now() - chrono::Duration::seconds(5)),
            grant(&[]),
        )
        .await?;
    env.wait_indexed(i).await?;
    let caller = env.sa_token("resource-server")?;
    env.allow_introspection("resource-server").await?;
    let bystander = env.sa_token("bystander")?;
    let runner_token = env.sa_token("runner")?;
    let (jwt, _) = env
        .exchange_ok(
            i,
            &[
                ("client_id", "ci"),
                ("actor_token", &runner_token),
                ("actor_token_type", TT_JWT),
            ],
        )
        .await?;
    let pat = env.token(i).to_owned();

    // Caller authentication and authorization.
    let unauthenticated = [
        (
            "no Authorization",
            None,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "not a bearer",
            Some("Basic YTpi".to_owned()),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "bearer not accepted",
            Some("Bearer garbage".to_owned()),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "authenticated, not allowed",
            Some(format!("Bearer {bystander}")),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
    ];
    for (what, auth, status, error) in unauthenticated {
        let reply = env
            .post_form_on(
                env.port,
                "/oauth2/introspect",
                &[("token", &pat)],
                auth.as_deref(),
            )
            .await?;
        assert_eq!(
            (reply.status, reply.error()),
            (status, error),
            "{what}: {}",
            reply.body
        );
        assert!(
            reply.headers[header::WWW_AUTHENTICATE]
                .to_str()?
                .starts_with("Bearer realm=\"patrol\"")
        );
        assert!(
            reply.body.get("active").is_none(),
            "{what}: nothing told about the token"
        );
        reply.assert_no_store(what);
        println!("{what:>28}: {} {error}", reply.status.as_u16());
    }

    // RBAC changes reach the endpoint: wait for the binding to be effective.
    let pat_answer = eventually(Duration::from_secs(10), || async {
        let r = env.introspect_on(env.port, Some(&caller), &pat).await?;
        ensure!(r.status == StatusCode::OK, "{}: {}", r.status, r.body);
        r.assert_no_store("introspect PAT");
        Ok(r.body)
    })
    .await?;
    println!("PAT: {pat_answer}");
    assert_eq!(pat_answer["active"], true);
    assert_eq!(pat_answer["scope"], "read:pods");
    assert_eq!(pat_answer["username"], OWNER);
    assert_eq!(pat_answer["sub"], OWNER);
    assert_eq!(pat_answer["token_type"], "Bearer");
    assert_eq!(pat_answer["patrol_tid"], env.issued[i].record.token_id);
    assert!(pat_answer["iat"].is_i64());

    let jwt_answer = env.introspect_on(env.port, Some(&caller), &jwt).await?.body;
    println!("JWT: {jwt_answer}");
    assert_eq!(jwt_answer["active"], true);
    assert_eq!(jwt_answer["aud"], KUBE_AUDIENCE);
    assert_eq!(jwt_answer["client_id"], "ci");
    assert_eq!(jwt_answer["act"], json!({"sub": runner}));
    assert_eq!(jwt_answer["iss"], env.issuer.as_str());
    assert_eq!(jwt_answer["sub"], OWNER);
    for field in ["exp", "iat", "nbf"] {
        assert!(jwt_answer[field].is_i64(), "{field}");
    }

    // Inactive, whatever the reason: exactly {"active":false}.
    let mut tampered: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    tampered[2] = tampered[2].chars().rev().collect();
    let inactive: Vec<(&str, String)> = vec![
        ("garbage", "garbage".into()),
        ("expired PAT", env.token(expired).to_owned()),
        ("unknown PAT", token::generate()?.expose_secret().to_owned()),
        ("bad JWT signature", tampered.join(".")),
        ("a ServiceAccount JWT (not ours)", runner_token.clone()),
    ];
    for (what, token) in &inactive {
        let reply = env.introspect_on(env.port, Some(&caller), token).await?;
        assert_eq!(reply.status, StatusCode::OK, "{what}");
        assert_eq!(
            serde_json::to_string(&reply.body)?,
            r#"{"active":false}"#,
            "{what}"
        );
    }
    let hinted = env
        .post_form_on(
            env.port,
            "/oauth2/introspect",
            &[("token", &pat), ("token_type_hint", "refresh_token")],
            Some(&format!("Bearer {caller}")),
        )
        .await?;
    assert_eq!(
        hinted.body["active"], true,
        "a hint never changes the answer"
    );
    let missing = env
        .post_form_on(
            env.port,
            "/oauth2/introspect",
            &[("token_type_hint", "access_token")],
            Some(&format!("Bearer {caller}")),
        )
        .await?;
    assert_eq!(
        (missing.status, missing.error()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );

    // Revocation reaches the derived JWT.
    env.delete_record(i).await?;
    eventually(Duration::from_secs(5), || async {
        for token in [&pat, &jwt] {
            let r = env.introspect_on(env.port, Some(&caller), token).await?;
            ensure!(r.body == json!({"active": false}), "still {}", r.body);
        }
        Ok(())
    })
    .await?;
    println!("after the PAT's record was deleted: PAT and JWT both inactive");
    env.assert_logs_clean().await
}

#[tokio::test]
async fn replicas_share_the_keys_and_rotation_overlaps() -> Result<()> {
    let _port = WEBHOOK_PORT.lock().await;
    let args = [
        "--signing-key-rotation",
        "8s",
        "--max-exchanged-token-ttl",
        "10m",
    ];
    let mut env = Env::start("ex-keys", &args).await?;
    let replica = env.start_replica("ex-keys-replica", &args).await?;
    let keys = env.stored_keys().await?;
    assert_eq!(keys.len(), 2, "one Secret, created once: current + next");

    assert_eq!(
        env.published_kids(env.port).await?,
        env.published_kids(replica).await?,
        "both replicas publish the same keys"
    );

    let i = env.issue("rotating", &[], None, grant(&[])).await?;
    env.wait_indexed(i).await?;
    let caller = env.sa_token("checker")?;
    env.allow_introspection("checker").await?;
    let (first, _) = env.exchange_ok_on(replica, i, &[]).await?;
    let first_kid = jwt_part(&first, 0)?["kid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(keys.iter().any(|(kid, _)| *kid == first_kid));
    let user = env.whoami(&first).await?;
    assert_eq!(
        user["username"], OWNER,
        "a JWT from the other replica works with kubectl"
    );

    // Within a period plus a tick, the next key signs and a new next one is published.
    let started = Instant::now();
    let second = loop {
        let (jwt, _) = env.exchange_ok(i, &[]).await?;
        if jwt_part(&jwt, 0)?["kid"] != first_kid.as_str() {
            break jwt;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "no rotation after 30s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let second_kid = jwt_part(&second, 0)?["kid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!(
        "rotated {first_kid} -> {second_kid} after {:?}",
        started.elapsed()
    );
    let published = eventually(Duration::from_secs(10), || async {
        let kids = env.published_kids(env.port).await?;
        ensure!(kids.len() >= 3, "{kids:?}");
        ensure!(
            kids == env.published_kids(replica).await?,
            "replicas disagree"
        );
        Ok(kids)
    })
    .await?;
    assert!(
        published.contains(&first_kid) && published.contains(&second_kid),
        "overlap: the old key stays published"
    );
    assert!(env.stored_keys().await?.len() >= 3);

    // Tokens of both keys verify everywhere: introspection on both replicas, and kubectl.
    for jwt in [&first, &second] {
        for port in [env.port, replica] {
            let r = env.introspect_on(port, Some(&caller), jwt).await?;
            assert_eq!(r.body["active"], true, "{port}: {}", r.body);
        }
        let user = env.whoami(jwt).await?;
        assert_eq!(user["username"], OWNER);
    }
    let metrics = env.get_on(env.port, "/metrics").await?;
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    let replica_metrics = env.get_on(replica, "/metrics").await?;
    let text = format!(
        "{text}{}",
        replica_metrics.body.as_str().unwrap_or_default()
    );
    assert!(
        text.contains("patrol_webhook_signing_key_writes_total{result=\"rotated\"}"),
        "{text}"
    );
    env.assert_logs_clean().await
}

//! The shared toolkit for tests that run patrol-webhook as a host process on the control
//! plane: one HTTPS client, form encoding, JWT claim decoding, issuing a PAT the way the
//! operator does (object, token, argon2id record), exchanging it, and kubectl with a
//! bearer token alone.
//!
//! The apiserver (hack/cluster.sh, without the node) calls Patrol at
//! `https://127.0.0.1:$PATROL_WEBHOOK_PORT` for TokenReview (`/authenticate`),
//! authorization (`/authorize`) and the JWT issuer's discovery and JWKS. One port per
//! cluster: a test binary that runs the webhook serialises its tests with a lock, and test
//! binaries run one after another.

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, PostParams},
};
use patrol_api::{
    record::{ExchangeGrant, PatReference, TokenRecord},
    token::{self, HashParams, PlaintextToken, TokenHasher},
    v1alpha1::{PersonalAccessToken, TokenOwner},
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde_json::{Value, json};

use crate::{
    TestCluster, TestNamespace, eventually,
    process::{self, Process},
};

/// The audience the apiserver's JWT authenticator accepts (hack/cluster.sh).
pub const KUBE_AUDIENCE: &str = "kubernetes-patrol";
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const FORM: &str = "application/x-www-form-urlencoded";

pub type Https = HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTPS client trusting only `ca` (HTTP/1.1, or HTTP/2 alone with `h2`).
pub fn https_client(ca: &Path, h2: bool) -> Result<Https> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let mut client = HttpClient::builder(TokioExecutor::new());
    client.http2_only(h2);
    Ok(client.build(connector))
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
pub fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

/// The claims (second part) of a JWT, decoded without verifying it.
pub fn jwt_claims(jwt: &str) -> Result<Value> {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// One answer from the token service.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

/// A PAT a test issued.
pub struct Issued {
    pub token: PlaintextToken,
    pub record: TokenRecord,
    pub name: String,
}

/// patrol-webhook (with `--issuer`) on the cluster's webhook port, the namespaces for its
/// records and PATs, and clients. Field order is drop order: the webhook stops first.
pub struct TokenService {
    pub webhook: Process,
    pub cluster: &'static TestCluster,
    pub records: TestNamespace,
    pub pats: TestNamespace,
    pub port: u16,
    pub issuer: String,
    pub http: Https,
    /// A kubeconfig with the apiserver and its CA only; the token comes from `--token`.
    pub kubeconfig: PathBuf,
    pub issued: Vec<Issued>,
}

impl TokenService {
    /// Starts patrol-webhook as `name` with `extra_args` and waits until it is ready and
    /// its signing keys are published.
    pub async fn start(name: &str, extra_args: &[&str]) -> Result<Self> {
        let cluster = TestCluster::shared()?;
        cluster.install_crds().await?;
        let records = TestNamespace::create(cluster, &format!("{name}-rec")).await?;
        let pats = TestNamespace::create(cluster, name).await?;
        let port: u16 = cluster.var("PATROL_WEBHOOK_PORT")?.parse()?;
        let issuer = format!("https://127.0.0.1:{port}");
        let webhook = spawn_webhook(cluster, name, &records.name, port, &issuer, extra_args)?;
        let dir = std::env::temp_dir().join(format!("patrol-e2e-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\n\
                 users:\n- name: bearer\n  user: {{}}\ncontexts:\n- name: bearer\n  context: {{cluster: local, user: bearer}}\ncurrent-context: bearer\n",
                cluster.var("PATROL_APISERVER_PORT")?,
                cluster.var("PATROL_CA")?,
            ),
        )?;
        let service = Self {
            webhook,
            cluster,
            records,
            pats,
            port,
            issuer,
            http: https_client(Path::new(cluster.var("PATROL_CA")?), false)?,
            kubeconfig,
            issued: Vec::new(),
        };
        service.wait_ready().await?;
        Ok(service)
    }

    /// Restarts the webhook (after [`Process::kill`]) with the same namespaces.
    pub async fn restart(&mut self, name: &str, extra_args: &[&str]) -> Result<()> {
        self.webhook = spawn_webhook(
            self.cluster,
            name,
            &self.records.name,
            self.port,
            &self.issuer,
            extra_args,
        )?;
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            let ready = self.get("/readyz").await.ok();
            let jwks = self.get("/jwks").await.ok();
            if ready.is_some_and(|r| r.status == StatusCode::OK)
                && jwks.is_some_and(|r| r.status == StatusCode::OK)
            {
                return Ok(());
            }
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "patrol-webhook not ready after 60s:\n{}",
                self.webhook.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.send(Method::GET, path, Vec::new(), None).await
    }

    pub async fn post_form(&self, path: &str, pairs: &[(&str, &str)]) -> Result<Reply> {
        self.send(Method::POST, path, form(pairs), Some(FORM)).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        content_type: Option<&str>,
    ) -> Result<Reply> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("https://127.0.0.1:{}{path}", self.port));
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let response =
            tokio::time::timeout(Duration::from_secs(20), self.http.request(request)).await??;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply { status, body })
    }

    /// The value of one sample of the webhook's metrics, e.g.
    /// `patrol_webhook_http_requests_total{route="/authorize",code="200"}`; 0 when absent.
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let reply = self.get("/metrics").await?;
        let text = reply.body.as_str().context("metrics are text")?;
        Ok(text
            .lines()
            .filter_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
            .sum())
    }

    /// Creates a PAT object owned by `owner` and, as the operator would, its token and
    /// hashed record (cheap argon2 parameters; verification reads them from the hash).
    pub async fn issue(
        &mut self,
        name: &str,
        owner: TokenOwner,
        scopes: &[&str],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<usize> {
        let client = self.cluster.client().await?;
        let pats: Api<PersonalAccessToken> = Api::namespaced(client.clone(), &self.pats.name);
        let pat: PersonalAccessToken = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
            "metadata": {"name": name},
            "spec": {"displayName": format!("e2e {name}"), "owner": owner, "scopes": scopes},
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
            hash,
            hint: token.hint(),
            owner,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            scoped: !scopes.is_empty(),
            issued_at: Utc::now(),
            expires_at,
            idle_timeout_seconds: None,
            pat: PatReference {
                namespace: self.pats.name.clone(),
                name: name.into(),
                uid: pat.uid().context("uid")?,
            },
            exchange: ExchangeGrant {
                audiences: Some(vec![KUBE_AUDIENCE.into()]),
                default_audience: Some(KUBE_AUDIENCE.into()),
                allowed_actors: Vec::new(),
                max_ttl_seconds: 900,
            },
            service_account: None,
            rotation_request: None,
        };
        Api::<Secret>::namespaced(client, &self.records.name)
            .create(
                &PostParams::default(),
                &record.to_secret(&self.records.name)?,
            )
            .await?;
        self.issued.push(Issued {
            token,
            record,
            name: name.into(),
        });
        Ok(self.issued.len() - 1)
    }

    pub fn token(&self, i: usize) -> &str {
        self.issued[i].token.expose_secret()
    }

    pub fn token_id(&self, i: usize) -> &str {
        &self.issued[i].record.token_id
    }

    /// Deletes PAT `i`'s record, as the operator does when it is revoked or deleted.
    pub async fn delete_record(&self, i: usize) -> Result<()> {
        Api::<Secret>::namespaced(self.cluster.client().await?, &self.records.name)
            .delete(
                &TokenRecord::secret_name(self.token_id(i)),
                &DeleteParams::default(),
            )
            .await?;
        Ok(())
    }

    /// Exchanges PAT `i` (with `extra` form parameters) for a JWT; fails unless 200.
    pub async fn exchange(&self, i: usize, extra: &[(&str, &str)]) -> Result<String> {
        let mut pairs = vec![
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("subject_token", self.token(i)),
            ("subject_token_type", TOKEN_TYPE_ACCESS),
        ];
        pairs.extend_from_slice(extra);
        let reply = self.post_form("/oauth2/token", &pairs).await?;
        ensure!(
            reply.status == StatusCode::OK,
            "exchange answered {}: {}",
            reply.status,
            reply.body
        );
        Ok(reply.body["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned())
    }

    /// Waits until the webhook has indexed PAT `i` (watch delivery is asynchronous).
    pub async fn wait_indexed(&self, i: usize) -> Result<()> {
        eventually(Duration::from_secs(10), || async {
            let reply = self
                .send(
                    Method::POST,
                    "/authenticate",
                    serde_json::to_vec(&json!({
                        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": self.token(i)},
                    }))?,
                    Some("application/json"),
                )
                .await?;
            ensure!(
                reply.body["status"]["authenticated"] == true,
                "not indexed yet"
            );
            Ok(())
        })
        .await
    }

    /// kubectl authenticated by `token` alone.
    pub fn kubectl_as(&self, token: &str, args: &[&str]) -> Result<Output> {
        let bin = Path::new(self.cluster.var("PATROL_BIN")?).join("kubectl");
        Ok(std::process::Command::new(bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg(format!("--token={token}"))
            .args(args)
            .output()?)
    }

    /// `kubectl --token` that must succeed (retried for `timeout` while caches settle).
    pub async fn kubectl_ok_as(
        &self,
        token: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        eventually(timeout, || async {
            let out = self.kubectl_as(token, args)?;
            ensure!(
                out.status.success(),
                "kubectl {}: {}",
                args.join(" "),
                stderr(&out)
            );
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .await
    }

    /// `kubectl --token` that must fail; returns its error output.
    pub fn kubectl_refused_as(&self, token: &str, args: &[&str]) -> Result<String> {
        let out = self.kubectl_as(token, args)?;
        if out.status.success() {
            bail!(
                "kubectl {} succeeded but should have been refused: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(stderr(&out))
    }

    /// Fails if the webhook's log holds any issued token.
    pub fn assert_logs_clean(&self, more: &[&str]) -> Result<()> {
        let log = self.webhook.output();
        for issued in &self.issued {
            ensure!(
                !log.contains(issued.token.expose_secret()),
                "the webhook logged a token"
            );
            ensure!(
                !log.contains(&issued.record.hash),
                "the webhook logged a hash"
            );
        }
        for secret in more {
            ensure!(!log.contains(secret), "the webhook logged a secret");
        }
        Ok(())
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts patrol-webhook with `--issuer` on `port`, records in namespace `records`, the
/// cluster's webhook certificate and debug logging (so log scans cover every line).
pub fn spawn_webhook(
    cluster: &TestCluster,
    name: &str,
    records: &str,
    port: u16,
    issuer: &str,
    extra_args: &[&str],
) -> Result<Process> {
    let mut args: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--namespace".into(),
        records.into(),
        "--issuer".into(),
        issuer.into(),
        "--shutdown-grace".into(),
        "1s".into(),
        "--tls-cert".into(),
        cluster.var("PATROL_WEBHOOK_CERT")?.to_owned(),
        "--tls-key".into(),
        cluster.var("PATROL_WEBHOOK_KEY")?.to_owned(),
    ];
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    // Debug logging, so the scan for leaked tokens covers every log line the code has.
    let env = [(
        "RUST_LOG".to_owned(),
        "debug,h2=info,hyper=info,hyper_util=info,rustls=info,tower=info".to_owned(),
    )];
    Process::spawn(
        cluster,
        name,
        &process::binary("patrol-webhook")?,
        &args,
        &env,
    )
}

/// Defines (server-side apply, idempotent) a TokenScope `name` for `scope` with `rules`,
/// so a scoped token may do what a test needs. Cluster-scoped: use names of the test's own.
pub async fn define_scope(
    cluster: &TestCluster,
    name: &str,
    scope: &str,
    rules: Value,
) -> Result<()> {
    let object: patrol_api::v1alpha1::TokenScope = serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenScope",
        "metadata": {"name": name}, "spec": {"scope": scope, "rules": rules},
    }))?;
    Api::<patrol_api::v1alpha1::TokenScope>::all(cluster.client().await?)
        .patch(
            name,
            &kube::api::PatchParams::apply(crate::FIELD_MANAGER).force(),
            &kube::api::Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("defining TokenScope {name}"))?;
    Ok(())
}

/// Defines `read:pods` (get, list and watch pods) as TokenScope `name`: what tests that
/// read pods with a `read:pods` token need now that scopes restrict.
pub async fn define_read_pods_scope(cluster: &TestCluster, name: &str) -> Result<()> {
    define_scope(
        cluster,
        name,
        "read:pods",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]),
    )
    .await
}

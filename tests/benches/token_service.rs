//! Token service benchmark: patrol-webhook (release build) and patrol-operator against the
//! real control plane, each figure beside a baseline measured in the same run.
//!
//! `make bench` (or `cargo bench -p patrol-e2e --bench token_service`).
//!
//! - (a) TokenReview of a cached PAT at `/authenticate` vs kube-apiserver's own TokenReview
//!   API reviewing a ServiceAccount token, and vs a bare axum + rustls server answering
//!   from an HMAC-keyed map of 100k users (the ceiling DESIGN §5 measures against).
//! - (b) RFC 8693 exchange of a PAT vs the TokenRequest API minting a ServiceAccount token.
//! - (c) cached TokenReviews measured while a flood of cold validations (a known token id
//!   with a wrong secret, rate limits off, so every one costs a full argon2id verify)
//!   runs on other connections, vs the same measurement without the flood.
//! - (d) revocation latency: `spec.revoked: true` or `kubectl delete pat` until the
//!   webhook refuses the token, p50 / p99.
//! - (e) authorization: SubjectAccessReviews for a scoped PAT at `/authorize` vs the
//!   kube-apiserver's own SubjectAccessReview API (RBAC alone); and a pod list through the
//!   kube-apiserver with the scoped PAT (authentication cache + Patrol's authorizer + RBAC)
//!   vs the same list with a client certificate: the latency Patrol adds.
//!
//! - (f) exchange with associated credentials: plain exchange vs the same with a
//!   ServiceAccount token (lease, binding Secret, TokenRequest) and with a PostgreSQL user
//!   (lease, one CREATE ROLE on a real PostgreSQL on loopback), `PATROL_BENCH_CREDENTIAL_SECONDS`
//!   (5) s per run: every request leaves a credential the operator's sweep revokes 30 s later.
//!
//! `PATROL_BENCH_SECTIONS` (e.g. `b,f`) runs some sections only; (a) and (c) run together.
//!
//! The webhook listens on the port the apiserver's webhooks name (hack/cluster.sh), so the
//! apiserver consults it for (e).
//!
//! Load: closed loop, HTTP/1.1 keep-alive, `PATROL_BENCH_CONNECTIONS` (32) connections,
//! `PATROL_BENCH_RUNS` (3) runs of `PATROL_BENCH_SECONDS` (15) s each, the target and its
//! baseline interleaved run by run; the median run by throughput is reported. The load
//! generator shares the two cores with everything it measures.

// Benchmark fixtures fail loudly on impossible input.
#![allow(clippy::expect_used)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use axum::{Json, Router, extract::State, routing};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use patrol_api::v1alpha1::{CredentialProvider, PersonalAccessToken, Phase};
use patrol_e2e::{
    TestCluster, TestNamespace,
    load::{self, ClientCert, HttpsClient, LoadStats},
    operator::{Operator, OperatorOptions, delivered_token, wait_for_phase},
    postgres::Postgres,
    process::{self, Process},
};
use serde_json::{Value, json};

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const AUDIENCE: &str = "kubernetes-patrol";
const FORM: &str = "application/x-www-form-urlencoded";

struct Settings {
    connections: usize,
    runs: usize,
    seconds: u64,
    revocations: usize,
    credential_seconds: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Settings {
    fn from_env() -> Self {
        Self {
            connections: env_or("PATROL_BENCH_CONNECTIONS", 32),
            runs: env_or("PATROL_BENCH_RUNS", 3),
            seconds: env_or("PATROL_BENCH_SECONDS", 15),
            revocations: env_or("PATROL_BENCH_REVOCATIONS", 40),
            credential_seconds: env_or("PATROL_BENCH_CREDENTIAL_SECONDS", 5),
        }
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn post(url: &str, content_type: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .expect("a well-formed request")
}

fn token_review_body(token: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}
        }))
        .expect("serializable"),
    )
}

fn contains(body: &Bytes, needle: &[u8]) -> bool {
    body.windows(needle.len()).any(|w| w == needle)
}

fn authenticated(status: StatusCode, body: &Bytes) -> bool {
    status.is_success() && contains(body, br#""authenticated":true"#)
}

/// Everything the benchmark runs against.
struct Bench {
    cluster: &'static TestCluster,
    ns: TestNamespace,
    _records: TestNamespace,
    operator: Operator,
    webhook: Process,
    webhook_url: String,
    apiserver_url: String,
    ca: PathBuf,
    settings: Settings,
}

impl Bench {
    async fn start(settings: Settings) -> Result<Self> {
        let cluster = TestCluster::shared()?;
        cluster.install_crds().await?;
        let ns = TestNamespace::create(cluster, "bench-ts").await?;
        let records = TestNamespace::create(cluster, "bench-ts-rec").await?;
        let operator = Operator::start(
            cluster,
            &ns,
            &records,
            OperatorOptions {
                release: true,
                ..Default::default()
            },
        )?;
        // The apiserver's token webhook, authorizer and JWT issuer all name this port.
        let port: u16 = cluster.var("PATROL_WEBHOOK_PORT")?.parse()?;
        let webhook_url = format!("https://127.0.0.1:{port}");
        let args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--namespace",
            &records.name,
            "--issuer",
            &webhook_url,
            "--tls-cert",
            cluster.var("PATROL_WEBHOOK_CERT")?,
            "--tls-key",
            cluster.var("PATROL_WEBHOOK_KEY")?,
            // (c) wants every cold attempt to reach argon2: the worst case for the cached path.
            "--client-failure-burst",
            "0",
            "--token-failure-burst",
            "0",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let env = [("RUST_LOG".to_owned(), "warn".to_owned())];
        let webhook = Process::spawn(
            cluster,
            "bench-webhook",
            &process::release_binary("patrol-webhook")?,
            &args,
            &env,
        )?;
        let bench = Self {
            cluster,
            ns,
            _records: records,
            operator,
            webhook,
            webhook_url,
            apiserver_url: format!(
                "https://127.0.0.1:{}",
                cluster.var("PATROL_APISERVER_PORT")?
            ),
            ca: PathBuf::from(cluster.var("PATROL_CA")?),
            settings,
        };
        bench.wait_ready().await?;
        Ok(bench)
    }

    async fn wait_ready(&self) -> Result<()> {
        let client = self.webhook_client(1)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let request = Request::get(format!("{}/readyz", self.webhook_url))
                .body(Full::new(Bytes::new()))?;
            if let Ok(r) = client.request(request).await
                && r.status() == StatusCode::OK
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "patrol-webhook not ready after 60 s:\n{}",
                self.webhook.output()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn webhook_client(&self, connections: usize) -> Result<HttpsClient> {
        load::https_client(&self.ca, None, connections)
    }

    fn apiserver_client(&self, connections: usize) -> Result<HttpsClient> {
        let dir = PathBuf::from(self.cluster.var("PATROL_CLUSTER_DIR")?).join("pki");
        let (cert, key) = (dir.join("admin.crt"), dir.join("admin.key"));
        load::https_client(
            &self.ca,
            Some(ClientCert {
                cert: &cert,
                key: &key,
            }),
            connections,
        )
    }

    /// Creates PATs through the operator and returns their plaintext tokens.
    async fn issue_pats(&self, prefix: &str, count: usize) -> Result<Vec<(String, String)>> {
        let pats: Api<PersonalAccessToken> =
            Api::namespaced(self.cluster.client().await?, &self.ns.name);
        for i in 0..count {
            let pat: PersonalAccessToken = serde_json::from_value(json!({
                "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
                "metadata": {"name": format!("{prefix}-{i}")},
                "spec": {
                    "displayName": format!("bench {prefix} {i}"),
                    "owner": {"username": "bench@example.com", "uid": "bench-uid", "groups": ["bench-team"]},
                    "scopes": ["read:pods"],
                    "expiration": {"ttl": "1d"},
                    "exchange": {"audiences": [AUDIENCE]},
                },
            }))?;
            pats.create(&PostParams::default(), &pat).await?;
        }
        let mut tokens = Vec::with_capacity(count);
        for i in 0..count {
            let name = format!("{prefix}-{i}");
            let pat = wait_for_phase(&pats, &name, Phase::Active, Duration::from_secs(120)).await?;
            let secret = pat
                .status
                .and_then(|s| s.secret_ref)
                .map(|r| r.name)
                .context("no secretRef")?;
            let token = delivered_token(self.cluster, &self.ns.name, &secret)
                .await?
                .context("no token Secret")?;
            tokens.push((name, token));
        }
        Ok(tokens)
    }

    /// Waits until the webhook accepts `token` (its record reached the index).
    async fn wait_accepted(&self, client: &HttpsClient, token: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.reviewed(client, token).await? {
            ensure!(
                Instant::now() < deadline,
                "the webhook never accepted a fresh token"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn reviewed(&self, client: &HttpsClient, token: &str) -> Result<bool> {
        let request = post(
            &format!("{}/authenticate", self.webhook_url),
            "application/json",
            token_review_body(token),
        );
        let response = client.request(request).await?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await?
            .to_bytes();
        ensure!(status == StatusCode::OK, "TokenReview answered {status}");
        Ok(authenticated(status, &body))
    }

    /// A ServiceAccount token from the TokenRequest API.
    async fn service_account_token(&self, name: &str) -> Result<String> {
        let client = self.cluster.client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, &self.ns.name);
        let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        sas.create(&PostParams::default(), &sa).await?;
        let out = self.cluster.kubectl_ok(&[
            "create",
            "token",
            name,
            "-n",
            &self.ns.name,
            "--duration",
            "1h",
        ])?;
        Ok(out.trim().to_owned())
    }

    async fn load<M, C>(&self, client: &HttpsClient, make: M, check: C) -> Result<LoadStats>
    where
        M: Fn() -> Request<Full<Bytes>> + Send + Sync + 'static,
        C: Fn(StatusCode, &Bytes) -> bool + Send + Sync + 'static,
    {
        load::run(
            client,
            self.settings.connections,
            self.settings.duration(),
            make,
            check,
        )
        .await
    }
}

/// One row of a comparison: a label and the median of its runs.
struct Row {
    label: &'static str,
    runs: Vec<LoadStats>,
}

impl Row {
    fn new(label: &'static str) -> Self {
        Self {
            label,
            runs: Vec::new(),
        }
    }

    fn median(&self) -> &LoadStats {
        load::median_run(&self.runs).expect("at least one run")
    }
}

fn print_table(title: &str, rows: &[&Row], baseline: &Row) {
    println!("\n{title}");
    println!(
        "  {:<58} {:>10} {:>9} {:>9} {:>8}",
        "", "req/s", "p50 ms", "p99 ms", "ratio"
    );
    for row in rows {
        let m = row.median();
        let ratio = m.per_second() / baseline.median().per_second();
        println!(
            "  {:<58} {:>10.0} {:>9.2} {:>9.2} {:>7.2}x",
            row.label,
            m.per_second(),
            m.p50_ms(),
            m.p99_ms(),
            ratio
        );
    }
    let all: Vec<String> = rows
        .iter()
        .map(|r| {
            let per_run: Vec<String> = r
                .runs
                .iter()
                .map(|s| format!("{:.0}", s.per_second()))
                .collect();
            format!("{}: [{}]", r.label, per_run.join(", "))
        })
        .collect();
    println!("  runs (req/s): {}", all.join("; "));
}

/// A server with nothing but what a TokenReview answer needs: axum + rustls answering from
/// an HMAC-keyed map of `users` entries. The ceiling a cached validation is compared with.
struct BareServer {
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for BareServer {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct BareState {
    key: ring::hmac::Key,
    users: HashMap<[u8; 32], String>,
}

async fn bare_review(
    State(state): State<Arc<BareState>>,
    Json(review): Json<Value>,
) -> Json<Value> {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let tag = ring::hmac::sign(&state.key, token.as_bytes());
    let mut mac = [0u8; 32];
    mac.copy_from_slice(tag.as_ref());
    let status = match state.users.get(&mac) {
        Some(user) => {
            json!({"authenticated": true, "user": {"username": user, "groups": ["bench-team"]}})
        }
        None => json!({"authenticated": false}),
    };
    Json(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}))
}

impl BareServer {
    /// Starts on its own two-thread runtime (like the webhook's process on two cores) and
    /// returns with `known_token` among the users.
    fn start(cert: &Path, key: &Path, users: usize, known_token: &str) -> Result<Self> {
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"bare-baseline-key");
        let mut map = HashMap::with_capacity(users);
        let mut insert = |token: &str, user: String| {
            let mut mac = [0u8; 32];
            mac.copy_from_slice(ring::hmac::sign(&hmac_key, token.as_bytes()).as_ref());
            map.insert(mac, user);
        };
        for i in 0..users {
            insert(&format!("bare-token-{i}"), format!("user-{i}"));
        }
        insert(known_token, "bench@example.com".into());
        let state = Arc::new(BareState {
            key: hmac_key,
            users: map,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let port = process::free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let (cert, key) = (cert.to_owned(), key.to_owned());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await;
            let tls = match tls {
                Ok(t) => t,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("bare server TLS: {e}")));
                    return;
                }
            };
            let app = Router::new()
                .route("/authenticate", routing::post(bare_review))
                .with_state(state);
            let _ = ready_tx.send(Ok(()));
            let _ = axum_server::bind_rustls(addr, tls)
                .serve(app.into_make_service())
                .await;
        });
        ready_rx.recv_timeout(Duration::from_secs(10))??;
        Ok(Self {
            url: format!("https://127.0.0.1:{port}"),
            runtime: Some(runtime),
        })
    }
}

/// (a) and (c).
async fn token_review(bench: &Bench, token: &str, sa_token: &str, flood_token: &str) -> Result<()> {
    let s = &bench.settings;
    let webhook = bench.webhook_client(s.connections)?;
    let apiserver = bench.apiserver_client(s.connections)?;
    let bare = BareServer::start(
        Path::new(bench.cluster.var("PATROL_WEBHOOK_CERT")?),
        Path::new(bench.cluster.var("PATROL_WEBHOOK_KEY")?),
        100_000,
        token,
    )?;
    let bare_client = bench.webhook_client(s.connections)?;

    let mut patrol = Row::new("patrol-webhook /authenticate, cached PAT");
    let mut kube = Row::new("kube-apiserver TokenReview API, ServiceAccount token");
    let mut ceiling = Row::new("bare axum + rustls, HMAC map of 100k users");
    let mut flooded = Row::new("patrol-webhook cached PAT, during an argon2 flood");
    let mut flood_rate = Vec::new();

    let patrol_body = token_review_body(token);
    let sa_body = token_review_body(sa_token);
    for run in 1..=s.runs {
        eprintln!("[bench] TokenReview run {run}/{}", s.runs);
        let (url, body) = (
            format!("{}/authenticate", bench.webhook_url),
            patrol_body.clone(),
        );
        patrol.runs.push(
            bench
                .load(
                    &webhook,
                    move || post(&url, "application/json", body.clone()),
                    authenticated,
                )
                .await?,
        );

        let url = format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            bench.apiserver_url
        );
        let body = sa_body.clone();
        kube.runs.push(
            bench
                .load(
                    &apiserver,
                    move || post(&url, "application/json", body.clone()),
                    authenticated,
                )
                .await?,
        );

        let (url, body) = (format!("{}/authenticate", bare.url), patrol_body.clone());
        ceiling.runs.push(
            bench
                .load(
                    &bare_client,
                    move || post(&url, "application/json", body.clone()),
                    authenticated,
                )
                .await?,
        );

        // (c): a separate client floods cold validations while the cached ones are measured.
        let flood_client = bench.webhook_client(8)?;
        let flood_url = format!("{}/authenticate", bench.webhook_url);
        let flood_body = token_review_body(flood_token);
        let flood_duration = s.duration() + Duration::from_secs(2);
        let flood = tokio::spawn(async move {
            load::run(
                &flood_client,
                8,
                flood_duration,
                move || post(&flood_url, "application/json", flood_body.clone()),
                // Refused after a full verify, or 503 once the argon2 queue is full.
                |status, body| {
                    status == StatusCode::OK && contains(body, br#""authenticated":false"#)
                },
            )
            .await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (url, body) = (
            format!("{}/authenticate", bench.webhook_url),
            patrol_body.clone(),
        );
        flooded.runs.push(
            bench
                .load(
                    &webhook,
                    move || post(&url, "application/json", body.clone()),
                    authenticated,
                )
                .await?,
        );
        flood_rate.push(flood.await??.per_second());
    }
    print_table(
        "(a) TokenReview, cached PAT vs kube-apiserver reviewing a ServiceAccount token (ratio vs the apiserver)",
        &[&patrol, &kube, &ceiling],
        &kube,
    );
    print_table(
        "    the same against the bare server's ceiling (ratio vs the bare server)",
        &[&patrol, &ceiling],
        &ceiling,
    );
    print_table(
        "(c) cached PAT with and without an argon2 flood (ratio vs without)",
        &[&patrol, &flooded],
        &patrol,
    );
    let p99_ratio = flooded.median().p99_ms() / patrol.median().p99_ms();
    println!("  cached p99 during the flood / without: {p99_ratio:.2}x");
    flood_rate.sort_by(f64::total_cmp);
    println!(
        "  cold validations refused during the flood (median run): {:.0}/s",
        flood_rate[flood_rate.len() / 2]
    );
    Ok(())
}

/// (b).
async fn exchange(bench: &Bench, token: &str, sa_name: &str) -> Result<()> {
    let s = &bench.settings;
    let webhook = bench.webhook_client(s.connections)?;
    let apiserver = bench.apiserver_client(s.connections)?;
    let form = Bytes::from(format!(
        "grant_type={}&subject_token_type={}&subject_token={}&audience={AUDIENCE}&scope=read%3Apods",
        urlencode(GRANT),
        urlencode(ACCESS_TOKEN),
        urlencode(token)
    ));
    let request_body = Bytes::from(serde_json::to_vec(&json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [AUDIENCE], "expirationSeconds": 900}
    }))?);
    let mut patrol = Row::new("patrol-webhook /oauth2/token, PAT -> ES256 JWT");
    let mut kube = Row::new("kube-apiserver TokenRequest, ServiceAccount token");
    for run in 1..=s.runs {
        eprintln!("[bench] exchange run {run}/{}", s.runs);
        let (url, body) = (format!("{}/oauth2/token", bench.webhook_url), form.clone());
        patrol.runs.push(
            bench
                .load(
                    &webhook,
                    move || post(&url, FORM, body.clone()),
                    |status, body| status == StatusCode::OK && contains(body, b"\"access_token\""),
                )
                .await?,
        );
        let url = format!(
            "{}/api/v1/namespaces/{}/serviceaccounts/{sa_name}/token",
            bench.apiserver_url, bench.ns.name
        );
        let body = request_body.clone();
        kube.runs.push(
            bench
                .load(
                    &apiserver,
                    move || post(&url, "application/json", body.clone()),
                    |status, body| status.is_success() && contains(body, b"\"token\""),
                )
                .await?,
        );
    }
    print_table(
        "(b) token exchange vs TokenRequest (ratio vs TokenRequest)",
        &[&patrol, &kube],
        &kube,
    );
    Ok(())
}

/// (f).
async fn credentials(bench: &Bench) -> Result<()> {
    let s = &bench.settings;
    let client = bench.cluster.client().await?;
    let ns = bench.ns.name.as_str();
    let pg = Postgres::start()?;
    pg.create_database("bench")?;
    pg.psql(
        "bench",
        "CREATE ROLE bench_read NOLOGIN;
         CREATE ROLE patrol_admin LOGIN CREATEROLE PASSWORD 'bench-admin-pw';
         GRANT bench_read TO patrol_admin WITH ADMIN OPTION;
         GRANT pg_signal_backend TO patrol_admin;",
    )?;
    let admin: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pg-admin"},
        "stringData": {"username": "patrol_admin", "password": "bench-admin-pw"},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &bench._records.name)
        .create(&PostParams::default(), &admin)
        .await?;
    for args in [
        vec!["create", "serviceaccount", "bench-deployer", "-n", ns],
        vec![
            "create",
            "role",
            "impersonate-deployer",
            "--verb=impersonate",
            "--resource=serviceaccounts",
            "--resource-name=bench-deployer",
            "-n",
            ns,
        ],
        vec![
            "create",
            "rolebinding",
            "impersonate-deployer",
            "--role=impersonate-deployer",
            "--user=bench@example.com",
            "-n",
            ns,
        ],
    ] {
        bench.cluster.kubectl_ok(&args)?;
    }
    let suffix = std::process::id();
    let (sa_provider, pg_provider) = (format!("bench-sa-{suffix}"), format!("bench-pg-{suffix}"));
    let selector = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    let providers: Api<CredentialProvider> = Api::all(client.clone());
    for (name, kind) in [
        (&sa_provider, json!({"serviceAccount": {}})),
        (
            &pg_provider,
            json!({"postgres": {
                "host": pg.host, "port": pg.port, "database": "bench",
                "adminSecret": {"name": "pg-admin"}, "groupRole": "bench_read", "sslMode": "Disable",
            }}),
        ),
    ] {
        let mut spec = kind;
        spec["namespaceSelector"] = selector.clone();
        spec["ttl"] = json!("30s");
        providers
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "patrol.dev/v1alpha1", "kind": "CredentialProvider",
                    "metadata": {"name": name}, "spec": spec,
                }))?,
            )
            .await?;
    }
    let pats: Api<PersonalAccessToken> = Api::namespaced(client.clone(), ns);
    let pat: PersonalAccessToken = serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": "cred"},
        "spec": {
            "displayName": "bench credentials",
            "owner": {"username": "bench@example.com", "uid": "bench-uid", "groups": ["bench-team"]},
            "scopes": ["credentials", "read:pods"],
            "expiration": {"ttl": "1d"},
            "exchange": {"audiences": [AUDIENCE]},
            "credentials": {"serviceAccount": {"name": "bench-deployer"}},
        },
    }))?;
    pats.create(&PostParams::default(), &pat).await?;
    let pat = wait_for_phase(&pats, "cred", Phase::Active, Duration::from_secs(120)).await?;
    let secret = pat
        .status
        .and_then(|s| s.secret_ref)
        .map(|r| r.name)
        .context("no secretRef")?;
    let token = delivered_token(bench.cluster, ns, &secret)
        .await?
        .context("no token")?;
    let webhook = bench.webhook_client(s.connections)?;
    bench.wait_accepted(&webhook, &token).await?;

    let form = |scope: &str| {
        Bytes::from(format!(
            "grant_type={}&subject_token_type={}&subject_token={}&audience={AUDIENCE}&scope={}",
            urlencode(GRANT),
            urlencode(ACCESS_TOKEN),
            urlencode(&token),
            urlencode(scope)
        ))
    };
    let url = format!("{}/oauth2/token", bench.webhook_url);
    // The providers reach the webhook through its watch.
    for scope in [
        format!("credentials:{sa_provider}"),
        format!("credentials:{pg_provider}"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let response = webhook.request(post(&url, FORM, form(&scope))).await?;
            if response.status() == StatusCode::OK {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{scope}: exchange answered {}",
                response.status()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut plain = Row::new("exchange, JWT only");
    let mut with_sa = Row::new("exchange + ServiceAccount token");
    let mut with_pg = Row::new("exchange + PostgreSQL user");
    let duration = Duration::from_secs(s.credential_seconds);
    for run in 1..=s.runs {
        eprintln!("[bench] credentials run {run}/{}", s.runs);
        for (row, scope, marker) in [
            (&mut plain, "read:pods".to_owned(), &b"\"access_token\""[..]),
            (
                &mut with_sa,
                format!("credentials:{sa_provider}"),
                &b"\"kubernetes_service_account_token\""[..],
            ),
            (
                &mut with_pg,
                format!("credentials:{pg_provider}"),
                &b"\"db_password\""[..],
            ),
        ] {
            let (url, body) = (url.clone(), form(&scope));
            let marker = marker.to_vec();
            row.runs.push(
                load::run(
                    &webhook,
                    s.connections,
                    duration,
                    move || post(&url, FORM, body.clone()),
                    move |status, body| status == StatusCode::OK && contains(body, &marker),
                )
                .await?,
            );
        }
    }
    print_table(
        "(f) exchange with associated credentials (ratio vs plain exchange)",
        &[&plain, &with_sa, &with_pg],
        &plain,
    );
    let roles = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'patrol\\_%'",
    )?;
    println!(
        "  PostgreSQL roles still live at the end (the sweep revokes each 30 s after its exchange): {roles}"
    );
    pats.delete("cred", &DeleteParams::default()).await?;
    for name in [&sa_provider, &pg_provider] {
        let _ = providers.delete(name, &DeleteParams::default()).await;
    }
    Ok(())
}

/// (d): revoke (or delete) one cached PAT at a time; time until the webhook refuses it.
async fn revocation(bench: &Bench) -> Result<()> {
    let count = bench.settings.revocations;
    eprintln!("[bench] issuing {count} PATs for the revocation measurement");
    let tokens = bench.issue_pats("revoke", count).await?;
    let client = bench.webhook_client(2)?;
    for (_, token) in &tokens {
        bench.wait_accepted(&client, token).await?;
    }
    let pats: Api<PersonalAccessToken> =
        Api::namespaced(bench.cluster.client().await?, &bench.ns.name);
    let (mut by_revoke, mut by_delete) = (Vec::new(), Vec::new());
    for (i, (name, token)) in tokens.iter().enumerate() {
        // Still cached: the measurement includes evicting the cached answer.
        ensure!(
            bench.reviewed(&client, token).await?,
            "{name} is not accepted before revocation"
        );
        let started = Instant::now();
        if i % 2 == 0 {
            let patch = json!({"spec": {"revoked": true}});
            pats.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        } else {
            pats.delete(name, &DeleteParams::default()).await?;
        }
        loop {
            if !bench.reviewed(&client, token).await? {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{name} still accepted 30 s after revocation");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = started.elapsed();
        if i % 2 == 0 {
            by_revoke.push(took)
        } else {
            by_delete.push(took)
        }
    }
    let mut all: Vec<Duration> = by_revoke.iter().chain(&by_delete).copied().collect();
    println!("\n(d) revocation latency: the write returns -> the webhook refuses the cached token");
    println!(
        "  {:<30} {:>8} {:>9} {:>9} {:>9}",
        "", "samples", "p50 ms", "p99 ms", "max ms"
    );
    for (label, samples) in [
        ("spec.revoked: true", &mut by_revoke),
        ("delete", &mut by_delete),
        ("all", &mut all),
    ] {
        println!(
            "  {label:<30} {:>8} {:>9.0} {:>9.0} {:>9.0}",
            samples.len(),
            load::sample_quantile_ms(samples, 0.5),
            load::sample_quantile_ms(samples, 0.99),
            load::sample_quantile_ms(samples, 1.0)
        );
    }
    Ok(())
}

/// (e).
async fn authorization(bench: &Bench, token: &str) -> Result<()> {
    let s = &bench.settings;
    let ns = &bench.ns.name;
    let token_id = patrol_api::token::parse(token)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .id()
        .to_string();
    // The PATs' owner may read pods in the bench namespace; read:pods permits it.
    bench.cluster.kubectl_ok(&[
        "create",
        "rolebinding",
        "bench-view",
        "-n",
        ns,
        "--clusterrole",
        "view",
        "--user",
        "bench@example.com",
    ])?;
    patrol_e2e::token_service::define_read_pods_scope(bench.cluster, "bench-read-pods").await?;
    let review = |extra: Value| {
        Bytes::from(
            serde_json::to_vec(&json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {
                    "user": "bench@example.com", "groups": ["bench-team", "system:authenticated"],
                    "extra": extra,
                    "resourceAttributes": {"namespace": ns, "verb": "list", "version": "v1", "resource": "pods"},
                },
            }))
            .expect("json"),
        )
    };
    let patrol_body = review(json!({"patrol.dev/token-id": [token_id]}));
    let kube_body = review(json!({}));
    let webhook = bench.webhook_client(s.connections)?;
    let apiserver = bench.apiserver_client(s.connections)?;
    let bearer = load::https_client(&bench.ca, None, s.connections)?;
    let pods_url = format!(
        "{}/api/v1/namespaces/{ns}/pods?limit=1",
        bench.apiserver_url
    );
    // Warm: the apiserver authenticates the PAT once (then from its 10 s cache).
    let probe = Request::get(&pods_url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = bearer.request(probe.clone()).await?.status();
        if status == StatusCode::OK {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "listing pods with the scoped PAT answers {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut patrol = Row::new("patrol-webhook /authorize, scoped PAT");
    let mut kube = Row::new("kube-apiserver SubjectAccessReview (RBAC)");
    let mut with_pat = Row::new("GET pods via apiserver, scoped PAT");
    let mut with_cert = Row::new("GET pods via apiserver, client cert");
    for run in 1..=s.runs {
        eprintln!("[bench] authorization run {run}/{}", s.runs);
        let (url, body) = (
            format!("{}/authorize", bench.webhook_url),
            patrol_body.clone(),
        );
        patrol.runs.push(
            bench
                .load(
                    &webhook,
                    move || post(&url, "application/json", body.clone()),
                    |status, body| status == StatusCode::OK && contains(body, b"\"allowed\":false"),
                )
                .await?,
        );
        let url = format!(
            "{}/apis/authorization.k8s.io/v1/subjectaccessreviews",
            bench.apiserver_url
        );
        let body = kube_body.clone();
        kube.runs.push(
            bench
                .load(
                    &apiserver,
                    move || post(&url, "application/json", body.clone()),
                    |status, body| status.is_success() && contains(body, b"\"allowed\""),
                )
                .await?,
        );
        let (url, auth) = (pods_url.clone(), format!("Bearer {token}"));
        with_pat.runs.push(
            bench
                .load(
                    &bearer,
                    move || {
                        Request::get(&url)
                            .header(header::AUTHORIZATION, &auth)
                            .body(Full::new(Bytes::new()))
                            .expect("request")
                    },
                    |status, _| status == StatusCode::OK,
                )
                .await?,
        );
        let url = pods_url.clone();
        with_cert.runs.push(
            bench
                .load(
                    &apiserver,
                    move || {
                        Request::get(&url)
                            .body(Full::new(Bytes::new()))
                            .expect("request")
                    },
                    |status, _| status == StatusCode::OK,
                )
                .await?,
        );
    }
    print_table(
        "(e) SubjectAccessReview: Patrol's authorizer vs the apiserver's API (ratio vs the apiserver)",
        &[&patrol, &kube],
        &kube,
    );
    print_table(
        "    a pod list through the apiserver: scoped PAT vs client certificate (ratio vs the certificate)",
        &[&with_pat, &with_cert],
        &with_cert,
    );
    let (pat, cert) = (with_pat.median(), with_cert.median());
    println!(
        "  latency Patrol adds: p50 {:+.2} ms, p99 {:+.2} ms",
        pat.p50_ms() - cert.p50_ms(),
        pat.p99_ms() - cert.p99_ms()
    );
    Ok(())
}

/// A token with a real token id, another secret and a valid checksum: only argon2 can
/// refuse it, so every presentation costs one full verify.
fn forge_wrong_secret(token: &str) -> String {
    use patrol_api::token;
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let parsed = token::parse(token).expect("a delivered token parses");
    let body = format!("patrol_{}_{}", parsed.id(), "Z".repeat(token::SECRET_LEN));
    let mut sum = crc32fast::hash(body.as_bytes());
    let mut check = [b'0'; token::CHECKSUM_LEN];
    for slot in check.iter_mut().rev() {
        *slot = ALPHABET[(sum % 62) as usize];
        sum /= 62;
    }
    let forged = format!("{body}{}", String::from_utf8_lossy(&check));
    assert!(
        token::parse(&forged).is_ok(),
        "the forged token must be well-formed"
    );
    forged
}

#[tokio::main]
async fn main() -> Result<()> {
    // The bare server's axum-server builds its rustls config with the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_env();
    println!(
        "token service benchmark: release builds, {} connections, {} runs x {} s, median run shown",
        settings.connections, settings.runs, settings.seconds
    );
    let bench = Bench::start(settings).await?;
    let tokens = bench.issue_pats("hot", 2).await?;
    let (hot, flood_target) = (&tokens[0].1, &tokens[1].1);
    let probe = bench.webhook_client(1)?;
    bench.wait_accepted(&probe, hot).await?;
    let sa_token = bench.service_account_token("bench-reviewer").await?;
    let flood_token = forge_wrong_secret(flood_target);

    // `PATROL_BENCH_SECTIONS=b,f` runs only those sections (default: all).
    let sections = std::env::var("PATROL_BENCH_SECTIONS").unwrap_or_else(|_| "a,b,c,d,e,f".into());
    let wanted = |s: &str| sections.split(',').any(|w| w.trim() == s);
    if wanted("a") || wanted("c") {
        token_review(&bench, hot, &sa_token, &flood_token).await?;
    }
    if wanted("b") {
        exchange(&bench, hot, "bench-reviewer").await?;
    }
    if wanted("d") {
        revocation(&bench).await?;
    }
    if wanted("e") {
        authorization(&bench, hot).await?;
    }
    if wanted("f") {
        credentials(&bench).await?;
    }

    let rss = process::peak_rss_kib(bench.webhook.id()).unwrap_or_default();
    println!("\npatrol-webhook peak RSS: {:.1} MiB", rss as f64 / 1024.0);
    ensure!(bench.operator.process.id() > 0, "operator running");
    let log = bench.webhook.output();
    for (_, token) in &tokens {
        ensure!(
            !log.contains(token.as_str()),
            "a token reached the webhook's log"
        );
    }
    Ok(())
}

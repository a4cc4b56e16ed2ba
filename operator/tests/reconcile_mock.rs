//! The reconciler's API call sequences against a mocked apiserver (kube-rs controller-rs
//! style): a `tower_test` mock pair drives a real `kube::Client`, and a verifier answers
//! and asserts each expected request of a named scenario, in order, with 1 s timeouts.
//!
//! The decisions themselves are unit-tested in `lifecycle`; these tests pin what reaches the
//! apiserver: the order of writes that makes issuing crash-safe (status, then the hashed
//! record, then the plaintext Secret), that the record never carries the plaintext, and the
//! finalizer's cleanup.

// Test code throughout (helpers too, which `allow-expect-in-tests` does not reach): a failed
// expectation is a failed test.
#![allow(clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use http::{Method, Request, Response, StatusCode, header};
use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Client,
    api::DynamicObject,
    client::Body,
    runtime::{
        controller::Action as Requeue,
        events::{Recorder, Reporter},
        reflector,
    },
};
use patrol_api::{
    record::{self, ExchangeGrant, PatReference, TokenRecord},
    token::{self, HashParams, TokenHasher},
    v1alpha1::{
        PersonalAccessToken, PersonalAccessTokenSpec, Retention, SecretDelivery, TokenOwner,
    },
};
use patrol_operator::{
    metrics::Metrics,
    reconciler::{self, Context, FINALIZER, TOKEN_ID_ANNOTATION, TOKEN_KEY},
};
use serde_json::{Value, json};
use tokio::{task::JoinHandle, time::timeout};
use tower_test::mock::{self, Handle, SendResponse};

const RECORDS_NS: &str = "patrol-system";
const NS: &str = "team-a";
const NAME: &str = "laptop";
const UID: &str = "pat-uid";
const SECRET: &str = "laptop-token";
const STEP: Duration = Duration::from_secs(1);

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A PAT as the apiserver would hand it over, with the finalizer already added.
fn pat() -> PersonalAccessToken {
    let mut pat = PersonalAccessToken::new(
        NAME,
        PersonalAccessTokenSpec {
            display_name: "laptop kubectl".into(),
            owner: Some(TokenOwner {
                username: "alice".into(),
                uid: Some("u-1".into()),
                groups: vec!["dev".into()],
            }),
            scopes: vec!["read:pods".into()],
            secret: Some(SecretDelivery {
                retention: Some(Retention::Persistent),
                ..SecretDelivery::default()
            }),
            ..PersonalAccessTokenSpec::default()
        },
    );
    pat.metadata.namespace = Some(NS.into());
    pat.metadata.uid = Some(UID.into());
    pat.metadata.generation = Some(1);
    pat.metadata.resource_version = Some("100".into());
    pat.metadata.finalizers = Some(vec![FINALIZER.into()]);
    pat
}

fn deleting(mut pat: PersonalAccessToken) -> PersonalAccessToken {
    pat.metadata.deletion_timestamp =
        Some(Time(Timestamp::from_second(1_800_000_000).expect("time")));
    pat
}

/// The reconciler receives untyped objects.
fn dynamic(pat: &PersonalAccessToken) -> Arc<DynamicObject> {
    Arc::new(
        serde_json::from_value(serde_json::to_value(pat).expect("serialize"))
            .expect("a DynamicObject"),
    )
}

fn stored_record(token_id: &str) -> TokenRecord {
    TokenRecord {
        token_id: token_id.into(),
        hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA".into(),
        hint: format!("patrol_{token_id}_…wxyz"),
        owner: TokenOwner {
            username: "alice".into(),
            uid: Some("u-1".into()),
            groups: vec!["dev".into()],
        },
        scopes: vec!["read:pods".into()],
        scoped: false,
        issued_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time"),
        expires_at: None,
        idle_timeout_seconds: None,
        pat: PatReference {
            namespace: NS.into(),
            name: NAME.into(),
            uid: UID.into(),
        },
        exchange: ExchangeGrant {
            max_ttl_seconds: 3_600,
            ..ExchangeGrant::default()
        },
        service_account: None,
        rotation_request: Some("spec=;annotation=".into()),
    }
}

fn context() -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (policies, _) = reflector::store();
    let (namespaces, _) = reflector::store();
    let ctx = Context {
        client: client.clone(),
        namespace: RECORDS_NS.into(),
        hasher: TokenHasher::new(HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
        .expect("hasher"),
        hash_permits: Arc::new(tokio::sync::Semaphore::new(1)),
        policies,
        namespaces,
        admins: Arc::new(patrol_credentials::providers::AdminPool::new(
            client.clone(),
            RECORDS_NS,
        )),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "patrol-operator".into(),
                instance: Some("test".into()),
            },
        ),
        metrics: Arc::new(Metrics::default()),
        // Owner vetting is e2e-tested (tests/tests/admission.rs); here owners are trusted.
        owner_attestation: None,
    };
    (Arc::new(ctx), ApiServerVerifier(handle))
}

/// One request as the verifier sees it.
struct Call {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    content_type: String,
    accept: String,
    body: Vec<u8>,
    respond: SendResponse<Response<Body>>,
}

impl Call {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("a UTF-8 body")
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    fn expect(&self, step: &str, method: Method, path: &str) {
        assert_eq!(
            (&self.method, self.path.as_str()),
            (&method, path),
            "{step}: request"
        );
    }

    fn reply(self, status: StatusCode, body: &Value) {
        let response = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("response");
        self.respond.send_response(response);
    }
}

fn not_found(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{what} not found"), "reason": "NotFound", "code": 404})
}

fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200})
}

/// Decodes `a%2Fb+c` query components (enough for label selectors and field managers).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("percent escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("utf-8")
}

/// Scenarios, named for what the reconciler does in them.
enum Scenario {
    /// A PAT with the finalizer and no status: observe, write Pending, issue, deliver.
    IssueFirstToken(PersonalAccessToken),
    /// A PAT being deleted with two records and its own Secret: all go, then the finalizer.
    Cleanup(PersonalAccessToken, Vec<TokenRecord>),
    /// A PAT being deleted whose Secret name is taken by someone else's Secret: left alone.
    CleanupForeignSecret(PersonalAccessToken),
}

struct ApiServerVerifier(ApiHandle);

impl ApiServerVerifier {
    /// Answers the scenario's requests in order; panics (failing the test) on any deviation.
    fn run(self, scenario: Scenario) -> JoinHandle<ApiServerVerifier> {
        tokio::spawn(async move {
            let mut verifier = self;
            match scenario {
                Scenario::IssueFirstToken(pat) => verifier.issue_first_token(&pat).await,
                Scenario::Cleanup(pat, records) => verifier.cleanup(&pat, &records).await,
                Scenario::CleanupForeignSecret(pat) => verifier.cleanup_foreign_secret(&pat).await,
            }
            verifier
        })
    }

    /// The next request that is not an Event (Events are answered 201 and skipped: which
    /// ones are published is the lifecycle's business, tested there).
    async fn next(&mut self, step: &str) -> Call {
        loop {
            let (request, respond) = timeout(STEP, self.0.next_request())
                .await
                .unwrap_or_else(|_| panic!("{step}: no request within {STEP:?}"))
                .unwrap_or_else(|| panic!("{step}: client gone before the request"));
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.expect("request body").to_vec();
            let header = |name: header::HeaderName| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let call = Call {
                method: parts.method.clone(),
                path: parts.uri.path().to_owned(),
                query: parts
                    .uri
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        (decode(k), decode(v))
                    })
                    .collect(),
                content_type: header(header::CONTENT_TYPE),
                accept: header(header::ACCEPT),
                body,
                respond,
            };
            if call.path.starts_with("/apis/events.k8s.io/") {
                let echo = call.json();
                call.reply(StatusCode::CREATED, &echo);
                continue;
            }
            return call;
        }
    }

    /// Asserts no further (non-Event) request arrives.
    async fn done(&mut self) {
        loop {
            match timeout(Duration::from_millis(200), self.0.next_request()).await {
                Err(_) | Ok(None) => return,
                Ok(Some((request, respond))) => {
                    assert!(
                        request.uri().path().starts_with("/apis/events.k8s.io/"),
                        "unexpected extra request: {} {}",
                        request.method(),
                        request.uri()
                    );
                    let body = request.into_body().collect_bytes().await.expect("body");
                    let response = Response::builder()
                        .status(StatusCode::CREATED)
                        .body(Body::from(body.to_vec()))
                        .expect("response");
                    respond.send_response(response);
                }
            }
        }
    }

    /// The reconciler decides from the stored PAT, not the (possibly stale) watched one.
    async fn get_pat(&mut self, pat: &PersonalAccessToken) {
        let step = "read the stored PAT";
        let call = self.next(step).await;
        call.expect(
            step,
            Method::GET,
            &format!("/apis/patrol.dev/v1alpha1/namespaces/{NS}/personalaccesstokens/{NAME}"),
        );
        call.reply(StatusCode::OK, &serde_json::to_value(pat).expect("json"));
    }

    async fn list_records(&mut self, step: &str, records: &[TokenRecord]) {
        let call = self.next(step).await;
        call.expect(
            step,
            Method::GET,
            &format!("/api/v1/namespaces/{RECORDS_NS}/secrets"),
        );
        assert_eq!(
            call.param("labelSelector"),
            Some(
                format!(
                    "{}={},{}={UID}",
                    record::COMPONENT_LABEL,
                    record::COMPONENT,
                    record::PAT_UID_LABEL
                )
                .as_str()
            ),
            "{step}: records are selected by label, for this PAT only"
        );
        let items: Vec<Value> = records
            .iter()
            .map(|r| {
                serde_json::to_value(r.to_secret(RECORDS_NS).expect("record secret")).expect("json")
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "1"}, "items": items});
        call.reply(StatusCode::OK, &list);
    }

    async fn get_secret_metadata(&mut self, step: &str, found: Option<Value>) {
        let call = self.next(step).await;
        call.expect(
            step,
            Method::GET,
            &format!("/api/v1/namespaces/{NS}/secrets/{SECRET}"),
        );
        assert!(
            call.accept.contains("as=PartialObjectMetadata"),
            "{step}: metadata only, never the plaintext: {}",
            call.accept
        );
        match found {
            Some(meta) => call.reply(StatusCode::OK, &meta),
            None => call.reply(
                StatusCode::NOT_FOUND,
                &not_found(&format!("secrets \"{SECRET}\"")),
            ),
        }
    }

    async fn issue_first_token(&mut self, pat: &PersonalAccessToken) {
        self.get_pat(pat).await;
        self.list_records("list records", &[]).await;
        self.get_secret_metadata("observe the Secret", None).await;

        // Status first, and only Pending: the token is adopted by the next reconcile.
        let step = "status Pending";
        let call = self.next(step).await;
        call.expect(
            step,
            Method::PATCH,
            &format!(
                "/apis/patrol.dev/v1alpha1/namespaces/{NS}/personalaccesstokens/{NAME}/status"
            ),
        );
        assert_eq!(
            call.content_type, "application/apply-patch+yaml",
            "{step}: server-side apply"
        );
        assert_eq!(
            call.param("fieldManager"),
            Some(reconciler::FIELD_MANAGER),
            "{step}"
        );
        assert_eq!(call.param("force"), Some("true"), "{step}");
        let body = call.json();
        assert_eq!(body["kind"], "PersonalAccessToken", "{step}");
        assert_eq!(body["status"]["phase"], "Pending", "{step}");
        assert_eq!(body["status"]["conditions"][0]["type"], "Ready", "{step}");
        assert_eq!(body["status"]["conditions"][0]["status"], "False", "{step}");
        assert_eq!(
            body["status"]["conditions"][0]["reason"], "Issuing",
            "{step}"
        );
        assert!(
            body["status"].get("tokenId").is_none(),
            "{step}: no token named before it is delivered"
        );
        let mut stored = serde_json::to_value(pat).expect("json");
        stored["status"] = body["status"].clone();
        call.reply(StatusCode::OK, &stored);

        // Then the hashed record, in the operator's namespace.
        let step = "create record";
        let call = self.next(step).await;
        call.expect(
            step,
            Method::POST,
            &format!("/api/v1/namespaces/{RECORDS_NS}/secrets"),
        );
        assert_eq!(
            call.param("fieldManager"),
            Some(reconciler::FIELD_MANAGER),
            "{step}"
        );
        let record_body = call.text();
        let record_secret: Secret = serde_json::from_slice(&call.body).expect("a Secret");
        assert_eq!(
            record_secret.type_.as_deref(),
            Some(record::SECRET_TYPE),
            "{step}: type"
        );
        assert_eq!(
            record_secret.metadata.namespace.as_deref(),
            Some(RECORDS_NS),
            "{step}"
        );
        let labels = record_secret.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(record::PAT_UID_LABEL).map(String::as_str),
            Some(UID),
            "{step}: labelled with the PAT"
        );
        let record = TokenRecord::from_secret(&record_secret).expect("a readable record");
        assert_eq!(
            labels.get(record::TOKEN_ID_LABEL),
            Some(&record.token_id),
            "{step}: token-id label"
        );
        assert_eq!(
            record_secret.metadata.name,
            Some(TokenRecord::secret_name(&record.token_id)),
            "{step}: name"
        );
        assert!(
            record.hash.starts_with("$argon2id$"),
            "{step}: an argon2id hash"
        );
        assert_eq!(record.owner.username, "alice", "{step}");
        assert_eq!(record.scopes, ["read:pods"], "{step}");
        let record_json =
            String::from_utf8(serde_json::to_vec(&record).expect("json")).expect("utf-8");
        let echo = call.json();
        call.reply(StatusCode::CREATED, &echo);

        // Then the plaintext, beside the PAT, naming the token it carries.
        let step = "apply delivered Secret";
        let call = self.next(step).await;
        call.expect(
            step,
            Method::PATCH,
            &format!("/api/v1/namespaces/{NS}/secrets/{SECRET}"),
        );
        assert_eq!(
            call.content_type, "application/apply-patch+yaml",
            "{step}: server-side apply"
        );
        assert_eq!(
            call.param("fieldManager"),
            Some(reconciler::FIELD_MANAGER),
            "{step}"
        );
        assert_eq!(call.param("force"), Some("true"), "{step}");
        let delivered: Secret = serde_json::from_slice(&call.body).expect("a Secret");
        assert_eq!(delivered.metadata.namespace.as_deref(), Some(NS), "{step}");
        let annotations = delivered.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get(TOKEN_ID_ANNOTATION),
            Some(&record.token_id),
            "{step}: names the recorded token"
        );
        let labels = delivered.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(record::PAT_UID_LABEL).map(String::as_str),
            Some(UID),
            "{step}: owned by this PAT"
        );
        assert_eq!(
            labels.get(record::COMPONENT_LABEL).map(String::as_str),
            Some(reconciler::DELIVERED_COMPONENT),
            "{step}"
        );
        let owner = delivered
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default();
        assert_eq!(
            owner
                .iter()
                .map(|o| (o.kind.as_str(), o.uid.as_str()))
                .collect::<Vec<_>>(),
            [("PersonalAccessToken", UID)],
            "{step}"
        );
        let data = delivered.data.clone().unwrap_or_default();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            [TOKEN_KEY],
            "{step}: one key"
        );
        let plaintext = String::from_utf8(data[TOKEN_KEY].0.clone()).expect("utf-8 token");
        let parsed = token::parse(&plaintext).expect("a well-formed token");
        assert_eq!(
            parsed.id().as_str(),
            record.token_id,
            "{step}: the recorded token"
        );
        let hasher = TokenHasher::new(HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
        .expect("hasher");
        assert!(
            hasher.verify(&parsed, &record.hash),
            "{step}: the record validates the delivered token"
        );
        let echo = call.json();
        call.reply(StatusCode::OK, &echo);

        // The record holds nothing that recovers the token: neither the whole token nor its
        // secret part (the hint's last four characters are the checksum's).
        let secret_part = plaintext.rsplit('_').next().expect("secret part");
        let secret_part = &secret_part[..secret_part.len() - 4];
        for (what, text) in [
            ("record request body", &record_body),
            ("decoded record", &record_json),
        ] {
            assert!(
                !text.contains(&plaintext),
                "{what} contains the plaintext token"
            );
            assert!(
                !text.contains(secret_part),
                "{what} contains the token's secret"
            );
        }
        self.done().await;
    }

    async fn cleanup(&mut self, pat: &PersonalAccessToken, records: &[TokenRecord]) {
        self.get_pat(pat).await;
        self.list_records("list records", records).await;
        for r in records {
            let step = format!("delete record {}", r.token_id);
            let call = self.next(&step).await;
            call.expect(
                &step,
                Method::DELETE,
                &format!(
                    "/api/v1/namespaces/{RECORDS_NS}/secrets/{}",
                    TokenRecord::secret_name(&r.token_id)
                ),
            );
            call.reply(StatusCode::OK, &success());
            // Then its associated credentials: the leases labelled with its id.
            let step = format!("list the leases of {}", r.token_id);
            let call = self.next(&step).await;
            call.expect(
                &step,
                Method::GET,
                &format!("/api/v1/namespaces/{RECORDS_NS}/secrets"),
            );
            assert_eq!(
                call.param("labelSelector"),
                Some(patrol_api::lease::selector_for_token(&r.token_id).as_str()),
                "{step}: selector"
            );
            call.reply(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {}, "items": []}),
            );
        }
        let meta = json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {
                "name": SECRET,
                "namespace": NS,
                "labels": {record::COMPONENT_LABEL: reconciler::DELIVERED_COMPONENT, record::PAT_UID_LABEL: UID},
                "annotations": {TOKEN_ID_ANNOTATION: records[0].token_id},
            },
        });
        self.get_secret_metadata("observe the Secret", Some(meta))
            .await;

        let step = "delete owned Secret";
        let call = self.next(step).await;
        call.expect(
            step,
            Method::DELETE,
            &format!("/api/v1/namespaces/{NS}/secrets/{SECRET}"),
        );
        call.reply(StatusCode::OK, &success());

        self.remove_finalizer(pat).await;
        self.done().await;
    }

    async fn cleanup_foreign_secret(&mut self, pat: &PersonalAccessToken) {
        self.get_pat(pat).await;
        self.list_records("list records", &[]).await;
        let meta = json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {"name": SECRET, "namespace": NS, "labels": {"app": "someone-else"}},
        });
        self.get_secret_metadata("observe the Secret", Some(meta))
            .await;
        // No DELETE of the foreign Secret: straight to the finalizer.
        self.remove_finalizer(pat).await;
        self.done().await;
    }

    async fn remove_finalizer(&mut self, pat: &PersonalAccessToken) {
        let step = "remove finalizer";
        let call = self.next(step).await;
        call.expect(
            step,
            Method::PATCH,
            &format!("/apis/patrol.dev/v1alpha1/namespaces/{NS}/personalaccesstokens/{NAME}"),
        );
        assert_eq!(call.content_type, "application/json-patch+json", "{step}");
        assert_eq!(
            call.json(),
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ]),
            "{step}: only our finalizer, guarded by a test"
        );
        let mut stored = serde_json::to_value(pat).expect("json");
        stored["metadata"]["finalizers"] = json!([]);
        call.reply(StatusCode::OK, &stored);
    }
}

async fn reconcile_with(scenario: Scenario, pat: &PersonalAccessToken) -> Requeue {
    let (ctx, verifier) = context();
    let server = verifier.run(scenario);
    let result = timeout(
        Duration::from_secs(10),
        reconciler::reconcile(dynamic(pat), ctx),
    )
    .await;
    // The verifier's verdict first: when it rejects a request, the reconcile fails as a
    // consequence, and the verifier's message is the one that explains why.
    match timeout(STEP, server).await.expect("scenario finishes") {
        Ok(_) => {}
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("scenario task: {e}"),
    }
    result
        .expect("reconcile finishes")
        .expect("reconcile succeeds")
}

#[tokio::test]
async fn a_new_pat_gets_status_then_record_then_secret() {
    let pat = pat();
    let requeue = reconcile_with(Scenario::IssueFirstToken(pat.clone()), &pat).await;
    // The next reconcile adopts the delivered token.
    assert_eq!(requeue, Requeue::requeue(Duration::from_millis(50)));
}

#[tokio::test]
async fn a_deleted_pat_loses_its_records_and_secret_then_the_finalizer() {
    let pat = deleting(pat());
    let records = vec![stored_record("AAAAAAAAAAAA"), stored_record("BBBBBBBBBBBB")];
    let requeue = reconcile_with(Scenario::Cleanup(pat.clone(), records), &pat).await;
    assert_eq!(requeue, Requeue::await_change());
}

#[tokio::test]
async fn a_deleted_pat_leaves_a_foreign_secret_alone() {
    let pat = deleting(pat());
    let requeue = reconcile_with(Scenario::CleanupForeignSecret(pat.clone()), &pat).await;
    assert_eq!(requeue, Requeue::await_change());
}

//! `POST /authenticate`: the kube-apiserver's token-authentication webhook
//! (`--authentication-token-webhook-config-file`, TokenReview `authentication.k8s.io/v1`).
//!
//! - not synced yet, argon2 queue full, or idleness undecidable → 503 (a `Status` with
//!   `Retry-After`), so the apiserver fails the request instead of caching a false "no";
//! - a malformed request → 4xx `Status` saying what is wrong;
//! - any rejected token → 200 with `authenticated: false` and one generic error string;
//! - an accepted token → 200 with the user (see [`crate::token_review`]).

use std::net::SocketAddr;

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{ConnectInfo, State, rejection::BytesRejection},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
    routing::post,
};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::{debug, instrument};

use super::{AppState, HttpLimits, error::ApiError};
use crate::{
    limiter::ClientKey,
    token_review::{self, match_audiences, parse_request},
    validate::Denial,
};

pub const PATH: &str = "/authenticate";

pub fn routes(limits: &HttpLimits) -> Router<AppState> {
    Router::new()
        .route(PATH, post(authenticate))
        .layer(RequestBodyLimitLayer::new(limits.review_body_limit))
}

#[instrument(name = "authenticate", skip_all)]
async fn authenticate(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !state.validator.is_ready() {
        return ApiError::unavailable("the token record index has not synced yet; retry shortly")
            .into_response();
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(&rejection).into_response(),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let request = match parse_request(content_type, &body) {
        Ok(request) => request,
        Err(e) => {
            // The message never quotes the request, so it is safe to log.
            debug!(
                status = e.status().as_u16(),
                message = e.message(),
                "bad TokenReview request"
            );
            return e.into_response();
        }
    };
    let Some(audiences) = match_audiences(&request.audiences, &state.identity.audiences) else {
        state.metrics.record_validation("rejected", "audience");
        return Json(token_review::unauthenticated()).into_response();
    };
    let client = connect.map_or(ClientKey::UNKNOWN, |Extension(ConnectInfo(addr))| {
        ClientKey::from_ip(addr.ip())
    });
    match state
        .validator
        .verify_presented_token(&request.token, client)
        .await
    {
        Ok(entry) => Json(token_review::authenticated(
            &entry,
            &state.identity,
            audiences,
        ))
        .into_response(),
        Err(Denial::Rejected(_)) => Json(token_review::unauthenticated()).into_response(),
        Err(Denial::Unavailable(why)) => ApiError::unavailable(why.message()).into_response(),
    }
}

fn body_error(rejection: &BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::for_status(status)
    } else {
        ApiError::bad_request("the request body could not be read")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::{
        index::RecordIndex,
        metrics::Metrics,
        routes::{AppContext, router},
        token_review::{API_VERSION, IdentityMapping, KIND, REJECTED},
        usage::UsageRecorder,
        validate::{
            Validator, ValidatorConfig,
            tests::{FakeActivity, Harness, forge_same_id, harness},
        },
    };

    fn app(h: Harness, identity: IdentityMapping) -> (axum::Router, Arc<Validator>) {
        let validator = Arc::new(h.validator);
        let state = AppState(Arc::new(AppContext {
            validator: validator.clone(),
            identity,
            metrics: h.metrics,
            admission: crate::admission::tests::synced(),
            catalog: Default::default(),
            draining: Default::default(),
        }));
        (router(state, &HttpLimits::default()), validator)
    }

    fn review(token: &str, audiences: Option<Vec<&str>>) -> Value {
        let mut spec = json!({"token": token});
        if let Some(a) = audiences {
            spec["audiences"] = json!(a);
        }
        json!({"apiVersion": API_VERSION, "kind": KIND, "spec": spec})
    }

    async fn call(app: &axum::Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, headers, value)
    }

    fn post(body: impl Into<Body>, content_type: Option<&str>) -> Request<Body> {
        let mut r = Request::post(PATH);
        if let Some(ct) = content_type {
            r = r.header(header::CONTENT_TYPE, ct);
        }
        r.body(body.into()).unwrap()
    }

    fn post_json(v: &Value) -> Request<Body> {
        post(serde_json::to_vec(v).unwrap(), Some("application/json"))
    }

    #[tokio::test]
    async fn authenticates_a_valid_token_as_its_owner() {
        let h = harness();
        let (token, _) = h.issue(|r| r.scopes = vec!["read:pods".into()]);
        let (app, _) = app(h, IdentityMapping::default());
        let (status, _, body) = call(&app, post_json(&review(token.expose_secret(), None))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["apiVersion"], API_VERSION);
        assert_eq!(body["status"]["authenticated"], true);
        let user = &body["status"]["user"];
        assert_eq!(user["username"], "alice");
        assert_eq!(user["groups"], json!(["dev", "patrol:scope:read:pods"]));
        assert_eq!(
            user["extra"]["patrol.dev/token-id"],
            json!([token.id().as_str()])
        );
        assert!(!body.to_string().contains(token.expose_secret()));
    }

    #[tokio::test]
    async fn every_rejection_looks_the_same() {
        let h = harness();
        let (token, _) = h.issue(|_| {});
        let (expired, _) =
            h.issue(|r| r.expires_at = Some(chrono::Utc::now() - chrono::Duration::hours(1)));
        let unknown = patrol_api::token::generate().unwrap();
        let forged = forge_same_id(&token);
        let (app, _) = app(h, IdentityMapping::default());
        let mut answers = Vec::new();
        for presented in [
            "garbage",
            unknown.expose_secret(),
            &forged,
            expired.expose_secret(),
        ] {
            let (status, _, body) = call(&app, post_json(&review(presented, None))).await;
            assert_eq!(status, StatusCode::OK);
            answers.push(body);
        }
        assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
        assert_eq!(
            answers[0]["status"],
            json!({"authenticated": false, "error": REJECTED})
        );
    }

    #[tokio::test]
    async fn audiences_are_honoured() {
        let h = harness();
        let (token, _) = h.issue(|_| {});
        let identity = IdentityMapping {
            audiences: vec!["api".into(), "vault".into()],
            ..IdentityMapping::default()
        };
        let (app, _) = app(h, identity);
        let t = token.expose_secret();
        let (_, _, body) = call(&app, post_json(&review(t, Some(vec!["other", "vault"])))).await;
        assert_eq!(body["status"]["authenticated"], true);
        assert_eq!(body["status"]["audiences"], json!(["vault"]));
        let (_, _, body) = call(&app, post_json(&review(t, None))).await;
        assert_eq!(body["status"]["audiences"], json!(["api", "vault"]));
        let (_, _, body) = call(&app, post_json(&review(t, Some(vec!["other"])))).await;
        assert_eq!(
            body["status"],
            json!({"authenticated": false, "error": REJECTED})
        );
    }

    #[tokio::test]
    async fn bad_input_gets_a_kubernetes_status_error() {
        let h = harness();
        let (app, _) = app(h, IdentityMapping::default());
        let huge = serde_json::to_vec(&review(&"a".repeat(100 * 1024), None)).unwrap();
        let cases = vec![
            (
                post("{", Some("application/json")),
                StatusCode::BAD_REQUEST,
                "not valid JSON",
            ),
            (
                post("{}", Some("text/plain")),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "application/json",
            ),
            (
                post("{}", None),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "application/json",
            ),
            (
                post(huge.clone(), Some("application/json")),
                StatusCode::PAYLOAD_TOO_LARGE,
                "too large",
            ),
            (
                post_json(&json!({"apiVersion": "v1", "kind": KIND, "spec": {"token": "t"}})),
                StatusCode::BAD_REQUEST,
                "apiVersion",
            ),
            (
                post_json(&json!({"apiVersion": API_VERSION, "kind": "Pod"})),
                StatusCode::BAD_REQUEST,
                "kind",
            ),
            (
                Request::get(PATH).body(Body::empty()).unwrap(),
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            ),
            (
                Request::get("/nope").body(Body::empty()).unwrap(),
                StatusCode::NOT_FOUND,
                "no such endpoint",
            ),
        ];
        for (request, status, message) in cases {
            let (got, headers, body) = call(&app, request).await;
            assert_eq!(got, status, "{body}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            assert_eq!(body["kind"], "Status");
            assert_eq!(body["code"], status.as_u16());
            assert!(
                body["message"].as_str().unwrap().contains(message),
                "{body}"
            );
        }
        // A streamed body without Content-Length is cut off at the limit too.
        let stream = futures::stream::iter(
            huge.chunks(4096)
                .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                .collect::<Vec<_>>(),
        );
        let (got, _, body) = call(
            &app,
            post(Body::from_stream(stream), Some("application/json")),
        )
        .await;
        assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(body["kind"], "Status");
    }

    #[tokio::test]
    async fn unsynced_means_503_on_authenticate_and_readyz() {
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let metrics = Arc::new(Metrics::default());
        let index = Arc::new(RecordIndex::new(metrics.clone()));
        let (usage, _rx) =
            UsageRecorder::new(8, std::time::Duration::from_secs(60), metrics.clone());
        let validator = Arc::new(
            Validator::new(
                &ValidatorConfig::default(),
                index.clone(),
                usage,
                Arc::new(FakeActivity::default()),
                metrics.clone(),
            )
            .unwrap(),
        );
        let state = AppState(Arc::new(AppContext {
            validator,
            identity: IdentityMapping::default(),
            metrics,
            admission: crate::admission::tests::synced(),
            catalog: Default::default(),
            draining: draining.clone(),
        }));
        let app = router(state, &HttpLimits::default());
        let token = patrol_api::token::generate().unwrap();
        let (status, headers, body) =
            call(&app, post_json(&review(token.expose_secret(), None))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_eq!(body["reason"], "ServiceUnavailable");
        let (status, _, _) = call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _, _) =
            call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);

        index.apply(crate::index::RecordEvent::Relist);
        index.apply(crate::index::RecordEvent::RelistDone);
        let (status, _, _) = call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let (status, headers, body) =
            call(&app, post_json(&review(token.expose_secret(), None))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"]["authenticated"], false);
        assert!(headers.get(header::CONNECTION).is_none());

        // Draining (after SIGTERM): not ready, so the Service stops routing here, but
        // whatever still arrives is answered.
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let (status, _, body) =
            call(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.to_string().contains("shutting down"), "{body}");
        let (status, headers, _) =
            call(&app, post_json(&review(token.expose_secret(), None))).await;
        assert_eq!(status, StatusCode::OK);
        // ...and each HTTP/1.1 connection is closed after its answer, so the client
        // reconnects through the Service's updated endpoints.
        assert_eq!(headers[header::CONNECTION], "close");
    }

    #[tokio::test]
    async fn metrics_count_requests_by_route_and_code_without_tokens() {
        let h = harness();
        let (token, _) = h.issue(|_| {});
        let (app, _) = app(h, IdentityMapping::default());
        call(&app, post_json(&review(token.expose_secret(), None))).await;
        call(&app, post("{", Some("application/json"))).await;
        call(
            &app,
            Request::get("/some/random/path")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        let response = app
            .clone()
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        let text = String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(
            text.contains(
                "patrol_webhook_http_requests_total{route=\"/authenticate\",code=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "patrol_webhook_http_requests_total{route=\"/authenticate\",code=\"400\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("patrol_webhook_http_requests_total{route=\"other\",code=\"404\"} 1"),
            "{text}"
        );
        assert!(!text.contains(token.expose_secret()));
        assert!(
            !text.contains(token.id().as_str()),
            "token ids are not labels either"
        );
    }
}

//! The OAuth endpoints: `POST /oauth2/token` (RFC 8693), `POST /oauth2/introspect`
//! (RFC 7662), `GET /.well-known/openid-configuration` and `GET /jwks`.
//!
//! They are served when patrol-webhook runs with `--issuer`: the [`Issuer`] then reaches
//! the handlers as a request extension, and without it they answer 404. Every answer of
//! the two POST endpoints — successes, OAuth errors, and the 405/413 the layers produce —
//! is JSON with `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1, RFC 7662
//! §2.2 hold credentials). Discovery may be cached briefly; the JWKS is revalidated.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{ConnectInfo, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::instrument;

use super::{AppState, HttpLimits};
use crate::{
    issuer::Issuer,
    limiter::ClientKey,
    oauth::{DISCOVERY_PATH, ErrorCode, INTROSPECT_PATH, JWKS_PATH, OAuthError, TOKEN_PATH},
};

pub const TOKEN: &str = TOKEN_PATH;
pub const INTROSPECT: &str = INTROSPECT_PATH;
pub const DISCOVERY: &str = DISCOVERY_PATH;
pub const JWKS: &str = JWKS_PATH;

/// How long verifiers may cache the discovery document.
const DISCOVERY_CACHE: &str = "public, max-age=300";
/// The JWKS carries no lifetime: kube-apiserver's JWT authenticator (go-oidc v2) refetches
/// keys for an unknown `kid` only once the cached set has expired, and a set without
/// caching headers expires at once. With a max-age, a key set replaced without
/// pre-publication (first start, emergency rotation) would be refused for that long.
/// Steady-state rotation does not need it either way: keys are published a rotation
/// period before they sign.
const JWKS_CACHE: &str = "no-cache";

pub fn routes(limits: &HttpLimits) -> Router<AppState> {
    let credentials = Router::new()
        .route(TOKEN, post(token))
        .route(INTROSPECT, post(introspect))
        .layer(RequestBodyLimitLayer::new(limits.oauth_body_limit))
        .layer(middleware::map_response(no_store));
    let public = Router::new()
        .route(DISCOVERY, get(discovery))
        .route(JWKS, get(jwks))
        .layer(RequestBodyLimitLayer::new(1024));
    credentials.merge(public)
}

type IssuerExt = Option<Extension<Arc<Issuer>>>;
type Connect = Option<Extension<ConnectInfo<SocketAddr>>>;

fn not_enabled() -> Response {
    OAuthError::new(
        ErrorCode::NotFound,
        "the OAuth endpoints are not enabled: start patrol-webhook with --issuer",
    )
    .into_response()
}

fn client(connect: Connect) -> ClientKey {
    connect.map_or(ClientKey::UNKNOWN, |Extension(ConnectInfo(addr))| {
        ClientKey::from_ip(addr.ip())
    })
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

fn body_error(rejection: &BytesRejection) -> OAuthError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        OAuthError::too_large()
    } else {
        OAuthError::invalid_request("the request body could not be read")
    }
}

#[instrument(name = "oauth2_token", skip_all)]
async fn token(
    issuer: IssuerExt,
    connect: Connect,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(Extension(issuer)) = issuer else {
        return not_enabled();
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(&rejection).into_response(),
    };
    match issuer
        .exchange(
            client(connect),
            headers.get(header::AUTHORIZATION),
            content_type(&headers),
            &body,
        )
        .await
    {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => e.into_response(),
    }
}

#[instrument(name = "oauth2_introspect", skip_all)]
async fn introspect(
    issuer: IssuerExt,
    connect: Connect,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(Extension(issuer)) = issuer else {
        return not_enabled();
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return body_error(&rejection).into_response(),
    };
    match issuer
        .introspect(
            client(connect),
            headers.get(header::AUTHORIZATION),
            content_type(&headers),
            &body,
        )
        .await
    {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn discovery(issuer: IssuerExt) -> Response {
    let Some(Extension(issuer)) = issuer else {
        return not_enabled();
    };
    cacheable(Json(issuer.metadata()).into_response(), DISCOVERY_CACHE)
}

async fn jwks(issuer: IssuerExt) -> Response {
    let Some(Extension(issuer)) = issuer else {
        return not_enabled();
    };
    match issuer.jwks() {
        Some(set) => cacheable(Json(set).into_response(), JWKS_CACHE),
        None => OAuthError::unavailable("the signing keys have not been loaded yet; retry shortly")
            .into_response(),
    }
}

fn cacheable(mut response: Response, policy: &'static str) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
    response
}

/// No caching of credentials, and OAuth-shaped errors even from the layers (wrong method,
/// body over the limit), whose plain bodies would otherwise become Kubernetes `Status`es.
async fn no_store(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    let mut response = if (status.is_client_error() || status.is_server_error()) && !is_json {
        let error = match status {
            StatusCode::PAYLOAD_TOO_LARGE => OAuthError::too_large(),
            StatusCode::METHOD_NOT_ALLOWED => {
                OAuthError::invalid_request("use POST").with_status(status)
            }
            _ => OAuthError::invalid_request("the request could not be read").with_status(status),
        };
        let mut replaced = error.into_response();
        if let Some(allow) = response.headers().get(header::ALLOW) {
            replaced.headers_mut().insert(header::ALLOW, allow.clone());
        }
        replaced
    } else {
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::Ordering, time::Duration};

    use axum::body::Body;
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    use chrono::Utc;
    use http::Request;
    use http_body_util::BodyExt;
    use patrol_api::record::{ExchangeGrant, TokenRecord};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::{
        exchange::{SUBJECT_REJECTED, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT},
        oauth::OAuthSettings,
        reviews::tests::FakeReviewer,
        routes::{AppContext, router},
        signing::{KeySet, SigningKey, SigningKeys},
        token_review::IdentityMapping,
        validate::{
            Validator,
            tests::{Harness, forge_same_id, harness},
        },
    };

    const ISSUER: &str = "https://patrol.test:8443";
    const GRANT: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
    const AT: &str = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token";
    const JWT: &str = "urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";
    const RUNNER: &str = "system:serviceaccount:ci:runner";
    const RESOURCE_SERVER: &str = "system:serviceaccount:apps:api";

    struct App {
        router: axum::Router,
        metrics: Arc<crate::metrics::Metrics>,
        validator: Arc<Validator>,
        reviewer: Arc<FakeReviewer>,
        keys: Arc<SigningKeys>,
        _usage: tokio::sync::mpsc::Receiver<crate::usage::UsageWrite>,
    }

    fn grant(r: &mut TokenRecord) {
        r.scopes = vec!["read:pods".into(), "deploy".into()];
        r.exchange = ExchangeGrant {
            audiences: Some(vec!["kubernetes-patrol".into(), "vault".into()]),
            default_audience: Some("kubernetes-patrol".into()),
            allowed_actors: vec![RUNNER.into()],
            max_ttl_seconds: 600,
        };
    }

    fn app_with(keys: KeySet, enabled: bool) -> App {
        let Harness {
            validator,
            metrics,
            usage_rx,
            ..
        } = harness();
        let validator = Arc::new(validator);
        let reviewer = Arc::new(FakeReviewer::default());
        reviewer.knows("sa-runner-token", RUNNER);
        reviewer.knows("sa-other-token", "system:serviceaccount:ci:other");
        reviewer.knows("sa-api-token", RESOURCE_SERVER);
        reviewer.knows("sa-nobody-token", "system:serviceaccount:apps:nobody");
        reviewer.allow_introspection(RESOURCE_SERVER);
        let keys = Arc::new(SigningKeys::new(keys));
        let settings = OAuthSettings::new(
            ISSUER,
            "keys",
            OAuthSettings::DEFAULT_ROTATION,
            Duration::from_secs(3_600),
        )
        .unwrap();
        let issuer = Issuer::new(
            settings,
            keys.clone(),
            validator.clone(),
            IdentityMapping::default(),
            reviewer.clone(),
            metrics.clone(),
        )
        .unwrap();
        let state = AppState(Arc::new(AppContext {
            validator: validator.clone(),
            identity: IdentityMapping::default(),
            metrics: metrics.clone(),
            admission: crate::admission::tests::synced(),
            catalog: Default::default(),
            draining: Default::default(),
        }));
        let mut router = router(state, &HttpLimits::default());
        if enabled {
            router = router.layer(Extension(Arc::new(issuer)));
        }
        App {
            router,
            metrics,
            validator,
            reviewer,
            keys,
            _usage: usage_rx,
        }
    }

    fn one_key() -> KeySet {
        KeySet::new(vec![Arc::new(
            SigningKey::generate(Utc::now(), Utc::now()).unwrap(),
        )])
    }

    fn app() -> App {
        app_with(one_key(), true)
    }

    impl App {
        /// Issues a PAT into the router's index.
        fn issue(
            &self,
            edit: impl FnOnce(&mut TokenRecord),
        ) -> (patrol_api::token::PlaintextToken, TokenRecord) {
            let token = patrol_api::token::generate().unwrap();
            let hash = crate::validate::tests::fast_hasher().hash(&token).unwrap();
            let mut r = crate::index::tests::record(token.id().as_str(), &hash);
            grant(&mut r);
            edit(&mut r);
            let secret = r.to_secret("patrol-system").unwrap();
            let changed = self
                .validator
                .index()
                .apply(crate::index::RecordEvent::upsert(
                    secret.metadata.name.clone().unwrap(),
                    TokenRecord::from_secret(&secret),
                ));
            self.validator.on_index_change(&changed);
            (token, r)
        }

        fn revoke(&self, id: &str) {
            let changed = self
                .validator
                .index()
                .apply(crate::index::RecordEvent::Delete {
                    secret: TokenRecord::secret_name(id),
                });
            self.validator.on_index_change(&changed);
        }

        async fn call(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            (status, headers, value)
        }

        async fn post(
            &self,
            path: &str,
            body: &str,
            auth: Option<&str>,
        ) -> (StatusCode, HeaderMap, Value) {
            let mut r = Request::post(path)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            if let Some(a) = auth {
                r = r.header(header::AUTHORIZATION, a);
            }
            self.call(r.body(Body::from(body.to_owned())).unwrap())
                .await
        }

        async fn exchange(&self, subject: &str, extra: &str) -> (StatusCode, HeaderMap, Value) {
            let body = format!(
                "grant_type={GRANT}&subject_token={subject}&subject_token_type={AT}{extra}"
            );
            self.post(TOKEN, &body, None).await
        }

        async fn introspect(&self, token: &str) -> (StatusCode, HeaderMap, Value) {
            self.post(
                INTROSPECT,
                &format!("token={token}"),
                Some("Bearer sa-api-token"),
            )
            .await
        }

        fn metric(&self, needle: &str) -> bool {
            self.metrics.encode().unwrap().contains(needle)
        }
    }

    fn assert_no_store(headers: &HeaderMap) {
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(headers[header::PRAGMA], "no-cache");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
    }

    fn claims_of(jwt: &str) -> Value {
        let payload = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_pat_becomes_a_jwt_that_verifies_with_the_published_keys() {
        let app = app();
        let (pat, record) = app.issue(|_| {});
        let (status, headers, body) = app
            .exchange(pat.expose_secret(), "&audience=vault&scope=deploy+other")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_no_store(&headers);
        assert_eq!(body["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 600);
        assert_eq!(body["scope"], "deploy");
        let jwt = body["access_token"].as_str().unwrap();

        let claims = claims_of(jwt);
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], "vault");
        assert_eq!(claims["scope"], "deploy");
        assert_eq!(claims["groups"], json!(["dev", "patrol:scope:deploy"]));
        assert_eq!(claims["patrol_tid"], record.token_id);
        assert_eq!(claims["patrol_pat"], "team-a/laptop");
        assert_eq!(claims["uid"], "u-1");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            600
        );

        // Verify with nothing but the JWKS, as the apiserver does.
        let (status, headers, jwks) = app
            .call(Request::get(JWKS).body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], JWKS_CACHE);
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(jwt.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        let jwk = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .expect("the signing key is published");
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
            .unwrap();

        assert!(app.metric(
            "patrol_webhook_oauth_requests_total{endpoint=\"token\",outcome=\"issued\"} 1"
        ));
        let text = app.metrics.encode().unwrap();
        assert!(!text.contains(pat.expose_secret()) && !text.contains(jwt));
    }

    #[tokio::test]
    async fn every_rfc_error_code_over_http() {
        let app = app();
        let (pat, _) = app.issue(|_| {});
        let (disabled, _) = app.issue(|r| r.exchange.max_ttl_seconds = 0);
        let t = pat.expose_secret();
        let cases: Vec<(&str, String, StatusCode, &str)> = vec![
            (
                "no grant_type",
                format!("subject_token={t}"),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                "other grant",
                format!("grant_type=password&subject_token={t}&subject_token_type={AT}"),
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
            ),
            (
                "client secret",
                format!(
                    "grant_type={GRANT}&subject_token={t}&subject_token_type={AT}&client_id=c&client_secret=s"
                ),
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                "exchange disabled",
                format!(
                    "grant_type={GRANT}&subject_token={}&subject_token_type={AT}",
                    disabled.expose_secret()
                ),
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
            ),
            (
                "scope not granted",
                format!("grant_type={GRANT}&subject_token={t}&subject_token_type={AT}&scope=admin"),
                StatusCode::BAD_REQUEST,
                "invalid_scope",
            ),
            (
                "audience not allowed",
                format!(
                    "grant_type={GRANT}&subject_token={t}&subject_token_type={AT}&audience=other"
                ),
                StatusCode::BAD_REQUEST,
                "invalid_target",
            ),
            (
                "garbage subject",
                format!("grant_type={GRANT}&subject_token=garbage&subject_token_type={AT}"),
                StatusCode::BAD_REQUEST,
                "invalid_grant",
            ),
            (
                "unsupported requested type",
                format!(
                    "grant_type={GRANT}&subject_token={t}&subject_token_type={AT}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asaml2"
                ),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
        ];
        for (what, body, status, error) in cases {
            let (got, headers, answer) = app.post(TOKEN, &body, None).await;
            assert_eq!(
                (got, answer["error"].as_str()),
                (status, Some(error)),
                "{what}: {answer}"
            );
            assert_no_store(&headers);
            let description = answer["error_description"].as_str().unwrap();
            assert!(
                crate::oauth::is_valid_description(description),
                "{what}: {description}"
            );
            assert!(!answer.to_string().contains(t), "{what}: quotes the PAT");
            if status == StatusCode::UNAUTHORIZED {
                assert_eq!(headers[header::WWW_AUTHENTICATE], "Basic realm=\"patrol\"");
            }
        }
        // A client trying the Authorization header is challenged in its own scheme.
        let body = format!("grant_type={GRANT}&subject_token={t}&subject_token_type={AT}");
        for (auth, scheme) in [
            ("Basic Y2xpZW50OnNlY3JldA==", "Basic"),
            ("Bearer xyz", "Bearer"),
        ] {
            let (status, headers, answer) = app.post(TOKEN, &body, Some(auth)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(answer["error"], "invalid_client");
            assert_eq!(
                headers[header::WWW_AUTHENTICATE],
                format!("{scheme} realm=\"patrol\"").as_str()
            );
        }
        assert!(app.metric(
            "patrol_webhook_oauth_requests_total{endpoint=\"token\",outcome=\"invalid_grant\"} 1"
        ));
    }

    #[tokio::test]
    async fn refused_subject_tokens_all_look_the_same() {
        let app = app();
        let (live, _) = app.issue(|_| {});
        let (expired, _) =
            app.issue(|r| r.expires_at = Some(Utc::now() - chrono::Duration::seconds(1)));
        let (revoked, r) = app.issue(|_| {});
        app.revoke(&r.token_id);
        let unknown = patrol_api::token::generate().unwrap();
        let forged = forge_same_id(&live);
        let mut answers = Vec::new();
        for subject in [
            "garbage",
            unknown.expose_secret(),
            &forged,
            expired.expose_secret(),
            revoked.expose_secret(),
        ] {
            let (status, _, body) = app.exchange(subject, "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            answers.push(body);
        }
        assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
        assert_eq!(
            answers[0],
            json!({"error": "invalid_grant", "error_description": SUBJECT_REJECTED})
        );
        let (status, _, _) = app.exchange(live.expose_secret(), "").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn optional_parameters() {
        let app = app();
        let (pat, _) = app.issue(|_| {});
        let t = pat.expose_secret();
        // pat subject type, jwt requested type, client_id, repeated audience, scope.
        let body = format!(
            "grant_type={GRANT}&subject_token={t}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Apat\
             &requested_token_type={JWT}&client_id=my-cli&audience=vault&audience=kubernetes-patrol&scope=read%3Apods"
        );
        let (status, _, answer) = app.post(TOKEN, &body, None).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["issued_token_type"], TOKEN_TYPE_JWT);
        let claims = claims_of(answer["access_token"].as_str().unwrap());
        assert_eq!(claims["client_id"], "my-cli");
        assert_eq!(claims["aud"], json!(["vault", "kubernetes-patrol"]));
        assert_eq!(claims["scope"], "read:pods");
        // Without audience: the default one.
        let (_, _, answer) = app.exchange(t, "").await;
        assert_eq!(
            claims_of(answer["access_token"].as_str().unwrap())["aud"],
            "kubernetes-patrol"
        );
        // A record with no default and an open audience list needs one named.
        let (open, _) = app.issue(|r| {
            r.exchange.audiences = None;
            r.exchange.default_audience = None;
        });
        let (status, _, answer) = app.exchange(open.expose_secret(), "").await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request"))
        );
        let (status, _, _) = app
            .exchange(
                open.expose_secret(),
                "&resource=https%3A%2F%2Fapi.example.com",
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn actor_tokens_are_reviewed_and_recorded() {
        let app = app();
        let (pat, _) = app.issue(|_| {});
        let t = pat.expose_secret();
        let actor = |token: &str| format!("&actor_token={token}&actor_token_type={JWT}");
        let (status, _, answer) = app.exchange(t, &actor("sa-runner-token")).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let claims = claims_of(answer["access_token"].as_str().unwrap());
        assert_eq!(claims["act"], json!({"sub": RUNNER}));

        for (token, why) in [
            ("sa-other-token", "not allowed"),
            ("unknown-token", "not valid"),
        ] {
            let (status, _, answer) = app.exchange(t, &actor(token)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{why}");
            assert_eq!(answer["error"], "invalid_request", "{why}");
        }
        // A PAT that allows no actor refuses without asking the apiserver.
        let (closed, _) = app.issue(|r| r.exchange.allowed_actors.clear());
        let before = app.reviewer.calls.load(Ordering::Relaxed);
        let (status, _, _) = app
            .exchange(closed.expose_secret(), &actor("sa-runner-token"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(app.reviewer.calls.load(Ordering::Relaxed), before);
        // The apiserver down: 503, not a refusal.
        app.reviewer.down.store(true, Ordering::Relaxed);
        let (status, headers, answer) = app.exchange(t, &actor("sa-runner-token")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer["error"], "temporarily_unavailable");
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert_no_store(&headers);
    }

    #[tokio::test]
    async fn bad_bodies_methods_and_content_types_get_oauth_errors() {
        let app = app();
        let (pat, _) = app.issue(|_| {});
        let form = format!(
            "grant_type={GRANT}&subject_token={}&subject_token_type={AT}",
            pat.expose_secret()
        );
        for path in [TOKEN, INTROSPECT] {
            let auth = (path == INTROSPECT).then_some("Bearer sa-api-token");
            // Wrong content types.
            for ct in [Some("application/json"), Some("text/plain"), None] {
                let mut r = Request::post(path);
                if let Some(ct) = ct {
                    r = r.header(header::CONTENT_TYPE, ct);
                }
                if let Some(a) = auth {
                    r = r.header(header::AUTHORIZATION, a);
                }
                let (status, headers, body) =
                    app.call(r.body(Body::from(form.clone())).unwrap()).await;
                assert_eq!(
                    (status, body["error"].as_str()),
                    (StatusCode::BAD_REQUEST, Some("invalid_request")),
                    "{path} {ct:?}"
                );
                assert_no_store(&headers);
            }
            // Oversized, declared and streamed.
            let huge = format!("{form}&pad={}", "x".repeat(128 * 1024));
            let (status, headers, body) = app.post(path, &huge, auth).await;
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {body}");
            assert_eq!(body["error"], "invalid_request");
            assert_no_store(&headers);
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = huge
                .as_bytes()
                .chunks(4096)
                .map(|c| Ok(c.to_vec()))
                .collect();
            let mut r = Request::post(path)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            if let Some(a) = auth {
                r = r.header(header::AUTHORIZATION, a);
            }
            let (status, headers, body) = app
                .call(
                    r.body(Body::from_stream(futures::stream::iter(chunks)))
                        .unwrap(),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{path} streamed: {body}"
            );
            assert_no_store(&headers);
            // GET.
            let (status, headers, body) = app
                .call(Request::get(path).body(Body::empty()).unwrap())
                .await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(body["error"], "invalid_request");
            assert!(headers[header::ALLOW].to_str().unwrap().contains("POST"));
            assert_no_store(&headers);
        }
    }

    #[tokio::test]
    async fn introspection_callers_must_be_authenticated_and_authorized() {
        let app = app();
        let (pat, _) = app.issue(|_| {});
        let body = format!("token={}", pat.expose_secret());
        let cases = [
            (
                None,
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "Bearer realm=\"patrol\"",
            ),
            (
                Some("Basic YTpi"),
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "Bearer realm=\"patrol\"",
            ),
            (
                Some("Bearer not-a-known-token"),
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "Bearer realm=\"patrol\", error=\"invalid_token\"",
            ),
            (
                Some("Bearer sa-nobody-token"),
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "Bearer realm=\"patrol\", error=\"insufficient_scope\"",
            ),
        ];
        for (auth, status, error, challenge) in cases {
            let (got, headers, answer) = app.post(INTROSPECT, &body, auth).await;
            assert_eq!(
                (got, answer["error"].as_str()),
                (status, Some(error)),
                "{auth:?}"
            );
            assert_eq!(headers[header::WWW_AUTHENTICATE], challenge);
            assert_no_store(&headers);
            assert!(
                answer.get("active").is_none(),
                "nothing about the token is told"
            );
        }
        // Allowed: asked once, then remembered for a while.
        let before = app.reviewer.calls.load(Ordering::Relaxed);
        for _ in 0..3 {
            let (status, _, answer) = app.introspect(pat.expose_secret()).await;
            assert_eq!((status, &answer["active"]), (StatusCode::OK, &json!(true)));
        }
        assert_eq!(
            app.reviewer.calls.load(Ordering::Relaxed) - before,
            2,
            "one TokenReview and one SubjectAccessReview"
        );
        // Missing token parameter.
        let (status, _, answer) = app
            .post(
                INTROSPECT,
                "token_type_hint=access_token",
                Some("Bearer sa-api-token"),
            )
            .await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_request"))
        );
    }

    #[tokio::test]
    async fn introspection_of_pats_and_jwts_and_revocation_reaching_derived_tokens() {
        let app = app();
        let (pat, record) = app.issue(|_| {});
        let (status, headers, answer) = app.introspect(pat.expose_secret()).await;
        assert_eq!(status, StatusCode::OK);
        assert_no_store(&headers);
        assert_eq!(answer["active"], true);
        assert_eq!(answer["scope"], "read:pods deploy");
        assert_eq!(answer["sub"], "alice");
        assert_eq!(answer["username"], "alice");
        assert_eq!(answer["token_type"], "Bearer");
        assert_eq!(answer["patrol_tid"], record.token_id);
        assert!(answer["iat"].is_i64());

        let (_, _, exchanged) = app
            .exchange(
                pat.expose_secret(),
                &format!("&client_id=cli&actor_token=sa-runner-token&actor_token_type={JWT}"),
            )
            .await;
        let jwt = exchanged["access_token"].as_str().unwrap().to_owned();
        let (_, _, answer) = app.introspect(&jwt).await;
        assert_eq!(answer["active"], true, "{answer}");
        assert_eq!(answer["aud"], "kubernetes-patrol");
        assert_eq!(answer["client_id"], "cli");
        assert_eq!(answer["act"], json!({"sub": RUNNER}));
        assert_eq!(answer["iss"], ISSUER);
        assert!(answer["jti"].is_string() && answer["exp"].is_i64() && answer["nbf"].is_i64());

        // Tampered, or signed by a key we never published: inactive.
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let mut claims = claims_of(&jwt);
        claims["sub"] = json!("mallory");
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let foreign = SigningKey::generate(Utc::now(), Utc::now()).unwrap();
        let by_stranger = crate::jwt::sign(&claims_of(&jwt), &foreign).unwrap();
        for garbage in [
            parts.join("."),
            by_stranger,
            "a.b.c".into(),
            "garbage".into(),
        ] {
            let (status, _, answer) = app.introspect(&garbage).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(answer, json!({"active": false}));
        }

        // Revoking the PAT deactivates both it and the JWT derived from it.
        app.revoke(&record.token_id);
        for token in [pat.expose_secret(), jwt.as_str()] {
            let (status, _, answer) = app.introspect(token).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                serde_json::to_string(&answer).unwrap(),
                r#"{"active":false}"#
            );
        }
        assert!(app.metric(
            "patrol_webhook_oauth_requests_total{endpoint=\"introspect\",outcome=\"inactive\"}"
        ));
    }

    #[tokio::test]
    async fn discovery_and_jwks() {
        let app = app();
        let (status, headers, doc) = app
            .call(Request::get(DISCOVERY).body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], DISCOVERY_CACHE);
        assert_eq!(doc["issuer"], ISSUER);
        assert_eq!(doc["jwks_uri"], format!("{ISSUER}/jwks"));
        assert_eq!(doc["token_endpoint"], format!("{ISSUER}/oauth2/token"));
        let (_, _, jwks) = app
            .call(Request::get(JWKS).body(Body::empty()).unwrap())
            .await;
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["alg"], "ES256");
        assert_eq!(key["use"], "sig");
        assert_eq!(
            key["kid"],
            crate::signing::thumbprint(key["x"].as_str().unwrap(), key["y"].as_str().unwrap())
        );
        assert_eq!(app.keys.current().len(), 1);
    }

    #[tokio::test]
    async fn not_enabled_without_an_issuer_and_unavailable_without_keys() {
        let off = app_with(one_key(), false);
        for request in [
            Request::get(DISCOVERY).body(Body::empty()).unwrap(),
            Request::get(JWKS).body(Body::empty()).unwrap(),
        ] {
            let (status, _, body) = off.call(request).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        }
        let (status, headers, _) = off.post(TOKEN, "grant_type=x", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_no_store(&headers);

        let keyless = app_with(KeySet::default(), true);
        let (pat, _) = keyless.issue(|_| {});
        let (status, headers, body) = keyless.exchange(pat.expose_secret(), "").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable")
            )
        );
        assert_eq!(headers[header::RETRY_AFTER], "1");
        let (status, _, _) = keyless
            .call(Request::get(JWKS).body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}

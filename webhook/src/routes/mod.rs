//! The HTTP surface: one router, one module per endpoint family.
//!
//! Each module exposes `routes(&HttpLimits) -> Router<AppState>` with its own body limit;
//! [`router`] merges them and wraps everything in the same layers: request metrics,
//! JSON errors, a request timeout and a body-read timeout. Later endpoints (`/mutate`,
//! `/validate`, `/oauth2/token`, `/oauth2/introspect`, `/jwks`,
//! `/.well-known/openid-configuration`) are further modules merged the same way; their
//! paths go into [`ROUTES`] so they get their own metric label.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use http::StatusCode;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

use crate::{metrics::Metrics, token_review::IdentityMapping, validate::Validator};

pub mod admission;
pub mod authenticate;
pub mod authorize;
pub mod error;
pub mod health;
pub mod metrics;
pub mod oauth;

use error::ApiError;

/// Every path served, as metric labels; anything else is `other`.
pub const ROUTES: &[&str] = &[
    admission::MUTATE,
    admission::VALIDATE,
    authenticate::PATH,
    authorize::PATH,
    health::HEALTHZ,
    health::READYZ,
    metrics::PATH,
    oauth::TOKEN,
    oauth::INTROSPECT,
    oauth::DISCOVERY,
    oauth::JWKS,
];

/// Limits applied to requests.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Whole request, from headers received to response ready.
    pub request_timeout: Duration,
    /// Reading the request body.
    pub body_timeout: Duration,
    /// Largest TokenReview body accepted.
    pub review_body_limit: usize,
    /// Largest AdmissionReview body accepted.
    pub admission_body_limit: usize,
    /// Largest /oauth2/token or /oauth2/introspect form accepted.
    pub oauth_body_limit: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(5),
            // A TokenReview carries one bearer token: PATs are 58 bytes, the largest JWTs
            // a few KiB. 64 KiB leaves room without inviting memory abuse.
            review_body_limit: 64 * 1024,
            // An AdmissionReview carries the object and, on update, its old version; etcd
            // stores objects up to 1.5 MiB, so two of them and the envelope fit in 4 MiB.
            admission_body_limit: 4 * 1024 * 1024,
            // A form with a PAT, an actor token (a ServiceAccount JWT, ~1-2 KiB) and a few
            // audiences; 64 KiB is generous.
            oauth_body_limit: 64 * 1024,
        }
    }
}

/// What every handler can reach.
pub struct AppContext {
    pub validator: Arc<Validator>,
    pub identity: IdentityMapping,
    pub metrics: Arc<Metrics>,
    pub admission: Arc<crate::admission::Admission>,
    /// What each scope permits, for the authorization webhook.
    pub catalog: Arc<crate::authz::watch::CatalogCell>,
    /// Set on SIGTERM: readiness fails from then on, so the replica leaves its Service
    /// while it still serves whatever is routed to it.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Clone)]
pub struct AppState(pub Arc<AppContext>);

impl std::ops::Deref for AppState {
    type Target = AppContext;

    fn deref(&self) -> &AppContext {
        &self.0
    }
}

/// The whole application.
pub fn router(state: AppState, limits: &HttpLimits) -> Router {
    Router::new()
        .merge(admission::routes(limits))
        .merge(authenticate::routes(limits))
        .merge(authorize::routes(limits))
        .merge(health::routes())
        .merge(metrics::routes())
        .merge(oauth::routes(limits))
        .fallback(|| async { ApiError::for_status(StatusCode::NOT_FOUND) })
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    record_request,
                ))
                .layer(middleware::map_response(error::json_errors))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    limits.request_timeout,
                ))
                .layer(RequestBodyTimeoutLayer::new(limits.body_timeout)),
        )
        .with_state(state)
}

fn route_label(path: Option<&MatchedPath>) -> &'static str {
    path.and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()).copied())
        .unwrap_or("other")
}

async fn record_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = route_label(request.extensions().get::<MatchedPath>());
    let http1 = request.version() < http::Version::HTTP_2;
    let started = Instant::now();
    let mut response = next.run(request).await.into_response();
    state.metrics.record_request(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    // Draining: close each HTTP/1.1 connection after its answer, so that clients (the
    // kube-apiserver's webhook clients pool connections to the Service) reconnect through
    // the updated endpoints instead of writing into a connection the listener is about to
    // close. HTTP/2 clients get a GOAWAY at shutdown.
    if http1 && state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}

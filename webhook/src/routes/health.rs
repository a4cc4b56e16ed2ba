//! Liveness and readiness. Live while the process serves; ready once the token record
//! index has synced, which is also when validation starts, and the admission caches
//! (TokenPolicies, Namespaces) have too; not ready again once SIGTERM starts the drain.

use axum::{Router, extract::State, response::IntoResponse, routing::get};
use tower_http::limit::RequestBodyLimitLayer;

use super::{AppState, error::ApiError};

pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(HEALTHZ, get(|| async { "ok" }))
        .route(READYZ, get(readyz))
        .layer(RequestBodyLimitLayer::new(1024))
}

async fn readyz(State(state): State<AppState>) -> axum::response::Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        ApiError::unavailable("shutting down: draining connections").into_response()
    } else if !state.validator.is_ready() {
        ApiError::unavailable("the token record index has not synced yet").into_response()
    } else if !state.admission.is_ready() {
        ApiError::unavailable(
            "the TokenPolicy and Namespace caches of admission have not synced yet",
        )
        .into_response()
    } else {
        "ok".into_response()
    }
}

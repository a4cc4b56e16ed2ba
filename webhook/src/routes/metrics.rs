//! `/metrics`: the OpenMetrics exposition of [`crate::metrics::Metrics`].

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tower_http::limit::RequestBodyLimitLayer;

use super::{AppState, error::ApiError};

pub const PATH: &str = "/metrics";
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(PATH, get(metrics))
        .layer(RequestBodyLimitLayer::new(1024))
}

async fn metrics(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed")
            .into_response(),
    }
}

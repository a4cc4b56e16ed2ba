//! `POST /mutate` and `POST /validate`: the admission webhooks (AdmissionReview
//! `admission.k8s.io/v1`); the decisions are in [`crate::admission`].
//!
//! - a well-formed review → 200 with the review's `response` (allowed, or denied with a
//!   `Status` whose message names each field, rule and policy);
//! - a malformed body (not JSON, wrong apiVersion or kind, no request, too large, wrong
//!   content type) → a 4xx Kubernetes `Status` saying what is wrong.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::{debug, instrument};

use super::{AppState, HttpLimits, error::ApiError};
use crate::admission::review::{parse_review, response_body};

pub const MUTATE: &str = "/mutate";
pub const VALIDATE: &str = "/validate";

pub fn routes(limits: &HttpLimits) -> Router<AppState> {
    Router::new()
        .route(MUTATE, post(mutate))
        .route(VALIDATE, post(validate))
        .layer(RequestBodyLimitLayer::new(limits.admission_body_limit))
}

#[instrument(name = "mutate", skip_all)]
async fn mutate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match read(&headers, body) {
        Ok(request) => Json(response_body(state.admission.mutate(&request).await)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[instrument(name = "validate", skip_all)]
async fn validate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match read(&headers, body) {
        Ok(request) => {
            Json(response_body(state.admission.validate(&request).await)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn read(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<kube::core::admission::AdmissionRequest<kube::core::DynamicObject>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE)
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    parse_review(content_type, &body).inspect_err(|e| {
        // The message never quotes the request, so it is safe to log.
        debug!(
            status = e.status().as_u16(),
            message = e.message(),
            "bad AdmissionReview"
        );
    })
}

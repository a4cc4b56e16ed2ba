//! `POST /authorize`: the kube-apiserver's authorization webhook (structured authorization
//! configuration, SubjectAccessReview `authorization.k8s.io/v1`) for requests made with
//! Patrol tokens. See [`crate::authz`] for what it decides.
//!
//! - a malformed request → 4xx `Status` saying what is wrong (the apiserver then applies
//!   its failure policy: Deny);
//! - the record index not synced → an explicit deny saying so: Patrol cannot tell a
//!   revoked token from a current one, so it refuses rather than guesses;
//! - otherwise 200 with the verdict: a deny with a reason, or no opinion.

use std::sync::LazyLock;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
    routing::post,
};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::{debug, instrument};

use super::{AppState, HttpLimits, error::ApiError};
use crate::authz::{
    self,
    review::{ReviewError, Verdict},
    rules::{Rule, discovery},
};
use crate::owners::{OwnerState, owner_state};

pub const PATH: &str = "/authorize";

static DISCOVERY: LazyLock<Vec<Rule>> = LazyLock::new(discovery);

pub fn routes(limits: &HttpLimits) -> Router<AppState> {
    Router::new()
        .route(PATH, post(authorize))
        .layer(RequestBodyLimitLayer::new(limits.review_body_limit))
}

#[instrument(name = "authorize", skip_all)]
async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            state.metrics.record_authorization("denied", "malformed");
            return if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::for_status(rejection.status())
            } else {
                ApiError::bad_request("the request body could not be read")
            }
            .into_response();
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let review = match authz::review::parse(content_type, &body) {
        Ok(review) => review,
        Err(e) => {
            state.metrics.record_authorization("denied", "malformed");
            debug!(error = %e, "bad SubjectAccessReview request");
            return match e {
                ReviewError::NotJson => ApiError::unsupported_media_type(e.to_string()),
                ReviewError::Malformed(message) => ApiError::bad_request(message),
            }
            .into_response();
        }
    };
    let verdict = match review.token_id.as_deref() {
        Some(_) if !state.validator.is_ready() => Verdict::Deny {
            reason: "not_synced",
            message: "Patrol has not loaded its token records yet and cannot tell whether this token is still valid; retry shortly".into(),
        },
        Some(id) => {
            let record = state.validator.index().get(id);
            let catalog = state.catalog.current();
            let owner = match (record.as_deref(), state.validator.owners()) {
                (Some(record), Some(owners)) => owner_state(record, owners),
                _ => OwnerState::Current,
            };
            authz::decide(
                &review,
                record.as_deref(),
                owner,
                catalog.as_deref(),
                &DISCOVERY,
                chrono::Utc::now(),
            )
        }
        None => Verdict::NoOpinion("not_patrol"),
    };
    state
        .metrics
        .record_authorization(verdict.decision(), verdict.reason());
    if let (Verdict::Deny { reason, .. }, Some(id)) = (&verdict, review.token_id.as_deref()) {
        debug!(token_id = id, reason, access = %review.access, "denied a Patrol token's request");
    }
    Json(verdict.answer()).into_response()
}

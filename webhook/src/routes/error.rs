//! Error responses of the Kubernetes-facing endpoints: a `Status` object (`kind: Status`,
//! `apiVersion: v1`), which kube-apiserver and client-go decode and show as the message.
//! Endpoints with their own error format (OAuth's RFC 6749 errors) will map on their own.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

/// An HTTP error with a message for a person. Messages must never quote request
/// content (it may hold a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message used when a layer (limit, timeout, router) produced the error.
    pub fn for_status(status: StatusCode) -> Self {
        let message = match status {
            StatusCode::NOT_FOUND => "no such endpoint",
            StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this endpoint",
            StatusCode::PAYLOAD_TOO_LARGE => "request body too large for this endpoint",
            StatusCode::REQUEST_TIMEOUT => "the request was not received in time",
            StatusCode::SERVICE_UNAVAILABLE => "the request could not be answered in time; retry",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported content type",
            _ => status.canonical_reason().unwrap_or("request failed"),
        };
        Self::new(status, message)
    }
}

/// Kubernetes `StatusReason` for a code.
fn reason(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::NOT_ACCEPTABLE => "NotAcceptable",
        StatusCode::REQUEST_TIMEOUT => "Timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        StatusCode::GATEWAY_TIMEOUT => "Timeout",
        _ if status.is_server_error() => "InternalError",
        _ => "BadRequest",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": reason(self.status),
            "code": self.status.as_u16(),
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Replaces the plain-text or empty bodies that layers produce for errors (413 from the
/// body limit, 408/503 from timeouts, 404/405 from routing) with a JSON `Status`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if is_json {
        return response;
    }
    let mut replaced = ApiError::for_status(status).into_response();
    // Keep headers such as Allow on a 405.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replaced
                .headers_mut()
                .entry(name.clone())
                .or_insert_with(|| value.clone());
        }
    }
    replaced
}

//! AdmissionReview v1 on the wire: reading a request body, writing the answer, and turning
//! [`Problem`]s into a denial the apiserver passes on to the client.
//!
//! A body that is not an AdmissionReview v1 with a request gets a 4xx Kubernetes `Status`
//! (the apiserver then fails the call per the webhook's `failurePolicy`), never a panic.
//! Messages say what is wrong and never quote the body.

use k8s_openapi::ByteString;
use kube::core::{
    DynamicObject,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
    response::{StatusCause, StatusDetails},
};
use serde_json::Value;

use super::{Problem, ProblemKind, Target};
use crate::{routes::error::ApiError, token_review::is_json};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

const OPERATIONS: [&str; 4] = ["CREATE", "UPDATE", "DELETE", "CONNECT"];

/// Reads an AdmissionReview request body.
pub fn parse_review(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<AdmissionRequest<DynamicObject>, ApiError> {
    if !is_json(content_type) {
        return Err(ApiError::unsupported_media_type(
            "an AdmissionReview must be sent as JSON: set Content-Type: application/json",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not valid JSON (line {}, column {}): send an {API_VERSION} AdmissionReview",
            e.line(),
            e.column()
        ))
    })?;
    let Some(review) = value.as_object() else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object: an AdmissionReview",
        ));
    };
    match review.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "unsupported apiVersion: this endpoint serves {API_VERSION} only; list v1 in the webhook's admissionReviewVersions"
            )));
        }
        None => {
            return Err(ApiError::bad_request(format!(
                "apiVersion is required and must be {API_VERSION}"
            )));
        }
    }
    if review.get("kind").and_then(Value::as_str) != Some(KIND) {
        return Err(ApiError::bad_request(format!(
            "kind is required and must be {KIND}"
        )));
    }
    let Some(request) = review.get("request").and_then(Value::as_object) else {
        return Err(ApiError::bad_request(
            "request is required and must be an object",
        ));
    };
    if request
        .get("uid")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(ApiError::bad_request(
            "request.uid is required and must be a non-empty string",
        ));
    }
    if !request
        .get("operation")
        .and_then(Value::as_str)
        .is_some_and(|op| OPERATIONS.contains(&op))
    {
        return Err(ApiError::bad_request(format!(
            "request.operation is required and must be one of {}",
            OPERATIONS.join(", ")
        )));
    }
    for (field, keys) in [
        ("kind", ["group", "version", "kind"]),
        ("resource", ["group", "version", "resource"]),
    ] {
        let ok = request
            .get(field)
            .and_then(Value::as_object)
            .is_some_and(|o| keys.iter().all(|k| o.get(*k).is_some_and(Value::is_string)));
        if !ok {
            return Err(ApiError::bad_request(format!(
                "request.{field} is required and must be an object with string fields {}",
                keys.join(", ")
            )));
        }
    }
    if !request.get("userInfo").is_some_and(Value::is_object) {
        return Err(ApiError::bad_request(
            "request.userInfo is required and must be an object",
        ));
    }
    for field in ["object", "oldObject"] {
        if request
            .get(field)
            .is_some_and(|o| !(o.is_object() || o.is_null()))
        {
            return Err(ApiError::bad_request(format!(
                "request.{field} must be an object"
            )));
        }
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request(format!(
            "the AdmissionReview does not match {API_VERSION}: {}",
            redact_quoted(&e.to_string())
        ))
    })?;
    review
        .try_into()
        .map_err(|_| ApiError::bad_request("request is required and must be an object"))
}

/// The response body: the review with `response`, its patch base64-encoded as the
/// apiserver's JSON decoder expects of a byte string.
pub fn response_body(response: AdmissionResponse) -> Value {
    let patch = response.patch.clone();
    let mut body = serde_json::to_value(response.into_review()).unwrap_or_else(|_| {
        // Serializing strings, maps and bools cannot fail; answer something well-formed anyway.
        serde_json::json!({"apiVersion": API_VERSION, "kind": KIND})
    });
    if let (Some(patch), Some(slot)) = (patch, body.pointer_mut("/response/patch")) {
        *slot = serde_json::to_value(ByteString(patch)).unwrap_or(Value::Null);
    }
    body
}

/// Refuses the request: the message lists every problem (`field: message; ...`), the
/// status carries the code, the reason and one cause per field, as apiserver validation
/// errors do, so `kubectl` prints them and clients can read them.
pub fn deny(
    response: AdmissionResponse,
    target: Target,
    request: &AdmissionRequest<DynamicObject>,
    problems: &[Problem],
) -> AdmissionResponse {
    let (code, reason) = if problems.iter().any(|p| p.kind == ProblemKind::Unavailable) {
        (503, "ServiceUnavailable")
    } else if problems.iter().any(|p| p.kind == ProblemKind::Escalation) {
        (403, "Forbidden")
    } else {
        (422, "Invalid")
    };
    let what = match target {
        Target::Token | Target::Policy => target.label().to_owned(),
        Target::UnknownPatrol | Target::Foreign => request.kind.kind.clone(),
    };
    let name = match (&request.namespace, request.name.as_str()) {
        (_, "") => String::new(),
        (Some(ns), name) => format!(" {ns}/{name}"),
        (None, name) => format!(" {name}"),
    };
    let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let message = format!("{what}{name} is not allowed: {}", listed.join("; "));
    let mut response = response.deny(message);
    response.result.code = code;
    response.result.reason = reason.to_owned();
    response.result.status = Some(kube::core::response::StatusSummary::Failure);
    response.result.details = Some(StatusDetails {
        name: request.name.clone(),
        group: request.kind.group.clone(),
        kind: request.kind.kind.clone(),
        uid: String::new(),
        causes: problems
            .iter()
            .map(|p| StatusCause {
                reason: match p.kind {
                    ProblemKind::Invalid => "FieldValueInvalid",
                    ProblemKind::Policy(_) | ProblemKind::Escalation => "FieldValueForbidden",
                    ProblemKind::Unavailable => "InternalError",
                }
                .to_owned(),
                message: p.message.clone(),
                field: p.field.clone(),
            })
            .collect(),
        retry_after_seconds: if code == 503 { 1 } else { 0 },
    });
    response
}

/// `invalid type: string "abc", expected u32` → `invalid type: string "…", expected u32`:
/// serde quotes values it could not use, and a value may be anything.
pub fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('"', false) => {
                out.push_str("\"…");
                quoted = true;
            }
            ('"', true) => {
                out.push('"');
                quoted = false;
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

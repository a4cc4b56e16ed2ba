//! TokenReview (`authentication.k8s.io/v1`) as Patrol answers it: reading a request,
//! matching audiences, and mapping an accepted token record to the user it authenticates.
//! Pure: no I/O, so every decision is unit-tested.
//!
//! **Identity.** `username` is the owner's, with an optional prefix; `groups` are the owner's
//! groups followed by one group per granted scope (prefix `patrol:scope:` by default);
//! `uid` is the owner's; `extra` carries `patrol.dev/token-id` and `patrol.dev/pat`
//! (`namespace/name`) so audit logs name the token. `system:authenticated` is *not*
//! added: the kube-apiserver adds it to every authenticated user itself, whichever
//! authenticator answered, so adding it here would only duplicate it.
//!
//! **Audiences.** The TokenReview contract: a caller that sets `spec.audiences` lists the
//! identifiers it goes by; an audience-aware authenticator answers with `status.audiences`
//! = the audiences in both the request and the token's, and an empty `status.audiences`
//! on success means "valid for the kube-apiserver's own audience". A PAT is not minted for
//! an audience, so Patrol takes its audiences from configuration:
//!
//! - none configured (default): Patrol is audience-unaware and leaves `status.audiences`
//!   empty; the kube-apiserver then accepts the token only if the audiences it asked for
//!   include its own implicit ones, and any other caller that set `spec.audiences` must
//!   treat the answer as "valid for the Kubernetes API only", as the contract says;
//! - configured (`--audiences`): the token is valid for exactly those; a request naming
//!   none of them is refused, otherwise `status.audiences` is the intersection (in the
//!   request's order). A request without `spec.audiences` gets the configured list.
//!
//! **Errors.** Malformed requests get a Kubernetes `Status` with a message saying what is
//! wrong; messages never quote the request, since any field might hold a token.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::{index::IndexedRecord, routes::error::ApiError};

pub const API_VERSION: &str = "authentication.k8s.io/v1";
pub const KIND: &str = "TokenReview";
/// `user.extra` key holding the token id.
pub const EXTRA_TOKEN_ID: &str = "patrol.dev/token-id";
/// `user.extra` key holding `namespace/name` of the PersonalAccessToken.
pub const EXTRA_PAT: &str = "patrol.dev/pat";
/// What every unauthenticated answer says, whatever the reason.
pub const REJECTED: &str = "token not accepted";

/// How accepted tokens become users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityMapping {
    pub username_prefix: String,
    pub scope_group_prefix: String,
    /// Audiences PATs are valid for; empty means audience-unaware (see module docs).
    pub audiences: Vec<String>,
}

impl Default for IdentityMapping {
    fn default() -> Self {
        Self {
            username_prefix: String::new(),
            scope_group_prefix: "patrol:scope:".into(),
            audiences: Vec::new(),
        }
    }
}

impl IdentityMapping {
    /// Refuses a scope-group prefix that would let a token's creator pick its groups:
    /// scopes are chosen by whoever creates a token, so an empty prefix makes a scope any
    /// group (`system:masters` among them), and a `system:` prefix names groups the
    /// apiserver reserves.
    pub fn check_scope_group_prefix(prefix: &str) -> Result<(), String> {
        if prefix.is_empty() {
            return Err("--scope-group-prefix must not be empty: scopes are chosen by whoever creates a token, so without a prefix a scope could name any group (system:masters included); keep the default patrol:scope: or pick another prefix of your own".into());
        }
        if prefix.starts_with("system:") {
            return Err(format!(
                "--scope-group-prefix {prefix:?} starts with system:, which the kube-apiserver reserves for its own groups; pick a prefix outside system:, e.g. patrol:scope:"
            ));
        }
        if !prefix.ends_with(':') && !prefix.ends_with('/') && !prefix.ends_with('-') {
            return Err(format!(
                "--scope-group-prefix {prefix:?} must end with ':', '/' or '-' so that no scope can complete it into another group's name"
            ));
        }
        Ok(())
    }
}

/// A TokenReview request, read and checked. The token is wiped when dropped.
pub struct ReviewRequest {
    pub token: Zeroizing<String>,
    pub audiences: Vec<String>,
}

impl std::fmt::Debug for ReviewRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewRequest")
            .field("token", &"…")
            .field("audiences", &self.audiences)
            .finish()
    }
}

/// Whether `content_type` is JSON (`application/json`, parameters allowed).
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads a TokenReview request body.
pub fn parse_request(content_type: Option<&str>, body: &[u8]) -> Result<ReviewRequest, ApiError> {
    if !is_json(content_type) {
        return Err(ApiError::unsupported_media_type(
            "a TokenReview must be sent as JSON: set Content-Type: application/json",
        ));
    }
    let mut value: Value = serde_json::from_slice(body).map_err(|e| {
        // Syntax errors are reported by position only; serde never quotes input in them,
        // but a body that is valid JSON of the wrong shape is handled below, by hand.
        ApiError::bad_request(format!(
            "the body is not valid JSON (line {}, column {}): send a TokenReview object",
            e.line(),
            e.column()
        ))
    })?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object: a TokenReview",
        ));
    };
    match object.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "unsupported apiVersion: this endpoint serves {API_VERSION} only"
            )));
        }
        None => {
            return Err(ApiError::bad_request(format!(
                "apiVersion is required and must be {API_VERSION}"
            )));
        }
    }
    if object.get("kind").and_then(Value::as_str) != Some(KIND) {
        return Err(ApiError::bad_request(format!(
            "kind is required and must be {KIND}"
        )));
    }
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err(ApiError::bad_request(
            "spec is required and must be an object",
        ));
    };
    let token = match spec.get_mut("token").map(Value::take) {
        Some(Value::String(token)) => Zeroizing::new(token),
        Some(Value::Null) | None => return Err(ApiError::bad_request("spec.token is required")),
        Some(_) => return Err(ApiError::bad_request("spec.token must be a string")),
    };
    if token.is_empty() {
        return Err(ApiError::bad_request("spec.token is required"));
    }
    let audiences = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|a| a.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::bad_request("spec.audiences must be a list of strings"))?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "spec.audiences must be a list of strings",
            ));
        }
    };
    Ok(ReviewRequest { token, audiences })
}

/// Which audiences to report, or `None` when the request names none Patrol serves.
pub fn match_audiences(requested: &[String], configured: &[String]) -> Option<Vec<String>> {
    if configured.is_empty() {
        return Some(Vec::new());
    }
    if requested.is_empty() {
        return Some(configured.to_vec());
    }
    let matched: Vec<String> = requested
        .iter()
        .filter(|a| configured.contains(a))
        .cloned()
        .collect();
    (!matched.is_empty()).then_some(matched)
}

/// The user an accepted record authenticates as.
pub fn user_info(record: &IndexedRecord, mapping: &IdentityMapping) -> UserInfo {
    let mut groups: Vec<String> = record.groups().map(str::to_owned).collect();
    for scope in record.scopes() {
        let group = format!("{}{scope}", mapping.scope_group_prefix);
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    let extra = BTreeMap::from([
        (EXTRA_TOKEN_ID.to_owned(), vec![record.id.to_string()]),
        (
            EXTRA_PAT.to_owned(),
            vec![format!("{}/{}", record.pat_namespace(), record.pat_name())],
        ),
    ]);
    UserInfo {
        username: Some(format!("{}{}", mapping.username_prefix, record.username())),
        uid: record.uid().map(str::to_owned),
        groups: Some(groups),
        extra: Some(extra),
    }
}

/// A TokenReview answer: `apiVersion`, `kind` and `status` only. The spec is not sent
/// back — it would echo the token.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewResponse {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub status: TokenReviewStatus,
}

fn review(status: TokenReviewStatus) -> ReviewResponse {
    ReviewResponse {
        api_version: API_VERSION,
        kind: KIND,
        status,
    }
}

pub fn authenticated(
    record: &IndexedRecord,
    mapping: &IdentityMapping,
    audiences: Vec<String>,
) -> ReviewResponse {
    review(TokenReviewStatus {
        authenticated: Some(true),
        user: Some(user_info(record, mapping)),
        audiences: (!audiences.is_empty()).then_some(audiences),
        error: None,
    })
}

pub fn unauthenticated() -> ReviewResponse {
    review(TokenReviewStatus {
        authenticated: Some(false),
        error: Some(REJECTED.to_owned()),
        ..TokenReviewStatus::default()
    })
}

#[cfg(test)]
mod prefix_tests {
    use super::IdentityMapping;

    #[test]
    fn scope_group_prefixes_that_would_let_a_scope_name_any_group_are_refused() {
        assert!(IdentityMapping::check_scope_group_prefix("patrol:scope:").is_ok());
        for bad in ["", "system:", "system:scope:", "patrol"] {
            assert!(
                IdentityMapping::check_scope_group_prefix(bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::record;
    use patrol_api::{record::TokenRecord, token::TokenId};

    fn indexed(r: TokenRecord) -> IndexedRecord {
        IndexedRecord::new(TokenId::parse(&r.token_id).unwrap(), r, "s")
    }
    use axum::http::StatusCode;
    use serde_json::json;

    const JSON: Option<&str> = Some("application/json");

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn review_body(token: Value, audiences: Option<Value>) -> Vec<u8> {
        let mut spec = json!({"token": token});
        if let Some(a) = audiences {
            spec["audiences"] = a;
        }
        body(json!({"apiVersion": API_VERSION, "kind": KIND, "spec": spec}))
    }

    #[test]
    fn reads_a_well_formed_request() {
        let r = parse_request(JSON, &review_body(json!("tok"), Some(json!(["a", "b"])))).unwrap();
        assert_eq!(r.token.as_str(), "tok");
        assert_eq!(r.audiences, ["a", "b"]);
        assert_eq!(
            format!("{r:?}"),
            r#"ReviewRequest { token: "…", audiences: ["a", "b"] }"#
        );
        // What the kube-apiserver sends: metadata and an empty status are fine.
        let r = parse_request(
            Some("application/json; charset=utf-8"),
            &body(json!({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"creationTimestamp": null},
                "spec": {"token": "tok", "audiences": null}, "status": {"user": {}}})),
        )
        .unwrap();
        assert!(r.audiences.is_empty());
    }

    #[test]
    fn bad_requests_get_clear_messages_that_never_quote_the_input() {
        let secret = "patrol_SECRETSECRET_leak";
        let cases: Vec<(Option<&str>, Vec<u8>, StatusCode, &str)> = vec![
            (
                None,
                review_body(json!("t"), None),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type: application/json",
            ),
            (
                Some("text/plain"),
                review_body(json!("t"), None),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "JSON",
            ),
            (
                Some("application/jsonx"),
                review_body(json!("t"), None),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "JSON",
            ),
            (
                JSON,
                b"{".to_vec(),
                StatusCode::BAD_REQUEST,
                "not valid JSON (line 1, column 1)",
            ),
            (
                JSON,
                format!("{{\"spec\": {{\"token\": \"{secret}").into_bytes(),
                StatusCode::BAD_REQUEST,
                "not valid JSON",
            ),
            (
                JSON,
                b"".to_vec(),
                StatusCode::BAD_REQUEST,
                "not valid JSON",
            ),
            (
                JSON,
                body(json!([1, 2])),
                StatusCode::BAD_REQUEST,
                "must be a JSON object",
            ),
            (
                JSON,
                body(json!(secret)),
                StatusCode::BAD_REQUEST,
                "must be a JSON object",
            ),
            (
                JSON,
                body(json!({"kind": KIND, "spec": {"token": "t"}})),
                StatusCode::BAD_REQUEST,
                "apiVersion is required",
            ),
            (
                JSON,
                body(json!({"apiVersion": secret, "kind": KIND, "spec": {"token": "t"}})),
                StatusCode::BAD_REQUEST,
                "unsupported apiVersion",
            ),
            (
                JSON,
                body(
                    json!({"apiVersion": "authentication.k8s.io/v1beta1", "kind": KIND, "spec": {"token": "t"}}),
                ),
                StatusCode::BAD_REQUEST,
                "serves authentication.k8s.io/v1 only",
            ),
            (
                JSON,
                body(
                    json!({"apiVersion": API_VERSION, "kind": "SubjectAccessReview", "spec": {"token": "t"}}),
                ),
                StatusCode::BAD_REQUEST,
                "kind is required and must be TokenReview",
            ),
            (
                JSON,
                body(json!({"apiVersion": API_VERSION, "kind": KIND})),
                StatusCode::BAD_REQUEST,
                "spec is required",
            ),
            (
                JSON,
                body(json!({"apiVersion": API_VERSION, "kind": KIND, "spec": secret})),
                StatusCode::BAD_REQUEST,
                "spec is required",
            ),
            (
                JSON,
                review_body(json!(""), None),
                StatusCode::BAD_REQUEST,
                "spec.token is required",
            ),
            (
                JSON,
                review_body(Value::Null, None),
                StatusCode::BAD_REQUEST,
                "spec.token is required",
            ),
            (
                JSON,
                review_body(json!(42), None),
                StatusCode::BAD_REQUEST,
                "spec.token must be a string",
            ),
            (
                JSON,
                review_body(json!([secret]), None),
                StatusCode::BAD_REQUEST,
                "spec.token must be a string",
            ),
            (
                JSON,
                review_body(json!("t"), Some(json!(secret))),
                StatusCode::BAD_REQUEST,
                "spec.audiences must be a list",
            ),
            (
                JSON,
                review_body(json!("t"), Some(json!([1]))),
                StatusCode::BAD_REQUEST,
                "spec.audiences must be a list",
            ),
        ];
        for (ct, body, status, message) in cases {
            let err = parse_request(ct, &body).unwrap_err();
            assert_eq!(err.status(), status, "{message}");
            assert!(
                err.message().contains(message),
                "{:?} does not contain {message:?}",
                err.message()
            );
            assert!(!err.message().contains("SECRET"), "{}", err.message());
        }
    }

    #[test]
    fn audiences_follow_the_tokenreview_contract() {
        let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        // Audience-unaware: accept, report nothing (valid for the apiserver's audience).
        assert_eq!(
            match_audiences(&s(&["https://kubernetes.default.svc"]), &[]),
            Some(vec![])
        );
        assert_eq!(match_audiences(&[], &[]), Some(vec![]));
        // Aware: the intersection, in the request's order; none in common → refused.
        let configured = s(&["api", "vault"]);
        assert_eq!(
            match_audiences(&s(&["vault", "x", "api"]), &configured),
            Some(s(&["vault", "api"]))
        );
        assert_eq!(match_audiences(&s(&["x"]), &configured), None);
        assert_eq!(match_audiences(&[], &configured), Some(configured.clone()));
    }

    #[test]
    fn maps_the_owner_scopes_and_audit_extras() {
        let mut r = record("AAAAAAAAAAAA", "h");
        r.scopes = vec!["read:pods".into(), "deploy".into(), "read:pods".into()];
        let mapping = IdentityMapping {
            username_prefix: "patrol:".into(),
            ..IdentityMapping::default()
        };
        let user = user_info(&indexed(r.clone()), &mapping);
        assert_eq!(user.username.as_deref(), Some("patrol:alice"));
        assert_eq!(user.uid.as_deref(), Some("u-1"));
        assert_eq!(
            user.groups.unwrap(),
            ["dev", "patrol:scope:read:pods", "patrol:scope:deploy"]
        );
        let extra = user.extra.unwrap();
        assert_eq!(extra[EXTRA_TOKEN_ID], ["AAAAAAAAAAAA"]);
        assert_eq!(extra[EXTRA_PAT], ["team-a/laptop"]);

        r.owner.uid = None;
        r.scopes.clear();
        r.owner.groups.clear();
        let user = user_info(&indexed(r), &IdentityMapping::default());
        assert_eq!(user.username.as_deref(), Some("alice"));
        assert_eq!(user.uid, None);
        assert_eq!(user.groups.unwrap(), Vec::<String>::new());
    }

    #[test]
    fn responses_carry_status_only() {
        let r = indexed(record("AAAAAAAAAAAA", "$argon2id$hash"));
        let ok = serde_json::to_value(authenticated(
            &r,
            &IdentityMapping::default(),
            vec!["api".into()],
        ))
        .unwrap();
        assert_eq!(ok["apiVersion"], API_VERSION);
        assert_eq!(ok["kind"], KIND);
        assert_eq!(ok["status"]["authenticated"], true);
        assert_eq!(ok["status"]["audiences"], json!(["api"]));
        assert_eq!(ok["status"]["user"]["username"], "alice");
        assert!(
            ok.get("spec").is_none() && ok.get("metadata").is_none(),
            "{ok}"
        );
        assert!(!ok.to_string().contains("argon2"), "{ok}");
        let ok =
            serde_json::to_value(authenticated(&r, &IdentityMapping::default(), vec![])).unwrap();
        assert!(ok["status"].get("audiences").is_none());

        let no = serde_json::to_value(unauthenticated()).unwrap();
        assert_eq!(
            no["status"],
            json!({"authenticated": false, "error": REJECTED})
        );
    }
}

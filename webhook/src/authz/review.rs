//! SubjectAccessReview (`authorization.k8s.io/v1`) as Patrol's authorizer reads and
//! answers it. Pure.
//!
//! The kube-apiserver asks only about requests made with a Patrol token: its
//! authorization configuration matches on the `patrol.dev/token-id` extra that
//! TokenReview answers and the JWT authenticator's claim mappings add. Patrol answers
//! either an explicit deny (`denied: true`, which stops the authorizer chain before RBAC)
//! or no opinion (`allowed: false, denied: false`, so RBAC decides with the owner's
//! rights). It never allows: a scope only ever takes rights away.

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use serde_json::{Value, json};

use super::rules::{Access, ResourceAccess};
use crate::token_review::EXTRA_TOKEN_ID;

pub const API_VERSION: &str = "authorization.k8s.io/v1";
pub const KIND: &str = "SubjectAccessReview";
/// `user.extra` key holding an exchanged JWT's scopes (the JWT authenticator's claim
/// mapping of `scope`); absent for PATs, whose scopes Patrol reads from the record.
pub const EXTRA_SCOPES: &str = "patrol.dev/scopes";

/// A SubjectAccessReview, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessReview {
    /// The Patrol token the request was made with; `None`: not a Patrol token.
    pub token_id: Option<String>,
    /// The scopes an exchanged JWT carries; `None`: not a JWT (or one without scopes).
    pub jwt_scopes: Option<Vec<String>>,
    pub access: Access,
}

/// Why a request cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("a SubjectAccessReview must be sent as JSON: set Content-Type: application/json")]
    NotJson,
    #[error("{0}")]
    Malformed(String),
}

/// Reads a SubjectAccessReview request body.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<AccessReview, ReviewError> {
    if !crate::token_review::is_json(content_type) {
        return Err(ReviewError::NotJson);
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ReviewError::Malformed(format!(
            "the body is not valid JSON (line {}, column {}): send a SubjectAccessReview",
            e.line(),
            e.column()
        ))
    })?;
    match value.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        _ => {
            return Err(ReviewError::Malformed(format!(
                "apiVersion must be {API_VERSION}: configure the authorizer with subjectAccessReviewVersion: v1"
            )));
        }
    }
    if value.get("kind").and_then(Value::as_str) != Some(KIND) {
        return Err(ReviewError::Malformed(format!("kind must be {KIND}")));
    }
    let review: SubjectAccessReview = serde_json::from_value(value)
        .map_err(|e| ReviewError::Malformed(format!("not a valid SubjectAccessReview: {e}")))?;
    let spec = review.spec;
    let extra = spec.extra.unwrap_or_default();
    let token_id = extra
        .get(EXTRA_TOKEN_ID)
        .and_then(|values| values.first())
        .filter(|id| !id.is_empty())
        .cloned();
    let jwt_scopes = extra
        .get(EXTRA_SCOPES)
        .map(|values| scopes_of(values))
        .filter(|s| !s.is_empty());
    let access = match (spec.resource_attributes, spec.non_resource_attributes) {
        (Some(r), None) => Access::Resource(ResourceAccess {
            verb: r.verb.unwrap_or_default(),
            group: r.group.unwrap_or_default(),
            resource: r.resource.unwrap_or_default(),
            subresource: r.subresource.unwrap_or_default(),
            namespace: r.namespace.unwrap_or_default(),
            name: r.name.unwrap_or_default(),
        }),
        (None, Some(n)) => Access::NonResource {
            path: n.path.unwrap_or_default(),
            verb: n.verb.unwrap_or_default(),
        },
        _ => {
            return Err(ReviewError::Malformed(
                "spec must hold exactly one of resourceAttributes and nonResourceAttributes".into(),
            ));
        }
    };
    Ok(AccessReview {
        token_id,
        jwt_scopes,
        access,
    })
}

/// The scopes in an exchanged JWT's `patrol.dev/scopes` extra, however the claim mapping
/// delivered them: one space-separated string (`scope` as is) or one value per scope.
pub fn scopes_of(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(' '))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Patrol's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the next authorizer (RBAC) decide. The reason is a metric label.
    NoOpinion(&'static str),
    /// Deny, whatever RBAC would say.
    Deny {
        /// Metric label.
        reason: &'static str,
        /// Shown to the user in the `Forbidden` error.
        message: String,
    },
}

impl Verdict {
    pub fn decision(&self) -> &'static str {
        match self {
            Verdict::NoOpinion(_) => "no_opinion",
            Verdict::Deny { .. } => "denied",
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::NoOpinion(reason) | Verdict::Deny { reason, .. } => reason,
        }
    }

    /// The SubjectAccessReview response body.
    pub fn answer(&self) -> Value {
        let status = match self {
            Verdict::NoOpinion(_) => json!({"allowed": false}),
            Verdict::Deny { message, .. } => {
                json!({"allowed": false, "denied": true, "reason": message})
            }
        };
        json!({"apiVersion": API_VERSION, "kind": KIND, "status": status})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(spec: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": API_VERSION, "kind": KIND, "spec": spec}))
            .expect("json")
    }

    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn reads_a_pat_request() {
        let review = parse(
            JSON,
            &body(json!({
                "user": "alice", "groups": ["dev"],
                "extra": {"patrol.dev/token-id": ["AbCdEfGhIjKl"], "patrol.dev/pat": ["a/laptop"]},
                "resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "a", "version": "v1"}
            })),
        )
        .expect("parse");
        assert_eq!(review.token_id.as_deref(), Some("AbCdEfGhIjKl"));
        assert_eq!(review.jwt_scopes, None);
        assert_eq!(
            review.access,
            Access::Resource(ResourceAccess {
                verb: "list".into(),
                resource: "pods".into(),
                namespace: "a".into(),
                ..ResourceAccess::default()
            })
        );
    }

    #[test]
    fn reads_jwt_scopes_whichever_way_they_are_mapped() {
        for scopes in [json!(["read:pods", "deploy"]), json!(["read:pods deploy"])] {
            let review = parse(
                JSON,
                &body(json!({
                    "user": "alice",
                    "extra": {"patrol.dev/token-id": ["AbCdEfGhIjKl"], "patrol.dev/scopes": scopes},
                    "nonResourceAttributes": {"path": "/api", "verb": "get"}
                })),
            )
            .expect("parse");
            assert_eq!(
                review.jwt_scopes,
                Some(vec!["read:pods".to_owned(), "deploy".to_owned()])
            );
        }
    }

    #[test]
    fn a_request_without_a_token_id_is_not_patrols() {
        let review = parse(
            JSON,
            &body(json!({"user": "bob", "nonResourceAttributes": {"path": "/api", "verb": "get"}})),
        )
        .expect("parse");
        assert_eq!(review.token_id, None);
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let cases: [(Option<&str>, Vec<u8>, &str); 5] = [
            (Some("text/plain"), body(json!({})), "as JSON"),
            (JSON, b"{".to_vec(), "not valid JSON"),
            (
                JSON,
                serde_json::to_vec(
                    &json!({"apiVersion": "authorization.k8s.io/v1beta1", "kind": KIND}),
                )
                .expect("json"),
                "subjectAccessReviewVersion: v1",
            ),
            (JSON, body(json!({"user": "a"})), "exactly one of"),
            (
                JSON,
                body(json!({"resourceAttributes": {"verb": 3}})),
                "not a valid SubjectAccessReview",
            ),
        ];
        for (content_type, body, want) in cases {
            let err = parse(content_type, &body).expect_err(want);
            assert!(err.to_string().contains(want), "{err} should say {want}");
        }
    }

    #[test]
    fn answers() {
        assert_eq!(
            Verdict::NoOpinion("unscoped").answer()["status"],
            json!({"allowed": false})
        );
        let deny = Verdict::Deny {
            reason: "out_of_scope",
            message: "no".into(),
        };
        assert_eq!(
            deny.answer()["status"],
            json!({"allowed": false, "denied": true, "reason": "no"})
        );
        assert_eq!(deny.answer()["apiVersion"], API_VERSION);
    }
}

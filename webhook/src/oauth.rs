//! What the OAuth endpoints share: settings, RFC 6749 form bodies, RFC 6749 §5.2 /
//! RFC 6750 §3 errors, and the OpenID Provider metadata. Pure.
//!
//! **Form bodies** (RFC 6749 §3.2, Appendix B): `application/x-www-form-urlencoded`, UTF-8.
//! A parameter without a value is treated as absent (§3.1); parameters are sent at most
//! once (§3.2), except those a specification lets repeat (`audience` and `resource`,
//! RFC 8693 §2.1); unknown parameters are ignored (§3.1). Values are wiped from memory
//! when the form is dropped, since some of them are tokens.
//!
//! **Errors** carry a fixed description: descriptions never quote the request (it holds
//! tokens), and stay within the characters RFC 6749 allows for `error_description`.

use std::{borrow::Cow, time::Duration};

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::signing::{ALGORITHM, Rotation};

pub const TOKEN_PATH: &str = "/oauth2/token";
pub const INTROSPECT_PATH: &str = "/oauth2/introspect";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const JWKS_PATH: &str = "/jwks";

/// The token-exchange grant (RFC 8693 §2.1).
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `realm` of `WWW-Authenticate` challenges.
pub const REALM: &str = "patrol";

/// The token service's configuration.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// Issuer identifier: `https://host[:port][/path]`, no trailing slash. Must equal the
    /// `issuer.url` of the kube-apiserver's JWT authenticator, byte for byte.
    pub issuer: String,
    /// Where the signing keys live and how they rotate.
    pub signing_secret: String,
    pub rotation: Rotation,
    /// No exchanged token lives longer than this, whatever policy says; the rotation
    /// overlap is derived from it.
    pub max_token_ttl: Duration,
    /// How long an authenticated and authorized introspection caller is remembered.
    pub caller_cache_ttl: Duration,
    /// Audience of exchanged tokens when neither the request nor the PAT and its policies
    /// name one (`--default-audience`). Published in the discovery document.
    pub default_audience: Option<String>,
}

impl OAuthSettings {
    pub const DEFAULT_ROTATION: Duration = Duration::from_secs(30 * 86_400);
    pub const DEFAULT_MAX_TOKEN_TTL: Duration = Duration::from_secs(86_400);
    /// Clock skew tolerated between replicas, added to the overlap.
    pub const SKEW: Duration = Duration::from_secs(300);

    /// Settings for `issuer` with the given rotation period and token lifetime cap.
    pub fn new(
        issuer: &str,
        signing_secret: impl Into<String>,
        period: Duration,
        max_token_ttl: Duration,
    ) -> Result<Self, String> {
        if period < Duration::from_secs(1) {
            return Err("the signing-key rotation period must be at least 1s".into());
        }
        if max_token_ttl < Duration::from_secs(1) {
            return Err("the exchanged-token lifetime cap must be at least 1s".into());
        }
        Ok(Self {
            issuer: normalize_issuer(issuer)?,
            signing_secret: signing_secret.into(),
            rotation: Rotation {
                period,
                overlap: max_token_ttl + Self::SKEW,
            },
            max_token_ttl,
            caller_cache_ttl: Duration::from_secs(10),
            default_audience: None,
        })
    }

    /// Sets the service-wide default audience; empty means none.
    pub fn with_default_audience(mut self, audience: Option<String>) -> Result<Self, String> {
        match audience.filter(|a| !a.is_empty()) {
            Some(a)
                if a.len() > crate::exchange::MAX_TARGET_LEN || a.chars().any(char::is_control) =>
            {
                Err(format!(
                    "the default audience {a:?} is too long or holds control characters"
                ))
            }
            audience => {
                self.default_audience = audience;
                Ok(self)
            }
        }
    }

    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }
}

/// Checks an issuer identifier (OpenID Connect Discovery §2, RFC 8414 §2): an `https` URL
/// without query, fragment or credentials. A trailing slash is removed, so endpoint URLs
/// are `issuer + path`.
pub fn normalize_issuer(issuer: &str) -> Result<String, String> {
    let uri: http::Uri = issuer
        .parse()
        .map_err(|_| format!("the issuer {issuer:?} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("the issuer {issuer:?} must be an https URL"));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("the issuer {issuer:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "the issuer {issuer:?} must not contain credentials"
        ));
    }
    if uri.query().is_some() || issuer.contains('#') {
        return Err(format!(
            "the issuer {issuer:?} must not have a query or fragment"
        ));
    }
    Ok(issuer.trim_end_matches('/').to_owned())
}

/// OpenID Provider metadata (OpenID Connect Discovery 1.0 §3, RFC 8414 §2).
///
/// kube-apiserver's JWT authenticator reads `issuer` (which must equal its configured
/// URL exactly) and `jwks_uri`; `id_token_signing_alg_values_supported` tells it and
/// other OIDC libraries which algorithm to expect. Patrol has no authorization endpoint
/// (tokens come only from exchange), so `response_types_supported` lists `id_token`,
/// the value the specification requires of providers without one.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    pub token_endpoint: String,
    pub introspection_endpoint: String,
    pub grant_types_supported: Vec<&'static str>,
    pub response_types_supported: Vec<&'static str>,
    pub subject_types_supported: Vec<&'static str>,
    pub id_token_signing_alg_values_supported: Vec<&'static str>,
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    pub claims_supported: Vec<&'static str>,
    /// Scopes with a meaning of their own here: `credentials` asks for associated
    /// credentials (every other scope is a PAT's own); absent when credentials are off.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<&'static str>,
    /// The audience of exchanged tokens when the request names none and the PAT has no
    /// default (Patrol's extension; absent when the service has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patrol_default_audience: Option<String>,
}

impl ProviderMetadata {
    pub fn new(settings: &OAuthSettings) -> Self {
        Self {
            issuer: settings.issuer.clone(),
            jwks_uri: settings.endpoint(JWKS_PATH),
            token_endpoint: settings.endpoint(TOKEN_PATH),
            introspection_endpoint: settings.endpoint(INTROSPECT_PATH),
            grant_types_supported: vec![GRANT_TOKEN_EXCHANGE],
            response_types_supported: vec!["id_token"],
            subject_types_supported: vec!["public"],
            id_token_signing_alg_values_supported: vec![ALGORITHM],
            token_endpoint_auth_methods_supported: vec!["none"],
            claims_supported: vec![
                "iss",
                "sub",
                "aud",
                "exp",
                "iat",
                "nbf",
                "jti",
                "scope",
                "groups",
                "uid",
                "client_id",
                "act",
                crate::exchange::CLAIM_TOKEN_ID,
                crate::exchange::CLAIM_PAT,
            ],
            // Set by the issuer when it mints credentials.
            scopes_supported: Vec::new(),
            patrol_default_audience: settings.default_audience.clone(),
        }
    }
}

/// RFC 6749 §5.2 error codes, plus RFC 6750 §3.1's for callers' bearer tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    /// RFC 8693 §2.2.2 (and RFC 8707).
    InvalidTarget,
    /// RFC 6750: the caller's bearer token is missing or not valid.
    InvalidToken,
    /// RFC 6750: the caller is authenticated but not allowed.
    InsufficientScope,
    /// Answered with 503: the service cannot judge the request right now.
    TemporarilyUnavailable,
    /// Answered with 404: the service is not enabled on this server.
    NotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidTarget => "invalid_target",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::NotFound => "not_found",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::InvalidClient | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope => StatusCode::FORBIDDEN,
            Self::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error answer of the OAuth endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: Cow<'static, str>,
    pub status: StatusCode,
    /// `WWW-Authenticate` to send (401 and 403).
    pub challenge: Option<String>,
}

impl OAuthError {
    pub fn new(code: ErrorCode, description: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            description: description.into(),
            status: code.status(),
            challenge: None,
        }
    }

    pub fn invalid_request(description: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, description)
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_challenge(mut self, challenge: impl Into<String>) -> Self {
        self.challenge = Some(challenge.into());
        self
    }

    pub fn unavailable(description: &'static str) -> Self {
        Self::new(ErrorCode::TemporarilyUnavailable, description)
    }

    /// A request body over the endpoint's limit.
    pub fn too_large() -> Self {
        Self::invalid_request("the request body is too large")
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    }
}

/// Whether `text` may appear in `error_description` (RFC 6749 §5.2: %x20-21 / %x23-5B /
/// %x5D-7E — printable ASCII without `"` and `\`).
pub fn is_valid_description(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    error_description: &'a str,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.as_str(),
            error_description: &self.description,
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Whether `content_type` is `application/x-www-form-urlencoded` in UTF-8 (a `charset`
/// parameter, if any, must say so).
pub fn is_form(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return false;
    }
    parts.all(|p| match p.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    })
}

/// A decoded form body. Values are wiped when dropped.
pub struct Form {
    pairs: Vec<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values may be tokens.
        f.debug_list()
            .entries(self.pairs.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Form {
    /// Reads a body sent with `content_type`.
    pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Self, OAuthError> {
        if !is_form(content_type) {
            return Err(OAuthError::invalid_request(
                "send the parameters as application/x-www-form-urlencoded",
            ));
        }
        if std::str::from_utf8(body).is_err() {
            return Err(OAuthError::invalid_request(
                "the request body is not valid UTF-8",
            ));
        }
        let mut pairs = Vec::new();
        for (name, value) in form_urlencoded::parse(body) {
            // Percent-escapes that decode to invalid UTF-8 come back as U+FFFD; refuse them
            // (a literal U+FFFD in a parameter is refused too, harmlessly).
            if value.contains('\u{FFFD}') || name.contains('\u{FFFD}') {
                return Err(OAuthError::invalid_request(
                    "a parameter does not decode to UTF-8",
                ));
            }
            if value.is_empty() {
                continue;
            }
            pairs.push((name.into_owned(), Zeroizing::new(value.into_owned())));
        }
        Ok(Self { pairs })
    }

    /// The value of a parameter sent at most once.
    pub fn one(&self, name: &str) -> Result<Option<&str>, OAuthError> {
        let mut values = self.pairs.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(OAuthError::invalid_request(format!(
                "the {name} parameter must not be repeated"
            )));
        }
        Ok(first)
    }

    /// A parameter sent at most once that must be present.
    pub fn required(&self, name: &str) -> Result<&str, OAuthError> {
        self.one(name)?
            .ok_or_else(|| OAuthError::invalid_request(format!("the {name} parameter is required")))
    }

    /// Every value of a parameter that may repeat, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    /// Checks that none of `names` is repeated.
    pub fn no_repeats(&self, names: &[&str]) -> Result<(), OAuthError> {
        names.iter().try_for_each(|n| self.one(n).map(|_| ()))
    }
}

/// Whether `value` is a `client_id` RFC 6749 allows (VSCHAR, %x20-7E), of sane length.
pub fn is_valid_client_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 255 && value.bytes().all(|b| (0x20..=0x7E).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::Value;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn content_types() {
        for ok in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-URLEncoded",
            "application/x-www-form-urlencoded; charset=UTF-8",
            "application/x-www-form-urlencoded;charset=\"utf-8\"",
        ] {
            assert!(is_form(Some(ok)), "{ok}");
        }
        for bad in [
            "application/json",
            "multipart/form-data",
            "text/plain",
            "application/x-www-form-urlencoded; charset=iso-8859-1",
            "",
        ] {
            assert!(!is_form(Some(bad)), "{bad}");
        }
        assert!(!is_form(None));
        let e = Form::parse(Some("application/json"), b"{}").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn parameters_empty_repeated_unknown_and_encoded() {
        let form = Form::parse(
            FORM,
            b"a=1&empty=&b=x%20y+z&audience=one&audience=two&dup=1&dup=2&unknown=ok&audience=",
        )
        .unwrap();
        assert_eq!(form.one("a").unwrap(), Some("1"));
        assert_eq!(form.one("b").unwrap(), Some("x y z"));
        assert_eq!(form.one("empty").unwrap(), None, "empty means absent");
        assert!(!form.contains("empty"));
        assert_eq!(form.all("audience"), ["one", "two"]);
        let e = form.one("dup").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.description.contains("dup"));
        assert!(form.no_repeats(&["a", "b"]).is_ok());
        assert!(form.no_repeats(&["a", "dup"]).is_err());
        assert_eq!(
            form.required("missing").unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        assert!(
            !format!("{form:?}").contains("x y z"),
            "values stay out of Debug"
        );

        assert!(
            Form::parse(FORM, b"a=%FF").is_err(),
            "escapes must decode to UTF-8"
        );
        assert!(
            Form::parse(FORM, b"a=\xff").is_err(),
            "raw bytes must be UTF-8"
        );
        assert!(Form::parse(FORM, b"").unwrap().pairs.is_empty());
        assert!(
            Form::parse(FORM, b"&&=&x").is_ok(),
            "stray separators are harmless"
        );
    }

    #[test]
    fn issuers() {
        assert_eq!(
            normalize_issuer("https://127.0.0.1:8443/").unwrap(),
            "https://127.0.0.1:8443"
        );
        assert_eq!(
            normalize_issuer("https://patrol.example/tenant").unwrap(),
            "https://patrol.example/tenant"
        );
        for bad in [
            "http://127.0.0.1:8443",
            "127.0.0.1:8443",
            "https://u:p@host",
            "https://host/?q=1",
            "https://host/#f",
            "not a url",
        ] {
            assert!(normalize_issuer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn discovery_names_the_endpoints_under_the_issuer() {
        let s = OAuthSettings::new(
            "https://127.0.0.1:8443",
            "keys",
            OAuthSettings::DEFAULT_ROTATION,
            OAuthSettings::DEFAULT_MAX_TOKEN_TTL,
        )
        .unwrap();
        assert_eq!(s.rotation.overlap, Duration::from_secs(86_400 + 300));
        let doc = serde_json::to_value(ProviderMetadata::new(&s)).unwrap();
        assert_eq!(doc["issuer"], "https://127.0.0.1:8443");
        assert_eq!(doc["jwks_uri"], "https://127.0.0.1:8443/jwks");
        assert_eq!(doc["token_endpoint"], "https://127.0.0.1:8443/oauth2/token");
        assert_eq!(
            doc["introspection_endpoint"],
            "https://127.0.0.1:8443/oauth2/introspect"
        );
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            serde_json::json!(["ES256"])
        );
        assert_eq!(
            doc["response_types_supported"],
            serde_json::json!(["id_token"])
        );
        assert_eq!(
            doc["subject_types_supported"],
            serde_json::json!(["public"])
        );
        assert_eq!(
            doc["grant_types_supported"],
            serde_json::json!([GRANT_TOKEN_EXCHANGE])
        );
        assert!(
            OAuthSettings::new("https://x", "k", Duration::ZERO, Duration::from_secs(1)).is_err()
        );
    }

    #[tokio::test]
    async fn error_responses_follow_rfc_6749_and_6750() {
        let cases = [
            (ErrorCode::InvalidRequest, 400),
            (ErrorCode::InvalidClient, 401),
            (ErrorCode::InvalidGrant, 400),
            (ErrorCode::UnauthorizedClient, 400),
            (ErrorCode::UnsupportedGrantType, 400),
            (ErrorCode::InvalidScope, 400),
            (ErrorCode::InvalidTarget, 400),
            (ErrorCode::InvalidToken, 401),
            (ErrorCode::InsufficientScope, 403),
            (ErrorCode::TemporarilyUnavailable, 503),
        ];
        for (code, status) in cases {
            let response = OAuthError::new(code, "what went wrong")
                .with_challenge("Basic realm=\"patrol\"")
                .into_response();
            assert_eq!(response.status().as_u16(), status, "{code:?}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            assert_eq!(
                response.headers()[header::WWW_AUTHENTICATE],
                "Basic realm=\"patrol\""
            );
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], code.as_str());
            assert_eq!(body["error_description"], "what went wrong");
            assert_eq!(body.as_object().unwrap().len(), 2);
        }
        assert!(is_valid_description("the scope parameter is malformed"));
        assert!(!is_valid_description("quote \" here"));
        assert!(!is_valid_description("back\\slash"));
        assert!(!is_valid_description("ünïcode"));
        assert!(is_valid_client_id("my-cli 1.0"));
        assert!(!is_valid_client_id("tab\there"));
        assert!(!is_valid_client_id(&"a".repeat(256)));
    }
}

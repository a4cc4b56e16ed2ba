//! RFC 8693 token exchange as Patrol decides it: a validated PAT (the subject token) in,
//! the claims of a short-lived JWT out — or the RFC 6749 §5.2 error saying why not. Pure:
//! the caller validates the PAT, reviews the actor token and signs.
//!
//! **Request** (RFC 8693 §2.1, as a [`Form`]):
//!
//! | parameter | Patrol |
//! |---|---|
//! | `grant_type` | must be `urn:ietf:params:oauth:grant-type:token-exchange`, else `unsupported_grant_type` |
//! | `subject_token` | the PAT |
//! | `subject_token_type` | `…:token-type:access_token` or `…:token-type:pat` |
//! | `audience`, `resource` | may repeat; all of them become `aud`; `resource` must be an absolute URI without fragment (RFC 8707) |
//! | `scope` | space-separated; the token gets requested ∩ granted |
//! | `requested_token_type` | `…:token-type:access_token` (default) or `…:token-type:jwt` |
//! | `actor_token`, `actor_token_type` | together or not at all; type `…:jwt` or `…:access_token` |
//! | `client_id` | optional, for public clients; recorded as the `client_id` claim |
//!
//! **Error codes** (the description is fixed per case and never quotes the request):
//!
//! | code | when |
//! |---|---|
//! | `invalid_request` | missing or repeated parameter, unsupported token type, bad body, no audience and no default; an actor token that is not valid or not allowed (RFC 8693 §2.2.2) |
//! | `invalid_client` (401) | client credentials sent: Patrol serves public clients only |
//! | `invalid_grant` | the PAT is malformed, unknown, wrong, expired, idle or revoked — one description for all, so the answer is no oracle |
//! | `unauthorized_client` | policy disables exchange for this PAT (exchange max TTL 0) |
//! | `unsupported_grant_type` | another `grant_type` |
//! | `invalid_scope` | malformed scope, or none of the requested scopes is granted |
//! | `invalid_target` | an audience or resource the PAT may not be exchanged for, or a malformed `resource` |
//!
//! RFC 8693 §2.2.2 asks for `invalid_request` when the subject token is not valid; Patrol
//! answers `invalid_grant`, RFC 6749 §5.2's code for a grant that is "invalid, expired,
//! revoked", because the PAT is the grant here and clients (and the exec-credential
//! plugin of DESIGN §7) must tell "get a new PAT" from "fix the request". Deployed STSs
//! answer the same way. The actor token is not a grant, so it follows §2.2.2.
//!
//! **Lifetime.** `exp` = now + min(the record's exchange max TTL (policy), the service cap
//! `--max-exchanged-token-ttl`, the time left until the PAT expires).

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use patrol_api::v1alpha1::CREDENTIALS_SCOPE;
use patrol_credentials::AssociatedCredentials;
pub use patrol_credentials::CredentialsRequest;

use crate::{
    index::IndexedRecord,
    oauth::{ErrorCode, Form, GRANT_TOKEN_EXCHANGE, OAuthError, is_valid_client_id},
};

pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The subject token type PAT-exchange clients send.
pub const TOKEN_TYPE_PAT: &str = "urn:ietf:params:oauth:token-type:pat";
/// Claim carrying the PAT's token id (mapped to `user.extra["patrol.dev/token-id"]`).
pub const CLAIM_TOKEN_ID: &str = "patrol_tid";
/// Claim carrying `namespace/name` of the PersonalAccessToken.
pub const CLAIM_PAT: &str = "patrol_pat";
/// The one description of every refused subject token.
pub const SUBJECT_REJECTED: &str = "the subject_token is invalid, expired or revoked";
/// Most audiences and resources one token may name.
pub const MAX_TARGETS: usize = 16;
/// Longest audience or resource accepted.
pub const MAX_TARGET_LEN: usize = 1024;

/// Parameters sent at most once.
const SINGLE: &[&str] = &[
    "grant_type",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
    "scope",
    "client_id",
];

/// What the issued token is declared as (`issued_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuedTokenType {
    AccessToken,
    Jwt,
}

impl IssuedTokenType {
    pub fn uri(self) -> &'static str {
        match self {
            Self::AccessToken => TOKEN_TYPE_ACCESS_TOKEN,
            Self::Jwt => TOKEN_TYPE_JWT,
        }
    }
}

/// A token-exchange request, read and checked. Tokens are wiped when dropped.
pub struct ExchangeRequest {
    pub subject_token: Zeroizing<String>,
    pub subject_token_type: &'static str,
    /// `audience` values, then `resource` values, without repeats.
    pub targets: Vec<String>,
    /// `None`: not sent (all granted scopes).
    pub scope: Option<Vec<String>>,
    pub requested_token_type: IssuedTokenType,
    pub actor_token: Option<Zeroizing<String>>,
    pub client_id: Option<String>,
}

impl std::fmt::Debug for ExchangeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeRequest")
            .field("subject_token", &"…")
            .field("subject_token_type", &self.subject_token_type)
            .field("targets", &self.targets)
            .field("scope", &self.scope)
            .field("requested_token_type", &self.requested_token_type)
            .field("actor_token", &self.actor_token.as_ref().map(|_| "…"))
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// Reads a token-exchange request.
pub fn parse_request(form: &Form) -> Result<ExchangeRequest, OAuthError> {
    form.no_repeats(SINGLE)?;
    match form.required("grant_type")? {
        GRANT_TOKEN_EXCHANGE => {}
        _ => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                "this endpoint serves the token-exchange grant only",
            ));
        }
    }
    if ["client_secret", "client_assertion", "client_assertion_type"]
        .iter()
        .any(|p| form.contains(p))
    {
        return Err(public_clients_only());
    }
    let client_id = match form.one("client_id")? {
        Some(id) if is_valid_client_id(id) => Some(id.to_owned()),
        Some(_) => return Err(OAuthError::invalid_request("the client_id is malformed")),
        None => None,
    };
    let subject_token = Zeroizing::new(form.required("subject_token")?.to_owned());
    let subject_token_type = match form.required("subject_token_type")? {
        TOKEN_TYPE_ACCESS_TOKEN => TOKEN_TYPE_ACCESS_TOKEN,
        TOKEN_TYPE_PAT => TOKEN_TYPE_PAT,
        _ => {
            return Err(OAuthError::invalid_request(
                "unsupported subject_token_type: send a PAT as access_token or pat",
            ));
        }
    };
    let actor_token = match (form.one("actor_token")?, form.one("actor_token_type")?) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(OAuthError::invalid_request(
                "actor_token_type is required with actor_token",
            ));
        }
        (None, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "actor_token_type must not be sent without actor_token",
            ));
        }
        (Some(token), Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ACCESS_TOKEN)) => {
            Some(Zeroizing::new(token.to_owned()))
        }
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                "unsupported actor_token_type: send a Kubernetes token as jwt or access_token",
            ));
        }
    };
    let requested_token_type = match form.one("requested_token_type")? {
        None | Some(TOKEN_TYPE_ACCESS_TOKEN) => IssuedTokenType::AccessToken,
        Some(TOKEN_TYPE_JWT) => IssuedTokenType::Jwt,
        Some(_) => {
            return Err(OAuthError::invalid_request(
                "unsupported requested_token_type: Patrol issues JWT access tokens only",
            ));
        }
    };
    let scope = form.one("scope")?.map(parse_scope).transpose()?;
    let targets = parse_targets(&form.all("audience"), &form.all("resource"))?;
    Ok(ExchangeRequest {
        subject_token,
        subject_token_type,
        targets,
        scope,
        requested_token_type,
        actor_token,
        client_id,
    })
}

/// The answer to anyone presenting client credentials.
pub fn public_clients_only() -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidClient,
        "client authentication is not supported: public clients send client_id only",
    )
}

/// A `scope` value (RFC 6749 §3.3): scope-tokens of NQCHAR separated by single spaces.
pub fn parse_scope(value: &str) -> Result<Vec<String>, OAuthError> {
    let malformed = || OAuthError::new(ErrorCode::InvalidScope, "the scope parameter is malformed");
    let mut scopes: Vec<String> = Vec::new();
    for token in value.split(' ') {
        let nqchar = |b: u8| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E);
        if token.is_empty() || !token.bytes().all(nqchar) {
            return Err(malformed());
        }
        if !scopes.iter().any(|s| s == token) {
            scopes.push(token.to_owned());
        }
    }
    Ok(scopes)
}

/// Whether `value` is an absolute URI without a fragment (RFC 8707 §2; RFC 3986 §4.3).
fn is_absolute_uri(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !value.contains('#')
        && value.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_targets(audiences: &[&str], resources: &[&str]) -> Result<Vec<String>, OAuthError> {
    let target = |d: &'static str| OAuthError::new(ErrorCode::InvalidTarget, d);
    if audiences.len() + resources.len() > MAX_TARGETS {
        return Err(target("too many audience and resource values"));
    }
    let mut targets: Vec<String> = Vec::new();
    for audience in audiences {
        if audience.len() > MAX_TARGET_LEN || audience.chars().any(char::is_control) {
            return Err(target("an audience value is malformed"));
        }
        if !targets.iter().any(|t| t == audience) {
            targets.push((*audience).to_owned());
        }
    }
    for resource in resources {
        if resource.len() > MAX_TARGET_LEN || !is_absolute_uri(resource) {
            return Err(target(
                "a resource must be an absolute URI without a fragment",
            ));
        }
        if !targets.iter().any(|t| t == resource) {
            targets.push((*resource).to_owned());
        }
    }
    Ok(targets)
}

/// `aud`: one string, or an array when there are several (RFC 7519 §4.1.3).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn from_list(mut list: Vec<String>) -> Self {
        if list.len() == 1 {
            Self::One(list.remove(0))
        } else {
            Self::Many(list)
        }
    }

    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(a) => a == audience,
            Self::Many(list) => list.iter().any(|a| a == audience),
        }
    }
}

/// The acting party (RFC 8693 §4.1).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub sub: String,
}

/// The claims of an exchanged token.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExchangedClaims {
    pub iss: String,
    /// The PAT owner's username.
    pub sub: String,
    pub aud: Audience,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    /// Space-separated; absent when the token carries no scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Owner groups, then one group per scope (the TokenReview mapping).
    #[serde(default)]
    pub groups: Vec<String>,
    /// The owner's uid; always present (possibly empty), because kube-apiserver refuses
    /// a token that lacks a claim its `uid` mapping names.
    #[serde(default)]
    pub uid: String,
    pub patrol_tid: String,
    /// `namespace/name` of the PersonalAccessToken.
    pub patrol_pat: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
}

/// What the service decides with.
#[derive(Debug, Clone)]
pub struct ExchangePolicy<'a> {
    pub issuer: &'a str,
    /// Audience of tokens whose request, PAT and policies name none
    /// (`--default-audience`); without it such a request is refused.
    pub default_audience: Option<&'a str>,
    /// Prefix of scope groups, as in TokenReview answers.
    pub scope_group_prefix: &'a str,
    /// No token lives longer than this.
    pub max_token_ttl: Duration,
}

/// A decided exchange: the claims to sign and how to describe the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub claims: ExchangedClaims,
    pub issued_token_type: IssuedTokenType,
    pub expires_in: u64,
    /// Associated credentials to mint beside the token, when asked for.
    pub credentials: Option<CredentialsRequest>,
}

/// The RFC 8693 §2.2.1 response.
#[derive(Serialize)]
pub struct TokenResponse {
    #[serde(serialize_with = "expose")]
    pub access_token: Zeroizing<String>,
    pub issued_token_type: &'static str,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Associated credentials, when asked for (see [`AssociatedCredentials`]).
    #[serde(flatten)]
    pub credentials: AssociatedCredentials,
}

fn expose<S: serde::Serializer>(token: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(token)
}

impl Decision {
    /// The response carrying `token`, the signed claims.
    pub fn response(&self, token: String) -> TokenResponse {
        TokenResponse {
            access_token: Zeroizing::new(token),
            issued_token_type: self.issued_token_type.uri(),
            // Both types are bearer JWTs usable as access tokens, so never `N_A`.
            token_type: "Bearer",
            expires_in: self.expires_in,
            scope: self.claims.scope.clone(),
            credentials: AssociatedCredentials::default(),
        }
    }
}

/// Whether `record` lets anyone act with it; checked before the actor token is reviewed,
/// so a PAT that names no actor never costs a TokenReview.
pub fn check_actors_allowed(record: &IndexedRecord) -> Result<(), OAuthError> {
    if record.exchange().allowed_actors.is_empty() {
        Err(OAuthError::invalid_request(
            "this token does not allow an actor_token",
        ))
    } else {
        Ok(())
    }
}

/// Decides an exchange for the accepted `record`. `actor` is the username the Kubernetes
/// API gave the actor token, when one was sent.
pub fn decide(
    record: &IndexedRecord,
    request: &ExchangeRequest,
    actor: Option<&str>,
    policy: &ExchangePolicy<'_>,
    now: DateTime<Utc>,
    jti: String,
) -> Result<Decision, OAuthError> {
    let grant = record.exchange();
    if grant.max_ttl_seconds == 0 {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "token exchange is disabled for this token by policy",
        ));
    }

    let targets = if request.targets.is_empty() {
        let default = grant
            .default_audience
            .as_deref()
            .or(policy.default_audience)
            .ok_or_else(|| {
                OAuthError::invalid_request(
                    "an audience or resource is required: neither this token nor the service has a default audience",
                )
            })?;
        vec![default.to_owned()]
    } else {
        request.targets.clone()
    };
    if let Some(allowed) = &grant.audiences
        && !targets.iter().all(|t| allowed.contains(t))
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            "this token may not be exchanged for a requested audience or resource",
        ));
    }

    let granted: Vec<&str> = record.scopes().collect();
    let (credentials, requested) = split_credentials(request.scope.as_deref());
    let credentials = credentials
        .map(|asked| entitled_credentials(record.is_scoped(), &granted, asked))
        .transpose()?;
    let scopes: Vec<&str> = match requested {
        None => granted,
        Some(requested) => {
            let kept: Vec<&str> = requested
                .into_iter()
                .filter(|s| granted.contains(s))
                .collect();
            if kept.is_empty() {
                return Err(OAuthError::new(
                    ErrorCode::InvalidScope,
                    "none of the requested scopes is granted to this token",
                ));
            }
            kept
        }
    };

    let act = match (&request.actor_token, actor) {
        (None, _) => None,
        (Some(_), Some(actor)) if grant.allowed_actors.iter().any(|a| a == actor) => Some(Actor {
            sub: actor.to_owned(),
        }),
        (Some(_), _) => {
            return Err(OAuthError::invalid_request(
                "the actor_token is not valid for this token",
            ));
        }
    };

    let mut lifetime = grant.max_ttl_seconds.min(policy.max_token_ttl.as_secs());
    if let Some(expires_at) = record.expires_at() {
        let left = (expires_at - now).num_seconds();
        lifetime = lifetime.min(u64::try_from(left).unwrap_or(0));
    }
    if lifetime == 0 {
        // Expiring this very second: as refused as an expired one.
        return Err(OAuthError::new(ErrorCode::InvalidGrant, SUBJECT_REJECTED));
    }
    let iat = now.timestamp();

    let mut groups: Vec<String> = record.groups().map(str::to_owned).collect();
    for scope in &scopes {
        let group = format!("{}{scope}", policy.scope_group_prefix);
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    let claims = ExchangedClaims {
        iss: policy.issuer.to_owned(),
        sub: record.username().to_owned(),
        aud: Audience::from_list(targets),
        exp: iat.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX)),
        iat,
        nbf: iat,
        jti,
        scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
        groups,
        uid: record.uid().unwrap_or_default().to_owned(),
        patrol_tid: record.id.to_string(),
        patrol_pat: format!("{}/{}", record.pat_namespace(), record.pat_name()),
        client_id: request.client_id.clone(),
        act,
    };
    Ok(Decision {
        claims,
        issued_token_type: request.requested_token_type,
        expires_in: lifetime,
        credentials,
    })
}

/// What of the asked-for credentials the token may have. Asking is a request, not a
/// narrowing: a token without scopes may do all its owner may, credentials included; a
/// scoped one needs the `credentials` scope, or `credentials:<provider>` for one provider.
fn entitled_credentials(
    scoped: bool,
    granted: &[&str],
    asked: CredentialsRequest,
) -> Result<CredentialsRequest, OAuthError> {
    if !scoped || granted.contains(&CREDENTIALS_SCOPE) {
        return Ok(asked);
    }
    let held: Vec<String> = granted
        .iter()
        .filter_map(|s| s.strip_prefix("credentials:"))
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    let refused = || {
        OAuthError::new(
            ErrorCode::InvalidScope,
            "this token does not hold the credentials scope for what was asked",
        )
    };
    match asked {
        CredentialsRequest::All if held.is_empty() => Err(refused()),
        CredentialsRequest::All => Ok(CredentialsRequest::Providers(held)),
        CredentialsRequest::Providers(names) if names.iter().all(|n| held.contains(n)) => {
            Ok(CredentialsRequest::Providers(names))
        }
        CredentialsRequest::Providers(_) => Err(refused()),
    }
}

/// Separates the credential requests (`credentials`, `credentials:<provider>`) from the
/// scopes that narrow the token. `None` scopes: none sent besides credential requests.
fn split_credentials(scope: Option<&[String]>) -> (Option<CredentialsRequest>, Option<Vec<&str>>) {
    let Some(scope) = scope else {
        return (None, None);
    };
    let mut credentials: Option<CredentialsRequest> = None;
    let mut rest = Vec::new();
    for s in scope {
        if s == CREDENTIALS_SCOPE {
            credentials = Some(CredentialsRequest::All);
        } else if let Some(name) = s.strip_prefix("credentials:").filter(|n| !n.is_empty()) {
            match &mut credentials {
                Some(CredentialsRequest::All) => {}
                Some(CredentialsRequest::Providers(names)) => names.push(name.to_owned()),
                None => credentials = Some(CredentialsRequest::Providers(vec![name.to_owned()])),
            }
        } else {
            rest.push(s.as_str());
        }
    }
    let rest = (!rest.is_empty()).then_some(rest);
    (credentials, rest)
}

/// A fresh `jti`: 128 random bits, base64url.
pub fn new_jti() -> Option<String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{index::tests::record, oauth::is_valid_description};
    use patrol_api::{record::ExchangeGrant, token::TokenId};

    const ID: &str = "AbCdEf012345";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn indexed(edit: impl FnOnce(&mut patrol_api::record::TokenRecord)) -> IndexedRecord {
        let mut r = record(ID, "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaA");
        r.scopes = vec!["read:pods".into(), "deploy".into(), "admin".into()];
        r.exchange = ExchangeGrant {
            audiences: Some(vec![
                "kubernetes-patrol".into(),
                "vault".into(),
                "https://api.example.com/".into(),
            ]),
            default_audience: Some("kubernetes-patrol".into()),
            allowed_actors: vec!["system:serviceaccount:ci:runner".into()],
            max_ttl_seconds: 3_600,
        };
        edit(&mut r);
        IndexedRecord::new(TokenId::parse(ID).unwrap(), r, "secret")
    }

    const POLICY: ExchangePolicy<'static> = ExchangePolicy {
        issuer: "https://patrol.example",
        default_audience: None,
        scope_group_prefix: "patrol:scope:",
        max_token_ttl: Duration::from_secs(86_400),
    };

    fn form(body: &str) -> Form {
        Form::parse(Some("application/x-www-form-urlencoded"), body.as_bytes()).unwrap()
    }

    const BASE: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
        &subject_token=patrol_x&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token";

    fn request(extra: &str) -> Result<ExchangeRequest, OAuthError> {
        parse_request(&form(&format!("{BASE}{extra}")))
    }

    fn decide_with(
        r: &IndexedRecord,
        extra: &str,
        actor: Option<&str>,
    ) -> Result<Decision, OAuthError> {
        decide(r, &request(extra)?, actor, &POLICY, now(), "jti-1".into())
    }

    fn code(result: Result<impl std::fmt::Debug, OAuthError>) -> ErrorCode {
        result.unwrap_err().code
    }

    #[test]
    fn the_service_default_audience_serves_a_token_and_request_that_name_none() {
        let bare = indexed(|r| {
            r.exchange.audiences = None;
            r.exchange.default_audience = None;
        });
        let refused = decide_with(&bare, "", None).unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidRequest);
        let policy = ExchangePolicy {
            default_audience: Some("patrol"),
            ..POLICY
        };
        let d = decide(
            &bare,
            &request("").unwrap(),
            None,
            &policy,
            now(),
            "j".into(),
        )
        .unwrap();
        assert_eq!(d.claims.aud, Audience::One("patrol".into()));
        // The PAT's own default still comes first.
        let own = indexed(|_| {});
        let d = decide(
            &own,
            &request("").unwrap(),
            None,
            &policy,
            now(),
            "j".into(),
        )
        .unwrap();
        assert_eq!(d.claims.aud, Audience::One("kubernetes-patrol".into()));
    }

    #[test]
    fn asking_for_credentials_requests_them_without_narrowing_the_token() {
        // Unscoped: may do all its owner may, credentials included.
        let unscoped = indexed(|r| {
            r.scopes.clear();
            r.scoped = false;
        });
        let d = decide_with(&unscoped, "&scope=credentials", None).unwrap();
        assert_eq!(d.credentials, Some(CredentialsRequest::All));
        assert_eq!(d.claims.scope, None, "still unscoped");

        // Scoped without the credentials scope: refused, not silently empty.
        assert_eq!(
            code(decide_with(&indexed(|_| {}), "&scope=credentials", None)),
            ErrorCode::InvalidScope
        );

        // Scoped with it: credentials, and the token keeps all its scopes.
        let holder = indexed(|r| r.scopes = vec!["credentials".into(), "read:pods".into()]);
        let d = decide_with(&holder, "&scope=credentials", None).unwrap();
        assert_eq!(d.credentials, Some(CredentialsRequest::All));
        assert_eq!(d.claims.scope.as_deref(), Some("credentials read:pods"));

        // Naming providers, beside a narrowing scope.
        let d = decide_with(
            &holder,
            "&scope=credentials%3Aanalytics+read%3Apods+credentials%3Aci",
            None,
        )
        .unwrap();
        assert_eq!(
            d.credentials,
            Some(CredentialsRequest::Providers(vec![
                "analytics".into(),
                "ci".into()
            ]))
        );
        assert_eq!(d.claims.scope.as_deref(), Some("read:pods"));

        // Not asked: none.
        assert_eq!(decide_with(&holder, "", None).unwrap().credentials, None);

        // Holding one provider's scope: that provider only.
        let one = indexed(|r| r.scopes = vec!["credentials:analytics".into(), "read:pods".into()]);
        assert_eq!(
            decide_with(&one, "&scope=credentials", None)
                .unwrap()
                .credentials,
            Some(CredentialsRequest::Providers(vec!["analytics".into()]))
        );
        assert_eq!(
            decide_with(&one, "&scope=credentials%3Aanalytics", None)
                .unwrap()
                .credentials,
            Some(CredentialsRequest::Providers(vec!["analytics".into()]))
        );
        assert_eq!(
            code(decide_with(&one, "&scope=credentials%3Aci", None)),
            ErrorCode::InvalidScope
        );
    }

    #[test]
    fn a_minimal_request_gets_the_default_audience_all_scopes_and_the_policy_ttl() {
        let d = decide_with(&indexed(|_| {}), "", None).unwrap();
        let c = &d.claims;
        assert_eq!(c.iss, "https://patrol.example");
        assert_eq!(c.sub, "alice");
        assert_eq!(c.aud, Audience::One("kubernetes-patrol".into()));
        assert_eq!(c.iat, now().timestamp());
        assert_eq!(c.nbf, c.iat);
        assert_eq!(c.exp, c.iat + 3_600);
        assert_eq!(d.expires_in, 3_600);
        assert_eq!(c.scope.as_deref(), Some("read:pods deploy admin"));
        assert_eq!(
            c.groups,
            [
                "dev",
                "patrol:scope:read:pods",
                "patrol:scope:deploy",
                "patrol:scope:admin"
            ]
        );
        assert_eq!(c.uid, "u-1");
        assert_eq!(c.patrol_tid, ID);
        assert_eq!(c.patrol_pat, "team-a/laptop");
        assert_eq!(c.act, None);
        assert_eq!(c.client_id, None);
        assert_eq!(d.issued_token_type, IssuedTokenType::AccessToken);

        let json = serde_json::to_value(c).unwrap();
        assert_eq!(json["aud"], "kubernetes-patrol", "one audience is a string");
        assert!(json.get("act").is_none() && json.get("client_id").is_none());
        let response = serde_json::to_value(d.response("signed".into())).unwrap();
        assert_eq!(
            response,
            serde_json::json!({
                "access_token": "signed",
                "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": "read:pods deploy admin",
            })
        );
    }

    #[test]
    fn expiry_is_the_least_of_policy_ttl_service_cap_and_pat_expiry() {
        let at = |secs: i64| Some(now() + chrono::Duration::seconds(secs));
        // (record max TTL, PAT expiry, service cap, expected lifetime or refusal)
        type Case = (u64, Option<DateTime<Utc>>, u64, Option<u64>);
        let cases: [Case; 6] = [
            (3_600, None, 86_400, Some(3_600)),
            (3_600, at(600), 86_400, Some(600)),
            (3_600, at(7_200), 86_400, Some(3_600)),
            (172_800, None, 86_400, Some(86_400)),
            (3_600, at(0), 86_400, None),
            (3_600, at(-5), 86_400, None),
        ];
        for (max_ttl, expires_at, cap, want) in cases {
            let r = indexed(|r| {
                r.exchange.max_ttl_seconds = max_ttl;
                r.expires_at = expires_at;
            });
            let policy = ExchangePolicy {
                max_token_ttl: Duration::from_secs(cap),
                ..POLICY
            };
            let got = decide(&r, &request("").unwrap(), None, &policy, now(), "j".into());
            match want {
                Some(secs) => {
                    let d = got.unwrap();
                    assert_eq!(d.expires_in, secs, "{max_ttl} {expires_at:?}");
                    assert_eq!(d.claims.exp - d.claims.iat, i64::try_from(secs).unwrap());
                    if let Some(e) = expires_at {
                        assert!(d.claims.exp <= e.timestamp(), "never outlives the PAT");
                    }
                }
                None => {
                    let e = got.unwrap_err();
                    assert_eq!(
                        (e.code, e.description.as_ref()),
                        (ErrorCode::InvalidGrant, SUBJECT_REJECTED)
                    );
                }
            }
        }
    }

    #[test]
    fn scopes_are_requested_intersected_with_granted() {
        let r = indexed(|_| {});
        let d = decide_with(&r, "&scope=deploy+unknown+read%3Apods+deploy", None).unwrap();
        assert_eq!(
            d.claims.scope.as_deref(),
            Some("deploy read:pods"),
            "request order, no repeats"
        );
        assert_eq!(
            d.claims.groups,
            ["dev", "patrol:scope:deploy", "patrol:scope:read:pods"],
            "scope groups follow the issued scopes only"
        );
        assert_eq!(
            code(decide_with(&r, "&scope=unknown", None)),
            ErrorCode::InvalidScope
        );
        for malformed in [
            "&scope=a++b",
            "&scope=+a",
            "&scope=a+",
            "&scope=a%22b",
            "&scope=a%5Cb",
            "&scope=%C3%A9",
        ] {
            assert_eq!(
                code(request(malformed)),
                ErrorCode::InvalidScope,
                "{malformed}"
            );
        }
        // A token without scopes has no scope claim and no scope groups.
        let bare = indexed(|r| r.scopes.clear());
        let d = decide_with(&bare, "", None).unwrap();
        assert_eq!(d.claims.scope, None);
        assert_eq!(d.claims.groups, ["dev"]);
        assert!(
            serde_json::to_value(d.response("t".into()))
                .unwrap()
                .get("scope")
                .is_none()
        );
        assert_eq!(
            code(decide_with(&bare, "&scope=read%3Apods", None)),
            ErrorCode::InvalidScope
        );
    }

    #[test]
    fn audiences_resources_and_defaults() {
        let r = indexed(|_| {});
        let d = decide_with(&r, "&audience=vault", None).unwrap();
        assert_eq!(d.claims.aud, Audience::One("vault".into()));
        let d = decide_with(
            &r,
            "&audience=vault&resource=https%3A%2F%2Fapi.example.com%2F&audience=kubernetes-patrol&audience=vault",
            None,
        )
        .unwrap();
        assert_eq!(
            d.claims.aud,
            Audience::Many(vec![
                "vault".into(),
                "kubernetes-patrol".into(),
                "https://api.example.com/".into()
            ])
        );
        assert_eq!(
            code(decide_with(&r, "&audience=other", None)),
            ErrorCode::InvalidTarget
        );
        assert_eq!(
            code(decide_with(&r, "&audience=vault&audience=other", None)),
            ErrorCode::InvalidTarget,
            "every target must be allowed"
        );
        assert_eq!(
            code(request("&resource=not-absolute")),
            ErrorCode::InvalidTarget
        );
        assert_eq!(
            code(request("&resource=https%3A%2F%2Fa%2F%23frag")),
            ErrorCode::InvalidTarget
        );
        assert_eq!(code(request("&audience=a%0Ab")), ErrorCode::InvalidTarget);
        let many: String = (0..=MAX_TARGETS)
            .map(|i| format!("&audience=a{i}"))
            .collect();
        assert_eq!(code(request(&many)), ErrorCode::InvalidTarget);
        assert!(
            request("&resource=urn%3Aexample%3Aapi").is_ok(),
            "URNs are absolute URIs"
        );

        // An empty audience parameter is no audience: the default applies.
        let d = decide_with(&r, "&audience=", None).unwrap();
        assert_eq!(d.claims.aud, Audience::One("kubernetes-patrol".into()));
        // Any audience allowed, but no default: the request must name one.
        let open = indexed(|r| {
            r.exchange.audiences = None;
            r.exchange.default_audience = None;
        });
        assert_eq!(
            code(decide_with(&open, "", None)),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            decide_with(&open, "&audience=anything", None)
                .unwrap()
                .claims
                .aud,
            Audience::One("anything".into())
        );
    }

    #[test]
    fn actors_must_be_allowed() {
        let r = indexed(|_| {});
        let with_actor =
            "&actor_token=eyJ.x.y&actor_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt";
        let d = decide_with(&r, with_actor, Some("system:serviceaccount:ci:runner")).unwrap();
        assert_eq!(
            d.claims.act,
            Some(Actor {
                sub: "system:serviceaccount:ci:runner".into()
            })
        );
        assert_eq!(
            serde_json::to_value(&d.claims).unwrap()["act"],
            serde_json::json!({"sub": "system:serviceaccount:ci:runner"})
        );
        assert_eq!(
            code(decide_with(
                &r,
                with_actor,
                Some("system:serviceaccount:ci:other")
            )),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(decide_with(&r, with_actor, None)),
            ErrorCode::InvalidRequest
        );
        assert!(check_actors_allowed(&r).is_ok());
        let none = indexed(|r| r.exchange.allowed_actors.clear());
        assert_eq!(
            check_actors_allowed(&none).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
        // An actor reviewed without an actor token in the request is ignored.
        assert_eq!(decide_with(&r, "", Some("x")).unwrap().claims.act, None);
    }

    #[test]
    fn exchange_disabled_by_policy_is_unauthorized_client() {
        let r = indexed(|r| r.exchange.max_ttl_seconds = 0);
        assert_eq!(
            code(decide_with(&r, "", None)),
            ErrorCode::UnauthorizedClient
        );
    }

    #[test]
    fn request_parsing_errors() {
        let gt = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";
        let st = "subject_token=patrol_x";
        let stt = "subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token";
        let cases: Vec<(String, ErrorCode)> = vec![
            (format!("{st}&{stt}"), ErrorCode::InvalidRequest),
            (
                format!("grant_type=client_credentials&{st}&{stt}"),
                ErrorCode::UnsupportedGrantType,
            ),
            (
                "grant_type=authorization_code".to_owned(),
                ErrorCode::UnsupportedGrantType,
            ),
            (format!("{gt}&{gt}&{st}&{stt}"), ErrorCode::InvalidRequest),
            (format!("{gt}&{stt}"), ErrorCode::InvalidRequest),
            (format!("{gt}&{st}"), ErrorCode::InvalidRequest),
            (format!("{gt}&{st}&{st}&{stt}"), ErrorCode::InvalidRequest),
            (
                format!(
                    "{gt}&{st}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token"
                ),
                ErrorCode::InvalidRequest,
            ),
            (
                format!("{gt}&{st}&{stt}&scope=a&scope=b"),
                ErrorCode::InvalidRequest,
            ),
            (
                format!("{gt}&{st}&{stt}&actor_token=x"),
                ErrorCode::InvalidRequest,
            ),
            (
                format!(
                    "{gt}&{st}&{stt}&actor_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt"
                ),
                ErrorCode::InvalidRequest,
            ),
            (
                format!(
                    "{gt}&{st}&{stt}&actor_token=x&actor_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Asaml2"
                ),
                ErrorCode::InvalidRequest,
            ),
            (
                format!(
                    "{gt}&{st}&{stt}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token"
                ),
                ErrorCode::InvalidRequest,
            ),
            (
                format!(
                    "{gt}&{st}&{stt}&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Arefresh_token"
                ),
                ErrorCode::InvalidRequest,
            ),
            (
                format!("{gt}&{st}&{stt}&client_secret=s"),
                ErrorCode::InvalidClient,
            ),
            (
                format!("{gt}&{st}&{stt}&client_assertion=a"),
                ErrorCode::InvalidClient,
            ),
            (
                format!("{gt}&{st}&{stt}&client_id=a%09b"),
                ErrorCode::InvalidRequest,
            ),
            (
                format!("{gt}&{st}&{stt}&client_id=a&client_id=b"),
                ErrorCode::InvalidRequest,
            ),
        ];
        for (body, want) in cases {
            let e = parse_request(&form(&body)).unwrap_err();
            assert_eq!(e.code, want, "{body}");
            assert!(is_valid_description(&e.description), "{}", e.description);
            assert!(!e.description.contains("patrol_x"));
        }
    }

    #[test]
    fn optional_parameters_are_read() {
        let r = request(
            "&requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&client_id=my-cli\
             &unknown_parameter=ignored",
        )
        .unwrap();
        assert_eq!(r.requested_token_type, IssuedTokenType::Jwt);
        assert_eq!(r.client_id.as_deref(), Some("my-cli"));
        assert!(!format!("{r:?}").contains("patrol_x"), "no token in Debug");
        let pat = parse_request(&form(&BASE.replace("access_token", "pat"))).unwrap();
        assert_eq!(pat.subject_token_type, TOKEN_TYPE_PAT);

        let d = decide(&indexed(|_| {}), &r, None, &POLICY, now(), "j".into()).unwrap();
        assert_eq!(d.issued_token_type, IssuedTokenType::Jwt);
        assert_eq!(d.claims.client_id.as_deref(), Some("my-cli"));
        assert_eq!(d.response("t".into()).issued_token_type, TOKEN_TYPE_JWT);
        assert_eq!(d.response("t".into()).token_type, "Bearer");
    }

    #[test]
    fn jtis_are_random() {
        let a = new_jti().unwrap();
        assert_eq!(a.len(), 22);
        assert_ne!(a, new_jti().unwrap());
    }
}

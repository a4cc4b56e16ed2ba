//! RFC 7662 token introspection as Patrol answers it, for PATs and for the JWTs it issued.
//! Pure: the caller validates a PAT with the validation core, or verifies a JWT's signature
//! with the published keys, then asks here what to answer.
//!
//! - A PAT is active while the validation core accepts it (format, hash, expiry, idle
//!   time, revocation).
//! - A JWT is active while its signature verifies with a published key, its issuer is
//!   ours, `nbf` ≤ now < `exp`, **and** the PAT it was exchanged from (`patrol_tid`) is
//!   still in the index and unexpired: revoking a PAT deactivates every token derived
//!   from it (DESIGN §7), even though their signatures stay valid.
//! - Anything else, for whatever reason, is exactly `{"active":false}` (§2.2).
//!
//! `token_type_hint` is read (so a repeated one is an error) but not needed: PATs and
//! JWTs tell themselves apart by shape.

use chrono::{DateTime, Utc};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::{
    exchange::{Actor, Audience, ExchangedClaims},
    index::{IndexedRecord, RecordIndex},
    oauth::{Form, OAuthError},
};

/// How far a JWT's `nbf` may lie in the future (replica clock skew).
pub const NBF_LEEWAY_SECONDS: i64 = 60;

/// An introspection request. The token is wiped when dropped.
pub struct IntrospectionRequest {
    pub token: Zeroizing<String>,
}

impl std::fmt::Debug for IntrospectionRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionRequest")
            .finish_non_exhaustive()
    }
}

pub fn parse_request(form: &Form) -> Result<IntrospectionRequest, OAuthError> {
    form.no_repeats(&["token", "token_type_hint"])?;
    Ok(IntrospectionRequest {
        token: Zeroizing::new(form.required("token")?.to_owned()),
    })
}

/// What a presented token looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Pat,
    Jwt,
    Other,
}

pub fn shape(token: &str) -> Shape {
    if token.starts_with(patrol_api::token::PREFIX) {
        Shape::Pat
    } else if token.bytes().filter(|b| *b == b'.').count() == 2 {
        Shape::Jwt
    } else {
        Shape::Other
    }
}

/// An RFC 7662 §2.2 answer. Inactive answers carry `active` only.
#[derive(Serialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Introspection {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patrol_tid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patrol_pat: Option<String>,
}

impl Introspection {
    /// `{"active":false}`, whatever the reason.
    pub fn inactive() -> Self {
        Self::default()
    }
}

/// The answer for a PAT the validation core accepted. Groups and username follow the
/// TokenReview mapping except the username prefix, which is a Kubernetes concern.
pub fn for_pat(record: &IndexedRecord, issuer: &str, scope_group_prefix: &str) -> Introspection {
    let scopes: Vec<&str> = record.scopes().collect();
    let mut groups: Vec<String> = record.groups().map(str::to_owned).collect();
    for scope in &scopes {
        let group = format!("{scope_group_prefix}{scope}");
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    Introspection {
        active: true,
        scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
        username: Some(record.username().to_owned()),
        sub: Some(record.username().to_owned()),
        token_type: Some("Bearer"),
        exp: record.expires_at().map(|t| t.timestamp()),
        iat: Some(record.issued_at().timestamp()),
        iss: Some(issuer.to_owned()),
        uid: record.uid().map(str::to_owned),
        groups: Some(groups),
        patrol_tid: Some(record.id.to_string()),
        patrol_pat: Some(format!("{}/{}", record.pat_namespace(), record.pat_name())),
        ..Introspection::default()
    }
}

/// Why a signature-valid JWT is inactive; for metrics and debug logs only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtInactive {
    Issuer,
    Expired,
    NotYetValid,
    /// The PAT it was exchanged from is gone (revoked, deleted, rotated out) or expired.
    Revoked,
}

/// The answer for a JWT whose signature verified.
pub fn for_jwt(
    claims: ExchangedClaims,
    issuer: &str,
    index: &RecordIndex,
    now: DateTime<Utc>,
) -> Result<Introspection, JwtInactive> {
    let now_s = now.timestamp();
    if claims.iss != issuer {
        return Err(JwtInactive::Issuer);
    }
    if claims.exp <= now_s {
        return Err(JwtInactive::Expired);
    }
    if claims.nbf > now_s.saturating_add(NBF_LEEWAY_SECONDS) {
        return Err(JwtInactive::NotYetValid);
    }
    let record = index
        .get(&claims.patrol_tid)
        .filter(|r| !r.is_expired_at(now))
        .filter(|r| format!("{}/{}", r.pat_namespace(), r.pat_name()) == claims.patrol_pat);
    if record.is_none() {
        return Err(JwtInactive::Revoked);
    }
    Ok(Introspection {
        active: true,
        scope: claims.scope,
        client_id: claims.client_id,
        username: Some(claims.sub.clone()),
        token_type: Some("Bearer"),
        exp: Some(claims.exp),
        iat: Some(claims.iat),
        nbf: Some(claims.nbf),
        sub: Some(claims.sub),
        aud: Some(claims.aud),
        iss: Some(claims.iss),
        jti: Some(claims.jti),
        act: claims.act,
        uid: Some(claims.uid).filter(|u| !u.is_empty()),
        groups: Some(claims.groups),
        patrol_tid: Some(claims.patrol_tid),
        patrol_pat: Some(claims.patrol_pat),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        index::{RecordEvent, tests::record},
        metrics::Metrics,
    };
    use patrol_api::{record::TokenRecord, token::TokenId};
    use serde_json::json;

    const ID: &str = "AbCdEf012345";
    const ISSUER: &str = "https://patrol.example";

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn index_with(r: Option<TokenRecord>) -> RecordIndex {
        let index = RecordIndex::new(Arc::new(Metrics::default()));
        index.apply(RecordEvent::Relist);
        if let Some(r) = r {
            let secret = r.to_secret("ns").unwrap();
            index.apply(RecordEvent::upsert(
                secret.metadata.name.clone().unwrap(),
                TokenRecord::from_secret(&secret),
            ));
        }
        index.apply(RecordEvent::RelistDone);
        index
    }

    fn claims() -> ExchangedClaims {
        ExchangedClaims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: Audience::One("kubernetes-patrol".into()),
            exp: now().timestamp() + 600,
            iat: now().timestamp() - 60,
            nbf: now().timestamp() - 60,
            jti: "j1".into(),
            scope: Some("read:pods".into()),
            groups: vec!["dev".into(), "patrol:scope:read:pods".into()],
            uid: "u-1".into(),
            patrol_tid: ID.into(),
            patrol_pat: "team-a/laptop".into(),
            client_id: Some("cli".into()),
            act: Some(Actor {
                sub: "system:serviceaccount:ci:runner".into(),
            }),
        }
    }

    #[test]
    fn inactive_is_exactly_active_false() {
        assert_eq!(
            serde_json::to_string(&Introspection::inactive()).unwrap(),
            r#"{"active":false}"#
        );
    }

    #[test]
    fn shapes() {
        assert_eq!(shape("patrol_abc"), Shape::Pat);
        assert_eq!(shape("a.b.c"), Shape::Jwt);
        assert_eq!(shape("a.b"), Shape::Other);
        assert_eq!(shape("garbage"), Shape::Other);
    }

    #[test]
    fn a_pat_answer() {
        let mut r = record(ID, "h");
        r.expires_at = Some(now() + chrono::Duration::days(1));
        let entry = IndexedRecord::new(TokenId::parse(ID).unwrap(), r, "s");
        let answer = serde_json::to_value(for_pat(&entry, ISSUER, "patrol:scope:")).unwrap();
        assert_eq!(
            answer,
            json!({
                "active": true,
                "scope": "read:pods",
                "username": "alice",
                "sub": "alice",
                "token_type": "Bearer",
                "exp": (now() + chrono::Duration::days(1)).timestamp(),
                "iat": DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().timestamp(),
                "iss": ISSUER,
                "uid": "u-1",
                "groups": ["dev", "patrol:scope:read:pods"],
                "patrol_tid": ID,
                "patrol_pat": "team-a/laptop",
            })
        );
    }

    #[test]
    fn a_jwt_is_active_while_its_pat_is() {
        let index = index_with(Some(record(ID, "h")));
        let answer = for_jwt(claims(), ISSUER, &index, now()).unwrap();
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["active"], true);
        assert_eq!(json["sub"], "alice");
        assert_eq!(json["username"], "alice");
        assert_eq!(json["aud"], "kubernetes-patrol");
        assert_eq!(json["client_id"], "cli");
        assert_eq!(
            json["act"],
            json!({"sub": "system:serviceaccount:ci:runner"})
        );
        assert_eq!(json["jti"], "j1");
        assert_eq!(json["patrol_tid"], ID);

        let gone = index_with(None);
        assert_eq!(
            for_jwt(claims(), ISSUER, &gone, now()),
            Err(JwtInactive::Revoked)
        );
        let mut expired_pat = record(ID, "h");
        expired_pat.expires_at = Some(now());
        assert_eq!(
            for_jwt(claims(), ISSUER, &index_with(Some(expired_pat)), now()),
            Err(JwtInactive::Revoked)
        );
        let mut other_pat = claims();
        other_pat.patrol_pat = "team-b/other".into();
        assert_eq!(
            for_jwt(other_pat, ISSUER, &index, now()),
            Err(JwtInactive::Revoked)
        );
    }

    #[test]
    fn a_jwt_outside_its_validity_or_from_elsewhere_is_inactive() {
        let index = index_with(Some(record(ID, "h")));
        let mut c = claims();
        c.exp = now().timestamp();
        assert_eq!(for_jwt(c, ISSUER, &index, now()), Err(JwtInactive::Expired));
        let mut c = claims();
        c.nbf = now().timestamp() + NBF_LEEWAY_SECONDS + 1;
        assert_eq!(
            for_jwt(c, ISSUER, &index, now()),
            Err(JwtInactive::NotYetValid)
        );
        let mut c = claims();
        c.nbf = now().timestamp() + NBF_LEEWAY_SECONDS;
        assert!(
            for_jwt(c, ISSUER, &index, now()).is_ok(),
            "within the skew allowance"
        );
        let mut c = claims();
        c.iss = "https://elsewhere".into();
        assert_eq!(for_jwt(c, ISSUER, &index, now()), Err(JwtInactive::Issuer));
    }

    #[test]
    fn requests() {
        let form =
            |b: &str| Form::parse(Some("application/x-www-form-urlencoded"), b.as_bytes()).unwrap();
        assert_eq!(
            *parse_request(&form("token=abc&token_type_hint=access_token"))
                .unwrap()
                .token,
            "abc"
        );
        assert!(parse_request(&form("token_type_hint=access_token")).is_err());
        assert!(parse_request(&form("token=")).is_err(), "empty is absent");
        assert!(parse_request(&form("token=a&token=b")).is_err());
        assert!(parse_request(&form("token=a&token_type_hint=x&token_type_hint=y")).is_err());
        assert!(!format!("{:?}", parse_request(&form("token=abc")).unwrap()).contains("abc"));
    }
}

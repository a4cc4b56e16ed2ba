//! Compact JWS (RFC 7515) with ES256 only: signing exchanged tokens and verifying them again
//! for introspection. Pure apart from the randomness ECDSA needs.
//!
//! Verification accepts exactly what Patrol signs: three base64url parts, a header with
//! `alg: ES256` and a `kid` naming a published key, optionally `typ: JWT`, and nothing
//! that would change how the token is processed (`crit`, embedded keys and key URLs are
//! refused rather than ignored). Time and issuer checks belong to the caller.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::signing::{ALGORITHM, SigningError, SigningKey};

/// Longest token accepted for verification; Patrol's are well under 4 KiB.
pub const MAX_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a compact JWS")]
    Malformed,
    #[error("unsupported header")]
    UnsupportedHeader,
    #[error("no published key has this kid")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("claims are not what Patrol issues")]
    Claims,
    #[error("cannot sign: {0}")]
    Sign(String),
}

impl From<SigningError> for JwtError {
    fn from(e: SigningError) -> Self {
        Self::Sign(e.to_string())
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    /// Members that must never be present in what Patrol verifies.
    #[serde(default, skip_serializing)]
    crit: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    jwk: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    jku: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    x5u: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    x5c: Option<serde_json::Value>,
}

/// Signs `claims` with `key`: header `{"alg":"ES256","typ":"JWT","kid":…}`.
pub fn sign(claims: &impl Serialize, key: &SigningKey) -> Result<String, JwtError> {
    let header = Header {
        alg: ALGORITHM.into(),
        typ: Some("JWT".into()),
        kid: Some(key.kid().to_owned()),
        crit: None,
        jwk: None,
        jku: None,
        x5u: None,
        x5c: None,
    };
    let header = serde_json::to_vec(&header).map_err(|e| JwtError::Sign(e.to_string()))?;
    let payload = serde_json::to_vec(claims).map_err(|e| JwtError::Sign(e.to_string()))?;
    let mut token = String::with_capacity((header.len() + payload.len()) * 4 / 3 + 100);
    token.push_str(&URL_SAFE_NO_PAD.encode(header));
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(token)
}

/// Checks the signature of `token` with the key `find_key` returns for its `kid`, then
/// reads the claims.
pub fn verify<T: DeserializeOwned>(
    token: &str,
    find_key: impl FnOnce(&str) -> Option<Arc<SigningKey>>,
) -> Result<T, JwtError> {
    if token.len() > MAX_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwtError::Malformed)
    };
    let header: Header =
        serde_json::from_slice(&decode(header_b64)?).map_err(|_| JwtError::Malformed)?;
    let refused_member = header.crit.is_some()
        || header.jwk.is_some()
        || header.jku.is_some()
        || header.x5u.is_some()
        || header.x5c.is_some();
    if header.alg != ALGORITHM
        || refused_member
        || header
            .typ
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("JWT"))
    {
        return Err(JwtError::UnsupportedHeader);
    }
    let kid = header.kid.ok_or(JwtError::UnsupportedHeader)?;
    let key = find_key(&kid).ok_or(JwtError::UnknownKey)?;
    let signature = decode(signature_b64)?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    if !key.verify(signing_input.as_bytes(), &signature) {
        return Err(JwtError::BadSignature);
    }
    serde_json::from_slice(&decode(payload_b64)?).map_err(|_| JwtError::Claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use serde_json::{Value, json};

    fn key() -> Arc<SigningKey> {
        Arc::new(SigningKey::generate(Utc::now(), Utc::now()).unwrap())
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn signs_es256_that_ring_verifies_from_the_jwk_alone() {
        let k = key();
        let token = sign(&json!({"sub": "alice"}), &k).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(
            header,
            json!({"alg": "ES256", "typ": "JWT", "kid": k.kid()})
        );

        // Rebuild the public key from the JWK as any verifier would, and check with ring.
        let jwk = k.jwk();
        let mut point = vec![0x04];
        point.extend(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(&jwk.y).unwrap());
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(signature.len(), 64, "r ‖ s, not DER");
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("ring verifies the signature with the published key");

        let claims: Value = verify(&token, |kid| (kid == k.kid()).then(|| k.clone())).unwrap();
        assert_eq!(claims["sub"], "alice");
    }

    #[test]
    fn refuses_tampering_other_keys_and_foreign_headers() {
        let k = key();
        let other = key();
        let token = sign(&json!({"sub": "alice"}), &k).unwrap();
        let find = |kid: &str| (kid == k.kid()).then(|| k.clone());
        let parts: Vec<&str> = token.split('.').collect();

        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(&json!({"sub": "mallory"})),
            parts[2]
        );
        assert_eq!(
            verify::<Value>(&tampered, find).unwrap_err(),
            JwtError::BadSignature
        );

        let by_other = sign(&json!({"sub": "alice"}), &other).unwrap();
        assert_eq!(
            verify::<Value>(&by_other, find).unwrap_err(),
            JwtError::UnknownKey
        );
        // Same kid claimed, other key's signature.
        let forged_parts: Vec<&str> = by_other.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], parts[1], forged_parts[2]);
        assert_eq!(
            verify::<Value>(&forged, find).unwrap_err(),
            JwtError::BadSignature
        );

        for header in [
            json!({"alg": "none", "kid": k.kid()}),
            json!({"alg": "HS256", "kid": k.kid()}),
            json!({"alg": "ES256"}),
            json!({"alg": "ES256", "kid": k.kid(), "typ": "at+jwt"}),
            json!({"alg": "ES256", "kid": k.kid(), "crit": ["exp"]}),
            json!({"alg": "ES256", "kid": k.kid(), "jwk": k.jwk()}),
            json!({"alg": "ES256", "kid": k.kid(), "jku": "https://evil"}),
        ] {
            let t = format!("{}.{}.{}", b64(&header), parts[1], parts[2]);
            assert_eq!(
                verify::<Value>(&t, find).unwrap_err(),
                JwtError::UnsupportedHeader,
                "{header}"
            );
        }
        for garbage in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.??.**",
            &format!("{}.{}", parts[0], parts[1]),
            &format!("{token}."),
            &"a".repeat(MAX_LEN + 1),
        ] {
            assert_eq!(
                verify::<Value>(garbage, find).unwrap_err(),
                JwtError::Malformed
            );
        }
    }
}

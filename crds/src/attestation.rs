//! Proof that admission vetted a token's owner.
//!
//! The operator issues whatever `spec.owner` says. Admission is what makes that safe: it
//! stamps the requester as owner, or checks that the requester may impersonate the owner
//! they named. But admission does not always run: the release namespace is excluded from
//! the webhooks, a namespace selector may leave others out, and the webhooks can be turned
//! off. Without more, anyone allowed to create a PersonalAccessToken there could name
//! `system:masters` as its owner.
//!
//! So the mutating webhook, once it has vetted a new token's owner, writes an
//! **attestation** into an annotation: an HMAC-SHA256, under a key only the token service
//! and the operator can read, over what it vetted: the namespace, the name (or the
//! `generateName` prefix, when the apiserver has not chosen the name yet), the owner, the
//! scopes and the time. The operator issues a PAT's first token only when the attestation
//! verifies and was made within [`ATTESTED_BEFORE`] of the object's creation, which the
//! apiserver stamps after admission. Copying an attestation to another object changes the
//! namespace, name, owner or time it was made for, and fails.
//!
//! The object's uid would bind it tighter, but the apiserver assigns it after mutating
//! admission, so it cannot be signed. The name and the creation-time window are the
//! substitute: a copy could only pass on an object of the same name, in the same
//! namespace, with the same owner and scopes, created within the window, which is the
//! object the attestation was made for.
//!
//! Only the first issue is checked: tokens issued before attestation existed keep working,
//! and `spec.owner` is immutable once set.

use chrono::{DateTime, Utc};
use ring::hmac;
use serde::Serialize;

use crate::v1alpha1::TokenOwner;

/// The annotation carrying the attestation.
pub const ANNOTATION: &str = "patrol.dev/owner-attestation";
/// Default name of the Secret holding the key (release namespace).
pub const DEFAULT_SECRET_NAME: &str = "patrol-owner-attestation";
/// Type of that Secret.
pub const SECRET_TYPE: &str = "patrol.dev/attestation-key";
/// The key's entry in the Secret.
pub const SECRET_KEY: &str = "key";
/// Length of a generated key, in bytes.
pub const KEY_LEN: usize = 32;
/// An attestation must be made at most this long before the apiserver created the object.
pub const ATTESTED_BEFORE: chrono::TimeDelta = chrono::TimeDelta::seconds(120);
/// ... and at most this long after (clock skew between the webhook and the apiserver).
pub const ATTESTED_AFTER: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

const VERSION: &str = "v1";

/// The shared secret.
pub struct AttestationKey(hmac::Key);

impl std::fmt::Debug for AttestationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttestationKey(..)")
    }
}

impl AttestationKey {
    /// A key from the Secret's bytes; `None` when it is too short to be one Patrol made.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= KEY_LEN).then(|| Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// Fresh key material for a new Secret.
    pub fn generate() -> Result<Vec<u8>, getrandom::Error> {
        let mut bytes = vec![0u8; KEY_LEN];
        getrandom::fill(&mut bytes)?;
        Ok(bytes)
    }
}

/// The key a Secret holds, if it is a key Secret.
pub fn key_of(secret: &k8s_openapi::api::core::v1::Secret) -> Option<AttestationKey> {
    if secret.type_.as_deref() != Some(SECRET_TYPE) {
        return None;
    }
    let bytes = secret.data.as_ref()?.get(SECRET_KEY)?;
    AttestationKey::from_bytes(&bytes.0)
}

/// How the object is named when admission sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Naming {
    Name(String),
    /// The apiserver picks the name after admission; it starts with this prefix.
    GenerateName(String),
}

/// What admission vetted.
#[derive(Clone, Debug)]
pub struct Vetted<'a> {
    pub namespace: &'a str,
    pub naming: Naming,
    pub owner: &'a TokenOwner,
    pub scopes: &'a [String],
}

/// The signed message: a fixed JSON shape, so both sides encode it alike.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    purpose: &'static str,
    version: &'static str,
    namespace: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generate_name: Option<&'a str>,
    owner: &'a TokenOwner,
    scopes: &'a [String],
    attested_at: i64,
}

fn message(vetted: &Vetted<'_>, attested_at: i64) -> Vec<u8> {
    let (name, generate_name) = match &vetted.naming {
        Naming::Name(n) => (Some(n.as_str()), None),
        Naming::GenerateName(g) => (None, Some(g.as_str())),
    };
    let message = Message {
        purpose: "patrol.dev owner attestation",
        version: VERSION,
        namespace: vetted.namespace,
        name,
        generate_name,
        owner: vetted.owner,
        scopes: vetted.scopes,
        attested_at,
    };
    // Serializing strings and integers into a Vec cannot fail.
    serde_json::to_vec(&message).unwrap_or_default()
}

/// The annotation value admission writes: `v1.<unix seconds>[.g].<base64url HMAC>`, where
/// `g` marks an attestation made for a `generateName` prefix.
pub fn attest(key: &AttestationKey, vetted: &Vetted<'_>, now: DateTime<Utc>) -> String {
    use base64::Engine as _;
    let at = now.timestamp();
    let tag = hmac::sign(&key.0, &message(vetted, at));
    let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
    match vetted.naming {
        Naming::Name(_) => format!("{VERSION}.{at}.{mac}"),
        Naming::GenerateName(_) => format!("{VERSION}.{at}.g.{mac}"),
    }
}

/// Why an attestation does not vouch for an object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it has no {ANNOTATION} annotation")]
    Missing,
    #[error("its {ANNOTATION} annotation is not one Patrol writes")]
    Malformed,
    #[error(
        "its {ANNOTATION} annotation was not made for this object (namespace, name, owner and scopes) by this installation"
    )]
    Mismatch,
    #[error("its {ANNOTATION} annotation was made at another time than the object was created")]
    OutOfWindow,
}

/// The object as the operator sees it.
#[derive(Clone, Debug)]
pub struct Stored<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generate_name: Option<&'a str>,
    pub owner: &'a TokenOwner,
    pub scopes: &'a [String],
    pub created: DateTime<Utc>,
}

/// Whether `annotation` vouches for `object`.
pub fn verify(
    key: &AttestationKey,
    annotation: Option<&str>,
    object: &Stored<'_>,
) -> Result<(), Refusal> {
    use base64::Engine as _;
    let value = annotation.ok_or(Refusal::Missing)?;
    let parts: Vec<&str> = value.split('.').collect();
    let (at, generated, mac) = match parts.as_slice() {
        [VERSION, at, mac] => (*at, false, *mac),
        [VERSION, at, "g", mac] => (*at, true, *mac),
        _ => return Err(Refusal::Malformed),
    };
    let at: i64 = at.parse().map_err(|_| Refusal::Malformed)?;
    let mac = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| Refusal::Malformed)?;
    let naming = if generated {
        match object.generate_name {
            Some(prefix) if object.name.starts_with(prefix) => {
                Naming::GenerateName(prefix.to_owned())
            }
            _ => return Err(Refusal::Mismatch),
        }
    } else {
        Naming::Name(object.name.to_owned())
    };
    let vetted = Vetted {
        namespace: object.namespace,
        naming,
        owner: object.owner,
        scopes: object.scopes,
    };
    hmac::verify(&key.0, &message(&vetted, at), &mac).map_err(|_| Refusal::Mismatch)?;
    let attested = DateTime::<Utc>::from_timestamp(at, 0).ok_or(Refusal::Malformed)?;
    if attested < object.created - ATTESTED_BEFORE || attested > object.created + ATTESTED_AFTER {
        return Err(Refusal::OutOfWindow);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> AttestationKey {
        AttestationKey::from_bytes(&[byte; KEY_LEN]).expect("32 bytes")
    }

    fn owner(name: &str) -> TokenOwner {
        TokenOwner {
            username: name.into(),
            uid: Some("u-1".into()),
            groups: vec!["dev".into()],
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("timestamp")
    }

    struct Case {
        namespace: &'static str,
        name: &'static str,
        generate_name: Option<&'static str>,
        owner: TokenOwner,
        scopes: Vec<String>,
        created: DateTime<Utc>,
    }

    impl Case {
        fn new() -> Self {
            Self {
                namespace: "team-a",
                name: "laptop",
                generate_name: None,
                owner: owner("alice"),
                scopes: vec!["read:pods".into()],
                created: at("2026-12-03T10:00:01Z"),
            }
        }

        fn stored(&self) -> Stored<'_> {
            Stored {
                namespace: self.namespace,
                name: self.name,
                generate_name: self.generate_name,
                owner: &self.owner,
                scopes: &self.scopes,
                created: self.created,
            }
        }

        fn attest(&self, key: &AttestationKey, naming: Naming) -> String {
            attest(
                key,
                &Vetted {
                    namespace: self.namespace,
                    naming,
                    owner: &self.owner,
                    scopes: &self.scopes,
                },
                at("2026-12-03T10:00:00Z"),
            )
        }
    }

    #[test]
    fn an_attestation_vouches_for_the_object_it_was_made_for() {
        let case = Case::new();
        let value = case.attest(&key(1), Naming::Name("laptop".into()));
        assert!(value.starts_with("v1.1796292000."), "{value}");
        assert_eq!(verify(&key(1), Some(&value), &case.stored()), Ok(()));
    }

    #[test]
    fn a_generated_name_is_bound_by_its_prefix() {
        let mut case = Case::new();
        case.generate_name = Some("ci-");
        case.name = "ci-x7k2p";
        let value = case.attest(&key(1), Naming::GenerateName("ci-".into()));
        assert_eq!(verify(&key(1), Some(&value), &case.stored()), Ok(()));
        case.name = "prod-x7k2p";
        assert_eq!(
            verify(&key(1), Some(&value), &case.stored()),
            Err(Refusal::Mismatch)
        );
        case.name = "ci-x7k2p";
        case.generate_name = None;
        assert_eq!(
            verify(&key(1), Some(&value), &case.stored()),
            Err(Refusal::Mismatch)
        );
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        let case = Case::new();
        let value = case.attest(&key(1), Naming::Name("laptop".into()));
        let refused = |f: &dyn Fn(&mut Case)| {
            let mut c = Case::new();
            f(&mut c);
            verify(&key(1), Some(&value), &c.stored())
        };
        assert_eq!(refused(&|c| c.namespace = "team-b"), Err(Refusal::Mismatch));
        assert_eq!(refused(&|c| c.name = "other"), Err(Refusal::Mismatch));
        assert_eq!(
            refused(&|c| c.owner.groups.push("system:masters".into())),
            Err(Refusal::Mismatch)
        );
        assert_eq!(refused(&|c| c.owner.uid = None), Err(Refusal::Mismatch));
        assert_eq!(
            refused(&|c| c.owner.username = "root".into()),
            Err(Refusal::Mismatch)
        );
        assert_eq!(refused(&|c| c.scopes.clear()), Err(Refusal::Mismatch));
        assert_eq!(
            refused(&|c| c.created = at("2026-12-03T10:02:01Z")),
            Err(Refusal::OutOfWindow),
            "a copy onto an object of the same name created later"
        );
        assert_eq!(
            refused(&|c| c.created = at("2026-12-03T09:59:29Z")),
            Err(Refusal::OutOfWindow)
        );
        assert_eq!(
            verify(&key(2), Some(&value), &case.stored()),
            Err(Refusal::Mismatch),
            "another installation's key"
        );
        assert_eq!(verify(&key(1), None, &case.stored()), Err(Refusal::Missing));
        for bad in [
            "",
            "v1",
            "v2.1.abc",
            "v1.x.abc",
            "v1.1.!!",
            "v1.1.g",
            "v1.1.h.abc",
        ] {
            assert_eq!(
                verify(&key(1), Some(bad), &case.stored()),
                Err(Refusal::Malformed),
                "{bad:?}"
            );
        }
        let moved = value.replacen(".1796292000.", ".1796292001.", 1);
        assert_eq!(
            verify(&key(1), Some(&moved), &case.stored()),
            Err(Refusal::Mismatch),
            "the time is signed too"
        );
    }

    #[test]
    fn short_keys_are_not_keys() {
        assert!(AttestationKey::from_bytes(&[0; KEY_LEN - 1]).is_none());
        assert!(AttestationKey::from_bytes(&[]).is_none());
        let generated = AttestationKey::generate().expect("random");
        assert_eq!(generated.len(), KEY_LEN);
        assert_ne!(generated, AttestationKey::generate().expect("random"));
    }
}

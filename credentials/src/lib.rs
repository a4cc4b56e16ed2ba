//! Associated credentials: what a token exchange returns beside the JWT when the client asks
//! for scope `credentials`, minted by the CredentialProviders an administrator declared.
//!
//! - [`providers::Providers`] decides which providers a token is entitled to and mints: it
//!   writes a [`Lease`](patrol_api::lease::Lease) first, then the credential, so a crash in
//!   between leaves a lease to sweep and never an unrecorded credential.
//! - [`revoke`] removes what a lease names; the operator calls it when a token ends and
//!   when a lease expires, and the minting side when a later provider of the same exchange
//!   fails (nothing half-created).
//! - [`service_account`] and [`postgres`] are the providers' edges.
//!
//! No credential (token, password) is logged, stored in a lease, or put in an error.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer, ser::SerializeMap};
use zeroize::Zeroizing;

pub mod postgres;
pub mod providers;
pub mod revoke;
pub mod service_account;

/// Which associated credentials a request asks for (scope `credentials`, or
/// `credentials:<provider>` for one provider's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialsRequest {
    All,
    Providers(Vec<String>),
}

impl CredentialsRequest {
    /// Whether the provider named `name` is asked for.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Providers(names) => names.iter().any(|n| n == name),
        }
    }
}

/// A minted credential.
pub enum Credential {
    ServiceAccountToken {
        namespace: String,
        service_account: String,
        token: Zeroizing<String>,
    },
    Postgres {
        host: String,
        port: u16,
        database: String,
        username: String,
        password: Zeroizing<String>,
    },
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ServiceAccountToken {
                namespace,
                service_account,
                ..
            } => write!(f, "ServiceAccountToken({namespace}/{service_account})"),
            Self::Postgres {
                host,
                port,
                database,
                username,
                ..
            } => write!(f, "Postgres({username}@{host}:{port}/{database})"),
        }
    }
}

/// One provider's credential for one exchange.
#[derive(Debug)]
pub struct Issued {
    pub provider: String,
    pub lease_id: String,
    pub expires_at: DateTime<Utc>,
    pub credential: Credential,
}

/// The credentials of one exchange, as the token response carries them: flat fields for
/// the database (`db_*`, the names the seed platform's clients read: they store every
/// top-level field of the response), and `credentials`, an object keyed by provider name
/// with every credential in full, for Patrol's own clients.
///
/// The flat fields come from the first PostgreSQL credential by provider name.
#[derive(Debug, Default)]
pub struct AssociatedCredentials(pub Vec<Issued>);

impl AssociatedCredentials {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Serialized with `#[serde(flatten)]` into the token response.
impl Serialize for AssociatedCredentials {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if self.0.is_empty() {
            return map.end();
        }
        if let Some(Credential::Postgres {
            host,
            port,
            database,
            username,
            password,
        }) = self
            .0
            .iter()
            .map(|i| &i.credential)
            .find(|c| matches!(c, Credential::Postgres { .. }))
        {
            map.serialize_entry("db_username", username)?;
            map.serialize_entry("db_password", password.as_str())?;
            map.serialize_entry("db_host", host)?;
            map.serialize_entry("db_port", &port.to_string())?;
            map.serialize_entry("db_database", database)?;
        }
        map.serialize_entry("credentials", &Structured(&self.0))?;
        map.end()
    }
}

struct Structured<'a>(&'a [Issued]);

impl Serialize for Structured<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for issued in self.0 {
            map.serialize_entry(&issued.provider, &Entry(issued))?;
        }
        map.end()
    }
}

struct Entry<'a>(&'a Issued);

impl Serialize for Entry<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let issued = self.0;
        let mut map = serializer.serialize_map(None)?;
        match &issued.credential {
            Credential::ServiceAccountToken {
                namespace,
                service_account,
                token,
            } => {
                map.serialize_entry("type", "kubernetes_service_account_token")?;
                map.serialize_entry("namespace", namespace)?;
                map.serialize_entry("service_account", service_account)?;
                map.serialize_entry("token", token.as_str())?;
            }
            Credential::Postgres {
                host,
                port,
                database,
                username,
                password,
            } => {
                map.serialize_entry("type", "postgres")?;
                map.serialize_entry("host", host)?;
                map.serialize_entry("port", port)?;
                map.serialize_entry("database", database)?;
                map.serialize_entry("username", username)?;
                map.serialize_entry("password", password.as_str())?;
            }
        }
        map.serialize_entry("lease_id", &issued.lease_id)?;
        map.serialize_entry(
            "expires_at",
            &issued
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )?;
        map.end()
    }
}

/// A random lease id: 20 lowercase letters and digits (≈103 bits), valid in Secret names
/// and PostgreSQL role names.
pub fn new_lease_id() -> Option<String> {
    use ring::rand::{SecureRandom, SystemRandom};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let rng = SystemRandom::new();
    let mut id = String::with_capacity(20);
    while id.len() < 20 {
        let mut byte = [0u8; 1];
        rng.fill(&mut byte).ok()?;
        // 252 = 7 × 36: reject the rest so every character is equally likely.
        if byte[0] < 252 {
            id.push(char::from(ALPHABET[usize::from(byte[0] % 36)]));
        }
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(provider: &str, credential: Credential) -> Issued {
        Issued {
            provider: provider.into(),
            lease_id: "abc".into(),
            expires_at: DateTime::UNIX_EPOCH,
            credential,
        }
    }

    #[test]
    fn the_response_carries_flat_database_fields_and_the_structured_map() {
        let creds = AssociatedCredentials(vec![
            issued(
                "analytics",
                Credential::Postgres {
                    host: "db.example".into(),
                    port: 5432,
                    database: "analytics".into(),
                    username: "patrol_abc".into(),
                    password: Zeroizing::new("pw".into()),
                },
            ),
            issued(
                "deployer",
                Credential::ServiceAccountToken {
                    namespace: "ci".into(),
                    service_account: "deployer".into(),
                    token: Zeroizing::new("sa-token".into()),
                },
            ),
        ]);
        let json = serde_json::to_value(&creds).unwrap();
        assert_eq!(json["db_username"], "patrol_abc");
        assert_eq!(json["db_password"], "pw");
        assert_eq!(json["db_host"], "db.example");
        assert_eq!(json["db_port"], "5432");
        assert_eq!(json["db_database"], "analytics");
        assert_eq!(json["credentials"]["analytics"]["type"], "postgres");
        assert_eq!(json["credentials"]["analytics"]["port"], 5432);
        assert_eq!(json["credentials"]["deployer"]["token"], "sa-token");
        assert_eq!(
            json["credentials"]["deployer"]["expires_at"],
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn no_credentials_add_no_fields() {
        let json = serde_json::to_value(AssociatedCredentials::default()).unwrap();
        assert_eq!(json, serde_json::json!({}));
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Credential::Postgres {
            host: "h".into(),
            port: 1,
            database: "d".into(),
            username: "u".into(),
            password: Zeroizing::new("hunter2".into()),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn lease_ids_are_lowercase_alphanumeric_and_distinct() {
        let a = new_lease_id().unwrap();
        let b = new_lease_id().unwrap();
        assert_eq!(a.len(), 20);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert_ne!(a, b);
    }
}

//! `CredentialProvider`: a source of associated credentials. Cluster-scoped, written by
//! administrators.
//!
//! A token exchange that asks for scope `credentials` returns, beside the JWT, one
//! credential from every provider that selects the PAT's namespace: a Kubernetes
//! ServiceAccount token, or a PostgreSQL login role made for this exchange. Each expires no
//! later than the JWT and is revoked when the PAT is revoked, rotated out, expires or is
//! deleted.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// The scope a client asks for to receive associated credentials; `credentials:<provider>`
/// asks for one provider's only.
pub const CREDENTIALS_SCOPE: &str = "credentials";

/// Default longest lifetime of a minted credential.
pub const DEFAULT_CREDENTIAL_TTL_SECONDS: u64 = 3_600;

/// A source of associated credentials.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "patrol.dev",
    version = "v1alpha1",
    kind = "CredentialProvider",
    doc = "A source of associated credentials. A token exchange that asks for scope `credentials` returns, beside the JWT, a credential from every provider selecting the PersonalAccessToken's namespace: a ServiceAccount token (for the ServiceAccount the PAT names in spec.credentials) or a PostgreSQL login role made for that exchange. Credentials expire no later than the JWT and are revoked with the PAT.",
    plural = "credentialproviders",
    singular = "credentialprovider",
    shortname = "credprov",
    category = "patrol",
    status = "CredentialProviderStatus",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".status.kind"}"#,
    printcolumn = r#"{"name":"TTL","type":"string","jsonPath":".spec.ttl"}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.activeLeases"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.serviceAccount) != has(self.postgres)",
        "message": "set exactly one of spec.serviceAccount or spec.postgres",
    },
]))]
pub struct CredentialProviderSpec {
    /// Namespaces whose PersonalAccessTokens are entitled to this provider's credentials.
    /// Absent selects none: an administrator opts namespaces in (`{}` selects every one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Longest lifetime of a credential, e.g. `1h` (default). The exchanged JWT's lifetime
    /// caps it further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,

    /// Mint a token for the ServiceAccount the PersonalAccessToken names in
    /// `spec.credentials.serviceAccount` (its owner must be allowed to impersonate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountProvider>,

    /// Create a PostgreSQL login role per exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresProvider>,
}

/// ServiceAccount tokens from the TokenRequest API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountProvider {
    /// Audiences of the minted token. Absent: the kube-apiserver's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 253)))]
    pub audiences: Vec<String>,
}

/// PostgreSQL login roles, one per exchange.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PostgresProvider {
    /// Host clients and Patrol connect to.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Port (default 5432).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self >= 1 && self <= 65535", "message": "spec.postgres.port must be between 1 and 65535"},
    ]))]
    pub port: Option<i32>,
    /// Database clients use (and Patrol connects to).
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
    /// Secret in Patrol's namespace holding the admin role Patrol connects as, under keys
    /// `username` and `password`. The role needs CREATEROLE and the right to grant
    /// `groupRole`.
    pub admin_secret: LocalSecretReference,
    /// Role every minted user is made a member of: what it grants is what the credential
    /// may do.
    #[schemars(length(min = 1, max = 63))]
    pub group_role: String,
    /// `VerifyFull` (default): TLS, the server's certificate verified against `ca.crt` in the
    /// admin Secret (else the system's roots) and naming `host`. `Disable`: plain TCP, for a
    /// database on the same host or a trusted network only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_mode: Option<PostgresSslMode>,
    /// Prefix of minted role names (default `patrol_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "!self.startsWith('pg_')", "message": "spec.postgres.rolePrefix must not start with pg_: PostgreSQL reserves those role names"},
    ]))]
    pub role_prefix: Option<String>,
}

/// How Patrol connects to PostgreSQL (libpq's `sslmode` values of the same names).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PostgresSslMode {
    Disable,
    #[default]
    VerifyFull,
}

/// A Secret in Patrol's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Observed state of a provider.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CredentialProviderStatus {
    /// `ServiceAccount` or `Postgres`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Credentials minted and not yet revoked or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_leases: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What kind of credential a provider mints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    ServiceAccount,
    Postgres,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceAccount => "ServiceAccount",
            Self::Postgres => "Postgres",
        }
    }
}

impl CredentialProviderSpec {
    /// The kind, when exactly one is set (the CRD enforces that).
    pub fn kind(&self) -> Option<ProviderKind> {
        match (&self.service_account, &self.postgres) {
            (Some(_), None) => Some(ProviderKind::ServiceAccount),
            (None, Some(_)) => Some(ProviderKind::Postgres),
            _ => None,
        }
    }

    /// Longest credential lifetime, in seconds.
    pub fn ttl_seconds(&self) -> Result<u64, crate::duration::DurationError> {
        match &self.ttl {
            Some(ttl) => Ok(ttl.parse()?.as_secs()),
            None => Ok(DEFAULT_CREDENTIAL_TTL_SECONDS),
        }
    }

    /// Whether PATs in a namespace with `labels` are entitled. Unlike a TokenPolicy's, an
    /// absent selector selects no namespace: credentials are opted into.
    pub fn selects(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.namespace_selector
            .as_ref()
            .is_some_and(|s| crate::policy::selects(Some(s), labels))
    }
}

impl PostgresProvider {
    pub fn port(&self) -> u16 {
        self.port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .unwrap_or(5432)
    }

    /// Whether connections use TLS (verified); the default.
    pub fn tls(&self) -> bool {
        self.ssl_mode.unwrap_or_default() == PostgresSslMode::VerifyFull
    }

    pub fn role_prefix(&self) -> &str {
        self.role_prefix.as_deref().unwrap_or("patrol_")
    }
}

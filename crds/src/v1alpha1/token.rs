//! `PersonalAccessToken`: a named, revocable token that belongs to one user.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// Longest `spec.displayName`, in characters.
pub const MAX_DISPLAY_NAME: usize = 100;
/// Longest `metadata.name`: it becomes a label value on the token record (63 at most).
pub const MAX_NAME: usize = 63;
/// Most scopes a token may carry.
pub const MAX_SCOPES: usize = 32;
/// Longest scope, in characters.
pub const MAX_SCOPE_LEN: usize = 128;
/// What a scope may contain: OAuth scope-token characters without quotes or backslashes.
pub const SCOPE_PATTERN: &str = "^[A-Za-z0-9:._/*-]+$";

/// Annotation on a PAT: change its value to rotate (like `spec.rotation.requestedAt`,
/// without touching the spec).
pub const ROTATE_ANNOTATION: &str = "patrol.dev/rotate";
/// Annotation on a PAT: set to the current token id to remove its one-time Secret now.
pub const ACKNOWLEDGED_ANNOTATION: &str = "patrol.dev/acknowledged";

/// Condition types of a PersonalAccessToken's status.
pub const READY: &str = "Ready";
pub const DELIVERED: &str = "Delivered";
pub const EXPIRING_SOON: &str = "ExpiringSoon";
pub const POLICY_COMPLIANT: &str = "PolicyCompliant";

/// Desired state of a PersonalAccessToken.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[kube(
    group = "patrol.dev",
    version = "v1alpha1",
    kind = "PersonalAccessToken",
    doc = "A Personal Access Token: a long-lived, named, revocable credential for one owner. Patrol's operator generates the token, keeps only its argon2id hash, and delivers the plaintext once in a Secret beside this object. Use it with `kubectl --token`, or exchange it for a short-lived JWT at Patrol's token endpoint.",
    plural = "personalaccesstokens",
    singular = "personalaccesstoken",
    shortname = "pat",
    shortname = "pats",
    category = "patrol",
    namespaced,
    status = "PersonalAccessTokenStatus",
    // `kubectl get pat --field-selector spec.owner.username=…` (kubectl pat list --mine) and
    // `status.tokenId=…` (kubectl pat revoke --token-id): filtered by the apiserver.
    selectable = ".spec.owner.username",
    selectable = ".status.tokenId",
    printcolumn = r#"{"name":"Display Name","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner.username"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    // A future time: kubectl renders "date" columns as time since, so "<invalid>" here.
    printcolumn = r#"{"name":"Expires","type":"string","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Last Used","type":"date","jsonPath":".status.lastUsedAt"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("size(self.metadata.name) <= 63").message("metadata.name must be at most 63 characters: it labels the token record"),
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(oldSelf.owner) || (has(self.owner) && self.owner == oldSelf.owner)",
        "message": "spec.owner is immutable once set; create a new PersonalAccessToken for another owner",
    },
    {
        "rule": "(has(self.secret) && has(self.secret.name) ? self.secret.name : '') == (has(oldSelf.secret) && has(oldSelf.secret.name) ? oldSelf.secret.name : '')",
        "message": "spec.secret.name is immutable",
    },
    {
        "rule": "!has(oldSelf.revoked) || !oldSelf.revoked || (has(self.revoked) && self.revoked)",
        "message": "spec.revoked cannot be set back to false: a revoked token stays revoked; create a new PersonalAccessToken",
    },
]))]
pub struct PersonalAccessTokenSpec {
    /// Human-readable name shown in listings, e.g. "laptop kubectl" or "GitHub Actions deploy".
    #[schemars(length(min = 1, max = 100))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('\\\\S')", "message": "spec.displayName must not be blank"},
    ]))]
    pub display_name: String,

    /// Whom the token authenticates as. Stamped from the creating user by Patrol's mutating
    /// webhook when absent; an owner other than yourself requires permission to impersonate
    /// that user. Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<TokenOwner>,

    /// Permissions granted to the token, as OAuth-style scope strings (e.g. `read:pods`).
    /// Each scope surfaces as a group (`patrol:scope:<scope>`) when the token authenticates
    /// and in the `scope` claim of exchanged JWTs. Policies may restrict which are allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "set"))]
    #[schemars(inner(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9:._/*-]+$")))]
    pub scopes: Vec<String>,

    /// When the token stops working. Absent means no expiry, unless a TokenPolicy
    /// requires one or sets a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Expiration>,

    /// Where and how long the plaintext token is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretDelivery>,

    /// Rotation: replace the token with a new one, keeping the old one valid for a grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,

    /// Set to true to revoke the token immediately. A revoked token cannot be re-enabled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,

    /// Limits on exchanging this token for short-lived JWTs at Patrol's token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<ExchangeSpec>,

    /// Associated credentials an exchange with scope `credentials` may return, beyond those
    /// CredentialProviders give every token in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,
}

/// Associated credentials a token asks for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSpec {
    /// The ServiceAccount whose tokens a `serviceAccount` CredentialProvider mints for
    /// this PAT. The owner must be allowed to impersonate it: checked when the PAT is
    /// created or changed, and again at every exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountReference>,
}

/// A ServiceAccount.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountReference {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Defaults to the PersonalAccessToken's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
}

/// The user a token authenticates as.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenOwner {
    /// Kubernetes username, e.g. `alice@example.com` or `system:serviceaccount:ci:deployer`.
    #[schemars(length(min = 1, max = 253))]
    pub username: String,
    /// UID of the user, as reported by the authenticator that identified them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub uid: Option<String>,
    /// Groups the token authenticates with, in addition to one group per scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub groups: Vec<String>,
}

/// When a token expires: either a lifetime from issue, or a fixed instant. Exactly one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.ttl) != has(self.expiresAt)",
        "message": "set exactly one of spec.expiration.ttl or spec.expiration.expiresAt",
    },
]))]
pub struct Expiration {
    /// Lifetime counted from when the token is issued (and re-counted at each rotation),
    /// e.g. `90d` or `12h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Fixed instant after which the token no longer works (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

/// How long the plaintext Secret lives.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum Retention {
    /// Deleted after the reveal window, or as soon as the owner acknowledges it.
    #[default]
    OneTime,
    /// Kept for in-cluster consumers (e.g. a CI runner mounting it) until the token ends.
    Persistent,
}

/// Delivery of the plaintext token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretDelivery {
    /// Name of the Secret, in this namespace, that receives the plaintext under key `token`.
    /// Defaults to `<metadata.name>-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,
    /// `OneTime` (default) removes the Secret after the reveal window; `Persistent` keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// How long a `OneTime` Secret is kept before it is deleted (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reveal_window: Option<Duration>,
}

/// Rotation of the token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// Change this value (any text; a timestamp reads best) to rotate now. The annotation
    /// `patrol.dev/rotate` does the same without touching the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub requested_at: Option<String>,
    /// How long the previous token keeps working after a rotation (default `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<Duration>,
    /// Rotate automatically this long after each issue, e.g. `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Duration>,
}

/// Limits on token exchange (RFC 8693) for this token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeSpec {
    /// Audiences exchanged JWTs may be issued for. Empty means those the policy allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)), extend("x-kubernetes-list-type" = "set"))]
    pub audiences: Vec<String>,
    /// Usernames that may present an actor token alongside this PAT, e.g.
    /// `system:serviceaccount:ci:runner`. The actor is recorded as the JWT `act` claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)), extend("x-kubernetes-list-type" = "set"))]
    pub allowed_actors: Vec<String>,
}

/// Lifecycle phase of a token.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema, Default)]
pub enum Phase {
    /// Accepted, not yet issued.
    #[default]
    Pending,
    /// Issued and usable.
    Active,
    /// Past its expiry or idle timeout; no longer usable.
    Expired,
    /// Revoked by its owner; no longer usable.
    Revoked,
    /// Cannot be issued as specified; see the conditions.
    Failed,
}

/// Observed state of a token. Never contains the token or its hash.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PersonalAccessTokenStatus {
    /// Pending, Active, Expired, Revoked or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Public identifier of the current token (the `<id>` part of `patrol_<id>_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Recognisable fragment of the token (prefix and last four characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// When the current token was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    /// When the current token expires; absent when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Last successful authentication with this token (updated at most once a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Time>,
    /// The Secret holding the plaintext, while it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Names of the TokenPolicies that govern this token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// The previous token, still valid until its grace period ends after a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousToken>,
    /// The last rotation request acted upon (`spec.rotation.requestedAt` or the annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_request: Option<String>,
    /// Ready, Delivered, ExpiringSoon and PolicyCompliant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A Secret in the token's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    pub name: String,
}

/// A token replaced by rotation that still works until `validUntil`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousToken {
    pub token_id: String,
    pub valid_until: Time,
}

impl PersonalAccessToken {
    /// How long its plaintext Secret lives (`spec.secret.retention`, default `OneTime`).
    pub fn retention(&self) -> Retention {
        self.spec
            .secret
            .as_ref()
            .and_then(|s| s.retention)
            .unwrap_or_default()
    }

    /// The status condition of type `type_`, if any.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
    }

    /// The rotation request as one string: the spec field and the annotation together, so
    /// that either one changing triggers a rotation. `status.lastRotationRequest` holds the
    /// last one acted upon.
    pub fn rotation_request(&self) -> String {
        let spec = self
            .spec
            .rotation
            .as_ref()
            .and_then(|r| r.requested_at.as_deref())
            .unwrap_or("");
        let annotation = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATE_ANNOTATION))
            .map(String::as_str)
            .unwrap_or("");
        format!("spec={spec};annotation={annotation}")
    }
}

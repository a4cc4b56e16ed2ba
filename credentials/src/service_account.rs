//! ServiceAccount tokens from the TokenRequest API, each bound to a Secret made for it.
//!
//! The kube-apiserver checks a bound token's object on every request: once the Secret is
//! deleted, the token is refused, whatever its `exp`. That is how revoking a PAT revokes
//! its ServiceAccount tokens at once, and how a token is cut at its lease's expiry even
//! though TokenRequest will not mint one shorter than ten minutes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::{
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
        core::v1::{Secret, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use patrol_api::{
    lease::{BOUND_COMPONENT, LEASE_LABEL},
    record::{COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, TOKEN_ID_LABEL},
    v1alpha1::TokenOwner,
};
use zeroize::Zeroizing;

/// Secret type of the objects tokens are bound to.
pub const BOUND_SECRET_TYPE: &str = "patrol.dev/credential-binding";
/// The shortest lifetime TokenRequest accepts.
pub const MIN_TOKEN_REQUEST_SECONDS: i64 = 600;

/// Name of the Secret a lease's token is bound to.
pub fn bound_secret_name(lease_id: &str) -> String {
    format!("patrol-binding-{lease_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountError {
    #[error("ServiceAccount {namespace}/{name} does not exist")]
    NoSuchServiceAccount { namespace: String, name: String },
    #[error("the Kubernetes API refused or failed: {0}")]
    Api(#[from] kube::Error),
    #[error("the Kubernetes API answered a TokenRequest without a token")]
    NoToken,
}

/// Whether `owner` may impersonate ServiceAccount `namespace/name`: the permission that
/// makes holding its tokens no escalation.
pub async fn owner_may_impersonate(
    client: &Client,
    owner: &TokenOwner,
    namespace: &str,
    name: &str,
) -> Result<bool, kube::Error> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(owner.username.clone()),
            uid: owner.uid.clone().filter(|u| !u.is_empty()),
            groups: (!owner.groups.is_empty()).then(|| owner.groups.clone()),
            resource_attributes: Some(ResourceAttributes {
                verb: Some("impersonate".into()),
                group: Some(String::new()),
                resource: Some("serviceaccounts".into()),
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer
        .status
        .is_some_and(|s| s.allowed && s.denied != Some(true)))
}

/// Creates the Secret a lease's token is bound to, in the ServiceAccount's namespace.
pub async fn create_binding(
    client: &Client,
    namespace: &str,
    lease_id: &str,
    token_id: &str,
) -> Result<Secret, kube::Error> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(bound_secret_name(lease_id)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (COMPONENT_LABEL.to_owned(), BOUND_COMPONENT.to_owned()),
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                (LEASE_LABEL.to_owned(), lease_id.to_owned()),
                (TOKEN_ID_LABEL.to_owned(), token_id.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                "patrol.dev/purpose".to_owned(),
                "A ServiceAccount token minted at a Patrol token exchange is bound to this Secret; deleting it revokes the token.".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(BOUND_SECRET_TYPE.to_owned()),
        immutable: Some(true),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
}

/// Mints a token for `namespace/name` bound to `binding`, valid until `expires_at` (or ten
/// minutes, TokenRequest's least; the binding is deleted at `expires_at`).
pub async fn request_token(
    client: &Client,
    namespace: &str,
    name: &str,
    binding: &Secret,
    audiences: &[String],
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Zeroizing<String>, ServiceAccountError> {
    let seconds = (expires_at - now)
        .num_seconds()
        .max(MIN_TOKEN_REQUEST_SECONDS);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                name: binding.metadata.name.clone(),
                uid: binding.metadata.uid.clone(),
            }),
        }),
        ..TokenRequest::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    match api
        .create_token_request(name, &PostParams::default(), &request)
        .await
    {
        Ok(answer) => answer
            .status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .map(Zeroizing::new)
            .ok_or(ServiceAccountError::NoToken),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            Err(ServiceAccountError::NoSuchServiceAccount {
                namespace: namespace.into(),
                name: name.into(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the binding Secret: the token bound to it stops working. Idempotent.
pub async fn delete_binding(
    client: &Client,
    namespace: &str,
    secret: &str,
) -> Result<(), kube::Error> {
    match Api::<Secret>::namespaced(client.clone(), namespace)
        .delete(secret, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

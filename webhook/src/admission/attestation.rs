//! The webhook's half of owner attestation ([`patrol_api::attestation`] says why): the key,
//! kept in a Secret in the release namespace that the first replica creates, and the JSON
//! patch that writes (or removes) the attestation on a new PersonalAccessToken.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use json_patch::{AddOperation, PatchOperation, RemoveOperation, jsonptr::PointerBuf};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, api::PostParams, core::DynamicObject};
use patrol_api::attestation::{ANNOTATION, AttestationKey, SECRET_KEY, SECRET_TYPE, key_of};
use tracing::{info, warn};

/// Value of `patrol.dev/component` on the key Secret.
pub const COMPONENT: &str = "owner-attestation-key";
/// How often the key is read again (a replaced Secret is picked up within this).
const REFRESH: Duration = Duration::from_secs(60);
/// How soon a failed read or create is retried.
const RETRY: Duration = Duration::from_secs(2);

/// The current key; empty until the Secret has been read (admission refuses to create
/// tokens meanwhile, since it could not attest them).
#[derive(Default)]
pub struct KeyCell(RwLock<Option<Arc<AttestationKey>>>);

impl KeyCell {
    pub fn current(&self) -> Option<Arc<AttestationKey>> {
        self.0.read().ok().and_then(|k| k.clone())
    }

    pub fn set(&self, key: AttestationKey) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(Arc::new(key));
        }
    }
}

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading or creating Secret {name}: {source}")]
    Api { name: String, source: kube::Error },
    #[error(
        "Secret {name} holds no usable key (type {SECRET_TYPE}, at least 32 bytes in data.{SECRET_KEY}); delete it and patrol-webhook makes a new one"
    )]
    Unusable { name: String },
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// Reads the key Secret, creating it first when absent (several replicas may race; the
/// loser reads what the winner wrote).
pub async fn load_or_create(secrets: &Api<Secret>, name: &str) -> Result<AttestationKey, KeyError> {
    let api = |source| KeyError::Api {
        name: name.to_owned(),
        source,
    };
    let existing = match secrets.get_opt(name).await.map_err(api)? {
        Some(secret) => secret,
        None => {
            let bytes = AttestationKey::generate().map_err(|e| KeyError::Random(e.to_string()))?;
            match secrets
                .create(&PostParams::default(), &key_secret(name, bytes))
                .await
            {
                Ok(created) => {
                    info!(secret = name, "created the owner-attestation key");
                    created
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    secrets.get(name).await.map_err(api)?
                }
                Err(e) => return Err(api(e)),
            }
        }
    };
    key_of(&existing).ok_or_else(|| KeyError::Unusable {
        name: name.to_owned(),
    })
}

fn key_secret(name: &str, bytes: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/part-of".to_owned(), "patrol".to_owned()),
                ("patrol.dev/component".to_owned(), COMPONENT.to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(BTreeMap::from([(SECRET_KEY.to_owned(), ByteString(bytes))])),
        ..Secret::default()
    }
}

/// Keeps `cell` filled with the key from Secret `name`, for as long as the process runs.
pub async fn keep_key(secrets: Api<Secret>, name: String, cell: Arc<KeyCell>) {
    loop {
        let wait = match load_or_create(&secrets, &name).await {
            Ok(key) => {
                cell.set(key);
                REFRESH
            }
            Err(e) => {
                warn!(error = %e, "owner-attestation key unavailable; new tokens are refused until it is");
                RETRY
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The patch operations that leave `value` as the object's attestation: set it, or
/// (`None`) remove one the requester wrote themselves.
pub fn patch(object: &DynamicObject, value: Option<String>) -> Vec<PatchOperation> {
    let annotations = object.metadata.annotations.as_ref();
    let present = annotations.is_some_and(|a| a.contains_key(ANNOTATION));
    match value {
        Some(value) if annotations.is_some() => vec![PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations", ANNOTATION]),
            value: value.into(),
        })],
        Some(value) => vec![PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations"]),
            value: serde_json::json!({ ANNOTATION: value }),
        })],
        None if present => vec![PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations", ANNOTATION]),
        })],
        None => vec![],
    }
}

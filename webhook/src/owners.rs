//! Owners that still exist. A token owned by a ServiceAccount acts as that ServiceAccount;
//! once it is deleted, or deleted and recreated under the same name (a new uid, perhaps
//! for someone else), the token must stop working, as the ServiceAccount's own tokens do.
//! ServiceAccounts are watched as metadata, cluster-wide; the decision is pure.
//!
//! Users and groups have no objects in Kubernetes, so only ServiceAccount owners can be
//! checked this way.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{info, warn};

use crate::index::IndexedRecord;

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// What the directory knows of one ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The cache has not listed every ServiceAccount yet.
    NotSynced,
    Missing,
    Present {
        uid: String,
    },
}

/// Where ServiceAccounts are looked up. A trait so validation is testable without an
/// apiserver.
pub trait OwnerDirectory: Send + Sync {
    fn service_account(&self, namespace: &str, name: &str) -> Lookup;
}

/// Whether a record's owner still exists as the identity the token was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    /// Exists with the same uid, or is not a ServiceAccount (nothing to check).
    Current,
    /// Deleted, or recreated with another uid.
    Gone,
    /// Cannot tell yet.
    Unknown,
}

/// Splits `system:serviceaccount:<namespace>:<name>`.
pub fn service_account(username: &str) -> Option<(&str, &str)> {
    let (namespace, name) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
        .split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then_some((namespace, name))
}

/// Decides [`OwnerState`] for `record`.
pub fn owner_state(record: &IndexedRecord, directory: &dyn OwnerDirectory) -> OwnerState {
    let Some((namespace, name)) = service_account(record.username()) else {
        return OwnerState::Current;
    };
    match directory.service_account(namespace, name) {
        Lookup::NotSynced => OwnerState::Unknown,
        Lookup::Missing => OwnerState::Gone,
        // A record without a uid names the ServiceAccount by name only.
        Lookup::Present { uid } => match record.uid() {
            Some(owner_uid) if owner_uid != uid => OwnerState::Gone,
            _ => OwnerState::Current,
        },
    }
}

/// ServiceAccounts from a metadata watch.
pub struct ServiceAccounts {
    store: Store<PartialObjectMeta<ServiceAccount>>,
    synced: Arc<AtomicBool>,
}

impl ServiceAccounts {
    /// The directory, and the future that keeps it current (spawn it; it never ends).
    pub fn new(client: Client) -> (Arc<Self>, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store::<PartialObjectMeta<ServiceAccount>>();
        let synced = Arc::new(AtomicBool::new(false));
        let directory = Arc::new(Self {
            store,
            synced: synced.clone(),
        });
        let events = watcher(
            Api::<PartialObjectMeta<ServiceAccount>>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|sa: &mut PartialObjectMeta<ServiceAccount>| {
            sa.managed_fields_mut().clear();
            sa.annotations_mut().clear();
            sa.labels_mut().clear();
        })
        .reflect(writer);
        let run = async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if !synced.swap(true, Ordering::AcqRel) {
                            info!("ServiceAccount cache synced (owners of tokens)");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "watching ServiceAccounts failed; retrying"),
                }
            }
        };
        (directory, run)
    }
}

impl OwnerDirectory for ServiceAccounts {
    fn service_account(&self, namespace: &str, name: &str) -> Lookup {
        if !self.synced.load(Ordering::Acquire) {
            return Lookup::NotSynced;
        }
        match self
            .store
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|sa| sa.metadata.uid.clone())
        {
            Some(uid) => Lookup::Present { uid },
            None => Lookup::Missing,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use patrol_api::token::TokenId;

    use super::*;
    use crate::index::tests::record;

    /// A directory from a fixed map of `namespace/name` → uid.
    pub(crate) struct Fixed(pub Option<HashMap<String, String>>);

    impl OwnerDirectory for Fixed {
        fn service_account(&self, namespace: &str, name: &str) -> Lookup {
            match &self.0 {
                None => Lookup::NotSynced,
                Some(map) => match map.get(&format!("{namespace}/{name}")) {
                    Some(uid) => Lookup::Present { uid: uid.clone() },
                    None => Lookup::Missing,
                },
            }
        }
    }

    fn owned_by(username: &str, uid: Option<&str>) -> IndexedRecord {
        let mut r = record("AbCdEfGhIjKl", "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$aGFzaA");
        r.owner.username = username.into();
        r.owner.uid = uid.map(str::to_owned);
        IndexedRecord::new(TokenId::parse("AbCdEfGhIjKl").expect("id"), r, "s")
    }

    #[test]
    fn service_account_owners_must_still_exist_with_their_uid() {
        let directory = Fixed(Some(HashMap::from([(
            "ci/deployer".to_owned(),
            "uid-1".to_owned(),
        )])));
        let sa = "system:serviceaccount:ci:deployer";
        assert_eq!(
            owner_state(&owned_by(sa, Some("uid-1")), &directory),
            OwnerState::Current
        );
        assert_eq!(
            owner_state(&owned_by(sa, None), &directory),
            OwnerState::Current
        );
        assert_eq!(
            owner_state(&owned_by(sa, Some("uid-0")), &directory),
            OwnerState::Gone,
            "recreated under the same name"
        );
        assert_eq!(
            owner_state(
                &owned_by("system:serviceaccount:ci:other", None),
                &directory
            ),
            OwnerState::Gone
        );
        assert_eq!(
            owner_state(&owned_by("alice", Some("u")), &directory),
            OwnerState::Current,
            "users have no object to check"
        );
        assert_eq!(
            owner_state(&owned_by(sa, Some("uid-1")), &Fixed(None)),
            OwnerState::Unknown
        );
    }

    #[test]
    fn splits_service_account_usernames() {
        assert_eq!(
            service_account("system:serviceaccount:ci:deployer"),
            Some(("ci", "deployer"))
        );
        for not in [
            "alice",
            "system:serviceaccount:ci",
            "system:serviceaccount::x",
            "system:serviceaccount:a:b:c",
        ] {
            assert_eq!(service_account(not), None, "{not}");
        }
    }
}

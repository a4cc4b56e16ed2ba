//! What admission needs to know about the cluster: every TokenPolicy, and the labels of the
//! namespace a token is created in (policies select namespaces by label).
//!
//! Both come from watches into in-memory stores, so an admission request costs no apiserver
//! round trip. Until both have listed once, the webhook is not ready and refuses to judge
//! tokens (503, retry), rather than judge them against no policy at all. Namespaces are
//! watched as metadata only. A namespace not in the store yet (created a moment ago, e.g.
//! by the same `kubectl apply`) is read from the apiserver.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use patrol_api::{policy::PolicySet, v1alpha1::TokenPolicy};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// The label the apiserver puts on every namespace, holding its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Why a namespace's labels could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("reading namespace {namespace}: {source}")]
    Read {
        namespace: String,
        source: kube::Error,
    },
    #[error("namespace {0} does not exist")]
    NoSuchNamespace(String),
}

/// The cluster state admission reads.
pub trait ClusterView: Send + Sync {
    /// Whether policies and namespaces have been listed at least once.
    fn is_synced(&self) -> bool;
    /// Every TokenPolicy, validated and ready to compose.
    fn policies(&self) -> PolicySet;
    /// The labels of a namespace, including [`NAMESPACE_NAME_LABEL`].
    fn namespace_labels<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, ClusterError>>;
}

/// [`ClusterView`] fed by watches.
pub struct KubeCluster {
    policies: Store<TokenPolicy>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    policies_synced: Arc<AtomicBool>,
    namespaces_synced: Arc<AtomicBool>,
    namespace_api: Api<Namespace>,
}

impl KubeCluster {
    /// The view, and the future that keeps it current (spawn it; it never ends).
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, impl Future<Output = ()> + Send + 'static) {
        let (policies, policy_writer) = reflector::store::<TokenPolicy>();
        let (namespaces, namespace_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
        let view = Arc::new(Self {
            policies,
            namespaces,
            policies_synced: Arc::new(AtomicBool::new(false)),
            namespaces_synced: Arc::new(AtomicBool::new(false)),
            namespace_api: Api::all(client.clone()),
        });
        let policy_events = watcher(
            Api::<TokenPolicy>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|p: &mut TokenPolicy| p.managed_fields_mut().clear())
        .reflect(policy_writer);
        let namespace_events = watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|n: &mut PartialObjectMeta<Namespace>| {
            n.managed_fields_mut().clear();
            n.annotations_mut().clear();
        })
        .reflect(namespace_writer);
        let watches = {
            let view = view.clone();
            async move {
                let both = view.clone();
                let on_sync = move || {
                    let synced = both.is_synced();
                    metrics.admission_synced.set(i64::from(synced));
                    if synced {
                        info!("admission caches synced: TokenPolicies and Namespaces");
                    }
                };
                futures::join!(
                    drive(
                        "TokenPolicies",
                        policy_events,
                        view.policies_synced.clone(),
                        on_sync.clone()
                    ),
                    drive(
                        "Namespaces",
                        namespace_events,
                        view.namespaces_synced.clone(),
                        on_sync
                    ),
                );
            }
        };
        (view, watches)
    }
}

/// Runs one reflector stream: logs errors (the stream retries with backoff) and marks the
/// store synced at its first complete list.
async fn drive<K, S>(what: &'static str, events: S, synced: Arc<AtomicBool>, on_sync: impl Fn())
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitDone) => {
                if !synced.swap(true, Ordering::AcqRel) {
                    on_sync();
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "watching {what} for admission failed; retrying"),
        }
    }
}

impl ClusterView for KubeCluster {
    fn is_synced(&self) -> bool {
        self.policies_synced.load(Ordering::Acquire)
            && self.namespaces_synced.load(Ordering::Acquire)
    }

    fn policies(&self) -> PolicySet {
        PolicySet::new(self.policies.state())
    }

    fn namespace_labels<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, ClusterError>> {
        Box::pin(async move {
            let cached = self.namespaces.get(&ObjectRef::new(namespace));
            let meta = match cached {
                Some(meta) => meta.metadata.clone(),
                None => {
                    self.namespace_api
                        .get_metadata_opt(namespace)
                        .await
                        .map_err(|source| ClusterError::Read {
                            namespace: namespace.to_owned(),
                            source,
                        })?
                        .ok_or_else(|| ClusterError::NoSuchNamespace(namespace.to_owned()))?
                        .metadata
                }
            };
            Ok(with_name_label(namespace, meta.labels.unwrap_or_default()))
        })
    }
}

/// The apiserver sets the name label on every namespace; make sure it is there, so
/// selectors by name work even against an object read before the label existed.
pub fn with_name_label(
    namespace: &str,
    mut labels: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    labels
        .entry(NAMESPACE_NAME_LABEL.to_owned())
        .or_insert_with(|| namespace.to_owned());
    labels
}

//! Wiring: watches, controllers, leader election, the health and metrics server.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta},
    runtime::{
        Controller, WatchStreamExt,
        controller::Config as ControllerConfig,
        events::{Recorder, Reporter},
        reflector,
        reflector::ObjectRef,
        watcher,
    },
};
use kube_lease_manager::LeaseManagerBuilder;
use patrol_api::{
    record,
    token::{HashParams, TokenHasher},
    v1alpha1::TokenPolicy,
};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    metrics::Metrics,
    policy_status,
    reconciler::{self, Context, DELIVERED_COMPONENT},
};

/// Operator settings (from flags and environment; see `main.rs`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the token records and the leader lease.
    pub namespace: String,
    /// Address of /healthz, /readyz and /metrics.
    pub metrics_addr: SocketAddr,
    pub leader_election: bool,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub hash: HashParams,
    /// PATs reconciled at once.
    pub concurrency: u16,
    /// Reconcile PATs in this namespace only (default: every namespace).
    pub watch_namespace: Option<String>,
    /// Write TokenPolicy status (one writer per cluster).
    pub token_policy_status: bool,
    /// Whether this replica writes CredentialProvider status (one writer per cluster).
    pub credential_provider_status: bool,
    /// Secret (in `namespace`) holding the owner-attestation key; `None`: owners are
    /// trusted without attestation.
    pub owner_attestation: Option<String>,
}

/// Runs until SIGTERM/SIGINT (or losing leadership, after which a fresh start is safest).
pub async fn run(client: Client, settings: Settings) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (ready_tx, ready_rx) = watch::channel(false);
    let server = serve_health(settings.metrics_addr, metrics.clone(), ready_rx).await?;

    let mut shutdown = Box::pin(shutdown_signal());

    // Leadership first: a follower only serves health and waits.
    let lease = if settings.leader_election {
        let manager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(settings.lease_duration.as_secs().max(2))
            .with_grace((settings.lease_duration.as_secs() / 3).max(1))
            .build()
            .await
            .context("creating the leader lease manager")?;
        let (mut leader, task) = manager.watch().await;
        info!(identity = %settings.identity, lease = %settings.lease_name, "waiting for leadership");
        loop {
            if *leader.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = leader.changed() => changed.context("lease manager stopped")?,
                _ = &mut shutdown => {
                    drop(leader);
                    let _ = task.await;
                    server.abort();
                    return Ok(());
                }
            }
        }
        info!(identity = %settings.identity, "became leader");
        metrics.set_leader(true);
        Some((leader, task))
    } else {
        metrics.set_leader(true);
        None
    };

    let hasher = TokenHasher::new(settings.hash).context("argon2 parameters")?;
    let (policies, policy_writer) = reflector::store::<TokenPolicy>();
    let policy_api: Api<TokenPolicy> = Api::all(client.clone());
    let policy_stream = reflector(policy_writer, watcher(policy_api.clone(), watch_config()))
        .default_backoff()
        .touched_objects()
        .filter_map(|r| future::ready(r.map_err(|e| warn!(error = %e, "TokenPolicy watch")).ok()))
        .map(|_| ())
        .boxed();
    let (namespaces, ns_writer) = reflector::store();
    let ns_api: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
    let ns_stream = reflector(ns_writer, watcher(ns_api, watch_config()))
        .default_backoff()
        .touched_objects()
        .filter_map(|r| future::ready(r.ok()));

    let admins = Arc::new(patrol_credentials::providers::AdminPool::new(
        client.clone(),
        settings.namespace.clone(),
    ));
    let sweep_task = tokio::spawn(crate::sweep::run(
        client.clone(),
        admins.clone(),
        settings.namespace.clone(),
        metrics.clone(),
        settings.credential_provider_status,
    ));
    let reporter = Reporter {
        controller: "patrol-operator".into(),
        instance: Some(settings.identity.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        namespace: settings.namespace.clone(),
        hasher,
        hash_permits: Arc::new(tokio::sync::Semaphore::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )),
        policies: policies.clone(),
        namespaces: namespaces.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        owner_attestation: settings.owner_attestation.clone(),
        admins: admins.clone(),
    });

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(patrol_api::GROUP, "v1alpha1", "PersonalAccessToken"),
        "personalaccesstokens",
    );
    let (pats, delivered): (Api<DynamicObject>, Api<Secret>) = match &settings.watch_namespace {
        Some(ns) => (
            Api::namespaced_with(client.clone(), ns, &resource),
            Api::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all_with(client.clone(), &resource),
            Api::all(client.clone()),
        ),
    };
    let records: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let controller = Controller::new_with(pats, watch_config(), resource.clone())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        // The delivered Secret (owned by the PAT).
        .owns_with(
            delivered,
            (),
            watch_config().labels(&format!(
                "{}={DELIVERED_COMPONENT}",
                record::COMPONENT_LABEL
            )),
        )
        // Token records in our namespace point back at their PAT by label.
        .watches_with(
            records,
            (),
            watch_config().labels(&record::selector()),
            |secret: Secret| {
                let labels = secret.labels();
                let ns = labels.get(record::PAT_NAMESPACE_LABEL)?;
                let name = labels.get(record::PAT_NAME_LABEL)?;
                Some(ObjectRef::new_with(name, resource_for_refs()).within(ns))
            },
        )
        // Namespace labels decide which policies apply.
        .reconcile_all_on(ns_stream.map(|_| ()))
        .reconcile_all_on(policy_stream)
        .graceful_shutdown_on(async move {
            shutdown.await;
        });

    // Policy status counts tokens in every namespace; one writer per cluster, by default
    // the operator that watches every namespace (see --token-policy-status).
    let policy_task = if settings.token_policy_status {
        tokio::spawn(policy_status::run(
            client.clone(),
            policies.clone(),
            namespaces.clone(),
            metrics.clone(),
        ))
    } else {
        tokio::spawn(future::pending::<()>())
    };

    let _ = ready_tx.send(true);
    info!("reconciling PersonalAccessTokens");
    let lost_leadership = async {
        match lease {
            Some((mut leader, _task)) => loop {
                if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                    break;
                }
            },
            None => future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = controller.run(reconciler::reconcile, reconciler::error_policy, ctx).for_each(|_| future::ready(())) => {
            info!("controller stopped");
        }
        _ = lost_leadership => {
            error!("lost leadership; exiting so a fresh process can compete again");
            metrics.set_leader(false);
            policy_task.abort();
            sweep_task.abort();
            server.abort();
            std::process::exit(1);
        }
    }
    policy_task.abort();
    sweep_task.abort();
    server.abort();
    Ok(())
}

fn resource_for_refs() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(patrol_api::GROUP, "v1alpha1", "PersonalAccessToken"),
        "personalaccesstokens",
    )
}

#[derive(Clone)]
struct HealthState {
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
}

async fn serve_health(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(HealthState { metrics, ready });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "health server stopped");
        }
    }))
}

/// Ready once this replica reconciles (the leader); followers are alive but not ready.
async fn readyz(State(state): State<HealthState>) -> impl IntoResponse {
    if *state.ready.borrow() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not leading")
    }
}

async fn metrics_text(State(state): State<HealthState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    info!("shutting down");
}

/// Watches list from the apiserver's watch cache (resourceVersion=0). A quorum list right
/// after an apiserver restart can return a resourceVersion older than the fresh cache's
/// window, and the watch from it then fails with 410 Gone over and over; a cached list's
/// version is always inside the window.
fn watch_config() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

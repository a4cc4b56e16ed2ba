//! Wiring: the record watch, the admission caches (TokenPolicies, Namespaces), the
//! lastUsedAt writer, housekeeping, certificate reloading and the HTTPS server, started
//! together by [`run`].

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use axum_server::{
    Handle,
    tls_rustls::{RustlsAcceptor, RustlsConfig},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use patrol_credentials::providers::Providers;
use tracing::info;

use crate::{
    admission::{Admission, KubeCluster, SubjectAccessReviewer, TokenContext, attestation},
    authz::{self, watch::CatalogCell},
    index::{self, RecordIndex},
    issuer::{CredentialMinting, Issuer},
    metrics::Metrics,
    oauth::OAuthSettings,
    owners::ServiceAccounts,
    reviews::KubeReviewer,
    routes::{self, AppContext, AppState, HttpLimits},
    signing::{self, KeyStore, SigningKeys},
    tls::{self, CertificateFiles, CertificateReloader},
    token_review::IdentityMapping,
    usage::{self, KubePatActivity, UsageRecorder},
    validate::{Validator, ValidatorConfig},
};

/// Everything `patrol-webhook` is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// How often the certificate files are checked for changes.
    pub tls_reload_interval: Duration,
    /// Namespace holding the token record Secrets.
    pub namespace: String,
    pub identity: IdentityMapping,
    pub validator: ValidatorConfig,
    pub http: HttpLimits,
    /// At most one `lastUsedAt` write per token per this interval (per replica).
    pub last_used_debounce: Duration,
    /// The OAuth issuer (token exchange, introspection, discovery, JWKS); off when `None`.
    pub oauth: Option<OAuthSettings>,
    /// Whether exchanges mint associated credentials from CredentialProviders.
    pub credentials: bool,
    /// After SIGTERM, how long to keep serving while reporting not ready, so that the
    /// Service's endpoints (kube-proxy, load balancers) stop sending new connections here
    /// before the listener closes.
    pub drain_delay: Duration,
    /// Secret (in `namespace`) holding the owner-attestation key.
    pub owner_attestation_secret: String,
    /// How long in-flight requests may finish after the drain delay.
    pub shutdown_grace: Duration,
}

/// Queue of pending `lastUsedAt` writes; beyond it, writes are dropped and retried on a later use.
const USAGE_QUEUE: usize = 4_096;

/// Runs the token service until SIGTERM or SIGINT.
pub async fn run(settings: Settings, client: Client) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let index = Arc::new(RecordIndex::new(metrics.clone()));
    let (usage, usage_rx) =
        UsageRecorder::new(USAGE_QUEUE, settings.last_used_debounce, metrics.clone());
    let (service_accounts, service_account_watch) = ServiceAccounts::new(client.clone());
    tokio::spawn(service_account_watch);
    let validator = Arc::new(
        Validator::new(
            &settings.validator,
            index.clone(),
            usage,
            Arc::new(KubePatActivity::new(client.clone())),
            metrics.clone(),
        )
        .context("creating the validator")?
        .with_owners(service_accounts),
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let (cluster, admission_watches) = KubeCluster::new(client.clone(), metrics.clone());
    tokio::spawn(admission_watches);
    let issuer = match &settings.oauth {
        None => None,
        Some(oauth) => {
            let keys = Arc::new(SigningKeys::default());
            let store = KeyStore {
                namespace: settings.namespace.clone(),
                name: oauth.signing_secret.clone(),
                rotation: oauth.rotation,
            };
            tokio::spawn(signing::run(
                secrets.clone(),
                store,
                keys.clone(),
                metrics.clone(),
            ));
            let issuer = Issuer::new(
                oauth.clone(),
                keys,
                validator.clone(),
                settings.identity.clone(),
                Arc::new(KubeReviewer::new(client.clone())),
                metrics.clone(),
            )
            .context("creating the OAuth issuer")?;
            let issuer = if settings.credentials {
                issuer.with_credentials(CredentialMinting {
                    providers: Providers::start(client.clone(), &settings.namespace),
                    cluster: cluster.clone(),
                })
            } else {
                issuer
            };
            info!(issuer = %oauth.issuer, "OAuth endpoints enabled");
            Some(Arc::new(issuer))
        }
    };
    let on_change = {
        let validator = validator.clone();
        move |ids: &[_]| validator.on_index_change(ids)
    };
    let attestation_keys = Arc::new(attestation::KeyCell::default());
    tokio::spawn(attestation::keep_key(
        secrets.clone(),
        settings.owner_attestation_secret.clone(),
        attestation_keys.clone(),
    ));
    tokio::spawn(index::run_watch(secrets, index, on_change));
    let catalog = Arc::new(CatalogCell::default());
    let admission = Arc::new(
        Admission::new(
            cluster,
            Arc::new(SubjectAccessReviewer::new(client.clone())),
            metrics.clone(),
        )
        .with_tokens(TokenContext {
            index: validator.index().clone(),
            catalog: catalog.clone(),
            scope_group_prefix: settings.identity.scope_group_prefix.clone(),
        })
        .with_attestation(attestation_keys),
    );
    tokio::spawn(authz::watch::run(
        client.clone(),
        catalog.clone(),
        metrics.clone(),
    ));
    tokio::spawn(usage::run_writer(client, usage_rx, metrics.clone()));
    {
        let validator = validator.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(10));
            loop {
                ticks.tick().await;
                validator.maintain();
            }
        });
    }

    let files = CertificateFiles {
        cert: settings.tls_cert.clone(),
        key: settings.tls_key.clone(),
    };
    let (reloader, tls_config) =
        CertificateReloader::load(files).context("loading the serving certificate")?;
    let served = RustlsConfig::from_config(tls_config);
    tokio::spawn(tls::reload_periodically(
        reloader,
        served.clone(),
        settings.tls_reload_interval,
        metrics.clone(),
    ));

    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState(Arc::new(AppContext {
        validator,
        identity: settings.identity.clone(),
        metrics,
        admission,
        catalog,
        draining: draining.clone(),
    }));
    let app = routes::router(state, &settings.http);
    let app = match issuer {
        Some(issuer) => app.layer(axum::Extension(issuer)),
        None => app,
    };

    let handle = Handle::new();
    tokio::spawn(shutdown_on_signal(
        handle.clone(),
        draining,
        settings.drain_delay,
        settings.shutdown_grace,
    ));
    let acceptor = RustlsAcceptor::new(served).handshake_timeout(Duration::from_secs(10));
    let mut server = axum_server::bind(settings.listen)
        .acceptor(acceptor)
        .handle(handle)
        .first_request_timeout(Duration::from_secs(10));
    server
        .http_builder()
        .http1()
        .header_read_timeout(Duration::from_secs(10));
    server
        .http_builder()
        .http2()
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_concurrent_streams(256);
    info!(listen = %settings.listen, namespace = %settings.namespace, "patrol-webhook serving");
    server
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
        .with_context(|| format!("serving on {}", settings.listen))?;
    info!("patrol-webhook stopped");
    Ok(())
}

/// On SIGTERM or SIGINT: fail readiness and keep serving for `drain`, then stop accepting
/// and give in-flight requests `grace` to finish. Without the drain, the replica would
/// refuse connections that kube-proxy still routes to it until its endpoint update lands,
/// and every such TokenReview or admission call would fail.
async fn shutdown_on_signal(
    handle: Handle<SocketAddr>,
    draining: Arc<AtomicBool>,
    drain: Duration,
    grace: Duration,
) {
    stop_signal().await;
    draining.store(true, Ordering::Relaxed);
    if !drain.is_zero() {
        info!(drain = ?drain, "stop requested: draining (not ready, still serving)");
        tokio::time::sleep(drain).await;
    }
    info!(grace = ?grace, "shutting down");
    handle.graceful_shutdown(Some(grace));
}

async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(term) => term,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops gracefully");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

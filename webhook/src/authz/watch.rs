//! Keeps the scope catalog current: watches TokenScopes and ClusterRoles and rebuilds the
//! catalog whole on every change (both are few and small), so each decision reads one
//! immutable snapshot.

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicBool, Ordering},
};

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use patrol_api::v1alpha1::TokenScope;
use tracing::{info, warn};

use super::catalog::ScopeCatalog;
use crate::metrics::Metrics;

/// The current catalog, shared by every request.
pub struct CatalogCell {
    current: RwLock<Arc<ScopeCatalog>>,
    scopes_synced: AtomicBool,
    roles_synced: AtomicBool,
}

impl Default for CatalogCell {
    fn default() -> Self {
        Self {
            current: RwLock::new(Arc::new(ScopeCatalog::default())),
            scopes_synced: AtomicBool::new(false),
            roles_synced: AtomicBool::new(false),
        }
    }
}

impl CatalogCell {
    /// The catalog, once both watches have listed everything; `None` before.
    pub fn current(&self) -> Option<Arc<ScopeCatalog>> {
        if !self.is_synced() {
            return None;
        }
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }

    pub fn is_synced(&self) -> bool {
        self.scopes_synced.load(Ordering::Acquire) && self.roles_synced.load(Ordering::Acquire)
    }

    /// Replaces the catalog (also used by tests to install one directly).
    pub fn replace(&self, catalog: ScopeCatalog) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(catalog);
    }

    /// Marks both sources synced (tests that install a catalog by hand).
    pub fn mark_synced(&self) {
        self.scopes_synced.store(true, Ordering::Release);
        self.roles_synced.store(true, Ordering::Release);
    }
}

enum Source {
    Scopes,
    Roles,
}

/// Watches TokenScopes and ClusterRoles until the process ends.
pub async fn run(client: Client, cell: Arc<CatalogCell>, metrics: Arc<Metrics>) {
    let (scopes, scope_writer) = reflector::store::<TokenScope>();
    let (roles, role_writer) = reflector::store::<ClusterRole>();
    let scope_events = watcher(
        Api::<TokenScope>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|s: &mut TokenScope| s.managed_fields_mut().clear())
    .reflect(scope_writer)
    .map(|e| {
        (
            Source::Scopes,
            e.map(|e| changed(&e)).map_err(|e| e.to_string()),
        )
    });
    let role_events = watcher(Api::<ClusterRole>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(|r: &mut ClusterRole| {
            r.managed_fields_mut().clear();
            r.annotations_mut().clear();
        })
        .reflect(role_writer)
        .map(|e| {
            (
                Source::Roles,
                e.map(|e| changed(&e)).map_err(|e| e.to_string()),
            )
        });
    let mut events = std::pin::pin!(futures::stream::select(scope_events, role_events));
    while let Some((source, event)) = events.next().await {
        match event {
            Ok(Change::None) => continue,
            Ok(Change::Synced) => {
                let flag = match source {
                    Source::Scopes => &cell.scopes_synced,
                    Source::Roles => &cell.roles_synced,
                };
                flag.store(true, Ordering::Release);
            }
            Ok(Change::Object) => {}
            Err(e) => {
                let what = match source {
                    Source::Scopes => "TokenScopes",
                    Source::Roles => "ClusterRoles",
                };
                warn!(error = %e, "watching {what} for the scope catalog failed; retrying");
                continue;
            }
        }
        let was_synced = metrics.scope_catalog_synced.get() == 1;
        let catalog = ScopeCatalog::build(
            scopes.state().iter().map(|s| s.as_ref()),
            roles.state().iter().map(|r| r.as_ref()),
        );
        metrics
            .scope_catalog_scopes
            .set(i64::try_from(catalog.len()).unwrap_or(i64::MAX));
        cell.replace(catalog);
        if cell.is_synced() && !was_synced {
            metrics.scope_catalog_synced.set(1);
            info!(
                scopes = cell.current().map_or(0, |c| c.len()),
                "scope catalog synced: TokenScopes and ClusterRoles"
            );
        }
    }
}

enum Change {
    /// Part of an initial list: the store applies it at the end.
    None,
    /// The initial list is complete.
    Synced,
    /// An object changed after the initial list.
    Object,
}

fn changed<K>(event: &watcher::Event<K>) -> Change {
    match event {
        watcher::Event::Init | watcher::Event::InitApply(_) => Change::None,
        watcher::Event::InitDone => Change::Synced,
        watcher::Event::Apply(_) | watcher::Event::Delete(_) => Change::Object,
    }
}

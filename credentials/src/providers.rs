//! Minting at exchange: which providers a token is entitled to, and the lease-first
//! sequence that makes each credential revocable from the moment it exists.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::PostParams,
    runtime::{WatchStreamExt, reflector, watcher},
};
use patrol_api::{
    lease::{Lease, Leased},
    record::PatReference,
    v1alpha1::{CredentialProvider, PostgresProvider, ServiceAccountProvider, TokenOwner},
};
use tokio::sync::Mutex;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::{
    Credential, CredentialsRequest, Issued, new_lease_id,
    postgres::{self, Admin, AdminLogin, SslMode, Target},
    revoke::{self, RevokeError},
    service_account::{self, ServiceAccountError},
};

/// How long connecting to a database and each statement may take.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The token an exchange mints for, as the exchange knows it.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub token_id: &'a str,
    pub pat: PatReference,
    pub owner: &'a TokenOwner,
    /// The ServiceAccount the PAT names (`spec.credentials.serviceAccount`), if any.
    pub service_account: Option<(&'a str, &'a str)>,
    pub jti: &'a str,
    /// No credential outlives this (the exchanged JWT's `exp`).
    pub expires_at: DateTime<Utc>,
}

/// Why no credentials were minted. Whatever was minted before the failure is revoked.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("the CredentialProviders have not been loaded yet")]
    NotReady,
    #[error("no credential provider named {0:?} is available to this token")]
    UnknownProvider(String),
    #[error(
        "provider {0}: the PersonalAccessToken names no ServiceAccount (spec.credentials.serviceAccount)"
    )]
    NoServiceAccount(String),
    #[error(
        "provider {provider}: the token's owner may not impersonate ServiceAccount {namespace}/{name}"
    )]
    NotImpersonable {
        provider: String,
        namespace: String,
        name: String,
    },
    #[error("provider {provider} is misconfigured: {why}")]
    Misconfigured { provider: String, why: String },
    #[error("provider {provider} cannot mint now: {why}")]
    Unavailable { provider: String, why: String },
}

impl MintError {
    /// A bounded label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::NotReady => "not_ready",
            Self::UnknownProvider(_) => "unknown_provider",
            Self::NoServiceAccount(_) => "no_service_account",
            Self::NotImpersonable { .. } => "not_impersonable",
            Self::Misconfigured { .. } => "misconfigured",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    fn unavailable(provider: &str, why: impl std::fmt::Display) -> Self {
        Self::Unavailable {
            provider: provider.to_owned(),
            why: why.to_string(),
        }
    }
}

/// Host, port, database, admin Secret, TLS: one admin connection each.
type AdminKey = (String, u16, String, String, bool);

/// Connections to databases as their admin role, shared by minting and revoking.
pub struct AdminPool {
    client: Client,
    namespace: String,
    admins: Mutex<HashMap<AdminKey, Arc<Admin>>>,
}

impl AdminPool {
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            admins: Mutex::default(),
        }
    }

    fn key(target: &Target, secret: &str) -> AdminKey {
        (
            target.host.clone(),
            target.port,
            target.database.clone(),
            secret.to_owned(),
            target.ssl != SslMode::Disable,
        )
    }

    /// A live admin connection to `target`, logging in with the Secret `secret` (in Patrol's
    /// namespace), read again whenever a new connection is made. With TLS, the Secret's
    /// `ca.crt` (when present) is the trust anchor.
    pub async fn get(&self, target: &Target, secret: &str) -> Result<Arc<Admin>, RevokeError> {
        let key = Self::key(target, secret);
        let mut admins = self.admins.lock().await;
        if let Some(admin) = admins.get(&key)
            && !admin.is_closed()
        {
            return Ok(admin.clone());
        }
        let (login, ca) = self.login(secret).await?;
        let mut target = target.clone();
        if let SslMode::VerifyFull { ca_pem } = &mut target.ssl {
            *ca_pem = ca;
        }
        let admin = Admin::connect(&target, &login, DATABASE_TIMEOUT)
            .await
            .map_err(|source| RevokeError::Postgres {
                host: target.host.clone(),
                port: target.port,
                source,
            })?;
        let admin = Arc::new(admin);
        admins.insert(key, admin.clone());
        Ok(admin)
    }

    /// Drops a cached connection (after an error), so the next use reconnects.
    pub async fn forget(&self, target: &Target, secret: &str) {
        self.admins.lock().await.remove(&Self::key(target, secret));
    }

    async fn login(&self, name: &str) -> Result<(AdminLogin, Option<Vec<u8>>), RevokeError> {
        let where_ = format!("{}/{name}", self.namespace);
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await?
            .ok_or_else(|| RevokeError::AdminSecret(where_.clone(), "does not exist".into()))?;
        let field = |key: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    RevokeError::AdminSecret(where_.clone(), format!("has no {key:?} key"))
                })
        };
        let ca = secret
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .map(|v| v.0.clone())
            .filter(|v| !v.is_empty());
        Ok((
            AdminLogin {
                username: field("username")?,
                password: Zeroizing::new(field("password")?),
            },
            ca,
        ))
    }
}

/// The providers, as watched, and the means to mint.
pub struct Providers {
    client: Client,
    namespace: String,
    store: reflector::Store<CredentialProvider>,
    synced: Arc<AtomicBool>,
    admins: Arc<AdminPool>,
}

impl Providers {
    /// Starts watching CredentialProviders; `namespace` is Patrol's own (leases, admin
    /// Secrets).
    pub fn start(client: Client, namespace: &str) -> Arc<Self> {
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let api: Api<CredentialProvider> = Api::all(client.clone());
        let flag = synced.clone();
        tokio::spawn(async move {
            let mut events = reflector(
                writer,
                watcher(api, watcher::Config::default().any_semantic()),
            )
            .default_backoff()
            .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if !flag.swap(true, Ordering::Relaxed) {
                            info!("CredentialProviders loaded");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "CredentialProvider watch"),
                }
            }
        });
        Arc::new(Self {
            admins: Arc::new(AdminPool::new(client.clone(), namespace)),
            client,
            namespace: namespace.to_owned(),
            store,
            synced,
        })
    }

    pub fn admins(&self) -> &Arc<AdminPool> {
        &self.admins
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// The providers selecting a namespace with `labels`, by name.
    pub fn entitled(&self, labels: &BTreeMap<String, String>) -> Vec<Arc<CredentialProvider>> {
        let mut list: Vec<_> = self
            .store
            .state()
            .into_iter()
            .filter(|p| p.spec.selects(labels))
            .collect();
        list.sort_by_key(|p| p.name_any());
        list
    }

    /// Mints what `request` asks for from the providers selecting the PAT's namespace
    /// (`labels`). All or nothing: on any failure, what was minted is revoked.
    pub async fn mint(
        &self,
        subject: &Subject<'_>,
        request: &CredentialsRequest,
        labels: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Issued>, MintError> {
        if !self.is_synced() {
            return Err(MintError::NotReady);
        }
        let entitled = self.entitled(labels);
        if let CredentialsRequest::Providers(names) = request
            && let Some(missing) = names
                .iter()
                .find(|n| !entitled.iter().any(|p| &p.name_any() == *n))
        {
            return Err(MintError::UnknownProvider(missing.clone()));
        }
        let mut issued = Vec::new();
        for provider in entitled {
            let name = provider.name_any();
            if !request.includes(&name) {
                continue;
            }
            let explicit = matches!(request, CredentialsRequest::Providers(_));
            match self.mint_one(&provider, subject, now).await {
                Ok(Some(one)) => issued.push(one),
                Ok(None) if explicit => {
                    self.undo(&issued).await;
                    return Err(MintError::NoServiceAccount(name));
                }
                Ok(None) => {}
                Err(e) => {
                    self.undo(&issued).await;
                    return Err(e);
                }
            }
        }
        Ok(issued)
    }

    /// Revokes what an exchange minted before failing; a lease it cannot revoke now stays
    /// for the operator's sweep.
    async fn undo(&self, issued: &[Issued]) {
        for one in issued {
            if let Err(e) = self.revoke_lease(&one.lease_id).await {
                warn!(lease = %one.lease_id, error = %e, "cannot revoke a credential of a failed exchange; the operator sweeps it");
            }
        }
    }

    async fn revoke_lease(&self, lease_id: &str) -> Result<(), RevokeError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let Some(secret) = api.get_opt(&Lease::secret_name(lease_id)).await? else {
            return Ok(());
        };
        match Lease::from_secret(&secret) {
            Ok(lease) => revoke::revoke(&self.client, &self.admins, &self.namespace, &lease).await,
            Err(_) => Ok(()),
        }
    }

    /// One provider's credential; `None` when it does not apply (a ServiceAccount provider
    /// for a PAT that names no ServiceAccount).
    async fn mint_one(
        &self,
        provider: &CredentialProvider,
        subject: &Subject<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<Issued>, MintError> {
        let name = provider.name_any();
        let ttl = provider
            .spec
            .ttl_seconds()
            .map_err(|e| MintError::Misconfigured {
                provider: name.clone(),
                why: format!("spec.ttl: {e}"),
            })?;
        let expires_at = subject
            .expires_at
            .min(now + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 2)));
        let lease_id =
            new_lease_id().ok_or_else(|| MintError::unavailable(&name, "no randomness"))?;
        if let Some(sa) = &provider.spec.service_account {
            let Some((namespace, account)) = subject.service_account else {
                return Ok(None);
            };
            return self
                .mint_service_account(
                    &name, sa, subject, namespace, account, lease_id, expires_at, now,
                )
                .await
                .map(Some);
        }
        if let Some(pg) = &provider.spec.postgres {
            return self
                .mint_postgres(&name, pg, subject, lease_id, expires_at, now)
                .await
                .map(Some);
        }
        Err(MintError::Misconfigured {
            provider: name,
            why: "it sets neither serviceAccount nor postgres".into(),
        })
    }

    fn lease(
        &self,
        provider: &str,
        subject: &Subject<'_>,
        lease_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
        leased: Leased,
    ) -> Lease {
        Lease {
            lease_id: lease_id.to_owned(),
            provider: provider.to_owned(),
            token_id: subject.token_id.to_owned(),
            pat: subject.pat.clone(),
            jti: subject.jti.to_owned(),
            issued_at: now,
            expires_at,
            leased,
        }
    }

    async fn write_lease(&self, provider: &str, lease: &Lease) -> Result<(), MintError> {
        let secret = lease
            .to_secret(&self.namespace)
            .map_err(|e| MintError::unavailable(provider, e))?;
        Api::<Secret>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| MintError::unavailable(provider, format!("recording the lease: {e}")))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn mint_service_account(
        &self,
        provider: &str,
        spec: &ServiceAccountProvider,
        subject: &Subject<'_>,
        namespace: &str,
        account: &str,
        lease_id: String,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Issued, MintError> {
        let allowed =
            service_account::owner_may_impersonate(&self.client, subject.owner, namespace, account)
                .await
                .map_err(|e| {
                    MintError::unavailable(provider, format!("SubjectAccessReview: {e}"))
                })?;
        if !allowed {
            return Err(MintError::NotImpersonable {
                provider: provider.to_owned(),
                namespace: namespace.to_owned(),
                name: account.to_owned(),
            });
        }
        let bound = service_account::bound_secret_name(&lease_id);
        let lease = self.lease(
            provider,
            subject,
            &lease_id,
            expires_at,
            now,
            Leased::ServiceAccountToken {
                namespace: namespace.to_owned(),
                service_account: account.to_owned(),
                bound_secret: bound,
            },
        );
        self.write_lease(provider, &lease).await?;
        let minted = async {
            let binding = service_account::create_binding(
                &self.client,
                namespace,
                &lease_id,
                subject.token_id,
            )
            .await
            .map_err(ServiceAccountError::from)?;
            service_account::request_token(
                &self.client,
                namespace,
                account,
                &binding,
                &spec.audiences,
                expires_at,
                now,
            )
            .await
        }
        .await;
        match minted {
            Ok(token) => Ok(Issued {
                provider: provider.to_owned(),
                lease_id,
                expires_at,
                credential: Credential::ServiceAccountToken {
                    namespace: namespace.to_owned(),
                    service_account: account.to_owned(),
                    token,
                },
            }),
            Err(e) => {
                if let Err(undo) =
                    revoke::revoke(&self.client, &self.admins, &self.namespace, &lease).await
                {
                    warn!(lease = %lease_id, error = %undo, "cannot undo a failed ServiceAccount mint; the operator sweeps it");
                }
                Err(match e {
                    ServiceAccountError::NoSuchServiceAccount { .. } => MintError::Misconfigured {
                        provider: provider.to_owned(),
                        why: e.to_string(),
                    },
                    _ => MintError::unavailable(provider, e),
                })
            }
        }
    }

    async fn mint_postgres(
        &self,
        provider: &str,
        spec: &PostgresProvider,
        subject: &Subject<'_>,
        lease_id: String,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Issued, MintError> {
        let target = Target::new(&spec.host, spec.port(), &spec.database, spec.tls());
        let admin = self
            .admins
            .get(&target, &spec.admin_secret.name)
            .await
            .map_err(|e| match &e {
                RevokeError::AdminSecret(..) => MintError::Misconfigured {
                    provider: provider.to_owned(),
                    why: e.to_string(),
                },
                RevokeError::Postgres { source, .. } if !source.is_transient() => {
                    MintError::Misconfigured {
                        provider: provider.to_owned(),
                        why: e.to_string(),
                    }
                }
                _ => MintError::unavailable(provider, e),
            })?;
        let role = format!("{}{lease_id}", spec.role_prefix());
        let password = postgres::new_password().map_err(|e| MintError::unavailable(provider, e))?;
        let lease = self.lease(
            provider,
            subject,
            &lease_id,
            expires_at,
            now,
            Leased::PostgresRole {
                host: spec.host.clone(),
                port: spec.port(),
                database: spec.database.clone(),
                admin_secret: spec.admin_secret.name.clone(),
                tls: spec.tls(),
                role: role.clone(),
            },
        );
        self.write_lease(provider, &lease).await?;
        match admin
            .create_user(&role, &password, expires_at, &spec.group_role)
            .await
        {
            Ok(()) => Ok(Issued {
                provider: provider.to_owned(),
                lease_id,
                expires_at,
                credential: Credential::Postgres {
                    host: spec.host.clone(),
                    port: spec.port(),
                    database: spec.database.clone(),
                    username: role,
                    password,
                },
            }),
            Err(e) => {
                // CREATE ROLE is one statement, so it failed whole, unless the answer was
                // lost after the server ran it: drop the role if it exists, then the lease.
                self.admins.forget(&target, &spec.admin_secret.name).await;
                if let Err(undo) =
                    revoke::revoke(&self.client, &self.admins, &self.namespace, &lease).await
                {
                    warn!(lease = %lease_id, error = %undo, "cannot undo a failed PostgreSQL mint; the operator sweeps it");
                }
                Err(if e.is_transient() {
                    MintError::unavailable(provider, e)
                } else {
                    MintError::Misconfigured {
                        provider: provider.to_owned(),
                        why: e.to_string(),
                    }
                })
            }
        }
    }
}

//! The PersonalAccessToken reconciler: observe, [`lifecycle::plan`], execute.
//!
//! Reads are fresh GETs/LISTs (never a possibly-stale cache) for the objects that decide
//! whether to issue a token, so two reconciles can never both see "no token" and issue two.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        DeleteParams, DynamicObject, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams,
    },
    runtime::{
        controller::Action as Requeue,
        events::{Event, EventType, Recorder},
        finalizer::{Event as Finalizer, finalizer},
        reflector::{ObjectRef, Store},
    },
};
use patrol_api::{
    attestation,
    policy::PolicySet,
    record::{self, TokenRecord},
    token::{self, TokenHasher},
    v1alpha1::{PersonalAccessToken, Phase, TokenPolicy},
};
use tracing::{debug, info, instrument, warn};

use crate::{
    crash,
    lifecycle::{self, Action, DeliveredSecret, IssueReason, Observed, OwnerVetting},
    metrics::{Metrics, TokenState},
};

/// Finalizer that removes a PAT's records and Secret before the PAT goes.
pub const FINALIZER: &str = "patrol.dev/token-cleanup";
/// Field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "patrol-operator";
/// Annotations on the delivered Secret.
pub const TOKEN_ID_ANNOTATION: &str = "patrol.dev/token-id";
pub const DELIVERED_AT_ANNOTATION: &str = "patrol.dev/delivered-at";
/// Label on the delivered Secret (value: `delivered-token`).
pub const DELIVERED_COMPONENT: &str = "delivered-token";
/// Key of the plaintext in the delivered Secret.
pub const TOKEN_KEY: &str = "token";
/// Longest a PAT goes without a reconcile.
pub const RESYNC: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// Namespace holding the token records.
    pub namespace: String,
    pub hasher: TokenHasher,
    /// Bounds concurrent argon2 hashes (each holds its memory cost, 19 MiB by default) to
    /// the cores that can run them; more would only queue and inflate memory.
    pub hash_permits: Arc<tokio::sync::Semaphore>,
    pub policies: Store<TokenPolicy>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Secret (in `namespace`) with the key admission attests owners with; `None`: owners
    /// are trusted unattested (only for clusters without patrol-webhook's admission).
    pub owner_attestation: Option<String>,
    /// Database connections for revoking associated credentials.
    pub admins: Arc<patrol_credentials::providers::AdminPool>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("token generation: {0}")]
    Token(#[from] token::TokenError),
    #[error("token record: {0}")]
    Record(#[from] record::RecordError),
    #[error("object is not a valid PersonalAccessToken: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("could not draw a token with an unused id after {0} tries")]
    IdCollision(u32),
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 => "forbidden",
            Error::Kube(_) => "kube",
            Error::Token(_) => "token",
            Error::Record(_) => "record",
            Error::Malformed(_) => "malformed",
            Error::Finalizer(_) => "finalizer",
            Error::IdCollision(_) => "id_collision",
        }
    }
}

/// Entry point for the controller: objects arrive untyped so that one malformed object is
/// reported and skipped instead of breaking the watch for every other one.
#[instrument(skip_all, fields(pat = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())))]
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let pat: PersonalAccessToken =
        match serde_json::to_value(obj.as_ref()).and_then(serde_json::from_value) {
            Ok(pat) => pat,
            Err(err) => {
                warn!(error = %err, "skipping malformed PersonalAccessToken");
                ctx.metrics.reconcile_error("malformed");
                return Ok(Requeue::await_change());
            }
        };
    let ns = pat.namespace().unwrap_or_default();
    let api: Api<PersonalAccessToken> = Api::namespaced(ctx.client.clone(), &ns);
    // Decide from the stored object, not the watch cache: after an apiserver restart the
    // watch may lag (backing off) and a stale object would fail every finalizer patch.
    let Some(pat) = api.get_opt(&pat.name_any()).await? else {
        return Ok(Requeue::await_change());
    };
    let had_finalizer = pat.finalizers().iter().any(|f| f == FINALIZER);
    let result = finalizer(&api, FINALIZER, Arc::new(pat), |event| async {
        match event {
            Finalizer::Apply(pat) => apply(&pat, &ctx).await,
            Finalizer::Cleanup(pat) => cleanup(&pat, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics.reconcile_done(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    // Adding the finalizer ends a reconcile and waits for the watch to report the change;
    // look again right away instead, so a slow or resyncing watch cannot delay the token.
    if !had_finalizer && result.is_ok() {
        return Ok(Requeue::requeue(std::time::Duration::from_millis(50)));
    }
    result
}

/// Whether admission attested `pat`'s owner, checked with the key in the attestation
/// Secret (read fresh, so a replaced key applies at once).
async fn vet_owner(ctx: &Context, pat: &PersonalAccessToken) -> OwnerVetting {
    let Some(name) = &ctx.owner_attestation else {
        return OwnerVetting::Vetted;
    };
    let (Some(owner), Some(created)) = (&pat.spec.owner, &pat.metadata.creation_timestamp) else {
        // No owner: the plan refuses it anyway; no creation time: not from an apiserver.
        return OwnerVetting::Refused("the object has no owner or creation time".into());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let where_ = format!("Secret {}/{name}", ctx.namespace);
    let key = match secrets.get_opt(name).await {
        Ok(Some(secret)) => attestation::key_of(&secret),
        Ok(None) => {
            return OwnerVetting::Undecided(format!(
                "{where_} does not exist yet; patrol-webhook creates it when it starts"
            ));
        }
        Err(e) => return OwnerVetting::Undecided(format!("{where_} could not be read: {e}")),
    };
    let Some(key) = key else {
        return OwnerVetting::Undecided(format!(
            "{where_} holds no usable key; delete it and patrol-webhook makes a new one"
        ));
    };
    let annotation = pat
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(attestation::ANNOTATION))
        .map(String::as_str);
    let stored = attestation::Stored {
        namespace: pat.metadata.namespace.as_deref().unwrap_or_default(),
        name: pat.metadata.name.as_deref().unwrap_or_default(),
        generate_name: pat.metadata.generate_name.as_deref(),
        owner,
        scopes: &pat.spec.scopes,
        created: patrol_api::time::from_k8s(created),
    };
    match attestation::verify(&key, annotation, &stored) {
        Ok(()) => OwnerVetting::Vetted,
        Err(refusal) => OwnerVetting::Refused(refusal.to_string()),
    }
}

/// Requeue policy for failed reconciles: transient errors retry with a short delay.
pub fn error_policy(_obj: Arc<DynamicObject>, err: &Error, _ctx: Arc<Context>) -> Requeue {
    warn!(error = %err, "reconcile failed; retrying");
    Requeue::requeue(std::time::Duration::from_secs(2))
}

async fn apply(pat: &PersonalAccessToken, ctx: &Context) -> Result<Requeue, Error> {
    let now = Utc::now();
    let ns = pat.namespace().unwrap_or_default();
    let uid = pat.uid().unwrap_or_default();

    let policies: Vec<TokenPolicy> = ctx.policies.state().iter().map(|p| (**p).clone()).collect();
    let labels = ctx
        .namespaces
        .get(&ObjectRef::new(&ns))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    let policy = PolicySet::new(policies).effective_for(&labels);

    let records = list_records(ctx, &uid).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = lifecycle::secret_name(pat);
    let secret = secrets
        .get_metadata_opt(&secret_name)
        .await?
        .map(|s| observe_secret(&s, &uid));

    let observed = Observed {
        pat,
        records: &records,
        secret: secret.as_ref(),
        policy: &policy,
        now,
        owner: &OwnerVetting::Vetted,
    };
    let mut plan = lifecycle::plan(&observed);
    // Vetting costs a read of the key, and only an issue to a PAT without records needs it.
    if records.is_empty() && plan.actions.iter().any(|a| matches!(a, Action::Issue(_))) {
        let owner = vet_owner(ctx, pat).await;
        if owner != OwnerVetting::Vetted {
            plan = lifecycle::plan(&Observed {
                owner: &owner,
                ..observed
            });
        }
    }
    debug!(actions = ?plan.actions, phase = ?plan.status.phase, "plan");

    let mut issue = None;
    for action in &plan.actions {
        match action {
            Action::DeleteRecord(id) => delete_record(ctx, id).await?,
            Action::UpdateRecord(record) => write_record(ctx, record).await?,
            Action::DeleteSecret => delete_if_present(&secrets, &secret_name).await?,
            Action::Issue(reason) => issue = Some(*reason),
        }
    }

    write_status(pat, &plan.status, ctx).await?;
    crash::point("status-written");
    for note in &plan.notes {
        publish(ctx, pat, note.reason, &note.message, note.warning).await;
    }
    let phase = plan.status.phase.unwrap_or_default();
    ctx.metrics.observe(
        &uid,
        TokenState {
            namespace: ns.clone(),
            phase,
            expiring_soon: plan
                .status
                .conditions
                .iter()
                .any(|c| c.type_ == lifecycle::EXPIRING_SOON && c.status == "True"),
            idle_since: plan
                .status
                .last_used_at
                .as_ref()
                .or(plan.status.issued_at.as_ref())
                .map(patrol_api::time::from_k8s),
        },
    );
    if phase == Phase::Active
        && pat.status.as_ref().and_then(|s| s.phase) != Some(Phase::Active)
        && let Some(created) = pat.creation_timestamp()
    {
        ctx.metrics.materialized(
            (now - patrol_api::time::from_k8s(&created))
                .to_std()
                .unwrap_or_default(),
        );
    }

    if let Some(reason) = issue {
        issue_token(pat, &policy, reason, ctx).await?;
        // The next reconcile adopts the token the Secret now names.
        return Ok(Requeue::requeue(std::time::Duration::from_millis(50)));
    }
    // Deadlines drive requeues; without one, a slow resync bounds how long a missed watch
    // event (e.g. while the apiserver restarts) can go unnoticed.
    Ok(Requeue::requeue(
        plan.requeue_after.unwrap_or(RESYNC).min(RESYNC),
    ))
}

async fn cleanup(pat: &PersonalAccessToken, ctx: &Context) -> Result<Requeue, Error> {
    let uid = pat.uid().unwrap_or_default();
    for record in list_records(ctx, &uid).await? {
        delete_record(ctx, &record.token_id).await?;
    }
    let ns = pat.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = lifecycle::secret_name(pat);
    if let Some(secret) = secrets.get_metadata_opt(&name).await?
        && observe_secret(&secret, &uid).owned
    {
        delete_if_present(&secrets, &name).await?;
    }
    ctx.metrics.forget(&uid);
    info!("token deleted; records and Secret removed");
    Ok(Requeue::await_change())
}

/// Generates a token, writes its record, then delivers it. Never writes status: see
/// [`lifecycle`] for why that makes a crash at any point converge.
async fn issue_token(
    pat: &PersonalAccessToken,
    policy: &patrol_api::policy::EffectivePolicy,
    reason: IssueReason,
    ctx: &Context,
) -> Result<(), Error> {
    let records: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    const TRIES: u32 = 3;
    for _ in 0..TRIES {
        let hasher = ctx.hasher.clone();
        let _permit = ctx
            .hash_permits
            .acquire()
            .await
            .map_err(|e| Error::Finalizer(format!("hash pool closed: {e}")))?;
        // argon2 takes tens of milliseconds: keep it off the async workers.
        let (plaintext, hashed) = tokio::task::spawn_blocking(move || {
            let plaintext = token::generate()?;
            let hashed = hasher.hash(&plaintext)?;
            Ok::<_, token::TokenError>((plaintext, hashed))
        })
        .await
        .map_err(|e| Error::Finalizer(format!("hashing task failed: {e}")))??;
        let issued_at = Utc::now();
        let record = lifecycle::new_record(
            pat,
            policy,
            plaintext.id().to_string(),
            hashed,
            plaintext.hint(),
            issued_at,
        );
        let secret = record.to_secret(&ctx.namespace)?;
        match records
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &secret,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(e.into()),
        }
        crash::point("record-written");
        deliver(pat, &plaintext, issued_at, ctx).await?;
        crash::point("secret-written");
        info!(token_id = %record.token_id, ?reason, "token issued and delivered");
        return Ok(());
    }
    Err(Error::IdCollision(TRIES))
}

/// Writes the plaintext Secret beside the PAT, owned by it (so it is garbage-collected
/// with it even if the operator is gone).
async fn deliver(
    pat: &PersonalAccessToken,
    plaintext: &token::PlaintextToken,
    at: DateTime<Utc>,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = pat.namespace().unwrap_or_default();
    let name = lifecycle::secret_name(pat);
    let owner = OwnerReference {
        api_version: PersonalAccessToken::api_version(&()).into_owned(),
        kind: PersonalAccessToken::kind(&()).into_owned(),
        name: pat.name_any(),
        uid: pat.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (
                    record::COMPONENT_LABEL.to_owned(),
                    DELIVERED_COMPONENT.to_owned(),
                ),
                (
                    record::MANAGED_BY_LABEL.to_owned(),
                    record::MANAGED_BY.to_owned(),
                ),
                (record::PAT_NAME_LABEL.to_owned(), pat.name_any()),
                (
                    record::PAT_UID_LABEL.to_owned(),
                    pat.uid().unwrap_or_default(),
                ),
            ])),
            annotations: Some(BTreeMap::from([
                (TOKEN_ID_ANNOTATION.to_owned(), plaintext.id().to_string()),
                (DELIVERED_AT_ANNOTATION.to_owned(), at.to_rfc3339()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(plaintext.expose_secret().as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await?;
    Ok(())
}

async fn list_records(ctx: &Context, pat_uid: &str) -> Result<Vec<TokenRecord>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let selector = format!("{},{}={pat_uid}", record::selector(), record::PAT_UID_LABEL);
    let mut out = Vec::new();
    for secret in api.list(&ListParams::default().labels(&selector)).await? {
        match TokenRecord::from_secret(&secret) {
            Ok(r) => out.push(r),
            Err(err) => {
                // Unreadable: it can validate nothing, so it goes.
                warn!(error = %err, "deleting unreadable token record");
                delete_if_present(&api, &secret.name_any()).await?;
            }
        }
    }
    Ok(out)
}

async fn delete_record(ctx: &Context, token_id: &str) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    match api
        .delete(
            &TokenRecord::secret_name(token_id),
            &DeleteParams::default(),
        )
        .await
    {
        Ok(_) => info!(token_id, "token record deleted"),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e.into()),
    }
    revoke_credentials(ctx, token_id).await;
    Ok(())
}

/// Revokes the associated credentials minted for a token that just ended. What cannot be
/// revoked now (a database down) is left to the sweep, which finds the lease orphaned.
async fn revoke_credentials(ctx: &Context, token_id: &str) {
    match patrol_credentials::revoke::revoke_token(
        &ctx.client,
        &ctx.admins,
        &ctx.namespace,
        token_id,
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => {
            ctx.metrics.credentials_revoked("token_ended", n);
            info!(token_id, credentials = n, "associated credentials revoked");
        }
        Err(e) => {
            warn!(token_id, error = %e, "cannot revoke associated credentials now; the sweep retries")
        }
    }
}

async fn write_record(ctx: &Context, record: &TokenRecord) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let secret = record.to_secret(&ctx.namespace)?;
    api.patch(
        &TokenRecord::secret_name(&record.token_id),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await?;
    Ok(())
}

fn observe_secret(secret: &PartialObjectMeta<Secret>, pat_uid: &str) -> DeliveredSecret {
    let labels = secret.metadata.labels.as_ref();
    let owned = labels
        .and_then(|l| l.get(record::PAT_UID_LABEL))
        .is_some_and(|u| u == pat_uid)
        && labels
            .and_then(|l| l.get(record::COMPONENT_LABEL))
            .is_some_and(|c| c == DELIVERED_COMPONENT);
    let annotations = secret.metadata.annotations.as_ref();
    DeliveredSecret {
        owned,
        token_id: annotations
            .and_then(|a| a.get(TOKEN_ID_ANNOTATION))
            .cloned(),
        delivered_at: annotations
            .and_then(|a| a.get(DELIVERED_AT_ANNOTATION))
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.to_utc()),
    }
}

/// Server-side applies the status the plan wants, when it differs from what is stored.
async fn write_status(
    pat: &PersonalAccessToken,
    desired: &patrol_api::v1alpha1::PersonalAccessTokenStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let mut current = pat.status.clone().unwrap_or_default();
    current.last_used_at = None;
    if current == *desired {
        return Ok(());
    }
    let api: Api<PersonalAccessToken> =
        Api::namespaced(ctx.client.clone(), &pat.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": PersonalAccessToken::api_version(&()),
        "kind": PersonalAccessToken::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &pat.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    pat: &PersonalAccessToken,
    reason: &str,
    message: &str,
    warning: bool,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(message.to_owned()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &pat.object_ref(&())).await {
        warn!(error = %err, reason, "could not publish event");
    }
}

/// Deletes a Secret; one already gone is what we wanted.
async fn delete_if_present(api: &Api<Secret>, name: &str) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

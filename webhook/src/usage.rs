//! Last use of tokens: written back to `status.lastUsedAt` of the PersonalAccessToken, and
//! read from it when this replica alone cannot tell whether a token went idle.
//!
//! Writes are debounced per token id (at most one per `debounce` per replica, claimed
//! atomically on the index entry) and handed to a background writer through a bounded
//! queue, so validation never waits on the apiserver and a burst of validations is never
//! a burst of writes. A full queue drops the write and releases the claim, so the next use
//! tries again. Each write is a server-side apply of just `status.lastUsedAt` with field
//! manager `patrol-webhook`, with the PAT's uid as a precondition so a PAT deleted and
//! recreated under the same name is never touched by its predecessor's token.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use futures::{StreamExt, future::BoxFuture};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use patrol_api::{record::PatReference, token::TokenId, v1alpha1::PersonalAccessToken};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{index::IndexedRecord, metrics::Metrics};

/// Field manager of everything the webhook writes.
pub const FIELD_MANAGER: &str = "patrol-webhook";

/// One pending `lastUsedAt` update.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageWrite {
    pub token_id: TokenId,
    pub pat: PatReference,
    pub at: DateTime<Utc>,
}

/// Hands debounced `lastUsedAt` updates to the writer.
pub struct UsageRecorder {
    tx: mpsc::Sender<UsageWrite>,
    debounce_secs: i64,
    metrics: Arc<Metrics>,
}

impl UsageRecorder {
    /// A recorder with a queue of `capacity` writes; the receiver goes to [`run_writer`].
    pub fn new(
        capacity: usize,
        debounce: std::time::Duration,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::Receiver<UsageWrite>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let debounce_secs = i64::try_from(debounce.as_secs()).unwrap_or(i64::MAX);
        (
            Self {
                tx,
                debounce_secs,
                metrics,
            },
            rx,
        )
    }

    /// Notes a successful validation of `entry` at `now`.
    pub fn note_use(&self, entry: &IndexedRecord, now: DateTime<Utc>) {
        let now = now.trunc_subsecs(0);
        let Some(previous) = entry.claim_usage_write(now, self.debounce_secs) else {
            return;
        };
        let write = UsageWrite {
            token_id: entry.id.clone(),
            pat: entry.pat(),
            at: now,
        };
        if self.tx.try_send(write).is_err() {
            entry.release_usage_write(previous, now);
            self.metrics.record_last_used_write("dropped");
        }
    }
}

/// What the PAT says about its last use.
#[derive(Debug, Clone, PartialEq)]
pub enum PatActivity {
    /// The PAT exists (with this uid); its `status.lastUsedAt`, if any.
    Exists { last_used_at: Option<DateTime<Utc>> },
    /// No PAT with that name and uid: the token's owner object is gone.
    Gone,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("reading PersonalAccessToken {namespace}/{name}: {source}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Reads a PAT's recorded activity. A trait so the validation core is testable without
/// an apiserver.
pub trait PatActivitySource: Send + Sync {
    fn activity<'a>(
        &'a self,
        pat: &'a PatReference,
    ) -> BoxFuture<'a, Result<PatActivity, UsageError>>;
}

/// [`PatActivitySource`] backed by the apiserver.
pub struct KubePatActivity {
    client: Client,
}

impl KubePatActivity {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl PatActivitySource for KubePatActivity {
    fn activity<'a>(
        &'a self,
        pat: &'a PatReference,
    ) -> BoxFuture<'a, Result<PatActivity, UsageError>> {
        Box::pin(async move {
            let api: Api<PersonalAccessToken> =
                Api::namespaced(self.client.clone(), &pat.namespace);
            let found = api
                .get_opt(&pat.name)
                .await
                .map_err(|source| UsageError::Read {
                    namespace: pat.namespace.clone(),
                    name: pat.name.clone(),
                    source,
                })?;
            Ok(match found {
                Some(obj) if obj.metadata.uid.as_deref() == Some(pat.uid.as_str()) => {
                    PatActivity::Exists {
                        last_used_at: obj
                            .status
                            .and_then(|s| s.last_used_at)
                            .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0)),
                    }
                }
                _ => PatActivity::Gone,
            })
        })
    }
}

/// The apply patch that sets only `status.lastUsedAt`.
pub fn last_used_patch(write: &UsageWrite) -> serde_json::Value {
    json!({
        "apiVersion": "patrol.dev/v1alpha1",
        "kind": "PersonalAccessToken",
        "metadata": {"name": write.pat.name, "namespace": write.pat.namespace, "uid": write.pat.uid},
        "status": {"lastUsedAt": write.at.to_rfc3339_opts(SecondsFormat::Secs, true)},
    })
}

/// Applies queued writes, a few at a time, until the recorder is dropped.
pub async fn run_writer(client: Client, rx: mpsc::Receiver<UsageWrite>, metrics: Arc<Metrics>) {
    let writes =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|w| (w, rx)) });
    writes
        .for_each_concurrent(4, |write| {
            let client = client.clone();
            let metrics = metrics.clone();
            async move {
                let api: Api<PersonalAccessToken> = Api::namespaced(client, &write.pat.namespace);
                let params = PatchParams::apply(FIELD_MANAGER).force();
                match api.patch_status(&write.pat.name, &params, &Patch::Apply(last_used_patch(&write))).await {
                    Ok(_) => {
                        metrics.record_last_used_write("ok");
                        debug!(token_id = %write.token_id, "lastUsedAt written");
                    }
                    // Deleted, or recreated under the same name (uid precondition failed).
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                        metrics.record_last_used_write("gone");
                        debug!(token_id = %write.token_id, code = e.code, "PersonalAccessToken gone; lastUsedAt not written");
                    }
                    Err(e) => {
                        metrics.record_last_used_write("error");
                        warn!(token_id = %write.token_id, pat = %format!("{}/{}", write.pat.namespace, write.pat.name),
                            error = %e, "writing lastUsedAt failed");
                    }
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::record;

    #[test]
    fn uses_are_debounced_and_queued() {
        let metrics = Arc::new(Metrics::default());
        let (recorder, mut rx) = UsageRecorder::new(8, std::time::Duration::from_secs(60), metrics);
        let entry = IndexedRecord::new(
            TokenId::parse("AAAAAAAAAAAA").unwrap(),
            record("AAAAAAAAAAAA", "h"),
            "s",
        );
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00.750Z")
            .unwrap()
            .to_utc();
        recorder.note_use(&entry, t0);
        recorder.note_use(&entry, t0 + chrono::Duration::seconds(30));
        recorder.note_use(&entry, t0 + chrono::Duration::seconds(61));
        let first = rx.try_recv().unwrap();
        assert_eq!(
            first.at,
            t0.trunc_subsecs(0),
            "written with second precision"
        );
        assert_eq!(first.pat.name, "laptop");
        assert_eq!(
            rx.try_recv().unwrap().at,
            (t0 + chrono::Duration::seconds(61)).trunc_subsecs(0)
        );
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_drops_the_write_and_retries_on_the_next_use() {
        let metrics = Arc::new(Metrics::default());
        let (recorder, mut rx) =
            UsageRecorder::new(1, std::time::Duration::from_secs(60), metrics.clone());
        let a = IndexedRecord::new(
            TokenId::parse("AAAAAAAAAAAA").unwrap(),
            record("AAAAAAAAAAAA", "h"),
            "s",
        );
        let b = IndexedRecord::new(
            TokenId::parse("BBBBBBBBBBBB").unwrap(),
            record("BBBBBBBBBBBB", "h"),
            "s",
        );
        let now = Utc::now();
        recorder.note_use(&a, now);
        recorder.note_use(&b, now); // queue full: dropped, claim released
        assert!(b.last_used().is_none());
        assert!(
            metrics
                .encode()
                .unwrap()
                .contains("patrol_webhook_last_used_writes_total{result=\"dropped\"} 1")
        );
        rx.try_recv().unwrap();
        recorder.note_use(&b, now);
        assert_eq!(rx.try_recv().unwrap().token_id.as_str(), "BBBBBBBBBBBB");
    }

    #[test]
    fn the_patch_names_only_last_used_and_pins_the_uid() {
        let write = UsageWrite {
            token_id: TokenId::parse("AAAAAAAAAAAA").unwrap(),
            pat: PatReference {
                namespace: "ns".into(),
                name: "laptop".into(),
                uid: "u-1".into(),
            },
            at: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .unwrap()
                .to_utc(),
        };
        assert_eq!(
            last_used_patch(&write),
            json!({
                "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
                "metadata": {"name": "laptop", "namespace": "ns", "uid": "u-1"},
                "status": {"lastUsedAt": "2026-01-01T00:00:00Z"},
            })
        );
    }
}

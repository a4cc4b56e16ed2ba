//! The operator against a real kube-apiserver: issue, deliver, expire, revoke, rotate,
//! delete, policy clamping, crash recovery at every write, leader failover.

// Test fixtures fail loudly on impossible input.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use patrol_api::{
    token::{self, TokenHasher},
    v1alpha1::{PersonalAccessToken, Phase, TokenPolicy},
};
use patrol_e2e::{
    TestCluster, TestNamespace, eventually,
    operator::{Operator, OperatorOptions, delivered_token, records_for, wait_for_phase},
};
use serde_json::{Value, json};

const ACTIVE_WITHIN: Duration = Duration::from_secs(20);

struct Setup {
    cluster: &'static TestCluster,
    ns: TestNamespace,
    records: TestNamespace,
    pats: Api<PersonalAccessToken>,
    secrets: Api<Secret>,
}

async fn setup(prefix: &str) -> Result<Setup> {
    let cluster = TestCluster::shared()?;
    cluster.install_crds().await?;
    let ns = TestNamespace::create(cluster, prefix).await?;
    let records = TestNamespace::create(cluster, &format!("{prefix}-rec")).await?;
    let client = cluster.client().await?;
    Ok(Setup {
        cluster,
        pats: Api::namespaced(client.clone(), &ns.name),
        secrets: Api::namespaced(client, &ns.name),
        ns,
        records,
    })
}

fn pat(name: &str, spec: Value) -> PersonalAccessToken {
    let mut spec = spec;
    if spec.get("owner").is_none() {
        spec["owner"] = json!({"username": "alice", "groups": ["dev"]});
    }
    serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("valid PAT")
}

fn condition<'a>(
    pat: &'a PersonalAccessToken,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    pat.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

#[tokio::test]
async fn issues_a_token_that_verifies_and_never_leaks() -> Result<()> {
    let s = setup("issue").await?;
    let op = Operator::start(s.cluster, &s.ns, &s.records, OperatorOptions::default())?;
    s.pats
        .create(&PostParams::default(), &pat("laptop", json!({"displayName": "Laptop", "scopes": ["read:pods"], "expiration": {"ttl": "90d"}})))
        .await?;
    let started = Instant::now();
    let active = wait_for_phase(&s.pats, "laptop", Phase::Active, ACTIVE_WITHIN).await?;
    println!("Pending -> Active in {:?}", started.elapsed());
    let status = active.status.clone().unwrap_or_default();

    let plaintext = eventually(Duration::from_secs(5), || async {
        delivered_token(s.cluster, &s.ns.name, "laptop-token")
            .await?
            .ok_or_else(|| anyhow::anyhow!("no Secret yet"))
    })
    .await?;
    let parsed = token::parse(&plaintext)?;
    assert_eq!(Some(parsed.id().as_str()), status.token_id.as_deref());
    assert_eq!(status.hint.as_deref(), Some(parsed.hint().as_str()));
    assert_eq!(
        status.secret_ref.as_ref().map(|r| r.name.as_str()),
        Some("laptop-token")
    );
    let expires = status
        .expires_at
        .as_ref()
        .map(patrol_api::time::from_k8s)
        .expect("expiresAt");
    let issued = status
        .issued_at
        .as_ref()
        .map(patrol_api::time::from_k8s)
        .expect("issuedAt");
    assert_eq!(expires - issued, chrono::Duration::days(90));

    let records = records_for(
        s.cluster,
        &op.records_namespace,
        &active.uid().unwrap_or_default(),
    )
    .await?;
    assert_eq!(records.len(), 1, "exactly one record");
    let record = &records[0];
    assert!(
        TokenHasher::default().verify(&parsed, &record.hash),
        "delivered token verifies against the record"
    );
    assert_ne!(record.hash, plaintext);
    assert!(
        record.hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{}",
        record.hash
    );
    assert_eq!(record.scopes, vec!["read:pods".to_owned()]);
    assert_eq!(record.owner.username, "alice");

    for (type_, want) in [
        ("Ready", "True"),
        ("Delivered", "True"),
        ("PolicyCompliant", "True"),
        ("ExpiringSoon", "False"),
    ] {
        assert_eq!(
            condition(&active, type_).map(|c| c.status.as_str()),
            Some(want),
            "{type_}: {:?}",
            condition(&active, type_)
        );
    }
    // Nothing secret in status, events or logs.
    let status_json = serde_json::to_string(&active.status)?;
    assert!(!status_json.contains(parsed.expose_secret()) && !status_json.contains(&record.hash));
    let events = s
        .cluster
        .kubectl_ok(&["get", "events", "-n", &s.ns.name, "-o", "json"])?;
    assert!(events.contains("Issued"), "an Issued event: {events}");
    assert!(!events.contains(&plaintext) && !events.contains(&record.hash));
    let log = op.process.output();
    let secret_part = &plaintext[20..];
    assert!(
        !log.contains(secret_part) && !log.contains(&record.hash),
        "operator log leaks the token"
    );
    let metrics = op.metrics().await?;
    assert!(!metrics.contains(secret_part));
    assert!(
        metrics.contains("patrol_operator_tokens{phase=\"Active\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn one_time_secret_goes_after_reveal_window_or_acknowledgement() -> Result<()> {
    let s = setup("reveal").await?;
    let _op = Operator::start(s.cluster, &s.ns, &s.records, OperatorOptions::default())?;
    s.pats
        .create(
            &PostParams::default(),
            &pat(
                "window",
                json!({"displayName": "w", "secret": {"revealWindow": "3s"}}),
            ),
        )
        .await?;
    s.pats
        .create(
            &PostParams::default(),
            &pat(
                "acked",
                json!({"displayName": "a", "secret": {"revealWindow": "1h"}}),
            ),
        )
        .await?;
    let window = wait_for_phase(&s.pats, "window", Phase::Active, ACTIVE_WITHIN).await?;
    let acked = wait_for_phase(&s.pats, "acked", Phase::Active, ACTIVE_WITHIN).await?;
    assert!(s.secrets.get_opt("window-token").await?.is_some());

    // Acknowledge with the token id: the Secret goes now.
    let id = acked.status.and_then(|st| st.token_id).expect("token id");
    let ack = json!({"metadata": {"annotations": {"patrol.dev/acknowledged": id}}});
    s.pats
        .patch("acked", &PatchParams::default(), &Patch::Merge(&ack))
        .await?;
    eventually(Duration::from_secs(10), || async {
        ensure!(
            s.secrets.get_opt("acked-token").await?.is_none(),
            "acked-token still there"
        );
        Ok(())
    })
    .await?;

    // The reveal window ends: the Secret goes, the token stays valid.
    eventually(Duration::from_secs(15), || async {
        ensure!(
            s.secrets.get_opt("window-token").await?.is_none(),
            "window-token still there"
        );
        Ok(())
    })
    .await?;
    let after = eventually(Duration::from_secs(5), || async {
        let p = s.pats.get("window").await?;
        ensure!(
            condition(&p, "Delivered").is_some_and(|c| c.reason == "Revealed"),
            "Delivered not Revealed yet"
        );
        Ok(p)
    })
    .await?;
    assert_eq!(
        after.status.as_ref().and_then(|st| st.phase),
        Some(Phase::Active)
    );
    assert_eq!(
        records_for(
            s.cluster,
            &s.records.name,
            &window.uid().unwrap_or_default()
        )
        .await?
        .len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn expiry_revocation_and_deletion_remove_the_record() -> Result<()> {
    let s = setup("end").await?;
    let _op = Operator::start(s.cluster, &s.ns, &s.records, OperatorOptions::default())?;
    for name in ["expiring", "revoked", "deleted"] {
        let ttl = if name == "expiring" { "4s" } else { "1h" };
        s.pats
            .create(&PostParams::default(), &pat(name, json!({"displayName": name, "expiration": {"ttl": ttl}, "secret": {"retention": "Persistent"}})))
            .await?;
    }
    let mut uids = std::collections::BTreeMap::new();
    for name in ["expiring", "revoked", "deleted"] {
        let p = wait_for_phase(&s.pats, name, Phase::Active, ACTIVE_WITHIN).await?;
        uids.insert(name, p.uid().unwrap_or_default());
    }

    // Revoke: record gone at once.
    let started = Instant::now();
    s.pats
        .patch(
            "revoked",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"revoked": true}})),
        )
        .await?;
    eventually(Duration::from_secs(10), || async {
        ensure!(
            records_for(s.cluster, &s.records.name, &uids["revoked"])
                .await?
                .is_empty(),
            "record still there"
        );
        Ok(())
    })
    .await?;
    println!("revoke -> record removed in {:?}", started.elapsed());
    wait_for_phase(&s.pats, "revoked", Phase::Revoked, Duration::from_secs(5)).await?;
    assert!(
        s.secrets.get_opt("revoked-token").await?.is_none(),
        "revoked token's Secret removed"
    );

    // Delete: the finalizer removes record and Secret, then the PAT goes.
    s.pats.delete("deleted", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(10), || async {
        ensure!(
            s.pats.get_opt("deleted").await?.is_none(),
            "PAT still there"
        );
        Ok(())
    })
    .await?;
    assert!(
        records_for(s.cluster, &s.records.name, &uids["deleted"])
            .await?
            .is_empty()
    );

    // Expire: phase Expired, record and Secret gone.
    let expired =
        wait_for_phase(&s.pats, "expiring", Phase::Expired, Duration::from_secs(15)).await?;
    assert!(
        records_for(s.cluster, &s.records.name, &uids["expiring"])
            .await?
            .is_empty()
    );
    assert!(s.secrets.get_opt("expiring-token").await?.is_none());
    assert_eq!(
        condition(&expired, "Ready").map(|c| c.reason.as_str()),
        Some("Expired")
    );
    Ok(())
}

#[tokio::test]
async fn rotation_keeps_the_old_token_for_the_grace_period() -> Result<()> {
    let s = setup("rotate").await?;
    let _op = Operator::start(s.cluster, &s.ns, &s.records, OperatorOptions::default())?;
    s.pats
        .create(
            &PostParams::default(),
            &pat("ci", json!({"displayName": "ci", "secret": {"retention": "Persistent"}, "rotation": {"gracePeriod": "6s"}})),
        )
        .await?;
    let first = wait_for_phase(&s.pats, "ci", Phase::Active, ACTIVE_WITHIN).await?;
    let uid = first.uid().unwrap_or_default();
    let old_id = first
        .status
        .as_ref()
        .and_then(|st| st.token_id.clone())
        .expect("id");
    let old_token = delivered_token(s.cluster, &s.ns.name, "ci-token")
        .await?
        .expect("token");

    s.pats
        .patch(
            "ci",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"rotation": {"requestedAt": "2026-11-28T05:00:00Z"}}})),
        )
        .await?;
    let rotated = eventually(ACTIVE_WITHIN, || async {
        let p = s.pats.get("ci").await?;
        let st = p.status.clone().unwrap_or_default();
        ensure!(
            st.token_id.as_deref() != Some(old_id.as_str()) && st.previous.is_some(),
            "not rotated yet: {st:?}"
        );
        Ok(p)
    })
    .await?;
    let st = rotated.status.clone().unwrap_or_default();
    assert_eq!(
        st.previous.as_ref().map(|p| p.token_id.as_str()),
        Some(old_id.as_str())
    );
    let new_token = delivered_token(s.cluster, &s.ns.name, "ci-token")
        .await?
        .expect("token");
    assert_ne!(new_token, old_token);
    let records = records_for(s.cluster, &s.records.name, &uid).await?;
    assert_eq!(records.len(), 2, "old and new both valid during grace");
    let old_record = records
        .iter()
        .find(|r| r.token_id == old_id)
        .expect("old record");
    assert!(
        old_record.expires_at.is_some(),
        "old record carries its grace end"
    );

    eventually(Duration::from_secs(20), || async {
        let records = records_for(s.cluster, &s.records.name, &uid).await?;
        ensure!(
            records.len() == 1 && records[0].token_id != old_id,
            "old record still there: {}",
            records.len()
        );
        Ok(())
    })
    .await?;
    // The same request again does not rotate again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = s.pats.get("ci").await?;
    assert_eq!(later.status.and_then(|st| st.token_id), st.token_id);
    Ok(())
}

#[tokio::test]
async fn policies_compose_and_clamp() -> Result<()> {
    let s = setup("policy").await?;
    let client = s.cluster.client().await?;
    let label = format!("policy-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &s.ns.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"patrol.dev/e2e-policy": label}}})),
        )
        .await?;
    let policies: Api<TokenPolicy> = Api::all(client);
    let make = |name: &str, spec: Value| -> Result<TokenPolicy> {
        let mut spec = spec;
        spec["namespaceSelector"] = json!({"matchLabels": {"patrol.dev/e2e-policy": label}});
        Ok(serde_json::from_value(
            json!({"apiVersion": "patrol.dev/v1alpha1", "kind": "TokenPolicy", "metadata": {"name": name}, "spec": spec}),
        )?)
    };
    let loose = format!("e2e-loose-{}", std::process::id());
    let strict = format!("e2e-strict-{}", std::process::id());
    policies
        .create(
            &PostParams::default(),
            &make(
                &loose,
                json!({"expiration": {"max": "30d"}, "allowedScopes": ["read:*", "write:*"]}),
            )?,
        )
        .await?;
    policies
        .create(
            &PostParams::default(),
            &make(
                &strict,
                json!({"expiration": {"max": "1h"}, "allowedScopes": ["read:*"]}),
            )?,
        )
        .await?;
    let cleanup = async {
        let _ = policies.delete(&loose, &DeleteParams::default()).await;
        let _ = policies.delete(&strict, &DeleteParams::default()).await;
    };

    let result = async {
        let _op = Operator::start(s.cluster, &s.ns, &s.records, OperatorOptions::default())?;
        // Created as if admission had been bypassed (no webhook here): the operator clamps.
        s.pats
            .create(&PostParams::default(), &pat("wide", json!({"displayName": "wide", "scopes": ["read:pods", "write:pods"], "expiration": {"ttl": "10d"}})))
            .await?;
        let active = wait_for_phase(&s.pats, "wide", Phase::Active, ACTIVE_WITHIN).await?;
        let st = active.status.clone().unwrap_or_default();
        let issued = st.issued_at.as_ref().map(patrol_api::time::from_k8s).expect("issued");
        let expires = st.expires_at.as_ref().map(patrol_api::time::from_k8s).expect("expires");
        assert_eq!(expires - issued, chrono::Duration::hours(1), "strictest max lifetime wins");
        let mut policies_seen = st.policies.clone();
        policies_seen.sort();
        let mut want = vec![loose.clone(), strict.clone()];
        want.sort();
        assert_eq!(policies_seen, want);
        let records = records_for(s.cluster, &s.records.name, &active.uid().unwrap_or_default()).await?;
        assert_eq!(records[0].scopes, vec!["read:pods".to_owned()], "write:pods dropped by the strict policy");
        let compliant = condition(&active, "PolicyCompliant").expect("condition");
        assert_eq!(compliant.status, "False");
        assert!(compliant.message.contains(&strict), "names the policy: {}", compliant.message);
        assert!(compliant.message.contains("write:pods"), "names the scope: {}", compliant.message);
        Ok::<_, anyhow::Error>(())
    }
    .await;
    cleanup.await;
    result
}

/// A crash (process exit, no cleanup) right after each write converges on restart to one
/// delivered token that validates, with no stray record.
#[tokio::test]
async fn crash_after_any_write_converges() -> Result<()> {
    let s = setup("crash").await?;
    for point in ["record-written", "secret-written", "status-written"] {
        let name = format!("crash-{point}");
        let env = vec![("PATROL_TEST_CRASH_AT".to_owned(), point.to_owned())];
        let mut crashing = Operator::start(
            s.cluster,
            &s.ns,
            &s.records,
            OperatorOptions {
                env,
                ..Default::default()
            },
        )?;
        s.pats
            .create(
                &PostParams::default(),
                &pat(
                    &name,
                    json!({"displayName": point, "secret": {"retention": "Persistent"}}),
                ),
            )
            .await?;
        let status = crashing.process.wait_exit(Duration::from_secs(30)).await?;
        assert_eq!(
            status.code(),
            Some(86),
            "{point}: crashed at the injection point"
        );
        drop(crashing);

        let _op = Operator::start(s.cluster, &s.ns, &s.records, OperatorOptions::default())?;
        let active = wait_for_phase(&s.pats, &name, Phase::Active, ACTIVE_WITHIN).await?;
        // Let any follow-up reconcile settle, then check the invariants.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let active = s.pats.get(&name).await.unwrap_or(active);
        let st = active.status.clone().unwrap_or_default();
        let records = records_for(
            s.cluster,
            &s.records.name,
            &active.uid().unwrap_or_default(),
        )
        .await?;
        assert_eq!(
            records.len(),
            1,
            "{point}: one live record, got {}",
            records.len()
        );
        let plaintext = delivered_token(s.cluster, &s.ns.name, &format!("{name}-token"))
            .await?
            .expect("delivered");
        let parsed = token::parse(&plaintext)?;
        assert_eq!(
            Some(parsed.id().as_str()),
            st.token_id.as_deref(),
            "{point}: status names the delivered token"
        );
        assert_eq!(
            records[0].token_id,
            parsed.id().as_str(),
            "{point}: the record is the delivered token's"
        );
        assert!(
            TokenHasher::default().verify(&parsed, &records[0].hash),
            "{point}: delivered token verifies"
        );
        println!("{point}: converged");
    }
    Ok(())
}

#[tokio::test]
async fn leader_failover_within_the_lease_duration() -> Result<()> {
    let s = setup("leader").await?;
    let lease = "patrol-operator".to_owned();
    let options = OperatorOptions {
        lease: Some(lease),
        lease_duration_seconds: Some(4),
        ..Default::default()
    };
    let a = Operator::start(s.cluster, &s.ns, &s.records, options.clone())?;
    let b = Operator::start(s.cluster, &s.ns, &s.records, options)?;
    let leader_is_a = eventually(Duration::from_secs(20), || async {
        match (a.is_leader().await, b.is_leader().await) {
            (true, false) => Ok(true),
            (false, true) => Ok(false),
            other => anyhow::bail!("leaders: {other:?}"),
        }
    })
    .await?;
    s.pats
        .create(
            &PostParams::default(),
            &pat("one", json!({"displayName": "one"})),
        )
        .await?;
    wait_for_phase(&s.pats, "one", Phase::Active, ACTIVE_WITHIN).await?;
    // Exactly one reconciles: the follower has never led.
    let (mut leader, follower) = if leader_is_a { (a, b) } else { (b, a) };
    assert!(!follower.is_leader().await);

    leader.process.kill();
    let killed = Instant::now();
    s.pats
        .create(
            &PostParams::default(),
            &pat("two", json!({"displayName": "two"})),
        )
        .await?;
    wait_for_phase(&s.pats, "two", Phase::Active, Duration::from_secs(30)).await?;
    println!(
        "failover: new leader reconciled {:?} after the old one was killed (lease 4s)",
        killed.elapsed()
    );
    assert!(follower.is_leader().await);
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "took {:?}",
        killed.elapsed()
    );
    Ok(())
}

/// Policy-driven ends: the ExpiringSoon warning (condition + Event) and the idle timeout.
#[tokio::test]
async fn warns_before_expiry_and_expires_idle_tokens() -> Result<()> {
    let s = setup("idle").await?;
    let client = s.cluster.client().await?;
    let label = format!("idle-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &s.ns.name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"patrol.dev/e2e-policy": label}}})),
        )
        .await?;
    let policies: Api<TokenPolicy> = Api::all(client);
    let name = format!("e2e-idle-{}", std::process::id());
    let policy: TokenPolicy = serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenPolicy", "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {"matchLabels": {"patrol.dev/e2e-policy": label}},
            "idleTimeout": "5s",
            "rotation": {"warnBefore": "1h"},
        },
    }))?;
    policies.create(&PostParams::default(), &policy).await?;
    let result = async {
        let _op = Operator::start(s.cluster, &s.ns, &s.records, OperatorOptions::default())?;
        s.pats
            .create(
                &PostParams::default(),
                &pat(
                    "soon",
                    json!({"displayName": "soon", "expiration": {"ttl": "30m"}}),
                ),
            )
            .await?;
        let active = wait_for_phase(&s.pats, "soon", Phase::Active, ACTIVE_WITHIN).await?;
        let uid = active.uid().unwrap_or_default();
        let soon = eventually(Duration::from_secs(5), || async {
            let p = s.pats.get("soon").await?;
            ensure!(
                condition(&p, "ExpiringSoon").is_some_and(|c| c.status == "True"),
                "no ExpiringSoon yet"
            );
            Ok(p)
        })
        .await?;
        assert!(condition(&soon, "ExpiringSoon").is_some_and(|c| c.message.contains("rotate it")));
        let events = s
            .cluster
            .kubectl_ok(&["get", "events", "-n", &s.ns.name, "-o", "json"])?;
        assert!(events.contains("ExpiringSoon"), "a Warning event: {events}");

        // Never used: idle from issue, 5 s later it ends.
        let expired =
            wait_for_phase(&s.pats, "soon", Phase::Expired, Duration::from_secs(20)).await?;
        assert_eq!(
            condition(&expired, "Ready").map(|c| c.reason.as_str()),
            Some("IdleTimeout")
        );
        assert!(
            records_for(s.cluster, &s.records.name, &uid)
                .await?
                .is_empty(),
            "idle token's record removed"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = policies.delete(&name, &DeleteParams::default()).await;
    result
}

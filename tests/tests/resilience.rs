//! Patrol under adverse conditions on a real control plane: the apiserver restarting while
//! tokens are being issued, and a malformed object in the watch. These tests change shared
//! state (the apiserver, the CRD), so they live in their own test binary and run one at a time.

// Test fixtures fail loudly on impossible input.
#![allow(clippy::expect_used)]

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use patrol_api::{
    token::{self, TokenHasher},
    v1alpha1::{PersonalAccessToken, Phase},
};
use patrol_e2e::{
    TestCluster, TestNamespace, eventually,
    operator::{Operator, OperatorOptions, delivered_token, records_for, wait_for_phase},
};
use serde_json::json;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn pat(name: &str) -> PersonalAccessToken {
    serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": name},
        "spec": {"displayName": name, "owner": {"username": "alice"}, "secret": {"retention": "Persistent"}},
    }))
    .expect("valid PAT")
}

#[tokio::test]
async fn apiserver_restart_mid_reconcile_converges() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::shared()?;
    if cluster.env.is_empty() {
        eprintln!("skipped: cannot restart the apiserver of an existing cluster");
        return Ok(());
    }
    cluster.install_crds().await?;
    let ns = TestNamespace::create(cluster, "restart").await?;
    let records = TestNamespace::create(cluster, "restart-rec").await?;
    let op = Operator::start(cluster, &ns, &records, OperatorOptions::default())?;
    let pats: Api<PersonalAccessToken> = Api::namespaced(cluster.client().await?, &ns.name);
    let names: Vec<String> = (0..8).map(|i| format!("busy-{i}")).collect();
    for name in &names {
        pats.create(&PostParams::default(), &pat(name)).await?;
    }
    // Pull the apiserver away while those are being issued.
    let t = std::time::Instant::now();
    cluster.restart_apiserver(2)?;
    println!("apiserver restarted in {:?}", t.elapsed());

    let pats: Api<PersonalAccessToken> = Api::namespaced(cluster.client().await?, &ns.name);
    for name in &names {
        let active = wait_for_phase(&pats, name, Phase::Active, Duration::from_secs(60)).await?;
        let uid = active.uid().unwrap_or_default();
        let plaintext = delivered_token(cluster, &ns.name, &format!("{name}-token"))
            .await?
            .expect("delivered");
        let parsed = token::parse(&plaintext)?;
        let recs = eventually(Duration::from_secs(10), || async {
            let recs = records_for(cluster, &records.name, &uid).await?;
            ensure!(recs.len() == 1, "{name}: {} records", recs.len());
            Ok(recs)
        })
        .await?;
        assert_eq!(recs[0].token_id, parsed.id().as_str(), "{name}");
        assert!(
            TokenHasher::default().verify(&parsed, &recs[0].hash),
            "{name}: delivered token verifies"
        );
        println!("{name} converged at {:?}", t.elapsed());
    }
    let mut op = op;
    assert!(
        op.process.running(),
        "the operator survived the apiserver restart"
    );
    Ok(())
}

/// One object the types cannot read (stored under an older, looser schema) is reported and
/// skipped; every other token keeps working.
#[tokio::test]
async fn a_malformed_object_does_not_stall_the_watch() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = TestCluster::shared()?;
    cluster.install_crds().await?;
    let client = cluster.client().await?;
    let ns = TestNamespace::create(cluster, "malformed").await?;
    let records = TestNamespace::create(cluster, "malformed-rec").await?;

    // Loosen the schema (as an older CRD version might have been), store a bad object,
    // then put the real schema back.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = "personalaccesstokens.patrol.dev";
    let path = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/secret/properties/retention/enum";
    crds.patch(
        crd_name,
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(
            json!([{"op": "remove", "path": path}]),
        )?),
    )
    .await?;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("patrol.dev", "v1alpha1", "PersonalAccessToken"),
        "personalaccesstokens",
    );
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &resource);
    let bad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken", "metadata": {"name": "bad"},
        "spec": {"displayName": "bad", "owner": {"username": "alice"}, "secret": {"retention": "Forever"}},
    }))?;
    let created = eventually(Duration::from_secs(10), || async {
        Ok(dynamic.create(&PostParams::default(), &bad).await?)
    })
    .await;
    cluster.install_crds().await?;
    created?;

    let _op = Operator::start(cluster, &ns, &records, OperatorOptions::default())?;
    let pats: Api<PersonalAccessToken> = Api::namespaced(client, &ns.name);
    pats.create(&PostParams::default(), &pat("good")).await?;
    wait_for_phase(&pats, "good", Phase::Active, Duration::from_secs(20)).await?;
    let log = eventually(Duration::from_secs(5), || async {
        let log = _op.process.output();
        ensure!(
            log.contains("skipping malformed PersonalAccessToken"),
            "not logged yet"
        );
        Ok(log)
    })
    .await?;
    assert!(log.contains("bad"), "the log names the object");
    Ok(())
}

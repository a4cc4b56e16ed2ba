//! Scale benchmark: 1,000 PersonalAccessTokens created at once against the real control
//! plane; reports time until all are Active, throughput, and the operator's peak RSS.
//!
//! `make bench-operator` (or `cargo bench -p patrol-e2e --bench operator_scale`).
//! PATROL_BENCH_PATS overrides the count.

// Test fixtures fail loudly on impossible input.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::Result;
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use patrol_api::v1alpha1::{PersonalAccessToken, Phase};
use patrol_e2e::{
    TestCluster, TestNamespace,
    operator::{Operator, OperatorOptions},
    process::peak_rss_kib,
};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<()> {
    let count: usize = std::env::var("PATROL_BENCH_PATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let cluster = TestCluster::shared()?;
    cluster.install_crds().await?;
    let ns = TestNamespace::create(cluster, "bench").await?;
    let records = TestNamespace::create(cluster, "bench-rec").await?;
    let args = std::env::var("PATROL_BENCH_OPERATOR_ARGS")
        .map(|a| a.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let op = Operator::start(
        cluster,
        &ns,
        &records,
        OperatorOptions {
            release: true,
            args,
            ..Default::default()
        },
    )?;
    let idle_rss = {
        tokio::time::sleep(Duration::from_secs(2)).await;
        peak_rss_kib(op.process.id()).unwrap_or_default()
    };
    let pats: Api<PersonalAccessToken> = Api::namespaced(cluster.client().await?, &ns.name);

    let started = Instant::now();
    let mut creates = futures::stream::iter(0..count)
        .map(|i| {
            let pats = pats.clone();
            async move {
                let pat: PersonalAccessToken = serde_json::from_value(json!({
                    "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
                    "metadata": {"name": format!("pat-{i:05}")},
                    "spec": {"displayName": format!("bench {i}"), "owner": {"username": "bench"}, "expiration": {"ttl": "30d"}},
                }))?;
                pats.create(&PostParams::default(), &pat).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(16);
    while let Some(r) = futures::StreamExt::next(&mut creates).await {
        r?;
    }
    let created = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(900);
    let mut last = 0;
    loop {
        let list = pats.list(&ListParams::default()).await?;
        let active = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active))
            .count();
        if active != last {
            last = active;
        }
        if active == count {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {active}/{count} Active after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_active = started.elapsed();
    let peak = peak_rss_kib(op.process.id()).unwrap_or_default();
    println!("operator scale benchmark (release build, argon2id m=19456 t=2 p=1, concurrency 8)");
    println!("  PATs:                     {count}");
    println!("  created in:               {:.1} s", created.as_secs_f64());
    println!(
        "  all Active after:         {:.1} s",
        all_active.as_secs_f64()
    );
    println!(
        "  throughput:               {:.1} PATs/s",
        count as f64 / all_active.as_secs_f64()
    );
    println!(
        "  operator RSS idle/peak:   {:.1} MiB / {:.1} MiB",
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}

use futures::StreamExt as _;

//! Revocation reaches every token-service replica without coordination: two patrol-webhook
//! processes and the real operator on the real apiserver; a PAT accepted (and cached) by
//! both is revoked, or deleted, and both refuse it shortly after. The time until the second
//! replica refuses is printed; `make bench` measures the distribution.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use patrol_api::v1alpha1::{PersonalAccessToken, Phase};
use patrol_e2e::{
    TestCluster, TestNamespace,
    load::{HttpsClient, https_client},
    operator::{Operator, OperatorOptions, delivered_token, wait_for_phase},
    process::{self, Process},
};
use serde_json::json;

/// Generous: propagation takes about 100 ms here (docs/benchmarks.md); this only catches
/// a replica that never hears of the revocation.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);

struct Replica {
    process: Process,
    url: String,
}

fn start_replica(cluster: &TestCluster, records: &str, name: &str) -> Result<Replica> {
    let port = process::free_port()?;
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--namespace",
        records,
        "--shutdown-grace",
        "1s",
        "--tls-cert",
        cluster.var("PATROL_WEBHOOK_CERT")?,
        "--tls-key",
        cluster.var("PATROL_WEBHOOK_KEY")?,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let process = Process::spawn(
        cluster,
        name,
        &process::binary("patrol-webhook")?,
        &args,
        &[],
    )?;
    Ok(Replica {
        process,
        url: format!("https://127.0.0.1:{port}"),
    })
}

/// Whether `replica` authenticates `token` now.
async fn accepts(client: &HttpsClient, replica: &Replica, token: &str) -> Result<bool> {
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    let request = Request::post(format!("{}/authenticate", replica.url))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await??;
    let status = response.status();
    let answer: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
    ensure!(
        status == StatusCode::OK,
        "TokenReview answered {status}: {answer}"
    );
    Ok(answer["status"]["authenticated"] == true)
}

async fn wait_ready(client: &HttpsClient, replica: &mut Replica) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request =
            Request::get(format!("{}/readyz", replica.url)).body(Full::new(Bytes::new()))?;
        if let Ok(r) = client.request(request).await
            && r.status() == StatusCode::OK
        {
            return Ok(());
        }
        ensure!(
            replica.process.running(),
            "patrol-webhook exited:\n{}",
            replica.process.output()
        );
        ensure!(
            Instant::now() < deadline,
            "patrol-webhook not ready after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a PAT through the operator and waits until both replicas accept its token.
async fn issue(
    cluster: &TestCluster,
    pats: &Api<PersonalAccessToken>,
    ns: &str,
    name: &str,
    client: &HttpsClient,
    replicas: &[Replica],
) -> Result<String> {
    let pat: PersonalAccessToken = serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": name},
        "spec": {"displayName": format!("revocation {name}"), "owner": {"username": "carol"}, "expiration": {"ttl": "1d"}},
    }))?;
    pats.create(&PostParams::default(), &pat).await?;
    let pat = wait_for_phase(pats, name, Phase::Active, Duration::from_secs(60)).await?;
    let secret = pat
        .status
        .and_then(|s| s.secret_ref)
        .map(|r| r.name)
        .context("secretRef")?;
    let token = delivered_token(cluster, ns, &secret)
        .await?
        .context("no delivered token")?;
    for replica in replicas {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !accepts(client, replica, &token).await? {
            ensure!(
                Instant::now() < deadline,
                "{} never accepted {name}",
                replica.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Accepted twice: the second answer comes from the replica's cache.
        ensure!(accepts(client, replica, &token).await?, "{name} not cached");
    }
    Ok(token)
}

/// Polls every replica until each refuses `token`; returns when the last one did.
async fn until_all_refuse(
    client: &HttpsClient,
    replicas: &[Replica],
    token: &str,
    since: Instant,
) -> Result<Duration> {
    let mut refused = vec![None; replicas.len()];
    while refused.iter().any(Option::is_none) {
        for (i, replica) in replicas.iter().enumerate() {
            if refused[i].is_none() && !accepts(client, replica, token).await? {
                refused[i] = Some(since.elapsed());
            }
        }
        if since.elapsed() > PROPAGATION_LIMIT {
            bail!("not every replica refused the token within {PROPAGATION_LIMIT:?}: {refused:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(refused.into_iter().flatten().max().unwrap_or_default())
}

#[tokio::test]
async fn revoking_or_deleting_a_pat_reaches_every_replica() -> Result<()> {
    let cluster = TestCluster::shared()?;
    cluster.install_crds().await?;
    let ns = TestNamespace::create(cluster, "revocation").await?;
    let records = TestNamespace::create(cluster, "revocation-rec").await?;
    let _operator = Operator::start(cluster, &ns, &records, OperatorOptions::default())?;
    let client = https_client(std::path::Path::new(cluster.var("PATROL_CA")?), None, 4)?;
    let mut replicas = vec![
        start_replica(cluster, &records.name, "webhook-a")?,
        start_replica(cluster, &records.name, "webhook-b")?,
    ];
    for replica in &mut replicas {
        wait_ready(&client, replica).await?;
    }
    let pats: Api<PersonalAccessToken> = Api::namespaced(cluster.client().await?, &ns.name);

    let revoked = issue(cluster, &pats, &ns.name, "revoked", &client, &replicas).await?;
    let deleted = issue(cluster, &pats, &ns.name, "deleted", &client, &replicas).await?;
    let untouched = issue(cluster, &pats, &ns.name, "untouched", &client, &replicas).await?;

    let started = Instant::now();
    pats.patch(
        "revoked",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"revoked": true}})),
    )
    .await?;
    let by_revoke = until_all_refuse(&client, &replicas, &revoked, started).await?;

    let started = Instant::now();
    pats.delete("deleted", &DeleteParams::default()).await?;
    let by_delete = until_all_refuse(&client, &replicas, &deleted, started).await?;
    println!("both replicas refused: {by_revoke:?} after spec.revoked, {by_delete:?} after delete");

    // Only the revoked tokens stopped.
    for replica in &replicas {
        assert!(
            accepts(&client, replica, &untouched).await?,
            "{} dropped an unrelated token",
            replica.url
        );
    }
    for replica in &replicas {
        let log = replica.process.output();
        for token in [&revoked, &deleted, &untouched] {
            assert!(
                !log.contains(token.as_str()),
                "a token reached {}'s log",
                replica.url
            );
        }
    }
    Ok(())
}

//! `kubectl-pat` with the real kubectl of the cluster build: a kubeconfig that
//! `kubectl pat kubeconfig` wrote, whose user runs `kubectl pat credential`, against the
//! real apiserver (its JWT authenticator trusting Patrol's issuer) and patrol-webhook.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use patrol_api::v1alpha1::TokenOwner;
use patrol_e2e::{
    eventually, process,
    token_service::{KUBE_AUDIENCE, TokenService, jwt_claims, stderr},
};
use serde_json::Value;

const EXCHANGES: &str = "patrol_webhook_http_requests_total{route=\"/oauth2/token\",code=\"200\"}";
const AUTHENTICATIONS: &str = "patrol_webhook_http_requests_total{route=\"/authenticate\"";
/// JWT lifetime for this test: the plugin uses a cached JWT until 30 s before it expires,
/// so a 45 s JWT is served from the cache for 15 s.
const JWT_TTL: &str = "45s";

fn kubectl(service: &TokenService, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    let bin = Path::new(service.cluster.var("PATROL_BIN")?).join("kubectl");
    Ok(Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()?)
}

/// The one cached JWT (the cache directory holds exactly one entry).
fn cached(dir: &Path) -> Result<(PathBuf, Value)> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir.join("credentials"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    ensure!(entries.len() == 1, "cache entries: {entries:?}");
    let path = entries[0].clone();
    let entry: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    Ok((path, entry))
}

#[tokio::test]
async fn kubectl_runs_on_exchanged_jwts_and_the_pat_never_leaves() -> Result<()> {
    let mut service =
        TokenService::start("cli", &[&format!("--max-exchanged-token-ttl={JWT_TTL}")]).await?;
    let ns = service.pats.name.clone();
    let user = format!("cli-{}", std::process::id());
    service.cluster.kubectl_ok(&[
        "create",
        "rolebinding",
        "cli-view",
        "--clusterrole=view",
        "--user",
        &user,
        "-n",
        &ns,
    ])?;
    let owner = TokenOwner {
        username: user.clone(),
        uid: None,
        groups: vec![],
    };
    let pat = service.issue("laptop", owner, &[], None).await?;
    service.wait_indexed(pat).await?;

    let dir = std::env::temp_dir().join(format!("patrol-e2e-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("pat");
    std::fs::write(&token_file, format!("{}\n", service.token(pat)))?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    let cache_dir = dir.join("cache");

    // The kubeconfig, written by the CLI itself.
    let plugin = process::binary("kubectl-pat")?;
    let ca = service.cluster.var("PATROL_CA")?.to_owned();
    let printed = Command::new(&plugin)
        .args([
            "kubeconfig",
            "--issuer",
            &service.issuer,
            "--certificate-authority",
            &ca,
        ])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--cache-dir")
        .arg(&cache_dir)
        .args([
            "--audience",
            KUBE_AUDIENCE,
            "--server-certificate-authority",
            &ca,
        ])
        .arg(format!(
            "--server=https://127.0.0.1:{}",
            service.cluster.var("PATROL_APISERVER_PORT")?
        ))
        .arg("--command")
        .arg(&plugin)
        .output()?;
    ensure!(
        printed.status.success(),
        "kubectl-pat kubeconfig: {}",
        stderr(&printed)
    );
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, &printed.stdout)?;

    // kubectl works as the owner, on a JWT (the apiserver's JWT authenticator, not a
    // TokenReview of the PAT at Patrol).
    let reviews_before = service.metric(AUTHENTICATIONS).await?;
    let whoami: Value = eventually(Duration::from_secs(30), || async {
        let out = kubectl(&service, &kubeconfig, &["auth", "whoami", "-o", "json"])?;
        ensure!(
            out.status.success(),
            "kubectl auth whoami: {}",
            stderr(&out)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    })
    .await?;
    assert_eq!(
        whoami["status"]["userInfo"]["username"],
        user.as_str(),
        "{whoami}"
    );
    let out = kubectl(&service, &kubeconfig, &["get", "pods", "-n", &ns])?;
    ensure!(out.status.success(), "kubectl get pods: {}", stderr(&out));
    assert_eq!(
        service.metric(AUTHENTICATIONS).await?,
        reviews_before,
        "the PAT never went to the apiserver"
    );

    // The cache: one 0600 entry in a 0700 directory, holding the JWT and not the PAT.
    let (entry_path, entry) = cached(&cache_dir)?;
    let mode = |p: &Path| -> Result<u32> { Ok(std::fs::metadata(p)?.permissions().mode() & 0o777) };
    assert_eq!(mode(&entry_path)?, 0o600);
    assert_eq!(mode(entry_path.parent().context("dir")?)?, 0o700);
    let text = std::fs::read_to_string(&entry_path)?;
    assert!(
        !text.contains(service.token(pat)),
        "the cache holds the PAT"
    );
    let first_jwt = entry["accessToken"]
        .as_str()
        .context("no accessToken")?
        .to_owned();
    assert_eq!(jwt_claims(&first_jwt)?["sub"], user.as_str());

    // Warm: more kubectl calls, no more exchanges; each invocation's cost measured.
    let exchanges = service.metric(EXCHANGES).await?;
    let started = Instant::now();
    for _ in 0..5 {
        let out = kubectl(&service, &kubeconfig, &["get", "pods", "-n", &ns])?;
        ensure!(out.status.success(), "kubectl get pods: {}", stderr(&out));
    }
    println!("5 warm kubectl calls in {:?}", started.elapsed());
    assert_eq!(
        service.metric(EXCHANGES).await?,
        exchanges,
        "served from the cache"
    );

    // Near expiry the plugin exchanges again, transparently.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let out = kubectl(&service, &kubeconfig, &["get", "pods", "-n", &ns])?;
    ensure!(
        out.status.success(),
        "kubectl after refresh: {}",
        stderr(&out)
    );
    let (_, entry) = cached(&cache_dir)?;
    assert_ne!(
        entry["accessToken"].as_str(),
        Some(first_jwt.as_str()),
        "a new JWT"
    );
    assert_eq!(service.metric(EXCHANGES).await?, exchanges + 1.0);

    // Revoked: the next refresh fails with words that say what to do, and a non-zero exit.
    service.delete_record(pat).await?;
    tokio::time::sleep(Duration::from_secs(16)).await;
    let failure = eventually(Duration::from_secs(20), || async {
        let out = kubectl(&service, &kubeconfig, &["get", "pods", "-n", &ns])?;
        ensure!(
            !out.status.success(),
            "kubectl still works after revocation"
        );
        Ok(stderr(&out))
    })
    .await?;
    assert!(
        failure.contains("kubectl-pat: Patrol refused the PAT (invalid_grant"),
        "{failure}"
    );
    assert!(failure.contains("get a new one"), "{failure}");
    assert!(
        !failure.contains(service.token(pat)),
        "the error quotes the PAT"
    );
    println!("after revocation: {failure}");
    ensure!(
        !std::fs::read_dir(cache_dir.join("credentials"))?
            .any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))),
        "the refused entry is forgotten"
    );

    // The exec plugin alone, as a script would run it: exit code and message.
    let direct = Command::new(&plugin)
        .args([
            "credential",
            "--issuer",
            &service.issuer,
            "--certificate-authority",
            &ca,
        ])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--no-cache"])
        .output()?;
    assert_eq!(direct.status.code(), Some(1));
    assert!(
        stderr(&direct).contains("revoked, expired"),
        "{}",
        stderr(&direct)
    );

    service.assert_logs_clean(&[])?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

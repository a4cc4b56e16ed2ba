//! `kubectl-pat` with the real kubectl of the cluster build: a kubeconfig that
//! `kubectl pat kubeconfig` wrote, whose user runs `kubectl pat credential`, against the
//! real apiserver (its JWT authenticator trusting Patrol's issuer) and patrol-webhook.

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use patrol_e2e::{
    cli::{PluginUser, mode, run_plugin},
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
    service.cluster.kubectl_with(kubeconfig, args)
}

#[tokio::test]
async fn kubectl_runs_on_exchanged_jwts_and_the_pat_never_leaves() -> Result<()> {
    let mut service =
        TokenService::start("cli", &[&format!("--max-exchanged-token-ttl={JWT_TTL}")]).await?;
    let ns = service.pats.name.clone();
    let bind = [
        "create",
        "rolebinding",
        "cli-view",
        "--clusterrole=view",
        "-n",
        &ns,
    ];
    let alice =
        PluginUser::create(&mut service, "cli", process::binary("kubectl-pat")?, &bind).await?;
    let (user, pat, kubeconfig) = (alice.username.clone(), alice.pat, alice.kubeconfig.clone());

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
    let (entry_path, entry) = alice.cached()?;
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

    // `kubectl pat exchange` for scripts: one JWT, not cached.
    let mut args = vec!["exchange".to_owned(), "-o".to_owned(), "json".to_owned()];
    args.extend(alice.source_args(&service)?);
    let printed = alice.run(&args)?;
    ensure!(
        printed.status.success(),
        "kubectl-pat exchange: {}",
        stderr(&printed)
    );
    let answer: Value = serde_json::from_slice(&printed.stdout)?;
    let scripted = answer["accessToken"].as_str().context("accessToken")?;
    assert_eq!(
        jwt_claims(scripted)?["aud"],
        KUBE_AUDIENCE,
        "the PAT's default audience"
    );
    let exchanges = exchanges + 1.0;

    // Near expiry the plugin exchanges again, transparently.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let out = kubectl(&service, &kubeconfig, &["get", "pods", "-n", &ns])?;
    ensure!(
        out.status.success(),
        "kubectl after refresh: {}",
        stderr(&out)
    );
    let (_, entry) = alice.cached()?;
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
        !std::fs::read_dir(alice.credentials())?
            .any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))),
        "the refused entry is forgotten"
    );

    // The exec plugin alone, as a script would run it: exit code and message.
    let mut args = vec!["credential".to_owned(), "--no-cache".to_owned()];
    args.extend(alice.source_args(&service)?);
    let direct = alice.run(&args)?;
    assert_eq!(direct.status.code(), Some(1));
    assert!(
        stderr(&direct).contains("revoked, expired"),
        "{}",
        stderr(&direct)
    );

    service.assert_logs_clean(&[])?;
    alice.remove_files();
    Ok(())
}

#[tokio::test]
async fn list_mine_is_filtered_by_the_apiserver_and_a_leaked_token_is_revoked() -> Result<()> {
    let cluster = patrol_e2e::TestCluster::shared()?;
    cluster.install_crds().await?;
    let ns = patrol_e2e::TestNamespace::create(cluster, "cli-list").await?;
    let alice = format!("cli-alice-{}", std::process::id());
    let bob = format!("cli-bob-{}", std::process::id());
    let client = cluster.client().await?;
    let pats: kube::Api<patrol_api::v1alpha1::PersonalAccessToken> =
        kube::Api::namespaced(client, &ns.name);
    let leaked = patrol_api::token::generate()?;
    for (name, owner) in [("alice-1", &alice), ("alice-2", &alice), ("bob-1", &bob)] {
        let pat = serde_json::from_value(serde_json::json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
            "metadata": {"name": name},
            "spec": {"displayName": name, "owner": {"username": owner}},
        }))?;
        pats.create(&kube::api::PostParams::default(), &pat).await?;
    }
    // As the operator would after issuing: the current token's id in status.
    pats.patch_status(
        "bob-1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            serde_json::json!({"status": {"tokenId": leaked.id().to_string(), "phase": "Active"}}),
        ),
    )
    .await?;

    // Alice, through a kubeconfig of her own (the admin's, impersonating her).
    cluster.kubectl_ok(&[
        "create",
        "role",
        "pat-reader",
        "--verb=get,list",
        "--resource=personalaccesstokens.patrol.dev",
        "-n",
        &ns.name,
    ])?;
    cluster.kubectl_ok(&[
        "create",
        "rolebinding",
        "pat-reader",
        "--role=pat-reader",
        "--user",
        &alice,
        "-n",
        &ns.name,
    ])?;
    let mut config = kube::config::Kubeconfig::read_from(&cluster.kubeconfig)?;
    for user in &mut config.auth_infos {
        if let Some(info) = user.auth_info.as_mut() {
            info.impersonate = Some(alice.clone());
        }
    }
    let dir = std::env::temp_dir().join(format!("patrol-e2e-cli-list-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let alice_config = dir.join("alice.kubeconfig");
    std::fs::write(&alice_config, serde_yaml::to_string(&config)?)?;

    let names = |out: &Output| -> Result<Vec<String>> {
        ensure!(out.status.success(), "kubectl-pat: {}", stderr(out));
        let items: Vec<Value> = serde_json::from_slice(&out.stdout)?;
        let mut names: Vec<String> = items
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    };
    let all = run_plugin(&alice_config, &["list", "-n", &ns.name, "-o", "json"], "")?;
    assert_eq!(names(&all)?, ["alice-1", "alice-2", "bob-1"]);
    let mine = run_plugin(
        &alice_config,
        &["list", "--mine", "-n", &ns.name, "-o", "json"],
        "",
    )?;
    assert_eq!(names(&mine)?, ["alice-1", "alice-2"]);
    let table = run_plugin(&alice_config, &["list", "--mine", "-n", &ns.name], "")?;
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(text.starts_with("NAME"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    // The filter is the apiserver's: the selectable field answers kubectl too.
    let selected = cluster.kubectl_ok(&[
        "get",
        "pat",
        "-n",
        &ns.name,
        "--field-selector",
        &format!("spec.owner.username={bob}"),
        "-o",
        "name",
    ])?;
    assert_eq!(selected.trim(), "personalaccesstoken.patrol.dev/bob-1");

    // The leak runbook: pipe the token in; its PAT is revoked, nothing else.
    let out = run_plugin(
        &cluster.kubeconfig,
        &["revoke", "--leaked"],
        &format!("{}\n", leaked.expose_secret()),
    )?;
    ensure!(out.status.success(), "revoke --leaked: {}", stderr(&out));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(
        said.trim(),
        format!("personalaccesstoken {}/bob-1 revoked", ns.name)
    );
    assert!(!said.contains(leaked.expose_secret()));
    assert!(pats.get("bob-1").await?.spec.revoked);
    for name in ["alice-1", "alice-2"] {
        assert!(!pats.get(name).await?.spec.revoked, "{name} untouched");
    }
    // A token no PAT holds: a clear error and exit 1, nothing changed.
    let stranger = patrol_api::token::generate()?;
    let out = run_plugin(
        &cluster.kubeconfig,
        &["revoke", "--leaked"],
        stranger.expose_secret(),
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no PersonalAccessToken holds token"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(stranger.expose_secret()));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The krew manifest `hack/krew.sh` writes installs kubectl-pat the way users get it:
/// krew (built from sigs.k8s.io/krew) checks the archive's SHA-256 against the manifest,
/// unpacks it, and kubectl then finds `kubectl pat` on PATH.
#[test]
fn the_krew_manifest_installs_a_plugin_kubectl_finds() -> Result<()> {
    let cluster = patrol_e2e::TestCluster::shared()?;
    let bin = Path::new(cluster.var("PATROL_BIN")?);
    let dir = std::env::temp_dir().join(format!("patrol-e2e-krew-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dist = dir.join("dist");
    let packed = Command::new("bash")
        .arg(patrol_e2e::repo_root().join("hack/krew.sh"))
        .env("KUBECTL_PAT_BINARY", process::binary("kubectl-pat")?)
        .env("KREW_OUT", &dist)
        .output()?;
    ensure!(packed.status.success(), "hack/krew.sh: {}", stderr(&packed));
    let manifest = std::path::PathBuf::from(String::from_utf8(packed.stdout)?.trim());
    let archive = std::fs::read_dir(&dist)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .context("no archive")?;
    let text = std::fs::read_to_string(&manifest)?;
    assert!(text.contains("name: pat"), "{text}");
    assert!(
        text.contains(&format!("version: \"v{}\"", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );

    let krew = |args: &[&str]| -> Result<Output> {
        Ok(Command::new(bin.join("krew"))
            .args(args)
            .env("KREW_ROOT", dir.join("krew"))
            .env("HOME", &dir)
            .output()?)
    };
    let install = krew(&[
        "install",
        &format!("--manifest={}", manifest.display()),
        &format!("--archive={}", archive.display()),
    ])?;
    ensure!(
        install.status.success(),
        "krew install: {}",
        stderr(&install)
    );

    let path = format!(
        "{}:{}",
        dir.join("krew/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = |args: &[&str]| -> Result<Output> {
        Ok(Command::new(bin.join("kubectl"))
            .args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .output()?)
    };
    let version = kubectl(&["pat", "--version"])?;
    ensure!(
        version.status.success(),
        "kubectl pat --version: {}",
        stderr(&version)
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("kubectl-pat {}", env!("CARGO_PKG_VERSION"))
    );
    let listed = kubectl(&["plugin", "list"])?;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("krew/bin/kubectl-pat"), "{listed}");

    // A manifest whose checksum does not match the archive is refused by krew.
    let tampered = dir.join("tampered/pat.yaml");
    std::fs::create_dir_all(tampered.parent().context("dir")?)?;
    let sha = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256: "))
        .context("no sha256")?;
    std::fs::write(&tampered, text.replace(sha, &"0".repeat(64)))?;
    let _ = krew(&["uninstall", "pat"])?;
    let refused = krew(&[
        "install",
        &format!("--manifest={}", tampered.display()),
        &format!("--archive={}", archive.display()),
    ])?;
    assert!(
        !refused.status.success(),
        "krew installed a tampered archive"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

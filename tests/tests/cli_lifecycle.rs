//! `kubectl pat create`, `rotate`, `describe` and `whoami` against the real operator and
//! token service (their own test binary: a token service holds the apiserver's webhook
//! port, so it cannot share a binary with the other tests that start one).

use std::{process::Output, time::Duration};

use anyhow::{Context, Result, ensure};
use kube::ResourceExt;
use patrol_e2e::{
    cli::{mode, run_plugin},
    eventually,
    token_service::{TokenService, stderr},
};
use serde_json::Value;

/// `kubectl pat create` against the real operator and token service: one command creates
/// the PAT, waits until it is issued, reveals the token (stdout, not a terminal), and
/// acknowledges it, and the token works at once. `rotate --grace` reveals the new one into
/// a 0600 file while the old one keeps working; `describe` and `whoami` tell the story.
#[tokio::test]
async fn create_reveals_a_token_usable_at_once_and_rotate_replaces_it() -> Result<()> {
    let service = TokenService::start("cli-create", &[]).await?;
    let cluster = service.cluster;
    let operator = patrol_e2e::operator::Operator::start(
        cluster,
        &service.pats,
        &service.records,
        patrol_e2e::operator::OperatorOptions::default(),
    )?;
    let ns = service.pats.name.clone();
    let bob = format!("cli-bob-{}", std::process::id());
    for (role, verbs, resource) in [
        (
            "pat-owner",
            "get,list,watch,create,patch",
            "personalaccesstokens.patrol.dev",
        ),
        ("secret-reader", "get", "secrets"),
        ("event-reader", "list", "events"),
    ] {
        cluster.kubectl_ok(&[
            "create",
            "role",
            role,
            &format!("--verb={verbs}"),
            &format!("--resource={resource}"),
            "-n",
            &ns,
        ])?;
        cluster.kubectl_ok(&[
            "create",
            "rolebinding",
            role,
            &format!("--role={role}"),
            "--user",
            &bob,
            "-n",
            &ns,
        ])?;
    }
    // Bob runs the plugin; without admission here, the owner is named explicitly.
    let as_bob = |args: &[&str]| -> Result<Output> {
        let mut all = vec!["--as", bob.as_str()];
        all.extend_from_slice(args);
        all.extend(["-n", ns.as_str()]);
        run_plugin(&cluster.kubeconfig, &all, "")
    };
    let out = as_bob(&[
        "create",
        "ci",
        "--display-name",
        "CI deploy",
        "--ttl",
        "2h",
        "--owner",
        &bob,
    ])?;
    ensure!(out.status.success(), "kubectl-pat create: {}", stderr(&out));
    let token = String::from_utf8(out.stdout.clone())?.trim().to_owned();
    let parsed = patrol_api::token::parse(&token).context("stdout holds exactly the token")?;
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "personalaccesstoken {ns}/ci: token {}",
            parsed.id()
        )),
        "{said}"
    );
    assert!(said.contains("expires"), "{said}");
    assert!(!said.contains(&token), "stderr never shows the token");

    // Usable at once: the first request, no retry, through the apiserver's TokenReview.
    let first = service.kubectl_as(&token, &["auth", "whoami", "-o", "json"])?;
    ensure!(
        first.status.success(),
        "the new token at once: {}",
        stderr(&first)
    );
    let whoami: Value = serde_json::from_slice(&first.stdout)?;
    assert_eq!(whoami["status"]["userInfo"]["username"], bob.as_str());

    // Acknowledged: the annotation names the token, and the one-time Secret goes.
    let client = cluster.client().await?;
    let pats: kube::Api<patrol_api::v1alpha1::PersonalAccessToken> =
        kube::Api::namespaced(client.clone(), &ns);
    let pat = pats.get("ci").await?;
    assert_eq!(
        pat.annotations()
            .get(patrol_api::v1alpha1::ACKNOWLEDGED_ANNOTATION)
            .map(String::as_str),
        Some(parsed.id().as_str())
    );
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client, &ns);
    eventually(Duration::from_secs(10), || async {
        ensure!(
            secrets.get_opt("ci-token").await?.is_none(),
            "the one-time Secret is still there"
        );
        Ok(())
    })
    .await?;

    // The same name again: refused before anything changes, with the way out.
    let again = as_bob(&["create", "ci", "--owner", &bob])?;
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("exists already") && stderr(&again).contains("rotate"),
        "{}",
        stderr(&again)
    );
    // A bad flag: refused before anything is sent.
    for (flag, args) in [
        ("--ttl", ["--ttl", "forever"]),
        ("--timeout", ["--timeout", "soon"]),
    ] {
        let mut all = vec!["create", "other", "--owner", &bob];
        all.extend(args);
        let bad = as_bob(&all)?;
        assert_eq!(bad.status.code(), Some(1));
        assert!(stderr(&bad).contains(flag), "{}", stderr(&bad));
        assert!(
            pats.get_opt("other").await?.is_none(),
            "{flag}: nothing created"
        );
    }

    // Rotate with a grace period, into a file: 0600, the new token, the old one still good.
    let dir = std::env::temp_dir().join(format!("patrol-e2e-cli-create-{}", std::process::id()));
    let file = dir.join("tokens/ci");
    let out = as_bob(&[
        "rotate",
        "ci",
        "--grace",
        "10m",
        "--token-file",
        file.to_str().context("path")?,
    ])?;
    ensure!(out.status.success(), "kubectl-pat rotate: {}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "the token went to the file, not stdout"
    );
    assert_eq!(mode(&file)?, 0o600);
    let rotated = std::fs::read_to_string(&file)?.trim().to_owned();
    let new_id = patrol_api::token::parse(&rotated)?.id().to_string();
    assert_ne!(new_id, parsed.id().to_string(), "a new token");
    let now_ok = service.kubectl_as(&rotated, &["auth", "whoami"])?;
    ensure!(
        now_ok.status.success(),
        "the rotated token at once: {}",
        stderr(&now_ok)
    );
    service
        .kubectl_ok_as(&token, &["auth", "whoami"], Duration::from_secs(5))
        .await?;
    let pat = pats.get("ci").await?;
    let status = pat.status.clone().unwrap_or_default();
    assert_eq!(status.token_id.as_deref(), Some(new_id.as_str()));
    assert_eq!(
        status.previous.map(|p| p.token_id),
        Some(parsed.id().to_string())
    );

    // describe: the token, the previous one, the conditions and the operator's events.
    let described = as_bob(&["describe", "ci"])?;
    ensure!(
        described.status.success(),
        "describe: {}",
        stderr(&described)
    );
    let text = String::from_utf8_lossy(&described.stdout).into_owned();
    for needle in [
        "Display name:".to_owned(),
        format!("Owner:          {bob}"),
        "Phase:          Active".to_owned(),
        format!("Token:          id {new_id}"),
        format!("Previous token: id {}", parsed.id()),
        "TokenActive".to_owned(),
        "Rotated".to_owned(),
    ] {
        assert!(text.contains(&needle), "{needle:?} in:\n{text}");
    }

    // whoami, as the token sees itself (TokenReview puts the PAT's name in extra).
    let kubeconfig = dir.join("bearer.kubeconfig");
    cluster.bearer_kubeconfig(&kubeconfig, &rotated)?;
    let me = run_plugin(&kubeconfig, &["whoami"], "")?;
    ensure!(me.status.success(), "whoami: {}", stderr(&me));
    let text = String::from_utf8_lossy(&me.stdout).into_owned();
    assert!(text.contains(&format!("Username:  {bob}")), "{text}");
    assert!(
        text.contains(&format!(
            "Token:     {new_id} of personalaccesstoken {ns}/ci (Active)"
        )),
        "{text}"
    );
    assert!(text.contains("Expires:   "), "{text}");

    let operator_log = operator.process.output();
    ensure!(
        !operator_log.contains(&token) && !operator_log.contains(&rotated),
        "the operator logged a token"
    );
    service.assert_logs_clean(&[&token, &rotated])?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

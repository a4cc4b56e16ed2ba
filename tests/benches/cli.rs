//! kubectl-pat benchmark: what the exec-credential plugin adds to a kubectl invocation.
//!
//! `make bench-cli` (or `cargo bench -p patrol-e2e --bench cli`).
//!
//! In one run, against the real apiserver and patrol-webhook, `kubectl get ns` is timed
//! (whole process, wall clock) with three users of one kubeconfig each, interleaved call by
//! call so drift hits all alike:
//!
//! - **exec, warm**: `kubectl-pat credential` (release build) with a warm cache;
//! - **static JWT** (the baseline): the very JWT the plugin hands out, as a static token;
//! - **static PAT**: the PAT itself as a static token (TokenReview at Patrol, cached).
//!
//! The figure is the added time per invocation: median(exec, warm) − median(static JWT).
//! The cold first call (cache empty: discovery and exchange at Patrol) is timed too, and
//! the plugin alone (`kubectl-pat credential`, warm) without kubectl.

#![allow(clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use patrol_e2e::{
    cli::PluginUser,
    process,
    token_service::{TokenService, stderr},
};

fn calls() -> usize {
    std::env::var("PATROL_BENCH_CLI_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn timed(cmd: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    let out = cmd.output()?;
    let took = started.elapsed();
    ensure!(out.status.success(), "{cmd:?}: {}", stderr(&out));
    Ok(took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn static_kubeconfig(path: &Path, server: &str, ca: &str, token: &str) -> Result<()> {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{server}', certificate-authority: '{ca}'}}\n\
             users:\n- name: u\n  user: {{token: '{token}'}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut service = TokenService::start("bench-cli", &[]).await?;
    let cluster = service.cluster;
    let binding = format!("bench-cli-view-{}", std::process::id());
    let bind = [
        "create",
        "clusterrolebinding",
        &binding,
        "--clusterrole=view",
    ];
    let user = PluginUser::create(
        &mut service,
        "bench-cli",
        process::release_binary("kubectl-pat")?,
        &bind,
    )
    .await?;
    let (pat, cache, exec_config) = (user.pat, user.cache.clone(), user.kubeconfig.clone());
    let dir = user.dir.clone();
    let ca = cluster.var("PATROL_CA")?.to_owned();
    let server = format!(
        "https://127.0.0.1:{}",
        cluster.var("PATROL_APISERVER_PORT")?
    );
    let kubectl = PathBuf::from(cluster.var("PATROL_BIN")?).join("kubectl");

    let get_ns = |config: &Path| {
        let mut cmd = Command::new(&kubectl);
        cmd.arg("--kubeconfig")
            .arg(config)
            .args(["get", "ns", "-o", "name"]);
        cmd
    };

    // Cold: an empty cache each time (discovery + exchange, then the request).
    let mut cold = Vec::new();
    for _ in 0..7 {
        let _ = std::fs::remove_dir_all(&cache);
        // The apiserver may need a moment to fetch the webhook's fresh keys at first.
        let took = match timed(&mut get_ns(&exec_config)) {
            Ok(t) => t,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let _ = std::fs::remove_dir_all(&cache);
                timed(&mut get_ns(&exec_config))?
            }
        };
        cold.push(took);
    }

    // The JWT the warm cache holds is the static-JWT baseline.
    let (_, jwt) = user.cached()?;
    let jwt = jwt["accessToken"].as_str().expect("accessToken").to_owned();
    let jwt_config = dir.join("jwt.kubeconfig");
    static_kubeconfig(&jwt_config, &server, &ca, &jwt)?;
    let pat_config = dir.join("pat.kubeconfig");
    static_kubeconfig(&pat_config, &server, &ca, service.token(pat))?;

    let mut credential = vec!["credential".to_owned()];
    credential.extend(user.source_args(&service)?);
    let n = calls();
    let (mut exec, mut static_jwt, mut static_pat, mut plugin_alone) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        // warm-up
        timed(&mut get_ns(&exec_config))?;
        timed(&mut get_ns(&jwt_config))?;
        timed(&mut get_ns(&pat_config))?;
    }
    for _ in 0..n {
        exec.push(timed(&mut get_ns(&exec_config))?);
        static_jwt.push(timed(&mut get_ns(&jwt_config))?);
        static_pat.push(timed(&mut get_ns(&pat_config))?);
        plugin_alone.push(timed(Command::new(&user.plugin).args(&credential))?);
    }

    let added = median(exec.clone()).saturating_sub(median(static_jwt.clone()));
    println!("\nkubectl get ns, {n} calls each, interleaved (whole process, wall clock)");
    println!("| user | median | p90 |");
    println!("|---|---|---|");
    for (name, v) in [
        ("static JWT (baseline)", &static_jwt),
        ("exec plugin, warm cache", &exec),
        ("static PAT", &static_pat),
        ("exec plugin, cold (7 calls)", &cold),
        ("kubectl-pat credential alone, warm", &plugin_alone),
    ] {
        println!(
            "| {name} | {} | {} |",
            ms(median(v.clone())),
            ms(p90(v.clone()))
        );
    }
    println!(
        "\nadded by the plugin per invocation (median exec warm − median static JWT): {} ({:.2}x the baseline)",
        ms(added),
        median(exec.clone()).as_secs_f64() / median(static_jwt.clone()).as_secs_f64()
    );
    println!(
        "cold first call − warm: {}",
        ms(median(cold).saturating_sub(median(exec)))
    );

    cluster.kubectl_ok(&["delete", "clusterrolebinding", &binding])?;
    user.remove_files();
    Ok(())
}

//! The monitoring Patrol ships: the alert rules pass Prometheus' own `promtool` (syntax and
//! the unit tests in `tests/alerts/`), the chart renders them and the dashboard unchanged,
//! and every metric an alert or a dashboard panel names is one the binaries really export.

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use kube::{Api, api::PostParams};
use patrol_api::v1alpha1::{PersonalAccessToken, Phase, TokenPolicy};
use patrol_e2e::{
    TestCluster,
    chart::Helm,
    eventually,
    operator::{Operator, OperatorOptions, delivered_token, wait_for_phase},
    repo_root,
    token_service::{KUBE_AUDIENCE, TokenService, stderr},
};
use serde_json::{Value, json};

const ALERTS: &str = "charts/patrol/files/alerts.yaml";
const DASHBOARD: &str = "charts/patrol/files/dashboard.json";

fn tool(cluster: &TestCluster, name: &str) -> Result<std::path::PathBuf> {
    Ok(Path::new(cluster.var("PATROL_BIN")?).join(name))
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every `patrol_…` metric name in `text` (PromQL expressions, the dashboard's JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("patrol_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The series names in an OpenMetrics exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The PromQL of every dashboard panel.
fn dashboard_queries() -> Result<String> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join(DASHBOARD))?)?;
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().context("targets")? {
            exprs.push_str(target["expr"].as_str().context("expr")?);
            exprs.push('\n');
        }
    }
    Ok(exprs)
}

#[test]
fn the_alerts_pass_promtool_and_the_chart_renders_them_and_the_dashboard_unchanged() -> Result<()> {
    let cluster = TestCluster::shared()?;
    let promtool = tool(cluster, "promtool")?;
    let root = repo_root();
    let checked = run_ok(
        Command::new(&promtool)
            .args(["check", "rules", ALERTS])
            .current_dir(&root),
    )?;
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "tests/alerts/alerts_test.yaml"])
            .current_dir(&root),
    )?;
    assert!(tested.contains("SUCCESS"), "{tested}");

    let manifest = Helm::for_cluster(cluster)?.template(
        "monitoring",
        "patrol-system",
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.labels.release=kube-prometheus-stack",
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "podMonitor.enabled=true",
            "--set",
            "podMonitor.scrapeTimeout=10s",
            "--set",
            "podMonitor.metricRelabelings[0].action=drop",
            "--set",
            "podMonitor.metricRelabelings[0].sourceLabels[0]=__name__",
            "--set",
            "podMonitor.metricRelabelings[0].regex=go_.*",
        ],
    )?;

    // The PrometheusRule's spec is the rule file, and promtool accepts it as rendered.
    let rules = manifest.all("PrometheusRule");
    ensure!(rules.len() == 1, "one PrometheusRule: {}", rules.len());
    assert_eq!(
        rules[0]["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    let file: Value = serde_yaml::from_str(&std::fs::read_to_string(root.join(ALERTS))?)?;
    assert_eq!(rules[0]["spec"], file, "the rendered rules are the file's");
    // Not the token service's directory (patrol-e2e-monitoring-<pid>): tests run at once.
    let dir =
        std::env::temp_dir().join(format!("patrol-e2e-rendered-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let spec = dir.join("rendered-rules.yaml");
    std::fs::write(&spec, serde_yaml::to_string(&rules[0]["spec"])?)?;
    run_ok(Command::new(&promtool).arg("check").arg("rules").arg(&spec))?;

    // The dashboard ConfigMap carries the JSON as it is, labelled for Grafana's sidecar.
    let maps = manifest.all("ConfigMap");
    let dashboard = maps
        .iter()
        .find(|m| m["data"]["patrol.json"].is_string())
        .context("no dashboard ConfigMap")?;
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let carried: Value =
        serde_json::from_str(dashboard["data"]["patrol.json"].as_str().context("json")?)?;
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(root.join(DASHBOARD))?)?;
    assert_eq!(carried, committed);

    // PodMonitors for both components, with the scrape settings given; no ServiceMonitor.
    let monitors = manifest.all("PodMonitor");
    assert_eq!(monitors.len(), 2);
    for monitor in &monitors {
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["scrapeTimeout"], "10s", "{monitor}");
        assert_eq!(
            endpoint["metricRelabelings"][0]["action"], "drop",
            "{monitor}"
        );
    }
    let webhook = manifest.get("PodMonitor", "monitoring-patrol-webhook")?;
    assert_eq!(webhook["spec"]["podMetricsEndpoints"][0]["scheme"], "https");
    assert!(manifest.all("ServiceMonitor").is_empty());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported() -> Result<()> {
    let service = TokenService::start("monitoring", &[]).await?;
    let cluster = service.cluster;
    let operator = Operator::start(
        cluster,
        &service.pats,
        &service.records,
        OperatorOptions::default(),
    )?;
    let ns = service.pats.name.clone();
    let client = cluster.client().await?;

    // A policy for this namespace alone that warns 2h ahead: a 1h token is expiring at once.
    let label = format!("e2e-monitoring-{}", std::process::id());
    cluster.kubectl_ok(&[
        "label",
        "namespace",
        &ns,
        &format!("patrol.dev/{label}=yes"),
    ])?;
    let policies: Api<TokenPolicy> = Api::all(client.clone());
    let policy: TokenPolicy = serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": label},
        "spec": {"namespaceSelector": {"matchLabels": {format!("patrol.dev/{label}"): "yes"}},
                 "rotation": {"warnBefore": "2h"}},
    }))?;
    policies.create(&PostParams::default(), &policy).await?;
    let pats: Api<PersonalAccessToken> = Api::namespaced(client, &ns);
    let pat: PersonalAccessToken = serde_json::from_value(json!({
        "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
        "metadata": {"name": "watched"},
        "spec": {"displayName": "watched", "owner": {"username": "monitoring-alice"},
                 "expiration": {"ttl": "1h"}},
    }))?;
    pats.create(&PostParams::default(), &pat).await?;
    wait_for_phase(&pats, "watched", Phase::Active, Duration::from_secs(30)).await?;
    let expiring = format!("patrol_operator_tokens_expiring_soon{{namespace=\"{ns}\"}} 1");
    eventually(Duration::from_secs(20), || async {
        let text = operator.metrics().await?;
        ensure!(text.contains(&expiring), "no {expiring} yet");
        Ok(())
    })
    .await?;

    // Traffic of every kind the webhook counts: a TokenReview, an exchange, an admission
    // denial.
    let token = delivered_token(cluster, &ns, "watched-token")
        .await?
        .context("the token's Secret")?;
    service
        .kubectl_ok_as(&token, &["auth", "whoami"], Duration::from_secs(10))
        .await?;
    service
        .post_form(
            "/oauth2/token",
            &[
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                ),
                ("subject_token", &token),
                ("subject_token_type", "urn:ietf:params:oauth:token-type:pat"),
                ("audience", KUBE_AUDIENCE),
            ],
        )
        .await?;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0f6b1a52-0000-4000-8000-00000000cafe",
            "kind": {"group": "patrol.dev", "version": "v1alpha1", "kind": "TokenPolicy"},
            "resource": {"group": "patrol.dev", "version": "v1alpha1", "resource": "tokenpolicies"},
            "name": "broken", "operation": "CREATE",
            "userInfo": {"username": "admin", "groups": ["system:masters"]},
            "object": {"apiVersion": "patrol.dev/v1alpha1", "kind": "TokenPolicy",
                       "metadata": {"name": "broken"},
                       "spec": {"expiration": {"max": "forever"}}},
        },
    });
    let answer = service
        .send(
            http::Method::POST,
            "/validate",
            serde_json::to_vec(&review)?,
            Some("application/json"),
        )
        .await?;
    assert_eq!(answer.body["response"]["allowed"], false, "{}", answer.body);

    // Scrape both and look for every name the alerts and the dashboard use.
    let webhook = service.get("/metrics").await?;
    let webhook_text = webhook
        .body
        .as_str()
        .context("metrics are text")?
        .to_owned();
    let series: BTreeSet<String> = exported(&operator.metrics().await?)
        .union(&exported(&webhook_text))
        .cloned()
        .collect();
    let alerts = std::fs::read_to_string(repo_root().join(ALERTS))?;
    let named: BTreeSet<String> = metric_names(&alerts)
        .union(&metric_names(&dashboard_queries()?))
        .cloned()
        .collect();
    ensure!(named.len() > 20, "names found: {named:?}");
    let missing: Vec<&String> = named.iter().filter(|n| !series.contains(*n)).collect();
    ensure!(
        missing.is_empty(),
        "named by an alert or the dashboard but not exported: {missing:?}"
    );
    println!(
        "{} metric names checked against the exposition",
        named.len()
    );

    pats.delete("watched", &Default::default()).await?;
    policies.delete(&label, &Default::default()).await?;
    Ok(())
}

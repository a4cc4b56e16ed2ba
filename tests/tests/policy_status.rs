//! TokenPolicy status as the operator writes it: governed and violating counts, the
//! `Ready` and `Conflicting` conditions with `observedGeneration`, what `kubectl get
//! tokenpolicy` shows, and the policy-state metric. Its own test binary: the operator here
//! writes the status of every policy in the cluster.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use patrol_api::v1alpha1::{PersonalAccessToken, TokenPolicy};
use patrol_e2e::{
    TestCluster, TestNamespace, eventually,
    operator::{Operator, OperatorOptions},
};
use serde_json::json;

fn condition(policy: &TokenPolicy, type_: &str) -> Option<Condition> {
    policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

#[tokio::test]
async fn token_policies_report_what_they_govern_and_whether_they_can_be_met() -> Result<()> {
    let cluster = TestCluster::shared()?;
    cluster.install_crds().await?;
    let records = TestNamespace::create(cluster, "tp-rec").await?;
    let ns_a = TestNamespace::create(cluster, "tp-a").await?;
    let ns_b = TestNamespace::create(cluster, "tp-b").await?;
    let run = format!("e2e-tp-{}", std::process::id());
    let both = format!("patrol.dev/{run}");
    let only_b = format!("patrol.dev/{run}-b");
    cluster.kubectl_ok(&["label", "namespace", &ns_a.name, &format!("{both}=yes")])?;
    cluster.kubectl_ok(&[
        "label",
        "namespace",
        &ns_b.name,
        &format!("{both}=yes"),
        &format!("{only_b}=yes"),
    ])?;
    let operator = Operator::start(
        cluster,
        &ns_a,
        &records,
        OperatorOptions {
            args: vec!["--token-policy-status=true".into()],
            ..OperatorOptions::default()
        },
    )?;
    let client = cluster.client().await?;
    let policies: Api<TokenPolicy> = Api::all(client.clone());
    let limits = format!("{run}-limits");
    let persistent = format!("{run}-persistent");
    let broken = format!("{run}-broken");
    for (name, spec) in [
        (
            &limits,
            json!({"namespaceSelector": {"matchLabels": {&both: "yes"}},
                   "expiration": {"max": "30d"}, "secret": {"allowedRetention": ["OneTime"]}}),
        ),
        (
            &persistent,
            json!({"namespaceSelector": {"matchLabels": {&only_b: "yes"}},
                   "secret": {"allowedRetention": ["Persistent"]}}),
        ),
        // Admission would refuse this selector; without the webhook the apiserver takes it.
        (
            &broken,
            json!({"namespaceSelector": {"matchExpressions": [{"key": &both, "operator": "Sideways"}]}}),
        ),
    ] {
        let policy: TokenPolicy = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "TokenPolicy",
            "metadata": {"name": name}, "spec": spec,
        }))?;
        policies.create(&PostParams::default(), &policy).await?;
    }
    for (ns, name, ttl) in [
        (&ns_a.name, "fits", "7d"),
        (&ns_a.name, "too-long", "90d"),
        (&ns_b.name, "one-time", "7d"),
    ] {
        let pat: PersonalAccessToken = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
            "metadata": {"name": name},
            "spec": {"displayName": name, "owner": {"username": "tp-alice"},
                     "expiration": {"ttl": ttl}},
        }))?;
        Api::<PersonalAccessToken>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &pat)
            .await?;
    }

    // Counts: `limits` governs all three and the 90d one breaks it; `persistent` governs
    // the one in ns_b, which is OneTime; `broken` is applied to nothing.
    let expect = |name: &str, governed: i32, violating: i32| {
        let policies = policies.clone();
        let name = name.to_owned();
        async move {
            eventually(Duration::from_secs(45), || async {
                let p = policies.get(&name).await?;
                let s = p.status.clone().unwrap_or_default();
                ensure!(
                    (s.governed_tokens, s.violating_tokens) == (governed, violating)
                        && condition(&p, "Ready").is_some(),
                    "{name}: governed {}, violating {}, conditions {:?}",
                    s.governed_tokens,
                    s.violating_tokens,
                    s.conditions
                );
                Ok(p)
            })
            .await
        }
    };
    let p_limits = expect(&limits, 3, 1).await?;
    let p_persistent = expect(&persistent, 1, 1).await?;
    let p_broken = expect(&broken, 0, 0).await?;

    let ready = condition(&p_limits, "Ready").context("Ready")?;
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Applied")
    );
    assert!(ready.message.contains("2 namespaces"), "{}", ready.message);
    assert_eq!(ready.observed_generation, p_limits.metadata.generation);
    let not_ready = condition(&p_broken, "Ready").context("Ready")?;
    assert_eq!(
        (not_ready.status.as_str(), not_ready.reason.as_str()),
        ("False", "InvalidSelector")
    );
    assert!(
        not_ready.message.contains("Sideways"),
        "{}",
        not_ready.message
    );
    for p in [&p_limits, &p_persistent] {
        let conflicting = condition(p, "Conflicting").context("Conflicting")?;
        assert_eq!(conflicting.status, "True", "{conflicting:?}");
        assert!(
            conflicting
                .message
                .contains(&format!("in namespace {}:", ns_b.name))
                && conflicting
                    .message
                    .contains("no secret retention is allowed by all of"),
            "{}",
            conflicting.message
        );
        assert!(
            !conflicting.message.contains(&ns_a.name),
            "{}",
            conflicting.message
        );
    }

    // kubectl shows it at a glance.
    let table = cluster.kubectl_ok(&["get", "tokenpolicy", &limits, &persistent, &broken])?;
    let header = table.lines().next().unwrap_or_default();
    for column in ["READY", "CONFLICTING", "GOVERNED", "VIOLATING"] {
        assert!(header.contains(column), "{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with(&broken))
        .context("broken's row")?;
    assert!(row.contains("False"), "{table}");

    // The operator counts policy states for alerting.
    let metrics = operator.metrics().await?;
    let value = |state: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "patrol_operator_token_policies{{state=\"{state}\"}} "
                ))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1.0)
    };
    assert!(
        value("conflicting") >= 2.0 && value("invalid") >= 1.0,
        "{metrics}"
    );

    // Widening `persistent` resolves the conflict, for the new generation.
    policies
        .patch(
            &persistent,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"secret": {"allowedRetention": ["Persistent", "OneTime"]}}}),
            ),
        )
        .await?;
    let resolved = eventually(Duration::from_secs(45), || async {
        let p = policies.get(&persistent).await?;
        let c = condition(&p, "Conflicting").context("Conflicting")?;
        ensure!(
            c.status == "False" && c.observed_generation == p.metadata.generation,
            "still {c:?}"
        );
        Ok(p)
    })
    .await?;
    assert_eq!(resolved.status.map(|s| s.violating_tokens), Some(0));

    for name in [&limits, &persistent, &broken] {
        policies.delete(name, &Default::default()).await?;
    }
    drop(operator);
    Ok(())
}

//! Running patrol-operator against the test cluster, scoped to one test's namespace so tests
//! run in parallel without seeing each other's tokens.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::ListParams};
use patrol_api::{
    record::{self, TokenRecord},
    v1alpha1::{PersonalAccessToken, Phase},
};

use crate::{
    TestCluster, TestNamespace,
    process::{self, Process},
};

/// How to run one operator.
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    /// Leader election on; all operators with the same lease name compete.
    pub lease: Option<String>,
    pub lease_duration_seconds: Option<u64>,
    /// Extra environment (e.g. `PATROL_TEST_CRASH_AT`).
    pub env: Vec<(String, String)>,
    /// Run the release build (benchmarks).
    pub release: bool,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Issue tokens only for owners admission attested (the webhook of the test must run
    /// with its `--namespace` set to the same records namespace, which holds the key).
    /// Off by default: most tests create PATs without the admission webhook.
    pub vet_owners: bool,
}

/// A running operator, its metrics port and its records namespace.
pub struct Operator {
    pub process: Process,
    pub metrics_port: u16,
    pub records_namespace: String,
}

impl Operator {
    /// Starts an operator that watches `watch` and keeps records in `records`.
    pub fn start(
        cluster: &TestCluster,
        watch: &TestNamespace,
        records: &TestNamespace,
        options: OperatorOptions,
    ) -> Result<Self> {
        let bin = if options.release {
            process::release_binary("patrol-operator")?
        } else {
            process::binary("patrol-operator")?
        };
        let metrics_port = process::free_port()?;
        let mut args = vec![
            "--namespace".to_owned(),
            records.name.clone(),
            "--watch-namespace".to_owned(),
            watch.name.clone(),
            "--metrics-addr".to_owned(),
            format!("127.0.0.1:{metrics_port}"),
        ];
        match &options.lease {
            Some(lease) => {
                args.extend(["--lease-name".to_owned(), lease.clone()]);
                if let Some(d) = options.lease_duration_seconds {
                    args.extend(["--lease-duration-seconds".to_owned(), d.to_string()]);
                }
            }
            None => args.extend(["--leader-election".to_owned(), "false".to_owned()]),
        }
        if !options.vet_owners {
            args.push("--require-owner-attestation=false".to_owned());
        }
        args.extend(options.args.iter().cloned());
        let process = Process::spawn(cluster, "patrol-operator", &bin, &args, &options.env)?;
        Ok(Self {
            process,
            metrics_port,
            records_namespace: records.name.clone(),
        })
    }

    /// The operator's /metrics text.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let out = tokio::process::Command::new("curl")
            .args(["-fsS", "--max-time", "2", &url])
            .output()
            .await?;
        if !out.status.success() {
            bail!("GET {url} failed");
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Whether this operator currently leads (per its metrics).
    pub async fn is_leader(&self) -> bool {
        self.metrics()
            .await
            .is_ok_and(|m| m.lines().any(|l| l.trim() == "patrol_operator_leader 1"))
    }
}

/// The reason of a PAT's `Ready` condition ("" when it has none yet).
pub fn ready_reason(pat: &PersonalAccessToken) -> String {
    pat.status
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

/// Waits until the PAT reaches `phase`, returning it.
pub async fn wait_for_phase(
    api: &Api<PersonalAccessToken>,
    name: &str,
    phase: Phase,
    timeout: Duration,
) -> Result<PersonalAccessToken> {
    crate::eventually(timeout, || async {
        let pat = api.get(name).await?;
        let now = pat.status.as_ref().and_then(|s| s.phase);
        if now == Some(phase) {
            Ok(pat)
        } else {
            bail!(
                "{name} is {now:?}, waiting for {phase:?}; status: {:?}",
                pat.status
            )
        }
    })
    .await
    .with_context(|| format!("waiting for {name} to be {phase:?}"))
}

/// The token records (in `records_namespace`) that belong to a PAT uid.
pub async fn records_for(
    cluster: &TestCluster,
    records_namespace: &str,
    pat_uid: &str,
) -> Result<Vec<TokenRecord>> {
    let api: Api<Secret> = Api::namespaced(cluster.client().await?, records_namespace);
    let selector = format!("{},{}={pat_uid}", record::selector(), record::PAT_UID_LABEL);
    api.list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .map(|s| TokenRecord::from_secret(s).map_err(Into::into))
        .collect()
}

/// The plaintext token in a delivered Secret.
pub async fn delivered_token(
    cluster: &TestCluster,
    namespace: &str,
    secret: &str,
) -> Result<Option<String>> {
    let api: Api<Secret> = Api::namespaced(cluster.client().await?, namespace);
    Ok(match api.get_opt(secret).await? {
        Some(s) => {
            let bytes = s
                .data
                .and_then(|d| d.get("token").cloned())
                .context("Secret has no token key")?;
            Some(String::from_utf8(bytes.0)?)
        }
        None => None,
    })
}

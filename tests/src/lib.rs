//! The end-to-end harness: a real kube-apiserver and etcd, started once per machine by
//! `hack/cluster.sh` and shared by every test, each test isolated in its own namespace.
//!
//! Two clusters: [`TestCluster::shared`] is the control plane alone, where tests run
//! Patrol's binaries as host processes (the apiserver's token webhook points at a loopback
//! port); [`TestCluster::with_node`] has the local node, where Patrol runs as the chart's
//! pods (the apiserver's token webhook points at the chart's Service).
//!
//! Set `PATROL_USE_EXISTING_CLUSTER=1` to run against the cluster `$KUBECONFIG` points at
//! instead (like envtest's `USE_EXISTING_CLUSTER`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

pub mod chart;
pub mod cli;
pub mod load;
pub mod node;
pub mod operator;
pub mod postgres;
pub mod process;
pub mod token_service;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

/// Field manager for everything the tests apply.
pub const FIELD_MANAGER: &str = "patrol-e2e";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running control plane: where its kubeconfig is, and the variables `hack/cluster.sh`
/// recorded for it (ports, certificates, the directory of the control-plane binaries).
#[derive(Debug, Clone)]
pub struct TestCluster {
    pub kubeconfig: PathBuf,
    pub env: BTreeMap<String, String>,
}

static CLUSTER: OnceLock<std::result::Result<TestCluster, String>> = OnceLock::new();
static NODE_CLUSTER: OnceLock<std::result::Result<TestCluster, String>> = OnceLock::new();

impl TestCluster {
    /// The shared control plane without a node, started on first use (idempotent across
    /// test binaries).
    pub fn shared() -> Result<&'static TestCluster> {
        CLUSTER
            .get_or_init(|| Self::start(false).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("control plane unavailable: {e}"))
    }

    /// The shared cluster with the local node (kubelet, containerd, kube-proxy, CoreDNS),
    /// started on first use.
    pub fn with_node() -> Result<&'static TestCluster> {
        NODE_CLUSTER
            .get_or_init(|| Self::start(true).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("cluster with a node unavailable: {e}"))
    }

    fn start(node: bool) -> Result<TestCluster> {
        if std::env::var("PATROL_USE_EXISTING_CLUSTER").as_deref() == Ok("1") {
            let kubeconfig = std::env::var("KUBECONFIG")
                .context("PATROL_USE_EXISTING_CLUSTER=1 needs KUBECONFIG")?;
            return Ok(TestCluster {
                kubeconfig: kubeconfig.into(),
                env: BTreeMap::new(),
            });
        }
        let script = repo_root().join("hack/cluster.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("up")
            .env("PATROL_CLUSTER_NODE", if node { "1" } else { "0" })
            .output()
            .context("running hack/cluster.sh up")?;
        ensure!(
            out.status.success(),
            "hack/cluster.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        let env_file = kubeconfig.with_file_name("env");
        let env = std::fs::read_to_string(&env_file)
            .with_context(|| format!("reading {}", env_file.display()))?
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(TestCluster { kubeconfig, env })
    }

    /// A variable `hack/cluster.sh` recorded, such as `PATROL_WEBHOOK_PORT`.
    pub fn var(&self, name: &str) -> Result<&str> {
        self.env.get(name).map(String::as_str).with_context(|| {
            format!("{name} is not set for this cluster (an existing cluster has none)")
        })
    }

    /// Stops kube-apiserver, waits `down` seconds and starts it again (etcd keeps the state).
    pub fn restart_apiserver(&self, down: u64) -> Result<()> {
        let script = repo_root().join("hack/cluster.sh");
        let out = Command::new("bash")
            .arg(&script)
            .args(["restart-apiserver", &down.to_string()])
            .env(
                "PATROL_CLUSTER_DIR",
                self.kubeconfig.parent().unwrap_or(Path::new(".")),
            )
            .output()?;
        ensure!(
            out.status.success(),
            "restart-apiserver failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// A client with the admin credentials.
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// The `kubectl` matching the control plane (the machine's own may be far older).
    pub fn kubectl(&self) -> Command {
        let bin = self
            .env
            .get("PATROL_BIN")
            .map(|b| Path::new(b).join("kubectl"));
        let mut cmd = Command::new(bin.unwrap_or_else(|| "kubectl".into()));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Runs kubectl and returns stdout, failing with stderr when it exits non-zero.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl()
            .args(args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Writes a kubeconfig with the apiserver, its CA and a bearer token: no other credential.
    pub fn bearer_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        let server = format!("https://127.0.0.1:{}", self.var("PATROL_APISERVER_PORT")?);
        let ca = self.var("PATROL_CA")?;
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
                 users:\n- name: bearer\n  user:\n    token: {token}\ncontexts:\n- name: bearer\n  context: {{cluster: local, user: bearer}}\ncurrent-context: bearer\n"
            ),
        )?;
        Ok(())
    }

    /// A client that authenticates with a bearer token only (a PAT, a JWT).
    pub async fn bearer_client(&self, kubeconfig: &Path) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// A client with the admin credentials that impersonates `user` (as `kubectl --as`).
    pub async fn client_as(&self, user: &str) -> Result<Client> {
        let mut kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        for named in &mut kubeconfig.auth_infos {
            if let Some(auth) = named.auth_info.as_mut() {
                auth.impersonate = Some(user.to_owned());
            }
        }
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// `kubectl` with another kubeconfig than the admin's.
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = self.kubectl();
        // The later --kubeconfig wins.
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
        Ok(cmd.output()?)
    }

    /// Runs kubectl as admin with `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<Output> {
        process::output_with_stdin(self.kubectl().args(args), stdin)
    }

    /// Installs the generated CRDs (server-side apply) and waits until they are Established.
    pub async fn install_crds(&self) -> Result<()> {
        let client = self.client().await?;
        let crds: Api<CustomResourceDefinition> = Api::all(client);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut names = Vec::new();
        for (_, yaml) in patrol_api::crd::all()? {
            let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml)?;
            let name = crd.name_any();
            crds.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .with_context(|| format!("applying CRD {name}"))?;
            names.push(name);
        }
        for name in names {
            let cond = kube::runtime::conditions::is_crd_established();
            let wait = kube::runtime::wait::await_condition(crds.clone(), &name, cond);
            tokio::time::timeout(Duration::from_secs(30), wait)
                .await
                .with_context(|| format!("CRD {name} not Established within 30s"))??;
        }
        Ok(())
    }
}

/// A namespace that exists for one test and is deleted when dropped.
pub struct TestNamespace {
    pub name: String,
    cluster: TestCluster,
}

static NAMESPACE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestNamespace {
    /// Creates `<prefix>-<pid>-<n>` with the label `patrol.dev/e2e=true`.
    pub async fn create(cluster: &TestCluster, prefix: &str) -> Result<Self> {
        let client = cluster.client().await?;
        let n = NAMESPACE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let api: Api<Namespace> = Api::all(client);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"patrol.dev/e2e": "true"}}
        }))?;
        api.create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            cluster: cluster.clone(),
        })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Synchronous, so it runs even as the test's runtime shuts down; the namespace
        // controller finishes the deletion in the background.
        let _ = self
            .cluster
            .kubectl()
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

/// Retries `check` every 200 ms until it succeeds or `timeout` passes, then returns its
/// last error. For state the apiserver publishes asynchronously (OpenAPI, discovery).
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(err) if tokio::time::Instant::now() >= deadline => {
                return Err(err.context(format!("still failing after {timeout:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

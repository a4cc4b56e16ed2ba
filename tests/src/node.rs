//! The local node (`hack/node.sh`) from tests: a guard that the cluster has one, Patrol's
//! images built and imported into it, and the chart installed the way this cluster's
//! kube-apiserver expects (`values.yaml` that `hack/cluster.sh` wrote beside it).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{TestCluster, chart::Helm, chart::chart_dir, repo_root};

/// The release the local cluster's apiserver flags are written for.
pub const RELEASE: &str = "patrol";
pub const NAMESPACE: &str = "patrol-system";

/// Fails unless the cluster has the local node: pod-level tests never fall back to
/// running Patrol as host processes.
pub fn require(cluster: &TestCluster) -> Result<()> {
    match cluster.var("PATROL_NODE") {
        Ok("1") => Ok(()),
        Ok(_) => bail!(
            "this test runs Patrol as pods and needs the local node, but the cluster at {} was \
             started without one (PATROL_CLUSTER_NODE=0); run it with PATROL_CLUSTER_NODE=1, the default",
            cluster.kubeconfig.display()
        ),
        Err(_) => bail!(
            "this test runs Patrol as pods on the local node (images imported into its \
             containerd); an existing cluster (PATROL_USE_EXISTING_CLUSTER=1) is not supported"
        ),
    }
}

/// An image archive `hack/images.sh` built.
#[derive(Debug, Clone)]
pub struct ImageArchive {
    pub path: PathBuf,
    pub bytes: u64,
}

/// Builds patrol-operator and patrol-webhook (release binaries, `hack/images.sh patrol`)
/// and imports both into the node's containerd.
pub fn build_and_import_patrol_images(cluster: &TestCluster) -> Result<Vec<ImageArchive>> {
    let script = repo_root().join("hack/images.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("patrol")
        .output()
        .context("running hack/images.sh patrol")?;
    ensure!(
        out.status.success(),
        "hack/images.sh patrol failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut archives = Vec::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let path = PathBuf::from(line.trim());
        let bytes = std::fs::metadata(&path)
            .with_context(|| format!("{} is missing after building it", path.display()))?
            .len();
        archives.push(ImageArchive { path, bytes });
    }
    ensure!(
        archives.len() == 2,
        "expected two image archives, got {archives:?}"
    );
    let out = Command::new("bash")
        .arg(&script)
        .arg("import")
        .args(archives.iter().map(|a| &a.path))
        .env("PATROL_CLUSTER_DIR", cluster_dir(cluster)?)
        .output()
        .context("running hack/images.sh import")?;
    ensure!(
        out.status.success(),
        "importing the images failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(archives)
}

/// The state directory of the cluster (where `env`, `values.yaml` and the PKI are).
pub fn cluster_dir(cluster: &TestCluster) -> Result<PathBuf> {
    Ok(PathBuf::from(cluster.var("PATROL_CLUSTER_DIR")?))
}

/// `helm install` of the chart as release `patrol` in `patrol-system` with the cluster's
/// values and `extra` flags, then waits until both Deployments are rolled out. Returns
/// the time from `helm install` to both Ready.
pub fn install(cluster: &TestCluster, extra: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    helm_release(cluster, "install", extra)?;
    wait_rolled_out(cluster, Duration::from_secs(240))?;
    wait_service_answers(cluster, Duration::from_secs(30))?;
    Ok(started.elapsed())
}

/// Ready pods are not yet a reachable Service: kube-proxy programs the new endpoints about
/// a second later, and until then the apiserver's webhook calls meet a refused connection.
/// Waits until `/readyz` answers through the Service address the apiserver uses.
fn wait_service_answers(cluster: &TestCluster, timeout: Duration) -> Result<()> {
    let url = format!("{}/readyz", cluster.var("PATROL_ISSUER")?);
    let ca = cluster.var("PATROL_WEBHOOK_CA")?;
    let deadline = Instant::now() + timeout;
    loop {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "2", "--cacert", ca, &url])
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{url} did not answer within {timeout:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `helm upgrade` with the cluster's values and `extra` flags (no wait).
pub fn upgrade(cluster: &TestCluster, extra: &[&str]) -> Result<()> {
    helm_release(cluster, "upgrade", extra)
}

/// `helm VERB patrol charts/patrol -n patrol-system -f <the cluster's values> EXTRA...`.
fn helm_release(cluster: &TestCluster, verb: &str, extra: &[&str]) -> Result<()> {
    let helm = Helm::for_cluster(cluster)?;
    let chart = chart_dir();
    let values = cluster.var("PATROL_CHART_VALUES")?;
    let mut args = vec![
        verb,
        RELEASE,
        chart.to_str().context("chart path")?,
        "--namespace",
        NAMESPACE,
        "-f",
        values,
    ];
    args.extend_from_slice(extra);
    helm.ok(&args)?;
    Ok(())
}

/// Waits until both Deployments have every replica updated and available.
pub fn wait_rolled_out(cluster: &TestCluster, timeout: Duration) -> Result<()> {
    for deployment in ["patrol-operator", "patrol-webhook"] {
        let out = cluster
            .kubectl()
            .args(["rollout", "status", "-n", NAMESPACE])
            .arg(format!("deployment/{deployment}"))
            .arg(format!("--timeout={}s", timeout.as_secs()))
            .output()?;
        if !out.status.success() {
            bail!(
                "deployment {deployment} did not roll out within {timeout:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                describe_pods(cluster)
            );
        }
    }
    Ok(())
}

/// What the release namespace's pods look like, for failure messages.
pub fn describe_pods(cluster: &TestCluster) -> String {
    let run = |args: &[&str]| output_text(cluster.kubectl().args(args));
    format!(
        "{}\n{}",
        run(&["get", "pods", "-n", NAMESPACE, "-o", "wide"]),
        run(&["get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp"])
    )
}

/// What a command printed, stdout then stderr (or why it could not run), for messages.
pub fn output_text(command: &mut Command) -> String {
    command
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_else(|e| e.to_string())
}

/// Uninstalls the release when dropped, unless `uninstalled` was set (a failed test must
/// not leave pods behind for the next one).
pub struct Installed<'a> {
    pub cluster: &'a TestCluster,
    pub uninstalled: bool,
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        if self.uninstalled {
            return;
        }
        if let Ok(helm) = Helm::for_cluster(self.cluster) {
            let _ = helm.run(&["uninstall", RELEASE, "--namespace", NAMESPACE, "--wait"]);
        }
    }
}

/// A path for this test's scratch files.
pub fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("patrol-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The file's text with every `from` replaced by `to`, in order.
pub fn rewrite(path: &Path, replacements: &[(&str, &str)]) -> Result<String> {
    let mut text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for (from, to) in replacements {
        ensure!(
            text.contains(from),
            "{} no longer contains {from:?}",
            path.display()
        );
        text = text.replace(from, to);
    }
    Ok(text)
}

//! The Helm chart (`charts/patrol`) from tests: the pinned helm, rendering into JSON
//! documents, installing into the test cluster.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::{TestCluster, repo_root};

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/patrol")
}

/// A version pinned in `hack/versions.env`, e.g. `HELM_VERSION`.
pub fn pinned_version(name: &str) -> Result<String> {
    let path = repo_root().join("hack/versions.env");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .with_context(|| format!("{name} is not in {}", path.display()))
}

/// The pinned helm, with or without a cluster to talk to.
#[derive(Clone, Debug)]
pub struct Helm {
    pub bin: PathBuf,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    /// Helm for rendering and linting only: `$PATROL_BIN/helm` when set, else the cached
    /// build of `hack/build-control-plane.sh helm` (built on first use; no cluster needed).
    pub fn local() -> Result<Self> {
        if let Some(bin) = std::env::var_os("PATROL_BIN") {
            return Ok(Self {
                bin: Path::new(&bin).join("helm"),
                kubeconfig: None,
            });
        }
        let script = repo_root().join("hack/build-control-plane.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("helm")
            .output()
            .context("running hack/build-control-plane.sh helm")?;
        if !out.status.success() {
            bail!(
                "hack/build-control-plane.sh helm failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cache = match (
            std::env::var_os("PATROL_CACHE"),
            std::env::var_os("XDG_CACHE_HOME"),
            std::env::var_os("HOME"),
        ) {
            (Some(c), _, _) => PathBuf::from(c),
            (None, Some(x), _) => Path::new(&x).join("patrol"),
            (None, None, Some(h)) => Path::new(&h).join(".cache/patrol"),
            (None, None, None) => bail!("neither PATROL_CACHE, XDG_CACHE_HOME nor HOME is set"),
        };
        let bin = cache
            .join("bin")
            .join(format!("helm-{}", pinned_version("HELM_VERSION")?))
            .join("helm");
        if !bin.exists() {
            bail!("{} does not exist after building it", bin.display());
        }
        Ok(Self {
            bin,
            kubeconfig: None,
        })
    }

    /// Helm for the test cluster (its admin kubeconfig), `$PATROL_BIN/helm` of that cluster.
    pub fn for_cluster(cluster: &TestCluster) -> Result<Self> {
        let bin = match cluster.var("PATROL_BIN") {
            Ok(dir) => Path::new(dir).join("helm"),
            Err(_) => Self::local()?.bin,
        };
        Ok(Self {
            bin,
            kubeconfig: Some(cluster.kubeconfig.clone()),
        })
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        if let Some(k) = &self.kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        }
        cmd
    }

    /// Runs helm; the caller judges the exit status.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.command()
            .args(args)
            .output()
            .with_context(|| format!("running {} {}", self.bin.display(), args.join(" ")))
    }

    /// Runs helm and returns stdout, failing with its output when it exits non-zero.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "helm {} failed:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `helm template` of the chart as the pinned Kubernetes version would see it.
    /// `args` are further flags (`--set k=v`, `-f file`, ...).
    pub fn template(&self, release: &str, namespace: &str, args: &[&str]) -> Result<Manifest> {
        let chart = chart_dir();
        let kube_version = pinned_version("KUBERNETES_VERSION")?;
        let mut all = vec![
            "template",
            release,
            chart.to_str().context("chart path is not UTF-8")?,
            "--namespace",
            namespace,
            "--kube-version",
            &kube_version,
        ];
        all.extend_from_slice(args);
        Manifest::parse(&self.ok(&all)?)
    }
}

/// A rendered manifest: every non-empty YAML document, as JSON.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub docs: Vec<Value>,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Self> {
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        Ok(Self { docs })
    }

    /// Every object of a kind.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    /// The one object of a kind with this name.
    pub fn get(&self, kind: &str, name: &str) -> Result<&Value> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .with_context(|| format!("no {kind} {name} in the manifest; have: {:?}", self.names()))
    }

    /// `Kind/name` of every object, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or("?"),
                    d["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect();
        names.sort();
        names
    }

    /// The manifest as one YAML stream (for `kubectl apply -f`).
    pub fn to_yaml(&self) -> Result<String> {
        let mut out = String::new();
        for doc in &self.docs {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(doc)?);
        }
        Ok(out)
    }
}

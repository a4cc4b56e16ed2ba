//! `patrol-admission-config`: prints the MutatingWebhookConfiguration and
//! ValidatingWebhookConfiguration for patrol-webhook as YAML (`kubectl apply -f -`).
//!
//! ```text
//! patrol-admission-config --url https://127.0.0.1:8443 --ca-bundle-file ca.crt
//! patrol-admission-config --service patrol-system/patrol-webhook:443 --ca-bundle-file ca.crt
//! ```

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use patrol_webhook::admission::config::{Endpoint, WebhookConfigOptions, render_yaml};

/// Prints Patrol's admission webhook configurations as YAML.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// `metadata.name` of both configurations.
    #[arg(long, default_value = "patrol")]
    name: String,
    /// Base URL of patrol-webhook, e.g. https://127.0.0.1:8443 (paths are appended).
    #[arg(long, conflicts_with = "service", required_unless_present = "service")]
    url: Option<String>,
    /// The Service in front of patrol-webhook: NAMESPACE/NAME[:PORT].
    #[arg(long)]
    service: Option<String>,
    /// PEM file of the CA that signed patrol-webhook's serving certificate.
    #[arg(long)]
    ca_bundle_file: Option<PathBuf>,
    /// Seconds the apiserver waits for an answer.
    #[arg(long, default_value_t = 5)]
    timeout_seconds: i32,
    /// Only PersonalAccessTokens in namespaces with this label (KEY=VALUE, repeatable).
    #[arg(long = "namespace-label")]
    namespace_labels: Vec<String>,
    /// Only TokenPolicies with this label (KEY=VALUE, repeatable).
    #[arg(long = "policy-label")]
    policy_labels: Vec<String>,
}

fn selector(pairs: &[String]) -> anyhow::Result<Option<LabelSelector>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut labels = BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?} is not KEY=VALUE"))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(Some(LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    }))
}

fn endpoint(args: &Args) -> anyhow::Result<Endpoint> {
    if let Some(url) = &args.url {
        return Ok(Endpoint::Url(url.clone()));
    }
    let Some(service) = &args.service else {
        bail!("give --url or --service")
    };
    let (namespace, rest) = service
        .split_once('/')
        .context("--service must be NAMESPACE/NAME[:PORT]")?;
    let (name, port) = match rest.split_once(':') {
        Some((name, port)) => (
            name,
            Some(port.parse().context("--service port must be a number")?),
        ),
        None => (rest, None),
    };
    Ok(Endpoint::Service {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut options = WebhookConfigOptions::new(args.name.clone(), endpoint(&args)?);
    options.timeout_seconds = args.timeout_seconds;
    if let Some(file) = &args.ca_bundle_file {
        options.ca_bundle =
            Some(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    }
    options.token_namespace_selector = selector(&args.namespace_labels)?;
    options.policy_object_selector = selector(&args.policy_labels)?;
    print!("{}", render_yaml(&options)?);
    Ok(())
}

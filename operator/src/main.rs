//! `patrol-operator`: flags and wiring only; see the library for what it does.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use patrol_api::token::HashParams;
use patrol_operator::run::{Settings, run};

/// Materializes PersonalAccessTokens: argon2id-hashed records, one-time Secrets, lifecycle.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Namespace for token records and the leader lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "patrol-system")]
    namespace: String,
    /// Address serving /healthz, /readyz and /metrics.
    #[arg(long, env = "PATROL_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect one active replica through a coordination.k8s.io Lease.
    #[arg(long, env = "PATROL_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "patrol-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (defaults to the pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Lease duration in seconds; a dead leader is replaced within about this long.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// argon2id memory cost in KiB (OWASP minimum: 19456).
    #[arg(long, default_value_t = HashParams::default().memory_kib)]
    argon2_memory_kib: u32,
    /// argon2id iterations (OWASP minimum with 19 MiB: 2).
    #[arg(long, default_value_t = HashParams::default().iterations)]
    argon2_iterations: u32,
    /// argon2id parallelism.
    #[arg(long, default_value_t = HashParams::default().parallelism)]
    argon2_parallelism: u32,
    /// PATs reconciled concurrently.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// Reconcile PersonalAccessTokens in this namespace only (default: all namespaces).
    #[arg(long, env = "PATROL_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Write TokenPolicy status (counts and conditions). Default: only when watching every
    /// namespace, so that replicas scoped to one namespace do not fight over it.
    #[arg(long, action = clap::ArgAction::Set)]
    token_policy_status: Option<bool>,
    /// Write CredentialProvider status (kind, active credentials). Default: only when
    /// watching every namespace, like --token-policy-status.
    #[arg(long, action = clap::ArgAction::Set)]
    credential_provider_status: Option<bool>,
    /// Issue a PAT's token only when admission attested its owner (patrol-webhook's
    /// mutating webhook does). Turn off only on clusters that run the operator without
    /// patrol-webhook's admission, where whoever may create a PersonalAccessToken may name
    /// any owner.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    require_owner_attestation: bool,
    /// Secret (in --namespace) holding the owner-attestation key; patrol-webhook creates it.
    #[arg(long, default_value = patrol_api::attestation::DEFAULT_SECRET_NAME)]
    owner_attestation_secret: String,
    /// Log format: text or json.
    #[arg(long, env = "PATROL_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "local".into());
        format!("{host}-{}", std::process::id())
    });
    if !args.require_owner_attestation {
        tracing::warn!(
            "--require-owner-attestation=false: tokens are issued for any spec.owner, unvetted"
        );
    }
    let client = kube::Client::try_default().await?;
    run(
        client,
        Settings {
            namespace: args.namespace,
            metrics_addr: args.metrics_addr,
            leader_election: args.leader_election,
            lease_name: args.lease_name,
            identity,
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
            hash: HashParams {
                memory_kib: args.argon2_memory_kib,
                iterations: args.argon2_iterations,
                parallelism: args.argon2_parallelism,
            },
            concurrency: args.concurrency,
            token_policy_status: args
                .token_policy_status
                .unwrap_or(args.watch_namespace.is_none()),
            credential_provider_status: args
                .credential_provider_status
                .unwrap_or(args.watch_namespace.is_none()),
            watch_namespace: args.watch_namespace,
            owner_attestation: args
                .require_owner_attestation
                .then_some(args.owner_attestation_secret),
        },
    )
    .await
}

fn init_tracing(format: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = fmt().with_env_filter(filter).with_target(false);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

//! `patrol-webhook`: flags and wiring only; see the library for what it does.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use patrol_webhook::{
    limiter::LimitConfig,
    oauth::OAuthSettings,
    routes::HttpLimits,
    server::{Settings, run},
    tls::install_ring_provider,
    token_review::IdentityMapping,
    validate::ValidatorConfig,
    verify_pool::VerifyPool,
};

/// Patrol's token service: authenticates PersonalAccessTokens for the kube-apiserver
/// (TokenReview webhook) and admits PersonalAccessTokens and TokenPolicies (admission
/// webhooks) over HTTPS.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, env = "PATROL_LISTEN", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain to serve (reloaded when it changes).
    #[arg(
        long,
        env = "PATROL_TLS_CERT",
        default_value = "/etc/patrol/tls/tls.crt"
    )]
    tls_cert: PathBuf,
    /// PEM private key of the certificate (reloaded when it changes).
    #[arg(
        long,
        env = "PATROL_TLS_KEY",
        default_value = "/etc/patrol/tls/tls.key"
    )]
    tls_key: PathBuf,
    /// How often to check the certificate files for changes, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = duration)]
    tls_reload_interval: Duration,
    /// Namespace of the token record Secrets (the operator's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "patrol-system")]
    namespace: String,
    /// Prefix added to the owner's username in TokenReview answers.
    #[arg(long, default_value = "")]
    username_prefix: String,
    /// Prefix of the group each granted scope becomes.
    #[arg(long, default_value = "patrol:scope:")]
    scope_group_prefix: String,
    /// Audiences PATs are valid for (comma-separated). Empty: audience-unaware, valid for
    /// the kube-apiserver's own audience only.
    #[arg(long, value_delimiter = ',')]
    audiences: Vec<String>,
    /// How long a successful validation is reused; `0s` disables the cache.
    #[arg(long, default_value = "30s", value_parser = duration)]
    cache_ttl: Duration,
    /// Most entries in the validation cache.
    #[arg(long, default_value_t = 100_000)]
    cache_max_entries: usize,
    /// Concurrent argon2 verifications (default: cores - 1, at least 1).
    #[arg(long)]
    argon2_workers: Option<usize>,
    /// argon2 verifications allowed to wait for a worker before answering 503.
    #[arg(long, default_value_t = 1_024)]
    argon2_max_queue: usize,
    /// Failed verifications a client address may make at once (0 disables the limit).
    #[arg(long, default_value_t = 50)]
    client_failure_burst: u32,
    /// Failed verifications a client address regains per minute.
    #[arg(long, default_value_t = 600)]
    client_failures_per_minute: u32,
    /// Failed verifications one token id may receive at once (0 disables the limit).
    #[arg(long, default_value_t = 10)]
    token_failure_burst: u32,
    /// Failed verifications a token id regains per minute.
    #[arg(long, default_value_t = 6)]
    token_failures_per_minute: u32,
    /// At most one status.lastUsedAt write per token per this interval.
    #[arg(long, default_value = "1m", value_parser = duration)]
    last_used_debounce: Duration,
    /// Longest time to answer one request.
    #[arg(long, default_value = "10s", value_parser = duration)]
    request_timeout: Duration,
    /// Largest TokenReview body, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    review_body_limit: usize,
    /// Largest AdmissionReview body (/mutate, /validate), in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    admission_body_limit: usize,
    /// Issuer of exchanged tokens, e.g. `https://patrol.example`: enables /oauth2/token,
    /// /oauth2/introspect, /.well-known/openid-configuration and /jwks. Must equal the
    /// `issuer.url` of the kube-apiserver's JWT authenticator, byte for byte.
    #[arg(long, env = "PATROL_ISSUER")]
    issuer: Option<String>,
    /// Secret (in --namespace) holding the signing keys of exchanged tokens.
    #[arg(long, default_value = "patrol-signing-keys")]
    signing_keys_secret: String,
    /// Secret (in --namespace) holding the key that attests vetted owners to the operator;
    /// created when absent. The operator reads the same Secret.
    #[arg(long, default_value = patrol_api::attestation::DEFAULT_SECRET_NAME)]
    owner_attestation_secret: String,
    /// How long each signing key signs before the next one (published a period ahead) takes over.
    #[arg(long, default_value = "30d", value_parser = duration)]
    signing_key_rotation: Duration,
    /// Longest lifetime of an exchanged token, whatever policy allows; a retired signing
    /// key stays published this long (plus 5m of clock skew).
    #[arg(long, default_value = "24h", value_parser = duration)]
    max_exchanged_token_ttl: Duration,
    /// Audience of exchanged tokens when the request names none and neither the PAT nor
    /// its policies set a default (clients that send no audience, such as the seed
    /// platform's SDK). Empty: such requests are refused. Published in discovery as
    /// `patrol_default_audience`.
    #[arg(long, env = "PATROL_DEFAULT_AUDIENCE", default_value = "")]
    default_audience: String,
    /// Do not mint associated credentials: an exchange asking for scope `credentials`
    /// gets none (for installations without the RBAC CredentialProviders need).
    #[arg(long)]
    no_credentials: bool,
    /// Largest /oauth2/token or /oauth2/introspect body, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    oauth_body_limit: usize,
    /// After SIGTERM, keep serving (and report not ready) this long before closing the
    /// listener, so the Service stops routing new connections here first.
    #[arg(long, default_value = "0s", value_parser = duration)]
    drain_delay: Duration,
    /// Time in-flight requests get to finish once the listener closes.
    #[arg(long, default_value = "15s", value_parser = duration)]
    shutdown_grace: Duration,
    /// Log format: text or json.
    #[arg(long, env = "PATROL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn duration(text: &str) -> Result<Duration, String> {
    patrol_api::duration::parse(text).map_err(|e| e.to_string())
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    IdentityMapping::check_scope_group_prefix(&args.scope_group_prefix)
        .map_err(anyhow::Error::msg)?;
    install_ring_provider();
    let settings = Settings {
        listen: args.listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_reload_interval: args.tls_reload_interval,
        namespace: args.namespace,
        owner_attestation_secret: args.owner_attestation_secret,
        identity: IdentityMapping {
            username_prefix: args.username_prefix,
            scope_group_prefix: args.scope_group_prefix,
            audiences: args
                .audiences
                .into_iter()
                .filter(|a| !a.is_empty())
                .collect(),
        },
        validator: ValidatorConfig {
            cache_ttl: args.cache_ttl,
            cache_max_entries: args.cache_max_entries,
            client_limit: LimitConfig {
                burst: args.client_failure_burst,
                per_minute: args.client_failures_per_minute,
                max_keys: 65_536,
            },
            token_limit: LimitConfig {
                burst: args.token_failure_burst,
                per_minute: args.token_failures_per_minute,
                max_keys: 200_000,
            },
            argon2_workers: args
                .argon2_workers
                .unwrap_or_else(VerifyPool::default_workers),
            argon2_max_queue: args.argon2_max_queue,
        },
        http: HttpLimits {
            request_timeout: args.request_timeout,
            review_body_limit: args.review_body_limit,
            admission_body_limit: args.admission_body_limit,
            oauth_body_limit: args.oauth_body_limit,
            ..HttpLimits::default()
        },
        last_used_debounce: args.last_used_debounce,
        oauth: match &args.issuer {
            None => None,
            Some(issuer) => Some(
                OAuthSettings::new(
                    issuer,
                    args.signing_keys_secret.clone(),
                    args.signing_key_rotation,
                    args.max_exchanged_token_ttl,
                )
                .and_then(|s| s.with_default_audience(Some(args.default_audience.clone())))
                .map_err(anyhow::Error::msg)?,
            ),
        },
        credentials: !args.no_credentials,
        drain_delay: args.drain_delay,
        shutdown_grace: args.shutdown_grace,
    };
    let client = kube::Client::try_default().await?;
    run(settings, client).await
}

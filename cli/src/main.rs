//! `kubectl-pat`: Patrol's command line (a kubectl plugin by name: `kubectl pat …`).
//!
//! - `credential`: the exec-credential plugin. kubectl runs it for every request that needs
//!   a token; it trades the PAT for a short-lived JWT at Patrol's token endpoint, caches
//!   the JWT, and hands kubectl the JWT with its expiry. The PAT never reaches the
//!   apiserver.
//! - `exchange`: the same trade, printed, for scripts.
//! - `kubeconfig`: a kubeconfig whose user runs `credential`.
//! - `create` and `rotate` (wait until issued, reveal once, acknowledge), `describe`,
//!   `list` (`--mine`), `revoke` (by name, `--token-id`, or `--leaked` from stdin) and
//!   `whoami`: the PersonalAccessToken objects, through the usual kubeconfig.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result, bail};
use chrono::{SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use zeroize::Zeroizing;

mod cache;
mod cluster;
mod describe;
mod exchange;
mod private;
mod reveal;
mod tokens;

use exchange::{Ask, ExchangeError, Exchanged, Issuer};

#[derive(Parser)]
#[command(
    name = "kubectl-pat",
    version,
    about = "Personal Access Tokens for Kubernetes (Patrol)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    kube: cluster::KubeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Exec-credential plugin: print a client.authentication.k8s.io ExecCredential holding a
    /// JWT exchanged for the PAT (cached until shortly before it expires).
    Credential(PatArgs),
    /// Exchange the PAT for a JWT and print it (`-o json`: with its expiry and scopes).
    Exchange {
        #[command(flatten)]
        exchange: PatArgs,
        /// Output: the bare token, or json.
        #[arg(short, long, default_value = "token", value_parser = ["token", "json"])]
        output: String,
    },
    /// Print a kubeconfig whose user runs `kubectl pat credential` (merge it with
    /// `KUBECONFIG=~/.kube/config:patrol.yaml kubectl config view --flatten`).
    Kubeconfig {
        #[command(flatten)]
        exchange: PatArgs,
        /// The apiserver URL.
        #[arg(long)]
        server: String,
        /// PEM file of the apiserver's CA.
        #[arg(long)]
        server_certificate_authority: PathBuf,
        /// Name of the cluster, user and context entries.
        #[arg(long, default_value = "patrol")]
        name: String,
        /// The plugin command kubectl runs (default: kubectl-pat, found on PATH).
        #[arg(long, default_value = "kubectl-pat")]
        command: String,
    },
    /// Print a shell completion script (e.g. `source <(kubectl-pat completion bash)`).
    Completion { shell: clap_complete::Shell },
    /// Create a PersonalAccessToken, wait until it is issued, reveal its token once and
    /// acknowledge it (its one-time Secret is removed). The token goes to standard output
    /// when that is not a terminal, else to a 0600 file.
    Create {
        /// The PersonalAccessToken's name.
        name: String,
        /// What the token is for, as people will read it (default: its name).
        #[arg(long)]
        display_name: Option<String>,
        /// Scopes that narrow what the token may do (repeat or comma-separate; default: all
        /// of your rights).
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. 30d or 12h (default: the policy's).
        #[arg(long)]
        ttl: Option<String>,
        /// Audiences its exchanged JWTs may carry (repeat or comma-separate; default: those
        /// the policy allows).
        #[arg(long = "audience", value_delimiter = ',')]
        audiences: Vec<String>,
        /// Owner, when not you (admission checks that you may impersonate them).
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        namespaces: OneNamespace,
        #[command(flatten)]
        reveal: RevealArgs,
    },
    /// Give a PersonalAccessToken a new token now, wait for it, and reveal it once like
    /// `create`. The old token stops working at once, or after --grace.
    Rotate {
        /// The PersonalAccessToken's name.
        name: String,
        /// How long the old token keeps working, e.g. 1h (sets spec.rotation.gracePeriod).
        #[arg(long)]
        grace: Option<String>,
        #[command(flatten)]
        namespaces: OneNamespace,
        #[command(flatten)]
        reveal: RevealArgs,
    },
    /// Show a PersonalAccessToken: phase, token, expiry, last use, conditions and events.
    Describe {
        /// The PersonalAccessToken's name.
        name: String,
        #[command(flatten)]
        namespaces: OneNamespace,
        /// Output: text, json or yaml.
        #[arg(short, long, default_value = "text", value_parser = ["text", "json", "yaml"])]
        output: String,
    },
    /// Who the apiserver says you are, and the Patrol token (scopes, expiry) that says so.
    Whoami {
        /// Output: text, or the SelfSubjectReview's user as json.
        #[arg(short, long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// List PersonalAccessTokens.
    List {
        #[command(flatten)]
        namespaces: Namespaces,
        /// Only the tokens you own (the apiserver filters on spec.owner.username).
        #[arg(long)]
        mine: bool,
        /// Output: a table, json or yaml.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json", "yaml"])]
        output: String,
    },
    /// Revoke a PersonalAccessToken for good: by name, by token id, or from a leaked token.
    Revoke {
        /// The PersonalAccessToken's name (in -n, or the kubeconfig's namespace).
        #[arg(required_unless_present_any = ["token_id", "leaked"], conflicts_with_all = ["token_id", "leaked"])]
        name: Option<String>,
        /// Revoke the PAT whose current (or grace-period) token has this id (every namespace
        /// unless -n).
        #[arg(long, conflicts_with = "leaked")]
        token_id: Option<String>,
        /// Read a leaked token from standard input and revoke the PAT it belongs to (every
        /// namespace unless -n). The token is never printed.
        #[arg(long)]
        leaked: bool,
        #[command(flatten)]
        namespaces: Namespaces,
    },
}

#[derive(Args)]
struct Namespaces {
    /// Namespace (default: the kubeconfig's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
}

impl Namespaces {
    fn scope(&self, all_by_default: bool) -> tokens::Scope {
        match (&self.namespace, self.all_namespaces || all_by_default) {
            (Some(ns), _) => tokens::Scope::Namespace(Some(ns.clone())),
            (None, true) => tokens::Scope::All,
            (None, false) => tokens::Scope::Namespace(None),
        }
    }
}

#[derive(Args)]
struct OneNamespace {
    /// Namespace (default: the kubeconfig's).
    #[arg(short, long)]
    namespace: Option<String>,
}

impl OneNamespace {
    fn scope(&self) -> tokens::Scope {
        tokens::Scope::Namespace(self.namespace.clone())
    }
}

/// Where a revealed token goes.
#[derive(Args)]
struct RevealArgs {
    /// Write the token to this file (created 0600; replaced if it exists).
    #[arg(long, value_name = "PATH", conflicts_with = "print")]
    token_file: Option<PathBuf>,
    /// Print the token on standard output even when it is a terminal.
    #[arg(long)]
    print: bool,
    /// How long to wait for the operator to issue the token.
    #[arg(long, default_value = "60s")]
    timeout: String,
}

/// Where and how long: decided before anything is created, so a bad `--timeout` or an
/// unusable token file changes nothing.
struct RevealPlan {
    timeout: std::time::Duration,
    to: reveal::Destination,
    namespace: String,
}

impl RevealArgs {
    fn plan(&self, client: &kube::Client, scope: &tokens::Scope, name: &str) -> Result<RevealPlan> {
        let timeout = patrol_api::duration::parse(&self.timeout)
            .map_err(|e| anyhow::anyhow!("--timeout {:?}: {e}", self.timeout))?;
        let namespace = match scope {
            tokens::Scope::Namespace(Some(ns)) => ns.clone(),
            _ => client.default_namespace().to_owned(),
        };
        let to = reveal::destination(
            self.print,
            self.token_file.as_deref(),
            std::io::stdout().is_terminal(),
            || reveal::default_token_file(&namespace, name),
        )?;
        Ok(RevealPlan {
            timeout,
            to,
            namespace,
        })
    }
}

/// Waits for the token of `name`, reveals it where `plan` says, acknowledges it.
async fn reveal_new_token(
    client: &kube::Client,
    scope: &tokens::Scope,
    name: &str,
    awaited: &reveal::Awaited,
    plan: RevealPlan,
) -> Result<()> {
    let RevealPlan {
        timeout,
        to,
        namespace,
    } = plan;
    let pats = tokens::api(client, scope);
    let chatty = std::io::stderr().is_terminal();
    let pat = reveal::wait_revealable(&pats, name, awaited, timeout, |why| {
        if chatty {
            eprintln!("kubectl-pat: waiting for the token: {why}");
        }
    })
    .await?;
    let secrets = kube::Api::namespaced(client.clone(), &namespace);
    let token = reveal::read_token(&secrets, &pat).await?;
    reveal::deliver(&token, &to)?;
    eprintln!("{}", reveal::summary(&pat, Utc::now()));
    if let reveal::Destination::File(path) = &to {
        eprintln!(
            "The token is in {} (0600). It is shown nowhere else: the one-time Secret is removed now.\nUse it without sending it to the apiserver: kubectl pat kubeconfig --token-file {} --issuer <Patrol's issuer> ...",
            path.display(),
            path.display()
        );
    }
    if let Err(e) = reveal::acknowledge(&pats, &pat).await {
        eprintln!("kubectl-pat: warning: {e:#}");
    }
    Ok(())
}

/// Where the PAT is, and what to trade it for.
#[derive(Args, Clone)]
struct PatArgs {
    /// Patrol's issuer URL (the `issuer` of its discovery document).
    #[arg(long, env = "PATROL_ISSUER")]
    issuer: String,
    /// PEM file of the CA that signed Patrol's serving certificate.
    #[arg(long, env = "PATROL_CERTIFICATE_AUTHORITY")]
    certificate_authority: Option<PathBuf>,
    /// File holding the PAT (kept 0600; the PAT is read, never copied elsewhere).
    #[arg(
        long,
        conflicts_with = "token_env",
        required_unless_present = "token_env"
    )]
    token_file: Option<PathBuf>,
    /// Name of an environment variable holding the PAT.
    #[arg(long)]
    token_env: Option<String>,
    /// Audience of the JWT (default: the PAT's default audience).
    #[arg(long)]
    audience: Option<String>,
    /// Scopes to narrow the JWT to (repeat or comma-separate; default: all the PAT holds).
    #[arg(long = "scope", value_delimiter = ',')]
    scopes: Vec<String>,
    /// Cache directory (default: $XDG_CACHE_HOME/patrol or ~/.cache/patrol).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Exchange every time; read and write no cache.
    #[arg(long)]
    no_cache: bool,
}

impl PatArgs {
    fn pat(&self) -> Result<Zeroizing<String>> {
        let text = match (&self.token_file, &self.token_env) {
            (Some(file), _) => {
                Zeroizing::new(std::fs::read_to_string(file).with_context(|| {
                    format!("reading the PAT from --token-file {}", file.display())
                })?)
            }
            (None, Some(var)) => Zeroizing::new(std::env::var(var).with_context(|| {
                format!("reading the PAT from environment variable {var} (--token-env)")
            })?),
            (None, None) => bail!("give --token-file or --token-env"),
        };
        let pat = Zeroizing::new(text.trim().to_owned());
        if pat.is_empty() {
            bail!("the PAT is empty; put the token from the PAT's Secret there");
        }
        Ok(pat)
    }

    fn ask(&self) -> Ask {
        Ask {
            audience: self.audience.clone(),
            scopes: self
                .scopes
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
        }
    }

    fn cache_path(&self, pat: &str) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        let dir = self.cache_dir.clone().or_else(cache::default_dir)?;
        Some(cache::entry_path(
            &dir,
            &self.issuer,
            self.audience.as_deref(),
            &self.scopes,
            pat,
        ))
    }

    /// A fresh JWT: from the cache, else exchanged (and cached).
    fn jwt(&self, use_cache: bool) -> Result<Exchanged> {
        let pat = self.pat()?;
        let path = self.cache_path(&pat).filter(|_| use_cache);
        if let Some(hit) = path.as_deref().and_then(|p| cache::read(p, Utc::now())) {
            return Ok(hit);
        }
        let issuer = Issuer::new(&self.issuer, self.certificate_authority.as_deref())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let result = runtime.block_on(issuer.exchange(&pat, &self.ask()));
        match (result, path) {
            (Ok(jwt), Some(path)) => {
                if let Err(e) = cache::write(&path, &jwt) {
                    eprintln!("kubectl-pat: warning: not cached: {e:#}");
                }
                Ok(jwt)
            }
            (Ok(jwt), None) => Ok(jwt),
            (Err(e), path) => {
                if let (ExchangeError::Refused { .. }, Some(path)) = (&e, path) {
                    cache::remove(&path);
                }
                Err(e.into())
            }
        }
    }
}

/// The ExecCredential kubectl reads; its apiVersion follows what kubectl asked for.
fn exec_credential(jwt: &Exchanged) -> serde_json::Value {
    let api_version = std::env::var("KUBERNETES_EXEC_INFO")
        .ok()
        .and_then(|info| serde_json::from_str::<serde_json::Value>(&info).ok())
        .and_then(|info| info["apiVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "client.authentication.k8s.io/v1".to_owned());
    json!({
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "status": {
            "token": jwt.access_token,
            "expirationTimestamp": jwt.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        },
    })
}

fn kubeconfig(
    exchange: &PatArgs,
    server: &str,
    server_ca: &Path,
    name: &str,
    command: &str,
) -> Result<serde_json::Value> {
    let absolute =
        |p: &Path| -> Result<String> { Ok(std::path::absolute(p)?.display().to_string()) };
    let mut args = vec![
        "credential".to_owned(),
        format!("--issuer={}", exchange.issuer),
    ];
    if let Some(ca) = &exchange.certificate_authority {
        args.push(format!("--certificate-authority={}", absolute(ca)?));
    }
    match (&exchange.token_file, &exchange.token_env) {
        (Some(file), _) => args.push(format!("--token-file={}", absolute(file)?)),
        (None, Some(var)) => args.push(format!("--token-env={var}")),
        (None, None) => bail!("give --token-file or --token-env"),
    }
    if let Some(audience) = &exchange.audience {
        args.push(format!("--audience={audience}"));
    }
    if !exchange.scopes.is_empty() {
        args.push(format!("--scope={}", exchange.scopes.join(",")));
    }
    if let Some(dir) = &exchange.cache_dir {
        args.push(format!("--cache-dir={}", absolute(dir)?));
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": absolute(server_ca)?}}],
        "users": [{"name": name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": command,
            "args": args,
            "interactiveMode": "Never",
            "provideClusterInfo": false,
            "installHint": "kubectl-pat is Patrol's kubectl plugin: put it on your PATH (see Patrol's user guide).",
        }}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }))
}

/// Runs `work` with a kube client from the usual kubeconfig resolution and flags.
fn with_kube<T>(
    kube: &cluster::KubeArgs,
    work: impl AsyncFnOnce(kube::Client) -> Result<T>,
) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async { work(kube.connect().await?).await })
}

fn run(cli: Cli) -> Result<()> {
    let kube = &cli.kube;
    match cli.command {
        Command::Create {
            name,
            display_name,
            scopes,
            ttl,
            audiences,
            owner,
            namespaces,
            reveal,
        } => {
            let scope = namespaces.scope();
            let new = tokens::NewToken {
                name: name.clone(),
                display_name,
                scopes: scopes.into_iter().filter(|s| !s.is_empty()).collect(),
                ttl,
                owner,
                audiences: audiences.into_iter().filter(|s| !s.is_empty()).collect(),
            };
            new.object()?; // bad flags fail before anything is created
            with_kube(kube, async |client| {
                let plan = reveal.plan(&client, &scope, &name)?;
                tokens::create(&client, &scope, &new).await?;
                reveal_new_token(&client, &scope, &name, &reveal::Awaited::default(), plan).await
            })?;
        }
        Command::Rotate {
            name,
            grace,
            namespaces,
            reveal,
        } => {
            let scope = namespaces.scope();
            with_kube(kube, async |client| {
                let plan = reveal.plan(&client, &scope, &name)?;
                let before = tokens::get(&client, &scope, &name).await?;
                let request = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
                let after =
                    tokens::request_rotation(&client, &before, &request, grace.as_deref()).await?;
                let awaited = reveal::Awaited {
                    rotation_request: Some(after.rotation_request()),
                    replaced: before.status.and_then(|s| s.token_id),
                };
                reveal_new_token(&client, &scope, &name, &awaited, plan).await
            })?;
        }
        Command::Describe {
            name,
            namespaces,
            output,
        } => {
            let scope = namespaces.scope();
            let (pat, events) = with_kube(kube, async |client| {
                let pat = tokens::get(&client, &scope, &name).await?;
                let events = tokens::events(&client, &pat).await?;
                Ok((pat, events))
            })?;
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&pat)?),
                "yaml" => print!("{}", serde_yaml::to_string(&pat)?),
                _ => print!("{}", describe::render(&pat, events.as_deref(), Utc::now())),
            }
        }
        Command::Whoami { output } => {
            let (user, pat) = with_kube(kube, async |client| {
                let user = tokens::whoami(&client).await?;
                // Best effort: the token may not permit reading PersonalAccessTokens.
                let pat = match describe::patrol_token(&user) {
                    Some((_, Some(named))) => match named.split_once('/') {
                        Some((ns, name)) => {
                            let scope = tokens::Scope::Namespace(Some(ns.to_owned()));
                            tokens::get(&client, &scope, name).await.ok()
                        }
                        None => None,
                    },
                    Some((id, None)) => tokens::holding(&client, &tokens::Scope::All, &id)
                        .await
                        .ok()
                        .and_then(|mut pats| pats.pop()),
                    None => None,
                };
                Ok((user, pat))
            })?;
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&user)?),
                _ => print!(
                    "{}",
                    describe::render_whoami(&user, pat.as_ref(), Utc::now())
                ),
            }
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "kubectl-pat",
                &mut std::io::stdout(),
            );
        }
        Command::List {
            namespaces,
            mine,
            output,
        } => {
            let scope = namespaces.scope(false);
            let pats = with_kube(kube, async |client| {
                let owner = if mine {
                    Some(tokens::username(&client).await?)
                } else {
                    None
                };
                tokens::list(&client, &scope, owner.as_deref()).await
            })?;
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&pats)?),
                "yaml" => print!("{}", serde_yaml::to_string(&pats)?),
                _ if pats.is_empty() => eprintln!("No PersonalAccessTokens found."),
                _ => println!(
                    "{}",
                    tokens::table(&pats, matches!(scope, tokens::Scope::All))
                ),
            }
        }
        Command::Revoke {
            name,
            token_id,
            leaked,
            namespaces,
        } => {
            let id = match (token_id, leaked) {
                (Some(id), _) => Some(id),
                (None, true) => Some(tokens::leaked_token_id(std::io::stdin())?),
                (None, false) => None,
            };
            let scope = namespaces.scope(id.is_some());
            let revoked = with_kube(kube, async |client| {
                let pats = match (&id, &name) {
                    (Some(id), _) => tokens::holding(&client, &scope, id).await?,
                    (None, Some(name)) => vec![tokens::get(&client, &scope, name).await?],
                    (None, None) => {
                        bail!("name a PersonalAccessToken, or give --token-id or --leaked")
                    }
                };
                if pats.is_empty() {
                    bail!(
                        "no PersonalAccessToken holds token {} here: it may be revoked or expired already, or live in a namespace you cannot list (try -n)",
                        id.as_deref().unwrap_or_default()
                    );
                }
                for pat in &pats {
                    tokens::revoke(&client, pat).await?;
                }
                Ok(pats)
            })?;
            for pat in revoked {
                println!(
                    "personalaccesstoken {}/{} revoked",
                    pat.metadata.namespace.unwrap_or_default(),
                    pat.metadata.name.unwrap_or_default()
                );
            }
        }
        Command::Credential(exchange) => {
            let jwt = exchange.jwt(true)?;
            println!("{}", exec_credential(&jwt));
        }
        Command::Exchange { exchange, output } => {
            let jwt = exchange.jwt(false)?;
            if output == "json" {
                let answer = json!({
                    "accessToken": jwt.access_token,
                    "expiresAt": jwt.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    "scope": jwt.scope,
                });
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                if std::io::stdout().is_terminal() {
                    eprintln!(
                        "kubectl-pat: a JWT until {}:",
                        jwt.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true)
                    );
                }
                println!("{}", jwt.access_token);
            }
        }
        Command::Kubeconfig {
            exchange,
            server,
            server_certificate_authority,
            name,
            command,
        } => {
            let config = kubeconfig(
                &exchange,
                &server,
                &server_certificate_authority,
                &name,
                &command,
            )?;
            print!("{}", serde_yaml::to_string(&config)?);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubectl-pat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_runs_the_plugin_with_absolute_paths() {
        let cli = Cli::parse_from([
            "kubectl-pat",
            "kubeconfig",
            "--issuer=https://patrol.example",
            "--certificate-authority=ca.pem",
            "--token-file=pat.txt",
            "--audience=kubernetes",
            "--scope=read:pods,ci:push",
            "--server=https://10.0.0.1:6443",
            "--server-certificate-authority=/etc/k8s/ca.crt",
        ]);
        let Command::Kubeconfig {
            exchange,
            server,
            server_certificate_authority,
            name,
            command,
        } = cli.command
        else {
            panic!("not kubeconfig");
        };
        let config = kubeconfig(
            &exchange,
            &server,
            &server_certificate_authority,
            &name,
            &command,
        )
        .unwrap();
        let exec = &config["users"][0]["user"]["exec"];
        assert_eq!(exec["command"], "kubectl-pat");
        assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
        let args: Vec<&str> = exec["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            args,
            [
                "credential".to_owned(),
                "--issuer=https://patrol.example".to_owned(),
                format!("--certificate-authority={}", cwd.join("ca.pem").display()),
                format!("--token-file={}", cwd.join("pat.txt").display()),
                "--audience=kubernetes".to_owned(),
                "--scope=read:pods,ci:push".to_owned(),
            ]
        );
        assert_eq!(
            config["clusters"][0]["cluster"]["certificate-authority"],
            "/etc/k8s/ca.crt"
        );
        assert_eq!(config["current-context"], "patrol");
    }

    #[test]
    fn the_exec_credential_carries_the_jwt_and_its_expiry() {
        let jwt = Exchanged {
            access_token: "eyJ.a.b".into(),
            expires_at: "2026-12-03T12:00:00Z".parse().unwrap(),
            scope: None,
        };
        let credential = exec_credential(&jwt);
        assert_eq!(credential["kind"], "ExecCredential");
        assert_eq!(
            credential["status"],
            json!({"token": "eyJ.a.b", "expirationTimestamp": "2026-12-03T12:00:00Z"})
        );
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_cover_every_command() {
        use clap::CommandFactory;
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "kubectl-pat",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        for command in [
            "credential",
            "exchange",
            "kubeconfig",
            "list",
            "revoke",
            "--leaked",
            "--mine",
        ] {
            assert!(script.contains(command), "{command}");
        }
    }

    #[test]
    fn a_pat_comes_from_exactly_one_place() {
        assert!(Cli::try_parse_from(["kubectl-pat", "credential", "--issuer=https://i"]).is_err());
        assert!(
            Cli::try_parse_from([
                "kubectl-pat",
                "credential",
                "--issuer=https://i",
                "--token-file=a",
                "--token-env=B",
            ])
            .is_err()
        );
    }
}

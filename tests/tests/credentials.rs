//! Associated credentials against the real kube-apiserver, operator, token service and a
//! real PostgreSQL: the seed platform's client flow (discovery, then an exchange with
//! `scope=credentials` and no audience), ServiceAccount tokens the apiserver itself refuses
//! once the PAT is revoked, database users dropped with the token, the sweep of expired
//! credentials, and bad input that changes nothing.
//!
//! Its own test binary: the token service holds the apiserver's webhook port, so one test
//! runs the whole story.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use http::StatusCode;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use patrol_api::{
    lease,
    v1alpha1::{CredentialProvider, PersonalAccessToken, Phase},
};
use patrol_e2e::{
    eventually,
    operator::{Operator, OperatorOptions, delivered_token, wait_for_phase},
    postgres::Postgres,
    token_service::{TokenService, jwt_claims},
};
use serde_json::{Value, json};

const OWNER: &str = "carol@example.com";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TT_PAT: &str = "urn:ietf:params:oauth:token-type:pat";
const FIELD_MANAGER: &str = "patrol-e2e";

struct Story {
    service: TokenService,
    _operator: Operator,
    pg: Postgres,
    pats: Api<PersonalAccessToken>,
    providers: Api<CredentialProvider>,
    leases: Api<Secret>,
    /// Cluster-scoped names are suffixed with this, so concurrent runs do not collide.
    suffix: String,
    /// Every secret handed out, for the log scan at the end.
    secrets: Vec<String>,
}

impl Story {
    fn provider_name(&self, base: &str) -> String {
        format!("{base}-{}", self.suffix)
    }

    async fn apply_provider(&self, base: &str, spec: Value) -> Result<()> {
        let name = self.provider_name(base);
        let object = json!({
            "apiVersion": "patrol.dev/v1alpha1",
            "kind": "CredentialProvider",
            "metadata": {"name": name},
            "spec": spec,
        });
        self.providers
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("applying CredentialProvider {name}"))?;
        Ok(())
    }

    /// Creates a PAT owned by [`OWNER`] and returns its plaintext token once Active.
    async fn pat(&self, name: &str, spec: Value) -> Result<String> {
        let mut spec = spec;
        spec["displayName"] = json!(name);
        spec["owner"] = json!({"username": OWNER});
        let pat: PersonalAccessToken = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1",
            "kind": "PersonalAccessToken",
            "metadata": {"name": name},
            "spec": spec,
        }))?;
        self.pats.create(&PostParams::default(), &pat).await?;
        wait_for_phase(&self.pats, name, Phase::Active, Duration::from_secs(30)).await?;
        let token = eventually(Duration::from_secs(10), || async {
            delivered_token(
                self.service.cluster,
                &self.service.pats.name,
                &format!("{name}-token"),
            )
            .await?
            .context("no delivered Secret yet")
        })
        .await?;
        // The webhook answers from its index, fed by a watch.
        eventually(Duration::from_secs(10), || async {
            let r = self.exchange(&token, &[]).await?;
            ensure!(r.status == StatusCode::OK, "not indexed yet: {}", r.body);
            Ok(())
        })
        .await?;
        Ok(token)
    }

    /// The seed platform's request: public client, PAT token type, no audience.
    async fn exchange(
        &self,
        token: &str,
        extra: &[(&str, &str)],
    ) -> Result<patrol_e2e::token_service::Reply> {
        let mut pairs = vec![
            ("grant_type", GRANT),
            ("subject_token", token),
            ("subject_token_type", TT_PAT),
            ("client_id", "seed-cli"),
        ];
        pairs.extend_from_slice(extra);
        self.service.post_form("/oauth2/token", &pairs).await
    }

    async fn leases_of(&self, token_id: &str) -> Result<Vec<Secret>> {
        Ok(self
            .leases
            .list(&ListParams::default().labels(&lease::selector_for_token(token_id)))
            .await?
            .items)
    }

    fn roles_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.pg.psql(
            "postgres",
            &format!("SELECT rolname FROM pg_roles WHERE rolname LIKE '{prefix}%' ORDER BY 1"),
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    async fn revoke(&self, name: &str) -> Result<()> {
        self.pats
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"revoked": true}})),
            )
            .await?;
        Ok(())
    }
}

async fn db_login(
    host: &str,
    port: u16,
    db: &str,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::Config::new()
        .host(host)
        .port(port)
        .dbname(db)
        .user(user)
        .password(password)
        .connect_timeout(Duration::from_secs(5))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

fn field<'a>(body: &'a Value, key: &str) -> Result<&'a str> {
    body[key]
        .as_str()
        .with_context(|| format!("the response has no {key}: {body}"))
}

#[tokio::test]
async fn exchanges_return_credentials_that_end_with_the_token() -> Result<()> {
    let service =
        TokenService::start("creds", &["--default-audience", "kubernetes-patrol"]).await?;
    let cluster = service.cluster;
    let operator = Operator::start(
        cluster,
        &service.pats,
        &service.records,
        OperatorOptions {
            args: vec!["--credential-provider-status=true".into()],
            ..OperatorOptions::default()
        },
    )?;
    let client = cluster.client().await?;
    let ns = service.pats.name.clone();

    // A database with a read-only group role, and the admin role Patrol connects as.
    let pg = Postgres::start()?;
    pg.create_database("analytics")?;
    pg.psql(
        "analytics",
        "CREATE TABLE metrics (n int); INSERT INTO metrics VALUES (42);
         CREATE ROLE analytics_read NOLOGIN;
         GRANT SELECT ON metrics TO analytics_read;
         CREATE ROLE patrol_admin LOGIN CREATEROLE PASSWORD 'admin-pw-e2e';
         GRANT analytics_read TO patrol_admin WITH ADMIN OPTION;
         GRANT pg_signal_backend TO patrol_admin;",
    )?;
    let admin_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pg-admin"},
        "stringData": {"username": "patrol_admin", "password": "admin-pw-e2e"},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &service.records.name)
        .create(&PostParams::default(), &admin_secret)
        .await?;

    let mut story = Story {
        pats: Api::namespaced(client.clone(), &ns),
        providers: Api::all(client.clone()),
        leases: Api::namespaced(client.clone(), &service.records.name),
        suffix: format!("{}", std::process::id()),
        secrets: Vec::new(),
        _operator: operator,
        service,
        pg,
    };
    let selects_ns = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    let prefix = format!("e2e{}_", story.suffix);
    story
        .apply_provider(
            "analytics",
            json!({
                "namespaceSelector": selects_ns,
                "postgres": {
                    "host": story.pg.host, "port": story.pg.port, "database": "analytics",
                    "adminSecret": {"name": "pg-admin"}, "groupRole": "analytics_read",
                    "sslMode": "Disable", "rolePrefix": prefix,
                },
            }),
        )
        .await?;

    // 1. The seed platform's client: discovery first, then the exchange it always sends.
    let discovery = story
        .service
        .get("/.well-known/openid-configuration")
        .await?;
    ensure!(
        discovery.status == StatusCode::OK,
        "discovery: {}",
        discovery.body
    );
    assert_eq!(
        discovery.body["patrol_default_audience"],
        "kubernetes-patrol"
    );
    assert!(
        discovery.body["scopes_supported"]
            .as_array()
            .is_some_and(|s| s.contains(&json!("credentials")))
    );
    let token_endpoint = field(&discovery.body, "token_endpoint")?.to_owned();
    assert!(token_endpoint.ends_with("/oauth2/token"));

    let seed = story
        .pat("seed", json!({"scopes": ["credentials"]}))
        .await?;
    let started = Instant::now();
    let reply = story.exchange(&seed, &[("scope", "credentials")]).await?;
    ensure!(reply.status == StatusCode::OK, "exchange: {}", reply.body);
    let body = reply.body.clone();
    let claims = jwt_claims(field(&body, "access_token")?)?;
    assert_eq!(
        claims["aud"], "kubernetes-patrol",
        "the service default audience"
    );
    assert_eq!(claims["client_id"], "seed-cli");
    let user = field(&body, "db_username")?.to_owned();
    let password = field(&body, "db_password")?.to_owned();
    story.secrets.push(password.clone());
    assert!(user.starts_with(&prefix), "{user}");
    assert_eq!(field(&body, "db_host")?, story.pg.host);
    assert_eq!(field(&body, "db_port")?, story.pg.port.to_string());
    assert_eq!(field(&body, "db_database")?, "analytics");
    let entry = &body["credentials"][story.provider_name("analytics")];
    assert_eq!(entry["type"], "postgres");
    assert_eq!(entry["username"], user.as_str());
    println!(
        "exchange with a PostgreSQL credential took {:?}",
        started.elapsed()
    );

    // The user logs in with a real client and can do what the group role allows.
    let db = db_login(&story.pg.host, story.pg.port, "analytics", &user, &password).await?;
    let n: i32 = db.query_one("SELECT n FROM metrics", &[]).await?.get(0);
    assert_eq!(n, 42);
    let denied = db.execute("INSERT INTO metrics VALUES (1)", &[]).await;
    ensure!(denied.is_err(), "the group role grants no INSERT");
    let seed_pat = story.pats.get("seed").await?;
    let seed_id = seed_pat
        .status
        .as_ref()
        .and_then(|s| s.token_id.clone())
        .context("no token id")?;
    let leases = story.leases_of(&seed_id).await?;
    assert_eq!(leases.len(), 1, "one lease per credential");
    let lease_json = serde_json::to_string(&leases[0])?;
    ensure!(!lease_json.contains(&password), "a lease holds no password");

    // Revoking the PAT drops the role and ends the session.
    story.revoke("seed").await?;
    let revoked_at = Instant::now();
    eventually(Duration::from_secs(10), || async {
        ensure!(
            story.roles_with_prefix(&user)?.is_empty(),
            "role {user} still exists"
        );
        Ok(())
    })
    .await?;
    println!(
        "PostgreSQL role dropped {:?} after revocation",
        revoked_at.elapsed()
    );
    ensure!(
        db.query_one("SELECT 1", &[]).await.is_err(),
        "the revoked user's session was ended"
    );
    ensure!(
        db_login(&story.pg.host, story.pg.port, "analytics", &user, &password)
            .await
            .is_err(),
        "the revoked user cannot log in"
    );
    ensure!(
        story.leases_of(&seed_id).await?.is_empty(),
        "its lease is gone"
    );

    // 2. A ServiceAccount token, bound to a Secret Patrol deletes on revocation.
    for args in [
        vec!["create", "serviceaccount", "deployer", "-n", &ns],
        vec![
            "create",
            "role",
            "cm-reader",
            "--verb=list",
            "--resource=configmaps",
            "-n",
            &ns,
        ],
        vec![
            "create",
            "rolebinding",
            "cm-reader",
            "--role=cm-reader",
            &format!("--serviceaccount={ns}:deployer"),
            "-n",
            &ns,
        ],
        vec![
            "create",
            "role",
            "impersonate-deployer",
            "--verb=impersonate",
            "--resource=serviceaccounts",
            "--resource-name=deployer",
            "-n",
            &ns,
        ],
        vec![
            "create",
            "rolebinding",
            "impersonate-deployer",
            "--role=impersonate-deployer",
            "--user",
            OWNER,
            "-n",
            &ns,
        ],
        vec!["create", "serviceaccount", "stranger", "-n", &ns],
    ] {
        cluster.kubectl_ok(&args)?;
    }
    story
        .apply_provider(
            "deploy",
            json!({"namespaceSelector": selects_ns, "serviceAccount": {}}),
        )
        .await?;
    let deploy = story
        .pat(
            "deploy",
            json!({"credentials": {"serviceAccount": {"name": "deployer"}}}),
        )
        .await?;
    let deploy_provider = story.provider_name("deploy");
    let reply = eventually(Duration::from_secs(10), || async {
        let r = story.exchange(&deploy, &[("scope", "credentials")]).await?;
        ensure!(r.status == StatusCode::OK, "exchange: {}", r.body);
        ensure!(
            r.body["credentials"][&deploy_provider]["token"].is_string(),
            "the provider is not loaded yet: {}",
            r.body
        );
        Ok(r)
    })
    .await?;
    let sa_token = reply.body["credentials"][&deploy_provider]["token"]
        .as_str()
        .context("no ServiceAccount token")?
        .to_owned();
    story.secrets.push(sa_token.clone());
    story
        .secrets
        .push(field(&reply.body, "db_password")?.to_owned());
    let whoami = story
        .service
        .kubectl_ok_as(
            &sa_token,
            &["auth", "whoami", "-o", "json"],
            Duration::from_secs(10),
        )
        .await?;
    ensure!(
        whoami.contains(&format!("system:serviceaccount:{ns}:deployer")),
        "the token is the ServiceAccount's: {whoami}"
    );
    story
        .service
        .kubectl_ok_as(
            &sa_token,
            &["get", "configmaps", "-n", &ns],
            Duration::from_secs(10),
        )
        .await?;

    // kube-apiserver caches a successful token authentication for 10 seconds (a fixed
    // TokenSuccessCacheTTL, no flag), so a token used within the last 10 s outlives its
    // bound object that long. Wait that cache out, to measure Patrol's part: from
    // revocation to the apiserver refusing the token.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let bindings: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let binding_label = format!(
        "{}={}",
        patrol_api::record::COMPONENT_LABEL,
        lease::BOUND_COMPONENT
    );
    ensure!(
        !bindings
            .list(&ListParams::default().labels(&binding_label))
            .await?
            .items
            .is_empty(),
        "the token is bound to a Secret in the ServiceAccount's namespace"
    );
    story.revoke("deploy").await?;
    let revoked_at = Instant::now();
    // Not polled with the token itself: an attempt that lands before the revocation would
    // be cached by the apiserver for 10 s.
    eventually(Duration::from_secs(5), || async {
        ensure!(
            bindings
                .list(&ListParams::default().labels(&binding_label))
                .await?
                .items
                .is_empty(),
            "the binding Secret still exists"
        );
        Ok(())
    })
    .await?;
    let unbound_after = revoked_at.elapsed();
    // The apiserver reads bound objects from its informer cache: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    story
        .service
        .kubectl_refused_as(&sa_token, &["get", "configmaps", "-n", &ns])?;
    let refused_after = revoked_at.elapsed();
    println!(
        "ServiceAccount token unbound {unbound_after:?} and refused {refused_after:?} after the PAT was revoked"
    );
    ensure!(
        refused_after < Duration::from_secs(1),
        "the apiserver refused the derived token only after {refused_after:?}"
    );

    // 3. Bad input: a clear OAuth error, and nothing half-created.
    let open = story.pat("open", json!({})).await?;
    let r = story
        .exchange(&open, &[("scope", "credentials:nope")])
        .await?;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "{}",
        r.body
    );
    let narrow = story
        .pat("narrow", json!({"scopes": ["read:pods"]}))
        .await?;
    let r = story.exchange(&narrow, &[("scope", "credentials")]).await?;
    assert_eq!(r.body["error"], "invalid_scope", "{}", r.body);

    let stranger = story
        .pat(
            "stranger",
            json!({"credentials": {"serviceAccount": {"name": "stranger"}}}),
        )
        .await?;
    let r = story
        .exchange(&stranger, &[("scope", "credentials")])
        .await?;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope")),
        "{}",
        r.body
    );
    let stranger_id = story
        .pats
        .get("stranger")
        .await?
        .status
        .and_then(|s| s.token_id)
        .context("id")?;
    ensure!(
        story.leases_of(&stranger_id).await?.is_empty(),
        "a refused ServiceAccount left a lease"
    );

    // A database that is down, sorted after the working one: the working one's role is
    // undone, the error says retry, and no lease or role remains.
    let closed = patrol_e2e::process::free_port()?;
    story
        .apply_provider(
            "zz-down",
            json!({
                "namespaceSelector": selects_ns,
                "postgres": {
                    "host": "127.0.0.1", "port": closed, "database": "analytics",
                    "adminSecret": {"name": "pg-admin"}, "groupRole": "analytics_read",
                    "sslMode": "Disable", "rolePrefix": prefix,
                },
            }),
        )
        .await?;
    let open_id = story
        .pats
        .get("open")
        .await?
        .status
        .and_then(|s| s.token_id)
        .context("id")?;
    let before = story.roles_with_prefix(&prefix)?;
    let r = eventually(Duration::from_secs(10), || async {
        let r = story.exchange(&open, &[("scope", "credentials")]).await?;
        ensure!(
            r.status != StatusCode::OK,
            "the down provider is not loaded yet"
        );
        Ok(r)
    })
    .await?;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("temporarily_unavailable")
        ),
        "{}",
        r.body
    );
    assert_eq!(
        story.roles_with_prefix(&prefix)?,
        before,
        "no role left behind"
    );
    ensure!(
        story.leases_of(&open_id).await?.is_empty(),
        "no lease left behind"
    );
    story
        .providers
        .delete(&story.provider_name("zz-down"), &Default::default())
        .await?;

    // 4. Expired credentials are swept: a provider whose credentials live 3 seconds.
    story
        .apply_provider(
            "brief",
            json!({
                "namespaceSelector": selects_ns, "ttl": "3s",
                "postgres": {
                    "host": story.pg.host, "port": story.pg.port, "database": "analytics",
                    "adminSecret": {"name": "pg-admin"}, "groupRole": "analytics_read",
                    "sslMode": "Disable", "rolePrefix": prefix,
                },
            }),
        )
        .await?;
    let brief = story.provider_name("brief");
    let r = eventually(Duration::from_secs(10), || async {
        let r = story
            .exchange(&open, &[("scope", &format!("credentials:{brief}"))])
            .await?;
        ensure!(r.status == StatusCode::OK, "exchange: {}", r.body);
        Ok(r)
    })
    .await?;
    let brief_user = field(&r.body, "db_username")?.to_owned();
    story
        .secrets
        .push(field(&r.body, "db_password")?.to_owned());
    assert_eq!(
        story.roles_with_prefix(&brief_user)?,
        vec![brief_user.clone()]
    );
    eventually(Duration::from_secs(20), || async {
        ensure!(
            story.roles_with_prefix(&brief_user)?.is_empty(),
            "not swept yet"
        );
        ensure!(
            story.leases_of(&open_id).await?.is_empty(),
            "lease not swept yet"
        );
        Ok(())
    })
    .await?;
    let status = story.providers.get(&brief).await?.status;
    ensure!(
        status.as_ref().and_then(|s| s.kind.as_deref()) == Some("Postgres"),
        "the sweep reports the provider's kind: {status:?}"
    );

    // Deleting a PAT revokes its credentials too.
    let r = story.exchange(&open, &[("scope", "credentials")]).await?;
    ensure!(r.status == StatusCode::OK, "exchange: {}", r.body);
    story
        .secrets
        .push(field(&r.body, "db_password")?.to_owned());
    let open_user = field(&r.body, "db_username")?.to_owned();
    story.pats.delete("open", &Default::default()).await?;
    eventually(Duration::from_secs(10), || async {
        ensure!(
            story.roles_with_prefix(&open_user)?.is_empty(),
            "role {open_user} remains"
        );
        Ok(())
    })
    .await?;

    // No credential in any log or in the leases.
    story
        .service
        .assert_logs_clean(&story.secrets.iter().map(String::as_str).collect::<Vec<_>>())?;
    let all_leases =
        serde_json::to_string(&story.leases.list(&ListParams::default()).await?.items)?;
    for secret in &story.secrets {
        ensure!(
            !all_leases.contains(secret.as_str()),
            "a lease holds a credential"
        );
    }
    ensure!(
        !story.pg.log().contains(&password),
        "the database logged a password"
    );
    for name in ["analytics", "deploy", "brief"] {
        let _ = story
            .providers
            .delete(&story.provider_name(name), &Default::default())
            .await;
    }
    Ok(())
}

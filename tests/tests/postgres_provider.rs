//! The PostgreSQL provider against a real server, one per test: an admin role with
//! CREATEROLE (not superuser) mints a dynamic user that reads through its group role, and
//! revocation ends the user's sessions and drops it; failures come back as the variants a
//! caller acts on, and no message or server log carries a password.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::Utc;
use patrol_credentials::postgres::{
    Admin, AdminLogin, PostgresError, SslMode, Target, new_password, new_username,
};
use patrol_e2e::{eventually, postgres::Postgres, process};
use tokio_postgres::{Client, NoTls, error::SqlState};
use zeroize::Zeroizing;

const DATABASE: &str = "analytics";
const GROUP: &str = "analytics_read";
const TIMEOUT: Duration = Duration::from_secs(5);

/// A server with the database, a group role that may read one table, and the admin role.
struct Fixture {
    pg: Postgres,
    admin_password: Zeroizing<String>,
}

impl Fixture {
    fn new(pg: Postgres) -> Result<Fixture> {
        Self::with_signal_backend(pg, true)
    }

    fn with_signal_backend(pg: Postgres, signal_backend: bool) -> Result<Fixture> {
        let admin_password = new_password()?;
        pg.create_database(DATABASE)?;
        pg.psql(
            DATABASE,
            &format!(
                "CREATE ROLE {GROUP} NOLOGIN;
                 CREATE TABLE events (id int PRIMARY KEY, name text NOT NULL);
                 INSERT INTO events VALUES (1, 'signup');
                 GRANT USAGE ON SCHEMA public TO {GROUP};
                 GRANT SELECT ON events TO {GROUP};
                 CREATE ROLE patrol_admin LOGIN CREATEROLE PASSWORD '{}';
                 GRANT {GROUP} TO patrol_admin WITH ADMIN OPTION;",
                admin_password.as_str()
            ),
        )?;
        if signal_backend {
            pg.psql(DATABASE, "GRANT pg_signal_backend TO patrol_admin")?;
        }
        Ok(Fixture { pg, admin_password })
    }

    fn target(&self, ssl: SslMode) -> Target {
        Target {
            host: self.pg.host.clone(),
            port: self.pg.port,
            database: DATABASE.into(),
            ssl,
        }
    }

    fn login(&self) -> AdminLogin {
        AdminLogin {
            username: "patrol_admin".into(),
            password: self.admin_password.clone(),
        }
    }

    async fn admin(&self) -> Result<Admin> {
        Ok(Admin::connect(&self.target(SslMode::Disable), &self.login(), TIMEOUT).await?)
    }

    fn role_count(&self, name: &str) -> Result<String> {
        self.pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{name}'"),
        )
    }

    /// Logs in as `user` over plain TCP (the server's `host` rule, SCRAM).
    async fn connect_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.pg.host)
            .port(self.pg.port)
            .dbname(DATABASE)
            .user(user)
            .password(password)
            .connect_timeout(TIMEOUT);
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

fn start() -> Result<Fixture> {
    Fixture::new(Postgres::start()?)
}

#[tokio::test]
async fn a_dynamic_user_reads_through_its_group_and_is_gone_after_revocation() -> Result<()> {
    let fx = start()?;
    // Every statement in the server's log, to show the password is not among them.
    fx.pg.psql(
        "postgres",
        "ALTER SYSTEM SET log_statement = 'all'; SELECT pg_reload_conf();",
    )?;
    let admin = fx.admin().await?;
    let user = new_username("patrol_")?;
    let password = new_password()?;
    admin
        .create_user(
            &user,
            &password,
            Utc::now() + chrono::Duration::hours(1),
            GROUP,
        )
        .await?;

    let attributes = fx.pg.psql(
        "postgres",
        &format!(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolvaliduntil > now(), \
                    rolpassword LIKE 'SCRAM-SHA-256$4096:%' \
             FROM pg_authid WHERE rolname = '{user}'"
        ),
    )?;
    assert_eq!(attributes, "t|f|f|t|t");
    assert_eq!(
        fx.pg.psql(
            "postgres",
            &format!("SELECT pg_has_role('{user}', '{GROUP}', 'USAGE')")
        )?,
        "t"
    );

    let session = fx.connect_as(&user, &password).await?;
    let row = session
        .query_one("SELECT name FROM events WHERE id = 1", &[])
        .await?;
    assert_eq!(row.get::<_, String>(0), "signup");
    let insert = session
        .execute("INSERT INTO events VALUES (2, 'forged')", &[])
        .await
        .expect_err("the group role may only read");
    assert_eq!(insert.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));

    let log = fx.pg.log();
    ensure!(
        log.contains("CREATE ROLE") && log.contains("SCRAM-SHA-256$"),
        "log_statement=all should have logged the CREATE ROLE with its verifier:\n{log}"
    );
    assert!(
        !log.contains(password.as_str()),
        "the password reached the server log"
    );

    admin.drop_user(&user).await?;
    // The open session was ended, not left running as a dropped role.
    let after = session.simple_query("SELECT 1").await;
    assert!(after.is_err(), "the user's session survived revocation");
    assert!(session.is_closed());
    let relogin = fx
        .connect_as(&user, &password)
        .await
        .err()
        .context("a dropped user logged in")?;
    assert_eq!(relogin.code(), Some(&SqlState::INVALID_PASSWORD));
    assert_eq!(fx.role_count(&user)?, "0");

    // Revocation is idempotent.
    admin.drop_user(&user).await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_group_role_fails_and_leaves_no_role() -> Result<()> {
    let fx = start()?;
    let admin = fx.admin().await?;
    let user = new_username("patrol_")?;
    let err = admin
        .create_user(
            &user,
            &new_password()?,
            Utc::now() + chrono::Duration::hours(1),
            "no_such_group",
        )
        .await
        .expect_err("the group role does not exist");
    assert!(
        matches!(&err, PostgresError::GroupRoleMissing { group_role } if group_role == "no_such_group"),
        "{err:?}"
    );
    assert!(err.to_string().contains("no_such_group"), "{err}");
    assert_eq!(fx.role_count(&user)?, "0");
    Ok(())
}

#[tokio::test]
async fn creating_an_existing_role_is_role_exists() -> Result<()> {
    let fx = start()?;
    let admin = fx.admin().await?;
    let user = new_username("patrol_")?;
    let until = Utc::now() + chrono::Duration::hours(1);
    admin
        .create_user(&user, &new_password()?, until, GROUP)
        .await?;
    let err = admin
        .create_user(&user, &new_password()?, until, GROUP)
        .await
        .expect_err("the role exists");
    assert!(matches!(err, PostgresError::RoleExists { .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn revoking_a_role_that_does_not_exist_is_ok() -> Result<()> {
    let fx = start()?;
    let admin = fx.admin().await?;
    admin.drop_user(&new_username("patrol_")?).await?;
    Ok(())
}

#[tokio::test]
async fn an_expired_user_cannot_log_in() -> Result<()> {
    let fx = start()?;
    let admin = fx.admin().await?;
    let user = new_username("patrol_")?;
    let password = new_password()?;
    admin
        .create_user(
            &user,
            &password,
            Utc::now() - chrono::Duration::minutes(1),
            GROUP,
        )
        .await?;
    let err = fx
        .connect_as(&user, &password)
        .await
        .err()
        .context("a user past VALID UNTIL logged in")?;
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_is_reported_within_the_timeout() -> Result<()> {
    // Nothing listens on a port that was just free.
    let target = Target {
        host: "127.0.0.1".into(),
        port: process::free_port()?,
        database: DATABASE.into(),
        ssl: SslMode::Disable,
    };
    let login = AdminLogin {
        username: "patrol_admin".into(),
        password: Zeroizing::new("unused".into()),
    };
    let started = Instant::now();
    let err = Admin::connect(&target, &login, Duration::from_secs(2))
        .await
        .expect_err("nothing listens");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(err, PostgresError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains(&target.address()), "{err}");

    // A listener that never answers (the kernel completes the handshake, no one reads).
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let target = Target {
        port: silent.local_addr()?.port(),
        ..target
    };
    let started = Instant::now();
    let err = Admin::connect(&target, &login, Duration::from_secs(1))
        .await
        .expect_err("nothing answers");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, PostgresError::Unreachable { .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn login_failures_are_classified_and_show_no_password() -> Result<()> {
    let fx = start()?;
    let wrong = new_password()?;
    let login = AdminLogin {
        username: "patrol_admin".into(),
        password: wrong.clone(),
    };
    let err = Admin::connect(&fx.target(SslMode::Disable), &login, TIMEOUT)
        .await
        .expect_err("wrong password");
    assert!(matches!(err, PostgresError::AuthFailed { .. }), "{err:?}");
    let shown = format!("{err} / {err:?}");
    assert!(shown.contains("patrol_admin"), "{shown}");
    assert!(!shown.contains(wrong.as_str()), "{shown}");
    assert!(!shown.contains(fx.admin_password.as_str()), "{shown}");

    let mut no_database = fx.target(SslMode::Disable);
    no_database.database = "no_such_database".into();
    let err = Admin::connect(&no_database, &fx.login(), TIMEOUT)
        .await
        .expect_err("the database does not exist");
    assert!(matches!(err, PostgresError::Rejected { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("no_such_database"), "{err}");
    Ok(())
}

#[tokio::test]
async fn the_admin_reconnects_after_its_session_is_terminated() -> Result<()> {
    let fx = start()?;
    let admin = fx.admin().await?;
    fx.pg.psql(
        "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'patrol_admin'",
    )?;
    eventually(TIMEOUT, || async {
        ensure!(admin.is_closed(), "the admin connection still looks open");
        Ok(())
    })
    .await?;
    let user = new_username("patrol_")?;
    admin
        .create_user(
            &user,
            &new_password()?,
            Utc::now() + chrono::Duration::hours(1),
            GROUP,
        )
        .await?;
    assert!(!admin.is_closed());
    assert_eq!(fx.role_count(&user)?, "1");
    Ok(())
}

#[tokio::test]
async fn revocation_without_pg_signal_backend_says_so_and_still_blocks_new_logins() -> Result<()> {
    let fx = Fixture::with_signal_backend(Postgres::start()?, false)?;
    let admin = fx.admin().await?;
    let user = new_username("patrol_")?;
    let password = new_password()?;
    admin
        .create_user(
            &user,
            &password,
            Utc::now() + chrono::Duration::hours(1),
            GROUP,
        )
        .await?;
    let _session = fx.connect_as(&user, &password).await?;
    let err = admin
        .drop_user(&user)
        .await
        .expect_err("the admin may not end the user's session");
    assert!(
        matches!(err, PostgresError::PermissionDenied { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("pg_signal_backend"), "{err}");
    // The first step of revocation took LOGIN away.
    let relogin = fx.connect_as(&user, &password).await;
    assert!(relogin.is_err(), "a half-revoked user logged in");
    Ok(())
}

#[tokio::test]
async fn verify_full_tls_needs_the_right_ca_and_host() -> Result<()> {
    let fx = Fixture::new(Postgres::start_with_tls()?)?;
    let ca = fx.pg.ca_pem.clone().context("a TLS server has a CA")?;
    let verified = SslMode::VerifyFull {
        ca_pem: Some(ca.clone()),
    };

    let admin = Admin::connect(&fx.target(verified.clone()), &fx.login(), TIMEOUT).await?;
    let user = new_username("patrol_")?;
    admin
        .create_user(
            &user,
            &new_password()?,
            Utc::now() + chrono::Duration::hours(1),
            GROUP,
        )
        .await?;
    admin.drop_user(&user).await?;
    let ssl = fx.pg.psql(
        "postgres",
        "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.usename = 'patrol_admin'",
    )?;
    assert_eq!(ssl, "t");

    // The certificate names 127.0.0.1, not localhost.
    let mut wrong_host = fx.target(verified);
    wrong_host.host = "localhost".into();
    match Admin::connect(&wrong_host, &fx.login(), TIMEOUT).await {
        Err(PostgresError::Tls { .. }) => {}
        other => bail!("connecting to a name the certificate lacks: {other:?}"),
    }

    // The platform's store does not hold the test CA (or is empty).
    match Admin::connect(
        &fx.target(SslMode::VerifyFull { ca_pem: None }),
        &fx.login(),
        TIMEOUT,
    )
    .await
    {
        Err(PostgresError::Tls { .. } | PostgresError::TlsConfig(_)) => {}
        other => bail!("connecting with an untrusted CA: {other:?}"),
    }

    // The server rejects plain TCP (hostnossl ... reject).
    match Admin::connect(&fx.target(SslMode::Disable), &fx.login(), TIMEOUT).await {
        Err(PostgresError::AuthFailed { .. }) => {}
        other => bail!("connecting without TLS: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_mints_and_revocations_share_one_admin_session() -> Result<()> {
    let fx = start()?;
    let admin = fx.admin().await?;
    let until = Utc::now() + chrono::Duration::hours(1);
    let users = (0..8)
        .map(|_| new_username("mint_"))
        .collect::<Result<Vec<_>, _>>()?;
    let passwords = (0..8)
        .map(|_| new_password())
        .collect::<Result<Vec<_>, _>>()?;
    let created = futures::future::join_all(
        users
            .iter()
            .zip(&passwords)
            .map(|(user, password)| admin.create_user(user, password, until, GROUP)),
    )
    .await;
    for result in created {
        result?;
    }
    assert_eq!(
        fx.pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'mint\\_%'"
        )?,
        "8"
    );
    assert_eq!(
        fx.pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'patrol_admin'"
        )?,
        "1"
    );
    let dropped = futures::future::join_all(users.iter().map(|user| admin.drop_user(user))).await;
    for result in dropped {
        result?;
    }
    assert_eq!(
        fx.pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'mint\\_%'"
        )?,
        "0"
    );
    Ok(())
}

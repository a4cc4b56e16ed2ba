//! PostgreSQL dynamic users, like Vault's database secrets engine: Patrol connects as an
//! admin role, creates a LOGIN role with a random password that expires with the
//! credential, member of a group role that holds the privileges, and drops it on
//! revocation.
//!
//! # What the admin role needs
//!
//! - `CREATEROLE` (not superuser), and on PostgreSQL 16 or later `ADMIN OPTION` on each
//!   group role it grants (`GRANT analytics_read TO patrol_admin WITH ADMIN OPTION`).
//! - Membership in `pg_signal_backend`, so revocation can end the sessions of a dropped
//!   user: a `CREATEROLE` role is not a member of the roles it creates (on 16 and later it
//!   holds only `ADMIN OPTION` on them), and PostgreSQL lets only members, or members of
//!   `pg_signal_backend`, terminate a role's sessions.
//!
//! # Secrets
//!
//! The plaintext password never reaches the server: `CREATE ROLE` carries a SCRAM-SHA-256
//! verifier computed here, so `log_statement`, `pg_stat_activity` and error reports show at
//! most the verifier. The admin password travels only inside the SCRAM exchange. No error
//! message of this module contains a password: none is ever part of a statement, and the
//! server's messages quote statements, never the authentication exchange.
//!
//! # TLS
//!
//! [`SslMode::VerifyFull`] is libpq's `sslmode=verify-full` on rustls with the ring
//! provider (`tokio-postgres-rustls`): TLS is required (no fallback to plaintext), the
//! chain is verified against the given CA or the platform's trust store, and the server's
//! certificate must name [`Target::host`]. SCRAM then binds to the TLS channel
//! (`SCRAM-SHA-256-PLUS`) when the server offers it. There is no `prefer`/`require`
//! without verification: an unverified TLS connection would hand the admin's session to
//! whoever sits in the path.
//!
//! # Timeouts
//!
//! One [`Duration`] bounds connecting (TCP, TLS and authentication together) and each
//! statement, on both sides: the client stops waiting, and the session's
//! `statement_timeout` makes the server stop working.

use std::{
    fmt,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio_postgres::{
    Client, Config, NoTls,
    config::SslMode as WireSslMode,
    error::{DbError, SqlState},
};
use tokio_postgres_rustls::MakeRustlsConnect;
use zeroize::Zeroizing;

/// The longest role name PostgreSQL keeps (NAMEDATALEN - 1); longer names are silently
/// truncated, so they are refused here instead.
pub const MAX_ROLE_NAME_BYTES: usize = 63;
/// Random characters in a generated role name: 36^16, about 2^82 names.
pub const USERNAME_RANDOM_CHARS: usize = 16;
/// Characters in a generated password: 62^40, about 2^238 passwords.
pub const PASSWORD_CHARS: usize = 40;

const LOWER_ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// How often revocation looks whether the terminated sessions have ended.
const TERMINATION_POLL: Duration = Duration::from_millis(50);

/// How the connection to the server is secured.
#[derive(Clone, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP (or a Unix socket when [`Target::host`] is a path). Only for a server on
    /// loopback or a network that is trusted end to end: SCRAM keeps the password from an
    /// eavesdropper, but not the statements and results, nor the session from a
    /// man in the middle.
    Disable,
    /// TLS is required and verified like libpq's `sslmode=verify-full`.
    VerifyFull {
        /// PEM with one or more CA certificates to trust; `None` trusts the platform's
        /// store.
        ca_pem: Option<Vec<u8>>,
    },
}

impl fmt::Debug for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disable => f.write_str("Disable"),
            Self::VerifyFull { ca_pem: None } => f.write_str("VerifyFull { ca_pem: None }"),
            Self::VerifyFull { ca_pem: Some(pem) } => {
                write!(f, "VerifyFull {{ ca_pem: <{} bytes> }}", pem.len())
            }
        }
    }
}

/// The server and database Patrol administers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// The database the admin connects to; roles are cluster-wide, so any database
    /// the admin may connect to serves.
    pub database: String,
    pub ssl: SslMode,
}

impl Target {
    /// A target with TLS verified against the system's roots (the admin Secret's `ca.crt`
    /// is filled in when connecting) or without TLS.
    pub fn new(host: &str, port: u16, database: &str, tls: bool) -> Self {
        Self {
            host: host.to_owned(),
            port,
            database: database.to_owned(),
            ssl: if tls {
                SslMode::VerifyFull { ca_pem: None }
            } else {
                SslMode::Disable
            },
        }
    }
}

impl Target {
    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The admin role's credentials.
#[derive(Clone)]
pub struct AdminLogin {
    pub username: String,
    pub password: Zeroizing<String>,
}

impl fmt::Debug for AdminLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminLogin")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What went wrong; every message says what to check, and none contains a password.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("invalid role name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid role name prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        prefix: String,
        reason: &'static str,
    },
    #[error("the password is empty")]
    EmptyPassword,
    #[error("cannot configure TLS for PostgreSQL: {0}")]
    TlsConfig(String),
    #[error(
        "PostgreSQL at {address} is unreachable: {reason}; check the host, the port and that \
         the network lets Patrol reach it"
    )]
    Unreachable { address: String, reason: String },
    #[error(
        "TLS with PostgreSQL at {address} failed: {reason}; check that the server has TLS on, \
         that its certificate names the configured host and that the configured CA signed it"
    )]
    Tls { address: String, reason: String },
    #[error(
        "PostgreSQL at {address} refused the login of {username:?}: {message}; check the admin \
         role's name and password, and that pg_hba.conf admits it from Patrol's address"
    )]
    AuthFailed {
        address: String,
        username: String,
        message: String,
    },
    #[error(
        "PostgreSQL at {address} refused the connection: {message}; check the database name \
         and that the admin role may connect to it"
    )]
    Rejected { address: String, message: String },
    #[error("PostgreSQL at {address} cannot take the connection now: {message}")]
    Unavailable { address: String, message: String },
    #[error(
        "the admin role may not {action}: {message}; it needs CREATEROLE, ADMIN OPTION on the \
         group role (PostgreSQL 16 and later) and membership in pg_signal_backend"
    )]
    PermissionDenied {
        action: &'static str,
        message: String,
    },
    #[error(
        "group role {group_role:?} does not exist; create it (NOLOGIN, with the privileges \
         the users should have) or fix the provider's group role"
    )]
    GroupRoleMissing { group_role: String },
    #[error("role {username:?} already exists; draw a new name")]
    RoleExists { username: String },
    #[error(
        "role {username:?} cannot be dropped because objects depend on it: {detail}; have \
         the group role own shared objects, or reassign or drop what the user owns"
    )]
    RoleHasDependents { username: String, detail: String },
    #[error(
        "PostgreSQL did not {action} within {after:?}; check the server's load, and for a \
         long transaction holding locks on roles"
    )]
    Timeout {
        action: &'static str,
        after: Duration,
    },
    #[error(
        "the connection to PostgreSQL was lost while trying to {action}; it is reopened on \
         the next call"
    )]
    ConnectionLost { action: &'static str },
    #[error("PostgreSQL failed to {action}: {message}")]
    Server {
        action: &'static str,
        message: String,
    },
    #[error("cannot draw random bytes (the system random source failed)")]
    Random,
}

impl PostgresError {
    /// The variant's name, a bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidName { .. } => "InvalidName",
            Self::InvalidPrefix { .. } => "InvalidPrefix",
            Self::EmptyPassword => "EmptyPassword",
            Self::TlsConfig(_) => "TlsConfig",
            Self::Unreachable { .. } => "Unreachable",
            Self::Tls { .. } => "Tls",
            Self::AuthFailed { .. } => "AuthFailed",
            Self::Rejected { .. } => "Rejected",
            Self::Unavailable { .. } => "Unavailable",
            Self::PermissionDenied { .. } => "PermissionDenied",
            Self::GroupRoleMissing { .. } => "GroupRoleMissing",
            Self::RoleExists { .. } => "RoleExists",
            Self::RoleHasDependents { .. } => "RoleHasDependents",
            Self::Timeout { .. } => "Timeout",
            Self::ConnectionLost { .. } => "ConnectionLost",
            Self::Server { .. } => "Server",
            Self::Random => "Random",
        }
    }

    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Unavailable { .. }
                | Self::Timeout { .. }
                | Self::ConnectionLost { .. }
                | Self::Random
        )
    }
}

/// A connection as the admin role, reusable and safe to share across tasks
/// (`tokio_postgres::Client` pipelines concurrent statements); reopened on the next call
/// when the server or the network closed it.
pub struct Admin {
    target: Target,
    login: AdminLogin,
    timeout: Duration,
    tls: Option<MakeRustlsConnect>,
    client: RwLock<Arc<Client>>,
    /// Serialises reconnection, so concurrent callers open one connection, not many.
    reconnecting: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("target", &self.target)
            .field("username", &self.login.username)
            .field("timeout", &self.timeout)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Admin {
    /// Connects and authenticates as the admin role within `timeout`, which also bounds
    /// every later statement and reconnection. No session within the timeout is
    /// [`PostgresError::Unreachable`].
    pub async fn connect(
        target: &Target,
        login: &AdminLogin,
        timeout: Duration,
    ) -> Result<Admin, PostgresError> {
        let tls = tls_connector(&target.ssl)?;
        let client = open(target, login, timeout, tls.clone()).await?;
        Ok(Admin {
            target: target.clone(),
            login: login.clone(),
            timeout,
            tls,
            client: RwLock::new(Arc::new(client)),
            reconnecting: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether the current connection is closed (the next call reopens it).
    pub fn is_closed(&self) -> bool {
        self.current().is_closed()
    }

    /// Creates LOGIN role `username` with `password`, valid until `valid_until`, member of
    /// `group_role` (inheriting its privileges), as one statement: if anything fails,
    /// nothing is left behind. The server receives a SCRAM-SHA-256 verifier, never the
    /// password.
    #[tracing::instrument(skip(self, password), fields(address = %self.target.address()))]
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        valid_until: DateTime<Utc>,
        group_role: &str,
    ) -> Result<(), PostgresError> {
        validate_new_role_name(username)?;
        validate_role_name(group_role)?;
        if password.is_empty() {
            return Err(PostgresError::EmptyPassword);
        }
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let sql = create_role_sql(username, &verifier, valid_until, group_role)?;
        let client = self.client().await?;
        let action = "create the role";
        self.bounded(action, client.batch_execute(&sql))
            .await
            .map_err(|err| match err.as_db_error() {
                Some(db) if *db.code() == SqlState::DUPLICATE_OBJECT => PostgresError::RoleExists {
                    username: username.to_owned(),
                },
                Some(db) if *db.code() == SqlState::UNDEFINED_OBJECT => {
                    PostgresError::GroupRoleMissing {
                        group_role: group_role.to_owned(),
                    }
                }
                _ => self.statement_error(action, err),
            })?;
        tracing::info!("created PostgreSQL user");
        Ok(())
    }

    /// Ends the role's sessions and drops it; `Ok` when it does not exist, so revocation
    /// can be retried after a crash and sweeping needs no bookkeeping.
    ///
    /// The role first loses LOGIN, so no new session can start between the termination
    /// and the drop; the call then waits (within the timeout) until its sessions are gone,
    /// as PostgreSQL lets a role be dropped under a live session.
    #[tracing::instrument(skip(self), fields(address = %self.target.address()))]
    pub async fn drop_user(&self, username: &str) -> Result<(), PostgresError> {
        validate_new_role_name(username)?;
        let role = quote_identifier(username)?;
        let client = self.client().await?;

        let action = "revoke the role's LOGIN";
        match self
            .bounded(
                action,
                client.batch_execute(&format!("ALTER ROLE {role} NOLOGIN")),
            )
            .await
        {
            Ok(()) => {}
            Err(err) if code(&err) == Some(&SqlState::UNDEFINED_OBJECT) => {
                tracing::debug!("PostgreSQL user already gone");
                return Ok(());
            }
            Err(err) => return Err(self.statement_error(action, err)),
        }

        let action = "terminate the role's sessions";
        self.bounded(
            action,
            client.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&username],
            ),
        )
        .await
        .map_err(|err| self.statement_error(action, err))?;
        self.await_sessions_ended(&client, username).await?;

        let action = "drop the role";
        self.bounded(
            action,
            client.batch_execute(&format!("DROP ROLE IF EXISTS {role}")),
        )
        .await
        .map_err(|err| match err.as_db_error() {
            Some(db) if *db.code() == SqlState::DEPENDENT_OBJECTS_STILL_EXIST => {
                PostgresError::RoleHasDependents {
                    username: username.to_owned(),
                    detail: db.detail().unwrap_or(db.message()).to_owned(),
                }
            }
            _ => self.statement_error(action, err),
        })?;
        tracing::info!("dropped PostgreSQL user");
        Ok(())
    }

    /// Polls until no session of `username` remains: `pg_terminate_backend` only signals.
    async fn await_sessions_ended(
        &self,
        client: &Client,
        username: &str,
    ) -> Result<(), PostgresError> {
        let action = "end the role's sessions";
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let row = self
                .bounded(
                    action,
                    client.query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                        &[&username],
                    ),
                )
                .await
                .map_err(|err| self.statement_error(action, err))?;
            let remaining: i64 = row.try_get(0).map_err(|err| PostgresError::Server {
                action,
                message: error_chain(&err),
            })?;
            if remaining == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(PostgresError::Timeout {
                    action,
                    after: self.timeout,
                });
            }
            tokio::time::sleep(TERMINATION_POLL).await;
        }
    }

    fn current(&self) -> Arc<Client> {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The open connection, reopened first if it was closed.
    async fn client(&self) -> Result<Arc<Client>, PostgresError> {
        let current = self.current();
        if !current.is_closed() {
            return Ok(current);
        }
        let _one_at_a_time = self.reconnecting.lock().await;
        let current = self.current();
        if !current.is_closed() {
            return Ok(current);
        }
        tracing::info!(address = %self.target.address(), "reconnecting to PostgreSQL");
        let fresh =
            Arc::new(open(&self.target, &self.login, self.timeout, self.tls.clone()).await?);
        *self.client.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// Runs one statement within the timeout; a timeout maps to `query_canceled`'s error.
    async fn bounded<T>(
        &self,
        action: &'static str,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StatementError> {
        match tokio::time::timeout(self.timeout, statement).await {
            Ok(result) => result.map_err(StatementError::Postgres),
            Err(_) => Err(StatementError::Timeout(PostgresError::Timeout {
                action,
                after: self.timeout,
            })),
        }
    }

    fn statement_error(&self, action: &'static str, err: StatementError) -> PostgresError {
        let err = match err {
            StatementError::Timeout(err) => return err,
            StatementError::Postgres(err) => err,
        };
        match err.as_db_error() {
            Some(db) if *db.code() == SqlState::INSUFFICIENT_PRIVILEGE => {
                PostgresError::PermissionDenied {
                    action,
                    message: server_message(db),
                }
            }
            Some(db) if *db.code() == SqlState::QUERY_CANCELED => PostgresError::Timeout {
                action,
                after: self.timeout,
            },
            Some(db) => PostgresError::Server {
                action,
                message: server_message(db),
            },
            None if err.is_closed() => PostgresError::ConnectionLost { action },
            None => PostgresError::Server {
                action,
                message: error_chain(&err),
            },
        }
    }
}

/// A statement's failure before it is classified for the operation that ran it.
enum StatementError {
    Postgres(tokio_postgres::Error),
    Timeout(PostgresError),
}

impl StatementError {
    fn as_db_error(&self) -> Option<&DbError> {
        match self {
            Self::Postgres(err) => err.as_db_error(),
            Self::Timeout(_) => None,
        }
    }
}

fn code(err: &StatementError) -> Option<&SqlState> {
    err.as_db_error().map(DbError::code)
}

/// The server's message with its detail and hint, which say which privilege is missing.
fn server_message(db: &DbError) -> String {
    let mut message = db.message().to_owned();
    for extra in [db.detail(), db.hint()].into_iter().flatten() {
        message.push_str(" (");
        message.push_str(extra);
        message.push(')');
    }
    message
}

/// Opens and authenticates a connection, sets its statement timeout, and spawns the task
/// that drives it.
async fn open(
    target: &Target,
    login: &AdminLogin,
    timeout: Duration,
    tls: Option<MakeRustlsConnect>,
) -> Result<Client, PostgresError> {
    let mut config = Config::new();
    config
        .host(&target.host)
        .port(target.port)
        .dbname(&target.database)
        .user(&login.username)
        .password(login.password.as_bytes())
        .application_name("patrol")
        .connect_timeout(timeout);
    // One bound for TCP, TLS, authentication and the session setup: a server that takes
    // the connection and then says nothing is as unreachable as one that never answers.
    let statement_timeout = format!(
        "SET statement_timeout = {}",
        timeout.as_millis().clamp(1, i32::MAX as u128)
    );
    let connecting = async {
        let client = match tls {
            None => {
                config.ssl_mode(WireSslMode::Disable);
                let (client, connection) = config.connect(NoTls).await?;
                drive(connection);
                client
            }
            Some(tls) => {
                config.ssl_mode(WireSslMode::Require);
                let (client, connection) = config.connect(tls).await?;
                drive(connection);
                client
            }
        };
        client.batch_execute(&statement_timeout).await?;
        Ok::<_, tokio_postgres::Error>(client)
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => Err(connect_error(target, login, err)),
        Err(_) => Err(PostgresError::Unreachable {
            address: target.address(),
            reason: format!("no session within {timeout:?}"),
        }),
    }
}

fn drive<F>(connection: F)
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "PostgreSQL admin connection closed");
        }
    });
}

fn connect_error(target: &Target, login: &AdminLogin, err: tokio_postgres::Error) -> PostgresError {
    let address = target.address();
    if let Some(db) = err.as_db_error() {
        let code = db.code();
        if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            return PostgresError::AuthFailed {
                address,
                username: login.username.clone(),
                message: server_message(db),
            };
        }
        // Too many connections, starting up, shutting down: the server's state, not
        // Patrol's configuration.
        let busy = code.code().starts_with("53") || code.code().starts_with("57P");
        return if busy {
            PostgresError::Unavailable {
                address,
                message: server_message(db),
            }
        } else {
            PostgresError::Rejected {
                address,
                message: server_message(db),
            }
        };
    }
    if let Some(reason) = tls_failure(&err) {
        return PostgresError::Tls { address, reason };
    }
    PostgresError::Unreachable {
        address,
        reason: error_chain(&err),
    }
}

/// `err` and its causes, `: `-separated: tokio-postgres' own message ("error connecting to
/// server") names no cause.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// The reason when `err` is a TLS failure: rustls' error inside an `io::Error` (the
/// connector's error type), or tokio-postgres' own TLS errors such as a server without TLS.
fn tls_failure(err: &tokio_postgres::Error) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = cause {
        if let Some(rustls) = e.downcast_ref::<rustls::Error>() {
            return Some(rustls.to_string());
        }
        if let Some(rustls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(rustls.to_string());
        }
        cause = e.source();
    }
    err.to_string()
        .starts_with("error performing TLS handshake")
        .then(|| error_chain(err))
}

/// The rustls connector for `VerifyFull`, with the ring provider set explicitly so it does
/// not depend on a process-wide default.
fn tls_connector(ssl: &SslMode) -> Result<Option<MakeRustlsConnect>, PostgresError> {
    let SslMode::VerifyFull { ca_pem } = ssl else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    PostgresError::TlsConfig(format!("the CA bundle is not valid PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    PostgresError::TlsConfig(format!("a CA certificate is not usable: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(PostgresError::TlsConfig(
                    "the CA bundle holds no certificate".into(),
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(PostgresError::TlsConfig(
                    "the platform trust store holds no usable certificate; give the CA bundle"
                        .into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PostgresError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

/// A random role name: `prefix` and [`USERNAME_RANDOM_CHARS`] lowercase letters and
/// digits. The prefix may hold lowercase letters, digits, `_` and `-`, must not start with
/// `pg_` (reserved for the server's roles) and leaves room for the random part.
pub fn new_username(prefix: &str) -> Result<String, PostgresError> {
    let invalid = |reason| PostgresError::InvalidPrefix {
        prefix: prefix.to_owned(),
        reason,
    };
    if prefix.len() + USERNAME_RANDOM_CHARS > MAX_ROLE_NAME_BYTES {
        return Err(invalid("longer than 47 bytes"));
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(invalid("only a-z, 0-9, '_' and '-' are allowed"));
    }
    if prefix.starts_with("pg_") {
        return Err(invalid("names starting with pg_ are reserved"));
    }
    let random = random_chars(LOWER_ALPHANUMERIC, USERNAME_RANDOM_CHARS)?;
    Ok(format!("{prefix}{}", random.as_str()))
}

/// A random password of [`PASSWORD_CHARS`] letters and digits (about 238 bits), wiped from
/// memory when dropped.
pub fn new_password() -> Result<Zeroizing<String>, PostgresError> {
    random_chars(ALPHANUMERIC, PASSWORD_CHARS)
}

/// `len` characters drawn uniformly from `alphabet` (rejection sampling: bytes past the
/// largest multiple of the alphabet's size are skipped, so no character is favoured).
fn random_chars(alphabet: &[u8], len: usize) -> Result<Zeroizing<String>, PostgresError> {
    let rng = SystemRandom::new();
    let limit = 256 - 256 % alphabet.len();
    // Capacity is exact (ASCII), so pushing never reallocates and leaves no stray copy.
    let mut out = Zeroizing::new(String::with_capacity(len));
    let mut bytes = Zeroizing::new([0u8; 64]);
    while out.len() < len {
        rng.fill(bytes.as_mut_slice())
            .map_err(|_| PostgresError::Random)?;
        for &b in bytes.iter() {
            if out.len() == len {
                break;
            }
            if usize::from(b) < limit {
                out.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
            }
        }
    }
    Ok(out)
}

/// A name PostgreSQL keeps as given: not empty, at most 63 bytes, no NUL.
fn validate_role_name(name: &str) -> Result<(), PostgresError> {
    let invalid = |reason| PostgresError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > MAX_ROLE_NAME_BYTES {
        return Err(invalid("longer than 63 bytes"));
    }
    if name.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    Ok(())
}

/// A name Patrol may create or drop: also not one of the server's reserved names, so a
/// mistaken revocation can never reach `pg_signal_backend` and its kin.
fn validate_new_role_name(name: &str) -> Result<(), PostgresError> {
    validate_role_name(name)?;
    if name.starts_with("pg_") || name == "public" || name == "none" {
        return Err(PostgresError::InvalidName {
            name: name.to_owned(),
            reason: "reserved by PostgreSQL",
        });
    }
    Ok(())
}

/// `name` as a quoted identifier: in double quotes, embedded double quotes doubled.
fn quote_identifier(name: &str) -> Result<String, PostgresError> {
    validate_role_name(name)?;
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// `value` as a string literal, as libpq's `PQescapeLiteral` writes it: single quotes
/// doubled, and when there is a backslash the `E'...'` form with backslashes doubled, so
/// the literal means the same whatever `standard_conforming_strings` says.
fn quote_literal(value: &str) -> Option<String> {
    if value.contains('\0') {
        return None;
    }
    let quoted = value.replace('\'', "''");
    Some(if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    })
}

/// The one `CREATE ROLE` statement; `verifier` is the SCRAM-SHA-256 verifier, never a
/// plaintext password.
fn create_role_sql(
    username: &str,
    verifier: &str,
    valid_until: DateTime<Utc>,
    group_role: &str,
) -> Result<String, PostgresError> {
    let role = quote_identifier(username)?;
    let group = quote_identifier(group_role)?;
    let unusable = |what: &str| PostgresError::Server {
        action: "create the role",
        message: format!("the {what} cannot be written as an SQL literal"),
    };
    let verifier = quote_literal(verifier).ok_or_else(|| unusable("password verifier"))?;
    let until = quote_literal(&valid_until.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        .ok_or_else(|| unusable("expiry"))?;
    Ok(format!(
        "CREATE ROLE {role} WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE \
         NOREPLICATION NOBYPASSRLS PASSWORD {verifier} VALID UNTIL {until} IN ROLE {group}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn identifiers_are_quoted_and_embedded_quotes_doubled() {
        assert_eq!(quote_identifier("analytics").unwrap(), "\"analytics\"");
        assert_eq!(
            quote_identifier("a\"; DROP ROLE x; --").unwrap(),
            "\"a\"\"; DROP ROLE x; --\""
        );
        assert_eq!(quote_identifier("Mixed Case").unwrap(), "\"Mixed Case\"");
    }

    #[test]
    fn identifiers_that_postgres_would_alter_are_refused() {
        assert!(matches!(
            quote_identifier(""),
            Err(PostgresError::InvalidName { .. })
        ));
        assert!(quote_identifier("a\0b").is_err());
        assert!(quote_identifier(&"a".repeat(63)).is_ok());
        assert!(quote_identifier(&"a".repeat(64)).is_err());
        // Bytes, not characters: 32 two-byte characters are 64 bytes.
        assert!(quote_identifier(&"é".repeat(32)).is_err());
    }

    #[test]
    fn reserved_names_are_never_created_or_dropped() {
        for name in ["pg_signal_backend", "pg_x", "public", "none"] {
            assert!(validate_new_role_name(name).is_err(), "{name}");
        }
        // ...but a group role may be a predefined one.
        assert!(validate_role_name("pg_read_all_data").is_ok());
    }

    #[test]
    fn literals_are_quoted_like_pq_escape_literal() {
        assert_eq!(quote_literal("abc").unwrap(), "'abc'");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(quote_literal(r"a\'b").unwrap(), r"E'a\\''b'");
        assert_eq!(quote_literal("a\0b"), None);
    }

    #[test]
    fn usernames_are_prefix_and_lowercase_alphanumerics() {
        let name = new_username("patrol_").unwrap();
        assert!(name.starts_with("patrol_"));
        let random = &name["patrol_".len()..];
        assert_eq!(random.len(), USERNAME_RANDOM_CHARS);
        assert!(
            random
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(new_username("patrol_").unwrap(), name);
        assert_eq!(new_username("").unwrap().len(), USERNAME_RANDOM_CHARS);
        assert_eq!(
            new_username(&"p".repeat(47)).unwrap().len(),
            MAX_ROLE_NAME_BYTES
        );
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for prefix in [
            "p".repeat(48),
            "Patrol".into(),
            "a\"b".into(),
            "pg_x".into(),
        ] {
            assert!(
                matches!(
                    new_username(&prefix),
                    Err(PostgresError::InvalidPrefix { .. })
                ),
                "{prefix}"
            );
        }
    }

    #[test]
    fn passwords_are_long_alphanumeric_and_distinct() {
        let a = new_password().unwrap();
        let b = new_password().unwrap();
        assert_eq!(a.len(), PASSWORD_CHARS);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(*a, *b);
    }

    #[test]
    fn random_chars_cover_the_alphabet() {
        // 36 symbols, 2000 draws: each is missing with probability ~ 36 * e^-55.
        let drawn = random_chars(LOWER_ALPHANUMERIC, 2000).unwrap();
        for &c in LOWER_ALPHANUMERIC {
            assert!(drawn.contains(char::from(c)), "{}", char::from(c));
        }
    }

    #[test]
    fn create_role_is_one_statement_with_a_verifier_not_the_password() {
        let password = new_password().unwrap();
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let until = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        let sql = create_role_sql("patrol_abc", &verifier, until, "analytics_read").unwrap();
        assert!(!sql.contains(password.as_str()));
        assert!(sql.contains(&format!("PASSWORD '{verifier}'")));
        assert!(verifier.starts_with("SCRAM-SHA-256$4096:"));
        assert!(sql.starts_with("CREATE ROLE \"patrol_abc\" WITH LOGIN INHERIT NOSUPERUSER"));
        assert!(sql.contains("VALID UNTIL '2030-01-02 03:04:05.000000+00'"));
        assert!(sql.ends_with("IN ROLE \"analytics_read\""));
        assert!(!sql.contains(';'));
    }

    #[test]
    fn create_role_quotes_hostile_names() {
        let until = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let sql = create_role_sql("u", "SCRAM-SHA-256$x", until, "g\" SUPERUSER --").unwrap();
        assert!(sql.ends_with("IN ROLE \"g\"\" SUPERUSER --\""));
    }

    #[test]
    fn admin_login_debug_redacts_the_password() {
        let login = AdminLogin {
            username: "patrol_admin".into(),
            password: Zeroizing::new("hunter2-very-secret".into()),
        };
        let shown = format!("{login:?}");
        assert!(shown.contains("patrol_admin"));
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn tls_configuration_rejects_a_bundle_without_certificates() {
        let ssl = SslMode::VerifyFull {
            ca_pem: Some(b"not a certificate".to_vec()),
        };
        assert!(matches!(
            tls_connector(&ssl),
            Err(PostgresError::TlsConfig(_))
        ));
        assert!(tls_connector(&SslMode::Disable).unwrap().is_none());
    }

    #[test]
    fn error_reasons_are_variant_names() {
        let err = PostgresError::GroupRoleMissing {
            group_role: "g".into(),
        };
        assert_eq!(err.reason(), "GroupRoleMissing");
        assert!(!err.is_transient());
        assert!(
            PostgresError::Timeout {
                action: "x",
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
    }
}

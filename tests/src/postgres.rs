//! A real PostgreSQL server for one test: initdb into a fresh directory, started on a free
//! loopback port with password (SCRAM-SHA-256) authentication for TCP, stopped and removed
//! when the handle drops — also on panic, when its log is printed.
//!
//! It uses the machine's PostgreSQL (`/usr/lib/postgresql/<version>/bin`, the newest when
//! there are several; `PATROL_PG_BIN` names another directory), which
//! `hack/ensure-tools.sh` installs. PostgreSQL refuses to run as root, so as root the
//! server runs as the `postgres` user (`setpriv`, which execs, so the child is the
//! postmaster itself and signals reach it).

use std::{
    io::Write as _,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::process::{free_port, output_with_stdin};

/// How long startup may take before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a free port (another test may take the one found before the server binds).
const PORT_ATTEMPTS: usize = 5;

/// A running server; stopped (fast shutdown) and its directory removed on drop.
pub struct Postgres {
    /// Always `127.0.0.1`.
    pub host: String,
    pub port: u16,
    pub superuser: String,
    pub superuser_password: String,
    /// The CA that signed the server's certificate (for `127.0.0.1` only), when started
    /// with [`Postgres::start_with_tls`].
    pub ca_pem: Option<Vec<u8>>,
    bin: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl Postgres {
    /// A server that accepts TCP connections with a password, with or without TLS (it has
    /// no certificate, so without).
    pub fn start() -> Result<Postgres> {
        Self::start_inner(false)
    }

    /// A server that accepts TCP connections only over TLS (`hostssl`; plain TCP is
    /// rejected), with a certificate for `127.0.0.1` signed by a CA made for it
    /// ([`Postgres::ca_pem`]).
    pub fn start_with_tls() -> Result<Postgres> {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> Result<Postgres> {
        let bin = bin_dir()?;
        let run_as = RunAs::detect()?;
        let dir =
            std::env::temp_dir().join(format!("patrol-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Removed if anything below fails; disarmed once `Postgres` owns the directory.
        let mut cleanup = RemoveOnDrop(Some(dir.clone()));
        run_as.own(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;

        let superuser = "postgres".to_owned();
        let superuser_password = random_password()?;
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, format!("{superuser_password}\n"))?;
        run_as.own(&pwfile)?;
        let data = dir.join("data");
        run_ok(
            run_as
                .command(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", &superuser])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["--auth-host=scram-sha-256", "--auth-local=trust"])
                .args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]),
            "initdb",
        )?;
        std::fs::remove_file(&pwfile)?;

        let (hba, ca_pem) = if tls {
            let ca = make_certificates(&dir, &run_as)?;
            (
                "hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
                Some(ca),
            )
        } else {
            ("host all all 127.0.0.1/32 scram-sha-256\n", None)
        };
        // Rewriting keeps the file's owner (postgres).
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}"),
        )?;
        let sockets = dir.join("sockets");
        std::fs::create_dir(&sockets)?;
        run_as.own(&sockets)?;

        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let log = dir.join(format!("postgres-{port}.log"));
            let file = std::fs::File::create(&log)?;
            let mut cmd = run_as.command(&bin.join("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .arg("-k")
                .arg(&sockets)
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                // Speed over durability: the data dies with the test.
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off", "-c", "shared_buffers=16MB"])
                .args(["-c", "max_connections=40"]);
            if tls {
                cmd.args(["-c", "ssl=on"])
                    .arg("-c")
                    .arg(format!(
                        "ssl_cert_file={}",
                        dir.join("server.crt").display()
                    ))
                    .arg("-c")
                    .arg(format!("ssl_key_file={}", dir.join("server.key").display()));
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .spawn()
                .context("starting postgres")?;
            let mut server = Postgres {
                host: "127.0.0.1".into(),
                port,
                superuser: superuser.clone(),
                superuser_password: superuser_password.clone(),
                ca_pem: ca_pem.clone(),
                bin: bin.clone(),
                dir: dir.clone(),
                child,
            };
            match server.await_ready(&log) {
                Ok(true) => {
                    cleanup.0 = None;
                    return Ok(server);
                }
                // The port was taken: the server exited; the drop below only reaps it.
                Ok(false) => {
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    server.dir = PathBuf::new();
                }
                Err(err) => {
                    server.dir = PathBuf::new();
                    return Err(err);
                }
            }
        }
        bail!("postgres found no free port in {PORT_ATTEMPTS} attempts; last log:\n{last_log}")
    }

    /// `Ok(true)` once the server accepts connections, `Ok(false)` when it exited because
    /// its port was taken.
    fn await_ready(&mut self, log: &Path) -> Result<bool> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                if text.contains("could not bind") || text.contains("Address already in use") {
                    return Ok(false);
                }
                bail!("postgres exited ({status}) while starting; log:\n{text}");
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", &self.host, "-p", &self.port.to_string()])
                .args(["-t", "1"])
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(true);
            }
            ensure!(
                Instant::now() < deadline,
                "postgres not ready within {START_TIMEOUT:?}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `sql` (one or more statements, each on its own, so `CREATE DATABASE` works) in
    /// `database` as the superuser over TCP; returns what it printed, unaligned and
    /// tuples only (`psql -At`), without the final newline.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let out = output_with_stdin(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-h", &self.host, "-p", &self.port.to_string()])
                .args(["-U", &self.superuser, "-d", database, "-f", "-"])
                .env("PGPASSWORD", &self.superuser_password)
                .env("PGCONNECT_TIMEOUT", "10"),
            sql,
        )
        .context("running psql")?;
        ensure!(
            out.status.success(),
            "psql in {database} failed: {}\nSQL:\n{sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout)?;
        Ok(stdout.strip_suffix('\n').unwrap_or(&stdout).to_owned())
    }

    /// Creates a database owned by the superuser.
    pub fn create_database(&self, name: &str) -> Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
        )?;
        Ok(())
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        let log = self.dir.join(format!("postgres-{}.log", self.port));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// Fast shutdown (SIGINT: sessions are ended), then SIGKILL if it takes too long.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.dir.as_os_str().is_empty() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- log of postgres on port {} ---\n{}",
                self.port,
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes a directory on drop unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Who runs the server: this process's user, or `postgres` when this process is root.
enum RunAs {
    Me,
    Postgres { uid: u32, gid: u32 },
}

impl RunAs {
    fn detect() -> Result<RunAs> {
        if std::fs::metadata("/proc/self")?.uid() != 0 {
            return Ok(RunAs::Me);
        }
        let id = |flag: &str| -> Result<u32> {
            let out = Command::new("id").args([flag, "postgres"]).output()?;
            ensure!(
                out.status.success(),
                "running as root needs the OS user postgres (PostgreSQL refuses root); \
                 install the postgresql package (hack/ensure-tools.sh)"
            );
            Ok(String::from_utf8(out.stdout)?.trim().parse()?)
        };
        Ok(RunAs::Postgres {
            uid: id("-u")?,
            gid: id("-g")?,
        })
    }

    fn command(&self, program: &Path) -> Command {
        match self {
            RunAs::Me => Command::new(program),
            RunAs::Postgres { .. } => {
                let mut cmd = Command::new("setpriv");
                cmd.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(program);
                cmd
            }
        }
    }

    fn own(&self, path: &Path) -> Result<()> {
        if let RunAs::Postgres { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .with_context(|| format!("chown postgres {}", path.display()))?;
        }
        Ok(())
    }
}

/// The directory of the newest installed PostgreSQL's binaries.
fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PATROL_PG_BIN") {
        return Ok(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "no PostgreSQL server in /usr/lib/postgresql/*/bin: run hack/ensure-tools.sh \
         (Debian package postgresql) or set PATROL_PG_BIN",
    )
}

/// A CA and a server certificate for `127.0.0.1` (P-256, one day), in `dir`; returns the
/// CA's PEM.
#[rustfmt::skip]
fn make_certificates(dir: &Path, run_as: &RunAs) -> Result<Vec<u8>> {
    let path = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| -> Result<()> {
        run_ok(Command::new("openssl").args(args), "openssl")
    };
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &path("ca.key")])?;
    openssl(&[
        "req", "-x509", "-new", "-key", &path("ca.key"), "-subj", "/CN=patrol-e2e-postgres-ca",
        "-days", "1", "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", &path("ca.crt"),
    ])?;
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &path("server.key")])?;
    openssl(&[
        "req", "-new", "-key", &path("server.key"), "-subj", "/CN=127.0.0.1",
        "-out", &path("server.csr"),
    ])?;
    std::fs::File::create(dir.join("server.ext"))?.write_all(
        b"basicConstraints=CA:FALSE\n\
          keyUsage=critical,digitalSignature,keyEncipherment\n\
          extendedKeyUsage=serverAuth\n\
          subjectAltName=IP:127.0.0.1\n",
    )?;
    openssl(&[
        "x509", "-req", "-in", &path("server.csr"), "-CA", &path("ca.crt"),
        "-CAkey", &path("ca.key"), "-CAcreateserial", "-days", "1", "-sha256",
        "-extfile", &path("server.ext"), "-out", &path("server.crt"),
    ])?;
    // PostgreSQL insists that only its user can read the key.
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    run_as.own(&key)?;
    run_as.own(&dir.join("server.crt"))?;
    Ok(std::fs::read(dir.join("ca.crt"))?)
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// 32 random letters and digits for the superuser.
fn random_password() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    // A slight bias (256 % 62) is harmless for a throwaway test password.
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

//! kubectl-pat in end-to-end tests and benchmarks: a user with a PAT in a 0600 file and a
//! kubeconfig that `kubectl pat kubeconfig` wrote for it.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Result, ensure};
use patrol_api::v1alpha1::TokenOwner;
use serde_json::Value;

use crate::token_service::{KUBE_AUDIENCE, TokenService, stderr};

/// A user of the exec plugin.
pub struct PluginUser {
    pub username: String,
    /// Index of the PAT in the [`TokenService`].
    pub pat: usize,
    pub dir: PathBuf,
    pub token_file: PathBuf,
    pub cache: PathBuf,
    /// Its user runs `<plugin> credential` with the token file and cache above.
    pub kubeconfig: PathBuf,
    pub plugin: PathBuf,
}

impl PluginUser {
    /// Issues an unscoped PAT `name` to a new user (bound by `bind`, kubectl arguments to
    /// which `--user <username>` is added), writes it to a file and a kubeconfig for it.
    pub async fn create(
        service: &mut TokenService,
        name: &str,
        plugin: PathBuf,
        bind: &[&str],
    ) -> Result<Self> {
        let username = format!("{name}-{}", std::process::id());
        let mut args = bind.to_vec();
        args.extend(["--user", &username]);
        service.cluster.kubectl_ok(&args)?;
        let owner = TokenOwner {
            username: username.clone(),
            uid: None,
            groups: vec![],
        };
        let pat = service.issue(name, owner, &[], None).await?;
        service.wait_indexed(pat).await?;

        let dir = std::env::temp_dir().join(format!("patrol-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("pat");
        std::fs::write(&token_file, format!("{}\n", service.token(pat)))?;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
        let user = Self {
            username,
            pat,
            cache: dir.join("cache"),
            kubeconfig: dir.join("kubeconfig"),
            token_file,
            dir,
            plugin,
        };
        let ca = service.cluster.var("PATROL_CA")?;
        let server = format!(
            "https://127.0.0.1:{}",
            service.cluster.var("PATROL_APISERVER_PORT")?
        );
        let mut args = vec!["kubeconfig".to_owned()];
        args.extend(user.source_args(service)?);
        args.extend([
            "--server".to_owned(),
            server,
            "--server-certificate-authority".to_owned(),
            ca.to_owned(),
            "--command".to_owned(),
            user.plugin.display().to_string(),
        ]);
        let printed = user.run(&args)?;
        ensure!(
            printed.status.success(),
            "kubectl-pat kubeconfig: {}",
            stderr(&printed)
        );
        std::fs::write(&user.kubeconfig, &printed.stdout)?;
        Ok(user)
    }

    /// Where the PAT is and what to trade it for: issuer, CA, token file, cache, audience.
    pub fn source_args(&self, service: &TokenService) -> Result<Vec<String>> {
        Ok(vec![
            format!("--issuer={}", service.issuer),
            format!(
                "--certificate-authority={}",
                service.cluster.var("PATROL_CA")?
            ),
            format!("--token-file={}", self.token_file.display()),
            format!("--cache-dir={}", self.cache.display()),
            format!("--audience={KUBE_AUDIENCE}"),
        ])
    }

    /// Runs the plugin with `args`.
    pub fn run(&self, args: &[String]) -> Result<Output> {
        Ok(Command::new(&self.plugin).args(args).output()?)
    }

    /// The plugin's cache directory of JWTs.
    pub fn credentials(&self) -> PathBuf {
        self.cache.join("credentials")
    }

    /// The one cached entry (the cache must hold exactly one): its path and its JSON.
    pub fn cached(&self) -> Result<(PathBuf, Value)> {
        let entries: Vec<PathBuf> = std::fs::read_dir(self.credentials())?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        ensure!(entries.len() == 1, "cache entries: {entries:?}");
        let path = entries[0].clone();
        let entry: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        Ok((path, entry))
    }

    pub fn remove_files(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `path`'s permission bits.
pub fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// Runs kubectl-pat with `kubeconfig`, `stdin` on its standard input.
pub fn run_plugin(kubeconfig: &Path, args: &[&str], stdin: &str) -> Result<Output> {
    crate::process::output_with_stdin(
        Command::new(crate::process::binary("kubectl-pat")?)
            .args(args)
            .env("KUBECONFIG", kubeconfig),
        stdin,
    )
}

//! TLS: rustls with the *ring* provider only, a certificate and key from PEM files, and
//! reloading when those files change (cert-manager and kubelet replace mounted Secrets in
//! place, so the server must pick up a renewed certificate without a restart).
//!
//! Changes are detected by polling modification time and size of both files. A new pair
//! that fails to load (for example caught half-written) is logged and retried on the next
//! poll while the previous certificate keeps serving.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum_server::tls_rustls::RustlsConfig;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Makes *ring* the process-wide rustls provider (for the kube client too). Idempotent.
pub fn install_ring_provider() {
    // Fails only when a provider is already installed, which is fine either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a valid PEM certificate chain: {source}")]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} is not a valid PEM private key (PKCS#8, PKCS#1 or SEC1): {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The serving certificate chain and key files.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    // Follows symlinks, as a kubelet-mounted Secret is a symlink swapped on update.
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A rustls server configuration from PEM files: TLS 1.3 and 1.2, ring, ALPN h2 and
/// http/1.1.
pub fn server_config(files: &CertificateFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificate {
            path: files.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key_pem = zeroize::Zeroizing::new(read(&files.key)?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Key {
        path: files.key.clone(),
        source,
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Tracks the files and produces a new configuration when they change.
pub struct CertificateReloader {
    files: CertificateFiles,
    loaded: (Stamp, Stamp),
}

impl CertificateReloader {
    /// Loads the files now; failing here fails startup.
    pub fn load(files: CertificateFiles) -> Result<(Self, Arc<ServerConfig>), TlsError> {
        let stamps = (stamp(&files.cert), stamp(&files.key));
        let config = server_config(&files)?;
        Ok((
            Self {
                files,
                loaded: stamps,
            },
            config,
        ))
    }

    /// A new configuration if either file changed since the last successful load.
    pub fn check(&mut self) -> Result<Option<Arc<ServerConfig>>, TlsError> {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        if now == self.loaded {
            return Ok(None);
        }
        let config = server_config(&self.files)?;
        self.loaded = now;
        Ok(Some(config))
    }
}

/// Polls every `interval` and swaps the served configuration when the files change.
pub async fn reload_periodically(
    mut reloader: CertificateReloader,
    served: RustlsConfig,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match reloader.check() {
            Ok(None) => {}
            Ok(Some(config)) => {
                served.reload_from_config(config);
                metrics.record_tls_reload("ok");
                info!(cert = %reloader.files.cert.display(), "serving certificate reloaded");
            }
            Err(e) => {
                metrics.record_tls_reload("error");
                warn!(error = %e, "serving certificate changed but cannot be loaded; keeping the previous one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed EC certificate and key made with the openssl CLI (as hack/cluster.sh does).
    fn make_pair(dir: &Path, name: &str, cn: &str) -> CertificateFiles {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
            ])
            .arg("-subj")
            .arg(format!("/CN={cn}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        CertificateFiles { cert, key }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("patrol-webhook-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loads_pem_files_with_alpn_for_both_http_versions() {
        let dir = temp_dir("load");
        let files = make_pair(&dir, "a", "one");
        let (_, config) = CertificateReloader::load(files).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn reloads_when_the_files_change_and_keeps_serving_on_bad_input() {
        let dir = temp_dir("reload");
        let files = make_pair(&dir, "live", "one");
        let (mut reloader, first) = CertificateReloader::load(files.clone()).unwrap();
        assert!(
            reloader.check().unwrap().is_none(),
            "unchanged files: nothing to do"
        );

        // A half-written certificate: reported, not adopted, retried next time.
        std::fs::write(&files.cert, b"-----BEGIN CERTIFICATE-----\nAAAA").unwrap();
        assert!(reloader.check().is_err());
        assert!(reloader.check().is_err(), "still retried while broken");

        // A complete new pair.
        let next = make_pair(&dir, "next", "two");
        std::fs::copy(&next.cert, &files.cert).unwrap();
        std::fs::copy(&next.key, &files.key).unwrap();
        let second = reloader.check().unwrap().expect("reloaded");
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(reloader.check().unwrap().is_none());
    }

    #[test]
    fn errors_name_the_file_and_problem() {
        let dir = temp_dir("errors");
        let pair = make_pair(&dir, "a", "one");
        let missing = CertificateFiles {
            cert: dir.join("missing.crt"),
            key: pair.key.clone(),
        };
        assert!(matches!(
            server_config(&missing),
            Err(TlsError::Read { .. })
        ));
        std::fs::write(dir.join("empty.crt"), b"").unwrap();
        let empty = CertificateFiles {
            cert: dir.join("empty.crt"),
            key: pair.key.clone(),
        };
        assert!(matches!(
            server_config(&empty),
            Err(TlsError::NoCertificate { .. })
        ));
        let swapped = CertificateFiles {
            cert: pair.cert.clone(),
            key: pair.cert.clone(),
        };
        let err = server_config(&swapped).unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
        let other = make_pair(&dir, "b", "two");
        let mismatched = CertificateFiles {
            cert: pair.cert,
            key: other.key,
        };
        assert!(matches!(
            server_config(&mismatched),
            Err(TlsError::Config(_))
        ));
    }
}

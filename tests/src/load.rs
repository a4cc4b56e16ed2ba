//! A closed-loop HTTP load generator for the benchmarks: N connections, each sending its
//! next request as soon as the previous answer is read (HTTP/1.1 keep-alive over rustls),
//! for a fixed time. Every answer is checked, so a fast stream of errors never passes for
//! throughput.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// An HTTPS client that keeps its connections open.
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Where to present a client certificate (the kube-apiserver's admin credentials).
pub struct ClientCert<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// An HTTP/1.1 client trusting `ca`, with up to `connections` pooled connections.
pub fn https_client(
    ca: &Path,
    cert: Option<ClientCert<'_>>,
    connections: usize,
) -> Result<HttpsClient> {
    let mut roots = rustls::RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let tls = match cert {
        Some(c) => {
            let chain = CertificateDer::pem_file_iter(c.cert)?.collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(c.key)
                .with_context(|| format!("reading {}", c.key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector))
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadStats {
    pub requests: u64,
    pub failures: u64,
    pub elapsed: Duration,
    /// Latency of every successful request, in microseconds, sorted.
    latencies_us: Vec<u32>,
}

impl LoadStats {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) of successful latencies, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        f64::from(self.latencies_us[rank]) / 1000.0
    }

    pub fn p50_ms(&self) -> f64 {
        self.quantile_ms(0.50)
    }

    pub fn p99_ms(&self) -> f64 {
        self.quantile_ms(0.99)
    }
}

/// Sends requests from `make` over `connections` concurrent loops for `duration`.
/// A request counts as successful when `check` accepts its status and body; failures are
/// counted, and the first one is returned as an error when more than 1% of requests fail.
pub async fn run<M, C>(
    client: &HttpsClient,
    connections: usize,
    duration: Duration,
    make: M,
    check: C,
) -> Result<LoadStats>
where
    M: Fn() -> Request<Full<Bytes>> + Send + Sync + 'static,
    C: Fn(StatusCode, &Bytes) -> bool + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let check = Arc::new(check);
    // Open every connection before the clock starts: the TLS handshakes are not the subject.
    warm_up(client, connections, &make).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut loops = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (client, make, check) = (client.clone(), make.clone(), check.clone());
        loops.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut failures = 0u64;
            let mut first_failure: Option<String> = None;
            while Instant::now() < deadline {
                let sent = Instant::now();
                let outcome = async {
                    let response = client.request(make()).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, anyhow::Error>((status, body))
                }
                .await;
                match outcome {
                    Ok((status, body)) if check(status, &body) => {
                        latencies
                            .push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    Ok((status, body)) => {
                        failures += 1;
                        first_failure.get_or_insert_with(|| {
                            format!("{status}: {}", String::from_utf8_lossy(&body))
                        });
                    }
                    Err(e) => {
                        failures += 1;
                        first_failure.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (latencies, failures, first_failure)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut failures = 0;
    let mut first_failure = None;
    for handle in loops {
        let (l, f, first) = handle.await?;
        latencies_us.extend(l);
        failures += f;
        first_failure = first_failure.or(first);
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    let requests = latencies_us.len() as u64;
    if failures * 100 > requests + failures {
        anyhow::bail!(
            "{failures} of {} requests failed; first: {}",
            requests + failures,
            first_failure.unwrap_or_default()
        );
    }
    Ok(LoadStats {
        requests,
        failures,
        elapsed,
        latencies_us,
    })
}

async fn warm_up<M>(client: &HttpsClient, connections: usize, make: &Arc<M>) -> Result<()>
where
    M: Fn() -> Request<Full<Bytes>> + Send + Sync + 'static,
{
    let mut handles = Vec::new();
    for _ in 0..connections {
        let (client, make) = (client.clone(), make.clone());
        handles.push(tokio::spawn(async move {
            let response = client.request(make()).await?;
            response.into_body().collect().await?;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}

/// The median of the runs by throughput (the run whose throughput is the median).
pub fn median_run(runs: &[LoadStats]) -> Option<&LoadStats> {
    let mut sorted: Vec<&LoadStats> = runs.iter().collect();
    sorted.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
    sorted.get(sorted.len() / 2).copied()
}

/// Quantiles of a small sample of durations, in milliseconds (for revocation latency).
pub fn sample_quantile_ms(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let rank = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[rank].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(latencies_us: Vec<u32>, secs: u64) -> LoadStats {
        LoadStats {
            requests: latencies_us.len() as u64,
            failures: 0,
            elapsed: Duration::from_secs(secs),
            latencies_us,
        }
    }

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let s = stats((1..=100).map(|i| i * 1000).collect(), 10);
        assert_eq!(s.p50_ms(), 51.0);
        assert_eq!(s.p99_ms(), 99.0);
        assert_eq!(s.per_second(), 10.0);
        assert!(stats(vec![], 1).p99_ms().is_nan());
    }

    #[test]
    fn the_median_run_is_the_middle_throughput() {
        let runs = vec![
            stats(vec![1; 30], 1),
            stats(vec![1; 10], 1),
            stats(vec![1; 20], 1),
        ];
        assert_eq!(median_run(&runs).map(|r| r.requests), Some(20));
        assert!(median_run(&[]).is_none());
    }

    #[test]
    fn sample_quantiles_sort_first() {
        let mut samples = vec![
            Duration::from_millis(30),
            Duration::from_millis(10),
            Duration::from_millis(20),
        ];
        assert_eq!(sample_quantile_ms(&mut samples, 0.5), 20.0);
        assert_eq!(sample_quantile_ms(&mut samples, 1.0), 30.0);
    }
}

//! Trading a PAT for a short-lived JWT at Patrol's token endpoint (RFC 8693), found through
//! the issuer's discovery document. The HTTP is at the edge ([`Issuer`]); what an answer
//! means for the person at the keyboard is decided by the pure [`refusal`].

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde::Deserialize;
use zeroize::Zeroizing;

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_PAT: &str = "urn:ietf:params:oauth:token-type:pat";
/// How long one call to the issuer may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// What to ask for.
#[derive(Clone, Debug, Default)]
pub struct Ask {
    /// Empty: the PAT's default audience.
    pub audience: Option<String>,
    /// Empty: every scope the PAT holds.
    pub scopes: Vec<String>,
}

/// A JWT and when it stops working.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchanged {
    pub access_token: String,
    pub expires_at: DateTime<Utc>,
    pub scope: Option<String>,
}

/// Why an exchange failed, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Patrol refused: `advice` says whether to fix the request or get a new PAT.
    #[error("Patrol refused the PAT ({code}: {description}). {advice}")]
    Refused {
        code: String,
        description: String,
        advice: &'static str,
    },
    #[error("could not reach Patrol at {url}: {reason}. Check --issuer and the network; retry.")]
    Unreachable { url: String, reason: String },
    #[error(
        "Patrol at {url} answered {status} with a body that is not an OAuth answer; check --issuer"
    )]
    Protocol { url: String, status: u16 },
}

/// What to tell a person about an OAuth error code.
pub fn refusal(code: &str) -> &'static str {
    match code {
        "invalid_grant" => {
            "The PAT is revoked, expired, idle too long or unknown: get a new one (create a PersonalAccessToken, or rotate this one) and put it where the kubeconfig reads it."
        }
        "invalid_target" => {
            "The audience is not one this PAT may be exchanged for: fix --audience (the PAT's spec.exchange.audiences lists them)."
        }
        "invalid_scope" => {
            "A requested scope is not held by this PAT: fix --scope, or leave it out to get every scope the PAT holds."
        }
        "unauthorized_client" => {
            "This PAT may not be exchanged by this caller (spec.exchange.allowedActors): use a PAT that allows it."
        }
        "temporarily_unavailable" => "Patrol cannot decide right now; retry in a moment.",
        _ => "The request is malformed: check the kubectl-pat arguments in your kubeconfig.",
    }
}

#[derive(Deserialize)]
struct Discovery {
    token_endpoint: String,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: i64,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: String,
}

type Https = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Patrol's OAuth issuer.
pub struct Issuer {
    url: String,
    http: Https,
}

impl Issuer {
    /// An issuer at `url`, trusting only the CA certificates in `ca` (PEM): Patrol's issuer
    /// is served with a cluster-private CA, so there are no public roots to fall back on.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(ca) => {
                for cert in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("reading --certificate-authority {}", ca.display()))?
                {
                    roots.add(cert.context("a certificate in --certificate-authority")?)?;
                }
            }
            None => anyhow::bail!(
                "--certificate-authority is required: the PEM file of the CA that signed Patrol's serving certificate"
            ),
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        let unreachable = |reason: String| ExchangeError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, "application/json");
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = tokio::time::timeout(TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| unreachable(format!("no answer within {}s", TIMEOUT.as_secs())))?
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }

    /// Exchanges `pat` for a JWT.
    pub async fn exchange(&self, pat: &str, ask: &Ask) -> Result<Exchanged, ExchangeError> {
        let discovery_url = format!("{}/.well-known/openid-configuration", self.url);
        let (status, body) = self.call(Method::GET, &discovery_url, Vec::new()).await?;
        let discovery: Discovery = match serde_json::from_slice(&body) {
            Ok(d) if status.is_success() => d,
            _ => {
                return Err(ExchangeError::Protocol {
                    url: discovery_url,
                    status: status.as_u16(),
                });
            }
        };
        let form = Zeroizing::new(form(pat, ask));
        let endpoint = discovery.token_endpoint;
        let sent_at = Utc::now();
        let (status, body) = self
            .call(Method::POST, &endpoint, form.as_bytes().to_vec())
            .await?;
        if status.is_success() {
            let answer: TokenAnswer =
                serde_json::from_slice(&body).map_err(|_| ExchangeError::Protocol {
                    url: endpoint.clone(),
                    status: status.as_u16(),
                })?;
            return Ok(Exchanged {
                access_token: answer.access_token,
                expires_at: sent_at + chrono::TimeDelta::seconds(answer.expires_in),
                scope: answer.scope,
            });
        }
        match serde_json::from_slice::<ErrorAnswer>(&body) {
            Ok(e) => Err(ExchangeError::Refused {
                advice: refusal(&e.error),
                code: e.error,
                description: e.error_description,
            }),
            Err(_) => Err(ExchangeError::Protocol {
                url: endpoint,
                status: status.as_u16(),
            }),
        }
    }
}

/// The form of an exchange request.
pub fn form(pat: &str, ask: &Ask) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", GRANT_TOKEN_EXCHANGE)
        .append_pair("subject_token", pat)
        .append_pair("subject_token_type", TOKEN_TYPE_PAT);
    if let Some(audience) = &ask.audience {
        form.append_pair("audience", audience);
    }
    if !ask.scopes.is_empty() {
        form.append_pair("scope", &ask.scopes.join(" "));
    }
    form.finish()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_names_the_pat_as_a_pat() {
        let text = form(
            "patrol_x",
            &Ask {
                audience: Some("kubernetes".into()),
                scopes: vec!["read:pods".into(), "ci:push".into()],
            },
        );
        assert_eq!(
            text,
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=patrol_x\
             &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Apat&audience=kubernetes&scope=read%3Apods+ci%3Apush"
        );
        assert!(!form("patrol_x", &Ask::default()).contains("audience"));
    }

    #[test]
    fn refusals_say_whether_to_fix_the_request_or_get_a_new_pat() {
        assert!(refusal("invalid_grant").contains("get a new one"));
        assert!(refusal("invalid_target").contains("fix --audience"));
        assert!(refusal("invalid_scope").contains("fix --scope"));
        assert!(refusal("temporarily_unavailable").contains("retry"));
        assert!(refusal("whatever").contains("arguments"));
        let e = ExchangeError::Refused {
            code: "invalid_grant".into(),
            description: "the token is revoked".into(),
            advice: refusal("invalid_grant"),
        };
        assert!(e.to_string().starts_with(
            "Patrol refused the PAT (invalid_grant: the token is revoked). The PAT is revoked"
        ));
    }
}

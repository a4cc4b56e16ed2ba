//! The OAuth issuer: RFC 8693 exchange, RFC 7662 introspection, and the key publication
//! the kube-apiserver's JWT authenticator and OIDC libraries verify against. It strings
//! together the pure decisions ([`exchange`], [`introspect`]), the validation core every
//! endpoint shares ([`Validator::verify_presented_token`]), the Kubernetes reviews
//! ([`ClusterReviewer`]) and the live signing keys ([`SigningKeys`]).
//!
//! Logs name token ids, `jti`s, audiences and actors — never a PAT, a JWT, an actor or
//! caller token, or key material.

use std::sync::Arc;

use chrono::Utc;
use http::HeaderValue;
use tracing::{debug, info, warn};

use patrol_credentials::{
    AssociatedCredentials, CredentialsRequest,
    providers::{MintError, Providers, Subject},
};

use crate::{
    admission::cluster::ClusterView,
    exchange::{self, ExchangePolicy, SUBJECT_REJECTED, TokenResponse},
    index::IndexedRecord,
    introspect::{self, Introspection, JwtInactive, Shape},
    jwt,
    limiter::ClientKey,
    metrics::Metrics,
    oauth::{ErrorCode, Form, OAuthError, OAuthSettings, ProviderMetadata, REALM},
    reviews::{CallerCache, ClusterReviewer, ReviewedUser},
    signing::{Jwks, SigningKeys},
    token_review::IdentityMapping,
    validate::{Denial, Unavailable, Validator},
};

/// Most introspection callers remembered at once.
const CALLER_CACHE_ENTRIES: usize = 10_000;

/// What minting associated credentials needs: the providers, and namespace labels (which
/// providers select a PAT's namespace).
pub struct CredentialMinting {
    pub providers: Arc<Providers>,
    pub cluster: Arc<dyn ClusterView>,
}

pub struct Issuer {
    settings: OAuthSettings,
    credentials: Option<CredentialMinting>,
    metadata: ProviderMetadata,
    keys: Arc<SigningKeys>,
    validator: Arc<Validator>,
    identity: IdentityMapping,
    reviewer: Arc<dyn ClusterReviewer>,
    callers: CallerCache,
    metrics: Arc<Metrics>,
}

/// Which endpoint, as a metric label.
pub const ENDPOINT_TOKEN: &str = "token";
pub const ENDPOINT_INTROSPECT: &str = "introspect";

impl Issuer {
    pub fn new(
        settings: OAuthSettings,
        keys: Arc<SigningKeys>,
        validator: Arc<Validator>,
        identity: IdentityMapping,
        reviewer: Arc<dyn ClusterReviewer>,
        metrics: Arc<Metrics>,
    ) -> Option<Self> {
        let callers = CallerCache::new(settings.caller_cache_ttl, CALLER_CACHE_ENTRIES)?;
        Some(Self {
            metadata: ProviderMetadata::new(&settings),
            credentials: None,
            settings,
            keys,
            validator,
            identity,
            reviewer,
            callers,
            metrics,
        })
    }

    /// Mints associated credentials from these providers when a client asks.
    pub fn with_credentials(mut self, minting: CredentialMinting) -> Self {
        self.credentials = Some(minting);
        self.metadata.scopes_supported = vec![patrol_api::v1alpha1::CREDENTIALS_SCOPE];
        self
    }

    pub fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    /// The keys verifiers should know now; `None` until the key Secret has been read.
    pub fn jwks(&self) -> Option<Jwks> {
        let set = self.keys.current();
        (!set.is_empty()).then(|| set.jwks(Utc::now(), self.settings.rotation.overlap))
    }

    fn ready(&self) -> Result<(), OAuthError> {
        if !self.validator.is_ready() {
            return Err(OAuthError::unavailable(
                "the token record index has not synced yet; retry shortly",
            ));
        }
        if !self.keys.is_loaded() {
            return Err(OAuthError::unavailable(
                "the signing keys have not been loaded yet; retry shortly",
            ));
        }
        Ok(())
    }

    /// `POST /oauth2/token`.
    pub async fn exchange(
        &self,
        client: ClientKey,
        authorization: Option<&HeaderValue>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<TokenResponse, OAuthError> {
        let result = self
            .exchange_inner(client, authorization, content_type, body)
            .await;
        let outcome = match &result {
            Ok(_) => "issued",
            Err(e) => e.code.as_str(),
        };
        self.metrics.record_oauth(ENDPOINT_TOKEN, outcome);
        result
    }

    async fn exchange_inner(
        &self,
        client: ClientKey,
        authorization: Option<&HeaderValue>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<TokenResponse, OAuthError> {
        self.ready()?;
        if let Some(value) = authorization {
            // RFC 6749 §5.2: a client that tried the Authorization header gets 401 and a
            // challenge in the scheme it used. Patrol authenticates no client.
            return Err(exchange::public_clients_only()
                .with_challenge(format!("{} realm=\"{REALM}\"", auth_scheme(value))));
        }
        let form = Form::parse(content_type, body)?;
        let request = exchange::parse_request(&form).map_err(|e| {
            if e.code == ErrorCode::InvalidClient {
                e.with_challenge(format!("Basic realm=\"{REALM}\""))
            } else {
                e
            }
        })?;
        drop(form);

        let record = match self
            .validator
            .verify_presented_token(&request.subject_token, client)
            .await
        {
            Ok(record) => record,
            Err(Denial::Rejected(_)) => {
                return Err(OAuthError::new(ErrorCode::InvalidGrant, SUBJECT_REJECTED));
            }
            Err(Denial::Unavailable(why)) => return Err(unavailable(why)),
        };

        let actor = match &request.actor_token {
            None => None,
            Some(actor_token) => {
                exchange::check_actors_allowed(&record)?;
                match self.reviewer.authenticate(actor_token).await {
                    Ok(Some(user)) => Some(user.username),
                    Ok(None) => {
                        self.metrics
                            .record_upstream_review("token_review", "rejected");
                        debug!(token_id = %record.id, "actor token not accepted by the Kubernetes API");
                        return Err(OAuthError::invalid_request(
                            "the actor_token is not valid for this token",
                        ));
                    }
                    Err(e) => {
                        self.metrics.record_upstream_review("token_review", "error");
                        warn!(error = %e, "cannot review an actor token");
                        return Err(OAuthError::unavailable(
                            "the actor_token cannot be verified right now; retry shortly",
                        ));
                    }
                }
            }
        };
        if actor.is_some() {
            self.metrics
                .record_upstream_review("token_review", "accepted");
        }

        let policy = ExchangePolicy {
            issuer: &self.settings.issuer,
            default_audience: self.settings.default_audience.as_deref(),
            scope_group_prefix: &self.identity.scope_group_prefix,
            max_token_ttl: self.settings.max_token_ttl,
        };
        let now = Utc::now();
        let jti = exchange::new_jti()
            .ok_or_else(|| OAuthError::unavailable("no randomness available; retry"))?;
        let decision = exchange::decide(&record, &request, actor.as_deref(), &policy, now, jti)
            .inspect_err(|e| {
                debug!(token_id = %record.id, error = e.code.as_str(), "exchange refused");
            })?;
        let keys = self.keys.current();
        let key = keys
            .signing_key(now)
            .ok_or_else(|| OAuthError::unavailable("no signing key yet; retry shortly"))?;
        let token = jwt::sign(&decision.claims, key).map_err(|e| {
            warn!(error = %e, "cannot sign an exchanged token");
            OAuthError::unavailable("the token could not be signed; retry")
        })?;
        let mut response = decision.response(token);
        if let Some(request) = &decision.credentials {
            response.credentials = self.mint(&record, &decision, request, now).await?;
        }
        info!(
            token_id = %record.id,
            jti = %decision.claims.jti,
            kid = %key.kid(),
            aud = ?decision.claims.aud,
            actor = decision.claims.act.as_ref().map(|a| a.sub.as_str()),
            client_id = decision.claims.client_id.as_deref(),
            expires_in = decision.expires_in,
            credentials = response.credentials.0.len(),
            "token exchanged"
        );
        Ok(response)
    }

    /// The associated credentials of an exchange: all the asked-for providers' or none.
    async fn mint(
        &self,
        record: &IndexedRecord,
        decision: &exchange::Decision,
        request: &CredentialsRequest,
        now: chrono::DateTime<Utc>,
    ) -> Result<AssociatedCredentials, OAuthError> {
        let Some(minting) = &self.credentials else {
            return match request {
                CredentialsRequest::All => Ok(AssociatedCredentials::default()),
                CredentialsRequest::Providers(_) => {
                    Err(mint_error(&MintError::UnknownProvider(String::new())))
                }
            };
        };
        let labels = minting
            .cluster
            .namespace_labels(record.pat_namespace())
            .await
            .map_err(|e| {
                self.metrics.record_credentials("unavailable", std::time::Duration::ZERO);
                warn!(token_id = %record.id, error = %e, "namespace labels unavailable for credentials");
                OAuthError::unavailable("the token's namespace cannot be read right now; retry shortly")
            })?;
        let owner = record.owner();
        let subject = Subject {
            token_id: record.id.as_ref(),
            pat: record.pat(),
            owner: &owner,
            service_account: record
                .service_account()
                .map(|sa| (sa.namespace.as_str(), sa.name.as_str())),
            jti: &decision.claims.jti,
            expires_at: chrono::DateTime::from_timestamp(decision.claims.exp, 0).unwrap_or(now),
        };
        let started = std::time::Instant::now();
        match minting
            .providers
            .mint(&subject, request, &labels, now)
            .await
        {
            Ok(issued) => {
                for one in &issued {
                    debug!(token_id = %record.id, provider = %one.provider, lease = %one.lease_id, "credential minted");
                }
                self.metrics.record_credentials("minted", started.elapsed());
                Ok(AssociatedCredentials(issued))
            }
            Err(e) => {
                warn!(token_id = %record.id, error = %e, "no credentials minted; exchange refused");
                self.metrics
                    .record_credentials(e.outcome(), started.elapsed());
                Err(mint_error(&e))
            }
        }
    }

    /// `POST /oauth2/introspect`.
    pub async fn introspect(
        &self,
        client: ClientKey,
        authorization: Option<&HeaderValue>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Introspection, OAuthError> {
        let result = self
            .introspect_inner(client, authorization, content_type, body)
            .await;
        let outcome = match &result {
            Ok(answer) if answer.active => "active",
            Ok(_) => "inactive",
            Err(e) => e.code.as_str(),
        };
        self.metrics.record_oauth(ENDPOINT_INTROSPECT, outcome);
        result
    }

    async fn introspect_inner(
        &self,
        client: ClientKey,
        authorization: Option<&HeaderValue>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Introspection, OAuthError> {
        self.ready()?;
        let caller = self.authorize_caller(authorization).await?;
        let form = Form::parse(content_type, body)?;
        let request = introspect::parse_request(&form)?;
        drop(form);
        let answer = match introspect::shape(&request.token) {
            Shape::Pat => match self
                .validator
                .verify_presented_token(&request.token, client)
                .await
            {
                Ok(record) => introspect::for_pat(
                    &record,
                    &self.settings.issuer,
                    &self.identity.scope_group_prefix,
                ),
                Err(Denial::Rejected(_)) => Introspection::inactive(),
                Err(Denial::Unavailable(why)) => return Err(unavailable(why)),
            },
            Shape::Jwt => self.introspect_jwt(&request.token),
            Shape::Other => Introspection::inactive(),
        };
        debug!(caller = %caller, active = answer.active, "introspected");
        Ok(answer)
    }

    fn introspect_jwt(&self, token: &str) -> Introspection {
        let now = Utc::now();
        let keys = self.keys.current();
        let overlap = self.settings.rotation.overlap;
        let claims = match jwt::verify::<exchange::ExchangedClaims>(token, |kid| {
            keys.verifying_key(kid, now, overlap)
        }) {
            Ok(claims) => claims,
            Err(e) => {
                debug!(reason = %e, "JWT not verified");
                return Introspection::inactive();
            }
        };
        let jti = claims.jti.clone();
        match introspect::for_jwt(claims, &self.settings.issuer, self.validator.index(), now) {
            Ok(answer) => answer,
            Err(why) => {
                let reason = match why {
                    JwtInactive::Issuer => "issuer",
                    JwtInactive::Expired => "expired",
                    JwtInactive::NotYetValid => "not_yet_valid",
                    JwtInactive::Revoked => "revoked",
                };
                debug!(jti = %jti, reason, "JWT inactive");
                Introspection::inactive()
            }
        }
    }

    /// Authenticates and authorizes an introspection caller (see [`crate::reviews`]).
    async fn authorize_caller(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<String, OAuthError> {
        let missing = || {
            OAuthError::new(
                ErrorCode::InvalidToken,
                "authenticate with Authorization: Bearer and a token the Kubernetes API accepts",
            )
            .with_challenge(format!("Bearer realm=\"{REALM}\""))
        };
        let token = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(missing)?;
        let now = std::time::Instant::now();
        if let Some(username) = self.callers.get(token, now) {
            return Ok(username);
        }
        let user: ReviewedUser = match self.reviewer.authenticate(token).await {
            Ok(Some(user)) => user,
            Ok(None) => {
                self.metrics
                    .record_upstream_review("token_review", "rejected");
                return Err(OAuthError::new(
                    ErrorCode::InvalidToken,
                    "the bearer token is not accepted by the Kubernetes API",
                )
                .with_challenge(format!("Bearer realm=\"{REALM}\", error=\"invalid_token\"")));
            }
            Err(e) => {
                self.metrics.record_upstream_review("token_review", "error");
                warn!(error = %e, "cannot review an introspection caller's token");
                return Err(OAuthError::unavailable(
                    "the caller cannot be authenticated right now; retry shortly",
                ));
            }
        };
        self.metrics
            .record_upstream_review("token_review", "accepted");
        match self.reviewer.may_introspect(&user).await {
            Ok(true) => {
                self.metrics
                    .record_upstream_review("access_review", "allowed");
                self.callers.insert(token, &user.username, now);
                Ok(user.username)
            }
            Ok(false) => {
                self.metrics
                    .record_upstream_review("access_review", "denied");
                debug!(caller = %user.username, "introspection not allowed");
                Err(OAuthError::new(
                    ErrorCode::InsufficientScope,
                    "the caller may not create tokenintrospections.patrol.dev",
                )
                .with_challenge(format!(
                    "Bearer realm=\"{REALM}\", error=\"insufficient_scope\""
                )))
            }
            Err(e) => {
                self.metrics
                    .record_upstream_review("access_review", "error");
                warn!(error = %e, "cannot review an introspection caller's access");
                Err(OAuthError::unavailable(
                    "the caller cannot be authorized right now; retry shortly",
                ))
            }
        }
    }
}

/// The scheme of an Authorization header, for the challenge; `Basic` if unreadable.
fn auth_scheme(value: &HeaderValue) -> &str {
    value
        .to_str()
        .ok()
        .and_then(|v| v.split(' ').next())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .unwrap_or("Basic")
}

/// The OAuth answer to a failed mint: a fixed description per case.
fn mint_error(e: &MintError) -> OAuthError {
    match e {
        MintError::NotReady => OAuthError::unavailable(
            "the credential providers have not been loaded yet; retry shortly",
        ),
        MintError::UnknownProvider(_) => OAuthError::new(
            ErrorCode::InvalidScope,
            "a requested credential provider does not exist or is not available to this token",
        ),
        MintError::NoServiceAccount(_) => OAuthError::new(
            ErrorCode::InvalidScope,
            "ServiceAccount credentials need spec.credentials.serviceAccount on the PersonalAccessToken",
        ),
        MintError::NotImpersonable { .. } => OAuthError::new(
            ErrorCode::InvalidScope,
            "the token's owner may not impersonate the ServiceAccount its PersonalAccessToken names",
        ),
        MintError::Misconfigured { .. } => OAuthError::unavailable(
            "a credential provider is misconfigured; an administrator can see why in kubectl describe credentialprovider and the token service's log",
        ),
        MintError::Unavailable { .. } => OAuthError::unavailable(
            "a credential provider cannot mint right now (its database or the Kubernetes API did not answer); retry shortly",
        ),
    }
}

fn unavailable(why: Unavailable) -> OAuthError {
    OAuthError::unavailable(why.message())
}

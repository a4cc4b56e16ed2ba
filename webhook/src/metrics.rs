//! Prometheus metrics of the token service.
//!
//! Every label is bounded: routes come from a fixed set (unmatched paths share one value),
//! status codes are the handful the server produces, and outcomes and reasons are enums.
//! No token, hash, token id or client address is ever a label.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValidationLabels {
    /// `authenticated`, `rejected` or `unavailable`.
    pub outcome: &'static str,
    /// Why, e.g. `cache_hit`, `verified`, `malformed`, `unknown_id`, `rate_limited`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    /// `client` or `token`.
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `mutate` or `validate`.
    pub webhook: &'static str,
    /// `PersonalAccessToken`, `TokenPolicy` or `other`.
    pub kind: &'static str,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: &'static str,
    /// `true` or `false`.
    pub allowed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionDenialLabels {
    pub kind: &'static str,
    /// `invalid`, `policy`, `escalation` or `unavailable`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OAuthLabels {
    /// `token` or `introspect`.
    pub endpoint: &'static str,
    /// `issued`, `active`, `inactive`, or the RFC 6749 / RFC 6750 error code.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamReviewLabels {
    /// `token_review` or `access_review`.
    pub kind: &'static str,
    /// `accepted`, `rejected`, `allowed`, `denied` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorizationLabels {
    /// `no_opinion` or `denied`.
    pub decision: &'static str,
    /// Why, e.g. `unscoped`, `in_scope`, `discovery`, `out_of_scope`, `unknown_token`,
    /// `expired`, `not_synced`, `malformed`.
    pub reason: &'static str,
}

/// All metric families, registered once at startup and shared by every part.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub validations: Family<ValidationLabels, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_entries: Gauge,
    pub argon2_queue_depth: Gauge,
    pub argon2_in_flight: Gauge,
    pub argon2_duration: Histogram,
    pub rate_limited: Family<ScopeLabels, Counter>,
    pub index_records: Gauge,
    pub index_synced: Gauge,
    pub index_malformed: Counter,
    pub index_watch_errors: Counter,
    pub last_used_writes: Family<ResultLabels, Counter>,
    pub tls_reloads: Family<ResultLabels, Counter>,
    pub admission_reviews: Family<AdmissionLabels, Counter>,
    pub admission_denials: Family<AdmissionDenialLabels, Counter>,
    pub access_reviews: Family<ResultLabels, Counter>,
    pub admission_synced: Gauge,
    pub oauth_requests: Family<OAuthLabels, Counter>,
    pub oauth_upstream_reviews: Family<UpstreamReviewLabels, Counter>,
    pub signing_key_writes: Family<ResultLabels, Counter>,
    pub signing_keys: Gauge,
    pub authorizations: Family<AuthorizationLabels, Counter>,
    pub scope_catalog_scopes: Gauge,
    pub scope_catalog_synced: Gauge,
    pub credential_mints: Family<ResultLabels, Counter>,
    pub credential_mint_duration: Histogram,
}

fn latency_histogram() -> Histogram {
    // 250 µs .. ~4 s: cached answers land in the first buckets, argon2 around 20-50 ms.
    Histogram::new([
        0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("patrol_webhook");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status code",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response, by route",
            request_duration.clone(),
        );
        let validations = Family::<ValidationLabels, Counter>::default();
        registry.register(
            "token_validations",
            "Presented tokens by outcome and reason",
            validations.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Validations answered from the positive cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Well-formed tokens not found in the positive cache",
            cache_misses.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the positive cache",
            cache_entries.clone(),
        );
        let argon2_queue_depth = Gauge::default();
        registry.register(
            "argon2_queue_depth",
            "argon2 verifications waiting for a worker of the bounded pool",
            argon2_queue_depth.clone(),
        );
        let argon2_in_flight = Gauge::default();
        registry.register(
            "argon2_in_flight",
            "argon2 verifications running now",
            argon2_in_flight.clone(),
        );
        let argon2_duration = latency_histogram();
        registry.register(
            "argon2_verify_duration_seconds",
            "Time one argon2 verification takes on the pool",
            argon2_duration.clone(),
        );
        let rate_limited = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "rate_limited_attempts",
            "Attempts refused without verification because of earlier failures, by limit scope",
            rate_limited.clone(),
        );
        let index_records = Gauge::default();
        registry.register(
            "index_records",
            "Token records in the in-memory index",
            index_records.clone(),
        );
        let index_synced = Gauge::default();
        registry.register(
            "index_synced",
            "1 once the index has listed every token record",
            index_synced.clone(),
        );
        let index_malformed = Counter::default();
        registry.register(
            "index_malformed_records",
            "Token record Secrets skipped as malformed",
            index_malformed.clone(),
        );
        let index_watch_errors = Counter::default();
        registry.register(
            "index_watch_errors",
            "Errors of the token record watch (retried)",
            index_watch_errors.clone(),
        );
        let last_used_writes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "last_used_writes",
            "status.lastUsedAt updates by result (ok, gone, error, dropped)",
            last_used_writes.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Serving certificate reloads by result",
            tls_reloads.clone(),
        );
        let admission_reviews = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_reviews",
            "AdmissionReviews answered, by webhook, kind, operation and whether allowed",
            admission_reviews.clone(),
        );
        let admission_denials = Family::<AdmissionDenialLabels, Counter>::default();
        registry.register(
            "admission_denials",
            "Denied AdmissionReviews by kind and reason (one count per reason present)",
            admission_denials.clone(),
        );
        let access_reviews = Family::<ResultLabels, Counter>::default();
        registry.register(
            "admission_access_reviews",
            "SubjectAccessReviews for owner impersonation, by result (allowed, denied, error)",
            access_reviews.clone(),
        );
        let admission_synced = Gauge::default();
        registry.register(
            "admission_synced",
            "1 once the TokenPolicy and Namespace caches of admission have synced",
            admission_synced.clone(),
        );
        let oauth_requests = Family::<OAuthLabels, Counter>::default();
        registry.register(
            "oauth_requests",
            "Token exchange and introspection requests by endpoint and outcome",
            oauth_requests.clone(),
        );
        let oauth_upstream_reviews = Family::<UpstreamReviewLabels, Counter>::default();
        registry.register(
            "oauth_upstream_reviews",
            "TokenReviews (actor tokens, introspection callers) and SubjectAccessReviews by result",
            oauth_upstream_reviews.clone(),
        );
        let signing_key_writes = Family::<ResultLabels, Counter>::default();
        registry.register(
            "signing_key_writes",
            "Writes of the signing-key Secret by result (created, rotated, conflict, error)",
            signing_key_writes.clone(),
        );
        let signing_keys = Gauge::default();
        registry.register(
            "signing_keys",
            "Signing keys held (previous, current and next)",
            signing_keys.clone(),
        );
        let authorizations = Family::<AuthorizationLabels, Counter>::default();
        registry.register(
            "authorizations",
            "SubjectAccessReviews answered for requests made with Patrol tokens, by decision and reason",
            authorizations.clone(),
        );
        let scope_catalog_scopes = Gauge::default();
        registry.register(
            "scope_catalog_scopes",
            "Scopes defined by TokenScopes",
            scope_catalog_scopes.clone(),
        );
        let scope_catalog_synced = Gauge::default();
        registry.register(
            "scope_catalog_synced",
            "1 once the TokenScope and ClusterRole caches have synced",
            scope_catalog_synced.clone(),
        );
        let credential_mints = Family::<ResultLabels, Counter>::default();
        registry.register(
            "credential_mints",
            "Exchanges that asked for associated credentials, by result (minted, not_ready, unknown_provider, no_service_account, not_impersonable, misconfigured, unavailable)",
            credential_mints.clone(),
        );
        let credential_mint_duration = latency_histogram();
        registry.register(
            "credential_mint_duration_seconds",
            "Time to mint an exchange's associated credentials (leases, TokenRequests, database roles)",
            credential_mint_duration.clone(),
        );
        let metrics = Self {
            registry,
            requests,
            request_duration,
            validations,
            cache_hits,
            cache_misses,
            cache_entries,
            argon2_queue_depth,
            argon2_in_flight,
            argon2_duration,
            rate_limited,
            index_records,
            index_synced,
            index_malformed,
            index_watch_errors,
            last_used_writes,
            tls_reloads,
            admission_reviews,
            admission_denials,
            access_reviews,
            admission_synced,
            oauth_requests,
            oauth_upstream_reviews,
            signing_key_writes,
            signing_keys,
            authorizations,
            scope_catalog_scopes,
            scope_catalog_synced,
            credential_mints,
            credential_mint_duration,
        };
        metrics.zero_alerted_series();
        metrics
    }
}

impl Metrics {
    /// Series the alerts (charts/patrol/files/alerts.yaml) watch, present at 0 from the
    /// start: `increase()` and `rate()` need a sample before the first event, or the first
    /// error after a restart would never fire an alert.
    fn zero_alerted_series(&self) {
        for (outcome, reason) in [("rejected", "wrong_secret"), ("unavailable", "overloaded")] {
            let _ = self
                .validations
                .get_or_create(&ValidationLabels { outcome, reason });
        }
        for scope in ["client", "token"] {
            let _ = self.rate_limited.get_or_create(&ScopeLabels { scope });
        }
        for result in ["ok", "error"] {
            let _ = self.tls_reloads.get_or_create(&ResultLabels { result });
        }
        for result in ["created", "rotated", "conflict", "error"] {
            let _ = self
                .signing_key_writes
                .get_or_create(&ResultLabels { result });
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub fn record_authorization(&self, decision: &'static str, reason: &'static str) {
        self.authorizations
            .get_or_create(&AuthorizationLabels { decision, reason })
            .inc();
    }

    pub fn record_request(&self, route: &'static str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { route, code })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels { route })
            .observe(seconds);
    }

    pub fn record_validation(&self, outcome: &'static str, reason: &'static str) {
        self.validations
            .get_or_create(&ValidationLabels { outcome, reason })
            .inc();
    }

    pub fn record_rate_limited(&self, scope: &'static str) {
        self.rate_limited
            .get_or_create(&ScopeLabels { scope })
            .inc();
    }

    pub fn record_last_used_write(&self, result: &'static str) {
        self.last_used_writes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn record_admission(
        &self,
        webhook: &'static str,
        kind: &'static str,
        operation: &'static str,
        allowed: bool,
    ) {
        let allowed = if allowed { "true" } else { "false" };
        self.admission_reviews
            .get_or_create(&AdmissionLabels {
                webhook,
                kind,
                operation,
                allowed,
            })
            .inc();
    }

    pub fn record_admission_denial(&self, kind: &'static str, reason: &'static str) {
        self.admission_denials
            .get_or_create(&AdmissionDenialLabels { kind, reason })
            .inc();
    }

    pub fn record_access_review(&self, result: &'static str) {
        self.access_reviews
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn record_oauth(&self, endpoint: &'static str, outcome: &'static str) {
        self.oauth_requests
            .get_or_create(&OAuthLabels { endpoint, outcome })
            .inc();
    }

    pub fn record_credentials(&self, result: &'static str, took: std::time::Duration) {
        self.credential_mints
            .get_or_create(&ResultLabels { result })
            .inc();
        self.credential_mint_duration.observe(took.as_secs_f64());
    }

    pub fn record_upstream_review(&self, kind: &'static str, result: &'static str) {
        self.oauth_upstream_reviews
            .get_or_create(&UpstreamReviewLabels { kind, result })
            .inc();
    }

    pub fn record_signing_key_write(&self, result: &'static str) {
        self.signing_key_writes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn record_tls_reload(&self, result: &'static str) {
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_families_and_bounded_labels() {
        let m = Metrics::default();
        m.record_request("/authenticate", 200, 0.001);
        m.record_validation("rejected", "malformed");
        m.record_rate_limited("client");
        let text = m.encode().unwrap();
        for name in [
            "patrol_webhook_http_requests_total{route=\"/authenticate\",code=\"200\"} 1",
            "patrol_webhook_http_request_duration_seconds_bucket",
            "patrol_webhook_token_validations_total{outcome=\"rejected\",reason=\"malformed\"} 1",
            "patrol_webhook_cache_hits_total",
            "patrol_webhook_argon2_queue_depth",
            "patrol_webhook_rate_limited_attempts_total{scope=\"client\"} 1",
            "patrol_webhook_index_synced",
            "# EOF",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn series_the_alerts_watch_exist_before_their_first_event() {
        let text = Metrics::default().encode().unwrap();
        for series in [
            "patrol_webhook_token_validations_total{outcome=\"rejected\",reason=\"wrong_secret\"} 0",
            "patrol_webhook_token_validations_total{outcome=\"unavailable\",reason=\"overloaded\"} 0",
            "patrol_webhook_rate_limited_attempts_total{scope=\"token\"} 0",
            "patrol_webhook_tls_reloads_total{result=\"error\"} 0",
            "patrol_webhook_signing_key_writes_total{result=\"error\"} 0",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
    }
}

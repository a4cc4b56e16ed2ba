//! Prometheus metrics of the operator. Labels are bounded: result, error reason, phase,
//! namespace (never a token's name or id).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use chrono::{DateTime, Utc};
use patrol_api::v1alpha1::Phase;
use prometheus_client::{
    encoding::{
        EncodeLabelSet,
        text::{encode_eof, encode_registry},
    },
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Buckets of `patrol_operator_token_idle_seconds`: an hour, a day, a week, 30 and 90 days.
pub const IDLE_BUCKETS: [f64; 5] = [3_600.0, 86_400.0, 604_800.0, 2_592_000.0, 7_776_000.0];

/// What the metrics keep of one PAT after a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenState {
    pub namespace: String,
    pub phase: Phase,
    /// `ExpiringSoon=True`: within the warning window before expiry.
    pub expiring_soon: bool,
    /// Active tokens: last use, else issue (idle since then).
    pub idle_since: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<ReasonLabels, Counter>,
    duration: Histogram,
    materialize: Histogram,
    tokens: Family<PhaseLabels, Gauge>,
    states: Mutex<HashMap<String, TokenState>>,
    leader: Gauge,
    policies: Family<StateLabels, Gauge>,
    revocations: Family<ReasonLabels, Counter>,
    leases: Gauge,
    sweep_failures: Gauge,
}

/// Every `reason` of `patrol_operator_reconcile_errors_total` (see `Error::metric_label`).
pub const ERROR_REASONS: [&str; 8] = [
    "conflict",
    "forbidden",
    "kube",
    "token",
    "record",
    "malformed",
    "finalizer",
    "id_collision",
];

const PHASES: [Phase; 5] = [
    Phase::Pending,
    Phase::Active,
    Phase::Expired,
    Phase::Revoked,
    Phase::Failed,
];

fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "Pending",
        Phase::Active => "Active",
        Phase::Expired => "Expired",
        Phase::Revoked => "Revoked",
        Phase::Failed => "Failed",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("patrol_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "PersonalAccessToken reconciles by result",
            reconciles.clone(),
        );
        let errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles by reason",
            errors.clone(),
        );
        let duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            duration.clone(),
        );
        let materialize = Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]);
        registry.register(
            "materialize_duration_seconds",
            "Time from a PersonalAccessToken's creation to its token being Active",
            materialize.clone(),
        );
        let tokens = Family::<PhaseLabels, Gauge>::default();
        registry.register("tokens", "PersonalAccessTokens by phase", tokens.clone());
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        for phase in PHASES {
            tokens
                .get_or_create(&PhaseLabels {
                    phase: phase_label(phase),
                })
                .set(0);
        }
        let policies = Family::<StateLabels, Gauge>::default();
        registry.register(
            "token_policies",
            "TokenPolicies by state: ready (Ready=True), invalid (Ready=False), conflicting (Conflicting=True); written by the replica that computes policy status",
            policies.clone(),
        );
        for state in ["ready", "invalid", "conflicting"] {
            policies.get_or_create(&StateLabels { state }).set(0);
        }
        // Present at 0 from the start, so rate() and increase() in alerts see the first one.
        for reason in ERROR_REASONS {
            let _ = errors.get_or_create(&ReasonLabels { reason });
        }
        for result in ["ok", "error"] {
            let _ = reconciles.get_or_create(&ResultLabels { result });
        }
        let revocations = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "credential_revocations",
            "Associated credentials revoked, by reason (token_ended: with its token; expired and orphaned: by the sweep)",
            revocations.clone(),
        );
        for reason in ["token_ended", "expired", "orphaned"] {
            let _ = revocations.get_or_create(&ReasonLabels { reason });
        }
        let leases = Gauge::default();
        registry.register(
            "credential_leases",
            "Associated credentials minted and not yet revoked, at the last sweep",
            leases.clone(),
        );
        let sweep_failures = Gauge::default();
        registry.register(
            "credential_sweep_failures",
            "Leases the last sweep could not revoke (a database or the Kubernetes API did not answer)",
            sweep_failures.clone(),
        );
        Self {
            revocations,
            leases,
            sweep_failures,
            registry,
            reconciles,
            errors,
            duration,
            materialize,
            tokens,
            states: Mutex::default(),
            leader,
            policies,
        }
    }
}

impl Metrics {
    pub fn credentials_revoked(&self, reason: &'static str, n: usize) {
        self.revocations
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n as u64);
    }

    pub fn swept(&self, sweep: &patrol_credentials::revoke::Sweep) {
        for (reason, n) in [("expired", sweep.expired), ("orphaned", sweep.orphaned)] {
            self.revocations
                .get_or_create(&ReasonLabels { reason })
                .inc_by(n as u64);
        }
        let active: u32 = sweep.active.iter().map(|(_, n)| n).sum();
        self.leases.set(i64::from(active));
        self.sweep_failures.set(sweep.failed as i64);
    }

    pub fn reconcile_done(&self, took: Duration, error: Option<&'static str>) {
        self.duration.observe(took.as_secs_f64());
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Some(reason) = error {
            self.reconcile_error(reason);
        }
    }

    pub fn reconcile_error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn materialized(&self, took: Duration) {
        self.materialize.observe(took.as_secs_f64());
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// How many TokenPolicies are ready, invalid and conflicting.
    pub fn set_policy_states(&self, ready: usize, invalid: usize, conflicting: usize) {
        for (state, n) in [
            ("ready", ready),
            ("invalid", invalid),
            ("conflicting", conflicting),
        ] {
            self.policies
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Records what one PAT (by uid) looks like now and refreshes the per-phase gauge.
    pub fn observe(&self, uid: &str, state: TokenState) {
        self.update_states(|m| {
            m.insert(uid.to_owned(), state);
        });
    }

    pub fn forget(&self, uid: &str) {
        self.update_states(|m| {
            m.remove(uid);
        });
    }

    fn update_states(&self, change: impl FnOnce(&mut HashMap<String, TokenState>)) {
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        change(&mut states);
        for phase in PHASES {
            let n = states.values().filter(|s| s.phase == phase).count();
            self.tokens
                .get_or_create(&PhaseLabels {
                    phase: phase_label(phase),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Metrics computed from the PATs' current state at scrape time: tokens expiring soon
    /// per namespace, and how long Active tokens have gone unused.
    fn snapshot(&self, now: DateTime<Utc>) -> Registry {
        let mut registry = Registry::with_prefix("patrol_operator");
        let expiring = Family::<NamespaceLabels, Gauge>::default();
        registry.register(
            "tokens_expiring_soon",
            "Active PersonalAccessTokens within their expiry warning window, by namespace",
            expiring.clone(),
        );
        let idle = Histogram::new(IDLE_BUCKETS);
        registry.register(
            "token_idle_seconds",
            "How long each Active PersonalAccessToken has gone unused (since issue when never used)",
            idle.clone(),
        );
        let Ok(states) = self.states.lock() else {
            return registry;
        };
        let mut per_namespace: BTreeMap<&str, i64> = BTreeMap::new();
        for state in states.values().filter(|s| s.phase == Phase::Active) {
            if state.expiring_soon {
                *per_namespace.entry(&state.namespace).or_default() += 1;
            }
            if let Some(since) = state.idle_since {
                idle.observe((now - since).num_milliseconds().max(0) as f64 / 1000.0);
            }
        }
        for (namespace, n) in per_namespace {
            expiring
                .get_or_create(&NamespaceLabels {
                    namespace: namespace.to_owned(),
                })
                .set(n);
        }
        registry
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.render_at(Utc::now())
    }

    fn render_at(&self, now: DateTime<Utc>) -> String {
        let mut out = String::new();
        let written = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.snapshot(now)))
            .and_then(|()| encode_eof(&mut out));
        if written.is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn expiring_tokens_are_counted_per_namespace_and_idle_ages_bucketed() {
        let metrics = Metrics::default();
        let now = at("2026-12-03T12:00:00Z");
        let state = |ns: &str, phase, expiring_soon, idle_since: Option<&str>| TokenState {
            namespace: ns.into(),
            phase,
            expiring_soon,
            idle_since: idle_since.map(at),
        };
        metrics.observe(
            "a",
            state("team-a", Phase::Active, true, Some("2026-12-03T11:30:00Z")),
        );
        metrics.observe(
            "b",
            state("team-a", Phase::Active, true, Some("2026-11-01T12:00:00Z")),
        );
        metrics.observe(
            "c",
            state("team-b", Phase::Active, false, Some("2026-12-02T12:00:00Z")),
        );
        metrics.observe("d", state("team-b", Phase::Expired, true, None));
        let text = metrics.render_at(now);
        assert!(
            text.contains("patrol_operator_tokens_expiring_soon{namespace=\"team-a\"} 2"),
            "{text}"
        );
        assert!(
            !text.contains("namespace=\"team-b\""),
            "an Expired token is not expiring: {text}"
        );
        assert!(
            text.contains("patrol_operator_token_idle_seconds_count 3"),
            "{text}"
        );
        assert!(
            text.contains("patrol_operator_token_idle_seconds_bucket{le=\"3600.0\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("patrol_operator_token_idle_seconds_bucket{le=\"86400.0\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("patrol_operator_tokens{phase=\"Active\"} 3"),
            "{text}"
        );
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"));

        metrics.forget("a");
        metrics.forget("b");
        let text = metrics.render_at(now);
        assert!(
            !text.contains("tokens_expiring_soon{"),
            "a namespace with none is dropped: {text}"
        );
        assert!(
            text.contains("patrol_operator_token_policies{state=\"invalid\"} 0"),
            "known from the start: {text}"
        );
        for reason in ERROR_REASONS {
            let series = format!("patrol_operator_reconcile_errors_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&series), "{series} in {text}");
        }
    }
}

//! Prometheus metrics of the operator. Labels are bounded: result, error reason, phase.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use patrol_api::v1alpha1::Phase;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

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
    phases: Mutex<HashMap<String, Phase>>,
    leader: Gauge,
}

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
        Self {
            registry,
            reconciles,
            errors,
            duration,
            materialize,
            tokens,
            phases: Mutex::default(),
            leader,
        }
    }
}

impl Metrics {
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

    /// Records the phase of one PAT (by uid) and refreshes the per-phase gauge.
    pub fn observe_phase(&self, uid: &str, phase: Phase) {
        self.update_phases(|m| {
            m.insert(uid.to_owned(), phase);
        });
    }

    pub fn forget(&self, uid: &str) {
        self.update_phases(|m| {
            m.remove(uid);
        });
    }

    fn update_phases(&self, change: impl FnOnce(&mut HashMap<String, Phase>)) {
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        change(&mut phases);
        for phase in PHASES {
            let n = phases.values().filter(|p| **p == phase).count();
            self.tokens
                .get_or_create(&PhaseLabels {
                    phase: phase_label(phase),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

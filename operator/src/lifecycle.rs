//! The lifecycle of one PersonalAccessToken as a pure decision.
//!
//! [`plan`] looks at what exists (the PAT, its token records, its delivered Secret, the
//! policy that governs it, the time) and says what to do next. The reconciler executes the
//! plan and nothing else, so every rule here is unit-tested without a cluster.
//!
//! # Crash safety
//!
//! Issuing writes two objects, in this order: the hashed **record** (operator namespace),
//! then the **Secret** with the plaintext (annotated with the token id). Status is never
//! written in the same step: the next reconcile *adopts* the token the Secret names, when
//! its record exists. So the normal path and the recovery path are one path:
//!
//! - crash before the record: nothing was written; the next reconcile issues again.
//! - crash after the record, before the Secret: the record is an orphan nobody holds the
//!   plaintext for; it is deleted and a new token issued.
//! - crash after the Secret: the Secret names a token whose record exists; it is adopted
//!   (status, grace for the token it replaces), never issued twice.
//!
//! A delivered token therefore always has a record (the record is written first and deleted
//! only when the token ends), and at most two records are live for one PAT: the current one
//! and, during a rotation's grace period, the previous one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use patrol_api::time::{from_k8s, to_k8s};
use patrol_api::{
    policy::{EffectivePolicy, ResolvedToken},
    record::{ExchangeGrant, PatReference, TokenRecord},
    v1alpha1::{Phase, PersonalAccessToken, PersonalAccessTokenStatus, PreviousToken, Retention, SecretReference},
    validation,
};

/// Annotation on the PAT: change its value to rotate (like `spec.rotation.requestedAt`).
pub const ROTATE_ANNOTATION: &str = "patrol.dev/rotate";
/// Annotation on the PAT: set to the current token id to remove its one-time Secret now.
pub const ACKNOWLEDGED_ANNOTATION: &str = "patrol.dev/acknowledged";
/// Reveal window when neither the PAT nor a policy sets one.
pub const DEFAULT_REVEAL_WINDOW: Duration = Duration::from_secs(3_600);

/// The delivered Secret as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveredSecret {
    /// Whether Patrol wrote it for this PAT (label with the PAT's uid). A foreign Secret of
    /// the same name is never overwritten.
    pub owned: bool,
    /// The token id it carries (annotation), if Patrol wrote it.
    pub token_id: Option<String>,
    /// When it was written.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Everything [`plan`] decides from.
pub struct Observed<'a> {
    pub pat: &'a PersonalAccessToken,
    /// Records labelled with this PAT's uid.
    pub records: &'a [TokenRecord],
    pub secret: Option<&'a DeliveredSecret>,
    pub policy: &'a EffectivePolicy,
    pub now: DateTime<Utc>,
}

/// Why a token is being issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssueReason {
    /// First token for this PAT.
    Initial,
    /// Rotation on request or schedule.
    Rotation,
    /// An expired token renewed by a rotation request.
    Renewal,
    /// The current token's record disappeared; a fresh token replaces it.
    Replacement,
}

/// One step of a plan, executed in order; each is idempotent.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Delete the record of this token id (absent is fine).
    DeleteRecord(String),
    /// Replace an existing record's claims (never its hash).
    UpdateRecord(Box<TokenRecord>),
    /// Delete the delivered Secret (only ever Patrol's own).
    DeleteSecret,
    /// Generate a token, write its record, then its Secret. Then stop: the next reconcile
    /// adopts it.
    Issue(IssueReason),
}

/// Something worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

/// What to do for one PAT.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Desired status (lastUsedAt is the webhook's and is never set here).
    pub status: PersonalAccessTokenStatus,
    /// When to look again at the latest, if nothing changes before.
    pub requeue_after: Option<Duration>,
    pub notes: Vec<Note>,
}

/// Condition types.
pub const READY: &str = "Ready";
pub const DELIVERED: &str = "Delivered";
pub const EXPIRING_SOON: &str = "ExpiringSoon";
pub const POLICY_COMPLIANT: &str = "PolicyCompliant";

/// The rotation request as one string: the spec field and the annotation together, so
/// either one changing triggers a rotation.
pub fn rotation_request(pat: &PersonalAccessToken) -> String {
    let spec = pat.spec.rotation.as_ref().and_then(|r| r.requested_at.as_deref()).unwrap_or("");
    let annotation = pat
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_ANNOTATION))
        .map(String::as_str)
        .unwrap_or("");
    format!("spec={spec};annotation={annotation}")
}

/// The record a freshly issued token gets: claims from the spec, narrowed by policy.
pub fn new_record(
    pat: &PersonalAccessToken,
    policy: &EffectivePolicy,
    token_id: String,
    hash: String,
    hint: String,
    issued_at: DateTime<Utc>,
) -> TokenRecord {
    let resolved = policy.resolve(&pat.spec, issued_at);
    let mut record = TokenRecord {
        token_id,
        hash,
        hint,
        owner: pat.spec.owner.clone().unwrap_or_default(),
        scopes: Vec::new(),
        issued_at,
        expires_at: None,
        idle_timeout_seconds: None,
        pat: PatReference {
            namespace: pat.metadata.namespace.clone().unwrap_or_default(),
            name: pat.metadata.name.clone().unwrap_or_default(),
            uid: pat.metadata.uid.clone().unwrap_or_default(),
        },
        exchange: ExchangeGrant::default(),
        rotation_request: Some(rotation_request(pat)),
    };
    apply_claims(&mut record, pat, policy, &resolved);
    record
}

/// Sets the claims a record derives from spec and policy (everything but identity and hash).
fn apply_claims(record: &mut TokenRecord, pat: &PersonalAccessToken, policy: &EffectivePolicy, resolved: &ResolvedToken) {
    record.owner = pat.spec.owner.clone().unwrap_or_default();
    record.scopes = resolved.granted_scopes.clone();
    record.expires_at = resolved.expires_at;
    record.idle_timeout_seconds = resolved.idle_timeout.map(|d| d.as_secs());
    let spec_audiences = pat.spec.exchange.as_ref().map(|e| e.audiences.clone()).unwrap_or_default();
    let audiences = match (policy_audiences(policy), spec_audiences.is_empty()) {
        (None, true) => None,
        (None, false) => Some(spec_audiences),
        (Some(allowed), true) => Some(allowed),
        (Some(allowed), false) => Some(spec_audiences.into_iter().filter(|a| allowed.contains(a)).collect()),
    };
    let default_audience = match &audiences {
        Some(list) => policy
            .default_audience()
            .map(str::to_owned)
            .filter(|a| list.contains(a))
            .or_else(|| list.first().cloned()),
        None => policy.default_audience().map(str::to_owned),
    };
    record.exchange = ExchangeGrant {
        audiences,
        default_audience,
        allowed_actors: pat.spec.exchange.as_ref().map(|e| e.allowed_actors.clone()).unwrap_or_default(),
        max_ttl_seconds: resolved.exchange_max_ttl.as_secs(),
    };
}

/// Audiences every governing policy allows, if any policy restricts them.
fn policy_audiences(policy: &EffectivePolicy) -> Option<Vec<String>> {
    policy.allowed_audiences()
}

/// Decides the next steps for one PAT. Pure: same inputs, same plan.
pub fn plan(o: &Observed<'_>) -> Plan {
    let pat = o.pat;
    let now = o.now;
    let old = pat.status.clone().unwrap_or_default();
    let mut out = Plan {
        actions: Vec::new(),
        status: PersonalAccessTokenStatus {
            observed_generation: pat.metadata.generation,
            policies: o.policy.policies.clone(),
            last_rotation_request: old.last_rotation_request.clone(),
            ..PersonalAccessTokenStatus::default()
        },
        requeue_after: None,
        notes: Vec::new(),
    };
    let record = |id: &str| o.records.iter().find(|r| r.token_id == id);
    let all_records = |out: &mut Plan| {
        for r in o.records {
            out.actions.push(Action::DeleteRecord(r.token_id.clone()));
        }
    };
    let owned_secret = o.secret.filter(|s| s.owned);

    // Revoked: end everything, for good.
    if pat.spec.revoked {
        all_records(&mut out);
        if owned_secret.is_some() {
            out.actions.push(Action::DeleteSecret);
        }
        if old.phase != Some(Phase::Revoked) {
            out.notes.push(note("Revoked", "token revoked; it no longer authenticates".into(), false));
        }
        return finish(out, &old, Phase::Revoked, "Revoked", "The token was revoked (spec.revoked) and no longer authenticates.".into(), now);
    }

    // An invalid spec (possible only if admission was bypassed) is reported, not acted on.
    let errors = validation::validate_token(pat.metadata.name.as_deref().unwrap_or_default(), &pat.spec);
    if !errors.is_empty() {
        let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        out.status.token_id = old.token_id.clone();
        return finish(out, &old, Phase::Failed, "InvalidSpec", format!("Fix the spec: {message}"), now);
    }

    // Which token is current: the one the Secret delivered (newest), else the one in status.
    let delivered = owned_secret.and_then(|s| s.token_id.as_deref()).and_then(record);
    let from_status = old.token_id.as_deref().and_then(record);
    let current = delivered.or(from_status);
    let previous_id = match (delivered, from_status) {
        (Some(d), Some(s)) if d.token_id != s.token_id => Some(s.token_id.clone()),
        _ => old.previous.as_ref().map(|p| p.token_id.clone()),
    };
    let previous = previous_id.as_deref().and_then(record).filter(|p| Some(p.token_id.as_str()) != current.map(|c| c.token_id.as_str()));

    // Orphans: records neither current nor previous (e.g. a crash before delivery).
    for r in o.records {
        let keep = Some(&r.token_id) == current.map(|c| &c.token_id) || Some(&r.token_id) == previous.map(|p| &p.token_id);
        if !keep {
            out.actions.push(Action::DeleteRecord(r.token_id.clone()));
        }
    }

    if let Some(secret) = o.secret.filter(|s| !s.owned) {
        let _ = secret;
        let name = secret_name(pat);
        return finish(
            out,
            &old,
            Phase::Failed,
            "SecretConflict",
            format!("Secret {name} exists and was not created by Patrol for this token; delete it or set spec.secret.name to another name"),
            now,
        );
    }

    let request = rotation_request(pat);
    let rotation_requested = old.last_rotation_request.as_deref().is_some_and(|last| last != request);

    let Some(current) = current else {
        // No usable token. Terminal phases stay terminal unless a rotation renews them.
        if old.phase == Some(Phase::Expired) && !rotation_requested {
            if owned_secret.is_some() {
                out.actions.push(Action::DeleteSecret);
            }
            return finish(out, &old, Phase::Expired, "Expired", expired_message(&old), now);
        }
        let reason = if old.phase == Some(Phase::Expired) {
            IssueReason::Renewal
        } else if old.token_id.is_some() {
            IssueReason::Replacement
        } else {
            IssueReason::Initial
        };
        out.actions.push(Action::Issue(reason));
        out.status.phase = Some(Phase::Pending);
        return finish(out, &old, Phase::Pending, "Issuing", "Issuing the token.".into(), now);
    };

    // Adopt the current token into status.
    out.status.token_id = Some(current.token_id.clone());
    out.status.hint = Some(current.hint.clone());
    out.status.issued_at = Some(to_k8s(current.issued_at));
    out.status.last_rotation_request = current.rotation_request.clone().or(old.last_rotation_request.clone());
    if delivered.is_some() && old.token_id.as_deref() != Some(&current.token_id) {
        let what = if old.token_id.is_some() { "Rotated" } else { "Issued" };
        out.notes.push(note(what, format!("token {} issued ({})", current.token_id, current.hint), false));
    }

    // Claims follow spec and policy (ttl edits, policy changes), computed from issue time.
    let resolved = o.policy.resolve(&pat.spec, current.issued_at);
    let mut desired = current.clone();
    apply_claims(&mut desired, pat, o.policy, &resolved);
    out.status.expires_at = desired.expires_at.map(to_k8s);

    // Expiry and idle timeout end the token.
    let last_used = old.last_used_at.as_ref().map(from_k8s).unwrap_or(current.issued_at).max(current.issued_at);
    let idle_deadline = desired.idle_timeout_seconds.map(|s| last_used + chrono::Duration::seconds(secs(s)));
    let expired = desired.expires_at.is_some_and(|at| at <= now);
    let idled = idle_deadline.is_some_and(|at| at <= now);
    if expired || idled {
        all_records(&mut out);
        if owned_secret.is_some() {
            out.actions.push(Action::DeleteSecret);
        }
        let (reason, message) = if expired {
            ("Expired", format!("The token expired at {}.", fmt_time(desired.expires_at)))
        } else {
            ("IdleTimeout", format!("The token was unused since {} and passed the policy's idle timeout.", last_used.to_rfc3339()))
        };
        out.notes.push(note(reason, message.clone(), true));
        out.status.token_id = Some(current.token_id.clone());
        return finish(out, &old, Phase::Expired, reason, format!("{message} Rotate it (spec.rotation.requestedAt) to issue a new one."), now);
    }
    if desired != *current {
        out.actions.push(Action::UpdateRecord(Box::new(desired.clone())));
    }

    // The previous token, during its grace period.
    let mut deadlines: Vec<DateTime<Utc>> = desired.expires_at.into_iter().chain(idle_deadline).collect();
    if let Some(prev) = previous {
        let grace = pat.spec.rotation.as_ref().and_then(|r| r.grace_period.as_ref()).and_then(|g| g.to_chrono().ok()).unwrap_or_default();
        let grace_end = (current.issued_at + grace).min(prev.expires_at.unwrap_or(DateTime::<Utc>::MAX_UTC));
        if grace_end <= now {
            out.actions.push(Action::DeleteRecord(prev.token_id.clone()));
        } else {
            if prev.expires_at != Some(grace_end) {
                let mut ended = prev.clone();
                ended.expires_at = Some(grace_end);
                out.actions.push(Action::UpdateRecord(Box::new(ended)));
            }
            out.status.previous = Some(PreviousToken { token_id: prev.token_id.clone(), valid_until: to_k8s(grace_end) });
            deadlines.push(grace_end);
        }
    }

    // The delivered Secret: OneTime ones go after the reveal window or acknowledgement.
    let retention = pat.spec.secret.as_ref().and_then(|s| s.retention).unwrap_or_default();
    let acknowledged = pat
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ACKNOWLEDGED_ANNOTATION))
        .is_some_and(|v| *v == current.token_id);
    let delivered_secret = owned_secret.filter(|s| s.token_id.as_deref() == Some(current.token_id.as_str()));
    let (delivered_status, delivered_reason, delivered_message) = match delivered_secret {
        Some(secret) if retention == Retention::OneTime => {
            let window = chrono::Duration::from_std(resolved.reveal_window).unwrap_or_default();
            let reveal_end = secret.delivered_at.unwrap_or(current.issued_at) + window;
            if acknowledged || reveal_end <= now {
                out.actions.push(Action::DeleteSecret);
                let why = if acknowledged { "acknowledged" } else { "reveal window ended" };
                out.notes.push(note("SecretRemoved", format!("one-time Secret {} removed ({why})", secret_name(pat)), false));
                ("False", "Revealed", format!("The one-time Secret was removed ({why}); the plaintext exists nowhere now."))
            } else {
                deadlines.push(reveal_end);
                out.status.secret_ref = Some(SecretReference { name: secret_name(pat) });
                (
                    "True",
                    "SecretAvailable",
                    format!("Read the token from Secret {} before {}; it is then deleted.", secret_name(pat), reveal_end.to_rfc3339()),
                )
            }
        }
        Some(_) => {
            out.status.secret_ref = Some(SecretReference { name: secret_name(pat) });
            ("True", "SecretAvailable", format!("The token is in Secret {} (Persistent).", secret_name(pat)))
        }
        None if retention == Retention::Persistent => {
            // A Persistent Secret someone deleted cannot be re-created without the plaintext;
            // a new token replaces it (the old record goes once the new one is delivered).
            out.actions.push(Action::Issue(IssueReason::Replacement));
            ("False", "SecretMissing", "The Persistent Secret was deleted; issuing a replacement token.".to_owned())
        }
        None => ("False", "Revealed", "The one-time Secret was removed; the plaintext exists nowhere now.".to_owned()),
    };

    // Scheduled or requested rotation.
    let every = pat.spec.rotation.as_ref().and_then(|r| r.every.as_ref()).and_then(|e| e.to_chrono().ok());
    let scheduled = every.map(|e| current.issued_at + e);
    let rotation_due = rotation_requested && current.rotation_request.as_deref() != Some(request.as_str())
        || scheduled.is_some_and(|at| at <= now);
    if rotation_due && !out.actions.iter().any(|a| matches!(a, Action::Issue(_))) {
        out.actions.push(Action::Issue(IssueReason::Rotation));
    }
    deadlines.extend(scheduled.filter(|at| *at > now));

    // Conditions.
    let warn_before = resolved.warn_before.and_then(|d| chrono::Duration::from_std(d).ok());
    let expiring = match (desired.expires_at, warn_before) {
        (Some(at), Some(warn)) => {
            let from = at - warn;
            if from > now {
                deadlines.push(from);
                false
            } else {
                true
            }
        }
        _ => false,
    };
    let mut conditions = Vec::new();
    let expiring_message = if expiring {
        format!("The token expires at {}; rotate it before then.", fmt_time(desired.expires_at))
    } else {
        "The token is not close to expiring.".to_owned()
    };
    if expiring && !has_condition(&old, EXPIRING_SOON, "True") {
        out.notes.push(note("ExpiringSoon", expiring_message.clone(), true));
    }
    conditions.push(condition(&old, EXPIRING_SOON, expiring, if expiring { "WithinWarningPeriod" } else { "NotExpiring" }, expiring_message, pat, now));
    conditions.push(condition(&old, DELIVERED, delivered_status == "True", delivered_reason, delivered_message, pat, now));
    let compliant = resolved.non_compliance.is_empty();
    let compliance_message = if compliant {
        if o.policy.policies.is_empty() {
            "No TokenPolicy governs this namespace.".to_owned()
        } else {
            format!("Complies with {}.", o.policy.policies.join(", "))
        }
    } else {
        resolved.non_compliance.iter().map(|v| v.message.clone()).collect::<Vec<_>>().join("; ")
    };
    if !compliant && !has_condition(&old, POLICY_COMPLIANT, "False") {
        out.notes.push(note("PolicyViolation", compliance_message.clone(), true));
    }
    conditions.push(condition(&old, POLICY_COMPLIANT, compliant, if compliant { "Compliant" } else { "Clamped" }, compliance_message, pat, now));
    conditions.push(condition(&old, READY, true, "TokenActive", "The token authenticates.".into(), pat, now));
    out.status.conditions = conditions;
    out.status.phase = Some(Phase::Active);
    out.requeue_after = deadlines.into_iter().filter(|d| *d > now).min().map(|d| until(now, d));
    out
}

/// Completes a plan for a phase without an active token.
fn finish(mut out: Plan, old: &PersonalAccessTokenStatus, phase: Phase, reason: &str, message: String, now: DateTime<Utc>) -> Plan {
    out.status.phase = Some(phase);
    out.status.hint = if out.status.token_id.is_some() { old.hint.clone() } else { None };
    let generation = out.status.observed_generation;
    let mk = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: transition_time(old, type_, if ok { "True" } else { "False" }, now),
    };
    out.status.conditions = vec![mk(READY, false, reason, message)];
    if phase == Phase::Pending {
        // Issuing: look again soon even if no watch event arrives.
        out.requeue_after = Some(Duration::from_secs(1));
    }
    out
}

fn condition(
    old: &PersonalAccessTokenStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    pat: &PersonalAccessToken,
    now: DateTime<Utc>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: pat.metadata.generation,
        last_transition_time: transition_time(old, type_, status, now),
    }
}

/// Keeps a condition's transition time while its status is unchanged.
fn transition_time(old: &PersonalAccessTokenStatus, type_: &str, status: &str, now: DateTime<Utc>) -> Time {
    old.conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| to_k8s(now))
}

fn has_condition(old: &PersonalAccessTokenStatus, type_: &str, status: &str) -> bool {
    old.conditions.iter().any(|c| c.type_ == type_ && c.status == status)
}

fn note(reason: &'static str, message: String, warning: bool) -> Note {
    Note { reason, message, warning }
}

fn expired_message(old: &PersonalAccessTokenStatus) -> String {
    format!(
        "The token expired{}. Rotate it (spec.rotation.requestedAt) to issue a new one.",
        old.expires_at.as_ref().map(|t| format!(" at {}", from_k8s(t).to_rfc3339())).unwrap_or_default()
    )
}

fn fmt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into())
}

fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 1_000)
}

fn until(now: DateTime<Utc>, at: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or_default().max(Duration::from_millis(100))
}

/// Name of the Secret receiving the plaintext.
pub fn secret_name(pat: &PersonalAccessToken) -> String {
    pat.spec
        .secret
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| format!("{}-token", pat.metadata.name.as_deref().unwrap_or_default()))
}

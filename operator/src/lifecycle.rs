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
    record::{ExchangeGrant, NamespacedName, PatReference, TokenRecord},
    v1alpha1::{
        PersonalAccessToken, PersonalAccessTokenStatus, Phase, PreviousToken, Retention,
        SecretReference,
    },
    validation,
};

pub use patrol_api::v1alpha1::{ACKNOWLEDGED_ANNOTATION, ROTATE_ANNOTATION};
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
    /// Whether admission vetted the owner; decides only issues to a PAT that holds no
    /// record (see [`OwnerVetting`]).
    pub owner: &'a OwnerVetting,
}

/// Whether the operator may trust `spec.owner` (see [`patrol_api::attestation`]).
///
/// Asked before issuing a token to a PAT that has no live record: its first token, and
/// a renewal or replacement after its records are gone. A PAT that holds a record was
/// vetted when that record was issued, and `spec.owner` cannot change since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerVetting {
    /// Attested by admission, or attestation is not required by this operator.
    Vetted,
    /// Not attested: never issue. The message says why and what to do.
    Refused(String),
    /// Cannot tell now (the key is unreadable): wait, issue nothing.
    Undecided(String),
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

pub use patrol_api::v1alpha1::{DELIVERED, EXPIRING_SOON, POLICY_COMPLIANT, READY};

/// How far ahead of this clock another replica's `lastUsedAt` may be and still count.
pub const CLOCK_SKEW_SECONDS: i64 = 300;

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
        scoped: false,
        issued_at,
        expires_at: None,
        idle_timeout_seconds: None,
        pat: PatReference {
            namespace: pat.metadata.namespace.clone().unwrap_or_default(),
            name: pat.metadata.name.clone().unwrap_or_default(),
            uid: pat.metadata.uid.clone().unwrap_or_default(),
        },
        exchange: ExchangeGrant::default(),
        service_account: None,
        rotation_request: Some(pat.rotation_request()),
    };
    apply_claims(&mut record, pat, policy, &resolved);
    record
}

/// What of `desired` may replace `current` on a live token. Narrowing applies in place;
/// widening — a scope the token lacks, a later or no expiry, a longer or no idle timeout,
/// another exchange audience or actor, a longer exchange lifetime — does not: whoever may
/// edit a PersonalAccessToken must not be able to extend a token already in someone's
/// hands. It takes effect with the next rotation, whose new token only the delivered
/// Secret receives. Returns the record to keep and the names of what was held back.
pub fn narrow_only(
    current: &TokenRecord,
    desired: &TokenRecord,
) -> (TokenRecord, Vec<&'static str>) {
    let mut kept = desired.clone();
    let mut held = Vec::new();

    // An unscoped token may do everything its owner may: any scopes narrow it.
    if current.scoped || !current.scopes.is_empty() {
        if desired.scopes.iter().any(|s| !current.scopes.contains(s)) {
            held.push("scopes");
            kept.scopes.retain(|s| current.scopes.contains(s));
        }
        kept.scoped = true;
    }
    if let Some(limit) = no_longer_than(current.expires_at, desired.expires_at) {
        held.push("expiry");
        kept.expires_at = Some(limit);
    }
    if let Some(limit) = no_longer_than(current.idle_timeout_seconds, desired.idle_timeout_seconds)
    {
        held.push("idle timeout");
        kept.idle_timeout_seconds = Some(limit);
    }
    let (now, wanted) = (&current.exchange, &desired.exchange);
    match (&now.audiences, &wanted.audiences) {
        (Some(allowed), None) => {
            held.push("exchange audiences");
            kept.exchange.audiences = Some(allowed.clone());
        }
        (Some(allowed), Some(list)) if list.iter().any(|a| !allowed.contains(a)) => {
            held.push("exchange audiences");
            kept.exchange.audiences = Some(
                list.iter()
                    .filter(|a| allowed.contains(a))
                    .cloned()
                    .collect(),
            );
        }
        _ => {}
    }
    if let (Some(list), Some(default)) = (&kept.exchange.audiences, &kept.exchange.default_audience)
        && !list.contains(default)
    {
        kept.exchange.default_audience = now
            .default_audience
            .clone()
            .filter(|d| list.contains(d))
            .or_else(|| list.first().cloned());
    }
    if wanted
        .allowed_actors
        .iter()
        .any(|a| !now.allowed_actors.contains(a))
    {
        held.push("exchange actors");
        kept.exchange
            .allowed_actors
            .retain(|a| now.allowed_actors.contains(a));
    }
    if wanted.max_ttl_seconds > now.max_ttl_seconds {
        held.push("exchange lifetime");
        kept.exchange.max_ttl_seconds = now.max_ttl_seconds;
    }
    // Another ServiceAccount is other rights, not fewer: only dropping it applies live.
    if desired.service_account.is_some() && desired.service_account != current.service_account {
        held.push("credentials ServiceAccount");
        kept.service_account = current.service_account.clone();
    }
    (kept, held)
}

/// For a limit where `None` means unlimited: the current limit when `wanted` would lift or
/// raise it, `None` when `wanted` may apply.
fn no_longer_than<T: PartialOrd + Copy>(current: Option<T>, wanted: Option<T>) -> Option<T> {
    match (current, wanted) {
        (Some(now), None) => Some(now),
        (Some(now), Some(wanted)) if wanted > now => Some(now),
        _ => None,
    }
}

/// Sets the claims a record derives from spec and policy (everything but identity and hash).
fn apply_claims(
    record: &mut TokenRecord,
    pat: &PersonalAccessToken,
    policy: &EffectivePolicy,
    resolved: &ResolvedToken,
) {
    record.owner = pat.spec.owner.clone().unwrap_or_default();
    record.service_account = pat
        .spec
        .credentials
        .as_ref()
        .and_then(|c| c.service_account.as_ref())
        .map(|sa| NamespacedName {
            namespace: sa
                .namespace
                .clone()
                .or_else(|| pat.metadata.namespace.clone())
                .unwrap_or_default(),
            name: sa.name.clone(),
        });
    record.scopes = resolved.granted_scopes.clone();
    // Once scoped, always scoped: emptying spec.scopes must not turn a restricted token
    // into one with its owner's full rights.
    record.scoped = record.scoped || !pat.spec.scopes.is_empty();
    record.expires_at = resolved.expires_at;
    record.idle_timeout_seconds = resolved.idle_timeout.map(|d| d.as_secs());
    let spec_audiences = pat
        .spec
        .exchange
        .as_ref()
        .map(|e| e.audiences.clone())
        .unwrap_or_default();
    let audiences = match (policy_audiences(policy), spec_audiences.is_empty()) {
        (None, true) => None,
        (None, false) => Some(spec_audiences),
        (Some(allowed), true) => Some(allowed),
        (Some(allowed), false) => Some(
            spec_audiences
                .into_iter()
                .filter(|a| allowed.contains(a))
                .collect(),
        ),
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
        allowed_actors: pat
            .spec
            .exchange
            .as_ref()
            .map(|e| e.allowed_actors.clone())
            .unwrap_or_default(),
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
            let delete = Action::DeleteRecord(r.token_id.clone());
            // Orphans may already be queued; each record is deleted once.
            if !out.actions.contains(&delete) {
                out.actions.push(delete);
            }
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
            out.notes.push(note(
                "Revoked",
                "token revoked; it no longer authenticates".into(),
                false,
            ));
        }
        return finish(
            out,
            &old,
            Phase::Revoked,
            "Revoked",
            "The token was revoked (spec.revoked) and no longer authenticates.".into(),
            now,
        );
    }

    // An invalid spec (possible only if admission was bypassed) is reported, not acted on.
    let errors =
        validation::validate_token(pat.metadata.name.as_deref().unwrap_or_default(), &pat.spec);
    if !errors.is_empty() {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        out.status.token_id = old.token_id.clone();
        return finish(
            out,
            &old,
            Phase::Failed,
            "InvalidSpec",
            format!("Fix the spec: {message}"),
            now,
        );
    }
    // A token must belong to someone: never issue one for an empty username.
    if pat
        .spec
        .owner
        .as_ref()
        .is_none_or(|o| o.username.is_empty())
    {
        out.status.token_id = old.token_id.clone();
        return finish(
            out,
            &old,
            Phase::Failed,
            "OwnerMissing",
            "spec.owner is not set. Patrol's mutating webhook sets it to the creating user; without the webhook, set spec.owner.username.".into(),
            now,
        );
    }

    // Which token is current: the one the Secret delivered (newest), else the one in status.
    let delivered = owned_secret
        .and_then(|s| s.token_id.as_deref())
        .and_then(record);
    let from_status = old.token_id.as_deref().and_then(record);
    let current = delivered.or(from_status);
    let previous_id = match (delivered, from_status) {
        (Some(d), Some(s)) if d.token_id != s.token_id => Some(s.token_id.clone()),
        _ => old.previous.as_ref().map(|p| p.token_id.clone()),
    };
    let previous = previous_id
        .as_deref()
        .and_then(record)
        .filter(|p| Some(p.token_id.as_str()) != current.map(|c| c.token_id.as_str()));

    // Orphans: records neither current nor previous (e.g. a crash before delivery).
    for r in o.records {
        let keep = Some(&r.token_id) == current.map(|c| &c.token_id)
            || Some(&r.token_id) == previous.map(|p| &p.token_id);
        if !keep {
            out.actions.push(Action::DeleteRecord(r.token_id.clone()));
        }
    }

    if o.secret.is_some_and(|s| !s.owned) {
        // The conflict blocks delivery only: the current token (and its grace) stays known,
        // or the next reconcile would take its record for an orphan and delete it.
        out.status.token_id = old.token_id.clone();
        out.status.previous = old.previous.clone().filter(|_| previous.is_some());
        let name = secret_name(pat);
        return finish(
            out,
            &old,
            Phase::Failed,
            "SecretConflict",
            format!(
                "Secret {name} exists and was not created by Patrol for this token; delete it or set spec.secret.name to another name"
            ),
            now,
        );
    }

    let request = pat.rotation_request();
    let rotation_requested = old
        .last_rotation_request
        .as_deref()
        .is_some_and(|last| last != request);

    let Some(current) = current else {
        // No usable token. Terminal phases stay terminal unless a rotation renews them.
        if old.phase == Some(Phase::Expired) && !rotation_requested {
            if owned_secret.is_some() {
                out.actions.push(Action::DeleteSecret);
            }
            // Keep what the expiry recorded (which token, when, and why: Expired or
            // IdleTimeout), so the status stays as written instead of drifting.
            out.status.token_id = old.token_id.clone();
            out.status.issued_at = old.issued_at.clone();
            out.status.expires_at = old.expires_at.clone();
            let (reason, message) = old
                .conditions
                .iter()
                .find(|c| c.type_ == READY && c.status == "False")
                .map_or(("Expired", expired_message(&old)), |c| {
                    (c.reason.as_str(), c.message.clone())
                });
            return finish(out, &old, Phase::Expired, reason, message, now);
        }
        let reason = if old.phase == Some(Phase::Expired) {
            IssueReason::Renewal
        } else if old.token_id.is_some() {
            IssueReason::Replacement
        } else {
            IssueReason::Initial
        };
        if o.records.is_empty() {
            match o.owner {
                OwnerVetting::Vetted => {}
                OwnerVetting::Refused(why) => {
                    out.status.token_id = old.token_id.clone();
                    return finish(
                        out,
                        &old,
                        Phase::Failed,
                        "OwnerNotVetted",
                        format!(
                            "No token is issued: admission did not vet spec.owner ({why}). Create the PersonalAccessToken again in a namespace patrol-webhook admits, without naming an owner you may not impersonate."
                        ),
                        now,
                    );
                }
                OwnerVetting::Undecided(why) => {
                    out.status.token_id = old.token_id.clone();
                    let mut plan = finish(
                        out,
                        &old,
                        Phase::Pending,
                        "OwnerVettingUnavailable",
                        format!("Waiting to check that admission vetted spec.owner: {why}"),
                        now,
                    );
                    plan.requeue_after = Some(Duration::from_secs(15));
                    return plan;
                }
            }
        }
        out.actions.push(Action::Issue(reason));
        out.status.phase = Some(Phase::Pending);
        return finish(
            out,
            &old,
            Phase::Pending,
            "Issuing",
            "Issuing the token.".into(),
            now,
        );
    };

    // Adopt the current token into status.
    out.status.token_id = Some(current.token_id.clone());
    out.status.hint = Some(current.hint.clone());
    out.status.issued_at = Some(to_k8s(current.issued_at));
    out.status.last_rotation_request = current
        .rotation_request
        .clone()
        .or(old.last_rotation_request.clone());
    if delivered.is_some() && old.token_id.as_deref() != Some(&current.token_id) {
        let what = if old.token_id.is_some() {
            "Rotated"
        } else {
            "Issued"
        };
        out.notes.push(note(
            what,
            format!("token {} issued ({})", current.token_id, current.hint),
            false,
        ));
    }

    // Claims follow spec and policy (ttl edits, policy changes), computed from issue time;
    // on the live token only as far as they narrow it. Widening waits for a rotation.
    let resolved = o.policy.resolve(&pat.spec, current.issued_at);
    let mut wanted = current.clone();
    apply_claims(&mut wanted, pat, o.policy, &resolved);
    let (desired, _held_back) = narrow_only(current, &wanted);
    out.status.expires_at = desired.expires_at.map(to_k8s);

    // Expiry and idle timeout end the token. A last use later than now (beyond clock skew)
    // is not believed: status is writable by others, and a date far ahead would hold the
    // idle timeout off for ever.
    let last_used = old
        .last_used_at
        .as_ref()
        .map(from_k8s)
        .filter(|at| *at <= now + chrono::Duration::seconds(CLOCK_SKEW_SECONDS))
        .unwrap_or(current.issued_at)
        .max(current.issued_at);
    let idle_deadline = desired
        .idle_timeout_seconds
        .map(|s| last_used + chrono::Duration::seconds(secs(s)));
    let expired = desired.expires_at.is_some_and(|at| at <= now);
    let idled = idle_deadline.is_some_and(|at| at <= now);
    if expired || idled {
        all_records(&mut out);
        if owned_secret.is_some() {
            out.actions.push(Action::DeleteSecret);
        }
        let (reason, message) = if expired {
            (
                "Expired",
                format!("The token expired at {}.", fmt_time(desired.expires_at)),
            )
        } else {
            (
                "IdleTimeout",
                format!(
                    "The token was unused since {} and passed the policy's idle timeout.",
                    last_used.to_rfc3339()
                ),
            )
        };
        out.notes.push(note(reason, message.clone(), true));
        out.status.token_id = Some(current.token_id.clone());
        return finish(
            out,
            &old,
            Phase::Expired,
            reason,
            format!("{message} Rotate it (spec.rotation.requestedAt) to issue a new one."),
            now,
        );
    }
    if desired != *current {
        out.actions
            .push(Action::UpdateRecord(Box::new(desired.clone())));
    }

    // The previous token, during its grace period.
    let mut deadlines: Vec<DateTime<Utc>> = desired
        .expires_at
        .into_iter()
        .chain(idle_deadline)
        .collect();
    if let Some(prev) = previous {
        let grace = pat
            .spec
            .rotation
            .as_ref()
            .and_then(|r| r.grace_period.as_ref())
            .and_then(|g| g.to_chrono().ok())
            .unwrap_or_default();
        let grace_end =
            (current.issued_at + grace).min(prev.expires_at.unwrap_or(DateTime::<Utc>::MAX_UTC));
        if grace_end <= now {
            out.actions
                .push(Action::DeleteRecord(prev.token_id.clone()));
        } else {
            if prev.expires_at != Some(grace_end) {
                let mut ended = prev.clone();
                ended.expires_at = Some(grace_end);
                out.actions.push(Action::UpdateRecord(Box::new(ended)));
            }
            out.status.previous = Some(PreviousToken {
                token_id: prev.token_id.clone(),
                valid_until: to_k8s(grace_end),
            });
            deadlines.push(grace_end);
        }
    }

    // The delivered Secret: OneTime ones go after the reveal window or acknowledgement.
    let retention = pat.retention();
    let acknowledged = pat
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ACKNOWLEDGED_ANNOTATION))
        .is_some_and(|v| *v == current.token_id);
    let delivered_secret =
        owned_secret.filter(|s| s.token_id.as_deref() == Some(current.token_id.as_str()));
    let (delivered_status, delivered_reason, delivered_message) = match delivered_secret {
        Some(secret) if retention == Retention::OneTime => {
            let window = chrono::Duration::from_std(resolved.reveal_window).unwrap_or_default();
            let reveal_end = secret.delivered_at.unwrap_or(current.issued_at) + window;
            if acknowledged || reveal_end <= now {
                out.actions.push(Action::DeleteSecret);
                let why = if acknowledged {
                    "acknowledged"
                } else {
                    "reveal window ended"
                };
                out.notes.push(note(
                    "SecretRemoved",
                    format!("one-time Secret {} removed ({why})", secret_name(pat)),
                    false,
                ));
                (
                    "False",
                    "Revealed",
                    format!(
                        "The one-time Secret was removed ({why}); the plaintext exists nowhere now."
                    ),
                )
            } else {
                deadlines.push(reveal_end);
                out.status.secret_ref = Some(SecretReference {
                    name: secret_name(pat),
                });
                (
                    "True",
                    "SecretAvailable",
                    format!(
                        "Read the token from Secret {} before {}; it is then deleted.",
                        secret_name(pat),
                        reveal_end.to_rfc3339()
                    ),
                )
            }
        }
        Some(_) => {
            out.status.secret_ref = Some(SecretReference {
                name: secret_name(pat),
            });
            (
                "True",
                "SecretAvailable",
                format!("The token is in Secret {} (Persistent).", secret_name(pat)),
            )
        }
        None if retention == Retention::Persistent => {
            // A Persistent Secret someone deleted cannot be re-created without the plaintext;
            // a new token replaces it (the old record goes once the new one is delivered).
            out.actions.push(Action::Issue(IssueReason::Replacement));
            (
                "False",
                "SecretMissing",
                "The Persistent Secret was deleted; issuing a replacement token.".to_owned(),
            )
        }
        None => (
            "False",
            "Revealed",
            "The one-time Secret was removed; the plaintext exists nowhere now.".to_owned(),
        ),
    };

    // Scheduled or requested rotation.
    let every = pat
        .spec
        .rotation
        .as_ref()
        .and_then(|r| r.every.as_ref())
        .and_then(|e| e.to_chrono().ok());
    let scheduled = every.map(|e| current.issued_at + e);
    let rotation_due = rotation_requested
        && current.rotation_request.as_deref() != Some(request.as_str())
        || scheduled.is_some_and(|at| at <= now);
    if rotation_due && !out.actions.iter().any(|a| matches!(a, Action::Issue(_))) {
        out.actions.push(Action::Issue(IssueReason::Rotation));
    }
    deadlines.extend(scheduled.filter(|at| *at > now));

    // Conditions.
    let warn_before = resolved
        .warn_before
        .and_then(|d| chrono::Duration::from_std(d).ok());
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
        format!(
            "The token expires at {}; rotate it before then.",
            fmt_time(desired.expires_at)
        )
    } else {
        "The token is not close to expiring.".to_owned()
    };
    if expiring && !has_condition(&old, EXPIRING_SOON, "True") {
        out.notes
            .push(note("ExpiringSoon", expiring_message.clone(), true));
    }
    conditions.push(condition(
        &old,
        EXPIRING_SOON,
        expiring,
        if expiring {
            "WithinWarningPeriod"
        } else {
            "NotExpiring"
        },
        expiring_message,
        pat,
        now,
    ));
    conditions.push(condition(
        &old,
        DELIVERED,
        delivered_status == "True",
        delivered_reason,
        delivered_message,
        pat,
        now,
    ));
    let compliant = resolved.non_compliance.is_empty();
    let compliance_message = if compliant {
        if o.policy.policies.is_empty() {
            "No TokenPolicy governs this namespace.".to_owned()
        } else {
            format!("Complies with {}.", o.policy.policies.join(", "))
        }
    } else {
        resolved
            .non_compliance
            .iter()
            .map(|v| v.message.clone())
            .collect::<Vec<_>>()
            .join("; ")
    };
    if !compliant && !has_condition(&old, POLICY_COMPLIANT, "False") {
        out.notes
            .push(note("PolicyViolation", compliance_message.clone(), true));
    }
    conditions.push(condition(
        &old,
        POLICY_COMPLIANT,
        compliant,
        if compliant { "Compliant" } else { "Clamped" },
        compliance_message,
        pat,
        now,
    ));
    conditions.push(condition(
        &old,
        READY,
        true,
        "TokenActive",
        "The token authenticates.".into(),
        pat,
        now,
    ));
    out.status.conditions = conditions;
    out.status.phase = Some(Phase::Active);
    out.requeue_after = deadlines
        .into_iter()
        .filter(|d| *d > now)
        .min()
        .map(|d| until(now, d));
    out
}

/// Completes a plan for a phase without an active token.
fn finish(
    mut out: Plan,
    old: &PersonalAccessTokenStatus,
    phase: Phase,
    reason: &str,
    message: String,
    now: DateTime<Utc>,
) -> Plan {
    out.status.phase = Some(phase);
    out.status.hint = if out.status.token_id.is_some() {
        old.hint.clone()
    } else {
        None
    };
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
fn transition_time(
    old: &PersonalAccessTokenStatus,
    type_: &str,
    status: &str,
    now: DateTime<Utc>,
) -> Time {
    old.conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| to_k8s(now))
}

fn has_condition(old: &PersonalAccessTokenStatus, type_: &str, status: &str) -> bool {
    old.conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == status)
}

fn note(reason: &'static str, message: String, warning: bool) -> Note {
    Note {
        reason,
        message,
        warning,
    }
}

fn expired_message(old: &PersonalAccessTokenStatus) -> String {
    format!(
        "The token expired{}. Rotate it (spec.rotation.requestedAt) to issue a new one.",
        old.expires_at
            .as_ref()
            .map(|t| format!(" at {}", from_k8s(t).to_rfc3339()))
            .unwrap_or_default()
    )
}

fn fmt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into())
}

fn secs(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 1_000)
}

fn until(now: DateTime<Utc>, at: DateTime<Utc>) -> Duration {
    (at - now)
        .to_std()
        .unwrap_or_default()
        .max(Duration::from_millis(100))
}

/// Name of the Secret receiving the plaintext.
pub fn secret_name(pat: &PersonalAccessToken) -> String {
    pat.spec
        .secret
        .as_ref()
        .and_then(|s| s.name.clone())
        .unwrap_or_else(|| format!("{}-token", pat.metadata.name.as_deref().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    //! Table tests for [`plan`]: every branch as a named case asserting the exact actions,
    //! the phase, the conditions (type, status, reason), the requeue and the notes.

    use std::collections::BTreeMap;

    use patrol_api::{
        policy::PolicySet,
        v1alpha1::{
            Expiration, PersonalAccessTokenSpec, Rotation, SecretDelivery, TokenOwner, TokenPolicy,
        },
    };
    use serde_json::json;

    use super::*;

    const A: &str = "AAAAAAAAAAAA";
    const B: &str = "BBBBBBBBBBBB";
    const X: &str = "XXXXXXXXXXXX";
    const MIN: i64 = 60;
    const HOUR: i64 = 3_600;
    const DAY: i64 = 86_400;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("time")
    }

    fn ago(secs: i64) -> DateTime<Utc> {
        now() - chrono::Duration::seconds(secs)
    }

    fn span(s: i64) -> Duration {
        Duration::from_secs(u64::try_from(s).expect("positive"))
    }

    /// Fixture builders in the style of controller-rs (`Thing::test().finalized()`).
    trait PatFixture: Sized {
        fn test() -> Self;
        fn with_status(self, status: PersonalAccessTokenStatus) -> Self;
        fn with_spec(self, edit: impl FnOnce(&mut PersonalAccessTokenSpec)) -> Self;
        fn annotated(self, key: &str, value: &str) -> Self;
        fn persistent(self) -> Self;
        fn rotation(self, edit: impl FnOnce(&mut Rotation)) -> Self;
    }

    impl PatFixture for PersonalAccessToken {
        fn test() -> Self {
            let mut pat = PersonalAccessToken::new(
                "laptop",
                PersonalAccessTokenSpec {
                    display_name: "laptop kubectl".into(),
                    owner: Some(TokenOwner {
                        username: "alice".into(),
                        uid: Some("u-1".into()),
                        groups: vec!["dev".into()],
                    }),
                    ..PersonalAccessTokenSpec::default()
                },
            );
            pat.metadata.namespace = Some("team-a".into());
            pat.metadata.uid = Some("pat-uid".into());
            pat.metadata.generation = Some(1);
            pat
        }

        fn with_status(mut self, status: PersonalAccessTokenStatus) -> Self {
            self.status = Some(status);
            self
        }

        fn with_spec(mut self, edit: impl FnOnce(&mut PersonalAccessTokenSpec)) -> Self {
            edit(&mut self.spec);
            self
        }

        fn annotated(mut self, key: &str, value: &str) -> Self {
            self.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(key.into(), value.into());
            self
        }

        fn persistent(self) -> Self {
            self.with_spec(|s| {
                s.secret
                    .get_or_insert_with(SecretDelivery::default)
                    .retention = Some(Retention::Persistent)
            })
        }

        fn rotation(self, edit: impl FnOnce(&mut Rotation)) -> Self {
            self.with_spec(|s| edit(s.rotation.get_or_insert_with(Rotation::default)))
        }
    }

    /// The record the reconciler writes when it issues `id` for `pat` at `at`.
    fn issued(
        pat: &PersonalAccessToken,
        policy: &EffectivePolicy,
        id: &str,
        at: DateTime<Utc>,
    ) -> TokenRecord {
        new_record(
            pat,
            policy,
            id.into(),
            format!("$argon2id$v=19$m=64,t=1,p=1$c2FsdA${id}"),
            format!("patrol_{id}_…wxyz"),
            at,
        )
    }

    /// The status written once `record` was adopted.
    fn status_for(record: &TokenRecord) -> PersonalAccessTokenStatus {
        PersonalAccessTokenStatus {
            phase: Some(Phase::Active),
            token_id: Some(record.token_id.clone()),
            hint: Some(record.hint.clone()),
            issued_at: Some(to_k8s(record.issued_at)),
            expires_at: record.expires_at.map(to_k8s),
            last_rotation_request: record.rotation_request.clone(),
            observed_generation: Some(1),
            ..PersonalAccessTokenStatus::default()
        }
    }

    fn pending() -> PersonalAccessTokenStatus {
        PersonalAccessTokenStatus {
            phase: Some(Phase::Pending),
            observed_generation: Some(1),
            ..PersonalAccessTokenStatus::default()
        }
    }

    fn delivered(id: &str, at: DateTime<Utc>) -> DeliveredSecret {
        DeliveredSecret {
            owned: true,
            token_id: Some(id.into()),
            delivered_at: Some(at),
        }
    }

    fn foreign() -> DeliveredSecret {
        DeliveredSecret {
            owned: false,
            token_id: None,
            delivered_at: None,
        }
    }

    fn no_policy() -> EffectivePolicy {
        EffectivePolicy::default()
    }

    /// One TokenPolicy named `baseline` selecting every namespace, as the API would store it.
    fn governed_by(spec: serde_json::Value) -> EffectivePolicy {
        let policy: TokenPolicy = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1",
            "kind": "TokenPolicy",
            "metadata": {"name": "baseline"},
            "spec": spec,
        }))
        .expect("policy");
        let labels = BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            "team-a".to_owned(),
        )]);
        let effective = PolicySet::new([policy]).effective_for(&labels);
        assert_eq!(effective.policies, ["baseline"], "policy applies");
        effective
    }

    struct Case {
        pat: PersonalAccessToken,
        records: Vec<TokenRecord>,
        secret: Option<DeliveredSecret>,
        policy: EffectivePolicy,
        now: DateTime<Utc>,
        owner: OwnerVetting,
    }

    impl Case {
        fn new(pat: &PersonalAccessToken) -> Self {
            Self {
                pat: pat.clone(),
                records: Vec::new(),
                secret: None,
                policy: no_policy(),
                now: now(),
                owner: OwnerVetting::Vetted,
            }
        }

        fn owner(mut self, owner: OwnerVetting) -> Self {
            self.owner = owner;
            self
        }

        fn records<const N: usize>(mut self, records: [&TokenRecord; N]) -> Self {
            self.records = records.into_iter().cloned().collect();
            self
        }

        fn secret(mut self, secret: DeliveredSecret) -> Self {
            self.secret = Some(secret);
            self
        }

        fn policy(mut self, policy: &EffectivePolicy) -> Self {
            self.policy = policy.clone();
            self
        }

        fn at(mut self, now: DateTime<Utc>) -> Self {
            self.now = now;
            self
        }

        fn plan(&self) -> Plan {
            plan(&Observed {
                pat: &self.pat,
                records: &self.records,
                secret: self.secret.as_ref(),
                policy: &self.policy,
                now: self.now,
                owner: &self.owner,
            })
        }
    }

    type Cond = (&'static str, &'static str, &'static str);

    /// What a plan must be, exactly (conditions as type, status, reason, in order).
    #[derive(Clone)]
    struct Expect {
        actions: Vec<Action>,
        phase: Phase,
        conditions: Vec<Cond>,
        requeue: Option<Duration>,
        notes: Vec<(&'static str, bool)>,
    }

    impl Expect {
        #[track_caller]
        fn check(&self, case: &str, plan: &Plan) {
            assert_eq!(plan.actions, self.actions, "{case}: actions");
            assert_eq!(plan.status.phase, Some(self.phase), "{case}: phase");
            let conditions: Vec<(&str, &str, &str)> = plan
                .status
                .conditions
                .iter()
                .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
                .collect();
            assert_eq!(conditions, self.conditions, "{case}: conditions");
            assert_eq!(plan.requeue_after, self.requeue, "{case}: requeue_after");
            let notes: Vec<(&str, bool)> =
                plan.notes.iter().map(|n| (n.reason, n.warning)).collect();
            assert_eq!(notes, self.notes, "{case}: notes");
            assert_eq!(
                plan.status.last_used_at, None,
                "{case}: lastUsedAt is the webhook's"
            );
            assert!(
                plan.status
                    .conditions
                    .iter()
                    .all(|c| c.observed_generation == Some(1)),
                "{case}: observedGeneration"
            );
        }
    }

    fn ready_false(reason: &'static str) -> Vec<Cond> {
        vec![(READY, "False", reason)]
    }

    /// Conditions of an Active token: not expiring, compliant, with this Delivered state.
    fn active(delivered: &'static str, reason: &'static str) -> Vec<Cond> {
        vec![
            (EXPIRING_SOON, "False", "NotExpiring"),
            (DELIVERED, delivered, reason),
            (POLICY_COMPLIANT, "True", "Compliant"),
            (READY, "True", "TokenActive"),
        ]
    }

    fn condition<'p>(plan: &'p Plan, type_: &str) -> &'p Condition {
        plan.status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    #[test]
    fn secret_name_and_rotation_request() {
        let pat = PersonalAccessToken::test();
        assert_eq!(secret_name(&pat), "laptop-token");
        let named = pat.clone().with_spec(|s| {
            s.secret = Some(SecretDelivery {
                name: Some("ci-pat".into()),
                ..SecretDelivery::default()
            })
        });
        assert_eq!(secret_name(&named), "ci-pat");
        assert_eq!(pat.rotation_request(), "spec=;annotation=");
        let both = pat
            .rotation(|r| r.requested_at = Some("r1".into()))
            .annotated(ROTATE_ANNOTATION, "x");
        assert_eq!(both.rotation_request(), "spec=r1;annotation=x");
    }

    // ---- Revoked -------------------------------------------------------------------------

    #[test]
    fn revoked_ends_every_record_and_the_owned_secret() {
        let pat = PersonalAccessToken::test()
            .persistent()
            .rotation(|r| r.grace_period = Some("1d".into()));
        let a = issued(&pat, &no_policy(), A, ago(2 * DAY));
        let b = issued(&pat, &no_policy(), B, ago(HOUR));
        let status = PersonalAccessTokenStatus {
            previous: Some(PreviousToken {
                token_id: A.into(),
                valid_until: to_k8s(ago(-HOUR)),
            }),
            ..status_for(&b)
        };
        let revoked = pat.with_spec(|s| s.revoked = true).with_status(status);

        let plan = Case::new(&revoked)
            .records([&a, &b])
            .secret(delivered(B, ago(HOUR)))
            .plan();
        Expect {
            actions: vec![
                Action::DeleteRecord(A.into()),
                Action::DeleteRecord(B.into()),
                Action::DeleteSecret,
            ],
            phase: Phase::Revoked,
            conditions: ready_false("Revoked"),
            requeue: None,
            notes: vec![("Revoked", false)],
        }
        .check("revoked with records and owned secret", &plan);
        assert_eq!(plan.status.token_id, None);
        assert_eq!(plan.status.hint, None);
        assert_eq!(plan.status.previous, None);

        // A foreign Secret of the same name is never touched.
        let plan = Case::new(&revoked).records([&b]).secret(foreign()).plan();
        Expect {
            actions: vec![Action::DeleteRecord(B.into())],
            phase: Phase::Revoked,
            conditions: ready_false("Revoked"),
            requeue: None,
            notes: vec![("Revoked", false)],
        }
        .check("revoked with a foreign secret", &plan);

        // Once Revoked, nothing is left to do and no second note is published.
        let first = Case::new(&revoked).at(ago(MIN)).plan();
        let again = revoked.clone().with_status(first.status.clone());
        let plan = Case::new(&again).plan();
        Expect {
            actions: vec![],
            phase: Phase::Revoked,
            conditions: ready_false("Revoked"),
            requeue: None,
            notes: vec![],
        }
        .check("already revoked", &plan);
        assert_eq!(plan.status, first.status, "status is stable");
    }

    // ---- Invalid spec --------------------------------------------------------------------

    #[test]
    fn missing_owner_is_never_issued_a_token() {
        let pat = PersonalAccessToken::test().with_spec(|s| s.owner = None);
        let plan = Case::new(&pat).plan();
        Expect {
            actions: vec![],
            phase: Phase::Failed,
            conditions: ready_false("OwnerMissing"),
            requeue: None,
            notes: vec![],
        }
        .check("no owner", &plan);
        assert!(
            condition(&plan, READY).message.contains("spec.owner"),
            "{}",
            condition(&plan, READY).message
        );
    }

    #[test]
    fn an_owner_admission_did_not_vet_is_never_issued_a_token() {
        let pat = PersonalAccessToken::test();
        let refused = OwnerVetting::Refused("it has no annotation".into());
        let plan = Case::new(&pat).owner(refused.clone()).plan();
        Expect {
            actions: vec![],
            phase: Phase::Failed,
            conditions: ready_false("OwnerNotVetted"),
            requeue: None,
            notes: vec![],
        }
        .check("first token", &plan);
        let message = &condition(&plan, READY).message;
        assert!(message.contains("it has no annotation"), "{message}");
        assert!(
            message.contains("Create the PersonalAccessToken again"),
            "{message}"
        );

        // Undecided: wait and look again, issue nothing.
        let plan = Case::new(&pat)
            .owner(OwnerVetting::Undecided("Secret unreadable".into()))
            .plan();
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        assert_eq!(plan.status.phase, Some(Phase::Pending));
        assert_eq!(condition(&plan, READY).reason, "OwnerVettingUnavailable");
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(15)));

        // A status that claims an earlier token does not skip the check (status is not
        // proof): without a record, vetting decides.
        let claimed = pat.clone().with_status(PersonalAccessTokenStatus {
            token_id: Some(A.into()),
            ..PersonalAccessTokenStatus::default()
        });
        let plan = Case::new(&claimed).owner(refused.clone()).plan();
        assert_eq!(condition(&plan, READY).reason, "OwnerNotVetted");
        assert!(plan.actions.is_empty());

        // A PAT that holds a record was vetted when it was issued: rotation proceeds.
        let live = PersonalAccessToken::test()
            .persistent()
            .rotation(|r| r.requested_at = Some("r1".into()));
        let a = issued(&live, &no_policy(), A, ago(DAY));
        let plan = Case::new(
            &live
                .rotation(|r| r.requested_at = Some("r2".into()))
                .with_status(status_for(&a)),
        )
        .records([&a])
        .secret(delivered(A, ago(DAY)))
        .owner(refused)
        .plan();
        assert_eq!(plan.actions, vec![Action::Issue(IssueReason::Rotation)]);
    }

    #[test]
    fn invalid_spec_fails_without_acting_on_records() {
        let pat = PersonalAccessToken::test().persistent();
        let a = issued(&pat, &no_policy(), A, ago(DAY));
        let orphan = issued(&pat, &no_policy(), X, ago(MIN));
        let invalid = pat
            .with_spec(|s| s.display_name = String::new())
            .with_status(status_for(&a));

        let plan = Case::new(&invalid)
            .records([&a, &orphan])
            .secret(delivered(A, ago(DAY)))
            .plan();
        Expect {
            actions: vec![],
            phase: Phase::Failed,
            conditions: ready_false("InvalidSpec"),
            requeue: None,
            notes: vec![],
        }
        .check("invalid spec", &plan);
        assert!(
            condition(&plan, READY)
                .message
                .starts_with("Fix the spec: spec.displayName"),
            "{}",
            condition(&plan, READY).message
        );
        assert_eq!(
            plan.status.token_id.as_deref(),
            Some(A),
            "the current token stays known"
        );
        assert_eq!(plan.status.hint.as_deref(), Some(a.hint.as_str()));
    }

    // ---- Issue and adoption --------------------------------------------------------------

    #[test]
    fn a_fresh_pat_issues_its_initial_token() {
        let plan = Case::new(&PersonalAccessToken::test()).plan();
        Expect {
            actions: vec![Action::Issue(IssueReason::Initial)],
            phase: Phase::Pending,
            conditions: ready_false("Issuing"),
            requeue: Some(Duration::from_secs(1)),
            notes: vec![],
        }
        .check("fresh", &plan);
        assert_eq!(plan.status.token_id, None);
        assert_eq!(
            plan.status.last_rotation_request, None,
            "nothing acted upon yet"
        );
        assert!(plan.status.policies.is_empty());
    }

    #[test]
    fn the_token_the_secret_names_is_adopted_once() {
        // Crash (or the normal stop) after the Secret: status does not name the token yet.
        let pat = PersonalAccessToken::test().with_status(pending());
        let a = issued(&pat, &no_policy(), A, ago(1));
        let case = Case::new(&pat).records([&a]).secret(delivered(A, ago(1)));
        let plan = case.plan();
        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: Some(span(HOUR - 1)), // the reveal window's end
            notes: vec![("Issued", false)],
        }
        .check("adopt initial", &plan);
        let st = &plan.status;
        assert_eq!(st.token_id.as_deref(), Some(A));
        assert_eq!(st.hint.as_deref(), Some(a.hint.as_str()));
        assert_eq!(st.issued_at, Some(to_k8s(a.issued_at)));
        assert_eq!(st.expires_at, None);
        assert_eq!(st.last_rotation_request, a.rotation_request);
        assert_eq!(
            st.secret_ref,
            Some(SecretReference {
                name: "laptop-token".into()
            })
        );
        assert_eq!(st.previous, None);

        // The next reconcile sees it adopted: no second note, same status.
        let again = Case {
            pat: pat.clone().with_status(plan.status.clone()),
            ..case
        }
        .plan();
        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: Some(span(HOUR - 1)),
            notes: vec![],
        }
        .check("adopted", &again);
        assert_eq!(again.status, plan.status);
    }

    #[test]
    fn adopting_a_rotated_token_keeps_the_old_one_for_the_grace_period() {
        let pat = PersonalAccessToken::test()
            .persistent()
            .rotation(|r| r.grace_period = Some("1h".into()));
        let a = issued(&pat, &no_policy(), A, ago(10 * DAY));
        let b = issued(&pat, &no_policy(), B, ago(MIN));
        let grace_end = b.issued_at + chrono::Duration::hours(1);
        let pat = pat.with_status(status_for(&a));

        let plan = Case::new(&pat)
            .records([&a, &b])
            .secret(delivered(B, ago(MIN)))
            .plan();
        let ended = TokenRecord {
            expires_at: Some(grace_end),
            ..a.clone()
        };
        Expect {
            actions: vec![Action::UpdateRecord(Box::new(ended))],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: Some(span(HOUR - MIN)),
            notes: vec![("Rotated", false)],
        }
        .check("adopt rotation", &plan);
        assert_eq!(plan.status.token_id.as_deref(), Some(B));
        assert_eq!(
            plan.status.previous,
            Some(PreviousToken {
                token_id: A.into(),
                valid_until: to_k8s(grace_end)
            })
        );
        assert!(
            plan.notes[0].message.contains(B),
            "{}",
            plan.notes[0].message
        );
    }

    #[test]
    fn orphan_records_are_deleted_and_a_token_issued() {
        // Crash after the record, before the Secret: nobody holds the plaintext.
        let pat = PersonalAccessToken::test().with_status(pending());
        let orphan = issued(&pat, &no_policy(), X, ago(MIN));
        let plan = Case::new(&pat).records([&orphan]).plan();
        Expect {
            actions: vec![
                Action::DeleteRecord(X.into()),
                Action::Issue(IssueReason::Initial),
            ],
            phase: Phase::Pending,
            conditions: ready_false("Issuing"),
            requeue: Some(Duration::from_secs(1)),
            notes: vec![],
        }
        .check("orphan before first delivery", &plan);

        // The same crash during a rotation: the old token stays, the rotation is retried.
        let before = PersonalAccessToken::test()
            .persistent()
            .rotation(|r| r.requested_at = Some("r1".into()));
        let a = issued(&before, &no_policy(), A, ago(DAY));
        let requested = before
            .rotation(|r| r.requested_at = Some("r2".into()))
            .with_status(status_for(&a));
        let orphan = issued(&requested, &no_policy(), X, ago(MIN));
        let plan = Case::new(&requested)
            .records([&a, &orphan])
            .secret(delivered(A, ago(DAY)))
            .plan();
        Expect {
            actions: vec![
                Action::DeleteRecord(X.into()),
                Action::Issue(IssueReason::Rotation),
            ],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: None,
            notes: vec![],
        }
        .check("orphan during rotation", &plan);
        assert_eq!(plan.status.token_id.as_deref(), Some(A));
    }

    #[test]
    fn a_foreign_secret_with_the_target_name_fails_without_issuing() {
        let pat = PersonalAccessToken::test();
        let plan = Case::new(&pat).secret(foreign()).plan();
        Expect {
            actions: vec![],
            phase: Phase::Failed,
            conditions: ready_false("SecretConflict"),
            requeue: None,
            notes: vec![],
        }
        .check("foreign secret", &plan);
        assert!(
            condition(&plan, READY)
                .message
                .starts_with("Secret laptop-token exists"),
            "{}",
            condition(&plan, READY).message
        );
    }

    #[test]
    fn a_foreign_secret_appearing_later_does_not_end_the_current_token() {
        // The one-time Secret was revealed and removed; someone then creates a Secret of that
        // name. Delivery is blocked, but the working token (and its grace) must survive.
        let pat = PersonalAccessToken::test().rotation(|r| r.grace_period = Some("1d".into()));
        let a = issued(&pat, &no_policy(), A, ago(2 * DAY));
        let b = issued(&pat, &no_policy(), B, ago(2 * HOUR));
        let previous = PreviousToken {
            token_id: A.into(),
            valid_until: to_k8s(b.issued_at + chrono::Duration::days(1)),
        };
        let a = TokenRecord {
            expires_at: Some(from_k8s(&previous.valid_until)),
            ..a
        };
        let pat = pat.with_status(PersonalAccessTokenStatus {
            previous: Some(previous.clone()),
            ..status_for(&b)
        });
        let case = Case::new(&pat).records([&a, &b]).secret(foreign());

        let first = case.plan();
        Expect {
            actions: vec![],
            phase: Phase::Failed,
            conditions: ready_false("SecretConflict"),
            requeue: None,
            notes: vec![],
        }
        .check("conflict after issue", &first);
        assert_eq!(first.status.token_id.as_deref(), Some(B));
        assert_eq!(first.status.previous, Some(previous));

        let second = Case {
            pat: pat.clone().with_status(first.status.clone()),
            ..case
        }
        .plan();
        Expect {
            actions: vec![],
            phase: Phase::Failed,
            conditions: ready_false("SecretConflict"),
            requeue: None,
            notes: vec![],
        }
        .check("conflict persists", &second);
        assert_eq!(second.status, first.status, "status is stable");

        // Once the foreign Secret is gone, the same token is Active again: nothing re-issued.
        let resolved = Case::new(&pat.with_status(second.status))
            .records([&a, &b])
            .plan();
        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: active("False", "Revealed"),
            requeue: Some(span(22 * HOUR)),
            notes: vec![],
        }
        .check("conflict resolved", &resolved);
        assert_eq!(resolved.status.token_id.as_deref(), Some(B));
    }

    #[test]
    fn a_missing_record_is_replaced() {
        let pat = PersonalAccessToken::test().persistent();
        let a = issued(&pat, &no_policy(), A, ago(DAY));
        let plan = Case::new(&pat.with_status(status_for(&a)))
            .secret(delivered(A, ago(DAY)))
            .plan();
        Expect {
            actions: vec![Action::Issue(IssueReason::Replacement)],
            phase: Phase::Pending,
            conditions: ready_false("Issuing"),
            requeue: Some(Duration::from_secs(1)),
            notes: vec![],
        }
        .check("record missing", &plan);
    }

    // ---- Expiry --------------------------------------------------------------------------

    #[test]
    fn expiry_ends_the_token() {
        let pat = PersonalAccessToken::test()
            .persistent()
            .with_spec(|s| {
                s.expiration = Some(Expiration {
                    ttl: Some("1h".into()),
                    expires_at: None,
                })
            })
            .rotation(|r| r.grace_period = Some("1d".into()));
        // Expiry is inclusive: issued exactly one ttl ago.
        let a = issued(&pat, &no_policy(), A, ago(2 * HOUR));
        let b = issued(&pat, &no_policy(), B, ago(HOUR));
        assert_eq!(b.expires_at, Some(now()));
        let status = PersonalAccessTokenStatus {
            previous: Some(PreviousToken {
                token_id: A.into(),
                valid_until: to_k8s(ago(-DAY)),
            }),
            ..status_for(&b)
        };
        let pat = pat.with_status(status);
        let orphan = issued(&pat, &no_policy(), X, ago(MIN));

        let plan = Case::new(&pat)
            .records([&a, &b, &orphan])
            .secret(delivered(B, ago(HOUR)))
            .plan();
        Expect {
            actions: vec![
                Action::DeleteRecord(X.into()),
                Action::DeleteRecord(A.into()),
                Action::DeleteRecord(B.into()),
                Action::DeleteSecret,
            ],
            phase: Phase::Expired,
            conditions: ready_false("Expired"),
            requeue: None,
            notes: vec![("Expired", true)],
        }
        .check("expired", &plan);
        assert_eq!(plan.status.token_id.as_deref(), Some(B));
        assert_eq!(plan.status.expires_at, Some(to_k8s(now())));
        assert_eq!(plan.status.previous, None);
        assert!(
            condition(&plan, READY).message.contains("Rotate it"),
            "{}",
            condition(&plan, READY).message
        );
    }

    #[test]
    fn idle_timeout_counts_from_last_use_else_from_issue() {
        let policy = governed_by(json!({"idleTimeout": "1h"}));
        let pat = PersonalAccessToken::test().persistent();
        let used = |at: Option<DateTime<Utc>>, issued_at: DateTime<Utc>| {
            let a = issued(&pat, &policy, A, issued_at);
            let status = PersonalAccessTokenStatus {
                last_used_at: at.map(to_k8s),
                ..status_for(&a)
            };
            (
                Case::new(&pat.clone().with_status(status))
                    .records([&a])
                    .secret(delivered(A, issued_at))
                    .policy(&policy),
                a,
            )
        };
        let ended = |name: &str, case: Case| {
            let plan = case.plan();
            Expect {
                actions: vec![Action::DeleteRecord(A.into()), Action::DeleteSecret],
                phase: Phase::Expired,
                conditions: ready_false("IdleTimeout"),
                requeue: None,
                notes: vec![("IdleTimeout", true)],
            }
            .check(name, &plan);
            plan
        };
        let alive = |name: &str, case: Case, requeue: i64| {
            Expect {
                actions: vec![],
                phase: Phase::Active,
                conditions: active("True", "SecretAvailable"),
                requeue: Some(span(requeue)),
                notes: vec![],
            }
            .check(name, &case.plan());
        };

        let (case, _) = used(Some(ago(HOUR)), ago(2 * DAY));
        let plan = ended("unused for the timeout since last use", case);
        assert!(
            plan.notes[0].message.contains(&ago(HOUR).to_rfc3339()),
            "{}",
            plan.notes[0].message
        );
        let (case, _) = used(Some(ago(30 * MIN)), ago(2 * DAY));
        alive("used recently", case, 30 * MIN);
        let (case, _) = used(None, ago(HOUR));
        ended("never used since issue", case);
        let (case, a) = used(None, ago(30 * MIN));
        assert_eq!(a.idle_timeout_seconds, Some(3_600));
        alive("issued recently, never used", case, 30 * MIN);
        // Whoever may write status cannot hold the timeout off with a date ahead.
        let (case, _) = used(Some(ago(-3_650 * DAY)), ago(2 * DAY));
        ended("a last use ten years ahead is not believed", case);
    }

    #[test]
    fn an_expired_token_stays_expired_until_renewed() {
        let pat = PersonalAccessToken::test().persistent().with_spec(|s| {
            s.expiration = Some(Expiration {
                ttl: Some("1h".into()),
                expires_at: None,
            })
        });
        let a = issued(&pat, &no_policy(), A, ago(HOUR + MIN));
        let expiry = Case::new(&pat.clone().with_status(status_for(&a)))
            .records([&a])
            .secret(delivered(A, a.issued_at))
            .at(ago(MIN))
            .plan();
        assert_eq!(expiry.status.phase, Some(Phase::Expired));
        let expired = pat.clone().with_status(expiry.status.clone());

        let plan = Case::new(&expired).plan();
        Expect {
            actions: vec![],
            phase: Phase::Expired,
            conditions: ready_false("Expired"),
            requeue: None,
            notes: vec![],
        }
        .check("expired, nothing left", &plan);
        assert_eq!(plan.status, expiry.status, "the Expired status is stable");

        let plan = Case::new(&expired).secret(delivered(A, a.issued_at)).plan();
        Expect {
            actions: vec![Action::DeleteSecret],
            phase: Phase::Expired,
            conditions: ready_false("Expired"),
            requeue: None,
            notes: vec![],
        }
        .check("expired, secret left over", &plan);

        let renewed = expired
            .clone()
            .annotated(ROTATE_ANNOTATION, "2026-11-28T05:00:00Z");
        let plan = Case::new(&renewed).plan();
        Expect {
            actions: vec![Action::Issue(IssueReason::Renewal)],
            phase: Phase::Pending,
            conditions: ready_false("Issuing"),
            requeue: Some(Duration::from_secs(1)),
            notes: vec![],
        }
        .check("expired, rotation requested", &plan);
    }

    #[test]
    fn an_idle_timed_out_token_keeps_its_reason() {
        let policy = governed_by(json!({"idleTimeout": "1h"}));
        let pat = PersonalAccessToken::test().persistent().with_spec(|s| {
            s.expiration = Some(Expiration {
                ttl: Some("30d".into()),
                expires_at: None,
            })
        });
        let a = issued(&pat, &policy, A, ago(DAY));
        let idle = Case::new(&pat.clone().with_status(status_for(&a)))
            .records([&a])
            .secret(delivered(A, a.issued_at))
            .policy(&policy)
            .plan();
        assert_eq!(condition(&idle, READY).reason, "IdleTimeout");

        let plan = Case::new(&pat.with_status(idle.status.clone()))
            .policy(&policy)
            .at(now() + chrono::Duration::minutes(1))
            .plan();
        Expect {
            actions: vec![],
            phase: Phase::Expired,
            conditions: ready_false("IdleTimeout"),
            requeue: None,
            notes: vec![],
        }
        .check("idle timed out, later", &plan);
        assert_eq!(
            plan.status, idle.status,
            "not rewritten as expired at a future instant"
        );
    }

    // ---- The delivered Secret ------------------------------------------------------------

    #[test]
    fn one_time_secrets_go_after_the_reveal_window_or_acknowledgement() {
        let base = PersonalAccessToken::test();
        let case = |pat: &PersonalAccessToken, delivered_ago: i64, policy: &EffectivePolicy| {
            let a = issued(pat, policy, A, ago(delivered_ago));
            Case::new(&pat.clone().with_status(status_for(&a)))
                .records([&a])
                .secret(delivered(A, ago(delivered_ago)))
                .policy(policy)
        };
        let kept = |requeue: i64| Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: Some(span(requeue)),
            notes: vec![],
        };
        let removed = || Expect {
            actions: vec![Action::DeleteSecret],
            phase: Phase::Active,
            conditions: active("False", "Revealed"),
            requeue: None,
            notes: vec![("SecretRemoved", false)],
        };

        let plan = case(&base, 10 * MIN, &no_policy()).plan();
        kept(50 * MIN).check("within the default window", &plan);
        assert_eq!(
            plan.status.secret_ref,
            Some(SecretReference {
                name: "laptop-token".into()
            })
        );

        let plan = case(&base, 2 * HOUR, &no_policy()).plan();
        removed().check("past the window", &plan);
        assert_eq!(plan.status.secret_ref, None);
        assert!(plan.notes[0].message.contains("reveal window ended"));

        let windowed = base.clone().with_spec(|s| {
            s.secret = Some(SecretDelivery {
                reveal_window: Some("10m".into()),
                ..SecretDelivery::default()
            })
        });
        kept(5 * MIN).check(
            "within the spec's window",
            &case(&windowed, 5 * MIN, &no_policy()).plan(),
        );
        let short = governed_by(json!({"secret": {"maxRevealWindow": "15m"}}));
        let plan = case(&base, 5 * MIN, &short).plan();
        Expect {
            conditions: active("True", "SecretAvailable"),
            ..kept(10 * MIN)
        }
        .check("window capped by policy", &plan);

        let plan = case(
            &base.clone().annotated(ACKNOWLEDGED_ANNOTATION, A),
            10 * MIN,
            &no_policy(),
        )
        .plan();
        removed().check("acknowledged", &plan);
        assert!(plan.notes[0].message.contains("acknowledged"));

        let plan = case(
            &base.clone().annotated(ACKNOWLEDGED_ANNOTATION, B),
            10 * MIN,
            &no_policy(),
        )
        .plan();
        kept(50 * MIN).check("acknowledged another token", &plan);

        // Already removed: reported, nothing to do, no note.
        let a = issued(&base, &no_policy(), A, ago(2 * HOUR));
        let plan = Case::new(&base.clone().with_status(status_for(&a)))
            .records([&a])
            .plan();
        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: active("False", "Revealed"),
            requeue: None,
            notes: vec![],
        }
        .check("already revealed", &plan);
    }

    #[test]
    fn persistent_secrets_are_kept_and_replaced_when_deleted() {
        let pat = PersonalAccessToken::test()
            .persistent()
            .annotated(ACKNOWLEDGED_ANNOTATION, A);
        let a = issued(&pat, &no_policy(), A, ago(30 * DAY));
        let pat = pat.with_status(status_for(&a));

        let plan = Case::new(&pat)
            .records([&a])
            .secret(delivered(A, ago(30 * DAY)))
            .plan();
        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: None,
            notes: vec![],
        }
        .check("persistent kept", &plan);
        assert_eq!(
            plan.status.secret_ref,
            Some(SecretReference {
                name: "laptop-token".into()
            })
        );

        let plan = Case::new(&pat).records([&a]).plan();
        Expect {
            actions: vec![Action::Issue(IssueReason::Replacement)],
            phase: Phase::Active,
            conditions: active("False", "SecretMissing"),
            requeue: None,
            notes: vec![],
        }
        .check("persistent missing", &plan);
        assert_eq!(plan.status.secret_ref, None);
    }

    // ---- Rotation ------------------------------------------------------------------------

    #[test]
    fn rotation_on_request() {
        let before = PersonalAccessToken::test()
            .persistent()
            .rotation(|r| r.requested_at = Some("r1".into()));
        let a = issued(&before, &no_policy(), A, ago(DAY));
        let requested = |pat: PersonalAccessToken| {
            Case::new(&pat.with_status(status_for(&a)))
                .records([&a])
                .secret(delivered(A, ago(DAY)))
        };
        let rotate = Expect {
            actions: vec![Action::Issue(IssueReason::Rotation)],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: None,
            notes: vec![],
        };
        let stay = Expect {
            actions: vec![],
            ..rotate.clone()
        };

        let plan = requested(
            before
                .clone()
                .rotation(|r| r.requested_at = Some("r2".into())),
        )
        .plan();
        rotate.check("spec.rotation.requestedAt changed", &plan);
        assert_eq!(
            plan.status.last_rotation_request.as_deref(),
            Some("spec=r1;annotation="),
            "not acted upon until adopted"
        );

        rotate.check(
            "annotation changed",
            &requested(before.clone().annotated(ROTATE_ANNOTATION, "now")).plan(),
        );
        stay.check("unchanged", &requested(before.clone()).plan());

        // Crash after delivering the rotated token: it answered the request; no second rotation.
        let after = before
            .clone()
            .rotation(|r| r.requested_at = Some("r2".into()));
        let b = issued(&after, &no_policy(), B, ago(MIN));
        let plan = Case::new(&after.with_status(status_for(&a)))
            .records([&a, &b])
            .secret(delivered(B, ago(MIN)))
            .plan();
        Expect {
            actions: vec![Action::DeleteRecord(A.into())], // no grace period
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: None,
            notes: vec![("Rotated", false)],
        }
        .check("rotation adopted", &plan);
        assert_eq!(
            plan.status.last_rotation_request.as_deref(),
            Some("spec=r2;annotation=")
        );
        assert_eq!(plan.status.previous, None);
    }

    #[test]
    fn rotation_on_schedule() {
        let pat = PersonalAccessToken::test()
            .persistent()
            .rotation(|r| r.every = Some("30d".into()));
        let case = |issued_ago: i64| {
            let a = issued(&pat, &no_policy(), A, ago(issued_ago));
            Case::new(&pat.clone().with_status(status_for(&a)))
                .records([&a])
                .secret(delivered(A, ago(issued_ago)))
        };
        Expect {
            actions: vec![Action::Issue(IssueReason::Rotation)],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: None,
            notes: vec![],
        }
        .check("due", &case(31 * DAY).plan());
        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: Some(span(DAY)),
            notes: vec![],
        }
        .check("not yet due", &case(29 * DAY).plan());
    }

    #[test]
    fn the_previous_token_lives_out_its_grace_period() {
        let pat = PersonalAccessToken::test()
            .persistent()
            .rotation(|r| r.grace_period = Some("1h".into()));
        let case = |b_ago: i64| {
            let b = issued(&pat, &no_policy(), B, ago(b_ago));
            let grace_end = b.issued_at + chrono::Duration::hours(1);
            let a = TokenRecord {
                expires_at: Some(grace_end),
                ..issued(&pat, &no_policy(), A, ago(10 * DAY))
            };
            let previous = PreviousToken {
                token_id: A.into(),
                valid_until: to_k8s(grace_end),
            };
            let status = PersonalAccessTokenStatus {
                previous: Some(previous),
                ..status_for(&b)
            };
            Case::new(&pat.clone().with_status(status))
                .records([&a, &b])
                .secret(delivered(B, ago(b_ago)))
        };

        let plan = case(10 * MIN).plan();
        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: Some(span(50 * MIN)),
            notes: vec![],
        }
        .check("within grace", &plan);
        assert_eq!(
            plan.status.previous.as_ref().map(|p| p.token_id.as_str()),
            Some(A)
        );
        assert_eq!(
            plan.status
                .previous
                .as_ref()
                .map(|p| from_k8s(&p.valid_until)),
            Some(ago(-50 * MIN))
        );

        let plan = case(2 * HOUR).plan();
        Expect {
            actions: vec![Action::DeleteRecord(A.into())],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: None,
            notes: vec![],
        }
        .check("grace over", &plan);
        assert_eq!(plan.status.previous, None);
    }

    // ---- Conditions ----------------------------------------------------------------------

    #[test]
    fn expiring_soon_inside_the_warning_window() {
        let policy = governed_by(json!({"rotation": {"warnBefore": "7d"}}));
        let pat = PersonalAccessToken::test().persistent().with_spec(|s| {
            s.expiration = Some(Expiration {
                ttl: Some("30d".into()),
                expires_at: None,
            })
        });
        let case = |issued_ago: i64| {
            let a = issued(&pat, &policy, A, ago(issued_ago));
            Case::new(&pat.clone().with_status(status_for(&a)))
                .records([&a])
                .secret(delivered(A, ago(issued_ago)))
                .policy(&policy)
        };
        let expiring = vec![
            (EXPIRING_SOON, "True", "WithinWarningPeriod"),
            (DELIVERED, "True", "SecretAvailable"),
            (POLICY_COMPLIANT, "True", "Compliant"),
            (READY, "True", "TokenActive"),
        ];

        let inside = case(25 * DAY);
        let first = inside.at(ago(HOUR)).plan();
        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: expiring.clone(),
            requeue: Some(span(5 * DAY + HOUR)), // at expiry
            notes: vec![("ExpiringSoon", true)],
        }
        .check("entering the window", &first);
        assert_eq!(
            condition(&first, POLICY_COMPLIANT).message,
            "Complies with baseline."
        );

        // Already True: no second warning, and the transition time stays.
        let again = Case {
            pat: pat.clone().with_status(first.status.clone()),
            ..case(25 * DAY)
        }
        .plan();
        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: expiring,
            requeue: Some(span(5 * DAY)),
            notes: vec![],
        }
        .check("inside the window", &again);
        assert_eq!(
            condition(&again, EXPIRING_SOON).last_transition_time,
            to_k8s(ago(HOUR))
        );

        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: active("True", "SecretAvailable"),
            requeue: Some(span(22 * DAY)), // at the warning start, before the expiry at 29d
            notes: vec![],
        }
        .check("outside the window", &case(DAY).plan());
    }

    #[test]
    fn a_live_token_narrows_in_place_and_widens_only_at_rotation() {
        let pat = PersonalAccessToken::test()
            .with_spec(|s| s.scopes = vec!["read:pods".into(), "deploy".into()]);
        let mut current = issued(&pat, &no_policy(), A, ago(DAY));
        current.expires_at = Some(ago(DAY) + chrono::Duration::days(30));
        current.idle_timeout_seconds = Some(3_600);
        current.exchange.audiences = Some(vec!["k8s".into(), "vault".into()]);
        current.exchange.default_audience = Some("vault".into());
        current.exchange.allowed_actors = vec!["ci".into()];
        current.exchange.max_ttl_seconds = 900;

        // Narrower everywhere: applied as asked.
        let mut narrower = current.clone();
        narrower.scopes = vec!["read:pods".into()];
        narrower.expires_at = Some(ago(DAY) + chrono::Duration::days(7));
        narrower.idle_timeout_seconds = Some(60);
        narrower.exchange.audiences = Some(vec!["k8s".into()]);
        narrower.exchange.allowed_actors = vec![];
        narrower.exchange.max_ttl_seconds = 300;
        let (kept, held) = narrow_only(&current, &narrower);
        assert!(held.is_empty(), "{held:?}");
        assert_eq!(kept.exchange.default_audience.as_deref(), Some("k8s"));
        assert_eq!(
            TokenRecord {
                exchange: ExchangeGrant {
                    default_audience: Some("k8s".into()),
                    ..narrower.exchange.clone()
                },
                ..narrower.clone()
            },
            kept
        );

        // Wider everywhere: nothing widens.
        let mut wider = current.clone();
        wider.scopes = vec!["read:pods".into(), "admin".into()];
        wider.expires_at = None;
        wider.idle_timeout_seconds = None;
        wider.exchange.audiences = None;
        wider.exchange.allowed_actors = vec!["ci".into(), "anyone".into()];
        wider.exchange.max_ttl_seconds = 86_400;
        let (kept, held) = narrow_only(&current, &wider);
        assert_eq!(
            held,
            [
                "scopes",
                "expiry",
                "idle timeout",
                "exchange audiences",
                "exchange actors",
                "exchange lifetime"
            ]
        );
        assert_eq!(kept.scopes, ["read:pods"]);
        assert_eq!(kept.expires_at, current.expires_at);
        assert_eq!(kept.exchange, current.exchange);

        // Emptying the scopes of a scoped token is the widest change of all.
        let mut unscoped = current.clone();
        unscoped.scopes.clear();
        unscoped.scoped = false;
        let (kept, _) = narrow_only(&current, &unscoped);
        assert!(
            kept.scoped && kept.scopes.is_empty(),
            "scoped to nothing, not unscoped"
        );

        // An unscoped token takes scopes in place: that narrows it.
        let mut was_unscoped = current.clone();
        was_unscoped.scopes.clear();
        was_unscoped.scoped = false;
        let (kept, held) = narrow_only(&was_unscoped, &current);
        assert!(!held.contains(&"scopes"));
        assert_eq!(kept.scopes, current.scopes);
    }

    #[test]
    fn policy_clamps_are_reported_as_not_compliant() {
        let policy = governed_by(json!({"allowedScopes": ["read:*"]}));
        let pat = PersonalAccessToken::test()
            .persistent()
            .with_spec(|s| s.scopes = vec!["read:pods".into(), "write:pods".into()]);
        let a = issued(&pat, &policy, A, ago(DAY));
        assert_eq!(
            a.scopes,
            ["read:pods"],
            "the disallowed scope is never granted"
        );
        let clamped = vec![
            (EXPIRING_SOON, "False", "NotExpiring"),
            (DELIVERED, "True", "SecretAvailable"),
            (POLICY_COMPLIANT, "False", "Clamped"),
            (READY, "True", "TokenActive"),
        ];
        let pat = pat.with_status(status_for(&a));

        let plan = Case::new(&pat)
            .records([&a])
            .secret(delivered(A, ago(DAY)))
            .policy(&policy)
            .plan();
        Expect {
            actions: vec![],
            phase: Phase::Active,
            conditions: clamped.clone(),
            requeue: None,
            notes: vec![("PolicyViolation", true)],
        }
        .check("clamped", &plan);
        let message = &condition(&plan, POLICY_COMPLIANT).message;
        assert!(
            message.contains("scope \"write:pods\" is not allowed by policy baseline"),
            "{message}"
        );
        assert_eq!(plan.notes[0].message, *message);
        assert_eq!(plan.status.policies, ["baseline"]);

        // A record issued before the policy existed is narrowed; no second note.
        let wide = issued(&pat, &no_policy(), A, ago(DAY));
        assert_eq!(wide.scopes, ["read:pods", "write:pods"]);
        let again = pat.clone().with_status(plan.status.clone());
        let plan = Case::new(&again)
            .records([&wide])
            .secret(delivered(A, ago(DAY)))
            .policy(&policy)
            .plan();
        Expect {
            actions: vec![Action::UpdateRecord(Box::new(TokenRecord {
                scopes: vec!["read:pods".into()],
                scoped: true,
                ..wide.clone()
            }))],
            phase: Phase::Active,
            conditions: clamped,
            requeue: None,
            notes: vec![],
        }
        .check("record narrowed", &plan);

        let plan = Case::new(&pat)
            .records([&a])
            .secret(delivered(A, ago(DAY)))
            .plan();
        assert_eq!(
            condition(&plan, POLICY_COMPLIANT).message,
            "No TokenPolicy governs this namespace."
        );
    }

    #[test]
    fn requeue_is_the_earliest_deadline() {
        // Token B issued and delivered 1h ago with ttl 30d; A in its grace period. Each row
        // makes another deadline the earliest, the others later.
        struct Row {
            name: &'static str,
            reveal: &'static str,
            grace: &'static str,
            idle: &'static str,
            every: &'static str,
            warn: Option<&'static str>,
            expected: i64,
        }
        let rows = [
            Row {
                name: "reveal end",
                reveal: "2h",
                grace: "3h",
                idle: "4h",
                every: "5h",
                warn: Some("7d"),
                expected: HOUR,
            },
            Row {
                name: "grace end",
                reveal: "3h",
                grace: "2h",
                idle: "4h",
                every: "5h",
                warn: Some("7d"),
                expected: HOUR,
            },
            Row {
                name: "idle deadline",
                reveal: "3h",
                grace: "4h",
                idle: "2h",
                every: "5h",
                warn: Some("7d"),
                expected: HOUR,
            },
            Row {
                name: "scheduled rotation",
                reveal: "3h",
                grace: "4h",
                idle: "5h",
                every: "2h",
                warn: Some("7d"),
                expected: HOUR,
            },
            // Expiry is 30d - 1h away; a 718h warning starts 1h from now.
            Row {
                name: "warning start",
                reveal: "3h",
                grace: "4h",
                idle: "5h",
                every: "6h",
                warn: Some("718h"),
                expected: HOUR,
            },
            // No policy warning: the default, 7d before the 30d expiry.
            Row {
                name: "default warning",
                reveal: "31d",
                grace: "31d",
                idle: "31d",
                every: "31d",
                warn: None,
                expected: 23 * DAY - HOUR,
            },
            Row {
                name: "expiry",
                reveal: "31d",
                grace: "31d",
                idle: "31d",
                every: "31d",
                warn: Some("0s"),
                expected: 30 * DAY - HOUR,
            },
        ];
        for row in rows {
            let mut spec = json!({"idleTimeout": row.idle});
            if let Some(warn) = row.warn {
                spec["rotation"] = json!({"warnBefore": warn});
            }
            let policy = governed_by(spec);
            let pat = PersonalAccessToken::test()
                .with_spec(|s| {
                    s.expiration = Some(Expiration {
                        ttl: Some("30d".into()),
                        expires_at: None,
                    });
                    s.secret = Some(SecretDelivery {
                        reveal_window: Some(row.reveal.into()),
                        ..SecretDelivery::default()
                    });
                })
                .rotation(|r| {
                    r.grace_period = Some(row.grace.into());
                    r.every = Some(row.every.into());
                });
            let b = issued(&pat, &policy, B, ago(HOUR));
            let grace = patrol_api::duration::Duration::from(row.grace)
                .to_chrono()
                .expect("grace");
            let grace_end = b.issued_at + grace;
            let a = TokenRecord {
                expires_at: Some(grace_end),
                ..issued(&pat, &policy, A, ago(10 * DAY))
            };
            let status = PersonalAccessTokenStatus {
                previous: Some(PreviousToken {
                    token_id: A.into(),
                    valid_until: to_k8s(grace_end),
                }),
                ..status_for(&b)
            };
            let plan = Case::new(&pat.with_status(status))
                .records([&a, &b])
                .secret(delivered(B, ago(HOUR)))
                .policy(&policy)
                .plan();
            assert_eq!(plan.actions, [], "{}: actions", row.name);
            assert_eq!(
                plan.status.phase,
                Some(Phase::Active),
                "{}: phase",
                row.name
            );
            assert_eq!(
                plan.requeue_after,
                Some(span(row.expected)),
                "{}: requeue_after",
                row.name
            );
        }
    }

    #[test]
    fn conditions_keep_their_transition_time_while_unchanged() {
        let pat = PersonalAccessToken::test();
        let a = issued(&pat, &no_policy(), A, ago(DAY));
        let case = Case::new(&pat.clone().with_status(status_for(&a)))
            .records([&a])
            .secret(delivered(A, ago(DAY) + chrono::Duration::minutes(1)));
        // A day ago, one minute after delivery: the Secret was still there.
        let then = Case {
            now: ago(DAY) + chrono::Duration::minutes(2),
            ..case
        }
        .plan();
        assert_eq!(condition(&then, DELIVERED).status, "True");
        let earlier = to_k8s(ago(DAY) + chrono::Duration::minutes(2));
        assert!(
            then.status
                .conditions
                .iter()
                .all(|c| c.last_transition_time == earlier)
        );

        let now_plan = Case::new(&pat.with_status(then.status.clone()))
            .records([&a])
            .secret(delivered(A, ago(DAY) + chrono::Duration::minutes(1)))
            .plan();
        assert_eq!(now_plan.actions, [Action::DeleteSecret]);
        for c in &now_plan.status.conditions {
            let expected = if c.type_ == DELIVERED {
                to_k8s(now())
            } else {
                earlier.clone()
            };
            assert_eq!(c.last_transition_time, expected, "{}", c.type_);
        }
    }
}

//! `describe`: one PersonalAccessToken as a person reads it (phase, token, expiry, last
//! use, rotation, Secret, conditions, events), and `whoami`: who the apiserver says you
//! are, and which Patrol token says so.

use std::fmt::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::{
    api::{authentication::v1::UserInfo, core::v1::Event},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::ResourceExt;
use patrol_api::{time::from_k8s, v1alpha1::PersonalAccessToken};

/// `at` against `now`, rounded in the largest fitting unit: "in 6d", "3h ago", "now". A
/// 7-day token read a minute after issue expires "in 7d", not "in 6d".
pub fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    let magnitude = seconds.unsigned_abs();
    let rounded = |unit: u64| (magnitude + unit / 2) / unit;
    let amount = match magnitude {
        0..5 => return "now".into(),
        5..120 => format!("{magnitude}s"),
        120..7_200 => format!("{}m", rounded(60)),
        7_200..172_800 => format!("{}h", rounded(3_600)),
        _ => format!("{}d", rounded(86_400)),
    };
    if seconds > 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn stamp(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} ({})",
        at.to_rfc3339_opts(SecondsFormat::Secs, true),
        relative(at, now)
    )
}

/// Aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>], indent: &str) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{indent}{}", line.join("  ").trim_end());
    }
    out
}

/// The whole description of `pat`, with `events` about it (oldest first).
pub fn render(pat: &PersonalAccessToken, events: Option<&[Event]>, now: DateTime<Utc>) -> String {
    let status = pat.status.clone().unwrap_or_default();
    let mut fields: Vec<(&str, String)> = vec![
        ("Name", pat.name_any()),
        ("Namespace", pat.namespace().unwrap_or_default()),
        ("Display name", pat.spec.display_name.clone()),
    ];
    fields.push((
        "Owner",
        match &pat.spec.owner {
            Some(o) if o.groups.is_empty() => o.username.clone(),
            Some(o) => format!("{} (groups: {})", o.username, o.groups.join(", ")),
            None => "- (not set yet)".into(),
        },
    ));
    fields.push((
        "Phase",
        format!("{:?}", status.phase.unwrap_or_default())
            + if pat.spec.revoked && status.phase != Some(patrol_api::v1alpha1::Phase::Revoked) {
                " (revocation requested)"
            } else {
                ""
            },
    ));
    fields.push((
        "Scopes",
        if pat.spec.scopes.is_empty() {
            "(none: all of the owner's rights)".into()
        } else {
            pat.spec.scopes.join(", ")
        },
    ));
    if let Some(id) = &status.token_id {
        fields.push((
            "Token",
            format!("id {id}, {}", status.hint.clone().unwrap_or_default()),
        ));
    }
    if let Some(t) = &status.issued_at {
        fields.push(("Issued", stamp(from_k8s(t), now)));
    }
    fields.push((
        "Expires",
        match &status.expires_at {
            Some(t) => stamp(from_k8s(t), now),
            None if status.token_id.is_some() => "never".into(),
            None => "-".into(),
        },
    ));
    fields.push((
        "Last used",
        status
            .last_used_at
            .as_ref()
            .map(|t| stamp(from_k8s(t), now))
            .unwrap_or_else(|| "never".into()),
    ));
    if let Some(rotation) = &pat.spec.rotation {
        let mut parts = vec![];
        if let Some(every) = &rotation.every {
            parts.push(format!("every {}", every.as_str()));
        }
        if let Some(grace) = &rotation.grace_period {
            parts.push(format!("grace period {}", grace.as_str()));
        }
        if !parts.is_empty() {
            fields.push(("Rotation", parts.join(", ")));
        }
    }
    if let Some(previous) = &status.previous {
        fields.push((
            "Previous token",
            format!(
                "id {}, valid until {}",
                previous.token_id,
                stamp(from_k8s(&previous.valid_until), now)
            ),
        ));
    }
    fields.push((
        "Secret",
        status
            .secret_ref
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_else(|| "- (revealed; the plaintext is kept nowhere)".into()),
    ));
    if !status.policies.is_empty() {
        fields.push(("Policies", status.policies.join(", ")));
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in &fields {
        let _ = writeln!(out, "{:<width$} {value}", format!("{key}:"));
    }

    out.push_str("Conditions:\n");
    if status.conditions.is_empty() {
        out.push_str("  (none yet)\n");
    } else {
        let mut rows = vec![
            ["TYPE", "STATUS", "REASON", "MESSAGE"]
                .map(str::to_owned)
                .to_vec(),
        ];
        rows.extend(status.conditions.iter().map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]
        }));
        out.push_str(&columns(&rows, "  "));
    }

    out.push_str("Events:\n");
    match events {
        None => out.push_str("  (not shown: you may not list events here)\n"),
        Some([]) => out.push_str("  (none)\n"),
        Some(events) => {
            let mut rows = vec![
                ["WHEN", "TYPE", "REASON", "MESSAGE"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            rows.extend(events.iter().map(|e| {
                let when = event_time(e)
                    .map(|t| relative(t, now))
                    .unwrap_or_else(|| "-".into());
                let count = e
                    .count
                    .filter(|c| *c > 1)
                    .map(|c| format!(" (x{c})"))
                    .unwrap_or_default();
                vec![
                    when,
                    e.type_.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    format!("{}{count}", e.message.clone().unwrap_or_default()),
                ]
            }));
            out.push_str(&columns(&rows, "  "));
        }
    }
    out
}

/// When an event last happened, whichever field its reporter filled.
pub fn event_time(e: &Event) -> Option<DateTime<Utc>> {
    e.last_timestamp
        .as_ref()
        .map(from_k8s)
        .or_else(|| e.event_time.as_ref().map(|t| from_k8s(&Time(t.0))))
        .or_else(|| e.first_timestamp.as_ref().map(from_k8s))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(from_k8s))
}

/// `user.extra` key (TokenReview) and claim mapping (JWT) holding the Patrol token id.
pub const EXTRA_TOKEN_ID: &str = "patrol.dev/token-id";
/// Claim mapping holding an exchanged JWT's `scope` claim (Patrol's recommended
/// authentication configuration).
pub const EXTRA_SCOPES: &str = "patrol.dev/scopes";
/// `user.extra` key holding `namespace/name` of the PersonalAccessToken (TokenReview).
pub const EXTRA_PAT: &str = "patrol.dev/pat";

/// The Patrol token behind `user`, if any: its id and, when the apiserver was told,
/// `namespace/name` of its PersonalAccessToken.
pub fn patrol_token(user: &UserInfo) -> Option<(String, Option<String>)> {
    let extra = user.extra.as_ref()?;
    let first = |key: &str| {
        extra
            .get(key)
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    Some((first(EXTRA_TOKEN_ID)?, first(EXTRA_PAT)))
}

/// `whoami`: the identity, and the token it came from.
pub fn render_whoami(
    user: &UserInfo,
    pat: Option<&PersonalAccessToken>,
    now: DateTime<Utc>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Username:  {}",
        user.username.clone().unwrap_or_default()
    );
    if let Some(uid) = &user.uid {
        let _ = writeln!(out, "UID:       {uid}");
    }
    let _ = writeln!(
        out,
        "Groups:    {}",
        user.groups.clone().unwrap_or_default().join(", ")
    );
    let narrowed = user
        .extra
        .as_ref()
        .and_then(|e| e.get(EXTRA_SCOPES))
        .and_then(|v| v.first())
        .filter(|v| !v.is_empty());
    if let Some(scopes) = narrowed {
        let _ = writeln!(out, "This credential's scopes: {scopes}");
    }
    match (patrol_token(user), pat) {
        (None, _) => out.push_str("Patrol:    not authenticated by a Patrol token\n"),
        (Some((id, _)), Some(pat)) => {
            let status = pat.status.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                "Token:     {id} of personalaccesstoken {}/{} ({:?})",
                pat.namespace().unwrap_or_default(),
                pat.name_any(),
                status.phase.unwrap_or_default()
            );
            let _ = writeln!(
                out,
                "Scopes:    {}",
                if pat.spec.scopes.is_empty() {
                    "(none: all of the owner's rights)".into()
                } else {
                    pat.spec.scopes.join(", ")
                }
            );
            let _ = writeln!(
                out,
                "Expires:   {}",
                status
                    .expires_at
                    .map(|t| stamp(from_k8s(&t), now))
                    .unwrap_or_else(|| "never".into())
            );
        }
        (Some((id, named)), None) => {
            let _ = writeln!(
                out,
                "Token:     {id}{} (this credential may not read its PersonalAccessToken)",
                named
                    .map(|n| format!(" of personalaccesstoken {n}"))
                    .unwrap_or_default()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn relative_times_read_like_a_person_says_them() {
        let now = at("2026-12-03T12:00:00Z");
        assert_eq!(relative(now, now), "now");
        assert_eq!(relative(at("2026-12-03T12:00:30Z"), now), "in 30s");
        assert_eq!(relative(at("2026-12-03T11:30:00Z"), now), "30m ago");
        assert_eq!(relative(at("2026-12-03T15:00:00Z"), now), "in 3h");
        assert_eq!(relative(at("2026-12-10T12:00:00Z"), now), "in 7d");
        assert_eq!(
            relative(at("2026-12-10T11:59:00Z"), now),
            "in 7d",
            "rounded, not floored"
        );
        assert_eq!(relative(at("2026-12-07T01:00:00Z"), now), "in 4d");
    }

    #[test]
    fn describe_shows_the_token_its_life_and_why() {
        let pat: PersonalAccessToken = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
            "metadata": {"name": "ci", "namespace": "team-a"},
            "spec": {"displayName": "CI", "owner": {"username": "alice", "groups": ["dev"]},
                     "scopes": ["read:pods"], "rotation": {"every": "30d", "gracePeriod": "1h"}},
            "status": {"phase": "Active", "tokenId": "AAAAAAAAAAAA", "hint": "patrol_AAAA…wxyz",
                       "issuedAt": "2026-12-03T10:00:00Z", "expiresAt": "2026-12-10T12:00:00Z",
                       "previous": {"tokenId": "BBBBBBBBBBBB", "validUntil": "2026-12-03T12:30:00Z"},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "TokenActive",
                                       "message": "usable", "lastTransitionTime": "2026-12-03T10:00:00Z"}]},
        }))
        .unwrap();
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": "e", "namespace": "team-a"},
            "involvedObject": {}, "type": "Normal", "reason": "Rotated", "message": "rotated", "count": 2,
            "lastTimestamp": "2026-12-03T10:00:00Z",
        }))
        .unwrap();
        let text = render(&pat, Some(&[event]), at("2026-12-03T12:00:00Z"));
        for needle in [
            "Owner:          alice (groups: dev)",
            "Phase:          Active",
            "Scopes:         read:pods",
            "Token:          id AAAAAAAAAAAA, patrol_AAAA…wxyz",
            "Expires:        2026-12-10T12:00:00Z (in 7d)",
            "Last used:      never",
            "Rotation:       every 30d, grace period 1h",
            "Previous token: id BBBBBBBBBBBB, valid until 2026-12-03T12:30:00Z (in 30m)",
            "Secret:         - (revealed",
            "  Ready  True    TokenActive  usable",
            "  2h ago  Normal  Rotated  rotated (x2)",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        assert!(render(&pat, None, at("2026-12-03T12:00:00Z")).contains("may not list events"));
    }

    #[test]
    fn whoami_names_the_patrol_token_only_when_there_is_one() {
        let now = at("2026-12-03T12:00:00Z");
        let plain = UserInfo {
            username: Some("alice".into()),
            groups: Some(vec!["dev".into()]),
            ..UserInfo::default()
        };
        assert!(render_whoami(&plain, None, now).contains("not authenticated by a Patrol token"));
        let jwt = UserInfo {
            extra: Some(BTreeMap::from([
                (EXTRA_TOKEN_ID.to_owned(), vec!["AAAAAAAAAAAA".to_owned()]),
                ("patrol.dev/scopes".to_owned(), vec![String::new()]),
            ])),
            ..plain.clone()
        };
        assert_eq!(patrol_token(&jwt), Some(("AAAAAAAAAAAA".into(), None)));
        let empty = UserInfo {
            extra: Some(BTreeMap::from([(
                EXTRA_TOKEN_ID.to_owned(),
                vec![String::new()],
            )])),
            ..plain
        };
        assert_eq!(
            patrol_token(&empty),
            None,
            "an empty claim mapping is no token"
        );
        let text = render_whoami(&jwt, None, now);
        assert!(
            text.contains("Token:     AAAAAAAAAAAA (this credential may not read"),
            "{text}"
        );
    }
}

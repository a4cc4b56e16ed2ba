//! A new token into its owner's hands, once: wait until the operator has issued it, read
//! it from its one-time Secret, hand it over (standard output or a 0600 file), and
//! acknowledge it so the Secret goes at once instead of at the end of the reveal window.
//! `create` and `rotate` both end here.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::watcher,
};
use patrol_api::v1alpha1::{
    ACKNOWLEDGED_ANNOTATION, DELIVERED, PersonalAccessToken, Phase, READY, Retention,
};
use serde_json::json;
use zeroize::Zeroizing;

/// What the wait is for: a token issued after this point.
#[derive(Clone, Debug, Default)]
pub struct Awaited {
    /// A rotation: the request (`PersonalAccessToken::rotation_request`) the operator must
    /// have acted on.
    pub rotation_request: Option<String>,
    /// A rotation: the token being replaced, which must not be the one revealed.
    pub replaced: Option<String>,
}

/// Where a PAT stands on the way to a revealable token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Issued, with its Secret in place: read it now.
    Revealable,
    /// Not yet; why, in the operator's words.
    Waiting(String),
    /// It will not get there; why, and what to do.
    Failed(String),
}

fn ready_message(pat: &PersonalAccessToken) -> Option<String> {
    pat.condition(READY)
        .map(|c| format!("{}: {}", c.reason, c.message))
}

/// Where `pat` stands (`None`: not there at all).
pub fn progress(pat: Option<&PersonalAccessToken>, awaited: &Awaited) -> Progress {
    let Some(pat) = pat else {
        return Progress::Failed("the PersonalAccessToken was deleted".into());
    };
    let status = pat.status.clone().unwrap_or_default();
    if pat.spec.revoked || status.phase == Some(Phase::Revoked) {
        return Progress::Failed("the PersonalAccessToken is revoked; create a new one".into());
    }
    if let Some(request) = &awaited.rotation_request
        && status.last_rotation_request.as_deref() != Some(request.as_str())
    {
        return Progress::Waiting("waiting for the operator to rotate the token".into());
    }
    let phase = status.phase.unwrap_or_default();
    let why = ready_message(pat).unwrap_or_else(|| format!("{phase:?}"));
    match phase {
        Phase::Failed => return Progress::Failed(why),
        Phase::Expired => return Progress::Failed(format!("expired ({why}); rotate it to renew")),
        Phase::Pending | Phase::Revoked => return Progress::Waiting(why),
        Phase::Active => {}
    }
    let Some(id) = status.token_id.as_deref() else {
        return Progress::Waiting(why);
    };
    if awaited.replaced.as_deref() == Some(id) {
        return Progress::Waiting("waiting for the operator to rotate the token".into());
    }
    if status.secret_ref.is_some() {
        return Progress::Revealable;
    }
    match pat.condition(DELIVERED) {
        Some(c) if c.reason == "Revealed" => Progress::Failed(format!(
            "the token was revealed already and its one-time Secret is gone ({}); rotate to get a new one",
            c.message
        )),
        _ => Progress::Waiting(why),
    }
}

/// Watches the PAT `name` until its token can be revealed; reports each new state of the
/// wait to `report`.
pub async fn wait_revealable(
    api: &Api<PersonalAccessToken>,
    name: &str,
    awaited: &Awaited,
    timeout: Duration,
    mut report: impl FnMut(&str),
) -> Result<PersonalAccessToken> {
    let mut last = String::new();
    let mut latest: Option<PersonalAccessToken> = None;
    let waiting = async {
        let mut events = std::pin::pin!(watcher::watch_object(api.clone(), name));
        while let Some(event) = events.next().await {
            let pat = event.with_context(|| format!("watching PersonalAccessToken {name}"))?;
            latest.clone_from(&pat);
            match progress(pat.as_ref(), awaited) {
                Progress::Revealable => return pat.context("the PersonalAccessToken went away"),
                Progress::Failed(why) => bail!("PersonalAccessToken {name}: {why}"),
                Progress::Waiting(why) if why != last => {
                    report(&why);
                    last = why;
                }
                Progress::Waiting(_) => {}
            }
        }
        bail!("the watch on PersonalAccessToken {name} ended")
    };
    match tokio::time::timeout(timeout, waiting).await {
        Ok(result) => result,
        Err(_) => bail!(
            "PersonalAccessToken {name} has no token after {}s ({}); see `kubectl pat describe {name}`, and check that patrol-operator runs",
            timeout.as_secs(),
            if last.is_empty() {
                "no status yet"
            } else {
                last.as_str()
            }
        ),
    }
}

/// The plaintext token of `pat`, read from its Secret and checked against `status.tokenId`.
pub async fn read_token(
    secrets: &Api<Secret>,
    pat: &PersonalAccessToken,
) -> Result<Zeroizing<String>> {
    let status = pat.status.clone().unwrap_or_default();
    let name = status
        .secret_ref
        .map(|s| s.name)
        .context("the PersonalAccessToken names no Secret")?;
    let id = status
        .token_id
        .context("the PersonalAccessToken has no token id")?;
    let secret = secrets.get(&name).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "you may not read Secret {name} that holds the new token ({}); ask for 'get' on secrets in this namespace, or have someone who may read it before the reveal window ends",
            s.message
        ),
        e => anyhow::Error::new(e).context(format!("reading Secret {name}")),
    })?;
    let bytes = secret
        .data
        .and_then(|mut d| d.remove("token"))
        .with_context(|| format!("Secret {name} has no key 'token'"))?;
    let token = Zeroizing::new(
        String::from_utf8(bytes.0)
            .map_err(|_| anyhow::anyhow!("Secret {name} does not hold a Patrol token"))?,
    );
    let parsed = patrol_api::token::parse(token.trim())
        .map_err(|_| anyhow::anyhow!("Secret {name} does not hold a Patrol token"))?;
    if parsed.id().as_str() != id {
        bail!("Secret {name} holds another token than {id}; try again in a moment");
    }
    Ok(Zeroizing::new(token.trim().to_owned()))
}

/// Where a revealed token goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

/// Standard output when asked (`--print`) or when it is not a terminal (a pipe or a file the
/// caller chose); else a private file: the one given, or `default_file`. An explicit file
/// always wins.
pub fn destination(
    print: bool,
    file: Option<&Path>,
    stdout_is_terminal: bool,
    default_file: impl FnOnce() -> Option<PathBuf>,
) -> Result<Destination> {
    Ok(match (file, print, stdout_is_terminal) {
        (Some(file), _, _) => Destination::File(file.to_owned()),
        (None, true, _) | (None, false, false) => Destination::Stdout,
        (None, false, true) => {
            Destination::File(default_file().context(
                "no home directory for the token file; give --token-file PATH or --print",
            )?)
        }
    })
}

/// `$XDG_CONFIG_HOME/patrol/tokens/<namespace>/<name>` (else under `~/.config`).
pub fn default_token_file(namespace: &str, name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(
        base.join("patrol")
            .join("tokens")
            .join(namespace)
            .join(name),
    )
}

/// Hands `token` over.
pub fn deliver(token: &str, to: &Destination) -> Result<()> {
    match to {
        Destination::Stdout => println!("{token}"),
        Destination::File(path) => crate::private::write(path, format!("{token}\n").as_bytes())
            .with_context(|| format!("writing the token to {}", path.display()))?,
    }
    Ok(())
}

/// Marks the revealed token as taken, so the operator removes a one-time Secret now. A
/// Persistent Secret is for in-cluster consumers and stays.
pub async fn acknowledge(api: &Api<PersonalAccessToken>, pat: &PersonalAccessToken) -> Result<()> {
    let id = pat.status.as_ref().and_then(|s| s.token_id.clone());
    if pat.retention() == Retention::Persistent {
        return Ok(());
    }
    let Some(id) = id else { return Ok(()) };
    api.patch(
        &pat.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {ACKNOWLEDGED_ANNOTATION: id}}})),
    )
    .await
    .context("acknowledging the token (its one-time Secret stays until the reveal window ends)")?;
    Ok(())
}

/// One line for a person: which token is now in their hands.
pub fn summary(pat: &PersonalAccessToken, now: DateTime<Utc>) -> String {
    let status = pat.status.clone().unwrap_or_default();
    let expires = match status.expires_at {
        Some(t) => {
            let at = patrol_api::time::from_k8s(&t);
            format!(
                "expires {} ({})",
                at.to_rfc3339_opts(SecondsFormat::Secs, true),
                crate::describe::relative(at, now)
            )
        }
        None => "does not expire".into(),
    };
    format!(
        "personalaccesstoken {}/{}: token {} ({}), {expires}",
        pat.namespace().unwrap_or_default(),
        pat.name_any(),
        status.token_id.unwrap_or_default(),
        status.hint.unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(status: serde_json::Value) -> PersonalAccessToken {
        serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
            "metadata": {"name": "ci", "namespace": "team-a"},
            "spec": {"displayName": "CI", "owner": {"username": "alice"}},
            "status": status,
        }))
        .unwrap()
    }

    fn ready(reason: &str, message: &str) -> serde_json::Value {
        json!([{"type": "Ready", "status": "False", "reason": reason, "message": message,
                "lastTransitionTime": "2026-12-03T10:00:00Z"}])
    }

    #[test]
    fn a_new_token_is_revealable_once_active_with_its_secret() {
        let fresh = Awaited::default();
        assert!(matches!(
            progress(Some(&pat(json!({}))), &fresh),
            Progress::Waiting(_)
        ));
        let pending = pat(
            json!({"phase": "Pending", "conditions": ready("OwnerVettingUnavailable", "Secret unreadable")}),
        );
        assert_eq!(
            progress(Some(&pending), &fresh),
            Progress::Waiting("OwnerVettingUnavailable: Secret unreadable".into())
        );
        let active = pat(
            json!({"phase": "Active", "tokenId": "AAAAAAAAAAAA", "secretRef": {"name": "ci-token"}}),
        );
        assert_eq!(progress(Some(&active), &fresh), Progress::Revealable);
        let no_secret_yet = pat(json!({"phase": "Active", "tokenId": "AAAAAAAAAAAA"}));
        assert!(matches!(
            progress(Some(&no_secret_yet), &fresh),
            Progress::Waiting(_)
        ));
    }

    #[test]
    fn dead_ends_fail_with_what_to_do() {
        let fresh = Awaited::default();
        let failed = pat(
            json!({"phase": "Failed", "conditions": ready("OwnerNotVetted", "create it again")}),
        );
        assert_eq!(
            progress(Some(&failed), &fresh),
            Progress::Failed("OwnerNotVetted: create it again".into())
        );
        let Progress::Failed(why) = progress(Some(&pat(json!({"phase": "Revoked"}))), &fresh)
        else {
            panic!("revoked is final");
        };
        assert!(why.contains("create a new one"), "{why}");
        let gone = pat(
            json!({"phase": "Active", "tokenId": "AAAAAAAAAAAA", "conditions": [
            {"type": "Delivered", "status": "False", "reason": "Revealed", "message": "acknowledged",
             "lastTransitionTime": "2026-12-03T10:00:00Z"}]}),
        );
        let Progress::Failed(why) = progress(Some(&gone), &fresh) else {
            panic!("a revealed token cannot be revealed again");
        };
        assert!(why.contains("rotate"), "{why}");
        assert!(matches!(progress(None, &fresh), Progress::Failed(_)));
    }

    #[test]
    fn a_rotation_waits_for_its_own_request_and_a_new_token() {
        let awaited = Awaited {
            rotation_request: Some("spec=;annotation=2026-12-03T10:00:00Z".into()),
            replaced: Some("AAAAAAAAAAAA".into()),
        };
        // The old status: Active, with the old token and its Secret.
        let before = pat(
            json!({"phase": "Active", "tokenId": "AAAAAAAAAAAA", "secretRef": {"name": "ci-token"},
                                "lastRotationRequest": "spec=;annotation="}),
        );
        assert!(matches!(
            progress(Some(&before), &awaited),
            Progress::Waiting(_)
        ));
        // An expired token being renewed is not a dead end while the request is pending.
        let expired = pat(json!({"phase": "Expired", "lastRotationRequest": "spec=;annotation="}));
        assert!(matches!(
            progress(Some(&expired), &awaited),
            Progress::Waiting(_)
        ));
        let rotated = pat(
            json!({"phase": "Active", "tokenId": "BBBBBBBBBBBB", "secretRef": {"name": "ci-token"},
                                 "lastRotationRequest": "spec=;annotation=2026-12-03T10:00:00Z"}),
        );
        assert_eq!(progress(Some(&rotated), &awaited), Progress::Revealable);
    }

    #[test]
    fn the_token_goes_to_stdout_only_when_it_is_not_a_terminal_or_when_asked() {
        let default = || Some(PathBuf::from("/home/a/.config/patrol/tokens/ns/ci"));
        let given = Some(Path::new("ci.pat"));
        assert_eq!(
            destination(false, None, false, default).unwrap(),
            Destination::Stdout
        );
        assert_eq!(
            destination(true, None, true, default).unwrap(),
            Destination::Stdout
        );
        assert_eq!(
            destination(false, None, true, default).unwrap(),
            Destination::File("/home/a/.config/patrol/tokens/ns/ci".into())
        );
        for (print, terminal) in [(false, false), (true, true), (false, true)] {
            assert_eq!(
                destination(print, given, terminal, default).unwrap(),
                Destination::File("ci.pat".into())
            );
        }
        assert!(destination(false, None, true, || None).is_err());
    }
}

//! Commands on PersonalAccessToken objects, through the usual kubeconfig: `create`, `list`
//! (with `--mine`, filtered by the apiserver on `spec.owner.username`), `rotate`, the
//! events of `describe`, and `revoke` (by name, by token id, or from a leaked token read on
//! stdin, found by `status.tokenId`).

use std::io::Read;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::{
    authentication::v1::{SelfSubjectReview, UserInfo},
    core::v1::Event,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use patrol_api::{
    duration::Duration,
    v1alpha1::{
        ExchangeSpec, Expiration, PersonalAccessToken, PersonalAccessTokenSpec, ROTATE_ANNOTATION,
        TokenOwner,
    },
};
use serde_json::json;
use zeroize::Zeroizing;

/// Which namespaces a command looks in.
pub enum Scope {
    /// The kubeconfig's namespace, or the one given.
    Namespace(Option<String>),
    All,
}

pub fn api(client: &Client, scope: &Scope) -> Api<PersonalAccessToken> {
    match scope {
        Scope::All => Api::all(client.clone()),
        Scope::Namespace(Some(ns)) => Api::namespaced(client.clone(), ns),
        Scope::Namespace(None) => Api::default_namespaced(client.clone()),
    }
}

/// Who the apiserver says this kubeconfig is.
pub async fn whoami(client: &Client) -> Result<UserInfo> {
    let review: SelfSubjectReview = Api::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .context("asking the apiserver who you are (SelfSubjectReview)")?;
    review
        .status
        .and_then(|s| s.user_info)
        .filter(|u| u.username.is_some())
        .context("the apiserver did not say who you are")
}

/// The username the apiserver sees for this kubeconfig.
pub async fn username(client: &Client) -> Result<String> {
    Ok(whoami(client).await?.username.unwrap_or_default())
}

/// What `create` asks for.
pub struct NewToken {
    pub name: String,
    pub display_name: Option<String>,
    pub scopes: Vec<String>,
    pub ttl: Option<String>,
    pub owner: Option<String>,
    pub audiences: Vec<String>,
}

impl NewToken {
    /// The PersonalAccessToken to create; the flags are checked here, before anything is
    /// sent (admission checks the rest against the policies).
    pub fn object(&self) -> Result<PersonalAccessToken> {
        if let Some(ttl) = &self.ttl {
            patrol_api::duration::parse(ttl)
                .map_err(|e| anyhow::anyhow!("--ttl {ttl:?}: {e} (for example 30d, 12h or 90m)"))?;
        }
        let mut spec = PersonalAccessTokenSpec {
            display_name: self
                .display_name
                .clone()
                .unwrap_or_else(|| self.name.clone()),
            scopes: self.scopes.clone(),
            expiration: self.ttl.as_ref().map(|ttl| Expiration {
                ttl: Some(Duration::new(ttl.clone())),
                expires_at: None,
            }),
            owner: self.owner.as_ref().map(|username| TokenOwner {
                username: username.clone(),
                ..TokenOwner::default()
            }),
            ..PersonalAccessTokenSpec::default()
        };
        if !self.audiences.is_empty() {
            spec.exchange = Some(ExchangeSpec {
                audiences: self.audiences.clone(),
                ..ExchangeSpec::default()
            });
        }
        Ok(PersonalAccessToken::new(&self.name, spec))
    }
}

/// Creates `token` in `scope`'s namespace.
pub async fn create(
    client: &Client,
    scope: &Scope,
    token: &NewToken,
) -> Result<PersonalAccessToken> {
    let object = token.object()?;
    api(client, scope)
        .create(&PostParams::default(), &object)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 409 => anyhow::anyhow!(
                "PersonalAccessToken {} exists already; `kubectl pat rotate {}` gives it a new token",
                token.name,
                token.name
            ),
            kube::Error::Api(s) => anyhow::anyhow!("creating PersonalAccessToken {}: {}", token.name, s.message),
            e => anyhow::Error::new(e).context(format!("creating PersonalAccessToken {}", token.name)),
        })
}

/// Asks the operator to rotate `pat` now (the `patrol.dev/rotate` annotation, so a spec
/// kept in Git does not drift), with `grace` for the old token if given. The updated PAT.
pub async fn request_rotation(
    client: &Client,
    pat: &PersonalAccessToken,
    request: &str,
    grace: Option<&str>,
) -> Result<PersonalAccessToken> {
    let mut patch = json!({"metadata": {"annotations": {ROTATE_ANNOTATION: request}}});
    if let Some(grace) = grace {
        patrol_api::duration::parse(grace)
            .map_err(|e| anyhow::anyhow!("--grace {grace:?}: {e} (for example 1h or 7d)"))?;
        patch["spec"] = json!({"rotation": {"gracePeriod": grace}});
    }
    merge_patch(client, pat, patch, "rotating").await
}

/// Merge-patches `pat` in its namespace; errors say what was being done (`doing`) to which
/// PAT, in the apiserver's words.
async fn merge_patch(
    client: &Client,
    pat: &PersonalAccessToken,
    patch: serde_json::Value,
    doing: &str,
) -> Result<PersonalAccessToken> {
    let ns = pat
        .namespace()
        .context("a PersonalAccessToken without a namespace")?;
    let name = pat.name_any();
    Api::<PersonalAccessToken>::namespaced(client.clone(), &ns)
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => {
                anyhow::anyhow!("{doing} PersonalAccessToken {ns}/{name}: {}", s.message)
            }
            e => anyhow::Error::new(e).context(format!("{doing} PersonalAccessToken {ns}/{name}")),
        })
}

/// Events about `pat`, oldest first; `None` when listing events is not permitted.
pub async fn events(client: &Client, pat: &PersonalAccessToken) -> Result<Option<Vec<Event>>> {
    let ns = pat.namespace().unwrap_or_default();
    let Some(uid) = pat.uid() else {
        return Ok(Some(vec![]));
    };
    let listed = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await;
    match listed {
        Ok(list) => {
            let mut events = list.items;
            events.sort_by_key(crate::describe::event_time);
            Ok(Some(events))
        }
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context("listing events")),
    }
}

/// PATs in `scope`; `owner`: only those it owns (apiserver-side field selector).
pub async fn list(
    client: &Client,
    scope: &Scope,
    owner: Option<&str>,
) -> Result<Vec<PersonalAccessToken>> {
    let mut params = ListParams::default();
    if let Some(owner) = owner {
        params = params.fields(&format!("spec.owner.username={owner}"));
    }
    Ok(api(client, scope).list(&params).await?.items)
}

/// One row per PAT: the columns a person reads.
pub fn table(pats: &[PersonalAccessToken], namespaces: bool) -> String {
    let mut rows: Vec<Vec<String>> = vec![];
    let mut header = vec![
        "NAME",
        "DISPLAY NAME",
        "OWNER",
        "PHASE",
        "SCOPES",
        "EXPIRES",
        "LAST USED",
    ];
    if namespaces {
        header.insert(0, "NAMESPACE");
    }
    rows.push(header.into_iter().map(str::to_owned).collect());
    for pat in pats {
        let status = pat.status.clone().unwrap_or_default();
        let stamp = |t: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
            t.map(|t| {
                patrol_api::time::from_k8s(&t)
                    .format("%Y-%m-%dT%H:%MZ")
                    .to_string()
            })
            .unwrap_or_else(|| "-".into())
        };
        let mut row = vec![
            pat.name_any(),
            pat.spec.display_name.clone(),
            pat.spec
                .owner
                .as_ref()
                .map(|o| o.username.clone())
                .unwrap_or_else(|| "-".into()),
            status
                .phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "Pending".into()),
            if pat.spec.scopes.is_empty() {
                "(all of the owner's)".into()
            } else {
                pat.spec.scopes.join(",")
            },
            stamp(status.expires_at),
            stamp(status.last_used_at),
        ];
        if namespaces {
            row.insert(0, pat.namespace().unwrap_or_default());
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("   ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The id of a token read from `input` (a leaked token, pasted or piped). The token itself
/// is wiped after reading and never printed.
pub fn leaked_token_id(mut input: impl Read) -> Result<String> {
    let mut text = Zeroizing::new(String::new());
    input
        .read_to_string(&mut text)
        .context("reading the leaked token from standard input")?;
    let parsed = patrol_api::token::parse(text.trim()).map_err(|e| {
        anyhow::anyhow!("standard input does not hold a Patrol token ({e}); paste the whole token, patrol_<id>_<secret>")
    })?;
    Ok(parsed.id().to_string())
}

/// The PATs whose current or previous (grace) token is `id`.
pub async fn holding(client: &Client, scope: &Scope, id: &str) -> Result<Vec<PersonalAccessToken>> {
    let pats = api(client, scope);
    let current = pats
        .list(&ListParams::default().fields(&format!("status.tokenId={id}")))
        .await?
        .items;
    if !current.is_empty() {
        return Ok(current);
    }
    // A rotated-out token in its grace period is named only in status.previous.
    Ok(pats
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.previous.as_ref())
                .is_some_and(|prev| prev.token_id == id)
        })
        .collect())
}

/// Sets `spec.revoked: true` (final: the operator deletes every token of the PAT).
pub async fn revoke(client: &Client, pat: &PersonalAccessToken) -> Result<()> {
    merge_patch(client, pat, json!({"spec": {"revoked": true}}), "revoking").await?;
    Ok(())
}

/// The PAT named `name` in `scope`'s namespace.
pub async fn get(client: &Client, scope: &Scope, name: &str) -> Result<PersonalAccessToken> {
    if matches!(scope, Scope::All) {
        bail!("name a namespace (-n) for a PersonalAccessToken by name");
    }
    api(client, scope)
        .get(name)
        .await
        .with_context(|| format!("reading PersonalAccessToken {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaked_token_gives_its_id_and_nothing_else() {
        let token = patrol_api::token::generate().unwrap();
        let id = leaked_token_id(format!("  {}\n", token.expose_secret()).as_bytes()).unwrap();
        assert_eq!(id, token.id().to_string());
        let err = leaked_token_id("patrol_nope".as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not hold a Patrol token"), "{err}");
        assert!(
            !err.contains("patrol_nope"),
            "the input is not echoed: {err}"
        );
    }

    #[test]
    fn the_table_lines_up_and_says_what_unscoped_means() {
        let pat: PersonalAccessToken = serde_json::from_value(json!({
            "apiVersion": "patrol.dev/v1alpha1", "kind": "PersonalAccessToken",
            "metadata": {"name": "laptop", "namespace": "team-a"},
            "spec": {"displayName": "Alice's laptop", "owner": {"username": "alice"}},
            "status": {"phase": "Active", "expiresAt": "2027-03-03T10:00:00Z"},
        }))
        .unwrap();
        let text = table(&[pat], true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE   NAME     DISPLAY NAME"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("team-a      laptop   Alice's laptop"),
            "{text}"
        );
        assert!(lines[1].contains("Active"), "{text}");
        assert!(lines[1].contains("(all of the owner's)"), "{text}");
        assert!(lines[1].contains("2027-03-03T10:00Z"), "{text}");
    }
}

//! Asking the Kubernetes API who presents a token and what they may do: TokenReview for
//! actor tokens (token exchange) and for introspection callers, SubjectAccessReview for
//! whether a caller may introspect. Behind [`ClusterReviewer`] so unit tests use a fake.
//!
//! **Who may introspect.** RFC 7662 §2.1 requires the endpoint to authorize callers, or it
//! becomes a token-scanning oracle. Patrol lets callers in with what they already have in
//! a cluster — a ServiceAccount (or any) bearer token, verified by TokenReview — and then
//! asks RBAC, through a SubjectAccessReview, whether that user may `create` the virtual
//! resource `tokenintrospections` in API group `patrol.dev`. So granting it is one
//! ClusterRole rule, and revoking it is deleting a binding:
//!
//! ```yaml
//! rules:
//! - apiGroups: ["patrol.dev"]
//!   resources: ["tokenintrospections"]
//!   verbs: ["create"]
//! ```
//!
//! Positive decisions are remembered per caller token (an HMAC of it, never the token) for
//! a few seconds, so a busy resource server costs the apiserver two reviews per interval
//! rather than two per request. Refusals are never remembered.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use ring::{hmac, rand::SystemRandom};

/// The virtual resource introspection callers need `create` on.
pub const INTROSPECT_GROUP: &str = "patrol.dev";
pub const INTROSPECT_RESOURCE: &str = "tokenintrospections";
pub const INTROSPECT_VERB: &str = "create";

/// A user the Kubernetes API authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReviewedUser {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the Kubernetes API could not be asked: {0}")]
    Kube(#[from] kube::Error),
    #[error("the Kubernetes API answered without a status")]
    NoStatus,
}

/// What Patrol asks the Kubernetes API about callers.
pub trait ClusterReviewer: Send + Sync {
    /// Who `token` authenticates as for the Kubernetes API, or `None` if nobody.
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReviewedUser>, ReviewError>>;

    /// Whether `user` may introspect tokens (see the module docs).
    fn may_introspect<'a>(
        &'a self,
        user: &'a ReviewedUser,
    ) -> BoxFuture<'a, Result<bool, ReviewError>>;
}

/// [`ClusterReviewer`] backed by the apiserver.
pub struct KubeReviewer {
    tokens: Api<TokenReview>,
    access: Api<SubjectAccessReview>,
}

impl KubeReviewer {
    pub fn new(client: Client) -> Self {
        Self {
            tokens: Api::all(client.clone()),
            access: Api::all(client),
        }
    }
}

impl ClusterReviewer for KubeReviewer {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReviewedUser>, ReviewError>> {
        Box::pin(async move {
            // No audiences: the apiserver's own, which a ServiceAccount token from the
            // TokenRequest API (`kubectl create token`) carries by default.
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: None,
                },
                ..TokenReview::default()
            };
            let answer = self.tokens.create(&PostParams::default(), &review).await?;
            let status = answer.status.ok_or(ReviewError::NoStatus)?;
            if status.authenticated != Some(true) {
                return Ok(None);
            }
            Ok(status.user.and_then(|u| {
                Some(ReviewedUser {
                    username: u.username.filter(|n| !n.is_empty())?,
                    uid: u.uid,
                    groups: u.groups.unwrap_or_default(),
                    extra: u.extra.unwrap_or_default(),
                })
            }))
        })
    }

    fn may_introspect<'a>(
        &'a self,
        user: &'a ReviewedUser,
    ) -> BoxFuture<'a, Result<bool, ReviewError>> {
        Box::pin(async move {
            let review = introspection_access_review(user);
            let answer = self.access.create(&PostParams::default(), &review).await?;
            let status = answer.status.ok_or(ReviewError::NoStatus)?;
            Ok(status.allowed && status.denied != Some(true))
        })
    }
}

/// The SubjectAccessReview asking whether `user` may introspect.
pub fn introspection_access_review(user: &ReviewedUser) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.username.clone()),
            uid: user.uid.clone(),
            groups: Some(user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(INTROSPECT_GROUP.into()),
                resource: Some(INTROSPECT_RESOURCE.into()),
                verb: Some(INTROSPECT_VERB.into()),
                ..ResourceAttributes::default()
            }),
            non_resource_attributes: None,
        },
        ..SubjectAccessReview::default()
    }
}

/// Introspection callers recently authenticated and authorized, by HMAC of their token.
pub struct CallerCache {
    key: hmac::Key,
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<[u8; 32], (Instant, String)>>,
}

impl CallerCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Option<Self> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).ok()?;
        Some(Self {
            key,
            ttl,
            max_entries,
            entries: Mutex::default(),
        })
    }

    fn mac(&self, token: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.key, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(&tag.as_ref()[..32]);
        out
    }

    /// The username of an authorized caller seen within the TTL.
    pub fn get(&self, token: &str, now: Instant) -> Option<String> {
        if self.ttl.is_zero() {
            return None;
        }
        let mac = self.mac(token);
        let entries = self.entries.lock().ok()?;
        entries
            .get(&mac)
            .filter(|(at, _)| now.duration_since(*at) < self.ttl)
            .map(|(_, user)| user.clone())
    }

    pub fn insert(&self, token: &str, username: &str, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mac = self.mac(token);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.max_entries {
            entries.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            if entries.len() >= self.max_entries {
                entries.clear();
            }
        }
        entries.insert(mac, (now, username.to_owned()));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fake apiserver: tokens it knows, users allowed to introspect, and a switch to fail.
    #[derive(Default)]
    pub(crate) struct FakeReviewer {
        pub users: Mutex<HashMap<String, ReviewedUser>>,
        pub introspectors: Mutex<Vec<String>>,
        pub down: std::sync::atomic::AtomicBool,
        pub calls: std::sync::atomic::AtomicUsize,
    }

    impl FakeReviewer {
        pub(crate) fn knows(&self, token: &str, username: &str) {
            self.users.lock().unwrap().insert(
                token.into(),
                ReviewedUser {
                    username: username.into(),
                    ..ReviewedUser::default()
                },
            );
        }

        pub(crate) fn allow_introspection(&self, username: &str) {
            self.introspectors.lock().unwrap().push(username.into());
        }

        fn unavailable() -> ReviewError {
            ReviewError::Kube(kube::Error::Api(
                kube::core::Status::failure("unavailable", "ServiceUnavailable")
                    .with_code(503)
                    .boxed(),
            ))
        }
    }

    impl ClusterReviewer for FakeReviewer {
        fn authenticate<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Option<ReviewedUser>, ReviewError>> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let down = self.down.load(std::sync::atomic::Ordering::Relaxed);
            let user = self.users.lock().unwrap().get(token).cloned();
            Box::pin(async move {
                if down {
                    return Err(Self::unavailable());
                }
                Ok(user)
            })
        }

        fn may_introspect<'a>(
            &'a self,
            user: &'a ReviewedUser,
        ) -> BoxFuture<'a, Result<bool, ReviewError>> {
            self.calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let down = self.down.load(std::sync::atomic::Ordering::Relaxed);
            let allowed = self.introspectors.lock().unwrap().contains(&user.username);
            Box::pin(async move {
                if down {
                    return Err(Self::unavailable());
                }
                Ok(allowed)
            })
        }
    }

    #[test]
    fn the_access_review_asks_for_the_virtual_resource() {
        let user = ReviewedUser {
            username: "system:serviceaccount:apps:api".into(),
            uid: Some("u".into()),
            groups: vec!["system:serviceaccounts".into()],
            extra: BTreeMap::new(),
        };
        let review = introspection_access_review(&user);
        let json = serde_json::to_value(&review).unwrap();
        assert_eq!(json["spec"]["user"], "system:serviceaccount:apps:api");
        assert_eq!(
            json["spec"]["resourceAttributes"],
            serde_json::json!({"group": "patrol.dev", "resource": "tokenintrospections", "verb": "create"})
        );
        assert!(json["spec"].get("extra").is_none());
    }

    #[test]
    fn the_caller_cache_remembers_for_its_ttl_and_stays_bounded() {
        let cache = CallerCache::new(Duration::from_secs(10), 2).unwrap();
        let t0 = Instant::now();
        cache.insert("token-a", "a", t0);
        assert_eq!(cache.get("token-a", t0).as_deref(), Some("a"));
        assert_eq!(cache.get("token-b", t0), None);
        assert_eq!(cache.get("token-a", t0 + Duration::from_secs(10)), None);
        cache.insert("token-b", "b", t0);
        cache.insert("token-c", "c", t0);
        assert!(cache.entries.lock().unwrap().len() <= 2);
        assert_eq!(cache.get("token-c", t0).as_deref(), Some("c"));
        let off = CallerCache::new(Duration::ZERO, 2).unwrap();
        off.insert("t", "u", t0);
        assert_eq!(off.get("t", t0), None);
        // Keys are MACs, never the token.
        let keys: Vec<[u8; 32]> = cache.entries.lock().unwrap().keys().copied().collect();
        assert!(keys.iter().all(|k| !k.windows(7).any(|w| w == b"token-c")));
    }
}

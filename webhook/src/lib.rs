//! `patrol-webhook`: Patrol's token service. One rustls HTTPS server (HTTP/1.1 and HTTP/2)
//! that any number of replicas run without coordinating.
//!
//! Layout, by responsibility:
//!
//! - [`index`]: the in-memory index of hashed token records, fed by a watch on the record
//!   Secrets; readiness follows its initial sync.
//! - [`validate`]: the validation core every endpoint shares — parse, cache, lookup,
//!   rate limits, argon2, expiry and idle time — built from [`cache`], [`limiter`],
//!   [`verify_pool`] and [`usage`] (lastUsedAt write-back).
//! - [`token_review`]: TokenReview requests and answers, pure.
//! - [`authz`]: the authorization webhook: a Patrol token does only what its owner may
//!   and its scopes permit; revoked and expired tokens are denied at once.
//! - [`admission`]: the admission webhooks (owner stamping, policy and escalation checks)
//!   and the webhook configurations that route the apiserver to them.
//! - [`exchange`] (RFC 8693) and [`introspect`] (RFC 7662): the OAuth decisions, pure,
//!   on the shared forms and errors of [`oauth`]; [`jwt`] and [`signing`]: ES256 tokens and
//!   the rotating keys in a Secret; [`reviews`]: TokenReview and SubjectAccessReview of
//!   callers; [`issuer`]: the OAuth issuer wiring them to the validation core.
//! - [`routes`]: the HTTP endpoints, one module each, and the shared layers.
//! - [`tls`]: rustls (ring) configuration and certificate reloading.
//! - [`server`]: wiring, started by the binary.
//!
//! Nothing here logs, traces, counts or returns a token or a hash; token ids (public by
//! design) are the only token-derived values that appear in logs.

pub mod admission;
pub mod authz;
pub mod cache;
pub mod exchange;
pub mod index;
pub mod introspect;
pub mod issuer;
pub mod jwt;
pub mod limiter;
pub mod metrics;
pub mod oauth;
pub mod owners;
pub mod reviews;
pub mod routes;
pub mod server;
pub mod signing;
pub mod tls;
pub mod token_review;
pub mod usage;
pub mod validate;
pub mod verify_pool;

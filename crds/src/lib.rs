//! Patrol's API crate: the `patrol.dev` custom resources and the pure logic every part of
//! Patrol shares (durations, validation, policy composition, the token format). No I/O.

pub mod attestation;
pub mod crd;
pub mod duration;
pub mod lease;
pub mod policy;
pub mod record;
pub mod reference;
pub mod time;
pub mod token;
pub mod v1alpha1;
pub mod validation;

/// The API group of every Patrol resource.
pub const GROUP: &str = "patrol.dev";

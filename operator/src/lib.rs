//! patrol-operator: turns each PersonalAccessToken into a usable token and runs its
//! lifecycle. The decisions live in [`lifecycle`] (pure); [`reconciler`] executes them.

pub mod crash;
pub mod lifecycle;
pub mod metrics;
pub mod policy_status;
pub mod reconciler;
pub mod run;
pub mod sweep;

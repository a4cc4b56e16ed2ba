//! Version v1alpha1 of the `patrol.dev` API.

mod policy;
mod token;

pub use policy::*;
pub use token::*;

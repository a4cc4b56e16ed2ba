//! Version v1alpha1 of the `patrol.dev` API.

mod policy;
mod provider;
mod scope;
mod token;

pub use policy::*;
pub use provider::*;
pub use scope::*;
pub use token::*;

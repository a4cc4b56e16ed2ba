//! Version v1alpha1 of the `patrol.dev` API.

mod policy;
mod scope;
mod token;

pub use policy::*;
pub use scope::*;
pub use token::*;

//! patrol-webhook library.

//! patrol-operator library.

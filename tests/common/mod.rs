//! Shared fixtures of the end-to-end tests.

pub mod harness;
pub mod python;

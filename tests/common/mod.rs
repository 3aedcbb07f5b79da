//! Shared fixtures of the end-to-end tests.

pub mod cloud;
pub mod control_plane;
pub mod fake_k8s;
pub mod harness;
pub mod python;

//! Akeyless provider for the Kubernetes Secrets Store CSI driver.
//!
//! A mount travels through one module per stage:
//!
//! 1. [`server`] binds the owner-only unix socket the driver dials, admits only allowed peer
//!    users, repairs the HTTP/2 `:authority` of old drivers ([`server::authority`]), serves the
//!    probes and metrics ([`server::health`]) and drains on shutdown;
//! 2. [`service`] implements `v1alpha1.CSIDriverProvider` (`Version`, `Mount`): bounds each mount
//!    by its deadline, logs in again once on a refused token, contains panics, writes the audit
//!    event, and maps every failure to a `tonic::Status` that names the object and the fix;
//! 3. [`params`] parses the request's JSON strings once into a typed [`params::MountConfig`];
//! 4. [`auth`] turns the pod's identity into an Akeyless token, cached per identity;
//! 5. [`fetch`] works out what the objects need (item types, folder listings) and reads it with
//!    as few calls as possible: batched static reads, shared identical reads, and dynamic
//!    secrets and issued certificates reused per pod volume ([`fetch::lease`]);
//! 6. [`akeyless`] talks to the Akeyless API (SaaS or Gateway) over HTTP with retries, deadlines
//!    and a node-wide bound on calls;
//! 7. [`render`] shapes fetched values into files (properties, encodings, PEM bundles or
//!    cert/key/chain files ([`render::pem`]), templates, folders) with modes and object versions;
//! 8. [`sync`] mirrors values into Kubernetes Secrets when the SPC has `secretSync` (opt-in).
//!
//! Around them: [`secret`] (types that never print secret material), [`template`] (the
//! `{{ .key }}` templates of files and Secrets), [`telemetry`] (logs and metrics),
//! [`cli`] (flags), and the tools [`emulator`] (an Akeyless-compatible API on loopback),
//! [`mount_cli`] (a driver-equivalent client), [`check`] (SecretProviderClasses checked offline
//! with the provider's own parsers) and [`demo`].
#![forbid(unsafe_code)]

pub mod akeyless;
pub mod auth;
pub mod check;
pub mod cli;
pub mod demo;
pub mod emulator;
pub mod fetch;
pub mod mount_cli;
pub mod params;
pub mod proto;
pub mod render;
pub mod secret;
pub mod server;
pub mod service;
pub mod sync;
pub mod telemetry;
pub mod template;

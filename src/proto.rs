//! Generated code for the driver's `v1alpha1` provider contract (see `proto/`).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1alpha1 {
    tonic::include_proto!("v1alpha1");
}

//! podwire's KubeVirt network binding plugin.
//!
//! KubeVirt lets a cluster admin register a network binding plugin
//! (`spec.configuration.network.binding.<name>` in the KubeVirt CR) whose `sidecarImage` runs
//! as a container in every virt-launcher pod of a VM that uses it. This crate is that sidecar:
//! it serves KubeVirt's hook API over gRPC on a UNIX socket in the hooks directory ([`hook`]),
//! and on `OnDefineDomain` reads the VMI ([`vmi`]), starts podwire with the matching options
//! ([`options`], [`podwire`]) in the pod's network namespace it shares with virt-launcher, and
//! rewrites the domain's interface into a vhost-user one on podwire's socket ([`domain`]).
//! [`sidecar`] puts these together; `src/main.rs` is its command line.

pub mod client;
pub mod domain;
pub mod hook;
pub mod launcher;
pub mod options;
pub mod podwire;
pub mod sidecar;
pub mod vmi;

/// Code generated from `proto/` (KubeVirt's hook API).
pub mod proto {
    pub mod info {
        tonic::include_proto!("kubevirt.hooks.info");
    }
    pub mod v1alpha2 {
        tonic::include_proto!("kubevirt.hooks.v1alpha2");
    }
    pub mod v1alpha3 {
        tonic::include_proto!("kubevirt.hooks.v1alpha3");
    }
}

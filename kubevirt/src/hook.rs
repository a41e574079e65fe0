//! KubeVirt's hook API, served: `Info` and the v1alpha2/v1alpha3 callbacks.
//!
//! Theory of operation. virt-launcher finds the sidecar's socket in its hooks directory, asks
//! `kubevirt.hooks.info.Info/Info` (with a one-second timeout, so it is answered at once, never
//! after podwire) which versions and hook points it serves, picks the newest version both know
//! (v1alpha3, else v1alpha2), and calls `OnDefineDomain` (with a one-minute timeout) before it
//! defines the domain, and `Shutdown` (v1alpha3) when the VM is gone. `OnDefineDomain`:
//! 1. parses the VMI and the domain, finds podwire's interfaces and plans the rewrite
//!    ([`crate::domain::plan`]): any bad input is `InvalidArgument`, and nothing was started;
//! 2. starts podwire for each such interface and waits until it listens
//!    ([`crate::podwire::Supervisor`]): `Unavailable` if it does not in time or exits;
//! 3. answers the rewritten domain. A VMI without podwire interfaces gets its domain back as is.
//!
//! `PreCloudInitIso` is not subscribed to; if called anyway it returns its input unchanged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::domain::{self, NicSpec};
use crate::options::PodwireOptions;
use crate::podwire::{PodwireError, Supervisor};
use crate::proto::{info, v1alpha2, v1alpha3};
use crate::vmi::Vmi;

/// The callback API versions served, newest first.
pub const VERSIONS: &[&str] = &["v1alpha3", "v1alpha2"];
/// The sidecar's name in `Info`.
pub const NAME: &str = "podwire-network-binding";
/// Longest UNIX socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where things are, as each container sees them.
#[derive(Debug, Clone)]
pub struct Paths {
    /// podwire's socket directory as the sidecar sees it.
    pub sidecar_dir: PathBuf,
    /// The same directory as virt-launcher (QEMU) sees it.
    pub launcher_dir: PathBuf,
}

pub struct Hook {
    pub binding: String,
    pub paths: Paths,
    pub cluster_domain: String,
    pub supervisor: Arc<Supervisor>,
    /// Notified once `Shutdown` was called and podwire stopped.
    pub shutdown: Arc<Notify>,
}

impl Hook {
    /// The rewritten domain for `domain_xml` and `vmi_json`, podwire running for it.
    pub async fn on_define_domain(
        &self,
        domain_xml: &[u8],
        vmi_json: &[u8],
    ) -> Result<Vec<u8>, Status> {
        let xml = std::str::from_utf8(domain_xml)
            .map_err(|e| Status::invalid_argument(format!("the domain XML is not UTF-8: {e}")))?;
        let vmi = Vmi::from_json(vmi_json).map_err(invalid)?;
        let nics = vmi.podwire_interfaces(&self.binding).map_err(invalid)?;
        if nics.is_empty() {
            tracing::info!(
                "VMI {}/{} has no interface bound to {:?}: domain unchanged",
                vmi.metadata.namespace,
                vmi.metadata.name,
                self.binding
            );
            return Ok(domain_xml.to_vec());
        }
        let transitional = vmi
            .spec
            .domain
            .devices
            .use_virtio_transitional
            .unwrap_or(false);
        let mut specs = Vec::with_capacity(nics.len());
        for nic in &nics {
            let file = format!("{}.sock", nic.iface.name);
            let launcher_socket = self.paths.launcher_dir.join(&file);
            let sidecar_socket = self.paths.sidecar_dir.join(&file);
            for p in [&launcher_socket, &sidecar_socket] {
                if p.as_os_str().len() > MAX_SOCKET_PATH {
                    return Err(Status::invalid_argument(format!(
                        "podwire's socket path {} is longer than a UNIX socket path may be",
                        p.display()
                    )));
                }
            }
            specs.push(NicSpec {
                name: nic.iface.name.clone(),
                socket: launcher_socket.to_string_lossy().into_owned(),
                mac: nic.iface.mac_address.clone().filter(|m| !m.is_empty()),
                model: nic.iface.model.clone(),
                pci_address: nic.iface.pci_address.clone().filter(|p| !p.is_empty()),
                boot_order: nic.iface.boot_order,
                acpi_index: nic.iface.acpi_index,
                virtio_transitional: transitional,
            });
        }
        let plan = domain::plan(xml, &specs).map_err(invalid)?;
        let mut options = Vec::with_capacity(nics.len());
        for nic in &nics {
            let socket = self
                .paths
                .sidecar_dir
                .join(format!("{}.sock", nic.iface.name));
            let mtu = plan.mtu(&nic.iface.name);
            options.push(
                PodwireOptions::from_vmi(&vmi, nic, socket, mtu, &self.cluster_domain)
                    .map_err(invalid)?,
            );
        }
        let rewritten = plan.apply().map_err(|e| Status::internal(e.to_string()))?;
        for o in &options {
            self.supervisor
                .ensure_running(o)
                .await
                .map_err(unavailable)?;
        }
        tracing::info!(
            "domain of VMI {}/{}: {} interface(s) on podwire",
            vmi.metadata.namespace,
            vmi.metadata.name,
            options.len()
        );
        Ok(rewritten.into_bytes())
    }

    async fn shut_down(&self) {
        tracing::info!("Shutdown: stopping podwire");
        self.supervisor.stop(Duration::from_secs(5)).await;
        self.shutdown.notify_one();
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    tracing::warn!("OnDefineDomain refused: {e}");
    Status::invalid_argument(e.to_string())
}

fn unavailable(e: PodwireError) -> Status {
    tracing::warn!("OnDefineDomain failed: {e}");
    Status::unavailable(e.to_string())
}

/// `kubevirt.hooks.info.Info`.
pub struct InfoService;

#[tonic::async_trait]
impl info::info_server::Info for InfoService {
    async fn info(
        &self,
        _: Request<info::InfoParams>,
    ) -> Result<Response<info::InfoResult>, Status> {
        let point = |name: &str| info::HookPoint {
            name: name.into(),
            priority: 0,
        };
        Ok(Response::new(info::InfoResult {
            name: NAME.into(),
            hook_points: vec![point("OnDefineDomain"), point("Shutdown")],
            versions: VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }))
    }
}

/// Both callback versions over one [`Hook`].
#[derive(Clone)]
pub struct Callbacks(pub Arc<Hook>);

#[tonic::async_trait]
impl v1alpha3::callbacks_server::Callbacks for Callbacks {
    async fn on_define_domain(
        &self,
        req: Request<v1alpha3::OnDefineDomainParams>,
    ) -> Result<Response<v1alpha3::OnDefineDomainResult>, Status> {
        let p = req.into_inner();
        let domain_xml = self.0.on_define_domain(&p.domain_xml, &p.vmi).await?;
        Ok(Response::new(v1alpha3::OnDefineDomainResult { domain_xml }))
    }

    async fn pre_cloud_init_iso(
        &self,
        req: Request<v1alpha3::PreCloudInitIsoParams>,
    ) -> Result<Response<v1alpha3::PreCloudInitIsoResult>, Status> {
        let p = req.into_inner();
        Ok(Response::new(v1alpha3::PreCloudInitIsoResult {
            cloud_init_no_cloud_source: p.cloud_init_no_cloud_source,
            cloud_init_data: p.cloud_init_data,
        }))
    }

    async fn shutdown(
        &self,
        _: Request<v1alpha3::ShutdownParams>,
    ) -> Result<Response<v1alpha3::ShutdownResult>, Status> {
        self.0.shut_down().await;
        Ok(Response::new(v1alpha3::ShutdownResult {}))
    }
}

#[tonic::async_trait]
impl v1alpha2::callbacks_server::Callbacks for Callbacks {
    async fn on_define_domain(
        &self,
        req: Request<v1alpha2::OnDefineDomainParams>,
    ) -> Result<Response<v1alpha2::OnDefineDomainResult>, Status> {
        let p = req.into_inner();
        let domain_xml = self.0.on_define_domain(&p.domain_xml, &p.vmi).await?;
        Ok(Response::new(v1alpha2::OnDefineDomainResult { domain_xml }))
    }

    async fn pre_cloud_init_iso(
        &self,
        req: Request<v1alpha2::PreCloudInitIsoParams>,
    ) -> Result<Response<v1alpha2::PreCloudInitIsoResult>, Status> {
        let p = req.into_inner();
        Ok(Response::new(v1alpha2::PreCloudInitIsoResult {
            cloud_init_no_cloud_source: p.cloud_init_no_cloud_source,
            cloud_init_data: p.cloud_init_data,
        }))
    }
}

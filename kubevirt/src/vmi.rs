//! The part of a KubeVirt VirtualMachineInstance the podwire binding reads.
//!
//! virt-launcher passes the VMI to `OnDefineDomain` as JSON (the `kubevirt.io/v1` object, spec
//! and status). Only the fields below matter here; everything else is ignored, and every field
//! is optional so that a VMI from an older or newer KubeVirt still parses. Which interfaces are
//! podwire's is decided by [`Vmi::podwire_interfaces`]: a VMI interface whose `binding.name` is
//! the binding's registered name, that is not marked `absent`, and whose network exists.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Vmi {
    pub metadata: Metadata,
    pub spec: VmiSpec,
    pub status: VmiStatus,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VmiSpec {
    pub domain: DomainSpec,
    pub networks: Vec<Network>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct DomainSpec {
    pub devices: Devices,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Devices {
    pub interfaces: Vec<Interface>,
    pub use_virtio_transitional: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    pub binding: Option<Binding>,
    pub mac_address: Option<String>,
    pub model: Option<String>,
    pub pci_address: Option<String>,
    pub boot_order: Option<u32>,
    pub acpi_index: Option<u32>,
    pub ports: Vec<Port>,
    pub dhcp_options: Option<DhcpOptions>,
    pub state: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Binding {
    pub name: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Port {
    pub name: Option<String>,
    /// "TCP" (the default when empty), "UDP" or "SCTP".
    pub protocol: Option<String>,
    pub port: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DhcpOptions {
    pub boot_file_name: Option<String>,
    pub tftp_server_name: Option<String>,
    pub ntp_servers: Vec<String>,
    pub private_options: Vec<PrivateOption>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PrivateOption {
    pub option: i64,
    pub value: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Network {
    pub name: String,
    pub pod: Option<PodNetwork>,
    pub multus: Option<serde_json::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct PodNetwork {
    #[serde(rename = "vmNetworkCIDR")]
    pub vm_network_cidr: Option<String>,
    #[serde(rename = "vmIPv6NetworkCIDR")]
    pub vm_ipv6_network_cidr: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct VmiStatus {
    pub interfaces: Vec<InterfaceStatus>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct InterfaceStatus {
    pub name: String,
    pub pod_interface_name: Option<String>,
}

/// Why a VMI cannot be served by podwire.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VmiError {
    #[error("the VMI is not valid JSON: {0}")]
    Json(String),
    #[error("interface {0:?} is bound to podwire but the VMI has no network named {0:?}")]
    UnknownNetwork(String),
    #[error("interface {0:?} is bound to podwire on a non-pod network: podwire serves the pod network only")]
    NotPodNetwork(String),
    #[error("interface name {0:?} cannot name a socket file (letters, digits, '-', '_' and '.' only, at most 63)")]
    BadInterfaceName(String),
}

/// One VMI interface podwire serves, with its network.
#[derive(Debug, Clone)]
pub struct PodwireNic<'a> {
    pub iface: &'a Interface,
    pub pod: PodNetwork,
}

impl Vmi {
    pub fn from_json(bytes: &[u8]) -> Result<Self, VmiError> {
        serde_json::from_slice(bytes).map_err(|e| VmiError::Json(e.to_string()))
    }

    /// The interfaces bound to `binding`, in spec order. An interface naming a network the VMI
    /// lacks, or a non-pod network, is an error: podwire never serves half a VMI.
    pub fn podwire_interfaces(&self, binding: &str) -> Result<Vec<PodwireNic<'_>>, VmiError> {
        let mut nics = Vec::new();
        for iface in &self.spec.domain.devices.interfaces {
            let bound = iface.binding.as_ref().is_some_and(|b| b.name == binding);
            if !bound || iface.state.as_deref() == Some("absent") {
                continue;
            }
            if !is_file_name_safe(&iface.name) {
                return Err(VmiError::BadInterfaceName(iface.name.clone()));
            }
            let network = self
                .spec
                .networks
                .iter()
                .find(|n| n.name == iface.name)
                .ok_or_else(|| VmiError::UnknownNetwork(iface.name.clone()))?;
            let pod = network
                .pod
                .clone()
                .ok_or_else(|| VmiError::NotPodNetwork(iface.name.clone()))?;
            nics.push(PodwireNic { iface, pod });
        }
        Ok(nics)
    }

    /// The guest's host name as KubeVirt hands it out: `spec.hostname`, else the VMI's name.
    pub fn hostname(&self) -> Option<&str> {
        let name = self
            .spec
            .hostname
            .as_deref()
            .filter(|h| !h.is_empty())
            .unwrap_or(&self.metadata.name);
        (!name.is_empty()).then_some(name)
    }
}

/// Interface names become socket file names: nothing that could climb out of the directory.
fn is_file_name_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

//! Domains shaped like the ones virt-launcher generates, for tests.
//!
//! virt-launcher marshals its domain with Go's encoding/xml: double-quoted attributes, every
//! element closed with an end tag (`<source></source>`), two-space indentation, the `qemu`
//! namespace declared on the root, user aliases `ua-<name>` on devices. Its converter emits an
//! interface only for core bindings and for plugins registered with `domainAttachmentType:
//! tap`; after virt-launcher's network setup such an interface also carries `<mtu>` and a
//! `<target dev="tap…" managed="no">`. Bridge and masquerade interfaces look alike in the
//! domain (both are taps); they differ in the pod, not here. This module writes such domains
//! from a short description, so tests meet the shape the hook meets in a cluster.

use std::fmt::Write as _;

/// How virt-launcher rendered one VMI interface.
#[derive(Debug, Clone)]
pub enum LauncherNic {
    /// A tap interface (masquerade, bridge, or a plugin with `domainAttachmentType: tap`).
    Tap {
        name: String,
        tap: String,
        mac: Option<String>,
        mtu: Option<u16>,
        pci: Option<String>,
        boot_order: Option<u32>,
    },
}

impl LauncherNic {
    pub fn tap(name: &str, tap: &str) -> Self {
        LauncherNic::Tap {
            name: name.into(),
            tap: tap.into(),
            mac: None,
            mtu: None,
            pci: None,
            boot_order: None,
        }
    }

    pub fn with_mac(mut self, m: &str) -> Self {
        let LauncherNic::Tap { mac, .. } = &mut self;
        *mac = Some(m.into());
        self
    }

    pub fn with_mtu(mut self, m: u16) -> Self {
        let LauncherNic::Tap { mtu, .. } = &mut self;
        *mtu = Some(m);
        self
    }

    pub fn with_pci(mut self, p: &str) -> Self {
        let LauncherNic::Tap { pci, .. } = &mut self;
        *pci = Some(p.into());
        self
    }

    pub fn with_boot_order(mut self, b: u32) -> Self {
        let LauncherNic::Tap { boot_order, .. } = &mut self;
        *boot_order = Some(b);
        self
    }

    fn render(&self, out: &mut String) {
        let LauncherNic::Tap {
            name,
            tap,
            mac,
            mtu,
            pci,
            boot_order,
        } = self;
        out.push_str("    <interface type=\"ethernet\">\n");
        out.push_str("      <source></source>\n");
        let _ = writeln!(out, "      <target dev=\"{tap}\" managed=\"no\"></target>");
        out.push_str("      <model type=\"virtio-non-transitional\"></model>\n");
        out.push_str("      <driver name=\"vhost\" queues=\"1\"></driver>\n");
        if let Some(mac) = mac {
            let _ = writeln!(out, "      <mac address=\"{mac}\"></mac>");
        }
        if let Some(mtu) = mtu {
            let _ = writeln!(out, "      <mtu size=\"{mtu}\"></mtu>");
        }
        if let Some(pci) = pci {
            let element = crate::domain::pci_address_element(name, pci).expect("fixture PCI");
            let _ = writeln!(out, "      {element}");
        }
        if let Some(order) = boot_order {
            let _ = writeln!(out, "      <boot order=\"{order}\"></boot>");
        }
        let _ = writeln!(out, "      <alias name=\"ua-{name}\"></alias>");
        if boot_order.is_none() {
            out.push_str("      <rom enabled=\"no\"></rom>\n");
        }
        out.push_str("    </interface>\n");
    }
}

/// A domain as virt-launcher defines it.
#[derive(Debug, Clone, Default)]
pub struct LauncherDomain {
    /// `<namespace>_<vmi name>`.
    pub name: String,
    pub memory_bytes: u64,
    /// A `<memoryBacking>` element (with its indentation and newline), e.g. for hugepages.
    pub memory_backing: Option<String>,
    pub nics: Vec<LauncherNic>,
}

impl LauncherDomain {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            memory_bytes: 134_217_728,
            ..Default::default()
        }
    }

    pub fn nic(mut self, nic: LauncherNic) -> Self {
        self.nics.push(nic);
        self
    }

    pub fn hugepages(mut self) -> Self {
        self.memory_backing = Some(
            "  <memoryBacking>\n    <hugepages>\n      <page size=\"2\" unit=\"M\"></page>\n    \
             </hugepages>\n  </memoryBacking>\n"
                .into(),
        );
        self
    }

    pub fn render(&self) -> String {
        let mut x = String::new();
        x.push_str(
            "<domain type=\"kvm\" xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\">\n",
        );
        let _ = writeln!(x, "  <name>{}</name>", self.name);
        x.push_str("  <uuid>2c9b3c1e-58a4-5c6e-9f0c-5b1c8d8f6a11</uuid>\n");
        let _ = writeln!(x, "  <memory unit=\"b\">{}</memory>", self.memory_bytes);
        if let Some(mb) = &self.memory_backing {
            x.push_str(mb);
        }
        x.push_str(
            "  <os>\n    <type arch=\"x86_64\" machine=\"q35\">hvm</type>\n    \
             <smbios mode=\"sysinfo\"></smbios>\n  </os>\n",
        );
        x.push_str(
            "  <sysinfo type=\"smbios\">\n    <system>\n      <entry name=\"uuid\">\
             2c9b3c1e-58a4-5c6e-9f0c-5b1c8d8f6a11</entry>\n      <entry name=\"manufacturer\">\
             KubeVirt</entry>\n    </system>\n    <bios></bios>\n    <baseBoard></baseBoard>\n    \
             <chassis></chassis>\n  </sysinfo>\n",
        );
        x.push_str("  <devices>\n");
        for nic in &self.nics {
            nic.render(&mut x);
        }
        x.push_str(
            "    <channel type=\"unix\">\n      <target name=\"org.qemu.guest_agent.0\" \
             type=\"virtio\"></target>\n    </channel>\n    <controller type=\"usb\" index=\"0\" \
             model=\"none\"></controller>\n    <controller type=\"virtio-serial\" index=\"0\" \
             model=\"virtio-non-transitional\"></controller>\n    <disk device=\"disk\" \
             type=\"file\" model=\"virtio-non-transitional\">\n      <source \
             file=\"/var/run/kubevirt-ephemeral-disks/disk-data/containerdisk/disk.qcow2\">\
             </source>\n      <target bus=\"virtio\" dev=\"vda\"></target>\n      <driver \
             cache=\"none\" error_policy=\"stop\" name=\"qemu\" type=\"qcow2\" \
             discard=\"unmap\"></driver>\n      <alias name=\"ua-containerdisk\"></alias>\n    \
             </disk>\n    <serial type=\"unix\">\n      <target port=\"0\"></target>\n      \
             <source mode=\"bind\" path=\"/var/run/kubevirt-private/vmi/virt-serial0\"></source>\n\
             \x20     <log file=\"/var/run/kubevirt-private/vmi/virt-serial0-log\" append=\"on\">\
             </log>\n    </serial>\n    <console type=\"pty\">\n      <target type=\"serial\" \
             port=\"0\"></target>\n    </console>\n",
        );
        x.push_str("  </devices>\n</domain>\n");
        x
    }
}

/// A VMI as JSON, in the shape virt-launcher passes it (only fields the binding reads, plus a
/// few it must ignore).
pub fn vmi_json(name: &str, namespace: &str, interfaces: &str, networks: &str) -> String {
    format!(
        r#"{{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",
"metadata":{{"name":"{name}","namespace":"{namespace}","uid":"0b9e9e46-5b0c-4c2b-9a43-b1b1a7c3f7d2"}},
"spec":{{"domain":{{"devices":{{"interfaces":[{interfaces}]}},"resources":{{"requests":{{"memory":"128Mi"}}}}}},
"networks":[{networks}]}},
"status":{{"phase":"Scheduled","interfaces":[{{"name":"default","podInterfaceName":"eth0"}}]}}}}"#
    )
}

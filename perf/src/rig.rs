//! One way to bring a test guest up, shared by the end-to-end tests and the benchmark.
//!
//! # Theory of operation
//!
//! Every end-to-end test and every benchmark session takes the same steps: the test guest
//! image (with some of this crate's tools added to its initramfs), a QEMU configuration that
//! names the guest and sets its NIC's properties, a boot, the guest's eth0 up and, mostly, a
//! DHCP lease with udhcpc. A [`GuestSpec`] says what differs between them; [`qemu_config`] and
//! [`start`] do the steps, [`boot_on`] all of them for a guest on a vhost-user socket. podwire
//! itself is started by [`podwire_in`] in the pod namespace.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::PodTopology;
use crate::{guest, overlay, util, GuestImage, Lease, Podwire, PodwireConfig, Qemu, QemuConfig};

/// Deadline of one console step of the bring-up (link up, the whole udhcpc run).
pub const STEP: Duration = Duration::from_secs(120);
/// DHCP discovers udhcpc sends before giving up.
const DHCP_TRIES: u32 = 10;

/// What differs between the guests of the tests and the benchmark.
#[derive(Debug, Clone, Copy)]
pub struct GuestSpec<'a> {
    /// QEMU's `-name`, also the name of its logs.
    pub name: &'a str,
    /// Properties of the guest's virtio-net device (`csum=off`, `host_mtu=65520`).
    pub nic_props: &'a [&'a str],
    /// Binaries added to the guest's initramfs: (path in the guest, path here).
    pub files: &'a [(&'a str, &'a Path)],
    /// Take a DHCP lease on eth0 once it is up.
    pub lease: bool,
}

impl<'a> GuestSpec<'a> {
    /// A guest called `name` with default NIC properties, no extra files, and a lease.
    pub fn new(name: &'a str) -> GuestSpec<'a> {
        GuestSpec {
            name,
            nic_props: &[],
            files: &[],
            lease: true,
        }
    }
}

/// The test guest's image, with `spec`'s files added to its initramfs (written into `work`).
pub fn image(spec: &GuestSpec, work: &Path) -> Result<GuestImage> {
    let mut image = guest::image().context("building the test guest")?;
    if !spec.files.is_empty() {
        let initrd = work.join(format!("initramfs-{}.img", spec.name));
        overlay::initrd_with(&image.initrd, spec.files, &initrd)
            .context("adding files to the guest's initramfs")?;
        image.initrd = initrd;
    }
    Ok(image)
}

/// A QEMU configuration of `image` for `spec`; the NIC's backend is the caller's to choose
/// (`vhost_user`, `nic`).
pub fn qemu_config(image: &GuestImage, spec: &GuestSpec) -> QemuConfig {
    spec.nic_props
        .iter()
        .fold(QemuConfig::new(image).name(spec.name), |cfg, prop| {
            cfg.nic_prop(prop)
        })
}

/// Boots `qcfg`, brings the guest's eth0 up and, if `lease`, takes a DHCP lease on it.
pub fn start(qcfg: &QemuConfig, lease: bool) -> Result<(Qemu, Option<Lease>)> {
    let mut vm = Qemu::boot(qcfg).context("booting the guest")?;
    let c = vm.console();
    c.run_ok("ip link set eth0 up", STEP)?;
    let lease = if lease {
        Some(guest::udhcpc(c, "eth0", DHCP_TRIES, STEP).context("DHCP in the guest")?)
    } else {
        None
    };
    Ok((vm, lease))
}

/// A guest for `spec` on the vhost-user socket `socket`, up (and leased, if asked).
pub fn boot_on(socket: &Path, spec: &GuestSpec, work: &Path) -> Result<(Qemu, Option<Lease>)> {
    let image = image(spec, work)?;
    start(&qemu_config(&image, spec).vhost_user(socket), spec.lease)
}

/// podwire in `topo`'s pod namespace, its socket in `dir`: `--guest-cidr guest_cidr` if given
/// (else [`PodwireConfig`]'s default, the pod's own address), then `extra` arguments.
pub fn podwire_in(
    topo: &PodTopology,
    dir: &util::TempDir,
    guest_cidr: Option<&str>,
    extra: &[&str],
) -> Result<Podwire> {
    let mut cfg = PodwireConfig::new(dir.join("vhost.sock"));
    if let Some(cidr) = guest_cidr {
        cfg.guest_cidr = Some(cidr.to_string());
    }
    cfg.extra_args = extra.iter().map(|s| s.to_string()).collect();
    Podwire::spawn(Some(&topo.pod), &cfg)
}

//! podwire's guest-VM test harness.
//!
//! - [`guest`]: the test guest image (Debian cloud kernel + busybox initramfs,
//!   built by `perf/guest/build-image.sh` into `perf/guest/out`), DHCP helper.
//! - [`qemu`]: runs the guest under QEMU/TCG with its NIC on a vhost-user
//!   socket (or a tap, or none) and its shell on the serial console.
//! - [`console`]: runs commands in the guest shell with deadlines and keeps a
//!   transcript.
//! - [`netns`]: network namespaces as test hosts, processes in them, the
//!   "Pod" topology (pod 198.18.0.2/24 via 198.18.0.1, far host 198.18.1.1).
//! - [`far`]: DNS, UDP/TCP echo and iperf3 on the far host.
//! - [`podwire`]: finding and running the podwire binary.
//! - [`libvirt`]: a private libvirtd in the pod namespace with podwire as its `passt`.
//! - [`frontend`]: a vhost-user frontend of our own (memfd memory, split rings, smoltcp as the
//!   guest stack) for request/response latency without a VM.
//! - [`rig`]: one guest bring-up (image, QEMU config, boot, link, lease) and podwire in the
//!   pod, shared by the end-to-end tests and the benchmark.
//!
//! Logs of every spawned process and every guest console go to
//! `target/podwire-perf/logs`. Set `PODWIRE_PERF_CONSOLE=1` to see guest
//! consoles live on stderr.

pub mod bench;
pub mod console;
pub mod far;
pub mod frontend;
pub mod guest;
pub mod libvirt;
pub mod netns;
pub mod overlay;
pub mod podwire;
pub mod qemu;
pub mod rig;
pub mod util;

pub use console::{CmdOutput, Console};
pub use guest::{GuestImage, Lease};
pub use netns::{Netns, PodTopology, Proc};
pub use podwire::{podwire_path, Podwire, PodwireConfig};
pub use qemu::{migrate, MigrationResult, Nic, Qemu, QemuConfig, Qmp};

//! A vhost-user frontend of our own: plays the part QEMU and a Linux guest's virtio-net driver
//! play together, without a VM, so that a backend's latency can be measured without TCG's noise.
//!
//! Theory of operation:
//!
//! - [`memory`]: the "guest RAM" is one memfd mapped shared here; guest-physical addresses start
//!   at 0 and SET_MEM_TABLE hands the fd to the backend (as QEMU does with
//!   `memory-backend-memfd,share=on`).
//! - [`ring`]: we are the driver of two split rings, RX (queue 0) and TX (queue 1): we write
//!   descriptors and the available ring, kick the backend's kick eventfd when its notification
//!   suppression says so, wait on the call eventfds and read the used rings.
//! - [`net`]: connects to the backend's socket with rust-vmm's `vhost` crate (its frontend side:
//!   message framing, fd passing and REPLY_ACK are its job), negotiates the virtio-net features a
//!   Linux guest would ask for ([`Features`]), sets up the rings in QEMU's order and moves
//!   Ethernet frames: every TX frame is the 12-byte `virtio_net_hdr_v1` (all zero: checksums are
//!   complete, no GSO) then the frame, in one descriptor; RX buffers are 4 KiB descriptors,
//!   merged by `num_buffers` when MRG_RXBUF is negotiated.
//! - [`phy`]: smoltcp's `phy::Device` over [`net::NetDriver`], so smoltcp is the guest's
//!   ARP/DHCP/IP/UDP/TCP stack.
//! - [`pingpong`]: request/response transactions (1 byte each way) over UDP and TCP through that
//!   stack, or through kernel sockets for the direct baseline, and their latency statistics.

pub mod memory;
pub mod net;
pub mod phy;
pub mod pingpong;
pub mod ring;

pub use net::{Features, NetDriver};

//! A virtio-net device driven over vhost-user: connection setup and frame I/O.
//!
//! Setup follows QEMU's order: GET_FEATURES, GET/SET_PROTOCOL_FEATURES (REPLY_ACK only),
//! SET_OWNER, SET_FEATURES, SET_MEM_TABLE, then per ring SET_VRING_NUM, SET_VRING_BASE,
//! SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL, and SET_VRING_ENABLE for both. RX buffers are
//! made available before the rings are enabled, as a guest driver fills its RX ring at probe.

use super::memory::SharedMemory;
use super::ring::{ring_bytes, SplitRing};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Duration;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// VHOST_USER_F_PROTOCOL_FEATURES.
const PROTOCOL_FEATURES: u64 = 1 << 30;
const RX: usize = 0;
const TX: usize = 1;
/// Bytes of one RX or TX buffer (one descriptor).
pub const BUF: u64 = 4096;
/// virtio_net_hdr_v1: with VERSION_1 or MRG_RXBUF the header has num_buffers.
const HDR_LEN: usize = 12;
/// The legacy header without num_buffers.
const HDR_LEN_LEGACY: usize = 10;

/// virtio-net features this frontend may ask for (the backend's offer is intersected with them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Features {
    Version1,
    MrgRxbuf,
    EventIdx,
    Csum,
    GuestCsum,
    GuestTso4,
    GuestTso6,
    HostTso4,
    HostTso6,
}

impl Features {
    /// What a Linux guest's virtio-net asks for that matters here (no TSO: 1-byte payloads).
    pub const LINUX_DEFAULT: [Features; 5] = [
        Features::Version1,
        Features::MrgRxbuf,
        Features::EventIdx,
        Features::Csum,
        Features::GuestCsum,
    ];

    pub fn bit(self) -> u64 {
        1u64 << match self {
            Features::Version1 => VIRTIO_F_VERSION_1,
            Features::MrgRxbuf => VIRTIO_NET_F_MRG_RXBUF,
            Features::EventIdx => VIRTIO_RING_F_EVENT_IDX,
            Features::Csum => VIRTIO_NET_F_CSUM,
            Features::GuestCsum => VIRTIO_NET_F_GUEST_CSUM,
            Features::GuestTso4 => VIRTIO_NET_F_GUEST_TSO4,
            Features::GuestTso6 => VIRTIO_NET_F_GUEST_TSO6,
            Features::HostTso4 => VIRTIO_NET_F_HOST_TSO4,
            Features::HostTso6 => VIRTIO_NET_F_HOST_TSO6,
        }
    }

    pub fn mask(list: &[Features]) -> u64 {
        list.iter().fold(0, |m, f| m | f.bit())
    }

    /// The features of `list` set in `bits`.
    pub fn in_mask(bits: u64) -> Vec<Features> {
        use clap::ValueEnum;
        Features::value_variants()
            .iter()
            .copied()
            .filter(|f| bits & f.bit() != 0)
            .collect()
    }
}

/// Counters of what crossed the rings.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct DriverStats {
    pub tx_frames: u64,
    pub rx_frames: u64,
    /// TX frames dropped because every TX descriptor was in flight.
    pub tx_ring_full: u64,
    pub kicks: u64,
    /// Kicks EVENT_IDX (or NO_NOTIFY) let us skip.
    pub kicks_suppressed: u64,
    /// Waits that ended with an interrupt (call eventfd readable).
    pub interrupts: u64,
    /// Waits that slept (poll on the call eventfds).
    pub sleeps: u64,
    /// Waits that returned at once because used elements were already there.
    pub waits_skipped: u64,
    /// RX frames that did not fit or were malformed.
    pub rx_errors: u64,
}

impl DriverStats {
    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &DriverStats) -> DriverStats {
        DriverStats {
            tx_frames: self.tx_frames - earlier.tx_frames,
            rx_frames: self.rx_frames - earlier.rx_frames,
            tx_ring_full: self.tx_ring_full - earlier.tx_ring_full,
            kicks: self.kicks - earlier.kicks,
            kicks_suppressed: self.kicks_suppressed - earlier.kicks_suppressed,
            interrupts: self.interrupts - earlier.interrupts,
            sleeps: self.sleeps - earlier.sleeps,
            waits_skipped: self.waits_skipped - earlier.waits_skipped,
            rx_errors: self.rx_errors - earlier.rx_errors,
        }
    }
}

/// The device: the connection, the memory, two rings and their eventfds.
pub struct NetDriver {
    // kept open: closing the socket ends the backend's session
    _frontend: Frontend,
    pub mem: SharedMemory,
    pub rx: RxSide,
    pub tx: TxSide,
    pub features: u64,
    pub stats: DriverStats,
}

#[derive(Debug)]
pub struct RxSide {
    ring: SplitRing,
    bufs: u64,
    kick: EventFd,
    call: EventFd,
    hdr_len: usize,
    mergeable: bool,
}

#[derive(Debug)]
pub struct TxSide {
    ring: SplitRing,
    bufs: u64,
    kick: EventFd,
    call: EventFd,
    hdr_len: usize,
    free: Vec<u16>,
}

impl NetDriver {
    /// Connects to the backend at `socket`, negotiates `wanted` ∩ offered, sets up rings of
    /// `queue_size` entries and fills the RX ring.
    pub fn connect(socket: &Path, wanted: &[Features], queue_size: u16) -> Result<NetDriver> {
        let mut fe = Frontend::connect(socket, 2)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let offered = fe.get_features().context("GET_FEATURES")?;
        let mut features = offered & Features::mask(wanted);
        if offered & PROTOCOL_FEATURES != 0 {
            features |= PROTOCOL_FEATURES;
            let pf = fe
                .get_protocol_features()
                .context("GET_PROTOCOL_FEATURES")?;
            fe.set_protocol_features(pf & VhostUserProtocolFeatures::REPLY_ACK)
                .context("SET_PROTOCOL_FEATURES")?;
        }
        fe.set_owner().context("SET_OWNER")?;
        fe.set_features(features).context("SET_FEATURES")?;

        let rb = ring_bytes(queue_size);
        let bufs = 2 * rb;
        let mem = SharedMemory::new((bufs + 2 * queue_size as u64 * BUF) as usize)?;
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: mem.len() as u64,
            userspace_addr: mem.host_addr(),
            mmap_offset: 0,
            mmap_handle: mem.fd(),
        }])
        .context("SET_MEM_TABLE")?;

        let event_idx = features & Features::EventIdx.bit() != 0;
        let mergeable = features & Features::MrgRxbuf.bit() != 0;
        let hdr_len = if mergeable || features & Features::Version1.bit() != 0 {
            HDR_LEN
        } else {
            HDR_LEN_LEGACY
        };
        let rx_ring = SplitRing::new(&mem, 0, queue_size, event_idx)?;
        let tx_ring = SplitRing::new(&mem, rb, queue_size, event_idx)?;
        let mut rx = RxSide {
            ring: rx_ring,
            bufs,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            hdr_len,
            mergeable,
        };
        let tx = TxSide {
            ring: tx_ring,
            bufs: bufs + queue_size as u64 * BUF,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            hdr_len,
            free: (0..queue_size).rev().collect(),
        };
        for (q, ring, kick, call) in [
            (RX, &rx.ring, &rx.kick, &rx.call),
            (TX, &tx.ring, &tx.kick, &tx.call),
        ] {
            fe.set_vring_num(q, queue_size).context("SET_VRING_NUM")?;
            fe.set_vring_base(q, 0).context("SET_VRING_BASE")?;
            fe.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: queue_size,
                    queue_size,
                    flags: 0,
                    // vhost-user ring addresses are the frontend's own virtual addresses
                    desc_table_addr: mem.host_addr() + ring.desc_addr(),
                    used_ring_addr: mem.host_addr() + ring.used_addr(),
                    avail_ring_addr: mem.host_addr() + ring.avail_addr(),
                    log_addr: None,
                },
            )
            .context("SET_VRING_ADDR")?;
            fe.set_vring_kick(q, kick).context("SET_VRING_KICK")?;
            fe.set_vring_call(q, call).context("SET_VRING_CALL")?;
        }
        for id in 0..queue_size {
            rx.repost(&mem, id)?;
        }
        rx.ring.publish(&mem)?;
        if features & PROTOCOL_FEATURES != 0 {
            fe.set_vring_enable(RX, true).context("SET_VRING_ENABLE")?;
            fe.set_vring_enable(TX, true).context("SET_VRING_ENABLE")?;
        }
        rx.kick.write(1)?;
        Ok(NetDriver {
            _frontend: fe,
            mem,
            rx,
            tx,
            features,
            stats: DriverStats::default(),
        })
    }

    /// The TX kick eventfd's number (the frontend's "request sent" mark in a syscall trace).
    pub fn tx_kick_fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.tx.kick)
    }

    /// The negotiated virtio-net features (without the vhost-user protocol bit).
    pub fn negotiated(&self) -> Vec<Features> {
        Features::in_mask(self.features)
    }

    /// Waits up to `timeout` for an interrupt on either ring (returns at once if used elements
    /// are already waiting); returns whether there is something to look at.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        // completed TX descriptors are taken back here, or they would count as "something
        // waiting" forever and the driver would spin instead of sleeping
        self.reclaim_tx()?;
        let rx_pending = self.rx.ring.enable_interrupts(&self.mem)?;
        let tx_pending = self.tx.ring.enable_interrupts(&self.mem)?;
        if rx_pending || tx_pending {
            self.stats.waits_skipped += 1;
            return Ok(true);
        }
        self.stats.sleeps += 1;
        let mut fds = [
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.rx.call),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.tx.call),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: poll(2) on two pollfds we own, for their length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e).context("poll on the call eventfds");
        }
        if fds[0].revents != 0 {
            let _ = self.rx.call.read();
        }
        if fds[1].revents != 0 {
            let _ = self.tx.call.read();
        }
        if n > 0 {
            self.stats.interrupts += 1;
        }
        Ok(n > 0)
    }

    /// Reclaims TX descriptors the backend has finished with.
    pub fn reclaim_tx(&mut self) -> Result<()> {
        while let Some((id, _)) = self.tx.ring.pop_used(&self.mem)? {
            self.tx.free.push(id);
        }
        Ok(())
    }

    /// Sends one Ethernet frame; Ok(false) if every TX descriptor is in flight (dropped).
    pub fn send(&mut self, frame: &[u8]) -> Result<bool> {
        self.reclaim_tx()?;
        let hdr = self.tx.hdr_len;
        if frame.len() + hdr > BUF as usize {
            bail!("a {} byte frame does not fit a TX buffer", frame.len());
        }
        let Some(id) = self.tx.free.pop() else {
            self.stats.tx_ring_full += 1;
            return Ok(false);
        };
        let addr = self.tx.bufs + id as u64 * BUF;
        self.mem.write(addr, &[0u8; HDR_LEN][..hdr])?;
        self.mem.write(addr + hdr as u64, frame)?;
        self.tx
            .ring
            .push(&self.mem, id, addr, (hdr + frame.len()) as u32, false)?;
        self.stats.tx_frames += 1;
        if self.tx.ring.publish(&self.mem)? {
            self.tx.kick.write(1)?;
            self.stats.kicks += 1;
        } else {
            self.stats.kicks_suppressed += 1;
        }
        Ok(true)
    }

    /// Receives one frame into `out` (cleared first); Ok(false) if none is waiting.
    pub fn recv(&mut self, out: &mut Vec<u8>) -> Result<bool> {
        out.clear();
        let Some((id, len)) = self.rx.ring.pop_used(&self.mem)? else {
            return Ok(false);
        };
        let hdr = self.rx.hdr_len;
        let mut bufs = 1u16;
        let first = self.rx.take(&self.mem, id, len, out);
        if let Ok(num_buffers) = first {
            if self.rx.mergeable {
                bufs = num_buffers.max(1);
            }
        }
        let mut ok = first.is_ok();
        for _ in 1..bufs {
            match self.rx.ring.pop_used(&self.mem)? {
                Some((id, len)) => ok &= self.rx.take(&self.mem, id, len, out).is_ok(),
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if self.rx.ring.publish(&self.mem)? {
            self.rx.kick.write(1)?;
        }
        if !ok || out.len() < hdr {
            self.stats.rx_errors += 1;
            out.clear();
            return Ok(true);
        }
        out.drain(..hdr);
        self.stats.rx_frames += 1;
        Ok(true)
    }
}

impl RxSide {
    /// Makes RX buffer `id` available again.
    fn repost(&mut self, mem: &SharedMemory, id: u16) -> Result<()> {
        let addr = self.bufs + id as u64 * BUF;
        self.ring.push(mem, id, addr, BUF as u32, true)
    }

    /// Appends the `len` bytes the backend wrote into buffer `id` to `out`, reposts the buffer
    /// and returns the header's num_buffers (meaningful in the first buffer of a frame).
    fn take(&mut self, mem: &SharedMemory, id: u16, len: u32, out: &mut Vec<u8>) -> Result<u16> {
        let addr = self.bufs + id as u64 * BUF;
        let len = (len as u64).min(BUF) as usize;
        let start = out.len();
        out.resize(start + len, 0);
        let r = mem.read(addr, &mut out[start..]);
        self.repost(mem, id)?;
        r?;
        let num_buffers = if start == 0 && len >= HDR_LEN {
            u16::from_le_bytes([out[10], out[11]])
        } else {
            1
        };
        Ok(num_buffers)
    }
}

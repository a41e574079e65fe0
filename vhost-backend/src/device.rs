//! The virtio-net device: one RX and one TX split ring served over vhost-user.
//!
//! # Theory of operation
//!
//! vhost-user-backend runs one worker thread that waits on the ring kicks and on one extra fd
//! that belongs to the [`NetHandler`] (podwire's switch: an epoll set of its sockets). Every
//! wake-up lands in [`NetDevice::handle_event`], which takes the handler lock once and then:
//!
//! - **TX kick**: pops every available chain, turns it into an [`SgList`] (host pointers into
//!   guest memory, nothing copied), strips the virtio-net header and gives the frame to the
//!   handler. Used entries are written as chains are consumed and the used index is published once
//!   per pass; notifications are re-enabled and the ring re-checked before sleeping, so a frame
//!   posted during the pass is never stranded.
//! - **RX kick** (the guest posted buffers) and **handler fd ready**: the handler is asked to
//!   produce frames; it calls [`RxSink::push`], which lends it guest RX buffers as an `SgList` so
//!   that socket data is received straight into guest memory.
//!
//! Frames towards the guest may span several RX chains (MRG_RXBUF). Their used entries are all
//! written before the used index moves, so the guest never sees half a frame; virtio-queue's
//! `add_used` would publish after every entry, which is why the used ring is written here.
//! Whether to interrupt the guest is decided once per pass, from EVENT_IDX's `used_event` or the
//! driver's `VRING_AVAIL_F_NO_INTERRUPT` flag.
//!
//! Every malformed chain (address outside guest memory, wrong direction, too many segments, too
//! long, too short, indirect) is returned to the guest with length 0, counted and logged once;
//! nothing on this path panics or allocates.
//!
//! **Bounded work.** No ring configuration keeps the worker from returning promptly: a ring is
//! used only when its three parts lie inside guest memory (and its avail ring is not at address
//! 0, which virtio-queue refuses to pop from while still reporting work); a chain is walked by
//! podwire itself and visits at most `MAX_CHAIN_DESCS` descriptors, empty ones included, with
//! no indirect tables (INDIRECT_DESC is not offered); a TX pass takes at most two rings' worth
//! of chains before it yields and kicks itself; an RX push re-checks an empty ring once.

use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackendMut, VringMutex, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_USO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
};
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::Bitmap;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryLoadGuard, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use podwire_frame::sg::SgError;
use podwire_frame::{
    one_of_batch, warn_once, GsoKind, NetHandler, PartialCsum, RxError, RxSink, SgList, TxOffload,
    MAX_FRAME_LEN, MAX_SEGS, RX_BATCH,
};

use crate::counters::{ChainError, DeviceCounters};
use crate::session::SessionInfo;
use crate::transfer::StateTransfer;
use crate::vnet::{config_space, VnetHdr};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const NUM_QUEUES: usize = 2;
/// Largest ring the device accepts.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Event id of the handler's fd in the worker's epoll set: ids 0..NUM_QUEUES are the rings and
/// NUM_QUEUES is the library's exit event.
pub const HANDLER_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Event id of the device's TX-interrupt timer ([`NetDevice::tx_timer_fd`]).
pub const TX_TIMER_EVENT: u16 = HANDLER_EVENT + 1;
pub use crate::vnet::VNET_HDR_LEN;
/// Frames shorter than this are padded on the way to the guest: some drivers expect it.
const MIN_FRAME_LEN: usize = 60;
/// Most chains one RX frame may span.
const MAX_RX_CHAINS: usize = MAX_SEGS;
/// How many rings' worth of chains one TX pass takes before it yields to the other events.
const TX_BUDGET_RINGS: usize = 2;

type Mem<B> = GuestMemoryMmap<B>;
type MemAtomic<B> = GuestMemoryAtomic<Mem<B>>;
type Vring<B> = VringMutex<MemAtomic<B>>;
/// What the rings lock: one ring's state over guest memory with dirty bitmap `B`.
type RingState<B> = vhost_user_backend::VringState<MemAtomic<B>>;

/// The dirty bitmap kept over guest memory. In podwire it is vhost-user-backend's
/// [`BitmapMmapRegion`], which sets bits in the log the frontend hands over with SET_LOG_BASE
/// (and does nothing before that); tests use vm-memory's `AtomicBitmap` to read back what was
/// marked.
pub trait LogBitmap: Bitmap + Send + Sync + 'static {}
impl<T: Bitmap + Send + Sync + 'static> LogBitmap for T {}

/// Segmentation of a frame to the guest (GUEST_TSO4/6).
#[derive(Debug, Clone, Copy)]
struct Gso {
    kind: GsoKind,
    mss: u16,
    hdr_len: u16,
}

/// Largest TCP payload podwire puts in one GSO frame: the IP packet stays under 64 KiB.
pub const TSO_MAX_PAYLOAD: usize = 65000;

/// What the device tells the guest about itself.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    pub mac: [u8; 6],
    pub mtu: u16,
}

/// The vhost-user backend for one frontend connection. Make a new one per connection: the
/// library never drains a used exit event.
pub struct NetDevice<H: NetHandler, B: LogBitmap = BitmapMmapRegion> {
    handler: Arc<Mutex<H>>,
    counters: Arc<DeviceCounters>,
    config: NetConfig,
    mem: Option<MemAtomic<B>>,
    acked_features: u64,
    event_idx: bool,
    exit: (EventConsumer, EventNotifier),
    /// The exit consumers handed to the library, which it leaks (see `exit_event`): closed
    /// when the device goes, after the last worker that waited on them.
    exit_handed_out: Mutex<Vec<RawFd>>,
    /// Live migration's device-state transfer in progress, if any.
    transfer: StateTransfer,
    /// Each ring's call fd when it was last seen running, `None` if it was not (see
    /// `kick_restarted_rings`).
    running: [Option<RawFd>; NUM_QUEUES],
    /// Published for the control socket and metrics (see `session.rs`).
    session: Arc<SessionInfo>,
    rings_published: bool,
    /// TX completion interrupts held back for a moment (see [`TxIrq`]).
    tx_irq: TxIrq,
}

impl<H: NetHandler, B: LogBitmap> NetDevice<H, B> {
    pub fn new(
        handler: Arc<Mutex<H>>,
        counters: Arc<DeviceCounters>,
        config: NetConfig,
    ) -> std::io::Result<Self> {
        Ok(NetDevice {
            handler,
            counters,
            config,
            mem: None,
            acked_features: 0,
            event_idx: false,
            exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK)?,
            exit_handed_out: Mutex::new(Vec::new()),
            transfer: StateTransfer::default(),
            running: [None; NUM_QUEUES],
            session: Arc::default(),
            rings_published: false,
            tx_irq: TxIrq::new()?,
        })
    }

    /// The fd of the timer that delivers held-back TX interrupts: the worker must wait on it
    /// with event id [`TX_TIMER_EVENT`] (vhost-backend's server registers it).
    pub fn tx_timer_fd(&self) -> RawFd {
        self.tx_irq.timer.as_raw_fd()
    }

    /// The TX timer expired: interrupt the guest for held-back completions it still waits for.
    fn tx_timer(&mut self, vrings: &[Vring<B>]) {
        self.tx_irq.timer_expired();
        let (Some(mem_atomic), Some(tx_vring)) = (self.mem.as_ref(), vrings.get(TX_QUEUE)) else {
            self.tx_irq.held = None;
            return;
        };
        let mem = mem_atomic.memory();
        let mut vring = tx_vring.get_mut();
        self.tx_irq
            .after_pass(&mem, &mut vring, self.event_idx, None, &self.counters);
    }

    /// Publishes the negotiated features and ring sizes to `session`.
    pub fn with_session(mut self, session: Arc<SessionInfo>) -> Self {
        self.session = session;
        self
    }

    /// A handle that stops the worker thread when notified.
    pub fn exit_notifier(&self) -> std::io::Result<EventNotifier> {
        self.exit.1.try_clone()
    }

    fn has(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }

    /// The frontend turned dirty logging on (it migrates the guest).
    fn logging(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::LOG_ALL.bits() != 0
    }

    fn hdr_len(&self) -> usize {
        if self.has(VIRTIO_F_VERSION_1) || self.has(VIRTIO_NET_F_MRG_RXBUF) {
            VNET_HDR_LEN
        } else {
            10
        }
    }

    /// Interrupts the guest once for every ring that (re)started since the last pass.
    ///
    /// A ring that starts with used entries already in it — on the destination of a live
    /// migration, or on the source when a migration failed — may owe the guest an interrupt:
    /// the source published them and wrote the call eventfd, but QEMU injects that interrupt
    /// from its main loop, which the migration stopped, and does not carry it over. With
    /// EVENT_IDX the driver would then wait for an interrupt that never comes (it re-arms
    /// `used_event` only when it runs), and the device would fill the RX ring and stall. One
    /// spurious interrupt is harmless: the driver looks, finds what is there, and re-arms.
    /// A new call fd on a running ring gets one too: an interrupt sent before it was set went
    /// nowhere.
    fn kick_restarted_rings(&mut self, vrings: &[Vring<B>]) {
        for (i, (running, vring)) in self.running.iter_mut().zip(vrings).enumerate() {
            let now = {
                let state = vring.get_ref();
                let call = state.get_call().as_ref().map(|c| c.as_raw_fd());
                (state.is_enabled() && state.get_queue().ready() && call.is_some())
                    .then_some(call.unwrap_or(-1))
            };
            if now.is_some() && now != *running {
                tracing::debug!("ring {i} started: interrupting the guest once");
                let _ = vring.signal_used_queue();
            }
            *running = now;
        }
    }

    fn process(&mut self, device_event: u16, vrings: &[Vring<B>]) {
        if self.mem.is_some() {
            self.kick_restarted_rings(vrings);
        }
        let (Some(mem_atomic), Some(rx_vring), Some(tx_vring)) = (
            self.mem.as_ref(),
            vrings.get(RX_QUEUE),
            vrings.get(TX_QUEUE),
        ) else {
            // No guest memory yet: the handler still drains its events (or its fd stays
            // readable and this thread spins), parking what it cannot deliver.
            lock(&self.handler).poll_host(&mut Unready);
            return;
        };
        let mem = mem_atomic.memory();
        let mut handler = lock(&self.handler);
        let mut rx = RxRing {
            vring: rx_vring.get_mut(),
            mem: &mem,
            hdr_len: self.hdr_len(),
            mergeable: self.has(VIRTIO_NET_F_MRG_RXBUF),
            guest_csum: self.has(VIRTIO_NET_F_GUEST_CSUM),
            guest_tso4: self.has(VIRTIO_NET_F_GUEST_CSUM) && self.has(VIRTIO_NET_F_GUEST_TSO4),
            guest_tso6: self.has(VIRTIO_NET_F_GUEST_CSUM) && self.has(VIRTIO_NET_F_GUEST_TSO6),
            event_idx: self.event_idx,
            counters: &self.counters,
            published_from: None,
            logging: self.logging(),
        };
        let tx_pass = match device_event as usize {
            TX_QUEUE => {
                let tx = TxRing {
                    vring: tx_vring.get_mut(),
                    mem: &mem,
                    hdr_len: self.hdr_len(),
                    csum: self.has(VIRTIO_NET_F_CSUM),
                    uso: self.has(VIRTIO_NET_F_HOST_USO),
                    counters: &self.counters,
                };
                tx.drain(&mut *handler, &mut rx)
            }
            // Guest RX buffers or handler readiness: either way the handler may now produce.
            _ => {
                handler.poll_host(&mut rx);
                None
            }
        };
        rx.finish();
        drop(handler);
        if tx_pass.is_some() || self.tx_irq.is_held() {
            let mut vring = tx_vring.get_mut();
            self.tx_irq
                .after_pass(&mem, &mut vring, self.event_idx, tx_pass, &self.counters);
        }
    }
}

impl<H: NetHandler, B: LogBitmap> VhostUserBackendMut for NetDevice<H, B> {
    type Bitmap = B;
    type Vring = Vring<B>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS)
            | (1 << VIRTIO_NET_F_MTU)
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_TSO6)
            // podwire never sets CWR on a GSO frame, so taking ECN costs nothing.
            | (1 << VIRTIO_NET_F_GUEST_ECN)
            // The guest may hand over TCP frames of up to 64 KiB: podwire terminates TCP, so a
            // big segment is just more payload for one sendmsg; nothing is resegmented. Its
            // ECN marks (CWR on a GSO frame) concern only its own connection state.
            | (1 << VIRTIO_NET_F_HOST_TSO4)
            | (1 << VIRTIO_NET_F_HOST_TSO6)
            | (1 << VIRTIO_NET_F_HOST_ECN)
            // UDP frames of many datagrams go out with one sendmsg and UDP_SEGMENT: the
            // kernel splits them (or hands them to the NIC whole).
            | (1 << VIRTIO_NET_F_HOST_USO)
            // Dirty logging for live migration: while the frontend has it on, every guest page
            // the device writes is marked in the log (see `mark_dirty`).
            | VhostUserVirtioFeatures::LOG_ALL.bits()
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        if features != self.acked_features {
            // The frontend may renegotiate at will: rate-limited.
            static LIMIT: podwire_frame::RateLimit = podwire_frame::RateLimit::new();
            if LIMIT.check().is_some() {
                tracing::info!(
                    event = "frontend_features",
                    features = %feature_names(features),
                    features_hex = %format_args!("{features:#x}"),
                    "guest negotiated {}",
                    feature_names(features)
                );
            }
        }
        self.acked_features = features;
        self.session.set_features(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // Only what the vhost crate implements for us end to end: any other message it answers
        // by closing the connection. QEMU ignores CONFIG for virtio-net (and says so once);
        // DPDK's virtio-user reads the MAC through it. One queue pair, so no MQ.
        // LOG_SHMFD: the log arrives as shared memory (SET_LOG_BASE), which vhost-user-backend
        // maps and installs as each region's bitmap.
        VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::LOG_SHMFD
            // The handler's state travels in QEMU's migration stream (see transfer.rs).
            | VhostUserProtocolFeatures::DEVICE_STATE
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = config_space(self.config.mac, self.config.mtu);
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        cfg[start..end].to_vec()
    }

    fn update_memory(&mut self, mem: MemAtomic<B>) -> std::io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    /// vhost-user-backend 0.24 registers the consumer in its worker's epoll set with
    /// `into_raw_fd()` and never closes it: one eventfd per session would leak (issue 10's
    /// reconnect soak). The device keeps the number of every consumer it hands out and closes
    /// them when it is dropped, which is after the library's workers and their epoll sets
    /// (they hold the device) are gone. `session_fds.rs` checks that a session leaves no
    /// descriptor behind, so a library that closes it itself would show there first.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let notifier = self.exit.1.try_clone().ok()?;
        let consumer = self.exit.0.try_clone().ok()?;
        lock(&self.exit_handed_out).push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn set_device_state_fd(
        &mut self,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        file: std::fs::File,
    ) -> std::io::Result<Option<std::fs::File>> {
        self.transfer
            .start(&self.handler, direction, phase, file)
            .map(|()| None)
    }

    fn check_device_state(&self) -> std::io::Result<()> {
        self.transfer.check(&self.handler)
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring<B>],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        if usize::from(device_event) < NUM_QUEUES {
            self.counters.kicks.inc();
        }
        if device_event == TX_TIMER_EVENT {
            self.tx_timer(vrings);
            return Ok(());
        }
        if !self.rings_published {
            // Sizes are fixed once the rings run, which they do by the first event.
            let size = |i: usize| {
                vrings
                    .get(i)
                    .map_or(0, |v| u32::from(v.get_ref().get_queue().size()))
            };
            self.session.set_rings(size(RX_QUEUE), size(TX_QUEUE));
            self.rings_published = true;
        }
        // Never return an error: the library would end the worker thread, and with it the NIC.
        self.process(device_event, vrings);
        Ok(())
    }
}

impl<H: NetHandler, B: LogBitmap> Drop for NetDevice<H, B> {
    fn drop(&mut self) {
        for fd in lock(&self.exit_handed_out).drain(..) {
            // SAFETY: `fd` is an exit consumer handed to the library in `exit_event`, which
            // turned it into a raw fd it never closes; nothing else owns it, and the device —
            // held by every worker that could still wait on it — is going.
            drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// The offered features the guest took, by name, for the log and the status.
pub fn feature_names(features: u64) -> String {
    let names = [
        (VIRTIO_F_VERSION_1, "VERSION_1"),
        (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
        (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
        (VIRTIO_NET_F_CSUM, "CSUM"),
        (VIRTIO_NET_F_GUEST_CSUM, "GUEST_CSUM"),
        (VIRTIO_NET_F_GUEST_TSO4, "GUEST_TSO4"),
        (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
        (VIRTIO_NET_F_GUEST_TSO6, "GUEST_TSO6"),
        (VIRTIO_NET_F_HOST_TSO6, "HOST_TSO6"),
        (VIRTIO_NET_F_GUEST_ECN, "GUEST_ECN"),
        (VIRTIO_NET_F_HOST_ECN, "HOST_ECN"),
        (VIRTIO_NET_F_HOST_USO, "HOST_USO"),
        (VIRTIO_NET_F_MAC, "MAC"),
        (VIRTIO_NET_F_STATUS, "STATUS"),
        (VIRTIO_NET_F_MTU, "MTU"),
        (
            VhostUserVirtioFeatures::LOG_ALL.bits().trailing_zeros(),
            "LOG_ALL",
        ),
    ];
    names
        .iter()
        .filter(|(bit, _)| features & (1u64 << bit) != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(" ")
}

fn lock<H>(m: &Mutex<H>) -> std::sync::MutexGuard<'_, H> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The RX side before the frontend has given us guest memory.
struct Unready;

impl RxSink for Unready {
    fn push(
        &mut self,
        _max_len: usize,
        _fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        Err(RxError::NotReady)
    }
}

/// Most descriptors one chain may have, empty ones included: the work one chain costs is
/// bounded by this, not by the ring size or by lengths the guest chooses.
pub const MAX_CHAIN_DESCS: usize = MAX_SEGS;

/// Maps the chain starting at descriptor `head` into `sg`; `writable` is the direction every
/// descriptor must have.
///
/// The walk is podwire's own rather than virtio-queue's `DescriptorChain`, which follows
/// indirect tables (of up to 65,535 entries) whether or not INDIRECT_DESC was negotiated and
/// bounds a chain only by the table size. Here a chain visits at most [`MAX_CHAIN_DESCS`]
/// descriptors, an indirect descriptor is refused (the feature is never offered), and a loop is
/// told from a long chain with a bitmap of the descriptors already visited.
fn map_chain<'m, B: LogBitmap>(
    mem: &'m Mem<B>,
    q: &Queue,
    head: u16,
    writable: bool,
    max_len: usize,
    sg: &mut SgList<'m>,
) -> Result<(), ChainError> {
    let table = GuestAddress(q.desc_table());
    let size = q.size();
    let mut visited = [0u64; MAX_QUEUE_SIZE / 64];
    let mut index = head;
    // The first mapping error; the walk goes on (descriptors only, within the same bound) so
    // that a loop or a dangling `next` is named for what it is.
    let mut first_error = None;
    for _ in 0..MAX_CHAIN_DESCS {
        let slot = usize::from(index);
        if index >= size || slot >= MAX_QUEUE_SIZE {
            return Err(ChainError::Broken(
                "a next index outside the descriptor table",
            ));
        }
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if visited[word] & bit != 0 {
            return Err(ChainError::Broken("a loop"));
        }
        visited[word] |= bit;
        let desc: Descriptor = table
            .checked_add(16 * u64::from(index))
            .and_then(|addr| mem.read_obj(addr).ok())
            .ok_or(ChainError::Broken("an unreadable descriptor"))?;
        if desc.refers_to_indirect_table() {
            return Err(ChainError::Broken("an indirect descriptor"));
        }
        if first_error.is_none() {
            first_error = map_descriptor(mem, desc, writable, max_len, sg).err();
        }
        if !desc.has_next() {
            return first_error.map_or(Ok(()), Err);
        }
        index = desc.next();
    }
    Err(first_error.unwrap_or(ChainError::TooManySegments))
}

/// Appends one descriptor's buffer to `sg`.
fn map_descriptor<'m, B: LogBitmap>(
    mem: &'m Mem<B>,
    desc: Descriptor,
    writable: bool,
    max_len: usize,
    sg: &mut SgList<'m>,
) -> Result<(), ChainError> {
    if desc.is_write_only() != writable {
        return Err(ChainError::BadDirection);
    }
    let mut len = desc.len() as usize;
    if sg.len().saturating_add(len) > max_len {
        if !writable {
            return Err(ChainError::TooLong);
        }
        // An RX buffer bigger than any frame is still a good buffer: lend what a frame can fill
        // and leave the rest alone.
        len = max_len - sg.len();
    }
    if let Some(ptr) = host_range(mem, desc.addr(), len) {
        // SAFETY: ptr..ptr+len is inside one region of `mem`, borrowed for 'm.
        return unsafe { sg.push_raw(ptr, len) }
            .map_err(|SgError::TooManySegments| ChainError::TooManySegments);
    }
    for slice in mem.get_slices(desc.addr(), len) {
        let slice = slice.map_err(|_| ChainError::BadAddress)?;
        // The pointer stays valid while `mem` (a snapshot of the memory map) is borrowed:
        // GuestMemoryMmap regions are mapped for their whole lifetime (no Xen-style transient
        // mappings here), so the guard is not needed beyond this point.
        let ptr = slice.ptr_guard_mut().as_ptr();
        // SAFETY: ptr..ptr+len is inside a region of `mem`, borrowed for 'm.
        unsafe { sg.push_raw(ptr, slice.len()) }
            .map_err(|SgError::TooManySegments| ChainError::TooManySegments)?;
    }
    Ok(())
}

/// The host address of guest range `addr..addr+len` when it lies inside one region: the common
/// case, found with one region lookup (vm-memory's slice iterator, the general path, costs
/// several per buffer, which showed in the bulk paths' profiles).
fn host_range<B: LogBitmap>(mem: &Mem<B>, addr: GuestAddress, len: usize) -> Option<*mut u8> {
    let region = mem.find_region(addr)?;
    let offset = addr.checked_offset_from(region.start_addr())?;
    let end = offset.checked_add(len as u64)?;
    if end > region.len() {
        return None;
    }
    region.get_host_address(MemoryRegionAddress(offset)).ok()
}

/// Whether a ring can be used at all: ready, of a size the device accepts, and with its
/// descriptor table, avail ring (with `used_event`) and used ring (with `avail_event`) inside
/// guest memory. virtio-queue pops nothing from a ring whose avail ring is at guest address 0
/// while `enable_notification` still reports work, so that address is refused as well.
fn ring_usable<B: LogBitmap>(mem: &Mem<B>, q: &Queue) -> bool {
    let size = u64::from(q.size());
    let usable = q.ready()
        && size != 0
        && size <= MAX_QUEUE_SIZE as u64
        && q.avail_ring() != 0
        && mem.check_range(GuestAddress(q.desc_table()), (16 * size) as usize)
        && mem.check_range(GuestAddress(q.avail_ring()), (6 + 2 * size) as usize)
        && mem.check_range(GuestAddress(q.used_ring()), (6 + 8 * size) as usize);
    if !usable {
        warn_once!("guest configured a ring outside its memory or at address 0; not using it");
    }
    usable
}

/// Whether the driver's avail index is at most one ring ahead of ours. virtio-queue pops nothing
/// from a ring where it is not (the driver is broken) while `enable_notification` keeps reporting
/// more work: without this check a pass would never end.
fn avail_idx_sane<B: LogBitmap>(mem: &Mem<B>, q: &Queue) -> bool {
    let sane = q
        .avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|idx| (idx - Wrapping(q.next_avail())).0 <= q.size());
    if !sane {
        warn_once!(
            "guest's avail index is more than a ring ahead; ignoring the ring until it is not"
        );
    }
    sane
}

/// Writes one used element without publishing it.
fn write_used<B: LogBitmap>(
    mem: &Mem<B>,
    q: &Queue,
    pos: Wrapping<u16>,
    head: u16,
    len: u32,
) -> bool {
    let size = q.size();
    if size == 0 {
        return false;
    }
    let slot = u64::from(pos.0 % size);
    let addr = GuestAddress(q.used_ring()).checked_add(4 + slot * 8);
    let Some(addr) = addr else { return false };
    let mut elem = [0u8; 8];
    elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
    elem[4..].copy_from_slice(&len.to_le_bytes());
    mem.write_slice(&elem, addr).is_ok()
}

/// Makes used entries up to `next_used` visible to the guest.
fn publish_used<B: LogBitmap>(mem: &Mem<B>, q: &mut Queue, next_used: Wrapping<u16>) {
    q.set_next_used(next_used.0);
    if let Some(idx_addr) = GuestAddress(q.used_ring()).checked_add(2) {
        // Release: the entries written above are visible before the index that announces them.
        let _ = mem.store(next_used.0.to_le(), idx_addr, Ordering::Release);
    }
}

/// Whether the guest wants an interrupt for used entries `old..new` (virtio 1.2, 2.7.10).
fn guest_wants_interrupt<B: LogBitmap>(
    mem: &Mem<B>,
    q: &Queue,
    event_idx: bool,
    old: Wrapping<u16>,
    new: Wrapping<u16>,
) -> bool {
    if old == new {
        return false;
    }
    // The used index store must be visible before we read the driver's suppression state.
    fence(Ordering::SeqCst);
    let avail = GuestAddress(q.avail_ring());
    if event_idx {
        let Some(addr) = avail.checked_add(4 + 2 * u64::from(q.size())) else {
            return true;
        };
        let used_event = match mem.load::<u16>(addr, Ordering::Acquire) {
            Ok(v) => Wrapping(u16::from_le(v)),
            Err(_) => return true,
        };
        (new - used_event - Wrapping(1)) < (new - old)
    } else {
        match mem.load::<u16>(avail, Ordering::Acquire) {
            Ok(flags) => u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0,
            Err(_) => true,
        }
    }
}

/// Marks the first `len` bytes of `segs` dirty in guest memory's log, when `logging`.
///
/// RX data reaches guest memory through raw host pointers (recvmsg into an [`SgList`]), which
/// vm-memory cannot see, so the device marks it itself. Two marks per buffer, and why the order
/// is safe: the frontend syncs the log concurrently — it takes and clears the bits, then copies
/// those pages — so a mark only protects writes made BEFORE it. The buffers are therefore
/// marked whole before they are lent (nothing is written into a page that is not yet marked)
/// and what was written is marked again after the write and before the used index that hands
/// it to the guest is published. A sync that clears the first mark before the data lands is
/// followed by the second one; the final sync happens after GET_VRING_BASE stopped the ring,
/// which waits for this pass (it holds the ring lock), so no write can follow it unmarked. The
/// used ring itself is written through vm-memory, which marks it after each write.
fn mark_dirty<B: LogBitmap>(mem: &Mem<B>, logging: bool, segs: &[libc::iovec], mut len: usize) {
    if !logging {
        return;
    }
    for seg in segs {
        if len == 0 {
            break;
        }
        let n = seg.iov_len.min(len);
        len -= n;
        // Each segment lies inside one region: `map_chain` splits at region boundaries.
        let ptr = seg.iov_base as usize;
        for region in mem.iter() {
            let Ok(base) = region.get_host_address(MemoryRegionAddress(0)) else {
                continue;
            };
            let offset = ptr.wrapping_sub(base as usize);
            if (offset as u64) < region.len() {
                region.bitmap().mark_dirty(offset, n);
                break;
            }
        }
    }
}

fn count_chain_error(counters: &DeviceCounters, e: ChainError, rx: bool) {
    if rx {
        counters.rx_bad_chain.inc();
        warn_once!("guest posted a malformed RX descriptor chain: {e}");
    } else {
        e.counter(counters).inc();
        warn_once!("guest sent a malformed TX descriptor chain: {e}");
    }
}

/// What one TX pass returned to the guest.
#[derive(Debug, Clone, Copy)]
struct TxPass {
    /// The used index before the pass.
    start: Wrapping<u16>,
    /// Bytes of the chains it took (virtio-net headers included).
    bytes: usize,
}

/// Most completed TX chains an interrupt is held back for.
const TX_HOLD_MAX_CHAINS: u16 = 2;
/// Most bytes (in those chains) an interrupt is held back for: a request, not bulk data, whose
/// sender may wait for its buffers back (TCP small queues count them until they are freed).
const TX_HOLD_MAX_BYTES: usize = 4096;
/// Longest a TX interrupt is held back.
const TX_HOLD_MAX: std::time::Duration = std::time::Duration::from_millis(1);

/// A TX interrupt held back: completions from `from` on, since `since`.
#[derive(Debug, Clone, Copy)]
struct HeldTxIrq {
    from: Wrapping<u16>,
    since: std::time::Instant,
    bytes: usize,
}

/// TX completion interrupts, held back for a moment when a request is likely to be answered.
///
/// A guest that sends a request and waits for the answer asks (EVENT_IDX `used_event`) for an
/// interrupt when its frame is done (Linux's `napi_tx` does), and then another comes with the
/// answer some tens of µs later: two wake-ups of the guest per transaction where one would do
/// (measured with podwire-pingpong: docs/perf.md). So when a TX pass completed at most
/// [`TX_HOLD_MAX_CHAINS`] chains of at most [`TX_HOLD_MAX_BYTES`] and the guest had taken back
/// everything before them (`used_event` is the pass's first used index, so it cannot be short
/// of TX buffers), the interrupt is held. It is looked at again at the end of every later pass
/// (TX, RX or the handler's) and when the timer fires [`TX_HOLD_MAX`] after it was held, and
/// each time the guest's `used_event` is read again: a guest that has taken the buffers back
/// meanwhile — Linux's RX poll cleans the TX ring too, so the answer's interrupt does it — and
/// moved `used_event` past them is not interrupted for them at all. A held interrupt still
/// wanted goes out once the next pass cannot be held with it, or when it is due. Without
/// EVENT_IDX nothing is held. The timer is armed only when it is not already, and never
/// disarmed: a wake-up for nothing every [`TX_HOLD_MAX`] is cheaper than a system call per
/// transaction.
struct TxIrq {
    timer: vmm_sys_util::timerfd::TimerFd,
    armed: bool,
    held: Option<HeldTxIrq>,
}

impl TxIrq {
    fn new() -> std::io::Result<TxIrq> {
        // SAFETY: timerfd_create has no memory preconditions; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh timerfd that nothing else owns.
        let timer = unsafe { vmm_sys_util::timerfd::TimerFd::from_raw_fd(fd) };
        Ok(TxIrq {
            timer,
            armed: false,
            held: None,
        })
    }

    fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Consumes the timer's expiry.
    fn timer_expired(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `buf` from the timerfd we own; non-blocking.
        let _ = unsafe { libc::read(self.timer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        self.armed = false;
    }

    /// Decides, after a pass (`pass`: what a TX pass used, if this was one), whether the guest
    /// is interrupted for TX completions now, later or not at all.
    fn after_pass<B: LogBitmap, G>(
        &mut self,
        mem: &Mem<B>,
        vring: &mut G,
        event_idx: bool,
        pass: Option<TxPass>,
        counters: &DeviceCounters,
    ) where
        G: std::ops::DerefMut<Target = RingState<B>>,
    {
        let q = vring.get_queue();
        let used = Wrapping(q.next_used());
        if !vring.is_enabled() || !ring_usable(mem, q) {
            self.held = None;
            return;
        }
        // What was held first, on its own: a guest that has taken those buffers back since
        // (and moved `used_event` past them) no longer wants to hear of them.
        let held = self.held.take().filter(|h| {
            let end = pass.map_or(used, |p| p.start);
            let wanted = guest_wants_interrupt(mem, q, event_idx, h.from, end);
            if !wanted {
                counters.tx_irq_unneeded.inc();
            }
            wanted
        });
        let Some(from) = held.map(|h| h.from).or(pass.map(|p| p.start)) else {
            return;
        };
        if !guest_wants_interrupt(mem, q, event_idx, from, used) {
            return;
        }
        let now = std::time::Instant::now();
        let since = held.map_or(now, |h| h.since);
        let bytes = held.map_or(0, |h| h.bytes) + pass.map_or(0, |p| p.bytes);
        let holdable = event_idx
            && (used - from).0 <= TX_HOLD_MAX_CHAINS
            && bytes <= TX_HOLD_MAX_BYTES
            && used_event(mem, q) == Some(from)
            && now.duration_since(since) < TX_HOLD_MAX;
        if holdable {
            if held.is_none() {
                counters.tx_irq_held.inc();
            }
            self.held = Some(HeldTxIrq { from, since, bytes });
            if !self.armed {
                let left = TX_HOLD_MAX.saturating_sub(now.duration_since(since));
                self.armed = self
                    .timer
                    .reset(left.max(std::time::Duration::from_micros(1)), None)
                    .is_ok();
            }
            return;
        }
        counters.interrupts.inc();
        let _ = vring.signal_used_queue();
    }
}

/// The driver's `used_event` (EVENT_IDX), if it can be read.
fn used_event<B: LogBitmap>(mem: &Mem<B>, q: &Queue) -> Option<Wrapping<u16>> {
    let addr = GuestAddress(q.avail_ring()).checked_add(4 + 2 * u64::from(q.size()))?;
    let v = mem.load::<u16>(addr, Ordering::Acquire).ok()?;
    Some(Wrapping(u16::from_le(v)))
}

struct TxRing<'a, B: LogBitmap, G: std::ops::DerefMut<Target = RingState<B>>> {
    vring: G,
    mem: &'a Mem<B>,
    hdr_len: usize,
    /// The guest negotiated CSUM: its frames may carry partial checksums.
    csum: bool,
    /// The guest negotiated HOST_USO: its UDP frames may carry many datagrams.
    uso: bool,
    counters: &'a DeviceCounters,
}

impl<B: LogBitmap, G> TxRing<'_, B, G>
where
    G: std::ops::DerefMut<Target = RingState<B>>,
{
    /// Takes every chain the guest posted (within the budget) and returns what the pass used;
    /// whether the guest hears of it is decided by [`TxIrq::after_pass`].
    fn drain<H: NetHandler>(mut self, handler: &mut H, rx: &mut dyn RxSink) -> Option<TxPass> {
        let mem = self.mem;
        if !ring_usable(mem, self.vring.get_queue()) {
            return None;
        }
        let start = Wrapping(self.vring.get_queue().next_used());
        let mut used = start;
        let mut bytes = 0;
        // A guest that keeps posting could hold this thread (and the ring locks that vhost-user
        // requests need) for as long as it likes: after this many chains the pass yields, and
        // a kick of its own brings the worker back once the other events have had their turn.
        let mut budget = TX_BUDGET_RINGS * usize::from(self.vring.get_queue().size());
        loop {
            while budget > 0 {
                let Some(chain) = self.vring.get_queue_mut().pop_descriptor_chain(mem) else {
                    break;
                };
                budget -= 1;
                let head = chain.head_index();
                bytes += self.forward(head, handler, rx);
                let q = self.vring.get_queue();
                if write_used(mem, q, used, head, 0) {
                    used += Wrapping(1);
                }
            }
            // Before the used entries are published: until then the guest cannot reuse these
            // buffers, so the handler may still be holding pointers into them.
            handler.tx_batch_done(rx);
            publish_used(mem, self.vring.get_queue_mut(), used);
            if budget == 0 {
                self.kick_self();
                break;
            }
            // Re-arm kicks, then look again: a frame posted meanwhile must not wait for the next.
            // Every lap pops at least one chain or ends, so this loop ends within the budget.
            match self.vring.get_queue_mut().enable_notification(mem) {
                Ok(true) if avail_idx_sane(mem, self.vring.get_queue()) => budget -= 1,
                _ => break,
            }
        }
        Some(TxPass { start, bytes })
    }

    /// Maps one chain and hands its frame to the handler (or counts why not); returns the
    /// chain's length in bytes (0 when it was refused).
    fn forward<H: NetHandler>(&mut self, head: u16, handler: &mut H, rx: &mut dyn RxSink) -> usize {
        let mut sg = SgList::new();
        let q = self.vring.get_queue();
        match map_chain(
            self.mem,
            q,
            head,
            false,
            MAX_FRAME_LEN + self.hdr_len,
            &mut sg,
        ) {
            Ok(()) if sg.len() < self.hdr_len + 14 => {
                ChainError::TooShort.counter(self.counters).inc();
                warn_once!("guest sent a frame shorter than an Ethernet header");
                0
            }
            Ok(()) => {
                let chain_len = sg.len();
                let mut bytes = [0u8; VNET_HDR_LEN];
                sg.read(0, &mut bytes[..self.hdr_len]);
                let hdr = VnetHdr::parse(&bytes);
                let tx = TxOffload {
                    partial_csum: self.csum && hdr.csum.is_some(),
                    udp_segment: (self.uso
                        && u32::from(hdr.gso_type) == VIRTIO_NET_HDR_GSO_UDP_L4
                        && hdr.gso_size > 0)
                        .then_some(hdr.gso_size),
                };
                sg.advance(self.hdr_len);
                self.counters.tx_frames.inc();
                self.counters.tx_bytes.add(sg.len() as u64);
                handler.guest_frame_with(&sg, tx, rx);
                chain_len
            }
            Err(e) => {
                count_chain_error(self.counters, e, false);
                0
            }
        }
    }

    /// Wakes the worker again for this ring, as a guest kick would.
    fn kick_self(&self) {
        let Some(kick) = self.vring.get_kick().as_ref() else {
            return;
        };
        let Ok(dup) = kick.try_clone() else {
            return;
        };
        // SAFETY: `dup` is a fresh duplicate of the kick eventfd, owned by nobody else; the
        // notifier takes it over and closes it when dropped.
        let notifier = unsafe { EventNotifier::from_raw_fd(dup.into_raw_fd()) };
        let _ = notifier.notify();
    }
}

struct RxRing<'a, B: LogBitmap, G: std::ops::DerefMut<Target = RingState<B>>> {
    vring: G,
    mem: &'a GuestMemoryLoadGuard<Mem<B>>,
    hdr_len: usize,
    mergeable: bool,
    /// The guest negotiated GUEST_CSUM: frames to it may carry partial checksums.
    guest_csum: bool,
    /// The guest negotiated GUEST_TSO4 (with GUEST_CSUM): it takes TCPv4 GSO frames.
    guest_tso4: bool,
    /// The same for GUEST_TSO6 and TCPv6.
    guest_tso6: bool,
    event_idx: bool,
    counters: &'a DeviceCounters,
    /// The used index when this pass first published, for the interrupt decision.
    published_from: Option<Wrapping<u16>>,
    /// Dirty logging is on: every byte written into an RX buffer is marked (see `mark_dirty`).
    logging: bool,
}

impl<B: LogBitmap, G> RxRing<'_, B, G>
where
    G: std::ops::DerefMut<Target = RingState<B>>,
{
    fn finish(self) {
        let Some(start) = self.published_from else {
            return;
        };
        let q = self.vring.get_queue();
        let now = Wrapping(q.next_used());
        if guest_wants_interrupt(self.mem, q, self.event_idx, start, now) {
            self.counters.interrupts.inc();
            let _ = self.vring.signal_used_queue();
        }
    }

    /// Marks the RX ring empty: ask for a kick when the guest adds buffers. Returns true if some
    /// arrived in the meantime.
    fn rearm(&mut self) -> bool {
        let mem: &Mem<B> = self.mem;
        let q = self.vring.get_queue_mut();
        matches!(q.enable_notification(mem), Ok(true)) && avail_idx_sane(mem, q)
    }
}

impl<B: LogBitmap, G> RxSink for RxRing<'_, B, G>
where
    G: std::ops::DerefMut<Target = RingState<B>>,
{
    fn push(
        &mut self,
        max_len: usize,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        self.push_frame(max_len, None, None, fill)
    }

    fn partial_csum(&self) -> bool {
        self.guest_csum
    }

    fn push_partial(
        &mut self,
        max_len: usize,
        csum: PartialCsum,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        let csum = self.guest_csum.then_some(csum);
        self.push_frame(max_len, csum, None, fill)
    }

    fn tso_max(&self, kind: GsoKind) -> usize {
        if self.takes(kind) {
            TSO_MAX_PAYLOAD
        } else {
            0
        }
    }

    fn push_tso(
        &mut self,
        max_len: usize,
        csum: PartialCsum,
        kind: GsoKind,
        mss: u16,
        hdr_len: u16,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        if !self.takes(kind) {
            return self.push_partial(max_len, csum, fill);
        }
        let gso = Gso { kind, mss, hdr_len };
        self.push_frame(max_len, Some(csum), Some(gso), fill)
    }

    fn push_batch(
        &mut self,
        count: usize,
        max_len: usize,
        csum: Option<PartialCsum>,
        fill: &mut dyn FnMut(&mut [SgList<'_>], &mut [usize]) -> usize,
    ) -> Result<usize, RxError> {
        let csum = csum.filter(|_| self.guest_csum);
        self.push_frames(count.clamp(1, RX_BATCH), max_len, csum, fill)
    }
}

impl<B: LogBitmap, G> RxRing<'_, B, G>
where
    G: std::ops::DerefMut<Target = RingState<B>>,
{
    fn takes(&self, kind: GsoKind) -> bool {
        match kind {
            GsoKind::Tcpv4 => self.guest_tso4,
            GsoKind::Tcpv6 => self.guest_tso6,
        }
    }

    fn push_frame(
        &mut self,
        max_len: usize,
        csum: Option<PartialCsum>,
        gso: Option<Gso>,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        let mem: &Mem<B> = self.mem;
        // A started but disabled ring (SET_VRING_ENABLE 0) must not be given new RX frames.
        let q = self.vring.get_queue();
        if !self.vring.is_enabled() || !ring_usable(mem, q) {
            return Err(RxError::NotReady);
        }
        let need = self.hdr_len + max_len.max(MIN_FRAME_LEN);
        let first_avail = self.vring.get_queue().next_avail();
        let mut heads = [(0u16, 0u32); MAX_RX_CHAINS];
        let mut nchains = 0;
        let mut sg = SgList::new();
        let mut poisoned = false;
        // Buffers posted while notifications were off are looked for once; a second empty pop
        // ends the frame (it never ends otherwise if the ring claims chains it cannot yield).
        let mut rearmed = false;
        while sg.len() < need && nchains < MAX_RX_CHAINS {
            let chain = match self.vring.get_queue_mut().pop_descriptor_chain(mem) {
                Some(c) => c,
                None if !rearmed && self.rearm() => {
                    rearmed = true;
                    continue;
                }
                None => break,
            };
            let head = chain.head_index();
            let before = sg.len();
            let q = self.vring.get_queue();
            // Mapped straight into the frame's list (no list per chain: its clearing showed in
            // the profile). The bound is the whole frame's, never below what it needs: the
            // loop ends once the frame fits, so no chain lends less than it would have alone.
            let bound = (MAX_FRAME_LEN + self.hdr_len).max(need);
            let appended = map_chain(mem, q, head, true, bound, &mut sg);
            if let Err(e) = appended {
                // Hand the bad chain back empty; it also fences off everything popped before it.
                count_chain_error(self.counters, e, true);
                sg.truncate(before);
                let q = self.vring.get_queue_mut();
                let pos = Wrapping(q.next_used());
                if write_used(mem, q, pos, head, 0) {
                    self.published_from.get_or_insert(pos);
                    publish_used(mem, q, pos + Wrapping(1));
                }
                poisoned = true;
                break;
            }
            heads[nchains] = (head, (sg.len() - before) as u32);
            nchains += 1;
            if !self.mergeable {
                break;
            }
        }
        let short = sg.len() < need && (self.mergeable || nchains == 0);
        let frame_len = if short {
            None
        } else {
            let mut frame = SgList::new();
            for s in sg.segments() {
                // SAFETY: same memory as `sg`.
                let _ = unsafe { frame.push_raw(s.iov_base.cast(), s.iov_len) };
            }
            frame.advance(self.hdr_len);
            mark_dirty(mem, self.logging, sg.segments(), sg.len());
            fill(&mut frame).map(|len| {
                let len = len.min(frame.len());
                if len < MIN_FRAME_LEN {
                    let pad = [0u8; MIN_FRAME_LEN];
                    let room = (MIN_FRAME_LEN).min(frame.len());
                    frame.write(len, &pad[..room.saturating_sub(len)]);
                    room.max(len)
                } else {
                    len
                }
            })
        };
        let Some(frame_len) = frame_len else {
            if !poisoned {
                self.vring.get_queue_mut().set_next_avail(first_avail);
            } else {
                self.return_unused(&heads[..nchains]);
            }
            return Err(if short {
                self.counters.rx_no_buffers.inc();
                RxError::NoBuffers
            } else {
                RxError::Abandoned
            });
        };
        // Spread the frame over the chains it used, header first.
        let total = self.hdr_len + frame_len;
        let mut left = total;
        let mut used_chains = 0;
        for &(_, cap) in &heads[..nchains] {
            if left == 0 {
                break;
            }
            left -= left.min(cap as usize);
            used_chains += 1;
        }
        let mut hdr = VnetHdr {
            csum,
            num_buffers: used_chains as u16,
            ..VnetHdr::default()
        };
        if let Some(g) = gso {
            hdr.gso_type = match g.kind {
                GsoKind::Tcpv4 => VIRTIO_NET_HDR_GSO_TCPV4,
                GsoKind::Tcpv6 => VIRTIO_NET_HDR_GSO_TCPV6,
            } as u8;
            hdr.hdr_len = g.hdr_len;
            hdr.gso_size = g.mss;
        }
        sg.write(0, &hdr.emit()[..self.hdr_len]);
        mark_dirty(mem, self.logging, sg.segments(), total);
        let q = self.vring.get_queue_mut();
        let start = Wrapping(q.next_used());
        let mut pos = start;
        let mut left = total;
        for &(head, cap) in &heads[..used_chains] {
            let len = left.min(cap as usize);
            left -= len;
            if write_used(mem, q, pos, head, len as u32) {
                pos += Wrapping(1);
            }
        }
        self.published_from.get_or_insert(start);
        publish_used(mem, q, pos);
        if poisoned {
            self.return_unused(&heads[used_chains..nchains]);
        } else {
            let unused = (nchains - used_chains) as u16;
            let q = self.vring.get_queue_mut();
            q.set_next_avail(q.next_avail().wrapping_sub(unused));
        }
        self.counters.rx_frames.inc();
        self.counters.rx_bytes.add(frame_len as u64);
        Ok(())
    }
}

impl<B: LogBitmap, G> RxRing<'_, B, G>
where
    G: std::ops::DerefMut<Target = RingState<B>>,
{
    /// [`RxSink::push_batch`]: one descriptor chain per frame, so that every frame's buffers are
    /// used whole and the frames not filled are the ring's tail, which can be rewound. A chain
    /// too small for a whole frame (or a bad one) ends the batch where it is, un-popped: the
    /// next single-frame push deals with it.
    fn push_frames(
        &mut self,
        count: usize,
        max_len: usize,
        csum: Option<PartialCsum>,
        fill: &mut dyn FnMut(&mut [SgList<'_>], &mut [usize]) -> usize,
    ) -> Result<usize, RxError> {
        let mem: &Mem<B> = self.mem;
        let q = self.vring.get_queue();
        if !self.vring.is_enabled() || !ring_usable(mem, q) {
            return Err(RxError::NotReady);
        }
        let need = self.hdr_len + max_len.max(MIN_FRAME_LEN);
        let mut heads = [0u16; RX_BATCH];
        let mut frames: [SgList<'_>; RX_BATCH] = std::array::from_fn(|_| SgList::new());
        let mut n = 0;
        let mut rearmed = false;
        while n < count {
            let chain = match self.vring.get_queue_mut().pop_descriptor_chain(mem) {
                Some(c) => c,
                None if n == 0 && !rearmed && self.rearm() => {
                    rearmed = true;
                    continue;
                }
                None => break,
            };
            let head = chain.head_index();
            let mut sg = SgList::new();
            let q = self.vring.get_queue();
            let mapped = map_chain(mem, q, head, true, MAX_FRAME_LEN + self.hdr_len, &mut sg);
            if mapped.is_err() || sg.len() < need {
                let q = self.vring.get_queue_mut();
                q.set_next_avail(q.next_avail().wrapping_sub(1));
                break;
            }
            heads[n] = head;
            frames[n] = sg;
            n += 1;
        }
        if n == 0 {
            // Nothing lent: a single-frame push handles merged buffers and bad chains.
            return one_of_batch(fill, |one| self.push_frame(max_len, csum, None, one));
        }
        // Every frame is one whole chain: its virtio-net header is known before the data.
        let hdr = VnetHdr {
            csum,
            num_buffers: 1,
            ..VnetHdr::default()
        }
        .emit();
        for frame in &mut frames[..n] {
            mark_dirty(mem, self.logging, frame.segments(), frame.len());
            frame.write(0, &hdr[..self.hdr_len]);
            mark_dirty(mem, self.logging, frame.segments(), self.hdr_len);
            frame.advance(self.hdr_len);
        }
        let mut lens = [0usize; RX_BATCH];
        let used = fill(&mut frames[..n], &mut lens[..n]).min(n);
        let q = self.vring.get_queue_mut();
        // Frames not used are the tail of what was popped: back to the ring.
        q.set_next_avail(q.next_avail().wrapping_sub((n - used) as u16));
        if used == 0 {
            return Err(RxError::Abandoned);
        }
        let start = Wrapping(q.next_used());
        let mut pos = start;
        let mut delivered = 0;
        for i in 0..used {
            let frame = &mut frames[i];
            let mut len = lens[i].min(frame.len());
            if len > 0 && len < MIN_FRAME_LEN {
                let pad = [0u8; MIN_FRAME_LEN];
                frame.write(len, &pad[..MIN_FRAME_LEN - len]);
                len = MIN_FRAME_LEN;
            }
            mark_dirty(mem, self.logging, frame.segments(), len);
            let total = if len == 0 {
                0
            } else {
                delivered += 1;
                self.counters.rx_bytes.add(len as u64);
                self.hdr_len + len
            };
            if write_used(mem, q, pos, heads[i], total as u32) {
                pos += Wrapping(1);
            }
        }
        self.published_from.get_or_insert(start);
        publish_used(mem, q, pos);
        self.counters.rx_frames.add(delivered);
        Ok(used)
    }

    /// Gives chains back with nothing written, when they cannot be rewound.
    fn return_unused(&mut self, chains: &[(u16, u32)]) {
        let mem: &Mem<B> = self.mem;
        let q = self.vring.get_queue_mut();
        let start = Wrapping(q.next_used());
        let mut pos = start;
        for &(head, _) in chains {
            if write_used(mem, q, pos, head, 0) {
                pos += Wrapping(1);
            }
        }
        if pos != start {
            self.published_from.get_or_insert(start);
            publish_used(mem, q, pos);
        }
    }
}

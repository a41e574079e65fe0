//! The rings as a guest driver sees them: descriptor chains are written into anonymous "guest
//! memory", the device is set up and kicked exactly as vhost-user-backend does it (SET_FEATURES,
//! SET_MEM_TABLE, SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE, then `handle_event`), and every
//! outcome is read back from the used ring, the call eventfd and the counters.
//!
//! The ring layout is computed here (descriptor table, avail ring, used ring, per virtio 1.2
//! 2.7) rather than taken from `virtio_queue::mock::MockSplitQueue`: in virtio-queue 0.18 the mock
//! places the used ring `len` *bytes* after the start of the avail entries instead of `2 * len`,
//! so the two rings overlap.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use podwire_vhost::device::{HANDLER_EVENT, TX_TIMER_EVENT};

mod common;
use podwire_vhost::{
    DeviceCounters, NetDevice, NetHandler, RxError, RxSink, SgList, MAX_FRAME_LEN, MAX_SEGS,
};
use podwire_vhost::{GsoKind, PartialCsum, TxOffload};
use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost_user_backend::{VhostUserBackendMut, VringMutex, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_USO, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory with a dirty bitmap (4 KiB pages) the tests can read back.
type Mem = GuestMemoryMmap<AtomicBitmap>;
type Vring = VringMutex<GuestMemoryAtomic<Mem>>;

const RX: u16 = 0;
const TX: u16 = 1;
const HDR: usize = 12;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
const FEATURES: u64 = VERSION_1 | MRG_RXBUF;

/// Guest memory: 1 MiB at guest address 0, in two adjacent regions split at `REGION_SPLIT`.
const MEM_SIZE: u64 = 0x10_0000;
const REGION_SPLIT: u64 = 0x8_0000;
const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();
const PAGE: u64 = 0x1000;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x8000;
/// Packet buffers are carved from here up.
const BUF_BASE: u64 = 0x1_0000;
/// Not backed by guest memory.
const OUTSIDE: u64 = 0x1000_0000;

// ---------------------------------------------------------------------------------------------
// The guest driver's side of one split ring.

struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    /// The driver's avail index (shadow of what is in memory).
    avail_idx: u16,
    /// Next free slot in the descriptor table (slots are never reused: tests are short).
    next_desc: u16,
}

impl Ring {
    fn new(mem: &Mem, base: u64, size: u16) -> Ring {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        // flags, idx, ring[n], used_event; the used ring is 4-byte aligned.
        let used = (avail + 4 + 2 * n + 2 + 3) & !3;
        let end = used + 4 + 8 * n + 2;
        mem.write_slice(&vec![0u8; (end - base) as usize], GuestAddress(base))
            .unwrap();
        Ring {
            desc,
            avail,
            used,
            size,
            avail_idx: 0,
            next_desc: 0,
        }
    }

    fn write_desc(&self, mem: &Mem, slot: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(self.desc + 16 * u64::from(slot)))
            .unwrap();
    }

    /// Reserves `n` consecutive descriptor slots; returns the first.
    fn alloc(&mut self, n: u16) -> u16 {
        let first = self.next_desc;
        assert!(
            u32::from(first) + u32::from(n) <= u32::from(self.size),
            "test ran out of descriptors"
        );
        self.next_desc += n;
        first
    }

    /// Writes a well-linked chain of `(addr, len, flags)` descriptors; returns its head.
    fn chain(&mut self, mem: &Mem, descs: &[(u64, u32, u16)]) -> u16 {
        let first = self.alloc(descs.len() as u16);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let slot = first + i as u16;
            if i + 1 < descs.len() {
                self.write_desc(mem, slot, addr, len, flags | NEXT, slot + 1);
            } else {
                self.write_desc(mem, slot, addr, len, flags & !NEXT, 0);
            }
        }
        first
    }

    /// Offers a chain to the device.
    fn post(&mut self, mem: &Mem, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(mem, self.avail_idx);
    }

    fn set_avail_idx(&mut self, mem: &Mem, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    fn set_avail_flags(&self, mem: &Mem, flags: u16) {
        mem.write_obj(flags.to_le(), GuestAddress(self.avail))
            .unwrap();
    }

    /// EVENT_IDX: "interrupt me once the used index passes this".
    fn set_used_event(&self, mem: &Mem, v: u16) {
        let addr = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_obj(v.to_le(), GuestAddress(addr)).unwrap();
    }

    /// EVENT_IDX: "kick me once the avail index passes this" (written by the device).
    fn avail_event(&self, mem: &Mem) -> u16 {
        let addr = self.used + 4 + 8 * u64::from(self.size);
        u16::from_le(mem.read_obj(GuestAddress(addr)).unwrap())
    }

    fn used_idx(&self, mem: &Mem) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(self.used + 2)).unwrap())
    }

    /// Used element `i` (ring position, not wrapped by the caller): (id, len).
    fn used_elem(&self, mem: &Mem, i: u16) -> (u32, u32) {
        let addr = self.used + 4 + 8 * u64::from(i % self.size);
        let id: u32 = mem.read_obj(GuestAddress(addr)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }
}

// ---------------------------------------------------------------------------------------------
// A handler that records what the guest sent and pushes what the test queued.

struct Outgoing {
    max_len: usize,
    frame: Vec<u8>,
}

/// A check run inside `fill` with the buffers lent.
type OnFill = Box<dyn FnMut(&[&SgList<'_>]) + Send>;

struct Recorder {
    fd: EventFd,
    /// Frames from `guest_frame`, copied out.
    seen: Vec<Vec<u8>>,
    /// What the virtio-net header of each of those frames said.
    offloads: Vec<TxOffload>,
    /// Push the queued frames as partial-checksum frames at this location.
    partial: Option<PartialCsum>,
    /// ... and as TCP GSO frames of this kind with this (mss, hdr_len).
    tso: Option<(GsoKind, u16, u16)>,
    /// Frames `poll_host` pushes, in order.
    outbox: VecDeque<Outgoing>,
    /// Push the outbox with `push_batch` calls of up to this many frames instead.
    batch: Option<usize>,
    /// What each `push_batch` returned.
    batch_results: Vec<Result<usize, RxError>>,
    /// What each push returned.
    results: Vec<Result<(), RxError>>,
    /// How often a push's `fill` ran, and the RX used index the guest could see at that moment.
    fills: Vec<u16>,
    /// Guest memory and the RX used-index address, to take that reading.
    probe: (Mem, GuestAddress),
    /// Runs first in every `fill` (single or batch), with the lent buffers.
    on_fill: Option<OnFill>,
    /// States taken over through `load_state`.
    loaded: usize,
    /// A guest that never stops sending: every frame seen posts another.
    repost: Option<Repost>,
}

/// Plays a guest vCPU that posts a TX chain (`head` again) for every frame the device takes.
struct Repost {
    avail: u64,
    size: u16,
    idx: u16,
    head: u16,
}

impl NetHandler for Recorder {
    fn guest_frame(&mut self, frame: &SgList<'_>, _rx: &mut dyn RxSink) {
        let mut bytes = vec![0u8; frame.len()];
        assert_eq!(frame.read(0, &mut bytes), frame.len());
        self.seen.push(bytes);
        if let Some(r) = self.repost.as_mut() {
            let mem = &self.probe.0;
            let slot = u64::from(r.idx % r.size);
            mem.write_obj(r.head.to_le(), GuestAddress(r.avail + 4 + 2 * slot))
                .unwrap();
            r.idx = r.idx.wrapping_add(1);
            mem.write_obj(r.idx.to_le(), GuestAddress(r.avail + 2))
                .unwrap();
        }
    }

    fn guest_frame_with(&mut self, frame: &SgList<'_>, tx: TxOffload, rx: &mut dyn RxSink) {
        self.offloads.push(tx);
        self.guest_frame(frame, rx);
    }

    fn poll_host(&mut self, rx: &mut dyn RxSink) {
        if let Some(count) = self.batch {
            while !self.outbox.is_empty() {
                let max_len = self.outbox.iter().map(|o| o.max_len).max().unwrap_or(0);
                let outbox = &mut self.outbox;
                let on_fill = &mut self.on_fill;
                let mut fill = |frames: &mut [SgList<'_>], lens: &mut [usize]| {
                    if let Some(f) = on_fill.as_mut() {
                        f(&frames.iter().collect::<Vec<_>>());
                    }
                    let n = frames.len().min(outbox.len());
                    for (i, frame) in frames[..n].iter_mut().enumerate() {
                        let out = outbox.pop_front().unwrap();
                        assert!(frame.write(0, &out.frame));
                        lens[i] = out.frame.len();
                    }
                    n
                };
                let r = rx.push_batch(count, max_len, None, &mut fill);
                self.batch_results.push(r);
                if r.is_err() {
                    break;
                }
            }
            return;
        }
        while let Some(out) = self.outbox.pop_front() {
            let (mem, used_idx) = &self.probe;
            let fills = &mut self.fills;
            let on_fill = &mut self.on_fill;
            let mut fill = |sg: &mut SgList<'_>| {
                if let Some(f) = on_fill.as_mut() {
                    f(&[&*sg]);
                }
                fills.push(u16::from_le(mem.read_obj(*used_idx).unwrap()));
                if !sg.write(0, &out.frame) {
                    return None;
                }
                Some(out.frame.len())
            };
            let r = match (self.partial, self.tso) {
                (Some(csum), Some((kind, mss, hdr_len))) if rx.tso_max(kind) > 0 => {
                    rx.push_tso(out.max_len, csum, kind, mss, hdr_len, &mut fill)
                }
                (Some(csum), _) if rx.partial_csum() => {
                    rx.push_partial(out.max_len, csum, &mut fill)
                }
                _ => rx.push(out.max_len, &mut fill),
            };
            self.results.push(r);
        }
    }

    fn host_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn save_state(&mut self) -> Result<Vec<u8>, podwire_vhost::StateError> {
        Ok(RECORDER_STATE.to_vec())
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), podwire_vhost::StateError> {
        if state != RECORDER_STATE {
            return Err(format!("not the recorder's state ({} bytes)", state.len()).into());
        }
        self.loaded += 1;
        Ok(())
    }
}

/// What the test handler saves, and the only state it loads. Longer than a pipe's buffer, so
/// that a transfer done on the vhost-user thread itself would block for ever.
const RECORDER_STATE: &[u8] = &[0x5a; 100_000];

// ---------------------------------------------------------------------------------------------
// A device wired to two rings, as vhost-user-backend would wire it.

struct Rig {
    mem: Mem,
    dev: NetDevice<Recorder, AtomicBitmap>,
    handler: Arc<Mutex<Recorder>>,
    counters: Arc<DeviceCounters>,
    vrings: Vec<Vring>,
    rx: Ring,
    tx: Ring,
    /// The call eventfds of RX and TX: readable when the guest was interrupted.
    calls: [EventFd; 2],
    next_buf: u64,
    /// The interrupts the rings' start gave (see `rings_interrupt_once_when_they_start`).
    start_calls: [u64; 2],
}

impl Rig {
    fn new(features: u64) -> Rig {
        Rig::with_sizes(features, 256, 256)
    }

    fn with_sizes(features: u64, rx_size: u16, tx_size: u16) -> Rig {
        let half = REGION_SPLIT as usize;
        let mem = Mem::from_ranges(&[
            (GuestAddress(0), half),
            (GuestAddress(REGION_SPLIT), MEM_SIZE as usize - half),
        ])
        .unwrap();
        let rx = Ring::new(&mem, RX_RING, rx_size);
        let tx = Ring::new(&mem, TX_RING, tx_size);
        let handler = Arc::new(Mutex::new(Recorder {
            fd: EventFd::new(EFD_NONBLOCK).unwrap(),
            seen: Vec::new(),
            offloads: Vec::new(),
            partial: None,
            tso: None,
            outbox: VecDeque::new(),
            batch: None,
            batch_results: Vec::new(),
            results: Vec::new(),
            fills: Vec::new(),
            probe: (mem.clone(), GuestAddress(rx.used + 2)),
            on_fill: None,
            loaded: 0,
            repost: None,
        }));
        let counters = Arc::new(DeviceCounters::default());
        let mut dev = NetDevice::new(handler.clone(), counters.clone(), common::CONFIG).unwrap();
        assert_eq!(
            features & !dev.features(),
            0,
            "test acks only offered features"
        );
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let max = dev.max_queue_size() as u16;
        let vrings: Vec<Vring> = (0..dev.num_queues())
            .map(|_| Vring::new(atomic.clone(), max).unwrap())
            .collect();

        // SET_FEATURES
        let event_idx = features & EVENT_IDX != 0;
        for v in &vrings {
            v.set_queue_event_idx(event_idx);
        }
        dev.set_event_idx(event_idx);
        dev.acked_features(features);
        // SET_MEM_TABLE
        dev.update_memory(atomic).unwrap();
        // Per ring: SET_VRING_NUM, _ADDR, _BASE, _CALL, _KICK, _ENABLE.
        let calls = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        for (v, (ring, call)) in vrings.iter().zip([&rx, &tx].into_iter().zip(&calls)) {
            v.set_queue_size(ring.size);
            v.set_queue_info(ring.desc, ring.avail, ring.used).unwrap();
            v.set_queue_next_used(v.queue_used_idx().unwrap());
            v.set_queue_next_avail(0);
            v.set_call(Some(file_of(call)));
            v.set_kick(Some(file_of(&EventFd::new(EFD_NONBLOCK).unwrap())));
            v.set_queue_ready(true);
            v.set_enabled(true);
        }
        let mut rig = Rig {
            mem,
            dev,
            handler,
            counters,
            vrings,
            rx,
            tx,
            calls,
            next_buf: BUF_BASE,
            start_calls: [0; 2],
        };
        // The first pass after the rings start interrupts the guest once per ring; the tests
        // below count from after it.
        rig.event(HANDLER_EVENT);
        rig.start_calls = [rig.calls(RX), rig.calls(TX)];
        rig
    }

    /// Carves a buffer out of guest memory, filled with `fill`.
    fn buf(&mut self, len: usize, fill: u8) -> u64 {
        let addr = self.next_buf;
        self.next_buf = (addr + len as u64 + 15) & !15;
        assert!(self.next_buf <= MEM_SIZE, "test ran out of guest memory");
        self.mem
            .write_slice(&vec![fill; len], GuestAddress(addr))
            .unwrap();
        addr
    }

    /// Places `bytes` in guest memory; returns the address.
    fn data(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.buf(bytes.len(), 0);
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        addr
    }

    /// Posts a well-formed TX frame: header and frame in separate descriptors. Returns the head.
    fn post_tx(&mut self, frame: &[u8]) -> u16 {
        self.post_tx_with_header(&[0u8; HDR], frame)
    }

    fn post_tx_with_header(&mut self, vnet_hdr: &[u8; HDR], frame: &[u8]) -> u16 {
        let hdr = self.data(vnet_hdr);
        let body = self.data(frame);
        let head = self.tx.chain(
            &self.mem,
            &[(hdr, HDR as u32, 0), (body, frame.len() as u32, 0)],
        );
        self.tx.post(&self.mem, head);
        head
    }

    /// Posts a TX chain made of the given descriptors.
    fn post_tx_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.tx.chain(&self.mem, descs);
        self.tx.post(&self.mem, head);
        head
    }

    /// Posts an RX buffer of one descriptor, pre-filled with 0xAA. Returns (head, address).
    fn post_rx(&mut self, len: usize, flags: u16) -> (u16, u64) {
        let addr = self.buf(len, 0xAA);
        let head = self.rx.chain(&self.mem, &[(addr, len as u32, flags)]);
        self.rx.post(&self.mem, head);
        (head, addr)
    }

    /// Posts a one-descriptor RX buffer at a chosen guest address, pre-filled with 0xAA.
    fn post_rx_at(&mut self, addr: u64, len: usize) -> u16 {
        self.mem
            .write_slice(&vec![0xAA; len], GuestAddress(addr))
            .unwrap();
        let head = self.rx.chain(&self.mem, &[(addr, len as u32, WRITE)]);
        self.rx.post(&self.mem, head);
        head
    }

    /// Queues a frame for the handler to push on its next poll.
    fn queue_rx(&self, max_len: usize, frame: Vec<u8>) {
        self.handler
            .lock()
            .unwrap()
            .outbox
            .push_back(Outgoing { max_len, frame });
    }

    /// One wake-up of the worker thread for `event`.
    fn event(&mut self, event: u16) {
        self.dev
            .handle_event(event, EventSet::IN, &self.vrings, 0)
            .unwrap();
    }

    fn seen(&self) -> Vec<Vec<u8>> {
        self.handler.lock().unwrap().seen.clone()
    }

    fn results(&self) -> Vec<Result<(), RxError>> {
        self.handler.lock().unwrap().results.clone()
    }

    fn fills(&self) -> Vec<u16> {
        self.handler.lock().unwrap().fills.clone()
    }

    /// How many times the guest was interrupted for `queue` since the last call.
    fn calls(&self, queue: u16) -> u64 {
        match self.calls[queue as usize].read() {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("reading call eventfd: {e}"),
        }
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// After a drop: one well-formed frame still goes through, and only it reaches the handler.
    fn assert_tx_still_works(&mut self) {
        let before = self.seen().len();
        let used = self.tx.used_idx(&self.mem);
        let f = frame(60, 99);
        let head = self.post_tx(&f);
        self.event(TX);
        assert_eq!(self.seen()[before..], [f]);
        assert_eq!(self.tx.used_idx(&self.mem), used.wrapping_add(1));
        assert_eq!(self.tx.used_elem(&self.mem, used), (u32::from(head), 0));
    }
}

fn file_of(fd: &EventFd) -> File {
    // SAFETY: a fresh duplicate, owned by nobody else.
    unsafe { File::from_raw_fd(fd.try_clone().unwrap().into_raw_fd()) }
}

/// A recognisable frame of `len` bytes.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// Every counter that is not zero, by name.
fn counts(c: &DeviceCounters) -> BTreeMap<&'static str, u64> {
    let all = [
        ("tx_frames", &c.tx_frames),
        ("tx_bytes", &c.tx_bytes),
        ("rx_frames", &c.rx_frames),
        ("rx_bytes", &c.rx_bytes),
        ("interrupts", &c.interrupts),
        ("tx_bad_address", &c.tx_bad_address),
        ("tx_bad_direction", &c.tx_bad_direction),
        ("tx_too_many_segments", &c.tx_too_many_segments),
        ("tx_too_long", &c.tx_too_long),
        ("tx_broken_chain", &c.tx_broken_chain),
        ("tx_too_short", &c.tx_too_short),
        ("rx_bad_chain", &c.rx_bad_chain),
        ("rx_no_buffers", &c.rx_no_buffers),
        ("refused_frontends", &c.refused_frontends),
        ("sessions", &c.sessions),
    ];
    all.iter()
        .filter(|(_, v)| v.get() != 0)
        .map(|(n, v)| (*n, v.get()))
        .collect()
}

#[track_caller]
fn assert_counts(rig: &Rig, want: &[(&'static str, u64)]) {
    let want: BTreeMap<_, _> = want.iter().copied().collect();
    assert_eq!(counts(&rig.counters), want);
}

/// Posts the TX chain(s) `post` makes, kicks TX, and checks the drop: the handler saw nothing,
/// every chain came back with length 0, exactly `counter` went up (once per chain), and the ring
/// still works afterwards.
#[track_caller]
fn assert_tx_dropped(
    rig: &mut Rig,
    counter: &'static str,
    post: impl FnOnce(&mut Rig) -> Vec<u16>,
) {
    let heads = post(rig);
    rig.event(TX);
    assert!(rig.seen().is_empty(), "handler saw a dropped frame");
    assert_eq!(rig.tx.used_idx(&rig.mem), heads.len() as u16);
    for (i, &head) in heads.iter().enumerate() {
        assert_eq!(rig.tx.used_elem(&rig.mem, i as u16), (u32::from(head), 0));
    }
    assert_counts(rig, &[(counter, heads.len() as u64), ("interrupts", 1)]);
    assert_eq!(rig.calls(TX), 1);
    rig.assert_tx_still_works();
}

// ---------------------------------------------------------------------------------------------
// TX

/// (1) A well-formed frame, header and frame in separate descriptors, reaches the handler intact.
#[test]
fn tx_frame_reaches_handler() {
    let mut rig = Rig::new(FEATURES);
    let f = frame(60, 1);
    let head = rig.post_tx(&f);
    rig.event(TX);
    assert_eq!(rig.seen(), vec![f]);
    assert_eq!(rig.tx.used_idx(&rig.mem), 1);
    assert_eq!(rig.tx.used_elem(&rig.mem, 0), (u32::from(head), 0));
    assert_counts(
        &rig,
        &[("tx_frames", 1), ("tx_bytes", 60), ("interrupts", 1)],
    );
    assert_eq!(rig.calls(TX), 1);
    assert_eq!(rig.calls(RX), 0);
    // A kick with nothing new does nothing.
    rig.event(TX);
    assert_eq!(rig.seen().len(), 1);
    assert_eq!(rig.tx.used_idx(&rig.mem), 1);
    assert_eq!(rig.calls(TX), 0);
}

/// A buffer inside one memory region is mapped with one lookup (the fast path); one that runs
/// across two adjacent regions still reaches the handler whole, in two pieces.
#[test]
fn tx_buffer_across_two_regions_reaches_handler_whole() {
    let mut rig = Rig::new(FEATURES);
    let f = frame(3000, 7);
    let hdr = rig.data(&[0u8; HDR]);
    let body = REGION_SPLIT - 1000;
    rig.mem.write_slice(&f, GuestAddress(body)).unwrap();
    let inside = rig.data(&f[..100]);
    rig.post_tx_chain(&[(hdr, HDR as u32, NEXT), (body, 3000, 0)]);
    rig.post_tx_chain(&[(hdr, HDR as u32, NEXT), (inside, 100, 0)]);
    rig.event(TX);
    assert_eq!(rig.seen(), vec![f.clone(), f[..100].to_vec()]);
    assert_counts(
        &rig,
        &[("tx_frames", 2), ("tx_bytes", 3100), ("interrupts", 1)],
    );
}

/// (2) A descriptor outside guest memory, or running off its end.
#[test]
fn tx_bad_address() {
    let mut rig = Rig::new(FEATURES);
    assert_tx_dropped(&mut rig, "tx_bad_address", |rig| {
        let hdr = rig.data(&[0u8; HDR]);
        let outside = rig.post_tx_chain(&[(hdr, HDR as u32, 0), (OUTSIDE, 60, 0)]);
        let straddles = rig.post_tx_chain(&[(hdr, HDR as u32, 0), (MEM_SIZE - 16, 60, 0)]);
        vec![outside, straddles]
    });
}

/// (3) A chain whose `next` points back at itself or at an earlier descriptor. The ring is small
/// enough that virtio-queue's walk (at most one lap of the table) ends before MAX_SEGS.
#[test]
fn tx_looping_chain_in_small_ring() {
    let mut rig = Rig::with_sizes(FEATURES, 16, 16);
    assert_tx_dropped(&mut rig, "tx_broken_chain", |rig| {
        let hdr = rig.data(&[0u8; HDR]);
        let body = rig.data(&frame(60, 2));
        // Back to an earlier one: 0 -> 1 -> 0 -> ...
        let back = rig.tx.alloc(2);
        rig.tx
            .write_desc(&rig.mem, back, hdr, HDR as u32, NEXT, back + 1);
        rig.tx.write_desc(&rig.mem, back + 1, body, 60, NEXT, back);
        rig.tx.post(&rig.mem, back);
        // To itself.
        let own = rig.tx.alloc(1);
        rig.tx.write_desc(&rig.mem, own, hdr, 60, NEXT, own);
        rig.tx.post(&rig.mem, own);
        vec![back, own]
    });
}

/// (3b) The same loops in a ring of 256 (what guests use): the walk runs past MAX_SEGS before it
/// ends, and the loop is counted as "too many segments" instead of as a broken chain.
#[test]
fn tx_looping_chain() {
    let mut rig = Rig::new(FEATURES);
    assert_tx_dropped(&mut rig, "tx_broken_chain", |rig| {
        let hdr = rig.data(&[0u8; HDR]);
        let body = rig.data(&frame(60, 2));
        let back = rig.tx.alloc(2);
        rig.tx
            .write_desc(&rig.mem, back, hdr, HDR as u32, NEXT, back + 1);
        rig.tx.write_desc(&rig.mem, back + 1, body, 60, NEXT, back);
        rig.tx.post(&rig.mem, back);
        let own = rig.tx.alloc(1);
        rig.tx.write_desc(&rig.mem, own, hdr, 60, NEXT, own);
        rig.tx.post(&rig.mem, own);
        vec![back, own]
    });
}

/// (4) A `next` index beyond the queue size (and, for good measure, a head beyond it).
#[test]
fn tx_next_beyond_queue_size() {
    let mut rig = Rig::new(FEATURES);
    assert_tx_dropped(&mut rig, "tx_broken_chain", |rig| {
        let hdr = rig.data(&[0u8; HDR]);
        let body = rig.data(&frame(60, 3));
        let first = rig.tx.alloc(2);
        rig.tx
            .write_desc(&rig.mem, first, hdr, HDR as u32, NEXT, first + 1);
        rig.tx
            .write_desc(&rig.mem, first + 1, body, 60, NEXT, rig.tx.size);
        rig.tx.post(&rig.mem, first);
        let far = rig.tx.alloc(1);
        rig.tx
            .write_desc(&rig.mem, far, hdr, HDR as u32, NEXT, 0xffff);
        rig.tx.post(&rig.mem, far);
        // A head index outside the table: nothing to walk at all.
        rig.tx.post(&rig.mem, rig.tx.size + 5);
        vec![first, far, rig.tx.size + 5]
    });
}

/// (5) More than MAX_SEGS descriptors in a ring of 256; exactly MAX_SEGS is fine.
#[test]
fn tx_too_many_segments() {
    let mut rig = Rig::new(FEATURES);
    // The limit itself: 64 descriptors of 16 bytes, the first holding the header and 4 bytes.
    let f = frame(MAX_SEGS * 16 - HDR, 4);
    let mut whole = vec![0u8; HDR];
    whole.extend_from_slice(&f);
    let addr = rig.data(&whole);
    let descs: Vec<_> = (0..MAX_SEGS as u64)
        .map(|i| (addr + 16 * i, 16, 0))
        .collect();
    let head = rig.post_tx_chain(&descs);
    rig.event(TX);
    assert_eq!(rig.seen(), vec![f.clone()]);
    assert_eq!(rig.tx.used_elem(&rig.mem, 0), (u32::from(head), 0));
    rig.handler.lock().unwrap().seen.clear();

    // One more descriptor.
    let addr = rig.buf((MAX_SEGS + 1) * 16, 0);
    let descs: Vec<_> = (0..MAX_SEGS as u64 + 1)
        .map(|i| (addr + 16 * i, 16, 0))
        .collect();
    let head = rig.post_tx_chain(&descs);
    rig.event(TX);
    assert!(rig.seen().is_empty(), "handler saw a dropped frame");
    assert_eq!(rig.tx.used_idx(&rig.mem), 2);
    assert_eq!(rig.tx.used_elem(&rig.mem, 1), (u32::from(head), 0));
    assert_counts(
        &rig,
        &[
            ("tx_frames", 1),
            ("tx_bytes", f.len() as u64),
            ("tx_too_many_segments", 1),
            ("interrupts", 2),
        ],
    );
    rig.assert_tx_still_works();
}

/// (6) Longer than MAX_FRAME_LEN + header; exactly that is fine.
#[test]
fn tx_too_long() {
    let mut rig = Rig::new(FEATURES);
    let f = frame(MAX_FRAME_LEN, 5);
    let head = rig.post_tx(&f);
    rig.event(TX);
    assert_eq!(rig.seen().len(), 1);
    assert!(rig.seen()[0] == f, "largest frame delivered intact");
    assert_eq!(rig.tx.used_elem(&rig.mem, 0), (u32::from(head), 0));
    rig.handler.lock().unwrap().seen.clear();

    let hdr = rig.data(&[0u8; HDR]);
    let body = rig.buf(MAX_FRAME_LEN + 1, 0);
    let one_more = rig.post_tx_chain(&[(hdr, HDR as u32, 0), (body, MAX_FRAME_LEN as u32 + 1, 0)]);
    // A length no buffer can have: refused before its address is even looked at.
    let huge = rig.post_tx_chain(&[(hdr, HDR as u32, 0), (body, u32::MAX - HDR as u32, 0)]);
    rig.event(TX);
    assert!(rig.seen().is_empty(), "handler saw a dropped frame");
    assert_eq!(rig.tx.used_idx(&rig.mem), 3);
    assert_eq!(rig.tx.used_elem(&rig.mem, 1), (u32::from(one_more), 0));
    assert_eq!(rig.tx.used_elem(&rig.mem, 2), (u32::from(huge), 0));
    assert_counts(
        &rig,
        &[
            ("tx_frames", 1),
            ("tx_bytes", MAX_FRAME_LEN as u64),
            ("tx_too_long", 2),
            ("interrupts", 2),
        ],
    );
    rig.assert_tx_still_works();
}

/// (7) Shorter than header + Ethernet header; exactly that is fine.
#[test]
fn tx_too_short() {
    let mut rig = Rig::new(FEATURES);
    assert_tx_dropped(&mut rig, "tx_too_short", |rig| {
        let hdr = rig.data(&[0u8; HDR]);
        let body = rig.data(&frame(13, 6));
        let short = rig.post_tx_chain(&[(hdr, HDR as u32, 0), (body, 13, 0)]);
        let header_only = rig.post_tx_chain(&[(hdr, HDR as u32, 0)]);
        let partial_header = rig.post_tx_chain(&[(hdr, 8, 0)]);
        vec![short, header_only, partial_header]
    });
    let f = frame(14, 7);
    rig.post_tx(&f);
    rig.event(TX);
    assert_eq!(rig.seen().last(), Some(&f));
}

/// (8) A device-writable descriptor in a TX chain.
#[test]
fn tx_bad_direction() {
    let mut rig = Rig::new(FEATURES);
    assert_tx_dropped(&mut rig, "tx_bad_direction", |rig| {
        let hdr = rig.data(&[0u8; HDR]);
        let body = rig.data(&frame(60, 8));
        let writable_body = rig.post_tx_chain(&[(hdr, HDR as u32, 0), (body, 60, WRITE)]);
        let writable_head = rig.post_tx_chain(&[(hdr, HDR as u32, WRITE), (body, 60, 0)]);
        vec![writable_body, writable_head]
    });
}

// ---------------------------------------------------------------------------------------------
// RX

/// (9) One 2048-byte buffer, a 100-byte frame: header with num_buffers = 1, then the frame.
#[test]
fn rx_frame_into_one_buffer() {
    let mut rig = Rig::new(FEATURES);
    let (head, addr) = rig.post_rx(2048, WRITE);
    let f = frame(100, 9);
    rig.queue_rx(100, f.clone());
    rig.event(RX);
    assert_eq!(rig.results(), vec![Ok(())]);
    assert_eq!(rig.rx.used_idx(&rig.mem), 1);
    assert_eq!(rig.rx.used_elem(&rig.mem, 0), (u32::from(head), 112));
    let got = rig.read(addr, 113);
    assert_eq!(got[..HDR], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(got[HDR..112], f[..]);
    assert_eq!(got[112], 0xAA, "nothing written past the frame");
    assert_counts(
        &rig,
        &[("rx_frames", 1), ("rx_bytes", 100), ("interrupts", 1)],
    );
    assert_eq!(rig.calls(RX), 1);
    assert_eq!(rig.calls(TX), 0);

    // The handler's own fd waking the thread works the same way.
    let (head, addr) = rig.post_rx(2048, WRITE);
    rig.queue_rx(100, f.clone());
    rig.event(HANDLER_EVENT);
    assert_eq!(rig.rx.used_elem(&rig.mem, 1), (u32::from(head), 112));
    assert_eq!(rig.read(addr + HDR as u64, 100), f);
}

/// (10) MRG_RXBUF: a 200-byte frame over 64-byte buffers.
#[test]
fn rx_mergeable_frame_spans_buffers() {
    let mut rig = Rig::new(FEATURES);
    let bufs: Vec<(u16, u64)> = (0..8).map(|_| rig.post_rx(64, WRITE)).collect();
    let f = frame(200, 10);
    // The handler asks for room for 300 bytes but produces 200: 5 buffers are lent, 4 used.
    rig.queue_rx(300, f.clone());
    rig.event(RX);
    assert_eq!(rig.results(), vec![Ok(())]);
    let n = (HDR + 200).div_ceil(64) as u16;
    assert_eq!(n, 4);
    // The guest saw nothing before the frame was complete, then all of it at once.
    assert_eq!(rig.fills(), vec![0]);
    assert_eq!(rig.rx.used_idx(&rig.mem), n);
    let mut whole = Vec::new();
    for i in 0..n {
        let (head, addr) = bufs[i as usize];
        let (id, len) = rig.rx.used_elem(&rig.mem, i);
        assert_eq!(id, u32::from(head), "used entry {i}");
        let want = if i + 1 < n { 64 } else { HDR + 200 - 64 * 3 };
        assert_eq!(len as usize, want, "used entry {i}");
        whole.extend(rig.read(addr, len as usize));
    }
    assert_eq!(whole[..10], [0u8; 10]);
    assert_eq!(u16::from_le_bytes([whole[10], whole[11]]), n, "num_buffers");
    assert_eq!(whole[HDR..], f[..]);
    assert_eq!(rig.calls(RX), 1, "one interrupt for the whole frame");

    // The fifth buffer was lent but not used: it is the next one the device takes.
    let g = frame(40, 11);
    rig.queue_rx(40, g.clone());
    rig.event(RX);
    assert_eq!(rig.results(), vec![Ok(()), Ok(())]);
    assert_eq!(rig.rx.used_idx(&rig.mem), n + 2);
    let (h4, a4) = bufs[4];
    let (h5, a5) = bufs[5];
    assert_eq!(rig.rx.used_elem(&rig.mem, n), (u32::from(h4), 64));
    assert_eq!(rig.rx.used_elem(&rig.mem, n + 1), (u32::from(h5), 8));
    let mut whole = rig.read(a4, 64);
    whole.extend(rig.read(a5, 8));
    assert_eq!(u16::from_le_bytes([whole[10], whole[11]]), 2, "num_buffers");
    assert_eq!(whole[HDR..HDR + 40], g[..]);
    assert_eq!(whole[HDR + 40..], [0u8; 20], "padded to 60 across buffers");
    assert_eq!(
        rig.read(a5 + 8, 56),
        vec![0xAA; 56],
        "nothing past the frame"
    );
    assert_counts(
        &rig,
        &[("rx_frames", 2), ("rx_bytes", 260), ("interrupts", 2)],
    );
}

/// (11) No buffers posted: NoBuffers, counted, nothing used; too few buffers: the same, and the
/// ones that were there are not consumed.
#[test]
fn rx_no_buffers() {
    let mut rig = Rig::new(FEATURES);
    rig.queue_rx(100, frame(100, 12));
    rig.event(RX);
    assert_eq!(rig.results(), vec![Err(RxError::NoBuffers)]);
    assert!(rig.fills().is_empty(), "fill called without buffers");
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
    assert_counts(&rig, &[("rx_no_buffers", 1)]);
    assert_eq!(rig.calls(RX), 0);

    // Two 64-byte buffers cannot hold a 200-byte frame...
    let (h0, _) = rig.post_rx(64, WRITE);
    let (h1, _) = rig.post_rx(64, WRITE);
    rig.queue_rx(200, frame(200, 13));
    rig.event(RX);
    assert_eq!(rig.results()[1], Err(RxError::NoBuffers));
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
    assert_counts(&rig, &[("rx_no_buffers", 2)]);
    // ...and were given back untouched: a small frame (header + 60 padded bytes) takes both.
    rig.queue_rx(40, frame(40, 14));
    rig.event(RX);
    assert_eq!(rig.results()[2], Ok(()));
    assert_eq!(rig.rx.used_idx(&rig.mem), 2);
    assert_eq!(rig.rx.used_elem(&rig.mem, 0), (u32::from(h0), 64));
    assert_eq!(rig.rx.used_elem(&rig.mem, 1), (u32::from(h1), 8));
}

/// (12) A read-only RX buffer is returned with length 0 and counted; the frame is not written
/// anywhere. A good buffer behind it is used by the next frame.
#[test]
fn rx_read_only_buffer() {
    let mut rig = Rig::new(FEATURES);
    let (bad, bad_addr) = rig.post_rx(2048, 0);
    rig.queue_rx(100, frame(100, 15));
    rig.event(RX);
    assert!(rig.results()[0].is_err());
    assert!(
        rig.fills().is_empty(),
        "fill called with a read-only buffer"
    );
    assert_eq!(rig.rx.used_idx(&rig.mem), 1);
    assert_eq!(rig.rx.used_elem(&rig.mem, 0), (u32::from(bad), 0));
    assert_eq!(rig.read(bad_addr, 2048), vec![0xAA; 2048]);
    assert_eq!(counts(&rig.counters).get("rx_bad_chain"), Some(&1));
    assert_eq!(counts(&rig.counters).get("rx_frames"), None);
    assert_eq!(rig.calls(RX), 1, "the returned buffer is signalled");

    let (good, addr) = rig.post_rx(2048, WRITE);
    let f = frame(100, 16);
    rig.queue_rx(100, f.clone());
    rig.event(RX);
    assert_eq!(rig.results()[1], Ok(()));
    assert_eq!(rig.rx.used_elem(&rig.mem, 1), (u32::from(good), 112));
    assert_eq!(rig.read(addr + HDR as u64, 100), f);
}

/// (13) Frames shorter than 60 bytes are zero-padded to 60.
#[test]
fn rx_short_frame_padded() {
    let mut rig = Rig::new(FEATURES);
    let (head, addr) = rig.post_rx(2048, WRITE);
    let f = frame(42, 17);
    rig.queue_rx(42, f.clone());
    rig.event(RX);
    assert_eq!(rig.results(), vec![Ok(())]);
    assert_eq!(
        rig.rx.used_elem(&rig.mem, 0),
        (u32::from(head), (HDR + 60) as u32)
    );
    let got = rig.read(addr, HDR + 61);
    assert_eq!(got[HDR..HDR + 42], f[..]);
    assert_eq!(got[HDR + 42..HDR + 60], [0u8; 18]);
    assert_eq!(got[HDR + 60], 0xAA);
    assert_counts(
        &rig,
        &[("rx_frames", 1), ("rx_bytes", 60), ("interrupts", 1)],
    );
}

/// (16) A ring that is started but disabled (SET_VRING_ENABLE 0) must not be given RX frames.
#[test]
fn rx_disabled_ring_gets_nothing() {
    let mut rig = Rig::new(FEATURES);
    let (head, addr) = rig.post_rx(2048, WRITE);
    rig.vrings[RX as usize].set_enabled(false);
    rig.queue_rx(100, frame(100, 18));
    rig.event(HANDLER_EVENT);
    assert_eq!(rig.results(), vec![Err(RxError::NotReady)]);
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
    assert_eq!(rig.read(addr, 2048), vec![0xAA; 2048]);
    assert_eq!(rig.calls(RX), 0);
    // Enabled again, the buffer is still there.
    rig.vrings[RX as usize].set_enabled(true);
    rig.queue_rx(100, frame(100, 18));
    rig.event(HANDLER_EVENT);
    assert_eq!(rig.rx.used_elem(&rig.mem, 0), (u32::from(head), 112));
}

/// (17) An RX buffer larger than any frame (a non-mergeable "big packets" chain, for instance) is
/// a good buffer: the frame goes in, the rest stays unused.
#[test]
fn rx_buffer_larger_than_any_frame() {
    let mut rig = Rig::new(FEATURES);
    let (head, addr) = rig.post_rx(MAX_FRAME_LEN + HDR + 4096, WRITE);
    let f = frame(100, 19);
    rig.queue_rx(100, f.clone());
    rig.event(RX);
    assert_eq!(rig.results(), vec![Ok(())]);
    assert_eq!(rig.rx.used_elem(&rig.mem, 0), (u32::from(head), 112));
    assert_eq!(rig.read(addr + HDR as u64, 100), f);
    assert_counts(
        &rig,
        &[("rx_frames", 1), ("rx_bytes", 100), ("interrupts", 1)],
    );
}

// ---------------------------------------------------------------------------------------------
// Interrupts

/// (14a) EVENT_IDX on TX: no interrupt unless the used index passes `used_event`, one per pass,
/// and the flags' NO_INTERRUPT bit is ignored; kicks are re-armed at the device's avail position.
#[test]
fn event_idx_tx_interrupts() {
    let mut rig = Rig::new(FEATURES | EVENT_IDX);
    // Used index goes 0 -> 1; the guest wants to hear only once it passes 5.
    rig.tx.set_used_event(&rig.mem, 5);
    rig.post_tx(&frame(60, 20));
    rig.event(TX);
    assert_eq!(rig.seen().len(), 1);
    assert_eq!(rig.tx.used_idx(&rig.mem), 1);
    assert_eq!(rig.calls(TX), 0);
    assert_eq!(rig.counters.interrupts.get(), 0);
    assert_eq!(rig.tx.avail_event(&rig.mem), 1, "kicks re-armed");

    // used_event = the old used index: 1 -> 4 in one pass passes it, one interrupt.
    rig.tx.set_used_event(&rig.mem, 1);
    rig.tx
        .set_avail_flags(&rig.mem, VRING_AVAIL_F_NO_INTERRUPT as u16);
    for i in 0..3 {
        rig.post_tx(&frame(60, 21 + i));
    }
    rig.event(TX);
    assert_eq!(rig.seen().len(), 4);
    assert_eq!(rig.tx.used_idx(&rig.mem), 4);
    assert_eq!(rig.calls(TX), 1);
    assert_eq!(rig.counters.interrupts.get(), 1);
    assert_eq!(rig.tx.avail_event(&rig.mem), 4);

    // used_event behind the old index: already passed, no new interrupt.
    rig.post_tx(&frame(60, 30));
    rig.event(TX);
    assert_eq!(rig.tx.used_idx(&rig.mem), 5);
    assert_eq!(rig.calls(TX), 0);
    // The last entry of the pass is the one it waits for.
    rig.tx.set_used_event(&rig.mem, 6);
    rig.post_tx(&frame(60, 31));
    rig.post_tx(&frame(60, 32));
    rig.event(TX);
    assert_eq!(rig.tx.used_idx(&rig.mem), 7);
    assert_eq!(rig.calls(TX), 1);
}

/// (14b) EVENT_IDX on RX.
#[test]
fn event_idx_rx_interrupts() {
    let mut rig = Rig::new(FEATURES | EVENT_IDX);
    for _ in 0..4 {
        rig.post_rx(2048, WRITE);
    }
    rig.rx.set_used_event(&rig.mem, 3);
    rig.queue_rx(100, frame(100, 40));
    rig.event(RX);
    assert_eq!(rig.rx.used_idx(&rig.mem), 1);
    assert_eq!(rig.calls(RX), 0);
    rig.rx.set_used_event(&rig.mem, 1);
    rig.queue_rx(100, frame(100, 41));
    rig.queue_rx(100, frame(100, 42));
    rig.event(RX);
    assert_eq!(rig.rx.used_idx(&rig.mem), 3);
    assert_eq!(rig.calls(RX), 1, "one interrupt per pass");
    assert_eq!(rig.counters.interrupts.get(), 1);
}

/// Whether `fd` becomes readable before `deadline`.
fn readable_by(fd: RawFd, deadline: std::time::Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own, for its length.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) };
        if n > 0 {
            return true;
        }
        if n == 0 {
            return false;
        }
    }
}

/// (14d) A request's TX interrupt is held back: the answer's RX interrupt wakes the guest, which
/// takes its TX buffer back then (as Linux's RX poll does) and is never interrupted for it;
/// one the guest still waits for comes when the device's TX timer fires.
#[test]
fn tx_interrupt_held_for_a_request() {
    let mut rig = Rig::new(FEATURES | EVENT_IDX);
    // The guest has taken everything back and wants to hear of its next frame.
    rig.tx.set_used_event(&rig.mem, 0);
    rig.post_tx(&frame(60, 60));
    rig.event(TX);
    assert_eq!(rig.tx.used_idx(&rig.mem), 1);
    assert_eq!(rig.calls(TX), 0, "held");
    assert_eq!(rig.counters.tx_irq_held.get(), 1);
    assert_eq!(rig.counters.interrupts.get(), 0);

    // The answer: one interrupt, on RX only.
    rig.post_rx(2048, WRITE);
    rig.rx.set_used_event(&rig.mem, 0);
    rig.queue_rx(100, frame(100, 61));
    rig.event(HANDLER_EVENT);
    assert_eq!(rig.calls(RX), 1);
    assert_eq!(
        rig.calls(TX),
        0,
        "still held: the guest's RX poll takes the buffer back"
    );

    // It did, and asks about the next frame: the held interrupt is dropped, the next held.
    rig.tx.set_used_event(&rig.mem, 1);
    rig.post_tx(&frame(60, 62));
    rig.event(TX);
    assert_eq!(rig.calls(TX), 0);
    assert_eq!(rig.counters.tx_irq_unneeded.get(), 1);
    assert_eq!(rig.counters.tx_irq_held.get(), 2);

    // No answer this time: the timer delivers the interrupt the guest still waits for. It was
    // armed for the first hold, so it may fire (and re-arm) once before this one is due.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut calls = 0;
    while calls == 0 {
        assert!(
            readable_by(rig.dev.tx_timer_fd(), deadline),
            "the TX timer never delivered the interrupt"
        );
        rig.event(TX_TIMER_EVENT);
        calls = rig.calls(TX);
    }
    assert_eq!(calls, 1);
    assert_eq!(rig.counters.interrupts.get(), 2);
    // Once, and nothing more held.
    rig.event(HANDLER_EVENT);
    assert_eq!(rig.calls(TX), 0);
}

/// (14e) Nothing is held for bulk: a big frame, a pass of three chains, a guest that has not
/// taken back earlier buffers, or a driver without EVENT_IDX.
#[test]
fn tx_interrupt_not_held_for_bulk() {
    let mut rig = Rig::new(FEATURES | EVENT_IDX);
    rig.tx.set_used_event(&rig.mem, 0);
    rig.post_tx(&frame(5000, 70));
    rig.event(TX);
    assert_eq!(rig.calls(TX), 1, "a big frame");
    rig.tx.set_used_event(&rig.mem, 1);
    for i in 0..3 {
        rig.post_tx(&frame(60, 71 + i));
    }
    rig.event(TX);
    assert_eq!(rig.calls(TX), 1, "three chains");
    // used_event 5 in a pass 4..6: the guest still holds chain 4, so it is not idle.
    rig.tx.set_used_event(&rig.mem, 5);
    rig.post_tx(&frame(60, 74));
    rig.post_tx(&frame(60, 75));
    rig.event(TX);
    assert_eq!(rig.calls(TX), 1, "buffers not taken back");
    assert_eq!(rig.counters.tx_irq_held.get(), 0);

    let mut rig = Rig::new(FEATURES);
    rig.post_tx(&frame(60, 76));
    rig.event(TX);
    assert_eq!(rig.calls(TX), 1, "without EVENT_IDX");
    assert_eq!(rig.counters.tx_irq_held.get(), 0);
}

/// (14c) Without EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT suppresses interrupts on both rings.
#[test]
fn no_interrupt_flag_without_event_idx() {
    let mut rig = Rig::new(FEATURES);
    rig.tx
        .set_avail_flags(&rig.mem, VRING_AVAIL_F_NO_INTERRUPT as u16);
    rig.rx
        .set_avail_flags(&rig.mem, VRING_AVAIL_F_NO_INTERRUPT as u16);
    rig.post_tx(&frame(60, 50));
    rig.event(TX);
    rig.post_rx(2048, WRITE);
    rig.queue_rx(100, frame(100, 51));
    rig.event(RX);
    assert_eq!(rig.tx.used_idx(&rig.mem), 1);
    assert_eq!(rig.rx.used_idx(&rig.mem), 1);
    assert_eq!(rig.calls(TX), 0);
    assert_eq!(rig.calls(RX), 0);
    assert_eq!(rig.counters.interrupts.get(), 0);

    rig.tx.set_avail_flags(&rig.mem, 0);
    rig.rx.set_avail_flags(&rig.mem, 0);
    rig.post_tx(&frame(60, 52));
    rig.event(TX);
    rig.post_rx(2048, WRITE);
    rig.queue_rx(100, frame(100, 53));
    rig.event(RX);
    assert_eq!(rig.calls(TX), 1);
    assert_eq!(rig.calls(RX), 1);
    assert_eq!(rig.counters.interrupts.get(), 2);
}

// ---------------------------------------------------------------------------------------------
// A driver that claims more chains than the ring holds.

/// Runs `f` on another thread and waits for it; a hang fails the test instead of the run.
fn returns_promptly(rig: Rig, f: impl FnOnce(&mut Rig) + Send + 'static) -> Rig {
    let (done, wait) = mpsc::channel();
    std::thread::spawn(move || {
        let mut rig = rig;
        f(&mut rig);
        let _ = done.send(rig);
    });
    wait.recv_timeout(Duration::from_secs(20))
        .expect("handle_event did not return: the worker thread would spin forever")
}

/// (15a) An avail index more than a ring ahead of the device's (virtio-queue refuses to pop such a
/// ring) must not keep the TX pass looping.
#[test]
fn tx_bogus_avail_index_does_not_hang() {
    let mut rig = Rig::new(FEATURES);
    let size = rig.tx.size;
    rig.tx.set_avail_idx(&rig.mem, size + 1);
    let rig = returns_promptly(rig, |rig| rig.event(TX));
    assert!(rig.seen().is_empty());
    assert_eq!(rig.tx.used_idx(&rig.mem), 0);
}

/// (15b) The same on RX.
#[test]
fn rx_bogus_avail_index_does_not_hang() {
    let mut rig = Rig::new(FEATURES);
    let size = rig.rx.size;
    rig.rx.set_avail_idx(&rig.mem, size + 1);
    rig.queue_rx(100, frame(100, 60));
    let rig = returns_promptly(rig, |rig| rig.event(RX));
    assert!(rig.results()[0].is_err());
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
}

// ---------------------------------------------------------------------------------------------
// Checksum offloads (CSUM, GUEST_CSUM), each on and off.

const CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
const GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;

fn needs_csum_header() -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    h
}

#[test]
fn tx_partial_checksum_is_reported_only_with_csum_negotiated() {
    for (features, want) in [(FEATURES | CSUM, true), (FEATURES, false)] {
        let mut rig = Rig::new(features);
        rig.post_tx_with_header(&needs_csum_header(), &frame(60, 3));
        rig.post_tx(&frame(60, 4));
        rig.event(TX);
        let offloads = rig.handler.lock().unwrap().offloads.clone();
        let expected = vec![
            TxOffload {
                partial_csum: want,
                ..TxOffload::default()
            },
            TxOffload::default(),
        ];
        assert_eq!(offloads, expected, "features {features:#x}");
    }
}

#[test]
fn rx_partial_checksum_sets_needs_csum_only_with_guest_csum() {
    let want = PartialCsum {
        start: 34,
        offset: 16,
    };
    for (features, flagged) in [(FEATURES | GUEST_CSUM, true), (FEATURES, false)] {
        let mut rig = Rig::new(features);
        rig.handler.lock().unwrap().partial = Some(want);
        let (_, addr) = rig.post_rx(2048, WRITE);
        let f = frame(100, 5);
        rig.queue_rx(100, f.clone());
        rig.event(RX);
        assert_eq!(rig.results(), vec![Ok(())]);
        let got = rig.read(addr, HDR + 100);
        let hdr: [u8; HDR] = got[..HDR].try_into().unwrap();
        let expected = if flagged {
            // NEEDS_CSUM, csum_start 34, csum_offset 16, one buffer.
            [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 1, 0]
        } else {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        };
        assert_eq!(hdr, expected, "features {features:#x}");
        assert_eq!(got[HDR..], f[..]);
    }
}

#[test]
fn rx_gso_frames_only_with_guest_tso4() {
    let csum = PartialCsum {
        start: 34,
        offset: 16,
    };
    let tso4 = 1u64 << VIRTIO_NET_F_GUEST_TSO4;
    for (features, gso) in [
        (FEATURES | GUEST_CSUM | tso4, true),
        (FEATURES | GUEST_CSUM, false),
    ] {
        let mut rig = Rig::new(features);
        {
            let mut h = rig.handler.lock().unwrap();
            h.partial = Some(csum);
            h.tso = Some((GsoKind::Tcpv4, 1448, 54));
        }
        // A 4000-byte frame: more than one 1448-byte segment.
        let (_, addr) = rig.post_rx(8192, WRITE);
        let f = frame(4000, 6);
        rig.queue_rx(4000, f.clone());
        rig.event(RX);
        assert_eq!(rig.results(), vec![Ok(())]);
        let got = rig.read(addr, HDR + 4000);
        let hdr: [u8; HDR] = got[..HDR].try_into().unwrap();
        let expected = if gso {
            // NEEDS_CSUM, GSO_TCPV4, hdr_len 54, gso_size 1448, csum 34/16, one buffer.
            [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 1, 0]
        } else {
            [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 1, 0]
        };
        assert_eq!(hdr, expected, "features {features:#x}");
        assert_eq!(got[HDR..], f[..]);
    }
}

#[test]
fn tx_tso_frame_of_tens_of_kilobytes_reaches_the_handler_whole() {
    let host_tso4 = 1u64 << VIRTIO_NET_F_HOST_TSO4;
    let mut rig = Rig::new(FEATURES | CSUM | host_tso4);
    let mut hdr = needs_csum_header();
    hdr[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
    let f = frame(30000, 7);
    rig.post_tx_with_header(&hdr, &f);
    rig.event(TX);
    assert_eq!(rig.seen(), vec![f], "one 30000-byte frame, not resegmented");
    let offloads = rig.handler.lock().unwrap().offloads.clone();
    let want = TxOffload {
        partial_csum: true,
        ..TxOffload::default()
    };
    assert_eq!(offloads, vec![want]);
}

#[test]
fn rx_tcpv6_gso_frames_only_with_guest_tso6() {
    let csum = PartialCsum {
        start: 54,
        offset: 16,
    };
    let tso4 = 1u64 << VIRTIO_NET_F_GUEST_TSO4;
    let tso6 = 1u64 << VIRTIO_NET_F_GUEST_TSO6;
    for (features, gso) in [
        (FEATURES | GUEST_CSUM | tso6, true),
        (FEATURES | GUEST_CSUM | tso4, false),
        (FEATURES | tso6, false),
    ] {
        let mut rig = Rig::new(features);
        {
            let mut h = rig.handler.lock().unwrap();
            h.partial = Some(csum);
            h.tso = Some((GsoKind::Tcpv6, 1428, 74));
        }
        let (_, addr) = rig.post_rx(8192, WRITE);
        let f = frame(4000, 8);
        rig.queue_rx(4000, f.clone());
        rig.event(RX);
        assert_eq!(rig.results(), vec![Ok(())]);
        let got = rig.read(addr, HDR + 4000);
        let hdr: [u8; HDR] = got[..HDR].try_into().unwrap();
        let expected = if gso {
            // NEEDS_CSUM, GSO_TCPV6, hdr_len 74, gso_size 1428, csum 54/16, one buffer.
            [1, 4, 74, 0, 0x94, 0x05, 54, 0, 16, 0, 1, 0]
        } else if features & GUEST_CSUM != 0 {
            [1, 0, 0, 0, 0, 0, 54, 0, 16, 0, 1, 0]
        } else {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        };
        assert_eq!(hdr, expected, "features {features:#x}");
        assert_eq!(got[HDR..], f[..]);
    }
}

#[test]
fn tx_uso_frame_carries_its_segment_size_only_with_host_uso() {
    let host_uso = 1u64 << VIRTIO_NET_F_HOST_USO;
    for (features, want) in [
        (FEATURES | CSUM | host_uso, Some(1200)),
        (FEATURES | CSUM, None),
    ] {
        let mut rig = Rig::new(features);
        let mut hdr = needs_csum_header();
        hdr[1] = 5 | 0x80; // VIRTIO_NET_HDR_GSO_UDP_L4, with the ECN bit that must not matter
        hdr[2..4].copy_from_slice(&42u16.to_le_bytes());
        hdr[4..6].copy_from_slice(&1200u16.to_le_bytes());
        let f = frame(6000, 9);
        rig.post_tx_with_header(&hdr, &f);
        rig.event(TX);
        assert_eq!(rig.seen(), vec![f]);
        let offloads = rig.handler.lock().unwrap().offloads.clone();
        assert_eq!(offloads[0].udp_segment, want, "features {features:#x}");
    }
}

// ---------------------------------------------------------------------------------------------
// Batched RX (push_batch, for recvmmsg).

#[test]
fn rx_batch_fills_one_chain_per_frame_and_gives_the_rest_back() {
    let mut rig = Rig::new(FEATURES);
    rig.handler.lock().unwrap().batch = Some(4);
    let addrs: Vec<u64> = (0..4).map(|_| rig.post_rx(2048, WRITE).1).collect();
    let frames: Vec<Vec<u8>> = [100, 200, 300].iter().map(|&n| frame(n, n as u8)).collect();
    for f in &frames {
        rig.queue_rx(1514, f.clone());
    }
    rig.event(RX);
    assert_eq!(rig.handler.lock().unwrap().batch_results, vec![Ok(3)]);
    assert_eq!(
        rig.rx.used_idx(&rig.mem),
        3,
        "one used entry per frame, published once"
    );
    for (i, f) in frames.iter().enumerate() {
        let (_, len) = rig.rx.used_elem(&rig.mem, i as u16);
        assert_eq!(len as usize, HDR + f.len());
        let got = rig.read(addrs[i], HDR + f.len());
        assert_eq!(got[10..12], [1, 0], "num_buffers");
        assert_eq!(got[HDR..], f[..]);
    }
    // The fourth buffer went back to the ring: the next frame lands in it.
    rig.handler.lock().unwrap().batch = None;
    let last = frame(80, 9);
    rig.queue_rx(1514, last.clone());
    rig.event(RX);
    assert_eq!(rig.results(), vec![Ok(())]);
    assert_eq!(rig.rx.used_idx(&rig.mem), 4);
    assert_eq!(rig.read(addrs[3], HDR + 80)[HDR..], last[..]);
}

#[test]
fn rx_batch_stops_at_a_chain_too_small_for_a_whole_frame() {
    let mut rig = Rig::new(FEATURES);
    rig.handler.lock().unwrap().batch = Some(8);
    let (_, a) = rig.post_rx(2048, WRITE);
    let (_, small) = rig.post_rx(512, WRITE);
    let (_, c) = rig.post_rx(2048, WRITE);
    let frames: Vec<Vec<u8>> = (0..2u8).map(|i| frame(1000, i)).collect();
    for f in &frames {
        rig.queue_rx(1514, f.clone());
    }
    rig.event(RX);
    // The first batch lends one frame (the next chain cannot hold 1514 bytes); the second has
    // no whole chain to start with and falls back to a merged frame over the small chain and
    // the next one.
    assert_eq!(
        rig.handler.lock().unwrap().batch_results,
        vec![Ok(1), Ok(1)]
    );
    assert_eq!(rig.read(a, HDR + 1000)[HDR..], frames[0][..]);
    let first = rig.read(small, 512);
    assert_eq!(first[10..12], [2, 0], "merged over two buffers");
    let mut second = first[HDR..].to_vec();
    second.extend(rig.read(c, 1000 - (512 - HDR)));
    assert_eq!(second, frames[1]);
}

// ---------------------------------------------------------------------------------------------
// Dirty logging (VHOST_F_LOG_ALL) for live migration.

/// Whether the page holding `addr` is marked in guest memory's dirty bitmap.
fn dirty(mem: &Mem, addr: u64) -> bool {
    let (region, offset) = mem.to_region_addr(GuestAddress(addr)).unwrap();
    region.bitmap().dirty_at(offset.0 as usize)
}

/// What the frontend does when it syncs the log: it takes (clears) every mark.
fn sync_log(mem: &Mem) {
    for region in mem.iter() {
        region.bitmap().reset();
    }
}

/// The first address of every page `addr..addr+len` touches.
fn pages(addr: u64, len: u64) -> Vec<u64> {
    (addr / PAGE..=(addr + len - 1) / PAGE)
        .map(|p| p * PAGE)
        .collect()
}

/// A check run inside `fill`: every page in `lent` must already be marked; then the log is
/// synced (cleared), as the frontend may do at any moment while the handler writes.
fn check_marked_then_sync(rig: &Rig, lent: Vec<u64>) -> Arc<Mutex<Vec<u64>>> {
    let unmarked = Arc::new(Mutex::new(Vec::new()));
    let seen = unmarked.clone();
    let mem = rig.mem.clone();
    rig.handler.lock().unwrap().on_fill = Some(Box::new(move |_| {
        seen.lock()
            .unwrap()
            .extend(lent.iter().copied().filter(|&p| !dirty(&mem, p)));
        sync_log(&mem);
    }));
    unmarked
}

/// A frame spread over three buffers (MRG_RXBUF), the first of which straddles the boundary
/// between two memory regions and the last two pages: every page it lands on is marked before
/// the handler may write into it, and marked again once written, before the used index moves —
/// so a log sync between the two loses nothing. The used ring is marked; a buffer the frame did
/// not need is not.
#[test]
fn rx_dirty_log_marks_every_written_page_before_and_after_the_write() {
    let mut rig = Rig::new(FEATURES | LOG_ALL);
    let bufs = [
        (REGION_SPLIT - 0x400, 0x800u64),
        (REGION_SPLIT + 0x1_0000, 0x800),
        (REGION_SPLIT + 0x2_0F00, 0x1000),
        (REGION_SPLIT + 0x4_0000, 0x800),
    ];
    for &(addr, len) in &bufs {
        rig.post_rx_at(addr, len as usize);
    }
    let f = frame(5000, 3);
    rig.queue_rx(5000, f.clone());
    let lent: Vec<u64> = bufs[..3].iter().flat_map(|&(a, l)| pages(a, l)).collect();
    let unmarked = check_marked_then_sync(&rig, lent);
    sync_log(&rig.mem);

    rig.event(RX);

    assert_eq!(rig.results(), vec![Ok(())]);
    assert_eq!(rig.rx.used_idx(&rig.mem), 3);
    assert_eq!(
        *unmarked.lock().unwrap(),
        Vec::<u64>::new(),
        "pages lent to the handler before they were marked"
    );
    let written = [
        (bufs[0].0, 0x800),
        (bufs[1].0, 0x800),
        (bufs[2].0, HDR as u64 + 5000 - 0x1000),
    ];
    for &(addr, len) in &written {
        for p in pages(addr, len) {
            assert!(
                dirty(&rig.mem, p),
                "written page {p:#x} not marked after the write"
            );
        }
    }
    assert_eq!(
        pages(bufs[0].0, 0x800).len(),
        2,
        "the first buffer spans two pages"
    );
    assert_eq!(
        pages(bufs[2].0, written[2].1).len(),
        2,
        "so does the written part of the third"
    );
    assert!(dirty(&rig.mem, rig.rx.used), "used ring not marked");
    assert!(
        !dirty(&rig.mem, bufs[3].0),
        "a buffer the frame did not use was marked"
    );
    let mut whole = rig.read(bufs[0].0, 0x800);
    whole.extend(rig.read(bufs[1].0, 0x800));
    whole.extend(rig.read(bufs[2].0, written[2].1 as usize));
    assert_eq!(whole[HDR..], f[..]);
}

/// The batch path (one chain per frame) keeps the same promise, header included.
#[test]
fn rx_batch_dirty_log_marks_every_written_page_before_and_after_the_write() {
    let mut rig = Rig::new(FEATURES | LOG_ALL);
    rig.handler.lock().unwrap().batch = Some(2);
    let bufs = [
        (REGION_SPLIT - 0x300, 0x800u64),
        (REGION_SPLIT + 0x5_0F80, 0x800),
    ];
    for &(addr, len) in &bufs {
        rig.post_rx_at(addr, len as usize);
    }
    let frames = [frame(1000, 5), frame(1400, 6)];
    for f in &frames {
        rig.queue_rx(1514, f.clone());
    }
    let lent: Vec<u64> = bufs.iter().flat_map(|&(a, l)| pages(a, l)).collect();
    let unmarked = check_marked_then_sync(&rig, lent);
    sync_log(&rig.mem);

    rig.event(RX);

    assert_eq!(rig.handler.lock().unwrap().batch_results, vec![Ok(2)]);
    assert_eq!(*unmarked.lock().unwrap(), Vec::<u64>::new());
    for (&(addr, _), f) in bufs.iter().zip(&frames) {
        let len = (HDR + f.len()) as u64;
        assert_eq!(pages(addr, len).len(), 2);
        for p in pages(addr, len) {
            assert!(
                dirty(&rig.mem, p),
                "written page {p:#x} not marked after the write"
            );
        }
        assert_eq!(rig.read(addr + HDR as u64, f.len()), *f);
    }
    assert!(dirty(&rig.mem, rig.rx.used));
}

/// Without LOG_ALL the device leaves the log alone (vm-memory cannot see writes made through
/// recvmsg into raw pointers, so the marks above are the device's own work), and QEMU is
/// offered what it needs to allow migration at all.
#[test]
fn rx_without_log_all_marks_no_data_page_and_migration_features_are_offered() {
    let mut rig = Rig::new(FEATURES);
    assert_ne!(
        rig.dev.features() & LOG_ALL,
        0,
        "VHOST_F_LOG_ALL not offered"
    );
    assert!(rig
        .dev
        .protocol_features()
        .contains(vhost::vhost_user::message::VhostUserProtocolFeatures::LOG_SHMFD));
    let addr = REGION_SPLIT + 0x6_0000;
    rig.post_rx_at(addr, 0x800);
    rig.queue_rx(1000, frame(1000, 7));
    sync_log(&rig.mem);
    rig.event(RX);
    assert_eq!(rig.results(), vec![Ok(())]);
    assert!(!dirty(&rig.mem, addr));
}

/// A ring that starts (after a migration, on the destination) may hold used entries whose
/// interrupt the stopped VM lost: the device interrupts once per ring as it starts, and not
/// again on later passes with nothing new.
#[test]
fn rings_interrupt_once_when_they_start() {
    let mut rig = Rig::new(FEATURES | EVENT_IDX);
    assert_eq!(rig.start_calls, [1, 1]);
    rig.event(HANDLER_EVENT);
    rig.event(RX);
    assert_eq!((rig.calls(RX), rig.calls(TX)), (0, 0));
    assert_counts(&rig, &[]);
}

// ---------------------------------------------------------------------------------------------
// Device-state transfer (SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE).

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are fresh descriptors owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Save: the handler's state comes out of the pipe whole (more than a pipe holds, so the
/// device must not write it on the calling thread), then CHECK succeeds. Load: the same bytes
/// are taken over at CHECK; garbage is refused there with the handler's reason, and a CHECK
/// with no transfer is an error.
#[test]
fn device_state_saves_through_a_pipe_and_loads_or_refuses_at_check() {
    use std::io::{Read, Write};
    use vhost::vhost_user::message::{VhostTransferStateDirection as Dir, VhostTransferStatePhase};
    let mut rig = Rig::new(FEATURES);
    let stopped = VhostTransferStatePhase::STOPPED;
    assert!(rig
        .dev
        .protocol_features()
        .contains(vhost::vhost_user::message::VhostUserProtocolFeatures::DEVICE_STATE));

    let (mut r, w) = pipe();
    assert!(rig
        .dev
        .set_device_state_fd(Dir::SAVE, stopped, w)
        .unwrap()
        .is_none());
    let mut saved = Vec::new();
    r.read_to_end(&mut saved).unwrap();
    assert_eq!(saved, RECORDER_STATE);
    rig.dev.check_device_state().unwrap();

    for (bytes, ok) in [(RECORDER_STATE, true), (&b"garbage"[..], false)] {
        let (r, mut w) = pipe();
        assert!(rig
            .dev
            .set_device_state_fd(Dir::LOAD, stopped, r)
            .unwrap()
            .is_none());
        let writer = std::thread::spawn({
            let bytes = bytes.to_vec();
            move || w.write_all(&bytes)
        });
        let checked = rig.dev.check_device_state();
        writer.join().unwrap().unwrap();
        match (ok, checked) {
            (true, Ok(())) => {}
            (false, Err(e)) => assert!(e.to_string().contains("not the recorder's state"), "{e}"),
            (_, other) => panic!("load of {} bytes: {other:?}", bytes.len()),
        }
    }
    assert_eq!(rig.handler.lock().unwrap().loaded, 1);
    assert!(
        rig.dev.check_device_state().is_err(),
        "CHECK without a transfer"
    );
}

// Ring and chain configurations chosen to cost the worker as much as possible.

const INDIRECT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

/// Moves a ring's avail ring to guest address 0 and makes its index there claim one chain:
/// virtio-queue refuses to pop from such a ring while `enable_notification` sees work.
fn avail_ring_at_zero(rig: &mut Rig, queue: u16) {
    let ring = if queue == RX { &rig.rx } else { &rig.tx };
    let (desc, used) = (ring.desc, ring.used);
    rig.vrings[queue as usize]
        .set_queue_info(desc, 0, used)
        .unwrap();
    rig.mem.write_obj(1u16.to_le(), GuestAddress(2)).unwrap();
}

/// (h1a) An avail ring at guest address 0 does not keep the TX pass looping.
#[test]
fn tx_avail_ring_at_address_zero_does_not_hang() {
    let mut rig = Rig::new(FEATURES);
    avail_ring_at_zero(&mut rig, TX);
    let rig = returns_promptly(rig, |rig| rig.event(TX));
    assert!(rig.seen().is_empty());
}

/// (h1b) The same on RX, where the handler is pushing a frame.
#[test]
fn rx_avail_ring_at_address_zero_does_not_hang() {
    let mut rig = Rig::new(FEATURES);
    avail_ring_at_zero(&mut rig, RX);
    rig.queue_rx(100, frame(100, 61));
    let rig = returns_promptly(rig, |rig| rig.event(RX));
    assert!(rig.results()[0].is_err());
}

/// (h1c) A used ring outside guest memory: the ring is not used at all (nothing to write the
/// used entries to), and the worker returns.
#[test]
fn tx_used_ring_outside_memory_is_not_used() {
    let mut rig = Rig::new(FEATURES);
    let (desc, avail) = (rig.tx.desc, rig.tx.avail);
    rig.vrings[TX as usize]
        .set_queue_info(desc, avail, OUTSIDE)
        .unwrap();
    rig.post_tx(&frame(60, 62));
    let rig = returns_promptly(rig, |rig| rig.event(TX));
    assert!(
        rig.seen().is_empty(),
        "a ring that cannot be completed is not consumed"
    );
}

/// (h2) INDIRECT_DESC is not offered, so an indirect descriptor is a broken chain, not a table
/// to follow.
#[test]
fn tx_indirect_descriptor_refused() {
    let mut rig = Rig::new(FEATURES);
    assert_tx_dropped(&mut rig, "tx_broken_chain", |rig| {
        let hdr = rig.data(&[0u8; HDR]);
        let body = rig.data(&frame(60, 9));
        // A two-entry indirect table holding a perfectly good frame.
        let mut table = Vec::new();
        for (i, (addr, len)) in [(hdr, HDR as u32), (body, 60u32)].into_iter().enumerate() {
            table.extend_from_slice(&addr.to_le_bytes());
            table.extend_from_slice(&len.to_le_bytes());
            let flags = if i == 0 { NEXT } else { 0 };
            table.extend_from_slice(&flags.to_le_bytes());
            table.extend_from_slice(&1u16.to_le_bytes());
        }
        let table = rig.data(&table);
        vec![rig.post_tx_chain(&[(table, 32, INDIRECT)])]
    });
}

/// (h3) Zero-length descriptors count against the per-chain limit like any other: a chain of
/// MAX_SEGS + 1 descriptors, most of them empty, is too many segments.
#[test]
fn tx_zero_length_descriptors_count_against_the_limit() {
    let mut rig = Rig::new(FEATURES);
    assert_tx_dropped(&mut rig, "tx_too_many_segments", |rig| {
        let hdr = rig.data(&[0u8; HDR]);
        let body = rig.data(&frame(60, 10));
        let mut descs = vec![(hdr, HDR as u32, 0)];
        descs.extend((0..MAX_SEGS).map(|_| (body, 0, 0)));
        descs.push((body, 60, 0));
        vec![rig.post_tx_chain(&descs)]
    });
}

/// (h4) The same on RX: a chain of empty writable descriptors is not a buffer.
#[test]
fn rx_zero_length_descriptors_count_against_the_limit() {
    let mut rig = Rig::new(FEATURES);
    let addr = rig.buf(2048, 0xAA);
    let mut descs: Vec<_> = (0..MAX_SEGS).map(|_| (addr, 0, WRITE)).collect();
    descs.push((addr, 2048, WRITE));
    let head = rig.rx.chain(&rig.mem, &descs);
    rig.rx.post(&rig.mem, head);
    rig.queue_rx(100, frame(100, 63));
    rig.event(RX);
    assert!(rig.results()[0].is_err());
    assert_eq!(rig.rx.used_elem(&rig.mem, 0), (u32::from(head), 0));
    assert_eq!(rig.counters.rx_bad_chain.get(), 1);
}

/// (h5) A guest that posts a new TX frame for every one the device takes keeps a pass busy
/// forever unless the pass has a budget: it takes two rings' worth, then returns (and kicks
/// itself, so the rest is not stranded).
#[test]
fn tx_pass_ends_although_the_guest_keeps_posting() {
    let mut rig = Rig::with_sizes(FEATURES, 16, 16);
    let head = rig.post_tx(&frame(60, 11));
    let (avail, size, idx) = (rig.tx.avail, rig.tx.size, rig.tx.avail_idx);
    rig.handler.lock().unwrap().repost = Some(Repost {
        avail,
        size,
        idx,
        head,
    });
    let rig = returns_promptly(rig, |rig| rig.event(TX));
    let seen = rig.seen().len();
    assert_eq!(
        seen,
        2 * usize::from(size),
        "one pass takes two rings' worth"
    );
}

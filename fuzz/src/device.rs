//! The virtio-net device against a hostile guest driver: fuzzed features, ring sizes, ring
//! addresses (address 0, overlapping, unaligned and outside guest memory included) and guest
//! memory contents (descriptor tables with any flags, indirect tables, chains, lengths), set up
//! exactly as vhost-user-backend sets up a device, then kicked.
//!
//! Input: 1 byte of feature selection (a subset of what the device offers), 2 bytes of ring
//! sizes (log2 each), 6 x 2 bytes of ring addresses (descriptor table, avail, used for RX then
//! TX, in 8-byte units: 0 to 512 KiB, past the end of the 64 KiB of guest memory too), 1 byte
//! of events (bit i: event i of TX kick, RX kick, handler wake, repeated), then guest memory.
//!
//! The device, its rings and their state are made new for every input. What holds no state
//! across inputs once reset is made once per fuzzing thread and reset per input instead: the
//! guest memory mapping (zeroed, then the input's image written) and the eventfds (their
//! counters read back to zero).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::sync::{Arc, Mutex};

use podwire_frame::{NetHandler, RxSink, SgList};
use podwire_vhost::device::{HANDLER_EVENT, RX_QUEUE, TX_QUEUE};
use podwire_vhost::{DeviceCounters, NetConfig, NetDevice};
use vhost_user_backend::{VhostUserBackendMut, VringMutex, VringT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

type Mem = GuestMemoryMmap<()>;
type Vring = VringMutex<GuestMemoryAtomic<Mem>>;

const MEM_SIZE: usize = 0x1_0000;
const HEADER: usize = 1 + 2 + 12 + 1;

/// Reads every frame the guest sends; pushes two frames into the guest on each wake-up.
struct Handler {
    fd: RawFd,
}

/// What one fuzzing thread keeps from input to input (see the module comment).
struct Fixture {
    mem: GuestMemoryAtomic<Mem>,
    handler_fd: EventFd,
    /// Per ring: call, kick.
    ring_fds: [(EventFd, EventFd); 2],
}

impl Fixture {
    fn new() -> Option<Fixture> {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
        let fd = || EventFd::new(EFD_NONBLOCK).ok();
        Some(Fixture {
            mem: GuestMemoryAtomic::new(mem),
            handler_fd: fd()?,
            ring_fds: [(fd()?, fd()?), (fd()?, fd()?)],
        })
    }

    /// Back to the state a fresh fixture has, with `image` at the start of guest memory.
    fn reset(&self, image: &[u8]) {
        static ZERO: [u8; MEM_SIZE] = [0; MEM_SIZE];
        let mem = self.mem.memory();
        let _ = mem.write_slice(&ZERO, GuestAddress(0));
        let _ = mem.write_slice(&image[..image.len().min(MEM_SIZE)], GuestAddress(0));
        for fd in [&self.handler_fd]
            .into_iter()
            .chain(self.ring_fds.iter().flat_map(|(c, k)| [c, k]))
        {
            let _ = fd.read();
        }
    }
}

thread_local! {
    static FIXTURE: Option<Fixture> = Fixture::new();
}

impl NetHandler for Handler {
    fn guest_frame(&mut self, frame: &SgList<'_>, _rx: &mut dyn RxSink) {
        let mut bytes = vec![0u8; frame.len()];
        assert_eq!(frame.read(0, &mut bytes), frame.len());
    }

    fn poll_host(&mut self, rx: &mut dyn RxSink) {
        for len in [60usize, 1514] {
            let mut fill = |sg: &mut SgList<'_>| {
                let frame = vec![0x5a; len];
                sg.write(0, &frame).then_some(len)
            };
            let _ = rx.push(len, &mut fill);
        }
    }

    fn host_fd(&self) -> RawFd {
        self.fd
    }
}

fn file_of(fd: &EventFd) -> Option<File> {
    let dup = fd.try_clone().ok()?;
    // SAFETY: a fresh duplicate, owned by nobody else.
    Some(unsafe { File::from_raw_fd(dup.into_raw_fd()) })
}

fn u16_at(data: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([data[at], data[at + 1]])
}

/// The device target (see the module comment).
pub fn device(data: &[u8]) {
    if data.len() < HEADER {
        return;
    }
    FIXTURE.with(|fixture| {
        if let Some(fixture) = fixture {
            fixture.reset(&data[HEADER..]);
            run_device(data, fixture);
        }
    });
}

fn run_device(data: &[u8], fixture: &Fixture) {
    let handler = Arc::new(Mutex::new(Handler {
        fd: fixture.handler_fd.as_raw_fd(),
    }));
    let counters = Arc::new(DeviceCounters::default());
    let config = NetConfig {
        mac: [0x52, 0x54, 0, 0, 0, 1],
        mtu: 1500,
    };
    let Ok(mut dev) = NetDevice::new(handler, counters, config) else {
        return;
    };
    // SET_FEATURES: a subset of the offered features, chosen by the input.
    let offered = dev.features();
    let pick = u64::from(data[0])
        .wrapping_mul(0x0101_0101_0101_0101)
        .rotate_left(u32::from(data[0] & 63));
    let features = offered & (pick | 1 << 32);
    let atomic = fixture.mem.clone();
    let max = dev.max_queue_size() as u16;
    let Ok(vrings) = (0..dev.num_queues())
        .map(|_| Vring::new(atomic.clone(), max))
        .collect::<Result<Vec<Vring>, _>>()
    else {
        return;
    };
    let event_idx = features & (1 << 29) != 0;
    for v in &vrings {
        v.set_queue_event_idx(event_idx);
    }
    dev.set_event_idx(event_idx);
    dev.acked_features(features);
    // SET_MEM_TABLE
    if dev.update_memory(atomic).is_err() {
        return;
    }
    // SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE
    let sizes = [1u16 << (data[1] % 11), 1u16 << (data[2] % 11)];
    for ((q, v), (call, kick)) in vrings.iter().enumerate().zip(&fixture.ring_fds) {
        let addr = |i: usize| u64::from(u16_at(data, 3 + 2 * (3 * q + i))) * 8;
        v.set_queue_size(sizes[q]);
        if v.set_queue_info(addr(0), addr(1), addr(2)).is_err() {
            continue;
        }
        v.set_queue_next_used(v.queue_used_idx().unwrap_or(0));
        v.set_queue_next_avail(0);
        v.set_call(file_of(call));
        v.set_kick(file_of(kick));
        v.set_queue_ready(true);
        v.set_enabled(true);
    }
    let events = data[15];
    let order = [TX_QUEUE as u16, RX_QUEUE as u16, HANDLER_EVENT];
    for i in 0..8 {
        let event = if events & (1 << i) != 0 {
            order[i % 3]
        } else {
            order[(i + 1) % 3]
        };
        let _ = dev.handle_event(event, EventSet::IN, &vrings, 0);
    }
}

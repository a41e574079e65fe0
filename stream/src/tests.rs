//! The stream frontend against a scripted handler over a socket pair.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::*;

/// Records what the guest sent; produces queued frames when its eventfd is signalled.
struct Scripted {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    to_guest: Arc<Mutex<VecDeque<Vec<u8>>>>,
    wake: Arc<OwnedFd>,
    batches: Arc<Mutex<usize>>,
    refused_pushes: Arc<Mutex<usize>>,
}

impl NetHandler for Scripted {
    fn guest_frame(&mut self, frame: &SgList<'_>, _rx: &mut dyn RxSink) {
        let mut bytes = vec![0u8; frame.len()];
        frame.read(0, &mut bytes);
        self.seen.lock().unwrap().push(bytes);
    }

    fn tx_batch_done(&mut self, _rx: &mut dyn RxSink) {
        *self.batches.lock().unwrap() += 1;
    }

    fn poll_host(&mut self, rx: &mut dyn RxSink) {
        let mut counter = 0u64;
        // SAFETY: reading the 8-byte eventfd counter into a local.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut counter as *mut u64).cast(), 8) };
        let mut queue = self.to_guest.lock().unwrap();
        while let Some(frame) = queue.pop_front() {
            let pushed = rx.push(frame.len(), &mut |sg| {
                sg.write(0, &frame);
                Some(frame.len())
            });
            if pushed.is_err() {
                *self.refused_pushes.lock().unwrap() += 1;
                queue.push_front(frame);
                break;
            }
        }
    }

    fn host_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

struct Harness {
    peer: UnixStream,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    to_guest: Arc<Mutex<VecDeque<Vec<u8>>>>,
    wake: Arc<OwnedFd>,
    refused_pushes: Arc<Mutex<usize>>,
    counters: Arc<StreamCounters>,
    session: JoinHandle<SessionEnd>,
}

fn start() -> Harness {
    let (ours, peer) = UnixStream::pair().unwrap();
    // SAFETY: a fresh eventfd, owned by the OwnedFd from here on.
    let wake = Arc::new(unsafe {
        OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
    });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let to_guest = Arc::new(Mutex::new(VecDeque::new()));
    let refused_pushes = Arc::new(Mutex::new(0));
    let handler = Scripted {
        seen: seen.clone(),
        to_guest: to_guest.clone(),
        wake: wake.clone(),
        batches: Arc::new(Mutex::new(0)),
        refused_pushes: refused_pushes.clone(),
    };
    let counters = Arc::new(StreamCounters::default());
    let c = counters.clone();
    let session = std::thread::spawn(move || {
        let handler = Mutex::new(handler);
        serve_connection(ours, &handler, &c, None).unwrap()
    });
    Harness {
        peer,
        seen,
        to_guest,
        wake,
        refused_pushes,
        counters,
        session,
    }
}

impl Harness {
    fn wake_handler(&self) {
        let one = 1u64;
        // SAFETY: writing 8 bytes from a local to the eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

fn frame(len: usize, tag: u8) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
}

fn framed(f: &[u8]) -> Vec<u8> {
    let mut v = (f.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(f);
    v
}

#[test]
fn frames_split_across_writes_and_around_the_ring_arrive_whole() {
    let mut h = start();
    // Enough bytes to wrap the ring several times, written in odd-sized pieces so that lengths
    // and frames straddle reads and the ring's end.
    let frames: Vec<Vec<u8>> = (0..40)
        .map(|i| frame([60, 1514, 9000, 65549][i % 4], i as u8))
        .collect();
    let stream: Vec<u8> = frames.iter().flat_map(|f| framed(f)).collect();
    for piece in stream.chunks(7919) {
        h.peer.write_all(piece).unwrap();
    }
    h.peer.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(h.session.join().unwrap(), SessionEnd::Closed);
    let seen = h.seen.lock().unwrap();
    assert_eq!(seen.len(), frames.len());
    for (i, (a, b)) in seen.iter().zip(&frames).enumerate() {
        assert!(a == b, "frame {i} differs");
    }
    assert_eq!(h.counters.frames_in.get(), 40);
}

#[test]
fn impossible_lengths_drop_the_connection_and_are_counted() {
    for bad in [0u32, 13, (MAX_FRAME_LEN + 1) as u32, u32::MAX] {
        let mut h = start();
        // One good frame first: it is delivered, then the bad length ends the session.
        h.peer.write_all(&framed(&frame(60, 1))).unwrap();
        h.peer.write_all(&bad.to_be_bytes()).unwrap();
        h.peer.write_all(&[0u8; 64]).unwrap();
        assert_eq!(h.session.join().unwrap(), SessionEnd::BadLength(bad));
        assert_eq!(h.counters.drop_bad_length.get(), 1);
        assert_eq!(h.seen.lock().unwrap().len(), 1);
        // The frontend sees the connection closed.
        let mut rest = Vec::new();
        h.peer.read_to_end(&mut rest).unwrap();
    }
}

#[test]
fn frames_to_the_guest_carry_their_big_endian_length() {
    let mut h = start();
    let frames = [frame(60, 7), frame(1514, 9), frame(65549, 3)];
    h.to_guest.lock().unwrap().extend(frames.iter().cloned());
    h.wake_handler();
    for f in &frames {
        let mut len = [0u8; 4];
        h.peer.read_exact(&mut len).unwrap();
        assert_eq!(u32::from_be_bytes(len) as usize, f.len());
        let mut got = vec![0u8; f.len()];
        h.peer.read_exact(&mut got).unwrap();
        assert!(&got == f);
    }
    drop(h.peer);
    assert_eq!(h.session.join().unwrap(), SessionEnd::Closed);
    assert_eq!(h.counters.frames_out.get(), 3);
}

#[test]
fn a_frontend_that_does_not_read_gets_backpressure_not_growth() {
    let mut h = start();
    // Far more than the output buffer and the socket hold.
    let total = 100;
    h.to_guest
        .lock()
        .unwrap()
        .extend((0..total).map(|i| frame(65549, i as u8)));
    h.wake_handler();
    // The handler is refused once the buffer and the socket are full...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while *h.refused_pushes.lock().unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "never refused");
        std::thread::yield_now();
    }
    assert!(h.counters.rx_full.get() >= 1);
    // ...and everything arrives, in order, once the frontend reads.
    for i in 0..total {
        let mut len = [0u8; 4];
        h.peer.read_exact(&mut len).unwrap();
        let mut got = vec![0u8; u32::from_be_bytes(len) as usize];
        h.peer.read_exact(&mut got).unwrap();
        assert!(got == frame(65549, i as u8), "frame {i}");
    }
    drop(h.peer);
    assert_eq!(h.session.join().unwrap(), SessionEnd::Closed);
}

//! Guest UDP datagrams sent in batches: one `sendmmsg` per socket per TX pass, and runs of
//! same-sized datagrams to one destination coalesced into a single UDP GSO message.
//!
//! # Theory of operation
//!
//! A guest that sends UDP fast (pktgen, a DPDK application, a media server) hands podwire many
//! small datagrams per TX pass, most of them on one flow. Sending each with its own `sendmsg`
//! costs a syscall and a trip through the socket layer per packet. Instead, while the device
//! drains the TX ring, the NAT only records each datagram — the socket, the destination, and
//! iovecs that point at the payload in guest memory — and at the end of the pass
//! ([`crate::Nat::flush`], called before the used ring is published, so the guest cannot reuse
//! those buffers yet) it sends them all:
//!
//! - consecutive datagrams on the same socket, to the same destination, of the same size (the
//!   last may be shorter), become one message with a `UDP_SEGMENT` control message: the kernel
//!   builds one large datagram from the gathered payloads and segments it once (UDP GSO), up
//!   to [`MAX_RUN`] datagrams or 64 KiB. Only datagrams that fit the pod's MTU unfragmented are
//!   coalesced (the kernel refuses GSO otherwise), and a run the kernel still refuses is resent
//!   one datagram at a time;
//! - consecutive messages on the same socket go out in one `sendmmsg`.
//!
//! Order is kept per socket. Nothing is allocated per datagram: the batch's arrays are sized once.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::sock::{self, RawAddr};

/// Datagrams recorded before the batch must be sent.
pub const MAX_BATCH: usize = 64;
/// Most datagrams the kernel takes in one UDP GSO message (UDP_MAX_SEGMENTS before Linux 6.9).
pub const MAX_RUN: usize = 64;
/// Most payload bytes in one coalesced message: the IP packet stays under 64 KiB.
const MAX_RUN_BYTES: usize = 65000;
/// Iovecs one message may carry (UIO_MAXIOV).
const MAX_MSG_IOVS: usize = 1024;
/// `UDP_SEGMENT` from linux/udp.h.
const UDP_SEGMENT: libc::c_int = 103;

#[derive(Clone, Copy)]
struct Entry {
    fd: RawFd,
    dst: SocketAddr,
    /// Its iovecs: `iovs[iov_start..iov_start + iov_count]`.
    iov_start: usize,
    iov_count: usize,
    len: usize,
    /// A guest USO frame: already many datagrams of this size.
    segment: Option<u16>,
}

/// What a flush did, in datagrams (a guest USO frame counts once).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub sent: u64,
    pub failed: u64,
    /// Messages that carried more than one datagram.
    pub coalesced: u64,
    /// Syscalls made.
    pub syscalls: u64,
}

/// One message to send: a run of entries.
#[derive(Clone, Copy)]
struct Run {
    first: usize,
    count: usize,
    /// The UDP_SEGMENT size, when the message carries several datagrams.
    segment: Option<u16>,
}

pub struct UdpBatch {
    entries: Vec<Entry>,
    iovs: Vec<libc::iovec>,
    runs: Vec<Run>,
    msgs: Vec<libc::mmsghdr>,
    addrs: Vec<RawAddr>,
    controls: Vec<[u64; 4]>,
    /// Largest payload coalesced: bigger datagrams would not fit the pod's MTU.
    coalesce_max: usize,
}

// The raw pointers a batch holds (iovecs into guest memory, the message headers' pointers into
// the batch itself) are only dereferenced inside `flush`, which forgets them afterwards.
// SAFETY: `flush` runs on whichever thread owns the batch at that moment; moving an idle
// batch between threads moves nothing it could read.
unsafe impl Send for UdpBatch {}

impl UdpBatch {
    /// A batch that coalesces datagrams of at most `coalesce_max` payload bytes.
    pub fn new(coalesce_max: usize) -> UdpBatch {
        UdpBatch {
            entries: Vec::with_capacity(MAX_BATCH),
            iovs: Vec::with_capacity(MAX_BATCH * podwire_frame::MAX_SEGS),
            runs: Vec::with_capacity(MAX_BATCH),
            // SAFETY: mmsghdr is plain data; all-zero is a valid value.
            msgs: vec![unsafe { std::mem::zeroed() }; MAX_BATCH],
            addrs: vec![RawAddr::zeroed(); MAX_BATCH],
            controls: vec![[0u64; 4]; MAX_BATCH],
            coalesce_max,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a datagram of `iov_count` iovecs still fits.
    pub fn has_room(&self, iov_count: usize) -> bool {
        self.entries.len() < MAX_BATCH && self.iovs.len() + iov_count <= self.iovs.capacity()
    }

    /// Records a datagram. The memory `iov` points to must stay valid and unchanged until
    /// [`UdpBatch::flush`]; the caller checked [`UdpBatch::has_room`].
    pub fn push(
        &mut self,
        fd: RawFd,
        dst: SocketAddr,
        iov: &[libc::iovec],
        len: usize,
        segment: Option<u16>,
    ) {
        if !self.has_room(iov.len()) {
            return;
        }
        let iov_start = self.iovs.len();
        self.iovs.extend_from_slice(iov);
        self.entries.push(Entry {
            fd,
            dst,
            iov_start,
            iov_count: iov.len(),
            len,
            segment,
        });
    }

    /// Sends everything recorded, and forgets it.
    pub fn flush(&mut self) -> Flushed {
        let mut done = Flushed::default();
        if self.entries.is_empty() {
            return done;
        }
        self.plan_runs();
        let mut r = 0;
        while r < self.runs.len() {
            // Consecutive messages on one socket: one sendmmsg.
            let fd = self.entries[self.runs[r].first].fd;
            let mut end = r + 1;
            while end < self.runs.len() && self.entries[self.runs[end].first].fd == fd {
                end += 1;
            }
            self.send_runs(fd, r, end, &mut done);
            r = end;
        }
        self.entries.clear();
        self.iovs.clear();
        self.runs.clear();
        done
    }

    /// Splits the entries into messages: same socket, destination and size, within limits.
    fn plan_runs(&mut self) {
        self.runs.clear();
        let mut i = 0;
        while i < self.entries.len() {
            let head = self.entries[i];
            let mut count = 1;
            let (mut bytes, mut iovs) = (head.len, head.iov_count);
            let coalescible =
                head.segment.is_none() && head.len > 0 && head.len <= self.coalesce_max;
            while coalescible && i + count < self.entries.len() && count < MAX_RUN {
                let next = self.entries[i + count];
                let fits = next.fd == head.fd
                    && next.dst == head.dst
                    && next.segment.is_none()
                    && next.len > 0
                    && next.len <= head.len
                    && bytes + next.len <= MAX_RUN_BYTES
                    && iovs + next.iov_count <= MAX_MSG_IOVS;
                if !fits {
                    break;
                }
                count += 1;
                bytes += next.len;
                iovs += next.iov_count;
                // Only the last datagram may be shorter.
                if next.len < head.len {
                    break;
                }
            }
            let segment = match head.segment {
                Some(s) => Some(s),
                None if count > 1 => Some(head.len as u16),
                None => None,
            };
            self.runs.push(Run {
                first: i,
                count,
                segment,
            });
            i += count;
        }
    }

    /// Sends messages `runs[from..to]`, all on `fd`, with as few sendmmsg calls as it takes.
    fn send_runs(&mut self, fd: RawFd, from: usize, to: usize, done: &mut Flushed) {
        let n = to - from;
        for k in 0..n {
            let run = self.runs[from + k];
            let head = self.entries[run.first];
            let last = self.entries[run.first + run.count - 1];
            self.addrs[k] = RawAddr::new(head.dst);
            let iov_count = last.iov_start + last.iov_count - head.iov_start;
            // SAFETY: msghdr is plain data; zeroed is a valid starting point.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = self.addrs[k].as_mut_ptr().cast();
            hdr.msg_namelen = self.addrs[k].len();
            // The run's iovecs are contiguous: its datagrams were recorded one after another.
            hdr.msg_iov = self.iovs[head.iov_start..].as_mut_ptr();
            hdr.msg_iovlen = iov_count as _;
            if let Some(size) = run.segment {
                set_udp_segment(&mut hdr, &mut self.controls[k], size);
            }
            self.msgs[k] = libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            };
        }
        let mut k = 0;
        while k < n {
            // SAFETY: msgs[k..n] are valid headers whose pointers (addresses, iovecs into
            // guest memory the caller keeps mapped, control buffers) live in `self`.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    self.msgs[k..n].as_mut_ptr(),
                    (n - k) as u32,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            done.syscalls += 1;
            if sent > 0 {
                for j in k..k + sent as usize {
                    let run = self.runs[from + j];
                    done.sent += run.count as u64;
                    if run.count > 1 {
                        done.coalesced += 1;
                    }
                }
                k += sent as usize;
                continue;
            }
            // Message k failed. A coalesced one may be refused where single datagrams would
            // pass (a smaller path MTU): send those one by one; otherwise it is lost.
            let run = self.runs[from + k];
            if run.count > 1 {
                self.send_singly(fd, run, done);
            } else {
                done.failed += 1;
            }
            k += 1;
        }
    }

    fn send_singly(&mut self, fd: RawFd, run: Run, done: &mut Flushed) {
        for entry in &self.entries[run.first..run.first + run.count] {
            let iov = &self.iovs[entry.iov_start..entry.iov_start + entry.iov_count];
            done.syscalls += 1;
            match sock::send_to_raw(fd, iov, entry.dst) {
                Ok(_) => done.sent += 1,
                Err(_) => done.failed += 1,
            }
        }
    }
}

/// Attaches a UDP_SEGMENT control message of `size` to `hdr`, in `control`.
fn set_udp_segment(hdr: &mut libc::msghdr, control: &mut [u64; 4], size: u16) {
    *control = [0; 4];
    hdr.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic.
    hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as usize as _;
    // SAFETY: msg_control points at 32 zeroed bytes, more than CMSG_SPACE(2): the first header
    // and its two data bytes lie inside.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(hdr);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::copy_nonoverlapping(size.to_ne_bytes().as_ptr(), libc::CMSG_DATA(cmsg), 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn iov(data: &[u8]) -> libc::iovec {
        libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        }
    }

    fn receive_all(sink: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        sink.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            let len = sink.recv(&mut buf).unwrap();
            got.push(buf[..len].to_vec());
        }
        got
    }

    #[test]
    fn a_burst_on_one_flow_is_one_syscall_and_arrives_as_separate_datagrams() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let src = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dst = sink.local_addr().unwrap();
        // 40 datagrams of 100 bytes, the last of 30, each in two pieces.
        let payloads: Vec<Vec<u8>> = (0..41u8)
            .map(|i| vec![i; if i == 40 { 30 } else { 100 }])
            .collect();
        let mut batch = UdpBatch::new(1400);
        for p in &payloads {
            let (a, b) = p.split_at(10);
            batch.push(src.as_raw_fd(), dst, &[iov(a), iov(b)], p.len(), None);
        }
        let done = batch.flush();
        assert_eq!(done.sent, 41);
        assert_eq!((done.syscalls, done.coalesced), (1, 1));
        assert_eq!(
            receive_all(&sink, 41),
            payloads,
            "order and boundaries kept"
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn mixed_destinations_and_sizes_are_split_into_messages_of_one_sendmmsg() {
        let sink1 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sink2 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let src = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (d1, d2) = (sink1.local_addr().unwrap(), sink2.local_addr().unwrap());
        let a = [1u8; 50];
        let b = [2u8; 80];
        let big = [3u8; 1500];
        let mut batch = UdpBatch::new(1400);
        batch.push(src.as_raw_fd(), d1, &[iov(&a)], 50, None);
        batch.push(src.as_raw_fd(), d2, &[iov(&b)], 80, None);
        batch.push(src.as_raw_fd(), d1, &[iov(&big)], 1500, None);
        batch.push(src.as_raw_fd(), d1, &[iov(&big)], 1500, None);
        let done = batch.flush();
        assert_eq!(done.sent, 4);
        assert_eq!(done.coalesced, 0, "too big to coalesce");
        assert_eq!(done.syscalls, 1, "one socket: one sendmmsg");
        let got1 = receive_all(&sink1, 3);
        assert_eq!(got1[0], a);
        assert_eq!(got1[1].len(), 1500);
        assert_eq!(receive_all(&sink2, 1)[0], b);
    }

    #[test]
    fn a_guest_uso_frame_is_sent_as_its_datagrams() {
        let sink = UdpSocket::bind("[::1]:0").unwrap();
        let src = UdpSocket::bind("[::1]:0").unwrap();
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut batch = UdpBatch::new(1400);
        batch.push(
            src.as_raw_fd(),
            sink.local_addr().unwrap(),
            &[iov(&payload)],
            3000,
            Some(1200),
        );
        assert_eq!(batch.flush().sent, 1);
        let got = receive_all(&sink, 3);
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [1200, 1200, 600]
        );
        assert_eq!(got.concat(), payload);
    }

    #[test]
    fn failures_are_counted_and_the_rest_still_go_out() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let src = UdpSocket::bind("127.0.0.1:0").unwrap();
        let six = UdpSocket::bind("[::1]:0").unwrap().local_addr().unwrap();
        let data = [7u8; 10];
        let mut batch = UdpBatch::new(1400);
        // An IPv6 destination on an IPv4 socket is refused by the kernel.
        batch.push(src.as_raw_fd(), six, &[iov(&data)], 10, None);
        batch.push(
            src.as_raw_fd(),
            sink.local_addr().unwrap(),
            &[iov(&data)],
            10,
            None,
        );
        let done = batch.flush();
        assert_eq!((done.sent, done.failed), (1, 1));
        assert_eq!(receive_all(&sink, 1)[0], data);
    }
}

//! Packet capture (`--pcap FILE`): every frame to and from the guest, in pcap format. The
//! same wrapper also runs the control thread's jobs at the end of a pass (`mailbox.rs`).
//!
//! # Theory of operation
//!
//! [`Capturing`] wraps the dataplane's [`NetHandler`]: each call first loads one relaxed atomic
//! ([`Capture::is_on`]); when capture is off that is all it costs, and the call goes straight to
//! the wrapped handler with no copy and no system call. When it is on, frames from the guest are
//! copied out of guest memory before the handler sees them, and frames to the guest are copied
//! after the producer filled them (through a wrapping [`RxSink`]), into a reused buffer, and
//! appended to the file through `pcap-file`'s writer over a `BufWriter`, flushed at the end of
//! each dataplane call.
//!
//! Checksums are written as they would be on a wire: a frame with a partial checksum (the
//! guest's `NEEDS_CSUM`, or podwire's own towards a guest that took `GUEST_CSUM`) has its TCP or
//! UDP checksum completed in the copy, so tcpdump does not flag it. Segmentation-offload frames
//! (TSO/USO) are written as the one large frame that crossed the ring, as a capture on an
//! interface with GRO would show them.
//!
//! The file is capped: when it passes the cap it is renamed to `FILE.1` (replacing an older
//! one) and a new `FILE` is started, so at most twice the cap is ever on disk. Capture is switched
//! on and off at run time through the control socket.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use byteorder::NativeEndian;
use pcap_file::pcap::{PcapHeader, PcapPacket};
use pcap_file::{DataLink, Endianness, TsResolution};
use podwire_frame::{
    GsoKind, NetHandler, PartialCsum, RxError, RxSink, SgList, TxOffload, MAX_FRAME_LEN,
};

/// The capture's shared state: switched by the control thread, used by the dataplane.
#[derive(Debug)]
pub struct Capture {
    on: AtomicBool,
    path: Option<PathBuf>,
    max_bytes: u64,
    file: Mutex<Option<PcapFile>>,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Debug)]
struct PcapFile {
    writer: BufWriter<File>,
    written: u64,
}

const PCAP_HEADER_LEN: u64 = 24;
const PCAP_RECORD_HEADER_LEN: u64 = 16;

fn open_pcap(path: &Path) -> std::io::Result<PcapFile> {
    let header = PcapHeader {
        snaplen: MAX_FRAME_LEN as u32,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: if cfg!(target_endian = "big") {
            Endianness::Big
        } else {
            Endianness::Little
        },
        ..PcapHeader::default()
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut writer = BufWriter::new(file);
    header
        .write_to(&mut writer)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(PcapFile {
        writer,
        written: PCAP_HEADER_LEN,
    })
}

impl Capture {
    /// A capture to `path` (none: capture cannot be switched on), rotated at `max_bytes`.
    pub fn new(path: Option<PathBuf>, max_bytes: u64) -> Capture {
        Capture {
            on: AtomicBool::new(false),
            path,
            max_bytes: max_bytes.max(4096),
            file: Mutex::new(None),
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    #[inline]
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Starts (a fresh file) or stops capturing.
    pub fn set(&self, on: bool) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if on {
            let path = self.path.as_deref().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "no capture file: start podwire with --pcap FILE",
                )
            })?;
            if file.is_none() {
                *file = Some(open_pcap(path)?);
            }
        } else if let Some(mut f) = file.take() {
            let _ = f.writer.flush();
        }
        self.on.store(on, Ordering::Relaxed);
        Ok(())
    }

    fn record(&self, frame: &[u8]) {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let Some(file) = guard.as_mut() else {
            return;
        };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let packet = PcapPacket::new(ts, frame.len() as u32, frame);
        let written = packet.write_to::<_, NativeEndian>(
            &mut file.writer,
            TsResolution::MicroSecond,
            MAX_FRAME_LEN as u32,
        );
        if written.is_err() {
            podwire_frame::warn_once!("cannot write the capture file; capture stopped");
            *guard = None;
            self.on.store(false, Ordering::Relaxed);
            return;
        }
        file.written += PCAP_RECORD_HEADER_LEN + frame.len() as u64;
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
        if file.written >= self.max_bytes {
            self.rotate(&mut guard);
        }
    }

    fn rotate(&self, file: &mut Option<PcapFile>) {
        let Some(path) = self.path.as_deref() else {
            return;
        };
        if let Some(mut old) = file.take() {
            let _ = old.writer.flush();
        }
        let mut old_name = path.as_os_str().to_owned();
        old_name.push(".1");
        let _ = std::fs::rename(path, &old_name);
        match open_pcap(path) {
            Ok(f) => *file = Some(f),
            Err(e) => {
                tracing::warn!("cannot start a new capture file {}: {e}", path.display());
                self.on.store(false, Ordering::Relaxed);
            }
        }
    }

    fn flush(&self) {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = guard.as_mut() {
            let _ = f.writer.flush();
        }
    }
}

/// Completes the TCP or UDP checksum of an Ethernet frame whose checksum field holds only the
/// pseudo-header sum. Frames that are neither, or too short, are left alone.
fn complete_checksum(frame: &mut [u8]) {
    use podwire_nat::wire::{pseudo_header, ETH_LEN};
    let Some(ethertype) = frame.get(12..14) else {
        return;
    };
    let (src, dst, proto, l4) = match u16::from_be_bytes([ethertype[0], ethertype[1]]) {
        0x0800 => {
            let Some(ip) = frame.get(ETH_LEN..ETH_LEN + 20) else {
                return;
            };
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let src: [u8; 4] = ip[12..16].try_into().unwrap_or_default();
            let dst: [u8; 4] = ip[16..20].try_into().unwrap_or_default();
            let end = (ETH_LEN + total).min(frame.len());
            (src.into(), dst.into(), ip[9], ETH_LEN + ihl..end)
        }
        0x86dd => {
            let Some(ip) = frame.get(ETH_LEN..ETH_LEN + 40) else {
                return;
            };
            let payload = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let src: [u8; 16] = ip[8..24].try_into().unwrap_or_default();
            let dst: [u8; 16] = ip[24..40].try_into().unwrap_or_default();
            let end = (ETH_LEN + 40 + payload).min(frame.len());
            (src.into(), dst.into(), ip[6], ETH_LEN + 40..end)
        }
        _ => return,
    };
    let field = match proto {
        6 => 16,
        17 => 6,
        _ => return,
    };
    if l4.start + field + 2 > l4.end {
        return;
    }
    let segment = &mut frame[l4.clone()];
    segment[field..field + 2].copy_from_slice(&[0, 0]);
    let mut sum = pseudo_header(src, dst, proto, segment.len());
    sum.add(segment);
    let mut csum = sum.finish();
    if proto == 17 && csum == 0 {
        csum = 0xffff;
    }
    segment[field..field + 2].copy_from_slice(&csum.to_be_bytes());
}

/// A [`NetHandler`] that captures what passes through it (see the module comment).
pub struct Capturing<H> {
    inner: H,
    capture: std::sync::Arc<Capture>,
    scratch: Vec<u8>,
    mailbox: std::sync::Arc<crate::mailbox::Mailbox>,
}

impl<H> Capturing<H> {
    pub fn new(
        inner: H,
        capture: std::sync::Arc<Capture>,
        mailbox: std::sync::Arc<crate::mailbox::Mailbox>,
    ) -> Self {
        Capturing {
            inner,
            capture,
            scratch: Vec::new(),
            mailbox,
        }
    }

    pub fn inner(&self) -> &H {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut H {
        &mut self.inner
    }
}

/// Copies `len` bytes of `sg` into `scratch`, completes a partial checksum, records it.
fn record_sg(capture: &Capture, scratch: &mut Vec<u8>, sg: &SgList<'_>, len: usize, partial: bool) {
    let len = len.min(MAX_FRAME_LEN);
    scratch.resize(len, 0);
    let n = sg.read(0, &mut scratch[..len]);
    scratch.truncate(n);
    if partial {
        complete_checksum(scratch);
    }
    capture.record(scratch);
}

/// The guest's receive side, recording every frame the producer completes.
struct CaptureSink<'a> {
    inner: &'a mut dyn RxSink,
    capture: &'a Capture,
    scratch: &'a mut Vec<u8>,
}

impl RxSink for CaptureSink<'_> {
    fn push(
        &mut self,
        max_len: usize,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        let (capture, scratch) = (self.capture, &mut *self.scratch);
        self.inner.push(max_len, &mut |sg| {
            let len = fill(sg)?;
            record_sg(capture, scratch, sg, len, false);
            Some(len)
        })
    }

    fn partial_csum(&self) -> bool {
        self.inner.partial_csum()
    }

    fn push_partial(
        &mut self,
        max_len: usize,
        csum: PartialCsum,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        let (capture, scratch) = (self.capture, &mut *self.scratch);
        self.inner.push_partial(max_len, csum, &mut |sg| {
            let len = fill(sg)?;
            record_sg(capture, scratch, sg, len, true);
            Some(len)
        })
    }

    fn tso_max(&self, kind: GsoKind) -> usize {
        self.inner.tso_max(kind)
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
        let (capture, scratch) = (self.capture, &mut *self.scratch);
        self.inner
            .push_tso(max_len, csum, kind, mss, hdr_len, &mut |sg| {
                let len = fill(sg)?;
                record_sg(capture, scratch, sg, len, true);
                Some(len)
            })
    }

    fn push_batch(
        &mut self,
        count: usize,
        max_len: usize,
        csum: Option<PartialCsum>,
        fill: &mut dyn FnMut(&mut [SgList<'_>], &mut [usize]) -> usize,
    ) -> Result<usize, RxError> {
        let (capture, scratch) = (self.capture, &mut *self.scratch);
        self.inner
            .push_batch(count, max_len, csum, &mut |sgs, lens| {
                let used = fill(sgs, lens);
                for (sg, &len) in sgs.iter().zip(lens.iter()).take(used) {
                    if len > 0 {
                        record_sg(capture, scratch, sg, len, csum.is_some());
                    }
                }
                used
            })
    }
}

impl<H: NetHandler + AsMut<crate::switch::Switch>> Capturing<H> {
    /// Runs `f` on the inner handler with `rx` wrapped for capture when capture is on.
    #[inline]
    fn with_rx(&mut self, rx: &mut dyn RxSink, f: impl FnOnce(&mut H, &mut dyn RxSink)) {
        if !self.capture.is_on() {
            return f(&mut self.inner, rx);
        }
        let mut sink = CaptureSink {
            inner: rx,
            capture: &self.capture,
            scratch: &mut self.scratch,
        };
        f(&mut self.inner, &mut sink);
        self.capture.flush();
    }
}

impl<H: NetHandler + AsMut<crate::switch::Switch>> NetHandler for Capturing<H> {
    fn guest_frame(&mut self, frame: &SgList<'_>, rx: &mut dyn RxSink) {
        self.guest_frame_with(frame, TxOffload::default(), rx)
    }

    fn guest_frame_with(&mut self, frame: &SgList<'_>, tx: TxOffload, rx: &mut dyn RxSink) {
        if self.capture.is_on() {
            record_sg(
                &self.capture,
                &mut self.scratch,
                frame,
                frame.len(),
                tx.partial_csum,
            );
        }
        self.with_rx(rx, |h, rx| h.guest_frame_with(frame, tx, rx));
    }

    fn poll_host(&mut self, rx: &mut dyn RxSink) {
        self.with_rx(rx, |h, rx| h.poll_host(rx));
        // End of a pass: the control thread's job, if it posted one (see mailbox.rs).
        self.mailbox.run_pending(self.inner.as_mut());
    }

    fn tx_batch_done(&mut self, rx: &mut dyn RxSink) {
        self.with_rx(rx, |h, rx| h.tx_batch_done(rx));
        self.mailbox.run_pending(self.inner.as_mut());
    }

    fn host_fd(&self) -> RawFd {
        self.inner.host_fd()
    }

    fn link_changed(&mut self, up: bool) {
        self.inner.link_changed(up)
    }

    fn save_state(&mut self) -> Result<Vec<u8>, podwire_frame::StateError> {
        self.inner.save_state()
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), podwire_frame::StateError> {
        self.inner.load_state(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_a_partial_udp_checksum() {
        // Ethernet + IPv4 + UDP 10.0.2.2:68 -> 10.0.2.1:67, payload "hi", checksum holding the
        // pseudo-header sum only (what a guest with NEEDS_CSUM sends).
        let mut f = vec![0u8; 14 + 20 + 8 + 2];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&30u16.to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 2, 2]);
        f[30..34].copy_from_slice(&[10, 0, 2, 1]);
        f[34..36].copy_from_slice(&68u16.to_be_bytes());
        f[36..38].copy_from_slice(&67u16.to_be_bytes());
        f[38..40].copy_from_slice(&10u16.to_be_bytes());
        f[42..44].copy_from_slice(b"hi");
        let pseudo = podwire_nat::wire::pseudo_header(
            Ipv4Addr::new(10, 0, 2, 2).into(),
            Ipv4Addr::new(10, 0, 2, 1).into(),
            17,
            10,
        )
        .fold();
        f[40..42].copy_from_slice(&pseudo.to_be_bytes());
        complete_checksum(&mut f);
        let mut sum = podwire_nat::wire::pseudo_header(
            Ipv4Addr::new(10, 0, 2, 2).into(),
            Ipv4Addr::new(10, 0, 2, 1).into(),
            17,
            10,
        );
        sum.add(&f[34..]);
        assert_eq!(sum.fold(), 0xffff, "the completed checksum verifies");
    }

    use std::net::Ipv4Addr;

    #[test]
    fn rotation_keeps_one_old_file_and_caps_the_size() {
        let dir = std::env::temp_dir().join(format!("podwire-cap-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("c.pcap");
        let cap = Capture::new(Some(path.clone()), 4096);
        cap.set(true).unwrap();
        for _ in 0..20 {
            cap.record(&[0u8; 1000]);
        }
        cap.set(false).unwrap();
        let now = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.join("c.pcap.1")).unwrap().len();
        assert!(now <= 4096 + 1016 && old <= 4096 + 1016, "{now} {old}");
        assert_eq!(cap.frames.load(Ordering::Relaxed), 20);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn switching_on_without_a_file_is_refused() {
        let cap = Capture::new(None, 64 << 20);
        assert!(cap.set(true).is_err());
        assert!(!cap.is_on());
    }
}

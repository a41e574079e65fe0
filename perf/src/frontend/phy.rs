//! smoltcp's `phy::Device` over a [`NetDriver`]: smoltcp becomes the guest's network stack.
//!
//! Frames are copied between the rings and two buffers owned here (a load generator may copy;
//! the backend under test is what is measured). smoltcp never verifies TCP/UDP/ICMP checksums
//! on receive: a backend may mark a frame DATA_VALID (or NEEDS_CSUM with GUEST_CSUM) in its
//! virtio-net header and leave the checksum unset, which a Linux guest accepts; passt 2025-05
//! does so for TCP in vhost-user mode even when GUEST_CSUM was not negotiated (its checksums
//! are 0 unless it writes a pcap). The IPv4 header checksum is still verified.

use super::net::NetDriver;
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// The guest's MTU (the backends serve 1500 by default).
pub const MTU: usize = 1500;

pub struct RingPhy {
    pub driver: NetDriver,
    rx_frame: Vec<u8>,
    tx_frame: Vec<u8>,
    /// The first error the driver reported (a broken backend ends the run).
    pub error: Option<anyhow::Error>,
}

impl RingPhy {
    pub fn new(driver: NetDriver) -> RingPhy {
        RingPhy {
            driver,
            rx_frame: Vec::with_capacity(65536),
            tx_frame: Vec::with_capacity(65536),
            error: None,
        }
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
}

pub struct TxToken<'a> {
    driver: &'a mut NetDriver,
    frame: &'a mut Vec<u8>,
    error: &'a mut Option<anyhow::Error>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.frame.clear();
        self.frame.resize(len, 0);
        let r = f(self.frame);
        if trace() {
            eprintln!(
                "tx {}",
                smoltcp::wire::PrettyPrinter::<smoltcp::wire::EthernetFrame<&[u8]>>::new(
                    "",
                    &&self.frame[..]
                )
            );
        }
        if let Err(e) = self.driver.send(self.frame) {
            self.error.get_or_insert(e);
        }
        r
    }
}

impl phy::Device for RingPhy {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _ts: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        loop {
            match self.driver.recv(&mut self.rx_frame) {
                Ok(true) if self.rx_frame.is_empty() => continue, // counted as an rx error
                Ok(true) => break,
                Ok(false) => return None,
                Err(e) => {
                    self.error.get_or_insert(e);
                    return None;
                }
            }
        }
        if trace() {
            eprintln!(
                "rx {}",
                smoltcp::wire::PrettyPrinter::<smoltcp::wire::EthernetFrame<&[u8]>>::new(
                    "",
                    &&self.rx_frame[..]
                )
            );
        }
        Some((
            RxToken {
                frame: &self.rx_frame,
            },
            TxToken {
                driver: &mut self.driver,
                frame: &mut self.tx_frame,
                error: &mut self.error,
            },
        ))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            driver: &mut self.driver,
            frame: &mut self.tx_frame,
            error: &mut self.error,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU + 14;
        caps.max_burst_size = Some(1);
        let mut csum = ChecksumCapabilities::default();
        csum.udp = Checksum::Tx;
        csum.tcp = Checksum::Tx;
        csum.icmpv4 = Checksum::Tx;
        caps.checksum = csum;
        caps
    }
}

/// `PODWIRE_PINGPONG_TRACE=1` prints every frame (decoded by smoltcp) to stderr.
fn trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PODWIRE_PINGPONG_TRACE").is_some_and(|v| v == "1"))
}

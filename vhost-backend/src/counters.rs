//! Counters kept by the virtio-net device itself (the [`Counter`] type and the log-once macro
//! live in `podwire-frame`, shared with the NAT).

use podwire_frame::{nonzero_summary, Counter};

/// Counters kept by the virtio-net device itself.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    pub rx_frames: Counter,
    pub rx_bytes: Counter,
    /// Guest interrupts raised (used-buffer notifications).
    pub interrupts: Counter,
    /// TX chains dropped because a descriptor pointed outside guest memory.
    pub tx_bad_address: Counter,
    /// TX chains dropped because a descriptor was device-writable.
    pub tx_bad_direction: Counter,
    /// TX chains dropped for having more segments than podwire handles.
    pub tx_too_many_segments: Counter,
    /// TX chains dropped for being longer than the largest frame.
    pub tx_too_long: Counter,
    /// TX chains that loop, point outside the descriptor table or cannot be read.
    pub tx_broken_chain: Counter,
    /// TX chains shorter than the virtio-net header.
    pub tx_too_short: Counter,
    /// RX chains returned unused because they were malformed.
    pub rx_bad_chain: Counter,
    /// Frames not delivered because the guest had posted no (or too few) RX buffers.
    pub rx_no_buffers: Counter,
    /// Frontends refused because one was already connected.
    pub refused_frontends: Counter,
    /// Frontends served so far.
    pub sessions: Counter,
}

impl DeviceCounters {
    /// Every non-zero counter, for logs and status dumps.
    pub fn summary(&self) -> String {
        nonzero_summary(&[
            ("tx_frames", self.tx_frames.get()),
            ("tx_bytes", self.tx_bytes.get()),
            ("rx_frames", self.rx_frames.get()),
            ("rx_bytes", self.rx_bytes.get()),
            ("interrupts", self.interrupts.get()),
            ("tx_bad_address", self.tx_bad_address.get()),
            ("tx_bad_direction", self.tx_bad_direction.get()),
            ("tx_too_many_segments", self.tx_too_many_segments.get()),
            ("tx_too_long", self.tx_too_long.get()),
            ("tx_broken_chain", self.tx_broken_chain.get()),
            ("tx_too_short", self.tx_too_short.get()),
            ("rx_bad_chain", self.rx_bad_chain.get()),
            ("rx_no_buffers", self.rx_no_buffers.get()),
            ("refused_frontends", self.refused_frontends.get()),
            ("sessions", self.sessions.get()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_only_nonzero_counters() {
        let c = DeviceCounters::default();
        assert_eq!(c.summary(), "");
        c.tx_frames.add(3);
        c.rx_no_buffers.inc();
        assert_eq!(c.summary(), "tx_frames=3 rx_no_buffers=1");
    }
}

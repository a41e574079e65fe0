//! Counters kept by the virtio-net device itself, declared with `podwire_frame::counters!` (the
//! [`Counter`](podwire_frame::Counter) type and the log-once macro live in `podwire-frame`,
//! shared with the NAT).

podwire_frame::counters! {
    /// Counters kept by the virtio-net device itself.
    pub struct DeviceCounters {
        /// Frames the guest sent.
        tx_frames: Count,
        /// Bytes the guest sent.
        tx_bytes: Bytes,
        /// Frames delivered to the guest.
        rx_frames: Count,
        /// Bytes delivered to the guest.
        rx_bytes: Bytes,
        /// Guest interrupts raised (used-buffer notifications).
        interrupts: Count,
        /// Ring kicks from the guest (available-buffer notifications), RX and TX.
        kicks: Count,
        /// TX completion interrupts held back to go out with the answer (see `TxIrq`).
        tx_irq_held: Count,
        /// Held-back TX interrupts the guest no longer needed when they came due: it had
        /// taken its buffers back meanwhile.
        tx_irq_unneeded: Count,
        /// TX chains dropped because a descriptor pointed outside guest memory.
        tx_bad_address: Drop,
        /// TX chains dropped because a descriptor was device-writable.
        tx_bad_direction: Drop,
        /// TX chains dropped for having more segments than podwire handles.
        tx_too_many_segments: Drop,
        /// TX chains dropped for being longer than the largest frame.
        tx_too_long: Drop,
        /// TX chains that loop, point outside the descriptor table or cannot be read.
        tx_broken_chain: Drop,
        /// TX chains shorter than the virtio-net header.
        tx_too_short: Drop,
        /// RX chains returned unused because they were malformed.
        rx_bad_chain: Drop,
        /// Frames not delivered because the guest had posted no (or too few) RX buffers.
        rx_no_buffers: Drop,
        /// Frontends refused because one was already connected.
        refused_frontends: Count,
        /// Connections refused because the peer's uid may not be the frontend.
        refused_peers: Count,
        /// Frontends served so far.
        sessions: Count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_frame::CounterSet;

    #[test]
    fn summary_lists_only_nonzero_counters() {
        let c = DeviceCounters::default();
        assert_eq!(c.summary(), "");
        c.tx_frames.add(3);
        c.rx_no_buffers.inc();
        assert_eq!(c.summary(), "tx_frames=3 rx_no_buffers=1");
    }
}

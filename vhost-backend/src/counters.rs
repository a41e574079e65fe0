//! Counters kept by the virtio-net device itself, and the reasons it rejects descriptor chains,
//! declared once with `podwire_frame::counters!`: their names, the status line and the metrics
//! all come from here (the [`Counter`](podwire_frame::Counter) type and the log-once macro live
//! in `podwire-frame`, shared with the NAT).

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
        /// RX chains returned unused because they were malformed (for any [`ChainError`]).
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
    /// Why the device rejected a descriptor chain. A TX chain's reason bumps the counter after
    /// `=>`; a malformed RX chain, whatever the reason, counts as `rx_bad_chain`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum ChainError {
        /// TX chains dropped because a descriptor pointed outside guest memory.
        #[error("a descriptor points outside guest memory")]
        BadAddress => tx_bad_address,
        /// TX chains dropped because a descriptor was device-writable.
        #[error("a descriptor has the wrong direction")]
        BadDirection => tx_bad_direction,
        /// TX chains dropped for having more segments than podwire handles.
        #[error("more segments than podwire handles")]
        TooManySegments => tx_too_many_segments,
        /// TX chains dropped for being longer than the largest frame.
        #[error("longer than the largest frame")]
        TooLong => tx_too_long,
        /// TX chains that loop, point outside the descriptor table, cannot be read or use an
        /// indirect descriptor (INDIRECT_DESC is never offered).
        #[error("broken chain: {0}")]
        Broken(&'static str) => tx_broken_chain,
        /// TX chains shorter than the virtio-net and Ethernet headers.
        #[error("shorter than the virtio-net and Ethernet headers")]
        TooShort => tx_too_short,
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

    #[test]
    fn each_chain_error_bumps_its_own_tx_counter() {
        let all = [
            ChainError::BadAddress,
            ChainError::BadDirection,
            ChainError::TooManySegments,
            ChainError::TooLong,
            ChainError::Broken("a loop"),
            ChainError::TooShort,
        ];
        let names: Vec<&str> = all.iter().map(ChainError::name).collect();
        assert_eq!(names, ChainError::COUNTERS, "every reason, once");
        let c = DeviceCounters::default();
        for (k, e) in all.iter().enumerate() {
            for _ in 0..=k {
                e.counter(&c).inc();
            }
        }
        let mut seen = Vec::new();
        c.visit(&mut |d, v| {
            if v != 0 {
                seen.push((d.name, v));
            }
        });
        let want: Vec<(&str, u64)> = names.iter().zip(1..).map(|(n, v)| (*n, v)).collect();
        assert_eq!(seen, want);
    }
}

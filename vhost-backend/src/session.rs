//! What an operator wants to know about the current frontend session, published by the device
//! and the server for readers on other threads (the control socket, metrics).
//!
//! # Theory of operation
//!
//! The device and the server write a handful of relaxed atomics at the moments things change
//! (connect, feature negotiation, first ring event, disconnect); readers load them whenever they
//! like. Nothing here is on the per-frame path, and no reader ever takes a lock the dataplane
//! needs.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The frontend session as last published. Shared as `Arc<SessionInfo>`.
#[derive(Debug, Default)]
pub struct SessionInfo {
    /// Milliseconds since the Unix epoch when the current frontend connected; 0 when none is.
    connected_since_ms: AtomicU64,
    acked_features: AtomicU64,
    rx_ring_size: AtomicU32,
    tx_ring_size: AtomicU32,
}

/// A consistent-enough copy of [`SessionInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub connected_since_ms: Option<u64>,
    pub acked_features: u64,
    pub rx_ring_size: u32,
    pub tx_ring_size: u32,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl SessionInfo {
    pub fn connected(&self) {
        self.connected_since_ms
            .store(now_ms().max(1), Ordering::Relaxed);
    }

    /// The frontend went away: what it negotiated no longer holds.
    pub fn disconnected(&self) {
        self.connected_since_ms.store(0, Ordering::Relaxed);
        self.acked_features.store(0, Ordering::Relaxed);
        self.rx_ring_size.store(0, Ordering::Relaxed);
        self.tx_ring_size.store(0, Ordering::Relaxed);
    }

    pub fn set_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Relaxed);
    }

    pub fn set_rings(&self, rx: u32, tx: u32) {
        self.rx_ring_size.store(rx, Ordering::Relaxed);
        self.tx_ring_size.store(tx, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> SessionSnapshot {
        let since = self.connected_since_ms.load(Ordering::Relaxed);
        SessionSnapshot {
            connected_since_ms: (since != 0).then_some(since),
            acked_features: self.acked_features.load(Ordering::Relaxed),
            rx_ring_size: self.rx_ring_size.load(Ordering::Relaxed),
            tx_ring_size: self.tx_ring_size.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_clears_what_the_session_negotiated() {
        let s = SessionInfo::default();
        assert_eq!(s.snapshot().connected_since_ms, None);
        s.connected();
        s.set_features(1 << 5);
        s.set_rings(256, 256);
        let snap = s.snapshot();
        assert!(snap.connected_since_ms.is_some());
        assert_eq!((snap.acked_features, snap.rx_ring_size), (1 << 5, 256));
        s.disconnected();
        assert_eq!(s.snapshot(), SessionInfo::default().snapshot());
    }
}

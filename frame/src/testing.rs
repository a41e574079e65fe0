//! Test helpers for the crates above this one (feature `test-util`).
//!
//! # Theory of operation
//!
//! [`CaptureSink`] plays the guest's RX ring: every frame a producer pushes is written into
//! two buffers (as with mergeable RX buffers, headers and payload may straddle them) and kept
//! whole for the test to parse. A budget makes the ring "full" after so many frames, so that a
//! test can watch a producer stall and resume.

use crate::sg::SgList;
use crate::sink::{RxError, RxSink};

/// Collects what a producer delivers; refuses (the ring is full) once its budget is spent.
#[derive(Debug, Default)]
pub struct CaptureSink {
    /// Every frame delivered, in order.
    pub frames: Vec<Vec<u8>>,
    /// Frames the guest has RX buffers for; `None`: unlimited.
    pub budget: Option<usize>,
    /// Pushes refused with [`RxError::NoBuffers`].
    pub refused: usize,
}

impl CaptureSink {
    /// Takes the frames delivered so far.
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.frames)
    }
}

impl RxSink for CaptureSink {
    fn push(
        &mut self,
        max_len: usize,
        fill: &mut dyn FnMut(&mut SgList<'_>) -> Option<usize>,
    ) -> Result<(), RxError> {
        if self.budget == Some(0) {
            self.refused += 1;
            return Err(RxError::NoBuffers);
        }
        let mut a = vec![0u8; 40];
        let mut b = vec![0u8; max_len.max(60)];
        let len = {
            let mut slices: [&mut [u8]; 2] = [&mut a, &mut b];
            let mut sg = SgList::from_slices(&mut slices).map_err(|_| RxError::Abandoned)?;
            fill(&mut sg).ok_or(RxError::Abandoned)?
        };
        a.extend_from_slice(&b);
        a.truncate(len);
        self.frames.push(a);
        if let Some(b) = self.budget.as_mut() {
            *b -= 1;
        }
        Ok(())
    }
}

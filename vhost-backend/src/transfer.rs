//! Device-state transfer for live migration (vhost-user `SET_DEVICE_STATE_FD` /
//! `CHECK_DEVICE_STATE`, protocol feature `DEVICE_STATE`).
//!
//! # Theory of operation
//!
//! QEMU 10 migrates a vhost-user virtio-net backend's internal state inside its own migration
//! stream (the "virtio-net-device/backend" subsection, present when the backend offers
//! `DEVICE_STATE`). With the guest and the rings stopped it hands the backend one end of a pipe:
//!
//! - **save** (source): the backend writes its whole state into the pipe and closes it; QEMU
//!   reads to end of file, puts the bytes in the stream, then asks `CHECK_DEVICE_STATE`.
//! - **load** (destination): QEMU writes the bytes it received into the pipe and closes it, then
//!   asks `CHECK_DEVICE_STATE`; a failure there fails the incoming migration, and the source
//!   QEMU resumes the guest on its own backend, which never stopped serving.
//!
//! QEMU only reads (or writes) the pipe after the backend has replied to `SET_DEVICE_STATE_FD`,
//! so the transfer runs on a thread of its own: a state larger than the pipe's buffer would
//! otherwise block the vhost-user thread forever. `CHECK_DEVICE_STATE` joins that thread; on
//! load it is also where the bytes are handed to the [`NetHandler`] to be validated and applied,
//! so that a refusal is reported to QEMU rather than only logged.
//!
//! What the bytes mean is the handler's business (podwire's switch: `switch/src/state.rs`);
//! this module moves them and bounds them.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vhost::vhost_user::message::{VhostTransferStateDirection, VhostTransferStatePhase};

use podwire_frame::NetHandler;

/// Largest state accepted on load: a full flow table and the queued data of the TCP sockets
/// that travel with it (the switch puts at most 96 MiB of it in), small enough that a
/// frontend cannot make podwire hold an unbounded buffer.
pub const MAX_STATE_LEN: usize = 128 << 20;

/// A transfer started by `SET_DEVICE_STATE_FD` and not yet checked.
enum Pending {
    /// The writer thread, and whether the handler produced its state.
    Save(JoinHandle<std::io::Result<()>>),
    /// The reader thread; its bytes.
    Load(JoinHandle<std::io::Result<Vec<u8>>>),
}

/// The device's side of state transfers, one at a time.
#[derive(Default)]
pub struct StateTransfer {
    pending: Mutex<Option<Pending>>,
}

fn other(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

impl StateTransfer {
    /// `SET_DEVICE_STATE_FD`: starts moving the state through `file`.
    pub fn start<H: NetHandler>(
        &self,
        handler: &Arc<Mutex<H>>,
        direction: VhostTransferStateDirection,
        phase: VhostTransferStatePhase,
        mut file: File,
    ) -> std::io::Result<()> {
        if !matches!(phase, VhostTransferStatePhase::STOPPED) {
            return Err(other("device state can only be transferred while stopped"));
        }
        let pending = match direction {
            VhostTransferStateDirection::SAVE => {
                // Taken now, with the rings stopped: nothing changes it until the guest resumes.
                let state = lock(handler).save_state();
                let writer = std::thread::Builder::new()
                    .name("podwire-state-save".into())
                    .spawn(move || {
                        let state = state.map_err(|e| other(format!("saving state: {e}")))?;
                        tracing::info!("migration: sending {} bytes of device state", state.len());
                        file.write_all(&state)
                    })?;
                Pending::Save(writer)
            }
            VhostTransferStateDirection::LOAD => {
                let reader = std::thread::Builder::new()
                    .name("podwire-state-load".into())
                    .spawn(move || read_bounded(&mut file, MAX_STATE_LEN))?;
                Pending::Load(reader)
            }
        };
        if let Some(old) = lock(&self.pending).replace(pending) {
            // A frontend that starts a second transfer before checking the first: let the old
            // thread finish on its own (its pipe end is closed by the frontend).
            drop(old);
            tracing::warn!("migration: a device-state transfer replaced an unchecked one");
        }
        Ok(())
    }

    /// `CHECK_DEVICE_STATE`: waits for the transfer and, on load, has the handler take the
    /// state. An error here makes QEMU fail the migration.
    pub fn check<H: NetHandler>(&self, handler: &Arc<Mutex<H>>) -> std::io::Result<()> {
        let pending = lock(&self.pending).take();
        let result = match pending {
            None => Err(other("no device-state transfer to check")),
            Some(Pending::Save(writer)) => join(writer),
            Some(Pending::Load(reader)) => join(reader).and_then(|state| {
                lock(handler)
                    .load_state(&state)
                    .map_err(|e| other(format!("refused the migrated device state: {e}")))
                    .inspect(|()| {
                        tracing::info!("migration: took over {} bytes of device state", state.len())
                    })
            }),
        };
        if let Err(e) = &result {
            tracing::error!("migration: {e}");
        }
        result
    }
}

fn join<T>(t: JoinHandle<std::io::Result<T>>) -> std::io::Result<T> {
    t.join()
        .map_err(|_| other("device-state transfer thread panicked"))?
}

/// Reads `r` to its end, refusing more than `max` bytes.
fn read_bounded(r: &mut impl Read, max: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let n = r.take(max as u64 + 1).read_to_end(&mut buf)?;
    if n > max {
        return Err(other(format!(
            "device state longer than {max} bytes: refused"
        )));
    }
    Ok(buf)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_bounded_takes_up_to_the_limit_and_refuses_more() {
        assert_eq!(
            read_bounded(&mut &[1u8, 2, 3][..], 3).unwrap(),
            vec![1, 2, 3]
        );
        let e = read_bounded(&mut &[0u8; 4][..], 3).unwrap_err();
        assert!(e.to_string().contains("longer than 3 bytes"), "{e}");
    }
}

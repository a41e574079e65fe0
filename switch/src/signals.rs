//! Signals: `SIGUSR1` logs podwire's status, `SIGTERM`/`SIGINT` end it cleanly: the guest's
//! connections are reset towards their peers, as when the frontend goes away, and the socket
//! and pid files are removed.
//!
//! The signals are blocked in every thread and taken synchronously by one thread with
//! `sigwait`, so no handler runs in the middle of the dataplane and the status dump can simply
//! take the switch lock like any other reader.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use podwire_frame::CounterSet;
use podwire_vhost::DeviceCounters;

use crate::control::Handler;
use podwire_frame::NetHandler;

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set in place.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the signals podwire handles in the calling thread (and threads it spawns later).
pub fn block() -> io::Result<()> {
    let set = signal_set();
    // SAFETY: a valid set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// What podwire does to its flows before it exits on a signal: what the link going down does.
/// Every TCP peer sees a reset at once rather than a clean close of a stream that was cut
/// short (or a hang until its own timeout); datagram sockets are closed.
pub fn terminate(handler: &mut impl NetHandler) {
    handler.link_changed(false);
}

/// Starts the thread that waits for the signals.
pub fn spawn_handler(
    switch: Arc<Mutex<Handler>>,
    device: Arc<DeviceCounters>,
    leftovers: Vec<PathBuf>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("podwire-signals".into())
        .spawn(move || loop {
            let set = signal_set();
            let mut sig = 0;
            // SAFETY: a valid set and out-parameter.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if sig == libc::SIGUSR1 {
                let status = switch
                    .lock()
                    .map(|s| s.inner().status())
                    .unwrap_or_default();
                tracing::info!("status: {status}; device: {}", device.summary());
                continue;
            }
            tracing::info!("exiting on signal {sig}");
            if let Ok(mut switch) = switch.lock() {
                terminate(&mut *switch);
            }
            for path in &leftovers {
                let _ = std::fs::remove_file(path);
            }
            std::process::exit(0);
        })
        .map(drop)
}

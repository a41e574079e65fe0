//! Fuzz targets: one function per target, taking the fuzzer's bytes.
//!
//! # Theory of operation
//!
//! Each target feeds untrusted input to one of podwire's parsers or state machines the way the
//! real process does, with a fresh instance per input so that every crash reproduces from its
//! input alone. The same functions are called by the libFuzzer binaries in `fuzz_targets/`
//! (built with the `libfuzzer` feature, see docs/hardening.md) and by `tests/corpus.rs`, which
//! replays the kept corpus in `corpus/<target>/` on a stable toolchain as part of the test
//! suite.
//!
//! Inputs holding several messages (a DHCP exchange, a run of frames, a TCP conversation) are
//! split by [`records`]: a little-endian u16 length, then that many bytes (the last record
//! takes what is left).
//!
//! The switch and TCP targets open real sockets for what the guest sends: [`init`] first moves
//! the calling thread into a network namespace of its own with only a loopback interface, so
//! that no input ever sends a packet anywhere but there. That needs root (CAP_SYS_ADMIN);
//! without it those targets refuse to run rather than reach the host's network.
//!
//! The switch is a binary crate, so its modules are compiled in here by path.

#![allow(clippy::missing_safety_doc)]

#[allow(dead_code, unused_imports)]
#[path = "../../switch/src/config.rs"]
mod config;
#[allow(dead_code, unused_imports)]
#[path = "../../switch/src/podnet.rs"]
mod podnet;
#[allow(dead_code, unused_imports)]
#[path = "../../switch/src/state.rs"]
mod state;
/// `switch.rs` has a submodule in `switch/`: an inline module gives it its directory.
#[allow(dead_code, unused_imports)]
#[path = "../../switch/src"]
mod switch_src {
    pub mod switch;
}
use switch_src::switch;

pub mod device;
pub mod net;
pub mod targets;

pub use device::device;
pub use targets::*;

/// Sets up what the targets need: a private network namespace for this thread (see the module
/// comment). Idempotent per thread.
pub fn init() {
    net::isolate().unwrap_or_else(|e| {
        panic!("podwire-fuzz: cannot enter a private network namespace (run as root): {e}")
    });
}

/// Splits `data` into records: a little-endian u16 length, then the record.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let (record, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        Some(record)
    })
}

/// Joins records into one input (the inverse of [`records`]), for seeding corpora.
pub fn join_records(records: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&(r.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
        out.extend_from_slice(&r[..r.len().min(usize::from(u16::MAX))]);
    }
    out
}

/// The slowest input so far, in microseconds of wall-clock and of this thread's CPU time, and
/// how many took longer than [`SLOW`] (wall-clock).
static SLOWEST_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SLOWEST_CPU_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SLOW_INPUTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// What counts as a slow input (issue 10: none may take longer).
pub const SLOW: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs `target` on `data` and keeps the time it took: the slowest is printed at exit
/// (libFuzzer's own `-timeout` has a resolution of one second), and an input slower than
/// [`SLOW`] is written to `$PODWIRE_FUZZ_SLOW_DIR` when set, to be re-run alone (on a loaded
/// machine the scheduler alone can stall an input that long, which is why the CPU time the
/// input cost its thread is kept too).
pub fn timed(data: &[u8], target: fn(&[u8])) {
    use std::sync::atomic::Ordering;
    static REPORT_AT_EXIT: std::sync::Once = std::sync::Once::new();
    REPORT_AT_EXIT.call_once(|| {
        extern "C" fn report() {
            eprintln!(
                "podwire-fuzz: slowest input {} us wall-clock, {} us CPU; {} inputs over {} ms",
                SLOWEST_US.load(Ordering::Relaxed),
                SLOWEST_CPU_US.load(Ordering::Relaxed),
                SLOW_INPUTS.load(Ordering::Relaxed),
                SLOW.as_millis()
            );
        }
        // SAFETY: registers a plain function with no captured state.
        unsafe { libc::atexit(report) };
    });
    let start = std::time::Instant::now();
    let cpu_start = thread_cpu_us();
    target(data);
    let took = start.elapsed();
    SLOWEST_US.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
    SLOWEST_CPU_US.fetch_max(thread_cpu_us().saturating_sub(cpu_start), Ordering::Relaxed);
    if took > SLOW {
        let n = SLOW_INPUTS.fetch_add(1, Ordering::Relaxed);
        if let Some(dir) = std::env::var_os("PODWIRE_FUZZ_SLOW_DIR") {
            let path = std::path::Path::new(&dir).join(format!("slow-{n}-{}ms", took.as_millis()));
            let _ = std::fs::write(path, data);
        }
    }
}

/// CPU time this thread has used, in microseconds.
fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

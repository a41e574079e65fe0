//! Replays each fuzz target's kept corpus (`fuzz/corpus/<target>/`) through the same entry
//! points the fuzzer uses: a short run of every target in the test suite, on stable, without
//! the fuzzer. A crash the fuzzer found stays fixed once its input is in the corpus.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus for {target}");
    inputs
}

/// Replays on a thread of its own, so that an input that hangs fails the test (by the
/// deadline) instead of hanging the suite; a panic on that thread fails it too.
fn replay(target: &'static str, run: fn(&[u8])) {
    replay_some(target, run, |_| true, 1);
}

/// Replays the inputs whose file name `pick` accepts, each `times` times in a row.
fn replay_some(target: &'static str, run: fn(&[u8]), pick: fn(&str) -> bool, times: usize) {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (path, data) in corpus(target) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !pick(name) {
                continue;
            }
            eprintln!("{target}: {} x{times}", path.display());
            for _ in 0..times {
                run(&data);
            }
        }
        let _ = done.send(());
    });
    match wait.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{target}: an input did not return within 60 s")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("{target}: an input panicked")
        }
    }
}

/// The switch and TCP targets open sockets: only inside a private network namespace, which
/// needs root (as CI and the test machines are).
fn may_isolate() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: a private network namespace needs root");
    }
    root
}

#[test]
fn dhcpv4() {
    replay("dhcpv4", podwire_fuzz::dhcpv4);
}

#[test]
fn dhcpv6() {
    replay("dhcpv6", podwire_fuzz::dhcpv6);
}

#[test]
fn link6() {
    replay("link6", podwire_fuzz::link6);
}

#[test]
fn device() {
    replay("device", podwire_fuzz::device);
}

/// The ring configurations that kept the worker spinning before rings were validated (the
/// avail ring at guest address 0, rings overlapping or outside guest memory): whether one spun
/// depended on what earlier events left in the rings, so each runs fifty times in a row, as
/// it took to hang the unvalidated device every time.
#[test]
fn device_ring_regressions_return() {
    replay_some(
        "device",
        podwire_fuzz::device,
        |name| name.starts_with("regression-"),
        50,
    );
}

#[test]
fn relay() {
    replay("relay", podwire_fuzz::relay);
}

#[test]
fn switch_frames() {
    if may_isolate() {
        replay("switch_frames", podwire_fuzz::switch_frames);
    }
}

#[test]
fn tcp_segments() {
    if may_isolate() {
        let reached = std::thread::spawn(podwire_fuzz::tcp_target_reaches_the_peer);
        assert!(
            reached.join().unwrap(),
            "the TCP target's connection does not get established"
        );
        replay("tcp_segments", podwire_fuzz::tcp_segments);
    }
}

#[test]
fn records_split_and_join() {
    let joined = podwire_fuzz::join_records(&[b"ab", b"", b"cde"]);
    let back: Vec<&[u8]> = podwire_fuzz::records(&joined).collect();
    assert_eq!(back, vec![&b"ab"[..], b"", b"cde"]);
    // A length running past the end takes what is left.
    let short: Vec<&[u8]> = podwire_fuzz::records(&[9, 0, 1, 2]).collect();
    assert_eq!(short, vec![&[1u8, 2][..]]);
}

//! The socket's life: one frontend at a time, a clear refusal for a second, and the next
//! frontend served after the first goes away — all without a VM, speaking raw vhost-user.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use podwire_vhost::DeviceCounters;

mod common;

const GET_FEATURES: u32 = 1;

/// Sends GET_FEATURES and returns the feature bits from the reply.
fn get_features(conn: &mut UnixStream) -> std::io::Result<u64> {
    let mut req = [0u8; 12];
    req[..4].copy_from_slice(&GET_FEATURES.to_le_bytes());
    req[4..8].copy_from_slice(&1u32.to_le_bytes());
    conn.write_all(&req)?;
    let mut reply = [0u8; 20];
    conn.read_exact(&mut reply)?;
    assert_eq!(&reply[..4], &GET_FEATURES.to_le_bytes());
    Ok(u64::from_le_bytes(reply[12..20].try_into().unwrap()))
}

fn socket_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("podwire-test-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join("vhost.sock")
}

#[test]
fn one_frontend_at_a_time_refusal_then_reconnect() {
    let path = socket_path("serve");
    let (server, handler, counters) = common::bind(&path);
    std::thread::spawn(move || server.run());

    let timeout = Some(Duration::from_secs(10));
    let mut first = UnixStream::connect(&path).unwrap();
    first.set_read_timeout(timeout).unwrap();
    let features = get_features(&mut first).unwrap();
    assert_ne!(features & (1 << 32), 0, "VERSION_1 offered");
    assert_ne!(features & (1 << 15), 0, "MRG_RXBUF offered");
    assert_ne!(features & (1 << 29), 0, "EVENT_IDX offered");
    assert_ne!(features & (1 << 5), 0, "MAC offered");
    assert_ne!(features & (1 << 16), 0, "STATUS offered");

    // A second frontend is closed at once, not left hanging in the backlog.
    let mut second = UnixStream::connect(&path).unwrap();
    second.set_read_timeout(timeout).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(second.read(&mut buf).unwrap(), 0, "second frontend refused");
    assert_eq!(counters.refused_frontends.get(), 1);

    // The first still works.
    assert_eq!(get_features(&mut first).unwrap(), features);
    drop(first);

    // The next frontend on the same socket is served.
    let mut third = UnixStream::connect(&path).unwrap();
    third.set_read_timeout(timeout).unwrap();
    assert_eq!(get_features(&mut third).unwrap(), features);
    assert_eq!(counters.sessions.get(), 2);
    assert_eq!(
        handler.lock().unwrap().links.as_slice(),
        &[true, false, true],
        "the handler saw the link go down between the two sessions"
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

fn serve(path: &std::path::Path) -> Arc<DeviceCounters> {
    let (server, _, counters) = common::bind(path);
    std::thread::spawn(move || server.run());
    counters
}

/// Connects from a thread whose effective uid is `uid` (the raw system call changes only the
/// calling thread's credentials, which SO_PEERCRED records at connect).
fn connect_as(path: &std::path::Path, uid: u32) -> std::io::Result<UnixStream> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: a raw setresuid on this thread only; the thread ends right after.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, -1i32, uid, -1i32) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        UnixStream::connect(path)
    })
    .join()
    .unwrap()
}

#[test]
fn the_socket_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path("mode");
    // SAFETY: umask only changes the process's file creation mask.
    let old = unsafe { libc::umask(0) };
    let _counters = serve(&path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// Another local user cannot take the only frontend slot: it is refused at once and counted,
/// and the rightful frontend is served afterwards. (Needs root to act as another uid, which CI
/// and the test machines are.)
#[test]
fn a_frontend_of_another_uid_is_refused() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: acting as another uid needs root");
        return;
    }
    let path = socket_path("peercred");
    let counters = serve(&path);
    // The file mode keeps another user out...
    let denied = connect_as(&path, 65534).unwrap_err();
    assert_eq!(denied.kind(), std::io::ErrorKind::PermissionDenied);
    // ...and where it does not (a mode changed by hand, a shared directory), the peer check.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let timeout = Some(Duration::from_secs(10));
    let mut intruder = connect_as(&path, 65534).unwrap();
    intruder.set_read_timeout(timeout).unwrap();
    let mut buf = [0u8; 1];
    // Closed without an answer (or reset): no request of its is served.
    let _ = intruder.write_all(&[0u8; 12]);
    assert!(matches!(intruder.read(&mut buf), Ok(0) | Err(_)));
    assert_eq!(counters.refused_peers.get(), 1);
    assert_eq!(counters.sessions.get(), 0);

    let mut frontend = UnixStream::connect(&path).unwrap();
    frontend.set_read_timeout(timeout).unwrap();
    get_features(&mut frontend).unwrap();
    assert_eq!(counters.sessions.get(), 1);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

//! The socket's life: one frontend at a time, a clear refusal for a second, and the next
//! frontend served after the first goes away — all without a VM, speaking raw vhost-user.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podwire_vhost::{DeviceCounters, NetConfig, NetHandler, RxSink, Server, SgList};

struct NullHandler {
    fd: vmm_sys_util::eventfd::EventFd,
    links: Vec<bool>,
}

impl NetHandler for NullHandler {
    fn guest_frame(&mut self, _frame: &SgList<'_>, _rx: &mut dyn RxSink) {}
    fn poll_host(&mut self, _rx: &mut dyn RxSink) {}
    fn host_fd(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }
    fn link_changed(&mut self, up: bool) {
        self.links.push(up);
    }
}

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
    let handler = Arc::new(Mutex::new(NullHandler {
        fd: vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
        links: Vec::new(),
    }));
    let counters = Arc::new(DeviceCounters::default());
    let server = Server::bind(
        &path,
        handler.clone(),
        counters.clone(),
        NetConfig {
            mac: [0x52, 0x54, 0, 0, 0, 1],
            mtu: 1500,
        },
    )
    .unwrap();
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

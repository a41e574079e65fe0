//! What the device's integration tests share: the NIC's configuration, a handler that only
//! records the link going up and down, and a server bound on a socket with it.

// Each test crate uses a part of this module.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use podwire_vhost::{DeviceCounters, NetConfig, NetHandler, RxSink, Server, SgList};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The NIC every test device presents.
pub const CONFIG: NetConfig = NetConfig {
    mac: [0x52, 0x54, 0, 0, 0, 1],
    mtu: 1500,
};

/// A handler with no traffic of its own: it drops guest frames and records link changes.
pub struct Links {
    fd: EventFd,
    pub links: Vec<bool>,
}

impl Links {
    pub fn shared() -> Arc<Mutex<Links>> {
        Arc::new(Mutex::new(Links {
            fd: EventFd::new(EFD_NONBLOCK).unwrap(),
            links: Vec::new(),
        }))
    }
}

impl NetHandler for Links {
    fn guest_frame(&mut self, _frame: &SgList<'_>, _rx: &mut dyn RxSink) {}
    fn poll_host(&mut self, _rx: &mut dyn RxSink) {}
    fn host_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
    fn link_changed(&mut self, up: bool) {
        self.links.push(up);
    }
}

/// A server on `path` with a [`Links`] handler, not yet running.
pub fn bind(path: &Path) -> (Server<Links>, Arc<Mutex<Links>>, Arc<DeviceCounters>) {
    let handler = Links::shared();
    let counters = Arc::new(DeviceCounters::default());
    let server = Server::bind(path, handler.clone(), counters.clone(), CONFIG).unwrap();
    (server, handler, counters)
}

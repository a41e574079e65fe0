//! The vhost-user backend process of a session: podwire (this build or the `--podwire-before`
//! one) or passt (the kernel path has none).
//! Both are started in the pod namespace with the same guest addressing (198.19.0.2/24 behind
//! 198.19.0.1) and MTU, so the guest and the tests cannot tell them apart.

use super::*;
use podwire_perf::bench::passt::{self, Passt};

pub(crate) enum Served {
    Podwire(Podwire),
    Passt(Passt),
}

/// What a backend process is started with.
pub(crate) struct ServeOptions<'a> {
    pub(crate) mtu: Option<u32>,
    /// The guest's MAC, when the frontend never sends (testpmd rxonly).
    pub(crate) mac: Option<&'a str>,
    /// A UDP port of the pod forwarded to the guest.
    pub(crate) udp_forward: Option<u16>,
    /// podwire serves QEMU's stream netdev instead of vhost-user.
    pub(crate) stream: bool,
}

impl Served {
    pub(crate) fn spawn(
        env: &Env,
        backend: Backend,
        ns: &Netns,
        socket: &Path,
        o: &ServeOptions,
    ) -> Result<Served> {
        match backend {
            Backend::Podwire | Backend::PodwireBefore => {
                let mut cfg = PodwireConfig::new(socket);
                cfg.mtu = o.mtu;
                cfg.guest_cidr = Some(kernel_path::GUEST_CIDR.to_string());
                cfg.mac = o.mac.map(str::to_string);
                cfg.vhost_user = !o.stream;
                if let Some(p) = o.udp_forward {
                    cfg.extra_args = vec!["-u".into(), p.to_string()];
                }
                cfg.extra_args.extend(env.args.podwire_args.iter().cloned());
                let pw = Podwire::spawn_binary(env.podwire_binary(backend)?, Some(ns), &cfg)?;
                match bench::comm(pw.pid()) {
                    Some(c) if c == "podwire" => {}
                    other => bail!("pid {} is {other:?}, not podwire", pw.pid()),
                }
                Ok(Served::Podwire(pw))
            }
            Backend::Passt => {
                if o.stream {
                    bail!("the stream NIC is measured for podwire only");
                }
                let bin = env
                    .passt_bin
                    .context("passt is not available (see the start of the run)")?;
                let addr = kernel_path::GUEST_ADDR.to_string();
                let gw = kernel_path::GATEWAY.to_string();
                let mtu = o.mtu.map(|m| m.to_string());
                let port = o.udp_forward.map(|p| p.to_string());
                let mut extra = vec!["-q", "-a", &addr, "-n", "24", "-g", &gw];
                if let Some(m) = &mtu {
                    extra.extend(["-m", m]);
                }
                if let Some(p) = &port {
                    extra.extend(["-u", p]);
                }
                Ok(Served::Passt(Passt::spawn(ns, bin, socket, &extra)?))
            }
            Backend::Kernel => bail!("the kernel path has no backend process"),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        match self {
            Served::Podwire(p) => p.pid(),
            Served::Passt(p) => p.pid(),
        }
    }

    pub(crate) fn socket(&self) -> &Path {
        match self {
            Served::Podwire(p) => p.socket(),
            Served::Passt(p) => p.socket(),
        }
    }

    pub(crate) fn ensure_running(&mut self) -> Result<()> {
        match self {
            Served::Podwire(p) => p.ensure_running().context("podwire died"),
            Served::Passt(p) => p.proc_mut().ensure_running().context("passt died"),
        }
    }

    pub(crate) fn stop(&mut self) {
        match self {
            Served::Podwire(p) => {
                p.stop();
            }
            Served::Passt(p) => {
                p.proc_mut().stop();
            }
        }
    }
}

/// The passt binary for a run that measures passt: `$PODWIRE_PASST` or built from Debian's
/// source package; None (with the reason printed) if it cannot be had, and passt's figures are
/// then recorded as failed.
pub(crate) fn passt_binary(backends: &[Backend]) -> Option<PathBuf> {
    if !backends.contains(&Backend::Passt) {
        return None;
    }
    match passt::binary() {
        Ok(p) => {
            println!("passt: {} ({})", p.display(), passt::version(&p));
            Some(p)
        }
        Err(e) => {
            println!("passt is not available, its figures will be failed: {e:#}");
            None
        }
    }
}

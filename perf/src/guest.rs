//! The test guest's image (built by `perf/guest/build-image.sh`) and helpers
//! for what the guest does over its console (DHCP).

use crate::console::Console;
use crate::util::{self, workspace_root};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// The guest's kernel and initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// e.g. "6.1.0-56-cloud-amd64" (what `uname -r` says in the guest)
    pub kernel_version: String,
    /// The modules /init loads, in order (e.g. "virtio_ring.ko").
    pub modules: Vec<String>,
}

/// The build script.
pub fn build_script() -> PathBuf {
    workspace_root().join("perf/guest/build-image.sh")
}

/// Where the image is built: `PODWIRE_GUEST_DIR` or `perf/guest/out`.
pub fn out_dir() -> PathBuf {
    match std::env::var_os("PODWIRE_GUEST_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join("perf/guest/out"),
    }
}

/// Runs the build script into `out` (a no-op when it is up to date) and
/// returns the image.
pub fn build_image(out: &Path) -> Result<GuestImage> {
    let script = build_script();
    let mut cmd = Command::new("bash");
    cmd.arg(&script).arg(out);
    let output = util::run_cmd_output(&mut cmd)?;
    if !output.status.success() {
        bail!(
            "{} {} failed ({}):\n{}{}",
            script.display(),
            out.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    load_image(out)
}

/// Reads an already built image's description from `out`.
pub fn load_image(out: &Path) -> Result<GuestImage> {
    let read = |f: &str| {
        std::fs::read_to_string(out.join(f)).with_context(|| format!("{}/{f}", out.display()))
    };
    let img = GuestImage {
        kernel: out.join("vmlinuz"),
        initrd: out.join("initramfs.gz"),
        kernel_version: read("kernel-version")?.trim().to_string(),
        modules: read("modules")?.lines().map(str::to_string).collect(),
    };
    for p in [&img.kernel, &img.initrd] {
        if !p.is_file() {
            bail!("{} is missing", p.display());
        }
    }
    Ok(img)
}

static IMAGE: Mutex<Option<GuestImage>> = Mutex::new(None);

/// The guest image, built on first use in this process (concurrent callers
/// wait; concurrent processes serialise on the script's lock).
pub fn image() -> Result<GuestImage> {
    let mut g = IMAGE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(img) = g.as_ref() {
        return Ok(img.clone());
    }
    let img = build_image(&out_dir())?;
    *g = Some(img.clone());
    Ok(img)
}

/// What the guest's udhcpc got (its hook dumps the lease to
/// /run/udhcpc.IFACE.env).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    /// every variable udhcpc passed to its hook
    pub vars: BTreeMap<String, String>,
}

impl Lease {
    /// Parses `NAME=value` lines.
    pub fn parse(env: &str) -> Lease {
        let vars = env
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Lease { vars }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// The address (`ip`).
    pub fn ip(&self) -> Option<&str> {
        self.get("ip")
    }

    /// Prefix length (`mask`).
    pub fn prefix(&self) -> Option<u8> {
        self.get("mask")?.parse().ok()
    }

    /// Routers (option 3), in order.
    pub fn routers(&self) -> Vec<String> {
        self.list("router")
    }

    /// DNS servers (option 6).
    pub fn dns(&self) -> Vec<String> {
        self.list("dns")
    }

    /// Domain name (option 15).
    pub fn domain(&self) -> Option<&str> {
        self.get("domain")
    }

    /// Search list (option 119).
    pub fn search(&self) -> Vec<String> {
        self.list("search")
    }

    /// Interface MTU (option 26).
    pub fn mtu(&self) -> Option<u32> {
        self.get("mtu")?.parse().ok()
    }

    /// Lease time in seconds (option 51).
    pub fn lease_time(&self) -> Option<u32> {
        self.get("lease")?.parse().ok()
    }

    /// Server identifier (option 54).
    pub fn server_id(&self) -> Option<&str> {
        self.get("serverid")
    }

    /// Classless static routes (option 121) as (destination/prefix, gateway).
    pub fn static_routes(&self) -> Vec<(String, String)> {
        let items = self.list("staticroutes");
        items
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect()
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

/// Runs busybox udhcpc on `iface` in the guest (which configures address,
/// routes, MTU and /etc/resolv.conf through the hook) and returns the lease.
/// udhcpc quits once it has a lease; it sends DISCOVER up to `tries` times,
/// 1 s apart.
///
/// Besides busybox's default request list (subnet, router, dns, hostname,
/// domain, broadcast, ntpsrv) it asks, like common clients (dhcpcd,
/// systemd-networkd), for the MTU (26), the search list (119) and classless
/// static routes (121): see [`UDHCPC_EXTRA_OPTIONS`].
pub fn udhcpc(console: &mut Console, iface: &str, tries: u32, timeout: Duration) -> Result<Lease> {
    udhcpc_with(console, iface, UDHCPC_EXTRA_OPTIONS, tries, timeout)
}

/// The options [`udhcpc`] requests besides busybox's defaults.
pub const UDHCPC_EXTRA_OPTIONS: &str = "-O mtu -O search -O staticroutes";

/// [`udhcpc`] with more udhcpc arguments (e.g. `-o -O router` to request only
/// some options, `-r 198.18.0.9` to request an address).
pub fn udhcpc_with(
    console: &mut Console,
    iface: &str,
    extra_args: &str,
    tries: u32,
    timeout: Duration,
) -> Result<Lease> {
    let out = console
        .run_ok(
            &format!(
                "rm -f /run/udhcpc.{iface}.env; \
                 udhcpc -i {iface} -f -n -q -t {tries} -T 1 -A 1 {extra_args} 2>&1"
            ),
            timeout,
        )
        .with_context(|| format!("udhcpc on {iface}"))?;
    let env = console
        .run_ok(
            &format!("cat /run/udhcpc.{iface}.env"),
            Duration::from_secs(10),
        )
        .with_context(|| format!("udhcpc said:\n{out}"))?;
    Ok(Lease::parse(&env))
}

/// socat's address for a TCP connection to `ip`:`port`, either family.
pub fn socat_tcp(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V4(a) => format!("TCP4:{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("TCP6:[{a}]:{port}"),
    }
}

/// The first word of md5sum's output.
fn md5_of_output(out: &str) -> Result<String> {
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("md5sum printed nothing")
}

/// Fetches everything TCP `ip`:`port` sends, in the guest; returns its md5.
pub fn download_md5(
    console: &mut Console,
    ip: std::net::IpAddr,
    port: u16,
    timeout: Duration,
) -> Result<String> {
    let cmd = format!("socat -T 60 -u {} - | md5sum", socat_tcp(ip, port));
    md5_of_output(&console.run_ok(&cmd, timeout)?)
}

/// Sends `kib` KiB of random bytes from the guest to TCP `ip`:`port`; returns their md5.
pub fn upload_random(
    console: &mut Console,
    ip: std::net::IpAddr,
    port: u16,
    kib: u32,
    timeout: Duration,
) -> Result<String> {
    let cmd = format!(
        "dd if=/dev/urandom of=/tmp/upload bs=1024 count={kib} 2>/dev/null; \
         socat -T 60 -u FILE:/tmp/upload {}; md5sum < /tmp/upload",
        socat_tcp(ip, port)
    );
    md5_of_output(&console.run_ok(&cmd, timeout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_lease() {
        let l = Lease::parse(
            "dns=198.18.1.1 198.18.1.2\r\ndomain=podwire.test\ninterface=eth0\nip=198.18.0.2\n\
             lease=3600\nmask=24\nmtu=1400\nrouter=198.18.0.1\nsearch=a.test b.test\n\
             serverid=198.18.0.1\nstaticroutes=0.0.0.0/0 198.18.0.1 198.18.1.1/32 0.0.0.0\n\
             subnet=255.255.255.0\n",
        );
        assert_eq!(l.ip(), Some("198.18.0.2"));
        assert_eq!(l.prefix(), Some(24));
        assert_eq!(l.routers(), vec!["198.18.0.1"]);
        assert_eq!(l.dns(), vec!["198.18.1.1", "198.18.1.2"]);
        assert_eq!(l.domain(), Some("podwire.test"));
        assert_eq!(l.search(), vec!["a.test", "b.test"]);
        assert_eq!(l.mtu(), Some(1400));
        assert_eq!(l.lease_time(), Some(3600));
        assert_eq!(l.server_id(), Some("198.18.0.1"));
        assert_eq!(
            l.static_routes(),
            vec![
                ("0.0.0.0/0".to_string(), "198.18.0.1".to_string()),
                ("198.18.1.1/32".to_string(), "0.0.0.0".to_string())
            ]
        );
        assert_eq!(Lease::parse("").ip(), None);
        assert!(Lease::parse("").static_routes().is_empty());
    }

    #[test]
    fn paths() {
        assert!(build_script().ends_with("perf/guest/build-image.sh"));
        assert!(build_script().is_file());
    }
}

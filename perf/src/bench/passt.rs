//! passt, measured beside podwire: built from Debian's trixie source package by the harness
//! itself, and run with `--vhost-user` in the pod namespace.
//!
//! Debian 12 (the harness machine) ships a passt from 2023 without vhost-user, so [`binary`]
//! builds the 2025 one: it writes a `deb-src` entry for trixie into a sources file of its own
//! under `<target>/podwire-perf/passt/apt/`, runs `apt-get update` and `apt-get source
//! --download-only passt` with apt's list and source directories pointed there (the machine's
//! apt configuration is not touched), unpacks the upstream tarball (`*.orig.tar.xz`; the
//! package's `.dsc` is missing from the mirror, so `apt-get source` reports an error after
//! fetching the tarballs, and the Debian patches are not needed to build) and runs `make passt`.
//! The result is cached; concurrent callers serialise on a lock file. `$PODWIRE_PASST` names a
//! ready binary instead.

use crate::netns::{Netns, Proc};
use crate::util::{self, run_cmd_output, wait_until};
use anyhow::{bail, Context, Result};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The trixie deb-src entry the build uses (deb822 format).
const SOURCES: &str = "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: trixie\n\
Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

/// Where the build lives.
pub fn build_dir() -> PathBuf {
    util::target_dir().join("podwire-perf").join("passt")
}

/// The passt binary: `$PODWIRE_PASST`, else the one built from Debian's source package (built
/// now if it is not there yet; needs network access to the Debian mirror, gcc and make).
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PODWIRE_PASST").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("PODWIRE_PASST={} is not a file", p.display());
        }
        return Ok(p);
    }
    let dir = build_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let lock = std::fs::File::create(dir.join(".lock"))?;
    // SAFETY: flock(2) on a file we hold open; released when it is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the passt build");
    }
    if let Some(p) = built(&dir) {
        return Ok(p);
    }
    build(&dir)?;
    built(&dir).context("make passt left no passt binary")
}

/// A passt already built in `dir` (`passt-*/passt`).
fn built(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path().join("passt"))
        .find(|p| p.is_file())
}

fn build(dir: &Path) -> Result<()> {
    for tool in ["apt-get", "tar", "make", "cc"] {
        if !util::have_tool(tool) {
            bail!("building passt needs {tool}");
        }
    }
    let apt = dir.join("apt");
    let parts = apt.join("sources.list.d");
    let lists = apt.join("lists");
    std::fs::create_dir_all(lists.join("partial"))?;
    std::fs::create_dir_all(&parts)?;
    std::fs::write(parts.join("trixie-src.sources"), SOURCES)?;
    std::fs::write(apt.join("sources.list"), "")?;
    let apt_opts = [
        format!(
            "-oDir::Etc::SourceList={}",
            apt.join("sources.list").display()
        ),
        format!("-oDir::Etc::SourceParts={}", parts.display()),
        format!("-oDir::State::Lists={}", lists.display()),
    ];
    let src = dir.join("src");
    std::fs::create_dir_all(&src)?;
    let mut update = Command::new("apt-get");
    update.arg("-q").args(&apt_opts).arg("update");
    util::run_cmd(&mut update).context("apt-get update (trixie deb-src)")?;
    let mut source = Command::new("apt-get");
    source
        .current_dir(&src)
        .arg("-q")
        .args(&apt_opts)
        .args(["source", "--download-only", "passt"]);
    // fails on the missing .dsc after fetching the tarballs: judged by what it left
    let out = run_cmd_output(&mut source)?;
    let orig = std::fs::read_dir(&src)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("passt_") && n.contains(".orig.tar"))
        })
        .with_context(|| {
            format!(
                "apt-get source passt fetched no upstream tarball: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    util::run(&[
        "tar",
        "-xf",
        &orig.display().to_string(),
        "-C",
        &dir.display().to_string(),
    ])?;
    let tree = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("passt-"))
        })
        .context("the passt tarball unpacked no passt-* directory")?;
    let mut make = Command::new("make");
    make.current_dir(&tree).arg("passt");
    util::run_cmd(&mut make).context("make passt")?;
    Ok(())
}

/// passt's version: the name of the source tree it was built in (`passt-2025_05_03.587980c`;
/// a `make passt` build from the tarball prints no version of its own), else "unknown".
pub fn version(bin: &Path) -> String {
    bin.parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .filter(|n| n.starts_with("passt-"))
        .map_or_else(|| "unknown".to_string(), str::to_string)
}

/// A passt serving vhost-user on `socket` in a namespace, stopped on drop.
#[derive(Debug)]
pub struct Passt {
    proc: Proc,
    socket: PathBuf,
}

impl Passt {
    /// `passt --vhost-user --socket SOCKET -f EXTRA...` in `ns`; returns once the socket exists.
    pub fn spawn(ns: &Netns, bin: &Path, socket: &Path, extra: &[&str]) -> Result<Passt> {
        let _ = std::fs::remove_file(socket);
        let bin_s = bin.display().to_string();
        let sock_s = socket.display().to_string();
        let mut argv = vec![bin_s.as_str(), "--vhost-user", "--socket", &sock_s, "-f"];
        argv.extend_from_slice(extra);
        let mut proc = ns.spawn("passt", &argv)?;
        wait_until(
            &format!("passt's socket {}", socket.display()),
            Duration::from_secs(20),
            || {
                proc.ensure_running()?;
                Ok(socket.exists())
            },
        )?;
        Ok(Passt {
            proc,
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        self.proc.stop();
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(self.socket.with_extension("sock.repair"));
    }
}

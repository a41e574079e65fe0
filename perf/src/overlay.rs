//! Extra files for the test guest without rebuilding its image.
//!
//! Linux unpacks an initramfs made of several cpio archives one after the other (each may be
//! compressed or not), later files replacing earlier ones. [`initrd_with`] appends to the
//! guest's `initramfs.gz` an uncompressed newc archive holding host files (e.g. a test tool
//! built by cargo) at the given guest paths, together with the shared libraries `ldd` says they
//! need that the base image does not already have.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use podwire_perf::{guest, overlay, QemuConfig};
//! let mut image = guest::image()?;
//! let out = std::path::Path::new("/tmp/initrd-with-tool");
//! overlay::initrd_with(&image.initrd, &[("/usr/bin/tool", "target/debug/tool".as_ref())], out)?;
//! image.initrd = out.to_path_buf();
//! let cfg = QemuConfig::new(&image);
//! # Ok(()) }
//! ```

use crate::util;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Component, Path};
use std::process::{Command, Stdio};

/// What one entry of a newc archive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// One archive entry: a path relative to the root (no leading `/`), its mode bits (without the
/// file type) and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub perm: u32,
    pub kind: Kind,
}

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
/// Inode numbers of the overlay's entries (never shared: no entry is a hard link).
const FIRST_INO: u32 = 0x0070_0000;

fn pad4(out: &mut Vec<u8>) {
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

/// A newc ("070701") archive of `entries`, in order, ending with the trailer. Owner root,
/// modification time 0.
pub fn newc(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let push = |out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, nlink: u32, data: &[u8]| {
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // dev major
            0, // dev minor
            0, // rdev major
            0, // rdev minor
            name.len() as u32 + 1,
            0, // check
        ];
        out.extend_from_slice(MAGIC);
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(data);
        pad4(out);
    };
    for (i, e) in entries.iter().enumerate() {
        let ino = FIRST_INO + i as u32;
        let perm = e.perm & 0o7777;
        match &e.kind {
            Kind::Dir => push(&mut out, ino, &e.path, S_IFDIR | perm, 2, &[]),
            Kind::File(data) => push(&mut out, ino, &e.path, S_IFREG | perm, 1, data),
            Kind::Symlink(target) => push(
                &mut out,
                ino,
                &e.path,
                S_IFLNK | 0o777,
                1,
                target.as_bytes(),
            ),
        }
    }
    push(&mut out, 0, TRAILER, 0, 1, &[]);
    out
}

/// The entries of one or more concatenated (uncompressed) newc archives, up to the end of
/// `data` (zero padding between archives is skipped). Names lose a leading `./` or `/`; the
/// root (`.`) is left out.
pub fn parse_newc(data: &[u8]) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut pos = 0;
    loop {
        while pos < data.len() && data[pos] == 0 {
            pos += 1;
        }
        if pos >= data.len() {
            return Ok(entries);
        }
        if data.len() - pos < HEADER_LEN || &data[pos..pos + 6] != MAGIC {
            bail!("no newc header at offset {pos}");
        }
        let field = |i: usize| -> Result<usize> {
            let s = std::str::from_utf8(&data[pos + 6 + 8 * i..pos + 14 + 8 * i])?;
            Ok(usize::from_str_radix(s, 16)?)
        };
        let (mode, size, namesize) = (field(1)? as u32, field(6)?, field(11)?);
        let name_at = pos + HEADER_LEN;
        let data_at = (name_at + namesize + 3) & !3;
        let end = (data_at + size + 3) & !3;
        if namesize == 0 || data_at + size > data.len() {
            bail!("truncated newc entry at offset {pos}");
        }
        let name = String::from_utf8_lossy(&data[name_at..name_at + namesize - 1]).into_owned();
        pos = end;
        if name == TRAILER {
            continue;
        }
        let content = &data[data_at..data_at + size];
        let kind = match mode & 0o170000 {
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink(String::from_utf8_lossy(content).into_owned()),
            _ => Kind::File(content.to_vec()),
        };
        let path = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        if path.is_empty() || path == "." {
            continue;
        }
        entries.push(Entry {
            path,
            perm: mode & 0o7777,
            kind,
        });
    }
}

/// Reads an initramfs image: gzip-compressed (as the guest image's is) or not.
fn read_image(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut child = Command::new("gzip")
        .args(["-dc"])
        .stdin(std::fs::File::open(path)?)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run gzip -dc")?;
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out)?;
    let st = child.wait()?;
    if !st.success() {
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err)?;
        bail!("gzip -dc {} failed ({st}): {err}", path.display());
    }
    Ok(out)
}

/// The paths an image holds (`kind` of each), with its symlinks.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: BTreeMap<String, Kind>,
}

impl Listing {
    /// Lists an initramfs file (see [`parse_newc`]).
    pub fn of_image(path: &Path) -> Result<Listing> {
        let entries = parse_newc(&read_image(path)?)
            .with_context(|| format!("listing {}", path.display()))?;
        Ok(Listing {
            entries: entries.into_iter().map(|e| (e.path, e.kind)).collect(),
        })
    }

    /// `path` (absolute or relative to the root) with every symlinked directory on the way
    /// replaced by its target, as the guest will see it (so that `lib/x/libc.so.6` becomes
    /// `usr/lib/x/libc.so.6` when `lib -> usr/lib`). The last component is kept as it is.
    pub fn resolve_dirs(&self, path: &str) -> String {
        let mut parts: Vec<String> = clean(path);
        let Some(last) = parts.pop() else {
            return String::new();
        };
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while !parts.is_empty() {
            let next = parts.remove(0);
            done.push(next);
            if let Some(Kind::Symlink(target)) = self.entries.get(&done.join("/")) {
                hops += 1;
                if hops > 16 {
                    break;
                }
                done.pop();
                let base = if target.starts_with('/') {
                    Vec::new()
                } else {
                    done.clone()
                };
                let mut expanded = clean(&format!("{}/{}", base.join("/"), target));
                expanded.append(&mut parts);
                parts = expanded;
                done.clear();
            }
        }
        done.push(last);
        done.join("/")
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path)
    }
}

/// Path components without `.`, `..` resolved lexically, no root.
fn clean(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The shared libraries (and the dynamic loader) `ldd` reports for `bin`, as absolute paths;
/// none for a static binary.
pub fn shared_libraries(bin: &Path) -> Result<Vec<String>> {
    let out = util::run_cmd_output(Command::new("ldd").arg(bin))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("ldd {}: {}", bin.display(), line.trim());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.insert(p.to_string());
        }
    }
    Ok(libs.into_iter().collect())
}

/// The overlay's entries for `files` (guest path, host path) on top of `base`: each file (mode
/// 0755), the libraries they need that `base` lacks, and the directories that `base` lacks on
/// the way to them. Paths go through `base`'s directory symlinks, so nothing replaces one.
pub fn overlay_entries(base: &Listing, files: &[(&str, &Path)]) -> Result<Vec<Entry>> {
    let mut wanted: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut libs = BTreeSet::new();
    for (guest, host) in files {
        let data = std::fs::read(host).with_context(|| format!("read {}", host.display()))?;
        wanted.insert(base.resolve_dirs(guest), data);
        libs.extend(shared_libraries(host)?);
    }
    for lib in libs {
        let at = base.resolve_dirs(&lib);
        if base.contains(&at) || wanted.contains_key(&at) {
            continue;
        }
        let data = std::fs::read(&lib).with_context(|| format!("read {lib}"))?;
        wanted.insert(at, data);
    }
    let mut dirs = BTreeSet::new();
    for path in wanted.keys() {
        let parts = clean(path);
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            if !base.contains(&dir) {
                dirs.insert(dir);
            }
        }
    }
    // BTreeSet order puts every directory before what is in it.
    let mut entries: Vec<Entry> = dirs
        .into_iter()
        .map(|path| Entry {
            path,
            perm: 0o755,
            kind: Kind::Dir,
        })
        .collect();
    entries.extend(wanted.into_iter().map(|(path, data)| Entry {
        path,
        perm: 0o755,
        kind: Kind::File(data),
    }));
    Ok(entries)
}

/// Writes `out`: the initramfs `base` followed by a newc archive of `files` (guest path, host
/// path), with the shared libraries they need and their parent directories (see
/// [`overlay_entries`]). Returns the overlay's entries (for messages).
pub fn initrd_with(base: &Path, files: &[(&str, &Path)], out: &Path) -> Result<Vec<Entry>> {
    let listing = Listing::of_image(base)?;
    let entries = overlay_entries(&listing, files)?;
    let mut image = std::fs::read(base).with_context(|| format!("read {}", base.display()))?;
    // The kernel looks for an uncompressed archive's magic at 4-byte aligned offsets only.
    pad4(&mut image);
    image.extend_from_slice(&newc(&entries));
    std::fs::write(out, &image).with_context(|| format!("write {}", out.display()))?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::TempDir;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            perm: 0o755,
            kind,
        }
    }

    #[test]
    fn newc_round_trips_and_cpio_reads_it() {
        let entries = vec![
            entry("usr", Kind::Dir),
            entry("usr/bin", Kind::Dir),
            entry("usr/bin/tool", Kind::File(b"#!/bin/sh\necho hi\n".to_vec())),
            entry("usr/bin/odd", Kind::File(vec![7; 5])),
            entry("usr/bin/empty", Kind::File(Vec::new())),
            Entry {
                path: "lib".into(),
                perm: 0o777,
                kind: Kind::Symlink("usr/lib".into()),
            },
        ];
        let a = newc(&entries);
        assert_eq!(a.len() % 4, 0);
        assert_eq!(parse_newc(&a).unwrap(), entries);
        // two archives back to back, with padding in between, read as one
        let mut two = a.clone();
        two.extend_from_slice(&[0; 8]);
        two.extend_from_slice(&newc(&[entry("x", Kind::Dir)]));
        assert_eq!(parse_newc(&two).unwrap().len(), entries.len() + 1);
        assert!(parse_newc(b"070702junk").is_err());

        // GNU cpio agrees, about names and contents
        if !util::have_tool("cpio") {
            eprintln!("skipped the cpio part: cpio is not installed");
            return;
        }
        let d = TempDir::new("newc").unwrap();
        std::fs::write(d.join("a.cpio"), &a).unwrap();
        let list = util::run(&[
            "sh",
            "-c",
            &format!("cpio -it --quiet < {}", d.join("a.cpio").display()),
        ])
        .unwrap();
        let names: Vec<&str> = list.lines().collect();
        assert_eq!(
            names,
            vec![
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "usr/bin/odd",
                "usr/bin/empty",
                "lib"
            ]
        );
        std::fs::create_dir(d.join("x")).unwrap();
        util::run(&[
            "sh",
            "-c",
            &format!(
                "cd {} && cpio -idm --quiet < ../a.cpio",
                d.join("x").display()
            ),
        ])
        .unwrap();
        assert_eq!(
            std::fs::read(d.join("x/usr/bin/tool")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(std::fs::read(d.join("x/usr/bin/odd")).unwrap(), vec![7; 5]);
        assert_eq!(
            std::fs::read_link(d.join("x/lib")).unwrap(),
            Path::new("usr/lib")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("x/usr/bin/tool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn resolves_through_the_bases_symlinks() {
        let mut l = Listing::default();
        for (p, k) in [
            ("usr", Kind::Dir),
            ("usr/lib", Kind::Dir),
            ("usr/lib64", Kind::Dir),
            ("lib", Kind::Symlink("usr/lib".into())),
            ("lib64", Kind::Symlink("usr/lib64".into())),
            ("abs", Kind::Symlink("/usr/lib".into())),
            ("usr/lib/x", Kind::Symlink("../lib64".into())),
        ] {
            l.entries.insert(p.into(), k);
        }
        assert_eq!(
            l.resolve_dirs("/lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            l.resolve_dirs("/lib64/ld-linux-x86-64.so.2"),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(l.resolve_dirs("/abs/a/b"), "usr/lib/a/b");
        assert_eq!(l.resolve_dirs("/lib/x/f"), "usr/lib64/f");
        // the last component is left alone, even when it is a symlink
        assert_eq!(l.resolve_dirs("/lib"), "lib");
        assert_eq!(l.resolve_dirs("/usr/bin/tool"), "usr/bin/tool");
    }

    #[test]
    fn appends_a_binary_and_the_libraries_the_base_lacks() {
        for t in ["cpio", "gzip", "ldd"] {
            if !util::have_tool(t) {
                eprintln!("skipped: {t} is not installed");
                return;
            }
        }
        let d = TempDir::new("overlay").unwrap();
        // A base like the guest's: merged /usr, libc but no libgcc_s, gzip-compressed.
        let root = d.join("root");
        let libs = shared_libraries(Path::new("/bin/sh")).unwrap();
        assert!(libs.iter().any(|l| l.contains("libc.so")), "{libs:?}");
        let resolve = |l: &str| match l.strip_prefix("/lib") {
            Some(rest) if rest.starts_with('/') || rest.starts_with("64/") => {
                format!("/usr/lib{rest}")
            }
            _ => l.to_string(),
        };
        for l in &libs {
            let at = root.join(resolve(l).trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::copy(l, &at).unwrap();
        }
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", root.join("lib64")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        let base = d.join("base.gz");
        util::run(&[
            "sh",
            "-c",
            &format!(
                "cd {} && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip > {}",
                root.display(),
                base.display()
            ),
        ])
        .unwrap();

        // this test binary needs at least libc (in the base) and maybe libgcc_s (not)
        let me = std::env::current_exe().unwrap();
        let out = d.join("combined");
        let entries = initrd_with(&base, &[("/usr/local/bin/tool", &me)], &out).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert!(names.contains(&"usr/local"), "{names:?}");
        assert!(names.contains(&"usr/local/bin"), "{names:?}");
        assert!(names.contains(&"usr/local/bin/tool"), "{names:?}");
        assert!(!names.contains(&"usr"), "{names:?}");
        assert!(!names.contains(&"lib"), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("libc.so")), "{names:?}");
        for l in shared_libraries(&me).unwrap() {
            let at = resolve(&l);
            let at = at.trim_start_matches('/');
            let in_base = root.join(at).exists();
            assert_eq!(names.contains(&at), !in_base, "{at} in {names:?}");
        }

        // The combined file: the base unchanged, then the overlay at a 4-byte boundary.
        let combined = std::fs::read(&out).unwrap();
        let base_bytes = std::fs::read(&base).unwrap();
        assert!(combined.starts_with(&base_bytes));
        let at = (base_bytes.len() + 3) & !3;
        assert!(combined[base_bytes.len()..at].iter().all(|&b| b == 0));
        std::fs::write(d.join("overlay.cpio"), &combined[at..]).unwrap();
        let list = util::run(&[
            "sh",
            "-c",
            &format!("cpio -it --quiet < {}", d.join("overlay.cpio").display()),
        ])
        .unwrap();
        assert_eq!(list.lines().collect::<Vec<_>>(), names);
        let tool = parse_newc(&combined[at..])
            .unwrap()
            .into_iter()
            .find(|e| e.path == "usr/local/bin/tool")
            .unwrap();
        assert_eq!(tool.kind, Kind::File(std::fs::read(&me).unwrap()));
        assert_eq!(tool.perm, 0o755);
    }
}

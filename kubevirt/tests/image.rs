//! The sidecar image, built here without a base image: static binaries (the Containerfile's
//! build flags) assembled into an OCI image layout by scripts/build-oci-image.sh, then checked
//! the way a runtime would read it (index → manifest → config and layer, by digest), and the
//! binaries taken out of the layer must run with nothing else around them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Reads the blob a descriptor names, checking its digest and size.
fn blob(layout: &Path, descriptor: &Value) -> PathBuf {
    let digest = descriptor["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let path = layout.join("blobs/sha256").join(hex);
    assert_eq!(sha256(&path), hex, "blob {digest} content");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        descriptor["size"].as_u64().unwrap(),
        "blob {digest} size"
    );
    path
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Whether an ELF executable asks for a dynamic loader (has a PT_INTERP program header).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "64-bit ELF");
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

#[test]
fn the_sidecar_image_builds_without_a_base_image_and_its_binaries_stand_alone() {
    let ws = workspace();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { ws.join(t) })
        .unwrap_or_else(|| ws.join("target"))
        .join("oci-static");
    // The Containerfile's build, in debug (the release build is the image pipeline's job).
    run(Command::new(env!("CARGO"))
        .current_dir(&ws)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--locked",
            "--target",
            "x86_64-unknown-linux-gnu",
            "-p",
            "podwire",
            "-p",
            "podwire-kubevirt",
        ]));
    let bin = target.join("x86_64-unknown-linux-gnu/debug");
    let out = std::env::temp_dir().join(format!("pwkv-oci-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    run(Command::new(ws.join("scripts/build-oci-image.sh"))
        .arg(&out)
        .arg(bin.join("podwire"))
        .arg(bin.join("podwire-kubevirt-sidecar"))
        .arg("test"));

    assert_eq!(json(&out.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
    let index = json(&out.join("index.json"));
    let desc = &index["manifests"][0];
    assert_eq!(
        desc["annotations"]["org.opencontainers.image.ref.name"],
        "test"
    );
    let manifest = json(&blob(&out, desc));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = json(&blob(&out, &manifest["config"]));
    assert_eq!(config["config"]["User"], "107:107", "non-root");
    assert_eq!(
        config["config"]["Entrypoint"][0],
        "/usr/bin/podwire-kubevirt-sidecar"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = blob(&out, &layers[0]);
    let root = out.join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(&root));
    // The uncompressed layer is what the config's diff_id names.
    let plain = out.join("layer.tar");
    run(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc '{}' > '{}'",
        layer.display(),
        plain.display()
    )));
    assert_eq!(
        config["rootfs"]["diff_ids"][0].as_str().unwrap(),
        format!("sha256:{}", sha256(&plain))
    );
    // Exactly the two binaries: no shell, no libc, nothing else.
    let listing = run(Command::new("tar").arg("-tzf").arg(&layer));
    let mut files: Vec<&str> = listing.lines().filter(|l| !l.ends_with('/')).collect();
    files.sort();
    assert_eq!(
        files,
        ["usr/bin/podwire", "usr/bin/podwire-kubevirt-sidecar"]
    );
    for name in ["podwire", "podwire-kubevirt-sidecar"] {
        let path = root.join("usr/bin").join(name);
        let elf = std::fs::read(&path).unwrap();
        assert!(!has_interpreter(&elf), "{name} is dynamically linked");
        let version = run(Command::new(&path).env_clear().arg("--version"));
        assert!(version.starts_with(name), "{version}");
    }
    // The sidecar finds podwire next to itself, as it will in the image.
    let help = run(Command::new(root.join("usr/bin/podwire-kubevirt-sidecar"))
        .env_clear()
        .arg("--help"));
    assert!(help.contains("--hooks-dir"));
    let _ = std::fs::remove_dir_all(&out);
}

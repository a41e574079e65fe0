//! The sidecar binary, driven by a real gRPC client (tonic, as virt-launcher's Go client would)
//! over its UNIX socket.
//!
//! podwire itself is stood in for by a small script (`fake_podwire`) that records its argv and
//! listens on `--socket` with socat, or never listens, or dies, as a test asks: these tests are
//! about the hook, the domain it answers and how it supervises podwire. The real podwire behind
//! the real hook, with a guest, is perf/tests/e2e_kubevirt.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use podwire_kubevirt::launcher::{vmi_json, LauncherDomain, LauncherNic};
use podwire_kubevirt::podwire::is_listening;
use podwire_kubevirt::proto::{info, v1alpha2, v1alpha3};
use tonic::transport::Channel;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);

const FAKE_PODWIRE: &str = r#"#!/bin/sh
# Stands in for podwire: records its arguments, then behaves as FAKE_MODE says.
if [ "$1" = --help ]; then echo "      --fqdn <NAME>  FQDN"; exit 0; fi
printf '%s\n' "$@" > "$FAKE_DIR/argv.$$"
sock=
while [ $# -gt 0 ]; do [ "$1" = --socket ] && sock=$2; shift; done
case "$FAKE_MODE" in
  never) exec sleep 600 ;;
  die) echo "fake podwire: refusing to start" >&2; exit 3 ;;
esac
exec socat UNIX-LISTEN:"$sock",fork EXEC:/bin/true
"#;

struct Sidecar {
    child: Child,
    dir: PathBuf,
    hooks: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child process; no memory is touched.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = wait_exit(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "the sidecar did not exit");
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

fn start_sidecar(tag: &str, mode: &str, extra: &[&str], env: &[(&str, &str)]) -> Sidecar {
    let dir = std::env::temp_dir().join(format!("pwkv-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let hooks = dir.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let fake = dir.join("podwire");
    std::fs::write(&fake, FAKE_PODWIRE).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_podwire-kubevirt-sidecar"));
    cmd.arg("--hooks-dir")
        .arg(&hooks)
        .arg("--podwire")
        .arg(&fake)
        .args(extra)
        .env("FAKE_DIR", &dir)
        .env("FAKE_MODE", mode)
        .env_remove("CONTAINER_NAME")
        .env_remove("NETWORK_BINDING_PLUGIN_NAME")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let sock = hooks.join("podwire.sock");
    wait_until("the hook socket", || is_listening(&sock));
    Sidecar { child, dir, hooks }
}

impl Sidecar {
    async fn channel(&self) -> Channel {
        podwire_kubevirt::client::connect(&self.hooks.join("podwire.sock"))
            .await
            .expect("connect to the hook socket")
    }

    async fn v3(&self) -> v1alpha3::callbacks_client::CallbacksClient<Channel> {
        v1alpha3::callbacks_client::CallbacksClient::new(self.channel().await)
    }

    /// The argv of each podwire the sidecar started.
    fn podwire_argvs(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().starts_with("argv.") {
                let text = std::fs::read_to_string(e.path()).unwrap();
                out.push(text.lines().map(str::to_owned).collect());
            }
        }
        out
    }

    fn podwire_socket(&self, name: &str) -> PathBuf {
        self.hooks.join("podwire").join(format!("{name}.sock"))
    }
}

fn has_pair(argv: &[String], flag: &str, value: &str) -> bool {
    argv.windows(2).any(|w| w[0] == flag && w[1] == value)
}

const POD_NET: &str = r#"{"name":"default","pod":{}}"#;

fn masquerade_like_domain() -> String {
    LauncherDomain::new("ns1_vm1")
        .nic(
            LauncherNic::tap("default", "tap0")
                .with_mac("02:00:00:00:00:21")
                .with_mtu(1440),
        )
        .render()
}

fn params(domain: &str, vmi: &str) -> v1alpha3::OnDefineDomainParams {
    v1alpha3::OnDefineDomainParams {
        domain_xml: domain.as_bytes().to_vec(),
        vmi: vmi.as_bytes().to_vec(),
    }
}

fn interface_of<'a>(doc: &'a roxmltree::Document, alias: &str) -> roxmltree::Node<'a, 'a> {
    doc.descendants()
        .filter(|n| n.has_tag_name("interface"))
        .find(|i| {
            i.children()
                .any(|c| c.has_tag_name("alias") && c.attribute("name") == Some(alias))
        })
        .unwrap_or_else(|| panic!("no interface aliased {alias}"))
}

#[tokio::test]
async fn info_names_versions_and_hook_points() {
    let s = start_sidecar("info", "listen", &[], &[]);
    let mut client = info::info_client::InfoClient::new(s.channel().await);
    let r = client.info(info::InfoParams {}).await.unwrap().into_inner();
    assert_eq!(r.versions, ["v1alpha3", "v1alpha2"]);
    let points: Vec<_> = r.hook_points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(points, ["OnDefineDomain", "Shutdown"]);
    assert!(!r.name.is_empty());
    // Info is answered before any podwire exists.
    assert!(s.podwire_argvs().is_empty());
}

#[tokio::test]
async fn on_define_domain_rewrites_the_masquerade_shaped_domain_and_starts_podwire() {
    let s = start_sidecar("define", "listen", &[], &[]);
    let vmi = vmi_json(
        "vm1",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"},"macAddress":"02:00:00:00:00:21",
            "ports":[{"port":8080},{"protocol":"UDP","port":5353}]}"#,
        r#"{"name":"default","pod":{"vmNetworkCIDR":"198.18.5.0/24"}}"#,
    );
    let r = s
        .v3()
        .await
        .on_define_domain(params(&masquerade_like_domain(), &vmi))
        .await
        .expect("OnDefineDomain")
        .into_inner();
    let out = String::from_utf8(r.domain_xml).unwrap();
    let doc = roxmltree::Document::parse(&out).unwrap();
    let iface = interface_of(&doc, "ua-default");
    assert_eq!(iface.attribute("type"), Some("vhostuser"));
    let source = iface.children().find(|c| c.has_tag_name("source")).unwrap();
    let sock = s.podwire_socket("default");
    assert_eq!(source.attribute("path"), Some(sock.to_str().unwrap()));
    assert_eq!(source.attribute("mode"), Some("client"));
    assert!(out.contains("<source type=\"memfd\"></source>"));
    // The hook answered only once podwire listened.
    assert!(is_listening(&sock));
    let argvs = s.podwire_argvs();
    assert_eq!(argvs.len(), 1, "{argvs:?}");
    let argv = &argvs[0];
    assert!(
        has_pair(argv, "--socket", sock.to_str().unwrap()),
        "{argv:?}"
    );
    assert!(has_pair(argv, "--tcp-ports", "8080"), "{argv:?}");
    assert!(has_pair(argv, "--udp-ports", "5353"), "{argv:?}");
    assert!(has_pair(argv, "--guest-cidr", "198.18.5.0/24"), "{argv:?}");
    assert!(has_pair(argv, "--hostname", "vm1"), "{argv:?}");
    assert!(has_pair(argv, "--mtu", "1440"), "{argv:?}");
    assert!(has_pair(argv, "--mac", "02:00:00:00:00:21"), "{argv:?}");
    assert!(argv.iter().any(|a| a == "-f"), "{argv:?}");

    // virt-launcher may define again: the same podwire serves, no second one is started.
    let again = s
        .v3()
        .await
        .on_define_domain(params(&masquerade_like_domain(), &vmi))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8(again.domain_xml).unwrap(), out);
    assert_eq!(s.podwire_argvs().len(), 1);
}

#[tokio::test]
async fn v1alpha2_callers_get_the_same_rewrite() {
    let s = start_sidecar("v2", "listen", &[], &[]);
    let vmi = vmi_json(
        "vm1",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"}}"#,
        POD_NET,
    );
    let mut client = v1alpha2::callbacks_client::CallbacksClient::new(s.channel().await);
    let r = client
        .on_define_domain(v1alpha2::OnDefineDomainParams {
            domain_xml: masquerade_like_domain().into_bytes(),
            vmi: vmi.into_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    let out = String::from_utf8(r.domain_xml).unwrap();
    assert!(out.contains("<interface type=\"vhostuser\">"));
    let argv = &s.podwire_argvs()[0];
    assert!(has_pair(argv, "--tcp-ports", "all") && has_pair(argv, "--udp-ports", "all"));
}

#[tokio::test]
async fn a_bridge_second_interface_is_returned_byte_for_byte() {
    let s = start_sidecar("two", "listen", &[], &[]);
    let domain = LauncherDomain::new("ns1_vm2")
        .nic(LauncherNic::tap("default", "tap0"))
        .nic(
            LauncherNic::tap("br1", "tap3f5e1a2b9c0")
                .with_mac("02:00:00:00:01:01")
                .with_mtu(9000)
                .with_pci("0000:03:00.0")
                .with_boot_order(1),
        )
        .render();
    let vmi = vmi_json(
        "vm2",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"}},{"name":"br1","bridge":{}}"#,
        r#"{"name":"default","pod":{}},{"name":"br1","multus":{"networkName":"br1"}}"#,
    );
    let start = domain.find("<interface type=\"ethernet\">\n      <source></source>\n      <target dev=\"tap3f5e1a2b9c0\"").unwrap();
    let end = start + domain[start..].find("</interface>").unwrap() + "</interface>".len();
    let bridge = &domain[start..end];
    let out = s
        .v3()
        .await
        .on_define_domain(params(&domain, &vmi))
        .await
        .unwrap()
        .into_inner()
        .domain_xml;
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains(bridge));
    assert!(
        out.ends_with(&domain[start..]),
        "everything from the bridge on is untouched"
    );
    let doc = roxmltree::Document::parse(&out).unwrap();
    assert_eq!(
        interface_of(&doc, "ua-default").attribute("type"),
        Some("vhostuser")
    );
}

#[tokio::test]
async fn a_binding_without_domain_attachment_gets_an_interface_added() {
    let s = start_sidecar(
        "add",
        "listen",
        &[],
        &[("NETWORK_BINDING_PLUGIN_NAME", "fastnet")],
    );
    // The converter gives a plugin binding without domainAttachmentType no interface at all.
    let domain = LauncherDomain::new("ns1_vm3").render();
    let vmi = vmi_json(
        "vm3",
        "ns1",
        r#"{"name":"default","binding":{"name":"fastnet"},"macAddress":"02:00:00:00:00:33",
            "pciAddress":"0000:02:03.0","bootOrder":2}"#,
        POD_NET,
    );
    let out = s
        .v3()
        .await
        .on_define_domain(params(&domain, &vmi))
        .await
        .unwrap()
        .into_inner()
        .domain_xml;
    let out = String::from_utf8(out).unwrap();
    let doc = roxmltree::Document::parse(&out).unwrap();
    let iface = interface_of(&doc, "ua-default");
    let attr = |tag: &str, a: &str| {
        iface
            .children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.attribute(a))
    };
    assert_eq!(attr("mac", "address"), Some("02:00:00:00:00:33"));
    assert_eq!(attr("address", "slot"), Some("0x03"));
    assert_eq!(attr("boot", "order"), Some("2"));
    assert_eq!(attr("model", "type"), Some("virtio-non-transitional"));
}

#[tokio::test]
async fn the_domain_names_the_socket_as_virt_launcher_sees_it() {
    let s = start_sidecar(
        "paths",
        "listen",
        &[
            "--launcher-hooks-dir",
            "/var/run/kubevirt-hooks/hook-sidecar-0",
        ],
        &[("CONTAINER_NAME", "hook-sidecar-0")],
    );
    let vmi = vmi_json(
        "vm1",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"}}"#,
        POD_NET,
    );
    let out = s
        .v3()
        .await
        .on_define_domain(params(&masquerade_like_domain(), &vmi))
        .await
        .unwrap()
        .into_inner()
        .domain_xml;
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("path=\"/var/run/kubevirt-hooks/hook-sidecar-0/podwire/default.sock\""),
        "{out}"
    );
    // podwire listens where the sidecar's own mount of that directory is.
    assert!(is_listening(&s.podwire_socket("default")));
}

#[tokio::test]
async fn a_vmi_without_podwire_interfaces_gets_its_domain_back_unchanged() {
    let s = start_sidecar("none", "listen", &[], &[]);
    let domain = masquerade_like_domain();
    let vmi = vmi_json(
        "vm1",
        "ns1",
        r#"{"name":"default","masquerade":{}}"#,
        POD_NET,
    );
    let out = s
        .v3()
        .await
        .on_define_domain(params(&domain, &vmi))
        .await
        .unwrap()
        .into_inner()
        .domain_xml;
    assert_eq!(out, domain.as_bytes());
    assert!(s.podwire_argvs().is_empty());
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_starts_nothing() {
    let s = start_sidecar("bad", "listen", &[], &[]);
    let vmi = vmi_json(
        "vm1",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"}}"#,
        POD_NET,
    );
    let cases = [
        (
            "<domain><devices><interface>".to_owned(),
            vmi.clone(),
            "does not parse",
        ),
        (masquerade_like_domain(), "{not json".to_owned(), "JSON"),
        (
            masquerade_like_domain(),
            vmi_json(
                "vm1",
                "ns1",
                r#"{"name":"nic7","binding":{"name":"podwire"}}"#,
                POD_NET,
            ),
            "no network named \"nic7\"",
        ),
        (
            masquerade_like_domain(),
            vmi_json(
                "vm1",
                "ns1",
                r#"{"name":"default","binding":{"name":"podwire"},"ports":[{"port":70000}]}"#,
                POD_NET,
            ),
            "port 70000",
        ),
    ];
    for (domain, vmi, expected) in cases {
        let err = s
            .v3()
            .await
            .on_define_domain(params(&domain, &vmi))
            .await
            .expect_err("bad input must fail");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(expected),
            "{expected:?} not in {err:?}"
        );
    }
    assert!(
        s.podwire_argvs().is_empty(),
        "nothing started for bad input"
    );
    // The sidecar is still serving.
    let mut info = info::info_client::InfoClient::new(s.channel().await);
    info.info(info::InfoParams {}).await.unwrap();
}

#[tokio::test]
async fn podwire_not_listening_in_time_is_unavailable() {
    let s = start_sidecar("slow", "never", &["--ready-timeout", "1"], &[]);
    let vmi = vmi_json(
        "vm1",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"}}"#,
        POD_NET,
    );
    let err = s
        .v3()
        .await
        .on_define_domain(params(&masquerade_like_domain(), &vmi))
        .await
        .expect_err("podwire never listens");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("podwire is not ready"), "{err:?}");
}

#[tokio::test]
async fn podwire_dying_at_start_fails_the_hook_and_ends_the_sidecar_non_zero() {
    let mut s = start_sidecar("die", "die", &[], &[]);
    let vmi = vmi_json(
        "vm1",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"}}"#,
        POD_NET,
    );
    let err = s
        .v3()
        .await
        .on_define_domain(params(&masquerade_like_domain(), &vmi))
        .await
        .expect_err("podwire died");
    // Either the hook saw the exit, or the sidecar went down with podwire mid-call.
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{err:?}"
    );
    let status = wait_exit(&mut s.child);
    assert_eq!(status.code(), Some(1), "{status:?}");
}

#[tokio::test]
async fn podwire_dying_later_ends_the_sidecar_non_zero() {
    let mut s = start_sidecar("later", "listen", &[], &[]);
    let vmi = vmi_json(
        "vm1",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"}}"#,
        POD_NET,
    );
    s.v3()
        .await
        .on_define_domain(params(&masquerade_like_domain(), &vmi))
        .await
        .unwrap();
    let pid = podwire_pid(&s.podwire_socket("default"));
    // SAFETY: kill(2) of the fake podwire our sidecar started; no memory is touched.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let status = wait_exit(&mut s.child);
    assert_eq!(status.code(), Some(1), "{status:?}");
}

#[tokio::test]
async fn shutdown_stops_podwire_and_ends_the_sidecar_cleanly() {
    let mut s = start_sidecar("shutdown", "listen", &[], &[]);
    let vmi = vmi_json(
        "vm1",
        "ns1",
        r#"{"name":"default","binding":{"name":"podwire"}}"#,
        POD_NET,
    );
    s.v3()
        .await
        .on_define_domain(params(&masquerade_like_domain(), &vmi))
        .await
        .unwrap();
    let sock = s.podwire_socket("default");
    s.v3()
        .await
        .shutdown(v1alpha3::ShutdownParams {})
        .await
        .expect("Shutdown answered");
    let status = wait_exit(&mut s.child);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!is_listening(&sock), "podwire was stopped");
}

/// The pid of the process listening on `socket` (the fake podwire's socat).
fn podwire_pid(socket: &Path) -> libc::pid_t {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let inode = table
        .lines()
        .find(|l| l.ends_with(socket.to_str().unwrap()))
        .and_then(|l| l.split_whitespace().nth(6))
        .expect("listening socket")
        .to_owned();
    let target = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == target) {
                return pid;
            }
        }
    }
    panic!("no process holds {target}");
}

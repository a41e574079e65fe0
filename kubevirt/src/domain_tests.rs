use roxmltree::Document;

use super::*;
use crate::launcher::{LauncherDomain, LauncherNic};

const SOCK: &str = "/var/run/kubevirt-hooks/hook-sidecar-0/podwire/default.sock";

fn nic(name: &str) -> NicSpec {
    NicSpec {
        name: name.into(),
        socket: SOCK.into(),
        ..Default::default()
    }
}

fn rewrite(xml: &str, nics: &[NicSpec]) -> Result<String, DomainError> {
    plan(xml, nics)?.apply()
}

/// The text of the `interface` element aliased `ua-<name>`.
fn interface_text<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let doc = Document::parse(xml).unwrap();
    let alias = format!("ua-{name}");
    let r = doc
        .descendants()
        .filter(|n| n.has_tag_name("interface"))
        .find(|i| {
            i.children()
                .any(|c| c.has_tag_name("alias") && c.attribute("name") == Some(&alias))
        })?
        .range();
    Some(&xml[r])
}

#[test]
fn a_tap_interface_becomes_vhostuser_client_keeping_the_guest_view() {
    let xml = LauncherDomain::new("ns_vm")
        .nic(
            LauncherNic::tap("default", "tap0")
                .with_mac("02:00:00:aa:bb:cc")
                .with_mtu(1480)
                .with_pci("0000:02:01.0")
                .with_boot_order(2),
        )
        .render();
    let p = plan(&xml, &[nic("default")]).unwrap();
    assert_eq!(p.mtu("default"), Some(1480));
    let out = p.apply().unwrap();
    let doc = Document::parse(&out).unwrap();
    let iface = doc
        .descendants()
        .find(|n| n.has_tag_name("interface"))
        .unwrap();
    assert_eq!(iface.attribute("type"), Some("vhostuser"));
    let get = |tag: &str, attr: &str| {
        iface
            .children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.attribute(attr))
            .map(str::to_owned)
    };
    assert_eq!(get("source", "type").as_deref(), Some("unix"));
    assert_eq!(get("source", "path").as_deref(), Some(SOCK));
    assert_eq!(get("source", "mode").as_deref(), Some("client"));
    assert_eq!(get("mac", "address").as_deref(), Some("02:00:00:aa:bb:cc"));
    assert_eq!(
        get("model", "type").as_deref(),
        Some("virtio-non-transitional")
    );
    // libvirt refuses <mtu> on vhost-user; the MTU travels to podwire (plan.mtu) instead.
    assert_eq!(get("mtu", "size"), None);
    assert_eq!(get("boot", "order").as_deref(), Some("2"));
    assert_eq!(get("alias", "name").as_deref(), Some("ua-default"));
    assert_eq!(get("address", "bus").as_deref(), Some("0x02"));
    assert_eq!(get("address", "slot").as_deref(), Some("0x01"));
    // The tap's own pieces are gone: libvirt would try to open tap0 otherwise.
    assert!(get("target", "dev").is_none());
    assert!(get("driver", "name").is_none());
    let sources = iface
        .children()
        .filter(|c| c.has_tag_name("source"))
        .count();
    assert_eq!(sources, 1);
}

#[test]
fn shared_memfd_memory_is_added_once() {
    let xml = LauncherDomain::new("ns_vm")
        .nic(LauncherNic::tap("default", "tap0"))
        .render();
    let out = rewrite(&xml, &[nic("default")]).unwrap();
    let doc = Document::parse(&out).unwrap();
    let mbs: Vec<_> = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("memoryBacking"))
        .collect();
    assert_eq!(mbs.len(), 1);
    let mb = mbs[0];
    let source = mb.children().find(|c| c.has_tag_name("source")).unwrap();
    let access = mb.children().find(|c| c.has_tag_name("access")).unwrap();
    assert_eq!(source.attribute("type"), Some("memfd"));
    assert_eq!(access.attribute("mode"), Some("shared"));
    // Running the hook on its own output changes nothing more.
    assert_eq!(rewrite(&out, &[nic("default")]).unwrap(), out);
}

#[test]
fn hugepages_stay_and_memfd_shared_join_them() {
    let xml = LauncherDomain::new("ns_vm")
        .hugepages()
        .nic(LauncherNic::tap("default", "tap0"))
        .render();
    let out = rewrite(&xml, &[nic("default")]).unwrap();
    assert!(out.contains(
        "    <hugepages>\n      <page size=\"2\" unit=\"M\"></page>\n    </hugepages>\n"
    ));
    let doc = Document::parse(&out).unwrap();
    let mb = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("memoryBacking"))
        .unwrap();
    let names: Vec<_> = mb
        .children()
        .filter(|c| c.is_element())
        .map(|c| c.tag_name().name().to_owned())
        .collect();
    assert_eq!(names, ["hugepages", "source", "access"]);
}

#[test]
fn private_or_anonymous_memory_is_refused_not_overridden() {
    let base = LauncherDomain::new("ns_vm")
        .nic(LauncherNic::tap("default", "tap0"))
        .render();
    let private = base.replace(
        "  <os>",
        "  <memoryBacking>\n    <access mode=\"private\"></access>\n  </memoryBacking>\n  <os>",
    );
    assert_eq!(
        rewrite(&private, &[nic("default")]).unwrap_err(),
        DomainError::AccessNotShared("private".into())
    );
    let anon = base.replace(
        "  <os>",
        "  <memoryBacking>\n    <source type=\"anonymous\"></source>\n  </memoryBacking>\n  <os>",
    );
    assert!(matches!(
        rewrite(&anon, &[nic("default")]),
        Err(DomainError::SourceNotShareable(_))
    ));
}

#[test]
fn a_second_interface_of_another_binding_is_kept_byte_for_byte() {
    // A two-interface VM: podwire on the pod network, a bridge on a secondary network.
    let xml = LauncherDomain::new("ns_vm")
        .nic(LauncherNic::tap("default", "tap0").with_mac("02:00:00:00:00:01"))
        .nic(
            LauncherNic::tap("secondary", "tap7a1b2c3d4e5")
                .with_mac("02:00:00:00:00:02")
                .with_mtu(9000)
                .with_pci("0000:03:00.0"),
        )
        .render();
    let before = interface_text(&xml, "secondary").unwrap().to_owned();
    let out = rewrite(&xml, &[nic("default")]).unwrap();
    assert_eq!(interface_text(&out, "secondary").unwrap(), before);
    // And everything after it, too: nothing but the podwire interface and the memory changed.
    let tail = &xml[xml.find(&before).unwrap()..];
    assert!(out.ends_with(tail));
    assert!(interface_text(&out, "default")
        .unwrap()
        .starts_with("<interface type=\"vhostuser\">"));
}

#[test]
fn a_plugin_without_domain_attachment_gets_its_interface_added() {
    // The converter emits nothing for a plugin binding without domainAttachmentType; here a
    // bridge interface is already there and must stay, and podwire's is added after it.
    let xml = LauncherDomain::new("ns_vm")
        .nic(LauncherNic::tap("br", "tap1"))
        .render();
    let spec = NicSpec {
        mac: Some("02:00:00:00:00:09".into()),
        pci_address: Some("0000:05:1f.0".into()),
        boot_order: Some(1),
        acpi_index: Some(3),
        ..nic("default")
    };
    let before = interface_text(&xml, "br").unwrap().to_owned();
    let out = rewrite(&xml, &[spec]).unwrap();
    assert_eq!(interface_text(&out, "br").unwrap(), before);
    let added = interface_text(&out, "default").expect("added");
    let expected = [
        "<interface type=\"vhostuser\">",
        &format!("path=\"{SOCK}\" mode=\"client\""),
        "<mac address=\"02:00:00:00:00:09\"></mac>",
        "<model type=\"virtio-non-transitional\"></model>",
        "<address type=\"pci\" domain=\"0x0000\" bus=\"0x05\" slot=\"0x1f\" function=\"0x0\">",
        "<boot order=\"1\"></boot>",
        "<alias name=\"ua-default\"></alias>",
        "<acpi index=\"3\"></acpi>",
    ];
    for e in expected {
        assert!(added.contains(e), "{e} missing from {added}");
    }
    assert!(!added.contains("<rom"), "a boot NIC keeps its ROM: {added}");
    // Indented like its neighbours.
    assert!(out.contains("\n    <interface type=\"vhostuser\">\n      <source type=\"unix\""));
}

#[test]
fn transitional_and_non_virtio_models() {
    let xml = LauncherDomain::new("ns_vm").render();
    let out = rewrite(
        &xml,
        &[NicSpec {
            virtio_transitional: true,
            ..nic("default")
        }],
    )
    .unwrap();
    assert!(out.contains("<model type=\"virtio-transitional\"></model>"));
    let e1000 = NicSpec {
        model: Some("e1000".into()),
        ..nic("default")
    };
    assert!(matches!(
        rewrite(&xml, &[e1000]),
        Err(DomainError::NotVirtio(..))
    ));
    let tap_e1000 = LauncherDomain::new("ns_vm")
        .nic(LauncherNic::tap("default", "tap0"))
        .render()
        .replace(
            "virtio-non-transitional\"></model>\n      <driver",
            "e1000\"></model>\n      <driver",
        );
    assert!(matches!(
        rewrite(&tap_e1000, &[nic("default")]),
        Err(DomainError::NotVirtio(..))
    ));
}

#[test]
fn malformed_or_foreign_xml_is_an_error() {
    assert!(matches!(
        rewrite("<domain><devices>", &[nic("default")]),
        Err(DomainError::Parse(_))
    ));
    assert!(matches!(
        rewrite("not xml at all", &[nic("default")]),
        Err(DomainError::Parse(_))
    ));
    assert_eq!(
        rewrite("<network><name>x</name></network>", &[nic("default")]).unwrap_err(),
        DomainError::NoDomain
    );
    assert_eq!(
        rewrite("<domain><name>x</name></domain>", &[nic("default")]).unwrap_err(),
        DomainError::NoDevices
    );
    let twice = LauncherDomain::new("ns_vm")
        .nic(LauncherNic::tap("default", "tap0"))
        .nic(LauncherNic::tap("default", "tap1"))
        .render();
    assert!(matches!(
        rewrite(&twice, &[nic("default")]),
        Err(DomainError::DuplicateAlias(..))
    ));
}

#[test]
fn bad_pci_addresses_are_errors() {
    for bad in [
        "0000:05:1f",
        "00:05:1f.0",
        "0000:05:20.0",
        "0000:05:1f.8",
        "zzzz:05:1f.0",
    ] {
        let spec = NicSpec {
            pci_address: Some(bad.into()),
            ..nic("default")
        };
        let xml = LauncherDomain::new("ns_vm").render();
        assert!(
            matches!(rewrite(&xml, &[spec]), Err(DomainError::BadPciAddress(..))),
            "{bad}"
        );
    }
}

#[test]
fn no_podwire_nics_leaves_the_domain_identical() {
    let xml = LauncherDomain::new("ns_vm")
        .nic(LauncherNic::tap("default", "tap0"))
        .render();
    assert_eq!(rewrite(&xml, &[]).unwrap(), xml);
}

#[test]
fn attribute_values_are_escaped() {
    let xml = LauncherDomain::new("ns_vm").render();
    let spec = NicSpec {
        socket: "/a\"b<c&d".into(),
        ..nic("default")
    };
    let out = rewrite(&xml, &[spec]).unwrap();
    let doc = Document::parse(&out).unwrap();
    let src = doc
        .descendants()
        .find(|n| n.has_tag_name("source") && n.attribute("mode") == Some("client"))
        .unwrap();
    assert_eq!(src.attribute("path"), Some("/a\"b<c&d"));
}

#[test]
fn a_one_line_domain_stays_one_line() {
    let xml = "<domain type=\"kvm\"><name>x</name><memory unit=\"b\">1</memory><devices>\
               <interface type=\"ethernet\"><alias name=\"ua-default\"></alias></interface>\
               </devices></domain>";
    let out = rewrite(xml, &[nic("default")]).unwrap();
    assert!(!out.contains('\n'), "{out}");
    assert!(out.contains("<memory unit=\"b\">1</memory><memoryBacking>"));
}

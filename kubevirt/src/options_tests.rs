use std::path::PathBuf;

use super::*;
use crate::vmi::{Vmi, VmiError};

fn vmi(json: &str) -> Vmi {
    Vmi::from_json(json.as_bytes()).expect("test VMI parses")
}

fn options_of(v: &Vmi) -> Result<PodwireOptions, OptionsError> {
    let nics = v.podwire_interfaces("podwire").expect("podwire interfaces");
    assert_eq!(nics.len(), 1);
    PodwireOptions::from_vmi(
        v,
        &nics[0],
        PathBuf::from("/s/default.sock"),
        None,
        "cluster.local",
    )
}

fn args(o: &PodwireOptions, caps: Capabilities) -> Vec<String> {
    o.argv(caps)
        .0
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect()
}

const FULL: &str = r#"{
  "metadata": {"name": "vm1", "namespace": "ns1"},
  "spec": {
    "hostname": "web", "subdomain": "svc1",
    "domain": {"devices": {"interfaces": [
      {"name": "default", "binding": {"name": "podwire"}, "macAddress": "02:00:00:00:00:07",
       "ports": [{"port": 80}, {"name": "dns", "protocol": "UDP", "port": 53},
                 {"protocol": "tcp", "port": 443}, {"port": 80, "protocol": "TCP"}],
       "dhcpOptions": {"bootFileName": "pxelinux.0", "ntpServers": ["198.18.0.9"]}}
    ]}},
    "networks": [{"name": "default", "pod": {"vmNetworkCIDR": "10.11.0.0/24",
                                              "vmIPv6NetworkCIDR": "fd10:11::/120"}}]
  }
}"#;

#[test]
fn listed_ports_are_forwarded_per_protocol_sorted_and_deduplicated() {
    let o = options_of(&vmi(FULL)).unwrap();
    assert_eq!(o.tcp, Forwarding::Ports(vec![80, 443]));
    assert_eq!(o.udp, Forwarding::Ports(vec![53]));
}

#[test]
fn no_ports_forwards_every_port_of_both_protocols_as_masquerade() {
    let v = vmi(r#"{"metadata": {"name": "vm"}, "spec": {
        "domain": {"devices": {"interfaces": [{"name": "default", "binding": {"name": "podwire"}}]}},
        "networks": [{"name": "default", "pod": {}}]}}"#);
    let o = options_of(&v).unwrap();
    assert_eq!(
        (o.tcp.clone(), o.udp.clone()),
        (Forwarding::All, Forwarding::All)
    );
    let a = args(&o, Capabilities::default());
    assert_eq!(
        a,
        [
            "--vhost-user",
            "-f",
            "--socket",
            "/s/default.sock",
            "--tcp-ports",
            "all",
            "--udp-ports",
            "all",
            "--hostname",
            "vm"
        ]
    );
}

#[test]
fn only_tcp_ports_listed_leaves_udp_unforwarded() {
    let v = vmi(r#"{"spec": {
        "domain": {"devices": {"interfaces": [{"name": "default", "binding": {"name": "podwire"},
            "ports": [{"port": 22}]}]}},
        "networks": [{"name": "default", "pod": {}}]}}"#);
    let o = options_of(&v).unwrap();
    assert_eq!(o.udp, Forwarding::None);
    let a = args(&o, Capabilities::default());
    assert!(!a.iter().any(|x| x == "--udp-ports"), "{a:?}");
    assert!(a.windows(2).any(|w| w == ["--tcp-ports", "22"]), "{a:?}");
}

#[test]
fn full_vmi_maps_to_cidrs_hostname_fqdn_and_mac() {
    let o = options_of(&vmi(FULL)).unwrap();
    let a = args(&o, ALL);
    let pairs = [
        ["--tcp-ports", "80,443"],
        ["--udp-ports", "53"],
        ["--guest-cidr", "10.11.0.0/24"],
        ["--guest-cidr6", "fd10:11::/120"],
        ["--hostname", "web"],
        ["--fqdn", "web.svc1.ns1.svc.cluster.local"],
        ["--mac", "02:00:00:00:00:07"],
    ];
    for p in pairs {
        assert!(a.windows(2).any(|w| w == p), "{p:?} missing from {a:?}");
    }
    assert_eq!(&a[..2], ["--vhost-user", "-f"]);
}

#[test]
fn fqdn_is_reported_not_passed_to_a_podwire_without_the_flag() {
    let o = options_of(&vmi(FULL)).unwrap();
    let (a, not_applied) = o.argv(Capabilities {
        fqdn: false,
        dhcp_options: true,
    });
    assert!(!a.iter().any(|x| x == "--fqdn"));
    assert!(
        not_applied.iter().any(|l| l.contains("--fqdn")),
        "{not_applied:?}"
    );
}

const ALL: Capabilities = Capabilities {
    fqdn: true,
    dhcp_options: true,
};

#[test]
fn dhcp_options_become_dhcp_flags() {
    let v = vmi(r#"{"spec": {
        "domain": {"devices": {"interfaces": [{"name": "default", "binding": {"name": "podwire"},
            "dhcpOptions": {"bootFileName": "pxelinux.0", "tftpServerName": "tftp.example",
                "ntpServers": ["198.18.0.9", "198.18.0.10"],
                "privateOptions": [{"option": 240, "value": "extra"}]}}]}},
        "networks": [{"name": "default", "pod": {}}]}}"#);
    let o = options_of(&v).unwrap();
    let (a, not_applied) = o.argv(ALL);
    let a: Vec<String> = a.into_iter().map(|x| x.into_string().unwrap()).collect();
    for pair in [
        ["--dhcp-boot-file", "pxelinux.0"],
        ["--dhcp-tftp-server", "tftp.example"],
        ["--dhcp-ntp", "198.18.0.9"],
        ["--dhcp-ntp", "198.18.0.10"],
        ["--dhcp-private-option", "240=extra"],
    ] {
        assert!(
            a.windows(2).any(|w| w == pair),
            "{pair:?} missing from {a:?}"
        );
    }
    assert!(not_applied.is_empty(), "{not_applied:?}");
}

#[test]
fn dhcp_options_are_reported_not_passed_to_a_podwire_without_the_flags() {
    let o = options_of(&vmi(FULL)).unwrap();
    let (a, not_applied) = o.argv(Capabilities {
        fqdn: true,
        dhcp_options: false,
    });
    assert!(!a.iter().any(|x| x.to_string_lossy().starts_with("--dhcp")));
    assert_eq!(not_applied.len(), 1);
    assert!(not_applied[0].contains("dhcpOptions"));
}

#[test]
fn mtu_from_the_domain_is_passed() {
    let v = vmi(FULL);
    let nics = v.podwire_interfaces("podwire").unwrap();
    let o = PodwireOptions::from_vmi(&v, &nics[0], "/s".into(), Some(1400), "c").unwrap();
    assert!(args(&o, Capabilities::default())
        .windows(2)
        .any(|w| w == ["--mtu", "1400"]));
}

#[test]
fn sctp_and_out_of_range_ports_are_errors_not_silently_dropped() {
    let sctp = vmi(r#"{"spec": {
        "domain": {"devices": {"interfaces": [{"name": "default", "binding": {"name": "podwire"},
            "ports": [{"port": 9, "protocol": "SCTP"}]}]}},
        "networks": [{"name": "default", "pod": {}}]}}"#);
    assert!(matches!(
        options_of(&sctp),
        Err(OptionsError::UnsupportedProtocol { .. })
    ));
    for bad in [0, 70000, -1] {
        let v = vmi(&format!(
            r#"{{"spec": {{"domain": {{"devices": {{"interfaces": [{{"name": "default",
                "binding": {{"name": "podwire"}}, "ports": [{{"port": {bad}}}]}}]}}}},
                "networks": [{{"name": "default", "pod": {{}}}}]}}}}"#
        ));
        assert!(
            matches!(options_of(&v), Err(OptionsError::BadPort { .. })),
            "{bad}"
        );
    }
}

#[test]
fn interfaces_of_other_bindings_and_absent_ones_are_not_podwires() {
    let v = vmi(r#"{"spec": {
        "domain": {"devices": {"interfaces": [
            {"name": "default", "masquerade": {}},
            {"name": "gone", "binding": {"name": "podwire"}, "state": "absent"},
            {"name": "other", "binding": {"name": "passt"}}]}},
        "networks": [{"name": "default", "pod": {}}]}}"#);
    assert!(v.podwire_interfaces("podwire").unwrap().is_empty());
}

#[test]
fn a_podwire_interface_without_its_network_or_on_multus_is_refused() {
    let unknown = vmi(r#"{"spec": {
        "domain": {"devices": {"interfaces": [{"name": "nic9", "binding": {"name": "podwire"}}]}},
        "networks": [{"name": "default", "pod": {}}]}}"#);
    assert_eq!(
        unknown.podwire_interfaces("podwire").unwrap_err(),
        VmiError::UnknownNetwork("nic9".into())
    );
    let multus = vmi(r#"{"spec": {
        "domain": {"devices": {"interfaces": [{"name": "sec", "binding": {"name": "podwire"}}]}},
        "networks": [{"name": "sec", "multus": {"networkName": "br"}}]}}"#);
    assert_eq!(
        multus.podwire_interfaces("podwire").unwrap_err(),
        VmiError::NotPodNetwork("sec".into())
    );
    let evil = vmi(r#"{"spec": {
        "domain": {"devices": {"interfaces": [{"name": "../x", "binding": {"name": "podwire"}}]}},
        "networks": [{"name": "../x", "pod": {}}]}}"#);
    assert!(matches!(
        evil.podwire_interfaces("podwire"),
        Err(VmiError::BadInterfaceName(_))
    ));
}

#[test]
fn the_binding_name_is_configurable() {
    let v = vmi(r#"{"spec": {
        "domain": {"devices": {"interfaces": [{"name": "default", "binding": {"name": "fast"}}]}},
        "networks": [{"name": "default", "pod": {}}]}}"#);
    assert!(v.podwire_interfaces("podwire").unwrap().is_empty());
    assert_eq!(v.podwire_interfaces("fast").unwrap().len(), 1);
}

#[test]
fn capabilities_come_from_the_help_text() {
    assert!(Capabilities::from_help("  --fqdn <NAME>  Fully qualified").fqdn);
    assert!(!Capabilities::from_help("  --hostname <NAME>").fqdn);
    let dhcp = "--dhcp-ntp <ADDR> --dhcp-tftp-server <NAME> --dhcp-boot-file <NAME> \
                --dhcp-private-option <CODE=VALUE>";
    assert!(Capabilities::from_help(dhcp).dhcp_options);
    assert!(!Capabilities::from_help("--dhcp-ntp <ADDR>").dhcp_options);
}

#!/usr/bin/env bash
# Installs what podwire's tests and its guest harness need on a fresh Debian 12 machine.
# Idempotent: a package already present is not fetched again.
set -euo pipefail

need_pkgs=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

# nftables, gnuplot-nox, dpdk-dev (dpdk-testpmd): the benchmark suite (perf/README.md);
# nftables also for e2e_migrate (the pod's RSTs dropped while its connections move).
# isc-dhcp-client: dhclient is put into the guest as a second DHCPv6 client (e2e_ipv6).
# tcpdump, curl: read the capture podwire writes with --pcap and scrape --metrics (e2e_podwire).
# make, gcc, xz-utils: passt is built from Debian's source package for the benchmarks and the
# pingpong test (perf/src/bench/passt.rs).
# protobuf-compiler: protoc, for the KubeVirt sidecar's gRPC code (kubevirt/build.rs).
# QEMU comes from bookworm-backports (DEVELOPERS.md): a newer vhost-user frontend.
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/podwire-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  APT_UPDATED=""
fi

for p in iproute2 busybox-static iperf3 socat dhcpcd-base dnsmasq-base cpio gzip kmod \
         procps iputils-ping isc-dhcp-client nftables gnuplot-nox dpdk-dev tcpdump curl \
         make gcc xz-utils protobuf-compiler; do
  have "$p" || need_pkgs+=("$p")
done
qemu_ok=1
have qemu-system-x86 || qemu_ok=0
# libvirt (11.x, from bookworm-backports: the first with a passt backend for vhostuser): the
# e2e_libvirt test runs a private libvirtd that starts podwire as its `passt`.
libvirt_ok=1
for p in libvirt-daemon-driver-qemu libvirt-clients libvirt-daemon; do
  have "$p" || libvirt_ok=0
done

if [ ${#need_pkgs[@]} -gt 0 ] || [ $qemu_ok = 0 ] || [ $libvirt_ok = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  if [ ${#need_pkgs[@]} -gt 0 ]; then
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"
  fi
  if [ $qemu_ok = 0 ]; then
    apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
  fi
  if [ $libvirt_ok = 0 ]; then
    apt-get install -y -q --no-install-recommends -t bookworm-backports \
      libvirt-daemon-driver-qemu libvirt-clients libvirt-daemon
  fi
fi
echo "install-deps: ok"

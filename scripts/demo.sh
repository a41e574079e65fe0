#!/usr/bin/env bash
# The main job, on this machine: podwire serving a real guest.
# Makes a pod network namespace and a far host joined by a veth, runs podwire in the pod and a
# QEMU (TCG) guest on its socket, then shows the guest's DHCP lease, a ping to the far host and a
# UDP transfer, and tears everything down. Installs what it needs on a fresh Debian 12 machine.
# Needs root. Extra arguments go to podwire (e.g. --guest-cidr pod).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash perf/guest/build-image.sh perf/guest/out
cargo build --release --locked -p podwire -p podwire-perf
PODWIRE_BIN="$PWD/target/release/podwire" exec target/release/podwire-demo "$@"

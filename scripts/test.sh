#!/usr/bin/env bash
# Runs every podwire test: unit tests, the vhost-user socket tests, and the end-to-end tests that
# boot a real guest (QEMU/TCG) on podwire inside network namespaces.
# On a fresh Debian 12 machine it first installs what it needs (apt packages, the test guest).
# Needs root (network namespaces). Finishes in well under 20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash perf/guest/build-image.sh perf/guest/out

# The end-to-end tests run the release binary, as users do.
cargo build --release --locked -p podwire -p podwire-kubevirt -p podwire-repair
export PODWIRE_BIN="$PWD/target/release/podwire"
export PODWIRE_REPAIR_BIN="$PWD/target/release/podwire-repair"

# End-to-end tests each boot a TCG guest; two at a time fit 2 cores.
cargo test --locked --workspace -- --test-threads=2

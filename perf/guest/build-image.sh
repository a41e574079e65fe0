#!/usr/bin/env bash
# Builds podwire's tiny test guest from Debian packages only.
#
#   perf/guest/build-image.sh OUTDIR
#
# Outputs OUTDIR/vmlinuz (Debian's cloud-amd64 kernel) and OUTDIR/initramfs.gz
# (busybox-static + iperf3 + socat + dhcpcd with their shared libraries, the
# virtio-net/pktgen modules and an /init that runs a shell on ttyS0).
# Idempotent: when OUTDIR already holds both outputs and OUTDIR/.stamp holds
# this script's hash, nothing is done. Concurrent runs serialise on a lock.
# Needs root (dpkg -x keeps ownership), apt-get, dpkg, depmod (kmod), cpio,
# gzip, busybox-static, iperf3, socat, dhcpcd-base (and xz or zstd only if the
# kernel's modules are compressed; bookworm's 6.1 ones are not).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi

SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"
mkdir -p "$1"
OUT="$(readlink -f "$1")"
HASH="$(sha256sum "$SCRIPT" | cut -d' ' -f1)"

is_fresh() {
  [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initramfs.gz" ] && [ -f "$OUT/.stamp" ] &&
    [ "$(cat "$OUT/.stamp")" = "$HASH" ]
}

if is_fresh; then
  exit 0
fi

exec 9>"$OUT/.lock"
flock 9
# Someone else may have built it while we waited for the lock.
if is_fresh; then
  exit 0
fi

log() { echo "build-image: $*" >&2; }

for tool in apt-get apt-cache dpkg depmod cpio gzip ldd flock sha256sum; do
  command -v "$tool" >/dev/null || { log "missing tool: $tool"; exit 1; }
done
for f in /bin/busybox /usr/bin/iperf3 /usr/bin/socat /usr/sbin/dhcpcd; do
  [ -x "$f" ] || { log "missing $f (install busybox-static iperf3 socat dhcpcd-base)"; exit 1; }
done

WORK="$OUT/work"
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT/debs"

# ---------------------------------------------------------------- kernel ----
# The meta package linux-image-cloud-amd64 depends on the current versioned
# image package (linux-image-6.1.0-NN-cloud-amd64); resolve it, then download.
resolve_kernel_pkg() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1
}

download_kernel() {
  local pkg
  pkg="$(resolve_kernel_pkg)"
  [ -n "$pkg" ] || return 1
  log "kernel package: $pkg"
  # An already downloaded .deb of the same package is reused.
  if ls "$OUT/debs/${pkg}"_*.deb >/dev/null 2>&1; then
    return 0
  fi
  (cd "$OUT/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg") || return 1
}

if ! download_kernel; then
  log "apt-get download failed; running apt-get update once"
  apt-get update -q
  download_kernel
fi
KPKG="$(resolve_kernel_pkg)"
# Newest .deb of that package (there is normally exactly one).
KDEB="$(ls -1 "$OUT/debs/${KPKG}"_*.deb | sort -V | tail -n1)"
dpkg -x "$KDEB" "$WORK/kpkg"
VMLINUZ="$(ls -1 "$WORK"/kpkg/boot/vmlinuz-* | head -n1)"
KVER="${VMLINUZ##*/vmlinuz-}"
MODDIR="$WORK/kpkg/lib/modules/$KVER"
[ -d "$MODDIR" ] || MODDIR="$WORK/kpkg/usr/lib/modules/$KVER"
log "kernel version: $KVER"

# The package does not ship modules.dep (depmod runs at install time): make it.
if [ ! -s "$MODDIR/modules.dep" ]; then
  depmod -b "${MODDIR%/lib/modules/$KVER}" "$KVER"
fi

# Modules to load, in this order (each with its dependencies first).
# virtio_net: the NIC (pulls net_failover, failover, virtio, virtio_ring);
# virtio_pci: the PCI transport (modern/legacy dev libs); pktgen: load generator.
WANT_MODULES="virtio_pci virtio_net pktgen"

# Prints, for module NAME, its modules.dep path(s) in load order (deps first).
# modules.dep lists a module's dependencies so that loading them from the
# END of the list first is correct (that is what modprobe does).
declare -A SEEN=()
LOAD_ORDER=()
mod_path() {
  local name="$1" line
  line="$(grep -E "(^|/)${name}\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep" | head -n1 || true)"
  if [ -z "$line" ]; then
    # Module names use '_' but files may use '-' (and vice versa).
    local alt="${name//_/-}"
    line="$(grep -E "(^|/)${alt}\.ko(\.xz|\.zst|\.gz)?:" "$MODDIR/modules.dep" | head -n1 || true)"
  fi
  echo "$line"
}
add_module_path() {
  local path="$1" line deps i
  [ -n "${SEEN[$path]:-}" ] && return 0
  line="$(grep -F "${path}:" "$MODDIR/modules.dep" | head -n1)"
  read -r -a deps <<<"${line#*:}"
  for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
    add_module_path "${deps[$i]}"
  done
  SEEN[$path]=1
  LOAD_ORDER+=("$path")
}
for m in $WANT_MODULES; do
  line="$(mod_path "$m")"
  if [ -z "$line" ]; then
    if grep -qE "/${m}\.ko" "$MODDIR/modules.builtin" 2>/dev/null; then
      log "module $m is built in"
      continue
    fi
    log "module $m not found in $KVER"
    exit 1
  fi
  add_module_path "${line%%:*}"
done

# ------------------------------------------------------------- initramfs ----
ROOT="$WORK/root"
mkdir -p "$ROOT"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,usr/share/udhcpc} \
  "$ROOT"/{etc,proc,sys,dev,tmp,run,root,mnt,var/lib/dhcpcd,var/log}
# merged /usr, like Debian 12
ln -s usr/bin "$ROOT/bin"
ln -s usr/sbin "$ROOT/sbin"
mkdir -p "$ROOT/usr/lib/modules"
ln -s usr/lib "$ROOT/lib"
ln -s usr/lib64 "$ROOT/lib64"
ln -s ../run "$ROOT/var/run"
chmod 1777 "$ROOT/tmp"

# busybox and a link for each of its applets
cp /bin/busybox "$ROOT/usr/bin/busybox"
/bin/busybox --list-full | while read -r applet; do
  [ "$(basename "$applet")" = "busybox" ] && continue
  dir="$(dirname "$applet")"
  ln -sf /usr/bin/busybox "$ROOT/$dir/$(basename "$applet")"
done

# dynamic binaries and everything ldd says they need (incl. the loader)
copy_with_libs() {
  local bin="$1" dest="$2" lib
  rm -f "$ROOT$dest"
  cp -L "$bin" "$ROOT$dest"
  for lib in $(ldd "$bin" | grep -oE '/[^ ]+' | sort -u); do
    local target="$ROOT$lib"
    [ -e "$target" ] && continue
    mkdir -p "$(dirname "$target")"
    cp -L "$lib" "$target"
  done
}
copy_with_libs /usr/bin/iperf3 /usr/bin/iperf3
copy_with_libs /usr/bin/socat /usr/bin/socat
copy_with_libs /usr/sbin/dhcpcd /usr/sbin/dhcpcd
[ -e "$ROOT/lib64/ld-linux-x86-64.so.2" ] || { log "dynamic loader missing"; exit 1; }

# dhcpcd's config and hooks (its privsep user's home is /usr/lib/dhcpcd)
cp /etc/dhcpcd.conf "$ROOT/etc/dhcpcd.conf"
cp -a /usr/lib/dhcpcd "$ROOT/usr/lib/dhcpcd"

# modules, decompressed (busybox insmod cannot read .ko.xz/.ko.zst)
: >"$ROOT/lib/modules/load-order"
for path in "${LOAD_ORDER[@]}"; do
  src="$MODDIR/$path"
  base="$(basename "$path")"
  case "$base" in
    *.ko.xz) xz -dc "$src" >"$ROOT/lib/modules/${base%.xz}"; base="${base%.xz}" ;;
    *.ko.zst) zstd -qdc "$src" >"$ROOT/lib/modules/${base%.zst}"; base="${base%.zst}" ;;
    *.ko.gz) gzip -dc "$src" >"$ROOT/lib/modules/${base%.gz}"; base="${base%.gz}" ;;
    *) cp "$src" "$ROOT/lib/modules/$base" ;;
  esac
  echo "$base" >>"$ROOT/lib/modules/load-order"
done
echo "$KVER" >"$ROOT/etc/podwire-kernel"
log "modules: $(tr '\n' ' ' <"$ROOT/lib/modules/load-order")"

# minimal /etc
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
dhcpcd:x:100:65534:DHCP Client Daemon:/usr/lib/dhcpcd:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
cat >"$ROOT/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
EOF
cat >"$ROOT/etc/hosts" <<'EOF'
127.0.0.1 localhost
::1 localhost
EOF
echo podwire-guest >"$ROOT/etc/hostname"
: >"$ROOT/etc/resolv.conf"
for f in /etc/protocols /etc/services; do
  [ -f "$f" ] && cp "$f" "$ROOT$f"
done

# udhcpc hook: address/prefix, routes (RFC 3442: option 121 replaces the
# router option when present), MTU, resolv.conf. Every lease is also dumped to
# /run/udhcpc.IFACE.env so tests can inspect exactly what the server sent.
cat >"$ROOT/usr/share/udhcpc/default.script" <<'EOF'
#!/bin/sh
# udhcpc hook installed by podwire's build-image.sh
RESOLV=/etc/resolv.conf

add_route() { # add_route DEST GW
  if [ "$2" = "0.0.0.0" ]; then
    ip route replace "$1" dev "$interface" || echo "udhcpc-script: route $1 failed" >&2
  else
    ip route replace "$1" via "$2" dev "$interface" 2>/dev/null ||
      ip route replace "$1" via "$2" dev "$interface" onlink ||
      echo "udhcpc-script: route $1 via $2 failed" >&2
  fi
}

case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
  leasefail|nak)
    echo "udhcpc-script: $1 on $interface" >&2
    ;;
  renew|bound)
    env | grep -vE '^(PWD|SHLVL|HOME|TERM|PATH|_)=' | sort >"/run/udhcpc.$interface.env"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    old="$(ip -4 addr show dev "$interface" | sed -n 's/.*inet \([0-9.]*\/[0-9]*\).*/\1/p')"
    if [ "$old" != "$ip/$mask" ]; then
      ip -4 addr flush dev "$interface"
      ip addr add "$ip/$mask" broadcast "${broadcast:-+}" dev "$interface"
    fi
    ip link set dev "$interface" up
    if [ -n "$staticroutes" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do
        add_route "$1" "$2"
        shift 2
      done
    elif [ -n "$router" ]; then
      while ip route del default dev "$interface" 2>/dev/null; do :; done
      for r in $router; do
        add_route default "$r"
        break
      done
    fi
    {
      s=""
      [ -n "$domain" ] && s="$domain"
      [ -n "$search" ] && s="${s:+$s }$search"
      [ -n "$s" ] && echo "search $s"
      for n in $dns; do echo "nameserver $n"; done
    } >"$RESOLV.tmp"
    mv "$RESOLV.tmp" "$RESOLV"
    echo "udhcpc-script: $1 $interface $ip/$mask router=${router:-} staticroutes=${staticroutes:-} mtu=${mtu:-} dns=${dns:-}" >&2
    ;;
esac
exit 0
EOF
chmod 755 "$ROOT/usr/share/udhcpc/default.script"
# Debian's busybox looks for /etc/udhcpc/default.script
mkdir -p "$ROOT/etc/udhcpc"
ln -s /usr/share/udhcpc/default.script "$ROOT/etc/udhcpc/default.script"

cat >"$ROOT/init" <<'EOF'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mkdir -p /run/dhcpcd
# keep kernel chatter off the console the harness parses
dmesg -n 1
while read -r m; do
  insmod "/lib/modules/$m" || echo "PODWIRE-INSMOD-FAILED $m"
done </lib/modules/load-order
hostname podwire-guest
ip link set lo up
# An interactive shell on ttyS0 as its controlling terminal (so ^C works),
# echo off so that the console carries only output; respawned if it exits.
while :; do
  ENV=/etc/podwire-shrc setsid sh -c 'exec </dev/ttyS0 >/dev/ttyS0 2>&1; exec sh -i'
done
EOF
# Sourced by the interactive shell after its banner, just before its first
# read: the ready line is the last thing the guest prints before a command.
cat >"$ROOT/etc/podwire-shrc" <<'EOF'
unset ENV
PS1=
PS2=
stty -echo
echo
echo PODWIRE-GUEST-READY
EOF
chmod 755 "$ROOT/init"

(cd "$ROOT" && find . -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc --owner=0:0 --quiet) | gzip -6 >"$WORK/initramfs.gz"

cp "$VMLINUZ" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initramfs.gz" "$OUT/initramfs.gz"
echo "$KVER" >"$OUT/kernel-version"
cp "$ROOT/lib/modules/load-order" "$OUT/modules"
rm -rf "$WORK"
echo "$HASH" >"$OUT/.stamp"
log "done: $OUT/vmlinuz $OUT/initramfs.gz ($(du -h "$OUT/initramfs.gz" | cut -f1))"

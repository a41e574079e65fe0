#!/usr/bin/env bash
# Assembles the KubeVirt sidecar image as an OCI image layout directory from two already built,
# statically linked binaries, with tar, gzip and sha256sum only: no base image, no daemon.
# The result is what kubevirt/Containerfile builds (one layer: /usr/bin/{podwire,
# podwire-kubevirt-sidecar}; user 107:107; the sidecar as entrypoint). Push it with e.g.
#   skopeo copy oci:OUT:TAG docker://registry.example.com/podwire/kubevirt-sidecar:TAG
#
# usage: build-oci-image.sh OUT_DIR PODWIRE_BIN SIDECAR_BIN [TAG]
set -euo pipefail

out=${1:?usage: $0 OUT_DIR PODWIRE_BIN SIDECAR_BIN [TAG]}
podwire=${2:?podwire binary}
sidecar=${3:?sidecar binary}
tag=${4:-dev}

for b in "$podwire" "$sidecar"; do
  [ -x "$b" ] || { echo "build-oci-image: $b is not an executable" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rootfs/usr/bin" "$out/blobs/sha256"
install -m 0755 "$podwire" "$work/rootfs/usr/bin/podwire"
install -m 0755 "$sidecar" "$work/rootfs/usr/bin/podwire-kubevirt-sidecar"

# Reproducible: fixed owner, order and times.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$work/rootfs" -cf "$work/layer.tar" usr
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -9 "$work/layer.tar"

blob() { # FILE -> stores it by digest, prints "DIGEST SIZE"
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1)
  s=$(stat -c %s "$1")
  cp "$1" "$out/blobs/sha256/$d"
  echo "$d $s"
}

read -r layer_digest layer_size < <(blob "$work/layer.tar.gz")

cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"User":"107:107","Entrypoint":["/usr/bin/podwire-kubevirt-sidecar"],"Env":["PATH=/usr/bin"],"Labels":{"org.opencontainers.image.title":"podwire-kubevirt-sidecar","org.opencontainers.image.description":"podwire's KubeVirt network binding plugin sidecar"}},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created_by":"scripts/build-oci-image.sh"}]}
JSON
read -r config_digest config_size < <(blob "$work/config.json")

cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$layer_size}]}
JSON
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")

cat > "$out/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"annotations":{"org.opencontainers.image.ref.name":"$tag"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
echo "build-oci-image: $out ($tag) manifest sha256:$manifest_digest"

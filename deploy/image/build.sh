#!/usr/bin/env bash
# Build the worker VM image from Debian packages only (debootstrap from the host's mirror):
#   $OUT/rootfs.qcow2  base disk (ext4, no partition table), the worker as a systemd service;
#                      a link to rootfs-<hash>.qcow2, so that VMs' overlays made on an older
#                      base keep theirs (a base replaced under an overlay corrupts it)
#   $OUT/vmlinuz, $OUT/initrd.img  for direct kernel boot
# Cached: rebuilt only when the worker code or this directory changes (stamp = their hash).
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-/var/lib/libvirt/images/virtscale}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-$(deploy/image/host-mirror.sh)}
DISK_SIZE=${DISK_SIZE:-1536M}
PACKAGES=systemd,systemd-sysv,udev,dbus,kmod,iproute2,nftables,linux-image-amd64,initramfs-tools,python3,python3-pika,python3-bcrypt,python3-cffi-backend,python3-tenacity,qemu-guest-agent

log() { printf 'image: %s\n' "$*" >&2; }

source_hash() {
  { find virtscale worker deploy/image deploy/virtscale-worker.service -type f \( -name '*.py' -o -name '*.sh' -o -name '*.service' \
      -o -name '*.conf' -o -name '*.network' \) -print0 | sort -z | xargs -0 sha256sum; echo "$SUITE $PACKAGES"; } \
    | sha256sum | cut -c1-16
}

wanted=$(source_hash)
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$wanted" ] && [ -e "$OUT/rootfs.qcow2" ]; then
  log "up to date ($OUT, $wanted)"
  exit 0
fi

mkdir -p "$OUT"
work=$(mktemp -d /var/tmp/virtscale-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root

# The package set depends only on SUITE and PACKAGES: keep a debootstrapped tree to reuse.
base_cache=$OUT/base-$(echo "$SUITE $PACKAGES $MIRROR" | sha256sum | cut -c1-12).tar
if [ -f "$base_cache" ]; then
  log "reusing the debootstrapped base $(basename "$base_cache")"
  mkdir -p "$root" && tar -C "$root" -xf "$base_cache"
else
  log "debootstrap $SUITE from $MIRROR (packages only from Debian)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$base_cache" .
fi

log "installing the worker"
deploy/image/customize.sh "$root"

log "kernel and initrd for direct boot"
cp "$(readlink -f "$root/vmlinuz")" "$OUT/vmlinuz.new"
cp "$(readlink -f "$root/initrd.img")" "$OUT/initrd.img.new"

log "filesystem image ($DISK_SIZE, ext4 populated from the tree, then qcow2)"
truncate -s "$DISK_SIZE" "$work/rootfs.raw"
mkfs.ext4 -q -L virtscale-root -d "$root" "$work/rootfs.raw"
qemu-img convert -O qcow2 "$work/rootfs.raw" "$OUT/rootfs-$wanted.qcow2"
chmod 0444 "$OUT/rootfs-$wanted.qcow2"
for file in vmlinuz initrd.img; do mv "$OUT/$file.new" "$OUT/$file"; done
ln -sfn "rootfs-$wanted.qcow2" "$OUT/rootfs.qcow2"
echo "$wanted" >"$OUT/stamp"

# Older bases go once no overlay is built on them any more.
in_use=$(for overlay in "$OUT"/*.qcow2; do
  [ -L "$overlay" ] || qemu-img info -U --output=json "$overlay" 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin).get("backing-filename", ""))'
done)
for base in "$OUT"/rootfs-*.qcow2; do
  [ "$(basename "$base")" = "rootfs-$wanted.qcow2" ] && continue
  grep -qF "$base" <<<"$in_use" || rm -f "$base"
done
log "ready: $OUT ($(du -shL "$OUT/rootfs.qcow2" | cut -f1))"

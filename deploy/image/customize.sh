#!/usr/bin/env bash
# Put the worker into a debootstrapped tree ($1) and make it boot fast and quiet under TCG.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$1

# The same import names as an installed virtscale: the shared code as virtscale, the worker
# as virtscale.worker (see setup.cfg's package_dir).
rm -rf "$root/opt/virtscale/virtscale"
install -d "$root/opt/virtscale/virtscale/worker"
install -m 0644 virtscale/*.py "$root/opt/virtscale/virtscale/"
install -m 0644 worker/*.py "$root/opt/virtscale/virtscale/worker/"
install -m 0755 deploy/image/guest-config.py deploy/image/egress-probe.py "$root/opt/virtscale/"
install -m 0644 deploy/virtscale-worker.service deploy/image/virtscale-config.service \
  deploy/image/virtscale-egress-probe.service "$root/etc/systemd/system/"

# The kernel mounts the root read-write (root=/dev/vda rw): no fstab entry, so nothing at
# boot waits for udev to announce the disk.
: >"$root/etc/fstab"
echo "worker" >"$root/etc/hostname"
: >"$root/etc/resolv.conf"  # no DNS: the guest talks to the broker's address only

wants() { install -d "$root/etc/systemd/system/$1"; ln -sf "/etc/systemd/system/$2" "$root/etc/systemd/system/$1/$2"; }
wants sysinit.target.wants virtscale-config.service
wants multi-user.target.wants virtscale-worker.service
wants multi-user.target.wants virtscale-egress-probe.service
install -d "$root/etc/systemd/system/multi-user.target.wants"
ln -sf /lib/systemd/system/systemd-networkd.service "$root/etc/systemd/system/multi-user.target.wants/"
# Nothing else at boot: no timers, no getty, no waiting for "online".
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
    serial-getty@ttyS0.service getty@tty1.service systemd-networkd-wait-online.service \
    nftables.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
# The power button (ACPI shutdown from libvirt) powers off: logind's default, stated.
install -d "$root/etc/systemd/logind.conf.d"
printf '[Login]\nHandlePowerKey=poweroff\n' >"$root/etc/systemd/logind.conf.d/virtscale.conf"
install -d "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' >"$root/etc/systemd/journald.conf.d/virtscale.conf"
passwd_line=$(grep '^root:' "$root/etc/shadow" || true)
[ -n "$passwd_line" ] && sed -i 's/^root:[^:]*:/root:!:/' "$root/etc/shadow"  # no root login

# Bytecode compiled now: the worker runs with a read-only /opt and would recompile every boot.
python3 -m compileall -q "$root/opt/virtscale"

# A small initrd with just what finds the root disk: unpacking 35 MB under TCG costs seconds.
install -d "$root/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nCOMPRESS=gzip\n' >"$root/etc/initramfs-tools/conf.d/virtscale.conf"
printf 'virtio_pci\nvirtio_blk\next4\n' >"$root/etc/initramfs-tools/modules"
mount -t proc proc "$root/proc"
trap 'umount "$root/proc" 2>/dev/null || true' EXIT
chroot "$root" update-initramfs -u -k all >/dev/null
umount "$root/proc"
trap - EXIT

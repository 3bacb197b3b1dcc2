#!/usr/bin/env bash
# A second libvirt host on this machine: the session daemon of the unprivileged user
# virtscale-b, which root reaches as qemu+unix:///session?socket=<its runtime dir>/libvirt/libvirt-sock.
# It has its own domains and storage and runs TCG guests with user-mode networking, like
# qemu:///system: enough to show and test a pool across two hosts. Idempotent.
#   deploy/second_host.sh           create the user, start its libvirtd, print the URI
#   deploy/second_host.sh --uri     print the URI only;  --socket: the socket path only
set -euo pipefail

USER_NAME=${VIRTSCALE_SECOND_HOST_USER:-virtscale-b}

runtime_dir() { echo "/run/user/$(id -u "$USER_NAME")"; }
socket() { echo "$(runtime_dir)/libvirt/libvirt-sock"; }
uri() { echo "qemu+unix:///session?socket=$(socket)"; }

case "${1:-}" in
  --uri) id "$USER_NAME" >/dev/null 2>&1 && uri; exit 0 ;;
  --socket) id "$USER_NAME" >/dev/null 2>&1 && socket; exit 0 ;;
esac

log() { echo "second host: $*" >&2; }

if ! id "$USER_NAME" >/dev/null 2>&1; then
  log "creating user $USER_NAME"
  useradd --create-home --shell /usr/sbin/nologin "$USER_NAME"
fi
home=$(getent passwd "$USER_NAME" | cut -d: -f6)
run=$(runtime_dir)
install -d -m 0700 -o "$USER_NAME" -g "$USER_NAME" "$run"

as_user() { runuser -u "$USER_NAME" -- env HOME="$home" XDG_RUNTIME_DIR="$run" "$@"; }

if ! as_user virsh -c qemu:///session version >/dev/null 2>&1; then
  log "starting its libvirtd (session mode, no idle timeout)"
  # No --timeout: an idle session daemon would exit and take the host away.
  as_user libvirtd --daemon
  for _ in $(seq 50); do
    as_user virsh -c qemu:///session version >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
# A default storage pool, as virt-manager makes one: the scaler puts its own beside it.
if ! as_user virsh -c qemu:///session pool-info default >/dev/null 2>&1; then
  as_user virsh -q -c qemu:///session pool-define-as default dir --target "$home/.local/share/libvirt/images" >/dev/null
  as_user virsh -q -c qemu:///session pool-build default >/dev/null
  as_user virsh -q -c qemu:///session pool-start default >/dev/null
  as_user virsh -q -c qemu:///session pool-autostart default >/dev/null
fi
uri

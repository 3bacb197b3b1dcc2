#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine, as root: system packages,
# the .venv with the project, RabbitMQ (running, management plugin on) and libvirtd.
# Each step checks first and does nothing when its work is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv python3-dev gcc pkg-config curl
  rabbitmq-server
  libvirt-dev libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
  qemu-system-x86 qemu-utils debootstrap
  # promtool, which the tests use on the alert rules and a live scrape. Under systemd Debian's
  # package also starts a Prometheus server on :9090; no virtscale component uses that port.
  prometheus
  # The guest's Python packages, so a test runs the worker as the VM image does (Debian's
  # python3-pika 1.2, python3-bcrypt, python3-tenacity, nothing from the virtualenv).
  python3-pika python3-bcrypt python3-tenacity
)

log() { printf 'setup: %s\n' "$*" >&2; }

install_packages() {
  local missing=()
  for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

make_venv() {
  local stamp=.venv/.installed
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
  fi
  if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing the project into .venv"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
  fi
}

start_rabbitmq() {
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    log "starting RabbitMQ"
    rabbitmq-server -detached
  fi
  rabbitmqctl -q await_startup --timeout 120 >/dev/null
  if ! rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1; then
    log "enabling the RabbitMQ management plugin"
    rabbitmq-plugins -q enable rabbitmq_management >/dev/null
  fi
  for _ in $(seq 60); do
    curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1 && return
    sleep 1
  done
  log "RabbitMQ management API did not come up on 127.0.0.1:15672"
  return 1
}

start_libvirtd() {
  # What udev does on a normal host: /dev/kvm for the kvm group (libvirt-qemu is in it).
  # Without it libvirt sees KVM when it probes QEMU as root but not as the qemu user, counts
  # its capability cache as outdated on every lookup, and each `virsh define` takes a minute.
  if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  fi
  mkdir -p /var/log/libvirt /var/run/libvirt
  pgrep -x virtlogd >/dev/null || { log "starting virtlogd"; virtlogd -d; }
  pgrep -x libvirtd >/dev/null || { log "starting libvirtd"; libvirtd -d; }
  for _ in $(seq 30); do
    virsh -c qemu:///system version >/dev/null 2>&1 && return
    sleep 1
  done
  log "libvirtd did not answer on qemu:///system"
  return 1
}

install_packages
make_venv
start_rabbitmq
start_libvirtd

#!/usr/bin/env bash
# make postgres: a PostgreSQL server on this machine (installed, created and started when
# missing, as deploy/setup.sh does for the rest), then the collector's role and database
# (deploy/postgres_account.py). Idempotent; as root. Extra arguments go to postgres_account.py.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'postgres: %s\n' "$*" >&2; }

install_postgresql() {
  dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed" && return
  log "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends postgresql
}

start_clusters() {
  # Debian's postgresql-common: the package creates a "main" cluster, but a machine without
  # systemd starts none, and an image may have none at all.
  if [ -z "$(pg_lsclusters -h)" ]; then
    local version
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    log "creating the PostgreSQL $version cluster main"
    pg_createcluster "$version" main >/dev/null
  fi
  pg_lsclusters -h | while read -r version name _port status _rest; do
    if [ "$status" != online ]; then
      log "starting PostgreSQL $version/$name"
      pg_ctlcluster "$version" "$name" start
    fi
  done
  for _ in $(seq 30); do
    pg_isready -q && return
    sleep 1
  done
  log "PostgreSQL did not accept connections on its local socket"
  return 1
}

install_postgresql
start_clusters
exec .venv/bin/python deploy/postgres_account.py "$@"

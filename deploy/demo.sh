#!/usr/bin/env bash
# make demo: image, VMs, then the whole system (see deploy/demo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python deploy/demo.py "$@"

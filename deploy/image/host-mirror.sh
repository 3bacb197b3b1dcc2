#!/usr/bin/env bash
# Print the Debian mirror the host's apt uses (deb822 sources or the classic sources.list).
set -euo pipefail
for file in /etc/apt/sources.list.d/*.sources; do
  [ -f "$file" ] || continue
  mirror=$(awk '/^URIs:/ {print $2}' "$file" | grep -v -- '-security' | head -n1)
  [ -n "$mirror" ] && { echo "$mirror"; exit 0; }
done
mirror=$(awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
echo "${mirror:-http://deb.debian.org/debian}"

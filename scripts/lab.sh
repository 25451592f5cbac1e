#!/usr/bin/env bash
# The lab VM (test/lab/README.md): runs a command as root inside a QEMU VM with a netkit kernel.
# usage: bash scripts/lab.sh KERNEL [--timeout S] [--verbose] -- CMD [ARGS...]   (KERNEL: 6.12 | unstable)
#        bash scripts/lab.sh fetch [--refresh] [KERNEL...]                      (download/cache only)
set -euo pipefail
lab=$(cd "$(dirname "$0")/../test/lab" && pwd)
if [ "${1:-}" = fetch ]; then shift; exec bash "$lab/fetch.sh" "$@"; fi
exec bash "$lab/run.sh" "$@"

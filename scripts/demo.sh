#!/usr/bin/env bash
# The main job: prepares the checkout, then runs the agent in the foreground with two netns workloads
# and a VM, traffic between them with the flows printed live, an identity policy applied after a few
# seconds so that denied flows appear (and a `policy trace` of one), and the service map's address.
# Ctrl-C stops it and removes everything it made.
# usage: sudo bash scripts/demo.sh [--duration SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/kitnet.js demo "$@"

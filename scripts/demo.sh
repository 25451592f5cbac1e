#!/usr/bin/env bash
# The main job: prepares the checkout, then runs the agent in the foreground with two demo workloads,
# traffic between them and their flows printed live. Ctrl-C stops it and removes everything it made.
# usage: sudo bash scripts/demo.sh [--duration SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/kitnet.js demo "$@"

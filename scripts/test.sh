#!/usr/bin/env bash
# The test command: prepares the checkout, then runs unit tests and root integration tests (real
# namespaces, devices and BPF programs) with node's test runner. Run as root on Debian 12.
# Then runs the netkit-dependent tests again inside a QEMU VM on two netkit kernels (test/lab).
# usage: bash scripts/test.sh [unit|root|lab|all]   (KITNET_SKIP_LAB=1 leaves the lab VM out)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
suite=${1:-all}
# The service map page is tested in a real browser: Debian's chromium, driven by playwright-core.
if ! command -v chromium >/dev/null; then
  echo "[test] installing chromium for the browser test" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi
echo "[test] lint" >&2
npx eslint .
files=()
case "$suite" in
  unit) files+=($(find dist/test/unit -name '*.test.js' | sort)) ;;
  root) files+=($(find dist/test/root -name '*.test.js' | sort)) ;;
  all)  files+=($(find dist/test/unit dist/test/root -name '*.test.js' 2>/dev/null | sort)) ;;
  lab) ;;
  *) echo "usage: $0 [unit|root|lab|all]" >&2; exit 2 ;;
esac
if [ "$suite" != lab ] && [ "${#files[@]}" -eq 0 ]; then echo "no test files found" >&2; exit 1; fi
rc=0
if [ "$suite" != lab ]; then
  # One file at a time keeps kernel-object tests from racing each other on a 2-core machine. A file
  # that hangs (a wait with no deadline, a handle left open) fails after 10 min, named, instead of
  # holding the whole run (the longest file takes ~2 min here).
  node --test --test-concurrency=1 --test-timeout=600000 --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination=test-results.tap "${files[@]}" || rc=$?
fi
# The netkit tests again, on real netkit kernels inside a QEMU VM (test/lab/README.md).
if { [ "$suite" = all ] || [ "$suite" = lab ]; } && [ "${KITNET_SKIP_LAB:-0}" != 1 ]; then
  bash test/lab/suite.sh || rc=1
fi
exit "$rc"

#!/usr/bin/env bash
# The test command: prepares the checkout, then runs unit tests and root integration tests (real
# namespaces, devices and BPF programs) with node's test runner. Run as root on Debian 12.
# usage: bash scripts/test.sh [unit|root|all]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
suite=${1:-all}
echo "[test] lint" >&2
npx eslint .
files=()
case "$suite" in
  unit) files+=($(find dist/test/unit -name '*.test.js' | sort)) ;;
  root) files+=($(find dist/test/root -name '*.test.js' | sort)) ;;
  all)  files+=($(find dist/test/unit dist/test/root -name '*.test.js' 2>/dev/null | sort)) ;;
  *) echo "usage: $0 [unit|root|all]" >&2; exit 2 ;;
esac
if [ "${#files[@]}" -eq 0 ]; then echo "no test files found" >&2; exit 1; fi
# One file at a time keeps kernel-object tests from racing each other on a 2-core machine.
exec node --test --test-concurrency=1 --test-reporter=spec --test-reporter-destination=stdout \
  --test-reporter=tap --test-reporter-destination=test-results.tap "${files[@]}"

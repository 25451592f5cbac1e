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
unit_files=($(find dist/test/unit -name '*.test.js' 2>/dev/null | sort))
root_files=($(find dist/test/root -name '*.test.js' 2>/dev/null | sort))
case "$suite" in
  unit) root_files=() ;;
  root) unit_files=() ;;
  all|lab) ;;
  *) echo "usage: $0 [unit|root|lab|all]" >&2; exit 2 ;;
esac
[ "$suite" = lab ] && unit_files=() root_files=()
if [ "$suite" != lab ] && [ $((${#unit_files[@]} + ${#root_files[@]})) -eq 0 ]; then echo "no test files found" >&2; exit 1; fi
rc=0
# One file at a time in each run keeps kernel-object tests from racing each other on a 2-core machine. A
# file that hangs (a wait with no deadline, a handle left open) fails after 10 min, named, instead of
# holding the whole run (the longest file takes ~2 min here).
node_test() { # TAP-FILE FILE...: node's test runner, spec on stdout, TAP into TAP-FILE
  local tap=$1; shift
  node --test --test-concurrency=1 --test-timeout=600000 --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap" "$@"
}
# With both: the unit files (pure logic, real servers, no kernel objects) run beside the root files,
# which mostly wait on the kernel and on traffic; the unit run's output is printed whole when the root
# run ends (test/artifacts/unit.log, TAP in test-results-unit.tap).
# A unit file checks netkit's UAPI facts against the lab kernels (test/unit/netkit-uapi.test.ts; it
# skips without them): fetched first (as the lab part would later), the unit files no longer running
# after the root files that fetched some of them.
lab=0
{ [ "$suite" = all ] || [ "$suite" = lab ]; } && [ "${KITNET_SKIP_LAB:-0}" != 1 ] && lab=1
# The TAP files of the parts that run now (a failed run lists their failures at the end).
((${#unit_files[@]})) && rm -f test-results-unit.tap
((${#root_files[@]})) && rm -f test-results.tap
((lab)) && rm -f test/artifacts/lab-*.tap
if [ "$suite" = all ] && ((lab)); then bash test/lab/fetch.sh; fi
unit_pid= lab_pid=
# $! is the subshell running the job: an early exit stops its children (test runner, QEMU) as well.
trap 'for p in $unit_pid $lab_pid; do pkill -TERM -P "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; :' EXIT
# The lab VMs (test/lab, emulated: CPU-bound) run beside the root files too, at a lower priority: the
# root files mostly wait, and what they do when they run (a probe, a deadline) goes first. Its output is
# printed whole at the end (test/artifacts/lab.log).
if [ "$suite" = all ] && ((lab)) && ((${#root_files[@]})); then
  mkdir -p test/artifacts
  # A VM's deadline (a hung VM is killed) leaves room for the CPU the root files take meanwhile: the
  # 6.12 job takes ~10 min alone, up to 30 min beside the root files on a loaded machine.
  KITNET_LAB_TIMEOUT=${KITNET_LAB_TIMEOUT:-3000} nice -n 10 bash test/lab/suite.sh > test/artifacts/lab.log 2>&1 &
  lab_pid=$!
fi
if ((${#unit_files[@]})) && ((${#root_files[@]})); then
  mkdir -p test/artifacts
  node_test test-results-unit.tap "${unit_files[@]}" > test/artifacts/unit.log 2>&1 &
  unit_pid=$!
elif ((${#unit_files[@]})); then
  node_test test-results-unit.tap "${unit_files[@]}" || rc=$?
fi
if ((${#root_files[@]})); then node_test test-results.tap "${root_files[@]}" || rc=$?; fi
if [ -n "$unit_pid" ]; then
  unit_rc=0
  wait "$unit_pid" || unit_rc=$?
  unit_pid=
  echo "[test] unit files (run beside the root files): output" >&2
  cat test/artifacts/unit.log
  echo "[test] unit files: exit $unit_rc" >&2
  ((unit_rc == 0)) || rc=$unit_rc
fi
# The netkit tests again, on real netkit kernels inside a QEMU VM (test/lab/README.md).
if [ -n "$lab_pid" ]; then
  echo "[test] root files done; waiting for the lab VMs (started beside them)" >&2
  lab_rc=0
  wait "$lab_pid" || lab_rc=$?
  lab_pid=
  echo "[test] lab (run beside the root files): output" >&2
  cat test/artifacts/lab.log
  echo "[test] lab: exit $lab_rc" >&2
  ((lab_rc == 0)) || rc=1
elif ((lab)); then
  bash test/lab/suite.sh || rc=1
fi
trap - EXIT
if ((rc)); then
  echo "[test] failed (exit $rc); the failed tests of every part, with their errors:" >&2
  node dist/test/helpers/tap-failures.js test-results-unit.tap test-results.tap test/artifacts/lab-*.tap || :
fi
exit "$rc"

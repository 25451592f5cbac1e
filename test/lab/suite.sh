#!/usr/bin/env bash
# The lab part of the test command: for each kernel, boots the lab VM and runs the root integration
# tests that need a netkit kernel (and the BPF datapath tests, to cover that kernel's BPF), with
# KITNET_EXPECT_NETKIT=1 so that a netkit test that would skip fails instead. TAP goes to
# test/artifacts/lab-KERNEL.tap. Needs a built checkout (scripts/setup.sh) and root.
# usage: test/lab/suite.sh [KERNEL...]            (default: 6.12 unstable, one after the other)
#   KITNET_LAB_TESTS         test files for every kernel (default: netkit-device, netkit-probe, bpf-datapath)
#   KITNET_LAB_AGENT_TESTS   agent-level test files (default: agent-e2e, vm-plumbing, vm-dhcp, vm-dhcp6, vm-networkd, dns-policy, flow-events-per-connection,
#                            policy-conformance, hubble-cli-devices), run with
#                            workloads on netkit (KITNET_TEST_MODE=netkit) ...
#   KITNET_LAB_AGENT_KERNELS ... on these kernels only (default: 6.12): they take minutes under emulation
#   KITNET_CONFORMANCE_CASES conformance cases by name (default: one case with allow and deny rules;
#                            every case is ~1-2 min in the VM)
#   KITNET_LAB_SYSTEMD_TESTS test files for one more 6.12 VM booted with systemd as init (default: the
#                            kitnet.service test, with KITNET_EXPECT_SYSTEMD=1; empty: none); TAP to
#                            test/artifacts/lab-6.12-systemd.tap
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"

if [ "${1:-}" = --in-vm ]; then
  # inside the VM: prove netkit with iproute2 first (a clear message beats a failing test), then test
  set +e
  ip link add kitnet-labchk type netkit peer name kitnet-labchk1 &&
    ip -d link show kitnet-labchk | grep -q 'netkit mode' && ip link del kitnet-labchk
  [ $? = 0 ] || { echo "[lab] $KITNET_LAB_KERNEL: iproute2 cannot make a netkit pair" >&2; exit 1; }
  set -e
  mkdir -p test/artifacts
  # A hung file fails after 15 min, named, inside the VM's own deadline (the longest takes ~2 min under TCG).
  # shellcheck disable=SC2086
  exec node --test --test-concurrency=1 --test-timeout=900000 --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="test/artifacts/lab-$KITNET_LAB.tap" $KITNET_LAB_TESTS
fi

if [ "${1:-}" = --in-vm-systemd ]; then
  # inside the VM booted with systemd (run.sh --init systemd): the unit tests against PID 1
  [ "$(cat /proc/1/comm)" = systemd ] || { echo "[lab] PID 1 is $(cat /proc/1/comm), not systemd" >&2; exit 1; }
  mkdir -p test/artifacts
  # shellcheck disable=SC2086
  exec node --test --test-concurrency=1 --test-timeout=900000 --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="test/artifacts/lab-$KITNET_LAB-systemd.tap" $KITNET_LAB_SYSTEMD_TESTS
fi

kernels=("$@")
((${#kernels[@]})) || kernels=("${LAB_KERNELS[@]}")
base_tests=${KITNET_LAB_TESTS:-dist/test/root/netkit-device.test.js dist/test/root/netkit-probe.test.js dist/test/root/bpf-datapath.test.js}
agent_tests=${KITNET_LAB_AGENT_TESTS-dist/test/root/agent-e2e.test.js dist/test/root/vm-plumbing.test.js dist/test/root/vm-dhcp.test.js dist/test/root/vm-dhcp6.test.js dist/test/root/vm-networkd.test.js dist/test/root/dns-policy.test.js dist/test/root/flow-events-per-connection.test.js dist/test/root/policy-conformance.test.js dist/test/root/hubble-cli-devices.test.js}
agent_kernels=" ${KITNET_LAB_AGENT_KERNELS:-6.12} "
export KITNET_TEST_MODE=${KITNET_TEST_MODE:-netkit}
export KITNET_CONFORMANCE_CASES=${KITNET_CONFORMANCE_CASES:-ingressDeny wins over allow}
# The agent-level tests make the in-VM run several minutes long on a loaded 2-core machine.
export KITNET_LAB_TIMEOUT=${KITNET_LAB_TIMEOUT:-1500}
systemd_tests=${KITNET_LAB_SYSTEMD_TESTS-dist/test/root/systemd-service.test.js}
for f in $base_tests $agent_tests $systemd_tests; do [ -f "$f" ] || lab_die "$f missing: build first (bash scripts/setup.sh)"; done
bash "$LAB_DIR/fetch.sh" "${kernels[@]}"
failed=()
summary=()
for k in "${kernels[@]}"; do
  export KITNET_LAB_TESTS=$base_tests
  [[ $agent_kernels == *" $k "* ]] && KITNET_LAB_TESTS="$base_tests $agent_tests"
  lab_log "=== $k: $KITNET_LAB_TESTS"
  t0=$(date +%s)
  rc=0
  bash "$LAB_DIR/run.sh" "$k" -- bash test/lab/suite.sh --in-vm || rc=$?
  summary+=("$k: exit $rc in $(($(date +%s) - t0))s")
  ((rc == 0)) || failed+=("$k")
done
# packaging/kitnet.service under a real systemd: one more VM, on 6.12 only, with systemd as PID 1.
if [ -n "$systemd_tests" ] && [[ " ${kernels[*]} " == *" 6.12 "* ]]; then
  export KITNET_LAB_SYSTEMD_TESTS=$systemd_tests
  lab_log "=== 6.12, systemd as init: $systemd_tests"
  t0=$(date +%s)
  rc=0
  bash "$LAB_DIR/run.sh" 6.12 --init systemd -- bash test/lab/suite.sh --in-vm-systemd || rc=$?
  summary+=("6.12 (systemd): exit $rc in $(($(date +%s) - t0))s")
  ((rc == 0)) || failed+=("6.12-systemd")
fi
for s in "${summary[@]}"; do lab_log "$s"; done
if ((${#failed[@]})); then lab_log "FAILED on: ${failed[*]}"; exit 1; fi
lab_log "all lab kernels passed"

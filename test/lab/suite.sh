#!/usr/bin/env bash
# The lab part of the test command: boots lab VMs on netkit kernels and runs the root integration tests
# that need a netkit kernel (and the BPF datapath tests, to cover that kernel's BPF), with
# KITNET_EXPECT_NETKIT=1 so that a netkit test that would skip fails instead. Each VM run is a job, run
# one after the other by default (KITNET_LAB_JOBS), longest first, each one's output kept in
# test/artifacts/lab-JOB.log and printed whole when it ends, its TAP in test/artifacts/lab-JOB.tap.
# Needs a built checkout (scripts/setup.sh) and root.
# usage: test/lab/suite.sh [KERNEL...]            (default: 6.12 unstable)
#   jobs: KERNEL (per kernel: the device/datapath files, plus the agent files on 6.12), and on 6.12 also
#   6.12-systemd and 6.12-nested (below)
#   KITNET_LAB_TESTS         test files for every kernel (default: netkit-device, netkit-probe, bpf-datapath)
#   KITNET_LAB_AGENT_TESTS   agent-level test files (default: agent-e2e, vm-plumbing, vm-dhcp, dns-policy, flow-events-per-connection,
#                            policy-conformance, hubble-cli-devices), run with
#                            workloads on netkit (KITNET_TEST_MODE=netkit) ...
#   KITNET_LAB_AGENT_KERNELS ... on these kernels only (default: 6.12): they take minutes under emulation
#   KITNET_CONFORMANCE_CASES conformance cases by name (default: one case with allow and deny rules;
#                            every case is ~1-2 min in the VM)
#   KITNET_LAB_SYSTEMD_TESTS test files for one more 6.12 VM booted with systemd as init (default: the
#                            kitnet.service test, with KITNET_EXPECT_SYSTEMD=1, and vm-networkd: a guest's
#                            systemd-networkd on a system that systemd booted; empty: none)
#   KITNET_LAB_NESTED_TESTS  test files for one more 6.12 VM, the long ones (default: vm-qemu-guest, a
#                            QEMU guest booted by DHCP/RA on netkit L2, TCG within TCG; cluster-hosts,
#                            three agents across a bridge with etcd; empty: none)
#   KITNET_LAB_JOBS          VMs at a time (default 1). On 2 cores two TCG VMs of 2 vCPUs slow each other
#                            down about as much as they overlap: in fresh-clone runs (2026-12-05) the lab
#                            took 23 min with 2 and 22 one after the other.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_DIR"

# inside a VM: the job's name names its TAP file
tap() { echo "test/artifacts/lab-${KITNET_LAB_JOB:-$KITNET_LAB}.tap"; }

if [ "${1:-}" = --in-vm ]; then
  # inside the VM: prove netkit with iproute2 first (a clear message beats a failing test), then test
  set +e
  ip link add kitnet-labchk type netkit peer name kitnet-labchk1 &&
    ip -d link show kitnet-labchk | grep -q 'netkit mode' && ip link del kitnet-labchk
  [ $? = 0 ] || { echo "[lab] $KITNET_LAB_KERNEL: iproute2 cannot make a netkit pair" >&2; exit 1; }
  set -e
  mkdir -p test/artifacts
  # A hung file fails after 15 min, named, inside the VM's own deadline (the longest takes ~4 min under TCG).
  # shellcheck disable=SC2086
  exec node --test --test-concurrency=1 --test-timeout=900000 --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$(tap)" $KITNET_LAB_TESTS
fi

if [ "${1:-}" = --in-vm-systemd ]; then
  # inside the VM booted with systemd (run.sh --init systemd): the unit tests against PID 1
  [ "$(cat /proc/1/comm)" = systemd ] || { echo "[lab] PID 1 is $(cat /proc/1/comm), not systemd" >&2; exit 1; }
  mkdir -p test/artifacts
  # shellcheck disable=SC2086
  exec node --test --test-concurrency=1 --test-timeout=900000 --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$(tap)" $KITNET_LAB_TESTS
fi

kernels=("$@")
((${#kernels[@]})) || kernels=("${LAB_KERNELS[@]}")
base_tests=${KITNET_LAB_TESTS:-dist/test/root/netkit-device.test.js dist/test/root/netkit-probe.test.js dist/test/root/bpf-datapath.test.js}
agent_tests=${KITNET_LAB_AGENT_TESTS-dist/test/root/agent-e2e.test.js dist/test/root/vm-plumbing.test.js dist/test/root/vm-dhcp.test.js dist/test/root/dns-policy.test.js dist/test/root/flow-events-per-connection.test.js dist/test/root/policy-conformance.test.js dist/test/root/hubble-cli-devices.test.js}
agent_kernels=" ${KITNET_LAB_AGENT_KERNELS:-6.12} "
systemd_tests=${KITNET_LAB_SYSTEMD_TESTS-dist/test/root/systemd-service.test.js dist/test/root/vm-networkd.test.js}
nested_tests=${KITNET_LAB_NESTED_TESTS-dist/test/root/vm-qemu-guest.test.js dist/test/root/cluster-hosts.test.js}
parallel=${KITNET_LAB_JOBS:-1}
[[ $parallel =~ ^[1-9][0-9]*$ ]] || lab_die "KITNET_LAB_JOBS=$parallel: a number of VMs at a time (1 or more)"
export KITNET_TEST_MODE=${KITNET_TEST_MODE:-netkit}
export KITNET_CONFORMANCE_CASES=${KITNET_CONFORMANCE_CASES:-ingressDeny wins over allow}
# The agent-level tests make the in-VM run several minutes long on a loaded 2-core machine (longer with
# two VMs sharing it: KITNET_LAB_JOBS).
export KITNET_LAB_TIMEOUT=${KITNET_LAB_TIMEOUT:-1800}
for f in $base_tests $agent_tests $systemd_tests $nested_tests; do [ -f "$f" ] || lab_die "$f missing: build first (bash scripts/setup.sh)"; done
bash "$LAB_DIR/fetch.sh" "${kernels[@]}"

# The jobs, longest first (measured alone: a kernel's run with the agent tests ~10 min, nested ~8,
# systemd ~5, a kernel's device/datapath files alone ~3): NAME KERNEL INIT TESTS
long_jobs=()
short_jobs=()
has612=0
for k in "${kernels[@]}"; do
  [ "$k" = 6.12 ] && has612=1
  if [[ $agent_kernels == *" $k "* ]]; then long_jobs+=("$k|$k|busybox|$base_tests $agent_tests"); else short_jobs+=("$k|$k|busybox|$base_tests"); fi
done
if ((has612)); then
  [ -n "$nested_tests" ] && long_jobs+=("6.12-nested|6.12|busybox|$nested_tests")
  # packaging/kitnet.service under a real systemd, with systemd as PID 1
  [ -n "$systemd_tests" ] && long_jobs+=("6.12-systemd|6.12|systemd|$systemd_tests")
fi
jobs_list=("${long_jobs[@]}" "${short_jobs[@]}")

mkdir -p test/artifacts
job_run() { # NAME KERNEL INIT TESTS: one VM, its output into its log, its exit code into a file
  local name=$1 kernel=$2 init=$3 tests=$4 mode=--in-vm
  [ "$init" = systemd ] && mode=--in-vm-systemd
  local t0 rc=0
  t0=$(date +%s)
  KITNET_LAB_JOB=$name KITNET_LAB_TESTS=$tests bash "$LAB_DIR/run.sh" "$kernel" --init "$init" -- bash test/lab/suite.sh "$mode" \
    > "test/artifacts/lab-$name.log" 2>&1 || rc=$?
  echo "$rc $(($(date +%s) - t0))" > "test/artifacts/lab-$name.result"
}
job_report() { # NAME: its whole output, then one line
  local name=$1 rc=125 secs=0
  # A job that ended without its result (killed, or its tree removed under it) failed.
  read -r rc secs 2>/dev/null < "test/artifacts/lab-$name.result" || lab_log "$name: ended without a result (killed?)"
  lab_log "=== $name: output"
  cat "test/artifacts/lab-$name.log" 2>/dev/null || :
  summary+=("$name: exit $rc in ${secs}s")
  ((rc == 0)) || failed+=("$name")
}

failed=()
summary=()
declare -A running=() # pid -> job name
# Interrupted (CI's deadline, Ctrl-C): the VMs go with us (run.sh kills its QEMU on TERM).
stop_jobs() { for pid in "${!running[@]}"; do pkill -TERM -P "$pid" 2>/dev/null || :; done; }
trap 'stop_jobs; exit 130' INT TERM
for job in "${jobs_list[@]}"; do
  IFS='|' read -r name kernel init tests <<< "$job"
  while ((${#running[@]} >= parallel)); do
    wait -n || :
    for pid in "${!running[@]}"; do
      # Still running: alive with no result yet. One gone without a result is done too (else this loop
      # would spin on it for ever: wait -n returns at once when no child is left).
      [ -f "test/artifacts/lab-${running[$pid]}.result" ] || ! kill -0 "$pid" 2>/dev/null || continue
      wait "$pid" || :
      job_report "${running[$pid]}"
      unset "running[$pid]"
    done
  done
  rm -f "test/artifacts/lab-$name.result"
  lab_log "=== $name started ($kernel, init $init): $tests"
  job_run "$name" "$kernel" "$init" "$tests" &
  running[$!]=$name
done
for pid in "${!running[@]}"; do
  wait "$pid" || :
  job_report "${running[$pid]}"
done
for s in "${summary[@]}"; do lab_log "$s"; done
if ((${#failed[@]})); then lab_log "FAILED: ${failed[*]}"; exit 1; fi
lab_log "all lab jobs passed"

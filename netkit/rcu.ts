// /sys/kernel/rcu_expedited: whether synchronize_rcu() waits for a normal RCU grace period or
// forces an expedited one. It matters to kitnet because every tcx (and netkit) BPF_LINK_CREATE waits
// for a grace period with RTNL held (tcx_entry_sync() -> synchronize_rcu()): attaching an endpoint's
// two programs took 26-28 ms on the 2-core test host with the default, 0.13 ms expedited
// (bench/attach.c --expedited). The setting is HOST-WIDE: every synchronize_rcu() in the kernel then
// interrupts all online CPUs (IPIs) instead of waiting for them to pass a quiescent state, which costs
// latency-sensitive tenants (vCPU threads exit to the host on each). So kitnet never changes it by
// itself; these helpers are for an explicit operator opt-in and for the benchmarks.
import { readFileSync, writeFileSync } from 'node:fs';

export const RCU_EXPEDITED_PATH = '/sys/kernel/rcu_expedited';

function rcuError(op: 'read' | 'write', err: unknown): Error {
  const code = (err as { code?: string }).code;
  const why = code === 'ENOENT'
    ? 'no such file (sysfs not mounted, or a kernel without the knob)'
    : code === 'EROFS'
      ? '/sys is read-only here (a container, or a systemd unit with ProtectKernelTunables=yes)'
      : code === 'EACCES' || code === 'EPERM'
        ? 'root is needed'
        : code ?? String(err);
  return new Error(`cannot ${op} ${RCU_EXPEDITED_PATH}: ${why}`, { cause: err });
}

/** The current value: true when synchronize_rcu() is expedited host-wide. */
export function rcuExpeditedGet(): boolean {
  let text: string;
  try {
    text = readFileSync(RCU_EXPEDITED_PATH, 'utf8');
  } catch (err) {
    throw rcuError('read', err);
  }
  return text.trim() !== '0';
}

/**
 * Sets the host-wide value and returns the previous one (to restore it). Writes nothing when the value
 * is already what is asked for. The kernel counts nothing: whoever sets it last wins.
 */
export function rcuExpeditedSet(on: boolean): boolean {
  const before = rcuExpeditedGet();
  if (before === on) return before;
  try {
    writeFileSync(RCU_EXPEDITED_PATH, on ? '1' : '0');
  } catch (err) {
    throw rcuError('write', err);
  }
  return before;
}

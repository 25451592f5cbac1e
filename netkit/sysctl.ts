// The few /proc/sys/net settings kitnet needs: host forwarding, and per host-side device settings
// that keep the first packets from being dropped (rp_filter, IPv6 DAD on the host end).
// /proc/sys files are read and written with synchronous calls: each is a few microseconds in the
// kernel, while the promise API costs one thread-pool round trip per open/read/write/close (about
// 0.3 ms each on a busy 2-core host, ~20 of them per endpoint).
import { readFileSync, writeFileSync } from 'node:fs';

/** sysctl path segment of an interface name ("." in names becomes "/" in /proc/sys paths). */
export function sysctlIfname(ifname: string): string {
  return ifname.replace(/\./g, '/');
}

function sysctlEnsure(path: string, value: string): boolean {
  const full = `/proc/sys/${path}`;
  const current = readFileSync(full, 'utf8').trim();
  if (current === value) return false;
  writeFileSync(full, value);
  return true;
}

export interface ForwardingChange {
  ipv4Changed: boolean;
  ipv6Changed: boolean;
}

/** net.ipv4.ip_forward=1 and net.ipv6.conf.all.forwarding=1 (the latter also sets conf.default). */
export async function hostForwardingEnsure(): Promise<ForwardingChange> {
  try {
    const ipv4Changed = sysctlEnsure('net/ipv4/ip_forward', '1');
    const ipv6Changed = sysctlEnsure('net/ipv6/conf/all/forwarding', '1');
    return { ipv4Changed, ipv6Changed };
  } catch (err) {
    const code = (err as { code?: string }).code;
    throw new Error(`cannot enable forwarding through /proc/sys (${code ?? String(err)}); kitnet must run as root`, { cause: err });
  }
}

/**
 * Settings of the host end of a pair, before it goes up: no reverse-path filter (the effective value
 * is max(all, dev), and strict mode passes anyway because the /32 route points back at the device),
 * no DAD on its link-local address, and forwarding on. Each is read first and written only when it
 * differs: a new device inherits forwarding=1 from conf/default once forwarding is on, and a write
 * of net.ipv6.conf.<dev>.forwarding takes RTNL (rtnl_trylock, the syscall restarting until it gets
 * it) even when the value does not change.
 */
export function hostSideSysctlsApply(ifname: string): void {
  const dev = sysctlIfname(ifname);
  sysctlEnsure(`net/ipv4/conf/${dev}/rp_filter`, '0');
  sysctlEnsure(`net/ipv4/conf/${dev}/forwarding`, '1');
  try {
    sysctlEnsure(`net/ipv6/conf/${dev}/accept_dad`, '0');
    sysctlEnsure(`net/ipv6/conf/${dev}/forwarding`, '1');
  } catch (err) {
    // IPv6 disabled on the host (no conf/<dev>) is not kitnet's to fix here; addresses will fail later.
    if ((err as { code?: string }).code !== 'ENOENT') throw err;
  }
}

// Kernel capability probes, each a real kernel operation where one exists without BPF code:
// netkit by creating and deleting a pair, clsact by adding the qdisc to a throwaway veth, tcx by
// looking for BPF_TCX_INGRESS in the running kernel's BTF. Results are cached per process.
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { release } from 'node:os';
import { KernelError } from '../common/kernel-error.js';
import { errnoIs } from './errors.js';
import { attr, message, str, tcmsg } from './attrs.js';
import { linkDelete, linkGet, linkList, linkSet } from './link.js';
import { NETKIT_REQUIREMENT, netkitCreateMessage } from './netkit.js';
import type { Rtnl } from './socket.js';
import { rtnlHost } from './socket.js';
import type { KernelFeatures } from './types.js';
import {
  NLM_F_CREATE, NLM_F_EXCL, RTM_NEWLINK, RTM_NEWQDISC, TC_H_CLSACT, TC_H_CLSACT_HANDLE, TCA_KIND,
} from './uapi.js';
import { vethCreateMessage } from './veth.js';

/** Alias of probe devices, so a crash between create and delete is cleaned up by the next probe. */
export const PROBE_ALIAS = 'kitnet-probe';

function probeName(): string {
  return `knprobe${randomBytes(3).toString('hex')}`;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Deletes probe devices a crashed earlier probe may have left behind. */
async function probeLeftoversRemove(nl: Rtnl): Promise<void> {
  for (const l of await linkList(nl)) {
    if (l.alias === PROBE_ALIAS || /^knprobe[0-9a-f]{6}p?$/.test(l.ifname)) await linkDelete(nl, l.ifname);
  }
}

/** Creates a pair with `payload`, labels it, runs `fn` on it, and always deletes it. */
async function withProbePair<T>(nl: Rtnl, name: string, payload: Buffer, fn: (ifindex: number) => Promise<T>): Promise<T> {
  await nl.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, payload, { name });
  try {
    const link = await linkGet(nl, name);
    if (!link) throw new Error(`probe device ${name} vanished`);
    await linkSet(nl, { name, ifindex: link.ifindex }, { alias: PROBE_ALIAS });
    return await fn(link.ifindex);
  } finally {
    await linkDelete(nl, name);
  }
}

export interface ProbeResult {
  ok: boolean;
  detail: string;
  /** Set when the probe could not run at all (e.g. EPERM), as opposed to the feature missing. */
  error?: unknown;
}

export async function netkitProbe(nl: Rtnl = rtnlHost()): Promise<ProbeResult> {
  const name = probeName();
  try {
    await withProbePair(nl, name, netkitCreateMessage({
      ifname: name, mode: 'l3', peerPolicy: 'drop', peer: { ifname: `${name}p` },
    }), async () => undefined);
    return { ok: true, detail: 'created and deleted a netkit pair' };
  } catch (err) {
    if (errnoIs(err, 'EOPNOTSUPP')) {
      return { ok: false, detail: `creating a netkit pair failed with EOPNOTSUPP: this kernel has no netkit driver (needs ${NETKIT_REQUIREMENT})` };
    }
    return { ok: false, detail: `netkit probe failed: ${describe(err)}`, error: err };
  }
}

export async function clsactProbe(nl: Rtnl = rtnlHost()): Promise<ProbeResult> {
  const name = probeName();
  try {
    await withProbePair(nl, name, vethCreateMessage({ ifname: name, peer: { ifname: `${name}p` } }), async (ifindex) => {
      await nl.request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL,
        message(tcmsg({ ifindex, handle: TC_H_CLSACT_HANDLE, parent: TC_H_CLSACT }), [attr(TCA_KIND, str('clsact'))]),
        { name, ifindex });
    });
    return { ok: true, detail: 'added a clsact qdisc to a probe veth (removed with it)' };
  } catch (err) {
    return { ok: false, detail: `clsact probe failed: ${describe(err)}`, error: err };
  }
}

export function kernelVersionAtLeast(rel: string, major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(rel);
  if (!m) return false;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj > major || (maj === major && min >= minor);
}

/**
 * tcx needs a BPF program to attach, which netkit/ does not load; the kernel's own BTF lists the
 * attach types it knows, so BPF_TCX_INGRESS there is the kernel's word. Falls back to the version.
 */
export async function tcxProbe(rel = release()): Promise<{ ok: boolean; detail: string }> {
  try {
    const btf = await readFile('/sys/kernel/btf/vmlinux');
    const ok = btf.includes('\0BPF_TCX_INGRESS\0');
    return { ok, detail: ok ? 'BPF_TCX_INGRESS is in the kernel BTF (enum bpf_attach_type)' : 'the kernel BTF has no BPF_TCX_INGRESS (needs Linux >= 6.6)' };
  } catch {
    const ok = kernelVersionAtLeast(rel, 6, 6);
    return { ok, detail: `no readable /sys/kernel/btf/vmlinux; decided by kernel version ${rel} ${ok ? '>=' : '<'} 6.6` };
  }
}

let cached: Promise<KernelFeatures> | undefined;

async function probeAll(): Promise<KernelFeatures> {
  const nl = rtnlHost();
  try {
    await probeLeftoversRemove(nl);
  } catch (err) {
    if (err instanceof KernelError && errnoIs(err, 'EPERM', 'EACCES')) throw err;
  }
  const netkit = await netkitProbe(nl);
  const clsact = await clsactProbe(nl);
  // Without privileges nothing was probed: say so instead of caching "unsupported".
  for (const r of [netkit, clsact]) if (errnoIs(r.error, 'EPERM', 'EACCES')) throw r.error;
  const tcx = await tcxProbe();
  return {
    kernelRelease: release(),
    netkit: netkit.ok,
    netkitDetail: netkit.detail,
    tcx: tcx.ok,
    tcxDetail: tcx.detail,
    tcClsact: clsact.ok,
    tcClsactDetail: clsact.detail,
  };
}

/** What this kernel can do. Cached; `refresh` probes again. */
export function featuresProbe(opts: { refresh?: boolean } = {}): Promise<KernelFeatures> {
  if (!cached || opts.refresh) {
    cached = probeAll();
    cached.catch(() => { cached = undefined; });
  }
  return cached;
}

// Attaching programs to endpoint devices with BPF links, pinned at <pinRoot>/links/<ifname>/<program>.
// A pinned link keeps the program attached while the agent is down; a restarted (or upgraded) agent adopts
// it by swapping in the freshly loaded program with BPF_LINK_UPDATE, which is atomic for the traffic.
import { existsSync, mkdirSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { AttachKind } from './types.js';
import { kcall } from './errors.js';
import { BPF_LINK_TYPE_NETKIT, BPF_LINK_TYPE_TCX, BPF_NETKIT_PEER, BPF_NETKIT_PRIMARY, BPF_TCX_EGRESS, BPF_TCX_INGRESS } from './layout.gen.js';
import type { LinkInfo } from '../common/native.js';
import { native } from '../common/native.js';
import type { ProgName } from './loader.js';
import { pinPaths } from './loader.js';

/** What an endpoint's two links do; also the names of their pins. */
export const LINK_ROLES = ['from_workload', 'to_workload'] as const;
export type LinkRole = (typeof LINK_ROLES)[number];

/**
 * from_workload sees packets the workload sends: tcx ingress of the host-side veth, or the netkit peer's
 * xmit. to_workload sees packets towards the workload: tcx egress, or the netkit primary's xmit, where
 * skb->dev is already the peer, so it takes the program that finds its endpoint by destination address.
 * Both netkit types attach on the primary (host-side) ifindex.
 */
export function progForRole(kind: AttachKind, role: LinkRole): ProgName {
  if (role === 'from_workload') return 'from_workload';
  return kind === 'tcx' ? 'to_workload' : 'to_workload_netkit';
}

export function attachTypeFor(kind: AttachKind, role: LinkRole): number {
  if (kind === 'tcx') return role === 'from_workload' ? BPF_TCX_INGRESS : BPF_TCX_EGRESS;
  return role === 'from_workload' ? BPF_NETKIT_PEER : BPF_NETKIT_PRIMARY;
}

function linkTypeFor(kind: AttachKind): number {
  return kind === 'tcx' ? BPF_LINK_TYPE_TCX : BPF_LINK_TYPE_NETKIT;
}

/** The endpoint's devices as the attach and its checks know them. */
export interface LinkTarget {
  /** The host side (veth, netkit primary) or the tap: where every link is created. */
  ifindex: number;
  /**
   * netkit: the peer's ifindex, numbered in the peer's namespace. The kernel keeps a BPF_NETKIT_PEER
   * link on the peer device (netkit_dev_fetch swaps the primary for its peer), so that link's info
   * reports the peer's ifindex, not the one it was created with. Unset: any live device will do
   * (a caller that just made the pair).
   */
  peerIfindex?: number;
}

/**
 * A pinned link is this endpoint's current one: the role's attach kind and type, on the endpoint's
 * device (not a device that is gone, ifindex 0, or was made again), running the loaded program. The
 * reconcile loop's "attached" check and the attach's adoption both ask this, so what one calls
 * current the other keeps.
 */
export function linkIsCurrent(
  info: Pick<LinkInfo, 'type' | 'attachType' | 'ifindex' | 'progId'>,
  kind: AttachKind,
  role: LinkRole,
  target: LinkTarget,
  progIds: Readonly<Record<ProgName, number>>,
): boolean {
  return linkIsOnDevice(info, kind, role, target) && info.progId === progIds[progForRole(kind, role)];
}

/**
 * A pinned link is live on the endpoint's device in the role's attach kind and type, whatever program it
 * runs (the loaded one or an earlier release's): the device's traffic in that direction is judged.
 */
export function linkIsOnDevice(info: Pick<LinkInfo, 'type' | 'attachType' | 'ifindex'>, kind: AttachKind, role: LinkRole, target: LinkTarget): boolean {
  if (info.type !== linkTypeFor(kind) || info.attachType !== attachTypeFor(kind, role) || info.ifindex === 0) return false;
  if (kind === 'netkit' && role === 'from_workload') return target.peerIfindex === undefined || info.ifindex === target.peerIfindex;
  return info.ifindex === target.ifindex;
}

export function linkPinPath(pinRoot: string, ifname: string, role: LinkRole): string {
  return join(pinPaths(pinRoot).links, ifname, role);
}

function ifnameCheck(ifname: string): void {
  if (!ifname || ifname.length > 15 || ifname.includes('/') || ifname === '.' || ifname === '..')
    throw new TypeError(`bad interface name ${JSON.stringify(ifname)}`);
}

export interface AttachResult {
  role: LinkRole;
  prog: ProgName;
  linkId: number;
  /** true when an existing pinned link was reused (its program swapped in place). */
  adopted: boolean;
}

export function linkAttach(
  pinRoot: string,
  ep: { ifname: string; kind: AttachKind } & LinkTarget,
  progFds: Readonly<Record<ProgName, number>>,
  progIds: Readonly<Record<ProgName, number>>,
): AttachResult[] {
  ifnameCheck(ep.ifname);
  const n = native();
  const device = { name: ep.ifname, ifindex: ep.ifindex };
  mkdirSync(join(pinPaths(pinRoot).links, ep.ifname), { recursive: true });
  const results: AttachResult[] = [];
  const created: string[] = [];
  try {
    for (const role of LINK_ROLES) {
      const prog = progForRole(ep.kind, role);
      const path = linkPinPath(pinRoot, ep.ifname, role);
      const attachType = attachTypeFor(ep.kind, role);
      if (existsSync(path)) {
        const fd = kcall(() => n.objGet(path), device, { path });
        try {
          const info = kcall(() => n.linkInfo(fd), device);
          if (linkIsOnDevice(info, ep.kind, role, ep)) {
            if (info.progId !== progIds[prog]) kcall(() => n.linkUpdate(fd, progFds[prog]), device);
            results.push({ role, prog, linkId: info.id, adopted: true });
            continue;
          }
          // A link for a device that is gone (ifindex 0) or was recreated, or another attach kind: stale.
          unlinkSync(path);
        } finally {
          n.fdClose(fd);
        }
      }
      const fd = kcall(() => n.linkCreate(progFds[prog], ep.ifindex, attachType), device, { attach: ep.kind });
      try {
        kcall(() => n.objPin(fd, path), device, { path });
        created.push(path);
        results.push({ role, prog, linkId: kcall(() => n.linkInfo(fd)).id, adopted: false });
      } finally {
        n.fdClose(fd); // the pin holds the link now
      }
    }
  } catch (err) {
    // Do not leave half an endpoint attached by this call; adopted links stay as they were.
    for (const p of created) rmSync(p, { force: true });
    throw err;
  }
  return results;
}

/**
 * Detach the endpoint's programs now (BPF_LINK_DETACH: the kernel would otherwise detach only when the
 * deferred release of the last reference runs) and remove the pins. Idempotent; a link whose device is
 * already gone is just unpinned.
 */
export function linkDetach(pinRoot: string, ifname: string): void {
  ifnameCheck(ifname);
  const n = native();
  for (const role of LINK_ROLES) {
    const path = linkPinPath(pinRoot, ifname, role);
    if (!existsSync(path)) continue;
    let fd = -1;
    try {
      fd = n.objGet(path);
      n.linkDetach(fd);
    } catch {
      // already detached (device gone): removing the pin below is all that is left to do
    } finally {
      if (fd >= 0) n.fdClose(fd);
    }
  }
  rmSync(join(pinPaths(pinRoot).links, ifname), { recursive: true, force: true });
}

/** ifnames that have at least one pinned link. */
export function linkList(pinRoot: string): string[] {
  const dir = pinPaths(pinRoot).links;
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && readdirSync(join(dir, d.name)).length > 0)
    .map((d) => d.name)
    .sort();
}

/** Kernel view of the pinned links of one device (ids, program ids, ifindex; ifindex 0 = device gone). */
export function linkPinnedInfo(pinRoot: string, ifname: string): Partial<Record<LinkRole, LinkInfo>> {
  ifnameCheck(ifname);
  const n = native();
  const out: Partial<Record<LinkRole, LinkInfo>> = {};
  for (const role of LINK_ROLES) {
    const path = linkPinPath(pinRoot, ifname, role);
    if (!existsSync(path)) continue;
    const fd = kcall(() => n.objGet(path), { name: ifname }, { path });
    try {
      out[role] = kcall(() => n.linkInfo(fd), { name: ifname });
    } finally {
      n.fdClose(fd);
    }
  }
  return out;
}

/**
 * Every pinned link of a live device switched to the loaded programs (BPF_LINK_UPDATE, atomic for the
 * traffic), before the agent adopts them one by one: used when the old programs must stop at once (a
 * migrated conntrack map, bpf/maps/conntrack-migrate.ts). Links of devices that are gone are left to the
 * reconcile loop; failures are returned, not thrown (the old program keeps running on that device).
 */
export function linksRetarget(
  pinRoot: string,
  progFds: Readonly<Record<ProgName, number>>,
  progIds: Readonly<Record<ProgName, number>>,
): { updated: number; failed: Array<{ ifname: string; role: LinkRole; error: string }> } {
  const n = native();
  let updated = 0;
  const failed: Array<{ ifname: string; role: LinkRole; error: string }> = [];
  for (const ifname of linkList(pinRoot)) {
    for (const role of LINK_ROLES) {
      const path = linkPinPath(pinRoot, ifname, role);
      if (!existsSync(path)) continue;
      let fd = -1;
      try {
        fd = kcall(() => n.objGet(path), { name: ifname }, { path });
        const info = kcall(() => n.linkInfo(fd), { name: ifname });
        const kind: AttachKind | undefined = info.type === BPF_LINK_TYPE_TCX ? 'tcx' : info.type === BPF_LINK_TYPE_NETKIT ? 'netkit' : undefined;
        if (!info.ifindex || !kind) continue;
        const prog = progForRole(kind, role);
        if (info.progId === progIds[prog]) continue;
        kcall(() => n.linkUpdate(fd, progFds[prog]), { name: ifname, ifindex: info.ifindex });
        updated++;
      } catch (err) {
        failed.push({ ifname, role, error: (err as Error).message });
      } finally {
        if (fd >= 0) n.fdClose(fd);
      }
    }
  }
  return { updated, failed };
}

// Attaching programs to endpoint devices with BPF links, pinned at <pinRoot>/links/<ifname>/<program>.
// A pinned link keeps the program attached while the agent is down; a restarted (or upgraded) agent adopts
// it by swapping in the freshly loaded program with BPF_LINK_UPDATE, which is atomic for the traffic.
import { existsSync, mkdirSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { AttachKind } from './types.js';
import { kcall } from './errors.js';
import { BPF_LINK_TYPE_NETKIT, BPF_LINK_TYPE_TCX, BPF_NETKIT_PEER, BPF_NETKIT_PRIMARY, BPF_TCX_EGRESS, BPF_TCX_INGRESS } from './layout.gen.js';
import type { LinkInfo } from './native.js';
import { native } from './native.js';
import type { ProgName } from './loader.js';
import { PROG_NAMES, pinPaths } from './loader.js';

/**
 * from_workload sees packets the workload sends: tcx ingress of the host-side veth, or the netkit peer's
 * xmit. to_workload sees packets towards the workload: tcx egress, or the netkit primary's xmit. Both
 * netkit types attach on the primary (host-side) ifindex.
 */
export function attachTypeFor(kind: AttachKind, prog: ProgName): number {
  if (kind === 'tcx') return prog === 'from_workload' ? BPF_TCX_INGRESS : BPF_TCX_EGRESS;
  return prog === 'from_workload' ? BPF_NETKIT_PEER : BPF_NETKIT_PRIMARY;
}

function linkTypeFor(kind: AttachKind): number {
  return kind === 'tcx' ? BPF_LINK_TYPE_TCX : BPF_LINK_TYPE_NETKIT;
}

export function linkPinPath(pinRoot: string, ifname: string, prog: ProgName): string {
  return join(pinPaths(pinRoot).links, ifname, prog);
}

function ifnameCheck(ifname: string): void {
  if (!ifname || ifname.length > 15 || ifname.includes('/') || ifname === '.' || ifname === '..')
    throw new TypeError(`bad interface name ${JSON.stringify(ifname)}`);
}

export interface AttachResult {
  prog: ProgName;
  linkId: number;
  /** true when an existing pinned link was reused (its program swapped in place). */
  adopted: boolean;
}

export function linkAttach(
  pinRoot: string,
  ep: { ifname: string; ifindex: number; kind: AttachKind },
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
    for (const prog of PROG_NAMES) {
      const path = linkPinPath(pinRoot, ep.ifname, prog);
      const attachType = attachTypeFor(ep.kind, prog);
      if (existsSync(path)) {
        const fd = kcall(() => n.objGet(path), device, { path });
        try {
          const info = kcall(() => n.linkInfo(fd), device);
          if (info.ifindex === ep.ifindex && info.attachType === attachType && info.type === linkTypeFor(ep.kind)) {
            if (info.progId !== progIds[prog]) kcall(() => n.linkUpdate(fd, progFds[prog]), device);
            results.push({ prog, linkId: info.id, adopted: true });
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
        results.push({ prog, linkId: kcall(() => n.linkInfo(fd)).id, adopted: false });
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
  for (const prog of PROG_NAMES) {
    const path = linkPinPath(pinRoot, ifname, prog);
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
export function linkPinnedInfo(pinRoot: string, ifname: string): Partial<Record<ProgName, LinkInfo>> {
  ifnameCheck(ifname);
  const n = native();
  const out: Partial<Record<ProgName, LinkInfo>> = {};
  for (const prog of PROG_NAMES) {
    const path = linkPinPath(pinRoot, ifname, prog);
    if (!existsSync(path)) continue;
    const fd = kcall(() => n.objGet(path), { name: ifname }, { path });
    try {
      out[prog] = kcall(() => n.linkInfo(fd), { name: ifname });
    } finally {
      n.fdClose(fd);
    }
  }
  return out;
}

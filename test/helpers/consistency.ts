import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { datapathLoad } from '../../bpf/index.js';
import { policyKeyDecode } from '../../agent/policy/index.js';
import { links, routes, run } from './sys.js';

interface Row {
  namespace: string;
  name: string;
  spec: string;
  endpoint_id: number;
  identity: number;
  ipv4: string;
  ipv6: string;
  host_ifname: string;
  state: string;
  observed: string | null;
}

/**
 * Compares an agent's store with the kernel, both ways: every stored workload is fully wired (link,
 * addresses, routes, pinned links, endpoint / ipcache / policy entries), and nothing of kitnet's exists
 * that the store does not know. Call it while the agent is stopped. Returns the problems found.
 */
export async function storeKernelDiff(opts: {
  dbPath: string;
  pinRoot: string;
  aliasPrefix: string;
  poolPrefix4: string;
  poolPrefix6: string;
}): Promise<string[]> {
  const problems: string[] = [];
  const db = new Database(opts.dbPath, { readonly: true });
  let rows: Row[];
  let identityRefs: Array<{ id: number; refs: number }>;
  try {
    rows = db.prepare('SELECT * FROM workloads').all() as Row[];
    identityRefs = db
      .prepare('SELECT i.id, (SELECT COUNT(*) FROM workloads w WHERE w.identity = i.id) AS refs FROM identities i')
      .all() as Array<{ id: number; refs: number }>;
  } finally {
    db.close();
  }
  for (const i of identityRefs) if (i.refs === 0) problems.push(`identity ${i.id} is stored but unused`);

  const hostLinks = (await links()).filter((l) => l.ifalias?.startsWith(opts.aliasPrefix));
  const byName = new Map(hostLinks.map((l) => [l.ifname, l]));
  const r4 = await routes(4);
  const r6 = await routes(6);
  const pinnedDirs = existsSync(join(opts.pinRoot, 'links')) ? readdirSync(join(opts.pinRoot, 'links')) : [];

  // exactSync off: the exact-match hashes are checked as the agent left them, not repaired first
  const dp = await datapathLoad({ pinRoot: opts.pinRoot, exactSync: false });
  try {
    // the hashes in front of the ipcache and policy tries hold exactly the tries' full-length entries
    problems.push(...(dp.exactCheck() ?? []));
    const endpoints = new Map(dp.endpointList());
    const ipcache = new Map(dp.ipcacheList());
    const endpointAddrs = new Map(dp.endpointAddrList());
    const policyEndpoints = new Set(dp.policyList().map((e) => policyKeyDecode(e.key).endpointId));
    const expectedIfindexes = new Set<number>();
    for (const r of rows) {
      const ref = `${r.namespace}/${r.name}`;
      const spec = JSON.parse(r.spec) as { netns: string; interface: string };
      if (r.state !== 'ready') problems.push(`${ref}: state ${r.state}`);
      const link = byName.get(r.host_ifname);
      if (!link) {
        problems.push(`${ref}: host link ${r.host_ifname} missing`);
        continue;
      }
      expectedIfindexes.add(link.ifindex);
      const observed = r.observed ? (JSON.parse(r.observed) as { hostIfindex: number }) : undefined;
      if (observed?.hostIfindex !== link.ifindex) problems.push(`${ref}: store says ifindex ${observed?.hostIfindex}, kernel ${link.ifindex}`);
      const addrs = await run('nsenter', [`--net=${spec.netns}`, 'ip', '-o', 'addr', 'show', 'dev', spec.interface]).catch(() => '');
      if (!addrs.includes(`${r.ipv4}/32`)) problems.push(`${ref}: ${r.ipv4}/32 missing inside the namespace`);
      if (!addrs.includes(`${r.ipv6}/128`)) problems.push(`${ref}: ${r.ipv6}/128 missing inside the namespace`);
      if (!r4.some((x) => x.dst === r.ipv4 && x.dev === r.host_ifname)) problems.push(`${ref}: host route to ${r.ipv4} missing`);
      if (!r6.some((x) => x.dst === r.ipv6 && x.dev === r.host_ifname)) problems.push(`${ref}: host route to ${r.ipv6} missing`);
      if (!pinnedDirs.includes(r.host_ifname)) problems.push(`${ref}: pinned links missing`);
      const ep = endpoints.get(link.ifindex);
      if (!ep || ep.endpointId !== r.endpoint_id || ep.identity !== r.identity) problems.push(`${ref}: endpoint map entry wrong: ${JSON.stringify(ep)}`);
      for (const ip of [r.ipv4, r.ipv6]) {
        if (endpointAddrs.get(ip) !== link.ifindex) problems.push(`${ref}: endpoint_addrs ${ip} -> ${endpointAddrs.get(ip)}, want ${link.ifindex}`);
      }
      if (ipcache.get(`${r.ipv4}/32`)?.identity !== r.identity) problems.push(`${ref}: ipcache ${r.ipv4} wrong`);
      if (ipcache.get(`${r.ipv6}/128`)?.identity !== r.identity) problems.push(`${ref}: ipcache ${r.ipv6} wrong`);
      if (!policyEndpoints.has(r.endpoint_id)) problems.push(`${ref}: no policy entries for endpoint ${r.endpoint_id}`);
    }
    const known = new Set(rows.map((r) => r.host_ifname));
    for (const l of hostLinks) if (!known.has(l.ifname)) problems.push(`leaked link ${l.ifname} (${l.ifalias})`);
    for (const d of pinnedDirs) if (!known.has(d)) problems.push(`leaked pinned links ${d}`);
    for (const [ifindex, info] of endpoints) {
      if (!expectedIfindexes.has(ifindex)) problems.push(`leaked endpoint entry ifindex ${ifindex} (endpoint ${info.endpointId})`);
    }
    const ips = new Set(rows.flatMap((r) => [`${r.ipv4}/32`, `${r.ipv6}/128`]));
    for (const cidr of ipcache.keys()) {
      if ((cidr.startsWith(opts.poolPrefix4) || cidr.startsWith(opts.poolPrefix6)) && !ips.has(cidr)) problems.push(`leaked ipcache entry ${cidr}`);
    }
    for (const ip of endpointAddrs.keys()) {
      if ((ip.startsWith(opts.poolPrefix4) || ip.startsWith(opts.poolPrefix6)) && !rows.some((r) => r.ipv4 === ip || r.ipv6 === ip)) problems.push(`leaked endpoint_addrs entry ${ip}`);
    }
    const ids = new Set(rows.map((r) => r.endpoint_id));
    for (const id of policyEndpoints) if (!ids.has(id)) problems.push(`leaked policy entries for endpoint ${id}`);
    for (const x of r4) if (x.dst.startsWith(opts.poolPrefix4) && !rows.some((r) => r.ipv4 === x.dst)) problems.push(`leaked route ${x.dst}`);
  } finally {
    dp.close();
  }
  return problems;
}

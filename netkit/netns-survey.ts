// What a network namespace holds before kitnet puts a workload in it: which namespace it is, its
// interfaces and its default routes. The agent decides from this whether it may (see agent/workloads.ts).
import { linkList } from './link.js';
import type { NetnsId } from './netns.js';
import { netnsPathId } from './netns.js';
import { routeList } from './route.js';
import { withNetns } from './netns-pool.js';
import { AF_INET6 } from './uapi.js';

export interface NetnsSurvey {
  id: NetnsId;
  /** Every interface, lo included. */
  links: Array<{ ifname: string; kind: string }>;
  /** Default routes of the main table, as `ip route` would print them. */
  defaultRoutes: string[];
}

/** Validates the path (EndpointSpecError when it is no network namespace) and reads the namespace. */
export async function netnsSurvey(path: string): Promise<NetnsSurvey> {
  const id = await netnsPathId(path);
  return withNetns(path, async (nl) => {
    // one dump at a time: a namespace's socket does not interleave multipart answers
    const links = await linkList(nl);
    const routes = await routeList(nl);
    const names = new Map(links.map((l) => [l.ifindex, l.ifname]));
    const defaultRoutes = routes
      .filter((r) => r.dst === 'default')
      .map((r) => `${r.family === AF_INET6 ? '-6 ' : ''}default${r.gateway ? ` via ${r.gateway}` : ''}${r.oif ? ` dev ${names.get(r.oif) ?? r.oif}` : ''}`);
    return { id, links: links.map((l) => ({ ifname: l.ifname, kind: l.kind })), defaultRoutes };
  }, id.ino);
}

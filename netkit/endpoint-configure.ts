// Configuring both sides of a workload's device pair, idempotently (creation and repair): the host
// side's sysctls, alias, state and routes; inside the namespace lo, the peer, addresses, routes and
// gateway neighbours. Routes inside the namespace are never replaced, only added. A veth pair's host
// side stays down until hostOpen: the peer is configured without carrier.
import { KernelError } from '../common/kernel-error.js';
import { addressAdd } from './address.js';
import { errnoIs } from './errors.js';
import type { LinkInfo } from './link.js';
import { linkGet, linkSet } from './link.js';
import { neighPermanentSet } from './neigh.js';
import { netkitStateDecode } from './netkit.js';
import type { RouteInfo, RouteSpec } from './route.js';
import { hostRoutesPresent, routeAdd, routeList } from './route.js';
import type { Rtnl } from './socket.js';
import { requestsPipelined } from './socket.js';
import { hostSideSysctlsApply, sysctlIfname } from './sysctl.js';
import type { EndpointDevice, EndpointDeviceSpec } from './types.js';
import { GATEWAY_V4, GATEWAY_V6 } from './types.js';
import { AF_INET, AF_INET6 } from './uapi.js';

/** EEXIST for one of kitnet's routes in the workload's namespace: a route kitnet did not make is there. */
function routeTakenError(err: unknown, spec: EndpointDeviceSpec, route: string): unknown {
  if (!(err instanceof KernelError) || !errnoIs(err, 'EEXIST')) return err;
  return new KernelError({
    op: 'RTM_NEWROUTE', errno: err.errno, device: { name: spec.peerIfname, netns: spec.netnsPath }, extack: err.extack, cause: err,
    hint: `${spec.netnsPath} already has a route for ${route} that kitnet did not make, and kitnet never replaces routes; ` +
      'remove it (ip route del ... inside the namespace) or register the workload in a namespace of its own',
  });
}

/**
 * Everything inside the workload's namespace: lo and peer up, addresses, routes, gateway neighbours.
 * Two round trips: lo and the peer are read together, then every change is sent pipelined, in the
 * order they depend on each other (peer up before its addresses and routes, the on-link route to the
 * gateway before the default routes through it).
 */
export async function peerConfigure(nl: Rtnl, spec: EndpointDeviceSpec, hostMac: string, repair: boolean): Promise<LinkInfo> {
  const [lo, peer] = await Promise.all([linkGet(nl, 'lo'), linkGet(nl, spec.peerIfname)]);
  if (!peer) {
    throw new KernelError({
      op: 'RTM_GETLINK', errno: 19, device: { name: spec.peerIfname, netns: spec.netnsPath },
      hint: 'the peer was created but is not in the namespace (namespace replaced meanwhile?)',
    });
  }
  const dev = { name: spec.peerIfname, ifindex: peer.ifindex };
  if (spec.peerL3 === false) {
    // a bridge port (kind: vm): no link-local address, DAD or router solicitations of its own
    try {
      await nl.sysctlWrite(`net/ipv6/conf/${sysctlIfname(spec.peerIfname)}/disable_ipv6`, '1');
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOENT') throw err;
    }
  }
  const ifname = spec.peerIfname;
  const steps: (() => Promise<unknown>)[] = [];
  if (lo && !lo.up) steps.push(() => linkSet(nl, { name: 'lo', ifindex: lo.ifindex }, { up: true }));
  if (!peer.up || (spec.mtu !== undefined && peer.mtu !== spec.mtu)) steps.push(() => linkSet(nl, dev, { up: true, mtu: spec.mtu }));
  if (spec.peerL3 !== false) {
    steps.push(
      () => addressAdd(nl, peer.ifindex, spec.ipv4, 32, { replace: true, ifname }),
      () => addressAdd(nl, peer.ifindex, spec.ipv6, 128, { replace: true, ifname }),
    );
    // Routes are created exclusively (NLM_F_EXCL), never replaced: a route kitnet did not make (the
    // namespace's own default route) makes the registration fail instead of being taken over, and
    // deleting the pair then removes only kitnet's routes. A repair adds only the missing ones.
    const have = repair ? await routeList(nl) : [];
    const routes: Array<[RouteSpec, number, string]> = [
      [{ dst: `${GATEWAY_V4}/32`, oif: peer.ifindex, scope: 'link' }, AF_INET, `${GATEWAY_V4} scope link`],
      [{ dst: 'default', family: 'inet', gateway: GATEWAY_V4, oif: peer.ifindex }, AF_INET, `default via ${GATEWAY_V4}`],
      [{ dst: 'default', family: 'inet6', gateway: GATEWAY_V6, oif: peer.ifindex }, AF_INET6, `default via ${GATEWAY_V6}`],
    ];
    for (const [route, family, text] of routes) {
      if (repair && hasRoute(have, family, route.dst, peer.ifindex, route.gateway)) continue;
      steps.push(() => routeAdd(nl, route, { ifname }).catch((err: unknown) => {
        throw routeTakenError(err, spec, text);
      }));
    }
    if (spec.mode !== 'netkit') {
      steps.push(
        () => neighPermanentSet(nl, peer.ifindex, GATEWAY_V4, hostMac, ifname),
        () => neighPermanentSet(nl, peer.ifindex, GATEWAY_V6, hostMac, ifname),
      );
    }
  }
  await requestsPipelined(steps);
  // what callers use of it (name, ifindex, MAC) does not change by being configured
  return peer;
}

/**
 * The host side: sysctls (before it goes up), then alias, and when `open`, up and the /32 and /128
 * routes to the workload, in one pipelined round trip (the routes need the device up: sent after it,
 * handled after it). A veth pair is configured closed (see hostOpen), a netkit one open: its peer
 * policy is what holds its traffic back.
 */
export async function hostConfigure(host: Rtnl, spec: EndpointDeviceSpec, link: LinkInfo, replaceRoutes: boolean, open: boolean): Promise<void> {
  const dev = { name: spec.hostIfname, ifindex: link.ifindex };
  hostSideSysctlsApply(spec.hostIfname);
  await requestsPipelined([
    () => linkSet(host, dev, {
      alias: spec.alias,
      up: open ? true : undefined,
      mtu: spec.mtu !== undefined && link.mtu !== spec.mtu ? spec.mtu : undefined,
      group: spec.group !== undefined && link.group !== spec.group ? spec.group : undefined,
    }),
    ...(open ? hostRoutesSteps(host, spec, link.ifindex, replaceRoutes) : []),
  ]);
}

function hostRoutesSteps(host: Rtnl, spec: EndpointDeviceSpec, ifindex: number, replace: boolean): (() => Promise<unknown>)[] {
  return [
    () => routeAdd(host, { dst: `${spec.ipv4}/32`, oif: ifindex, scope: 'link' }, { replace, ifname: spec.hostIfname }),
    () => routeAdd(host, { dst: `${spec.ipv6}/128`, oif: ifindex, scope: 'link' }, { replace, ifname: spec.hostIfname }),
  ];
}

/**
 * Opens a veth pair: its host side up (which gives the peer its carrier) and the routes to the
 * workload, which need it up. Until then nothing crosses the pair either way: what the workload sends
 * goes out on a peer without carrier, and the host has no route to it. Idempotent; the routes it lacks
 * are added exclusively, as at creation: the address routed through another device is an error
 * (EEXIST), never taken over.
 */
export async function hostOpen(host: Rtnl, spec: EndpointDeviceSpec, link: LinkInfo): Promise<void> {
  const dev = { name: spec.hostIfname, ifindex: link.ifindex };
  const present = link.up ? await hostRoutesPresent(host, [spec.ipv4, spec.ipv6], link.ifindex, dev) : [false, false];
  const routes = hostRoutesSteps(host, spec, link.ifindex, false).filter((_, i) => !present[i]);
  await requestsPipelined([...(link.up ? [] : [() => linkSet(host, dev, { up: true })]), ...routes]);
}

export function deviceOf(spec: EndpointDeviceSpec, host: LinkInfo, peer: LinkInfo): EndpointDevice {
  const out: EndpointDevice = {
    mode: spec.mode,
    hostIfname: host.ifname,
    hostIfindex: host.ifindex,
    hostMac: host.mac,
    peerIfname: peer.ifname,
    peerIfindex: peer.ifindex,
    peerMac: peer.mac,
    netnsPath: spec.netnsPath,
  };
  if (host.kind === 'netkit') {
    const st = netkitStateDecode(host.infoData);
    if (st.peerPolicy === 'forward' || st.peerPolicy === 'drop') out.peerPolicy = st.peerPolicy;
    if (st.policy === 'forward' || st.policy === 'drop') out.policy = st.policy;
    // either direction still held (made so, or an open interrupted half way): opened again
    out.closed = out.peerPolicy === 'drop' || out.policy === 'drop';
  } else {
    out.closed = !host.up;
  }
  return out;
}

export const hasRoute = (routes: RouteInfo[], family: number, dst: string, oif: number, gateway?: string): boolean =>
  routes.some((r) => r.family === family && r.dst === dst && r.oif === oif && (gateway === undefined || r.gateway === gateway));

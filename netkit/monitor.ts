// Link removal events from the kernel (RTNLGRP_LINK), so the agent learns at once when a workload's
// device vanishes (its namespace was destroyed, its process exited, someone ran `ip link del`)
// instead of polling for it; and address changes (RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR) and changes
// of the local routing table (RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE), so the host's own destinations in
// the ipcache follow what the host delivers to itself.
import { native } from '../common/native.js';
import { ifinfomsgDecode, messageAttrs, readStr } from './attrs.js';
import { linkList } from './link.js';
import { rtnlHost } from './socket.js';
import { IFLA_IFNAME, RT_TABLE_LOCAL, RTM_DELADDR, RTM_DELLINK, RTM_DELROUTE, RTM_NEWADDR, RTM_NEWROUTE, RTMSG_LEN } from './uapi.js';

/** Group bits for bind(): RTMGRP_LINK = 1 << (RTNLGRP_LINK - 1), and so on. */
const RTMGRP_LINK = 1;
const RTMGRP_IPV4_IFADDR = 0x10;
const RTMGRP_IPV6_IFADDR = 0x100;
const RTMGRP_IPV4_ROUTE = 0x40;
const RTMGRP_IPV6_ROUTE = 0x400;
/** offsetof(struct rtmsg, rtm_table): the table of a route message (RT_TABLE_LOCAL fits the u8). */
const RTMSG_TABLE_OFFSET = 4;
const IFINFOMSG_LEN = 16;

export interface LinkGone {
  ifname: string;
  ifindex: number;
}

export interface LinkMonitor {
  close(): void;
}

/** Receive buffer of the monitor socket: room for a burst of link events while the loop is busy. */
const MONITOR_RCVBUF_BYTES = 4 << 20;
const NETLINK_ROUTE = 0;
const NLMSG_HDRLEN = 16;

/** The messages of one netlink datagram: type and payload of each (nlmsghdr chain, 4-byte aligned). */
function datagramMessages(d: Buffer): Array<{ type: number; data: Buffer }> {
  const out: Array<{ type: number; data: Buffer }> = [];
  for (let off = 0; off + NLMSG_HDRLEN <= d.length; ) {
    const len = d.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > d.length) break;
    out.push({ type: d.readUInt16LE(off + 4), data: d.subarray(off + NLMSG_HDRLEN, off + len) });
    off += (len + 3) & ~3;
  }
  return out;
}

/**
 * Calls `onGone` for every link removed from the agent's own network namespace.
 *
 * When the kernel drops events because the socket's buffer overflowed (ENOBUFS: many links came and
 * went while the event loop was busy), removals may have been missed: the monitor then lists every
 * link present and hands the names to `onResync`, so the caller can compare with what it expects.
 * The socket is the native addon's: the `netlink` package's aborts the process on that error.
 */
export function linkRemovalsWatch(onGone: (link: LinkGone) => void, onResync: (present: ReadonlySet<string>) => void): LinkMonitor {
  let resyncing = false;
  let closed = false;
  const resync = async () => {
    if (resyncing) return;
    resyncing = true;
    try {
      // Events that arrive while listing are handled as usual; the list covers the gap before it.
      const present = new Set((await linkList(rtnlHost())).map((l) => l.ifname));
      if (!closed) onResync(present);
    } catch {
      // the host socket failed too: the next overflow (or the reconciler at the next start) catches up
    } finally {
      resyncing = false;
    }
  };
  const handle = native().netlinkMonitorOpen(NETLINK_ROUTE, RTMGRP_LINK, MONITOR_RCVBUF_BYTES, (datagram) => {
    if (closed) return;
    if (datagram === null) {
      void resync();
      return;
    }
    for (const m of datagramMessages(datagram)) {
      if (m.type !== RTM_DELLINK || m.data.length < IFINFOMSG_LEN) continue;
      const info = ifinfomsgDecode(m.data);
      const name = messageAttrs(m.data, IFINFOMSG_LEN).get(IFLA_IFNAME);
      if (name) onGone({ ifname: readStr(name), ifindex: info.index });
    }
  });
  return {
    close: () => {
      if (closed) return;
      closed = true;
      native().netlinkMonitorClose(handle);
    },
  };
}

/**
 * Calls `onChange` after a datagram announcing that an address of the agent's own network namespace
 * came or went (IPv4 or IPv6, any device) or a route of its local table did (the broadcast, anycast and
 * local routes the kernel derives from addresses and forwarding, or added by hand: `ip route add local
 * ... dev lo`), and when the kernel dropped such events (ENOBUFS): the caller reads them again either
 * way. Routes of other tables (a workload's host routes in main) are not announced. A burst of changes
 * arrives in few datagrams; the caller debounces.
 */
export function addressChangesWatch(onChange: () => void): LinkMonitor {
  let closed = false;
  const groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
  const relevant = (m: { type: number; data: Buffer }): boolean =>
    m.type === RTM_NEWADDR || m.type === RTM_DELADDR ||
    ((m.type === RTM_NEWROUTE || m.type === RTM_DELROUTE) && m.data.length >= RTMSG_LEN && m.data[RTMSG_TABLE_OFFSET] === RT_TABLE_LOCAL);
  const handle = native().netlinkMonitorOpen(NETLINK_ROUTE, groups, MONITOR_RCVBUF_BYTES, (datagram) => {
    if (closed) return;
    if (datagram === null || datagramMessages(datagram).some(relevant)) onChange();
  });
  return {
    close: () => {
      if (closed) return;
      closed = true;
      native().netlinkMonitorClose(handle);
    },
  };
}

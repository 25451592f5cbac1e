// Link removal events from the kernel (RTNLGRP_LINK), so the agent learns at once when a workload's
// device vanishes (its namespace was destroyed, its process exited, someone ran `ip link del`)
// instead of polling for it.
import netlinkPkg from 'netlink';
import { ifinfomsgDecode, messageAttrs, readStr } from './attrs.js';
import { IFLA_IFNAME, RTM_DELLINK } from './uapi.js';

const { createNetlink, Protocol } = netlinkPkg;

const RTNLGRP_LINK = 1;
const IFINFOMSG_LEN = 16;

export interface LinkGone {
  ifname: string;
  ifindex: number;
}

export interface LinkMonitor {
  close(): void;
}

/** Calls `onGone` for every link removed from the agent's own network namespace. */
export function linkRemovalsWatch(onGone: (link: LinkGone) => void): LinkMonitor {
  const sock = createNetlink(Protocol.ROUTE);
  // The monitor alone must not keep the process alive.
  sock.ref(false);
  sock.addMembership(RTNLGRP_LINK);
  sock.on('message', (msgs) => {
    for (const m of msgs) {
      if (m.type !== RTM_DELLINK || m.data.length < IFINFOMSG_LEN) continue;
      const info = ifinfomsgDecode(m.data);
      const name = messageAttrs(m.data, IFINFOMSG_LEN).get(IFLA_IFNAME);
      if (name) onGone({ ifname: readStr(name), ifindex: info.index });
    }
  });
  return { close: () => sock.close() };
}

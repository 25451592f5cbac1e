// Kernel UAPI constants used by netkit/ (linux/netlink.h, rtnetlink.h, if_link.h, if_addr.h,
// neighbour.h, pkt_sched.h). Kernel names are kept so they can be grepped in the kernel tree. Each value
// is checked against the kernel's own (netkit/uapi.facts.json, test/unit/netkit-uapi.test.ts).

// netlink message types and flags
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
/** Echo the resulting object back to the requester (RTM_NEWLINK creation honours it since Linux 6.3). */
export const NLM_F_ECHO = 0x8;
export const NLM_F_ROOT = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
/** Flags of an NLMSG_ERROR reply: request payload left out / TLVs (extended ack) appended. */
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;
export const NLMSGERR_ATTR_MSG = 1;
export const NLMSGERR_ATTR_OFFS = 2;

// rtnetlink message types
export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_SETLINK = 19;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWNEIGH = 28;
export const RTM_DELNEIGH = 29;
export const RTM_GETNEIGH = 30;
export const RTM_NEWQDISC = 36;
export const RTM_DELQDISC = 37;

export const RTM_NAMES: Record<number, string> = {
  [RTM_NEWLINK]: 'RTM_NEWLINK', [RTM_DELLINK]: 'RTM_DELLINK', [RTM_GETLINK]: 'RTM_GETLINK',
  [RTM_SETLINK]: 'RTM_SETLINK', [RTM_NEWADDR]: 'RTM_NEWADDR', [RTM_DELADDR]: 'RTM_DELADDR',
  [RTM_GETADDR]: 'RTM_GETADDR', [RTM_NEWROUTE]: 'RTM_NEWROUTE', [RTM_DELROUTE]: 'RTM_DELROUTE',
  [RTM_GETROUTE]: 'RTM_GETROUTE', [RTM_NEWNEIGH]: 'RTM_NEWNEIGH', [RTM_DELNEIGH]: 'RTM_DELNEIGH',
  [RTM_GETNEIGH]: 'RTM_GETNEIGH', [RTM_NEWQDISC]: 'RTM_NEWQDISC', [RTM_DELQDISC]: 'RTM_DELQDISC',
};

export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_INET6 = 10;

// struct ifinfomsg: family u8, pad u8, type u16, index s32, flags u32, change u32
export const IFINFOMSG_LEN = 16;
export const IFF_UP = 0x1;
export const IFF_LOOPBACK = 0x8;
export const IFF_NOARP = 0x80;
export const IFF_LOWER_UP = 0x10000;

export const IFLA_ADDRESS = 1;
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
export const IFLA_LINK = 5;
export const IFLA_OPERSTATE = 16;
export const IFLA_LINKINFO = 18;
export const IFLA_NET_NS_PID = 19;
export const IFLA_IFALIAS = 20;
export const IFLA_GROUP = 27;
export const IFLA_NET_NS_FD = 28;
export const IFLA_LINK_NETNSID = 37;

export const IFLA_INFO_KIND = 1;
export const IFLA_INFO_DATA = 2;

export const VETH_INFO_PEER = 1;

export const IFLA_NETKIT_PEER_INFO = 1;
export const IFLA_NETKIT_PRIMARY = 2;
export const IFLA_NETKIT_POLICY = 3;
export const IFLA_NETKIT_PEER_POLICY = 4;
export const IFLA_NETKIT_MODE = 5;
export const IFLA_NETKIT_SCRUB = 6;
export const IFLA_NETKIT_PEER_SCRUB = 7;
export const IFLA_NETKIT_HEADROOM = 8;
export const IFLA_NETKIT_TAILROOM = 9;
export const NETKIT_L2 = 0;
export const NETKIT_L3 = 1;
export const NETKIT_PASS = 0;
export const NETKIT_DROP = 2;
export const NETKIT_SCRUB_NONE = 0;
export const NETKIT_SCRUB_DEFAULT = 1;

// struct ifaddrmsg: family u8, prefixlen u8, flags u8, scope u8, index u32
export const IFADDRMSG_LEN = 8;
export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
export const IFA_FLAGS = 8;
export const IFA_F_NODAD = 0x02;
export const IFA_F_PERMANENT = 0x80;

// struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type (u8 each), flags u32
export const RTMSG_LEN = 12;
export const RT_TABLE_MAIN = 254;
export const RT_TABLE_LOCAL = 255;
export const RTPROT_STATIC = 4;
export const RT_SCOPE_UNIVERSE = 0;
export const RT_SCOPE_LINK = 253;
export const RTN_UNICAST = 1;
export const RTN_LOCAL = 2;
export const RTN_BROADCAST = 3;
export const RTN_ANYCAST = 4;
export const RTN_MULTICAST = 5;
export const RTA_DST = 1;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_TABLE = 15;
/** rtm_flags of an RTM_GETROUTE request: answer with the FIB entry that matched, not a cloned dst. */
export const RTM_F_FIB_MATCH = 0x2000;
/** rtm_flags: report the table the lookup found it in (IPv4 says "main" otherwise, whatever it was). */
export const RTM_F_LOOKUP_TABLE = 0x1000;

// struct ndmsg: family u8, pad u8, pad u16, ifindex s32, state u16, flags u8, type u8
export const NDMSG_LEN = 12;
export const NDA_DST = 1;
export const NDA_LLADDR = 2;
export const NUD_PERMANENT = 0x80;

// struct tcmsg: family u8, pad u8, pad u16, ifindex s32, handle u32, parent u32, info u32
export const TCMSG_LEN = 20;
export const TCA_KIND = 1;
export const TC_H_CLSACT = 0xfffffff1;
export const TC_H_CLSACT_HANDLE = 0xffff0000;

/** IFNAMSIZ - 1: the longest interface name the kernel accepts. */
export const IFNAME_MAX_BYTES = 15;
/** IFALIASZ - 1. */
export const IFALIAS_MAX_BYTES = 255;

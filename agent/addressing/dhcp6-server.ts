// What kitnet answers to a guest's DHCPv6 message (RFC 8415, stateful): its one allocated address in
// the first IA_NA, DNS servers (option 23) and search domains (24) from the config. Pure logic: the
// sockets, the per-guest budget and the counting live in dhcp4-server.ts, which serves both.
//
// Nothing is remembered between messages: the address is the workload's for as long as it exists,
// so a Renew or Rebind is answered from the store's row whatever the agent saw before (a guest renewing
// across an agent restart keeps its address), and the server's DUID is derived from the node name.
import { domainListEncode } from './dhcp4-codec.js';
import { type Dhcp6Request, duidMac, iaNaOption, Msg6, Opt6, option6, Status6, statusOption } from './dhcp6-codec.js';

export interface Dhcp6Context {
  guestMac: string;
  /** The workload's IPv6 address (16 bytes). */
  address: Buffer;
  serverDuid: Buffer;
  /** Valid and preferred lifetime of the address (config addressing.leaseSeconds). */
  leaseSeconds: number;
  /** T1 of the IA_NA (config addressing.renewalSeconds); half the lease without it. */
  renewalSeconds?: number | undefined;
  /** IPv6 DNS servers, 16 bytes each. */
  dnsServers: Buffer[];
  searchDomains: readonly string[];
}

export type Dhcp6Answer =
  | { reply: { messageType: number; options: Buffer[] }; event: string }
  | { ignore: string; detail?: Record<string, unknown> };

/** Messages that name the server they are for (RFC 8415 16), and those that must not. */
const NAMES_SERVER = new Set<number>([Msg6.REQUEST, Msg6.RENEW, Msg6.RELEASE, Msg6.DECLINE]);
const NO_SERVER = new Set<number>([Msg6.SOLICIT, Msg6.CONFIRM, Msg6.REBIND]);

export function dhcp6Answer(req: Dhcp6Request, c: Dhcp6Context): Dhcp6Answer {
  const known = new Set<number>(Object.values(Msg6));
  if (!known.has(req.messageType) || [Msg6.ADVERTISE, Msg6.REPLY, Msg6.RECONFIGURE].includes(req.messageType as 2)) {
    return { ignore: 'message-type', detail: { messageType: req.messageType } };
  }
  if (!req.clientId && req.messageType !== Msg6.INFORMATION_REQUEST) return { ignore: 'malformed', detail: { detail: 'no client identifier' } };
  // a DUID made from a link-layer address names the client's NIC: another NIC's is another client
  const mac = req.clientId && duidMac(req.clientId);
  if (mac && mac !== c.guestMac) return { ignore: 'foreign-duid', detail: { duidMac: mac } };
  if (NAMES_SERVER.has(req.messageType) && !req.serverId) return { ignore: 'malformed', detail: { detail: 'no server identifier' } };
  if (NO_SERVER.has(req.messageType) && req.serverId) return { ignore: 'malformed', detail: { detail: 'server identifier where none belongs' } };
  if (req.serverId && !req.serverId.equals(c.serverDuid)) return { ignore: 'other-server' };

  const ids = [...(req.clientId ? [option6(Opt6.CLIENTID, req.clientId)] : []), option6(Opt6.SERVERID, c.serverDuid)];
  const config = [
    ...(c.dnsServers.length ? [option6(Opt6.DNS_SERVERS, Buffer.concat(c.dnsServers))] : []),
    ...(c.searchDomains.length ? [option6(Opt6.DOMAIN_LIST, domainListEncode(c.searchDomains))] : []),
  ];
  const lease = c.leaseSeconds;
  const t1 = c.renewalSeconds ?? Math.floor(lease / 2);
  const t2 = Math.floor((lease * 4) / 5);
  const ours = { address: c.address, preferred: lease, valid: lease };
  /** The first IA gets the address; addresses the guest names that are not its own are withdrawn (lifetimes 0). */
  const ias = (missing: number) => req.iaNa.map((ia, i) => i === 0
    ? iaNaOption({ iaid: ia.iaid, t1, t2, addresses: [ours, ...ia.addresses.filter((a) => !a.address.equals(c.address)).map((a) => ({ address: a.address, preferred: 0, valid: 0 }))] })
    : iaNaOption({ iaid: ia.iaid, t1: 0, t2: 0, addresses: [], status: statusOption(missing, 'one address per guest: it is in the first IA_NA') }));
  const reply = (messageType: number, options: Buffer[], event: string): Dhcp6Answer => ({ reply: { messageType, options: [...ids, ...options] }, event });

  switch (req.messageType) {
    case Msg6.SOLICIT: {
      const body = req.iaNa.length ? ias(Status6.NO_ADDRS_AVAIL) : [statusOption(Status6.NO_ADDRS_AVAIL, 'only IA_NA is served')];
      if (req.rapidCommit && req.iaNa.length) return reply(Msg6.REPLY, [option6(Opt6.RAPID_COMMIT, Buffer.alloc(0)), ...body, ...config], 'reply');
      return reply(Msg6.ADVERTISE, [...body, ...config], 'advertise');
    }
    case Msg6.REQUEST:
      return reply(Msg6.REPLY, [...(req.iaNa.length ? ias(Status6.NO_ADDRS_AVAIL) : [statusOption(Status6.NO_ADDRS_AVAIL, 'only IA_NA is served')]), ...config], 'reply');
    case Msg6.RENEW:
    case Msg6.REBIND:
      return reply(Msg6.REPLY, [...ias(Status6.NO_BINDING), ...config], 'reply');
    case Msg6.CONFIRM: {
      const addrs = req.iaNa.flatMap((ia) => ia.addresses);
      // RFC 8415 18.3.3: without addresses there is nothing to confirm, and no reply
      if (!addrs.length) return { ignore: 'confirm-without-address' };
      const onLink = addrs.every((a) => a.address.equals(c.address));
      return reply(Msg6.REPLY, [onLink ? statusOption(Status6.SUCCESS, 'on link') : statusOption(Status6.NOT_ON_LINK, 'not this guest\'s address')], 'reply');
    }
    case Msg6.RELEASE:
      return reply(Msg6.REPLY, [statusOption(Status6.SUCCESS, 'released (the address stays the workload\'s)')], 'release');
    case Msg6.DECLINE:
      return reply(Msg6.REPLY, [statusOption(Status6.SUCCESS, 'declined')], 'decline');
    case Msg6.INFORMATION_REQUEST:
      // RFC 8415 16.12: an Information-request carrying an IA is discarded
      if (req.iaNa.length || req.otherIa) return { ignore: 'malformed', detail: { detail: 'information request with an IA' } };
      return reply(Msg6.REPLY, config, 'reply');
    default:
      return { ignore: 'message-type', detail: { messageType: req.messageType } };
  }
}

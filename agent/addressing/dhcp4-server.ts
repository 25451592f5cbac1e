// DHCPv4, DHCPv6 (dhcp6-server.ts) and router advertisements (ra.ts) for VM guests (kind vm and tap):
// three packet sockets per served guest, all in the agent (no process per VM). Nothing is kept here but the sockets: each answer is derived from the store's row
// at the time of the request, so a guest renewing across an agent restart gets the same address.
//
// Where: on the host side of the guest's device (the tap, or the host end of a VM's pair), frames
// arriving on it. Not inside the VM's namespace: a socket there would keep the namespace alive after
// `ip netns del`, and the watch would never see the VM go. On a netkit VM pair the datapath runs in
// the peer's transmit, before the host side: its endpoint carries EP_F_DHCP_TO_HOST, which hands the
// guest's DHCP broadcasts from 0.0.0.0 on (addressed to the guest's MAC, so the host's IP stack drops
// them), and replies pass the primary's program (broadcast: no endpoint by destination).
//
// Only the workload's own MAC on the workload's own device is answered; relayed requests (giaddr
// set), other MACs and malformed frames are ignored and counted (the datapath reports the frame as a
// flow too: on veth it drops a source of 0.0.0.0 as INVALID_SOURCE_IP after the agent saw it, on netkit
// it forwards the guest's own DHCP broadcasts; other MACs are INVALID_SOURCE_MAC drops on both).
// A guest cannot make the agent work for it without bound: its answers (DHCP replies, router
// advertisements, and the log lines of NAKs, releases and declines) come out of a token bucket per
// guest; what it sends beyond that is counted as `rate-limited` and left unanswered. Replies only ever
// go to the guest's MAC out of its own device, and a unicast ACK only to the guest's own address.
import type { Logger } from 'pino';
import { native, type NativeHandle } from '../../common/native.js';
import { GATEWAY_V4 } from '../../netkit/index.js';
import type { Config } from '../config.js';
import type { Store } from '../store/store.js';
import type { WorkloadRecord } from '../store/types.js';
import {
  classlessRoutesEncode, DHCP_MIN_MAX_MESSAGE, DHCP_SERVER_PORT, type DhcpRequest, dhcpFrameDecode, dhcpMessageEncode,
  DhcpMessageType as T, domainListEncode, ipv4Bytes, Opt, udpFrameEncode,
} from './dhcp4-codec.js';
import { isRouterSolicitation, RA_REPEAT_MS, routerAdvertFrame } from './ra.js';
import { DHCP6_SERVER_PORT, dhcp6FrameDecode, dhcp6FrameEncode, serverDuid } from './dhcp6-codec.js';
import { dhcp6Answer } from './dhcp6-server.js';
import { ipv6Parse, macParse } from '../../bpf/addr.js';

/** The frame I/O (the native packet socket; replaced only in pure-logic tests). */
export interface PacketIo {
  open(where: ServedAt, udpDstPort: number, onFrame: (frame: Buffer) => void): NativeHandle;
  send(handle: NativeHandle, frame: Buffer): void;
  close(handle: NativeHandle): void;
}

/** Where a guest's frames are read and its replies sent. */
export interface ServedAt {
  /** The host-side device (in the agent's namespace). */
  device: string;
}

const nativeIo: PacketIo = {
  open: (w, port, onFrame) => native().packetOpen(w.device, w.device, port, false, READ_BURST, READ_PER_SECOND, onFrame),
  send: (h, frame) => native().packetSend(h, frame),
  close: (h) => native().packetClose(h),
};

/** Frames per socket handed to the agent at once, then per second: what a flood of any frames (even
 * ones answered with nothing) can cost it. Above the answer budget, so that is what a guest meets first. */
export const READ_BURST = 32;
export const READ_PER_SECOND = 16;
/** Answers per guest: a burst enough for a booting guest (its exchange, solicitations, retries)... */
export const ANSWER_BURST = 10;
/** ...then this many a second. */
export const ANSWER_PER_SECOND = 2;

interface Served {
  key: string;
  /** The guest's answer budget (ANSWER_BURST, refilled at ANSWER_PER_SECOND) and when it was last refilled. */
  tokens: number;
  refilledAt: number;
  /** Changes when the devices are made again (ifindexes in it): the socket is then reopened. */
  ident: string;
  handle: NativeHandle;
  /** Router solicitations in, advertisements out (ra.ts). */
  raHandle: NativeHandle;
  /** DHCPv6 (dhcp6-server.ts). */
  v6Handle: NativeHandle;
  guest: Guest;
}

interface Guest {
  at: ServedAt;
  ident: string;
  guestMac: string;
  gatewayMac: string;
}

export interface Dhcp4Stats {
  /** Frames read from the guests' sockets. */
  frames: number;
  offers: number;
  acks: number;
  naks: number;
  routerAdverts: number;
  /** DHCPv6 answers by kind (advertise, reply, release, decline). */
  dhcp6: Record<string, number>;
  /** Frames answered with nothing, by reason (all protocols together). */
  ignored: Record<string, number>;
  /** The same by protocol: dhcp (v4), dhcpv6, ra (router solicitations). */
  ignoredByProtocol: Record<IgnoredProtocol, Record<string, number>>;
}

export type IgnoredProtocol = 'dhcp' | 'dhcpv6' | 'ra';

/** Whether kitnet configures this workload's guest (vm or tap, not static). */
export function dhcpServedKind(rec: Pick<WorkloadRecord, 'spec'>): boolean {
  return rec.spec.kind !== 'netns' && rec.spec.addressing !== 'static';
}

/** A vm/tap workload whose guest kitnet configures by DHCP, and the device it is served on. */
export function dhcpServed(rec: WorkloadRecord): Guest | undefined {
  if (!dhcpServedKind(rec) || rec.state !== 'ready') return undefined;
  const o = rec.observed;
  if (!o || o.hostIfindex <= 0 || !o.hostMac) return undefined;
  const guestMac = rec.spec.vm?.mac ?? rec.spec.tap?.mac;
  if (!guestMac) return undefined;
  return { at: { device: rec.hostIfname }, ident: `${rec.hostIfname}|${o.hostIfindex}`, guestMac, gatewayMac: o.hostMac };
}

export class Dhcp4Server {
  private readonly served = new Map<string, Served>();
  readonly stats: Dhcp4Stats = { frames: 0, offers: 0, acks: 0, naks: 0, routerAdverts: 0, dhcp6: {}, ignored: {}, ignoredByProtocol: { dhcp: {}, dhcpv6: {}, ra: {} } };
  private raTimer: NodeJS.Timeout | undefined;
  private readonly options: Array<{ code: number; value: Buffer; optional?: boolean }>;
  private readonly serverDuid: Buffer;
  private readonly dnsServers6: Buffer[];

  constructor(
    private readonly store: Store,
    private readonly config: Pick<Config, 'addressing' | 'datapath' | 'nodeName'>,
    private readonly log: Logger,
    private readonly io: PacketIo = nativeIo,
  ) {
    const a = config.addressing;
    const dns4 = a.dnsServers.filter((d) => !d.includes(':'));
    this.dnsServers6 = a.dnsServers.filter((d) => d.includes(':')).map((d) => Buffer.from(ipv6Parse(d)));
    this.serverDuid = serverDuid(config.nodeName);
    // The same for every guest: a /32 behind a link-local gateway needs the host route first (RFC 3442).
    this.options = [
      { code: Opt.SERVER_ID, value: ipv4Bytes(GATEWAY_V4) },
      { code: Opt.SUBNET_MASK, value: ipv4Bytes('255.255.255.255') },
      { code: Opt.CLASSLESS_ROUTES, value: classlessRoutesEncode([
        { dst: GATEWAY_V4, prefix: 32, router: '0.0.0.0' },
        { dst: '0.0.0.0', prefix: 0, router: GATEWAY_V4 },
      ]) },
      { code: Opt.ROUTER, value: ipv4Bytes(GATEWAY_V4) },
      ...(dns4.length ? [{ code: Opt.DNS, value: Buffer.concat(dns4.map(ipv4Bytes)) }] : []),
      ...(a.searchDomains.length ? [{ code: Opt.DOMAIN_SEARCH, value: domainListEncode(a.searchDomains) }] : []),
      { code: Opt.MTU, value: u16(config.datapath.mtu ?? 1500) },
    ];
    if (a.searchDomains.length) this.options.push({ code: Opt.DOMAIN_NAME, value: Buffer.from(a.searchDomains[0]!.replace(/\.$/, '')), optional: true });
  }

  /** Serves exactly the workloads that want DHCP now (after every change of workloads, and at start). */
  sync(): void {
    const want = new Map<string, Guest>();
    for (const rec of this.store.workloadList()) {
      const g = dhcpServed(rec);
      if (g) want.set(`${rec.spec.namespace}/${rec.spec.name}`, g);
    }
    for (const [key, s] of this.served) {
      if (want.get(key)?.ident !== s.ident) this.unserve(s);
    }
    for (const [key, g] of want) {
      if (this.served.has(key)) continue;
      const device = g.at.device;
      try {
        const handle = this.io.open(g.at, DHCP_SERVER_PORT, (frame) => this.onFrame(key, g.ident, frame));
        const opened = [handle];
        let raHandle: NativeHandle;
        let v6Handle: NativeHandle;
        try {
          raHandle = this.io.open(g.at, 0, (frame) => this.onSolicit(key, g.ident, frame));
          opened.push(raHandle);
          v6Handle = this.io.open(g.at, DHCP6_SERVER_PORT, (frame) => this.onFrame6(key, g.ident, frame));
        } catch (err) {
          for (const h of opened) this.io.close(h);
          throw err;
        }
        const served = { key, ident: g.ident, handle, raHandle, v6Handle, guest: g, tokens: ANSWER_BURST, refilledAt: performance.now() };
        this.served.set(key, served);
        this.advertise(served);
        this.log.debug({ workload: key, device }, 'DHCP and router advertisements served');
      } catch (err) {
        // the device went away between the store and here: the next sync (the watch removes it) settles it
        this.log.warn({ workload: key, device, err: (err as Error).message }, `cannot serve DHCP on ${device}; the guest gets no address until it is back`);
      }
    }
  }

  /** Router advertisements repeated for every served guest (unreferenced timer). */
  start(): void {
    this.raTimer ??= setInterval(() => {
      for (const s of this.served.values()) this.advertise(s);
    }, RA_REPEAT_MS).unref();
  }

  private advertise(s: Served): void {
    try {
      this.io.send(s.raHandle, routerAdvertFrame({ gatewayMac: s.guest.gatewayMac, guestMac: s.guest.guestMac, mtu: this.config.datapath.mtu ?? 1500, managed: true, other: true }));
      this.stats.routerAdverts++;
    } catch (err) {
      this.log.debug({ workload: s.key, err: (err as Error).message }, 'router advertisement not sent');
    }
  }

  private onSolicit(key: string, ident: string, frame: Buffer): void {
    this.stats.frames++;
    const served = this.served.get(key);
    if (!served || served.ident !== ident) return;
    if (!isRouterSolicitation(frame, served.guest.guestMac)) return this.ignore(key, 'router-solicitation', undefined, 'ra');
    if (!this.answerAllowed(served)) return this.ignore(key, 'rate-limited', undefined, 'ra');
    this.advertise(served);
  }

  /** The workloads served now (namespace/name). */
  servedList(): Set<string> {
    return new Set(this.served.keys());
  }

  close(): void {
    clearInterval(this.raTimer);
    this.raTimer = undefined;
    for (const s of [...this.served.values()]) this.unserve(s);
  }

  private unserve(s: Served): void {
    this.io.close(s.handle);
    this.io.close(s.raHandle);
    this.io.close(s.v6Handle);
    this.served.delete(s.key);
  }

  /** One answer out of the guest's bucket, if there is one left. */
  private answerAllowed(s: Served): boolean {
    const now = performance.now();
    s.tokens = Math.min(ANSWER_BURST, s.tokens + ((now - s.refilledAt) / 1000) * ANSWER_PER_SECOND);
    s.refilledAt = now;
    if (s.tokens < 1) return false;
    s.tokens -= 1;
    return true;
  }

  private ignore(key: string, reason: string, detail?: Record<string, unknown>, protocol: IgnoredProtocol = 'dhcp'): void {
    this.stats.ignored[reason] = (this.stats.ignored[reason] ?? 0) + 1;
    const by = this.stats.ignoredByProtocol[protocol];
    by[reason] = (by[reason] ?? 0) + 1;
    this.log.debug({ workload: key, reason, protocol, ...detail }, 'DHCP request ignored');
  }

  /** A DHCPv6 message from a guest: the same checks as DHCPv4 (own device, own MAC, budget), then dhcp6-server.ts. */
  private onFrame6(key: string, ident: string, frame: Buffer): void {
    this.stats.frames++;
    const served = this.served.get(key);
    if (!served || served.ident !== ident) return;
    const ignore = (reason: string, detail?: Record<string, unknown>) => this.ignore(key, reason, detail, 'dhcpv6');
    const [namespace, name] = key.split('/') as [string, string];
    const rec = this.store.workloadGet(namespace, name);
    const s = rec && dhcpServed(rec);
    if (!rec || !s || s.ident !== ident) return ignore('not-served');
    if (!rec.ipv6) return ignore('no-ipv6-address');
    const decoded = dhcp6FrameDecode(frame);
    if (!decoded.ok) return ignore(decoded.relayed ? 'relayed' : 'malformed', { detail: decoded.reason });
    const req = decoded.request;
    if (req.srcMac !== s.guestMac) return ignore('foreign-mac', { srcMac: req.srcMac });
    const answer = dhcp6Answer(req, {
      guestMac: s.guestMac, address: Buffer.from(ipv6Parse(rec.ipv6)), serverDuid: this.serverDuid,
      leaseSeconds: this.config.addressing.leaseSeconds, renewalSeconds: this.config.addressing.renewalSeconds,
      dnsServers: this.dnsServers6, searchDomains: this.config.addressing.searchDomains,
    });
    if ('ignore' in answer) return ignore(answer.ignore, answer.detail);
    if (!this.answerAllowed(served)) return ignore('rate-limited');
    if (answer.event === 'decline') this.log.warn({ workload: key, ipv6: rec.ipv6 }, `the guest declined ${rec.ipv6}: another host on its link uses it`);
    if (answer.event === 'release') this.log.info({ workload: key }, 'DHCPv6 release from the guest (the address stays allocated to the workload)');
    try {
      this.io.send(served.v6Handle, dhcp6FrameEncode({
        srcMac: Buffer.from(macParse(s.gatewayMac)), dstMac: Buffer.from(macParse(s.guestMac)), dstIp: req.srcIp,
        messageType: answer.reply.messageType, xid: req.xid, options: answer.reply.options,
      }));
      this.stats.dhcp6[answer.event] = (this.stats.dhcp6[answer.event] ?? 0) + 1;
    } catch (err) {
      this.log.warn({ workload: key, err: (err as Error).message }, 'DHCPv6 reply not sent');
    }
  }

  private onFrame(key: string, ident: string, frame: Buffer): void {
    this.stats.frames++;
    const served = this.served.get(key);
    if (!served || served.ident !== ident) return;
    const [namespace, name] = key.split('/') as [string, string];
    const rec = this.store.workloadGet(namespace, name);
    const s = rec && dhcpServed(rec);
    if (!rec || !s || s.ident !== ident) return this.ignore(key, 'not-served');
    const decoded = dhcpFrameDecode(frame);
    if (!decoded.ok) return this.ignore(key, 'malformed', { detail: decoded.reason });
    const req = decoded.request;
    if (req.op !== 1) return this.ignore(key, 'not-a-request');
    if (req.giaddr !== '0.0.0.0') return this.ignore(key, 'relayed', { giaddr: req.giaddr });
    if (req.srcMac !== s.guestMac || req.chaddr !== s.guestMac) return this.ignore(key, 'foreign-mac', { mac: req.chaddr, srcMac: req.srcMac });
    if (!this.answerAllowed(served)) return this.ignore(key, 'rate-limited');
    try {
      this.answer(rec, s, req, key, served.handle);
    } catch (err) {
      this.log.warn({ workload: key, err: (err as Error).message }, 'DHCP reply not sent');
    }
  }

  private answer(rec: WorkloadRecord, s: Guest, req: DhcpRequest, key: string, handle: NativeHandle): void {
    const send = (dstIp: string, reply: Parameters<typeof dhcpMessageEncode>[0]) =>
      this.io.send(handle, udpFrameEncode({ srcMac: s.gatewayMac, dstMac: s.guestMac, srcIp: GATEWAY_V4, dstIp, payload: dhcpMessageEncode(reply) }));
    const lease = this.config.addressing.leaseSeconds;
    const leaseOpts = [
      { code: Opt.LEASE_TIME, value: u32(lease) },
      { code: Opt.RENEWAL_TIME, value: u32(this.config.addressing.renewalSeconds ?? Math.floor(lease / 2)) },
      { code: Opt.REBINDING_TIME, value: u32(Math.floor((lease * 7) / 8)) },
    ];
    const hostname = { code: Opt.HOSTNAME, value: Buffer.from(rec.spec.name, 'ascii') };
    const maxOpt = req.options.get(Opt.MAX_MESSAGE_SIZE);
    const maxMessage = Math.max(DHCP_MIN_MAX_MESSAGE, maxOpt?.length === 2 ? Math.min(maxOpt.readUInt16BE(0) - 28, 1472) : 0);
    const base = { xid: req.xid, flags: req.flags, chaddr: s.guestMac, maxMessage };
    const serverId = req.options.get(Opt.SERVER_ID);
    const requested = req.options.get(Opt.REQUESTED_ADDRESS);
    const requestedIp = requested?.length === 4 ? `${requested[0]}.${requested[1]}.${requested[2]}.${requested[3]}` : undefined;

    switch (req.messageType) {
      case T.DISCOVER:
        this.stats.offers++;
        return send('255.255.255.255', { ...base, messageType: T.OFFER, ciaddr: '0.0.0.0', yiaddr: rec.ipv4, options: [...this.options, ...leaseOpts, hostname] });
      case T.REQUEST: {
        // a server id naming another server: the guest took that server's offer
        if (serverId && !serverId.equals(ipv4Bytes(GATEWAY_V4))) return this.ignore(key, 'other-server');
        // SELECTING / INIT-REBOOT name the address in option 50; RENEWING / REBINDING in ciaddr
        const asked = requestedIp ?? req.ciaddr;
        if (asked !== rec.ipv4) {
          this.stats.naks++;
          this.log.info({ workload: key, asked, ipv4: rec.ipv4 }, 'DHCP NAK: the guest asked for an address that is not its own');
          return send('255.255.255.255', {
            ...base, flags: 0x8000, messageType: T.NAK, ciaddr: '0.0.0.0', yiaddr: '0.0.0.0',
            options: [{ code: Opt.SERVER_ID, value: ipv4Bytes(GATEWAY_V4) }, { code: Opt.MESSAGE, value: Buffer.from(`address is ${rec.ipv4}`) }],
          });
        }
        this.stats.acks++;
        return send(unicastTo(req.ciaddr, rec), {
          ...base, messageType: T.ACK, ciaddr: req.ciaddr, yiaddr: rec.ipv4, options: [...this.options, ...leaseOpts, hostname],
        });
      }
      case T.INFORM:
        // configuration without a lease (RFC 2131 4.3.5): no yiaddr, no lease times
        this.stats.acks++;
        return send(unicastTo(req.ciaddr, rec), {
          ...base, messageType: T.ACK, ciaddr: req.ciaddr, yiaddr: '0.0.0.0', options: [...this.options, hostname],
        });
      case T.RELEASE:
        // the address stays the workload's for as long as it exists: nothing to free
        this.log.info({ workload: key }, 'DHCP release from the guest (the address stays allocated to the workload)');
        return;
      case T.DECLINE:
        this.log.warn({ workload: key, ipv4: rec.ipv4 }, `the guest declined ${rec.ipv4}: another host on its link uses it`);
        return;
      default:
        return this.ignore(key, 'message-type', { messageType: req.messageType });
    }
  }

}

/** An ACK goes to the client's address (RFC 2131 4.1) only when that is the guest's own; else broadcast. */
function unicastTo(ciaddr: string, rec: WorkloadRecord): string {
  return ciaddr === rec.ipv4 ? ciaddr : '255.255.255.255';
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

// rtnetlink sockets: one in kitnet's own namespace (shared, lazily opened) and one per foreign
// namespace. A netlink socket belongs to the namespace it was opened in, so a foreign namespace's
// socket is opened in-process: the main thread enters the namespace with setns(2) (native addon, see
// common/ns.ts) just for the synchronous socket()/bind() calls and switches straight back; no other JS
// runs in between. That costs ~0.1 ms instead of the ~250 ms of the fallback, a helper process started
// with `nsenter --net=PATH` (netns-worker.ts), used only when the addon cannot be loaded or
// KITNET_NETNS_TRANSPORT=helper is set. Both speak raw netlink messages; encoding, decoding and errno
// mapping stay here in the agent process. The foreign-namespace transports are in netns-transport.ts,
// their pool (withNetns) in netns-pool.ts.
import { writeFileSync } from 'node:fs';
import netlinkPkg from 'netlink';
import type { DeviceRef } from '../common/kernel-error.js';
import { KernelError, errnoNumber } from '../common/kernel-error.js';
import { kernelErrorFromReply, netlinkErrorParse } from './errors.js';
import { NLM_F_DUMP, NLMSG_ERROR, RTM_NAMES } from './uapi.js';

const { createNetlink, Protocol } = netlinkPkg;

/**
 * How long a netlink request may wait for its reply. The kernel always answers; what this catches is
 * a reply lost to an overrun socket. Generous: a busy host (the RTNL lock held by someone else's
 * device churn, an emulated VM) can take seconds.
 */
export const REQUEST_TIMEOUT_MS = 15_000;
/** The library's own timeout, a backstop that drops a request whose reply never came. */
const REQUEST_FORGET_MS = 60_000;

interface NetlinkRequester {
  request(type: number, data: Buffer, options: { flags: number; checkError: false; timeout: number }): Promise<[Array<{ type: number; flags: number; data: Buffer }>, unknown]>;
}

/**
 * One request and its reply messages, with a timeout that a blocked event loop cannot fake: after a
 * turn that ran longer than the timeout, Node runs the expired timer before it reads the socket, where
 * the reply may already wait. So the timer only decides after the loop's I/O phase (setImmediate), and
 * a reply that came in time wins.
 */
export async function netlinkRequest(sock: NetlinkRequester, type: number, payload: Buffer, flags: number, timeoutMs = REQUEST_TIMEOUT_MS): Promise<NlMessage[]> {
  const reply = sock.request(type, payload, { flags, checkError: false, timeout: Math.max(REQUEST_FORGET_MS, 2 * timeoutMs) });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => setImmediate(() => reject(new Error('Timeout has been reached'))), timeoutMs);
  });
  try {
    const [msgs] = await Promise.race([reply, timeout]);
    return msgs.map((m) => ({ type: m.type, flags: m.flags, data: m.data }));
  } finally {
    clearTimeout(timer);
    // a reply that lost the race settles later (or the library forgets it): nobody waits for it
    reply.catch(() => undefined);
  }
}

export interface NlMessage {
  type: number;
  flags: number;
  data: Buffer;
}

/** Sends one request and returns every reply message (errors included) for its sequence number. */
export interface NlTransport {
  exchange(type: number, flags: number, payload: Buffer): Promise<NlMessage[]>;
  /** Writes a sysctl (path relative to /proc/sys) in the transport's namespace. */
  sysctlWrite(path: string, value: string): Promise<void>;
  close(): void;
}

export function sysctlPathCheck(path: string): string {
  if (!/^net\/[A-Za-z0-9_.\-/]+$/.test(path) || path.includes('..')) {
    throw new Error(`refusing to write sysctl outside /proc/sys/net: ${path}`);
  }
  return `/proc/sys/${path}`;
}

function transportError(op: string, err: unknown, device?: DeviceRef): KernelError {
  const e = err as { errno?: number; code?: string; message?: string };
  let errno = typeof e?.code === 'string' ? errnoNumber(e.code) : undefined;
  if (errno === undefined && typeof e?.errno === 'number') errno = Math.abs(e.errno);
  if (errno === undefined && /timeout/i.test(e?.message ?? '')) errno = errnoNumber('ETIMEDOUT');
  return new KernelError({ op, errno: errno ?? errnoNumber('EIO') ?? 5, device, hint: e?.message, cause: err });
}

/** A netlink socket in the calling process's network namespace. */
class LocalTransport implements NlTransport {
  private readonly sock = createNetlink(Protocol.ROUTE);

  async exchange(type: number, flags: number, payload: Buffer): Promise<NlMessage[]> {
    return netlinkRequest(this.sock, type, payload, flags);
  }

  async sysctlWrite(path: string, value: string): Promise<void> {
    // synchronous: a /proc/sys write is microseconds, a thread-pool round trip per call is not
    writeFileSync(sysctlPathCheck(path), value);
  }

  close(): void {
    this.sock.close();
  }
}

/**
 * rtnetlink requests with kernel errors mapped to {@link KernelError}. `netns` labels errors with
 * the namespace the socket lives in.
 *
 * request() hands its message to the transport before its first await (the netlink socket sends it
 * at once or queues it behind earlier ones; the nsenter helper gets it as the next line), so requests
 * started one after another without awaiting reach the kernel in that order, and the kernel handles
 * each completely as it is sent: see {@link requestsPipelined}.
 *
 * A dump is the exception: its replies come in several messages, and while one runs on a socket the
 * kernel refuses another (EBUSY) and the replies of a request sent meanwhile land between its parts
 * (which the netlink package takes for a broken multipart message: EIO). So from a dump until it is
 * answered, the requests after it wait, in the order they were made, and go out one after the other
 * behind it; with no dump under way, requests go out at once as above. Shared sockets (the host's,
 * used by the reconciler, node routes and the API at once) see both.
 */
export class Rtnl {
  /** Settles when the last request made while a dump was under way has been answered. */
  private tail: Promise<unknown> | undefined;

  constructor(private readonly transport: NlTransport, readonly netns?: string) {}

  /** Sends now, or behind the dump (and what queued after it) under way, keeping the call order. */
  private exchange(type: number, flags: number, payload: Buffer, isDump: boolean): Promise<NlMessage[]> {
    const before = this.tail;
    if (!before && !isDump) return this.transport.exchange(type, flags, payload);
    const sent = before ? before.then(() => this.transport.exchange(type, flags, payload)) : this.transport.exchange(type, flags, payload);
    const settled = sent.then(
      () => undefined,
      () => undefined,
    );
    this.tail = settled;
    void settled.then(() => {
      if (this.tail === settled) this.tail = undefined;
    });
    return sent;
  }

  private deviceRef(device?: DeviceRef): DeviceRef | undefined {
    if (!this.netns) return device;
    return { ...(device ?? {}), netns: device?.netns ?? this.netns };
  }

  /** A doit request (NLM_F_REQUEST|NLM_F_ACK added). Returns the non-error replies. */
  request(type: number, flags: number, payload: Buffer, device?: DeviceRef, op = RTM_NAMES[type] ?? `RTM_${type}`): Promise<NlMessage[]> {
    return this.send(type, flags, payload, device, op, false);
  }

  private async send(type: number, flags: number, payload: Buffer, device: DeviceRef | undefined, op: string, isDump: boolean): Promise<NlMessage[]> {
    let msgs: NlMessage[];
    try {
      msgs = await this.exchange(type, flags, payload, isDump);
    } catch (err) {
      throw transportError(op, err, this.deviceRef(device));
    }
    const out: NlMessage[] = [];
    for (const m of msgs) {
      if (m.type === NLMSG_ERROR) {
        const reply = netlinkErrorParse(m.data, m.flags);
        if (reply.errno !== 0) throw kernelErrorFromReply(op, reply, this.deviceRef(device));
        continue;
      }
      out.push(m);
    }
    return out;
  }

  /** A dump request: every object of the kind, filtered by the header where the kernel supports it. */
  dump(type: number, payload: Buffer, device?: DeviceRef): Promise<NlMessage[]> {
    return this.send(type, NLM_F_DUMP, payload, device, RTM_NAMES[type] ?? `RTM_${type}`, true);
  }

  sysctlWrite(path: string, value: string): Promise<void> {
    return this.transport.sysctlWrite(path, value);
  }

  close(): void {
    this.transport.close();
  }
}

/**
 * Starts every call at once and waits for all of them: one round trip for a sequence of requests
 * on one socket instead of one each. The calls must each issue a single request synchronously
 * (the netkit/ helpers such as linkSet, addressAdd, routeAdd do); the kernel runs them in the order
 * given, so a request may depend on the ones before it (a route through a device set up before).
 * Unlike awaiting them one by one, the requests after a failed one still run: use it where any
 * failure means the whole object is rolled back. Throws the first failure in order.
 */
export async function requestsPipelined(calls: ReadonlyArray<() => Promise<unknown>>): Promise<void> {
  const settled = await Promise.allSettled(calls.map((call) => call()));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
}

let hostRtnl: Rtnl | undefined;

/** The shared socket in kitnet's own (host) namespace. Never close it. */
export function rtnlHost(): Rtnl {
  hostRtnl ??= new Rtnl(new LocalTransport());
  return hostRtnl;
}

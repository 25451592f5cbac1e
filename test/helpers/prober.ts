/**
 * A probe agent that runs inside one network namespace (`ip netns exec NS node prober.js`): it serves
 * TCP and UDP on the given ports (dual-stack) and, on request, probes many peers at once. It reads one
 * JSON request per line on stdin and answers one JSON line per request on stdout:
 *   {"id":1,"timeoutMs":400,"attempts":3,"probes":[{"addr":"10.0.0.2","port":80,"protocol":"TCP"},...]}
 *   -> {"id":1,"results":[true,false,...],"tries":[1,3,...],"confirmed":[false,false,...]}
 * A TCP probe succeeds when the handshake completes; a UDP probe when the peer's echo of this probe's
 * nonce comes back from the probed address and port.
 *
 * On a loaded machine a timeout alone does not mean "denied": the peer's echo server (a process like
 * this one) may not have been scheduled, or this process may wake up late. So a failed attempt is
 * retried with a fresh socket and a doubled timeout, up to `attempts` times; a probe stops at its
 * first success, and a denied probe costs timeoutMs * (2^attempts - 1). Within an attempt UDP resends
 * with backoff (a lost datagram reads as a denial otherwise), sparingly, so that starved echo servers
 * are not flooded. When a timer fires, the verdict waits one turn of the event loop (setImmediate runs
 * after the I/O poll), so an answer that already arrived while this process was not running counts.
 *
 * A denial the caller has confirmed otherwise (the agent reported a policy drop of exactly that
 * probe's tuple) need not be retried: `{"id":1,"confirmDenied":[2,5]}` names probes of request 1 by
 * index. Such a probe still has to fail its first attempt; it is then not tried again, and a retry
 * already under way ends as failed. Its answer says so: `"confirmed":[false,true,...]`.
 */
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { createServer, connect, isIPv6 } from 'node:net';
import { createInterface } from 'node:readline';

interface ProbeReq {
  addr: string;
  port: number;
  protocol: 'TCP' | 'UDP';
}

const ports = (process.argv[2] ?? '80,81').split(',').map(Number);

/** Calls `fail` when the time is up, after I/O that is already pending has had its turn. */
function deadline(ms: number, fail: () => void): () => void {
  let immediate: NodeJS.Immediate | undefined;
  const t = setTimeout(() => (immediate = setImmediate(fail)), ms);
  return () => {
    clearTimeout(t);
    if (immediate) clearImmediate(immediate);
  };
}

/** A probe's state across its attempts: whether its denial was confirmed, and how to end the attempt under way. */
interface Settle {
  confirmed: boolean;
  /** Set while a retry runs: ends it as failed. */
  abort?: () => void;
}

function tcpProbe(p: ProbeReq, timeoutMs: number, settle?: Settle): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: p.addr, port: p.port });
    const done = (ok: boolean) => {
      cancel();
      if (settle) settle.abort = undefined;
      s.destroy();
      resolve(ok);
    };
    const cancel = deadline(timeoutMs, () => done(false));
    if (settle) settle.abort = () => done(false);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/** The address as the kernel reports it in rinfo (IPv6 compressed the same way). */
function sameAddress(a: string, b: string): boolean {
  return a === b || (isIPv6(a) && isIPv6(b) && new URL(`http://[${a}]`).hostname === new URL(`http://[${b}]`).hostname);
}

function udpProbe(p: ProbeReq, timeoutMs: number, settle?: Settle): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createSocket(isIPv6(p.addr) ? 'udp6' : 'udp4');
    // A nonce per attempt: an echo that belonged to an earlier socket on the same ephemeral port
    // (or to another peer) must not count as this probe's answer.
    const nonce = randomBytes(8).toString('hex');
    let resend: NodeJS.Timeout | undefined;
    let settled = false;
    const done = (ok: boolean) => {
      if (settled) return;
      settled = true;
      cancel();
      if (settle) settle.abort = undefined;
      clearTimeout(resend);
      s.close();
      resolve(ok);
    };
    const cancel = deadline(timeoutMs, () => done(false));
    if (settle) settle.abort = () => done(false);
    s.on('message', (msg, rinfo) => {
      if (msg.toString() === nonce && rinfo.port === p.port && sameAddress(rinfo.address, p.addr)) done(true);
    });
    s.once('error', () => done(false));
    // Resend with backoff within the attempt, like TCP's SYN retransmits: a denied flow stays denied
    // however often it is tried, and a lost datagram does not decide the verdict.
    let gap = Math.max(50, Math.floor(timeoutMs / 8));
    const send = () => {
      if (settled) return;
      s.send(nonce, p.port, p.addr, () => undefined);
      resend = setTimeout(send, gap);
      gap *= 2;
    };
    send();
  });
}

async function probeRetrying(p: ProbeReq, timeoutMs: number, attempts: number, settle: Settle): Promise<{ ok: boolean; tries: number; confirmed: boolean }> {
  let timeout = timeoutMs;
  for (let tries = 1; ; tries++) {
    // The first attempt runs its course whatever is confirmed; a retry can be cut short.
    const ok = await (p.protocol === 'TCP' ? tcpProbe(p, timeout, tries > 1 ? settle : undefined) : udpProbe(p, timeout, tries > 1 ? settle : undefined));
    if (ok) return { ok, tries, confirmed: false };
    if (settle.confirmed) return { ok, tries, confirmed: true };
    if (tries >= attempts) return { ok, tries, confirmed: false };
    timeout *= 2;
  }
}

async function main(): Promise<void> {
  for (const port of ports) {
    await new Promise<void>((resolve, reject) => {
      const srv = createServer((c) => c.on('error', () => undefined).end());
      srv.once('error', reject);
      srv.listen({ port, host: '::', ipv6Only: false }, () => resolve());
    });
    await new Promise<void>((resolve, reject) => {
      const u = createSocket({ type: 'udp6', ipv6Only: false });
      u.on('message', (msg, rinfo) => u.send(msg, rinfo.port, rinfo.address, () => undefined));
      u.once('error', reject);
      u.bind(port, '::', () => resolve());
    });
  }
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  const rl = createInterface({ input: process.stdin });
  // Requests under way: each probe's Settle, by request id.
  const running = new Map<number, Settle[]>();
  rl.on('line', (line) => {
    const msg = JSON.parse(line) as { id: number; confirmDenied?: number[] };
    if (msg.confirmDenied) {
      for (const i of msg.confirmDenied) {
        const settle = running.get(msg.id)?.[i];
        if (!settle) continue; // answered already
        settle.confirmed = true;
        settle.abort?.();
      }
      return;
    }
    const req = msg as { id: number; timeoutMs: number; attempts?: number; probes: ProbeReq[] };
    const attempts = Math.max(1, req.attempts ?? 1);
    const settles = req.probes.map((): Settle => ({ confirmed: false }));
    running.set(req.id, settles);
    void Promise.all(req.probes.map((p, i) => probeRetrying(p, req.timeoutMs, attempts, settles[i]!))).then((out) => {
      running.delete(req.id);
      process.stdout.write(`${JSON.stringify({ id: req.id, results: out.map((o) => o.ok), tries: out.map((o) => o.tries), confirmed: out.map((o) => o.confirmed) })}\n`);
    });
  });
  rl.on('close', () => process.exit(0));
}

main().catch((err: unknown) => {
  process.stderr.write(`prober: ${(err as Error).message}\n`);
  process.exit(1);
});

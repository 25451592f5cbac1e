/**
 * A probe agent that runs inside one network namespace (`ip netns exec NS node prober.js`): it serves
 * TCP and UDP on the given ports (dual-stack) and, on request, probes many peers at once. It reads one
 * JSON request per line on stdin and answers one JSON line per request on stdout:
 *   {"id":1,"timeoutMs":400,"probes":[{"addr":"10.0.0.2","port":80,"protocol":"TCP"},...]}
 *   -> {"id":1,"results":[true,false,...]}
 * A TCP probe succeeds when the handshake completes; a UDP probe when the peer's echo comes back.
 */
import { createSocket } from 'node:dgram';
import { createServer, connect } from 'node:net';
import { createInterface } from 'node:readline';

interface ProbeReq {
  addr: string;
  port: number;
  protocol: 'TCP' | 'UDP';
}

const ports = (process.argv[2] ?? '80,81').split(',').map(Number);

function tcpProbe(p: ProbeReq, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: p.addr, port: p.port });
    const done = (ok: boolean) => {
      clearTimeout(t);
      s.destroy();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), timeoutMs);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

function udpProbe(p: ProbeReq, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createSocket(p.addr.includes(':') ? 'udp6' : 'udp4');
    const done = (ok: boolean) => {
      clearTimeout(t);
      clearInterval(resend);
      s.close();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), timeoutMs);
    s.once('message', () => done(true));
    s.once('error', () => done(false));
    // A datagram lost on a busy machine (or in the emulated lab VM) would read as a denial; like TCP's SYN
    // retransmits, resend within the timeout. A denied flow stays denied however often it is tried.
    const send = () => s.send('probe', p.port, p.addr);
    const resend = setInterval(send, Math.max(150, Math.floor(timeoutMs / 4)));
    send();
  });
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
      u.on('message', (msg, rinfo) => u.send(msg, rinfo.port, rinfo.address));
      u.once('error', reject);
      u.bind(port, '::', () => resolve());
    });
  }
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    const req = JSON.parse(line) as { id: number; timeoutMs: number; probes: ProbeReq[] };
    void Promise.all(req.probes.map((p) => (p.protocol === 'TCP' ? tcpProbe(p, req.timeoutMs) : udpProbe(p, req.timeoutMs)))).then(
      (results) => process.stdout.write(`${JSON.stringify({ id: req.id, results })}\n`),
    );
  });
  rl.on('close', () => process.exit(0));
}

main().catch((err: unknown) => {
  process.stderr.write(`prober: ${(err as Error).message}\n`);
  process.exit(1);
});

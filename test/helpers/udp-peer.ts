/**
 * A workload's own process for root tests, started inside its network namespace before the workload
 * is registered (`ip netns exec NS node udp-peer.js PORT`): it listens on UDP PORT (IPv4 and IPv6) and
 * sends datagrams when asked. One JSON request per line on stdin, one answer per line on stdout:
 *   {"id":1,"send":[{"addr":"10.0.0.1","port":9,"data":"x"}]} -> {"id":1,"errors":[null,"ENETUNREACH"]}
 *   {"id":2,"received":true} -> {"id":2,"payloads":["x",...]}
 * An answer to `send` comes after every send() returned: what the kernel did with them is done by then.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { createInterface } from 'node:readline';

const port = Number(process.argv[2]);
const payloads: string[] = [];
const sockets: Record<'udp4' | 'udp6', Socket> = { udp4: createSocket('udp4'), udp6: createSocket({ type: 'udp6', ipv6Only: true }) };
for (const s of Object.values(sockets)) s.on('message', (msg) => payloads.push(msg.toString()));
await Promise.all(Object.values(sockets).map((s) => new Promise<void>((resolve) => s.bind(port, resolve))));

function sendOne(addr: string, p: number, data: string): Promise<string | null> {
  const s = sockets[isIPv6(addr) ? 'udp6' : 'udp4'];
  return new Promise((resolve) => s.send(data, p, addr, (err) => resolve(err ? ((err as NodeJS.ErrnoException).code ?? err.message) : null)));
}

process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
for await (const line of createInterface({ input: process.stdin })) {
  const req = JSON.parse(line) as { id: number; send?: Array<{ addr: string; port: number; data: string }>; received?: boolean };
  if (req.send) {
    const errors: Array<string | null> = [];
    for (const d of req.send) errors.push(await sendOne(d.addr, d.port, d.data));
    process.stdout.write(`${JSON.stringify({ id: req.id, errors })}\n`);
  } else {
    process.stdout.write(`${JSON.stringify({ id: req.id, payloads })}\n`);
  }
}
for (const s of Object.values(sockets)) s.close();

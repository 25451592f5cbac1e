// Helper process started by netns-transport.ts as `nsenter --net=PATH -- node netns-worker.js`: it opens a
// netlink socket in that namespace and relays raw messages as JSON lines on stdin/stdout.
// It knows nothing about message contents. Exits when stdin closes.
import { readlinkSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import netlinkPkg from 'netlink';
import { netlinkRequest } from './socket.js';

const { createNetlink, Protocol } = netlinkPkg;
const sock = createNetlink(Protocol.ROUTE);

interface Request {
  id: number;
  kind: 'nl' | 'sysctl';
  type?: number;
  flags?: number;
  data?: string;
  path?: string;
  value?: string;
}

function reply(obj: unknown): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function handle(req: Request): Promise<unknown> {
  if (req.kind === 'nl') {
    const msgs = await netlinkRequest(sock, req.type ?? 0, Buffer.from(req.data ?? '', 'base64'), req.flags ?? 0);
    return msgs.map((m) => ({ type: m.type, flags: m.flags, data: m.data.toString('base64') }));
  }
  if (req.kind === 'sysctl' && req.path && /^net\/[A-Za-z0-9_.\-/]+$/.test(req.path) && !req.path.includes('..')) {
    await writeFile(`/proc/sys/${req.path}`, req.value ?? '');
    return true;
  }
  throw new Error(`bad request ${JSON.stringify(req)}`);
}

let inFlight = 0;
let closing = false;
function exitIfIdle(): void {
  if (closing && inFlight === 0) {
    sock.close();
    process.exit(0);
  }
}

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  let req: Request;
  try { req = JSON.parse(line) as Request; } catch { return; }
  inFlight++;
  handle(req).then(
    (ok) => reply({ id: req.id, ok }),
    (err: { message?: string; code?: string; errno?: number }) =>
      reply({ id: req.id, error: { message: String(err?.message ?? err), code: err?.code, errno: err?.errno } }),
  ).finally(() => {
    inFlight--;
    exitIfIdle();
  });
});
lines.on('close', () => {
  closing = true;
  exitIfIdle();
});
reply({ ready: true, inode: Number(/\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/net'))?.[1] ?? 0) });

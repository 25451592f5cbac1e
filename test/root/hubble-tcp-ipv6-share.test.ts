// The Hubble TCP listener's share per client when clients come over IPv6. One IPv6 host may send from
// any address of its /64 (SLAAC, privacy addresses), so a share per address would let it take every
// connection the listener allows. In a network namespace of its own (gone with the process), idle
// clients connect from several addresses of one /64 and from another /64 on the loopback device: the
// one /64 gets hubble.maxConnectionsPerAddress connections in all, the other its own share.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { nodeInOwnNetns } from '../helpers/sys.js';
import { testCaMake } from '../helpers/test-ca.js';

const listenerModule = fileURLToPath(new URL('../../api/hubble/tcp-listener.js', import.meta.url));

const script = (cert: string, key: string) => `
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { hubbleTcpListen } from ${JSON.stringify(listenerModule)};
const { Server } = createRequire(${JSON.stringify(listenerModule)})('@grpc/grpc-js');
const log = { warn() {}, error() {}, info() {}, debug() {}, child() { return log; } };
const listener = await hubbleTcpListen(new Server(), {
  host: '::', port: 0, tls: { cert: readFileSync(${JSON.stringify(cert)}), key: readFileSync(${JSON.stringify(key)}) },
  maxConnections: 8, maxConnectionsPerAddress: 3, handshakeTimeoutMs: 60000, log,
});
const sockets = [];
// A client that connects from \`from\` and never starts its TLS handshake.
const idle = (from) => new Promise((resolve, reject) => {
  const s = net.connect({ host: '::1', port: listener.port, localAddress: from }, () => resolve(s));
  s.on('error', () => undefined);
  s.once('error', reject);
  sockets.push(s);
});
// What the listener did with the connections made so far: each is either counted open or refused.
const settled = async (open, refused) => {
  const deadline = Date.now() + 20000;
  while (listener.open + listener.refused.max_connections_per_address + listener.refused.max_connections < open + refused) {
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return { open: listener.open, perAddress: listener.refused.max_connections_per_address, total: listener.refused.max_connections };
};
const steps = {};
for (const a of ['fd00:99::1', 'fd00:99::2', 'fd00:99:0:0:ffff::3']) await idle(a);
steps.threeOfOneSlash64 = await settled(3, 0);
await idle('fd00:99::4');
steps.fourthOfThatSlash64 = await settled(3, 1);
for (const a of ['fd00:98::1', 'fd00:98::2']) await idle(a);
steps.twoOfAnotherSlash64 = await settled(5, 1);
for (const s of sockets) s.destroy();
listener.close();
console.log(JSON.stringify(steps));
`;

test("Hubble TCP listener: an IPv6 client's whole /64 shares one hubble.maxConnectionsPerAddress (root)", { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-hubble-v6-'));
  try {
    const ca = testCaMake(dir, 'kitnet.test');
    const addresses = ['fd00:99::1', 'fd00:99::2', 'fd00:99:0:0:ffff::3', 'fd00:99::4', 'fd00:98::1', 'fd00:98::2'];
    const setup = addresses.map((a) => `ip -6 addr add ${a}/64 dev lo nodad`).join(' && ');
    const out = await nodeInOwnNetns<Record<string, { open: number; perAddress: number; total: number }>>(setup, script(ca.serverCert, ca.serverKey));
    assert.deepEqual(out.threeOfOneSlash64, { open: 3, perAddress: 0, total: 0 });
    // A fourth address of the same /64 is the same host: over its share, closed at accept.
    assert.deepEqual(out.fourthOfThatSlash64, { open: 3, perAddress: 1, total: 0 });
    // Another /64 is another host, with a share of its own.
    assert.deepEqual(out.twoOfAnotherSlash64, { open: 5, perAddress: 1, total: 0 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

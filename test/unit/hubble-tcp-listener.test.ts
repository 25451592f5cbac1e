// The Hubble TCP listener against hostile clients (api/hubble/tcp-listener.ts): real sockets, real TLS
// with a throwaway CA, real grpc-js. Clients that connect and never finish a handshake, one address
// opening more than its share, the whole listener full, a client without HTTP/2.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { credentials } from '@grpc/grpc-js';
import { pino } from 'pino';
import { configParse } from '../../agent/config.js';
import { hubbleClient } from '../../api/hubble/client.js';
import { hubbleListen, type HubbleServer } from '../../api/hubble/server.js';
import { testCaMake, type TestCa } from '../helpers/test-ca.js';
import { waitFor } from '../helpers/sys.js';

/** How long a close or an accept may take to be seen on a loaded 2-core machine (waited on, not slept). */
const SETTLE_MS = 20_000;

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });

/** A TCP connection from `from` (a loopback address) that sends nothing: no TLS handshake ever. */
const idle = (port: number, from: string) =>
  new Promise<Socket>((resolve, reject) => {
    const s = netConnect({ host: '127.0.0.1', port, localAddress: from }, () => resolve(s));
    s.on('error', reject);
  });

const closed = (s: Socket) => new Promise<void>((resolve) => (s.destroyed && s.readyState === 'closed' ? resolve() : s.once('close', () => resolve())));

/** Resolves with what the server did within ms: the connection closed, or still open. */
const closedWithin = (s: Socket, ms: number) =>
  Promise.race([closed(s).then(() => 'closed' as const), new Promise<'open'>((r) => setTimeout(() => r('open'), ms).unref())]);

describe('Hubble TCP listener against hostile clients', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-hubbletcp-'));
  let ca: TestCa;
  const servers: HubbleServer[] = [];
  const sockets: Socket[] = [];
  const listen = async (name: string, hubble: Record<string, unknown>) => {
    const port = await freePort();
    const config = configParse({
      nodeName: 'unit-node',
      api: { socket: join(dir, `${name}.sock`) },
      hubble: { socket: join(dir, `${name}-hubble.sock`), listen: `127.0.0.1:${port}`, ...hubble, tls: { cert: ca.serverCert, key: ca.serverKey, clientCa: ca.ca, ...(hubble.tls as object) } },
    });
    const server = await hubbleListen(config, pino({ level: 'silent' }));
    servers.push(server);
    return { server, port };
  };
  const mtls = () => credentials.createSsl(readFileSync(ca.ca), readFileSync(ca.clientKey), readFileSync(ca.clientCert));
  /** A health check served over TLS: NOT_SERVING (no agent behind this server) is an answer. */
  const served = async (port: number, creds = mtls()) => {
    const c = hubbleClient(`127.0.0.1:${port}`, creds, { 'grpc.ssl_target_name_override': 'kitnet.test', 'grpc.default_authority': 'kitnet.test' });
    try {
      return await c.call('health', 'Check', { service: 'hubble.server.Observer' });
    } finally {
      c.close();
    }
  };
  before(() => {
    ca = testCaMake(dir, 'kitnet.test');
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    for (const s of servers) await s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('limits: one address cannot hold more than its share, nor everyone more than the total; a client with a certificate is still served', async () => {
    const { server, port } = await listen('caps', { maxConnections: 6, maxConnectionsPerAddress: 3, tls: { handshakeTimeoutMs: 60_000 } });
    assert.deepEqual(await served(port), { status: 'NOT_SERVING' });
    await waitFor('the served client gone', async () => server.tcp!.open === 0, SETTLE_MS);
    for (let i = 0; i < 3; i++) sockets.push(await idle(port, '127.0.0.2'));
    await waitFor('three idle connections counted', async () => server.tcp!.open === 3, SETTLE_MS);
    const fourth = await idle(port, '127.0.0.2');
    sockets.push(fourth);
    assert.equal(await closedWithin(fourth, 10_000), 'closed', 'a fourth connection from 127.0.0.2 is closed at once');
    assert.equal(server.tcp!.refused.max_connections_per_address, 1);
    // Another address is not held up by the first one's share.
    assert.deepEqual(await served(port), { status: 'NOT_SERVING' });
    await waitFor('the served client gone', async () => server.tcp!.open === 3, SETTLE_MS);
    for (let i = 0; i < 3; i++) sockets.push(await idle(port, '127.0.0.3'));
    await waitFor('six idle connections counted', async () => server.tcp!.open === 6, SETTLE_MS);
    const seventh = await idle(port, '127.0.0.4');
    sockets.push(seventh);
    assert.equal(await closedWithin(seventh, 10_000), 'closed', 'a seventh connection is closed at once: the listener is full');
    assert.equal(server.tcp!.refused.max_connections, 1);
    assert.equal(server.tcp!.refused.handshake_failed, 0, 'a connection refused at accept is counted once, not also as a failed handshake');
    // Room again once they go.
    for (const s of sockets.splice(0)) s.destroy();
    await waitFor('the idle connections gone', async () => server.tcp!.open === 0, SETTLE_MS);
    assert.deepEqual(await served(port), { status: 'NOT_SERVING' });
  });

  test('a connection that does not finish its TLS handshake in time is closed and its place freed', async () => {
    const { server, port } = await listen('slow', { tls: { handshakeTimeoutMs: 300 } });
    const s = await idle(port, '127.0.0.5');
    sockets.push(s);
    assert.equal(await closedWithin(s, 15_000), 'closed', 'the server closed a connection that never sent a ClientHello');
    await waitFor('its place freed', async () => server.tcp!.open === 0, SETTLE_MS);
    assert.equal(server.tcp!.refused.handshake_timeout, 1);
  });

  test('without a client certificate, with a stranger CA\'s, or without HTTP/2: refused', async () => {
    const { server, port } = await listen('certs', {});
    await assert.rejects(served(port, credentials.createSsl(readFileSync(ca.ca))), 'no client certificate');
    await assert.rejects(served(port, credentials.createSsl(readFileSync(ca.ca), readFileSync(ca.strangerKey), readFileSync(ca.strangerCert))), "a stranger CA's certificate");
    await waitFor('both handshakes counted as failed', async () => server.tcp!.refused.handshake_failed >= 2, SETTLE_MS);
    // TLS done with a good certificate, but no ALPN h2: not a gRPC client.
    const plain = tlsConnect({ host: '127.0.0.1', port, servername: 'kitnet.test', ca: readFileSync(ca.ca), cert: readFileSync(ca.clientCert), key: readFileSync(ca.clientKey) });
    plain.on('error', () => undefined);
    sockets.push(plain);
    assert.equal(await closedWithin(plain, 10_000), 'closed');
    assert.equal(server.tcp!.refused.not_http2, 1);
    assert.deepEqual(await served(port), { status: 'NOT_SERVING' }, 'a good client still is served');
  });
});

test('hubble.maxConnectionsPerAddress above hubble.maxConnections is a config error naming the key', () => {
  assert.throws(() => configParse({ hubble: { maxConnections: 4, maxConnectionsPerAddress: 8 } }), /hubble\.maxConnectionsPerAddress.*must not be above hubble\.maxConnections \(4\)/s);
  assert.throws(() => configParse({ hubble: { tls: { cert: 'c', key: 'k', handshakeTimeoutMs: 10 } } }), /hubble\.tls\.handshakeTimeoutMs/);
});

test('hubble.ipv6ClientPrefix: 64 by default, 32-128, a bad one is a config error naming the key', () => {
  assert.equal(configParse({}).hubble.ipv6ClientPrefix, 64);
  assert.equal(configParse({ hubble: { ipv6ClientPrefix: 128 } }).hubble.ipv6ClientPrefix, 128);
  for (const bad of [0, 16, 129, 64.5, '64']) assert.throws(() => configParse({ hubble: { ipv6ClientPrefix: bad } }), /hubble\.ipv6ClientPrefix/);
});

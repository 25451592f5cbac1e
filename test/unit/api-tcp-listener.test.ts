// The REST API's TCP listener (api.tcp, api/listener.ts) against hostile clients: real sockets, real TLS
// with a throwaway certificate. Clients that connect and never start a handshake, one address opening
// more than its share, the whole listener full, plain HTTP on the TLS port. Before these limits any host
// that reached the port could hold connections without end (Node's default handshake timeout: 120 s).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { configParse } from '../../agent/config.js';
import { apiTcpMetricsRegister, listenerBind, type BoundListener, type ListenerTls } from '../../api/listener.js';
import { waitFor } from '../helpers/sys.js';

/** How long a close or an accept may take to be seen on a loaded 2-core machine (waited on, not slept). */
const SETTLE_MS = 20_000;

describe('API TCP listener against hostile clients', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-apitcp-'));
  const listeners: BoundListener[] = [];
  const sockets: Socket[] = [];
  let cert: Buffer;
  let key: Buffer;
  before(() => {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    cert = readFileSync(join(dir, 'cert.pem'));
    key = readFileSync(join(dir, 'key.pem'));
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    for (const l of listeners) await l.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const listen = async (limits: Partial<ListenerTls>) => {
    const l = await listenerBind({ host: '127.0.0.1', port: 0 }, { cert, key, maxConnections: 128, maxConnectionsPerAddress: 16, handshakeTimeoutMs: 60_000, log: pino({ level: 'silent' }), ...limits });
    listeners.push(l);
    return { l, port: (l.address() as AddressInfo).port };
  };
  /** A TCP connection from `from` (a loopback address) that sends nothing: no TLS handshake ever. */
  const idle = (port: number, from: string) =>
    new Promise<Socket>((resolve, reject) => {
      const s = netConnect({ host: '127.0.0.1', port, localAddress: from }, () => resolve(s));
      s.on('error', reject);
      sockets.push(s);
    });
  /** Whether the server closed `s` (the test's deadline only bounds the failure case). */
  const closed = (s: Socket, ms = 10_000) =>
    Promise.race([new Promise<'closed'>((r) => (s.destroyed ? r('closed') : s.once('close', () => r('closed')))), new Promise<'open'>((r) => setTimeout(() => r('open'), ms).unref())]);
  /** An HTTPS request answered: the listener answers 503 (agent starting) until an API serves it. */
  const served = (port: number) =>
    new Promise<number>((resolve, reject) => {
      request({ host: '127.0.0.1', port, path: '/v1/workloads', ca: cert, agent: false }, (res) => (res.resume(), resolve(res.statusCode ?? 0))).on('error', reject).end();
    });

  test('limits: one address cannot hold more than its share, nor everyone more than the total; others are still served', async () => {
    const { l, port } = await listen({ maxConnections: 6, maxConnectionsPerAddress: 3 });
    const registry = new Registry();
    apiTcpMetricsRegister(registry, l);
    assert.equal(await served(port), 503);
    await waitFor('the served client gone', async () => l.connections!.open === 0, SETTLE_MS);
    for (let i = 0; i < 3; i++) await idle(port, '127.0.0.2');
    await waitFor('three idle connections counted', async () => l.connections!.open === 3, SETTLE_MS);
    assert.equal(await closed(await idle(port, '127.0.0.2')), 'closed', 'a fourth connection from 127.0.0.2 is closed at once');
    assert.equal(l.connections!.refused.max_connections_per_address, 1);
    assert.equal(await served(port), 503, 'another address is served meanwhile');
    await waitFor('the served client gone', async () => l.connections!.open === 3, SETTLE_MS);
    for (let i = 0; i < 3; i++) await idle(port, '127.0.0.3');
    await waitFor('six idle connections counted', async () => l.connections!.open === 6, SETTLE_MS);
    assert.equal(await closed(await idle(port, '127.0.0.4')), 'closed', 'a seventh connection is closed at once: the listener is full');
    assert.equal(l.connections!.refused.max_connections, 1);
    assert.equal(l.connections!.refused.handshake_failed, 0, 'a connection refused at accept is counted once, not also as a failed handshake');
    const metrics = await registry.metrics();
    assert.match(metrics, /kitnet_api_connections 6/);
    assert.match(metrics, /kitnet_api_connections_refused_total\{reason="max_connections_per_address"\} 1/);
    // Room again once they go.
    for (const s of sockets.splice(0)) s.destroy();
    await waitFor('the idle connections gone', async () => l.connections!.open === 0, SETTLE_MS);
    assert.equal(await served(port), 503);
  });

  test('a connection that does not finish its TLS handshake in time is closed and its place freed', async () => {
    const { l, port } = await listen({ handshakeTimeoutMs: 300 });
    const s = await idle(port, '127.0.0.5');
    assert.equal(await closed(s, 15_000), 'closed', 'the server closed a connection that never sent a ClientHello');
    await waitFor('its place freed', async () => l.connections!.open === 0, SETTLE_MS);
    assert.equal(l.connections!.refused.handshake_timeout, 1);
  });

  test('a client that finishes its handshake and then sends no request, or never ends its headers, is closed in time; one that asks is served', async () => {
    // 3 s: the clients below must finish their handshakes within it on a loaded machine too.
    const { l, port } = await listen({ handshakeTimeoutMs: 3_000 });
    const s = tlsConnect({ socket: netConnect({ host: '127.0.0.1', port, localAddress: '127.0.0.7' }), servername: 'localhost', ca: cert });
    s.on('error', () => undefined);
    sockets.push(s);
    await new Promise<void>((resolve, reject) => s.once('secureConnect', resolve).once('error', reject));
    assert.equal(await closed(s, 30_000), 'closed', 'the server closed a connection that sent no request after its handshake');
    await waitFor('its place freed', async () => l.connections!.open === 0, SETTLE_MS);
    assert.equal(l.connections!.refused.no_request, 1);
    // A client that asks at once is answered, and its connection is not cut at the same deadline.
    const kept = tlsConnect({ socket: netConnect({ host: '127.0.0.1', port, localAddress: '127.0.0.7' }), servername: 'localhost', ca: cert });
    kept.on('error', () => undefined);
    sockets.push(kept);
    await new Promise<void>((resolve, reject) => kept.once('secureConnect', resolve).once('error', reject));
    const answer = new Promise<string>((resolve) => {
      let text = '';
      kept.on('data', (d: Buffer) => {
        text += d.toString();
        if (text.includes('\r\n\r\n')) resolve(text);
      });
    });
    kept.write('GET /v1/workloads HTTP/1.1\r\nHost: localhost\r\n\r\n');
    assert.match(await answer, /^HTTP\/1\.1 503/);
    // Watched past the deadline (3 s from its handshake): a timer left running would have closed it.
    assert.equal(await closed(kept, 4_500), 'open', 'a client that asked keeps its connection past the first-request deadline (keep-alive)');
    assert.equal(l.connections!.refused.no_request, 1);
    // Headers begun and never finished (slowloris) are no request either.
    const slow = tlsConnect({ socket: netConnect({ host: '127.0.0.1', port, localAddress: '127.0.0.7' }), servername: 'localhost', ca: cert });
    slow.on('error', () => undefined);
    sockets.push(slow);
    await new Promise<void>((resolve, reject) => slow.once('secureConnect', resolve).once('error', reject));
    slow.write('GET /v1/workloads HTTP/1.1\r\nHost: local');
    assert.equal(await closed(slow, 30_000), 'closed', 'the server closed a connection whose first headers never ended');
    assert.equal(l.connections!.refused.no_request, 2);
  });

  test('close() ends every connection, served or handshaking', async () => {
    const { l, port } = await listen({});
    const waiting = await idle(port, '127.0.0.8');
    const served = tlsConnect({ socket: netConnect({ host: '127.0.0.1', port, localAddress: '127.0.0.8' }), servername: 'localhost', ca: cert });
    served.on('error', () => undefined);
    sockets.push(served);
    await new Promise<void>((resolve, reject) => served.once('secureConnect', resolve).once('error', reject));
    await waitFor('both counted', async () => l.connections!.open === 2, SETTLE_MS);
    await l.close();
    listeners.splice(listeners.indexOf(l), 1);
    assert.equal(await closed(waiting), 'closed');
    assert.equal(await closed(served), 'closed');
  });

  test('plain HTTP on the TLS port: a failed handshake, counted, closed', async () => {
    const { l, port } = await listen({});
    const s = await idle(port, '127.0.0.6');
    s.on('error', () => undefined);
    s.write('GET /v1/workloads HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.equal(await closed(s, 15_000), 'closed');
    await waitFor('the failed handshake counted', async () => l.connections!.refused.handshake_failed === 1, SETTLE_MS);
    await waitFor('its place freed', async () => l.connections!.open === 0, SETTLE_MS);
  });
});

test('api.tcp limits: defaults, and bad values are config errors naming the key', () => {
  const base = { port: 9876, tls: { cert: '/c', key: '/k' }, tokensFile: '/t' };
  const t = configParse({ api: { tcp: base } }).api.tcp!;
  assert.deepEqual([t.maxConnections, t.maxConnectionsPerAddress, t.ipv6ClientPrefix, t.tls!.handshakeTimeoutMs], [256, 64, 64, 10_000]);
  assert.throws(() => configParse({ api: { tcp: { ...base, maxConnections: 8, maxConnectionsPerAddress: 16 } } }), /api\.tcp\.maxConnectionsPerAddress.*must not be above api\.tcp\.maxConnections \(8\)/s);
  assert.throws(() => configParse({ api: { tcp: { ...base, maxConnections: 0 } } }), /api\.tcp\.maxConnections/);
  assert.throws(() => configParse({ api: { tcp: { ...base, ipv6ClientPrefix: 130 } } }), /api\.tcp\.ipv6ClientPrefix/);
  assert.throws(() => configParse({ api: { tcp: { ...base, tls: { cert: '/c', key: '/k', handshakeTimeoutMs: 10 } } } }), /api\.tcp\.tls\.handshakeTimeoutMs/);
});

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { etcdTlsExplain } from '../../agent/cluster/etcd-client.js';
import { clusterOpen } from '../../agent/cluster/index.js';
import { configParse } from '../../agent/config.js';
import type { EtcdTlsPrepared } from '../../agent/config-preflight.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { testCaMake, type TestCa } from '../helpers/test-ca.js';

const log = pino({ level: 'silent' });

/**
 * #14 item 8: TLS failures talking to a real etcd (client certificates required) name the config
 * key and file at fault and the problem, instead of grpc-js's "No connection established".
 * (Files that are missing or not PEM are refused before any connection: config-check.test.ts.)
 */
describe('cluster.etcd TLS errors name the file and the problem', { timeout: 120_000 }, () => {
  let dir: string;
  let ca: TestCa;
  let etcd: EtcdServer | undefined;
  let plain: EtcdServer | undefined;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kitnet-etcdtls-'));
    ca = testCaMake(dir, 'etcd.test');
    etcd = await etcdStart({ tls: { cert: ca.serverCert, key: ca.serverKey, ca: ca.ca, clientCa: ca.ca, client: { cert: ca.clientCert, key: ca.clientKey } } });
    plain = await etcdStart();
  });
  after(async () => {
    await etcd?.stop();
    await plain?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Opens cluster mode as the agent does, with these TLS files; the error's message. */
  const open = async (endpoint: string, files: { ca: string; cert?: string; key?: string }) => {
    const config = configParse({ stateDir: join(dir, 'state'), api: { socket: join(dir, 'k.sock') }, bpfPinRoot: '/sys/fs/bpf/x', cluster: { name: 'tls', id: 30, nodeIP: '192.0.2.30', etcd: { endpoints: [endpoint], tls: files } } });
    const tls: EtcdTlsPrepared = { ca: readFileSync(files.ca), ...(files.cert && files.key ? { cert: readFileSync(files.cert), key: readFileSync(files.key) } : {}) };
    const mode = await clusterOpen(config.cluster!, tls, log, config).then(
      (m) => m,
      (err: Error) => err,
    );
    if (mode instanceof Error) return mode.message;
    await mode.close();
    return 'opened';
  };

  test('a CA that did not sign etcd\'s certificate: cluster.etcd.tls.ca and its file', async () => {
    const msg = await open(etcd!.endpoint, { ca: join(dir, 'stranger-ca.pem'), cert: ca.clientCert, key: ca.clientKey });
    assert.match(msg, /^cluster\.etcd\.tls\.ca: .*stranger-ca\.pem does not verify etcd's server certificate \(unable to verify the first certificate\); give the CA that signed etcd's --cert-file$/);
  });

  test('a client certificate etcd does not trust: cluster.etcd.tls.cert and its file', async () => {
    const msg = await open(etcd!.endpoint, { ca: ca.ca, cert: ca.strangerCert, key: ca.strangerKey });
    assert.match(msg, /^cluster\.etcd\.tls\.cert: etcd refused the client certificate .*stranger\.pem \(.*alert bad certificate.*\); it must be signed by a CA in etcd's --trusted-ca-file$/);
  });

  test('no client certificate where etcd asks for one: says which keys to set', async () => {
    const msg = await open(etcd!.endpoint, { ca: ca.ca });
    assert.match(msg, /^cluster\.etcd\.tls: etcd asks for a client certificate \(--client-cert-auth\) and none is configured .*set cluster\.etcd\.tls\.cert and cluster\.etcd\.tls\.key$/);
  });

  test('TLS towards an etcd that serves plain http: names the endpoint', async () => {
    const msg = await open(plain!.endpoint.replace('http:', 'https:'), { ca: ca.ca, cert: ca.clientCert, key: ca.clientKey });
    assert.match(msg, /^cluster\.etcd\.endpoints: https:\/\/127\.0\.0\.1:\d+ did not complete a TLS handshake \((Client network socket disconnected before secure TLS connection was established|read ECONNRESET)\); if etcd serves plain http there, use an http:\/\/ endpoint/);
  });

  test('the right files: the session opens', async () => {
    assert.equal(await open(etcd!.endpoint, { ca: ca.ca, cert: ca.clientCert, key: ca.clientKey }), 'opened');
  });
});

test('a reset during the handshake is read as a handshake failure only towards https endpoints', () => {
  const reset = new Error('14 UNAVAILABLE: No connection established. Last error: Error: read ECONNRESET. Resolution note: ');
  assert.match(etcdTlsExplain(reset, { endpoints: ['https://192.0.2.1:2379'] } as never) ?? '', /^cluster\.etcd\.endpoints: https:\/\/192\.0\.2\.1:2379 did not complete a TLS handshake \(read ECONNRESET\)/);
  assert.equal(etcdTlsExplain(reset, { endpoints: ['http://192.0.2.1:2379'] } as never), undefined, 'plain http: a reset is not a TLS problem');
});

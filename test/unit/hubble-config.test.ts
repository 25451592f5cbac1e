import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { configParse } from '../../agent/config.js';
import { hubbleConfigProblems, hubbleListenParse, hubbleSocketPath } from '../../agent/hubble-config.js';
import { KITNET_BIN } from '../helpers/agent-process.js';
import { testCaMake } from '../helpers/test-ca.js';

const execFileP = promisify(execFile);

describe('hubble config keys', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-hubblecfg-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KITNET_')));

  test('the socket defaults to hubble.sock beside api.socket; KITNET_HUBBLE_SOCKET sets it', () => {
    assert.equal(hubbleSocketPath(configParse({})), '/run/kitnet/hubble.sock');
    assert.equal(hubbleSocketPath(configParse({ api: { socket: '/tmp/x/kitnet.sock' } })), '/tmp/x/hubble.sock');
    assert.equal(hubbleSocketPath(configParse({ hubble: { socket: '/tmp/h.sock' } })), '/tmp/h.sock');
  });

  test('listen addresses', () => {
    assert.deepEqual(hubbleListenParse(':4244'), { host: '0.0.0.0', port: 4244 });
    assert.deepEqual(hubbleListenParse('127.0.0.1'), { host: '127.0.0.1', port: 4244 });
    assert.deepEqual(hubbleListenParse('[::1]:5000'), { host: '::1', port: 5000 });
    assert.throws(() => configParse({ hubble: { listen: 'a:b:c', tls: { cert: 'c', key: 'k' } } }), /hubble\.listen: must be host:port/);
    assert.throws(() => configParse({ hubble: { listen: ':0', tls: { cert: 'c', key: 'k' } } }), /hubble\.listen: the port must be 1-65535/);
    assert.throws(() => configParse({ hubble: { listen: ':4244' } }), /hubble\.tls: required: the Hubble TCP listener only serves TLS/);
    assert.throws(() => configParse({ hubble: { sockett: 'x' } }), /hubble: Unrecognized key/);
  });

  test('followQueue: 32,768 flows by default; an integer of 64 to 1,000,000', () => {
    assert.equal(configParse({}).hubble.followQueue, 32_768);
    assert.equal(configParse({ hubble: { followQueue: 64 } }).hubble.followQueue, 64);
    for (const bad of [63, 1_000_001, 100.5, '4096', -1]) {
      assert.throws(() => configParse({ hubble: { followQueue: bad } }), /hubble\.followQueue: /, String(bad));
    }
  });

  test('socket and TLS file problems name the key', () => {
    const ca = testCaMake(dir, 'kitnet.test');
    const problems = (hubble: object) => hubbleConfigProblems(configParse({ api: { socket: join(dir, 'kitnet.sock') }, hubble })).map(([k, m]) => `${k}: ${m}`);
    assert.deepEqual(problems({ listen: ':4244', tls: { cert: ca.serverCert, key: ca.serverKey, clientCa: ca.ca } }), []);
    assert.match(problems({ socket: join(dir, 'kitnet.sock') })[0]!, /^hubble\.socket: .* is also api\.socket/);
    assert.match(problems({ socket: `/tmp/${'x'.repeat(120)}` })[0]!, /^hubble\.socket: .* longer than the 107 bytes/);
    assert.match(problems({ listen: ':4244', tls: { cert: join(dir, 'missing.pem'), key: ca.serverKey } })[0]!, /^hubble\.tls\.cert: cannot read .*missing\.pem: ENOENT/);
    assert.match(problems({ listen: ':4244', tls: { cert: ca.serverCert, key: ca.clientKey } })[0]!, /^hubble\.tls\.key: .* does not belong to the certificate/);
    assert.match(problems({ listen: ':4244', tls: { cert: ca.serverKey, key: ca.serverKey } })[0]!, /^hubble\.tls\.cert: .* is not a PEM certificate/);
    assert.match(problems({ listen: ':4244', tls: { cert: ca.serverCert, key: ca.serverKey, clientCa: ca.serverKey } })[0]!, /^hubble\.tls\.clientCa: .* is not a PEM CA bundle/);
    assert.match(problems({ tls: { cert: ca.serverCert, key: ca.serverKey } })[0]!, /^hubble\.tls: is set but hubble\.listen is not/);
  });

  test('`kitnet config check` reports a bad hubble key by name', async () => {
    const file = join(dir, 'config.yaml');
    writeFileSync(file, `api: { socket: ${join(dir, 'k.sock')} }\nhubble: { listen: "127.0.0.1:4244", tls: { cert: ${join(dir, 'nope.pem')}, key: ${join(dir, 'nope-key.pem')} } }\n`);
    const r = await execFileP(process.execPath, [KITNET_BIN, 'config', 'check', file], { env, timeout: 60_000 }).then(
      () => ({ code: 0, err: '' }),
      (e: { code?: number; stderr?: string }) => ({ code: e.code ?? -1, err: e.stderr ?? '' }),
    );
    assert.notEqual(r.code, 0);
    assert.match(r.err, /hubble\.tls\.cert: cannot read .*nope\.pem/);
    assert.match(r.err, /hubble\.tls\.key: cannot read .*nope-key\.pem/);
  });
});

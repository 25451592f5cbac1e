import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { pinRootLockPath } from '../../agent/instance-lock.js';
import { tokenHash } from '../../api/security.js';
import { datapathUnpinAll } from '../../bpf/index.js';
import { agentProcessRun, KITNET_BIN } from '../helpers/agent-process.js';
import { uniq } from '../helpers/sys.js';

const execFileP = promisify(execFile);

/**
 * Half-starts (issue #12, item 9): for each config the agent must refuse, a real `kitnet agent`
 * process exits non-zero naming the config key, having made no pins (the pin root does not exist)
 * and no store (no kitnet.db), and `kitnet config check` refuses the same file naming the same key.
 */
describe('a bad config stops the agent before it touches anything (root)', { timeout: 600_000 }, () => {
  const id = uniq();
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-halfstart-'));
  const pinRoots: string[] = [];
  let busy: Server | undefined;
  let busyPort = 0;
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  const otherKey = join(dir, 'other-key.pem');
  const garbage = join(dir, 'garbage.pem');
  const tokens = join(dir, 'tokens.yaml');

  before(async () => {
    const openssl = (out: string, keyOut: string) =>
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyOut, '-out', out, '-days', '1', '-subj', '/CN=localhost'], { stdio: 'ignore' });
    openssl(cert, key);
    openssl(join(dir, 'other-cert.pem'), otherKey);
    writeFileSync(garbage, '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n');
    writeFileSync(tokens, `- {name: a, secretSha256: ${tokenHash('kn_halfstart-token-secret-0123456789')}, scopes: [admin]}\n`);
    writeFileSync(join(dir, 'a-file'), 'not a directory\n');
    busy = createServer();
    await new Promise<void>((resolve) => busy!.listen({ host: '127.0.0.1', port: 0 }, resolve));
    busyPort = (busy.address() as AddressInfo).port;
  });
  after(async () => {
    await new Promise<void>((resolve) => (busy ? busy.close(() => resolve()) : resolve()));
    for (const p of pinRoots) {
      await datapathUnpinAll(p).catch(() => undefined);
      rmSync(pinRootLockPath(p), { force: true });
    }
    rmSync(dir, { recursive: true, force: true });
  });

  const tcp = (over: Record<string, unknown> = {}) => ({ tcp: { host: '127.0.0.1', port: 1, tls: { cert, key }, tokensFile: tokens, ...over } });
  const cases: Array<{ name: string; key: string; api?: Record<string, unknown>; ipam?: Record<string, string>; socket?: string }> = [
    { name: 'a missing TLS certificate', key: 'api.tcp.tls.cert', api: tcp({ tls: { cert: join(dir, 'none.pem'), key } }) },
    { name: 'a garbage TLS certificate', key: 'api.tcp.tls.cert', api: tcp({ tls: { cert: garbage, key } }) },
    { name: 'a key that does not match the certificate', key: 'api.tcp.tls.key', api: tcp({ tls: { cert, key: otherKey } }) },
    { name: 'a TCP port in use', key: 'api.tcp.port', api: tcp({ port: -1 }) },
    { name: 'an unresolvable host', key: 'api.tcp.host', api: tcp({ host: 'no-such-host.invalid' }) },
    { name: 'a socket path that cannot be created', key: 'api.socket', socket: join(dir, 'a-file', 'kitnet.sock') },
    { name: 'an IPv4 pool too small (/31)', key: 'ipam.ipv4Pool', ipam: { ipv4Pool: '10.234.0.0/31' } },
    { name: 'an IPv6 pool too small (/127)', key: 'ipam.ipv6Pool', ipam: { ipv6Pool: 'fd00:234::/127' } },
  ];

  cases.forEach((c, i) => {
    test(`${c.name}: refused naming ${c.key}, no pins, no store; config check refuses it too`, async () => {
      const pinRoot = `/sys/fs/bpf/kitnet-test-halfstart-${id}-${i}`;
      pinRoots.push(pinRoot);
      const stateDir = join(dir, `state-${i}`);
      const socket = c.socket ?? join(dir, `s${i}.sock`);
      const api = { socket, ...(c.api ?? {}) } as Record<string, unknown>;
      const t = api.tcp as { port: number } | undefined;
      if (t) t.port = t.port === -1 ? busyPort : busyPort + 1 + i;
      const config = {
        stateDir,
        bpfPinRoot: pinRoot,
        logLevel: 'info',
        api,
        ipam: { ipv4Pool: '10.234.0.0/24', ipv6Pool: 'fd00:234::/64', ...(c.ipam ?? {}) },
      };
      const file = join(dir, `config-${i}.yaml`);
      writeFileSync(file, JSON.stringify(config, null, 2)); // JSON is YAML

      const outcome = await agentProcessRun(file, socket, 120_000);
      assert.ok(outcome.exited, `the agent started and served; output:\n${outcome.output.slice(-2000)}`);
      assert.notEqual(outcome.code, 0);
      assert.ok(outcome.output.includes(`${c.key}:`), `the agent's message names ${c.key}:\n${outcome.output.slice(-2000)}`);
      assert.equal(existsSync(pinRoot) ? readdirSync(pinRoot).length : 0, 0, `no pins under ${pinRoot}`);
      assert.equal(existsSync(join(stateDir, 'kitnet.db')), false, 'no store was opened');
      if (!c.socket) assert.equal(existsSync(socket), false, 'no socket left behind');

      // The same file through `kitnet config check`: refused, naming the same key.
      const check = await execFileP(process.execPath, [KITNET_BIN, 'config', 'check', file], { timeout: 60_000 }).then(
        (r) => ({ code: 0, out: r.stdout + r.stderr }),
        (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? -1, out: (e.stdout ?? '') + (e.stderr ?? '') }),
      );
      // A port in use is a fact of the moment, not of the file: config check cannot refuse it.
      if (c.key === 'api.tcp.port') assert.equal(check.code, 0, check.out);
      else {
        assert.notEqual(check.code, 0, `config check accepted it:\n${check.out}`);
        assert.ok(check.out.includes(`${c.key}:`), `config check names ${c.key}:\n${check.out}`);
      }
    });
  });
});

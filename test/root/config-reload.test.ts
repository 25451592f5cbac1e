import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { daemonRun } from '../../main/daemon.js';
import { ApiError } from '../../common/api-client.js';
import type { ConfigReloadResult } from '../../common/schemas/config.js';
import { routeAccess, tokenHash, tokenGenerate } from '../../api/security.js';
import { MONITOR_AGG_DEFAULT, MONITOR_AGG_NONE } from '../../bpf/layout.gen.js';
import { rcuExpeditedGet, rcuExpeditedSet } from '../../netkit/index.js';
import { AgentFixture } from '../helpers/fixture.js';
import { links, waitFor } from '../helpers/sys.js';

const execFileP = promisify(execFile);
const KITNET = resolve(dirname(fileURLToPath(import.meta.url)), '../../../bin/kitnet.js');

/**
 * POST /v1/config/reload and `kitnet config reload` against a real agent: live keys change at once
 * (the flow aggregation level in the datapath's config map), the others are named as needing a
 * restart, and an invalid file is a 422 naming the bad key while the running config stays.
 */
describe('config reload by API call (root)', { timeout: 120_000 }, () => {
  const fx = new AgentFixture({ tag: 'reload', ipv4Pool: '10.209.0.0/16', ipv6Pool: 'fd00:209::/64', namespaces: ['reload'] });
  const file = join(fx.dir, 'config.yaml');
  const api = fx.api;
  const datapathConfig = () => fx.agent.kernel.datapath.configGet();
  /** `kitnet config reload` as an operator runs it: exit status and output. */
  const cli = async (...args: string[]) => {
    try {
      const { stdout, stderr } = await execFileP(process.execPath, [KITNET, '-s', fx.socket, 'config', 'reload', ...args], { timeout: 60_000 });
      return { code: 0, out: stdout + stderr };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      return { code: e.code ?? -1, out: (e.stdout ?? '') + (e.stderr ?? '') };
    }
  };

  after(() => fx.cleanup());
  before(async () => {
    writeFileSync(file, 'logLevel: silent\nflows: { aggregation: connection }\n');
    // The fixture's overrides, except the log level: that one comes from the file here.
    const overrides = { ...fx.overrides };
    delete overrides.logLevel;
    fx.daemon = await daemonRun({ configPath: file, overrides });
  });

  test('an admin route on the TCP listener', () => {
    assert.deepEqual(routeAccess('POST', '/v1/config/reload'), { scope: 'admin' });
  });

  test('nothing changed: 200 with an empty list', async () => {
    const r = await api.call<ConfigReloadResult>('POST', '/v1/config/reload');
    assert.deepEqual(r, { file, changed: [], applied: [], restartNeeded: [], tokens: null });
  });

  test('live keys apply at once (datapath config map), restart-only keys are named', async () => {
    assert.equal(datapathConfig().monitorAggregation, MONITOR_AGG_DEFAULT);
    writeFileSync(
      file,
      'logLevel: fatal\nflows: { aggregation: every-packet, reportIntervalSeconds: 7, ringCapacity: 100, dropEvents: { perSecond: 0, burst: 20 } }\ndatapath: { workloadIfname: net0 }\n',
    );
    const r = await api.call<ConfigReloadResult>('POST', '/v1/config/reload');
    assert.deepEqual(
      r.changed.map((c) => [c.key, c.from, c.to, c.applied]),
      [
        ['datapath.workloadIfname', 'eth0', 'net0', false],
        ['flows.aggregation', 'connection', 'every-packet', true],
        ['flows.dropEvents.burst', 500, 20, true],
        ['flows.dropEvents.perSecond', 1000, 0, true],
        ['flows.reportIntervalSeconds', 0, 7, true],
        ['flows.ringCapacity', 4095, 100, false],
        ['logLevel', 'silent', 'fatal', true],
      ],
    );
    assert.deepEqual(r.applied.sort(), ['flows.aggregation', 'flows.dropEvents.burst', 'flows.dropEvents.perSecond', 'flows.reportIntervalSeconds', 'logLevel']);
    assert.deepEqual(r.restartNeeded, ['datapath.workloadIfname', 'flows.ringCapacity']);
    // In the kernel: the datapath's config map says every packet, every 7 s, every drop.
    const live = { monitorAggregation: MONITOR_AGG_NONE, reportIntervalS: 7, dropEventsPerSecond: 0, dropEventsBurst: 20 };
    assert.deepEqual(datapathConfig(), live);
    // The interface name did not change under the running agent: a new workload's is still eth0.
    const ns = await fx.netns('w');
    await api.call('POST', '/v1/workloads', { name: 'w', namespace: 'reload', labels: { app: 'w' }, netns: `/var/run/netns/${ns}` });
    const inside = (await links(ns)).map((l) => l.ifname);
    assert.ok(inside.includes('eth0') && !inside.includes('net0'), `links in the workload namespace: ${inside.join(', ')}`);
    await api.call('DELETE', '/v1/workloads/reload/w');
    // The same file again: the applied keys are running now; the restart-only ones are still pending.
    const again = await api.call<ConfigReloadResult>('POST', '/v1/config/reload');
    assert.deepEqual(again.changed.map((c) => c.key), ['datapath.workloadIfname', 'flows.ringCapacity']);
  });

  test('an invalid file: 422 AGENT_ERR_CONFIG_INVALID naming the key; the running config stays', async () => {
    writeFileSync(file, 'logLevel: debug\nflows: { aggregation: sometimes }\n');
    const err = await api.call('POST', '/v1/config/reload').then(
      () => assert.fail('an invalid config was accepted'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ApiError, String(err));
    assert.equal(err.statusCode, 422);
    assert.equal(err.code, 'AGENT_ERR_CONFIG_INVALID');
    assert.match(err.message, new RegExp(`^${file}: flows\\.aggregation: .*\\(the running config is unchanged\\)$`));
    const raw = await fetchRaw();
    assert.equal(raw.field, 'flows.aggregation');
    // Nothing of the bad file was applied, not even its valid logLevel line.
    assert.deepEqual(datapathConfig(), { monitorAggregation: MONITOR_AGG_NONE, reportIntervalS: 7, dropEventsPerSecond: 0, dropEventsBurst: 20 });
    writeFileSync(file, 'logLevel: fatal\nflows: { aggregation: every-packet, reportIntervalSeconds: 7, dropEvents: { perSecond: 0, burst: 20 } }\n');
    const r = await api.call<ConfigReloadResult>('POST', '/v1/config/reload');
    assert.deepEqual(r.changed, [], 'the running config is what it was before the bad file');
    // A file that is not even YAML, and one that is gone.
    writeFileSync(file, 'flows: [\n');
    await assert.rejects(api.call('POST', '/v1/config/reload'), (e: ApiError) => e.statusCode === 422 && e.message.startsWith(`${file}: invalid YAML`));
    rmSync(file);
    await assert.rejects(api.call('POST', '/v1/config/reload'), (e: ApiError) => e.statusCode === 422 && e.message.startsWith(`cannot read config file ${file}: ENOENT`));
    assert.deepEqual(datapathConfig(), { monitorAggregation: MONITOR_AGG_NONE, reportIntervalS: 7, dropEventsPerSecond: 0, dropEventsBurst: 20 });
  });

  test('kitnet config reload prints the changes; an invalid file exits 1 naming the key', async () => {
    writeFileSync(file, 'logLevel: fatal\nflows: { aggregation: connection, reportIntervalSeconds: 7 }\ndatapath: { mtu: 1400 }\n');
    const ok = await cli();
    assert.equal(ok.code, 0, ok.out);
    assert.equal(
      ok.out,
      `config reloaded from ${file}:\n` +
        '  datapath.mtu: (unset) -> 1400  (takes effect after a restart: systemctl restart kitnet)\n' +
        '  flows.aggregation: "every-packet" -> "connection"  (applied)\n' +
        '  flows.dropEvents.burst: 20 -> 500  (applied)\n' +
        '  flows.dropEvents.perSecond: 0 -> 1000  (applied)\n',
    );
    assert.deepEqual(datapathConfig().dropEventsPerSecond, 1000, 'the default budget is back in the kernel');
    assert.equal(datapathConfig().monitorAggregation, MONITOR_AGG_DEFAULT);
    const json = JSON.parse((await cli('-o', 'json')).out) as ConfigReloadResult;
    assert.deepEqual(json.changed.map((c) => c.key), ['datapath.mtu']);
    writeFileSync(file, 'logLevel: loud\n');
    const bad = await cli();
    assert.equal(bad.code, 1);
    assert.match(bad.out, new RegExp(`^error: ${file}: logLevel: .* \\(the running config is unchanged\\) \\[AGENT_ERR_CONFIG_INVALID, HTTP 422\\]\\n$`));
  });

  test('datapath.expediteRcu turns /sys/kernel/rcu_expedited on at reload and puts the old value back when removed', async (t) => {
    const original = rcuExpeditedGet();
    t.after(() => rcuExpeditedSet(original));
    // From the default (off): only a value kitnet changed is put back.
    rcuExpeditedSet(false);
    writeFileSync(file, 'logLevel: fatal\nflows: { aggregation: connection, reportIntervalSeconds: 7 }\ndatapath: { expediteRcu: true }\n');
    const on = await api.call<ConfigReloadResult>('POST', '/v1/config/reload');
    assert.ok(on.applied.includes('datapath.expediteRcu'), JSON.stringify(on));
    assert.equal(rcuExpeditedGet(), true);
    writeFileSync(file, 'logLevel: fatal\nflows: { aggregation: connection, reportIntervalSeconds: 7 }\n');
    const off = await api.call<ConfigReloadResult>('POST', '/v1/config/reload');
    assert.deepEqual(off.changed.map((c) => [c.key, c.to, c.applied]), [['datapath.expediteRcu', false, true]]);
    assert.equal(rcuExpeditedGet(), false);
    writeFileSync(file, 'datapath: { expediteRcu: sometimes }\n');
    await assert.rejects(api.call('POST', '/v1/config/reload'), (e: ApiError) => e.statusCode === 422 && /datapath\.expediteRcu/.test(e.message));
  });

  /** The error body as sent (the client keeps only code and message). */
  async function fetchRaw(): Promise<{ field?: string; code?: string }> {
    return new Promise((done, fail) => {
      const req = request({ socketPath: fx.socket, method: 'POST', path: '/v1/config/reload' }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => done(JSON.parse(text) as { field?: string }));
      });
      req.on('error', fail);
      req.end();
    });
  }
});

/**
 * The TCP listener's tokens file is read again on every reload: a rotated token works at once, the
 * old one is refused, and a broken tokens file is a 422 that keeps the running tokens.
 */
describe('config reload re-reads the tokens file (root, TLS listener)', { timeout: 120_000 }, () => {
  const fx = new AgentFixture({ tag: 'tokens', ipv4Pool: '10.216.0.0/16', ipv6Pool: 'fd00:216::/64', namespaces: ['tokens'] });
  const file = join(fx.dir, 'config.yaml');
  const tokensFile = join(fx.dir, 'tokens.yaml');
  const cert = join(fx.dir, 'cert.pem');
  const key = join(fx.dir, 'key.pem');
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const [oldSecret, newSecret] = [tokenGenerate(), tokenGenerate()];
  const tokensWrite = (...entries: Array<[string, string]>) =>
    writeFileSync(tokensFile, entries.map(([name, secret]) => `- {name: ${name}, secretSha256: ${tokenHash(secret)}, scopes: [read]}\n`).join(''), { mode: 0o600 });
  /** GET /v1/workloads over TLS with a bearer token: the HTTP status. */
  const get = (secret: string) =>
    new Promise<number>((done, fail) => {
      httpsRequest({ host: '127.0.0.1', port, path: '/v1/workloads', headers: { authorization: `Bearer ${secret}` }, ca: readFileSync(cert) }, (res) => {
        res.resume();
        done(res.statusCode ?? 0);
      }).on('error', fail).end();
    });

  after(() => fx.cleanup());
  before(async () => {
    await execFileP('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1']);
    tokensWrite(['ops', oldSecret]);
    writeFileSync(file, `logLevel: silent\napi: { tcp: { host: 127.0.0.1, port: ${port}, tls: { cert: ${cert}, key: ${key} }, tokensFile: ${tokensFile} } }\n`);
    const overrides = { ...fx.overrides };
    delete overrides.logLevel;
    overrides.api = { ...overrides.api };
    fx.daemon = await daemonRun({ configPath: file, overrides });
  });

  test('a rotated token works after the reload, the old one no longer does', async () => {
    assert.equal(await get(oldSecret), 200);
    assert.equal(await get(newSecret), 401);
    tokensWrite(['ops-2', newSecret]);
    assert.equal(await get(newSecret), 401, 'nothing changes before the reload');
    const r = await fx.api.call<ConfigReloadResult>('POST', '/v1/config/reload');
    assert.deepEqual(r.tokens, { file: tokensFile, count: 1 });
    assert.deepEqual(r.changed, []);
    assert.equal(await get(newSecret), 200);
    assert.equal(await get(oldSecret), 401);
  });

  test('a broken tokens file: 422 naming api.tcp.tokensFile, the running tokens stay', async () => {
    writeFileSync(tokensFile, '- {name: x, scopes: [read]}\n');
    await assert.rejects(fx.api.call('POST', '/v1/config/reload'), (e: ApiError) => e.statusCode === 422 && e.code === 'AGENT_ERR_CONFIG_INVALID' && /^api\.tcp\.tokensFile: /.test(e.message));
    assert.equal(await get(newSecret), 200, 'the tokens of the last good file still work');
  });
});

/**
 * A start that restores workloads reports its progress to systemd: STATUS with the count and
 * EXTEND_TIMEOUT_USEC, so TimeoutStartSec= does not end a long restore that is moving, all before READY.
 */
describe('restore progress to systemd (root, $NOTIFY_SOCKET)', { timeout: 120_000 }, () => {
  const fx = new AgentFixture({ tag: 'notify', ipv4Pool: '10.217.0.0/16', ipv6Pool: 'fd00:217::/64', namespaces: ['notify'] });
  const notifySocket = join(fx.dir, 'notify.sock');
  const got: string[] = [];
  let server: { bind(p: string): void; close(): void } | undefined;
  const saved = { NOTIFY_SOCKET: process.env.NOTIFY_SOCKET, WATCHDOG_USEC: process.env.WATCHDOG_USEC };

  after(async () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    server?.close();
    await fx.cleanup();
  });

  test('STATUS restoring N/N with EXTEND_TIMEOUT_USEC, then READY', async () => {
    await fx.start();
    for (const n of ['a', 'b', 'c']) {
      const ns = await fx.netns(n);
      await fx.api.call('POST', '/v1/workloads', { name: n, namespace: 'notify', labels: { app: n }, netns: `/var/run/netns/${ns}` });
    }
    await fx.stop();
    const unixDgram = createRequire(import.meta.url)('unix-dgram') as {
      createSocket(t: 'unix_dgram', cb: (msg: Buffer) => void): { bind(p: string): void; close(): void };
    };
    server = unixDgram.createSocket('unix_dgram', (msg) => got.push(msg.toString()));
    server.bind(notifySocket);
    process.env.NOTIFY_SOCKET = notifySocket;
    delete process.env.WATCHDOG_USEC;
    await fx.start();
    await waitFor('READY=1', async () => got.some((m) => m.startsWith('READY=1')));
    const ready = got.findIndex((m) => m.startsWith('READY=1'));
    const progress = got.slice(0, ready);
    assert.ok(progress.length >= 1, `progress before READY: ${JSON.stringify(got)}`);
    assert.equal(progress.at(-1), 'STATUS=restoring workloads: 3/3\nEXTEND_TIMEOUT_USEC=60000000');
    assert.ok(progress.every((m) => /^STATUS=restoring workloads: [1-3]\/3\nEXTEND_TIMEOUT_USEC=60000000$/.test(m)), JSON.stringify(progress));
    assert.match(got[ready]!, /^READY=1\nSTATUS=serving 3 workloads on /);
    assert.deepEqual((await fx.api.call<Array<{ state: string }>>('GET', '/v1/workloads')).map((w) => w.state), ['ready', 'ready', 'ready']);
  });
});

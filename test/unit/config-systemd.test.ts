import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import { configLoad, type ConfigError } from '../../agent/config.js';
import { install } from '../../agent/install.js';
import { SystemdNotifier } from '../../agent/systemd.js';

describe('config', () => {
  test('environment overrides the file, flags override both; bad values name the key', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kitnet-cfg-'));
    try {
      const f = join(dir, 'c.yaml');
      writeFileSync(f, 'logLevel: warn\nipam: { ipv4Pool: 10.9.0.0/16 }\n');
      const c = configLoad(f, { nodeName: 'from-flag' }, { KITNET_LOG_LEVEL: 'debug', KITNET_NODE_NAME: 'from-env', KITNET_FLOW_RING_CAPACITY: '100' });
      assert.equal(c.logLevel, 'debug');
      assert.equal(c.nodeName, 'from-flag');
      assert.equal(c.ipam.ipv4Pool, '10.9.0.0/16');
      assert.equal(c.flows.ringCapacity, 100);
      assert.throws(() => configLoad(f, {}, { KITNET_FLOW_RING_CAPACITY: 'lots' }), (e: ConfigError) => /flows\.ringCapacity/.test(e.message));
      assert.throws(() => configLoad(f, {}, { KITNET_DATAPATH_MODE: 'macvlan' }), (e: ConfigError) => /datapath\.mode/.test(e.message));
      assert.deepEqual(c.reconcile, { resyncSeconds: 60, retryMaxSeconds: 60 });
      for (const [bad, key] of [
        ['reconcile: { resyncSeconds: 0 }', 'reconcile.resyncSeconds'],
        ['reconcile: { resyncSeconds: 1.5 }', 'reconcile.resyncSeconds'],
        ['reconcile: { retryMaxSeconds: 100000 }', 'reconcile.retryMaxSeconds'],
        ['reconcile: { retryMaxSeconds: "soon" }', 'reconcile.retryMaxSeconds'],
        ['reconcile: { backoff: 1 }', 'reconcile'],
      ] as const) {
        writeFileSync(f, `${bad}\n`);
        assert.throws(() => configLoad(f, {}, {}), (e: ConfigError) => e.message.includes(key), bad);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('install', () => {
  test('writes the unit for this checkout and a default config that validates; keeps an existing config', () => {
    const root = mkdtempSync(join(tmpdir(), 'kitnet-root-'));
    try {
      const lines: string[] = [];
      install({ root, enable: true, log: (l) => lines.push(l) });
      const unit = readFileSync(join(root, 'etc/systemd/system/kitnet.service'), 'utf8');
      assert.match(unit, /^Type=notify$/m);
      assert.match(unit, /^Restart=on-failure$/m);
      assert.match(unit, /^WatchdogSec=/m);
      assert.match(unit, /^CapabilityBoundingSet=CAP_NET_ADMIN CAP_BPF/m);
      assert.match(unit, /^ProtectSystem=strict$/m);
      assert.match(unit, /^PrivateTmp=yes$/m);
      assert.doesNotMatch(unit, /@KITNET_ROOT@|@NODE@/);
      assert.match(unit, new RegExp(`ExecStart=${process.execPath} /\\S+/bin/kitnet.js agent`));
      const cfgPath = join(root, 'etc/kitnet/config.yaml');
      assert.equal(configLoad(cfgPath, {}, {}).api.socket, '/run/kitnet/kitnet.sock');
      writeFileSync(cfgPath, 'logLevel: debug\n');
      install({ root, enable: true, log: (l) => lines.push(l) });
      assert.equal(readFileSync(cfgPath, 'utf8'), 'logLevel: debug\n');
      assert.ok(lines.some((l) => l.startsWith('kept existing')));
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('sd_notify', () => {
  test('READY, STATUS and WATCHDOG datagrams reach $NOTIFY_SOCKET', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kitnet-notify-'));
    const path = join(dir, 'notify.sock');
    const unixDgram = createRequire(import.meta.url)('unix-dgram') as {
      createSocket(t: 'unix_dgram', cb: (msg: Buffer) => void): { bind(p: string): void; close(): void };
    };
    const got: string[] = [];
    const server = unixDgram.createSocket('unix_dgram', (msg) => got.push(msg.toString()));
    server.bind(path);
    const n = new SystemdNotifier(pino({ level: 'silent' }), { NOTIFY_SOCKET: path, WATCHDOG_USEC: '200000' });
    try {
      n.ready('serving 0 workloads');
      n.status('busy');
      await new Promise((r) => setTimeout(r, 350));
      n.stopping();
      await new Promise((r) => setTimeout(r, 50));
      assert.match(got[0]!, /^READY=1\nSTATUS=serving 0 workloads\nMAINPID=\d+$/);
      assert.ok(got.includes('STATUS=busy'));
      assert.ok(got.filter((m) => m === 'WATCHDOG=1').length >= 2, `watchdog pings: ${JSON.stringify(got)}`);
      // The watchdog keeps pinging until close() (a stop can take a while): on a loaded machine a ping
      // may land after STOPPING, so only the order of the state messages is checked.
      assert.ok(got.indexOf('STOPPING=1') > got.indexOf('STATUS=busy'), `STOPPING after the status: ${JSON.stringify(got)}`);
      assert.deepEqual(got.filter((m) => m !== 'WATCHDOG=1').slice(1), ['STATUS=busy', 'STOPPING=1']);
    } finally {
      n.close();
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('outside systemd nothing is sent', () => {
    const n = new SystemdNotifier(pino({ level: 'silent' }), {});
    assert.equal(n.enabled, false);
    n.ready('x');
    n.close();
  });
});

describe('flow reporting config', () => {
  test('defaults to connection aggregation and rejects unknown levels naming the key', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kitnet-cfg-'));
    try {
      const f = join(dir, 'c.yaml');
      writeFileSync(f, 'flows: { ringCapacity: 10 }\n');
      assert.equal(configLoad(f, {}, {}).flows.aggregation, 'connection');
      writeFileSync(f, 'flows: { aggregation: sometimes }\n');
      assert.throws(() => configLoad(f, {}, {}), (e: ConfigError) => /flows\.aggregation/.test(e.message));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

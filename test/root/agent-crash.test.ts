import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { datapathUnpinAll } from '../../bpf/index.js';
import { ApiClient, ApiError } from '../../common/api-client.js';
import type { Workload } from '../../common/schemas/workload.js';
import { storeKernelDiff } from '../helpers/consistency.js';
import { links, netnsAdd, netnsDel, run, uniq, waitFor } from '../helpers/sys.js';
import { mulberry32 as prng } from '../helpers/random.js';
import { earlierRunsSweep } from '../helpers/sweep.js';

type Op =
  | { kind: 'add'; name: string; labels: Record<string, string> }
  | { kind: 'rm'; name: string }
  | { kind: 'label'; name: string; labels: Record<string, string> };

/**
 * Crash consistency: SIGKILL the agent at random moments while many registrations, label changes and
 * deletions are in flight, restart it, and check that every acknowledged change is there, and that the
 * kernel matches the store exactly (nothing leaked, nothing missing).
 */
describe('agent crash consistency (root)', { timeout: 600_000 }, () => {
  const id = uniq();
  const seed = Number(process.env.KITNET_CRASH_SEED ?? Date.now() % 1_000_000);
  const rounds = Number(process.env.KITNET_CRASH_ROUNDS ?? 6);
  const random = prng(seed);
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-crash-'));
  const pinRoot = `/sys/fs/bpf/kitnet-crash-${id}`;
  const socket = join(dir, 'kitnet.sock');
  const stateDir = join(dir, 'state');
  const config = join(dir, 'config.yaml');
  const names = Array.from({ length: 10 }, (_, i) => `w${i}`);
  const netnsOf = (name: string) => `kitnet-cr-${name}-${id}`;
  const api = new ApiClient({ socket });
  const bin = fileURLToPath(new URL('../../../bin/kitnet.js', import.meta.url));
  let agent: ChildProcess | undefined;
  /** What the test knows for sure: the last acknowledged state of each workload (undefined = absent). */
  const known = new Map<string, Record<string, string> | undefined>();

  const agentStart = async (waitReady = true) => {
    await agentKill('SIGKILL');
    const log = openSync(join(dir, 'agent.log'), 'a');
    agent = spawn(process.execPath, [bin, 'agent', '-c', config], { stdio: ['ignore', log, log] });
    if (waitReady) {
      try {
        await waitFor('the agent to answer', async () => {
          try {
            await api.call('GET', '/healthz');
            return true;
          } catch {
            return false;
          }
        }, 90_000);
      } catch (err) {
        // Never leave a half-started agent behind: it would outlive the test and hold the runner.
        await agentKill('SIGKILL');
        throw new Error(`${(err as Error).message}; agent log:\n${readFileSync(join(dir, 'agent.log'), 'utf8').slice(-3000)}`);
      }
    }
  };
  const agentKill = async (signal: NodeJS.Signals) => {
    const p = agent;
    if (!p || p.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      p.once('exit', () => resolve());
      p.kill(signal);
    });
    agent = undefined;
  };

  before(async () => {
    // A runner timeout or a killed run skips the after hook: its workloads would stand in this run's way.
    await earlierRunsSweep({ aliasPrefix: 'kitnet:crash/', netnsPrefix: 'kitnet-cr-', pinPrefix: 'kitnet-crash-' });
    console.log(`crash test seed ${seed} (KITNET_CRASH_SEED to replay), ${rounds} rounds`);
    writeFileSync(
      config,
      [
        `stateDir: ${stateDir}`,
        `bpfPinRoot: ${pinRoot}`,
        'logLevel: info',
        'nodeName: crash',
        `api: { socket: ${socket} }`,
        "ipam: { ipv4Pool: '10.206.0.0/16', ipv6Pool: 'fd00:206::/64' }",
        'datapath: { mode: veth }',
        '',
      ].join('\n'),
    );
    for (const n of names) {
      await netnsAdd(netnsOf(n));
      known.set(n, undefined);
    }
  });

  after(async () => {
    await agentKill('SIGKILL');
    for (const l of await links()) if (l.ifalias?.startsWith('kitnet:crash/')) await run('ip', ['link', 'del', l.ifname]).catch(() => undefined);
    for (const n of names) await netnsDel(netnsOf(n));
    await datapathUnpinAll(pinRoot).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  const opRun = async (op: Op): Promise<boolean> => {
    try {
      if (op.kind === 'add') {
        await api.call<Workload>('POST', '/v1/workloads', { name: op.name, namespace: 'crash', labels: op.labels, netns: `/var/run/netns/${netnsOf(op.name)}` });
      } else if (op.kind === 'rm') {
        await api.call('DELETE', `/v1/workloads/crash/${op.name}`);
      } else {
        await api.call('PATCH', `/v1/workloads/crash/${op.name}`, { labels: op.labels });
      }
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.statusCode < 500) throw new Error(`${op.kind} ${op.name}: unexpected ${err.statusCode} ${err.message}`);
      return false; // connection cut by the kill, or the agent failed mid-way
    }
  };

  for (let round = 1; round <= rounds; round++) {
    test(`round ${round}: kill during concurrent changes, restart, verify`, async () => {
      await agentStart();
      // One operation per workload per round keeps every outcome independent.
      const ops: Op[] = names.map((name) => {
        const present = known.get(name) !== undefined;
        const labels = { app: ['web', 'db', 'cache'][Math.floor(random() * 3)]!, round: String(round) };
        if (!present) return { kind: 'add', name, labels };
        return random() < 0.5 ? { kind: 'rm', name } : { kind: 'label', name, labels };
      });
      const results = ops.map((op) => opRun(op).then((acked) => ({ op, acked })));
      await new Promise((r) => setTimeout(r, 50 + random() * 1500));
      await agentKill('SIGKILL');
      const outcome = await Promise.all(results);

      // Restart; sometimes kill it again while it is still restoring, then restart for good.
      if (random() < 0.3) {
        await agentStart(false);
        await new Promise((r) => setTimeout(r, random() * 800));
        await agentKill('SIGKILL');
      }
      await agentStart();
      const present = new Map((await api.call<Workload[]>('GET', '/v1/workloads')).map((w) => [w.name, w]));
      for (const { op, acked } of outcome) {
        const w = present.get(op.name);
        if (acked) {
          if (op.kind === 'rm') assert.equal(w, undefined, `acknowledged removal of ${op.name} undone`);
          else assert.deepEqual(w?.labels, op.labels, `acknowledged ${op.kind} of ${op.name} lost`);
        } else if (w && op.kind !== 'rm') {
          // Unacknowledged: either the old or the new state, nothing in between.
          const before = known.get(op.name);
          assert.ok(
            JSON.stringify(w.labels) === JSON.stringify(op.labels) || JSON.stringify(w.labels) === JSON.stringify(before),
            `${op.name}: labels ${JSON.stringify(w.labels)} are neither the old nor the new ones`,
          );
        }
        known.set(op.name, w?.labels);
      }
      for (const w of present.values()) assert.equal(w.state, 'ready', `${w.name} is ${w.state}: ${w.error}`);
      await agentKill('SIGTERM');
      const problems = await storeKernelDiff({
        dbPath: join(stateDir, 'kitnet.db'),
        pinRoot,
        aliasPrefix: 'kitnet:crash/',
        poolPrefix4: '10.206.',
        poolPrefix6: 'fd00:206:',
      });
      assert.deepEqual(problems, [], `store and kernel differ (seed ${seed}, round ${round})`);
    });
  }
});

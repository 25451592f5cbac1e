// The README's main command, run as a user runs it (`kitnet demo`, through bin/kitnet.js): it shows a
// `kind: vm` workload next to the netns ones, applies an identity policy while the traffic runs so that
// denied flows appear, traces one of them, and serves the service map read-only; Ctrl-C removes
// everything it made. The demo's names are fixed (kitnet-demo-*, /sys/fs/bpf/kitnet-demo): it is one
// per host, like the root suite.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { after, test } from 'node:test';
import { KITNET_BIN } from '../helpers/agent-process.js';
import { run, waitFor } from '../helpers/sys.js';

const PIN_ROOT = '/sys/fs/bpf/kitnet-demo';
const NAMESPACES = ['kitnet-demo-frontend', 'kitnet-demo-backend', 'kitnet-vm-shop-db'];

let child: ChildProcess | undefined;
let out = '';

async function exited(c: ChildProcess, timeoutMs: number): Promise<number | null> {
  if (c.exitCode !== null || c.signalCode !== null) return c.exitCode;
  return waitFor('the demo to exit', async () => (c.exitCode !== null || c.signalCode !== null ? { code: c.exitCode } : undefined), timeoutMs).then((r) => r.code);
}

after(async () => {
  if (child && child.exitCode === null && child.signalCode === null) {
    child.kill('SIGINT');
    await exited(child, 60_000).catch(() => child!.kill('SIGKILL'));
  }
  for (const n of NAMESPACES) await run('ip', ['netns', 'del', n]).catch(() => undefined);
  await run('rm', ['-rf', PIN_ROOT]).catch(() => undefined);
});

test('a bad KITNET_DEMO_UI_PORT is refused by name before the demo makes anything', async () => {
  for (const bad of ['abc', '70000', '-1', '80 81']) {
    const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const c = spawn(process.execPath, [KITNET_BIN, 'demo', '--duration', '1'], { env: { ...process.env, KITNET_DEMO_UI_PORT: bad }, stdio: ['ignore', 'pipe', 'pipe'] });
      let o = '';
      c.stdout.on('data', (d: Buffer) => (o += d.toString()));
      c.stderr.on('data', (d: Buffer) => (o += d.toString()));
      c.on('exit', (code) => resolve({ code, out: o }));
    });
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /KITNET_DEMO_UI_PORT: ".*" is not a port number/);
    assert.doesNotMatch(r.out, /starting the kitnet agent/);
  }
  const left = (await run('ip', ['netns', 'ls'])).split('\n').filter((l) => NAMESPACES.some((n) => l.startsWith(`${n} `) || l === n));
  assert.deepEqual(left, []);
});

test('kitnet demo: a VM, a policy applied while traffic runs, denied flows, a trace, the service map; Ctrl-C cleans up', { timeout: 240_000 }, async () => {
  child = spawn(process.execPath, [KITNET_BIN, 'demo', '--duration', '200'], {
    env: { ...process.env, NO_COLOR: '1', KITNET_DEMO_UI_PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  const seen = (re: RegExp, what: string, timeoutMs = 90_000) =>
    waitFor(what, async () => (child!.exitCode !== null ? assert.fail(`the demo exited early:\n${out}`) : re.exec(out) ?? undefined), timeoutMs).catch((err: Error) =>
      assert.fail(`${err.message}\noutput so far:\n${out.slice(-4000)}`),
    );

  await seen(/registered netns shop\/frontend: identity \d+/, 'frontend registered');
  await seen(/registered vm shop\/db: identity \d+, 10\.242\.0\.\d+/, 'the VM registered');
  await seen(/VM shop\/db: namespace \/var\/run\/netns\/kitnet-vm-shop-db, tap tap0 on bridge br0/, 'the VM hypervisor facts');

  const url = (await seen(/service map: (http:\/\/127\.0\.0\.1:\d+\/ui)/, 'the service map address'))[1]!;
  const page = await fetch(url);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<html/i);
  const workloads = (await (await fetch(new URL('/v1/workloads', url))).json()) as Array<{ name: string; kind: string }>;
  assert.deepEqual(workloads.map((w) => `${w.kind}:${w.name}`).sort(), ['netns:backend', 'netns:frontend', 'vm:db']);
  // The page's listener is for looking only: a change through it is refused and changes nothing.
  const write = await fetch(new URL('/v1/workloads/shop/frontend', url), { method: 'DELETE' });
  assert.equal(write.status, 405);
  const put = await fetch(new URL('/v1/policies', url), { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '[]' });
  assert.equal(put.status, 405);

  // Flows pass before the policy, and after it the denied ones appear while HTTP keeps flowing.
  await seen(/shop\/frontend:\d+ \(ID:\d+\) -> shop\/backend:8080 \(ID:\d+\) to-endpoint FORWARDED/, 'HTTP flows');
  const applied = (await seen(/applied policies: [^\n]*\n/, 'the policy applied')).index!;
  const afterPolicy = () => out.slice(applied);
  await waitFor('a denied connection to the VM', async () => /shop\/frontend:\d+ \(ID:\d+\) -> shop\/db:5432 \(ID:\d+\) to-endpoint DROPPED \(POLICY_DENIED\)/.test(afterPolicy()), 60_000);
  await waitFor('a denied ping to backend', async () => /shop\/frontend \(ID:\d+\) -> shop\/backend \(ID:\d+\) to-endpoint DROPPED \(POLICY_DENIED\)/.test(afterPolicy()), 60_000);
  await waitFor('HTTP still allowed', async () => /-> shop\/backend:8080 \(ID:\d+\) to-endpoint FORWARDED/.test(afterPolicy()), 60_000);
  await seen(/policy trace --from shop\/frontend --to shop\/(db|backend) --port \d+\/TCP\n\s+verdict: DENIED/, 'the trace of a denied flow');

  child.kill('SIGINT');
  assert.equal(await exited(child, 60_000), 0, out.slice(-2000));
  assert.match(out, /done: workloads, namespaces \(the VM's too\), devices and pins removed/);
  const left = (await run('ip', ['netns', 'ls'])).split('\n').filter((l) => NAMESPACES.some((n) => l.startsWith(`${n} `) || l === n));
  assert.deepEqual(left, []);
  assert.equal(existsSync(PIN_ROOT), false);
});

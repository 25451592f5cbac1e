import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { daemonRun } from '../../main/daemon.js';
import { ApiClient, type ApiError } from '../../common/api-client.js';
import type { Workload } from '../../common/schemas/workload.js';
import { tokenGenerate, tokenHash } from '../../api/security.js';
import { datapathUnpinAll } from '../../bpf/index.js';
import { AgentFixture } from '../helpers/fixture.js';
import { links, ping, run, status, uniq, waitFor } from '../helpers/sys.js';

const execFileP = promisify(execFile);

/** `ip -j route` (v4 and v6) of the namespace at a path, as comparable text. */
async function routesAt(netnsPath: string): Promise<string[]> {
  const out: string[] = [];
  for (const family of ['-4', '-6']) {
    const routes = JSON.parse(await run('nsenter', [`--net=${netnsPath}`, 'ip', '-j', family, 'route', 'show'])) as Array<Record<string, unknown>>;
    for (const r of routes) out.push(`${family} ${String(r.dst)} via ${String(r.gateway ?? '-')} dev ${String(r.dev ?? '-')}`);
  }
  return out.sort();
}

const defaultRoutes = (routes: string[]) => routes.filter((r) => / default /.test(r));

/**
 * Issue #12 item 4: a workload could be planted in any network namespace. Through a real agent and
 * its TLS API with a namespace-scoped register token: another tenant's namespace (the token moved the
 * victim's default route to its own interface), a namespace with interfaces and routes kitnet did not
 * make, token path/tap patterns, a tap another workload owns.
 */
describe('where a workload may be registered (root, TLS API with tokens)', { timeout: 180_000 }, () => {
  const fx = new AgentFixture({ tag: 'regns', ipv4Pool: '10.232.0.0/16', ipv6Pool: 'fd00:232::/64', namespaces: ['victim', 'evil', 'ops'] });
  const port = 20_000 + Math.floor(Math.random() * 20_000);
  const cert = join(fx.dir, 'cert.pem');
  const key = join(fx.dir, 'key.pem');
  const secrets = { evil: tokenGenerate(), tenant: tokenGenerate(), admin: tokenGenerate() };
  const ns: Record<string, string> = {};
  const path = (n: string) => `/var/run/netns/${ns[n]}`;
  const tapName = `kt${uniq()}`.slice(0, 15);
  const children: ChildProcess[] = [];
  let victim: Workload;

  /** POST /v1/workloads over TLS with a bearer token: status and body. */
  const tokenRegister = (secret: string, body: Record<string, unknown>) =>
    new Promise<{ status: number; body: { code?: string; message?: string } & Partial<Workload> }>((done, fail) => {
      const data = JSON.stringify(body);
      const req = httpsRequest({
        host: '127.0.0.1', port, path: '/v1/workloads', method: 'POST', ca: readFileSync(cert),
        headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) },
      }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => done({ status: res.statusCode ?? 0, body: JSON.parse(text || '{}') }));
      });
      req.on('error', fail);
      req.end(data);
    });
  const expectRefused = (r: Awaited<ReturnType<typeof tokenRegister>>, status: number, code: string, why: RegExp) => {
    assert.equal(r.status, status, JSON.stringify(r.body));
    assert.equal(r.body.code, code, r.body.message);
    assert.match(r.body.message ?? '', why);
  };

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await fx.cleanup();
    await status('ip', ['link', 'del', tapName]);
  });
  before(async () => {
    for (const n of ['victim', 'foreign', 'foreignNoRoute', 'tenantA', 'tenantB']) ns[n] = await fx.netns(n);
    await execFileP('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1']);
    const tokensFile = join(fx.dir, 'tokens.yaml');
    writeFileSync(tokensFile, [
      `- {name: evil, secretSha256: ${tokenHash(secrets.evil)}, scopes: [register, read], namespaces: [evil]}`,
      `- {name: tenant-a, secretSha256: ${tokenHash(secrets.tenant)}, scopes: [register], namespaces: [evil], netns: ["/var/run/netns/${ns.tenantA}"], taps: ["${tapName}"]}`,
      `- {name: ops, secretSha256: ${tokenHash(secrets.admin)}, scopes: [admin]}`,
    ].join('\n') + '\n', { mode: 0o600 });
    const overrides = { ...fx.overrides, api: { ...fx.overrides.api, tcp: { host: '127.0.0.1', port, tls: { cert, key }, tokensFile } } };
    fx.daemon = await daemonRun({ overrides });
    victim = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'victim', namespace: 'victim', labels: { app: 'victim' }, netns: path('victim') });
    // A namespace with an interface and a default route kitnet did not make, and one with only the interface.
    for (const n of ['foreign', 'foreignNoRoute']) {
      await run('ip', ['-n', ns[n]!, 'link', 'add', 'x0', 'type', 'veth', 'peer', 'name', 'x1']);
      await run('ip', ['-n', ns[n]!, 'link', 'set', 'x0', 'up']);
      await run('ip', ['-n', ns[n]!, 'link', 'set', 'x1', 'up']);
    }
    await run('ip', ['-n', ns.foreign!, 'addr', 'add', '192.0.2.10/24', 'dev', 'x0']);
    await run('ip', ['-n', ns.foreign!, 'route', 'add', 'default', 'via', '192.0.2.1']);
    await run('ip', ['tuntap', 'add', 'dev', tapName, 'mode', 'tap']);
    await run('ip', ['link', 'set', tapName, 'up']);
  });

  test("a register token cannot move another tenant's default route: 409 naming the workload, the victim's routes stay", async () => {
    const before = await routesAt(path('victim'));
    assert.deepEqual(defaultRoutes(before), ['-4 default via 169.254.1.1 dev eth0', '-6 default via fe80::1 dev eth0']);
    const r = await tokenRegister(secrets.evil, { name: 'intruder', namespace: 'evil', netns: path('victim'), interface: 'eth1' });
    expectRefused(r, 409, 'AGENT_ERR_WORKLOAD_NETNS_IN_USE', /already used by workload victim\/victim/);
    assert.deepEqual(await routesAt(path('victim')), before, "the victim's routes are untouched");
    assert.deepEqual((await links(ns.victim)).map((l) => l.ifname).sort(), ['eth0', 'lo']);
    assert.equal((await fx.api.call<Workload>('GET', '/v1/workloads/victim/victim')).state, 'ready');
  });

  test('the same namespace by another path (/proc/PID/ns/net) is the same namespace: 409', async () => {
    const sleeper = spawn('ip', ['netns', 'exec', ns.victim!, 'sleep', '120'], { stdio: 'ignore' });
    children.push(sleeper);
    const inode = (await run('stat', ['-L', '-c', '%i', path('victim')])).trim();
    const pid = sleeper.pid!; // ip netns exec enters the namespace and execs sleep: same process
    await waitFor('the sleeper inside the victim namespace', async () => (await run('readlink', [`/proc/${pid}/ns/net`]).catch(() => '')).trim() === `net:[${inode}]`);
    const r = await tokenRegister(secrets.evil, { name: 'intruder', namespace: 'evil', netns: `/proc/${pid}/ns/net`, interface: 'eth1' });
    expectRefused(r, 409, 'AGENT_ERR_WORKLOAD_NETNS_IN_USE', /victim\/victim/);
    sleeper.kill('SIGKILL');
  });

  test('a namespace with interfaces kitnet did not make: 403 for a register token, naming them', async () => {
    const before = await routesAt(path('foreign'));
    expectRefused(await tokenRegister(secrets.evil, { name: 'w', namespace: 'evil', netns: path('foreign') }), 403, 'AGENT_ERR_WORKLOAD_NETNS_FOREIGN', /interfaces kitnet did not make \(.*x0 \(veth\).*\); only an admin/);
    expectRefused(await tokenRegister(secrets.evil, { name: 'w', namespace: 'evil', netns: path('foreignNoRoute') }), 403, 'AGENT_ERR_WORKLOAD_NETNS_FOREIGN', /x0/);
    assert.deepEqual(await routesAt(path('foreign')), before);
  });

  test('an admin may use such a namespace, but never over a default route kitnet did not make (409, nothing left)', async () => {
    const before = await routesAt(path('foreign'));
    const hostLinks = (await fx.ownLinks()).length;
    await assert.rejects(fx.api.call('POST', '/v1/workloads', { name: 'w', namespace: 'ops', netns: path('foreign') }), (e: ApiError) => {
      assert.equal(e.statusCode, 409, e.message);
      assert.equal(e.code, 'AGENT_ERR_WORKLOAD_NETNS_ROUTES');
      assert.match(e.message, /already has a default route \(default via 192\.0\.2\.1 dev x0\)/);
      return true;
    });
    expectRefused(await tokenRegister(secrets.admin, { name: 'w', namespace: 'ops', netns: path('foreign') }), 409, 'AGENT_ERR_WORKLOAD_NETNS_ROUTES', /default via 192\.0\.2\.1/);
    assert.deepEqual(await routesAt(path('foreign')), before);
    assert.deepEqual((await links(ns.foreign)).map((l) => l.ifname).sort(), ['lo', 'x0', 'x1'], 'no peer left behind');
    assert.equal((await fx.ownLinks()).length, hostLinks, 'no host link left behind');
    // Only an interface, no default route: an admin token may.
    const beforeNoRoute = await routesAt(path('foreignNoRoute'));
    const w = await tokenRegister(secrets.admin, { name: 'w2', namespace: 'ops', netns: path('foreignNoRoute') });
    assert.equal(w.status, 201, JSON.stringify(w.body));
    assert.deepEqual(defaultRoutes(await routesAt(path('foreignNoRoute'))), ['-4 default via 169.254.1.1 dev eth0', '-6 default via fe80::1 dev eth0']);
    await fx.api.call('DELETE', '/v1/workloads/ops/w2');
    assert.deepEqual(await routesAt(path('foreignNoRoute')), beforeNoRoute, 'removal takes only what kitnet made');
    assert.deepEqual((await links(ns.foreignNoRoute)).map((l) => l.ifname).sort(), ['lo', 'x0', 'x1']);
  });

  test('token patterns: only matching netns paths and taps; a tap another workload owns is a 409', async () => {
    expectRefused(await tokenRegister(secrets.tenant, { name: 'w', namespace: 'evil', netns: path('tenantB') }), 403, 'AGENT_ERR_API_FORBIDDEN', /may not use netns .*matches none of/);
    expectRefused(await tokenRegister(secrets.evil, { name: 't', namespace: 'evil', kind: 'tap', device: tapName, mac: '52:54:00:aa:00:01' }), 403, 'AGENT_ERR_API_FORBIDDEN', /may not adopt tap devices/);
    const ok = await tokenRegister(secrets.tenant, { name: 'w', namespace: 'evil', netns: path('tenantA') });
    assert.equal(ok.status, 201, JSON.stringify(ok.body));
    await fx.api.call('POST', '/v1/workloads', { name: 'vm-tap', namespace: 'ops', kind: 'tap', device: tapName, mac: '52:54:00:aa:00:02' });
    expectRefused(await tokenRegister(secrets.tenant, { name: 't', namespace: 'evil', kind: 'tap', device: tapName, mac: '52:54:00:aa:00:01' }), 409, 'AGENT_ERR_WORKLOAD_DEVICE_IN_USE', /ops\/vm-tap/);
    assert.ok(await ping(ns.victim!, victim.ipv4), 'the victim still reaches its own address');
  });
});

/**
 * The host's namespace and the agent's own. Run with a real agent, but sandboxed so that a failure
 * (before the fix: kitnet replaced the default routes there, and removal left none) cannot touch this
 * machine: `unshare --net --pid --mount-proc` makes a namespace whose PID 1 is a shell in network
 * namespace H (with its own default routes, standing for the host's), and the agent runs in a second
 * namespace A (with default routes too) below it. /proc/1/ns/net inside is H.
 */
describe("the host's and the agent's own network namespaces (root, sandboxed agent)", { timeout: 120_000 }, () => {
  const fx = new AgentFixture({ tag: 'regsb', ipv4Pool: '10.233.0.0/16', ipv6Pool: 'fd00:233::/64', namespaces: ['sb'] });
  let sandbox: ChildProcess | undefined;
  let pid1 = 0;
  let agentPid = 0;
  const api = new ApiClient({ socket: fx.socket });
  const setup = (dev: string, net: string) =>
    `ip link set lo up; ip link add ${dev}0 type veth peer name ${dev}1; ip link set ${dev}0 up; ip link set ${dev}1 up; ` +
    `ip addr add ${net}.10/24 dev ${dev}0; ip route add default via ${net}.1; ip -6 route add default via fe80::1 dev ${dev}0`;

  after(async () => {
    if (agentPid) await status('kill', ['-TERM', String(agentPid)]);
    if (sandbox && sandbox.exitCode === null) {
      await waitFor('the sandboxed agent to stop', async () => sandbox!.exitCode !== null, 15_000).catch(() => sandbox!.kill('SIGKILL'));
    }
    await datapathUnpinAll(fx.pinRoot).catch(() => undefined);
    await fx.cleanup();
  });
  before(async () => {
    const configFile = join(fx.dir, 'overrides.json');
    writeFileSync(configFile, JSON.stringify({ ...fx.overrides, logLevel: 'error' }));
    const runner = new URL('../helpers/sandboxed-agent.js', import.meta.url).pathname;
    const inner = `${setup('a', '198.51.100')}; exec ${process.execPath} ${runner} ${configFile}`;
    // PID 1 (sh) stays in H; the agent goes into a namespace of its own below it
    sandbox = spawn('unshare', ['--net', '--pid', '--fork', '--mount-proc', '--kill-child', '--', 'sh', '-c',
      `${setup('h', '192.0.2')}; unshare --net -- sh -c '${inner}'; echo "agent exited $?"`], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    sandbox.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    await waitFor('the sandboxed agent', async () => out.includes('ready') || (sandbox!.exitCode !== null && assert.fail(`sandbox exited: ${out}`)), 60_000);
    const kids = async (pid: number) => (await run('pgrep', ['-P', String(pid)]).catch(() => '')).trim().split('\n').filter(Boolean).map(Number);
    pid1 = (await kids(sandbox.pid!))[0]!;
    agentPid = (await kids(pid1))[0]!;
    assert.ok(pid1 > 0 && agentPid > 0, `sandbox pids ${pid1} ${agentPid}`);
    assert.notEqual((await run('readlink', [`/proc/${pid1}/ns/net`])).trim(), (await run('readlink', ['/proc/self/ns/net'])).trim(), 'H is not this machine\'s namespace');
  });

  for (const [what, netns, code, why] of [
    ["PID 1's namespace (/proc/1/ns/net)", '/proc/1/ns/net', 'AGENT_ERR_WORKLOAD_NETNS_HOST', /PID 1's network namespace \(the host's\)/],
    ["the agent's own namespace (/proc/self/ns/net)", '/proc/self/ns/net', 'AGENT_ERR_WORKLOAD_NETNS_HOST', /the agent's own network namespace/],
  ] as const) {
    test(`${what} is refused with 422 naming the reason; its routes stay`, async () => {
      const h = `/proc/${pid1}/ns/net`;
      const a = `/proc/${agentPid}/ns/net`;
      const before = { h: await routesAt(h), a: await routesAt(a) };
      assert.equal(defaultRoutes(before.h).length, 2);
      const outcome = await api.call<Workload>('POST', '/v1/workloads', { name: 'planted', namespace: 'sb', netns }).then((w) => w, (e: ApiError) => e);
      if (!(outcome instanceof Error)) {
        const after = { h: await routesAt(h), a: await routesAt(a) };
        await api.call('DELETE', '/v1/workloads/sb/planted').catch(() => undefined);
        const removed = { h: await routesAt(h), a: await routesAt(a) };
        assert.fail(`registered into ${netns}: default routes there became ${JSON.stringify(defaultRoutes(netns === '/proc/1/ns/net' ? after.h : after.a))}, ` +
          `after removal ${JSON.stringify(defaultRoutes(netns === '/proc/1/ns/net' ? removed.h : removed.a))} (were ${JSON.stringify(defaultRoutes(netns === '/proc/1/ns/net' ? before.h : before.a))})`);
      }
      assert.equal(outcome.statusCode, 422, outcome.message);
      assert.equal(outcome.code, code);
      assert.match(outcome.message, why);
      assert.deepEqual({ h: await routesAt(h), a: await routesAt(a) }, before);
    });
  }
});

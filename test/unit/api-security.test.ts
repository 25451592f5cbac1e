import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { timingSafeEqual } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { pino, type Logger } from 'pino';
import { ConfigError, configParse } from '../../agent/config.js';
import { daemonRun } from '../../main/daemon.js';
import type { AgentApi } from '../../api/agent-api.js';
import { globMatcher, HEALTHZ_MIN_MAX, LOG_REDACT, routeAccess, TokenSet, tokenGenerate, tokenHash, tokensLoad, urlRedact, type SecurityOptions } from '../../api/security.js';
import { serverBuild } from '../../api/server.js';
import { KitnetError } from '../../common/errors.js';

/** An agent that records which calls reached it: a denied request must never get there. */
function agentStub() {
  const calls: string[] = [];
  const workload = (namespace: string, name: string) => ({
    name,
    namespace,
    kind: 'netns',
    labels: {},
    netns: '/x',
    ports: [],
    mode: 'veth',
    requestedMode: 'auto',
    state: 'ready' as const,
    error: null,
    retries: 0,
    nextRetryAt: null,
    endpointId: 1,
    interfaces: { host: { name: 'kn0', ifindex: null, mac: null }, workload: { name: 'eth0', ifindex: null, mac: null } },
    gateway: { ipv4: '169.254.1.1', ipv6: 'fe80::1' },
    ipv4: '10.0.0.2',
    ipv6: 'fd00::2',
    identity: 256,
    identityLabels: [],
    createdAt: '',
    updatedAt: '',
  });
  const agent = {
    workloadRegister: async (input: { namespace: string; name: string }) => (calls.push(`register ${input.namespace}/${input.name}`), workload(input.namespace, input.name)),
    workloadList: () => (calls.push('list'), []),
    workloadGet: (ns: string, name: string) => {
      throw new KitnetError('AGENT_ERR_WORKLOAD_NOT_FOUND', `workload ${ns}/${name} is not registered`);
    },
    workloadRemove: async (ns: string, name: string) => (calls.push(`remove ${ns}/${name}`), workload(ns, name)),
    workloadLabelsSet: async (ns: string, name: string) => (calls.push(`label ${ns}/${name}`), workload(ns, name)),
    workloadPolicy: () => {
      throw new KitnetError('AGENT_ERR_WORKLOAD_NOT_FOUND', 'stub');
    },
    identityList: () => [],
    status: async () => {
      throw new Error('unused');
    },
    flowsSnapshot: () => ({ read: () => [] }),
    flowsFollow: () => () => undefined,
    flowsLost: (n: number) => ({ lost_events: { num_events_lost: n }, node_name: 'x', time: '' }),
    namespaceList: () => [],
    namespacePut: async (name: string, labels: Record<string, string>) => (calls.push(`namespace ${name}`), { name, labels, createdAt: '', updatedAt: '' }),
    policyList: () => [],
    policiesApply: async (body: unknown) => {
      calls.push(`apply ${typeof body === 'string' ? body.length : 'json'}`);
      return { applied: [{ kind: 'CiliumNetworkPolicy', namespace: 'shop', name: 'p1', action: 'created' as const }], stats: { endpoints: 0, entries: 0, upserts: 0, deletes: 0, cidrIdentities: 0, ms: 0 } };
    },
    policyDelete: async (kind: string, namespace: string, name: string) => (calls.push(`delete ${kind}/${namespace}/${name}`), { kind, namespace, name, document: {}, createdAt: '', updatedAt: '' }),
    policyTrace: () => ({ verdict: 'ALLOWED', text: '', result: {} }),
  } as unknown as AgentApi;
  return { agent, calls };
}

/** A pino destination kept in memory. */
function memoryLog() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      cb();
    },
  });
  return { lines, stream };
}

const SECRETS = { reader: tokenGenerate(), shop: tokenGenerate(), admin: tokenGenerate(), plain: 'plaintext-secret-0123456789', tenant: tokenGenerate() };
const TOKENS = new TokenSet([
  { name: 'reader', secretSha256: tokenHash(SECRETS.reader), scopes: ['read'] },
  { name: 'shop-ci', secretSha256: tokenHash(SECRETS.shop), scopes: ['register'], namespaces: ['shop', 'shop-b'] },
  { name: 'root', secretSha256: tokenHash(SECRETS.admin).toUpperCase(), scopes: ['admin'] },
  { name: 'plain', secret: SECRETS.plain, scopes: ['read', 'register'], namespaces: ['*'] },
  { name: 'tenant-a', secretSha256: tokenHash(SECRETS.tenant), scopes: ['register'], namespaces: ['*'], netns: ['/var/run/netns/tenant-a-*', '/var/run/netns/a?'], taps: ['vnet-a*'] },
]);
const bearer = (s: string) => ({ authorization: `Bearer ${s}` });
const wl = (namespace: string, name = 'w1') => ({ name, namespace, netns: '/var/run/netns/x' });

async function build(security: SecurityOptions, logger: Logger | false = false) {
  const stub = agentStub();
  const app = await serverBuild({ agent: stub.agent, logger, version: 'test', security });
  return { app, calls: stub.calls };
}

describe('tokens', () => {
  test('a bearer header authenticates by hash; missing and unknown tokens are told apart', () => {
    assert.equal((TOKENS.authenticate(`Bearer ${SECRETS.reader}`) as { who: string }).who, 'token:reader');
    assert.equal((TOKENS.authenticate(`bearer  ${SECRETS.admin}`) as { who: string }).who, 'token:root', 'scheme is case-insensitive; upper-case hex hashes work');
    assert.equal((TOKENS.authenticate(`Bearer ${SECRETS.plain}`) as { who: string }).who, 'token:plain');
    assert.equal(TOKENS.authenticate(undefined), 'missing');
    assert.equal(TOKENS.authenticate(''), 'missing');
    for (const bad of ['Bearer', 'Bearer ', `Basic ${SECRETS.reader}`, `Bearer ${SECRETS.reader}x`, `Bearer ${SECRETS.reader.slice(1)}`, `Bearer ${tokenHash(SECRETS.reader)}`, `Bearer a\tb`, `Bearer ${'x'.repeat(5000)}`]) {
      assert.equal(TOKENS.authenticate(bad), 'invalid', bad.slice(0, 40));
    }
  });

  test('authentication compares the presented hash with every token, equal lengths, whichever matches', () => {
    const seen: Array<[number, number]> = [];
    const counting = (a: Buffer, b: Buffer) => (seen.push([a.length, b.length]), timingSafeEqual(a, b));
    const set = new TokenSet(
      [
        { name: 'a', secretSha256: tokenHash(SECRETS.reader), scopes: ['read'] },
        { name: 'b', secretSha256: tokenHash(SECRETS.admin), scopes: ['admin'] },
        { name: 'c', secretSha256: tokenHash(SECRETS.shop), scopes: ['read'] },
      ],
      counting,
    );
    for (const presented of [SECRETS.reader, SECRETS.admin, SECRETS.shop, 'wrong-token', 'x']) {
      seen.length = 0;
      set.authenticate(`Bearer ${presented}`);
      assert.equal(seen.length, 3, `all three tokens compared for ${presented.slice(0, 4)}`);
      assert.ok(seen.every(([a, b]) => a === 32 && b === 32));
    }
  });

  test('tokens files: errors name the key and the entry, never the secret', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kitnet-tokens-'));
    try {
      const file = join(dir, 'tokens.yaml');
      const load = (text: string) => {
        writeFileSync(file, text);
        return tokensLoad(file);
      };
      assert.equal(load(`- {name: a, secretSha256: ${tokenHash('s'.repeat(20))}, scopes: [read]}\n`).size, 1);
      const cases: Array<[string, RegExp]> = [
        ['[]', /api\.tcp\.tokensFile: .*no tokens/],
        ['- {name: a, scopes: [read]}', /tokens\.0\.secretSha256: needs exactly one/],
        [`- {name: a, secret: ${SECRETS.plain}, secretSha256: ${tokenHash('x')}, scopes: [read]}`, /exactly one/],
        [`- {name: a, secret: ${SECRETS.plain}, scopes: [register]}`, /tokens\.0\.namespaces: the register scope needs/],
        [`- {name: a, secret: ${SECRETS.plain}, scopes: [write]}`, /tokens\.0\.scopes\.0/],
        [`- {name: a, secret: ${SECRETS.plain}, scopes: []}`, /tokens\.0\.scopes: needs at least one/],
        [`- {name: "a b", secret: ${SECRETS.plain}, scopes: [read]}`, /tokens\.0\.name/],
        [`- {name: a, secretSha256: abc, scopes: [read]}`, /tokens\.0\.secretSha256: must be the hex SHA-256/],
        [`- {name: a, secret: short, scopes: [read]}`, /tokens\.0\.secret: must be at least 16/],
        [`- {name: a, secret: ${SECRETS.plain}, scopes: [read], extra: 1}`, /tokens\.0/],
        [`- {name: a, secret: ${SECRETS.plain}, scopes: [read]}\n- {name: a, secret: ${SECRETS.plain}x, scopes: [read]}`, /tokens\.1\.name: token name "a" is used twice/],
        [`- {name: a, secret: ${SECRETS.plain}, scopes: [read]}\n- {name: b, secret: ${SECRETS.plain}, scopes: [read]}`, /share one secret/],
        [`- {name: a, secret: "${SECRETS.plain}\n  : [`, /api\.tcp\.tokensFile: .* is not valid YAML/],
        ['name: a', /tokens: /],
      ];
      for (const [text, re] of cases) {
        assert.throws(
          () => load(text),
          (e: Error) => {
            assert.ok(e instanceof ConfigError, `${text}: ${e.name}`);
            assert.match(e.message, re);
            assert.ok(!e.message.includes(SECRETS.plain), `no secret in: ${e.message}`);
            return true;
          },
        );
      }
      assert.throws(() => tokensLoad(join(dir, 'missing.yaml')), /api\.tcp\.tokensFile: cannot read/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('route access: reads are read, workload changes register, anything else admin (fails closed)', () => {
    assert.equal(routeAccess('GET', '/healthz').scope, 'public');
    for (const u of ['/v1/workloads', '/v1/flows', '/v1/status', '/v1/identities', '/v1/policies', '/v1/namespaces', '/metrics', '/v1/workloads/:namespace/:name/policy', undefined]) {
      assert.equal(routeAccess('GET', u).scope, 'read', String(u));
    }
    assert.equal(routeAccess('POST', '/v1/policy/trace').scope, 'read');
    assert.equal(routeAccess('POST', '/v1/workloads').scope, 'register');
    assert.equal(routeAccess('DELETE', '/v1/workloads/:namespace/:name').scope, 'register');
    assert.equal(routeAccess('PATCH', '/v1/workloads/:namespace/:name').scope, 'register');
    for (const [m, u] of [['PUT', '/v1/policies'], ['DELETE', '/v1/policies/:kind/:namespace/:name'], ['PUT', '/v1/namespaces/:name'], ['POST', '/v1/reload'], ['POST', undefined], ['DELETE', '/healthz']] as const) {
      assert.equal(routeAccess(m, u).scope, 'admin', `${m} ${u}`);
    }
  });
});

describe('TCP API authorization (fastify inject)', () => {
  let app: FastifyInstance;
  let calls: string[];
  before(async () => {
    ({ app, calls } = await build({ tokens: TOKENS }));
  });
  after(() => app.close());

  const call = (method: string, url: string, headers: Record<string, string> = {}, payload?: unknown) =>
    app.inject({ method: method as 'GET', url, headers, ...(payload === undefined ? {} : { payload: payload as string }) });

  test('401 without a token or with an unknown one, with WWW-Authenticate; the agent is never reached', async () => {
    calls.length = 0;
    for (const headers of [{}, bearer('nope-nope-nope'), { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` }, bearer(tokenHash(SECRETS.admin))]) {
      for (const [m, u, body] of [['GET', '/v1/workloads'], ['POST', '/v1/workloads', wl('shop')], ['PUT', '/v1/policies', '{}'], ['GET', '/v1/nothing-here'], ['DELETE', '/v1/workloads/shop/w1']] as const) {
        const res = await call(m, u, headers, body);
        assert.equal(res.statusCode, 401, `${m} ${u}: ${res.body}`);
        assert.equal(res.json().code, 'AGENT_ERR_API_UNAUTHORIZED');
        assert.match(String(res.headers['www-authenticate']), /^Bearer/);
      }
    }
    assert.deepEqual(calls, []);
  });

  test('/healthz answers without a token', async () => {
    assert.equal((await call('GET', '/healthz')).statusCode, 200);
  });

  test('read: GETs and trace, nothing that changes state', async () => {
    calls.length = 0;
    for (const u of ['/v1/workloads', '/v1/identities', '/v1/policies', '/v1/namespaces']) assert.equal((await call('GET', u, bearer(SECRETS.reader))).statusCode, 200, u);
    assert.equal((await call('GET', '/v1/nothing', bearer(SECRETS.reader))).statusCode, 404, 'an authenticated client gets a 404 for an unknown path');
    for (const [m, u, body] of [
      ['POST', '/v1/workloads', wl('shop')],
      ['DELETE', '/v1/workloads/shop/w1'],
      ['PATCH', '/v1/workloads/shop/w1', { labels: {} }],
      ['PUT', '/v1/policies', '[]'],
      ['DELETE', '/v1/policies/cnp/shop/p'],
      ['PUT', '/v1/namespaces/shop', { labels: {} }],
    ] as const) {
      const res = await call(m, u, bearer(SECRETS.reader), body);
      assert.equal(res.statusCode, 403, `${m} ${u}`);
      assert.equal(res.json().code, 'AGENT_ERR_API_FORBIDDEN');
      assert.match(res.json().message, /lacks the (register|admin) scope/);
    }
    assert.deepEqual(calls, ['list']);
  });

  test('register: workloads only in the token namespaces; no reads without read; no policies', async () => {
    calls.length = 0;
    assert.equal((await call('POST', '/v1/workloads', bearer(SECRETS.shop), wl('shop'))).statusCode, 201);
    assert.equal((await call('POST', '/v1/workloads', bearer(SECRETS.shop), wl('shop-b'))).statusCode, 201);
    assert.equal((await call('PATCH', '/v1/workloads/shop/w1', bearer(SECRETS.shop), { labels: { a: 'b' } })).statusCode, 200);
    assert.equal((await call('DELETE', '/v1/workloads/shop/w1', bearer(SECRETS.shop))).statusCode, 200);
    for (const [m, u, body] of [
      ['POST', '/v1/workloads', wl('other')],
      ['POST', '/v1/workloads', { name: 'w1', netns: '/x' }],
      ['DELETE', '/v1/workloads/other/w1'],
      ['PATCH', '/v1/workloads/default/w1', { labels: {} }],
    ] as const) {
      const res = await call(m, u, bearer(SECRETS.shop), body);
      assert.equal(res.statusCode, 403, `${m} ${u} ${JSON.stringify(body)}`);
      assert.match(res.json().message, /may not change workloads in namespace "(other|default)"/);
    }
    assert.equal((await call('GET', '/v1/workloads', bearer(SECRETS.shop))).statusCode, 403, 'register alone does not read');
    assert.equal((await call('PUT', '/v1/policies', bearer(SECRETS.shop), '[]')).statusCode, 403);
    assert.equal((await call('PUT', '/v1/namespaces/shop', bearer(SECRETS.shop), { labels: {} })).statusCode, 403);
    assert.deepEqual(calls, ['register shop/w1', 'register shop-b/w1', 'label shop/w1', 'remove shop/w1']);
    // "*" means every namespace.
    assert.equal((await call('POST', '/v1/workloads', bearer(SECRETS.plain), wl('anything'))).statusCode, 201);
  });

  test('register: netns paths and tap devices only as the token patterns allow', async () => {
    calls.length = 0;
    const reg = (secret: string, body: Record<string, unknown>) => call('POST', '/v1/workloads', bearer(secret), { name: 'w1', namespace: 'shop', ...body });
    const tap = (device: string) => ({ kind: 'tap', device, mac: '52:54:00:00:00:01' });
    for (const body of [{ netns: '/var/run/netns/tenant-a-1' }, { netns: '/var/run/netns/tenant-a-' }, { netns: '/var/run/netns/a1' }, tap('vnet-a7'), { kind: 'vm' }]) {
      assert.equal((await reg(SECRETS.tenant, body)).statusCode, 201, JSON.stringify(body));
    }
    for (const [body, why] of [
      [{ netns: '/var/run/netns/tenant-b-1' }, /may not use netns \/var\/run\/netns\/tenant-b-1: it matches none of \/var\/run\/netns\/tenant-a-\*, \/var\/run\/netns\/a\?/],
      [{ netns: '/run/netns/tenant-a-1' }, /matches none/], // no symlink resolution: the path as written
      [{ netns: '/var/run/netns/a12' }, /matches none/],
      [{ netns: '/proc/1/ns/net' }, /matches none/],
      [{ kind: 'vm', netns: '/var/run/netns/victim' }, /matches none/],
      [tap('vnet-b1'), /may not adopt device "vnet-b1": it matches none of vnet-a\*/],
      [tap('vnet-a1'), /may not adopt tap devices \(it lists no taps patterns\)/],
    ] as const) {
      const secret = (body as { device?: string }).device === 'vnet-a1' ? SECRETS.shop : SECRETS.tenant;
      const res = await reg(secret, body);
      assert.equal(res.statusCode, 403, `${JSON.stringify(body)}: ${res.body}`);
      assert.equal(res.json().code, 'AGENT_ERR_API_FORBIDDEN');
      assert.match(res.json().message, why);
    }
    // "*" never crosses a "/": a pattern cannot be escaped into another directory
    assert.equal((await reg(SECRETS.tenant, { netns: '/var/run/netns/tenant-a-x/../../../../proc/1/ns/net' })).statusCode, 400);
    assert.equal(calls.length, 5);
  });

  test('glob patterns: * and ? never match "/", everything else is literal', () => {
    assert.ok(globMatcher('/var/run/netns/t-*')('/var/run/netns/t-1'));
    assert.ok(!globMatcher('/var/run/netns/t-*')('/var/run/netns/t-1/x'));
    assert.ok(!globMatcher('/var/run/netns/t.*')('/var/run/netns/tx1'), '"." is literal');
    assert.ok(globMatcher('vnet?')('vnet7') && !globMatcher('vnet?')('vnet77'));
    assert.ok(!globMatcher('a+b')('aab') && globMatcher('a+b')('a+b'));
  });

  test('a many-star pattern against a long path a client sends: answered, not backtracked for hours', { timeout: 60_000 }, () => {
    const tenant = globMatcher(`/var/run/netns/${'*a'.repeat(30)}*b`);
    assert.equal(tenant(`/var/run/netns/${'a'.repeat(4000)}`), false);
    assert.equal(tenant(`/var/run/netns/${'a'.repeat(4000)}b`), true);
  });

  test('tokens files: netns and taps patterns are validated', () => {
    const base = { name: 't', secretSha256: 'a'.repeat(64), scopes: ['register'], namespaces: ['x'] };
    assert.throws(() => new TokenSet([{ ...base, netns: ['relative/*'] }] as never), /absolute path pattern/);
    assert.throws(() => new TokenSet([{ ...base, netns: ['/var/run/netns/../*'] }] as never), /plain path/);
    assert.throws(() => new TokenSet([{ ...base, taps: ['vnet/*'] }] as never), /interface name pattern/);
    assert.equal(new TokenSet([{ ...base, netns: ['/var/run/netns/a-*'], taps: ['vnet*'] }] as never).size, 1);
  });

  test('admin: everything', async () => {
    calls.length = 0;
    assert.equal((await call('PUT', '/v1/policies', { ...bearer(SECRETS.admin), 'content-type': 'application/yaml' }, 'kind: x')).statusCode, 200);
    assert.equal((await call('DELETE', '/v1/policies/cnp/shop/p', bearer(SECRETS.admin))).statusCode, 200);
    assert.equal((await call('PUT', '/v1/namespaces/shop', bearer(SECRETS.admin), { labels: {} })).statusCode, 200);
    assert.equal((await call('POST', '/v1/workloads', bearer(SECRETS.admin), wl('kube-system'))).statusCode, 201);
    assert.equal((await call('GET', '/v1/workloads', bearer(SECRETS.admin))).statusCode, 200);
    assert.deepEqual(calls, ['apply 7', 'delete cnp/shop/p', 'namespace shop', 'register kube-system/w1', 'list']);
  });

  test('the unix socket (no tokens) is trusted', async () => {
    const { app: trusted, calls: c } = await build({});
    try {
      assert.equal((await trusted.inject({ method: 'POST', url: '/v1/workloads', payload: wl('any') })).statusCode, 201);
      assert.equal((await trusted.inject({ method: 'DELETE', url: '/v1/policies/cnp/a/b' })).statusCode, 200);
      assert.deepEqual(c, ['register any/w1', 'delete cnp/a/b']);
    } finally {
      await trusted.close();
    }
  });
});

describe('body limits', () => {
  let app: FastifyInstance;
  let calls: string[];
  before(async () => {
    ({ app, calls } = await build({}));
  });
  after(() => app.close());

  test('JSON bodies: 1 MiB; policy documents: 4 MiB (YAML or JSON); 413 with its own code', async () => {
    const big = (n: number) => JSON.stringify({ ...wl('a'), labels: { a: 'x' }, pad: 'x'.repeat(n) });
    let res = await app.inject({ method: 'POST', url: '/v1/workloads', headers: { 'content-type': 'application/json' }, payload: big((1 << 20) + 10) });
    assert.equal(res.statusCode, 413);
    assert.equal(res.json().code, 'AGENT_ERR_API_BODY_TOO_LARGE');
    res = await app.inject({ method: 'POST', url: '/v1/workloads', headers: { 'content-type': 'application/json' }, payload: big((1 << 20) - 200) });
    assert.equal(res.statusCode, 400, 'just under the limit: parsed, then refused by validation');
    calls.length = 0;
    const yaml3 = `# ${'x'.repeat(3 << 20)}\n[]`;
    res = await app.inject({ method: 'PUT', url: '/v1/policies', headers: { 'content-type': 'application/yaml' }, payload: yaml3 });
    assert.equal(res.statusCode, 200, res.body.slice(0, 200));
    res = await app.inject({ method: 'PUT', url: '/v1/policies', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ pad: 'x'.repeat(3 << 20) }) });
    assert.equal(res.statusCode, 200, 'JSON policy documents get 4 MiB too');
    assert.equal(calls.length, 2);
    for (const type of ['application/yaml', 'application/json']) {
      res = await app.inject({ method: 'PUT', url: '/v1/policies', headers: { 'content-type': type }, payload: JSON.stringify({ pad: 'x'.repeat((4 << 20) + 1) }) });
      assert.equal(res.statusCode, 413, type);
      assert.equal(res.json().code, 'AGENT_ERR_API_BODY_TOO_LARGE');
    }
    res = await app.inject({ method: 'POST', url: '/v1/workloads', headers: { 'content-type': 'application/xml' }, payload: '<a/>' });
    assert.equal(res.statusCode, 415);
    assert.equal(res.json().code, 'AGENT_ERR_API_UNSUPPORTED_MEDIA_TYPE');
  });
});

describe('rate limits', () => {
  test('per token on TCP (unknown tokens per address), 429 with Retry-After and its own code', async () => {
    const { app } = await build({ tokens: TOKENS, rateLimit: { max: 3, windowMs: 60_000 } });
    try {
      const get = (headers: Record<string, string>) => app.inject({ method: 'GET', url: '/v1/workloads', headers });
      for (let i = 0; i < 3; i++) assert.equal((await get(bearer(SECRETS.reader))).statusCode, 200);
      const res = await get(bearer(SECRETS.reader));
      assert.equal(res.statusCode, 429);
      assert.equal(res.json().code, 'AGENT_ERR_API_RATE_LIMITED');
      assert.ok(Number(res.headers['retry-after']) > 0);
      assert.equal((await get(bearer(SECRETS.admin))).statusCode, 200, 'another token has its own budget');
      // Guessing tokens is limited too: per address.
      const guesses = [];
      for (let i = 0; i < 5; i++) guesses.push((await get(bearer(`guess-${i}`))).statusCode);
      assert.deepEqual(guesses, [401, 401, 401, 429, 429]);
    } finally {
      await app.close();
    }
  });

  test('one budget for the unix socket', async () => {
    const { app } = await build({ rateLimit: { max: 2, windowMs: 60_000 } });
    try {
      const codes = [];
      for (let i = 0; i < 3; i++) codes.push((await app.inject({ method: 'GET', url: '/v1/workloads' })).statusCode);
      assert.deepEqual(codes, [200, 200, 429]);
    } finally {
      await app.close();
    }
  });

  test('/healthz has buckets of its own: exhausting the unauthenticated one leaves liveness answering', async () => {
    const { app } = await build({ tokens: TOKENS, rateLimit: { max: 3, windowMs: 60_000 } });
    try {
      const guesses = [];
      for (let i = 0; i < 5; i++) guesses.push((await app.inject({ method: 'GET', url: '/v1/workloads', headers: bearer(`guess-${i}`) })).statusCode);
      assert.deepEqual(guesses, [401, 401, 401, 429, 429], 'the address is out of budget');
      const health = [];
      for (let i = 0; i < 5; i++) health.push((await app.inject({ method: 'GET', url: '/healthz', headers: bearer(`guess-${i}`) })).statusCode);
      assert.deepEqual(health, [200, 200, 200, 200, 200]);
      // Its own budget is bounded too (generous: at least HEALTHZ_MIN_MAX a window).
      let n = 5;
      while ((await app.inject({ method: 'GET', url: '/healthz' })).statusCode === 200) n++;
      assert.equal(n, HEALTHZ_MIN_MAX);
    } finally {
      await app.close();
    }
  });

  test('config: generous defaults, configurable, validated with the key', () => {
    const c = configParse({});
    assert.deepEqual(c.api.rateLimit, { enabled: true, windowMs: 60_000, tcpMax: 1200, socketMax: 60_000 });
    assert.equal(configParse({ api: { rateLimit: { tcpMax: 5 } } }).api.rateLimit.tcpMax, 5);
    assert.throws(() => configParse({ api: { rateLimit: { tcpMax: 0 } } }), /api\.rateLimit\.tcpMax/);
    assert.throws(() => configParse({ api: { rateLimit: { burst: 1 } } }), /api\.rateLimit/);
  });
});

describe('audit and redaction', () => {
  test('every change is audited (who, method, route, ref, status), reads are not; no bodies or secrets', async () => {
    const audit: Array<Record<string, unknown>> = [];
    const { app } = await build({ tokens: TOKENS, audit: { info: (o) => audit.push(o) } });
    try {
      const send = (method: string, url: string, headers: Record<string, string>, payload?: unknown) =>
        app.inject({ method: method as 'GET', url, headers, ...(payload === undefined ? {} : { payload: payload as string }) });
      await send('GET', '/v1/workloads', bearer(SECRETS.admin));
      await send('POST', '/v1/policy/trace', bearer(SECRETS.admin), { from: { workload: 'a/b' }, to: { workload: 'a/c' }, port: 80 });
      assert.equal(audit.length, 0, 'reads and traces are no changes');
      await send('POST', '/v1/workloads', bearer(SECRETS.shop), { ...wl('shop', 'web'), labels: { secretlabel: 'topsecretvalue' } });
      await send('POST', '/v1/workloads', bearer(SECRETS.shop), wl('other', 'web'));
      await send('DELETE', '/v1/workloads/shop/web', bearer(SECRETS.reader));
      await send('PUT', '/v1/policies', { ...bearer(SECRETS.admin), 'content-type': 'application/yaml' }, 'kind: CiliumNetworkPolicy');
      await send('DELETE', '/v1/policies/cnp/shop/p1', bearer(SECRETS.admin));
      await send('PUT', '/v1/namespaces/shop', bearer('wrong-token'), { labels: {} });
      assert.deepEqual(
        audit.map(({ who, method, route, ref, status }) => ({ who, method, route, ref, status })),
        [
          { who: 'token:shop-ci', method: 'POST', route: '/v1/workloads', ref: 'shop/web', status: 201 },
          { who: 'token:shop-ci', method: 'POST', route: '/v1/workloads', ref: 'other/web', status: 403 },
          { who: 'token:reader', method: 'DELETE', route: '/v1/workloads/:namespace/:name', ref: 'shop/web', status: 403 },
          { who: 'token:root', method: 'PUT', route: '/v1/policies', ref: ['CiliumNetworkPolicy/shop/p1'], status: 200 },
          { who: 'token:root', method: 'DELETE', route: '/v1/policies/:kind/:namespace/:name', ref: 'cnp/shop/p1', status: 200 },
          { who: 'unauthenticated:127.0.0.1', method: 'PUT', route: '/v1/namespaces/:name', ref: 'shop', status: 401 },
        ],
      );
      assert.ok(audit.every((a) => a.audit === true));
      const text = JSON.stringify(audit);
      for (const s of [...Object.values(SECRETS), 'topsecretvalue', 'wrong-token']) assert.ok(!text.includes(s), s);
    } finally {
      await app.close();
    }
  });

  test('token secrets never reach the log, even at trace level and when headers are logged', async () => {
    const mem = memoryLog();
    const log = pino({ level: 'trace', redact: LOG_REDACT }, mem.stream) as unknown as Logger;
    const { app } = await build({ tokens: TOKENS, audit: log.child({ component: 'audit' }) }, log);
    try {
      for (const s of [SECRETS.admin, SECRETS.reader, 'guessed-secret-value']) {
        await app.inject({ method: 'GET', url: '/v1/workloads', headers: bearer(s) });
        await app.inject({ method: 'POST', url: '/v1/workloads', headers: bearer(s), payload: wl('shop') });
      }
      // Whatever logs a request with its headers, or an error carrying them.
      log.info({ req: { headers: { authorization: `Bearer ${SECRETS.admin}`, cookie: 'c=1' } } }, 'request');
      log.info({ headers: bearer(SECRETS.admin) }, 'headers');
      log.error({ err: { message: 'x', request: { headers: bearer(SECRETS.admin) } } }, 'nested');
      log.info({ authorization: `Bearer ${SECRETS.admin}`, token: SECRETS.admin, secret: SECRETS.admin }, 'flat');
      const text = mem.lines.join('\n');
      assert.ok(mem.lines.length > 10, 'the log saw the requests');
      assert.ok(text.includes('"audit":true'));
      for (const s of [SECRETS.admin, SECRETS.reader, 'guessed-secret-value']) assert.ok(!text.includes(s), `secret ${s.slice(0, 6)} logged`);
      assert.ok(text.includes('[redacted]'));
    } finally {
      await app.close();
    }
  });
});

describe('tokens in the query string', () => {
  test('are redacted from logged URLs, whatever the parameter is called', () => {
    assert.equal(urlRedact('/v1/workloads'), '/v1/workloads');
    assert.equal(urlRedact('/v1/flows?last=5&verdict=DROPPED'), '/v1/flows?last=5&verdict=DROPPED');
    assert.equal(urlRedact('/v1/workloads?token=abc&namespace=x'), '/v1/workloads?token=[redacted]&namespace=x');
    assert.equal(urlRedact('/x?access_token=a&api_key=b&Authorization=c&client_secret=d&a%5Ftoken=e'), '/x?access_token=[redacted]&api_key=[redacted]&Authorization=[redacted]&client_secret=[redacted]&a%5Ftoken=[redacted]');
  });

  test('never authenticate, and never reach the log, even at trace level', async () => {
    const mem = memoryLog();
    const log = pino({ level: 'trace', redact: LOG_REDACT }, mem.stream) as unknown as Logger;
    const audit: Array<Record<string, unknown>> = [];
    const { app, calls } = await build({ tokens: TOKENS, audit: { info: (o) => audit.push(o) } }, log);
    try {
      for (const p of ['token', 'access_token']) {
        const res = await app.inject({ method: 'GET', url: `/v1/workloads?${p}=${SECRETS.admin}` });
        assert.equal(res.statusCode, 401, `?${p}= is no credential`);
      }
      await app.inject({ method: 'DELETE', url: `/v1/nowhere?token=${SECRETS.admin}` });
      assert.deepEqual(calls, []);
      const text = mem.lines.join('\n') + JSON.stringify(audit);
      assert.ok(text.includes('token=[redacted]'), 'the request lines are there, redacted');
      assert.ok(!text.includes(SECRETS.admin), 'the secret was logged');
    } finally {
      await app.close();
    }
  });
});

describe('an empty JSON body', () => {
  test('a DELETE with content-type application/json and no body is served (real server); a route that needs a body says so', async () => {
    const { app, calls } = await build({});
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const { port } = app.server.address() as AddressInfo;
      const send = (method: string, path: string) => fetch(`http://127.0.0.1:${port}${path}`, { method, headers: { 'content-type': 'application/json' } });
      const del = await send('DELETE', '/v1/workloads/shop/web');
      assert.equal(del.status, 200, await del.clone().text());
      assert.deepEqual(calls, ['remove shop/web']);
      const post = await send('POST', '/v1/workloads');
      assert.equal(post.status, 400);
      assert.equal(((await post.json()) as { code: string }).code, 'AGENT_ERR_API_VALIDATION');
      const bad = await fetch(`http://127.0.0.1:${port}/v1/workloads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":' });
      assert.equal(bad.status, 400, 'broken JSON stays a 400');
      const poisoned = await fetch(`http://127.0.0.1:${port}/v1/workloads`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"__proto__":{"x":1}}' });
      assert.equal(poisoned.status, 400, 'prototype poisoning is still refused');
    } finally {
      await app.close();
    }
  });
});

describe('TLS listener', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-tls-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('config refuses TCP without TLS and tokens, naming the keys', () => {
    assert.throws(() => configParse({ api: { tcp: { port: 9876 } } }), (e: Error) => {
      assert.ok(e instanceof ConfigError);
      assert.match(e.message, /api\.tcp\.tls: required/);
      assert.match(e.message, /api\.tcp\.tokensFile: required/);
      return true;
    });
    assert.throws(() => configParse({ api: { tcp: { port: 9876, tls: { cert: '/c' } } } }), /api\.tcp\.tls\.key/);
  });

  test('the daemon refuses unreadable TLS files and bad tokens files before starting anything', async () => {
    const tokensFile = join(dir, 'tokens.yaml');
    writeFileSync(tokensFile, `- {name: a, secretSha256: ${tokenHash(SECRETS.admin)}, scopes: [admin]}\n`);
    writeFileSync(join(dir, 'c.pem'), 'x');
    const run = (tcp: Record<string, unknown>) => daemonRun({ overrides: { stateDir: join(dir, 'state'), api: { socket: join(dir, 's.sock'), tcp: { port: 9876, ...tcp } as never } } });
    await assert.rejects(run({ tls: { cert: join(dir, 'nope.pem'), key: join(dir, 'c.pem') }, tokensFile }), (e: Error) => e instanceof ConfigError && /api\.tcp\.tls\.cert: cannot read/.test(e.message));
    await assert.rejects(run({ tls: { cert: join(dir, 'c.pem'), key: join(dir, 'nope.pem') }, tokensFile }), /api\.tcp\.tls\.key: cannot read/);
    await assert.rejects(run({ tls: { cert: join(dir, 'c.pem'), key: join(dir, 'c.pem') }, tokensFile: join(dir, 'none.yaml') }), /api\.tcp\.tokensFile: cannot read/);
  });

  test('serves HTTPS with bearer tokens', async () => {
    const key = join(dir, 'key.pem');
    const cert = join(dir, 'cert.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    const stub = agentStub();
    const app = await serverBuild({ agent: stub.agent, logger: false, version: 'test', https: { cert: readFileSync(cert), key: readFileSync(key) }, security: { tokens: TOKENS } });
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const { port } = app.server.address() as AddressInfo;
      const get = (headers: Record<string, string>) =>
        new Promise<number>((resolve, reject) => {
          request({ host: '127.0.0.1', port, path: '/v1/workloads', headers, ca: readFileSync(cert) }, (res) => (res.resume(), resolve(res.statusCode ?? 0))).on('error', reject).end();
        });
      assert.equal(await get(bearer(SECRETS.reader)), 200);
      assert.equal(await get({}), 401);
      // Plain HTTP on the TLS port gets nowhere.
      const plain = await fetch(`http://127.0.0.1:${port}/v1/workloads`, { headers: bearer(SECRETS.reader) }).then(
        (r) => r.status,
        () => 0,
      );
      assert.notEqual(plain, 200);
    } finally {
      await app.close();
    }
  });
});

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { PolicyCapacityError } from '../../agent/policy/budget.js';
import type { ParsedPolicy } from '../../agent/policy/types.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { namespaceKey, SharedNamespaces, sharedNamespaceJudge, type NamespaceHost } from '../../agent/cluster/shared-namespaces.js';
import { policyKey, SharedPolicies, sharedPolicyJudge, type PolicyHost } from '../../agent/cluster/shared-policy.js';

const NS = 'shop';
const doc = (name: string, extra: Record<string, string> = {}, namespace = NS) => ({
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumNetworkPolicy',
  metadata: { name, namespace },
  spec: { endpointSelector: { matchLabels: { app: name, ...extra } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'fe' } }] }] },
});
const key = (name: string) => policyKey('CiliumNetworkPolicy', NS, name);

/** A host whose maps refuse any policy selecting `size=huge` (pure logic: what SharedPolicies does with a refusal). */
class FakeHost implements PolicyHost {
  applied_: ParsedPolicy[] = [];
  installs = 0;
  applied(): readonly ParsedPolicy[] {
    return this.applied_;
  }
  async check(): Promise<void> {}
  async install(next: ParsedPolicy[]) {
    this.installs++;
    const huge = next.find((p) => JSON.stringify(p.document).includes('"size":"huge"'));
    if (huge) throw new PolicyCapacityError(`${huge.ref}: would need more than policy max_entries 10`);
    this.applied_ = next;
    return { endpoints: 0, entries: 0, upserts: 0, deletes: 0, cidrIdentities: 0, ms: 0 };
  }
  stored() {
    return undefined;
  }
  names(): string[] {
    return this.applied_.map((p) => `${p.name}${JSON.stringify(p.document).includes('"v":"2"') ? '@2' : ''}`).sort();
  }
}

describe('cluster shared policies: judging etcd values', () => {
  test('a valid document under its own key is taken; the cluster-wide kind uses "-" as namespace', async () => {
    const v = await sharedPolicyJudge(key('web'), JSON.stringify(doc('web')));
    assert.ok('policy' in v && v.policy.ref === `CiliumNetworkPolicy ${NS}/web`);
    const ccnp = { apiVersion: 'cilium.io/v2', kind: 'CiliumClusterwideNetworkPolicy', metadata: { name: 'all' }, spec: { endpointSelector: {}, ingress: [{ fromEntities: ['host'] }] } };
    const c = await sharedPolicyJudge(policyKey('CiliumClusterwideNetworkPolicy', '', 'all'), JSON.stringify(ccnp));
    assert.ok('policy' in c, JSON.stringify(c));
    assert.equal(policyKey('CiliumClusterwideNetworkPolicy', '', 'all'), 'kitnet/state/policies/v1/CiliumClusterwideNetworkPolicy/-/all');
  });

  test('hostile values are refused with a reason naming the problem', async () => {
    const cases: Array<[string, string, RegExp]> = [
      [key('web'), '{"apiVersion":', /not JSON/],
      [key('web'), '[1,2]', /not a JSON object/],
      [key('web'), JSON.stringify({ ...doc('web'), spec: { endpointSelector: { matchLabels: { app: 'x' } }, ingress: [{ toPorts: [{ ports: [{ port: '70000' }] }] }] } }), /not a valid policy/],
      [key('web'), JSON.stringify({ ...doc('web'), pad: 'x'.repeat(1024 * 1024) }), /larger than 1048576 bytes/],
      [key('web'), JSON.stringify(doc('other')), /the document is CiliumNetworkPolicy shop\/other, not what the key names/],
      [key('web'), JSON.stringify(doc('web', {}, 'other-ns')), /not what the key names/],
      [policyKey('NetworkPolicy', NS, 'web'), JSON.stringify(doc('web')), /not what the key names/],
      ['kitnet/state/policies/v1/web', JSON.stringify(doc('web')), /key is not <kind>\/<namespace>\/<name>/],
      [`${key('web')}/extra`, JSON.stringify(doc('web')), /key is not/],
    ];
    for (const [k, v, want] of cases) {
      const verdict = await sharedPolicyJudge(k, v);
      assert.ok('reason' in verdict, `${k} ${v.slice(0, 80)} was taken`);
      assert.match(verdict.reason, want);
    }
  });

  test('namespace values: labels validated as the API does, the name must be the key\'s', () => {
    assert.deepEqual(sharedNamespaceJudge('kitnet/state/namespaces/v1/shop', '{"name":"shop","labels":{"team":"blue"}}'), { name: 'shop', labels: { team: 'blue' } });
    const bad: Array<[string, string, RegExp]> = [
      ['kitnet/state/namespaces/v1/shop', '{"name":"other","labels":{}}', /names namespace "other", not the key's/],
      ['kitnet/state/namespaces/v1/shop', '{"name":"shop","labels":{"bad key!":"x"}}', /labels.bad key!: label key/],
      ['kitnet/state/namespaces/v1/shop', '{"name":"shop","labels":{},"extra":1}', /Unrecognized key/i],
      ['kitnet/state/namespaces/v1/Shop', '{"name":"Shop","labels":{}}', /name: must be a DNS-1123 label/],
      ['kitnet/state/namespaces/v1/shop', 'null', /value/],
    ];
    for (const [k, v, want] of bad) {
      const verdict = sharedNamespaceJudge(k, v);
      assert.ok('reason' in verdict, `${v} was taken`);
      assert.match(verdict.reason, want);
    }
  });
});

describe('cluster shared policies: applying what etcd holds on one host', () => {
  // Never contacted: resync and change are driven directly.
  const client = new Etcd3({ hosts: 'http://127.0.0.1:9' });
  after(() => client.close());
  const make = () => {
    const host = new FakeHost();
    return { host, shared: new SharedPolicies(client, host, pino({ level: 'silent' })) };
  };

  test('a policy that does not fit this host is left out and shown; the others apply', async () => {
    const { host, shared } = make();
    await shared.resync(new Map([
      [key('a'), JSON.stringify(doc('a'))],
      [key('big'), JSON.stringify(doc('big', { size: 'huge' }))],
      [key('c'), JSON.stringify(doc('c'))],
    ]), 5n);
    assert.deepEqual(host.names(), ['a', 'c']);
    assert.deepEqual([...shared.notApplied.keys()], [key('big')]);
    assert.match(shared.problems()[0]!.message, /cluster policy .*\/big is not applied on this host: .*max_entries/);

    // The oversized one shrinks: applied, and no longer shown.
    await shared.change([{ key: key('big'), value: JSON.stringify(doc('big')) }]);
    assert.deepEqual(host.names(), ['a', 'big', 'c']);
    assert.equal(shared.notApplied.size, 0);
    assert.deepEqual(shared.problems(), []);
  });

  test('a new version that does not fit keeps the previous one here, not a half-applied set', async () => {
    const { host, shared } = make();
    await shared.resync(new Map([[key('a'), JSON.stringify(doc('a'))], [key('b'), JSON.stringify(doc('b'))]]), 5n);
    await shared.change([
      { key: key('a'), value: JSON.stringify(doc('a', { size: 'huge' })) },
      { key: key('b'), value: JSON.stringify(doc('b', { v: '2' })) },
    ]);
    assert.deepEqual(host.names(), ['a', 'b@2'], 'a keeps its previous version, b takes its new one');
    assert.deepEqual([...shared.notApplied.keys()], [key('a')]);
  });

  test('an invalid value never evicts the valid policy under its key; a delete removes it; a resync drops keys etcd no longer has', async () => {
    const { host, shared } = make();
    await shared.resync(new Map([[key('a'), JSON.stringify(doc('a'))], [key('b'), JSON.stringify(doc('b'))]]), 5n);
    await shared.change([{ key: key('a'), value: '{"not": "a policy"}' }]);
    assert.deepEqual(host.names(), ['a', 'b']);
    assert.equal(shared.ignored, 1);
    assert.match(shared.problems()[0]!.message, /etcd key .*\/a is ignored: not a valid policy/);
    // The same bad value seen again in a full list (after a reconnect): still the last valid one.
    await shared.resync(new Map([[key('a'), '{"not": "a policy"}'], [key('b'), JSON.stringify(doc('b'))]]), 9n);
    assert.deepEqual(host.names(), ['a', 'b']);
    await shared.change([{ key: key('a'), value: undefined }]);
    assert.deepEqual(host.names(), ['b']);
    assert.deepEqual(shared.problems(), [], 'the deleted key\'s warning went with it');
    await shared.resync(new Map(), 12n);
    assert.deepEqual(host.names(), []);
    const installs = host.installs;
    await shared.resync(new Map(), 13n);
    assert.equal(host.installs, installs, 'nothing to change: no compile');
  });

  test('a restarted host whose cache holds an invalid-now key keeps the cached version', async () => {
    const { host, shared } = make();
    const cached = await sharedPolicyJudge(key('a'), JSON.stringify(doc('a')));
    assert.ok('policy' in cached);
    host.applied_ = [cached.policy];
    await shared.resync(new Map([[key('a'), 'garbage']]), 3n);
    assert.deepEqual(host.names(), ['a']);
  });
});

describe('cluster shared namespaces on a real etcd', () => {
  let etcd: EtcdServer | undefined;
  let client: Etcd3 | undefined;
  before(async () => {
    etcd = await etcdStart();
    client = new Etcd3({ hosts: etcd.endpoint });
  });
  after(async () => {
    client?.close();
    await etcd?.stop();
  });

  test('labels this host refuses are put back in etcd and the write is refused; accepted ones stay', async () => {
    const stored = new Map<string, Record<string, string>>();
    const host: NamespaceHost = {
      stored: () => [...stored].map(([name, labels]) => ({ name, labels, createdAt: '', updatedAt: '' })),
      install: async (name, labels) => {
        if (labels.size === 'huge') throw new PolicyCapacityError(`namespace ${name}: the policy map has no room`);
        stored.set(name, labels);
      },
    };
    const shared = new SharedNamespaces(client!, host, pino({ level: 'silent' }));
    await shared.follower.start();
    try {
      await shared.write('shop', { team: 'blue' });
      assert.deepEqual(stored.get('shop'), { team: 'blue' }, 'applied from the watch before the answer');
      await assert.rejects(shared.write('shop', { size: 'huge' }), /no room/);
      assert.deepEqual(JSON.parse((await client!.get(namespaceKey('shop')).string())!), { name: 'shop', labels: { team: 'blue' } }, 'the previous value is back');
      await assert.rejects(shared.write('fresh', { size: 'huge' }), /no room/);
      assert.equal(await client!.get(namespaceKey('fresh')).string(), null, 'a new key refused here is deleted again');
      await shared.follower.settled();
      assert.deepEqual(stored.get('shop'), { team: 'blue' });
      assert.equal(stored.has('fresh'), false);
    } finally {
      await shared.follower.close();
    }
  });
});

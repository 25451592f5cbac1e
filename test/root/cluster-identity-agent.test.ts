import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import type { Workload } from '../../common/schemas/workload.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { AgentFixture } from '../helpers/fixture.js';

const PREFIX = 'cilium/state/identities/v1';
const NODE_IP = '192.0.2.99';

/**
 * #14: an agent in cluster mode takes its workloads' identity numbers from etcd, in Cilium's layout,
 * with the cluster label; everything else stays in SQLite. A real etcd and a real agent (daemonRun).
 */
describe('cluster mode: workload identities and addresses in etcd (root)', { timeout: 180_000 }, () => {
  let etcd: EtcdServer | undefined;
  let raw: Etcd3 | undefined;
  let fx: AgentFixture | undefined;
  const ns: Record<string, string> = {};
  const get = (k: string) => raw!.get(k).exec().then((r) => r.kvs[0]);
  const key = 'k8s:app=web;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=clu-a;k8s:io.cilium.k8s.policy.cluster=kitroot;k8s:io.kubernetes.pod.namespace=clu-a;';

  before(async () => {
    etcd = await etcdStart();
    raw = new Etcd3({ hosts: etcd.endpoint });
    fx = new AgentFixture({
      tag: 'clu',
      ipv4Pool: '10.241.0.0/16',
      ipv6Pool: 'fd00:241::/64',
      namespaces: ['clu-a'],
      overrides: { cluster: { name: 'kitroot', id: 9, nodeIP: NODE_IP, etcd: { endpoints: [etcd.endpoint] }, autoDirectNodeRoutes: false } },
    });
    for (const n of ['web1', 'web2', 'db']) ns[n] = await fx.netns(n);
    // Someone else's malformed keys: the agent must neither crash on them nor take their numbers.
    await raw.put(`${PREFIX}/id/not-a-number`).value(key);
    await raw.put(`${PREFIX}/id/${(9 << 16) + 5}`).value(Buffer.from([0xff, 0x00, 0xfe]));
    await raw.put(`${PREFIX}/value/${key}/evil-text`).value('garbage');
    await raw.put(`${PREFIX}/value/${key}/evil-bogus`).value(String((9 << 16) + 5));
    await raw.put(`${PREFIX}/value/${key}/evil-foreign`).value('70000');
    await fx.start();
  });
  after(async () => {
    await fx?.cleanup();
    raw?.close();
    await etcd?.stop();
  });

  const register = (name: string, labels: Record<string, string>) =>
    fx!.api.call<Workload>('POST', '/v1/workloads', { name, namespace: 'clu-a', labels, netns: `/var/run/netns/${ns[name]}` });

  test('a registered workload\'s identity is allocated in etcd, in the cluster\'s range, with the cluster label, despite malformed keys', async () => {
    const w = await register('web1', { app: 'web' });
    assert.ok(w.identity >= 9 << 16 && w.identity < 10 << 16, `identity ${w.identity} in cluster 9's range`);
    assert.notEqual(w.identity, (9 << 16) + 5, 'a value key pointing at a master key of other labels is ignored');
    assert.ok(w.identityLabels.includes('k8s:io.cilium.k8s.policy.cluster=kitroot'), w.identityLabels.join(' '));
    assert.equal((await get(`${PREFIX}/id/${w.identity}`))?.value.toString(), key);
    assert.equal((await get(`${PREFIX}/value/${key}/${NODE_IP}`))?.value.toString(), String(w.identity));
    // Its addresses in the cluster ipcache, as Cilium's IPIdentityPair, under the node's lease.
    for (const ip of [w.ipv4, w.ipv6]) {
      const entry = await get(`cilium/state/ip/v1/default/${ip}`);
      assert.equal(
        entry?.value.toString(),
        `{"IP":"${ip}","Mask":null,"HostIP":"${NODE_IP}","ID":${w.identity},"Key":0,"Metadata":"","K8sNamespace":"clu-a","K8sPodName":"web1"}`,
      );
      assert.notEqual(entry?.lease, '0');
    }
  });

  test('the same labels share the number; other labels get another; the last removal deletes the value key', async () => {
    const w1 = await fx!.api.call<Workload>('GET', '/v1/workloads/clu-a/web1');
    const w2 = await register('web2', { app: 'web' });
    const db = await register('db', { app: 'db' });
    assert.equal(w2.identity, w1.identity);
    assert.notEqual(db.identity, w1.identity);
    const valueKey = `${PREFIX}/value/${key}/${NODE_IP}`;
    await fx!.api.call('DELETE', '/v1/workloads/clu-a/web1');
    assert.ok(await get(valueKey), 'web2 still uses the identity');
    assert.equal(await get(`cilium/state/ip/v1/default/${w1.ipv4}`), undefined, 'a removed workload\'s address leaves the ipcache');
    assert.ok(await get(`cilium/state/ip/v1/default/${w2.ipv4}`));
    await fx!.api.call('DELETE', '/v1/workloads/clu-a/web2');
    assert.equal(await get(valueKey), undefined, 'no workload of this node uses it any more');
    assert.ok(await get(`${PREFIX}/id/${w1.identity}`), 'the master key waits for garbage collection');
  });

  test('after a restart the agent takes its references again under its new lease', async () => {
    const db = await fx!.api.call<Workload>('GET', '/v1/workloads/clu-a/db');
    const dbKey = db.identityLabels.map((l) => `${l};`).join('');
    const before = await get(`${PREFIX}/value/${dbKey}/${NODE_IP}`);
    const entryBefore = await get(`cilium/state/ip/v1/default/${db.ipv6}`);
    assert.ok(before, `value key of ${dbKey}`);
    await fx!.stop();
    await fx!.start();
    const afterRestart = await get(`${PREFIX}/value/${dbKey}/${NODE_IP}`);
    assert.equal(afterRestart?.value.toString(), String(db.identity));
    assert.notEqual(afterRestart?.lease, before.lease, 'the value key moved to the new session\'s lease');
    assert.equal((await fx!.api.call<Workload>('GET', '/v1/workloads/clu-a/db')).identity, db.identity);
    const entry = await get(`cilium/state/ip/v1/default/${db.ipv6}`);
    assert.equal(JSON.parse(entry!.value.toString()).ID, db.identity, 'the ipcache entry is there after the restart');
    assert.equal(entry?.lease, afterRestart?.lease, 'and under the new lease, not the old one that will expire');
    assert.notEqual(entry?.lease, entryBefore?.lease);
  });

  test('with etcd gone, a new label set is refused with 503 and leaves nothing; known labels and the datapath carry on', async () => {
    await etcd!.stop();
    const name = 'web1';
    const outcome = await register(name, { app: 'brand-new' }).then(
      (w) => w,
      (e: { statusCode?: number; code?: string; message: string }) => e,
    );
    assert.ok(!('identity' in outcome), 'registration with a new label set succeeded while etcd was down');
    assert.equal(outcome.statusCode, 503, outcome.message);
    assert.equal(outcome.code, 'AGENT_ERR_CLUSTER_UNAVAILABLE');
    await assert.rejects(fx!.api.call('GET', `/v1/workloads/clu-a/${name}`), /404|not registered/);
    assert.equal((await fx!.api.call<Workload>('GET', '/v1/workloads/clu-a/db')).state, 'ready');
  });
});
